use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use time::OffsetDateTime;

use super::lock;
use crate::{
    Error, Health, HealthCheck, NewSession, Result, Session, SessionAdmin, SessionId, SessionStore,
    SharedClock, SystemClock, TenantId, UserId,
};

type Key = (TenantId, SessionId);

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<Key, Session>,
    by_user: HashMap<(TenantId, UserId), BTreeSet<SessionId>>,
    writes_since_sweep: usize,
    live_after_sweep: usize,
}

impl State {
    fn remove(&mut self, key: &Key) -> Option<Session> {
        let s = self.sessions.remove(key)?;
        let idx = (s.tenant.clone(), s.user.clone());
        if let Some(set) = self.by_user.get_mut(&idx) {
            set.remove(&s.id);
            if set.is_empty() {
                self.by_user.remove(&idx);
            }
        }
        Some(s)
    }

    fn insert(&mut self, s: Session) {
        self.by_user
            .entry((s.tenant.clone(), s.user.clone()))
            .or_default()
            .insert(s.id);
        self.sessions.insert((s.tenant.clone(), s.id), s);
    }

    /// The live session under `key`; an ended one is removed on the way.
    fn live(&mut self, key: &Key, now: OffsetDateTime) -> Option<&mut Session> {
        if self.sessions.get(key).is_some_and(|s| !s.is_live(now)) {
            self.remove(key);
        }
        self.sessions.get_mut(key)
    }

    /// Amortised removal of ended sessions: a full pass after as many writes as there were
    /// live sessions after the previous pass.
    fn maybe_sweep(&mut self, now: OffsetDateTime) {
        self.writes_since_sweep += 1;
        if self.writes_since_sweep < self.live_after_sweep.max(64) {
            return;
        }
        let dead: Vec<Key> = self
            .sessions
            .iter()
            .filter(|(_, s)| !s.is_live(now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &dead {
            self.remove(k);
        }
        self.writes_since_sweep = 0;
        self.live_after_sweep = self.sessions.len();
    }
}

/// Sessions in process memory, with idle and absolute expiry, a per-user index and optimistic
/// versioning. Ended sessions are reclaimed during ordinary calls.
///
/// ```
/// use tenancy_core::{memory::MemorySessionStore, NewSession, SessionAdmin, SessionStore, TenantId, UserId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tenancy_core::Error> {
/// let store = MemorySessionStore::new();
/// let (acme, alice) = (TenantId::parse("acme")?, UserId::parse("alice")?);
/// store.create(NewSession::new(acme.clone(), alice.clone())).await?;
/// store.create(NewSession::new(acme.clone(), alice.clone())).await?;
/// assert_eq!(store.list_user(&acme, &alice).await?.len(), 2);
/// assert_eq!(store.revoke_user(&acme, &alice).await?, 2);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemorySessionStore {
    state: Arc<Mutex<State>>,
    clock: SharedClock,
}

impl fmt::Debug for MemorySessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySessionStore")
            .field("sessions", &lock(&self.state).sessions.len())
            .finish()
    }
}

impl Default for MemorySessionStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySessionStore {
    /// A store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// A store on `clock`.
    pub fn with_clock(clock: SharedClock) -> Self {
        Self {
            state: Arc::default(),
            clock,
        }
    }

    /// Sessions held, including ended ones not yet reclaimed.
    pub fn len(&self) -> usize {
        lock(&self.state).sessions.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl SessionStore for MemorySessionStore {
    async fn create(&self, new: NewSession) -> Result<Session> {
        new.check_bounds()?;
        let now = self.clock.now();
        let session = new.into_session(now);
        let mut st = lock(&self.state);
        st.maybe_sweep(now);
        st.insert(session.clone());
        Ok(session)
    }

    async fn load(&self, tenant: &TenantId, id: &SessionId) -> Result<Option<Session>> {
        let now = self.clock.now();
        Ok(lock(&self.state).live(&(tenant.clone(), *id), now).cloned())
    }

    async fn touch(&self, tenant: &TenantId, id: &SessionId) -> Result<Option<Session>> {
        let now = self.clock.now();
        let mut st = lock(&self.state);
        Ok(st.live(&(tenant.clone(), *id), now).map(|s| {
            s.last_seen_at = s.last_seen_at.max(now);
            s.clone()
        }))
    }

    async fn save(&self, session: &Session) -> Result<Session> {
        session.check_bounds()?;
        let now = self.clock.now();
        let mut st = lock(&self.state);
        st.maybe_sweep(now);
        let stored = st
            .live(&(session.tenant.clone(), session.id), now)
            .ok_or(Error::NotFound)?;
        if stored.version != session.version {
            return Err(Error::Conflict(
                "session was changed by another writer".into(),
            ));
        }
        stored.data = session.data.clone();
        stored.idle_timeout_secs = session.idle_timeout_secs;
        stored.last_seen_at = stored.last_seen_at.max(now);
        stored.version += 1;
        Ok(stored.clone())
    }

    async fn delete(&self, tenant: &TenantId, id: &SessionId) -> Result<bool> {
        let now = self.clock.now();
        let mut st = lock(&self.state);
        let key = (tenant.clone(), *id);
        let live = st.live(&key, now).is_some();
        st.remove(&key);
        Ok(live)
    }

    async fn rotate(&self, tenant: &TenantId, id: &SessionId) -> Result<Session> {
        let now = self.clock.now();
        let mut st = lock(&self.state);
        let key = (tenant.clone(), *id);
        if st.live(&key, now).is_none() {
            return Err(Error::NotFound);
        }
        let mut s = st.remove(&key).ok_or(Error::NotFound)?;
        s.id = SessionId::generate();
        s.version += 1;
        s.last_seen_at = s.last_seen_at.max(now);
        st.insert(s.clone());
        Ok(s)
    }
}

#[async_trait]
impl SessionAdmin for MemorySessionStore {
    async fn list_user(&self, tenant: &TenantId, user: &UserId) -> Result<Vec<Session>> {
        let now = self.clock.now();
        let st = lock(&self.state);
        let mut out: Vec<Session> = st
            .by_user
            .get(&(tenant.clone(), user.clone()))
            .into_iter()
            .flatten()
            .filter_map(|id| st.sessions.get(&(tenant.clone(), *id)))
            .filter(|s| s.is_live(now))
            .cloned()
            .collect();
        out.sort_by_key(|s| s.created_at);
        Ok(out)
    }

    async fn revoke_user(&self, tenant: &TenantId, user: &UserId) -> Result<u64> {
        let now = self.clock.now();
        let mut st = lock(&self.state);
        let ids: Vec<SessionId> = st
            .by_user
            .get(&(tenant.clone(), user.clone()))
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default();
        let mut live = 0;
        for id in ids {
            if let Some(s) = st.remove(&(tenant.clone(), id)) {
                live += u64::from(s.is_live(now));
            }
        }
        Ok(live)
    }
}

#[async_trait]
impl HealthCheck for MemorySessionStore {
    fn component(&self) -> &str {
        "sessions"
    }

    async fn check(&self) -> Health {
        Health::up().with_figure("sessions", self.len() as u64)
    }
}
