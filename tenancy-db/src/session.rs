//! [`PgSessionStore`]: sessions in PostgreSQL, under row-level security.
//!
//! How the table is protected: every [`SessionStore`] method names its tenant, so sessions
//! are ordinary tenant data. `tenancy.sessions` is a tenant table (`tenant_id` leads its
//! primary key, `tenancy.protect_table` applied) and the store reaches it only through a
//! [`TenantTx`](crate::TenantTx) of the session's tenant: a session id presented with another
//! tenant is invisible to the database itself, not just filtered by the store.
//!
//! Expiry follows the store's [`Clock`](tenancy_core::Clock) (the instants are sent as bind
//! parameters), so it can be tested on a [`ManualClock`](tenancy_core::ManualClock). Ended
//! sessions of a user are deleted when that user creates a session; [`PgSessionStore::purge_ended`]
//! deletes a whole tenant's.
//!
//! ```no_run
//! use tenancy_core::{NewSession, SessionStore, TenantId, UserId};
//! use tenancy_db::{DbConfig, PgSessionStore, TenantPool};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = TenantPool::connect(DbConfig::new("postgres://app_runtime@127.0.0.1/app")?).await?;
//! let store = PgSessionStore::new(pool);
//! let (acme, alice) = (TenantId::parse("acme")?, UserId::parse("alice")?);
//! let session = store.create(NewSession::new(acme.clone(), alice)).await?;
//! assert!(store.load(&acme, &session.id).await?.is_some());
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::types::Json;
use tenancy_core::{
    Error as CoreError, Health, HealthCheck, NewSession, Result, Session, SessionAdmin,
    SessionData, SessionId, SessionStore, SharedClock, TenantId, UserId, system_clock,
};
use time::OffsetDateTime;

use crate::{Error, TenantPool, TenantTx};

/// Sessions in `tenancy.sessions`, one tenant transaction per call.
#[derive(Clone)]
pub struct PgSessionStore {
    pool: TenantPool,
    clock: SharedClock,
}

impl fmt::Debug for PgSessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSessionStore")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

type Row = (
    String,
    String,
    String,
    OffsetDateTime,
    OffsetDateTime,
    OffsetDateTime,
    i64,
    i64,
    Json<SessionData>,
);

/// The `SET` of an activity at `$2`: the later of the stored one and `$2` (an instance whose
/// clock is behind never moves it back), and the idle deadline from it.
const SEEN: &str = "last_seen_at = greatest(last_seen_at, $2),
    deadline = least(
        greatest(last_seen_at, $2) + make_interval(secs => idle_timeout_secs),
        expires_at
    )";

const COLUMNS: &str = "tenant_id, id, user_id, created_at, last_seen_at, expires_at, idle_timeout_secs, version, data";

fn decode(row: Row) -> Result<Session> {
    let (tenant, id, user, created_at, last_seen_at, expires_at, idle, version, Json(data)) = row;
    let corrupt = |e: &dyn fmt::Display| CoreError::corrupt(format!("session row: {e}"));
    Ok(Session {
        id: SessionId::parse(&id).map_err(|e| corrupt(&e))?,
        tenant: TenantId::parse(&tenant).map_err(|e| corrupt(&e))?,
        user: UserId::parse(&user).map_err(|e| corrupt(&e))?,
        created_at,
        last_seen_at,
        expires_at,
        idle_timeout_secs: u64::try_from(idle).map_err(|e| corrupt(&e))?,
        version: u64::try_from(version).map_err(|e| corrupt(&e))?,
        data,
    })
}

/// PostgreSQL keeps microseconds: round instants down so that what is returned equals what
/// is stored.
fn micros(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000)
        .unwrap_or(t)
}

fn db(e: Error) -> CoreError {
    e.into()
}

fn range(what: &'static str) -> CoreError {
    Error::OutOfRange(what.into()).into()
}

impl PgSessionStore {
    /// A store on the system clock. The pool's role needs the grants of
    /// [`grant_runtime_role`](crate::schema::grant_runtime_role).
    pub fn new(pool: TenantPool) -> Self {
        Self::with_clock(pool, system_clock())
    }

    /// A store whose expiry follows `clock`.
    pub fn with_clock(pool: TenantPool, clock: SharedClock) -> Self {
        Self { pool, clock }
    }

    fn now(&self) -> OffsetDateTime {
        micros(self.clock.now())
    }

    async fn begin(&self, tenant: &TenantId) -> Result<TenantTx> {
        self.pool.begin(tenant).await.map_err(db)
    }

    /// Deletes every ended session of `tenant`; returns how many. The sessions are found by
    /// their deadline (an index of the migrations) and deleted in transactions of at most a
    /// thousand rows each.
    pub async fn purge_ended(&self, tenant: &TenantId) -> Result<u64> {
        let now = self.now();
        crate::purge_in_batches(|| async move {
            let mut tx = self.begin(tenant).await?;
            let n = sqlx::query(
                "DELETE FROM tenancy.sessions WHERE (tenant_id, id) IN
                   (SELECT tenant_id, id FROM tenancy.sessions WHERE deadline <= $1 LIMIT $2)",
            )
            .bind(now)
            .bind(crate::PURGE_BATCH)
            .execute(&mut *tx)
            .await
            .map_err(|e| db(e.into()))?
            .rows_affected();
            tx.commit().await.map_err(db)?;
            Ok(n)
        })
        .await
    }

    async fn fetch_live(
        tx: &mut TenantTx,
        id: &SessionId,
        now: OffsetDateTime,
    ) -> Result<Option<Session>> {
        let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM tenancy.sessions WHERE id = $1 AND deadline > $2"
        )))
        .bind(id.as_str())
        .bind(now)
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| db(e.into()))?;
        row.map(decode).transpose()
    }
}

fn deadline(
    last_seen: OffsetDateTime,
    idle_secs: u64,
    expires: OffsetDateTime,
) -> Result<OffsetDateTime> {
    let idle = last_seen
        .checked_add(
            time::Duration::try_from(Duration::from_secs(idle_secs))
                .map_err(|_| range("idle timeout"))?,
        )
        .ok_or_else(|| range("idle timeout"))?;
    Ok(idle.min(expires))
}

#[async_trait]
impl SessionStore for PgSessionStore {
    async fn create(&self, new: NewSession) -> Result<Session> {
        self.pool
            .bounded(async {
                // The bounds every session store keeps (the memory and Redis stores alike).
                new.check_bounds()?;
                let now = self.now();
                let ttl = time::Duration::try_from(new.absolute_ttl)
                    .map_err(|_| range("absolute lifetime"))?;
                now.checked_add(ttl)
                    .ok_or_else(|| range("absolute lifetime"))?;
                let session = new.into_session(now);
                let idle =
                    i64::try_from(session.idle_timeout_secs).map_err(|_| range("idle timeout"))?;
                let end = deadline(now, session.idle_timeout_secs, session.expires_at)?;
                let mut tx = self.begin(&session.tenant).await?;
                // Reclaim this user's ended sessions on the way (bounded by the per-user index).
                sqlx::query("DELETE FROM tenancy.sessions WHERE user_id = $1 AND deadline <= $2")
                    .bind(session.user.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db(e.into()))?;
                sqlx::query(
                    "INSERT INTO tenancy.sessions
                     (tenant_id, id, user_id, created_at, last_seen_at, expires_at,
                      idle_timeout_secs, deadline, version, data)
                 VALUES ($1, $2, $3, $4, $4, $5, $6, $7, 1, $8)",
                )
                .bind(session.tenant.as_str())
                .bind(session.id.as_str())
                .bind(session.user.as_str())
                .bind(now)
                .bind(session.expires_at)
                .bind(idle)
                .bind(end)
                .bind(Json(&session.data))
                .execute(&mut *tx)
                .await
                .map_err(|e| db(e.into()))?;
                tx.commit().await.map_err(db)?;
                Ok(session)
            })
            .await
    }

    async fn load(&self, tenant: &TenantId, id: &SessionId) -> Result<Option<Session>> {
        self.pool
            .bounded(async {
                let now = self.now();
                let mut tx = self.begin(tenant).await?;
                let s = Self::fetch_live(&mut tx, id, now).await?;
                tx.commit().await.map_err(db)?;
                Ok(s)
            })
            .await
    }

    async fn touch(&self, tenant: &TenantId, id: &SessionId) -> Result<Option<Session>> {
        self.pool
            .bounded(async {
                let now = self.now();
                let mut tx = self.begin(tenant).await?;
                let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "UPDATE tenancy.sessions
                 SET {SEEN}
                 WHERE id = $1 AND deadline > $2
                 RETURNING {COLUMNS}"
                )))
                .bind(id.as_str())
                .bind(now)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| db(e.into()))?;
                tx.commit().await.map_err(db)?;
                row.map(decode).transpose()
            })
            .await
    }

    async fn save(&self, session: &Session) -> Result<Session> {
        self.pool
            .bounded(async {
                session.check_bounds()?;
                let now = self.now();
                let idle =
                    i64::try_from(session.idle_timeout_secs).map_err(|_| range("idle timeout"))?;
                let version = i64::try_from(session.version).map_err(|_| range("version"))?;
                let mut tx = self.begin(&session.tenant).await?;
                // Lock the live row, then decide: absent or ended -> NotFound, other version ->
                // Conflict. Id, tenant, user, creation and absolute expiry are never written.
                let current: Option<(i64, OffsetDateTime, OffsetDateTime)> = sqlx::query_as(
                    "SELECT version, expires_at, last_seen_at FROM tenancy.sessions
                 WHERE id = $1 AND deadline > $2 FOR UPDATE",
                )
                .bind(session.id.as_str())
                .bind(now)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| db(e.into()))?;
                let Some((stored_version, expires_at, seen)) = current else {
                    return Err(CoreError::NotFound);
                };
                if stored_version != version {
                    return Err(CoreError::Conflict(
                        "session was changed by another writer".into(),
                    ));
                }
                // The later of the stored activity and now: an instance whose clock is behind never
                // moves it back (nor the idle deadline with it).
                let seen = seen.max(now);
                let end = deadline(seen, session.idle_timeout_secs, expires_at)?;
                let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "UPDATE tenancy.sessions
                 SET data = $2, idle_timeout_secs = $3, last_seen_at = $4, deadline = $5,
                     version = version + 1
                 WHERE id = $1
                 RETURNING {COLUMNS}"
                )))
                .bind(session.id.as_str())
                .bind(Json(&session.data))
                .bind(idle)
                .bind(seen)
                .bind(end)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| db(e.into()))?;
                tx.commit().await.map_err(db)?;
                decode(row)
            })
            .await
    }

    async fn delete(&self, tenant: &TenantId, id: &SessionId) -> Result<bool> {
        self.pool
            .bounded(async {
                let now = self.now();
                let mut tx = self.begin(tenant).await?;
                let live: Option<bool> = sqlx::query_scalar(
                    "DELETE FROM tenancy.sessions WHERE id = $1 RETURNING deadline > $2",
                )
                .bind(id.as_str())
                .bind(now)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| db(e.into()))?;
                tx.commit().await.map_err(db)?;
                Ok(live.unwrap_or(false))
            })
            .await
    }

    async fn rotate(&self, tenant: &TenantId, id: &SessionId) -> Result<Session> {
        self.pool
            .bounded(async {
                let now = self.now();
                let fresh = SessionId::generate();
                let mut tx = self.begin(tenant).await?;
                let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "UPDATE tenancy.sessions
                 SET id = $3, version = version + 1, {SEEN}
                 WHERE id = $1 AND deadline > $2
                 RETURNING {COLUMNS}"
                )))
                .bind(id.as_str())
                .bind(now)
                .bind(fresh.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| db(e.into()))?;
                tx.commit().await.map_err(db)?;
                row.map(decode).transpose()?.ok_or(CoreError::NotFound)
            })
            .await
    }
}

#[async_trait]
impl SessionAdmin for PgSessionStore {
    async fn list_user(&self, tenant: &TenantId, user: &UserId) -> Result<Vec<Session>> {
        self.pool
            .bounded(async {
                let now = self.now();
                let mut tx = self.begin(tenant).await?;
                let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM tenancy.sessions
                 WHERE user_id = $1 AND deadline > $2
                 ORDER BY created_at, id"
                )))
                .bind(user.as_str())
                .bind(now)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| db(e.into()))?;
                tx.commit().await.map_err(db)?;
                rows.into_iter().map(decode).collect()
            })
            .await
    }

    async fn revoke_user(&self, tenant: &TenantId, user: &UserId) -> Result<u64> {
        self.pool
            .bounded(async {
                let now = self.now();
                let mut tx = self.begin(tenant).await?;
                let live: i64 = sqlx::query_scalar(
                "WITH gone AS (DELETE FROM tenancy.sessions WHERE user_id = $1 RETURNING deadline)
                 SELECT count(*) FILTER (WHERE deadline > $2) FROM gone",
            )
            .bind(user.as_str())
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db(e.into()))?;
                tx.commit().await.map_err(db)?;
                Ok(u64::try_from(live).unwrap_or(0))
            })
            .await
    }
}

#[async_trait]
impl HealthCheck for PgSessionStore {
    fn component(&self) -> &str {
        "sessions"
    }

    async fn check(&self) -> Health {
        self.pool.health().snapshot()
    }
}
