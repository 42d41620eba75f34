//! Tiers, quotas and per-tenant settings.
//!
//! A [`Quota`] is a rate (`limit` per `period`) with a `burst`: the number of requests that may
//! arrive back to back from a rested state. It is a token bucket (GCRA), not a fixed window:
//! over any stretch of one period, up to `burst + limit - 1` requests pass (a rested bucket's
//! burst, then the rate), so with the default burst of `limit` a client that has been idle may
//! make nearly twice `limit` in its first period. Give a smaller burst where the window bound
//! matters more than absorbing spikes. A [`Tier`] names a tenant quota and a per-user
//! quota; a [`TierCatalog`] holds the tiers a service offers. [`TenantSettings`] is what a
//! [`TenantDirectory`](crate::TenantDirectory) keeps per tenant: status, tier, overrides and an
//! emergency bypass window.
//!
//! ```
//! use tenancy_core::{Quota, QuotaOverrides, TenantSettings, TierCatalog, TierName};
//!
//! let catalog = TierCatalog::default();
//! let mut settings = TenantSettings::new(TierName::parse("standard")?);
//! assert_eq!(settings.limits(&catalog).unwrap().tenant.limit, 1000);
//!
//! settings.overrides = QuotaOverrides { tenant_per_hour: Some(10), tenant_burst: Some(2), ..Default::default() };
//! let limits = settings.limits(&catalog).unwrap();
//! assert_eq!(limits.tenant, Quota::per_hour(10).with_burst(2));
//! # Ok::<(), tenancy_core::ParseError>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::role::check_name;
use crate::{Clock, ParseError};

/// A rate limit: `limit` requests per `period_secs`, of which up to `burst` may arrive at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Requests allowed per period (at a steady rate).
    pub limit: u64,
    /// The period, in seconds.
    pub period_secs: u64,
    /// Requests allowed back to back from a rested state.
    pub burst: u64,
}

impl Quota {
    /// `limit` requests per `period`, with a burst of `limit`.
    pub const fn new(limit: u64, period_secs: u64) -> Self {
        Self {
            limit,
            period_secs,
            burst: limit,
        }
    }

    /// `limit` requests per second.
    pub const fn per_second(limit: u64) -> Self {
        Self::new(limit, 1)
    }

    /// `limit` requests per minute.
    pub const fn per_minute(limit: u64) -> Self {
        Self::new(limit, 60)
    }

    /// `limit` requests per hour.
    pub const fn per_hour(limit: u64) -> Self {
        Self::new(limit, 3600)
    }

    /// The same rate with another burst.
    pub const fn with_burst(mut self, burst: u64) -> Self {
        self.burst = burst;
        self
    }

    /// The period as a [`Duration`].
    pub const fn period(&self) -> Duration {
        Duration::from_secs(self.period_secs)
    }

    /// Requests of weight 1 that fit in a limit of this quota whose key is `used_nanos` from
    /// rested (GCRA's TAT minus now): `(burst × interval − used) / interval`, rounded down.
    ///
    /// ```
    /// use tenancy_core::Quota;
    ///
    /// let q = Quota::per_second(10).with_burst(5); // one request every 100 ms
    /// assert_eq!(q.remaining_after(0), 5);
    /// assert_eq!(q.remaining_after(150_000_000), 3);
    /// assert_eq!(q.remaining_after(u64::MAX), 0);
    /// ```
    pub fn remaining_after(&self, used_nanos: u64) -> u64 {
        let t = self.emission_interval_nanos();
        t.saturating_mul(self.burst).saturating_sub(used_nanos) / t
    }

    /// The time one request "costs": `period / limit`, in nanoseconds (at least 1).
    pub fn emission_interval_nanos(&self) -> u64 {
        let limit = self.limit.max(1);
        // u64 arithmetic for every period up to 584 years; 128-bit division is far slower and
        // this sits on the hot path of every limiter decision.
        let t = match self.period_secs.checked_mul(1_000_000_000) {
            Some(period) => period / limit,
            None => {
                let t = u128::from(self.period_secs) * 1_000_000_000 / u128::from(limit);
                u64::try_from(t).unwrap_or(u64::MAX)
            }
        };
        t.max(1)
    }

    /// The longest period a quota may have: ten years (of 365 days).
    ///
    /// Why this bound: a limiter keeps a limit's state until the limit is rested again, and a
    /// quota of one request per period holds it for a whole period; a period of centuries
    /// (`u64::MAX` seconds, a unit mistake) would leave keys in a shared store until the year
    /// 2554. Ten years is far beyond any quota period in use.
    pub const MAX_PERIOD_SECS: u64 = 10 * 365 * 24 * 3600;

    /// Checks that limit, period and burst are all positive, that the period is at most
    /// [`Quota::MAX_PERIOD_SECS`], and that a rested limit's burst takes at most as long to
    /// earn back (`burst × period / limit`). A burst above the limit is a valid token bucket
    /// (three per second, seven at once); the quotas of a tier's overrides may not have one
    /// (see [`Quota::validate_for_tier`]).
    ///
    /// Why the bound on the burst's time: a limiter's state is a time that far ahead of now,
    /// in nanoseconds since 1970, and beyond 2554 that no longer fits in 64 bits (one request
    /// per ten years with a burst of 53 would reach it): the state would stop at the largest
    /// time and the limit would never deny again.
    ///
    /// ```
    /// use tenancy_core::Quota;
    ///
    /// assert!(Quota::per_hour(100).validate().is_ok());
    /// assert!(Quota::per_second(3).with_burst(7).validate().is_ok());
    /// assert!(Quota::per_hour(0).validate().is_err());
    /// assert!(Quota::new(7, u64::MAX).validate().is_err());
    /// assert!(Quota::new(1, Quota::MAX_PERIOD_SECS).validate().is_ok());
    /// assert!(Quota::new(1, Quota::MAX_PERIOD_SECS).with_burst(2).validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), ParseError> {
        if self.limit == 0 || self.period_secs == 0 || self.burst == 0 {
            return Err(ParseError::new(
                "quota",
                "limit, period and burst must all be positive",
            ));
        }
        if self.period_secs > Self::MAX_PERIOD_SECS {
            return Err(ParseError::new(
                "quota",
                "the period must be at most ten years",
            ));
        }
        let burst_secs = u128::from(self.burst) * u128::from(self.period_secs);
        if burst_secs > u128::from(Self::MAX_PERIOD_SECS) * u128::from(self.limit) {
            return Err(ParseError::new(
                "quota",
                "the burst must take at most ten years to earn back (burst × period / limit)",
            ));
        }
        Ok(())
    }

    /// [`Quota::validate`], and the burst at most the limit: what a tenant's overrides must
    /// hold ([`QuotaOverrides::validate`]). A catalog's own tiers are checked with
    /// [`Quota::validate`] only: a short-period tier may be a token bucket that bursts.
    ///
    /// Why: a tier's quota is advertised as `limit` per period (`X-RateLimit-Limit`,
    /// `RateLimit-Policy`, the admin API), and a larger burst would let more requests through
    /// at once, from a rested state, than the whole period allows.
    ///
    /// ```
    /// use tenancy_core::Quota;
    ///
    /// assert!(Quota::per_hour(100).with_burst(10).validate_for_tier().is_ok());
    /// assert!(Quota::per_hour(10).with_burst(1000).validate_for_tier().is_err());
    /// ```
    pub fn validate_for_tier(&self) -> Result<(), ParseError> {
        self.validate()?;
        if self.burst > self.limit {
            return Err(ParseError::new(
                "quota",
                "the burst must not exceed the limit (it would let more requests through at \
                 once than the limit allows per period)",
            ));
        }
        Ok(())
    }
}

/// A tier's name: `[a-z][a-z0-9_.-]{0,63}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TierName(Arc<str>);

impl TierName {
    /// Parses a tier name.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        check_name(s).map_err(|r| ParseError::new("tier", r))?;
        Ok(Self(Arc::from(s)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TierName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TierName({:?})", &*self.0)
    }
}

impl fmt::Display for TierName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TierName {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Self::parse(s)
    }
}

impl Serialize for TierName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TierName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A tier: the quota of a whole tenant and the quota of each of its users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    /// The tier's name.
    pub name: TierName,
    /// Shared by every request of the tenant.
    pub tenant: Quota,
    /// Applied to each user of the tenant separately.
    pub user: Quota,
}

/// The tiers a service offers, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierCatalog(BTreeMap<TierName, Tier>);

impl TierCatalog {
    /// An empty catalog.
    pub fn empty() -> Self {
        Self(BTreeMap::new())
    }

    /// Adds or replaces a tier (quotas are validated).
    pub fn with_tier(mut self, tier: Tier) -> Result<Self, ParseError> {
        tier.tenant.validate()?;
        tier.user.validate()?;
        self.0.insert(tier.name.clone(), tier);
        Ok(self)
    }

    /// The tier called `name`.
    pub fn get(&self, name: &TierName) -> Option<&Tier> {
        self.0.get(name)
    }

    /// All tiers, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Tier> {
        self.0.values()
    }
}

impl Default for TierCatalog {
    /// `standard` (tenant 1000/hour, burst 100; user 300/hour, burst 30) and `premium`
    /// (tenant 5000/hour, burst 500; user 1500/hour, burst 150).
    fn default() -> Self {
        let tier = |name: &'static str, tenant: Quota, user: Quota| Tier {
            name: TierName(Arc::from(name)),
            tenant,
            user,
        };
        let mut map = BTreeMap::new();
        for t in [
            tier(
                "standard",
                Quota::per_hour(1000).with_burst(100),
                Quota::per_hour(300).with_burst(30),
            ),
            tier(
                "premium",
                Quota::per_hour(5000).with_burst(500),
                Quota::per_hour(1500).with_burst(150),
            ),
        ] {
            map.insert(t.name.clone(), t);
        }
        Self(map)
    }
}

/// Whether a tenant may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    /// Served normally.
    #[default]
    Active,
    /// Every request with this tenant's tokens is refused (403).
    Suspended,
}

impl TenantStatus {
    /// `"active"` or `"suspended"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
        }
    }
}

/// Per-tenant replacements for the tier's hourly quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaOverrides {
    /// Replaces the tenant quota with this many requests per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_per_hour: Option<u64>,
    /// Replaces the tenant quota's burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_burst: Option<u64>,
    /// Replaces each user's quota with this many requests per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_per_hour: Option<u64>,
    /// Replaces each user's quota's burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_burst: Option<u64>,
}

impl QuotaOverrides {
    /// The quota `base` becomes with the overrides applied, unclamped; `None` when neither
    /// overrides it (the tier's own quota then stands as the catalog checked it: a
    /// short-period tier may burst above its limit).
    fn overridden(per_hour: Option<u64>, burst: Option<u64>, base: Quota) -> Option<Quota> {
        if per_hour.is_none() && burst.is_none() {
            return None;
        }
        let mut q = match per_hour {
            // A new hourly rate keeps the tier's burst unless that exceeds the new rate.
            Some(limit) => Quota::per_hour(limit).with_burst(base.burst.min(limit)),
            None => base,
        };
        if let Some(b) = burst {
            q.burst = b;
        }
        Some(q)
    }

    /// The quota in force. An overridden one has its burst never above its limit: overrides
    /// that were stored without [`QuotaOverrides::validate`] (before it existed, or by another
    /// writer) cannot let more requests through at once than the limit advertises.
    fn apply(per_hour: Option<u64>, burst: Option<u64>, base: Quota) -> Quota {
        Self::overridden(per_hour, burst, base).map_or(base, |q| q.with_burst(q.burst.min(q.limit)))
    }

    /// Checks the quotas these overrides make of `tier`'s: each one they change must pass
    /// [`Quota::validate_for_tier`], so an override of zero, or a burst above the limit in force
    /// (`tenant_per_hour = 10` with `tenant_burst = 1000`), is refused here rather than
    /// clamped later. A quota they leave alone is the tier's, checked by the catalog.
    ///
    /// ```
    /// use tenancy_core::{QuotaOverrides, TierCatalog, TierName};
    ///
    /// let catalog = TierCatalog::default();
    /// let standard = catalog.get(&TierName::parse("standard")?).unwrap();
    /// let ok = QuotaOverrides { tenant_per_hour: Some(10), tenant_burst: Some(5), ..Default::default() };
    /// assert!(ok.validate(standard).is_ok());
    /// let bad = QuotaOverrides { tenant_per_hour: Some(10), tenant_burst: Some(1000), ..Default::default() };
    /// assert!(bad.validate(standard).is_err());
    /// # Ok::<(), tenancy_core::ParseError>(())
    /// ```
    pub fn validate(&self, tier: &Tier) -> Result<(), ParseError> {
        let tenant = Self::overridden(self.tenant_per_hour, self.tenant_burst, tier.tenant);
        let user = Self::overridden(self.user_per_hour, self.user_burst, tier.user);
        for (quota, what) in [
            (tenant, "tenant quota override"),
            (user, "user quota override"),
        ] {
            if let Some(q) = quota {
                q.validate_for_tier()
                    .map_err(|e| ParseError::new(what, e.reason().to_owned()))?;
            }
        }
        Ok(())
    }
}

/// The quotas in force for one tenant after overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveLimits {
    /// The tenant-wide quota.
    pub tenant: Quota,
    /// The per-user quota.
    pub user: Quota,
}

/// What a tenant directory keeps for one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSettings {
    /// Active or suspended.
    #[serde(default)]
    pub status: TenantStatus,
    /// The tier whose quotas apply.
    pub tier: TierName,
    /// Per-tenant quota overrides.
    #[serde(default)]
    pub overrides: QuotaOverrides,
    /// Until this instant, the tenant's limits are not enforced (an audited emergency measure).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub bypass_until: Option<OffsetDateTime>,
}

impl TenantSettings {
    /// An active tenant on `tier` with no overrides.
    pub fn new(tier: TierName) -> Self {
        Self {
            status: TenantStatus::Active,
            tier,
            overrides: QuotaOverrides::default(),
            bypass_until: None,
        }
    }

    /// Checks the settings against `catalog`: the tier exists and the overrides pass
    /// [`QuotaOverrides::validate`] for it. Run it before storing settings.
    pub fn validate(&self, catalog: &TierCatalog) -> Result<(), ParseError> {
        let tier = catalog
            .get(&self.tier)
            .ok_or_else(|| ParseError::new("tier", "is not in the tier catalog"))?;
        self.overrides.validate(tier)
    }

    /// The quotas in force, or `None` when the tier is not in the catalog. A burst override
    /// above the limit in force is clamped to the limit (see [`TenantSettings::validate`],
    /// which refuses it).
    pub fn limits(&self, catalog: &TierCatalog) -> Option<EffectiveLimits> {
        let tier = catalog.get(&self.tier)?;
        let o = &self.overrides;
        Some(EffectiveLimits {
            tenant: QuotaOverrides::apply(o.tenant_per_hour, o.tenant_burst, tier.tenant),
            user: QuotaOverrides::apply(o.user_per_hour, o.user_burst, tier.user),
        })
    }

    /// Whether the emergency bypass is in force at `now`.
    pub fn is_bypassed(&self, now: OffsetDateTime) -> bool {
        self.bypass_until.is_some_and(|until| now < until)
    }

    /// Whether the emergency bypass is in force now by `clock`, which is read only for a
    /// tenant that has a bypass window (the common tenant costs no clock read).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tenancy_core::{ManualClock, TenantSettings, TierName};
    ///
    /// let clock = ManualClock::new();
    /// let mut s = TenantSettings::new(TierName::parse("standard")?);
    /// assert!(!s.is_bypassed_by(&clock));
    /// s.bypass_until = Some(tenancy_core::Clock::now(&clock) + Duration::from_secs(60));
    /// assert!(s.is_bypassed_by(&clock));
    /// clock.advance(Duration::from_secs(60));
    /// assert!(!s.is_bypassed_by(&clock));
    /// # Ok::<(), tenancy_core::ParseError>(())
    /// ```
    pub fn is_bypassed_by(&self, clock: &dyn Clock) -> bool {
        self.bypass_until.is_some_and(|until| clock.now() < until)
    }

    /// Whether the tenant is suspended.
    pub fn is_suspended(&self) -> bool {
        self.status == TenantStatus::Suspended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emission_interval() {
        assert_eq!(Quota::per_second(4).emission_interval_nanos(), 250_000_000);
        assert_eq!(
            Quota::per_hour(3600).emission_interval_nanos(),
            1_000_000_000
        );
        assert_eq!(Quota::per_second(u64::MAX).emission_interval_nanos(), 1);
        assert_eq!(Quota::new(1, u64::MAX).emission_interval_nanos(), u64::MAX);
        assert_eq!(
            Quota::new(1_000_000_000, u64::MAX / 2).emission_interval_nanos(),
            u64::MAX / 2
        );
    }

    #[test]
    fn zero_quotas_are_refused() {
        assert!(Quota::per_hour(0).validate().is_err());
        assert!(Quota::per_hour(5).with_burst(0).validate().is_err());
        assert!(Quota::new(1, Quota::MAX_PERIOD_SECS).validate().is_ok());
        assert!(
            Quota::new(1, Quota::MAX_PERIOD_SECS + 1)
                .validate()
                .is_err()
        );
        assert!(
            TierCatalog::empty()
                .with_tier(Tier {
                    name: TierName::parse("x").unwrap(),
                    tenant: Quota::per_hour(0),
                    user: Quota::per_hour(1)
                })
                .is_err()
        );
    }

    #[test]
    fn overrides_and_unknown_tiers() {
        let catalog = TierCatalog::default();
        let mut s = TenantSettings::new(TierName::parse("premium").unwrap());
        s.overrides.user_per_hour = Some(20);
        let l = s.limits(&catalog).unwrap();
        assert_eq!(l.tenant, Quota::per_hour(5000).with_burst(500));
        assert_eq!(l.user, Quota::per_hour(20).with_burst(20));
        s.tier = TierName::parse("gold").unwrap();
        assert!(s.limits(&catalog).is_none());
    }

    #[test]
    fn a_burst_above_the_limit_is_refused() {
        let err = Quota::per_hour(10)
            .with_burst(1000)
            .validate_for_tier()
            .unwrap_err();
        assert!(err.reason().contains("burst"), "{err}");
        assert!(
            Quota::per_hour(10)
                .with_burst(10)
                .validate_for_tier()
                .is_ok()
        );
        // A plain token bucket may burst above its rate.
        assert!(Quota::per_second(3).with_burst(7).validate().is_ok());
        // A catalog's own tier may burst (a per-second token bucket), and a tenant on it
        // without overrides has that burst: its settings are valid and the burst in force.
        let catalog = TierCatalog::empty()
            .with_tier(Tier {
                name: TierName::parse("x").unwrap(),
                tenant: Quota::per_second(10).with_burst(50),
                user: Quota::per_hour(1),
            })
            .unwrap();
        let mut s = TenantSettings::new(TierName::parse("x").unwrap());
        assert!(s.validate(&catalog).is_ok());
        assert_eq!(
            s.limits(&catalog).unwrap().tenant,
            Quota::per_second(10).with_burst(50)
        );
        // Overriding the user quota leaves the tenant quota's burst alone.
        s.overrides.user_per_hour = Some(5);
        assert!(s.validate(&catalog).is_ok());
        assert_eq!(s.limits(&catalog).unwrap().tenant.burst, 50);
        // Overriding the tenant quota's burst holds it to the limit.
        s.overrides.tenant_burst = Some(60);
        assert_eq!(
            s.validate(&catalog).unwrap_err().what(),
            "tenant quota override"
        );
        assert_eq!(s.limits(&catalog).unwrap().tenant.burst, 10);
    }

    #[test]
    fn a_burst_override_above_the_limit_is_refused_and_never_in_force() {
        let catalog = TierCatalog::default();
        let mut s = TenantSettings::new(TierName::parse("standard").unwrap());
        s.overrides = QuotaOverrides {
            tenant_per_hour: Some(10),
            tenant_burst: Some(1000),
            ..QuotaOverrides::default()
        };
        let err = s.validate(&catalog).unwrap_err();
        assert_eq!(err.what(), "tenant quota override");
        // Stored anyway (by an older writer): the limit in force lets no more than 10 at once.
        let l = s.limits(&catalog).unwrap();
        assert_eq!(l.tenant, Quota::per_hour(10).with_burst(10));
        assert!(l.tenant.validate_for_tier().is_ok());
        // A burst override alone, above the tier's limit (standard user: 300/hour).
        s.overrides = QuotaOverrides {
            user_burst: Some(301),
            ..QuotaOverrides::default()
        };
        assert_eq!(
            s.validate(&catalog).unwrap_err().what(),
            "user quota override"
        );
        assert_eq!(s.limits(&catalog).unwrap().user, Quota::per_hour(300));
        s.overrides.user_burst = Some(300);
        assert!(s.validate(&catalog).is_ok());
        s.tier = TierName::parse("gold").unwrap();
        assert_eq!(s.validate(&catalog).unwrap_err().what(), "tier");
    }

    #[test]
    fn bypass_window_and_serde() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut s = TenantSettings::new(TierName::parse("standard").unwrap());
        assert!(!s.is_bypassed(now));
        s.bypass_until = Some(now + Duration::from_secs(5));
        assert!(s.is_bypassed(now));
        assert!(!s.is_bypassed(now + Duration::from_secs(5)));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<TenantSettings>(&json).unwrap(), s);
        assert!(serde_json::from_str::<QuotaOverrides>(r#"{"tenant_per_hr":1}"#).is_err());
    }
}
