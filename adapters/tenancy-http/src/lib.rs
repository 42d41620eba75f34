//! `tenancy-http`: the request decisions of the tenancy adapters, free of any web framework.
//!
//! `tenancy-tower` (tower layers, axum extractors) and `tenancy-actix` (actix-web middleware
//! and extractors) both call [`Tenancy`]; neither writes a rule of its own. So every
//! framework answers every request the same: same status, same headers, same problem body.
//!
//! - [`Tenancy`]: request id, bearer authentication, tenant resolution, rate limits, audit,
//!   metrics, in request order;
//! - [`Rejection`] and [`Problem`]: RFC 9457 problem+json answers;
//! - [`TrustedProxies`]: the client address through trusted proxies only, from the one header
//!   they write ([`ForwardedHeader`]);
//! - [`RouteTable`] / [`RouteRule`]: public, exempt and audited routes;
//! - [`TenantLabels`] and the metric names in [`metrics`].
//!
//! ```
//! use tenancy_http::{RouteRule, TrustedProxies};
//!
//! let admin = RouteRule::new("/v1/admin/{*rest}")?.exempt().audit("admin.request")?;
//! assert!(admin.is_exempt());
//! let proxies = TrustedProxies::parse(["10.0.0.0/8", "fd00::/8"])?;
//! assert!(proxies.is_trusted("10.2.3.4".parse().unwrap()));
//! # Ok::<(), tenancy_http::Error>(())
//! ```
//!
//! # Features
//! | feature | enables | default |
//! |---------|---------|---------|
//! | —       | this crate has no optional features | — |

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod drain;
pub mod error;
pub mod metrics;
pub mod permission;
pub mod problem;
pub mod proxy;
pub mod routes;
pub mod tenancy;

pub use drain::{DrainFuture, DrainLimits, drain};
pub use error::{Error, Result};
pub use metrics::TenantLabels;
pub use permission::{PermissionName, PermissionRefusal, require_permission};
pub use problem::{AuthFailure, PROBLEM_JSON, Problem, Rejection, RejectionKind};
pub use proxy::{ForwardedHeader, IpNet, MAX_FORWARDED_HOPS, TrustedProxies};
pub use routes::{AuditSpec, RouteMatch, RouteRule, RouteTable};
pub use tenancy::{
    AuditNote, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_TENANT_LABELS, DEFAULT_MAX_TOKEN_BYTES,
    DEFAULT_TENANT_HEADER, Header, PendingAudit, REQUEST_ID_HEADER, RequestHead, RequestMeta,
    Resolved, Tenancy, TenancyBuilder, UNMATCHED_ROUTE, shared_header_values,
};
