//! `RateSketch::observe` against the naive baseline, a `Mutex<HashMap<u64, u32>>`
//! counter, for 1k and 1M distinct keys, on one thread and on two.
//!
//! The baseline is what the sketch replaces: exact, simple, and its memory grows with
//! every new client address, which is exactly what a flood from many addresses
//! exploits. Both sides are warmed with every key before timing, so the baseline is
//! measured at its steady-state size rather than while growing.
//!
//! Also benches `BlockTable::blocked_until`, which runs on every accepted connection.
//!
//! Run: `cargo bench -p qalqan-limits --bench rate`. Results: `RESULTS.md`.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use divan::Bencher;
use qalqan_limits::{BlockTable, KeyHasher, RateSketch};

const DISTINCT: [usize; 2] = [1_000, 1_000_000];
/// Long enough that no rotation happens while timing: we measure the update path.
const WINDOW_MS: u64 = 60_000;
const ROWS: usize = 4;
const COLS: usize = 32_768;

fn main() {
    print_memory_once();
    divan::main();
}

/// Keys as the shield would make them: keyed hashes of client addresses.
fn keys(n: usize) -> &'static [u64] {
    static SMALL: OnceLock<Vec<u64>> = OnceLock::new();
    static LARGE: OnceLock<Vec<u64>> = OnceLock::new();
    let cell = if n == DISTINCT[0] { &SMALL } else { &LARGE };
    cell.get_or_init(|| {
        let hasher = KeyHasher::with_seed(1);
        (0..n as u32)
            .map(|i| hasher.hash_ip(std::net::Ipv4Addr::from_bits(i).into(), 0))
            .collect()
    })
}

/// Each benchmark thread walks the key list from its own starting point, so two
/// threads are not always on the same key (nor on the same cache line).
fn next_key(keys: &[u64]) -> u64 {
    static THREADS: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static NEXT: Cell<usize> = Cell::new(THREADS.fetch_add(1, Ordering::Relaxed) * 7_919);
    }
    NEXT.with(|next| {
        let i = next.get();
        next.set(i.wrapping_add(1));
        keys[i % keys.len()]
    })
}

fn warm_sketch(n: usize) -> RateSketch {
    let sketch = RateSketch::new(WINDOW_MS, ROWS, COLS);
    for &k in keys(n) {
        sketch.observe(k, 0);
    }
    sketch
}

fn warm_map(n: usize) -> Mutex<HashMap<u64, u32>> {
    let mut map = HashMap::new();
    for &k in keys(n) {
        *map.entry(k).or_insert(0) += 1;
    }
    Mutex::new(map)
}

/// Approximate heap size of a std `HashMap<u64, u32>`: hashbrown keeps one control
/// byte plus one padded `(u64, u32)` slot per bucket, and buckets are a power of two
/// at most 7/8 full.
fn hashmap_bytes(map: &HashMap<u64, u32>) -> usize {
    let buckets = (map.capacity() * 8 / 7).next_power_of_two();
    buckets * (std::mem::size_of::<(u64, u32)>() + 1)
}

fn print_memory_once() {
    let sketch = RateSketch::new(WINDOW_MS, ROWS, COLS);
    println!("memory (counters only, after warming with every key):");
    for n in DISTINCT {
        let map = warm_map(n);
        let map = map.lock().unwrap_or_else(|e| e.into_inner());
        println!(
            "  {n:>9} keys: RateSketch {ROWS}x{COLS} = {:>10} bytes (any number of keys); \
             Mutex<HashMap<u64,u32>> ~ {:>10} bytes (one window only, no sliding)",
            sketch.memory_bytes(),
            hashmap_bytes(&map),
        );
    }
    let table = BlockTable::new(65_536);
    println!(
        "  BlockTable for {} keys = {} bytes",
        table.capacity(),
        table.memory_bytes()
    );
    println!();
}

#[divan::bench(args = DISTINCT, threads = [1, 2])]
fn sketch_observe(bencher: Bencher, n: usize) {
    let sketch = warm_sketch(n);
    let keys = keys(n);
    bencher.bench(|| sketch.observe(divan::black_box(next_key(keys)), 1));
}

#[divan::bench(args = DISTINCT, threads = [1, 2])]
fn hashmap_mutex_increment(bencher: Bencher, n: usize) {
    let map = warm_map(n);
    let keys = keys(n);
    bencher.bench(|| {
        let key = divan::black_box(next_key(keys));
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        *count
    });
}

#[divan::bench(args = DISTINCT, threads = [1, 2])]
fn block_table_lookup(bencher: Bencher, n: usize) {
    // A table at capacity, with half the looked-up keys blocked: both the hit and
    // the miss path are measured.
    let table = BlockTable::new(65_536);
    for &k in keys(n).iter().step_by(2) {
        table.block(k, u64::MAX);
    }
    let keys = keys(n);
    bencher.bench(|| table.blocked_until(divan::black_box(next_key(keys)), 1));
}
