//! [`PgTenantDirectory`]: the tenant directory in PostgreSQL.
//!
//! How the table is protected: the directory is platform data (it is consulted to decide
//! whether a tenant may be served at all, and `list` spans every tenant), so
//! `tenancy.tenants` is not a tenant table and has no row-level security. Instead it is
//! reachable only through the [`PlatformPool`](crate::PlatformPool): the runtime role holds
//! no privilege on it, so no tenant request can read the tenant list or lift its own
//! suspension, and every platform transaction is logged with its reason. Grant the platform
//! role access with [`grant_platform_role`](crate::schema::grant_platform_role).
//!
//! There is no cache: every call reads the table, so a change is visible on the next call,
//! from every instance.
//!
//! ```no_run
//! use tenancy_core::{TenantDirectory, TenantId, TenantSettings, TierName};
//! use tenancy_db::{DbConfig, PgTenantDirectory, PlatformPool};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let platform = PlatformPool::connect(DbConfig::new("postgres://app_platform@127.0.0.1/app")?).await?;
//! let directory = PgTenantDirectory::new(platform);
//! let acme = TenantId::parse("acme")?;
//! directory.put(&acme, TenantSettings::new(TierName::parse("standard")?)).await?;
//! assert!(directory.get(&acme).await?.is_some());
//! # Ok(()) }
//! ```

use async_trait::async_trait;
use tenancy_core::{
    Error as CoreError, Health, HealthCheck, QuotaOverrides, Result, TenantDirectory, TenantId,
    TenantSettings, TenantStatus, TierName, Upsert,
};
use time::OffsetDateTime;

use crate::{Error, PlatformPool};

/// The tenant directory in `tenancy.tenants`, through the platform pool.
#[derive(Debug, Clone)]
pub struct PgTenantDirectory {
    pool: PlatformPool,
}

type Row = (
    String,
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<OffsetDateTime>,
);

const COLUMNS: &str =
    "id, status, tier, tenant_per_hour, tenant_burst, user_per_hour, user_burst, bypass_until";

fn corrupt(e: impl std::fmt::Display) -> CoreError {
    CoreError::corrupt(format!("tenant directory row: {e}"))
}

fn decode(row: Row) -> Result<(TenantId, TenantSettings)> {
    let (id, status, tier, tph, tb, uph, ub, bypass_until) = row;
    let num = |v: Option<i64>| v.map(u64::try_from).transpose().map_err(corrupt);
    let status = match status.as_str() {
        "active" => TenantStatus::Active,
        "suspended" => TenantStatus::Suspended,
        other => return Err(corrupt(format_args!("unknown status {other:?}"))),
    };
    Ok((
        TenantId::parse(&id).map_err(corrupt)?,
        TenantSettings {
            status,
            tier: TierName::parse(&tier).map_err(corrupt)?,
            overrides: QuotaOverrides {
                tenant_per_hour: num(tph)?,
                tenant_burst: num(tb)?,
                user_per_hour: num(uph)?,
                user_burst: num(ub)?,
            },
            bypass_until,
        },
    ))
}

fn db(e: impl Into<Error>) -> CoreError {
    e.into().into()
}

fn to_i64(v: Option<u64>) -> Result<Option<i64>> {
    v.map(i64::try_from)
        .transpose()
        .map_err(|_| Error::OutOfRange("quota override".into()).into())
}

/// An `INSERT` of one tenant's row (the values bound by [`write`]) followed by `tail`.
macro_rules! insert_sql {
    ($tail:literal) => {
        concat!(
            "INSERT INTO tenancy.tenants
                 (id, status, tier, tenant_per_hour, tenant_burst, user_per_hour, user_burst,
                  bypass_until, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now()) ",
            $tail
        )
    };
}
/// Creates or replaces one tenant's row; `true` when it was created.
const UPSERT: &str = insert_sql!(
    "ON CONFLICT (id) DO UPDATE SET
         status = EXCLUDED.status, tier = EXCLUDED.tier,
         tenant_per_hour = EXCLUDED.tenant_per_hour, tenant_burst = EXCLUDED.tenant_burst,
         user_per_hour = EXCLUDED.user_per_hour, user_burst = EXCLUDED.user_burst,
         bypass_until = EXCLUDED.bypass_until, updated_at = now()
     RETURNING xmax = 0"
);

/// `sql` (an [`insert_sql!`] returning one boolean) with the tenant's id and settings bound.
fn write<'q>(
    sql: &'static str,
    tenant: &'q TenantId,
    settings: &'q TenantSettings,
) -> Result<sqlx::query::QueryScalar<'q, sqlx::Postgres, bool, sqlx::postgres::PgArguments>> {
    let o = &settings.overrides;
    Ok(sqlx::query_scalar(sql)
        .bind(tenant.as_str())
        .bind(settings.status.as_str())
        .bind(settings.tier.as_str())
        .bind(to_i64(o.tenant_per_hour)?)
        .bind(to_i64(o.tenant_burst)?)
        .bind(to_i64(o.user_per_hour)?)
        .bind(to_i64(o.user_burst)?)
        .bind(settings.bypass_until))
}

impl PgTenantDirectory {
    /// A directory on the platform pool.
    pub fn new(pool: PlatformPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl TenantDirectory for PgTenantDirectory {
    async fn get(&self, tenant: &TenantId) -> Result<Option<TenantSettings>> {
        self.pool
            .bounded(async {
                let mut tx = self
                    .pool
                    .begin_routine_read("tenant directory: get")
                    .await
                    .map_err(db)?;
                let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM tenancy.tenants WHERE id = $1"
                )))
                .bind(tenant.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
                tx.commit().await.map_err(db)?;
                row.map(|r| decode(r).map(|(_, s)| s)).transpose()
            })
            .await
    }

    async fn put(&self, tenant: &TenantId, settings: TenantSettings) -> Result<Upsert> {
        self.pool
            .bounded(async {
                let mut tx = self.pool.begin("tenant directory: put").await.map_err(db)?;
                let inserted = write(UPSERT, tenant, &settings)?
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db)?;
                tx.commit().await.map_err(db)?;
                Ok(if inserted {
                    Upsert::Created
                } else {
                    Upsert::Updated
                })
            })
            .await
    }

    async fn put_if(
        &self,
        tenant: &TenantId,
        expected: Option<&TenantSettings>,
        settings: TenantSettings,
    ) -> Result<Option<Upsert>> {
        self.pool
            .bounded(async {
                let mut tx = self
                    .pool
                    .begin("tenant directory: put_if")
                    .await
                    .map_err(db)?;
                let Some(expected) = expected else {
                    // Create only: a row that exists by now, even one a concurrent create wrote a
                    // moment ago, is left as it is.
                    let created: Option<bool> = write(
                        insert_sql!("ON CONFLICT (id) DO NOTHING RETURNING true"),
                        tenant,
                        &settings,
                    )?
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db)?;
                    tx.commit().await.map_err(db)?;
                    return Ok(created.map(|_| Upsert::Created));
                };
                // The row stays locked until the commit: no other writer changes it between this
                // comparison and the update.
                let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM tenancy.tenants WHERE id = $1 FOR UPDATE"
                )))
                .bind(tenant.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
                let current = row.map(decode).transpose()?.map(|(_, s)| s);
                if current.as_ref() != Some(expected) {
                    tx.commit().await.map_err(db)?;
                    return Ok(None);
                }
                write(UPSERT, tenant, &settings)?
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db)?;
                tx.commit().await.map_err(db)?;
                Ok(Some(Upsert::Updated))
            })
            .await
    }

    async fn remove(&self, tenant: &TenantId) -> Result<bool> {
        self.pool
            .bounded(async {
                let mut tx = self
                    .pool
                    .begin("tenant directory: remove")
                    .await
                    .map_err(db)?;
                let n = sqlx::query("DELETE FROM tenancy.tenants WHERE id = $1")
                    .bind(tenant.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?
                    .rows_affected();
                tx.commit().await.map_err(db)?;
                Ok(n > 0)
            })
            .await
    }

    async fn list(&self) -> Result<Vec<(TenantId, TenantSettings)>> {
        self.pool
            .bounded(async {
                let mut tx = self
                    .pool
                    .begin_routine_read("tenant directory: list")
                    .await
                    .map_err(db)?;
                let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM tenancy.tenants ORDER BY id COLLATE \"C\""
                )))
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?;
                tx.commit().await.map_err(db)?;
                rows.into_iter().map(decode).collect()
            })
            .await
    }
}

#[async_trait]
impl HealthCheck for PgTenantDirectory {
    fn component(&self) -> &str {
        "tenant_directory"
    }

    async fn check(&self) -> Health {
        self.pool.health().snapshot()
    }
}
