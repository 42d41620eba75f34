use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use foldhash::fast::RandomState;

use super::lock;
use crate::{
    Health, HealthCheck, LimitScope, LimitState, QuotaAdmin, RateLimitDecision, RateLimitRequest,
    RateLimiter, Result, SharedClock, SystemClock, TenantId, UserId, gcra,
};

const SHARDS: usize = 64;
/// Default bound on stored keys (tenant and user entries together).
pub const DEFAULT_MAX_KEYS: usize = 1 << 20;
const MIN_SWEEP_INTERVAL: usize = 64;

/// One stored TAT, for one period of one scope.
#[derive(Debug, Clone, Copy)]
struct Cell {
    period_secs: u64,
    tat: u64,
}

type Cells = Vec<Cell>;

#[derive(Debug, Default)]
struct TenantSlot {
    cells: Cells,
    users: HashMap<UserId, Cells, RandomState>,
}

#[derive(Debug, Default)]
struct Shard {
    tenants: HashMap<TenantId, TenantSlot, RandomState>,
    /// Tenant slots plus user entries.
    keys: usize,
    inserts_since_sweep: usize,
    /// Keys left by the last sweep: the next sweep waits for as many inserts, which keeps the
    /// sweeping cost amortised O(1) per insert.
    keys_after_sweep: usize,
}

fn find(cells: &[Cell], period_secs: u64) -> Option<u64> {
    cells
        .iter()
        .find(|c| c.period_secs == period_secs)
        .map(|c| c.tat)
}

fn store(cells: &mut Cells, period_secs: u64, tat: u64) {
    match cells.iter_mut().find(|c| c.period_secs == period_secs) {
        Some(c) => c.tat = tat,
        None => cells.push(Cell { period_secs, tat }),
    }
}

/// Drops cells that are fully rested at `now`; returns whether any remain.
fn retain_live(cells: &mut Cells, now: u64) -> bool {
    cells.retain(|c| c.tat > now);
    !cells.is_empty()
}

impl Shard {
    /// Removes every rested entry. A rested key decides exactly like a missing one, so this
    /// changes no decision.
    fn sweep(&mut self, now: u64) {
        let mut removed = 0;
        self.tenants.retain(|_, slot| {
            let before = slot.users.len();
            slot.users.retain(|_, cells| retain_live(cells, now));
            removed += before - slot.users.len();
            let live = retain_live(&mut slot.cells, now) || !slot.users.is_empty();
            if !live {
                removed += 1;
            }
            live
        });
        self.keys -= removed;
        self.inserts_since_sweep = 0;
        self.keys_after_sweep = self.keys;
    }

    /// Makes room for `needed` new keys under `cap`: first by sweeping, then by evicting the
    /// entries of arbitrary tenants (a reset of their limits: the bound wins over accuracy).
    fn make_room(&mut self, needed: usize, cap: usize, now: u64) {
        if self.keys + needed <= cap {
            return;
        }
        self.sweep(now);
        while self.keys + needed > cap {
            let Some(victim) = self.tenants.keys().next().cloned() else {
                return;
            };
            if let Some(slot) = self.tenants.remove(&victim) {
                self.keys -= 1 + slot.users.len();
            }
        }
    }
}

/// An in-process GCRA rate limiter with bounded memory.
///
/// A tenant's tenant-wide and per-user states live in the same shard, so one lock covers a
/// whole decision: all limits are decided together and a denial consumes nothing. Rested keys
/// are swept during ordinary calls (amortised, no background task), and the number of stored
/// keys never exceeds the configured bound.
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
    hasher: RandomState,
    clock: SharedClock,
    max_keys_per_shard: usize,
}

impl fmt::Debug for MemoryRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRateLimiter")
            .field("keys", &self.key_count())
            .field("max_keys", &(self.inner.max_keys_per_shard * SHARDS))
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

    /// The same limiter with another bound on stored keys (at least one per shard).
    pub fn with_max_keys(self, max_keys: usize) -> Self {
        Self::build(self.inner.clock.clone(), max_keys)
    }

    fn build(clock: SharedClock, max_keys: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
                hasher: RandomState::default(),
                clock,
                max_keys_per_shard: (max_keys / SHARDS).max(2),
            }),
        }
    }

    fn shard(&self, tenant: &TenantId) -> &Mutex<Shard> {
        let h = self.inner.hasher.hash_one(tenant.as_str());
        &self.inner.shards[(h as usize) % SHARDS]
    }

    /// Keys currently stored (tenant slots and user entries), swept or not.
    pub fn key_count(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).keys).sum()
    }

    /// Sweeps every shard now (normally done during calls).
    pub fn sweep(&self) {
        let now = self.inner.clock.now_nanos();
        for s in self.inner.shards.iter() {
            lock(s).sweep(now);
        }
    }

    fn read_tats(slot: Option<&TenantSlot>, req: &RateLimitRequest) -> Vec<Option<u64>> {
        let user_cells = match (slot, &req.user) {
            (Some(slot), Some(user)) => slot.users.get(user.as_str()),
            _ => None,
        };
        req.applicable()
            .map(|l| match l.scope {
                LimitScope::Tenant => slot.and_then(|s| find(&s.cells, l.quota.period_secs)),
                LimitScope::User => user_cells.and_then(|c| find(c, l.quota.period_secs)),
            })
            .collect()
    }

    /// Decides synchronously (the [`RateLimiter`] impl calls this).
    pub fn check_now(&self, req: &RateLimitRequest) -> RateLimitDecision {
        let now = self.inner.clock.now_nanos();
        let mut shard = lock(self.shard(&req.tenant));
        let tats = Self::read_tats(shard.tenants.get(req.tenant.as_str()), req);
        let (decision, writes) = RateLimitDecision::decide(req, &tats, now);
        if !writes.iter().any(Option::is_some) {
            return decision;
        }

        let shard = &mut *shard;
        let has_slot = shard.tenants.contains_key(req.tenant.as_str());
        let has_user = match (&req.user, shard.tenants.get(req.tenant.as_str())) {
            (Some(u), Some(slot)) => slot.users.contains_key(u.as_str()),
            _ => false,
        };
        let writes_user = req
            .applicable()
            .zip(&writes)
            .any(|(l, w)| l.scope == LimitScope::User && w.is_some());
        let new_keys = usize::from(!has_slot) + usize::from(writes_user && !has_user);
        if new_keys > 0 {
            shard.inserts_since_sweep += new_keys;
            if shard.inserts_since_sweep >= shard.keys_after_sweep.max(MIN_SWEEP_INTERVAL) {
                shard.sweep(now);
            }
            shard.make_room(new_keys, self.inner.max_keys_per_shard, now);
        }
        let slot = match shard.tenants.get_mut(req.tenant.as_str()) {
            Some(slot) => slot,
            None => {
                shard.keys += 1;
                shard.tenants.entry(req.tenant.clone()).or_default()
            }
        };
        for (limit, write) in req.applicable().zip(&writes) {
            let Some(tat) = *write else { continue };
            match (limit.scope, &req.user) {
                (LimitScope::Tenant, _) => store(&mut slot.cells, limit.quota.period_secs, tat),
                (LimitScope::User, Some(user)) => {
                    let cells = match slot.users.get_mut(user.as_str()) {
                        Some(cells) => cells,
                        None => {
                            shard.keys += 1;
                            slot.users.entry(user.clone()).or_default()
                        }
                    };
                    store(cells, limit.quota.period_secs, tat);
                }
                (LimitScope::User, None) => {}
            }
        }
        decision
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn check(&self, request: &RateLimitRequest) -> Result<RateLimitDecision> {
        Ok(self.check_now(request))
    }
}

#[async_trait]
impl QuotaAdmin for MemoryRateLimiter {
    async fn usage(&self, request: &RateLimitRequest) -> Result<Vec<LimitState>> {
        let now = self.inner.clock.now_nanos();
        let shard = lock(self.shard(&request.tenant));
        let tats = Self::read_tats(shard.tenants.get(request.tenant.as_str()), request);
        Ok(request
            .applicable()
            .zip(tats)
            .map(|(l, tat)| LimitState::from_outcome(*l, &gcra(tat, now, &l.quota, 0)))
            .collect())
    }

    async fn reset(&self, tenant: &TenantId) -> Result<()> {
        let mut shard = lock(self.shard(tenant));
        if let Some(slot) = shard.tenants.remove(tenant.as_str()) {
            shard.keys -= 1 + slot.users.len();
        }
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
    use crate::{Limit, ManualClock, Quota};

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
        assert_eq!(other.states[0].remaining, 8);
    }
}
