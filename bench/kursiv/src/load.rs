//! `load`: the Kursiv scenario's readers and flood against one peer, written as a JSON timeline.
//! The engine is the drill's (`qalqan_drill::engine`); this file maps the benchmark's flags onto
//! a scenario, so the benchmark and `qalqan drill --scenario kursiv` run the same load.

use std::path::PathBuf;

use anyhow::Context;
use qalqan_drill::scenario::{AttackKind, Attackers, Networks, Readers, RunSpec, Scenario, Source};

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
    flood_concurrency: u32,
    /// Where the flood's addresses are: `own` networks far from the readers' (a botnet abroad)
    /// or inside the `readers`' own /16 (a farm on the same access network).
    #[arg(long, default_value = "own", value_parser = ["own", "readers"])]
    flood_networks: String,
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

fn scenario(a: &Args) -> Scenario {
    let base = Scenario::built_in("kursiv").map(|k| k.attackers[0].clone());
    let mut flood = base.unwrap_or(Attackers {
        name: "search-flood".into(),
        kind: AttackKind::Flood,
        rate: 0.0,
        path: "/search".into(),
        param: "q".into(),
        fixed_queries: vec!["number one".into()],
        fixed_share: 0.5,
        addresses: 1,
        solving_addresses: 0,
        concurrency: 1,
        connections: 0,
        interval: 5,
        networks: Networks::Own,
    });
    flood.rate = a.flood_rate;
    flood.addresses = a.flood_addresses;
    flood.solving_addresses = a.solver_addresses;
    flood.concurrency = a.flood_concurrency;
    flood.networks = if a.flood_networks == "readers" {
        Networks::Readers
    } else {
        Networks::Own
    };
    Scenario {
        name: "kursiv".into(),
        description: String::new(),
        run: RunSpec {
            warmup: a.warmup,
            baseline: a.baseline,
            attack: a.attack,
            timeout: a.timeout,
            seed: a.seed,
            max_requests: qalqan_drill::scenario::MAX_REQUESTS,
            source: Source::Forwarded,
        },
        readers: vec![Readers {
            name: "readers".into(),
            count: a.readers,
            rate: a.reader_rate,
            search_share: a.search_share,
            articles: a.articles,
            queries: Vec::new(),
            cookies: true,
            solve_challenges: true,
        }],
        attackers: if a.flood_rate > 0.0 {
            vec![flood]
        } else {
            Vec::new()
        },
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let sc = scenario(&a);
    eprintln!(
        "load against {} ({}): {} readers at {}/s, flood {}/s from {}+{} addresses; \
         warm-up {} s, baseline {} s, attack {} s",
        a.peer,
        a.target,
        a.readers,
        a.reader_rate,
        a.flood_rate,
        a.flood_addresses,
        a.solver_addresses,
        a.warmup,
        a.baseline,
        a.attack
    );
    let result = qalqan_drill::run(
        &sc,
        &a.target,
        qalqan_drill::Options {
            peer: a.peer.clone(),
            origin: Some(a.origin.clone()),
            admin: a.admin.clone(),
            ..Default::default()
        },
    )
    .await?;
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
