//! Attack detection for the shield: is this route class (or the whole site) under
//! attack right now, and what did the attack look like?
//!
//! - [`Detector`] is the attack state machine, fed once a second with the request
//!   count and origin health. It learns a baseline request rate and origin latency
//!   (an EWMA with a floor for quiet sites, learned only in [`Mode::Normal`], so a
//!   flood never teaches it that floods are normal) and moves between
//!   [`Mode::Normal`], [`Mode::Elevated`] and [`Mode::UnderAttack`] when the rate is a
//!   multiple of the baseline or the origin is saturated. It steps down only after a
//!   cooldown below lower exit thresholds (hysteresis), so it does not flap. An
//!   operator can force under-attack for a while with [`Override`].
//! - [`Episode`] summarises one attack, from leaving normal to returning to it, in
//!   fixed memory: peak and total requests, decisions, heavy hitters by address,
//!   /24, /64, ASN, country, user agent, path and query, and a reservoir sample of
//!   request lines. It serialises to one JSON object for the shield's episode log.
//! - [`SpaceSaving`] is the fixed-size heavy-hitter counter behind the episode.
//!
//! With the defaults ([`DetectConfig`]) a flood at 10 times the baseline or more is
//! `Elevated` on its 2nd second and `UnderAttack` on its 3rd, inside the five-second
//! goal; it returns to `Normal` about a minute after the flood stops.
//!
//! **Architecture invariant:** memory never grows with the traffic. A detector is a
//! fixed-size struct; an episode is bounded by [`Episode::memory_bound`], whether
//! the flood comes from three addresses or a million.
//!
//! **API boundary:** pure logic. No IO, no async runtime, no threads, no clock, no
//! randomness of its own: the caller passes the time and random numbers in, so
//! tests replay synthetic traffic deterministically.
//!
//! ```
//! use qalqan_detect::{DetectConfig, Detector, Episode, Mode, Sample};
//!
//! let mut detector = Detector::new(DetectConfig::default());
//! let mut episode = None;
//! for second in 0..200u64 {
//!     let requests = if second < 120 { 10 } else { 4_000 };
//!     let now = second * 1000;
//!     if let Some(t) = detector.tick(now, Sample { requests, ..Sample::default() }) {
//!         if t.from == Mode::Normal {
//!             episode = Some(Episode::new(now));
//!         }
//!     }
//!     if let Some(episode) = episode.as_mut() {
//!         episode.record_second(now, requests);
//!     }
//! }
//! assert_eq!(detector.mode(), Mode::UnderAttack);
//! assert_eq!(episode.unwrap().peak_rps(), 4_000);
//! ```

#![warn(missing_docs)]

mod config;
mod detector;
mod episode;
mod space_saving;

pub use config::{ConfigError, ConfigProblem, DetectConfig};
pub use detector::{Detector, Mode, Override, Reason, Sample, Transition};
pub use episode::{Episode, EpisodeLimits, MAX_DECISIONS, MAX_KEY_BYTES, MAX_LINE_BYTES, Request};
pub use space_saving::{HeavyHitter, Key, SpaceSaving};
