//! [`Audit`]: the innermost layer. After the handler answers, it records an audit event for
//! routes marked audited (action, resource, outcome from the status, who, from where), and
//! for any 401, 403 or 429 the handler gave itself. Events go to the
//! [`AuditSink`](tenancy_core::AuditSink) without blocking the response, except on routes
//! marked synchronous. A handler adds details by putting an
//! [`AuditNote`](tenancy_http::AuditNote) in its response's extensions.
//!
//! ```
//! use std::convert::Infallible;
//! use tenancy_http::AuditNote;
//! use tenancy_tower::AuditLayer;
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
//!     .layer(AuditLayer::new(tenancy))
//!     .service_fn(|_req: http::Request<axum::body::Body>| async {
//!         let mut resp = http::Response::new(axum::body::Body::from("created"));
//!         resp.extensions_mut().insert(AuditNote { resource_id: Some("42".into()), ..Default::default() });
//!         Ok::<_, Infallible>(resp)
//!     });
//! let resp = svc.oneshot(http::Request::new(axum::body::Body::empty())).await?;
//! assert_eq!(axum::body::to_bytes(resp.into_body(), 4096).await?, "created");
//! # Ok(()) }
//! ```

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_service::Service;

use crate::future::{After, ResponseFuture};
use crate::head::meta_for;

tenancy_layer!(
    /// Audit of responses: see the [module docs](self).
    Audit,
    /// Applies [`Audit`].
    AuditLayer
);

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Audit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let meta = meta_for(&self.tenancy, &mut req);
        ResponseFuture::inner(
            self.inner.call(req),
            After::Audit(self.tenancy.clone(), meta),
            None,
        )
    }
}
