//! Groups near-identical texts. Two paths, as the research recommends:
//!
//! * **Identity**: every text is first grouped by its exact key ([`normalize::exact_key`]), so
//!   `R.I.P`, `Р.І.Р` and `RIP 🙏` are one group at the cost of a hash lookup. For texts of
//!   fewer than four distinct shingles this is also exact for Jaccard ≥ 0.8 (two different
//!   sets that small never reach it), so nothing more is done for them.
//! * **Near-duplicates**: each distinct longer key gets a MinHash signature over its character
//!   3-grams ([`ClusterParams::num_perm`] permutations), banded for locality-sensitive hashing.
//!   Texts that share a band bucket are candidates; a candidate is merged only after a direct
//!   Jaccard check on the shingle sets. Inside a bucket each member is checked against the
//!   bucket's first member and its predecessor only, so a bucket of thousands costs thousands
//!   of checks, never millions: there is no all-pairs step anywhere.
//!
//! Groups are joined by union-find, so a cluster is the connected component of "verified
//! near-duplicate" edges. Everything is deterministic (fixed seeds): the same input gives the
//! same clusters on every machine.

use std::collections::HashMap;
use std::hash::BuildHasher as _;

use crate::normalize::exact_key;

/// Cluster id for a text with no key (punctuation only).
pub const NO_CLUSTER: u32 = u32::MAX;

/// How near is near.
#[derive(Debug, Clone, Copy)]
pub struct ClusterParams {
    /// Jaccard similarity of 3-gram sets at or above which two texts are the same text.
    pub threshold: f64,
    /// MinHash permutations (signature length).
    pub num_perm: usize,
    /// Shingle length in characters.
    pub shingle: usize,
}

impl Default for ClusterParams {
    fn default() -> Self {
        ClusterParams {
            threshold: 0.8,
            num_perm: 128,
            shingle: 3,
        }
    }
}

/// Below this many distinct shingles, identity grouping is already exact for a threshold of
/// 0.8 or more (a set of three or fewer reaches it only against itself).
const MIN_LSH_SHINGLES: usize = 4;

/// Counters for the report and the benchmark.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ClusterStats {
    pub texts: u64,
    pub distinct_keys: u64,
    pub lsh_keys: u64,
    pub bands: u64,
    pub rows: u64,
    pub candidate_checks: u64,
    pub merges: u64,
}

/// The result: a cluster id per input text, and per cluster whether it joined more than one
/// distinct key (a near-duplicate cluster rather than an identical one).
#[derive(Debug, Clone)]
pub struct Clusters {
    pub of_text: Vec<u32>,
    pub near: Vec<bool>,
    /// Distinct exact key per text ([`NO_CLUSTER`] when none), and the first text of each key.
    pub key_of_text: Vec<u32>,
    pub key_rep: Vec<u32>,
    pub stats: ClusterStats,
}

impl Clusters {
    pub fn count(&self) -> usize {
        self.near.len()
    }
}

/// Fixed seeds: results must not depend on the process.
const SHINGLE_SEED: u64 = 0x5157_4545_5053_4831;
const PERM_SEED: u64 = 0x7177_6565_7073_6d68;

/// Clusters `texts` (already [`crate::normalize::matching_text`]). `progress` is called with
/// (phase, done, total) now and then.
/// `aliases[i]` are further keys of text `i` ([`crate::normalize::alias_keys`]): texts
/// sharing an alias, or whose alias is another text's key, are one group. Pass an empty slice
/// for none.
pub fn cluster(
    texts: &[String],
    aliases: &[Vec<String>],
    p: &ClusterParams,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Clusters {
    let n = texts.len();
    let mut stats = ClusterStats {
        texts: n as u64,
        ..Default::default()
    };
    // 1. Identity.
    let mut key_id: HashMap<String, u32, foldhash::fast::FixedState> =
        HashMap::with_hasher(foldhash::fast::FixedState::with_seed(SHINGLE_SEED));
    let mut rep: Vec<u32> = Vec::new();
    let mut uid_of_text = vec![NO_CLUSTER; n];
    for (i, t) in texts.iter().enumerate() {
        let k = exact_key(t);
        if k.is_empty() {
            continue;
        }
        let next = rep.len() as u32;
        let id = *key_id.entry(k).or_insert(next);
        if id == next {
            rep.push(i as u32);
        }
        uid_of_text[i] = id;
        if i % 262_144 == 0 {
            progress("grouping", i as u64, n as u64);
        }
    }
    let nu = rep.len();
    stats.distinct_keys = nu as u64;
    let mut uf = UnionFind::new(nu);
    let mut alias_of: HashMap<&str, u32, foldhash::fast::FixedState> =
        HashMap::with_hasher(foldhash::fast::FixedState::with_seed(SHINGLE_SEED));
    for (i, list) in aliases.iter().enumerate().take(n) {
        let u = uid_of_text[i];
        if u == NO_CLUSTER {
            continue;
        }
        for a in list {
            if let Some(&other) = key_id.get(a.as_str()) {
                uf.union(u, other);
            }
            let first = *alias_of.entry(a.as_str()).or_insert(u);
            uf.union(u, first);
        }
    }
    drop(alias_of);
    drop(key_id);

    // 2. Signatures of the longer distinct texts, kept only as band hashes and shingle sets.
    let (bands, rows) = optimal_bands(p.threshold, p.num_perm.max(2));
    stats.bands = bands as u64;
    stats.rows = rows as u64;
    let perms = Permutations::new(bands * rows);
    let mut cache = SignatureCache::new(&perms);
    let shingle_hasher = foldhash::quality::FixedState::with_seed(SHINGLE_SEED);
    let band_hasher = foldhash::quality::FixedState::with_seed(PERM_SEED);
    let mut lsh_uid: Vec<u32> = Vec::new();
    let mut band_hashes: Vec<u64> = Vec::new();
    let mut set_start: Vec<u32> = vec![0];
    let mut set_arena: Vec<u32> = Vec::new();
    let mut shingles: Vec<u64> = Vec::new();
    let mut sig = vec![u32::MAX; bands * rows];
    let mut bounds: Vec<usize> = Vec::new();
    for (uid, &ti) in rep.iter().enumerate() {
        let t = &texts[ti as usize];
        shingle_hashes(t, p.shingle, &shingle_hasher, &mut bounds, &mut shingles);
        if shingles.len() < MIN_LSH_SHINGLES {
            continue;
        }
        cache.signature(&shingles, &mut sig);
        for b in 0..bands {
            let mut h = band_hasher.build_hasher();
            std::hash::Hasher::write_usize(&mut h, b);
            for v in &sig[b * rows..(b + 1) * rows] {
                std::hash::Hasher::write_u32(&mut h, *v);
            }
            band_hashes.push(std::hash::Hasher::finish(&h));
        }
        // Shingle sets are kept as 32-bit folds of the 64-bit hashes: a collision can only
        // raise a Jaccard estimate by one element in four billion.
        let start = set_arena.len();
        set_arena.extend(shingles.iter().map(|h| (h ^ (h >> 32)) as u32));
        set_arena[start..].sort_unstable();
        let mut w = start;
        for r in start..set_arena.len() {
            if r == start || set_arena[r] != set_arena[w - 1] {
                set_arena[w] = set_arena[r];
                w += 1;
            }
        }
        set_arena.truncate(w);
        set_start.push(set_arena.len() as u32);
        lsh_uid.push(uid as u32);
        if uid % 65_536 == 0 {
            progress("minhash", uid as u64, nu as u64);
        }
    }
    stats.lsh_keys = lsh_uid.len() as u64;
    drop(cache);

    // 3. Band by band: sort (bucket, text) pairs, check runs, join verified pairs.
    let nl = lsh_uid.len();
    let set = |i: usize| &set_arena[set_start[i] as usize..set_start[i + 1] as usize];
    let mut pairs: Vec<(u64, u32)> = Vec::with_capacity(nl);
    for b in 0..bands {
        pairs.clear();
        pairs.extend((0..nl).map(|i| (band_hashes[i * bands + b], i as u32)));
        pairs.sort_unstable();
        let mut s = 0;
        while s < pairs.len() {
            let mut e = s + 1;
            while e < pairs.len() && pairs[e].0 == pairs[s].0 {
                e += 1;
            }
            let first = pairs[s].1 as usize;
            for j in s + 1..e {
                let cur = pairs[j].1 as usize;
                let prev = pairs[j - 1].1 as usize;
                let (uc, uf0) = (lsh_uid[cur], lsh_uid[first]);
                if uf.find(uc) != uf.find(uf0) {
                    stats.candidate_checks += 1;
                    if jaccard(set(cur), set(first)) >= p.threshold {
                        uf.union(uc, uf0);
                        stats.merges += 1;
                        continue;
                    }
                }
                let up = lsh_uid[prev];
                if prev != first && uf.find(uc) != uf.find(up) {
                    stats.candidate_checks += 1;
                    if jaccard(set(cur), set(prev)) >= p.threshold {
                        uf.union(uc, up);
                        stats.merges += 1;
                    }
                }
            }
            s = e;
        }
        progress("lsh", b as u64 + 1, bands as u64);
    }

    // 4. Compact cluster ids, in order of first appearance.
    let mut cid_of_root = vec![NO_CLUSTER; nu];
    let mut keys_in = Vec::new();
    let mut of_text = vec![NO_CLUSTER; n];
    for i in 0..n {
        let u = uid_of_text[i];
        if u == NO_CLUSTER {
            continue;
        }
        let r = uf.find(u) as usize;
        if cid_of_root[r] == NO_CLUSTER {
            cid_of_root[r] = keys_in.len() as u32;
            keys_in.push(0u32);
        }
        of_text[i] = cid_of_root[r];
    }
    for u in 0..rep.len() {
        let c = cid_of_root[uf.find(u as u32) as usize];
        if c != NO_CLUSTER {
            keys_in[c as usize] += 1;
        }
    }
    Clusters {
        of_text,
        near: keys_in.into_iter().map(|k| k > 1).collect(),
        key_of_text: uid_of_text,
        key_rep: rep,
        stats,
    }
}

/// The distinct 64-bit hashes of the `k`-character shingles of `t` (the whole text when it is
/// shorter than `k`), sorted.
pub fn shingle_hashes(
    t: &str,
    k: usize,
    hasher: &foldhash::quality::FixedState,
    bounds: &mut Vec<usize>,
    out: &mut Vec<u64>,
) {
    out.clear();
    bounds.clear();
    bounds.extend(t.char_indices().map(|(i, _)| i));
    bounds.push(t.len());
    let chars = bounds.len() - 1;
    if chars == 0 {
        return;
    }
    let k = k.max(1);
    if chars < k {
        out.push(hasher.hash_one(t.as_bytes()));
    } else {
        for i in 0..=chars - k {
            out.push(hasher.hash_one(&t.as_bytes()[bounds[i]..bounds[i + k]]));
        }
    }
    out.sort_unstable();
    out.dedup();
}

/// A fixed family of hash permutations `h_i(x) = (a_i·x + b_i) >> 32` (multiply-shift: the
/// high bits of a 64-bit multiply-add with odd `a_i` form a universal family).
struct Permutations {
    a: Vec<u64>,
    b: Vec<u64>,
}

impl Permutations {
    fn new(k: usize) -> Self {
        let mut s = PERM_SEED;
        let mut next = || {
            // SplitMix64.
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let a = (0..k).map(|_| next() | 1).collect();
        let b = (0..k).map(|_| next()).collect();
        Permutations { a, b }
    }

    fn hash_into(&self, x: u64, out: &mut [u32]) {
        for ((o, a), b) in out.iter_mut().zip(&self.a).zip(&self.b) {
            *o = (a.wrapping_mul(x).wrapping_add(*b) >> 32) as u32;
        }
    }

    /// The direct computation, which the cache must agree with.
    #[cfg(test)]
    fn signature(&self, shingles: &[u64], sig: &mut [u32]) {
        sig.fill(u32::MAX);
        let mut h = vec![0u32; sig.len()];
        for &x in shingles {
            self.hash_into(x, &mut h);
            min_into(sig, &h);
        }
    }
}

/// Element-wise minimum (vectorises, unlike the multiplications).
fn min_into(sig: &mut [u32], h: &[u32]) {
    for (s, v) in sig.iter_mut().zip(h) {
        *s = (*s).min(*v);
    }
}

/// The permuted values of the most frequent shingles, computed once: comments in one
/// language share most of their 3-grams, so a signature becomes mostly element-wise minima.
/// Bounded: at most [`SHINGLE_CACHE`] shingles are kept; others are computed each time.
struct SignatureCache<'a> {
    perms: &'a Permutations,
    slot: HashMap<u64, u32, foldhash::fast::FixedState>,
    values: Vec<u32>,
    scratch: Vec<u32>,
}

const SHINGLE_CACHE: usize = 65_536;

impl<'a> SignatureCache<'a> {
    fn new(perms: &'a Permutations) -> Self {
        SignatureCache {
            perms,
            slot: HashMap::with_hasher(foldhash::fast::FixedState::with_seed(PERM_SEED)),
            values: Vec::new(),
            scratch: vec![0; perms.a.len()],
        }
    }

    fn signature(&mut self, shingles: &[u64], sig: &mut [u32]) {
        let k = self.perms.a.len();
        sig.fill(u32::MAX);
        for &x in shingles {
            if let Some(&i) = self.slot.get(&x) {
                let i = i as usize * k;
                min_into(sig, &self.values[i..i + k]);
            } else if self.slot.len() < SHINGLE_CACHE {
                let i = self.slot.len();
                self.slot.insert(x, i as u32);
                self.values.resize((i + 1) * k, 0);
                self.perms
                    .hash_into(x, &mut self.values[i * k..(i + 1) * k]);
                min_into(sig, &self.values[i * k..(i + 1) * k]);
            } else {
                self.perms.hash_into(x, &mut self.scratch);
                min_into(sig, &self.scratch);
            }
        }
    }
}

/// Jaccard similarity of two sorted, deduplicated sets.
pub fn jaccard(a: &[u32], b: &[u32]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let (mut i, mut j, mut inter) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                inter += 1;
                i += 1;
                j += 1;
            }
        }
    }
    inter as f64 / (a.len() + b.len() - inter) as f64
}

/// Weights of a false positive and a false negative when choosing the banding. Candidates
/// are verified by an exact Jaccard check, so a false positive costs one check while a false
/// negative loses a bot: recall is worth far more. With 128 permutations and 0.8 this gives
/// 16 bands of 8 rows (a pair at exactly 0.8 becomes a candidate with probability 0.95),
/// where equal weights give 9 × 13 (probability 0.40).
pub const BAND_WEIGHTS: (f64, f64) = (0.05, 0.95);

/// The (bands, rows) split of `num_perm` permutations that minimises the weighted
/// probabilities ([`BAND_WEIGHTS`]) of a false positive (below `threshold`) and a false
/// negative (above it), integrated over similarity: the criterion of datasketch's
/// `MinHashLSH` with `weights`, so both sides of the benchmark can band the same way.
pub fn optimal_bands(threshold: f64, num_perm: usize) -> (usize, usize) {
    let (wfp, wfn) = BAND_WEIGHTS;
    let t = threshold.clamp(0.01, 0.99);
    let integrate = |f: &dyn Fn(f64) -> f64, lo: f64, hi: f64| {
        let steps = 400;
        let w = (hi - lo) / steps as f64;
        (0..steps)
            .map(|i| f(lo + (i as f64 + 0.5) * w))
            .sum::<f64>()
            * w
    };
    let mut best = (f64::INFINITY, 1, num_perm);
    for b in 1..=num_perm {
        for r in 1..=num_perm / b {
            let pr = |s: f64| 1.0 - (1.0 - s.powi(r as i32)).powi(b as i32);
            let fp = integrate(&pr, 0.0, t);
            let fneg = integrate(&|s| 1.0 - pr(s), t, 1.0);
            let err = wfp * fp + wfn * fneg;
            if err < best.0 {
                best = (err, b, r);
            }
        }
    }
    (best.1, best.2)
}

struct UnionFind {
    parent: Vec<u32>,
    rank: Vec<u8>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        UnionFind {
            parent: (0..n as u32).collect(),
            rank: vec![0; n],
        }
    }
    fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let p = self.parent[x as usize];
            self.parent[x as usize] = self.parent[p as usize];
            x = p;
        }
        x
    }
    fn union(&mut self, a: u32, b: u32) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return;
        }
        let (hi, lo) = if self.rank[ra as usize] >= self.rank[rb as usize] {
            (ra, rb)
        } else {
            (rb, ra)
        };
        self.parent[lo as usize] = hi;
        if self.rank[hi as usize] == self.rank[lo as usize] {
            self.rank[hi as usize] += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::matching_text;

    fn run(texts: &[&str]) -> Clusters {
        let t: Vec<String> = texts.iter().map(|s| matching_text(s)).collect();
        let a: Vec<_> = texts
            .iter()
            .zip(&t)
            .map(|(s, m)| crate::normalize::alias_keys(s, &exact_key(m)))
            .collect();
        cluster(&t, &a, &ClusterParams::default(), &mut |_, _, _| {})
    }

    #[test]
    fn identical_after_normalising_is_one_cluster() {
        let c = run(&["R.I.P", "Р.І.Р", "RIP 🙏", "спасибо", "..."]);
        assert_eq!(c.of_text[0], c.of_text[1]);
        assert_eq!(c.of_text[0], c.of_text[2]);
        assert_ne!(c.of_text[0], c.of_text[3]);
        assert_eq!(c.of_text[4], NO_CLUSTER);
        assert!(!c.near[c.of_text[3] as usize]);
    }

    #[test]
    fn near_duplicates_join_and_different_texts_do_not() {
        let base = "Журналисты этого канала продались, отписывайтесь все немедленно";
        let c = run(&[
            base,
            "Журналисты этого канала продались, отписывайтесь все немедленнo!!",
            "журналисты этого канала продались отписывайтесь все немедлено 😡",
            "Журналисты этого канала продались, отписывайтесь все немедленно, друзья",
            "Сегодня в Алматы прошёл фестиваль уличной еды, было очень вкусно",
        ]);
        let c0 = c.of_text[0];
        assert_eq!(c.of_text[1], c0);
        assert_eq!(c.of_text[2], c0);
        assert_eq!(c.of_text[3], c0);
        assert_ne!(c.of_text[4], c0);
        assert!(c.near[c0 as usize]);
        assert!(c.stats.candidate_checks > 0);
    }

    #[test]
    fn jaccard_and_bands() {
        assert_eq!(jaccard(&[1, 2, 3], &[2, 3, 4]), 0.5);
        assert_eq!(jaccard(&[], &[]), 1.0);
        assert_eq!(jaccard(&[1], &[]), 0.0);
        let (b, r) = optimal_bands(0.8, 128);
        assert!(b * r <= 128 && b > 1 && r > 1, "{b}x{r}");
        // The S-curve passes near the threshold: (1/b)^(1/r) is its inflection point.
        let knee = (1.0 / b as f64).powf(1.0 / r as f64);
        assert!((0.6..0.9).contains(&knee), "{knee}");
    }

    #[test]
    fn signatures_estimate_jaccard() {
        let h = foldhash::quality::FixedState::with_seed(SHINGLE_SEED);
        let (mut bounds, mut a, mut b) = (Vec::new(), Vec::new(), Vec::new());
        shingle_hashes(
            "the quick brown fox jumps over the lazy dog again",
            3,
            &h,
            &mut bounds,
            &mut a,
        );
        shingle_hashes(
            "the quick brown fox jumps over the lazy cat again",
            3,
            &h,
            &mut bounds,
            &mut b,
        );
        let fold = |v: &[u64]| {
            let mut f: Vec<u32> = v.iter().map(|h| (h ^ (h >> 32)) as u32).collect();
            f.sort_unstable();
            f.dedup();
            f
        };
        let exact = jaccard(&fold(&a), &fold(&b));
        let p = Permutations::new(256);
        let (mut sa, mut sb) = (vec![0; 256], vec![0; 256]);
        p.signature(&a, &mut sa);
        p.signature(&b, &mut sb);
        let est = sa.iter().zip(&sb).filter(|(x, y)| x == y).count() as f64 / 256.0;
        let mut cached = vec![0; 256];
        let mut c = SignatureCache::new(&p);
        c.signature(&a, &mut cached);
        c.signature(&a, &mut cached);
        assert_eq!(cached, sa, "the cache changes nothing");
        assert!((est - exact).abs() < 0.12, "estimate {est}, exact {exact}");
    }
}
