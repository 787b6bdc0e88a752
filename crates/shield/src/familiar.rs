//! Familiar networks: where the site's readers came from before an attack, and the pace at which
//! everyone else may reach the origin during one.
//!
//! A solving bot farm earns clearances like readers do, so under attack a clearance alone cannot
//! tell a reader's uncached search from a bot's. What the farm usually cannot fake is having been
//! part of the site's normal audience: while the mode is `normal` the shield counts requests per
//! network (an IPv4 /16, an IPv6 /32), decayed with a half-life, and under attack a cleared
//! client from a network that carried at least `familiar_min_requests` requests and
//! `familiar_min_share` of them is "familiar". Others ("newcomers") still get their
//! per-clearance budget, but their uncached requests on a route that challenges share one pace
//! per route (`attack_newcomer_rate`; by default the route's own normal origin rate, learned
//! while the mode is normal), so a farm spread over fresh networks adds at most that pace to the
//! origin's load. The same idea as Cloudflare's location-aware DDoS profiles, at
//! network granularity and with no geo data needed.
//!
//! Memory is fixed: one counter per IPv4 /16 (65,536) and 16,384 hashed IPv6 /32 counters,
//! 640 KiB in all. A hash collision among IPv6 networks can only make a newcomer look familiar,
//! which returns it to the per-clearance budget every client had before.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const V4_SLOTS: usize = 1 << 16;
const V6_SLOTS: usize = 1 << 14;
/// The table is consulted only after it has seen this many requests since the shield started:
/// right after a restart nobody is familiar, and a cap on everyone would be a cap on readers.
pub const READY_REQUESTS: u64 = 100;
/// One request in this many is counted (with this weight): a flood of clean traffic on many
/// threads then does not fight over one counter's cache line.
const SAMPLE: u64 = 8;

/// Requests per network in normal mode, decayed.
pub struct Familiar {
    v4: Box<[AtomicU64]>,
    v6: Box<[AtomicU64]>,
    total: AtomicU64,
}

impl Default for Familiar {
    fn default() -> Self {
        Self::new()
    }
}

fn slots(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

thread_local! {
    static TICK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Familiar {
    /// An empty table.
    pub fn new() -> Self {
        Familiar {
            v4: slots(V4_SLOTS),
            v6: slots(V6_SLOTS),
            total: AtomicU64::new(0),
        }
    }

    fn slot(&self, ip: IpAddr) -> &AtomicU64 {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                &self.v4[usize::from(u16::from_be_bytes([o[0], o[1]]))]
            }
            IpAddr::V6(v6) => {
                let top = u64::from(u32::from_be_bytes(
                    v6.octets()[..4].try_into().unwrap_or([0; 4]),
                ));
                // Fibonacci hashing of the /32 into the table.
                let h = top.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - 14);
                &self.v6[h as usize % V6_SLOTS]
            }
        }
    }

    /// Counts one request from `ip` (call only in normal mode). One call in [`SAMPLE`] per
    /// thread is recorded, with that weight.
    pub fn learn(&self, ip: IpAddr) {
        let due = TICK.with(|t| {
            let n = t.get().wrapping_add(1);
            t.set(n);
            n % SAMPLE == 0
        });
        if due {
            self.add(ip, SAMPLE);
        }
    }

    /// Counts `n` requests from `ip` at once (tests, and `learn`).
    pub fn add(&self, ip: IpAddr, n: u64) {
        self.slot(ip).fetch_add(n, Relaxed);
        self.total.fetch_add(n, Relaxed);
    }

    /// Whether the table has seen enough to be consulted.
    pub fn ready(&self) -> bool {
        self.total.load(Relaxed) >= READY_REQUESTS
    }

    /// Whether `ip`'s network carried at least `min_requests` and `min_share` of the (decayed)
    /// requests counted.
    pub fn is_familiar(&self, ip: IpAddr, min_requests: u64, min_share: f64) -> bool {
        let n = self.slot(ip).load(Relaxed);
        n >= min_requests.max(1) && n as f64 >= min_share * self.total.load(Relaxed) as f64
    }

    /// Halves every counter (one half-life has passed).
    pub fn decay(&self) {
        let mut sum = 0u64;
        for c in self.v4.iter().chain(self.v6.iter()) {
            let v = c.load(Relaxed);
            if v != 0 {
                let half = v / 2;
                // A concurrent `learn` between the load and the store is lost: one sample.
                c.store(half, Relaxed);
                sum += half;
            }
        }
        self.total.store(sum, Relaxed);
    }

    /// How many networks are familiar now (for `/metrics`; scans the table).
    pub fn count(&self, min_requests: u64, min_share: f64) -> u64 {
        let floor = (min_requests.max(1) as f64).max(min_share * self.total.load(Relaxed) as f64);
        self.v4
            .iter()
            .chain(self.v6.iter())
            .filter(|c| c.load(Relaxed) as f64 >= floor)
            .count() as u64
    }

    /// Bytes held.
    pub fn memory_bytes(&self) -> usize {
        (V4_SLOTS + V6_SLOTS) * std::mem::size_of::<AtomicU64>()
    }
}

/// A pace shared by every newcomer on one route: at most `rate` a second, with a burst of one
/// second's worth (GCRA on one atomic: the theoretical arrival time of the next request).
pub struct Pace {
    /// Microseconds between two requests (changed by [`Pace::set_rate`]).
    interval_us: AtomicU64,
    tat_us: AtomicU64,
}

fn interval_of(rate: f64) -> Option<u64> {
    if rate.is_nan() || rate <= 0.0 || !rate.is_finite() {
        return None;
    }
    Some((1_000_000.0 / rate).clamp(1.0, 3.6e9) as u64)
}

impl Pace {
    /// `None` when `rate` is 0 (no pace).
    pub fn new(rate: f64) -> Option<Self> {
        Some(Pace {
            interval_us: AtomicU64::new(interval_of(rate)?),
            tat_us: AtomicU64::new(0),
        })
    }

    /// Changes the rate (ignored unless positive and finite).
    pub fn set_rate(&self, rate: f64) {
        if let Some(i) = interval_of(rate) {
            self.interval_us.store(i, Relaxed);
        }
    }

    /// Requests per second now.
    pub fn rate(&self) -> f64 {
        1_000_000.0 / self.interval_us.load(Relaxed).max(1) as f64
    }

    /// Takes one request's place if there is one at `now_us` (a monotonic clock).
    pub fn try_take(&self, now_us: u64) -> bool {
        let interval = self.interval_us.load(Relaxed);
        // A burst of one second's worth (one request when slower than one a second).
        let burst = interval.max(1_000_000);
        let mut cur = self.tat_us.load(Relaxed);
        loop {
            let base = cur.max(now_us);
            let next = base + interval;
            if next > now_us + burst {
                return false;
            }
            match self
                .tat_us
                .compare_exchange_weak(cur, next, Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Seconds until a place frees (for Retry-After), at least 1.
    pub fn retry_after(&self, now_us: u64) -> u64 {
        let interval = self.interval_us.load(Relaxed);
        let tat = self.tat_us.load(Relaxed);
        tat.saturating_sub(now_us + interval.max(1_000_000))
            .saturating_add(interval)
            .div_ceil(1_000_000)
            .max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_become_familiar_by_count_and_share() {
        let f = Familiar::new();
        assert!(!f.ready());
        f.add(ip("95.56.1.2"), 150);
        f.add(ip("95.57.200.9"), 5);
        assert!(f.ready());
        // Another address of the same /16 is familiar; the neighbouring /16 has too few.
        assert!(f.is_familiar(ip("95.56.255.1"), 20, 0.001));
        assert!(!f.is_familiar(ip("95.57.0.1"), 20, 0.001));
        assert!(!f.is_familiar(ip("20.1.2.3"), 20, 0.001));
        // The share rule: 150 of 155 is under a 99 % share.
        assert!(!f.is_familiar(ip("95.56.1.2"), 20, 0.99));
        assert_eq!(f.count(20, 0.001), 1);
        // IPv4-mapped IPv6 is the IPv4 network.
        assert!(f.is_familiar(ip("::ffff:95.56.3.4"), 20, 0.001));
    }

    #[test]
    fn ipv6_counts_per_32_and_decay_halves() {
        let f = Familiar::new();
        f.add(ip("2a00:1:2:3::1"), 200);
        assert!(f.is_familiar(ip("2a00:1:ffff::9"), 20, 0.001));
        assert!(!f.is_familiar(ip("2a00:2::1"), 20, 0.001));
        f.decay();
        assert!(f.is_familiar(ip("2a00:1::1"), 100, 0.0));
        assert!(!f.is_familiar(ip("2a00:1::1"), 101, 0.0));
        for _ in 0..10 {
            f.decay();
        }
        assert!(!f.is_familiar(ip("2a00:1::1"), 1, 0.0));
        assert!(!f.ready());
    }

    #[test]
    fn learn_samples_with_weight() {
        let f = Familiar::new();
        for _ in 0..800 {
            f.learn(ip("10.1.2.3"));
        }
        // One in eight, weight eight: the count on one thread, give or take one sample.
        let n = f.slot(ip("10.1.0.0")).load(Relaxed);
        assert!((792..=800).contains(&n), "{n}");
    }

    #[test]
    fn pace_allows_rate_with_one_second_burst() {
        let p = Pace::new(2.0).unwrap();
        let t0 = 10_000_000;
        // Burst: one second's worth at once.
        assert!(p.try_take(t0));
        assert!(p.try_take(t0));
        assert!(!p.try_take(t0));
        assert!(p.retry_after(t0) >= 1);
        // Over ten seconds, about 2 a second.
        let mut ok = 0;
        for ms in (0..10_000).step_by(10) {
            if p.try_take(t0 + ms * 1000) {
                ok += 1;
            }
        }
        assert!((19..=21).contains(&ok), "{ok}");
        // A new rate applies to the next request.
        p.set_rate(100.0);
        assert!((p.rate() - 100.0).abs() < 1e-6);
        let t1 = t0 + 20_000_000;
        let n = (0..200).filter(|_| p.try_take(t1)).count();
        assert_eq!(n, 100, "one second's burst at 100/s");
        p.set_rate(-1.0);
        assert!((p.rate() - 100.0).abs() < 1e-6, "a bad rate is ignored");
        assert!(Pace::new(0.0).is_none());
        assert!(Pace::new(f64::NAN).is_none());
    }
}
