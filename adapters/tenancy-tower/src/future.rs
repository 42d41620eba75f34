//! The response future shared by every tenancy layer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tenancy_core::RateLimitHeaders;
use tenancy_http::{AuditNote, Rejection, RequestMeta, Tenancy};
use tower_service::Service;
use tracing::Span;

use crate::head::{REQUEST_ID, move_headers, render};
use crate::macros::take_ready;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a layer does with the inner service's response.
pub(crate) enum After {
    Nothing,
    Headers(RateLimitHeaders),
    Audit(Tenancy, RequestMeta),
    Finish(Tenancy, RequestMeta),
    /// The whole stack in one: audit (as [`After::Audit`]), then the rate-limit headers, then
    /// the request id and metrics (as [`After::Finish`]), in the order the separate layers
    /// nest.
    Stack(Tenancy, RequestMeta, RateLimitHeaders),
}

impl After {
    /// Applies everything but the audit to a response.
    fn apply<B>(self, resp: &mut Response<B>) {
        match self {
            Self::Nothing | Self::Audit(..) => {}
            Self::Headers(h) => move_headers(resp.headers_mut(), h),
            Self::Finish(tenancy, meta) => finish(resp, &tenancy, &meta),
            Self::Stack(tenancy, meta, h) => {
                // The rate-limit headers and the request id, in one growth of the map.
                resp.headers_mut().reserve(h.len() + 1);
                move_headers(resp.headers_mut(), h);
                finish(resp, &tenancy, &meta);
            }
        }
    }
}

fn finish<B>(resp: &mut Response<B>, tenancy: &Tenancy, meta: &RequestMeta) {
    if let Ok(v) = HeaderValue::from_str(meta.request_id().as_str()) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    tenancy.finish(meta, resp.status().as_u16());
}

/// A layer's decision: the request and what to do with the inner service's response, or a
/// rejection and what to do with the response it renders.
pub(crate) type Before<ReqBody> = BoxFuture<Result<(Request<ReqBody>, After), (Rejection, After)>>;

/// A rejection of a layer with nothing to do on the response it renders.
pub(crate) fn bare(r: Rejection) -> (Rejection, After) {
    (r, After::Nothing)
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Before { fut: Before<ReqBody>, svc: Option<S> },
        Inner { #[pin] fut: S::Future, after: Option<After> },
        Auditing {
            fut: BoxFuture<Result<(), Rejection>>,
            response: Option<Response<ResBody>>,
            then: Option<After>,
        },
        Rejected { rejection: Option<Rejection>, then: Option<After> },
        Done,
    }
}

pin_project! {
    /// The response future of the tenancy layers: runs the layer's decision, then the inner
    /// service, then the layer's work on the response. A denial completes it with a problem
    /// response; errors are only ever the inner service's.
    pub struct ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody, ResBody>,
        span: Option<Span>,
    }
}

impl<S, ReqBody, ResBody> fmt::Debug for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
{
    /// Runs a layer's decision, then `inner`. The decision is polled once here: when it is
    /// made without waiting (backends that answer at once: a verifier's cache, a directory
    /// and a limiter in memory), `inner`, which `poll_ready` readied, is called at once and
    /// needs no clone. Otherwise the decision goes on in the response future, polled with
    /// the task's waker from its first poll on, with a clone left in `inner`'s place.
    pub(crate) fn decide(mut fut: Before<ReqBody>, inner: &mut S, span: Option<Span>) -> Self
    where
        S: Clone,
    {
        let first = {
            let _entered = span.as_ref().map(Span::enter);
            fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
        };
        let state = match first {
            Poll::Ready(Ok((req, after))) => State::Inner {
                fut: inner.call(req),
                after: Some(after),
            },
            Poll::Ready(Err((r, then))) => State::Rejected {
                rejection: Some(r),
                then: Some(then),
            },
            Poll::Pending => State::Before {
                fut,
                svc: Some(take_ready(inner)),
            },
        };
        Self { state, span }
    }

    pub(crate) fn inner(fut: S::Future, after: After, span: Option<Span>) -> Self {
        Self {
            state: State::Inner {
                fut,
                after: Some(after),
            },
            span,
        }
    }

    pub(crate) fn rejected(rejection: Rejection) -> Self {
        Self {
            state: State::Rejected {
                rejection: Some(rejection),
                then: None,
            },
            span: None,
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.as_ref().map(Span::enter);
        loop {
            match this.state.as_mut().project() {
                StateProj::Before { fut, svc } => {
                    let next = match (ready!(fut.as_mut().poll(cx)), svc.take()) {
                        (Ok((req, after)), Some(mut svc)) => State::Inner {
                            fut: svc.call(req),
                            after: Some(after),
                        },
                        (Ok((_, after)), None) => State::Rejected {
                            rejection: Some(Rejection::misconfigured("service taken twice")),
                            then: Some(after),
                        },
                        (Err((r, then)), _) => State::Rejected {
                            rejection: Some(r),
                            then: Some(then),
                        },
                    };
                    this.state.set(next);
                }
                StateProj::Inner { fut, after } => {
                    let mut resp = match ready!(fut.poll(cx)) {
                        Ok(resp) => resp,
                        Err(e) => {
                            // No response to decorate, but the request is still counted (as a
                            // 500, the status a server makes of a failed service), as the
                            // actix-web middleware counts an error that reaches it.
                            if let Some(
                                After::Finish(tenancy, meta) | After::Stack(tenancy, meta, _),
                            ) = after.take()
                            {
                                tenancy.finish(&meta, 500);
                            }
                            this.state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                    };
                    let after = after.take().unwrap_or(After::Nothing);
                    // Most events are taken at once; only the rest need a future.
                    let pending = match &after {
                        After::Audit(tenancy, meta) | After::Stack(tenancy, meta, _) => {
                            let status = resp.status().as_u16();
                            if tenancy.audits(meta, status) {
                                let note = resp.extensions_mut().remove::<AuditNote>();
                                tenancy
                                    .try_audit_response(meta, status, note)
                                    .err()
                                    .map(|p| (tenancy.clone(), meta.clone(), p))
                            } else {
                                None
                            }
                        }
                        _ => None,
                    };
                    if let Some((tenancy, meta, pending)) = pending {
                        let fut: BoxFuture<Result<(), Rejection>> =
                            Box::pin(async move { tenancy.finish_audit(&meta, pending).await });
                        this.state.set(State::Auditing {
                            fut,
                            response: Some(resp),
                            then: Some(after),
                        });
                        continue;
                    }
                    after.apply(&mut resp);
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(resp));
                }
                StateProj::Auditing {
                    fut,
                    response,
                    then,
                } => {
                    let out = ready!(fut.as_mut().poll(cx));
                    let mut resp = match (out, response.take()) {
                        (Ok(()), Some(r)) => r,
                        (Err(rej), _) => render(&rej),
                        (Ok(()), None) => render(&Rejection::misconfigured("response taken twice")),
                    };
                    if let Some(then) = then.take() {
                        then.apply(&mut resp);
                    }
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(resp));
                }
                StateProj::Rejected { rejection, then } => {
                    let r = rejection
                        .take()
                        .unwrap_or_else(|| Rejection::misconfigured("rejection taken twice"));
                    let mut resp = render(&r);
                    if let Some(then) = then.take() {
                        then.apply(&mut resp);
                    }
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(resp));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}
