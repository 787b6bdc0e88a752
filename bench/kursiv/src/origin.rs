//! `origin`: the drill's sample newsroom (`qalqan_drill::origin`) as its own process, so the
//! origin, the peer under test and the load generator do not share a runtime.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use qalqan_drill::{Origin, OriginConfig};

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

pub async fn run(a: Args) -> anyhow::Result<()> {
    let o = Origin::start(
        a.listen,
        OriginConfig {
            workers: a.workers,
            search_cost: Duration::from_millis(a.search_ms),
            article_cost: Duration::from_millis(a.article_ms),
            backlog: a.backlog,
            queue_timeout: Duration::from_secs(a.queue_timeout),
            max_connections: a.max_connections,
            articles: a.articles,
            ..OriginConfig::default()
        },
    )
    .await?;
    let port = o.addr().port();
    if let Some(f) = &a.port_file {
        std::fs::write(f, format!("{port}\n"))
            .with_context(|| format!("cannot write {}", f.display()))?;
    }
    eprintln!(
        "origin on 127.0.0.1:{port}: {} worker(s), search {} ms, article {} ms, backlog {}, queue timeout {} s",
        a.workers, a.search_ms, a.article_ms, a.backlog, a.queue_timeout
    );
    tokio::time::sleep(Duration::from_secs(a.max_runtime)).await;
    eprintln!("origin: max runtime reached, exiting");
    o.stop().await;
    Ok(())
}
