//! The shield: a reverse proxy in front of an outlet's site that keeps it readable during an
//! HTTP flood. It counts clients in fixed memory, answers floods from its micro-cache, caps what
//! reaches the origin per route class, and serves stale pages when the origin fails.
//!
//! What it must never do: grow memory with the number of distinct clients; let one request's
//! bad input panic the process; become the outage (readers fail open, admin paths fail closed);
//! write one log line per flood request; wait on anything but the origin.

pub mod accesslog;
pub mod attack;
pub mod body;
pub mod challenge;
pub mod config;
pub mod familiar;
pub mod gate;
pub mod goodbots;
mod h1;
#[doc(hidden)]
pub use h1::fuzz_take;
pub mod limiter;
mod lookup;
pub mod metrics;
pub mod pages;
pub mod proxy;
pub mod push;
mod rawhead;
pub mod server;
pub mod state;
pub mod upstream;

use std::path::PathBuf;

use anyhow::Context as _;

pub use config::{Config, ConfigError, RawConfig};
pub use server::{Running, start};

/// Loads and checks a configuration file.
pub fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration {}", path.display()))?;
    RawConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Runs the shield until SIGINT or SIGTERM; SIGHUP reloads `config_path` when one is given.
/// Must run inside a Tokio runtime.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    for w in &config.warnings {
        tracing::warn!("configuration: {w}");
        eprintln!("WARNING: {w}");
    }
    // Signal handlers first: a SIGHUP that arrives while listeners open must not kill us.
    let signals = Signals::install()?;
    let running = start(config).await?;
    for a in &running.listen {
        tracing::info!("shield listening on {a}");
    }
    if let Some(a) = running.admin {
        tracing::info!("admin listener on {a} (/metrics, /healthz)");
    }
    wait_for_signals(signals, &running, config_path.as_deref()).await?;
    tracing::info!("shutting down: finishing open requests");
    running.shutdown().await;
    Ok(())
}

#[cfg(unix)]
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }
}

#[cfg(unix)]
async fn wait_for_signals(
    mut s: Signals,
    running: &Running,
    path: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = s.hup.recv() => {
                let Some(p) = path else {
                    tracing::warn!("SIGHUP ignored: started without --config");
                    continue;
                };
                match load_config(p) {
                    Ok(cfg) => {
                        for w in &cfg.warnings {
                            tracing::warn!("configuration: {w}");
                        }
                        for w in running.reload(cfg) {
                            tracing::warn!("reload: {w}");
                        }
                        tracing::info!("configuration reloaded from {}", p.display());
                    }
                    Err(e) => {
                        running.shared.metrics.reloads_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!("reload refused, the running configuration stays: {e:#}");
                    }
                }
            }
            _ = s.term.recv() => return Ok(()),
            _ = s.int.recv() => return Ok(()),
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Signals)
    }
}

#[cfg(not(unix))]
async fn wait_for_signals(
    _: Signals,
    _: &Running,
    _: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await.context("Ctrl-C handler")
}
