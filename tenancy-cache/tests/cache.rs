//! `RedisTenantCache` against real Redis: the core conformance suite on one node and on the
//! local Cluster, and what the suite does not cover.

mod common;

use std::time::Duration;

use tenancy_cache::RedisTenantCache;
use tenancy_core::testkit::{Fixture, TimeControl, tenant_cache};
use tenancy_core::{ErrorKind, TenantCache};

#[tokio::test]
async fn conformance_single_node() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let cache = RedisTenantCache::new(pool).with_key_space(ks);
    tenant_cache(&cache, TimeControl::Real, &Fixture::new()).await;
}

#[tokio::test]
async fn conformance_cluster() {
    let Some((pool, ks)) = common::cluster().await else {
        return;
    };
    let cache = RedisTenantCache::new(pool).with_key_space(ks);
    tenant_cache(&cache, TimeControl::Real, &Fixture::new()).await;
}

#[tokio::test]
async fn invalidation_is_one_step_and_leaves_nothing_behind() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let cache = RedisTenantCache::new(pool.clone()).with_key_space(ks.clone());
    let fx = Fixture::new();
    let (a, b) = (fx.tenant("a"), fx.tenant("b"));
    for i in 0..200 {
        cache
            .set(&a, &format!("k{i}"), b"v", Duration::from_secs(30))
            .await
            .unwrap();
    }
    cache
        .set(&b, "k0", b"b", Duration::from_secs(30))
        .await
        .unwrap();
    cache.invalidate_tenant(&a).await.unwrap();
    for i in 0..200 {
        assert_eq!(cache.get(&a, &format!("k{i}")).await.unwrap(), None);
        assert!(
            !cache.delete(&a, &format!("k{i}")).await.unwrap(),
            "stale entry counted as live"
        );
    }
    assert_eq!(
        cache.get(&b, "k0").await.unwrap().as_deref(),
        Some(&b"b"[..])
    );
    // Invalidating a tenant that has nothing creates nothing.
    let idle = fx.tenant("idle");
    cache.invalidate_tenant(&idle).await.unwrap();
    let exists: i64 = pool
        .query(redis::cmd("EXISTS").arg(ks.cache_generation(&idle)))
        .await
        .unwrap();
    assert_eq!(exists, 0);
    // The generation key lives as long as the longest entry.
    cache
        .set(&b, "long", b"x", Duration::from_secs(90))
        .await
        .unwrap();
    let pttl: i64 = pool
        .query(redis::cmd("PTTL").arg(ks.cache_generation(&b)))
        .await
        .unwrap();
    assert!((85_000..=90_000).contains(&pttl), "{pttl}");
}

#[tokio::test]
async fn values_round_trip_byte_for_byte_and_bad_input_is_refused() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let cache = RedisTenantCache::new(pool).with_key_space(ks);
    let fx = Fixture::new();
    let t = fx.tenant("bytes");
    let all: Vec<u8> = (0..=255).collect();
    for value in [&b""[..], b"0:1:2", &all, b"{t:other}"] {
        cache
            .set(&t, "v", value, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(cache.get(&t, "v").await.unwrap().as_deref(), Some(value));
    }
    let err = cache
        .set(&t, "big", &vec![0; (64 << 20) + 1], Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    let err = cache.get(&t, "tab\there").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
}

#[tokio::test]
async fn an_evicted_generation_never_brings_invalidated_entries_back() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let cache = RedisTenantCache::new(pool.clone()).with_key_space(ks.clone());
    let fx = Fixture::new();
    let t = fx.tenant("evicted");
    let ttl = Duration::from_secs(30);
    let generation = ks.cache_generation(&t);
    let evict = || async {
        let _: () = pool
            .query(redis::cmd("DEL").arg(&generation))
            .await
            .unwrap();
    };
    cache.set(&t, "stale", b"old", ttl).await.unwrap();
    cache.invalidate_tenant(&t).await.unwrap();
    assert_eq!(cache.get(&t, "stale").await.unwrap(), None);
    // Redis evicts the generation key (maxmemory) but not the entry.
    evict().await;
    assert_eq!(
        cache.get(&t, "stale").await.unwrap(),
        None,
        "served an invalidated entry once the generation was gone"
    );
    // The next write starts a generation the invalidated entry never had.
    cache.set(&t, "fresh", b"new", ttl).await.unwrap();
    assert_eq!(cache.get(&t, "stale").await.unwrap(), None, "came back");
    assert_eq!(
        cache.get(&t, "fresh").await.unwrap().as_deref(),
        Some(&b"new"[..])
    );
    // A current entry whose generation is evicted is a miss (never a stale hit), and is
    // not counted as deleted.
    evict().await;
    assert_eq!(cache.get(&t, "fresh").await.unwrap(), None);
    assert!(!cache.delete(&t, "fresh").await.unwrap());
    cache.set(&t, "fresh", b"again", ttl).await.unwrap();
    assert_eq!(
        cache.get(&t, "fresh").await.unwrap().as_deref(),
        Some(&b"again"[..])
    );
    // Invalidation still hides what was written before it.
    cache.invalidate_tenant(&t).await.unwrap();
    assert_eq!(cache.get(&t, "fresh").await.unwrap(), None);
}
