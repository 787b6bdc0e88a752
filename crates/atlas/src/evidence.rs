//! Evidence packages for the police and for collective petitions: one tar file per export,
//! with everything a recipient needs to read the facts and to check that nothing was changed.
//!
//! Layout of a package (all paths relative, `/`-separated):
//! - `report.html`: the facts for people (Russian by default, Kazakh or English on request);
//! - `report.pdf`: the same facts as a PDF to print, same language (`pdf.rs`);
//! - `facts.json`, `facts.csv`: the same facts for machines (the CSV guards spreadsheet cells
//!   against formulas; `facts.json` has the exact values);
//! - `attachments/<sha256>-<safe name>`: the stored bytes of every attachment, unchanged;
//! - `custody.jsonl`: the custody log of those attachments, one canonical JSON object a line,
//!   including the `exported` entries this export appended (see [`verify::custody_chain`]);
//! - `SHA256SUMS`: for `sha256sum -c`; `VERIFY.txt`: how to check the package (ru + en);
//! - `manifest.json`: canonical JSON (sorted keys) naming every file above with its size and
//!   SHA-256, the creation time, the creator and the last custody chain value per attachment;
//! - `manifest.json.tsr`: an RFC 3161 timestamp reply over `manifest.json`, when a timestamping
//!   authority is configured and answered (otherwise the request waits in a queue, [`tsa`]).
//!
//! **Architecture invariant:** a package holds only what the caller may see. Incidents are read
//! through the store's visible-incident functions, attachment bytes and custody entries through
//! queries that carry [`crate::store::VISIBLE`]; custody entries of other outlets' accesses to the
//! same file are redacted in SQL (only their chain value leaves the database).
//!
//! The archive is written to a temporary file next to its destination and renamed into place, one
//! file at a time, so a large attachment is in memory once at most and a crash leaves no
//! half-written package under the final name.

pub mod api;
mod pdf;
pub mod tsa;
pub mod tsp;
pub mod verify;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sqlx::Row;

use crate::accounts::{Actor, audit};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::i18n::{Lang, t};
use crate::model::{FieldError, format_time, now_ms};
use crate::store::{Attachment, Incident, Publication, Sighting, VISIBLE};
use verify::{CUSTODY, FORMAT, MANIFEST, TSR, canonical_json, sha256_hex};

/// Most incidents in one package.
pub const MAX_INCIDENTS: usize = 50;
/// How far back before an incident's start the outlet's publications are listed.
pub const PUBLICATIONS_WINDOW_MS: i64 = 72 * 3600 * 1000;
/// Kazakhstan moved Almaty from UTC+6 to UTC+5 at 2024-03-01 00:00 local time (clocks went back
/// to 2024-02-29 23:00)
/// (2024-02-29T18:00:00Z; tz database 2024a).
const ALMATY_UTC5_FROM_MS: i64 = 1_709_229_600_000;
/// Custody rows read per query.
const CUSTODY_PAGE: i64 = 1_000;
/// Most custody entries in one package; a file read more often than this is logged elsewhere.
const MAX_CUSTODY: usize = 200_000;

/// How a package is made.
#[derive(Debug, Clone)]
pub struct Options {
    /// Language of `report.html`.
    pub lang: Lang,
    /// The timestamping authority, if any.
    pub tsa: Option<tsa::Tsa>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lang: Lang::Ru,
            tsa: None,
        }
    }
}

/// What became of the timestamp request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timestamp {
    /// No authority configured.
    None,
    /// `manifest.json.tsr` is in the package; the authority's `genTime`.
    Attached(String),
    /// The authority did not answer; the request waits in the queue (why it failed).
    Queued(String),
}

/// A package written to disk.
#[derive(Debug, Clone)]
pub struct Package {
    pub path: PathBuf,
    /// SHA-256 of `manifest.json`: what a recipient compares with the value sent separately.
    pub manifest_sha256: String,
    pub files: usize,
    pub custody_entries: usize,
    pub timestamp: Timestamp,
}

/// Everything about one incident that goes into a package.
struct Facts {
    incident: Incident,
    kind_name: String,
    sightings: Vec<Sighting>,
    attachments: Vec<Attachment>,
    publications: Vec<Publication>,
}

/// One custody line as it goes into `custody.jsonl`.
struct CustodyRow {
    id: i64,
    sha: String,
    chain: String,
    /// `None` when the entry is another outlet's and is redacted.
    shown: Option<(i64, String, String, String, i64)>,
}

impl Db {
    /// The bytes of one attachment of one visible incident.
    async fn evidence_bytes(&self, actor: &Actor, incident_row: i64, sha: &str) -> Result<Vec<u8>> {
        let sql = format!(
            "SELECT a.data FROM incident_attachments l JOIN attachments a ON a.sha256 = l.sha256
             JOIN incidents i ON i.id = l.incident_id
             WHERE l.incident_id = $2 AND l.sha256 = $3 AND {VISIBLE}"
        );
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(actor.outlet_id)
            .bind(incident_row)
            .bind(sha)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NotFound)?;
        Ok(r.try_get("data")?)
    }

    /// A page of an attachment's custody log from its first entry, in order. An entry is shown
    /// when its incident is visible to the caller and either the incident or the entry is the
    /// caller's outlet's (the rule of [`Db::custody_log`]); otherwise only its chain value is
    /// returned, so the chain stays checkable without telling who else holds the file.
    async fn evidence_custody(
        &self,
        actor: &Actor,
        sha: &str,
        after: i64,
    ) -> Result<Vec<CustodyRow>> {
        let shown = format!("({VISIBLE} AND (i.outlet_id = $1 OR c.outlet_id = $1))");
        let sql = format!(
            "SELECT c.id, c.sha256, c.chain,
               CASE WHEN {shown} THEN 1 ELSE 0 END AS shown,
               CASE WHEN {shown} THEN c.incident_id ELSE 0 END AS incident_row,
               CASE WHEN {shown} THEN i.uuid ELSE '' END AS incident,
               CASE WHEN {shown} THEN c.actor ELSE '' END AS actor,
               CASE WHEN {shown} THEN c.action ELSE '' END AS action,
               CASE WHEN {shown} THEN c.at_ms ELSE 0 END AS at_ms
             FROM custody_log c JOIN incidents i ON i.id = c.incident_id
             WHERE c.sha256 = $2 AND c.id > $3 ORDER BY c.id LIMIT {CUSTODY_PAGE}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(actor.outlet_id)
            .bind(sha)
            .bind(after)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let shown: i64 = r.try_get("shown")?;
                Ok(CustodyRow {
                    id: r.try_get("id")?,
                    sha: r.try_get("sha256")?,
                    chain: r.try_get("chain")?,
                    shown: (shown == 1)
                        .then(|| -> Result<_> {
                            Ok((
                                r.try_get("incident_row")?,
                                r.try_get("incident")?,
                                r.try_get("actor")?,
                                r.try_get("action")?,
                                r.try_get("at_ms")?,
                            ))
                        })
                        .transpose()?,
                })
            })
            .collect()
    }

    /// Appends an `exported` custody entry for every attachment in the package and an audit
    /// entry for the export, in one transaction.
    async fn record_export(&self, actor: &Actor, facts: &[Facts], at_ms: i64) -> Result<()> {
        let _w = self.write().await;
        let mut tx = self.pool.begin().await?;
        for f in facts {
            for a in &f.attachments {
                crate::store::custody(
                    &mut tx,
                    &a.sha256,
                    f.incident.row_id,
                    actor,
                    "exported",
                    at_ms,
                )
                .await?;
            }
        }
        let ids: Vec<&str> = facts.iter().map(|f| f.incident.id.as_str()).collect();
        let attachments: usize = facts.iter().map(|f| f.attachments.len()).sum();
        audit(
            &mut tx,
            Some(actor.outlet_id),
            &actor.label,
            "evidence.export",
            &ids.join(","),
            &format!("{} incidents, {attachments} attachments", ids.len()),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn evidence_facts(&self, actor: &Actor, ids: &[String]) -> Result<Vec<Facts>> {
        if !actor.role.can_read() {
            return Err(Error::Forbidden);
        }
        let mut e = Vec::new();
        if ids.is_empty() {
            e.push(FieldError::new("incidents", "name at least one incident"));
        }
        if ids.len() > MAX_INCIDENTS {
            e.push(FieldError::new(
                "incidents",
                format!("at most {MAX_INCIDENTS} per package"),
            ));
        }
        Error::check(e)?;
        let kinds = self.kinds().await?;
        let mut out: Vec<Facts> = Vec::with_capacity(ids.len());
        let mut e = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if out.iter().any(|f| &f.incident.id == id) {
                continue;
            }
            let incident = match self.incident(actor, id).await {
                Ok(x) => x,
                // Same words for "no such incident" and "not yours to see": a package request
                // must not tell an outlet which RED incidents exist.
                Err(Error::NotFound) => {
                    e.push(FieldError::new(
                        format!("incidents[{i}]"),
                        "no such incident, or not visible to your outlet",
                    ));
                    continue;
                }
                Err(x) => return Err(x),
            };
            let sightings = self.incident_sightings(actor, id).await?;
            let attachments = self.attachments(actor, id).await?;
            let publications = self
                .publications(
                    actor,
                    Some(&incident.outlet),
                    incident.started_ms.saturating_sub(PUBLICATIONS_WINDOW_MS),
                    incident.started_ms,
                )
                .await?;
            let kind_name = kinds
                .iter()
                .find(|k| k.0 == incident.kind)
                .map(|k| k.1.clone())
                .unwrap_or_else(|| incident.kind.clone());
            out.push(Facts {
                incident,
                kind_name,
                sightings,
                attachments,
                publications,
            });
        }
        Error::check(e)?;
        Ok(out)
    }
}

/// `attachments/<sha256>-<name>`: the hash keeps names unique; the name is cut to ASCII letters,
/// digits, `.`, `-` and `_` (at most 23 characters) so every path fits a plain ustar header and
/// no file system or unpacker trips over it. The report lists the original names.
pub fn attachment_path(sha: &str, name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = safe.trim_start_matches('.');
    let cut: String = safe
        .chars()
        .rev()
        .take(23)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!(
        "attachments/{sha}-{}",
        if cut.is_empty() { "file" } else { &cut }
    )
}

/// The tar file being written, moved in and out of blocking tasks.
struct Writer {
    builder: Option<tar::Builder<std::fs::File>>,
    mtime: u64,
    files: BTreeMap<String, (u64, String)>,
}

impl Writer {
    /// Adds one file; remembers its size and hash for the manifest.
    async fn add(&mut self, path: &str, data: Vec<u8>) -> Result<()> {
        let mut b = self
            .builder
            .take()
            .ok_or_else(|| Error::Internal("package writer lost".into()))?;
        let mtime = self.mtime;
        let p = path.to_string();
        let (b, sha, size) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let sha = sha256_hex(&data);
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(mtime);
            h.set_uid(0);
            h.set_gid(0);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, &p, data.as_slice())?;
            Ok((b, sha, data.len() as u64))
        })
        .await
        .map_err(|e| Error::Internal(format!("package writer: {e}")))?
        .map_err(|e| Error::Internal(format!("writing the package: {e}")))?;
        self.builder = Some(b);
        self.files.insert(path.to_string(), (size, sha));
        Ok(())
    }

    async fn finish(mut self) -> Result<()> {
        let b = self
            .builder
            .take()
            .ok_or_else(|| Error::Internal("package writer lost".into()))?;
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let f = b.into_inner()?;
            f.sync_all()
        })
        .await
        .map_err(|e| Error::Internal(format!("package writer: {e}")))?
        .map_err(|e| Error::Internal(format!("writing the package: {e}")))
    }
}

/// Builds a package of the given incidents for the caller and writes it to `out` (atomically:
/// a temporary file in the same directory, renamed when complete). Records the export in the
/// custody log of every attachment and in the audit log.
pub async fn build(
    db: &Db,
    actor: &Actor,
    ids: &[String],
    opts: &Options,
    out: &Path,
) -> Result<Package> {
    let facts = db.evidence_facts(actor, ids).await?;
    let created_ms = now_ms();
    db.record_export(actor, &facts, created_ms).await?;
    let creator_outlet = db.outlet(actor.outlet_id).await?.slug;

    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    let tmp = dir.join(format!(
        ".qalqan-evidence-{}.tmp",
        crate::accounts::hex(&rnd)
    ));
    let file = std::fs::File::create(&tmp)
        .map_err(|e| Error::Internal(format!("creating {}: {e}", tmp.display())))?;
    let mut w = Writer {
        builder: Some(tar::Builder::new(file)),
        mtime: u64::try_from(created_ms / 1000).unwrap_or(0),
        files: BTreeMap::new(),
    };
    let result = write_package(db, actor, &facts, opts, created_ms, &creator_outlet, &mut w).await;
    let result = match result {
        Ok(x) => w.finish().await.map(|_| x),
        Err(e) => Err(e),
    };
    match result {
        Ok((manifest_sha256, custody_entries, timestamp, files)) => {
            std::fs::rename(&tmp, out)
                .map_err(|e| Error::Internal(format!("moving the package into place: {e}")))?;
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(Package {
                path: out.to_path_buf(),
                manifest_sha256,
                files,
                custody_entries,
                timestamp,
            })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

async fn write_package(
    db: &Db,
    actor: &Actor,
    facts: &[Facts],
    opts: &Options,
    created_ms: i64,
    creator_outlet: &str,
    w: &mut Writer,
) -> Result<(String, usize, Timestamp, usize)> {
    // Attachments first, one at a time, each once even when several incidents share it.
    let mut done: BTreeMap<String, String> = BTreeMap::new();
    for f in facts {
        for a in &f.attachments {
            if done.contains_key(&a.sha256) {
                continue;
            }
            let data = db
                .evidence_bytes(actor, f.incident.row_id, &a.sha256)
                .await?;
            let path = attachment_path(&a.sha256, &a.name);
            w.add(&path, data).await?;
            done.insert(a.sha256.clone(), path);
        }
    }

    // The custody log of every attachment, from its first entry.
    let mut custody = String::new();
    let mut heads: BTreeMap<String, Value> = BTreeMap::new();
    let mut entries = 0usize;
    for sha in done.keys() {
        let mut prev = String::new();
        let mut after = 0i64;
        loop {
            let page = db.evidence_custody(actor, sha, after).await?;
            let n = page.len();
            for c in page {
                after = c.id;
                entries += 1;
                if entries > MAX_CUSTODY {
                    return Err(Error::Internal(format!(
                        "more than {MAX_CUSTODY} custody entries: export fewer incidents"
                    )));
                }
                let line = match c.shown {
                    Some((row, incident, actor, action, at_ms)) => json!({
                        "seq": entries, "sha256": c.sha, "prev": prev, "chain": c.chain,
                        "incident": incident, "incident_row": row, "actor": actor,
                        "action": action, "at_ms": at_ms, "at": format_time(at_ms),
                    }),
                    None => json!({
                        "seq": entries, "sha256": c.sha, "prev": prev, "chain": c.chain,
                        "redacted": true,
                    }),
                };
                custody.push_str(&canonical_json(&line));
                custody.push('\n');
                prev = c.chain;
            }
            if n < CUSTODY_PAGE as usize {
                break;
            }
        }
        heads.insert(sha.clone(), Value::String(prev));
    }
    w.add(CUSTODY, custody.into_bytes()).await?;

    let lang = opts.lang;
    w.add(
        "facts.json",
        facts_json(facts, &done, created_ms).into_bytes(),
    )
    .await?;
    w.add("facts.csv", facts_csv(facts).into_bytes()).await?;
    w.add(
        "report.html",
        report_html(facts, &done, lang, created_ms, &actor.label, creator_outlet).into_bytes(),
    )
    .await?;
    w.add(
        "report.pdf",
        pdf::report_pdf(facts, &done, lang, created_ms, &actor.label, creator_outlet),
    )
    .await?;
    w.add("VERIFY.txt", VERIFY_TXT.as_bytes().to_vec()).await?;
    let mut sums = String::new();
    for (path, (_, sha)) in &w.files {
        let _ = writeln!(sums, "{sha}  {path}");
    }
    w.add("SHA256SUMS", sums.into_bytes()).await?;

    let files: Vec<Value> = w
        .files
        .iter()
        .map(|(path, (size, sha))| json!({"path": path, "size": size, "sha256": sha}))
        .collect();
    let n_files = files.len();
    let manifest = json!({
        "format": FORMAT,
        "created_at": format_time(created_ms),
        "created_ms": created_ms,
        "creator": {"actor": actor.label, "outlet": creator_outlet},
        "incidents": facts.iter().map(|f| f.incident.id.clone()).collect::<Vec<_>>(),
        "lang": lang.code(),
        "files": files,
        "custody": {
            "entries": entries,
            "heads": heads,
            "chain": "hex(SHA-256(prev | '|' | sha256 | '|' | incident_row | '|' | actor | '|' | action | '|' | at_ms))",
        },
    });
    let manifest = canonical_json(&manifest).into_bytes();
    let manifest_sha = sha256_hex(&manifest);
    let hash: [u8; 32] =
        sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&manifest)).into();
    w.add(MANIFEST, manifest).await?;
    let timestamp = match &opts.tsa {
        None => Timestamp::None,
        Some(cfg) => match tsa::stamp(cfg, &hash).await {
            Ok((reply, info)) => {
                w.add(TSR, reply).await?;
                w.files.remove(TSR);
                Timestamp::Attached(tsp::readable_time(&info.gen_time))
            }
            Err(why) => {
                tracing::warn!(error = %why, "timestamping authority failed; request queued");
                match tsa::enqueue(cfg, &hash, actor.outlet_id) {
                    Ok(()) => Timestamp::Queued(why),
                    Err(e) => Timestamp::Queued(format!("{why}; not queued: {e}")),
                }
            }
        },
    };
    w.files.remove(MANIFEST);
    Ok((manifest_sha, entries, timestamp, n_files))
}

fn facts_json(facts: &[Facts], paths: &BTreeMap<String, String>, created_ms: i64) -> String {
    let incidents: Vec<Value> = facts
        .iter()
        .map(|f| {
            let attachments: Vec<Value> = f
                .attachments
                .iter()
                .map(|a| {
                    let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
                    if let Some(o) = v.as_object_mut() {
                        o.insert("path".into(), json!(paths.get(&a.sha256)));
                    }
                    v
                })
                .collect();
            json!({
                "incident": f.incident,
                "kind_name_ru": f.kind_name,
                "indicators": f.sightings,
                "attachments": attachments,
                "publications_72h_before": f.publications,
            })
        })
        .collect();
    let mut s = serde_json::to_string_pretty(&json!({
        "format": FORMAT,
        "created_at": format_time(created_ms),
        "incidents": incidents,
    }))
    .unwrap_or_default();
    s.push('\n');
    s
}

/// One CSV cell: quoted, quotes doubled, and a leading `=`, `+`, `-`, `@`, tab or CR prefixed
/// with `'`, so that a spreadsheet opened by the recipient never runs an attacker's user agent as
/// a formula (`facts.json` keeps the exact value).
fn cell(s: &str) -> String {
    let guarded = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    format!("\"{}\"", guarded.replace('"', "\"\""))
}

fn facts_csv(facts: &[Facts]) -> String {
    let mut out = String::from(
        "incident,record,time_utc,kind,value,count,first_seen_utc,last_seen_utc,text\r\n",
    );
    let mut row = |cols: [&str; 9]| {
        out.push_str(&cols.iter().map(|c| cell(c)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    };
    for f in facts {
        let i = &f.incident;
        row([
            &i.id,
            "incident",
            &i.started_at,
            &i.kind,
            &i.outlet,
            "",
            &i.started_at,
            i.ended_at.as_deref().unwrap_or(""),
            &i.title,
        ]);
        for s in &f.sightings {
            let count = s.count.to_string();
            row([
                &i.id,
                "indicator",
                "",
                &s.kind,
                &s.value,
                &count,
                &s.first_seen,
                &s.last_seen,
                "",
            ]);
        }
        row([
            &i.id,
            "timeline",
            &i.created_at,
            "created",
            &i.created_by,
            "",
            "",
            "",
            i.status.as_str(),
        ]);
        for u in &i.updates {
            row([
                &i.id, "timeline", &u.at, "update", &u.author, "", "", "", &u.body,
            ]);
        }
        for a in &f.attachments {
            let size = a.size.to_string();
            row([
                &i.id,
                "attachment",
                &a.added_at,
                &a.media_type,
                &a.sha256,
                &size,
                "",
                "",
                &a.name,
            ]);
        }
        for p in &f.publications {
            row([
                &i.id,
                "publication",
                &p.published_at,
                "",
                &p.url,
                "",
                "",
                "",
                &p.title,
            ]);
        }
    }
    out
}

/// Escapes text for HTML element content and quoted attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A time in UTC and in Almaty local time, saying which offset was used.
pub fn both_times(ms: i64, lang: Lang) -> String {
    let hours = if ms >= ALMATY_UTC5_FROM_MS { 5 } else { 6 };
    let utc = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let local =
        utc.to_offset(time::UtcOffset::from_hms(hours, 0, 0).unwrap_or(time::UtcOffset::UTC));
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    format!(
        "{} UTC ({} {}, UTC+{hours})",
        utc.format(&f).unwrap_or_default(),
        local.format(&f).unwrap_or_default(),
        w(lang, "almaty")
    )
}

fn time_of(s: &str, lang: Lang) -> String {
    crate::model::parse_time(s).map_or_else(|| s.to_string(), |ms| both_times(ms, lang))
}

/// The report's own words: (key, Russian, Kazakh, English). The dashboard's labels (statuses,
/// TLP, targets, impact) come from [`crate::i18n`].
const WORDS: &[(&str, &str, &str, &str)] = &[
    (
        "title",
        "Пакет доказательств: атаки на СМИ",
        "Дәлелдер пакеті: БАҚ-қа шабуылдар",
        "Evidence package: attacks on media outlets",
    ),
    (
        "created",
        "Пакет создан",
        "Пакет жасалды",
        "Package created",
    ),
    ("by", "Кем", "Кім", "By"),
    (
        "times",
        "Время указано в UTC и по Алматы: UTC+5 с 1 марта 2024 года, UTC+6 до этой даты.",
        "Уақыт UTC және Алматы уақытымен берілген: 2024 жылғы 1 наурыздан бастап UTC+5, оған дейін UTC+6.",
        "Times are given in UTC and in Almaty time: UTC+5 from 1 March 2024, UTC+6 before that.",
    ),
    ("almaty", "Алматы", "Алматы", "Almaty"),
    ("incident", "Инцидент", "Инцидент", "Incident"),
    ("id", "Идентификатор", "Идентификатор", "Identifier"),
    ("outlet", "Издание", "Басылым", "Outlet"),
    ("kind", "Вид атаки", "Шабуыл түрі", "Kind of attack"),
    ("status", "Статус", "Мәртебе", "Status"),
    ("confidence", "Достоверность", "Сенімділік", "Confidence"),
    (
        "tlp",
        "Ограничение распространения (TLP)",
        "Таратуды шектеу (TLP)",
        "Sharing limit (TLP)",
    ),
    ("started", "Начало", "Басталуы", "Started"),
    ("ended", "Окончание", "Аяқталуы", "Ended"),
    (
        "ongoing",
        "не указано (продолжается или неизвестно)",
        "көрсетілмеген (жалғасуда немесе белгісіз)",
        "not given (ongoing or unknown)",
    ),
    (
        "date_unknown",
        "Точная дата неизвестна",
        "Нақты күні белгісіз",
        "Exact date unknown",
    ),
    ("source", "Источник записи", "Жазба көзі", "Recorded from"),
    ("recorded", "Записано", "Жазылды", "Recorded"),
    ("impact", "Последствия", "Салдары", "Impact"),
    ("targets", "Цели", "Нысаналар", "Targets"),
    ("description", "Описание", "Сипаттама", "Description"),
    (
        "indicators",
        "Индикаторы (адреса, сети, агенты и т. п.)",
        "Индикаторлар (мекенжайлар, желілер, агенттер және т.б.)",
        "Indicators (addresses, networks, agents, etc.)",
    ),
    ("value", "Значение", "Мәні", "Value"),
    ("count", "Количество", "Саны", "Count"),
    ("first_seen", "Впервые", "Алғаш", "First seen"),
    ("last_seen", "Последний раз", "Соңғы рет", "Last seen"),
    ("timeline", "Хронология", "Хронология", "Timeline"),
    ("at", "Время", "Уақыты", "Time"),
    ("author", "Автор", "Авторы", "Author"),
    ("entry", "Запись", "Жазба", "Entry"),
    (
        "attachments",
        "Вложения (файлы-доказательства)",
        "Тіркемелер (дәлел файлдары)",
        "Attachments (evidence files)",
    ),
    ("name", "Имя файла", "Файл атауы", "File name"),
    ("size", "Размер, байт", "Көлемі, байт", "Size, bytes"),
    (
        "path",
        "Путь в пакете",
        "Пакеттегі жолы",
        "Path in the package",
    ),
    (
        "publications",
        "Публикации издания за 72 часа до начала атаки",
        "Басылымның шабуыл басталғанға дейінгі 72 сағаттағы жарияланымдары",
        "The outlet's publications in the 72 hours before the attack",
    ),
    ("none", "нет", "жоқ", "none"),
    (
        "verify",
        "Проверка целостности: см. VERIFY.txt. Хеши SHA-256 всех файлов перечислены в manifest.json; журнал хранения (custody.jsonl) связан цепочкой хешей.",
        "Тұтастықты тексеру: VERIFY.txt қараңыз. Барлық файлдардың SHA-256 хештері manifest.json ішінде; сақтау журналы (custody.jsonl) хештер тізбегімен байланысқан.",
        "Integrity check: see VERIFY.txt. The SHA-256 of every file is listed in manifest.json; the custody log (custody.jsonl) is hash-chained.",
    ),
    // The PDF's own words. `{n}`, `{m}`: page, pages.
    (
        "page",
        "Страница {n} из {m}",
        "{m} беттің {n}-беті",
        "Page {n} of {m}",
    ),
    (
        "pdf_note",
        "Этот PDF повторяет report.html; его SHA-256 указан в manifest.json.",
        "Бұл PDF report.html мазмұнын қайталайды; оның SHA-256 мәні manifest.json ішінде.",
        "This PDF repeats report.html; its SHA-256 is listed in manifest.json.",
    ),
    (
        "created_entry",
        "Инцидент записан",
        "Инцидент жазылды",
        "Incident recorded",
    ),
];

fn w(lang: Lang, key: &str) -> &'static str {
    let Some(row) = WORDS.iter().find(|r| r.0 == key) else {
        return "[?]";
    };
    match lang {
        Lang::Ru => row.1,
        Lang::Kk => row.2,
        Lang::En => row.3,
    }
}

fn report_html(
    facts: &[Facts],
    paths: &BTreeMap<String, String>,
    lang: Lang,
    created_ms: i64,
    creator: &str,
    creator_outlet: &str,
) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"{}\"><head><meta charset=\"utf-8\"><title>{}</title>\
<style>body{{font-family:'DejaVu Sans',Arial,sans-serif;max-width:60em;margin:2em auto;line-height:1.4}}\
table{{border-collapse:collapse;width:100%;margin:.5em 0 1.5em}}td,th{{border:1px solid #999;padding:.2em .4em;text-align:left;vertical-align:top}}\
th{{background:#eee}}code{{font-size:.85em;word-break:break-all}}.d{{white-space:pre-wrap}}\
@media print{{section{{page-break-before:always}}}}</style></head><body>\n",
        lang.code(),
        esc(w(lang, "title"))
    );
    let _ = write!(
        h,
        "<h1>{}</h1>\n<p>{}: {}. {}: {} ({}).</p>\n<p>{}</p>\n<p>{}</p>\n",
        esc(w(lang, "title")),
        esc(w(lang, "created")),
        esc(&both_times(created_ms, lang)),
        esc(w(lang, "by")),
        esc(creator),
        esc(creator_outlet),
        esc(w(lang, "times")),
        esc(w(lang, "verify")),
    );
    for (n, f) in facts.iter().enumerate() {
        let i = &f.incident;
        let _ = write!(
            h,
            "<section>\n<h2>{} {}: {}</h2>\n<table>\n",
            esc(w(lang, "incident")),
            n + 1,
            esc(&i.title)
        );
        let mut row = |k: &str, v: String| {
            let _ = writeln!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(w(lang, k)), v);
        };
        row("id", format!("<code>{}</code>", esc(&i.id)));
        row("outlet", esc(&i.outlet));
        row(
            "kind",
            format!("{} (<code>{}</code>)", esc(&f.kind_name), esc(&i.kind)),
        );
        row(
            "status",
            esc(t(lang, &format!("status.{}", i.status.as_str()))),
        );
        row(
            "confidence",
            esc(t(lang, &format!("confidence.{}", i.confidence.as_str()))),
        );
        row(
            "tlp",
            format!(
                "{} — {}",
                esc(i.tlp.as_str().to_uppercase().as_str()),
                esc(t(
                    lang,
                    &format!("tlp.{}", i.tlp.as_str().replace('+', "_"))
                ))
            ),
        );
        row("started", esc(&time_of(&i.started_at, lang)));
        row(
            "ended",
            esc(&i
                .ended_at
                .as_deref()
                .map_or_else(|| w(lang, "ongoing").to_string(), |e| time_of(e, lang))),
        );
        if i.date_unknown {
            row("date_unknown", "✓".into());
        }
        row("source", esc(&i.source));
        row(
            "recorded",
            format!(
                "{}, {}",
                esc(&time_of(&i.created_at, lang)),
                esc(&i.created_by)
            ),
        );
        let mut impact = Vec::new();
        for (key, v) in [
            ("impact.downtime_minutes", i.impact.downtime_minutes),
            ("impact.requests", i.impact.requests),
            ("impact.followers_added", i.impact.followers_added),
            ("impact.comments", i.impact.comments),
        ] {
            if let Some(v) = v {
                impact.push(format!("{}: {v}", esc(t(lang, key))));
            }
        }
        row(
            "impact",
            if impact.is_empty() {
                esc(w(lang, "none"))
            } else {
                impact.join("<br>")
            },
        );
        let targets: Vec<String> = i
            .targets
            .iter()
            .map(|x| {
                let p = x
                    .platform
                    .as_deref()
                    .map(|p| format!(" ({})", esc(p)))
                    .unwrap_or_default();
                format!(
                    "{}{p}: {}",
                    esc(t(lang, &format!("target.{}", x.kind))),
                    esc(&x.value)
                )
            })
            .collect();
        row(
            "targets",
            if targets.is_empty() {
                esc(w(lang, "none"))
            } else {
                targets.join("<br>")
            },
        );
        h.push_str("</table>\n");
        if !i.description.is_empty() {
            let _ = writeln!(
                h,
                "<h3>{}</h3>\n<p class=\"d\">{}</p>",
                esc(w(lang, "description")),
                esc(&i.description)
            );
        }
        let _ = writeln!(h, "<h3>{}</h3>", esc(w(lang, "indicators")));
        if f.sightings.is_empty() {
            let _ = writeln!(h, "<p>{}</p>", esc(w(lang, "none")));
        } else {
            let _ = writeln!(
                h,
                "<table><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
                esc(w(lang, "kind")),
                esc(w(lang, "value")),
                esc(w(lang, "count")),
                esc(w(lang, "first_seen")),
                esc(w(lang, "last_seen"))
            );
            for s in &f.sightings {
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&s.kind),
                    esc(&s.value),
                    s.count,
                    esc(&time_of(&s.first_seen, lang)),
                    esc(&time_of(&s.last_seen, lang))
                );
            }
            h.push_str("</table>\n");
        }
        let _ = writeln!(
            h,
            "<h3>{}</h3>\n<table><tr><th>{}</th><th>{}</th><th>{}</th></tr>",
            esc(w(lang, "timeline")),
            esc(w(lang, "at")),
            esc(w(lang, "author")),
            esc(w(lang, "entry"))
        );
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&time_of(&i.created_at, lang)),
            esc(&i.created_by),
            esc(w(lang, "created_entry"))
        );
        for u in &i.updates {
            let status = u
                .new_status
                .as_deref()
                .map(|s| {
                    format!(
                        " [{}: {}]",
                        esc(w(lang, "status")),
                        esc(t(lang, &format!("status.{s}")))
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"d\">{}{status}</td></tr>",
                esc(&time_of(&u.at, lang)),
                esc(&u.author),
                esc(&u.body)
            );
        }
        h.push_str("</table>\n");
        let _ = writeln!(h, "<h3>{}</h3>", esc(w(lang, "attachments")));
        if f.attachments.is_empty() {
            let _ = writeln!(h, "<p>{}</p>", esc(w(lang, "none")));
        } else {
            let _ = writeln!(
                h,
                "<table><tr><th>{}</th><th>{}</th><th>SHA-256</th><th>{}</th><th>{}</th></tr>",
                esc(w(lang, "name")),
                esc(w(lang, "size")),
                esc(w(lang, "path")),
                esc(w(lang, "recorded"))
            );
            for a in &f.attachments {
                let _ = writeln!(
                    h,
                    "<tr><td>{}<br><small>{}</small></td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{}, {}</td></tr>",
                    esc(&a.name),
                    esc(&a.media_type),
                    a.size,
                    esc(&a.sha256),
                    esc(paths.get(&a.sha256).map(String::as_str).unwrap_or("")),
                    esc(&time_of(&a.added_at, lang)),
                    esc(&a.added_by)
                );
            }
            h.push_str("</table>\n");
        }
        let _ = writeln!(h, "<h3>{}</h3>", esc(w(lang, "publications")));
        if f.publications.is_empty() {
            let _ = writeln!(h, "<p>{}</p>", esc(w(lang, "none")));
        } else {
            h.push_str("<ul>\n");
            for p in &f.publications {
                let _ = writeln!(
                    h,
                    "<li>{}: {} <code>{}</code></li>",
                    esc(&time_of(&p.published_at, lang)),
                    esc(&p.title),
                    esc(&p.url)
                );
            }
            h.push_str("</ul>\n");
        }
        h.push_str("</section>\n");
    }
    h.push_str("</body></html>\n");
    h
}

/// How to check a package, for the recipient (Russian, then English).
pub const VERIFY_TXT: &str = "\
ПРОВЕРКА ПАКЕТА ДОКАЗАТЕЛЬСТВ (Qalqan)
======================================

1. Сверьте SHA-256 файла manifest.json с значением, которое вам сообщил отправитель
   отдельно (по телефону, в письме, в заявлении):
       sha256sum manifest.json
2. Проверка одной командой (программа Qalqan, https://github.com/ — бесплатно):
       qalqan evidence verify ПАКЕТ.tar
   Программа проверяет хеш и размер каждого файла по manifest.json, сообщает о каждом
   изменённом, недостающем или лишнем файле, пересчитывает цепочку журнала хранения
   custody.jsonl и сверяет метку времени manifest.json.tsr с manifest.json.
3. Проверка без Qalqan (Linux, macOS, Windows с WSL или Git Bash):
       tar -xf ПАКЕТ.tar -C папка && cd папка
       sha256sum -c SHA256SUMS
   Каждая строка должна заканчиваться словом OK. Список файлов и их хеши также
   перечислены в manifest.json.
4. Метка времени RFC 3161 (если есть файл manifest.json.tsr):
       openssl ts -reply -in manifest.json.tsr -text
       openssl ts -verify -data manifest.json -in manifest.json.tsr -CAfile корень-TSA.pem
   Ожидаемый ответ: Verification: OK. Сертификат корневого центра TSA получите у самого
   центра меток времени; доверять сертификату из пакета нельзя.
5. Цепочка журнала хранения: каждая строка custody.jsonl содержит chain =
   SHA-256(prev | \"|\" | sha256 | \"|\" | incident_row | \"|\" | actor | \"|\" | action | \"|\" | at_ms),
   где prev — значение chain предыдущей строки того же файла (пусто для первой).
   Строки с \"redacted\": true — обращения других изданий к тому же файлу; их поля скрыты,
   но место в цепочке сохранено.

VERIFYING THIS EVIDENCE PACKAGE (Qalqan)
=======================================

1. Compare the SHA-256 of manifest.json with the value the sender gave you separately
   (by phone, in a letter, in the complaint):
       sha256sum manifest.json
2. One command (the free Qalqan program):
       qalqan evidence verify PACKAGE.tar
   It checks the size and hash of every file against manifest.json, names every changed,
   missing or extra file, recomputes the chain of the custody log custody.jsonl, and checks
   that the timestamp manifest.json.tsr belongs to manifest.json.
3. Without Qalqan (Linux, macOS, Windows with WSL or Git Bash):
       tar -xf PACKAGE.tar -C folder && cd folder
       sha256sum -c SHA256SUMS
   Every line must end in OK. The same files and hashes are listed in manifest.json.
4. RFC 3161 timestamp (when manifest.json.tsr is present):
       openssl ts -reply -in manifest.json.tsr -text
       openssl ts -verify -data manifest.json -in manifest.json.tsr -CAfile tsa-root.pem
   Expect: Verification: OK. Get the authority's root certificate from the timestamping
   authority itself; do not trust a certificate that came inside the package.
5. Custody chain: every line of custody.jsonl carries chain =
   SHA-256(prev | \"|\" | sha256 | \"|\" | incident_row | \"|\" | actor | \"|\" | action | \"|\" | at_ms),
   where prev is the chain of the previous line for the same file (empty for the first).
   Lines with \"redacted\": true are other outlets' accesses to the same file: their fields are
   withheld, their place in the chain is kept.
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_has_three_texts() {
        for (k, ru, kk, en) in WORDS {
            assert!(!ru.is_empty() && !kk.is_empty() && !en.is_empty(), "{k}");
        }
    }

    #[test]
    fn almaty_offset_follows_the_2024_change() {
        assert!(
            both_times(ALMATY_UTC5_FROM_MS, Lang::En)
                .contains("2024-02-29 18:00:00 UTC (2024-02-29 23:00:00 Almaty, UTC+5)")
        );
        assert!(
            both_times(ALMATY_UTC5_FROM_MS - 1000, Lang::En)
                .contains("(2024-02-29 23:59:59 Almaty, UTC+6)")
        );
    }

    #[test]
    fn attachment_paths_are_safe_and_short() {
        let sha = "a".repeat(64);
        let p = attachment_path(&sha, "../../скриншот атаки очень длинное имя.png");
        assert!(p.len() <= 100, "{p}");
        assert!(
            p.starts_with("attachments/aaaa") && p.ends_with(".png"),
            "{p}"
        );
        assert!(!p.contains(".."));
        assert_eq!(
            attachment_path(&sha, "..."),
            format!("attachments/{sha}-file")
        );
    }

    #[test]
    fn csv_cells_cannot_become_formulas() {
        assert_eq!(cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell("plain"), "\"plain\"");
    }
}
