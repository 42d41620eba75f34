//! SQL support: the crate's migrations, the runtime role, and the helper that puts an
//! application's own tables under row-level security.
//!
//! Run these as the owner of the tables (a migration or deployment role), never as the
//! runtime role. The migrations create schema `tenancy` with
//!
//! - `tenancy.current_tenant_id()`: the tenant of the current transaction, raising SQLSTATE
//!   `42501` when none is set (so a forgotten context is an error, never another tenant's
//!   rows; the policy calls it once a row is read, so a query on a table with no rows at all
//!   answers empty rather than the error);
//! - `tenancy.protect_table(regclass)`: `ENABLE` + `FORCE ROW LEVEL SECURITY`, a RESTRICTIVE
//!   policy `tenancy_isolation` on `tenant_id = (SELECT tenancy.current_tenant_id())` (plus a
//!   PERMISSIVE `tenancy_access` with the same condition, since PostgreSQL shows no rows when
//!   only restrictive policies exist), and `tenant_id` defaulting to the current tenant;
//! - `tenancy.grant_table(regclass, role)`: `SELECT, INSERT, UPDATE, DELETE` (never
//!   `TRUNCATE`, which row-level security does not filter);
//! - `tenancy.sessions` and `tenancy.revoked_tokens` (tenant tables, see
//!   [`PgSessionStore`](crate::PgSessionStore) and [`PgDenylist`](crate::PgDenylist)) and
//!   `tenancy.tenants` (platform data, see [`PgTenantDirectory`](crate::PgTenantDirectory)).
//!
//! Migrations are tracked in `tenancy._migrations`, apart from the application's own.
//!
//! `FORCE ROW LEVEL SECURITY` filters the owner too, so DDL that reads a protected table
//! without a tenant set (validating a new foreign key, building a materialized view) fails
//! with SQLSTATE `42501`. Run such migrations as a role with `BYPASSRLS` (the owner or
//! migration role may have it; the catalog audit checks the runtime role), or add the
//! constraint before protecting the table.
//!
//! ```no_run
//! use sqlx::Connection;
//! use tenancy_db::schema::{self, RoleName};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tenancy_db::Error> {
//! // As the owner (migration) role.
//! let mut owner = sqlx::PgConnection::connect("postgres://app_owner@127.0.0.1/app").await?;
//! schema::migrate(&mut owner).await?;
//! let runtime = RoleName::parse("app_runtime")?;
//! schema::create_runtime_role(&mut owner, &runtime).await?;
//! sqlx::raw_sql(
//!     "CREATE TABLE IF NOT EXISTS records (
//!          tenant_id  text        NOT NULL,
//!          id         bigint      GENERATED ALWAYS AS IDENTITY,
//!          title      text        NOT NULL,
//!          body       text        NOT NULL,
//!          created_at timestamptz NOT NULL DEFAULT now(),
//!          PRIMARY KEY (tenant_id, id))",
//! )
//! .execute(&mut owner)
//! .await?;
//! schema::protect_table(&mut owner, "records").await?;
//! schema::grant_table(&mut owner, "records", &runtime).await?;
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::fmt;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{PgConnection, SqlSafeStr as _};

use crate::{Error, Result};

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "tenancy helpers",
        include_str!("../migrations/0001_tenancy_helpers.sql"),
    ),
    (
        2,
        "sessions and tenants",
        include_str!("../migrations/0002_sessions_and_tenants.sql"),
    ),
    (
        3,
        "revoked tokens",
        include_str!("../migrations/0003_revoked_tokens.sql"),
    ),
    (
        4,
        "session deadlines",
        include_str!("../migrations/0004_session_deadlines.sql"),
    ),
];

/// The migrator of the crate's schema (table `tenancy._migrations`, schema `tenancy`).
pub fn migrator() -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                sqlx::AssertSqlSafe(*sql).into_sql_str(),
                false,
            )
        })
        .collect();
    let mut m = Migrator::with_migrations(migrations);
    m.create_schema("tenancy");
    m.dangerous_set_table_name("tenancy._migrations");
    m
}

/// Applies the crate's migrations (idempotent; concurrent runs are serialised by an advisory
/// lock). Run as the role that will own the tables.
pub async fn migrate(conn: &mut PgConnection) -> Result<()> {
    migrator().run(conn).await.map_err(Error::Migrate)
}

/// A PostgreSQL role name accepted by the helpers: 1–63 characters of `[a-z0-9_]`, starting
/// with a letter or `_`, and not a reserved `pg_` name.
///
/// ```
/// use tenancy_db::schema::RoleName;
/// assert!(RoleName::parse("app_runtime").is_ok());
/// assert!(RoleName::parse("x\"; DROP ROLE postgres; --").is_err());
/// assert!(RoleName::parse("pg_read_all_data").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RoleName(String);

impl RoleName {
    /// Parses and validates.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidIdentifier {
            what: "role name",
            reason,
        };
        if s.is_empty() || s.len() > 63 {
            return Err(bad("must be 1 to 63 characters"));
        }
        if !s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
            return Err(bad("must start with a lowercase letter or '_'"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(bad("may contain only a-z, 0-9 and '_'"));
        }
        if s.starts_with("pg_") {
            return Err(bad("the pg_ prefix is reserved"));
        }
        Ok(Self(s.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoleName({:?})", self.0)
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Creates the runtime role (when it does not exist) and grants it what tenant work needs.
///
/// The role is `LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION
/// NOINHERIT`. Set its password out of band (for example psql's `\password`, which sends
/// only a hash). An existing role is not altered: the catalog audit reports it if it is
/// unsafe.
pub async fn create_runtime_role(conn: &mut PgConnection, role: &RoleName) -> Result<()> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role.as_str())
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        // `RoleName` holds only [a-z0-9_]; quoting it keeps keywords usable as names.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE \"{role}\" LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE \
             NOREPLICATION NOINHERIT"
        )))
        .execute(&mut *conn)
        .await?;
    }
    grant_runtime_role(conn, role).await
}

/// Grants an existing role what tenant work needs: `USAGE` on schema `tenancy`, `EXECUTE` on
/// `tenancy.current_tenant_id()`, and read/write on `tenancy.sessions` and
/// `tenancy.revoked_tokens`.
pub async fn grant_runtime_role(conn: &mut PgConnection, role: &RoleName) -> Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT USAGE ON SCHEMA tenancy TO \"{role}\"; \
         GRANT EXECUTE ON FUNCTION tenancy.current_tenant_id() TO \"{role}\";"
    )))
    .execute(&mut *conn)
    .await?;
    grant_table(conn, "tenancy.sessions", role).await?;
    grant_table(conn, "tenancy.revoked_tokens", role).await
}

/// Grants a platform role read/write on the tenant directory (`tenancy.tenants`).
pub async fn grant_platform_role(conn: &mut PgConnection, role: &RoleName) -> Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT USAGE ON SCHEMA tenancy TO \"{role}\"; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON tenancy.tenants TO \"{role}\";"
    )))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Puts `table` (a name as PostgreSQL resolves it, e.g. `records` or `app.records`) under
/// row-level security with `tenancy.protect_table`. The table needs a `tenant_id` column;
/// run as its owner. The name travels as a bind parameter and is resolved by the server, so
/// a hostile name is an error, never SQL.
pub async fn protect_table(conn: &mut PgConnection, table: &str) -> Result<()> {
    sqlx::query("SELECT tenancy.protect_table($1::regclass)")
        .bind(table)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Grants `role` `SELECT, INSERT, UPDATE, DELETE` on `table` and `USAGE` on the sequences it
/// owns (never `TRUNCATE`, `REFERENCES` or `TRIGGER`).
pub async fn grant_table(conn: &mut PgConnection, table: &str, role: &RoleName) -> Result<()> {
    sqlx::query("SELECT tenancy.grant_table($1::regclass, $2)")
        .bind(table)
        .bind(role.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_refuse_hostile_input() {
        for bad in [
            "",
            "A",
            "1abc",
            "a b",
            "a\"b",
            "a;b",
            "pg_x",
            "é",
            &"a".repeat(64),
        ] {
            assert!(RoleName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(RoleName::parse("_x1").is_ok());
    }

    #[test]
    fn migrations_are_ordered_and_tracked_apart() {
        let m = migrator();
        let versions: Vec<i64> = m.iter().map(|m| m.version).collect();
        assert_eq!(versions, vec![1, 2, 3, 4]);
        assert_eq!(m.table_name, "tenancy._migrations");
    }
}
