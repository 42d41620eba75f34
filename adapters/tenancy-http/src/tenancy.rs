//! [`Tenancy`]: the decisions every adapter makes, in request order, written once.
//!
//! An adapter reads the request head through [`RequestHead`], then calls, in order:
//! [`Tenancy::begin`] and [`Tenancy::check_headers`] (request id, route, client address,
//! header bound), [`Tenancy::authenticate`], [`Tenancy::resolve_tenant`],
//! [`Tenancy::rate_limit`], the handler, [`Tenancy::audit_response`] and [`Tenancy::finish`].
//! Each step either lets the request go on or returns a [`Rejection`] that the adapter renders
//! as it is. Denials are audited and counted by the step that makes them.
//!
//! ```
//! use std::net::IpAddr;
//! use std::sync::Arc;
//! use tenancy_core::memory::{MemoryAuditSink, MemoryRateLimiter, MemoryTenantDirectory};
//! use tenancy_core::{Claims, Result as CoreResult, TokenVerifier};
//! use tenancy_http::{Header, RequestHead, Tenancy};
//!
//! #[derive(Debug)]
//! struct NoTokens;
//! #[async_trait::async_trait]
//! impl TokenVerifier for NoTokens {
//!     async fn verify(&self, _: &str) -> CoreResult<Claims> {
//!         Err(tenancy_core::Error::Rejected(tenancy_core::TokenRejection::BadSignature))
//!     }
//! }
//!
//! struct Head;
//! impl RequestHead for Head {
//!     fn method(&self) -> &str { "GET" }
//!     fn path(&self) -> &str { "/v1/me" }
//!     fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> + 'a {
//!         (name == "authorization").then_some(&b"Bearer abc"[..]).into_iter()
//!     }
//!     fn header_bytes(&self) -> usize { 30 }
//!     fn peer_addr(&self) -> Option<IpAddr> { "127.0.0.1".parse().ok() }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tenancy_http::Error> {
//! let tenancy = Tenancy::builder(
//!     Arc::new(NoTokens),
//!     Arc::new(MemoryTenantDirectory::new()),
//!     Arc::new(MemoryRateLimiter::new()),
//!     Arc::new(MemoryAuditSink::new()),
//! )
//! .build()?;
//! let meta = tenancy.begin(&Head);
//! tenancy.check_headers(&meta, &Head).unwrap();
//! let refused = tenancy
//!     .authenticate(&meta, Header::read(&Head, "authorization"))
//!     .await
//!     .unwrap_err();
//! assert_eq!(refused.status(), 401);
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use ::metrics::SharedString;
use tenancy_core::{
    Actor, AuditEvent, AuditSink, Claims, DecisionSource, Denial, EventId, FailurePolicy, Limit,
    LimitScope, Origin, Outcome, Quota, RateLimitDecision, RateLimitHeaders, RateLimitRequest,
    RateLimiter, RequestId, SharedClock, TenantContext, TenantDirectory, TenantId, TenantSettings,
    TierCatalog, TokenRejection, TokenVerifier, TryRecord, UserId,
};
use tracing::Span;

use crate::metrics::{self, LimiterOutcome, TenantLabels};
use crate::problem::{AuthFailure, Rejection, RejectionKind};
use crate::routes::{RouteMatch, RouteRule, RouteTable};
use crate::{Error, Result, TrustedProxies};

/// Default bound on the request head (names and values of every header), in bytes.
///
/// Why 16 KiB: far above any legitimate head (a large JWT is 2–4 KiB), low enough that a
/// request cannot make every layer copy and scan megabytes of headers.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default bound on the `Authorization` header, in bytes; larger values are refused before
/// the verifier sees them.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Default number of tenants that get their own metrics label.
pub const DEFAULT_MAX_TENANT_LABELS: usize = 100;
/// The header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The default tenant header.
pub const DEFAULT_TENANT_HEADER: &str = "x-tenant-id";
/// The route label of requests no rule or framework route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Read access to a request head, implemented by each adapter for its request type.
pub trait RequestHead {
    /// The method (`GET`).
    fn method(&self) -> &str;
    /// The path, without the query.
    fn path(&self) -> &str;
    /// Every value of the header `name` (a lowercase name), in arrival order.
    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> + 'a;
    /// The size of the head: the names and values of every header, in bytes.
    fn header_bytes(&self) -> usize;
    /// The address of the connection's peer.
    fn peer_addr(&self) -> Option<IpAddr>;
    /// The route template the framework matched, when it knows one (a metrics label).
    fn framework_route(&self) -> Option<&str> {
        None
    }
}

/// One header, read for a decision: absent, one value, or several (which is ambiguous for
/// the headers read here and refused). The value is borrowed from the request: a bearer
/// token is verified where it lies, not copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header<'a> {
    /// Not sent.
    Absent,
    /// Sent once.
    One(&'a [u8]),
    /// Sent more than once.
    Many,
}

impl<'a> Header<'a> {
    /// Reads the header `name` (lowercase) from `head`.
    pub fn read(head: &'a impl RequestHead, name: &str) -> Self {
        Self::from_values(head.header_values(name))
    }

    /// The header whose values (in the order sent) `values` gives.
    ///
    /// ```
    /// use tenancy_http::Header;
    /// assert_eq!(Header::from_values([b"Bearer x".as_slice()].into_iter()), Header::One(b"Bearer x"));
    /// assert_eq!(Header::from_values([b"a".as_slice(), b"b"].into_iter()), Header::Many);
    /// assert_eq!(Header::from_values(std::iter::empty()), Header::Absent);
    /// ```
    pub fn from_values(mut values: impl Iterator<Item = &'a [u8]>) -> Self {
        match (values.next(), values.next()) {
            (None, _) => Self::Absent,
            (Some(v), None) => Self::One(v),
            (Some(_), Some(_)) => Self::Many,
        }
    }
}

/// What a handler adds to the audit record of its response, through the response's
/// extensions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditNote {
    /// Replaces the outcome derived from the status.
    pub outcome: Option<Outcome>,
    /// The id of the resource acted on (for example the id of a record just created).
    pub resource_id: Option<String>,
    /// Why (a failure class); never a secret.
    pub reason: Option<String>,
    /// Further details (redacted by the audit store before anything is kept).
    pub details: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug)]
struct MetaInner {
    request_id: RequestId,
    client_addr: Option<IpAddr>,
    route: Option<RouteMatch>,
    /// The framework's route template; only kept when no rule matched (it is the label then).
    framework_route: Option<Arc<str>>,
    started: Instant,
    span: Span,
    tenant: OnceLock<TenantId>,
    claims: OnceLock<Arc<Claims>>,
    resolved: OnceLock<Resolved>,
}

/// What the layers know about one request; cheap to clone, shared by every layer of it.
///
/// The adapters put it in the request's extensions (the only value they add there): the
/// verified claims, the tenant context and the tenant's settings are read from it, so that
/// a handler, an extractor or a later layer finds everything the earlier ones decided in one
/// place.
#[derive(Debug, Clone)]
pub struct RequestMeta(Arc<MetaInner>);

impl RequestMeta {
    /// The request id (the client's when it sent a sane one, else a fresh one).
    pub fn request_id(&self) -> &RequestId {
        &self.0.request_id
    }

    /// The client address, through trusted proxies.
    pub fn client_addr(&self) -> Option<IpAddr> {
        self.0.client_addr
    }

    /// The route rule that matched, if any.
    pub fn route(&self) -> Option<&RouteMatch> {
        self.0.route.as_ref()
    }

    /// The route label: the matched rule's template, else the framework's, else `unmatched`.
    pub fn route_label(&self) -> &str {
        self.0
            .route
            .as_ref()
            .map(RouteMatch::template)
            .or(self.0.framework_route.as_deref())
            .unwrap_or(UNMATCHED_ROUTE)
    }

    /// Whether the matched rule makes the route public.
    pub fn is_public(&self) -> bool {
        self.route().is_some_and(|m| m.rule().is_public())
    }

    /// The tenant, once a token has been verified.
    pub fn tenant(&self) -> Option<&TenantId> {
        self.0.tenant.get()
    }

    /// The verified claims, once a token has been verified ([`Tenancy::authenticate`]).
    pub fn claims(&self) -> Option<&Arc<Claims>> {
        self.0.claims.get()
    }

    /// The tenant context, once the tenant has been resolved ([`Tenancy::resolve_tenant`]).
    pub fn context(&self) -> Option<&TenantContext> {
        self.resolved().map(|r| &r.context)
    }

    /// The tenant context and the tenant's settings, once the tenant has been resolved.
    pub fn resolved(&self) -> Option<&Resolved> {
        self.0.resolved.get()
    }

    /// The request's tracing span (fields `request_id`, `method`, `route`, `tenant`).
    pub fn span(&self) -> &Span {
        &self.0.span
    }

    /// When the request started.
    pub fn started(&self) -> Instant {
        self.0.started
    }

    /// [`RequestMeta::route_label`] as a metrics label, without copying the template.
    fn route_label_shared(&self) -> SharedString {
        match (&self.0.route, &self.0.framework_route) {
            (Some(m), _) => SharedString::from_shared(Arc::clone(m.shared_template())),
            (None, Some(f)) => SharedString::from_shared(Arc::clone(f)),
            (None, None) => SharedString::const_str(UNMATCHED_ROUTE),
        }
    }

    fn set_tenant(&self, tenant: &TenantId) {
        // Set once per request (authenticate, then resolve_tenant): the second call clones
        // nothing.
        if self.0.tenant.get().is_none() && self.0.tenant.set(tenant.clone()).is_ok() {
            self.0.span.record("tenant", tenant.as_str());
        }
    }
}

/// An audit event a response still has to hand to the sink ([`Tenancy::try_audit_response`]),
/// for [`Tenancy::finish_audit`].
#[derive(Debug)]
pub struct PendingAudit {
    event: Box<AuditEvent>,
    sync: bool,
}

/// A resolved tenant: the request's context and the tenant's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The verified context, with tier and request id filled in.
    pub context: TenantContext,
    /// The tenant's settings from the directory.
    pub settings: TenantSettings,
}

#[derive(Debug)]
struct Inner {
    verifier: Arc<dyn TokenVerifier>,
    directory: Arc<dyn TenantDirectory>,
    limiter: Arc<dyn RateLimiter>,
    audit: Arc<dyn AuditSink>,
    tiers: TierCatalog,
    proxies: TrustedProxies,
    routes: RouteTable,
    clock: SharedClock,
    tenant_header: String,
    max_header_bytes: usize,
    max_token_bytes: usize,
    anonymous_tenant: TenantId,
    anonymous_limit: Option<Quota>,
    failure_policy: FailurePolicy,
    labels: TenantLabels,
    audit_denials: bool,
    /// Whether a request of an anonymous limit without a client address was reported.
    warned_no_peer: std::sync::atomic::AtomicBool,
}

/// Builds a [`Tenancy`].
#[derive(Debug)]
pub struct TenancyBuilder {
    verifier: Arc<dyn TokenVerifier>,
    directory: Arc<dyn TenantDirectory>,
    limiter: Arc<dyn RateLimiter>,
    audit: Arc<dyn AuditSink>,
    tiers: TierCatalog,
    proxies: TrustedProxies,
    routes: RouteTable,
    clock: SharedClock,
    tenant_header: String,
    max_header_bytes: usize,
    max_token_bytes: usize,
    anonymous_tenant: Option<TenantId>,
    anonymous_limit: Option<Quota>,
    failure_policy: FailurePolicy,
    max_tenant_labels: usize,
    audit_denials: bool,
}

impl TenancyBuilder {
    /// The tiers whose quotas apply (default: [`TierCatalog::default`]).
    pub fn with_tiers(mut self, tiers: TierCatalog) -> Self {
        self.tiers = tiers;
        self
    }

    /// The proxies whose `Forwarded` / `X-Forwarded-For` are believed (default: none).
    pub fn with_trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.proxies = proxies;
        self
    }

    /// Adds a route rule; rules are tried in the order added.
    pub fn with_route(mut self, rule: RouteRule) -> Self {
        self.routes.push(rule);
        self
    }

    /// Marks `pattern` (every method) as exempt from rate limits: admin routes.
    pub fn with_exempt_route(self, pattern: &str) -> Result<Self> {
        Ok(self.with_route(RouteRule::new(pattern)?.exempt()))
    }

    /// Marks `pattern` (every method) as public: no token needed.
    pub fn with_public_route(self, pattern: &str) -> Result<Self> {
        Ok(self.with_route(RouteRule::new(pattern)?.public()))
    }

    /// The clock deciding whether a bypass window is open (default: the system clock).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The header that, when sent, must name the token's tenant (default `x-tenant-id`).
    pub fn with_tenant_header(mut self, name: &str) -> Self {
        self.tenant_header = name.to_owned();
        self
    }

    /// The bound on the request head (default [`DEFAULT_MAX_HEADER_BYTES`]).
    pub fn with_max_header_bytes(mut self, bytes: usize) -> Self {
        self.max_header_bytes = bytes;
        self
    }

    /// The bound on the `Authorization` header (default [`DEFAULT_MAX_TOKEN_BYTES`]).
    pub fn with_max_token_bytes(mut self, bytes: usize) -> Self {
        self.max_token_bytes = bytes;
        self
    }

    /// The platform tenant (default `platform`): its audit trail and limits take requests
    /// that have no verified tenant (authentication failures, anonymous limits), and it is the
    /// only tenant in which a token may grant `super_admin`.
    pub fn with_anonymous_tenant(mut self, tenant: TenantId) -> Self {
        self.anonymous_tenant = Some(tenant);
        self
    }

    /// A limit per client address on public routes (login floods); none by default. IPv6
    /// clients are counted by their /64 prefix.
    pub fn with_anonymous_limit(mut self, quota: Quota) -> Self {
        self.anonymous_limit = Some(quota);
        self
    }

    /// What the limiter does when its backend cannot decide (default
    /// [`FailurePolicy::FailClosed`]: a 503, never an unlimited service).
    pub fn with_failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// How many tenants get their own metrics label (default
    /// [`DEFAULT_MAX_TENANT_LABELS`]); later tenants share `other`.
    pub fn with_max_tenant_labels(mut self, max: usize) -> Self {
        self.max_tenant_labels = max;
        self
    }

    /// Whether 401, 403 and 429 answers are audited (default: yes).
    pub fn with_denial_audit(mut self, enabled: bool) -> Self {
        self.audit_denials = enabled;
        self
    }

    /// Checks the configuration and builds.
    pub fn build(self) -> Result<Tenancy> {
        let h = &self.tenant_header;
        let token = !h.is_empty()
            && h.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
            });
        if !token {
            return Err(Error::InvalidHeaderName { name: h.clone() });
        }
        if let Some(q) = &self.anonymous_limit {
            q.validate()?;
        }
        let anonymous_tenant = match self.anonymous_tenant {
            Some(t) => t,
            None => TenantId::parse("platform")?,
        };
        Ok(Tenancy {
            inner: Arc::new(Inner {
                verifier: self.verifier,
                directory: self.directory,
                limiter: self.limiter,
                audit: self.audit,
                tiers: self.tiers,
                proxies: self.proxies,
                routes: self.routes,
                clock: self.clock,
                tenant_header: self.tenant_header,
                max_header_bytes: self.max_header_bytes,
                max_token_bytes: self.max_token_bytes,
                anonymous_tenant,
                anonymous_limit: self.anonymous_limit,
                failure_policy: self.failure_policy,
                labels: TenantLabels::new(self.max_tenant_labels),
                audit_denials: self.audit_denials,
                warned_no_peer: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }
}

/// The shared decision logic of the tenancy adapters; cheap to clone.
#[derive(Debug, Clone)]
pub struct Tenancy {
    inner: Arc<Inner>,
}

/// Parses `Bearer <token>`: one header, the scheme case-insensitively, one or more spaces,
/// then a token of the RFC 6750 `b64token` alphabet.
fn bearer(header: Header<'_>, max: usize) -> std::result::Result<&str, AuthFailure> {
    let value = match header {
        Header::Absent => return Err(AuthFailure::Missing),
        Header::Many => return Err(AuthFailure::Ambiguous),
        Header::One(v) => v,
    };
    if value.len() > max {
        return Err(AuthFailure::Oversized);
    }
    let (scheme, rest) = value.split_at_checked(6).ok_or(AuthFailure::BadScheme)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return Err(AuthFailure::BadScheme);
    }
    // `1*SP` (RFC 6750): spaces only before the token; trailing white space is the header
    // value's own.
    let token = rest.trim_ascii_end();
    let token = &token[token.iter().take_while(|b| **b == b' ').count()..];
    // Every byte is checked, without an early exit (about three instructions a byte).
    let ok = !token.is_empty() && token.iter().fold(true, |ok, &b| ok & is_b64token(b));
    if !ok {
        return Err(AuthFailure::BadScheme);
    }
    // The token where it lies in the request (no copy); only ASCII passed the check above.
    std::str::from_utf8(token).map_err(|_| AuthFailure::BadScheme)
}

/// Whether `b` is in the RFC 6750 `b64token` alphabet: ASCII letters and digits and
/// `-._~+/=`. Written with non-short-circuit `|`: no branch per byte.
#[inline]
fn is_b64token(b: u8) -> bool {
    let lower = b | 0x20;
    b.is_ascii_digit()
        | lower.is_ascii_lowercase()
        | (b == b'-')
        | (b == b'.')
        | (b == b'_')
        | (b == b'~')
        | (b == b'+')
        | (b == b'/')
        | (b == b'=')
}

/// A fresh request id in the form of [`RequestId::generate`] (128 random bits, 22 characters
/// of URL-safe base64), drawn from the thread's CSPRNG (`rand`'s `ThreadRng`: ChaCha12,
/// seeded and regularly reseeded from the operating system) instead of a system call per
/// request. Ids stay unguessable.
fn fresh_request_id() -> RequestId {
    use rand::RngCore as _;
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    RequestId::from_random(raw)
}

/// A fresh event id as [`EventId::generate`] makes it (128 random bits), drawn from the
/// thread's CSPRNG like [`fresh_request_id`]: an idempotency key, unique without a system
/// call per audited request.
fn fresh_event_id() -> EventId {
    use rand::RngCore as _;
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    EventId::from_bytes(raw)
}

/// The anonymous limit's key for a client address: the IPv4 address, or the IPv6 /64
/// (one subscriber's usual allocation: counting each /128 would let a client rotate
/// addresses through its prefix and never be limited).
fn anonymous_key(addr: Option<IpAddr>) -> String {
    match addr {
        Some(IpAddr::V6(v6)) => {
            let prefix = std::net::Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)));
            format!("ip:{prefix}")
        }
        Some(ip) => format!("ip:{ip}"),
        None => "ip:unknown".to_owned(),
    }
}

fn outcome_for(status: u16) -> Outcome {
    match status {
        401 | 403 | 429 => Outcome::Denied,
        500.. => Outcome::Error,
        400.. => Outcome::Failure,
        _ => Outcome::Success,
    }
}

impl Tenancy {
    /// Starts a builder with the four backends every deployment chooses.
    pub fn builder(
        verifier: Arc<dyn TokenVerifier>,
        directory: Arc<dyn TenantDirectory>,
        limiter: Arc<dyn RateLimiter>,
        audit: Arc<dyn AuditSink>,
    ) -> TenancyBuilder {
        TenancyBuilder {
            verifier,
            directory,
            limiter,
            audit,
            tiers: TierCatalog::default(),
            proxies: TrustedProxies::none(),
            routes: RouteTable::default(),
            clock: tenancy_core::system_clock(),
            tenant_header: DEFAULT_TENANT_HEADER.to_owned(),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            anonymous_tenant: None,
            anonymous_limit: None,
            failure_policy: FailurePolicy::FailClosed,
            max_tenant_labels: DEFAULT_MAX_TENANT_LABELS,
            audit_denials: true,
        }
    }

    /// The tenant header name.
    pub fn tenant_header(&self) -> &str {
        &self.inner.tenant_header
    }

    /// The tier catalog.
    pub fn tiers(&self) -> &TierCatalog {
        &self.inner.tiers
    }

    /// Step 1: the request id, the matching route rule, the client address and the span.
    pub fn begin(&self, head: &impl RequestHead) -> RequestMeta {
        let request_id = match Header::read(head, REQUEST_ID_HEADER) {
            Header::One(v) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| RequestId::parse(s).ok()),
            _ => None,
        }
        .unwrap_or_else(fresh_request_id);
        let route = self.inner.routes.find(head.method(), head.path());
        let peer = head.peer_addr();
        let client_addr = if self.inner.proxies.is_empty() {
            peer.map(|p| p.to_canonical())
        } else {
            // Only the header the proxies write is read.
            let proxies = &self.inner.proxies;
            let values: Vec<&[u8]> = head.header_values(proxies.header_name()).collect();
            proxies.client_addr_from(peer, &values)
        };
        let framework_route = match route {
            Some(_) => None,
            None => head.framework_route().map(Arc::<str>::from),
        };
        let label = route
            .as_ref()
            .map(RouteMatch::template)
            .or(framework_route.as_deref())
            .unwrap_or(UNMATCHED_ROUTE);
        let span = tracing::info_span!(
            "tenancy.request",
            request_id = %request_id,
            method = head.method(),
            route = label,
            tenant = tracing::field::Empty,
        );
        RequestMeta(Arc::new(MetaInner {
            request_id,
            client_addr,
            route,
            framework_route,
            started: Instant::now(),
            span,
            tenant: OnceLock::new(),
            claims: OnceLock::new(),
            resolved: OnceLock::new(),
        }))
    }

    /// Step 1b: refuses a head larger than the configured bound (431).
    pub fn check_headers(
        &self,
        meta: &RequestMeta,
        head: &impl RequestHead,
    ) -> std::result::Result<(), Rejection> {
        if head.header_bytes() > self.inner.max_header_bytes {
            return Err(Rejection::header_too_large(self.inner.max_header_bytes)
                .with_request_id(meta.request_id()));
        }
        Ok(())
    }

    /// Step 2: verifies the bearer token, and keeps the claims in `meta`
    /// ([`RequestMeta::claims`]). `Ok(None)` on a public route (the token is not read there).
    /// Every failure answers the same 401; a verifier that cannot decide answers 503.
    pub async fn authenticate<'m>(
        &self,
        meta: &'m RequestMeta,
        authorization: Header<'_>,
    ) -> std::result::Result<Option<&'m Claims>, Rejection> {
        if meta.is_public() {
            return Ok(None);
        }
        let token = match bearer(authorization, self.inner.max_token_bytes) {
            Ok(t) => t,
            Err(f) => return Err(self.unauthorized(meta, f).await),
        };
        let verifier = &self.inner.verifier;
        let verified = match verifier.try_verify(token) {
            Some(v) => v,
            None => verifier.verify_shared(token).await,
        };
        match verified {
            Ok(claims) => {
                meta.set_tenant(&claims.tenant_id);
                // Verified once per request: a second verification (two stacks) keeps the
                // first claims, which came from the same header.
                Ok(Some(meta.0.claims.get_or_init(|| claims)))
            }
            Err(tenancy_core::Error::Rejected(r)) => {
                Err(self.unauthorized(meta, AuthFailure::Token(r)).await)
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(parent: meta.span(), error = %e, "token verifier could not decide");
                metrics::auth_failure("verifier_unavailable");
                Err(Rejection::unavailable().with_request_id(meta.request_id()))
            }
            // A backend that refuses the verifier (a session store's missing permission): the
            // token may be fine, so the client must not be told to throw it away.
            Err(e) if e.kind() == tenancy_core::ErrorKind::Internal => {
                tracing::error!(parent: meta.span(), error = %e, "token verifier's backend refused the call");
                metrics::auth_failure("verifier_refused");
                Err(
                    // The cause is logged above; the answer names none.
                    Rejection::misconfiguration("authentication")
                        .with_request_id(meta.request_id()),
                )
            }
            Err(e) => {
                tracing::warn!(parent: meta.span(), error = %e, "token verifier failed");
                Err(self
                    .unauthorized(meta, AuthFailure::Token(TokenRejection::Malformed))
                    .await)
            }
        }
    }

    async fn unauthorized(&self, meta: &RequestMeta, failure: AuthFailure) -> Rejection {
        metrics::auth_failure(failure.as_str());
        tracing::info!(parent: meta.span(), reason = failure.as_str(), "authentication failed");
        let r = Rejection::unauthorized(Some(failure)).with_request_id(meta.request_id());
        self.audit_denial(meta, None, &r).await;
        r
    }

    /// Step 3: the tenant from the verified claims, kept in `meta`
    /// ([`RequestMeta::resolved`], [`RequestMeta::context`]). 403 when the tenant header names
    /// another tenant, the token grants `super_admin` in a tenant other than the platform
    /// tenant ([`TenancyBuilder::with_anonymous_tenant`]), the tenant is unknown to the
    /// directory, or suspended (a header naming another tenant and a `super_admin` claimed
    /// outside the platform count against the user's and the tenant's limits, a suspended
    /// tenant against the user's alone; all carry the limits' headers, and become a 429 once
    /// a limit is exhausted); 503 when the directory cannot answer.
    pub async fn resolve_tenant<'m>(
        &self,
        meta: &'m RequestMeta,
        claims: &Claims,
        tenant_header: Header<'_>,
    ) -> std::result::Result<&'m Resolved, Rejection> {
        meta.set_tenant(&claims.tenant_id);
        let mut context = TenantContext::from_claims(claims);
        context.request_id = Some(meta.request_id().clone());
        let agrees = match &tenant_header {
            Header::Absent => true,
            Header::One(v) => *v == context.tenant.as_str().as_bytes(),
            Header::Many => false,
        };
        if !agrees {
            let r = Rejection::tenant_mismatch(&self.inner.tenant_header);
            return Err(self.deny_charged(meta, &context, r, None, true).await);
        }
        // `super_admin` is platform-wide: held in any other tenant it would open every
        // tenant's admin routes and skip the limits. Refused here, once, for every handler
        // and stage that trusts `TenantContext::is_super_admin`.
        if context.is_super_admin() && context.tenant != self.inner.anonymous_tenant {
            // Charged as the user of that tenant it is: the token's role is not believed.
            let r = Rejection::denied(Denial::PlatformRoleOutsidePlatform);
            return Err(self.deny_charged(meta, &context, r, None, true).await);
        }
        let directory = &self.inner.directory;
        let found = match directory.try_get(&context.tenant) {
            Some(found) => found,
            None => directory.get(&context.tenant).await,
        };
        let settings = match found {
            Ok(Some(s)) => s,
            Ok(None) => {
                let r = Rejection::denied(Denial::UnknownTenant);
                return Err(self.deny(meta, &context, r).await);
            }
            Err(e) => {
                tracing::warn!(parent: meta.span(), error = %e, "tenant directory could not answer");
                return Err(Rejection::unavailable().with_request_id(meta.request_id()));
            }
        };
        if settings.is_suspended() {
            let r = Rejection::denied(Denial::TenantSuspended);
            // Only the user's limit: the tenant's clients retrying while it is suspended must
            // not leave it an empty tenant-wide bucket when it is resumed.
            return Err(self
                .deny_charged(meta, &context, r, Some(settings), false)
                .await);
        }
        context.tier = Some(settings.tier.clone());
        Ok(meta
            .0
            .resolved
            .get_or_init(|| Resolved { context, settings }))
    }

    async fn deny(&self, meta: &RequestMeta, ctx: &TenantContext, r: Rejection) -> Rejection {
        tracing::info!(parent: meta.span(), reason = %r.kind().label(), "request denied");
        let r = r.with_request_id(meta.request_id());
        self.audit_denial(meta, Some(ctx), &r).await;
        r
    }

    /// Step 4: the rate limit, for the tenant [`Tenancy::resolve_tenant`] kept in `meta` (none:
    /// an anonymous request). Returns the rate-limit headers for the response (none for
    /// super admins, exempt routes, and public routes without an anonymous limit). 429 when a
    /// limit is exhausted; 503 when the limiter cannot decide and fails closed. During a
    /// tenant's bypass window the limits are only observed, and each request they would have
    /// refused is audited as `ratelimit.bypass`.
    pub async fn rate_limit(
        &self,
        meta: &RequestMeta,
    ) -> std::result::Result<RateLimitHeaders, Rejection> {
        if meta.route().is_some_and(|m| m.rule().is_exempt()) {
            metrics::limiter(LimiterOutcome::Exempt);
            return Ok(RateLimitHeaders::default());
        }
        let (request, bypass, ctx) = match meta.resolved() {
            None => {
                let Some(quota) = self.inner.anonymous_limit.filter(|_| meta.is_public()) else {
                    return Ok(RateLimitHeaders::default());
                };
                if meta.client_addr().is_none() {
                    self.warn_no_peer(meta);
                }
                let key = anonymous_key(meta.client_addr());
                let user = UserId::parse(&key).map_err(|_| {
                    tracing::error!(parent: meta.span(), key = %key, "client address key refused");
                    Rejection::misconfiguration("client address key")
                        .with_request_id(meta.request_id())
                })?;
                let limits = vec![Limit::client(quota).on_unavailable(self.inner.failure_policy)];
                let req =
                    RateLimitRequest::new(self.inner.anonymous_tenant.clone(), Some(user), limits);
                (req, false, None)
            }
            Some(r) if r.context.is_super_admin() => {
                metrics::limiter(LimiterOutcome::Exempt);
                return Ok(RateLimitHeaders::default());
            }
            Some(r) => {
                let (req, bypass) = self.tenant_limits(meta, &r.context, &r.settings)?;
                (req, bypass, Some(&r.context))
            }
        };
        let decision = self.limit(meta, request, bypass, ctx).await?;
        Ok(decision.header_block())
    }

    /// Says once that requests reach the anonymous limit without a client address: they
    /// then all share one bucket (one client can spend everyone's logins), and their audit
    /// events carry no address. The usual cause is a server that does not hand the peer to
    /// the adapters (axum without `ConnectInfo`); a client can also send a `Forwarded` value
    /// whose quoting does not close ([`TrustedProxies::client_addr`]).
    #[cold]
    fn warn_no_peer(&self, meta: &RequestMeta) {
        use std::sync::atomic::Ordering;
        let warned = &self.inner.warned_no_peer;
        if !warned.load(Ordering::Relaxed) && !warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                parent: meta.span(),
                "a request under the anonymous rate limit has no client address: every such \
                 request shares one limit, and audit events carry no address; give the adapter \
                 the peer address (axum: serve with \
                 `into_make_service_with_connect_info::<SocketAddr>()`)"
            );
        }
    }

    /// What a tenant's user is limited by on this request, and whether the tenant's bypass
    /// window is open (the limits are then only observed).
    fn tenant_limits(
        &self,
        meta: &RequestMeta,
        ctx: &TenantContext,
        settings: &TenantSettings,
    ) -> std::result::Result<(RateLimitRequest, bool), Rejection> {
        let Some(limits) = settings.limits(&self.inner.tiers) else {
            tracing::error!(parent: meta.span(), tier = %settings.tier, "tier is not in the catalog");
            return Err(Rejection::misconfiguration(
                "the tenant's tier is not in the tier catalog",
            )
            .with_request_id(meta.request_id()));
        };
        let policy = self.inner.failure_policy;
        let bypass = settings.is_bypassed_by(&*self.inner.clock);
        let mut ls = vec![
            Limit::tenant(limits.tenant).on_unavailable(policy),
            Limit::user(limits.user).on_unavailable(policy),
        ];
        if bypass {
            ls = ls.into_iter().map(Limit::shadow).collect();
        }
        let req = RateLimitRequest::new(ctx.tenant.clone(), Some(ctx.user.clone()), ls);
        Ok((req, bypass))
    }

    /// Asks the limiter. 429 (audited) when a limit is exhausted; 503 when the limiter cannot
    /// decide and fails closed; during a bypass window, each request the limits would have
    /// refused is audited as `ratelimit.bypass`.
    async fn limit(
        &self,
        meta: &RequestMeta,
        request: RateLimitRequest,
        bypass: bool,
        ctx: Option<&TenantContext>,
    ) -> std::result::Result<RateLimitDecision, Rejection> {
        let limiter = &self.inner.limiter;
        let decided = match limiter.try_check(&request) {
            Some(decided) => decided,
            None => limiter.check(&request).await,
        };
        let decision = match decided {
            Ok(d) => d,
            Err(e) => {
                metrics::limiter(LimiterOutcome::Error);
                tracing::warn!(parent: meta.span(), error = %e, "rate limiter could not decide; failing closed");
                return Err(Rejection::unavailable().with_request_id(meta.request_id()));
            }
        };
        match decision.source {
            DecisionSource::FailOpen => metrics::limiter(LimiterOutcome::FailOpen),
            DecisionSource::LocalFallback => metrics::limiter(LimiterOutcome::LocalFallback),
            _ => {}
        }
        if !decision.allowed {
            metrics::limiter(LimiterOutcome::Denied);
            let r = Rejection::rate_limited(&decision).with_request_id(meta.request_id());
            tracing::info!(parent: meta.span(), "rate limit exceeded");
            self.audit_denial(meta, ctx, &r).await;
            return Err(r);
        }
        if bypass && decision.states.iter().any(|s| !s.allowed) {
            metrics::limiter(LimiterOutcome::Bypassed);
            if let Some(ctx) = ctx {
                let event = self
                    .event(meta, Some(ctx), "ratelimit.bypass", Outcome::Success)
                    .with_reason("bypass_window");
                // Boxed for the reason `audit_denial` is.
                Box::pin(self.emit(meta, event, false)).await;
            }
        } else {
            metrics::limiter(LimiterOutcome::Allowed);
        }
        Ok(decision)
    }

    /// Denies (audited) a request that is refused but still one of the token's user: a
    /// tenant header naming another tenant, a suspended tenant, `super_admin` claimed outside
    /// the platform tenant. It counts against the user's limits and carries their headers, so
    /// the refusal cannot be repeated without limit (each one is audited): the 429 (audited)
    /// when a limit is exhausted. The 403 stands alone when nothing limits the request here
    /// (the platform's super admin, an exempt route, a tenant the
    /// directory does not know or cannot answer for, a limiter that cannot decide).
    /// `settings`: the tenant's, when already read; `with_tenant`: whether the tenant-wide
    /// limit is charged too, or only the user's (always only the user's for a suspended
    /// tenant). Boxed: the rare path, kept out of every request's future.
    fn deny_charged<'a>(
        &'a self,
        meta: &'a RequestMeta,
        ctx: &'a TenantContext,
        r: Rejection,
        settings: Option<TenantSettings>,
        with_tenant: bool,
    ) -> Pin<Box<dyn Future<Output = Rejection> + Send + 'a>> {
        Box::pin(async move {
            let r = match self.charge_refused(meta, ctx, settings, with_tenant).await {
                Ok(Some(decision)) => r.with_headers(decision.headers()),
                Ok(None) => r,
                Err(limited) => return limited,
            };
            self.deny(meta, ctx, r).await
        })
    }

    /// [`Tenancy::deny_charged`]'s charge: `Ok(Some(decision))` for its headers, `Err` the
    /// 429, `Ok(None)` when nothing limits the request here.
    async fn charge_refused(
        &self,
        meta: &RequestMeta,
        ctx: &TenantContext,
        settings: Option<TenantSettings>,
        with_tenant: bool,
    ) -> std::result::Result<Option<RateLimitDecision>, Rejection> {
        // Only the platform's super admin is not limited; the role claimed in another
        // tenant is refused, and its refusals count like any user's.
        let platform_admin = ctx.is_super_admin() && ctx.tenant == self.inner.anonymous_tenant;
        if platform_admin || meta.route().is_some_and(|m| m.rule().is_exempt()) {
            return Ok(None);
        }
        let settings = match settings {
            Some(s) => s,
            None => {
                let directory = &self.inner.directory;
                let found = match directory.try_get(&ctx.tenant) {
                    Some(found) => found,
                    None => directory.get(&ctx.tenant).await,
                };
                match found {
                    Ok(Some(s)) => s,
                    _ => return Ok(None),
                }
            }
        };
        let Ok((mut request, bypass)) = self.tenant_limits(meta, ctx, &settings) else {
            return Ok(None);
        };
        // A suspended tenant's bucket is never charged, whatever the refusal: it must not be
        // found empty when the tenant is resumed.
        if !with_tenant || settings.is_suspended() {
            request.limits.retain(|l| l.scope != LimitScope::Tenant);
        }
        match self.limit(meta, request, bypass, Some(ctx)).await {
            Ok(decision) => Ok(Some(decision)),
            Err(r) if matches!(r.kind(), RejectionKind::RateLimited) => Err(r),
            Err(_) => Ok(None),
        }
    }

    /// Step 5, after the handler: audits the response when its route is audited, and any
    /// 401, 403 or 429 the handler itself gave (an extractor's permission check), except the
    /// 401 and 403 of a route whose handler records them ([`RouteRule::handler_audits_denials`]).
    /// On a route marked [`RouteRule::audit_sync`] the response waits for the store, and a
    /// store that cannot take the event turns the answer into a 503.
    ///
    /// [`Tenancy::try_audit_response`] and [`Tenancy::finish_audit`] are the same in two
    /// steps, for an adapter that would rather not build a future when the sink takes the
    /// event at once.
    pub async fn audit_response(
        &self,
        meta: &RequestMeta,
        status: u16,
        note: Option<AuditNote>,
    ) -> std::result::Result<(), Rejection> {
        match self.try_audit_response(meta, status, note) {
            Ok(()) => Ok(()),
            Err(pending) => self.finish_audit(meta, pending).await,
        }
    }

    /// [`Tenancy::audit_response`] as far as it goes without waiting: `Ok` when the event (if
    /// any) was handed to the sink at once ([`AuditSink::try_record`]); otherwise the event,
    /// to pass to [`Tenancy::finish_audit`] (a synchronously audited route, a full queue).
    pub fn try_audit_response(
        &self,
        meta: &RequestMeta,
        status: u16,
        note: Option<AuditNote>,
    ) -> std::result::Result<(), PendingAudit> {
        let Some((event, sync)) = self.response_event(meta, status, note) else {
            return Ok(());
        };
        if sync {
            return Err(PendingAudit {
                event: Box::new(event),
                sync,
            });
        }
        match self.inner.audit.try_record(event) {
            TryRecord::Done(result) => {
                self.accepted(meta, result);
                Ok(())
            }
            TryRecord::Wait(event) => Err(PendingAudit { event, sync: false }),
        }
    }

    /// Hands over the event [`Tenancy::try_audit_response`] could not, waiting as
    /// [`Tenancy::audit_response`] would.
    pub async fn finish_audit(
        &self,
        meta: &RequestMeta,
        pending: PendingAudit,
    ) -> std::result::Result<(), Rejection> {
        let sync = pending.sync;
        if self.deliver(meta, *pending.event, sync).await || !sync {
            Ok(())
        } else {
            Err(Rejection::unavailable().with_request_id(meta.request_id()))
        }
    }

    /// The event a response is audited with, if any, and whether its route waits for the
    /// store.
    fn response_event(
        &self,
        meta: &RequestMeta,
        status: u16,
        note: Option<AuditNote>,
    ) -> Option<(AuditEvent, bool)> {
        let rule = meta.route().map(|m| m.rule());
        let spec = rule.and_then(|r| r.audit_spec());
        let denial = matches!(status, 401 | 403 | 429);
        let recorded_by_handler =
            matches!(status, 401 | 403) && rule.is_some_and(|r| r.audits_own_denials());
        if spec.is_none() && !(denial && self.inner.audit_denials && !recorded_by_handler) {
            return None;
        }
        let note = note.unwrap_or_default();
        let action = spec.map_or("http.denied", |s| s.action.as_str());
        let outcome = note.outcome.unwrap_or_else(|| outcome_for(status));
        let mut event = self.event(meta, meta.context(), action, outcome);
        event.details.insert("status".to_owned(), status.into());
        if let Some(reason) = note.reason {
            event.reason = Some(reason);
        } else if denial {
            event.reason = Some(format!("status_{status}"));
        }
        if let Some((s, kind)) = spec.and_then(|s| s.resource_kind.as_ref().map(|k| (s, k))) {
            let id = note.resource_id.or_else(|| {
                let p = s.resource_param.as_deref()?;
                meta.route()?.param(p).map(str::to_owned)
            });
            event.resource = Some(tenancy_core::ResourceRef {
                kind: kind.clone(),
                id,
            });
        }
        event.details.extend(note.details);
        Some((event, spec.is_some_and(|s| s.sync)))
    }

    /// Whether [`Tenancy::audit_response`] has anything to record for a response with
    /// `status` (so an adapter can skip the call).
    pub fn audits(&self, meta: &RequestMeta, status: u16) -> bool {
        meta.route().and_then(|m| m.rule().audit_spec()).is_some()
            || (self.inner.audit_denials && matches!(status, 401 | 403 | 429))
    }

    /// Last: records the request metrics (tenant, route template, status, latency).
    pub fn finish(&self, meta: &RequestMeta, status: u16) {
        let elapsed = meta.started().elapsed();
        // Labelled once resolved: tokens for tenants the directory does not know must not
        // take the bounded labels from real ones.
        let tenant = match (meta.resolved(), meta.tenant()) {
            (Some(r), _) => self.inner.labels.shared(Some(&r.context.tenant)),
            (None, Some(_)) => SharedString::const_str(metrics::UNRESOLVED),
            (None, None) => self.inner.labels.shared(None),
        };
        metrics::request(
            tenant,
            meta.route_label_shared(),
            status,
            elapsed.as_secs_f64(),
        );
        tracing::debug!(parent: meta.span(), status, elapsed_us = elapsed.as_micros() as u64, "request finished");
    }

    fn event(
        &self,
        meta: &RequestMeta,
        ctx: Option<&TenantContext>,
        action: &str,
        outcome: Outcome,
    ) -> AuditEvent {
        let tenant = ctx
            .map(|c| c.tenant.clone())
            .unwrap_or_else(|| self.inner.anonymous_tenant.clone());
        // As `AuditEvent::new`, with the event id from the thread's CSPRNG; built whole, in
        // place (each builder call would move the event, some 300 bytes).
        AuditEvent {
            event_id: fresh_event_id(),
            occurred_at: time::OffsetDateTime::now_utc(),
            tenant,
            actor: match ctx {
                Some(c) => Actor {
                    user: Some(c.user.clone()),
                    role: Some(c.role.clone()),
                    session: c.session,
                },
                None => Actor::default(),
            },
            action: action.to_owned(),
            resource: None,
            origin: Origin {
                client_addr: meta.client_addr(),
                request_id: Some(meta.request_id().clone()),
                route: Some(meta.route_label().to_owned()),
            },
            outcome,
            reason: None,
            details: serde_json::Map::new(),
        }
    }

    /// Audits a denial. Boxed: a denial is the rare path, and unboxed its event would be part
    /// of the future of every step that can deny, which each request's future holds (and
    /// moves).
    fn audit_denial<'a>(
        &'a self,
        meta: &'a RequestMeta,
        ctx: Option<&'a TenantContext>,
        r: &'a Rejection,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            if self.inner.audit_denials {
                self.record_denial(meta, ctx, r).await;
            }
        })
    }

    async fn record_denial(&self, meta: &RequestMeta, ctx: Option<&TenantContext>, r: &Rejection) {
        let spec = meta.route().and_then(|m| m.rule().audit_spec());
        let action: Cow<'_, str> = match (spec, r.kind()) {
            (Some(s), _) => Cow::Borrowed(&s.action),
            (None, RejectionKind::Unauthenticated(_)) => "auth.denied".into(),
            (None, RejectionKind::RateLimited) => "ratelimit.denied".into(),
            (None, _) => "tenant.denied".into(),
        };
        let event = self
            .event(meta, ctx, &action, Outcome::Denied)
            .with_reason(r.kind().label())
            .with_detail("status", r.status());
        self.emit(meta, event, false).await;
    }

    /// Hands an event to the sink, without a future when it takes it at once; `false`
    /// (logged and counted) when it was refused.
    async fn emit(&self, meta: &RequestMeta, event: AuditEvent, sync: bool) -> bool {
        if sync {
            return self.deliver(meta, event, true).await;
        }
        match self.inner.audit.try_record(event) {
            TryRecord::Done(result) => self.accepted(meta, result),
            TryRecord::Wait(event) => self.deliver(meta, *event, false).await,
        }
    }

    /// Hands an event to the sink, waiting for room (and for the store when `sync`).
    async fn deliver(&self, meta: &RequestMeta, event: AuditEvent, sync: bool) -> bool {
        let result = if sync {
            self.inner.audit.record_sync(event).await
        } else {
            self.inner.audit.record(event).await
        };
        self.accepted(meta, result)
    }

    /// `true` when the sink accepted; `false`, logged and counted, when it refused.
    fn accepted(&self, meta: &RequestMeta, result: tenancy_core::Result<()>) -> bool {
        match result {
            Ok(()) => true,
            Err(e) => {
                metrics::audit_failure();
                tracing::error!(parent: meta.span(), error = %e, "audit sink refused an event");
                false
            }
        }
    }
}

/// A decision's rate-limit headers as (name, value) pairs whose values are slices of one
/// shared buffer: an adapter turns each into its framework's header value without a copy.
///
/// ```
/// use tenancy_core::{Limit, Quota, RateLimitDecision, RateLimitRequest, TenantId};
///
/// let request = RateLimitRequest::new(TenantId::parse("acme")?, None, vec![Limit::tenant(Quota::per_minute(60))]);
/// let (decision, _) = RateLimitDecision::decide(&request, &[None], 0);
/// let values: Vec<_> = tenancy_http::shared_header_values(decision.header_block()).collect();
/// assert_eq!(values[0], ("x-ratelimit-limit", bytes::Bytes::from_static(b"60")));
/// assert_eq!(values.len(), decision.headers().len());
/// # Ok::<(), tenancy_core::ParseError>(())
/// ```
pub fn shared_header_values(
    headers: RateLimitHeaders,
) -> impl Iterator<Item = (&'static str, bytes::Bytes)> {
    let (text, ranges) = headers.into_parts();
    let shared = bytes::Bytes::from(text);
    ranges.map(move |(name, range)| (name, shared.slice(range)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests under the anonymous limit without a client address are reported once, however
    /// many come; a request with one is not reported.
    #[tokio::test]
    async fn a_missing_client_address_is_reported_once() {
        #[derive(Clone, Default)]
        struct Log(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Log {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl tracing_subscriber::fmt::MakeWriter<'_> for Log {
            type Writer = Self;
            fn make_writer(&self) -> Self {
                self.clone()
            }
        }
        #[derive(Debug)]
        struct NoTokens;
        #[async_trait::async_trait]
        impl TokenVerifier for NoTokens {
            async fn verify(&self, _: &str) -> tenancy_core::Result<Claims> {
                Err(tenancy_core::Error::Rejected(TokenRejection::BadSignature))
            }
        }
        struct Login(Option<IpAddr>);
        impl RequestHead for Login {
            fn method(&self) -> &str {
                "POST"
            }
            fn path(&self) -> &str {
                "/v1/auth/login"
            }
            fn header_values<'a>(&'a self, _: &str) -> impl Iterator<Item = &'a [u8]> + 'a {
                std::iter::empty()
            }
            fn header_bytes(&self) -> usize {
                0
            }
            fn peer_addr(&self) -> Option<IpAddr> {
                self.0
            }
        }
        let log = Log::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let tenancy = Tenancy::builder(
            Arc::new(NoTokens),
            Arc::new(tenancy_core::memory::MemoryTenantDirectory::new()),
            Arc::new(tenancy_core::memory::MemoryRateLimiter::new()),
            Arc::new(tenancy_core::memory::MemoryAuditSink::new()),
        )
        .with_public_route("/v1/auth/login")
        .unwrap()
        .with_anonymous_limit(Quota::per_minute(100))
        .build()
        .unwrap();
        let reports = || {
            String::from_utf8_lossy(&log.0.lock().unwrap())
                .matches("has no client address")
                .count()
        };
        let peer: Option<IpAddr> = "192.0.2.7".parse().ok();
        let meta = tenancy.begin(&Login(peer));
        assert!(!tenancy.rate_limit(&meta).await.unwrap().is_empty());
        assert_eq!(reports(), 0);
        for _ in 0..3 {
            let meta = tenancy.begin(&Login(None));
            assert!(!tenancy.rate_limit(&meta).await.unwrap().is_empty());
        }
        assert_eq!(reports(), 1);
    }

    #[test]
    fn bearer_parsing() {
        fn one(s: &str) -> Header<'_> {
            Header::One(s.as_bytes())
        }
        assert_eq!(
            bearer(one("Bearer abc.def-_~+/="), 100).unwrap(),
            "abc.def-_~+/="
        );
        assert_eq!(bearer(one("bearer   x  "), 100).unwrap(), "x");
        assert_eq!(bearer(Header::Absent, 100), Err(AuthFailure::Missing));
        assert_eq!(bearer(Header::Many, 100), Err(AuthFailure::Ambiguous));
        for bad in [
            "Basic abc",
            "Bearer",
            "Bearer ",
            "Bearerabc",
            "Bearer a b",
            "Bearer a\"b",
            "Bearer é",
            "Bearer \tabc",
            "Bearer  \t abc",
            "Bearer\tabc",
        ] {
            assert_eq!(bearer(one(bad), 100), Err(AuthFailure::BadScheme), "{bad}");
        }
        assert_eq!(
            bearer(one(&format!("Bearer {}", "a".repeat(200))), 100),
            Err(AuthFailure::Oversized)
        );
    }

    #[test]
    fn fresh_request_ids_are_22_url_safe_characters_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..1000)
            .map(|_| fresh_request_id().as_str().to_owned())
            .collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(id.len(), 22, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{id}"
            );
        }
    }

    #[test]
    fn fresh_event_ids_are_distinct_and_round_trip() {
        let ids: std::collections::HashSet<EventId> = (0..1000).map(|_| fresh_event_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(EventId::parse(&id.to_string()).unwrap(), *id);
        }
    }

    #[test]
    fn bearer_alphabet_table() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
            assert_eq!(is_b64token(b), expected, "byte {b}");
        }
    }

    /// A verifier failing with `kind`: the status `authenticate` answers.
    async fn status_when_verifier_fails(error: fn() -> tenancy_core::Error) -> u16 {
        rejection_when_verifier_fails(error).await.status()
    }

    /// A verifier failing with its error.
    #[derive(Debug)]
    struct Failing(fn() -> tenancy_core::Error);
    #[async_trait::async_trait]
    impl TokenVerifier for Failing {
        async fn verify(&self, _: &str) -> tenancy_core::Result<Claims> {
            Err((self.0)())
        }
    }
    struct Head;
    impl RequestHead for Head {
        fn method(&self) -> &str {
            "GET"
        }
        fn path(&self) -> &str {
            "/v1/me"
        }
        fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> + 'a {
            (name == "authorization")
                .then_some(&b"Bearer abc"[..])
                .into_iter()
        }
        fn header_bytes(&self) -> usize {
            30
        }
        fn peer_addr(&self) -> Option<IpAddr> {
            None
        }
    }

    /// A verifier failing with `kind`: what `authenticate` answers.
    async fn rejection_when_verifier_fails(error: fn() -> tenancy_core::Error) -> Rejection {
        let tenancy = Tenancy::builder(
            Arc::new(Failing(error)),
            Arc::new(tenancy_core::memory::MemoryTenantDirectory::new()),
            Arc::new(tenancy_core::memory::MemoryRateLimiter::new()),
            Arc::new(tenancy_core::memory::MemoryAuditSink::new()),
        )
        .build()
        .unwrap();
        let meta = tenancy.begin(&Head);
        tenancy
            .authenticate(&meta, Header::read(&Head, "authorization"))
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn a_refusing_verifier_backend_is_a_500_that_names_no_cause() {
        let r = rejection_when_verifier_fails(|| tenancy_core::Error::internal("NOPERM")).await;
        assert_eq!(r.status(), 500);
        assert_eq!(
            r.kind(),
            &RejectionKind::Misconfigured("authentication".into())
        );
        assert_eq!(r.problem().detail, crate::problem::MISCONFIGURED_DETAIL);
        let body = String::from_utf8(r.body().to_vec()).unwrap();
        for cause in ["authentication", "NOPERM", "misconfigured:"] {
            assert!(!body.contains(cause), "{cause} in {body}");
        }
    }

    #[tokio::test]
    async fn verifier_failures_answer_by_kind() {
        use tenancy_core::{Error as E, TokenRejection};
        assert_eq!(
            status_when_verifier_fails(|| E::Rejected(TokenRejection::Expired)).await,
            401
        );
        assert_eq!(
            status_when_verifier_fails(|| E::unavailable("down")).await,
            503
        );
        assert_eq!(status_when_verifier_fails(|| E::Timeout).await, 503);
        // A refusing backend is the server's fault: never a 401 that makes clients drop
        // a token that may be fine.
        assert_eq!(
            status_when_verifier_fails(|| E::internal("NOPERM")).await,
            500
        );
        assert_eq!(
            status_when_verifier_fails(|| E::corrupt("bad record")).await,
            401
        );
    }

    #[test]
    fn anonymous_limits_count_ipv6_clients_by_their_64_prefix() {
        let key = |s: &str| anonymous_key(Some(s.parse().unwrap()));
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_eq!(key("2001:db8:1:2::1"), "ip:2001:db8:1:2::");
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("192.0.2.7"), "ip:192.0.2.7");
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(anonymous_key(None), "ip:unknown");
        for k in [key("2001:db8:1:2::1"), key("192.0.2.7")] {
            assert!(UserId::parse(&k).is_ok(), "{k}");
        }
    }

    #[test]
    fn outcomes_by_status() {
        assert_eq!(outcome_for(200), Outcome::Success);
        assert_eq!(outcome_for(404), Outcome::Failure);
        assert_eq!(outcome_for(429), Outcome::Denied);
        assert_eq!(outcome_for(503), Outcome::Error);
    }

    /// A suspended tenant's refusal counts against the user's limit alone (its clients'
    /// retries must not leave it an empty tenant-wide bucket when it is resumed), whatever
    /// the refusal; a tenant header naming another tenant counts against both.
    #[tokio::test]
    async fn refusals_count_against_the_limits_they_should() {
        use tenancy_core::memory::{MemoryRateLimiter, MemoryTenantDirectory};
        use tenancy_core::{ManualClock, TenantStatus, TierName};
        let clock = ManualClock::new();
        let limiter = Arc::new(MemoryRateLimiter::with_clock(Arc::new(clock.clone())));
        let directory = Arc::new(MemoryTenantDirectory::new());
        let standard = TierName::parse("standard").unwrap();
        let mut suspended = TenantSettings::new(standard.clone());
        suspended.status = TenantStatus::Suspended;
        for (t, s) in [
            ("acme", suspended.clone()),
            ("initech", suspended),
            ("globex", TenantSettings::new(standard.clone())),
            ("fresh", TenantSettings::new(standard)),
        ] {
            directory
                .put(&TenantId::parse(t).unwrap(), s)
                .await
                .unwrap();
        }
        let tenancy = Tenancy::builder(
            Arc::new(Failing(|| tenancy_core::Error::Timeout)),
            directory,
            limiter.clone(),
            Arc::new(tenancy_core::memory::MemoryAuditSink::new()),
        )
        .build()
        .unwrap();
        let claims = |tenant: &str| {
            Claims::from_json(
                serde_json::json!({
                    "iss": "i", "aud": "a", "sub": "u", "exp": 4_000_000_000_u64,
                    "tenant_id": tenant, "user_id": "u", "user_role": "user",
                    "permissions": [],
                })
                .to_string()
                .as_bytes(),
            )
            .unwrap()
        };
        let refuse = |tenant: &'static str, header: Header<'static>| {
            let tenancy = tenancy.clone();
            async move {
                let meta = tenancy.begin(&Head);
                let r = tenancy
                    .resolve_tenant(&meta, &claims(tenant), header)
                    .await
                    .unwrap_err();
                assert_eq!(r.status(), 403, "{tenant}");
                assert!(
                    r.headers().iter().any(|(k, _)| *k == "x-ratelimit-limit"),
                    "{tenant}: {:?}",
                    r.headers()
                );
            }
        };
        refuse("acme", Header::Absent).await;
        refuse("globex", Header::One(b"acme")).await;
        refuse("initech", Header::One(b"acme")).await;

        // How long each tenant's tenant-wide bucket takes to refill, after one more request.
        let refill = |tenant: &str| {
            let quota = TierCatalog::default()
                .get(&TierName::parse("standard").unwrap())
                .unwrap()
                .tenant;
            let request = RateLimitRequest::new(
                TenantId::parse(tenant).unwrap(),
                None,
                vec![Limit::tenant(quota)],
            );
            let limiter = limiter.clone();
            async move { limiter.check(&request).await.unwrap().states[0].reset_after_nanos }
        };
        let untouched = refill("fresh").await;
        assert_eq!(
            refill("acme").await,
            untouched,
            "the suspended refusal charged the tenant"
        );
        assert_eq!(
            refill("initech").await,
            untouched,
            "the mismatch charged a suspended tenant"
        );
        assert!(
            refill("globex").await > untouched,
            "the mismatch did not charge the tenant"
        );
    }
}
