//! Refresh tokens end to end on a real session store: rotation on every use, reuse detection
//! that ends the whole session, logout, expiry, and a race between two refreshes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use tenancy_auth::issuer::SPENT_HISTORY;
use tenancy_auth::{Algorithm, JwtVerifier, TokenIssuer, TokenPair};
use tenancy_core::memory::MemorySessionStore;
use tenancy_core::{
    Error, ManualClock, NewSession, PermissionSet, Session, SessionId, SessionStore, TenantId,
    TokenRejection as R, TokenVerifier,
};

/// A session store with faults the tests switch on.
///
/// - Lockstep loads make racing refreshes really race: once armed for `n` loads, each of
///   those loads waits after reading until all `n` have read, so that every racer holds the
///   same version of the session before any of them saves. Exactly one save can then win;
///   the others meet the store's version check (`Conflict`, counted here) and the issuer's
///   retry path.
/// - `lose_next_reply` stores the next save and then answers it with a timeout (the write
///   committed, its reply was lost); `fail_next_write` answers the next save as unavailable
///   without storing it.
#[derive(Debug)]
struct HookedStore {
    inner: Arc<dyn SessionStore>,
    barrier: tokio::sync::Barrier,
    armed: AtomicUsize,
    conflicts: AtomicUsize,
    lose_reply: AtomicUsize,
    fail_write: AtomicUsize,
    injected: AtomicUsize,
}

impl HookedStore {
    /// Lockstep loads wait for `racers` loads.
    fn new(inner: Arc<dyn SessionStore>, racers: usize) -> Self {
        Self {
            inner,
            barrier: tokio::sync::Barrier::new(racers),
            armed: AtomicUsize::new(0),
            conflicts: AtomicUsize::new(0),
            lose_reply: AtomicUsize::new(0),
            fail_write: AtomicUsize::new(0),
            injected: AtomicUsize::new(0),
        }
    }

    /// Holds the next `racers` loads at the barrier.
    fn arm(&self, racers: usize) {
        self.armed.store(racers, Ordering::SeqCst);
    }

    fn conflicts(&self) -> usize {
        self.conflicts.load(Ordering::SeqCst)
    }

    fn lose_next_reply(&self) {
        self.lose_reply.store(1, Ordering::SeqCst);
    }

    fn fail_next_write(&self) {
        self.fail_write.store(1, Ordering::SeqCst);
    }

    /// How many write faults were injected so far.
    fn injected(&self) -> usize {
        self.injected.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl SessionStore for HookedStore {
    async fn create(&self, new: NewSession) -> tenancy_core::Result<Session> {
        self.inner.create(new).await
    }

    async fn load(
        &self,
        tenant: &TenantId,
        id: &SessionId,
    ) -> tenancy_core::Result<Option<Session>> {
        let loaded = self.inner.load(tenant, id).await?;
        let held = self
            .armed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if held {
            tokio::time::timeout(Duration::from_secs(10), self.barrier.wait())
                .await
                .expect("the other racer never loaded the session");
        }
        Ok(loaded)
    }

    async fn touch(
        &self,
        tenant: &TenantId,
        id: &SessionId,
    ) -> tenancy_core::Result<Option<Session>> {
        self.inner.touch(tenant, id).await
    }

    async fn save(&self, session: &Session) -> tenancy_core::Result<Session> {
        if self.fail_write.swap(0, Ordering::SeqCst) == 1 {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(Error::unavailable("session store unreachable"));
        }
        let saved = self.inner.save(session).await;
        if matches!(saved, Err(Error::Conflict(_))) {
            self.conflicts.fetch_add(1, Ordering::SeqCst);
        }
        let saved = saved?;
        if self.lose_reply.swap(0, Ordering::SeqCst) == 1 {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(Error::Timeout);
        }
        Ok(saved)
    }

    async fn delete(&self, tenant: &TenantId, id: &SessionId) -> tenancy_core::Result<bool> {
        self.inner.delete(tenant, id).await
    }

    async fn rotate(&self, tenant: &TenantId, id: &SessionId) -> tenancy_core::Result<Session> {
        self.inner.rotate(tenant, id).await
    }
}

struct Fixture {
    issuer: TokenIssuer,
    verifier: JwtVerifier,
    store: Arc<dyn SessionStore>,
    tenant: TenantId,
}

fn fixture(store: Arc<dyn SessionStore>, clock: &ManualClock, tenant: &str) -> Fixture {
    let (sk, vk) = signing(Algorithm::HS256);
    let issuer = TokenIssuer::builder(sk, ISS, AUD)
        .sessions(store.clone())
        .session_idle_timeout(Duration::from_secs(600))
        .clock(shared(clock))
        .build()
        .unwrap();
    let verifier = JwtVerifier::builder()
        .issuer(ISS, vk)
        .audience(AUD)
        .sessions(store.clone())
        .require_session()
        .clock(shared(clock))
        .build()
        .unwrap();
    Fixture {
        issuer,
        verifier,
        store,
        tenant: TenantId::parse(tenant).unwrap(),
    }
}

fn rejected(e: &Error) -> Option<R> {
    match e {
        Error::Rejected(r) => Some(*r),
        _ => None,
    }
}

impl Fixture {
    async fn login(&self, user: &str) -> TokenPair {
        let perms: PermissionSet = ["records:read".parse().unwrap()].into_iter().collect();
        self.issuer
            .login(
                &self.tenant,
                &user.parse().unwrap(),
                &"user".parse().unwrap(),
                &perms,
            )
            .await
            .unwrap()
    }

    async fn refresh_err(&self, t: &str) -> Option<R> {
        rejected(&self.issuer.refresh(t).await.unwrap_err())
    }

    async fn verify_err(&self, t: &str) -> Option<R> {
        rejected(&self.verifier.verify(t).await.unwrap_err())
    }

    /// `pair`'s refresh token spent for the next pair.
    async fn rotate(&self, pair: &TokenPair) -> TokenPair {
        self.issuer
            .refresh(pair.refresh_token.expose())
            .await
            .unwrap()
    }

    /// Presenting the spent refresh token `spent` ends its session: refused as reuse, the
    /// session gone, and `current`'s access and refresh tokens refused from then on.
    async fn assert_reuse_ends_session(&self, spent: &str, current: &TokenPair) {
        assert_eq!(self.refresh_err(spent).await, Some(R::Revoked));
        assert!(
            self.store
                .load(&self.tenant, &current.session)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            self.verify_err(&current.access_token).await,
            Some(R::SessionEnded)
        );
        assert_eq!(
            self.refresh_err(current.refresh_token.expose()).await,
            Some(R::SessionEnded)
        );
    }
}

/// The whole life of a refresh family; runs on any session store.
pub async fn rotation_and_reuse(store: Arc<dyn SessionStore>, tenant: &str) {
    let clock = ManualClock::new();
    let f = fixture(store, &clock, tenant);
    let p1 = f.login("alice").await;
    assert_eq!(p1.tenant, f.tenant);
    let c1 = f.verifier.verify(&p1.access_token).await.unwrap();
    assert_eq!(c1.sid, Some(p1.session));
    assert!(c1.permissions.allows(&"records:read".parse().unwrap()));

    // The store holds only a hash of the refresh secret.
    let stored = f.store.load(&f.tenant, &p1.session).await.unwrap().unwrap();
    // rt2.<tenant>.<session>.<secret>.<tag>
    let secret = p1
        .refresh_token
        .expose()
        .split('.')
        .nth(3)
        .unwrap()
        .to_owned();
    let data = serde_json::to_string(&stored.data).unwrap();
    assert!(!data.contains(&secret), "refresh secret stored in clear");

    // Rotation: each use returns a new token for the same session.
    let p2 = f.issuer.refresh(p1.refresh_token.expose()).await.unwrap();
    assert_ne!(p2.refresh_token, p1.refresh_token);
    assert_eq!(p2.session, p1.session);
    let p3 = f.issuer.refresh(p2.refresh_token.expose()).await.unwrap();
    let c3 = f.verifier.verify(&p3.access_token).await.unwrap();
    assert_eq!(c3.user_id.as_str(), "alice");
    assert!(
        c3.permissions.allows(&"records:read".parse().unwrap()),
        "permissions kept"
    );

    // A made-up secret for a real session, with a made-up tag or none: refused, but it
    // revokes nothing.
    for forged in [
        format!("rt1.{}.{}.{}", f.tenant, p3.session, b64(&[0u8; 32])),
        format!(
            "rt2.{}.{}.{}.{}",
            f.tenant,
            p3.session,
            b64(&[0u8; 32]),
            b64(&[0u8; 16])
        ),
    ] {
        assert_eq!(f.refresh_err(&forged).await, Some(R::BadSignature));
    }
    // A spent token's secret with another tag is made up too.
    let retagged = {
        let t = p1.refresh_token.expose();
        format!("{}{}", &t[..t.rfind('.').unwrap() + 1], b64(&[1u8; 16]))
    };
    assert_eq!(f.refresh_err(&retagged).await, Some(R::BadSignature));
    f.verifier.verify(&p3.access_token).await.unwrap();

    // The same token presented under another tenant finds no session.
    let other_tenant =
        p3.refresh_token
            .expose()
            .replacen(&format!(".{}.", f.tenant), ".zz-other.", 1);
    assert_eq!(f.refresh_err(&other_tenant).await, Some(R::SessionEnded));

    // Reuse of a spent token: the whole session ends.
    f.assert_reuse_ends_session(p1.refresh_token.expose(), &p3)
        .await;
    assert_eq!(
        f.refresh_err(p2.refresh_token.expose()).await,
        Some(R::SessionEnded)
    );

    // Logout ends a session and both of its tokens.
    let q = f.login("bob").await;
    f.verifier.verify(&q.access_token).await.unwrap();
    assert!(f.issuer.logout(&f.tenant, &q.session).await.unwrap());
    assert_eq!(f.verify_err(&q.access_token).await, Some(R::SessionEnded));
    assert_eq!(
        f.refresh_err(q.refresh_token.expose()).await,
        Some(R::SessionEnded)
    );

    // Other users' sessions are untouched by all this.
    let r = f.login("carol").await;
    f.verifier.verify(&r.access_token).await.unwrap();
    f.issuer.refresh(r.refresh_token.expose()).await.unwrap();
}

/// Two refreshes racing with the same token: one wins, the other is reuse and ends the
/// session. With a [`HookedStore`], both have loaded the same version before either saves,
/// so the loser's save conflicts every round and the issuer's retry path decides.
async fn racing_refreshes(
    store: Arc<dyn SessionStore>,
    tenant: &str,
    lockstep: Option<&HookedStore>,
) {
    let clock = ManualClock::new();
    let f = Arc::new(fixture(store, &clock, tenant));
    for round in 0..5 {
        let p = f.login(&format!("racer{round}")).await;
        let t = p.refresh_token.expose().to_owned();
        if let Some(l) = lockstep {
            l.arm(2);
        }
        // Each refresh on its own task: on a multi-thread runtime they run in parallel.
        let racer = || {
            let (issuer, t) = (f.issuer.clone(), t.clone());
            tokio::spawn(async move { issuer.refresh(&t).await })
        };
        let (a, b) = tokio::join!(racer(), racer());
        let outcomes = [a.unwrap(), b.unwrap()];
        if let Some(l) = lockstep {
            assert_eq!(
                l.conflicts(),
                round + 1,
                "round {round}: the racers did not both load one version: {outcomes:?}"
            );
        }
        let wins = outcomes.iter().filter(|o| o.is_ok()).count();
        let reuse = outcomes
            .iter()
            .filter(|o| matches!(o, Err(Error::Rejected(R::Revoked))))
            .count();
        assert_eq!((wins, reuse), (1, 1), "round {round}: {outcomes:?}");
        assert!(f.store.load(&f.tenant, &p.session).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn memory_rotation_and_reuse() {
    rotation_and_reuse(Arc::new(MemorySessionStore::new()), "acme").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_racing_refreshes() {
    let store = Arc::new(HookedStore::new(Arc::new(MemorySessionStore::new()), 2));
    racing_refreshes(store.clone(), "acme", Some(&store)).await;
}

/// A token spent long ago (a default-length session's worth of refreshes later) is still
/// recognised when presented again, and ends the session.
#[tokio::test]
async fn a_token_spent_a_whole_session_ago_is_recognised() {
    let clock = ManualClock::new();
    let f = fixture(Arc::new(MemorySessionStore::new()), &clock, "acme");
    let first = f.login("alice").await;
    let mut last = first.clone();
    // A 12-hour session refreshed every 5 minutes.
    for _ in 0..144 {
        last = f.issuer.refresh(last.refresh_token.expose()).await.unwrap();
    }
    assert_eq!(
        f.refresh_err(first.refresh_token.expose()).await,
        Some(R::Revoked)
    );
    assert_eq!(
        f.refresh_err(last.refresh_token.expose()).await,
        Some(R::SessionEnded)
    );
}

/// A token of `pair`'s session with a secret and a tag it never issued.
fn forge(pair: &TokenPair) -> String {
    let t = pair.refresh_token.expose();
    let parts: Vec<&str> = t.split('.').collect();
    let mut forged = format!(
        "{}.{}.{}.{}",
        parts[0],
        parts[1],
        parts[2],
        b64(&[0xAA; 32])
    );
    if parts[0] == "rt2" {
        forged = format!("{forged}.{}", b64(&[0xAA; 16]));
    }
    forged
}

/// However many times a session is rotated, its spent tokens are recognised (their tag is
/// the session's): a thief holding the current token cannot rotate the owner's old one into
/// oblivion. And however many times, a token with a made-up secret ends nothing.
#[tokio::test]
async fn a_token_spent_any_number_of_rotations_ago_still_ends_the_session() {
    let clock = ManualClock::new();
    let f = fixture(Arc::new(MemorySessionStore::new()), &clock, "acme");
    let owner = f.login("alice").await;
    assert!(owner.refresh_token.expose().starts_with("rt2."));
    let mut current = owner.clone();
    for _ in 0..SPENT_HISTORY * 3 {
        current = f.rotate(&current).await;
        assert_eq!(f.refresh_err(&forge(&current)).await, Some(R::BadSignature));
    }
    // The refresh state stays small: no history of spent tokens is kept.
    let stored = f
        .store
        .load(&f.tenant, &current.session)
        .await
        .unwrap()
        .unwrap();
    let size = serde_json::to_string(&stored.data).unwrap().len();
    assert!(size < 1024, "{size} bytes of session data");
    f.verifier.verify(&current.access_token).await.unwrap();
    f.assert_reuse_ends_session(owner.refresh_token.expose(), &current)
        .await;
}

/// Makes `pair`'s stored session what an earlier version saved: no tag key, its current token
/// an `rt1` one (returned) with secret `seed`, `generation` rotations behind it and `spent`
/// fingerprints in its history.
async fn as_earlier_version(
    f: &Fixture,
    pair: &TokenPair,
    seed: u8,
    generation: u64,
    spent: usize,
) -> String {
    use sha2::Digest as _;
    let hex = |bytes: &[u8]| -> String {
        sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let secret = [seed; 32];
    let mut session = f
        .store
        .load(&f.tenant, &pair.session)
        .await
        .unwrap()
        .unwrap();
    let state = session
        .data
        .get_mut("tenancy_auth")
        .unwrap()
        .as_object_mut()
        .unwrap();
    assert!(state.remove("key").is_some());
    state.insert("current".into(), hex(&secret).into());
    state.insert("generation".into(), generation.into());
    let history: Vec<String> = (0..spent)
        .map(|i| hex(&(i as u64).to_le_bytes())[..16].to_owned())
        .collect();
    state.insert("spent".into(), history.into());
    f.store.save(&session).await.unwrap();
    format!("rt1.{}.{}.{}", f.tenant, pair.session, b64(&secret))
}

/// A session saved by an earlier version has no tag key: its tokens are `rt1` ones, without
/// a tag, and its spent ones are told by a history. Its next refresh moves it to tagged
/// tokens; the `rt1` token it spent then is still recognised as spent.
#[tokio::test]
async fn a_session_of_an_earlier_version_moves_to_tagged_tokens() {
    let clock = ManualClock::new();
    let f = fixture(Arc::new(MemorySessionStore::new()), &clock, "acme");
    let login = f.login("alice").await;
    let old = as_earlier_version(&f, &login, 7, 3, 3).await;
    // While its history is whole, a made-up `rt1` token ends nothing.
    let made_up = format!("rt1.{}.{}.{}", f.tenant, login.session, b64(&[9u8; 32]));
    assert_eq!(f.refresh_err(&made_up).await, Some(R::BadSignature));
    // Nor does its current secret under a tag it never issued.
    assert_eq!(
        f.refresh_err(&format!(
            "{}.{}",
            old.replacen("rt1.", "rt2.", 1),
            b64(&[1u8; 16])
        ))
        .await,
        Some(R::BadSignature)
    );
    let next = f.issuer.refresh(&old).await.unwrap();
    assert!(next.refresh_token.expose().starts_with("rt2."));
    let next = f.rotate(&next).await;
    assert_eq!(f.refresh_err(&made_up).await, Some(R::BadSignature));
    assert_eq!(f.refresh_err(&forge(&next)).await, Some(R::BadSignature));
    f.verifier.verify(&next.access_token).await.unwrap();
    // The spent `rt1` token, presented again after the move: reuse.
    f.assert_reuse_ends_session(&old, &next).await;
}

/// Once a session of an earlier version has forgotten some of its spent tokens, an unknown
/// `rt1` token may be one of them and ends the session (the documented price), before and
/// after the session moves to tagged tokens; a made-up tagged token still ends nothing.
#[tokio::test]
async fn a_session_of_an_earlier_version_still_detects_reuse_past_its_history() {
    let clock = ManualClock::new();
    let f = fixture(Arc::new(MemorySessionStore::new()), &clock, "acme");
    let login = f.login("alice").await;
    let old = as_earlier_version(&f, &login, 7, SPENT_HISTORY as u64, SPENT_HISTORY).await;
    let made_up = format!("rt1.{}.{}.{}", f.tenant, login.session, b64(&[9u8; 32]));
    // Its history is whole: a made-up token ends nothing.
    assert_eq!(f.refresh_err(&made_up).await, Some(R::BadSignature));
    // One more rotation forgets the oldest: from then on any unknown `rt1` token is reuse.
    let next = f.issuer.refresh(&old).await.unwrap();
    assert!(next.refresh_token.expose().starts_with("rt2."));
    assert_eq!(f.refresh_err(&forge(&next)).await, Some(R::BadSignature));
    f.verifier.verify(&next.access_token).await.unwrap();
    f.assert_reuse_ends_session(&made_up, &next).await;

    // The same before the move: a session past its history, still without a key.
    let login = f.login("bob").await;
    as_earlier_version(&f, &login, 8, SPENT_HISTORY as u64 + 1, SPENT_HISTORY).await;
    let made_up = format!("rt1.{}.{}.{}", f.tenant, login.session, b64(&[9u8; 32]));
    f.assert_reuse_ends_session(&made_up, &login).await;
}

/// The current token's secret is only accepted under its own tag: a thief who strips or
/// changes the tag neither rotates the session nor, once the owner has rotated, escapes
/// reuse detection by trying it that way first.
#[tokio::test]
async fn the_current_secret_under_another_tag_spends_nothing() {
    let clock = ManualClock::new();
    let f = fixture(Arc::new(MemorySessionStore::new()), &clock, "acme");
    let owner = f.login("alice").await;
    let token = owner.refresh_token.expose().to_owned();
    let without_tag = token[..token.rfind('.').unwrap()].replacen("rt2.", "rt1.", 1);
    let other_tag = format!(
        "{}.{}",
        &token[..token.rfind('.').unwrap()],
        b64(&[3u8; 16])
    );
    for stolen in [&without_tag, &other_tag] {
        assert_eq!(
            f.refresh_err(stolen).await,
            Some(R::BadSignature),
            "{stolen}"
        );
    }
    // Nothing was rotated: the owner's token is still the current one.
    let next = f.issuer.refresh(&token).await.unwrap();
    for stolen in [&without_tag, &other_tag] {
        assert_eq!(
            f.refresh_err(stolen).await,
            Some(R::BadSignature),
            "{stolen}"
        );
    }
    f.verifier.verify(&next.access_token).await.unwrap();
    // The token as issued, presented again: reuse, as always.
    f.assert_reuse_ends_session(&token, &next).await;
}

#[tokio::test]
async fn idle_sessions_end_with_their_refresh_tokens() {
    let clock = ManualClock::new();
    let store: Arc<dyn SessionStore> = Arc::new(MemorySessionStore::with_clock(shared(&clock)));
    let f = fixture(store, &clock, "acme");
    let p = f.login("alice").await;
    clock.advance(Duration::from_secs(300));
    let p2 = f.issuer.refresh(p.refresh_token.expose()).await.unwrap();
    clock.advance(Duration::from_secs(601));
    assert_eq!(
        f.refresh_err(p2.refresh_token.expose()).await,
        Some(R::SessionEnded)
    );
}

#[tokio::test]
async fn malformed_refresh_tokens_are_refused() {
    let f = fixture(
        Arc::new(MemorySessionStore::new()),
        &ManualClock::new(),
        "acme",
    );
    for t in ["", "rt1", "rt1.acme.x.y", "eyJhbGciOi.x.y", "rt1.ACME.a.b"] {
        assert_eq!(f.refresh_err(t).await, Some(R::Malformed), "{t:?}");
    }
    assert_eq!(f.refresh_err(&"rt1.".repeat(200)).await, Some(R::Oversized));
}

async fn redis_store() -> Option<Arc<dyn SessionStore>> {
    let redis = tenancy_tests::redis().await?;
    let pool = tenancy_cache::RedisConfig::single(redis.url())
        .with_response_timeout(Duration::from_secs(5))
        .with_acquire_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("pool on the test Redis");
    let keys = tenancy_cache::keys::KeySpace::new(redis.prefix()).expect("prefix is a namespace");
    Some(Arc::new(
        tenancy_cache::RedisSessionStore::new(pool).with_key_space(keys),
    ))
}

#[tokio::test]
async fn redis_rotation_and_reuse() {
    let Some(store) = redis_store().await else {
        return;
    };
    rotation_and_reuse(store, "acme").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_racing_refreshes() {
    let Some(store) = redis_store().await else {
        return;
    };
    racing_refreshes(store.clone(), "acme", None).await;
    // And in lockstep, so that the store's version check decides every round.
    let store = Arc::new(HookedStore::new(store, 2));
    racing_refreshes(store.clone(), "zz-lockstep", Some(&store)).await;
}

/// The rotated refresh state was stored but the store's reply was lost (a timeout): the
/// refresh finds its own write on reloading and answers with the new pair, so the client
/// never retries with the spent token and the session is not taken for stolen. A write that
/// did not happen passes its error through and leaves the presented token current.
#[tokio::test]
async fn a_stored_rotation_whose_reply_was_lost_keeps_the_session() {
    let clock = ManualClock::new();
    let store = Arc::new(HookedStore::new(Arc::new(MemorySessionStore::new()), 1));
    let f = fixture(store.clone(), &clock, "acme");
    let p1 = f.login("alice").await;

    store.lose_next_reply();
    let p2 = f
        .issuer
        .refresh(p1.refresh_token.expose())
        .await
        .expect("a stored rotation whose reply was lost was answered as a failure");
    assert_eq!(store.injected(), 1, "the fault was not injected");
    assert_eq!(p2.session, p1.session);
    assert_ne!(p2.refresh_token, p1.refresh_token);
    f.verifier.verify(&p2.access_token).await.unwrap();
    // The new refresh token is the session's current one.
    let p3 = f.issuer.refresh(p2.refresh_token.expose()).await.unwrap();
    f.verifier.verify(&p3.access_token).await.unwrap();

    // Nothing stored: the retryable error reaches the client, and its retry with the same
    // token succeeds.
    store.fail_next_write();
    let e = f
        .issuer
        .refresh(p3.refresh_token.expose())
        .await
        .unwrap_err();
    assert_eq!(store.injected(), 2, "the fault was not injected");
    assert!(e.is_retryable(), "{e}");
    let p4 = f.issuer.refresh(p3.refresh_token.expose()).await.unwrap();
    f.verifier.verify(&p4.access_token).await.unwrap();

    // Reuse detection still holds: the token spent through the lost reply ends the session.
    assert_eq!(
        f.refresh_err(p1.refresh_token.expose()).await,
        Some(R::Revoked)
    );
    assert_eq!(f.verify_err(&p4.access_token).await, Some(R::SessionEnded));
}
