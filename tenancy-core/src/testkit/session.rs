use std::time::Duration;

use super::{Fixture, TimeControl};
use crate::{
    ErrorKind, MAX_SESSION_DATA_BYTES, MAX_SESSION_TTL, NewSession, SessionAdmin, SessionData,
    SessionStore,
};

macro_rules! ok {
    ($e:expr, $case:literal) => {
        $e.await
            .unwrap_or_else(|e| panic!(concat!($case, ": {}"), e))
    };
}

/// The [`SessionStore`] + [`SessionAdmin`] conformance suite.
///
/// Expiry cases move time with `time`: pass [`TimeControl::Manual`] with the clock the store
/// was built on, or [`TimeControl::Real`] for a store whose expiry follows a server's clock
/// (the suite then waits a few seconds).
pub async fn session_store<S: SessionStore + SessionAdmin>(
    store: &S,
    time: TimeControl,
    fx: &Fixture,
) {
    let (a, b) = (fx.tenant("sess-a"), fx.tenant("sess-b"));
    let (alice, bob) = (fx.user("alice"), fx.user("bob"));

    // Round trip.
    let mut data = SessionData::new();
    data.insert("k".into(), serde_json::json!({"nested": [1, 2, 3]}));
    let s = ok!(
        store.create(NewSession::new(a.clone(), alice.clone()).with_data(data.clone())),
        "create"
    );
    assert_eq!(s.version, 1, "create: version starts at 1");
    let loaded = ok!(store.load(&a, &s.id), "load").expect("load: created session must load");
    assert_eq!(loaded.data, data, "load: data round trip");
    assert_eq!(
        (loaded.tenant.clone(), loaded.user.clone()),
        (a.clone(), alice.clone())
    );

    // Isolation: B cannot load, touch, save, delete or rotate A's session by id.
    assert!(
        ok!(store.load(&b, &s.id), "isolation load").is_none(),
        "isolation: B loaded A's session"
    );
    assert!(
        ok!(store.touch(&b, &s.id), "isolation touch").is_none(),
        "isolation: B touched A's session"
    );
    let mut forged = loaded.clone();
    forged.tenant = b.clone();
    let err = store
        .save(&forged)
        .await
        .expect_err("isolation: B saved over A's session");
    assert_eq!(err.kind(), ErrorKind::NotFound, "isolation save: {err}");
    assert!(
        !ok!(store.delete(&b, &s.id), "isolation delete"),
        "isolation: B deleted A's session"
    );
    assert_eq!(
        store
            .rotate(&b, &s.id)
            .await
            .expect_err("isolation rotate")
            .kind(),
        ErrorKind::NotFound
    );
    assert!(
        ok!(store.load(&a, &s.id), "isolation").is_some(),
        "isolation: A's session damaged by B"
    );
    let b_alice = ok!(
        store.create(NewSession::new(b.clone(), alice.clone())),
        "create"
    );
    let listed = ok!(store.list_user(&b, &alice), "list");
    assert_eq!(
        listed.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![b_alice.id],
        "isolation: list crosses tenants"
    );
    assert_eq!(ok!(store.revoke_user(&b, &alice), "revoke"), 1);
    assert!(
        ok!(store.load(&a, &s.id), "isolation").is_some(),
        "isolation: B's revoke ended A's session"
    );

    // Optimistic versioning.
    let mut v1 = loaded.clone();
    v1.data.insert("step".into(), 1.into());
    let v2 = ok!(store.save(&v1), "save");
    assert_eq!(v2.version, 2, "save: version increments");
    assert_eq!(v2.data.get("step"), Some(&1.into()));
    let mut stale = loaded.clone();
    stale.data.insert("step".into(), 99.into());
    let err = store
        .save(&stale)
        .await
        .expect_err("save: a stale copy must not overwrite");
    assert_eq!(err.kind(), ErrorKind::Conflict, "save stale: {err}");
    let now = ok!(store.load(&a, &s.id), "load").expect("load after conflict");
    assert_eq!(
        now.data.get("step"),
        Some(&1.into()),
        "save: the stale write leaked through"
    );

    // Touch keeps the version.
    let touched = ok!(store.touch(&a, &s.id), "touch").expect("touch");
    assert_eq!(touched.version, 2, "touch: version unchanged");

    // Rotation.
    let rotated = ok!(store.rotate(&a, &s.id), "rotate");
    assert_ne!(rotated.id, s.id, "rotate: id changes");
    assert_eq!(
        rotated.data.get("step"),
        Some(&1.into()),
        "rotate: data kept"
    );
    assert!(rotated.version > 2, "rotate: version increments");
    assert!(
        ok!(store.load(&a, &s.id), "rotate").is_none(),
        "rotate: old id still works"
    );
    assert!(
        ok!(store.load(&a, &rotated.id), "rotate").is_some(),
        "rotate: new id does not load"
    );

    // Delete.
    assert!(
        ok!(store.delete(&a, &rotated.id), "delete"),
        "delete: live session"
    );
    assert!(
        !ok!(store.delete(&a, &rotated.id), "delete"),
        "delete: twice"
    );
    assert!(ok!(store.load(&a, &rotated.id), "delete").is_none());
    let err = store.save(&rotated).await.expect_err("save after delete");
    assert_eq!(err.kind(), ErrorKind::NotFound, "save after delete: {err}");

    // Admin: list and revoke one user's sessions only.
    let a1 = ok!(
        store.create(NewSession::new(a.clone(), alice.clone())),
        "admin"
    );
    let a2 = ok!(
        store.create(NewSession::new(a.clone(), alice.clone())),
        "admin"
    );
    let b1 = ok!(
        store.create(NewSession::new(a.clone(), bob.clone())),
        "admin"
    );
    let mut ids: Vec<_> = ok!(store.list_user(&a, &alice), "list")
        .into_iter()
        .map(|s| s.id)
        .collect();
    ids.sort();
    let mut want = vec![a1.id, a2.id];
    want.sort();
    assert_eq!(ids, want, "admin: list_user");
    assert_eq!(
        ok!(store.revoke_user(&a, &alice), "revoke"),
        2,
        "admin: revoke_user count"
    );
    assert!(
        ok!(store.load(&a, &a1.id), "revoke").is_none()
            && ok!(store.load(&a, &a2.id), "revoke").is_none()
    );
    assert!(
        ok!(store.load(&a, &b1.id), "revoke").is_some(),
        "admin: revoke_user ended another user's session"
    );

    bounds(store, fx).await;

    // Idle expiry, extended by touch; absolute expiry regardless of activity. The absolute
    // lifetime is far off here: only idle expiry can end this session.
    let idle = ok!(
        store.create(
            NewSession::new(a.clone(), bob.clone())
                .with_idle_timeout(Duration::from_secs(2))
                .with_absolute_ttl(Duration::from_secs(60))
        ),
        "expiry"
    );
    time.advance(Duration::from_millis(1200)).await;
    assert!(
        ok!(store.touch(&a, &idle.id), "expiry").is_some(),
        "expiry: ended before the idle timeout"
    );
    time.advance(Duration::from_millis(1200)).await;
    assert!(
        ok!(store.load(&a, &idle.id), "expiry").is_some(),
        "expiry: touch did not extend idle expiry"
    );
    time.advance(Duration::from_millis(2200)).await;
    assert!(
        ok!(store.load(&a, &idle.id), "expiry").is_none(),
        "expiry: idle session still live"
    );
    assert!(
        ok!(store.touch(&a, &idle.id), "expiry").is_none(),
        "expiry: ended session touched"
    );
    assert!(
        ok!(store.list_user(&a, &bob), "expiry")
            .iter()
            .all(|s| s.id != idle.id),
        "expiry: ended session listed"
    );

    // An instance whose clock is behind never moves the last activity back, and with it the
    // idle deadline (only a clock the suite can turn back shows it).
    if let TimeControl::Manual(clock) = &time {
        let lagging = ok!(
            store.create(
                NewSession::new(a.clone(), bob.clone())
                    .with_idle_timeout(Duration::from_secs(2))
                    .with_absolute_ttl(Duration::from_secs(60))
            ),
            "clock behind"
        );
        time.advance(Duration::from_millis(1500)).await;
        let seen = ok!(store.touch(&a, &lagging.id), "clock behind")
            .unwrap_or_else(|| panic!("clock behind: session ended early"))
            .last_seen_at;
        let ahead = crate::Clock::now_nanos(clock);
        clock.set_nanos(ahead - 1_000_000_000);
        let behind = ok!(store.touch(&a, &lagging.id), "clock behind")
            .unwrap_or_else(|| panic!("clock behind: session ended early"));
        assert_eq!(
            behind.last_seen_at, seen,
            "clock behind: touch moved last activity back"
        );
        let mut behind = ok!(store.save(&behind), "clock behind");
        assert_eq!(
            behind.last_seen_at, seen,
            "clock behind: save moved last activity back"
        );
        behind = ok!(store.rotate(&a, &behind.id), "clock behind");
        assert_eq!(
            behind.last_seen_at, seen,
            "clock behind: rotate moved last activity back"
        );
        // 1.9 s after the latest activity, 2.9 s after the lagging clock's: still live.
        clock.set_nanos(ahead + 1_900_000_000);
        assert!(
            ok!(store.load(&a, &behind.id), "clock behind").is_some(),
            "clock behind: the idle deadline moved back"
        );
        ok!(store.delete(&a, &behind.id), "clock behind");
    }

    let abs = ok!(
        store.create(
            NewSession::new(a.clone(), bob.clone())
                .with_idle_timeout(Duration::from_secs(2))
                .with_absolute_ttl(Duration::from_secs(3))
        ),
        "absolute"
    );
    for _ in 0..3 {
        time.advance(Duration::from_millis(1100)).await;
        store
            .touch(&a, &abs.id)
            .await
            .unwrap_or_else(|e| panic!("absolute: {e}"));
    }
    assert!(
        ok!(store.load(&a, &abs.id), "absolute").is_none(),
        "absolute: session outlived its absolute lifetime"
    );
}

/// Session data whose JSON is exactly `len` bytes: `{"k":"xxx..."}`.
fn data_of_json_len(len: usize) -> SessionData {
    let mut data = SessionData::new();
    data.insert("k".into(), "x".repeat(len - r#"{"k":""}"#.len()).into());
    assert_eq!(serde_json::to_vec(&data).map(|v| v.len()).ok(), Some(len));
    data
}

/// The bounds every store applies: idle timeout and absolute lifetime from 1 second to
/// [`MAX_SESSION_TTL`], data up to [`MAX_SESSION_DATA_BYTES`] as JSON, refused with
/// [`ErrorKind::Invalid`] on create and on save, leaving nothing written.
async fn bounds<S: SessionStore + SessionAdmin>(store: &S, fx: &Fixture) {
    let a = fx.tenant("sess-a");
    let carol = fx.user("carol");
    let new = || NewSession::new(a.clone(), carol.clone());
    let too_long = MAX_SESSION_TTL + Duration::from_secs(1);
    let refused_creates = [
        (
            "bounds: idle timeout 0",
            new().with_idle_timeout(Duration::ZERO),
        ),
        (
            "bounds: idle timeout under a second",
            new().with_idle_timeout(Duration::from_millis(999)),
        ),
        (
            "bounds: idle timeout over the maximum",
            new().with_idle_timeout(too_long),
        ),
        (
            "bounds: absolute lifetime 0",
            new().with_absolute_ttl(Duration::ZERO),
        ),
        (
            "bounds: absolute lifetime over the maximum",
            new().with_absolute_ttl(too_long),
        ),
        (
            "bounds: data over the size cap",
            new().with_data(data_of_json_len(MAX_SESSION_DATA_BYTES + 1)),
        ),
    ];
    for (case, n) in refused_creates {
        let err = store.create(n).await.err();
        assert_eq!(
            err.as_ref().map(crate::Error::kind),
            Some(ErrorKind::Invalid),
            "{case}: create must be refused as invalid, got {err:?}"
        );
    }
    assert!(
        ok!(store.list_user(&a, &carol), "bounds").is_empty(),
        "bounds: a refused create left a session behind"
    );

    // The bounds themselves are accepted.
    let edge = ok!(
        store.create(
            new()
                .with_idle_timeout(MAX_SESSION_TTL)
                .with_absolute_ttl(MAX_SESSION_TTL)
                .with_data(data_of_json_len(MAX_SESSION_DATA_BYTES))
        ),
        "bounds: the maximum lifetimes and data size"
    );
    let small = ok!(
        store.create(
            new()
                .with_idle_timeout(Duration::from_secs(1))
                .with_absolute_ttl(Duration::from_secs(1))
        ),
        "bounds: the minimum lifetimes"
    );
    assert!(ok!(store.delete(&a, &small.id), "bounds"));

    let mut refused_saves = Vec::new();
    let mut s = edge.clone();
    s.idle_timeout_secs = 0;
    refused_saves.push(("bounds: save with idle timeout 0", s));
    let mut s = edge.clone();
    s.idle_timeout_secs = too_long.as_secs();
    refused_saves.push(("bounds: save with idle timeout over the maximum", s));
    let mut s = edge.clone();
    s.data = data_of_json_len(MAX_SESSION_DATA_BYTES + 1);
    refused_saves.push(("bounds: save with data over the size cap", s));
    for (case, s) in refused_saves {
        let err = store.save(&s).await.err();
        assert_eq!(
            err.as_ref().map(crate::Error::kind),
            Some(ErrorKind::Invalid),
            "{case}: save must be refused as invalid, got {err:?}"
        );
    }
    let stored = ok!(store.load(&a, &edge.id), "bounds").expect("bounds: session at the bounds");
    assert_eq!(
        (stored.version, stored.idle_timeout_secs, stored.data.len()),
        (edge.version, MAX_SESSION_TTL.as_secs(), 1),
        "bounds: a refused save changed the session"
    );
    assert_eq!(stored.data, edge.data, "bounds: data at the cap round trip");
    let mut s = stored;
    s.idle_timeout_secs = 1;
    s.data = SessionData::new();
    let saved = ok!(store.save(&s), "bounds: save at the minimum idle timeout");
    assert_eq!(saved.version, edge.version + 1);
    assert_eq!(ok!(store.revoke_user(&a, &carol), "bounds"), 1);
}
