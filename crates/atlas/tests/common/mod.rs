//! Helpers shared by the atlas's integration tests: a fresh database of either backend, and a
//! small HTTP client that drives the real router (`qalqan_atlas::app`) with `tower::oneshot`.
//!
//! PostgreSQL: the URL comes from `QALQAN_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Each test makes its own database
//! (`atlas_t_<random>`) and drops it when done. When the server is not reachable the test prints
//! `skipped: PostgreSQL not reachable` and passes, unless `QALQAN_TEST_POSTGRES` was set
//! explicitly (as `scripts/test.sh` and CI do): then an unreachable server is a failure, so CI
//! can never pass by skipping.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use qalqan_atlas::accounts::Actor;
use qalqan_atlas::model::Role;
use qalqan_atlas::{Atlas, Db};
use serde_json::Value;
use sqlx::Connection;
use tower::ServiceExt;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The PostgreSQL server's URL, or `None` (after printing why) when the test should skip.
pub async fn pg_server() -> Option<String> {
    let (url, explicit) = match std::env::var("QALQAN_TEST_POSTGRES") {
        Ok(u) if !u.is_empty() => (u, true),
        _ => (DEFAULT_PG.to_string(), false),
    };
    sqlx::any::install_default_drivers();
    let attempt =
        tokio::time::timeout(Duration::from_secs(5), sqlx::AnyConnection::connect(&url)).await;
    match attempt {
        Ok(Ok(c)) => {
            let _ = c.close().await;
            Some(url)
        }
        Ok(Err(e)) if !explicit => {
            println!("skipped: PostgreSQL not reachable at {url}: {e}");
            None
        }
        Err(_) if !explicit => {
            println!("skipped: PostgreSQL not reachable at {url}: timeout");
            None
        }
        Ok(Err(e)) => panic!("QALQAN_TEST_POSTGRES={url} is set but not reachable: {e}"),
        Err(_) => panic!("QALQAN_TEST_POSTGRES={url} is set but not reachable: timeout"),
    }
}

fn random_suffix() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Replaces the database name (the path) of a PostgreSQL URL.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[after_scheme..]
        .find('/')
        .map(|i| after_scheme + i)
        .unwrap_or(base.len());
    let mut u = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        u.push('?');
        u.push_str(q);
    }
    u
}

/// A fresh, empty database. SQLite: a file in a temporary directory. PostgreSQL: a database of
/// its own on the test server, dropped (with its connections) when this value is dropped.
pub struct TestDb {
    pub kind: Kind,
    pub url: String,
    /// `(server URL, database name)` for PostgreSQL.
    pg: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// `None` when PostgreSQL was asked for and is not reachable (the skip was printed).
    pub async fn new(kind: Kind) -> Option<TestDb> {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path: PathBuf = dir.path().join("atlas.db");
                Some(TestDb {
                    kind,
                    url: format!("sqlite://{}", path.display()),
                    pg: None,
                    _dir: Some(dir),
                })
            }
            Kind::Postgres => {
                let server = pg_server().await?;
                let name = format!("atlas_t_{}", random_suffix());
                let mut c = sqlx::AnyConnection::connect(&server)
                    .await
                    .expect("connect to PostgreSQL");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut c)
                    .await
                    .expect("create test database");
                // These databases live for one test and never need to survive a power cut:
                // commits need not wait for the disk (the crash test uses a database of its own
                // with the server's defaults).
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "ALTER DATABASE {name} SET synchronous_commit = off"
                )))
                .execute(&mut c)
                .await
                .expect("configure test database");
                let _ = c.close().await;
                Some(TestDb {
                    kind,
                    url: with_database(&server, &name),
                    pg: Some((server, name)),
                    _dir: None,
                })
            }
        }
    }

    /// Opens the store (migrations applied).
    pub async fn connect(&self) -> Db {
        Db::connect(&self.url).await.expect("connect and migrate")
    }

    /// The SQLite file's path (SQLite only).
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.url.strip_prefix("sqlite://").map(PathBuf::from)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((server, name)) = self.pg.take() else {
            return;
        };
        // Drop runs outside any async context we can rely on, so the database is removed from
        // a thread with its own small runtime. FORCE ends connections a failed test left open.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut c) = sqlx::AnyConnection::connect(&server).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

/// Runs one async "story" against SQLite and PostgreSQL: `both_backends!(name => story_fn, …)` makes
/// `mod name { sqlite, postgres }` test functions calling `story_fn(Kind)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident => $story:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$story($crate::common::Kind::Sqlite).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$story($crate::common::Kind::Postgres).await;
                }
            }
        )+
    };
}

/// An actor for direct store calls (the API builds the same from a token or session).
pub fn actor(outlet_id: i64, role: Role, label: &str) -> Actor {
    Actor {
        outlet_id,
        role,
        label: label.to_string(),
        user_id: None,
    }
}

/// The peer address requests appear to come from (the login throttle keys on it).
pub const PEER: &str = "192.0.2.10:40000";

/// The real router with its state, called in-process.
#[derive(Clone)]
pub struct Client {
    pub app: Router,
    pub atlas: Arc<Atlas>,
}

/// One answer: status, headers and the body (as JSON when it parses).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub bytes: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|e| {
            panic!(
                "answer {} is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.bytes)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How a request authenticates.
#[derive(Clone, Debug)]
pub enum Auth {
    None,
    Bearer(String),
    /// Session cookie and, if `Some`, the CSRF header.
    Session(String, Option<String>),
}

impl Client {
    pub fn new(db: Db) -> Client {
        let atlas = Arc::new(Atlas::new(db, false));
        Client {
            app: qalqan_atlas::app(atlas.clone()),
            atlas,
        }
    }

    pub fn db(&self) -> &Db {
        &self.atlas.db
    }

    /// Sends one request through the whole router (middleware included).
    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        auth: &Auth,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        self.send_from(method, uri, auth, content_type, body, PEER)
            .await
    }

    pub async fn send_from(
        &self,
        method: Method,
        uri: &str,
        auth: &Auth,
        content_type: Option<&str>,
        body: Vec<u8>,
        peer: &str,
    ) -> Answer {
        let mut b = Request::builder().method(method).uri(uri);
        match auth {
            Auth::None => {}
            Auth::Bearer(t) => b = b.header("authorization", format!("Bearer {t}")),
            Auth::Session(s, csrf) => {
                b = b.header("cookie", format!("{}={s}", qalqan_atlas::SESSION_COOKIE));
                if let Some(c) = csrf {
                    b = b.header("x-csrf-token", c);
                }
            }
        }
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        let mut req = b.body(Body::from(body)).expect("request");
        let peer: SocketAddr = peer.parse().expect("peer address");
        req.extensions_mut().insert(ConnectInfo(peer));
        let resp = self
            .app
            .clone()
            .oneshot(req)
            .await
            .expect("router is infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        Answer {
            status,
            headers,
            bytes,
        }
    }

    pub async fn get(&self, uri: &str, auth: &Auth) -> Answer {
        self.send(Method::GET, uri, auth, None, Vec::new()).await
    }

    pub async fn json(&self, method: Method, uri: &str, auth: &Auth, body: &Value) -> Answer {
        self.send(
            method,
            uri,
            auth,
            Some("application/json"),
            serde_json::to_vec(body).expect("json"),
        )
        .await
    }

    /// Logs in; returns (session secret, CSRF token).
    pub async fn login(&self, email: &str, password: &str) -> Result<(String, String), Answer> {
        let a = self
            .json(
                Method::POST,
                "/api/v1/session",
                &Auth::None,
                &serde_json::json!({"email": email, "password": password}),
            )
            .await;
        if a.status != StatusCode::OK {
            return Err(a);
        }
        let cookie = a
            .headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                v.strip_prefix(&format!("{}=", qalqan_atlas::SESSION_COOKIE))
                    .map(|rest| rest.split(';').next().unwrap_or("").to_string())
            })
            .expect("session cookie");
        let csrf = a.json()["csrf_token"]
            .as_str()
            .expect("csrf token")
            .to_string();
        Ok((cookie, csrf))
    }
}

/// Percent-encodes a query value (UTF-8 bytes; unreserved characters kept).
pub fn enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}
