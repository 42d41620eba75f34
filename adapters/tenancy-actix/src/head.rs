//! Reading an actix-web request for the shared decisions, and rendering rejections.

use std::cell::OnceCell;
use std::net::IpAddr;

use actix_web::dev::ServiceRequest;
use actix_web::http::StatusCode;
use actix_web::http::header::{
    AUTHORIZATION, CONTENT_TYPE, FORWARDED, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
};
use actix_web::{HttpMessage, HttpResponse};
use tenancy_core::RateLimitHeaders;
use tenancy_http::{
    DEFAULT_TENANT_HEADER, PROBLEM_JSON, REQUEST_ID_HEADER, Rejection, RequestHead, RequestMeta,
    Tenancy,
};

pub(crate) struct Head<'a> {
    req: &'a ServiceRequest,
    routed: bool,
    /// The pattern actix-web matched, looked up (a new string) only when asked for: the
    /// decisions ask only when no route rule matched.
    pattern: OnceCell<Option<String>>,
}

impl<'a> Head<'a> {
    /// A head that does not know the framework's route.
    pub(crate) fn plain(req: &'a ServiceRequest) -> Self {
        Self {
            req,
            routed: false,
            pattern: OnceCell::new(),
        }
    }

    /// A head that also knows the route pattern actix-web matched.
    pub(crate) fn routed(req: &'a ServiceRequest) -> Self {
        Self {
            req,
            routed: true,
            pattern: OnceCell::new(),
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
        let headers = self.req.headers();
        match lookup_name(name) {
            Some(name) => headers.get_all(name),
            None => headers.get_all(name),
        }
        .map(HeaderValue::as_bytes)
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
        self.pattern
            .get_or_init(|| self.routed.then(|| self.req.match_pattern()).flatten())
            .as_deref()
    }
}

/// The request's meta, begun here when no `SetRequestId` middleware ran before.
pub(crate) fn meta_for(tenancy: &Tenancy, req: &ServiceRequest) -> RequestMeta {
    if let Some(m) = req.extensions().get::<RequestMeta>() {
        return m.clone();
    }
    let meta = tenancy.begin(&Head::routed(req));
    req.extensions_mut().insert(meta.clone());
    meta
}

/// `X-Request-Id`, parsed once.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);

/// The name of a header the decisions read, when it is one of the usual ones: looked up by a
/// constant, since actix-web parses a name given as text on every lookup, and copies it to
/// the heap when it is not a standard one (`x-request-id`, `x-tenant-id`).
fn lookup_name(name: &str) -> Option<HeaderName> {
    const TENANT: HeaderName = HeaderName::from_static(DEFAULT_TENANT_HEADER);
    const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    Some(match name {
        "authorization" => AUTHORIZATION,
        REQUEST_ID_HEADER => REQUEST_ID,
        DEFAULT_TENANT_HEADER => TENANT,
        "forwarded" => FORWARDED,
        "x-forwarded-for" => X_FORWARDED_FOR,
        _ => return None,
    })
}

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

/// Copies headers into a response, replacing same-named ones.
pub(crate) fn set_headers(
    map: &mut actix_web::http::header::HeaderMap,
    headers: &[(&'static str, String)],
) {
    for (k, v) in headers {
        if let (Some(name), Ok(value)) = (header_name(k), HeaderValue::from_str(v)) {
            map.insert(name, value);
        }
    }
}

/// Puts a decision's rate-limit headers into a response, replacing same-named ones. The
/// values stay in the one buffer they were written to: each header value is a slice of it.
pub(crate) fn move_headers(
    map: &mut actix_web::http::header::HeaderMap,
    headers: RateLimitHeaders,
) {
    for (name, value) in tenancy_http::shared_header_values(headers) {
        if let (Some(name), Ok(value)) = (header_name(name), HeaderValue::from_maybe_shared(value))
        {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The constant names of the headers the decisions set and read are the names parsed.
    #[test]
    fn constant_names_are_the_parsed_names() {
        let parsed = |name: &str| HeaderName::from_bytes(name.as_bytes()).ok();
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
            assert_eq!(header_name(name), parsed(name), "{name}");
        }
        assert_eq!(header_name("bad name"), None);
        for name in [
            "authorization",
            REQUEST_ID_HEADER,
            DEFAULT_TENANT_HEADER,
            "forwarded",
            "x-forwarded-for",
        ] {
            assert_eq!(lookup_name(name), parsed(name), "{name}");
        }
        assert_eq!(lookup_name("x-tenant"), None);
    }
}
