use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::lock;
use crate::{
    CacheStats, Health, HealthCheck, Result, SharedClock, SystemClock, TenantCache, TenantId,
    check_cache_entry, check_cache_key,
};

/// Default bound on stored entries.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

/// Entries compared (and, for a victim in another tenant, tenants compared) to choose one to
/// evict.
const EVICTION_SAMPLE: usize = 8;
const MIN_SWEEP_INTERVAL: usize = 64;

type Entries = HashMap<String, (Vec<u8>, u64)>;

#[derive(Debug, Default)]
struct State {
    tenants: HashMap<TenantId, Entries>,
    entries: usize,
    inserts_since_sweep: usize,
    entries_after_sweep: usize,
    /// Sweeps run so far (for tests of the amortisation).
    sweeps: u64,
}

/// Of a sample of `m`'s entries, the key that expires first (an expired one first).
fn soonest_to_expire(m: &Entries) -> Option<String> {
    m.iter()
        .take(EVICTION_SAMPLE)
        .min_by_key(|(_, (_, exp))| *exp)
        .map(|(k, _)| k.clone())
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
        self.inserts_since_sweep = 0;
        self.entries_after_sweep = self.entries;
        self.sweeps += 1;
    }

    /// Makes room for one new entry of `writer` under `max`.
    ///
    /// A sweep runs only when due: after as many inserts as the last sweep left entries (at
    /// least [`MIN_SWEEP_INTERVAL`]), or, at the bound, after half the bound's inserts; a cache
    /// full of live entries does not pay a full pass on every insert.
    ///
    /// Still full, a writer holding at least its fair share (the bound over the tenants with
    /// entries, the writer counted) pays: one of its own entries goes (of a sample, the one
    /// expiring first), so one tenant's writes do not push out another's entries. A writer
    /// below its share takes the room from the tenant holding most entries, so a tenant that
    /// filled the cache first cannot keep the others to what they had.
    fn make_room(&mut self, writer: &TenantId, max: usize, now: u64) {
        self.inserts_since_sweep += 1;
        let full = self.entries >= max;
        if self.inserts_since_sweep >= self.entries_after_sweep.max(MIN_SWEEP_INTERVAL)
            || (full && self.inserts_since_sweep >= (max / 2).max(1))
        {
            self.sweep(now);
        }
        while self.entries >= max {
            let own = self.tenants.get(writer).map_or(0, HashMap::len);
            let tenants = self.tenants.len() + usize::from(own == 0);
            let victim_tenant = if own > 0 && own >= (max / tenants.max(1)).max(1) {
                writer.clone()
            } else {
                let Some(t) = self
                    .tenants
                    .iter()
                    .max_by_key(|(_, m)| m.len())
                    .map(|(t, _)| t.clone())
                else {
                    return;
                };
                t
            };
            let Some(m) = self.tenants.get_mut(&victim_tenant) else {
                return;
            };
            if let Some(k) = soonest_to_expire(m) {
                m.remove(&k);
                self.entries -= 1;
            }
            if m.is_empty() {
                self.tenants.remove(&victim_tenant);
            }
        }
    }
}

/// A tenant-namespaced cache in process memory, with TTLs, hit and miss counts, and a bound
/// on entries (expired entries are reclaimed by amortised sweeps; past the bound, a new entry
/// evicts one of its own tenant's when that tenant holds its share, else one of the largest
/// tenant's: a cache may forget, it may not grow without limit).
/// Values and TTLs are bounded as in every backend ([`check_cache_entry`]).
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
        check_cache_entry(value, ttl)?;
        let now = self.clock.now_nanos();
        let expires = now.saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX));
        let mut st = lock(&self.state);
        // Overwriting an entry adds none: nothing to make room for.
        if let Some(slot) = st.tenants.get_mut(tenant).and_then(|m| m.get_mut(key)) {
            *slot = (value.to_vec(), expires);
            return Ok(());
        }
        st.make_room(tenant, self.max_entries, now);
        st.tenants
            .entry(tenant.clone())
            .or_default()
            .insert(key.to_owned(), (value.to_vec(), expires));
        st.entries += 1;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    const TTL: Duration = Duration::from_secs(3600);

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name).unwrap()
    }

    fn sweeps(cache: &MemoryTenantCache) -> u64 {
        lock(&cache.state).sweeps
    }

    #[tokio::test]
    async fn one_tenants_writes_evict_its_own_entries_not_anothers() {
        let cache =
            MemoryTenantCache::with_clock(Arc::new(ManualClock::new())).with_max_entries(20);
        let (a, b) = (tenant("acme"), tenant("globex"));
        for i in 0..10 {
            cache.set(&b, &format!("b{i}"), b"v", TTL).await.unwrap();
        }
        for i in 0..10 {
            cache.set(&a, &format!("a{i}"), b"v", TTL).await.unwrap();
        }
        // The cache is full; A keeps writing new keys.
        for i in 10..200 {
            cache.set(&a, &format!("a{i}"), b"v", TTL).await.unwrap();
            assert!(cache.len() <= 20);
        }
        for i in 0..10 {
            assert_eq!(
                cache.get(&b, &format!("b{i}")).await.unwrap().as_deref(),
                Some(&b"v"[..]),
                "B's entry b{i} was evicted by A's writes"
            );
        }
        assert_eq!(
            cache.get(&a, "a199").await.unwrap().as_deref(),
            Some(&b"v"[..]),
            "the entry just written"
        );
    }

    /// A tenant that filled the cache first does not keep the others to what they had: a
    /// writer below its share takes room from the largest tenant.
    #[tokio::test]
    async fn a_tenant_below_its_share_takes_room_from_the_largest() {
        let cache =
            MemoryTenantCache::with_clock(Arc::new(ManualClock::new())).with_max_entries(10);
        let (a, b) = (tenant("acme"), tenant("globex"));
        for i in 0..10 {
            cache.set(&a, &format!("a{i}"), b"v", TTL).await.unwrap();
        }
        for i in 0..4 {
            cache.set(&b, &format!("b{i}"), b"v", TTL).await.unwrap();
        }
        assert_eq!(cache.len(), 10);
        for i in 0..4 {
            assert!(
                cache.get(&b, &format!("b{i}")).await.unwrap().is_some(),
                "B's entry b{i} was evicted by B's own next write"
            );
        }
    }

    #[tokio::test]
    async fn overwriting_a_key_in_a_full_cache_evicts_nothing() {
        let cache = MemoryTenantCache::with_clock(Arc::new(ManualClock::new())).with_max_entries(8);
        let a = tenant("acme");
        for i in 0..8 {
            cache.set(&a, &format!("k{i}"), b"v", TTL).await.unwrap();
        }
        for round in 0..20 {
            cache
                .set(&a, "k3", format!("{round}").as_bytes(), TTL)
                .await
                .unwrap();
        }
        for i in 0..8 {
            assert!(
                cache.get(&a, &format!("k{i}")).await.unwrap().is_some(),
                "k{i} was evicted by an overwrite"
            );
        }
        assert_eq!(
            cache.get(&a, "k3").await.unwrap().as_deref(),
            Some(&b"19"[..])
        );
        assert_eq!(cache.len(), 8);
    }

    #[tokio::test]
    async fn inserts_at_the_bound_do_not_sweep_every_time() {
        let cache =
            MemoryTenantCache::with_clock(Arc::new(ManualClock::new())).with_max_entries(16);
        let a = tenant("acme");
        for i in 0..16 {
            cache.set(&a, &format!("fill{i}"), b"v", TTL).await.unwrap();
        }
        let before = sweeps(&cache);
        for i in 0..400 {
            cache.set(&a, &format!("new{i}"), b"v", TTL).await.unwrap();
        }
        let n = sweeps(&cache) - before;
        // At most one sweep per half-bound (8) of inserts, not one per insert (400).
        assert!(
            n <= 400 / 8 + 1,
            "{n} sweeps for 400 inserts into a full cache"
        );
        assert!(n >= 1, "a sweep falls due at the bound");
        assert_eq!(cache.len(), 16);
    }

    #[tokio::test]
    async fn expired_entries_are_evicted_before_live_ones() {
        let clock = ManualClock::new();
        let cache = MemoryTenantCache::with_clock(Arc::new(clock.clone())).with_max_entries(4);
        let a = tenant("acme");
        cache.set(&a, "long", b"v", TTL).await.unwrap();
        for i in 0..3 {
            cache
                .set(&a, &format!("short{i}"), b"v", Duration::from_secs(1))
                .await
                .unwrap();
        }
        clock.advance(Duration::from_secs(2));
        for i in 0..3 {
            cache.set(&a, &format!("new{i}"), b"v", TTL).await.unwrap();
        }
        assert!(
            cache.get(&a, "long").await.unwrap().is_some(),
            "a live entry went first"
        );
    }
}
