//! The error type of `tenancy-db`.
//!
//! Every failure keeps its cause. [`Error::sqlstate`] gives the PostgreSQL error code when
//! there is one, and [`Error::is_tenant_violation`] says whether row-level security or the
//! tenant helper refused the statement (SQLSTATE `42501`): a query without tenant context,
//! or a row written into another tenant.
//!
//! ```
//! use tenancy_db::Error;
//!
//! let err = Error::InvalidIdentifier { what: "role name", reason: "must be lowercase" };
//! assert_eq!(err.sqlstate(), None);
//! assert!(!err.is_tenant_violation());
//! let core: tenancy_core::Error = err.into();
//! assert_eq!(core.kind(), tenancy_core::ErrorKind::Invalid);
//! ```

use std::borrow::Cow;

use crate::audit::AuditReport;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// SQLSTATE `insufficient_privilege`: raised by `tenancy.current_tenant_id()` when no tenant
/// is set, and by row-level security when a row would be written into another tenant.
pub const SQLSTATE_INSUFFICIENT_PRIVILEGE: &str = "42501";

/// The error type of `tenancy-db`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server could not be reached after every connect attempt.
    #[error("could not connect to PostgreSQL after {attempts} attempt(s)")]
    Connect {
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's failure.
        #[source]
        source: sqlx::Error,
    },
    /// No pooled connection became free within the acquire timeout.
    #[error("no database connection became free in time")]
    PoolTimedOut(#[source] sqlx::Error),
    /// A statement failed (including SQLSTATE `42501` from row-level security).
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// Applying the crate's migrations failed.
    #[error("migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The catalog audit found defects; the pool refuses to serve.
    #[error("{0}")]
    Audit(AuditReport),
    /// An identifier (role or table name) was refused before reaching SQL.
    #[error("invalid {what}: {reason}")]
    InvalidIdentifier {
        /// Which identifier.
        what: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A value could not be stored (for example a duration beyond PostgreSQL's range).
    #[error("value out of range: {0}")]
    OutOfRange(Cow<'static, str>),
    /// Stored data could not be decoded.
    #[error("stored data is corrupt")]
    Corrupt(#[source] tenancy_core::BoxError),
}

impl Error {
    /// The PostgreSQL SQLSTATE of the failure, when the server reported one.
    pub fn sqlstate(&self) -> Option<Cow<'_, str>> {
        match self {
            Self::Database(e) | Self::PoolTimedOut(e) | Self::Connect { source: e, .. } => {
                e.as_database_error().and_then(|d| d.code())
            }
            _ => None,
        }
    }

    /// Whether the statement was refused as a tenant-isolation violation (SQLSTATE `42501`):
    /// no tenant set, or a row written into another tenant.
    pub fn is_tenant_violation(&self) -> bool {
        self.sqlstate().as_deref() == Some(SQLSTATE_INSUFFICIENT_PRIVILEGE)
    }

    /// Whether the server cancelled the statement (SQLSTATE `57014`: `statement_timeout` or a
    /// cancel request).
    pub fn is_statement_timeout(&self) -> bool {
        self.sqlstate().as_deref() == Some("57014")
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut => Self::PoolTimedOut(e),
            e => Self::Database(e),
        }
    }
}

impl From<Error> for tenancy_core::Error {
    fn from(e: Error) -> Self {
        use tenancy_core::Error as Core;
        match e {
            Error::PoolTimedOut(_) => Core::Timeout,
            Error::InvalidIdentifier { what, reason } => {
                Core::Invalid(tenancy_core::ParseError::new(what, reason))
            }
            Error::OutOfRange(why) => Core::Invalid(tenancy_core::ParseError::new("value", why)),
            Error::Corrupt(source) => Core::Corrupt(source),
            e if e.is_statement_timeout() => Core::Timeout,
            e => Core::unavailable(e),
        }
    }
}
