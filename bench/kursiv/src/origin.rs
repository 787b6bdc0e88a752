//! The sample origin: a small news site on a cheap VPS.
//!
//! Its dynamic pages run on a pool of PHP-like workers (one by default). An article holds a
//! worker for 2 ms; a search holds it for 50 ms, so the site serves about 20 searches a second
//! and far more articles, as long as nobody floods search. Requests beyond the workers wait in a
//! bounded queue (PHP-FPM's listen backlog): when it is full they get 503 at once, and a request
//! that waited longer than the queue timeout gets 504. Work that started is finished even if
//! the client hung up, as PHP does, so a flood's abandoned requests still cost the site.
//!
//! Articles carry `Cache-Control: public, max-age=30` like a CMS behind a cache; search pages
//! carry no cache headers, like WordPress' search. `/__stats` counts every request that reached
//! the origin, by class, so the report can say how much of a flood got through.

use std::net::SocketAddr;
use std::path::PathBuf;
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
use tokio::sync::Semaphore;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write the port actually bound to this file once listening.
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// Workers (PHP-FPM `pm.max_children`): pages being built at once.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Milliseconds of a worker one search costs.
    #[arg(long, default_value_t = 50)]
    search_ms: u64,
    /// Milliseconds of a worker one article costs.
    #[arg(long, default_value_t = 2)]
    article_ms: u64,
    /// Requests that may wait for a worker; beyond it, 503 at once.
    #[arg(long, default_value_t = 128)]
    backlog: usize,
    /// Seconds a request may wait for a worker before it gets 504.
    #[arg(long, default_value_t = 10)]
    queue_timeout: u64,
    /// Client connections at once; more are closed at accept.
    #[arg(long, default_value_t = 8192)]
    max_connections: usize,
    /// Number of distinct articles (`/article/1` … `/article/N`).
    #[arg(long, default_value_t = 500)]
    articles: u32,
    /// The origin exits by itself after this many seconds (a bound if the script dies).
    #[arg(long, default_value_t = 1800)]
    max_runtime: u64,
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

/// The whole `/__stats` document.
#[derive(Serialize, Deserialize, Default, Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub article: ClassStats,
    pub search: ClassStats,
    pub other: ClassStats,
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

struct Origin {
    workers: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    backlog: usize,
    queue_timeout: Duration,
    search_cost: Duration,
    article_cost: Duration,
    articles: u32,
    article: Counters,
    search: Counters,
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

impl Origin {
    /// Builds a page on a worker: waits in the bounded queue, then holds the worker for `cost`.
    /// Runs on its own task so that a client hanging up does not cancel the work.
    async fn work(self: &Arc<Self>, cost: Duration) -> Result<(), Refused> {
        if self.waiting.fetch_add(1, Relaxed) >= self.backlog {
            self.waiting.fetch_sub(1, Relaxed);
            return Err(Refused::Backlog);
        }
        let waiting = Waiting(self.waiting.clone());
        let me = self.clone();
        let job = tokio::spawn(async move {
            let permit =
                tokio::time::timeout(me.queue_timeout, me.workers.clone().acquire_owned()).await;
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
            other: self.other.snapshot(),
        }
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    if !a.listen.ip().is_loopback() {
        bail!(
            "the bench origin listens on loopback only, not {}",
            a.listen
        );
    }
    if a.workers == 0 || a.workers > 1024 || a.backlog > 100_000 || a.articles == 0 {
        bail!("workers must be 1..=1024, backlog at most 100000, articles at least 1");
    }
    let origin = Arc::new(Origin {
        workers: Arc::new(Semaphore::new(a.workers)),
        waiting: Arc::new(AtomicUsize::new(0)),
        backlog: a.backlog,
        queue_timeout: Duration::from_secs(a.queue_timeout),
        search_cost: Duration::from_millis(a.search_ms),
        article_cost: Duration::from_millis(a.article_ms),
        articles: a.articles,
        article: Counters::default(),
        search: Counters::default(),
        other: Counters::default(),
        filler: filler(),
    });
    let sock = TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let port = sock.local_addr()?.port();
    if let Some(f) = &a.port_file {
        std::fs::write(f, format!("{port}\n"))
            .with_context(|| format!("cannot write {}", f.display()))?;
    }
    eprintln!(
        "origin on 127.0.0.1:{port}: {} worker(s), search {} ms, article {} ms, backlog {}, queue timeout {} s",
        a.workers, a.search_ms, a.article_ms, a.backlog, a.queue_timeout
    );
    let conns = Arc::new(Semaphore::new(a.max_connections));
    let deadline = tokio::time::sleep(Duration::from_secs(a.max_runtime));
    tokio::pin!(deadline);
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
            _ = &mut deadline => {
                eprintln!("origin: max runtime reached, exiting");
                return Ok(());
            }
        };
        let Ok(slot) = conns.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let o = origin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let o = o.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&o, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            drop(slot);
        });
    }
}

async fn handle(o: &Arc<Origin>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/__stats" {
        let body = serde_json::to_string(&o.stats()).unwrap_or_else(|_| "{}".into());
        return respond(StatusCode::OK, "application/json", None, body);
    }
    let (counters, cost) = if path == "/search" {
        (&o.search, o.search_cost)
    } else if path.starts_with("/article/") || path == "/" {
        (&o.article, o.article_cost)
    } else {
        o.other.received.fetch_add(1, Relaxed);
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            None,
            "not found\n".into(),
        );
    };
    counters.received.fetch_add(1, Relaxed);
    match o.work(cost).await {
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
    if path == "/search" {
        let q = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("q="))
            .unwrap_or("");
        let body = search_page(q, o.articles);
        respond(StatusCode::OK, "text/html; charset=utf-8", None, body)
    } else {
        let n: u32 = path
            .strip_prefix("/article/")
            .and_then(|s| s.parse().ok())
            .filter(|n| (1..=o.articles).contains(n))
            .unwrap_or(1);
        let body = format!(
            "<!doctype html><html lang=\"ru\"><meta charset=\"utf-8\"><title>Article {n}</title>\
<body><header><a href=\"/\">Sample news</a> <form action=\"/search\"><input name=\"q\"></form></header>\
<article id=\"a{n}\"><h1>Article {n}</h1>{}</article></body></html>\n",
            o.filler
        );
        respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Some("public, max-age=30"),
            body,
        )
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
        items.push_str(&format!(
            "<li><a href=\"/article/{n}\">Article {n}</a><p>…a match for the query in article {n}…</p></li>"
        ));
    }
    format!(
        "<!doctype html><html lang=\"ru\"><meta charset=\"utf-8\"><title>Search: {shown}</title>\
<body><h1>Search: {shown}</h1><ol class=\"results\">{items}</ol></body></html>\n"
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
        let dir = std::env::temp_dir().join(format!("kursiv-origin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port_file = dir.join("port");
        let args = Args {
            listen: "127.0.0.1:0".parse().unwrap(),
            port_file: Some(port_file.clone()),
            workers: 1,
            search_ms: 50,
            article_ms: 2,
            backlog: 1,
            queue_timeout: 10,
            max_connections: 64,
            articles: 10,
            max_runtime: 30,
        };
        tokio::spawn(run(args));
        let mut port = String::new();
        for _ in 0..100 {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                port = p.trim().to_string();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let base = format!("http://127.0.0.1:{port}");
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
        let stats: Stats = serde_json::from_slice(&get("/__stats").await.unwrap().body).unwrap();
        assert_eq!(stats.search.received, 3);
        assert_eq!(stats.search.served, 2);
        assert_eq!(stats.search.rejected, 1);
        assert_eq!(stats.article.served, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
