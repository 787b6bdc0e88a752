//! TAXII 2.1 server: partners' tools (MISP, OpenCTI, taxii2-client) pull the atlas's STIX
//! objects, and trusted outlets push theirs.
//!
//! Endpoints (all with a trailing slash, as TAXII clients send them): discovery `/taxii2/`, one
//! API root `/taxii2/api/`, its collections, and one collection, `atlas`: every object the
//! caller may see under TLP (the same rule as the rest of the atlas, applied in SQL by
//! `store::VISIBLE`). Objects, object by id, versions and manifest; `added_after`, `limit`,
//! `next`, `match[id|type|version|spec_version]`; `X-TAXII-Date-Added-First/Last` headers.
//! Media type `application/taxii+json;version=2.1` on every answer (406 when the client accepts
//! something else, 415 for a POST of anything else).
//!
//! The collection is not a copy: its objects are made from the store on each request
//! (`stix.rs`), and an object's `date_added` is the server time of the last change of the row it
//! comes from (an incident, a timeline update, a sighting, an outlet, a confirmed campaign or
//! one of its visible members). Campaigns are the export's: the confirmed ones the caller sees
//! through two visible members, with the members and shared indicators the caller may see
//! (`campaigns::stix_objects`, the same TLP rule as the export and the campaign pages). `next` is a stateless
//! cursor: the `(date_added, source, row, object)` position of the next object, so paging needs
//! no server memory; `added_after` with the last `X-TAXII-Date-Added-Last` resumes too.
//! The atlas keeps the current version of each object only, so `versions/` lists one.
//!
//! Authentication: `Authorization: Bearer <API token>` (also `Token <API token>`, as
//! taxii2-client's `TokenAuth` sends), or HTTP Basic with the outlet's slug as user name and an
//! API token of that outlet as password. Member passwords are not accepted here: each TAXII
//! request would then cost an Argon2 check, and a TAXII endpoint would become a password oracle
//! beside the throttled login. Tokens are 256-bit random secrets, so guessing them needs no
//! throttle.
//!
//! Writing: `POST …/objects/` (and `GET …/status/{id}/`) only for editor and admin tokens of an
//! outlet the task force trusts (`qalqan atlas outlet trust SLUG`); everything else reads only.
//! What arrives goes through the same import as `POST /api/v1/stix/import`, into an incident of
//! the posting outlet.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use serde_json::{Value, json};
use sqlx::Row;

use crate::Atlas;
use crate::accounts::Actor;
use crate::db::Db;
use crate::error::Error;
use crate::model::{IndicatorKind, Tlp, format_time, now_ms, parse_time};
use crate::stix::{
    self, Conn, IncidentRow, NoteRow, Sel, SightingRow, TLP2_CREATED_MS, load_incidents,
    load_notes, load_observables, load_report_refs, load_sightings,
};
use crate::stix_import::{MAX_BUNDLE_BYTES, parse_body};
use crate::store::VISIBLE;

/// TAXII resources.
pub const TAXII_MEDIA: &str = "application/taxii+json;version=2.1";
/// STIX content, as collections and manifests advertise it.
pub const STIX_MEDIA: &str = "application/stix+json;version=2.1";
/// The one collection's id.
pub const COLLECTION_ID: &str = "8a3a9f8e-5c1e-4b7e-9d2a-61c3f0b7a2d4";
/// Objects per page when the client does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// Most objects per page.
pub const MAX_LIMIT: usize = 1000;
/// Rows read per database round while filling a page.
const ROWS_PER_ROUND: i64 = 200;
/// Status resources are kept this long.
const STATUS_KEEP_MS: i64 = 24 * 3600 * 1000;
/// Status resources list their objects one by one up to this many (counts are always there).
const STATUS_MAX_LISTED: usize = 1000;
/// Most objects one row of the collection makes: a campaign makes itself, one relationship per
/// member and at most [`crate::campaigns::STIX_MAX_INDICATES`] more; every other row a handful.
/// A cursor's object index beyond this is junk.
const MAX_OBJECTS_PER_ROW: usize = 1024;

/// The routes, with their full paths (merged into the app at the root).
pub fn router() -> Router<Arc<Atlas>> {
    Router::new()
        .route("/taxii2/", get(discovery))
        .route("/taxii2/api/", get(api_root))
        .route("/taxii2/api/collections/", get(collections))
        .route("/taxii2/api/collections/{cid}/", get(collection))
        .route(
            "/taxii2/api/collections/{cid}/objects/",
            get(objects).post(add_objects),
        )
        .route("/taxii2/api/collections/{cid}/objects/{oid}/", get(object))
        .route(
            "/taxii2/api/collections/{cid}/objects/{oid}/versions/",
            get(versions),
        )
        .route("/taxii2/api/collections/{cid}/manifest/", get(manifest))
        // taxii2-client builds the status URL without the trailing slash.
        .route("/taxii2/api/status/{sid}/", get(status))
        .route("/taxii2/api/status/{sid}", get(status))
        .route("/taxii2/{*rest}", get(not_found).post(not_found))
        .layer(DefaultBodyLimit::max(MAX_BUNDLE_BYTES + 1))
}

/// A TAXII error resource.
pub struct TaxiiError {
    status: StatusCode,
    title: String,
    description: Option<String>,
    details: Option<Value>,
}

impl TaxiiError {
    fn new(status: StatusCode, title: &str) -> Self {
        TaxiiError {
            status,
            title: title.into(),
            description: None,
            details: None,
        }
    }
    fn describe(mut self, d: impl Into<String>) -> Self {
        self.description = Some(d.into());
        self
    }
}

impl From<Error> for TaxiiError {
    fn from(e: Error) -> Self {
        let status = e.status();
        let mut t = TaxiiError::new(status, &e.to_string());
        match &e {
            Error::Invalid(fields) => t.details = Some(json!({"fields": fields})),
            Error::Malformed(m) => t.description = Some(m.clone()),
            Error::Db(err) => tracing::error!(error = %err, "database error"),
            Error::Internal(err) => tracing::error!(error = %err, "internal error"),
            _ => {}
        }
        t
    }
}

impl IntoResponse for TaxiiError {
    fn into_response(self) -> Response {
        let mut body =
            json!({"title": self.title, "http_status": self.status.as_u16().to_string()});
        if let Some(d) = self.description {
            body["description"] = Value::String(d);
        }
        if let Some(d) = self.details {
            body["details"] = d;
        }
        let mut r = taxii_json(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Basic realm=\"qalqan-atlas-taxii\", Bearer realm=\"qalqan-atlas-taxii\"",
                ),
            );
        }
        r
    }
}

type TResult<T> = std::result::Result<T, TaxiiError>;

fn taxii_json(status: StatusCode, v: &Value) -> Response {
    let mut r = (status, serde_json::to_vec(v).unwrap_or_default()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(TAXII_MEDIA));
    r
}

async fn not_found() -> TaxiiError {
    TaxiiError::new(StatusCode::NOT_FOUND, "not found")
}

/// The caller of a TAXII endpoint.
pub struct TaxiiCaller(pub Actor);

impl FromRequestParts<Arc<Atlas>> for TaxiiCaller {
    type Rejection = TaxiiError;

    async fn from_request_parts(parts: &mut Parts, atlas: &Arc<Atlas>) -> TResult<Self> {
        let unauth = || TaxiiError::from(Error::Unauthenticated);
        let v = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(unauth)?
            .to_str()
            .map_err(|_| unauth())?
            .trim();
        let (scheme, rest) = v.split_once(' ').ok_or_else(unauth)?;
        let rest = rest.trim();
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" | "token" => Ok(TaxiiCaller(atlas.db.token(rest).await?)),
            "basic" => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(rest)
                    .map_err(|_| unauth())?;
                let text = String::from_utf8(raw).map_err(|_| unauth())?;
                let (user, token) = text.split_once(':').ok_or_else(unauth)?;
                let actor = atlas.db.token(token).await?;
                // The user name must be the token's outlet, so a token pasted under the wrong
                // outlet's name fails loudly instead of acting for another outlet than meant.
                let outlet = atlas.db.outlet(actor.outlet_id).await?;
                if outlet.slug != user.trim() {
                    return Err(unauth());
                }
                Ok(TaxiiCaller(actor))
            }
            _ => Err(unauth()),
        }
    }
}

/// Whether the client accepts TAXII 2.1 JSON: no `Accept`, `*/*`, or
/// `application/taxii+json` with version 2.1 or no version.
fn accepts_taxii(headers: &HeaderMap) -> bool {
    let Some(v) = headers.get(header::ACCEPT) else {
        return true;
    };
    let Ok(v) = v.to_str() else { return false };
    v.split(',').any(|range| {
        let mut parts = range.split(';').map(|p| p.trim().to_ascii_lowercase());
        let ty = parts.next().unwrap_or_default();
        let params: Vec<String> = parts.filter(|p| !p.starts_with("q=")).collect();
        match ty.as_str() {
            "*/*" | "application/*" => true,
            "application/taxii+json" => {
                params.is_empty() || params.iter().all(|p| p.replace(' ', "") == "version=2.1")
            }
            _ => false,
        }
    })
}

fn check_accept(headers: &HeaderMap) -> TResult<()> {
    if accepts_taxii(headers) {
        Ok(())
    } else {
        Err(
            TaxiiError::new(StatusCode::NOT_ACCEPTABLE, "not acceptable")
                .describe(format!("this server answers {TAXII_MEDIA}")),
        )
    }
}

fn check_collection(cid: &str) -> TResult<()> {
    if cid == COLLECTION_ID || cid == "atlas" {
        Ok(())
    } else {
        Err(TaxiiError::new(StatusCode::NOT_FOUND, "no such collection"))
    }
}

/// Whether the caller's outlet may write through TAXII.
async fn can_write(db: &Db, a: &Actor) -> TResult<bool> {
    if !a.role.can_write() {
        return Ok(false);
    }
    let v: Option<i64> = sqlx::query_scalar("SELECT taxii_write FROM outlets WHERE id = $1")
        .bind(a.outlet_id)
        .fetch_optional(&db.pool)
        .await
        .map_err(Error::from)?;
    Ok(v.unwrap_or(0) != 0)
}

async fn discovery(
    State(a): State<Arc<Atlas>>,
    TaxiiCaller(_): TaxiiCaller,
    headers: HeaderMap,
) -> TResult<Response> {
    check_accept(&headers)?;
    let title =
        a.db.task_force()
            .await?
            .unwrap_or_else(|| "Qalqan atlas".into());
    Ok(taxii_json(
        StatusCode::OK,
        &json!({
            "title": format!("{title}: TAXII 2.1"),
            "description": "The task force's shared attack registry, as STIX 2.1 objects under TLP 2.0.",
            "default": "/taxii2/api/",
            "api_roots": ["/taxii2/api/"],
        }),
    ))
}

async fn api_root(TaxiiCaller(_): TaxiiCaller, headers: HeaderMap) -> TResult<Response> {
    check_accept(&headers)?;
    Ok(taxii_json(
        StatusCode::OK,
        &json!({
            "title": "Qalqan atlas",
            "description": "Incidents, indicators, sightings, notes and confirmed campaigns the caller may see.",
            "versions": [TAXII_MEDIA],
            "max_content_length": MAX_BUNDLE_BYTES,
        }),
    ))
}

async fn collection_resource(db: &Db, a: &Actor) -> TResult<Value> {
    Ok(json!({
        "id": COLLECTION_ID,
        "title": "Atlas",
        "alias": "atlas",
        "description": "Everything the caller's outlet may see under TLP 2.0.",
        "can_read": a.role.can_read(),
        "can_write": can_write(db, a).await?,
        "media_types": [STIX_MEDIA],
    }))
}

async fn collections(
    State(a): State<Arc<Atlas>>,
    TaxiiCaller(c): TaxiiCaller,
    headers: HeaderMap,
) -> TResult<Response> {
    check_accept(&headers)?;
    let col = collection_resource(&a.db, &c).await?;
    Ok(taxii_json(StatusCode::OK, &json!({"collections": [col]})))
}

async fn collection(
    State(a): State<Arc<Atlas>>,
    TaxiiCaller(c): TaxiiCaller,
    Path(cid): Path<String>,
    headers: HeaderMap,
) -> TResult<Response> {
    check_accept(&headers)?;
    check_collection(&cid)?;
    Ok(taxii_json(
        StatusCode::OK,
        &collection_resource(&a.db, &c).await?,
    ))
}

// ---------------------------------------------------------------------------------------------
// Paging over the collection.

/// Which versions a request wants. The atlas has one version per object.
#[derive(Debug, Clone)]
enum Versions {
    /// `last`, `first`, `all`, or no filter: the one version there is.
    Any,
    /// These `modified` times (ms).
    At(BTreeSet<i64>),
}

/// A position in the collection: the next object is object `k` of row (`added`, `src`, `rid`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    added: i64,
    src: String,
    rid: i64,
    k: usize,
}

impl Cursor {
    fn encode(&self) -> String {
        format!("{}.{}.{}.{}", self.added, self.src, self.rid, self.k)
    }
    fn decode(s: &str) -> Option<Cursor> {
        let mut it = s.split('.');
        let c = Cursor {
            added: it.next()?.parse().ok()?,
            src: it.next().filter(|s| SOURCES.contains(s))?.to_string(),
            rid: it.next()?.parse().ok()?,
            k: it
                .next()?
                .parse()
                .ok()
                .filter(|k| *k < MAX_OBJECTS_PER_ROW)?,
        };
        it.next().is_none().then_some(c)
    }
}

/// The row sources of the collection, one letter each (sorted as they page).
const SOURCES: [&str; 7] = ["c", "i", "m", "n", "o", "s", "x"];

/// The sources that can hold objects of a STIX type.
fn sources_of_type(t: &str) -> &'static [&'static str] {
    match t {
        "campaign" => &["c"],
        "incident" | "report" => &["i"],
        "marking-definition" => &["m"],
        "note" => &["n"],
        "identity" => &["o"],
        "indicator" | "observed-data" | "sighting" => &["s"],
        // Sightings relate indicators to incidents; campaigns relate incidents and indicators
        // to themselves.
        "relationship" => &["c", "s"],
        "ipv4-addr" | "ipv6-addr" | "autonomous-system" | "domain-name" | "url" | "email-addr"
        | "user-account" | "file" => &["x"],
        _ => &[],
    }
}

/// A request's filters.
#[derive(Debug, Clone)]
struct Filters {
    start: Cursor,
    limit: usize,
    types: Option<BTreeSet<String>>,
    ids: Option<BTreeSet<String>>,
    versions: Versions,
    /// `match[spec_version]` names 2.1 (or is absent).
    spec_ok: bool,
}

fn bad(msg: impl Into<String>) -> TaxiiError {
    TaxiiError::new(StatusCode::BAD_REQUEST, "bad filter").describe(msg)
}

fn valid_stix_type(t: &str) -> bool {
    t.len() >= 3
        && t.len() <= 250
        && t.starts_with(|c: char| c.is_ascii_lowercase())
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Reads the query string; `allowed` names the `match[…]` filters this endpoint takes.
fn filters(query: Option<&str>, allowed: &[&str], object_id: Option<&str>) -> TResult<Filters> {
    let mut f = Filters {
        start: Cursor {
            added: i64::MIN,
            src: String::new(),
            rid: i64::MIN,
            k: 0,
        },
        limit: DEFAULT_LIMIT,
        types: None,
        ids: object_id.map(|id| BTreeSet::from([id.to_string()])),
        versions: Versions::Any,
        spec_ok: true,
    };
    let mut next = None;
    let mut added_after = None;
    let q = query.unwrap_or("");
    if q.len() > 8192 {
        return Err(bad("query string too long"));
    }
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        let name = k.as_ref();
        let is_match = name.starts_with("match[");
        if is_match && !allowed.contains(&name) {
            return Err(bad(format!("{name} is not a filter of this endpoint")));
        }
        match name {
            "limit" => match v.parse::<usize>() {
                Ok(n) if n >= 1 => f.limit = n.min(MAX_LIMIT),
                _ => return Err(bad("limit must be a positive integer")),
            },
            "next" => {
                next = Some(
                    Cursor::decode(&v).ok_or_else(|| bad("next is not a cursor of this server"))?,
                )
            }
            "added_after" => {
                added_after = Some(
                    parse_time(&v)
                        .filter(|_| v.contains('T'))
                        .ok_or_else(|| bad("added_after must be an RFC 3339 timestamp"))?,
                )
            }
            "match[type]" => {
                let mut s = BTreeSet::new();
                for t in list(&v) {
                    if !valid_stix_type(t) {
                        return Err(bad(format!("{t:?} is not a STIX type")));
                    }
                    s.insert(t.to_string());
                }
                f.types = Some(s);
            }
            "match[id]" => {
                let mut s = BTreeSet::new();
                for id in list(&v) {
                    let ok = id.split_once("--").is_some_and(|(t, u)| {
                        valid_stix_type(t) && uuid::Uuid::parse_str(u).is_ok()
                    });
                    if !ok {
                        return Err(bad(format!("{id:?} is not a STIX id")));
                    }
                    s.insert(id.to_ascii_lowercase());
                }
                f.ids = Some(s);
            }
            "match[version]" => {
                let mut at = BTreeSet::new();
                let mut any = false;
                for x in list(&v) {
                    if matches!(x, "last" | "first" | "all") {
                        any = true;
                    } else {
                        let t = parse_time(x)
                            .filter(|_| x.contains('T'))
                            .ok_or_else(|| bad(format!("{x:?} is not a version")))?;
                        at.insert(t);
                    }
                }
                f.versions = if any || at.is_empty() {
                    Versions::Any
                } else {
                    Versions::At(at)
                };
            }
            "match[spec_version]" => {
                let mut ok = false;
                for x in list(&v) {
                    match x {
                        "2.1" => ok = true,
                        "2.0" => {}
                        other => return Err(bad(format!("{other:?} is not a STIX version"))),
                    }
                }
                f.spec_ok = ok;
            }
            other => return Err(bad(format!("unknown parameter {other}"))),
        }
    }
    if let Some(a) = added_after {
        f.start.added = a.saturating_add(1);
    }
    // `next` carries the position the previous page stopped at, under the same filters.
    if let Some(c) = next {
        f.start = c;
    }
    Ok(f)
}

/// One object on a page.
struct Item {
    added: i64,
    version: String,
    object: Value,
}

struct PageOut {
    items: Vec<Item>,
    more: bool,
    next: Option<String>,
}

/// The version of an object: `modified`, else `created`, else its `date_added`.
fn version_of(o: &Value, added: i64) -> String {
    o.get("modified")
        .or_else(|| o.get("created"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format_time(added))
}

/// The union of the collection's rows, in paging order, from `$2…$4` on, visible to `$1`.
fn union_sql(srcs: &[&str], limit: i64) -> String {
    let tlp_cases = "CASE WHEN s.updated_ms > i.updated_ms THEN s.updated_ms ELSE i.updated_ms END";
    let mut parts = Vec::new();
    for s in srcs {
        parts.push(match *s {
            "m" => (0..5)
                .map(|r| format!("SELECT 'm' AS src, {r} AS rid, {TLP2_CREATED_MS} AS added"))
                .collect::<Vec<_>>()
                .join(" UNION ALL "),
            "o" => "SELECT 'o' AS src, o.id AS rid, o.created_ms AS added FROM outlets o".into(),
            // Confirmed campaigns, as the STIX export carries them (`campaigns.rs`).
            "c" => crate::campaigns::taxii_rows_sql("c"),
            "i" => format!(
                "SELECT 'i' AS src, i.id AS rid, CASE WHEN i.updated_ms > i.created_ms THEN i.updated_ms ELSE i.created_ms END AS added
                 FROM incidents i WHERE {VISIBLE}"
            ),
            "n" => format!(
                "SELECT 'n' AS src, u.id AS rid, CASE WHEN u.created_ms > i.updated_ms THEN u.created_ms ELSE i.updated_ms END AS added
                 FROM incident_updates u JOIN incidents i ON i.id = u.incident_id WHERE {VISIBLE}"
            ),
            "s" => format!(
                "SELECT 's' AS src, s.id AS rid,
                   CASE WHEN ({tlp_cases}) > i.created_ms THEN ({tlp_cases}) ELSE i.created_ms END AS added
                 FROM sightings s JOIN incidents i ON i.id = s.incident_id WHERE {VISIBLE}"
            ),
            "x" => format!(
                "SELECT 'x' AS src, ind.id AS rid, MIN({tlp_cases}) AS added
                 FROM indicators ind JOIN sightings s ON s.indicator_id = ind.id
                 JOIN incidents i ON i.id = s.incident_id WHERE {VISIBLE} GROUP BY ind.id"
            ),
            _ => continue,
        });
    }
    format!(
        "SELECT t.src, t.rid, t.added FROM ({}) t
         WHERE t.added > $2 OR (t.added = $2 AND (t.src > $3 OR (t.src = $3 AND t.rid >= $4)))
         ORDER BY t.added, t.src, t.rid LIMIT {limit}",
        parts.join(" UNION ALL ")
    )
}

/// The objects of the given rows, in row order; each row's objects in a fixed order.
async fn expand(
    c: &mut Conn,
    actor: &Actor,
    rows: &[(String, i64, i64)],
) -> Result<Vec<Vec<Value>>, Error> {
    let ids = |src: &str| -> Vec<i64> { rows.iter().filter(|r| r.0 == src).map(|r| r.1).collect() };
    let (ii, nn, ss, xx, cc) = (ids("i"), ids("n"), ids("s"), ids("x"), ids("c"));
    let campaigns = crate::campaigns::visible_campaigns_by_row(c, actor, &cc).await?;
    let incidents: Vec<IncidentRow> =
        load_incidents(c, actor, Sel::Ids(&ii), ii.len() as i64 + 1).await?;
    let refs = load_report_refs(c, actor, &incidents).await?;
    let notes: Vec<NoteRow> = load_notes(c, actor, Sel::Ids(&nn), nn.len() as i64 + 1).await?;
    let sightings: Vec<SightingRow> =
        load_sightings(c, actor, Sel::Ids(&ss), ss.len() as i64 + 1).await?;
    let observables = load_observables(c, actor, Sel::Ids(&xx), xx.len() as i64 + 1).await?;
    let outlets = if rows.iter().any(|r| r.0 == "o") {
        stix::load_outlets(c).await?
    } else {
        Vec::new()
    };
    let mut out = Vec::with_capacity(rows.len());
    for (src, rid, _) in rows {
        let objs = match src.as_str() {
            "m" => Tlp::ALL
                .get(usize::try_from(*rid).unwrap_or(usize::MAX))
                .map(|t| vec![stix::marking(*t)])
                .unwrap_or_default(),
            // The export's campaign objects, every member the caller sees kept.
            "c" => campaigns
                .get(rid)
                .map(|camp| crate::campaigns::stix_objects(camp, |_| true))
                .unwrap_or_default(),
            "o" => outlets
                .iter()
                .find(|o| o.0 == *rid)
                .map(|(_, slug, name, created)| vec![stix::identity(slug, name, *created)])
                .unwrap_or_default(),
            "i" => incidents
                .iter()
                .find(|i| i.row_id == *rid)
                .map(|i| {
                    stix::incident_objects(i, refs.get(&i.row_id).map(Vec::as_slice).unwrap_or(&[]))
                })
                .unwrap_or_default(),
            "n" => notes
                .iter()
                .find(|n| n.row_id == *rid)
                .map(|n| vec![stix::note(n)])
                .unwrap_or_default(),
            "s" => sightings
                .iter()
                .find(|s| s.row_id == *rid)
                .map(stix::sighting_objects)
                .unwrap_or_default(),
            "x" => observables
                .iter()
                .find(|o| o.0 == *rid)
                .and_then(
                    |(_, kind, value, tlp, _): &(i64, IndicatorKind, String, Tlp, i64)| {
                        stix::sco_object(*kind, value, *tlp)
                    },
                )
                .map(|o| vec![o])
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        out.push(objs);
    }
    Ok(out)
}

fn wanted(f: &Filters, o: &Value, version: &str) -> bool {
    let id = o.get("id").and_then(Value::as_str).unwrap_or("");
    let ty = o.get("type").and_then(Value::as_str).unwrap_or("");
    if !f.spec_ok {
        return false;
    }
    if let Some(ids) = &f.ids
        && !ids.contains(id)
    {
        return false;
    }
    if let Some(types) = &f.types
        && !types.contains(ty)
    {
        return false;
    }
    match &f.versions {
        Versions::Any => true,
        Versions::At(at) => parse_time(version).is_some_and(|v| at.contains(&v)),
    }
}

/// Fills one page: at most `f.limit` objects, and whether more follow.
async fn page(db: &Db, actor: &Actor, f: &Filters) -> Result<PageOut, Error> {
    if !actor.role.can_read() {
        return Err(Error::Forbidden);
    }
    let mut srcs: BTreeSet<&str> = SOURCES.iter().copied().collect();
    if let Some(t) = &f.types {
        srcs = t
            .iter()
            .flat_map(|t| sources_of_type(t).iter().copied())
            .collect();
    }
    if let Some(ids) = &f.ids {
        let by_id: BTreeSet<&str> = ids
            .iter()
            .filter_map(|id| id.split_once("--"))
            .flat_map(|(t, _)| sources_of_type(t).iter().copied())
            .collect();
        srcs = srcs.intersection(&by_id).copied().collect();
    }
    let mut items = Vec::new();
    let mut found_ids: BTreeSet<String> = BTreeSet::new();
    if srcs.is_empty() || !f.spec_ok {
        return Ok(PageOut {
            items,
            more: false,
            next: None,
        });
    }
    let srcs: Vec<&str> = srcs.into_iter().collect();
    let sql = union_sql(&srcs, ROWS_PER_ROUND);
    let mut conn = db.pool.acquire().await?;
    let mut pos = f.start.clone();
    loop {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(actor.outlet_id)
            .bind(pos.added)
            .bind(pos.src.clone())
            .bind(pos.rid)
            .fetch_all(&mut *conn)
            .await?;
        let rows: Vec<(String, i64, i64)> = rows
            .iter()
            .map(|r| {
                Ok::<_, sqlx::Error>((r.try_get("src")?, r.try_get("rid")?, r.try_get("added")?))
            })
            .collect::<Result<_, _>>()?;
        let exhausted = (rows.len() as i64) < ROWS_PER_ROUND;
        let objects = expand(&mut conn, actor, &rows).await?;
        for ((src, rid, added), objs) in rows.iter().zip(objects) {
            let skip = if pos.added == *added && pos.src == *src && pos.rid == *rid {
                pos.k
            } else {
                0
            };
            for (k, o) in objs.into_iter().enumerate().skip(skip) {
                let version = version_of(&o, *added);
                if !wanted(f, &o, &version) {
                    continue;
                }
                if items.len() == f.limit {
                    let next = Cursor {
                        added: *added,
                        src: src.clone(),
                        rid: *rid,
                        k,
                    };
                    return Ok(PageOut {
                        items,
                        more: true,
                        next: Some(next.encode()),
                    });
                }
                if let Some(id) = o.get("id").and_then(Value::as_str) {
                    found_ids.insert(id.to_string());
                }
                items.push(Item {
                    added: *added,
                    version,
                    object: o,
                });
            }
        }
        // Looking for given ids only: each object is in the collection once, so the search ends
        // when all are found.
        let all_found = f
            .ids
            .as_ref()
            .is_some_and(|ids| ids.iter().all(|i| found_ids.contains(i)));
        match rows.last() {
            Some((src, rid, added)) if !exhausted && !all_found => {
                pos = Cursor {
                    added: *added,
                    src: src.clone(),
                    rid: rid.saturating_add(1),
                    k: 0,
                };
            }
            _ => break,
        }
    }
    Ok(PageOut {
        items,
        more: false,
        next: None,
    })
}

fn with_added_headers(mut r: Response, items: &[Item]) -> Response {
    if let (Some(first), Some(last)) = (items.first(), items.last()) {
        for (name, v) in [
            ("x-taxii-date-added-first", first.added),
            ("x-taxii-date-added-last", last.added),
        ] {
            if let Ok(h) = HeaderValue::from_str(&format_time(v)) {
                r.headers_mut().insert(name, h);
            }
        }
    }
    r
}

fn envelope(p: PageOut) -> Response {
    let mut body = json!({"more": p.more});
    if let Some(n) = &p.next {
        body["next"] = Value::String(n.clone());
    }
    if !p.items.is_empty() {
        body["objects"] = Value::Array(p.items.iter().map(|i| i.object.clone()).collect());
    }
    with_added_headers(taxii_json(StatusCode::OK, &body), &p.items)
}

async fn readable(a: &Actor) -> TResult<()> {
    if a.role.can_read() {
        Ok(())
    } else {
        Err(TaxiiError::new(
            StatusCode::FORBIDDEN,
            "this token may not read the collection",
        ))
    }
}

async fn objects(
    State(a): State<Arc<Atlas>>,
    TaxiiCaller(c): TaxiiCaller,
    Path(cid): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> TResult<Response> {
    check_accept(&headers)?;
    check_collection(&cid)?;
    readable(&c).await?;
    let f = filters(
        q.as_deref(),
        &[
            "match[id]",
            "match[type]",
            "match[version]",
            "match[spec_version]",
        ],
        None,
    )?;
    Ok(envelope(page(&a.db, &c, &f).await?))
}

fn check_object_id(oid: &str) -> TResult<String> {
    let ok = oid
        .split_once("--")
        .is_some_and(|(t, u)| valid_stix_type(t) && uuid::Uuid::parse_str(u).is_ok());
    if ok {
        Ok(oid.to_ascii_lowercase())
    } else {
        Err(TaxiiError::new(StatusCode::NOT_FOUND, "no such object"))
    }
}

async fn object(
    State(a): State<Arc<Atlas>>,
    TaxiiCaller(c): TaxiiCaller,
    Path((cid, oid)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> TResult<Response> {
    check_accept(&headers)?;
    check_collection(&cid)?;
    readable(&c).await?;
    let oid = check_object_id(&oid)?;
    let f = filters(
        q.as_deref(),
        &["match[version]", "match[spec_version]"],
        Some(&oid),
    )?;
    let p = page(&a.db, &c, &f).await?;
    if p.items.is_empty() {
        return Err(TaxiiError::new(StatusCode::NOT_FOUND, "no such object"));
    }
    Ok(envelope(p))
}

async fn versions(
    State(a): State<Arc<Atlas>>,
    TaxiiCaller(c): TaxiiCaller,
    Path((cid, oid)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> TResult<Response> {
    check_accept(&headers)?;
    check_collection(&cid)?;
    readable(&c).await?;
    let oid = check_object_id(&oid)?;
    let f = filters(q.as_deref(), &["match[spec_version]"], Some(&oid))?;
    let p = page(&a.db, &c, &f).await?;
    if p.items.is_empty() {
        return Err(TaxiiError::new(StatusCode::NOT_FOUND, "no such object"));
    }
    let versions: Vec<&str> = p.items.iter().map(|i| i.version.as_str()).collect();
    let r = taxii_json(
        StatusCode::OK,
        &json!({"more": p.more, "versions": versions}),
    );
    Ok(with_added_headers(r, &p.items))
}

async fn manifest(
    State(a): State<Arc<Atlas>>,
    TaxiiCaller(c): TaxiiCaller,
    Path(cid): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> TResult<Response> {
    check_accept(&headers)?;
    check_collection(&cid)?;
    readable(&c).await?;
    let f = filters(
        q.as_deref(),
        &[
            "match[id]",
            "match[type]",
            "match[version]",
            "match[spec_version]",
        ],
        None,
    )?;
    let p = page(&a.db, &c, &f).await?;
    let records: Vec<Value> = p
        .items
        .iter()
        .map(|i| {
            json!({
                "id": i.object.get("id").cloned().unwrap_or(Value::Null),
                "date_added": format_time(i.added),
                "version": i.version,
                "media_type": STIX_MEDIA,
            })
        })
        .collect();
    let mut body = json!({"more": p.more});
    if let Some(n) = &p.next {
        body["next"] = Value::String(n.clone());
    }
    if !records.is_empty() {
        body["objects"] = Value::Array(records);
    }
    Ok(with_added_headers(
        taxii_json(StatusCode::OK, &body),
        &p.items,
    ))
}

async fn add_objects(
    State(a): State<Arc<Atlas>>,
    TaxiiCaller(c): TaxiiCaller,
    Path(cid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> TResult<Response> {
    check_accept(&headers)?;
    check_collection(&cid)?;
    if !can_write(&a.db, &c).await? {
        return Err(TaxiiError::new(
            StatusCode::FORBIDDEN,
            "this token may not write to the collection",
        ));
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
        .replace(' ', "");
    if !(ct == "application/taxii+json" || ct == "application/taxii+json;version=2.1") {
        return Err(
            TaxiiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported media type")
                .describe(format!("send {TAXII_MEDIA}")),
        );
    }
    if body.len() > MAX_BUNDLE_BYTES {
        return Err(
            TaxiiError::new(StatusCode::PAYLOAD_TOO_LARGE, "envelope too large")
                .describe(format!("at most {MAX_BUNDLE_BYTES} bytes")),
        );
    }
    let requested = now_ms();
    let parsed = parse_body(&body, true)?;
    let outcome = a.db.import_stix(&c, &parsed, None).await?;
    let mut successes = Vec::new();
    let mut failures = Vec::new();
    for (i, o) in parsed.objects.iter().enumerate() {
        let id = o.get("id").and_then(Value::as_str).unwrap_or("");
        let version = version_of(o, requested);
        match outcome.per_object.get(i).cloned().flatten() {
            None => successes.push(json!({"id": id, "version": version})),
            Some(m) => failures.push(json!({"id": id, "version": version, "message": m})),
        }
    }
    let total = parsed.objects.len();
    let sid = uuid::Uuid::new_v4().to_string();
    let mut status = json!({
        "id": sid,
        "status": "complete",
        "request_timestamp": format_time(requested),
        "total_count": total,
        "success_count": successes.len(),
        "failure_count": failures.len(),
        "pending_count": 0,
    });
    if total <= STATUS_MAX_LISTED {
        status["successes"] = Value::Array(successes);
        status["failures"] = Value::Array(failures);
        status["pendings"] = json!([]);
    }
    save_status(&a.db, &c, &sid, &status).await?;
    Ok(taxii_json(StatusCode::ACCEPTED, &status))
}

async fn save_status(db: &Db, c: &Actor, sid: &str, status: &Value) -> Result<(), Error> {
    let now = now_ms();
    let _w = db.write().await;
    let mut tx = db.pool.begin().await?;
    // Old statuses go as new ones come, so the table stays bounded by a day of posts.
    sqlx::query("DELETE FROM taxii_status WHERE created_ms < $1")
        .bind(now - STATUS_KEEP_MS)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO taxii_status (id, outlet_id, created_ms, body) VALUES ($1, $2, $3, $4)",
    )
    .bind(sid)
    .bind(c.outlet_id)
    .bind(now)
    .bind(status.to_string())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn status(
    State(a): State<Arc<Atlas>>,
    TaxiiCaller(c): TaxiiCaller,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> TResult<Response> {
    check_accept(&headers)?;
    if !can_write(&a.db, &c).await? {
        return Err(TaxiiError::new(
            StatusCode::FORBIDDEN,
            "this token may not write to the collection",
        ));
    }
    if uuid::Uuid::parse_str(&sid).is_err() {
        return Err(TaxiiError::new(StatusCode::NOT_FOUND, "no such status"));
    }
    let body: Option<String> =
        sqlx::query_scalar("SELECT body FROM taxii_status WHERE id = $1 AND outlet_id = $2")
            .bind(sid.to_ascii_lowercase())
            .bind(c.outlet_id)
            .fetch_optional(&a.db.pool)
            .await
            .map_err(Error::from)?;
    let body = body.ok_or_else(|| TaxiiError::new(StatusCode::NOT_FOUND, "no such status"))?;
    let v: Value =
        serde_json::from_str(&body).map_err(|e| Error::Internal(format!("stored status: {e}")))?;
    Ok(taxii_json(StatusCode::OK, &v))
}

impl Db {
    /// Lets an outlet's editor and admin tokens write through TAXII, or not (CLI only: the task
    /// force decides whom it trusts, not the outlet itself).
    pub async fn set_taxii_write(&self, slug: &str, on: bool) -> Result<(), Error> {
        let _w = self.write().await;
        let mut tx = self.pool.begin().await?;
        let id: Option<i64> = sqlx::query_scalar("SELECT id FROM outlets WHERE slug = $1")
            .bind(slug.trim())
            .fetch_optional(&mut *tx)
            .await?;
        let id = id.ok_or(Error::NotFound)?;
        sqlx::query("UPDATE outlets SET taxii_write = $1 WHERE id = $2")
            .bind(i64::from(on))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        crate::accounts::audit(
            &mut tx,
            Some(id),
            "cli",
            if on {
                "outlet.taxii_trust"
            } else {
                "outlet.taxii_untrust"
            },
            slug.trim(),
            "",
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_junk() {
        let c = Cursor {
            added: 1_700_000_000_123,
            src: "s".into(),
            rid: 42,
            k: 3,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        let c = Cursor {
            added: 5,
            src: "c".into(),
            rid: 7,
            k: 550,
        };
        assert_eq!(
            Cursor::decode(&c.encode()),
            Some(c),
            "a campaign's 551st object"
        );
        for junk in [
            "",
            "1.s.2",
            "1.q.2.0",
            "1.s.2.1024",
            "a.s.2.0",
            "1.s.2.0.0",
            "1.c.2.-1",
        ] {
            assert_eq!(Cursor::decode(junk), None, "{junk}");
        }
    }

    #[test]
    fn accept_negotiation() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            accepts_taxii(&m)
        };
        assert!(h("application/taxii+json;version=2.1"));
        assert!(h("application/taxii+json; version=2.1"));
        assert!(h("application/taxii+json"));
        assert!(!h("application/json"));
        assert!(!h("application/taxii+json;version=2.0"));
        assert!(accepts_taxii(&HeaderMap::new()));
    }
}
