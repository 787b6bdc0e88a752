//! `qalqan sweep watch | clean | report-to-atlas`: the parts of sweep that talk to Telegram
//! and to the atlas. Secrets (the bot token, the atlas token) come from a file or the
//! environment, never from the command line, and are never printed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use qalqan_sweep::clean::{self, Step};
use qalqan_sweep::live::{self, WatchParams};
use qalqan_sweep::report::{Lang, Source};
use qalqan_sweep::telegram::{BotApi, Token};

use crate::sweep_cmd::{parse_window, write_reports};

/// Environment variable holding the bot token when there is no --token-file.
const TOKEN_ENV: &str = "QALQAN_TELEGRAM_TOKEN";

#[derive(Args)]
pub struct WatchArgs {
    /// File holding the bot's token (from @BotFather); or set QALQAN_TELEGRAM_TOKEN.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Chat to record (the channel, its discussion group; numeric ids like -1001234567890).
    /// Repeat for several.
    #[arg(
        long = "chat",
        required = true,
        allow_hyphen_values = true,
        value_name = "ID"
    )]
    chats: Vec<i64>,
    /// State directory: journal, offset, status and reports.
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
    /// Bot API server (a local telegram-bot-api server, or a test double).
    #[arg(long, default_value = "https://api.telegram.org")]
    api_url: String,
    /// Long-poll timeout of getUpdates, seconds.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(0..=50))]
    poll_timeout: u64,
    /// How often to poll the member count (the backstop for lost join updates).
    #[arg(long, default_value = "5m")]
    count_every: String,
    /// How often to analyse the window and rewrite the reports.
    #[arg(long, default_value = "5m")]
    analyze_every: String,
    /// The sliding window kept in memory and analysed.
    #[arg(long, default_value = "2d")]
    window: String,
    /// Most events kept in memory.
    #[arg(long, default_value_t = 2_000_000)]
    max_window_events: usize,
    /// Exit once there are no more pending updates (after writing the reports): for cron.
    #[arg(long)]
    until_idle: bool,
    /// Distinct accounts that must post the same text within --flood-window to make a flood.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..))]
    min_authors: u32,
    #[arg(long, default_value = "1h")]
    flood_window: String,
    /// Language of report.html.
    #[arg(long, default_value = "ru", value_parser = ["ru", "kk", "en"])]
    lang: String,
}

fn read_token(file: Option<&Path>) -> anyhow::Result<Token> {
    let raw = match file {
        Some(f) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        None => std::env::var(TOKEN_ENV)
            .with_context(|| format!("give --token-file FILE or set {TOKEN_ENV}"))?,
    };
    Token::parse(&raw).map_err(|e| anyhow::anyhow!(e))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QALQAN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn secs(flag: &str, v: &str) -> anyhow::Result<u64> {
    let s = parse_window(v).with_context(|| format!("{flag} {v:?}"))?;
    anyhow::ensure!(s > 0, "{flag} must be longer than 0");
    Ok(s as u64)
}

pub fn watch(a: WatchArgs) -> anyhow::Result<()> {
    init_log();
    let token = read_token(a.token_file.as_deref())?;
    let lang = Lang::from_code(&a.lang).context("--lang")?;
    let p = WatchParams {
        chats: a.chats.clone(),
        poll_timeout: a.poll_timeout,
        count_every: Duration::from_secs(secs("--count-every", &a.count_every)?),
        analyze_every: Duration::from_secs(secs("--analyze-every", &a.analyze_every)?),
        window_secs: secs("--window", &a.window)? as i64,
        max_window_events: a.max_window_events.max(1),
        until_idle: a.until_idle,
        analysis: qalqan_sweep::Params {
            min_authors: a.min_authors as usize,
            window_secs: secs("--flood-window", &a.flood_window)? as i64,
            ..Default::default()
        },
        threat: Default::default(),
    };
    let mut api = BotApi::new(&a.api_url, token).context("--api-url")?;
    anyhow::ensure!(
        !api.endpoint().secret_in_clear(),
        "--api-url is plain http to a public host: the bot token would travel in clear"
    );
    let state = a.state.clone();
    let params = p.analysis;
    let mut write = |chat: i64, ds: &qalqan_sweep::Dataset| -> Result<(), String> {
        let analysis = qalqan_sweep::analyze(ds, &params, &mut |_, _, _| {});
        let src = Source {
            file: format!("telegram-live:{chat}"),
            format: qalqan_sweep::Format::SweepLive,
        };
        let out = state.join("reports").join(chat.to_string());
        let r = write_reports(ds, &analysis, &src, &out, lang).map_err(|e| format!("{e:#}"))?;
        tracing::info!(
            chat,
            messages = ds.messages.len(),
            joins = ds.joins.len(),
            findings = r.summary.clusters,
            flagged_messages = r.summary.flagged_messages,
            flagged_followers = r.summary.flagged_followers,
            threat_messages = r.summary.threat_messages,
            "report written to {}",
            out.display()
        );
        Ok(())
    };
    let rt = runtime()?;
    let summary = rt.block_on(async {
        let stop = async {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                match signal(SignalKind::terminate()) {
                    Ok(mut term) => {
                        tokio::select! {
                            _ = tokio::signal::ctrl_c() => {}
                            _ = term.recv() => {}
                        }
                    }
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
            }
        };
        live::watch(&mut api, &a.state, &p, &mut write, stop).await
    })?;
    println!(
        "recorded {} events (restored {}, {} duplicates skipped, {} from other chats); offset {} -> {}; {} reports written in {}",
        summary.recorded,
        summary.restored,
        summary.duplicates_skipped,
        summary.other_chats,
        summary.start_offset,
        summary.end_offset,
        summary.reports_written,
        a.state.join("reports").display()
    );
    for (chat, st) in &summary.status {
        println!(
            "chat {chat}: members {}, joins seen {}, leaves seen {}, missed joins (estimate) {}",
            st.count.map_or("?".into(), |c| c.to_string()),
            st.joins_seen,
            st.leaves_seen,
            st.missed_joins
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct CleanArgs {
    /// A report.json written by `sweep analyze` or `sweep watch`.
    #[arg(long, value_name = "FILE")]
    report: PathBuf,
    /// Finding to clean up (c1, w1, t1 ...). Repeat for several.
    #[arg(long = "cluster", required = true, value_name = "ID")]
    clusters: Vec<String>,
    /// restrict (mute; first), ban, delete (messages; cannot be undone), or the undo steps
    /// unrestrict and unban.
    #[arg(long, default_value = "restrict", value_parser = ["restrict", "ban", "delete", "unrestrict", "unban"])]
    step: String,
    /// The chat to act in, when the report's message ids do not name it (Telegram exports).
    #[arg(long, allow_hyphen_values = true, value_name = "ID")]
    chat: Option<i64>,
    /// Carry the plan out. Without it nothing is sent anywhere.
    #[arg(long)]
    apply: bool,
    /// File holding the bot's token; or set QALQAN_TELEGRAM_TOKEN. Only needed with --apply.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Where the queue's checkpoint is kept (default: the report's directory).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    #[arg(long, default_value = "https://api.telegram.org")]
    api_url: String,
    /// Calls per second (at most 30).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
}

pub fn clean(a: CleanArgs) -> anyhow::Result<()> {
    let step = Step::from_name(&a.step).context("--step")?;
    anyhow::ensure!(
        a.rate > 0.0 && a.rate <= clean::MAX_RATE,
        "--rate must be above 0 and at most {}",
        clean::MAX_RATE
    );
    let bytes =
        std::fs::read(&a.report).with_context(|| format!("reading {}", a.report.display()))?;
    let report: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a report", a.report.display()))?;
    let plan =
        clean::build_plan(&report, &a.clusters, step, a.chat).map_err(|e| anyhow::anyhow!(e))?;
    let state = a
        .state
        .clone()
        .unwrap_or_else(|| a.report.parent().unwrap_or(Path::new(".")).to_path_buf());
    let prog = clean::progress(&state, &plan).map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "{} {} on {} ({}): {} targets, {} API calls{}; {}; already done {}/{}",
        if a.apply { "apply" } else { "dry run:" },
        step.name(),
        plan.clusters.join(", "),
        match plan.platform {
            qalqan_sweep::input::Platform::Telegram => format!(
                "Telegram chat {}",
                plan.chat.map_or("?".into(), |c| c.to_string())
            ),
            _ => "YouTube".into(),
        },
        plan.targets,
        plan.api_calls,
        match (plan.quota_units, plan.quota_days) {
            (Some(u), Some(d)) => format!(
                ", {u} quota units ({d} day(s) of the default {} a day; {} ids a call)",
                clean::YT_DAILY_QUOTA,
                clean::YT_BATCH
            ),
            _ => format!(
                ", about {:.0} s at {} calls/s",
                plan.duration_at(a.rate).as_secs_f64(),
                a.rate
            ),
        },
        if plan.reversible {
            "reversible"
        } else {
            "cannot be undone"
        },
        prog.done,
        plan.actions.len()
    );
    for (why, n) in &plan.skipped {
        println!("  skipped {n}: {why}");
    }
    if !a.apply {
        for act in plan.actions.iter().skip(prog.done).take(5) {
            println!(
                "  would call {}",
                serde_json::to_string(act).unwrap_or_default()
            );
        }
        if plan.actions.len() > prog.done + 5 {
            println!("  … {} more", plan.actions.len() - prog.done - 5);
        }
        println!("nothing was sent; add --apply to carry this out");
        return Ok(());
    }
    init_log();
    anyhow::ensure!(
        plan.platform == qalqan_sweep::input::Platform::Telegram,
        "YouTube clean-up is a plan only here: there is no way to test against the YouTube API from this tool; carry it out in YouTube Studio"
    );
    let token = read_token(a.token_file.as_deref())?;
    let mut api = BotApi::new(&a.api_url, token).context("--api-url")?;
    anyhow::ensure!(
        !api.endpoint().secret_in_clear(),
        "--api-url is plain http to a public host: the bot token would travel in clear"
    );
    let rt = runtime()?;
    let total = plan.actions.len();
    let done = rt
        .block_on(clean::execute(&mut api, &plan, &state, a.rate, &mut |p| {
            if p.done % 100 == 0 || p.done == total {
                tracing::info!(done = p.done, total, failed = p.failed, "clean-up progress");
            }
        }))
        .map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "done {}/{} ({} refused by the API, listed in clean-{}.failures.jsonl; {} pauses for 429, {} s)",
        done.done, done.total, done.failed, plan.key, done.retries_429, done.waited_429_secs
    );
    Ok(())
}

#[derive(Args)]
pub struct AtlasArgs {
    /// A report.json written by `sweep analyze` or `sweep watch`.
    #[arg(long, value_name = "FILE")]
    report: PathBuf,
    /// The atlas, e.g. https://atlas.example.org
    #[arg(long, value_name = "URL")]
    atlas: String,
    /// File holding an editor token of your outlet (qat_…); or set QALQAN_ATLAS_TOKEN.
    #[arg(long, value_name = "FILE")]
    atlas_token_file: Option<PathBuf>,
    /// Findings to send (default: all).
    #[arg(long = "cluster", value_name = "ID")]
    clusters: Vec<String>,
    /// TLP of the incidents.
    #[arg(long, default_value = "amber", value_parser = ["clear", "green", "amber", "amber+strict", "red"])]
    tlp: String,
    /// Most accounts sent as indicators per finding (those with the most messages first).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=4000))]
    top_accounts: u32,
    /// Language of the incident titles.
    #[arg(long, default_value = "ru", value_parser = ["ru", "kk", "en"])]
    lang: String,
}

pub fn report_to_atlas(a: AtlasArgs) -> anyhow::Result<()> {
    let token = match &a.atlas_token_file {
        Some(f) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        None => std::env::var("QALQAN_ATLAS_TOKEN")
            .context("give --atlas-token-file FILE or set QALQAN_ATLAS_TOKEN")?,
    };
    let mut client =
        qalqan_sweep::atlas::AtlasClient::new(&a.atlas, &token).map_err(|e| anyhow::anyhow!(e))?;
    let up = qalqan_sweep::atlas::Upload {
        report_path: &a.report,
        clusters: &a.clusters,
        tlp: &a.tlp,
        top_accounts: a.top_accounts as usize,
        lang: Lang::from_code(&a.lang).context("--lang")?,
    };
    let sent = runtime()?
        .block_on(qalqan_sweep::atlas::upload(&mut client, &up))
        .map_err(|e| anyhow::anyhow!(e))?;
    for s in &sent {
        println!(
            "{} -> incident {} ({} indicators, {} attachments)",
            s.cluster, s.incident, s.indicators, s.attachments
        );
    }
    if sent.is_empty() {
        println!("no findings to send");
    }
    Ok(())
}
