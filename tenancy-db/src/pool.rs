//! Pools and transactions: [`TenantPool`] and [`TenantTx`] for tenant work,
//! [`PlatformPool`] and [`PlatformTx`] for explicit cross-tenant work.
//!
//! A [`TenantTx`] is a transaction whose tenant is set for that transaction only (the setting
//! is transaction-local, so `COMMIT` or `ROLLBACK` ends it). It rolls back when dropped,
//! whether by an early return, a panic or a cancelled future, and the connection goes back to
//! the pool with no tenant on it. Nothing is set on a connection at session level, and no pool
//! hook sets anything.
//!
//! ```no_run
//! use tenancy_core::TenantId;
//! use tenancy_db::{DbConfig, Environment, TenantPool};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tenancy_db::Error> {
//! let config = DbConfig::new("postgres://app_runtime@127.0.0.1/app")?
//!     .with_environment(Environment::Prod);
//! // Audits the catalog first: refuses to start when the role could bypass row-level security.
//! let pool = TenantPool::connect(config).await?;
//! let acme = TenantId::parse("acme").map_err(tenancy_core::Error::from).unwrap();
//!
//! // Commits on Ok, rolls back on Err or panic.
//! let titles: Vec<String> = pool
//!     .scope(&acme, async |tx| {
//!         let rows = sqlx::query_scalar("SELECT title FROM records ORDER BY created_at")
//!             .fetch_all(&mut **tx)
//!             .await?;
//!         Ok::<_, tenancy_db::Error>(rows)
//!     })
//!     .await?;
//!
//! // Or by hand: the transaction rolls back unless committed.
//! let mut tx = pool.begin(&acme).await?;
//! sqlx::query("INSERT INTO records (title, body) VALUES ($1, $2)")
//!     .bind("hello").bind("world")
//!     .execute(&mut *tx)
//!     .await?;
//! tx.commit().await?;
//! # let _ = titles;
//! # Ok(()) }
//! ```

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, Postgres, SqlSafeStr as _};
use tenancy_core::TenantId;

use crate::config::{BeginMode, DbConfig};
use crate::health::{DbHealth, HealthState};
use crate::{Error, Result, audit};

/// Pool figures for metrics and health, read without touching the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PoolMetrics {
    /// The configured maximum number of connections.
    pub max: u32,
    /// Connections open now (idle and in use).
    pub size: u32,
    /// Open connections not in use.
    pub idle: u32,
    /// Connections lent out.
    pub in_use: u32,
    /// Callers waiting for a connection right now.
    pub waiting: u64,
    /// Transactions opened since the pool started.
    pub acquired_total: u64,
    /// Callers that gave up waiting for a connection (acquire timeout).
    pub acquire_timeouts_total: u64,
    /// Connections the release guard closed because they carried a tenant setting.
    pub tainted_closed_total: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    waiting: AtomicU64,
    acquired: AtomicU64,
    timeouts: AtomicU64,
    tainted: Arc<AtomicU64>,
}

/// Counts a caller as waiting until dropped (also when its future is cancelled).
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What [`TenantPool`] and [`PlatformPool`] share: the sqlx pool, figures and health.
pub(crate) struct Shared {
    pub(crate) pool: PgPool,
    pub(crate) stats: Stats,
    pub(crate) max: u32,
    pub(crate) begin_mode: BeginMode,
    pub(crate) commit_check: bool,
    pub(crate) role: String,
    pub(crate) health: Arc<HealthState>,
    /// The bound on each operation of this crate's stores ([`Shared::bounded`]).
    pub(crate) store_timeout: Duration,
    /// How long the server may take to answer a `BEGIN`, or the `ROLLBACK` of a transaction
    /// dropped unfinished (the acquire timeout): a connection whose peer vanished without a
    /// word would otherwise hold its caller, or its pool slot, until the kernel gives the
    /// socket up (about 15 minutes with Linux's defaults).
    pub(crate) answer_timeout: Duration,
}

/// What [`Shared::bounded`] tells the transactions of the operation it runs.
struct Bound {
    /// Raised when the operation is dropped before it finished (its deadline, or a caller
    /// that stopped waiting): a transaction it opened closes its connection instead of
    /// returning it to the pool.
    cut: Arc<AtomicBool>,
    /// The server's own bounds for the transaction's statements and lock waits, in
    /// milliseconds: below the operation's, so that on a live connection the server ends a
    /// slow statement (an error, the connection kept) before the client cuts it.
    server_ms: u64,
}

tokio::task_local! {
    static BOUND: Bound;
}

/// Raises the cut flag when dropped before [`CutOnDrop::finished`]: the operation was
/// dropped while it ran.
struct CutOnDrop(Option<Arc<AtomicBool>>);

impl CutOnDrop {
    fn finished(mut self) {
        self.0 = None;
    }
}

impl Drop for CutOnDrop {
    fn drop(&mut self) {
        if let Some(cut) = &self.0 {
            cut.store(true, Ordering::Relaxed);
        }
    }
}

/// The largest `statement_timeout` and `lock_timeout` PostgreSQL takes, in milliseconds.
const MAX_SERVER_TIMEOUT_MS: u64 = i32::MAX as u64;

/// What an earlier user of a pooled connection may have left in its session that outlives
/// a transaction, and would show that user's rows to the next one: cursors declared `WITH
/// HOLD` (their rows were read under the earlier tenant's policy when it committed) and
/// temporary tables (`CREATE TEMP TABLE .. AS SELECT ..`). Every transaction this crate opens
/// clears both first, in its `BEGIN` message (no extra round trip). The temporary tables are
/// dropped inside the transaction, so a rollback brings them back; the next transaction
/// drops them again before its first statement.
const SESSION_CLEANUP: &str = "; CLOSE ALL; DISCARD TEMP";

/// `SET LOCAL`s that give a transaction opened inside [`Shared::bounded`] the server-side
/// bounds of its operation, to follow its `BEGIN` in the same message; empty outside.
fn bound_settings() -> String {
    BOUND
        .try_with(|b| {
            format!(
                "; SET LOCAL statement_timeout = {0}; SET LOCAL lock_timeout = {0}",
                b.server_ms
            )
        })
        .unwrap_or_default()
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("role", &self.role)
            .field("metrics", &self.metrics())
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn metrics(&self) -> PoolMetrics {
        let size = self.pool.size();
        let idle = u32::try_from(self.pool.num_idle())
            .unwrap_or(u32::MAX)
            .min(size);
        PoolMetrics {
            max: self.max,
            size,
            idle,
            in_use: size - idle,
            waiting: self.stats.waiting.load(Ordering::Relaxed),
            acquired_total: self.stats.acquired.load(Ordering::Relaxed),
            acquire_timeouts_total: self.stats.timeouts.load(Ordering::Relaxed),
            tainted_closed_total: self.stats.tainted.load(Ordering::Relaxed),
        }
    }

    /// Runs one operation of this crate's stores within the store timeout
    /// ([`DbConfig::with_store_timeout`]): [`tenancy_core::Error::Timeout`] past it. The
    /// server's `statement_timeout` cannot end a wait on a connection whose peer vanished
    /// without a reset (a partition, a failover that left the socket half open), which
    /// otherwise lasts until the kernel gives up, many minutes. A transaction the operation
    /// opened then closes its connection rather than queue a `ROLLBACK` on it and return it
    /// to the pool, where it would hang the next user.
    pub(crate) async fn bounded<T>(
        &self,
        operation: impl Future<Output = tenancy_core::Result<T>>,
    ) -> tenancy_core::Result<T> {
        let cut = Arc::new(AtomicBool::new(false));
        let server = self.store_timeout.mul_f64(0.8);
        let bound = Bound {
            cut: Arc::clone(&cut),
            // PostgreSQL takes these settings up to `INT_MAX` milliseconds (about 24.8 days)
            // and refuses the `SET` above: a longer bound leaves the server at its largest.
            server_ms: u64::try_from(server.as_millis())
                .unwrap_or(u64::MAX)
                .clamp(1, MAX_SERVER_TIMEOUT_MS),
        };
        let run = std::pin::pin!(tokio::time::timeout(
            self.store_timeout,
            BOUND.scope(bound, operation)
        ));
        // Declared after `run`, so dropped before it when this future is dropped mid-way (a
        // caller that stopped waiting): the flag is up before the transaction goes.
        let guard = CutOnDrop(Some(Arc::clone(&cut)));
        match run.await {
            Ok(done) => {
                guard.finished();
                done
            }
            Err(_) => {
                // Raised (by the guard) before the operation and its transaction are dropped.
                drop(guard);
                tracing::warn!(
                    target: "tenancy_db::pool",
                    timeout = ?self.store_timeout,
                    role = %self.role,
                    "database operation past its bound; closing its connection"
                );
                Err(tenancy_core::Error::Timeout)
            }
        }
    }

    fn map_acquire(&self, e: sqlx::Error) -> Error {
        match e {
            sqlx::Error::PoolTimedOut => {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                Error::from(e)
            }
            // The server refused the connection the pool opened for this call (not accepting
            // connections, starting up, too many clients): a failed connect, classified as one.
            e @ sqlx::Error::Database(_) => Error::Connect {
                attempts: 1,
                source: e,
            },
            e => Error::from(e),
        }
    }

    /// Opens a transaction with `statement` (a `BEGIN` and what follows it in the same
    /// message). A pooled connection that turns out dead (the server restarted or ended it,
    /// or does not answer within the acquire timeout) is discarded and the next one tried: a
    /// failed `BEGIN` has done nothing, so this retry is safe.
    async fn begin_with(&self, statement: &str) -> Result<OpenTx> {
        let waiting = Waiting::new(&self.stats.waiting);
        let mut attempt = 0;
        let tx = loop {
            attempt += 1;
            let conn = self.pool.acquire().await.map_err(|e| self.map_acquire(e))?;
            // Until BEGIN has completed, dropping (an error or a cancelled future) closes the
            // connection: the server may already be inside the transaction, and sqlx does not
            // roll back a BEGIN it has not seen complete.
            let mut pending = Pending(Some(conn));
            let stmt = Some(sqlx::AssertSqlSafe(statement.to_owned()).into_sql_str());
            let begun = tokio::time::timeout(
                self.answer_timeout,
                tm::begin::<Postgres>(pending.conn(), stmt),
            )
            .await
            // No answer: `pending` closes the connection, and the next one is tried, as
            // for any connection found dead.
            .unwrap_or_else(|_| Err(no_answer("BEGIN", self.answer_timeout)));
            match begun {
                Ok(()) => break pending.into_open(self.commit_check, self.answer_timeout),
                Err(e) if attempt <= self.max && connection_lost(&e) => {
                    tracing::debug!(target: "tenancy_db::pool", error = %e, "discarding a dead connection");
                }
                Err(e) => return Err(Error::Database(e)),
            }
        };
        drop(waiting);
        self.stats.acquired.fetch_add(1, Ordering::Relaxed);
        Ok(tx)
    }

    async fn begin_plain(&self) -> Result<OpenTx> {
        self.begin_with(&format!("BEGIN{SESSION_CLEANUP}{}", bound_settings()))
            .await
    }

    async fn begin_tenant(&self, tenant: &TenantId) -> Result<OpenTx> {
        match self.begin_mode {
            BeginMode::OneMessage => {
                let sql = one_message_begin(tenant)? + &bound_settings();
                self.begin_with(&sql).await
            }
            BeginMode::TwoRoundTrips => {
                let mut tx = self.begin_plain().await?;
                sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
                    .bind(tenant.as_str())
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }
}

/// The transaction manager's operations (the trait lives in `sqlx-core`; sqlx does not
/// re-export it).
mod tm {
    use sqlx::{Database, SqlStr};
    use sqlx_core::transaction::TransactionManager as _;

    pub(super) async fn begin<DB: Database>(
        conn: &mut DB::Connection,
        statement: Option<SqlStr>,
    ) -> Result<(), sqlx::Error> {
        DB::TransactionManager::begin(conn, statement).await
    }

    pub(super) async fn commit<DB: Database>(conn: &mut DB::Connection) -> Result<(), sqlx::Error> {
        DB::TransactionManager::commit(conn).await
    }

    pub(super) async fn rollback<DB: Database>(
        conn: &mut DB::Connection,
    ) -> Result<(), sqlx::Error> {
        DB::TransactionManager::rollback(conn).await
    }

    pub(super) fn start_rollback<DB: Database>(conn: &mut DB::Connection) {
        DB::TransactionManager::start_rollback(conn);
    }
}

/// A connection whose `BEGIN` has not completed: closed, never pooled again, when dropped.
struct Pending(Option<PoolConnection<Postgres>>);

impl Pending {
    fn conn(&mut self) -> &mut PgConnection {
        match self.0.as_mut() {
            Some(c) => c,
            None => unreachable!("a pending connection is only taken by into_open"),
        }
    }

    fn into_open(mut self, commit_check: bool, answer_timeout: Duration) -> OpenTx {
        OpenTx {
            conn: self.0.take(),
            commit_check,
            answer_timeout,
            cut: BOUND.try_with(|b| Arc::clone(&b.cut)).ok(),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(conn) = self.0.as_mut() {
            conn.close_on_drop();
        }
    }
}

/// An open transaction on a pooled connection. Dropped while open (early return, panic,
/// cancelled future), it queues a `ROLLBACK` that the pool flushes before lending the
/// connection again; commit and rollback stay open until the server has answered.
pub(crate) struct OpenTx {
    conn: Option<PoolConnection<Postgres>>,
    /// Probe for an aborted transaction before `COMMIT` ([`DbConfig::with_commit_check`](crate::DbConfig::with_commit_check)).
    commit_check: bool,
    /// The bound on the rollback of a transaction dropped unfinished ([`Shared::answer_timeout`]).
    answer_timeout: Duration,
    /// Raised when the operation that opened the transaction was dropped at its deadline
    /// ([`Shared::bounded`]): the connection is closed, not pooled.
    cut: Option<Arc<AtomicBool>>,
}

impl OpenTx {
    fn conn(&mut self) -> &mut PgConnection {
        match self.conn.as_mut() {
            Some(c) => c,
            None => unreachable!("an open transaction always holds its connection"),
        }
    }

    /// Commits, or fails with [`Error::Aborted`] when an earlier statement aborted the
    /// transaction: PostgreSQL answers `COMMIT` in an aborted transaction with the tag
    /// `ROLLBACK` and no error, and sqlx reports that as success. A `SELECT 1` probe first
    /// (one extra round trip, unless [`DbConfig::with_commit_check`](crate::DbConfig::with_commit_check) turned it off) fails with
    /// SQLSTATE `25P02` in exactly that state; the transaction is then rolled back and the
    /// connection returned clean.
    async fn commit(mut self) -> Result<()> {
        let probe = if self.commit_check {
            sqlx::raw_sql("SELECT 1").execute(self.conn()).await.err()
        } else {
            None
        };
        if let Some(e) = probe {
            if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("25P02") {
                tm::rollback::<Postgres>(self.conn()).await?;
                self.conn = None;
                return Err(Error::Aborted(e));
            }
            // Anything else (a lost connection): dropping `self` queues the rollback.
            return Err(e.into());
        }
        tm::commit::<Postgres>(self.conn()).await?;
        self.conn = None;
        Ok(())
    }

    async fn rollback(mut self) -> Result<()> {
        tm::rollback::<Postgres>(self.conn()).await?;
        self.conn = None;
        Ok(())
    }
}

impl Drop for OpenTx {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.cut.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            // Maybe waiting on a peer that is gone: a queued ROLLBACK would hang the pool's
            // next use of it. The server rolls back when the connection ends.
            conn.close_on_drop();
            return;
        }
        // Dropped unfinished (an error, a panic, a cancelled future, perhaps in the middle of
        // a statement): the rollback gets a bound, and a connection that does not answer in
        // time is closed rather than pooled. The server rolls back when it ends.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tm::start_rollback::<Postgres>(&mut conn);
            return;
        };
        let bound = self.answer_timeout;
        runtime.spawn(async move {
            match tokio::time::timeout(bound, tm::rollback::<Postgres>(&mut conn)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(target: "tenancy_db::pool", error = %e, "rollback of a dropped transaction failed; closing its connection");
                    conn.close_on_drop();
                }
                Err(_) => {
                    tracing::warn!(target: "tenancy_db::pool", "the server did not answer the rollback of a dropped transaction in {bound:?}; closing its connection");
                    conn.close_on_drop();
                }
            }
        });
    }
}

/// The error for a server that did not answer `what` within `bound`.
fn no_answer(what: &str, bound: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the server did not answer {what} within {bound:?}"),
    ))
}

impl Deref for OpenTx {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        match self.conn.as_ref() {
            Some(c) => c,
            None => unreachable!("an open transaction always holds its connection"),
        }
    }
}

impl DerefMut for OpenTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn()
    }
}

/// The one-message form: `BEGIN`, the session's leftovers cleared ([`SESSION_CLEANUP`]),
/// then `SET LOCAL app.tenant_id = '<tenant>'`.
///
/// A [`TenantId`] holds only `[a-z0-9_-]` (checked by its only constructor); the check is
/// repeated here so that this function alone shows no quote or backslash can reach the text.
pub(crate) fn one_message_begin(tenant: &TenantId) -> Result<String> {
    let t = tenant.as_str();
    let safe = !t.is_empty()
        && t.len() <= tenancy_core::TENANT_ID_MAX_LEN
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !safe {
        return Err(Error::InvalidIdentifier {
            what: "tenant id",
            reason: "may contain only a-z, 0-9, '-' and '_'",
        });
    }
    Ok(format!(
        "BEGIN{SESSION_CLEANUP}; SET LOCAL app.tenant_id = '{t}'"
    ))
}

/// Whether `e` says the connection itself is gone (I/O failure, or the server ended the
/// session), as opposed to a failure of the statement.
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")),
        _ => false,
    }
}

fn retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            // cannot_connect_now (starting up), too_many_connections, connection exceptions.
            c == "57P03" || c == "53300" || c.starts_with("08")
        }),
        _ => false,
    }
}

/// The backoff after `delay`: doubled, capped at `max`, never overflowing (a configured
/// `Duration::MAX` stays `Duration::MAX`).
fn next_backoff(delay: Duration, max: Duration) -> Duration {
    delay.saturating_mul(2).min(max)
}

/// Connections this pool may need from the server at once: every pooled connection, plus the
/// dedicated one the health ping opens when the pool is fully lent out.
fn connections_needed(pool_max: u32) -> i64 {
    i64::from(pool_max) + 1
}

/// Why the server may refuse some of the pool's connections, if it may: more than the
/// server's `max_connections` minus the slots reserved for superusers (and, from PostgreSQL
/// 16, `reserved_connections`), or more than the role's `CONNECTION LIMIT`. Other clients
/// and other instances of the service share both limits, so this only catches a pool that
/// cannot fit even alone.
fn pool_size_problem(
    pool_max: u32,
    server_max: i64,
    reserved: i64,
    role_limit: i64,
) -> Option<String> {
    let needed = connections_needed(pool_max);
    let available = server_max.saturating_sub(reserved);
    if needed > available {
        return Some(format!(
            "the pool may open {needed} connections (max {pool_max} plus one for the health \
             ping) but the server allows {available} for non-superusers \
             (max_connections {server_max} minus {reserved} reserved)"
        ));
    }
    if role_limit >= 0 && needed > role_limit {
        return Some(format!(
            "the pool may open {needed} connections (max {pool_max} plus one for the health \
             ping) but the role's CONNECTION LIMIT is {role_limit}"
        ));
    }
    None
}

/// Warns (target `tenancy_db::pool`) when the server's or the role's connection limit is
/// smaller than the pool: the pool would fail to grow under load, with errors that look like
/// an outage (SQLSTATE `53300`). A failed check is only logged at debug level.
async fn check_pool_size(conn: &mut PgConnection, pool_max: u32) {
    let limits: Result<(i64, i64, i64), sqlx::Error> = sqlx::query_as(
        "SELECT current_setting('max_connections')::int8,
                current_setting('superuser_reserved_connections')::int8
                  + coalesce(nullif(current_setting('reserved_connections', true), ''), '0')::int8,
                coalesce((SELECT rolconnlimit::int8 FROM pg_roles WHERE rolname = current_user), -1)",
    )
    .fetch_one(&mut *conn)
    .await;
    match limits {
        Ok((server_max, reserved, role_limit)) => {
            if let Some(problem) = pool_size_problem(pool_max, server_max, reserved, role_limit) {
                tracing::warn!(target: "tenancy_db::pool", "{problem}; lower the pool size or raise the limit");
            }
        }
        Err(e) => {
            tracing::debug!(target: "tenancy_db::pool", error = %e, "could not read the connection limits");
        }
    }
}

pub(crate) async fn connect_shared(
    config: &DbConfig,
    component: &'static str,
) -> Result<Arc<Shared>> {
    let stats = Stats::default();
    let max = config.max_connections();
    let mut options = PgPoolOptions::new()
        .max_connections(max)
        .min_connections(config.min_connections.min(max))
        .acquire_timeout(config.acquire_timeout)
        // Released connections are pinged by the pool; ping again only after a long idle.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > Duration::from_secs(60) {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        });
    if config.release_guard {
        let tainted = Arc::clone(&stats.tainted);
        options = options.after_release(move |conn, _meta| {
            let tainted = Arc::clone(&tainted);
            Box::pin(async move {
                // Any rollback a dropped transaction queued is flushed before this runs.
                let setting: Option<String> =
                    sqlx::query_scalar("SELECT current_setting('app.tenant_id', true)")
                        .fetch_one(&mut *conn)
                        .await?;
                let clean = setting.as_deref().is_none_or(str::is_empty);
                if !clean {
                    tainted.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        target: "tenancy_db::pool",
                        "closing a connection that carried a session-level tenant setting"
                    );
                }
                Ok(clean)
            })
        });
    }

    // Probe with single connections so that each attempt fails fast (a pool's own connect
    // keeps retrying until its acquire timeout), then open the pool.
    let connect = config.connect_options();
    let mut delay = config.connect_backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        // A host that drops packets, or a server that accepts TCP and never answers, would
        // otherwise hang start-up for ever: each attempt gets the connect timeout.
        let attempt_result = match tokio::time::timeout(
            config.connect_timeout,
            PgConnection::connect_with(&connect),
        )
        .await
        {
            Ok(result) => result,
            Err(_elapsed) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "connect attempt timed out after {:?}",
                    config.connect_timeout
                ),
            ))),
        };
        match attempt_result {
            Ok(mut conn) => {
                check_pool_size(&mut conn, max).await;
                let _ = conn.close().await;
                break;
            }
            Err(e) if attempt < config.connect_attempts && retryable(&e) => {
                tracing::warn!(
                    target: "tenancy_db::pool",
                    attempt,
                    error = %e,
                    "database connect failed; retrying in {delay:?}"
                );
                tokio::time::sleep(delay).await;
                delay = next_backoff(delay, config.connect_backoff_max);
            }
            Err(source) => {
                return Err(Error::Connect {
                    attempts: attempt,
                    source,
                });
            }
        }
    }
    let pool = options.connect_lazy_with(connect);

    let shared = Arc::new(Shared {
        pool,
        stats,
        max,
        begin_mode: config.begin_mode,
        commit_check: config.commit_check,
        role: config.username().to_owned(),
        health: Arc::new(HealthState::new(component)),
        store_timeout: config.store_timeout,
        answer_timeout: config.acquire_timeout,
    });
    crate::health::spawn(&shared, config.health_interval, config.health_timeout).await;
    Ok(shared)
}

/// The pool for tenant work: its connections are reached only through a [`TenantTx`] (or an
/// [`UnscopedTx`], on which every tenant table refuses to answer).
///
/// Cheap to clone. Connect it as the runtime role: not superuser, not `BYPASSRLS`, owner of
/// no tenant table; [`TenantPool::connect`] audits exactly that.
#[derive(Clone)]
pub struct TenantPool {
    shared: Arc<Shared>,
}

impl fmt::Debug for TenantPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TenantPool").field(&self.shared).finish()
    }
}

impl TenantPool {
    /// [`Shared::bounded`] on this pool.
    pub(crate) async fn bounded<T>(
        &self,
        operation: impl Future<Output = tenancy_core::Result<T>>,
    ) -> tenancy_core::Result<T> {
        self.shared.bounded(operation).await
    }

    /// Connects (with retry and backoff), then, unless turned off in the configuration,
    /// audits the catalog as the connected role and refuses to serve on any finding
    /// ([`Error::Audit`]). Starts the background health ping.
    pub async fn connect(config: DbConfig) -> Result<Self> {
        let shared = connect_shared(&config, "database").await?;
        let pool = Self { shared };
        if config.catalog_audit {
            let report = pool.audit().await;
            match report {
                Ok(report) if report.is_clean() => {}
                Ok(report) => {
                    pool.close().await;
                    return Err(Error::Audit(report));
                }
                Err(e) => {
                    pool.close().await;
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    /// Opens a transaction for `tenant`. The tenant is set for this transaction only; the
    /// transaction rolls back when the [`TenantTx`] is dropped uncommitted.
    pub async fn begin(&self, tenant: &TenantId) -> Result<TenantTx> {
        let tx = self.shared.begin_tenant(tenant).await?;
        Ok(TenantTx {
            tx,
            tenant: tenant.clone(),
        })
    }

    /// Runs `f` in a transaction for `tenant`: commits when it returns `Ok`, rolls back when
    /// it returns `Err`, panics, or is cancelled.
    pub async fn scope<T, E, F>(&self, tenant: &TenantId, f: F) -> Result<T, E>
    where
        F: AsyncFnOnce(&mut TenantTx) -> Result<T, E>,
        E: From<Error>,
    {
        let mut tx = self.begin(tenant).await?;
        match f(&mut tx).await {
            Ok(value) => {
                tx.commit().await?;
                Ok(value)
            }
            Err(e) => {
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(target: "tenancy_db::pool", error = %rollback, "rollback failed");
                }
                Err(e)
            }
        }
    }

    /// Opens a transaction with no tenant: for work that touches no tenant table (every tenant
    /// table answers it with SQLSTATE `42501`).
    pub async fn begin_unscoped(&self) -> Result<UnscopedTx> {
        Ok(UnscopedTx {
            tx: self.shared.begin_plain().await?,
        })
    }

    /// Audits the catalog as this pool's role (see [`audit::audit_catalog`]).
    pub async fn audit(&self) -> Result<audit::AuditReport> {
        let mut conn = self.shared.pool.acquire().await?;
        audit::audit_catalog(&mut conn, None).await
    }

    /// Pool figures, read without touching the database.
    pub fn metrics(&self) -> PoolMetrics {
        self.shared.metrics()
    }

    /// The health of this pool as a [`HealthCheck`](tenancy_core::HealthCheck) (component
    /// `"database"`), answered from the last background ping.
    pub fn health(&self) -> DbHealth {
        DbHealth::new(&self.shared)
    }

    /// The role connections log in as.
    pub fn role(&self) -> &str {
        &self.shared.role
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.shared.pool.close().await;
    }
}

/// A transaction bound to one tenant. Derefs to [`PgConnection`], so `&mut *tx` is an sqlx
/// executor. Rolls back when dropped without [`TenantTx::commit`].
pub struct TenantTx {
    tx: OpenTx,
    tenant: TenantId,
}

impl fmt::Debug for TenantTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantTx")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl TenantTx {
    /// The tenant this transaction is bound to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Commits; the tenant setting ends with the transaction.
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await
    }

    /// Rolls back; the tenant setting ends with the transaction.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await
    }
}

impl Deref for TenantTx {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for TenantTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

/// A transaction with no tenant set, from [`TenantPool::begin_unscoped`]. Tenant tables
/// refuse it (SQLSTATE `42501`). Rolls back when dropped.
pub struct UnscopedTx {
    tx: OpenTx,
}

impl fmt::Debug for UnscopedTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnscopedTx").finish_non_exhaustive()
    }
}

impl UnscopedTx {
    /// Commits.
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await
    }
}

impl Deref for UnscopedTx {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for UnscopedTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

/// The pool for explicit cross-tenant work (tenant directory, maintenance, reports across
/// tenants), kept apart from [`TenantPool`] so that platform access is a visible choice.
///
/// Connect it as a platform role (which may hold `BYPASSRLS` where cross-tenant reads are
/// intended); it runs no catalog audit. Every [`PlatformPool::begin`] names a reason, which
/// is logged (target `tenancy_db::platform`).
#[derive(Clone)]
pub struct PlatformPool {
    shared: Arc<Shared>,
}

impl fmt::Debug for PlatformPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PlatformPool").field(&self.shared).finish()
    }
}

impl PlatformPool {
    /// [`Shared::bounded`] on this pool.
    pub(crate) async fn bounded<T>(
        &self,
        operation: impl Future<Output = tenancy_core::Result<T>>,
    ) -> tenancy_core::Result<T> {
        self.shared.bounded(operation).await
    }

    /// Connects (with retry and backoff) and starts the background health ping.
    pub async fn connect(config: DbConfig) -> Result<Self> {
        Ok(Self {
            shared: connect_shared(&config, "platform_database").await?,
        })
    }

    /// Opens a platform transaction; `reason` says why cross-tenant access is needed and is
    /// logged with the role.
    pub async fn begin(&self, reason: &str) -> Result<PlatformTx> {
        let tx = self.shared.begin_plain().await?;
        tracing::info!(
            target: "tenancy_db::platform",
            role = %self.shared.role,
            reason,
            "platform transaction"
        );
        Ok(PlatformTx { tx })
    }

    /// A platform transaction for a routine read, logged at debug level (a tenant-directory
    /// lookup happens on every request).
    pub(crate) async fn begin_routine_read(&self, reason: &str) -> Result<PlatformTx> {
        let tx = self.shared.begin_plain().await?;
        tracing::debug!(
            target: "tenancy_db::platform",
            role = %self.shared.role,
            reason,
            "platform transaction"
        );
        Ok(PlatformTx { tx })
    }

    /// Pool figures, read without touching the database.
    pub fn metrics(&self) -> PoolMetrics {
        self.shared.metrics()
    }

    /// The health of this pool (component `"platform_database"`).
    pub fn health(&self) -> DbHealth {
        DbHealth::new(&self.shared)
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.shared.pool.close().await;
    }
}

/// A platform transaction (no tenant set). Rolls back when dropped without
/// [`PlatformTx::commit`].
pub struct PlatformTx {
    tx: OpenTx,
}

impl fmt::Debug for PlatformTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformTx").finish_non_exhaustive()
    }
}

impl PlatformTx {
    /// Commits.
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await
    }
}

impl Deref for PlatformTx {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for PlatformTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_begin_holds_only_the_validated_id() {
        let t = TenantId::parse("acme_1-x").unwrap();
        assert_eq!(
            one_message_begin(&t).unwrap(),
            "BEGIN; CLOSE ALL; DISCARD TEMP; SET LOCAL app.tenant_id = 'acme_1-x'"
        );
    }

    #[test]
    fn backoff_saturates_instead_of_overflowing() {
        let ms = Duration::from_millis;
        assert_eq!(next_backoff(ms(200), ms(5000)), ms(400));
        assert_eq!(next_backoff(ms(4000), ms(5000)), ms(5000));
        assert_eq!(next_backoff(Duration::MAX, Duration::MAX), Duration::MAX);
        assert_eq!(
            next_backoff(Duration::MAX / 2 + ms(1), Duration::MAX),
            Duration::MAX
        );
    }

    #[test]
    fn pool_size_is_compared_with_the_server_and_role_limits() {
        // 100 - 3 reserved = 97 available; a pool of 96 plus the health ping fits.
        assert_eq!(pool_size_problem(96, 100, 3, -1), None);
        let p = pool_size_problem(97, 100, 3, -1).expect("98 > 97");
        assert!(p.contains("98") && p.contains("97"), "{p}");
        // The role's CONNECTION LIMIT (-1 = none).
        assert_eq!(pool_size_problem(9, 100, 3, 10), None);
        let p = pool_size_problem(10, 100, 3, 10).expect("11 > 10");
        assert!(p.contains("CONNECTION LIMIT is 10"), "{p}");
        assert!(pool_size_problem(u32::MAX, i64::MAX, 0, -1).is_none());
    }

    #[test]
    fn retry_only_transient_failures() {
        assert!(retryable(&sqlx::Error::PoolTimedOut));
        assert!(retryable(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        ))));
        assert!(!retryable(&sqlx::Error::RowNotFound));
    }
}
