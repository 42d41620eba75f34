//! `tenancy-core`: the vocabulary and the backend traits of the tenancy crates.
//!
//! Everything a multi-tenant service needs to talk about who is calling, for which tenant,
//! with which rights and under which limits, with no web framework, database or Redis in it:
//!
//! - identifiers with checked parsing: [`TenantId`], [`UserId`], [`SessionId`], [`RequestId`];
//! - the token model: [`Claims`], [`Role`], [`Permission`], and the request's
//!   [`TenantContext`];
//! - tiers and quotas: [`Quota`], [`Tier`], [`TierCatalog`], [`TenantSettings`];
//! - the traits that backends implement: [`TokenVerifier`], [`RateLimiter`] (+ [`QuotaAdmin`]),
//!   [`SessionStore`] (+ [`SessionAdmin`]), [`Denylist`], [`TenantCache`], [`TenantDirectory`],
//!   [`AuditSink`], [`HealthCheck`]. The request path's four (verifier, directory, limiter,
//!   audit sink) each have a `try_*` method that answers without waiting when it can
//!   ([`TokenVerifier::try_verify`], [`TenantDirectory::try_get`],
//!   [`RateLimiter::try_check`], [`AuditSink::try_record`]), so that a request decided in
//!   memory costs no future;
//! - a [`Clock`] so that expiry and limits are tested on a fake clock;
//! - in-memory backends ([`memory`]) and conformance suites ([`testkit`]).
//!
//! ```
//! use std::sync::Arc;
//! use tenancy_core::{memory::MemoryRateLimiter, Claims, Limit, RateLimitRequest, RateLimiter, TenantContext};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tenancy_core::Error> {
//! let claims = Claims::from_json(br#"{"iss":"https://id.example","aud":"api","sub":"bob",
//!     "exp":4102444800,"tenant_id":"acme","user_id":"bob","user_role":"user",
//!     "permissions":["records:read"]}"#).map_err(tenancy_core::Error::Rejected)?;
//! let ctx = TenantContext::from_claims(&claims);
//! ctx.require(&"records:read".parse()?)?;
//!
//! let limiter: Arc<dyn RateLimiter> = Arc::new(MemoryRateLimiter::new());
//! let limits = tenancy_core::TierCatalog::default()
//!     .get(&"standard".parse()?)
//!     .map(|t| vec![Limit::tenant(t.tenant), Limit::user(t.user)])
//!     .unwrap_or_default();
//! let decision = limiter.check(&RateLimitRequest::new(ctx.tenant, Some(ctx.user), limits)).await?;
//! assert!(decision.allowed);
//! # Ok(()) }
//! ```
//!
//! # Features
//! | feature   | enables                                                        | default |
//! |-----------|----------------------------------------------------------------|---------|
//! | `memory`  | the in-memory backends in [`memory`]                           | yes     |
//! | `testkit` | the conformance suites in [`testkit`] (pulls in `tokio`)       | no      |

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod audit;
mod cache;
mod claims;
mod clock;
mod context;
mod denylist;
mod directory;
pub mod error;
mod hash;
mod health;
mod id;
mod ratelimit;
mod role;
mod session;
mod tier;
mod token;

#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use audit::{Actor, AuditEvent, AuditSink, EventId, Origin, Outcome, ResourceRef, TryRecord};
pub use cache::{
    CACHE_KEY_MAX_LEN, CacheStats, MAX_CACHE_TTL, MAX_CACHE_VALUE_BYTES, TenantCache,
    check_cache_entry, check_cache_key,
};
pub use claims::{Audience, Claims};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock, system_clock};
pub use context::TenantContext;
pub use denylist::{Denylist, MAX_JTI_BYTES, check_jti};
pub use directory::{TenantDirectory, UPDATE_ATTEMPTS, Upsert, update_settings};
pub use error::{BoxError, Denial, Error, ErrorKind, ParseError, Result, TokenRejection};
pub use hash::UniformHasher;
pub use health::{Health, HealthCheck, HealthStatus};
pub use id::{
    REQUEST_ID_MAX_LEN, RequestId, SessionId, TENANT_ID_MAX_LEN, TenantId, USER_ID_MAX_LEN, UserId,
};
pub use ratelimit::{
    DecisionSource, FailurePolicy, GcraOutcome, Limit, LimitMode, LimitScope, LimitState,
    LimitStates, QuotaAdmin, RateLimitDecision, RateLimitHeaders, RateLimitRequest, RateLimiter,
    gcra,
};
pub use role::{CustomRole, Permission, PermissionSet, Role};
pub use session::{
    DEFAULT_ABSOLUTE_TTL, DEFAULT_IDLE_TIMEOUT, MAX_SESSION_DATA_BYTES, MAX_SESSION_TTL,
    MIN_SESSION_TTL, NewSession, Session, SessionAdmin, SessionData, SessionStore,
};
pub use tier::{
    EffectiveLimits, Quota, QuotaOverrides, TenantSettings, TenantStatus, Tier, TierCatalog,
    TierName,
};
pub use token::TokenVerifier;
