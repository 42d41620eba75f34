//! [`SetRequestId`]: the outermost layer. It gives the request its id (the client's
//! `X-Request-Id` when sane, else a fresh one), matches the route rules, resolves the client
//! address through trusted proxies, opens the `tenancy.request` tracing span, refuses an
//! oversized head (431), and on the way out sets `X-Request-Id` on every response and records
//! the request metrics.
//!
//! ```
//! use std::convert::Infallible;
//! use tenancy_tower::SetRequestIdLayer;
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
//!     .layer(SetRequestIdLayer::new(tenancy))
//!     .service_fn(|_req: http::Request<axum::body::Body>| async {
//!         Ok::<_, Infallible>(http::Response::new(axum::body::Body::from("hi")))
//!     });
//! let req = http::Request::builder().header("x-request-id", "abc-1").body(axum::body::Body::empty())?;
//! let resp = svc.oneshot(req).await?;
//! assert_eq!(resp.headers()["x-request-id"], "abc-1");
//! # Ok(()) }
//! ```

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_service::Service;

use crate::future::{After, ResponseFuture};
use crate::head::Head;

tenancy_layer!(
    /// Request id, route, client address, span, head bound, metrics: see the
    /// [module docs](self).
    SetRequestId,
    /// Applies [`SetRequestId`].
    SetRequestIdLayer
);

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SetRequestId<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let meta = self.tenancy.begin(&Head(&req));
        if let Err(r) = self.tenancy.check_headers(&meta, &Head(&req)) {
            self.tenancy.finish(&meta, r.status());
            return ResponseFuture::rejected(r);
        }
        req.extensions_mut().insert(meta.clone());
        let span = meta.span().clone();
        let fut = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        ResponseFuture::inner(fut, After::Finish(self.tenancy.clone(), meta), Some(span))
    }
}
