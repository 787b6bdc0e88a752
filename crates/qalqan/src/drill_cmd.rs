//! `qalqan drill`: rehearse an attack against your own shield, on this machine only.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use qalqan_drill::scenario::{BUILT_IN, Scenario};
use qalqan_drill::{Options, Progress};

#[derive(Args)]
pub struct DrillArgs {
    /// The site to rehearse against, through your shield: http://127.0.0.1:PORT. Anything
    /// outside 127.0.0.0/8 (or [::1]) is refused before a single request is sent.
    #[arg(long, value_name = "URL")]
    target: String,
    /// A built-in scenario (`kursiv`, `slowloris`) or a scenario file (TOML).
    #[arg(long, value_name = "NAME|FILE", default_value = "kursiv")]
    scenario: String,
    /// The sample origin's URL (from `qalqan demo`), to count what reached it.
    #[arg(long, value_name = "URL")]
    origin: Option<String>,
    /// The shield's admin listener (http://127.0.0.1:9180), to follow its mode and decisions.
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
    /// Override the scenario's phases, in seconds.
    #[arg(long, value_name = "S")]
    warmup: Option<u64>,
    #[arg(long, value_name = "S")]
    baseline: Option<u64>,
    #[arg(long, value_name = "S")]
    attack: Option<u64>,
    /// Override the scenario's request budget.
    #[arg(long, value_name = "N")]
    max_requests: Option<u64>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write every measurement (per second, per page view) as JSON to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// No per-second progress lines on the terminal.
    #[arg(long)]
    quiet: bool,
    /// Check the scenario and the target, print the scenario, send nothing.
    #[arg(long)]
    check: bool,
}

/// Reads a built-in scenario by name, or a file.
pub fn load_scenario(arg: &str) -> anyhow::Result<Scenario> {
    if let Some((_, text)) = BUILT_IN.iter().find(|(n, _)| *n == arg) {
        return Scenario::from_toml(text).map_err(|e| anyhow::anyhow!("built-in `{arg}`: {e}"));
    }
    let text = std::fs::read_to_string(arg).with_context(|| {
        let names: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
        format!(
            "`{arg}` is neither a built-in scenario ({}) nor a readable file",
            names.join(", ")
        )
    })?;
    Scenario::from_toml(&text).map_err(|e| {
        let lines: Vec<String> = e
            .problems
            .iter()
            .map(|p| format!("  {}: {}", p.path, p.message))
            .collect();
        anyhow::anyhow!("scenario file {arg} has errors:\n{}", lines.join("\n"))
    })
}

pub fn run(a: DrillArgs) -> anyhow::Result<()> {
    // The target first: a refused target costs nothing, not even reading the scenario.
    let target = qalqan_drill::http::loopback_base(&a.target)?;
    let origin = a
        .origin
        .as_deref()
        .map(qalqan_drill::http::loopback_base)
        .transpose()
        .context("--origin")?;
    let admin = a
        .admin
        .as_deref()
        .map(qalqan_drill::http::loopback_base)
        .transpose()
        .context("--admin")?;
    let mut sc = load_scenario(&a.scenario)?;
    if let Some(s) = a.warmup {
        sc.run.warmup = s;
    }
    if let Some(s) = a.baseline {
        sc.run.baseline = s;
    }
    if let Some(s) = a.attack {
        sc.run.attack = s;
    }
    if let Some(n) = a.max_requests {
        sc.run.max_requests = n;
    }
    sc.check().map_err(|e| anyhow::anyhow!("{e}"))?;
    if a.check {
        println!(
            "{}: ok; target {target}; {} s; {} reader population(s), {} attacker population(s); at most {} requests",
            a.scenario,
            sc.seconds(),
            sc.readers.len(),
            sc.attackers.len(),
            sc.run.max_requests
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let json = a.json;
    let quiet = a.quiet;
    let out = a.out.clone();
    let r = rt.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (ptx, mut prx) = tokio::sync::mpsc::channel::<Progress>(64);
        let printer = tokio::spawn(async move {
            while let Some(p) = prx.recv().await {
                if !quiet {
                    eprintln!("{}", live_line(&p));
                }
            }
        });
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("stopping (Ctrl-C)…");
                let _ = stop_tx.send(true);
            }
        });
        eprintln!(
            "drill `{}` against {target}: {} s ({} warm-up, {} baseline, {} attack), at most {} requests",
            sc.name,
            sc.seconds(),
            sc.run.warmup,
            sc.run.baseline,
            sc.run.attack,
            sc.run.max_requests
        );
        let result = qalqan_drill::run(
            &sc,
            &target,
            Options {
                peer: target.clone(),
                origin,
                admin,
                progress: Some(ptx),
                stop: Some(stop_rx),
            },
        )
        .await;
        let _ = printer.await;
        result.map(|r| (r, target))
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    let (result, target) = r?;
    if let Some(f) = &out {
        std::fs::write(f, serde_json::to_string(&result)?)
            .with_context(|| format!("cannot write {}", f.display()))?;
    }
    let summary = qalqan_drill::summary::summarise(&result, &target);
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.table());
    }
    Ok(())
}

/// One terminal line per second of a drill: phase, readers, attack outcomes, origin, mode.
pub fn live_line(p: &Progress) -> String {
    let d = &p.data;
    let readers = if p.reader_views == 0 {
        "readers –".to_string()
    } else {
        format!(
            "readers {}/{} ok, p95 {}",
            p.reader_ok,
            p.reader_views,
            p.reader_p95_ms.map_or("–".into(), |v| format!("{v:.0} ms"))
        )
    };
    let mut s = format!(
        "{:>4}/{} s {:<8} {readers}",
        p.second + 1,
        p.total_seconds,
        p.phase
    );
    if d.flood_sent + d.flood_skipped > 0 {
        s.push_str(&format!(
            " | attack {} sent: {} ok, {} challenged, {} limited, {} blocked, {} 5xx, {} failed",
            d.flood_sent,
            d.flood_ok,
            d.flood_challenged,
            d.flood_limited,
            d.flood_blocked,
            d.flood_unavailable,
            d.flood_errors + d.flood_other
        ));
    }
    if d.slow_open > 0 || d.slow_closed > 0 {
        s.push_str(&format!(
            " | slow open {} (closed {})",
            d.slow_open, d.slow_closed
        ));
    }
    let origin = d.origin_article + d.origin_search + d.origin_other;
    if origin > 0 || !d.mode.is_empty() {
        s.push_str(&format!(" | origin {origin}/s"));
    }
    if !d.decisions.is_empty() {
        let parts: Vec<String> = d
            .decisions
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        s.push_str(&format!(" | shield {}", parts.join(", ")));
    }
    if !d.mode.is_empty() {
        s.push_str(&format!(" | mode {}", d.mode));
    }
    s
}
