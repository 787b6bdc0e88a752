//! `qalqan atlas …`: run the registry, and bootstrap it from the command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use qalqan_atlas::model::Role;

/// Default database: a file next to where the command runs.
const DEFAULT_DB: &str = "sqlite://atlas.db";

#[derive(Args)]
pub struct AtlasArgs {
    /// Address to serve the dashboard and API on.
    #[arg(long, default_value = "127.0.0.1:8090", global = true)]
    listen: SocketAddr,
    /// sqlite://PATH (default, one file) or postgres://USER@HOST/DB.
    #[arg(long, default_value = DEFAULT_DB, env = "QALQAN_ATLAS_DATABASE", global = true)]
    database: String,
    /// RFC 3161 timestamping authority for evidence packages (http://…); unanswered requests
    /// are queued and retried.
    #[arg(long, value_name = "URL")]
    tsa: Option<String>,
    /// Where queued timestamp requests and late tokens are kept.
    #[arg(long, value_name = "DIR", default_value = "atlas-timestamps")]
    tsa_queue: PathBuf,
    /// Minutes between two polls of each outlet's RSS/Atom feeds (jittered by 10 %); 0 turns
    /// polling off.
    #[arg(
        long,
        value_name = "MINUTES",
        default_value_t = 15,
        env = "QALQAN_ATLAS_FEED_INTERVAL"
    )]
    feed_interval: u64,
    /// Also poll feeds on loopback, private and link-local addresses (off: an outlet admin's
    /// feed URL must not reach the atlas's own network).
    #[arg(long)]
    feed_allow_private: bool,
    #[command(subcommand)]
    command: Option<AtlasCmd>,
}

#[derive(Subcommand)]
enum AtlasCmd {
    /// Name the task force.
    TaskForce {
        /// Its name, as shown on the dashboard.
        name: String,
    },
    /// Manage outlets.
    #[command(subcommand)]
    Outlet(OutletCmd),
    /// Manage members.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage API tokens (for shields and scripts).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Add an incident kind of this deployment's own.
    #[command(subcommand)]
    Kind(KindCmd),
    /// Write a consistent copy of the registry while it runs.
    Backup {
        /// File to write (JSON lines; works for both backends).
        file: PathBuf,
    },
    /// Load a backup into an empty registry (either backend).
    Restore {
        /// A file written by `qalqan atlas backup`.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum OutletCmd {
    /// Add an outlet to the task force.
    Add {
        /// Short name: lower-case letters, digits, '-' (e.g. kursiv).
        slug: String,
        /// Display name.
        name: String,
    },
    /// List outlets.
    List,
    /// Let the outlet's editor and admin tokens write to the atlas through TAXII (POST objects).
    Trust {
        /// The outlet's slug.
        slug: String,
    },
    /// Take TAXII write access away again (reading is unchanged).
    Untrust {
        /// The outlet's slug.
        slug: String,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add a member to an outlet. The password is read from QALQAN_PASSWORD or asked on stdin.
    Add {
        /// The outlet's slug.
        #[arg(long)]
        outlet: String,
        /// E-mail, used to log in.
        #[arg(long)]
        email: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// viewer, editor or admin.
        #[arg(long, default_value = "editor")]
        role: String,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token; the secret is printed once.
    Create {
        /// The outlet's slug.
        #[arg(long)]
        outlet: String,
        /// A name to recognise it by (e.g. shield-1).
        #[arg(long)]
        name: String,
        /// ingest (shields), viewer, editor or admin.
        #[arg(long, default_value = "ingest")]
        role: String,
    },
}

#[derive(Subcommand)]
enum KindCmd {
    /// Add a kind with its names in Russian, Kazakh and English.
    Add {
        code: String,
        #[arg(long)]
        ru: String,
        #[arg(long)]
        kk: String,
        #[arg(long)]
        en: String,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn role(s: &str) -> anyhow::Result<Role> {
    Role::parse(s).with_context(|| format!("unknown role {s:?}: {}", Role::choices()))
}

fn password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("QALQAN_PASSWORD") {
        return Ok(p);
    }
    eprint!(
        "password (at least {} characters): ",
        qalqan_atlas::accounts::MIN_PASSWORD
    );
    let mut s = String::new();
    std::io::stdin().read_line(&mut s)?;
    Ok(s.trim_end_matches(['\r', '\n']).to_string())
}

/// Shows a store error with its field messages, not just "invalid input".
fn explain(e: qalqan_atlas::Error) -> anyhow::Error {
    match e {
        qalqan_atlas::Error::Invalid(fields) => anyhow::anyhow!(
            "{}",
            fields
                .iter()
                .map(|f| format!("{}: {}", f.field, f.message))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        other => anyhow::anyhow!("{other}"),
    }
}

pub fn run(a: AtlasArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = runtime()?;
    rt.block_on(async move {
        let Some(cmd) = a.command else {
            let tsa = a.tsa.map(|url| qalqan_atlas::evidence::tsa::Tsa {
                url,
                queue_dir: a.tsa_queue,
            });
            let feeds = qalqan_atlas::feeds::PollConfig {
                interval: std::time::Duration::from_secs(a.feed_interval.min(7 * 24 * 60) * 60),
                allow_private: a.feed_allow_private,
                ..Default::default()
            };
            return qalqan_atlas::serve_full(a.listen, &a.database, tsa, feeds).await;
        };
        let db = qalqan_atlas::Db::connect(&a.database).await?;
        match cmd {
            AtlasCmd::TaskForce { name } => {
                db.set_task_force(&name).await.map_err(explain)?;
                println!("task force: {name}");
            }
            AtlasCmd::Outlet(OutletCmd::Add { slug, name }) => {
                let o = db
                    .create_outlet(&slug, &name, "cli")
                    .await
                    .map_err(explain)?;
                println!("outlet {} added", o.slug);
            }
            AtlasCmd::Outlet(OutletCmd::Trust { slug }) => {
                db.set_taxii_write(&slug, true).await.map_err(explain)?;
                println!("outlet {slug} may write through TAXII");
            }
            AtlasCmd::Outlet(OutletCmd::Untrust { slug }) => {
                db.set_taxii_write(&slug, false).await.map_err(explain)?;
                println!("outlet {slug} reads only through TAXII");
            }
            AtlasCmd::Outlet(OutletCmd::List) => {
                for o in db.outlets().await.map_err(explain)? {
                    println!("{}\t{}\tauto_tlp={}", o.slug, o.name, o.auto_tlp.as_str());
                }
            }
            AtlasCmd::User(UserCmd::Add {
                outlet,
                email,
                name,
                role: r,
            }) => {
                let o = db.outlet_by_slug(&outlet).await.map_err(explain)?;
                let pw = password()?;
                let m = db
                    .create_user(None, o.id, &email, &name, &pw, role(&r)?)
                    .await
                    .map_err(explain)?;
                println!(
                    "member {} added to {} as {}",
                    m.email,
                    o.slug,
                    m.role.as_str()
                );
            }
            AtlasCmd::Token(TokenCmd::Create {
                outlet,
                name,
                role: r,
            }) => {
                let o = db.outlet_by_slug(&outlet).await.map_err(explain)?;
                let t = db
                    .create_token(None, o.id, &name, role(&r)?)
                    .await
                    .map_err(explain)?;
                // The only time the secret is shown.
                println!("{t}");
            }
            AtlasCmd::Kind(KindCmd::Add { code, ru, kk, en }) => {
                db.add_kind(&code, &ru, &kk, &en).await.map_err(explain)?;
                println!("kind {code} added");
            }
            AtlasCmd::Backup { file } => {
                let n = qalqan_atlas::backup::backup(&db, &file).await?;
                println!("{}: {n} rows", file.display());
            }
            AtlasCmd::Restore { file } => {
                let n = qalqan_atlas::backup::restore(&db, &file).await?;
                println!("restored {n} rows from {}", file.display());
            }
        }
        db.close().await;
        Ok(())
    })
}
