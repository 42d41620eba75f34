//! `tenancy-db`: PostgreSQL tenant isolation with row-level security that fails closed.
//!
//! - [`TenantPool`] and [`TenantTx`]: the only way to a connection for tenant work. `begin`
//!   sets the tenant for the transaction only; the transaction rolls back when dropped;
//!   [`TenantPool::scope`] commits on `Ok`. Nothing is set at session level or in pool hooks.
//!   An opt-in release guard closes any connection found carrying a tenant setting.
//! - [`PlatformPool`]: a separate, explicit pool for cross-tenant work; every transaction
//!   names its reason in the log.
//! - [`schema`]: migrations, `tenancy.current_tenant_id()` (raises SQLSTATE `42501` when no
//!   tenant is set), the runtime role, and [`schema::protect_table`] for an application's own
//!   tables.
//! - [`audit`]: the catalog audit run at start-up ([`TenantPool::connect`] refuses to serve
//!   on any finding) and available as a function for CI.
//! - [`DbConfig`]: pool sizes per [`Environment`] (dev 5, test 10, prod 20), acquire timeout,
//!   connect retry with backoff, `statement_timeout`, `idle_in_transaction_session_timeout`.
//! - [`DbHealth`]: a ping every 30 s; [`HealthCheck`](tenancy_core::HealthCheck) answers
//!   from it and from [`PoolMetrics`] without touching the database.
//! - [`PgSessionStore`] ([`SessionStore`](tenancy_core::SessionStore) +
//!   [`SessionAdmin`](tenancy_core::SessionAdmin), under row-level security),
//!   [`PgDenylist`] ([`Denylist`](tenancy_core::Denylist), revoked token ids, under
//!   row-level security) and [`PgTenantDirectory`] ([`TenantDirectory`](tenancy_core::TenantDirectory), platform
//!   data behind the platform pool).
//!
//! The roles: an *owner* runs the migrations and owns the tables; the *runtime* role serves
//! tenant requests (not superuser, not `BYPASSRLS`, owns nothing it reads); an optional
//! *platform* role does cross-tenant work.
//!
//! ```no_run
//! use sqlx::Connection;
//! use tenancy_core::TenantId;
//! use tenancy_db::schema::{self, RoleName};
//! use tenancy_db::{DbConfig, Environment, TenantPool};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Deployment step, as the owner.
//! let mut owner = sqlx::PgConnection::connect("postgres://app_owner@127.0.0.1/app").await?;
//! schema::migrate(&mut owner).await?;
//! let runtime = RoleName::parse("app_runtime")?;
//! schema::create_runtime_role(&mut owner, &runtime).await?;
//! sqlx::raw_sql(
//!     "CREATE TABLE IF NOT EXISTS records (
//!          tenant_id text NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY,
//!          title text NOT NULL, body text NOT NULL,
//!          created_at timestamptz NOT NULL DEFAULT now(),
//!          PRIMARY KEY (tenant_id, id))",
//! )
//! .execute(&mut owner)
//! .await?;
//! schema::protect_table(&mut owner, "records").await?;
//! schema::grant_table(&mut owner, "records", &runtime).await?;
//!
//! // The service, as the runtime role: the catalog audit runs before the pool serves.
//! let pool = TenantPool::connect(
//!     DbConfig::new("postgres://app_runtime@127.0.0.1/app")?.with_environment(Environment::Prod),
//! )
//! .await?;
//! let acme = TenantId::parse("acme")?;
//! let id: i64 = pool
//!     .scope(&acme, async |tx| {
//!         // tenant_id defaults to the transaction's tenant; RLS refuses any other.
//!         sqlx::query_scalar("INSERT INTO records (title, body) VALUES ($1, $2) RETURNING id")
//!             .bind("hello")
//!             .bind("world")
//!             .fetch_one(&mut **tx)
//!             .await
//!             .map_err(tenancy_db::Error::from)
//!     })
//!     .await?;
//! # let _ = id;
//! # Ok(()) }
//! ```
//!
//! # Features
//! | feature | enables | default |
//! |---------|---------|---------|
//! | (none)  | everything above is always built; the crate has no optional features | — |
//!
//! # Threat model
//! Row-level security here protects against application code that forgets a tenant filter,
//! and against a pooled connection carrying one tenant's context to the next request. It does
//! not sandbox hostile SQL run inside a [`TenantTx`]: such SQL could call `set_config` with
//! another tenant (the release guard then closes that connection if the change outlived the
//! transaction). Keep SQL text static and values in bind parameters.
//!
//! What outlives a transaction on a pooled connection besides settings: cursors declared
//! `WITH HOLD` and temporary tables, both filled under the tenant that made them. Every
//! transaction this crate opens closes all cursors and drops all temporary tables first, in
//! its `BEGIN` message, so the next tenant never reads them; a temporary table lives only as
//! long as the transaction that made it.

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod audit;
mod config;
pub mod denylist;
mod directory;
pub mod error;
mod health;
mod pool;
pub mod schema;
mod session;

pub use audit::{AuditReport, Finding, audit_catalog};
pub use config::{BeginMode, DbConfig, Environment};
pub use denylist::PgDenylist;
pub use directory::PgTenantDirectory;
pub use error::{Error, Result, SQLSTATE_INSUFFICIENT_PRIVILEGE};
pub use health::DbHealth;
pub use pool::{PlatformPool, PlatformTx, PoolMetrics, TenantPool, TenantTx, UnscopedTx};
pub use session::PgSessionStore;

/// The most rows one transaction of a purge deletes ([`PgSessionStore::purge_ended`],
/// [`PgDenylist::purge_ended`]): a tenant with a million ended rows is purged in many short
/// transactions, not one that holds a million row locks and bloats the table until it ends.
const PURGE_BATCH: i64 = 1000;

/// Runs `batch` (one transaction deleting at most [`PURGE_BATCH`] rows, returning how many it
/// deleted) until a batch deletes fewer; returns the total.
async fn purge_in_batches<F, Fut, E>(mut batch: F) -> std::result::Result<u64, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<u64, E>>,
{
    let mut total = 0u64;
    loop {
        let n = batch().await?;
        total = total.saturating_add(n);
        if n < PURGE_BATCH.unsigned_abs() {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches run until one deletes fewer rows than a full batch; the total is their sum.
    #[tokio::test]
    async fn a_purge_runs_batches_until_one_is_short() {
        let full = PURGE_BATCH.unsigned_abs();
        for (answers, calls, total) in [
            (vec![full, full, 500], 3, 2 * full + 500),
            (vec![full, 0], 2, full),
            (vec![0], 1, 0),
        ] {
            let mut left = answers.into_iter();
            let mut made = 0;
            let purged = purge_in_batches(|| {
                made += 1;
                let n = left.next();
                async move { n.ok_or("asked for one batch too many") }
            })
            .await;
            assert_eq!((purged, made), (Ok(total), calls));
        }
    }
}
