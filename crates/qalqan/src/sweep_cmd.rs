//! `qalqan sweep …`: find bot floods in exported social-channel data (`analyze`), record a
//! Telegram channel live (`watch`), clean up (`clean`), and send findings to the atlas
//! (`report-to-atlas`).

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
    /// Record a Telegram channel and its discussion group live through a bot (admin in both):
    /// joins and messages to DIR/events.jsonl, reports of the sliding window to DIR/reports/.
    Watch(crate::sweep_live::WatchArgs),
    /// Clean up a finding in reversible steps (restrict, ban, delete; unrestrict, unban).
    /// Dry-run unless --apply.
    Clean(crate::sweep_live::CleanArgs),
    /// Make atlas incidents of a report's findings, with accounts and texts as indicators and
    /// the report attached.
    ReportToAtlas(crate::sweep_live::AtlasArgs),
}

#[derive(Args)]
struct AnalyzeArgs {
    /// Telegram Desktop result.json, YouTube commentThreads JSON, or a CSV of comments.
    file: PathBuf,
    /// Input format (detected from the first bytes when absent).
    #[arg(long, value_parser = ["telegram-export", "youtube-json", "youtube-csv", "csv", "sweep-live"])]
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
    /// Distinct accounts posting near-identical threatening text that make a threat finding.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    threat_min_authors: u32,
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
        SweepCmd::Watch(a) => crate::sweep_live::watch(a),
        SweepCmd::Clean(a) => crate::sweep_live::clean(a),
        SweepCmd::ReportToAtlas(a) => crate::sweep_live::report_to_atlas(a),
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
        threat: qalqan_sweep::threat::ThreatParams {
            min_authors: a.threat_min_authors as usize,
        },
        ..Default::default()
    };
    let analysis = qalqan_sweep::analyze(&ds, &params, &mut progress);
    let src = Source {
        file: a.file.display().to_string(),
        format,
    };
    let report = write_reports(&ds, &analysis, &src, &a.out, lang)?;
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

/// Writes `report.json` and `report.html` into `out` (created if missing); each file is
/// written to a temporary name and renamed, so a reader never sees half a report.
pub fn write_reports(
    ds: &qalqan_sweep::Dataset,
    analysis: &qalqan_sweep::Analysis,
    src: &Source,
    out: &std::path::Path,
    lang: Lang,
) -> anyhow::Result<qalqan_sweep::report::Report> {
    let report = qalqan_sweep::report::build(ds, analysis, src);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json_path = out.join("report.json");
    let tmp = out.join("report.json.tmp");
    {
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        );
        serde_json::to_writer(&mut w, &report).context("writing report.json")?;
        w.flush().context("writing report.json")?;
    }
    std::fs::rename(&tmp, &json_path).context("writing report.json")?;
    let html =
        qalqan_sweep::report::html(&report, ds, analysis, lang).context("rendering report.html")?;
    let tmp = out.join("report.html.tmp");
    std::fs::write(&tmp, html).context("writing report.html")?;
    std::fs::rename(&tmp, out.join("report.html")).context("writing report.html")?;
    Ok(report)
}

/// `90s`, `30m`, `1h`, `2d`, or a bare number of seconds; `0` for the whole input.
pub fn parse_window(s: &str) -> anyhow::Result<i64> {
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
