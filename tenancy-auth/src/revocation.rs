//! Revocation: a `jti` denylist ([`Denylist`], in memory: [`MemoryDenylist`]).
//!
//! A verifier given a denylist refuses a token whose `jti` is on it with
//! [`TokenRejection::Revoked`](tenancy_core::TokenRejection::Revoked). An entry must be kept
//! until the revoked token's `exp` plus the verifier's clock leeway, the last moment a verifier
//! still accepts the token; after that it is refused as expired anyway and the entry may be
//! forgotten. (An entry dropped at `exp` would let the token back in for the leeway after it.)
//! [`JwtVerifier::revoke`](crate::JwtVerifier::revoke) passes exactly that moment to
//! [`Denylist::revoke`], and a backend keeps each entry until the `expires_at` it is given.
//! Session liveness (the other half of revocation) goes through the
//! [`SessionStore`](tenancy_core::SessionStore) given to
//! [`JwtVerifierBuilder::sessions`](crate::JwtVerifierBuilder::sessions).
//!
//! ```
//! use tenancy_auth::{Denylist, MemoryDenylist};
//! use tenancy_core::TenantId;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tenancy_core::Error> {
//! let denylist = MemoryDenylist::new();
//! let acme = TenantId::parse("acme")?;
//! denylist.revoke(&acme, "token-1", 4_102_444_800).await?;
//! assert!(denylist.is_revoked(&acme, "token-1").await?);
//! assert!(!denylist.is_revoked(&TenantId::parse("globex")?, "token-1").await?);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tenancy_core::{Result, SharedClock, TenantId, system_clock};

/// Revoked token ids, per tenant.
#[async_trait]
pub trait Denylist: Send + Sync + fmt::Debug + 'static {
    /// Whether `jti` of `tenant` has been revoked.
    async fn is_revoked(&self, tenant: &TenantId, jti: &str) -> Result<bool>;

    /// Revokes `jti` of `tenant` until `expires_at` (seconds since the Unix epoch), after
    /// which the entry may be forgotten.
    ///
    /// `expires_at` must be the last moment a verifier can still accept the token: its `exp`
    /// plus the verifier's clock leeway, not `exp` alone.
    /// [`JwtVerifier::revoke`](crate::JwtVerifier::revoke) passes exactly that.
    async fn revoke(&self, tenant: &TenantId, jti: &str, expires_at: i64) -> Result<()>;
}

/// A [`Denylist`] in process memory. Entries are dropped after their `expires_at`; clones
/// share the same list.
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
        self.lock().entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        let state = self.lock();
        // Tuple keys cannot be borrowed as (&TenantId, &str): build the owned key.
        Ok(state
            .entries
            .get(&(tenant.clone(), jti.to_owned()))
            .is_some_and(|exp| *exp > now))
    }

    async fn revoke(&self, tenant: &TenantId, jti: &str, expires_at: i64) -> Result<()> {
        let now = self.now();
        let mut state = self.lock();
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

    use tenancy_core::{Clock as _, ManualClock};

    use super::*;

    #[tokio::test]
    async fn entries_end_with_the_token() {
        let clock = ManualClock::new();
        let list = MemoryDenylist::with_clock(Arc::new(clock.clone()));
        let t = TenantId::parse("acme").unwrap();
        let now = clock.now().unix_timestamp();
        list.revoke(&t, "a", now + 60).await.unwrap();
        list.revoke(&t, "old", now - 1).await.unwrap();
        assert!(list.is_revoked(&t, "a").await.unwrap());
        assert!(!list.is_revoked(&t, "old").await.unwrap());
        clock.advance(Duration::from_secs(61));
        assert!(!list.is_revoked(&t, "a").await.unwrap());
        for i in 0..200 {
            list.revoke(&t, &format!("x{i}"), now + 62).await.unwrap();
        }
        assert!(list.len() <= 201);
        assert!(
            list.lock().entries.keys().all(|(_, j)| j != "a"),
            "expired entry kept"
        );
    }
}
