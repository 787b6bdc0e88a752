//! Prometheus metrics with fixed memory: plain atomics, no label sets that grow with traffic.
//! Route labels come from the configuration (a handful of names), never from requests.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// What the shield did with one request. One word per outcome, used in metrics, logs and the
/// `x-qalqan-decision` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Sent to the origin.
    Pass,
    /// Answered from a fresh cached copy.
    CacheHit,
    /// Answered from a stale cached copy (revalidating, origin failed or overloaded).
    Stale,
    /// Over a rate limit: 429.
    Limited,
    /// Refused: deny list or repeat offender.
    Blocked,
    /// The origin's queue for this route was full: the shield answered 503 itself.
    Shed,
    /// The origin failed and there was no stale copy: 502/504 page.
    Error,
    /// Refused as malformed or too large (400/413).
    Rejected,
    /// Answered with the proof-of-work challenge (or a refused answer to it).
    Challenge,
}

impl Decision {
    /// All decisions, in metric order.
    pub const ALL: [Decision; 9] = [
        Decision::Pass,
        Decision::CacheHit,
        Decision::Stale,
        Decision::Limited,
        Decision::Blocked,
        Decision::Shed,
        Decision::Error,
        Decision::Rejected,
        Decision::Challenge,
    ];

    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Pass => "pass",
            Decision::CacheHit => "cache_hit",
            Decision::Stale => "stale",
            Decision::Limited => "limited",
            Decision::Blocked => "blocked",
            Decision::Shed => "shed",
            Decision::Error => "error",
            Decision::Rejected => "rejected",
            Decision::Challenge => "challenge",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why a connection was closed without being served.
#[derive(Debug, Clone, Copy)]
pub enum ConnDrop {
    /// Repeat offender.
    Blocked,
    /// Global cap.
    TooMany,
    /// Per-address cap.
    PerAddress,
    /// Bad or missing PROXY header, or TLS handshake failure.
    Handshake,
    /// Idle or header timeout.
    Timeout,
}

/// The shield's counters.
#[derive(Default)]
pub struct Metrics {
    decisions: [AtomicU64; 9],
    origin_buckets: [AtomicU64; 12],
    origin_count: AtomicU64,
    origin_sum_micros: AtomicU64,
    origin_errors: AtomicU64,
    /// Requests in flight at the origin now.
    pub origin_in_flight: AtomicI64,
    /// Open client connections.
    pub connections_open: AtomicI64,
    conn_drops: [AtomicU64; 5],
    /// Configuration reloads: accepted and refused.
    pub reloads_ok: AtomicU64,
    /// Refused reloads.
    pub reloads_failed: AtomicU64,
    /// Requests whose X-Forwarded-For came from an untrusted peer (ignored).
    pub untrusted_forwarded: AtomicU64,
    /// HTTP/1.1 connections the shield's own reader handed to hyper (a request with a body, an
    /// upgrade, HTTP/1.0, a malformed head, ...).
    pub http1_handoffs: AtomicU64,
    /// Challenge pages served.
    pub challenges_issued: AtomicU64,
    /// Challenge answers accepted (clearances given).
    pub challenges_solved: AtomicU64,
    /// Challenge answers refused.
    pub challenges_failed: AtomicU64,
    /// Requests let through on a clearance where a challenge was wanted.
    pub cleared_requests: AtomicU64,
    /// Under attack, newcomers' origin-bound requests over the route's shared pace.
    pub newcomers_paced: AtomicU64,
}

impl Metrics {
    /// Counts one decision.
    pub fn decision(&self, d: Decision) {
        self.decisions[d.index()].fetch_add(1, Relaxed);
    }

    /// Reads one decision's count.
    pub fn decision_count(&self, d: Decision) -> u64 {
        self.decisions[d.index()].load(Relaxed)
    }

    /// Records an origin response time.
    pub fn origin_latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.origin_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.origin_count.fetch_add(1, Relaxed);
        self.origin_sum_micros
            .fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// All requests decided so far (every decision).
    pub fn total_requests(&self) -> u64 {
        self.decisions.iter().map(|d| d.load(Relaxed)).sum()
    }

    /// The origin latency histogram: cumulative bucket counts and the total count.
    pub fn origin_histogram(&self) -> ([u64; 12], u64) {
        let mut b = [0u64; 12];
        for (i, c) in self.origin_buckets.iter().enumerate() {
            b[i] = c.load(Relaxed);
        }
        (b, self.origin_count.load(Relaxed))
    }

    /// The p95 of origin latency, in milliseconds, between two histogram snapshots (upper
    /// bucket bound; 0 when nothing was measured).
    pub fn p95_ms(before: &([u64; 12], u64), after: &([u64; 12], u64)) -> f64 {
        let n = after.1.saturating_sub(before.1);
        if n == 0 {
            return 0.0;
        }
        let want = (n as f64 * 0.95).ceil() as u64;
        for (i, b) in BUCKETS.iter().enumerate() {
            if after.0[i].saturating_sub(before.0[i]) >= want {
                return b * 1000.0;
            }
        }
        BUCKETS[BUCKETS.len() - 1] * 1000.0 * 2.0
    }

    /// Counts an origin failure (connect error, timeout).
    pub fn origin_error(&self) {
        self.origin_errors.fetch_add(1, Relaxed);
    }

    /// Counts a dropped connection.
    pub fn conn_drop(&self, why: ConnDrop) {
        self.conn_drops[why as usize].fetch_add(1, Relaxed);
    }

    /// Renders the Prometheus text format. `extra` adds gauges owned elsewhere (cache, limiter
    /// memory, per-route counts).
    pub fn render(&self, extra: &Extra) -> String {
        let mut o = String::with_capacity(4096);
        o.push_str("# HELP qalqan_shield_requests_total Requests by what the shield decided.\n");
        o.push_str("# TYPE qalqan_shield_requests_total counter\n");
        for d in Decision::ALL {
            let _ = writeln!(
                o,
                "qalqan_shield_requests_total{{decision=\"{}\"}} {}",
                d.as_str(),
                self.decision_count(d)
            );
        }
        o.push_str("# HELP qalqan_shield_route_requests_total Requests by route class.\n");
        o.push_str("# TYPE qalqan_shield_route_requests_total counter\n");
        for (name, n) in &extra.routes {
            let _ = writeln!(
                o,
                "qalqan_shield_route_requests_total{{route=\"{name}\"}} {n}"
            );
        }
        o.push_str(
            "# HELP qalqan_shield_origin_latency_seconds Time to the origin's response headers.\n",
        );
        o.push_str("# TYPE qalqan_shield_origin_latency_seconds histogram\n");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "qalqan_shield_origin_latency_seconds_bucket{{le=\"{b}\"}} {}",
                self.origin_buckets[i].load(Relaxed)
            );
        }
        let count = self.origin_count.load(Relaxed);
        let _ = writeln!(
            o,
            "qalqan_shield_origin_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            o,
            "qalqan_shield_origin_latency_seconds_sum {}",
            self.origin_sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "qalqan_shield_origin_latency_seconds_count {count}");
        gauge(
            &mut o,
            "qalqan_shield_origin_in_flight",
            "Requests in flight at the origin.",
            self.origin_in_flight.load(Relaxed),
        );
        counter(
            &mut o,
            "qalqan_shield_origin_errors_total",
            "Origin connect failures and timeouts.",
            self.origin_errors.load(Relaxed),
        );
        gauge(
            &mut o,
            "qalqan_shield_connections_open",
            "Open client connections.",
            self.connections_open.load(Relaxed),
        );
        o.push_str(
            "# HELP qalqan_shield_connections_dropped_total Connections closed before serving.\n",
        );
        o.push_str("# TYPE qalqan_shield_connections_dropped_total counter\n");
        for (i, r) in ["blocked", "too_many", "per_address", "handshake", "timeout"]
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                o,
                "qalqan_shield_connections_dropped_total{{reason=\"{r}\"}} {}",
                self.conn_drops[i].load(Relaxed)
            );
        }
        o.push_str("# HELP qalqan_shield_mode Attack mode: 1 for the current one.\n# TYPE qalqan_shield_mode gauge\n");
        for m in ["normal", "elevated", "under_attack"] {
            let _ = writeln!(
                o,
                "qalqan_shield_mode{{mode=\"{m}\"}} {}",
                u8::from(extra.mode == m)
            );
        }
        gauge(
            &mut o,
            "qalqan_shield_cache_bytes",
            "Bytes held by the micro-cache.",
            extra.cache_bytes as i64,
        );
        gauge(
            &mut o,
            "qalqan_shield_cache_entries",
            "Entries in the micro-cache.",
            extra.cache_entries as i64,
        );
        gauge(
            &mut o,
            "qalqan_shield_tracked_clients_bytes",
            "Memory of all per-client state (rate sketches, block table); fixed whatever the number of clients.",
            extra.tracked_bytes as i64,
        );
        gauge(
            &mut o,
            "qalqan_shield_blocked_clients",
            "Clients blocked now.",
            extra.blocked as i64,
        );
        counter(
            &mut o,
            "qalqan_shield_access_log_dropped_total",
            "Access log lines not written (sampling).",
            extra.log_dropped,
        );
        counter(
            &mut o,
            "qalqan_shield_reloads_total",
            "Accepted configuration reloads.",
            self.reloads_ok.load(Relaxed),
        );
        counter(
            &mut o,
            "qalqan_shield_reload_failures_total",
            "Refused configuration reloads.",
            self.reloads_failed.load(Relaxed),
        );
        o.push_str("# HELP qalqan_shield_challenge_total The challenge funnel.\n# TYPE qalqan_shield_challenge_total counter\n");
        for (stage, v) in [
            ("issued", &self.challenges_issued),
            ("solved", &self.challenges_solved),
            ("failed", &self.challenges_failed),
            ("cleared_request", &self.cleared_requests),
        ] {
            let _ = writeln!(
                o,
                "qalqan_shield_challenge_total{{stage=\"{stage}\"}} {}",
                v.load(Relaxed)
            );
        }
        counter(
            &mut o,
            "qalqan_shield_newcomer_paced_total",
            "Under attack, uncached requests of cleared clients from unfamiliar networks refused over the route's attack_newcomer_rate.",
            self.newcomers_paced.load(Relaxed),
        );
        counter(
            &mut o,
            "qalqan_shield_untrusted_forwarded_total",
            "Requests carrying X-Forwarded-For from a peer not in trusted_proxies (header ignored).",
            self.untrusted_forwarded.load(Relaxed),
        );
        counter(
            &mut o,
            "qalqan_shield_http1_handoffs_total",
            "HTTP/1.1 connections moved from the shield's own request reader to hyper at their first request with a body, an upgrade, HTTP/1.0 or a malformed head.",
            self.http1_handoffs.load(Relaxed),
        );
        o
    }
}

/// Values owned by other parts, sampled at render time.
#[derive(Default)]
pub struct Extra {
    /// Per-route request counts.
    pub routes: Vec<(String, u64)>,
    /// Cache bytes.
    pub cache_bytes: u64,
    /// Cache entries.
    pub cache_entries: u64,
    /// Per-client state memory.
    pub tracked_bytes: u64,
    /// Blocked clients now.
    pub blocked: u64,
    /// Access log lines not written.
    pub log_dropped: u64,
    /// The attack mode's name.
    pub mode: &'static str,
}

fn gauge(o: &mut String, name: &str, help: &str, v: i64) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn counter(o: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
}
