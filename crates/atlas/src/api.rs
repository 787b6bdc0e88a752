//! The JSON API under `/api/v1`.
//!
//! Every handler takes a [`Caller`] (401 without valid credentials) and hands it to the store,
//! which decides what the caller may see or change. Handlers only translate between HTTP and the
//! store; they never filter data themselves.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::accounts::Actor;
use crate::error::{Error, Result};
use crate::model::{FieldError, Role, Tlp, parse_time};
use crate::store::{
    EpisodeSignal, IncidentIn, IncidentPatch, ListFilter, PublicationIn, SightingIn,
};
use crate::{Atlas, SESSION_COOKIE};

/// Largest JSON body accepted.
pub const MAX_JSON: usize = 1024 * 1024;

/// Every path [`router`] serves, relative to `/api/v1`. The OpenAPI document must name exactly
/// these (a test checks the document, this list and the router's answers against each other), so
/// a route added here without documentation, or documented without a route, fails the build's
/// tests.
pub const ROUTES: &[&str] = &[
    "/openapi.json",
    "/public/stats",
    "/session",
    "/me",
    "/kinds",
    "/outlets",
    "/outlet/settings",
    "/outlet/members",
    "/outlet/tokens",
    "/incidents",
    "/incidents/{id}",
    "/incidents/{id}/updates",
    "/incidents/{id}/indicators",
    "/incidents/{id}/attachments",
    "/incidents/{id}/attachments/{sha}",
    "/incidents/{id}/attachments/{sha}/custody",
    "/indicators",
    "/publications",
    "/audit",
    "/ingest/episodes",
    "/incidents/{id}/evidence",
    "/evidence",
    "/evidence/timestamps/{sha}",
    "/stix/bundle",
    "/stix/import",
    "/campaigns",
    "/campaigns/recompute",
    "/campaigns/{id}",
    "/campaigns/{id}/decision",
    "/feeds",
    "/feeds/{id}",
    "/incidents/{id}/publications",
    "/provoke",
];

/// The API routes, to be nested at `/api/v1`.
pub fn router() -> Router<Arc<Atlas>> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/public/stats", get(public_stats))
        .route("/session", post(login).delete(logout))
        .route("/me", get(me))
        .route("/kinds", get(kinds))
        .route("/outlets", get(outlets))
        .route("/outlet/settings", get(settings).put(set_settings))
        .route("/outlet/members", get(members).post(add_member))
        .route("/outlet/tokens", post(add_token))
        .route("/incidents", get(list_incidents).post(create_incident))
        .route("/incidents/{id}", get(get_incident).patch(patch_incident))
        .route("/incidents/{id}/updates", post(add_update))
        .route(
            "/incidents/{id}/indicators",
            get(incident_indicators).post(add_indicators),
        )
        .route(
            "/incidents/{id}/attachments",
            get(list_attachments)
                .post(add_attachment)
                .layer(DefaultBodyLimit::max(crate::store::MAX_ATTACHMENT + 1)),
        )
        .route("/incidents/{id}/attachments/{sha}", get(read_attachment))
        .route("/incidents/{id}/attachments/{sha}/custody", get(custody))
        .route("/indicators", get(indicator))
        .route("/publications", get(publications).post(add_publication))
        .route("/audit", get(audit))
        .route("/ingest/episodes", post(ingest))
        .route("/incidents/{id}/evidence", get(crate::evidence::api::one))
        .route("/evidence", post(crate::evidence::api::many))
        .route(
            "/evidence/timestamps/{sha}",
            get(crate::evidence::api::late_timestamp),
        )
        .route("/stix/bundle", get(crate::stix::bundle_handler))
        .route(
            "/stix/import",
            post(crate::stix_import::import_handler).layer(DefaultBodyLimit::max(
                crate::stix_import::MAX_BUNDLE_BYTES + 1,
            )),
        )
        .route(
            "/feeds",
            get(crate::provoke_api::list_feeds).post(crate::provoke_api::add_feed),
        )
        .route(
            "/feeds/{id}",
            axum::routing::delete(crate::provoke_api::remove_feed),
        )
        .route(
            "/incidents/{id}/publications",
            get(crate::provoke_api::preceding),
        )
        .route("/provoke", get(crate::provoke_api::provoke))
        .route("/campaigns", get(crate::campaigns::api::list))
        .route(
            "/campaigns/recompute",
            post(crate::campaigns::api::recompute),
        )
        .route(
            "/campaigns/{id}",
            get(crate::campaigns::api::one).patch(crate::campaigns::api::edit),
        )
        .route(
            "/campaigns/{id}/decision",
            post(crate::campaigns::api::decide),
        )
        .fallback(|| async { Error::NotFound })
        .layer(DefaultBodyLimit::max(MAX_JSON))
}

/// The authenticated caller. Bearer tokens are for machines; the session cookie is for people,
/// and then every request that changes something must carry the session's CSRF token in
/// `x-csrf-token` (the dashboard's forms send it as a field instead).
pub struct Caller(pub Actor);

impl FromRequestParts<Arc<Atlas>> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, atlas: &Arc<Atlas>) -> Result<Self> {
        if let Some(v) = parts.headers.get(header::AUTHORIZATION) {
            let v = v.to_str().map_err(|_| Error::Unauthenticated)?;
            let token = v
                .strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .ok_or(Error::Unauthenticated)?;
            return Ok(Caller(atlas.db.token(token.trim()).await?));
        }
        let secret = cookie(&parts.headers, SESSION_COOKIE).ok_or(Error::Unauthenticated)?;
        let (actor, csrf) = atlas.db.session(&secret).await?;
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe {
            let sent = parts
                .headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !constant_time_eq(sent.as_bytes(), csrf.as_bytes()) {
                return Err(Error::Forbidden);
            }
        }
        Ok(Caller(actor))
    }
}

/// Compares secrets without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A cookie's value from the request headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for part in v.split(';') {
            if let Some((k, val)) = part.trim().split_once('=')
                && k == name
            {
                return Some(val.to_string());
            }
        }
    }
    None
}

/// Reads a JSON body; syntax errors are 400, wrong or missing fields are 422 naming the field.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    // Syntax first, over the whole body: otherwise a broken body whose first bytes do not fit the
    // expected shape (`{` where a list is wanted) would be a 422, and text after a complete
    // value would be ignored.
    // JSON is UTF-8 (RFC 8259); skipped values are not checked for it by serde_json.
    let text =
        std::str::from_utf8(body).map_err(|_| Error::Malformed("the body is not UTF-8".into()))?;
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        return Err(Error::Malformed(e.to_string()));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    let field = if path == "." || path.is_empty() {
                        missing_field(&inner.to_string()).unwrap_or_else(|| "body".into())
                    } else {
                        path
                    };
                    Err(Error::Invalid(vec![FieldError::new(
                        field,
                        strip_position(&inner.to_string()),
                    )]))
                }
                _ => Err(Error::Malformed(inner.to_string())),
            }
        }
    }
}

fn missing_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_string())
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg.get(..i).unwrap_or(msg).to_string(),
        None => msg.to_string(),
    }
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT,
    )
        .into_response()
}

async fn public_stats(State(a): State<Arc<Atlas>>) -> Result<Response> {
    Ok(Json(json!({"incidents_by_kind_and_month": a.db.public_stats().await?})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginIn {
    email: String,
    password: String,
}

async fn login(
    State(a): State<Arc<Atlas>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Result<Response> {
    let input: LoginIn = parse_json(&body)?;
    let (secret, csrf, actor) = a.login(peer.ip(), &input.email, &input.password).await?;
    let mut r = Json(json!({"csrf_token": csrf, "role": actor.role})).into_response();
    a.set_session_cookie(&mut r, &secret);
    Ok(r)
}

async fn logout(
    State(a): State<Arc<Atlas>>,
    Caller(_): Caller,
    headers: HeaderMap,
) -> Result<Response> {
    if let Some(s) = cookie(&headers, SESSION_COOKIE) {
        a.db.logout(&s).await?;
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    a.clear_session_cookie(&mut r);
    Ok(r)
}

async fn me(State(a): State<Arc<Atlas>>, Caller(c): Caller) -> Result<Response> {
    let o = a.db.outlet(c.outlet_id).await?;
    Ok(
        Json(json!({"outlet": o.slug, "outlet_name": o.name, "role": c.role, "who": c.label}))
            .into_response(),
    )
}

async fn kinds(State(a): State<Arc<Atlas>>, Caller(c): Caller) -> Result<Response> {
    if !c.role.can_read() {
        return Err(Error::Forbidden);
    }
    let k: Vec<_> =
        a.db.kinds()
            .await?
            .into_iter()
            .map(|(code, ru, kk, en)| json!({"code": code, "name": {"ru": ru, "kk": kk, "en": en}}))
            .collect();
    Ok(Json(k).into_response())
}

async fn outlets(State(a): State<Arc<Atlas>>, Caller(c): Caller) -> Result<Response> {
    if !c.role.can_read() {
        return Err(Error::Forbidden);
    }
    let o: Vec<_> =
        a.db.outlets()
            .await?
            .into_iter()
            .map(|o| json!({"slug": o.slug, "name": o.name}))
            .collect();
    Ok(Json(o).into_response())
}

async fn settings(State(a): State<Arc<Atlas>>, Caller(c): Caller) -> Result<Response> {
    if c.role != Role::Admin {
        return Err(Error::Forbidden);
    }
    let o = a.db.outlet(c.outlet_id).await?;
    let ntk = a.db.need_to_know(c.outlet_id).await?;
    Ok(Json(json!({"auto_tlp": o.auto_tlp, "need_to_know": ntk})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsIn {
    auto_tlp: String,
    #[serde(default)]
    need_to_know: Vec<String>,
}

async fn set_settings(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    body: Bytes,
) -> Result<Response> {
    let s: SettingsIn = parse_json(&body)?;
    let tlp = Tlp::parse(&s.auto_tlp)
        .ok_or_else(|| Error::field("auto_tlp", format!("must be one of: {}", Tlp::choices())))?;
    a.db.set_sharing(&c, tlp, &s.need_to_know).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn members(State(a): State<Arc<Atlas>>, Caller(c): Caller) -> Result<Response> {
    Ok(Json(a.db.members(&c).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberIn {
    email: String,
    name: String,
    password: String,
    role: String,
}

async fn add_member(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    body: Bytes,
) -> Result<Response> {
    if c.role != Role::Admin {
        return Err(Error::Forbidden);
    }
    let m: MemberIn = parse_json(&body)?;
    let role = Role::parse(&m.role)
        .filter(|r| *r != Role::Ingest)
        .ok_or_else(|| Error::field("role", "must be one of: viewer, editor, admin"))?;
    let member =
        a.db.create_user(Some(&c), c.outlet_id, &m.email, &m.name, &m.password, role)
            .await?;
    Ok((StatusCode::CREATED, Json(member)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenIn {
    name: String,
    role: String,
}

async fn add_token(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    body: Bytes,
) -> Result<Response> {
    if c.role != Role::Admin {
        return Err(Error::Forbidden);
    }
    let t: TokenIn = parse_json(&body)?;
    let role = Role::parse(&t.role)
        .ok_or_else(|| Error::field("role", format!("must be one of: {}", Role::choices())))?;
    let secret =
        a.db.create_token(Some(&c), c.outlet_id, &t.name, role)
            .await?;
    Ok((StatusCode::CREATED, Json(json!({"token": secret}))).into_response())
}

async fn list_incidents(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    q: std::result::Result<Query<ListFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let Query(f) = q.map_err(|e| Error::field("query", e.body_text()))?;
    Ok(Json(a.db.incidents(&c, &f).await?).into_response())
}

async fn create_incident(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    body: Bytes,
) -> Result<Response> {
    if !c.role.can_write() {
        return Err(Error::Forbidden);
    }
    let input: IncidentIn = parse_json(&body)?;
    let i = a.db.create_incident(&c, &input).await?;
    Ok((StatusCode::CREATED, Json(i)).into_response())
}

async fn get_incident(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    Ok(Json(a.db.incident(&c, &id).await?).into_response())
}

async fn patch_incident(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    if !c.role.can_write() {
        return Err(Error::Forbidden);
    }
    let p: IncidentPatch = parse_json(&body)?;
    Ok(Json(a.db.update_incident(&c, &id, &p).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateIn {
    #[serde(default)]
    body: String,
    #[serde(default)]
    new_status: Option<String>,
}

async fn add_update(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    if !c.role.can_write() {
        return Err(Error::Forbidden);
    }
    let u: UpdateIn = parse_json(&body)?;
    a.db.add_update(&c, &id, &u.body, u.new_status.as_deref())
        .await?;
    Ok(StatusCode::CREATED.into_response())
}

async fn incident_indicators(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    Ok(Json(a.db.incident_sightings(&c, &id).await?).into_response())
}

async fn add_indicators(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    if !c.role.can_write() {
        return Err(Error::Forbidden);
    }
    let s: Vec<SightingIn> = parse_json(&body)?;
    let n = a.db.add_sightings(&c, &id, &s).await?;
    Ok((StatusCode::CREATED, Json(json!({"sightings": n}))).into_response())
}

async fn list_attachments(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    Ok(Json(a.db.attachments(&c, &id).await?).into_response())
}

#[derive(Deserialize)]
struct AttachQuery {
    name: Option<String>,
}

async fn add_attachment(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    Path(id): Path<String>,
    Query(q): Query<AttachQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    if !c.role.can_write() {
        return Err(Error::Forbidden);
    }
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream");
    let name = q.name.unwrap_or_else(|| "attachment".into());
    let att = a.db.add_attachment(&c, &id, &name, media, &body).await?;
    Ok((StatusCode::CREATED, Json(att)).into_response())
}

async fn read_attachment(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    Path((id, sha)): Path<(String, String)>,
) -> Result<Response> {
    let (meta, data) = a.db.read_attachment(&c, &id, &sha).await?;
    Ok(attachment_response(&meta, data))
}

/// Serves stored evidence: always as a download, never rendered in the atlas's own origin, so an
/// uploaded HTML or SVG file cannot run script against the dashboard.
pub fn attachment_response(meta: &crate::store::Attachment, data: Vec<u8>) -> Response {
    let safe_name: String = meta
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{safe_name}\""),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (
                header::HeaderName::from_static("x-qalqan-sha256"),
                meta.sha256.clone(),
            ),
        ],
        data,
    )
        .into_response()
}

async fn custody(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    Path((id, sha)): Path<(String, String)>,
) -> Result<Response> {
    Ok(Json(a.db.custody_log(&c, &id, &sha).await?).into_response())
}

#[derive(Deserialize)]
struct IndicatorQuery {
    kind: String,
    value: String,
}

async fn indicator(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    q: std::result::Result<Query<IndicatorQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let Query(q) = q.map_err(|e| Error::field("query", e.body_text()))?;
    Ok(Json(a.db.indicator(&c, &q.kind, &q.value).await?).into_response())
}

#[derive(Deserialize)]
struct PubQuery {
    outlet: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

async fn publications(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    Query(q): Query<PubQuery>,
) -> Result<Response> {
    let from = match q.from.as_deref() {
        Some(s) => parse_time(s).ok_or_else(|| Error::field("from", "not a date or time"))?,
        None => 0,
    };
    let to = match q.to.as_deref() {
        Some(s) => parse_time(s).ok_or_else(|| Error::field("to", "not a date or time"))?,
        None => i64::MAX,
    };
    Ok(Json(a.db.publications(&c, q.outlet.as_deref(), from, to).await?).into_response())
}

async fn add_publication(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    body: Bytes,
) -> Result<Response> {
    if !c.role.can_write() {
        return Err(Error::Forbidden);
    }
    let p: PublicationIn = parse_json(&body)?;
    Ok((
        StatusCode::CREATED,
        Json(a.db.add_publication(&c, &p).await?),
    )
        .into_response())
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<i64>,
}

async fn audit(
    State(a): State<Arc<Atlas>>,
    Caller(c): Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Response> {
    Ok(Json(a.db.audit_log(&c, q.limit.unwrap_or(100)).await?).into_response())
}

async fn ingest(State(a): State<Arc<Atlas>>, Caller(c): Caller, body: Bytes) -> Result<Response> {
    if c.role != Role::Ingest && c.role != Role::Admin {
        return Err(Error::Forbidden);
    }
    let sig: EpisodeSignal = parse_json(&body)?;
    let (id, created) = a.db.ingest_episode(&c, &sig).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({"incident": id, "created": created}))).into_response())
}
