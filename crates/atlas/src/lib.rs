//! Atlas: the shared attack registry of a task force of outlets.
//!
//! Each outlet records the attacks on its site, accounts, mail and people; shields push their
//! attack episodes here; outlets share what they choose with the others under TLP 2.0. One
//! service, one database (SQLite by default, PostgreSQL when a task force outgrows one machine).
//!
//! What this crate must never do: let one outlet read another outlet's data that TLP does not
//! share with it, by any endpoint (the rule lives in [`store::VISIBLE`]); keep a password, session
//! id or token in clear; make a shield wait (the ingest endpoint is one short transaction).

pub mod accounts;
pub mod api;
pub mod backup;
pub mod campaigns;
pub mod db;
pub mod error;
pub mod evidence;
pub mod feeds;
pub mod i18n;
pub mod map;
pub mod model;
pub mod openapi;
pub mod provoke;
pub mod provoke_api;
pub mod stix;
pub mod stix_import;
pub mod store;
pub mod taxii;
pub mod web;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use qalqan_limits::{KeyHasher, RateSketch};

pub use accounts::Actor;
pub use db::{Backend, Db};
pub use error::Error;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "qalqan_session";

/// Failed logins allowed per address in the throttle window.
const MAX_FAILS_PER_ADDRESS: f64 = 20.0;
/// Failed logins allowed per account in the throttle window.
const MAX_FAILS_PER_ACCOUNT: f64 = 8.0;
/// The throttle window.
const THROTTLE_WINDOW_MS: u64 = 15 * 60 * 1000;

/// The running service: the database and what the handlers share.
pub struct Atlas {
    pub db: Db,
    /// Failed logins per address and per account, in fixed memory (a count-min sketch), so a
    /// password-guessing flood cannot grow the process.
    fails: RateSketch,
    hasher: KeyHasher,
    /// Send cookies with `Secure` (on unless the service listens on loopback only).
    pub secure_cookies: bool,
    /// The timestamping authority for evidence packages, if one is configured.
    pub tsa: Option<evidence::tsa::Tsa>,
}

impl Atlas {
    pub fn new(db: Db, secure_cookies: bool) -> Atlas {
        Atlas {
            db,
            fails: RateSketch::new(THROTTLE_WINDOW_MS, 4, 1 << 14),
            hasher: KeyHasher::new(),
            secure_cookies,
            tsa: None,
        }
    }

    /// Checks a password, with throttling per address and per account. Returns the session
    /// secret, the CSRF token and the member.
    pub async fn login(
        &self,
        ip: IpAddr,
        email: &str,
        password: &str,
    ) -> Result<(String, String, Actor), Error> {
        let now = qalqan_limits::now_ms();
        let ip_key = self.hasher.hash_ip(ip, 1);
        let email_key = self
            .hasher
            .hash_bytes(email.trim().to_lowercase().as_bytes(), 2);
        if self.fails.estimate(ip_key, now) >= MAX_FAILS_PER_ADDRESS
            || self.fails.estimate(email_key, now) >= MAX_FAILS_PER_ACCOUNT
        {
            // Debug only: a password-guessing flood would otherwise write one line per attempt.
            tracing::debug!(%ip, "login throttled");
            return Err(Error::Throttled {
                retry_after_s: THROTTLE_WINDOW_MS / 1000,
            });
        }
        match self.db.login(email, password).await {
            Ok(ok) => Ok(ok),
            Err(Error::Unauthenticated) => {
                self.fails.observe(ip_key, now);
                self.fails.observe(email_key, now);
                Err(Error::Unauthenticated)
            }
            Err(e) => Err(e),
        }
    }

    /// Adds the session cookie to a response.
    pub fn set_session_cookie(&self, r: &mut Response, secret: &str) {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        let v = format!(
            "{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            accounts::SESSION_MS / 1000
        );
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }

    /// Removes the session cookie.
    pub fn clear_session_cookie(&self, r: &mut Response) {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        let v = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}");
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
}

/// Headers every answer carries. The dashboard runs no script at all, so the policy forbids it.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// The whole service as a router: the API under `/api/v1`, the dashboard at `/`.
pub fn app(atlas: Arc<Atlas>) -> Router {
    Router::new()
        .nest("/api/v1", api::router())
        .merge(taxii::router())
        .merge(web::router())
        .layer(axum::middleware::map_response(security_headers))
        .with_state(atlas)
}

/// Opens the database, applies migrations and serves until Ctrl-C or SIGTERM.
pub async fn serve(listen: SocketAddr, database: &str) -> anyhow::Result<()> {
    serve_with(listen, database, None).await
}

/// [`serve`], with a timestamping authority for evidence packages; its queue of unanswered
/// requests is retried in the background.
pub async fn serve_with(
    listen: SocketAddr,
    database: &str,
    tsa: Option<evidence::tsa::Tsa>,
) -> anyhow::Result<()> {
    serve_full(listen, database, tsa, feeds::PollConfig::default()).await
}

/// [`serve_with`], with the background poller of the outlets' RSS/Atom feeds set up.
pub async fn serve_full(
    listen: SocketAddr,
    database: &str,
    tsa: Option<evidence::tsa::Tsa>,
    feed_poll: feeds::PollConfig,
) -> anyhow::Result<()> {
    let db = Db::connect(database).await?;
    tokio::spawn(feeds::poll_loop(db.clone(), feed_poll));
    // The map's geo tables, loaded in the background so the first ingest need not wait.
    map::preload();
    let mut atlas = Atlas::new(db, !listen.ip().is_loopback());
    if let Some(t) = &tsa {
        evidence::tsa::check_url(&t.url).map_err(|e| anyhow::anyhow!("--tsa: {e}"))?;
        tokio::spawn(evidence::tsa::retry_loop(t.clone()));
    }
    atlas.tsa = tsa;
    let atlas = Arc::new(atlas);
    tokio::spawn(campaigns::run_periodically(
        atlas.db.clone(),
        campaigns::Params::default(),
    ));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {listen}: {e}"))?;
    tracing::info!(%listen, "atlas listening");
    axum::serve(
        listener,
        app(atlas.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await?;
    atlas.db.close().await;
    Ok(())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
