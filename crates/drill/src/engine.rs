//! The drill's engine: browser-like readers for the whole run and, in the attack phase, the
//! scenario's attackers (fixed-rate floods and slowloris connections).
//!
//! The run has three phases: warm-up (readers only, not measured, so caches fill and the
//! shield's detector learns what normal looks like), baseline (readers only, measured) and
//! attack (readers plus attackers, measured). Everything is recorded per second of the run and
//! returned as one [`RunResult`]; each finished second is also sent to an optional progress
//! channel (the demo's live view).
//!
//! Bounds: the target must be on loopback ([`crate::http::loopback_base`]); the run ends after
//! its phases whatever happens (every request has a timeout); at most `run.max_requests`
//! requests are sent; flood concurrency and slow connections are capped by the scenario's
//! checked limits.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http::{StatusCode, header};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::http::{self as h, Client, Jar};
use crate::origin::{Class, Stats};
use crate::rng::{Rng, Zipf};
use crate::scenario::{AttackKind, Attackers, Readers, Scenario, Source};

/// The Kursiv-shaped settings of a run (first reader population, first flood), kept for the
/// benchmark's report.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Settings {
    pub readers: u32,
    pub reader_rate: f64,
    pub search_share: f64,
    pub articles: u32,
    pub flood_rate: f64,
    pub flood_addresses: u32,
    pub solver_addresses: u32,
    pub flood_concurrency: usize,
    pub warmup: u64,
    pub baseline: u64,
    pub attack: u64,
    pub timeout: u64,
    pub seed: u64,
}

/// One second of the run.
#[derive(Serialize, Deserialize, Default, Clone, Debug)]
pub struct Second {
    /// Attack requests sent in this second, and what became of them.
    pub flood_sent: u64,
    pub flood_ok: u64,
    pub flood_challenged: u64,
    pub flood_solved: u64,
    pub flood_limited: u64,
    pub flood_blocked: u64,
    pub flood_unavailable: u64,
    pub flood_other: u64,
    pub flood_errors: u64,
    /// Attack requests not sent because the concurrency cap or the request budget was reached.
    pub flood_skipped: u64,
    /// Requests that reached the origin during this second, by class.
    pub origin_article: u64,
    pub origin_search: u64,
    pub origin_other: u64,
    /// Pages the origin's workers built during this second.
    pub origin_served: u64,
    /// The shield's mode at the end of the second ("" when not known).
    pub mode: String,
    /// The shield's decisions during this second (from its `/metrics`), when known.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub decisions: BTreeMap<String, u64>,
    /// Slow connections open at the end of the second, and closed by the target during it.
    #[serde(default)]
    pub slow_open: u64,
    #[serde(default)]
    pub slow_closed: u64,
}

/// One reader page view.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct View {
    /// Start, in milliseconds since the run began.
    pub t_ms: u64,
    pub search: bool,
    pub ok: bool,
    /// Wall time until the page was there (or the view failed), challenge included.
    pub ms: f64,
    /// "200", a status code, "timeout", "error", …
    pub outcome: String,
    pub challenged: bool,
    /// Time spent finding the proof of work.
    pub solve_ms: f64,
}

/// A change of the shield's mode, from its admin `/mode`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ModeChange {
    /// Milliseconds since the run began (negative if before).
    pub at_ms: i64,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// Requests the generator sent, by the origin's classes (see [`Class`]). Slow connections never
/// finish a request and are counted apart ([`SlowOutcome`]), though they spend the budget.
#[derive(Serialize, Deserialize, Default, Clone, Copy, Debug, PartialEq)]
pub struct Sent {
    pub article: u64,
    pub search: u64,
    pub admin: u64,
    pub other: u64,
}

impl Sent {
    pub fn total(&self) -> u64 {
        self.article + self.search + self.admin + self.other
    }
}

/// What became of one slow-connection population.
#[derive(Serialize, Deserialize, Default, Clone, Copy, Debug, PartialEq)]
pub struct SlowOutcome {
    /// Connections the target accepted.
    pub opened: u64,
    /// Connections the target refused or that could not be made.
    pub refused: u64,
    /// Connections the target closed before the attack ended (its header timeout, a cap).
    pub closed_by_target: u64,
    /// Connections still open when the attack ended.
    pub held_to_end: u64,
    /// Mean seconds an accepted connection stayed open before the target closed it.
    pub mean_open_s: f64,
}

/// Everything one run measured.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RunResult {
    pub peer: String,
    pub settings: Settings,
    #[serde(default)]
    pub scenario: Option<Scenario>,
    pub started_unix_ms: u64,
    pub seconds: Vec<Second>,
    pub views: Vec<View>,
    pub transitions: Vec<ModeChange>,
    /// The origin's counters at the end of the run (zero when not known).
    pub origin_total: Stats,
    /// Whether `origin_total` was read from the origin.
    #[serde(default)]
    pub origin_known: bool,
    /// Requests the generator sent, by class.
    #[serde(default)]
    pub sent: Sent,
    /// Slow-connection outcomes by population name.
    #[serde(default)]
    pub slow: BTreeMap<String, SlowOutcome>,
    /// Selected lines of the shield's `/metrics` at the end of the run.
    pub shield_metrics: Vec<String>,
    /// The shield's `/mode` at the end of the run.
    pub shield_mode: String,
    /// Whether the run was stopped before its end.
    #[serde(default)]
    pub interrupted: bool,
}

/// One finished second, for a live view.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Second of the run (0-based) and its phase: "warmup", "baseline" or "attack".
    pub second: u64,
    pub phase: &'static str,
    pub total_seconds: u64,
    pub data: Second,
    /// Reader views that finished during this second, how many succeeded, and their median
    /// and 95th-percentile wall times.
    pub reader_views: u64,
    pub reader_ok: u64,
    pub reader_p50_ms: Option<f64>,
    pub reader_p95_ms: Option<f64>,
}

/// Where to send the load, and what else to watch.
#[derive(Default)]
pub struct Options {
    /// The peer's name in the result.
    pub peer: String,
    /// The sample origin's base URL, for its `/__stats` counters (loopback only).
    pub origin: Option<String>,
    /// The shield's admin listener, for `/mode` and `/metrics` (loopback only).
    pub admin: Option<String>,
    /// Finished seconds are sent here (dropped when the receiver is slow).
    pub progress: Option<mpsc::Sender<Progress>>,
    /// Set to true to end the run early (Ctrl-C).
    pub stop: Option<watch::Receiver<bool>>,
}

/// Views kept at most.
const MAX_VIEWS: usize = 1_000_000;
/// Redirects and challenge rounds one page view may take, as a browser's loop limit.
const MAX_STEPS: usize = 6;

const READER_UAS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; SM-A546B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
];

/// Floods copy browsers' user agents too; filtering on them would not help.
const BOT_UAS: [&str; 3] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15",
];

/// What readers search for when the scenario names nothing (Zipf over this list).
pub const READER_QUERIES: [&str; 24] = [
    "курс тенге",
    "нефть",
    "Нацбанк базовая ставка",
    "инфляция",
    "выборы",
    "Астана",
    "Алматы",
    "бюджет 2025",
    "KASE",
    "Самрук-Казына",
    "налоги",
    "ипотека",
    "теңге",
    "Kaspi",
    "Halyk",
    "зарплата",
    "пенсия",
    "ЕНПФ",
    "газ",
    "электроэнергия",
    "аренда жилья",
    "цены на бензин",
    "IPO",
    "Kazatomprom",
];

struct Recorder {
    seconds: Vec<Second>,
    views: Vec<View>,
}

impl Recorder {
    fn second(&mut self, i: usize) -> &mut Second {
        let last = self.seconds.len().saturating_sub(1);
        &mut self.seconds[i.min(last)]
    }
}

type Rec = Arc<Mutex<Recorder>>;

fn with<R>(rec: &Rec, f: impl FnOnce(&mut Recorder) -> R) -> Option<R> {
    rec.lock().ok().map(|mut g| f(&mut g))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What every request of the run shares: the target, the source mode, the request budget and
/// the count of what was sent.
struct Shared {
    base: String,
    source: Source,
    budget: AtomicU64,
    sent: [AtomicU64; 4],
    rec: Rec,
    start: Instant,
    end: Instant,
    stop: watch::Receiver<bool>,
}

/// The client's address as the target should see it.
#[derive(Clone, Copy)]
struct Who {
    /// Named in `X-Forwarded-For` (source = forwarded).
    public: Ipv4Addr,
    /// Bound as the socket's local address (source = addresses).
    local: Ipv4Addr,
}

impl Shared {
    fn stopped(&self) -> bool {
        *self.stop.borrow() || Instant::now() >= self.end
    }

    /// Takes one request from the budget; false when it is spent.
    fn take(&self) -> bool {
        self.budget
            .fetch_update(Relaxed, Relaxed, |b| b.checked_sub(1))
            .is_ok()
    }

    /// One GET as `who`, counted by class. `None` when the budget is spent.
    async fn get(
        &self,
        client: &Client,
        path: &str,
        who: Who,
        ua: &str,
        cookie: Option<&str>,
    ) -> Option<anyhow::Result<h::Answer>> {
        if !self.take() {
            return None;
        }
        let p = path.split('?').next().unwrap_or(path);
        let i = match Class::of(p) {
            Class::Article => 0,
            Class::Search => 1,
            Class::Admin => 2,
            Class::Other => 3,
        };
        self.sent[i].fetch_add(1, Relaxed);
        let xff = match self.source {
            Source::Forwarded => Some(who.public.to_string()),
            Source::Addresses => None,
        };
        Some(h::get_as(client, &self.base, path, xff.as_deref(), ua, cookie).await)
    }

    /// A client whose connections come from `who` (a pooled one in forwarded mode).
    fn client_for(&self, pooled: &Client, who: Who, idle: usize) -> Client {
        match self.source {
            Source::Forwarded => pooled.clone(),
            Source::Addresses => h::client_bound(IpAddr::V4(who.local), idle),
        }
    }
}

/// Runs a scenario against `target` and returns what it measured.
pub async fn run(sc: &Scenario, target: &str, opts: Options) -> anyhow::Result<RunResult> {
    sc.check().map_err(|e| anyhow::anyhow!("{e}"))?;
    let base = h::loopback_base(target)?;
    let origin = opts.origin.as_deref().map(h::loopback_base).transpose()?;
    let admin = opts.admin.as_deref().map(h::loopback_base).transpose()?;
    let r = &sc.run;
    let total = sc.seconds();
    let rec: Rec = Arc::new(Mutex::new(Recorder {
        seconds: vec![Second::default(); total as usize],
        views: Vec::new(),
    }));
    let start = Instant::now();
    let started_unix_ms = unix_ms();
    let end = start + Duration::from_secs(total);
    let attack_at = start + Duration::from_secs(r.warmup + r.baseline);
    // Without a caller's stop signal the run makes its own and keeps the sender until it ends:
    // a dropped sender would make every `changed()` return at once, and the readers and
    // floods would no longer wait for their times.
    let (_keep_stop, own_stop) = watch::channel(false);
    let stop = opts.stop.clone().unwrap_or(own_stop);
    let shared = Arc::new(Shared {
        base,
        source: r.source,
        budget: AtomicU64::new(r.max_requests),
        sent: Default::default(),
        rec: rec.clone(),
        start,
        end,
        stop: stop.clone(),
    });
    let slow_open = Arc::new(AtomicU64::new(0));

    let sampler = tokio::spawn(sampler(Sampler {
        origin: origin.clone(),
        admin: admin.clone(),
        rec: rec.clone(),
        start,
        started_unix_ms,
        total,
        warmup: r.warmup,
        attack_from: r.warmup + r.baseline,
        progress: opts.progress.clone(),
        slow_open: slow_open.clone(),
        stop: stop.clone(),
    }));

    let pooled = h::client(1024);
    let mut tasks = JoinSet::new();
    let mut next_id = 0u32;
    for (pi, pop) in sc.readers.iter().enumerate() {
        let queries: Arc<Vec<String>> = Arc::new(if pop.queries.is_empty() {
            READER_QUERIES.iter().map(|s| s.to_string()).collect()
        } else {
            pop.queries.clone()
        });
        let popular = Arc::new(Zipf::new(pop.articles as usize));
        let qz = Arc::new(Zipf::new(queries.len()));
        for _ in 0..pop.count {
            let id = next_id;
            next_id += 1;
            let who = reader_addr(id);
            tasks.spawn(reader(Reader {
                id,
                pop: pi as u64,
                client: shared.client_for(&pooled, who, 2),
                who,
                shared: shared.clone(),
                cfg: pop.clone(),
                mean_gap: f64::from(pop.count) / pop.rate,
                popular: popular.clone(),
                queries: queries.clone(),
                qz: qz.clone(),
                timeout: Duration::from_secs(r.timeout),
                seed: r.seed,
            }));
        }
    }
    let mut slow_results = Vec::new();
    for (ai, a) in sc.attackers.iter().enumerate() {
        match a.kind {
            AttackKind::Flood => {
                tasks.spawn(flood(Flood {
                    client: h::client(a.concurrency as usize),
                    shared: shared.clone(),
                    attack_at,
                    cfg: a.clone(),
                    index: ai as u32,
                    timeout: Duration::from_secs(r.timeout),
                    seed: r.seed ^ (ai as u64).wrapping_mul(0x9E37),
                }));
            }
            AttackKind::Slow => {
                let out = Arc::new(Mutex::new(SlowTally::default()));
                slow_results.push((a.name.clone(), out.clone()));
                tasks.spawn(slow(
                    shared.clone(),
                    attack_at,
                    a.clone(),
                    ai as u32,
                    out,
                    slow_open.clone(),
                ));
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let interrupted = *stop.borrow() && Instant::now() < end;
    let transitions = sampler.await.unwrap_or_default();

    let mon = h::client(2);
    let (origin_total, origin_known) = match &origin {
        Some(o) => match fetch_stats(&mon, o).await {
            Ok(s) => (s, true),
            Err(_) => (Stats::default(), false),
        },
        None => (Stats::default(), false),
    };
    let (shield_metrics, shield_mode) = match &admin {
        Some(adm) => (
            shield_metrics(&mon, adm).await.unwrap_or_default(),
            fetch_text(&mon, adm, "/mode").await.unwrap_or_default(),
        ),
        None => (Vec::new(), String::new()),
    };
    let sent = Sent {
        article: shared.sent[0].load(Relaxed),
        search: shared.sent[1].load(Relaxed),
        admin: shared.sent[2].load(Relaxed),
        other: shared.sent[3].load(Relaxed),
    };
    drop(shared);
    let Recorder { seconds, views } = Arc::try_unwrap(rec)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .context("the recorder is still in use after the run")?;
    let slow = slow_results
        .into_iter()
        .map(|(n, t)| {
            let t = t.lock().map(|g| g.clone()).unwrap_or_default();
            (n, t.outcome())
        })
        .collect();
    let rd = sc.readers.first();
    let fl = sc.attackers.iter().find(|a| a.kind == AttackKind::Flood);
    Ok(RunResult {
        peer: opts.peer.clone(),
        settings: Settings {
            readers: sc.readers.iter().map(|x| x.count).sum(),
            reader_rate: sc.readers.iter().map(|x| x.rate).sum(),
            search_share: rd.map_or(0.0, |x| x.search_share),
            articles: rd.map_or(0, |x| x.articles),
            flood_rate: fl.map_or(0.0, |a| a.rate),
            flood_addresses: fl.map_or(0, |a| a.addresses),
            solver_addresses: fl.map_or(0, |a| a.solving_addresses),
            flood_concurrency: fl.map_or(0, |a| a.concurrency as usize),
            warmup: r.warmup,
            baseline: r.baseline,
            attack: r.attack,
            timeout: r.timeout,
            seed: r.seed,
        },
        scenario: Some(sc.clone()),
        started_unix_ms,
        seconds,
        views,
        transitions,
        origin_total,
        origin_known,
        sent,
        slow,
        shield_metrics,
        shield_mode,
        interrupted,
    })
}

// ---------------------------------------------------------------------------------------------
// Readers.

struct Reader {
    id: u32,
    pop: u64,
    client: Client,
    who: Who,
    shared: Arc<Shared>,
    cfg: Readers,
    /// Mean seconds between two views of this reader.
    mean_gap: f64,
    popular: Arc<Zipf>,
    queries: Arc<Vec<String>>,
    qz: Arc<Zipf>,
    timeout: Duration,
    seed: u64,
}

/// Reader `id`'s address: each reader in its own /24 (of a Kazakh access network when named in
/// X-Forwarded-For; of 127.16.0.0/12 when bound).
fn reader_addr(id: u32) -> Who {
    Who {
        public: Ipv4Addr::new(
            95,
            (56 + id / 256) as u8,
            (id % 256) as u8,
            (1 + id % 200) as u8,
        ),
        local: Ipv4Addr::new(127, (16 + id / 256) as u8, (id % 256) as u8, 1),
    }
}

/// A query as a search form sends it (`application/x-www-form-urlencoded`).
fn form_encode(q: &str) -> String {
    h::encode_uri_component(q).replace("%20", "+")
}

async fn reader(r: Reader) {
    let mut rng = Rng::new(r.seed.wrapping_mul(1_000_003) ^ u64::from(r.id) ^ (r.pop << 40));
    let ua = READER_UAS[r.id as usize % READER_UAS.len()];
    let mut jar = Jar::default();
    let s = &r.shared;
    let mut stop = s.stop.clone();
    // The first view, like every later one, comes after an exponential gap: the readers
    // together are then a steady Poisson stream from the first second, not a wave.
    let mut next = s.start + Duration::from_secs_f64(rng.exp(r.mean_gap));
    loop {
        // A reader whose next view falls after the end stops at the end, not at the view.
        tokio::select! {
            _ = tokio::time::sleep_until(next.min(s.end).into()) => {}
            _ = stop.changed() => {}
        }
        if s.stopped() {
            return;
        }
        let search = rng.unit() < r.cfg.search_share;
        let path = if search {
            let q = &r.queries[r.qz.sample(&mut rng)];
            format!("/search?q={}", form_encode(q))
        } else {
            format!("/article/{}", r.popular.sample(&mut rng) + 1)
        };
        if !r.cfg.cookies {
            jar = Jar::default();
        }
        let t0 = Instant::now();
        let t_ms = (t0 - s.start).as_millis() as u64;
        let v = tokio::time::timeout(r.timeout, view(&r, &path, ua, &mut jar, search))
            .await
            .unwrap_or(ViewOutcome {
                ok: false,
                outcome: "timeout".into(),
                challenged: false,
                solve_ms: 0.0,
            });
        if v.outcome == "budget" {
            return;
        }
        let rec = View {
            t_ms,
            search,
            ok: v.ok,
            ms: t0.elapsed().as_secs_f64() * 1000.0,
            outcome: v.outcome,
            challenged: v.challenged,
            solve_ms: v.solve_ms,
        };
        with(&s.rec, |g| {
            if g.views.len() < MAX_VIEWS {
                g.views.push(rec);
            }
        });
        // Poisson arrivals: the next view is planned from this one's start, not its end.
        next += Duration::from_secs_f64(rng.exp(r.mean_gap));
        next = next.max(Instant::now());
    }
}

struct ViewOutcome {
    ok: bool,
    outcome: String,
    challenged: bool,
    solve_ms: f64,
}

/// One page view as a browser makes it: follows redirects, keeps cookies, and when the shield
/// answers with its challenge page, solves it the way the page's script does and follows the
/// verify link to the clearance cookie and back to the page.
async fn view(r: &Reader, path: &str, ua: &str, jar: &mut Jar, search: bool) -> ViewOutcome {
    let marker: &[u8] = if search {
        b"<ol class=\"results\">"
    } else {
        b"<article id="
    };
    let mut url = path.to_string();
    let mut challenged = false;
    let mut solve_ms = 0.0;
    let fail = |outcome: &str, challenged: bool, solve_ms: f64| ViewOutcome {
        ok: false,
        outcome: outcome.to_string(),
        challenged,
        solve_ms,
    };
    for _ in 0..MAX_STEPS {
        let cookie = jar.header();
        let ans = match r
            .shared
            .get(&r.client, &url, r.who, ua, cookie.as_deref())
            .await
        {
            None => return fail("budget", challenged, solve_ms),
            Some(Ok(a)) => a,
            Some(Err(_)) => return fail("error", challenged, solve_ms),
        };
        jar.absorb(&ans.headers);
        if ans.status.is_redirection() {
            // Only same-site redirects are followed: the drill never leaves the target.
            match ans
                .headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
            {
                Some(l) if l.starts_with('/') && !l.starts_with("//") => {
                    url = l.to_string();
                    continue;
                }
                _ => return fail("bad redirect", challenged, solve_ms),
            }
        }
        if ans.status == StatusCode::OK {
            let found = ans.body.windows(marker.len()).any(|w| w == marker);
            let outcome = if found { "200" } else { "200 without the page" };
            return ViewOutcome {
                ok: found,
                outcome: outcome.into(),
                challenged,
                solve_ms,
            };
        }
        if h::is_challenge(&ans) {
            if challenged {
                return fail("challenged again", true, solve_ms);
            }
            challenged = true;
            if !r.cfg.solve_challenges {
                return fail("challenged", true, solve_ms);
            }
            let Ok(ch) = h::parse_challenge(&ans.body) else {
                return fail("unreadable challenge", true, solve_ms);
            };
            let t = Instant::now();
            let next = h::solve(ch).await;
            solve_ms = t.elapsed().as_secs_f64() * 1000.0;
            match next {
                Ok(Some(n)) => url = n,
                _ => return fail("unsolved challenge", true, solve_ms),
            }
            continue;
        }
        return fail(ans.status.as_str(), challenged, solve_ms);
    }
    fail("too many steps", challenged, solve_ms)
}

// ---------------------------------------------------------------------------------------------
// Floods.

struct Flood {
    client: Client,
    shared: Arc<Shared>,
    attack_at: Instant,
    cfg: Attackers,
    index: u32,
    timeout: Duration,
    seed: u64,
}

/// Flood address `k` of population `pop`, in its own networks or the readers' (see
/// [`crate::scenario::Networks`]).
fn attacker_addr(pop: u32, k: u32, networks: crate::scenario::Networks) -> Who {
    match networks {
        crate::scenario::Networks::Own => flood_addr(pop, k),
        crate::scenario::Networks::Readers => {
            // Readers use host numbers 1–200 of 95.56.x.0/24; attackers take 201–250.
            let kk = k % 12_800;
            let (c, d) = ((kk % 256) as u8, (201 + kk / 256) as u8);
            Who {
                public: Ipv4Addr::new(95, 56, c, d),
                local: Ipv4Addr::new(127, 16, c, d),
            }
        }
    }
}

/// Flood address `k` of population `pop`: each in its own /24, in public ranges far from the
/// readers' (20.x–79.x) when named in X-Forwarded-For; in 127.64.0.0/10 when bound.
fn flood_addr(pop: u32, k: u32) -> Who {
    let kk = u64::from(k) + u64::from(pop) * 3_000_000;
    Who {
        public: Ipv4Addr::new(
            (20 + (kk / 65_536) % 60) as u8,
            ((kk / 256) % 256) as u8,
            (kk % 256) as u8,
            (1 + (kk * 7) % 250) as u8,
        ),
        local: Ipv4Addr::new(
            127,
            (64 + (kk / 65_536) % 128) as u8,
            ((kk / 256) % 256) as u8,
            (kk % 256) as u8,
        ),
    }
}

/// A fixed query (with the configured share) or two random words no cache can answer.
fn flood_query(rng: &mut Rng, a: &Attackers) -> String {
    if !a.fixed_queries.is_empty() && rng.unit() < a.fixed_share {
        let q = &a.fixed_queries[rng.below(a.fixed_queries.len() as u64) as usize];
        return form_encode(q);
    }
    let mut q = String::new();
    for w in 0..2 {
        if w > 0 {
            q.push('+');
        }
        for _ in 0..4 + rng.below(6) {
            q.push((b'a' + rng.below(26) as u8) as char);
        }
    }
    q
}

fn flood_path(rng: &mut Rng, a: &Attackers) -> String {
    if a.param.is_empty() {
        a.path.clone()
    } else {
        format!("{}?{}={}", a.path, a.param, flood_query(rng, a))
    }
}

/// Sends `rate` requests a second from `attack_at` to the end, each from a random address of
/// the population, never more than `concurrency` at once.
async fn flood(f: Flood) {
    let mut stop = f.shared.stop.clone();
    tokio::select! {
        _ = tokio::time::sleep_until(f.attack_at.into()) => {}
        _ = stop.changed() => {}
    }
    let f = Arc::new(f);
    let mut rng = Rng::new(f.seed ^ 0xF100D);
    let slots = Arc::new(Semaphore::new(f.cfg.concurrency as usize));
    // The headless farm's solving power on this machine: one challenge at a time. Without a
    // bound, every request of a solving address that arrives before its cookie would queue
    // another solve, and the farm would take the CPU from the peer under test and from the
    // readers' own solving. A request that finds the solver busy gives up (counted as
    // challenged), as a bot with a deadline would.
    let farm = Arc::new(Semaphore::new(1));
    // Clearance cookies of the solving addresses (a headless browser keeps its cookies).
    let jars: Arc<Vec<Mutex<Jar>>> = Arc::new(
        (0..f.cfg.solving_addresses)
            .map(|_| Mutex::new(Jar::default()))
            .collect(),
    );
    let everyone = f.cfg.addresses + f.cfg.solving_addresses;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let began = Instant::now();
    let mut sent: u64 = 0;
    let mut tasks = JoinSet::new();
    loop {
        tick.tick().await;
        let now = Instant::now();
        if f.shared.stopped() {
            break;
        }
        // However late this tick is, send what is due by now: the rate does not sag when the
        // generator is descheduled for a moment.
        let due = (now - began).as_secs_f64() * f.cfg.rate;
        let sec = (now - f.shared.start).as_secs() as usize;
        while (sent as f64) < due {
            sent += 1;
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                with(&f.shared.rec, |g| g.second(sec).flood_skipped += 1);
                continue;
            };
            let k = rng.below(u64::from(everyone)) as u32;
            let path = flood_path(&mut rng, &f.cfg);
            let f2 = f.clone();
            let jars = jars.clone();
            let farm = farm.clone();
            tasks.spawn(async move {
                let solver = k.checked_sub(f2.cfg.addresses).map(|i| i as usize);
                let outcome = tokio::time::timeout(
                    f2.timeout,
                    flood_one(&f2, k, &path, solver, &jars, &farm),
                )
                .await
                .unwrap_or(FloodOutcome::Error);
                with(&f2.shared.rec, |g| {
                    let s = g.second(sec);
                    if matches!(outcome, FloodOutcome::Budget) {
                        s.flood_skipped += 1;
                        return;
                    }
                    s.flood_sent += 1;
                    match outcome {
                        FloodOutcome::Ok { solved } => {
                            s.flood_ok += 1;
                            s.flood_solved += u64::from(solved);
                        }
                        FloodOutcome::Challenged => s.flood_challenged += 1,
                        FloodOutcome::Limited => s.flood_limited += 1,
                        FloodOutcome::Blocked => s.flood_blocked += 1,
                        FloodOutcome::Unavailable => s.flood_unavailable += 1,
                        FloodOutcome::Other => s.flood_other += 1,
                        FloodOutcome::Error => s.flood_errors += 1,
                        FloodOutcome::Budget => {}
                    }
                });
                drop(slot);
            });
        }
        // Reap finished requests so the set stays as small as the concurrency cap.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

enum FloodOutcome {
    Ok { solved: bool },
    Challenged,
    Limited,
    Blocked,
    Unavailable,
    Other,
    Error,
    Budget,
}

fn classify(a: &h::Answer) -> FloodOutcome {
    match a.status.as_u16() {
        200..=299 => FloodOutcome::Ok { solved: false },
        403 if h::is_challenge(a) => FloodOutcome::Challenged,
        403 => FloodOutcome::Blocked,
        429 => FloodOutcome::Limited,
        502..=504 => FloodOutcome::Unavailable,
        _ => FloodOutcome::Other,
    }
}

async fn flood_one(
    f: &Flood,
    k: u32,
    path: &str,
    solver: Option<usize>,
    jars: &[Mutex<Jar>],
    farm: &Semaphore,
) -> FloodOutcome {
    let who = attacker_addr(f.index, k, f.cfg.networks);
    let ua = BOT_UAS[k as usize % BOT_UAS.len()];
    let client = f.shared.client_for(&f.client, who, 0);
    let s = &f.shared;
    let jar = solver.and_then(|i| jars.get(i));
    let cookie = jar.and_then(|j| j.lock().ok().and_then(|g| g.header()));
    let ans = match s.get(&client, path, who, ua, cookie.as_deref()).await {
        None => return FloodOutcome::Budget,
        Some(Ok(a)) => a,
        Some(Err(_)) => return FloodOutcome::Error,
    };
    let Some(jar) = jar else {
        return classify(&ans);
    };
    if !h::is_challenge(&ans) {
        return classify(&ans);
    }
    // A headless browser: solve, collect the clearance, load the page again.
    let Ok(ch) = h::parse_challenge(&ans.body) else {
        return FloodOutcome::Challenged;
    };
    let Ok(busy) = farm.try_acquire() else {
        return FloodOutcome::Challenged;
    };
    let solved = h::solve(ch).await;
    drop(busy);
    let Ok(Some(verify)) = solved else {
        return FloodOutcome::Challenged;
    };
    let v = match s.get(&client, &verify, who, ua, None).await {
        None => return FloodOutcome::Budget,
        Some(Ok(v)) => v,
        Some(Err(_)) => return FloodOutcome::Error,
    };
    let mut fresh = Jar::default();
    fresh.absorb(&v.headers);
    if !fresh.has("qalqan_clearance") {
        return classify(&v);
    }
    let cookie = fresh.header();
    if let Ok(mut g) = jar.lock() {
        *g = fresh;
    }
    match s.get(&client, path, who, ua, cookie.as_deref()).await {
        None => FloodOutcome::Budget,
        Some(Ok(again)) => match classify(&again) {
            FloodOutcome::Ok { .. } => FloodOutcome::Ok { solved: true },
            other => other,
        },
        Some(Err(_)) => FloodOutcome::Error,
    }
}

// ---------------------------------------------------------------------------------------------
// Slow connections (slowloris).

#[derive(Default, Clone)]
struct SlowTally {
    opened: u64,
    refused: u64,
    closed: u64,
    held: u64,
    open_s_sum: f64,
}

impl SlowTally {
    fn outcome(&self) -> SlowOutcome {
        SlowOutcome {
            opened: self.opened,
            refused: self.refused,
            closed_by_target: self.closed,
            held_to_end: self.held,
            mean_open_s: if self.closed > 0 {
                self.open_s_sum / self.closed as f64
            } else {
                0.0
            },
        }
    }
}

/// Opens the population's connections over the first two seconds of the attack; each sends a
/// request line and then one header line every `interval`, never the blank line that ends the
/// head, until the target closes it or the attack ends.
async fn slow(
    s: Arc<Shared>,
    attack_at: Instant,
    a: Attackers,
    index: u32,
    tally: Arc<Mutex<SlowTally>>,
    open_now: Arc<AtomicU64>,
) {
    let mut stop = s.stop.clone();
    tokio::select! {
        _ = tokio::time::sleep_until(attack_at.into()) => {}
        _ = stop.changed() => {}
    }
    let Some(addr) = target_addr(&s.base) else {
        return;
    };
    let host = s.base.trim_start_matches("http://").to_string();
    let spread = Duration::from_secs(2).as_secs_f64() / f64::from(a.connections.max(1));
    let mut tasks = JoinSet::new();
    for c in 0..a.connections {
        if s.stopped() {
            break;
        }
        if !s.take() {
            break;
        }
        let who = attacker_addr(index, c % a.addresses, a.networks);
        let (s2, tally, open_now, host) =
            (s.clone(), tally.clone(), open_now.clone(), host.clone());
        let interval = Duration::from_secs(a.interval);
        tasks.spawn(async move {
            slow_one(&s2, addr, &host, who, interval, &tally, &open_now).await;
        });
        tokio::time::sleep(Duration::from_secs_f64(spread)).await;
    }
    while tasks.join_next().await.is_some() {}
}

fn target_addr(base: &str) -> Option<std::net::SocketAddr> {
    let hp = base.trim_start_matches("http://");
    let hp = hp.replace("localhost", "127.0.0.1");
    if let Ok(a) = hp.parse() {
        return Some(a);
    }
    format!("{hp}:80").parse().ok()
}

async fn slow_one(
    s: &Shared,
    addr: std::net::SocketAddr,
    host: &str,
    who: Who,
    interval: Duration,
    tally: &Mutex<SlowTally>,
    open_now: &AtomicU64,
) {
    let sock = match (s.source, addr) {
        (Source::Addresses, std::net::SocketAddr::V4(_)) => tokio::net::TcpSocket::new_v4()
            .and_then(|t| {
                t.bind(std::net::SocketAddr::new(IpAddr::V4(who.local), 0))
                    .map(|()| t)
            }),
        (_, std::net::SocketAddr::V4(_)) => tokio::net::TcpSocket::new_v4(),
        (_, std::net::SocketAddr::V6(_)) => tokio::net::TcpSocket::new_v6(),
    };
    let conn = match sock {
        Ok(t) => tokio::time::timeout(Duration::from_secs(3), t.connect(addr)).await,
        Err(_) => {
            if let Ok(mut g) = tally.lock() {
                g.refused += 1;
            }
            return;
        }
    };
    let Ok(Ok(mut stream)) = conn else {
        if let Ok(mut g) = tally.lock() {
            g.refused += 1;
        }
        return;
    };
    if let Ok(mut g) = tally.lock() {
        g.opened += 1;
    }
    open_now.fetch_add(1, Relaxed);
    let opened = Instant::now();
    let mut head = format!("GET /article/1 HTTP/1.1\r\nHost: {host}\r\n");
    if s.source == Source::Forwarded {
        head.push_str(&format!("X-Forwarded-For: {}\r\n", who.public));
    }
    let mut closed = stream.write_all(head.as_bytes()).await.is_err();
    let mut buf = [0u8; 512];
    let mut stop = s.stop.clone();
    let mut n = 0u64;
    while !closed && !s.stopped() {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {
                n += 1;
                let line = format!("X-Slow-{n}: {n}\r\n");
                closed = stream.write_all(line.as_bytes()).await.is_err();
            }
            _ = stream.read(&mut buf) => {
                // The target answered (408, 400) or closed: either way it let go.
                closed = true;
            }
            _ = tokio::time::sleep_until(s.end.into()) => break,
            _ = stop.changed() => break,
        }
    }
    open_now.fetch_sub(1, Relaxed);
    let sec = (Instant::now() - s.start).as_secs() as usize;
    if let Ok(mut g) = tally.lock() {
        if closed {
            g.closed += 1;
            g.open_s_sum += opened.elapsed().as_secs_f64();
        } else {
            g.held += 1;
        }
    }
    if closed {
        with(&s.rec, |g| g.second(sec).slow_closed += 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Sampling the origin's counters, the shield's mode and its decisions.

async fn fetch_text(client: &Client, base: &str, path: &str) -> anyhow::Result<String> {
    let a = tokio::time::timeout(
        Duration::from_secs(2),
        h::get_as(client, base, path, None, "qalqan-drill-sampler", None),
    )
    .await
    .context("timed out")??;
    if a.status != StatusCode::OK {
        bail!("{path}: status {}", a.status);
    }
    Ok(String::from_utf8_lossy(&a.body).into_owned())
}

async fn fetch_stats(client: &Client, origin: &str) -> anyhow::Result<Stats> {
    Ok(serde_json::from_str(
        &fetch_text(client, origin, "/__stats").await?,
    )?)
}

/// The shield's counters worth keeping in the report.
async fn shield_metrics(client: &Client, admin: &str) -> anyhow::Result<Vec<String>> {
    const KEEP: [&str; 10] = [
        "qalqan_shield_requests_total",
        "qalqan_shield_newcomer_paced_total",
        "qalqan_shield_newcomer_rate",
        "qalqan_shield_familiar_networks",
        "qalqan_shield_route_requests_total",
        "qalqan_shield_challenge_total",
        "qalqan_shield_origin_errors_total",
        "qalqan_shield_blocked_clients",
        "qalqan_shield_cache_entries",
        "qalqan_shield_connections_dropped_total",
    ];
    let text = fetch_text(client, admin, "/metrics").await?;
    Ok(text
        .lines()
        .filter(|l| KEEP.iter().any(|k| l.starts_with(k)))
        .take(200)
        .map(str::to_string)
        .collect())
}

/// `qalqan_shield_requests_total{decision="X"} N` lines, as a map.
pub fn decisions(metrics: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in metrics.lines() {
        let Some(rest) = l.strip_prefix("qalqan_shield_requests_total{decision=\"") else {
            continue;
        };
        let Some((name, tail)) = rest.split_once("\"}") else {
            continue;
        };
        if let Ok(n) = tail.trim().parse::<u64>()
            && m.len() < 32
        {
            m.insert(name.to_string(), n);
        }
    }
    m
}

#[derive(Deserialize)]
struct ModeDoc {
    mode: String,
    last_transition: Option<TransitionDoc>,
}

#[derive(Deserialize)]
struct TransitionDoc {
    at_ms: u64,
    from: String,
    to: String,
    reason: serde_json::Value,
}

struct Sampler {
    origin: Option<String>,
    admin: Option<String>,
    rec: Rec,
    start: Instant,
    started_unix_ms: u64,
    total: u64,
    warmup: u64,
    attack_from: u64,
    progress: Option<mpsc::Sender<Progress>>,
    slow_open: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Every second, the origin's counters and the shield's decisions; four times a second, the
/// shield's mode, so that no transition is missed (the shield changes at most one level a
/// second).
async fn sampler(p: Sampler) -> Vec<ModeChange> {
    let client = h::client(4);
    let mut changes: Vec<ModeChange> = Vec::new();
    let mut mode = String::new();
    let mut last = match &p.origin {
        Some(o) => fetch_stats(&client, o).await.ok(),
        None => None,
    };
    let mut last_dec = match &p.admin {
        Some(a) => fetch_text(&client, a, "/metrics")
            .await
            .map(|t| decisions(&t))
            .unwrap_or_default(),
        None => BTreeMap::new(),
    };
    let mut views_seen = 0usize;
    let mut next_sec: u64 = 1;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if *p.stop.borrow() {
            return changes;
        }
        if let Some(adm) = &p.admin
            && let Ok(text) = fetch_text(&client, adm, "/mode").await
            && let Ok(doc) = serde_json::from_str::<ModeDoc>(&text)
        {
            mode = doc.mode;
            if let Some(t) = doc.last_transition {
                let at_ms = t.at_ms as i64 - p.started_unix_ms as i64;
                let seen = changes.iter().any(|c| c.at_ms == at_ms && c.to == t.to);
                if !seen && changes.len() < 64 {
                    changes.push(ModeChange {
                        at_ms,
                        from: t.from,
                        to: t.to,
                        reason: t.reason.to_string(),
                    });
                }
            }
        }
        if p.start.elapsed() < Duration::from_secs(next_sec) {
            continue;
        }
        let i = (next_sec - 1) as usize;
        let now = match &p.origin {
            Some(o) => fetch_stats(&client, o).await.ok(),
            None => None,
        };
        let dec = match &p.admin {
            Some(a) => fetch_text(&client, a, "/metrics")
                .await
                .map(|t| decisions(&t))
                .ok(),
            None => None,
        };
        let slow_open = p.slow_open.load(Relaxed);
        let snapshot = with(&p.rec, |g| {
            let s = g.second(i);
            if let (Some(n), Some(l)) = (&now, &last) {
                s.origin_article = n.article.received.saturating_sub(l.article.received);
                s.origin_search = n.search.received.saturating_sub(l.search.received);
                s.origin_other = (n.other.received + n.admin.received)
                    .saturating_sub(l.other.received + l.admin.received);
                s.origin_served = n.served().saturating_sub(l.served());
            }
            if let Some(d) = &dec {
                s.decisions = d
                    .iter()
                    .map(|(k, v)| (k.clone(), v.saturating_sub(*last_dec.get(k).unwrap_or(&0))))
                    .filter(|(_, v)| *v > 0)
                    .collect();
            }
            s.mode = mode.clone();
            s.slow_open = slow_open;
            let data = s.clone();
            let fresh: Vec<&View> = g.views.iter().skip(views_seen).collect();
            let mut ms: Vec<f64> = fresh.iter().map(|v| v.ms).collect();
            ms.sort_by(f64::total_cmp);
            let ok = fresh.iter().filter(|v| v.ok).count() as u64;
            let n = fresh.len();
            (data, n, ok, ms)
        });
        if let Some(n) = now {
            last = Some(n);
        }
        if let Some(d) = dec {
            last_dec = d;
        }
        if let Some((data, n, ok, ms)) = snapshot {
            views_seen += n;
            if let Some(tx) = &p.progress {
                let sec = next_sec - 1;
                let phase = if sec < p.warmup {
                    "warmup"
                } else if sec < p.attack_from {
                    "baseline"
                } else {
                    "attack"
                };
                let _ = tx.try_send(Progress {
                    second: sec,
                    phase,
                    total_seconds: p.total,
                    data,
                    reader_views: n as u64,
                    reader_ok: ok,
                    reader_p50_ms: percentile(&ms, 50.0),
                    reader_p95_ms: percentile(&ms, 95.0),
                });
            }
        }
        next_sec += 1;
        if next_sec > p.total {
            return changes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run started without a caller's stop signal (as `bench/kursiv` starts one) keeps to its
    /// rates: readers at their pace, no flood before the attack phase.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_stop_signal_the_run_keeps_its_rates() {
        let origin = crate::origin::Origin::start(
            "127.0.0.1:0".parse().unwrap(),
            crate::origin::OriginConfig::default(),
        )
        .await
        .unwrap();
        let sc = Scenario::from_toml(
            r#"
name = "pace"
[run]
warmup = 0
baseline = 2
attack = 1
timeout = 5
[[readers]]
name = "r"
count = 10
rate = 5.0
[[attackers]]
name = "f"
kind = "flood"
rate = 20.0
path = "/search"
addresses = 10
"#,
        )
        .unwrap();
        let res = run(&sc, &origin.url(), Options::default()).await.unwrap();
        // About 15 views in 3 s; thousands when the readers did not wait.
        assert!(res.views.len() <= 60, "{} views", res.views.len());
        let before: u64 = res.seconds[..2].iter().map(|s| s.flood_sent).sum();
        assert_eq!(before, 0, "no flood before the attack phase");
        let during: u64 = res.seconds[2..].iter().map(|s| s.flood_sent).sum();
        assert!(
            (5..=40).contains(&during),
            "{during} flood requests in 1 s at 20/s"
        );
    }

    #[test]
    fn attackers_in_the_readers_networks_share_their_16_but_never_an_address() {
        use crate::scenario::Networks;
        let readers: std::collections::HashSet<_> =
            (0..256).map(|id| reader_addr(id).public).collect();
        let mut seen = std::collections::HashSet::new();
        for k in 0..12_800 {
            let a = attacker_addr(0, k, Networks::Readers);
            assert_eq!(a.public.octets()[..2], [95, 56]);
            assert_eq!(a.local.octets()[..2], [127, 16]);
            assert!(!readers.contains(&a.public), "{}", a.public);
            assert!(seen.insert(a.public), "{} twice", a.public);
        }
        assert_eq!(
            attacker_addr(1, 7, Networks::Own).public,
            flood_addr(1, 7).public
        );
    }

    #[test]
    fn addresses_are_distinct_per_24() {
        let mut seen = std::collections::HashSet::new();
        let mut local = std::collections::HashSet::new();
        for k in 0..20_000 {
            let a = flood_addr(0, k);
            let o = a.public.octets();
            assert!(seen.insert((o[0], o[1], o[2])), "{} shares a /24", a.public);
            assert!(a.local.is_loopback());
            assert!(local.insert(a.local), "{}", a.local);
        }
        for id in 0..1000 {
            let a = reader_addr(id);
            let o = a.public.octets();
            assert!(seen.insert((o[0], o[1], o[2])), "{} shares a /24", a.public);
            assert!(a.local.is_loopback());
            assert!(local.insert(a.local), "{}", a.local);
        }
    }

    #[test]
    fn flood_queries_follow_the_fixed_share() {
        let a = Scenario::built_in("kursiv").unwrap().attackers[0].clone();
        let mut rng = Rng::new(3);
        let n = (0..10_000)
            .filter(|_| flood_query(&mut rng, &a) == "number+one")
            .count();
        assert!((4_500..5_500).contains(&n), "{n}");
        assert_eq!(form_encode("курс тенге").matches('+').count(), 1);
    }

    #[test]
    fn decisions_are_read_from_metrics() {
        let m = "# HELP x\nqalqan_shield_requests_total{decision=\"pass\"} 12\n\
qalqan_shield_requests_total{decision=\"limited\"} 3\nother 1\n";
        let d = decisions(m);
        assert_eq!(d.get("pass"), Some(&12));
        assert_eq!(d.get("limited"), Some(&3));
        assert_eq!(d.len(), 2);
    }
}
