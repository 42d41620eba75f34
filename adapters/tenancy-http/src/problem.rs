//! RFC 9457 problem+json bodies and the [`Rejection`] every adapter renders the same way.
//!
//! A rejection is a status, the response headers that go with it (`WWW-Authenticate`,
//! rate-limit fields, `Retry-After`, `X-Request-Id`) and a problem body. Adapters copy these
//! into their own response type and add nothing, so axum, actix-web, hyper and tonic answer
//! byte for byte alike.
//!
//! ```
//! use tenancy_http::{Rejection, PROBLEM_JSON};
//!
//! let r = Rejection::unauthorized(None);
//! assert_eq!(r.status(), 401);
//! assert!(r.headers().iter().any(|(k, v)| *k == "www-authenticate" && v == "Bearer"));
//! let body: serde_json::Value = serde_json::from_slice(&r.body())?;
//! assert_eq!(body["status"], 401);
//! assert_eq!(PROBLEM_JSON, "application/problem+json");
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::Serialize;
use tenancy_core::{Denial, RateLimitDecision, RequestId, TokenRejection};

/// The media type of problem bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The `detail` of every misconfiguration 500: the same whatever is misconfigured, so the
/// body names no internal cause (the cause is logged; see [`Rejection::misconfigured`]).
pub const MISCONFIGURED_DETAIL: &str = "the server could not complete the request";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// A URI naming the problem type (`urn:tenancy:problem:...`).
    #[serde(rename = "type")]
    pub kind: Cow<'static, str>,
    /// A short summary that does not change between occurrences.
    pub title: Cow<'static, str>,
    /// The HTTP status.
    pub status: u16,
    /// What happened, for the client; never an internal cause.
    pub detail: Cow<'static, str>,
    /// The request id, so a client can quote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}

/// Why a request was refused, for logs, metrics and audit records (never sent to clients
/// beyond what the problem body says).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectionKind {
    /// No usable bearer token; the inner reason is for operators only.
    Unauthenticated(AuthFailure),
    /// The tenant header names another tenant than the token.
    TenantMismatch,
    /// An authorization denial (suspended or unknown tenant, missing permission, role).
    Denied(Denial),
    /// A rate limit is exhausted.
    RateLimited,
    /// The request headers are larger than allowed.
    HeaderTooLarge,
    /// A backend (verifier, directory, limiter, audit) could not decide.
    Unavailable,
    /// The server is set up wrongly: a layer is missing, or a tier is not in the catalog.
    Misconfigured(Cow<'static, str>),
}

impl RejectionKind {
    /// A short, stable label for metrics and audit reasons.
    pub fn label(&self) -> Cow<'static, str> {
        match self {
            Self::Unauthenticated(f) => Cow::Owned(format!("unauthenticated:{}", f.as_str())),
            Self::TenantMismatch => "tenant_mismatch".into(),
            Self::Denied(Denial::TenantSuspended) => "tenant_suspended".into(),
            Self::Denied(Denial::UnknownTenant) => "unknown_tenant".into(),
            Self::Denied(Denial::MissingPermission(_)) => "missing_permission".into(),
            Self::Denied(Denial::RoleRequired(_)) => "role_required".into(),
            Self::Denied(Denial::PlatformRoleOutsidePlatform) => "platform_role".into(),
            Self::Denied(_) => "denied".into(),
            Self::RateLimited => "rate_limited".into(),
            Self::HeaderTooLarge => "header_too_large".into(),
            Self::Unavailable => "unavailable".into(),
            Self::Misconfigured(_) => "misconfigured".into(),
        }
    }
}

/// Why authentication failed (operators only: every one of them answers the same 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// More than one `Authorization` header.
    Ambiguous,
    /// Not `Bearer <token>`, or a token with characters outside the token alphabet.
    BadScheme,
    /// The header is larger than the configured bound; refused before verification.
    Oversized,
    /// The verifier refused the token.
    Token(TokenRejection),
}

impl AuthFailure {
    /// A short, stable label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Ambiguous => "ambiguous",
            Self::BadScheme => "bad_scheme",
            Self::Oversized => "oversized",
            Self::Token(t) => t.as_str(),
        }
    }
}

/// A refusal, ready to be rendered by any HTTP framework (boxed: it travels in `Err`s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection(Box<Parts>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Parts {
    kind: RejectionKind,
    problem: Problem,
    headers: Vec<(&'static str, String)>,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.0.problem.status, self.0.problem.title, self.0.problem.detail
        )
    }
}

impl std::error::Error for Rejection {}

impl Rejection {
    fn new(
        kind: RejectionKind,
        status: u16,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self(Box::new(Parts {
            kind,
            problem: Problem {
                kind: Cow::Owned(format!("urn:tenancy:problem:{slug}")),
                title: title.into(),
                status,
                detail: detail.into(),
                request_id: None,
            },
            headers: Vec::new(),
        }))
    }

    /// 401 with `WWW-Authenticate: Bearer`; the body is the same whatever the `failure`.
    ///
    /// Why: telling a client which check failed (expired, wrong audience, bad signature)
    /// helps an attacker tune forged tokens and tells a legitimate client nothing it can act
    /// on other than "get a new token".
    pub fn unauthorized(failure: Option<AuthFailure>) -> Self {
        let mut r = Self::new(
            RejectionKind::Unauthenticated(failure.unwrap_or(AuthFailure::Missing)),
            401,
            "unauthorized",
            "Unauthorized",
            "a valid bearer token is required",
        );
        r.0.headers.push(("www-authenticate", "Bearer".to_owned()));
        r
    }

    /// 403: the tenant header disagrees with the token.
    pub fn tenant_mismatch(header: &str) -> Self {
        Self::new(
            RejectionKind::TenantMismatch,
            403,
            "tenant-mismatch",
            "Forbidden",
            format!("the {header} header does not match the token's tenant"),
        )
    }

    /// Adds headers to the response (a refused request's rate-limit headers), replacing
    /// same-named ones.
    pub fn with_headers(mut self, headers: Vec<(&'static str, String)>) -> Self {
        for (name, value) in headers {
            self.0.headers.retain(|(k, _)| *k != name);
            self.0.headers.push((name, value));
        }
        self
    }

    /// 403 for an authorization denial.
    pub fn denied(denial: Denial) -> Self {
        let (slug, detail): (&'static str, Cow<'static, str>) = match &denial {
            Denial::TenantSuspended => ("tenant-suspended", "the tenant is suspended".into()),
            Denial::UnknownTenant => ("unknown-tenant", "the tenant is not known".into()),
            Denial::MissingPermission(p) => (
                "missing-permission",
                format!("permission `{p}` is required").into(),
            ),
            Denial::RoleRequired(r) => ("role-required", format!("role `{r}` is required").into()),
            Denial::PlatformRoleOutsidePlatform => (
                "platform-role",
                "a platform role is valid only in the platform tenant".into(),
            ),
            other => ("forbidden", other.to_string().into()),
        };
        Self::new(
            RejectionKind::Denied(denial),
            403,
            slug,
            "Forbidden",
            detail,
        )
    }

    /// 429 with the decision's rate-limit headers and a `Retry-After` of at least one second.
    pub fn rate_limited(decision: &RateLimitDecision) -> Self {
        let secs = decision.retry_after_secs().unwrap_or(1).max(1);
        let mut r = Self::new(
            RejectionKind::RateLimited,
            429,
            "rate-limited",
            "Too Many Requests",
            format!("rate limit exceeded; retry in {secs} s"),
        );
        r.0.headers.extend(decision.headers());
        if !r.0.headers.iter().any(|(k, _)| *k == "retry-after") {
            r.0.headers.push(("retry-after", secs.to_string()));
        }
        r
    }

    /// 431: the request headers exceed `limit` bytes.
    pub fn header_too_large(limit: usize) -> Self {
        Self::new(
            RejectionKind::HeaderTooLarge,
            431,
            "header-too-large",
            "Request Header Fields Too Large",
            format!("request headers exceed {limit} bytes"),
        )
    }

    /// 503 with an opaque body: a backend could not decide (the cause goes to the log).
    pub fn unavailable() -> Self {
        Self::new(
            RejectionKind::Unavailable,
            503,
            "unavailable",
            "Service Unavailable",
            "the service is temporarily unavailable; retry later",
        )
    }

    /// 500: the server is set up wrongly (an unknown tier, a backend that refuses the call; a
    /// missing layer is [`Rejection::missing_layer`]). `what` is logged
    /// at error level and kept in [`RejectionKind::Misconfigured`]; the body says only
    /// [`MISCONFIGURED_DETAIL`].
    ///
    /// Why the body names nothing: a 5xx body names no internal cause. Which tier is not in
    /// the catalog or which backend refused tells a client
    /// nothing it can act on and tells an attacker how the server is built; the developer
    /// who must fix it reads it in the log (by the request id, when the body carries one).
    ///
    /// ```
    /// use tenancy_http::{problem::MISCONFIGURED_DETAIL, Rejection};
    ///
    /// let r = Rejection::misconfigured("the tenant's tier is not in the tier catalog");
    /// assert_eq!(r.status(), 500);
    /// assert_eq!(r.problem().detail, MISCONFIGURED_DETAIL);
    /// ```
    pub fn misconfigured(what: impl Into<Cow<'static, str>>) -> Self {
        let what = what.into();
        tracing::error!(what = %what, "server misconfigured");
        Self::misconfiguration(what)
    }

    /// [`Rejection::misconfigured`] without the log line, for callers that have already
    /// logged `what` at error level (in the request's span).
    pub(crate) fn misconfiguration(what: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            RejectionKind::Misconfigured(what.into()),
            500,
            "misconfigured",
            "Internal Server Error",
            MISCONFIGURED_DETAIL,
        )
    }

    /// 500 from an extractor whose layer did not run: the one misconfiguration whose body
    /// names it (the extractor and the layer to add), because it is a deterministic mistake in
    /// the application's own route setup that its developer meets on the first request, not a
    /// runtime cause, and it names only a tenancy component. Logged at error level too.
    pub fn missing_layer(extractor: &'static str, layer: &'static str) -> Self {
        let what = format!(
            "`{extractor}` needs the `{layer}` layer in front of this route (it is part of the tenancy stack)"
        );
        tracing::error!(what = %what, "server misconfigured");
        Self::new(
            RejectionKind::Misconfigured(what.clone().into()),
            500,
            "misconfigured",
            "Internal Server Error",
            format!("server misconfigured: {what}"),
        )
    }

    /// The same rejection carrying `id` in its body and an `X-Request-Id` header.
    pub fn with_request_id(mut self, id: &RequestId) -> Self {
        self.0.problem.request_id = Some(id.clone());
        self.0.headers.retain(|(k, _)| *k != "x-request-id");
        self.0
            .headers
            .push(("x-request-id", id.as_str().to_owned()));
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.0.problem.status
    }

    /// Why.
    pub fn kind(&self) -> &RejectionKind {
        &self.0.kind
    }

    /// The problem document.
    pub fn problem(&self) -> &Problem {
        &self.0.problem
    }

    /// Headers to send (lowercase names), besides `Content-Type`.
    pub fn headers(&self) -> &[(&'static str, String)] {
        &self.0.headers
    }

    /// The problem+json body.
    pub fn body(&self) -> Bytes {
        // Serialising a struct of strings and integers cannot fail.
        Bytes::from(serde_json::to_vec(&self.0.problem).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_401_reads_the_same() {
        let a = Rejection::unauthorized(Some(AuthFailure::Token(TokenRejection::Expired)));
        let b = Rejection::unauthorized(Some(AuthFailure::BadScheme));
        assert_eq!(a.body(), b.body());
        assert_eq!(a.headers(), b.headers());
        assert_ne!(a.kind(), b.kind());
    }

    #[test]
    fn request_id_is_in_body_and_header_once() {
        let id = RequestId::parse("abc").unwrap();
        let r = Rejection::unavailable()
            .with_request_id(&id)
            .with_request_id(&id);
        assert_eq!(
            r.headers()
                .iter()
                .filter(|(k, _)| *k == "x-request-id")
                .count(),
            1
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v["type"], "urn:tenancy:problem:unavailable");
        assert_eq!(
            v["detail"],
            "the service is temporarily unavailable; retry later"
        );
    }

    #[test]
    fn misconfiguration_bodies_name_no_cause() {
        let tier = "the tenant's tier is not in the tier catalog";
        for (r, cause) in [
            (Rejection::misconfigured("authentication"), "authentication"),
            (Rejection::misconfigured(tier), tier),
            (Rejection::misconfiguration(tier), tier),
        ] {
            assert_eq!(r.status(), 500);
            assert!(matches!(r.kind(), RejectionKind::Misconfigured(w) if w.contains(cause)));
            let v: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
            assert_eq!(v["type"], "urn:tenancy:problem:misconfigured");
            assert_eq!(v["detail"], MISCONFIGURED_DETAIL);
            let body = String::from_utf8(r.body().to_vec()).unwrap();
            assert!(!body.contains(cause), "{cause} in {body}");
            assert!(!r.to_string().contains(cause), "{r}");
        }
        // The exception: a missing layer names the extractor and the layer to add.
        let r = Rejection::missing_layer("Tenant", "ResolveTenant");
        assert_eq!(r.status(), 500);
        assert!(r.problem().detail.contains("`Tenant`"));
        assert!(r.problem().detail.contains("`ResolveTenant`"));
    }
}
