//! The contract over real HTTP on loopback with PostgreSQL (records under row-level
//! security, sessions, revoked tokens, tenant directory, audit) and Redis (limits, sessions).

mod common;

use common::{Harness, scenario};
use sqlx::Connection as _;
use tenancy_server::Stores;

async fn harness(
    db: &tenancy_tests::TestDatabase,
    redis: Option<&tenancy_tests::TestRedis>,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::memory_config(dir.path());
    config.database_url = Some(db.url().to_owned());
    if let Some(r) = redis {
        config.redis_url = Some(r.url().to_owned());
        config.redis_namespace = r.prefix().trim_end_matches(':').to_owned();
    }
    Harness::start(config, dir).await
}

async fn tamper(db: &tenancy_tests::TestDatabase) {
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::raw_sql(
        "ALTER TABLE tenancy_audit.events DISABLE TRIGGER events_no_update_delete;
         UPDATE tenancy_audit.events SET payload = payload || '\\x20'::bytea
          WHERE tenant_id = 'acme' AND seq = 2;
         ALTER TABLE tenancy_audit.events ENABLE TRIGGER events_no_update_delete;",
    )
    .execute(&mut conn)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_with_postgres_and_redis() {
    let Some(db) = tenancy_tests::postgres().await else {
        return;
    };
    let Some(redis) = tenancy_tests::redis().await else {
        return;
    };
    let h = harness(&db, Some(&redis)).await;
    assert!(h.app().database().is_some() && h.app().redis().is_some());
    assert_eq!(
        h.app().stores(),
        Stores {
            records: "PostgreSQL",
            sessions: "Redis",
            revoked_tokens: "PostgreSQL",
            limits: "Redis",
        }
    );
    let health = h.send("GET", "/health", None, None, &[]).await;
    assert_eq!(health.status, 200, "{}", health.text);
    for c in ["database", "redis", "audit"] {
        assert_eq!(
            health.body["components"][c]["status"], "up",
            "{}",
            health.text
        );
    }
    scenario::auth(&h).await;
    scenario::records(&h).await;
    scenario::permissions(&h).await;
    scenario::admin(&h).await;
    scenario::limits(&h).await;
    scenario::bodies(&h).await;
    scenario::audit_trail(&h).await;

    // Records live in PostgreSQL under row-level security: without a tenant, the runtime
    // role is refused outright.
    let runtime = h.app().database().unwrap().runtime_role.clone();
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let refused = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET ROLE {runtime}; SELECT count(*) FROM public.records;"
    )))
    .execute(&mut conn)
    .await;
    assert!(refused.is_err(), "a read without tenant context must fail");
    drop(conn);

    tamper(&db).await;
    scenario::tampered(&h).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_alone_keeps_sessions_and_directory_in_the_database() {
    let Some(db) = tenancy_tests::postgres().await else {
        return;
    };
    let h = harness(&db, None).await;
    assert_eq!(
        h.app().stores(),
        Stores {
            records: "PostgreSQL",
            sessions: "PostgreSQL",
            revoked_tokens: "PostgreSQL",
            limits: "memory",
        }
    );
    scenario::auth(&h).await;
    scenario::admin(&h).await;
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let tenants: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.tenants")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(tenants >= 4, "acme, globex, platform, initech: {tenants}");
    let audit: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tenancy_audit.events WHERE tenant_id = 'acme'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(audit > 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_alone_keeps_limits_and_sessions_in_redis() {
    let Some(redis) = tenancy_tests::redis().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::memory_config(dir.path());
    config.redis_url = Some(redis.url().to_owned());
    config.redis_namespace = redis.prefix().trim_end_matches(':').to_owned();
    let h = Harness::start(config, dir).await;
    assert_eq!(
        h.app().stores(),
        Stores {
            records: "memory",
            sessions: "Redis",
            revoked_tokens: "Redis",
            limits: "Redis",
        }
    );
    scenario::auth(&h).await;
    scenario::limits(&h).await;
    let health = h.send("GET", "/health", None, None, &[]).await;
    assert_eq!(health.body["components"]["redis"]["status"], "up");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prod_refuses_a_runtime_role_that_can_bypass_row_level_security() {
    let Some(db) = tenancy_tests::postgres().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let vars = std::collections::HashMap::from([
        ("TENANCY_ENV".to_owned(), "prod".to_owned()),
        (
            "TENANCY_JWT_SECRET".to_owned(),
            "0123456789abcdef0123456789abcdef".to_owned(),
        ),
        ("TENANCY_DATABASE_URL".to_owned(), db.url().to_owned()),
        (
            "TENANCY_DATA_DIR".to_owned(),
            dir.path().to_string_lossy().into_owned(),
        ),
    ]);
    let config = tenancy_server::Config::from_vars(&vars).unwrap();
    let err = tenancy_server::App::build(config).await.unwrap_err();
    match err {
        tenancy_server::Error::Config { setting, reason } => {
            assert_eq!(setting, "TENANCY_DATABASE_URL");
            assert!(reason.contains("bypass row-level security"), "{reason}");
        }
        other => panic!("expected a configuration error, got {other}"),
    }
}
