//! `tenancy-actix`: actix-web middleware that makes a service multi-tenant, and extractors.
//!
//! | middleware | does |
//! |---|---|
//! | [`SetRequestId`] | request id, route rules, client address, span, head bound, metrics |
//! | [`Authenticate`] | bearer token → verified claims, or 401 |
//! | [`ResolveTenant`] | claims → tenant context; 403 on tenant header mismatch, unknown or suspended tenant (a mismatch and a suspended tenant count against the user's limits: 429 once exhausted) |
//! | [`RateLimit`] | per-tenant and per-user quotas; rate-limit headers; 429 / 503 |
//! | [`Audit`] | audit events for audited routes and denials |
//! | [`TenancyMiddleware`] | all of the above, in that order, in one service |
//! | [`DrainBody`] | wrapped outside the rest: reads what is left of a refused request's body, so that the answer reaches a client still sending it |
//!
//! The decisions live in [`tenancy_http`] and are the very ones `tenancy-tower` makes, so an
//! actix-web app and an axum app built from the same [`Tenancy`] answer every request with
//! the same status, headers and problem body.
//!
//! ```no_run
//! use std::sync::Arc;
//! use actix_web::{web, App, HttpResponse, HttpServer};
//! use tenancy_core::memory::{MemoryAuditSink, MemoryRateLimiter, MemoryTenantDirectory};
//! use tenancy_actix::{DrainBody, TenancyMiddleware, Tenant};
//!
//! # async fn run(verifier: Arc<dyn tenancy_core::TokenVerifier>) -> Result<(), Box<dyn std::error::Error>> {
//! let tenancy = TenancyMiddleware::builder(
//!     verifier,
//!     Arc::new(MemoryTenantDirectory::new()),
//!     Arc::new(MemoryRateLimiter::new()),
//!     Arc::new(MemoryAuditSink::new()),
//! )
//! .with_public_route("/health")?
//! .with_exempt_route("/v1/admin/{*rest}")?
//! .build()?;
//!
//! HttpServer::new(move || {
//!     App::new()
//!         .wrap(TenancyMiddleware::new(tenancy.clone()))
//!         .wrap(DrainBody::default())
//!         .route("/health", web::get().to(|| async { "ok" }))
//!         .route("/v1/me", web::get().to(|Tenant(ctx): Tenant| async move {
//!             HttpResponse::Ok().body(ctx.tenant.to_string())
//!         }))
//! })
//! .bind("127.0.0.1:8080")?
//! .run()
//! .await?;
//! # Ok(()) }
//! ```
//!
//! # Features
//! | feature | enables | default |
//! |---------|---------|---------|
//! | `db`    | the [`TenantTx`] extractor: a `tenancy_db` transaction bound to the request's tenant | no |

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[cfg(feature = "db")]
pub mod db;
pub mod drain;
pub mod error;
pub mod extract;
mod head;
pub mod middleware;

#[cfg(feature = "db")]
pub use db::TenantTx;
pub use drain::{DrainBody, DrainBodyService};
pub use error::{Error, Result};
pub use extract::{RequirePermission, Tenant};
pub use middleware::{
    Audit, Authenticate, RateLimit, ResolveTenant, SetRequestId, TenancyMiddleware, TenancyService,
};
pub use tenancy_http::{self as http_core, AuditNote, DrainLimits, Tenancy, TenancyBuilder};
pub use tenancy_http::{PermissionName, permission};
