//! JSON endpoints of feeds, preceding publications and "what provokes attacks"
//! (`/api/v1/feeds`, `/api/v1/incidents/{id}/publications`, `/api/v1/provoke`).
//!
//! Like the rest of the API, handlers only translate between HTTP and the store, which applies
//! the roles and the TLP rule.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::Atlas;
use crate::api::{Caller, parse_json};
use crate::error::{Error, Result};
use crate::feeds::FeedIn;
use crate::provoke::{DEFAULT_WINDOW_H, ProvokeQuery};

type QueryResult<T> = std::result::Result<Query<T>, axum::extract::rejection::QueryRejection>;

/// `GET /feeds`: the caller's outlet's feeds and their status.
pub async fn list_feeds(State(a): State<Arc<Atlas>>, Caller(c): Caller) -> Result<Response> {
    Ok(Json(a.db.feeds(&c).await?).into_response())
}

/// `POST /feeds`: adds a feed (outlet admins).
pub async fn add_feed(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    body: Bytes,
) -> Result<Response> {
    if c.role != crate::model::Role::Admin {
        return Err(Error::Forbidden);
    }
    let f: FeedIn = parse_json(&body)?;
    Ok((StatusCode::CREATED, Json(a.db.add_feed(&c, &f).await?)).into_response())
}

/// `DELETE /feeds/{id}`: removes a feed (outlet admins); its publications stay.
pub async fn remove_feed(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    let id: i64 = id.parse().map_err(|_| Error::NotFound)?;
    a.db.remove_feed(&c, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowQuery {
    window_hours: Option<i64>,
}

/// `GET /incidents/{id}/publications`: the outlet's publications before the incident.
pub async fn preceding(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    Path(id): Path<String>,
    q: QueryResult<WindowQuery>,
) -> Result<Response> {
    let Query(q) = q.map_err(|e| Error::field("query", e.body_text()))?;
    let h = q.window_hours.unwrap_or(DEFAULT_WINDOW_H);
    Ok(Json(a.db.preceding_publications(&c, &id, h).await?).into_response())
}

/// `GET /provoke`: terms over-represented before the caller's visible incidents.
pub async fn provoke(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    q: QueryResult<ProvokeQuery>,
) -> Result<Response> {
    let Query(q) = q.map_err(|e| Error::field("query", e.body_text()))?;
    Ok(Json(a.db.provoke(&c, &q).await?).into_response())
}
