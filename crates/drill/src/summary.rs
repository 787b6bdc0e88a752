//! What a drill tells its user: readers' success and latency per phase, what became of the
//! attackers' requests, and how much reached the origin, as a table and as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::engine::{RunResult, Sent, SlowOutcome, View};
use crate::origin::Stats;

/// Readers' figures over one phase.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Phase {
    pub views: u64,
    pub ok: u64,
    /// Share of views that got their page, 0..1 (None without views).
    pub success: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// How the failed views failed.
    pub failures: BTreeMap<String, u64>,
    /// Views that met a challenge (solved or not).
    pub challenged: u64,
}

/// Attack requests by outcome, over the attack phase.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct Attack {
    pub sent: u64,
    pub ok: u64,
    pub ok_after_solving: u64,
    pub challenged: u64,
    pub limited: u64,
    pub blocked: u64,
    pub unavailable: u64,
    pub other_status: u64,
    pub errors: u64,
    pub skipped: u64,
    pub slow: BTreeMap<String, SlowOutcome>,
}

/// What reached the origin.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OriginLoad {
    /// Counters at the end of the run.
    pub total: Stats,
    /// Mean requests per second that reached it in the baseline and in the attack, and the
    /// busiest second of the attack.
    pub baseline_rps: f64,
    pub attack_rps: f64,
    pub attack_peak_rps: u64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub target: String,
    pub seconds: u64,
    pub interrupted: bool,
    pub baseline: Phase,
    pub attack_phase: Phase,
    pub attackers: Attack,
    /// Requests the drill sent, by class (the origin counts with the same classes).
    pub sent: Sent,
    /// None when the origin's counters were not available (`--origin` not given).
    pub origin: Option<OriginLoad>,
    /// Shield decisions over the attack phase, when the shield's admin was given.
    pub decisions: BTreeMap<String, u64>,
    /// Mode changes, seconds from the start of the attack.
    pub modes: Vec<(f64, String)>,
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn phase<'a>(views: impl Iterator<Item = &'a View>) -> Phase {
    let mut ms = Vec::new();
    let mut ok = 0;
    let mut failures = BTreeMap::new();
    let mut challenged = 0;
    for v in views {
        ms.push(v.ms);
        if v.ok {
            ok += 1;
        } else {
            *failures.entry(v.outcome.clone()).or_insert(0) += 1;
        }
        challenged += u64::from(v.challenged);
    }
    ms.sort_by(f64::total_cmp);
    let n = ms.len() as u64;
    Phase {
        views: n,
        ok,
        success: (n > 0).then(|| ok as f64 / n as f64),
        p50_ms: percentile(&ms, 50.0),
        p95_ms: percentile(&ms, 95.0),
        p99_ms: percentile(&ms, 99.0),
        failures,
        challenged,
    }
}

/// Summarises a run against `target`.
pub fn summarise(r: &RunResult, target: &str) -> Summary {
    let s = &r.settings;
    let a0 = s.warmup + s.baseline;
    let a1 = a0 + s.attack;
    let within = |v: &&View, from: u64, to: u64| v.t_ms >= from * 1000 && v.t_ms < to * 1000;
    let baseline = phase(r.views.iter().filter(|v| within(v, s.warmup, a0)));
    let attack_phase = phase(r.views.iter().filter(|v| within(v, a0, a1)));
    let attack_secs = r
        .seconds
        .get(a0 as usize..(a1 as usize).min(r.seconds.len()))
        .unwrap_or(&[]);
    let base_secs = r
        .seconds
        .get(s.warmup as usize..(a0 as usize).min(r.seconds.len()))
        .unwrap_or(&[]);
    let mut at = Attack {
        slow: r.slow.clone(),
        ..Attack::default()
    };
    let mut decisions = BTreeMap::new();
    for x in attack_secs {
        at.sent += x.flood_sent;
        at.ok += x.flood_ok;
        at.ok_after_solving += x.flood_solved;
        at.challenged += x.flood_challenged;
        at.limited += x.flood_limited;
        at.blocked += x.flood_blocked;
        at.unavailable += x.flood_unavailable;
        at.other_status += x.flood_other;
        at.errors += x.flood_errors;
        at.skipped += x.flood_skipped;
        for (k, v) in &x.decisions {
            *decisions.entry(k.clone()).or_insert(0) += v;
        }
    }
    let load = |x: &crate::engine::Second| x.origin_article + x.origin_search + x.origin_other;
    let mean = |ss: &[crate::engine::Second]| {
        ss.iter().map(load).sum::<u64>() as f64 / ss.len().max(1) as f64
    };
    let origin = r.origin_known.then(|| OriginLoad {
        total: r.origin_total,
        baseline_rps: mean(base_secs),
        attack_rps: mean(attack_secs),
        attack_peak_rps: attack_secs.iter().map(load).max().unwrap_or(0),
    });
    let modes = r
        .transitions
        .iter()
        .map(|t| {
            (
                ((t.at_ms - (a0 * 1000) as i64) as f64) / 1000.0,
                t.to.clone(),
            )
        })
        .collect();
    Summary {
        scenario: r
            .scenario
            .as_ref()
            .map_or_else(String::new, |x| x.name.clone()),
        target: target.to_string(),
        seconds: a1,
        interrupted: r.interrupted,
        baseline,
        attack_phase,
        attackers: at,
        sent: r.sent,
        origin,
        decisions,
        modes,
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{:.1} %", v * 100.0))
}

fn ms(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.0} ms"))
}

impl Summary {
    /// The report as a plain-text table for the terminal.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "drill `{}` against {}: {} s{}",
            self.scenario,
            self.target,
            self.seconds,
            if self.interrupted {
                " (stopped early)"
            } else {
                ""
            }
        );
        let _ = writeln!(o, "\nreaders              baseline        attack");
        let row = |o: &mut String, name: &str, a: String, b: String| {
            let _ = writeln!(o, "  {name:<18} {a:<15} {b}");
        };
        let (b, a) = (&self.baseline, &self.attack_phase);
        row(
            &mut o,
            "page views",
            b.views.to_string(),
            a.views.to_string(),
        );
        row(&mut o, "success", pct(b.success), pct(a.success));
        row(&mut o, "latency p50", ms(b.p50_ms), ms(a.p50_ms));
        row(&mut o, "latency p95", ms(b.p95_ms), ms(a.p95_ms));
        row(&mut o, "latency p99", ms(b.p99_ms), ms(a.p99_ms));
        row(
            &mut o,
            "challenged",
            b.challenged.to_string(),
            a.challenged.to_string(),
        );
        if !a.failures.is_empty() {
            let f: Vec<String> = a
                .failures
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(o, "  failures in the attack: {}", f.join(", "));
        }
        let t = &self.attackers;
        if t.sent + t.skipped > 0 {
            let _ = writeln!(o, "\nattack requests      {}", t.sent);
            for (name, v) in [
                ("answered 2xx", t.ok),
                ("  after solving", t.ok_after_solving),
                ("challenged", t.challenged),
                ("limited (429)", t.limited),
                ("blocked (403)", t.blocked),
                ("502/503/504", t.unavailable),
                ("other status", t.other_status),
                ("timeouts, errors", t.errors),
                ("not sent (caps)", t.skipped),
            ] {
                let _ = writeln!(o, "  {name:<18} {v}");
            }
        }
        for (name, s) in &t.slow {
            let _ = writeln!(
                o,
                "\nslow connections `{name}`: {} opened, {} refused, {} closed by the target \
                 (after {:.1} s on average), {} still open at the end",
                s.opened, s.refused, s.closed_by_target, s.mean_open_s, s.held_to_end
            );
        }
        if !self.decisions.is_empty() {
            let d: Vec<String> = self
                .decisions
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(o, "\nshield decisions in the attack: {}", d.join(", "));
        }
        if !self.modes.is_empty() {
            let m: Vec<String> = self
                .modes
                .iter()
                .map(|(t, to)| format!("{to} at {t:+.1} s"))
                .collect();
            let _ = writeln!(o, "shield mode: {}", m.join(", "));
        }
        let s = &self.sent;
        let _ = writeln!(
            o,
            "\nsent by the drill: {} requests ({} article, {} search, {} admin, {} other)",
            s.total(),
            s.article,
            s.search,
            s.admin,
            s.other
        );
        match &self.origin {
            Some(g) => {
                let t = &g.total;
                let _ = writeln!(
                    o,
                    "reached the origin: {} requests ({} article, {} search, {} admin, {} other); \
                     {:.1}/s in the baseline, {:.1}/s in the attack (peak {}/s)",
                    t.received(),
                    t.article.received,
                    t.search.received,
                    t.admin.received,
                    t.other.received,
                    g.baseline_rps,
                    g.attack_rps,
                    g.attack_peak_rps
                );
            }
            None => {
                let _ = writeln!(
                    o,
                    "origin load: not measured (give --origin with the sample site's URL)"
                );
            }
        }
        o
    }
}
