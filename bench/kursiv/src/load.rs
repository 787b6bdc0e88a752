//! The load: browser-like readers for the whole run and, in the attack phase, a search flood.
//!
//! The run has three phases: warm-up (readers only, so caches fill and the shield's detector
//! learns what normal looks like, as it would have over days in production), baseline (readers
//! only, measured) and attack (readers plus the flood, measured). Everything is recorded per
//! second of the run and written as one JSON document that `report` turns into tables.
//!
//! Every client address is named in `X-Forwarded-For` and the connection comes from loopback,
//! which the peers trust (`trusted_proxies = ["127.0.0.0/8"]`, nginx's `set_real_ip_from`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http::{StatusCode, header};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::http::{self as h, Client, Jar};
use crate::origin::Stats;
use crate::rng::{Rng, Zipf};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The peer under test, e.g. http://127.0.0.1:8080 (loopback only).
    #[arg(long)]
    target: String,
    /// The origin, for its `/__stats` counters (loopback only).
    #[arg(long)]
    origin: String,
    /// The shield's admin listener, for `/mode` and `/metrics` (qalqan only).
    #[arg(long)]
    admin: Option<String>,
    /// Name of the peer in the report.
    #[arg(long)]
    peer: String,
    /// Simulated readers, each with its own address, user agent and cookie jar.
    #[arg(long, default_value_t = 200)]
    readers: u32,
    /// Page views per second of all readers together.
    #[arg(long, default_value_t = 5.0)]
    reader_rate: f64,
    /// Share of page views that are searches (the rest are articles).
    #[arg(long, default_value_t = 0.2)]
    search_share: f64,
    /// Articles on the site (popularity is Zipf-distributed over them).
    #[arg(long, default_value_t = 500)]
    articles: u32,
    /// Flood requests per second against /search during the attack phase.
    #[arg(long, default_value_t = 2000.0)]
    flood_rate: f64,
    /// Flood addresses that never solve a challenge (each in its own /24).
    #[arg(long, default_value_t = 10_000)]
    flood_addresses: u32,
    /// Further flood addresses that solve challenges and keep the cookie (headless browsers).
    #[arg(long, default_value_t = 500)]
    solver_addresses: u32,
    /// Flood requests in flight at most; beyond it a request is skipped and counted.
    #[arg(long, default_value_t = 2048)]
    flood_concurrency: usize,
    /// Seconds of readers only before the baseline (not measured).
    #[arg(long, default_value_t = 30)]
    warmup: u64,
    /// Seconds of readers only, measured: the no-attack baseline.
    #[arg(long, default_value_t = 10)]
    baseline: u64,
    /// Seconds of readers plus flood.
    #[arg(long, default_value_t = 30)]
    attack: u64,
    /// Seconds a reader's page view (with any challenge) or a flood request may take.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write the JSON timeline.
    #[arg(long)]
    out: PathBuf,
}

/// The scenario's settings as run, for the report.
#[derive(Serialize, Deserialize, Clone, Debug)]
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
    /// Flood requests sent in this second, and what became of them.
    pub flood_sent: u64,
    pub flood_ok: u64,
    pub flood_challenged: u64,
    pub flood_solved: u64,
    pub flood_limited: u64,
    pub flood_blocked: u64,
    pub flood_unavailable: u64,
    pub flood_other: u64,
    pub flood_errors: u64,
    /// Flood requests not sent because the concurrency cap was reached.
    pub flood_skipped: u64,
    /// Requests that reached the origin during this second, by class.
    pub origin_article: u64,
    pub origin_search: u64,
    pub origin_other: u64,
    /// Pages the origin's workers built during this second.
    pub origin_served: u64,
    /// The shield's mode at the end of the second ("" when not known).
    pub mode: String,
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

/// Everything one load run measured.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RunResult {
    pub peer: String,
    pub settings: Settings,
    pub started_unix_ms: u64,
    pub seconds: Vec<Second>,
    pub views: Vec<View>,
    pub transitions: Vec<ModeChange>,
    /// The origin's counters at the end of the run.
    pub origin_total: Stats,
    /// Selected lines of the shield's `/metrics` at the end of the run.
    pub shield_metrics: Vec<String>,
    /// The shield's `/mode` at the end of the run.
    pub shield_mode: String,
}

/// Views kept at most (the default run has a few hundred).
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

/// What readers search for (Zipf over this list, so some queries repeat).
const READER_QUERIES: [&str; 24] = [
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

fn validate(a: &Args) -> anyhow::Result<()> {
    let mut bad = Vec::new();
    if !(1..=10_000).contains(&a.readers) {
        bad.push("--readers must be 1..=10000");
    }
    if !(a.reader_rate > 0.0 && a.reader_rate <= 10_000.0) {
        bad.push("--reader-rate must be in (0, 10000]");
    }
    if !(0.0..=1.0).contains(&a.search_share) {
        bad.push("--search-share must be in [0, 1]");
    }
    if !(1..=1_000_000).contains(&a.articles) {
        bad.push("--articles must be 1..=1000000");
    }
    if !(a.flood_rate >= 0.0 && a.flood_rate <= 100_000.0) {
        bad.push("--flood-rate must be in [0, 100000]");
    }
    if a.flood_addresses == 0 || a.flood_addresses > 3_000_000 || a.solver_addresses > 100_000 {
        bad.push("--flood-addresses must be 1..=3000000 and --solver-addresses at most 100000");
    }
    if !(1..=10_000).contains(&a.flood_concurrency) {
        bad.push("--flood-concurrency must be 1..=10000");
    }
    if a.warmup + a.baseline + a.attack > 3600 || a.baseline == 0 || a.attack == 0 {
        bad.push("phases: baseline and attack at least 1 s, all three together at most 3600 s");
    }
    if !(1..=120).contains(&a.timeout) {
        bad.push("--timeout must be 1..=120 seconds");
    }
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(())
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    validate(&a)?;
    let target = h::loopback_base(&a.target)?;
    let origin = h::loopback_base(&a.origin)?;
    let admin = a.admin.as_deref().map(h::loopback_base).transpose()?;
    let total = a.warmup + a.baseline + a.attack;
    let rec: Rec = Arc::new(Mutex::new(Recorder {
        seconds: vec![Second::default(); total as usize],
        views: Vec::new(),
    }));
    let start = Instant::now();
    let started_unix_ms = unix_ms();
    let end = start + Duration::from_secs(total);
    let attack_at = start + Duration::from_secs(a.warmup + a.baseline);
    eprintln!(
        "load against {} ({}): {} readers at {}/s, flood {}/s from {}+{} addresses; \
         warm-up {} s, baseline {} s, attack {} s",
        a.peer,
        target,
        a.readers,
        a.reader_rate,
        a.flood_rate,
        a.flood_addresses,
        a.solver_addresses,
        a.warmup,
        a.baseline,
        a.attack
    );

    let sampler = tokio::spawn(sampler(
        origin.clone(),
        admin.clone(),
        rec.clone(),
        start,
        started_unix_ms,
        total,
    ));

    let readers_client = h::client(1024);
    let popular = Arc::new(Zipf::new(a.articles as usize));
    let queries = Arc::new(Zipf::new(READER_QUERIES.len()));
    let mut tasks = JoinSet::new();
    for id in 0..a.readers {
        tasks.spawn(reader(Reader {
            id,
            client: readers_client.clone(),
            base: target.clone(),
            rec: rec.clone(),
            start,
            end,
            mean_gap: f64::from(a.readers) / a.reader_rate,
            search_share: a.search_share,
            popular: popular.clone(),
            queries: queries.clone(),
            timeout: Duration::from_secs(a.timeout),
            seed: a.seed,
        }));
    }
    if a.flood_rate > 0.0 {
        tasks.spawn(flood(Flood {
            client: h::client(a.flood_concurrency),
            base: target.clone(),
            rec: rec.clone(),
            start,
            attack_at,
            end,
            rate: a.flood_rate,
            addresses: a.flood_addresses,
            solvers: a.solver_addresses,
            concurrency: a.flood_concurrency,
            timeout: Duration::from_secs(a.timeout),
            seed: a.seed,
        }));
    }
    while tasks.join_next().await.is_some() {}
    let transitions = sampler.await.unwrap_or_default();

    let mon = h::client(2);
    let origin_total = fetch_stats(&mon, &origin).await.unwrap_or_default();
    let (shield_metrics, shield_mode) = match &admin {
        Some(adm) => (
            shield_metrics(&mon, adm).await.unwrap_or_default(),
            fetch_text(&mon, adm, "/mode").await.unwrap_or_default(),
        ),
        None => (Vec::new(), String::new()),
    };
    let Recorder { seconds, views } = Arc::try_unwrap(rec)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .context("the recorder is still in use after the run")?;
    let result = RunResult {
        peer: a.peer.clone(),
        settings: Settings {
            readers: a.readers,
            reader_rate: a.reader_rate,
            search_share: a.search_share,
            articles: a.articles,
            flood_rate: a.flood_rate,
            flood_addresses: a.flood_addresses,
            solver_addresses: a.solver_addresses,
            flood_concurrency: a.flood_concurrency,
            warmup: a.warmup,
            baseline: a.baseline,
            attack: a.attack,
            timeout: a.timeout,
            seed: a.seed,
        },
        started_unix_ms,
        seconds,
        views,
        transitions,
        origin_total,
        shield_metrics,
        shield_mode,
    };
    let json = serde_json::to_string(&result)?;
    std::fs::write(&a.out, json).with_context(|| format!("cannot write {}", a.out.display()))?;
    let ok = result.views.iter().filter(|v| v.ok).count();
    eprintln!(
        "load against {} done: {} reader views, {} ok; {} flood requests sent; written to {}",
        a.peer,
        result.views.len(),
        ok,
        result.seconds.iter().map(|s| s.flood_sent).sum::<u64>(),
        a.out.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Readers.

struct Reader {
    id: u32,
    client: Client,
    base: String,
    rec: Rec,
    start: Instant,
    end: Instant,
    /// Mean seconds between two views of this reader.
    mean_gap: f64,
    search_share: f64,
    popular: Arc<Zipf>,
    queries: Arc<Zipf>,
    timeout: Duration,
    seed: u64,
}

/// Reader `id`'s address: each reader in its own /24 of a Kazakh access network.
fn reader_addr(id: u32) -> String {
    format!("95.{}.{}.{}", 56 + id / 256, id % 256, 1 + id % 200)
}

/// A query as a search form sends it (`application/x-www-form-urlencoded`).
fn form_encode(q: &str) -> String {
    h::encode_uri_component(q).replace("%20", "+")
}

async fn reader(r: Reader) {
    let mut rng = Rng::new(r.seed.wrapping_mul(1_000_003) ^ u64::from(r.id));
    let addr = reader_addr(r.id);
    let ua = READER_UAS[r.id as usize % READER_UAS.len()];
    let mut jar = Jar::default();
    // The first view, like every later one, comes after an exponential gap: the readers
    // together are then a steady Poisson stream from the first second, not a wave.
    let mut next = r.start + Duration::from_secs_f64(rng.exp(r.mean_gap));
    loop {
        // A reader whose next view falls after the end stops at the end, not at the view.
        tokio::time::sleep_until(next.min(r.end).into()).await;
        if Instant::now() >= r.end {
            return;
        }
        let search = rng.unit() < r.search_share;
        let path = if search {
            let q = READER_QUERIES[r.queries.sample(&mut rng)];
            format!("/search?q={}", form_encode(q))
        } else {
            format!("/article/{}", r.popular.sample(&mut rng) + 1)
        };
        let t0 = Instant::now();
        let t_ms = (t0 - r.start).as_millis() as u64;
        let v = tokio::time::timeout(
            r.timeout,
            view(&r.client, &r.base, &path, &addr, ua, &mut jar, search),
        )
        .await
        .unwrap_or(ViewOutcome {
            ok: false,
            outcome: "timeout".into(),
            challenged: false,
            solve_ms: 0.0,
        });
        let rec = View {
            t_ms,
            search,
            ok: v.ok,
            ms: t0.elapsed().as_secs_f64() * 1000.0,
            outcome: v.outcome,
            challenged: v.challenged,
            solve_ms: v.solve_ms,
        };
        with(&r.rec, |g| {
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
async fn view(
    client: &Client,
    base: &str,
    path: &str,
    addr: &str,
    ua: &str,
    jar: &mut Jar,
    search: bool,
) -> ViewOutcome {
    let marker: &[u8] = if search {
        b"<ol class=\"results\">"
    } else {
        b"<article id="
    };
    let mut url = path.to_string();
    let mut challenged = false;
    let mut solve_ms = 0.0;
    let fail = |outcome: String, challenged: bool, solve_ms: f64| ViewOutcome {
        ok: false,
        outcome,
        challenged,
        solve_ms,
    };
    for _ in 0..MAX_STEPS {
        let cookie = jar.header();
        let ans = match h::get(client, base, &url, addr, ua, cookie.as_deref()).await {
            Ok(a) => a,
            Err(_) => return fail("error".into(), challenged, solve_ms),
        };
        jar.absorb(&ans.headers);
        if ans.status.is_redirection() {
            match ans
                .headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
            {
                Some(l) if l.starts_with('/') && !l.starts_with("//") => {
                    url = l.to_string();
                    continue;
                }
                _ => return fail("bad redirect".into(), challenged, solve_ms),
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
                return fail("challenged again".into(), true, solve_ms);
            }
            challenged = true;
            let Ok(ch) = h::parse_challenge(&ans.body) else {
                return fail("unreadable challenge".into(), true, solve_ms);
            };
            let t = Instant::now();
            let next = h::solve(ch).await;
            solve_ms = t.elapsed().as_secs_f64() * 1000.0;
            match next {
                Ok(Some(n)) => url = n,
                _ => return fail("unsolved challenge".into(), true, solve_ms),
            }
            continue;
        }
        return fail(ans.status.as_u16().to_string(), challenged, solve_ms);
    }
    fail("too many steps".into(), challenged, solve_ms)
}

// ---------------------------------------------------------------------------------------------
// The flood.

struct Flood {
    client: Client,
    base: String,
    rec: Rec,
    start: Instant,
    attack_at: Instant,
    end: Instant,
    rate: f64,
    addresses: u32,
    solvers: u32,
    concurrency: usize,
    timeout: Duration,
    seed: u64,
}

/// Flood address `k`: each in its own /24, in public ranges far from the readers' (20.x–79.x).
fn flood_addr(k: u32) -> String {
    let k = u64::from(k);
    format!(
        "{}.{}.{}.{}",
        20 + (k / 65_536) % 60,
        (k / 256) % 256,
        k % 256,
        1 + (k * 7) % 250
    )
}

/// Half the flood asks for "number one", as at Kursiv; the other half for random words, which
/// no cache can answer.
fn flood_query(rng: &mut Rng) -> String {
    if rng.below(2) == 0 {
        return "number+one".into();
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

/// Sends `rate` requests a second from `attack_at` to `end`, each from a random flood address,
/// never more than `concurrency` at once.
async fn flood(f: Flood) {
    tokio::time::sleep_until(f.attack_at.into()).await;
    let f = Arc::new(f);
    let mut rng = Rng::new(f.seed ^ 0xF100D);
    let slots = Arc::new(Semaphore::new(f.concurrency));
    // The headless farm's solving power on this machine: one challenge at a time. Without a
    // bound, every request of a solving address that arrives before its cookie would queue
    // another solve, and the farm would take the CPU from the peer under test and from the
    // readers' own solving. A request that finds the solver busy gives up (counted as
    // challenged), as a bot with a deadline would.
    let farm = Arc::new(Semaphore::new(1));
    // Clearance cookies of the solving addresses (a headless browser keeps its cookies).
    let jars: Arc<Vec<Mutex<Jar>>> =
        Arc::new((0..f.solvers).map(|_| Mutex::new(Jar::default())).collect());
    let everyone = f.addresses + f.solvers;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let began = Instant::now();
    let mut sent: u64 = 0;
    let mut tasks = JoinSet::new();
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= f.end {
            break;
        }
        // However late this tick is, send what is due by now: the rate does not sag when the
        // generator is descheduled for a moment.
        let due = (now - began).as_secs_f64() * f.rate;
        let sec = (now - f.start).as_secs() as usize;
        while (sent as f64) < due {
            sent += 1;
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                with(&f.rec, |g| g.second(sec).flood_skipped += 1);
                continue;
            };
            let k = rng.below(u64::from(everyone)) as u32;
            let q = flood_query(&mut rng);
            let f2 = f.clone();
            let jars = jars.clone();
            let farm = farm.clone();
            tasks.spawn(async move {
                let solver = k.checked_sub(f2.addresses).map(|i| i as usize);
                let outcome = tokio::time::timeout(
                    f2.timeout,
                    flood_one(&f2, k, &format!("/search?q={q}"), solver, &jars, &farm),
                )
                .await
                .unwrap_or(FloodOutcome::Error);
                with(&f2.rec, |g| {
                    let s = g.second(sec);
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
    let addr = flood_addr(k);
    let ua = BOT_UAS[k as usize % BOT_UAS.len()];
    let jar = solver.and_then(|i| jars.get(i));
    let cookie = jar.and_then(|j| j.lock().ok().and_then(|g| g.header()));
    let Ok(ans) = h::get(&f.client, &f.base, path, &addr, ua, cookie.as_deref()).await else {
        return FloodOutcome::Error;
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
    let Ok(v) = h::get(&f.client, &f.base, &verify, &addr, ua, None).await else {
        return FloodOutcome::Error;
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
    match h::get(&f.client, &f.base, path, &addr, ua, cookie.as_deref()).await {
        Ok(again) => match classify(&again) {
            FloodOutcome::Ok { .. } => FloodOutcome::Ok { solved: true },
            other => other,
        },
        Err(_) => FloodOutcome::Error,
    }
}

// ---------------------------------------------------------------------------------------------
// Sampling the origin's counters and the shield's mode.

async fn fetch_text(client: &Client, base: &str, path: &str) -> anyhow::Result<String> {
    let a = tokio::time::timeout(
        Duration::from_secs(2),
        h::get(client, base, path, "127.0.0.1", "kursiv-sampler", None),
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
    const KEEP: [&str; 7] = [
        "qalqan_shield_requests_total",
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

/// Every second, the origin's counters; four times a second, the shield's mode, so that no
/// transition is missed (the shield changes at most one level a second).
async fn sampler(
    origin: String,
    admin: Option<String>,
    rec: Rec,
    start: Instant,
    started_unix_ms: u64,
    total: u64,
) -> Vec<ModeChange> {
    let client = h::client(4);
    let mut changes: Vec<ModeChange> = Vec::new();
    let mut mode = String::new();
    let mut last = fetch_stats(&client, &origin).await.unwrap_or_default();
    let mut next_sec: u64 = 1;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if let Some(adm) = &admin
            && let Ok(text) = fetch_text(&client, adm, "/mode").await
            && let Ok(doc) = serde_json::from_str::<ModeDoc>(&text)
        {
            mode = doc.mode;
            if let Some(t) = doc.last_transition {
                let at_ms = t.at_ms as i64 - started_unix_ms as i64;
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
        if start.elapsed() >= Duration::from_secs(next_sec) {
            let i = (next_sec - 1) as usize;
            let now = fetch_stats(&client, &origin).await.ok();
            with(&rec, |g| {
                let s = g.second(i);
                if let Some(n) = now {
                    s.origin_article = n.article.received.saturating_sub(last.article.received);
                    s.origin_search = n.search.received.saturating_sub(last.search.received);
                    s.origin_other = n.other.received.saturating_sub(last.other.received);
                    let served = |x: &Stats| x.article.served + x.search.served + x.other.served;
                    s.origin_served = served(&n).saturating_sub(served(&last));
                }
                s.mode = mode.clone();
            });
            if let Some(n) = now {
                last = n;
            }
            next_sec += 1;
            if next_sec > total {
                return changes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_per_24() {
        let mut seen = std::collections::HashSet::new();
        for k in 0..20_000 {
            let a = flood_addr(k);
            let net: Vec<&str> = a.split('.').take(3).collect();
            assert!(seen.insert(net.join(".")), "{a} shares a /24");
        }
        for id in 0..1000 {
            let a = reader_addr(id);
            assert!(a.parse::<std::net::Ipv4Addr>().is_ok(), "{a}");
            let net: Vec<&str> = a.split('.').take(3).collect();
            assert!(seen.insert(net.join(".")), "{a} shares a /24");
        }
    }

    #[test]
    fn flood_queries_are_half_number_one() {
        let mut rng = Rng::new(3);
        let n = (0..10_000)
            .filter(|_| flood_query(&mut rng) == "number+one")
            .count();
        assert!((4_500..5_500).contains(&n), "{n}");
        assert_eq!(form_encode("курс тенге").matches('+').count(), 1);
    }
}
