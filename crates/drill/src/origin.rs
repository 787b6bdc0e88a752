//! The sample newsroom: a small news site on a cheap VPS, built into the binary for `qalqan
//! demo`, the drill's tests and the Kursiv benchmark.
//!
//! Its dynamic pages run on a pool of PHP-like workers (one by default). An article holds a
//! worker for 2 ms; a search holds it for 50 ms, so the site serves about 20 searches a second
//! and far more articles, as long as nobody floods search. Requests beyond the workers wait in a
//! bounded queue (PHP-FPM's listen backlog): when it is full they get 503 at once, and a request
//! that waited longer than the queue timeout gets 504. Work that started is finished even if
//! the client hung up, as PHP does, so a flood's abandoned requests still cost the site.
//!
//! Pages: `/` (front page with the latest articles), `/article/N`, `/feed.xml` (RSS 2.0 with
//! categories, so an atlas can poll it), `/search?q=` (slow), `/admin` (a log-in form that
//! costs a worker like a search), `/robots.txt`. Articles and the front page carry
//! `Cache-Control: public, max-age=30` like a CMS behind a cache; search and admin pages carry
//! no cache headers, like WordPress. `/__stats` counts every request that reached the origin, by
//! class, so a report can say how much of a flood got through.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// How the sample site behaves.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// Workers (PHP-FPM `pm.max_children`): pages being built at once.
    pub workers: usize,
    /// Worker time one search costs.
    pub search_cost: Duration,
    /// Worker time one article, the front page or the feed costs.
    pub article_cost: Duration,
    /// Requests that may wait for a worker; beyond it, 503 at once.
    pub backlog: usize,
    /// Time a request may wait for a worker before it gets 504.
    pub queue_timeout: Duration,
    /// Client connections at once; more are closed at accept.
    pub max_connections: usize,
    /// Number of distinct articles (`/article/1` … `/article/N`).
    pub articles: u32,
    /// Publication time of article N (the newest); older ones are spaced `article_spacing`
    /// apart, so the feed has realistic dates.
    pub newest_ms: i64,
    pub article_spacing: Duration,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            workers: 1,
            search_cost: Duration::from_millis(50),
            article_cost: Duration::from_millis(2),
            backlog: 128,
            queue_timeout: Duration::from_secs(10),
            max_connections: 8192,
            articles: 500,
            newest_ms: 1_764_000_000_000,
            article_spacing: Duration::from_secs(3 * 3600),
        }
    }
}

impl OriginConfig {
    fn check(&self) -> anyhow::Result<()> {
        if self.workers == 0 || self.workers > 1024 {
            bail!("workers must be 1..=1024");
        }
        if self.backlog > 100_000 || self.articles == 0 || self.articles > 1_000_000 {
            bail!("backlog must be at most 100000 and articles 1..=1000000");
        }
        if self.max_connections == 0 {
            bail!("max_connections must be at least 1");
        }
        Ok(())
    }
}

/// Counters of one class of requests.
#[derive(Default)]
struct Counters {
    received: AtomicU64,
    served: AtomicU64,
    rejected: AtomicU64,
    timed_out: AtomicU64,
}

/// What `/__stats` returns for one class.
#[derive(Serialize, Deserialize, Default, Clone, Copy, Debug, PartialEq)]
pub struct ClassStats {
    /// Requests that reached the origin.
    pub received: u64,
    /// Requests a worker built a page for.
    pub served: u64,
    /// 503: the wait queue was full.
    pub rejected: u64,
    /// 504: waited longer than the queue timeout.
    pub timed_out: u64,
}

/// The whole `/__stats` document. `article` holds articles, the front page and the feed;
/// `other` everything else that is not search or admin (404s, robots.txt, the shield's own
/// paths if they leak through).
#[derive(Serialize, Deserialize, Default, Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub article: ClassStats,
    pub search: ClassStats,
    #[serde(default)]
    pub admin: ClassStats,
    pub other: ClassStats,
}

impl Stats {
    /// Requests that reached the origin, all classes together.
    pub fn received(&self) -> u64 {
        self.article.received + self.search.received + self.admin.received + self.other.received
    }

    /// Pages built, all classes together.
    pub fn served(&self) -> u64 {
        self.article.served + self.search.served + self.admin.served + self.other.served
    }
}

impl Counters {
    fn snapshot(&self) -> ClassStats {
        ClassStats {
            received: self.received.load(Relaxed),
            served: self.served.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
        }
    }
}

/// The class a path belongs to, the same way for the origin's counters and the drill's own
/// count of what it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Article,
    Search,
    Admin,
    Other,
}

impl Class {
    /// The class of a request path (without the query).
    pub fn of(path: &str) -> Class {
        if path == "/search" {
            Class::Search
        } else if path == "/" || path == "/feed.xml" || path.starts_with("/article/") {
            Class::Article
        } else if path == "/admin" || path.starts_with("/admin/") {
            Class::Admin
        } else {
            Class::Other
        }
    }
}

struct Site {
    cfg: OriginConfig,
    workers: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    article: Counters,
    search: Counters,
    admin: Counters,
    other: Counters,
    filler: String,
}

/// Why a page was not built.
enum Refused {
    Backlog,
    Timeout,
}

/// Decrements the wait count when the waiter leaves, however it leaves.
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Site {
    /// Builds a page on a worker: waits in the bounded queue, then holds the worker for `cost`.
    /// Runs on its own task so that a client hanging up does not cancel the work.
    async fn work(self: &Arc<Self>, cost: Duration) -> Result<(), Refused> {
        if self.waiting.fetch_add(1, Relaxed) >= self.cfg.backlog {
            self.waiting.fetch_sub(1, Relaxed);
            return Err(Refused::Backlog);
        }
        let waiting = Waiting(self.waiting.clone());
        let me = self.clone();
        let job = tokio::spawn(async move {
            let permit =
                tokio::time::timeout(me.cfg.queue_timeout, me.workers.clone().acquire_owned())
                    .await;
            drop(waiting);
            match permit {
                Ok(Ok(p)) => {
                    tokio::time::sleep(cost).await;
                    drop(p);
                    Ok(())
                }
                _ => Err(Refused::Timeout),
            }
        });
        job.await.unwrap_or(Err(Refused::Timeout))
    }

    fn stats(&self) -> Stats {
        Stats {
            article: self.article.snapshot(),
            search: self.search.snapshot(),
            admin: self.admin.snapshot(),
            other: self.other.snapshot(),
        }
    }

    fn counters(&self, c: Class) -> &Counters {
        match c {
            Class::Article => &self.article,
            Class::Search => &self.search,
            Class::Admin => &self.admin,
            Class::Other => &self.other,
        }
    }
}

/// A running sample site.
pub struct Origin {
    addr: SocketAddr,
    site: Arc<Site>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    /// Listens on `listen` (loopback only) and serves in the background until [`Origin::stop`]
    /// or until the runtime ends.
    pub async fn start(listen: SocketAddr, cfg: OriginConfig) -> anyhow::Result<Origin> {
        if !listen.ip().is_loopback() {
            bail!("the sample origin listens on loopback only, not {listen}");
        }
        cfg.check()?;
        let site = Arc::new(Site {
            workers: Arc::new(Semaphore::new(cfg.workers)),
            waiting: Arc::new(AtomicUsize::new(0)),
            article: Counters::default(),
            search: Counters::default(),
            admin: Counters::default(),
            other: Counters::default(),
            filler: filler(),
            cfg,
        });
        let sock = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = sock.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(sock, site.clone(), stopped));
        Ok(Origin {
            addr,
            site,
            stop,
            task,
        })
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The counters, as `/__stats` shows them.
    pub fn stats(&self) -> Stats {
        self.site.stats()
    }

    /// Stops accepting and waits for the accept loop to end (open connections end with the
    /// runtime).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(sock: TcpListener, site: Arc<Site>, mut stopped: watch::Receiver<bool>) {
    let conns = Arc::new(Semaphore::new(site.cfg.max_connections));
    loop {
        let (stream, _) = tokio::select! {
            r = sock.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    // Out of descriptors: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let Ok(slot) = conns.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let s = site.clone();
        let mut stop = stopped.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let s = s.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&s, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
            drop(slot);
        });
    }
}

async fn handle(s: &Arc<Site>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/__stats" {
        let body = serde_json::to_string(&s.stats()).unwrap_or_else(|_| "{}".into());
        return respond(StatusCode::OK, "application/json", None, body);
    }
    let class = Class::of(&path);
    let counters = s.counters(class);
    counters.received.fetch_add(1, Relaxed);
    let cost = match class {
        Class::Search | Class::Admin => s.cfg.search_cost,
        Class::Article => s.cfg.article_cost,
        Class::Other => {
            counters.served.fetch_add(1, Relaxed);
            if path == "/robots.txt" {
                return respond(
                    StatusCode::OK,
                    "text/plain; charset=utf-8",
                    Some("public, max-age=3600"),
                    "User-agent: *\nDisallow: /admin\nDisallow: /search\n".into(),
                );
            }
            return respond(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                None,
                "not found\n".into(),
            );
        }
    };
    match s.work(cost).await {
        Err(Refused::Backlog) => {
            counters.rejected.fetch_add(1, Relaxed);
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/html",
                None,
                "<h1>503 Service Unavailable</h1>\n".into(),
            );
        }
        Err(Refused::Timeout) => {
            counters.timed_out.fetch_add(1, Relaxed);
            return respond(
                StatusCode::GATEWAY_TIMEOUT,
                "text/html",
                None,
                "<h1>504 Gateway Timeout</h1>\n".into(),
            );
        }
        Ok(()) => {}
    }
    counters.served.fetch_add(1, Relaxed);
    let n_articles = s.cfg.articles;
    match class {
        Class::Search => {
            let q = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("q="))
                .unwrap_or("");
            respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                None,
                search_page(q, n_articles),
            )
        }
        Class::Admin => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Some("no-store"),
            page(
                "Вход для редакции",
                "<form method=\"post\" action=\"/admin\"><label>Логин <input name=\"u\"></label> \
<label>Пароль <input name=\"p\" type=\"password\"></label> <button>Войти</button></form>",
            ),
        ),
        _ if path == "/feed.xml" => respond(
            StatusCode::OK,
            "application/rss+xml; charset=utf-8",
            Some("public, max-age=30"),
            feed(&s.cfg),
        ),
        _ if path == "/" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Some("public, max-age=30"),
            front(&s.cfg),
        ),
        _ => {
            let n: u32 = path
                .strip_prefix("/article/")
                .and_then(|s| s.parse().ok())
                .filter(|n| (1..=n_articles).contains(n))
                .unwrap_or(1);
            let (title, topic) = article_title(n);
            let body = format!(
                "<article id=\"a{n}\"><h1>{title}</h1><p class=\"tag\">{topic}</p>{}</article>",
                s.filler
            );
            respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                Some("public, max-age=30"),
                page(title, &body),
            )
        }
    }
}

fn respond(
    status: StatusCode,
    ctype: &'static str,
    cache: Option<&'static str>,
    body: String,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    if let Some(c) = cache {
        h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static(c));
    }
    r
}

/// A page of the sample site around `body`.
fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"ru\"><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{title}</title>\
<link rel=\"alternate\" type=\"application/rss+xml\" href=\"/feed.xml\">\
<body><header><a href=\"/\">Dala News</a> <form action=\"/search\"><input name=\"q\"></form></header>\
{body}</body></html>\n"
    )
}

/// Topics of the sample site's articles; the feed carries them as categories.
pub const TOPICS: [&str; 6] = [
    "экономика",
    "политика",
    "расследования",
    "общество",
    "энергетика",
    "регионы",
];

const HEADLINES: [&str; 12] = [
    "Нацбанк сохранил базовую ставку",
    "Курс тенге на бирже KASE",
    "Расследование: госзакупки в регионах",
    "Цены на бензин выросли за месяц",
    "Ипотека: что изменится с нового года",
    "Мәжіліс бюджетті бекітті",
    "Астанада жаңа мектеп ашылды",
    "Энергетики обещают обойтись без веерных отключений",
    "Аудит Самрук-Казына: главное",
    "Алматы: новые правила парковки",
    "Зарплаты в регионах: итоги квартала",
    "Газ для Алматинской области",
];

/// Title and topic of article `n`.
pub fn article_title(n: u32) -> (&'static str, &'static str) {
    let i = n as usize;
    (
        HEADLINES[i % HEADLINES.len()],
        TOPICS[(i * 7 + i / 3) % TOPICS.len()],
    )
}

/// Publication time of article `n` in Unix milliseconds.
pub fn published_ms(cfg: &OriginConfig, n: u32) -> i64 {
    let age = i64::from(cfg.articles.saturating_sub(n));
    cfg.newest_ms - age * cfg.article_spacing.as_millis() as i64
}

fn front(cfg: &OriginConfig) -> String {
    let mut items = String::new();
    for n in (1..=cfg.articles).rev().take(20) {
        let (t, topic) = article_title(n);
        let _ = write!(
            items,
            "<li><a href=\"/article/{n}\">{t}</a> <small>{topic}</small></li>"
        );
    }
    page("Dala News", &format!("<ol class=\"latest\">{items}</ol>"))
}

/// RSS 2.0 of the latest 20 articles, with categories (topics) and RFC 822 dates.
fn feed(cfg: &OriginConfig) -> String {
    let mut items = String::new();
    for n in (1..=cfg.articles).rev().take(20) {
        let (t, topic) = article_title(n);
        let _ = write!(
            items,
            "<item><title>{t}</title><link>http://dala.example/article/{n}</link>\
<guid>http://dala.example/article/{n}</guid><category>{topic}</category>\
<pubDate>{}</pubDate></item>",
            rfc822(published_ms(cfg, n))
        );
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<rss version=\"2.0\"><channel>\
<title>Dala News</title><link>http://dala.example/</link><description>Sample newsroom</description>\
{items}</channel></rss>\n"
    )
}

/// An RFC 822 date in GMT, as RSS wants it.
pub fn rfc822(ms: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's method).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// About 4 KB of article text.
fn filler() -> String {
    let p = "<p>Сарапшылар теңге бағамы мен мұнай бағасының өзгерісін талқылады. \
Analysts discussed the tenge and the price of oil; the regulator kept its base rate.</p>";
    p.repeat(4096 / p.len() + 1)
}

/// A results page for query `q` (still percent-encoded; echoed escaped and bounded).
fn search_page(q: &str, articles: u32) -> String {
    let shown: String = q
        .chars()
        .take(200)
        .map(|c| match c {
            '<' | '>' | '&' | '"' | '\'' => '_',
            c => c,
        })
        .collect();
    // Results depend on the query so different queries are different pages.
    let seed = q
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let mut items = String::new();
    for i in 0..10u32 {
        let n = seed.wrapping_add(i.wrapping_mul(7919)) % articles + 1;
        let (t, _) = article_title(n);
        let _ = write!(
            items,
            "<li><a href=\"/article/{n}\">{t}</a><p>…a match for the query in article {n}…</p></li>"
        );
    }
    page(
        &format!("Поиск: {shown}"),
        &format!("<h1>Поиск: {shown}</h1><ol class=\"results\">{items}</ol>"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A real origin on port 0 with one worker and a backlog of one: a search takes its 50 ms,
    /// the next one waits, the one after that is refused with 503, and `/__stats` counts all.
    #[tokio::test]
    async fn search_is_slow_and_the_backlog_is_bounded() {
        let o = Origin::start(
            "127.0.0.1:0".parse().unwrap(),
            OriginConfig {
                backlog: 1,
                max_connections: 64,
                articles: 10,
                ..OriginConfig::default()
            },
        )
        .await
        .unwrap();
        let base = o.url();
        let client = crate::http::client(8);
        let get = |path: &'static str| {
            let (c, b) = (client.clone(), base.clone());
            async move { crate::http::get(&c, &b, path, "192.0.2.1", "test", None).await }
        };
        let t = Instant::now();
        // The first search takes the worker before the other two arrive.
        let first = tokio::spawn(get("/search?q=a"));
        tokio::time::sleep(Duration::from_millis(15)).await;
        let (b, c) = tokio::join!(get("/search?q=b"), get("/search?q=c"));
        let a = first.await.unwrap();
        let mut statuses: Vec<u16> = [a, b, c]
            .into_iter()
            .map(|r| r.unwrap().status.as_u16())
            .collect();
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 200, 503]);
        assert!(
            t.elapsed() >= Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        let art = get("/article/3").await.unwrap();
        assert_eq!(art.status, 200);
        assert_eq!(
            art.headers.get(header::CACHE_CONTROL).unwrap(),
            "public, max-age=30"
        );
        let feed = get("/feed.xml").await.unwrap();
        assert_eq!(feed.status, 200);
        let text = String::from_utf8(feed.body.to_vec()).unwrap();
        assert_eq!(text.matches("<item>").count(), 10);
        assert!(text.contains("<category>"), "{text}");
        assert_eq!(get("/admin").await.unwrap().status, 200);
        assert_eq!(get("/nothing").await.unwrap().status, 404);
        let stats: Stats = serde_json::from_slice(&get("/__stats").await.unwrap().body).unwrap();
        assert_eq!(stats, o.stats());
        assert_eq!(stats.search.received, 3);
        assert_eq!(stats.search.served, 2);
        assert_eq!(stats.search.rejected, 1);
        assert_eq!(stats.article.served, 2);
        assert_eq!(stats.admin.served, 1);
        assert_eq!(stats.other.received, 1);
        o.stop().await;
    }

    #[test]
    fn dates_are_rfc822() {
        assert_eq!(rfc822(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(rfc822(1_764_000_000_000), "Mon, 24 Nov 2025 16:00:00 GMT");
        assert_eq!(Class::of("/search"), Class::Search);
        assert_eq!(Class::of("/article/5"), Class::Article);
        assert_eq!(Class::of("/admin"), Class::Admin);
        assert_eq!(Class::of("/.qalqan/verify"), Class::Other);
    }
}
