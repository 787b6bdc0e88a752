//! `qalqan-sweep`: finds coordinated bot floods in data an outlet's admin can export today
//! (Telegram Desktop's `result.json`, YouTube comment threads as JSON or CSV, a generic CSV):
//! the same short text posted by many accounts in a short time, and waves of joins by accounts
//! that look alike.
//!
//! Every finding carries its evidence (the rule that fired with its numbers, the texts, the
//! accounts, the times), so an admin can check it before acting. The analysis modules are pure;
//! the IO lives in [`live`] (a Telegram bot recording joins and messages), [`clean`] (the
//! clean-up queue: dry-run by default, reversible steps, checkpointed), [`atlas`] (findings
//! into the task force's registry), over [`telegram`] (a Bot API client that cannot post) and
//! [`http`].
//!
//! Layout: [`model`] is the platform-independent event model (the live Telegram mode,
//! [`live`], feeds the same [`model::Message`] and [`model::Join`]); [`input`] streams the
//! export formats into it; [`normalize`] builds matching keys (never shown to anyone);
//! [`cluster`] groups near-identical texts; [`analyze`] decides what is a flood ([`threat`]:
//! copy-pasted threats); [`joins`] finds join waves and describes their cohort; [`report`]
//! writes JSON and HTML; [`synth`] generates deterministic test and benchmark data.
//!
//! Must never: panic on input, hold an unbounded number of events (see [`input::Limits`]), or
//! alter a text that is displayed (normalised forms are for matching only).

pub mod analyze;
pub mod atlas;
pub mod clean;
pub mod cluster;
pub mod http;
pub mod input;
pub mod joins;
pub mod live;
pub mod model;
pub mod normalize;
pub mod report;
pub mod synth;
pub mod telegram;
pub mod threat;
mod time_fmt;

pub use analyze::{Analysis, Params, analyze};
pub use input::{Format, InputError, Limits};
pub use model::{Dataset, Event, Join, Message};
