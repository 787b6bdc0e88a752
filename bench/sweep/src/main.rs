//! Helpers for `bench/sweep/run.sh` (see the README there):
//!
//! * `gen N SEED OUT.csv`: the benchmark's short comments (`qalqan_sweep::synth::bench_comments`).
//! * `docs IN.csv OUT.tsv`: the distinct matching texts (`message_id<TAB>text`, one per line,
//!   line number = document id). datasketch gets these, so both sides see the same shingles.
//! * `truth DOCS.tsv SAMPLE SEED THRESHOLD OUT.tsv`: for SAMPLE documents drawn with SEED, every
//!   other document whose 3-gram set has Jaccard ≥ THRESHOLD, found exactly (prefix filtering,
//!   then a full Jaccard computation; no estimate anywhere).
//! * `score DOCS.tsv TRUTH.tsv REPORT.json DATASKETCH.tsv`: recall of the true pairs for both
//!   tools, and how many of what each returns is below the threshold.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("gen") if args.len() == 4 => gen_cmd(args[1].parse()?, args[2].parse()?, &args[3]),
        Some("docs") if args.len() == 3 => docs_cmd(&args[1], &args[2]),
        Some("truth") if args.len() == 6 => truth_cmd(
            &args[1],
            args[2].parse()?,
            args[3].parse()?,
            args[4].parse()?,
            &args[5],
        ),
        Some("score") if args.len() == 5 => score_cmd(&args[1], &args[2], &args[3], &args[4]),
        _ => bail!(
            "usage: gen N SEED OUT | docs IN OUT | truth DOCS SAMPLE SEED THRESHOLD OUT | score DOCS TRUTH REPORT DS"
        ),
    }
}

fn gen_cmd(n: usize, seed: u64, out: &str) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_path(out)?;
    w.write_record(["id", "author_id", "time", "text"])?;
    for m in qalqan_sweep::synth::bench_comments(seed, n) {
        w.write_record([
            m.id.as_str(),
            m.author_id.as_str(),
            &m.time.to_string(),
            m.text.as_str(),
        ])?;
    }
    w.flush()?;
    Ok(())
}

fn docs_cmd(input: &str, out: &str) -> anyhow::Result<()> {
    let f = std::fs::File::open(input)?;
    let (_, ds) = qalqan_sweep::input::read_dataset(
        BufReader::new(f),
        None,
        &Default::default(),
        &mut |_| {},
    )?;
    let mut seen: HashMap<String, ()> = HashMap::new();
    let mut w = BufWriter::new(std::fs::File::create(out)?);
    for m in &ds.messages {
        let t = qalqan_sweep::normalize::matching_text(&m.text);
        if t.is_empty() || seen.contains_key(&t) {
            continue;
        }
        writeln!(w, "{}\t{}", m.id, t)?;
        seen.insert(t, ());
    }
    Ok(())
}

fn read_docs(path: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut v = Vec::new();
    for line in BufReader::new(std::fs::File::open(path)?).lines() {
        let line = line?;
        let (id, t) = line.split_once('\t').context("docs line without a tab")?;
        v.push((id.to_string(), t.to_string()));
    }
    Ok(v)
}

/// The exact 3-gram sets as sorted token ids (no hashing, so no collision can inflate J).
fn token_sets(docs: &[(String, String)]) -> Vec<Vec<u32>> {
    let mut vocab: HashMap<String, u32> = HashMap::new();
    docs.iter()
        .map(|(_, t)| {
            let chars: Vec<char> = t.chars().collect();
            let grams: Vec<String> = if chars.len() < 3 {
                vec![t.clone()]
            } else {
                chars.windows(3).map(|w| w.iter().collect()).collect()
            };
            let mut ids: Vec<u32> = grams
                .into_iter()
                .map(|g| {
                    let n = vocab.len() as u32;
                    *vocab.entry(g).or_insert(n)
                })
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        })
        .collect()
}

fn jaccard(a: &[u32], b: &[u32]) -> f64 {
    qalqan_sweep::cluster::jaccard(a, b)
}

fn sample(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut r = qalqan_sweep::synth::Rng::new(seed);
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < k.min(n) {
        picked.insert(r.below(n as u64) as usize);
    }
    picked.into_iter().collect()
}

fn truth_cmd(docs: &str, k: usize, seed: u64, t: f64, out: &str) -> anyhow::Result<()> {
    let docs = read_docs(docs)?;
    let sets = token_sets(&docs);
    // Global order: rarest token first. Re-map ids by frequency so sorted order is that order.
    let mut freq: HashMap<u32, u32> = HashMap::new();
    for s in &sets {
        for &x in s {
            *freq.entry(x).or_insert(0) += 1;
        }
    }
    let mut by_freq: Vec<(u32, u32)> = freq.into_iter().map(|(x, f)| (f, x)).collect();
    by_freq.sort_unstable();
    let rank: HashMap<u32, u32> = by_freq
        .iter()
        .enumerate()
        .map(|(i, &(_, x))| (x, i as u32))
        .collect();
    let ranked: Vec<Vec<u32>> = sets
        .iter()
        .map(|s| {
            let mut v: Vec<u32> = s.iter().map(|x| rank[x]).collect();
            v.sort_unstable();
            v
        })
        .collect();
    // Prefix filtering: if J(x, y) ≥ t, then x's first |x| - ceil(t|x|) + 1 tokens and y's
    // first |y| - ceil(t|y|) + 1 tokens (in the global order) share a token.
    let prefix = |n: usize| n - ((t * n as f64).ceil() as usize).min(n) + 1;
    let mut index: HashMap<u32, Vec<u32>> = HashMap::new();
    for (d, s) in ranked.iter().enumerate() {
        for &x in &s[..prefix(s.len()).min(s.len())] {
            index.entry(x).or_default().push(d as u32);
        }
    }
    let mut w = BufWriter::new(std::fs::File::create(out)?);
    let (mut pairs, mut candidates) = (0usize, 0usize);
    for q in sample(docs.len(), k, seed) {
        let s = &ranked[q];
        let mut cand: Vec<u32> = s[..prefix(s.len()).min(s.len())]
            .iter()
            .flat_map(|x| index.get(x).into_iter().flatten().copied())
            .collect();
        cand.sort_unstable();
        cand.dedup();
        candidates += cand.len();
        let hits: Vec<String> = cand
            .into_iter()
            .filter(|&d| d as usize != q && jaccard(s, &ranked[d as usize]) >= t)
            .map(|d| d.to_string())
            .collect();
        pairs += hits.len();
        writeln!(w, "{q}\t{}", hits.join(","))?;
    }
    eprintln!(
        "truth: {} documents, {k} sampled, {candidates} candidates checked exactly, {pairs} true pairs",
        docs.len()
    );
    Ok(())
}

#[derive(serde::Deserialize)]
struct Report {
    clusters: Vec<Cluster>,
}
#[derive(serde::Deserialize)]
struct Cluster {
    members: Vec<Member>,
}
#[derive(serde::Deserialize)]
struct Member {
    message_id: Option<String>,
}

fn read_pairs(path: &str) -> anyhow::Result<Vec<(usize, Vec<usize>)>> {
    let mut v = Vec::new();
    for line in BufReader::new(std::fs::File::open(path)?).lines() {
        let line = line?;
        let (q, rest) = line.split_once('\t').context("line without a tab")?;
        let list = rest
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<usize>, _>>()?;
        v.push((q.parse()?, list));
    }
    Ok(v)
}

fn score_cmd(docs: &str, truth: &str, report: &str, ds: &str) -> anyhow::Result<()> {
    let docs = read_docs(docs)?;
    let sets = token_sets(&docs);
    let truth = read_pairs(truth)?;
    let report: Report = serde_json::from_reader(BufReader::new(std::fs::File::open(report)?))?;
    let mut cluster_of_msg: HashMap<&str, usize> = HashMap::new();
    for (c, cl) in report.clusters.iter().enumerate() {
        for m in &cl.members {
            if let Some(id) = &m.message_id {
                cluster_of_msg.insert(id.as_str(), c);
            }
        }
    }
    let cluster_of_doc: Vec<Option<usize>> = docs
        .iter()
        .map(|(id, _)| cluster_of_msg.get(id.as_str()).copied())
        .collect();
    let mut members_of: HashMap<usize, Vec<usize>> = HashMap::new();
    for (d, c) in cluster_of_doc.iter().enumerate() {
        if let Some(c) = c {
            members_of.entry(*c).or_default().push(d);
        }
    }
    let ds_pairs: HashMap<usize, Vec<usize>> = read_pairs(ds)?.into_iter().collect();
    let (mut total, mut ours, mut theirs) = (0usize, 0usize, 0usize);
    let (mut ours_ret, mut ours_low, mut ds_ret, mut ds_low) = (0usize, 0usize, 0usize, 0usize);
    for (q, hits) in &truth {
        total += hits.len();
        let cq = cluster_of_doc[*q];
        ours += hits
            .iter()
            .filter(|&&d| cq.is_some() && cluster_of_doc[d] == cq)
            .count();
        let cand = ds_pairs.get(q).cloned().unwrap_or_default();
        let cand_set: std::collections::HashSet<usize> = cand.iter().copied().collect();
        theirs += hits.iter().filter(|d| cand_set.contains(d)).count();
        for &d in cand.iter().filter(|&&d| d != *q) {
            ds_ret += 1;
            if jaccard(&sets[*q], &sets[d]) < 0.8 {
                ds_low += 1;
            }
        }
        if let Some(c) = cq {
            for &d in members_of
                .get(&c)
                .into_iter()
                .flatten()
                .filter(|&&d| d != *q)
            {
                ours_ret += 1;
                if jaccard(&sets[*q], &sets[d]) < 0.8 {
                    ours_low += 1;
                }
            }
        }
    }
    let pct = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    println!(
        "{{\"true_pairs\":{total},\"qalqan_found\":{ours},\"qalqan_recall\":{:.4},\"datasketch_found\":{theirs},\"datasketch_recall\":{:.4},\"qalqan_returned\":{ours_ret},\"qalqan_below_threshold\":{:.4},\"datasketch_returned\":{ds_ret},\"datasketch_below_threshold\":{:.4}}}",
        pct(ours, total),
        pct(theirs, total),
        pct(ours_low, ours_ret),
        pct(ds_low, ds_ret)
    );
    Ok(())
}
