//! Markdown tables from the JSON timelines that `load` wrote, one column per peer.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;

use qalqan_drill::engine::{RunResult, View};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Timelines written by `load --out`, in the order the columns should appear.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for f in &a.files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        let r: RunResult = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a timeline", f.display()))?;
        runs.push(r);
    }
    print!("{}", markdown(&runs));
    Ok(())
}

/// Readers' figures over one phase.
struct Phase {
    views: usize,
    ok: usize,
    p50: Option<f64>,
    p95: Option<f64>,
}

impl Phase {
    fn of<'a>(views: impl Iterator<Item = &'a View>) -> Phase {
        let mut n = 0;
        let mut lat = Vec::new();
        for v in views {
            n += 1;
            if v.ok {
                lat.push(v.ms);
            }
        }
        lat.sort_by(f64::total_cmp);
        Phase {
            views: n,
            ok: lat.len(),
            p50: percentile(&lat, 0.50),
            p95: percentile(&lat, 0.95),
        }
    }

    fn success(&self) -> Option<f64> {
        (self.views > 0).then(|| self.ok as f64 / self.views as f64)
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
}

/// What the report says about one run.
struct Summary {
    base: Phase,
    attack: Phase,
    attack_articles: Phase,
    attack_searches: Phase,
    failures: BTreeMap<String, usize>,
    challenged: usize,
    solve_ms_mean: Option<f64>,
    origin_base: f64,
    origin_attack: f64,
    origin_attack_search: f64,
    /// Seconds from the attack's start to each mode change after it.
    elevated_after: Option<f64>,
    under_attack_after: Option<f64>,
    /// Changes away from normal before the attack (false alarms).
    early: usize,
    mitigated_after: Option<u64>,
    flood: [u64; 10],
}

const FLOOD_COLS: [&str; 10] = [
    "offered (sent + skipped)",
    "2xx",
    "of which after solving",
    "challenge page",
    "429",
    "403 blocked",
    "502/503/504",
    "other status",
    "timeouts and errors",
    "skipped (concurrency cap)",
];

fn summarise(r: &RunResult) -> Summary {
    let s = &r.settings;
    let a0 = s.warmup + s.baseline;
    let a1 = a0 + s.attack;
    let in_range = |v: &&View, from: u64, to: u64| v.t_ms >= from * 1000 && v.t_ms < to * 1000;
    let base = Phase::of(r.views.iter().filter(|v| in_range(v, s.warmup, a0)));
    let attack_views: Vec<&View> = r.views.iter().filter(|v| in_range(v, a0, a1)).collect();
    let attack = Phase::of(attack_views.iter().copied());
    let attack_articles = Phase::of(attack_views.iter().copied().filter(|v| !v.search));
    let attack_searches = Phase::of(attack_views.iter().copied().filter(|v| v.search));
    let mut failures = BTreeMap::new();
    for v in attack_views.iter().filter(|v| !v.ok) {
        *failures.entry(v.outcome.clone()).or_insert(0) += 1;
    }
    let solved: Vec<f64> = attack_views
        .iter()
        .filter(|v| v.challenged)
        .map(|v| v.solve_ms)
        .collect();
    let solve_ms_mean =
        (!solved.is_empty()).then(|| solved.iter().sum::<f64>() / solved.len() as f64);

    let secs = |from: u64, to: u64| {
        r.seconds
            .get(from as usize..(to as usize).min(r.seconds.len()))
    };
    let origin_rate = |from: u64, to: u64, f: &dyn Fn(&qalqan_drill::engine::Second) -> u64| {
        secs(from, to).map_or(0.0, |ss| {
            ss.iter().map(f).sum::<u64>() as f64 / ss.len().max(1) as f64
        })
    };
    let all =
        |x: &qalqan_drill::engine::Second| x.origin_article + x.origin_search + x.origin_other;
    let origin_base = origin_rate(s.warmup, a0, &all);
    let origin_attack = origin_rate(a0, a1, &all);
    let origin_attack_search = origin_rate(a0, a1, &|x| x.origin_search);

    let attack_ms = (a0 * 1000) as i64;
    let after = |to: &str| {
        r.transitions
            .iter()
            .filter(|t| t.to == to && t.at_ms >= attack_ms)
            .map(|t| (t.at_ms - attack_ms) as f64 / 1000.0)
            .reduce(f64::min)
    };
    let early = r
        .transitions
        .iter()
        .filter(|t| t.at_ms < attack_ms && t.to != "normal")
        .count();

    let mut flood = [0u64; 10];
    if let Some(ss) = secs(a0, a1) {
        for x in ss {
            let row = [
                x.flood_sent + x.flood_skipped,
                x.flood_ok,
                x.flood_solved,
                x.flood_challenged,
                x.flood_limited,
                x.flood_blocked,
                x.flood_unavailable,
                x.flood_other,
                x.flood_errors,
                x.flood_skipped,
            ];
            for (t, v) in flood.iter_mut().zip(row) {
                *t += v;
            }
        }
    }

    Summary {
        base,
        attack,
        attack_articles,
        attack_searches,
        failures,
        challenged: solved.len(),
        solve_ms_mean,
        origin_base,
        origin_attack,
        origin_attack_search,
        elevated_after: after("elevated"),
        under_attack_after: after("under_attack"),
        early,
        mitigated_after: mitigation(&attack_views, a0, a1),
        flood,
    }
}

/// The first second of the attack from which the readers' success, over every view started
/// from then to the end of the attack, is at least 99 %, and that second's own success is too.
/// `Some(0)` means readers never fell below 99 % at all.
fn mitigation(views: &[&View], a0: u64, a1: u64) -> Option<u64> {
    for t in a0..a1 {
        let from: Vec<&&View> = views.iter().filter(|v| v.t_ms >= t * 1000).collect();
        let this: Vec<&&View> = from
            .iter()
            .copied()
            .filter(|v| v.t_ms < (t + 1) * 1000)
            .collect();
        if this.is_empty() {
            continue;
        }
        let ok = |vs: &[&&View]| vs.iter().filter(|v| v.ok).count() as f64 / vs.len() as f64;
        if ok(&from) >= 0.99 && ok(&this) >= 0.99 {
            return Some(t - a0);
        }
    }
    None
}

fn pct(x: Option<f64>) -> String {
    x.map_or("—".into(), |v| format!("{:.1} %", v * 100.0))
}

fn ms(x: Option<f64>) -> String {
    x.map_or("—".into(), |v| format!("{v:.1}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "n/a".into(),
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "n/a",
    }
}

fn markdown(runs: &[RunResult]) -> String {
    let mut o = String::new();
    let Some(first) = runs.first() else {
        return o;
    };
    let s = &first.settings;
    let readers_rate = s.reader_rate;
    let _ = writeln!(o, "### Scale\n");
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(
        o,
        "| readers | {} addresses (each its own /24), {:.1} page views/s together, {:.0} % searches, Zipf over {} articles; cookie jar; challenges solved with `qalqan_challenge::pow::solve` |",
        s.readers,
        readers_rate,
        s.search_share * 100.0,
        s.articles
    );
    let inside = first
        .scenario
        .as_ref()
        .and_then(|sc| sc.attackers.first())
        .is_some_and(|a| a.networks == qalqan_drill::scenario::Networks::Readers);
    let place = if inside {
        "all inside the readers' own /16, 95.56.0.0/16, never a reader's address"
    } else {
        "each its own /24 in 20.0.0.0–79.255.255.255, far from the readers' 95.56.0.0/16"
    };
    let _ = writeln!(
        o,
        "| flood | {:.0} req/s on `/search` ({:.0}× the readers' rate), half `q=number+one`, half two random words; {} addresses that never solve challenges + {} that solve them and keep the cookie ({place}); at most {} in flight |",
        s.flood_rate,
        s.flood_rate / readers_rate,
        s.flood_addresses,
        s.solver_addresses,
        s.flood_concurrency
    );
    let _ = writeln!(
        o,
        "| phases | {} s warm-up (readers only, not measured), {} s baseline (readers only), {} s attack (readers + flood) |",
        s.warmup, s.baseline, s.attack
    );
    let _ = writeln!(
        o,
        "| timeouts | a reader's page view (challenge included) or a flood request fails after {} s |",
        s.timeout
    );
    let _ = writeln!(o);

    let sums: Vec<Summary> = runs.iter().map(summarise).collect();
    let head: Vec<String> = runs.iter().map(|r| r.peer.clone()).collect();
    let _ = writeln!(o, "### Results\n");
    let _ = writeln!(o, "| | {} |", head.join(" | "));
    let _ = writeln!(o, "|---|{}", "---:|".repeat(runs.len()));
    let mut row = |name: &str, f: &dyn Fn(&Summary) -> String| {
        let cells: Vec<String> = sums.iter().map(f).collect();
        let _ = writeln!(o, "| {name} | {} |", cells.join(" | "));
    };
    row("readers' success, baseline", &|x| {
        format!("{} ({}/{})", pct(x.base.success()), x.base.ok, x.base.views)
    });
    row("readers' success, attack", &|x| {
        format!(
            "{} ({}/{})",
            pct(x.attack.success()),
            x.attack.ok,
            x.attack.views
        )
    });
    row("… articles / searches, attack", &|x| {
        format!(
            "{} / {}",
            pct(x.attack_articles.success()),
            pct(x.attack_searches.success())
        )
    });
    row("readers' failures, attack", &|x| {
        if x.failures.is_empty() {
            "none".into()
        } else {
            x.failures
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    });
    row("readers' p50 (ms), baseline → attack", &|x| {
        format!(
            "{} → {} ({})",
            ms(x.base.p50),
            ms(x.attack.p50),
            ratio(x.attack.p50, x.base.p50)
        )
    });
    row("readers' p95 (ms), baseline → attack", &|x| {
        format!(
            "{} → {} ({})",
            ms(x.base.p95),
            ms(x.attack.p95),
            ratio(x.attack.p95, x.base.p95)
        )
    });
    row("… searches' p95 (ms), attack", &|x| {
        ms(x.attack_searches.p95)
    });
    row(
        "reader views that met a challenge, attack",
        &|x| match x.solve_ms_mean {
            Some(m) => format!("{} (solving took {m:.0} ms on average)", x.challenged),
            None => "0".into(),
        },
    );
    row(
        "requests reaching the origin (per s), baseline → attack",
        &|x| {
            format!(
                "{:.1} → {:.1} ({})",
                x.origin_base,
                x.origin_attack,
                ratio(Some(x.origin_attack), Some(x.origin_base))
            )
        },
    );
    row("… of which searches (per s), attack", &|x| {
        format!("{:.1}", x.origin_attack_search)
    });
    row("time to detect (elevated / under_attack)", &|x| match (
        x.elevated_after,
        x.under_attack_after,
    ) {
        (None, None) if x.early == 0 => "no detection".into(),
        (e, u) => {
            let f = |v: Option<f64>| v.map_or("—".into(), |s| format!("{s:.1} s"));
            let mut t = format!("{} / {}", f(e), f(u));
            if x.early > 0 {
                let _ = write!(t, " ({} change(s) before the attack)", x.early);
            }
            t
        }
    });
    row(
        "time to mitigate (readers back ≥ 99 %)",
        &|x| match x.mitigated_after {
            Some(0) => "0 s (never below)".into(),
            Some(t) => format!("{t} s"),
            None => "not within the attack".into(),
        },
    );
    for (i, c) in FLOOD_COLS.iter().enumerate() {
        let name = format!("flood, attack: {c}");
        row(&name, &|x| x.flood[i].to_string());
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Latency percentiles are over the page views that succeeded; failures are counted in the success rate. \
A view's time includes any challenge: reading the page, solving, `/.qalqan/verify`, and loading the page again.\n"
    );

    let _ = writeln!(o, "### Goals\n");
    let _ = writeln!(o, "| goal | {} |", head.join(" | "));
    let _ = writeln!(o, "|---|{}", "---|".repeat(runs.len()));
    let mut goal = |name: &str, f: &dyn Fn(&Summary) -> (String, Option<bool>)| {
        let cells: Vec<String> = sums
            .iter()
            .map(|x| {
                let (v, ok) = f(x);
                format!("{v} {}", verdict(ok))
            })
            .collect();
        let _ = writeln!(o, "| {name} | {} |", cells.join(" | "));
    };
    goal("readers' success ≥ 99 % under attack", &|x| {
        (
            pct(x.attack.success()),
            x.attack.success().map(|s| s >= 0.99),
        )
    });
    goal("readers' p95 ≤ 2× baseline", &|x| {
        let ok = match (x.attack.p95, x.base.p95) {
            (Some(a), Some(b)) => Some(a <= 2.0 * b),
            _ => None,
        };
        (ratio(x.attack.p95, x.base.p95), ok)
    });
    goal("origin load ≤ 2× normal", &|x| {
        let ok = (x.origin_base > 0.0).then_some(x.origin_attack <= 2.0 * x.origin_base);
        (ratio(Some(x.origin_attack), Some(x.origin_base)), ok)
    });
    goal(
        "detection (under_attack) ≤ 5 s",
        &|x| match x.under_attack_after {
            Some(t) => (format!("{t:.1} s"), Some(t <= 5.0)),
            None if x.elevated_after.is_some() => ("never under_attack".into(), Some(false)),
            None => ("no detection".into(), Some(false)),
        },
    );
    let _ = writeln!(o);

    for r in runs {
        timeline(&mut o, r);
    }
    o
}

fn timeline(o: &mut String, r: &RunResult) {
    let s = &r.settings;
    let a0 = s.warmup + s.baseline;
    let _ = writeln!(
        o,
        "<details><summary>Per-second timeline: {} (second 0 = the flood starts)</summary>\n",
        r.peer
    );
    if !r.transitions.is_empty() {
        let _ = writeln!(o, "Mode changes (seconds from the flood's start):\n");
        for t in &r.transitions {
            let _ = writeln!(
                o,
                "- {:+.1} s: {} → {} ({})",
                (t.at_ms - (a0 * 1000) as i64) as f64 / 1000.0,
                t.from,
                t.to,
                t.reason
            );
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(
        o,
        "| s | mode | reader views | ok | p95 ms | flood sent | 2xx | challenge | 429 | 403 | 5xx | errors | skipped | origin search | origin article | origin built |"
    );
    let _ = writeln!(o, "|{}", "---:|".repeat(16));
    let from = s.warmup;
    for (i, x) in r.seconds.iter().enumerate().skip(from as usize) {
        let t = i as u64;
        let vs: Vec<&View> = r.views.iter().filter(|v| v.t_ms / 1000 == t).collect();
        let p = Phase::of(vs.iter().copied());
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            t as i64 - a0 as i64,
            if x.mode.is_empty() { "—" } else { &x.mode },
            p.views,
            p.ok,
            ms(p.p95),
            x.flood_sent,
            x.flood_ok,
            x.flood_challenged,
            x.flood_limited,
            x.flood_blocked,
            x.flood_unavailable,
            x.flood_errors,
            x.flood_skipped,
            x.origin_search,
            x.origin_article,
            x.origin_served
        );
    }
    if !r.shield_metrics.is_empty() {
        let _ = writeln!(o, "\nThe shield's counters at the end of the run:\n\n```");
        for l in &r.shield_metrics {
            let _ = writeln!(o, "{l}");
        }
        let _ = writeln!(o, "```");
    }
    let _ = writeln!(o, "\n</details>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(t_ms: u64, ok: bool) -> View {
        View {
            t_ms,
            search: false,
            ok,
            ms: 10.0,
            outcome: if ok { "200".into() } else { "503".into() },
            challenged: false,
            solve_ms: 0.0,
        }
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 0.95), Some(95.0));
        assert_eq!(percentile(&xs, 0.5), Some(50.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7.0], 0.95), Some(7.0));
    }

    #[test]
    fn mitigation_is_the_first_second_readers_stay_served() {
        // Attack over seconds 10..20: failures in 10..13, all fine from 13.
        let mut views = Vec::new();
        for s in 10..20u64 {
            for k in 0..5 {
                views.push(v(s * 1000 + k * 100, s >= 13));
            }
        }
        let refs: Vec<&View> = views.iter().collect();
        assert_eq!(mitigation(&refs, 10, 20), Some(3));
        let fine: Vec<View> = (0..50).map(|i| v(10_000 + i * 200, true)).collect();
        let refs: Vec<&View> = fine.iter().collect();
        assert_eq!(mitigation(&refs, 10, 20), Some(0));
        let bad: Vec<View> = (0..50).map(|i| v(10_000 + i * 200, i % 5 != 0)).collect();
        let refs: Vec<&View> = bad.iter().collect();
        assert_eq!(mitigation(&refs, 10, 20), None);
    }
}
