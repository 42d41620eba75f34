//! The reference contract over real HTTP on loopback with PostgreSQL (records under
//! row-level security, sessions, tenant directory, audit) and Redis (limits, sessions),
//! against the axum server and the actix-web server: the same table of cases as memory
//! mode, each server in its own database and Redis key space.

mod common;

use common::cases::{contract, run};
use common::{Flavor, Harness, assert_same, config};
use sqlx::Connection as _;

async fn start(flavor: Flavor) -> Option<(Harness, tenancy_tests::TestDatabase)> {
    let db = tenancy_tests::postgres().await?;
    let redis = tenancy_tests::redis().await?;
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), |c| {
        c.database_url = Some(db.url().to_owned());
        c.redis_url = Some(redis.url().to_owned());
        c.redis_namespace = format!("{}{}", redis.prefix(), flavor.name());
    });
    Some((Harness::start(flavor, c, dir).await, db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_with_postgres_and_redis_on_both_servers() {
    let steps = contract();
    let run_one = |flavor| {
        let steps = &steps;
        async move {
            let (mut h, db) = start(flavor).await?;
            let health = h.get("/health", None).await;
            for component in ["redis", "audit"] {
                assert_eq!(
                    health.body["components"][component]["status"],
                    "up",
                    "{}: {}",
                    flavor.name(),
                    health.text
                );
            }
            let t = run(&h, steps).await;
            assert!(
                h.stop().await,
                "{}: the audit queue drains at shutdown",
                flavor.name()
            );
            drop(db);
            Some(t)
        }
    };
    let (axum, actix) = tokio::join!(run_one(Flavor::Axum), run_one(Flavor::Actix));
    let (Some(axum), Some(actix)) = (axum, actix) else {
        return;
    };
    assert_same(("axum", &axum), ("actix", &actix));
}

/// Two instances (one axum, one actix-web) sharing PostgreSQL, Redis or both: a session-less
/// token logged out on one is refused by the other, whose own memory never saw the logout.
async fn logout_holds_on_another_instance(with_postgres: bool, with_redis: bool) {
    let db = if with_postgres {
        let Some(db) = tenancy_tests::postgres().await else {
            return;
        };
        Some(db)
    } else {
        None
    };
    let redis = if with_redis {
        let Some(r) = tenancy_tests::redis().await else {
            return;
        };
        Some(r)
    } else {
        None
    };
    let instance = |flavor: Flavor| {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), |c| {
            c.database_url = db.as_ref().map(|d| d.url().to_owned());
            if let Some(r) = &redis {
                c.redis_url = Some(r.url().to_owned());
                c.redis_namespace = format!("{}shared", r.prefix());
            }
        });
        Harness::start(flavor, c, dir)
    };
    let mut one = instance(Flavor::Axum).await;
    let mut other = instance(Flavor::Actix).await;
    let token = one.mint("acme", "carol", "user", &["records:read"]);
    assert_eq!(other.get("/v1/records", Some(&token)).await.status, 200);
    let out = one
        .send("POST", "/v1/auth/logout", Some(&token), Some("{}"), &[])
        .await;
    assert_eq!(out.status, 204, "{}", out.text);
    let after = other.get("/v1/records", Some(&token)).await;
    assert_eq!(
        after.status, 401,
        "the other instance still accepts a logged-out token: {}",
        after.text
    );
    assert_eq!(one.get("/v1/records", Some(&token)).await.status, 401);
    // The entry is where the server keeps revoked tokens: PostgreSQL whenever it is set.
    if let Some(db) = &db {
        let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.revoked_tokens")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(rows, 1, "the revocation is not in PostgreSQL");
    }
    // A session-bound token (a login) logged out on the other instance: its session ends in
    // the shared store, and the first instance refuses it.
    let (access, _refresh) = one.login("acme", "bob").await;
    assert_eq!(other.get("/v1/me", Some(&access)).await.status, 200);
    let out = other
        .send("POST", "/v1/auth/logout", Some(&access), Some("{}"), &[])
        .await;
    assert_eq!(out.status, 204, "{}", out.text);
    let after = one.get("/v1/me", Some(&access)).await;
    assert_eq!(after.status, 401, "a logged-out session: {}", after.text);
    assert!(one.stop().await, "axum: the audit queue drains at shutdown");
    assert!(
        other.stop().await,
        "actix: the audit queue drains at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logout_holds_on_every_instance_sharing_redis() {
    logout_holds_on_another_instance(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logout_holds_on_every_instance_sharing_postgres() {
    logout_holds_on_another_instance(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logout_holds_on_every_instance_sharing_postgres_and_redis() {
    logout_holds_on_another_instance(true, true).await;
}
