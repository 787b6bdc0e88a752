//! `Geo::asn` and `Geo::country` on the shipped data against a naive baseline, a
//! `BTreeMap<u32, u32>` of range starts queried with `range(..=addr).next_back()`, and the
//! time to load the shipped files.
//!
//! The shield looks up two tables per request while an episode is open, so what matters is
//! that a lookup stays far below the cost of the request itself (microseconds).
//!
//! Run: `cargo bench -p qalqan-geo --bench lookup`. Results: `RESULTS.md`.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::OnceLock;

use divan::Bencher;
use qalqan_geo::Geo;

fn main() {
    let g = geo();
    println!(
        "tables: {:.1} MiB ({} bytes)",
        g.memory_bytes() as f64 / f64::from(1 << 20),
        g.memory_bytes()
    );
    divan::main();
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/geo")
}

fn geo() -> &'static Geo {
    static G: OnceLock<Geo> = OnceLock::new();
    G.get_or_init(|| Geo::load_dir(&data_dir()).expect("the shipped data loads"))
}

/// Pseudo-random addresses (splitmix64), the same every run.
fn addrs_v4() -> &'static [IpAddr] {
    static A: OnceLock<Vec<IpAddr>> = OnceLock::new();
    A.get_or_init(|| {
        let mut x = 42u64;
        (0..65_536)
            .map(|_| {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let z = (x ^ (x >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                IpAddr::V4(Ipv4Addr::from_bits((z >> 32) as u32))
            })
            .collect()
    })
}

fn addrs_v6() -> &'static [IpAddr] {
    static A: OnceLock<Vec<IpAddr>> = OnceLock::new();
    A.get_or_init(|| {
        let mut x = 7u64;
        (0..65_536)
            .map(|_| {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let z = (x ^ (x >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                // Inside 2a00::/12 (RIPE), where most European and Kazakh IPv6 lives.
                let hi = 0x2a00_0000_0000_0000u64 | (z >> 12);
                IpAddr::V6(Ipv6Addr::from_bits((u128::from(hi) << 64) | 1))
            })
            .collect()
    })
}

/// The baseline: the IPv4 ASN ranges of the shipped file in a `BTreeMap`.
fn btree() -> &'static BTreeMap<u32, u32> {
    static B: OnceLock<BTreeMap<u32, u32>> = OnceLock::new();
    B.get_or_init(|| {
        let f = std::fs::File::open(data_dir().join(qalqan_geo::ASN_FILE)).unwrap();
        let r = BufReader::new(flate2::read::GzDecoder::new(f));
        let mut map = BTreeMap::new();
        let (mut in_v4, mut start) = (false, 0u64);
        for line in r.lines() {
            let line = line.unwrap();
            if line.starts_with("v4 ") {
                in_v4 = true;
                continue;
            }
            if line.starts_with("v6 ") {
                break;
            }
            if in_v4 {
                let (d, v) = line.split_once(' ').unwrap();
                start += u64::from_str_radix(d, 16).unwrap();
                map.insert(start as u32, v.parse().unwrap_or(u32::MAX));
            }
        }
        map
    })
}

#[divan::bench]
fn asn_v4(b: Bencher) {
    let (g, a) = (geo(), addrs_v4());
    let mut i = 0;
    b.bench_local(|| {
        i = (i + 1) % a.len();
        g.asn(a[i]).map(|x| x.number)
    });
}

#[divan::bench]
fn asn_v4_btreemap_baseline(b: Bencher) {
    let (m, a) = (btree(), addrs_v4());
    let mut i = 0;
    b.bench_local(|| {
        i = (i + 1) % a.len();
        let IpAddr::V4(v4) = a[i] else { return None };
        m.range(..=v4.to_bits()).next_back().map(|(_, v)| *v)
    });
}

#[divan::bench]
fn country_v4(b: Bencher) {
    let (g, a) = (geo(), addrs_v4());
    let mut i = 0;
    b.bench_local(|| {
        i = (i + 1) % a.len();
        g.country(a[i])
    });
}

#[divan::bench]
fn asn_and_country_v6(b: Bencher) {
    let (g, a) = (geo(), addrs_v6());
    let mut i = 0;
    b.bench_local(|| {
        i = (i + 1) % a.len();
        (g.asn(a[i]).map(|x| x.number), g.country(a[i]))
    });
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn load_shipped_files() -> Geo {
    Geo::load_dir(&data_dir()).unwrap()
}
