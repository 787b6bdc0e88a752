//! `qalqan demo`: the whole system on loopback in one command. A sample newsroom (articles, an
//! RSS feed, a deliberately slow search, an admin path), the shield in front of it, and an atlas
//! on an embedded SQLite file with a sample task force; with `--attack`, a Kursiv-style flood
//! replayed against the shield while the terminal shows what happens, ending with the new
//! incident in the atlas. Everything runs in this one process: Ctrl-C stops all of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use qalqan_drill::{Options, Origin, OriginConfig, Progress, Scenario};
use tokio::sync::watch;

use crate::demo_seed;

#[derive(Args)]
pub struct DemoArgs {
    /// Replay a Kursiv-style search flood against the shield, with a live view.
    #[arg(long)]
    attack: bool,
    /// Print one JSON line with the URLs and demo credentials once everything is up (and one
    /// more when an attack replay ends), instead of text.
    #[arg(long)]
    json: bool,
    /// First of four consecutive loopback ports: site (through the shield), atlas, shield
    /// metrics, sample origin. 0 takes any free ports.
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    port: u16,
    /// Directory for the demo's files (atlas database, episodes, access log). Default: a new
    /// temporary directory, removed when the demo stops.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Keep the directory when the demo stops.
    #[arg(long)]
    keep: bool,
    /// Seconds of flood in the attack replay.
    #[arg(long, value_name = "S", default_value_t = 40)]
    attack_seconds: u64,
}

/// What `--json` prints once everything is up.
#[derive(serde::Serialize)]
struct Ready<'a> {
    event: &'static str,
    site: String,
    atlas: String,
    taxii: String,
    metrics: String,
    origin: String,
    outlet: &'static str,
    logins: &'a [demo_seed::Login],
    api_token: &'a str,
    data_dir: String,
}

pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (10..=600).contains(&a.attack_seconds),
        "--attack-seconds must be 10 to 600"
    );
    anyhow::ensure!(
        a.port == 0 || a.port <= 65_532,
        "--port must leave room for four consecutive ports"
    );
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QALQAN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let (dir, temporary) = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            anyhow::ensure!(
                !d.join("atlas.db").exists(),
                "{} already holds a demo atlas; remove it or choose another --dir",
                d.display()
            );
            (d.clone(), false)
        }
        None => {
            let d = std::env::temp_dir().join(format!(
                "qalqan-demo-{}-{}",
                std::process::id(),
                qalqan_atlas::model::now_ms()
            ));
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
            (d, true)
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let r = rt.block_on(demo(&a, &dir));
    rt.shutdown_timeout(Duration::from_secs(2));
    if temporary && !a.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else if !a.json {
        eprintln!("demo files kept in {}", dir.display());
    }
    r
}

fn port(base: u16, i: u16) -> u16 {
    if base == 0 { 0 } else { base + i }
}

/// The shield's configuration for the demo: the defaults, plus trust in the drill as a proxy on
/// loopback, a shorter learning time (a demo cannot wait the 30 s a restart normally takes), and
/// pushes to the demo atlas every few seconds.
fn shield_toml(dir: &Path, site: u16, admin: u16, origin: &str, atlas: &str) -> String {
    let d = dir
        .display()
        .to_string()
        .replace('\\', "/")
        .replace('"', "");
    format!(
        r#"[server]
threads = 1

[[listen]]
address = "127.0.0.1:{site}"

[admin]
address = "127.0.0.1:{admin}"

[origin]
url = "{origin}"

[client]
trusted_proxies = ["127.0.0.0/8"]

[access_log]
path = "{d}/access.log"

[attack]
episodes_path = "{d}/episodes.jsonl"
warmup = "10s"
cooldown = "20s"

[atlas]
url = "{atlas}"
token_file = "{d}/ingest.token"
site = "http://dala.example"
node = "demo"
send_while_open = "5s"
"#
    )
}

async fn demo(a: &DemoArgs, dir: &Path) -> anyhow::Result<()> {
    let lo = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    let now = qalqan_atlas::model::now_ms();

    // The sample site.
    let origin = Origin::start(
        lo(port(a.port, 3)),
        OriginConfig {
            newest_ms: now - 3_600_000,
            ..OriginConfig::default()
        },
    )
    .await
    .context("starting the sample site")?;

    // The atlas, seeded.
    let db_path = dir.join("atlas.db");
    let db = qalqan_atlas::Db::connect(&format!("sqlite://{}", db_path.display())).await?;
    let seeded = demo_seed::seed(&db, now)
        .await
        .context("filling the demo atlas")?;
    // The sample site's feed, polled as `qalqan atlas` polls outlets' feeds (loopback allowed:
    // the demo's site is on loopback), campaign proposals, and the map's geo tables.
    let home = db.outlet_by_slug(demo_seed::HOME).await?;
    let home_admin = qalqan_atlas::Actor {
        outlet_id: home.id,
        role: qalqan_atlas::model::Role::Admin,
        label: "cli:demo".into(),
        user_id: None,
    };
    db.add_feed(
        &home_admin,
        &qalqan_atlas::feeds::FeedIn {
            url: format!("{}/feed.xml", origin.url()),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("adding the demo feed: {e}"))?;
    tokio::spawn(qalqan_atlas::feeds::poll_loop(
        db.clone(),
        qalqan_atlas::feeds::PollConfig {
            tick: Duration::from_secs(5),
            allow_private: true,
            ..Default::default()
        },
    ));
    tokio::spawn(qalqan_atlas::campaigns::run_periodically(
        db.clone(),
        qalqan_atlas::campaigns::Params::default(),
    ));
    qalqan_atlas::map::preload();
    let atlas = Arc::new(qalqan_atlas::Atlas::new(db.clone(), false));
    let atlas_sock = tokio::net::TcpListener::bind(lo(port(a.port, 1)))
        .await
        .with_context(|| format!("cannot listen on {}", lo(port(a.port, 1))))?;
    let atlas_url = format!("http://{}", atlas_sock.local_addr()?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut atlas_stop = stop_rx.clone();
    let atlas_task = tokio::spawn(async move {
        let _ = axum::serve(
            atlas_sock,
            qalqan_atlas::app(atlas).into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = atlas_stop.wait_for(|s| *s).await;
        })
        .await;
    });

    // The shield in front of the site, reporting to the atlas.
    write_secret(&dir.join("ingest.token"), &seeded.ingest_token)?;
    let toml = shield_toml(
        dir,
        port(a.port, 0),
        port(a.port, 2),
        &origin.url(),
        &atlas_url,
    );
    let config = qalqan_shield::RawConfig::from_toml(&toml)
        .map_err(|e| anyhow::anyhow!("the demo's shield configuration: {e}"))?;
    let shield = qalqan_shield::start(config)
        .await
        .context("starting the shield")?;
    let site = format!(
        "http://{}",
        shield
            .listen
            .first()
            .context("the shield has no listener")?
    );
    let admin = format!(
        "http://{}",
        shield.admin.context("the shield has no admin listener")?
    );

    let ready = Ready {
        event: "ready",
        site: site.clone(),
        atlas: atlas_url.clone(),
        taxii: format!("{atlas_url}/taxii2/"),
        metrics: format!("{admin}/metrics"),
        origin: origin.url(),
        outlet: demo_seed::HOME,
        logins: &seeded.logins,
        api_token: &seeded.api_token,
        data_dir: dir.display().to_string(),
    };
    if a.json {
        println!("{}", serde_json::to_string(&ready)?);
    } else {
        print_ready(&ready);
    }

    // Ctrl-C or SIGTERM stops everything.
    let signals = tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });

    if a.attack {
        attack(
            a,
            &site,
            &origin.url(),
            &admin,
            &atlas_url,
            &db,
            stop_rx.clone(),
        )
        .await?;
        if !a.json {
            println!("\nThe demo keeps running so you can look around. Ctrl-C stops it.");
        }
    } else if !a.json {
        println!("\nCtrl-C stops the demo.");
    }
    let mut stopped = stop_rx.clone();
    let _ = stopped.wait_for(|s| *s).await;
    if !a.json {
        eprintln!("stopping…");
    }
    signals.abort();
    shield.shutdown().await;
    let _ = atlas_task.await;
    origin.stop().await;
    db.close().await;
    Ok(())
}

fn print_ready(r: &Ready<'_>) {
    println!("Qalqan demo is running (everything on this machine, loopback only).\n");
    println!("  Site through the shield  {}", r.site);
    println!("  Atlas dashboard          {}", r.atlas);
    println!("  TAXII 2.1 root           {}", r.taxii);
    println!("  Shield metrics           {}", r.metrics);
    println!("  Sample site (origin)     {}", r.origin);
    println!("\nDemo log-ins for the atlas:");
    for l in r.logins {
        println!(
            "  {:<20} {:<9} {}  {}",
            l.email, l.role, l.password, l.outlet
        );
    }
    println!(
        "\nAPI token of outlet `{}` (editor): {}",
        r.outlet, r.api_token
    );
    println!(
        "  curl -H 'Authorization: Bearer {}' {}/api/v1/incidents",
        r.api_token, r.atlas
    );
    println!("\nTry an attack: qalqan demo --attack (or, in another terminal:");
    println!(
        "  qalqan drill --target {} --origin {} --admin {} --scenario kursiv)",
        r.site,
        r.origin,
        r.metrics.trim_end_matches("/metrics")
    );
}

fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(secret.as_bytes())?;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// The attack replay: the built-in Kursiv scenario with demo-sized phases, a live line per
/// second, then the incident the shield filed in the atlas.
async fn attack(
    a: &DemoArgs,
    site: &str,
    origin: &str,
    admin: &str,
    atlas: &str,
    db: &qalqan_atlas::Db,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut sc = Scenario::built_in("kursiv").context("the built-in kursiv scenario")?;
    // The shield learns for 10 s in the demo configuration; 15 s of readers covers it.
    sc.run.warmup = 15;
    sc.run.baseline = 5;
    sc.run.attack = a.attack_seconds;
    let (ptx, mut prx) = tokio::sync::mpsc::channel::<Progress>(64);
    let json = a.json;
    if !json {
        println!(
            "\nReplaying a Kursiv-style flood: {} s of readers, then {} s of {:.0} searches/s from {} addresses.",
            sc.run.warmup + sc.run.baseline,
            sc.run.attack,
            sc.attackers[0].rate,
            sc.attackers[0].addresses + sc.attackers[0].solving_addresses
        );
    }
    let printer = tokio::spawn(async move {
        while let Some(p) = prx.recv().await {
            if !json {
                println!("{}", crate::drill_cmd::live_line(&p));
            }
        }
    });
    let started = qalqan_atlas::model::now_ms();
    let result = qalqan_drill::run(
        &sc,
        site,
        Options {
            peer: "qalqan demo".into(),
            origin: Some(origin.into()),
            admin: Some(admin.into()),
            progress: Some(ptx),
            stop: Some(stop.clone()),
        },
    )
    .await?;
    let _ = printer.await;
    let summary = qalqan_drill::summary::summarise(&result, site);
    if !json {
        println!("\n{}", summary.table());
    }
    // The shield pushes the open episode every 5 s; wait for it to land.
    let incident = wait_for_incident(db, started, stop).await;
    match (&incident, json) {
        (Some(id), true) => println!(
            "{}",
            serde_json::json!({
                "event": "attack_done",
                "incident": id,
                "incident_url": format!("{atlas}/incidents/{id}"),
                "summary": summary,
            })
        ),
        (None, true) => println!(
            "{}",
            serde_json::json!({"event": "attack_done", "incident": null, "summary": summary})
        ),
        (Some(id), false) => println!(
            "The shield filed the attack in the atlas: {atlas}/incidents/{id} (log in as admin@dala.demo)."
        ),
        (None, false) => println!(
            "No incident reached the atlas within a minute; see {}/episodes.jsonl.",
            a.dir
                .as_deref()
                .map_or_else(|| "the demo directory".into(), |d| d.display().to_string())
        ),
    }
    Ok(())
}

/// The id of the first incident filed by the shield since `since_ms`, polled for up to a minute.
async fn wait_for_incident(
    db: &qalqan_atlas::Db,
    since_ms: i64,
    stop: watch::Receiver<bool>,
) -> Option<String> {
    let Ok(home) = db.outlet_by_slug(demo_seed::HOME).await else {
        return None;
    };
    let actor = qalqan_atlas::Actor {
        outlet_id: home.id,
        role: qalqan_atlas::model::Role::Viewer,
        label: "cli:demo".into(),
        user_id: None,
    };
    let filter = qalqan_atlas::store::ListFilter {
        kind: Some("http_flood".into()),
        outlet: Some(demo_seed::HOME.into()),
        from: Some(qalqan_atlas::model::format_time(since_ms - 120_000)),
        ..Default::default()
    };
    for _ in 0..60 {
        if *stop.borrow() {
            return None;
        }
        if let Ok(page) = db.incidents(&actor, &filter).await
            && let Some(i) = page.items.first()
        {
            return Some(i.id.clone());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    None
}
