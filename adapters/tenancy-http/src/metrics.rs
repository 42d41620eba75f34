//! Metrics through the [`metrics`] facade, with a bounded tenant label.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `tenancy_http_requests_total` | counter | `tenant`, `route`, `status` |
//! | `tenancy_http_request_duration_seconds` | histogram | `tenant`, `route` |
//! | `tenancy_ratelimit_decisions_total` | counter | `outcome` (`allowed`, `denied`, `bypassed`, `exempt`, `fail_open`, `local_fallback`, `error`) |
//! | `tenancy_auth_failures_total` | counter | `reason` |
//! | `tenancy_audit_failures_total` | counter | — |
//!
//! Why the tenant label is bounded: every distinct label value is a time series kept forever
//! by the recorder. The first `max` tenants seen get their own label; later ones share
//! `other`, so a service with a million tenants cannot exhaust its metrics backend.
//! The route label is a route template (or `unmatched`), never a raw path.
//!
//! ```
//! use tenancy_core::TenantId;
//! use tenancy_http::TenantLabels;
//!
//! let labels = TenantLabels::new(1);
//! assert_eq!(labels.label(Some(&TenantId::parse("acme")?)), "acme");
//! assert_eq!(labels.label(Some(&TenantId::parse("globex")?)), "other");
//! assert_eq!(labels.label(Some(&TenantId::parse("acme")?)), "acme");
//! assert_eq!(labels.label(None), "none");
//! # Ok::<(), tenancy_core::ParseError>(())
//! ```

use std::collections::HashSet;
use std::sync::RwLock;

use tenancy_core::TenantId;

/// Requests by tenant, route and status.
pub const REQUESTS_TOTAL: &str = "tenancy_http_requests_total";
/// Request latency in seconds.
pub const REQUEST_DURATION_SECONDS: &str = "tenancy_http_request_duration_seconds";
/// Rate-limit decisions by outcome.
pub const RATELIMIT_DECISIONS_TOTAL: &str = "tenancy_ratelimit_decisions_total";
/// Authentication failures by reason.
pub const AUTH_FAILURES_TOTAL: &str = "tenancy_auth_failures_total";
/// Audit events that could not be handed to the sink.
pub const AUDIT_FAILURES_TOTAL: &str = "tenancy_audit_failures_total";

/// The label for tenants beyond the bound.
pub const OTHER: &str = "other";
/// The label for requests without a tenant.
pub const NONE: &str = "none";

/// Hands out tenant label values, at most `max` distinct tenants.
#[derive(Debug)]
pub struct TenantLabels {
    max: usize,
    seen: RwLock<HashSet<TenantId>>,
}

impl TenantLabels {
    /// At most `max` tenants get their own label.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            seen: RwLock::new(HashSet::new()),
        }
    }

    /// The label for `tenant`.
    pub fn label(&self, tenant: Option<&TenantId>) -> String {
        let Some(tenant) = tenant else {
            return NONE.to_owned();
        };
        {
            let seen = self
                .seen
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen.contains(tenant) {
                return tenant.as_str().to_owned();
            }
            if seen.len() >= self.max {
                return OTHER.to_owned();
            }
        }
        let mut seen = self
            .seen
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(tenant) || seen.len() < self.max {
            seen.insert(tenant.clone());
            tenant.as_str().to_owned()
        } else {
            OTHER.to_owned()
        }
    }
}

pub(crate) fn auth_failure(reason: &'static str) {
    metrics::counter!(AUTH_FAILURES_TOTAL, "reason" => reason).increment(1);
}

pub(crate) fn limiter(outcome: &'static str) {
    metrics::counter!(RATELIMIT_DECISIONS_TOTAL, "outcome" => outcome).increment(1);
}

pub(crate) fn audit_failure() {
    metrics::counter!(AUDIT_FAILURES_TOTAL).increment(1);
}

pub(crate) fn request(tenant: String, route: String, status: u16, seconds: f64) {
    metrics::histogram!(
        REQUEST_DURATION_SECONDS,
        "tenant" => tenant.clone(),
        "route" => route.clone()
    )
    .record(seconds);
    metrics::counter!(
        REQUESTS_TOTAL,
        "tenant" => tenant,
        "route" => route,
        "status" => status.to_string()
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_holds_under_many_tenants() {
        let labels = TenantLabels::new(3);
        let distinct: HashSet<String> = (0..100)
            .map(|i| labels.label(Some(&TenantId::parse(&format!("t{i}")).unwrap())))
            .collect();
        assert_eq!(distinct.len(), 4);
        assert!(distinct.contains(OTHER));
    }
}
