//! `qalqan drill` and the demo's sample site: rehearse an attack against your own configuration
//! before the real one comes.
//!
//! - [`origin`]: the sample newsroom (articles, an RSS feed, a deliberately slow search, an admin
//!   path) with per-class counters, for `qalqan demo`, tests and benchmarks.
//! - [`scenario`]: scenario files in TOML (reader and attacker populations), with the built-in
//!   `kursiv` and `slowloris`, every mistake reported with its key path.
//! - [`engine`]: runs a scenario against a loopback target and measures it.
//! - [`summary`]: the report, as a table and as JSON.
//!
//! **Invariant:** the drill talks to loopback only. [`http::loopback_base`] refuses any other
//! target before anything is sent, redirects are followed only within the target, and every run
//! is bounded in time and in requests.

pub mod engine;
pub mod http;
pub mod origin;
pub mod rng;
pub mod scenario;
pub mod summary;

pub use engine::{Options, Progress, RunResult, run};
pub use origin::{Origin, OriginConfig};
pub use scenario::Scenario;
