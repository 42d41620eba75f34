//! The error type of `tenancy-db`.
//!
//! Every failure keeps its cause. [`Error::sqlstate`] gives the PostgreSQL error code when
//! there is one, and [`Error::is_tenant_violation`] says whether row-level security or the
//! tenant helper refused the statement (SQLSTATE `42501`): a query without tenant context,
//! or a row written into another tenant (a `42501` from a missing `GRANT` is not one).
//!
//! Converted to [`tenancy_core::Error`], a failure becomes the kind a caller can act on: a
//! tenant violation is `Denied`, a taken value or a lost serialization race is `Conflict`,
//! a value refused by a constraint or a data check is `Invalid`, no row is `NotFound`, an
//! unreachable or restarting server is `Unavailable` (retryable), and a defect of the
//! deployment or the code (login refused, missing `GRANT`, an SQL error, failed audit or
//! migration) is `Internal`, not retryable. The table is on
//! the `From` impl; [`Error::is_retryable`] also counts serialization failures and deadlocks
//! as retryable.
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
/// is set, and by row-level security when a row would be written into another tenant (and
/// also by a missing `GRANT`; see [`Error::is_tenant_violation`]).
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
    /// The transaction was aborted by an earlier failed statement, so PostgreSQL rolled it
    /// back instead of committing it (a `COMMIT` in an aborted transaction answers
    /// `ROLLBACK` without an error). The source is the server's refusal of the commit probe
    /// (SQLSTATE `25P02`); the statement that failed first was reported to whoever ran it.
    #[error("the transaction was aborted by an earlier error and has been rolled back")]
    Aborted(#[source] sqlx::Error),
}

impl Error {
    /// The PostgreSQL SQLSTATE of the failure, when the server reported one.
    pub fn sqlstate(&self) -> Option<Cow<'_, str>> {
        self.pg_error().map(|d| Cow::Borrowed(d.code()))
    }

    fn sqlx_source(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Database(e)
            | Self::PoolTimedOut(e)
            | Self::Aborted(e)
            | Self::Connect { source: e, .. } => Some(e),
            _ => None,
        }
    }

    fn pg_error(&self) -> Option<&sqlx::postgres::PgDatabaseError> {
        self.sqlx_source()?
            .as_database_error()?
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
    }

    /// Whether the statement was refused as a tenant-isolation violation: SQLSTATE `42501`
    /// raised by `tenancy.current_tenant_id()` (no tenant, or an invalid one, is set) or by
    /// row-level security (a row written into, or moved to, another tenant).
    ///
    /// A `42501` for a missing `GRANT` ("permission denied for table …") is *not* a tenant
    /// violation: it is a deployment defect. The two are told apart by the server's error
    /// fields that are never translated: the `routine` that raised it
    /// (`ExecWithCheckOptions` for a row-level security check) and the helper's own message
    /// text (a `RAISE` message is sent as written, whatever `lc_messages` says).
    pub fn is_tenant_violation(&self) -> bool {
        let Some(d) = self.pg_error() else {
            return false;
        };
        if d.code() != SQLSTATE_INSUFFICIENT_PRIVILEGE {
            return false;
        }
        match d.routine() {
            Some("ExecWithCheckOptions") => true,
            Some("exec_stmt_raise") => HELPER_MESSAGES.contains(&d.message()),
            // A server that does not send the routine field: fall back to the messages.
            None => {
                HELPER_MESSAGES.contains(&d.message())
                    || d.message().contains("row-level security policy")
            }
            Some(_) => false,
        }
    }

    /// Whether the server cancelled the statement (SQLSTATE `57014`: `statement_timeout` or a
    /// cancel request).
    pub fn is_statement_timeout(&self) -> bool {
        self.sqlstate().as_deref() == Some("57014")
    }

    /// Whether the same call may succeed later without any change by the caller: the server
    /// is unreachable, restarting or out of resources, the pool or a statement timed out, or
    /// the transaction lost a serialization or deadlock race (`40001`, `40P01`).
    ///
    /// This is finer than [`tenancy_core::Error::is_retryable`] after conversion: a
    /// serialization failure converts to [`tenancy_core::Error::Conflict`], which core
    /// reports as not retryable.
    ///
    /// ```
    /// use tenancy_db::Error;
    ///
    /// assert!(Error::from(sqlx::Error::PoolTimedOut).is_retryable());
    /// assert!(!Error::from(sqlx::Error::RowNotFound).is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.class(),
            Class::Unavailable | Class::Timeout | Class::Conflict { retryable: true }
        )
    }

    fn class(&self) -> Class {
        match self {
            Self::PoolTimedOut(_) => Class::Timeout,
            Self::InvalidIdentifier { .. } | Self::OutOfRange(_) => Class::Invalid("value"),
            Self::Corrupt(_) => Class::Corrupt,
            Self::Audit(_) | Self::Migrate(_) | Self::Aborted(_) => Class::Internal,
            // `object_not_in_prerequisite_state` when connecting: the database does not accept
            // connections now (`ALLOW_CONNECTIONS false` during maintenance).
            Self::Connect { .. } if self.sqlstate().as_deref() == Some("55000") => {
                Class::Unavailable
            }
            Self::Database(e) | Self::Connect { source: e, .. } => {
                if !self.is_tenant_violation() {
                    classify(e)
                } else if self.pg_error().and_then(|d| d.routine()) == Some("exec_stmt_raise") {
                    // The helper refused: no tenant (or a malformed one) is set. The server
                    // ran tenant SQL outside a tenant transaction; the caller did nothing wrong.
                    Class::Internal
                } else {
                    Class::TenantViolation
                }
            }
        }
    }
}

/// Messages `tenancy.current_tenant_id()` raises (migration `0001`).
const HELPER_MESSAGES: &[&str] = &[
    "no tenant is set for this transaction",
    "the tenant setting of this transaction is not a valid tenant id",
];

/// What a failure means to a caller; see [`From<Error> for tenancy_core::Error`](Error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    TenantViolation,
    Conflict {
        retryable: bool,
    },
    Invalid(&'static str),
    NotFound,
    Unavailable,
    Timeout,
    Corrupt,
    /// Not retryable and not the caller's fault: a defect of the deployment or the code.
    Internal,
}

fn classify(e: &sqlx::Error) -> Class {
    use sqlx::Error as E;
    match e {
        E::Database(d) => match d.code() {
            Some(code) => classify_sqlstate(&code),
            None => Class::Internal,
        },
        E::Io(_) | E::Tls(_) | E::Protocol(_) | E::PoolClosed | E::WorkerCrashed => {
            Class::Unavailable
        }
        E::PoolTimedOut => Class::Timeout,
        E::RowNotFound => Class::NotFound,
        E::Configuration(_) => Class::Internal,
        E::InvalidArgument(_) | E::Encode(_) => Class::Invalid("value"),
        E::TypeNotFound { .. }
        | E::ColumnIndexOutOfBounds { .. }
        | E::ColumnNotFound(_)
        | E::ColumnDecode { .. }
        | E::Decode(_) => Class::Corrupt,
        _ => Class::Internal,
    }
}

fn classify_sqlstate(code: &str) -> Class {
    match code {
        // serialization_failure, deadlock_detected: run the transaction again.
        "40001" | "40P01" => Class::Conflict { retryable: true },
        // unique_violation, exclusion_violation: the value is taken.
        "23505" | "23P01" => Class::Conflict { retryable: false },
        "57014" | "55P03" => Class::Timeout,
        // admin_shutdown, crash_shutdown, cannot_connect_now; read_only_sql_transaction (a
        // standby after fail-over).
        "57P01" | "57P02" | "57P03" | "25006" => Class::Unavailable,
        // A 42501 that is not a tenant violation (checked before) is a missing GRANT.
        SQLSTATE_INSUFFICIENT_PRIVILEGE => Class::Internal,
        c if c.starts_with("08") || c.starts_with("53") || c.starts_with("58") => {
            Class::Unavailable
        }
        c if c.starts_with("22") => Class::Invalid("value"),
        c if c.starts_with("23") => Class::Invalid("value (refused by a constraint)"),
        // Syntax errors, undefined tables, columns or functions: the code or the schema is
        // wrong, not the caller's input (values travel as bound parameters).
        c if c.starts_with("42") => Class::Internal,
        // 28xxx (login refused), and everything else: retrying will not help.
        _ => Class::Internal,
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

/// Maps by SQLSTATE and sqlx error kind:
///
/// | failure | core error | retryable |
/// |---------|------------|-----------|
/// | a row written into, or moved to, another tenant (row-level security's check) | `Denied(WrongTenant)` | no |
/// | tenant SQL with no tenant set (the helper's refusal; also a tenant violation) | `Internal` | no |
/// | `23505`, `23P01` (value taken) | `Conflict` | no |
/// | `40001`, `40P01` (serialization, deadlock) | `Conflict` | no in core; [`Error::is_retryable`] says yes |
/// | other `22xxx`, `23xxx` (a value the database refuses); a bad argument | `Invalid` | no |
/// | no row | `NotFound` | no |
/// | pool timeout, `57014`, `55P03` | `Timeout` | yes |
/// | I/O, TLS, protocol, pool closed, `08xxx`, `53xxx`, `57P01`–`57P03`, `25006`, `58xxx`; `55000` when connecting (the database accepts no connections now) | `Unavailable` | yes |
/// | undecodable row | `Corrupt` | no |
/// | `28xxx` (login refused), `42501` from a missing `GRANT`, other `42xxx` (syntax, undefined table or column), bad configuration, [`Error::Audit`], [`Error::Migrate`], [`Error::Aborted`], anything else | `Internal` | no |
///
/// `Internal` is a defect of the deployment or the code: an operator has to act. The
/// `Invalid` reason never carries the server's message (it may quote another tenant's
/// value).
impl From<Error> for tenancy_core::Error {
    fn from(e: Error) -> Self {
        use tenancy_core::Error as Core;
        match e.class() {
            Class::TenantViolation => Core::Denied(tenancy_core::Denial::WrongTenant),
            Class::Conflict { .. } => Core::Conflict(Cow::Borrowed(
                if e.sqlstate().is_some_and(|c| c.starts_with("40")) {
                    "the transaction lost a race with a concurrent one; run it again"
                } else {
                    "the value is already taken"
                },
            )),
            Class::Invalid(what) => match e {
                Error::InvalidIdentifier { what, reason } => {
                    Core::Invalid(tenancy_core::ParseError::new(what, reason))
                }
                Error::OutOfRange(why) => {
                    Core::Invalid(tenancy_core::ParseError::new("value", why))
                }
                e => {
                    let reason = match e.sqlstate() {
                        Some(code) => format!("refused by the database (SQLSTATE {code})"),
                        None => "refused by the database driver".to_owned(),
                    };
                    Core::Invalid(tenancy_core::ParseError::new(what, reason))
                }
            },
            Class::NotFound => Core::NotFound,
            Class::Timeout => Core::Timeout,
            Class::Unavailable => Core::unavailable(e),
            Class::Corrupt => match e {
                Error::Corrupt(source) => Core::Corrupt(source),
                e => Core::corrupt(e),
            },
            Class::Internal => Core::internal(e),
        }
    }
}
