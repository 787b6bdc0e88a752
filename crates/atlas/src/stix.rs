//! STIX 2.1: the atlas's records as other tools (MISP, OpenCTI, the OASIS validator) read them,
//! and the export of everything a caller may see as one streamed bundle.
//!
//! The mapping (registry research §2) is a set of pure functions from store rows to JSON values:
//! - an incident → `incident` SDO (plain: the OASIS incident-core extension is a draft whose
//!   enums differ between its published versions) and a `report` grouping its first objects;
//! - an outlet → `identity` (organization, sector communications), marked TLP:GREEN because
//!   outlet names are no secret inside the task force;
//! - a sighting row (incident × indicator) → `indicator` (STIX pattern), `observed-data` (when
//!   the indicator kind has a STIX observable), `sighting` (count, first/last seen, where
//!   sighted = the outlet) and a `related-to` relationship indicator → incident (STIX 2.1
//!   suggests no relationship type for incidents);
//! - a confirmed campaign (`campaigns.rs`) → `campaign` SDO, `related-to` incident → campaign,
//!   and `indicates` from each member's shared indicators, all built from the members the
//!   caller may see (`campaigns::stix_objects`); TAXII serves the same objects;
//! - an indicator value → its STIX observable (SCO), once per bundle, marked with the most open
//!   TLP under which the caller sees it;
//! - a timeline update → `note`;
//! - every object carries exactly one TLP 2.0 marking (its incident's), and the marking
//!   definitions referenced are part of the bundle.
//!
//! Identifiers. Incidents keep their stored UUIDv4. Other domain objects get a deterministic
//! UUIDv4-shaped id: SHA-256 over a fixed prefix and the length-prefixed parts that identify the
//! object (incident UUID, indicator kind and value, update row...), cut to 16 bytes with the
//! version and variant bits set as for v4. Repeated exports give the same ids, so partners see
//! new versions of the same objects instead of duplicates. Observables (SCOs) get the UUIDv5 the
//! STIX 2.1 spec defines (namespace `00abedb4-aa42-466c-9c01-fed23315a9b7`, over the canonical
//! JSON of the id-contributing properties), so the same address seen by two outlets, or by a
//! partner's own tools, has the same id.
//!
//! Versions. `created` is when the incident (or update) was recorded; `modified` is the last
//! change, by the server's clock, of the incident or the sighting row the object comes from, and
//! is also the object's TAXII `date_added`. A change of an incident's TLP therefore makes new
//! versions of everything under it.
//!
//! Order of a bundle. Incidents with their reports, then notes, then each sighting's objects,
//! then campaigns, then observables, then the outlets' identities and the marking definitions.
//! Within a section, by incident row id, then by the row's own key: notes by update row id,
//! sightings by indicator row id; observables by indicator row id. These orders follow indexes,
//! so the export reads each section in keyset pages that cost what they return (pages of one
//! snapshot: nothing is lost or repeated across pages), and a bundle's time grows linearly with
//! its size. The observables are the one aggregate (an indicator's TLP needs all its sightings),
//! computed once and streamed.
//!
//! **Architecture invariant:** TLP is enforced in SQL. Every query here that reads incidents or
//! anything under them filters through [`store::VISIBLE`](crate::store::VISIBLE) with the
//! caller's outlet bound as `$1`; nothing is filtered afterwards.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;
use tokio::sync::mpsc;

use crate::accounts::Actor;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::model::{Confidence, IndicatorKind, Status, Tlp, format_time, parse_time};
use crate::store::VISIBLE;

/// The STIX 2.1 namespace for deterministic observable ids (UUIDv5).
pub const SCO_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x00abedb4_aa42_466c_9c01_fed23315a9b7);
/// The OASIS TLP 2.0 extension definition.
pub const TLP2_EXTENSION: &str = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d";
/// `created` of the five TLP 2.0 marking definitions (2022-10-01T00:00:00.000Z).
pub const TLP2_CREATED_MS: i64 = 1_664_582_400_000;
/// Most sightings (and, separately, notes) a report lists. A report over an incident with
/// millions of sightings would be one enormous object; the rest stay linked to the incident by
/// their `related-to` relationships.
pub const REPORT_MAX_SIGHTINGS: i64 = 100;
/// Largest `count` / `number_observed` STIX allows.
pub const STIX_MAX_COUNT: i64 = 999_999_999;
/// Rows per database page while streaming a bundle.
const PAGE: i64 = 500;
/// Incidents per page: each brings its report's references (at most a few hundred ids).
const INCIDENT_PAGE: i64 = 100;
/// Exports running at once. Each holds one database connection (its snapshot) for as long as
/// its client reads, so a few slow clients must not take every connection of the pool.
const MAX_EXPORTS: usize = 2;
/// Longest wait for a client to take the next chunk before the export is dropped.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Longest wait for a free export slot.
const PERMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

static EXPORTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_EXPORTS);
/// Bytes gathered before a chunk goes to the client.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks waiting for a slow client; the database is not read further until one is taken.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The TLP 2.0 marking-definition object, exactly as OASIS publishes it.
pub fn marking(t: Tlp) -> Value {
    json!({
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": t.stix_id(),
        "created": format_time(TLP2_CREATED_MS),
        "name": format!("TLP:{}", t.as_str().to_uppercase()),
        "extensions": {
            TLP2_EXTENSION: {"extension_type": "property-extension", "tlp_2_0": t.as_str()}
        }
    })
}

/// The TLP level of a marking-definition id: the five TLP 2.0 ids and the four TLP 1.0 ids
/// predefined by STIX 2.1 (WHITE reads as CLEAR).
pub fn tlp_of_marking(id: &str) -> Option<Tlp> {
    if let Some(t) = Tlp::ALL.iter().find(|t| t.stix_id() == id) {
        return Some(*t);
    }
    match id {
        "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9" => Some(Tlp::Clear),
        "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da" => Some(Tlp::Green),
        "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82" => Some(Tlp::Amber),
        "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed" => Some(Tlp::Red),
        _ => None,
    }
}

/// A deterministic, UUIDv4-shaped STIX id for a domain object (see the module docs).
pub fn derived_id(ty: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(b"qalqan-stix-1");
    for p in std::iter::once(&ty).chain(parts) {
        // Length prefixes, so ("ab", "c") and ("a", "bc") never hash alike.
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    format!("{ty}--{}", uuid::Builder::from_random_bytes(b).into_uuid())
}

/// The STIX 2.1 deterministic id of an observable: UUIDv5 in [`SCO_NAMESPACE`] over the
/// canonical JSON (RFC 8785) of its id-contributing properties. serde_json writes object keys
/// sorted (no `preserve_order`) and escapes strings as RFC 8785 does for the ASCII keys and
/// values used here.
pub fn sco_id(ty: &str, contributing: &Value) -> String {
    use sha1::Digest as _;
    let name = serde_json::to_string(contributing).unwrap_or_default();
    let mut h = sha1::Sha1::new();
    h.update(SCO_NAMESPACE.as_bytes());
    h.update(name.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    format!("{ty}--{}", uuid::Builder::from_sha1_bytes(b).into_uuid())
}

/// A STIX pattern string literal: quotes and backslashes escaped.
pub fn quote(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('\'');
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '\'' => o.push_str("\\'"),
            _ => o.push(c),
        }
    }
    o.push('\'');
    o
}

/// A literal text as a PCRE pattern: every ASCII character but letters, digits and spaces is
/// escaped (always a literal in PCRE).
fn pcre_literal(s: &str) -> String {
    let mut o = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if c.is_ascii() && !c.is_ascii_alphanumeric() && c != ' ' {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// A URL as a URI (RFC 3986): bytes outside the URI character set (backslashes, non-ASCII
/// letters, `"`, `<`, `>`, `{`, `|`, ...) percent-encoded, as STIX's `url:value` requires.
/// Existing `%XX` sequences are kept.
pub fn uri(url: &str) -> String {
    let mut o = String::with_capacity(url.len());
    for b in url.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&b) {
            o.push(char::from(b));
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

fn ip_type(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "ipv4-addr"
    } else {
        "ipv6-addr"
    }
}

/// `platform:handle` of a social account.
fn social(value: &str) -> Option<(&str, &str)> {
    value
        .split_once(':')
        .filter(|(p, h)| !p.is_empty() && !h.is_empty())
}

/// The detection pattern of an indicator and its `pattern_type`.
pub fn pattern(kind: IndicatorKind, value: &str) -> Option<(String, &'static str)> {
    let stix = |p: String| Some((format!("[{p}]"), "stix"));
    match kind {
        IndicatorKind::Ip => {
            let ip: IpAddr = value.parse().ok()?;
            stix(format!("{}:value = {}", ip_type(ip), quote(value)))
        }
        IndicatorKind::Cidr => {
            let net: ipnet::IpNet = value.parse().ok()?;
            stix(format!("{}:value = {}", ip_type(net.addr()), quote(value)))
        }
        IndicatorKind::Asn => {
            let n: u32 = value.strip_prefix("AS")?.parse().ok()?;
            stix(format!("autonomous-system:number = {n}"))
        }
        IndicatorKind::Domain => stix(format!("domain-name:value = {}", quote(value))),
        IndicatorKind::Url => stix(format!("url:value = {}", quote(&uri(value)))),
        IndicatorKind::Email => stix(format!("email-addr:value = {}", quote(value))),
        IndicatorKind::SocialAccount => {
            let (p, h) = social(value)?;
            stix(format!(
                "user-account:account_type = {} AND user-account:account_login = {}",
                quote(p),
                quote(h)
            ))
        }
        IndicatorKind::UserAgent => stix(format!(
            "network-traffic:extensions.'http-request-ext'.request_header.'User-Agent' = {}",
            quote(value)
        )),
        IndicatorKind::FileSha256 => stix(format!("file:hashes.'SHA-256' = {}", quote(value))),
        IndicatorKind::TextPattern => Some((pcre_literal(value), "pcre")),
    }
}

/// The observable (SCO) of an indicator value: its id and its id-contributing properties.
/// `None` for kinds STIX has no observable for on their own (user agents, text patterns).
pub fn sco(kind: IndicatorKind, value: &str) -> Option<(String, Value)> {
    let (ty, props) = match kind {
        IndicatorKind::Ip => (ip_type(value.parse().ok()?), json!({"value": value})),
        IndicatorKind::Cidr => {
            let net: ipnet::IpNet = value.parse().ok()?;
            (ip_type(net.addr()), json!({"value": value}))
        }
        IndicatorKind::Asn => {
            let n: u32 = value.strip_prefix("AS")?.parse().ok()?;
            ("autonomous-system", json!({"number": n}))
        }
        IndicatorKind::Domain => ("domain-name", json!({"value": value})),
        IndicatorKind::Url => ("url", json!({"value": uri(value)})),
        IndicatorKind::Email => ("email-addr", json!({"value": value})),
        IndicatorKind::SocialAccount => {
            let (p, h) = social(value)?;
            (
                "user-account",
                json!({"account_type": p, "account_login": h}),
            )
        }
        IndicatorKind::FileSha256 => ("file", json!({"hashes": {"SHA-256": value}})),
        IndicatorKind::UserAgent | IndicatorKind::TextPattern => return None,
    };
    Some((sco_id(ty, &props), props))
}

/// The observable (SCO) types the export writes.
pub fn sco_types() -> &'static [&'static str] {
    &[
        "ipv4-addr",
        "ipv6-addr",
        "autonomous-system",
        "domain-name",
        "url",
        "email-addr",
        "user-account",
        "file",
    ]
}

/// The observable object itself, marked `tlp`.
pub fn sco_object(kind: IndicatorKind, value: &str, tlp: Tlp) -> Option<Value> {
    let (id, props) = sco(kind, value)?;
    let mut o = props;
    let ty = id.split("--").next().unwrap_or_default().to_string();
    if let Value::Object(m) = &mut o {
        m.insert("type".into(), Value::String(ty));
        m.insert("spec_version".into(), json!("2.1"));
        m.insert("id".into(), Value::String(id));
        m.insert("object_marking_refs".into(), json!([tlp.stix_id()]));
    }
    Some(o)
}

/// The identity of an outlet.
pub fn identity_id(slug: &str) -> String {
    derived_id("identity", &["outlet", slug])
}

/// An outlet as a STIX identity.
pub fn identity(slug: &str, name: &str, created_ms: i64) -> Value {
    json!({
        "type": "identity",
        "spec_version": "2.1",
        "id": identity_id(slug),
        "created": format_time(created_ms),
        "modified": format_time(created_ms),
        "name": name,
        "identity_class": "organization",
        "sectors": ["communications"],
        "object_marking_refs": [Tlp::Green.stix_id()],
    })
}

/// An incident row, as read for export.
#[derive(Debug, Clone)]
pub struct IncidentRow {
    pub row_id: i64,
    pub uuid: String,
    pub outlet: String,
    pub kind: String,
    pub title: String,
    pub description: String,
    pub status: String,
    pub confidence: String,
    pub tlp: Tlp,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub date_unknown: bool,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A timeline update row.
#[derive(Debug, Clone)]
pub struct NoteRow {
    pub row_id: i64,
    /// The incident's row id (the export's keyset).
    pub incident_row_id: i64,
    pub incident_uuid: String,
    pub outlet: String,
    pub tlp: Tlp,
    pub incident_updated_ms: i64,
    pub created_ms: i64,
    pub body: String,
    pub new_status: Option<String>,
}

/// A sighting row (an indicator in an incident).
#[derive(Debug, Clone)]
pub struct SightingRow {
    pub row_id: i64,
    /// The incident's and the indicator's row ids (the export's keyset).
    pub incident_row_id: i64,
    pub indicator_id: i64,
    pub incident_uuid: String,
    pub outlet: String,
    pub tlp: Tlp,
    pub incident_created_ms: i64,
    pub incident_updated_ms: i64,
    pub kind: IndicatorKind,
    pub value: String,
    pub count: i64,
    pub first_ms: i64,
    pub last_ms: i64,
    pub updated_ms: i64,
}

impl IncidentRow {
    pub fn stix_id(&self) -> String {
        format!("incident--{}", self.uuid)
    }
    pub fn report_id(&self) -> String {
        derived_id("report", &[&self.uuid])
    }
    /// The TAXII `date_added` and STIX `modified` of the incident's objects.
    pub fn added_ms(&self) -> i64 {
        self.updated_ms.max(self.created_ms)
    }
}

impl NoteRow {
    pub fn stix_id(&self) -> String {
        derived_id("note", &[&self.incident_uuid, &self.row_id.to_string()])
    }
    pub fn added_ms(&self) -> i64 {
        self.created_ms.max(self.incident_updated_ms)
    }
}

/// The ids of what one sighting row becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SightingIds {
    pub indicator: String,
    pub observed_data: Option<String>,
    pub sighting: String,
    pub relationship: String,
}

/// The ids of the objects made from the sighting of (`kind`, `value`) in incident `uuid`.
pub fn sighting_ids(uuid: &str, kind: IndicatorKind, value: &str) -> SightingIds {
    let parts = [uuid, kind.as_str(), value];
    SightingIds {
        indicator: derived_id("indicator", &parts),
        observed_data: sco(kind, value).map(|_| derived_id("observed-data", &parts)),
        sighting: derived_id("sighting", &parts),
        relationship: derived_id("relationship", &parts),
    }
}

impl SightingRow {
    pub fn ids(&self) -> SightingIds {
        sighting_ids(&self.incident_uuid, self.kind, &self.value)
    }
    pub fn added_ms(&self) -> i64 {
        self.updated_ms
            .max(self.incident_updated_ms)
            .max(self.incident_created_ms)
    }
}

fn confidence_number(c: &str) -> i64 {
    // The STIX "None/Low/Med/High" scale (0/15/50/85).
    match Confidence::parse(c) {
        Some(Confidence::Confirmed) => 85,
        _ => 50,
    }
}

/// An incident as a STIX `incident`. The time window and status have no standard property on
/// the 2.1 incident stub, so they close the description.
pub fn incident(i: &IncidentRow) -> Value {
    let mut when = if i.date_unknown {
        format!("Started around {}", format_time(i.started_ms))
    } else {
        format!("Started {}", format_time(i.started_ms))
    };
    if let Some(e) = i.ended_ms {
        when.push_str(&format!(", ended {}", format_time(e)));
    }
    let status = Status::parse(&i.status)
        .map(|s| s.as_str())
        .unwrap_or("reported");
    let tail = format!("{when}. Status: {status}. Kind: {}.", i.kind);
    let description = if i.description.trim().is_empty() {
        tail
    } else {
        format!("{}\n\n{tail}", i.description.trim())
    };
    json!({
        "type": "incident",
        "spec_version": "2.1",
        "id": i.stix_id(),
        "created": format_time(i.created_ms),
        "modified": format_time(i.added_ms()),
        "created_by_ref": identity_id(&i.outlet),
        "name": i.title,
        "description": description,
        "labels": [i.kind],
        "confidence": confidence_number(&i.confidence),
        "object_marking_refs": [i.tlp.stix_id()],
    })
}

/// The report grouping an incident with its first sightings' objects and notes.
pub fn report(i: &IncidentRow, refs: &[String]) -> Value {
    let mut object_refs = vec![i.stix_id(), identity_id(&i.outlet)];
    object_refs.extend(refs.iter().cloned());
    json!({
        "type": "report",
        "spec_version": "2.1",
        "id": i.report_id(),
        "created": format_time(i.created_ms),
        "modified": format_time(i.added_ms()),
        "created_by_ref": identity_id(&i.outlet),
        "name": format!("Incident report: {}", i.title),
        "report_types": ["threat-report"],
        "published": format_time(i.created_ms),
        "object_refs": object_refs,
        "object_marking_refs": [i.tlp.stix_id()],
    })
}

/// The objects of an incident row: the incident and its report.
pub fn incident_objects(i: &IncidentRow, refs: &[String]) -> Vec<Value> {
    vec![incident(i), report(i, refs)]
}

/// A timeline update as a STIX `note` on the incident.
pub fn note(n: &NoteRow) -> Value {
    let status = n
        .new_status
        .as_deref()
        .and_then(Status::parse)
        .map(|s| format!("Status changed to {}.", s.as_str()));
    let content = match (&status, n.body.trim().is_empty()) {
        (Some(s), true) => s.clone(),
        (Some(s), false) => format!("{}\n\n{s}", n.body.trim()),
        (None, _) if n.body.trim().is_empty() => "(empty update)".to_string(),
        (None, _) => n.body.trim().to_string(),
    };
    let mut o = json!({
        "type": "note",
        "spec_version": "2.1",
        "id": n.stix_id(),
        "created": format_time(n.created_ms),
        "modified": format_time(n.added_ms()),
        "created_by_ref": identity_id(&n.outlet),
        "content": content,
        "object_refs": [format!("incident--{}", n.incident_uuid)],
        "object_marking_refs": [n.tlp.stix_id()],
    });
    if let (Some(s), Value::Object(m)) = (status, &mut o) {
        m.insert("abstract".into(), Value::String(s));
    }
    o
}

/// What a sighting row becomes: indicator, observed-data (when the kind has an observable),
/// sighting and relationship. The observable itself is exported once per bundle, apart.
pub fn sighting_objects(s: &SightingRow) -> Vec<Value> {
    let ids = s.ids();
    let created = format_time(s.incident_created_ms);
    let modified = format_time(s.added_ms());
    let marking = json!([s.tlp.stix_id()]);
    let author = identity_id(&s.outlet);
    let first = format_time(s.first_ms);
    let last = format_time(s.last_ms.max(s.first_ms));
    let mut out = Vec::with_capacity(4);
    let (pattern, pattern_type) =
        pattern(s.kind, &s.value).unwrap_or_else(|| (pcre_literal(&s.value), "pcre"));
    let mut indicator = json!({
        "type": "indicator",
        "spec_version": "2.1",
        "id": ids.indicator,
        "created": created,
        "modified": modified,
        "created_by_ref": author,
        "name": format!("{}: {}", s.kind.as_str(), s.value.chars().take(200).collect::<String>()),
        "description": format!("Seen in an attack on an outlet of the task force ({} times)", s.count),
        "indicator_types": ["malicious-activity"],
        "pattern": pattern,
        "pattern_type": pattern_type,
        "valid_from": first,
        "object_marking_refs": marking,
    });
    if pattern_type == "stix"
        && let Value::Object(m) = &mut indicator
    {
        m.insert("pattern_version".into(), json!("2.1"));
    }
    out.push(indicator);
    if let (Some(od), Some((sco_id, _))) = (&ids.observed_data, sco(s.kind, &s.value)) {
        out.push(json!({
            "type": "observed-data",
            "spec_version": "2.1",
            "id": od,
            "created": created,
            "modified": modified,
            "created_by_ref": author,
            "first_observed": first,
            "last_observed": last,
            "number_observed": s.count.clamp(1, STIX_MAX_COUNT),
            "object_refs": [sco_id],
            "object_marking_refs": marking,
        }));
    }
    let mut sighting = json!({
        "type": "sighting",
        "spec_version": "2.1",
        "id": ids.sighting,
        "created": created,
        "modified": modified,
        "created_by_ref": author,
        "sighting_of_ref": ids.indicator,
        "where_sighted_refs": [author],
        "count": s.count.clamp(0, STIX_MAX_COUNT),
        "first_seen": first,
        "last_seen": last,
        "object_marking_refs": marking,
    });
    if let (Some(od), Value::Object(m)) = (&ids.observed_data, &mut sighting) {
        m.insert("observed_data_refs".into(), json!([od]));
    }
    out.push(sighting);
    out.push(json!({
        "type": "relationship",
        "spec_version": "2.1",
        "id": ids.relationship,
        "created": created,
        "modified": modified,
        "created_by_ref": author,
        "relationship_type": "related-to",
        "source_ref": ids.indicator,
        "target_ref": format!("incident--{}", s.incident_uuid),
        "object_marking_refs": marking,
    }));
    out
}

/// The ids a report lists for one sighting row.
pub fn sighting_refs(uuid: &str, kind: IndicatorKind, value: &str) -> Vec<String> {
    let ids = sighting_ids(uuid, kind, value);
    let mut v = vec![ids.indicator];
    v.extend(ids.observed_data);
    v.push(ids.sighting);
    v.push(ids.relationship);
    v
}

// ---------------------------------------------------------------------------------------------
// Reading rows (TLP in SQL).

/// One bound value of a query built at run time.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    I(i64),
    S(String),
}

pub(crate) fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    args: &'q [Arg],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for a in args {
        q = match a {
            Arg::I(v) => q.bind(*v),
            Arg::S(v) => q.bind(v.as_str()),
        };
    }
    q
}

/// Filters of an export, all optional.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    /// Incidents that started at or after this time.
    pub from_ms: Option<i64>,
    /// Incidents that started before this time.
    pub to_ms: Option<i64>,
    /// Incidents of this outlet (slug).
    pub outlet: Option<String>,
    /// This incident only (UUID).
    pub incident: Option<String>,
}

impl ExportFilter {
    /// Reads the query parameters of the export endpoint; every problem at once.
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        outlet: Option<&str>,
        incident: Option<&str>,
    ) -> Result<ExportFilter> {
        let mut e = Vec::new();
        let mut time =
            |field: &str, v: Option<&str>| match v.map(str::trim).filter(|s| !s.is_empty()) {
                None => None,
                Some(s) => {
                    let t = parse_time(s);
                    if t.is_none() {
                        e.push(crate::model::FieldError::new(
                            field,
                            "not a date or RFC 3339 time",
                        ));
                    }
                    t
                }
            };
        let from_ms = time("from", from);
        let to_ms = time("to", to);
        let incident = incident
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        if let Some(i) = &incident
            && uuid::Uuid::parse_str(i).is_err()
        {
            e.push(crate::model::FieldError::new(
                "incident",
                "not an incident id",
            ));
        }
        let outlet = outlet
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        if let Some(o) = &outlet
            && o.len() > 40
        {
            e.push(crate::model::FieldError::new(
                "outlet",
                "not an outlet slug",
            ));
        }
        Error::check(e)?;
        Ok(ExportFilter {
            from_ms,
            to_ms,
            outlet,
            incident,
        })
    }

    /// The filter as SQL conditions on the incident aliased `i`, numbering parameters from
    /// `$first`.
    pub(crate) fn sql(&self, first: usize) -> (String, Vec<Arg>) {
        self.conditions(first, "")
    }

    /// The same conditions with the start time and outlet written so that no index can serve
    /// them (`+ 0`), for the export's pages, which walk the incidents' primary key inside the
    /// scope. Given an index on the filter, PostgreSQL's planner underestimated a narrow window
    /// and took that index for a page, then sorted the rest of the window's sightings on every
    /// page (measured: 100 ms a page in a window of 1,000 incidents instead of 7 ms).
    fn walk_sql(&self, first: usize) -> (String, Vec<Arg>) {
        self.conditions(first, " + 0")
    }

    fn conditions(&self, first: usize, no_index: &str) -> (String, Vec<Arg>) {
        let mut conds = Vec::new();
        let mut args = Vec::new();
        let mut push = |c: &str, a: Arg| {
            args.push(a);
            conds.push(c.replace('?', &format!("${}", first + args.len() - 1)));
        };
        if let Some(v) = self.from_ms {
            push(&format!("i.started_ms{no_index} >= ?"), Arg::I(v));
        }
        if let Some(v) = self.to_ms {
            push(&format!("i.started_ms{no_index} < ?"), Arg::I(v));
        }
        if let Some(v) = &self.outlet {
            push(
                &format!("i.outlet_id{no_index} = (SELECT id FROM outlets WHERE slug = ?)"),
                Arg::S(v.clone()),
            );
        }
        if let Some(v) = &self.incident {
            push("i.uuid = ?", Arg::S(v.to_ascii_lowercase()));
        }
        if conds.is_empty() {
            ("1 = 1".into(), args)
        } else {
            (conds.join(" AND "), args)
        }
    }
}

/// The incidents an export covers: those the caller may see under the filter, with row ids in
/// `first..=last`. The span is found once per export ([`Scope::find`]: one pass over the
/// selected incidents, by the filter's best index); every page after that walks the incidents'
/// primary key inside it. So no page re-reads the part of the selection before its cursor, and
/// the last page of a section stops at the last selected incident instead of walking on through
/// the rest of the table.
pub(crate) struct Scope<'a> {
    pub(crate) filter: &'a ExportFilter,
    pub(crate) first: i64,
    pub(crate) last: i64,
}

impl<'a> Scope<'a> {
    pub(crate) async fn find(
        c: &mut Conn,
        actor: &Actor,
        filter: &'a ExportFilter,
    ) -> Result<Scope<'a>> {
        let (fs, args) = filter.sql(2);
        // `+ 0`: PostgreSQL would otherwise answer MIN and MAX by walking the primary key from
        // each end until an incident passes, through every incident outside the selection;
        // this way it reads the selection by the filter's index, once.
        let sql = format!(
            "SELECT MIN(i.id + 0) AS lo, MAX(i.id + 0) AS hi FROM incidents i WHERE {VISIBLE} AND {fs}"
        );
        let r = bind_all(page_query(sql, actor), &args)
            .fetch_one(&mut *c)
            .await?;
        let lo: Option<i64> = r.try_get("lo")?;
        let hi: Option<i64> = r.try_get("hi")?;
        Ok(match (lo, hi) {
            (Some(first), Some(last)) => Scope {
                filter,
                first,
                last,
            },
            // Nothing selected: an empty span, every page is empty.
            _ => Scope {
                filter,
                first: 1,
                last: 0,
            },
        })
    }
}

/// Where a section of an export stands: the last row written was the one with key `key` under
/// incident row `incident` (incidents themselves use `incident` only). A section starts at
/// `Cursor::default()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) incident: i64,
    pub(crate) key: i64,
}

/// Which rows a loader reads.
pub(crate) enum Sel<'a> {
    /// The export's next keyset page inside a [`Scope`], after a [`Cursor`]: rows in order of
    /// their incident's row id, then of their own key (each loader says which).
    After(Cursor, &'a Scope<'a>),
    /// Given row ids (TAXII), in row-id order.
    Ids(&'a [i64]),
}

/// A query of the export or of a TAXII page, with the caller's outlet bound as `$1`. Not kept as
/// a prepared statement: PostgreSQL plans a prepared statement generically after five runs,
/// without the values of the cursor and the scope, and the generic plan of a page took the
/// filter's index and sorted the rest of the scope (measured over 10 million sightings: 0.6 to
/// 1.8 s a page instead of 2 ms), which made the export quadratic again. An unnamed statement is
/// planned with each page's values; parsing it again costs far less than a page.
fn page_query(
    sql: String,
    actor: &Actor,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .persistent(false)
        .bind(actor.outlet_id)
}

/// `col IN ($2, …)` over the given ids (`1 = 0` for none).
fn ids_sql(ids: &[i64], col: &str) -> (String, Vec<Arg>) {
    if ids.is_empty() {
        return ("1 = 0".into(), Vec::new());
    }
    let ps: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
    (
        format!("{col} IN ({})", ps.join(", ")),
        ids.iter().map(|i| Arg::I(*i)).collect(),
    )
}

/// The scope's incidents after the cursor's: `i.id` in `(cursor.incident, last]`, parameters
/// `$2`, `$3`, then the filter from `$4`.
fn next_sql(scope: &Scope<'_>, cursor: Cursor) -> (String, Vec<Arg>) {
    let (fs, fa) = scope.filter.walk_sql(4);
    let mut args = vec![
        Arg::I(cursor.incident.max(scope.first.saturating_sub(1))),
        Arg::I(scope.last),
    ];
    args.extend(fa);
    (format!("i.id > $2 AND i.id <= $3 AND {fs}"), args)
}

/// The rest of the cursor's incident: its rows with `key` after the cursor's, parameters `$2`,
/// `$3`, then the filter from `$4` (the incident passed it already; the condition stays so that
/// every query states its whole selection).
fn tail_sql(
    scope: &Scope<'_>,
    cursor: Cursor,
    incident_col: &str,
    key: &str,
) -> (String, Vec<Arg>) {
    let (fs, fa) = scope.filter.walk_sql(4);
    let mut args = vec![Arg::I(cursor.incident), Arg::I(cursor.key)];
    args.extend(fa);
    (
        format!("i.id = $2 AND {incident_col} = $2 AND {key} > $3 AND {fs}"),
        args,
    )
}

/// The incidents table as the outer loop of an export page, walked by primary key, and the join
/// that keeps it outer. SQLite's planner otherwise takes the filter's index (start time, outlet)
/// and sorts the whole selection on every page; `NOT INDEXED` leaves it the rowid range and
/// `CROSS JOIN` keeps the incidents the outer loop. PostgreSQL takes the primary key on its own
/// for a `LIMIT`ed page (checked with `EXPLAIN ANALYZE` over 10 million sightings).
fn walk(c: &Conn) -> (&'static str, &'static str) {
    if c.backend_name().eq_ignore_ascii_case("sqlite") {
        ("incidents i NOT INDEXED", "CROSS JOIN")
    } else {
        ("incidents i", "JOIN")
    }
}

fn tlp_col(r: &AnyRow, col: &str) -> Result<Tlp> {
    // An unknown stored level is treated as the most closed one.
    Ok(Tlp::parse(&r.try_get::<String, _>(col)?).unwrap_or(Tlp::Red))
}

fn incident_row(r: &AnyRow) -> Result<IncidentRow> {
    Ok(IncidentRow {
        row_id: r.try_get("id")?,
        uuid: r.try_get("uuid")?,
        outlet: r.try_get("slug")?,
        kind: r.try_get("kind")?,
        title: r.try_get("title")?,
        description: r.try_get("description")?,
        status: r.try_get("status")?,
        confidence: r.try_get("confidence")?,
        tlp: tlp_col(r, "tlp")?,
        started_ms: r.try_get("started_ms")?,
        ended_ms: r.try_get("ended_ms")?,
        date_unknown: r.try_get::<i64, _>("date_unknown")? != 0,
        created_ms: r.try_get("created_ms")?,
        updated_ms: r.try_get("updated_ms")?,
    })
}

/// A connection to read with: a pooled one, or the snapshot transaction of an export.
pub(crate) type Conn = sqlx::AnyConnection;

/// Visible incidents, by row id.
pub(crate) async fn load_incidents(
    c: &mut Conn,
    actor: &Actor,
    sel: Sel<'_>,
    limit: i64,
) -> Result<Vec<IncidentRow>> {
    let (table, cond, args) = match &sel {
        Sel::After(cursor, scope) => {
            let (cond, args) = next_sql(scope, *cursor);
            (walk(c).0, cond, args)
        }
        Sel::Ids(ids) => {
            let (cond, args) = ids_sql(ids, "i.id");
            ("incidents i", cond, args)
        }
    };
    let sql = format!(
        "SELECT i.id, i.uuid, i.kind, i.title, i.description, i.status, i.confidence, i.tlp,
                    i.started_ms, i.ended_ms, i.date_unknown, i.created_ms, i.updated_ms, o.slug
             FROM {table} JOIN outlets o ON o.id = i.outlet_id
             WHERE {VISIBLE} AND {cond} ORDER BY i.id LIMIT {limit}"
    );
    let q = bind_all(page_query(sql, actor), &args);
    q.fetch_all(&mut *c)
        .await?
        .iter()
        .map(incident_row)
        .collect()
}

/// The rows under incidents that an export pages through (notes, sightings): what to read, and
/// how a row hangs off its incident `i`.
struct Child {
    /// Columns read, besides `i.id AS i_id` and the key as `k`.
    cols: &'static str,
    /// The table and alias, joined to `i` on `incident`.
    table: &'static str,
    /// The row's column pointing to its incident.
    incident: &'static str,
    /// The row's key within an incident: unique there, and the second column of an index that
    /// starts with `incident`.
    key: &'static str,
    /// The row id, the order of `Sel::Ids`.
    id: &'static str,
    /// Joins after the table.
    joins: &'static str,
}

/// The raw rows of a page of `q`. Under `Sel::After`, a page is two index ranges: the rest of
/// the cursor's incident (its rows with a key after the cursor's), then the scope's incidents
/// after it, walked by primary key, each with its rows in key order. One query with an `OR`
/// between the two would not run as a range, and would re-read the cursor's incident from its
/// start on every page.
async fn child_rows(
    c: &mut Conn,
    actor: &Actor,
    sel: &Sel<'_>,
    limit: i64,
    q: &Child,
) -> Result<Vec<AnyRow>> {
    let (cols, table, incident, key, joins) = (q.cols, q.table, q.incident, q.key, q.joins);
    let run = |from: &str, join: &str, cond: &str, order: &str, limit: i64| {
        format!(
            "SELECT {cols}, i.id AS i_id, {key} AS k
             FROM {from} {join} {table} ON {incident} = i.id {joins}
             WHERE {VISIBLE} AND {cond} ORDER BY {order} LIMIT {limit}"
        )
    };
    match sel {
        Sel::Ids(ids) => {
            let (cond, args) = ids_sql(ids, q.id);
            let sql = run("incidents i", "JOIN", &cond, q.id, limit);
            let q = bind_all(page_query(sql, actor), &args);
            Ok(q.fetch_all(&mut *c).await?)
        }
        Sel::After(cursor, scope) => {
            let (from, join) = walk(c);
            let mut rows = Vec::new();
            if cursor.incident >= scope.first && cursor.incident <= scope.last {
                let (cond, args) = tail_sql(scope, *cursor, incident, key);
                let sql = run(from, join, &cond, key, limit);
                let q = bind_all(page_query(sql, actor), &args);
                rows = q.fetch_all(&mut *c).await?;
            }
            let left = limit - rows.len() as i64;
            if left > 0 {
                let (cond, args) = next_sql(scope, *cursor);
                let sql = run(from, join, &cond, &format!("i.id, {key}"), left);
                let q = bind_all(page_query(sql, actor), &args);
                rows.extend(q.fetch_all(&mut *c).await?);
            }
            Ok(rows)
        }
    }
}

/// The cursor after the last of a page's raw rows (`None` for an empty page).
fn cursor_after(rows: &[AnyRow]) -> Result<Option<Cursor>> {
    rows.last()
        .map(|r| {
            Ok(Cursor {
                incident: r.try_get("i_id")?,
                key: r.try_get("k")?,
            })
        })
        .transpose()
}

const NOTES: Child = Child {
    cols: "u.id, u.created_ms, u.body, u.new_status, i.uuid, i.tlp, i.updated_ms, o.slug",
    table: "incident_updates u",
    incident: "u.incident_id",
    key: "u.id",
    id: "u.id",
    joins: "JOIN outlets o ON o.id = i.outlet_id",
};

/// Timeline updates of visible incidents: under `Sel::After`, by incident row id, then update
/// row id (index `incident_updates_keyset`); under `Sel::Ids`, by row id.
pub(crate) async fn load_notes(
    c: &mut Conn,
    actor: &Actor,
    sel: Sel<'_>,
    limit: i64,
) -> Result<Vec<NoteRow>> {
    Ok(notes_page(c, actor, &sel, limit).await?.0)
}

/// A page of notes and the cursor after it.
async fn notes_page(
    c: &mut Conn,
    actor: &Actor,
    sel: &Sel<'_>,
    limit: i64,
) -> Result<(Vec<NoteRow>, Option<Cursor>)> {
    let rows = child_rows(c, actor, sel, limit, &NOTES).await?;
    let notes = rows
        .iter()
        .map(|r| {
            Ok(NoteRow {
                row_id: r.try_get("id")?,
                incident_row_id: r.try_get("i_id")?,
                incident_uuid: r.try_get("uuid")?,
                outlet: r.try_get("slug")?,
                tlp: tlp_col(r, "tlp")?,
                incident_updated_ms: r.try_get("updated_ms")?,
                created_ms: r.try_get("created_ms")?,
                body: r.try_get("body")?,
                new_status: r.try_get("new_status")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((notes, cursor_after(&rows)?))
}

const SIGHTINGS: Child = Child {
    cols: "s.id, s.indicator_id, s.count, s.first_seen_ms, s.last_seen_ms,
           s.updated_ms AS s_updated, ind.kind, ind.value, i.uuid, i.tlp, i.created_ms,
           i.updated_ms AS i_updated, o.slug",
    table: "sightings s",
    incident: "s.incident_id",
    // The order of the UNIQUE (incident_id, indicator_id) index: no new index on the largest
    // table.
    key: "s.indicator_id",
    id: "s.id",
    joins: "JOIN indicators ind ON ind.id = s.indicator_id JOIN outlets o ON o.id = i.outlet_id",
};

/// Sightings in visible incidents: under `Sel::After`, by incident row id, then indicator row
/// id; under `Sel::Ids`, by row id.
pub(crate) async fn load_sightings(
    c: &mut Conn,
    actor: &Actor,
    sel: Sel<'_>,
    limit: i64,
) -> Result<Vec<SightingRow>> {
    Ok(sightings_page(c, actor, &sel, limit).await?.0)
}

/// A page of sightings and the cursor after it. The cursor comes from the last row read, not
/// the last row kept, so a page of nothing but unknown kinds does not end the export early.
async fn sightings_page(
    c: &mut Conn,
    actor: &Actor,
    sel: &Sel<'_>,
    limit: i64,
) -> Result<(Vec<SightingRow>, Option<Cursor>)> {
    let rows = child_rows(c, actor, sel, limit, &SIGHTINGS).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        // A kind this version does not know (a newer database) is skipped, not guessed.
        let Some(kind) = IndicatorKind::parse(&r.try_get::<String, _>("kind")?) else {
            continue;
        };
        out.push(SightingRow {
            row_id: r.try_get("id")?,
            incident_row_id: r.try_get("i_id")?,
            indicator_id: r.try_get("indicator_id")?,
            incident_uuid: r.try_get("uuid")?,
            outlet: r.try_get("slug")?,
            tlp: tlp_col(r, "tlp")?,
            incident_created_ms: r.try_get("created_ms")?,
            incident_updated_ms: r.try_get("i_updated")?,
            kind,
            value: r.try_get("value")?,
            count: r.try_get("count")?,
            first_ms: r.try_get("first_seen_ms")?,
            last_ms: r.try_get("last_seen_ms")?,
            updated_ms: r.try_get("s_updated")?,
        });
    }
    Ok((out, cursor_after(&rows)?))
}

/// One observable: indicator row id, kind, value, the most open TLP under which the caller sees
/// it, and the earliest `date_added` of those sightings.
pub(crate) type Observable = (i64, IndicatorKind, String, Tlp, i64);

/// The TLP rank (0 CLEAR … 4 RED) of the incident `i`, in SQL.
const TLP_RANK: &str = "CASE i.tlp WHEN 'clear' THEN 0 WHEN 'green' THEN 1 WHEN 'amber' THEN 2
                        WHEN 'amber+strict' THEN 3 ELSE 4 END";
/// When a sighting's objects were added: the later of the sighting's and its incident's change.
const ADDED: &str = "CASE WHEN s.updated_ms > i.updated_ms THEN s.updated_ms ELSE i.updated_ms END";

/// The observables of a scope with indicator row ids after `after`, by indicator row id, at
/// most `limit` (all without). One aggregate over the scope's sightings (incidents walked by
/// primary key, their sightings by the `(incident_id, indicator_id)` index), grouped by
/// indicator id alone, then joined to the indicators. An indicator's rank and date need every
/// sighting of it in the scope, so the export runs this once and streams it; a page of it
/// (`limit`) costs as much as the whole scope.
fn observables_sql(
    c: &Conn,
    scope: &Scope<'_>,
    after: i64,
    limit: Option<i64>,
) -> (String, Vec<Arg>) {
    let (from, join) = walk(c);
    let (fs, fa) = scope.filter.walk_sql(5);
    let mut args = vec![Arg::I(scope.first), Arg::I(scope.last), Arg::I(after)];
    args.extend(fa);
    let limit = limit.map(|l| format!(" LIMIT {l}")).unwrap_or_default();
    // The inner ORDER BY lets SQLite hand the groups over in order (its sorter is ordered
    // already); the outer one is the contract, and costs little on top.
    let sql = format!(
        "SELECT ind.id, ind.kind, ind.value, a.rank, a.added FROM (
             SELECT s.indicator_id AS id, MIN({TLP_RANK}) AS rank, MIN({ADDED}) AS added
             FROM {from} {join} sightings s ON s.incident_id = i.id
             WHERE {VISIBLE} AND i.id >= $2 AND i.id <= $3 AND s.indicator_id > $4 AND {fs}
             GROUP BY s.indicator_id ORDER BY s.indicator_id
         ) a {join} indicators ind ON ind.id = a.id ORDER BY a.id{limit}"
    );
    (sql, args)
}

fn observable_row(r: &AnyRow) -> Result<Option<Observable>> {
    let Some(kind) = IndicatorKind::parse(&r.try_get::<String, _>("kind")?) else {
        return Ok(None);
    };
    let rank: i64 = r.try_get("rank")?;
    let tlp = Tlp::ALL
        .iter()
        .copied()
        .find(|t| i64::from(t.rank()) == rank)
        .unwrap_or(Tlp::Red);
    Ok(Some((
        r.try_get("id")?,
        kind,
        r.try_get("value")?,
        tlp,
        r.try_get("added")?,
    )))
}

/// Indicator values seen in visible incidents (under the export's scope, or of the given
/// indicator row ids), each once, with the most open TLP under which the caller sees it and the
/// earliest `date_added` of those sightings; by indicator row id. Under `Sel::After`, the
/// indicators after `cursor.key` (see [`observables_sql`] for the cost; the export streams them
/// instead).
pub(crate) async fn load_observables(
    c: &mut Conn,
    actor: &Actor,
    sel: Sel<'_>,
    limit: i64,
) -> Result<Vec<Observable>> {
    let (sql, args) = match &sel {
        Sel::After(cursor, scope) => observables_sql(c, scope, cursor.key, Some(limit)),
        Sel::Ids(ids) => {
            let (cond, args) = ids_sql(ids, "ind.id");
            (
                format!(
                    "SELECT ind.id, ind.kind, ind.value, MIN({TLP_RANK}) AS rank, MIN({ADDED}) AS added
                     FROM indicators ind JOIN sightings s ON s.indicator_id = ind.id
                     JOIN incidents i ON i.id = s.incident_id
                     WHERE {VISIBLE} AND {cond}
                     GROUP BY ind.id, ind.kind, ind.value ORDER BY ind.id LIMIT {limit}"
                ),
                args,
            )
        }
    };
    let q = bind_all(page_query(sql, actor), &args);
    let mut out = Vec::new();
    for r in &q.fetch_all(&mut *c).await? {
        out.extend(observable_row(r)?);
    }
    Ok(out)
}

/// For each of the given visible incidents, the ids its report lists beyond the incident
/// and the outlet: its first sightings' objects and its first notes (bounded).
pub(crate) async fn load_report_refs(
    c: &mut Conn,
    actor: &Actor,
    incidents: &[IncidentRow],
) -> Result<HashMap<i64, Vec<String>>> {
    let mut out: HashMap<i64, Vec<String>> = HashMap::new();
    if incidents.is_empty() {
        return Ok(out);
    }
    let uuids: HashMap<i64, &str> = incidents
        .iter()
        .map(|i| (i.row_id, i.uuid.as_str()))
        .collect();
    let ps: Vec<String> = (0..incidents.len())
        .map(|i| format!("${}", i + 2))
        .collect();
    let args: Vec<Arg> = incidents.iter().map(|i| Arg::I(i.row_id)).collect();
    let sql = format!(
        "SELECT x.incident_id, x.kind, x.value FROM (
               SELECT s.incident_id, ind.kind, ind.value,
                      ROW_NUMBER() OVER (PARTITION BY s.incident_id ORDER BY s.id) AS rn
               FROM sightings s JOIN indicators ind ON ind.id = s.indicator_id
               JOIN incidents i ON i.id = s.incident_id
               WHERE {VISIBLE} AND s.incident_id IN ({})
             ) x WHERE x.rn <= {REPORT_MAX_SIGHTINGS} ORDER BY x.incident_id, x.rn",
        ps.join(", ")
    );
    let q = bind_all(page_query(sql, actor), &args);
    for r in q.fetch_all(&mut *c).await? {
        let id: i64 = r.try_get("incident_id")?;
        let (Some(uuid), Some(kind)) = (
            uuids.get(&id),
            IndicatorKind::parse(&r.try_get::<String, _>("kind")?),
        ) else {
            continue;
        };
        let value: String = r.try_get("value")?;
        out.entry(id)
            .or_default()
            .extend(sighting_refs(uuid, kind, &value));
    }
    let sql = format!(
        "SELECT x.incident_id, x.id FROM (
               SELECT u.incident_id, u.id,
                      ROW_NUMBER() OVER (PARTITION BY u.incident_id ORDER BY u.id) AS rn
               FROM incident_updates u JOIN incidents i ON i.id = u.incident_id
               WHERE {VISIBLE} AND u.incident_id IN ({})
             ) x WHERE x.rn <= {REPORT_MAX_SIGHTINGS} ORDER BY x.incident_id, x.rn",
        ps.join(", ")
    );
    let q = bind_all(page_query(sql, actor), &args);
    for r in q.fetch_all(&mut *c).await? {
        let id: i64 = r.try_get("incident_id")?;
        let row: i64 = r.try_get("id")?;
        if let Some(uuid) = uuids.get(&id) {
            out.entry(id)
                .or_default()
                .push(derived_id("note", &[uuid, &row.to_string()]));
        }
    }
    Ok(out)
}

/// Every outlet: slug, name, created (names are not secret inside the task force).
pub(crate) async fn load_outlets(c: &mut Conn) -> Result<Vec<(i64, String, String, i64)>> {
    sqlx::query("SELECT id, slug, name, created_ms FROM outlets ORDER BY id")
        .fetch_all(&mut *c)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("id")?,
                r.try_get("slug")?,
                r.try_get("name")?,
                r.try_get("created_ms")?,
            ))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The streamed bundle.

/// A response body fed by a bounded channel: the producer waits while the client is slow, and
/// stops when the client goes away (the channel closes).
struct ChannelBody(mpsc::Receiver<std::result::Result<Bytes, std::io::Error>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|r| r.map(http_body::Frame::data)))
    }
}

/// Writes a bundle's JSON text in chunks. The `objects` key is written with the first object,
/// so a bundle with nothing in it is `{"type":"bundle","id":…}` (an empty `objects` list is
/// invalid STIX).
struct BundleWriter {
    tx: mpsc::Sender<std::result::Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
    any: bool,
    tlps: BTreeSet<Tlp>,
    outlets: BTreeSet<String>,
}

/// The client went away: stop reading the database.
struct Gone;

impl BundleWriter {
    async fn flush(&mut self) -> std::result::Result<(), Gone> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        match tokio::time::timeout(SEND_TIMEOUT, self.tx.send(Ok(chunk))).await {
            Ok(Ok(())) => Ok(()),
            // The client went away, or stopped reading: either way the snapshot is released.
            _ => Err(Gone),
        }
    }

    async fn object(&mut self, v: &Value) -> std::result::Result<(), Gone> {
        self.buf.extend_from_slice(if self.any {
            b",\n"
        } else {
            b",\"objects\":[\n"
        });
        self.any = true;
        // Writing a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, v);
        if self.buf.len() >= CHUNK_BYTES {
            self.flush().await?;
        }
        Ok(())
    }
}

/// Checks the caller and the filter, then streams the bundle of everything the caller may see
/// under the filter. Errors found before the first byte (no right to read, bad filter, unknown
/// incident) are answered normally; a database failure later cuts the response short, so a
/// client never takes a truncated bundle for a whole one.
pub async fn bundle_body(db: Db, actor: Actor, f: ExportFilter) -> Result<Body> {
    if !actor.role.can_read() {
        return Err(Error::Forbidden);
    }
    if let Some(id) = &f.incident {
        // 404 for an incident the caller may not see, as everywhere else.
        db.incident(&actor, &id.to_ascii_lowercase()).await?;
    }
    // Wait a little for a running export to finish; past that, ask the client to come back.
    let permit = match tokio::time::timeout(PERMIT_WAIT, EXPORTS.acquire()).await {
        Ok(Ok(p)) => p,
        _ => return Err(Error::Throttled { retry_after_s: 30 }),
    };
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    tokio::spawn(async move {
        let _permit = permit;
        let mut w = BundleWriter {
            tx,
            buf: Vec::with_capacity(CHUNK_BYTES + 4096),
            any: false,
            tlps: BTreeSet::new(),
            outlets: BTreeSet::new(),
        };
        let head = json!({"type": "bundle", "id": format!("bundle--{}", uuid::Uuid::new_v4())});
        let head = serde_json::to_string(&head).unwrap_or_default();
        w.buf
            .extend_from_slice(head.trim_end_matches('}').as_bytes());
        match snapshot_and_write(&db, &actor, &f, &mut w).await {
            Ok(Ok(())) => {
                w.buf.extend_from_slice(if w.any { b"\n]}" } else { b"}" });
                let _ = w.flush().await;
            }
            Ok(Err(Gone)) => {}
            Err(e) => {
                tracing::error!(error = %e, "STIX export failed part way");
                let _ = w.tx.send(Err(std::io::Error::other("export failed"))).await;
            }
        }
    });
    Ok(Body::new(ChannelBody(rx)))
}

/// Runs the export inside one read transaction, so every reference in the bundle resolves even
/// while outlets keep writing (a snapshot on SQLite in WAL mode, REPEATABLE READ on PostgreSQL).
async fn snapshot_and_write(
    db: &Db,
    actor: &Actor,
    f: &ExportFilter,
    w: &mut BundleWriter,
) -> Result<std::result::Result<(), Gone>> {
    let mut tx = db.pool.begin().await?;
    if db.backend == crate::db::Backend::Postgres {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        export_planner(&mut tx, true).await?;
    }
    let r = write_bundle(&mut tx, actor, f, w).await;
    // Read only: ending it either way changes nothing.
    let _ = tx.rollback().await;
    r
}

/// PostgreSQL's planner settings for the export's own queries (`on`), or back to the session's
/// for the queries of other modules (campaigns). Every query of the export is a walk of indexes
/// by design (keyset pages of a few hundred rows, nested loops by primary key). The default cost
/// model misjudges the selection (the TLP condition and the filter together) and, for a page,
/// chose hash joins over whole tables (a sequential scan of all indicators for each page's
/// report references, of all updates for each page of notes), or a merge join from the start of
/// the incidents' primary key: pages then cost the table instead of the page. For the export's
/// transaction only (`SET LOCAL`), index reads are priced as on SSD and hash and merge joins are
/// left out; JIT compiling is not worth it for pages of milliseconds. Nothing on SQLite.
async fn export_planner(c: &mut Conn, on: bool) -> Result<()> {
    if c.backend_name().eq_ignore_ascii_case("sqlite") {
        return Ok(());
    }
    let settings: [(&str, &str); 4] = [
        ("random_page_cost", "1.1"),
        ("enable_hashjoin", "off"),
        ("enable_mergejoin", "off"),
        ("jit", "off"),
    ];
    for (name, value) in settings {
        let value = if on { value } else { "DEFAULT" };
        // Names and values are the constants above.
        sqlx::query(sqlx::AssertSqlSafe(format!("SET LOCAL {name} TO {value}")))
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

async fn write_bundle(
    c: &mut Conn,
    actor: &Actor,
    f: &ExportFilter,
    w: &mut BundleWriter,
) -> Result<std::result::Result<(), Gone>> {
    macro_rules! put {
        ($v:expr) => {
            if let Err(g) = w.object(&$v).await {
                return Ok(Err(g));
            }
        };
    }
    // Every section pages by keyset inside one scope (the selected incidents' row-id span), so
    // each page costs what it returns; the observables are one aggregate, streamed.
    let scope = Scope::find(c, actor, f).await?;
    let mut cursor = Cursor::default();
    loop {
        let page = load_incidents(c, actor, Sel::After(cursor, &scope), INCIDENT_PAGE).await?;
        let Some(last) = page.last() else { break };
        cursor = Cursor {
            incident: last.row_id,
            key: 0,
        };
        let refs = load_report_refs(c, actor, &page).await?;
        for i in &page {
            w.tlps.insert(i.tlp);
            w.outlets.insert(i.outlet.clone());
            let r = refs.get(&i.row_id).map(Vec::as_slice).unwrap_or(&[]);
            for o in incident_objects(i, r) {
                put!(o);
            }
        }
    }
    let mut cursor = Cursor::default();
    loop {
        let (page, next) = notes_page(c, actor, &Sel::After(cursor, &scope), PAGE).await?;
        let Some(next) = next else { break };
        cursor = next;
        for n in &page {
            w.tlps.insert(n.tlp);
            w.outlets.insert(n.outlet.clone());
            put!(note(n));
        }
    }
    let mut cursor = Cursor::default();
    loop {
        let (page, next) = sightings_page(c, actor, &Sel::After(cursor, &scope), PAGE).await?;
        let Some(next) = next else { break };
        cursor = next;
        for s in &page {
            w.tlps.insert(s.tlp);
            w.outlets.insert(s.outlet.clone());
            for o in sighting_objects(s) {
                put!(o);
            }
        }
    }
    // Confirmed campaigns over the members this export holds (`campaigns::stix_objects`), read
    // with the planner's usual settings.
    export_planner(c, false).await?;
    let campaigns = crate::campaigns::visible_campaigns(
        c,
        actor,
        Some("confirmed"),
        crate::campaigns::STIX_MAX_CAMPAIGNS,
    )
    .await?;
    export_planner(c, true).await?;
    for camp in campaigns {
        let objects = crate::campaigns::stix_objects(&camp, |m| {
            f.from_ms.is_none_or(|v| m.started_ms >= v)
                && f.to_ms.is_none_or(|v| m.started_ms < v)
                && f.outlet.as_ref().is_none_or(|o| *o == m.outlet)
                && f.incident
                    .as_ref()
                    .is_none_or(|i| i.eq_ignore_ascii_case(&m.id))
        });
        if !objects.is_empty()
            && let Some(t) = Tlp::parse(&camp.tlp)
        {
            w.tlps.insert(t);
        }
        for o in objects {
            put!(o);
        }
    }
    // The observables: one aggregate over the scope, read as a stream (the database's sorter
    // spills to disk, and rows come no faster than the client takes them). Paging it would
    // aggregate the whole scope again for every page.
    {
        use futures_util::TryStreamExt;
        let (sql, args) = observables_sql(c, &scope, 0, None);
        let mut rows = bind_all(page_query(sql, actor), &args).fetch(&mut *c);
        while let Some(r) = rows.try_next().await? {
            let Some((_, kind, value, tlp, _)) = observable_row(&r)? else {
                continue;
            };
            if let Some(o) = sco_object(kind, &value, tlp) {
                w.tlps.insert(tlp);
                put!(o);
            }
        }
    }
    // Identities of the outlets whose objects are in the bundle, and the markings used. Both
    // sets are bounded by the number of outlets and TLP levels.
    let outlets: BTreeMap<String, (String, i64)> = load_outlets(c)
        .await?
        .into_iter()
        .map(|(_, slug, name, created)| (slug, (name, created)))
        .collect();
    let wanted = std::mem::take(&mut w.outlets);
    for slug in &wanted {
        if let Some((name, created)) = outlets.get(slug) {
            w.tlps.insert(Tlp::Green);
            put!(identity(slug, name, *created));
        }
    }
    let tlps = std::mem::take(&mut w.tlps);
    for t in tlps {
        put!(marking(t));
    }
    Ok(Ok(()))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BundleQuery {
    from: Option<String>,
    to: Option<String>,
    outlet: Option<String>,
    incident: Option<String>,
}

/// `GET /api/v1/stix/bundle`: everything the caller may see, as one STIX 2.1 bundle, streamed.
pub(crate) async fn bundle_handler(
    axum::extract::State(a): axum::extract::State<std::sync::Arc<crate::Atlas>>,
    crate::api::Caller(c): crate::api::Caller,
    q: std::result::Result<
        axum::extract::Query<BundleQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    let axum::extract::Query(q) = q.map_err(|e| Error::field("query", e.body_text()))?;
    let f = ExportFilter::parse(
        q.from.as_deref(),
        q.to.as_deref(),
        q.outlet.as_deref(),
        q.incident.as_deref(),
    )?;
    let body = bundle_body(a.db.clone(), c, f).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/stix+json;version=2.1",
        )],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sco_ids_match_the_spec_vectors() {
        assert_eq!(
            sco(IndicatorKind::Ip, "198.51.100.7").unwrap().0,
            "ipv4-addr--12592121-be4c-5a93-a813-5a5af16e50db"
        );
        assert_eq!(
            sco(IndicatorKind::Url, "https://outlet.example/2026/03/story")
                .unwrap()
                .0,
            "url--870a4aea-1c88-5b75-97b4-ee0411aea952"
        );
    }

    #[test]
    fn derived_ids_are_stable_v4_and_distinct() {
        let a = derived_id("indicator", &["x", "ip", "1.2.3.4"]);
        assert_eq!(a, derived_id("indicator", &["x", "ip", "1.2.3.4"]));
        assert_ne!(a, derived_id("indicator", &["xi", "p", "1.2.3.4"]));
        let u = uuid::Uuid::parse_str(a.strip_prefix("indicator--").unwrap()).unwrap();
        assert_eq!(u.get_version_num(), 4);
    }
}
