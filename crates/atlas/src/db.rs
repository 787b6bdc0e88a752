//! The database connection: SQLite (default, one file) or PostgreSQL, chosen by URL scheme.
//!
//! Both backends sit behind sqlx's `Any` driver, so every query is written once with `$1`
//! placeholders (SQLite reads `$NNN` as a positional parameter). Each backend has its own
//! migrations folder, because DDL differs; the tables and columns are the same.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};
use tokio::sync::Mutex;

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The pool and what the store must know about its backend. Clones share the pool and the
/// SQLite writer lock.
#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    /// SQLite allows one writer: taking this before a write transaction avoids "database is
    /// locked" errors when a deferred transaction tries to upgrade its lock. PostgreSQL needs none.
    write_lock: Option<Arc<Mutex<()>>>,
}

/// Held while a write transaction runs on SQLite.
pub struct WriteGuard<'a>(#[allow(dead_code)] Option<tokio::sync::MutexGuard<'a, ()>>);

impl Db {
    /// Connects, creating the SQLite file if needed, and applies pending migrations.
    pub async fn connect(url: &str) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            bail!("unsupported database URL {url:?}: use sqlite://PATH or postgres://USER@HOST/DB");
        };
        let pool = match backend {
            Backend::Sqlite => {
                // `mode=rwc` creates the file; the URL may already carry options.
                let url = if url.contains('?') {
                    url.to_string()
                } else {
                    format!("{url}?mode=rwc")
                };
                let opts = AnyConnectOptions::from_str(&url)
                    .with_context(|| "reading the SQLite URL")?
                    .disable_statement_logging();
                AnyPoolOptions::new()
                    .max_connections(4)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // WAL lets readers run while one writer writes. synchronous=FULL makes a
                            // commit durable on power loss too, not only on a crash of this process.
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = FULL").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            Ok(())
                        })
                    })
                    .connect_with(opts)
                    .await
                    .with_context(|| format!("opening SQLite database {url}"))?
            }
            Backend::Postgres => {
                let opts = AnyConnectOptions::from_str(url)
                    .with_context(|| "reading the PostgreSQL URL")?
                    .disable_statement_logging();
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(opts)
                    .await
                    .with_context(|| "connecting to PostgreSQL")?
            }
        };
        let migrator = match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        migrator
            .run(&pool)
            .await
            .context("applying database migrations")?;
        Ok(Db {
            pool,
            backend,
            write_lock: (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(()))),
        })
    }

    /// Serialises writers on SQLite; free on PostgreSQL.
    pub async fn write(&self) -> WriteGuard<'_> {
        match &self.write_lock {
            Some(m) => WriteGuard(Some(m.lock().await)),
            None => WriteGuard(None),
        }
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
