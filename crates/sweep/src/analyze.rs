//! What is a flood: a cluster of near-identical texts ([`crate::cluster`]) posted by at least
//! [`Params::min_authors`] distinct accounts within [`Params::window_secs`]. A phrase many
//! people say over a month ("спасибо", "рахмет") or one account repeating itself is not one.
//!
//! Every message inside a qualifying window is flagged; messages of the same cluster outside
//! every such window are counted but not flagged (they are the phrase's ordinary use).

use std::collections::HashMap;
use std::time::Instant;

use crate::cluster::{ClusterParams, ClusterStats, NO_CLUSTER, cluster};
use crate::joins::{JoinParams, Wave, find_waves};
use crate::model::Dataset;
use crate::normalize::{alias_keys, exact_key, matching_text};

/// Knobs, with defaults for a channel of a few thousand comments a day.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Distinct accounts that must post the same text within one window.
    pub min_authors: usize,
    /// The window, in seconds; 0 means the whole input is one window.
    pub window_secs: i64,
    pub cluster: ClusterParams,
    pub joins: JoinParams,
    pub threat: crate::threat::ThreatParams,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            min_authors: 25,
            window_secs: 3600,
            cluster: ClusterParams::default(),
            joins: JoinParams::default(),
            threat: crate::threat::ThreatParams::default(),
        }
    }
}

/// One comment flood, by index into the dataset.
#[derive(Debug, Clone)]
pub struct Flood {
    /// Flagged messages (indices into `Dataset::messages`), in time order.
    pub members: Vec<u32>,
    /// Distinct authors among the members (indices of their first message).
    pub authors: usize,
    /// Messages of the cluster in the whole input, flagged or not.
    pub cluster_messages: usize,
    /// Whether the cluster joined different texts (near-duplicates) or one identical key.
    pub near: bool,
    /// The densest window: start, end, distinct authors in it.
    pub peak: (i64, i64, usize),
    pub first: i64,
    pub last: i64,
}

/// Phase timings in milliseconds, for the report and the benchmark.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Timings {
    pub normalize_ms: u64,
    pub cluster_ms: u64,
    pub floods_ms: u64,
    pub joins_ms: u64,
}

/// The outcome of [`analyze`].
#[derive(Debug, Clone)]
pub struct Analysis {
    pub params: Params,
    pub floods: Vec<Flood>,
    pub waves: Vec<Wave>,
    /// Copy-pasted threats ([`crate::threat`]).
    pub threats: Vec<crate::threat::ThreatFinding>,
    /// Cluster id per message.
    pub cluster_of: Vec<u32>,
    /// Distinct exact key per message, and the first message of each key (for the patterns
    /// in the report, without normalising again).
    pub key_of: Vec<u32>,
    pub key_rep: Vec<u32>,
    pub cluster_stats: ClusterStats,
    pub timings: Timings,
}

/// Analyses a dataset. Pure: no IO besides calling `progress(phase, done, total)`.
pub fn analyze(
    ds: &Dataset,
    params: &Params,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Analysis {
    let t0 = Instant::now();
    let n = ds.messages.len();
    let mut texts = Vec::with_capacity(n);
    let mut aliases = Vec::with_capacity(n);
    let lexicon = crate::threat::Lexicon::new();
    let mut threat_hits = Vec::new();
    for (i, m) in ds.messages.iter().enumerate() {
        let t = matching_text(&m.text);
        let hit = lexicon.matches(&t);
        if hit != 0 {
            threat_hits.push((i as u32, hit));
        }
        aliases.push(alias_keys(&m.text, &exact_key(&t)));
        texts.push(t);
        if i % 131_072 == 0 {
            progress("normalize", i as u64, n as u64);
        }
    }
    let t1 = Instant::now();
    let clusters = cluster(&texts, &aliases, &params.cluster, progress);
    drop(texts);
    drop(aliases);
    let t2 = Instant::now();
    let floods = find_floods(ds, &clusters.of_text, &clusters.near, params);
    let threats = crate::threat::find(ds, &clusters.of_text, &threat_hits, &params.threat);
    let t3 = Instant::now();
    progress("joins", 0, ds.joins.len() as u64);
    let waves = find_waves(&ds.joins, &params.joins);
    let t4 = Instant::now();
    let ms = |a: Instant, b: Instant| (b - a).as_millis() as u64;
    Analysis {
        params: *params,
        floods,
        waves,
        threats,
        cluster_of: clusters.of_text,
        key_of: clusters.key_of_text,
        key_rep: clusters.key_rep,
        cluster_stats: clusters.stats,
        timings: Timings {
            normalize_ms: ms(t0, t1),
            cluster_ms: ms(t1, t2),
            floods_ms: ms(t2, t3),
            joins_ms: ms(t3, t4),
        },
    }
}

fn find_floods(ds: &Dataset, cluster_of: &[u32], near: &[bool], p: &Params) -> Vec<Flood> {
    let min_authors = p.min_authors.max(1);
    let window = if p.window_secs <= 0 {
        i64::MAX
    } else {
        p.window_secs
    };
    // Authors as small integers.
    let mut author_ix: HashMap<&str, u32, foldhash::fast::RandomState> = HashMap::default();
    let authors: Vec<u32> = ds
        .messages
        .iter()
        .map(|m| {
            let next = author_ix.len() as u32;
            *author_ix.entry(m.author_id.as_str()).or_insert(next)
        })
        .collect();
    // Messages grouped by cluster, each group in time order.
    let mut order: Vec<u32> = (0..ds.messages.len() as u32)
        .filter(|&i| cluster_of[i as usize] != NO_CLUSTER)
        .collect();
    order.sort_unstable_by_key(|&i| (cluster_of[i as usize], ds.messages[i as usize].time, i));
    let mut floods = Vec::new();
    let mut counts: HashMap<u32, u32, foldhash::fast::RandomState> = HashMap::default();
    let mut s = 0;
    while s < order.len() {
        let c = cluster_of[order[s] as usize];
        let mut e = s;
        while e < order.len() && cluster_of[order[e] as usize] == c {
            e += 1;
        }
        let group = &order[s..e];
        s = e;
        if group.len() < min_authors {
            continue;
        }
        counts.clear();
        let time = |k: usize| ds.messages[group[k] as usize].time;
        let mut marked = vec![false; group.len()];
        let mut marked_upto = 0;
        let mut left = 0;
        let mut peak = (0, 0, 0usize);
        for right in 0..group.len() {
            *counts.entry(authors[group[right] as usize]).or_insert(0) += 1;
            while time(right).saturating_sub(time(left)) > window {
                let a = authors[group[left] as usize];
                if let Some(v) = counts.get_mut(&a) {
                    *v -= 1;
                    if *v == 0 {
                        counts.remove(&a);
                    }
                }
                left += 1;
            }
            if counts.len() >= min_authors {
                for m in marked
                    .iter_mut()
                    .take(right + 1)
                    .skip(left.max(marked_upto))
                {
                    *m = true;
                }
                marked_upto = right + 1;
                if counts.len() > peak.2 {
                    peak = (time(left), time(right), counts.len());
                }
            }
        }
        if marked_upto == 0 {
            continue;
        }
        let members: Vec<u32> = group
            .iter()
            .zip(&marked)
            .filter(|(_, m)| **m)
            .map(|(i, _)| *i)
            .collect();
        let mut distinct: Vec<u32> = members.iter().map(|&i| authors[i as usize]).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let first = ds.messages[members[0] as usize].time;
        let last = ds.messages[members[members.len() - 1] as usize].time;
        floods.push(Flood {
            authors: distinct.len(),
            cluster_messages: group.len(),
            near: near.get(c as usize).copied().unwrap_or(false),
            peak,
            first,
            last,
            members,
        });
    }
    // Largest first; ties by time so the order is stable.
    floods.sort_by(|a, b| {
        b.members
            .len()
            .cmp(&a.members.len())
            .then(a.first.cmp(&b.first))
    });
    floods
}

/// Texts with how often they occur.
pub type Counts = Vec<(String, usize)>;

/// The most common displayed texts and matching keys of a flood, with counts (at most `k`).
pub fn variants(ds: &Dataset, a: &Analysis, members: &[u32], k: usize) -> (Counts, Counts) {
    let mut shown: HashMap<&str, usize, foldhash::fast::RandomState> = HashMap::default();
    let mut keys: HashMap<u32, usize, foldhash::fast::RandomState> = HashMap::default();
    for &i in members {
        *shown
            .entry(ds.messages[i as usize].text.as_str())
            .or_insert(0) += 1;
        if let Some(&u) = a.key_of.get(i as usize) {
            *keys.entry(u).or_insert(0) += 1;
        }
    }
    let mut shown: Counts = shown.into_iter().map(|(t, c)| (t.to_string(), c)).collect();
    shown.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    shown.truncate(k);
    // Only the top keys are spelled out, from the first message that had each.
    let mut keys: Counts = keys
        .into_iter()
        .filter_map(|(u, c)| {
            let rep = *a.key_rep.get(u as usize)?;
            Some((
                exact_key(&matching_text(&ds.messages[rep as usize].text)),
                c,
            ))
        })
        .collect();
    keys.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    keys.truncate(k);
    (shown, keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Message;

    fn msg(i: usize, author: &str, time: i64, text: &str) -> Message {
        Message {
            id: i.to_string(),
            author_id: author.into(),
            author_name: author.into(),
            time,
            text: text.into(),
        }
    }

    #[test]
    fn many_authors_in_a_window_is_a_flood_few_authors_is_not() {
        let mut ds = Dataset::default();
        // 40 accounts post R.I.P within ten minutes.
        for i in 0..40 {
            ds.messages.push(msg(
                i,
                &format!("bot{i}"),
                1000 + i as i64 * 15,
                if i % 2 == 0 { "R.I.P" } else { "Р.І.Р 🙏" },
            ));
        }
        // Three real readers say "Позор!" 200 times between them in the same hour.
        for i in 0..200 {
            ds.messages.push(msg(
                100 + i,
                &format!("reader{}", i % 3),
                1000 + i as i64 * 10,
                "Позор!",
            ));
        }
        // Forty readers say "спасибо" across a month: a common phrase, not a flood.
        for i in 0..40 {
            ds.messages.push(msg(
                400 + i,
                &format!("fan{i}"),
                i as i64 * 86_400 / 2,
                "Спасибо",
            ));
        }
        let a = analyze(&ds, &Params::default(), &mut |_, _, _| {});
        assert_eq!(a.floods.len(), 1, "{:?}", a.floods);
        let f = &a.floods[0];
        assert_eq!(f.members.len(), 40);
        assert_eq!(f.authors, 40);
        assert!(f.members.iter().all(|&i| i < 40));
        let (shown, keys) = variants(&ds, &a, &f.members, 5);
        // Two matching keys (Cyrillic Р is P to the eye), one flood.
        assert_eq!(keys, vec![("pip".to_string(), 20), ("rip".to_string(), 20)]);
        assert_eq!(shown.len(), 2);
    }

    #[test]
    fn only_messages_inside_a_dense_window_are_flagged() {
        let mut ds = Dataset::default();
        // An organic "rip" a day before the flood stays unflagged.
        ds.messages.push(msg(0, "early", 0, "rip"));
        for i in 0..30 {
            ds.messages
                .push(msg(i + 1, &format!("bot{i}"), 86_400 + i as i64, "RIP"));
        }
        let a = analyze(&ds, &Params::default(), &mut |_, _, _| {});
        assert_eq!(a.floods[0].members.len(), 30);
        assert_eq!(a.floods[0].cluster_messages, 31);
        assert_eq!(a.floods[0].peak.2, 30);
    }
}
