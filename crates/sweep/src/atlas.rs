//! Findings into the task force's atlas: one incident per finding of a `report.json` (kinds
//! `bot_comments`, `bot_followers`, `threat_comments`), the accounts (`social_account`, top
//! [`Upload::top_accounts`] by messages) and the texts as posted (`text_pattern`) as
//! indicators, and the report files attached as evidence.
//!
//! Re-running is safe: `atlas-sent.json` next to the report maps each finding (by report
//! digest and cluster id) to the incident made for it, and those are skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::http::{Client, Endpoint};
use crate::live::write_atomic;
use crate::report::Lang;

/// Most text patterns sent per finding.
pub const MAX_TEXTS: usize = 10;
/// Longest text pattern sent, in characters.
pub const MAX_TEXT_CHARS: usize = 300;
/// The atlas's own cap on one attachment.
pub const MAX_ATTACHMENT: usize = 20 * 1024 * 1024;

/// What to send.
pub struct Upload<'a> {
    pub report_path: &'a Path,
    /// Cluster ids to send; empty means every finding.
    pub clusters: &'a [String],
    pub tlp: &'a str,
    pub top_accounts: usize,
    pub lang: Lang,
}

/// One incident made.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Sent {
    pub cluster: String,
    pub incident: String,
    pub indicators: usize,
    pub attachments: usize,
}

pub struct AtlasClient {
    http: Client,
    auth: String,
}

impl AtlasClient {
    pub fn new(url: &str, token: &str) -> Result<AtlasClient, String> {
        let ep = Endpoint::parse(url).map_err(|e| e.to_string())?;
        if ep.secret_in_clear() {
            return Err(
                "the atlas URL is plain http to a public host: the token would travel in clear; use https"
                    .into(),
            );
        }
        let token = token.trim();
        if token.is_empty()
            || token.len() > 200
            || token.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err("the atlas token file does not hold a token".into());
        }
        Ok(AtlasClient {
            http: Client::new(ep, None).map_err(|e| e.to_string())?,
            auth: format!("Bearer {token}"),
        })
    }

    async fn send(
        &mut self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Value, String> {
        let ans = self
            .http
            .send(
                http::Method::POST,
                &format!("/api/v1{path}"),
                &[
                    (http::header::AUTHORIZATION, self.auth.clone()),
                    (http::header::CONTENT_TYPE, content_type.to_string()),
                ],
                body,
                Duration::from_secs(60),
            )
            .await
            .map_err(|e| e.to_string())?;
        if !ans.status.is_success() {
            let text: String = String::from_utf8_lossy(&ans.body)
                .chars()
                .filter(|c| !c.is_control())
                .take(300)
                .collect();
            return Err(format!(
                "the atlas answered {}: {text}",
                ans.status.as_u16()
            ));
        }
        Ok(serde_json::from_slice(&ans.body).unwrap_or(Value::Null))
    }
}

fn title(lang: Lang, kind: &str, size: u64, accounts: u64) -> String {
    let (ru, kk, en) = match kind {
        "bot_comments" => ("Бот-комментарии", "Бот-пікірлер", "Bot comments"),
        "bot_followers" => ("Боты-подписчики", "Бот-жазылушылар", "Bot followers"),
        _ => (
            "Угрозы в комментариях",
            "Пікірлердегі қоқан-лоқы",
            "Threat comments",
        ),
    };
    match lang {
        Lang::Ru => format!("{ru}: {size} от {accounts} аккаунтов (qalqan sweep)"),
        Lang::Kk => format!("{kk}: {size}, {accounts} аккаунттан (qalqan sweep)"),
        Lang::En => format!("{en}: {size} from {accounts} accounts (qalqan sweep)"),
    }
}

/// Sends the findings; returns what was made (including earlier runs' entries it skipped).
pub async fn upload(client: &mut AtlasClient, u: &Upload<'_>) -> Result<Vec<Sent>, String> {
    let bytes =
        std::fs::read(u.report_path).map_err(|e| format!("{}: {e}", u.report_path.display()))?;
    let report: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not a report ({e})", u.report_path.display()))?;
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let platform = report
        .pointer("/input/platform")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let all = report
        .get("clusters")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for id in u.clusters {
        if !all
            .iter()
            .any(|c| c.get("id").and_then(Value::as_str) == Some(id))
        {
            return Err(format!("the report has no cluster {id:?}"));
        }
    }
    let dir = u.report_path.parent().unwrap_or(Path::new("."));
    let ledger_path = dir.join("atlas-sent.json");
    let mut ledger: BTreeMap<String, Sent> = match std::fs::read(&ledger_path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => BTreeMap::new(),
    };
    let mut attachments: Vec<(PathBuf, &str)> =
        vec![(u.report_path.to_path_buf(), "application/json")];
    let html = dir.join("report.html");
    if html.is_file() {
        attachments.push((html, "text/html; charset=utf-8"));
    }
    let mut out = Vec::new();
    for c in &all {
        let id = c.get("id").and_then(Value::as_str).unwrap_or("");
        if !u.clusters.is_empty() && !u.clusters.iter().any(|x| x == id) {
            continue;
        }
        let key = format!("{digest}/{id}");
        if let Some(s) = ledger.get(&key) {
            out.push(s.clone());
            continue;
        }
        let kind = c.get("kind").and_then(Value::as_str).unwrap_or("");
        if !matches!(kind, "bot_comments" | "bot_followers" | "threat_comments") {
            continue;
        }
        let size = c.get("size").and_then(Value::as_u64).unwrap_or(0);
        let accounts = c.get("accounts_count").and_then(Value::as_u64).unwrap_or(0);
        let first = c.get("first").and_then(Value::as_str).unwrap_or("");
        let last = c.get("last").and_then(Value::as_str).unwrap_or(first);
        let rule = c.pointer("/rule/id").and_then(Value::as_str).unwrap_or("");
        let expl = c
            .pointer("/rule/explanation")
            .and_then(Value::as_str)
            .unwrap_or("");
        let mut description = format!(
            "qalqan sweep, finding {id} ({platform}). Rule {rule}: {expl}.\nReport {}, SHA-256 prefix {digest}.",
            u.report_path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        for r in c
            .get("threat_rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let text = r.get(u.lang.code()).and_then(Value::as_str).unwrap_or("");
            description.push_str(&format!("\n- {text}"));
        }
        let impact = if kind == "bot_followers" {
            json!({"followers_added": size})
        } else {
            json!({"comments": size})
        };
        let incident = json!({
            "kind": kind,
            "title": title(u.lang, kind, size, accounts),
            "description": description,
            "tlp": u.tlp,
            "started_at": first,
            "ended_at": last,
            "impact": impact,
        });
        let made = client
            .send(
                "/incidents",
                "application/json",
                serde_json::to_vec(&incident).unwrap_or_default(),
            )
            .await?;
        let inc = made
            .get("id")
            .and_then(Value::as_str)
            .ok_or("the atlas made an incident but did not say its id")?
            .to_string();
        // Indicators: the accounts with the most messages first, then the texts as posted.
        let mut sightings = Vec::new();
        for a in c
            .get("accounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .take(u.top_accounts)
        {
            let Some(aid) = a.get("id").and_then(Value::as_str) else {
                continue;
            };
            sightings.push(json!({
                "kind": "social_account",
                "value": format!("{platform}:{aid}"),
                "count": a.get("count").and_then(Value::as_u64).unwrap_or(1),
                "first_seen": first,
                "last_seen": last,
            }));
        }
        for t in c
            .get("texts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .take(MAX_TEXTS)
        {
            let Some(text) = t.get("text").and_then(Value::as_str) else {
                continue;
            };
            let text: String = text.chars().take(MAX_TEXT_CHARS).collect();
            if text.trim().is_empty() {
                continue;
            }
            sightings.push(json!({
                "kind": "text_pattern",
                "value": text,
                "count": t.get("count").and_then(Value::as_u64).unwrap_or(1),
                "first_seen": first,
                "last_seen": last,
            }));
        }
        let n_ind = sightings.len();
        if n_ind > 0 {
            client
                .send(
                    &format!("/incidents/{inc}/indicators"),
                    "application/json",
                    serde_json::to_vec(&sightings).unwrap_or_default(),
                )
                .await?;
        }
        let mut n_att = 0;
        for (path, media) in &attachments {
            let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            if data.len() > MAX_ATTACHMENT {
                tracing::warn!(file = %path.display(), bytes = data.len(), "too large for the atlas; not attached");
                continue;
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "report".into());
            client
                .send(
                    &format!("/incidents/{inc}/attachments?name=sweep-{name}"),
                    media,
                    data,
                )
                .await?;
            n_att += 1;
        }
        let s = Sent {
            cluster: id.to_string(),
            incident: inc,
            indicators: n_ind,
            attachments: n_att,
        };
        ledger.insert(key, s.clone());
        write_atomic(
            &ledger_path,
            &serde_json::to_vec_pretty(&ledger).unwrap_or_default(),
        )
        .map_err(|e| e.to_string())?;
        out.push(s);
    }
    Ok(out)
}
