//! Rate limiting: the [`RateLimiter`] trait, the request and decision types, the GCRA
//! arithmetic every backend shares, and the response headers every adapter sends.
//!
//! A request names a tenant, optionally a user, and the limits to apply (each a [`Quota`] with
//! a [`LimitScope`]). Backends decide all limits in one atomic step: if any enforced limit
//! denies, no limit is consumed.
//!
//! # The algorithm
//! GCRA (generic cell rate algorithm) keeps one number per key, the *theoretical arrival time*
//! (TAT). With emission interval `T = period / limit`, a request of weight `w` is allowed when
//! `max(TAT, now) + w·T - now <= burst·T`, and then moves TAT to `max(TAT, now) + w·T`. A key
//! whose TAT is in the past is indistinguishable from a missing key, so idle keys can be
//! dropped without changing any decision.
//!
//! ```
//! use tenancy_core::{gcra, Quota};
//!
//! let q = Quota::per_second(10).with_burst(2);
//! let now = 1_000_000_000;
//! let a = gcra(None, now, &q, 1);
//! let b = gcra(Some(a.tat), now, &q, 1);
//! let c = gcra(Some(b.tat), now, &q, 1);
//! assert!(a.allowed && b.allowed && !c.allowed);
//! assert_eq!(c.retry_after_nanos, 100_000_000);
//! ```

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::{ParseError, Quota, Result, TenantId, UserId};

/// Whom a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LimitScope {
    /// Every request of the tenant.
    Tenant,
    /// Each user of the tenant separately.
    User,
    /// Each client separately, where there is no verified user to count (a login, a token
    /// refresh): counted by [`RateLimitRequest::user`], which then holds the client's key (an
    /// address), and never together with a user's limits of the same key.
    Client,
}

impl LimitScope {
    /// `"tenant"`, `"user"` or `"client"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::User => "user",
            Self::Client => "client",
        }
    }
}

/// Whether a limit is enforced or only observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LimitMode {
    /// Denials are enforced.
    #[default]
    Enforce,
    /// Decided and reported, but the request is always allowed: for trying a new quota on live
    /// traffic before enforcing it.
    Shadow,
}

/// What a distributed backend does when it cannot decide (store down, timeout, open circuit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FailurePolicy {
    /// Allow the request; the decision is marked degraded so it can be counted and logged.
    FailOpen,
    /// Refuse the request as unavailable (a 503, distinct from a 429).
    #[default]
    FailClosed,
    /// Decide with an in-process limiter until the backend returns.
    Local,
}

/// One limit to apply: a quota, whom it counts, and how it behaves.
///
/// A request carries at most one limit per (scope, period): state is keyed by that pair, so a
/// tier change that keeps the period carries the tenant's current usage over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    /// Tenant-wide or per-user.
    pub scope: LimitScope,
    /// The rate and burst.
    pub quota: Quota,
    /// Enforced or shadow.
    pub mode: LimitMode,
    /// Behaviour when a distributed backend cannot decide.
    pub on_unavailable: FailurePolicy,
}

impl Limit {
    /// An enforced tenant-wide limit that fails closed.
    pub fn tenant(quota: Quota) -> Self {
        Self {
            scope: LimitScope::Tenant,
            quota,
            mode: LimitMode::Enforce,
            on_unavailable: FailurePolicy::FailClosed,
        }
    }

    /// An enforced per-user limit that fails closed.
    pub fn user(quota: Quota) -> Self {
        Self {
            scope: LimitScope::User,
            ..Self::tenant(quota)
        }
    }

    /// An enforced per-client limit that fails closed (see [`LimitScope::Client`]).
    ///
    /// ```
    /// use tenancy_core::{Limit, Quota};
    /// assert_eq!(Limit::client(Quota::per_minute(10)).name(), "client-60");
    /// ```
    pub fn client(quota: Quota) -> Self {
        Self {
            scope: LimitScope::Client,
            ..Self::tenant(quota)
        }
    }

    /// The same limit in shadow mode.
    pub fn shadow(mut self) -> Self {
        self.mode = LimitMode::Shadow;
        self
    }

    /// The same limit with another failure policy.
    pub fn on_unavailable(mut self, policy: FailurePolicy) -> Self {
        self.on_unavailable = policy;
        self
    }

    /// The policy name used in headers and metrics: `tenant-3600`, `user-60`, `client-60`, ...
    pub fn name(&self) -> String {
        format!("{}-{}", self.scope.as_str(), self.quota.period_secs)
    }
}

/// One rate-limit decision to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitRequest {
    /// The tenant.
    pub tenant: TenantId,
    /// The user, or for [`LimitScope::Client`] limits the client's key; without one, user and
    /// client limits are skipped.
    pub user: Option<UserId>,
    /// The limits, decided together.
    pub limits: Vec<Limit>,
    /// The request's weight (1 for an ordinary request).
    pub cost: u64,
}

impl RateLimitRequest {
    /// A request of weight 1 for `tenant` and `user` under `limits`.
    pub fn new(tenant: TenantId, user: Option<UserId>, limits: Vec<Limit>) -> Self {
        Self {
            tenant,
            user,
            limits,
            cost: 1,
        }
    }

    /// The same request with another weight.
    pub fn with_cost(mut self, cost: u64) -> Self {
        self.cost = cost;
        self
    }

    /// Checks every limit's quota ([`Quota::validate`]) and that no two limits share a scope
    /// and a period.
    ///
    /// Why at most one limit per (scope, period): backends keep one state per tenant (or
    /// user), scope and period, so two such limits would share it, each overwriting what the
    /// other stored: a shadow limit tried beside an enforced one of the same period would
    /// silently change what the enforced one allows. Backends refuse such a request with
    /// [`Error::Invalid`](crate::Error::Invalid) rather than decide it wrongly.
    ///
    /// ```
    /// use tenancy_core::{Limit, Quota, RateLimitRequest, TenantId};
    ///
    /// let acme = TenantId::parse("acme")?;
    /// let enforced = Limit::tenant(Quota::per_hour(1000).with_burst(100));
    /// let shadow = Limit::tenant(Quota::per_hour(500).with_burst(50)).shadow();
    /// let same_period = RateLimitRequest::new(acme.clone(), None, vec![enforced, shadow]);
    /// assert!(same_period.validate().is_err());
    /// let other_period = Limit::tenant(Quota::per_minute(20)).shadow();
    /// assert!(RateLimitRequest::new(acme, None, vec![enforced, other_period]).validate().is_ok());
    /// # Ok::<(), tenancy_core::ParseError>(())
    /// ```
    pub fn validate(&self) -> Result<(), ParseError> {
        for (i, l) in self.limits.iter().enumerate() {
            l.quota.validate()?;
            let same = |o: &Limit| o.scope == l.scope && o.quota.period_secs == l.quota.period_secs;
            if self.limits[..i].iter().any(same) {
                return Err(ParseError::new(
                    "rate limit request",
                    "at most one limit per scope and period",
                ));
            }
        }
        Ok(())
    }

    /// The limits that apply: user and client limits only when there is a user (the key
    /// they count by).
    pub fn applicable(&self) -> impl Iterator<Item = &Limit> {
        let has_user = self.user.is_some();
        self.limits
            .iter()
            .filter(move |l| has_user || l.scope == LimitScope::Tenant)
    }
}

/// The result of applying GCRA to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraOutcome {
    /// Whether the request fits.
    pub allowed: bool,
    /// The TAT to store when the whole decision is allowed (the old one when denied).
    pub tat: u64,
    /// Nanoseconds until the key is fully rested.
    pub reset_after_nanos: u64,
    /// Nanoseconds until this request would fit (0 when allowed).
    pub retry_after_nanos: u64,
}

impl GcraOutcome {
    /// Requests of weight 1 that would still fit right after this decision, under `quota` (the
    /// quota it was decided with). Computed when asked, so that a decision costs no division
    /// for a figure only the response headers read.
    pub fn remaining(&self, quota: &Quota) -> u64 {
        quota.remaining_after(self.reset_after_nanos)
    }
}

/// GCRA for one key: `tat` is the stored TAT (`None` for a rested key), `now` and the result
/// in nanoseconds since the Unix epoch.
///
/// A weight larger than the burst never fits; its retry-after is `u64::MAX`.
#[inline]
pub fn gcra(tat: Option<u64>, now: u64, quota: &Quota, cost: u64) -> GcraOutcome {
    let t = quota.emission_interval_nanos();
    let capacity = t.saturating_mul(quota.burst);
    let base = tat.map_or(now, |tat| tat.max(now));
    let new_tat = base.saturating_add(t.saturating_mul(cost));
    let used_after = new_tat - now;
    if used_after <= capacity {
        GcraOutcome {
            allowed: true,
            tat: new_tat,
            reset_after_nanos: used_after,
            retry_after_nanos: 0,
        }
    } else {
        let used = base - now;
        GcraOutcome {
            allowed: false,
            tat: base,
            reset_after_nanos: used,
            retry_after_nanos: if cost > quota.burst {
                u64::MAX
            } else {
                used_after - capacity
            },
        }
    }
}

/// The state of one limit after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    /// The limit this state is for.
    pub limit: Limit,
    /// Whether this limit alone would allow the request.
    pub allowed: bool,
    /// Nanoseconds until the limit is fully restored (see [`LimitState::reset_after`]).
    pub reset_after_nanos: u64,
    /// Nanoseconds until the request would fit under this limit, 0 when allowed (see
    /// [`LimitState::retry_after`]).
    pub retry_after_nanos: u64,
}

impl LimitState {
    /// The state after a GCRA outcome for `limit`.
    #[inline]
    pub fn from_outcome(limit: Limit, o: &GcraOutcome) -> Self {
        Self {
            limit,
            allowed: o.allowed,
            reset_after_nanos: o.reset_after_nanos,
            retry_after_nanos: o.retry_after_nanos,
        }
    }

    /// Requests of weight 1 that still fit now (computed from the quota and
    /// [`reset_after_nanos`](Self::reset_after_nanos)).
    pub fn remaining(&self) -> u64 {
        self.limit.quota.remaining_after(self.reset_after_nanos)
    }

    /// Time until the limit is fully restored.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tenancy_core::{gcra, Limit, LimitState, Quota};
    ///
    /// let limit = Limit::tenant(Quota::per_second(10).with_burst(5));
    /// let state = LimitState::from_outcome(limit, &gcra(None, 0, &limit.quota, 2));
    /// assert_eq!(state.reset_after(), Duration::from_millis(200));
    /// assert_eq!(state.retry_after(), Duration::ZERO);
    /// ```
    pub fn reset_after(&self) -> Duration {
        Duration::from_nanos(self.reset_after_nanos)
    }

    /// Time until the request would fit under this limit (zero when allowed).
    pub fn retry_after(&self) -> Duration {
        Duration::from_nanos(self.retry_after_nanos)
    }
}

/// How many limit states a decision holds without a heap allocation.
const INLINE_STATES: usize = 2;

/// The per-limit states of a decision: a slice (`Deref<Target = [LimitState]>`) that holds up
/// to two states inline (the usual tenant and user limit), so that a typical decision
/// allocates nothing; more spill to the heap.
#[derive(Clone)]
pub struct LimitStates {
    inline: [LimitState; INLINE_STATES],
    len: usize,
    spill: Vec<LimitState>,
}

const FILLER: LimitState = LimitState {
    limit: Limit {
        scope: LimitScope::Tenant,
        quota: Quota::per_second(1),
        mode: LimitMode::Enforce,
        on_unavailable: FailurePolicy::FailClosed,
    },
    allowed: true,
    reset_after_nanos: 0,
    retry_after_nanos: 0,
};

impl LimitStates {
    /// No states.
    #[inline]
    pub const fn new() -> Self {
        Self {
            inline: [FILLER; INLINE_STATES],
            len: 0,
            spill: Vec::new(),
        }
    }

    /// Appends a state.
    #[inline]
    pub fn push(&mut self, state: LimitState) {
        if self.spill.is_empty() && self.len < INLINE_STATES {
            self.inline[self.len] = state;
            self.len += 1;
            return;
        }
        if self.spill.is_empty() {
            self.spill.extend_from_slice(&self.inline[..self.len]);
        }
        self.spill.push(state);
    }
}

impl Default for LimitStates {
    fn default() -> Self {
        Self::new()
    }
}

impl std::ops::Deref for LimitStates {
    type Target = [LimitState];
    fn deref(&self) -> &[LimitState] {
        if self.spill.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }
}

impl std::ops::DerefMut for LimitStates {
    fn deref_mut(&mut self) -> &mut [LimitState] {
        if self.spill.is_empty() {
            &mut self.inline[..self.len]
        } else {
            &mut self.spill
        }
    }
}

impl fmt::Debug for LimitStates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for LimitStates {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for LimitStates {}

impl FromIterator<LimitState> for LimitStates {
    fn from_iter<I: IntoIterator<Item = LimitState>>(iter: I) -> Self {
        let mut out = Self::new();
        iter.into_iter().for_each(|s| out.push(s));
        out
    }
}

impl From<Vec<LimitState>> for LimitStates {
    fn from(v: Vec<LimitState>) -> Self {
        v.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a LimitStates {
    type Item = &'a LimitState;
    type IntoIter = std::slice::Iter<'a, LimitState>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// How a decision was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecisionSource {
    /// By the configured backend.
    #[default]
    Backend,
    /// The backend could not decide and a limit's policy allowed the request.
    FailOpen,
    /// The backend could not decide and an in-process limiter decided.
    LocalFallback,
    /// Answered from a cache of recent denials without asking the backend.
    DenialCache,
}

/// The outcome of [`RateLimiter::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitDecision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// One state per applicable limit, in request order.
    pub states: LimitStates,
    /// How the decision was reached.
    pub source: DecisionSource,
}

impl RateLimitDecision {
    /// Applies GCRA to every applicable limit of `request`, with `tats` giving each limit's
    /// stored TAT in the same order. Returns the decision and, when allowed, the TATs to store
    /// (`None` for a limit whose state must not change: a shadow limit that denied).
    ///
    /// Every backend decides through this one function, so all of them agree to the nanosecond.
    pub fn decide(
        request: &RateLimitRequest,
        tats: &[Option<u64>],
        now: u64,
    ) -> (Self, Vec<Option<u64>>) {
        let mut writes = vec![None; tats.len()];
        let decision = Self::decide_into(request, tats, now, &mut writes);
        (decision, writes)
    }

    /// [`RateLimitDecision::decide`] writing the TATs to store into `writes` (same length as
    /// `tats`), for backends that keep them on the stack.
    pub fn decide_into(
        request: &RateLimitRequest,
        tats: &[Option<u64>],
        now: u64,
        writes: &mut [Option<u64>],
    ) -> Self {
        let mut out = Self::unlimited();
        out.fill(request, tats, now, writes);
        out
    }

    /// [`RateLimitDecision::decide_into`] into `self`, which must be [`unlimited`](Self::unlimited):
    /// the decision is large enough that returning it by value costs a copy, which a backend
    /// on the hot path avoids by deciding into its own return value.
    pub(crate) fn fill(
        &mut self,
        request: &RateLimitRequest,
        tats: &[Option<u64>],
        now: u64,
        writes: &mut [Option<u64>],
    ) {
        for ((limit, tat), write) in request.applicable().zip(tats).zip(writes.iter_mut()) {
            let o = gcra(*tat, now, &limit.quota, request.cost);
            if !o.allowed && limit.mode == LimitMode::Enforce {
                self.allowed = false;
            }
            *write = o.allowed.then_some(o.tat);
            self.states.push(LimitState::from_outcome(*limit, &o));
        }
        if !self.allowed {
            // Nothing is consumed: report what each limit that would have allowed still has.
            for ((limit, tat), (state, write)) in request
                .applicable()
                .zip(tats)
                .zip(self.states.iter_mut().zip(writes.iter_mut()))
            {
                if write.take().is_some() {
                    *state = LimitState::from_outcome(*limit, &gcra(*tat, now, &limit.quota, 0));
                }
            }
        }
    }

    /// An allowed decision with no limit states: a request that no limit applies to.
    #[inline]
    pub fn unlimited() -> Self {
        Self {
            allowed: true,
            states: LimitStates::new(),
            source: DecisionSource::Backend,
        }
    }

    /// The enforced limit closest to denying (lowest remaining; for the `X-RateLimit-*`
    /// headers), or the first limit when all are shadow limits.
    pub fn headline(&self) -> Option<&LimitState> {
        self.states
            .iter()
            .filter(|s| s.limit.mode == LimitMode::Enforce)
            .min_by_key(|s| (s.allowed, s.remaining()))
            .or_else(|| self.states.first())
    }

    /// When denied: the wait until every denying enforced limit would allow the request.
    pub fn retry_after(&self) -> Option<Duration> {
        if self.allowed {
            return None;
        }
        self.states
            .iter()
            .filter(|s| !s.allowed && s.limit.mode == LimitMode::Enforce)
            .map(|s| s.retry_after_nanos)
            .max()
            .map(Duration::from_nanos)
    }

    /// `Retry-After` in whole seconds: rounded up, never 0.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after().map(ceil_secs_at_least_one)
    }

    /// The rate-limit response headers, as (name, value) pairs, for any HTTP framework:
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`, `RateLimit-Policy`,
    /// `RateLimit`, and `Retry-After` when denied. [`RateLimitDecision::header_block`] gives
    /// the same headers without a string per value.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        self.header_block()
            .iter()
            .map(|(name, value)| (name, value.to_owned()))
            .collect()
    }

    /// The headers of [`RateLimitDecision::headers`], every value written into one string.
    ///
    /// ```
    /// use tenancy_core::{Limit, Quota, RateLimitDecision, RateLimitRequest, TenantId};
    ///
    /// let request = RateLimitRequest::new(
    ///     TenantId::parse("acme")?,
    ///     None,
    ///     vec![Limit::tenant(Quota::per_minute(60))],
    /// );
    /// // A first request, at time 0 (nanoseconds): allowed.
    /// let (decision, _) = RateLimitDecision::decide(&request, &[None], 0);
    /// let block = decision.header_block();
    /// assert_eq!(block.get("x-ratelimit-limit"), Some("60"));
    /// assert_eq!(block.get("ratelimit-policy"), Some("\"tenant-60\";q=60;w=60"));
    /// assert_eq!(block.len(), 5);
    /// let (text, ranges) = block.clone().into_parts();
    /// for ((name, range), (same, value)) in ranges.zip(block.iter()) {
    ///     assert_eq!((name, &text[range]), (same, value));
    /// }
    /// assert_eq!(decision.headers()[0], ("x-ratelimit-limit", "60".to_owned()));
    /// # Ok::<(), tenancy_core::ParseError>(())
    /// ```
    pub fn header_block(&self) -> RateLimitHeaders {
        let mut n = itoa::Buffer::new();
        let mut h = RateLimitHeaders {
            text: String::with_capacity(48 + 96 * self.states.len()),
            ..RateLimitHeaders::default()
        };
        if let Some(head) = self.headline() {
            h.push("x-ratelimit-limit", |t| {
                t.push_str(n.format(head.limit.quota.limit));
            });
            h.push("x-ratelimit-remaining", |t| {
                t.push_str(n.format(head.remaining()));
            });
            h.push("x-ratelimit-reset", |t| {
                t.push_str(n.format(ceil_secs(head.reset_after())));
            });
        }
        if !self.states.is_empty() {
            // The policy name, as `Limit::name` spells it.
            let name = |t: &mut String, s: &LimitState, n: &mut itoa::Buffer| {
                t.push('"');
                t.push_str(s.limit.scope.as_str());
                t.push('-');
                t.push_str(n.format(s.limit.quota.period_secs));
                t.push('"');
            };
            h.push("ratelimit-policy", |t| {
                for (i, s) in self.states.iter().enumerate() {
                    if i > 0 {
                        t.push_str(", ");
                    }
                    name(t, s, &mut n);
                    t.push_str(";q=");
                    t.push_str(n.format(s.limit.quota.limit));
                    t.push_str(";w=");
                    t.push_str(n.format(s.limit.quota.period_secs));
                }
            });
            h.push("ratelimit", |t| {
                for (i, s) in self.states.iter().enumerate() {
                    if i > 0 {
                        t.push_str(", ");
                    }
                    name(t, s, &mut n);
                    t.push_str(";r=");
                    t.push_str(n.format(s.remaining()));
                    t.push_str(";t=");
                    t.push_str(n.format(ceil_secs(s.reset_after())));
                }
            });
        }
        if let Some(secs) = self.retry_after_secs() {
            h.push("retry-after", |t| t.push_str(n.format(secs)));
        }
        h
    }
}

/// The rate-limit headers of one decision ([`RateLimitDecision::header_block`]): up to six
/// (name, value) pairs whose values share one string, so that an adapter can hand them to its
/// framework as slices of one buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    text: String,
    fields: [(&'static str, u32, u32); 6],
    len: u8,
}

impl RateLimitHeaders {
    fn push(&mut self, name: &'static str, write: impl FnOnce(&mut String)) {
        let start = self.text.len();
        write(&mut self.text);
        if let (Some(slot), Ok(a), Ok(b)) = (
            self.fields.get_mut(usize::from(self.len)),
            u32::try_from(start),
            u32::try_from(self.text.len()),
        ) {
            *slot = (name, a, b);
            self.len += 1;
        }
    }

    /// Whether there are no headers (an exempt request).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// The (name, value) pairs, names in lower case, in the order they are sent.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        self.ranges()
            .map(|(name, r)| (name, self.text.get(r).unwrap_or_default()))
    }

    /// The value of the header `name` (lower case), if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Each header's name and the byte range of its value in [`RateLimitHeaders::text`].
    pub fn ranges(&self) -> impl Iterator<Item = (&'static str, std::ops::Range<usize>)> + '_ {
        self.fields[..usize::from(self.len)]
            .iter()
            .map(|&(name, a, b)| (name, a as usize..b as usize))
    }

    /// Every value, one after the other.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The string of every value, and each header's name with the byte range of its value in
    /// it: what an adapter needs to share one buffer among the header values.
    pub fn into_parts(
        self,
    ) -> (
        String,
        impl Iterator<Item = (&'static str, std::ops::Range<usize>)>,
    ) {
        let fields = self.fields;
        let ranges = fields
            .into_iter()
            .take(usize::from(self.len))
            .map(|(name, a, b)| (name, a as usize..b as usize));
        (self.text, ranges)
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn ceil_secs_at_least_one(d: Duration) -> u64 {
    ceil_secs(d).max(1)
}

/// Decides whether requests may proceed under per-tenant and per-user quotas.
///
/// Implementations decide every applicable limit of a request atomically: if any enforced
/// limit denies, none is consumed. Quotas travel with each request, so a tier change takes
/// effect on the next call.
#[async_trait]
pub trait RateLimiter: Send + Sync + fmt::Debug + 'static {
    /// Decides one request and, when allowed, consumes its weight from every limit.
    ///
    /// Errors: [`Error::Unavailable`](crate::Error::Unavailable) or
    /// [`Error::Timeout`](crate::Error::Timeout) when a backend could not decide and the limits'
    /// policy is to fail closed.
    async fn check(&self, request: &RateLimitRequest) -> Result<RateLimitDecision>;

    /// [`RateLimiter::check`], when it can decide without waiting (state in this process);
    /// else `None`, having consumed nothing, and the caller awaits `check`. The HTTP layers
    /// ask this first on every request: a decision here costs no future. By default `None`.
    ///
    /// An implementation returns `Some` only with the decision `check` would have made, and
    /// consumes the request's weight exactly once either way.
    ///
    /// ```
    /// use tenancy_core::memory::MemoryRateLimiter;
    /// use tenancy_core::{Limit, Quota, RateLimitRequest, RateLimiter, TenantId};
    ///
    /// let limiter = MemoryRateLimiter::new();
    /// let req = RateLimitRequest::new(
    ///     TenantId::parse("acme")?,
    ///     None,
    ///     vec![Limit::tenant(Quota::per_minute(1))],
    /// );
    /// let first = limiter.try_check(&req).expect("decided in memory")?;
    /// assert!(first.allowed);
    /// assert!(!limiter.try_check(&req).expect("decided in memory")?.allowed);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn try_check(&self, request: &RateLimitRequest) -> Option<Result<RateLimitDecision>> {
        let _ = request;
        None
    }
}

/// Optional administrative abilities of a rate limiter.
#[async_trait]
pub trait QuotaAdmin: Send + Sync + fmt::Debug + 'static {
    /// The current state of each applicable limit of `request`, consuming nothing.
    async fn usage(&self, request: &RateLimitRequest) -> Result<Vec<LimitState>>;

    /// Forgets every limit state of `tenant` (tenant-wide and per-user).
    async fn reset(&self, tenant: &TenantId) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn exact_burst_then_exact_retry() {
        let q = Quota::per_second(2).with_burst(5);
        let now = 100 * S;
        let mut tat = None;
        for i in 0..5 {
            let o = gcra(tat, now, &q, 1);
            assert!(o.allowed, "request {i}");
            assert_eq!(o.remaining(&q), 4 - i);
            tat = Some(o.tat);
        }
        let denied = gcra(tat, now, &q, 1);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after_nanos, S / 2);
        assert_eq!(denied.reset_after_nanos, 5 * S / 2);
        assert_eq!(denied.tat, tat.unwrap());
        let later = gcra(tat, now + S / 2, &q, 1);
        assert!(later.allowed);
        assert!(!gcra(tat, now + S / 2 - 1, &q, 1).allowed);
    }

    #[test]
    fn weights_and_impossible_weights() {
        let q = Quota::per_second(10).with_burst(10);
        let o = gcra(None, S, &q, 10);
        assert!(o.allowed);
        assert_eq!(o.remaining(&q), 0);
        let too_big = gcra(None, S, &q, 11);
        assert!(!too_big.allowed);
        assert_eq!(too_big.retry_after_nanos, u64::MAX);
    }

    fn req(limits: Vec<Limit>) -> RateLimitRequest {
        RateLimitRequest::new(
            TenantId::parse("acme").unwrap(),
            Some(UserId::parse("bob").unwrap()),
            limits,
        )
    }

    #[test]
    fn a_denial_writes_nothing_and_shadow_never_denies() {
        let r = req(vec![
            Limit::tenant(Quota::per_second(1).with_burst(5)),
            Limit::user(Quota::per_second(1).with_burst(1)),
        ]);
        let (d, w) = RateLimitDecision::decide(&r, &[None, Some(10 * S)], S);
        assert!(!d.allowed);
        assert_eq!(w, vec![None, None]);
        assert!(d.states[0].allowed && !d.states[1].allowed);
        assert_eq!(d.retry_after_secs(), Some(9));

        let r = req(vec![
            Limit::tenant(Quota::per_second(1).with_burst(5)),
            Limit::user(Quota::per_second(1).with_burst(1)).shadow(),
        ]);
        let (d, w) = RateLimitDecision::decide(&r, &[None, Some(10 * S)], S);
        assert!(d.allowed);
        assert!(w[0].is_some() && w[1].is_none());
        assert_eq!(d.retry_after(), None);
    }

    #[test]
    fn headers_follow_the_headline_limit() {
        let r = req(vec![
            Limit::tenant(Quota::per_hour(1000).with_burst(100)),
            Limit::user(Quota::per_hour(10).with_burst(2)),
        ]);
        let (d, _) = RateLimitDecision::decide(&r, &[None, None], S);
        let h: std::collections::HashMap<_, _> = d.headers().into_iter().collect();
        assert_eq!(h["x-ratelimit-limit"], "10");
        assert_eq!(h["x-ratelimit-remaining"], "1");
        assert_eq!(h["x-ratelimit-reset"], "360");
        assert_eq!(
            h["ratelimit-policy"],
            "\"tenant-3600\";q=1000;w=3600, \"user-3600\";q=10;w=3600"
        );
        assert_eq!(
            h["ratelimit"],
            "\"tenant-3600\";r=99;t=4, \"user-3600\";r=1;t=360"
        );
        assert!(!h.contains_key("retry-after"));
    }

    #[test]
    fn a_denial_names_its_limit_and_when_to_retry() {
        let r = req(vec![
            Limit::tenant(Quota::per_second(1).with_burst(5)),
            Limit::user(Quota::per_second(1).with_burst(1)),
        ]);
        let (d, _) = RateLimitDecision::decide(&r, &[None, Some(10 * S)], S);
        assert_eq!(
            d.headers(),
            vec![
                ("x-ratelimit-limit", "1".to_owned()),
                ("x-ratelimit-remaining", "0".to_owned()),
                ("x-ratelimit-reset", "9".to_owned()),
                (
                    "ratelimit-policy",
                    "\"tenant-1\";q=1;w=1, \"user-1\";q=1;w=1".to_owned()
                ),
                (
                    "ratelimit",
                    "\"tenant-1\";r=5;t=0, \"user-1\";r=0;t=9".to_owned()
                ),
                ("retry-after", "9".to_owned()),
            ]
        );
        assert_eq!(RateLimitDecision::unlimited().headers(), vec![]);
    }

    #[test]
    fn limit_states_spill_past_the_inline_capacity() {
        let r = req((1..=6)
            .map(|m| Limit::tenant(Quota::per_minute(m)))
            .collect());
        let (d, _) = RateLimitDecision::decide(&r, &[None; 6], S);
        assert_eq!(d.states.len(), 6);
        assert_eq!(
            d.states
                .iter()
                .map(|s| s.limit.quota.limit)
                .collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
        let copy: LimitStates = d.states.iter().copied().collect();
        assert_eq!(copy, d.states);
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(ceil_secs_at_least_one(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_secs_at_least_one(Duration::ZERO), 1);
        assert_eq!(ceil_secs_at_least_one(Duration::from_millis(1001)), 2);
    }

    #[test]
    fn one_limit_per_scope_and_period() {
        let enforced = Limit::tenant(Quota::per_hour(1000).with_burst(100));
        let shadow = Limit::tenant(Quota::per_hour(500).with_burst(50)).shadow();
        let err = req(vec![enforced, shadow]).validate().unwrap_err();
        assert_eq!(crate::Error::from(err).kind(), crate::ErrorKind::Invalid);
        // The same period under another scope, or another period, is fine.
        let user = Limit::user(Quota::per_hour(10));
        let minute = Limit::tenant(Quota::per_minute(50)).shadow();
        assert!(req(vec![enforced, user, minute]).validate().is_ok());
        // Also when the duplicates are not next to each other, and for user limits.
        let twice = req(vec![user, enforced, Limit::user(Quota::per_hour(20))]);
        assert!(twice.validate().is_err());
    }

    #[test]
    fn periods_are_bounded() {
        let ten_years = Quota::new(1, Quota::MAX_PERIOD_SECS);
        assert!(req(vec![Limit::tenant(ten_years)]).validate().is_ok());
        for period in [Quota::MAX_PERIOD_SECS + 1, u64::MAX] {
            let r = req(vec![Limit::user(Quota::new(7, period))]);
            assert!(r.validate().is_err(), "period {period}");
        }
        assert!(
            req(vec![Limit::tenant(Quota::per_hour(0))])
                .validate()
                .is_err()
        );
    }

    #[test]
    fn user_limits_need_a_user() {
        let mut r = req(vec![
            Limit::tenant(Quota::per_second(1)),
            Limit::user(Quota::per_second(1)),
        ]);
        r.user = None;
        assert_eq!(r.applicable().count(), 1);
    }
}
