//! [`RateLimit`]: applies the tenant's quotas (tier from the
//! [`TierCatalog`](tenancy_core::TierCatalog), overrides from the directory) per tenant and
//! per user with the configured [`RateLimiter`](tenancy_core::RateLimiter), both decided in
//! one atomic step.
//!
//! Every limited response carries `X-RateLimit-Limit`, `X-RateLimit-Remaining`,
//! `X-RateLimit-Reset`, `RateLimit-Policy` and `RateLimit`; a refusal is a 429 with
//! `Retry-After` in whole seconds (at least 1). Super admins and exempt routes are not
//! limited. During a tenant's bypass window limits are observed, not enforced, and each
//! request they would have refused is audited. A limiter that cannot decide answers 503.
//!
//! ```
//! use std::convert::Infallible;
//! use tenancy_tower::RateLimitLayer;
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
//! # let tenancy = tenancy_http::Tenancy::builder(Arc::new(Refuse), Arc::new(MemoryTenantDirectory::new()),
//! #     Arc::new(MemoryRateLimiter::new()), Arc::new(MemoryAuditSink::new())).build()?;
//! let svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(tenancy))
//!     .service_fn(|_req: http::Request<axum::body::Body>| async {
//!         Ok::<_, Infallible>(http::Response::new(axum::body::Body::empty()))
//!     });
//! // It needs `ResolveTenant` in front of it (or `TenancyLayer`, which stacks them all).
//! let resp = svc.oneshot(http::Request::new(axum::body::Body::empty())).await?;
//! let body = axum::body::to_bytes(resp.into_body(), 4096).await?;
//! assert!(String::from_utf8_lossy(&body).contains("ResolveTenant"));
//! # Ok(()) }
//! ```

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tenancy_http::Rejection;
use tower_service::Service;

use crate::future::{After, ResponseFuture, bare};
use crate::head::meta_for;

tenancy_layer!(
    /// Per-tenant and per-user rate limits: see the [module docs](self).
    RateLimit,
    /// Applies [`RateLimit`].
    RateLimitLayer
);

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let meta = meta_for(&self.tenancy, &mut req);
        if meta.resolved().is_none() && !meta.is_public() {
            return ResponseFuture::rejected(
                Rejection::missing_layer("RateLimit", "ResolveTenant")
                    .with_request_id(meta.request_id()),
            );
        }
        let tenancy = self.tenancy.clone();
        let fut = Box::pin(async move {
            let headers = tenancy.rate_limit(&meta).await.map_err(bare)?;
            let after = if headers.is_empty() {
                After::Nothing
            } else {
                After::Headers(headers)
            };
            Ok((req, after))
        });
        ResponseFuture::decide(fut, &mut self.inner, None)
    }
}
