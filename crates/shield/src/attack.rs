//! Attack mode as the shield runs it: the detector fed once a second from the shield's own
//! counters, the episode being recorded while the mode is not `normal`, the manual override, and
//! finished episodes appended to a JSON-lines file.
//!
//! The request path only reads an atomic to learn the mode; while an attack is on it adds the
//! request to the episode with `try_lock`, so it never waits on the recorder.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use qalqan_detect::{DetectConfig, Detector, Episode, Mode, Override, Sample, Transition};

/// The shield's attack state.
pub struct Attack {
    mode: AtomicU8,
    extra_bits: AtomicU8,
    inner: Mutex<Inner>,
    episodes_path: Option<PathBuf>,
}

struct Inner {
    detector: Detector,
    episode: Option<Episode>,
    last_transition: Option<Transition>,
    rng: u64,
}

fn code(m: Mode) -> u8 {
    match m {
        Mode::Normal => 0,
        Mode::Elevated => 1,
        Mode::UnderAttack => 2,
    }
}

fn from_code(c: u8) -> Mode {
    match c {
        1 => Mode::Elevated,
        2 => Mode::UnderAttack,
        _ => Mode::Normal,
    }
}

impl Attack {
    /// A detector in `normal` mode.
    pub fn new(cfg: DetectConfig, episodes_path: Option<PathBuf>) -> Self {
        Attack {
            mode: AtomicU8::new(0),
            extra_bits: AtomicU8::new(0),
            inner: Mutex::new(Inner {
                detector: Detector::new(cfg),
                episode: None,
                last_transition: None,
                rng: 0x9E37_79B9_7F4A_7C15,
            }),
            episodes_path,
        }
    }

    /// The mode now (one atomic load).
    pub fn mode(&self) -> Mode {
        from_code(self.mode.load(Relaxed))
    }

    /// Bits added to the challenge difficulty now (0 unless under attack; see [`extra_bits`]).
    pub fn extra_difficulty(&self) -> u8 {
        self.extra_bits.load(Relaxed)
    }

    /// Adds one request to the current episode, if there is one. Never waits.
    pub fn observe(&self, req: &qalqan_detect::Request<'_>) {
        if self.mode() == Mode::Normal {
            return;
        }
        if let Ok(mut g) = self.inner.try_lock() {
            // xorshift: the reservoir sample only needs a cheap, non-adversarial spread.
            let mut x = g.rng;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            g.rng = x;
            if let Some(e) = g.episode.as_mut() {
                e.observe(req, x);
            }
        }
    }

    /// Feeds one second of counters; returns the transition, if any.
    pub fn tick(&self, now_ms: u64, sample: Sample) -> Option<Transition> {
        let Ok(mut g) = self.inner.lock() else {
            return None;
        };
        let t = g.detector.tick(now_ms, sample);
        let extra = if g.detector.mode() == Mode::UnderAttack {
            extra_bits(g.detector.last_rps() / g.detector.baseline_rps().max(1.0))
        } else {
            0
        };
        self.extra_bits.store(extra, Relaxed);
        if let Some(e) = g.episode.as_mut() {
            e.record_second(now_ms, sample.requests);
        }
        self.apply(&mut g, now_ms, t)
    }

    /// Sets or clears the manual override.
    pub fn set_override(&self, now_ms: u64, ov: Override) -> Option<Transition> {
        let Ok(mut g) = self.inner.lock() else {
            return None;
        };
        let t = g.detector.set_override(now_ms, ov);
        self.apply(&mut g, now_ms, t)
    }

    fn apply(&self, g: &mut Inner, now_ms: u64, t: Option<Transition>) -> Option<Transition> {
        let t = t?;
        self.mode.store(code(t.to), Relaxed);
        g.last_transition = Some(t);
        tracing::warn!(from = t.from.as_str(), to = t.to.as_str(), reason = ?t.reason, "attack mode changed");
        if t.from == Mode::Normal && g.episode.is_none() {
            g.episode = Some(Episode::new(now_ms));
        }
        if t.to == Mode::Normal
            && let Some(mut e) = g.episode.take()
        {
            e.finish(now_ms);
            self.write_episode(&e);
        }
        Some(t)
    }

    /// Appends a finished episode to the episodes file (once per attack, so plain blocking IO).
    fn write_episode(&self, e: &Episode) {
        let Some(path) = &self.episodes_path else {
            return;
        };
        let line = match serde_json::to_string(e) {
            Ok(l) => l,
            Err(err) => {
                tracing::error!(error = %err, "cannot serialise an attack episode");
                return;
            }
        };
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        match r {
            Ok(()) => tracing::info!(path = %path.display(), "attack episode recorded"),
            Err(err) => {
                tracing::error!(path = %path.display(), error = %err, "cannot write an attack episode")
            }
        }
    }

    /// The state as JSON for the admin listener.
    pub fn status_json(&self) -> String {
        let Ok(g) = self.inner.lock() else {
            return "{}".into();
        };
        let d = &g.detector;
        serde_json::json!({
            "mode": d.mode().as_str(),
            "override_until_ms": d.override_until(),
            "rps": d.last_rps(),
            "baseline_rps": d.baseline_rps(),
            "episode_started_ms": g.episode.as_ref().map(|e| e.start_ms()),
            "last_transition": g.last_transition,
        })
        .to_string()
    }
}

/// Extra challenge difficulty for a request rate `ratio` times the baseline: one bit (twice the
/// work) per doubling above ten times the baseline, at most four (sixteen times the work), so a
/// bigger flood pays more while a slow phone still passes in a few seconds.
pub fn extra_bits(ratio: f64) -> u8 {
    if !ratio.is_finite() || ratio < 20.0 {
        return 0;
    }
    ((ratio / 10.0).log2().floor() as u8).min(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn difficulty_grows_with_the_flood_and_is_capped() {
        assert_eq!(extra_bits(f64::NAN), 0);
        assert_eq!(extra_bits(5.0), 0);
        assert_eq!(extra_bits(10.0), 0);
        assert_eq!(extra_bits(20.0), 1);
        assert_eq!(extra_bits(40.0), 2);
        assert_eq!(extra_bits(80.0), 3);
        assert_eq!(extra_bits(160.0), 4);
        assert_eq!(extra_bits(400.0), 4, "the Kursiv flood: capped");
        assert_eq!(extra_bits(f64::INFINITY), 0);
    }
}
