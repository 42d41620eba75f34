//! Reading an `http::Request` for the shared decisions.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Request, Response, StatusCode};
use tenancy_core::RateLimitHeaders;
use tenancy_http::{
    Header, PROBLEM_JSON, REQUEST_ID_HEADER, Rejection, RequestHead, RequestMeta, Tenancy,
};

/// The connection's peer address, for services that are not axum: insert it into the request
/// extensions (hyper and tonic servers know it when they accept the connection). With the
/// `axum` feature, `ConnectInfo<SocketAddr>` is read as well.
///
/// ```
/// use tenancy_tower::PeerAddr;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(PeerAddr("192.0.2.1:4711".parse().unwrap()));
/// assert!(req.extensions().get::<PeerAddr>().is_some());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

pub(crate) struct Head<'a, B>(pub(crate) &'a Request<B>);

impl<B> RequestHead for Head<'_, B> {
    fn method(&self) -> &str {
        self.0.method().as_str()
    }

    fn path(&self) -> &str {
        self.0.uri().path()
    }

    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> + 'a {
        values(self.0.headers(), name)
    }

    fn header_bytes(&self) -> usize {
        self.0
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum()
    }

    fn peer_addr(&self) -> Option<IpAddr> {
        let ext = self.0.extensions();
        if let Some(p) = ext.get::<PeerAddr>() {
            return Some(p.0.ip());
        }
        #[cfg(feature = "axum")]
        if let Some(c) = ext.get::<axum::extract::ConnectInfo<SocketAddr>>() {
            return Some(c.0.ip());
        }
        None
    }

    fn framework_route(&self) -> Option<&str> {
        #[cfg(feature = "axum")]
        if let Some(m) = self.0.extensions().get::<axum::extract::MatchedPath>() {
            return Some(m.as_str());
        }
        None
    }
}

fn values<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers.get_all(name).into_iter().map(HeaderValue::as_bytes)
}

/// The header `name` of a request, borrowed from its header map (which, unlike the request,
/// can be held across an `await` in a `Send` future whatever the body type).
pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Header<'a> {
    Header::from_values(values(headers, name))
}

/// The request's meta, begun here when no `SetRequestId` layer ran before.
pub(crate) fn meta_for<B>(tenancy: &Tenancy, req: &mut Request<B>) -> RequestMeta {
    if let Some(m) = req.extensions().get::<RequestMeta>() {
        return m.clone();
    }
    let meta = tenancy.begin(&Head(req));
    req.extensions_mut().insert(meta.clone());
    meta
}

/// `X-Request-Id`, parsed once.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);

/// The name of a header the decisions set: the usual ones are constants (no parsing, no
/// allocation per response), any other is parsed.
fn header_name(name: &'static str) -> Option<HeaderName> {
    const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
    const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
    const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
    const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
    Some(match name {
        "x-ratelimit-limit" => LIMIT,
        "x-ratelimit-remaining" => REMAINING,
        "x-ratelimit-reset" => RESET,
        "ratelimit-policy" => POLICY,
        "ratelimit" => RATELIMIT,
        "retry-after" => RETRY_AFTER,
        "www-authenticate" => WWW_AUTHENTICATE,
        REQUEST_ID_HEADER => REQUEST_ID,
        other => return HeaderName::from_bytes(other.as_bytes()).ok(),
    })
}

/// Copies rate-limit (or other) headers into a response, replacing same-named ones.
pub(crate) fn set_headers(map: &mut HeaderMap, headers: &[(&'static str, String)]) {
    for (k, v) in headers {
        if let (Some(name), Ok(value)) = (header_name(k), HeaderValue::from_str(v)) {
            map.insert(name, value);
        }
    }
}

/// Puts a decision's rate-limit headers into a response, replacing same-named ones. The
/// values stay in the one buffer they were written to: each header value is a slice of it.
pub(crate) fn move_headers(map: &mut HeaderMap, headers: RateLimitHeaders) {
    for (name, value) in tenancy_http::shared_header_values(headers) {
        if let (Some(name), Ok(value)) = (header_name(name), HeaderValue::from_maybe_shared(value))
        {
            map.insert(name, value);
        }
    }
}

/// Renders a rejection as an `http::Response`.
pub(crate) fn render<B: From<Bytes>>(r: &Rejection) -> Response<B> {
    let mut resp = Response::new(B::from(r.body()));
    *resp.status_mut() =
        StatusCode::from_u16(r.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    set_headers(resp.headers_mut(), r.headers());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_the_parsed_names() {
        for name in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "ratelimit-policy",
            "ratelimit",
            "retry-after",
            "www-authenticate",
            REQUEST_ID_HEADER,
            "x-other",
        ] {
            assert_eq!(
                header_name(name),
                HeaderName::from_bytes(name.as_bytes()).ok(),
                "{name}"
            );
        }
        assert_eq!(header_name("bad name"), None);
    }
}
