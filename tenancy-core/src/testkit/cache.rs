use std::time::Duration;

use super::{Fixture, TimeControl};
use crate::{ErrorKind, MAX_CACHE_TTL, MAX_CACHE_VALUE_BYTES, TenantCache};

/// The [`TenantCache`] conformance suite. `time` as for
/// [`session_store`](super::session_store).
pub async fn tenant_cache<C: TenantCache + ?Sized>(cache: &C, time: TimeControl, fx: &Fixture) {
    let (a, b) = (fx.tenant("cache-a"), fx.tenant("cache-b"));
    let ttl = Duration::from_secs(60);
    let stats0 = cache.stats();
    let get = |t, k: &'static str| async move {
        cache
            .get(t, k)
            .await
            .unwrap_or_else(|e| panic!("get {k}: {e}"))
    };

    assert_eq!(get(&a, "k").await, None, "miss on an empty cache");
    cache
        .set(&a, "k", b"a-value", ttl)
        .await
        .unwrap_or_else(|e| panic!("set: {e}"));
    assert_eq!(
        get(&a, "k").await.as_deref(),
        Some(&b"a-value"[..]),
        "round trip"
    );
    let s = cache.stats();
    assert_eq!(
        (s.hits - stats0.hits, s.misses - stats0.misses),
        (1, 1),
        "hit and miss counts"
    );

    // Isolation: same key, other tenant.
    assert_eq!(get(&b, "k").await, None, "isolation: B reads A's entry");
    cache
        .set(&b, "k", b"b-value", ttl)
        .await
        .unwrap_or_else(|e| panic!("set: {e}"));
    assert_eq!(
        get(&a, "k").await.as_deref(),
        Some(&b"a-value"[..]),
        "isolation: B overwrote A"
    );
    assert!(
        !cache
            .delete(&b, "nope")
            .await
            .unwrap_or_else(|e| panic!("delete: {e}"))
    );

    // Hostile keys stay inside the namespace and round trip.
    for key in ["{t:other}", "*", "a:b:c", "../x", "ü ñ 漢字", "}{"] {
        cache
            .set(&a, key, key.as_bytes(), ttl)
            .await
            .unwrap_or_else(|e| panic!("set {key}: {e}"));
        assert_eq!(
            cache.get(&a, key).await.ok().flatten().as_deref(),
            Some(key.as_bytes()),
            "hostile key {key}"
        );
        assert_eq!(
            cache.get(&b, key).await.ok().flatten(),
            None,
            "hostile key {key} crossed tenants"
        );
    }
    for bad in ["", "line\nbreak", &"k".repeat(513)] {
        let err = cache
            .set(&a, bad, b"x", ttl)
            .await
            .expect_err("invalid key accepted");
        assert_eq!(err.kind(), ErrorKind::Invalid);
    }
    let err = cache
        .set(&a, "zero", b"x", Duration::ZERO)
        .await
        .expect_err("zero ttl accepted");
    assert_eq!(err.kind(), ErrorKind::Invalid);

    // The value and TTL bounds every backend applies (`check_cache_entry`).
    let err = cache
        .set(&a, "long", b"x", MAX_CACHE_TTL + Duration::from_secs(1))
        .await
        .expect_err("bounds: a TTL over the maximum accepted");
    assert_eq!(
        err.kind(),
        ErrorKind::Invalid,
        "bounds: ttl over the maximum"
    );
    cache
        .set(&a, "long", b"ten years", MAX_CACHE_TTL)
        .await
        .unwrap_or_else(|e| panic!("bounds: the maximum TTL refused: {e}"));
    assert_eq!(
        get(&a, "long").await.as_deref(),
        Some(&b"ten years"[..]),
        "bounds: an entry with the maximum TTL"
    );
    let big = vec![0u8; MAX_CACHE_VALUE_BYTES + 1];
    let err = cache
        .set(&a, "big", &big, ttl)
        .await
        .expect_err("bounds: a value over the size cap accepted");
    assert_eq!(err.kind(), ErrorKind::Invalid, "bounds: value over the cap");
    drop(big);
    assert_eq!(
        get(&a, "big").await,
        None,
        "bounds: a refused value was stored"
    );
    assert!(
        cache
            .delete(&a, "long")
            .await
            .unwrap_or_else(|e| panic!("delete: {e}")),
        "bounds: delete the long-lived entry"
    );

    // Overwrite and delete.
    cache
        .set(&a, "k", b"second", ttl)
        .await
        .unwrap_or_else(|e| panic!("set: {e}"));
    assert_eq!(
        get(&a, "k").await.as_deref(),
        Some(&b"second"[..]),
        "overwrite"
    );
    assert!(
        cache
            .delete(&a, "k")
            .await
            .unwrap_or_else(|e| panic!("delete: {e}")),
        "delete live"
    );
    assert_eq!(get(&a, "k").await, None, "deleted entry still readable");

    // Tenant invalidation touches one tenant only.
    cache
        .set(&a, "x", b"1", ttl)
        .await
        .unwrap_or_else(|e| panic!("set: {e}"));
    cache
        .set(&a, "y", b"2", ttl)
        .await
        .unwrap_or_else(|e| panic!("set: {e}"));
    cache
        .invalidate_tenant(&a)
        .await
        .unwrap_or_else(|e| panic!("invalidate: {e}"));
    assert_eq!(get(&a, "x").await, None, "invalidate: x survived");
    assert_eq!(get(&a, "y").await, None, "invalidate: y survived");
    assert_eq!(
        get(&b, "k").await.as_deref(),
        Some(&b"b-value"[..]),
        "invalidate: B's entry lost"
    );
    cache
        .set(&a, "x", b"again", ttl)
        .await
        .unwrap_or_else(|e| panic!("set: {e}"));
    assert_eq!(
        get(&a, "x").await.as_deref(),
        Some(&b"again"[..]),
        "invalidate: tenant unusable afterwards"
    );

    // TTL.
    cache
        .set(&a, "short", b"v", Duration::from_secs(1))
        .await
        .unwrap_or_else(|e| panic!("set: {e}"));
    assert!(get(&a, "short").await.is_some(), "ttl: expired too early");
    time.advance(Duration::from_millis(1500)).await;
    assert_eq!(get(&a, "short").await, None, "ttl: entry outlived its ttl");
}
