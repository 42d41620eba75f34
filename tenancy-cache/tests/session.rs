//! `RedisSessionStore` against real Redis: the core conformance suite on one node and on the
//! local Cluster, plus the properties the suite does not cover.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tenancy_cache::RedisSessionStore;
use tenancy_core::testkit::{Fixture, TimeControl, session_store};
use tenancy_core::{
    ErrorKind, ManualClock, NewSession, SessionAdmin, SessionStore, TenantId, UserId,
};

fn store(
    pool: tenancy_cache::RedisPool,
    ks: tenancy_cache::keys::KeySpace,
) -> (RedisSessionStore, ManualClock) {
    let clock = ManualClock::new();
    let store = RedisSessionStore::new(pool)
        .with_key_space(ks)
        .with_clock(Arc::new(clock.clone()));
    (store, clock)
}

#[tokio::test]
async fn conformance_single_node() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let (store, clock) = store(pool, ks);
    session_store(&store, TimeControl::Manual(clock), &Fixture::new()).await;
}

#[tokio::test]
async fn conformance_cluster() {
    let Some((pool, ks)) = common::cluster().await else {
        return;
    };
    let (store, clock) = store(pool, ks);
    session_store(&store, TimeControl::Manual(clock), &Fixture::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_saves_from_one_version_let_exactly_one_win() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let (store, _clock) = store(pool, ks);
    let fx = Fixture::new();
    let s = store
        .create(NewSession::new(fx.tenant("race"), fx.user("alice")))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let store = store.clone();
        let mut copy = s.clone();
        copy.data.insert("writer".into(), i.into());
        tasks.push(tokio::spawn(async move { store.save(&copy).await }));
    }
    let mut won = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(saved) => won.push(saved),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one save from version 1 wins");
    let now = store.load(&s.tenant, &s.id).await.unwrap().unwrap();
    assert_eq!(now.version, 2);
    assert_eq!(now.data, won[0].data, "the stored data is the winner's");
}

#[tokio::test]
async fn hostile_user_ids_are_listed_and_revoked_only_for_themselves() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let (store, _clock) = store(pool, ks);
    let fx = Fixture::new();
    let t = fx.tenant("hostile");
    let users = ["*", "{t:other}", "}", "{", "a:b", "a", "a:*"];
    let mut ids = Vec::new();
    for u in users {
        let s = store
            .create(NewSession::new(t.clone(), UserId::parse(u).unwrap()))
            .await
            .unwrap();
        ids.push(s.id);
    }
    for (u, id) in users.iter().zip(&ids) {
        let listed = store
            .list_user(&t, &UserId::parse(u).unwrap())
            .await
            .unwrap();
        assert_eq!(
            listed.iter().map(|s| s.id).collect::<Vec<_>>(),
            vec![*id],
            "user {u}"
        );
    }
    assert_eq!(
        store
            .revoke_user(&t, &UserId::parse("*").unwrap())
            .await
            .unwrap(),
        1
    );
    for (u, id) in users.iter().zip(&ids).skip(1) {
        assert!(
            store.load(&t, id).await.unwrap().is_some(),
            "revoking `*` ended {u}'s session"
        );
    }
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_stored() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let (store, _clock) = store(pool, ks);
    let fx = Fixture::new();
    let (t, u) = (fx.tenant("bad"), fx.user("alice"));
    for new in [
        NewSession::new(t.clone(), u.clone()).with_idle_timeout(Duration::ZERO),
        NewSession::new(t.clone(), u.clone()).with_absolute_ttl(Duration::from_secs(400 * 86_400)),
    ] {
        let err = store.create(new).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    }
    let mut big = tenancy_core::SessionData::new();
    big.insert("blob".into(), "x".repeat(2 << 20).into());
    let err = store
        .create(NewSession::new(t.clone(), u.clone()).with_data(big))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(store.list_user(&t, &u).await.unwrap().is_empty());
}

#[tokio::test]
async fn redis_reclaims_ended_sessions_and_idle_indexes() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let (store, _clock) = store(pool.clone(), ks.clone());
    let fx = Fixture::new();
    let (t, u) = (fx.tenant("gc"), fx.user("alice"));
    let s = store
        .create(
            NewSession::new(t.clone(), u.clone())
                .with_idle_timeout(Duration::from_secs(60))
                .with_absolute_ttl(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    let pttl = |key: String| {
        let pool = pool.clone();
        async move {
            pool.query::<i64>(redis::cmd("PTTL").arg(key))
                .await
                .unwrap()
        }
    };
    let session_ttl = pttl(ks.session(&t, &s.id)).await;
    assert!(
        (60_000..=65_000).contains(&session_ttl),
        "session key expires with the idle timeout plus grace: {session_ttl}"
    );
    let index_ttl = pttl(ks.session_index(&t, &u)).await;
    assert!(
        (600_000..=605_000).contains(&index_ttl),
        "index expires with the absolute lifetime plus grace: {index_ttl}"
    );
    // Another tenant with the same user id has its own index.
    let other = TenantId::parse(&format!("{}-x", fx.prefix())).unwrap();
    assert_eq!(pttl(ks.session_index(&other, &u)).await, -2);
}
