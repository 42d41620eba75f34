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
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tenancy_core::RateLimitHeaders;
use tenancy_core::{AuditSink, RateLimiter, TenantDirectory, TokenVerifier};
use tenancy_http::{Rejection, RequestMeta, Tenancy, TenancyBuilder};
use tower_layer::Layer;
use tower_service::Service;

use crate::future::{After, ResponseFuture};
use crate::head::{Head, header};

/// The service [`TenancyLayer`] produces: [`SetRequestId`](crate::SetRequestId),
/// [`Authenticate`](crate::Authenticate), [`ResolveTenant`](crate::ResolveTenant),
/// [`RateLimit`](crate::RateLimit) and [`Audit`](crate::Audit) run as one service, with the
/// same decisions in the same order as the five layers stacked, and one response future
/// (the five layers stacked by hand would box a future each and clone the inner service at
/// each level).
///
/// `call` polls the decisions once: when every backend answers without waiting (their
/// `try_*` methods: a verifier's cache, a directory and a limiter in memory), the inner
/// service is called there and then; otherwise the decisions go on in the response future.
/// Either way `call` must run where the backends' futures can be polled (inside the server's
/// runtime, as hyper, axum and tonic call it).
#[derive(Debug, Clone)]
pub struct TenancyService<S> {
    inner: S,
    tenancy: Tenancy,
}

impl<S> TenancyService<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, tenancy: Tenancy) -> Self {
        Self { inner, tenancy }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for TenancyService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // SetRequestId
        let meta = self.tenancy.begin(&Head(&req));
        if let Err(r) = self.tenancy.check_headers(&meta, &Head(&req)) {
            self.tenancy.finish(&meta, r.status());
            return ResponseFuture::rejected(r);
        }
        // The one value the stack adds to the extensions: the claims, the tenant context and
        // the settings are kept in it as they are decided.
        req.extensions_mut().insert(meta.clone());
        let tenancy = self.tenancy.clone();
        let span = meta.span().clone();
        let fut = Box::pin(async move {
            // The handle and the meta come back either way: a rejection's response gets the
            // request id and the metrics too, without clones of them made up front.
            match decisions(&tenancy, &meta, req.headers()).await {
                Ok(headers) => Ok((req, After::Stack(tenancy, meta, headers))),
                Err(r) => Err((r, After::Finish(tenancy, meta))),
            }
        });
        ResponseFuture::decide(fut, &mut self.inner, Some(span))
    }
}

/// Authenticate, ResolveTenant and RateLimit, in that order: the rate-limit headers, or the
/// first rejection. The headers are read where they lie in the request: the token is verified
/// without a copy.
async fn decisions(
    tenancy: &Tenancy,
    meta: &RequestMeta,
    headers: &http::HeaderMap,
) -> Result<RateLimitHeaders, Rejection> {
    let public = meta.is_public();
    // Authenticate
    let claims = if public {
        None
    } else {
        let authorization = header(headers, "authorization");
        tenancy.authenticate(meta, authorization).await?
    };
    // ResolveTenant
    match claims {
        Some(claims) => {
            let tenant_header = header(headers, tenancy.tenant_header());
            tenancy.resolve_tenant(meta, claims, tenant_header).await?;
        }
        None if public => {}
        None => {
            return Err(Rejection::missing_layer("ResolveTenant", "Authenticate")
                .with_request_id(meta.request_id()));
        }
    }
    // RateLimit
    tenancy.rate_limit(meta).await
}

/// Stacks [`SetRequestId`](crate::SetRequestId), [`Authenticate`](crate::Authenticate),
/// [`ResolveTenant`](crate::ResolveTenant), [`RateLimit`](crate::RateLimit) and
/// [`Audit`](crate::Audit), as one [`TenancyService`].
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
        TenancyService::new(inner, self.tenancy.clone())
    }
}
