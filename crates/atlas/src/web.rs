//! The dashboard: server-rendered pages for the journalists and admins of the task force.
//!
//! Every page works without JavaScript (the security headers forbid all script anyway) and on a
//! slow phone: one small inline style sheet, no fonts or images from elsewhere, plain forms. Pages
//! speak Russian by default, Kazakh and English on request (`?lang=`, then the `lang` cookie).
//!
//! Like the API, handlers only translate between HTTP and the store: every read goes through the
//! store's TLP rule, so a page can never show more than the API would. Every form that changes
//! something carries the session's CSRF token in the field `csrf`, checked in constant time before
//! the handler runs ([`AuthForm`]); the upload form sends it as its first multipart field.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Multipart, Path, Request, State,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::accounts::Actor;
use crate::api::{attachment_response, constant_time_eq, cookie};
use crate::error::Error;
use crate::i18n::{Lang, t};
use crate::model::{FieldError, IndicatorKind, Role, Status, Tlp, parse_time};
use crate::store::{Impact, IncidentIn, ListFilter, MAX_ATTACHMENT, SightingIn, Target};
use crate::{Atlas, SESSION_COOKIE};

/// Largest form body accepted (everything but uploads).
const MAX_FORM: usize = 64 * 1024;
/// Most fields read from one form; more are ignored.
const MAX_FIELDS: usize = 1_000;
/// Incidents per page of the list: small enough that a page stays well under 30 KB.
const PAGE_ROWS: i64 = 30;
/// Indicator rows on an incident page (the most seen first); a shield episode can bring
/// thousands, and the page must stay light. The API returns them all.
const MAX_INDICATOR_ROWS: usize = 100;
/// The cookie that keeps the chosen language.
const LANG_COOKIE: &str = "lang";
/// Kazakhstan keeps one time zone, UTC+5, since March 2024: pages show and read times in it.
const LOCAL_OFFSET_H: i8 = 5;

pub(crate) mod campaigns;
mod provoke;

/// The dashboard's routes.
pub fn router() -> Router<Arc<Atlas>> {
    Router::new()
        .route("/", get(list))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/incidents/new", get(new_form).post(create))
        .route("/incidents/{id}", get(show))
        .route("/incidents/{id}/updates", post(add_update))
        .route("/incidents/{id}/indicators", post(add_indicator))
        .route(
            "/incidents/{id}/attachments",
            // Room for the file and the multipart framing around it.
            post(upload).layer(DefaultBodyLimit::max(MAX_ATTACHMENT + 64 * 1024)),
        )
        .route("/incidents/{id}/attachments/{sha}", get(download))
        .route("/settings", get(settings).post(save_settings))
        .route("/settings/members", post(add_member))
        // Publications: feeds in the settings, "what provokes attacks" (`web/provoke.rs`).
        .route(
            "/settings/feeds",
            get(provoke::feeds).post(provoke::add_feed),
        )
        .route("/settings/feeds/{id}/delete", post(provoke::remove_feed))
        .route("/provoke", get(provoke::provoke))
        // Campaigns across outlets (`web/campaigns.rs`).
        .route("/campaigns", get(campaigns::list))
        .route("/campaigns/recompute", post(campaigns::recompute))
        .route("/campaigns/{id}", get(campaigns::show))
        .route("/campaigns/{id}/decision", post(campaigns::decide))
        .route("/campaigns/{id}/edit", post(campaigns::edit))
        // The map of attacks (`map/pages.rs`).
        .merge(crate::map::pages::router())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_FORM))
        .layer(axum::middleware::from_fn(remember_lang))
}

// ---------------------------------------------------------------------------------------------
// Language, session and forms.

/// The language asked for in the query string (`lang=kk`), if any and valid.
fn query_lang(query: Option<&str>) -> Option<Lang> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "lang")
        .and_then(|(_, v)| Lang::parse(&v))
}

/// The page language: `?lang=`, else the cookie, else Kazakh if the browser puts Kazakh first,
/// else Russian. A browser set to English still gets Russian: the task force works in Russian
/// by default, and English is one click away.
fn page_lang(parts: &Parts) -> Lang {
    if let Some(l) = query_lang(parts.uri.query()) {
        return l;
    }
    if let Some(l) = cookie(&parts.headers, LANG_COOKIE).and_then(|v| Lang::parse(&v)) {
        return l;
    }
    let first = parts
        .headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match first.as_deref() {
        Some(l) if l == "kk" || l.starts_with("kk-") => Lang::Kk,
        _ => Lang::Ru,
    }
}

/// Stores a language chosen with `?lang=` in a cookie, so the next pages keep it.
async fn remember_lang(req: Request, next: Next) -> Response {
    let chosen = query_lang(req.uri().query());
    let mut r = next.run(req).await;
    if let Some(l) = chosen {
        let v = format!(
            "{LANG_COOKIE}={}; Path=/; SameSite=Lax; Max-Age=31536000",
            l.code()
        );
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

/// Where the language links point: this page (a GET page for a form's POST), without `lang`.
fn page_here(parts: &Parts) -> String {
    let path = parts.uri.path();
    // `//host/…` would make the language links point to another site (from a crafted link to a
    // 404 page); such a path is not one of ours anyway.
    if !path.starts_with('/') || path.starts_with("//") || path.contains('\\') {
        return "/".into();
    }
    if parts.method != Method::GET && parts.method != Method::HEAD {
        // A POST answered with a page (a form with errors): link to the page the form is on.
        let page = match path.rsplit_once('/') {
            Some((head, "updates" | "indicators" | "attachments")) => head,
            Some((_, "members")) => "/settings",
            Some((_, "logout")) => "/",
            _ => path,
        };
        return page.to_string();
    }
    let kept: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k != "lang")
                .take(50)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", encode_query(&kept))
    }
}

/// A 303 to a path of ours. Never panics: a location that is not a valid header value (it can
/// only come from a bug) goes to the list instead.
fn see_other(location: &str) -> Response {
    let v = HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/"));
    (StatusCode::SEE_OTHER, [(header::LOCATION, v)]).into_response()
}

fn encode_query(pairs: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// What every page needs to know about the request: language and where it is.
pub struct Ctx {
    pub(crate) lang: Lang,
    pub(crate) here: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Ctx {
            lang: page_lang(parts),
            here: page_here(parts),
        })
    }
}

/// A logged-in member. Without a valid session the request is sent to `/login` (303).
pub struct Auth {
    pub(crate) ctx: Ctx,
    pub(crate) actor: Actor,
    csrf: String,
    secret: String,
    outlet_name: String,
    task_force: Option<String>,
}

impl FromRequestParts<Arc<Atlas>> for Auth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, a: &Arc<Atlas>) -> Result<Self, Response> {
        let ctx = Ctx {
            lang: page_lang(parts),
            here: page_here(parts),
        };
        let Some(secret) = cookie(&parts.headers, SESSION_COOKIE) else {
            // The session cookie is SameSite=Strict, so a link followed from another site (an
            // incident shared in a Telegram chat) arrives without it even when the member is
            // logged in. Reloading the page from our own origin sends it; a meta refresh does that
            // without script. Only then is a missing cookie really "not logged in".
            let cross_site = parts
                .headers
                .get("sec-fetch-site")
                .is_some_and(|v| v.as_bytes() == b"cross-site");
            if cross_site && parts.method == Method::GET {
                let here = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .filter(|p| p.starts_with('/') && !p.starts_with("//") && !p.contains('\\'))
                    .unwrap_or("/");
                let page = RefreshPage {
                    p: Frame::new(&ctx, None, t(ctx.lang, "login.title").into()),
                    to: here.to_string(),
                };
                return Err(render(StatusCode::OK, &page));
            }
            return Err(see_other("/login"));
        };
        let (actor, csrf) = match a.db.session(&secret).await {
            Ok(s) => s,
            Err(Error::Unauthenticated) => return Err(see_other("/login")),
            Err(e) => return Err(fail(&ctx, None, e)),
        };
        let outlet_name = match a.db.outlet(actor.outlet_id).await {
            Ok(o) => o.name,
            Err(e) => return Err(fail(&ctx, None, e)),
        };
        let task_force = a.db.task_force().await.unwrap_or_default();
        Ok(Auth {
            ctx,
            actor,
            csrf,
            secret,
            outlet_name,
            task_force,
        })
    }
}

/// A form body, read as `application/x-www-form-urlencoded`, keeping repeated keys.
#[derive(Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &[u8]) -> Form {
        Form(
            form_urlencoded::parse(body)
                .take(MAX_FIELDS)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first value of a field, or "".
    fn get(&self, k: &str) -> &str {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    /// Every value of a field (checkbox lists).
    fn all(&self, k: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(key, v)| key == k && !v.is_empty())
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// A logged-in member's form submission whose `csrf` field matched the session's token.
/// Without it the answer is 403 and nothing runs.
pub struct AuthForm {
    auth: Auth,
    form: Form,
}

impl FromRequest<Arc<Atlas>> for AuthForm {
    type Rejection = Response;

    async fn from_request(req: Request, a: &Arc<Atlas>) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let auth = Auth::from_request_parts(&mut parts, a).await?;
        let bytes = Bytes::from_request(Request::from_parts(parts, body), a)
            .await
            .map_err(IntoResponse::into_response)?;
        let form = Form::parse(&bytes);
        if !constant_time_eq(form.get("csrf").as_bytes(), auth.csrf.as_bytes()) {
            tracing::debug!(who = %auth.actor.label, "dashboard form without a valid CSRF token");
            return Err(fail(&auth.ctx, Some(&auth), Error::Forbidden));
        }
        Ok(AuthForm { auth, form })
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering.

/// One entry of the language switch.
pub struct LangLink {
    pub code: &'static str,
    pub label: &'static str,
    pub href: String,
    pub current: bool,
}

/// The frame around every page: language, header, navigation.
pub struct Frame {
    pub lang: Lang,
    pub title: String,
    pub user: Option<String>,
    pub outlet: Option<String>,
    pub task_force: Option<String>,
    pub can_write: bool,
    pub is_admin: bool,
    pub csrf: String,
    pub langs: Vec<LangLink>,
}

impl Frame {
    pub(crate) fn new(ctx: &Ctx, auth: Option<&Auth>, title: String) -> Frame {
        let sep = if ctx.here.contains('?') { '&' } else { '?' };
        let langs = Lang::ALL
            .iter()
            .map(|l| LangLink {
                code: l.code(),
                label: l.label(),
                href: format!("{}{sep}lang={}", ctx.here, l.code()),
                current: *l == ctx.lang,
            })
            .collect();
        Frame {
            lang: ctx.lang,
            title,
            user: auth.map(|a| a.actor.label.trim_start_matches("user:").to_string()),
            outlet: auth.map(|a| a.outlet_name.clone()),
            task_force: auth.and_then(|a| a.task_force.clone()),
            can_write: auth.is_some_and(|a| a.actor.role.can_write()),
            is_admin: auth.is_some_and(|a| a.actor.role == Role::Admin),
            csrf: auth.map(|a| a.csrf.clone()).unwrap_or_default(),
            langs,
        }
    }

    /// A message in the page's language.
    pub fn t(&self, key: &str) -> &'static str {
        t(self.lang, key)
    }
}

pub(crate) fn render<T: Template>(status: StatusCode, page: &T) -> Response {
    match page.render() {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a page");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "refresh.html")]
struct RefreshPage {
    p: Frame,
    to: String,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    p: Frame,
    heading: String,
    text: String,
    fields: Vec<String>,
}

/// An error as a page in the user's language. The page never carries database details.
pub(crate) fn fail(ctx: &Ctx, auth: Option<&Auth>, e: Error) -> Response {
    let l = ctx.lang;
    let (heading, text, fields) = match &e {
        Error::Unauthenticated => return see_other("/login"),
        Error::Forbidden => (
            t(l, "err.forbidden"),
            t(l, "err.forbidden_text"),
            Vec::new(),
        ),
        Error::NotFound => (
            t(l, "err.not_found"),
            t(l, "err.not_found_text"),
            Vec::new(),
        ),
        Error::Throttled { .. } => (t(l, "err.throttled"), t(l, "login.throttled"), Vec::new()),
        Error::Invalid(f) => (
            t(l, "err.invalid"),
            t(l, "err.invalid_text"),
            f.iter()
                .map(|f| format!("{}: {}", f.field, field_message(l, &f.message)))
                .collect(),
        ),
        Error::Conflict(_) => (t(l, "err.conflict"), t(l, "err.conflict_text"), Vec::new()),
        Error::Malformed(_) => (t(l, "err.invalid"), t(l, "err.invalid_text"), Vec::new()),
        Error::Db(err) => {
            tracing::error!(error = %err, "database error");
            (t(l, "err.internal"), t(l, "err.internal_text"), Vec::new())
        }
        Error::Internal(err) => {
            tracing::error!(error = %err, "internal error");
            (t(l, "err.internal"), t(l, "err.internal_text"), Vec::new())
        }
    };
    let page = MessagePage {
        p: Frame::new(ctx, auth, heading.to_string()),
        heading: heading.to_string(),
        text: text.to_string(),
        fields,
    };
    render(e.status(), &page)
}

/// The store's field messages are English; the common ones are shown in the page's language.
fn field_message(l: Lang, m: &str) -> String {
    let key = match m {
        "must not be empty" => "err.empty",
        "must not contain control characters" => "err.control",
        "no such outlet" => "err.no_outlet",
        "must not be negative" => "err.negative",
        "not an e-mail address" => "err.email",
        "a member with this e-mail exists" => "err.email_taken",
        _ if m.starts_with("at least ") && m.ends_with(" characters") => "err.too_short",
        _ if m.starts_with("at most ") => "err.too_long",
        _ if m.starts_with("must be a date") => "err.date",
        _ => return m.to_string(),
    };
    t(l, key).to_string()
}

/// Field errors keyed by form field, in the page's language.
#[derive(Default)]
pub struct Errors(HashMap<String, String>);

impl Errors {
    /// The message for a field, or "".
    pub fn get(&self, k: &str) -> &str {
        self.0.get(k).map(String::as_str).unwrap_or("")
    }
    fn add(&mut self, field: &str, msg: String) {
        self.0.entry(field.to_string()).or_insert(msg);
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Every message, for the summary at the top of a form.
    pub fn all(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.0.values().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

/// A `<select>` or radio option.
pub struct Opt {
    pub value: String,
    pub label: String,
    pub note: String,
    pub selected: bool,
}

pub(crate) fn opt(value: &str, label: &str, selected: bool) -> Opt {
    Opt {
        value: value.to_string(),
        label: label.to_string(),
        note: String::new(),
        selected,
    }
}

/// A TLP badge: the CSS class and the label.
pub struct Badge {
    pub class: &'static str,
    pub label: &'static str,
}

pub(crate) fn badge(tlp: Tlp) -> Badge {
    match tlp {
        Tlp::Clear => Badge {
            class: "tlp-clear",
            label: "TLP:CLEAR",
        },
        Tlp::Green => Badge {
            class: "tlp-green",
            label: "TLP:GREEN",
        },
        Tlp::Amber => Badge {
            class: "tlp-amber",
            label: "TLP:AMBER",
        },
        Tlp::AmberStrict => Badge {
            class: "tlp-amber",
            label: "TLP:AMBER+STRICT",
        },
        Tlp::Red => Badge {
            class: "tlp-red",
            label: "TLP:RED",
        },
    }
}

fn status_label(l: Lang, s: Status) -> &'static str {
    match s {
        Status::Reported => t(l, "status.reported"),
        Status::Verified => t(l, "status.verified"),
        Status::Closed => t(l, "status.closed"),
    }
}

fn tlp_help(l: Lang, tlp: Tlp) -> &'static str {
    match tlp {
        Tlp::Clear => t(l, "tlp.clear"),
        Tlp::Green => t(l, "tlp.green"),
        Tlp::Amber => t(l, "tlp.amber"),
        Tlp::AmberStrict => t(l, "tlp.amber_strict"),
        Tlp::Red => t(l, "tlp.red"),
    }
}

fn local_offset() -> time::UtcOffset {
    time::UtcOffset::from_hms(LOCAL_OFFSET_H, 0, 0).unwrap_or(time::UtcOffset::UTC)
}

/// Unix ms as local date and time (`2024-03-01 15:04`).
fn local_time(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(local_offset());
    t.format(time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]"
    ))
    .unwrap_or_default()
}

/// Unix ms as local date and time, or the date alone at midnight (the form's time was left
/// empty, and "00:00" would claim a precision nobody gave).
fn local_when(ms: i64) -> String {
    let s = local_time(ms);
    match s.strip_suffix(" 00:00") {
        Some(d) => d.to_string(),
        None => s,
    }
}

/// Unix ms as a local date (`2024-03-01`).
fn local_date(ms: i64) -> String {
    local_time(ms).chars().take(10).collect()
}

/// An RFC 3339 time from the store as local time.
fn local_from_rfc(s: &str) -> String {
    parse_time(s)
        .map(local_time)
        .unwrap_or_else(|| s.to_string())
}

/// Reads a form date (`2024-03-01`) as local midnight, in the RFC 3339 form the store takes.
pub(crate) fn form_date(s: &str) -> Option<time::Date> {
    time::Date::parse(
        s.trim(),
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .ok()
}

fn rfc_local(d: time::Date, hour: u8, minute: u8) -> String {
    format!(
        "{:04}-{:02}-{:02}T{hour:02}:{minute:02}:00+{LOCAL_OFFSET_H:02}:00",
        d.year(),
        u8::from(d.month()),
        d.day()
    )
}

/// Incident kinds with their names in the page's language.
pub(crate) async fn kind_names(a: &Atlas, l: Lang) -> Result<Vec<(String, String)>, Error> {
    Ok(a.db
        .kinds()
        .await?
        .into_iter()
        .map(|(code, ru, kk, en)| {
            let name = match l {
                Lang::Ru => ru,
                Lang::Kk => kk,
                Lang::En => en,
            };
            (code, name)
        })
        .collect())
}

fn kind_name<'a>(kinds: &'a [(String, String)], code: &'a str) -> &'a str {
    kinds
        .iter()
        .find(|(c, _)| c == code)
        .map(|(_, n)| n.as_str())
        .unwrap_or(code)
}

// ---------------------------------------------------------------------------------------------
// Login and logout.

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    p: Frame,
    email: String,
    error: String,
}

async fn login_form(ctx: Ctx) -> Response {
    let page = LoginPage {
        p: Frame::new(&ctx, None, t(ctx.lang, "login.title").into()),
        email: String::new(),
        error: String::new(),
    };
    render(StatusCode::OK, &page)
}

/// A login form posted from another site would log the victim into the attacker's account
/// (login CSRF). Current browsers say where a request comes from in `Sec-Fetch-Site`, whatever the
/// referrer policy; older ones send `Origin`, but as `null` under our `no-referrer` policy, which
/// says nothing, so only a named foreign origin is refused. Clients that send neither (curl,
/// scripts) are not browsers a forged form could drive.
fn same_origin(headers: &HeaderMap) -> bool {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = header("sec-fetch-site") {
        return site == "same-origin" || site == "none";
    }
    let origin = match header(header::ORIGIN.as_str()) {
        None | Some("null") => return true,
        Some(o) => o,
    };
    let host = header(header::HOST.as_str()).unwrap_or("");
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or("");
    !host.is_empty() && origin_host == host
}

async fn login(
    State(a): State<Arc<Atlas>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ctx: Ctx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !same_origin(&headers) {
        return fail(&ctx, None, Error::Forbidden);
    }
    let form = Form::parse(&body);
    let email = form
        .get("email")
        .trim()
        .chars()
        .take(500)
        .collect::<String>();
    let l = ctx.lang;
    let (status, error) = match a.login(peer.ip(), &email, form.get("password")).await {
        Ok((secret, _csrf, _actor)) => {
            let mut r = see_other("/");
            a.set_session_cookie(&mut r, &secret);
            return r;
        }
        Err(Error::Unauthenticated) => (StatusCode::UNAUTHORIZED, t(l, "login.failed")),
        Err(Error::Throttled { .. }) => (StatusCode::TOO_MANY_REQUESTS, t(l, "login.throttled")),
        Err(e) => return fail(&ctx, None, e),
    };
    let page = LoginPage {
        p: Frame::new(&ctx, None, t(l, "login.title").into()),
        email,
        error: error.into(),
    };
    render(status, &page)
}

async fn logout(State(a): State<Arc<Atlas>>, f: AuthForm) -> Response {
    if let Err(e) = a.db.logout(&f.auth.secret).await {
        return fail(&f.auth.ctx, Some(&f.auth), e);
    }
    let mut r = see_other("/login");
    a.clear_session_cookie(&mut r);
    r
}

// ---------------------------------------------------------------------------------------------
// The incident list.

pub struct Row {
    pub href: String,
    pub date: String,
    pub date_unknown: bool,
    pub outlet: String,
    pub kind: String,
    pub title: String,
    pub status: &'static str,
    pub tlp: Badge,
}

#[derive(Template)]
#[template(path = "list.html")]
struct ListPage {
    p: Frame,
    kinds: Vec<Opt>,
    statuses: Vec<Opt>,
    tlps: Vec<Opt>,
    outlets: Vec<Opt>,
    q: String,
    from: String,
    to: String,
    rows: Vec<Row>,
    errors: Vec<String>,
    next: Option<String>,
    paged: bool,
    /// Whether any filter is set (the filter box then starts open).
    filtering: bool,
}

async fn list(State(a): State<Arc<Atlas>>, auth: Auth, uri: axum::http::Uri) -> Response {
    let l = auth.ctx.lang;
    let q = Form::parse(uri.query().unwrap_or("").as_bytes());
    let (kinds, outlets) = match (kind_names(&a, l).await, a.db.outlets().await) {
        (Ok(k), Ok(o)) => (k, o),
        (Err(e), _) | (_, Err(e)) => return fail(&auth.ctx, Some(&auth), e),
    };
    let mut errors = Vec::new();
    // Dates in the form are local days; the end day is included.
    let from = q.get("from").trim().to_string();
    let to = q.get("to").trim().to_string();
    let from_rfc = match from.as_str() {
        "" => None,
        s => match form_date(s) {
            Some(d) => Some(rfc_local(d, 0, 0)),
            None => {
                errors.push(format!("{}: {}", t(l, "list.from"), t(l, "err.date")));
                None
            }
        },
    };
    let to_rfc = match to.as_str() {
        "" => None,
        s => match form_date(s).and_then(|d| d.next_day()) {
            Some(d) => Some(rfc_local(d, 0, 0)),
            None => {
                errors.push(format!("{}: {}", t(l, "list.to"), t(l, "err.date")));
                None
            }
        },
    };
    let some = |k: &str| Some(q.get(k).to_string()).filter(|s| !s.is_empty());
    let filter = ListFilter {
        kind: some("kind"),
        status: some("status"),
        tlp: some("tlp"),
        outlet: some("outlet"),
        q: some("q"),
        from: from_rfc,
        to: to_rfc,
        limit: Some(PAGE_ROWS),
        cursor: some("cursor"),
    };
    let (rows, next) = if errors.is_empty() {
        match a.db.incidents(&auth.actor, &filter).await {
            Ok(page) => {
                let rows = page
                    .items
                    .iter()
                    .map(|i| Row {
                        href: format!("/incidents/{}", i.id),
                        date: local_date(i.started_ms),
                        date_unknown: i.date_unknown,
                        outlet: i.outlet.clone(),
                        kind: kind_name(&kinds, &i.kind).to_string(),
                        title: i.title.clone(),
                        status: status_label(l, i.status),
                        tlp: badge(i.tlp),
                    })
                    .collect();
                let next = page.next.map(|c| {
                    let mut pairs: Vec<(String, String)> =
                        q.0.iter()
                            .filter(|(k, v)| k != "cursor" && k != "lang" && !v.is_empty())
                            .cloned()
                            .collect();
                    pairs.push(("cursor".into(), c));
                    format!("/?{}", encode_query(&pairs))
                });
                (rows, next)
            }
            Err(Error::Invalid(f)) => {
                errors.extend(
                    f.iter()
                        .map(|f| format!("{}: {}", f.field, field_message(l, &f.message))),
                );
                (Vec::new(), None)
            }
            Err(e) => return fail(&auth.ctx, Some(&auth), e),
        }
    } else {
        (Vec::new(), None)
    };
    let sel = |k: &str, v: &str| q.get(k) == v;
    let mut kind_opts = vec![opt("", t(l, "list.any"), false)];
    kind_opts.extend(kinds.iter().map(|(c, n)| opt(c, n, sel("kind", c))));
    let mut statuses = vec![opt("", t(l, "list.any"), false)];
    statuses.extend(
        Status::ALL
            .iter()
            .map(|s| opt(s.as_str(), status_label(l, *s), sel("status", s.as_str()))),
    );
    let mut tlps = vec![opt("", t(l, "list.any"), false)];
    tlps.extend(
        Tlp::ALL
            .iter()
            .map(|x| opt(x.as_str(), badge(*x).label, sel("tlp", x.as_str()))),
    );
    let mut outlet_opts = vec![opt("", t(l, "list.any"), false)];
    outlet_opts.extend(
        outlets
            .iter()
            .map(|o| opt(&o.slug, &o.name, sel("outlet", &o.slug))),
    );
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let page = ListPage {
        p: Frame::new(&auth.ctx, Some(&auth), t(l, "list.title").into()),
        kinds: kind_opts,
        statuses,
        tlps,
        outlets: outlet_opts,
        q: q.get("q").to_string(),
        from,
        to,
        rows,
        errors,
        next,
        paged: !q.get("cursor").is_empty(),
        filtering: ["kind", "status", "tlp", "outlet", "q", "from", "to"]
            .iter()
            .any(|k| !q.get(k).is_empty()),
    };
    render(status, &page)
}

// ---------------------------------------------------------------------------------------------
// The guided form.

/// Which questions the guided form asks for a kind of incident.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A social-media account: platform, handle, followers and comments.
    Social,
    /// The site: URL, downtime, requests.
    Website,
    /// Mail: the domain.
    Mail,
    /// A server: the host name or address.
    Server,
    /// Anything else: an optional target of any kind.
    Other,
}

fn shape(kind: &str) -> Shape {
    match kind {
        "bot_followers" | "bot_comments" | "threat_comments" | "mass_complaints"
        | "account_takeover" => Shape::Social,
        "http_flood" | "unreachable" | "defacement" => Shape::Website,
        "phishing" => Shape::Mail,
        "intrusion" => Shape::Server,
        _ => Shape::Other,
    }
}

/// The built-in kinds, each with a plain sentence a journalist would say about it, in the order
/// step 1 offers them: the site, then social accounts, then mail and servers, then the rest.
const BUILTIN_KINDS: &[&str] = &[
    "http_flood",
    "unreachable",
    "mass_complaints",
    "bot_followers",
    "bot_comments",
    "threat_comments",
    "account_takeover",
    "phishing",
    "intrusion",
    "defacement",
    "doxxing",
    "other",
];

const PLATFORMS: &[&str] = &[
    "telegram",
    "instagram",
    "youtube",
    "facebook",
    "tiktok",
    "x",
    "vk",
    "whatsapp",
    "other",
];

/// One big button of step 1.
pub struct KindChoice {
    pub code: String,
    pub say: String,
    pub name: String,
}

#[derive(Template)]
#[template(path = "choose.html")]
struct ChoosePage {
    p: Frame,
    choices: Vec<KindChoice>,
}

#[derive(Template)]
#[template(path = "new.html")]
struct NewPage {
    p: Frame,
    kind: String,
    kind_name: String,
    say: String,
    social: bool,
    website: bool,
    mail: bool,
    server: bool,
    other: bool,
    platforms: Vec<Opt>,
    target_kinds: Vec<Opt>,
    tlps: Vec<Opt>,
    recipients: Vec<Opt>,
    v: Form,
    e: Errors,
}

impl NewPage {
    /// A kept field value.
    fn val(&self, k: &str) -> &str {
        self.v.get(k)
    }
}

fn kind_say(l: Lang, code: &str) -> Option<&'static str> {
    BUILTIN_KINDS
        .contains(&code)
        .then(|| t(l, &format!("say.{code}")))
}

async fn new_form(State(a): State<Arc<Atlas>>, auth: Auth, uri: axum::http::Uri) -> Response {
    if !auth.actor.role.can_write() {
        return fail(&auth.ctx, Some(&auth), Error::Forbidden);
    }
    let l = auth.ctx.lang;
    let q = Form::parse(uri.query().unwrap_or("").as_bytes());
    let kinds = match kind_names(&a, l).await {
        Ok(k) => k,
        Err(e) => return fail(&auth.ctx, Some(&auth), e),
    };
    let kind = q.get("kind");
    if kind.is_empty() || !kinds.iter().any(|(c, _)| c == kind) {
        // The built-in kinds in the order of the list above, then the deployment's own kinds,
        // then "other".
        let rank = |code: &str| match BUILTIN_KINDS.iter().position(|k| *k == code) {
            Some(_) if code == "other" => BUILTIN_KINDS.len() + 1,
            Some(i) => i,
            None => BUILTIN_KINDS.len(),
        };
        let mut ordered: Vec<&(String, String)> = kinds.iter().collect();
        ordered.sort_by_key(|(code, _)| rank(code));
        let page = ChoosePage {
            p: Frame::new(&auth.ctx, Some(&auth), t(l, "new.title").into()),
            choices: ordered
                .into_iter()
                .map(|(code, name)| KindChoice {
                    code: code.clone(),
                    say: kind_say(l, code).unwrap_or(name).to_string(),
                    name: name.clone(),
                })
                .collect(),
        };
        return render(StatusCode::OK, &page);
    }
    let mut v = Form::default();
    v.0.push(("kind".into(), kind.to_string()));
    v.0.push(("tlp".into(), Tlp::AmberStrict.as_str().into()));
    v.0.push(("started_date".into(), local_date(crate::model::now_ms())));
    let platform = match kind {
        "bot_followers" | "bot_comments" => "telegram",
        "mass_complaints" => "instagram",
        _ => "",
    };
    v.0.push(("platform".into(), platform.into()));
    new_page(&a, &auth, &kinds, v, Errors::default(), StatusCode::OK).await
}

async fn new_page(
    a: &Atlas,
    auth: &Auth,
    kinds: &[(String, String)],
    v: Form,
    e: Errors,
    status: StatusCode,
) -> Response {
    let l = auth.ctx.lang;
    let outlets = match a.db.outlets().await {
        Ok(o) => o,
        Err(e) => return fail(&auth.ctx, Some(auth), e),
    };
    let kind = v.get("kind").to_string();
    let sh = shape(&kind);
    let platforms = PLATFORMS
        .iter()
        .map(|p| {
            let label = if *p == "other" {
                t(l, "new.platform_other")
            } else {
                p
            };
            opt(p, label, v.get("platform") == *p)
        })
        .collect();
    let target_kinds = [
        ("", "new.target_none"),
        ("website", "target.website"),
        ("social", "target.social"),
        ("mail", "target.mail"),
        ("server", "target.server"),
    ]
    .iter()
    .map(|(k, key)| opt(k, t(l, key), v.get("target_kind") == *k))
    .collect();
    let chosen_tlp = v.get("tlp");
    let tlps = Tlp::ALL
        .iter()
        .rev()
        .map(|x| Opt {
            value: x.as_str().into(),
            label: badge(*x).label.into(),
            note: tlp_help(l, *x).into(),
            selected: chosen_tlp == x.as_str(),
        })
        .collect();
    let chosen = v.all("recipients");
    let recipients = outlets
        .iter()
        .filter(|o| o.id != auth.actor.outlet_id)
        .map(|o| opt(&o.slug, &o.name, chosen.contains(&o.slug)))
        .collect();
    let page = NewPage {
        p: Frame::new(&auth.ctx, Some(auth), t(l, "new.title").into()),
        kind_name: kind_name(kinds, &kind).to_string(),
        say: kind_say(l, &kind).unwrap_or("").to_string(),
        kind,
        social: sh == Shape::Social,
        website: sh == Shape::Website,
        mail: sh == Shape::Mail,
        server: sh == Shape::Server,
        other: sh == Shape::Other,
        platforms,
        target_kinds,
        tlps,
        recipients,
        v,
        e,
    };
    render(status, &page)
}

/// Reads an optional whole number ≥ 0 from the form.
fn number(f: &Form, k: &str, l: Lang, e: &mut Errors) -> Option<i64> {
    let s = f.get(k).trim().replace([' ', '\u{a0}', '_'], "");
    if s.is_empty() {
        return None;
    }
    match s.parse::<i64>() {
        Ok(n) if n >= 0 => Some(n),
        _ => {
            e.add(k, t(l, "err.number").into());
            None
        }
    }
}

/// Where a store field error is shown on the guided form.
fn form_field(store_field: &str, sh: Shape) -> &'static str {
    let value_field = match sh {
        Shape::Social => "account",
        Shape::Website => "url",
        Shape::Mail | Shape::Server => "host",
        Shape::Other => "target",
    };
    match store_field {
        "title" => "title",
        "description" => "description",
        "kind" => "kind",
        "tlp" => "tlp",
        "started_at" => "started_date",
        "impact.downtime_minutes" => "downtime_minutes",
        "impact.requests" => "requests",
        "impact.followers_added" => "followers_added",
        "impact.comments" => "comments",
        f if f.starts_with("targets[") && f.ends_with(".platform") => "platform",
        f if f.starts_with("targets[") && f.ends_with(".kind") => "target_kind",
        f if f.starts_with("targets[") => value_field,
        f if f.starts_with("recipients") => "recipients",
        _ => "form",
    }
}

async fn create(State(a): State<Arc<Atlas>>, f: AuthForm) -> Response {
    let AuthForm { auth, form } = f;
    if !auth.actor.role.can_write() {
        return fail(&auth.ctx, Some(&auth), Error::Forbidden);
    }
    let l = auth.ctx.lang;
    let kinds = match kind_names(&a, l).await {
        Ok(k) => k,
        Err(e) => return fail(&auth.ctx, Some(&auth), e),
    };
    let kind = form.get("kind").to_string();
    if !kinds.iter().any(|(c, _)| *c == kind) {
        return see_other("/incidents/new");
    }
    let sh = shape(&kind);
    let mut e = Errors::default();

    // What was hit.
    let mut targets = Vec::new();
    let field = |k: &str| form.get(k).trim().to_string();
    match sh {
        Shape::Social => {
            let platform = field("platform");
            let account = field("account");
            if platform.is_empty() {
                e.add("platform", t(l, "err.required").into());
            }
            if account.is_empty() {
                e.add("account", t(l, "err.required").into());
            }
            targets.push(Target {
                kind: "social".into(),
                platform: Some(platform),
                value: account,
            });
        }
        Shape::Website => {
            let url = field("url");
            if url.is_empty() {
                e.add("url", t(l, "err.required").into());
            }
            targets.push(Target {
                kind: "website".into(),
                platform: None,
                value: url,
            });
        }
        Shape::Mail | Shape::Server => {
            let host = field("host");
            if !host.is_empty() {
                targets.push(Target {
                    kind: if sh == Shape::Mail { "mail" } else { "server" }.into(),
                    platform: None,
                    value: host,
                });
            }
        }
        Shape::Other => {
            let tk = field("target_kind");
            let value = field("target");
            if !tk.is_empty() || !value.is_empty() {
                let platform = Some(field("platform")).filter(|p| !p.is_empty() && tk == "social");
                targets.push(Target {
                    kind: tk,
                    platform,
                    value,
                });
            }
        }
    }
    let impact = Impact {
        downtime_minutes: number(&form, "downtime_minutes", l, &mut e),
        requests: number(&form, "requests", l, &mut e),
        followers_added: number(&form, "followers_added", l, &mut e),
        comments: number(&form, "comments", l, &mut e),
    };

    // When. An unknown date is recorded as the day given (or today) with the marker set.
    let date_unknown = !form.get("date_unknown").is_empty();
    let time_s = form.get("started_time").trim();
    let hm = if time_s.is_empty() {
        Some((0, 0))
    } else {
        time::Time::parse(time_s, time::macros::format_description!("[hour]:[minute]"))
            .ok()
            .map(|t| (t.hour(), t.minute()))
    };
    if hm.is_none() {
        e.add("started_time", t(l, "err.time").into());
    }
    let date_s = form.get("started_date").trim();
    let date = if date_s.is_empty() && date_unknown {
        form_date(&local_date(crate::model::now_ms()))
    } else {
        form_date(date_s)
    };
    let started_at = match date {
        Some(d) => rfc_local(d, hm.map_or(0, |x| x.0), hm.map_or(0, |x| x.1)),
        None => {
            e.add("started_date", t(l, "err.date").into());
            String::new()
        }
    };

    let tlp = form.get("tlp").to_string();
    let recipients = form.all("recipients");
    if tlp == Tlp::Red.as_str() && recipients.is_empty() {
        e.add("recipients", t(l, "err.red_needs_recipients").into());
    }
    let mut title = field("title");
    if title.is_empty() {
        // A journalist in a hurry may skip the title: the kind and what was hit make a usable one.
        let kn = kind_name(&kinds, &kind);
        title = match targets.first() {
            Some(tg) if !tg.value.is_empty() => match &tg.platform {
                Some(p) if !p.is_empty() => format!("{kn}: {p} {}", tg.value),
                _ => format!("{kn}: {}", tg.value),
            },
            _ => kn.to_string(),
        };
    }
    if !e.is_empty() {
        return new_page(&a, &auth, &kinds, form, e, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let input = IncidentIn {
        kind,
        title,
        description: form.get("description").to_string(),
        status: None,
        confidence: Some(
            if form.get("confirmed").is_empty() {
                "suspected"
            } else {
                "confirmed"
            }
            .into(),
        ),
        tlp: Some(tlp),
        started_at,
        ended_at: None,
        date_unknown,
        impact,
        targets,
        recipients,
    };
    match a.db.create_incident(&auth.actor, &input).await {
        Ok(i) => see_other(&format!("/incidents/{}", i.id)),
        Err(Error::Invalid(fields)) => {
            for f in fields {
                e.add(form_field(&f.field, sh), field_message(l, &f.message));
            }
            new_page(&a, &auth, &kinds, form, e, StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(err) => fail(&auth.ctx, Some(&auth), err),
    }
}

// ---------------------------------------------------------------------------------------------
// The incident page.

pub struct TargetView {
    pub kind: String,
    pub platform: String,
    pub value: String,
}

pub struct UpdateView {
    pub at: String,
    pub author: String,
    pub body: String,
    pub status: String,
}

pub struct IndicatorRow {
    pub kind: String,
    pub value: String,
    pub count: i64,
    pub first: String,
    pub last: String,
}

pub struct AttachmentRow {
    pub href: String,
    pub name: String,
    pub size: String,
    pub sha: String,
    pub added_by: String,
    pub added_at: String,
}

#[derive(Template)]
#[template(path = "incident.html")]
struct IncidentPage {
    p: Frame,
    id: String,
    title: String,
    kind: String,
    outlet: String,
    status: &'static str,
    confidence: &'static str,
    tlp: Badge,
    tlp_note: &'static str,
    started: String,
    date_unknown: bool,
    ended: String,
    description: String,
    created_by: String,
    created_at: String,
    source: String,
    recipients: String,
    targets: Vec<TargetView>,
    impact: Vec<(&'static str, String)>,
    updates: Vec<UpdateView>,
    indicators: Vec<IndicatorRow>,
    /// How many indicators the incident has; the page shows the most seen first, at most
    /// [`MAX_INDICATOR_ROWS`].
    indicators_total: usize,
    attachments: Vec<AttachmentRow>,
    /// The outlet's publications in the 72 h before the start, the closest first.
    preceding: Vec<provoke::PrecedingRow>,
    owner: bool,
    statuses: Vec<Opt>,
    indicator_kinds: Vec<Opt>,
    max_mb: usize,
    /// Kept values and errors of whichever form was sent.
    v: Form,
    e: Errors,
}

impl IncidentPage {
    fn val(&self, k: &str) -> &str {
        self.v.get(k)
    }
}

async fn show(State(a): State<Arc<Atlas>>, auth: Auth, Path(id): Path<String>) -> Response {
    incident_page(
        &a,
        &auth,
        &id,
        Form::default(),
        Errors::default(),
        StatusCode::OK,
    )
    .await
}

fn size_label(n: i64) -> String {
    if n >= 1024 * 1024 {
        format!("{:.1} MB", n as f64 / (1024.0 * 1024.0))
    } else if n >= 1024 {
        format!("{:.1} KB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

async fn incident_page(
    a: &Atlas,
    auth: &Auth,
    id: &str,
    v: Form,
    e: Errors,
    status: StatusCode,
) -> Response {
    let l = auth.ctx.lang;
    let c = &auth.actor;
    let loaded = async {
        let i = a.db.incident(c, id).await?;
        let s = a.db.incident_sightings(c, id).await?;
        let att = a.db.attachments(c, id).await?;
        let kinds = kind_names(a, l).await?;
        let preceding = provoke::preceding_rows(a, c, id).await;
        Ok::<_, Error>((i, s, att, kinds, preceding))
    }
    .await;
    let (i, sightings, atts, kinds, preceding) = match loaded {
        Ok(x) => x,
        Err(err) => return fail(&auth.ctx, Some(auth), err),
    };
    let owner = i.outlet_id == c.outlet_id && c.role.can_write();
    let mut impact = Vec::new();
    let figures = [
        ("impact.downtime_minutes", i.impact.downtime_minutes),
        ("impact.requests", i.impact.requests),
        ("impact.followers_added", i.impact.followers_added),
        ("impact.comments", i.impact.comments),
    ];
    for (key, n) in figures {
        if let Some(n) = n {
            impact.push((t(l, key), n.to_string()));
        }
    }
    let target_label = |k: &str| match k {
        "website" => t(l, "target.website"),
        "social" => t(l, "target.social"),
        "mail" => t(l, "target.mail"),
        "server" => t(l, "target.server"),
        _ => "",
    };
    let page = IncidentPage {
        p: Frame::new(&auth.ctx, Some(auth), i.title.clone()),
        id: i.id.clone(),
        title: i.title.clone(),
        kind: kind_name(&kinds, &i.kind).to_string(),
        outlet: i.outlet.clone(),
        status: status_label(l, i.status),
        confidence: match i.confidence {
            crate::model::Confidence::Suspected => t(l, "confidence.suspected"),
            crate::model::Confidence::Confirmed => t(l, "confidence.confirmed"),
        },
        tlp: badge(i.tlp),
        tlp_note: tlp_help(l, i.tlp),
        started: local_when(i.started_ms),
        date_unknown: i.date_unknown,
        ended: i
            .ended_at
            .as_deref()
            .map(local_from_rfc)
            .unwrap_or_default(),
        description: i.description.clone(),
        created_by: i.created_by.trim_start_matches("user:").to_string(),
        created_at: local_from_rfc(&i.created_at),
        source: i.source.clone(),
        recipients: i.recipients.join(", "),
        targets: i
            .targets
            .iter()
            .map(|tg| TargetView {
                kind: target_label(&tg.kind).to_string(),
                platform: tg.platform.clone().unwrap_or_default(),
                value: tg.value.clone(),
            })
            .collect(),
        impact,
        updates: i
            .updates
            .iter()
            .map(|u| UpdateView {
                at: local_from_rfc(&u.at),
                author: u.author.trim_start_matches("user:").to_string(),
                body: u.body.clone(),
                status: u
                    .new_status
                    .as_deref()
                    .and_then(Status::parse)
                    .map(|s| status_label(l, s))
                    .unwrap_or("")
                    .to_string(),
            })
            .collect(),
        indicators_total: sightings.len(),
        indicators: sightings
            .iter()
            .take(MAX_INDICATOR_ROWS)
            .map(|s| IndicatorRow {
                kind: s.kind.clone(),
                value: s.value.clone(),
                count: s.count,
                first: local_from_rfc(&s.first_seen),
                last: local_from_rfc(&s.last_seen),
            })
            .collect(),
        attachments: atts
            .iter()
            .map(|x| AttachmentRow {
                href: format!("/incidents/{}/attachments/{}", i.id, x.sha256),
                name: x.name.clone(),
                size: size_label(x.size),
                sha: x.sha256.clone(),
                added_by: x.added_by.trim_start_matches("user:").to_string(),
                added_at: local_from_rfc(&x.added_at),
            })
            .collect(),
        preceding,
        owner,
        statuses: {
            let mut s = vec![opt("", t(l, "incident.status_same"), false)];
            s.extend(Status::ALL.iter().map(|x| {
                opt(
                    x.as_str(),
                    status_label(l, *x),
                    v.get("new_status") == x.as_str(),
                )
            }));
            s
        },
        indicator_kinds: IndicatorKind::ALL
            .iter()
            .map(|k| opt(k.as_str(), k.as_str(), v.get("ind_kind") == k.as_str()))
            .collect(),
        max_mb: MAX_ATTACHMENT / (1024 * 1024),
        v,
        e,
    };
    render(status, &page)
}

async fn add_update(State(a): State<Arc<Atlas>>, Path(id): Path<String>, f: AuthForm) -> Response {
    let AuthForm { auth, form } = f;
    let l = auth.ctx.lang;
    let status = Some(form.get("new_status")).filter(|s| !s.is_empty());
    match a
        .db
        .add_update(&auth.actor, &id, form.get("body"), status)
        .await
    {
        Ok(()) => see_other(&format!("/incidents/{id}#timeline")),
        Err(Error::Invalid(fields)) => {
            let mut e = Errors::default();
            for f in fields {
                let k = if f.field == "new_status" {
                    "new_status"
                } else {
                    "body"
                };
                e.add(k, field_message(l, &f.message));
            }
            incident_page(&a, &auth, &id, form, e, StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(err) => fail(&auth.ctx, Some(&auth), err),
    }
}

async fn add_indicator(
    State(a): State<Arc<Atlas>>,
    Path(id): Path<String>,
    f: AuthForm,
) -> Response {
    let AuthForm { auth, form } = f;
    let l = auth.ctx.lang;
    let mut e = Errors::default();
    let count = number(&form, "ind_count", l, &mut e);
    if count == Some(0) {
        e.add("ind_count", t(l, "err.number").into());
    }
    if !e.is_empty() {
        return incident_page(&a, &auth, &id, form, e, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let s = SightingIn {
        kind: form.get("ind_kind").to_string(),
        value: form.get("ind_value").to_string(),
        count,
        first_seen: None,
        last_seen: None,
    };
    match a.db.add_sightings(&auth.actor, &id, &[s]).await {
        Ok(_) => see_other(&format!("/incidents/{id}#indicators")),
        Err(Error::Invalid(fields)) => {
            for f in fields {
                let k = if f.field.ends_with(".kind") {
                    "ind_kind"
                } else if f.field.ends_with(".count") {
                    "ind_count"
                } else {
                    "ind_value"
                };
                e.add(k, field_message(l, &f.message));
            }
            incident_page(&a, &auth, &id, form, e, StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(err) => fail(&auth.ctx, Some(&auth), err),
    }
}

/// Reads one multipart field into memory, refusing more than `max` bytes.
async fn field_bytes(
    field: &mut axum::extract::multipart::Field<'_>,
    max: usize,
) -> Result<Option<Vec<u8>>, Response> {
    let mut data = Vec::new();
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => {
                if data.len() + chunk.len() > max {
                    return Ok(None);
                }
                data.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(Some(data)),
            Err(e) => return Err(e.into_response()),
        }
    }
}

/// The upload form. It is multipart, so the CSRF token cannot be checked by [`AuthForm`]: the
/// form puts it first, and it is checked before a single byte of the file is read.
async fn upload(
    State(a): State<Arc<Atlas>>,
    auth: Auth,
    Path(id): Path<String>,
    mut mp: Multipart,
) -> Response {
    let l = auth.ctx.lang;
    let forbidden = |auth: &Auth| fail(&auth.ctx, Some(auth), Error::Forbidden);
    let mut csrf_ok = false;
    let mut file: Option<(String, String, Vec<u8>)> = None;
    let mut fields = 0;
    loop {
        let mut field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return e.into_response(),
        };
        fields += 1;
        if fields > 10 {
            break;
        }
        match field.name().unwrap_or("") {
            "csrf" => {
                let sent = match field_bytes(&mut field, 256).await {
                    Ok(b) => b.unwrap_or_default(),
                    Err(r) => return r,
                };
                if !constant_time_eq(&sent, auth.csrf.as_bytes()) {
                    return forbidden(&auth);
                }
                csrf_ok = true;
            }
            "file" if csrf_ok => {
                let name = field
                    .file_name()
                    .map(|n| n.rsplit(['/', '\\']).next().unwrap_or(n).to_string())
                    .filter(|n| !n.trim().is_empty())
                    .unwrap_or_else(|| "attachment".into());
                let media = field
                    .content_type()
                    .unwrap_or("application/octet-stream")
                    .to_string();
                match field_bytes(&mut field, MAX_ATTACHMENT).await {
                    Ok(Some(data)) => file = Some((name, media, data)),
                    Ok(None) => {
                        let mut e = Errors::default();
                        e.add("file", t(l, "err.too_big").into());
                        return incident_page(
                            &a,
                            &auth,
                            &id,
                            Form::default(),
                            e,
                            StatusCode::PAYLOAD_TOO_LARGE,
                        )
                        .await;
                    }
                    Err(r) => return r,
                }
            }
            _ if !csrf_ok => return forbidden(&auth),
            _ => {}
        }
    }
    if !csrf_ok {
        return forbidden(&auth);
    }
    let Some((name, media, data)) = file.filter(|(_, _, d)| !d.is_empty()) else {
        let mut e = Errors::default();
        e.add("file", t(l, "err.no_file").into());
        return incident_page(
            &a,
            &auth,
            &id,
            Form::default(),
            e,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    };
    let name: String = name.chars().filter(|c| !c.is_control()).take(200).collect();
    match a
        .db
        .add_attachment(&auth.actor, &id, &name, &media, &data)
        .await
    {
        Ok(_) => see_other(&format!("/incidents/{id}#attachments")),
        Err(Error::Invalid(fields)) => {
            let mut e = Errors::default();
            for f in fields {
                e.add(
                    "file",
                    format!("{}: {}", f.field, field_message(l, &f.message)),
                );
            }
            incident_page(
                &a,
                &auth,
                &id,
                Form::default(),
                e,
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
        Err(err) => fail(&auth.ctx, Some(&auth), err),
    }
}

async fn download(
    State(a): State<Arc<Atlas>>,
    auth: Auth,
    Path((id, sha)): Path<(String, String)>,
) -> Response {
    match a.db.read_attachment(&auth.actor, &id, &sha).await {
        Ok((meta, data)) => attachment_response(&meta, data),
        Err(e) => fail(&auth.ctx, Some(&auth), e),
    }
}

// ---------------------------------------------------------------------------------------------
// Settings and members.

pub struct MemberRow {
    pub email: String,
    pub name: String,
    pub role: String,
    pub disabled: bool,
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    p: Frame,
    outlet: String,
    tlps: Vec<Opt>,
    peers: Vec<Opt>,
    members: Vec<MemberRow>,
    roles: Vec<Opt>,
    saved: bool,
    v: Form,
    e: Errors,
}

impl SettingsPage {
    fn val(&self, k: &str) -> &str {
        self.v.get(k)
    }
}

fn role_label(l: Lang, r: Role) -> &'static str {
    match r {
        Role::Viewer => t(l, "role.viewer"),
        Role::Editor => t(l, "role.editor"),
        Role::Admin => t(l, "role.admin"),
        Role::Ingest => t(l, "role.ingest"),
    }
}

async fn settings(State(a): State<Arc<Atlas>>, auth: Auth, uri: axum::http::Uri) -> Response {
    let saved = Form::parse(uri.query().unwrap_or("").as_bytes()).get("saved") == "1";
    settings_page(
        &a,
        &auth,
        Form::default(),
        Errors::default(),
        saved,
        StatusCode::OK,
    )
    .await
}

async fn settings_page(
    a: &Atlas,
    auth: &Auth,
    v: Form,
    e: Errors,
    saved: bool,
    status: StatusCode,
) -> Response {
    let l = auth.ctx.lang;
    let c = &auth.actor;
    if c.role != Role::Admin {
        return fail(&auth.ctx, Some(auth), Error::Forbidden);
    }
    let loaded = async {
        let o = a.db.outlet(c.outlet_id).await?;
        let ntk = a.db.need_to_know(c.outlet_id).await?;
        let all = a.db.outlets().await?;
        let members = a.db.members(c).await?;
        Ok::<_, Error>((o, ntk, all, members))
    }
    .await;
    let (o, ntk, all, members) = match loaded {
        Ok(x) => x,
        Err(err) => return fail(&auth.ctx, Some(auth), err),
    };
    let page = SettingsPage {
        p: Frame::new(&auth.ctx, Some(auth), t(l, "settings.title").into()),
        outlet: o.name.clone(),
        tlps: Tlp::ALL
            .iter()
            .rev()
            .map(|x| Opt {
                value: x.as_str().into(),
                label: badge(*x).label.into(),
                note: tlp_help(l, *x).into(),
                selected: *x == o.auto_tlp,
            })
            .collect(),
        peers: all
            .iter()
            .filter(|p| p.id != c.outlet_id)
            .map(|p| opt(&p.slug, &p.name, ntk.contains(&p.slug)))
            .collect(),
        members: members
            .iter()
            .map(|m| MemberRow {
                email: m.email.clone(),
                name: m.name.clone(),
                role: role_label(l, m.role).into(),
                disabled: m.disabled,
            })
            .collect(),
        roles: [Role::Viewer, Role::Editor, Role::Admin]
            .iter()
            .map(|r| {
                let chosen = match v.get("role") {
                    "" => *r == Role::Editor,
                    s => s == r.as_str(),
                };
                opt(r.as_str(), role_label(l, *r), chosen)
            })
            .collect(),
        saved,
        v,
        e,
    };
    render(status, &page)
}

async fn save_settings(State(a): State<Arc<Atlas>>, f: AuthForm) -> Response {
    let AuthForm { auth, form } = f;
    let l = auth.ctx.lang;
    if auth.actor.role != Role::Admin {
        return fail(&auth.ctx, Some(&auth), Error::Forbidden);
    }
    let Some(tlp) = Tlp::parse(form.get("auto_tlp")) else {
        let mut e = Errors::default();
        e.add("auto_tlp", t(l, "err.choose").into());
        return settings_page(&a, &auth, form, e, false, StatusCode::UNPROCESSABLE_ENTITY).await;
    };
    match a
        .db
        .set_sharing(&auth.actor, tlp, &form.all("need_to_know"))
        .await
    {
        Ok(()) => see_other("/settings?saved=1"),
        Err(Error::Invalid(fields)) => {
            let mut e = Errors::default();
            for f in fields {
                e.add("need_to_know", field_message(l, &f.message));
            }
            settings_page(&a, &auth, form, e, false, StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(err) => fail(&auth.ctx, Some(&auth), err),
    }
}

async fn add_member(State(a): State<Arc<Atlas>>, f: AuthForm) -> Response {
    let AuthForm { auth, form } = f;
    let l = auth.ctx.lang;
    if auth.actor.role != Role::Admin {
        return fail(&auth.ctx, Some(&auth), Error::Forbidden);
    }
    let mut e = Errors::default();
    let role = Role::parse(form.get("role")).filter(|r| *r != Role::Ingest);
    if role.is_none() {
        e.add("role", t(l, "err.choose").into());
    }
    let result = match role {
        Some(role) if e.is_empty() => {
            a.db.create_user(
                Some(&auth.actor),
                auth.actor.outlet_id,
                form.get("email"),
                form.get("name"),
                form.get("password"),
                role,
            )
            .await
        }
        _ => Err(Error::Invalid(Vec::<FieldError>::new())),
    };
    match result {
        Ok(_) => see_other("/settings?saved=1#members"),
        Err(Error::Invalid(fields)) => {
            for f in fields {
                e.add(&f.field, field_message(l, &f.message));
            }
            // The password is never sent back to the browser.
            let kept = Form(
                form.0
                    .into_iter()
                    .filter(|(k, _)| k != "password" && k != "csrf")
                    .collect(),
            );
            settings_page(&a, &auth, kept, e, false, StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(Error::Conflict(_)) => {
            e.add("email", t(l, "err.email_taken").into());
            let kept = Form(
                form.0
                    .into_iter()
                    .filter(|(k, _)| k != "password" && k != "csrf")
                    .collect(),
            );
            settings_page(&a, &auth, kept, e, false, StatusCode::CONFLICT).await
        }
        Err(err) => fail(&auth.ctx, Some(&auth), err),
    }
}

// ---------------------------------------------------------------------------------------------

/// Unknown routes: a 404 page in the current language.
async fn not_found(ctx: Ctx) -> Response {
    let l = ctx.lang;
    let page = MessagePage {
        p: Frame::new(&ctx, None, t(l, "err.not_found").into()),
        heading: t(l, "err.not_found").into(),
        text: t(l, "err.not_found_text").into(),
        fields: Vec::new(),
    };
    render(StatusCode::NOT_FOUND, &page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_kind_has_a_sentence_and_a_shape() {
        for k in BUILTIN_KINDS {
            for l in Lang::ALL {
                assert!(
                    kind_say(*l, k).is_some_and(|s| !s.starts_with("say.")),
                    "{k}"
                );
            }
        }
        assert!(shape("bot_followers") == Shape::Social);
        assert!(shape("http_flood") == Shape::Website);
        assert!(shape("a_kind_of_this_deployment") == Shape::Other);
    }

    #[test]
    fn form_keeps_repeated_keys_and_decodes() {
        let f = Form::parse(b"recipients=a&recipients=b&title=%3Cb%3E+x&csrf=");
        assert_eq!(f.all("recipients"), vec!["a", "b"]);
        assert_eq!(f.get("title"), "<b> x");
        assert_eq!(f.get("missing"), "");
        assert!(f.all("csrf").is_empty());
    }

    #[test]
    fn local_times_are_utc_plus_five() {
        let ms = parse_time("2024-03-01T19:30:00Z").unwrap();
        assert_eq!(local_time(ms), "2024-03-02 00:30");
        let d = form_date("2024-03-02").unwrap();
        assert_eq!(parse_time(&rfc_local(d, 0, 30)), Some(ms));
    }

    #[test]
    fn login_origin_must_match_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("atlas.example:8090"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://atlas.example:8090"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(same_origin(&h), "says nothing: allowed");
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h));
    }
}
