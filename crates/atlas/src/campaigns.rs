//! Campaigns across outlets: incidents at different outlets that share indicators within a time
//! window are proposed as one campaign, with a score and the evidence they share; an editor of a
//! member outlet confirms or rejects it.
//!
//! How a proposal is found ([`Db::recompute_campaigns`]), every step bounded:
//! 1. Only the [`Params::max_incidents`] most recent incidents are considered.
//! 2. Candidate pairs come from the sightings index, never from all pairs: an indicator seen in
//!    2..=[`Params::max_fanout`] of those incidents links them. An indicator seen in more is
//!    infrastructure (a CDN edge, a common browser string) and is skipped, and so is anything on
//!    the warning list ([`IgnoreList`]: CDN and platform AS numbers and ranges, the shield's
//!    verified crawler families). A pair needs two outlets and start/end times no more than
//!    [`Params::window_ms`] apart; at most [`MAX_PAIRS`] pairs are kept.
//! 3. Each pair is scored per kind of evidence, combined as a noisy-or (`1 - Π(1 - s)`):
//!    Jaccard similarity of the two address sets, 0.6 × Jaccard of their /24 (IPv6: /48) sets,
//!    and for shared AS numbers (coarse, so weak), user agents, text patterns, accounts, domains,
//!    URLs, e-mail addresses and file hashes a fixed weight per shared value.
//! 4. Pairs at or above [`Params::threshold`] are joined strongest first by union-find, a group
//!    never growing past [`MAX_MEMBERS`].
//! 5. Groups are stored with their scored links. A group whose exact member set was rejected is
//!    not proposed again; proposals that no longer hold are removed; decisions stay. A proposal
//!    an editor named or described follows its group when the group gains or loses members
//!    (same id, name and description) instead of being replaced.
//!
//! **Architecture invariant (TLP):** a campaign spans outlets, so no reader sees it whole unless
//! it may see every member. What a reader sees is computed from the campaign's *links* whose two
//! incidents both pass [`VISIBLE`] in SQL, and only the largest connected group of those:
//! members, score, dates and evidence all come from visible pairs, so a campaign never shows that
//! an incident the reader may not see exists (not even by its count, date or indicators).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::accounts::{Actor, audit, hex};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::model::{FieldError, Tlp, format_time, now_ms};
use crate::store::VISIBLE;

/// Most incidents of one group.
pub const MAX_MEMBERS: usize = 50;
/// Most candidate pairs one run scores.
pub const MAX_PAIRS: usize = 100_000;
/// Most (indicator, incident) rows one run reads from the sightings index.
pub const MAX_INDEX_ROWS: i64 = 1_000_000;
/// Most addresses and networks read per incident for the Jaccard scores.
pub const MAX_SET: i64 = 5_000;
/// Most shared values kept per kind of evidence in one link (the counts stay exact).
pub const MAX_SHOWN: usize = 20;
/// Most campaigns one list answer holds.
pub const MAX_LIST: i64 = 100;
/// Longest campaign name an editor may give (characters).
pub const MAX_NAME: usize = 200;
/// Longest campaign description an editor may give (characters).
pub const MAX_DESCRIPTION: usize = 4_000;
/// How often `qalqan atlas serve` recomputes the proposals.
pub const PERIOD_S: u64 = 15 * 60;

/// Environment variable naming an operator's file of extra infrastructure to ignore (same format
/// as `data/campaign-ignore.txt`), read at every run.
pub const IGNORE_ENV: &str = "QALQAN_ATLAS_CAMPAIGN_IGNORE";

/// The built-in warning list and the shield's verified crawler families.
const BUILTIN: &[&str] = &[
    include_str!("../data/campaign-ignore.txt"),
    include_str!("../../shield/data/goodbots/applebot.txt"),
    include_str!("../../shield/data/goodbots/bingbot.txt"),
    include_str!("../../shield/data/goodbots/duckduckbot.txt"),
    include_str!("../../shield/data/goodbots/google-fetchers.txt"),
    include_str!("../../shield/data/goodbots/google-special.txt"),
    include_str!("../../shield/data/goodbots/googlebot.txt"),
    include_str!("../../shield/data/goodbots/linkedin.txt"),
    include_str!("../../shield/data/goodbots/meta.txt"),
    include_str!("../../shield/data/goodbots/telegram.txt"),
    include_str!("../../shield/data/goodbots/twitter.txt"),
    include_str!("../../shield/data/goodbots/vk.txt"),
    include_str!("../../shield/data/goodbots/yandex.txt"),
];

/// Infrastructure that proves nothing when two incidents share it.
#[derive(Debug, Clone, Default)]
pub struct IgnoreList {
    nets: Vec<IpNet>,
    asns: HashSet<u32>,
    /// Lower-cased user-agent substrings.
    agents: Vec<String>,
    /// Lower-cased domains (subdomains match too).
    domains: Vec<String>,
}

impl IgnoreList {
    /// The built-in list: `data/campaign-ignore.txt` plus the shield's good-bot families.
    pub fn builtin() -> IgnoreList {
        let mut l = IgnoreList::default();
        for text in BUILTIN {
            // The built-in files are checked by a unit test; a bad line cannot ship.
            let _ = l.add(text);
        }
        l
    }

    /// Adds the entries of one file (format in `data/campaign-ignore.txt`; the shield's
    /// good-bot files are read too: `family` and `rdns` lines are skipped). Every bad line is
    /// reported, with its number.
    pub fn add(&mut self, text: &str) -> std::result::Result<(), Vec<String>> {
        let mut errors = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (word, rest) = match line.split_once(char::is_whitespace) {
                Some((w, r)) => (w, r.trim()),
                None => ("net", line),
            };
            let ok = match word {
                "family" | "rdns" => true,
                "ua" if !rest.is_empty() => {
                    self.agents.push(rest.to_lowercase());
                    true
                }
                "domain" if !rest.is_empty() => {
                    self.domains.push(rest.trim_end_matches('.').to_lowercase());
                    true
                }
                "asn" => match parse_asn(rest) {
                    Some(a) => {
                        self.asns.insert(a);
                        true
                    }
                    None => false,
                },
                "net" => match parse_net(rest) {
                    Some(n) => {
                        self.nets.push(n);
                        true
                    }
                    None => false,
                },
                _ => false,
            };
            if !ok {
                errors.push(format!(
                    "line {}: cannot read {:?}",
                    n + 1,
                    truncate(raw, 80)
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Whether an indicator (kind and canonical value) is infrastructure to ignore.
    pub fn ignores(&self, kind: &str, value: &str) -> bool {
        match kind {
            "ip" => value
                .parse::<IpAddr>()
                .is_ok_and(|ip| self.nets.iter().any(|n| n.contains(&ip))),
            "cidr" => value
                .parse::<IpNet>()
                .is_ok_and(|c| self.nets.iter().any(|n| n.contains(&c) || c.contains(n))),
            "asn" => parse_asn(value).is_some_and(|a| self.asns.contains(&a)),
            "user_agent" => {
                let v = value.to_lowercase();
                self.agents.iter().any(|a| v.contains(a.as_str()))
            }
            "domain" => self.domain_listed(value),
            "url" => url_host(value).is_some_and(|h| self.domain_listed(h)),
            _ => false,
        }
    }

    fn domain_listed(&self, d: &str) -> bool {
        let d = d.trim_end_matches('.').to_lowercase();
        self.domains.iter().any(|x| {
            d == *x
                || (d.len() > x.len()
                    && d.ends_with(x.as_str())
                    && d.as_bytes().get(d.len() - x.len() - 1) == Some(&b'.'))
        })
    }

    /// The built-in list plus the operator's file named by [`IGNORE_ENV`], if set. A file that
    /// cannot be read, or its bad lines, are logged and skipped: correlation goes on with the
    /// rest.
    pub fn configured() -> IgnoreList {
        let mut l = IgnoreList::builtin();
        let Some(path) = std::env::var_os(IGNORE_ENV).filter(|p| !p.is_empty()) else {
            return l;
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                if let Err(errors) = l.add(&text) {
                    tracing::warn!(file = ?path, errors = ?errors.iter().take(10).collect::<Vec<_>>(),
                        count = errors.len(), "campaign ignore list: lines skipped");
                }
            }
            Err(e) => tracing::warn!(file = ?path, error = %e, "campaign ignore list not read"),
        }
        l
    }

    /// How many entries the list holds (for logs and tests).
    pub fn len(&self) -> usize {
        self.nets.len() + self.asns.len() + self.agents.len() + self.domains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn parse_asn(s: &str) -> Option<u32> {
    let d = s
        .strip_prefix("AS")
        .or_else(|| s.strip_prefix("as"))
        .unwrap_or(s);
    d.parse::<u32>().ok().filter(|n| *n > 0)
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

fn url_host(u: &str) -> Option<&str> {
    let rest = u.split_once("://")?.1;
    let host = rest.split(['/', '?', '#']).next()?;
    let host = host.rsplit('@').next()?;
    Some(host.split(':').next().unwrap_or(host))
}

/// The /24 (IPv4) or /48 (IPv6) network of an address or of a prefix at least that narrow.
fn net_of(kind: &str, value: &str) -> Option<String> {
    let net = match kind {
        "ip" => IpNet::from(value.parse::<IpAddr>().ok()?),
        "cidr" => value.parse::<IpNet>().ok()?,
        _ => return None,
    };
    let want = match net {
        IpNet::V4(_) => 24,
        IpNet::V6(_) => 48,
    };
    if net.prefix_len() < want {
        return None;
    }
    let n = match net {
        IpNet::V4(v) => IpNet::V4(ipnet::Ipv4Net::new(v.addr(), want).ok()?.trunc()),
        IpNet::V6(v) => IpNet::V6(ipnet::Ipv6Net::new(v.addr(), want).ok()?.trunc()),
    };
    Some(n.to_string())
}

/// How proposals are made.
#[derive(Debug, Clone)]
pub struct Params {
    /// Most time between two incidents (end of one to start of the other) to link them.
    pub window_ms: i64,
    /// An indicator seen in more incidents than this is infrastructure and is skipped.
    pub max_fanout: i64,
    /// Lowest pair score (0..=1) that joins two incidents.
    pub threshold: f64,
    /// How many of the most recent incidents are considered.
    pub max_incidents: i64,
    pub ignore: IgnoreList,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            window_ms: 14 * 24 * 3600 * 1000,
            max_fanout: 50,
            threshold: 0.5,
            max_incidents: 20_000,
            ignore: IgnoreList::configured(),
        }
    }
}

/// Weight of one shared value per kind of evidence; `k` shared values give `1 - (1 - w)^k`,
/// counting at most five. Addresses and networks are scored by Jaccard instead.
const WEIGHTS: &[(&str, f64)] = &[
    // AS numbers are coarse: a whole provider's customers share one.
    ("asn", 0.1),
    ("user_agent", 0.3),
    ("text_pattern", 0.4),
    ("social_account", 0.4),
    ("domain", 0.5),
    ("url", 0.5),
    ("email", 0.5),
    ("file_sha256", 0.5),
];
/// Weight of the /24 Jaccard: neighbours in one network are weaker proof than one address.
const NET_WEIGHT: f64 = 0.6;

/// What one run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub incidents_considered: usize,
    pub shared_indicators: usize,
    /// Indicators skipped because they are seen in more incidents than the fan-out cap.
    pub infrastructure_skipped: usize,
    /// Indicators skipped because they are on the warning list.
    pub ignored: usize,
    pub pairs: usize,
    /// Whether [`MAX_PAIRS`] or [`MAX_INDEX_ROWS`] cut the run short.
    pub truncated: bool,
    pub groups: usize,
    pub proposed_new: usize,
    pub removed: usize,
}

/// One scored pair, before storing.
struct Link {
    a: i64,
    b: i64,
    score: f64,
    evidence: Value,
}

/// Union-find with group sizes.
struct Groups {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl Groups {
    fn new(n: usize) -> Groups {
        Groups {
            parent: (0..n).collect(),
            size: vec![1; n],
        }
    }
    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }
    /// Joins two groups unless the result would be larger than `max`.
    fn union(&mut self, a: usize, b: usize, max: usize) -> bool {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return true;
        }
        if self.size[ra] + self.size[rb] > max {
            return false;
        }
        let (big, small) = if self.size[ra] >= self.size[rb] {
            (ra, rb)
        } else {
            (rb, ra)
        };
        self.parent[small] = big;
        self.size[big] += self.size[small];
        true
    }
}

fn jaccard(a: &HashSet<String>, b: &HashSet<String>) -> (usize, f64) {
    let inter = a.iter().filter(|x| b.contains(*x)).count();
    let union = a.len() + b.len() - inter;
    if union == 0 {
        (0, 0.0)
    } else {
        (inter, inter as f64 / union as f64)
    }
}

fn shared_values(a: &HashSet<String>, b: &HashSet<String>) -> Vec<String> {
    let mut v: Vec<String> = a.iter().filter(|x| b.contains(*x)).cloned().collect();
    v.sort();
    v.truncate(MAX_SHOWN);
    v
}

/// Scores one pair from the two incidents' address and network sets and the other indicators
/// they share. Returns the score and the evidence (canonical JSON, values capped).
fn score_pair(
    ips: (&HashSet<String>, &HashSet<String>),
    nets: (&HashSet<String>, &HashSet<String>),
    shared: &BTreeMap<String, BTreeSet<String>>,
) -> (f64, Value) {
    let mut keep = 1.0f64;
    let mut ev = serde_json::Map::new();
    let (n_ip, j_ip) = jaccard(ips.0, ips.1);
    if n_ip > 0 {
        keep *= 1.0 - j_ip;
        ev.insert(
            "ip".into(),
            json!({"shared": n_ip, "jaccard": round3(j_ip), "values": shared_values(ips.0, ips.1)}),
        );
    }
    let (n_net, j_net) = jaccard(nets.0, nets.1);
    if n_net > 0 {
        keep *= 1.0 - NET_WEIGHT * j_net;
        ev.insert(
            "net24".into(),
            json!({"shared": n_net, "jaccard": round3(j_net), "values": shared_values(nets.0, nets.1)}),
        );
    }
    for (kind, w) in WEIGHTS {
        let Some(values) = shared.get(*kind) else {
            continue;
        };
        if values.is_empty() {
            continue;
        }
        let k = values.len().min(5) as i32;
        keep *= (1.0 - w).powi(k);
        ev.insert(
            (*kind).into(),
            json!({"shared": values.len(), "values": values.iter().take(MAX_SHOWN).collect::<Vec<_>>()}),
        );
    }
    let score = (1.0 - keep).clamp(0.0, 1.0);
    (score, Value::Object(ev))
}

/// A score in thousandths, as stored.
fn permille(x: f64) -> i64 {
    (x.clamp(0.0, 1.0) * 1000.0).round() as i64
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Hex SHA-256 of the sorted member row ids: the identity of a group for "rejected once,
/// never proposed again".
/// The edited proposal (not yet kept by this run) sharing the most incidents with a new group,
/// if any shares one; the lowest id among equals.
fn carry_over(
    edited: &BTreeMap<i64, BTreeSet<i64>>,
    keep: &HashSet<i64>,
    members: &BTreeSet<i64>,
) -> Option<i64> {
    edited
        .iter()
        .filter(|(id, _)| !keep.contains(id))
        .map(|(id, old)| (old.intersection(members).count(), *id))
        .filter(|(n, _)| *n > 0)
        .max_by(|x, y| x.0.cmp(&y.0).then(y.1.cmp(&x.1)))
        .map(|(_, id)| id)
}

fn members_key(members: &BTreeSet<i64>) -> String {
    let s: Vec<String> = members.iter().map(i64::to_string).collect();
    hex(&Sha256::digest(s.join(",").as_bytes()))
}

/// Whether two incidents' times are within the window of each other.
fn near(a: (i64, i64), b: (i64, i64), window: i64) -> bool {
    let gap = a.0.max(b.0) - a.1.min(b.1);
    gap <= window
}

/// A campaign as one reader sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Campaign {
    pub id: String,
    /// `C-` and the start of the id until an editor names it.
    pub name: String,
    /// What an editor wrote about it ('' when nothing).
    #[serde(default)]
    pub description: String,
    /// `proposed`, `confirmed` or `rejected`.
    pub status: String,
    /// The strongest visible link (0..=1).
    pub score: f64,
    pub first_seen: String,
    pub last_seen: String,
    /// The strictest TLP of the visible members: what the campaign may be shared under.
    pub tlp: String,
    pub members: Vec<Member>,
    pub links: Vec<LinkView>,
    /// Shared evidence over the visible links, per kind: how many values, some of them.
    pub evidence: BTreeMap<String, EvidenceView>,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub created_at: String,
    /// The last change of the campaign (links, decision, name) or of a visible member: what
    /// the reader sees of it changes no later than this.
    pub updated_at: String,
    #[serde(skip)]
    pub created_ms: i64,
    #[serde(skip)]
    pub updated_ms: i64,
    #[serde(skip)]
    pub first_ms: i64,
    #[serde(skip)]
    pub last_ms: i64,
    /// Whether the reader's outlet owns a member (and so, as an editor, may decide).
    #[serde(skip)]
    pub own_member: bool,
}

/// One member incident.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub outlet: String,
    pub kind: String,
    pub title: String,
    pub tlp: String,
    pub started_at: String,
    #[serde(skip)]
    pub row_id: i64,
    #[serde(skip)]
    pub started_ms: i64,
}

/// One scored pair of visible members.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkView {
    pub a: String,
    pub b: String,
    pub score: f64,
    pub evidence: Value,
}

/// Evidence of one kind over all visible links.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EvidenceView {
    pub shared: u64,
    pub values: Vec<String>,
}

/// A decision on a campaign.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub status: String,
}

/// An editor's naming of a campaign: a new name, a new description, or both (absent: kept).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignEdit {
    pub name: Option<String>,
    pub description: Option<String>,
}

/// Checks an edit: the name trimmed, 1..=[`MAX_NAME`] characters without control characters;
/// the description at most [`MAX_DESCRIPTION`] characters, line breaks and tabs the only
/// control characters allowed. Every problem is reported at once.
pub fn check_edit(e: &CampaignEdit) -> Result<(Option<String>, Option<String>)> {
    let mut errors = Vec::new();
    let name = e.name.as_deref().map(|n| {
        let n = n.trim();
        if n.is_empty() {
            errors.push(FieldError::new("name", "must not be empty"));
        } else if n.chars().count() > MAX_NAME {
            errors.push(FieldError::new(
                "name",
                format!("at most {MAX_NAME} characters"),
            ));
        } else if n.chars().any(char::is_control) {
            errors.push(FieldError::new(
                "name",
                "must not contain control characters",
            ));
        }
        n.to_string()
    });
    let description = e.description.as_deref().map(|d| {
        let d = d.trim();
        if d.chars().count() > MAX_DESCRIPTION {
            errors.push(FieldError::new(
                "description",
                format!("at most {MAX_DESCRIPTION} characters"),
            ));
        } else if d
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
        {
            errors.push(FieldError::new(
                "description",
                "must not contain control characters",
            ));
        }
        // One line-break convention, whatever the browser sent.
        d.replace("\r\n", "\n")
    });
    if name.is_none() && description.is_none() {
        errors.push(FieldError::new(
            "name",
            "give a name, a description, or both",
        ));
    }
    Error::check(errors)?;
    Ok((name, description))
}

/// One run at a time per process.
static RUNNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a visible-link row carries.
struct VisibleLink {
    a: i64,
    b: i64,
    score: i64,
    evidence: String,
}

impl Db {
    /// Recomputes the proposals over the whole registry (system work: no reader's rights apply
    /// here; every read path filters). Returns what it did.
    pub async fn recompute_campaigns(&self, p: &Params) -> Result<Summary> {
        // One run at a time per process: a second caller waits for the first.
        let _running = RUNNING.lock().await;
        let mut sum = Summary::default();

        // 1. The incidents considered: the most recent ones.
        let rows = sqlx::query(
            "SELECT id, outlet_id, started_ms, COALESCE(ended_ms, started_ms) AS ended_ms
             FROM incidents ORDER BY started_ms DESC, id DESC LIMIT $1",
        )
        .bind(p.max_incidents.max(1))
        .fetch_all(&self.pool)
        .await?;
        let mut incidents: HashMap<i64, (i64, i64, i64)> = HashMap::new();
        for r in &rows {
            let start: i64 = r.try_get("started_ms")?;
            let end: i64 = r.try_get("ended_ms")?;
            incidents.insert(
                r.try_get("id")?,
                (r.try_get("outlet_id")?, start, end.max(start)),
            );
        }
        sum.incidents_considered = incidents.len();
        let Some(oldest) = incidents.values().map(|x| x.1).min() else {
            return self.store_groups(Vec::new(), sum).await;
        };

        // 2. Shared indicators through the sightings index, with the fan-out cap in SQL.
        let recent =
            "SELECT s.indicator_id FROM sightings s JOIN incidents i ON i.id = s.incident_id
             WHERE i.started_ms >= $1 GROUP BY s.indicator_id";
        let infra: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM ({recent} HAVING COUNT(*) > $2) t"
        )))
        .bind(oldest)
        .bind(p.max_fanout)
        .fetch_one(&self.pool)
        .await?;
        sum.infrastructure_skipped = usize::try_from(infra).unwrap_or(0);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT ind.id, ind.kind, ind.value, s.incident_id
             FROM ({recent} HAVING COUNT(*) BETWEEN 2 AND $2) g
             JOIN indicators ind ON ind.id = g.indicator_id
             JOIN sightings s ON s.indicator_id = g.indicator_id
             ORDER BY ind.id, s.incident_id LIMIT $3"
        )))
        .bind(oldest)
        .bind(p.max_fanout)
        .bind(MAX_INDEX_ROWS)
        .fetch_all(&self.pool)
        .await?;
        if rows.len() as i64 >= MAX_INDEX_ROWS {
            sum.truncated = true;
        }
        // indicator id -> (kind, value, incidents)
        let mut shared: BTreeMap<i64, (String, String, Vec<i64>)> = BTreeMap::new();
        for r in &rows {
            let id: i64 = r.try_get("id")?;
            let inc: i64 = r.try_get("incident_id")?;
            if !incidents.contains_key(&inc) {
                continue;
            }
            let e = match shared.get_mut(&id) {
                Some(e) => e,
                None => shared.entry(id).or_insert((
                    r.try_get("kind")?,
                    r.try_get("value")?,
                    Vec::new(),
                )),
            };
            e.2.push(inc);
        }
        sum.shared_indicators = shared.len();

        // 3. Candidate pairs: two outlets, near in time, through one indicator not ignored.
        type Pair = (i64, i64);
        let mut pairs: HashMap<Pair, BTreeMap<String, BTreeSet<String>>> = HashMap::new();
        for (kind, value, incs) in shared.values() {
            if incs.len() < 2 {
                continue;
            }
            if p.ignore.ignores(kind, value) {
                sum.ignored += 1;
                continue;
            }
            for (n, x) in incs.iter().enumerate() {
                for y in &incs[n + 1..] {
                    let (Some(ix), Some(iy)) = (incidents.get(x), incidents.get(y)) else {
                        continue;
                    };
                    if ix.0 == iy.0 || !near((ix.1, ix.2), (iy.1, iy.2), p.window_ms) {
                        continue;
                    }
                    let key = ((*x).min(*y), (*x).max(*y));
                    if !pairs.contains_key(&key) && pairs.len() >= MAX_PAIRS {
                        sum.truncated = true;
                        continue;
                    }
                    pairs
                        .entry(key)
                        .or_default()
                        .entry(kind.clone())
                        .or_default()
                        .insert(value.clone());
                }
            }
        }
        sum.pairs = pairs.len();

        // 4. Address and network sets of every incident in a pair, then the scores.
        let mut sets: HashMap<i64, (HashSet<String>, HashSet<String>)> = HashMap::new();
        let mut involved: Vec<i64> = pairs.keys().flat_map(|(a, b)| [*a, *b]).collect();
        involved.sort_unstable();
        involved.dedup();
        // In batches, the busiest addresses of each incident first (a window function, so an
        // incident with a million addresses still gives at most MAX_SET rows). CROSS JOIN keeps
        // SQLite's planner on the sightings index first (it would otherwise walk every address
        // indicator); PostgreSQL plans it as a plain join.
        for chunk in involved.chunks(200) {
            let marks: Vec<String> = (0..chunk.len()).map(|n| format!("${}", n + 2)).collect();
            let sql = format!(
                "SELECT incident_id, kind, value FROM (
                   SELECT s.incident_id, ind.kind, ind.value,
                          ROW_NUMBER() OVER (PARTITION BY s.incident_id ORDER BY s.count DESC, ind.id) AS rn
                   FROM sightings s CROSS JOIN indicators ind
                   WHERE ind.id = s.indicator_id AND s.incident_id IN ({})
                     AND ind.kind IN ('ip', 'cidr')) t
                 WHERE rn <= $1",
                marks.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(MAX_SET);
            for id in chunk {
                q = q.bind(*id);
            }
            for r in q.fetch_all(&self.pool).await? {
                let id: i64 = r.try_get("incident_id")?;
                let kind: String = r.try_get("kind")?;
                let value: String = r.try_get("value")?;
                if p.ignore.ignores(&kind, &value) {
                    continue;
                }
                let e = sets.entry(id).or_default();
                if let Some(n) = net_of(&kind, &value) {
                    e.1.insert(n);
                }
                if kind == "ip" {
                    e.0.insert(value);
                }
            }
        }
        let empty = (HashSet::new(), HashSet::new());
        let mut links: Vec<Link> = pairs
            .into_iter()
            .filter_map(|((a, b), shared)| {
                let sa = sets.get(&a).unwrap_or(&empty);
                let sb = sets.get(&b).unwrap_or(&empty);
                let (score, evidence) = score_pair((&sa.0, &sb.0), (&sa.1, &sb.1), &shared);
                (score >= p.threshold).then_some(Link {
                    a,
                    b,
                    score,
                    evidence,
                })
            })
            .collect();
        links.sort_by(|x, y| {
            y.score
                .total_cmp(&x.score)
                .then(x.a.cmp(&y.a))
                .then(x.b.cmp(&y.b))
        });

        // 5. Groups, strongest links first, bounded in size.
        let mut index: HashMap<i64, usize> = HashMap::new();
        for l in &links {
            for id in [l.a, l.b] {
                let n = index.len();
                index.entry(id).or_insert(n);
            }
        }
        let mut uf = Groups::new(index.len());
        for l in &links {
            uf.union(index[&l.a], index[&l.b], MAX_MEMBERS);
        }
        let mut groups: BTreeMap<usize, (BTreeSet<i64>, Vec<Link>)> = BTreeMap::new();
        for l in links {
            let (ra, rb) = (uf.find(index[&l.a]), uf.find(index[&l.b]));
            if ra != rb {
                continue;
            }
            let g = groups.entry(ra).or_default();
            g.0.insert(l.a);
            g.0.insert(l.b);
            g.1.push(l);
        }
        let groups: Vec<(BTreeSet<i64>, Vec<Link>)> = groups.into_values().collect();
        sum.groups = groups.len();
        self.store_groups(groups, sum).await
    }

    /// Writes the groups of one run in one transaction.
    async fn store_groups(
        &self,
        groups: Vec<(BTreeSet<i64>, Vec<Link>)>,
        mut sum: Summary,
    ) -> Result<Summary> {
        let now = now_ms();
        let _w = self.write().await;
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query("SELECT id, members_key, status FROM campaigns")
            .fetch_all(&mut *tx)
            .await?;
        let mut existing: HashMap<String, (i64, String)> = HashMap::new();
        for r in &rows {
            existing.insert(
                r.try_get("members_key")?,
                (r.try_get("id")?, r.try_get("status")?),
            );
        }
        // Proposals an editor named or described: their members, so that a group which gains or
        // loses an incident keeps its name, description and id instead of being replaced by a
        // fresh `C-…` proposal.
        let edited_rows = sqlx::query(
            "SELECT c.id, l.a_id, l.b_id FROM campaigns c
             JOIN campaign_links l ON l.campaign_id = c.id
             WHERE c.status = 'proposed'
               AND (c.description <> '' OR c.name <> 'C-' || substr(c.uuid, 1, 8))",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut edited: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
        for r in &edited_rows {
            let e = edited.entry(r.try_get("id")?).or_default();
            e.insert(r.try_get("a_id")?);
            e.insert(r.try_get("b_id")?);
        }
        let mut keep: HashSet<i64> = HashSet::new();
        for (members, links) in &groups {
            let key = members_key(members);
            let id = match existing.get(&key) {
                Some((_, status)) if status == "rejected" => continue,
                Some((id, _)) => {
                    // Unchanged links: nothing to write, and `modified` (STIX) stays.
                    let old = sqlx::query(
                        "SELECT a_id, b_id, score, evidence FROM campaign_links
                         WHERE campaign_id = $1 ORDER BY a_id, b_id",
                    )
                    .bind(*id)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| {
                        Ok((
                            r.try_get::<i64, _>("a_id")?,
                            r.try_get::<i64, _>("b_id")?,
                            r.try_get::<i64, _>("score")?,
                            r.try_get::<String, _>("evidence")?,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?;
                    let mut new: Vec<(i64, i64, i64, String)> = links
                        .iter()
                        .map(|l| (l.a, l.b, permille(l.score), l.evidence.to_string()))
                        .collect();
                    new.sort();
                    if old == new {
                        keep.insert(*id);
                        continue;
                    }
                    sqlx::query("DELETE FROM campaign_links WHERE campaign_id = $1")
                        .bind(*id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("UPDATE campaigns SET updated_ms = $1 WHERE id = $2")
                        .bind(now)
                        .bind(*id)
                        .execute(&mut *tx)
                        .await?;
                    *id
                }
                None => match carry_over(&edited, &keep, members) {
                    Some(id) => {
                        sqlx::query("DELETE FROM campaign_links WHERE campaign_id = $1")
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query(
                            "UPDATE campaigns SET members_key = $1, updated_ms = $2 WHERE id = $3",
                        )
                        .bind(&key)
                        .bind(now)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                        id
                    }
                    None => {
                        let uuid = uuid::Uuid::new_v4().to_string();
                        let name = format!("C-{}", &uuid[..8]);
                        let id: i64 = sqlx::query_scalar(
                        "INSERT INTO campaigns (uuid, name, status, members_key, created_ms, updated_ms)
                         VALUES ($1, $2, 'proposed', $3, $4, $4) RETURNING id",
                    )
                    .bind(&uuid)
                    .bind(&name)
                    .bind(&key)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                        sum.proposed_new += 1;
                        id
                    }
                },
            };
            keep.insert(id);
            for l in links {
                sqlx::query(
                    "INSERT INTO campaign_links (campaign_id, a_id, b_id, score, evidence)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(id)
                .bind(l.a)
                .bind(l.b)
                .bind(permille(l.score))
                .bind(l.evidence.to_string())
                .execute(&mut *tx)
                .await?;
            }
        }
        // Proposals that no longer hold go; decisions stay.
        for (id, status) in existing.values() {
            if status == "proposed" && !keep.contains(id) {
                sqlx::query("DELETE FROM campaign_links WHERE campaign_id = $1")
                    .bind(*id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM campaigns WHERE id = $1")
                    .bind(*id)
                    .execute(&mut *tx)
                    .await?;
                sum.removed += 1;
            }
        }
        if sum.proposed_new > 0 || sum.removed > 0 {
            audit(
                &mut tx,
                None,
                "system:campaigns",
                "campaigns.recompute",
                "campaigns",
                &format!(
                    "{} new, {} removed, {} groups, {} pairs",
                    sum.proposed_new, sum.removed, sum.groups, sum.pairs
                ),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(sum)
    }

    /// The links of the given campaigns whose two incidents the caller may both see.
    async fn visible_links(
        c: &mut sqlx::AnyConnection,
        actor: &Actor,
        status: Option<&str>,
        uuid: Option<&str>,
        row: Option<i64>,
        limit: i64,
    ) -> Result<Vec<(i64, Vec<VisibleLink>)>> {
        let both = both_visible("l");
        let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT c.id FROM campaigns c
             WHERE ($2 = '' OR c.status = $2) AND ($3 = '' OR c.uuid = $3)
               AND ($5 < 0 OR c.id = $5)
               AND EXISTS (SELECT 1 FROM campaign_links l WHERE l.campaign_id = c.id AND {both})
             ORDER BY c.id DESC LIMIT $4"
        )))
        .bind(actor.outlet_id)
        .bind(status.unwrap_or(""))
        .bind(uuid.unwrap_or(""))
        .bind(limit)
        .bind(row.unwrap_or(-1))
        .fetch_all(&mut *c)
        .await?;
        let mut out = Vec::new();
        for id in ids {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT l.a_id, l.b_id, l.score, l.evidence FROM campaign_links l
                 WHERE l.campaign_id = $2 AND {both} ORDER BY l.score DESC, l.a_id, l.b_id"
            )))
            .bind(actor.outlet_id)
            .bind(id)
            .fetch_all(&mut *c)
            .await?;
            let mut links = Vec::new();
            for r in &rows {
                links.push(VisibleLink {
                    a: r.try_get("a_id")?,
                    b: r.try_get("b_id")?,
                    score: r.try_get("score")?,
                    evidence: r.try_get("evidence")?,
                });
            }
            out.push((id, links));
        }
        Ok(out)
    }

    /// Builds what the caller sees of one campaign from its visible links: the largest connected
    /// group of them only.
    async fn campaign_view(
        conn: &mut sqlx::AnyConnection,
        actor: &Actor,
        id: i64,
        links: Vec<VisibleLink>,
    ) -> Result<Option<Campaign>> {
        // Largest connected group of the visible links (ties: the one with the lowest row id).
        let mut index: BTreeMap<i64, usize> = BTreeMap::new();
        for l in &links {
            for x in [l.a, l.b] {
                let n = index.len();
                index.entry(x).or_insert(n);
            }
        }
        let mut uf = Groups::new(index.len());
        for l in &links {
            uf.union(index[&l.a], index[&l.b], usize::MAX);
        }
        // `index` iterates by row id, so the first root of the largest size has the lowest row.
        let mut best: Option<(usize, usize)> = None;
        for n in index.values() {
            let root = uf.find(*n);
            let size = uf.size[root];
            if best.is_none_or(|(s, _)| size > s) {
                best = Some((size, root));
            }
        }
        let Some((_, root)) = best else {
            return Ok(None);
        };
        let links: Vec<VisibleLink> = links
            .into_iter()
            .filter(|l| uf.find(index[&l.a]) == root)
            .collect();
        let member_ids: BTreeSet<i64> = links.iter().flat_map(|l| [l.a, l.b]).collect();

        let c = sqlx::query(
            "SELECT uuid, name, description, status, created_ms, updated_ms, decided_by,
                    decided_outlet_id, decided_ms
             FROM campaigns WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(Error::NotFound)?;

        // The members, read again through VISIBLE.
        let mut members = Vec::new();
        let mut outlets = HashSet::new();
        let (mut first, mut last) = (i64::MAX, i64::MIN);
        // The latest change of a visible member: a member's TLP makes the campaign's marking,
        // so its change is a change of what this reader sees.
        let mut members_updated = i64::MIN;
        let mut tlp = Tlp::Clear;
        let list: Vec<i64> = member_ids.iter().copied().collect();
        for chunk in list.chunks(200) {
            let marks: Vec<String> = (0..chunk.len()).map(|n| format!("${}", n + 2)).collect();
            let sql = format!(
                "SELECT i.id, i.uuid, o.slug, i.kind, i.title, i.tlp, i.outlet_id, i.started_ms,
                        COALESCE(i.ended_ms, i.started_ms) AS ended_ms, i.updated_ms
                 FROM incidents i JOIN outlets o ON o.id = i.outlet_id
                 WHERE i.id IN ({}) AND {VISIBLE} ORDER BY i.started_ms, i.id",
                marks.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(actor.outlet_id);
            for x in chunk {
                q = q.bind(*x);
            }
            for r in q.fetch_all(&mut *conn).await? {
                let started: i64 = r.try_get("started_ms")?;
                let ended: i64 = r.try_get("ended_ms")?;
                members_updated = members_updated.max(r.try_get::<i64, _>("updated_ms")?);
                first = first.min(started);
                last = last.max(ended.max(started));
                let t: String = r.try_get("tlp")?;
                if let Some(t) = Tlp::parse(&t) {
                    tlp = tlp.stricter(t);
                }
                outlets.insert(r.try_get::<i64, _>("outlet_id")?);
                members.push(Member {
                    id: r.try_get("uuid")?,
                    outlet: r.try_get("slug")?,
                    kind: r.try_get("kind")?,
                    title: r.try_get("title")?,
                    tlp: t,
                    started_at: format_time(started),
                    row_id: r.try_get("id")?,
                    started_ms: started,
                });
            }
        }
        members.sort_by(|a, b| {
            a.started_at
                .cmp(&b.started_at)
                .then(a.row_id.cmp(&b.row_id))
        });
        // A member that vanished between the two reads (its TLP changed) takes its links along.
        let seen: HashMap<i64, String> = members.iter().map(|m| (m.row_id, m.id.clone())).collect();
        let mut evidence: BTreeMap<String, (u64, BTreeSet<String>)> = BTreeMap::new();
        let mut views = Vec::new();
        let mut score = 0i64;
        for l in &links {
            let (Some(a), Some(b)) = (seen.get(&l.a), seen.get(&l.b)) else {
                continue;
            };
            score = score.max(l.score);
            let ev: Value = serde_json::from_str(&l.evidence).unwrap_or(Value::Null);
            if let Value::Object(m) = &ev {
                for (kind, v) in m {
                    let e = evidence.entry(kind.clone()).or_default();
                    e.0 = e.0.max(v["shared"].as_u64().unwrap_or(0));
                    for x in v["values"].as_array().into_iter().flatten() {
                        if let Some(s) = x.as_str()
                            && e.1.len() < MAX_SHOWN
                        {
                            e.1.insert(s.to_string());
                        }
                    }
                }
            }
            views.push(LinkView {
                a: a.clone(),
                b: b.clone(),
                score: l.score as f64 / 1000.0,
                evidence: ev,
            });
        }
        if views.is_empty() {
            return Ok(None);
        }
        let decided_outlet: Option<i64> = c.try_get("decided_outlet_id")?;
        // Who decided is shown only when that outlet is the reader's or owns a visible member.
        let show_decider =
            decided_outlet.is_some_and(|o| o == actor.outlet_id || outlets.contains(&o));
        let decided_ms: Option<i64> = c.try_get("decided_ms")?;
        let created_ms: i64 = c.try_get("created_ms")?;
        let updated_ms: i64 = c.try_get::<i64, _>("updated_ms")?.max(members_updated);
        Ok(Some(Campaign {
            id: c.try_get("uuid")?,
            name: c.try_get("name")?,
            description: c.try_get("description")?,
            status: c.try_get("status")?,
            score: score as f64 / 1000.0,
            first_seen: format_time(first),
            last_seen: format_time(last.max(first)),
            tlp: tlp.as_str().to_string(),
            members,
            links: views,
            evidence: evidence
                .into_iter()
                .map(|(k, (n, v))| {
                    (
                        k,
                        EvidenceView {
                            shared: n,
                            values: v.into_iter().collect(),
                        },
                    )
                })
                .collect(),
            decided_by: if show_decider {
                c.try_get("decided_by")?
            } else {
                None
            },
            decided_at: if show_decider {
                decided_ms.map(format_time)
            } else {
                None
            },
            created_at: format_time(created_ms),
            updated_at: format_time(updated_ms.max(created_ms)),
            created_ms,
            updated_ms: updated_ms.max(created_ms),
            first_ms: first,
            last_ms: last.max(first),
            own_member: outlets.contains(&actor.outlet_id),
        }))
    }

    /// The campaigns the caller may see (any status, or one), newest first.
    pub async fn campaigns(&self, actor: &Actor, status: Option<&str>) -> Result<Vec<Campaign>> {
        if !actor.role.can_read() {
            return Err(Error::Forbidden);
        }
        let status = match status.map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(s @ ("proposed" | "confirmed" | "rejected")) => Some(s),
            Some(_) => {
                return Err(Error::field(
                    "status",
                    "one of: proposed, confirmed, rejected",
                ));
            }
        };
        let mut conn = self.pool.acquire().await?;
        visible_campaigns(&mut conn, actor, status, MAX_LIST).await
    }

    /// One campaign, if the caller may see at least one of its links.
    pub async fn campaign(&self, actor: &Actor, uuid: &str) -> Result<Campaign> {
        if !actor.role.can_read() {
            return Err(Error::Forbidden);
        }
        let mut conn = self.pool.acquire().await?;
        let mut found = Db::visible_links(&mut conn, actor, None, Some(uuid), None, 1).await?;
        let Some((id, links)) = found.pop() else {
            return Err(Error::NotFound);
        };
        Db::campaign_view(&mut conn, actor, id, links)
            .await?
            .ok_or(Error::NotFound)
    }

    /// Confirms or rejects a campaign. Editors and admins of an outlet that owns a visible member
    /// decide; the decision is recorded in the campaign and the audit log.
    pub async fn decide_campaign(
        &self,
        actor: &Actor,
        uuid: &str,
        status: &str,
    ) -> Result<Campaign> {
        if !actor.role.can_read() {
            return Err(Error::Forbidden);
        }
        let status = match status.trim() {
            s @ ("confirmed" | "rejected") => s,
            _ => return Err(Error::field("status", "one of: confirmed, rejected")),
        };
        let c = self.campaign(actor, uuid).await?;
        if !actor.role.can_write() || !c.own_member {
            return Err(Error::Forbidden);
        }
        let now = now_ms();
        {
            let _w = self.write().await;
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "UPDATE campaigns SET status = $1, decided_by = $2, decided_outlet_id = $3,
                        decided_ms = $4, updated_ms = $4 WHERE uuid = $5",
            )
            .bind(status)
            .bind(&actor.label)
            .bind(actor.outlet_id)
            .bind(now)
            .bind(uuid)
            .execute(&mut *tx)
            .await?;
            audit(
                &mut tx,
                Some(actor.outlet_id),
                &actor.label,
                if status == "confirmed" {
                    "campaign.confirm"
                } else {
                    "campaign.reject"
                },
                uuid,
                &format!("{} members visible to the decider", c.members.len()),
            )
            .await?;
            tx.commit().await?;
        }
        self.campaign(actor, uuid).await
    }

    /// Renames a proposed or confirmed campaign and/or sets its description. The same people
    /// as [`Db::decide_campaign`] may: editors and admins of an outlet that owns a visible
    /// member. The change bumps the campaign's modification time (the STIX `modified`) and is
    /// recorded in the audit log with the old and the new name.
    pub async fn edit_campaign(
        &self,
        actor: &Actor,
        uuid: &str,
        edit: &CampaignEdit,
    ) -> Result<Campaign> {
        if !actor.role.can_read() {
            return Err(Error::Forbidden);
        }
        // Visibility first, so a campaign the caller may not see answers 404 whatever it sent.
        let c = self.campaign(actor, uuid).await?;
        if !actor.role.can_write() || !c.own_member {
            return Err(Error::Forbidden);
        }
        let (name, description) = check_edit(edit)?;
        if c.status == "rejected" {
            return Err(Error::Conflict(
                "a rejected campaign is not renamed; confirm it first".into(),
            ));
        }
        let name = name.unwrap_or_else(|| c.name.clone());
        let description = description.unwrap_or_else(|| c.description.clone());
        if name == c.name && description == c.description {
            return Ok(c);
        }
        let now = now_ms();
        {
            let _w = self.write().await;
            let mut tx = self.pool.begin().await?;
            // `updated_ms` only grows, even if the clock stepped back.
            let r = sqlx::query(
                "UPDATE campaigns SET name = $1, description = $2,
                        updated_ms = CASE WHEN updated_ms >= $3 THEN updated_ms + 1 ELSE $3 END
                 WHERE uuid = $4 AND status <> 'rejected'",
            )
            .bind(&name)
            .bind(&description)
            .bind(now)
            .bind(uuid)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() == 0 {
                // Rejected or removed by a recompute since it was read.
                return Err(Error::Conflict("the campaign changed meanwhile".into()));
            }
            let mut detail = if name == c.name {
                format!("name {name:?} kept")
            } else {
                format!("name {:?} -> {name:?}", c.name)
            };
            if description != c.description {
                detail.push_str(&format!(
                    "; description changed ({} characters)",
                    description.chars().count()
                ));
            }
            audit(
                &mut tx,
                Some(actor.outlet_id),
                &actor.label,
                "campaign.rename",
                uuid,
                &detail,
            )
            .await?;
            tx.commit().await?;
        }
        self.campaign(actor, uuid).await
    }
}

/// SQL that holds when both incidents of the link aliased `l` pass [`VISIBLE`] for the caller
/// bound as `$1`.
fn both_visible(l: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM incidents i WHERE i.id = {l}.a_id AND {VISIBLE})
         AND EXISTS (SELECT 1 FROM incidents i WHERE i.id = {l}.b_id AND {VISIBLE})"
    )
}

/// The TAXII collection's rows of campaigns (`src`, `rid`, `added`), for the caller bound as
/// `$1`: the confirmed campaigns with a link whose two incidents the caller may see, the
/// [`STIX_MAX_CAMPAIGNS`] newest of them, exactly the set the STIX export reads
/// ([`visible_campaigns`] with status `confirmed`). `added` is the later of the campaign's
/// change and its visible linked members' (a member whose TLP opens up to the caller changes
/// what the caller sees of the campaign), so `added_after` finds every new version.
pub(crate) fn taxii_rows_sql(src: &str) -> String {
    let both = both_visible("l");
    let member = format!(
        "SELECT MAX(m.updated_ms) FROM campaign_links l JOIN incidents m
           ON m.id = l.a_id OR m.id = l.b_id
         WHERE l.campaign_id = c.id AND {both}"
    );
    format!(
        "SELECT '{src}' AS src, t.id AS rid,
           CASE WHEN t.m > t.u THEN t.m ELSE t.u END AS added
         FROM (SELECT c.id, c.updated_ms AS u, COALESCE(({member}), 0) AS m
               FROM campaigns c
               WHERE c.id IN (SELECT v.id FROM campaigns v
                              WHERE v.status = 'confirmed'
                                AND EXISTS (SELECT 1 FROM campaign_links l
                                            WHERE l.campaign_id = v.id AND {both})
                              ORDER BY v.id DESC LIMIT {STIX_MAX_CAMPAIGNS})) t"
    )
}

/// The confirmed campaigns of the given row ids as the caller sees them (the rows of
/// [`taxii_rows_sql`]), by row id. A row the caller may no longer see is left out.
pub(crate) async fn visible_campaigns_by_row(
    conn: &mut sqlx::AnyConnection,
    actor: &Actor,
    rows: &[i64],
) -> Result<HashMap<i64, Campaign>> {
    let mut out = HashMap::new();
    for row in rows {
        for (id, links) in
            Db::visible_links(conn, actor, Some("confirmed"), None, Some(*row), 1).await?
        {
            if let Some(c) = Db::campaign_view(conn, actor, id, links).await? {
                out.insert(id, c);
            }
        }
    }
    Ok(out)
}

/// The campaigns (of one status, or all) the caller may see, newest first, at most `limit`,
/// read on one connection (the STIX export passes its snapshot transaction).
pub(crate) async fn visible_campaigns(
    conn: &mut sqlx::AnyConnection,
    actor: &Actor,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<Campaign>> {
    let mut out = Vec::new();
    for (id, links) in Db::visible_links(conn, actor, status, None, None, limit).await? {
        if let Some(c) = Db::campaign_view(conn, actor, id, links).await? {
            out.push(c);
        }
    }
    Ok(out)
}

/// Recomputes the proposals now and then, for `qalqan atlas serve`. Failures are logged and the
/// next round tries again.
pub async fn run_periodically(db: Db, params: Params) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(PERIOD_S));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The operator's ignore file is read again each round, so an edit needs no restart.
        let params = Params {
            ignore: IgnoreList::configured(),
            ..params.clone()
        };
        match db.recompute_campaigns(&params).await {
            Ok(s) => tracing::info!(
                groups = s.groups,
                new = s.proposed_new,
                removed = s.removed,
                pairs = s.pairs,
                truncated = s.truncated,
                "campaign proposals recomputed"
            ),
            Err(e) => tracing::warn!(error = %e, "campaign correlation failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_files_parse_without_errors() {
        for text in BUILTIN {
            let mut l = IgnoreList::default();
            assert_eq!(l.add(text), Ok(()));
        }
        let l = IgnoreList::builtin();
        assert!(l.ignores("asn", "AS13335"));
        assert!(l.ignores("ip", "104.16.1.1"));
        assert!(
            l.ignores("ip", "66.249.66.1"),
            "Googlebot range from the shield"
        );
        assert!(l.ignores("user_agent", "Mozilla/5.0 (compatible; Googlebot/2.1)"));
        assert!(l.ignores("user_agent", "TelegramBot (like TwitterBot)"));
        assert!(l.ignores("domain", "www.cloudflare.com"));
        assert!(!l.ignores("domain", "notcloudflare.com"));
        assert!(!l.ignores("ip", "203.0.113.7"));
        assert!(!l.ignores("asn", "AS9198"));
        assert!(!l.ignores("user_agent", "python-requests/2.31"));
    }

    #[test]
    fn bad_lines_are_named() {
        let mut l = IgnoreList::default();
        let e = l
            .add("asn AS13335\nasn nope\nfoo bar\n\n# c\n10.0.0.0/8\n")
            .unwrap_err();
        assert_eq!(e.len(), 2);
        assert!(e[0].starts_with("line 2"));
        assert!(e[1].starts_with("line 3"));
        assert!(l.ignores("ip", "10.1.2.3"));
    }

    #[test]
    fn networks_are_24_and_48() {
        assert_eq!(
            net_of("ip", "203.0.113.7").as_deref(),
            Some("203.0.113.0/24")
        );
        assert_eq!(
            net_of("cidr", "203.0.113.128/25").as_deref(),
            Some("203.0.113.0/24")
        );
        assert_eq!(net_of("cidr", "203.0.0.0/16"), None);
        assert_eq!(
            net_of("ip", "2001:db8:1:2::1").as_deref(),
            Some("2001:db8:1::/48")
        );
    }

    #[test]
    fn scores_grow_with_evidence_and_stay_in_range() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<HashSet<_>>();
        let none = BTreeMap::new();
        let (a, _) = score_pair((&s(&["1"]), &s(&["2"])), (&s(&[]), &s(&[])), &none);
        assert_eq!(a, 0.0);
        let mut asn = BTreeMap::new();
        asn.insert("asn".to_string(), ["AS1".to_string()].into_iter().collect());
        let (b, _) = score_pair((&s(&[]), &s(&[])), (&s(&[]), &s(&[])), &asn);
        assert!(b < 0.5, "a shared AS alone is weak: {b}");
        let (c, ev) = score_pair(
            (&s(&["1", "2"]), &s(&["2", "3"])),
            (&s(&["n"]), &s(&["n"])),
            &asn,
        );
        assert!(c > 0.5 && c <= 1.0, "{c}");
        assert_eq!(ev["ip"]["shared"], 1);
    }

    #[test]
    fn union_find_respects_the_cap() {
        let mut g = Groups::new(4);
        assert!(g.union(0, 1, 3));
        assert!(g.union(1, 2, 3));
        assert!(!g.union(2, 3, 3));
        assert_ne!(g.find(3), g.find(0));
    }

    #[test]
    fn the_window_measures_the_gap() {
        let day = 86_400_000;
        assert!(near((0, day), (2 * day, 3 * day), 14 * day));
        assert!(!near((0, day), (20 * day, 21 * day), 14 * day));
        assert!(near((0, 30 * day), (10 * day, 11 * day), 0), "overlapping");
    }
}

/// The JSON API of campaigns (`/api/v1/campaigns…`).
pub mod api {
    use std::sync::Arc;

    use axum::Json;
    use axum::body::Bytes;
    use axum::extract::{Path, Query, State};
    use axum::response::{IntoResponse, Response};
    use serde::Deserialize;
    use serde_json::json;

    use super::{CampaignEdit, Decision, Params};
    use crate::Atlas;
    use crate::api::{Caller, parse_json};
    use crate::error::{Error, Result};

    #[derive(Debug, Deserialize)]
    pub struct ListQuery {
        pub status: Option<String>,
    }

    /// `GET /campaigns[?status=proposed|confirmed|rejected]`
    pub async fn list(
        State(a): State<Arc<Atlas>>,
        Caller(c): Caller,
        Query(q): Query<ListQuery>,
    ) -> Result<Response> {
        let items = a.db.campaigns(&c, q.status.as_deref()).await?;
        Ok(Json(json!({ "items": items })).into_response())
    }

    /// `GET /campaigns/{id}`
    pub async fn one(
        State(a): State<Arc<Atlas>>,
        Caller(c): Caller,
        Path(id): Path<String>,
    ) -> Result<Response> {
        Ok(Json(a.db.campaign(&c, &id).await?).into_response())
    }

    /// `POST /campaigns/{id}/decision` with `{"status": "confirmed" | "rejected"}`
    pub async fn decide(
        State(a): State<Arc<Atlas>>,
        Caller(c): Caller,
        Path(id): Path<String>,
        body: Bytes,
    ) -> Result<Response> {
        if !c.role.can_write() {
            return Err(Error::Forbidden);
        }
        let d: Decision = parse_json(&body)?;
        Ok(Json(a.db.decide_campaign(&c, &id, &d.status).await?).into_response())
    }

    /// `PATCH /campaigns/{id}` with `{"name": …, "description": …}` (either may be absent)
    pub async fn edit(
        State(a): State<Arc<Atlas>>,
        Caller(c): Caller,
        Path(id): Path<String>,
        body: Bytes,
    ) -> Result<Response> {
        if !c.role.can_write() {
            return Err(Error::Forbidden);
        }
        let e: CampaignEdit = parse_json(&body)?;
        Ok(Json(a.db.edit_campaign(&c, &id, &e).await?).into_response())
    }

    /// `POST /campaigns/recompute`: runs the correlation now (editors and admins).
    pub async fn recompute(State(a): State<Arc<Atlas>>, Caller(c): Caller) -> Result<Response> {
        if !c.role.can_write() {
            return Err(Error::Forbidden);
        }
        let s = a.db.recompute_campaigns(&Params::default()).await?;
        Ok(Json(s).into_response())
    }
}

/// Most `indicates` relationships exported per campaign.
pub const STIX_MAX_INDICATES: usize = 500;
/// Most campaigns one STIX bundle carries.
pub const STIX_MAX_CAMPAIGNS: i64 = 1_000;

/// A confirmed campaign as STIX 2.1 objects, for the members `keep` accepts (the export's
/// filter): the `campaign` (its UUID kept; first/last seen and marking from the caller's
/// visible members), `related-to` relationships incident → campaign (STIX suggests no
/// relationship for incidents), and `indicates` relationships from the shared indicators of
/// each kept member (the indicator objects the same bundle exports for that member's
/// sightings). Every object is marked with the strictest TLP of the visible members. Nothing
/// when no member is kept.
pub fn stix_objects(c: &Campaign, keep: impl Fn(&Member) -> bool) -> Vec<Value> {
    let kept: Vec<&Member> = c.members.iter().filter(|m| keep(m)).collect();
    if kept.is_empty() {
        return Vec::new();
    }
    let tlp = Tlp::parse(&c.tlp).unwrap_or(Tlp::Red);
    let marking = json!([tlp.stix_id()]);
    let id = format!("campaign--{}", c.id);
    let created = format_time(c.created_ms);
    let modified = format_time(c.updated_ms.max(c.created_ms));
    let mut out = vec![json!({
        "type": "campaign",
        "spec_version": "2.1",
        "id": id,
        "created": created,
        "modified": modified,
        "name": c.name,
        "description": if c.description.is_empty() {
            format!(
                "Attacks on {} outlets of the task force sharing indicators (score {:.2}), confirmed by an editor",
                c.members.iter().map(|m| m.outlet.as_str()).collect::<BTreeSet<_>>().len(),
                c.score
            )
        } else {
            c.description.clone()
        },
        "first_seen": format_time(c.first_ms),
        "last_seen": format_time(c.last_ms.max(c.first_ms)),
        "object_marking_refs": marking,
    })];
    let rel = |source: &str, ty: &str, parts: &[&str]| {
        json!({
            "type": "relationship",
            "spec_version": "2.1",
            "id": crate::stix::derived_id("relationship", parts),
            "created": created,
            "modified": modified,
            "relationship_type": ty,
            "source_ref": source,
            "target_ref": id,
            "object_marking_refs": marking,
        })
    };
    for m in &kept {
        let src = format!("incident--{}", m.id);
        out.push(rel(&src, "related-to", &[&c.id, &m.id, "campaign-member"]));
    }
    // Shared indicators, per kept member, each once.
    let mut done: BTreeSet<String> = BTreeSet::new();
    let by_id: HashMap<&str, &&Member> = kept.iter().map(|m| (m.id.as_str(), m)).collect();
    'links: for l in &c.links {
        let Value::Object(ev) = &l.evidence else {
            continue;
        };
        for (kind, v) in ev {
            let Some(k) = crate::model::IndicatorKind::parse(kind) else {
                continue; // `net24` is derived, not an indicator of either incident.
            };
            for value in v["values"].as_array().into_iter().flatten() {
                let Some(value) = value.as_str() else {
                    continue;
                };
                for member in [&l.a, &l.b] {
                    if !by_id.contains_key(member.as_str()) {
                        continue;
                    }
                    let ind = crate::stix::sighting_ids(member, k, value).indicator;
                    if done.insert(ind.clone()) {
                        out.push(rel(&ind, "indicates", &[&c.id, &ind, "campaign-indicator"]));
                        if done.len() >= STIX_MAX_INDICATES {
                            break 'links;
                        }
                    }
                }
            }
        }
    }
    out
}
