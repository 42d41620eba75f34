//! [`Error`]: what can go wrong at start-up and in an operation, and the HTTP answer each
//! gives ([`Error::status`], [`Error::problem`]).
//!
//! ```
//! use tenancy_server::Error;
//!
//! let e = Error::from(tenancy_core::Error::NotFound);
//! assert_eq!(e.status(), 404);
//! let cause = std::io::Error::other("connection refused by 10.0.0.7");
//! let opaque = Error::Unavailable(Box::new(cause));
//! assert_eq!(opaque.status(), 503);
//! assert!(!opaque.problem(None).detail.contains("10.0.0.7"));
//! ```

use std::borrow::Cow;

use tenancy_core::{BoxError, ErrorKind, RequestId};
use tenancy_http::Problem;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the server can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is missing or invalid; `setting` is the variable to fix.
    #[error("invalid setting {setting}: {reason}")]
    Config {
        /// The variable (`TENANCY_...`).
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A backend could not be set up at start.
    #[error("could not start {what}")]
    Startup {
        /// What was being started.
        what: &'static str,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The request is malformed (400); the text is safe to show the client.
    #[error("bad request: {0}")]
    BadRequest(Cow<'static, str>),
    /// Credentials or a refresh token were refused (401; the body never says why).
    #[error("unauthorized")]
    Unauthorized,
    /// The caller may not do this (403); the text is safe to show the client.
    #[error("forbidden: {0}")]
    Forbidden(Cow<'static, str>),
    /// Absent, or another tenant's (404).
    #[error("not found")]
    NotFound,
    /// The path exists but not for this method (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A concurrent change won (409).
    #[error("conflict")]
    Conflict,
    /// The body did not arrive within the time allowed (408).
    #[error("request body not received within {0:?}")]
    RequestTimeout(std::time::Duration),
    /// The body is larger than allowed (413).
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The body is not JSON (415).
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// A backend could not answer (503); the cause is logged, never sent.
    #[error("backend unavailable")]
    Unavailable(#[source] BoxError),
    /// Anything else (500); the cause is logged, never sent.
    #[error("internal error")]
    Internal(#[source] BoxError),
}

impl From<tenancy_core::Error> for Error {
    fn from(e: tenancy_core::Error) -> Self {
        match e.kind() {
            ErrorKind::Invalid => Self::BadRequest(e.to_string().into()),
            ErrorKind::Rejected => Self::Unauthorized,
            ErrorKind::Denied => Self::Forbidden(e.to_string().into()),
            ErrorKind::NotFound => Self::NotFound,
            ErrorKind::Conflict => Self::Conflict,
            ErrorKind::Unavailable | ErrorKind::Timeout => Self::Unavailable(Box::new(e)),
            _ => Self::Internal(Box::new(e)),
        }
    }
}

impl From<tenancy_db::Error> for Error {
    fn from(e: tenancy_db::Error) -> Self {
        // A lost serialization or deadlock race is a conflict to core, but the same call
        // would succeed if sent again: a 503 (retry later), not a 409.
        if e.is_retryable() {
            return Self::Unavailable(Box::new(e));
        }
        tenancy_core::Error::from(e).into()
    }
}

impl From<tenancy_audit::Error> for Error {
    fn from(e: tenancy_audit::Error) -> Self {
        tenancy_core::Error::from(e).into()
    }
}

impl Error {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Unauthorized => 401,
            Self::Forbidden(_) => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout(_) => 408,
            Self::Conflict => 409,
            Self::PayloadTooLarge(_) => 413,
            Self::UnsupportedMediaType => 415,
            Self::Unavailable(_) => 503,
            _ => 500,
        }
    }

    /// The problem+json document for this error. 5xx bodies are opaque.
    pub fn problem(&self, request_id: Option<&RequestId>) -> Problem {
        let (slug, title, detail): (&str, &str, Cow<'static, str>) = match self {
            Self::BadRequest(d) => ("bad-request", "Bad Request", d.clone()),
            // Login and refresh only (a request's bearer token is refused by the tenancy
            // layer, with its own text): which of the username, the password, the tenant or
            // the token was wrong is not said.
            Self::Unauthorized => (
                "unauthorized",
                "Unauthorized",
                "the credentials or the refresh token were not accepted".into(),
            ),
            Self::Forbidden(d) => ("forbidden", "Forbidden", d.clone()),
            Self::NotFound => ("not-found", "Not Found", "no such resource".into()),
            Self::MethodNotAllowed => (
                "method-not-allowed",
                "Method Not Allowed",
                "this method is not allowed on this path".into(),
            ),
            Self::Conflict => (
                "conflict",
                "Conflict",
                "a concurrent change won; retry".into(),
            ),
            Self::RequestTimeout(t) => (
                "request-timeout",
                "Request Timeout",
                format!(
                    "the request body did not arrive within {} seconds",
                    t.as_secs()
                )
                .into(),
            ),
            Self::PayloadTooLarge(n) => (
                "payload-too-large",
                "Payload Too Large",
                format!("the request body exceeds {n} bytes").into(),
            ),
            Self::UnsupportedMediaType => (
                "unsupported-media-type",
                "Unsupported Media Type",
                "the request body must be application/json".into(),
            ),
            Self::Unavailable(_) => (
                "unavailable",
                "Service Unavailable",
                "the service is temporarily unavailable; retry later".into(),
            ),
            _ => (
                "internal",
                "Internal Server Error",
                "the server could not complete the request".into(),
            ),
        };
        Problem {
            kind: format!("urn:tenancy:problem:{slug}").into(),
            title: title.to_owned().into(),
            status: self.status(),
            detail,
            request_id: request_id.cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_failures_answer_by_what_a_retry_would_do() {
        // Retryable (a pool timeout here; a serialization failure or a deadlock likewise,
        // which tenancy-db reports retryable although core calls them conflicts): 503.
        let busy = Error::from(tenancy_db::Error::from(sqlx::Error::PoolTimedOut));
        assert_eq!(busy.status(), 503);
        // Not retryable: as core maps it.
        let none = Error::from(tenancy_db::Error::from(sqlx::Error::RowNotFound));
        assert_eq!(none.status(), 404);
    }
}
