//! Checking an evidence package on its own, with no database: what `qalqan evidence verify`
//! runs on a police officer's or lawyer's machine.
//!
//! The package is a tar file or the directory it was unpacked into. Three things are checked:
//! every file named in `manifest.json` is present with the size and SHA-256 written there, and
//! nothing else is present (apart from the manifest itself and its timestamp token); every line
//! of `custody.jsonl` carries the chain value recomputed from its fields and the line before it;
//! and, when `manifest.json.tsr` is present, the token's message imprint is the SHA-256 of
//! `manifest.json`. The token's signature is left to `openssl ts -verify` (see `VERIFY.txt`),
//! because checking it needs the authority's certificate, which only the recipient can trust.
//!
//! This module must never extract anything to disk: file names in a package are data, and a
//! name such as `../../.bashrc` is reported, not followed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::{self, Read};
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::tsp;

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The RFC 3161 timestamp reply over `manifest.json`, when one was obtained.
pub const TSR: &str = "manifest.json.tsr";
/// The custody log's file name.
pub const CUSTODY: &str = "custody.jsonl";
/// The `format` value of the manifests this code writes and reads.
pub const FORMAT: &str = "qalqan-evidence/1";

/// Largest manifest, custody log or token read into memory; anything bigger is not ours.
const MAX_SMALL: u64 = 64 * 1024 * 1024;
/// Most problems listed; a package with more is broken everywhere, and the list must stay
/// readable.
const MAX_PROBLEMS: usize = 1_000;

/// JSON with object keys sorted and no spaces: the same value always gives the same bytes, so
/// the manifest's hash can be recomputed by anyone who reads the same facts.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(x) = m.get(k) {
                    write_canonical(x, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    crate::accounts::hex(&Sha256::digest(data))
}

/// The custody chain, exactly as the store computes it when it appends an entry:
/// `hex(SHA-256(prev ‖ "|" ‖ sha256 ‖ "|" ‖ incident_row ‖ "|" ‖ actor ‖ "|" ‖ action ‖ "|" ‖ at_ms))`,
/// where `prev` is the previous entry's chain for the same attachment as hex text (empty for the
/// first) and the numbers are written in decimal.
pub fn custody_chain(
    prev: &str,
    sha: &str,
    incident_row: i64,
    actor: &str,
    action: &str,
    at_ms: i64,
) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(format!("|{sha}|{incident_row}|{actor}|{action}|{at_ms}").as_bytes());
    crate::accounts::hex(&h.finalize())
}

/// Something that does not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The file's size or SHA-256 is not what the manifest says.
    Changed(String),
    /// The manifest names the file and the package does not have it.
    Missing(String),
    /// The package has a file the manifest does not name.
    Extra(String),
    /// The package has two entries with this name.
    Duplicate(String),
    /// The manifest is missing or cannot be read.
    Manifest(String),
    /// A custody entry does not chain (1-based line number, and why).
    Custody(usize, String),
    /// The timestamp token does not belong to this manifest, or cannot be read.
    Timestamp(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Changed(p) => write!(f, "changed: {p}"),
            Problem::Missing(p) => write!(f, "missing: {p}"),
            Problem::Extra(p) => write!(f, "extra (not in the manifest): {p}"),
            Problem::Duplicate(p) => write!(f, "duplicate entry: {p}"),
            Problem::Manifest(m) => write!(f, "{MANIFEST}: {m}"),
            Problem::Custody(line, m) => write!(f, "{CUSTODY} line {line}: {m}"),
            Problem::Timestamp(m) => write!(f, "{TSR}: {m}"),
        }
    }
}

/// What a check found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Files named in the manifest that matched.
    pub files_ok: usize,
    /// Files named in the manifest.
    pub files: usize,
    /// Custody entries whose chain was recomputed and matched.
    pub custody_entries: usize,
    /// `genTime` of the timestamp token, when one was present and matched.
    pub timestamp: Option<String>,
    /// The package's creation time, from the manifest.
    pub created_at: Option<String>,
    /// SHA-256 of `manifest.json`, for comparison with the value the sender gave separately.
    pub manifest_sha256: Option<String>,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, p: Problem) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p);
        }
    }
}

/// What was found for one file of the package.
struct Seen {
    size: u64,
    sha256: String,
}

/// The package as read: every regular file's size and hash, and the bytes of the few files the
/// check reads.
#[derive(Default)]
struct Contents {
    files: BTreeMap<String, Seen>,
    small: HashMap<String, Vec<u8>>,
    problems: Vec<Problem>,
}

impl Contents {
    /// Hashes one file as it streams past; keeps the bytes of the manifest, the custody log and
    /// the token.
    fn add(&mut self, name: String, mut r: impl Read) -> io::Result<()> {
        if self.files.contains_key(&name) {
            self.problems.push(Problem::Duplicate(name));
            return Ok(());
        }
        let keep = name == MANIFEST || name == CUSTODY || name == TSR;
        let mut h = Sha256::new();
        let mut kept = Vec::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            let chunk = buf.get(..n).unwrap_or_default();
            h.update(chunk);
            size += n as u64;
            if keep && size <= MAX_SMALL {
                kept.extend_from_slice(chunk);
            }
        }
        if keep && size <= MAX_SMALL {
            self.small.insert(name.clone(), kept);
        }
        self.files.insert(
            name,
            Seen {
                size,
                sha256: crate::accounts::hex(&h.finalize()),
            },
        );
        Ok(())
    }
}

/// A package path as the manifest writes it: relative, `/`-separated, no `.` or `..` parts.
/// Leading `./` (as `tar -cf x.tar .` writes) is dropped.
fn clean_name(raw: &str) -> Option<String> {
    let s = raw.trim_start_matches("./");
    if s.is_empty() || s.starts_with('/') || s.contains('\\') || s.contains('\0') {
        return None;
    }
    let parts: Vec<&str> = s.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|p| *p == "." || *p == "..") {
        return None;
    }
    Some(parts.join("/"))
}

fn read_dir(root: &Path, dir: &Path, c: &mut Contents, depth: usize) -> io::Result<()> {
    if depth > 8 {
        c.problems.push(Problem::Extra(dir.display().to_string()));
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<io::Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let name = rel
            .components()
            .map(|p| p.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        // Symbolic links are not followed: a package has only regular files.
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            read_dir(root, &path, c, depth + 1)?;
        } else if meta.is_file() {
            c.add(name, std::fs::File::open(&path)?)?;
        } else {
            c.problems
                .push(Problem::Extra(format!("{name} (not a regular file)")));
        }
    }
    Ok(())
}

fn read_tar(path: &Path, c: &mut Contents) -> io::Result<()> {
    let mut a = tar::Archive::new(std::fs::File::open(path)?);
    for e in a.entries()? {
        let e = e?;
        let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let kind = e.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        let Some(name) = clean_name(&raw) else {
            c.problems
                .push(Problem::Extra(format!("{raw} (unsafe name)")));
            continue;
        };
        if !kind.is_file() {
            c.problems
                .push(Problem::Extra(format!("{name} (not a regular file)")));
            continue;
        }
        c.add(name, e)?;
    }
    Ok(())
}

/// Checks a package: a tar file, or the directory it was unpacked into. `Err` only when the
/// package cannot be read at all (no such file, not a tar file); everything else is a
/// [`Problem`] in the report.
pub fn verify_path(path: &Path) -> io::Result<Report> {
    let mut c = Contents::default();
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        read_dir(path, path, &mut c, 0)?;
    } else {
        read_tar(path, &mut c)?;
    }
    Ok(check(c))
}

/// One file as the manifest lists it.
struct Listed {
    size: u64,
    sha256: String,
}

fn manifest_files(m: &Value) -> Result<BTreeMap<String, Listed>, String> {
    let files = m
        .get("files")
        .and_then(Value::as_array)
        .ok_or("no \"files\" list")?;
    let mut out = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        let path = f.get("path").and_then(Value::as_str);
        let size = f.get("size").and_then(Value::as_u64);
        let sha = f.get("sha256").and_then(Value::as_str);
        let (Some(path), Some(size), Some(sha)) = (path, size, sha) else {
            return Err(format!("files[{i}] needs path, size and sha256"));
        };
        let Some(clean) = clean_name(path).filter(|c| c == path) else {
            return Err(format!("files[{i}]: unsafe path {path:?}"));
        };
        if clean == MANIFEST || clean == TSR {
            return Err(format!("files[{i}]: the manifest cannot list {clean}"));
        }
        if out
            .insert(
                clean,
                Listed {
                    size,
                    sha256: sha.to_ascii_lowercase(),
                },
            )
            .is_some()
        {
            return Err(format!("files[{i}]: {path} listed twice"));
        }
    }
    Ok(out)
}

fn check(mut c: Contents) -> Report {
    let mut r = Report::default();
    for p in std::mem::take(&mut c.problems) {
        r.problem(p);
    }
    let manifest: Value = match c.small.get(MANIFEST) {
        None if c.files.contains_key(MANIFEST) => {
            r.problem(Problem::Manifest("too large".into()));
            return r;
        }
        None => {
            r.problem(Problem::Manifest("missing".into()));
            for name in c.files.keys() {
                r.problem(Problem::Extra(name.clone()));
            }
            return r;
        }
        Some(b) => match serde_json::from_slice(b) {
            Ok(v) => {
                r.manifest_sha256 = Some(sha256_hex(b));
                v
            }
            Err(e) => {
                r.problem(Problem::Manifest(format!("not JSON: {e}")));
                return r;
            }
        },
    };
    if manifest.get("format").and_then(Value::as_str) != Some(FORMAT) {
        r.problem(Problem::Manifest(format!("not a {FORMAT} manifest")));
        return r;
    }
    r.created_at = manifest
        .get("created_at")
        .and_then(Value::as_str)
        .map(str::to_string);
    let listed = match manifest_files(&manifest) {
        Ok(l) => l,
        Err(m) => {
            r.problem(Problem::Manifest(m));
            return r;
        }
    };
    r.files = listed.len();
    for (path, l) in &listed {
        match c.files.get(path) {
            None => r.problem(Problem::Missing(path.clone())),
            Some(s) if s.size != l.size || s.sha256 != l.sha256 => {
                r.problem(Problem::Changed(path.clone()))
            }
            Some(_) => r.files_ok += 1,
        }
    }
    for name in c.files.keys() {
        if name != MANIFEST && name != TSR && !listed.contains_key(name) {
            r.problem(Problem::Extra(name.clone()));
        }
    }
    if listed.contains_key(CUSTODY) {
        match c.small.get(CUSTODY) {
            Some(b) => check_custody(b, &manifest, &mut r),
            None if c.files.contains_key(CUSTODY) => {
                r.problem(Problem::Custody(0, "too large to check".into()))
            }
            None => {}
        }
    } else {
        r.problem(Problem::Manifest(format!("does not list {CUSTODY}")));
    }
    if let Some(tsr) = c.small.get(TSR) {
        let want = c.small.get(MANIFEST).map(|m| Sha256::digest(m).to_vec());
        match tsp::parse_reply(tsr) {
            Ok(info) if Some(&info.imprint) == want.as_ref() && info.sha256 => {
                r.timestamp = Some(info.gen_time)
            }
            Ok(_) => r.problem(Problem::Timestamp(
                "the token's message imprint is not the SHA-256 of manifest.json".into(),
            )),
            Err(e) => r.problem(Problem::Timestamp(format!("unreadable token: {e}"))),
        }
    } else if c.files.contains_key(TSR) {
        r.problem(Problem::Timestamp("too large".into()));
    }
    r
}

/// Recomputes every chain value of the custody log, and compares the last one of each
/// attachment with the manifest's `custody.heads`. Reports the first broken entry only: every
/// entry after it chains from a value that can no longer be trusted.
fn check_custody(bytes: &[u8], manifest: &Value, r: &mut Report) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        r.problem(Problem::Custody(1, "not UTF-8 text".into()));
        return;
    };
    let mut last: HashMap<String, String> = HashMap::new();
    let mut n = 0usize;
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        match custody_line(line, &last) {
            Ok((sha, chain)) => {
                last.insert(sha, chain);
                n += 1;
            }
            Err(m) => {
                r.problem(Problem::Custody(lineno, m));
                return;
            }
        }
    }
    let want_entries = manifest
        .get("custody")
        .and_then(|c| c.get("entries"))
        .and_then(Value::as_u64);
    if want_entries != Some(n as u64) {
        r.problem(Problem::Custody(
            0,
            format!(
                "{n} entries, the manifest says {}",
                want_entries.map_or("nothing".to_string(), |w| w.to_string())
            ),
        ));
        return;
    }
    let heads: BTreeMap<String, String> = manifest
        .get("custody")
        .and_then(|c| c.get("heads"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let got: BTreeMap<String, String> = last.into_iter().collect();
    if got != heads {
        let keys: BTreeSet<&String> = got.keys().chain(heads.keys()).collect();
        let which: Vec<&str> = keys
            .into_iter()
            .filter(|k| got.get(*k) != heads.get(*k))
            .map(String::as_str)
            .collect();
        r.problem(Problem::Custody(
            0,
            format!(
                "last entries do not match the manifest's heads for {}",
                which.join(", ")
            ),
        ));
        return;
    }
    r.custody_entries = n;
}

/// Checks one custody line against the chain so far; returns its attachment and chain value.
fn custody_line(line: &str, last: &HashMap<String, String>) -> Result<(String, String), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let s = |k: &str| v.get(k).and_then(Value::as_str);
    let sha = s("sha256").ok_or("no sha256")?.to_string();
    let chain = s("chain").ok_or("no chain")?.to_string();
    let prev = s("prev").ok_or("no prev")?;
    let expected_prev = last.get(&sha).map(String::as_str).unwrap_or("");
    if prev != expected_prev {
        return Err(format!(
            "prev is not the chain of the entry before it for attachment {sha}"
        ));
    }
    if v.get("redacted").and_then(Value::as_bool) == Some(true) {
        // Another outlet's access to the same file: its fields are withheld, so only its place
        // in the chain can be checked; the next entry's recomputation covers its chain value.
        if chain.len() != 64 || !chain.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("redacted entry without a valid chain value".into());
        }
        return Ok((sha, chain));
    }
    let incident_row = v
        .get("incident_row")
        .and_then(Value::as_i64)
        .ok_or("no incident_row")?;
    let at_ms = v.get("at_ms").and_then(Value::as_i64).ok_or("no at_ms")?;
    let actor = s("actor").ok_or("no actor")?;
    let action = s("action").ok_or("no action")?;
    let want = custody_chain(prev, &sha, incident_row, actor, action, at_ms);
    if want != chain {
        return Err(format!(
            "chain does not match its fields ({action} by {actor} at {})",
            s("at").unwrap_or("?")
        ));
    }
    Ok((sha, chain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_sorts_keys_at_every_level() {
        let v = json!({"b": 1, "a": {"z": [1, {"y": 2, "x": "é\""}], "c": null}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":null,"z":[1,{"x":"é\"","y":2}]},"b":1}"#
        );
    }

    #[test]
    fn chain_matches_the_documented_formula() {
        let mut h = Sha256::new();
        h.update(b"|abc|7|user:a@b|added|1000");
        assert_eq!(
            custody_chain("", "abc", 7, "user:a@b", "added", 1000),
            crate::accounts::hex(&h.finalize())
        );
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad in ["../x", "/etc/passwd", "a/../b", "a\\b", "", "./", "a/./b"] {
            assert_eq!(clean_name(bad), None, "{bad}");
        }
        assert_eq!(clean_name("./a/b").as_deref(), Some("a/b"));
    }
}
