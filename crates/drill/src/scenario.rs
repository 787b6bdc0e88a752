//! Scenario files: who visits the target during a drill, in TOML.
//!
//! A scenario has three phases (`warmup`: readers only, not measured, so caches fill and the
//! shield's detector learns what normal looks like; `baseline`: readers only, measured; `attack`:
//! readers plus attackers, measured), reader populations that behave like browsers, and attacker
//! populations: `flood` (a fixed request rate over many source addresses, fixed or random
//! queries, optionally keeping cookies or solving challenges like a headless browser) and `slow`
//! (slowloris: connections that send their request head a line at a time and never finish).
//!
//! Every mistake in a file is reported with its key path (`attackers[1].rate: …`), all at once.
//! The built-in scenarios (`kursiv`, `slowloris`) are files in `crates/drill/scenarios/` and go
//! through the same parser.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The hard ceilings of any run, whatever a file asks for: a rehearsal, not a weapon.
pub const MAX_SECONDS: u64 = 3600;
pub const MAX_REQUESTS: u64 = 20_000_000;
pub const MAX_RATE: f64 = 100_000.0;
pub const MAX_SLOW_CONNECTIONS: u32 = 20_000;
pub const MAX_READERS: u32 = 10_000;
pub const MAX_ADDRESSES: u32 = 3_000_000;

const KURSIV: &str = include_str!("../scenarios/kursiv.toml");
const SLOWLORIS: &str = include_str!("../scenarios/slowloris.toml");

/// The built-in scenarios by name.
pub const BUILT_IN: [(&str, &str); 2] = [("kursiv", KURSIV), ("slowloris", SLOWLORIS)];

/// A whole scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub run: RunSpec,
    #[serde(default)]
    pub readers: Vec<Readers>,
    #[serde(default)]
    pub attackers: Vec<Attackers>,
}

/// How the generator names its clients to the target.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Every client's address in `X-Forwarded-For`, over connections from 127.0.0.1: for a
    /// target that trusts the generator as a proxy (`trusted_proxies = ["127.0.0.0/8"]`).
    #[default]
    Forwarded,
    /// Every client connects from its own address in 127.0.0.0/8 (the socket is bound to it),
    /// so the target sees distinct peers without trusting any header.
    Addresses,
}

/// Phases, bounds and the seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Seconds of readers only before the baseline (not measured).
    #[serde(default)]
    pub warmup: u64,
    /// Seconds of readers only, measured.
    pub baseline: u64,
    /// Seconds of readers plus attackers, measured.
    pub attack: u64,
    /// Seconds one page view (with any challenge) or one attack request may take.
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// Seed of every random choice: the same file and seed give the same requests.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Requests sent at most over the whole run; beyond it nothing more is sent.
    #[serde(default = "default_max_requests")]
    pub max_requests: u64,
    #[serde(default)]
    pub source: Source,
}

fn default_timeout() -> u64 {
    10
}
fn default_seed() -> u64 {
    1
}
fn default_max_requests() -> u64 {
    2_000_000
}

/// A population of readers: each has its own address, user agent and cookie jar, reads
/// articles (Zipf popularity) and searches, and solves challenges like a browser running the
/// page's script.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Readers {
    pub name: String,
    /// Readers in the population.
    pub count: u32,
    /// Page views per second of the whole population (think time = count / rate on average).
    pub rate: f64,
    /// Share of views that are searches.
    #[serde(default = "default_search_share")]
    pub search_share: f64,
    /// Articles on the site (`/article/1` … `/article/N`).
    #[serde(default = "default_articles")]
    pub articles: u32,
    /// What readers search for; the built-in list of Russian and Kazakh queries when empty.
    #[serde(default)]
    pub queries: Vec<String>,
    /// Keep cookies between views, as a browser does.
    #[serde(default = "yes")]
    pub cookies: bool,
    /// Solve the shield's proof-of-work challenge, as a browser with JavaScript does.
    #[serde(default = "yes")]
    pub solve_challenges: bool,
}

fn default_search_share() -> f64 {
    0.2
}
fn default_articles() -> u32 {
    500
}
fn yes() -> bool {
    true
}

/// What an attacker population does.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AttackKind {
    /// Requests at a fixed rate.
    Flood,
    /// Slowloris: connections that trickle their request head and never finish it.
    Slow,
}

/// Where an attacker population's addresses are.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Networks {
    /// Networks of their own, far from the readers' (a botnet abroad): each address in its own
    /// /24 of 20.0.0.0–79.255.255.255 (forwarded) or 127.64.0.0/10 (bound).
    #[default]
    Own,
    /// Inside the readers' own /16 (a farm on the same access network): 95.56.0.0/16
    /// (forwarded) or 127.16.0.0/16 (bound), never a reader's address; at most 12,800 distinct
    /// addresses per population.
    Readers,
}

/// A population of attackers, active in the attack phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attackers {
    pub name: String,
    pub kind: AttackKind,
    /// flood: requests per second.
    #[serde(default)]
    pub rate: f64,
    /// flood: the path asked for.
    #[serde(default = "default_path")]
    pub path: String,
    /// flood: the query parameter carrying the search words ("" for none).
    #[serde(default = "default_param")]
    pub param: String,
    /// flood: queries repeated by the flood ("number one" at Kursiv).
    #[serde(default)]
    pub fixed_queries: Vec<String>,
    /// flood: share of requests that use a fixed query; the rest are random words no cache
    /// can answer.
    #[serde(default)]
    pub fixed_share: f64,
    /// Distinct source addresses (each in its own /24).
    #[serde(default = "default_addresses")]
    pub addresses: u32,
    /// Where the addresses are: "own" networks (default) or the "readers"' networks.
    #[serde(default)]
    pub networks: Networks,
    /// flood: further addresses that solve challenges and keep the clearance (headless
    /// browsers). They share one solver, as a farm on a small machine would.
    #[serde(default)]
    pub solving_addresses: u32,
    /// flood: requests in flight at most; beyond it a request is skipped and counted.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// slow: connections held open.
    #[serde(default)]
    pub connections: u32,
    /// slow: seconds between two header lines.
    #[serde(default = "default_interval")]
    pub interval: u64,
}

fn default_path() -> String {
    "/search".into()
}
fn default_param() -> String {
    "q".into()
}
fn default_addresses() -> u32 {
    1000
}
fn default_concurrency() -> u32 {
    1024
}
fn default_interval() -> u64 {
    5
}

/// One problem in a scenario, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

/// Everything wrong with a scenario.
#[derive(Debug, Clone)]
pub struct ScenarioError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", p.path, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ScenarioError {}

fn one(path: &str, message: impl Into<String>) -> ScenarioError {
    ScenarioError {
        problems: vec![Problem {
            path: path.into(),
            message: message.into(),
        }],
    }
}

impl Scenario {
    /// A built-in scenario by name.
    pub fn built_in(name: &str) -> Option<Scenario> {
        BUILT_IN
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, text)| Scenario::from_toml(text).ok())
    }

    /// Parses and checks a scenario file's text.
    pub fn from_toml(text: &str) -> Result<Scenario, ScenarioError> {
        let value: toml::Value = text
            .parse::<toml::Table>()
            .map(toml::Value::Table)
            .map_err(|e| one("(file)", e.to_string().trim().to_string()))?;
        let sc: Scenario = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { "(file)".into() } else { path };
            one(&path, e.into_inner().to_string())
        })?;
        sc.check()?;
        Ok(sc)
    }

    /// Every semantic problem at once.
    pub fn check(&self) -> Result<(), ScenarioError> {
        let mut p = Vec::new();
        let mut bad = |path: String, message: &str| {
            p.push(Problem {
                path,
                message: message.into(),
            })
        };
        if self.name.trim().is_empty() || self.name.len() > 100 {
            bad("name".into(), "must be 1 to 100 characters");
        }
        let r = &self.run;
        if r.baseline == 0 {
            bad("run.baseline".into(), "must be at least 1 second");
        }
        if r.attack == 0 {
            bad("run.attack".into(), "must be at least 1 second");
        }
        if r.warmup.saturating_add(r.baseline).saturating_add(r.attack) > MAX_SECONDS {
            bad(
                "run".into(),
                "warmup + baseline + attack must be at most 3600 seconds",
            );
        }
        if !(1..=120).contains(&r.timeout) {
            bad("run.timeout".into(), "must be 1 to 120 seconds");
        }
        if r.max_requests == 0 || r.max_requests > MAX_REQUESTS {
            bad("run.max_requests".into(), "must be 1 to 20000000");
        }
        if self.readers.is_empty() && self.attackers.is_empty() {
            bad(
                "(file)".into(),
                "needs at least one [[readers]] or [[attackers]]",
            );
        }
        let total_readers: u64 = self.readers.iter().map(|x| u64::from(x.count)).sum();
        if total_readers > u64::from(MAX_READERS) {
            bad("readers".into(), "at most 10000 readers in all");
        }
        for (i, x) in self.readers.iter().enumerate() {
            let k = |f: &str| format!("readers[{i}].{f}");
            if x.name.trim().is_empty() {
                bad(k("name"), "must not be empty");
            }
            if x.count == 0 {
                bad(k("count"), "must be at least 1");
            }
            if !(x.rate > 0.0 && x.rate <= 10_000.0) {
                bad(k("rate"), "must be more than 0 and at most 10000 views/s");
            }
            if !(0.0..=1.0).contains(&x.search_share) {
                bad(k("search_share"), "must be between 0 and 1");
            }
            if !(1..=1_000_000).contains(&x.articles) {
                bad(k("articles"), "must be 1 to 1000000");
            }
            if x.queries.len() > 10_000 || x.queries.iter().any(|q| q.is_empty() || q.len() > 200) {
                bad(k("queries"), "at most 10000 queries of 1 to 200 bytes");
            }
        }
        for (i, a) in self.attackers.iter().enumerate() {
            let k = |f: &str| format!("attackers[{i}].{f}");
            if a.name.trim().is_empty() {
                bad(k("name"), "must not be empty");
            }
            if a.addresses == 0 || a.addresses > MAX_ADDRESSES {
                bad(k("addresses"), "must be 1 to 3000000");
            }
            match a.kind {
                AttackKind::Flood => {
                    if !(a.rate > 0.0 && a.rate <= MAX_RATE) {
                        bad(
                            k("rate"),
                            "must be more than 0 and at most 100000 requests/s",
                        );
                    }
                    if !a.path.starts_with('/') || a.path.contains(['?', '#', ' ']) {
                        bad(k("path"), "must be a path starting with / without ? or #");
                    }
                    if a.param.len() > 64
                        || !a
                            .param
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                    {
                        bad(k("param"), "must be a plain parameter name");
                    }
                    if !(0.0..=1.0).contains(&a.fixed_share) {
                        bad(k("fixed_share"), "must be between 0 and 1");
                    }
                    if a.fixed_share > 0.0 && a.fixed_queries.is_empty() {
                        bad(k("fixed_queries"), "needed when fixed_share is above 0");
                    }
                    if a.fixed_queries
                        .iter()
                        .any(|q| q.is_empty() || q.len() > 200)
                    {
                        bad(k("fixed_queries"), "each query 1 to 200 bytes");
                    }
                    if a.solving_addresses > 100_000 {
                        bad(k("solving_addresses"), "at most 100000");
                    }
                    if !(1..=10_000).contains(&a.concurrency) {
                        bad(k("concurrency"), "must be 1 to 10000");
                    }
                    if a.connections != 0 {
                        bad(k("connections"), "only for kind = \"slow\"");
                    }
                }
                AttackKind::Slow => {
                    if a.connections == 0 || a.connections > MAX_SLOW_CONNECTIONS {
                        bad(k("connections"), "must be 1 to 20000");
                    }
                    if !(1..=600).contains(&a.interval) {
                        bad(k("interval"), "must be 1 to 600 seconds");
                    }
                    if a.rate != 0.0 {
                        bad(k("rate"), "only for kind = \"flood\"");
                    }
                }
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ScenarioError { problems: p })
        }
    }

    /// Seconds of the whole run.
    pub fn seconds(&self) -> u64 {
        self.run.warmup + self.run.baseline + self.run.attack
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_parse() {
        for (name, text) in BUILT_IN {
            let s = Scenario::from_toml(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(s.name, name);
        }
        let k = Scenario::built_in("kursiv").unwrap();
        assert_eq!(k.attackers[0].rate, 2000.0);
        assert_eq!(k.attackers[0].kind, AttackKind::Flood);
        assert!(Scenario::built_in("nope").is_none());
    }

    #[test]
    fn errors_name_their_keys() {
        let e = Scenario::from_toml(
            "name = \"x\"\n[run]\nbaseline = 1\nattack = 1\n[[attackers]]\nname = \"a\"\nkind = \"flood\"\nrate = \"fast\"\n",
        )
        .unwrap_err();
        assert_eq!(e.problems[0].path, "attackers[0].rate", "{e}");

        let e = Scenario::from_toml(
            "name = \"x\"\n[run]\nbaseline = 1\nattack = 1\n[[readers]]\nname = \"r\"\ncount = 1\nrate = 1\nspeed = 3\n",
        )
        .unwrap_err();
        assert!(e.problems[0].path.starts_with("readers[0]"), "{e}");
        assert!(e.to_string().contains("speed"), "{e}");

        let e = Scenario::from_toml(
            "name = \"x\"\n[run]\nbaseline = 0\nattack = 4000\n[[readers]]\nname = \"r\"\ncount = 0\nrate = -1\n\
[[attackers]]\nname = \"s\"\nkind = \"slow\"\nconnections = 0\n",
        )
        .unwrap_err();
        let paths: Vec<&str> = e.problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "run.baseline",
            "run",
            "readers[0].count",
            "readers[0].rate",
            "attackers[0].connections",
        ] {
            assert!(paths.contains(&want), "{want} missing in {paths:?}");
        }

        let e = Scenario::from_toml("name = \"x\"\n[run\n").unwrap_err();
        assert_eq!(e.problems[0].path, "(file)");
        assert!(e.to_string().contains("line"), "{e}");
    }
}
