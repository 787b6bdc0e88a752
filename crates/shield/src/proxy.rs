//! The request path: who the client is, which route class, limits, the micro-cache, origin
//! protection, and the call to the origin.
//!
//! Order of the checks, cheapest and most decisive first:
//! 1. deny lists and the repeat-offender table (a flood's blocked clients cost one lookup);
//! 2. route class, then per-address and per-prefix rates (429, and repeat offenders blocked);
//! 3. the cache: fresh copies answer at once, stale copies while one refresh runs;
//! 4. identical misses coalesce into one origin fetch;
//! 5. the route's origin gate: at most `max_in_flight` at the origin, a short queue, then a stale
//!    copy or a light 503 from the shield itself;
//! 6. the origin; its failures become a stale copy or a small error page.

use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Instant, SystemTime};

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use qalqan_cache::policy::{self, RouteCacheRules};
use qalqan_cache::store::{CachedResponse, EntryState};
use qalqan_net::forwarded::{AddrSource, client_from_xff};

use crate::accesslog::Entry;
use crate::body::{Body, ChannelBody, Guarded, Prefixed, ReqBody, empty, full};
use crate::config::{ChallengePolicy, FailMode};
use crate::lookup;
use crate::metrics::Decision;
use crate::pages::{X_QALQAN_CACHE, X_QALQAN_REASON, page};
use crate::state::{Flight, FlightGuard, Outcome, RouteState, Runtime, Shared, flight, tag};
use crate::upstream::{Added, UpstreamError};
use tokio::sync::{mpsc, oneshot};

/// What the connection knows about its client.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The TCP peer, or the source named by a trusted PROXY header.
    pub peer: SocketAddr,
    /// Whether the peer may speak for others (X-Forwarded-For believed).
    pub peer_trusted: bool,
    /// How `peer` was learned.
    pub source: AddrSource,
    /// TLS on this connection.
    pub tls: bool,
    /// `peer`'s address as a header value, made once per connection (it is sent on every
    /// request the connection forwards).
    pub peer_value: Option<HeaderValue>,
}

impl ConnInfo {
    /// What the shield knows of a connection from `peer`.
    pub fn new(peer: SocketAddr, peer_trusted: bool, source: AddrSource, tls: bool) -> Self {
        ConnInfo {
            peer,
            peer_trusted,
            source,
            tls,
            peer_value: ip_value(qalqan_net::cidr::canonical_ip(peer.ip())),
        }
    }
}

/// Header value of `x-qalqan-cache`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum CacheStatus {
    Hit,
    Miss,
    Stale,
    Bypass,
}

impl CacheStatus {
    fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Stale => "stale",
            CacheStatus::Bypass => "bypass",
        }
    }

    fn value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

/// Forwarding headers, named once: a `&str` name is parsed and checked on every use.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// An address as a header value, without the formatting machinery for the common IPv4 case (it
/// is on every proxied request).
fn ip_value(ip: IpAddr) -> Option<HeaderValue> {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut n = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if o >= 100 {
                    buf[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    buf[n] = b'0' + (o / 10) % 10;
                    n += 1;
                }
                buf[n] = b'0' + o % 10;
                n += 1;
            }
            HeaderValue::from_bytes(&buf[..n]).ok()
        }
        IpAddr::V6(_) => HeaderValue::from_str(&ip.to_string()).ok(),
    }
}

static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Handles one request end to end. Never fails: every outcome is a response.
///
/// Some of the response's fields may be outside its header map: a shield page's own (see
/// `body::FixedHead`) and an origin's head passed on as received (see `rawhead`). The shield's
/// HTTP/1.1 writer writes them from there; anything else that reads or writes the fields must
/// first call [`crate::body::for_hyper`], as the hyper service does.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<ReqBody>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let rt = shared.runtime.load_full();
    let begun = Begun::new(&shared, &rt, &conn, &req);
    let (resp, decision) = serve(&shared, &rt, &conn, begun.route, begun.client, req).await;
    begun.finish(&shared, &resp, decision);
    Ok(resp)
}

/// What is known of a request before it is served, and kept for the records made after it:
/// [`handle`] in three steps (`new`, [`serve`], `finish`), for a caller that awaits `serve`
/// itself. (The shield's HTTP/1.1 loop does: the future of `serve` is the largest on the way,
/// and every async layer around it would move it once more per request.)
pub(crate) struct Begun<'a> {
    pub route: &'a RouteState,
    pub client: IpAddr,
    log_head: Option<(u64, LogHead, Instant)>,
    episode_head: Option<(Method, http::Uri, Option<HeaderValue>)>,
}

impl<'a> Begun<'a> {
    pub fn new(shared: &Shared, rt: &'a Runtime, conn: &ConnInfo, req: &Request<ReqBody>) -> Self {
        let client = client_ip(shared, rt, conn, req.headers());
        let route = rt.classify(req.method(), req.uri().path(), req.uri().query());
        route.requests.fetch_add(1, Relaxed);
        // Copy what the access log needs before the request is consumed (only when it is on).
        let log_head = shared
            .log
            .ticket()
            .map(|sec| (sec, LogHead::of(req), Instant::now()));
        // During an attack, what the episode needs is copied before the request is consumed.
        let episode_head = shared.attack.recording().then(|| {
            (
                req.method().clone(),
                req.uri().clone(),
                req.headers().get(header::USER_AGENT).cloned(),
            )
        });
        Begun {
            route,
            client,
            log_head,
            episode_head,
        }
    }

    /// Counts the answer, and records it for the attack episode and the access log.
    pub fn finish(self, shared: &Shared, resp: &Response<Body>, decision: Decision) {
        let Begun {
            route,
            client,
            log_head,
            episode_head,
        } = self;
        shared.metrics.decision(decision);
        if let Some((method, uri, ua)) = episode_head {
            shared.attack.observe(&qalqan_detect::Request {
                addr: client,
                asn: None,
                country: None,
                method: method.as_str(),
                path: uri.path(),
                query: uri.query().unwrap_or(""),
                user_agent: ua.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
                decision: decision.as_str(),
            });
        }
        if let Some((sec, h, started)) = log_head {
            shared.log.write(
                &Entry {
                    client,
                    method: h.method.as_str(),
                    target: &h.target,
                    version: h.version,
                    status: resp.status().as_u16(),
                    bytes: http_body::Body::size_hint(resp.body()).exact(),
                    referer: h.referer.as_ref().map(|v| v.as_bytes()),
                    user_agent: h.user_agent.as_ref().map(|v| v.as_bytes()),
                    decision: decision.as_str(),
                    route: &route.cfg.name,
                    millis: started.elapsed().as_millis() as u64,
                },
                sec,
            );
        }
    }
}

struct LogHead {
    method: Method,
    target: String,
    version: &'static str,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
}

impl LogHead {
    fn of(req: &Request<ReqBody>) -> Self {
        LogHead {
            method: req.method().clone(),
            target: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            version: version_str(req.version()),
            referer: req.headers().get(header::REFERER).cloned(),
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
        }
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// The client's address: the peer, or what trusted proxies say in X-Forwarded-For.
fn client_ip(shared: &Shared, rt: &Runtime, conn: &ConnInfo, headers: &HeaderMap) -> IpAddr {
    let peer = qalqan_net::cidr::canonical_ip(conn.peer.ip());
    let mut values: [&[u8]; 8] = [b""; 8];
    let mut n = 0;
    for v in lookup::values(headers, &X_FORWARDED_FOR) {
        if n == values.len() {
            break;
        }
        values[n] = v.as_bytes();
        n += 1;
    }
    if n == 0 {
        return peer;
    }
    if !conn.peer_trusted {
        shared.metrics.untrusted_forwarded.fetch_add(1, Relaxed);
        // Said loudly, but at most once a minute.
        if let Some(more) = shared.log_forwarded.allow() {
            tracing::warn!(
                peer = %peer,
                similar_since_last = more,
                "X-Forwarded-For from a peer outside client.trusted_proxies was ignored; if the \
                 shield is behind a CDN or load balancer, list its addresses there"
            );
        }
        return peer;
    }
    client_from_xff(peer, &values[..n], &rt.config.client.trusted_proxies).ip
}

/// Protection that runs before the cache: lists, blocks, rates. Synchronous so that a bug in it
/// can be caught and handled by the route's fail mode.
enum Verdict {
    Go,
    Refuse(Response<Body>, Decision),
}

// Everything it decides from, passed in: it runs under `catch_unwind` on every request.
#[allow(clippy::too_many_arguments)]
fn protect(
    shared: &Shared,
    rt: &Runtime,
    route: &RouteState,
    client: IpAddr,
    headers: &HeaderMap,
    clearance: Option<&qalqan_challenge::Clearance>,
    bot: Option<crate::goodbots::Bot>,
    now: u64,
) -> Verdict {
    let lists = &rt.config.lists;
    let ua = lookup::first(headers, &header::USER_AGENT).map(|v| v.as_bytes());
    let ua_str = ua.and_then(|b| std::str::from_utf8(b).ok());
    if lists.deny_cidrs.contains(client)
        || lists
            .deny_user_agents
            .as_ref()
            .is_some_and(|s| ua_str.is_some_and(|u| s.is_match(u)))
    {
        return Verdict::Refuse(
            page(StatusCode::FORBIDDEN, "blocked", None),
            Decision::Blocked,
        );
    }
    if lists.allow_cidrs.contains(client)
        || lists
            .allow_user_agents
            .as_ref()
            .is_some_and(|s| ua_str.is_some_and(|u| s.is_match(u)))
    {
        return Verdict::Go;
    }
    // A reader holding a clearance is counted by its clearance, not its address, so readers
    // behind one carrier NAT do not share one budget.
    let addr_key = match clearance {
        Some(c) => shared.hasher.hash_bytes(&c.id, tag::CLEARANCE),
        None => shared.hasher.hash_ip(client, tag::ADDR),
    };
    let block = &rt.config.block;
    let block_key = shared.hasher.hash_ip(
        crate::state::subscriber(client, &rt.config.client),
        tag::ADDR,
    );
    if block.enabled && shared.blocks.blocked_until(block_key, now).is_some() {
        let mut r = page(StatusCode::FORBIDDEN, "blocked", None);
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Verdict::Refuse(r, Decision::Blocked);
    }
    // A verified crawler or preview fetcher is counted against its family's own budget, not
    // per address: its operator's few addresses fetch for millions of users. Over the budget
    // it gets a 429 (which crawlers honour) but no offence: blocking a Google address would
    // block Google.
    if let Some(b) = bot.filter(|b| b.verified) {
        if rt.goodbots.over_limit(b, now) {
            return Verdict::Refuse(
                page(StatusCode::TOO_MANY_REQUESTS, "limited", Some(1)),
                Decision::Limited,
            );
        }
        return Verdict::Go;
    }
    let cfg = &route.cfg;
    // Under attack every limit is tightened by the configured factor.
    let tighten = if route.mode(shared.attack.mode()) == qalqan_detect::Mode::UnderAttack {
        rt.config.attack.tighten_limits
    } else {
        1.0
    };
    let mut limited = false;
    if cfg.rate_per_address > 0 {
        let n = route.by_addr.observe(addr_key, now);
        limited |= n > f64::from(cfg.rate_per_address) / tighten;
    }
    if cfg.rate_per_prefix > 0 {
        let c = &rt.config.client;
        let net = qalqan_net::cidr::prefix_of(client, c.ipv4_prefix, c.ipv6_prefix);
        let key = shared
            .hasher
            .hash_ip(net.network(), tag::PREFIX ^ net.prefix_len());
        let n = route.by_prefix.observe(key, now);
        limited |= n > f64::from(cfg.rate_per_prefix) / tighten;
    }
    if !limited {
        return Verdict::Go;
    }
    offence(shared, rt, client, &cfg.name);
    Verdict::Refuse(
        page(StatusCode::TOO_MANY_REQUESTS, "limited", Some(1)),
        Decision::Limited,
    )
}

/// Counts one offence (over a limit, a forged or replayed challenge answer) against the client;
/// a client with too many in the window is blocked.
fn offence(shared: &Shared, rt: &Runtime, client: IpAddr, route: &str) {
    let block = &rt.config.block;
    if !block.enabled {
        return;
    }
    let now = qalqan_limits::now_ms();
    let addr_key = shared.hasher.hash_ip(client, tag::ADDR);
    let offences = shared.offenders.observe(addr_key, now);
    if offences > f64::from(block.after_limited) {
        let block_key = shared.hasher.hash_ip(
            crate::state::subscriber(client, &rt.config.client),
            tag::ADDR,
        );
        let until = now.saturating_add(block.duration.as_millis() as u64);
        shared.blocks.block(block_key, until);
        if let Some(more) = shared.log_blocked.allow() {
            tracing::info!(
                client = %client,
                route = %route,
                others_since_last = more,
                "repeat offender blocked for {:?}",
                block.duration
            );
        }
    }
}

/// The answer to a request and how it was decided: [`decide`], then [`forward`] for a request
/// that goes on. The response's fields may be partly outside its map, as [`handle`] says.
pub(crate) async fn serve(
    shared: &Arc<Shared>,
    rt: &Arc<Runtime>,
    conn: &Arc<ConnInfo>,
    route: &RouteState,
    client: IpAddr,
    req: Request<ReqBody>,
) -> (Response<Body>, Decision) {
    match decide(shared, rt, conn, route, client, req) {
        Decided::Answer(r, d) => (r, d),
        Decided::Onward(req, found) => forward(shared, rt, conn, route, client, req, found).await,
    }
}

/// What [`decide`] made of a request.
// Returned once per request and matched at once: boxing the request would cost an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Decided {
    /// The shield's own answer.
    Answer(Response<Body>, Decision),
    /// On to the cache or the origin.
    Onward(Request<ReqBody>, Found),
}

/// What the shield's checks found that the rest of serving a request needs.
pub(crate) struct Found {
    mode: qalqan_detect::Mode,
    budget: Option<Budget>,
    now_ms: u64,
}

/// The part of serving a request that needs no waiting: lists, limits, blocks, the challenge
/// and its endpoints, size checks. An answer (a 429, a challenge, ...) is `Answer`; a request that
/// goes on to the cache or the origin comes back as `Onward`, for [`forward`]. Kept out of the
/// async part so a refused request (the flood) builds and moves no future for what it never
/// reaches: `forward`'s future is kilobytes.
pub(crate) fn decide(
    shared: &Arc<Shared>,
    rt: &Arc<Runtime>,
    conn: &Arc<ConnInfo>,
    route: &RouteState,
    client: IpAddr,
    req: Request<ReqBody>,
) -> Decided {
    // One reading of the millisecond clock for the limits and marks below.
    let now_ms = qalqan_limits::now_ms();
    // A clearance matters only where challenges can be asked for, and is checked only then.
    let mode = route.mode(shared.attack.mode());
    let wants_challenge = crate::challenge::wanted(route.cfg.challenge, mode);
    let clearance = if wants_challenge || mode == qalqan_detect::Mode::UnderAttack {
        let bind = crate::challenge::binding(client, req.headers());
        crate::challenge::clearance(&rt.config, req.headers(), &bind)
    } else {
        None
    };
    let verdict = std::panic::catch_unwind(AssertUnwindSafe(|| {
        // A verified good bot (its user agent claims a family and its address proves it) skips
        // per-address limits and the challenge; an unverified claim changes nothing.
        let bot =
            crate::goodbots::identify(shared, rt, route, wants_challenge, client, req.headers());
        let v = protect(
            shared,
            rt,
            route,
            client,
            req.headers(),
            clearance.as_ref(),
            bot,
            now_ms,
        );
        (v, bot.is_some_and(|b| b.verified))
    }));
    let mut verified_bot = false;
    match verdict {
        Ok((Verdict::Go, verified)) => {
            verified_bot = verified;
            // The site's normal audience, by network; an attack never teaches itself.
            if mode == qalqan_detect::Mode::Normal && !verified {
                shared.familiar.learn(client);
            }
        }
        Ok((Verdict::Refuse(r, d), _)) => return Decided::Answer(r, d),
        Err(_) => {
            // A bug that trips on every request must not become a log flood.
            if let Some(more) = shared.log_guard.allow() {
                tracing::error!(
                    route = %route.cfg.name,
                    similar_since_last = more,
                    "protection logic failed; applying the route's fail mode"
                );
            }
            if route.cfg.fail == FailMode::Closed {
                return Decided::Answer(
                    page(StatusCode::SERVICE_UNAVAILABLE, "shed", Some(5)),
                    Decision::Shed,
                );
            }
        }
    }

    // The shield's own endpoints (challenge answers).
    if req.uri().path().starts_with(crate::challenge::PREFIX) {
        let (r, d, suspicious) = crate::challenge::endpoint(
            &rt.config,
            &shared.challenge,
            client,
            req.uri().path(),
            req.uri().query().unwrap_or(""),
            req.headers(),
            conn.tls,
        );
        let m = &shared.metrics;
        if r.status() == StatusCode::SEE_OTHER {
            m.challenges_solved.fetch_add(1, Relaxed);
        } else if r.headers().contains_key(&X_QALQAN_REASON) {
            m.challenges_failed.fetch_add(1, Relaxed);
        }
        if suspicious {
            offence(shared, rt, client, &route.cfg.name);
        }
        return Decided::Answer(r, d);
    }
    if wants_challenge && clearance.is_some() {
        shared.metrics.cleared_requests.fetch_add(1, Relaxed);
    }
    if wants_challenge && clearance.is_none() && !verified_bot {
        let ret = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let (r, d) = challenge_answer(shared, rt, client, req.headers(), ret);
        return Decided::Answer(r, d);
    }
    let mut req = req;
    // A request that would need a challenge if the mode became under_attack while it waits in
    // the origin queue: the gate then answers it with the challenge instead of forwarding it.
    if route.cfg.challenge == ChallengePolicy::Attack
        && !wants_challenge
        && !verified_bot
        && crate::challenge::clearance(
            &rt.config,
            req.headers(),
            &crate::challenge::binding(client, req.headers()),
        )
        .is_none()
    {
        req.extensions_mut().insert(Claim {
            challengeable: true,
        });
    }
    // Under attack, a cleared client's uncached requests on a route that challenges spend its
    // origin budget, and a newcomer's also the route's shared pace (see `spend_budget`).
    let budget = clearance
        .as_ref()
        .filter(|_| {
            mode == qalqan_detect::Mode::UnderAttack
                && (route.origin_budget.is_some() || route.newcomers.is_some())
        })
        .map(|c| {
            let a = &rt.config.attack;
            Budget {
                key: shared.hasher.hash_bytes(&c.id, tag::CLEARANCE),
                newcomer: route.newcomers.is_some()
                    && shared.familiar.ready()
                    && !shared.familiar.is_familiar(
                        client,
                        a.familiar_min_requests,
                        a.familiar_min_share,
                    ),
            }
        });

    // Oversized bodies are refused before anything reaches the origin.
    if content_length(req.headers()).is_some_and(|len| len > rt.config.client.max_body_bytes) {
        return Decided::Answer(
            page(StatusCode::PAYLOAD_TOO_LARGE, "rejected", None),
            Decision::Rejected,
        );
    }
    Decided::Onward(
        req,
        Found {
            mode,
            budget,
            now_ms,
        },
    )
}

/// The rest of serving a request that [`decide`] let through: the cache, coalescing, the origin.
pub(crate) async fn forward(
    shared: &Arc<Shared>,
    rt: &Arc<Runtime>,
    conn: &Arc<ConnInfo>,
    route: &RouteState,
    client: IpAddr,
    req: Request<ReqBody>,
    found: Found,
) -> (Response<Body>, Decision) {
    // (The request comes on its own, not inside a struct taken apart here: that would be a
    // second copy of it in this future.)
    let Found {
        mode,
        budget,
        now_ms,
    } = found;

    if is_upgrade(&req) {
        // Boxed: rare, and its future would otherwise size every request's.
        return Box::pin(pass_upgrade(shared, rt, conn, route, client, req)).await;
    }

    let Some(key) = cache_key_of(route, &req, conn.tls) else {
        if let Some(r) = spend_budget(&shared.metrics, route, budget, None, &req) {
            return r;
        }
        return pass(shared, rt, conn, route, client, req, None).await;
    };

    // A key whose last response could not be stored goes straight through for a while
    // ("hit-for-pass"): no coalescing wait, no copy, no lookup.
    let key_hash = shared.hasher.hash_bytes(key.as_bytes(), tag::KEY);
    if shared.pass_marks.blocked_until(key_hash, now_ms).is_some() {
        // The copy matters only to a request that spends an origin budget (under attack).
        let cached = budget.and_then(|_| shared.store.get(&key));
        if let Some(r) = spend_budget(&shared.metrics, route, budget, cached.as_ref(), &req) {
            return r;
        }
        return pass(shared, rt, conn, route, client, req, None).await;
    }

    // 3. The cache. Requests with credentials never read it (a logged-in editor must not get an
    // anonymous copy), but may fall back to a stale copy if the origin fails.
    let cached = shared.store.get(&key);
    // Under attack a Cookie no longer opens a way around the cache (a flood would simply add
    // one); Authorization still does.
    let credentials = if mode == qalqan_detect::Mode::UnderAttack {
        req.headers().contains_key(header::AUTHORIZATION)
    } else {
        has_credentials(req.headers())
    };
    if credentials || *req.method() == Method::HEAD && cached.is_none() {
        if let Some(r) = spend_budget(&shared.metrics, route, budget, cached.as_ref(), &req) {
            return r;
        }
        return pass(shared, rt, conn, route, client, req, cached).await;
    }
    let now = Instant::now();
    if let Some(entry) = &cached {
        match entry.state(now) {
            EntryState::Fresh => {
                let r = from_cache(entry, req.method(), req.headers(), CacheStatus::Hit, now);
                return (r, Decision::CacheHit);
            }
            EntryState::Stale => {
                let target = req.uri().clone();
                revalidate_in_background(shared, rt, conn, route, client, &req, target, key);
                let r = from_cache(entry, req.method(), req.headers(), CacheStatus::Stale, now);
                return (r, Decision::Stale);
            }
            // Under attack, any copy still inside its stale-if-error window is served to
            // everyone while one refresh runs: the origin sees one request per key, not the flood.
            EntryState::StaleIfError if mode == qalqan_detect::Mode::UnderAttack => {
                let target = req.uri().clone();
                revalidate_in_background(shared, rt, conn, route, client, &req, target, key);
                let r = from_cache(entry, req.method(), req.headers(), CacheStatus::Stale, now);
                return (r, Decision::Stale);
            }
            EntryState::StaleIfError | EntryState::Expired => {}
        }
    }
    if *req.method() == Method::HEAD {
        if let Some(r) = spend_budget(&shared.metrics, route, budget, cached.as_ref(), &req) {
            return r;
        }
        return pass(shared, rt, conn, route, client, req, cached).await;
    }

    // 4. Coalesce identical misses: one origin fetch per key, the rest wait for its outcome.
    let guard = match flight(shared, &key) {
        Flight::Follow(mut rx) => {
            let waited =
                tokio::time::timeout(rt.config.cache.lock_timeout, rx.wait_for(|v| v.is_some()))
                    .await;
            let outcome = match waited {
                Ok(Ok(v)) => v.clone(),
                _ => None,
            };
            match outcome {
                Some(Outcome::Stored(entry)) => {
                    let now = Instant::now();
                    let r = from_cache(&entry, req.method(), req.headers(), CacheStatus::Hit, now);
                    return (r, Decision::CacheHit);
                }
                // The origin just failed for this key: do not ask it again for every waiter.
                Some(Outcome::Failed) => {
                    return origin_failed(
                        OriginFail::Down,
                        cached.as_ref(),
                        req.method(),
                        req.headers(),
                    );
                }
                // Not storable, or the leader took too long: go alone.
                Some(Outcome::Unstorable) | None => None,
            }
        }
        Flight::Lead(g) => Some(g),
        Flight::Alone => None,
    };

    // Every way on from here reaches the origin.
    if let Some(r) = spend_budget(&shared.metrics, route, budget, cached.as_ref(), &req) {
        return r;
    }
    let Some(index) = rt.routes.iter().position(|r| std::ptr::eq(r, route)) else {
        return pass(shared, rt, conn, route, client, req, cached).await;
    };
    let admitted = admit(shared, route, &key);
    // A conditional request waits for the whole copy so it can be answered 304; any other
    // request streams the response as it arrives while the copy is built.
    let conditional = req.headers().contains_key(header::IF_NONE_MATCH)
        || req.headers().contains_key(header::IF_MODIFIED_SINCE);
    let (mut parts, body) = req.into_parts();
    let method = parts.method.clone();
    let req_headers = parts.headers.clone();
    let target = parts.uri.clone();
    // The fill is unconditional so its response can be stored.
    parts.headers.remove(header::IF_NONE_MATCH);
    parts.headers.remove(header::IF_MODIFIED_SINCE);
    let out = Request::from_parts(parts, limited_body(body, rt.config.client.max_body_bytes));
    let (head_tx, head_rx) = oneshot::channel();
    // The fill runs on its own task: a leader that hangs up must not cancel what the waiters
    // are waiting for.
    tokio::spawn(fill(
        shared.clone(),
        rt.clone(),
        conn.clone(),
        index,
        client,
        out,
        FillTo {
            key,
            admitted,
            guard,
            head: Some(head_tx),
            stream: !conditional,
        },
    ));
    match head_rx.await {
        Ok(Head::Stream(r)) => (r, Decision::Pass),
        Ok(Head::Whole(entry)) => {
            let now = Instant::now();
            let r = from_cache(&entry, &method, &req_headers, CacheStatus::Miss, now);
            (r, Decision::Pass)
        }
        Ok(Head::Unstored(r)) if is_error_status(r.status()) => {
            match stale_answer(cached.as_ref(), &method, &req_headers) {
                Some(s) => (s, Decision::Stale),
                None => (r, Decision::Pass),
            }
        }
        Ok(Head::Unstored(r)) => (r, Decision::Pass),
        Ok(Head::Failed(OriginFail::Challenge)) => {
            let ret = target.path_and_query().map_or("/", |p| p.as_str());
            challenge_answer(shared, rt, client, &req_headers, ret)
        }
        Ok(Head::Failed(f)) => origin_failed(f, cached.as_ref(), &method, &req_headers),
        Err(_) => origin_failed(OriginFail::Down, cached.as_ref(), &method, &req_headers),
    }
}

/// What the origin gate needs to know about a request: carried as a request extension into the
/// fill task (extensions are never sent to the origin).
#[derive(Clone, Copy, Debug)]
struct Claim {
    /// Needs a challenge if the mode becomes `under_attack` while it waits in the queue.
    challengeable: bool,
}

/// The challenge page for a client without clearance.
fn challenge_answer(
    shared: &Shared,
    rt: &Runtime,
    client: IpAddr,
    headers: &HeaderMap,
    ret: &str,
) -> (Response<Body>, Decision) {
    shared.metrics.challenges_issued.fetch_add(1, Relaxed);
    let extra = shared.attack.extra_difficulty();
    let r = crate::challenge::page(&rt.config, client, headers, ret, extra);
    (r, Decision::Challenge)
}

/// Under attack, each clearance may send `attack_origin_budget` uncached requests per window to
/// the origin on a route that challenges; while the route's origin queue has been full within
/// the window, one each (a fair share: a reader's occasional search gets through while a
/// solving bot farm's stream of random queries does not). Over budget, a cached copy of any
/// age still inside its stale-if-error window is served, otherwise a light 429 that says
/// search is limited during the attack. `None`: go on to the origin (and the use is counted).
///
/// Why a budget per clearance: a farm of headless browsers solves the proof of work and keeps
/// the cookie, and spread over thousands of addresses no per-address or per-prefix limit sees
/// it; what it cannot spread is the clearances it paid for. It can buy more of them, though, so
/// a newcomer (a cleared client from a network that was not part of the site's audience before
/// the attack, see `crate::familiar`) must also find a place in the route's shared pace.
fn spend_budget<B>(
    metrics: &crate::metrics::Metrics,
    route: &RouteState,
    budget: Option<Budget>,
    cached: Option<&Arc<CachedResponse>>,
    req: &Request<B>,
) -> Option<(Response<Body>, Decision)> {
    let b = budget?;
    let now = qalqan_limits::now_ms();
    let refuse = |retry: u64| {
        if let Some(r) = stale_answer(cached, req.method(), req.headers()) {
            return Some((r, Decision::Stale));
        }
        Some((crate::pages::origin_budget(retry), Decision::Limited))
    };
    if let Some(sketch) = route.origin_budget.as_ref() {
        let window = sketch.window_ms();
        let pressed = route
            .gate
            .as_ref()
            .is_some_and(|g| g.pressed_since(now.saturating_sub(window)));
        let allowed = if pressed {
            1.0
        } else {
            f64::from(route.cfg.attack_origin_budget)
        };
        // Only what goes on to the origin is counted: a reader who waits and tries again is
        // not kept out by the refusals themselves.
        if sketch.estimate(b.key, now) + 1.0 > allowed {
            return refuse(window.div_ceil(1000).max(1));
        }
    }
    if b.newcomer
        && let Some(pace) = route.newcomers.as_ref()
    {
        let now_us = now.saturating_mul(1000);
        if !pace.try_take(now_us) {
            metrics.newcomers_paced.fetch_add(1, Relaxed);
            return refuse(pace.retry_after(now_us));
        }
    }
    if let Some(sketch) = route.origin_budget.as_ref() {
        sketch.observe(b.key, now);
    }
    None
}

/// A cleared client's place in the origin budgets under attack.
#[derive(Clone, Copy)]
struct Budget {
    /// Its clearance's id, hashed.
    key: u64,
    /// From a network that was not familiar before the attack.
    newcomer: bool,
}

/// The normalised cache key, or `None` when this request is not cacheable at all.
fn cache_key_of<B>(route: &RouteState, req: &Request<B>, tls: bool) -> Option<String> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let host = host_of(req).unwrap_or_default();
    let ae = qalqan_cache::key::accept_encoding_class(
        lookup::first(req.headers(), &header::ACCEPT_ENCODING).map(|v| v.as_bytes()),
    );
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let key = qalqan_cache::key::cache_key(&Method::GET, host, pq, ae, &route.key_rules)?;
    // The scheme is not part of the normalised key; an origin may answer http and https
    // differently (a redirect to https), so TLS listeners get their own key space.
    Some(if tls { format!("s:{key}") } else { key })
}

/// Counts a use of `key` and says whether it was asked for often enough to be stored.
fn admit(shared: &Shared, route: &RouteState, key: &str) -> bool {
    match &route.admission {
        None => true,
        Some(a) => {
            let h = shared.hasher.hash_bytes(key.as_bytes(), tag::KEY);
            a.observe(h, qalqan_limits::now_ms()) >= f64::from(route.cfg.cache_min_uses)
        }
    }
}

/// What a fill hands to the request that started it.
enum Head {
    /// Storable: the response streams as it arrives while the copy is built.
    Stream(Response<Body>),
    /// Storable, read whole (the requester wanted a 304 check).
    Whole(Arc<CachedResponse>),
    /// Not storable (or larger than the cache takes): this response goes to this client only.
    Unstored(Response<Body>),
    /// No usable response.
    Failed(OriginFail),
}

/// Where a fill's result goes.
struct FillTo {
    key: String,
    admitted: bool,
    guard: Option<FlightGuard>,
    head: Option<oneshot::Sender<Head>>,
    stream: bool,
}

impl FillTo {
    fn publish(&self, o: Outcome) {
        if let Some(g) = &self.guard {
            g.publish(o);
        }
    }
    fn send(&mut self, h: Head) {
        if let Some(tx) = self.head.take() {
            let _ = tx.send(h);
        }
    }
}

/// Fetches from the origin for the cache, on its own task. A storable response is copied into
/// the cache (when `admitted`) while it streams to the requester; everything else goes to the
/// requester as it is. Waiters learn the outcome through the flight guard.
async fn fill(
    shared: Arc<Shared>,
    rt: Arc<Runtime>,
    conn: Arc<ConnInfo>,
    index: usize,
    client: IpAddr,
    out: Request<Body>,
    mut to: FillTo,
) {
    let route = &rt.routes[index];
    let resp = match call_origin(&shared, &rt, &conn, route, client, out, Call::Read).await {
        Ok(r) => r,
        Err(f) => {
            // A challenge is this client's answer, not the origin's failure: the others waiting
            // for the same key go on their own.
            to.publish(if matches!(f, OriginFail::Challenge) {
                Outcome::Unstorable
            } else {
                Outcome::Failed
            });
            to.send(Head::Failed(f));
            return;
        }
    };
    if is_error_status(resp.status()) {
        to.publish(Outcome::Failed);
        to.send(Head::Unstored(resp));
        return;
    }
    let cfg = &route.cfg;
    let rules = RouteCacheRules {
        default_ttl: cfg.cache_ttl,
        stale_while_revalidate: cfg.stale_while_revalidate,
        stale_if_error: cfg.stale_if_error,
        max_object_bytes: rt.config.cache.max_object_bytes,
    };
    let decision = policy::decide(
        &Method::GET,
        false,
        resp.status(),
        resp.headers(),
        &rules,
        SystemTime::now(),
    );
    let fresh = match decision {
        policy::Decision::Store(f) => f,
        policy::Decision::Bypass(_) => {
            mark_pass(&shared, &to.key);
            let mut resp = resp;
            resp.headers_mut()
                .insert(X_QALQAN_CACHE.clone(), CacheStatus::Bypass.value());
            to.publish(Outcome::Unstorable);
            to.send(Head::Unstored(resp));
            return;
        }
    };
    let (mut parts, mut body) = resp.into_parts();
    parts.headers.remove(&X_QALQAN_CACHE);
    let mut tx = None;
    if to.stream {
        let (btx, brx) = mpsc::channel(16);
        let mut p = parts.clone();
        p.headers
            .insert(X_QALQAN_CACHE.clone(), CacheStatus::Miss.value());
        to.send(Head::Stream(Response::from_parts(
            p,
            Body::boxed(ChannelBody::new(brx)),
        )));
        tx = Some(btx);
    }
    let max = rt.config.cache.max_object_bytes;
    // Without a reader, a stalled origin body must not hold the gate and the flight forever.
    let stall = rt.config.origin.response_timeout;
    let mut buf = BytesMut::new();
    let mut too_big = false;
    let expected = content_length(&parts.headers);
    let mut stored: Option<Arc<CachedResponse>> = None;
    loop {
        let next = if let Some(t) = &tx {
            // A requester that leaves while the origin stalls is noticed at once, not at the
            // next frame; from then on the stall timeout applies.
            let frame = tokio::select! {
                f = body.frame() => Some(f),
                () = t.closed() => None,
            };
            match frame {
                Some(f) => f,
                None => {
                    tx = None;
                    if too_big || stored.is_some() {
                        return;
                    }
                    continue;
                }
            }
        } else {
            match tokio::time::timeout(stall, body.frame()).await {
                Ok(f) => f,
                Err(_) => {
                    shared.metrics.origin_error();
                    to.publish(Outcome::Failed);
                    to.send(Head::Failed(OriginFail::Timeout));
                    return;
                }
            }
        };
        let Some(frame) = next else { break };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                // The origin broke off mid-body: nothing sound to store.
                shared.metrics.origin_error();
                to.publish(Outcome::Failed);
                match &tx {
                    Some(t) => {
                        let _ = t.send(Err(e)).await;
                    }
                    None => to.send(Head::Failed(OriginFail::Down)),
                }
                return;
            }
        };
        if let Some(d) = frame.data_ref()
            && !too_big
        {
            buf.extend_from_slice(d);
            if buf.len() > max {
                too_big = true;
                mark_pass(&shared, &to.key);
                to.publish(Outcome::Unstorable);
                if tx.is_none() {
                    // Larger than the cache takes: hand over what we have and the rest.
                    if to.head.is_some() {
                        let rest = Body::boxed(Prefixed::new(buf.freeze(), body));
                        parts
                            .headers
                            .insert(X_QALQAN_CACHE.clone(), CacheStatus::Bypass.value());
                        to.send(Head::Unstored(Response::from_parts(parts, rest)));
                    }
                    return;
                }
                buf = BytesMut::new();
            }
        }
        // When the length is known, the copy is stored before the last bytes go out, so a
        // request that follows at once finds it in the cache.
        if stored.is_none() && !too_big && expected.is_some_and(|n| buf.len() as u64 == n) {
            stored = Some(store_copy(&shared, &to, &parts, &mut buf, &fresh));
        }
        if let Some(t) = &tx
            && t.send(Ok(frame)).await.is_err()
        {
            // The requester left; keep reading only while the copy is still wanted.
            tx = None;
            if too_big || stored.is_some() {
                return;
            }
        }
    }
    if too_big {
        return;
    }
    let entry = match stored {
        Some(e) => e,
        None => store_copy(&shared, &to, &parts, &mut buf, &fresh),
    };
    to.send(Head::Whole(entry));
}

/// How long a key whose response could not be stored goes straight to the origin.
const PASS_MARK_MS: u64 = 10_000;

/// Remembers that `key`'s response was not storable.
fn mark_pass(shared: &Shared, key: &str) {
    let h = shared.hasher.hash_bytes(key.as_bytes(), tag::KEY);
    shared
        .pass_marks
        .block(h, qalqan_limits::now_ms().saturating_add(PASS_MARK_MS));
}

/// Stores the finished copy (when admitted) and tells the waiters.
fn store_copy(
    shared: &Shared,
    to: &FillTo,
    parts: &http::response::Parts,
    buf: &mut BytesMut,
    fresh: &policy::Freshness,
) -> Arc<CachedResponse> {
    let entry = Arc::new(CachedResponse::new(
        parts.status,
        parts.headers.clone(),
        std::mem::take(buf).freeze(),
        fresh,
        Instant::now(),
    ));
    if to.admitted {
        shared.store.insert(to.key.clone(), entry.clone());
    }
    to.publish(Outcome::Stored(entry.clone()));
    entry
}

/// Starts one background refresh of `key` unless one is already running.
#[allow(clippy::too_many_arguments)]
fn revalidate_in_background(
    shared: &Arc<Shared>,
    rt: &Arc<Runtime>,
    conn: &Arc<ConnInfo>,
    route: &RouteState,
    client: IpAddr,
    req: &Request<ReqBody>,
    target: http::Uri,
    key: String,
) {
    let Flight::Lead(guard) = flight(shared, &key) else {
        return;
    };
    let Some(index) = rt.routes.iter().position(|r| std::ptr::eq(r, route)) else {
        return;
    };
    let mut h = req.headers().clone();
    h.remove(header::IF_NONE_MATCH);
    h.remove(header::IF_MODIFIED_SINCE);
    let mut out = Request::new(empty());
    *out.method_mut() = Method::GET;
    *out.uri_mut() = target;
    *out.headers_mut() = h;
    tokio::spawn(fill(
        shared.clone(),
        rt.clone(),
        conn.clone(),
        index,
        client,
        out,
        FillTo {
            key,
            admitted: true,
            guard: Some(guard),
            head: None,
            stream: false,
        },
    ));
}

/// A stale answer for a failed origin, if the copy may still be used.
fn stale_answer(
    stale: Option<&Arc<CachedResponse>>,
    method: &Method,
    headers: &HeaderMap,
) -> Option<Response<Body>> {
    let now = Instant::now();
    let e = stale?;
    if e.state(now) == EntryState::Expired {
        return None;
    }
    Some(from_cache(e, method, headers, CacheStatus::Stale, now))
}

/// The answer when the origin gave none: a stale copy if one may be used, else a page.
fn origin_failed(
    fail: OriginFail,
    stale: Option<&Arc<CachedResponse>>,
    method: &Method,
    headers: &HeaderMap,
) -> (Response<Body>, Decision) {
    if !matches!(fail, OriginFail::Refused(_))
        && let Some(r) = stale_answer(stale, method, headers)
    {
        return (r, Decision::Stale);
    }
    match fail {
        OriginFail::Refused(s) => (page(s, "rejected", None), Decision::Rejected),
        // Only where no challenge page can be built (an upgrade); never on a page view.
        OriginFail::Shed | OriginFail::Challenge => (
            page(StatusCode::SERVICE_UNAVAILABLE, "shed", Some(5)),
            Decision::Shed,
        ),
        OriginFail::Down => (
            page(StatusCode::BAD_GATEWAY, "error", Some(10)),
            Decision::Error,
        ),
        OriginFail::Timeout => (
            page(StatusCode::GATEWAY_TIMEOUT, "error", Some(10)),
            Decision::Error,
        ),
    }
}

fn is_error_status(s: StatusCode) -> bool {
    matches!(s.as_u16(), 500 | 502 | 503 | 504)
}

/// Straight through to the origin, streaming both ways. `stale` is a copy to fall back on.
async fn pass(
    shared: &Arc<Shared>,
    rt: &Arc<Runtime>,
    conn: &Arc<ConnInfo>,
    route: &RouteState,
    client: IpAddr,
    req: Request<ReqBody>,
    stale: Option<Arc<CachedResponse>>,
) -> (Response<Body>, Decision) {
    let (parts, body) = req.into_parts();
    // Keep what a stale answer needs only when there is a stale copy (the rare path).
    let saved = stale
        .as_ref()
        .map(|_| (parts.method.clone(), parts.headers.clone()));
    // And what a challenge needs only for a request that may get one.
    let for_challenge = parts
        .extensions
        .get::<Claim>()
        .is_some_and(|c| c.challengeable)
        .then(|| (parts.uri.clone(), parts.headers.clone()));
    let out = Request::from_parts(parts, limited_body(body, rt.config.client.max_body_bytes));
    let result = call_origin(shared, rt, conn, route, client, out, Call::Pass).await;
    let fallback =
        |st: Option<&Arc<CachedResponse>>| saved.as_ref().and_then(|(m, h)| stale_answer(st, m, h));
    match result {
        Ok(r) if is_error_status(r.status()) => match fallback(stale.as_ref()) {
            Some(s) => (s, Decision::Stale),
            None => (r, Decision::Pass),
        },
        Ok(mut r) => {
            match r.body_mut().raw_head_mut() {
                // Its fields are still as received (see `rawhead`): this one joins them.
                Some(h) if !h.is_empty() => h.cache = Some(CacheStatus::Bypass.as_str()),
                _ => {
                    r.headers_mut()
                        .insert(X_QALQAN_CACHE.clone(), CacheStatus::Bypass.value());
                }
            }
            (r, Decision::Pass)
        }
        Err(OriginFail::Challenge) if for_challenge.is_some() => {
            let (uri, headers) = for_challenge.unwrap_or_default();
            let ret = uri.path_and_query().map_or("/", |p| p.as_str());
            challenge_answer(shared, rt, client, &headers, ret)
        }
        Err(f) => {
            if !matches!(f, OriginFail::Refused(_))
                && let Some(s) = fallback(stale.as_ref())
            {
                return (s, Decision::Stale);
            }
            origin_failed(f, None, &Method::GET, &HeaderMap::new())
        }
    }
}

/// WebSocket and other HTTP/1.1 upgrades: forwarded, then bytes are copied both ways.
async fn pass_upgrade(
    shared: &Arc<Shared>,
    rt: &Arc<Runtime>,
    conn: &Arc<ConnInfo>,
    route: &RouteState,
    client: IpAddr,
    mut req: Request<ReqBody>,
) -> (Response<Body>, Decision) {
    let client_side = hyper::upgrade::on(&mut req);
    let (parts, _body) = req.into_parts();
    let out = Request::from_parts(parts, empty());
    match call_origin(shared, rt, conn, route, client, out, Call::Upgrade).await {
        Ok(mut resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            let origin_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let (Ok(c), Ok(o)) = tokio::join!(client_side, origin_side) else {
                    return;
                };
                let mut c = hyper_util::rt::TokioIo::new(c);
                let mut o = hyper_util::rt::TokioIo::new(o);
                let _ = tokio::io::copy_bidirectional(&mut c, &mut o).await;
            });
            (resp, Decision::Pass)
        }
        Ok(resp) => (resp, Decision::Pass),
        Err(f) => origin_failed(f, None, &Method::GET, &HeaderMap::new()),
    }
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    lookup::first(h, &header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn has_credentials(h: &HeaderMap) -> bool {
    lookup::has(h, &header::COOKIE) || lookup::has(h, &header::AUTHORIZATION)
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && lookup::has(req.headers(), &header::UPGRADE)
        && lookup::values(req.headers(), &header::CONNECTION).any(|v| has_token(v, "upgrade"))
}

fn has_token(v: &HeaderValue, token: &str) -> bool {
    v.to_str()
        .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

fn host_of<B>(req: &Request<B>) -> Option<&str> {
    if let Some(h) = lookup::first(req.headers(), &header::HOST) {
        return h.to_str().ok();
    }
    req.uri().authority().map(|a| a.as_str())
}

/// A response built from a cached copy, or 304 when the client already has it.
fn from_cache(
    entry: &CachedResponse,
    method: &Method,
    req_headers: &HeaderMap,
    status: CacheStatus,
    now: Instant,
) -> Response<Body> {
    let mut resp = if qalqan_cache::conditional::not_modified(req_headers, entry) {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        for name in [
            header::ETAG,
            header::LAST_MODIFIED,
            header::CACHE_CONTROL,
            header::EXPIRES,
            header::VARY,
            header::CONTENT_LOCATION,
        ] {
            if let Some(v) = entry.headers.get(&name) {
                r.headers_mut().insert(name, v.clone());
            }
        }
        r
    } else {
        let head = *method == Method::HEAD;
        let mut r = Response::new(if head {
            empty()
        } else {
            full(entry.body.clone())
        });
        *r.status_mut() = entry.status;
        *r.headers_mut() = entry.headers.clone();
        if head {
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
        }
        r
    };
    let h = resp.headers_mut();
    // RFC 9111 4.2.3: the age the origin (or a cache before us) reported, plus our time.
    let initial: u64 = entry
        .headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let age = initial.saturating_add(entry.age(now).as_secs());
    h.insert(header::AGE, HeaderValue::from(age));
    h.insert(X_QALQAN_CACHE.clone(), status.value());
    resp
}

/// Builds the request to the origin from the client's: origin-form target on the origin's
/// address, Host kept, hop-by-hop headers dropped, forwarding headers set.
fn upstream_request(
    rt: &Runtime,
    conn: &ConnInfo,
    client: IpAddr,
    parts: &mut http::request::Parts,
    upgrade: bool,
) -> Result<Added, StatusCode> {
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if !pq.starts_with('/') {
        // Asterisk-form (OPTIONS *) or similar: nothing an origin serves through us.
        return Err(StatusCode::BAD_REQUEST);
    }
    // Origin-form (`/path?query`): the request goes to the origin as to a server, not a proxy.
    // An HTTP/1.1 request usually is already; HTTP/2 and absolute-form ones are rebuilt.
    let uri = if parts.uri.scheme().is_none() && parts.uri.authority().is_none() {
        None
    } else {
        Some(
            http::Uri::builder()
                .path_and_query(pq)
                .build()
                .map_err(|_| StatusCode::BAD_REQUEST)?,
        )
    };
    // One Host field stays as it is (usually no work); repeated ones become the first, and a
    // request without one gets it from its target or the origin's address.
    let mut hosts = lookup::values(&parts.headers, &header::HOST);
    let host = match (hosts.next(), hosts.next(), parts.uri.authority()) {
        (Some(_), None, _) => None,
        (Some(h), Some(_), _) => Some(h.clone()),
        (None, _, Some(a)) => {
            Some(HeaderValue::from_str(a.as_str()).map_err(|_| StatusCode::BAD_REQUEST)?)
        }
        (None, _, None) => Some(
            HeaderValue::from_str(rt.config.origin.authority.as_str())
                .map_err(|_| StatusCode::BAD_REQUEST)?,
        ),
    };
    let client_version = parts.version;
    if let Some(uri) = uri {
        parts.uri = uri;
    }
    parts.version = Version::HTTP_11;
    let h = &mut parts.headers;
    strip_hop_by_hop(h, upgrade);
    if let Some(host) = host {
        h.insert(header::HOST, host);
    }

    // X-Forwarded-For: from a trusted peer, keep its chain and add the peer; otherwise the chain
    // starts here, so an origin that believes the header cannot be fooled by a spoofed one.
    let peer = qalqan_net::cidr::canonical_ip(conn.peer.ip());
    let client_value = if client == peer {
        conn.peer_value.clone()
    } else {
        ip_value(client)
    };
    let xff = if conn.peer_trusted {
        let prior: Vec<&str> = lookup::values(h, &X_FORWARDED_FOR)
            .filter_map(|v| v.to_str().ok())
            .collect();
        if prior.is_empty() {
            conn.peer_value.clone()
        } else {
            HeaderValue::from_str(&format!("{}, {peer}", prior.join(", "))).ok()
        }
    } else {
        client_value.clone()
    };
    // Which forwarding fields the client sent, in one pass over the names (usually none).
    const FORWARDED_BIT: u8 = 1;
    const HOST_BIT: u8 = 2;
    const PORT_BIT: u8 = 4;
    const PROTO_BIT: u8 = 8;
    const FOR_BIT: u8 = 16;
    const REAL_IP_BIT: u8 = 32;
    const VIA_BIT: u8 = 64;
    let mut sent = 0u8;
    for k in h.keys() {
        sent |= if k == header::FORWARDED {
            FORWARDED_BIT
        } else if k == X_FORWARDED_HOST {
            HOST_BIT
        } else if k == X_FORWARDED_PORT {
            PORT_BIT
        } else if k == X_FORWARDED_PROTO {
            PROTO_BIT
        } else if k == X_FORWARDED_FOR {
            FOR_BIT
        } else if k == X_REAL_IP {
            REAL_IP_BIT
        } else if k == header::VIA {
            VIA_BIT
        } else {
            0
        };
    }
    // Other ways of naming the client or the original request are believed only from trusted
    // proxies too.
    if !conn.peer_trusted && sent & (FORWARDED_BIT | HOST_BIT | PORT_BIT | PROTO_BIT) != 0 {
        h.remove(header::FORWARDED);
        h.remove(&X_FORWARDED_HOST);
        h.remove(&X_FORWARDED_PORT);
        h.remove(&X_FORWARDED_PROTO);
        sent &= !PROTO_BIT;
    }
    // The shield's own fields replace every field of the same name the client sent (they are
    // written after the client's; see `Added`).
    let mut added = Added {
        forwarded_for: xff,
        ..Added::default()
    };
    if sent & FOR_BIT != 0 {
        h.remove(&X_FORWARDED_FOR);
    }
    if !(conn.peer_trusted && sent & PROTO_BIT != 0) {
        added.forwarded_proto = Some(if conn.tls { "https" } else { "http" });
    }
    if let Some(v) = client_value {
        if sent & REAL_IP_BIT != 0 {
            h.remove(&X_REAL_IP);
        }
        added.real_ip = Some(v);
    }
    if sent & VIA_BIT != 0 {
        // Earlier hops and this one as one field.
        append_via(h, client_version);
    } else {
        added.via = Some(via_of(client_version));
    }
    Ok(added)
}

/// Whether a header is hop-by-hop by its name alone (not counting names listed in Connection).
fn is_hop_by_hop(n: &HeaderName) -> bool {
    hop_index(n).is_some() || n == header::UPGRADE
}

/// The place of `n` in `HOP_BY_HOP`. Most names are ruled out by their length alone: this runs
/// for every field of every request and response.
fn hop_index(n: &HeaderName) -> Option<usize> {
    let s = n.as_str();
    match s.len() {
        2 | 7 | 10 | 16 | 17 | 18 | 19 => HOP_BY_HOP.iter().position(|h| h.as_str() == s),
        _ => None,
    }
}

fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names (comparisons, no hashing) finds which are present; only those are
    // removed. Most messages carry at most `Connection: keep-alive`.
    const UPGRADE_BIT: u16 = 1 << 8; // after the eight of HOP_BY_HOP
    let mut present: u16 = 0;
    for k in h.keys() {
        if let Some(i) = hop_index(k) {
            present |= 1 << i;
        } else if k == header::UPGRADE {
            present |= UPGRADE_BIT;
        }
    }
    if present == 0 && !keep_upgrade {
        return;
    }
    // Headers named in Connection are hop-by-hop too; only names actually present are looked
    // for, so a token like `keep-alive` costs no allocation.
    if present & 1 != 0 {
        // (bit 0: Connection, the first of HOP_BY_HOP)
        let mut doomed: Vec<HeaderName> = Vec::new();
        let tokens = h
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .take(32);
        for t in tokens {
            if keep_upgrade && t.eq_ignore_ascii_case(b"upgrade") {
                continue;
            }
            if let Some(k) = h.keys().find(|k| {
                // Host is end to end whatever Connection says: a request stripped of it
                // would reach the origin's default site.
                !is_hop_by_hop(k)
                    && *k != header::HOST
                    && k.as_str().as_bytes().eq_ignore_ascii_case(t)
            }) {
                doomed.push(k.clone());
            }
        }
        for n in doomed {
            h.remove(n);
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(n);
        }
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & UPGRADE_BIT != 0 {
        h.remove(header::UPGRADE);
    }
}

/// This hop's `Via` entry for a message received with version `v`.
fn via_of(v: Version) -> &'static str {
    match v {
        Version::HTTP_2 => "2 qalqan",
        Version::HTTP_10 => "1.0 qalqan",
        _ => "1.1 qalqan",
    }
}

fn append_via(h: &mut HeaderMap, v: Version) {
    let me = via_of(v);
    // One lookup: most messages carry no Via yet.
    match h.entry(header::VIA) {
        header::Entry::Vacant(e) => {
            e.insert(HeaderValue::from_static(me));
        }
        header::Entry::Occupied(mut e) => {
            // Every earlier hop, in order, then this one, as one field.
            let mut joined = Vec::new();
            for prev in e.iter() {
                joined.extend_from_slice(prev.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(me.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                e.insert(v);
            }
        }
    }
}

/// Why an origin call produced no response.
enum OriginFail {
    /// Shield-side refusal (bad target, body too large).
    Refused(StatusCode),
    /// The route's gate was full.
    Shed,
    /// The mode became `under_attack` while the request waited in the route's queue, and the
    /// client has no clearance: it gets the challenge instead of the origin.
    Challenge,
    /// Connect error or reset.
    Down,
    /// No response headers in time.
    Timeout,
}

/// What a caller of [`call_origin`] does with the response.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    /// Passes it on unread: a response on the own client's path may keep its fields as received,
    /// outside its map (see `rawhead`).
    Pass,
    /// Reads its fields (a cache fill): they are all in its map.
    Read,
    /// Forwards a protocol upgrade (WebSocket).
    Upgrade,
}

/// A response from either of the upstream paths.
enum Answer {
    Own(crate::upstream::OwnResponse),
    Hyper(Response<crate::upstream::PooledBody>),
}

/// Calls the origin through the route's gate. The permit travels with the response body, so
/// the origin counts as busy for as long as it streams.
async fn call_origin(
    shared: &Shared,
    rt: &Runtime,
    conn: &ConnInfo,
    route: &RouteState,
    client: IpAddr,
    req: Request<Body>,
    how: Call,
) -> Result<Response<Body>, OriginFail> {
    let upgrade = how == Call::Upgrade;
    let (mut parts, body) = req.into_parts();
    let added =
        upstream_request(rt, conn, client, &mut parts, upgrade).map_err(OriginFail::Refused)?;
    let claim = parts.extensions.get::<Claim>().copied();
    let permit = match &route.gate {
        Some(g) => {
            let attack = claim
                .filter(|c| c.challengeable)
                .map(|_| (&shared.attack, &route.mode));
            // Boxed: only gated routes wait here, and the wait would otherwise size every
            // request's future.
            match Box::pin(g.enter(attack)).await {
                crate::gate::Entry::Go(p) => Some(p),
                crate::gate::Entry::Challenge => return Err(OriginFail::Challenge),
                crate::gate::Entry::Shed => {
                    // A full queue is the origin saying it cannot keep up: attack mode now,
                    // not after the next ticks.
                    shared.attack.overflow(crate::server::unix_ms());
                    return Err(OriginFail::Shed);
                }
            }
        }
        None => None,
    };
    route.origin_requests.fetch_add(1, Relaxed);
    let m = &shared.metrics;
    m.origin_in_flight.fetch_add(1, Relaxed);
    let t0 = Instant::now();
    let (up, authority) = (&shared.upstream, &rt.config.origin.authority);
    let timeout = rt.config.origin.response_timeout;
    // The own client's future is awaited here directly, not inside `Upstream::request`:
    // one async layer less to size and move with every request.
    let r = if !upgrade && crate::upstream::own_path(&parts.method, &parts.headers, &body) {
        drop(body);
        up.request_own(authority, &parts, &added, timeout)
            .await
            .map(Answer::Own)
    } else {
        let mut req = Request::from_parts(parts, body);
        added.insert_into(req.headers_mut());
        up.request_other(authority, req, upgrade, timeout)
            .await
            .map(Answer::Hyper)
    };
    m.origin_in_flight.fetch_sub(1, Relaxed);
    // The adaptive limit learns from every answer: its time when the origin answered, an
    // overload when it failed, timed out or said 503.
    let report = |ok: bool| {
        if let Some(p) = &permit {
            p.report(t0.elapsed(), ok);
        }
    };
    let resp = match r {
        Err(UpstreamError::Timeout) => {
            report(false);
            m.origin_error();
            return Err(OriginFail::Timeout);
        }
        Err(e) => {
            if body_too_large(&e) {
                return Err(OriginFail::Refused(StatusCode::PAYLOAD_TOO_LARGE));
            }
            report(false);
            tracing::debug!(error = %e, "origin request failed");
            m.origin_error();
            return Err(OriginFail::Down);
        }
        Ok(r) => r,
    };
    let status = match &resp {
        Answer::Own(o) => o.status,
        Answer::Hyper(r) => r.status(),
    };
    report(status != StatusCode::SERVICE_UNAVAILABLE);
    m.origin_latency(t0.elapsed());
    let resp = match resp {
        Answer::Own(o) => {
            let crate::upstream::OwnResponse {
                status,
                version,
                mut headers,
                mut origin,
            } = o;
            origin.body.set_guard(permit);
            if how == Call::Pass && !origin.head.is_empty() {
                // Passed on as received; this hop's entry joins them.
                origin.head.via = Some(via_of(Version::HTTP_11));
            } else {
                if !origin.head.is_empty() {
                    headers = origin.head.take_map();
                }
                strip_hop_by_hop(&mut headers, false);
                append_via(&mut headers, Version::HTTP_11);
            }
            let mut r = Response::new(Body::origin(origin));
            *r.status_mut() = status;
            *r.version_mut() = version;
            *r.headers_mut() = headers;
            return Ok(r);
        }
        Answer::Hyper(r) => r,
    };
    let (mut parts, body) = resp.into_parts();
    if parts.status != StatusCode::SWITCHING_PROTOCOLS {
        strip_hop_by_hop(&mut parts.headers, false);
    }
    append_via(&mut parts.headers, Version::HTTP_11);
    let body: Body = match permit {
        Some(p) => Body::boxed(Guarded::new(body, p)),
        None => Body::boxed(body),
    };
    Ok(Response::from_parts(parts, body))
}

fn body_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = c.source();
    }
    false
}

/// The client's body, capped at `max_body_bytes`.
fn limited_body(body: ReqBody, max: u64) -> Body {
    match body {
        // The shield's own reader's requests have none: nothing to limit, nothing to box.
        ReqBody::Empty => crate::body::empty(),
        body => Body::boxed(http_body_util::Limited::new(
            body,
            usize::try_from(max).unwrap_or(usize::MAX),
        )),
    }
}

/// Runs the shield's request-head handling (route class, cache key, client address, forwarding
/// headers) on a parsed head, without IO. For the `request_head` fuzz target; not an API.
#[doc(hidden)]
pub fn fuzz_request_head(rt: &Runtime, parts: &mut http::request::Parts, tls: bool) {
    let conn = ConnInfo::new(
        SocketAddr::from(([127, 0, 0, 1], 1)),
        true,
        AddrSource::Socket,
        tls,
    );
    let route = rt.classify(&parts.method, parts.uri.path(), parts.uri.query());
    let head = Request::from_parts(parts.clone(), ());
    let _ = cache_key_of(route, &head, tls);
    let upgrade = is_upgrade(&head);
    let _ = content_length(&parts.headers);
    let _ = has_credentials(&parts.headers);
    let mut values: Vec<&[u8]> = Vec::new();
    for v in parts.headers.get_all("x-forwarded-for").iter().take(8) {
        values.push(v.as_bytes());
    }
    let client = client_from_xff(conn.peer.ip(), &values, &rt.config.client.trusted_proxies).ip;
    if let Ok(added) = upstream_request(rt, &conn, client, parts, upgrade) {
        added.insert_into(&mut parts.headers);
    }
    let _ = crate::challenge::clearance(
        &rt.config,
        &parts.headers,
        &crate::challenge::binding(client, &parts.headers),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_names_are_found_by_their_length_first() {
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(n), Some(i), "{n}");
            assert!(is_hop_by_hop(n), "{n}");
        }
        assert!(is_hop_by_hop(&header::UPGRADE));
        for n in [
            header::HOST,
            header::USER_AGENT,
            header::REFERER,
            header::EXPIRES,
            header::CONTENT_LENGTH,
            header::VIA,
            HeaderName::from_static("keep-alivf"),
            HeaderName::from_static("x-connection"),
        ] {
            assert_eq!(hop_index(&n), None, "{n}");
            assert!(!is_hop_by_hop(&n), "{n}");
        }
    }

    #[test]
    fn the_peer_value_is_the_canonical_address() {
        let info = |peer: &str, trusted: bool, tls: bool| {
            ConnInfo::new(peer.parse().unwrap(), trusted, AddrSource::Socket, tls)
        };
        let v4 = info("10.1.2.3:5", false, false);
        assert_eq!(
            v4.peer_value.as_ref().map(|v| v.as_bytes()),
            Some(&b"10.1.2.3"[..])
        );
        // An IPv4 client on a dual-stack socket is named as IPv4, as everywhere else.
        let mapped = info("[::ffff:10.1.2.3]:5", false, false);
        assert_eq!(mapped.peer_value, v4.peer_value);
        let v6 = info("[2001:db8::1]:5", true, true);
        assert_eq!(
            v6.peer_value.as_ref().map(|v| v.as_bytes()),
            Some(&b"2001:db8::1"[..])
        );
    }
}
