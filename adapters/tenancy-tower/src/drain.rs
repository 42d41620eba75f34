//! [`DrainBodyLayer`]: what is left of a refused request's body is read and thrown away
//! before the answer goes out, so that the answer reaches a client still sending its body.
//!
//! hyper closes a connection whose request body was not read to its end, and closing with
//! bytes unread makes the kernel reset the connection: a client uploading 900 KiB without a
//! token sees "broken pipe" instead of its 401. Put this layer outside [`TenancyLayer`]
//! (and outside anything else that may answer before reading the body): the rest is read
//! within [`DrainLimits`] (1 MiB, 2 s by default) and the connection serves the next
//! request; past them the answer carries `Connection: close`. A request without a body
//! passes untouched, at no cost, as do HTTP/2 requests and requests that expect
//! `100 Continue` (see [`tenancy_http::drain`](mod@tenancy_http::drain)). The actix-web
//! adapter's `DrainBody` does the same.
//!
//! ```
//! use std::convert::Infallible;
//! use axum::body::Body;
//! use tenancy_tower::{AuthenticateLayer, DrainBodyLayer};
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
//!     .layer(DrainBodyLayer::default())
//!     .layer(AuthenticateLayer::new(tenancy))
//!     .service_fn(|_req: http::Request<Body>| async {
//!         Ok::<_, Infallible>(http::Response::new(Body::from("stored")))
//!     });
//! // Refused before its body was read: the body is read after, and the connection kept.
//! let upload = http::Request::post("/v1/upload").body(Body::from("x".repeat(100_000)))?;
//! let resp = svc.clone().oneshot(upload).await?;
//! assert_eq!(resp.status(), 401);
//! assert!(resp.headers().get("connection").is_none());
//! // A declared length over the 1 MiB bound is not read: the answer closes the connection.
//! let huge = http::Request::post("/v1/upload")
//!     .header("content-length", "2000000")
//!     .body(Body::from("x"))?;
//! let resp = svc.oneshot(huge).await?;
//! assert_eq!(resp.headers()["connection"], "close");
//! # Ok(()) }
//! ```
//!
//! [`TenancyLayer`]: crate::TenancyLayer

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, HttpBody};
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, HeaderValue};
use http::{Request, Response, Version};
use tenancy_http::{DrainFuture, DrainLimits};
use tower_layer::Layer;
use tower_service::Service;

use crate::future::BoxFuture;

/// Reads what is left of a refused request's body before the answer; see the
/// [module](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct DrainBodyLayer {
    limits: DrainLimits,
}

impl DrainBodyLayer {
    /// The layer with other bounds than the default 1 MiB and 2 s.
    pub fn new(limits: DrainLimits) -> Self {
        Self { limits }
    }
}

impl<S> Layer<S> for DrainBodyLayer {
    type Service = DrainBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DrainBody {
            inner,
            limits: self.limits,
        }
    }
}

/// The service [`DrainBodyLayer`] produces.
#[derive(Debug, Clone)]
pub struct DrainBody<S> {
    inner: S,
    limits: DrainLimits,
}

impl<S, ResBody> Service<Request<Body>> for DrainBody<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = DrainFuture<S::Future, BoxFuture<Result<Response<ResBody>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // No body; HTTP/2, where a refusal ends the stream and not the connection; or a client
        // waiting for `100 Continue`, which hyper would send on the first read of the body:
        // without it the client sends no body, and there is nothing to read.
        let expects_continue = |req: &Request<Body>| {
            req.headers()
                .get(EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        };
        if req.body().is_end_stream() || req.version() > Version::HTTP_11 || expects_continue(&req)
        {
            return DrainFuture::direct(self.inner.call(req));
        }
        let declared = req.headers().get(CONTENT_LENGTH).cloned();
        let slot = Arc::new(Mutex::new(None));
        let req = req.map(|body| {
            Body::new(Returning {
                inner: Some(body),
                slot: Arc::clone(&slot),
            })
        });
        let answer = self.inner.call(req);
        let limits = self.limits;
        let fut: BoxFuture<_> = Box::pin(async move {
            let mut answer = answer.await;
            let rest = slot.lock().ok().and_then(|mut s| s.take());
            if let Some(rest) = rest {
                let declared = declared.as_ref().map(HeaderValue::as_bytes);
                let deadline = tokio::time::sleep(limits.time);
                let drained =
                    tenancy_http::drain(limits, declared, rest.into_data_stream(), deadline).await;
                if !drained && let Ok(resp) = &mut answer {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
            }
            answer
        });
        DrainFuture::draining(fut)
    }
}

/// A request body that, dropped before its end, hands what is left of it back.
struct Returning {
    inner: Option<Body>,
    slot: Arc<Mutex<Option<Body>>>,
}

impl HttpBody for Returning {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let Some(body) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(body).poll_frame(cx);
        // Read to its end (a chunked body may not say so by `is_end_stream`): nothing left.
        if let Poll::Ready(None) = frame {
            this.inner = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let Some(body) = self.inner.take().filter(|b| !b.is_end_stream())
            && let Ok(mut slot) = self.slot.lock()
        {
            *slot = Some(body);
        }
    }
}
