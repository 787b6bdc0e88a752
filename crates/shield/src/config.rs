//! The shield's configuration: a raw, documented serde form read from TOML, and a checked form
//! produced by [`RawConfig::validate`] that reports every problem at once with its key path.
//!
//! Unknown keys are errors (collected with `serde_ignored`, so a typo anywhere is reported together
//! with the other problems instead of one per run). Nothing here prints secrets: the challenge
//! secret and the atlas token have `Debug` impls that hide them, and problems never quote them.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use qalqan_net::cidr::CidrSet;
use serde::Deserialize;

/// One configuration problem: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `route[1].rate_per_address`.
    pub path: String,
    /// What is wrong, and a hint where one helps.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// All problems found in one configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// Every problem, in file order where possible.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} problem(s) in the configuration:",
            self.problems.len()
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(path: &str, message: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![Problem {
                path: path.to_string(),
                message: message.into(),
            }],
        }
    }
}

/// A duration written as `500ms`, `10s`, `5m`, `2h` or `1d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses `500ms`, `10s`, `5m`, `2h`, `1d` (one number and one unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit; write e.g. `10s`, `500ms`, `5m`, `2h`"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; write e.g. `10s`"))?;
    let secs = |k: u64| n.checked_mul(k).map(Duration::from_secs);
    let d = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    };
    d.ok_or_else(|| format!("`{s}`: unknown unit `{unit}` (use ms, s, m, h or d)"))
}

/// A size in bytes: an integer, or a string such as `32MiB`, `512KiB`, `1GiB`, `10MB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Bytes(n)),
            Raw::S(s) => parse_bytes(&s).map(Bytes).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `1234`, `512KiB`, `32MiB`, `1GiB`, `10KB`, `10MB`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size; write e.g. `32MiB`"))?;
    let k: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1024,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "`{s}`: unknown unit `{other}` (use KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(k)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// What the shield does when its own protection logic fails on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Pass the request to the origin unprotected: readers are never locked out by a shield bug.
    Open,
    /// Refuse with 503: for admin paths, where a bug must not open the door.
    Closed,
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    /// Process-wide settings.
    pub server: RawServer,
    /// Public listeners; at least one.
    pub listen: Vec<RawListener>,
    /// The admin listener (metrics, health).
    pub admin: RawAdmin,
    /// The outlet's site.
    pub origin: RawOrigin,
    /// Who the client is and how much it may hold open.
    pub client: RawClient,
    /// Repeat offenders blocked at the connection level.
    pub block: RawBlock,
    /// The micro-cache.
    pub cache: RawCache,
    /// Static allow and deny lists.
    pub lists: RawLists,
    /// The access log.
    pub access_log: RawAccessLog,
    /// Route classes, matched in order; a class named `default` matches everything else.
    pub route: Vec<RawRoute>,
    /// Automatic attack mode and episode records.
    pub attack: RawAttack,
    /// The proof-of-work challenge.
    pub challenge: RawChallenge,
    /// Country and autonomous system of clients in attack episodes.
    pub geo: RawGeo,
    /// Verified search-engine crawlers and link-preview fetchers.
    pub goodbots: RawGoodBots,
    /// The task force's atlas, where attack episodes are pushed.
    pub atlas: RawAtlas,
}

/// `[atlas]`: off unless `url` is set. Checked by `crate::push::check`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawAtlas {
    /// The atlas' base URL, `https://…` or `http://…`; empty or absent: episodes stay local.
    pub url: Option<String>,
    /// The outlet's ingest token (secret). Either this or `token_file`.
    pub token: Option<String>,
    /// A file holding the ingest token, so the configuration itself holds no secret.
    pub token_file: Option<String>,
    /// PEM file of the CA certificates trusted for an https atlas; absent: the system bundle.
    pub ca_file: Option<String>,
    /// The protected site's public URL, sent with every episode.
    pub site: Option<String>,
    /// This shield node's name in episode ids (default: the host name).
    pub node: Option<String>,
    /// Episode signals waiting at most while the atlas is unreachable (default 64).
    pub queue: Option<usize>,
    /// A key is sent only if it made at least this share of the episode's requests (and at
    /// least 20 requests); default 0.005.
    pub min_share: Option<f64>,
    /// Push a running episode this often ("0s": only when it ends); default 60s.
    pub send_while_open: Option<Dur>,
}

/// `[goodbots]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawGoodBots {
    /// Never challenge verified good bots and count them per family (default true).
    pub enabled: Option<bool>,
    /// A directory of `*.txt` family files that replace or extend the built-in ones.
    pub ranges_dir: Option<String>,
    /// Also verify by forward-confirmed reverse DNS, looked up in the background (default false).
    pub fcrdns: Option<bool>,
    /// Requests per second all verified clients of one family may make together.
    pub rate_per_family: Option<u32>,
}

/// `[geo]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawGeo {
    /// Name the country and autonomous system of clients in attack episodes (default true).
    pub enabled: Option<bool>,
    /// Directory with `country.txt.gz` and `asn.txt.gz` from `qalqan geo build`; empty or
    /// absent means the data built into the binary.
    pub dir: Option<String>,
}

/// Geo settings, checked, with the data loaded.
#[derive(Debug, Clone)]
pub struct Geo {
    /// `geo.enabled`.
    pub enabled: bool,
    /// `geo.dir`; `None` for the built-in data.
    pub dir: Option<PathBuf>,
    /// The tables; `None` when disabled.
    pub data: Option<std::sync::Arc<qalqan_geo::Geo>>,
}

/// `[attack]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawAttack {
    /// Where finished attack episodes are appended as JSON lines; empty turns it off.
    pub episodes_path: Option<String>,
    /// Lowest request-rate baseline, requests per second (quiet sites).
    pub floor_rps: Option<f64>,
    /// Rate / baseline that enters `elevated`.
    pub elevated_factor: Option<f64>,
    /// Rate / baseline that enters `under_attack`.
    pub attack_factor: Option<f64>,
    /// How long a signal must last before the mode escalates.
    pub enter_after: Option<Dur>,
    /// How long the signal must stay low before the mode steps down.
    pub cooldown: Option<Dur>,
    /// Time after start during which the baseline is learned and the rate alone never escalates.
    pub warmup: Option<Dur>,
    /// Half-life of the learned baseline.
    pub half_life: Option<Dur>,
    /// Under attack, every rate limit is divided by this factor (1 = unchanged).
    pub tighten_limits: Option<f64>,
    /// A network (IPv4 /16, IPv6 /32) is familiar under attack when it carried at least this
    /// many of the requests counted before it.
    pub familiar_min_requests: Option<u64>,
    /// … and at least this share of them.
    pub familiar_min_share: Option<f64>,
    /// Half-life of those counts.
    pub familiar_half_life: Option<Dur>,
}

/// Attack mode settings, checked.
#[derive(Debug, Clone)]
pub struct Attack {
    /// Episode file; `None` when off.
    pub episodes_path: Option<PathBuf>,
    /// The detector's settings.
    pub detect: qalqan_detect::DetectConfig,
    /// Rate-limit divisor under attack (≥ 1).
    pub tighten_limits: f64,
    /// Requests a familiar network carried at least.
    pub familiar_min_requests: u64,
    /// Share of all counted requests a familiar network carried at least.
    pub familiar_min_share: f64,
    /// Half-life of the per-network counts.
    pub familiar_half_life: Duration,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawServer {
    /// Worker threads; 0 means one per core.
    pub threads: usize,
}

/// `[[listen]]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawListener {
    /// `IP:PORT` to accept on.
    pub address: String,
    /// PEM certificate chain; with `key`, turns on TLS (HTTP/2 by ALPN).
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// Expect a PROXY protocol v1/v2 header from trusted peers on this listener.
    pub proxy_protocol: bool,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawAdmin {
    /// `IP:PORT` for /metrics and /healthz; keep it on loopback or a private network.
    pub address: Option<String>,
}

/// `[origin]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawOrigin {
    /// `http://host:port` of the outlet's site.
    pub url: String,
    /// Time to establish a connection to the origin.
    pub connect_timeout: Option<Dur>,
    /// Time until the origin's response headers arrive.
    pub response_timeout: Option<Dur>,
    /// Idle keep-alive connections kept to the origin.
    pub max_idle_connections: Option<usize>,
}

/// `[client]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawClient {
    /// Peers whose X-Forwarded-For / PROXY header is believed (your CDN or load balancer).
    pub trusted_proxies: Vec<String>,
    /// IPv4 prefix length that groups a client's neighbours (default 24).
    pub ipv4_prefix: Option<u8>,
    /// IPv6 prefix length that groups one subscriber (default 64).
    pub ipv6_prefix: Option<u8>,
    /// Time a client has to send its request headers.
    pub header_read_timeout: Option<Dur>,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Option<Dur>,
    /// Open connections at most, all clients together.
    pub max_connections: Option<usize>,
    /// Open connections at most from one address (not applied to trusted proxies).
    pub max_connections_per_address: Option<usize>,
    /// Largest request head (431 beyond).
    pub max_header_bytes: Option<Bytes>,
    /// Largest request body (413 beyond).
    pub max_body_bytes: Option<Bytes>,
}

/// `[block]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawBlock {
    /// Block repeat offenders at the connection level (default true).
    pub enabled: Option<bool>,
    /// Limited answers within `window` that make a client a repeat offender.
    pub after_limited: Option<u32>,
    /// Window for `after_limited`.
    pub window: Option<Dur>,
    /// How long a repeat offender stays blocked.
    pub duration: Option<Dur>,
    /// Blocked addresses remembered at most (fixed memory).
    pub table_size: Option<usize>,
}

/// `[cache]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawCache {
    /// Memory for cached responses.
    pub max_bytes: Option<Bytes>,
    /// Largest single response stored.
    pub max_object_bytes: Option<Bytes>,
    /// How long identical misses wait for the first one's origin fetch.
    pub lock_timeout: Option<Dur>,
    /// Query parameters dropped from cache keys (`utm_*` style prefixes allowed).
    pub drop_params: Option<Vec<String>>,
}

/// `[lists]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawLists {
    /// Networks that skip all limits.
    pub allow_cidrs: Vec<String>,
    /// Networks refused with 403.
    pub deny_cidrs: Vec<String>,
    /// User-agent regexes that skip all limits (think twice: user agents are easy to forge).
    pub allow_user_agents: Vec<String>,
    /// User-agent regexes refused with 403.
    pub deny_user_agents: Vec<String>,
}

/// `[access_log]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawAccessLog {
    /// `-` for standard output, a file path, or empty to turn it off.
    pub path: Option<String>,
    /// Lines per second written in full; beyond it lines are sampled.
    pub max_lines_per_second: Option<u32>,
}

/// `[[route]]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawRoute {
    /// Name used in metrics and logs; `default` is the catch-all class.
    pub name: String,
    /// Methods this class matches (empty: any).
    pub methods: Vec<String>,
    /// Path prefixes (any matches).
    pub path_prefix: Vec<String>,
    /// Path regexes (any matches).
    pub path_regex: Vec<String>,
    /// Query parameter names whose presence matches (e.g. `s` for WordPress search).
    pub query_params: Vec<String>,
    /// Requests per second one address may make to this class.
    pub rate_per_address: Option<u32>,
    /// Requests per second one address prefix (/24, /64) may make to this class.
    pub rate_per_prefix: Option<u32>,
    /// Requests in flight to the origin at most for this class (0 = no cap).
    pub max_in_flight: Option<usize>,
    /// Requests waiting for a slot at most; beyond it the shield answers 503 itself.
    pub queue: Option<usize>,
    /// Longest wait in the queue.
    pub queue_timeout: Option<Dur>,
    /// Cache lifetime for anonymous responses that carry no cache headers (`0s`: off).
    pub cache_ttl: Option<Dur>,
    /// Serve a stale copy this long while one refresh runs.
    pub stale_while_revalidate: Option<Dur>,
    /// Serve a stale copy this long when the origin fails.
    pub stale_if_error: Option<Dur>,
    /// Store a response only after its key was asked for this many times (search floods).
    pub cache_min_uses: Option<u32>,
    /// Lowercase and trim query values in cache keys (search terms).
    pub fold_query_case: Option<bool>,
    /// `open` (readers, default) or `closed` (admin paths) when protection logic fails.
    pub fail: Option<FailMode>,
    /// When clients without clearance get the proof-of-work challenge: `never`, `attack`
    /// (only in under_attack mode) or `always`.
    pub challenge: Option<ChallengePolicy>,
    /// Learn the origin concurrency from the origin's response times, with `max_in_flight` as
    /// the ceiling (default true).
    pub adaptive_concurrency: Option<bool>,
    /// Under attack, uncached requests one clearance may send to the origin per
    /// `attack_origin_budget_window` on a route that challenges (0 = no budget).
    pub attack_origin_budget: Option<u32>,
    /// The window of `attack_origin_budget`.
    pub attack_origin_budget_window: Option<Dur>,
    /// Under attack, on a route that challenges: uncached requests per second that cleared
    /// clients from networks not seen before the attack may send to the origin together
    /// (0 = no pace); `"auto"` (default): the route's learned normal origin rate, at least 1.
    pub attack_newcomer_rate: Option<RawRate>,
}

/// A rate that may also be the word `"auto"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawRate {
    /// A number of requests per second.
    Float(f64),
    /// The same, written without a decimal point.
    Int(i64),
    /// `"auto"`.
    Word(String),
}

/// The newcomers' pace of a route, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NewcomerRate {
    /// The route's normal origin rate (learned while the mode is normal), at least one a second.
    Auto,
    /// Fixed requests per second; 0 = no pace.
    Fixed(f64),
}

/// When a route class challenges clients that hold no clearance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChallengePolicy {
    /// Never (feeds, static files, APIs).
    Never,
    /// Only while the shield is under attack.
    Attack,
    /// Always (a page that is attacked all the time).
    Always,
}

/// `[challenge]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawChallenge {
    /// Hex secret (at least 32 bytes) shared by every shield node; generated at start if absent.
    pub secret: Option<String>,
    /// Leading zero bits of SHA-256 the browser must find (12 ≈ 4,096 hashes, well under a
    /// second on a slow phone).
    pub difficulty: Option<u8>,
    /// How long a challenge may be answered.
    pub ttl: Option<Dur>,
    /// How long a clearance cookie lasts.
    pub clearance_ttl: Option<Dur>,
    /// The wait before the no-JavaScript path lets a reader through.
    pub nojs_delay: Option<Dur>,
    /// Who readers may contact if they are stuck (shown on the page).
    pub contact: Option<String>,
}

/// Challenge settings, checked.
#[derive(Clone)]
pub struct Challenge {
    /// Signing keys.
    pub keys: qalqan_challenge::Keys,
    /// Required work.
    pub difficulty: u8,
    /// Challenge lifetime.
    pub ttl: Duration,
    /// Clearance lifetime.
    pub clearance_ttl: Duration,
    /// No-JS wait.
    pub nojs_delay: Duration,
    /// Contact line.
    pub contact: String,
}

impl fmt::Debug for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keys print as `Secret(…)`; nothing secret reaches a log.
        f.debug_struct("Challenge")
            .field("difficulty", &self.difficulty)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// A listener, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Address to bind.
    pub address: SocketAddr,
    /// TLS certificate and key paths.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Expect PROXY protocol from trusted peers.
    pub proxy_protocol: bool,
}

/// The origin, checked.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Scheme + authority, e.g. `http://127.0.0.1:8080`.
    pub authority: http::uri::Authority,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Response-header timeout.
    pub response_timeout: Duration,
    /// Idle pooled connections.
    pub max_idle_connections: usize,
}

/// Client settings, checked.
#[derive(Debug, Clone)]
pub struct Client {
    /// Trusted proxies.
    pub trusted_proxies: CidrSet,
    /// IPv4 grouping prefix.
    pub ipv4_prefix: u8,
    /// IPv6 grouping prefix.
    pub ipv6_prefix: u8,
    /// Header read timeout.
    pub header_read_timeout: Duration,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Global connection cap.
    pub max_connections: usize,
    /// Per-address connection cap.
    pub max_connections_per_address: usize,
    /// Request head size cap.
    pub max_header_bytes: usize,
    /// Request body size cap.
    pub max_body_bytes: u64,
}

/// Repeat-offender blocking, checked.
#[derive(Debug, Clone)]
pub struct Block {
    /// On or off.
    pub enabled: bool,
    /// Limited answers in `window` that trigger a block.
    pub after_limited: u32,
    /// Counting window.
    pub window: Duration,
    /// Block duration.
    pub duration: Duration,
    /// Table capacity.
    pub table_size: usize,
}

/// Cache settings, checked.
#[derive(Debug, Clone)]
pub struct Cache {
    /// Memory budget in bytes.
    pub max_bytes: u64,
    /// Largest object.
    pub max_object_bytes: usize,
    /// Coalescing wait.
    pub lock_timeout: Duration,
    /// Dropped query parameters.
    pub drop_params: Vec<String>,
}

/// Static lists, checked.
#[derive(Debug, Clone)]
pub struct Lists {
    /// Allowed networks.
    pub allow_cidrs: CidrSet,
    /// Denied networks.
    pub deny_cidrs: CidrSet,
    /// Allowed user agents.
    pub allow_user_agents: Option<regex::RegexSet>,
    /// Denied user agents.
    pub deny_user_agents: Option<regex::RegexSet>,
}

/// Access log settings, checked.
#[derive(Debug, Clone)]
pub struct AccessLog {
    /// `None`: off; `Some("-")`: stdout; else a file.
    pub path: Option<String>,
    /// Full-rate line budget.
    pub max_lines_per_second: u32,
}

/// A route class, checked.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name.
    pub name: String,
    /// Methods (empty: any).
    pub methods: Vec<http::Method>,
    /// Path prefixes.
    pub path_prefix: Vec<String>,
    /// Path regexes.
    pub path_regex: Option<regex::RegexSet>,
    /// Query parameter names.
    pub query_params: Vec<String>,
    /// Per-address rate (requests/second); 0 = unlimited.
    pub rate_per_address: u32,
    /// Per-prefix rate; 0 = unlimited.
    pub rate_per_prefix: u32,
    /// Origin concurrency cap; 0 = none.
    pub max_in_flight: usize,
    /// Queue length.
    pub queue: usize,
    /// Queue wait.
    pub queue_timeout: Duration,
    /// Default TTL for anonymous responses.
    pub cache_ttl: Option<Duration>,
    /// Stale-while-revalidate window.
    pub stale_while_revalidate: Duration,
    /// Stale-if-error window.
    pub stale_if_error: Duration,
    /// Admission threshold.
    pub cache_min_uses: u32,
    /// Fold query case.
    pub fold_query_case: bool,
    /// Fail mode.
    pub fail: FailMode,
    /// Challenge policy.
    pub challenge: ChallengePolicy,
    /// Adaptive origin concurrency (`max_in_flight` is then the ceiling).
    pub adaptive_concurrency: bool,
    /// Uncached origin-bound requests per clearance and window under attack; 0 = off.
    pub attack_origin_budget: u32,
    /// Window of the budget.
    pub attack_origin_budget_window: Duration,
    /// Newcomers' shared pace to the origin under attack.
    pub attack_newcomer_rate: NewcomerRate,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Worker threads (resolved: never 0).
    pub threads: usize,
    /// Listeners.
    pub listen: Vec<Listener>,
    /// Admin listener.
    pub admin: Option<SocketAddr>,
    /// Origin.
    pub origin: Origin,
    /// Client settings.
    pub client: Client,
    /// Blocking.
    pub block: Block,
    /// Cache.
    pub cache: Cache,
    /// Lists.
    pub lists: Lists,
    /// Access log.
    pub access_log: AccessLog,
    /// Route classes; the last is always `default`.
    pub routes: Vec<Route>,
    /// Attack mode.
    pub attack: Attack,
    /// The challenge.
    pub challenge: Challenge,
    /// Country and ASN data for episodes.
    pub geo: Geo,
    /// Verified good bots.
    pub goodbots: crate::goodbots::Settings,
    /// The atlas episodes are pushed to; `None`: off.
    pub atlas: Option<std::sync::Arc<crate::push::Settings>>,
    /// Warnings to print loudly at start (config is usable).
    pub warnings: Vec<String>,
}

impl RawConfig {
    /// Parses TOML, collecting unknown keys as problems together with semantic ones.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut unknown = Vec::new();
        let mut value: toml::Value = text
            .parse::<toml::Table>()
            .map(toml::Value::Table)
            .map_err(|e| ConfigError::one("(file)", e.to_string()))?;
        // Durations and sizes are checked first, each with its key path, and a bad one is set
        // aside, so one typo does not hide every other problem in the file.
        let mut early = Vec::new();
        check_units(&mut value, "", &mut early);
        let raw: RawConfig = serde_ignored::deserialize(value, |path| {
            unknown.push(path.to_string());
        })
        .map_err(|e| {
            let mut all = early.clone();
            all.push(Problem {
                path: "(file)".into(),
                message: e.to_string(),
            });
            ConfigError { problems: all }
        })?;
        let mut problems: Vec<Problem> = unknown
            .into_iter()
            .map(|p| Problem {
                path: bracket_indices(&p),
                message: "unknown key (see `qalqan config default` for every key)".into(),
            })
            .collect();
        problems.extend(early);
        match raw.validate() {
            Ok(cfg) if problems.is_empty() => Ok(cfg),
            Ok(_) => Err(ConfigError { problems }),
            Err(e) => {
                problems.extend(e.problems);
                Err(ConfigError { problems })
            }
        }
    }

    /// Checks every field and returns all problems at once.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let mut p = Vec::new();
        let mut bad = |path: String, message: String| p.push(Problem { path, message });

        // Listeners.
        if self.listen.is_empty() {
            bad("listen".into(), "at least one [[listen]] is needed".into());
        }
        let mut listen = Vec::new();
        let mut seen_addrs = BTreeSet::new();
        for (i, l) in self.listen.iter().enumerate() {
            let path = format!("listen[{i}]");
            let address = match l.address.parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    bad(
                        format!("{path}.address"),
                        format!("`{}` is not IP:PORT (e.g. `0.0.0.0:80`)", l.address),
                    );
                    continue;
                }
            };
            // Port 0 asks the system for a free port: never a clash.
            if address.port() != 0 && !seen_addrs.insert(address) {
                bad(
                    format!("{path}.address"),
                    format!("{address} is listed twice"),
                );
            }
            let tls = match (&l.cert, &l.key) {
                (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                (None, None) => None,
                _ => {
                    bad(path.clone(), "TLS needs both `cert` and `key`".into());
                    None
                }
            };
            listen.push(Listener {
                address,
                tls,
                proxy_protocol: l.proxy_protocol,
            });
        }

        let admin = match &self.admin.address {
            None => None,
            Some(a) if a.is_empty() => None,
            Some(a) => match a.parse::<SocketAddr>() {
                Ok(sa) => {
                    if sa.port() != 0 && seen_addrs.contains(&sa) {
                        bad(
                            "admin.address".into(),
                            format!("{sa} is also a public listener"),
                        );
                    }
                    Some(sa)
                }
                Err(_) => {
                    bad("admin.address".into(), format!("`{a}` is not IP:PORT"));
                    None
                }
            },
        };

        // Origin.
        let authority = match parse_origin(&self.origin.url) {
            Ok(a) => Some(a),
            Err(m) => {
                bad("origin.url".into(), m);
                None
            }
        };

        // Client.
        let c = &self.client;
        let trusted = match CidrSet::parse(&c.trusted_proxies) {
            Ok(s) => s,
            Err(errs) => {
                for (i, m) in errs {
                    bad(format!("client.trusted_proxies[{i}]"), m);
                }
                CidrSet::default()
            }
        };
        let ipv4_prefix = c.ipv4_prefix.unwrap_or(24);
        if !(8..=32).contains(&ipv4_prefix) {
            bad(
                "client.ipv4_prefix".into(),
                "must be between 8 and 32".into(),
            );
        }
        let ipv6_prefix = c.ipv6_prefix.unwrap_or(64);
        if !(16..=128).contains(&ipv6_prefix) {
            bad(
                "client.ipv6_prefix".into(),
                "must be between 16 and 128".into(),
            );
        }
        let max_header_bytes = c.max_header_bytes.map_or(16 * 1024, |b| b.0);
        if !(1024..=1 << 20).contains(&max_header_bytes) {
            bad(
                "client.max_header_bytes".into(),
                "must be between 1KiB and 1MiB".into(),
            );
        }
        let max_connections = c.max_connections.unwrap_or(10_000);
        let max_connections_per_address = c.max_connections_per_address.unwrap_or(256);
        if max_connections == 0 {
            bad("client.max_connections".into(), "must be at least 1".into());
        }
        if max_connections_per_address == 0 {
            bad(
                "client.max_connections_per_address".into(),
                "must be at least 1".into(),
            );
        }
        let header_read_timeout = c
            .header_read_timeout
            .map_or(Duration::from_secs(10), |d| d.0);
        let idle_timeout = c.idle_timeout.map_or(Duration::from_secs(60), |d| d.0);
        for (k, d) in [
            ("client.header_read_timeout", header_read_timeout),
            ("client.idle_timeout", idle_timeout),
        ] {
            if d < Duration::from_millis(100) {
                bad(k.into(), "must be at least 100ms".into());
            }
        }

        // Block.
        let b = &self.block;
        let block = Block {
            enabled: b.enabled.unwrap_or(true),
            after_limited: b.after_limited.unwrap_or(50),
            window: b.window.map_or(Duration::from_secs(10), |d| d.0),
            duration: b.duration.map_or(Duration::from_secs(300), |d| d.0),
            table_size: b.table_size.unwrap_or(65_536),
        };
        if block.after_limited == 0 {
            bad("block.after_limited".into(), "must be at least 1".into());
        }
        if block.window < Duration::from_secs(1) {
            bad("block.window".into(), "must be at least 1s".into());
        }
        if !(64..=16_777_216).contains(&block.table_size) {
            bad(
                "block.table_size".into(),
                "must be between 64 and 16777216".into(),
            );
        }

        // Cache.
        let cache = Cache {
            max_bytes: self.cache.max_bytes.map_or(32 << 20, |b| b.0),
            max_object_bytes: self.cache.max_object_bytes.map_or(1 << 20, |b| b.0) as usize,
            lock_timeout: self
                .cache
                .lock_timeout
                .map_or(Duration::from_secs(5), |d| d.0),
            drop_params: self
                .cache
                .drop_params
                .clone()
                .unwrap_or_else(|| qalqan_cache::key::KeyRules::default().drop_params),
        };
        if cache.max_object_bytes as u64 > cache.max_bytes {
            bad(
                "cache.max_object_bytes".into(),
                "is larger than cache.max_bytes".into(),
            );
        }

        // Lists.
        let mut cidrs = |key: &str, items: &[String]| match CidrSet::parse(items) {
            Ok(s) => s,
            Err(errs) => {
                for (i, m) in errs {
                    bad(format!("lists.{key}[{i}]"), m);
                }
                CidrSet::default()
            }
        };
        let allow_cidrs = cidrs("allow_cidrs", &self.lists.allow_cidrs);
        let deny_cidrs = cidrs("deny_cidrs", &self.lists.deny_cidrs);
        let allow_user_agents = regex_set(
            "lists.allow_user_agents",
            &self.lists.allow_user_agents,
            &mut bad,
        );
        let deny_user_agents = regex_set(
            "lists.deny_user_agents",
            &self.lists.deny_user_agents,
            &mut bad,
        );

        let access_log = AccessLog {
            path: match self.access_log.path.as_deref() {
                None => Some("-".into()),
                Some("") => None,
                Some(p) => Some(p.to_string()),
            },
            max_lines_per_second: self.access_log.max_lines_per_second.unwrap_or(100),
        };

        // Routes: the configured ones, then the built-in defaults for names not configured.
        let mut raw_routes: Vec<RawRoute> = self.route;
        if raw_routes.is_empty() {
            raw_routes = default_routes();
        }
        let mut routes = Vec::new();
        let mut names = BTreeSet::new();
        for (i, r) in raw_routes.iter().enumerate() {
            let path = format!("route[{i}]");
            if r.name.is_empty() {
                bad(format!("{path}.name"), "every route needs a name".into());
            } else if !r
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                bad(
                    format!("{path}.name"),
                    "use letters, digits, `_` and `-` only".into(),
                );
            } else if !names.insert(r.name.clone()) {
                bad(
                    format!("{path}.name"),
                    format!("`{}` is used twice", r.name),
                );
            }
            let is_default = r.name == "default";
            if is_default
                && (!r.path_prefix.is_empty()
                    || !r.path_regex.is_empty()
                    || !r.query_params.is_empty())
            {
                bad(
                    path.clone(),
                    "the `default` route matches everything; give it no matchers".into(),
                );
            }
            if !is_default
                && r.path_prefix.is_empty()
                && r.path_regex.is_empty()
                && r.query_params.is_empty()
            {
                bad(
                    path.clone(),
                    "needs `path_prefix`, `path_regex` or `query_params` (or name it `default`)"
                        .into(),
                );
            }
            if is_default && i + 1 != raw_routes.len() {
                bad(path.clone(), "`default` must be the last route".into());
            }
            let mut methods = Vec::new();
            for (j, m) in r.methods.iter().enumerate() {
                match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => methods.push(m),
                    Err(_) => bad(
                        format!("{path}.methods[{j}]"),
                        format!("`{m}` is not a method"),
                    ),
                }
            }
            for (j, pfx) in r.path_prefix.iter().enumerate() {
                if !pfx.starts_with('/') {
                    bad(
                        format!("{path}.path_prefix[{j}]"),
                        "must start with `/`".into(),
                    );
                }
            }
            let path_regex = regex_set(&format!("{path}.path_regex"), &r.path_regex, &mut bad);
            let queue_timeout = r.queue_timeout.map_or(Duration::from_secs(2), |d| d.0);
            let cache_ttl = r.cache_ttl.map(|d| d.0).filter(|d| !d.is_zero());
            let attack_origin_budget = r.attack_origin_budget.unwrap_or(10);
            if attack_origin_budget > 100_000 {
                bad(
                    format!("{path}.attack_origin_budget"),
                    "must be at most 100000 (0 turns the budget off)".into(),
                );
            }
            let budget_window = r
                .attack_origin_budget_window
                .map_or(Duration::from_secs(60), |d| d.0);
            if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&budget_window) {
                bad(
                    format!("{path}.attack_origin_budget_window"),
                    "must be between 1s and 1h".into(),
                );
            }
            let attack_newcomer_rate = match &r.attack_newcomer_rate {
                None => NewcomerRate::Auto,
                Some(RawRate::Word(w)) if w == "auto" => NewcomerRate::Auto,
                Some(RawRate::Float(x)) if (0.0..=100_000.0).contains(x) => NewcomerRate::Fixed(*x),
                Some(RawRate::Int(x)) if (0..=100_000).contains(x) => {
                    NewcomerRate::Fixed(*x as f64)
                }
                Some(_) => {
                    bad(
                        format!("{path}.attack_newcomer_rate"),
                        "must be \"auto\" or between 0 (no pace) and 100000 requests per second"
                            .into(),
                    );
                    NewcomerRate::Auto
                }
            };
            if r.adaptive_concurrency == Some(true) && r.max_in_flight.unwrap_or(0) == 0 {
                bad(
                    format!("{path}.adaptive_concurrency"),
                    "needs `max_in_flight` (the ceiling the limit adapts under)".into(),
                );
            }
            routes.push(Route {
                name: r.name.clone(),
                methods,
                path_prefix: r.path_prefix.clone(),
                path_regex,
                query_params: r.query_params.clone(),
                rate_per_address: r.rate_per_address.unwrap_or(20),
                rate_per_prefix: r.rate_per_prefix.unwrap_or(200),
                max_in_flight: r.max_in_flight.unwrap_or(0),
                queue: r.queue.unwrap_or(0),
                queue_timeout,
                cache_ttl,
                stale_while_revalidate: r
                    .stale_while_revalidate
                    .map_or(Duration::from_secs(30), |d| d.0),
                stale_if_error: r
                    .stale_if_error
                    .map_or(Duration::from_secs(86_400), |d| d.0),
                cache_min_uses: r.cache_min_uses.unwrap_or(1),
                fold_query_case: r.fold_query_case.unwrap_or(false),
                fail: r.fail.unwrap_or(FailMode::Open),
                challenge: r.challenge.unwrap_or(ChallengePolicy::Never),
                adaptive_concurrency: r.adaptive_concurrency.unwrap_or(true),
                attack_origin_budget,
                attack_origin_budget_window: budget_window,
                attack_newcomer_rate,
            });
        }
        if !names.contains("default") {
            routes.push(Route {
                name: "default".into(),
                methods: vec![],
                path_prefix: vec![],
                path_regex: None,
                query_params: vec![],
                rate_per_address: 20,
                rate_per_prefix: 200,
                max_in_flight: 0,
                queue: 0,
                queue_timeout: Duration::from_secs(2),
                cache_ttl: Some(Duration::from_secs(5)),
                stale_while_revalidate: Duration::from_secs(30),
                stale_if_error: Duration::from_secs(86_400),
                cache_min_uses: 1,
                fold_query_case: false,
                fail: FailMode::Open,
                challenge: ChallengePolicy::Never,
                adaptive_concurrency: true,
                attack_origin_budget: 10,
                attack_origin_budget_window: Duration::from_secs(60),
                attack_newcomer_rate: NewcomerRate::Auto,
            });
        }

        let a = &self.attack;
        let defaults = qalqan_detect::DetectConfig::default();
        let secs = |d: Option<Dur>, default: u32| {
            d.map_or(default, |d| {
                u32::try_from(d.0.as_secs()).unwrap_or(u32::MAX)
            })
        };
        let mut detect = qalqan_detect::DetectConfig {
            baseline_floor_rps: a.floor_rps.unwrap_or(defaults.baseline_floor_rps),
            elevated_enter_factor: a.elevated_factor.unwrap_or(defaults.elevated_enter_factor),
            attack_enter_factor: a.attack_factor.unwrap_or(defaults.attack_enter_factor),
            enter_after_secs: secs(a.enter_after, defaults.enter_after_secs),
            cooldown_secs: secs(a.cooldown, defaults.cooldown_secs),
            warmup_secs: secs(a.warmup, defaults.warmup_secs),
            baseline_half_life_secs: secs(a.half_life, defaults.baseline_half_life_secs),
            ..defaults
        };
        // Exit thresholds follow the enter ones (half of them) so hysteresis is kept.
        detect.elevated_exit_factor = detect.elevated_enter_factor / 2.0;
        detect.attack_exit_factor = detect.attack_enter_factor / 2.0;
        if let Err(e) = detect.validate() {
            for pr in e.problems {
                bad(format!("attack ({})", pr.key), pr.hint.to_string());
            }
        }
        let tighten_limits = a.tighten_limits.unwrap_or(2.0);
        if !(1.0..=100.0).contains(&tighten_limits) {
            bad(
                "attack.tighten_limits".into(),
                "must be between 1 (unchanged) and 100".into(),
            );
        }
        let familiar_min_requests = a.familiar_min_requests.unwrap_or(20);
        if !(1..=1_000_000_000).contains(&familiar_min_requests) {
            bad(
                "attack.familiar_min_requests".into(),
                "must be between 1 and 1000000000".into(),
            );
        }
        let familiar_min_share = a.familiar_min_share.unwrap_or(0.001);
        if !(0.0..=1.0).contains(&familiar_min_share) {
            bad(
                "attack.familiar_min_share".into(),
                "must be a share between 0 and 1 (0.001 = 0.1 %)".into(),
            );
        }
        let familiar_half_life = a
            .familiar_half_life
            .map_or(Duration::from_secs(86_400), |d| d.0);
        if !(Duration::from_secs(60)..=Duration::from_secs(30 * 86_400))
            .contains(&familiar_half_life)
        {
            bad(
                "attack.familiar_half_life".into(),
                "must be between 1m and 30d".into(),
            );
        }
        let attack = Attack {
            tighten_limits,
            familiar_min_requests,
            familiar_min_share,
            familiar_half_life,
            episodes_path: match a.episodes_path.as_deref() {
                None => Some(PathBuf::from("qalqan-episodes.jsonl")),
                Some("") => None,
                Some(p) => Some(PathBuf::from(p)),
            },
            detect,
        };

        let ch = &self.challenge;
        let keys = match ch.secret.as_deref() {
            Some(hex) => match qalqan_challenge::Secret::from_hex(hex) {
                Ok(s) => Some(qalqan_challenge::Keys::new(s)),
                Err(e) => {
                    bad("challenge.secret".into(), e.to_string());
                    None
                }
            },
            None => Some(qalqan_challenge::Keys::new(
                qalqan_challenge::Secret::generate(random_bytes()),
            )),
        };
        let difficulty = ch.difficulty.unwrap_or(12);
        if difficulty > 24 {
            bad(
                "challenge.difficulty".into(),
                "at most 24 bits: above that slow phones wait minutes".into(),
            );
        }
        let challenge_ttl = ch.ttl.map_or(Duration::from_secs(120), |d| d.0);
        if !(Duration::from_secs(10)..=Duration::from_secs(600)).contains(&challenge_ttl) {
            bad("challenge.ttl".into(), "must be between 10s and 10m".into());
        }

        let g = &self.goodbots;
        let rate_per_family = g.rate_per_family.unwrap_or(50);
        if !(1..=100_000).contains(&rate_per_family) {
            bad(
                "goodbots.rate_per_family".into(),
                "must be between 1 and 100000 requests per second".into(),
            );
        }
        let ranges_dir = g
            .ranges_dir
            .as_deref()
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        // The lists are read here, so `qalqan config check` and a reload report a broken file
        // with its line instead of the shield starting without its good bots.
        let families = match crate::goodbots::Families::load(ranges_dir.as_deref()) {
            Ok(f) => std::sync::Arc::new(f),
            Err(errs) => {
                let key = if ranges_dir.is_some() {
                    "goodbots.ranges_dir"
                } else {
                    "goodbots"
                };
                for e in errs {
                    bad(key.into(), e);
                }
                std::sync::Arc::new(crate::goodbots::Families::empty())
            }
        };
        let goodbots = crate::goodbots::Settings {
            enabled: g.enabled.unwrap_or(true),
            fcrdns: g.fcrdns.unwrap_or(false),
            rate_per_family,
            ranges_dir,
            families,
        };

        // The geo data is loaded here rather than at start, so `qalqan config check` finds a bad
        // file (with its line) and a reload with a bad one is refused like any other mistake.
        // The built-in data is parsed once per process and shared.
        let geo_enabled = self.geo.enabled.unwrap_or(true);
        let geo_dir = self
            .geo
            .dir
            .as_deref()
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        let geo_data = if geo_enabled {
            let loaded = match &geo_dir {
                Some(d) => qalqan_geo::Geo::load_dir(d).map(std::sync::Arc::new),
                None => qalqan_geo::Geo::embedded(),
            };
            match loaded {
                Ok(g) => Some(g),
                Err(e) => {
                    let key = if geo_dir.is_some() { "geo.dir" } else { "geo" };
                    bad(key.into(), e.to_string());
                    None
                }
            }
        } else {
            None
        };

        let route_params: Vec<String> = routes
            .iter()
            .flat_map(|r| r.query_params.iter().cloned())
            .collect();
        let atlas = crate::push::check(&self.atlas, &route_params, &mut bad);

        let mut warnings = qalqan_net::cidr::audit_trusted(&trusted);
        if listen.iter().any(|l| l.proxy_protocol) && trusted.is_empty() {
            bad(
                "client.trusted_proxies".into(),
                "a listener expects the PROXY protocol but no peer is trusted to send it".into(),
            );
        }
        if let Some(a) = atlas.as_deref()
            && a.token_in_clear()
        {
            warnings.push(format!(
                "atlas.url {} is plain http to a public host: the ingest token travels in clear; use https",
                a.url
            ));
        }
        if let Some(a) = admin
            && !a.ip().is_loopback()
        {
            warnings.push(format!(
                "admin.address {a} is not on loopback: metrics reveal attack details; firewall it"
            ));
        }

        let threads = if self.server.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.server.threads
        };
        if threads > 1024 {
            bad("server.threads".into(), "at most 1024".into());
        }

        if !p.is_empty() {
            return Err(ConfigError { problems: p });
        }
        let Some(authority) = authority else {
            return Err(ConfigError::one("origin.url", "missing"));
        };
        Ok(Config {
            threads,
            listen,
            admin,
            origin: Origin {
                authority,
                connect_timeout: self
                    .origin
                    .connect_timeout
                    .map_or(Duration::from_secs(3), |d| d.0),
                response_timeout: self
                    .origin
                    .response_timeout
                    .map_or(Duration::from_secs(30), |d| d.0),
                max_idle_connections: self.origin.max_idle_connections.unwrap_or(256),
            },
            client: Client {
                trusted_proxies: trusted,
                ipv4_prefix,
                ipv6_prefix,
                header_read_timeout,
                idle_timeout,
                max_connections,
                max_connections_per_address,
                max_header_bytes: max_header_bytes as usize,
                max_body_bytes: c.max_body_bytes.map_or(10 << 20, |b| b.0),
            },
            block,
            cache,
            lists: Lists {
                allow_cidrs,
                deny_cidrs,
                allow_user_agents,
                deny_user_agents,
            },
            access_log,
            routes,
            attack,
            challenge: Challenge {
                keys: keys.ok_or_else(|| ConfigError::one("challenge.secret", "invalid"))?,
                difficulty,
                ttl: challenge_ttl,
                clearance_ttl: ch
                    .clearance_ttl
                    .map_or(Duration::from_secs(12 * 3600), |d| d.0),
                nojs_delay: ch.nojs_delay.map_or(Duration::from_secs(5), |d| d.0),
                contact: ch.contact.clone().unwrap_or_default(),
            },
            geo: Geo {
                enabled: geo_enabled,
                dir: geo_dir,
                data: geo_data,
            },
            goodbots,
            atlas,
            warnings,
        })
    }
}

/// 32 random bytes from the operating system (a fresh challenge secret, nonces).
pub fn random_bytes() -> [u8; 32] {
    use std::io::Read as _;
    let mut b = [0u8; 32];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        // No /dev/urandom: fall back on std's per-process random hash keys, mixed with time.
        use std::hash::{BuildHasher as _, Hasher as _};
        for chunk in b.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
        }
    }
    b
}

/// Keys whose values are durations and sizes, wherever they appear.
const DURATION_KEYS: [&str; 21] = [
    "attack_origin_budget_window",
    "familiar_half_life",
    "send_while_open",
    "clearance_ttl",
    "nojs_delay",
    "enter_after",
    "cooldown",
    "warmup",
    "half_life",
    "connect_timeout",
    "response_timeout",
    "header_read_timeout",
    "idle_timeout",
    "window",
    "duration",
    "lock_timeout",
    "queue_timeout",
    "ttl",
    "cache_ttl",
    "stale_while_revalidate",
    "stale_if_error",
];
const SIZE_KEYS: [&str; 4] = [
    "max_header_bytes",
    "max_body_bytes",
    "max_bytes",
    "max_object_bytes",
];

/// Reports every bad duration and size with its key path and replaces it with a harmless value
/// so that deserialising can go on and find the other problems.
fn check_units(v: &mut toml::Value, path: &str, out: &mut Vec<Problem>) {
    match v {
        toml::Value::Table(t) => {
            for (k, child) in t.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if DURATION_KEYS.contains(&k.as_str()) {
                    let err = match child {
                        toml::Value::String(s) => parse_duration(s).err(),
                        _ => Some("must be a duration in quotes, e.g. \"10s\"".to_string()),
                    };
                    if let Some(message) = err {
                        out.push(Problem { path: p, message });
                        *child = toml::Value::String("1s".into());
                    }
                } else if SIZE_KEYS.contains(&k.as_str()) {
                    let err = match child {
                        toml::Value::String(s) => parse_bytes(s).err(),
                        toml::Value::Integer(n) if *n >= 0 => None,
                        _ => Some("must be a size, e.g. 16384 or \"32MiB\"".to_string()),
                    };
                    if let Some(message) = err {
                        out.push(Problem { path: p, message });
                        *child = toml::Value::String("1MiB".into());
                    }
                } else {
                    check_units(child, &p, out);
                }
            }
        }
        toml::Value::Array(a) => {
            for (i, child) in a.iter_mut().enumerate() {
                check_units(child, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// `route.0.colour` (serde_ignored's form) to `route[0].colour` (the form of every other problem).
fn bracket_indices(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for (i, part) in path.split('.').enumerate() {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(part);
            out.push(']');
        } else {
            if i > 0 {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

fn regex_set(
    path: &str,
    items: &[String],
    bad: &mut impl FnMut(String, String),
) -> Option<regex::RegexSet> {
    if items.is_empty() {
        return None;
    }
    let mut ok = true;
    for (i, r) in items.iter().enumerate() {
        if let Err(e) = regex::RegexBuilder::new(r).size_limit(1 << 20).build() {
            bad(format!("{path}[{i}]"), format!("bad regex: {e}"));
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    match regex::RegexSetBuilder::new(items)
        .size_limit(4 << 20)
        .build()
    {
        Ok(s) => Some(s),
        Err(e) => {
            bad(path.to_string(), format!("regexes too large together: {e}"));
            None
        }
    }
}

fn parse_origin(url: &str) -> Result<http::uri::Authority, String> {
    if url.is_empty() {
        return Err("missing: set the outlet's site, e.g. `http://127.0.0.1:8080`".into());
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("`{url}` is not a URL like `http://127.0.0.1:8080`"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err("https origins are not supported yet; put the origin on plain HTTP on a private address".into());
        }
        _ => return Err(format!("`{url}` must start with http://")),
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err("give the origin without a path".into());
    }
    let auth = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("`{url}` has no host"))?;
    if auth.as_str().contains('@') {
        return Err("credentials in the origin URL are not supported".into());
    }
    if auth.port_u16().is_none() {
        let with_port = format!("{}:80", auth.host());
        return with_port
            .parse()
            .map_err(|_| format!("`{url}` has a bad host"));
    }
    Ok(auth)
}

/// The route classes used when the file names none: search (the flood target), feeds and static
/// files (cheap, cache-friendly, generous limits), admin paths (fail closed, never cached) and the
/// default class.
pub fn default_routes() -> Vec<RawRoute> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        RawRoute {
            name: "search".into(),
            path_prefix: s(&["/search"]),
            query_params: s(&["s", "q", "search"]),
            rate_per_address: Some(5),
            rate_per_prefix: Some(50),
            max_in_flight: Some(16),
            queue: Some(32),
            queue_timeout: Some(Dur(Duration::from_secs(2))),
            cache_ttl: Some(Dur(Duration::from_secs(60))),
            cache_min_uses: Some(3),
            fold_query_case: Some(true),
            challenge: Some(ChallengePolicy::Attack),
            adaptive_concurrency: Some(true),
            attack_origin_budget: Some(10),
            attack_origin_budget_window: Some(Dur(Duration::from_secs(60))),
            ..RawRoute::default()
        },
        RawRoute {
            name: "admin".into(),
            path_prefix: s(&["/wp-admin", "/wp-login.php", "/admin", "/user/login"]),
            rate_per_address: Some(5),
            rate_per_prefix: Some(20),
            max_in_flight: Some(32),
            queue: Some(32),
            fail: Some(FailMode::Closed),
            cache_ttl: Some(Dur(Duration::ZERO)),
            ..RawRoute::default()
        },
        RawRoute {
            name: "feeds".into(),
            path_prefix: s(&["/feed", "/rss", "/atom", "/sitemap", "/robots.txt"]),
            path_regex: s(&[r"\.(rss|atom|xml)$"]),
            rate_per_address: Some(10),
            rate_per_prefix: Some(200),
            cache_ttl: Some(Dur(Duration::from_secs(60))),
            ..RawRoute::default()
        },
        RawRoute {
            name: "static".into(),
            path_regex: s(&[r"(?i)\.(css|js|mjs|png|jpe?g|gif|svg|webp|avif|ico|woff2?|ttf|map)$"]),
            rate_per_address: Some(100),
            rate_per_prefix: Some(1000),
            cache_ttl: Some(Dur(Duration::from_secs(300))),
            ..RawRoute::default()
        },
        RawRoute {
            name: "default".into(),
            rate_per_address: Some(20),
            rate_per_prefix: Some(200),
            cache_ttl: Some(Dur(Duration::from_secs(5))),
            ..RawRoute::default()
        },
    ]
}

/// A complete, commented configuration with every key at its default.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_is_valid_and_complete() {
        let cfg = RawConfig::from_toml(DEFAULT_TOML).expect("default config must load");
        assert_eq!(cfg.routes.last().map(|r| r.name.as_str()), Some("default"));
        assert_eq!(cfg.routes.len(), 5);
    }

    #[test]
    fn every_problem_reported_with_paths() {
        let text = r#"
            typo_key = 1
            [origin]
            url = "ftp://x"
            [[listen]]
            address = "nope"
            [client]
            trusted_proxies = ["10.0.0.0/8", "bad"]
            ipv4_prefix = 2
            [[route]]
            name = "search"
            colour = "red"
        "#;
        let err = RawConfig::from_toml(text).unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "typo_key",
            "route[0].colour",
            "origin.url",
            "listen[0].address",
            "client.trusted_proxies[1]",
            "client.ipv4_prefix",
            "route[0]",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10y").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(parse_bytes("32MiB"), Ok(32 << 20));
        assert_eq!(parse_bytes("10"), Ok(10));
        assert!(parse_bytes("1ZB").is_err());
    }

    #[test]
    fn goodbots_problems_have_key_paths() {
        let text = r#"
            [origin]
            url = "http://127.0.0.1:8080"
            [[listen]]
            address = "127.0.0.1:8000"
            [goodbots]
            rate_per_family = 0
            ranges_dir = "/nonexistent/qalqan-goodbots-lists"
            colour = "green"
        "#;
        let err = RawConfig::from_toml(text).unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "goodbots.colour",
            "goodbots.rate_per_family",
            "goodbots.ranges_dir",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
        let ok = RawConfig::from_toml(DEFAULT_TOML).unwrap();
        assert!(ok.goodbots.enabled && !ok.goodbots.fcrdns);
        assert_eq!(ok.goodbots.rate_per_family, 50);
        assert!(ok.goodbots.families.index_of("googlebot").is_some());
    }

    #[test]
    fn origin_limit_and_budget_keys_are_checked_with_paths() {
        let text = r#"
            [origin]
            url = "http://127.0.0.1:8080"
            [[listen]]
            address = "127.0.0.1:8000"
            [[route]]
            name = "search"
            path_prefix = ["/search"]
            adaptive_concurrency = true
            attack_origin_budget = 1000000
            attack_origin_budget_window = "2h"
            [[route]]
            name = "default"
            attack_origin_budget_window = "soon"
        "#;
        let err = RawConfig::from_toml(text).unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "route[0].adaptive_concurrency",
            "route[0].attack_origin_budget",
            "route[0].attack_origin_budget_window",
            "route[1].attack_origin_budget_window",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
        let ok = RawConfig::from_toml(DEFAULT_TOML).unwrap();
        let search = &ok.routes[0];
        assert!(search.adaptive_concurrency && search.max_in_flight == 16);
        assert_eq!(search.attack_origin_budget, 10);
        assert_eq!(search.attack_origin_budget_window, Duration::from_secs(60));
    }

    #[test]
    fn wide_trusted_proxies_warn() {
        let text = r#"
            [origin]
            url = "http://127.0.0.1:8080"
            [[listen]]
            address = "127.0.0.1:8000"
            [client]
            trusted_proxies = ["0.0.0.0/0"]
        "#;
        let cfg = RawConfig::from_toml(text).unwrap();
        assert!(!cfg.warnings.is_empty());
    }
}
