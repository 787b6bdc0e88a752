//! The atlas load run.
//!
//! 1. Ingest: shield episodes of many sightings each, through the store's `ingest_episode` (the
//!    code behind `POST /api/v1/ingest/episodes`) and through HTTP, against a raw bulk insert of
//!    the same rows into the same tables of the same database, in the same run.
//! 2. Reading: a registry of 100,000 incidents and 10,000,000 sightings (quick: 10,000 and
//!    1,000,000), then the latency of list, filter, search, incident and indicator requests over
//!    HTTP, and of the dashboard's list page when it exists.
//!
//! Every figure printed is measured here; nothing is estimated. Only loopback is used.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use qalqan_atlas::model::Role;
use qalqan_atlas::store::{EpisodeSignal, SightingIn};
use qalqan_atlas::{Actor, Atlas, Backend, Db};
use sqlx::AssertSqlSafe;

mod export;
mod map;

#[derive(Parser)]
struct Args {
    /// Small sizes (a smoke run of a minute or two).
    #[arg(long)]
    quick: bool,
    /// sqlite, postgres or both.
    #[arg(long, default_value = "both")]
    backend: String,
    /// PostgreSQL server to create scratch databases on.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres: String,
    /// Working directory for SQLite files.
    #[arg(long, default_value = "bench/work/atlas")]
    work: PathBuf,
    /// Write the Markdown report here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only the map pages (`/map`, `/map/time`, `/map/shared`): no ingest run, no other reads.
    #[arg(long, conflicts_with = "only_export")]
    only_map: bool,
    /// Only the STIX export (`GET /api/v1/stix/bundle`) over the full registry: no ingest run,
    /// no map pages, no other reads.
    #[arg(long)]
    only_export: bool,
}

/// What a reading run measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Only {
    Everything,
    Map,
    Export,
}

struct Sizes {
    episodes: usize,
    per_episode: usize,
    incidents: i64,
    sightings_per_incident: i64,
    indicators: i64,
    requests: usize,
}

pub(crate) type HttpClient =
    Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sizes = if args.quick {
        Sizes {
            episodes: 40,
            per_episode: 1000,
            incidents: 10_000,
            sightings_per_incident: 100,
            indicators: 100_000,
            requests: 100,
        }
    } else {
        Sizes {
            episodes: 200,
            per_episode: 1000,
            incidents: 100_000,
            sightings_per_incident: 100,
            indicators: 1_000_000,
            requests: 400,
        }
    };
    std::fs::create_dir_all(&args.work)?;
    let mut report = String::new();
    report.push_str(&header(&args).await);
    let backends: Vec<Backend> = match args.backend.as_str() {
        "sqlite" => vec![Backend::Sqlite],
        "postgres" => vec![Backend::Postgres],
        "both" => vec![Backend::Sqlite, Backend::Postgres],
        other => bail!("unknown backend {other}"),
    };
    for b in backends {
        let name = if b == Backend::Sqlite {
            "SQLite"
        } else {
            "PostgreSQL"
        };
        let only = if args.only_map {
            Only::Map
        } else if args.only_export {
            Only::Export
        } else {
            Only::Everything
        };
        if only != Only::Everything {
            report.push_str(&format!("\n## {name}\n"));
        } else {
            eprintln!("== {name}: ingest");
            let url = fresh_db(&args, b, "ingest").await?;
            let ingest = ingest_run(&url, &sizes).await?;
            eprintln!("{ingest}");
            report.push_str(&format!("\n## {name}\n\n{ingest}"));
        }
        eprintln!("== {name}: reading");
        let url = fresh_db(&args, b, "read").await?;
        let reading = read_run(&url, b, &sizes, only).await?;
        eprintln!("{reading}");
        report.push_str(&reading);
        drop_db(&args, b, "ingest").await;
        drop_db(&args, b, "read").await;
    }
    report.push_str(&format!(
        "\n- load average at the end: {}\n",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    ));
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("written to {}", out.display());
    }
    Ok(())
}

async fn header(args: &Args) -> String {
    let cmd = |c: &str, a: &[&str]| {
        std::process::Command::new(c)
            .args(a)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    format!(
        "# Atlas benchmark\n\n- date: {}\n- machine: {} ({} cores, {})\n- kernel: {}\n- git commit: {}\n- load average at start: {}\n- mode: {}\n- command: `cargo run --release -p qalqan-bench-atlas -- {}`\n",
        cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        cmd("hostname", &[]),
        cmd("nproc", &[]),
        cpu,
        cmd("uname", &["-r"]),
        {
            let head = cmd("git", &["rev-parse", "--short", "HEAD"]);
            if cmd("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
                head
            } else {
                format!("{head} plus uncommitted changes")
            }
        },
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim(),
        if args.quick { "quick" } else { "full" },
        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
    )
}

async fn fresh_db(args: &Args, b: Backend, tag: &str) -> anyhow::Result<String> {
    match b {
        Backend::Sqlite => {
            let path = args.work.join(format!("{tag}.db"));
            for ext in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
            }
            Ok(format!("sqlite://{}", path.display()))
        }
        Backend::Postgres => {
            let name = format!("atlas_bench_{tag}");
            let admin = sqlx::PgPool::connect(&args.postgres).await?;
            sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")))
                .execute(&admin)
                .await?;
            sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&admin)
                .await?;
            admin.close().await;
            let base = args
                .postgres
                .rsplit_once('/')
                .map(|x| x.0)
                .unwrap_or(&args.postgres);
            Ok(format!("{base}/{name}"))
        }
    }
}

async fn drop_db(args: &Args, b: Backend, tag: &str) {
    if b == Backend::Postgres
        && let Ok(admin) = sqlx::PgPool::connect(&args.postgres).await
    {
        let _ = sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS atlas_bench_{tag}"
        )))
        .execute(&admin)
        .await;
        admin.close().await;
    }
}

fn ip(n: u64) -> String {
    format!(
        "{}.{}.{}.{}",
        1 + (n >> 24) % 200,
        (n >> 16) & 255,
        (n >> 8) & 255,
        n & 255
    )
}

fn signal(e: usize, per: usize, base: u64) -> EpisodeSignal {
    let start = (e * per) as u64 + base;
    EpisodeSignal {
        episode_id: format!("bench:{base}:{e}"),
        site: Some("https://example.kz".into()),
        start_ms: 1_700_000_000_000 + e as i64 * 60_000,
        end_ms: Some(1_700_000_000_000 + e as i64 * 60_000 + 30_000),
        peak_rps: 5_000,
        total_requests: 1_000_000,
        indicators: (0..per as u64)
            .map(|i| SightingIn {
                kind: "ip".into(),
                value: ip(start + i),
                count: Some(100 + i as i64),
                first_seen: None,
                last_seen: None,
            })
            .collect(),
    }
}

/// Ingest through the store, through HTTP, and the raw bulk insert; returns a Markdown table.
async fn ingest_run(url: &str, s: &Sizes) -> anyhow::Result<String> {
    let db = Arc::new(Db::connect(url).await?);
    let outlet = db
        .create_outlet("bench", "Bench", "bench")
        .await
        .map_err(err)?;
    let actor = Actor {
        outlet_id: outlet.id,
        role: Role::Ingest,
        label: "token:bench".into(),
        user_id: None,
    };
    let total = (s.episodes * s.per_episode) as f64;
    let per = s.per_episode;
    let concurrency = 4;

    // Raw bulk insert: the same rows into the same tables, plain multi-row INSERTs in one
    // transaction per episode, no validation, no conflict handling, no audit.
    let t = Instant::now();
    run_concurrent(concurrency, s.episodes, {
        let db = db.clone();
        move |e| {
            let db = db.clone();
            let sig = signal(e, per, 50_000_000);
            async move { raw_insert(&db, outlet.id, &sig).await }
        }
    })
    .await?;
    let raw = total / t.elapsed().as_secs_f64();

    // The store's ingest (what the API handler calls), then the same episodes again, as a
    // shield's retries (counts replaced, nothing new).
    let mut rates = Vec::new();
    for _round in 0..2 {
        let t = Instant::now();
        run_concurrent(concurrency, s.episodes, {
            let db = db.clone();
            let actor = actor.clone();
            move |e| {
                let db = db.clone();
                let actor = actor.clone();
                let sig = signal(e, per, 0);
                async move {
                    db.ingest_episode(&actor, &sig).await.map_err(err)?;
                    Ok(())
                }
            }
        })
        .await?;
        rates.push(total / t.elapsed().as_secs_f64());
    }
    let (store, retry) = (rates[0], rates[1]);

    // Over HTTP, JSON bodies as a shield sends them.
    let token = db
        .create_token(None, outlet.id, "bench-http", Role::Ingest)
        .await
        .map_err(err)?;
    let (addr, client) = serve(db.clone()).await?;
    let bodies: Vec<Bytes> = (0..s.episodes)
        .map(|e| {
            let sig = signal(e, s.per_episode, 20_000_000);
            Bytes::from(
                serde_json::to_vec(&serde_json::json!({
                    "episode_id": sig.episode_id, "site": sig.site, "start_ms": sig.start_ms,
                    "end_ms": sig.end_ms, "peak_rps": sig.peak_rps, "total_requests": sig.total_requests,
                    "indicators": sig.indicators.iter().map(|i| serde_json::json!({"kind": i.kind, "value": i.value, "count": i.count})).collect::<Vec<_>>(),
                }))
                .unwrap_or_default(),
            )
        })
        .collect();
    let bodies = Arc::new(bodies);
    let t = Instant::now();
    run_concurrent(concurrency, s.episodes, {
        let client = client.clone();
        let token = token.clone();
        let bodies = bodies.clone();
        move |e| {
            let client = client.clone();
            let token = token.clone();
            let body = bodies[e].clone();
            async move {
                let req = http::Request::post(format!("http://{addr}/api/v1/ingest/episodes"))
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-type", "application/json")
                    .body(Full::new(body))?;
                let r = client.request(req).await?;
                let status = r.status();
                let _ = r.into_body().collect().await?;
                if status != 201 {
                    bail!("ingest over HTTP answered {status}");
                }
                Ok(())
            }
        }
    })
    .await?;
    let over_http = total / t.elapsed().as_secs_f64();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sightings")
        .fetch_one(&db.pool)
        .await?;
    db.close().await;
    Ok(format!(
        "### Ingest ({} episodes x {} sightings, {concurrency} concurrent writers; {rows} sighting rows at the end)\n\n\
         | path | sightings/s | ratio to raw |\n|---|---:|---:|\n\
         | raw bulk insert (same tables, plain INSERT) | {raw:.0} | 1.00 |\n\
         | `ingest_episode` (store) | {store:.0} | {:.2} |\n\
         | `ingest_episode` retry of the same episodes | {retry:.0} | {:.2} |\n\
         | `POST /api/v1/ingest/episodes` (HTTP, JSON) | {over_http:.0} | {:.2} |\n",
        s.episodes,
        s.per_episode,
        store / raw,
        retry / raw,
        over_http / raw,
    ))
}

fn err(e: qalqan_atlas::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:?}")
}

async fn run_concurrent<F, Fut>(n: usize, jobs: usize, f: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let next = next.clone();
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let e = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if e >= jobs {
                    return Ok::<_, anyhow::Error>(());
                }
                f(e).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn raw_insert(db: &Db, outlet_id: i64, sig: &EpisodeSignal) -> anyhow::Result<()> {
    let _w = db.write().await;
    let mut tx = db.pool.begin().await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO incidents (uuid, outlet_id, kind, title, description, search, status, confidence, tlp,
           started_ms, date_unknown, source, ingest_key, created_by, created_ms, updated_ms)
         VALUES ($1, $2, 'http_flood', 't', 'd', 's', 'reported', 'suspected', 'amber+strict', $3, 0, 'shield', $4, 'raw', $3, $3)
         RETURNING id",
    )
    .bind(format!("raw-{}", sig.episode_id))
    .bind(outlet_id)
    .bind(sig.start_ms)
    .bind(&sig.episode_id)
    .fetch_one(&mut *tx)
    .await?;
    for chunk in sig.indicators.chunks(400) {
        let mut sql = String::from(
            "INSERT INTO indicators (kind, value, first_seen_ms, last_seen_ms) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${})",
                i * 4 + 1,
                i * 4 + 2,
                i * 4 + 3,
                i * 4 + 4
            ));
        }
        sql.push_str(" RETURNING id, value");
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for s in chunk {
            q = q
                .bind("ip")
                .bind(s.value.as_str())
                .bind(sig.start_ms)
                .bind(sig.start_ms);
        }
        let rows = q.fetch_all(&mut *tx).await?;
        let mut ids = std::collections::HashMap::new();
        for r in &rows {
            use sqlx::Row;
            ids.insert(r.try_get::<String, _>("value")?, r.try_get::<i64, _>("id")?);
        }
        let mut sql = String::from(
            "INSERT INTO sightings (indicator_id, incident_id, first_seen_ms, last_seen_ms, count) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            let b = i * 5;
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5
            ));
        }
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for s in chunk {
            let ind = *ids.get(&s.value).context("raw id")?;
            q = q
                .bind(ind)
                .bind(id)
                .bind(sig.start_ms)
                .bind(sig.start_ms)
                .bind(s.count.unwrap_or(1));
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn serve(db: Arc<Db>) -> anyhow::Result<(SocketAddr, HttpClient)> {
    // The server gets a clone of the same pool (and the same SQLite writer lock).
    let atlas = Arc::new(Atlas::new((*db).clone(), false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            qalqan_atlas::app(atlas).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    let client = Client::builder(TokioExecutor::new()).build_http();
    Ok((addr, client))
}

/// Fills a registry with generated incidents and sightings, in SQL (so that building 10 million
/// rows takes a minute, not an hour), then measures reads over HTTP.
async fn read_run(url: &str, b: Backend, s: &Sizes, only: Only) -> anyhow::Result<String> {
    let db = Arc::new(Db::connect(url).await?);
    let outlets = 20i64;
    let mut first_outlet = 0;
    for i in 0..outlets {
        let o = db
            .create_outlet(&format!("outlet-{i}"), &format!("Outlet {i}"), "bench")
            .await
            .map_err(err)?;
        if i == 0 {
            first_outlet = o.id;
        }
    }
    let t = Instant::now();
    let n = s.incidents;
    let series = |n: i64| match b {
        Backend::Sqlite => format!(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) "
        ),
        Backend::Postgres => String::new(),
    };
    let from = |n: i64| match b {
        Backend::Sqlite => "FROM c".to_string(),
        Backend::Postgres => format!("FROM generate_series(1::bigint, {n}) AS c(x)"),
    };
    let uuid = match b {
        Backend::Sqlite => "printf('00000000-0000-4000-8000-%012d', x)",
        Backend::Postgres => "'00000000-0000-4000-8000-' || lpad(x::text, 12, '0')",
    };
    let words = "CASE x % 7 WHEN 0 THEN 'флуд' WHEN 1 THEN 'боты' WHEN 2 THEN 'жалобы' WHEN 3 THEN 'фишинг' WHEN 4 THEN 'угрозы' WHEN 5 THEN 'дефейс' ELSE 'взлом' END";
    let sql = format!(
        "{} INSERT INTO incidents (uuid, outlet_id, kind, title, description, search, status, confidence, tlp,
            started_ms, ended_ms, date_unknown, requests, source, created_by, created_ms, updated_ms)
         SELECT {uuid}, {first_outlet} + (x % {outlets}),
           CASE x % 6 WHEN 0 THEN 'http_flood' WHEN 1 THEN 'bot_comments' WHEN 2 THEN 'bot_followers'
                      WHEN 3 THEN 'threat_comments' WHEN 4 THEN 'mass_complaints' ELSE 'phishing' END,
           'Атака ' || {words} || ' номер ' || x,
           'Описание случая ' || x || ': ' || {words} || ', метка m' || (x % 1000),
           'атака ' || {words} || ' номер ' || x || ' описание случая ' || x || ': ' || {words} || ', метка m' || (x % 1000),
           CASE x % 3 WHEN 0 THEN 'reported' WHEN 1 THEN 'verified' ELSE 'closed' END,
           CASE x % 2 WHEN 0 THEN 'suspected' ELSE 'confirmed' END,
           CASE x % 5 WHEN 0 THEN 'clear' WHEN 1 THEN 'green' WHEN 2 THEN 'amber' WHEN 3 THEN 'amber+strict' ELSE 'red' END,
           1600000000000 + x * 60000, 1600000000000 + x * 60000 + 600000, 0, x * 10, 'manual', 'bench',
           1600000000000 + x * 60000, 1600000000000 + x * 60000
         {}",
        series(n),
        from(n)
    );
    sqlx::query(AssertSqlSafe(sql)).execute(&db.pool).await?;
    let first_incident: i64 = sqlx::query_scalar("SELECT MIN(id) FROM incidents")
        .fetch_one(&db.pool)
        .await?;
    let ni = s.indicators;
    let sql = format!(
        "{} INSERT INTO indicators (kind, value, first_seen_ms, last_seen_ms)
         SELECT 'ip', '10.' || ((x / 65536) % 256) || '.' || ((x / 256) % 256) || '.' || (x % 256), 1600000000000, 1700000000000 {}",
        series(ni),
        from(ni)
    );
    sqlx::query(AssertSqlSafe(sql)).execute(&db.pool).await?;
    let first_indicator: i64 = sqlx::query_scalar("SELECT MIN(id) FROM indicators")
        .fetch_one(&db.pool)
        .await?;
    // Sightings: incident k gets `per` indicators with ids spread over the whole set, so an
    // indicator appears in about incidents * per / indicators incidents.
    let per = s.sightings_per_incident;
    let ns = n * per;
    let (series_s, from_s) = match b {
        Backend::Sqlite => (
            format!(
                "WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x < {}) ",
                ns - 1
            ),
            "FROM c".to_string(),
        ),
        Backend::Postgres => (
            String::new(),
            format!("FROM generate_series(0::bigint, {}) AS c(x)", ns - 1),
        ),
    };
    let sql = format!(
        "{series_s} INSERT INTO sightings (indicator_id, incident_id, first_seen_ms, last_seen_ms, count)
         SELECT {first_indicator} + ((x * 7919) % {ni}), {first_incident} + (x / {per}),
                1600000000000 + x, 1600000000000 + x + 1000, 1 + (x % 50) {from_s}"
    );
    sqlx::query(AssertSqlSafe(sql)).execute(&db.pool).await?;
    // Fresh statistics, as a running database would have, so both planners see the real sizes.
    sqlx::query("ANALYZE").execute(&db.pool).await?;
    let fill = t.elapsed();
    let counted: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sightings")
        .fetch_one(&db.pool)
        .await?;
    eprintln!(
        "filled {n} incidents and {counted} sightings in {:.0} s",
        fill.as_secs_f64()
    );

    // A viewer of outlet-0 (sees its own, CLEAR, GREEN; AMBER/RED of others stay hidden).
    let viewer = db
        .create_token(None, first_outlet, "bench-viewer", Role::Viewer)
        .await
        .map_err(err)?;
    db.create_user(
        None,
        first_outlet,
        "bench@example.kz",
        "Bench",
        "bench-password-123",
        Role::Viewer,
    )
    .await
    .map_err(err)?;
    let (addr, client) = serve(db.clone()).await?;
    // The STIX export, in bundles a hundred times apart in size.
    let windows: Vec<i64> = [n / 1000, n / 100, n / 10]
        .into_iter()
        .filter(|&w| w > 0)
        .collect();
    if only == Only::Export {
        let export_table = export::measure(&client, addr, &viewer, &windows).await?;
        db.close().await;
        return Ok(format!(
            "\n### STIX export ({n} incidents, {counted} sightings, {ni} indicators, 20 outlets; filled in {:.0} s)\n{export_table}",
            fill.as_secs_f64()
        ));
    }
    let cookie = login(&client, addr).await?;
    // Incident number x (a multiple of 20: TLP:CLEAR, so the viewer sees it) and the first
    // indicator generated for it, which other incidents also hold.
    let x = n / 2 / 20 * 20;
    let some_incident = format!("00000000-0000-4000-8000-{x:012}");
    let xi = ((x - 1) * per * 7919) % ni + 1;
    let some_ip = format!(
        "10.{}.{}.{}",
        (xi / 65536) % 256,
        (xi / 256) % 256,
        xi % 256
    );
    let deep_cursor = format!(
        "{}.{}",
        1_600_000_000_000i64 + (n / 3) * 60_000,
        first_incident + n / 3
    );
    let cases: Vec<(&str, String, bool)> = vec![
        ("list, first page (50)", "/api/v1/incidents".into(), false),
        (
            "list, filter kind",
            "/api/v1/incidents?kind=bot_comments".into(),
            false,
        ),
        (
            "list, filter status + TLP",
            "/api/v1/incidents?status=verified&tlp=green".into(),
            false,
        ),
        (
            "list, deep page (cursor)",
            format!("/api/v1/incidents?cursor={deep_cursor}"),
            false,
        ),
        (
            "search, common word",
            "/api/v1/incidents?q=%D1%84%D0%BB%D1%83%D0%B4".into(),
            false,
        ),
        (
            "search, rare word (one match)",
            format!(
                "/api/v1/incidents?q=%D0%BD%D0%BE%D0%BC%D0%B5%D1%80+{}",
                n / 2 / 20 * 20
            ),
            false,
        ),
        (
            "search, no match",
            "/api/v1/incidents?q=nothing-matches".into(),
            false,
        ),
        (
            "incident",
            format!("/api/v1/incidents/{some_incident}"),
            false,
        ),
        (
            "incident indicators (100)",
            format!("/api/v1/incidents/{some_incident}/indicators"),
            false,
        ),
        (
            "indicator across incidents",
            format!("/api/v1/indicators?kind=ip&value={some_ip}"),
            false,
        ),
        ("dashboard list page", "/".into(), true),
        (
            "dashboard search page",
            "/?q=%D1%84%D0%BB%D1%83%D0%B4".into(),
            true,
        ),
    ];
    let mut table = format!(
        "\n### Reading ({n} incidents, {counted} sightings, {} indicators, 20 outlets; filled in {:.0} s)\n\n\
         Sequential requests on one keep-alive connection, {} per row after 10 warm-up requests; a viewer of one outlet.\n\n\
         | request | status | p50 ms | p95 ms | p99 ms | max ms | goal p99 ≤ 50 ms |\n|---|---|---:|---:|---:|---:|---|\n",
        ni,
        fill.as_secs_f64(),
        s.requests
    );
    // The map pages, over the same registry.
    let map_fill = map::prepare(&db).await?;
    eprintln!("{map_fill}");
    let admin = map::admin_session(&db, &client, addr, first_outlet + 1).await?;
    let map_table = map::measure(&client, addr, &cookie, &admin, s.requests / 2).await?;
    let export_table = export::measure(&client, addr, &viewer, &windows).await?;
    let map_table = format!("{map_table}\n### STIX export\n{export_table}");
    if only == Only::Map {
        db.close().await;
        return Ok(format!(
            "\n### Map pages ({n} incidents, {counted} sightings, {ni} indicators, 20 outlets; filled in {:.0} s)\n\n{map_fill}\n{map_table}",
            fill.as_secs_f64()
        ));
    }
    for (name, path, page) in cases {
        let auth = if page {
            ("cookie", format!("qalqan_session={cookie}"))
        } else {
            ("authorization", format!("Bearer {viewer}"))
        };
        let mut lat = Vec::with_capacity(s.requests);
        let mut status = 0u16;
        for i in 0..s.requests + 10 {
            let req = http::Request::get(format!("http://{addr}{path}"))
                .header(auth.0, auth.1.as_str())
                .body(Full::new(Bytes::new()))?;
            let t = Instant::now();
            let r = client.request(req).await?;
            status = r.status().as_u16();
            let _ = r.into_body().collect().await?;
            if i >= 10 {
                lat.push(t.elapsed());
            }
            if status == 404 && page {
                break;
            }
        }
        if lat.is_empty() {
            table.push_str(&format!(
                "| {name} | {status} (no such page yet) | – | – | – | – | – |\n"
            ));
            continue;
        }
        lat.sort();
        let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let p99 = ms(p(0.99));
        table.push_str(&format!(
            "| {name} | {status} | {:.1} | {:.1} | {p99:.1} | {:.1} | {} |\n",
            ms(p(0.5)),
            ms(p(0.95)),
            ms(*lat.last().unwrap_or(&Duration::ZERO)),
            if p99 <= 50.0 { "met" } else { "**not met**" }
        ));
    }
    table.push_str(&format!("\n### Map pages\n\n{map_fill}\n{map_table}"));
    db.close().await;
    Ok(table)
}

async fn login(client: &HttpClient, addr: SocketAddr) -> anyhow::Result<String> {
    let req = http::Request::post(format!("http://{addr}/api/v1/session"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"email":"bench@example.kz","password":"bench-password-123"}"#,
        )))?;
    let r = client.request(req).await?;
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("qalqan_session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
        .context("no session cookie")?;
    Ok(cookie)
}
