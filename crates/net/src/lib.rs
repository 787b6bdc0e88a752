//! Who is the client? Pure parsing of client identity for the Qalqan shield.
//!
//! The shield counts, limits and challenges *clients*, so it must know each client's address
//! before it does anything else, and it must not let a client choose that address. This crate
//! answers the question from the bytes a connection brings, and nothing more:
//!
//! - [`cidr`]: the operator's list of trusted proxies as a [`CidrSet`] with a fast `contains`,
//!   plus helpers to reduce an address to its network (the client's /24 or /64) and
//!   [`audit_trusted`], which names trusted-proxy lists that would let anyone forge an address.
//! - [`forwarded`]: the client behind a chain of trusted proxies, read right to left from
//!   `X-Forwarded-For` ([`client_from_xff`]).
//! - [`proxy_protocol`]: the HAProxy PROXY protocol header, text (v1) and binary (v2)
//!   ([`proxy_protocol::parse`]).
//!
//! **Architecture invariant:** this crate does no IO, spawns nothing, keeps no state and never
//! awaits. Everything here reads bytes an attacker wrote, so no function may panic on its input,
//! allocate in proportion to it without a fixed bound, or trust an address that came from a peer
//! outside the trusted set. Every bound is a named constant documented where it applies.
//!
//! **API boundary:** callers hand over raw header bytes and the socket's peer address; they get
//! back a [`ClientAddr`] that says where the address came from. The only error type is
//! [`ProxyError`]; configuration mistakes in a trusted-proxy list are reported by
//! [`CidrSet::parse`] as a list of every bad item, for the config validator to show together.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// "Never panic on input" is enforced, not hoped for: outside tests, indexing, unwrap, expect and
// explicit panics are compile errors, so every access to attacker bytes goes through `get` or a
// checked split.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]

pub mod cidr;
pub mod forwarded;
pub mod proxy_protocol;

pub use cidr::{CidrSet, audit_trusted, canonical_ip, is_public_unicast, prefix_of};
pub use forwarded::{AddrSource, ClientAddr, client_from_xff};
pub use proxy_protocol::{ProxyError, ProxyHeader};
