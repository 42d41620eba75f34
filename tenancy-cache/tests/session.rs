//! `RedisSessionStore` against real Redis: the core conformance suite on one node and on the
//! local Cluster, plus the properties the suite does not cover.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tenancy_cache::RedisSessionStore;
use tenancy_core::testkit::{Fixture, TimeControl, session_store};
use tenancy_core::{
    Clock, ErrorKind, ManualClock, NewSession, SessionAdmin, SessionStore, TenantId, UserId,
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

/// How many ids the user's index holds, whatever its Redis type.
async fn index_len(pool: &tenancy_cache::RedisPool, key: &str) -> i64 {
    let kind: String = pool.query(redis::cmd("TYPE").arg(key)).await.unwrap();
    let count = match kind.as_str() {
        "zset" => "ZCARD",
        "set" => "SCARD",
        "none" => return 0,
        other => panic!("index of type {other}"),
    };
    pool.query(redis::cmd(count).arg(key)).await.unwrap()
}

#[tokio::test]
async fn the_user_index_holds_only_sessions_that_may_still_be_live() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let (store, clock) = store(pool.clone(), ks.clone());
    let fx = Fixture::new();
    let (t, u) = (fx.tenant("index"), fx.user("alice"));
    let index = ks.session_index(&t, &u);
    let new = || {
        NewSession::new(t.clone(), u.clone())
            .with_idle_timeout(Duration::from_secs(60))
            .with_absolute_ttl(Duration::from_secs(600))
    };
    let mut made = Vec::new();
    for _ in 0..5 {
        made.push(store.create(new()).await.unwrap());
    }
    assert_eq!(index_len(&pool, &index).await, 5);
    // Deleted sessions leave the index.
    for s in &made[..3] {
        assert!(store.delete(&t, &s.id).await.unwrap());
    }
    assert_eq!(index_len(&pool, &index).await, 2, "deleted ids stay listed");
    assert!(!store.delete(&t, &made[0].id).await.unwrap());
    // A rotation replaces its id.
    let rotated = store.rotate(&t, &made[3].id).await.unwrap();
    assert_eq!(index_len(&pool, &index).await, 2);
    // Just past their absolute expiry, the others stay listed for the 5 s grace (an instance
    // whose clock runs ahead must not hide them from a revocation on another)...
    clock.advance(Duration::from_secs(601));
    let first = store.create(new()).await.unwrap();
    assert_eq!(
        index_len(&pool, &index).await,
        3,
        "ids dropped within the grace"
    );
    // ... and leave the index when a session is created after it.
    clock.advance(Duration::from_secs(5));
    let fresh = store.create(new()).await.unwrap();
    assert_eq!(index_len(&pool, &index).await, 2, "ended ids stay listed");
    let mut listed: Vec<_> = store
        .list_user(&t, &u)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    listed.sort();
    let mut expected = vec![first.id, fresh.id];
    expected.sort();
    assert_eq!(listed, expected);
    assert!(store.load(&t, &rotated.id).await.unwrap().is_none());
}

#[tokio::test]
async fn revoking_many_sessions_runs_in_bounded_batches() {
    let Some(server) = common::DedicatedRedis::start().await else {
        return;
    };
    let pool = common::config(tenancy_cache::RedisConfig::single(server.url()))
        .connect()
        .await
        .unwrap();
    let ks = tenancy_cache::keys::KeySpace::new("batch").unwrap();
    let (store, _clock) = store(pool.clone(), ks.clone());
    let fx = Fixture::new();
    let (t, u) = (fx.tenant("many"), fx.user("alice"));
    for _ in 0..600 {
        store
            .create(NewSession::new(t.clone(), u.clone()))
            .await
            .unwrap();
    }
    let other = store
        .create(NewSession::new(t.clone(), fx.user("bob")))
        .await
        .unwrap();
    let mut admin = server.admin().await;
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg(&[
            "SET",
            "slowlog-log-slower-than",
            "0",
            "slowlog-max-len",
            "1024",
        ])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(store.revoke_user(&t, &u).await.unwrap(), 600);
    // Every script call of the revocation named at most one batch of keys.
    let log: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg(&["GET", "-1"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut scripts = 0;
    for entry in log {
        let redis::Value::Array(fields) = entry else {
            panic!("slowlog entry")
        };
        let redis::Value::Array(args) = &fields[3] else {
            panic!("slowlog arguments")
        };
        let verb = match &args[0] {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).to_uppercase(),
            _ => continue,
        };
        if verb == "EVALSHA" || verb == "EVAL" {
            scripts += 1;
            let n: usize = match &args[2] {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).parse().unwrap(),
                v => panic!("numkeys {v:?}"),
            };
            assert!(n <= 257, "one script named {n} keys");
        }
    }
    assert!(
        scripts >= 3,
        "600 sessions in batches: {scripts} script calls"
    );
    assert_eq!(index_len(&pool, &ks.session_index(&t, &u)).await, 0);
    assert!(store.list_user(&t, &u).await.unwrap().is_empty());
    assert!(store.load(&t, &other.id).await.unwrap().is_some());
}

#[tokio::test]
async fn an_index_written_as_a_plain_set_keeps_working() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let (store, _clock) = store(pool.clone(), ks.clone());
    let fx = Fixture::new();
    let (t, u) = (fx.tenant("legacy"), fx.user("alice"));
    let index = ks.session_index(&t, &u);
    let old = store
        .create(NewSession::new(t.clone(), u.clone()))
        .await
        .unwrap();
    // The layout of earlier versions: a set of ids expiring after the longest session.
    let _: () = pool.query(redis::cmd("DEL").arg(&index)).await.unwrap();
    let _: () = pool
        .query(redis::cmd("SADD").arg(&index).arg(old.id.as_str()))
        .await
        .unwrap();
    let _: () = pool
        .query(redis::cmd("PEXPIRE").arg(&index).arg(90_000_000))
        .await
        .unwrap();
    let listed = store.list_user(&t, &u).await.unwrap();
    assert_eq!(listed.len(), 1);
    let new = store
        .create(NewSession::new(t.clone(), u.clone()))
        .await
        .unwrap();
    assert_eq!(store.list_user(&t, &u).await.unwrap().len(), 2);
    assert!(store.delete(&t, &old.id).await.unwrap());
    assert_eq!(index_len(&pool, &index).await, 1);
    let kind: String = pool.query(redis::cmd("TYPE").arg(&index)).await.unwrap();
    assert_eq!(kind, "zset");
    assert_eq!(store.revoke_user(&t, &u).await.unwrap(), 1);
    assert!(store.load(&t, &new.id).await.unwrap().is_none());
}

#[tokio::test]
async fn last_activity_never_moves_back_across_instances_with_skewed_clocks() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let (ahead, ahead_clock) = store(pool.clone(), ks.clone());
    let behind_clock = ManualClock::new();
    let behind = RedisSessionStore::new(pool)
        .with_key_space(ks)
        .with_clock(Arc::new(behind_clock.clone()));
    let fx = Fixture::new();
    let t = fx.tenant("skew");
    let s = ahead
        .create(
            NewSession::new(t.clone(), fx.user("alice"))
                .with_idle_timeout(Duration::from_secs(3600))
                .with_absolute_ttl(Duration::from_secs(86_400)),
        )
        .await
        .unwrap();
    ahead_clock.advance(Duration::from_secs(60));
    let touched = ahead.touch(&t, &s.id).await.unwrap().unwrap();
    let seen = touched.last_seen_at;
    assert_eq!(seen, s.last_seen_at + Duration::from_secs(60));
    // An instance 30 s behind touches and saves: last activity stays where it was.
    behind_clock.set_nanos(ahead_clock.now_nanos() - 30_000_000_000);
    let again = behind.touch(&t, &s.id).await.unwrap().unwrap();
    assert_eq!(again.last_seen_at, seen, "touch moved last activity back");
    let saved = behind.save(&again).await.unwrap();
    assert_eq!(saved.last_seen_at, seen, "save moved last activity back");
    // And it still moves forward.
    ahead_clock.advance(Duration::from_secs(5));
    let later = ahead.touch(&t, &s.id).await.unwrap().unwrap();
    assert_eq!(later.last_seen_at, seen + Duration::from_secs(5));
    // Rotated by the instance behind, the new session keeps the later activity.
    let rotated = behind.rotate(&t, &s.id).await.unwrap();
    assert_eq!(
        rotated.last_seen_at, later.last_seen_at,
        "rotate moved last activity back"
    );
}

#[tokio::test]
async fn a_session_whose_header_is_unusable_can_still_be_deleted() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let (store, _clock) = store(pool.clone(), ks.clone());
    let fx = Fixture::new();
    let t = fx.tenant("badheader");
    for garbage in [&b"not json"[..], br#"{"unexpected":true}"#] {
        let s = store
            .create(NewSession::new(t.clone(), fx.user("alice")))
            .await
            .unwrap();
        let key = ks.session(&t, &s.id);
        let _: () = pool
            .query(redis::cmd("HSET").arg(&key).arg("m").arg(garbage))
            .await
            .unwrap();
        // Logging out must not fail on it, and the session must be gone.
        store.delete(&t, &s.id).await.expect("delete");
        let exists: i64 = pool.query(redis::cmd("EXISTS").arg(&key)).await.unwrap();
        assert_eq!(exists, 0, "the session hash is gone");
    }
}

/// "Log out everywhere" ends every session of the user even when one of them cannot be read
/// (a corrupt field) or the index holds an id this store never writes: before, the corrupt
/// session came back first on every retry and kept the others live. Listing the user's
/// sessions shows the readable ones rather than failing.
#[tokio::test]
async fn revoking_a_user_gets_past_unreadable_sessions() {
    let Some((pool, ks)) = common::single().await else {
        return;
    };
    let (store, _clock) = store(pool.clone(), ks.clone());
    let fx = Fixture::new();
    let t = fx.tenant("corruptrevoke");
    let alice = fx.user("alice");
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(
            store
                .create(NewSession::new(t.clone(), alice.clone()))
                .await
                .unwrap(),
        );
    }
    // The oldest, which the index lists first: an unreadable idle timeout.
    let _: () = pool
        .query(
            redis::cmd("HSET")
                .arg(ks.session(&t, &sessions[0].id))
                .arg("i")
                .arg(""),
        )
        .await
        .unwrap();
    let index = ks.session_index(&t, &alice);
    let _: () = pool
        .query(
            redis::cmd("ZADD")
                .arg(&index)
                .arg(i64::MAX / 4)
                .arg("not-a-session-id"),
        )
        .await
        .unwrap();

    let listed = store.list_user(&t, &alice).await.expect("list_user");
    let mut ids: Vec<_> = listed.iter().map(|s| s.id).collect();
    ids.sort();
    let mut readable = vec![sessions[1].id, sessions[2].id];
    readable.sort();
    assert_eq!(ids, readable, "the listing shows the readable sessions");
    let ended = store.revoke_user(&t, &alice).await.expect("revoke_user");
    assert_eq!(ended, 2, "the two readable live sessions are counted");
    for s in &sessions {
        assert!(store.load(&t, &s.id).await.unwrap().is_none());
        let exists: i64 = pool
            .query(redis::cmd("EXISTS").arg(ks.session(&t, &s.id)))
            .await
            .unwrap();
        assert_eq!(exists, 0, "session {} still stored", s.id);
    }
    assert_eq!(index_len(&pool, &index).await, 0);
}

#[tokio::test]
async fn a_redis_that_may_evict_session_keys_is_refused_at_start_up() {
    let Some(server) = common::DedicatedRedis::start().await else {
        return;
    };
    let mut admin = server.admin().await;
    let pool = common::config(tenancy_cache::RedisConfig::single(server.url()))
        .connect()
        .await
        .unwrap();
    let store = RedisSessionStore::new(pool);
    store
        .check_eviction_policy()
        .await
        .expect("noeviction, the default, is safe");
    // Without a memory bound nothing is evicted, whatever the policy.
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory-policy", "allkeys-lru"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory", "0"])
        .query_async(&mut admin)
        .await
        .unwrap();
    store
        .check_eviction_policy()
        .await
        .expect("a server without maxmemory never evicts");
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory", "100mb"])
        .query_async(&mut admin)
        .await
        .unwrap();
    for policy in [
        "volatile-lru",
        "allkeys-lru",
        "volatile-ttl",
        "allkeys-random",
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg(&["SET", "maxmemory-policy", policy])
            .query_async(&mut admin)
            .await
            .unwrap();
        let err = store
            .check_eviction_policy()
            .await
            .expect_err("an evicting policy is refused");
        assert!(
            matches!(&err, tenancy_cache::Error::Misconfigured { setting: "maxmemory-policy", value, .. } if value == policy),
            "{err:?}"
        );
        assert!(err.to_string().contains(policy), "{err}");
        assert_eq!(tenancy_core::Error::from(err).kind(), ErrorKind::Internal);
    }

    // A user without CONFIG cannot tell: a warning, and the store starts.
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER", "noconfig", "on", ">pw", "~*", "&*", "+@all", "-config",
        ])
        .query_async(&mut admin)
        .await
        .unwrap();
    let url = server.url().replace("redis://", "redis://noconfig:pw@");
    let pool = common::config(tenancy_cache::RedisConfig::single(url))
        .connect()
        .await
        .unwrap();
    RedisSessionStore::new(pool)
        .check_eviction_policy()
        .await
        .expect("CONFIG refused: warn, do not fail");
}

/// Each primary of a Cluster is asked, not just the first: one primary of the shared
/// Cluster that would evict (a bound far above what the tests store, so that nothing is
/// evicted meanwhile) is named; its settings are put back before anything is asserted.
#[tokio::test]
async fn every_cluster_primary_is_checked_for_an_evicting_policy() {
    let Some((pool, _)) = common::cluster().await else {
        return;
    };
    let store = RedisSessionStore::new(pool);
    store
        .check_eviction_policy()
        .await
        .expect("noeviction, the default, on every primary");

    let urls = common::cluster_urls();
    let last = urls.last().expect("cluster urls");
    let port = last.rsplit(':').next().expect("a port").to_owned();
    let mut node = redis::Client::open(last.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let before: std::collections::HashMap<String, String> = redis::cmd("CONFIG")
        .arg(&["GET", "maxmemory*"])
        .query_async(&mut node)
        .await
        .unwrap();
    let set = |setting: &'static str, value: String| {
        let mut node = node.clone();
        async move {
            redis::cmd("CONFIG")
                .arg("SET")
                .arg(setting)
                .arg(value)
                .query_async::<()>(&mut node)
                .await
        }
    };
    set("maxmemory", "4gb".to_owned()).await.unwrap();
    set("maxmemory-policy", "allkeys-lru".to_owned())
        .await
        .unwrap();
    let found = store.check_eviction_policy().await;
    set("maxmemory-policy", before["maxmemory-policy"].clone())
        .await
        .unwrap();
    set("maxmemory", before["maxmemory"].clone()).await.unwrap();

    match found {
        Err(tenancy_cache::Error::Misconfigured {
            node,
            setting,
            value,
            ..
        }) => {
            assert!(node.ends_with(&format!(":{port}")), "{node}");
            assert_eq!(
                (setting, value.as_str()),
                ("maxmemory-policy", "allkeys-lru")
            );
        }
        other => panic!("the evicting primary on port {port} went unnoticed: {other:?}"),
    }
    store
        .check_eviction_policy()
        .await
        .expect("noeviction again on every primary");
}
