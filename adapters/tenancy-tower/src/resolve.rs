//! [`ResolveTenant`]: turns the verified claims into the request's
//! [`tenancy_core::TenantContext`], checked against the
//! [`TenantDirectory`](tenancy_core::TenantDirectory).
//!
//! The tenant comes from the verified `tenant_id` claim only. A tenant header
//! (`X-Tenant-Id`) that names another tenant answers 403, as do a tenant the directory does
//! not know and a suspended tenant; the first and the last count against the user's limits
//! and carry their headers, and become a 429 once a limit is exhausted. The context (with its tier and request id) and the
//! tenant's settings are kept in the request's [`RequestMeta`](tenancy_http::RequestMeta)
//! for the rate limit and the extractors.
//!
//! ```
//! use std::convert::Infallible;
//! use tenancy_tower::ResolveTenantLayer;
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
//! // Without `Authenticate` in front, the layer says what is missing.
//! let svc = ServiceBuilder::new()
//!     .layer(ResolveTenantLayer::new(tenancy))
//!     .service_fn(|_req: http::Request<axum::body::Body>| async {
//!         Ok::<_, Infallible>(http::Response::new(axum::body::Body::empty()))
//!     });
//! let resp = svc.oneshot(http::Request::new(axum::body::Body::empty())).await?;
//! assert_eq!(resp.status(), 500);
//! let body = axum::body::to_bytes(resp.into_body(), 4096).await?;
//! assert!(String::from_utf8_lossy(&body).contains("Authenticate"));
//! # Ok(()) }
//! ```

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tenancy_http::Rejection;
use tower_service::Service;

use crate::future::{After, ResponseFuture, bare};
use crate::head::{header, meta_for};

tenancy_layer!(
    /// Tenant resolution: see the [module docs](self).
    ResolveTenant,
    /// Applies [`ResolveTenant`].
    ResolveTenantLayer
);

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ResolveTenant<S>
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
        let Some(claims) = meta.claims().cloned() else {
            if meta.is_public() {
                return ResponseFuture::inner(self.inner.call(req), After::Nothing, None);
            }
            return ResponseFuture::rejected(
                Rejection::missing_layer("ResolveTenant", "Authenticate")
                    .with_request_id(meta.request_id()),
            );
        };
        let tenancy = self.tenancy.clone();
        let fut = Box::pin(async move {
            let tenant_header = header(req.headers(), tenancy.tenant_header());
            tenancy
                .resolve_tenant(&meta, &claims, tenant_header)
                .await
                .map_err(bare)?;
            Ok((req, After::Nothing))
        });
        ResponseFuture::decide(fut, &mut self.inner, None)
    }
}
