//! `tenancy-tower`: tower layers that make a service multi-tenant, and axum extractors.
//!
//! | layer | does |
//! |---|---|
//! | [`SetRequestId`] | request id, route rules, client address, span, head bound, metrics |
//! | [`Authenticate`] | bearer token → verified claims, or 401 |
//! | [`ResolveTenant`] | claims → tenant context; 403 on tenant header mismatch, unknown or suspended tenant (a mismatch and a suspended tenant count against the user's limits: 429 once exhausted) |
//! | [`RateLimit`] | per-tenant and per-user quotas; rate-limit headers; 429 / 503 |
//! | [`Audit`] | audit events for audited routes and denials |
//! | [`TenancyLayer`] | all of the above, in that order |
//! | `DrainBodyLayer` (feature `axum`) | outside the rest: reads what is left of a refused request's body, so that the answer reaches a client still sending it |
//!
//! Each is a `Layer` + `Service` with `type Error = S::Error`: a denial is a problem+json
//! response, never an error. The layers work with any `http` service whose response body
//! can be built from `Bytes` (axum, hyper, tonic); the decisions themselves live in
//! [`tenancy_http`] and are shared with `tenancy-actix`.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//! use axum::{routing::get, Router};
//! use tenancy_core::memory::{MemoryAuditSink, MemoryRateLimiter, MemoryTenantDirectory};
//! use tenancy_http::RouteRule;
//! use tenancy_tower::{DrainBodyLayer, TenancyLayer, Tenant};
//!
//! # async fn run(verifier: Arc<dyn tenancy_core::TokenVerifier>) -> Result<(), Box<dyn std::error::Error>> {
//! let tenancy = TenancyLayer::builder(
//!     verifier,
//!     Arc::new(MemoryTenantDirectory::new()),
//!     Arc::new(MemoryRateLimiter::new()),
//!     Arc::new(MemoryAuditSink::new()),
//! )
//! .with_public_route("/health")?
//! .with_route(RouteRule::new("/v1/admin/{*rest}")?.exempt().audit("admin.request")?)
//! .build()?;
//!
//! let app = Router::new()
//!     .route("/health", get(|| async { "ok" }))
//!     .route("/v1/me", get(|Tenant(ctx): Tenant| async move { ctx.tenant.to_string() }))
//!     .layer(TenancyLayer::new(tenancy))
//!     .layer(DrainBodyLayer::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! The layers bound what a request carries (its headers, its token); the server bounds the
//! connection. `axum::serve` sets no limit on how long a client may take to send a request's
//! head: in production serve behind a proxy that sets one, or with hyper's http1 builder given
//! a timer and `header_read_timeout` (as `tenancy-server` does).
//!
//! # Features
//! | feature | enables | default |
//! |---------|---------|---------|
//! | `axum`  | the extractors [`Tenant`], `Option<Tenant>` and [`RequirePermission`]; route templates from `MatchedPath`; peer addresses from `ConnectInfo<SocketAddr>` | no |
//! | `db`    | the [`TenantTx`] extractor: a `tenancy_db` transaction bound to the request's tenant (implies `axum`) | no |

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[macro_use]
mod macros;

pub mod audit;
pub mod authenticate;
#[cfg(feature = "db")]
pub mod db;
#[cfg(feature = "axum")]
pub mod drain;
pub mod error;
#[cfg(feature = "axum")]
pub mod extract;
mod future;
mod head;
pub mod rate_limit;
pub mod request_id;
pub mod resolve;
pub mod stack;

pub use audit::{Audit, AuditLayer};
pub use authenticate::{Authenticate, AuthenticateLayer};
#[cfg(feature = "db")]
pub use db::TenantTx;
#[cfg(feature = "axum")]
pub use drain::{DrainBody, DrainBodyLayer};
pub use error::{Error, Result};
#[cfg(feature = "axum")]
pub use extract::{RequirePermission, Tenant};
pub use future::ResponseFuture;
pub use head::PeerAddr;
pub use rate_limit::{RateLimit, RateLimitLayer};
pub use request_id::{SetRequestId, SetRequestIdLayer};
pub use resolve::{ResolveTenant, ResolveTenantLayer};
pub use stack::{TenancyLayer, TenancyService};
pub use tenancy_http::{self as http_core, AuditNote, DrainLimits, Tenancy, TenancyBuilder};
#[cfg(feature = "axum")]
pub use tenancy_http::{PermissionName, permission};
