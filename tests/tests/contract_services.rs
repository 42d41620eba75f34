//! The reference contract over real HTTP on loopback with PostgreSQL (records under
//! row-level security, sessions, tenant directory, audit) and Redis (limits, sessions),
//! against the axum server and the actix-web server: the same table of cases as memory
//! mode, each server in its own database and Redis key space.

mod common;

use common::cases::{contract, run};
use common::{Flavor, Harness, assert_same, config};

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
