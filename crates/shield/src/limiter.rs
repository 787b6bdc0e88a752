//! The adaptive origin concurrency limit of one route class: how many requests of the class may
//! be at the origin at once, learned from the origin's own response times.
//!
//! A fixed `max_in_flight` is right for one origin only. An origin that serves one search at a
//! time (a small PHP-FPM pool) with sixteen allowed in flight keeps fifteen of them waiting
//! *inside the origin*, where every article miss queues behind them too; an origin with a large
//! pool is held back by a small cap. The limiter follows TCP Vegas as Netflix's
//! `concurrency-limits` (`VegasLimit`) and Envoy's adaptive concurrency filter apply it to
//! servers: the lowest response time seen recently is the origin's *no-load latency*; with `L`
//! requests in flight and an average response time `rtt`, about `L × (1 − noload / rtt)` of them
//! are waiting inside the origin rather than being worked on. The limit grows while that queue
//! is (nearly) empty and shrinks when it is not, so the origin is kept busy without a queue
//! building inside it. Everything beyond the limit waits in the shield's own short, bounded
//! queue, where it can be answered from the cache, shed, or challenged.
//!
//! Pure logic with no clock and no IO: the caller feeds response times, so the tests replay
//! synthetic latency series. Never panics, whatever the input (NaN, zero, huge values).

/// Samples per half of the no-load window. The no-load latency is the lowest response time of
/// the current and the previous half, so a faster origin is noticed at once and a slower one
/// (new code, a bigger database) after one to two halves. 256 samples is about 13 s of a
/// saturated 20-a-second search and a few minutes of a quiet site.
const NOLOAD_WINDOW: u32 = 256;

/// The first window is short: until one probe has run, the no-load latency may have been
/// learned from requests that already waited (a shield started in the middle of a flood).
const FIRST_NOLOAD_WINDOW: u32 = 32;

/// Response times below this (milliseconds) are counted as this: a clock that returned zero
/// must not make every later sample look like a queue.
const MIN_RTT_MS: f64 = 0.05;

/// The limit a class starts with. One, as nothing is known yet: the first response then shows
/// the origin's no-load latency, and slow start doubles the limit per round while demand
/// presses against it (1, 2, 4, 8 within seven responses), so an editor's admin screen that
/// fires several requests at once waits a round or two, once. A larger start stays in place
/// while traffic is light (a limit only grows or shrinks on evidence) and lets a flood's first
/// second put that many slow requests into a one-worker origin, in front of every article miss.
const INITIAL_LIMIT: f64 = 1.0;

/// Rounds after a decrease during which the limit does not grow again. At a limit of 1 there is
/// never a queue to see, so without a pause the limit would climb to 2 on the next response and
/// fall back on the one after: an origin with one worker would keep a request waiting inside it
/// half the time, and every other class's requests (article misses) behind it.
const HOLD_ROUNDS: u32 = 10;

/// The adaptive limit of one route class.
#[derive(Debug, Clone)]
pub struct Limiter {
    ceiling: f64,
    limit: f64,
    /// Doubling the limit each round until the first sign of a queue (TCP's slow start), then
    /// one step at a time.
    slow_start: bool,
    min_cur: f64,
    min_prev: f64,
    window_samples: u32,
    /// The round being collected: one round is about `limit` responses, one "round trip" of
    /// the whole window of requests, so the limit moves at most once per round.
    round_n: u32,
    round_sum: f64,
    round_full: bool,
    /// A no-load probe is running: the limit is 1 until a request that was alone at the origin
    /// comes back, then it returns to this value.
    probe: Option<f64>,
    /// Rounds left before the limit may grow again (see [`HOLD_ROUNDS`]).
    hold: u32,
}

impl Limiter {
    /// A limiter that never goes above `ceiling` (the route's `max_in_flight`) nor below 1.
    ///
    /// It starts at [`INITIAL_LIMIT`] in slow start: the limit doubles per round up to what the
    /// origin sustains, or comes down at the first round that shows a queue.
    pub fn new(ceiling: usize) -> Self {
        let ceiling = ceiling.max(1) as f64;
        Limiter {
            ceiling,
            limit: INITIAL_LIMIT.min(ceiling),
            slow_start: true,
            min_cur: f64::INFINITY,
            min_prev: f64::INFINITY,
            window_samples: 0,
            round_n: 0,
            round_sum: 0.0,
            round_full: false,
            probe: None,
            hold: 0,
        }
    }

    /// Requests allowed at the origin now (at least 1, at most the ceiling).
    pub fn limit(&self) -> usize {
        if self.probe.is_some() {
            return 1;
        }
        (self.limit.floor() as usize).max(1)
    }

    /// The no-load latency learned so far, in milliseconds (`None` before the first sample).
    pub fn noload_ms(&self) -> Option<f64> {
        let m = self.min_cur.min(self.min_prev);
        m.is_finite().then_some(m)
    }

    /// Feeds one response time. `in_flight` is how many requests of the class were at the
    /// origin when this one was sent (itself included), `limit` the limit at that moment.
    ///
    /// A request sent with the limit reached shows that demand pressed against it; a limit that
    /// was never used proves nothing about a larger one, so the limit only grows on such rounds
    /// (Netflix's limiter does the same), and a quiet night does not leave the ceiling in place
    /// for the morning's flood.
    pub fn on_sample(&mut self, rtt_ms: f64, in_flight: usize, limit: usize) {
        let rtt = if rtt_ms.is_finite() {
            rtt_ms.max(MIN_RTT_MS)
        } else {
            // A NaN or infinite time is no evidence of speed; count it as slow.
            return self.on_overload();
        };
        let alone = in_flight <= 1;
        let full = in_flight >= limit;
        self.min_cur = self.min_cur.min(rtt);
        if let Some(restore) = self.probe {
            // During a probe only a request that had the origin to itself says what no load
            // looks like; the ones still coming back from before the probe are skipped.
            if alone {
                self.probe = None;
                self.limit = restore;
            }
            return;
        }
        self.window_samples += 1;
        let window = if self.min_prev.is_finite() {
            NOLOAD_WINDOW
        } else {
            FIRST_NOLOAD_WINDOW
        };
        if self.window_samples >= window {
            self.min_prev = self.min_cur;
            self.min_cur = f64::INFINITY;
            self.window_samples = 0;
            // Under steady load every response waited behind others, and the lowest of them
            // drifts upward: a limiter that believed it would grow without end (Vegas' known
            // weakness). So, as Envoy's gradient controller does, once per window the limit
            // drops to 1 until one request has the origin to itself. That costs one round trip
            // of throughput every few hundred responses.
            if self.limit >= 2.0 {
                self.probe = Some(self.limit);
                self.round_n = 0;
                self.round_sum = 0.0;
                self.round_full = false;
                return;
            }
        }
        self.round_n += 1;
        self.round_sum += rtt;
        self.round_full |= full;
        if f64::from(self.round_n) < self.limit {
            return;
        }
        let avg = self.round_sum / f64::from(self.round_n);
        let full = self.round_full;
        self.round_n = 0;
        self.round_sum = 0.0;
        self.round_full = false;
        let Some(noload) = self.noload_ms() else {
            return;
        };
        // Requests waiting inside the origin, on average, during this round.
        let queued = self.limit * (1.0 - noload / avg).max(0.0);
        // Thresholds grow with the logarithm of the limit (as in Netflix's Vegas), so timing
        // noise of a few per cent at a limit of 64 is not read as a queue, while at a limit of
        // 1 or 2 one whole request waiting inside the origin is: it is what every other route
        // class's requests then wait behind.
        let log = self.limit.log10();
        let alpha = (1.5 * log).max(0.5);
        let beta = (3.0 * log).max(0.9);
        self.hold = self.hold.saturating_sub(1);
        if queued > beta {
            // Multiplicative decrease toward what the latency says the origin sustains:
            // `limit × noload / rtt` is the share actually being worked on, plus one so the
            // origin never waits for the shield between two requests.
            self.slow_start = false;
            let most = (self.limit - 1.0).max(1.0);
            self.limit = (self.limit * noload / avg + 1.0).clamp(1.0, most);
            self.hold = HOLD_ROUNDS;
        } else if queued <= alpha && full && self.hold == 0 {
            self.limit = if self.slow_start {
                self.limit * 2.0
            } else {
                self.limit + 1.0
            };
        }
        self.limit = self.limit.clamp(1.0, self.ceiling);
    }

    /// The origin timed out, failed or answered 503: halve the limit (AIMD's decrease), as an
    /// overloaded origin often fails before it gets slow.
    pub fn on_overload(&mut self) {
        if let Some(restore) = self.probe.take() {
            self.limit = restore;
        }
        self.slow_start = false;
        self.hold = HOLD_ROUNDS;
        self.limit = (self.limit / 2.0).max(1.0);
        self.round_n = 0;
        self.round_sum = 0.0;
        self.round_full = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed loop against a model origin with `workers` workers, each taking `service_ms`
    /// per request, and a demand that always fills the limit: with `L` in flight, a response
    /// takes `service_ms × max(1, L / workers)` (the requests beyond the workers wait inside
    /// the origin). Returns the limits seen after each response.
    fn drive(lim: &mut Limiter, workers: f64, service_ms: f64, responses: usize) -> Vec<usize> {
        let mut seen = Vec::with_capacity(responses);
        for _ in 0..responses {
            let l = lim.limit();
            let rtt = service_ms * (l as f64 / workers).max(1.0);
            lim.on_sample(rtt, l, l);
            seen.push(lim.limit());
        }
        seen
    }

    #[test]
    fn converges_on_a_one_worker_origin_from_the_start() {
        let mut lim = Limiter::new(16);
        let seen = drive(&mut lim, 1.0, 50.0, 400);
        let tail = &seen[200..];
        assert!(tail.iter().all(|&l| l <= 2), "limits at the end: {tail:?}");
        // Mostly 1: a request waiting inside the origin is tried now and then, not kept.
        let ones = tail.iter().filter(|&&l| l == 1).count();
        assert!(ones * 10 >= tail.len() * 8, "{ones} of {} at 1", tail.len());
        assert_eq!(lim.noload_ms(), Some(50.0));
    }

    #[test]
    fn comes_down_from_the_ceiling_when_the_origin_queues() {
        // A limiter that reached the ceiling while the origin was fast (the queue-free samples
        // of a quiet time), then meets a flood at an origin with one worker.
        let mut lim = Limiter::new(16);
        for _ in 0..200 {
            let l = lim.limit();
            lim.on_sample(50.0, l, l);
        }
        assert_eq!(lim.limit(), 16, "grew to the ceiling while nothing queued");
        let seen = drive(&mut lim, 1.0, 50.0, 100);
        assert!(seen[60..].iter().all(|&l| l <= 2), "{seen:?}");
    }

    #[test]
    fn finds_the_workers_of_a_larger_origin() {
        let mut lim = Limiter::new(64);
        let seen = drive(&mut lim, 8.0, 40.0, 3000);
        let tail = &seen[2000..];
        // Eight workers: at least eight in flight keep them busy; a few more are allowed by
        // the thresholds, never the ceiling. The no-load probes (a limit of 1 for one
        // response every window) are the only exceptions.
        assert!(tail.iter().all(|&l| l <= 14), "{tail:?}");
        let busy = tail.iter().filter(|&&l| l >= 7).count();
        assert!(busy * 100 >= tail.len() * 98, "{busy} of {}", tail.len());
    }

    #[test]
    fn never_grows_without_demand_and_stays_within_bounds() {
        let mut lim = Limiter::new(16);
        // Traffic that never fills the limit (one request at a time against a limit of 2 after
        // a first doubling) leaves it where it is.
        lim.on_sample(3.0, 1, 1);
        assert_eq!(lim.limit(), 2);
        for _ in 0..1000 {
            lim.on_sample(3.0, 1, 2);
        }
        assert_eq!(
            lim.limit(),
            2,
            "an unused limit proves nothing about a larger one"
        );
        for _ in 0..1000 {
            let l = lim.limit();
            lim.on_sample(3.0, l, l);
        }
        assert_eq!(lim.limit(), 16, "never above the ceiling");
        for rtt in [f64::NAN, f64::INFINITY, -5.0, 0.0, 1e300] {
            for _ in 0..100 {
                let l = lim.limit();
                lim.on_sample(rtt, l, l);
                assert!((1..=16).contains(&lim.limit()));
            }
        }
        let mut one = Limiter::new(0);
        one.on_sample(10.0, 1, 1);
        assert_eq!(one.limit(), 1, "a ceiling of 0 is read as 1");
    }

    #[test]
    fn overload_halves_and_never_goes_below_one() {
        let mut lim = Limiter::new(32);
        for _ in 0..200 {
            let l = lim.limit();
            lim.on_sample(10.0, l, l);
        }
        assert_eq!(lim.limit(), 32);
        lim.on_overload();
        assert_eq!(lim.limit(), 16);
        for _ in 0..10 {
            lim.on_overload();
        }
        assert_eq!(lim.limit(), 1);
    }

    #[test]
    fn relearns_a_slower_origin() {
        let mut lim = Limiter::new(16);
        drive(&mut lim, 1.0, 20.0, 300);
        assert_eq!(lim.noload_ms(), Some(20.0));
        // The origin now takes 80 ms for the same work: after two windows that is the new
        // no-load latency, not a standing queue that would pin the limit at 1 forever.
        drive(&mut lim, 1.0, 80.0, 2 * NOLOAD_WINDOW as usize + 10);
        assert_eq!(lim.noload_ms(), Some(80.0));
    }
}
