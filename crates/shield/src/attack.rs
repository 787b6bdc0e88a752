//! Attack mode as the shield runs it: the detector fed once a second from the shield's own
//! counters, the episode being recorded while the mode is not `normal`, the manual override, and
//! finished episodes appended to a JSON-lines file and offered to the atlas (`push`), whose
//! queue this module only fills.
//!
//! The request path only reads an atomic to learn the mode; while an attack is on it adds the
//! request to the episode with `try_lock`, so it never waits on the recorder.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use arc_swap::ArcSwapOption;
use qalqan_detect::{DetectConfig, Detector, Episode, Mode, Override, Sample, Transition};

/// The shield's attack state.
pub struct Attack {
    /// The site-wide detector's mode.
    mode: AtomicU8,
    /// The highest of the site's and every route class's mode: an episode is open while it is
    /// not `normal`.
    any: AtomicU8,
    extra_bits: AtomicU8,
    inner: Mutex<Inner>,
    episodes_path: Option<PathBuf>,
    /// Country and ASN tables (`[geo]`); swapped by a reload.
    geo: ArcSwapOption<qalqan_geo::Geo>,
    /// Episodes on their way to the atlas (`[atlas]`).
    push: crate::push::Pusher,
    /// Woken when the mode becomes `under_attack`: requests waiting in an origin queue that
    /// now need a challenge get it instead of their turn at the origin.
    began: tokio::sync::Notify,
    /// When an origin queue last reported an overflow (ms), so a flood's sheds reach the
    /// detector a few times a second rather than thousands of times.
    overflow_ms: std::sync::atomic::AtomicU64,
}

struct Inner {
    detector: Detector,
    /// One detector per route class, by name (as many as the configuration has classes; a
    /// reload keeps the baselines of the names it keeps).
    routes: std::collections::BTreeMap<String, Detector>,
    config: DetectConfig,
    episode: Option<Episode>,
    last_transition: Option<Transition>,
    rng: u64,
    /// When the open episode was last offered to the atlas (Unix ms).
    last_push_ms: u64,
}

fn code(m: Mode) -> u8 {
    match m {
        Mode::Normal => 0,
        Mode::Elevated => 1,
        Mode::UnderAttack => 2,
    }
}

/// Reads a mode stored with [`store_mode`].
pub fn load_mode(a: &AtomicU8) -> Mode {
    from_code(a.load(Relaxed))
}

/// Stores a mode in an atomic (a route class's own mode).
pub fn store_mode(a: &AtomicU8, m: Mode) {
    a.store(code(m), Relaxed);
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
            any: AtomicU8::new(0),
            extra_bits: AtomicU8::new(0),
            inner: Mutex::new(Inner {
                detector: Detector::new(cfg.clone()),
                routes: std::collections::BTreeMap::new(),
                config: cfg,
                episode: None,
                last_transition: None,
                rng: 0x9E37_79B9_7F4A_7C15,
                last_push_ms: 0,
            }),
            episodes_path,
            geo: ArcSwapOption::empty(),
            push: crate::push::Pusher::new(),
            began: tokio::sync::Notify::new(),
            overflow_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Notified when the mode becomes `under_attack` (see [`Attack::overflow`] and the ticker).
    pub fn began(&self) -> &tokio::sync::Notify {
        &self.began
    }

    /// An origin queue overflowed (a request was shed): the strongest sign that the origin
    /// cannot keep up, so it escalates the mode at once instead of at the next ticks (see
    /// [`qalqan_detect::Detector::origin_overflow`]). Never waits: if the detector is busy,
    /// the next shed tries again.
    pub fn overflow(&self, now_ms: u64) {
        let last = self.overflow_ms.load(Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < 100 {
            return;
        }
        self.overflow_ms.store(now_ms.max(1), Relaxed);
        let Ok(mut g) = self.inner.try_lock() else {
            return;
        };
        // Two steps: normal -> elevated (the episode starts there) -> under_attack.
        for _ in 0..2 {
            let t = g.detector.origin_overflow(now_ms);
            if self.apply(&mut g, now_ms, t).is_none() {
                break;
            }
        }
    }

    /// Sets the atlas episodes are pushed to (`None`: episodes stay local).
    pub fn set_atlas(&self, atlas: Option<std::sync::Arc<crate::push::Settings>>) {
        self.push.set_settings(atlas);
    }

    /// The atlas pusher (its queue, counters and settings).
    pub fn pusher(&self) -> &crate::push::Pusher {
        &self.push
    }

    /// Sets the country and ASN tables used for episodes (`None`: episodes go without).
    pub fn set_geo(&self, geo: Option<std::sync::Arc<qalqan_geo::Geo>>) {
        self.geo.store(geo);
    }

    /// The mode now (one atomic load).
    pub fn mode(&self) -> Mode {
        from_code(self.mode.load(Relaxed))
    }

    /// Bits added to the challenge difficulty now (0 unless under attack; see [`extra_bits`]).
    pub fn extra_difficulty(&self) -> u8 {
        self.extra_bits.load(Relaxed)
    }

    /// Whether an episode is being recorded: the site or some route class is not `normal`.
    pub fn recording(&self) -> bool {
        from_code(self.any.load(Relaxed)) != Mode::Normal
    }

    /// Adds one request to the current episode, if there is one. Never waits.
    pub fn observe(&self, req: &qalqan_detect::Request<'_>) {
        if !self.recording() {
            return;
        }
        // Country and AS are looked up here, so only while an episode is open: two binary
        // searches in memory, no IO, and nothing at all in normal mode.
        let mut req = *req;
        if let Some(geo) = self.geo.load().as_deref() {
            if req.country.is_none() {
                req.country = geo.country(req.addr);
            }
            if req.asn.is_none() {
                req.asn = geo.asn(req.addr).map(|a| a.number);
            }
        }
        if let Ok(mut g) = self.inner.try_lock() {
            // xorshift: the reservoir sample only needs a cheap, non-adversarial spread.
            let mut x = g.rng;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            g.rng = x;
            if let Some(e) = g.episode.as_mut() {
                e.observe(&req, x);
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
        let t = self.apply(&mut g, now_ms, t);
        // A long attack is shown to the task force while it goes on: the open episode is offered
        // every `send_while_open`; each snapshot replaces the previous one in the atlas.
        let inner = &mut *g;
        if let (Some(e), Some(every)) = (
            inner.episode.as_ref(),
            self.push.settings().and_then(|s| s.send_while_open),
        ) && now_ms.saturating_sub(inner.last_push_ms) >= every.as_millis() as u64
        {
            inner.last_push_ms = now_ms;
            self.push.offer(e);
        }
        t
    }

    /// Feeds one second of each route class's counters to its own detector (created on first
    /// sight, dropped when a reload removes the class) and returns each class's mode, in the
    /// order given. A class's mode applies to its own requests on top of the site's.
    pub fn tick_routes(&self, now_ms: u64, samples: &[(&str, Sample)]) -> Vec<Mode> {
        let Ok(mut g) = self.inner.lock() else {
            return vec![Mode::Normal; samples.len()];
        };
        let inner = &mut *g;
        inner
            .routes
            .retain(|name, _| samples.iter().any(|(n, _)| n == name));
        let mut modes = Vec::with_capacity(samples.len());
        let mut escalated = false;
        for (name, sample) in samples {
            let config = &inner.config;
            let d = inner
                .routes
                .entry((*name).to_string())
                .or_insert_with(|| Detector::new(config.clone()));
            if let Some(t) = d.tick(now_ms, *sample) {
                tracing::warn!(route = %name, from = t.from.as_str(), to = t.to.as_str(), reason = ?t.reason, "route attack mode changed");
                escalated |= t.to == Mode::UnderAttack;
            }
            modes.push(d.mode());
        }
        if escalated {
            self.began.notify_waiters();
        }
        self.settle(inner, now_ms);
        modes
    }

    /// Opens the episode when the site or a route class leaves `normal`, and closes it (written
    /// and offered to the atlas) when all are back.
    fn settle(&self, g: &mut Inner, now_ms: u64) {
        let any = g
            .routes
            .values()
            .map(Detector::mode)
            .chain(std::iter::once(g.detector.mode()))
            .max_by_key(|m| code(*m))
            .unwrap_or(Mode::Normal);
        self.any.store(code(any), Relaxed);
        if any != Mode::Normal && g.episode.is_none() {
            g.episode = Some(Episode::new(now_ms));
            g.last_push_ms = now_ms;
        }
        if any == Mode::Normal
            && let Some(mut e) = g.episode.take()
        {
            e.finish(now_ms);
            self.write_episode(&e);
            // Queued, not sent: the push task posts it; nothing here waits on the atlas.
            self.push.offer(&e);
        }
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
        if t.to == Mode::UnderAttack {
            self.began.notify_waiters();
        }
        g.last_transition = Some(t);
        tracing::warn!(from = t.from.as_str(), to = t.to.as_str(), reason = ?t.reason, "attack mode changed");
        self.settle(g, now_ms);
        Some(t)
    }

    /// Appends a finished episode to the episodes file (once per attack, so plain blocking IO).
    fn write_episode(&self, e: &Episode) {
        let Some(path) = &self.episodes_path else {
            return;
        };
        let line = match serde_json::to_value(e) {
            Ok(mut v) => {
                self.name_asns(&mut v);
                v.to_string()
            }
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

    /// Adds each top AS's organisation to the episode's JSON (`{"key": 9198, "org": "JSC
    /// Kazakhtelecom", …}`): the episode itself counts numbers only, names come from `[geo]`.
    fn name_asns(&self, episode: &mut serde_json::Value) {
        let guard = self.geo.load();
        let Some(geo) = guard.as_deref() else {
            return;
        };
        let asns = episode
            .get_mut("heavy_hitters")
            .and_then(|h| h.get_mut("asns"))
            .and_then(serde_json::Value::as_array_mut);
        for hit in asns.into_iter().flatten() {
            let org = hit
                .get("key")
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .and_then(|n| geo.org(n));
            if let (Some(org), Some(obj)) = (org, hit.as_object_mut()) {
                obj.insert("org".into(), org.into());
            }
        }
    }

    /// The state as JSON for the admin listener.
    pub fn status_json(&self) -> String {
        let Ok(g) = self.inner.lock() else {
            return "{}".into();
        };
        let d = &g.detector;
        let routes: serde_json::Map<String, serde_json::Value> = g
            .routes
            .iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    serde_json::json!({
                        "mode": r.mode().as_str(),
                        "rps": r.last_rps(),
                        "baseline_rps": r.baseline_rps(),
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "mode": d.mode().as_str(),
            "routes": routes,
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

    fn quiet(requests: u64) -> Sample {
        Sample {
            requests,
            origin_p95_ms: 0.0,
            origin_in_flight: 0,
            origin_capacity: 0,
        }
    }

    /// A flood on one route class, small beside the site's traffic: the class goes
    /// `under_attack` on its own baseline while the site stays `normal`, an episode is recorded
    /// for it, and both come back after the cooldown without flapping.
    #[test]
    fn a_route_class_goes_under_attack_on_its_own_and_is_recorded() {
        let dir = std::env::temp_dir().join(format!("qalqan-route-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("episodes.jsonl");
        let _ = std::fs::remove_file(&path);
        let cfg = DetectConfig {
            warmup_secs: 5,
            enter_after_secs: 2,
            cooldown_secs: 5,
            baseline_floor_rps: 1.0,
            ..DetectConfig::default()
        };
        let a = Attack::new(cfg, Some(path.clone()));
        let mut t = 1_000_000u64;
        let mut step = |site: u64, search: u64, articles: u64| {
            t += 1000;
            a.tick(t, quiet(site));
            a.tick_routes(
                t,
                &[("search", quiet(search)), ("default", quiet(articles))],
            )
        };
        // A minute of calm: 1,000 requests a second, 2 of them searches.
        for _ in 0..60 {
            assert_eq!(step(1000, 2, 998), [Mode::Normal, Mode::Normal]);
        }
        assert!(!a.recording());
        // 60 searches a second: 6 % more traffic for the site, 30 times normal for search.
        let mut seen = Vec::new();
        for _ in 0..10 {
            seen.push(step(1058, 60, 998)[0]);
            assert_eq!(a.mode(), Mode::Normal, "the site as a whole is calm");
        }
        assert_eq!(seen.last(), Some(&Mode::UnderAttack), "{seen:?}");
        assert!(a.recording(), "an episode is open for the route's attack");
        let status: serde_json::Value = serde_json::from_str(&a.status_json()).unwrap();
        assert_eq!(status["mode"], "normal");
        assert_eq!(status["routes"]["search"]["mode"], "under_attack");
        assert_eq!(status["routes"]["default"]["mode"], "normal");
        // Calm again: down one level per cooldown, never back up.
        let mut down = Vec::new();
        for _ in 0..30 {
            down.push(step(1000, 2, 998)[0]);
        }
        let flips = down.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(flips, 2, "under_attack -> elevated -> normal: {down:?}");
        assert_eq!(down.last(), Some(&Mode::Normal));
        assert!(!a.recording());
        let episodes = std::fs::read_to_string(&path).unwrap();
        assert_eq!(episodes.lines().count(), 1, "one episode written");
        // A reload that drops a class drops its detector.
        step(1000, 2, 998);
        t += 1000;
        assert_eq!(a.tick_routes(t, &[("default", quiet(998))]), [Mode::Normal]);
        let status: serde_json::Value = serde_json::from_str(&a.status_json()).unwrap();
        assert!(status["routes"].get("search").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

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
