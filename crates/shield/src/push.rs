//! Pushing attack episodes to the task force's atlas (`[atlas]`).
//!
//! The attack recorder hands a snapshot of the open episode to [`Pusher::offer`] every
//! `send_while_open` and once more when the episode closes. `offer` builds the signal, puts it in
//! a bounded queue and returns: it never waits on the network. One background task ([`run`])
//! posts the queue, oldest first, to `POST /api/v1/ingest/episodes` with the outlet's ingest
//! token, retrying with exponential backoff and jitter while the atlas is unreachable.
//!
//! The queue is a small deque under a mutex rather than a channel, because what it must do is not
//! what a channel does: snapshots of one episode supersede each other (the newest replaces the
//! waiting one in place, so a long attack holds one slot, not one per minute), and when the queue
//! is full the *oldest* waiting signal is dropped for the new one. The lock is never held across
//! an await, only for a scan of at most `queue` entries.
//!
//! **What leaves the machine:** only indicators (flooding addresses, their /24 and /64, AS
//! numbers, user agents, search terms of a search flood), the time window and counts. A key is
//! sent only when the shield can vouch that it made at least [`MIN_REQUESTS`] requests and at
//! least `min_share` of the episode's requests, so a reader who happened to browse during an
//! attack stays on this machine. Never sampled request lines, paths, cookies or headers.
//!
//! **Architecture invariant:** the shield never waits on the atlas. A dead, slow or hostile
//! atlas costs at most the queue's memory and one connection at a time.

use std::collections::VecDeque;
use std::fmt;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use qalqan_detect::Episode;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use crate::config::RawAtlas;
use crate::state::{LogBudget, Shared};

/// A key (address, prefix, AS, user agent, search term) is sent only if it certainly made at
/// least this many requests, whatever its share.
pub const MIN_REQUESTS: u64 = 20;
/// One push, from connect to the last byte of the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The first wait after a failure; it doubles up to [`BACKOFF_CAP`].
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two tries.
const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// A signal still unsent this long after it was queued is dropped (and counted).
const GIVE_UP_MS: u64 = 24 * 3600 * 1000;
/// Bytes of an error answer kept for the log line.
const MAX_ANSWER_BYTES: usize = 2048;
/// Search parameters always recognised, besides the `query_params` of the route classes.
const SEARCH_PARAMS: [&str; 4] = ["q", "s", "search", "query"];
/// The longest indicator value the atlas accepts, in characters.
const MAX_VALUE_CHARS: usize = 2000;

/// `[atlas]`, checked. Present only when `atlas.url` is set.
#[derive(Clone)]
pub struct Settings {
    /// The atlas' base URL as configured (no credentials may be in it).
    pub url: String,
    /// Host to connect to (brackets removed from an IPv6 literal).
    host: String,
    /// Port to connect to.
    port: u16,
    /// `Host` header value.
    authority: String,
    /// Path of the ingest endpoint under the base URL.
    path: String,
    /// `Some` for https: roots from `ca_file` or the system bundle.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// `Bearer <token>`, marked sensitive so hyper never prints it; the only copy of the token.
    authorization: HeaderValue,
    /// The protected site's public URL, sent as `site`.
    pub site: String,
    /// This shield node's name, the first half of every `episode_id`.
    pub node: String,
    /// Signals waiting at most.
    pub queue: usize,
    /// Smallest share of the episode's requests a key must have to be sent.
    pub min_share: f64,
    /// Push the open episode this often; `None`: only when it closes.
    pub send_while_open: Option<Duration>,
    /// Query parameters whose values are search terms (lower case).
    search_params: Vec<String>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token and the header built from it stay out; the rest helps a reader of logs.
        f.debug_struct("Settings")
            .field("url", &self.url)
            .field("token", &"(hidden)")
            .field("site", &self.site)
            .field("node", &self.node)
            .field("queue", &self.queue)
            .field("min_share", &self.min_share)
            .field("send_while_open", &self.send_while_open)
            .finish_non_exhaustive()
    }
}

/// Checks `[atlas]`. `None` when `url` is absent or empty (the atlas is off); problems go to
/// `bad` with their key paths. `route_params` are the route classes' `query_params`, taken as
/// search parameters too.
pub(crate) fn check(
    raw: &RawAtlas,
    route_params: &[String],
    bad: &mut impl FnMut(String, String),
) -> Option<Arc<Settings>> {
    let url = raw.url.as_deref().unwrap_or("").trim();
    if url.is_empty() {
        return None;
    }
    let mut ok = true;
    let mut fail = |key: &str, message: String| {
        ok = false;
        bad(format!("atlas.{key}"), message);
    };
    let target = parse_url(url);
    if let Err(m) = &target {
        fail("url", m.clone());
    }

    let token = match (raw.token.as_deref(), raw.token_file.as_deref()) {
        (Some(_), Some(_)) => {
            fail("token", "give `token` or `token_file`, not both".into());
            None
        }
        (Some(t), None) => Some(t.trim().to_string()),
        (None, Some(p)) => match std::fs::read_to_string(p) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                fail("token_file", format!("cannot read {p}: {e}"));
                None
            }
        },
        (None, None) => {
            fail(
                "token",
                "the atlas needs an ingest token (`qalqan atlas token create --outlet SLUG --name shield-1 --role ingest`); set `token` or `token_file`".into(),
            );
            None
        }
    };
    // The message never repeats the token: `config check` output may be pasted into a chat.
    let authorization = token.as_deref().and_then(|t| {
        let v = if t.is_empty() || t.chars().any(|c| !c.is_ascii_graphic()) {
            None
        } else {
            HeaderValue::from_str(&format!("Bearer {t}")).ok()
        };
        if v.is_none() {
            let key = if raw.token_file.is_some() { "token_file" } else { "token" };
            fail(
                key,
                "the token must be one word of printable ASCII (as `qalqan atlas token create` prints it)".into(),
            );
        }
        v
    });

    let site = raw.site.as_deref().unwrap_or("").trim().to_string();
    let lower = site.to_ascii_lowercase();
    let site_ok = (lower.starts_with("https://") || lower.starts_with("http://"))
        && site.len() > "https://".len()
        && site.len() <= 500
        && !site.chars().any(|c| c.is_whitespace() || c.is_control());
    if site.is_empty() {
        fail(
            "site",
            "the site's public URL is needed, e.g. \"https://kursiv.media\"".into(),
        );
    } else if !site_ok {
        fail(
            "site",
            format!("`{site}` is not an http(s) URL such as \"https://kursiv.media\""),
        );
    }

    let node = match raw.node.as_deref().map(str::trim) {
        None | Some("") => default_node(),
        Some(n) => {
            if !valid_node(n) {
                fail(
                    "node",
                    "letters, digits, `.`, `_` and `-` only, at most 64".into(),
                );
            }
            n.to_string()
        }
    };

    let queue = raw.queue.unwrap_or(64);
    if !(1..=10_000).contains(&queue) {
        fail("queue", "must be between 1 and 10000".into());
    }
    let min_share = raw.min_share.unwrap_or(0.005);
    if !(0.0..=1.0).contains(&min_share) {
        fail(
            "min_share",
            "a fraction between 0 and 1 (0.005 is 0.5 % of the episode's requests)".into(),
        );
    }
    let send_while_open = match raw.send_while_open.map(|d| d.0) {
        None => Some(Duration::from_secs(60)),
        Some(d) if d.is_zero() => None,
        Some(d) if d < Duration::from_secs(1) => {
            fail(
                "send_while_open",
                "at least 1s, or \"0s\" to push only when the episode closes".into(),
            );
            None
        }
        Some(d) => Some(d),
    };

    let tls = match &target {
        Ok(t) if t.https => {
            let ca_file = raw.ca_file.as_deref().filter(|p| !p.is_empty());
            match tls_config(ca_file) {
                Ok(c) => Some(c),
                Err(m) => {
                    fail(if ca_file.is_some() { "ca_file" } else { "url" }, m);
                    None
                }
            }
        }
        _ => None,
    };

    let mut search_params: Vec<String> = SEARCH_PARAMS.iter().map(|s| s.to_string()).collect();
    for p in route_params {
        let p = p.to_ascii_lowercase();
        if !search_params.contains(&p) {
            search_params.push(p);
        }
    }

    let (Ok(target), Some(authorization), true) = (target, authorization, ok) else {
        return None;
    };
    let mut authorization = authorization;
    authorization.set_sensitive(true);
    Some(Arc::new(Settings {
        url: url.to_string(),
        host: target.host,
        port: target.port,
        authority: target.authority,
        path: target.path,
        tls,
        authorization,
        site,
        node,
        queue,
        min_share,
        send_while_open,
        search_params,
    }))
}

struct Target {
    https: bool,
    host: String,
    port: u16,
    authority: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let hint = "an http:// or https:// URL such as \"https://atlas.example.kz\"";
    let uri: http::Uri = url.parse().map_err(|_| format!("`{url}` is not {hint}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("`{url}` is not {hint}")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{url}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err("no credentials in the URL: put the token in `token` or `token_file`".into());
    }
    if uri.query().is_some() {
        return Err("no query string in the URL".into());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let base = uri.path().trim_end_matches('/');
    Ok(Target {
        https,
        host,
        port,
        authority: authority.as_str().to_string(),
        path: format!("{base}/api/v1/ingest/episodes"),
    })
}

/// Places where distributions keep their bundle of trusted CA certificates.
const SYSTEM_CA_FILES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// A rustls client that trusts the certificates in `ca_file`, or the system's bundle.
fn tls_config(ca_file: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let path = match ca_file.filter(|p| !p.is_empty()) {
        Some(p) => p.to_string(),
        None => SYSTEM_CA_FILES
            .iter()
            .find(|p| Path::new(p).is_file())
            .map(|p| p.to_string())
            .ok_or(
                "https needs trusted CA certificates: no system bundle found; set `atlas.ca_file`",
            )?,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
        .map_err(|e| format!("cannot read {path}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in {path}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("no usable CA certificate in {path}"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

impl Settings {
    /// Whether the token would cross a public network in clear: plain http to a host that is not
    /// a loopback or private address.
    pub fn token_in_clear(&self) -> bool {
        if self.tls.is_some() {
            return false;
        }
        match self.host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) => !(a.is_loopback() || a.is_private()),
            Ok(std::net::IpAddr::V6(a)) => {
                !(a.is_loopback() || a.is_unique_local() || a.is_unicast_link_local())
            }
            Err(_) => self.host != "localhost",
        }
    }
}

fn valid_node(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The machine's host name made into a valid node name, or `shield`.
fn default_node() -> String {
    let raw = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "shield".into()
    } else {
        name
    }
}

// ---------------------------------------------------------------------------------------------
// What is sent.

/// One indicator seen in the episode, with the requests it certainly made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Indicator {
    /// The atlas' indicator kind: `ip`, `cidr`, `asn`, `user_agent`, `text_pattern`.
    pub kind: &'static str,
    /// The indicator, in the form the atlas stores.
    pub value: String,
    /// Requests (a lower bound: the heavy-hitter count minus its possible over-count).
    pub count: i64,
}

/// The body of `POST /api/v1/ingest/episodes` (the atlas' `EpisodeSignal`).
#[derive(Debug, Clone, Serialize)]
pub struct Signal {
    /// `<node>:<start_ms>`: the same for every push of one episode, so the atlas updates one
    /// incident.
    pub episode_id: String,
    /// The protected site.
    pub site: String,
    /// Unix milliseconds.
    pub start_ms: i64,
    /// Unix milliseconds; `None` while the episode is open.
    pub end_ms: Option<i64>,
    /// Highest requests in one second.
    pub peak_rps: i64,
    /// Requests in the episode so far (totals: a retry replaces, never adds).
    pub total_requests: i64,
    /// Indicators over the thresholds.
    pub indicators: Vec<Indicator>,
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Whether the atlas would take `v` as a value: a value it refuses would make it refuse the
/// whole episode.
fn acceptable(v: &str) -> bool {
    let t = v.trim();
    !t.is_empty() && t.chars().count() <= MAX_VALUE_CHARS && !t.chars().any(char::is_control)
}

/// The signal for an episode: its window and counts, and the keys over both thresholds.
pub fn signal(e: &Episode, s: &Settings) -> Signal {
    let total = e.total_requests();
    // Rounded up: a key at exactly the share passes, one just below does not.
    let by_share = (total as f64 * s.min_share).ceil();
    let threshold = if by_share.is_finite() && by_share > 0.0 {
        (by_share as u64).max(MIN_REQUESTS)
    } else {
        MIN_REQUESTS
    };
    let all = usize::MAX;
    let mut out = Vec::new();
    let mut add = |kind: &'static str, value: String, n: u64| {
        if n >= threshold && acceptable(&value) {
            out.push(Indicator {
                kind,
                value: value.trim().to_string(),
                count: i64_of(n),
            });
        }
    };
    for h in e.top_addresses(all) {
        add("ip", h.key.to_string(), h.guaranteed());
    }
    for h in e.top_ipv4_24(all) {
        add("cidr", format!("{}/24", h.key), h.guaranteed());
    }
    for h in e.top_ipv6_64(all) {
        add("cidr", format!("{}/64", h.key), h.guaranteed());
    }
    for h in e.top_asns(all) {
        if h.key != 0 {
            add("asn", format!("AS{}", h.key), h.guaranteed());
        }
    }
    for h in e.top_user_agents(all) {
        add("user_agent", h.key.clone(), h.guaranteed());
    }
    // Query strings are reduced to their search terms (`q=number one`), so a token or an e-mail
    // address in some other parameter never leaves; the same term under different other
    // parameters (`&t=1`, `&t=2`) adds up. Sums of lower bounds of distinct keys are lower bounds.
    let mut terms: Vec<(String, u64)> = Vec::new();
    for h in e.top_queries(all) {
        for term in search_terms(&h.key, &s.search_params) {
            match terms.iter_mut().find(|(t, _)| *t == term) {
                Some((_, n)) => *n = n.saturating_add(h.guaranteed()),
                None => terms.push((term, h.guaranteed())),
            }
        }
    }
    for (term, n) in terms {
        add("text_pattern", term, n);
    }
    Signal {
        episode_id: format!("{}:{}", s.node, e.start_ms()),
        site: s.site.clone(),
        start_ms: i64_of(e.start_ms()),
        end_ms: e.end_ms().map(i64_of),
        peak_rps: i64_of(e.peak_rps()),
        total_requests: i64_of(total),
        indicators: out,
    }
}

/// `name=value` for every search parameter of a query string, decoded, distinct.
fn search_terms(query: &str, params: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(k).to_ascii_lowercase();
        if !params.contains(&name) {
            continue;
        }
        let value = decode(v);
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        if value.is_empty() {
            continue;
        }
        let term = format!("{name}={value}");
        if !out.contains(&term) {
            out.push(term);
        }
    }
    out
}

/// Form decoding: `+` is a space, `%XX` a byte; bad escapes stay as written; invalid UTF-8
/// becomes U+FFFD.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// The queue.

/// A signal waiting to be sent.
struct Entry {
    /// Changes when a newer snapshot replaces this one, so the sender knows what it sent.
    seq: u64,
    episode_id: String,
    body: Bytes,
    /// When it was queued (monotonic ms), for the retry budget.
    queued_ms: u64,
}

/// What happened to one post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 2xx: stored.
    Ok,
    /// 4xx other than 408 and 429: the atlas will never take it.
    Rejected,
    /// Anything else: try again later.
    Retry,
}

/// The shield's side of the atlas: settings, queue and counters. Lives as long as the process;
/// a reload swaps the settings.
pub struct Pusher {
    settings: ArcSwapOption<Settings>,
    queue: Mutex<VecDeque<Entry>>,
    wake: Notify,
    seq: AtomicU64,
    ok: AtomicU64,
    retry: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    log: LogBudget,
}

impl Default for Pusher {
    fn default() -> Self {
        Self::new()
    }
}

impl Pusher {
    /// An idle pusher with no atlas.
    pub fn new() -> Self {
        Pusher {
            settings: ArcSwapOption::empty(),
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            seq: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            retry: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            log: LogBudget::new(60_000),
        }
    }

    /// Sets or clears the atlas (start and reload). Signals already queued stay and go to the
    /// new atlas.
    pub fn set_settings(&self, s: Option<Arc<Settings>>) {
        self.settings.store(s);
        self.wake.notify_one();
    }

    /// The atlas now, if one is configured.
    pub fn settings(&self) -> Option<Arc<Settings>> {
        self.settings.load_full()
    }

    /// Queues a snapshot of `e` for the atlas, if one is configured and the episode has
    /// anything to report. Never waits on the network.
    pub fn offer(&self, e: &Episode) {
        let Some(s) = self.settings() else {
            return;
        };
        if e.total_requests() < MIN_REQUESTS {
            return;
        }
        let sig = signal(e, &s);
        let body = match serde_json::to_vec(&sig) {
            Ok(b) => Bytes::from(b),
            Err(err) => {
                tracing::error!(error = %err, "cannot serialise an episode for the atlas");
                return;
            }
        };
        self.enqueue(sig.episode_id, body, s.queue, qalqan_limits::now_ms());
    }

    /// Adds a signal: replaces a waiting snapshot of the same episode in place, or appends,
    /// dropping the oldest waiting signal when `cap` are already waiting.
    fn enqueue(&self, episode_id: String, body: Bytes, cap: usize, now_ms: u64) {
        let seq = self.seq.fetch_add(1, Relaxed) + 1;
        let mut dropped = 0;
        if let Ok(mut q) = self.queue.lock() {
            if let Some(e) = q.iter_mut().find(|e| e.episode_id == episode_id) {
                e.seq = seq;
                e.body = body;
                e.queued_ms = now_ms;
            } else {
                while q.len() >= cap.max(1) {
                    q.pop_front();
                    dropped += 1;
                }
                q.push_back(Entry {
                    seq,
                    episode_id,
                    body,
                    queued_ms: now_ms,
                });
            }
        }
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Relaxed);
            if let Some(n) = self.log.allow() {
                tracing::warn!(
                    suppressed = n,
                    "atlas queue full: the oldest unsent episode was dropped"
                );
            }
        }
        self.wake.notify_one();
    }

    /// The oldest waiting signal.
    fn front(&self) -> Option<(u64, Bytes)> {
        let q = self.queue.lock().ok()?;
        q.front().map(|e| (e.seq, e.body.clone()))
    }

    /// Records what happened to the post of `seq`. A signal replaced by a newer snapshot while
    /// it was in flight stays (as that snapshot) and is sent next. Returns `true` when a
    /// retried signal ran out of its budget and was dropped.
    fn finish(&self, seq: u64, outcome: Outcome, now_ms: u64) -> bool {
        let counter = match outcome {
            Outcome::Ok => &self.ok,
            Outcome::Rejected => &self.rejected,
            Outcome::Retry => &self.retry,
        };
        counter.fetch_add(1, Relaxed);
        let Ok(mut q) = self.queue.lock() else {
            return false;
        };
        let Some(i) = q.iter().position(|e| e.seq == seq) else {
            return false;
        };
        let give_up = outcome == Outcome::Retry
            && q.get(i)
                .is_some_and(|e| now_ms.saturating_sub(e.queued_ms) >= GIVE_UP_MS);
        if outcome != Outcome::Retry || give_up {
            q.remove(i);
        }
        if give_up {
            self.dropped.fetch_add(1, Relaxed);
        }
        give_up
    }

    /// Signals waiting now.
    pub fn queue_len(&self) -> usize {
        self.queue.lock().map_or(0, |q| q.len())
    }

    /// Appends the push counters and the queue gauge in the Prometheus text format.
    pub fn render(&self, o: &mut String) {
        o.push_str("# HELP qalqan_shield_atlas_push_total Episode pushes to the atlas by result: ok (stored), retry (failed, will be tried again), dropped (queue full or retried for a day), rejected (refused by the atlas, e.g. a bad token).\n# TYPE qalqan_shield_atlas_push_total counter\n");
        for (result, c) in [
            ("ok", &self.ok),
            ("retry", &self.retry),
            ("dropped", &self.dropped),
            ("rejected", &self.rejected),
        ] {
            let _ = writeln!(
                o,
                "qalqan_shield_atlas_push_total{{result=\"{result}\"}} {}",
                c.load(Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP qalqan_shield_atlas_queue_length Episode signals waiting to be pushed to the atlas.\n# TYPE qalqan_shield_atlas_queue_length gauge\nqalqan_shield_atlas_queue_length {}",
            self.queue_len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The sender.

/// The atlas' answer.
struct Answer {
    status: StatusCode,
    retry_after: Option<Duration>,
    text: String,
}

fn classify(status: StatusCode) -> Outcome {
    if status.is_success() {
        Outcome::Ok
    } else if status.is_client_error()
        && status != StatusCode::REQUEST_TIMEOUT
        && status != StatusCode::TOO_MANY_REQUESTS
    {
        Outcome::Rejected
    } else {
        // 5xx, 408, 429, and redirects or 1xx that a plain POST should never get: maybe a proxy
        // in the way that will recover, so the signal is kept.
        Outcome::Retry
    }
}

/// The wait before try `failures + 1`: exponential from 1 s to 5 min, with "equal jitter" (half
/// fixed, half random) so that many shields cut off together do not come back in step.
fn backoff(failures: u32, random: u64) -> Duration {
    let exp = BACKOFF_FIRST
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_CAP);
    let half = exp.as_millis() as u64 / 2;
    Duration::from_millis(half + random % half.max(1))
}

/// Sends the queue to the atlas until shutdown. One post at a time; the next waits for the
/// answer (or its timeout), so a slow atlas holds one connection, never more.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let p = shared.attack.pusher();
    let seed = crate::config::random_bytes();
    let mut rng = u64::from_le_bytes(seed[..8].try_into().unwrap_or([7; 8])) | 1;
    let mut failures: u32 = 0;
    loop {
        let (job, settings) = (p.front(), p.settings());
        let (Some((seq, body)), Some(s)) = (job, settings) else {
            tokio::select! {
                _ = p.wake.notified() => continue,
                _ = shutdown.changed() => return,
            }
        };
        let answer = tokio::select! {
            r = tokio::time::timeout(REQUEST_TIMEOUT, post(&s, body)) => match r {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())),
            },
            _ = shutdown.changed() => return,
        };
        let now = qalqan_limits::now_ms();
        let (outcome, retry_after) = match &answer {
            Ok(a) => (classify(a.status), a.retry_after),
            Err(_) => (Outcome::Retry, None),
        };
        let gave_up = p.finish(seq, outcome, now);
        match (outcome, &answer) {
            (Outcome::Ok, Ok(a)) => {
                failures = 0;
                tracing::debug!(status = a.status.as_u16(), "episode pushed to the atlas");
            }
            (Outcome::Rejected, Ok(a)) => {
                failures = 0;
                if let Some(n) = p.log.allow() {
                    tracing::error!(
                        status = a.status.as_u16(),
                        answer = %a.text,
                        suppressed = n,
                        "the atlas refused an episode; it is dropped (check atlas.token and atlas.url)"
                    );
                }
            }
            _ => {
                failures = failures.saturating_add(1);
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let wait =
                    retry_after.map_or_else(|| backoff(failures, rng), |d| d.min(BACKOFF_CAP));
                if let Some(n) = p.log.allow() {
                    let why = match &answer {
                        Ok(a) => format!("answered {}", a.status.as_u16()),
                        Err(e) => e.clone(),
                    };
                    tracing::warn!(
                        atlas = %s.url,
                        error = %why,
                        retry_in_ms = wait.as_millis() as u64,
                        gave_up,
                        queued = p.queue_len(),
                        suppressed = n,
                        "cannot push an episode to the atlas; will retry"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// One POST on a fresh connection. Pushes are rare (one per episode per `send_while_open`), so a
/// pool would only keep a socket open to a machine that may be gone.
async fn post(s: &Settings, body: Bytes) -> Result<Answer, String> {
    let tcp = TcpStream::connect((s.host.as_str(), s.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match &s.tls {
        None => exchange(TokioIo::new(tcp), s, body).await,
        Some(cfg) => {
            let name = rustls_pki_types::ServerName::try_from(s.host.clone())
                .map_err(|e| format!("TLS name {}: {e}", s.host))?;
            let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            exchange(TokioIo::new(tls), s, body).await
        }
    }
}

async fn exchange<I>(io: I, s: &Settings, body: Bytes) -> Result<Answer, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let req = Request::post(s.path.as_str())
        .header(header::HOST, s.authority.as_str())
        .header(header::AUTHORIZATION, s.authorization.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("qalqan-shield/", env!("CARGO_PKG_VERSION")),
        )
        .header(header::CONNECTION, "close")
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    let talk = async move {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        drop(sender);
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // The answer is read only to explain a refusal in the log, and only its start.
        let text = match Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
        {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes())
                .chars()
                .filter(|c| !c.is_control())
                .collect(),
            Err(_) => String::new(),
        };
        Ok(Answer {
            status,
            retry_after,
            text,
        })
    };
    // The connection is driven alongside the exchange and closes once the sender is gone.
    let (answer, _) = tokio::join!(talk, conn);
    answer
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use qalqan_detect::Request as Seen;

    use super::*;

    fn raw(url: &str) -> RawAtlas {
        RawAtlas {
            url: Some(url.into()),
            token: Some("qat_secret_value_123".into()),
            site: Some("https://kursiv.media".into()),
            node: Some("node-1".into()),
            ..RawAtlas::default()
        }
    }

    fn settings(min_share: f64) -> Arc<Settings> {
        let mut r = raw("http://127.0.0.1:9");
        r.min_share = Some(min_share);
        let mut problems = Vec::new();
        check(&r, &[], &mut |p, m| problems.push(format!("{p}: {m}")))
            .unwrap_or_else(|| panic!("{problems:?}"))
    }

    fn req(addr: IpAddr, ua: &'static str, query: &'static str) -> Seen<'static> {
        Seen {
            addr,
            asn: Some(64_500),
            country: Some(*b"KZ"),
            method: "GET",
            path: "/search",
            query,
            user_agent: ua,
            decision: "challenge",
        }
    }

    /// A flood of 10,000 requests from four addresses in one /24, with one search term under
    /// varying other parameters, and one reader with one request (0.01 %).
    fn flood_with_a_reader() -> Episode {
        let mut e = Episode::new(1_700_000_000_000);
        let flood: Vec<IpAddr> = (1..=4)
            .map(|i| IpAddr::V4(Ipv4Addr::new(203, 0, 113, i)))
            .collect();
        let queries = [
            "q=number+one&t=1",
            "q=number%20one&t=2",
            "q=number+one&token=secret",
        ];
        for i in 0..9_999u64 {
            let a = flood[(i % 4) as usize];
            e.observe(&req(a, "flood-bot/2.0", queries[(i % 3) as usize]), i);
        }
        e.observe(
            &req(
                IpAddr::V4(Ipv4Addr::new(198, 51, 100, 77)),
                "Mozilla/5.0 (reader)",
                "q=my+own+search",
            ),
            1,
        );
        e.record_second(1_700_000_001_000, 4_000);
        e.finish(1_700_000_060_000);
        e
    }

    #[test]
    fn the_flood_is_sent_and_the_reader_is_not() {
        let e = flood_with_a_reader();
        let sig = signal(&e, &settings(0.005));
        assert_eq!(sig.episode_id, "node-1:1700000000000");
        assert_eq!(sig.site, "https://kursiv.media");
        assert_eq!(sig.total_requests, 10_000);
        assert_eq!(sig.peak_rps, 4_000);
        assert_eq!(sig.end_ms, Some(1_700_000_060_000));
        let has = |kind: &str, value: &str| {
            sig.indicators
                .iter()
                .any(|i| i.kind == kind && i.value == value)
        };
        for i in 1..=4 {
            assert!(has("ip", &format!("203.0.113.{i}")), "{:?}", sig.indicators);
        }
        assert!(has("cidr", "203.0.113.0/24"));
        assert!(has("asn", "AS64500"));
        assert!(has("user_agent", "flood-bot/2.0"));
        // Three query strings, one term: counted together; the token parameter never leaves.
        let term = sig
            .indicators
            .iter()
            .find(|i| i.kind == "text_pattern")
            .expect("the flood's search term");
        assert_eq!(term.value, "q=number one");
        assert_eq!(term.count, 9_999);
        let json = serde_json::to_string(&sig).unwrap();
        for private in ["198.51.100", "reader", "my own", "secret", "/search", "KZ"] {
            assert!(!json.contains(private), "{private} leaked: {json}");
        }
        let ip = sig.indicators.iter().find(|i| i.kind == "ip").unwrap();
        assert!((2_499..=2_500).contains(&ip.count), "{ip:?}");
    }

    #[test]
    fn a_key_needs_both_the_share_and_twenty_requests() {
        let mut e = Episode::new(1_000);
        // 19 requests are 100 % of the episode, but fewer than twenty.
        for i in 0..19 {
            e.observe(&req(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), "a", ""), i);
        }
        assert!(signal(&e, &settings(0.0)).indicators.is_empty());
        e.observe(&req(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), "a", ""), 19);
        assert!(!signal(&e, &settings(0.0)).indicators.is_empty());
        // 20 of 4,020 is below a 1 % share.
        for i in 0..4_000 {
            e.observe(&req(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), "b", ""), i);
        }
        let sig = signal(&e, &settings(0.01));
        assert!(sig.indicators.iter().all(|i| i.value != "192.0.2.1"));
        assert!(sig.indicators.iter().any(|i| i.value == "192.0.2.2"));
    }

    #[test]
    fn values_the_atlas_would_refuse_are_left_out() {
        let mut e = Episode::new(1_000);
        for i in 0..100 {
            e.observe(
                &req(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), "", "q=%01line&s=+"),
                i,
            );
        }
        let sig = signal(&e, &settings(0.0));
        assert!(sig.indicators.iter().all(|i| acceptable(&i.value)));
        assert!(!sig.indicators.iter().any(|i| i.kind == "user_agent"));
        assert!(!sig.indicators.iter().any(|i| i.kind == "text_pattern"));
    }

    #[test]
    fn decoding_search_terms() {
        let p: Vec<String> = vec!["q".into(), "s".into()];
        assert_eq!(search_terms("q=a+b%21&x=1", &p), ["q=a b!"]);
        assert_eq!(search_terms("Q=%D0%B0", &p), ["q=а"]);
        assert_eq!(search_terms("q=%zz%4", &p), ["q=%zz%4"]);
        assert_eq!(search_terms("email=me%40x.kz", &p), Vec::<String>::new());
        assert_eq!(search_terms("q=a&q=a&s=b", &p), ["q=a", "s=b"]);
        assert_eq!(decode("%"), "%");
        assert_eq!(decode("%4"), "%4");
        assert_eq!(decode("%41"), "A");
        assert_eq!(decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn the_queue_coalesces_snapshots_and_drops_the_oldest_when_full() {
        let p = Pusher::new();
        let b = |s: &str| Bytes::from(s.to_string());
        p.enqueue("a:1".into(), b("a1"), 2, 0);
        p.enqueue("b:1".into(), b("b1"), 2, 0);
        p.enqueue("a:1".into(), b("a2"), 2, 0);
        assert_eq!(
            p.queue_len(),
            2,
            "a newer snapshot replaces the waiting one"
        );
        let (seq, body) = p.front().unwrap();
        assert_eq!(body, "a2", "in place: the episode keeps its turn");
        // A snapshot that arrives while the older one is in flight is sent next.
        p.enqueue("a:1".into(), b("a3"), 2, 0);
        assert!(!p.finish(seq, Outcome::Ok, 0));
        assert_eq!(p.front().unwrap().1, "a3");
        p.enqueue("c:1".into(), b("c1"), 2, 0);
        assert_eq!(p.queue_len(), 2);
        assert_eq!(
            p.front().unwrap().1,
            "b1",
            "the oldest (a) was dropped for c"
        );
        assert_eq!(p.dropped.load(Relaxed), 1);
        // Retried: kept until the day is over, then dropped and counted.
        let (seq, _) = p.front().unwrap();
        assert!(!p.finish(seq, Outcome::Retry, 1000));
        assert_eq!(p.front().unwrap().0, seq);
        assert!(p.finish(seq, Outcome::Retry, GIVE_UP_MS));
        assert_eq!(p.front().unwrap().1, "c1");
        let (seq, _) = p.front().unwrap();
        p.finish(seq, Outcome::Rejected, GIVE_UP_MS);
        assert_eq!(p.queue_len(), 0);
        let mut m = String::new();
        p.render(&mut m);
        for line in [
            "qalqan_shield_atlas_push_total{result=\"ok\"} 1",
            "qalqan_shield_atlas_push_total{result=\"retry\"} 2",
            "qalqan_shield_atlas_push_total{result=\"dropped\"} 2",
            "qalqan_shield_atlas_push_total{result=\"rejected\"} 1",
            "qalqan_shield_atlas_queue_length 0",
        ] {
            assert!(m.contains(line), "{line} missing in\n{m}");
        }
    }

    #[test]
    fn statuses_and_backoff() {
        assert_eq!(classify(StatusCode::CREATED), Outcome::Ok);
        assert_eq!(classify(StatusCode::OK), Outcome::Ok);
        assert_eq!(classify(StatusCode::UNAUTHORIZED), Outcome::Rejected);
        assert_eq!(
            classify(StatusCode::UNPROCESSABLE_ENTITY),
            Outcome::Rejected
        );
        assert_eq!(classify(StatusCode::REQUEST_TIMEOUT), Outcome::Retry);
        assert_eq!(classify(StatusCode::TOO_MANY_REQUESTS), Outcome::Retry);
        assert_eq!(classify(StatusCode::BAD_GATEWAY), Outcome::Retry);
        for r in [0, 1, 12345, u64::MAX] {
            let first = backoff(1, r);
            assert!(first >= Duration::from_millis(500) && first < BACKOFF_FIRST);
            let later = backoff(4, r);
            assert!(later >= Duration::from_secs(4) && later < Duration::from_secs(8));
            assert!(backoff(40, r) < BACKOFF_CAP && backoff(40, r) >= BACKOFF_CAP / 2);
        }
    }

    #[test]
    fn config_problems_have_key_paths_and_never_show_the_token() {
        let mut problems = Vec::new();
        let r = RawAtlas {
            url: Some("ftp://x".into()),
            token: Some("has space".into()),
            token_file: Some("/nonexistent".into()),
            site: Some("kursiv.media".into()),
            node: Some("a:b".into()),
            queue: Some(0),
            min_share: Some(2.0),
            ..RawAtlas::default()
        };
        assert!(check(&r, &[], &mut |p, m| problems.push((p, m))).is_none());
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        for want in [
            "atlas.url",
            "atlas.token",
            "atlas.site",
            "atlas.node",
            "atlas.queue",
            "atlas.min_share",
        ] {
            assert!(paths.contains(&want), "{want} missing in {problems:?}");
        }
        let r = RawAtlas {
            token: Some("bad token".into()),
            ..raw("https://atlas.example.kz/base/")
        };
        let mut problems = Vec::new();
        assert!(check(&r, &[], &mut |p, m| problems.push(format!("{p}: {m}"))).is_none());
        assert!(
            !problems.iter().any(|p| p.contains("bad token")),
            "{problems:?}"
        );

        let s = settings(0.005);
        let shown = format!("{s:?}");
        assert!(!shown.contains("qat_secret_value_123"), "{shown}");
        assert!(shown.contains("(hidden)"));
        assert_eq!(s.path, "/api/v1/ingest/episodes");
        assert_eq!(s.send_while_open, Some(Duration::from_secs(60)));
        assert_eq!(s.queue, 64);
        assert!(s.authorization.is_sensitive());
        let off = RawAtlas::default();
        assert!(check(&off, &[], &mut |_, _| panic!("off is fine")).is_none());
    }

    #[test]
    fn urls_and_token_files() {
        let t = parse_url("https://atlas.example.kz/base/").unwrap();
        assert!(t.https);
        assert_eq!((t.host.as_str(), t.port), ("atlas.example.kz", 443));
        assert_eq!(t.path, "/base/api/v1/ingest/episodes");
        let t = parse_url("http://[::1]:8443").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str()),
            ("::1", 8443, "[::1]:8443")
        );
        assert!(parse_url("http://user:pw@host/").is_err());
        assert!(parse_url("http://host/?x=1").is_err());
        assert!(parse_url("atlas.example.kz").is_err());

        let dir = std::env::temp_dir().join(format!("qalqan-push-token-{}", std::process::id()));
        std::fs::write(&dir, "qat_from_file\n").unwrap();
        let r = RawAtlas {
            token: None,
            token_file: Some(dir.display().to_string()),
            ..raw("http://127.0.0.1:9")
        };
        let s = check(&r, &[], &mut |p, m| panic!("{p}: {m}")).unwrap();
        assert_eq!(s.authorization, "Bearer qat_from_file");
        let _ = std::fs::remove_file(&dir);
        assert!(valid_node(&default_node()));
    }
}
