//! [`TenancyLayer`]: every tenancy layer, stacked in the right order from one configuration.
//!
//! `SetRequestId` → `Authenticate` → `ResolveTenant` → `RateLimit` → `Audit` → your service.
//!
//! ```
//! use std::convert::Infallible;
//! use tenancy_tower::TenancyLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # use std::sync::Arc;
//! # use tenancy_core::memory::{MemoryAuditSink, MemoryRateLimiter, MemoryTenantDirectory};
//! # #[derive(Debug)] struct Refuse;
//! # #[async_trait::async_trait] impl tenancy_core::TokenVerifier for Refuse {
//! #     async fn verify(&self, _: &str) -> tenancy_core::Result<tenancy_core::Claims> {
//! #         Err(tenancy_core::Error::Rejected(tenancy_core::TokenRejection::BadSignature))
//! #     }
//! # }
//! # let (verifier, directory, limiter, audit) = (Arc::new(Refuse), Arc::new(MemoryTenantDirectory::new()),
//! #     Arc::new(MemoryRateLimiter::new()), Arc::new(MemoryAuditSink::new()));
//! let tenancy = TenancyLayer::builder(verifier, directory, limiter, audit)
//!     .with_public_route("/health")?
//!     .with_exempt_route("/v1/admin/{*rest}")?
//!     .build()?;
//! let svc = ServiceBuilder::new()
//!     .layer(TenancyLayer::new(tenancy))
//!     .service_fn(|_req: http::Request<axum::body::Body>| async {
//!         Ok::<_, Infallible>(http::Response::new(axum::body::Body::from("ok")))
//!     });
//! let health = http::Request::builder().uri("/health").body(axum::body::Body::empty())?;
//! assert_eq!(svc.clone().oneshot(health).await?.status(), 200);
//! let me = http::Request::builder().uri("/v1/me").body(axum::body::Body::empty())?;
//! let resp = svc.oneshot(me).await?;
//! assert_eq!(resp.status(), 401);
//! assert!(resp.headers().contains_key("x-request-id"));
//! # Ok(()) }
//! ```

use std::sync::Arc;

use tenancy_core::{AuditSink, RateLimiter, TenantDirectory, TokenVerifier};
use tenancy_http::{Tenancy, TenancyBuilder};
use tower_layer::Layer;

use crate::{Audit, Authenticate, RateLimit, ResolveTenant, SetRequestId};

/// The service [`TenancyLayer`] produces.
pub type TenancyService<S> = SetRequestId<Authenticate<ResolveTenant<RateLimit<Audit<S>>>>>;

/// Stacks [`SetRequestId`], [`Authenticate`], [`ResolveTenant`], [`RateLimit`] and [`Audit`].
#[derive(Debug, Clone)]
pub struct TenancyLayer {
    tenancy: Tenancy,
}

impl TenancyLayer {
    /// The stack deciding with `tenancy`.
    pub fn new(tenancy: Tenancy) -> Self {
        Self { tenancy }
    }

    /// Starts the shared configuration with the four backends; add tiers, trusted proxies
    /// and route rules, `build()` it, and pass it to [`TenancyLayer::new`].
    pub fn builder(
        verifier: Arc<dyn TokenVerifier>,
        directory: Arc<dyn TenantDirectory>,
        limiter: Arc<dyn RateLimiter>,
        audit: Arc<dyn AuditSink>,
    ) -> TenancyBuilder {
        Tenancy::builder(verifier, directory, limiter, audit)
    }

    /// The shared configuration.
    pub fn tenancy(&self) -> &Tenancy {
        &self.tenancy
    }
}

impl From<Tenancy> for TenancyLayer {
    fn from(tenancy: Tenancy) -> Self {
        Self::new(tenancy)
    }
}

impl<S> Layer<S> for TenancyLayer {
    type Service = TenancyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let t = &self.tenancy;
        SetRequestId::new(
            Authenticate::new(
                ResolveTenant::new(
                    RateLimit::new(Audit::new(inner, t.clone()), t.clone()),
                    t.clone(),
                ),
                t.clone(),
            ),
            t.clone(),
        )
    }
}
