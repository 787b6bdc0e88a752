//! Verified good bots: search-engine crawlers and link-preview fetchers that are never
//! challenged, counted per family instead of per address, and served from the cache like
//! everyone else during an attack.
//!
//! A *family* (Googlebot, Bingbot, Telegram's preview fetcher…) is claimed by a substring of the
//! User-Agent and *verified* only by the client's address: it lies in the networks the family's
//! operator publishes (shipped in `crates/shield/data/goodbots/`, replaceable by fresher files
//! in `goodbots.ranges_dir`), or, when `goodbots.fcrdns` is on, its PTR name ends in one of the
//! family's domains and that name resolves back to the address. A user agent alone proves
//! nothing: an unverified claim is treated exactly like any other client (and counted).
//!
//! What this module must never do: let a user agent alone skip a challenge or a limit; make
//! the request path wait for DNS ([`fcrdns`] answers from a bounded cache and looks up in the
//! background); grow with the number of clients (families are capped at [`MAX_FAMILIES`],
//! metric labels come from the family files, never from requests).

pub mod fcrdns;
pub mod list;

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use aho_corasick::{AhoCorasick, Input, MatchKind};
use http::HeaderMap;
use qalqan_limits::RateSketch;
use qalqan_net::cidr::CidrSet;

use crate::state::{RouteState, Runtime, Shared};
use fcrdns::Fcrdns;
use list::FamilyList;

/// Families at most (built-in and `ranges_dir` together): each is two metric series.
pub const MAX_FAMILIES: usize = 32;
/// Families one user agent can claim at once (`TelegramBot (like TwitterBot)` claims two).
const MAX_CLAIMS: usize = 4;
/// Matches looked at per user agent, so a crafted one full of names costs a bounded scan.
const MAX_MATCHES: usize = 64;
/// `*.txt` files read from `ranges_dir` at most.
const MAX_DIR_FILES: usize = 64;

/// The shipped family files: the defaults, embedded so the binary needs no data directory.
pub(crate) const BUILTIN: [(&str, &str); 12] = [
    (
        "googlebot.txt",
        include_str!("../../data/goodbots/googlebot.txt"),
    ),
    (
        "google-fetchers.txt",
        include_str!("../../data/goodbots/google-fetchers.txt"),
    ),
    (
        "google-special.txt",
        include_str!("../../data/goodbots/google-special.txt"),
    ),
    (
        "bingbot.txt",
        include_str!("../../data/goodbots/bingbot.txt"),
    ),
    ("yandex.txt", include_str!("../../data/goodbots/yandex.txt")),
    (
        "applebot.txt",
        include_str!("../../data/goodbots/applebot.txt"),
    ),
    (
        "duckduckbot.txt",
        include_str!("../../data/goodbots/duckduckbot.txt"),
    ),
    (
        "telegram.txt",
        include_str!("../../data/goodbots/telegram.txt"),
    ),
    ("meta.txt", include_str!("../../data/goodbots/meta.txt")),
    (
        "twitter.txt",
        include_str!("../../data/goodbots/twitter.txt"),
    ),
    ("vk.txt", include_str!("../../data/goodbots/vk.txt")),
    (
        "linkedin.txt",
        include_str!("../../data/goodbots/linkedin.txt"),
    ),
];

/// One family, ready for lookups.
#[derive(Debug)]
pub struct Family {
    /// Name (a metric label).
    pub name: String,
    /// User-agent substrings that claim it.
    pub user_agents: Vec<String>,
    /// PTR-name suffixes for FCrDNS (lowercase, each starting with a dot).
    pub rdns: Vec<String>,
    /// Published networks.
    pub ranges: CidrSet,
}

/// Every family and one automaton that finds their user-agent substrings in one pass.
pub struct Families {
    families: Vec<Family>,
    matcher: Option<AhoCorasick>,
    /// Automaton pattern index → family index.
    pattern_family: Vec<u8>,
}

impl fmt::Debug for Families {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.families
                    .iter()
                    .map(|x| (x.name.as_str(), x.ranges.len(), x.rdns.len())),
            )
            .finish()
    }
}

impl Families {
    /// The built-in families, replaced or extended by the `*.txt` files in `dir`: a file whose
    /// `family` has a built-in name replaces that family whole; others are added. Returns every
    /// problem, each naming its file and line.
    pub fn load(dir: Option<&Path>) -> Result<Families, Vec<String>> {
        let mut lists: Vec<FamilyList> = Vec::new();
        let mut problems = Vec::new();
        for (file, text) in BUILTIN {
            match list::parse(text) {
                Ok(l) => lists.push(l),
                Err(errs) => problems.extend(errs.iter().map(|e| format!("built-in {file}: {e}"))),
            }
        }
        if let Some(dir) = dir {
            load_dir(dir, &mut lists, &mut problems);
        }
        if lists.len() > MAX_FAMILIES {
            problems.push(format!(
                "{} families; at most {MAX_FAMILIES} (each is a metric series)",
                lists.len()
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Families::from_lists(lists).map_err(|e| vec![e])
    }

    /// No family at all.
    pub fn empty() -> Families {
        Families {
            families: Vec::new(),
            matcher: None,
            pattern_family: Vec::new(),
        }
    }

    /// Builds the lookup structures from parsed lists.
    pub fn from_lists(lists: Vec<FamilyList>) -> Result<Families, String> {
        if lists.len() > MAX_FAMILIES {
            return Err(format!("at most {MAX_FAMILIES} families"));
        }
        let mut patterns = Vec::new();
        let mut pattern_family = Vec::new();
        let mut families = Vec::with_capacity(lists.len());
        for (i, l) in lists.into_iter().enumerate() {
            for ua in &l.user_agents {
                patterns.push(ua.clone());
                pattern_family.push(i as u8);
            }
            families.push(Family {
                name: l.name,
                user_agents: l.user_agents,
                rdns: l.rdns,
                ranges: CidrSet::from_nets(l.ranges),
            });
        }
        let matcher = if patterns.is_empty() {
            None
        } else {
            // Standard semantics so that overlapping matches can be listed: one user agent may
            // name several families and any of them may be the one its address proves.
            Some(
                AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::Standard)
                    .build(&patterns)
                    .map_err(|e| format!("user-agent substrings: {e}"))?,
            )
        };
        Ok(Families {
            families,
            matcher,
            pattern_family,
        })
    }

    /// The families a user agent claims, in order of first appearance (at most four).
    pub fn claims(&self, ua: &[u8]) -> Claims {
        let mut c = Claims::default();
        let Some(m) = &self.matcher else { return c };
        let Ok(iter) = m.try_find_overlapping_iter(Input::new(ua)) else {
            return c;
        };
        for mat in iter.take(MAX_MATCHES) {
            if let Some(&f) = self.pattern_family.get(mat.pattern().as_usize()) {
                c.add(f);
                if c.len() == MAX_CLAIMS {
                    break;
                }
            }
        }
        c
    }

    /// The family at `i`.
    pub fn get(&self, i: usize) -> Option<&Family> {
        self.families.get(i)
    }

    /// Number of families.
    pub fn len(&self) -> usize {
        self.families.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.families.is_empty()
    }

    /// The index of the family called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.families.iter().position(|f| f.name == name)
    }
}

/// Reads `dir/*.txt` into `lists` (replacing families of the same name).
fn load_dir(dir: &Path, lists: &mut Vec<FamilyList>, problems: &mut Vec<String>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(format!("cannot read directory {}: {e}", dir.display()));
            return;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .take(MAX_DIR_FILES + 1)
        .collect();
    if files.len() > MAX_DIR_FILES {
        problems.push(format!(
            "{} has more than {MAX_DIR_FILES} .txt files",
            dir.display()
        ));
        return;
    }
    files.sort();
    let mut seen = BTreeSet::new();
    for path in files {
        let text = match read_bounded(&path) {
            Ok(t) => t,
            Err(m) => {
                problems.push(format!("{}: {m}", path.display()));
                continue;
            }
        };
        match list::parse(&text) {
            Ok(l) => {
                if !seen.insert(l.name.clone()) {
                    problems.push(format!(
                        "{}: family `{}` is also defined by another file",
                        path.display(),
                        l.name
                    ));
                } else if let Some(slot) = lists.iter_mut().find(|b| b.name == l.name) {
                    *slot = l;
                } else {
                    lists.push(l);
                }
            }
            Err(errs) => {
                problems.extend(errs.iter().map(|e| format!("{}: {e}", path.display())));
            }
        }
    }
}

/// A file's text, refusing files over [`list::MAX_FILE_BYTES`] without reading them whole.
fn read_bounded(path: &Path) -> Result<String, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    f.take(list::MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() > list::MAX_FILE_BYTES {
        return Err(format!("larger than {} bytes", list::MAX_FILE_BYTES));
    }
    String::from_utf8(buf).map_err(|_| "not UTF-8 text".to_string())
}

/// The families a user agent claims: a small set of family indices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    ids: [u8; MAX_CLAIMS],
    n: u8,
}

impl Claims {
    fn add(&mut self, f: u8) {
        let n = self.n as usize;
        if n < MAX_CLAIMS && !self.ids[..n].contains(&f) {
            self.ids[n] = f;
            self.n += 1;
        }
    }

    /// Number of families claimed.
    pub fn len(&self) -> usize {
        self.n as usize
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Family indices, in order of first appearance in the user agent.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.ids[..self.len()].iter().map(|&f| usize::from(f))
    }
}

/// `[goodbots]`, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Verify and exempt good bots at all.
    pub enabled: bool,
    /// Also verify by forward-confirmed reverse DNS (background lookups).
    pub fcrdns: bool,
    /// Requests per second all verified clients of one family may make together.
    pub rate_per_family: u32,
    /// Where fresher family files were read from.
    pub ranges_dir: Option<PathBuf>,
    /// The families.
    pub families: Arc<Families>,
}

/// A client whose user agent claims a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bot {
    /// The family (the verifying one, or the first claimed when none verified).
    pub family: usize,
    /// Whether the address proved the claim.
    pub verified: bool,
}

/// The good-bot state of one runtime: the families, a request rate per family, and counters.
pub struct GoodBots {
    settings: Settings,
    /// `[unverified, verified]` requests per family.
    counts: Box<[[AtomicU64; 2]]>,
    /// Verified requests refused over the family's rate.
    limited: Box<[AtomicU64]>,
    /// One exact counter per family (a one-key sketch: no collisions).
    rates: Box<[RateSketch]>,
}

impl GoodBots {
    /// State for `settings`; memory is fixed here (a few hundred bytes per family).
    pub fn new(settings: &Settings) -> Self {
        let n = settings.families.len();
        GoodBots {
            settings: settings.clone(),
            counts: (0..n).map(|_| Default::default()).collect(),
            limited: (0..n).map(|_| AtomicU64::new(0)).collect(),
            rates: (0..n).map(|_| RateSketch::new(1000, 1, 64)).collect(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Which family `ua` claims and whether `client` proves it; `None` when it claims none.
    /// Counts the request either way.
    pub fn check(&self, ua: &[u8], client: IpAddr, dns: &Fcrdns) -> Option<Bot> {
        let fams = &self.settings.families;
        let claims = fams.claims(ua);
        let first = claims.iter().next()?;
        let bot = match self.verify(&claims, client, dns) {
            Some(family) => Bot {
                family,
                verified: true,
            },
            None => Bot {
                family: first,
                verified: false,
            },
        };
        if let Some(c) = self.counts.get(bot.family) {
            c[usize::from(bot.verified)].fetch_add(1, Relaxed);
        }
        Some(bot)
    }

    fn verify(&self, claims: &Claims, client: IpAddr, dns: &Fcrdns) -> Option<usize> {
        let fams = &self.settings.families;
        let claimed = || claims.iter().filter_map(|i| fams.get(i).map(|f| (i, f)));
        if let Some((i, _)) = claimed().find(|(_, f)| f.ranges.contains(client)) {
            return Some(i);
        }
        if !self.settings.fcrdns || !claimed().any(|(_, f)| !f.rdns.is_empty()) {
            return None;
        }
        // Never waits: an address not looked up yet is unverified now and looked up in the
        // background for the next request.
        let name = dns.confirmed_name(client)?;
        claimed()
            .find(|(_, f)| fcrdns::suffix_matches(&name, &f.rdns))
            .map(|(i, _)| i)
    }

    /// Counts one request of a verified bot against its family's rate; `true` when over it.
    pub fn over_limit(&self, bot: Bot, now_ms: u64) -> bool {
        let Some(rate) = self.rates.get(bot.family) else {
            return false;
        };
        let over = rate.observe(0, now_ms) > f64::from(self.settings.rate_per_family);
        if over && let Some(l) = self.limited.get(bot.family) {
            l.fetch_add(1, Relaxed);
        }
        over
    }

    /// Requests counted for a family: `(unverified, verified)`.
    pub fn counts(&self, name: &str) -> Option<(u64, u64)> {
        let i = self.settings.families.index_of(name)?;
        let c = self.counts.get(i)?;
        Some((c[0].load(Relaxed), c[1].load(Relaxed)))
    }

    /// Bytes of the per-family counters (fixed).
    pub fn memory_bytes(&self) -> usize {
        self.rates.iter().map(RateSketch::memory_bytes).sum()
    }

    /// Appends this state's metrics in the Prometheus text format.
    pub fn render(&self, o: &mut String) {
        use std::fmt::Write as _;
        let fams = &self.settings.families;
        o.push_str(
            "# HELP qalqan_shield_goodbot_requests_total Requests whose user agent claims a good-bot family, by whether the client address proved the claim.\n# TYPE qalqan_shield_goodbot_requests_total counter\n",
        );
        for (i, c) in self.counts.iter().enumerate() {
            let Some(f) = fams.get(i) else { continue };
            for (v, label) in [(1, "true"), (0, "false")] {
                let _ = writeln!(
                    o,
                    "qalqan_shield_goodbot_requests_total{{family=\"{}\",verified=\"{label}\"}} {}",
                    f.name,
                    c[v].load(Relaxed)
                );
            }
        }
        o.push_str(
            "# HELP qalqan_shield_goodbot_limited_total Verified good-bot requests refused over their family's rate.\n# TYPE qalqan_shield_goodbot_limited_total counter\n",
        );
        for (i, l) in self.limited.iter().enumerate() {
            let Some(f) = fams.get(i) else { continue };
            let _ = writeln!(
                o,
                "qalqan_shield_goodbot_limited_total{{family=\"{}\"}} {}",
                f.name,
                l.load(Relaxed)
            );
        }
    }
}

/// The good-bot verdict for one request, or `None` when it does not matter or claims nothing.
///
/// The user agent is scanned only when a decision can depend on it: the feature is on and the
/// route has a rate limit or wants a challenge now.
pub fn identify(
    shared: &Shared,
    rt: &Runtime,
    route: &RouteState,
    wants_challenge: bool,
    client: IpAddr,
    headers: &HeaderMap,
) -> Option<Bot> {
    let g = &rt.goodbots;
    if !g.settings.enabled {
        return None;
    }
    let c = &route.cfg;
    if !wants_challenge && c.rate_per_address == 0 && c.rate_per_prefix == 0 {
        return None;
    }
    let ua = crate::lookup::first(headers, &http::header::USER_AGENT)?;
    g.check(ua.as_bytes(), client, &shared.fcrdns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> Families {
        Families::load(None).expect("built-in families load")
    }

    fn settings(fcrdns: bool) -> Settings {
        Settings {
            enabled: true,
            fcrdns,
            rate_per_family: 3,
            ranges_dir: None,
            families: Arc::new(builtin()),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn user_agents_claim_families_ignoring_case() {
        let f = builtin();
        let name = |ua: &str| {
            f.claims(ua.as_bytes())
                .iter()
                .map(|i| f.get(i).unwrap().name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            name("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
            ["googlebot"]
        );
        assert_eq!(
            name("TelegramBot (like TwitterBot)"),
            ["telegram", "twitter"]
        );
        assert_eq!(name("mozilla/5.0 (compatible; bingbot/2.0)"), ["bingbot"]);
        assert_eq!(
            name("Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)"),
            ["yandex"]
        );
        assert!(name("Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0").is_empty());
        assert!(name("").is_empty());
    }

    #[test]
    fn a_crafted_user_agent_full_of_names_costs_a_bounded_scan() {
        let f = builtin();
        let ua = "Googlebot bingbot TelegramBot Twitterbot vkShare Applebot ".repeat(500);
        assert_eq!(f.claims(ua.as_bytes()).len(), MAX_CLAIMS);
    }

    #[test]
    fn only_an_address_in_the_family_ranges_verifies() {
        let g = GoodBots::new(&settings(false));
        let dns = Fcrdns::disabled();
        let ua = b"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
        let real = g.check(ua, ip("66.249.66.1"), &dns).unwrap();
        assert!(real.verified);
        let fake = g.check(ua, ip("203.0.113.7"), &dns).unwrap();
        assert!(!fake.verified);
        assert_eq!(real.family, fake.family);
        // A Bing address does not prove a Googlebot claim.
        assert!(!g.check(ua, ip("157.55.39.1"), &dns).unwrap().verified);
        // Telegram's preview also names TwitterBot; Telegram's address proves the claim.
        let tg = g
            .check(b"TelegramBot (like TwitterBot)", ip("149.154.161.5"), &dns)
            .unwrap();
        assert!(tg.verified);
        assert_eq!(g.settings.families.get(tg.family).unwrap().name, "telegram");
        assert!(g.check(b"curl/8.0", ip("66.249.66.1"), &dns).is_none());
        assert_eq!(g.counts("googlebot"), Some((2, 1)));
        assert_eq!(g.counts("telegram"), Some((0, 1)));
    }

    #[test]
    fn ipv6_and_mapped_addresses_verify_too() {
        let g = GoodBots::new(&settings(false));
        let dns = Fcrdns::disabled();
        let ua = b"Googlebot/2.1";
        assert!(
            g.check(ua, ip("2001:4860:4801:10::1"), &dns)
                .unwrap()
                .verified
        );
        assert!(
            g.check(ua, ip("::ffff:66.249.66.1"), &dns)
                .unwrap()
                .verified
        );
    }

    #[test]
    fn the_family_rate_is_shared_by_all_its_addresses() {
        let g = GoodBots::new(&settings(false));
        let bot = Bot {
            family: 0,
            verified: true,
        };
        let now = qalqan_limits::now_ms();
        let over: Vec<bool> = (0..5).map(|_| g.over_limit(bot, now)).collect();
        assert_eq!(over, [false, false, false, true, true]);
        let other = Bot {
            family: 1,
            verified: true,
        };
        assert!(!g.over_limit(other, now), "families are counted apart");
    }

    #[test]
    fn a_directory_file_replaces_a_builtin_family_and_adds_new_ones() {
        let dir = std::env::temp_dir().join(format!("qalqan-goodbots-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("googlebot.txt"),
            "family googlebot\nua Googlebot\n192.0.2.0/24\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("example.txt"),
            "family examplebot\nua ExampleBot\n198.51.100.0/24\n",
        )
        .unwrap();
        std::fs::write(dir.join("ignored.md"), "not a family").unwrap();
        let f = Families::load(Some(&dir)).expect("loads");
        assert_eq!(f.len(), BUILTIN.len() + 1);
        let g = f.get(f.index_of("googlebot").unwrap()).unwrap();
        assert!(g.ranges.contains(ip("192.0.2.9")));
        assert!(!g.ranges.contains(ip("66.249.66.1")), "replaced whole");
        std::fs::write(
            dir.join("broken.txt"),
            "family broken\nua BrokenBot\n10.0.0.1/8\n",
        )
        .unwrap();
        let errs = Families::load(Some(&dir)).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("broken.txt: line 3"), "{errs:?}");
        let _ = std::fs::remove_dir_all(&dir);
        let errs = Families::load(Some(&dir)).unwrap_err();
        assert!(errs[0].contains("cannot read directory"), "{errs:?}");
    }

    #[test]
    fn metrics_name_every_family_twice() {
        let g = GoodBots::new(&settings(false));
        let mut o = String::new();
        g.render(&mut o);
        let series = o
            .lines()
            .filter(|l| l.starts_with("qalqan_shield_goodbot_requests_total{"))
            .count();
        assert_eq!(series, 2 * BUILTIN.len());
    }
}
