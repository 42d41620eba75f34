//! Shared test support for the tenancy crates: real PostgreSQL and Redis, one fresh database
//! or key prefix per test, and a clear rule for when a service is missing.
//!
//! - Service addresses come from `TENANCY_TEST_DATABASE_URL` (default
//!   `postgres://postgres@127.0.0.1:5432/postgres`) and `TENANCY_TEST_REDIS_URL` (default
//!   `redis://127.0.0.1:6379`).
//! - When a service cannot be reached, [`postgres()`] and [`redis()`] print why on stderr and
//!   return `None`, so the test returns early; with `TENANCY_REQUIRE_SERVICES=1` (as `.ci/run`
//!   sets) they panic instead, so a missing service fails the run.
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! let Some(db) = tenancy_tests::postgres().await else { return };
//! // db.url() names a database created for this test alone; it is dropped with `db`.
//! let Some(redis) = tenancy_tests::redis().await else { return };
//! // redis.prefix() is unique to this test: put it in every key and tenant id.
//! # let _ = (db, redis);
//! # }
//! ```

pub mod body;
pub mod http;
pub mod relay;

use std::time::Duration;

use sqlx::Connection as _;

/// The default PostgreSQL address for tests.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The default Redis address for tests.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Whether `TENANCY_REQUIRE_SERVICES=1`: missing services fail tests instead of skipping them.
pub fn services_required() -> bool {
    std::env::var("TENANCY_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// The PostgreSQL server URL tests use (an administrative connection that may create
/// databases).
pub fn database_url() -> String {
    std::env::var("TENANCY_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// The Redis URL tests use.
pub fn redis_url() -> String {
    std::env::var("TENANCY_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned())
}

/// Reports a missing service: panics when services are required, else prints and returns.
///
/// # Panics
/// When `TENANCY_REQUIRE_SERVICES=1`.
pub fn service_missing(service: &str, why: &dyn std::fmt::Display) {
    assert!(
        !services_required(),
        "{service} is required (TENANCY_REQUIRE_SERVICES=1) but unreachable: {why}"
    );
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "skipping: {service} unreachable ({why}); set TENANCY_REQUIRE_SERVICES=1 to fail instead"
        );
    }
}

/// A lowercase random token, for database names, key prefixes and tenant ids.
pub fn unique(prefix: &str) -> String {
    let fx = tenancy_core::testkit::Fixture::new();
    format!("{prefix}{}", &fx.prefix()[1..])
}

/// A database created for one test; dropped (with `FORCE`) when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl TestDatabase {
    /// The URL of the test database (connecting as the administrative user).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of the same server's administrative database.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }
}

/// Replaces the database name in a PostgreSQL URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{db}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs outside any async context we can rely on: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// A fresh, empty database on the test PostgreSQL server, or `None` (after saying why) when
/// the server is unreachable and services are not required.
pub async fn postgres() -> Option<TestDatabase> {
    let admin_url = database_url();
    let connect = tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::PgConnection::connect(&admin_url),
    )
    .await;
    let mut conn = match connect {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            service_missing("PostgreSQL", &e);
            return None;
        }
        Err(_) => {
            service_missing("PostgreSQL", &"connect timed out after 5 s");
            return None;
        }
    };
    let name = unique("tenancy_test_");
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
    {
        service_missing("PostgreSQL (CREATE DATABASE)", &e);
        return None;
    }
    let _ = conn.close().await;
    Some(TestDatabase {
        url: with_database(&admin_url, &name),
        name,
        admin_url,
    })
}

/// A Redis server for one test: its URL and a key prefix no other test uses.
#[derive(Debug, Clone)]
pub struct TestRedis {
    url: String,
    prefix: String,
}

impl TestRedis {
    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A prefix unique to this test (`[a-z0-9]`, usable in tenant ids and keys).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// The test Redis server with a fresh prefix, or `None` (after saying why) when it is
/// unreachable and services are not required.
pub async fn redis() -> Option<TestRedis> {
    let url = redis_url();
    let ping = async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(5), ping).await {
        Ok(Ok(_)) => Some(TestRedis {
            url,
            prefix: unique("r"),
        }),
        Ok(Err(e)) => {
            service_missing("Redis", &e);
            None
        }
        Err(_) => {
            service_missing("Redis", &"ping timed out after 5 s");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h:5432", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }

    #[tokio::test]
    async fn fresh_databases_are_empty_and_distinct() {
        let Some(a) = postgres().await else { return };
        let Some(b) = postgres().await else { return };
        assert_ne!(a.name(), b.name());
        let mut conn = sqlx::PgConnection::connect(a.url())
            .await
            .expect("connect to test database");
        let db: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&mut conn)
            .await
            .expect("query");
        assert_eq!(db, a.name());
        let tables: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
                .fetch_one(&mut conn)
                .await
                .expect("query");
        assert_eq!(tables, 0);
    }

    #[tokio::test]
    async fn redis_prefixes_are_distinct() {
        let Some(a) = redis().await else { return };
        let Some(b) = redis().await else { return };
        assert_ne!(a.prefix(), b.prefix());
    }
}
