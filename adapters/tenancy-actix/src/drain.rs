//! [`DrainBody`]: what is left of a refused request's body is read and thrown away before
//! the answer goes out, as `tenancy_tower::DrainBodyLayer` does for axum, so that both
//! servers answer alike.
//!
//! Left alone, actix-web answers a request whose body of declared length was not read (a 401
//! for a missing token, a 429, a 413) with `Connection: close` and reads on only briefly; a
//! client still sending its body may see a reset connection instead of the answer. Wrapped outside
//! [`TenancyMiddleware`] (and anything else that may answer before reading the body), the
//! rest is read within [`DrainLimits`] (1 MiB, 2 s by default) and the connection serves the
//! next request; past them the answer closes the connection. A request without a body
//! passes untouched.
//!
//! ```
//! use actix_web::{App, HttpResponse, web};
//! use tenancy_actix::{DrainBody, TenancyMiddleware};
//! # use std::sync::Arc;
//! # use tenancy_core::memory::{MemoryAuditSink, MemoryRateLimiter, MemoryTenantDirectory};
//! # #[derive(Debug)] struct Refuse;
//! # #[async_trait::async_trait] impl tenancy_core::TokenVerifier for Refuse {
//! #     async fn verify(&self, _: &str) -> tenancy_core::Result<tenancy_core::Claims> {
//! #         Err(tenancy_core::Error::Rejected(tenancy_core::TokenRejection::BadSignature))
//! #     }
//! # }
//! # #[actix_web::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tenancy = tenancy_actix::Tenancy::builder(Arc::new(Refuse), Arc::new(MemoryTenantDirectory::new()),
//! #     Arc::new(MemoryRateLimiter::new()), Arc::new(MemoryAuditSink::new())).build()?;
//! let app = actix_web::test::init_service(
//!     App::new()
//!         .wrap(TenancyMiddleware::new(tenancy))
//!         .wrap(DrainBody::default())
//!         .route("/v1/upload", web::post().to(|body: String| async move {
//!             HttpResponse::Ok().body(body.len().to_string())
//!         })),
//! )
//! .await;
//! // Refused before its body was read: the body is read after, and the connection kept.
//! let upload = actix_web::test::TestRequest::post()
//!     .uri("/v1/upload")
//!     .set_payload("x".repeat(100_000))
//!     .to_request();
//! let resp = actix_web::test::call_service(&app, upload).await;
//! assert_eq!(resp.status(), 401);
//! assert!(resp.response().keep_alive());
//! // A declared length over the 1 MiB bound is not read: the answer closes the connection.
//! let huge = actix_web::test::TestRequest::post()
//!     .uri("/v1/upload")
//!     .set_payload("x")
//!     .insert_header(("content-length", "2000000"))
//!     .to_request();
//! let resp = actix_web::test::call_service(&app, huge).await;
//! assert!(!resp.response().keep_alive());
//! # Ok(()) }
//! ```
//!
//! [`TenancyMiddleware`]: crate::TenancyMiddleware

use std::cell::Cell;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::error::PayloadError;
use actix_web::http::ConnectionType;
use actix_web::http::header::{CONTENT_LENGTH, HeaderValue, TRANSFER_ENCODING};
use actix_web::web::Bytes;
use actix_web::{Error as ActixError, HttpMessage as _};
use futures_core::Stream;
use tenancy_http::{DrainFuture, DrainLimits};

/// Reads what is left of a refused request's body before the answer; see the
/// [module](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct DrainBody {
    limits: DrainLimits,
}

impl DrainBody {
    /// The middleware with other bounds than the default 1 MiB and 2 s.
    pub fn new(limits: DrainLimits) -> Self {
        Self { limits }
    }
}

impl<S, B> Transform<S, ServiceRequest> for DrainBody
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = ActixError> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = ActixError;
    type Transform = DrainBodyService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(DrainBodyService {
            inner: service,
            limits: self.limits,
        }))
    }
}

/// The service [`DrainBody`] produces.
#[derive(Debug)]
pub struct DrainBodyService<S> {
    inner: S,
    limits: DrainLimits,
}

type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

impl<S, B> Service<ServiceRequest> for DrainBodyService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = ActixError> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = ActixError;
    type Future = DrainFuture<S::Future, LocalBoxFuture<Result<ServiceResponse<B>, ActixError>>>;

    forward_ready!(inner);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        // A body, over HTTP/1 (on HTTP/2 a refusal ends the stream, not the connection).
        // A client that expects `100 Continue` has had it from actix-web already, before any
        // middleware ran, and is sending its body: that one is read.
        let has_body = req
            .headers()
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
            || req.headers().contains_key(TRANSFER_ENCODING);
        if !has_body || req.version() > actix_web::http::Version::HTTP_11 {
            return DrainFuture::direct(self.inner.call(req));
        }
        let declared = req.headers().get(CONTENT_LENGTH).cloned();
        let slot = Rc::new(Cell::new(None));
        let returning = Returning {
            inner: Some(req.take_payload()),
            slot: Rc::clone(&slot),
        };
        let stream: Pin<Box<dyn Stream<Item = _>>> = Box::pin(returning);
        req.set_payload(Payload::from(stream));
        let answer = self.inner.call(req);
        let limits = self.limits;
        let fut: LocalBoxFuture<_> = Box::pin(async move {
            // Drained whatever the inner services returned, an error as well as an answer.
            let mut answer = answer.await;
            if let Some(rest) = slot.take() {
                let declared = declared.as_ref().map(HeaderValue::as_bytes);
                let deadline = actix_web::rt::time::sleep(limits.time);
                let drained = tenancy_http::drain(limits, declared, rest, deadline).await;
                if !drained && let Ok(resp) = &mut answer {
                    resp.response_mut()
                        .head_mut()
                        .set_connection_type(ConnectionType::Close);
                }
            }
            answer
        });
        DrainFuture::draining(fut)
    }
}

/// A request payload that, dropped before its end, hands what is left of it back.
struct Returning {
    inner: Option<Payload>,
    slot: Rc<Cell<Option<Payload>>>,
}

impl Stream for Returning {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let next = Pin::new(inner).poll_next(cx);
        if let Poll::Ready(None) = next {
            self.inner = None;
        }
        next
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let Some(rest) = self.inner.take() {
            self.slot.set(Some(rest));
        }
    }
}
