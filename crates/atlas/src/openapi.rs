//! The OpenAPI 3.1 document served at `/api/v1/openapi.json`.
//!
//! Written by hand next to the routes; a test checks that every route of [`crate::api::router`]
//! is documented and that the document names no route that does not exist.

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");
