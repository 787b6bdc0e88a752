//! The Kursiv scenario: what a search flood at 400 times normal traffic does to readers of a
//! small news site, with no protection, behind nginx's per-address `limit_req`, and behind the
//! Qalqan shield. `bench/kursiv.sh` drives it; see `bench/README.md`.
//!
//! Three sub-commands, each a separate process so that the origin, the peer under test and the
//! load generator do not share a runtime:
//!
//! - `origin`: a news site whose search costs 50 ms of its only worker (about 20 searches a
//!   second) while an article costs 2 ms; past capacity requests queue and time out like an
//!   overloaded PHP site. Counts what reaches it at `/__stats`.
//! - `load`: browser-like readers (cookie jar, challenge solving) for the whole run, plus a
//!   fixed-rate flood against `/search` in the attack phase; writes a JSON timeline.
//! - `report`: Markdown tables from the JSON timelines of the peers.
//!
//! Everything here talks to loopback only and every run is bounded in time and concurrency.

mod load;
mod origin;
mod report;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "qalqan-bench-kursiv",
    about = "The Kursiv scenario load run (bench/README.md)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the sample origin (articles cheap, search about 20 per second).
    Origin(origin::Args),
    /// Run readers and the flood against a peer and write the timeline as JSON.
    Load(load::Args),
    /// Print the Markdown report for one or more timelines.
    Report(report::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        // The origin mostly sleeps (its workers are simulated), so one thread is plenty. The
        // load generator gets two, as many as the machine has cores, so that 2,000 requests a
        // second do not queue behind each other in the generator; proof-of-work solving runs
        // on the blocking pool.
        Cmd::Origin(a) => finish(runtime(1)?, origin::run(a)),
        Cmd::Load(a) => finish(runtime(2)?, load::run(a)),
        Cmd::Report(a) => report::run(&a),
    }
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    Ok(b.enable_all().max_blocking_threads(4).build()?)
}

/// Runs `f` to completion, then stops the runtime without waiting for solver threads that may
/// still be busy with a challenge nobody waits for any more (the run is bounded in time).
fn finish(
    rt: tokio::runtime::Runtime,
    f: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let r = rt.block_on(f);
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    r
}
