//! The converter behind `qalqan geo build`: reads the upstream country MMDB and ASN CSV files
//! and writes the compact files of [`crate::format`].
//!
//! Upstream ranges are sorted, overlaps are cut (the range that starts first keeps the
//! overlapping addresses), gaps become "unknown" ranges and neighbours with the same value are
//! merged, so the output has one line per change of value. IPv6 is reduced to /64 prefixes: a
//! /64 takes the value of its first address.

use std::fs::File;
use std::io::BufWriter;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::format::{self, MAX_ORG_BYTES};
use crate::{ASN_FILE, COUNTRY_FILE, Error};

/// The input files.
#[derive(Debug, Clone)]
pub struct Sources {
    /// An MMDB whose records hold a `country_code` string (the `@ip-location-db/*-country-mmdb`
    /// layout) or MaxMind's `country.iso_code`, with IPv4 and IPv6 in one file.
    pub country_mmdb: PathBuf,
    /// `start,end,asn,org` lines with dotted IPv4 addresses (`asn-ipv4.csv`).
    pub asn_csv_v4: PathBuf,
    /// The same with IPv6 addresses (`asn-ipv6.csv`).
    pub asn_csv_v6: PathBuf,
}

/// What a build produced.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Networks read from the MMDB.
    pub country_networks: usize,
    /// Lines written for IPv4 and IPv6 country ranges.
    pub country_ranges: (usize, usize),
    /// CSV rows read (both files).
    pub asn_rows: usize,
    /// Lines written for IPv4 and IPv6 ASN ranges.
    pub asn_ranges: (usize, usize),
    /// Distinct autonomous systems.
    pub systems: usize,
    /// Upstream ranges cut because they overlapped an earlier one.
    pub overlaps: usize,
    /// Bytes of the two compressed files.
    pub bytes: (u64, u64),
    /// The MMDB's build time (seconds since 1970).
    pub mmdb_build_epoch: u64,
}

/// Reads `sources`, writes `country.txt.gz` and `asn.txt.gz` into `out_dir`. `notes` become
/// comment lines at the top of both files (source package names and versions, licences).
pub fn build(sources: &Sources, out_dir: &Path, notes: &[String]) -> Result<Report, Error> {
    let mut report = Report::default();
    let (v4, v6, epoch) = read_country(&sources.country_mmdb, &mut report)?;
    report.mmdb_build_epoch = epoch;
    let v4c = normalize(v4, u128::from(u32::MAX), &mut report.overlaps);
    let v6c = normalize(v6, u128::from(u64::MAX), &mut report.overlaps);
    report.country_ranges = (v4c.len(), v6c.len());

    let mut systems: Vec<(u32, String)> = Vec::new();
    let v4a = read_asn_csv(&sources.asn_csv_v4, false, &mut systems, &mut report)?;
    let v6a = read_asn_csv(&sources.asn_csv_v6, true, &mut systems, &mut report)?;
    systems.sort_by_key(|s| s.0);
    systems.dedup_by_key(|s| s.0);
    report.systems = systems.len();
    let v4a = normalize(v4a, u128::from(u32::MAX), &mut report.overlaps);
    let v6a = normalize(v6a, u128::from(u64::MAX), &mut report.overlaps);
    report.asn_ranges = (v4a.len(), v6a.len());

    std::fs::create_dir_all(out_dir).map_err(|e| read_err(out_dir, e))?;
    let name = |p: &Path| {
        p.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    };
    let mut country_notes = notes.to_vec();
    country_notes.push(format!(
        "country from {} (MMDB built at {} seconds since 1970); IPv6 per /64",
        name(&sources.country_mmdb),
        epoch
    ));
    let mut asn_notes = notes.to_vec();
    asn_notes.push(format!(
        "ASN from {} and {}; IPv6 per /64",
        name(&sources.asn_csv_v4),
        name(&sources.asn_csv_v6)
    ));
    let country_path = out_dir.join(COUNTRY_FILE);
    report.bytes.0 = write_gz(&country_path, |w| {
        format::write_country(w, &country_notes, &narrow(&v4c), &narrow(&v6c))
    })?;
    let asn_path = out_dir.join(ASN_FILE);
    report.bytes.1 = write_gz(&asn_path, |w| {
        format::write_asn(w, &asn_notes, &systems, &narrow(&v4a), &narrow(&v6a))
    })?;
    // What was written must load: the shield refuses a file this build could not read back.
    crate::Geo::load_dir(out_dir)?;
    Ok(report)
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Read {
        file: path.display().to_string(),
        message: e.to_string(),
    }
}

fn data_err(path: &Path, line: usize, message: impl Into<String>) -> Error {
    Error::Data {
        file: path.display().to_string(),
        line,
        message: message.into(),
    }
}

/// Writes a gzip file with a fixed header (no time, no name), so the same input gives the same
/// bytes and an unchanged update shows no diff in git.
fn write_gz(
    path: &Path,
    body: impl FnOnce(&mut BufWriter<flate2::write::GzEncoder<File>>) -> std::io::Result<()>,
) -> Result<u64, Error> {
    let f = File::create(path).map_err(|e| read_err(path, e))?;
    let gz = flate2::GzBuilder::new().write(f, flate2::Compression::best());
    let mut w = BufWriter::new(gz);
    body(&mut w).map_err(|e| read_err(path, e))?;
    let gz = w.into_inner().map_err(|e| read_err(path, e.error()))?;
    gz.finish()
        .and_then(|f| f.sync_all())
        .map_err(|e| read_err(path, e))?;
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| read_err(path, e))
}

/// An inclusive range with a value.
type Rec<V> = (u128, u128, V);

/// Sorts, cuts overlaps, fills gaps with `None` and merges equal neighbours; the result's
/// starts increase strictly and cover `0..=max`.
fn normalize<V: PartialEq + Copy>(
    mut recs: Vec<Rec<V>>,
    max: u128,
    overlaps: &mut usize,
) -> Vec<(u128, Option<V>)> {
    recs.sort_by_key(|r| r.0);
    let mut out: Vec<(u128, Option<V>)> = Vec::with_capacity(recs.len() * 2);
    let push = |out: &mut Vec<(u128, Option<V>)>, start: u128, v: Option<V>| {
        if out.last().is_none_or(|l| l.1 != v) {
            out.push((start, v));
        }
    };
    // The first address not yet covered; `None` once the whole space is.
    let mut free: Option<u128> = Some(0);
    for (s, e, v) in recs {
        let e = e.min(max);
        let Some(f) = free else {
            *overlaps += 1;
            continue;
        };
        if e < f || s > e {
            *overlaps += usize::from(e < f);
            continue;
        }
        if s < f {
            *overlaps += 1;
        }
        if s > f {
            push(&mut out, f, None);
        }
        push(&mut out, s.max(f), Some(v));
        free = (e < max).then(|| e + 1);
    }
    if let Some(f) = free {
        push(&mut out, f, None);
    }
    // A leading unknown range says nothing a lookup does not already assume.
    if out.first().is_some_and(|f| f.1.is_none()) {
        out.remove(0);
    }
    out
}

/// Converts normalised starts to the table's key type (they are within `max` by construction).
fn narrow<K: TryFrom<u128>, V: Copy>(v: &[(u128, Option<V>)]) -> Vec<(K, Option<V>)> {
    v.iter()
        .filter_map(|(s, x)| K::try_from(*s).ok().map(|k| (k, *x)))
        .collect()
}

/// An IPv6 range as the /64 prefixes whose first address it holds, or `None` if it holds none.
fn v6_to_64(start: u128, end: u128) -> Option<(u128, u128)> {
    let s = start.div_ceil(1 << 64);
    let e = end >> 64;
    (s <= e).then_some((s, e))
}

#[derive(serde::Deserialize)]
struct CountryRec<'a> {
    #[serde(borrow)]
    country_code: Option<&'a str>,
    #[serde(borrow)]
    country: Option<IsoCode<'a>>,
}

#[derive(serde::Deserialize)]
struct IsoCode<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

type Ranges<V> = Vec<Rec<V>>;

/// IPv4 and IPv6 country ranges and the MMDB's build time.
type CountryRanges = (Ranges<[u8; 2]>, Ranges<[u8; 2]>, u64);

fn read_country(path: &Path, report: &mut Report) -> Result<CountryRanges, Error> {
    let reader = maxminddb::Reader::open_readfile(path).map_err(|e| read_err(path, e))?;
    let epoch = reader.metadata().build_epoch;
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    let networks = reader
        .networks(maxminddb::WithinOptions::default())
        .map_err(|e| read_err(path, e))?;
    for item in networks {
        let item = item.map_err(|e| read_err(path, e))?;
        let net = item.network().map_err(|e| read_err(path, e))?;
        report.country_networks += 1;
        let Some(rec) = item
            .decode::<CountryRec<'_>>()
            .map_err(|e| read_err(path, format!("{net}: {e}")))?
        else {
            continue;
        };
        let Some(code) = rec.country_code.or(rec.country.and_then(|c| c.iso_code)) else {
            continue;
        };
        let code: [u8; 2] = code
            .as_bytes()
            .try_into()
            .ok()
            .filter(|c: &[u8; 2]| c.iter().all(u8::is_ascii_uppercase))
            .ok_or_else(|| {
                read_err(
                    path,
                    format!("{net}: `{code}` is not an ISO 3166-1 alpha-2 code"),
                )
            })?;
        match (net.network(), net.broadcast()) {
            (IpAddr::V4(s), IpAddr::V4(e)) => {
                v4.push((u128::from(s.to_bits()), u128::from(e.to_bits()), code));
            }
            (IpAddr::V6(s), IpAddr::V6(e)) => {
                // IPv4 inside an IPv6 tree (`::a.b.c.d/96+n`) is reported as IPv4 by the
                // reader; anything else is IPv6 proper.
                if let Some((s, e)) = v6_to_64(s.to_bits(), e.to_bits()) {
                    v6.push((s, e, code));
                }
            }
            _ => return Err(read_err(path, format!("{net}: mixed address families"))),
        }
    }
    Ok((v4, v6, epoch))
}

/// Reads one `start,end,asn,org` CSV file (org may be quoted, with `""` for a quote).
fn read_asn_csv(
    path: &Path,
    v6: bool,
    systems: &mut Vec<(u32, String)>,
    report: &mut Report,
) -> Result<Ranges<u32>, Error> {
    let text = std::fs::read(path).map_err(|e| read_err(path, e))?;
    let mut out = Vec::new();
    let mut last_asn = None;
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        let line = std::str::from_utf8(line).map_err(|_| data_err(path, n, "not UTF-8"))?;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let mut parts = line.splitn(4, ',');
        let (Some(start), Some(end), Some(asn), Some(org)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(data_err(path, n, "expected `start,end,asn,organisation`"));
        };
        let addr = |s: &str| -> Result<u128, Error> {
            match s.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) if !v6 => Ok(u128::from(a.to_bits())),
                Ok(IpAddr::V6(a)) if v6 => Ok(a.to_bits()),
                _ => Err(data_err(
                    path,
                    n,
                    format!(
                        "`{}` is not an {} address",
                        s.chars().take(50).collect::<String>(),
                        if v6 { "IPv6" } else { "IPv4" }
                    ),
                )),
            }
        };
        let (s, e) = (addr(start)?, addr(end)?);
        if s > e {
            return Err(data_err(path, n, "the range ends before it starts"));
        }
        let asn: u32 = asn
            .parse()
            .map_err(|_| data_err(path, n, format!("`{asn}` is not an AS number")))?;
        let org = unquote(org).ok_or_else(|| data_err(path, n, "badly quoted organisation"))?;
        let org = clean_org(&org, asn);
        report.asn_rows += 1;
        if last_asn != Some(asn) {
            systems.push((asn, org));
            last_asn = Some(asn);
        }
        if v6 {
            if let Some((s, e)) = v6_to_64(s, e) {
                out.push((s, e, asn));
            }
        } else {
            out.push((s, e, asn));
        }
        // The same AS appears thousands of times; dedup now so memory stays small.
        if systems.len() > 200_000 {
            systems.sort_by_key(|s| s.0);
            systems.dedup_by_key(|s| s.0);
        }
    }
    Ok(out)
}

/// A CSV field: plain, or in double quotes with `""` standing for `"`.
fn unquote(field: &str) -> Option<String> {
    let Some(inner) = field.strip_prefix('"') else {
        return (!field.contains('"')).then(|| field.to_string());
    };
    let inner = inner.strip_suffix('"')?;
    let unescaped = inner.replace("\"\"", "\"");
    (unescaped.matches('"').count() * 2 == inner.matches('"').count()).then_some(unescaped)
}

/// An organisation name fit for one line of the format: control characters become spaces,
/// long names are cut on a character boundary, and a missing name becomes `AS<number>`.
fn clean_org(org: &str, asn: u32) -> String {
    let mut s: String = org
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > MAX_ORG_BYTES {
        let mut end = MAX_ORG_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    let s = s.trim().to_string();
    if s.is_empty() { format!("AS{asn}") } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_cuts_overlaps_fills_gaps_and_merges() {
        let mut overlaps = 0;
        let out = normalize(
            vec![
                (20, 29, 'b'),
                (10, 19, 'a'),
                (25, 40, 'c'), // overlaps b: keeps 30..=40
                (41, 50, 'c'), // merged with the previous
                (60, 255, 'd'),
            ],
            255,
            &mut overlaps,
        );
        assert_eq!(
            out,
            [
                (10, Some('a')),
                (20, Some('b')),
                (30, Some('c')),
                (51, None),
                (60, Some('d'))
            ]
        );
        assert_eq!(overlaps, 1);
        let out = normalize(vec![(0, 10, 'x'), (5, 8, 'y')], 10, &mut overlaps);
        assert_eq!(out, [(0, Some('x'))]);
        assert_eq!(overlaps, 2);
    }

    #[test]
    fn ipv6_ranges_become_64_prefixes_by_their_first_address() {
        let p = |hi: u128| hi << 64;
        assert_eq!(v6_to_64(p(5), p(6) - 1), Some((5, 5)));
        assert_eq!(v6_to_64(p(5) + 1, p(7) - 1), Some((6, 6)));
        assert_eq!(v6_to_64(p(5) + 1, p(5) + 9), None);
        assert_eq!(
            v6_to_64(p(u64::MAX as u128), u128::MAX),
            Some((u64::MAX as u128, u64::MAX as u128))
        );
    }

    #[test]
    fn csv_fields_and_org_names() {
        assert_eq!(unquote("Plain"), Some("Plain".into()));
        assert_eq!(
            unquote("\"Cloudflare, Inc.\""),
            Some("Cloudflare, Inc.".into())
        );
        assert_eq!(unquote("\"Say \"\"hi\"\"\""), Some("Say \"hi\"".into()));
        assert_eq!(unquote("\"open"), None);
        assert_eq!(unquote("a\"b"), None);
        assert_eq!(clean_org(" a\tb ", 1), "a b");
        assert_eq!(clean_org("", 42), "AS42");
        assert_eq!(clean_org(&"é".repeat(200), 1).len(), 256);
    }

    #[test]
    fn csv_errors_name_file_and_line() {
        let dir = std::env::temp_dir().join(format!("qalqan-geo-csv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.csv");
        std::fs::write(
            &f,
            "1.0.0.0,1.0.0.255,13335,\"Cloudflare, Inc.\"\n1.0.1.0,nope,5,X\n",
        )
        .unwrap();
        let e = read_asn_csv(&f, false, &mut Vec::new(), &mut Report::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}:2: `nope` is not an IPv4 address", f.display())
        );
        std::fs::write(&f, "::,::ff,5,X\n").unwrap();
        let e = read_asn_csv(&f, false, &mut Vec::new(), &mut Report::default()).unwrap_err();
        assert!(e.to_string().contains(":1: `::` is not an IPv4"), "{e}");
        std::fs::write(&f, "1.0.0.9,1.0.0.1,5,X\n").unwrap();
        let e = read_asn_csv(&f, false, &mut Vec::new(), &mut Report::default()).unwrap_err();
        assert!(e.to_string().contains(":1: the range ends before"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
