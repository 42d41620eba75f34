//! `RedisDenylist` against real Redis: the core conformance suite on one node and on the
//! local Cluster, plus what the suite does not cover (a second instance, the Redis TTL,
//! clocks that disagree, an evicting server).

mod common;

use std::sync::Arc;
use std::time::Duration;

use tenancy_cache::RedisDenylist;
use tenancy_cache::denylist::GC_GRACE_SECS;
use tenancy_core::testkit::{Fixture, TimeControl, denylist};
use tenancy_core::{Clock, Denylist, ErrorKind, ManualClock, TenantId};

fn list(
    pool: tenancy_cache::RedisPool,
    ks: tenancy_cache::keys::KeySpace,
) -> (RedisDenylist, ManualClock) {
    let clock = ManualClock::new();
    let list = RedisDenylist::new(pool)
        .with_key_space(ks)
        .with_clock(Arc::new(clock.clone()));
    (list, clock)
}

fn now_of(clock: &ManualClock) -> impl Fn() -> i64 + use<> {
    let clock = clock.clone();
    move || clock.now().unix_timestamp()
}

async fn conformance(target: Option<(tenancy_cache::RedisPool, tenancy_cache::keys::KeySpace)>) {
    let Some((pool, ks)) = target else {
        return;
    };
    let (list, clock) = list(pool, ks);
    denylist(
        &list,
        now_of(&clock),
        TimeControl::Manual(clock),
        &Fixture::new(),
    )
    .await;
}

#[tokio::test]
async fn conformance_single_node() {
    conformance(common::single().await).await;
}

#[tokio::test]
async fn conformance_cluster() {
    conformance(common::cluster().await).await;
}

#[tokio::test]
async fn a_revocation_on_one_instance_holds_on_another() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let (one, clock) = list(pool.clone(), ks.clone());
    let other = RedisDenylist::new(pool)
        .with_key_space(ks)
        .with_clock(Arc::new(clock.clone()));
    let acme = TenantId::parse(&tenancy_tests::unique("acme")).unwrap();
    let now = clock.now().unix_timestamp();
    one.revoke(&acme, "j", now + 600).await.unwrap();
    assert!(other.is_revoked(&acme, "j").await.unwrap());
}

#[tokio::test]
async fn redis_keeps_an_entry_past_its_end_by_the_grace_only() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let (list, clock) = list(pool.clone(), ks.clone());
    let acme = TenantId::parse(&tenancy_tests::unique("acme")).unwrap();
    let now = clock.now().unix_timestamp();
    list.revoke(&acme, "j", now + 600).await.unwrap();
    let key = ks.denylist_entry(&acme, "j");
    let ttl: i64 = pool.query(redis::cmd("TTL").arg(&key)).await.unwrap();
    assert!(
        (600 + GC_GRACE_SECS - 5..=600 + GC_GRACE_SECS).contains(&ttl),
        "ttl {ttl}"
    );
    // A far-future expiry still gets a TTL Redis accepts.
    list.revoke(&acme, "far", i64::MAX).await.unwrap();
    assert!(list.is_revoked(&acme, "far").await.unwrap());
    let _: () = pool
        .query(redis::cmd("DEL").arg(ks.denylist_entry(&acme, "far")))
        .await
        .unwrap();
    // An entry whose value is not a time is reported, not taken for "not revoked".
    let _: () = pool
        .query(redis::cmd("SET").arg(&key).arg("garbage"))
        .await
        .unwrap();
    let err = list.is_revoked(&acme, "j").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    // The garbage has no expiry of its own: not left in the shared Redis.
    let _: () = pool.query(redis::cmd("DEL").arg(&key)).await.unwrap();
}

#[tokio::test]
async fn an_instance_whose_clock_runs_behind_still_sees_the_entry() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    // The revoking instance's clock runs 30 s ahead of the one that verifies. Redis expires
    // the key on its own clock, after the time left on the revoker's clock plus the grace:
    // that must outlast the time left on the slow clock, or the slow instance would accept the
    // token again before its own clock reaches expires_at.
    let (ahead, fast) = list(pool.clone(), ks.clone());
    let slow = ManualClock::new();
    fast.advance(Duration::from_secs(30));
    let behind = RedisDenylist::new(pool.clone())
        .with_key_space(ks.clone())
        .with_clock(Arc::new(slow.clone()));
    let acme = TenantId::parse(&tenancy_tests::unique("acme")).unwrap();
    let expires_at = fast.now().unix_timestamp() + 2;
    ahead.revoke(&acme, "j", expires_at).await.unwrap();
    assert!(behind.is_revoked(&acme, "j").await.unwrap());
    let left_on_slow_clock_ms = (expires_at - slow.now().unix_timestamp()) * 1000;
    let pttl: i64 = pool
        .query(redis::cmd("PTTL").arg(ks.denylist_entry(&acme, "j")))
        .await
        .unwrap();
    assert!(
        pttl >= left_on_slow_clock_ms,
        "Redis drops the entry in {pttl} ms; the slow clock ends it in {left_on_slow_clock_ms} ms"
    );
    fast.advance(Duration::from_secs(3));
    assert!(
        !ahead.is_revoked(&acme, "j").await.unwrap(),
        "ended on the fast clock"
    );
}

#[tokio::test]
async fn a_redis_that_may_evict_entries_is_refused_at_start_up() {
    let Some(server) = common::DedicatedRedis::start().await else {
        return;
    };
    let mut admin = server.admin().await;
    let pool = common::config(tenancy_cache::RedisConfig::single(server.url()))
        .connect()
        .await
        .unwrap();
    let list = RedisDenylist::new(pool);
    list.check_eviction_policy()
        .await
        .expect("noeviction, the default, is safe");
    for (setting, value) in [("maxmemory", "100mb"), ("maxmemory-policy", "allkeys-lru")] {
        let _: () = redis::cmd("CONFIG")
            .arg(&["SET", setting, value])
            .query_async(&mut admin)
            .await
            .unwrap();
    }
    let err = list
        .check_eviction_policy()
        .await
        .expect_err("an evicting policy is refused");
    assert!(
        err.to_string().contains("allkeys-lru") && err.to_string().contains("denylist"),
        "{err}"
    );
}
