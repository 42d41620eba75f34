//! [`PgDenylist`]: revoked token ids in PostgreSQL, under row-level security, shared by every
//! instance of a service.
//!
//! `tenancy.revoked_tokens` is a tenant table (`tenant_id` leads its primary key,
//! `tenancy.protect_table` applied) reached only through a [`TenantTx`] of
//! the token's tenant. The token id is stored as bytes, so any text a token carries is an
//! opaque value, never SQL and never a pattern. Whether an entry has ended is decided on the
//! denylist's [`Clock`](tenancy_core::Clock); entries ended for longer than [`GC_GRACE_SECS`]
//! are deleted a few at a time by later revocations in that tenant, and all at once by
//! [`PgDenylist::purge_ended`]. The grace keeps an instance whose clock runs ahead from
//! deleting an entry that an instance whose clock runs behind still needs.
//!
//! ```no_run
//! use tenancy_core::{Denylist, TenantId};
//! use tenancy_db::{DbConfig, PgDenylist, TenantPool};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = TenantPool::connect(DbConfig::new("postgres://app_runtime@127.0.0.1/app")?).await?;
//! let denylist = PgDenylist::new(pool);
//! let acme = TenantId::parse("acme")?;
//! denylist.revoke(&acme, "token-1", 4_102_444_800).await?;
//! assert!(denylist.is_revoked(&acme, "token-1").await?);
//! # Ok(()) }
//! ```

use std::fmt;

use async_trait::async_trait;
use tenancy_core::{
    Denylist, Error as CoreError, Result, SharedClock, TenantId, check_jti, system_clock,
};

use crate::{Error, TenantPool, TenantTx};

/// An entry is deleted only this long after its `expires_at` on the deleting instance's clock,
/// so that clocks that disagree by less than this cannot end an entry early for another
/// instance (the same grace as the Redis denylist's).
pub const GC_GRACE_SECS: i64 = 60;

/// How many ended entries a revocation deletes on its way (a bounded amount of work per call,
/// so that a tenant's table never grows without bound however it is used).
const SWEEP_PER_REVOKE: i64 = 32;

/// Revoked token ids in `tenancy.revoked_tokens`, one tenant transaction per call.
#[derive(Clone)]
pub struct PgDenylist {
    pool: TenantPool,
    clock: SharedClock,
}

impl fmt::Debug for PgDenylist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgDenylist")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

fn db(e: impl Into<Error>) -> CoreError {
    e.into().into()
}

impl PgDenylist {
    /// A denylist on the system clock. The pool's role needs the grants of
    /// [`grant_runtime_role`](crate::schema::grant_runtime_role).
    pub fn new(pool: TenantPool) -> Self {
        Self::with_clock(pool, system_clock())
    }

    /// A denylist whose expiry follows `clock`.
    pub fn with_clock(pool: TenantPool, clock: SharedClock) -> Self {
        Self { pool, clock }
    }

    fn now(&self) -> i64 {
        self.clock.now().unix_timestamp()
    }

    async fn begin(&self, tenant: &TenantId) -> Result<TenantTx> {
        self.pool.begin(tenant).await.map_err(db)
    }

    /// Deletes every entry of `tenant` ended for longer than [`GC_GRACE_SECS`]; returns how
    /// many. The entries are deleted in transactions of at most a thousand rows each.
    ///
    /// # Errors
    /// `Unavailable` when the database cannot be reached.
    pub async fn purge_ended(&self, tenant: &TenantId) -> Result<u64> {
        let before = self.now().saturating_sub(GC_GRACE_SECS);
        crate::purge_in_batches(|| async move {
            let mut tx = self.begin(tenant).await?;
            let n = sqlx::query(
                "DELETE FROM tenancy.revoked_tokens WHERE (tenant_id, jti) IN
                   (SELECT tenant_id, jti FROM tenancy.revoked_tokens
                    WHERE expires_at <= $1 LIMIT $2)",
            )
            .bind(before)
            .bind(crate::PURGE_BATCH)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
            tx.commit().await.map_err(db)?;
            Ok(n)
        })
        .await
    }
}

#[async_trait]
impl Denylist for PgDenylist {
    async fn is_revoked(&self, tenant: &TenantId, jti: &str) -> Result<bool> {
        self.pool
            .bounded(async {
                if check_jti(jti).is_err() {
                    // Never stored (`revoke` refuses it), so never revoked.
                    return Ok(false);
                }
                let now = self.now();
                let mut tx = self.begin(tenant).await?;
                let revoked: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM tenancy.revoked_tokens
                                WHERE jti = $1 AND expires_at > $2)",
                )
                .bind(jti.as_bytes())
                .bind(now)
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
                tx.commit().await.map_err(db)?;
                Ok(revoked)
            })
            .await
    }

    async fn revoke(&self, tenant: &TenantId, jti: &str, expires_at: i64) -> Result<()> {
        self.pool.bounded(async {
            check_jti(jti)?;
            let now = self.now();
            if expires_at <= now {
                return Ok(());
            }
            let mut tx = self.begin(tenant).await?;
            sqlx::query(
                "INSERT INTO tenancy.revoked_tokens (tenant_id, jti, expires_at)
                 VALUES (tenancy.current_tenant_id(), $1, $2)
                 ON CONFLICT (tenant_id, jti)
                 DO UPDATE SET expires_at = GREATEST(tenancy.revoked_tokens.expires_at, EXCLUDED.expires_at)",
            )
            .bind(jti.as_bytes())
            .bind(expires_at)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            // Reclaim a few of the tenant's long-ended entries on the way.
            sqlx::query(
                "DELETE FROM tenancy.revoked_tokens WHERE ctid IN (
                     SELECT ctid FROM tenancy.revoked_tokens WHERE expires_at <= $1 LIMIT $2)",
            )
            .bind(now.saturating_sub(GC_GRACE_SECS))
            .bind(SWEEP_PER_REVOKE)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(())
        })
        .await
    }
}
