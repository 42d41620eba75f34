use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Fixture;
use crate::{
    Limit, LimitMode, LimitScope, Quota, RateLimitDecision, RateLimitRequest, RateLimiter,
    TenantId, UserId,
};

/// About every other decision of the suite (the turn is shared by suites that run at once) is
/// asked of `try_check` first, falling back to `check` when it answers `None`: every case
/// holds for both ways of deciding.
async fn check(l: &dyn RateLimiter, r: &RateLimitRequest, case: &str) -> RateLimitDecision {
    static TURN: AtomicBool = AtomicBool::new(false);
    let now = if TURN.fetch_xor(true, Ordering::Relaxed) {
        l.try_check(r)
    } else {
        None
    };
    let decided = match now {
        Some(d) => d,
        None => l.check(r).await,
    };
    decided.unwrap_or_else(|e| panic!("{case}: check failed: {e}"))
}

fn req(t: &TenantId, u: &UserId, limits: Vec<Limit>) -> RateLimitRequest {
    RateLimitRequest::new(t.clone(), Some(u.clone()), limits)
}

/// The [`RateLimiter`] conformance suite.
///
/// Quotas use periods of minutes and hours, so the wall-clock time the suite takes does not
/// change any decision: it suits backends whose clock is a server's.
pub async fn rate_limiter(limiter: Arc<dyn RateLimiter>, fx: &Fixture) {
    let l = &*limiter;
    let alice = fx.user("alice");
    let bob = fx.user("bob");

    // Exact burst, then a denial with the right retry-after.
    let t = fx.tenant("burst");
    let limits = vec![Limit::tenant(Quota::per_hour(60).with_burst(3))];
    for i in 0..3 {
        let d = check(l, &req(&t, &alice, limits.clone()), "burst").await;
        assert!(d.allowed, "burst: request {i} of 3 must pass");
        assert_eq!(
            d.states[0].remaining(),
            2 - i,
            "burst: remaining after request {i}"
        );
    }
    let denied = check(l, &req(&t, &alice, limits.clone()), "burst").await;
    assert!(!denied.allowed, "burst: request 4 of 3 must be denied");
    let retry = denied.retry_after().unwrap_or_default();
    assert!(
        retry > Duration::from_secs(50) && retry <= Duration::from_secs(60),
        "burst: retry-after {retry:?} must be just under one emission interval (60 s)"
    );
    assert_eq!(
        denied.retry_after_secs().map(|s| (51..=60).contains(&s)),
        Some(true)
    );

    // All or nothing: a denial by the user limit consumes nothing from the tenant limit.
    let t = fx.tenant("atomic");
    let limits = vec![
        Limit::tenant(Quota::per_hour(100).with_burst(10)),
        Limit::user(Quota::per_hour(10).with_burst(1)),
    ];
    assert!(
        check(l, &req(&t, &alice, limits.clone()), "atomic")
            .await
            .allowed
    );
    for _ in 0..5 {
        let d = check(l, &req(&t, &alice, limits.clone()), "atomic").await;
        assert!(!d.allowed, "atomic: user limit must deny");
        assert!(
            d.states[0].allowed && !d.states[1].allowed,
            "atomic: only the user limit denies"
        );
    }
    let other = check(l, &req(&t, &bob, limits.clone()), "atomic").await;
    assert!(other.allowed, "atomic: another user still passes");
    assert_eq!(
        other.states[0].remaining(),
        8,
        "atomic: denied requests moved the tenant counter"
    );

    // Tenant isolation: A exhausted, B untouched; the same user id in two tenants is two users.
    let (a, b) = (fx.tenant("iso-a"), fx.tenant("iso-b"));
    let limits = vec![
        Limit::tenant(Quota::per_hour(5).with_burst(5)),
        Limit::user(Quota::per_hour(5).with_burst(5)),
    ];
    for _ in 0..10 {
        check(l, &req(&a, &alice, limits.clone()), "isolation").await;
    }
    assert!(
        !check(l, &req(&a, &alice, limits.clone()), "isolation")
            .await
            .allowed,
        "isolation: A is exhausted"
    );
    let db = check(l, &req(&b, &alice, limits.clone()), "isolation").await;
    assert!(db.allowed, "isolation: tenant B must not be exhausted by A");
    assert_eq!(
        db.states[0].remaining(),
        4,
        "isolation: tenant B's counter moved with A's traffic"
    );
    assert_eq!(
        db.states[1].remaining(),
        4,
        "isolation: B's alice shares state with A's alice"
    );

    // A client limit counts by the request's key as a user limit does, apart from it: the
    // same key under both scopes is two counters.
    let t = fx.tenant("client");
    let client = vec![Limit::client(Quota::per_hour(60).with_burst(2))];
    let user = vec![Limit::user(Quota::per_hour(60).with_burst(2))];
    for _ in 0..2 {
        let d = check(l, &req(&t, &alice, client.clone()), "client").await;
        assert!(d.allowed, "client: within the burst");
        assert_eq!(d.states[0].limit.scope, LimitScope::Client);
    }
    assert!(
        !check(l, &req(&t, &alice, client.clone()), "client")
            .await
            .allowed,
        "client: the client's burst is spent"
    );
    let u = check(l, &req(&t, &alice, user.clone()), "client").await;
    assert!(
        u.allowed && u.states[0].remaining() == 1,
        "client: a user limit of the same key shares the client's counter"
    );
    assert!(
        check(l, &req(&t, &bob, client.clone()), "client")
            .await
            .allowed,
        "client: another client's counter moved"
    );
    let keyless = RateLimitRequest::new(t.clone(), None, client.clone());
    let d = check(l, &keyless, "client").await;
    assert!(
        d.allowed && d.states.is_empty(),
        "client: a client limit without a key applies"
    );

    // Weights.
    let t = fx.tenant("weight");
    let limits = vec![Limit::tenant(Quota::per_hour(60).with_burst(5))];
    let d = check(l, &req(&t, &alice, limits.clone()).with_cost(3), "weight").await;
    assert!(
        d.allowed && d.states[0].remaining() == 2,
        "weight: 3 of 5 used"
    );
    assert!(
        !check(l, &req(&t, &alice, limits.clone()).with_cost(3), "weight")
            .await
            .allowed,
        "weight: 3 more do not fit"
    );
    assert!(
        check(l, &req(&t, &alice, limits.clone()).with_cost(2), "weight")
            .await
            .allowed,
        "weight: 2 more fit"
    );

    // Several windows in one call: the shorter one bites first.
    let t = fx.tenant("windows");
    let limits = vec![
        Limit::tenant(Quota::per_minute(2).with_burst(2)),
        Limit::tenant(Quota::per_hour(100).with_burst(5)),
    ];
    assert!(
        check(l, &req(&t, &alice, limits.clone()), "windows")
            .await
            .allowed
    );
    assert!(
        check(l, &req(&t, &alice, limits.clone()), "windows")
            .await
            .allowed
    );
    let d = check(l, &req(&t, &alice, limits.clone()), "windows").await;
    assert!(
        !d.allowed && !d.states[0].allowed && d.states[1].allowed,
        "windows: the minute window denies"
    );
    assert_eq!(
        d.states[1].remaining(),
        3,
        "windows: hour window consumed twice only"
    );

    // Shadow limits decide and report but never deny.
    let t = fx.tenant("shadow");
    let limits = vec![
        Limit::tenant(Quota::per_hour(100).with_burst(100)),
        Limit::user(Quota::per_hour(1).with_burst(1)).shadow(),
    ];
    for i in 0..3 {
        let d = check(l, &req(&t, &alice, limits.clone()), "shadow").await;
        assert!(d.allowed, "shadow: request {i} must be allowed");
        assert_eq!(d.states[1].limit.mode, LimitMode::Shadow);
        assert_eq!(
            d.states[1].allowed,
            i == 0,
            "shadow: request {i} shadow verdict"
        );
    }

    // Concurrency: 64 tasks never admit more than the burst.
    let t = fx.tenant("concurrent");
    let limits = vec![Limit::tenant(Quota::per_hour(60).with_burst(10))];
    let mut tasks = Vec::new();
    for i in 0..64 {
        let limiter = limiter.clone();
        let r = req(&t, &fx.user(&format!("u{i}")), limits.clone());
        tasks.push(tokio::spawn(async move {
            limiter.check(&r).await.map(|d| d.allowed)
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        match task.await {
            Ok(Ok(true)) => admitted += 1,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => panic!("concurrent: check failed: {e}"),
            Err(e) => panic!("concurrent: task panicked: {e}"),
        }
    }
    assert_eq!(admitted, 10, "concurrent: 64 tasks against a burst of 10");

    // Requests without a user skip user limits.
    let t = fx.tenant("anon");
    let r = RateLimitRequest::new(
        t,
        None,
        vec![
            Limit::tenant(Quota::per_hour(10)),
            Limit::user(Quota::per_hour(1).with_burst(1)),
        ],
    );
    for _ in 0..3 {
        let d = check(l, &r, "anonymous").await;
        assert!(
            d.allowed && d.states.len() == 1,
            "anonymous: user limits do not apply"
        );
    }

    // Requests no backend can decide rightly are refused, by `check` and `try_check` alike,
    // before anything is counted: two limits sharing a scope and a period (they would share
    // one state), and a period beyond `Quota::MAX_PERIOD_SECS`.
    let t = fx.tenant("invalid");
    let enforced = Limit::tenant(Quota::per_hour(1000).with_burst(2));
    let refused = [
        (
            "same scope and period",
            vec![
                enforced,
                Limit::tenant(Quota::per_hour(500).with_burst(1)).shadow(),
            ],
        ),
        (
            "period over ten years",
            vec![Limit::user(Quota::new(7, Quota::MAX_PERIOD_SECS + 1))],
        ),
    ];
    for (case, limits) in refused {
        let r = req(&t, &alice, limits);
        let checked = l.check(&r).await;
        assert_eq!(
            checked.as_ref().map_err(crate::Error::kind).err(),
            Some(crate::ErrorKind::Invalid),
            "{case}: check must refuse, got {checked:?}"
        );
        if let Some(now) = l.try_check(&r) {
            assert_eq!(
                now.as_ref().map_err(crate::Error::kind).err(),
                Some(crate::ErrorKind::Invalid),
                "{case}: try_check must refuse, got {now:?}"
            );
        }
    }
    // Nothing was counted: the enforced limit alone still has its whole burst of 2.
    for i in 0..2 {
        let d = check(l, &req(&t, &alice, vec![enforced]), "invalid").await;
        assert!(
            d.allowed,
            "invalid: request {i} after the refusals must pass"
        );
    }
}
