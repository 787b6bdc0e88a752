//! Attack episodes: a bounded summary of one attack, kept as evidence.

use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use crate::space_saving::{HeavyHitter, Key, SpaceSaving};

/// Longest user agent, path or query string kept, in bytes; longer ones are cut (on a
/// character boundary), so a flood of huge random headers costs no more memory.
pub const MAX_KEY_BYTES: usize = 256;
/// Longest sampled request line kept, in bytes.
pub const MAX_LINE_BYTES: usize = 512;
/// Most distinct decision names counted; later names are counted as `"other"`.
pub const MAX_DECISIONS: usize = 16;

/// Size of an [`Episode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EpisodeLimits {
    /// Counters per heavy-hitter dimension (default 64).
    pub heavy_hitters: usize,
    /// Request lines kept in the sample (default 100).
    pub sample_lines: usize,
}

impl Default for EpisodeLimits {
    fn default() -> Self {
        Self {
            heavy_hitters: 64,
            sample_lines: 100,
        }
    }
}

/// What the shield knows about one request, borrowed for the duration of
/// [`Episode::observe`].
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The client address (after trusted-proxy resolution).
    pub addr: IpAddr,
    /// The client's autonomous system, if known.
    pub asn: Option<u32>,
    /// The client's country (ISO 3166-1 alpha-2, upper case), if known.
    pub country: Option<[u8; 2]>,
    /// The request method.
    pub method: &'a str,
    /// The path, without the query string.
    pub path: &'a str,
    /// The query string without `?`; empty when there is none.
    pub query: &'a str,
    /// The `User-Agent` header; empty when absent.
    pub user_agent: &'a str,
    /// What the shield did with the request (`"pass"`, `"cache"`, `"challenge"`,
    /// `"block"`, …).
    pub decision: &'static str,
}

/// One attack as the shield saw it: from entering elevated to returning to normal.
///
/// Memory is fixed by [`EpisodeLimits`] at construction: heavy hitters per dimension
/// ([`SpaceSaving`]), a reservoir sample of request lines, and at most
/// [`MAX_DECISIONS`] decision counters. Strings are cut to [`MAX_KEY_BYTES`] and
/// [`MAX_LINE_BYTES`]. A flood from a million addresses yields an episode the same
/// size as one from three.
///
/// Serialises to one JSON object (the shield writes one per line); addresses and
/// prefixes are written as text (`"198.51.100.0/24"`).
#[derive(Debug, Clone)]
pub struct Episode {
    start_ms: u64,
    end_ms: Option<u64>,
    peak_rps: u64,
    peak_at_ms: u64,
    total_requests: u64,
    decisions: Vec<(&'static str, u64)>,
    /// IPv4 addresses are stored IPv4-mapped, so both families share one summary.
    addresses: SpaceSaving<u128>,
    ipv4_24: SpaceSaving<u32>,
    ipv6_64: SpaceSaving<u64>,
    asns: SpaceSaving<u32>,
    countries: SpaceSaving<[u8; 2]>,
    user_agents: SpaceSaving<String>,
    paths: SpaceSaving<String>,
    queries: SpaceSaving<String>,
    sample_lines: usize,
    samples: Vec<String>,
}

impl Episode {
    /// An episode that started at `start_ms` (caller's clock), with default limits.
    pub fn new(start_ms: u64) -> Self {
        Self::with_limits(start_ms, EpisodeLimits::default())
    }

    /// An episode with explicit limits.
    pub fn with_limits(start_ms: u64, limits: EpisodeLimits) -> Self {
        let k = limits.heavy_hitters;
        Self {
            start_ms,
            end_ms: None,
            peak_rps: 0,
            peak_at_ms: start_ms,
            total_requests: 0,
            decisions: Vec::with_capacity(MAX_DECISIONS),
            addresses: SpaceSaving::new(k),
            ipv4_24: SpaceSaving::new(k),
            ipv6_64: SpaceSaving::new(k),
            asns: SpaceSaving::new(k),
            countries: SpaceSaving::new(k),
            user_agents: SpaceSaving::new(k),
            paths: SpaceSaving::new(k),
            queries: SpaceSaving::new(k),
            sample_lines: limits.sample_lines,
            samples: Vec::with_capacity(limits.sample_lines),
        }
    }

    /// Counts one request in every dimension, and maybe keeps its line in the sample.
    ///
    /// `random` must be a fresh uniformly random number per call (the caller's RNG;
    /// tests pass a deterministic sequence). The request line is formatted only when
    /// it enters the sample, so this allocates only for new heavy-hitter keys and
    /// sampled lines.
    pub fn observe(&mut self, req: &Request<'_>, random: u64) {
        self.total_requests = self.total_requests.saturating_add(1);
        self.count_decision(req.decision);

        let addr = match req.addr {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        self.addresses.observe(&addr.to_bits());
        match req.addr.to_canonical() {
            IpAddr::V4(v4) => self.ipv4_24.observe(&(v4.to_bits() & 0xffff_ff00)),
            IpAddr::V6(v6) => self.ipv6_64.observe(&((v6.to_bits() >> 64) as u64)),
        }
        if let Some(asn) = req.asn {
            self.asns.observe(&asn);
        }
        if let Some(country) = req.country {
            self.countries.observe(&country);
        }
        self.user_agents.observe(cap(req.user_agent, MAX_KEY_BYTES));
        self.paths.observe(cap(req.path, MAX_KEY_BYTES));
        if !req.query.is_empty() {
            self.queries.observe(cap(req.query, MAX_KEY_BYTES));
        }

        // Reservoir sampling (Algorithm R): after n requests every one of them is in
        // the sample with probability sample_lines / n.
        let seen = self.total_requests;
        let slot = if self.samples.len() < self.sample_lines {
            Some(self.samples.len())
        } else {
            let j = random % seen;
            (j < self.sample_lines as u64).then_some(j as usize)
        };
        if let Some(slot) = slot {
            let line = request_line(req);
            if slot == self.samples.len() {
                self.samples.push(line);
            } else {
                self.samples[slot] = line;
            }
        }
    }

    /// Records the request rate of one second (the same number given to
    /// [`Detector::tick`](crate::Detector::tick)) for the peak.
    pub fn record_second(&mut self, now_ms: u64, requests: u64) {
        if requests > self.peak_rps {
            self.peak_rps = requests;
            self.peak_at_ms = now_ms;
        }
    }

    /// Marks the episode as over.
    pub fn finish(&mut self, end_ms: u64) {
        self.end_ms = Some(end_ms);
    }

    /// When the episode started.
    pub fn start_ms(&self) -> u64 {
        self.start_ms
    }

    /// When it ended, if it did.
    pub fn end_ms(&self) -> Option<u64> {
        self.end_ms
    }

    /// The highest per-second request count recorded.
    pub fn peak_rps(&self) -> u64 {
        self.peak_rps
    }

    /// Requests observed.
    pub fn total_requests(&self) -> u64 {
        self.total_requests
    }

    /// Requests per decision name.
    pub fn decisions(&self) -> &[(&'static str, u64)] {
        &self.decisions
    }

    /// The most frequent client addresses.
    pub fn top_addresses(&self, n: usize) -> Vec<HeavyHitter<IpAddr>> {
        map_keys(&self.addresses, n, |bits| {
            Ipv6Addr::from_bits(bits).to_canonical()
        })
    }

    /// The most frequent IPv4 /24 networks (the network address).
    pub fn top_ipv4_24(&self, n: usize) -> Vec<HeavyHitter<Ipv4Addr>> {
        map_keys(&self.ipv4_24, n, Ipv4Addr::from_bits)
    }

    /// The most frequent IPv6 /64 networks (the network address).
    pub fn top_ipv6_64(&self, n: usize) -> Vec<HeavyHitter<Ipv6Addr>> {
        map_keys(&self.ipv6_64, n, |prefix| {
            Ipv6Addr::from_bits(u128::from(prefix) << 64)
        })
    }

    /// The most frequent autonomous systems.
    pub fn top_asns(&self, n: usize) -> Vec<HeavyHitter<u32>> {
        self.asns.top(n)
    }

    /// The most frequent countries.
    pub fn top_countries(&self, n: usize) -> Vec<HeavyHitter<[u8; 2]>> {
        self.countries.top(n)
    }

    /// The most frequent user agents (cut to [`MAX_KEY_BYTES`]).
    pub fn top_user_agents(&self, n: usize) -> Vec<HeavyHitter<String>> {
        self.user_agents.top(n)
    }

    /// The most frequent paths (cut to [`MAX_KEY_BYTES`]).
    pub fn top_paths(&self, n: usize) -> Vec<HeavyHitter<String>> {
        self.paths.top(n)
    }

    /// The most frequent query strings (cut to [`MAX_KEY_BYTES`]).
    pub fn top_queries(&self, n: usize) -> Vec<HeavyHitter<String>> {
        self.queries.top(n)
    }

    /// The sampled request lines, in no particular order.
    pub fn samples(&self) -> &[String] {
        &self.samples
    }

    /// Estimated bytes used by this episode.
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>()
            + self.decisions.capacity() * size_of::<(&'static str, u64)>()
            + self.addresses.memory_bytes()
            + self.ipv4_24.memory_bytes()
            + self.ipv6_64.memory_bytes()
            + self.asns.memory_bytes()
            + self.countries.memory_bytes()
            + self.user_agents.memory_bytes()
            + self.paths.memory_bytes()
            + self.queries.memory_bytes()
            + self.samples.capacity() * size_of::<String>()
            + self.samples.iter().map(String::capacity).sum::<usize>()
    }

    /// The most [`memory_bytes`](Self::memory_bytes) an episode with these limits can
    /// report, whatever it observes.
    pub fn memory_bound(limits: EpisodeLimits) -> usize {
        let k = limits.heavy_hitters.max(1);
        // Each index is created for 2k entries; hashbrown keeps 8/7 buckets per entry,
        // rounded up to a power of two.
        let buckets = (2 * k * 8 / 7 + 1).next_power_of_two().max(4);
        fn dim<K>(k: usize, buckets: usize, key_heap: usize) -> usize {
            size_of::<SpaceSaving<u8>>().max(size_of::<SpaceSaving<String>>())
                + k * (size_of::<HeavyHitter<K>>() + 2 * key_heap)
                + buckets * (size_of::<(K, usize)>() + 1)
        }
        size_of::<Self>()
            + MAX_DECISIONS * size_of::<(&'static str, u64)>()
            + dim::<u128>(k, buckets, 0)
            + 3 * dim::<u32>(k, buckets, 0)
            + dim::<u64>(k, buckets, 0)
            + 3 * dim::<String>(k, buckets, MAX_KEY_BYTES)
            + limits.sample_lines * (size_of::<String>() + MAX_LINE_BYTES)
    }

    fn count_decision(&mut self, name: &'static str) {
        let name = if self.decisions.len() >= MAX_DECISIONS - 1
            && !self.decisions.iter().any(|(n, _)| *n == name)
        {
            "other"
        } else {
            name
        };
        match self.decisions.iter_mut().find(|(n, _)| *n == name) {
            Some((_, count)) => *count = count.saturating_add(1),
            None => self.decisions.push((name, 1)),
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn cap(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An access-log-like line: `addr "METHOD path?query" "user agent" decision`.
fn request_line(req: &Request<'_>) -> String {
    let question = if req.query.is_empty() { "" } else { "?" };
    let mut line = format!(
        "{} \"{} {}{}{}\" \"{}\" {}",
        req.addr.to_canonical(),
        cap(req.method, MAX_KEY_BYTES),
        cap(req.path, MAX_KEY_BYTES),
        question,
        cap(req.query, MAX_KEY_BYTES),
        cap(req.user_agent, MAX_KEY_BYTES),
        req.decision,
    );
    let len = cap(&line, MAX_LINE_BYTES).len();
    line.truncate(len);
    line.shrink_to_fit();
    line
}

fn map_keys<K: Key, T>(ss: &SpaceSaving<K>, n: usize, f: impl Fn(K) -> T) -> Vec<HeavyHitter<T>> {
    ss.top(n)
        .into_iter()
        .map(|h| HeavyHitter {
            key: f(h.key),
            count: h.count,
            error: h.error,
        })
        .collect()
}

/// A heavy hitter with its key written as text, for the JSON form.
#[derive(Serialize)]
struct TextHit {
    key: String,
    count: u64,
    error: u64,
}

fn text_hits<K>(hits: Vec<HeavyHitter<K>>, f: impl Fn(&K) -> String) -> Vec<TextHit> {
    hits.into_iter()
        .map(|h| TextHit {
            key: f(&h.key),
            count: h.count,
            error: h.error,
        })
        .collect()
}

struct Decisions<'a>(&'a [(&'static str, u64)]);

impl Serialize for Decisions<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, count) in self.0 {
            map.serialize_entry(name, count)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct HeavyHitters {
    addresses: Vec<TextHit>,
    ipv4_24: Vec<TextHit>,
    ipv6_64: Vec<TextHit>,
    asns: Vec<HeavyHitter<u32>>,
    countries: Vec<TextHit>,
    user_agents: Vec<HeavyHitter<String>>,
    paths: Vec<HeavyHitter<String>>,
    queries: Vec<HeavyHitter<String>>,
}

#[derive(Serialize)]
struct EpisodeJson<'a> {
    start_ms: u64,
    end_ms: Option<u64>,
    peak_rps: u64,
    peak_at_ms: u64,
    total_requests: u64,
    decisions: Decisions<'a>,
    heavy_hitters: HeavyHitters,
    samples: &'a [String],
}

impl Serialize for Episode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let all = usize::MAX;
        EpisodeJson {
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            peak_rps: self.peak_rps,
            peak_at_ms: self.peak_at_ms,
            total_requests: self.total_requests,
            decisions: Decisions(&self.decisions),
            heavy_hitters: HeavyHitters {
                addresses: text_hits(self.top_addresses(all), ToString::to_string),
                ipv4_24: text_hits(self.top_ipv4_24(all), |a| format!("{a}/24")),
                ipv6_64: text_hits(self.top_ipv6_64(all), |a| format!("{a}/64")),
                asns: self.top_asns(all),
                countries: text_hits(self.top_countries(all), |c| {
                    String::from_utf8_lossy(c).into_owned()
                }),
                user_agents: self.top_user_agents(all),
                paths: self.top_paths(all),
                queries: self.top_queries(all),
            },
            samples: &self.samples,
        }
        .serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    /// splitmix64: a deterministic stand-in for the caller's random numbers.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    fn request(addr: IpAddr) -> Request<'static> {
        Request {
            addr,
            asn: Some(64_500),
            country: Some(*b"NL"),
            method: "GET",
            path: "/search",
            query: "s=number+one",
            user_agent: "Mozilla/5.0",
            decision: "challenge",
        }
    }

    #[test]
    fn million_distinct_addresses_stay_bounded_and_heavy_ones_are_found() {
        let limits = EpisodeLimits::default();
        let bound = Episode::memory_bound(limits);
        let mut episode = Episode::with_limits(1_000, limits);
        let mut rng = Rng(42);
        let heavy = [
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
            IpAddr::V6("2001:db8:1:2::99".parse().unwrap()),
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 23)),
        ];
        // Long strings everywhere, to show the caps hold.
        let long = "x".repeat(10_000);
        let random_request = |i: u32| Request {
            addr: IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + i)),
            asn: Some(i % 5000),
            country: Some([b'A' + (i % 26) as u8, b'A' + (i / 26 % 26) as u8]),
            method: "GET",
            path: &long[..(i % 9_000) as usize],
            query: &long[..(i % 7_000) as usize],
            user_agent: &long[..(i % 8_000) as usize],
            decision: "pass",
        };

        for i in 0..20_000u32 {
            episode.observe(&random_request(i), rng.next());
        }
        let early = episode.memory_bytes();
        assert!(early <= bound, "{early} > {bound}");

        // One million distinct addresses, with three planted heavy ones among them:
        // 75k, 50k and 25k requests, all above N / 64 (about 18k).
        for i in 20_000..1_020_000u32 {
            episode.observe(&random_request(i), rng.next());
            let which = match i % 40 {
                0..=2 => Some(0),
                3..=4 => Some(1),
                5 => Some(2),
                _ => None,
            };
            if let Some(which) = which {
                episode.observe(&request(heavy[which]), rng.next());
            }
        }
        let late = episode.memory_bytes();
        assert!(late <= bound, "{late} > {bound}");
        assert!(
            bound < 1 << 20,
            "an episode should stay well under 1 MiB, bound is {bound}"
        );
        assert_eq!(
            episode.total_requests(),
            1_000_000 + 20_000 + 75_000 + 50_000 + 25_000
        );

        let top: Vec<IpAddr> = episode.top_addresses(3).iter().map(|h| h.key).collect();
        assert_eq!(top, heavy);
        let first = &episode.top_addresses(1)[0];
        assert!(first.guaranteed() <= 75_000 && first.count >= 75_000);
        assert_eq!(
            episode.top_ipv6_64(1)[0].key,
            "2001:db8:1:2::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(episode.top_ipv6_64(1)[0].count, 50_000);
        // Every random path longer than the cap is cut to the same 256 bytes.
        let paths = episode.top_paths(2);
        assert_eq!(paths[0].key.len(), MAX_KEY_BYTES);
        assert_eq!(paths[1].key, "/search");
        assert!(paths[1].guaranteed() <= 150_000 && paths[1].count >= 150_000);
        assert!(
            episode
                .top_user_agents(64)
                .iter()
                .all(|h| h.key.len() <= MAX_KEY_BYTES)
        );
        assert_eq!(episode.samples().len(), 100);
        assert!(episode.samples().iter().all(|l| l.len() <= MAX_LINE_BYTES));
    }

    #[test]
    fn heavy_hitters_on_a_known_mix() {
        let mut episode = Episode::new(0);
        let mut rng = Rng(1);
        // 10 clients from 192.0.2.0/24 sending 1000 requests each, 2000 clients from
        // 100 other /24s sending 5 each, interleaved.
        for round in 0..1000u32 {
            for c in 0..10u8 {
                let mut r = request(IpAddr::V4(Ipv4Addr::new(192, 0, 2, c)));
                r.asn = Some(64_496);
                r.country = Some(*b"RU");
                r.path = "/search";
                r.decision = if round % 2 == 0 { "block" } else { "challenge" };
                episode.observe(&r, rng.next());
            }
            for c in 0..10u32 {
                let id = round * 10 + c;
                let mut r = request(IpAddr::V4(Ipv4Addr::from_bits(
                    0xc633_0000 + (id % 100) * 256 + id / 100 % 20,
                )));
                r.asn = Some(id % 7);
                r.country = Some(*b"DE");
                r.path = "/";
                r.query = "";
                r.decision = "pass";
                episode.observe(&r, rng.next());
            }
        }
        assert_eq!(episode.total_requests(), 20_000);
        let top24 = episode.top_ipv4_24(1);
        assert_eq!(top24[0].key, Ipv4Addr::new(192, 0, 2, 0));
        assert_eq!((top24[0].count, top24[0].error), (10_000, 0));
        let mut top_addrs: Vec<_> = episode
            .top_addresses(10)
            .into_iter()
            .map(|h| h.key)
            .collect();
        top_addrs.sort();
        let expected: Vec<IpAddr> = (0..10)
            .map(|c| IpAddr::V4(Ipv4Addr::new(192, 0, 2, c)))
            .collect();
        assert_eq!(top_addrs, expected);
        assert_eq!(episode.top_asns(1)[0].key, 64_496);
        let mut countries: Vec<_> = episode
            .top_countries(5)
            .iter()
            .map(|h| (h.key, h.count))
            .collect();
        countries.sort();
        assert_eq!(countries, [(*b"DE", 10_000), (*b"RU", 10_000)]);
        assert_eq!(
            episode.top_queries(5).len(),
            1,
            "empty queries are not counted"
        );
        assert_eq!(
            episode.decisions(),
            [("block", 5_000), ("pass", 10_000), ("challenge", 5_000)]
        );
    }

    #[test]
    fn decisions_beyond_the_limit_count_as_other() {
        const NAMES: [&str; 20] = [
            "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q",
            "r", "s", "t",
        ];
        let mut episode = Episode::new(0);
        for name in NAMES {
            let mut r = request(IpAddr::V4(Ipv4Addr::LOCALHOST));
            r.decision = name;
            episode.observe(&r, 0);
        }
        assert_eq!(episode.decisions().len(), MAX_DECISIONS);
        assert_eq!(episode.decisions().last(), Some(&("other", 5)));
    }

    #[test]
    fn serialises_to_one_json_object() {
        let mut episode = Episode::with_limits(
            1_000,
            EpisodeLimits {
                heavy_hitters: 4,
                sample_lines: 2,
            },
        );
        let mut r = request(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9)));
        r.user_agent = "é".repeat(300).leak();
        episode.observe(&r, 0);
        episode.observe(&request(IpAddr::V6(Ipv6Addr::LOCALHOST)), 0);
        episode.record_second(2_000, 4_000);
        episode.record_second(3_000, 3_000);
        episode.finish(9_000);
        let json: serde_json::Value = serde_json::to_value(&episode).unwrap();
        assert_eq!(json["start_ms"], 1_000);
        assert_eq!(json["end_ms"], 9_000);
        assert_eq!(json["peak_rps"], 4_000);
        assert_eq!(json["peak_at_ms"], 2_000);
        assert_eq!(json["decisions"]["challenge"], 2);
        let hits = &json["heavy_hitters"];
        assert_eq!(hits["ipv4_24"][0]["key"], "198.51.100.0/24");
        assert_eq!(hits["ipv6_64"][0]["key"], "::/64");
        assert_eq!(hits["countries"][0]["key"], "NL");
        assert_eq!(hits["addresses"].as_array().unwrap().len(), 2);
        // Cut on a character boundary: 128 two-byte characters.
        assert_eq!(
            hits["user_agents"][0]["key"].as_str().unwrap().len(),
            MAX_KEY_BYTES
        );
        assert_eq!(
            json["samples"][1],
            "::1 \"GET /search?s=number+one\" \"Mozilla/5.0\" challenge"
        );
        assert!(!serde_json::to_string(&episode).unwrap().contains('\n'));
    }
}
