//! Reading an actix-web request for the shared decisions, and rendering rejections.

use std::net::IpAddr;

use actix_web::dev::ServiceRequest;
use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use actix_web::{HttpMessage, HttpResponse};
use tenancy_http::{PROBLEM_JSON, Rejection, RequestHead, RequestMeta, Tenancy};

pub(crate) struct Head<'a> {
    req: &'a ServiceRequest,
    pattern: Option<String>,
}

impl<'a> Head<'a> {
    /// A head that does not know the framework's route.
    pub(crate) fn plain(req: &'a ServiceRequest) -> Self {
        Self { req, pattern: None }
    }

    /// A head that also knows the route pattern actix-web matched.
    pub(crate) fn routed(req: &'a ServiceRequest) -> Self {
        Self {
            req,
            pattern: req.match_pattern(),
        }
    }
}

impl RequestHead for Head<'_> {
    fn method(&self) -> &str {
        self.req.method().as_str()
    }

    fn path(&self) -> &str {
        self.req.path()
    }

    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.req
            .headers()
            .get_all(name)
            .map(HeaderValue::as_bytes)
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn header_bytes(&self) -> usize {
        self.req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum()
    }

    fn peer_addr(&self) -> Option<IpAddr> {
        self.req.peer_addr().map(|a| a.ip())
    }

    fn framework_route(&self) -> Option<&str> {
        self.pattern.as_deref()
    }
}

/// The request's meta, begun here when no `SetRequestId` middleware ran before.
pub(crate) fn meta_for(tenancy: &Tenancy, req: &ServiceRequest) -> RequestMeta {
    if let Some(m) = req.extensions().get::<RequestMeta>() {
        return m.clone();
    }
    let meta = tenancy.begin(&Head::routed(req));
    req.extensions_mut().insert(meta.clone());
    req.extensions_mut().insert(meta.request_id().clone());
    meta
}

/// Copies headers into a response, replacing same-named ones.
pub(crate) fn set_headers(
    map: &mut actix_web::http::header::HeaderMap,
    headers: &[(&'static str, String)],
) {
    for (k, v) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            map.insert(name, value);
        }
    }
}

/// Renders a rejection as an actix-web response.
pub(crate) fn render(r: &Rejection) -> HttpResponse {
    let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = HttpResponse::with_body(status, r.body());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    set_headers(resp.headers_mut(), r.headers());
    resp.map_into_boxed_body()
}
