//! The pool: health figures, connect retries with backoff, recovery after a restart, and the
//! error kinds backends report while Redis is away.

mod common;

use std::time::{Duration, Instant};

use common::{DedicatedRedis, Relay};
use tenancy_cache::{Error, RedisConfig, RedisRateLimiter, RedisSessionStore};
use tenancy_core::testkit::Fixture;
use tenancy_core::{
    DecisionSource, ErrorKind, HealthCheck, HealthStatus, Limit, NewSession, Quota,
    RateLimitRequest, RateLimiter, SessionStore,
};

#[tokio::test]
async fn health_reports_latency_and_pool_figures() {
    let Some((pool, _)) = common::single().await else {
        return;
    };
    let h = pool.check().await;
    assert_eq!(h.status, HealthStatus::Up, "{h:?}");
    assert!(h.latency_ms.is_some());
    assert!(
        h.figures["connections"] >= 1 && h.figures["created"] >= 1,
        "{h:?}"
    );
    assert_eq!(pool.component(), "redis");
}

#[tokio::test]
async fn connecting_to_nothing_retries_with_backoff_then_fails_clearly() {
    let Some(mut server) = DedicatedRedis::start().await else {
        return;
    };
    let url = server.url();
    server.stop();
    let start = Instant::now();
    let err = RedisConfig::single(url)
        .with_connect_retries(3, Duration::from_millis(100))
        .with_acquire_timeout(Duration::from_secs(3))
        .connect()
        .await
        .expect_err("nothing listens there");
    let took = start.elapsed();
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
    // Three attempts: 100 ms, then 200 ms of backoff between them.
    assert!(took >= Duration::from_millis(300), "no backoff: {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "the first failure ends the wait: {took:?}"
    );
    assert_eq!(
        tenancy_core::Error::from(err).kind(),
        ErrorKind::Unavailable
    );
}

#[tokio::test]
async fn a_min_idle_above_the_pool_size_is_clamped() {
    let Some(redis) = tenancy_tests::redis().await else {
        return;
    };
    let pool = RedisConfig::single(redis.url())
        .with_pool_size(2)
        .with_min_idle(10)
        .connect()
        .await
        .unwrap();
    assert!(pool.figures().connections <= 2);
}

#[tokio::test]
async fn malformed_urls_are_refused_up_front() {
    for url in ["", "http://x", "redis://[::1"] {
        let err = RedisConfig::single(url).connect_lazy().expect_err(url);
        assert!(matches!(err, Error::Invalid(_)), "{url}: {err:?}");
    }
    let err = RedisConfig::cluster(Vec::<String>::new())
        .connect_lazy()
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)));
}

#[tokio::test]
async fn sessions_report_unavailable_while_redis_is_down_and_work_after_a_restart() {
    let Some(mut server) = DedicatedRedis::start().await else {
        return;
    };
    let pool = RedisConfig::single(server.url())
        .with_acquire_timeout(Duration::from_millis(500))
        .with_connect_retries(1, Duration::ZERO)
        .connect()
        .await
        .unwrap();
    let store = RedisSessionStore::new(pool.clone());
    let fx = Fixture::new();
    let s = store
        .create(NewSession::new(fx.tenant("down"), fx.user("alice")))
        .await
        .unwrap();
    server.stop();
    let err = store.load(&s.tenant, &s.id).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let err = store.save(&s).await.unwrap_err();
    assert!(
        err.is_retryable(),
        "a save while Redis is down is not a conflict: {err}"
    );
    assert_eq!(pool.check().await.status, HealthStatus::Down);
    server.restart().await;
    // The dead connections were dropped; new ones open on demand. (The server restarted
    // empty: no persistence.)
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match store.load(&s.tenant, &s.id).await {
            Ok(found) => {
                assert_eq!(found, None);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "no recovery: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pool.figures().closed_broken >= 1, "{:?}", pool.figures());
    assert_eq!(pool.check().await.status, HealthStatus::Up);
}

#[tokio::test]
async fn after_a_fail_over_the_next_command_reconnects_instead_of_failing_for_ever() {
    let (Some(a), Some(b)) = (DedicatedRedis::start().await, DedicatedRedis::start().await) else {
        return;
    };
    // The pool reaches Redis through one address (a DNS name or a load balancer in
    // production), which fail-overs point at the new primary.
    let relay = Relay::start(a.port()).await;
    let pool = common::config(RedisConfig::single(common::relay_url(&relay)))
        .with_pool_size(1)
        .connect()
        .await
        .unwrap();
    let set = || {
        let mut cmd = redis::cmd("SET");
        cmd.arg("failover").arg("v");
        cmd
    };
    pool.query::<()>(&set()).await.unwrap();
    let server_kind = |err: &Error| match err {
        Error::Redis(e) => Some(e.kind()),
        _ => None,
    };

    // Fail-over: A becomes B's replica; the address now leads to B. The pooled connection
    // still goes to A, which refuses writes.
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(b.port())
        .query_async(&mut a.admin().await)
        .await
        .unwrap();
    relay.point_to(b.port());
    let err = pool
        .query::<()>(&set())
        .await
        .expect_err("A is a replica now");
    assert_eq!(
        server_kind(&err),
        Some(redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)),
        "{err:?}"
    );
    assert!(err.is_unavailable(), "{err:?}");
    pool.query::<()>(&set())
        .await
        .expect("the next write reconnects, to the new primary");
    let f = pool.figures();
    assert_eq!((f.created, f.closed_broken), (2, 1), "{f:?}");

    // Fail-back, this time with B losing its (unreachable) primary and refusing to serve
    // stale data: MASTERDOWN on the old connection, then a fresh one to A.
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut a.admin().await)
        .await
        .unwrap();
    let mut b_admin = b.admin().await;
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "replica-serve-stale-data", "no"])
        .query_async(&mut b_admin)
        .await
        .unwrap();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(relay_dead_port())
        .query_async(&mut b_admin)
        .await
        .unwrap();
    relay.point_to(a.port());
    let get = redis::cmd("GET").arg("failover").clone();
    let err = pool
        .query::<Option<String>>(&get)
        .await
        .expect_err("B lost its primary");
    assert_eq!(
        server_kind(&err),
        Some(redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown)),
        "{err:?}"
    );
    pool.query::<Option<String>>(&get)
        .await
        .expect("the next command reconnects, to A");
    pool.query::<()>(&set()).await.expect("A takes writes");
    let f = pool.figures();
    assert_eq!((f.created, f.closed_broken), (3, 2), "{f:?}");
}

/// A loopback port nothing listens on.
fn relay_dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// A connection slower to open than the limiter's bound: the calls that find the pool empty
/// share one attempt, give up at their bound, and the attempt goes on without them, so the
/// connection is there for the next decision (before, each call opened its own and dropped
/// it at the bound, and no decision ever reached Redis).
#[tokio::test]
async fn a_connection_slower_than_the_limiters_bound_is_made_once_and_kept() {
    let Some(redis) = DedicatedRedis::start().await else {
        return;
    };
    let relay = Relay::start(redis.port()).await;
    relay.delay_connections(Duration::from_millis(400));
    let pool = common::config(RedisConfig::single(common::relay_url(&relay)))
        .connect_lazy()
        .unwrap();
    let limiter = RedisRateLimiter::builder(pool.clone())
        .with_timeout(Duration::from_millis(100))
        // The breaker stays out of it: every call asks Redis.
        .with_breaker(1_000, Duration::from_millis(1))
        .with_denial_cache(0)
        .build();
    let fx = Fixture::new();
    let request = RateLimitRequest::new(
        fx.tenant("slow"),
        Some(fx.user("u")),
        vec![Limit::tenant(Quota::per_minute(1_000))],
    );

    let limiter = std::sync::Arc::new(limiter);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (limiter, request) = (limiter.clone(), request.clone());
        calls.spawn(async move { RateLimiter::check(&*limiter, &request).await });
    }
    while let Some(d) = calls.join_next().await {
        let d = d.unwrap();
        assert!(
            d.as_ref().is_err()
                || d.as_ref()
                    .is_ok_and(|d| d.source != DecisionSource::Backend),
            "decided by Redis within the bound through a 400 ms connection: {d:?}"
        );
    }
    // The attempt finishes without its callers.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let next = RateLimiter::check(&*limiter, &request).await.unwrap();
    assert_eq!(next.source, DecisionSource::Backend, "{next:?}");
    assert_eq!(pool.figures().created, 1, "{:?}", pool.figures());
}
