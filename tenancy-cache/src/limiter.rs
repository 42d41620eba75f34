//! [`RedisRateLimiter`]: GCRA in one Lua script, implementing [`RateLimiter`], [`QuotaAdmin`]
//! and [`HealthCheck`].
//!
//! ```no_run
//! use std::time::Duration;
//! use tenancy_cache::{RedisConfig, RedisRateLimiter};
//! use tenancy_core::{FailurePolicy, Limit, Quota, RateLimitRequest, RateLimiter, TenantId, UserId};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = RedisConfig::single("redis://127.0.0.1:6379").connect_lazy()?;
//! let limiter = RedisRateLimiter::builder(pool)
//!     .with_timeout(Duration::from_millis(50))
//!     .build();
//! let request = RateLimitRequest::new(
//!     TenantId::parse("acme")?,
//!     Some(UserId::parse("alice")?),
//!     vec![
//!         Limit::tenant(Quota::per_hour(1000).with_burst(100)),
//!         Limit::tenant(Quota::per_minute(60)).on_unavailable(FailurePolicy::Local),
//!         Limit::user(Quota::per_minute(10)).on_unavailable(FailurePolicy::FailOpen),
//!     ],
//! );
//! let decision = limiter.check(&request).await?;
//! for (name, value) in decision.headers() {
//!     println!("{name}: {value}");
//! }
//! # Ok(()) }
//! ```
//!
//! # One decision, one round trip
//! Every applicable limit of a request (tenant-wide and per-user, several windows) is decided
//! by one `EVALSHA` of one script, with Redis `TIME` as the clock: the script reads each
//! limit's theoretical arrival time (TAT), applies GCRA exactly as
//! [`tenancy_core::gcra`] does (in two-limb integer arithmetic, since Lua numbers are doubles),
//! and writes the new TATs only when every enforced limit allows: a denial consumes nothing,
//! and a denying shadow limit never writes. Each key expires at its TAT, so an idle tenant
//! leaves nothing behind. The script returns what it read and wrote; the limiter recomputes
//! the decision with [`RateLimitDecision::decide`] from those values and refuses a reply that
//! disagrees, so the reported decision is the one every backend of the workspace would make.
//!
//! When Redis flushed its script cache (restart, `SCRIPT FLUSH`), the limiter sends the script
//! once more with `EVAL`. The script needs Redis 6.2 or later (`SET ... PXAT`).
//!
//! A request is checked first ([`RateLimitRequest::validate`]): at most [`MAX_LIMITS`] limits,
//! periods of at most [`Quota::MAX_PERIOD_SECS`](tenancy_core::Quota::MAX_PERIOD_SECS), and at most one limit per scope and period,
//! since such limits would share one key. Anything else is refused with
//! [`Error::Invalid`](tenancy_core::Error::Invalid) before Redis is asked.
//!
//! # When Redis cannot decide
//! A decision is bounded by [`RedisRateLimiterBuilder::with_timeout`]. On a timeout or a
//! connection failure, the request's limits decide what happens, by their
//! [`FailurePolicy`]:
//! - any enforced limit with [`FailurePolicy::FailClosed`]: the call fails with
//!   [`Error::Unavailable`](tenancy_core::Error::Unavailable) or
//!   [`Error::Timeout`](tenancy_core::Error::Timeout) (a 503, distinct from a 429);
//! - otherwise, with an enforced [`FailurePolicy::Local`] limit: an in-process
//!   [`MemoryRateLimiter`] decides, with fail-open limits observed only
//!   ([`DecisionSource::LocalFallback`]);
//! - otherwise: allowed ([`DecisionSource::FailOpen`]), counted and logged.
//!
//! Only transient failures take this path (see
//! [`Error::is_unavailable`](crate::Error::is_unavailable)). A command Redis refuses, and will
//! refuse again (`NOPERM`, a server older than the script needs), fails the call
//! with a non-retryable error whatever the policies: a misconfiguration must not turn
//! fail-open limits off for as long as it lasts.
//!
//! After [`DEFAULT_BREAKER_FAILURES`] consecutive failures a circuit breaker opens: Redis is
//! not asked at all during the cool-down, so a dead Redis costs nothing per request. After
//! the cool-down one request probes Redis; success closes the circuit. On a Cluster there is
//! one breaker per hash slot (every key of a tenant shares the tenant's hash tag, so its
//! slot): a node that stops answering opens the circuit for the tenants whose keys it holds,
//! not for the tenants on the nodes that still answer.
//!
//! # Denial cache
//! A denial remembers the TATs the script read. Until they have passed, a request whose
//! limits are denied on those TATs alone is answered locally
//! ([`DecisionSource::DenialCache`]): TATs only grow, so such an answer is the answer Redis
//! would give. "Passed" is judged by the clock of the node that gave the denial (its time in
//! the reply, plus what passed here since the call was sent), never another Cluster node's.
//! A tenant hammering past its limit thus costs no Redis call until its retry
//! time. (A [`QuotaAdmin::reset`] clears this instance's cache; other instances keep denying
//! until the retry time they were given.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::Value;
use tenancy_core::memory::MemoryRateLimiter;
use tenancy_core::{
    DecisionSource, FailurePolicy, Health, HealthCheck, HealthStatus, Limit, LimitMode, LimitScope,
    LimitState, QuotaAdmin, RateLimitDecision, RateLimitRequest, RateLimiter, TenantId, gcra,
};

use crate::error::{Error, Result};
use crate::keys::KeySpace;
use crate::lua::{PRELUDE, dec, parse_u64};
use crate::pool::{Lua, RedisPool};

/// Default bound on one decision (connection checkout and script).
///
/// Why this default: a limiter sits on every request; a Redis that does not answer within
/// 100 ms is treated as unavailable and the failure policy decides, instead of stalling
/// every request behind it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
/// Default consecutive failures that open the circuit breaker.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// Default time the circuit stays open before one request probes Redis again.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// Default bound on remembered denial states.
pub const DEFAULT_DENIAL_CACHE: usize = 10_000;
/// Most limits one request may carry.
pub const MAX_LIMITS: usize = 32;

// KEYS: one state key per applicable limit. ARGV, per limit i: 3i-2 = T * cost, 3i-1 =
// T * burst (both saturating u64), 3i = '1' when enforced. Returns now (seconds, nanoseconds),
// 1 or 0 for allowed, then per limit the TAT read and the TAT written ('' for none).
static DECIDE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        "rate_limit_decide",
        format!(
            "{PRELUDE}{}",
            r"
local nh, nl = now()
local n = #KEYS
local old, wh, wl, ok = {}, {}, {}, {}
local allowed = 1
for i = 1, n do
  local bh, bl = nh, nl
  local s = redis.call('GET', KEYS[i])
  if s then
    local th, tl = split(s)
    if not th then return corrupt('rate-limit state') end
    if not le(th, tl, nh, nl) then bh, bl = th, tl end
    old[i] = s
  else
    old[i] = ''
  end
  local ih, il = split(ARGV[3 * i - 2])
  local ch, cl = split(ARGV[3 * i - 1])
  if not ih or not ch then return redis.error_reply('ERR bad quota argument') end
  local h, l = add(bh, bl, ih, il)
  if not le(h, l, MAXH, MAXL) then h, l = MAXH, MAXL end
  wh[i], wl[i] = h, l
  local lh, ll = add(nh, nl, ch, cl)
  ok[i] = le(h, l, lh, ll)
  if not ok[i] and ARGV[3 * i] == '1' then allowed = 0 end
end
local out = {nh, nl, allowed}
for i = 1, n do
  local w = ''
  if allowed == 1 and ok[i] then
    w = fmt(wh[i], wl[i])
    redis.call('SET', KEYS[i], w, 'PXAT', wh[i] * 1000 + math.ceil(wl[i] / 1000000))
  end
  out[#out + 1] = old[i]
  out[#out + 1] = w
end
return out
"
        ),
    )
});

// KEYS: state keys. Returns now (seconds, nanoseconds) and each stored TAT ('' for none).
static USAGE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        "rate_limit_usage",
        format!(
            "{PRELUDE}{}",
            r"
local nh, nl = now()
local out = {nh, nl}
for i = 1, #KEYS do
  out[#out + 1] = redis.call('GET', KEYS[i]) or ''
end
return out
"
        ),
    )
});

// KEYS[1]: any key in the tenant's slot (routes the call on a Cluster). ARGV: cursor, pattern.
// Returns the next cursor and the matching keys; the caller deletes them with DEL.
static SCAN: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        "rate_limit_scan",
        r"return redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', 1000)".to_owned(),
    )
});

/// The SHA1 under which the decision script is sent with `EVALSHA`: for operators checking
/// `SCRIPT EXISTS` on a server, and for load tests that run the same script.
pub fn decision_script_sha() -> &'static str {
    &DECIDE.sha
}

/// Counters of a limiter (and its clones), since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LimiterStats {
    /// Decisions made by Redis.
    pub backend: u64,
    /// Denials answered from the denial cache.
    pub denial_cache: u64,
    /// Requests allowed because Redis could not decide (fail open).
    pub fail_open: u64,
    /// Requests decided in process because Redis could not decide.
    pub local_fallback: u64,
    /// Requests refused as unavailable because Redis could not decide (fail closed).
    pub fail_closed: u64,
    /// Failed Redis calls (timeouts, connection errors), including those that opened the
    /// circuit.
    pub backend_errors: u64,
    /// Requests that did not reach Redis because the circuit was open.
    pub short_circuited: u64,
}

#[derive(Debug, Default)]
struct Counters {
    backend: AtomicU64,
    denial_cache: AtomicU64,
    fail_open: AtomicU64,
    local_fallback: AtomicU64,
    fail_closed: AtomicU64,
    backend_errors: AtomicU64,
    short_circuited: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The state of the circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CircuitState {
    /// Redis is asked.
    Closed,
    /// Redis failed repeatedly; it is not asked until the cool-down ends.
    Open,
}

#[derive(Debug)]
struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: AtomicU32,
    open: AtomicBool,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    open_until: Option<Instant>,
    probe_started: Option<Instant>,
}

/// `now + d`, or a century on when that is past what an `Instant` holds (a `Duration::MAX`
/// cooldown means "for good", not a panic).
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

impl Breaker {
    fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether this request may ask Redis: always when closed; when open, one probe after the
    /// cool-down (another one if a probe was abandoned for longer than `stale`).
    fn admit(&self, stale: Duration) -> bool {
        if !self.open.load(Ordering::Acquire) {
            return true;
        }
        let now = Instant::now();
        let mut st = self.lock();
        match st.open_until {
            None => true,
            Some(until) if now < until => false,
            Some(_) => match st.probe_started {
                Some(p) if now.duration_since(p) < stale => false,
                _ => {
                    st.probe_started = Some(now);
                    true
                }
            },
        }
    }

    fn success(&self) {
        if self.failures.load(Ordering::Relaxed) == 0 && !self.open.load(Ordering::Acquire) {
            return;
        }
        let mut st = self.lock();
        self.failures.store(0, Ordering::Relaxed);
        if st.open_until.take().is_some() {
            tracing::info!("Redis answered again: rate-limit circuit closed");
        }
        st.probe_started = None;
        self.open.store(false, Ordering::Release);
    }

    fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut st = self.lock();
        let now = Instant::now();
        if st.probe_started.take().is_some() {
            st.open_until = Some(later(now, self.cooldown));
        } else if n >= self.threshold && st.open_until.is_none() {
            tracing::warn!(
                failures = n,
                cooldown_ms = self.cooldown.as_millis() as u64,
                "Redis keeps failing: rate-limit circuit opened"
            );
            st.open_until = Some(later(now, self.cooldown));
            self.open.store(true, Ordering::Release);
        }
    }

    fn state(&self) -> CircuitState {
        if self.open.load(Ordering::Acquire) {
            CircuitState::Open
        } else {
            CircuitState::Closed
        }
    }
}

/// Hash slots of a Redis Cluster.
const CLUSTER_SLOTS: usize = 16_384;

/// The circuit breakers: one for a single node; on a Cluster one per hash slot, made when
/// the slot first fails, so that a node that stops answering opens the circuit only for the
/// tenants whose keys it holds (every key of a tenant shares its hash tag, so its slot).
#[derive(Debug)]
struct Breakers {
    threshold: u32,
    cooldown: Duration,
    slots: Box<[OnceLock<Box<Breaker>>]>,
}

impl Breakers {
    fn new(threshold: u32, cooldown: Duration, cluster: bool) -> Self {
        let n = if cluster { CLUSTER_SLOTS } else { 1 };
        Self {
            threshold,
            cooldown,
            slots: (0..n).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The slot `key` hashes to on a Cluster (CRC16 of its hash tag, as Redis computes it);
    /// 0 on one node.
    fn slot(&self, key: &str) -> usize {
        if self.slots.len() == 1 {
            return 0;
        }
        let b = key.as_bytes();
        let tag = b
            .iter()
            .position(|c| *c == b'{')
            .and_then(|open| {
                let close = b[open + 1..].iter().position(|c| *c == b'}')?;
                (close > 0).then(|| &b[open + 1..open + 1 + close])
            })
            .unwrap_or(b);
        usize::from(crc16::State::<crc16::XMODEM>::calculate(tag)) % CLUSTER_SLOTS
    }

    fn admit(&self, key: &str, stale: Duration) -> bool {
        self.slots[self.slot(key)]
            .get()
            .is_none_or(|b| b.admit(stale))
    }

    fn success(&self, key: &str) {
        if let Some(b) = self.slots[self.slot(key)].get() {
            b.success();
        }
    }

    fn failure(&self, key: &str) {
        self.slots[self.slot(key)]
            .get_or_init(|| Box::new(Breaker::new(self.threshold, self.cooldown)))
            .failure();
    }

    /// `Open` when the circuit is open for any slot.
    fn state(&self) -> CircuitState {
        if self
            .slots
            .iter()
            .filter_map(OnceLock::get)
            .any(|b| b.state() == CircuitState::Open)
        {
            CircuitState::Open
        } else {
            CircuitState::Closed
        }
    }
}

/// Lower bounds of TATs learnt from denials, by key.
#[derive(Debug)]
struct DenialCache {
    max: usize,
    tats: Mutex<HashMap<String, Denied>>,
    /// Entries evicted by sampling since the last sweep of passed entries.
    evicted: AtomicUsize,
}

/// A key's TAT learnt from a denial, with the clock of the Redis node that answered: its time
/// in the reply (`at`), and the local instant just before the call was sent. On a Cluster
/// each node has its own clock, and a key is only ever on its own node (a request's keys
/// share their tenant's slot): the node's time now is estimated from its own reply, never
/// from another node's.
#[derive(Debug, Clone, Copy)]
struct Denied {
    tat: u64,
    at: u64,
    sent: Instant,
}

impl Denied {
    /// The node's time at `local`, over-estimated (the reply's time plus all that passed
    /// since the call was sent), so that a cached denial ends early rather than late.
    fn node_now(&self, local: Instant) -> u64 {
        let elapsed = local.saturating_duration_since(self.sent).as_nanos();
        self.at
            .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
    }
}

/// Entries looked at to make room for one new denial.
const EVICTION_SAMPLE: usize = 8;

/// Removes at least one entry from a full denial cache, looking at no more than
/// [`EVICTION_SAMPLE`] of them (under the lock every decision takes, so never a scan of the
/// whole map): the passed ones among them, else the one that ends soonest. Dropping an entry
/// only sends that key's next request to Redis, so any choice is safe; a cached denial never
/// outlives its TAT, since entries are only answered from while their TAT is ahead.
fn make_room(map: &mut HashMap<String, Denied>, now: u64) {
    let mut victims: Vec<String> = Vec::with_capacity(EVICTION_SAMPLE);
    let mut soonest: Option<(&String, u64)> = None;
    for (k, t) in map.iter().take(EVICTION_SAMPLE).map(|(k, e)| (k, e.tat)) {
        if t <= now {
            victims.push(k.clone());
        } else if soonest.is_none_or(|(_, s)| t < s) {
            soonest = Some((k, t));
        }
    }
    if victims.is_empty()
        && let Some((k, _)) = soonest
    {
        victims.push(k.clone());
    }
    for k in &victims {
        map.remove(k);
    }
}

impl DenialCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Denied>> {
        self.tats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Builds a [`RedisRateLimiter`].
#[derive(Debug)]
pub struct RedisRateLimiterBuilder {
    pool: RedisPool,
    keys: KeySpace,
    timeout: Duration,
    breaker_failures: u32,
    breaker_cooldown: Duration,
    denial_cache: usize,
    local: Option<MemoryRateLimiter>,
}

impl RedisRateLimiterBuilder {
    /// Another key space (namespace).
    pub fn with_key_space(mut self, keys: KeySpace) -> Self {
        self.keys = keys;
        self
    }

    /// Bound on one decision ([`DEFAULT_TIMEOUT`] by default).
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Consecutive failures that open the circuit, and how long it stays open.
    pub fn with_breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.breaker_failures = failures;
        self.breaker_cooldown = cooldown;
        self
    }

    /// Remember at most `max_keys` denial states (0 disables the denial cache).
    pub fn with_denial_cache(mut self, max_keys: usize) -> Self {
        self.denial_cache = max_keys;
        self
    }

    /// The in-process limiter that decides [`FailurePolicy::Local`] limits while Redis is
    /// unavailable (a fresh [`MemoryRateLimiter`] by default).
    pub fn with_local_fallback(mut self, local: MemoryRateLimiter) -> Self {
        self.local = Some(local);
        self
    }

    /// The limiter.
    pub fn build(self) -> RedisRateLimiter {
        let cluster = self.pool.is_cluster();
        RedisRateLimiter {
            inner: Arc::new(Inner {
                pool: self.pool,
                keys: self.keys,
                timeout: self.timeout,
                breaker: Breakers::new(self.breaker_failures, self.breaker_cooldown, cluster),
                denials: (self.denial_cache > 0).then(|| DenialCache {
                    max: self.denial_cache,
                    tats: Mutex::default(),
                    evicted: AtomicUsize::new(0),
                }),
                local: self.local.unwrap_or_default(),
                counters: Counters::default(),
                last_fail_open_log: Mutex::new(None),
            }),
        }
    }
}

/// A GCRA rate limiter on Redis (one node or a Cluster); cheap to clone.
///
/// See the [module documentation](self) for the algorithm, failure policies, circuit breaker
/// and denial cache.
#[derive(Clone)]
pub struct RedisRateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    pool: RedisPool,
    keys: KeySpace,
    timeout: Duration,
    breaker: Breakers,
    denials: Option<DenialCache>,
    local: MemoryRateLimiter,
    counters: Counters,
    last_fail_open_log: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("namespace", &self.inner.keys.namespace())
            .field("timeout", &self.inner.timeout)
            .field("circuit", &self.inner.breaker.state())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// What the decide script answered.
#[derive(Debug)]
struct Reply {
    now: u64,
    allowed: bool,
    read: Vec<Option<u64>>,
    written: Vec<Option<u64>>,
}

fn int(v: &Value) -> Result<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).map_err(|_| Error::corrupt("negative integer")),
        _ => Err(Error::corrupt("rate limit: expected an integer")),
    }
}

fn tat(v: &Value) -> Result<Option<u64>> {
    match v {
        Value::BulkString(b) if b.is_empty() => Ok(None),
        Value::BulkString(b) => parse_u64(b)
            .map(Some)
            .ok_or_else(|| Error::corrupt("rate limit: bad TAT")),
        Value::Nil => Ok(None),
        _ => Err(Error::corrupt("rate limit: expected a TAT")),
    }
}

fn redis_now(secs: &Value, nanos: &Value) -> Result<u64> {
    int(secs)?
        .checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(int(nanos).ok()?))
        .ok_or_else(|| Error::corrupt("rate limit: bad server time"))
}

fn parse_reply(v: Value, n: usize) -> Result<Reply> {
    let Value::Array(a) = v else {
        return Err(Error::corrupt("rate limit: expected an array"));
    };
    if a.len() != 3 + 2 * n {
        return Err(Error::corrupt("rate limit: wrong reply length"));
    }
    let now = redis_now(&a[0], &a[1])?;
    let allowed = int(&a[2])? == 1;
    let mut read = Vec::with_capacity(n);
    let mut written = Vec::with_capacity(n);
    for pair in a[3..].chunks(2) {
        read.push(tat(&pair[0])?);
        written.push(tat(&pair[1])?);
    }
    Ok(Reply {
        now,
        allowed,
        read,
        written,
    })
}

/// The decision `tenancy-core` makes on the values the script read, provided the script made
/// the same one (same verdict, same writes).
fn agreed(req: &RateLimitRequest, reply: &Reply) -> Result<RateLimitDecision> {
    let (decision, writes) = RateLimitDecision::decide(req, &reply.read, reply.now);
    if decision.allowed != reply.allowed || writes != reply.written {
        tracing::error!("rate-limit script and tenancy-core disagree");
        return Err(Error::corrupt(
            "rate limit: script and core arithmetic disagree",
        ));
    }
    Ok(decision)
}

fn validate(req: &RateLimitRequest) -> Result<()> {
    if req.limits.len() > MAX_LIMITS {
        return Err(Error::invalid("rate limit request", "at most 32 limits"));
    }
    // Bounded periods, and one limit per (scope, period): two such limits would share one
    // key, each overwriting the TAT the other wrote.
    req.validate()?;
    Ok(())
}

impl RedisRateLimiter {
    /// A builder with the defaults: namespace `tenancy`, [`DEFAULT_TIMEOUT`], a breaker of
    /// [`DEFAULT_BREAKER_FAILURES`] failures and [`DEFAULT_BREAKER_COOLDOWN`], a denial cache of
    /// [`DEFAULT_DENIAL_CACHE`] keys.
    pub fn builder(pool: RedisPool) -> RedisRateLimiterBuilder {
        RedisRateLimiterBuilder {
            pool,
            keys: KeySpace::default(),
            timeout: DEFAULT_TIMEOUT,
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            denial_cache: DEFAULT_DENIAL_CACHE,
            local: None,
        }
    }

    /// A limiter with the defaults of [`RedisRateLimiter::builder`].
    pub fn new(pool: RedisPool) -> Self {
        Self::builder(pool).build()
    }

    /// Counters since the limiter was built.
    pub fn stats(&self) -> LimiterStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LimiterStats {
            backend: get(&c.backend),
            denial_cache: get(&c.denial_cache),
            fail_open: get(&c.fail_open),
            local_fallback: get(&c.local_fallback),
            fail_closed: get(&c.fail_closed),
            backend_errors: get(&c.backend_errors),
            short_circuited: get(&c.short_circuited),
        }
    }

    /// The circuit breaker's state; on a Cluster, `Open` when the circuit of any hash slot is.
    pub fn circuit(&self) -> CircuitState {
        self.inner.breaker.state()
    }

    /// The pool this limiter uses.
    pub fn pool(&self) -> &RedisPool {
        &self.inner.pool
    }

    /// The key of each applicable limit of `req`, in order.
    fn keys_for(&self, req: &RateLimitRequest) -> Vec<String> {
        req.applicable()
            .map(|l| match (l.scope, &req.user) {
                (LimitScope::User, Some(u)) => {
                    self.inner
                        .keys
                        .limit_user(&req.tenant, u, l.quota.period_secs)
                }
                (LimitScope::Client, Some(c)) => {
                    self.inner
                        .keys
                        .limit_client(&req.tenant, c, l.quota.period_secs)
                }
                _ => self
                    .inner
                    .keys
                    .limit_tenant(&req.tenant, l.quota.period_secs),
            })
            .collect()
    }

    fn cached_denial(&self, req: &RateLimitRequest, keys: &[String]) -> Option<RateLimitDecision> {
        let cache = self.inner.denials.as_ref()?;
        let local = Instant::now();
        let (tats, now): (Vec<Option<u64>>, u64) = {
            let mut map = cache.lock();
            if map.is_empty() {
                return None;
            }
            let found: Vec<Option<Denied>> = keys.iter().map(|k| map.get(k).copied()).collect();
            // The node's time, from the latest estimate among its keys' entries.
            let now = found.iter().flatten().map(|e| e.node_now(local)).max()?;
            let mut any = false;
            let tats = keys
                .iter()
                .zip(&found)
                .map(|(k, e)| match e {
                    Some(e) if e.tat > now => {
                        any = true;
                        Some(e.tat)
                    }
                    Some(_) => {
                        map.remove(k);
                        None
                    }
                    None => None,
                })
                .collect();
            if !any {
                return None;
            }
            (tats, now)
        };
        let (mut decision, _) = RateLimitDecision::decide(req, &tats, now);
        if decision.allowed {
            return None;
        }
        decision.source = DecisionSource::DenialCache;
        bump(&self.inner.counters.denial_cache);
        Some(decision)
    }

    /// Caches the TATs a denial read, with the answering node's time `now` and the local
    /// instant `sent` just before the call went out.
    fn remember_denial(&self, keys: &[String], read: &[Option<u64>], now: u64, sent: Instant) {
        let Some(cache) = &self.inner.denials else {
            return;
        };
        let mut map = cache.lock();
        for (k, t) in keys.iter().zip(read) {
            let Some(t) = *t else { continue };
            if t <= now {
                continue;
            }
            if map.len() >= cache.max && !map.contains_key(k) {
                // Sampling always looks at the same buckets, so passed entries elsewhere
                // would stay; once every half capacity of evictions, they all go, in one
                // pass over the map: amortised, two entries looked at per eviction.
                // (Passed by this node's time: entries of other nodes are judged by it too,
                // which only decides which are dropped; dropping one is always safe.)
                if cache.evicted.fetch_add(1, Ordering::Relaxed) >= cache.max / 2 {
                    cache.evicted.store(0, Ordering::Relaxed);
                    map.retain(|_, e| e.tat > now);
                }
                if map.len() >= cache.max {
                    make_room(&mut map, now);
                }
            }
            let fresh = Denied {
                tat: t,
                at: now,
                sent,
            };
            let e = map.entry(k.clone()).or_insert(fresh);
            e.tat = e.tat.max(t);
            if sent > e.sent {
                (e.at, e.sent) = (now, sent);
            }
        }
    }

    fn log_fail_open(&self, err: &Error) {
        let mut last = self
            .inner
            .last_fail_open_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::warn!(error = %err, "Redis unavailable: rate limits failing open");
        }
    }

    /// The decision when Redis could not decide, by the limits' failure policies.
    fn fallback(
        &self,
        req: &RateLimitRequest,
        err: Error,
    ) -> tenancy_core::Result<RateLimitDecision> {
        let enforced = |l: &&Limit| l.mode == LimitMode::Enforce;
        if req
            .applicable()
            .filter(enforced)
            .any(|l| l.on_unavailable == FailurePolicy::FailClosed)
        {
            bump(&self.inner.counters.fail_closed);
            return Err(err.into());
        }
        let local = req
            .applicable()
            .filter(enforced)
            .any(|l| l.on_unavailable == FailurePolicy::Local);
        // Fail-open limits are only observed by the local limiter; local ones are enforced.
        let mut shadowed = req.clone();
        for l in &mut shadowed.limits {
            if l.on_unavailable != FailurePolicy::Local {
                l.mode = LimitMode::Shadow;
            }
        }
        // The states keep the mode they were decided in: a fail-open limit, only observed,
        // must not set `Retry-After` or the headline headers as if it were enforced.
        let mut decision = self.inner.local.check_now(&shadowed);
        if local {
            bump(&self.inner.counters.local_fallback);
            decision.source = DecisionSource::LocalFallback;
        } else {
            bump(&self.inner.counters.fail_open);
            self.log_fail_open(&err);
            decision.allowed = true;
            decision.source = DecisionSource::FailOpen;
        }
        Ok(decision)
    }

    async fn ask_redis(&self, req: &RateLimitRequest, keys: &[String]) -> Result<(Reply, Instant)> {
        let mut args = Vec::with_capacity(keys.len() * 3);
        for l in req.applicable() {
            let t = l.quota.emission_interval_nanos();
            args.push(dec(t.saturating_mul(req.cost)));
            args.push(dec(t.saturating_mul(l.quota.burst)));
            args.push(if l.mode == LimitMode::Enforce {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            });
        }
        let sent = Instant::now();
        // The pool applies the bound itself, so that a connection whose reply did not come in
        // time is marked broken and replaced, not reused by every later decision.
        let value = self
            .inner
            .pool
            .eval_within(self.inner.timeout, &DECIDE, keys, &args)
            .await?;
        Ok((parse_reply(value, keys.len())?, sent))
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, req: &RateLimitRequest) -> tenancy_core::Result<RateLimitDecision> {
        validate(req)?;
        let keys = self.keys_for(req);
        if keys.is_empty() {
            return Ok(RateLimitDecision::unlimited());
        }
        if let Some(d) = self.cached_denial(req, &keys) {
            return Ok(d);
        }
        // Every key of a request shares the tenant's hash tag: the first names the slot.
        let slot_key = &keys[0];
        if !self
            .inner
            .breaker
            .admit(slot_key, self.inner.timeout.saturating_mul(4))
        {
            bump(&self.inner.counters.short_circuited);
            return self.fallback(req, Error::CircuitOpen);
        }
        let (reply, sent) = match self.ask_redis(req, &keys).await {
            Ok(r) => r,
            Err(e) if e.is_unavailable() => {
                bump(&self.inner.counters.backend_errors);
                self.inner.breaker.failure(slot_key);
                return self.fallback(req, e);
            }
            Err(e) => {
                // Redis answered, refusing the command (permissions, a server too old for the
                // script, bad data): it will refuse it again, so this is no outage and no
                // failure policy applies. Fail loudly instead of failing open.
                self.inner.breaker.success(slot_key);
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "rate-limit decision refused by Redis");
                return Err(e.into());
            }
        };
        self.inner.breaker.success(slot_key);
        bump(&self.inner.counters.backend);
        let decision = agreed(req, &reply)?;
        if !decision.allowed {
            self.remember_denial(&keys, &reply.read, reply.now, sent);
        }
        Ok(decision)
    }
}

#[async_trait]
impl QuotaAdmin for RedisRateLimiter {
    async fn usage(&self, req: &RateLimitRequest) -> tenancy_core::Result<Vec<LimitState>> {
        validate(req)?;
        let keys = self.keys_for(req);
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let value = self.inner.pool.eval(&USAGE, &keys, &[]).await?;
        let Value::Array(a) = value else {
            return Err(Error::corrupt("rate limit: expected an array").into());
        };
        if a.len() != 2 + keys.len() {
            return Err(Error::corrupt("rate limit: wrong reply length").into());
        }
        let now = redis_now(&a[0], &a[1])?;
        req.applicable()
            .zip(&a[2..])
            .map(|(l, v)| {
                Ok(LimitState::from_outcome(
                    *l,
                    &gcra(tat(v)?, now, &l.quota, 0),
                ))
            })
            .collect()
    }

    async fn reset(&self, tenant: &TenantId) -> tenancy_core::Result<()> {
        let route = self.inner.keys.limit_tenant(tenant, 0);
        let pattern = self.inner.keys.limit_pattern(tenant);
        let mut cursor = b"0".to_vec();
        loop {
            let value = self
                .inner
                .pool
                .eval(
                    &SCAN,
                    std::slice::from_ref(&route),
                    &[cursor, pattern.clone().into_bytes()],
                )
                .await?;
            let (next, found): (String, Vec<String>) =
                redis::FromRedisValue::from_redis_value(value)
                    .map_err(|e| Error::Corrupt(Box::new(e)))?;
            if !found.is_empty() {
                self.inner
                    .pool
                    .query::<()>(redis::cmd("DEL").arg(&found))
                    .await?;
            }
            if next == "0" {
                break;
            }
            cursor = next.into_bytes();
        }
        if let Some(cache) = &self.inner.denials {
            let prefix = &pattern[..pattern.len() - 1];
            cache.lock().retain(|k, _| !k.starts_with(prefix));
        }
        Ok(())
    }
}

#[async_trait]
impl HealthCheck for RedisRateLimiter {
    fn component(&self) -> &str {
        "rate_limiter"
    }

    /// The pool's health; `Degraded` while the circuit is open and Redis answers again
    /// (the next probe will close it), `Down` while it does not.
    async fn check(&self) -> Health {
        let mut health = self.inner.pool.check().await;
        if self.circuit() == CircuitState::Open && health.status == HealthStatus::Up {
            health.status = HealthStatus::Degraded;
            health.detail = Some("circuit open; closes on the next successful decision".into());
        }
        let s = self.stats();
        health
            .with_figure("decisions_backend", s.backend)
            .with_figure("decisions_denial_cache", s.denial_cache)
            .with_figure("decisions_fail_open", s.fail_open)
            .with_figure("decisions_local_fallback", s.local_fallback)
            .with_figure("decisions_fail_closed", s.fail_closed)
            .with_figure("backend_errors", s.backend_errors)
            .with_figure("short_circuited", s.short_circuited)
            .with_figure(
                "circuit_open",
                u64::from(self.circuit() == CircuitState::Open),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_the_threshold_and_probes_once() {
        let b = Breaker::new(3, Duration::from_millis(30));
        let stale = Duration::from_secs(60);
        for _ in 0..2 {
            b.failure();
        }
        assert!(b.admit(stale) && b.state() == CircuitState::Closed);
        b.failure();
        assert_eq!(b.state(), CircuitState::Open);
        assert!(!b.admit(stale), "open: nobody asks Redis");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.admit(stale), "after the cool-down: one probe");
        assert!(!b.admit(stale), "only one probe at a time");
        b.failure();
        assert!(!b.admit(stale), "a failed probe re-opens");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.admit(stale));
        b.success();
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(b.admit(stale));
    }

    /// On a Cluster each hash slot has its own breaker, found by the slot Redis computes for
    /// the key (`CLUSTER KEYSLOT`): failures of one tenant's slot (a node that stopped
    /// answering) leave the circuit closed for a tenant on another slot. On one node there is
    /// one breaker for every key.
    #[test]
    fn each_cluster_slot_has_its_own_breaker() {
        let b = Breakers::new(2, Duration::from_secs(60), true);
        // As a Redis 7 Cluster answered CLUSTER KEYSLOT for these keys.
        for (key, slot) in [
            ("tenancy:{t:acme}:l:t:60", 9557),
            ("{t:globex}x", 9083),
            ("plainkey", 12566),
            ("a{}b", 13694),
        ] {
            assert_eq!(b.slot(key), slot, "{key}");
        }
        let stale = Duration::from_secs(60);
        let (acme, acme_user, globex) = (
            "tenancy:{t:acme}:l:t:60",
            "tenancy:{t:acme}:l:u:x:60",
            "tenancy:{t:globex}:l:t:60",
        );
        b.failure(acme);
        b.failure(acme);
        assert!(!b.admit(acme, stale), "acme's slot is open");
        assert!(
            !b.admit(acme_user, stale),
            "so is every key with acme's tag"
        );
        assert!(b.admit(globex, stale), "globex's slot never failed");
        assert_eq!(b.state(), CircuitState::Open);
        b.success(globex);
        assert!(!b.admit(acme, stale));

        let one = Breakers::new(2, Duration::from_secs(60), false);
        one.failure(acme);
        one.failure(globex);
        assert!(
            !one.admit("tenancy:{t:other}:l:t:60", stale),
            "one node, one breaker"
        );
    }

    #[test]
    fn an_abandoned_probe_does_not_keep_the_circuit_open() {
        let b = Breaker::new(1, Duration::from_millis(1));
        b.failure();
        std::thread::sleep(Duration::from_millis(5));
        assert!(b.admit(Duration::from_millis(10)));
        // The probe's future was dropped: no success, no failure.
        assert!(!b.admit(Duration::from_millis(10)));
        std::thread::sleep(Duration::from_millis(15));
        assert!(b.admit(Duration::from_millis(10)));
    }

    #[test]
    fn a_full_denial_cache_makes_room_in_bounded_steps() {
        let sent = Instant::now();
        let mut map: HashMap<String, Denied> = (0..100u64)
            .map(|i| {
                let e = Denied {
                    tat: 1_000 + i,
                    at: 0,
                    sent,
                };
                (format!("k{i}"), e)
            })
            .collect();
        // Nothing has passed: exactly one entry goes, the soonest of those looked at.
        let sampled: Vec<u64> = map.values().map(|e| e.tat).take(EVICTION_SAMPLE).collect();
        make_room(&mut map, 0);
        assert_eq!(map.len(), 99);
        let gone = (1_000..1_100)
            .find(|t| !map.values().any(|v| v.tat == *t))
            .unwrap();
        assert_eq!(Some(gone), sampled.iter().copied().min());
        // Passed entries among those looked at all go, the live ones stay.
        make_room(&mut map, u64::MAX);
        assert_eq!(map.len(), 99 - EVICTION_SAMPLE);
        let mut empty = HashMap::new();
        make_room(&mut empty, 0);
    }

    #[tokio::test]
    async fn passed_denials_are_swept_once_the_cache_has_evicted_half_its_capacity() {
        let pool = crate::RedisConfig::single("redis://127.0.0.1:1")
            .connect_lazy()
            .unwrap();
        let l = RedisRateLimiter::builder(pool)
            .with_denial_cache(64)
            .build();
        let cache = l.inner.denials.as_ref().unwrap();
        let old: Vec<String> = (0..64).map(|i| format!("old{i}")).collect();
        let passed =
            |cache: &DenialCache| cache.lock().keys().filter(|k| k.starts_with("old")).count();
        // 64 denials that pass at 1 000; at 2 000 a new one finds the cache full. Below the
        // sweep's turn, only a sample is looked at: most passed entries stay.
        let sent = Instant::now();
        l.remember_denial(&old, &[Some(1_000); 64], 0, sent);
        l.remember_denial(&["new0".to_owned()], &[Some(5_000)], 2_000, sent);
        assert!(passed(cache) >= 64 - EVICTION_SAMPLE, "{}", passed(cache));
        // Full again (the sample made room for a few); half a capacity of evictions later,
        // the next new denial sweeps every passed entry.
        let live: Vec<String> = (cache.lock().len()..64)
            .map(|i| format!("live{i}"))
            .collect();
        l.remember_denial(&live, &vec![Some(9_000); live.len()], 2_000, sent);
        assert_eq!(cache.lock().len(), 64);
        cache.evicted.store(32, Ordering::Relaxed);
        l.remember_denial(&["new1".to_owned()], &[Some(5_000)], 2_000, sent);
        assert_eq!(passed(cache), 0);
        assert_eq!(
            cache.lock().len(),
            2 + live.len(),
            "every live denial is kept"
        );
    }

    #[tokio::test]
    async fn a_new_denial_is_remembered_when_the_cache_is_full() {
        let pool = crate::RedisConfig::single("redis://127.0.0.1:1")
            .connect_lazy()
            .unwrap();
        let l = RedisRateLimiter::builder(pool).with_denial_cache(4).build();
        let now = 1_000;
        let keys: Vec<String> = (0..4).map(|i| format!("k{i}")).collect();
        let sent = Instant::now();
        l.remember_denial(&keys, &[Some(now + 10); 4], now, sent);
        let cache = l.inner.denials.as_ref().unwrap();
        assert_eq!(cache.lock().len(), 4);
        l.remember_denial(&["new".to_owned()], &[Some(now + 5)], now, sent);
        let map = cache.lock();
        assert_eq!(map.len(), 4, "the bound holds");
        assert_eq!(
            map.get("new").map(|e| e.tat),
            Some(now + 5),
            "the newest denial is cached"
        );
    }

    /// On a Cluster every node has its own clock: a cached denial is judged by the clock of
    /// the node that gave it, not by another node's that answered since.
    #[tokio::test]
    async fn a_cached_denial_ends_by_its_own_nodes_clock() {
        let pool = crate::RedisConfig::single("redis://127.0.0.1:1")
            .connect_lazy()
            .unwrap();
        let l = RedisRateLimiter::builder(pool)
            .with_denial_cache(16)
            .build();
        let secs = |s: u64| s * 1_000_000_000;
        let q = tenancy_core::Quota::per_second(1).with_burst(1);
        let request = |t: &str| {
            let t = TenantId::parse(t).unwrap();
            let keys = l.keys_for(&RateLimitRequest::new(
                t.clone(),
                None,
                vec![Limit::tenant(q)],
            ));
            (RateLimitRequest::new(t, None, vec![Limit::tenant(q)]), keys)
        };
        let (on_x, keys_x) = request("on-x");
        let (on_y, keys_y) = request("on-y");
        // Node X (clock at 100 s) denied `on-x` until 101 s, 1.5 s ago; node Y, whose clock
        // is 2 s behind, denied `on-y` until 105 s just now.
        let then = Instant::now()
            .checked_sub(Duration::from_millis(1_500))
            .unwrap();
        l.remember_denial(&keys_x, &[Some(secs(101))], secs(100), then);
        l.remember_denial(&keys_y, &[Some(secs(105))], secs(98), Instant::now());
        // By X's clock, 101 s has passed: Redis would decide again, so the cache must not.
        assert!(l.cached_denial(&on_x, &keys_x).is_none());
        // By Y's clock, 105 s is still ahead: denied from the cache.
        let d = l.cached_denial(&on_y, &keys_y).expect("a cached denial");
        assert!(!d.allowed);
        assert_eq!(d.source, DecisionSource::DenialCache);
    }

    #[test]
    fn a_reply_that_core_would_not_make_is_refused() {
        let q = tenancy_core::Quota::per_second(1).with_burst(1);
        let req = RateLimitRequest::new(
            TenantId::parse("acme").unwrap(),
            None,
            vec![Limit::tenant(q)],
        );
        let now = 5_000_000_000;
        let right = Reply {
            now,
            allowed: true,
            read: vec![None],
            written: vec![Some(now + 1_000_000_000)],
        };
        assert!(agreed(&req, &right).unwrap().allowed);
        let off_by_one = Reply {
            written: vec![Some(now + 1_000_000_001)],
            ..right
        };
        assert!(agreed(&req, &off_by_one).is_err());
        let wrong_verdict = Reply {
            now,
            allowed: true,
            read: vec![Some(now + 1)],
            written: vec![Some(now + 1_000_000_001)],
        };
        assert!(
            agreed(&req, &wrong_verdict).is_err(),
            "core denies this one"
        );
    }

    #[test]
    fn replies_are_checked() {
        let ok = Value::Array(vec![
            Value::Int(10),
            Value::Int(5000),
            Value::Int(1),
            Value::BulkString(Vec::new()),
            Value::BulkString(b"10000005001".to_vec()),
        ]);
        let r = parse_reply(ok, 1).unwrap();
        assert_eq!(r.now, 10_000_005_000);
        assert_eq!((r.read[0], r.written[0]), (None, Some(10_000_005_001)));
        assert!(parse_reply(Value::Array(vec![Value::Int(1)]), 1).is_err());
        let bad = Value::Array(vec![
            Value::Int(10),
            Value::Int(0),
            Value::Int(1),
            Value::BulkString(b"12x".to_vec()),
            Value::BulkString(Vec::new()),
        ]);
        assert!(parse_reply(bad, 1).is_err());
    }
}
