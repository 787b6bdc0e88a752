//! Fixed-memory counting for the shield: how fast is this client going, and is it
//! blocked right now?
//!
//! The shield asks these questions on every accepted connection and every request,
//! including the millions a flood sends. This crate answers them with structures whose
//! memory is chosen once, at construction, from the configuration:
//!
//! - [`RateSketch`] estimates how many events a key (a hashed client address, or an
//!   address plus a path, …) caused in a sliding window. It is a pair of count-min
//!   sketches, so it may over-count a quiet client that shares counters with loud
//!   ones, but it never under-counts.
//! - [`BlockTable`] remembers repeat offenders until their block expires. When it is
//!   full it forgets whoever would have been released soonest.
//! - [`KeyHasher`] turns addresses and byte strings into the `u64` keys both of them
//!   take, with a per-process random seed so that an attacker cannot pick addresses
//!   that collide on purpose.
//! - [`now_ms`] is the monotonic millisecond clock the callers pass in.
//!
//! **Architecture invariant:** nothing in this crate allocates per client or grows
//! with the number of distinct clients. A flood from a million addresses costs exactly
//! the memory a flood from one address costs; the price is accuracy, never memory.
//! Allocation happens only in the constructors.
//!
//! **API boundary:** pure logic. No IO, no async runtime, no background threads, no
//! clock of its own except [`now_ms`]: every method that depends on time takes the
//! time as an argument, so tests and benches drive time by hand. All methods take
//! `&self` and are safe to call from many threads at once.
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use qalqan_limits::{BlockTable, KeyHasher, RateSketch, now_ms};
//!
//! const REQUESTS: u8 = 1;
//! let hasher = KeyHasher::new();
//! // 10 s windows, 4 x 32768 counters: 1 MiB, whatever the number of clients.
//! let requests = RateSketch::new(10_000, 4, 32_768);
//! let blocked = BlockTable::new(65_536);
//!
//! let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
//! let key = hasher.hash_ip(client, REQUESTS);
//! let now = now_ms();
//! if blocked.blocked_until(key, now).is_none() && requests.observe(key, now) > 100.0 {
//!     blocked.block(key, now + 60_000);
//! }
//! assert_eq!(blocked.blocked_until(key, now), None);
//! ```

#![warn(missing_docs)]

mod block;
mod hash;
mod sketch;
mod sync;

use std::sync::OnceLock;
use std::time::Instant;

pub use block::BlockTable;
pub use hash::KeyHasher;
pub use sketch::RateSketch;

/// Milliseconds elapsed since the first call to this function in this process.
///
/// Monotonic (built on [`Instant`], so wall-clock jumps do not move it) and cheap: one
/// atomic load plus one `clock_gettime`, which Linux serves from the vDSO without a
/// system call. Values from different threads may still disagree by a little, which
/// is why [`RateSketch`] and [`BlockTable`] tolerate times that go backwards.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    // u128 milliseconds overflow u64 only after 584 million years of uptime.
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// SplitMix64's finaliser: a cheap bijective mixer whose every output bit depends on
/// every input bit. Used to spread keys over rows and buckets; keys are already keyed
/// hashes, so this needs to be well-distributed, not secret.
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_ms_is_monotonic() {
        let a = now_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = now_ms();
        assert!(b >= a + 4, "clock moved {} ms over a 5 ms sleep", b - a);
    }

    #[test]
    fn mix64_is_a_bijection_on_samples() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000u64 {
            assert!(seen.insert(mix64(i)));
        }
    }
}
