use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use async_trait::async_trait;
use foldhash::quality::RandomState;

use super::lock;
use crate::{
    Health, HealthCheck, LimitScope, LimitState, QuotaAdmin, RateLimitDecision, RateLimitRequest,
    RateLimiter, Result, SharedClock, SystemClock, TenantId, UniformHasher, gcra,
};

const SHARDS: usize = 64;
/// Default bound on stored keys (one per tenant or user and period).
pub const DEFAULT_MAX_KEYS: usize = 1 << 20;
const MIN_SWEEP_INTERVAL: usize = 64;
/// Keys compared to choose one to evict from a full shard.
const EVICTION_SAMPLE: usize = 8;
/// Limits decided with stack storage; a request with more uses the heap.
const INLINE_LIMITS: usize = 4;

/// A 128-bit key: the tenant's tag, a 64-bit keyed hash of the tenant id (so a tenant's keys
/// can be found for [`QuotaAdmin::reset`]), and a second 64-bit value that tells the tenant's
/// keys apart: another keyed hash of the tenant, or of (tenant, user), mixed with the scope and
/// the period. Two `u64`s rather than a `u128`, whose 16-byte alignment would pad every map
/// slot from 24 to 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Key {
    tag: u64,
    id: u64,
}

impl std::hash::Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already uniformly random, and distinct among a tenant's keys (which share the tag).
        state.write_u64(self.id);
    }
}

/// A key's theoretical arrival time (nanoseconds since the epoch).
#[derive(Debug, Clone, Copy)]
struct Entry {
    tat: u64,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Key, Entry, BuildHasherDefault<UniformHasher>>,
    inserts_since_sweep: usize,
    /// Keys left by the last sweep: the next sweep waits for as many inserts, which keeps the
    /// sweeping cost amortised O(1) per insert.
    keys_after_sweep: usize,
    /// Sweeps run so far (for tests of the amortisation).
    sweeps: u64,
}

impl Shard {
    /// Removes every rested key but those in `keep` (and takes them off `count`, the
    /// limiter's). A rested key decides exactly like a missing one, so this changes no
    /// decision.
    fn sweep(&mut self, now: u64, count: &AtomicUsize, keep: &[Key]) {
        let before = self.map.len();
        self.map.retain(|k, e| e.tat > now || keep.contains(k));
        count.fetch_sub(before - self.map.len(), Ordering::Relaxed);
        self.inserts_since_sweep = 0;
        self.keys_after_sweep = self.map.len();
        self.sweeps += 1;
    }

    /// Evicts one key not in `protect`: of a sample of [`EVICTION_SAMPLE`] keys, the one
    /// closest to fully restored (the smallest theoretical arrival time; a rested key first).
    /// Evicting a key resets its limit, so the key that loses least is chosen, and a key in
    /// active use is never chosen over an idler one in the sample. The sample is the first
    /// keys in the table's order, which is the order of their hashes under the limiter's
    /// secret seeds: no caller can place a key there. `false` when there is none to evict.
    fn evict_one(&mut self, protect: &[Key], count: &AtomicUsize) -> bool {
        let victim = self
            .map
            .iter()
            .filter(|(k, _)| !protect.contains(k))
            .take(EVICTION_SAMPLE)
            .min_by_key(|(_, e)| e.tat)
            .map(|(k, _)| *k);
        let Some(victim) = victim else {
            return false;
        };
        self.map.remove(&victim);
        count.fetch_sub(1, Ordering::Relaxed);
        true
    }
}

/// A shard's lock if it is free now (a poisoned lock holds consistent data, as [`lock`]).
fn try_lock(m: &Mutex<Shard>) -> Option<MutexGuard<'_, Shard>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// The hashes of one request: the tenant's tag and second hash, and the user's hash (unused
/// without a user: [`RateLimitRequest::applicable`] then has no user limit).
struct RequestKeys {
    tag: u64,
    tenant: u64,
    user: u64,
}

impl RequestKeys {
    /// The key of an applicable limit.
    fn key(&self, scope: LimitScope, period_secs: u64) -> Key {
        let (base, scope_bit) = match scope {
            LimitScope::Tenant => (self.tenant, 0),
            LimitScope::User => (self.user, 1 << 63),
            LimitScope::Client => (self.user, 1 << 62),
        };
        // Multiplying by an odd constant is a bijection: distinct periods of one base give
        // distinct keys. The scope bits keep tenant, user and client keys apart even when
        // their bases would otherwise meet (a user and a client of the same key).
        let salt = period_secs.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ scope_bit;
        Key {
            tag: self.tag,
            id: base ^ salt,
        }
    }
}

/// An in-process GCRA rate limiter with bounded memory.
///
/// All keys of a tenant (tenant-wide and per-user) live in the same shard, so one lock covers
/// a whole decision: all limits are decided together and a denial consumes nothing. Rested
/// keys are swept during ordinary calls (amortised, no background task), and the number of
/// stored keys never exceeds the configured bound. The bound is the limiter's, not a
/// shard's: one tenant may hold all of it (a tenant with a million active users keeps a
/// million per-user limits). At the bound, a new key takes the room of an idle one: from its
/// own shard when that shard holds its share of the bound (one sixty-fourth) or more, else
/// from the largest shard, so that the tenants filling the bound are the ones whose idlest
/// limits are forgotten.
///
/// Keys are 128-bit values made of keyed hashes of (tenant, user, scope, period) under seeds
/// drawn at random for each limiter, never exposed: memory per key stays small and fixed
/// whatever the length of the ids. Two tenants share a limit only if two independent 64-bit
/// hashes of both collide (about 2^-88 for a million tenants); two users of one tenant share a
/// per-user limit only if a 64-bit hash collides (about 2^-25 for a million users in one
/// tenant), and the secret seeds leave nobody a way to aim for a collision.
///
/// ```
/// use tenancy_core::{memory::MemoryRateLimiter, Limit, Quota, RateLimitRequest, TenantId, UserId};
///
/// let limiter = MemoryRateLimiter::new();
/// let req = RateLimitRequest::new(
///     TenantId::parse("acme")?,
///     Some(UserId::parse("bob")?),
///     vec![Limit::tenant(Quota::per_hour(1000)), Limit::user(Quota::per_minute(2))],
/// );
/// assert!(limiter.check_now(&req).allowed);
/// assert!(limiter.check_now(&req).allowed);
/// let third = limiter.check_now(&req);
/// assert!(!third.allowed);
/// assert_eq!(third.retry_after_secs(), Some(30));
/// # Ok::<(), tenancy_core::ParseError>(())
/// ```
#[derive(Clone)]
pub struct MemoryRateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    seeds: [RandomState; 2],
    clock: SharedClock,
    max_keys: usize,
    /// Keys stored in all shards, and those a decision in progress has room reserved for.
    keys: AtomicUsize,
}

impl fmt::Debug for MemoryRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRateLimiter")
            .field("keys", &self.key_count())
            .field("max_keys", &self.inner.max_keys)
            .finish()
    }
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRateLimiter {
    /// A limiter on the system clock holding at most [`DEFAULT_MAX_KEYS`] keys.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// A limiter on `clock`.
    pub fn with_clock(clock: SharedClock) -> Self {
        Self::build(clock, DEFAULT_MAX_KEYS)
    }

    /// The same limiter with another bound on stored keys (at least 2).
    pub fn with_max_keys(self, max_keys: usize) -> Self {
        Self::build(self.inner.clock.clone(), max_keys)
    }

    fn build(clock: SharedClock, max_keys: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
                seeds: [RandomState::default(), RandomState::default()],
                clock,
                max_keys: max_keys.max(2),
                keys: AtomicUsize::new(0),
            }),
        }
    }

    /// The tenant's tag: a keyed hash that picks the shard and marks the tenant's keys.
    fn tag(&self, tenant: &TenantId) -> u64 {
        self.inner.seeds[0].hash_one(tenant.as_str())
    }

    fn keys(&self, req: &RateLimitRequest) -> RequestKeys {
        let [_, b] = &self.inner.seeds;
        let tenant = b.hash_one(req.tenant.as_str());
        RequestKeys {
            tag: self.tag(&req.tenant),
            tenant,
            user: req
                .user
                .as_ref()
                .map_or(0, |u| b.hash_one((tenant, u.as_str()))),
        }
    }

    fn shard(&self, tag: u64) -> &Mutex<Shard> {
        &self.inner.shards[(tag as usize) % SHARDS]
    }

    /// Reserves room under the bound for `needed` new keys of `shard` (locked; the shard of
    /// `tag`), never evicting a key in `protect` (the request's own keys, written right
    /// after).
    ///
    /// A sweep of the shard runs only when one is due: after as many inserts as the last sweep
    /// left keys (at least [`MIN_SWEEP_INTERVAL`]), or, at the bound, after half as many
    /// inserts as the shard holds keys. A shard full of live keys therefore does not pay a
    /// pass over itself, under its lock, on every insert.
    ///
    /// Still at the bound, keys are evicted one at a time ([`Shard::evict_one`]): from this
    /// shard when it holds its share of the bound or more, else from the largest other shard
    /// whose lock is free at once (never waited for: this shard's lock is held), else from
    /// this one. Only when none of these has a key to give do the new keys go in over the
    /// bound.
    fn make_room(&self, shard: &mut Shard, tag: u64, needed: usize, now: u64, protect: &[Key]) {
        let (max, count) = (self.inner.max_keys, &self.inner.keys);
        shard.inserts_since_sweep += needed;
        let full = count.load(Ordering::Relaxed).saturating_add(needed) > max;
        if shard.inserts_since_sweep >= shard.keys_after_sweep.max(MIN_SWEEP_INTERVAL)
            || (full && shard.inserts_since_sweep >= (shard.map.len() / 2).max(1))
        {
            // The request's own keys stay: they are written right after, and were not
            // counted as new.
            shard.sweep(now, count, protect);
        }
        let share = (max / SHARDS).max(1);
        loop {
            let held = count.load(Ordering::Relaxed);
            if held.saturating_add(needed) <= max {
                if count
                    .compare_exchange(held, held + needed, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            let evicted = (shard.map.len() >= share && shard.evict_one(protect, count))
                || self.evict_from_largest((tag as usize) % SHARDS)
                || shard.evict_one(protect, count);
            if !evicted {
                count.fetch_add(needed, Ordering::Relaxed);
                return;
            }
        }
    }

    /// Evicts one key from the largest shard other than `except` whose lock is free now;
    /// `false` when none had one.
    fn evict_from_largest(&self, except: usize) -> bool {
        let largest = (0..SHARDS)
            .filter(|&i| i != except)
            .filter_map(|i| try_lock(&self.inner.shards[i]).map(|s| (s.map.len(), i)))
            .max();
        match largest {
            Some((len, i)) if len > 0 => try_lock(&self.inner.shards[i])
                .is_some_and(|mut s| s.evict_one(&[], &self.inner.keys)),
            _ => false,
        }
    }

    /// Keys currently stored, swept or not.
    pub fn key_count(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Sweeps every shard now (normally done during calls).
    pub fn sweep(&self) {
        let now = self.inner.clock.now_nanos();
        for s in self.inner.shards.iter() {
            lock(s).sweep(now, &self.inner.keys, &[]);
        }
    }

    /// Decides synchronously (the [`RateLimiter`] impl calls this).
    pub fn check_now(&self, req: &RateLimitRequest) -> RateLimitDecision {
        // Decided into the return value itself: a decision is too large to move for free.
        let mut out = RateLimitDecision::unlimited();
        let n = req.applicable().count();
        if n > INLINE_LIMITS {
            let mut keys = vec![Key::default(); n];
            let mut tats = vec![None; n];
            let mut writes = vec![None; n];
            self.decide(req, &mut keys, &mut tats, &mut writes, &mut out);
        } else {
            let mut keys = [Key::default(); INLINE_LIMITS];
            let mut tats = [None; INLINE_LIMITS];
            let mut writes = [None; INLINE_LIMITS];
            self.decide(
                req,
                &mut keys[..n],
                &mut tats[..n],
                &mut writes[..n],
                &mut out,
            );
        }
        out
    }

    fn decide(
        &self,
        req: &RateLimitRequest,
        keys: &mut [Key],
        tats: &mut [Option<u64>],
        writes: &mut [Option<u64>],
        out: &mut RateLimitDecision,
    ) {
        let rk = self.keys(req);
        for (slot, l) in keys.iter_mut().zip(req.applicable()) {
            *slot = rk.key(l.scope, l.quota.period_secs);
        }
        let now = self.inner.clock.now_nanos();
        let mut shard = lock(self.shard(rk.tag));
        // Fast path, the common case of a tenant limit and a user limit whose keys exist:
        // one probe per key, updated in place. `writes` holds nothing after a denial.
        if let [k0, k1] = *keys
            && k0 != k1
            && let [Some(e0), Some(e1)] = shard.map.get_disjoint_mut([&k0, &k1])
        {
            tats[0] = Some(e0.tat);
            tats[1] = Some(e1.tat);
            out.fill(req, tats, now, writes);
            if let Some(t) = writes[0] {
                e0.tat = t;
            }
            if let Some(t) = writes[1] {
                e1.tat = t;
            }
            return;
        }
        for (tat, key) in tats.iter_mut().zip(keys.iter()) {
            *tat = shard.map.get(key).map(|e| e.tat);
        }
        out.fill(req, tats, now, writes);
        let new_keys = writes
            .iter()
            .zip(tats.iter())
            .filter(|(w, t)| w.is_some() && t.is_none())
            .count();
        if new_keys > 0 {
            self.make_room(&mut shard, rk.tag, new_keys, now, keys);
        }
        let mut added = 0;
        for (write, key) in writes.iter().zip(keys.iter()) {
            if let Some(tat) = write {
                added += usize::from(shard.map.insert(*key, Entry { tat: *tat }).is_none());
            }
        }
        // Only the keys counted as new are added (`make_room` keeps the request's own keys),
        // but for a request that names one key twice (two limits of one scope and period,
        // which `RateLimitRequest::validate` refuses): the count follows what was added.
        if added > new_keys {
            self.inner
                .keys
                .fetch_add(added - new_keys, Ordering::Relaxed);
        } else if added < new_keys {
            self.inner
                .keys
                .fetch_sub(new_keys - added, Ordering::Relaxed);
        }
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    /// Refuses a request that fails [`RateLimitRequest::validate`], as every backend does.
    async fn check(&self, request: &RateLimitRequest) -> Result<RateLimitDecision> {
        request.validate()?;
        Ok(self.check_now(request))
    }

    fn try_check(&self, request: &RateLimitRequest) -> Option<Result<RateLimitDecision>> {
        Some(
            request
                .validate()
                .map(|()| self.check_now(request))
                .map_err(Into::into),
        )
    }
}

#[async_trait]
impl QuotaAdmin for MemoryRateLimiter {
    async fn usage(&self, request: &RateLimitRequest) -> Result<Vec<LimitState>> {
        request.validate()?;
        let rk = self.keys(request);
        let now = self.inner.clock.now_nanos();
        let shard = lock(self.shard(rk.tag));
        Ok(request
            .applicable()
            .map(|l| {
                let tat = shard
                    .map
                    .get(&rk.key(l.scope, l.quota.period_secs))
                    .map(|e| e.tat);
                LimitState::from_outcome(*l, &gcra(tat, now, &l.quota, 0))
            })
            .collect())
    }

    /// Forgets every key tagged with the tenant's tag (and, with probability 2^-64 per other
    /// tenant, those of a tenant whose tag collides: a reset of its limits, never a denial).
    async fn reset(&self, tenant: &TenantId) -> Result<()> {
        let tag = self.tag(tenant);
        let mut shard = lock(self.shard(tag));
        let before = shard.map.len();
        shard.map.retain(|k, _| k.tag != tag);
        let removed = before - shard.map.len();
        self.inner.keys.fetch_sub(removed, Ordering::Relaxed);
        Ok(())
    }
}

#[async_trait]
impl HealthCheck for MemoryRateLimiter {
    fn component(&self) -> &str {
        "rate_limiter"
    }

    async fn check(&self) -> Health {
        Health::up().with_figure("keys", self.key_count() as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Limit, ManualClock, Quota, UserId};

    fn req(tenant: &str, user: &str, limits: Vec<Limit>) -> RateLimitRequest {
        RateLimitRequest::new(
            TenantId::parse(tenant).unwrap(),
            Some(UserId::parse(user).unwrap()),
            limits,
        )
    }

    #[test]
    fn idle_keys_are_reclaimed_during_calls() {
        let clock = ManualClock::new();
        let limiter = MemoryRateLimiter::with_clock(Arc::new(clock.clone()));
        let limits = vec![
            Limit::tenant(Quota::per_second(100)),
            Limit::user(Quota::per_second(10)),
        ];
        for i in 0..2000 {
            assert!(
                limiter
                    .check_now(&req(&format!("t{i}"), "u", limits.clone()))
                    .allowed
            );
        }
        assert_eq!(limiter.key_count(), 4000);
        clock.advance(Duration::from_secs(2));
        // New traffic on other tenants triggers sweeps; the rested keys go away.
        for i in 0..4000 {
            limiter.check_now(&req(&format!("n{i}"), "u", limits.clone()));
        }
        assert!(limiter.key_count() <= 8000, "{}", limiter.key_count());
        clock.advance(Duration::from_secs(2));
        limiter.sweep();
        assert_eq!(limiter.key_count(), 0);
    }

    #[test]
    fn the_key_bound_holds_under_a_flood_of_new_keys() {
        let limiter =
            MemoryRateLimiter::with_clock(Arc::new(ManualClock::new())).with_max_keys(640);
        let limits = vec![
            Limit::tenant(Quota::per_hour(10)),
            Limit::user(Quota::per_hour(10)),
        ];
        for i in 0..10_000 {
            limiter.check_now(&req(&format!("t{i}"), &format!("u{i}"), limits.clone()));
            assert!(limiter.key_count() <= 640);
        }
    }

    /// `n` tenant ids whose keys all land in the shard of `first`'s.
    fn same_shard_tenants(limiter: &MemoryRateLimiter, n: usize) -> Vec<String> {
        let shard_of = |t: &str| limiter.tag(&TenantId::parse(t).unwrap()) as usize % SHARDS;
        let target = shard_of("t0");
        (0..)
            .map(|i| format!("t{i}"))
            .filter(|t| shard_of(t) == target)
            .take(n)
            .collect()
    }

    fn shard_sweeps(limiter: &MemoryRateLimiter, tenant: &str) -> u64 {
        lock(limiter.shard(limiter.tag(&TenantId::parse(tenant).unwrap()))).sweeps
    }

    #[test]
    fn a_full_shard_evicts_an_idle_key_not_the_one_in_use() {
        // 64 keys, all in one shard (a table of several groups, so evictions do not simply
        // reuse the slot just freed); the clock never moves, so every key stays live.
        const CAP: usize = 64;
        let limiter =
            MemoryRateLimiter::with_clock(Arc::new(ManualClock::new())).with_max_keys(CAP);
        let tenants = same_shard_tenants(&limiter, CAP + 1000);
        let limits = vec![Limit::tenant(Quota::per_hour(3600).with_burst(2000))];
        let check = |t: &str| {
            let r = RateLimitRequest::new(TenantId::parse(t).unwrap(), None, limits.clone());
            limiter.check_now(&r)
        };
        let (filler, newcomers) = tenants.split_at(CAP);
        for t in filler {
            assert!(check(t).allowed);
        }
        for hot in &filler[..4] {
            assert_eq!(check(hot).states[0].remaining(), 1998);
        }
        let mut used = 2;
        for t in newcomers {
            // The hot keys are used before every new key arrives: they are the most recently
            // used keys in the shard, so an eviction must never choose one of them.
            used += 1;
            for hot in &filler[..4] {
                assert_eq!(
                    check(hot).states[0].remaining(),
                    2000 - used,
                    "a key in use lost its state (was evicted) before newcomer {t}"
                );
            }
            assert!(check(t).allowed);
            assert!(
                lock(limiter.shard(limiter.tag(&TenantId::parse(t).unwrap())))
                    .map
                    .len()
                    <= CAP
            );
        }
    }

    #[test]
    fn inserts_at_the_bound_do_not_sweep_every_time() {
        let limiter = MemoryRateLimiter::with_clock(Arc::new(ManualClock::new())).with_max_keys(16);
        let tenants = same_shard_tenants(&limiter, 16 + 400);
        let limits = vec![Limit::tenant(Quota::per_hour(10))];
        let check = |t: &str| {
            let r = RateLimitRequest::new(TenantId::parse(t).unwrap(), None, limits.clone());
            limiter.check_now(&r)
        };
        let (filler, newcomers) = tenants.split_at(16);
        for t in filler {
            assert!(check(t).allowed);
        }
        let before = shard_sweeps(&limiter, &tenants[0]);
        for t in newcomers {
            assert!(check(t).allowed);
        }
        let sweeps = shard_sweeps(&limiter, &tenants[0]) - before;
        // One sweep per half-bound (8) of inserts at most, not one per insert (400).
        assert!(
            sweeps <= 400 / 8 + 1,
            "{sweeps} sweeps for 400 inserts into a full shard of live keys"
        );
        assert!(sweeps >= 1, "a sweep falls due at the bound");
    }

    #[test]
    fn a_request_never_evicts_its_own_keys() {
        // Two keys in all: a request with a stored tenant key and a new user key must evict
        // another key, not its own tenant key, and the bound must hold.
        let limiter = MemoryRateLimiter::with_clock(Arc::new(ManualClock::new())).with_max_keys(2);
        let tenants = same_shard_tenants(&limiter, 2);
        let tenant_only = vec![Limit::tenant(Quota::per_hour(100))];
        let both = vec![
            Limit::tenant(Quota::per_hour(100)),
            Limit::user(Quota::per_hour(100)),
        ];
        let t = |name: &str| TenantId::parse(name).unwrap();
        // The request's own tenant key is the idlest in the shard, so it is the one an
        // eviction would pick if it were not protected.
        limiter.check_now(&RateLimitRequest::new(
            t(&tenants[0]),
            None,
            tenant_only.clone(),
        ));
        for _ in 0..3 {
            limiter.check_now(&RateLimitRequest::new(
                t(&tenants[1]),
                None,
                tenant_only.clone(),
            ));
        }
        let d = limiter.check_now(&req(&tenants[0], "bob", both));
        assert_eq!(d.states[0].remaining(), 98, "the tenant key kept its state");
        assert!(lock(limiter.shard(limiter.tag(&t(&tenants[0])))).map.len() <= 2);
    }

    /// The bound is the limiter's: one tenant's users may hold all of it. (When it was split
    /// by shard, a tenant could keep only a sixty-fourth of it, 16 384 keys by default, and
    /// its next users' keys evicted live ones: their limits started afresh.)
    #[test]
    fn one_tenant_may_hold_the_whole_bound() {
        let limiter = MemoryRateLimiter::with_clock(Arc::new(ManualClock::new()));
        let limits = vec![Limit::user(Quota::per_hour(1).with_burst(1))];
        let users = 20_000;
        for i in 0..users {
            assert!(
                limiter
                    .check_now(&req("acme", &format!("u{i}"), limits.clone()))
                    .allowed
            );
        }
        assert_eq!(limiter.key_count(), users);
        let second = (0..users)
            .filter(|i| {
                limiter
                    .check_now(&req("acme", &format!("u{i}"), limits.clone()))
                    .allowed
            })
            .count();
        assert_eq!(second, 0, "users allowed a second request within the hour");
    }

    /// At the bound, the tenant holding most keys gives up its idlest ones: a small tenant's
    /// keys, in another shard, survive the large one's flood of new users.
    #[test]
    fn at_the_bound_the_largest_shard_pays() {
        let limiter =
            MemoryRateLimiter::with_clock(Arc::new(ManualClock::new())).with_max_keys(128);
        let user = vec![Limit::user(Quota::per_hour(100))];
        let shard_of = |t: &str| limiter.tag(&TenantId::parse(t).unwrap()) as usize % SHARDS;
        let small = (0..)
            .map(|i| format!("s{i}"))
            .find(|t| shard_of(t) != shard_of("big"))
            .unwrap();
        for i in 0..128 {
            limiter.check_now(&req("big", &format!("u{i}"), user.clone()));
        }
        assert_eq!(limiter.key_count(), 128);
        // The small tenant's first key takes room from the big tenant's shard.
        assert_eq!(
            limiter.check_now(&req(&small, "bob", user.clone())).states[0].remaining(),
            99
        );
        assert_eq!(limiter.key_count(), 128);
        for i in 128..2000 {
            limiter.check_now(&req("big", &format!("u{i}"), user.clone()));
            assert!(limiter.key_count() <= 128);
        }
        assert_eq!(
            limiter.check_now(&req(&small, "bob", user.clone())).states[0].remaining(),
            98,
            "the small tenant's key was evicted by the big tenant's new users"
        );
    }

    /// The count of keys follows what is stored when a sweep takes a request's own rested
    /// keys and the request writes them again.
    #[test]
    fn the_count_follows_rested_keys_swept_and_written_again() {
        let clock = ManualClock::new();
        let limiter = MemoryRateLimiter::with_clock(Arc::new(clock.clone())).with_max_keys(2);
        let limits = vec![
            Limit::tenant(Quota::per_second(10)),
            Limit::user(Quota::per_second(10)),
        ];
        for round in 0..50 {
            limiter.check_now(&req("acme", &format!("u{round}"), limits.clone()));
            let counted = limiter.inner.keys.load(Ordering::Relaxed);
            assert_eq!(counted, limiter.key_count(), "round {round}");
            assert!(limiter.key_count() <= 2, "round {round}");
            clock.advance(Duration::from_secs(2));
        }
        // A request naming one key twice (which validation refuses, and `check_now` does not
        // check) writes it once, and is counted once.
        let twice = vec![
            Limit::user(Quota::per_second(10)),
            Limit::user(Quota::per_second(10)),
        ];
        limiter.check_now(&req("globex", "ann", twice));
        assert_eq!(
            limiter.inner.keys.load(Ordering::Relaxed),
            limiter.key_count()
        );
    }

    #[tokio::test]
    async fn usage_consumes_nothing_and_reset_forgets_one_tenant() {
        let limiter = MemoryRateLimiter::with_clock(Arc::new(ManualClock::new()));
        let limits = vec![
            Limit::tenant(Quota::per_hour(10).with_burst(3)),
            Limit::user(Quota::per_hour(10).with_burst(3)),
        ];
        for t in ["acme", "globex"] {
            for _ in 0..3 {
                assert!(limiter.check_now(&req(t, "bob", limits.clone())).allowed);
            }
        }
        let acme = req("acme", "bob", limits.clone());
        for _ in 0..3 {
            let usage = limiter.usage(&acme).await.unwrap();
            assert_eq!(
                usage.iter().map(|s| s.remaining()).collect::<Vec<_>>(),
                vec![0, 0]
            );
        }
        limiter
            .reset(&TenantId::parse("acme").unwrap())
            .await
            .unwrap();
        assert!(limiter.check_now(&acme).allowed, "reset tenant is rested");
        assert!(
            !limiter.check_now(&req("globex", "bob", limits)).allowed,
            "reset touched another tenant"
        );
    }

    #[test]
    fn ids_that_share_text_do_not_share_keys() {
        let limiter = MemoryRateLimiter::with_clock(Arc::new(ManualClock::new()));
        let user = vec![Limit::user(Quota::per_hour(1).with_burst(1))];
        // ("ab", "c") and ("a", "bc") concatenate to the same text.
        assert!(limiter.check_now(&req("ab", "c", user.clone())).allowed);
        assert!(limiter.check_now(&req("a", "bc", user.clone())).allowed);
        // A user named like a tenant does not share the tenant's key.
        let both = vec![
            Limit::tenant(Quota::per_hour(1).with_burst(1)),
            Limit::user(Quota::per_hour(1).with_burst(1)),
        ];
        assert!(limiter.check_now(&req("acme", "acme", both)).allowed);
    }

    #[test]
    fn exact_burst_and_exact_retry_after_on_a_fake_clock() {
        let clock = ManualClock::new();
        let limiter = MemoryRateLimiter::with_clock(Arc::new(clock.clone()));
        // 6 per minute: one every 10 s, 4 at once.
        let limits = vec![Limit::tenant(Quota::per_minute(6).with_burst(4))];
        for i in 0..4 {
            assert!(
                limiter
                    .check_now(&req("acme", "bob", limits.clone()))
                    .allowed,
                "burst {i}"
            );
        }
        let denied = limiter.check_now(&req("acme", "bob", limits.clone()));
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after(), Some(Duration::from_secs(10)));
        assert_eq!(denied.states[0].reset_after(), Duration::from_secs(40));
        clock.advance(Duration::from_secs(10) - Duration::from_nanos(1));
        assert!(
            !limiter
                .check_now(&req("acme", "bob", limits.clone()))
                .allowed,
            "one nanosecond early"
        );
        clock.advance(Duration::from_nanos(1));
        assert!(
            limiter
                .check_now(&req("acme", "bob", limits.clone()))
                .allowed,
            "exactly on time"
        );
        assert!(
            !limiter
                .check_now(&req("acme", "bob", limits.clone()))
                .allowed
        );
        // Fully rested after burst x interval.
        clock.advance(Duration::from_secs(40));
        for i in 0..4 {
            assert!(
                limiter
                    .check_now(&req("acme", "bob", limits.clone()))
                    .allowed,
                "rested {i}"
            );
        }
    }

    #[test]
    fn sixty_four_threads_never_exceed_the_quota() {
        let clock = ManualClock::new();
        let limiter = MemoryRateLimiter::with_clock(Arc::new(clock.clone()));
        let limits = vec![
            Limit::tenant(Quota::per_second(10).with_burst(25)),
            Limit::user(Quota::per_second(10).with_burst(1000)),
        ];
        for round in 0..3 {
            let admitted: usize = std::thread::scope(|s| {
                let handles: Vec<_> = (0..64)
                    .map(|t| {
                        let limiter = limiter.clone();
                        let r = req("acme", &format!("u{}", t % 7), limits.clone());
                        s.spawn(move || (0..10).filter(|_| limiter.check_now(&r).allowed).count())
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
            });
            // Round 0 starts rested (burst 25); later rounds get exactly 2 s of refill (20).
            assert_eq!(admitted, if round == 0 { 25 } else { 20 }, "round {round}");
            clock.advance(Duration::from_secs(2));
        }
    }

    #[test]
    fn denials_from_the_user_limit_leave_the_tenant_limit_alone() {
        let limiter = MemoryRateLimiter::with_clock(Arc::new(ManualClock::new()));
        let limits = vec![
            Limit::tenant(Quota::per_hour(10)),
            Limit::user(Quota::per_hour(1)),
        ];
        assert!(
            limiter
                .check_now(&req("acme", "bob", limits.clone()))
                .allowed
        );
        for _ in 0..5 {
            assert!(
                !limiter
                    .check_now(&req("acme", "bob", limits.clone()))
                    .allowed
            );
        }
        let other = limiter.check_now(&req("acme", "carol", limits));
        assert!(other.allowed);
        assert_eq!(other.states[0].remaining(), 8);
    }
}
