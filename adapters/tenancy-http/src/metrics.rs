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
//! `_other`, so a service with a million tenants cannot exhaust its metrics backend. A
//! tenant gets its label once the directory has resolved it: a request refused before (a
//! token for a tenant the directory does not know, a suspended tenant, a tenant header that
//! disagrees) is labelled `_unresolved`, so tokens for unknown tenants cannot use up the
//! bound; a request without a verified token is labelled `_none`. The three reserved labels
//! start with `_`, which no [`TenantId`] does. The route label is a route template (or
//! `unmatched`), never a raw path.
//!
//! ```
//! use tenancy_core::TenantId;
//! use tenancy_http::TenantLabels;
//!
//! let labels = TenantLabels::new(1);
//! assert_eq!(labels.label(Some(&TenantId::parse("acme")?)), "acme");
//! assert_eq!(labels.label(Some(&TenantId::parse("globex")?)), "_other");
//! assert_eq!(labels.label(Some(&TenantId::parse("acme")?)), "acme");
//! assert_eq!(labels.label(None), "_none");
//! # Ok::<(), tenancy_core::ParseError>(())
//! ```

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use metrics::SharedString;
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
pub const OTHER: &str = "_other";
/// The label for requests without a tenant (no verified token).
pub const NONE: &str = "_none";
/// The label for requests whose token names a tenant that was not resolved (unknown to the
/// directory, suspended, or refused before the lookup).
pub const UNRESOLVED: &str = "_unresolved";

/// Hands out tenant label values, at most `max` distinct tenants.
#[derive(Debug)]
pub struct TenantLabels {
    max: usize,
    /// Each admitted tenant with its label, shared so that a request's label is a reference
    /// count, not a new string.
    seen: RwLock<HashMap<TenantId, Arc<str>>>,
}

impl TenantLabels {
    /// At most `max` tenants get their own label.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            seen: RwLock::new(HashMap::new()),
        }
    }

    /// The label for `tenant`.
    pub fn label(&self, tenant: Option<&TenantId>) -> String {
        self.shared(tenant).to_string()
    }

    /// The label for `tenant`, as the `metrics` facade takes it (no copy of the name).
    pub(crate) fn shared(&self, tenant: Option<&TenantId>) -> SharedString {
        let Some(tenant) = tenant else {
            return SharedString::const_str(NONE);
        };
        {
            let seen = self
                .seen
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(label) = seen.get(tenant) {
                return SharedString::from_shared(Arc::clone(label));
            }
            if seen.len() >= self.max {
                return SharedString::const_str(OTHER);
            }
        }
        let mut seen = self
            .seen
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(label) = seen.get(tenant) {
            return SharedString::from_shared(Arc::clone(label));
        }
        if seen.len() < self.max {
            let label: Arc<str> = Arc::from(tenant.as_str());
            seen.insert(tenant.clone(), Arc::clone(&label));
            SharedString::from_shared(label)
        } else {
            SharedString::const_str(OTHER)
        }
    }
}

/// The status label: a shared string per status code, made once.
fn status_label(status: u16) -> SharedString {
    static LABELS: OnceLock<Vec<Arc<str>>> = OnceLock::new();
    let labels = LABELS.get_or_init(|| (100..1000u16).map(|s| Arc::from(s.to_string())).collect());
    match status
        .checked_sub(100)
        .and_then(|i| labels.get(usize::from(i)))
    {
        Some(label) => SharedString::from_shared(Arc::clone(label)),
        None => SharedString::from_owned(status.to_string()),
    }
}

pub(crate) fn auth_failure(reason: &'static str) {
    metrics::counter!(AUTH_FAILURES_TOTAL, "reason" => reason).increment(1);
}

/// A rate-limit decision's outcome, the `outcome` label of `tenancy_ratelimit_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimiterOutcome {
    Allowed,
    Bypassed,
    Denied,
    Error,
    Exempt,
    FailOpen,
    LocalFallback,
}

pub(crate) fn limiter(outcome: LimiterOutcome) {
    // One literal label per arm: the macro then keeps each key in a static (no label vector
    // built per request, as a label from a variable would need).
    use LimiterOutcome as O;
    let counter = match outcome {
        O::Allowed => metrics::counter!(RATELIMIT_DECISIONS_TOTAL, "outcome" => "allowed"),
        O::Bypassed => metrics::counter!(RATELIMIT_DECISIONS_TOTAL, "outcome" => "bypassed"),
        O::Denied => metrics::counter!(RATELIMIT_DECISIONS_TOTAL, "outcome" => "denied"),
        O::Error => metrics::counter!(RATELIMIT_DECISIONS_TOTAL, "outcome" => "error"),
        O::Exempt => metrics::counter!(RATELIMIT_DECISIONS_TOTAL, "outcome" => "exempt"),
        O::FailOpen => metrics::counter!(RATELIMIT_DECISIONS_TOTAL, "outcome" => "fail_open"),
        O::LocalFallback => {
            metrics::counter!(RATELIMIT_DECISIONS_TOTAL, "outcome" => "local_fallback")
        }
    };
    counter.increment(1);
}

pub(crate) fn audit_failure() {
    metrics::counter!(AUDIT_FAILURES_TOTAL).increment(1);
}

pub(crate) fn request(tenant: SharedString, route: SharedString, status: u16, seconds: f64) {
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
        "status" => status_label(status)
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_the_decimal_code() {
        for status in [100u16, 200, 204, 401, 429, 503, 599, 999, 1000, 0] {
            assert_eq!(status_label(status).as_ref(), status.to_string());
        }
    }

    #[test]
    fn bound_holds_under_many_tenants() {
        let labels = TenantLabels::new(3);
        let distinct: std::collections::HashSet<String> = (0..100)
            .map(|i| labels.label(Some(&TenantId::parse(&format!("t{i}")).unwrap())))
            .collect();
        assert_eq!(distinct.len(), 4);
        assert!(distinct.contains(OTHER));
    }
}
