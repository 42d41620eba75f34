//! Pool configuration: [`DbConfig`] with per-[`Environment`] defaults.
//!
//! ```
//! use std::time::Duration;
//! use tenancy_db::{DbConfig, Environment};
//!
//! let config = DbConfig::new("postgres://app@127.0.0.1:5432/app")?
//!     .with_environment(Environment::Prod)
//!     .with_statement_timeout(Duration::from_secs(10));
//! assert_eq!(config.max_connections(), 20);
//! assert_eq!(config.with_max_connections(8).max_connections(), 8);
//! # Ok::<(), tenancy_db::Error>(())
//! ```

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use crate::{Error, Result};

/// Where the service runs; picks the default pool size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Environment {
    /// A developer's machine: 5 connections.
    #[default]
    Dev,
    /// Test and CI: 10 connections.
    Test,
    /// Production: 20 connections.
    Prod,
}

impl Environment {
    /// The default number of connections for this environment.
    pub const fn default_max_connections(self) -> u32 {
        match self {
            Self::Dev => 5,
            Self::Test => 10,
            Self::Prod => 20,
        }
    }

    /// `"dev"`, `"test"` or `"prod"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Dev => "dev",
            Self::Test => "test",
            Self::Prod => "prod",
        }
    }
}

impl FromStr for Environment {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dev" | "development" => Ok(Self::Dev),
            "test" => Ok(Self::Test),
            "prod" | "production" => Ok(Self::Prod),
            _ => Err(Error::InvalidIdentifier {
                what: "environment",
                reason: "must be dev, test or prod",
            }),
        }
    }
}

/// How [`TenantPool::begin`](crate::TenantPool::begin) opens a tenant transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum BeginMode {
    /// `BEGIN; CLOSE ALL; DISCARD TEMP; SET LOCAL app.tenant_id = '<tenant>'` as one
    /// simple-query message (what an earlier user of the connection left, held cursors and
    /// temporary tables, is cleared first): one round trip. The text is built only from a validated
    /// [`TenantId`](tenancy_core::TenantId), whose characters are `[a-z0-9_-]`.
    #[default]
    OneMessage,
    /// `BEGIN; CLOSE ALL; DISCARD TEMP`, then `SELECT set_config('app.tenant_id', $1, true)`
    /// with the tenant as a bind parameter: two round trips, no tenant text in any SQL string.
    TwoRoundTrips,
}

/// Configuration of a [`TenantPool`](crate::TenantPool) or
/// [`PlatformPool`](crate::PlatformPool).
#[derive(Debug, Clone)]
pub struct DbConfig {
    pub(crate) connect: PgConnectOptions,
    pub(crate) environment: Environment,
    pub(crate) max_connections: Option<u32>,
    pub(crate) min_connections: u32,
    pub(crate) acquire_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) connect_attempts: u32,
    pub(crate) connect_backoff: Duration,
    pub(crate) connect_backoff_max: Duration,
    pub(crate) statement_timeout: Duration,
    pub(crate) idle_in_transaction_timeout: Duration,
    pub(crate) health_interval: Duration,
    pub(crate) health_timeout: Duration,
    pub(crate) release_guard: bool,
    pub(crate) catalog_audit: bool,
    pub(crate) begin_mode: BeginMode,
    pub(crate) commit_check: bool,
    pub(crate) store_timeout: Duration,
}

impl DbConfig {
    /// A configuration for the server at `url` (`postgres://user@host:port/db`) with the
    /// defaults of [`Environment::Dev`].
    ///
    /// Errors when the URL cannot be parsed.
    pub fn new(url: &str) -> Result<Self> {
        let connect = PgConnectOptions::from_str(url).map_err(Error::Database)?;
        Ok(Self::from_options(connect))
    }

    /// A configuration from parsed connect options.
    ///
    /// Why these defaults: a 5 s acquire timeout turns an exhausted pool into a quick error
    /// instead of a pile of hung requests; a 30 s `statement_timeout` stops a runaway query
    /// from holding a connection for ever; a 60 s `idle_in_transaction_session_timeout` ends
    /// a transaction a crashed task left open, with its locks; 5 connect attempts with
    /// backoff from 200 ms ride out a database restart, and a 5 s limit on each attempt keeps
    /// a host that never answers from hanging start-up; the catalog audit is on, so a
    /// misconfigured role or table stops the service at start-up instead of leaking rows.
    pub fn from_options(connect: PgConnectOptions) -> Self {
        Self {
            connect,
            environment: Environment::Dev,
            max_connections: None,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            connect_attempts: 5,
            connect_backoff: Duration::from_millis(200),
            connect_backoff_max: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            idle_in_transaction_timeout: Duration::from_secs(60),
            health_interval: Duration::from_secs(30),
            health_timeout: Duration::from_secs(2),
            release_guard: false,
            catalog_audit: true,
            begin_mode: BeginMode::OneMessage,
            commit_check: true,
            store_timeout: Duration::from_secs(10),
        }
    }

    /// With the defaults of another environment (the pool size, unless overridden).
    pub fn with_environment(mut self, environment: Environment) -> Self {
        self.environment = environment;
        self
    }

    /// Overrides the environment's pool size (at least 1).
    pub fn with_max_connections(mut self, max: u32) -> Self {
        self.max_connections = Some(max.max(1));
        self
    }

    /// Keeps at least this many connections open (default 0).
    pub fn with_min_connections(mut self, min: u32) -> Self {
        self.min_connections = min;
        self
    }

    /// How long a caller waits for a free connection before [`Error::PoolTimedOut`] (default
    /// 5 s); also how long the server may take to answer the `BEGIN` on it (then the
    /// connection is closed and the caller gets a timed-out [`Error::Database`]), and the
    /// `ROLLBACK` of a transaction dropped unfinished (then the connection is closed rather
    /// than pooled).
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// How long one start-up connect attempt may take (default 5 s) before it counts as a
    /// failed, retryable attempt: a host that drops packets or a server that accepts TCP but
    /// never answers would otherwise hang start-up.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connect attempts at start-up (at least 1) and the first backoff between them; the
    /// backoff doubles after each failure up to `max_backoff`.
    pub fn with_connect_retry(
        mut self,
        attempts: u32,
        backoff: Duration,
        max_backoff: Duration,
    ) -> Self {
        self.connect_attempts = attempts.max(1);
        self.connect_backoff = backoff;
        self.connect_backoff_max = max_backoff.max(backoff);
        self
    }

    /// The server cancels any statement running longer (sent as a start-up parameter of
    /// each connection, never as a `SET`). Zero disables it.
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// The bound on each operation of this crate's stores (sessions, revoked tokens, the
    /// tenant directory: default 10 s), from acquiring a connection to the commit. Past it the
    /// operation fails with [`tenancy_core::Error::Timeout`] and its connection is closed;
    /// an operation its caller stops waiting for closes its connection the same way. Its
    /// transactions carry `statement_timeout` and `lock_timeout` at 80 % of it (at most
    /// PostgreSQL's largest, about 24.8 days), so that on a live connection the server ends
    /// a slow statement or lock wait first (an error, the connection kept). Those bound each
    /// statement, not the operation: an operation of two statements that both wait long (a
    /// session save, a revocation) can still reach the bound here first.
    ///
    /// Why: the server's own timeouts cannot end a wait on a connection whose peer vanished
    /// without a reset (a network partition, a failover that left the socket half open):
    /// without a bound of its own, a request waits until the kernel gives up on the
    /// connection, many minutes. 10 s is above the acquire timeout (5 s), so an exhausted
    /// pool still reports itself as such, and far above the few milliseconds these
    /// operations take. Values under 100 ms are raised to 100 ms.
    pub fn with_store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout.max(Duration::from_millis(100));
        self
    }

    /// The server ends any session idle inside a transaction for longer. Zero disables it.
    pub fn with_idle_in_transaction_timeout(mut self, timeout: Duration) -> Self {
        self.idle_in_transaction_timeout = timeout;
        self
    }

    /// How often the background health task pings the database (default 30 s), and how long
    /// one ping may take (default 2 s).
    pub fn with_health_interval(mut self, interval: Duration, timeout: Duration) -> Self {
        self.health_interval = interval.max(Duration::from_millis(10));
        self.health_timeout = timeout;
        self
    }

    /// Opt-in: when a connection comes back to the pool, check that it carries no tenant
    /// setting and close it when it does (one extra round trip per release).
    ///
    /// A transaction-local setting cannot outlive its transaction; this catches application
    /// SQL that set `app.tenant_id` for the whole session (`set_config(.., false)`).
    pub fn with_release_guard(mut self, on: bool) -> Self {
        self.release_guard = on;
        self
    }

    /// Whether [`TenantPool::connect`](crate::TenantPool::connect) audits the catalog and
    /// refuses to serve on any finding (default on; turn it off only when the audit runs as
    /// a separate deployment step).
    pub fn with_catalog_audit(mut self, on: bool) -> Self {
        self.catalog_audit = on;
        self
    }

    /// Whether a commit first checks that no earlier statement aborted the transaction
    /// (default on: one extra round trip per commit).
    ///
    /// Why on by default: PostgreSQL answers `COMMIT` in an aborted transaction with
    /// `ROLLBACK` and no error, so code that swallowed a failed statement and committed would
    /// lose every write of the transaction without a word; with the check, the commit fails
    /// with [`Error::Aborted`](crate::Error::Aborted). Turn it off only where every statement's
    /// error is propagated (the `?` operator all the way) and the round trip matters.
    pub fn with_commit_check(mut self, on: bool) -> Self {
        self.commit_check = on;
        self
    }

    /// How tenant transactions are opened (default [`BeginMode::OneMessage`]).
    pub fn with_begin_mode(mut self, mode: BeginMode) -> Self {
        self.begin_mode = mode;
        self
    }

    /// The environment.
    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// The pool size in force: the override, or the environment's default.
    pub fn max_connections(&self) -> u32 {
        self.max_connections
            .unwrap_or_else(|| self.environment.default_max_connections())
    }

    /// The connect options, with the timeouts added as start-up parameters.
    pub(crate) fn connect_options(&self) -> PgConnectOptions {
        // PostgreSQL takes at most i32::MAX milliseconds (about 24.8 days) for these; a
        // larger value would make every connection fail, so it is capped.
        let ms = |d: Duration| d.as_millis().min(2_147_483_647).to_string();
        let mut opts = self.connect.clone().options([
            ("statement_timeout", ms(self.statement_timeout)),
            (
                "idle_in_transaction_session_timeout",
                ms(self.idle_in_transaction_timeout),
            ),
        ]);
        if self.connect.get_application_name().is_none() {
            opts = opts.application_name("tenancy");
        }
        opts
    }

    /// The user name connections log in as.
    pub fn username(&self) -> &str {
        self.connect.get_username()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_sizes_per_environment() {
        let c = DbConfig::new("postgres://u@localhost/db").unwrap();
        assert_eq!(c.max_connections(), 5);
        assert_eq!(
            c.clone()
                .with_environment(Environment::Test)
                .max_connections(),
            10
        );
        assert_eq!(
            c.clone()
                .with_environment(Environment::Prod)
                .max_connections(),
            20
        );
        assert_eq!(c.with_max_connections(0).max_connections(), 1);
        assert_eq!("prod".parse::<Environment>().unwrap(), Environment::Prod);
        assert!("staging".parse::<Environment>().is_err());
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(DbConfig::new("not a url").is_err());
    }
}
