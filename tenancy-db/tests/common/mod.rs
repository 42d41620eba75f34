//! Test support: a fresh database per test with its own owner, runtime and platform roles
//! (roles are cluster-wide, so each test's are unique and dropped at the end), the crate's
//! migrations, and two protected application tables.

#![allow(dead_code, unreachable_pub)]

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tenancy_core::TenantId;
use tenancy_db::schema::{self, RoleName};
use tenancy_db::{DbConfig, Environment, TenantPool};

/// Drops the test's roles when dropped (after the database, which is declared first in
/// [`TestEnv`] and therefore dropped first).
#[derive(Debug)]
pub struct Roles {
    admin_url: String,
    names: Vec<String>,
    /// When set, `DROP OWNED BY` runs in this database first (for roles dropped while the
    /// test database still exists).
    db_url: Option<String>,
}

impl Roles {
    /// Drops `role` (and what it holds in the test database) when the guard is dropped.
    pub fn guard(env: &TestEnv, role: &RoleName) -> Self {
        Self {
            admin_url: env.db.admin_url().to_owned(),
            names: vec![role.to_string()],
            db_url: Some(env.db.url().to_owned()),
        }
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let names = std::mem::take(&mut self.names);
        let db_url = self.db_url.take();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Some(url) = db_url
                    && let Ok(mut conn) = PgConnection::connect(&url).await
                {
                    for name in &names {
                        let _ =
                            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP OWNED BY \"{name}\"")))
                                .execute(&mut conn)
                                .await;
                    }
                }
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    for name in names {
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "DROP ROLE IF EXISTS \"{name}\""
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                }
            });
        })
        .join();
    }
}

/// One test's database and roles.
#[derive(Debug)]
pub struct TestEnv {
    pub db: tenancy_tests::TestDatabase,
    pub roles: Roles,
    pub owner: RoleName,
    pub runtime: RoleName,
    pub platform: RoleName,
}

pub const RECORDS: &str = "
CREATE TABLE records (
    tenant_id  text        NOT NULL,
    id         bigint      GENERATED ALWAYS AS IDENTITY,
    title      text        NOT NULL,
    body       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, title)
);
CREATE TABLE comments (
    tenant_id text   NOT NULL,
    id        bigint GENERATED ALWAYS AS IDENTITY,
    record_id bigint NOT NULL,
    text      text   NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, record_id) REFERENCES records (tenant_id, id) ON DELETE CASCADE
);
";

impl TestEnv {
    /// A fresh database, roles, migrations and the `records` and `comments` tables, or
    /// `None` when PostgreSQL is unreachable and not required.
    pub async fn new() -> Option<Self> {
        let db = tenancy_tests::postgres().await?;
        let owner = RoleName::parse(&tenancy_tests::unique("tdo_")).expect("owner role");
        let runtime = RoleName::parse(&tenancy_tests::unique("tdr_")).expect("runtime role");
        let platform = RoleName::parse(&tenancy_tests::unique("tdp_")).expect("platform role");
        let roles = Roles {
            admin_url: db.admin_url().to_owned(),
            names: vec![runtime.to_string(), platform.to_string(), owner.to_string()],
            db_url: None,
        };
        let env = Self {
            db,
            roles,
            owner,
            runtime,
            platform,
        };

        let mut admin = env.admin().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE \"{o}\" LOGIN NOSUPERUSER NOBYPASSRLS;
             GRANT CREATE ON DATABASE \"{db}\" TO \"{o}\";
             GRANT CREATE ON SCHEMA public TO \"{o}\";
             CREATE ROLE \"{p}\" LOGIN NOSUPERUSER NOBYPASSRLS;",
            o = env.owner,
            p = env.platform,
            db = env.db.name()
        )))
        .execute(&mut admin)
        .await
        .expect("create owner and platform roles");

        let mut owner = env.connect_as(&env.owner).await;
        schema::migrate(&mut owner).await.expect("migrate");
        sqlx::raw_sql(RECORDS)
            .execute(&mut owner)
            .await
            .expect("create tables");
        schema::protect_table(&mut owner, "records")
            .await
            .expect("protect records");
        schema::protect_table(&mut owner, "comments")
            .await
            .expect("protect comments");

        schema::create_runtime_role(&mut admin, &env.runtime)
            .await
            .expect("create runtime role");
        schema::grant_table(&mut owner, "records", &env.runtime)
            .await
            .expect("grant records");
        schema::grant_table(&mut owner, "comments", &env.runtime)
            .await
            .expect("grant comments");
        schema::grant_platform_role(&mut owner, &env.platform)
            .await
            .expect("grant platform");
        Some(env)
    }

    pub fn options(&self) -> PgConnectOptions {
        PgConnectOptions::from_str(self.db.url()).expect("test database url")
    }

    /// A superuser connection to the test database.
    pub async fn admin(&self) -> PgConnection {
        PgConnection::connect(self.db.url())
            .await
            .expect("admin connection")
    }

    pub async fn connect_as(&self, role: &RoleName) -> PgConnection {
        PgConnection::connect_with(&self.options().username(role.as_str()))
            .await
            .unwrap_or_else(|e| panic!("connect as {role}: {e}"))
    }

    pub fn config_as(&self, role: &str) -> DbConfig {
        DbConfig::from_options(self.options().username(role))
            .with_environment(Environment::Test)
            .with_acquire_timeout(Duration::from_secs(10))
            .with_connect_retry(2, Duration::from_millis(50), Duration::from_millis(100))
    }

    pub fn runtime_config(&self) -> DbConfig {
        self.config_as(self.runtime.as_str())
    }

    pub async fn runtime_pool(&self, max: u32) -> TenantPool {
        TenantPool::connect(self.runtime_config().with_max_connections(max))
            .await
            .expect("runtime pool")
    }
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("tenant id")
}

/// Seeds `per_tenant` records for each tenant, as the tenant itself.
pub async fn seed(pool: &TenantPool, tenants: &[&TenantId], per_tenant: usize) {
    for t in tenants {
        let mut tx = pool.begin(t).await.expect("begin");
        for i in 0..per_tenant {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO records (title, body) VALUES ($1, $2) RETURNING id",
            )
            .bind(format!("{}-title-{i}", t.as_str()))
            .bind(format!("body of {} #{i}", t.as_str()))
            .fetch_one(&mut *tx)
            .await
            .expect("seed record");
            sqlx::query("INSERT INTO comments (record_id, text) VALUES ($1, $2)")
                .bind(id)
                .bind(format!("comment of {}", t.as_str()))
                .execute(&mut *tx)
                .await
                .expect("seed comment");
        }
        tx.commit().await.expect("commit seed");
    }
}

/// The SQLSTATE of a failed sqlx call.
pub fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

pub fn assert_42501<T: std::fmt::Debug>(r: Result<T, sqlx::Error>, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected SQLSTATE 42501, got Ok({v:?})"),
        Err(e) => assert_eq!(
            sqlstate(&e).as_deref(),
            Some("42501"),
            "{what}: expected 42501, got {e}"
        ),
    }
}
