//! The data files: plain UTF-8 text, one range per line, gzip-compressed on disk.
//!
//! Text rather than a binary layout so that a file can be checked by eye (`zcat | less`),
//! diffed between two updates, and so that every problem has a line number. Compressed, the
//! text is about as small as a hand-made binary encoding would be.
//!
//! ```text
//! qalqan-geo country 1          qalqan-geo asn 1
//! # source, date, licence       # source, date, licence
//! v4 341573                     systems 91065 2263870
//! 1000000 AU                    as 13335 Cloudflare, Inc.
//! 100 CN                        as 15169 Google LLC
//! …                             …
//! v6 267652                     v4 466961
//! 20010000 …                    1000000 13335
//! …                             …
//! end                           v6 177638
//!                               …
//!                               end
//! ```
//!
//! Each section starts with its number of lines, so the loader allocates every table once at
//! its final size and a file cut short or padded is an error, not silently different data.
//!
//! A range line is `START VALUE`: `START` is hexadecimal, absolute on a section's first line and
//! the (positive) distance from the previous start after that; the value holds from `START` up
//! to the next line's start, or to the end of the address space. `-` means "unknown". IPv4
//! starts are addresses; IPv6 starts are /64 prefixes (the upper 64 bits of an address), since a
//! /64 is one subscriber's network and finer detail would double the memory for nothing.
//! Country values are ISO 3166-1 alpha-2 codes in upper case; ASN values are AS numbers in
//! decimal, each named by one `as NUMBER ORG` line in the `systems` section, in ascending order.
//! The last line is `end`, so a truncated file is an error rather than missing data.

use std::io::{self, BufRead, Read as _, Write};

use crate::{Asn, Error};

/// Longest organisation name kept, in bytes (the longest in the shipped data is 169).
pub const MAX_ORG_BYTES: usize = 256;

const COUNTRY_MAGIC: &str = "qalqan-geo country 1";
const ASN_MAGIC: &str = "qalqan-geo asn 1";
/// Most comment lines kept from a file.
const MAX_COMMENTS: usize = 64;
/// Marks "no country" in a country table (index 0 of `codes`).
const NO_COUNTRY: u8 = 0;
/// Marks "no AS" in an ASN table.
const NO_ASN: u32 = u32::MAX;

/// A sorted list of range starts and the value of each range.
#[derive(Debug, Default)]
struct Table<K, V> {
    starts: Vec<K>,
    values: Vec<V>,
}

impl<K: Ord + Copy, V: Copy> Table<K, V> {
    fn get(&self, key: K) -> Option<V> {
        let i = self.starts.partition_point(|s| *s <= key);
        self.values.get(i.checked_sub(1)?).copied()
    }
}

impl<K, V> Table<K, V> {
    fn heap_bytes(&self) -> usize {
        self.starts.capacity() * size_of::<K>() + self.values.capacity() * size_of::<V>()
    }
}

/// The parsed country file.
#[derive(Debug, Default)]
pub(crate) struct CountryData {
    /// Index 0 is "no country".
    codes: Vec<[u8; 2]>,
    v4: Table<u32, u8>,
    v6: Table<u64, u8>,
    comments: Vec<String>,
}

impl CountryData {
    pub(crate) fn v4(&self, addr: u32) -> Option<[u8; 2]> {
        self.code(self.v4.get(addr)?)
    }

    pub(crate) fn v6(&self, prefix64: u64) -> Option<[u8; 2]> {
        self.code(self.v6.get(prefix64)?)
    }

    fn code(&self, i: u8) -> Option<[u8; 2]> {
        if i == NO_COUNTRY {
            return None;
        }
        self.codes.get(usize::from(i)).copied()
    }

    pub(crate) fn ranges(&self) -> (usize, usize) {
        (self.v4.starts.len(), self.v6.starts.len())
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.codes.capacity() * 2
            + self.v4.heap_bytes()
            + self.v6.heap_bytes()
            + self.comments.iter().map(String::capacity).sum::<usize>()
    }

    pub(crate) fn comments(&self) -> &[String] {
        &self.comments
    }
}

/// One autonomous system; its name is `orgs[org_start..org_start + org_len]`.
#[derive(Debug, Clone, Copy)]
struct System {
    number: u32,
    org_start: u32,
    org_len: u32,
}

/// The parsed ASN file. Organisation names live in one string, so 90,000 names cost one
/// allocation and no per-name header.
#[derive(Debug, Default)]
pub(crate) struct AsnData {
    /// Sorted by number.
    systems: Vec<System>,
    orgs: String,
    /// Values are indexes into `systems`.
    v4: Table<u32, u32>,
    v6: Table<u64, u32>,
    comments: Vec<String>,
}

impl AsnData {
    pub(crate) fn v4(&self, addr: u32) -> Option<Asn<'_>> {
        self.system(self.v4.get(addr)?)
    }

    pub(crate) fn v6(&self, prefix64: u64) -> Option<Asn<'_>> {
        self.system(self.v6.get(prefix64)?)
    }

    pub(crate) fn org(&self, number: u32) -> Option<&str> {
        let i = self
            .systems
            .binary_search_by_key(&number, |s| s.number)
            .ok()?;
        Some(self.system(u32::try_from(i).ok()?)?.org)
    }

    fn system(&self, i: u32) -> Option<Asn<'_>> {
        if i == NO_ASN {
            return None;
        }
        let s = self.systems.get(usize::try_from(i).ok()?)?;
        let start = usize::try_from(s.org_start).ok()?;
        let end = start.checked_add(usize::try_from(s.org_len).ok()?)?;
        Some(Asn {
            number: s.number,
            org: self.orgs.get(start..end)?,
        })
    }

    pub(crate) fn ranges(&self) -> (usize, usize) {
        (self.v4.starts.len(), self.v6.starts.len())
    }

    pub(crate) fn systems(&self) -> usize {
        self.systems.len()
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.systems.capacity() * size_of::<System>()
            + self.orgs.capacity()
            + self.v4.heap_bytes()
            + self.v6.heap_bytes()
            + self.comments.iter().map(String::capacity).sum::<usize>()
    }

    pub(crate) fn comments(&self) -> &[String] {
        &self.comments
    }
}

/// Lines of a stream, counted, each checked to be UTF-8 and at most [`MAX_LINE_BYTES`] long.
/// The caller owns the line buffer, so an error can name the line while the text is in use.
struct Lines<'a, R> {
    reader: R,
    raw: Vec<u8>,
    line: usize,
    file: &'a str,
}

/// Longest line accepted, in bytes.
const MAX_LINE_BYTES: usize = 1024;
/// Most ranges accepted in one section (the shipped data has under 500,000).
const MAX_RANGES: usize = 1 << 24;
/// Most autonomous systems accepted (the shipped data has about 91,000).
const MAX_SYSTEMS: usize = 1 << 22;

impl<'a, R: BufRead> Lines<'a, R> {
    fn new(reader: R, file: &'a str) -> Self {
        Lines {
            reader,
            raw: Vec::with_capacity(128),
            line: 0,
            file,
        }
    }

    /// Reads the next line, without its `\n`, into `buf`; `false` at the end of the stream.
    fn read(&mut self, buf: &mut String) -> Result<bool, Error> {
        self.raw.clear();
        buf.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut self.raw)
            .map_err(|e| Error::Data {
                file: self.file.to_string(),
                line: self.line + 1,
                message: format!("cannot read: {e}"),
            })?;
        if n == 0 {
            return Ok(false);
        }
        self.line += 1;
        if self.raw.last() == Some(&b'\n') {
            self.raw.pop();
        } else if n > MAX_LINE_BYTES {
            return Err(self.err(format!("a line longer than {MAX_LINE_BYTES} bytes")));
        }
        let s = std::str::from_utf8(&self.raw).map_err(|_| self.err("not UTF-8 text"))?;
        buf.push_str(s);
        Ok(true)
    }

    /// Like [`read`](Self::read), but the end of the stream is an error.
    fn next(&mut self, buf: &mut String) -> Result<(), Error> {
        if self.read(buf)? {
            Ok(())
        } else {
            self.line += 1;
            Err(self.err("the file ends early (is it truncated? the last line is `end`)"))
        }
    }
}

impl<R> Lines<'_, R> {
    fn err(&self, message: impl Into<String>) -> Error {
        Error::Data {
            file: self.file.to_string(),
            line: self.line,
            message: message.into(),
        }
    }
}

/// Reads the magic line and the `#` comments; leaves the first other line in `buf`.
fn header<R: BufRead>(
    lines: &mut Lines<'_, R>,
    buf: &mut String,
    magic: &str,
    comments: &mut Vec<String>,
) -> Result<(), Error> {
    lines.next(buf)?;
    if buf != magic {
        return Err(lines.err(format!(
            "expected `{magic}` (is this a qalqan-geo file of the right kind?)"
        )));
    }
    loop {
        lines.next(buf)?;
        match buf.strip_prefix('#') {
            Some(c) => {
                if comments.len() < MAX_COMMENTS {
                    comments.push(c.trim().chars().take(512).collect());
                }
            }
            None => return Ok(()),
        }
    }
}

/// `KEYWORD COUNT` (a section header) in `buf`: returns the count, at most `max`.
fn section<R>(lines: &Lines<'_, R>, buf: &str, keyword: &str, max: usize) -> Result<usize, Error> {
    let count = buf
        .strip_prefix(keyword)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| lines.err(format!("expected `{keyword} COUNT`, found `{}`", clip(buf))))?;
    count
        .parse::<usize>()
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| lines.err(format!("`{}` is not a count up to {max}", clip(count))))
}

/// `systems COUNT BYTES`: how many `as` lines follow and how many bytes their organisation
/// names have together, so both are allocated once.
fn systems_header<R>(lines: &Lines<'_, R>, buf: &str) -> Result<(usize, usize), Error> {
    let (count, bytes) = buf
        .strip_prefix("systems ")
        .and_then(|r| r.split_once(' '))
        .ok_or_else(|| {
            lines.err(format!(
                "expected `systems COUNT BYTES`, found `{}`",
                clip(buf)
            ))
        })?;
    let count = count
        .parse::<usize>()
        .ok()
        .filter(|n| *n <= MAX_SYSTEMS)
        .ok_or_else(|| {
            lines.err(format!(
                "`{}` is not a count up to {MAX_SYSTEMS}",
                clip(count)
            ))
        })?;
    let max_bytes = count.saturating_mul(MAX_ORG_BYTES);
    let bytes = bytes
        .parse::<usize>()
        .ok()
        .filter(|n| *n <= max_bytes)
        .ok_or_else(|| {
            lines.err(format!(
                "`{}` is not a byte count up to {max_bytes} ({MAX_ORG_BYTES} per system)",
                clip(bytes)
            ))
        })?;
    Ok((count, bytes))
}

/// Reads the `count` `START VALUE` lines of a section; leaves the next line in `buf`.
fn ranges<R, K, V>(
    lines: &mut Lines<'_, R>,
    buf: &mut String,
    count: usize,
    table: &mut Table<K, V>,
    mut value: impl FnMut(&str) -> Result<V, String>,
) -> Result<(), Error>
where
    R: BufRead,
    K: TryFrom<u64> + Copy,
    u64: From<K>,
{
    // The count is known, so the vectors are allocated once at their final size: no doubling,
    // no copy when shrinking, and the memory peak while loading is the tables themselves.
    table.starts.reserve_exact(count);
    table.values.reserve_exact(count);
    let mut prev: Option<u64> = None;
    for _ in 0..count {
        lines.next(buf)?;
        let Some((start, v)) = buf.split_once(' ') else {
            return Err(lines.err(format!(
                "expected `START VALUE` ({count} ranges in this section)"
            )));
        };
        if start.is_empty() || start.len() > 16 || !start.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(lines.err(format!("`{}` is not a hexadecimal start", clip(start))));
        }
        let n = u64::from_str_radix(start, 16)
            .map_err(|_| lines.err(format!("`{start}` is not a hexadecimal start")))?;
        let absolute = match prev {
            None => Some(n),
            Some(_) if n == 0 => {
                return Err(lines.err("a start distance of 0: starts must increase"));
            }
            Some(p) => p.checked_add(n),
        };
        let key = absolute
            .and_then(|a| K::try_from(a).ok())
            .ok_or_else(|| lines.err("the start is beyond the end of the address space"))?;
        let v = value(v).map_err(|m| lines.err(m))?;
        prev = Some(u64::from(key));
        table.starts.push(key);
        table.values.push(v);
    }
    lines.next(buf)
}

/// `end`, then nothing but blank lines.
fn finish<R: BufRead>(lines: &mut Lines<'_, R>, buf: &mut String) -> Result<(), Error> {
    if buf != "end" {
        return Err(lines.err(format!(
            "expected `end` (is a section's count wrong?), found `{}`",
            clip(buf)
        )));
    }
    while lines.read(buf)? {
        if !buf.trim().is_empty() {
            return Err(lines.err("text after `end`"));
        }
    }
    Ok(())
}

fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Parses a country file.
pub(crate) fn parse_country(text: impl BufRead, file: &str) -> Result<CountryData, Error> {
    let mut lines = Lines::new(text, file);
    let mut buf = String::new();
    let mut d = CountryData {
        codes: vec![*b"--"],
        ..CountryData::default()
    };
    header(&mut lines, &mut buf, COUNTRY_MAGIC, &mut d.comments)?;
    let codes = &mut d.codes;
    let mut value = |v: &str| -> Result<u8, String> {
        if v == "-" {
            return Ok(NO_COUNTRY);
        }
        let code: [u8; 2] = v
            .as_bytes()
            .try_into()
            .ok()
            .filter(|c: &[u8; 2]| c.iter().all(u8::is_ascii_uppercase))
            .ok_or_else(|| {
                format!(
                    "`{}` is not a country code (two upper-case letters) or `-`",
                    clip(v)
                )
            })?;
        if let Some(i) = codes.iter().position(|c| *c == code) {
            return u8::try_from(i).map_err(|_| "too many countries".to_string());
        }
        let i = u8::try_from(codes.len()).map_err(|_| "more than 255 countries".to_string())?;
        codes.push(code);
        Ok(i)
    };
    let n = section(&lines, &buf, "v4", MAX_RANGES)?;
    ranges(&mut lines, &mut buf, n, &mut d.v4, &mut value)?;
    let n = section(&lines, &buf, "v6", MAX_RANGES)?;
    ranges(&mut lines, &mut buf, n, &mut d.v6, &mut value)?;
    finish(&mut lines, &mut buf)?;
    Ok(d)
}

/// Parses an ASN file.
pub(crate) fn parse_asn(text: impl BufRead, file: &str) -> Result<AsnData, Error> {
    let mut lines = Lines::new(text, file);
    let mut buf = String::new();
    let mut d = AsnData::default();
    header(&mut lines, &mut buf, ASN_MAGIC, &mut d.comments)?;
    let (n, org_bytes) = systems_header(&lines, &buf)?;
    d.systems.reserve_exact(n);
    d.orgs.reserve_exact(org_bytes);
    for _ in 0..n {
        lines.next(&mut buf)?;
        let (num, org) = buf
            .strip_prefix("as ")
            .and_then(|rest| rest.split_once(' '))
            .ok_or_else(|| {
                lines.err(format!(
                    "expected `as NUMBER ORGANISATION` ({n} systems in this section)"
                ))
            })?;
        let number: u32 = num
            .parse()
            .map_err(|_| lines.err(format!("`{}` is not an AS number", clip(num))))?;
        if d.systems.last().is_some_and(|s| s.number >= number) {
            return Err(lines.err("AS numbers must be listed once each, in ascending order"));
        }
        if org.is_empty() || org.len() > MAX_ORG_BYTES || org.chars().any(char::is_control) {
            return Err(lines.err(format!(
                "the organisation must be 1 to {MAX_ORG_BYTES} bytes without control characters"
            )));
        }
        let too_many = || lines.err("too much organisation text");
        let org_start = u32::try_from(d.orgs.len()).map_err(|_| too_many())?;
        let org_len = u32::try_from(org.len()).map_err(|_| too_many())?;
        d.orgs.push_str(org);
        d.systems.push(System {
            number,
            org_start,
            org_len,
        });
    }
    if d.orgs.len() != org_bytes {
        return Err(lines.err(format!(
            "the organisations have {} bytes, the `systems` line says {org_bytes}",
            d.orgs.len()
        )));
    }
    lines.next(&mut buf)?;
    let systems = &d.systems;
    let value = |v: &str| -> Result<u32, String> {
        if v == "-" {
            return Ok(NO_ASN);
        }
        let n: u32 = v
            .parse()
            .map_err(|_| format!("`{}` is not an AS number or `-`", clip(v)))?;
        let i = systems
            .binary_search_by_key(&n, |s| s.number)
            .map_err(|_| format!("AS{n} has no `as {n} …` line"))?;
        u32::try_from(i).map_err(|_| "too many systems".to_string())
    };
    let n = section(&lines, &buf, "v4", MAX_RANGES)?;
    ranges(&mut lines, &mut buf, n, &mut d.v4, value)?;
    let n = section(&lines, &buf, "v6", MAX_RANGES)?;
    ranges(&mut lines, &mut buf, n, &mut d.v6, value)?;
    finish(&mut lines, &mut buf)?;
    Ok(d)
}

/// Writes `START VALUE` lines (hexadecimal distances, see the module docs).
fn write_ranges<K: Copy + Into<u64>, V>(
    out: &mut impl Write,
    ranges: &[(K, Option<V>)],
    value: impl Fn(&V) -> String,
) -> io::Result<()> {
    let mut prev: Option<u64> = None;
    for (start, v) in ranges {
        let s: u64 = (*start).into();
        let d = match prev {
            None => s,
            Some(p) if s > p => s - p,
            Some(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "range starts must increase",
                ));
            }
        };
        prev = Some(s);
        let v = v.as_ref().map_or_else(|| "-".to_string(), &value);
        writeln!(out, "{d:x} {v}")?;
    }
    Ok(())
}

fn write_comments(out: &mut impl Write, comments: &[String]) -> io::Result<()> {
    for c in comments {
        writeln!(out, "# {}", c.replace(['\n', '\r'], " "))?;
    }
    Ok(())
}

/// Writes a country file. IPv6 starts are /64 prefixes.
pub fn write_country(
    out: &mut impl Write,
    comments: &[String],
    v4: &[(u32, Option<[u8; 2]>)],
    v6: &[(u64, Option<[u8; 2]>)],
) -> io::Result<()> {
    writeln!(out, "{COUNTRY_MAGIC}")?;
    write_comments(out, comments)?;
    let code = |c: &[u8; 2]| String::from_utf8_lossy(c).into_owned();
    writeln!(out, "v4 {}", v4.len())?;
    write_ranges(out, v4, code)?;
    writeln!(out, "v6 {}", v6.len())?;
    write_ranges(out, v6, code)?;
    writeln!(out, "end")
}

/// Writes an ASN file. `systems` must be sorted by number, once each; IPv6 starts are /64
/// prefixes.
pub fn write_asn(
    out: &mut impl Write,
    comments: &[String],
    systems: &[(u32, String)],
    v4: &[(u32, Option<u32>)],
    v6: &[(u64, Option<u32>)],
) -> io::Result<()> {
    writeln!(out, "{ASN_MAGIC}")?;
    write_comments(out, comments)?;
    let org_bytes: usize = systems.iter().map(|(_, o)| o.len()).sum();
    writeln!(out, "systems {} {org_bytes}", systems.len())?;
    for (n, org) in systems {
        writeln!(out, "as {n} {org}")?;
    }
    writeln!(out, "v4 {}", v4.len())?;
    write_ranges(out, v4, u32::to_string)?;
    writeln!(out, "v6 {}", v6.len())?;
    write_ranges(out, v6, u32::to_string)?;
    writeln!(out, "end")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const COUNTRY: &str = "qalqan-geo country 1\n# test data\nv4 5\n0 -\n1000000 AU\n100 -\n5e37ff00 KZ\n40000 -\nv6 2\n20010db800000000 NL\n1 -\nend\n";
    const ASN: &str = "qalqan-geo asn 1\n# test\nsystems 2 33\nas 9198 JSC Kazakhtelecom\nas 13335 Cloudflare, Inc.\nv4 4\n1000000 13335\n100 -\n5e380000 9198\n40000 -\nv6 1\n2a02000000000000 9198\nend\n";

    #[test]
    fn country_ranges_hold_until_the_next_start() {
        let d = parse_country(COUNTRY.as_bytes(), "t").unwrap();
        assert_eq!(d.v4(0x0100_0000), Some(*b"AU"));
        assert_eq!(d.v4(0x0100_00ff), Some(*b"AU"));
        assert_eq!(d.v4(0x0100_0100), None);
        assert_eq!(d.v4(0), None);
        // 0x01000100 + 0x5e37ff00 = 95.56.0.0, the start of Kazakhtelecom's /14.
        assert_eq!(d.v4(0x5f38_0000), Some(*b"KZ"));
        assert_eq!(d.v4(0x5f3b_ffff), Some(*b"KZ"));
        assert_eq!(d.v4(0x5f37_ffff), None);
        assert_eq!(d.v4(0x5f3c_0000), None);
        assert_eq!(d.v6(0x2001_0db8_0000_0000), Some(*b"NL"));
        assert_eq!(d.v6(0x2001_0db8_0000_0001), None);
        assert_eq!(d.v6(0x2001_0db7_ffff_ffff), None);
        assert_eq!(d.comments(), ["test data"]);
    }

    #[test]
    fn asn_ranges_name_their_organisation() {
        let d = parse_asn(ASN.as_bytes(), "t").unwrap();
        let a = d.v4(0x0100_0001).unwrap();
        assert_eq!((a.number, a.org), (13335, "Cloudflare, Inc."));
        assert_eq!(d.v4(0x0100_0100), None);
        assert_eq!(d.v4(0x5f38_0100).unwrap().org, "JSC Kazakhtelecom");
        assert_eq!(d.v6(0x2a02_0000_0000_0000).unwrap().number, 9198);
        assert_eq!(
            d.v6(u64::MAX).unwrap().number,
            9198,
            "the last range runs to the end"
        );
        assert_eq!(d.org(13335), Some("Cloudflare, Inc."));
        assert_eq!(d.org(1), None);
    }

    #[test]
    fn written_files_read_back() {
        let mut out = Vec::new();
        let v4 = [(0, None), (16_777_216, Some(*b"AU")), (16_777_472, None)];
        let v6 = [(0x2001_0db8_0000_0000, Some(*b"NL"))];
        write_country(&mut out, &["a\nb".into()], &v4, &v6).unwrap();
        let d = parse_country(&out[..], "t").unwrap();
        assert_eq!(d.v4(16_777_300), Some(*b"AU"));
        assert_eq!(d.comments(), ["a b"]);
        let mut out = Vec::new();
        let systems = [(7, "Seven".to_string()), (9, "Nine".to_string())];
        write_asn(
            &mut out,
            &[],
            &systems,
            &[(5, Some(9)), (6, None)],
            &[(1, Some(7))],
        )
        .unwrap();
        let d = parse_asn(&out[..], "t").unwrap();
        assert_eq!(d.v4(5).unwrap().org, "Nine");
        assert_eq!(d.v6(2).unwrap().org, "Seven");
        assert!(write_country(&mut Vec::new(), &[], &[(5, None), (5, None)], &[]).is_err());
    }

    /// Every kind of mistake is an error with the right line, never a panic.
    #[test]
    fn malformed_files_are_errors_with_line_numbers() {
        let cases: &[(&str, &str, usize)] = &[
            ("", "ends early", 1),
            ("qalqan-geo asn 1\n", "expected `qalqan-geo country 1`", 1),
            ("qalqan-geo country 1\nv4 2\n0 -\n", "ends early", 4),
            (
                "qalqan-geo country 1\nv4 1\n0 XYZ\n",
                "not a country code",
                3,
            ),
            (
                "qalqan-geo country 1\nv4 1\n0 kz\n",
                "not a country code",
                3,
            ),
            (
                "qalqan-geo country 1\nv4 1\nzz KZ\n",
                "not a hexadecimal",
                3,
            ),
            (
                "qalqan-geo country 1\nv4 1\n+5 KZ\n",
                "not a hexadecimal",
                3,
            ),
            (
                "qalqan-geo country 1\nv4 2\n5 KZ\n0 US\n",
                "must increase",
                4,
            ),
            (
                "qalqan-geo country 1\nv4 2\nffffffff KZ\n1 US\n",
                "beyond the end",
                4,
            ),
            (
                "qalqan-geo country 1\nv4 1\n100000000 KZ\n",
                "beyond the end",
                3,
            ),
            (
                "qalqan-geo country 1\nv4 0\nv6 0\nend\nmore\n",
                "text after `end`",
                5,
            ),
            ("qalqan-geo country 1\nv6 0\n", "expected `v4 COUNT`", 2),
            ("qalqan-geo country 1\nv4\n", "expected `v4 COUNT`", 2),
            ("qalqan-geo country 1\nv4 99999999999\n", "not a count", 2),
            (
                "qalqan-geo country 1\nv4 1\nv6 0\n",
                "not a hexadecimal start",
                3,
            ),
            (
                "qalqan-geo country 1\nv4 1\nend\n",
                "expected `START VALUE`",
                3,
            ),
            (
                "qalqan-geo country 1\nv4 1\n0 KZ\n1 KZ\nv6 0\nend\n",
                "expected `v6 COUNT`",
                4,
            ),
            (
                "qalqan-geo country 1\nv4 0\nv6 0\nnot end\n",
                "expected `end`",
                4,
            ),
        ];
        for (text, want, line) in cases {
            let e = parse_country(text.as_bytes(), "c.txt").unwrap_err();
            let Error::Data {
                file,
                line: l,
                message,
            } = &e
            else {
                panic!("{e}")
            };
            assert_eq!(file, "c.txt");
            assert!(message.contains(want), "{text:?}: {e}");
            assert_eq!(l, line, "{text:?}: {e}");
        }
        let e = parse_country(&b"qalqan-geo country 1\nv4 1\n0 \xff\n"[..], "c").unwrap_err();
        assert_eq!(e.to_string(), "c:3: not UTF-8 text");
        let long = format!("qalqan-geo country 1\n#{}\n", "x".repeat(5000));
        let e = parse_country(long.as_bytes(), "c").unwrap_err();
        assert_eq!(e.to_string(), "c:2: a line longer than 1024 bytes");
        let asn_cases: &[(&str, &str, usize)] = &[
            (
                "qalqan-geo asn 1\nsystems 1 3\nas x Foo\n",
                "not an AS number",
                3,
            ),
            (
                "qalqan-geo asn 1\nsystems 1 0\nas 5\n",
                "expected `as NUMBER",
                3,
            ),
            (
                "qalqan-geo asn 1\nsystems 2 2\nas 5 A\nas 5 B\n",
                "ascending",
                4,
            ),
            ("qalqan-geo asn 1\nsystems 1 3\nas 5 A\tB\n", "control", 3),
            (
                "qalqan-geo asn 1\nsystems 1 9\nas 5 A\nv4 0\n",
                "the `systems` line says 9",
                3,
            ),
            ("qalqan-geo asn 1\nsystems 1 999\n", "not a byte count", 2),
            (
                "qalqan-geo asn 1\nsystems 0 0\nv4 1\n0 7\n",
                "AS7 has no",
                4,
            ),
            (
                "qalqan-geo asn 1\nsystems 0 0\nv4 1\n0 -1\n",
                "not an AS number",
                4,
            ),
            (
                "qalqan-geo asn 1\nv4 0\n",
                "expected `systems COUNT BYTES`",
                2,
            ),
        ];
        for (text, want, line) in asn_cases {
            let e = parse_asn(text.as_bytes(), "a.txt").unwrap_err();
            assert!(e.to_string().contains(want), "{text:?}: {e}");
            assert!(
                e.to_string().starts_with(&format!("a.txt:{line}: ")),
                "{text:?}: {e}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_country(&bytes[..], "x");
            let _ = parse_asn(&bytes[..], "x");
            let _ = crate::Geo::from_gz(&bytes, "c", &bytes, "a");
        }

        /// Plausible lines in any order: closer to real files than random bytes, so the
        /// parser's deeper branches are reached.
        #[test]
        fn arbitrary_lines_never_panic(
            lines in proptest::collection::vec(
                prop_oneof![
                    "v4 [0-9]{1,2}",
                    "v6 [0-9]{1,2}",
                    "systems [0-9]{1,2} [0-9]{1,3}",
                    Just("end".to_string()),
                    Just("-".to_string()),
                    "[0-9a-fA-F]{0,18} [A-Z-]{1,3}",
                    "[0-9a-f]{1,17} [0-9-]{1,11}",
                    "as [0-9]{0,11} .{0,20}",
                    "# .{0,20}",
                    ".{0,30}",
                ],
                0..40,
            ),
            kind in 0..2u8,
        ) {
            let magic = if kind == 0 { COUNTRY_MAGIC } else { ASN_MAGIC };
            let text = format!("{magic}\n{}\n", lines.join("\n"));
            if let Ok(d) = parse_country(text.as_bytes(), "x") {
                for k in [0u32, 1, 0x7fff_ffff, u32::MAX] {
                    let _ = d.v4(k);
                }
                let _ = d.v6(u64::MAX);
            }
            if let Ok(d) = parse_asn(text.as_bytes(), "x") {
                for k in [0u32, 1, 0x7fff_ffff, u32::MAX] {
                    let _ = d.v4(k);
                    let _ = d.org(k);
                }
                let _ = d.v6(0);
            }
        }

        /// Written tables read back to the same answers for any address.
        #[test]
        fn round_trip(
            mut starts in proptest::collection::btree_set(any::<u32>(), 1..50),
            probes in proptest::collection::vec(any::<u32>(), 1..50),
        ) {
            let starts: Vec<u32> = std::mem::take(&mut starts).into_iter().collect();
            let v4: Vec<(u32, Option<u32>)> = starts
                .iter()
                .enumerate()
                .map(|(i, s)| (*s, (i % 3 != 0).then_some(i as u32 % 5)))
                .collect();
            let systems: Vec<(u32, String)> = (0..5).map(|n| (n, format!("org {n}"))).collect();
            let mut out = Vec::new();
            write_asn(&mut out, &[], &systems, &v4, &[]).unwrap();
            let d = parse_asn(&out[..], "x").unwrap();
            for p in probes {
                let want = v4.iter().rev().find(|(s, _)| *s <= p).and_then(|(_, v)| *v);
                prop_assert_eq!(d.v4(p).map(|a| a.number), want);
            }
        }
    }
}
