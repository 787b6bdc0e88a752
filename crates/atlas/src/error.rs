//! The store's error type, and how each error becomes an HTTP answer.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::model::FieldError;

/// Why a store or API call did not succeed. The public text never carries database details.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No credentials, or credentials that are not valid.
    #[error("authentication required")]
    Unauthenticated,
    /// The caller is known but may not do this.
    #[error("not allowed")]
    Forbidden,
    /// The object does not exist, or the caller may not know that it exists.
    #[error("not found")]
    NotFound,
    /// The input is malformed or has invalid fields.
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    /// The request conflicts with what is stored (a duplicate name, say).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Too many attempts: try again later.
    #[error("too many attempts")]
    Throttled { retry_after_s: u64 },
    /// The request body could not be read as JSON at all.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The database failed; details go to the log, not to the client.
    #[error("database error")]
    Db(sqlx::Error),
    /// Anything else that is our fault.
    #[error("internal error")]
    Internal(String),
}

impl From<sqlx::Error> for Error {
    /// PostgreSQL refuses text with a NUL character (SQLite stores it), wherever it comes from: a
    /// path segment, a query parameter, a JSON string. That is bad input, not a failure of ours,
    /// so it is answered 400 instead of 500.
    fn from(e: sqlx::Error) -> Error {
        let code = e
            .as_database_error()
            .and_then(|d| d.code().map(|c| c.into_owned()));
        match code.as_deref() {
            // character_not_in_repertoire, untranslatable_character
            Some("22021") | Some("22P05") => {
                Error::Malformed("text must not contain NUL (\\u0000) characters".into())
            }
            _ => Error::Db(e),
        }
    }
}

impl Error {
    /// One field problem.
    pub fn field(field: &str, message: impl Into<String>) -> Error {
        Error::Invalid(vec![FieldError::new(field, message)])
    }

    /// `Ok` when there were no problems, otherwise all of them at once.
    pub fn check(errors: Vec<FieldError>) -> Result<(), Error> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(errors))
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Unauthenticated => StatusCode::UNAUTHORIZED,
            Error::Forbidden => StatusCode::FORBIDDEN,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Malformed(_) => StatusCode::BAD_REQUEST,
            Error::Db(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            Error::Invalid(fields) => json!({"error": "invalid input", "fields": fields}),
            Error::Malformed(m) => json!({"error": "malformed request", "detail": m}),
            Error::Conflict(m) => json!({"error": "conflict", "detail": m}),
            Error::Db(e) => {
                tracing::error!(error = %e, "database error");
                json!({"error": "internal error"})
            }
            Error::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                json!({"error": "internal error"})
            }
            other => json!({"error": other.to_string()}),
        };
        let mut r = (status, Json(body)).into_response();
        if let Error::Throttled { retry_after_s } = self
            && let Ok(v) = http::HeaderValue::from_str(&retry_after_s.to_string())
        {
            r.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"qalqan-atlas\""),
            );
        }
        r
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
