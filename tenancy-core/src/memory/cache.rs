use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::lock;
use crate::{
    CacheStats, Error, Health, HealthCheck, ParseError, Result, SharedClock, SystemClock,
    TenantCache, TenantId, check_cache_key,
};

/// Default bound on stored entries.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Default)]
struct State {
    tenants: HashMap<TenantId, HashMap<String, (Vec<u8>, u64)>>,
    entries: usize,
    writes_since_sweep: usize,
    entries_after_sweep: usize,
}

impl State {
    fn sweep(&mut self, now: u64) {
        let mut removed = 0;
        self.tenants.retain(|_, m| {
            let before = m.len();
            m.retain(|_, (_, exp)| *exp > now);
            removed += before - m.len();
            !m.is_empty()
        });
        self.entries -= removed;
        self.writes_since_sweep = 0;
        self.entries_after_sweep = self.entries;
    }
}

/// A tenant-namespaced cache in process memory, with TTLs, hit and miss counts, and a bound
/// on entries (expired entries are reclaimed first; past the bound, arbitrary entries are
/// evicted: a cache may forget, it may not grow without limit).
///
/// ```
/// use std::time::Duration;
/// use tenancy_core::{memory::MemoryTenantCache, TenantCache, TenantId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tenancy_core::Error> {
/// let cache = MemoryTenantCache::new();
/// let (acme, globex) = (TenantId::parse("acme")?, TenantId::parse("globex")?);
/// cache.set(&acme, "plan", b"gold", Duration::from_secs(60)).await?;
/// assert_eq!(cache.get(&acme, "plan").await?, Some(b"gold".to_vec()));
/// assert_eq!(cache.get(&globex, "plan").await?, None);
/// assert_eq!((cache.stats().hits, cache.stats().misses), (1, 1));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryTenantCache {
    state: Arc<Mutex<State>>,
    clock: SharedClock,
    max_entries: usize,
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
}

impl fmt::Debug for MemoryTenantCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTenantCache")
            .field("entries", &lock(&self.state).entries)
            .field("max_entries", &self.max_entries)
            .finish()
    }
}

impl Default for MemoryTenantCache {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryTenantCache {
    /// A cache on the system clock holding at most [`DEFAULT_MAX_ENTRIES`] entries.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// A cache on `clock`.
    pub fn with_clock(clock: SharedClock) -> Self {
        Self {
            state: Arc::default(),
            clock,
            max_entries: DEFAULT_MAX_ENTRIES,
            hits: Arc::default(),
            misses: Arc::default(),
        }
    }

    /// The same cache with another bound on entries (at least 1).
    pub fn with_max_entries(mut self, max: usize) -> Self {
        self.max_entries = max.max(1);
        self
    }

    /// Entries held, including expired ones not yet reclaimed.
    pub fn len(&self) -> usize {
        lock(&self.state).entries
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn ttl_nanos(ttl: Duration) -> Result<u64> {
    if ttl.is_zero() {
        return Err(ParseError::new("cache ttl", "must be positive").into());
    }
    Ok(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX))
}

#[async_trait]
impl TenantCache for MemoryTenantCache {
    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<Vec<u8>>> {
        check_cache_key(key)?;
        let now = self.clock.now_nanos();
        let found = lock(&self.state)
            .tenants
            .get(tenant)
            .and_then(|m| m.get(key))
            .filter(|(_, exp)| *exp > now)
            .map(|(v, _)| v.clone());
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(found)
    }

    async fn set(&self, tenant: &TenantId, key: &str, value: &[u8], ttl: Duration) -> Result<()> {
        check_cache_key(key)?;
        let expires = self.clock.now_nanos().saturating_add(ttl_nanos(ttl)?);
        let now = self.clock.now_nanos();
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        st.writes_since_sweep += 1;
        if st.writes_since_sweep >= st.entries_after_sweep.max(64) || st.entries >= self.max_entries
        {
            st.sweep(now);
        }
        while st.entries >= self.max_entries {
            let Some(victim_tenant) = st.tenants.keys().next().cloned() else {
                return Err(Error::Conflict("cache bound reached".into()));
            };
            if let Some(m) = st.tenants.get_mut(&victim_tenant) {
                if let Some(k) = m.keys().next().cloned() {
                    m.remove(&k);
                    st.entries -= 1;
                }
                if m.is_empty() {
                    st.tenants.remove(&victim_tenant);
                }
            }
        }
        let previous = st
            .tenants
            .entry(tenant.clone())
            .or_default()
            .insert(key.to_owned(), (value.to_vec(), expires));
        if previous.is_none() {
            st.entries += 1;
        }
        Ok(())
    }

    async fn delete(&self, tenant: &TenantId, key: &str) -> Result<bool> {
        check_cache_key(key)?;
        let now = self.clock.now_nanos();
        let mut st = lock(&self.state);
        let removed = st.tenants.get_mut(tenant).and_then(|m| m.remove(key));
        if removed.is_some() {
            st.entries -= 1;
        }
        Ok(removed.is_some_and(|(_, exp)| exp > now))
    }

    async fn invalidate_tenant(&self, tenant: &TenantId) -> Result<()> {
        let mut st = lock(&self.state);
        if let Some(m) = st.tenants.remove(tenant) {
            st.entries -= m.len();
        }
        Ok(())
    }

    fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl HealthCheck for MemoryTenantCache {
    fn component(&self) -> &str {
        "cache"
    }

    async fn check(&self) -> Health {
        let s = self.stats();
        Health::up()
            .with_figure("entries", self.len() as u64)
            .with_figure("hits", s.hits)
            .with_figure("misses", s.misses)
    }
}
