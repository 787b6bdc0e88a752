//! The evidence endpoints: a package of one incident, of several (a collective petition), and a
//! timestamp obtained after the fact. The store decides what the caller may see; these handlers
//! only build the file and send it.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{Options, Timestamp, build};
use crate::api::{Caller, parse_json};
use crate::error::{Error, Result};
use crate::i18n::Lang;
use crate::{Actor, Atlas};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LangQuery {
    lang: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManyIn {
    incidents: Vec<String>,
    #[serde(default)]
    lang: Option<String>,
}

fn lang(s: Option<&str>) -> Result<Lang> {
    match s.filter(|s| !s.is_empty()) {
        None => Ok(Lang::Ru),
        Some(s) => Lang::parse(s).ok_or_else(|| Error::field("lang", "one of ru, kk, en")),
    }
}

/// Builds the package into a temporary file and answers with it, streamed from disk. The file
/// is unlinked as soon as it is open, so nothing is left behind whatever happens to the answer.
async fn package(a: &Atlas, actor: &Actor, ids: &[String], lang: Lang) -> Result<Response> {
    let opts = Options {
        lang,
        tsa: a.tsa.clone(),
    };
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    let path = std::env::temp_dir().join(format!(
        "qalqan-evidence-{}.tar",
        crate::accounts::hex(&rnd)
    ));
    let p = build(&a.db, actor, ids, &opts, &path).await?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| Error::Internal(format!("opening the package: {e}")))?;
    let size = file.metadata().await.map(|m| m.len()).ok();
    let _ = tokio::fs::remove_file(&path).await;
    let stamp = match &p.timestamp {
        Timestamp::None => "none".to_string(),
        Timestamp::Attached(t) => format!("attached {t}"),
        Timestamp::Queued(_) => "queued".to_string(),
    };
    let name = format!(
        "qalqan-evidence-{}.tar",
        crate::model::format_time(crate::model::now_ms())
            .chars()
            .filter(|c| c.is_ascii_digit())
            .take(14)
            .collect::<String>()
    );
    let mut r = Response::new(Body::from_stream(tokio_util::io::ReaderStream::new(file)));
    let h = r.headers_mut();
    let mut set = |k: &'static str, v: String| {
        if let Ok(v) = http::HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set("content-type", "application/x-tar".into());
    set(
        "content-disposition",
        format!("attachment; filename=\"{name}\""),
    );
    set("x-qalqan-manifest-sha256", p.manifest_sha256.clone());
    set("x-qalqan-timestamp", stamp);
    if let Some(n) = size {
        set("content-length", n.to_string());
    }
    Ok(r)
}

/// `GET /incidents/{id}/evidence?lang=`
pub async fn one(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    Path(id): Path<String>,
    q: std::result::Result<Query<LangQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let Query(q) = q.map_err(|e| Error::field("query", e.body_text()))?;
    let lang = lang(q.lang.as_deref())?;
    package(&a, &c, &[id], lang).await
}

/// `POST /evidence` with `{"incidents": [...], "lang": "ru"}`
pub async fn many(State(a): State<Arc<Atlas>>, Caller(c): Caller, body: Bytes) -> Result<Response> {
    let input: ManyIn = parse_json(&body)?;
    let lang = lang(input.lang.as_deref())?;
    package(&a, &c, &input.incidents, lang).await
}

/// `GET /evidence/timestamps/{sha}`
pub async fn late_timestamp(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    Path(sha): Path<String>,
) -> Result<Response> {
    if !c.role.can_read() {
        return Err(Error::Forbidden);
    }
    let Some(cfg) = &a.tsa else {
        return Err(Error::NotFound);
    };
    match super::tsa::late_token(cfg, &sha, c.outlet_id) {
        Ok(Some(token)) => Ok((
            [
                (header::CONTENT_TYPE, "application/timestamp-reply"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"manifest.json.tsr\"",
                ),
            ],
            token,
        )
            .into_response()),
        Ok(None) => Ok((StatusCode::ACCEPTED, Json(json!({"status": "queued"}))).into_response()),
        Err(e) => Err(e),
    }
}
