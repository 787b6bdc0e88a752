//! Join waves: the join rate against its own baseline, then the cohort described by what its
//! accounts share.
//!
//! **Rate.** Joins are counted per minute. The expected count is a level (an EWMA of
//! deseasonalised counts, frozen while an alarm is on so a wave cannot teach itself as normal)
//! times an hour-of-day factor (the median over days of each hour's joins, relative to their
//! mean; only with two or more days of data). A one-sided CUSUM on the Poisson-standardised
//! residual raises the alarm; it ends after ten quiet minutes. An alarm becomes a wave when its
//! joins exceed what was expected by [`JoinParams::min_excess`] and by a factor of
//! [`JoinParams::min_ratio`].
//!
//! **Cohort.** For the accounts of a wave and for every account outside all waves (the
//! baseline), the share of: no username, no photo, each name *shape* (letters, digits and
//! separators collapsed: `Алия 4821` → `Aa 9`), ids within a dense run of close numeric ids,
//! each invite link. A trait is *distinctive* when it is common in the wave and rare in the
//! baseline. A wave whose distinctive traits include a strong one (a name shape, close ids,
//! one invite link) is a bot cohort; its members are the accounts, in the wave or up to one
//! wave length around it, that carry enough of those traits. A news spike brings accounts
//! that look like the baseline, so it stays an organic wave and nobody in it is flagged.

use std::collections::HashMap;

use serde::Serialize;

use crate::model::Join;
use crate::time_fmt::hour_of_day;

#[derive(Debug, Clone, Copy)]
pub struct JoinParams {
    /// CUSUM allowance, in standard deviations per minute.
    pub cusum_k: f64,
    /// CUSUM alarm level.
    pub cusum_h: f64,
    /// Joins above the expected count a wave must bring.
    pub min_excess: f64,
    /// Factor over the expected count a wave must reach.
    pub min_ratio: f64,
    /// EWMA weight of one minute in the level.
    pub alpha: f64,
}

impl Default for JoinParams {
    fn default() -> Self {
        JoinParams {
            cusum_k: 1.0,
            cusum_h: 12.0,
            min_excess: 100.0,
            min_ratio: 4.0,
            alpha: 0.02,
        }
    }
}

/// A trait accounts of a cohort may share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trait {
    NoUsername,
    NoPhoto,
    TemplatedName,
    CloseIds,
    SameInviteLink,
    SameMinute,
}

impl Trait {
    fn strong(self) -> bool {
        matches!(
            self,
            Trait::TemplatedName | Trait::CloseIds | Trait::SameInviteLink
        )
    }
}

/// How common a trait is in the wave and in the baseline.
#[derive(Debug, Clone, Serialize)]
pub struct TraitShare {
    #[serde(rename = "trait")]
    pub kind: Trait,
    /// What exactly is shared (the name shape, the link), when that is one value.
    pub value: Option<String>,
    pub share_in_wave: f64,
    pub share_in_baseline: f64,
    /// Used to pick members (common in the wave, rare outside).
    pub distinctive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    BotCohort,
    Organic,
}

/// One join wave.
#[derive(Debug, Clone)]
pub struct Wave {
    pub start: i64,
    pub end: i64,
    pub joins: u64,
    pub expected: f64,
    pub peak_per_minute: u64,
    pub baseline_per_minute: f64,
    pub traits: Vec<TraitShare>,
    pub verdict: Verdict,
    /// Flagged accounts (indices into the joins given to [`find_waves`]), in time order.
    pub members: Vec<u32>,
}

const BIN: i64 = 60;
/// Most minutes analysed; a longer span is analysed with wider bins.
const MAX_BINS: i64 = 4_000_000;
const QUIET_BINS: usize = 10;

/// Finds join waves. Joins of the same account after its first are ignored.
pub fn find_waves(joins: &[Join], p: &JoinParams) -> Vec<Wave> {
    if joins.is_empty() {
        return Vec::new();
    }
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    for (i, j) in joins.iter().enumerate() {
        first_of
            .entry(j.account_id.as_str())
            .and_modify(|k| {
                if joins[*k].time > j.time {
                    *k = i
                }
            })
            .or_insert(i);
    }
    let mut idx: Vec<usize> = first_of.into_values().collect();
    idx.sort_unstable_by_key(|&i| (joins[i].time, i));
    let t0 = joins[idx[0]].time.div_euclid(BIN) * BIN;
    let t_end = joins[idx[idx.len() - 1]].time;
    let span = t_end.saturating_sub(t0).max(1);
    let bin = BIN.max(span / MAX_BINS + 1);
    let nbins = (span / bin + 1) as usize;
    let mut counts = vec![0u64; nbins];
    for &i in &idx {
        counts[((joins[i].time - t0) / bin) as usize] += 1;
    }
    let bin_time = |b: usize| t0 + b as i64 * bin;
    let factor = seasonal_factors(&counts, bin, t0);
    let f_of = |b: usize| factor[hour_of_day(bin_time(b))];
    let mut level = trimmed_mean(
        &counts
            .iter()
            .enumerate()
            .map(|(b, &c)| c as f64 / f_of(b))
            .collect::<Vec<_>>(),
    );
    let mut episodes: Vec<(usize, usize, f64)> = Vec::new();
    let (mut s, mut alarm, mut start, mut quiet, mut expected) =
        (0.0f64, false, 0usize, 0usize, 0.0f64);
    for (b, &c) in counts.iter().enumerate() {
        let mu = (level * f_of(b)).max(0.02);
        let sd = mu.max(1.0).sqrt();
        let x = c as f64;
        if s == 0.0 {
            start = b;
            expected = 0.0;
        }
        s = (s + (x - mu) / sd - p.cusum_k).max(0.0);
        expected += mu;
        if !alarm && s > p.cusum_h {
            alarm = true;
            quiet = 0;
        }
        if alarm {
            if x <= mu + 2.0 * sd {
                quiet += 1;
                if quiet >= QUIET_BINS {
                    let end = b + 1 - QUIET_BINS;
                    episodes.push((start, end, expected));
                    alarm = false;
                    s = 0.0;
                }
            } else {
                quiet = 0;
            }
        } else if s == 0.0 {
            // Learn only from calm minutes, so a wave never becomes its own baseline.
            level = (1.0 - p.alpha) * level + p.alpha * (x / f_of(b));
        }
    }
    if alarm {
        episodes.push((start, nbins, expected));
    }
    let windows: Vec<(i64, i64, u64, f64, u64)> = episodes
        .into_iter()
        .filter_map(|(a, b, _)| {
            let b = b.max(a + 1).min(nbins);
            let joins: u64 = counts[a..b].iter().sum();
            let exp: f64 = (a..b).map(|k| (level * f_of(k)).max(0.02)).sum();
            let peak = counts[a..b].iter().copied().max().unwrap_or(0);
            ((joins as f64 - exp) >= p.min_excess && joins as f64 >= p.min_ratio * exp)
                .then(|| (bin_time(a), bin_time(b), joins, exp, peak))
        })
        .collect();
    let in_any = |t: i64| windows.iter().any(|w| t >= w.0 && t < w.1);
    let baseline: Vec<usize> = idx
        .iter()
        .copied()
        .filter(|&i| !in_any(joins[i].time))
        .collect();
    let baseline_rate = if nbins > 0 {
        baseline.len() as f64 / nbins as f64 * (BIN as f64 / bin as f64)
    } else {
        0.0
    };
    windows
        .into_iter()
        .map(|(start, end, n, exp, peak)| {
            let core: Vec<usize> = idx
                .iter()
                .copied()
                .filter(|&i| joins[i].time >= start && joins[i].time < end)
                .collect();
            describe(
                joins,
                &idx,
                &core,
                &baseline,
                &counts,
                t0,
                bin,
                (start, end, n, exp, peak),
                baseline_rate,
            )
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn describe(
    joins: &[Join],
    all: &[usize],
    core: &[usize],
    baseline: &[usize],
    counts: &[u64],
    t0: i64,
    bin: i64,
    (start, end, n, exp, peak): (i64, i64, u64, f64, u64),
    baseline_rate: f64,
) -> Wave {
    let mut traits = Vec::new();
    let share = |set: &[usize], f: &dyn Fn(&Join) -> Option<bool>| -> Option<f64> {
        let known: Vec<bool> = set.iter().filter_map(|&i| f(&joins[i])).collect();
        (!known.is_empty())
            .then(|| known.iter().filter(|b| **b).count() as f64 / known.len() as f64)
    };
    let mut push =
        |kind: Trait, value: Option<String>, w: Option<f64>, b: Option<f64>, strong_ratio: f64| {
            if let Some(w) = w {
                let b = b.unwrap_or(0.0);
                let distinctive = if kind.strong() {
                    w >= 0.3 && b * strong_ratio <= w
                } else {
                    w >= 0.5 && b * 1.5 <= w
                };
                traits.push(TraitShare {
                    kind,
                    value,
                    share_in_wave: round3(w),
                    share_in_baseline: round3(b),
                    distinctive: distinctive && kind != Trait::SameMinute,
                });
            }
        };
    let no_user = |j: &Join| j.username.as_ref().map(|u| u.is_empty());
    let no_photo = |j: &Join| j.has_photo.map(|p| !p);
    push(
        Trait::NoUsername,
        None,
        share(core, &no_user),
        share(baseline, &no_user),
        1.0,
    );
    push(
        Trait::NoPhoto,
        None,
        share(core, &no_photo),
        share(baseline, &no_photo),
        1.0,
    );
    // The most common name shape in the wave.
    let top_shape = most_common(core.iter().map(|&i| name_shape(&joins[i].name)));
    if let Some(shape) = &top_shape {
        let is = |j: &Join| Some(&name_shape(&j.name) == shape);
        push(
            Trait::TemplatedName,
            Some(shape.clone()),
            share(core, &is),
            share(baseline, &is),
            5.0,
        );
    }
    let close_core = close_ids(joins, core);
    let close_base = close_ids(joins, baseline);
    let frac = |set: &std::collections::HashSet<usize>, of: &[usize]| {
        (!of.is_empty()).then(|| set.len() as f64 / of.len() as f64)
    };
    push(
        Trait::CloseIds,
        None,
        frac(&close_core, core),
        frac(&close_base, baseline),
        5.0,
    );
    let top_link = most_common(core.iter().filter_map(|&i| joins[i].invite_link.clone()));
    if let Some(link) = &top_link {
        let is = |j: &Join| Some(j.invite_link.as_ref() == Some(link));
        push(
            Trait::SameInviteLink,
            Some(link.clone()),
            share(core, &is),
            share(baseline, &is),
            5.0,
        );
    }
    // Accounts that joined in a minute with ten times the usual joins (descriptive only).
    let burst = |j: &Join| {
        let b = ((j.time - t0) / bin) as usize;
        Some(counts.get(b).copied().unwrap_or(0) as f64 >= 10.0 * baseline_rate.max(1.0))
    };
    push(Trait::SameMinute, None, share(core, &burst), None, 1.0);

    let distinctive: Vec<&TraitShare> = traits.iter().filter(|t| t.distinctive).collect();
    let verdict = if distinctive.iter().any(|t| t.kind.strong()) {
        Verdict::BotCohort
    } else {
        Verdict::Organic
    };
    let mut members = Vec::new();
    if verdict == Verdict::BotCohort {
        let need = distinctive.len().min(2);
        let margin = (end - start).max(1800);
        let around: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| joins[i].time >= start - margin && joins[i].time < end + margin)
            .collect();
        let close_around = close_ids(joins, &around);
        for &i in &around {
            let j = &joins[i];
            let mut have = 0;
            let mut strong = false;
            for t in &distinctive {
                let yes = match t.kind {
                    Trait::NoUsername => no_user(j) == Some(true),
                    Trait::NoPhoto => no_photo(j) == Some(true),
                    Trait::TemplatedName => Some(name_shape(&j.name)) == t.value,
                    Trait::CloseIds => close_around.contains(&i),
                    Trait::SameInviteLink => j.invite_link == t.value,
                    Trait::SameMinute => false,
                };
                if yes {
                    have += 1;
                    strong |= t.kind.strong();
                }
            }
            if strong && have >= need {
                members.push(i as u32);
            }
        }
    }
    Wave {
        start,
        end,
        joins: n,
        expected: round3(exp),
        peak_per_minute: peak,
        baseline_per_minute: round3(baseline_rate),
        traits,
        verdict,
        members,
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn most_common<I: Iterator<Item = String>>(it: I) -> Option<String> {
    let mut m: HashMap<String, usize> = HashMap::new();
    for s in it {
        *m.entry(s).or_insert(0) += 1;
    }
    m.into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        .map(|(s, _)| s)
}

/// The shape of a display name: upper-case letters `A`, lower-case `a`, digits `9`, runs of
/// one class collapsed, separators kept. Templated names share a shape; people's names vary.
pub fn name_shape(name: &str) -> String {
    let mut out = String::new();
    let mut last = None;
    for c in name.trim().chars().take(64) {
        let class = if c.is_uppercase() {
            'A'
        } else if c.is_alphabetic() {
            'a'
        } else if c.is_numeric() {
            '9'
        } else if c.is_whitespace() {
            ' '
        } else {
            c
        };
        if Some(class) != last {
            out.push(class);
            last = Some(class);
        }
    }
    out
}

/// Accounts whose numeric id lies within a run of at least 20 ids no more than 10,000 apart:
/// accounts registered in one batch get neighbouring ids; people joining a channel do not.
fn close_ids(joins: &[Join], set: &[usize]) -> std::collections::HashSet<usize> {
    let mut ids: Vec<(u64, usize)> = set
        .iter()
        .filter_map(|&i| {
            let digits: String = joins[i]
                .account_id
                .chars()
                .filter(|c| c.is_ascii_digit())
                .take(19)
                .collect();
            digits.parse::<u64>().ok().map(|d| (d, i))
        })
        .collect();
    ids.sort_unstable();
    let mut out = std::collections::HashSet::new();
    let mut s = 0;
    while s < ids.len() {
        let mut e = s + 1;
        while e < ids.len() && ids[e].0 - ids[e - 1].0 <= 10_000 {
            e += 1;
        }
        if e - s >= 20 {
            out.extend(ids[s..e].iter().map(|x| x.1));
        }
        s = e;
    }
    out
}

/// Hour-of-day factors (24, mean 1): the median over days of each hour's count.
fn seasonal_factors(counts: &[u64], bin: i64, t0: i64) -> [f64; 24] {
    let span = counts.len() as i64 * bin;
    let mut f = [1.0; 24];
    if span < 2 * 86_400 || bin > 3600 {
        return f;
    }
    let days = (span / 86_400 + 1) as usize;
    let mut per = vec![[0u64; 24]; days];
    for (b, &c) in counts.iter().enumerate() {
        let t = t0 + b as i64 * bin;
        let d = ((t - t0) / 86_400) as usize;
        per[d][hour_of_day(t)] += c;
    }
    let mut med = [0.0; 24];
    for (h, m) in med.iter_mut().enumerate() {
        let mut v: Vec<u64> = per.iter().map(|d| d[h]).collect();
        v.sort_unstable();
        *m = v[v.len() / 2] as f64;
    }
    let mean = med.iter().sum::<f64>() / 24.0;
    if mean <= 0.0 {
        return f;
    }
    for h in 0..24 {
        f[h] = (med[h] / mean).max(0.2);
    }
    f
}

/// Mean without the top 5 % (waves are rare, so they should not raise the starting level).
fn trimmed_mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_unstable_by(|a, b| a.total_cmp(b));
    let keep = (s.len() * 95 / 100).max(1);
    s[..keep].iter().sum::<f64>() / keep as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(name_shape("Алия 4821"), "Aa 9");
        assert_eq!(name_shape("user_48213"), "a_9");
        assert_eq!(name_shape("Иван Петров"), "Aa Aa");
        assert_eq!(name_shape(""), "");
    }

    fn join(id: u64, name: &str, t: i64, user: bool, link: Option<&str>) -> Join {
        Join {
            account_id: format!("user{id}"),
            name: name.into(),
            username: Some(if user {
                format!("u{id}")
            } else {
                String::new()
            }),
            has_photo: Some(user),
            time: t,
            invite_link: link.map(str::to_string),
        }
    }

    #[test]
    fn a_flat_stream_has_no_wave_and_a_templated_burst_is_one() {
        let mut j = Vec::new();
        let mut x: u64 = 12345;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for m in 0..3 * 1440 {
            if m % 2 == 0 {
                let id = 100_000_000 + rnd() % 7_000_000_000;
                j.push(join(id, "Дана Серікова", m * 60 + 7, rnd() % 3 > 0, None));
            }
        }
        assert!(find_waves(&j, &JoinParams::default()).is_empty());
        for k in 0..2000u64 {
            j.push(join(
                7_900_000_000 + k * 7,
                &format!("Алия {}", 1000 + k),
                1440 * 60 + (k as i64 * 60 / 40),
                false,
                Some("https://t.me/+abc"),
            ));
        }
        let w = find_waves(&j, &JoinParams::default());
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].verdict, Verdict::BotCohort);
        let bots = w[0]
            .members
            .iter()
            .filter(|&&i| j[i as usize].name.starts_with("Алия"))
            .count();
        assert_eq!(bots, 2000);
        assert_eq!(w[0].members.len(), 2000);
    }
}
