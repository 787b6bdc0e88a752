//! `qalqan`: one binary for the whole system. This file only parses arguments and starts
//! things; the work lives in the library crates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
mod atlas_cmd;
mod demo_cmd;
mod demo_seed;
mod drill_cmd;
mod evidence_cmd;
mod sweep_cmd;
mod sweep_live;

use qalqan_shield::config::{RawAdmin, RawClient, RawConfig, RawListener, RawOrigin, RawServer};

#[derive(Parser)]
#[command(
    name = "qalqan",
    version,
    about = "Free, self-hosted cyber-defence for independent newsrooms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the shield: a reverse proxy that keeps the site readable under an HTTP flood.
    Shield(ShieldArgs),
    /// Run the atlas: the task force's shared attack registry (dashboard and API).
    Atlas(atlas_cmd::AtlasArgs),
    /// Find bot floods in exported social-channel data (Telegram, YouTube, CSV).
    Sweep(sweep_cmd::SweepArgs),
    /// Check evidence packages made by the atlas (for the police and lawyers who receive them).
    #[command(subcommand)]
    Evidence(evidence_cmd::EvidenceCmd),
    /// Start a whole Qalqan on loopback (sample site, shield, atlas) and, with --attack, stop a
    /// Kursiv-style flood while you watch.
    Demo(demo_cmd::DemoArgs),
    /// Rehearse an attack against your own shield on this machine (loopback targets only).
    Drill(drill_cmd::DrillArgs),
    /// Print or check configuration files.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Country and autonomous-system data for attack episodes.
    #[command(subcommand)]
    Geo(GeoCmd),
}

#[derive(Subcommand)]
enum GeoCmd {
    /// Convert the upstream `@ip-location-db` files into the compact files the shield loads
    /// (`[geo] dir`); `scripts/update-geo.sh` fetches them from npm and runs this.
    Build {
        /// Country MMDB with IPv4 and IPv6 (geo-whois-asn-country.mmdb).
        #[arg(long, value_name = "FILE")]
        country_mmdb: PathBuf,
        /// IPv4 ASN CSV (asn-ipv4.csv).
        #[arg(long, value_name = "FILE")]
        asn_csv_v4: PathBuf,
        /// IPv6 ASN CSV (asn-ipv6.csv).
        #[arg(long, value_name = "FILE")]
        asn_csv_v6: PathBuf,
        /// Directory for country.txt.gz and asn.txt.gz.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A line of provenance written at the top of both files (repeatable).
        #[arg(long, value_name = "TEXT")]
        note: Vec<String>,
    },
    /// Look addresses up: country and autonomous system.
    Lookup {
        /// Addresses, IPv4 or IPv6.
        #[arg(required = true)]
        ip: Vec<std::net::IpAddr>,
        /// Data built by `qalqan geo build` (default: the data built into this binary).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct ShieldArgs {
    #[command(subcommand)]
    action: Option<ShieldCmd>,
    /// Configuration file (TOML). Without it, the flags below give a quick setup with safe defaults.
    #[arg(long, short, value_name = "FILE", conflicts_with_all = ["listen", "upstream", "admin", "trusted_proxy"])]
    config: Option<PathBuf>,
    /// Address to accept clients on (repeatable).
    #[arg(long, value_name = "IP:PORT")]
    listen: Vec<String>,
    /// The outlet's site, e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// Admin listener for /metrics and /healthz.
    #[arg(long, value_name = "IP:PORT")]
    admin: Option<String>,
    /// A CDN or load balancer whose X-Forwarded-For is believed (repeatable).
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    trusted_proxy: Vec<String>,
    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum ShieldCmd {
    /// List the attack episodes a shield recorded (its `[attack] episodes_path` file).
    Episodes {
        /// The episodes file.
        #[arg(long, value_name = "FILE", default_value = "qalqan-episodes.jsonl")]
        file: PathBuf,
        /// Print the raw JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Set the attack mode of a running shield through its admin listener.
    Mode {
        /// `under-attack` (with --for) or `auto`.
        #[arg(value_parser = ["under-attack", "auto"])]
        mode: String,
        /// How long the manual mode lasts, e.g. 30m, 2h.
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// The shield's admin listener.
        #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:9180")]
        admin: String,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print a complete, commented configuration with every default.
    Default,
    /// Check a configuration file and report every problem at once.
    Check {
        /// The file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Shield(a) => shield(a),
        Command::Atlas(a) => atlas_cmd::run(a),
        Command::Sweep(a) => sweep_cmd::run(a),
        Command::Evidence(cmd) => evidence_cmd::run(cmd),
        Command::Demo(a) => demo_cmd::run(a),
        Command::Drill(a) => drill_cmd::run(a),
        Command::Config(ConfigCmd::Default) => {
            print!("{}", qalqan_shield::config::DEFAULT_TOML);
            Ok(())
        }
        Command::Config(ConfigCmd::Check { file }) => check(&file),
        Command::Geo(cmd) => geo(cmd),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qalqan: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(file: &std::path::Path) -> anyhow::Result<()> {
    let cfg = qalqan_shield::load_config(file)?;
    for w in &cfg.warnings {
        println!("warning: {w}");
    }
    println!(
        "{}: ok ({} route classes)",
        file.display(),
        cfg.routes.len()
    );
    Ok(())
}

fn geo(cmd: GeoCmd) -> anyhow::Result<()> {
    match cmd {
        GeoCmd::Build {
            country_mmdb,
            asn_csv_v4,
            asn_csv_v6,
            out,
            note,
        } => {
            let sources = qalqan_geo::build::Sources {
                country_mmdb,
                asn_csv_v4,
                asn_csv_v6,
            };
            let started = std::time::Instant::now();
            let r = qalqan_geo::build::build(&sources, &out, &note)?;
            println!(
                "{}: country {} networks -> {} IPv4 + {} IPv6 ranges ({} bytes); ASN {} rows, {} systems -> {} IPv4 + {} IPv6 ranges ({} bytes); {} overlaps cut; {:.1} s",
                out.display(),
                r.country_networks,
                r.country_ranges.0,
                r.country_ranges.1,
                r.bytes.0,
                r.asn_rows,
                r.systems,
                r.asn_ranges.0,
                r.asn_ranges.1,
                r.bytes.1,
                r.overlaps,
                started.elapsed().as_secs_f64(),
            );
            Ok(())
        }
        GeoCmd::Lookup { ip, dir } => {
            let started = std::time::Instant::now();
            let g = match &dir {
                Some(d) => std::sync::Arc::new(qalqan_geo::Geo::load_dir(d)?),
                None => qalqan_geo::Geo::embedded()?,
            };
            eprintln!(
                "loaded in {:.0} ms, {:.1} MiB",
                started.elapsed().as_secs_f64() * 1000.0,
                g.memory_bytes() as f64 / f64::from(1 << 20)
            );
            for a in ip {
                let cc = g.country(a).map_or_else(
                    || "-".to_string(),
                    |c| String::from_utf8_lossy(&c).into_owned(),
                );
                let asn = g
                    .asn(a)
                    .map_or_else(|| "-".to_string(), |x| format!("AS{} {}", x.number, x.org));
                println!("{a}\t{cc}\t{asn}");
            }
            Ok(())
        }
    }
}

/// Asks a running shield's admin listener to change its mode; prints the new state.
fn set_mode(mode: &str, duration: Option<&str>, admin: &str) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let query = match (mode, duration) {
        ("auto", _) => "set=auto".to_string(),
        (_, Some(d)) => {
            qalqan_shield::config::parse_duration(d).map_err(|e| anyhow::anyhow!("--for: {e}"))?;
            format!("set=under-attack&for={d}")
        }
        (_, None) => anyhow::bail!("under-attack needs --for DURATION, e.g. --for 2h"),
    };
    let addr: std::net::SocketAddr = admin
        .parse()
        .with_context(|| format!("--admin `{admin}` is not IP:PORT"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        .with_context(|| format!("cannot reach the shield's admin listener at {admin}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(
        s,
        "POST /mode?{query} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.take(1 << 20).read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "the shield refused: {}",
        body.trim()
    );
    println!("{}", body.trim());
    Ok(())
}

/// Prints one line per recorded episode, newest last.
fn episodes(file: &std::path::Path, json: bool) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let f = std::fs::File::open(file).with_context(|| {
        format!(
            "cannot open {} (no attack recorded yet, or give --file)",
            file.display()
        )
    })?;
    if !json {
        println!(
            "start (UTC)                   minutes  peak rps     requests  top address          cc  top AS                        top path"
        );
    }
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", file.display()))?;
        if json {
            println!("{line}");
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            eprintln!("line {}: not an episode, skipped", i + 1);
            continue;
        };
        let start = v["start_ms"].as_u64().unwrap_or(0);
        let end = v["end_ms"].as_u64().unwrap_or(start);
        let top = |dim: &str| {
            v["heavy_hitters"][dim][0]["key"]
                .as_str()
                .unwrap_or("-")
                .chars()
                .take(40)
                .collect::<String>()
        };
        // The top AS with its organisation, as the shield names it from `[geo]`.
        let asn = &v["heavy_hitters"]["asns"][0];
        let top_as = match asn["key"].as_u64() {
            Some(n) => format!("AS{n} {}", asn["org"].as_str().unwrap_or(""))
                .trim_end()
                .chars()
                .take(29)
                .collect::<String>(),
            None => "-".to_string(),
        };
        println!(
            "{:<29} {:>7.1} {:>9} {:>12}  {:<20} {:<3} {:<29} {}",
            qalqan_shield::accesslog::clf_time(start / 1000),
            end.saturating_sub(start) as f64 / 60_000.0,
            v["peak_rps"].as_u64().unwrap_or(0),
            v["total_requests"].as_u64().unwrap_or(0),
            top("addresses"),
            top("countries"),
            top_as,
            top("paths"),
        );
    }
    Ok(())
}

fn shield(a: ShieldArgs) -> anyhow::Result<()> {
    match &a.action {
        Some(ShieldCmd::Mode {
            mode,
            duration,
            admin,
        }) => return set_mode(mode, duration.as_deref(), admin),
        Some(ShieldCmd::Episodes { file, json }) => return episodes(file, *json),
        None => {}
    }
    let mut config = match &a.config {
        Some(path) => qalqan_shield::load_config(path)?,
        None => quick_config(&a)?,
    };
    if let Some(t) = a.threads {
        anyhow::ensure!(
            (1..=1024).contains(&t),
            "--threads must be between 1 and 1024"
        );
        config.threads = t;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QALQAN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut builder = if config.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.threads);
        b
    };
    let rt = builder
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(qalqan_shield::run(config, a.config.clone()))
}

/// Builds a configuration from flags alone, with every other key at its default.
fn quick_config(a: &ShieldArgs) -> anyhow::Result<qalqan_shield::Config> {
    let Some(upstream) = &a.upstream else {
        anyhow::bail!("give --config FILE, or at least --upstream URL (and --listen IP:PORT)");
    };
    let listen = if a.listen.is_empty() {
        vec!["0.0.0.0:8080".to_string()]
    } else {
        a.listen.clone()
    };
    let raw = RawConfig {
        server: RawServer::default(),
        listen: listen
            .into_iter()
            .map(|address| RawListener {
                address,
                ..RawListener::default()
            })
            .collect(),
        admin: RawAdmin {
            address: a.admin.clone(),
        },
        origin: RawOrigin {
            url: upstream.clone(),
            ..RawOrigin::default()
        },
        client: RawClient {
            trusted_proxies: a.trusted_proxy.clone(),
            ..RawClient::default()
        },
        ..RawConfig::default()
    };
    raw.validate().map_err(|e| {
        anyhow::anyhow!(
            "{}",
            e.to_string()
                .replace("listen[", "--listen[")
                .replace("origin.url", "--upstream")
        )
    })
}
