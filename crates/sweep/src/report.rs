//! The report: `report.json` (everything, for people and for the atlas later) and
//! `report.html` (one self-contained page in ru/kk/en: no JavaScript, no external resources,
//! the timeline drawn as inline SVG here). The HTML shows bounded excerpts; the JSON lists
//! every member.

use std::collections::HashMap;
use std::fmt::Write as _;

use askama::Template;
use serde::Serialize;

use crate::analyze::{Analysis, variants};
use crate::input::{Format, Platform};
use crate::joins::{Trait, TraitShare, Verdict};
use crate::model::Dataset;
use crate::time_fmt::{format_minute, rfc3339};

/// Report language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Ru,
    Kk,
    En,
}

impl Lang {
    pub fn from_code(s: &str) -> Option<Lang> {
        match s {
            "ru" => Some(Lang::Ru),
            "kk" => Some(Lang::Kk),
            "en" => Some(Lang::En),
            _ => None,
        }
    }
    pub fn code(self) -> &'static str {
        match self {
            Lang::Ru => "ru",
            Lang::Kk => "kk",
            Lang::En => "en",
        }
    }
}

/// What the report says about its input.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: String,
    pub format: Format,
}

/// `report.json`, version 1.
#[derive(Debug, Serialize)]
pub struct Report {
    pub qalqan_sweep_report: u32,
    pub input: InputSummary,
    pub params: ParamsOut,
    pub summary: Summary,
    /// Findings, largest first: comment floods (`bot_comments`) and bot cohorts among joins
    /// (`bot_followers`).
    pub clusters: Vec<ClusterOut>,
    /// Every join wave, including organic ones (news spikes), with its cohort description.
    pub waves: Vec<WaveOut>,
    pub cluster_stats: crate::cluster::ClusterStats,
    pub timings_ms: crate::analyze::Timings,
}

#[derive(Debug, Serialize)]
pub struct InputSummary {
    pub file: String,
    pub format: &'static str,
    pub platform: Platform,
    pub messages: usize,
    pub joins: usize,
    pub skipped: u64,
    pub first: Option<String>,
    pub last: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ParamsOut {
    pub min_authors: usize,
    pub window_secs: i64,
    pub jaccard_threshold: f64,
    pub num_perm: usize,
    pub shingle_chars: usize,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub clusters: usize,
    pub flagged_messages: usize,
    pub flagged_comment_accounts: usize,
    pub join_waves: usize,
    pub flagged_followers: usize,
    pub threat_messages: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    BotComments,
    BotFollowers,
    ThreatComments,
}

/// A threat rule's text in the three languages, for the report.
#[derive(Debug, Serialize)]
pub struct RuleText {
    pub id: &'static str,
    pub ru: &'static str,
    pub kk: &'static str,
    pub en: &'static str,
}

/// The rule that fired, with its numbers: the evidence of why this is a finding.
#[derive(Debug, Serialize)]
pub struct Rule {
    pub id: &'static str,
    pub explanation: String,
}

#[derive(Debug, Serialize)]
pub struct ClusterOut {
    pub id: String,
    pub kind: Kind,
    pub rule: Rule,
    /// `exact` (one normalised text) or `near_duplicate` (verified MinHash-LSH neighbours) for
    /// comments; `cohort` for followers.
    pub method: &'static str,
    pub size: usize,
    pub accounts_count: usize,
    pub first: String,
    pub last: String,
    /// Comments: the densest window and the distinct accounts in it.
    pub peak: Option<Peak>,
    /// Comments: messages of the same text outside the flood windows (not flagged).
    pub unflagged_same_text: Option<usize>,
    /// Comments: matching keys (never shown as the text) with counts.
    pub text_patterns: Vec<Counted>,
    /// Comments: the texts exactly as posted, most common first (at most 20).
    pub texts: Vec<Counted>,
    /// Followers: what the cohort shares.
    pub traits: Vec<TraitShare>,
    pub members: Vec<Member>,
    pub accounts: Vec<Account>,
    /// The dry-run plan: what each clean-up action would do (`qalqan sweep clean` does it).
    pub actions: Vec<Action>,
    /// Threat comments: the lexicon rules that matched, in ru/kk/en.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub threat_rules: Vec<RuleText>,
}

#[derive(Debug, Serialize)]
pub struct Peak {
    pub start: String,
    pub end: String,
    pub accounts: usize,
}

#[derive(Debug, Serialize)]
pub struct Counted {
    pub text: String,
    pub count: usize,
}

#[derive(Debug, Serialize)]
pub struct Member {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub account_id: String,
    pub time: i64,
}

#[derive(Debug, Serialize)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub count: usize,
}

#[derive(Debug, Serialize)]
pub struct Action {
    /// `delete_messages`, `reject_comments`, `ban_accounts`, `revoke_invite_link`, `review`.
    pub action: &'static str,
    pub targets: usize,
    pub api_calls: usize,
    /// YouTube quota units (10,000 a day by default), when the platform counts them.
    pub quota_units: Option<usize>,
    pub reversible: bool,
    pub note: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct WaveOut {
    pub start: String,
    pub end: String,
    pub joins: u64,
    pub expected: f64,
    pub peak_per_minute: u64,
    pub baseline_per_minute: f64,
    pub verdict: Verdict,
    pub traits: Vec<TraitShare>,
    /// The `clusters[].id` of its bot cohort, if it has one.
    pub cluster: Option<String>,
}

/// Builds the JSON report.
pub fn build(ds: &Dataset, a: &Analysis, src: &Source) -> Report {
    let platform = src.format.platform();
    let mut clusters = Vec::new();
    let mut flagged_accounts = std::collections::HashSet::new();
    for (k, f) in a.floods.iter().enumerate() {
        let (shown, keys) = variants(ds, a, &f.members, 20);
        let mut acc: HashMap<&str, (usize, &str), foldhash::fast::RandomState> = HashMap::default();
        for &i in &f.members {
            let m = &ds.messages[i as usize];
            acc.entry(&m.author_id).or_insert((0, &m.author_name)).0 += 1;
            flagged_accounts.insert(m.author_id.as_str());
        }
        let mut accounts: Vec<Account> = acc
            .into_iter()
            .map(|(id, (c, n))| Account {
                id: id.into(),
                name: n.into(),
                count: c,
            })
            .collect();
        accounts.sort_by(|x, y| y.count.cmp(&x.count).then_with(|| x.id.cmp(&y.id)));
        let n = f.members.len();
        let w = a.params.window_secs;
        clusters.push(ClusterOut {
            id: format!("c{}", k + 1),
            kind: Kind::BotComments,
            rule: Rule {
                id: "flood.distinct_accounts_in_window",
                explanation: format!(
                    "{} distinct accounts posted this text within {}; the rule asks for {} within {}",
                    f.peak.2,
                    duration(f.peak.1 - f.peak.0),
                    a.params.min_authors,
                    if w > 0 { duration(w) } else { "the whole input".into() }
                ),
            },
            method: if f.near { "near_duplicate" } else { "exact" },
            size: n,
            accounts_count: f.authors,
            first: rfc3339(f.first),
            last: rfc3339(f.last),
            peak: Some(Peak { start: rfc3339(f.peak.0), end: rfc3339(f.peak.1), accounts: f.peak.2 }),
            unflagged_same_text: Some(f.cluster_messages - n),
            text_patterns: keys.into_iter().map(|(text, count)| Counted { text, count }).collect(),
            texts: shown.into_iter().map(|(text, count)| Counted { text, count }).collect(),
            traits: Vec::new(),
            members: f
                .members
                .iter()
                .map(|&i| {
                    let m = &ds.messages[i as usize];
                    Member { message_id: Some(m.id.clone()), account_id: m.author_id.clone(), time: m.time }
                })
                .collect(),
            actions: comment_actions(platform, n, f.authors),
            accounts,
            threat_rules: Vec::new(),
        });
    }
    for (k, t) in a.threats.iter().enumerate() {
        let (shown, keys) = variants(ds, a, &t.members, 20);
        let mut acc: HashMap<&str, (usize, &str), foldhash::fast::RandomState> = HashMap::default();
        for &i in &t.members {
            let m = &ds.messages[i as usize];
            acc.entry(&m.author_id).or_insert((0, &m.author_name)).0 += 1;
        }
        let mut accounts: Vec<Account> = acc
            .into_iter()
            .map(|(id, (c, n))| Account {
                id: id.into(),
                name: n.into(),
                count: c,
            })
            .collect();
        accounts.sort_by(|x, y| y.count.cmp(&x.count).then_with(|| x.id.cmp(&y.id)));
        let ids = crate::threat::rule_ids(t.rules);
        let first = t
            .members
            .first()
            .map_or(0, |&i| ds.messages[i as usize].time);
        let last = t
            .members
            .last()
            .map_or(0, |&i| ds.messages[i as usize].time);
        let n = t.members.len();
        clusters.push(ClusterOut {
            id: format!("t{}", k + 1),
            kind: Kind::ThreatComments,
            rule: Rule {
                id: "threat.lexicon_copy_paste",
                explanation: format!(
                    "{} distinct accounts posted near-identical text matching the threat lexicon ({}); the rule asks for {}",
                    t.authors,
                    ids.join(", "),
                    a.params.threat.min_authors
                ),
            },
            method: "threat_lexicon",
            size: n,
            accounts_count: t.authors,
            first: rfc3339(first),
            last: rfc3339(last),
            peak: None,
            unflagged_same_text: None,
            text_patterns: keys.into_iter().map(|(text, count)| Counted { text, count }).collect(),
            texts: shown.into_iter().map(|(text, count)| Counted { text, count }).collect(),
            traits: Vec::new(),
            members: t
                .members
                .iter()
                .map(|&i| {
                    let m = &ds.messages[i as usize];
                    Member { message_id: Some(m.id.clone()), account_id: m.author_id.clone(), time: m.time }
                })
                .collect(),
            actions: comment_actions(platform, n, t.authors),
            accounts,
            threat_rules: ids
                .iter()
                .filter_map(|id| crate::threat::rule(id))
                .map(|r| RuleText { id: r.id, ru: r.ru, kk: r.kk, en: r.en })
                .collect(),
        });
    }
    let mut waves = Vec::new();
    let mut followers = 0;
    for (k, w) in a.waves.iter().enumerate() {
        let mut cluster = None;
        if w.verdict == Verdict::BotCohort && !w.members.is_empty() {
            let id = format!("w{}", k + 1);
            cluster = Some(id.clone());
            followers += w.members.len();
            let distinctive: Vec<String> = w
                .traits
                .iter()
                .filter(|t| t.distinctive)
                .map(|t| {
                    format!(
                        "{} ({:.0}% vs {:.0}%)",
                        trait_code(t.kind),
                        t.share_in_wave * 100.0,
                        t.share_in_baseline * 100.0
                    )
                })
                .collect();
            let link = w
                .traits
                .iter()
                .find(|t| t.kind == Trait::SameInviteLink && t.distinctive)
                .and_then(|t| t.value.clone());
            let first = w
                .members
                .first()
                .map_or(w.start, |&i| ds.joins[i as usize].time);
            let last = w
                .members
                .last()
                .map_or(w.end, |&i| ds.joins[i as usize].time);
            clusters.push(ClusterOut {
                id,
                kind: Kind::BotFollowers,
                rule: Rule {
                    id: "joins.wave_with_distinctive_cohort",
                    explanation: format!(
                        "{} joins in {} where {:.0} were expected (peak {} a minute, baseline {:.2}); members share: {}",
                        w.joins,
                        duration(w.end - w.start),
                        w.expected,
                        w.peak_per_minute,
                        w.baseline_per_minute,
                        distinctive.join(", ")
                    ),
                },
                method: "cohort",
                size: w.members.len(),
                accounts_count: w.members.len(),
                first: rfc3339(first),
                last: rfc3339(last),
                peak: None,
                unflagged_same_text: None,
                text_patterns: Vec::new(),
                texts: Vec::new(),
                traits: w.traits.clone(),
                members: w
                    .members
                    .iter()
                    .map(|&i| {
                        let j = &ds.joins[i as usize];
                        Member { message_id: None, account_id: j.account_id.clone(), time: j.time }
                    })
                    .collect(),
                accounts: w
                    .members
                    .iter()
                    .map(|&i| {
                        let j = &ds.joins[i as usize];
                        Account { id: j.account_id.clone(), name: j.name.clone(), count: 1 }
                    })
                    .collect(),
                actions: follower_actions(platform, w.members.len(), link),
                threat_rules: Vec::new(),
            });
        }
        waves.push(WaveOut {
            start: rfc3339(w.start),
            end: rfc3339(w.end),
            joins: w.joins,
            expected: w.expected,
            peak_per_minute: w.peak_per_minute,
            baseline_per_minute: w.baseline_per_minute,
            verdict: w.verdict,
            traits: w.traits.clone(),
            cluster,
        });
    }
    let times = ds
        .messages
        .iter()
        .map(|m| m.time)
        .chain(ds.joins.iter().map(|j| j.time));
    let (first, last) = times.fold((None, None), |(lo, hi): (Option<i64>, Option<i64>), t| {
        (
            Some(lo.map_or(t, |l| l.min(t))),
            Some(hi.map_or(t, |h| h.max(t))),
        )
    });
    Report {
        qalqan_sweep_report: 1,
        input: InputSummary {
            file: src.file.clone(),
            format: src.format.name(),
            platform,
            messages: ds.messages.len(),
            joins: ds.joins.len(),
            skipped: ds.skipped,
            first: first.map(rfc3339),
            last: last.map(rfc3339),
        },
        params: ParamsOut {
            min_authors: a.params.min_authors,
            window_secs: a.params.window_secs,
            jaccard_threshold: a.params.cluster.threshold,
            num_perm: a.params.cluster.num_perm,
            shingle_chars: a.params.cluster.shingle,
        },
        summary: Summary {
            clusters: clusters.len(),
            flagged_messages: a.floods.iter().map(|f| f.members.len()).sum(),
            flagged_comment_accounts: flagged_accounts.len(),
            join_waves: a.waves.len(),
            flagged_followers: followers,
            threat_messages: a.threats.iter().map(|t| t.members.len()).sum(),
        },
        clusters,
        waves,
        cluster_stats: a.cluster_stats.clone(),
        timings_ms: a.timings.clone(),
    }
}

fn comment_actions(platform: Platform, n: usize, authors: usize) -> Vec<Action> {
    match platform {
        Platform::Telegram => vec![
            Action {
                action: "delete_messages",
                targets: n,
                api_calls: n.div_ceil(100),
                quota_units: None,
                reversible: false,
                note: Some("Bot API deleteMessages, up to 100 ids a call; only messages younger than 48 hours".into()),
            },
            Action {
                action: "ban_accounts",
                targets: authors,
                api_calls: authors,
                quota_units: None,
                reversible: true,
                note: Some("banChatMember, one call per account (no bulk ban); unban undoes it".into()),
            },
        ],
        Platform::Youtube => vec![Action {
            action: "reject_comments",
            targets: n,
            api_calls: n.div_ceil(50),
            quota_units: Some(n.div_ceil(50) * 50),
            reversible: false,
            note: Some("comments.setModerationStatus rejected, 50 ids a call at 50 units; banAuthor=true also hides the authors' future comments".into()),
        }],
        Platform::Unknown => vec![Action {
            action: "review",
            targets: n,
            api_calls: 0,
            quota_units: None,
            reversible: true,
            note: None,
        }],
    }
}

fn follower_actions(platform: Platform, n: usize, link: Option<String>) -> Vec<Action> {
    let mut v = Vec::new();
    if let Some(l) = link {
        v.push(Action {
            action: "revoke_invite_link",
            targets: 1,
            api_calls: 1,
            quota_units: None,
            reversible: false,
            note: Some(l),
        });
    }
    v.push(Action {
        action: if platform == Platform::Youtube { "review" } else { "ban_accounts" },
        targets: n,
        api_calls: n,
        quota_units: None,
        reversible: true,
        note: Some("one call per account; at about 300 bans per 12 minutes this is a long job: restrict first".into()),
    });
    v
}

fn trait_code(t: Trait) -> &'static str {
    match t {
        Trait::NoUsername => "no_username",
        Trait::NoPhoto => "no_photo",
        Trait::TemplatedName => "templated_name",
        Trait::CloseIds => "close_ids",
        Trait::SameInviteLink => "same_invite_link",
        Trait::SameMinute => "same_minute",
    }
}

fn duration(secs: i64) -> String {
    let s = secs.max(0);
    if s >= 86_400 {
        format!("{:.1} d", s as f64 / 86_400.0)
    } else if s >= 3600 {
        format!("{:.1} h", s as f64 / 3600.0)
    } else if s >= 60 {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

// ---------------------------------------------------------------------------------------------
// HTML

/// Most findings, members and accounts shown per page section; the JSON has all.
const HTML_CLUSTERS: usize = 100;
const HTML_ROWS: usize = 50;

#[derive(Template)]
#[template(path = "report.html")]
struct Page<'a> {
    lang: &'static str,
    language: Lang,
    input: &'a InputSummary,
    summary: &'a Summary,
    svg: String,
    clusters: Vec<HtmlCluster>,
    more_clusters: usize,
    waves: Vec<HtmlWave>,
}

impl Page<'_> {
    fn t(&self, key: &str) -> &'static str {
        tr(self.language, key)
    }
}

struct HtmlCluster {
    id: String,
    kind: &'static str,
    rule: String,
    method: &'static str,
    size: usize,
    accounts_count: usize,
    first: String,
    last: String,
    texts: Vec<(String, usize)>,
    patterns: Vec<(String, usize)>,
    traits: Vec<String>,
    accounts: Vec<(String, String, usize)>,
    more_accounts: usize,
    members: Vec<(String, String, String)>,
    more_members: usize,
    actions: Vec<String>,
    threat_rules: Vec<String>,
}

struct HtmlWave {
    start: String,
    end: String,
    joins: u64,
    expected: String,
    verdict: &'static str,
    cluster: String,
}

/// Renders the HTML page.
pub fn html(r: &Report, ds: &Dataset, a: &Analysis, lang: Lang) -> Result<String, askama::Error> {
    let t = move |k: &str| tr(lang, k);
    let clusters = r
        .clusters
        .iter()
        .take(HTML_CLUSTERS)
        .map(|c| HtmlCluster {
            id: c.id.clone(),
            kind: t(match c.kind {
                Kind::BotComments => "kind.bot_comments",
                Kind::BotFollowers => "kind.bot_followers",
                Kind::ThreatComments => "kind.threat_comments",
            }),
            rule: format!("{}: {}", c.rule.id, c.rule.explanation),
            method: t(match c.method {
                "exact" => "method.exact",
                "near_duplicate" => "method.near",
                "threat_lexicon" => "method.threat",
                _ => "method.cohort",
            }),
            size: c.size,
            accounts_count: c.accounts_count,
            first: c.first.clone(),
            last: c.last.clone(),
            texts: c
                .texts
                .iter()
                .take(10)
                .map(|x| (x.text.clone(), x.count))
                .collect(),
            patterns: c
                .text_patterns
                .iter()
                .take(10)
                .map(|x| (x.text.clone(), x.count))
                .collect(),
            traits: c
                .traits
                .iter()
                .map(|x| {
                    format!(
                        "{}{}: {:.1}% / {:.1}%{}",
                        t(&format!("trait.{}", trait_code(x.kind))),
                        x.value
                            .as_ref()
                            .map(|v| format!(" «{v}»"))
                            .unwrap_or_default(),
                        x.share_in_wave * 100.0,
                        x.share_in_baseline * 100.0,
                        if x.distinctive {
                            format!(" ({})", t("distinctive"))
                        } else {
                            String::new()
                        }
                    )
                })
                .collect(),
            accounts: c
                .accounts
                .iter()
                .take(HTML_ROWS)
                .map(|x| (x.id.clone(), x.name.clone(), x.count))
                .collect(),
            more_accounts: c.accounts.len().saturating_sub(HTML_ROWS),
            members: c
                .members
                .iter()
                .take(HTML_ROWS)
                .map(|m| {
                    (
                        m.message_id.clone().unwrap_or_default(),
                        m.account_id.clone(),
                        format_minute(m.time),
                    )
                })
                .collect(),
            more_members: c.members.len().saturating_sub(HTML_ROWS),
            actions: c.actions.iter().map(|x| action_text(lang, x)).collect(),
            threat_rules: c
                .threat_rules
                .iter()
                .map(|r| {
                    let text = match lang {
                        Lang::Ru => r.ru,
                        Lang::Kk => r.kk,
                        Lang::En => r.en,
                    };
                    format!("{}: {text}", r.id)
                })
                .collect(),
        })
        .collect();
    let waves = r
        .waves
        .iter()
        .map(|w| HtmlWave {
            start: w.start.clone(),
            end: w.end.clone(),
            joins: w.joins,
            expected: format!("{:.0}", w.expected),
            verdict: t(match w.verdict {
                Verdict::BotCohort => "verdict.bot",
                Verdict::Organic => "verdict.organic",
            }),
            cluster: w.cluster.clone().unwrap_or_default(),
        })
        .collect();
    Page {
        lang: lang.code(),
        language: lang,
        input: &r.input,
        summary: &r.summary,
        svg: timeline_svg(ds, a, lang),
        clusters,
        more_clusters: r.clusters.len().saturating_sub(HTML_CLUSTERS),
        waves,
    }
    .render()
}

fn action_text(lang: Lang, a: &Action) -> String {
    let what = tr(lang, &format!("action.{}", a.action));
    let mut s = format!(
        "{what}: {} {} · {} {}",
        a.targets,
        tr(lang, "targets"),
        a.api_calls,
        tr(lang, "api_calls")
    );
    if let Some(q) = a.quota_units {
        let _ = write!(s, " · {q} {}", tr(lang, "quota_units"));
    }
    let _ = write!(
        s,
        " · {}",
        tr(
            lang,
            if a.reversible {
                "reversible"
            } else {
                "irreversible"
            }
        )
    );
    if let Some(n) = &a.note {
        let _ = write!(s, " ({n})");
    }
    s
}

/// The timeline: comments per bin (flagged in red) above joins per bin (flagged in red).
/// Only numbers and escaped labels go into the SVG.
pub fn timeline_svg(ds: &Dataset, a: &Analysis, lang: Lang) -> String {
    const W: f64 = 960.0;
    const H: f64 = 110.0;
    const BINS: usize = 240;
    let times = ds
        .messages
        .iter()
        .map(|m| m.time)
        .chain(ds.joins.iter().map(|j| j.time));
    let (lo, hi) = times.fold((i64::MAX, i64::MIN), |(l, h), t| (l.min(t), h.max(t)));
    if lo > hi {
        return String::new();
    }
    let span = (hi - lo).max(1) as f64;
    let bin_of = |t: i64| (((t - lo) as f64 / span) * (BINS as f64 - 1.0)).round() as usize;
    let mut panels = Vec::new();
    let mut all = vec![0u64; BINS];
    let mut red = vec![0u64; BINS];
    for m in &ds.messages {
        all[bin_of(m.time)] += 1;
    }
    for f in &a.floods {
        for &i in &f.members {
            red[bin_of(ds.messages[i as usize].time)] += 1;
        }
    }
    panels.push((tr(lang, "chart.comments"), all, red));
    if !ds.joins.is_empty() {
        let mut all = vec![0u64; BINS];
        let mut red = vec![0u64; BINS];
        for j in &ds.joins {
            all[bin_of(j.time)] += 1;
        }
        for w in &a.waves {
            for &i in &w.members {
                red[bin_of(ds.joins[i as usize].time)] += 1;
            }
        }
        panels.push((tr(lang, "chart.joins"), all, red));
    }
    let total_h = panels.len() as f64 * (H + 40.0) + 20.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {total_h}" width="100%" role="img" aria-label="{}">"#,
        esc(tr(lang, "chart.title"))
    );
    let bw = W / BINS as f64;
    for (p, (label, all, red)) in panels.iter().enumerate() {
        let y0 = p as f64 * (H + 40.0) + 20.0;
        let max = all.iter().copied().max().unwrap_or(0).max(1) as f64;
        let _ = write!(
            s,
            r##"<text x="0" y="{}" font-size="12" fill="#222">{} (max {} / {})</text>"##,
            y0 - 6.0,
            esc(label),
            max as u64,
            esc(&duration((span / BINS as f64) as i64))
        );
        let _ = write!(
            s,
            r##"<rect x="0" y="{y0}" width="{W}" height="{H}" fill="#f6f6f6"/>"##
        );
        for (b, (&c, &r)) in all.iter().zip(red.iter()).enumerate() {
            if c == 0 {
                continue;
            }
            let h = c as f64 / max * H;
            let x = b as f64 * bw;
            let _ = write!(
                s,
                r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#9aa4b1"/>"##,
                y0 + H - h,
                bw.max(1.0)
            );
            if r > 0 {
                let hr = r as f64 / max * H;
                let _ = write!(
                    s,
                    r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{hr:.1}" fill="#c62828"/>"##,
                    y0 + H - hr,
                    bw.max(1.0)
                );
            }
        }
        let _ = write!(
            s,
            r##"<text x="0" y="{}" font-size="11" fill="#555">{}</text>"##,
            y0 + H + 14.0,
            esc(&format_minute(lo))
        );
        let _ = write!(
            s,
            r##"<text x="{W}" y="{}" font-size="11" fill="#555" text-anchor="end">{}</text>"##,
            y0 + H + 14.0,
            esc(&format_minute(hi))
        );
    }
    s.push_str("</svg>");
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page's words. Unknown keys fall back to English, then to the key itself.
pub fn tr(lang: Lang, key: &str) -> &'static str {
    let (ru, kk, en): (&'static str, &'static str, &'static str) = match key {
        "title" => (
            "Qalqan sweep: отчёт о бот-атаках",
            "Qalqan sweep: бот-шабуылдар туралы есеп",
            "Qalqan sweep: bot flood report",
        ),
        "input" => ("Данные", "Деректер", "Input"),
        "messages" => ("сообщений", "хабарлама", "messages"),
        "joins" => ("вступлений", "қосылу", "joins"),
        "skipped" => (
            "пропущено записей без текста",
            "мәтінсіз жазбалар өткізілді",
            "records without text skipped",
        ),
        "summary" => ("Итог", "Қорытынды", "Summary"),
        "clusters" => ("находок", "табылған", "findings"),
        "flagged_messages" => (
            "сообщений в волнах",
            "толқындағы хабарлама",
            "messages in floods",
        ),
        "flagged_accounts" => (
            "аккаунтов-комментаторов",
            "пікір жазған аккаунт",
            "commenting accounts",
        ),
        "flagged_followers" => ("подписчиков-ботов", "бот-жазылушы", "bot followers"),
        "waves" => ("Волны вступлений", "Қосылу толқындары", "Join waves"),
        "chart.title" => ("Хронология", "Хронология", "Timeline"),
        "chart.comments" => (
            "Комментарии (красным: в волнах)",
            "Пікірлер (қызылмен: толқында)",
            "Comments (red: in floods)",
        ),
        "chart.joins" => (
            "Вступления (красным: боты)",
            "Қосылулар (қызылмен: боттар)",
            "Joins (red: bots)",
        ),
        "kind.bot_comments" => (
            "Волна одинаковых комментариев",
            "Бірдей пікірлер толқыны",
            "Flood of identical comments",
        ),
        "kind.threat_comments" => (
            "Угрозы в комментариях (одинаковый текст от нескольких аккаунтов)",
            "Пікірлердегі қоқан-лоқы (бірнеше аккаунттан бірдей мәтін)",
            "Threat comments (the same text from several accounts)",
        ),
        "method.threat" => (
            "словарь угроз + поиск похожих текстов",
            "қоқан-лоқы сөздігі + ұқсас мәтіндерді іздеу",
            "threat lexicon + near-duplicate search",
        ),
        "threat_rules" => (
            "Сработавшие правила угроз",
            "Іске қосылған қоқан-лоқы ережелері",
            "Threat rules that matched",
        ),
        "kind.bot_followers" => (
            "Волна бот-подписчиков",
            "Бот-жазылушылар толқыны",
            "Wave of bot followers",
        ),
        "method.exact" => (
            "одинаковый текст после нормализации",
            "қалыптағаннан кейін бірдей мәтін",
            "identical after normalisation",
        ),
        "method.near" => (
            "почти одинаковые тексты (MinHash-LSH, проверено по Жаккару)",
            "ұқсас мәтіндер (MinHash-LSH, Жаккар бойынша тексерілді)",
            "near-identical texts (MinHash-LSH, Jaccard-verified)",
        ),
        "method.cohort" => (
            "общие признаки аккаунтов",
            "аккаунттардың ортақ белгілері",
            "shared account traits",
        ),
        "rule" => ("Правило", "Ереже", "Rule"),
        "method" => ("Метод", "Әдіс", "Method"),
        "size" => ("Размер", "Көлемі", "Size"),
        "accounts" => ("Аккаунты", "Аккаунттар", "Accounts"),
        "time" => ("Время", "Уақыт", "Time"),
        "texts" => (
            "Тексты (как написаны)",
            "Мәтіндер (жазылғандай)",
            "Texts (as posted)",
        ),
        "patterns" => ("Ключи сравнения", "Салыстыру кілттері", "Matching keys"),
        "traits" => (
            "Признаки: в волне / в обычные дни",
            "Белгілер: толқында / қалыпты күндері",
            "Traits: in the wave / at other times",
        ),
        "members" => ("Участники", "Қатысушылар", "Members"),
        "more" => (
            "ещё, полный список в report.json",
            "тағы, толық тізім report.json ішінде",
            "more, full list in report.json",
        ),
        "actions" => (
            "Что сделала бы очистка (пробный план, ничего не выполнено)",
            "Тазалау не істер еді (сынақ жоспары, ештеңе орындалмады)",
            "What clean-up would do (dry-run plan, nothing was done)",
        ),
        "targets" => ("целей", "нысана", "targets"),
        "api_calls" => ("вызовов API", "API шақыруы", "API calls"),
        "quota_units" => ("единиц квоты", "квота бірлігі", "quota units"),
        "reversible" => ("обратимо", "қайтарылады", "reversible"),
        "irreversible" => ("необратимо", "қайтарылмайды", "irreversible"),
        "action.delete_messages" => ("удалить сообщения", "хабарламаларды жою", "delete messages"),
        "action.reject_comments" => (
            "отклонить комментарии",
            "пікірлерді қабылдамау",
            "reject comments",
        ),
        "action.ban_accounts" => (
            "заблокировать аккаунты",
            "аккаунттарды бұғаттау",
            "ban accounts",
        ),
        "action.revoke_invite_link" => (
            "отозвать ссылку-приглашение",
            "шақыру сілтемесін кері қайтару",
            "revoke the invite link",
        ),
        "action.review" => ("проверить вручную", "қолмен тексеру", "review by hand"),
        "trait.no_username" => (
            "нет имени пользователя",
            "пайдаланушы аты жоқ",
            "no username",
        ),
        "trait.no_photo" => ("нет фото", "фото жоқ", "no photo"),
        "trait.templated_name" => ("имя по шаблону", "үлгі бойынша аты", "templated name"),
        "trait.close_ids" => (
            "близкие id аккаунтов",
            "жақын аккаунт id",
            "close account ids",
        ),
        "trait.same_invite_link" => (
            "одна ссылка-приглашение",
            "бір шақыру сілтемесі",
            "same invite link",
        ),
        "trait.same_minute" => (
            "вступили в одну минуту с сотнями других",
            "жүздеген басқалармен бір минутта қосылды",
            "joined in a minute with hundreds of others",
        ),
        "distinctive" => ("отличительный", "ерекше", "distinctive"),
        "verdict.bot" => ("боты", "боттар", "bots"),
        "verdict.organic" => ("естественный всплеск", "табиғи өсім", "organic spike"),
        "expected" => ("ожидалось", "күтілген", "expected"),
        "none" => (
            "Волн ботов не найдено.",
            "Бот толқындары табылмады.",
            "No bot floods found.",
        ),
        "note" => (
            "Тексты показаны как написаны; нормализация используется только для сравнения. Проверьте находки перед очисткой.",
            "Мәтіндер жазылғандай көрсетілген; қалыптау тек салыстыру үшін. Тазалау алдында табылғанды тексеріңіз.",
            "Texts are shown as posted; normalisation is used for matching only. Check findings before any clean-up.",
        ),
        _ => ("", "", ""),
    };
    let pick = match lang {
        Lang::Ru => ru,
        Lang::Kk => kk,
        Lang::En => en,
    };
    if pick.is_empty() {
        if en.is_empty() { "?" } else { en }
    } else {
        pick
    }
}
