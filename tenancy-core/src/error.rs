//! The error type of `tenancy-core`, and the kinds callers branch on.
//!
//! Backends map their own failures into [`Error`]: a Redis timeout becomes
//! [`Error::Unavailable`], a stale optimistic save becomes [`Error::Conflict`], and so on, so
//! that a caller can decide what to do without knowing which backend is configured.
//!
//! ```
//! use tenancy_core::{Error, ErrorKind, TenantId};
//!
//! let err: Error = TenantId::parse("Not A Tenant").unwrap_err().into();
//! assert_eq!(err.kind(), ErrorKind::Invalid);
//! assert!(!err.is_retryable());
//! ```

use std::borrow::Cow;
use std::fmt;

use crate::Permission;

/// A boxed error that keeps the original cause (never a `String` copy of it).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Input that failed validation: which value and why, never the offending bytes themselves
/// (they may be hostile and end up in logs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct ParseError {
    what: &'static str,
    reason: Cow<'static, str>,
}

impl ParseError {
    /// A parse error for the value named `what`, refused because of `reason`.
    pub fn new(what: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            what,
            reason: reason.into(),
        }
    }

    /// The name of the value that was refused (`"tenant id"`, `"permission"`, ...).
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// Why it was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Why a bearer token was refused.
///
/// The reason is for operators (logs, metric labels); an HTTP layer answers every one of them
/// with the same `401` so that a client cannot probe which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenRejection {
    /// Not three base64url segments, bad base64, bad JSON, or a header that cannot be read.
    Malformed,
    /// Larger than the verifier accepts; refused before decoding.
    Oversized,
    /// The header names an algorithm outside the allowed set (including `none`).
    AlgorithmNotAllowed,
    /// The key id is not in the key set (after any permitted refresh).
    UnknownKey,
    /// The issuer has no key set configured.
    UnknownIssuer,
    /// The signature does not verify.
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `iss` is not the expected issuer.
    WrongIssuer,
    /// `aud` does not contain the expected audience.
    WrongAudience,
    /// A required claim is absent.
    MissingClaim(&'static str),
    /// A claim is present but has the wrong type or an invalid value.
    InvalidClaim(&'static str),
    /// The token id (`jti`) is on the denylist.
    Revoked,
    /// The session named by `sid` has ended.
    SessionEnded,
}

impl TokenRejection {
    /// A short, stable, low-cardinality label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Oversized => "oversized",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::UnknownKey => "unknown_key",
            Self::UnknownIssuer => "unknown_issuer",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim(_) => "invalid_claim",
            Self::Revoked => "revoked",
            Self::SessionEnded => "session_ended",
        }
    }
}

impl fmt::Display for TokenRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingClaim(c) => write!(f, "missing claim `{c}`"),
            Self::InvalidClaim(c) => write!(f, "invalid claim `{c}`"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// Why an authenticated caller may not do what it asked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denial {
    /// The caller lacks this permission.
    MissingPermission(Permission),
    /// The resource belongs to another tenant.
    WrongTenant,
    /// The caller's tenant is suspended.
    TenantSuspended,
    /// The caller's tenant is not known to the tenant directory.
    UnknownTenant,
    /// The caller's role may not do this.
    RoleRequired(&'static str),
    /// The token grants a platform-wide role (`super_admin`) for a tenant other than the
    /// platform's own: platform roles belong to platform users only.
    PlatformRoleOutsidePlatform,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingPermission(p) => write!(f, "missing permission `{p}`"),
            Self::WrongTenant => f.write_str("resource belongs to another tenant"),
            Self::TenantSuspended => f.write_str("tenant is suspended"),
            Self::UnknownTenant => f.write_str("tenant is not known"),
            Self::RoleRequired(r) => write!(f, "role `{r}` required"),
            Self::PlatformRoleOutsidePlatform => {
                f.write_str("a platform role is valid only in the platform tenant")
            }
        }
    }
}

/// The error type of `tenancy-core` and of every backend trait.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Input failed validation.
    #[error(transparent)]
    Invalid(#[from] ParseError),
    /// A bearer token was refused; the reason is for operators, not for clients.
    #[error("token rejected: {0}")]
    Rejected(TokenRejection),
    /// The caller is authenticated but not allowed.
    #[error("access denied: {0}")]
    Denied(Denial),
    /// The thing asked for does not exist (or is not visible to this tenant).
    #[error("not found")]
    NotFound,
    /// A concurrent change won: for example a session saved from a stale copy.
    #[error("conflict: {0}")]
    Conflict(Cow<'static, str>),
    /// The backend could not be reached or failed; retrying later may succeed.
    #[error("backend unavailable")]
    Unavailable(#[source] BoxError),
    /// The backend did not answer in time; retrying later may succeed.
    #[error("backend timed out")]
    Timeout,
    /// Stored data could not be decoded or failed an integrity check.
    #[error("stored data is corrupt")]
    Corrupt(#[source] BoxError),
    /// The backend refused the call for a reason that neither a retry nor the caller can
    /// fix: a missing privilege or ACL permission, a refused login, a statement the backend
    /// does not accept, a failed migration. An operator has to act; an HTTP service answers
    /// 500.
    #[error("backend refused the call")]
    Internal(#[source] BoxError),
}

impl Error {
    /// Wraps a backend failure as [`Error::Unavailable`], keeping the cause.
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        Self::Unavailable(source.into())
    }

    /// Wraps undecodable stored data as [`Error::Corrupt`], keeping the cause.
    pub fn corrupt(source: impl Into<BoxError>) -> Self {
        Self::Corrupt(source.into())
    }

    /// Wraps a refusal no retry fixes as [`Error::Internal`], keeping the cause.
    ///
    /// ```
    /// use tenancy_core::{Error, ErrorKind};
    ///
    /// let e = Error::internal("NOPERM this user has no permissions to run the 'evalsha' command");
    /// assert_eq!(e.kind(), ErrorKind::Internal);
    /// assert!(!e.is_retryable());
    /// ```
    pub fn internal(source: impl Into<BoxError>) -> Self {
        Self::Internal(source.into())
    }

    /// The kind of this error, for branching without matching every variant.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::Rejected(_) => ErrorKind::Rejected,
            Self::Denied(_) => ErrorKind::Denied,
            Self::NotFound => ErrorKind::NotFound,
            Self::Conflict(_) => ErrorKind::Conflict,
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Timeout => ErrorKind::Timeout,
            Self::Corrupt(_) => ErrorKind::Corrupt,
            Self::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Whether the same call may succeed later without any change by the caller
    /// ([`ErrorKind::Unavailable`] and [`ErrorKind::Timeout`]).
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind(), ErrorKind::Unavailable | ErrorKind::Timeout)
    }
}

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Input failed validation.
    Invalid,
    /// A token was refused.
    Rejected,
    /// Authorization refused.
    Denied,
    /// Absent or invisible.
    NotFound,
    /// Lost a concurrent update.
    Conflict,
    /// Backend down; retryable.
    Unavailable,
    /// Backend too slow; retryable.
    Timeout,
    /// Stored data failed decoding or integrity checks.
    Corrupt,
    /// The backend refused the call; an operator has to act.
    Internal,
}
