//! STIX 2.1 import: a partner's bundle (MISP, OpenCTI, another atlas) becomes indicators and
//! sightings in an incident of the importing outlet.
//!
//! What is read: `indicator` patterns (each `=` comparison on a property the atlas tracks:
//! addresses and prefixes, AS numbers, domains, URLs, e-mail addresses, social accounts as
//! `user-account` type + login, file SHA-256, HTTP user agents), `observed-data` with the
//! observables it points to (MISP exports attributes not meant for detection that way),
//! `sighting` counts and times (applied to the indicator they sight), and the name and
//! description of the first `incident` or `report` for a new incident's title. Everything else is
//! accepted and ignored; what cannot be used is listed as skipped, with its index and why.
//!
//! TLP: every `object_marking_refs` entry and every TLP marking-definition in the bundle counts,
//! TLP 1.0 and 2.0 ids alike; the strictest level wins, and an unmarked bundle is AMBER+STRICT
//! (it stays with the importing outlet). Imported into an existing incident, the incident's TLP
//! becomes the stricter of its own and the bundle's, so nothing is shared wider than it arrived.
//!
//! Re-importing the same bundle changes nothing: counts are set, not added, and a bundle without
//! a named incident lands in the incident made by its first import (keyed by the id of its first
//! `incident` or `report`, else of the bundle).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::Atlas;
use crate::accounts::{Actor, audit, hex};
use crate::api::Caller;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::model::{
    FieldError, IndicatorKind, Tlp, format_time, normalise_indicator, now_ms, parse_time,
};
use crate::stix::{STIX_MAX_COUNT, tlp_of_marking};
use crate::store::{MAX_INDICATORS, SightingIn, VISIBLE, check_sightings, upsert_sightings};

/// Largest bundle accepted, in bytes (also the TAXII API root's `max_content_length`).
pub const MAX_BUNDLE_BYTES: usize = 10 * 1024 * 1024;
/// Most objects in one bundle.
pub const MAX_OBJECTS: usize = 50_000;
/// Most skipped objects listed in an answer (the count is always complete).
const MAX_SKIPPED_LISTED: usize = 200;

/// An object that was accepted but not used, or could not be used.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub index: usize,
    pub id: String,
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The incident the indicators went to.
    pub incident: String,
    pub created: bool,
    pub tlp: Tlp,
    /// Distinct indicators recorded.
    pub sightings: usize,
    pub skipped_count: usize,
    pub skipped: Vec<Skipped>,
    /// Per object index: `None` if used or ignored harmlessly, `Some(reason)` if skipped.
    #[serde(skip)]
    pub per_object: Vec<Option<String>>,
}

/// One value found in a bundle, before normalising.
#[derive(Debug, Clone)]
struct Found {
    kind: IndicatorKind,
    raw: String,
}

/// A STIX pattern token.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Open,
    Close,
    Paren,
    Str(String),
    Num(String),
    Word(String),
    Eq,
    Op,
}

/// Splits a STIX pattern into tokens. Object paths come out as one word with quoted
/// components unquoted (`file:hashes.'SHA-256'` → `file:hashes.SHA-256`).
fn tokens(p: &str) -> std::result::Result<Vec<Tok>, String> {
    fn quoted(
        chars: &mut std::iter::Peekable<std::str::Chars>,
    ) -> std::result::Result<String, String> {
        let mut s = String::new();
        loop {
            match chars.next() {
                None => return Err("unterminated string".into()),
                Some('\\') => match chars.next() {
                    Some(c @ ('\\' | '\'')) => s.push(c),
                    _ => return Err("bad escape in string".into()),
                },
                Some('\'') => return Ok(s),
                Some(c) => s.push(c),
            }
        }
    }
    let mut out = Vec::new();
    let mut chars = p.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '[' => {
                chars.next();
                out.push(Tok::Open);
            }
            ']' => {
                chars.next();
                out.push(Tok::Close);
            }
            '(' | ')' | ',' => {
                chars.next();
                out.push(Tok::Paren);
            }
            '\'' => {
                chars.next();
                out.push(Tok::Str(quoted(&mut chars)?));
            }
            '=' => {
                chars.next();
                out.push(Tok::Eq);
            }
            '!' | '<' | '>' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                }
                out.push(Tok::Op);
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' => {
                let mut s = String::new();
                while let Some(&d) = chars.peek() {
                    if d.is_ascii_digit() || "+-.eE".contains(d) {
                        s.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Tok::Num(s));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut s = String::new();
                while let Some(&d) = chars.peek() {
                    if d.is_ascii_alphanumeric() || "_-:.*".contains(d) {
                        s.push(d);
                        chars.next();
                        if d == '.' && chars.peek() == Some(&'\'') {
                            chars.next();
                            s.push_str(&quoted(&mut chars)?);
                        }
                    } else if d == '[' && s.contains(':') {
                        // A list index inside a path (`[*]`, `[0]`).
                        for e in chars.by_ref() {
                            s.push(e);
                            if e == ']' {
                                break;
                            }
                        }
                    } else {
                        break;
                    }
                }
                // A typed literal such as t'2024-01-01T00:00:00Z' or h'ff' is one value.
                if s.len() == 1 && chars.peek() == Some(&'\'') {
                    chars.next();
                    out.push(Tok::Str(quoted(&mut chars)?));
                } else {
                    out.push(Tok::Word(s));
                }
            }
            _ => return Err(format!("unexpected character {c:?}")),
        }
    }
    Ok(out)
}

/// The values a STIX pattern names by equality, on the properties the atlas tracks.
fn values_of_pattern(p: &str) -> std::result::Result<Vec<Found>, String> {
    let toks = tokens(p)?;
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut account: (Option<String>, Option<String>) = (None, None);
    let flush_account = |a: &mut (Option<String>, Option<String>), out: &mut Vec<Found>| {
        if let (Some(t), Some(l)) = (a.0.take(), a.1.take()) {
            out.push(Found {
                kind: IndicatorKind::SocialAccount,
                raw: format!("{t}:{l}"),
            });
        }
        *a = (None, None);
    };
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth -= 1;
                flush_account(&mut account, &mut out);
            }
            Tok::Word(path) if depth > 0 => {
                let (Some(Tok::Eq), Some(v)) = (toks.get(i + 1), toks.get(i + 2)) else {
                    continue;
                };
                let value = match v {
                    Tok::Str(s) | Tok::Num(s) => s.clone(),
                    _ => continue,
                };
                let path_l = path.to_ascii_lowercase();
                let kind = match path_l.as_str() {
                    "ipv4-addr:value" | "ipv6-addr:value" => Some(if value.contains('/') {
                        IndicatorKind::Cidr
                    } else {
                        IndicatorKind::Ip
                    }),
                    "domain-name:value" => Some(IndicatorKind::Domain),
                    "url:value" => Some(IndicatorKind::Url),
                    "email-addr:value" => Some(IndicatorKind::Email),
                    "autonomous-system:number" => Some(IndicatorKind::Asn),
                    "file:hashes.sha-256" | "file:hashes.sha256" => Some(IndicatorKind::FileSha256),
                    "network-traffic:extensions.http-request-ext.request_header.user-agent" => {
                        Some(IndicatorKind::UserAgent)
                    }
                    "user-account:account_type" => {
                        account.0 = Some(value.clone());
                        None
                    }
                    "user-account:account_login" => {
                        account.1 = Some(value.clone());
                        None
                    }
                    _ => None,
                };
                if let Some(kind) = kind {
                    out.push(Found { kind, raw: value });
                }
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced brackets".into());
    }
    Ok(out)
}

/// The value an observable (SCO) stands for, if the atlas tracks its kind.
fn value_of_sco(o: &Value) -> Option<Found> {
    let ty = o.get("type")?.as_str()?;
    let s = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
    let (kind, raw) = match ty {
        "ipv4-addr" | "ipv6-addr" => {
            let v = s("value")?;
            (
                if v.contains('/') {
                    IndicatorKind::Cidr
                } else {
                    IndicatorKind::Ip
                },
                v,
            )
        }
        "domain-name" => (IndicatorKind::Domain, s("value")?),
        "url" => (IndicatorKind::Url, s("value")?),
        "email-addr" => (IndicatorKind::Email, s("value")?),
        "autonomous-system" => (IndicatorKind::Asn, o.get("number")?.as_u64()?.to_string()),
        "user-account" => (
            IndicatorKind::SocialAccount,
            format!("{}:{}", s("account_type")?, s("account_login")?),
        ),
        "file" => {
            let h = o.get("hashes")?;
            let v = h
                .get("SHA-256")
                .or_else(|| h.get("SHA256"))
                .and_then(Value::as_str)?;
            (IndicatorKind::FileSha256, v.to_string())
        }
        _ => return None,
    };
    Some(Found { kind, raw })
}

fn valid_type(t: &str) -> bool {
    t.len() >= 3
        && t.len() <= 250
        && t.starts_with(|c: char| c.is_ascii_lowercase())
        && !t.ends_with('-')
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether `id` is a STIX identifier (`type--uuid`), optionally of type `ty`.
fn valid_id(id: &str, ty: Option<&str>) -> bool {
    match id.split_once("--") {
        Some((t, u)) => {
            valid_type(t)
                && ty.is_none_or(|ty| ty == t)
                && uuid::Uuid::parse_str(u).is_ok_and(|_| u.len() == 36)
        }
        None => false,
    }
}

/// A parsed, checked bundle.
#[derive(Debug)]
pub struct Parsed {
    pub objects: Vec<Value>,
    tlp: Option<Tlp>,
    /// Key for the incident a bundle without a named incident goes to.
    key: String,
    title: Option<String>,
    description: Option<String>,
}

/// Checks the objects of a bundle or envelope: 422 naming `objects[i].field` for every object
/// that is not valid STIX in the properties the import reads.
pub fn check_objects(objects: Vec<Value>, bundle_id: Option<&str>) -> Result<Parsed> {
    if objects.len() > MAX_OBJECTS {
        return Err(Error::field(
            "objects",
            format!("at most {MAX_OBJECTS} objects"),
        ));
    }
    let mut e: Vec<FieldError> = Vec::new();
    let mut tlp: Option<Tlp> = None;
    let mut key = None;
    let mut title = None;
    let mut description = None;
    // TLP marking-definitions defined in the bundle under other ids (some exporters do).
    let mut local_tlp: HashMap<String, Tlp> = HashMap::new();
    for (i, o) in objects.iter().enumerate() {
        let f = |k: &str| format!("objects[{i}].{k}");
        let Some(m) = o.as_object() else {
            e.push(FieldError::new(
                format!("objects[{i}]"),
                "must be a JSON object",
            ));
            continue;
        };
        let ty = match m.get("type").and_then(Value::as_str) {
            Some(t) if valid_type(t) => t,
            _ => {
                e.push(FieldError::new(f("type"), "must be a STIX type name"));
                continue;
            }
        };
        let id = m.get("id").and_then(Value::as_str).unwrap_or("");
        if !valid_id(id, Some(ty)) {
            e.push(FieldError::new(f("id"), format!("must be {ty}--<uuid>")));
        }
        if let Some(refs) = m.get("object_marking_refs") {
            match refs.as_array() {
                Some(a) => {
                    for (j, r) in a.iter().enumerate() {
                        match r.as_str() {
                            Some(r) if valid_id(r, Some("marking-definition")) => {
                                if let Some(t) = tlp_of_marking(r) {
                                    tlp = Some(tlp.map_or(t, |x| x.stricter(t)));
                                }
                            }
                            _ => e.push(FieldError::new(
                                format!("objects[{i}].object_marking_refs[{j}]"),
                                "must be a marking-definition id",
                            )),
                        }
                    }
                }
                None => e.push(FieldError::new(f("object_marking_refs"), "must be a list")),
            }
        }
        let ts = |k: &str, required: bool, e: &mut Vec<FieldError>| match m.get(k) {
            None if !required => None,
            Some(Value::String(s)) if parse_time(s).is_some() && s.contains('T') => parse_time(s),
            _ => {
                e.push(FieldError::new(f(k), "must be an RFC 3339 timestamp"));
                None
            }
        };
        match ty {
            "marking-definition" => {
                let level = m
                    .get("definition")
                    .and_then(|d| d.get("tlp"))
                    .and_then(Value::as_str)
                    .or_else(|| {
                        m.get("extensions")
                            .and_then(|x| x.get(crate::stix::TLP2_EXTENSION))
                            .and_then(|x| x.get("tlp_2_0"))
                            .and_then(Value::as_str)
                    })
                    .map(|s| if s == "white" { "clear" } else { s });
                if let Some(t) = tlp_of_marking(id).or_else(|| level.and_then(Tlp::parse)) {
                    local_tlp.insert(id.to_string(), t);
                }
            }
            "indicator" => {
                if !m.get("pattern").is_some_and(Value::is_string) {
                    e.push(FieldError::new(f("pattern"), "required, a string"));
                }
                if !m.get("pattern_type").is_some_and(Value::is_string) {
                    e.push(FieldError::new(f("pattern_type"), "required, a string"));
                }
                ts("valid_from", true, &mut e);
                ts("valid_until", false, &mut e);
            }
            "sighting" => {
                match m.get("sighting_of_ref").and_then(Value::as_str) {
                    Some(r) if valid_id(r, None) => {}
                    _ => e.push(FieldError::new(f("sighting_of_ref"), "required, a STIX id")),
                }
                if let Some(c) = m.get("count")
                    && !c
                        .as_i64()
                        .is_some_and(|c| (0..=STIX_MAX_COUNT).contains(&c))
                {
                    e.push(FieldError::new(
                        f("count"),
                        "must be an integer 0 to 999999999",
                    ));
                }
                let a = ts("first_seen", false, &mut e);
                let b = ts("last_seen", false, &mut e);
                if let (Some(a), Some(b)) = (a, b)
                    && b < a
                {
                    e.push(FieldError::new(
                        f("last_seen"),
                        "must not be before first_seen",
                    ));
                }
            }
            "observed-data" => {
                let a = ts("first_observed", true, &mut e);
                let b = ts("last_observed", true, &mut e);
                if let (Some(a), Some(b)) = (a, b)
                    && b < a
                {
                    e.push(FieldError::new(
                        f("last_observed"),
                        "must not be before first_observed",
                    ));
                }
                if !m
                    .get("number_observed")
                    .and_then(Value::as_i64)
                    .is_some_and(|c| (1..=STIX_MAX_COUNT).contains(&c))
                {
                    e.push(FieldError::new(
                        f("number_observed"),
                        "required, an integer 1 to 999999999",
                    ));
                }
                if let Some(r) = m.get("object_refs")
                    && !r.as_array().is_some_and(|a| {
                        a.iter()
                            .all(|x| x.as_str().is_some_and(|x| valid_id(x, None)))
                    })
                {
                    e.push(FieldError::new(
                        f("object_refs"),
                        "must be a list of STIX ids",
                    ));
                }
            }
            "incident" | "report" => {
                if key.is_none() && valid_id(id, Some(ty)) {
                    key = Some(id.to_string());
                }
                let name = m
                    .get("name")
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|s| !s.is_empty());
                if name.is_none() {
                    e.push(FieldError::new(f("name"), "required, a string"));
                }
                if title.is_none() {
                    title = name.map(|s| s.chars().take(400).collect::<String>());
                    description = m
                        .get("description")
                        .and_then(Value::as_str)
                        .map(|s| s.chars().take(10_000).collect::<String>());
                }
            }
            _ => {}
        }
    }
    Error::check(e)?;
    // Markings defined in the bundle and referenced by its objects.
    for o in &objects {
        if let Some(refs) = o.get("object_marking_refs").and_then(Value::as_array) {
            for r in refs.iter().filter_map(Value::as_str) {
                if let Some(t) = local_tlp.get(r) {
                    tlp = Some(tlp.map_or(*t, |x| x.stricter(*t)));
                }
            }
        }
    }
    let key = match key.or_else(|| bundle_id.map(str::to_string)) {
        Some(k) => k,
        None => {
            // An envelope without incident, report or bundle id: the set of its object ids.
            let mut ids: Vec<&str> = objects
                .iter()
                .filter_map(|o| o.get("id")?.as_str())
                .collect();
            ids.sort_unstable();
            hex(&Sha256::digest(ids.join("\n").as_bytes()))
        }
    };
    Ok(Parsed {
        objects,
        tlp,
        key,
        title,
        description,
    })
}

/// Reads a bundle (`{"type":"bundle",…}`) or a TAXII envelope (`{"objects":[…]}`).
pub fn parse_body(body: &[u8], envelope: bool) -> Result<Parsed> {
    if body.len() > MAX_BUNDLE_BYTES {
        return Err(Error::field(
            "body",
            format!("at most {MAX_BUNDLE_BYTES} bytes"),
        ));
    }
    let v: Value = crate::api::parse_json(body)?;
    let Some(m) = v.as_object() else {
        return Err(Error::field("body", "must be a JSON object"));
    };
    let mut bundle_id = None;
    if !envelope {
        if m.get("type").and_then(Value::as_str) != Some("bundle") {
            return Err(Error::field("type", "must be \"bundle\""));
        }
        match m.get("id").and_then(Value::as_str) {
            Some(id) if valid_id(id, Some("bundle")) => bundle_id = Some(id.to_string()),
            _ => return Err(Error::field("id", "must be bundle--<uuid>")),
        }
    }
    let objects = match m.get("objects") {
        None => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(Error::field("objects", "must be a list")),
    };
    check_objects(objects, bundle_id.as_deref())
}

/// Turns the checked objects into sightings; lists what was skipped and why.
fn sightings_of(p: &Parsed, now: i64) -> (Vec<SightingIn>, Vec<Option<String>>) {
    let objs = &p.objects;
    let by_id: HashMap<&str, usize> = objs
        .iter()
        .enumerate()
        .filter_map(|(i, o)| Some((o.get("id")?.as_str()?, i)))
        .collect();
    let mut per_object: Vec<Option<String>> = vec![None; objs.len()];
    // Per indicator index: (count, first, last) from the sightings of it.
    let mut seen: HashMap<usize, (i64, i64, i64)> = HashMap::new();
    // Observed-data objects some sighting points to.
    let mut evidence: std::collections::HashSet<usize> = std::collections::HashSet::new();
    let time = |o: &Value, k: &str| o.get(k).and_then(Value::as_str).and_then(parse_time);
    for (i, o) in objs.iter().enumerate() {
        if o.get("type").and_then(Value::as_str) != Some("sighting") {
            continue;
        }
        let target = o
            .get("sighting_of_ref")
            .and_then(Value::as_str)
            .and_then(|r| by_id.get(r).copied())
            .filter(|t| objs[*t].get("type").and_then(Value::as_str) == Some("indicator"));
        let Some(t) = target else {
            per_object[i] = Some("sights no indicator in this bundle".into());
            continue;
        };
        // The observed-data a sighting rests on is the same observation, already counted here.
        for r in o
            .get("observed_data_refs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if let Some(j) = by_id.get(r) {
                evidence.insert(*j);
            }
        }
        let count = o.get("count").and_then(Value::as_i64).unwrap_or(1).max(1);
        let first = time(o, "first_seen").unwrap_or(now);
        let last = time(o, "last_seen").unwrap_or(first);
        let e = seen.entry(t).or_insert((0, i64::MAX, i64::MIN));
        e.0 = e.0.saturating_add(count);
        e.1 = e.1.min(first);
        e.2 = e.2.max(last);
    }
    let mut out: BTreeMap<(IndicatorKind, String), SightingIn> = BTreeMap::new();
    let mut add =
        |f: Found, count: i64, first: i64, last: i64| -> std::result::Result<(), String> {
            let value = normalise_indicator(f.kind, &f.raw)?;
            let s = out.entry((f.kind, value.clone())).or_insert(SightingIn {
                kind: f.kind.as_str().into(),
                value,
                count: Some(0),
                first_seen: Some(format_time(first)),
                last_seen: Some(format_time(last)),
            });
            s.count = Some(
                s.count
                    .unwrap_or(0)
                    .saturating_add(count)
                    .min(crate::store::MAX_COUNT),
            );
            let f0 = s
                .first_seen
                .as_deref()
                .and_then(parse_time)
                .unwrap_or(first)
                .min(first);
            let l0 = s
                .last_seen
                .as_deref()
                .and_then(parse_time)
                .unwrap_or(last)
                .max(last);
            s.first_seen = Some(format_time(f0));
            s.last_seen = Some(format_time(l0));
            Ok(())
        };
    for (i, o) in objs.iter().enumerate() {
        match o.get("type").and_then(Value::as_str).unwrap_or("") {
            "indicator" => {
                if o.get("pattern_type").and_then(Value::as_str) != Some("stix") {
                    per_object[i] = Some("only STIX patterns are read".into());
                    continue;
                }
                let pattern = o.get("pattern").and_then(Value::as_str).unwrap_or("");
                let found = match values_of_pattern(pattern) {
                    Ok(f) if f.is_empty() => {
                        per_object[i] = Some("the pattern names nothing the atlas tracks".into());
                        continue;
                    }
                    Ok(f) => f,
                    Err(m) => {
                        per_object[i] = Some(format!("pattern not understood: {m}"));
                        continue;
                    }
                };
                let valid_from = time(o, "valid_from").unwrap_or(now);
                let (count, first, last) =
                    seen.get(&i).copied().unwrap_or((1, valid_from, valid_from));
                let mut problems = Vec::new();
                for f in found {
                    if let Err(m) = add(f, count, first, last.max(first)) {
                        problems.push(m);
                    }
                }
                if !problems.is_empty() {
                    per_object[i] = Some(problems.join("; "));
                }
            }
            "observed-data" if evidence.contains(&i) => {}
            "observed-data" => {
                let refs: Vec<&str> = o
                    .get("object_refs")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let count = o
                    .get("number_observed")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
                    .max(1);
                let first = time(o, "first_observed").unwrap_or(now);
                let last = time(o, "last_observed").unwrap_or(first).max(first);
                let mut used = 0;
                for r in refs {
                    if let Some(f) = by_id.get(r).and_then(|j| value_of_sco(&objs[*j]))
                        && add(f, count, first, last).is_ok()
                    {
                        used += 1;
                    }
                }
                if used == 0 {
                    per_object[i] = Some("observes nothing the atlas tracks".into());
                }
            }
            _ => {}
        }
    }
    (out.into_values().collect(), per_object)
}

impl Db {
    /// Imports checked objects for the caller's outlet: into the named incident (which must be
    /// the outlet's own), or into the incident keyed by the bundle (made on first import).
    pub async fn import_stix(
        &self,
        actor: &Actor,
        p: &Parsed,
        incident: Option<&str>,
    ) -> Result<Outcome> {
        if !actor.role.can_write() {
            return Err(Error::Forbidden);
        }
        let now = now_ms();
        let (input, per_object) = sightings_of(p, now);
        if input.len() > MAX_INDICATORS {
            return Err(Error::field(
                "objects",
                format!("at most {MAX_INDICATORS} distinct indicators"),
            ));
        }
        let checked = check_sightings(&input, now)?;
        let tlp = p.tlp.unwrap_or(Tlp::AmberStrict);
        let named = match incident {
            Some(uuid) => {
                let sql = format!(
                    "SELECT i.id, i.outlet_id, i.tlp FROM incidents i WHERE i.uuid = $2 AND {VISIBLE}"
                );
                let r = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(actor.outlet_id)
                    .bind(uuid.trim().to_ascii_lowercase())
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or(Error::NotFound)?;
                if r.try_get::<i64, _>("outlet_id")? != actor.outlet_id {
                    return Err(Error::Forbidden);
                }
                Some(r.try_get::<i64, _>("id")?)
            }
            None => None,
        };
        let key = format!("stix:{}", p.key.chars().take(200).collect::<String>());
        let first = checked.iter().map(|s| s.first_ms).min().unwrap_or(now);
        let last = checked.iter().map(|s| s.last_ms).max();
        let _w = self.write().await;
        let mut tx = self.pool.begin().await?;
        let existing: Option<i64> = match named {
            Some(id) => Some(id),
            None => {
                sqlx::query_scalar(
                    "SELECT id FROM incidents WHERE outlet_id = $1 AND ingest_key = $2",
                )
                .bind(actor.outlet_id)
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?
            }
        };
        let (id, created) = match existing {
            Some(id) => {
                let cur: String = sqlx::query_scalar("SELECT tlp FROM incidents WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                let cur = Tlp::parse(&cur).unwrap_or(Tlp::Red);
                sqlx::query("UPDATE incidents SET tlp = $1, updated_ms = $2 WHERE id = $3")
                    .bind(cur.stricter(tlp).as_str())
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                (id, false)
            }
            None => {
                let title = p
                    .title
                    .clone()
                    .unwrap_or_else(|| format!("STIX import: {} indicators", checked.len()));
                let description = p.description.clone().unwrap_or_default();
                let uuid = uuid::Uuid::new_v4().to_string();
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO incidents (uuid, outlet_id, kind, title, description, search, status, confidence, tlp,
                       started_ms, ended_ms, date_unknown, source, ingest_key, created_by, created_ms, updated_ms)
                     VALUES ($1, $2, 'other', $3, $4, $5, 'reported', 'suspected', $6, $7, $8, 0, 'stix', $9, $10, $11, $11)
                     RETURNING id",
                )
                .bind(&uuid)
                .bind(actor.outlet_id)
                .bind(&title)
                .bind(&description)
                .bind(format!("{title}\n{description}").to_lowercase())
                .bind(tlp.as_str())
                .bind(first)
                .bind(last)
                .bind(&key)
                .bind(&actor.label)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                (id, true)
            }
        };
        let n = upsert_sightings(&mut tx, id, &checked, true).await?;
        let uuid: String = sqlx::query_scalar("SELECT uuid FROM incidents WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let final_tlp: String = sqlx::query_scalar("SELECT tlp FROM incidents WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        audit(
            &mut tx,
            Some(actor.outlet_id),
            &actor.label,
            "stix.import",
            &uuid,
            &format!("{n} indicators, tlp={}, key={key}", tlp.as_str()),
        )
        .await?;
        tx.commit().await?;
        let skipped: Vec<Skipped> = per_object
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                Some(Skipped {
                    index: i,
                    id: p.objects[i]
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    reason: r.clone()?,
                })
            })
            .collect();
        Ok(Outcome {
            incident: uuid,
            created,
            tlp: Tlp::parse(&final_tlp).unwrap_or(Tlp::Red),
            sightings: n,
            skipped_count: skipped.len(),
            skipped: skipped.into_iter().take(MAX_SKIPPED_LISTED).collect(),
            per_object,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportQuery {
    incident: Option<String>,
}

/// `POST /api/v1/stix/import`: a bundle from a partner, for editors and admins.
pub(crate) async fn import_handler(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    q: std::result::Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Response> {
    if !c.role.can_write() {
        return Err(Error::Forbidden);
    }
    let Query(q) = q.map_err(|e| Error::field("query", e.body_text()))?;
    let incident = q
        .incident
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    if let Some(i) = incident
        && uuid::Uuid::parse_str(i).is_err()
    {
        return Err(Error::NotFound);
    }
    let parsed = parse_body(&body, false)?;
    let out = a.db.import_stix(&c, &parsed, incident).await?;
    let status = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(out))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_yield_their_values() {
        let v = |p: &str| {
            values_of_pattern(p)
                .unwrap()
                .into_iter()
                .map(|f| (f.kind, f.raw))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            v("[ipv4-addr:value = '203.0.113.7']"),
            vec![(IndicatorKind::Ip, "203.0.113.7".into())]
        );
        assert_eq!(
            v("[ipv4-addr:value = '203.0.113.0/24' OR domain-name:value = 'a.example']"),
            vec![
                (IndicatorKind::Cidr, "203.0.113.0/24".into()),
                (IndicatorKind::Domain, "a.example".into())
            ]
        );
        assert_eq!(
            v("[autonomous-system:number = 9198]"),
            vec![(IndicatorKind::Asn, "9198".into())]
        );
        assert_eq!(
            v("[url:value = 'https://x.example/it\\'s']"),
            vec![(IndicatorKind::Url, "https://x.example/it's".into())]
        );
        assert_eq!(
            v("[user-account:account_type = 'telegram' AND user-account:account_login = 'bot']"),
            vec![(IndicatorKind::SocialAccount, "telegram:bot".into())]
        );
        assert_eq!(
            v("[file:hashes.'SHA-256' = 'ab']"),
            vec![(IndicatorKind::FileSha256, "ab".into())]
        );
        assert_eq!(
            v(
                "[network-traffic:extensions.'http-request-ext'.request_header.'User-Agent' = 'x\\\\y']"
            ),
            vec![(IndicatorKind::UserAgent, "x\\y".into())]
        );
        assert!(v("[process:name = 'evil.exe'] WITHIN 10 SECONDS").is_empty());
        assert!(values_of_pattern("[url:value = 'open").is_err());
        assert!(values_of_pattern("[url:value = 'x'").is_err());
    }
}
