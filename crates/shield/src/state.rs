//! The shield's state: what lives for the whole process ([`Shared`]) and what a reload replaces
//! ([`Runtime`]). Every structure here has a size fixed at construction or bounded by a
//! configured cap; none grows with the number of distinct clients.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use qalqan_cache::key::KeyRules;
use qalqan_cache::store::{CachedResponse, Store};
use qalqan_limits::{BlockTable, KeyHasher, RateSketch};
use tokio::sync::watch;

use crate::accesslog::AccessLog;
use crate::config::{Config, Route};
use crate::metrics::{Extra, Metrics};

/// Columns per row of each per-client rate sketch. 4 rows x 32768 columns x 4 bytes x 2 windows
/// = 1 MiB per sketch: with tens of thousands of distinct clients per second a client seen once
/// still estimates a handful of requests, far under any sane per-address limit.
const SKETCH_COLS: usize = 32_768;
const SKETCH_ROWS: usize = 4;

/// Tags that keep the address, prefix and cache-key hashes apart in one hash space.
pub mod tag {
    /// A client address.
    pub const ADDR: u8 = 1;
    /// A client's /24 or /64.
    pub const PREFIX: u8 = 2;
    /// A cache key.
    pub const KEY: u8 = 3;
    /// A clearance id.
    pub const CLEARANCE: u8 = 4;
}

/// The identity blocks and connection caps count: the address for IPv4, the configured prefix
/// (a /64 by default: one subscriber) for IPv6.
pub fn subscriber(ip: IpAddr, client: &crate::config::Client) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(_) => qalqan_net::cidr::prefix_of(ip, 32, client.ipv6_prefix).network(),
    }
}

/// At most one log line per interval for an event that a flood can repeat (a flood must not
/// become a log flood); the lines not written are counted and reported with the next one.
pub struct LogBudget {
    every_ms: u64,
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl LogBudget {
    /// One line per `every_ms`; the first event is always logged.
    pub fn new(every_ms: u64) -> Self {
        LogBudget {
            every_ms,
            last: AtomicU64::new(u64::MAX),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this event may be logged (`n` events were suppressed since the last
    /// line), `None` when it must be counted silently.
    pub fn allow(&self) -> Option<u64> {
        let now = qalqan_limits::now_ms();
        let last = self.last.load(Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= self.every_ms;
        if due
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Relaxed));
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

pub use crate::gate::Gate;

/// One route class with its live counters.
pub struct RouteState {
    /// The checked settings.
    pub cfg: Route,
    /// Requests per address.
    pub by_addr: RateSketch,
    /// Requests per address prefix.
    pub by_prefix: RateSketch,
    /// Origin protection, when `max_in_flight > 0`.
    pub gate: Option<Arc<Gate>>,
    /// Uncached origin-bound requests per clearance under attack (routes that challenge, with
    /// `attack_origin_budget > 0`).
    pub origin_budget: Option<RateSketch>,
    /// Under attack, the pace shared by cleared clients from unfamiliar networks (routes that
    /// challenge, unless `attack_newcomer_rate = 0`).
    pub newcomers: Option<crate::familiar::Pace>,
    /// Requests of this class sent to the origin (every way: pass, fill, revalidation).
    pub origin_requests: AtomicU64,
    /// `origin_requests` at the attack ticker's last look.
    pub origin_seen: AtomicU64,
    /// Origin requests per second of this class while the mode was normal (EWMA, f64 bits).
    pub normal_origin_rps: AtomicU64,
    /// How often each cache key was asked for (only when `cache_min_uses > 1`).
    pub admission: Option<RateSketch>,
    /// Cache-key rules for this class.
    pub key_rules: KeyRules,
    /// Requests classified here.
    pub requests: AtomicU64,
    /// `requests` at the attack ticker's last look.
    pub requests_seen: AtomicU64,
    /// This class's own attack mode (its detector in `Attack`, set by the ticker); a request
    /// of the class is handled in the higher of this and the site's mode.
    pub mode: std::sync::atomic::AtomicU8,
}

impl RouteState {
    /// The mode this class's requests are handled in: the higher of the site's and its own.
    pub fn mode(&self, site: qalqan_detect::Mode) -> qalqan_detect::Mode {
        use qalqan_detect::Mode;
        match (site, crate::attack::load_mode(&self.mode)) {
            (Mode::UnderAttack, _) | (_, Mode::UnderAttack) => Mode::UnderAttack,
            (Mode::Elevated, _) | (_, Mode::Elevated) => Mode::Elevated,
            _ => Mode::Normal,
        }
    }
}

/// Everything a reload replaces at once.
pub struct Runtime {
    /// The checked configuration.
    pub config: Config,
    /// Route classes in match order; the last is `default`.
    pub routes: Vec<RouteState>,
    /// Verified good bots: families, per-family rates and counters.
    pub goodbots: crate::goodbots::GoodBots,
}

impl Runtime {
    /// Builds counters and gates for a configuration.
    pub fn new(config: Config) -> Self {
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let gate = (r.max_in_flight > 0).then(|| {
                    Arc::new(Gate::new(
                        r.max_in_flight,
                        r.queue,
                        r.queue_timeout,
                        r.adaptive_concurrency,
                    ))
                });
                let origin_budget = (r.challenge != crate::config::ChallengePolicy::Never
                    && r.attack_origin_budget > 0)
                    .then(|| {
                        let window = r.attack_origin_budget_window.as_millis();
                        let window = u64::try_from(window).unwrap_or(u64::MAX).max(1000);
                        RateSketch::new(window, SKETCH_ROWS, SKETCH_COLS / 4)
                    });
                let newcomers = (r.challenge != crate::config::ChallengePolicy::Never)
                    .then(|| match r.attack_newcomer_rate {
                        crate::config::NewcomerRate::Auto => crate::familiar::Pace::new(1.0),
                        crate::config::NewcomerRate::Fixed(x) => crate::familiar::Pace::new(x),
                    })
                    .flatten();
                let admission = (r.cache_min_uses > 1)
                    .then(|| RateSketch::new(60_000, SKETCH_ROWS, SKETCH_COLS / 4));
                RouteState {
                    cfg: r.clone(),
                    by_addr: RateSketch::new(1000, SKETCH_ROWS, SKETCH_COLS),
                    by_prefix: RateSketch::new(1000, SKETCH_ROWS, SKETCH_COLS / 4),
                    gate,
                    origin_budget,
                    newcomers,
                    origin_requests: AtomicU64::new(0),
                    origin_seen: AtomicU64::new(0),
                    normal_origin_rps: AtomicU64::new(0f64.to_bits()),
                    admission,
                    key_rules: KeyRules {
                        drop_params: config.cache.drop_params.clone(),
                        fold_query_case: r.fold_query_case,
                    },
                    requests: AtomicU64::new(0),
                    requests_seen: AtomicU64::new(0),
                    mode: std::sync::atomic::AtomicU8::new(0),
                }
            })
            .collect();
        let goodbots = crate::goodbots::GoodBots::new(&config.goodbots);
        Runtime {
            config,
            routes,
            goodbots,
        }
    }

    /// The route class for a request: the first whose method and any matcher fit.
    pub fn classify(&self, method: &http::Method, path: &str, query: Option<&str>) -> &RouteState {
        for r in &self.routes {
            let c = &r.cfg;
            if !c.methods.is_empty() && !c.methods.contains(method) {
                continue;
            }
            if c.name == "default" {
                return r;
            }
            if c.path_prefix.iter().any(|p| path.starts_with(p.as_str()))
                || c.path_regex.as_ref().is_some_and(|re| re.is_match(path))
                || query.is_some_and(|q| has_param(q, &c.query_params))
            {
                return r;
            }
        }
        // The last route is always `default` (the config guarantees it); this is a fallback.
        self.routes
            .last()
            .expect("config always has a default route")
    }

    /// Bytes held by per-client structures of this runtime.
    pub fn tracked_bytes(&self) -> usize {
        self.routes
            .iter()
            .map(|r| {
                r.by_addr.memory_bytes()
                    + r.by_prefix.memory_bytes()
                    + r.admission.as_ref().map_or(0, |a| a.memory_bytes())
                    + r.origin_budget.as_ref().map_or(0, |a| a.memory_bytes())
            })
            .sum::<usize>()
            + self.goodbots.memory_bytes()
    }
}

/// Once a second from the attack ticker: each route's origin rate joins its normal-mode average
/// (weight `alpha`), and an `"auto"` newcomer pace follows that average (at least 1 a second).
pub fn learn_origin_rates(rt: &Runtime, normal: bool, alpha: f64) {
    for r in &rt.routes {
        let now = r.origin_requests.load(Relaxed);
        let delta = now.saturating_sub(r.origin_seen.swap(now, Relaxed)) as f64;
        if !normal {
            continue;
        }
        let old = f64::from_bits(r.normal_origin_rps.load(Relaxed));
        let avg = old + alpha * (delta - old);
        r.normal_origin_rps.store(avg.to_bits(), Relaxed);
        if r.cfg.attack_newcomer_rate == crate::config::NewcomerRate::Auto
            && let Some(p) = &r.newcomers
        {
            p.set_rate(avg.max(1.0));
        }
    }
}

fn has_param(query: &str, names: &[String]) -> bool {
    if names.is_empty() {
        return false;
    }
    query.split('&').any(|kv| {
        let name = kv.split('=').next().unwrap_or("");
        names.iter().any(|n| n == name)
    })
}

/// The outcome of one coalesced origin fetch, as the waiters see it.
#[derive(Clone)]
pub enum Outcome {
    /// A storable response: every waiter is answered with it.
    Stored(Arc<CachedResponse>),
    /// Not storable: each waiter goes to the origin itself.
    Unstorable,
    /// The origin failed: waiters answer with a stale copy or an error page, without asking it.
    Failed,
}

/// What the flight's channel carries: `None` until the outcome is known.
pub type FlightResult = Option<Outcome>;

/// Identical cache misses in flight. Bounded: when full, new misses skip coalescing.
pub struct Flights {
    map: Mutex<HashMap<String, watch::Receiver<FlightResult>>>,
    cap: usize,
}

/// What a miss should do.
pub enum Flight {
    /// Fetch, then publish through the sender; the key is removed when the guard drops.
    Lead(FlightGuard),
    /// Wait for the leader.
    Follow(watch::Receiver<FlightResult>),
    /// Coalescing is full: go alone.
    Alone,
}

/// Held by the leader of a flight.
pub struct FlightGuard {
    flights: Arc<Shared>,
    key: String,
    tx: watch::Sender<FlightResult>,
}

impl FlightGuard {
    /// Publishes the result to the waiters.
    pub fn publish(&self, r: Outcome) {
        // The first outcome wins; later ones (e.g. "stored" after "too big") are ignored.
        self.tx.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(r);
                true
            } else {
                false
            }
        });
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.flights.flights.map.lock() {
            m.remove(&self.key);
        }
    }
}

impl Flights {
    fn new(cap: usize) -> Self {
        Flights {
            map: Mutex::new(HashMap::new()),
            cap,
        }
    }
}

/// Joins or starts a flight for `key`.
pub fn flight(shared: &Arc<Shared>, key: &str) -> Flight {
    let Ok(mut m) = shared.flights.map.lock() else {
        return Flight::Alone;
    };
    if let Some(rx) = m.get(key) {
        return Flight::Follow(rx.clone());
    }
    if m.len() >= shared.flights.cap {
        return Flight::Alone;
    }
    let (tx, rx) = watch::channel(None);
    m.insert(key.to_string(), rx);
    Flight::Lead(FlightGuard {
        flights: shared.clone(),
        key: key.to_string(),
        tx,
    })
}

/// Open connections per address, bounded by the global connection cap.
pub struct ConnTable {
    shards: Vec<Mutex<HashMap<IpAddr, u32>>>,
}

impl ConnTable {
    fn new() -> Self {
        ConnTable {
            shards: (0..32).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        let h = match ip {
            IpAddr::V4(v) => u32::from(*v) as usize,
            IpAddr::V6(v) => (u128::from(*v) >> 64) as usize ^ (u128::from(*v) as usize),
        };
        &self.shards[h % self.shards.len()]
    }

    /// Takes a slot for `ip` unless it already holds `max`.
    pub fn try_add(&self, ip: IpAddr, max: usize) -> bool {
        let Ok(mut m) = self.shard(&ip).lock() else {
            return true;
        };
        let n = m.entry(ip).or_insert(0);
        if *n as usize >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// Releases a slot.
    pub fn remove(&self, ip: IpAddr) {
        if let Ok(mut m) = self.shard(&ip).lock()
            && let Some(n) = m.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// State that lives as long as the process.
pub struct Shared {
    /// Counters.
    pub metrics: Metrics,
    /// Keyed hashing for every per-client structure.
    pub hasher: KeyHasher,
    /// Repeat offenders.
    pub blocks: BlockTable,
    /// Limited answers per address, for repeat-offender detection.
    pub offenders: RateSketch,
    /// The micro-cache.
    pub store: Store,
    /// Keys whose last response was not storable, with an expiry (fixed memory).
    pub pass_marks: BlockTable,
    /// Coalesced misses.
    pub flights: Flights,
    /// Open connections per address.
    pub conns: ConnTable,
    /// The pooled origin client.
    /// Keep-alive connections to the origin.
    pub upstream: Arc<crate::upstream::Upstream>,
    /// The current reloadable part.
    pub runtime: ArcSwap<Runtime>,
    /// The access log.
    pub log: AccessLog,
    /// Attack mode and the episode being recorded.
    pub attack: crate::attack::Attack,
    /// Spent challenge nonces.
    pub challenge: crate::challenge::ChallengeState,
    /// Log budgets for events a flood can repeat: one line per interval, with a count of the rest.
    pub log_forwarded: LogBudget,
    /// See `log_forwarded`.
    pub log_blocked: LogBudget,
    /// See `log_forwarded`.
    pub log_accept: LogBudget,
    /// See `log_forwarded`.
    pub log_guard: LogBudget,
    /// Forward-confirmed reverse DNS of claimed good bots (used when `goodbots.fcrdns` is on):
    /// process-wide so a reload keeps what was learned.
    pub fcrdns: crate::goodbots::fcrdns::Fcrdns,
    /// Requests per network while the mode is normal (process-wide: a reload keeps them).
    pub familiar: crate::familiar::Familiar,
}

impl Shared {
    /// Builds process state for a first configuration.
    pub fn new(config: Config, log: AccessLog) -> Arc<Self> {
        let upstream = crate::upstream::Upstream::new(
            config.origin.max_idle_connections,
            config.origin.connect_timeout,
            Duration::from_secs(60),
        );
        let attack = crate::attack::Attack::new(
            config.attack.detect.clone(),
            config.attack.episodes_path.clone(),
        );
        attack.set_geo(config.geo.data.clone());
        attack.set_atlas(config.atlas.clone());
        let window_ms = config
            .block
            .window
            .as_millis()
            .clamp(1000, u64::MAX as u128) as u64;
        Arc::new(Shared {
            metrics: Metrics::default(),
            hasher: KeyHasher::new(),
            blocks: BlockTable::new(config.block.table_size),
            offenders: RateSketch::new(window_ms, SKETCH_ROWS, SKETCH_COLS / 2),
            store: Store::new(config.cache.max_bytes, config.cache.max_object_bytes),
            pass_marks: BlockTable::new(16_384),
            flights: Flights::new(1024),
            conns: ConnTable::new(),
            upstream,
            runtime: ArcSwap::from_pointee(Runtime::new(config)),
            log,
            challenge: crate::challenge::ChallengeState::new(),
            log_forwarded: LogBudget::new(60_000),
            log_blocked: LogBudget::new(1_000),
            log_accept: LogBudget::new(1_000),
            log_guard: LogBudget::new(1_000),
            fcrdns: crate::goodbots::fcrdns::Fcrdns::new(Arc::new(
                crate::goodbots::fcrdns::SystemResolver,
            )),
            attack,
            familiar: crate::familiar::Familiar::new(),
        })
    }

    /// Metrics text including gauges from the cache and limiters.
    pub fn render_metrics(&self) -> String {
        let rt = self.runtime.load();
        let now = qalqan_limits::now_ms();
        let extra = Extra {
            routes: rt
                .routes
                .iter()
                .map(|r| (r.cfg.name.clone(), r.requests.load(Relaxed)))
                .collect(),
            cache_bytes: self.store.weighted_bytes(),
            cache_entries: self.store.entries(),
            tracked_bytes: (rt.tracked_bytes()
                + self.blocks.memory_bytes()
                + self.pass_marks.memory_bytes()
                + self.offenders.memory_bytes()
                + self.familiar.memory_bytes()) as u64,
            blocked: self.blocks.len(now) as u64,
            log_dropped: self.log.dropped(),
            mode: self.attack.mode().as_str(),
        };
        let mut text = self.metrics.render(&extra);
        let a = &rt.config.attack;
        {
            use std::fmt::Write as _;
            text.push_str("# HELP qalqan_shield_route_mode Each route class's own attack mode: 0 normal, 1 elevated, 2 under_attack (its requests are handled in the higher of this and qalqan_shield_mode).\n# TYPE qalqan_shield_route_mode gauge\n");
            for r in &rt.routes {
                let m = match crate::attack::load_mode(&r.mode) {
                    qalqan_detect::Mode::Normal => 0,
                    qalqan_detect::Mode::Elevated => 1,
                    qalqan_detect::Mode::UnderAttack => 2,
                };
                let _ = writeln!(
                    text,
                    "qalqan_shield_route_mode{{route=\"{}\"}} {m}",
                    r.cfg.name
                );
            }
            text.push_str("# HELP qalqan_shield_newcomer_rate Under attack, uncached requests per second all cleared clients from unfamiliar networks may send to the origin on this route.\n# TYPE qalqan_shield_newcomer_rate gauge\n");
            for r in &rt.routes {
                if let Some(p) = &r.newcomers {
                    let _ = writeln!(
                        text,
                        "qalqan_shield_newcomer_rate{{route=\"{}\"}} {:.3}",
                        r.cfg.name,
                        p.rate()
                    );
                }
            }
            let _ = writeln!(
                text,
                "# HELP qalqan_shield_familiar_networks Networks (IPv4 /16, IPv6 /32) familiar from normal traffic.\n# TYPE qalqan_shield_familiar_networks gauge\nqalqan_shield_familiar_networks {}",
                self.familiar
                    .count(a.familiar_min_requests, a.familiar_min_share)
            );
        }
        render_origin_limits(&rt, &mut text);
        rt.goodbots.render(&mut text);
        self.fcrdns.render(&mut text);
        self.attack.pusher().render(&mut text);
        text
    }
}

/// `qalqan_shield_origin_limit{route}`: requests each gated route class may have at the origin
/// now (the adaptive limit, or `max_in_flight` when it is fixed); `qalqan_shield_origin_queue`:
/// requests of the class waiting for a slot.
fn render_origin_limits(rt: &Runtime, out: &mut String) {
    use std::fmt::Write as _;
    let gated = || {
        rt.routes
            .iter()
            .filter_map(|r| Some((&r.cfg.name, r.gate.as_ref()?)))
    };
    out.push_str(
        "# HELP qalqan_shield_origin_limit Requests a route class may have at the origin now.\n",
    );
    out.push_str("# TYPE qalqan_shield_origin_limit gauge\n");
    for (name, g) in gated() {
        let _ = writeln!(
            out,
            "qalqan_shield_origin_limit{{route=\"{name}\"}} {}",
            g.limit()
        );
    }
    out.push_str(
        "# HELP qalqan_shield_origin_queue Requests of a route class waiting for the origin.\n",
    );
    out.push_str("# TYPE qalqan_shield_origin_queue gauge\n");
    for (name, g) in gated() {
        let _ = writeln!(
            out,
            "qalqan_shield_origin_queue{{route=\"{name}\"}} {}",
            g.waiting()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(extra: &str) -> Runtime {
        let text = format!(
            "[origin]\nurl = \"http://127.0.0.1:9\"\n[[listen]]\naddress = \"127.0.0.1:0\"\n{extra}"
        );
        Runtime::new(crate::config::RawConfig::from_toml(&text).expect("valid"))
    }

    #[test]
    fn an_auto_newcomer_pace_follows_the_routes_normal_origin_rate() {
        let rt = runtime(
            "[[route]]\nname = \"search\"\npath_prefix = [\"/search\"]\nchallenge = \"attack\"\n\
             [[route]]\nname = \"fixed\"\npath_prefix = [\"/f\"]\nchallenge = \"attack\"\nattack_newcomer_rate = 3\n\
             [[route]]\nname = \"off\"\npath_prefix = [\"/o\"]\nchallenge = \"attack\"\nattack_newcomer_rate = 0\n",
        );
        let search = &rt.routes[0];
        // Rates to 0.1 %: the pace keeps whole microseconds between requests.
        let pace = |r: &RouteState| {
            r.newcomers
                .as_ref()
                .map(|p| (p.rate() * 1000.0).round() / 1000.0)
        };
        assert_eq!(
            pace(search),
            Some(1.0),
            "before anything is learned: the floor"
        );
        assert_eq!(pace(&rt.routes[1]), Some(3.0));
        assert_eq!(pace(&rt.routes[2]), None, "0 turns it off");
        assert_eq!(rt.routes[3].cfg.name, "default");
        assert_eq!(
            pace(&rt.routes[3]),
            None,
            "a route that never challenges has none"
        );
        // Forty seconds of 12 origin requests a second in normal mode.
        for _ in 0..40 {
            search.origin_requests.fetch_add(12, Relaxed);
            learn_origin_rates(&rt, true, 0.5);
        }
        let p = pace(search).unwrap();
        assert!((p - 12.0).abs() < 0.01, "{p}");
        assert_eq!(pace(&rt.routes[1]), Some(3.0), "a fixed pace stays");
        // An attack's origin traffic is not learned.
        for _ in 0..40 {
            search.origin_requests.fetch_add(5_000, Relaxed);
            learn_origin_rates(&rt, false, 0.5);
        }
        assert!((pace(search).unwrap() - 12.0).abs() < 0.01);
        // A quiet site keeps the floor of one a second.
        for _ in 0..80 {
            learn_origin_rates(&rt, true, 0.5);
        }
        assert_eq!(pace(search), Some(1.0));
    }

    #[test]
    fn a_bad_newcomer_rate_is_reported_with_its_key() {
        for bad in ["-1", "\"fast\"", "1e9"] {
            let text = format!(
                "[origin]\nurl = \"http://127.0.0.1:9\"\n[[listen]]\naddress = \"127.0.0.1:0\"\n\
                 [[route]]\nname = \"search\"\nchallenge = \"attack\"\nattack_newcomer_rate = {bad}\n"
            );
            let err = crate::config::RawConfig::from_toml(&text).expect_err(bad);
            assert!(
                err.to_string().contains("route[0].attack_newcomer_rate"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn log_budget_lets_one_line_through_per_interval_and_counts_the_rest() {
        let b = LogBudget::new(60_000);
        assert_eq!(b.allow(), Some(0), "the first event is always logged");
        for _ in 0..1000 {
            assert_eq!(b.allow(), None);
        }
        let fast = LogBudget::new(0);
        assert_eq!(fast.allow(), Some(0));
        assert_eq!(fast.allow(), Some(0));
    }
}
