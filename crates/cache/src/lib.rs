//! The shield's micro-cache, as pure logic: what a request's cache key is, whether an
//! origin response may be stored and for how long, where stored responses live, and
//! whether a client's conditional request can be answered with `304 Not Modified`.
//!
//! During a flood (say a search for "number one" at 400 times normal traffic) most requests
//! ask for the same few pages in slightly different spellings. A cache that holds each page
//! for a few seconds, under a key that folds those spellings together, turns the flood into
//! a handful of origin requests. This crate holds the decisions; the shield does the IO.
//!
//! The modules, in the order a request meets them:
//!
//! - [`key`]: the normalised cache key of a request, and the `Accept-Encoding` class that
//!   is part of it.
//! - [`conditional`]: whether a stored response answers a conditional request with `304`.
//! - [`policy`]: whether an origin response may be stored (RFC 9111, as a careful shared
//!   cache reads it) and its freshness.
//! - [`store`]: the byte-bounded in-memory store and the stored response.
//!
//! **What this crate must never do.** Everything it reads comes from the network: request
//! targets and headers from clients who may be attackers, response headers from an origin
//! that may be misconfigured. So it never panics on input, never lets input decide how much
//! memory or time it uses beyond fixed bounds (targets over 8 KiB get no key, the store is
//! bounded in bytes), and never stores what must stay private to one client: responses
//! that set cookies, that the origin marks `private` or `no-store`, or that answer a
//! request with credentials without the origin saying it is shared. It never does IO,
//! never spawns threads and never logs: the caller owns sockets, tasks and tracing, and
//! every rule here can be tested without them.
//!
//! ```
//! use http::Method;
//! use qalqan_cache::{KeyRules, accept_encoding_class, cache_key};
//!
//! let rules = KeyRules { fold_query_case: true, ..KeyRules::default() };
//! let class = accept_encoding_class(Some(b"gzip, deflate, br"));
//! let target = "/search?q=Number+One&utm_source=x";
//! let a = cache_key(&Method::GET, "Example.com:443", target, class, &rules);
//! let b = cache_key(&Method::HEAD, "example.com", "/search?q=number%20one", class, &rules);
//! assert_eq!(a.as_deref(), Some("example.com/search?q=number+one br"));
//! assert_eq!(a, b);
//! ```

pub mod conditional;
pub mod key;
pub mod policy;
pub mod store;

pub use conditional::not_modified;
pub use key::{KeyRules, accept_encoding_class, cache_key};
pub use policy::{Decision, Freshness, RouteCacheRules, decide};
pub use store::{CachedResponse, EntryState, Store};
