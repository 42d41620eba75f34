//! The operations behind every endpoint except records (see [`records`](crate::records)),
//! free of any web framework: each takes the [`App`], the caller's verified
//! [`TenantContext`] where there is one, and the parsed body, and returns a serialisable
//! answer or an [`Error`] that knows its status.
//!
//! | endpoint | operation |
//! |---|---|
//! | `POST /v1/auth/login` | [`login`] |
//! | `POST /v1/auth/refresh` | [`refresh`] |
//! | `POST /v1/auth/logout` | [`logout`] |
//! | `GET /v1/me` | [`me`] |
//! | `GET /v1/tenant/audit` | [`tenant_audit`] |
//! | `PUT /v1/admin/tenants/{tenant}` | [`put_tenant`] |
//! | `GET /v1/admin/tenants/{tenant}` | [`get_tenant`] |
//! | `PUT /v1/admin/tenants/{tenant}/limits` | [`put_limits`] |
//! | `POST /v1/admin/tenants/{tenant}/bypass` | [`bypass`] |
//! | `POST /v1/admin/tenants/{tenant}/suspend`, `/resume` | [`set_status`] |
//! | `GET /v1/admin/audit/verify` | [`verify_audit`] |
//! | `GET /health` | [`health`] |
//!
//! ```no_run
//! use tenancy_server::{ops, App, Config};
//!
//! # #[tokio::main] async fn main() -> Result<(), tenancy_server::Error> {
//! let app = App::build(Config::for_tests("/tmp/tenancy-doc")).await?;
//! let login = ops::LoginRequest {
//!     tenant_id: "acme".into(), username: "bob".into(), password: "password".into(),
//! };
//! let tokens = ops::login(&app, login, &tenancy_core::Origin::default()).await?;
//! assert_eq!(tokens.token_type, "Bearer");
//! # Ok(()) }
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tenancy_audit::store::FileAuditStore;
use tenancy_core::{
    AuditEvent, AuditSink as _, Claims, HealthStatus, Limit, Origin, Outcome, QuotaOverrides,
    RateLimitRequest, TenantContext, TenantId, TenantSettings, TenantStatus, TierName,
    TokenRejection, Upsert, UserId, update_settings,
};
use time::OffsetDateTime;

use crate::app::{App, AuditBackend};
use crate::users::permissions_for;
use crate::{Error, Result};

/// Longest password accepted, in bytes (longer ones are refused before hashing).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest bypass window, in seconds.
pub const MAX_BYPASS_SECS: u64 = 24 * 3600;
/// Default and largest page of `GET /v1/tenant/audit`.
pub const AUDIT_PAGE: (usize, usize) = (50, 500);

/// The body of `POST /v1/auth/login`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The tenant.
    pub tenant_id: String,
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

/// The body of `POST /v1/auth/refresh`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token from the last login or refresh.
    pub refresh_token: String,
}

/// A token pair, as login and refresh return it.
#[derive(Debug, Clone, Serialize)]
pub struct TokenResponse {
    /// The access token (a JWT).
    pub access_token: String,
    /// The refresh token (opaque; spent by its first use).
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

impl From<tenancy_auth::TokenPair> for TokenResponse {
    fn from(pair: tenancy_auth::TokenPair) -> Self {
        Self {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token.expose().to_owned(),
            token_type: "Bearer",
            expires_in: pair.expires_in,
        }
    }
}

/// `GET /v1/me`.
#[derive(Debug, Clone, Serialize)]
pub struct Me {
    /// The tenant.
    pub tenant_id: String,
    /// The user.
    pub user_id: String,
    /// The role.
    pub role: String,
    /// The permissions.
    pub permissions: Vec<String>,
    /// The tenant's tier.
    pub tier: Option<String>,
    /// The session the token belongs to.
    pub session_id: Option<String>,
}

fn event(tenant: &TenantId, action: &str, outcome: Outcome, origin: &Origin) -> AuditEvent {
    let mut e = AuditEvent::new(tenant.clone(), action, outcome);
    e.origin = origin.clone();
    e
}

fn platform() -> TenantId {
    TenantId::parse("platform").unwrap_or_else(|_| unreachable!("a valid id"))
}

/// The 403 of a server that verifies tokens but has no key to issue them.
fn not_issuing() -> Error {
    Error::Forbidden("this server verifies tokens but does not issue them".into())
}

/// Checks the credentials and starts a session. Every failure is the same 401. Each attempt
/// is audited once, as `auth.login` in the tenant's trail (the platform's for an unknown
/// tenant), with `origin` (request id, route, client address): a tenant admin sees the
/// failed logins against the tenant, and the request layer's generic `http.denied` record
/// of the 401 is not kept (see [`App::build`](crate::App::build)).
///
/// # Errors
/// 401 for wrong credentials, an unknown tenant or a suspended one (the trail records which,
/// the answer does not, so that it tells no right password from a wrong one); 503
/// when a backend cannot answer (audited as `auth.login` with outcome `error` in the
/// platform's trail).
pub async fn login(app: &App, req: LoginRequest, origin: &Origin) -> Result<TokenResponse> {
    let username = UserId::parse(&req.username).ok();
    let result = login_attempt(app, req, origin).await;
    audit_failed_attempt(app, "auth.login", username, origin, &result).await;
    result
}

/// A login (`action` `auth.login`) or refresh (`auth.refresh`) refused before it could be
/// attempted, for its body: `refusal` is the answer (400 for a document that is malformed or
/// has unknown fields, 408 for a body that did not arrive in time, 413 for one over the limit,
/// 415 for one that is not JSON). Audited once, with outcome `failure`, in the platform's
/// trail (a refused body names no tenant that could be trusted): a login attempt leaves a
/// trace whatever its body.
pub async fn audit_refused_attempt(app: &App, action: &str, origin: &Origin, refusal: &Error) {
    let reason = match refusal.status() {
        408 => "body_timeout",
        413 => "body_too_large",
        415 => "unsupported_media_type",
        _ => "invalid_body",
    };
    app.record(event(&platform(), action, Outcome::Failure, origin).with_reason(reason))
        .await;
}

/// A login or refresh that a backend failure ended (a 5xx, for which nothing was recorded
/// yet), or a refresh that kept losing races with other updates of its session (409), is
/// audited too, in the platform's trail (whether the tenant exists could not be told): an
/// attempt leaves a trace while the directory or session store is down.
async fn audit_failed_attempt<T>(
    app: &App,
    action: &str,
    user: Option<UserId>,
    origin: &Origin,
    result: &Result<T>,
) {
    let Err(e) = result else { return };
    let reason = match e.status() {
        // A refresh that kept racing other updates of its session: the client may retry.
        409 => "conflict",
        503 => "backend_unavailable",
        500..=599 => "internal_error",
        _ => return,
    };
    let mut event = event(&platform(), action, Outcome::Error, origin).with_reason(reason);
    if let Some(u) = user {
        event = event.with_user(u);
    }
    app.record(event).await;
}

async fn login_attempt(app: &App, req: LoginRequest, origin: &Origin) -> Result<TokenResponse> {
    let tenant = TenantId::parse(&req.tenant_id).ok();
    let settings = match &tenant {
        Some(t) => app.directory().get(t).await?,
        None => None,
    };
    let audit_tenant = match (&tenant, &settings) {
        (Some(t), Some(_)) => t.clone(),
        _ => platform(),
    };
    // Before the credentials are checked: the answer must not tell a right password from a
    // wrong one on a server that cannot issue tokens.
    let Some(issuer) = app.issuer() else {
        app.record(
            event(&audit_tenant, "auth.login", Outcome::Denied, origin).with_reason("not_issuing"),
        )
        .await;
        return Err(not_issuing());
    };
    let user = match (&tenant, &settings) {
        (Some(t), Some(_)) if req.password.len() <= MAX_PASSWORD_BYTES => {
            app.users().check(t, &req.username, &req.password).await?
        }
        _ => {
            // As long as a wrong password takes: the answer's timing does not tell which
            // tenants exist.
            app.users().check_nobody().await?;
            None
        }
    };
    let username = UserId::parse(&req.username).ok();
    let Some(user) = user else {
        let mut e = event(&audit_tenant, "auth.login", Outcome::Denied, origin)
            .with_reason("bad_credentials");
        if let Some(u) = username {
            e = e.with_user(u);
        }
        app.record(e).await;
        return Err(Error::Unauthorized);
    };
    let (Some(tenant), Some(settings)) = (tenant, settings) else {
        return Err(Error::Unauthorized);
    };
    if settings.is_suspended() {
        // The same 401 as a wrong password: a 403 here would tell whoever tries a suspended
        // tenant's passwords which one is right. The trail says why.
        app.record(
            event(&tenant, "auth.login", Outcome::Denied, origin)
                .with_user(user.id.clone())
                .with_reason("tenant_suspended"),
        )
        .await;
        return Err(Error::Unauthorized);
    }
    let pair = issuer
        .login(&tenant, &user.id, &user.role, &permissions_for(&user.role))
        .await?;
    app.record(
        event(&tenant, "auth.login", Outcome::Success, origin)
            .with_user(user.id.clone())
            .with_role(user.role.clone())
            .with_session(pair.session),
    )
    .await;
    Ok(TokenResponse::from(pair))
}

/// Spends a refresh token and returns a new pair. A spent token presented again ends the
/// whole session (its access tokens are refused from then on). Audited once either way, as
/// `auth.refresh`: in the trail of the token's tenant when the token belongs to one of its
/// sessions (a refresh, a refusal for its suspension, a spent token presented again), else
/// in the platform's. Anyone can write a token that names a tenant: refusals of such tokens
/// must not let strangers fill that tenant's trail.
///
/// # Errors
/// 401 for any refused refresh token; 503 when the session store cannot answer.
pub async fn refresh(app: &App, req: RefreshRequest, origin: &Origin) -> Result<TokenResponse> {
    let result = refresh_attempt(app, req, origin).await;
    audit_failed_attempt(app, "auth.refresh", None, origin, &result).await;
    result
}

async fn refresh_attempt(app: &App, req: RefreshRequest, origin: &Origin) -> Result<TokenResponse> {
    let Some(issuer) = app.issuer() else {
        app.record(
            event(&platform(), "auth.refresh", Outcome::Denied, origin).with_reason("not_issuing"),
        )
        .await;
        return Err(not_issuing());
    };
    // The trail of the tenant the token names, once the token has proved to be one of its
    // sessions' (the issuer checks the tenant; the directory is asked only then).
    let tenant_trail = async |tenant: &TenantId| -> Result<(TenantId, Option<TenantSettings>)> {
        match app.directory().get(tenant).await? {
            Some(s) => Ok((tenant.clone(), Some(s))),
            None => Ok((platform(), None)),
        }
    };
    match issuer.refresh(&req.refresh_token).await {
        Ok(pair) => {
            let (audit_tenant, settings) = tenant_trail(&pair.tenant).await?;
            if settings.as_ref().is_some_and(TenantSettings::is_suspended) {
                issuer.logout(&pair.tenant, &pair.session).await?;
                app.record(
                    event(&audit_tenant, "auth.refresh", Outcome::Denied, origin)
                        .with_session(pair.session)
                        .with_reason("tenant_suspended"),
                )
                .await;
                return Err(Error::Forbidden("the tenant is suspended".into()));
            }
            app.record(
                event(&audit_tenant, "auth.refresh", Outcome::Success, origin)
                    .with_session(pair.session),
            )
            .await;
            Ok(TokenResponse::from(pair))
        }
        Err(tenancy_core::Error::Rejected(r)) => {
            let (audit_tenant, reason) = match r {
                // A spent token of a real session, presented again: the session is revoked,
                // an event of the tenant's.
                TokenRejection::Revoked => {
                    let named = req
                        .refresh_token
                        .split('.')
                        .nth(1)
                        .and_then(|t| TenantId::parse(t).ok());
                    let trail = match &named {
                        Some(t) => tenant_trail(t).await?.0,
                        None => platform(),
                    };
                    (trail, "refresh_token_reused_session_revoked")
                }
                _ => (platform(), "refresh_token_refused"),
            };
            app.record(
                event(&audit_tenant, "auth.refresh", Outcome::Denied, origin).with_reason(reason),
            )
            .await;
            Err(Error::Unauthorized)
        }
        Err(e) => Err(e.into()),
    }
}

/// Ends the caller's session: its refresh token and every access token bound to it are
/// refused from now on. A token without a session (`claims`, as verified, carry no `sid`) is
/// itself revoked on the verifier's denylist until it expires: by its `jti`, or, without
/// one, by the hash of its claims ([`revocation_id`](tenancy_auth::verifier::revocation_id)).
///
/// # Errors
/// 503 when the session store, or for a token without a session the denylist, cannot
/// answer. 500 when `claims` are missing (the tenancy layer verified none).
pub async fn logout(app: &App, ctx: &TenantContext, claims: Option<&Claims>) -> Result<()> {
    if let Some(sid) = &ctx.session {
        match app.issuer() {
            Some(i) => {
                i.logout(&ctx.tenant, sid).await?;
            }
            None => {
                app.sessions().delete(&ctx.tenant, sid).await?;
            }
        }
        return Ok(());
    }
    let claims = claims.ok_or_else(|| Error::Internal("logout without verified claims".into()))?;
    // A token without `jti` is revoked by the hash of its claims (`revocation_id`).
    app.verifier().revoke(claims).await?;
    Ok(())
}

/// The caller's tenant context.
pub fn me(ctx: &TenantContext) -> Me {
    Me {
        tenant_id: ctx.tenant.to_string(),
        user_id: ctx.user.to_string(),
        role: ctx.role.as_str().to_owned(),
        permissions: ctx
            .permissions
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect(),
        tier: ctx.tier.as_ref().map(ToString::to_string),
        session_id: ctx.session.map(|s| s.to_string()),
    }
}

/// One page of `GET /v1/tenant/audit`.
#[derive(Debug, Clone, Serialize)]
pub struct AuditPage {
    /// Events, newest first; each is the stored (redacted) event plus its `seq`.
    pub events: Vec<serde_json::Value>,
    /// Pass as `before` for the next page; `null` on the last page.
    pub next_before: Option<u64>,
}

async fn flush(app: &App) {
    // Show what has been accepted so far; a store that is down leaves it in the spool.
    let _ = tokio::time::timeout(Duration::from_secs(2), app.audit().flush()).await;
}

/// The caller's tenant's audit events, newest first. Needs `audit:read` (tenant admins).
///
/// # Errors
/// 403 without the permission; 400 for a limit of 0; 503 when the store cannot answer.
pub async fn tenant_audit(
    app: &App,
    ctx: &TenantContext,
    before: Option<u64>,
    limit: Option<usize>,
) -> Result<AuditPage> {
    crate::records::require(ctx, "audit:read")?;
    let limit = limit.unwrap_or(AUDIT_PAGE.0);
    if limit == 0 || limit > AUDIT_PAGE.1 {
        return Err(Error::BadRequest(
            format!("`limit` must be 1 to {}", AUDIT_PAGE.1).into(),
        ));
    }
    flush(app).await;
    // One more than the page: a full page leads on only when something older is there.
    let mut entries =
        tenancy_audit::newest_events(app.audit_store().as_ref(), &ctx.tenant, before, limit + 1)
            .await?;
    let more = entries.len() > limit;
    entries.truncate(limit);
    let next_before = more.then(|| entries.last().map(|e| e.seq)).flatten();
    let events = entries
        .into_iter()
        .map(|e| {
            let mut v = serde_json::to_value(&e.event).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("seq".into(), e.seq.into());
                o.insert("hash".into(), e.hash.to_string().into());
            }
            v
        })
        .collect();
    Ok(AuditPage {
        events,
        next_before,
    })
}

/// 403 unless the caller is a super admin.
/// The admin routes' check: the platform-wide role, and the `tenants:admin` permission
/// (authorization follows the token's permissions: a super admin's token scoped down to
/// other permissions does not administer tenants).
pub(crate) fn require_super_admin(ctx: &TenantContext) -> Result<()> {
    if !ctx.is_super_admin() {
        return Err(Error::Forbidden("role `super_admin` is required".into()));
    }
    crate::records::require(ctx, "tenants:admin")
}

fn parse_tenant(s: &str) -> Result<TenantId> {
    TenantId::parse(s).map_err(|e| Error::BadRequest(format!("tenant id: {e}").into()))
}

/// A tenant as the admin endpoints show it.
#[derive(Debug, Clone, Serialize)]
pub struct TenantView {
    /// The tenant.
    pub tenant: String,
    /// `active` or `suspended`.
    pub status: &'static str,
    /// The tier.
    pub tier: String,
    /// The quotas in force (after overrides).
    pub limits: Option<tenancy_core::EffectiveLimits>,
    /// The overrides.
    pub overrides: QuotaOverrides,
    /// End of the emergency bypass, when one is in force.
    #[serde(with = "time::serde::rfc3339::option")]
    pub bypass_until: Option<OffsetDateTime>,
    /// Current usage of the tenant-wide limit: `{"limit", "remaining", "reset_after_secs"}`.
    pub usage: Option<serde_json::Value>,
}

async fn view(app: &App, tenant: &TenantId, s: &TenantSettings, usage: bool) -> TenantView {
    let limits = s.limits(app.tiers());
    let usage = match (usage, &limits) {
        (true, Some(l)) => {
            let req = RateLimitRequest::new(tenant.clone(), None, vec![Limit::tenant(l.tenant)]);
            match app.quotas().usage(&req).await {
                Ok(states) => states.first().map(|st| {
                    serde_json::json!({
                        "limit": st.limit.quota.limit,
                        "remaining": st.remaining(),
                        "reset_after_secs": st.reset_after().as_secs(),
                    })
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "usage unavailable");
                    None
                }
            }
        }
        _ => None,
    };
    let now = OffsetDateTime::now_utc();
    TenantView {
        tenant: tenant.to_string(),
        status: s.status.as_str(),
        tier: s.tier.to_string(),
        limits,
        overrides: s.overrides,
        bypass_until: s.bypass_until.filter(|u| *u > now),
        usage,
    }
}

async fn admin_event(app: &App, ctx: &TenantContext, target: &TenantId, action: &str) {
    let mut e = AuditEvent::new(target.clone(), action, Outcome::Success)
        .with_user(ctx.user.clone())
        .with_role(ctx.role.clone())
        .with_resource("tenant", target.as_str())
        .with_detail("actor_tenant", ctx.tenant.as_str());
    if let Some(id) = &ctx.request_id {
        e = e.with_request_id(id.clone());
    }
    // Admin actions wait for the store: an answer means the trail has them.
    if let Err(err) = app.audit().record_sync(e).await {
        tracing::error!(error = %err, action, "admin audit event not yet stored");
    }
}

/// The body of `PUT /v1/admin/tenants/{tenant}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutTenant {
    /// `standard` or `premium`.
    pub tier: String,
}

fn parse_tier(app: &App, tier: &str) -> Result<TierName> {
    let name = TierName::parse(tier).map_err(|e| Error::BadRequest(format!("tier: {e}").into()))?;
    if app.tiers().get(&name).is_none() {
        let known: Vec<String> = app.tiers().iter().map(|t| t.name.to_string()).collect();
        return Err(Error::BadRequest(
            format!("unknown tier {tier:?}; known: {}", known.join(", ")).into(),
        ));
    }
    Ok(name)
}

/// Creates the tenant (`true`) or changes its tier (`false`). Super admins only.
///
/// # Errors
/// 403 for other callers; 400 for a bad tenant id, an unknown tier, or a tier the tenant's
/// overrides do not fit (a burst override above the new tier's limit).
pub async fn put_tenant(
    app: &App,
    ctx: &TenantContext,
    tenant: &str,
    body: PutTenant,
) -> Result<(bool, TenantView)> {
    require_super_admin(ctx)?;
    let t = parse_tenant(tenant)?;
    let tier = parse_tier(app, &body.tier)?;
    let (upsert, settings) = update_settings(&**app.directory(), &t, |current| {
        let settings = match current {
            Some(mut s) => {
                s.tier = tier.clone();
                s
            }
            None => TenantSettings::new(tier.clone()),
        };
        // The tenant's overrides must still hold under the new tier (a burst override above
        // the new tier's limit): change the limits first.
        settings.validate(app.tiers()).map_err(|e| {
            Error::BadRequest(
                format!(
                    "the tenant's overrides do not fit this tier ({}: {}{}); change its limits \
                     first",
                    e.what(),
                    e.reason(),
                    stored_bursts(&settings.overrides, &PutLimits::default()),
                )
                .into(),
            )
        })?;
        Ok::<_, Error>(settings)
    })
    .await?;
    let created = upsert == Upsert::Created;
    admin_event(
        app,
        ctx,
        &t,
        if created {
            "admin.tenant.create"
        } else {
            "admin.tenant.tier"
        },
    )
    .await;
    Ok((created, view(app, &t, &settings, false).await))
}

async fn existing(app: &App, t: &TenantId) -> Result<TenantSettings> {
    app.directory().get(t).await?.ok_or(Error::NotFound)
}

/// Tier, limits, status and current usage of a tenant. Super admins only.
///
/// # Errors
/// 403 for other callers; 404 for an unknown tenant.
pub async fn get_tenant(app: &App, ctx: &TenantContext, tenant: &str) -> Result<TenantView> {
    require_super_admin(ctx)?;
    let t = parse_tenant(tenant)?;
    let s = existing(app, &t).await?;
    Ok(view(app, &t, &s, true).await)
}

/// The body of `PUT /v1/admin/tenants/{tenant}/limits`: each number given replaces the
/// tier's value for this tenant, `null` removes the override (the tier's value applies
/// again), and a field left out keeps what the tenant has.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutLimits {
    /// A new tier.
    pub tier: Option<String>,
    /// Tenant-wide requests per hour.
    #[serde(default, deserialize_with = "set_or_remove")]
    pub tenant_per_hour: Option<Option<u64>>,
    /// Tenant-wide burst.
    #[serde(default, deserialize_with = "set_or_remove")]
    pub tenant_burst: Option<Option<u64>>,
    /// Per-user requests per hour.
    #[serde(default, deserialize_with = "set_or_remove")]
    pub user_per_hour: Option<Option<u64>>,
    /// Per-user burst.
    #[serde(default, deserialize_with = "set_or_remove")]
    pub user_burst: Option<Option<u64>>,
}

/// A field that is present: `Some(None)` for `null`, `Some(Some(n))` for a number (a field
/// left out is `None`, by `#[serde(default)]`).
fn set_or_remove<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<u64>>, D::Error> {
    Option::<WholeNumber>::deserialize(d).map(|n| Some(n.map(|n| n.0)))
}

/// A whole number, 0 or more, as JSON writes it: `276` or `276.0` (what a client computing
/// seconds as a float sends, and what JSON Schema's `integer` admits); `276.5` and `-1` are
/// refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WholeNumber(pub u64);

impl<'de> Deserialize<'de> for WholeNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = WholeNumber;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a whole number, 0 or more")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<WholeNumber, E> {
                Ok(WholeNumber(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<WholeNumber, E> {
                u64::try_from(v)
                    .map(WholeNumber)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<WholeNumber, E> {
                // Up to 2^53, where every whole number is a float exactly.
                const EXACT: f64 = 9_007_199_254_740_992.0;
                if v.fract() == 0.0 && (0.0..=EXACT).contains(&v) {
                    // Whole, not negative and within 2^53: the conversion is exact.
                    Ok(WholeNumber(v as u64))
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// For a refusal's detail: the stored burst overrides that the request leaves in place, which
/// may be what does not fit (`""` when there are none).
fn stored_bursts(o: &QuotaOverrides, body: &PutLimits) -> String {
    let kept: Vec<String> = [
        ("tenant_burst", o.tenant_burst, &body.tenant_burst),
        ("user_burst", o.user_burst, &body.user_burst),
    ]
    .into_iter()
    .filter_map(|(name, stored, given)| {
        stored
            .filter(|_| given.is_none())
            .map(|v| format!("`{name}` {v}"))
    })
    .collect();
    if kept.is_empty() {
        String::new()
    } else {
        format!(
            "; the tenant's stored {} still applies: send a new value, or null to remove it",
            kept.join(" and ")
        )
    }
}

/// Overrides a tenant's quotas; effective on its next request (the tenant's limiter state
/// starts afresh). Super admins only.
///
/// # Errors
/// 403 for other callers; 404 for an unknown tenant; 400 for a zero or huge value, or a
/// burst above the hourly limit in force (the detail names a stored burst override that
/// the request leaves in place).
pub async fn put_limits(
    app: &App,
    ctx: &TenantContext,
    tenant: &str,
    body: PutLimits,
) -> Result<TenantView> {
    require_super_admin(ctx)?;
    let t = parse_tenant(tenant)?;
    for (name, v) in [
        ("tenant_per_hour", body.tenant_per_hour),
        ("tenant_burst", body.tenant_burst),
        ("user_per_hour", body.user_per_hour),
        ("user_burst", body.user_burst),
    ] {
        if v.flatten().is_some_and(|v| v == 0 || v > 1_000_000_000) {
            return Err(Error::BadRequest(
                format!("`{name}` must be 1 to 1000000000, or null to remove it").into(),
            ));
        }
    }
    let tier = body
        .tier
        .as_deref()
        .map(|t| parse_tier(app, t))
        .transpose()?;
    let change = |current: Option<TenantSettings>| {
        let mut s = current.ok_or(Error::NotFound)?;
        if let Some(tier) = &tier {
            s.tier = tier.clone();
        }
        let o = &mut s.overrides;
        for (field, given) in [
            (&mut o.tenant_per_hour, body.tenant_per_hour),
            (&mut o.tenant_burst, body.tenant_burst),
            (&mut o.user_per_hour, body.user_per_hour),
            (&mut o.user_burst, body.user_burst),
        ] {
            if let Some(given) = given {
                *field = given;
            }
        }
        // A burst above the limit in force would let more through at once than the limit
        // the headers advertise for the whole hour.
        s.validate(app.tiers()).map_err(|e| {
            Error::BadRequest(
                format!(
                    "{}: {}{}",
                    e.what(),
                    e.reason(),
                    stored_bursts(&s.overrides, &body)
                )
                .into(),
            )
        })?;
        Ok::<_, Error>(s)
    };
    // Refuse before anything is reset (the same check runs again, on what is then stored,
    // when the change is written).
    change(existing(app, &t).await.map(Some)?)?;
    // Limiter state is kept per (scope, period): without a reset, usage counted under the
    // old quota would delay the new one. An admin change starts the tenant afresh. The reset
    // comes first: a limiter that cannot reset (it is down) fails the call before anything
    // is changed, rather than after the change is in force (a 503 for a change made, and no
    // audit event of it).
    app.quotas().reset(&t).await?;
    let (_, s) = update_settings(&**app.directory(), &t, change).await?;
    admin_event(app, ctx, &t, "admin.tenant.limits").await;
    Ok(view(app, &t, &s, false).await)
}

/// The body of `POST /v1/admin/tenants/{tenant}/bypass`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bypass {
    /// How long the tenant's limits are not enforced, 0 (end it) to 86400.
    pub seconds: WholeNumber,
}

/// Opens (or, with 0 seconds, closes) an emergency bypass of a tenant's limits. Audited;
/// every request the limits would have refused meanwhile is audited too. Super admins only.
///
/// # Errors
/// 403 for other callers; 404 for an unknown tenant; 400 for more than a day.
pub async fn bypass(
    app: &App,
    ctx: &TenantContext,
    tenant: &str,
    body: Bypass,
) -> Result<TenantView> {
    require_super_admin(ctx)?;
    let t = parse_tenant(tenant)?;
    if body.seconds.0 > MAX_BYPASS_SECS {
        return Err(Error::BadRequest(
            format!("`seconds` must be 0 to {MAX_BYPASS_SECS}").into(),
        ));
    }
    let until = (body.seconds.0 > 0)
        .then(|| OffsetDateTime::now_utc() + Duration::from_secs(body.seconds.0));
    let (_, s) = update_settings(&**app.directory(), &t, |current| {
        let mut s = current.ok_or(Error::NotFound)?;
        s.bypass_until = until;
        Ok::<_, Error>(s)
    })
    .await?;
    admin_event(app, ctx, &t, "admin.tenant.bypass").await;
    Ok(view(app, &t, &s, false).await)
}

/// Suspends or resumes a tenant; a suspended tenant's tokens get 403 from the next request
/// on. Super admins only.
///
/// # Errors
/// 403 for other callers (and for suspending the caller's own tenant); 404 for an unknown
/// tenant.
pub async fn set_status(
    app: &App,
    ctx: &TenantContext,
    tenant: &str,
    suspend: bool,
) -> Result<TenantView> {
    require_super_admin(ctx)?;
    let t = parse_tenant(tenant)?;
    if suspend && t == ctx.tenant {
        return Err(Error::Forbidden(
            "a super admin cannot suspend its own tenant".into(),
        ));
    }
    let status = if suspend {
        TenantStatus::Suspended
    } else {
        TenantStatus::Active
    };
    let (_, s) = update_settings(&**app.directory(), &t, |current| {
        let mut s = current.ok_or(Error::NotFound)?;
        s.status = status;
        Ok::<_, Error>(s)
    })
    .await?;
    let action = if suspend {
        "admin.tenant.suspend"
    } else {
        "admin.tenant.resume"
    };
    admin_event(app, ctx, &t, action).await;
    Ok(view(app, &t, &s, false).await)
}

/// Verifies a tenant's audit chain: `{"valid", "events", "first_bad_seq", "reason"}`. The
/// JSONL file is read afresh from disk, so a change made to it behind the server's back is
/// seen. Super admins only.
///
/// # Errors
/// 403 for other callers; 400 for a bad tenant id; 404 for a tenant the directory does not
/// know and the store holds nothing of (a mistyped id is not reported as a valid empty
/// trail; the trail of a tenant the directory forgot is still verified); 503 when the store
/// cannot be read.
pub async fn verify_audit(
    app: &App,
    ctx: &TenantContext,
    tenant: &str,
) -> Result<serde_json::Value> {
    require_super_admin(ctx)?;
    let t = parse_tenant(tenant)?;
    flush(app).await;
    let result = match app.audit_backend() {
        AuditBackend::File(path) => {
            match FileAuditStore::builder(path.clone())
                .read_only()
                .open()
                .await
            {
                Ok(store) => tenancy_audit::verify::verify(&store, &t, &[]).await,
                Err(e) => Err(e),
            }
        }
        AuditBackend::Postgres(pg) => tenancy_audit::verify::verify(pg, &t, &[]).await,
    };
    match result {
        Ok(v)
            if v.records == 0 && v.anchor.is_none() && app.directory().get(&t).await?.is_none() =>
        {
            Err(Error::NotFound)
        }
        Ok(v) => Ok(v.summary()),
        Err(tenancy_audit::Error::Malformed { .. }) => Ok(serde_json::json!({
            "valid": false, "events": 0, "first_bad_seq": null, "reason": "unreadable",
        })),
        Err(e) => Err(e.into()),
    }
}

/// `GET /health`: the cached component checks; `(false, body)` when one is down.
pub fn health(app: &App) -> (bool, serde_json::Value) {
    let components = app.health();
    let down = components.values().any(|h| h.status == HealthStatus::Down);
    let body = serde_json::json!({
        "status": if down { "degraded" } else { "ok" },
        "components": components.iter().map(|(name, h)| {
            let status = match h.status {
                HealthStatus::Up => "up",
                HealthStatus::Degraded => "degraded",
                _ => "down",
            };
            (name.clone(), serde_json::json!({
                "status": status,
                "latency_ms": h.latency_ms,
            }))
        }).collect::<serde_json::Map<_, _>>(),
    });
    (!down, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    /// A failed login or refresh leaves a trace in the platform's trail: a backend outage
    /// (503), an internal fault (500), a refresh that kept losing races (409). A refusal the
    /// client caused (400) is audited where it is decided, not here.
    #[tokio::test]
    async fn attempts_that_failed_on_the_servers_side_are_audited() {
        let dir = tempfile::tempdir().unwrap();
        let app = App::build(Config::for_tests(dir.path())).await.unwrap();
        let origin = Origin::default();
        let cases: [(Error, Option<&str>); 4] = [
            (Error::Conflict, Some("conflict")),
            (
                Error::Unavailable("down".into()),
                Some("backend_unavailable"),
            ),
            (Error::Internal("fault".into()), Some("internal_error")),
            (Error::BadRequest("x".into()), None),
        ];
        for (error, reason) in cases {
            let status = error.status();
            let before = app
                .audit_store()
                .newest(&platform(), None, 1000)
                .await
                .unwrap()
                .len();
            audit_failed_attempt::<()>(&app, "auth.refresh", None, &origin, &Err(error)).await;
            app.audit().flush().await.unwrap();
            let events = app
                .audit_store()
                .newest(&platform(), None, 1000)
                .await
                .unwrap();
            match reason {
                Some(reason) => {
                    assert_eq!(events.len(), before + 1, "{status}");
                    let newest = String::from_utf8_lossy(&events[0].payload).into_owned();
                    assert!(newest.contains("\"auth.refresh\""), "{status}: {newest}");
                    assert!(
                        newest.contains(&format!("\"{reason}\"")),
                        "{status}: {newest}"
                    );
                }
                None => assert_eq!(events.len(), before, "{status}: audited here"),
            }
        }
        app.shutdown().await.unwrap();
    }

    /// The audit list pages newest first; the last page, full or not, leads nowhere.
    #[tokio::test]
    async fn the_last_page_of_a_trail_leads_nowhere_even_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let app = App::build(Config::for_tests(dir.path())).await.unwrap();
        let claims = Claims::from_json(
            br#"{"iss":"i","aud":"a","sub":"ann","exp":9999999999,"tenant_id":"pages",
                "user_id":"ann","user_role":"tenant_admin","permissions":["audit:read"]}"#,
        )
        .unwrap();
        let ctx = TenantContext::from_claims(&claims);
        for i in 0..4 {
            let e = event(
                &ctx.tenant,
                "records.read",
                Outcome::Success,
                &Origin::default(),
            );
            app.record(e.with_resource("record", i.to_string())).await;
        }
        let mut seqs = Vec::new();
        let mut before = None;
        let mut pages = 0;
        loop {
            let page = tenant_audit(&app, &ctx, before, Some(2)).await.unwrap();
            pages += 1;
            seqs.extend(page.events.iter().map(|e| e["seq"].as_u64().unwrap()));
            match page.next_before {
                Some(b) => before = Some(b),
                None => break,
            }
            assert!(pages < 10, "pages never end");
        }
        assert_eq!(seqs, [4, 3, 2, 1]);
        assert_eq!(pages, 2, "a third, empty page was offered");
        app.shutdown().await.unwrap();
    }
}
