//! `qalqan sweep …`: find bot floods in exported social-channel data.

use std::io::{BufReader, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use qalqan_sweep::report::{Lang, Source};
use qalqan_sweep::{Format, Limits, Params};

#[derive(Args)]
pub struct SweepArgs {
    #[command(subcommand)]
    command: SweepCmd,
}

#[derive(Subcommand)]
enum SweepCmd {
    /// Analyse an export and write report.html and report.json into a directory.
    Analyze(AnalyzeArgs),
}

#[derive(Args)]
struct AnalyzeArgs {
    /// Telegram Desktop result.json, YouTube commentThreads JSON, or a CSV of comments.
    file: PathBuf,
    /// Input format (detected from the first bytes when absent).
    #[arg(long, value_parser = ["telegram-export", "youtube-json", "youtube-csv", "csv"])]
    format: Option<String>,
    /// Directory for report.html and report.json (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Language of report.html.
    #[arg(long, default_value = "ru", value_parser = ["ru", "kk", "en"])]
    lang: String,
    /// Distinct accounts that must post the same text within the window to make a flood.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..))]
    min_authors: u32,
    /// The window, e.g. 30m, 1h, 2d; 0 makes the whole input one window.
    #[arg(long, default_value = "1h")]
    window: String,
    /// Jaccard similarity of character 3-grams at which two texts count as the same.
    #[arg(long, default_value_t = 0.8)]
    threshold: f64,
    /// Show progress on the terminal even when stderr is not one.
    #[arg(long)]
    progress: bool,
    /// Most messages plus joins read from the file.
    #[arg(long, default_value_t = Limits::default().max_events)]
    max_events: u64,
}

pub fn run(a: SweepArgs) -> anyhow::Result<()> {
    match a.command {
        SweepCmd::Analyze(a) => analyze(a),
    }
}

fn analyze(a: AnalyzeArgs) -> anyhow::Result<()> {
    let format = a.format.as_deref().and_then(Format::from_name);
    let lang = Lang::from_code(&a.lang).context("--lang must be ru, kk or en")?;
    let window_secs =
        parse_window(&a.window).with_context(|| format!("--window {:?}", a.window))?;
    anyhow::ensure!(
        (0.05..=1.0).contains(&a.threshold),
        "--threshold must be between 0.05 and 1"
    );
    let show = a.progress || std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_print = Instant::now();
    let mut progress = |phase: &str, done: u64, total: u64| {
        if !show || last_print.elapsed().as_millis() < 200 {
            return;
        }
        last_print = Instant::now();
        let mut e = std::io::stderr().lock();
        if total > 0 {
            let _ = write!(e, "\r{phase}: {done}/{total}            ");
        } else {
            let _ = write!(e, "\r{phase}: {done}            ");
        }
        let _ = e.flush();
    };
    let f =
        std::fs::File::open(&a.file).with_context(|| format!("opening {}", a.file.display()))?;
    let limits = Limits {
        max_events: a.max_events,
    };
    let (format, ds) = qalqan_sweep::input::read_dataset(
        BufReader::with_capacity(1 << 18, f),
        format,
        &limits,
        &mut |n| progress("read", n, 0),
    )
    .with_context(|| format!("reading {}", a.file.display()))?;
    let params = Params {
        min_authors: a.min_authors as usize,
        window_secs,
        cluster: qalqan_sweep::cluster::ClusterParams {
            threshold: a.threshold,
            ..Default::default()
        },
        ..Default::default()
    };
    let analysis = qalqan_sweep::analyze(&ds, &params, &mut progress);
    let src = Source {
        file: a.file.display().to_string(),
        format,
    };
    let report = qalqan_sweep::report::build(&ds, &analysis, &src);
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let json_path = a.out.join("report.json");
    let w = std::io::BufWriter::new(
        std::fs::File::create(&json_path)
            .with_context(|| format!("creating {}", json_path.display()))?,
    );
    serde_json::to_writer(w, &report).context("writing report.json")?;
    let html = qalqan_sweep::report::html(&report, &ds, &analysis, lang)
        .context("rendering report.html")?;
    std::fs::write(a.out.join("report.html"), html).context("writing report.html")?;
    if show {
        eprintln!("\r{:60}", "");
    }
    println!(
        "{} messages, {} joins ({}): {} findings, {} messages in floods, {} bot followers; {:.1} s; report in {}",
        ds.messages.len(),
        ds.joins.len(),
        format.name(),
        report.summary.clusters,
        report.summary.flagged_messages,
        report.summary.flagged_followers,
        started.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

/// `90s`, `30m`, `1h`, `2d`, or a bare number of seconds; `0` for the whole input.
fn parse_window(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().context("expected a number with s, m, h or d")?;
    let mul = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("unknown unit {unit:?}; use s, m, h or d"),
    };
    n.checked_mul(mul)
        .filter(|v| *v <= 366 * 86_400)
        .context("the window is longer than a year")
}
