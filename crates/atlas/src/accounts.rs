//! Outlets, members, sessions and API tokens: who is calling, and for which outlet.
//!
//! Secrets (passwords, session ids, API tokens) are never stored: passwords as argon2id PHC
//! strings, session ids and tokens as SHA-256 hex digests. A leaked database does not let anyone
//! log in.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::model::{FieldError, Role, Tlp, now_ms, short_text};

/// Who is making a call: a person of an outlet, or a machine token of an outlet.
#[derive(Debug, Clone)]
pub struct Actor {
    pub outlet_id: i64,
    pub role: Role,
    /// `user:EMAIL` or `token:NAME`, written into the audit and custody logs.
    pub label: String,
    pub user_id: Option<i64>,
}

/// An outlet as the task force sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Outlet {
    #[serde(skip)]
    pub id: i64,
    pub slug: String,
    pub name: String,
    /// The TLP level given to incidents made from shield episodes.
    pub auto_tlp: Tlp,
}

/// A member of an outlet.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    #[serde(skip)]
    pub id: i64,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub disabled: bool,
}

/// How long a login lasts.
pub const SESSION_MS: i64 = 12 * 3600 * 1000;
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 12;

/// A fresh random secret, base64url without padding (32 bytes of entropy).
pub fn random_token(prefix: &str) -> Result<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    Ok(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    ))
}

/// SHA-256 hex of a secret; what the database keeps instead of the secret.
pub fn secret_hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn valid_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
}

fn outlet_row(r: &sqlx::any::AnyRow) -> Result<Outlet> {
    Ok(Outlet {
        id: r.try_get("id")?,
        slug: r.try_get("slug")?,
        name: r.try_get("name")?,
        auto_tlp: Tlp::parse(&r.try_get::<String, _>("auto_tlp")?).unwrap_or(Tlp::AmberStrict),
    })
}

impl Db {
    /// Names the task force (shown on the dashboard).
    pub async fn set_task_force(&self, name: &str) -> Result<()> {
        let mut errors = Vec::new();
        let name = short_text("name", name, &mut errors);
        Error::check(errors)?;
        let _w = self.write().await;
        sqlx::query(
            "INSERT INTO task_force (id, name) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name",
        )
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The task force's name, if set.
    pub async fn task_force(&self) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT name FROM task_force WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Adds an outlet to the task force. `actor` is `None` for the bootstrap CLI.
    pub async fn create_outlet(&self, slug: &str, name: &str, by: &str) -> Result<Outlet> {
        let mut errors = Vec::new();
        let slug = slug.trim().to_string();
        if !valid_slug(&slug) {
            errors.push(FieldError::new(
                "slug",
                "lower-case letters, digits and '-', at most 40",
            ));
        }
        let name = short_text("name", name, &mut errors);
        Error::check(errors)?;
        let _w = self.write().await;
        let mut tx = self.pool.begin().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM outlets WHERE slug = $1")
            .bind(&slug)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(Error::Conflict(format!("outlet {slug} exists")));
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO outlets (slug, name, auto_tlp, created_ms) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(&slug)
        .bind(&name)
        .bind(Tlp::AmberStrict.as_str())
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?;
        audit(&mut tx, Some(id), by, "outlet.create", &slug, &name).await?;
        tx.commit().await?;
        Ok(Outlet {
            id,
            slug,
            name,
            auto_tlp: Tlp::AmberStrict,
        })
    }

    /// Every outlet of the task force (names are not secret inside it).
    pub async fn outlets(&self) -> Result<Vec<Outlet>> {
        let rows = sqlx::query("SELECT id, slug, name, auto_tlp FROM outlets ORDER BY slug")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(outlet_row).collect()
    }

    /// One outlet by slug.
    pub async fn outlet_by_slug(&self, slug: &str) -> Result<Outlet> {
        let row = sqlx::query("SELECT id, slug, name, auto_tlp FROM outlets WHERE slug = $1")
            .bind(slug)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NotFound)?;
        outlet_row(&row)
    }

    /// One outlet by id.
    pub async fn outlet(&self, id: i64) -> Result<Outlet> {
        let row = sqlx::query("SELECT id, slug, name, auto_tlp FROM outlets WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NotFound)?;
        outlet_row(&row)
    }

    /// The outlets this outlet counts as need-to-know for its AMBER incidents.
    pub async fn need_to_know(&self, outlet_id: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT o.slug FROM need_to_know n JOIN outlets o ON o.id = n.peer_id
             WHERE n.outlet_id = $1 ORDER BY o.slug",
        )
        .bind(outlet_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Changes the outlet's sharing settings (admins of that outlet only).
    pub async fn set_sharing(
        &self,
        actor: &Actor,
        auto_tlp: Tlp,
        need_to_know: &[String],
    ) -> Result<()> {
        if actor.role != Role::Admin {
            return Err(Error::Forbidden);
        }
        if need_to_know.len() > 500 {
            return Err(Error::field("need_to_know", "at most 500 outlets"));
        }
        let _w = self.write().await;
        let mut tx = self.pool.begin().await?;
        let peers = outlet_ids(&mut tx, "need_to_know", need_to_know, actor.outlet_id).await?;
        sqlx::query("UPDATE outlets SET auto_tlp = $1 WHERE id = $2")
            .bind(auto_tlp.as_str())
            .bind(actor.outlet_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM need_to_know WHERE outlet_id = $1")
            .bind(actor.outlet_id)
            .execute(&mut *tx)
            .await?;
        for p in &peers {
            sqlx::query("INSERT INTO need_to_know (outlet_id, peer_id) VALUES ($1, $2)")
                .bind(actor.outlet_id)
                .bind(p)
                .execute(&mut *tx)
                .await?;
        }
        let detail = format!(
            "auto_tlp={} need_to_know={}",
            auto_tlp.as_str(),
            need_to_know.join(",")
        );
        audit(
            &mut tx,
            Some(actor.outlet_id),
            &actor.label,
            "outlet.sharing",
            "settings",
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Adds a member to an outlet. Only the bootstrap CLI (`by` without an actor) or an admin of
    /// that outlet may do it.
    pub async fn create_user(
        &self,
        actor: Option<&Actor>,
        outlet_id: i64,
        email: &str,
        name: &str,
        password: &str,
        role: Role,
    ) -> Result<Member> {
        let by = match actor {
            Some(a) if a.role == Role::Admin && a.outlet_id == outlet_id => a.label.clone(),
            Some(_) => return Err(Error::Forbidden),
            None => "cli".to_string(),
        };
        let mut errors = Vec::new();
        let email = short_text("email", email, &mut errors).to_lowercase();
        if !email.contains('@') {
            errors.push(FieldError::new("email", "not an e-mail address"));
        }
        let name = short_text("name", name, &mut errors);
        if password.chars().count() < MIN_PASSWORD {
            errors.push(FieldError::new(
                "password",
                format!("at least {MIN_PASSWORD} characters"),
            ));
        }
        if password.len() > 1024 {
            errors.push(FieldError::new("password", "at most 1024 bytes"));
        }
        if role == Role::Ingest {
            errors.push(FieldError::new(
                "role",
                "must be one of: viewer, editor, admin",
            ));
        }
        Error::check(errors)?;
        let hash = hash_password(password).await?;
        let _w = self.write().await;
        let mut tx = self.pool.begin().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
            .bind(&email)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(Error::Conflict("a member with this e-mail exists".into()));
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (email, name, password_hash, outlet_id, role, disabled, created_ms)
             VALUES ($1, $2, $3, $4, $5, 0, $6) RETURNING id",
        )
        .bind(&email)
        .bind(&name)
        .bind(&hash)
        .bind(outlet_id)
        .bind(role.as_str())
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?;
        audit(
            &mut tx,
            Some(outlet_id),
            &by,
            "member.add",
            &email,
            role.as_str(),
        )
        .await?;
        tx.commit().await?;
        Ok(Member {
            id,
            email,
            name,
            role,
            disabled: false,
        })
    }

    /// The members of the caller's own outlet (admins only).
    pub async fn members(&self, actor: &Actor) -> Result<Vec<Member>> {
        if actor.role != Role::Admin {
            return Err(Error::Forbidden);
        }
        let rows = sqlx::query(
            "SELECT id, email, name, role, disabled FROM users WHERE outlet_id = $1 ORDER BY email",
        )
        .bind(actor.outlet_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Member {
                    id: r.try_get("id")?,
                    email: r.try_get("email")?,
                    name: r.try_get("name")?,
                    role: Role::parse(&r.try_get::<String, _>("role")?).unwrap_or(Role::Viewer),
                    disabled: r.try_get::<i64, _>("disabled")? != 0,
                })
            })
            .collect()
    }

    /// Checks a password; on success opens a session and returns (session secret, CSRF token).
    /// The same error answers an unknown e-mail and a wrong password.
    pub async fn login(&self, email: &str, password: &str) -> Result<(String, String, Actor)> {
        let row = sqlx::query(
            "SELECT id, email, password_hash, outlet_id, role, disabled FROM users WHERE email = $1",
        )
        .bind(email.trim().to_lowercase())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            // Spend the same time as a real check, so timing does not reveal who is a member.
            let _ = verify_password(password, &dummy_hash().await).await;
            return Err(Error::Unauthenticated);
        };
        let hash: String = row.try_get("password_hash")?;
        if !verify_password(password, &hash).await? || row.try_get::<i64, _>("disabled")? != 0 {
            return Err(Error::Unauthenticated);
        }
        let user_id: i64 = row.try_get("id")?;
        let email: String = row.try_get("email")?;
        let actor = Actor {
            outlet_id: row.try_get("outlet_id")?,
            role: Role::parse(&row.try_get::<String, _>("role")?).unwrap_or(Role::Viewer),
            label: format!("user:{email}"),
            user_id: Some(user_id),
        };
        let secret = random_token("")?;
        let csrf = random_token("")?;
        let now = now_ms();
        let _w = self.write().await;
        let mut tx = self.pool.begin().await?;
        // Expired sessions are removed as new ones are made, so the table stays bounded.
        sqlx::query("DELETE FROM sessions WHERE expires_ms < $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO sessions (token_hash, user_id, csrf, created_ms, expires_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(secret_hash(&secret))
        .bind(user_id)
        .bind(&csrf)
        .bind(now)
        .bind(now + SESSION_MS)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            Some(actor.outlet_id),
            &actor.label,
            "session.login",
            "session",
            "",
        )
        .await?;
        tx.commit().await?;
        Ok((secret, csrf, actor))
    }

    /// The person behind a session secret, with the session's CSRF token.
    pub async fn session(&self, secret: &str) -> Result<(Actor, String)> {
        let row = sqlx::query(
            "SELECT u.id, u.email, u.outlet_id, u.role, s.csrf FROM sessions s
             JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = $1 AND s.expires_ms > $2 AND u.disabled = 0",
        )
        .bind(secret_hash(secret))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(Error::Unauthenticated)?;
        let email: String = row.try_get("email")?;
        Ok((
            Actor {
                outlet_id: row.try_get("outlet_id")?,
                role: Role::parse(&row.try_get::<String, _>("role")?).unwrap_or(Role::Viewer),
                label: format!("user:{email}"),
                user_id: Some(row.try_get("id")?),
            },
            row.try_get("csrf")?,
        ))
    }

    /// Ends a session.
    pub async fn logout(&self, secret: &str) -> Result<()> {
        let _w = self.write().await;
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(secret_hash(secret))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Makes an API token for an outlet; the secret is returned once and never stored.
    pub async fn create_token(
        &self,
        actor: Option<&Actor>,
        outlet_id: i64,
        name: &str,
        role: Role,
    ) -> Result<String> {
        let by = match actor {
            Some(a) if a.role == Role::Admin && a.outlet_id == outlet_id => a.label.clone(),
            Some(_) => return Err(Error::Forbidden),
            None => "cli".to_string(),
        };
        let mut errors = Vec::new();
        let name = short_text("name", name, &mut errors);
        Error::check(errors)?;
        let secret = random_token("qat_")?;
        let _w = self.write().await;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO api_tokens (token_hash, outlet_id, name, role, created_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(secret_hash(&secret))
        .bind(outlet_id)
        .bind(&name)
        .bind(role.as_str())
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            Some(outlet_id),
            &by,
            "token.create",
            &name,
            role.as_str(),
        )
        .await?;
        tx.commit().await?;
        Ok(secret)
    }

    /// The outlet and role behind an API token.
    pub async fn token(&self, secret: &str) -> Result<Actor> {
        let row = sqlx::query(
            "SELECT outlet_id, name, role FROM api_tokens WHERE token_hash = $1 AND revoked_ms IS NULL",
        )
        .bind(secret_hash(secret))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(Error::Unauthenticated)?;
        let name: String = row.try_get("name")?;
        Ok(Actor {
            outlet_id: row.try_get("outlet_id")?,
            role: Role::parse(&row.try_get::<String, _>("role")?).unwrap_or(Role::Viewer),
            label: format!("token:{name}"),
            user_id: None,
        })
    }
}

/// Turns outlet slugs named in a request (`field[i]`) into row ids, sorted and without
/// duplicates; the caller's own outlet is dropped (it always sees its own data). An unknown slug
/// is a field error naming its position.
pub(crate) async fn outlet_ids(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    field: &str,
    slugs: &[String],
    own: i64,
) -> Result<Vec<i64>> {
    let mut ids = Vec::new();
    let mut errors = Vec::new();
    for (i, slug) in slugs.iter().enumerate() {
        let id: Option<i64> = sqlx::query_scalar("SELECT id FROM outlets WHERE slug = $1")
            .bind(slug.trim())
            .fetch_optional(&mut **tx)
            .await?;
        match id {
            Some(id) if id != own => ids.push(id),
            Some(_) => {}
            None => errors.push(FieldError::new(format!("{field}[{i}]"), "no such outlet")),
        }
    }
    Error::check(errors)?;
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Appends one audit entry inside the caller's transaction, so the change and its record commit
/// together.
pub(crate) async fn audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    outlet_id: Option<i64>,
    actor: &str,
    action: &str,
    object: &str,
    detail: &str,
) -> Result<()> {
    let detail: String = detail.chars().take(2000).collect();
    sqlx::query(
        "INSERT INTO audit_log (at_ms, outlet_id, actor, action, object, detail) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(now_ms())
    .bind(outlet_id)
    .bind(actor)
    .bind(action)
    .bind(object)
    .bind(detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A hash of a random password, checked against when the e-mail is unknown so that the answer
/// takes as long as for a member.
static DUMMY_HASH: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

async fn dummy_hash() -> String {
    DUMMY_HASH
        .get_or_init(|| async {
            let pw = random_token("").unwrap_or_default();
            hash_password(&pw).await.unwrap_or_default()
        })
        .await
        .clone()
}

async fn hash_password(password: &str) -> Result<String> {
    let pw = password.to_string();
    // Argon2 takes tens of milliseconds of CPU: keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(pw.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| Error::Internal(format!("hashing: {e}")))
    })
    .await
    .map_err(|e| Error::Internal(format!("hashing task: {e}")))?
}

async fn verify_password(password: &str, hash: &str) -> Result<bool> {
    let pw = password.to_string();
    let hash = hash.to_string();
    tokio::task::spawn_blocking(move || {
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return false;
        };
        Argon2::default()
            .verify_password(pw.as_bytes(), &parsed)
            .is_ok()
    })
    .await
    .map_err(|e| Error::Internal(format!("hashing task: {e}")))
}
