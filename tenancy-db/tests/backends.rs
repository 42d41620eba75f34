//! The core conformance suites against the PostgreSQL backends, plus health and pool
//! figures.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestEnv, assert_42501, tenant};
use tenancy_core::testkit::{self, Fixture, TimeControl};
use tenancy_core::{
    Clock as _, Denylist, HealthCheck, HealthStatus, ManualClock, NewSession, SessionStore,
    TenantDirectory, TenantSettings, TenantStatus, TierName, UserId,
};
use tenancy_db::denylist::GC_GRACE_SECS;
use tenancy_db::{PgDenylist, PgSessionStore, PgTenantDirectory, PlatformPool, TenantPool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_store_conformance() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let pool = env.runtime_pool(4).await;
    let clock = ManualClock::new();
    let store = PgSessionStore::with_clock(pool.clone(), Arc::new(clock.clone()));
    testkit::session_store(&store, TimeControl::Manual(clock), &Fixture::new()).await;

    // The table itself is under row-level security: without a tenant the runtime role
    // cannot read any session, and with tenant B it cannot see A's.
    let a = tenant("acme");
    let s = store
        .create(NewSession::new(a.clone(), UserId::parse("alice").unwrap()))
        .await
        .unwrap();
    let mut tx = pool.begin_unscoped().await.unwrap();
    assert_42501(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tenancy.sessions")
            .fetch_one(&mut *tx)
            .await,
        "sessions without tenant",
    );
    drop(tx);
    let mut tx = pool.begin(&tenant("globex")).await.unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.sessions WHERE id = $1")
        .bind(s.id.as_str())
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, 0);
    drop(tx);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denylist_conformance() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let pool = env.runtime_pool(4).await;
    let clock = ManualClock::new();
    let list = PgDenylist::with_clock(pool.clone(), Arc::new(clock.clone()));
    let now = {
        let clock = clock.clone();
        move || clock.now().unix_timestamp()
    };
    testkit::denylist(
        &list,
        now,
        TimeControl::Manual(clock.clone()),
        &Fixture::new(),
    )
    .await;

    // The table is under row-level security: without a tenant the runtime role reads
    // nothing, and tenant B does not see A's entries.
    let a = tenant("acme");
    let at = clock.now().unix_timestamp();
    list.revoke(&a, "j", at + 600).await.unwrap();
    let mut tx = pool.begin_unscoped().await.unwrap();
    assert_42501(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tenancy.revoked_tokens")
            .fetch_one(&mut *tx)
            .await,
        "revoked tokens without tenant",
    );
    drop(tx);
    let mut tx = pool.begin(&tenant("globex")).await.unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.revoked_tokens")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, 0);
    drop(tx);

    // A second instance on the same database sees the revocation.
    let other = PgDenylist::with_clock(pool.clone(), Arc::new(clock.clone()));
    assert!(other.is_revoked(&a, "j").await.unwrap());
    pool.close().await;
}

#[tokio::test]
async fn denylist_reclaims_ended_entries() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let pool = env.runtime_pool(2).await;
    let clock = ManualClock::new();
    let list = PgDenylist::with_clock(pool.clone(), Arc::new(clock.clone()));
    let a = tenant("acme");
    let count = |pool: TenantPool, a: tenancy_core::TenantId| async move {
        let mut tx = pool.begin(&a).await.unwrap();
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tenancy.revoked_tokens")
            .fetch_one(&mut *tx)
            .await
            .unwrap()
    };
    let at = clock.now().unix_timestamp();
    for i in 0..40 {
        list.revoke(&a, &format!("old{i}"), at + 10).await.unwrap();
    }
    assert_eq!(count(pool.clone(), a.clone()).await, 40);
    // Ended, but within the grace: an instance whose clock runs behind may still need them.
    clock.advance(Duration::from_secs(11));
    list.revoke(&a, "new1", at + 600).await.unwrap();
    assert_eq!(count(pool.clone(), a.clone()).await, 41);
    assert_eq!(list.purge_ended(&a).await.unwrap(), 0);
    let behind = ManualClock::new();
    let slow = PgDenylist::with_clock(pool.clone(), Arc::new(behind.clone()));
    behind.advance(Duration::from_secs(5));
    assert!(
        slow.is_revoked(&a, "old0").await.unwrap(),
        "a sweep on a clock ahead ended an entry another instance still needs"
    );
    // Past the grace, each revocation deletes a bounded batch on its way.
    clock.advance(Duration::from_secs(GC_GRACE_SECS as u64));
    list.revoke(&a, "new2", at + 600).await.unwrap();
    assert_eq!(count(pool.clone(), a.clone()).await, 41 - 32 + 1);
    list.revoke(&a, "new3", at + 600).await.unwrap();
    assert_eq!(count(pool.clone(), a.clone()).await, 3);
    for i in 0..5 {
        list.revoke(&a, &format!("more{i}"), at + 80).await.unwrap();
    }
    clock.advance(Duration::from_secs(10 + GC_GRACE_SECS as u64));
    assert_eq!(list.purge_ended(&a).await.unwrap(), 5);
    assert_eq!(count(pool.clone(), a.clone()).await, 3);
    pool.close().await;
}

#[tokio::test]
async fn session_store_reclaims_ended_sessions() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let pool = env.runtime_pool(2).await;
    let clock = ManualClock::new();
    let store = PgSessionStore::with_clock(pool.clone(), Arc::new(clock.clone()));
    let (a, alice) = (tenant("acme"), UserId::parse("alice").unwrap());
    for _ in 0..3 {
        store
            .create(
                NewSession::new(a.clone(), alice.clone()).with_idle_timeout(Duration::from_secs(5)),
            )
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(10));
    // Creating a session for the same user removes the user's ended ones.
    store
        .create(NewSession::new(a.clone(), alice.clone()))
        .await
        .unwrap();
    let mut admin = env.admin().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.sessions")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    let bob = UserId::parse("bob").unwrap();
    store
        .create(NewSession::new(a.clone(), bob).with_idle_timeout(Duration::from_secs(5)))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(10));
    assert_eq!(store.purge_ended(&a).await.unwrap(), 1);
    // An absurd lifetime is refused with a clear error, and nothing is stored.
    let err = store
        .create(
            NewSession::new(a.clone(), alice.clone())
                .with_absolute_ttl(Duration::from_secs(u64::MAX / 4)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), tenancy_core::ErrorKind::Invalid, "{err}");
    pool.close().await;
}

/// A tenant with thousands of ended sessions is purged whole, in several transactions (a
/// thousand rows each), leaving its live sessions and other tenants' ended ones alone; the
/// deadline index the purge looks them up by exists.
#[tokio::test]
async fn purging_thousands_of_ended_sessions_leaves_the_live_ones() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let pool = env.runtime_pool(2).await;
    let store = PgSessionStore::with_clock(pool.clone(), Arc::new(ManualClock::new()));
    let (a, b) = (tenant("acme"), tenant("globex"));
    let mut admin = env.admin().await;
    // The store's clock reads 2030-01-01.
    let insert = "INSERT INTO tenancy.sessions (tenant_id, id, user_id, created_at, \
                  last_seen_at, expires_at, idle_timeout_secs, deadline, version, data) \
                  SELECT $1, $2 || g, 'u', d, d, d, 0, d, 1, '{}' \
                  FROM generate_series(1, $3) g, (SELECT $4::timestamptz AS d) t";
    for (t, prefix, n, deadline) in [
        (&a, "ended", 2_500, "2029-12-31T00:00:00Z"),
        (&a, "live", 3, "2030-06-01T00:00:00Z"),
        (&b, "ended", 2, "2029-12-31T00:00:00Z"),
    ] {
        sqlx::query(insert)
            .bind(t.as_str())
            .bind(prefix)
            .bind(n)
            .bind(deadline)
            .execute(&mut admin)
            .await
            .unwrap();
    }
    assert_eq!(store.purge_ended(&a).await.unwrap(), 2_500);
    let left: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tenant_id, count(*) FROM tenancy.sessions GROUP BY tenant_id ORDER BY 1",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(left, [("acme".to_owned(), 3), ("globex".to_owned(), 2)]);
    assert_eq!(store.purge_ended(&a).await.unwrap(), 0);
    let index: Option<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'tenancy' \
         AND indexname = 'sessions_by_deadline'",
    )
    .fetch_optional(&mut admin)
    .await
    .unwrap();
    assert!(
        index.is_some_and(|d| d.contains("(tenant_id, deadline)")),
        "no deadline index"
    );
    pool.close().await;
}

#[tokio::test]
async fn tenant_directory_conformance() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let platform = PlatformPool::connect(env.config_as(env.platform.as_str()))
        .await
        .unwrap();
    let dir = PgTenantDirectory::new(platform.clone());
    testkit::tenant_directory(&dir, &Fixture::new()).await;

    // Changes made by one instance are visible to another on the next call.
    let other = PgTenantDirectory::new(
        PlatformPool::connect(env.config_as(env.platform.as_str()))
            .await
            .unwrap(),
    );
    let a = tenant("acme");
    dir.put(
        &a,
        TenantSettings::new(TierName::parse("standard").unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(
        other.get(&a).await.unwrap().unwrap().status,
        TenantStatus::Active
    );
    let mut suspended = TenantSettings::new(TierName::parse("premium").unwrap());
    suspended.status = TenantStatus::Suspended;
    other.put(&a, suspended.clone()).await.unwrap();
    assert_eq!(dir.get(&a).await.unwrap(), Some(suspended));

    // The runtime role cannot read or change the directory.
    let pool = env.runtime_pool(1).await;
    let mut tx = pool.begin(&a).await.unwrap();
    assert_42501(
        sqlx::query("UPDATE tenancy.tenants SET status = 'active'")
            .execute(&mut *tx)
            .await,
        "runtime role writes the directory",
    );
    drop(tx);
    pool.close().await;

    // A corrupt row is reported as such, not served.
    let mut admin = env.admin().await;
    sqlx::query("UPDATE tenancy.tenants SET tier = 'Not A Tier' WHERE id = 'acme'")
        .execute(&mut admin)
        .await
        .unwrap();
    let err = dir.get(&a).await.unwrap_err();
    assert_eq!(err.kind(), tenancy_core::ErrorKind::Corrupt, "{err}");
    platform.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_pool_figures_without_touching_the_database() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let pool = TenantPool::connect(
        env.runtime_config()
            .with_max_connections(2)
            .with_acquire_timeout(Duration::from_millis(300))
            .with_health_interval(Duration::from_millis(100), Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let health = pool.health();
    assert_eq!(health.component(), "database");
    let h = health.check().await;
    assert_eq!(h.status, HealthStatus::Up, "{h:?}");
    assert!(h.latency_ms.is_some());
    assert_eq!(h.figures["max"], 2);

    // Hold every connection: the check still answers at once, with the figures.
    let a = tenant("acme");
    let t1 = pool.begin(&a).await.unwrap();
    let t2 = pool.begin(&a).await.unwrap();
    let waiter = {
        let pool = pool.clone();
        let a = a.clone();
        tokio::spawn(async move { pool.begin(&a).await.map(drop) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let h = health.check().await;
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "check waited on the database"
    );
    assert_eq!(
        (h.figures["size"], h.figures["in_use"], h.figures["idle"]),
        (2, 2, 0),
        "{h:?}"
    );
    assert_eq!(h.figures["waiting"], 1, "{h:?}");
    let err = waiter.await.unwrap().unwrap_err();
    assert!(matches!(err, tenancy_db::Error::PoolTimedOut(_)), "{err:?}");
    let m = pool.metrics();
    assert_eq!(
        (m.waiting, m.acquire_timeouts_total, m.acquired_total),
        (0, 1, 2),
        "{m:?}"
    );
    // The background ping keeps running on a busy pool (on a dedicated connection).
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(health.check().await.status, HealthStatus::Up);
    drop((t1, t2));

    // A database that goes away: the next background ping reports it down.
    let mut admin = env.admin().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER ROLE \"{}\" NOLOGIN",
        env.runtime
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
        .bind(env.runtime.as_str())
        .execute(&mut admin)
        .await
        .unwrap();
    let mut down = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let h = health.check().await;
        if h.status == HealthStatus::Down {
            down = Some(h);
            break;
        }
    }
    let down = down.expect("health never reported the database down");
    let detail = down.detail.unwrap_or_default();
    assert!(!detail.contains("postgres://"), "{detail}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER ROLE \"{}\" LOGIN",
        env.runtime
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let mut up = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if health.check().await.status == HealthStatus::Up {
            up = true;
            break;
        }
    }
    assert!(up, "health never recovered");
    // And the pool serves again.
    let mut tx = pool.begin(&a).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(one, 1);
    drop(tx);
    pool.close().await;
    assert_eq!(health.check().await.status, HealthStatus::Down);
}

#[tokio::test]
async fn connect_retries_then_reports_the_failure() {
    // Nothing listens on port 1: every attempt fails with an I/O error and is retried.
    let config = tenancy_db::DbConfig::new("postgres://nobody@127.0.0.1:1/none")
        .unwrap()
        .with_connect_retry(3, Duration::from_millis(20), Duration::from_millis(40));
    let started = std::time::Instant::now();
    let err = TenantPool::connect(config).await.unwrap_err();
    let tenancy_db::Error::Connect { attempts, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(attempts, 3);
    assert!(
        started.elapsed() >= Duration::from_millis(60),
        "no backoff between attempts"
    );
    let core: tenancy_core::Error = tenancy_db::Error::Connect {
        attempts,
        source: sqlx::Error::PoolClosed,
    }
    .into();
    assert!(core.is_retryable());
}
