use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::lock;
use crate::{
    CacheStats, Health, HealthCheck, ParseError, Result, SharedClock, SystemClock, TenantCache,
    TenantId, check_cache_entry, check_cache_key,
};

/// Default bound on stored entries.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
/// Default bound on the bytes of stored keys and values.
///
/// Why this default: a value may be up to [`MAX_CACHE_VALUE_BYTES`](crate::MAX_CACHE_VALUE_BYTES)
/// (64 MiB), so the entry bound alone would let a cache hold terabytes; 256 MiB holds
/// [`DEFAULT_MAX_ENTRIES`] values of 2 KiB each.
pub const DEFAULT_MAX_BYTES: usize = 256 << 20;

/// Entries compared (and, for a victim in another tenant, tenants compared) to choose one to
/// evict.
const EVICTION_SAMPLE: usize = 8;
const MIN_SWEEP_INTERVAL: usize = 64;

type Entries = HashMap<String, (Vec<u8>, u64)>;

/// One tenant's entries, and the bytes of their keys and values.
#[derive(Debug, Default)]
struct Trail {
    entries: Entries,
    bytes: usize,
}

/// What an entry counts against the byte bound.
fn entry_bytes(key: &str, value: &[u8]) -> usize {
    key.len() + value.len()
}

/// A cache's bounds: entries, and bytes of keys and values.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    entries: usize,
    bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    tenants: HashMap<TenantId, Trail>,
    entries: usize,
    bytes: usize,
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
        let (mut removed, mut freed) = (0, 0);
        self.tenants.retain(|_, t| {
            let before = t.entries.len();
            t.entries.retain(|k, (v, exp)| {
                let live = *exp > now;
                if !live {
                    t.bytes -= entry_bytes(k, v);
                    freed += entry_bytes(k, v);
                }
                live
            });
            removed += before - t.entries.len();
            !t.entries.is_empty()
        });
        self.entries -= removed;
        self.bytes -= freed;
        self.inserts_since_sweep = 0;
        self.entries_after_sweep = self.entries;
        self.sweeps += 1;
    }

    /// Which bound a new entry of `incoming` bytes would exceed: `Some(true)` the entry
    /// bound, `Some(false)` the byte bound, `None` neither.
    fn over(&self, bounds: Bounds, incoming: usize) -> Option<bool> {
        if self.entries >= bounds.entries {
            Some(true)
        } else if self.bytes.saturating_add(incoming) > bounds.bytes {
            Some(false)
        } else {
            None
        }
    }

    /// Makes room for one new entry of `writer`, of `incoming` bytes, under `bounds`.
    ///
    /// A sweep runs only when due: after as many inserts as the last sweep left entries (at
    /// least [`MIN_SWEEP_INTERVAL`]), or, at a bound, after half the entry bound's inserts; a
    /// cache full of live entries does not pay a full pass on every insert.
    ///
    /// Still full, a writer holding at least its fair share (the bound over the tenants with
    /// entries, the writer counted; in entries or in bytes, whichever bound is reached) pays:
    /// one of its own entries goes (of a sample, the one expiring first), so one tenant's
    /// writes do not push out another's entries. A writer below its share takes the room from
    /// the tenant holding most, so a tenant that filled the cache first cannot keep the others
    /// to what they had.
    fn make_room(&mut self, writer: &TenantId, bounds: Bounds, incoming: usize, now: u64) {
        self.inserts_since_sweep += 1;
        if self.inserts_since_sweep >= self.entries_after_sweep.max(MIN_SWEEP_INTERVAL)
            || (self.over(bounds, incoming).is_some()
                && self.inserts_since_sweep >= (bounds.entries / 2).max(1))
        {
            self.sweep(now);
        }
        while let Some(by_entries) = self.over(bounds, incoming) {
            let (max, held): (usize, fn(&Trail) -> usize) = if by_entries {
                (bounds.entries, |t| t.entries.len())
            } else {
                (bounds.bytes, |t| t.bytes)
            };
            let own = self.tenants.get(writer).map(held);
            let tenants = self.tenants.len() + usize::from(own.is_none());
            let own = own.unwrap_or(0) + if by_entries { 0 } else { incoming };
            let writer_pays =
                self.tenants.contains_key(writer) && own >= (max / tenants.max(1)).max(1);
            let victim_tenant = if writer_pays {
                writer.clone()
            } else {
                let Some(t) = self
                    .tenants
                    .iter()
                    .max_by_key(|(_, t)| held(t))
                    .map(|(t, _)| t.clone())
                else {
                    return;
                };
                t
            };
            let Some(t) = self.tenants.get_mut(&victim_tenant) else {
                return;
            };
            if let Some(k) = soonest_to_expire(&t.entries)
                && let Some((v, _)) = t.entries.remove(&k)
            {
                t.bytes -= entry_bytes(&k, &v);
                self.bytes -= entry_bytes(&k, &v);
                self.entries -= 1;
            }
            if t.entries.is_empty() {
                self.tenants.remove(&victim_tenant);
            }
        }
    }

    /// Removes `tenant`'s entry under `key`, if any, and returns it.
    fn remove(&mut self, tenant: &TenantId, key: &str) -> Option<(Vec<u8>, u64)> {
        let t = self.tenants.get_mut(tenant)?;
        let removed = t.entries.remove(key)?;
        t.bytes -= entry_bytes(key, &removed.0);
        self.bytes -= entry_bytes(key, &removed.0);
        self.entries -= 1;
        if t.entries.is_empty() {
            self.tenants.remove(tenant);
        }
        Some(removed)
    }
}

/// A tenant-namespaced cache in process memory, with TTLs, hit and miss counts, and bounds on
/// entries and on the bytes of their keys and values (expired entries are reclaimed by
/// amortised sweeps; past a bound, a new entry evicts one of its own tenant's when that tenant
/// holds its share, else one of the largest tenant's: a cache may forget, it may not grow
/// without limit).
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
    bounds: Bounds,
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
}

impl fmt::Debug for MemoryTenantCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTenantCache")
            .field("entries", &lock(&self.state).entries)
            .field("max_entries", &self.bounds.entries)
            .field("max_bytes", &self.bounds.bytes)
            .finish()
    }
}

impl Default for MemoryTenantCache {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryTenantCache {
    /// A cache on the system clock holding at most [`DEFAULT_MAX_ENTRIES`] entries and
    /// [`DEFAULT_MAX_BYTES`] bytes.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// A cache on `clock`.
    pub fn with_clock(clock: SharedClock) -> Self {
        Self {
            state: Arc::default(),
            clock,
            bounds: Bounds {
                entries: DEFAULT_MAX_ENTRIES,
                bytes: DEFAULT_MAX_BYTES,
            },
            hits: Arc::default(),
            misses: Arc::default(),
        }
    }

    /// The same cache with another bound on entries (at least 1).
    pub fn with_max_entries(mut self, max: usize) -> Self {
        self.bounds.entries = max.max(1);
        self
    }

    /// The same cache with another bound on the bytes of keys and values (at least 1); a
    /// value whose entry alone exceeds it is refused.
    pub fn with_max_bytes(mut self, max: usize) -> Self {
        self.bounds.bytes = max.max(1);
        self
    }

    /// Entries held, including expired ones not yet reclaimed.
    pub fn len(&self) -> usize {
        lock(&self.state).entries
    }

    /// Bytes of the keys and values held, including expired ones not yet reclaimed.
    pub fn bytes(&self) -> usize {
        lock(&self.state).bytes
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
            .and_then(|t| t.entries.get(key))
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
        let size = entry_bytes(key, value);
        if size > self.bounds.bytes {
            return Err(ParseError::new(
                "cache value",
                "must fit in the cache's byte bound with its key",
            )
            .into());
        }
        let now = self.clock.now_nanos();
        let expires = now.saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX));
        let mut st = lock(&self.state);
        // An overwrite replaces the entry: room is made only for what it adds in bytes.
        if st.remove(tenant, key).is_none() || st.over(self.bounds, size).is_some() {
            st.make_room(tenant, self.bounds, size, now);
        }
        let t = st.tenants.entry(tenant.clone()).or_default();
        t.entries.insert(key.to_owned(), (value.to_vec(), expires));
        t.bytes += size;
        st.entries += 1;
        st.bytes += size;
        Ok(())
    }

    async fn delete(&self, tenant: &TenantId, key: &str) -> Result<bool> {
        check_cache_key(key)?;
        let now = self.clock.now_nanos();
        let removed = lock(&self.state).remove(tenant, key);
        Ok(removed.is_some_and(|(_, exp)| exp > now))
    }

    async fn invalidate_tenant(&self, tenant: &TenantId) -> Result<()> {
        let mut st = lock(&self.state);
        if let Some(t) = st.tenants.remove(tenant) {
            st.entries -= t.entries.len();
            st.bytes -= t.bytes;
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
            .with_figure("bytes", self.bytes() as u64)
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

    /// Large values are held to the byte bound: a tenant writing them evicts its own, not
    /// another tenant's small entries; an overwrite that grows makes room; a value that could
    /// never fit is refused, and the count of bytes follows every change.
    #[tokio::test]
    async fn large_values_are_held_to_the_byte_bound_and_evict_their_writers_own() {
        let cache = MemoryTenantCache::with_clock(Arc::new(ManualClock::new()))
            .with_max_entries(1000)
            .with_max_bytes(10_000);
        let (a, b) = (tenant("acme"), tenant("globex"));
        for i in 0..10 {
            cache
                .set(&b, &format!("b{i}"), b"small", TTL)
                .await
                .unwrap();
        }
        // Ten small entries of 7 bytes each ("b0" and "small").
        assert_eq!(cache.bytes(), 70);
        let big = vec![7_u8; 3000];
        for i in 0..50 {
            cache.set(&a, &format!("a{i}"), &big, TTL).await.unwrap();
            assert!(cache.bytes() <= 10_000, "{} bytes held", cache.bytes());
        }
        for i in 0..10 {
            assert!(
                cache.get(&b, &format!("b{i}")).await.unwrap().is_some(),
                "B's entry b{i} was evicted by A's large writes"
            );
        }
        assert_eq!(cache.get(&a, "a49").await.unwrap(), Some(big.clone()));
        // Three of A's 3002- or 3003-byte entries fit beside B's 70 bytes.
        assert_eq!(cache.len(), 13);
        assert_eq!(cache.bytes(), recount(&cache));
        // Growing an entry makes room for what it adds.
        cache.set(&b, "b0", &[1_u8; 2000], TTL).await.unwrap();
        assert!(cache.bytes() <= 10_000, "{} bytes held", cache.bytes());
        assert_eq!(cache.get(&b, "b0").await.unwrap(), Some(vec![1_u8; 2000]));
        // Deleting and invalidating give the bytes back.
        let before = cache.bytes();
        assert!(cache.delete(&b, "b1").await.unwrap());
        assert_eq!(cache.bytes(), before - 7);
        cache.invalidate_tenant(&a).await.unwrap();
        assert_eq!(cache.bytes(), 2002 + 8 * 7);
        assert_eq!(cache.bytes(), recount(&cache));
        let refused = cache.set(&a, "huge", &[0_u8; 10_000], TTL).await;
        assert!(refused.is_err(), "a value larger than the cache is stored");
        assert_eq!(cache.get(&a, "huge").await.unwrap(), None);
    }

    /// Expired entries give back their bytes when a sweep reclaims them.
    #[tokio::test]
    async fn swept_entries_give_back_their_bytes() {
        let clock = ManualClock::new();
        let cache = MemoryTenantCache::with_clock(Arc::new(clock.clone())).with_max_bytes(1000);
        let a = tenant("acme");
        for i in 0..4 {
            cache
                .set(&a, &format!("s{i}"), &[0_u8; 200], Duration::from_secs(1))
                .await
                .unwrap();
        }
        clock.advance(Duration::from_secs(2));
        // 4 * 202 bytes expired; a 400-byte entry needs room: the expired go, not it.
        cache.set(&a, "live", &[1_u8; 400], TTL).await.unwrap();
        assert_eq!(cache.get(&a, "live").await.unwrap(), Some(vec![1_u8; 400]));
        assert!(cache.bytes() <= 1000);
        for i in 0..200 {
            cache.set(&a, &format!("n{i}"), b"v", TTL).await.unwrap();
        }
        assert_eq!(cache.bytes(), recount(&cache));
        assert!(cache.bytes() <= 1000);
    }

    /// The bytes of every entry held, counted afresh.
    fn recount(cache: &MemoryTenantCache) -> usize {
        let st = lock(&cache.state);
        let per_tenant: usize = st.tenants.values().map(|t| t.bytes).sum();
        let entries: usize = st
            .tenants
            .values()
            .flat_map(|t| t.entries.iter())
            .map(|(k, (v, _))| entry_bytes(k, v))
            .sum();
        assert_eq!(per_tenant, entries, "tenants' counts drifted");
        entries
    }
}
