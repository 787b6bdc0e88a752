//! What provokes attacks: the publications before each incident, and the tags and words (of
//! titles and summaries) over-represented before attacks compared with the outlet's normal
//! output.
//!
//! **Method.** A publication is *before an attack* when it appeared in the window (default 72 h)
//! before the start of a visible incident of its outlet. For each term (a tag, or a keyword of a
//! title or of a summary, the feed item's description as plain text: Unicode lower case,
//! Russian, Kazakh and English stop words and words under three letters dropped; a term counts
//! once per publication wherever it appears in it) and each outlet, `k` of the `n` publications before attacks carry it, and `K`
//! of all `N` publications of the period. Observed `O = Σk`, expected `E = Σ n·K/N`, lift
//! `O / E` (for one outlet, `p_before / p_all`). The 95 % interval is the Poisson interval of `O`
//! (Byar's approximation) divided by `E`. The p-value is exact: under "attacks do not care what
//! was published", the publications before attacks are a random subset of each outlet's output,
//! so each `k` is hypergeometric and their sum is their convolution. Terms carried by fewer than
//! `min_support` publications in all are not tested; the p-values of the rest are adjusted by
//! Benjamini–Hochberg, and a term is *significant* when its adjusted value is at most 0.05, its
//! interval lies above 1, and at least `min_support` publications before attacks carry it.
//!
//! **Architecture invariant:** incidents are read through [`crate::store::VISIBLE`], so the
//! statistics and their evidence use only incidents the caller may see; publications are public
//! (every member reads them), but only those of outlets with a visible incident are used.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::accounts::Actor;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::model::{FieldError, format_time, now_ms, parse_time};
use crate::store::VISIBLE;

/// Default window before an incident's start, in hours.
pub const DEFAULT_WINDOW_H: i64 = 72;
/// Longest window accepted (30 days).
pub const MAX_WINDOW_H: i64 = 720;
/// Most publications listed before one incident.
pub const MAX_PRECEDING: i64 = 100;
/// Most incidents and publications one analysis reads (the newest).
const MAX_INCIDENTS: i64 = 5_000;
const MAX_PUBLICATIONS: i64 = 50_000;
/// Most evidence shown per term: incidents, and publications per incident.
const EVIDENCE_INCIDENTS: usize = 10;
const EVIDENCE_PUBS: usize = 5;

// ---------------------------------------------------------------------------------------------
// Words.

const STOP_RU: &[&str] = &[
    "и",
    "в",
    "во",
    "не",
    "что",
    "он",
    "на",
    "я",
    "с",
    "со",
    "как",
    "а",
    "то",
    "все",
    "она",
    "так",
    "его",
    "но",
    "да",
    "ты",
    "к",
    "у",
    "же",
    "вы",
    "за",
    "бы",
    "по",
    "только",
    "ее",
    "мне",
    "было",
    "вот",
    "от",
    "меня",
    "еще",
    "нет",
    "о",
    "из",
    "ему",
    "теперь",
    "когда",
    "даже",
    "ну",
    "вдруг",
    "ли",
    "если",
    "уже",
    "или",
    "ни",
    "быть",
    "был",
    "него",
    "до",
    "вас",
    "нибудь",
    "опять",
    "уж",
    "вам",
    "ведь",
    "там",
    "потом",
    "себя",
    "ничего",
    "ей",
    "может",
    "они",
    "тут",
    "где",
    "есть",
    "надо",
    "ней",
    "для",
    "мы",
    "тебя",
    "их",
    "чем",
    "была",
    "сам",
    "чтоб",
    "без",
    "будто",
    "чего",
    "раз",
    "тоже",
    "себе",
    "под",
    "будет",
    "ж",
    "тогда",
    "кто",
    "этот",
    "того",
    "потому",
    "этого",
    "какой",
    "совсем",
    "ним",
    "здесь",
    "этом",
    "один",
    "почти",
    "мой",
    "тем",
    "чтобы",
    "нее",
    "были",
    "куда",
    "зачем",
    "всех",
    "никогда",
    "можно",
    "при",
    "наконец",
    "два",
    "об",
    "другой",
    "хоть",
    "после",
    "над",
    "больше",
    "тот",
    "через",
    "эти",
    "нас",
    "про",
    "всего",
    "них",
    "какая",
    "много",
    "разве",
    "три",
    "эту",
    "моя",
    "впрочем",
    "хорошо",
    "свою",
    "этой",
    "перед",
    "иногда",
    "лучше",
    "чуть",
    "том",
    "нельзя",
    "такой",
    "им",
    "более",
    "всегда",
    "конечно",
    "всю",
    "между",
    "это",
    "также",
    "which",
    "будут",
    "года",
    "году",
    "год",
    "стал",
    "стало",
    "стала",
    "станет",
    "против",
    "более",
    "менее",
    "около",
    "сегодня",
    "вчера",
    "завтра",
];

const STOP_KK: &[&str] = &[
    "және",
    "мен",
    "бен",
    "пен",
    "да",
    "де",
    "та",
    "те",
    "бұл",
    "осы",
    "сол",
    "ол",
    "оның",
    "оны",
    "үшін",
    "туралы",
    "бойынша",
    "кейін",
    "дейін",
    "арқылы",
    "қарай",
    "бірақ",
    "немесе",
    "әлде",
    "не",
    "ме",
    "ма",
    "ба",
    "бе",
    "па",
    "пе",
    "ғана",
    "қана",
    "тек",
    "біз",
    "сіз",
    "сен",
    "мен",
    "олар",
    "біздің",
    "сіздің",
    "жоқ",
    "бар",
    "емес",
    "еді",
    "екен",
    "деп",
    "деді",
    "болды",
    "болып",
    "болса",
    "болған",
    "болады",
    "жыл",
    "жылы",
    "жылғы",
    "тағы",
    "әр",
    "барлық",
    "бәрі",
    "кім",
    "қандай",
    "қашан",
    "неге",
    "қалай",
    "бір",
    "екі",
    "үш",
    "соң",
    "қазір",
    "бүгін",
    "ертең",
    "кеше",
    "жаңа",
    "ең",
    "өте",
    "тағы",
    "да",
    "сондай",
    "мұнда",
    "онда",
    "әлі",
];

const STOP_EN: &[&str] = &[
    "the", "a", "an", "and", "or", "but", "if", "of", "at", "by", "for", "with", "about",
    "against", "between", "into", "through", "during", "before", "after", "above", "below", "to",
    "from", "up", "down", "in", "out", "on", "off", "over", "under", "again", "further", "then",
    "once", "here", "there", "when", "where", "why", "how", "all", "any", "both", "each", "few",
    "more", "most", "other", "some", "such", "no", "nor", "not", "only", "own", "same", "so",
    "than", "too", "very", "can", "will", "just", "should", "now", "is", "are", "was", "were",
    "be", "been", "being", "have", "has", "had", "do", "does", "did", "this", "that", "these",
    "those", "it", "its", "they", "them", "their", "what", "which", "who", "whom", "we", "our",
    "you", "your", "he", "she", "his", "her", "says", "said", "new", "year", "years",
];

fn is_stop(w: &str) -> bool {
    STOP_RU.contains(&w) || STOP_KK.contains(&w) || STOP_EN.contains(&w)
}

/// The keywords of a title: split on everything but letters and digits, Unicode lower case
/// (`ё` read as `е`), Kazakh letters kept as they are, words of fewer than three letters,
/// numbers and stop words of the three languages dropped, each word once.
pub fn keywords(title: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for raw in title.split(|c: char| !c.is_alphanumeric()) {
        let w: String = raw
            .chars()
            .flat_map(char::to_lowercase)
            .map(|c| if c == 'ё' { 'е' } else { c })
            .collect();
        if w.chars().count() < 3 || w.chars().all(|c| c.is_numeric()) || is_stop(&w) {
            continue;
        }
        if !out.contains(&w) {
            out.push(w);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Statistics (pure).

/// A publication as the analysis reads it.
#[derive(Debug, Clone)]
pub struct PubRow {
    pub outlet_id: i64,
    pub url: String,
    pub title: String,
    /// Plain text ('' when none); its keywords count like the title's.
    pub summary: String,
    pub published_ms: i64,
    pub tags: Vec<String>,
}

/// An incident as the analysis reads it.
#[derive(Debug, Clone)]
pub struct IncidentRow {
    pub uuid: String,
    pub title: String,
    pub outlet_id: i64,
    pub outlet: String,
    pub started_ms: i64,
}

/// The analysis's settings.
#[derive(Debug, Clone)]
pub struct Params {
    pub window_ms: i64,
    /// Fewest publications carrying a term (in all) for it to be tested, and fewest before
    /// attacks for it to be significant.
    pub min_support: u32,
    /// The false discovery rate of Benjamini–Hochberg.
    pub fdr: f64,
    /// Most terms listed.
    pub limit: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            window_ms: DEFAULT_WINDOW_H * 3_600_000,
            min_support: 3,
            fdr: 0.05,
            limit: 30,
        }
    }
}

/// One publication shown as evidence.
#[derive(Debug, Clone, Serialize)]
pub struct EvidencePub {
    pub url: String,
    pub title: String,
    pub published_at: String,
    /// Minutes from publication to the incident's start.
    pub lead_minutes: i64,
}

/// One incident shown as evidence for a term, with its publications that carry the term.
#[derive(Debug, Clone, Serialize)]
pub struct EvidenceIncident {
    pub id: String,
    pub title: String,
    pub outlet: String,
    pub started_at: String,
    pub publications: Vec<EvidencePub>,
}

/// One term's figures.
#[derive(Debug, Clone, Serialize)]
pub struct TermStat {
    pub term: String,
    /// `tag` or `keyword`.
    pub kind: &'static str,
    /// Publications before attacks carrying the term, and all publications before attacks.
    pub before: u32,
    pub before_total: u32,
    /// Publications of the period carrying the term, and all of them (outlets with incidents).
    pub all: u32,
    pub all_total: u32,
    /// Expected count before attacks if attacks ignored the term.
    pub expected: f64,
    pub lift: f64,
    pub lift_low: f64,
    pub lift_high: f64,
    pub p_value: f64,
    /// Benjamini–Hochberg adjusted p-value.
    pub q_value: f64,
    pub significant: bool,
    /// Incidents whose window holds a publication carrying the term (newest first).
    pub incidents: u32,
    pub evidence: Vec<EvidenceIncident>,
}

/// The analysis's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub window_hours: i64,
    pub from: String,
    pub to: String,
    pub incidents: usize,
    pub publications: usize,
    pub publications_before: usize,
    pub terms_tested: usize,
    pub min_support: u32,
    pub fdr: f64,
    pub method: &'static str,
    /// Significant terms first, then by p-value; at most `limit`.
    pub terms: Vec<TermStat>,
}

/// The method in one paragraph (API answers carry it; the page explains it in three languages).
pub const METHOD: &str = "Publications in the window before a visible incident of their outlet are 'before'. \
For each tag and keyword of titles and summaries (each term once per publication): lift = observed / expected before-attack publications carrying it, \
expected = sum over outlets of n_before * share in the outlet's whole output (one outlet: p_before / p_all); \
95% interval: Poisson interval of the observed count (Byar) / expected; p-value: exact, the sum of \
per-outlet hypergeometric counts; Benjamini-Hochberg over all tested terms; significant when the adjusted \
value <= fdr, the interval's lower end > 1 and the before-attack count >= min_support.";

/// Most keywords one publication's summary adds (its first ones), so that a long lead does not
/// weigh more in the analysis's memory than a hundred titles.
pub const MAX_SUMMARY_KEYWORDS: usize = 100;

/// Terms of one publication: its tags, then the keywords of its title and of its summary (as
/// `(kind, text)`), each once: the statistics count publications, so a word in both the title
/// and the summary, or twice in the summary, is one publication carrying it.
pub fn terms_of(p: &PubRow) -> Vec<(&'static str, String)> {
    let mut t: Vec<(&'static str, String)> = Vec::new();
    let mut seen: std::collections::HashSet<(&'static str, String)> = Default::default();
    for tag in &p.tags {
        let tag = tag.trim().to_lowercase();
        if !tag.is_empty() && seen.insert(("tag", tag.clone())) {
            t.push(("tag", tag));
        }
    }
    let summary = keywords(&p.summary);
    for w in keywords(&p.title)
        .into_iter()
        .chain(summary.into_iter().take(MAX_SUMMARY_KEYWORDS))
    {
        if seen.insert(("keyword", w.clone())) {
            t.push(("keyword", w));
        }
    }
    t
}

/// ln(i!) for i in 0..=n.
fn ln_factorials(n: usize) -> Vec<f64> {
    let mut v = Vec::with_capacity(n + 1);
    let mut acc = 0.0f64;
    v.push(0.0);
    for i in 1..=n {
        acc += (i as f64).ln();
        v.push(acc);
    }
    v
}

fn ln_choose(lf: &[f64], n: usize, k: usize) -> f64 {
    match (
        lf.get(n),
        lf.get(k),
        n.checked_sub(k).and_then(|d| lf.get(d)),
    ) {
        (Some(a), Some(b), Some(c)) if k <= n => a - b - c,
        _ => f64::NEG_INFINITY,
    }
}

/// The hypergeometric distribution of the number of marked items in a sample of `n` from `big_n`
/// of which `big_k` are marked: `(lowest value, probabilities from it on)`.
fn hypergeometric(lf: &[f64], big_n: usize, big_k: usize, n: usize) -> (usize, Vec<f64>) {
    let lo = (n + big_k).saturating_sub(big_n);
    let hi = big_k.min(n);
    let denom = ln_choose(lf, big_n, n);
    let pmf = (lo..=hi)
        .map(|x| (ln_choose(lf, big_k, x) + ln_choose(lf, big_n - big_k, n - x) - denom).exp())
        .collect();
    trim(lo, pmf)
}

/// Drops the far tails of a distribution (entries under 1e-18 of its largest), so convolving
/// many outlets' distributions stays cheap: the mass lies within a few standard deviations of
/// the mean, and what is dropped changes no p-value that matters.
fn trim(lo: usize, pmf: Vec<f64>) -> (usize, Vec<f64>) {
    let max = pmf.iter().copied().fold(0.0f64, f64::max);
    let keep = |x: &f64| *x >= max * 1e-18;
    let first = pmf.iter().position(keep).unwrap_or(0);
    let last = pmf
        .iter()
        .rposition(keep)
        .unwrap_or(pmf.len().saturating_sub(1));
    if first == 0 && last + 1 == pmf.len() {
        return (lo, pmf);
    }
    (lo + first, pmf.get(first..=last).unwrap_or(&[]).to_vec())
}

/// P(sum of independent hypergeometric counts >= observed), per outlet `(N, K, n)`.
fn tail(lf: &[f64], parts: &[(usize, usize, usize)], observed: usize) -> f64 {
    let mut lo = 0usize;
    let mut dist = vec![1.0f64];
    for &(big_n, big_k, n) in parts {
        let (l, pmf) = hypergeometric(lf, big_n, big_k, n);
        let mut next = vec![0.0f64; dist.len() + pmf.len() - 1];
        for (i, a) in dist.iter().enumerate() {
            if *a == 0.0 {
                continue;
            }
            for (j, b) in pmf.iter().enumerate() {
                next[i + j] += a * b;
            }
        }
        let (l2, trimmed) = trim(lo + l, next);
        lo = l2;
        dist = trimmed;
    }
    let start = observed.saturating_sub(lo);
    if observed < lo {
        return 1.0;
    }
    dist.iter().skip(start).sum::<f64>().clamp(0.0, 1.0)
}

/// Byar's approximation of the 95 % Poisson interval of a count.
fn poisson_interval(o: f64) -> (f64, f64) {
    let z = 1.959_963_984_540_054;
    let low = if o <= 0.0 {
        0.0
    } else {
        o * (1.0 - 1.0 / (9.0 * o) - z / (3.0 * o.sqrt())).powi(3)
    };
    let o1 = o + 1.0;
    let high = o1 * (1.0 - 1.0 / (9.0 * o1) + z / (3.0 * o1.sqrt())).powi(3);
    (low.max(0.0), high)
}

/// Benjamini–Hochberg adjusted p-values, in the input's order.
fn bh_adjust(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|a, b| p[*b].total_cmp(&p[*a]));
    let mut q = vec![1.0; m];
    let mut running = 1.0f64;
    for (rank_from_top, &i) in order.iter().enumerate() {
        let rank = m - rank_from_top; // 1-based rank in ascending order
        running = running.min(p[i] * m as f64 / rank as f64);
        q[i] = running.min(1.0);
    }
    q
}

struct Acc {
    kind: &'static str,
    text: String,
    /// `(outlet index, K, k)`, one entry per outlet that has the term.
    per_outlet: Vec<(usize, u32, u32)>,
}

/// Runs the analysis over the given incidents and the publications of their outlets.
pub fn analyze(incidents: &[IncidentRow], pubs: &[PubRow], p: &Params) -> Analysis {
    let w = p.window_ms.max(0);
    // Outlets that have incidents; the incidents' starts per outlet, sorted.
    let mut outlets: Vec<i64> = incidents.iter().map(|i| i.outlet_id).collect();
    outlets.sort_unstable();
    outlets.dedup();
    let idx = |o: i64| outlets.binary_search(&o).ok();
    let mut starts: Vec<Vec<i64>> = vec![Vec::new(); outlets.len()];
    for i in incidents {
        if let Some(x) = idx(i.outlet_id) {
            starts[x].push(i.started_ms);
        }
    }
    for s in &mut starts {
        s.sort_unstable();
    }
    let mut big_n = vec![0usize; outlets.len()];
    let mut n_before = vec![0usize; outlets.len()];
    let mut terms: HashMap<(&'static str, String), usize> = HashMap::new();
    let mut accs: Vec<Acc> = Vec::new();
    // The terms of each publication, as indices into `accs` (the evidence looks them up).
    let mut pub_terms: Vec<Vec<u32>> = vec![Vec::new(); pubs.len()];
    for (pi, pb) in pubs.iter().enumerate() {
        let Some(o) = idx(pb.outlet_id) else { continue };
        big_n[o] += 1;
        // Before an attack: some start t with t - w <= published <= t, i.e. the first start at or
        // after the publication is within w of it.
        let s = &starts[o];
        let first = s.partition_point(|t| *t < pb.published_ms);
        let before = s.get(first).is_some_and(|t| t - pb.published_ms <= w);
        if before {
            n_before[o] += 1;
        }
        for key in terms_of(pb) {
            let ai = *terms.entry(key.clone()).or_insert_with(|| {
                accs.push(Acc {
                    kind: key.0,
                    text: key.1.clone(),
                    per_outlet: Vec::new(),
                });
                accs.len() - 1
            });
            pub_terms[pi].push(ai as u32);
            let a = &mut accs[ai];
            match a.per_outlet.iter_mut().find(|e| e.0 == o) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += u32::from(before);
                }
                None => a.per_outlet.push((o, 1, u32::from(before))),
            }
        }
    }
    let total_n: usize = big_n.iter().sum();
    let total_before: usize = n_before.iter().sum();
    let lf = ln_factorials(big_n.iter().copied().max().unwrap_or(0));
    // Test the terms with enough support in all (a filter on the margin, independent of where
    // the term falls, so Benjamini–Hochberg stays valid).
    let mut stats: Vec<TermStat> = Vec::new();
    let mut stat_term: Vec<u32> = Vec::new();
    for (ai, a) in accs.iter().enumerate() {
        let all: u32 = a.per_outlet.iter().map(|e| e.1).sum();
        if all < p.min_support || total_before == 0 {
            continue;
        }
        let observed: u32 = a.per_outlet.iter().map(|e| e.2).sum();
        let expected: f64 = a
            .per_outlet
            .iter()
            .map(|&(o, k, _)| n_before[o] as f64 * f64::from(k) / big_n[o].max(1) as f64)
            .sum();
        let parts: Vec<(usize, usize, usize)> = a
            .per_outlet
            .iter()
            .filter(|&&(o, _, _)| n_before[o] > 0)
            .map(|&(o, k, _)| (big_n[o], k as usize, n_before[o]))
            .collect();
        let p_value = tail(&lf, &parts, observed as usize);
        let (lo, hi) = poisson_interval(f64::from(observed));
        // The count before attacks cannot exceed Σ min(K, n): the Poisson upper end can, for a
        // term that is in most of an outlet's output, so it is capped there.
        let most: usize = a
            .per_outlet
            .iter()
            .map(|&(o, k, _)| (k as usize).min(n_before[o]))
            .sum();
        let hi = hi.min(most as f64).max(f64::from(observed));
        let e = expected.max(f64::MIN_POSITIVE);
        stats.push(TermStat {
            term: a.text.clone(),
            kind: a.kind,
            before: observed,
            before_total: total_before as u32,
            all,
            all_total: total_n as u32,
            expected,
            lift: f64::from(observed) / e,
            lift_low: lo / e,
            lift_high: hi / e,
            p_value,
            q_value: 1.0,
            significant: false,
            incidents: 0,
            evidence: Vec::new(),
        });
        stat_term.push(ai as u32);
    }
    // Publications of each outlet by time, for the evidence's window look-ups.
    let mut by_outlet: HashMap<i64, Vec<usize>> = HashMap::new();
    for (pi, pb) in pubs.iter().enumerate() {
        by_outlet.entry(pb.outlet_id).or_default().push(pi);
    }
    for v in by_outlet.values_mut() {
        v.sort_by_key(|&pi| pubs[pi].published_ms);
    }
    let q = bh_adjust(&stats.iter().map(|s| s.p_value).collect::<Vec<_>>());
    for (s, q) in stats.iter_mut().zip(q) {
        s.q_value = q;
        s.significant = q <= p.fdr && s.lift_low > 1.0 && s.before >= p.min_support;
    }
    let mut order: Vec<usize> = (0..stats.len()).filter(|i| stats[*i].before > 0).collect();
    order.sort_by(|a, b| {
        let (x, y) = (&stats[*a], &stats[*b]);
        y.significant
            .cmp(&x.significant)
            .then(x.p_value.total_cmp(&y.p_value))
            .then(y.lift.total_cmp(&x.lift))
            .then(x.term.cmp(&y.term))
    });
    order.truncate(p.limit);
    let tested = stats.len();
    let mut shown: Vec<TermStat> = Vec::with_capacity(order.len());
    for i in order {
        let mut s = stats[i].clone();
        let (s_count, evidence) =
            evidence_for(stat_term[i], incidents, pubs, &pub_terms, &by_outlet, w);
        s.incidents = s_count;
        s.evidence = evidence;
        shown.push(s);
    }
    Analysis {
        incidents: incidents.len(),
        publications: total_n,
        publications_before: total_before,
        terms_tested: tested,
        terms: shown,
    }
}

/// The analysis before it is dressed as a [`Report`].
pub struct Analysis {
    pub incidents: usize,
    pub publications: usize,
    pub publications_before: usize,
    pub terms_tested: usize,
    pub terms: Vec<TermStat>,
}

/// The incidents whose window holds a publication carrying the term, newest first.
fn evidence_for(
    term: u32,
    incidents: &[IncidentRow],
    pubs: &[PubRow],
    pub_terms: &[Vec<u32>],
    by_outlet: &HashMap<i64, Vec<usize>>,
    w: i64,
) -> (u32, Vec<EvidenceIncident>) {
    let mut inc: Vec<&IncidentRow> = incidents.iter().collect();
    inc.sort_by(|a, b| b.started_ms.cmp(&a.started_ms).then(a.uuid.cmp(&b.uuid)));
    let mut count = 0u32;
    let mut out = Vec::new();
    for i in inc {
        let Some(list) = by_outlet.get(&i.outlet_id) else {
            continue;
        };
        // The outlet's publications in [start - w, start], found by binary search.
        let lo = list.partition_point(|&pi| pubs[pi].published_ms < i.started_ms - w);
        let hi = list.partition_point(|&pi| pubs[pi].published_ms <= i.started_ms);
        let mut hits: Vec<&PubRow> = list
            .get(lo..hi)
            .unwrap_or(&[])
            .iter()
            .filter(|&&pi| pub_terms[pi].contains(&term))
            .map(|&pi| &pubs[pi])
            .collect();
        if hits.is_empty() {
            continue;
        }
        count += 1;
        if out.len() >= EVIDENCE_INCIDENTS {
            continue;
        }
        hits.sort_by_key(|p| std::cmp::Reverse(p.published_ms));
        out.push(EvidenceIncident {
            id: i.uuid.clone(),
            title: i.title.clone(),
            outlet: i.outlet.clone(),
            started_at: format_time(i.started_ms),
            publications: hits
                .iter()
                .take(EVIDENCE_PUBS)
                .map(|p| EvidencePub {
                    url: p.url.clone(),
                    title: p.title.clone(),
                    published_at: format_time(p.published_ms),
                    lead_minutes: (i.started_ms - p.published_ms) / 60_000,
                })
                .collect(),
        });
    }
    (count, out)
}

// ---------------------------------------------------------------------------------------------
// Store.

/// One publication before an incident, the closest first.
#[derive(Debug, Clone, Serialize)]
pub struct PrecedingPub {
    pub outlet: String,
    pub url: String,
    pub title: String,
    pub published_at: String,
    pub tags: Vec<String>,
    /// Minutes from publication to the incident's start.
    pub lead_minutes: i64,
}

/// The publications of an incident's outlet in the window before it started.
#[derive(Debug, Clone, Serialize)]
pub struct Preceding {
    pub incident: String,
    pub started_at: String,
    pub window_hours: i64,
    pub publications: Vec<PrecedingPub>,
}

/// What the analysis is asked (API query and page form).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvokeQuery {
    /// An outlet's slug; all outlets with visible incidents when absent or empty.
    pub outlet: Option<String>,
    pub window_hours: Option<i64>,
    /// Start and end of the period (RFC 3339 or a date); default the last 365 days.
    pub from: Option<String>,
    pub to: Option<String>,
    pub min_support: Option<u32>,
    pub limit: Option<usize>,
    /// The page's language (ignored by the API).
    pub lang: Option<String>,
}

/// Checks a window in hours: 1..=720, default 72.
pub fn check_window(h: Option<i64>) -> Result<i64> {
    match h {
        None => Ok(DEFAULT_WINDOW_H),
        Some(h) if (1..=MAX_WINDOW_H).contains(&h) => Ok(h),
        Some(_) => Err(Error::field(
            "window_hours",
            format!("between 1 and {MAX_WINDOW_H}"),
        )),
    }
}

fn tags_of(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

impl Db {
    /// The publications of a visible incident's outlet in the `window_hours` before its start,
    /// the closest first. An incident the caller may not see is "not found".
    pub async fn preceding_publications(
        &self,
        actor: &Actor,
        uuid: &str,
        window_hours: i64,
    ) -> Result<Preceding> {
        if !actor.role.can_read() {
            return Err(Error::Forbidden);
        }
        let window_hours = check_window(Some(window_hours))?;
        let sql = format!(
            "SELECT i.outlet_id, i.started_ms FROM incidents i WHERE i.uuid = $2 AND {VISIBLE}"
        );
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(actor.outlet_id)
            .bind(uuid)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NotFound)?;
        let outlet_id: i64 = r.try_get("outlet_id")?;
        let started: i64 = r.try_get("started_ms")?;
        let rows = sqlx::query(
            "SELECT o.slug, p.url, p.title, p.published_ms, p.tags FROM publications p
             JOIN outlets o ON o.id = p.outlet_id
             WHERE p.outlet_id = $1 AND p.published_ms <= $2 AND p.published_ms >= $3
             ORDER BY p.published_ms DESC, p.id LIMIT $4",
        )
        .bind(outlet_id)
        .bind(started)
        .bind(started.saturating_sub(window_hours * 3_600_000))
        .bind(MAX_PRECEDING)
        .fetch_all(&self.pool)
        .await?;
        let publications = rows
            .iter()
            .map(|r| {
                let at: i64 = r.try_get("published_ms")?;
                Ok(PrecedingPub {
                    outlet: r.try_get("slug")?,
                    url: r.try_get("url")?,
                    title: r.try_get("title")?,
                    published_at: format_time(at),
                    tags: tags_of(&r.try_get::<String, _>("tags")?),
                    lead_minutes: (started - at) / 60_000,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Preceding {
            incident: uuid.to_string(),
            started_at: format_time(started),
            window_hours,
            publications,
        })
    }

    /// The terms over-represented before the caller's visible incidents (see the module's
    /// method).
    pub async fn provoke(&self, actor: &Actor, q: &ProvokeQuery) -> Result<Report> {
        if !actor.role.can_read() {
            return Err(Error::Forbidden);
        }
        let mut e = Vec::new();
        let window_h = match check_window(q.window_hours) {
            Ok(h) => h,
            Err(_) => {
                e.push(FieldError::new(
                    "window_hours",
                    format!("between 1 and {MAX_WINDOW_H}"),
                ));
                DEFAULT_WINDOW_H
            }
        };
        let mut time = |field: &str, v: &Option<String>, default: i64| match v
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => default,
            Some(s) => parse_time(s).unwrap_or_else(|| {
                e.push(FieldError::new(field, "not a date or time"));
                default
            }),
        };
        let now = now_ms();
        let to = time("to", &q.to, now);
        let from = time("from", &q.from, to.saturating_sub(365 * 86_400_000));
        let min_support = q.min_support.unwrap_or(3);
        if !(1..=1000).contains(&min_support) {
            e.push(FieldError::new("min_support", "between 1 and 1000"));
        }
        let limit = q.limit.unwrap_or(30);
        if !(1..=200).contains(&limit) {
            e.push(FieldError::new("limit", "between 1 and 200"));
        }
        if from >= to {
            e.push(FieldError::new("from", "must be before `to`"));
        }
        Error::check(e)?;
        let outlet = q.outlet.as_deref().map(str::trim).unwrap_or("");
        let sql = format!(
            "SELECT i.uuid, i.title, i.outlet_id, i.started_ms, o.slug FROM incidents i
             JOIN outlets o ON o.id = i.outlet_id
             WHERE {VISIBLE} AND i.started_ms >= $2 AND i.started_ms <= $3 AND i.date_unknown = 0
               AND ($4 = '' OR o.slug = $4)
             ORDER BY i.started_ms DESC LIMIT {MAX_INCIDENTS}"
        );
        let incidents = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(actor.outlet_id)
            .bind(from)
            .bind(to)
            .bind(outlet)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(IncidentRow {
                    uuid: r.try_get("uuid")?,
                    title: r.try_get("title")?,
                    outlet_id: r.try_get("outlet_id")?,
                    outlet: r.try_get("slug")?,
                    started_ms: r.try_get("started_ms")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut ids: Vec<i64> = incidents.iter().map(|i| i.outlet_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let pubs = if ids.is_empty() {
            Vec::new()
        } else {
            // The ids are integers read from our own database, not input.
            let list: Vec<String> = ids.iter().map(i64::to_string).collect();
            let sql = format!(
                "SELECT outlet_id, url, title, summary, published_ms, tags FROM publications
                 WHERE outlet_id IN ({}) AND published_ms >= $1 AND published_ms <= $2
                 ORDER BY published_ms DESC, id LIMIT {MAX_PUBLICATIONS}",
                list.join(", ")
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(from)
                .bind(to)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(PubRow {
                        outlet_id: r.try_get("outlet_id")?,
                        url: r.try_get("url")?,
                        title: r.try_get("title")?,
                        summary: r.try_get("summary")?,
                        published_ms: r.try_get("published_ms")?,
                        tags: tags_of(&r.try_get::<String, _>("tags")?),
                    })
                })
                .collect::<Result<Vec<_>>>()?
        };
        let params = Params {
            window_ms: window_h * 3_600_000,
            min_support,
            fdr: 0.05,
            limit,
        };
        // The statistics are CPU work over up to 50,000 rows: off the async workers, and at
        // most two at once; a third waits up to 10 s, then gets 429, so members reloading the
        // page cannot hog the CPU.
        static ANALYSES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
        let _permit = tokio::time::timeout(std::time::Duration::from_secs(10), ANALYSES.acquire())
            .await
            .ok()
            .and_then(|p| p.ok())
            .ok_or(Error::Throttled { retry_after_s: 5 })?;
        let a = tokio::task::spawn_blocking(move || analyze(&incidents, &pubs, &params))
            .await
            .map_err(|e| Error::Internal(format!("analysis task: {e}")))?;
        Ok(Report {
            window_hours: window_h,
            from: format_time(from),
            to: format_time(to),
            incidents: a.incidents,
            publications: a.publications,
            publications_before: a.publications_before,
            terms_tested: a.terms_tested,
            min_support,
            fdr: 0.05,
            method: METHOD,
            terms: a.terms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_keep_kazakh_letters_and_drop_stop_words() {
        assert_eq!(
            keywords("Сайлау нәтижесі: ҚР Орталық сайлау комиссиясы және ёлка"),
            ["сайлау", "нәтижесі", "орталық", "комиссиясы", "елка"]
        );
        assert_eq!(
            keywords("The election and the 2024 results, и выборы в Казахстане"),
            ["election", "results", "выборы", "казахстане"]
        );
        assert!(keywords("").is_empty());
        assert!(keywords("a и в — 12 ... !!!").is_empty());
    }

    #[test]
    fn a_term_counts_once_per_publication() {
        let p = PubRow {
            outlet_id: 1,
            url: "https://a.kz/1".into(),
            title: "Выборы в маслихат".into(),
            summary: "Выборы, выборы и снова ВЫБОРЫ: маслихат".into(),
            published_ms: 0,
            tags: vec!["Выборы".into(), "выборы ".into()],
        };
        let t = terms_of(&p);
        let n = |kind: &str, w: &str| t.iter().filter(|(k, v)| *k == kind && v == w).count();
        assert_eq!(n("tag", "выборы"), 1);
        assert_eq!(n("keyword", "выборы"), 1);
        assert_eq!(n("keyword", "маслихат"), 1);
        assert_eq!(n("keyword", "снова"), 1);
        // A long summary adds at most MAX_SUMMARY_KEYWORDS words.
        let long: Vec<String> = (0..500).map(|i| format!("слово{i}")).collect();
        let p = PubRow {
            summary: long.join(" "),
            title: "Заголовок".into(),
            tags: Vec::new(),
            ..p
        };
        assert_eq!(terms_of(&p).len(), 1 + MAX_SUMMARY_KEYWORDS);
    }

    #[test]
    fn hypergeometric_sums_to_one_and_tail_matches_a_direct_count() {
        let lf = ln_factorials(60);
        let (lo, pmf) = hypergeometric(&lf, 50, 10, 20);
        assert_eq!(lo, 0);
        assert!((pmf.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        // P(X >= 0) = 1, and the tail over two parts equals the convolution done by hand.
        assert!((tail(&lf, &[(50, 10, 20)], 0) - 1.0).abs() < 1e-9);
        let (_, a) = hypergeometric(&lf, 10, 3, 4);
        let (_, b) = hypergeometric(&lf, 8, 2, 3);
        let mut by_hand = 0.0;
        for (i, x) in a.iter().enumerate() {
            for (j, y) in b.iter().enumerate() {
                if i + j >= 3 {
                    by_hand += x * y;
                }
            }
        }
        assert!((tail(&lf, &[(10, 3, 4), (8, 2, 3)], 3) - by_hand).abs() < 1e-12);
        // Everything marked: the sample is all marked for sure.
        assert!((tail(&lf, &[(10, 10, 4)], 4) - 1.0).abs() < 1e-12);
        assert_eq!(tail(&lf, &[(10, 0, 4)], 1), 0.0);
    }

    #[test]
    fn large_outlets_convolve_on_the_trimmed_support() {
        // Twenty outlets of 20,000 publications, a term in a quarter of each, 6,000 before
        // attacks in each: the sum's mean is 30,000 and its standard deviation about 106.
        let lf = ln_factorials(20_000);
        let parts = vec![(20_000, 5_000, 6_000); 20];
        let at_mean = tail(&lf, &parts, 30_000);
        assert!((at_mean - 0.5).abs() < 0.01, "{at_mean}");
        let far = tail(&lf, &parts, 30_000 + 600);
        assert!(far < 1e-6, "{far}");
        assert!((tail(&lf, &parts, 0) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn bh_and_intervals() {
        let q = bh_adjust(&[0.01, 0.04, 0.03, 0.5]);
        assert!((q[0] - 0.04).abs() < 1e-12);
        assert!((q[1] - 0.04 * 4.0 / 3.0).abs() < 1e-12);
        assert!((q[2] - 0.04 * 4.0 / 3.0).abs() < 1e-12);
        assert!((q[3] - 0.5).abs() < 1e-12);
        let (lo, hi) = poisson_interval(10.0);
        // Exact (Garwood) interval for 10: 4.795 .. 18.390.
        assert!(
            (lo - 4.795).abs() < 0.05 && (hi - 18.39).abs() < 0.05,
            "{lo} {hi}"
        );
        assert_eq!(poisson_interval(0.0).0, 0.0);
    }
}
