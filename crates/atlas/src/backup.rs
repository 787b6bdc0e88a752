//! Online backup and restore, the same for both backends.
//!
//! A backup is JSON lines: a header, one line per row of every table in dependency order, and a
//! trailer with the row count (a file cut short is refused on restore). All rows are read in one
//! read transaction (a snapshot on both SQLite in WAL mode and PostgreSQL at REPEATABLE READ), so
//! the copy is consistent while the service keeps running. Because the format does not depend on
//! the backend, a backup of a SQLite atlas restores into PostgreSQL, which is also how a task
//! force moves when it outgrows one machine.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::{Map, Value, json};
use sqlx::Row;

use crate::db::{Backend, Db};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Col {
    Int,
    Text,
    Blob,
}

use Col::*;

/// Every table with its columns, parents before children. Sessions are not copied: a restored
/// atlas asks everyone to log in again.
/// A table: its name, its ORDER BY key, its columns.
type Table = (&'static str, &'static str, &'static [(&'static str, Col)]);

const TABLES: &[Table] = &[
    ("task_force", "id", &[("id", Int), ("name", Text)]),
    (
        "outlets",
        "id",
        &[
            ("id", Int),
            ("slug", Text),
            ("name", Text),
            ("auto_tlp", Text),
            ("created_ms", Int),
            ("taxii_write", Int),
        ],
    ),
    (
        "need_to_know",
        "outlet_id, peer_id",
        &[("outlet_id", Int), ("peer_id", Int)],
    ),
    (
        "users",
        "id",
        &[
            ("id", Int),
            ("email", Text),
            ("name", Text),
            ("password_hash", Text),
            ("outlet_id", Int),
            ("role", Text),
            ("disabled", Int),
            ("created_ms", Int),
        ],
    ),
    (
        "api_tokens",
        "id",
        &[
            ("id", Int),
            ("token_hash", Text),
            ("outlet_id", Int),
            ("name", Text),
            ("role", Text),
            ("created_ms", Int),
            ("revoked_ms", Int),
        ],
    ),
    (
        "incident_kinds",
        "code",
        &[
            ("code", Text),
            ("name_ru", Text),
            ("name_kk", Text),
            ("name_en", Text),
            ("builtin", Int),
        ],
    ),
    (
        "incidents",
        "id",
        &[
            ("id", Int),
            ("uuid", Text),
            ("outlet_id", Int),
            ("kind", Text),
            ("title", Text),
            ("description", Text),
            ("search", Text),
            ("status", Text),
            ("confidence", Text),
            ("tlp", Text),
            ("started_ms", Int),
            ("ended_ms", Int),
            ("date_unknown", Int),
            ("downtime_minutes", Int),
            ("requests", Int),
            ("followers_added", Int),
            ("comments", Int),
            ("source", Text),
            ("ingest_key", Text),
            ("created_by", Text),
            ("created_ms", Int),
            ("updated_ms", Int),
        ],
    ),
    (
        "incident_recipients",
        "incident_id, outlet_id",
        &[("incident_id", Int), ("outlet_id", Int)],
    ),
    (
        "incident_targets",
        "id",
        &[
            ("id", Int),
            ("incident_id", Int),
            ("kind", Text),
            ("platform", Text),
            ("value", Text),
        ],
    ),
    (
        "incident_updates",
        "id",
        &[
            ("id", Int),
            ("incident_id", Int),
            ("author", Text),
            ("created_ms", Int),
            ("body", Text),
            ("new_status", Text),
        ],
    ),
    (
        "indicators",
        "id",
        &[
            ("id", Int),
            ("kind", Text),
            ("value", Text),
            ("first_seen_ms", Int),
            ("last_seen_ms", Int),
            ("country", Text),
            ("asn", Int),
            ("net", Text),
        ],
    ),
    (
        "sightings",
        "id",
        &[
            ("id", Int),
            ("indicator_id", Int),
            ("incident_id", Int),
            ("first_seen_ms", Int),
            ("last_seen_ms", Int),
            ("count", Int),
            ("updated_ms", Int),
        ],
    ),
    (
        "attachments",
        "sha256",
        &[
            ("sha256", Text),
            ("size", Int),
            ("media_type", Text),
            ("data", Blob),
            ("created_ms", Int),
        ],
    ),
    (
        "incident_attachments",
        "incident_id, sha256",
        &[
            ("incident_id", Int),
            ("sha256", Text),
            ("name", Text),
            ("added_by", Text),
            ("added_ms", Int),
        ],
    ),
    (
        "custody_log",
        "id",
        &[
            ("id", Int),
            ("sha256", Text),
            ("incident_id", Int),
            ("outlet_id", Int),
            ("actor", Text),
            ("action", Text),
            ("at_ms", Int),
            ("chain", Text),
        ],
    ),
    (
        "publications",
        "id",
        &[
            ("id", Int),
            ("outlet_id", Int),
            ("url", Text),
            ("title", Text),
            ("published_ms", Int),
            ("tags", Text),
            ("summary", Text),
        ],
    ),
    (
        "feeds",
        "id",
        &[
            ("id", Int),
            ("outlet_id", Int),
            ("url", Text),
            ("added_by", Text),
            ("added_ms", Int),
            ("etag", Text),
            ("last_modified", Text),
            ("last_poll_ms", Int),
            ("last_ok_ms", Int),
            ("last_error", Text),
            ("last_added", Int),
            ("next_poll_ms", Int),
        ],
    ),
    // Campaigns across outlets (`campaigns.rs`): proposals and the editors' decisions.
    (
        "campaigns",
        "id",
        &[
            ("id", Int),
            ("uuid", Text),
            ("name", Text),
            ("status", Text),
            ("members_key", Text),
            ("created_ms", Int),
            ("updated_ms", Int),
            ("decided_by", Text),
            ("decided_outlet_id", Int),
            ("decided_ms", Int),
            ("description", Text),
        ],
    ),
    (
        "campaign_links",
        "campaign_id, a_id, b_id",
        &[
            ("campaign_id", Int),
            ("a_id", Int),
            ("b_id", Int),
            ("score", Int),
            ("evidence", Text),
        ],
    ),
    (
        "audit_log",
        "id",
        &[
            ("id", Int),
            ("at_ms", Int),
            ("outlet_id", Int),
            ("actor", Text),
            ("action", Text),
            ("object", Text),
            ("detail", Text),
        ],
    ),
];

const FORMAT: &str = "qalqan-atlas-backup";

/// Writes a consistent copy of the whole registry to `path` (via a temporary file and a rename,
/// so a failed backup never leaves a half file under the final name). Returns the row count.
pub async fn backup(db: &Db, path: &Path) -> anyhow::Result<u64> {
    let tmp = path.with_extension("partial");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut tx = db.pool.begin().await?;
    if db.backend == Backend::Postgres {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
    }
    writeln!(
        out,
        "{}",
        json!({"format": FORMAT, "version": 1, "created_ms": crate::model::now_ms()})
    )?;
    let mut rows_total = 0u64;
    for (table, order, cols) in TABLES {
        let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
        // Big rows (attachments) are read a few at a time; the rest in pages of 2,000.
        let page: i64 = if *table == "attachments" { 4 } else { 2000 };
        let mut offset = 0i64;
        loop {
            let sql = format!(
                "SELECT {} FROM {table} ORDER BY {order} LIMIT {page} OFFSET {offset}",
                names.join(", ")
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut *tx)
                .await?;
            for r in &rows {
                let mut m = Map::new();
                for (i, (name, col)) in cols.iter().enumerate() {
                    let v = match col {
                        Int => r
                            .try_get::<Option<i64>, _>(i)?
                            .map(Value::from)
                            .unwrap_or(Value::Null),
                        Text => r
                            .try_get::<Option<String>, _>(i)?
                            .map(Value::from)
                            .unwrap_or(Value::Null),
                        Blob => r
                            .try_get::<Option<Vec<u8>>, _>(i)?
                            .map(|b| {
                                Value::from(base64::engine::general_purpose::STANDARD.encode(b))
                            })
                            .unwrap_or(Value::Null),
                    };
                    m.insert((*name).to_string(), v);
                }
                writeln!(out, "{}", json!({"t": table, "r": m}))?;
                rows_total += 1;
            }
            if (rows.len() as i64) < page {
                break;
            }
            offset += page;
        }
    }
    tx.commit().await?;
    writeln!(out, "{}", json!({"end": true, "rows": rows_total}))?;
    let file = out
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing backup: {e}"))?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(rows_total)
}

/// Loads a backup into a database that has no outlets yet (fresh, migrated). Everything goes in
/// one transaction: on any error nothing is kept.
pub async fn restore(db: &Db, path: &Path) -> anyhow::Result<u64> {
    let outlets: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outlets")
        .fetch_one(&db.pool)
        .await?;
    if outlets > 0 {
        bail!("the target database already holds outlets: restore only into an empty atlas");
    }
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut lines = std::io::BufReader::new(file).lines();
    let header: Value = serde_json::from_str(&lines.next().context("empty backup file")??)
        .context("reading the backup header")?;
    if header.get("format").and_then(Value::as_str) != Some(FORMAT) {
        bail!("{} is not an atlas backup", path.display());
    }
    let _w = db.write().await;
    let mut tx = db.pool.begin().await?;
    // The built-in kinds come with the migrations; the backup's copy replaces them.
    sqlx::query("DELETE FROM incident_kinds")
        .execute(&mut *tx)
        .await?;
    let mut n = 0u64;
    let mut ended = false;
    for (i, line) in lines.enumerate() {
        let line = line?;
        let v: Value = serde_json::from_str(&line).with_context(|| format!("line {}", i + 2))?;
        if v.get("end").is_some() {
            if v.get("rows").and_then(Value::as_u64) != Some(n) {
                bail!("backup trailer says a different row count than read: file damaged");
            }
            ended = true;
            break;
        }
        let table = v
            .get("t")
            .and_then(Value::as_str)
            .context("row without table")?;
        let row = v
            .get("r")
            .and_then(Value::as_object)
            .context("row without values")?;
        let (_, _, cols) = TABLES
            .iter()
            .find(|(t, _, _)| *t == table)
            .with_context(|| format!("line {}: unknown table {table}", i + 2))?;
        // A column the backup does not have (written before a later migration added it) takes
        // the column's default instead of NULL.
        let cols: Vec<&(&str, Col)> = cols.iter().filter(|(c, _)| row.contains_key(*c)).collect();
        let names: Vec<&str> = cols.iter().map(|(c, _)| *c).collect();
        let params: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            names.join(", "),
            params.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (name, col) in cols.iter().copied() {
            let v = row.get(*name).unwrap_or(&Value::Null);
            q = match col {
                Int => q.bind(v.as_i64()),
                Text => q.bind(v.as_str().map(str::to_string)),
                Blob => q.bind(
                    v.as_str()
                        .map(|s| base64::engine::general_purpose::STANDARD.decode(s))
                        .transpose()
                        .with_context(|| format!("line {}: bad blob", i + 2))?,
                ),
            };
        }
        q.execute(&mut *tx)
            .await
            .with_context(|| format!("line {}: inserting into {table}", i + 2))?;
        n += 1;
    }
    if !ended {
        bail!("backup file is cut short (no trailer): nothing restored");
    }
    // The map's per-incident summaries are derived from sightings and indicators, not backed up.
    crate::map::query::rebuild_geo(&mut tx).await?;
    if db.backend == Backend::Postgres {
        for (table, order, cols) in TABLES {
            if *order == "id"
                && cols.first().is_some_and(|(c, t)| *c == "id" && *t == Int)
                && *table != "task_force"
            {
                let sql = format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(n)
}
