//! [`Authenticate`]: verifies the bearer token with the configured
//! [`TokenVerifier`](tenancy_core::TokenVerifier) and hands the verified
//! [`Claims`](tenancy_core::Claims) to the next layers in the request's
//! [`RequestMeta`](tenancy_http::RequestMeta) ([`RequestMeta::claims`](tenancy_http::RequestMeta::claims)).
//!
//! Every failure (no header, two headers, not `Bearer`, oversized, refused by the verifier)
//! answers the same 401 with `WWW-Authenticate: Bearer`; the reason goes to the log, the
//! `tenancy_auth_failures_total` counter and the audit trail. A verifier that cannot decide
//! answers 503. Public routes pass without a token.
//!
//! ```
//! use std::convert::Infallible;
//! use tenancy_tower::AuthenticateLayer;
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
//!     .layer(AuthenticateLayer::new(tenancy))
//!     .service_fn(|_req: http::Request<axum::body::Body>| async {
//!         Ok::<_, Infallible>(http::Response::new(axum::body::Body::from("secret")))
//!     });
//! let resp = svc.oneshot(http::Request::new(axum::body::Body::empty())).await?;
//! assert_eq!(resp.status(), 401);
//! assert_eq!(resp.headers()["www-authenticate"], "Bearer");
//! # Ok(()) }
//! ```

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_service::Service;

use crate::future::{After, ResponseFuture, bare};
use crate::head::{header, meta_for};

tenancy_layer!(
    /// Bearer authentication: see the [module docs](self).
    Authenticate,
    /// Applies [`Authenticate`].
    AuthenticateLayer
);

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Authenticate<S>
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
        if meta.is_public() {
            return ResponseFuture::inner(self.inner.call(req), After::Nothing, None);
        }
        let tenancy = self.tenancy.clone();
        let fut = Box::pin(async move {
            // The header is read inside: the token is verified where it lies in the request.
            let authorization = header(req.headers(), "authorization");
            tenancy
                .authenticate(&meta, authorization)
                .await
                .map_err(bare)?;
            Ok((req, After::Nothing))
        });
        ResponseFuture::decide(fut, &mut self.inner, None)
    }
}
