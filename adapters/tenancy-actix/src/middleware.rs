//! The actix-web middleware: [`SetRequestId`], [`Authenticate`], [`ResolveTenant`],
//! [`RateLimit`], [`Audit`], and [`TenancyMiddleware`] which runs all five in one service.
//!
//! Each is a [`Transform`] over the same [`Tenancy`] the tower layers use, and each stage
//! calls the same decision as its tower twin, so the answers match byte for byte. As with
//! actix-web's `wrap`, the middleware registered last runs first: prefer
//! [`TenancyMiddleware`], which keeps the order right.
//!
//! ```
//! use std::sync::Arc;
//! use actix_web::{test, web, App, HttpResponse};
//! use tenancy_actix::TenancyMiddleware;
//!
//! # #[actix_web::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # use tenancy_core::memory::{MemoryAuditSink, MemoryRateLimiter, MemoryTenantDirectory};
//! # #[derive(Debug)] struct Refuse;
//! # #[async_trait::async_trait] impl tenancy_core::TokenVerifier for Refuse {
//! #     async fn verify(&self, _: &str) -> tenancy_core::Result<tenancy_core::Claims> {
//! #         Err(tenancy_core::Error::Rejected(tenancy_core::TokenRejection::BadSignature))
//! #     }
//! # }
//! # let (verifier, directory, limiter, audit) = (Arc::new(Refuse), Arc::new(MemoryTenantDirectory::new()),
//! #     Arc::new(MemoryRateLimiter::new()), Arc::new(MemoryAuditSink::new()));
//! let tenancy = TenancyMiddleware::builder(verifier, directory, limiter, audit)
//!     .with_public_route("/health")?
//!     .build()?;
//! let app = test::init_service(
//!     App::new()
//!         .wrap(TenancyMiddleware::new(tenancy))
//!         .route("/health", web::get().to(|| async { HttpResponse::Ok().body("ok") }))
//!         .route("/v1/me", web::get().to(|| async { HttpResponse::Ok().finish() })),
//! )
//! .await;
//! let health = test::call_service(&app, test::TestRequest::get().uri("/health").to_request()).await;
//! assert_eq!(health.status(), 200);
//! let me = test::call_service(&app, test::TestRequest::get().uri("/v1/me").to_request()).await;
//! assert_eq!(me.status(), 401);
//! assert_eq!(me.headers().get("www-authenticate").unwrap(), "Bearer");
//! # Ok(()) }
//! ```

use std::future::{Ready, ready};
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderMap, HeaderValue};
use actix_web::{Error as ActixError, HttpMessage, HttpResponse, ResponseError};
use tenancy_core::{AuditSink, RateLimiter, TenantDirectory, TokenVerifier};
use tenancy_http::{AuditNote, Header, Rejection, RequestMeta, Tenancy, TenancyBuilder};
use tracing::Instrument;

use crate::head::{Head, REQUEST_ID, meta_for, move_headers, render};

/// Which stages a middleware runs.
#[derive(Debug, Clone, Copy)]
struct Stages {
    request_id: bool,
    authenticate: bool,
    resolve: bool,
    rate_limit: bool,
    audit: bool,
}

const NONE: Stages = Stages {
    request_id: false,
    authenticate: false,
    resolve: false,
    rate_limit: false,
    audit: false,
};

macro_rules! transform {
    ($(#[$meta:meta])* $name:ident, $stages:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        pub struct $name {
            tenancy: Tenancy,
        }

        impl $name {
            /// The middleware deciding with `tenancy`.
            pub fn new(tenancy: Tenancy) -> Self {
                Self { tenancy }
            }
        }

        impl From<Tenancy> for $name {
            fn from(tenancy: Tenancy) -> Self {
                Self::new(tenancy)
            }
        }

        impl<S, B> Transform<S, ServiceRequest> for $name
        where
            S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = ActixError> + 'static,
            B: MessageBody + 'static,
        {
            type Response = ServiceResponse<EitherBody<B>>;
            type Error = ActixError;
            type Transform = TenancyService<S>;
            type InitError = ();
            type Future = Ready<Result<Self::Transform, Self::InitError>>;

            fn new_transform(&self, service: S) -> Self::Future {
                ready(Ok(TenancyService {
                    service: Rc::new(service),
                    tenancy: self.tenancy.clone(),
                    stages: $stages,
                }))
            }
        }
    };
}

transform!(
    /// Request id (echoed when sane), route rules, client address through trusted proxies,
    /// the `tenancy.request` span, the head bound (431); on the way out `X-Request-Id` on
    /// every response and the request metrics.
    SetRequestId,
    Stages { request_id: true, ..NONE }
);
transform!(
    /// Bearer token → verified claims; the same 401 for every failure, 503 when the verifier
    /// cannot decide. Public routes pass.
    Authenticate,
    Stages { authenticate: true, ..NONE }
);
transform!(
    /// Verified claims → tenant context; 403 on a tenant header that disagrees, an unknown or
    /// a suspended tenant (the first and the last count against the user's limits, and
    /// become a 429 once a limit is exhausted).
    ResolveTenant,
    Stages { resolve: true, ..NONE }
);
transform!(
    /// Per-tenant and per-user limits with headers on every limited response; 429 with
    /// `Retry-After`, 503 when the limiter fails closed; super admins and exempt routes pass.
    RateLimit,
    Stages { rate_limit: true, ..NONE }
);
transform!(
    /// Audit events for audited routes and for denials the handler gave.
    Audit,
    Stages { audit: true, ..NONE }
);
transform!(
    /// All five stages, in order, in one service.
    TenancyMiddleware,
    Stages { request_id: true, authenticate: true, resolve: true, rate_limit: true, audit: true }
);

impl TenancyMiddleware {
    /// Starts the shared configuration with the four backends; add tiers, trusted proxies
    /// and route rules, `build()` it, and pass it to [`TenancyMiddleware::new`].
    pub fn builder(
        verifier: Arc<dyn TokenVerifier>,
        directory: Arc<dyn TenantDirectory>,
        limiter: Arc<dyn RateLimiter>,
        audit: Arc<dyn AuditSink>,
    ) -> TenancyBuilder {
        Tenancy::builder(verifier, directory, limiter, audit)
    }
}

/// The service every tenancy middleware produces.
#[derive(Debug)]
pub struct TenancyService<S> {
    service: Rc<S>,
    tenancy: Tenancy,
    stages: Stages,
}

type Reply<B> = ServiceResponse<EitherBody<B>>;

fn reject<B>(req: ServiceRequest, r: &Rejection) -> Reply<B> {
    req.into_response(render(r)).map_into_right_body()
}

/// An error from a service inside the middleware, with what the middleware puts on every
/// answer: actix-web renders it (outside the middleware) with these headers added, or as
/// `replacement` (a synchronous audit that could not be stored replaces the answer, as it
/// does a response).
struct Decorated {
    inner: ActixError,
    replacement: Option<Rejection>,
    headers: HeaderMap,
}

impl Decorated {
    fn error(inner: ActixError, replacement: Option<Rejection>, headers: HeaderMap) -> ActixError {
        if replacement.is_none() && headers.is_empty() {
            return inner;
        }
        ActixError::from(Self {
            inner,
            replacement,
            headers,
        })
    }
}

impl std::fmt::Debug for Decorated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.inner, f)
    }
}

impl std::fmt::Display for Decorated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.inner, f)
    }
}

impl ResponseError for Decorated {
    fn status_code(&self) -> StatusCode {
        match &self.replacement {
            Some(r) => {
                StatusCode::from_u16(r.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            None => self.inner.as_response_error().status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = match &self.replacement {
            Some(r) => render(r),
            None => self.inner.error_response(),
        };
        for (name, value) in &self.headers {
            res.headers_mut().insert(name.clone(), value.clone());
        }
        res
    }
}

impl<S, B> Service<ServiceRequest> for TenancyService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = ActixError> + 'static,
    B: MessageBody + 'static,
{
    type Response = Reply<B>;
    type Error = ActixError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Reply<B>, ActixError>>>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let service = Rc::clone(&self.service);
        let tenancy = self.tenancy.clone();
        let stages = self.stages;
        let meta = if stages.request_id {
            let meta = tenancy.begin(&Head::routed(&req));
            if let Err(r) = tenancy.check_headers(&meta, &Head::plain(&req)) {
                tenancy.finish(&meta, r.status());
                return Box::pin(ready(Ok(reject(req, &r))));
            }
            // The one value the middleware adds to the extensions: the claims, the tenant
            // context and the settings are kept in it as they are decided.
            req.extensions_mut().insert(meta.clone());
            meta
        } else {
            meta_for(&tenancy, &req)
        };
        let span = meta.span().clone();
        Box::pin(
            async move {
                let result = run(&tenancy, stages, &meta, service, req).await;
                if !stages.request_id {
                    return result;
                }
                // actix-web turns handler errors into responses before they reach any
                // middleware; an error here comes from another middleware inside this one. The
                // request is no longer at hand to build a response from: the error goes on,
                // carrying the request id for the response actix-web renders from it.
                let mut res = match result {
                    Ok(res) => res,
                    Err(e) => {
                        let status = e.as_response_error().status_code().as_u16();
                        tenancy.finish(&meta, status);
                        let mut headers = HeaderMap::new();
                        if let Ok(v) = HeaderValue::from_str(meta.request_id().as_str()) {
                            headers.insert(REQUEST_ID, v);
                        }
                        return Err(Decorated::error(e, None, headers));
                    }
                };
                if let Ok(v) = HeaderValue::from_str(meta.request_id().as_str()) {
                    res.headers_mut().insert(REQUEST_ID, v);
                }
                tenancy.finish(&meta, res.status().as_u16());
                Ok(res)
            }
            .instrument(span),
        )
    }
}

async fn run<S, B>(
    tenancy: &Tenancy,
    stages: Stages,
    meta: &RequestMeta,
    service: Rc<S>,
    req: ServiceRequest,
) -> Result<Reply<B>, ActixError>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = ActixError> + 'static,
    B: MessageBody + 'static,
{
    if stages.authenticate && !meta.is_public() {
        // Read in place: the token is verified where it lies in the request.
        let head = Head::plain(&req);
        let authorization = Header::read(&head, "authorization");
        if let Err(r) = tenancy.authenticate(meta, authorization).await {
            return Ok(reject(req, &r));
        }
    }
    if stages.resolve {
        match meta.claims() {
            Some(claims) => {
                let head = Head::plain(&req);
                let header = Header::read(&head, tenancy.tenant_header());
                if let Err(r) = tenancy.resolve_tenant(meta, claims, header).await {
                    return Ok(reject(req, &r));
                }
            }
            None if meta.is_public() => {}
            None => {
                let r = Rejection::missing_layer("ResolveTenant", "Authenticate")
                    .with_request_id(meta.request_id());
                return Ok(reject(req, &r));
            }
        }
    }
    let mut limit_headers = tenancy_core::RateLimitHeaders::default();
    if stages.rate_limit {
        if meta.resolved().is_none() && !meta.is_public() {
            let r = Rejection::missing_layer("RateLimit", "ResolveTenant")
                .with_request_id(meta.request_id());
            return Ok(reject(req, &r));
        }
        match tenancy.rate_limit(meta).await {
            Ok(h) => limit_headers = h,
            Err(r) => return Ok(reject(req, &r)),
        }
    }
    let mut res = match service.call(req).await {
        Ok(res) => res,
        // An inner middleware's refusal: audited as its response would be, and rendered with
        // the rate-limit headers (or as the rejection of a synchronous audit that failed).
        Err(e) => {
            let status = e.as_response_error().status_code().as_u16();
            let mut refused = None;
            if stages.audit && tenancy.audits(meta, status) {
                refused = tenancy.audit_response(meta, status, None).await.err();
            }
            let mut headers = HeaderMap::new();
            move_headers(&mut headers, limit_headers);
            return Err(Decorated::error(e, refused, headers));
        }
    };
    let mut refused = None;
    if stages.audit {
        let status = res.status().as_u16();
        if tenancy.audits(meta, status) {
            let note = res.response_mut().extensions_mut().remove::<AuditNote>();
            refused = tenancy.audit_response(meta, status, note).await.err();
        }
    }
    // A synchronous audit that could not be stored replaces the answer; the rate-limit
    // headers go on whichever answer is sent, as the tower layers put them.
    let mut res = match refused {
        Some(r) => res.into_response(render(&r)).map_into_right_body(),
        None => res.map_into_left_body(),
    };
    move_headers(res.headers_mut(), limit_headers);
    Ok(res)
}
