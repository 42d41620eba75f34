//! `RedisRateLimiter` against real Redis: the core conformance suite on one node and on the
//! local Cluster, and the properties the issue asks to prove (exact burst, atomicity across
//! instances, one round trip, isolation, script-cache flushes, outages and recovery, hostile
//! ids).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::DedicatedRedis;
use tenancy_cache::keys::KeySpace;
use tenancy_cache::limiter::CircuitState;
use tenancy_cache::{RedisConfig, RedisPool, RedisRateLimiter};
use tenancy_core::testkit::{Fixture, rate_limiter};
use tenancy_core::{
    DecisionSource, ErrorKind, FailurePolicy, Limit, Quota, QuotaAdmin, RateLimitRequest,
    RateLimiter, TenantId, UserId,
};

fn limiter(pool: RedisPool, ks: KeySpace) -> RedisRateLimiter {
    RedisRateLimiter::builder(pool)
        .with_key_space(ks)
        .with_timeout(Duration::from_secs(5))
        .build()
}

/// As [`limiter`], without the denial cache: every decision asks Redis.
fn uncached_limiter(pool: RedisPool, ks: KeySpace) -> RedisRateLimiter {
    RedisRateLimiter::builder(pool)
        .with_key_space(ks)
        .with_denial_cache(0)
        .with_timeout(Duration::from_secs(5))
        .build()
}

fn req(t: &TenantId, u: &UserId, limits: Vec<Limit>) -> RateLimitRequest {
    RateLimitRequest::new(t.clone(), Some(u.clone()), limits)
}

async fn get(pool: &RedisPool, key: &str) -> Option<String> {
    pool.query(redis::cmd("GET").arg(key)).await.unwrap()
}

#[tokio::test]
async fn conformance_single_node() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    rate_limiter(Arc::new(limiter(pool, ks)), &Fixture::new()).await;
}

#[tokio::test]
async fn conformance_cluster() {
    let Some((pool, ks)) = common::cluster().await else {
        return;
    };
    rate_limiter(Arc::new(limiter(pool, ks)), &Fixture::new()).await;
}

#[tokio::test]
async fn exactly_burst_requests_pass_then_the_right_retry_after() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let l = limiter(pool, ks);
    let fx = Fixture::new();
    let (t, u) = (fx.tenant("burst"), fx.user("alice"));
    // 60 per hour: one request per minute at a steady rate, 5 back to back.
    let limits = vec![Limit::tenant(Quota::per_hour(60).with_burst(5))];
    for i in 0..5u64 {
        let d = l.check(&req(&t, &u, limits.clone())).await.unwrap();
        assert!(d.allowed, "request {i}");
        assert_eq!(d.states[0].remaining(), 4 - i);
        assert_eq!(d.source, DecisionSource::Backend);
    }
    let denied = l.check(&req(&t, &u, limits.clone())).await.unwrap();
    assert!(!denied.allowed, "request 6 of a burst of 5");
    assert_eq!(denied.source, DecisionSource::Backend);
    let retry = denied.retry_after().unwrap();
    // The burst took well under a second: the next slot is one emission interval (60 s)
    // after the first request, minus the time the burst took.
    assert!(
        retry > Duration::from_secs(59) && retry <= Duration::from_secs(60),
        "{retry:?}"
    );
    assert_eq!(denied.retry_after_secs(), Some(60));
    let h: HashMap<_, _> = denied.headers().into_iter().collect();
    assert_eq!(h["retry-after"], "60");
    assert_eq!(h["x-ratelimit-remaining"], "0");

    // The next denial comes from the denial cache, with the same verdict.
    let again = l.check(&req(&t, &u, limits.clone())).await.unwrap();
    assert!(!again.allowed);
    assert_eq!(again.source, DecisionSource::DenialCache);
    assert!(again.retry_after().unwrap() <= retry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_tasks_on_two_instances_never_admit_more_than_the_quota() {
    let Some(redis) = tenancy_tests::redis().await else {
        return;
    };
    let ks = KeySpace::new(redis.prefix()).unwrap();
    // Two limiters with pools of their own: two service instances sharing one Redis.
    let mut instances = Vec::new();
    for _ in 0..2 {
        let pool = common::config(RedisConfig::single(redis.url()))
            .connect()
            .await
            .unwrap();
        instances.push(Arc::new(limiter(pool, ks.clone())));
    }
    let fx = Fixture::new();
    let t = fx.tenant("shared");
    // 20 back to back, then one every 36 s: the test takes far less than 36 s.
    let limits = vec![
        Limit::tenant(Quota::per_hour(100).with_burst(20)),
        Limit::user(Quota::per_hour(100).with_burst(100)),
    ];
    let mut tasks = Vec::new();
    for i in 0..64 {
        let l = instances[i % 2].clone();
        let r = req(&t, &fx.user(&format!("u{}", i % 8)), limits.clone());
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0u32;
            for _ in 0..5 {
                if l.check(&r).await.unwrap().allowed {
                    admitted += 1;
                }
            }
            admitted
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap();
    }
    assert_eq!(
        admitted, 20,
        "320 requests from 64 tasks on two instances, burst 20"
    );
}

#[tokio::test]
async fn one_round_trip_per_decision_counted_by_redis() {
    let Some(server) = DedicatedRedis::start().await else {
        return;
    };
    let pool = common::config(RedisConfig::single(server.url()))
        .with_pool_size(1)
        .connect()
        .await
        .unwrap();
    let fx = Fixture::new();
    let (t, u) = (fx.tenant("rtt"), fx.user("alice"));
    // Two windows for the tenant and one for the user: three limits, one script call.
    // Emission intervals of a minute or more: the run's duration changes no verdict.
    let limits = vec![
        Limit::tenant(Quota::per_minute(1).with_burst(30)),
        Limit::tenant(Quota::per_hour(100).with_burst(1000)),
        Limit::user(Quota::per_hour(100).with_burst(40)),
    ];
    let no_cache = RedisRateLimiter::builder(pool.clone())
        .with_denial_cache(0)
        .with_timeout(Duration::from_secs(5))
        .build();
    // Warm up: the first call loads the script (EVALSHA, NOSCRIPT, EVAL).
    assert!(
        no_cache
            .check(&req(&t, &u, limits.clone()))
            .await
            .unwrap()
            .allowed
    );
    let mut admin = server.admin().await;
    let before = common::command_calls(&mut admin).await;
    let (mut allowed, mut denied) = (0, 0);
    for _ in 0..50 {
        if no_cache
            .check(&req(&t, &u, limits.clone()))
            .await
            .unwrap()
            .allowed
        {
            allowed += 1;
        } else {
            denied += 1;
        }
    }
    assert_eq!(
        (allowed, denied),
        (29, 21),
        "the minute window's burst of 30 bites"
    );
    let after = common::command_calls(&mut admin).await;
    let delta =
        |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    assert_eq!(
        delta("evalsha"),
        50,
        "one EVALSHA per decision, allowed or denied"
    );
    // Redis counts the commands a script runs too: each decision's script calls TIME once,
    // GET once per limit and SET once per limit when allowed. Anything beyond that would be
    // a second round trip.
    assert_eq!(delta("time"), 50, "TIME only from inside the script");
    assert_eq!(delta("get"), 50 * 3, "one GET per limit, inside the script");
    assert_eq!(
        delta("set"),
        29 * 3,
        "one SET per limit of an allowed decision"
    );
    let others: Vec<_> = after
        .keys()
        .filter(|k| !matches!(k.as_str(), "evalsha" | "info" | "time" | "get" | "set"))
        .filter(|k| delta(k) > 0)
        .collect();
    assert!(others.is_empty(), "other commands were sent: {others:?}");

    // With the denial cache, a tenant hammering past its limit costs one call until its
    // retry time.
    let cached = RedisRateLimiter::builder(pool)
        .with_timeout(Duration::from_secs(5))
        .build();
    let before = common::command_calls(&mut admin).await;
    let mut sources = HashMap::new();
    for _ in 0..100 {
        let d = cached.check(&req(&t, &u, limits.clone())).await.unwrap();
        assert!(!d.allowed);
        *sources.entry(format!("{:?}", d.source)).or_insert(0) += 1;
    }
    let after = common::command_calls(&mut admin).await;
    let delta = after["evalsha"] - before["evalsha"];
    assert_eq!(
        delta, 1,
        "one Redis call, then answers from the denial cache"
    );
    assert_eq!(sources.get("DenialCache"), Some(&99), "{sources:?}");
    assert_eq!(cached.stats().denial_cache, 99);
}

#[tokio::test]
async fn a_denied_request_moves_neither_counter() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let l = uncached_limiter(pool.clone(), ks.clone());
    let fx = Fixture::new();
    let (t, u) = (fx.tenant("atomic"), fx.user("alice"));
    let limits = vec![
        Limit::tenant(Quota::per_hour(100).with_burst(10)),
        Limit::user(Quota::per_hour(10).with_burst(1)),
    ];
    assert!(l.check(&req(&t, &u, limits.clone())).await.unwrap().allowed);
    let tenant_key = ks.limit_tenant(&t, 3600);
    let user_key = ks.limit_user(&t, &u, 3600);
    let before = (get(&pool, &tenant_key).await, get(&pool, &user_key).await);
    assert!(before.0.is_some() && before.1.is_some());
    for _ in 0..5 {
        let d = l.check(&req(&t, &u, limits.clone())).await.unwrap();
        assert!(!d.allowed && d.states[0].allowed && !d.states[1].allowed);
    }
    let after = (get(&pool, &tenant_key).await, get(&pool, &user_key).await);
    assert_eq!(before, after, "denials wrote to a counter");
    // A weight that does not fit the tenant's burst is denied and writes nothing either.
    let heavy = req(&t, &fx.user("bob"), limits.clone()).with_cost(11);
    let d = l.check(&heavy).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(get(&pool, &tenant_key).await, before.0);
    assert_eq!(
        get(&pool, &ks.limit_user(&t, &fx.user("bob"), 3600)).await,
        None
    );
    // usage() reads the same state without consuming.
    let usage = l.usage(&req(&t, &u, limits.clone())).await.unwrap();
    assert_eq!((usage[0].remaining(), usage[1].remaining()), (9, 0));
    assert_eq!(get(&pool, &tenant_key).await, before.0, "usage consumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_b_is_untouched_while_tenant_a_is_flooded() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let l = Arc::new(limiter(pool.clone(), ks.clone()));
    let fx = Fixture::new();
    let (a, b) = (fx.tenant("flooded"), fx.tenant("quiet"));
    let limits = vec![
        Limit::tenant(Quota::per_hour(50).with_burst(5)),
        Limit::user(Quota::per_hour(50).with_burst(5)),
    ];
    let mut tasks = Vec::new();
    for i in 0..64 {
        let l = l.clone();
        let r = req(&a, &fx.user(&format!("u{i}")), limits.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                l.check(&r).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        !l.check(&req(&a, &fx.user("u0"), limits.clone()))
            .await
            .unwrap()
            .allowed
    );
    assert_eq!(
        get(&pool, &ks.limit_tenant(&b, 3600)).await,
        None,
        "B's key exists"
    );
    let d = l
        .check(&req(&b, &fx.user("u0"), limits.clone()))
        .await
        .unwrap();
    assert!(d.allowed && d.source == DecisionSource::Backend);
    assert_eq!((d.states[0].remaining(), d.states[1].remaining()), (4, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_mid_run_is_survived() {
    let Some(server) = DedicatedRedis::start().await else {
        return;
    };
    let pool = common::config(RedisConfig::single(server.url()))
        .connect()
        .await
        .unwrap();
    let l = Arc::new(
        RedisRateLimiter::builder(pool)
            .with_denial_cache(0)
            .with_timeout(Duration::from_secs(5))
            .build(),
    );
    let fx = Fixture::new();
    let t = fx.tenant("flush");
    let limits = vec![Limit::tenant(Quota::per_hour(3600).with_burst(150))];
    let mut admin = server.admin().await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let l = l.clone();
        let r = req(&t, &fx.user(&format!("u{i}")), limits.clone());
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0;
            for _ in 0..25 {
                let d = l
                    .check(&r)
                    .await
                    .expect("no decision fails across SCRIPT FLUSH");
                assert_eq!(d.source, DecisionSource::Backend);
                admitted += u32::from(d.allowed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            admitted
        }));
    }
    let mut flushes = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut admin)
            .await
            .unwrap();
        flushes += 1;
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap();
    }
    assert_eq!(flushes, 3);
    // 200 requests; one slot per second refills during the run, so 150 to 152 pass.
    assert!((150..=152).contains(&admitted), "admitted {admitted}");
    let calls = common::command_calls(&mut admin).await;
    assert!(
        calls.get("eval").copied().unwrap_or(0) >= 2,
        "the script was re-sent: {calls:?}"
    );
}

/// A pool on `server` that gives up within a few hundred milliseconds once it is gone.
async fn quick_failing_pool(server: &DedicatedRedis) -> RedisPool {
    quick_failing(RedisConfig::single(server.url())).await
}

/// A pool by `config` that gives up within a few hundred milliseconds on a node gone or
/// silent.
async fn quick_failing(config: RedisConfig) -> RedisPool {
    config
        .with_connect_timeout(Duration::from_millis(200))
        .with_response_timeout(Duration::from_millis(300))
        .with_acquire_timeout(Duration::from_millis(300))
        .with_connect_retries(1, Duration::ZERO)
        .connect()
        .await
        .unwrap()
}

fn outage_limits(policy: FailurePolicy) -> Vec<Limit> {
    vec![Limit::tenant(Quota::per_hour(100).with_burst(3)).on_unavailable(policy)]
}

#[tokio::test]
async fn redis_stopped_mid_run_gives_each_policy_then_recovers_by_itself() {
    let Some(mut server) = DedicatedRedis::start().await else {
        return;
    };
    let pool = quick_failing_pool(&server).await;
    let l = RedisRateLimiter::builder(pool)
        .with_timeout(Duration::from_millis(400))
        .with_breaker(3, Duration::from_millis(300))
        .with_denial_cache(0)
        .build();
    let fx = Fixture::new();
    let u = fx.user("alice");
    let (t_open, t_closed, t_local) = (fx.tenant("open"), fx.tenant("closed"), fx.tenant("local"));
    for (t, p) in [
        (&t_open, FailurePolicy::FailOpen),
        (&t_closed, FailurePolicy::FailClosed),
        (&t_local, FailurePolicy::Local),
    ] {
        let d = l.check(&req(t, &u, outage_limits(p))).await.unwrap();
        assert!(d.allowed && d.source == DecisionSource::Backend);
    }

    server.stop();

    // Fail closed: an error of its own kind (not a denial), for every request.
    for _ in 0..4 {
        let err = l
            .check(&req(
                &t_closed,
                &u,
                outage_limits(FailurePolicy::FailClosed),
            ))
            .await
            .expect_err("fail closed must not decide");
        assert!(
            matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
            "{err}"
        );
    }
    assert_eq!(
        l.circuit(),
        CircuitState::Open,
        "repeated failures open the circuit"
    );
    // Fail open: allowed, marked as such.
    for _ in 0..5 {
        let d = l
            .check(&req(&t_open, &u, outage_limits(FailurePolicy::FailOpen)))
            .await
            .unwrap();
        assert!(d.allowed);
        assert_eq!(d.source, DecisionSource::FailOpen);
    }
    // Local: the in-process limiter enforces the same quota (burst 3) from a fresh state.
    let verdicts: Vec<bool> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            let d = l
                .check(&req(&t_local, &u, outage_limits(FailurePolicy::Local)))
                .await
                .unwrap();
            assert_eq!(d.source, DecisionSource::LocalFallback);
            v.push(d.allowed);
        }
        v
    };
    assert_eq!(verdicts, [true, true, true, false, false]);
    // Mixed: one fail-closed enforced limit makes the request fail closed.
    let mixed = vec![
        Limit::tenant(Quota::per_hour(100)).on_unavailable(FailurePolicy::FailOpen),
        Limit::user(Quota::per_hour(100)).on_unavailable(FailurePolicy::FailClosed),
    ];
    assert!(l.check(&req(&t_open, &u, mixed.clone())).await.is_err());
    // ... unless that limit is only a shadow limit.
    let shadowed = vec![mixed[0], mixed[1].shadow()];
    assert_eq!(
        l.check(&req(&t_open, &u, shadowed)).await.unwrap().source,
        DecisionSource::FailOpen
    );
    let s = l.stats();
    assert!(
        s.short_circuited > 0,
        "the open circuit spared Redis: {s:?}"
    );
    assert!(
        s.fail_open >= 5 && s.local_fallback == 5 && s.fail_closed >= 5,
        "{s:?}"
    );

    server.restart().await;

    // Recovery without any help: within a few cool-downs, decisions come from Redis again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = l
            .check(&req(
                &t_closed,
                &u,
                outage_limits(FailurePolicy::FailClosed),
            ))
            .await;
        if matches!(&d, Ok(d) if d.source == DecisionSource::Backend) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no recovery: {d:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(l.circuit(), CircuitState::Closed);
    let d = l
        .check(&req(&t_local, &u, outage_limits(FailurePolicy::Local)))
        .await
        .unwrap();
    assert_eq!(d.source, DecisionSource::Backend);
}

#[tokio::test]
async fn a_limiter_built_while_redis_is_down_follows_its_policies() {
    let Some(mut server) = DedicatedRedis::start().await else {
        return;
    };
    let url = server.url();
    server.stop();
    let pool = RedisConfig::single(url)
        .with_acquire_timeout(Duration::from_millis(200))
        .connect_lazy()
        .unwrap();
    let l = RedisRateLimiter::builder(pool)
        .with_timeout(Duration::from_millis(300))
        .build();
    let fx = Fixture::new();
    let d = l
        .check(&req(
            &fx.tenant("lazy"),
            &fx.user("a"),
            outage_limits(FailurePolicy::FailOpen),
        ))
        .await
        .unwrap();
    assert_eq!(d.source, DecisionSource::FailOpen);
    // A local limit of one a minute beside a fail-open one of one an hour: the second request
    // is refused by the local limit alone, and told to come back in a minute, not an hour
    // (the fail-open limit is only observed while Redis is away).
    let mixed = vec![
        Limit::tenant(Quota::per_minute(1).with_burst(1)).on_unavailable(FailurePolicy::Local),
        Limit::user(Quota::per_hour(1).with_burst(1)).on_unavailable(FailurePolicy::FailOpen),
    ];
    let (t, u) = (fx.tenant("mixed"), fx.user("b"));
    assert!(l.check(&req(&t, &u, mixed.clone())).await.unwrap().allowed);
    let d = l.check(&req(&t, &u, mixed)).await.unwrap();
    assert!(
        !d.allowed && d.source == DecisionSource::LocalFallback,
        "{d:?}"
    );
    assert!(
        d.retry_after_secs().is_some_and(|s| (1..=60).contains(&s)),
        "Retry-After from the enforced local limit: {:?}",
        d.retry_after_secs()
    );
    let h = tenancy_core::HealthCheck::check(&l).await;
    assert_eq!(h.status, tenancy_core::HealthStatus::Down);
    server.restart().await;
    let h = tenancy_core::HealthCheck::check(&l).await;
    assert_ne!(h.status, tenancy_core::HealthStatus::Down, "{h:?}");
}

#[tokio::test]
async fn hostile_user_ids_cannot_leave_their_tenant_or_share_a_counter() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let l = limiter(pool.clone(), ks.clone());
    let fx = Fixture::new();
    let t = fx.tenant("hostile");
    let limits = vec![Limit::user(Quota::per_hour(10).with_burst(2))];
    let hostile = [
        "*",
        "{",
        "}",
        ":",
        "{t:other}",
        "a:*",
        "}{",
        "u:x:3600",
        "*:*",
    ];
    for h in hostile {
        let u = UserId::parse(h).unwrap();
        for i in 0..2 {
            let d = l.check(&req(&t, &u, limits.clone())).await.unwrap();
            assert!(
                d.allowed,
                "user {h:?} request {i}: shares a counter with another user"
            );
        }
        assert!(!l.check(&req(&t, &u, limits.clone())).await.unwrap().allowed);
    }
    // Every key written for this tenant carries its hash tag and nothing else.
    let keys: Vec<String> = pool
        .query(redis::cmd("KEYS").arg(format!("{}:*", ks.namespace())))
        .await
        .unwrap();
    assert_eq!(keys.len(), hostile.len(), "{keys:?}");
    for k in &keys {
        assert_eq!(
            KeySpace::hash_tag(k),
            Some(format!("t:{t}").as_str()),
            "{k}"
        );
    }
    // A user named `*` in another tenant is a different user.
    let other = fx.tenant("other");
    let star = UserId::parse("*").unwrap();
    assert!(
        l.check(&req(&other, &star, limits.clone()))
            .await
            .unwrap()
            .allowed
    );
    // reset() removes this tenant's keys and no other's.
    l.reset(&t).await.unwrap();
    let left: Vec<String> = pool
        .query(redis::cmd("KEYS").arg(format!("{}:*", ks.namespace())))
        .await
        .unwrap();
    assert_eq!(left, vec![ks.limit_user(&other, &star, 3600)]);
    assert!(
        l.check(&req(&t, &star, limits)).await.unwrap().allowed,
        "reset restores"
    );
}

#[tokio::test]
async fn idle_keys_expire_and_tier_changes_apply_on_the_next_request() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let l = limiter(pool.clone(), ks.clone());
    let fx = Fixture::new();
    let (t, u) = (fx.tenant("idle"), fx.user("alice"));
    // 10 per second: one request leaves a TAT 100 ms ahead, and the key expires with it.
    let fast = vec![Limit::tenant(Quota::per_second(10).with_burst(1))];
    assert!(l.check(&req(&t, &u, fast)).await.unwrap().allowed);
    let key = ks.limit_tenant(&t, 1);
    let pttl: i64 = pool.query(redis::cmd("PTTL").arg(&key)).await.unwrap();
    assert!((1..=101).contains(&pttl), "expires at its TAT: {pttl}");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(get(&pool, &key).await, None, "an idle key outlived its TAT");

    // Standard tier: burst 2. Upgraded tier, same period: its larger burst applies at once
    // (the state is a TAT: the 720 s already used count against the new 1440 s capacity).
    let standard = vec![Limit::tenant(Quota::per_hour(10).with_burst(2))];
    let premium = vec![Limit::tenant(Quota::per_hour(50).with_burst(20))];
    for _ in 0..2 {
        assert!(
            l.check(&req(&t, &u, standard.clone()))
                .await
                .unwrap()
                .allowed
        );
    }
    assert!(
        !l.check(&req(&t, &u, standard.clone()))
            .await
            .unwrap()
            .allowed
    );
    let d = l.check(&req(&t, &u, premium)).await.unwrap();
    assert!(d.allowed, "the upgrade applies on the next request");
    assert_eq!(
        d.source,
        DecisionSource::Backend,
        "the denial cache did not hold it back"
    );
    assert_eq!(d.states[0].remaining(), 9, "(1440 s - 792 s) / 72 s");
    // And a downgrade too: back on standard, the 792 s used exceed its 720 s capacity.
    assert!(!l.check(&req(&t, &u, standard)).await.unwrap().allowed);
}

/// A small deterministic generator (xorshift) for the agreement test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

#[tokio::test]
async fn the_script_agrees_with_core_arithmetic_at_the_edges() {
    // Every decision is checked against `RateLimitDecision::decide` on the values the script
    // read; a disagreement is an error. Drive it through extreme quotas and weights.
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let l = uncached_limiter(pool.clone(), ks.clone());
    let fx = Fixture::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // The longest period a request may carry, minus one so that the user limits below (one
    // second longer) stay valid.
    let longest = Quota::MAX_PERIOD_SECS - 1;
    let quotas = [
        Quota::per_second(1),
        Quota::per_second(3).with_burst(7),
        Quota::per_second(u64::MAX),
        Quota::per_second(u64::MAX).with_burst(u64::MAX),
        Quota::new(1, longest),
        // The largest burst a quota this long may have: its burst takes at most ten years to
        // earn back (`Quota::validate`).
        Quota::new(7, longest).with_burst(7),
        Quota::per_hour(1_000_000_007).with_burst(999),
        Quota::new(3, 86_400 * 365).with_burst(10),
    ];
    let costs = [0, 1, 2, 3, 1_000, u64::MAX / 3, u64::MAX];
    let users = ["a", "b", "c"];
    let mut seen = (0, 0);
    for i in 0..300 {
        let t = fx.tenant(&format!("edge{}", i % 4));
        let mut limits = vec![Limit::tenant(rng.pick(&quotas))];
        if rng.next().is_multiple_of(2) {
            let mut q = rng.pick(&quotas);
            q.period_secs = q.period_secs.saturating_add(1);
            limits.push(Limit::user(q));
        }
        if rng.next().is_multiple_of(3) {
            limits[0] = limits[0].shadow();
        }
        let r =
            req(&t, &UserId::parse(rng.pick(&users)).unwrap(), limits).with_cost(rng.pick(&costs));
        let d = l
            .check(&r)
            .await
            .unwrap_or_else(|e| panic!("request {i} {r:?}: {e}"));
        if d.allowed {
            seen.0 += 1;
        } else {
            seen.1 += 1;
        }
    }
    assert!(
        seen.0 > 30 && seen.1 > 30,
        "both verdicts exercised: {seen:?}"
    );
    // Some of these keys live for years: leave none behind in the shared Redis.
    let pattern = format!("{}:*", ks.namespace());
    let written: Vec<String> = pool.query(redis::cmd("KEYS").arg(&pattern)).await.unwrap();
    assert!(!written.is_empty());
    let _: () = pool.query(redis::cmd("DEL").arg(&written)).await.unwrap();
    let left: Vec<String> = pool.query(redis::cmd("KEYS").arg(&pattern)).await.unwrap();
    assert_eq!(left, Vec::<String>::new());
}

#[tokio::test]
async fn periods_over_ten_years_are_refused_and_write_nothing() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let l = limiter(pool.clone(), ks.clone());
    let fx = Fixture::new();
    let (t, u) = (fx.tenant("forever"), fx.user("alice"));
    for period in [Quota::MAX_PERIOD_SECS + 1, u64::MAX] {
        let r = req(&t, &u, vec![Limit::tenant(Quota::new(7, period))]);
        let err = l.check(&r).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "period {period}: {err}");
        assert_eq!(get(&pool, &ks.limit_tenant(&t, period)).await, None);
    }
}

#[tokio::test]
async fn two_limits_of_one_scope_and_period_are_refused_not_merged() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let l = uncached_limiter(pool.clone(), ks.clone());
    let fx = Fixture::new();
    let (t, u) = (fx.tenant("trial"), fx.user("alice"));
    // An enforced limit, and a shadow limit of the same period tried beside it: both would
    // share the key `limit_tenant(t, 3600)`, and the shadow's smaller burst would deny for
    // the enforced one after 50 requests.
    let enforced = Limit::tenant(Quota::per_hour(1000).with_burst(100));
    let trial = vec![
        enforced,
        Limit::tenant(Quota::per_hour(500).with_burst(50)).shadow(),
    ];
    let err = l.check(&req(&t, &u, trial.clone())).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert_eq!(
        l.usage(&req(&t, &u, trial)).await.unwrap_err().kind(),
        ErrorKind::Invalid
    );
    assert_eq!(get(&pool, &ks.limit_tenant(&t, 3600)).await, None);
    // Same for two user limits; a tenant and a user limit of one period are fine.
    let users = vec![
        Limit::user(Quota::per_hour(10)),
        Limit::user(Quota::per_hour(20)).shadow(),
    ];
    let err = l.check(&req(&t, &u, users)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    // The enforced limit alone keeps its whole burst.
    for i in 0..100 {
        let d = l.check(&req(&t, &u, vec![enforced])).await.unwrap();
        assert!(d.allowed, "request {i} of a burst of 100");
    }
    let both = vec![
        enforced,
        Limit::user(Quota::per_hour(1000).with_burst(1000)),
    ];
    assert!(!l.check(&req(&t, &u, both)).await.unwrap().allowed);
}

#[tokio::test]
async fn reset_and_isolation_on_the_cluster() {
    let Some((pool, ks)) = common::cluster().await else {
        return;
    };
    let l = limiter(pool, ks);
    let fx = Fixture::new();
    let limits = vec![Limit::user(Quota::per_hour(10).with_burst(1))];
    let star = UserId::parse("*").unwrap();
    // Tenants spread over the three nodes' slots.
    let tenants: Vec<TenantId> = (0..6).map(|i| fx.tenant(&format!("n{i}"))).collect();
    for t in &tenants {
        assert!(
            l.check(&req(t, &star, limits.clone()))
                .await
                .unwrap()
                .allowed
        );
        assert!(
            !l.check(&req(t, &star, limits.clone()))
                .await
                .unwrap()
                .allowed
        );
    }
    l.reset(&tenants[0]).await.unwrap();
    assert!(
        l.check(&req(&tenants[0], &star, limits.clone()))
            .await
            .unwrap()
            .allowed
    );
    for t in &tenants[1..] {
        let usage = l.usage(&req(t, &star, limits.clone())).await.unwrap();
        assert_eq!(usage[0].remaining(), 0, "reset of one tenant reached {t}");
    }
}

#[tokio::test]
async fn the_denial_cache_answers_until_the_retry_time_then_redis_decides_again() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let l = limiter(pool, ks);
    let fx = Fixture::new();
    let (t, u) = (fx.tenant("retry"), fx.user("alice"));
    // Ten per second, burst 1: after one request the next slot is 100 ms away.
    let limits = vec![Limit::tenant(Quota::per_second(10).with_burst(1))];
    assert!(l.check(&req(&t, &u, limits.clone())).await.unwrap().allowed);
    let first = l.check(&req(&t, &u, limits.clone())).await.unwrap();
    assert_eq!(
        (first.allowed, first.source),
        (false, DecisionSource::Backend)
    );
    let cached = l.check(&req(&t, &u, limits.clone())).await.unwrap();
    assert_eq!(
        (cached.allowed, cached.source),
        (false, DecisionSource::DenialCache)
    );
    assert!(cached.retry_after().unwrap() <= first.retry_after().unwrap());
    // Another tenant is not held back by this tenant's denial.
    let other = l
        .check(&req(&fx.tenant("retry-other"), &u, limits.clone()))
        .await
        .unwrap();
    assert_eq!(other.source, DecisionSource::Backend);
    tokio::time::sleep(first.retry_after().unwrap() + Duration::from_millis(20)).await;
    let after = l.check(&req(&t, &u, limits)).await.unwrap();
    assert!(after.allowed, "the retry time has passed");
    assert_eq!(after.source, DecisionSource::Backend);
}

#[tokio::test]
async fn a_command_redis_refuses_is_no_outage_and_fails_loudly() {
    let Some(server) = DedicatedRedis::start().await else {
        return;
    };
    // A user that may not run scripts: every decision gets a NOPERM reply.
    let mut admin = server.admin().await;
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "noscript",
            "on",
            ">pw",
            "~*",
            "&*",
            "+@all",
            "-@scripting",
        ])
        .query_async(&mut admin)
        .await
        .unwrap();
    let url = server.url().replace("redis://", "redis://noscript:pw@");
    let pool = common::config(RedisConfig::single(url))
        .connect()
        .await
        .unwrap();
    let l = RedisRateLimiter::builder(pool)
        .with_timeout(Duration::from_secs(5))
        .with_breaker(2, Duration::from_secs(60))
        .build();
    let fx = Fixture::new();
    let (t, u) = (fx.tenant("noperm"), fx.user("alice"));
    for policy in [
        FailurePolicy::FailOpen,
        FailurePolicy::Local,
        FailurePolicy::FailClosed,
    ] {
        for _ in 0..3 {
            let r = req(&t, &u, outage_limits(policy));
            let err = l
                .check(&r)
                .await
                .expect_err("a refused command must not be decided by a failure policy");
            assert!(!err.is_retryable(), "{policy:?}: {err}");
            assert_eq!(err.kind(), ErrorKind::Internal, "{policy:?}");
        }
    }
    let s = l.stats();
    assert_eq!(
        (
            s.backend_errors,
            s.fail_open,
            s.local_fallback,
            s.fail_closed
        ),
        (0, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!(l.circuit(), CircuitState::Closed, "Redis is up: no outage");
}

#[tokio::test]
async fn a_connection_that_stops_answering_is_replaced_after_its_response_timeout() {
    let Some(server) = DedicatedRedis::start().await else {
        return;
    };
    let relay = common::Relay::start(server.port()).await;
    // The response timeout is longer than the limiter's bound: the limiter answers first, and
    // its call goes on until the response timeout, which marks the connection broken.
    let pool = RedisConfig::single(common::relay_url(&relay))
        .with_pool_size(1)
        .with_response_timeout(Duration::from_secs(2))
        .with_acquire_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let l = RedisRateLimiter::builder(pool.clone())
        .with_timeout(Duration::from_secs(1))
        .with_denial_cache(0)
        .build();
    let fx = Fixture::new();
    let r = req(
        &fx.tenant("silent"),
        &fx.user("alice"),
        outage_limits(FailurePolicy::FailClosed),
    );
    assert_eq!(l.check(&r).await.unwrap().source, DecisionSource::Backend);

    // The host behind the pooled connection vanishes without a reset.
    relay.cut_silently();
    let err = l.check(&r).await.expect_err("no reply within the bound");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    // The call left behind meets the response timeout, which marks the connection broken.
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    let d = l
        .check(&r)
        .await
        .expect("the next decision runs on a fresh connection");
    assert_eq!(d.source, DecisionSource::Backend);
    let f = pool.figures();
    assert_eq!((f.created, f.closed_broken), (2, 1), "{f:?}");
}

/// A reply that comes after the limiter's bound but before the response timeout (a server
/// busy for a moment) costs that one decision, not the shared connection.
#[tokio::test]
async fn a_slow_reply_past_the_bound_keeps_the_connection() {
    let Some(server) = DedicatedRedis::start().await else {
        return;
    };
    let pool = RedisConfig::single(server.url())
        .with_pool_size(1)
        .with_response_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let l = RedisRateLimiter::builder(pool.clone())
        .with_timeout(Duration::from_millis(100))
        .with_denial_cache(0)
        .build();
    let fx = Fixture::new();
    let r = req(
        &fx.tenant("busy"),
        &fx.user("alice"),
        outage_limits(FailurePolicy::FailClosed),
    );
    assert_eq!(l.check(&r).await.unwrap().source, DecisionSource::Backend);

    // The server is busy for 400 ms (a script holds it, as a slow command would).
    let mut admin = server.admin().await;
    let busy = tokio::spawn(async move {
        let _: i64 = redis::cmd("EVAL")
            .arg(
                "local s = redis.call('TIME') local t0 = s[1] * 1000000 + s[2] \
                 repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - t0 > 400000 \
                 return 0",
            )
            .arg(0)
            .query_async(&mut admin)
            .await
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = l.check(&r).await.expect_err("no reply within the bound");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    busy.await.unwrap();
    // The late reply arrived within the response timeout: the connection stays.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(l.check(&r).await.unwrap().source, DecisionSource::Backend);
    let f = pool.figures();
    assert_eq!((f.created, f.closed_broken), (1, 0), "{f:?}");
}

/// `Duration::MAX` (the usual "no bound") as the limiter's timeout and the breaker's
/// cooldown: decisions and an outage work as with any other value, without an overflow.
#[tokio::test]
async fn unbounded_durations_do_not_overflow() {
    let Some(mut server) = DedicatedRedis::start().await else {
        return;
    };
    let pool = quick_failing_pool(&server).await;
    let l = RedisRateLimiter::builder(pool)
        .with_timeout(Duration::MAX)
        .with_breaker(1, Duration::MAX)
        .with_denial_cache(0)
        .build();
    let fx = Fixture::new();
    let (t, u) = (fx.tenant("unbounded"), fx.user("alice"));
    let limits = || outage_limits(FailurePolicy::FailOpen);
    let d = l.check(&req(&t, &u, limits())).await.unwrap();
    assert!(d.allowed && d.source == DecisionSource::Backend);
    server.stop();
    for _ in 0..3 {
        let d = l.check(&req(&t, &u, limits())).await.unwrap();
        assert!(d.allowed && d.source == DecisionSource::FailOpen, "{d:?}");
    }
    assert_eq!(l.circuit(), CircuitState::Open);
}

/// A Cluster node that stops answering (frozen: its connections stay open, no reply comes)
/// costs the tenants whose slots it serves their failure policy, each decision within the
/// limiter's bound and then at once once their slots' circuit is open; tenants on the other
/// nodes keep getting Redis's decisions, no slower, and the frozen node's tenants get them
/// again once it answers.
#[tokio::test]
async fn a_frozen_cluster_node_costs_only_the_tenants_it_serves() {
    let Some(cluster) = common::DedicatedCluster::start(3).await else {
        return;
    };
    let pool = quick_failing(RedisConfig::cluster(cluster.urls())).await;
    let ks = KeySpace::new("tenancy").unwrap();
    let bound = Duration::from_millis(400);
    let l = RedisRateLimiter::builder(pool)
        .with_key_space(ks.clone())
        .with_timeout(bound)
        .with_breaker(2, Duration::from_secs(2))
        .with_denial_cache(0)
        .build();
    let fx = Fixture::new();
    let u = fx.user("alice");
    // A tenant served by node 0, which will freeze, and one served by another node.
    let (mut frozen, mut live) = (None, None);
    for i in 0..200 {
        let t = fx.tenant(&format!("t{i}"));
        let on_node_0 = cluster.node_of(&ks.limit_tenant(&t, 3600)).await == 0;
        match (on_node_0, &frozen, &live) {
            (true, None, _) => frozen = Some(t),
            (false, _, None) => live = Some(t),
            _ => {}
        }
        if frozen.is_some() && live.is_some() {
            break;
        }
    }
    let (frozen, live) = (frozen.unwrap(), live.unwrap());
    let limits = outage_limits(FailurePolicy::FailOpen);
    for t in [&frozen, &live] {
        let d = l.check(&req(t, &u, limits.clone())).await.unwrap();
        assert_eq!(d.source, DecisionSource::Backend);
    }

    cluster.freeze(0);
    let mut waits = Vec::new();
    for _ in 0..4 {
        let started = std::time::Instant::now();
        let d = l.check(&req(&frozen, &u, limits.clone())).await.unwrap();
        waits.push(started.elapsed());
        assert!(d.allowed);
        assert_eq!(d.source, DecisionSource::FailOpen);

        let started = std::time::Instant::now();
        let d = l.check(&req(&live, &u, limits.clone())).await;
        let waited = started.elapsed();
        let d = d.unwrap_or_else(|e| panic!("the live node's tenant failed: {e}"));
        assert_eq!(
            d.source,
            DecisionSource::Backend,
            "the live node's tenant is decided by Redis"
        );
        assert!(
            waited < Duration::from_millis(250),
            "the live node's tenant waited {waited:?}"
        );
    }
    assert!(
        waits
            .iter()
            .all(|w| *w < bound + Duration::from_millis(300)),
        "each decision within the bound: {waits:?}"
    );
    assert!(
        waits[2..].iter().all(|w| *w < Duration::from_millis(150)),
        "the open circuit answers at once: {waits:?}"
    );
    assert_eq!(l.circuit(), CircuitState::Open);
    eprintln!("decisions for the frozen node's tenant took {waits:?}");

    cluster.thaw(0);
    // Once the cool-down is over, a probe finds the node answering and the circuit closes.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let d = l.check(&req(&frozen, &u, limits.clone())).await.unwrap();
        if d.source == DecisionSource::Backend {
            break;
        }
        assert_eq!(d.source, DecisionSource::FailOpen);
        assert!(std::time::Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(l.circuit(), CircuitState::Closed);
}
