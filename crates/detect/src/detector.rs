//! The attack state machine: normal, elevated, under attack.

use serde::Serialize;

use crate::config::DetectConfig;

/// How hard the shield defends a route class (or the whole site).
///
/// The order matters: a later variant is a harder mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Traffic looks like this site's usual traffic. The baseline learns only here.
    Normal,
    /// Traffic is well above the baseline: per-client limits tighten, an episode is
    /// being recorded.
    Elevated,
    /// A flood, or an origin that cannot keep up: challenges and cache-only answers.
    UnderAttack,
}

impl Mode {
    /// The name used in logs, metrics and episode files.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Elevated => "elevated",
            Mode::UnderAttack => "under_attack",
        }
    }
}

/// What the caller measured during the second that just ended.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Requests received during the second (for this route class, or site-wide).
    pub requests: u64,
    /// 95th percentile of origin response time during the second, in milliseconds;
    /// 0 (or anything not finite) when no request reached the origin.
    pub origin_p95_ms: f64,
    /// Requests waiting on the origin right now.
    pub origin_in_flight: u32,
    /// How many requests the origin is allowed to have in flight; 0 when unknown,
    /// which disables the in-flight check.
    pub origin_capacity: u32,
}

/// Why the mode changed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Reason {
    /// The request rate stayed at or above an enter threshold.
    Rate {
        /// Requests per second in the deciding second.
        rps: f64,
        /// The baseline it was compared with.
        baseline_rps: f64,
    },
    /// The shield's queue for the origin overflowed: it was already refusing requests because
    /// the origin could not keep up (see [`Detector::origin_overflow`]).
    OriginQueueFull,
    /// The origin stayed saturated (in-flight requests or latency).
    OriginSaturated {
        /// In-flight requests in the deciding second.
        in_flight: u32,
        /// p95 latency in the deciding second, in milliseconds.
        p95_ms: f64,
    },
    /// Every signal stayed below the exit thresholds for the whole cooldown.
    Cooldown,
    /// An operator forced the mode.
    OverrideSet,
    /// A manual override expired or was cleared; automatic detection decides again.
    OverrideEnded,
}

/// A change of mode, returned by [`Detector::tick`] and [`Detector::set_override`].
///
/// Leaving [`Mode::Normal`] starts an [`Episode`](crate::Episode); returning to it
/// ends the episode.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Transition {
    /// The caller's clock when the change happened, in milliseconds.
    pub at_ms: u64,
    /// The mode before.
    pub from: Mode,
    /// The mode now.
    pub to: Mode,
    /// Why.
    pub reason: Reason,
}

/// A manual decision by an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Override {
    /// Stay in [`Mode::UnderAttack`] until this time (caller's clock, milliseconds),
    /// whatever the traffic looks like. Afterwards automatic detection decides again.
    UnderAttackUntil(u64),
    /// Automatic detection only.
    Auto,
}

/// The attack detector for one route class or for the whole site.
///
/// The shield keeps one per route class (search, article pages, feeds, …) and one
/// site-wide, counts requests in the request path, and calls [`tick`](Self::tick) once
/// a second with what it counted. All durations in the configuration count ticks.
///
/// **Architecture invariant:** the detector is a few dozen bytes, never allocates and
/// never panics, whatever the input: times that go backwards, NaN latencies, zero
/// capacities.
#[derive(Debug, Clone)]
pub struct Detector {
    config: DetectConfig,
    /// Weight of a new sample in the baselines, from the half-life.
    alpha: f64,
    ticks: u64,
    /// Ticks that taught the rate baseline; the first ones are averaged plainly so the
    /// baseline does not start from zero.
    learned: u64,
    baseline_rps: f64,
    learned_latency: u64,
    baseline_p95_ms: f64,
    auto_mode: Mode,
    mode: Mode,
    override_until: Option<u64>,
    /// Consecutive ticks at or above the elevated enter threshold (or saturated).
    hot_elevated: u32,
    /// Consecutive ticks at or above the attack enter threshold (or saturated).
    hot_attack: u32,
    /// Consecutive ticks below the elevated exit threshold, origin recovered.
    calm_elevated: u32,
    /// Consecutive ticks below the attack exit threshold, origin recovered.
    calm_attack: u32,
    /// Whether the origin counted as saturated last tick (for its own hysteresis).
    saturated: bool,
    /// An origin queue overflowed since the last tick: that tick counts as saturated.
    overflowed: bool,
    last_rps: f64,
}

impl Detector {
    /// A detector in [`Mode::Normal`] with no baseline yet.
    ///
    /// The configuration should have passed [`DetectConfig::validate`]; if it did not,
    /// the detector still works, with odd but safe behaviour.
    pub fn new(config: DetectConfig) -> Self {
        let half_life = f64::from(config.baseline_half_life_secs.max(1));
        let alpha = 1.0 - 0.5_f64.powf(1.0 / half_life);
        Self {
            alpha,
            ticks: 0,
            learned: 0,
            baseline_rps: config.baseline_floor_rps,
            learned_latency: 0,
            baseline_p95_ms: config.latency_floor_ms,
            auto_mode: Mode::Normal,
            mode: Mode::Normal,
            override_until: None,
            hot_elevated: 0,
            hot_attack: 0,
            calm_elevated: 0,
            calm_attack: 0,
            saturated: false,
            overflowed: false,
            last_rps: 0.0,
            config,
        }
    }

    /// The mode the shield should apply now.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The learned request rate, never below the configured floor.
    pub fn baseline_rps(&self) -> f64 {
        self.baseline_rps.max(self.config.baseline_floor_rps)
    }

    /// The learned origin p95 latency, never below the configured floor.
    pub fn baseline_p95_ms(&self) -> f64 {
        self.baseline_p95_ms.max(self.config.latency_floor_ms)
    }

    /// The request rate of the last tick.
    pub fn last_rps(&self) -> f64 {
        self.last_rps
    }

    /// Until when a manual under-attack override holds, if one does.
    pub fn override_until(&self) -> Option<u64> {
        self.override_until
    }

    /// The configuration in use.
    pub fn config(&self) -> &DetectConfig {
        &self.config
    }

    /// Sets or clears a manual override, effective immediately.
    ///
    /// An override that is already over (`until_ms <= now_ms`) is the same as
    /// [`Override::Auto`].
    pub fn set_override(&mut self, now_ms: u64, ov: Override) -> Option<Transition> {
        match ov {
            Override::UnderAttackUntil(until) if until > now_ms => {
                self.override_until = Some(until);
                self.switch(now_ms, Mode::UnderAttack, Reason::OverrideSet)
            }
            _ => {
                let had = self.override_until.take().is_some();
                let reason = if had {
                    Reason::OverrideEnded
                } else {
                    Reason::OverrideSet
                };
                self.switch(now_ms, self.auto_mode, reason)
            }
        }
    }

    /// Feeds the second that just ended; returns the change of mode, if any.
    ///
    /// Call once per second. `now_ms` is only used for override expiry and the
    /// transition's timestamp, so a clock that jumps backwards does no harm.
    pub fn tick(&mut self, now_ms: u64, sample: Sample) -> Option<Transition> {
        self.ticks = self.ticks.saturating_add(1);
        let cfg = &self.config;
        // u64 -> f64 loses precision only above 2^53 requests a second.
        let rps = sample.requests as f64;
        self.last_rps = rps;
        let baseline = self.baseline_rps();
        let ratio = rps / baseline;
        let rate_counts = self.ticks > u64::from(cfg.warmup_secs);

        let p95 = if sample.origin_p95_ms.is_finite() && sample.origin_p95_ms > 0.0 {
            sample.origin_p95_ms
        } else {
            0.0
        };
        let latency_ratio = p95 / self.baseline_p95_ms();
        let load = if sample.origin_capacity > 0 {
            f64::from(sample.origin_in_flight) / f64::from(sample.origin_capacity)
        } else {
            0.0
        };
        // The origin has its own hysteresis: once saturated it must come back below
        // the lower exit thresholds before it counts as recovered.
        let saturated = std::mem::take(&mut self.overflowed)
            || if self.saturated {
                load >= cfg.saturation_exit_ratio || latency_ratio >= cfg.latency_exit_factor
            } else {
                load >= cfg.saturation_enter_ratio || latency_ratio >= cfg.latency_enter_factor
            };
        self.saturated = saturated;

        let rate_attack = rate_counts && ratio >= cfg.attack_enter_factor;
        let rate_elevated = rate_counts && ratio >= cfg.elevated_enter_factor;
        bump(&mut self.hot_attack, rate_attack || saturated);
        bump(
            &mut self.hot_elevated,
            rate_elevated || rate_attack || saturated,
        );
        bump(
            &mut self.calm_attack,
            ratio < cfg.attack_exit_factor && !saturated,
        );
        bump(
            &mut self.calm_elevated,
            ratio < cfg.elevated_exit_factor && !saturated,
        );

        // Learn only from ordinary seconds: in Normal, and not on a second that is
        // already on its way to Elevated. A flood therefore never teaches the
        // baseline that floods are normal.
        if self.mode == Mode::Normal && self.hot_elevated == 0 {
            self.learned += 1;
            self.baseline_rps = ewma(self.baseline_rps, rps, self.alpha, self.learned);
            if p95 > 0.0 {
                self.learned_latency += 1;
                self.baseline_p95_ms =
                    ewma(self.baseline_p95_ms, p95, self.alpha, self.learned_latency);
            }
        }

        let escalation_reason = if rate_attack || (rate_elevated && !saturated) {
            Reason::Rate {
                rps,
                baseline_rps: baseline,
            }
        } else {
            Reason::OriginSaturated {
                in_flight: sample.origin_in_flight,
                p95_ms: p95,
            }
        };
        let enter = self.config.enter_after_secs;
        let cooldown = self.config.cooldown_secs;
        // One level per tick at most, so the shield always passes through Elevated
        // and an episode always starts with it.
        let auto = match self.auto_mode {
            Mode::Normal if self.hot_elevated >= enter => Some((Mode::Elevated, escalation_reason)),
            Mode::Elevated if self.hot_attack >= enter => {
                Some((Mode::UnderAttack, escalation_reason))
            }
            Mode::Elevated if self.calm_elevated >= cooldown => {
                Some((Mode::Normal, Reason::Cooldown))
            }
            Mode::UnderAttack if self.calm_attack >= cooldown => {
                Some((Mode::Elevated, Reason::Cooldown))
            }
            _ => None,
        };
        let mut reason = None;
        if let Some((mode, why)) = auto {
            self.auto_mode = mode;
            reason = Some(why);
        }

        match self.override_until {
            Some(until) if now_ms < until => None,
            Some(_) => {
                self.override_until = None;
                self.switch(now_ms, self.auto_mode, Reason::OverrideEnded)
            }
            None => reason.and_then(|why| self.switch(now_ms, self.auto_mode, why)),
        }
    }

    /// The shield's queue for the origin overflowed just now: requests are being refused
    /// because the origin cannot keep up. Escalates one level at once, without waiting for
    /// the next tick or for `enter_after_secs`; the caller calls it again for the next level,
    /// so `Elevated` is still passed through (an episode starts there) but a flood that fills
    /// the queue is `UnderAttack` within milliseconds instead of seconds. The next tick counts
    /// as saturated, so the mode cannot cool down while the queue keeps overflowing.
    ///
    /// A full queue is direct evidence, not a statistic: the readers whose requests are shed
    /// are already being refused, so the harder mode (challenges, cache-only answers) can only
    /// help them. It applies during the warm-up too, like any origin saturation.
    pub fn origin_overflow(&mut self, now_ms: u64) -> Option<Transition> {
        self.overflowed = true;
        self.saturated = true;
        let enter = self.config.enter_after_secs;
        self.hot_elevated = self.hot_elevated.max(enter);
        self.hot_attack = self.hot_attack.max(enter);
        self.calm_elevated = 0;
        self.calm_attack = 0;
        let next = match self.auto_mode {
            Mode::Normal => Mode::Elevated,
            Mode::Elevated | Mode::UnderAttack => Mode::UnderAttack,
        };
        self.auto_mode = next;
        match self.override_until {
            Some(until) if now_ms < until => None,
            _ => self.switch(now_ms, next, Reason::OriginQueueFull),
        }
    }

    fn switch(&mut self, now_ms: u64, to: Mode, reason: Reason) -> Option<Transition> {
        let from = self.mode;
        if from == to {
            return None;
        }
        self.mode = to;
        Some(Transition {
            at_ms: now_ms,
            from,
            to,
            reason,
        })
    }
}

fn bump(streak: &mut u32, condition: bool) {
    *streak = if condition {
        streak.saturating_add(1)
    } else {
        0
    };
}

/// Exponentially weighted moving average, bias-corrected at the start: the first
/// `1/alpha` samples are averaged plainly, so the baseline is meaningful after a few
/// seconds instead of crawling up from its initial value over several half-lives.
fn ewma(current: f64, sample: f64, alpha: f64, samples: u64) -> f64 {
    let weight = alpha.max(1.0 / samples as f64);
    current + weight * (sample - current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(requests: u64) -> Sample {
        Sample {
            requests,
            origin_p95_ms: 80.0,
            origin_in_flight: 2,
            origin_capacity: 100,
        }
    }

    /// Drives a detector second by second, remembering every transition with the index
    /// of the tick that caused it.
    struct Run {
        detector: Detector,
        second: u64,
        transitions: Vec<(u64, Transition)>,
    }

    impl Run {
        fn new() -> Self {
            Self {
                detector: Detector::new(DetectConfig::default()),
                second: 0,
                transitions: Vec::new(),
            }
        }

        fn feed(&mut self, sample: Sample, seconds: u64) {
            for _ in 0..seconds {
                self.second += 1;
                if let Some(t) = self.detector.tick(self.second * 1000, sample) {
                    self.transitions.push((self.second, t));
                }
            }
        }

        fn modes(&self) -> Vec<Mode> {
            self.transitions.iter().map(|(_, t)| t.to).collect()
        }

        /// A detector that has learned 10 req/s over two minutes.
        fn quiet() -> Self {
            let mut run = Self::new();
            run.feed(rate(10), 120);
            assert!(run.transitions.is_empty());
            assert!((run.detector.baseline_rps() - 10.0).abs() < 0.01);
            run
        }
    }

    #[test]
    fn flood_goes_normal_elevated_under_attack_and_back_after_cooldown() {
        let mut run = Run::quiet();
        let start = run.second;

        // 400 times the baseline for five minutes.
        run.feed(rate(4_000), 300);
        assert_eq!(run.modes(), [Mode::Elevated, Mode::UnderAttack]);
        let elevated_after = run.transitions[0].0 - start;
        let attack_after = run.transitions[1].0 - start;
        assert!(elevated_after <= 3, "elevated after {elevated_after} ticks");
        assert!(attack_after <= 5, "under attack after {attack_after} ticks");
        assert!(matches!(run.transitions[0].1.reason, Reason::Rate { .. }));
        assert_eq!(run.detector.mode(), Mode::UnderAttack);
        // The flood taught the baseline nothing.
        assert!(
            (run.detector.baseline_rps() - 10.0).abs() < 0.01,
            "{}",
            run.detector.baseline_rps()
        );

        // The flood stops: nothing changes before the cooldown is over.
        let stop = run.second;
        run.feed(rate(10), 59);
        assert_eq!(run.detector.mode(), Mode::UnderAttack);
        run.feed(rate(10), 5);
        assert_eq!(
            run.modes(),
            [
                Mode::Elevated,
                Mode::UnderAttack,
                Mode::Elevated,
                Mode::Normal
            ]
        );
        let (down_at, down) = run.transitions[2];
        let (normal_at, normal) = run.transitions[3];
        assert_eq!(down.reason, Reason::Cooldown);
        assert_eq!(normal.reason, Reason::Cooldown);
        assert!(down_at - stop >= 60 && normal_at - stop >= 60);
        assert!(normal_at - stop <= 62);

        // And it learns again afterwards.
        run.feed(rate(12), 600);
        assert!(run.detector.baseline_rps() > 11.0);
        assert_eq!(run.transitions.len(), 4);
    }

    #[test]
    fn a_full_origin_queue_escalates_at_once_and_holds_the_mode() {
        let mut run = Run::quiet();
        let d = &mut run.detector;
        let t1 = d.origin_overflow(500_000).expect("normal -> elevated");
        assert_eq!((t1.from, t1.to), (Mode::Normal, Mode::Elevated));
        assert_eq!(t1.reason, Reason::OriginQueueFull);
        let t2 = d
            .origin_overflow(500_000)
            .expect("elevated -> under attack");
        assert_eq!((t2.from, t2.to), (Mode::Elevated, Mode::UnderAttack));
        assert_eq!(d.origin_overflow(500_001), None, "already there");
        // Quiet traffic, but the queue keeps overflowing: no cooldown.
        for s in 0..120u64 {
            let _ = d.origin_overflow(501_000 + s * 1000);
            assert_eq!(d.tick(501_500 + s * 1000, rate(10)), None);
        }
        // The overflow stops: the cooldown runs as for any attack.
        run.feed(rate(10), 59);
        assert_eq!(run.detector.mode(), Mode::UnderAttack);
        run.feed(rate(10), 1);
        assert_eq!(run.detector.mode(), Mode::Elevated);
    }

    #[test]
    fn rate_oscillating_around_thresholds_does_not_flap() {
        // Around the elevated enter threshold (40), one second each side: two seconds
        // in a row are needed, so nothing happens at all.
        let mut run = Run::quiet();
        for _ in 0..300 {
            run.feed(rate(45), 1);
            run.feed(rate(35), 1);
        }
        assert!(run.transitions.is_empty(), "{:?}", run.transitions);

        // Longer swings around the same threshold: enter once, then stay, because the
        // exit threshold (20) is never reached.
        let mut run = Run::quiet();
        for _ in 0..120 {
            run.feed(rate(45), 3);
            run.feed(rate(35), 2);
        }
        assert_eq!(run.modes(), [Mode::Elevated]);

        // Around the attack threshold (100) and dipping below the elevated exit
        // threshold for less than the cooldown: two transitions in ten minutes.
        let mut run = Run::quiet();
        for _ in 0..60 {
            run.feed(rate(120), 3);
            run.feed(rate(90), 3);
            run.feed(rate(15), 4);
        }
        assert_eq!(run.modes(), [Mode::Elevated, Mode::UnderAttack]);
    }

    #[test]
    fn quiet_site_floor_keeps_small_bursts_out_of_under_attack() {
        let mut run = Run::new();
        run.feed(rate(2), 120);
        assert_eq!(run.detector.baseline_rps(), 5.0);
        run.feed(rate(30), 300);
        assert!(run.detector.mode() < Mode::UnderAttack);
        assert!(
            run.modes().iter().all(|m| *m < Mode::UnderAttack),
            "{:?}",
            run.transitions
        );
    }

    #[test]
    fn warm_up_ignores_rate_but_not_saturation() {
        let mut run = Run::new();
        run.feed(rate(1), 1);
        run.feed(rate(5_000), 20);
        assert!(run.transitions.is_empty());

        let mut run = Run::new();
        run.feed(
            Sample {
                requests: 5,
                origin_p95_ms: 0.0,
                origin_in_flight: 95,
                origin_capacity: 100,
            },
            3,
        );
        assert_eq!(run.modes(), [Mode::Elevated, Mode::UnderAttack]);
        assert!(matches!(
            run.transitions[1].1.reason,
            Reason::OriginSaturated { in_flight: 95, .. }
        ));
    }

    #[test]
    fn origin_latency_saturation_has_hysteresis() {
        let mut run = Run::quiet();
        assert!((run.detector.baseline_p95_ms() - 80.0).abs() < 0.01);
        let slow = |p95| Sample {
            origin_p95_ms: p95,
            ..rate(10)
        };
        run.feed(slow(450.0), 3); // 5.6 x baseline
        assert_eq!(run.modes(), [Mode::Elevated, Mode::UnderAttack]);
        // 3 x baseline: below the enter factor, but not yet recovered.
        run.feed(slow(240.0), 120);
        assert_eq!(run.detector.mode(), Mode::UnderAttack);
        run.feed(slow(100.0), 61);
        assert_eq!(run.detector.mode(), Mode::Normal);
        assert!(
            run.detector.baseline_p95_ms() < 90.0,
            "slow seconds polluted the latency baseline"
        );
    }

    #[test]
    fn override_forces_under_attack_until_it_expires() {
        let mut run = Run::quiet();
        let now = run.second * 1000;
        let t = run
            .detector
            .set_override(now, Override::UnderAttackUntil(now + 30_000))
            .unwrap();
        assert_eq!(
            (t.from, t.to, t.reason),
            (Mode::Normal, Mode::UnderAttack, Reason::OverrideSet)
        );
        run.feed(rate(10), 29);
        assert!(run.transitions.is_empty());
        run.feed(rate(10), 1);
        assert_eq!(run.transitions[0].1.reason, Reason::OverrideEnded);
        assert_eq!(run.detector.mode(), Mode::Normal);
        assert_eq!(run.detector.override_until(), None);

        // Cleared early with Auto; during a real flood the automatic mode takes over.
        let now = run.second * 1000;
        run.detector
            .set_override(now, Override::UnderAttackUntil(now + 600_000));
        run.feed(rate(4_000), 10);
        assert_eq!(run.detector.mode(), Mode::UnderAttack);
        assert_eq!(
            run.detector.set_override(run.second * 1000, Override::Auto),
            None
        );
        assert_eq!(run.detector.mode(), Mode::UnderAttack);
        run.feed(rate(10), 61);
        assert_eq!(run.detector.mode(), Mode::Normal);

        // An override already in the past is the same as Auto.
        assert_eq!(
            run.detector
                .set_override(5_000_000, Override::UnderAttackUntil(1_000)),
            None
        );
    }

    #[test]
    fn hostile_inputs_do_not_panic() {
        let mut detector = Detector::new(DetectConfig::default());
        let samples = [
            Sample {
                requests: u64::MAX,
                origin_p95_ms: f64::NAN,
                origin_in_flight: u32::MAX,
                origin_capacity: 0,
            },
            Sample {
                requests: 0,
                origin_p95_ms: f64::INFINITY,
                origin_in_flight: 0,
                origin_capacity: 1,
            },
            Sample {
                requests: 7,
                origin_p95_ms: -3.0,
                origin_in_flight: 9,
                origin_capacity: u32::MAX,
            },
        ];
        // The clock jumps backwards, repeats and overflows.
        for (i, now) in [u64::MAX, 0, 10, 5, 5, u64::MAX - 1, 1]
            .into_iter()
            .cycle()
            .take(500)
            .enumerate()
        {
            detector.tick(now, samples[i % samples.len()]);
        }
        detector.set_override(u64::MAX, Override::UnderAttackUntil(u64::MAX));
        detector.tick(0, Sample::default());
        assert!(detector.baseline_rps().is_finite());
    }
}
