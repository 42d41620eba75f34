//! [`MemoryDenylist`]: revoked token ids in process memory.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::lock;
use crate::{Denylist, Result, SharedClock, TenantId, check_jti, system_clock};

/// A [`Denylist`] in process memory: a revocation holds in this process only. Entries are
/// dropped after their `expires_at` (swept during `revoke`, amortised); clones share the same
/// list.
///
/// ```
/// use tenancy_core::{Denylist, TenantId, memory::MemoryDenylist};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tenancy_core::Error> {
/// let list = MemoryDenylist::new();
/// let acme = TenantId::parse("acme")?;
/// assert!(list.is_empty());
/// list.revoke(&acme, "t1", 4_102_444_800).await?;
/// assert!(list.is_revoked(&acme, "t1").await?);
/// assert_eq!(list.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryDenylist {
    inner: Arc<Mutex<State>>,
    /// `entries.len()`, readable without the lock: the usual list is empty, and every
    /// verification asks it.
    held: Arc<AtomicUsize>,
    clock: SharedClock,
}

#[derive(Default)]
struct State {
    entries: HashMap<(TenantId, String), i64>,
    inserts_since_sweep: usize,
}

impl fmt::Debug for MemoryDenylist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryDenylist")
            .field("entries", &self.len())
            .finish()
    }
}

impl Default for MemoryDenylist {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryDenylist {
    /// An empty list on the system clock.
    pub fn new() -> Self {
        Self::with_clock(system_clock())
    }

    /// An empty list on `clock`.
    pub fn with_clock(clock: SharedClock) -> Self {
        Self {
            inner: Arc::new(Mutex::new(State::default())),
            held: Arc::new(AtomicUsize::new(0)),
            clock,
        }
    }

    /// Entries held now (including any expired ones not yet swept).
    pub fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now(&self) -> i64 {
        self.clock.now().unix_timestamp()
    }
}

#[async_trait]
impl Denylist for MemoryDenylist {
    async fn is_revoked(&self, tenant: &TenantId, jti: &str) -> Result<bool> {
        if self.held.load(Ordering::Acquire) == 0 {
            return Ok(false);
        }
        let now = self.now();
        let state = lock(&self.inner);
        // Tuple keys cannot be borrowed as (&TenantId, &str): build the owned key.
        Ok(state
            .entries
            .get(&(tenant.clone(), jti.to_owned()))
            .is_some_and(|exp| *exp > now))
    }

    async fn revoke(&self, tenant: &TenantId, jti: &str, expires_at: i64) -> Result<()> {
        check_jti(jti)?;
        let now = self.now();
        let mut state = lock(&self.inner);
        state.inserts_since_sweep += 1;
        if state.inserts_since_sweep >= state.entries.len().max(64) {
            state.inserts_since_sweep = 0;
            state.entries.retain(|_, exp| *exp > now);
        }
        if expires_at > now {
            let e = state
                .entries
                .entry((tenant.clone(), jti.to_owned()))
                .or_insert(expires_at);
            *e = (*e).max(expires_at);
        }
        self.held.store(state.entries.len(), Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{Clock as _, ManualClock};

    use super::*;

    #[tokio::test]
    async fn expired_entries_are_swept() {
        let clock = ManualClock::new();
        let list = MemoryDenylist::with_clock(Arc::new(clock.clone()));
        let t = TenantId::parse("acme").unwrap();
        let now = clock.now().unix_timestamp();
        list.revoke(&t, "a", now + 60).await.unwrap();
        clock.advance(Duration::from_secs(61));
        for i in 0..200 {
            list.revoke(&t, &format!("x{i}"), now + 62).await.unwrap();
        }
        assert!(list.len() <= 200, "{}", list.len());
        assert!(
            lock(&list.inner).entries.keys().all(|(_, j)| j != "a"),
            "expired entry kept"
        );
    }
}
