//! Every endpoint's HTTP answer, free of any web framework: request bodies and query
//! strings parsed with their 415/413/400 refusals, problem+json rendering, the `/metrics`
//! address rule, the `Location` of a created record — each written once, here.
//!
//! A framework's route reads a [`Call`] (the [`App`], the request's [`Origin`], its query
//! string and content type), the request body as a [`Body`], and the path parameters; calls
//! the endpoint function; and turns the [`Answer`] (status, headers, body bytes, an optional
//! [`AuditNote`] for the tenancy layer) into its own response type. The axum routes in
//! [`http`](crate::http) and the actix-web example do exactly that.
//!
//! ```
//! use tenancy_server::web::{self, BodyError, Call};
//! use tenancy_server::{App, Config};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let app = App::build(Config::for_tests(dir.path())).await?;
//! let call = Call::new(app.clone()).with_content_type("application/json");
//! let body = br#"{"tenant_id":"acme","username":"bob","password":"password"}"#;
//! let answer = web::login(&call, Ok(body)).await;
//! assert_eq!(answer.status, 200);
//!
//! let refused = web::login(&call, Err(BodyError::TooLarge)).await; // and audited
//! assert_eq!(refused.status, 413);
//! assert_eq!(refused.header("content-type"), Some("application/problem+json"));
//! app.shutdown().await?;
//! # Ok(()) }
//! ```

use std::net::IpAddr;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use tenancy_core::{Claims, HealthStatus, Origin, RequestId, TenantContext};
use tenancy_http::{AuditNote, PROBLEM_JSON, RequestMeta};

use crate::app::{App, BODY_READ_TIMEOUT, MAX_BODY_BYTES, metrics_handle};
use crate::records::{self, NewRecord};
use crate::{Error, Result, openapi, ops};

/// The content type of `/metrics`.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Default page of `GET /v1/records`.
pub const RECORDS_PAGE: usize = 100;

/// An answer as plain parts, for any framework to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Headers to set (names in lowercase; a name or value that is not valid HTTP is not
    /// sent).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// What the tenancy layer adds to the audit record of this response (put it in the
    /// response's extensions).
    pub audit: Option<AuditNote>,
}

impl Answer {
    /// `body` as `application/json`.
    pub fn json(status: u16, body: &impl serde::Serialize) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body: serde_json::to_vec(body).unwrap_or_default(),
            audit: None,
        }
    }

    /// An answer without a body (`204`).
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            audit: None,
        }
    }

    /// `e` as `application/problem+json` quoting `request_id`; a 401 carries
    /// `WWW-Authenticate: Bearer`. The cause of a 5xx goes to the log, never the body.
    pub fn problem(e: &Error, request_id: Option<&RequestId>) -> Self {
        let status = e.status();
        if status >= 500 {
            tracing::error!(error = %e, source = ?std::error::Error::source(e), "request failed");
        }
        let mut headers = vec![("content-type", PROBLEM_JSON.to_owned())];
        if status == 401 {
            headers.push(("www-authenticate", "Bearer".to_owned()));
        }
        Self {
            status,
            headers,
            body: serde_json::to_vec(&e.problem(request_id)).unwrap_or_default(),
            audit: None,
        }
    }

    /// The value of header `name` (lowercase), when set.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why the framework could not hand over the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the limit the framework enforces ([`MAX_BODY_BYTES`]).
    TooLarge,
    /// The body could not be read (the connection failed mid-body, bad chunking).
    Unreadable,
    /// The body did not arrive within [`BODY_READ_TIMEOUT`].
    TimedOut,
}

/// A request body as the framework read it.
pub type Body<'a> = std::result::Result<&'a [u8], BodyError>;

fn body_error(e: BodyError, limit: usize) -> Error {
    match e {
        BodyError::TooLarge => Error::PayloadTooLarge(limit),
        BodyError::Unreadable => Error::BadRequest("the request body could not be read".into()),
        BodyError::TimedOut => Error::RequestTimeout(BODY_READ_TIMEOUT),
    }
}

/// Whether a request's `Content-Length` declares a body over [`MAX_BODY_BYTES`]: both servers
/// then answer [`body_refused`] before routing, whether or not the route reads one, reading
/// no more of the body than the servers throw away after a refusal
/// ([`tenancy_http::drain()`]). (A missing or malformed length is the HTTP parser's business.)
///
/// ```
/// use tenancy_server::web::declares_too_large;
///
/// assert!(declares_too_large(Some(b"65537")));
/// assert!(!declares_too_large(Some(b"65536")));
/// assert!(!declares_too_large(None));
/// ```
pub fn declares_too_large(content_length: Option<&[u8]>) -> bool {
    tenancy_http::drain::declared_length(content_length).is_some_and(|n| n > MAX_BODY_BYTES as u64)
}

/// The answer for a body refused before routing: 413 when it is over [`MAX_BODY_BYTES`]
/// (declared, or found so while reading it), 408 when it did not arrive within
/// [`BODY_READ_TIMEOUT`], 400 when it could not be read. Every route, not only those that
/// read a body, keeps the contract's limits. The server throws away what is left of the body
/// (`DrainBodyLayer`, `DrainBody`) before it answers, within its own bounds. A login or
/// refresh so refused is audited as an attempt ([`ops::audit_refused_attempt`]).
pub async fn body_refused(c: &Call, e: BodyError) -> Answer {
    let e = body_error(e, MAX_BODY_BYTES);
    if let Some(action) = c.attempt() {
        ops::audit_refused_attempt(&c.app, action, &c.origin, &e).await;
    }
    c.problem(e)
}

/// The body of a route that takes none: nothing, or an empty JSON object (`{}`), through the
/// same checks as every JSON body (415 for another content type, 400 for anything but `{}`).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Whether a `Content-Type` value is JSON: `application/json` or `application/*+json`,
/// parameters ignored.
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
}

/// A JSON body: JSON content type (else 415), at most `limit` bytes (else 413), a document
/// of `T` without unknown fields (else 400 saying what is wrong).
///
/// ```
/// use tenancy_server::web::{json_body, BodyError};
///
/// #[derive(serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Tier { tier: String }
///
/// let ok: Tier = json_body(Some("application/json"), Ok(br#"{"tier":"premium"}"#), 64)?;
/// assert_eq!(ok.tier, "premium");
/// let status = |r: Result<Tier, tenancy_server::Error>| r.err().map(|e| e.status());
/// assert_eq!(status(json_body(Some("text/plain"), Ok(b"{}"), 64)), Some(415));
/// assert_eq!(status(json_body(Some("application/json"), Ok(&[b' '; 65]), 64)), Some(413));
/// assert_eq!(status(json_body(Some("application/json"), Err(BodyError::TooLarge), 64)), Some(413));
/// assert_eq!(status(json_body(Some("application/json"), Ok(br#"{"tier":"#), 64)), Some(400));
/// assert_eq!(status(json_body(Some("application/json"), Ok(br#"{"tier":"x","y":1}"#), 64)), Some(400));
/// # Ok::<(), tenancy_server::Error>(())
/// ```
///
/// # Errors
/// [`Error::UnsupportedMediaType`], [`Error::PayloadTooLarge`] or [`Error::BadRequest`].
pub fn json_body<T: DeserializeOwned>(
    content_type: Option<&str>,
    body: Body<'_>,
    limit: usize,
) -> Result<T> {
    if !is_json(content_type) {
        return Err(Error::UnsupportedMediaType);
    }
    let bytes = match body {
        Ok(b) if b.len() <= limit => b,
        Ok(_) => return Err(body_error(BodyError::TooLarge, limit)),
        Err(e) => return Err(body_error(e, limit)),
    };
    // Every body is an object: serde would also fill a struct from an array of its fields in
    // order (`["acme","bob","password"]`), which the contract does not offer.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(Error::BadRequest(
            "invalid request body: a JSON object is expected".into(),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "malformed JSON"
            }
            _ => "invalid request body",
        };
        Error::BadRequest(format!("{what}: {}", plain_words(&e.to_string())).into())
    })
}

/// serde's message in the words of JSON: `expected a whole number, 0 or more`, not `expected
/// u64`; `expected a JSON object`, not the name of a type inside the server.
fn plain_words(message: &str) -> String {
    const EXPECTED: &str = "expected ";
    let word_len = |s: &str| {
        s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(EXPECTED) {
        let (before, after) = rest.split_at(at + EXPECTED.len());
        out.push_str(before);
        let (words, used) = if let Some(name) = after.strip_prefix("struct ") {
            ("a JSON object", "struct ".len() + word_len(name))
        } else if let Some(name) = after.strip_prefix("enum ") {
            ("one of the allowed values", "enum ".len() + word_len(name))
        } else {
            let word = &after[..word_len(after)];
            match word {
                "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => {
                    ("a whole number, 0 or more", word.len())
                }
                "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => ("a whole number", word.len()),
                "f32" | "f64" => ("a number", word.len()),
                _ => ("", 0),
            }
        };
        out.push_str(words);
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}

/// A query string (without `?`) as `T`; a 400 saying what is wrong otherwise.
///
/// ```
/// use tenancy_server::web::{query, AuditQuery};
///
/// let q: AuditQuery = query("before=9&limit=2")?;
/// assert_eq!((q.before, q.limit), (Some(9), Some(2)));
/// assert_eq!(query::<AuditQuery>("colour=red").unwrap_err().status(), 400);
/// # Ok::<(), tenancy_server::Error>(())
/// ```
///
/// # Errors
/// [`Error::BadRequest`] for an unknown or malformed parameter.
pub fn query<T: DeserializeOwned>(raw: &str) -> Result<T> {
    let uri: http::Uri = format!("/?{raw}")
        .parse()
        .map_err(|_| Error::BadRequest("query: not a valid query string".into()))?;
    axum::extract::Query::<T>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|r| {
            let text = r.body_text();
            let why = text
                .strip_prefix("Failed to deserialize query string: ")
                .unwrap_or(&text);
            Error::BadRequest(format!("query: {}", plain_words(why)).into())
        })
}

/// The query of `GET /v1/records`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only records after this cursor (the last page's `next_before`).
    pub before: Option<String>,
    /// Page size (default [`RECORDS_PAGE`]).
    pub limit: Option<usize>,
}

/// The query of `GET /v1/tenant/audit`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only events with a smaller `seq` (the last page's `next_before`).
    pub before: Option<u64>,
    /// Page size (see [`ops::AUDIT_PAGE`]).
    pub limit: Option<usize>,
}

/// The query of `GET /v1/admin/audit/verify`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyQuery {
    /// The tenant whose chain to verify.
    pub tenant: String,
}

/// The origin of a request as the tenancy layer resolved it (request id, route template,
/// client address through trusted proxies), from the [`RequestMeta`] it put in the request
/// extensions; without one, nothing is known.
pub fn origin(meta: Option<&RequestMeta>) -> Origin {
    match meta {
        Some(meta) => Origin {
            request_id: Some(meta.request_id().clone()),
            route: Some(meta.route_label().to_owned()),
            client_addr: meta.client_addr(),
        },
        None => Origin::default(),
    }
}

/// One request as the endpoints need it, whatever framework received it.
#[derive(Debug, Clone)]
pub struct Call {
    /// The app serving it.
    pub app: App,
    /// Request id, route template and client address, as the tenancy layer resolved them.
    pub origin: Origin,
    /// The query string, without `?`.
    pub query: String,
    /// The `Content-Type` header, when sent as visible ASCII.
    pub content_type: Option<String>,
}

impl Call {
    /// A call to `app` with nothing known about the request yet.
    pub fn new(app: App) -> Self {
        Self {
            app,
            origin: Origin::default(),
            query: String::new(),
            content_type: None,
        }
    }

    /// With the request's origin (request id, route, client address).
    pub fn with_origin(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }

    /// With the query string (without `?`).
    pub fn with_query(mut self, query: impl Into<String>) -> Self {
        self.query = query.into();
        self
    }

    /// With the `Content-Type` header.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// The request id, when the tenancy layer assigned one.
    pub fn request_id(&self) -> Option<&RequestId> {
        self.origin.request_id.as_ref()
    }

    /// The client address, when known.
    pub fn client_addr(&self) -> Option<IpAddr> {
        self.origin.client_addr
    }

    /// `e` as a problem answer quoting this request's id.
    pub fn problem(&self, e: impl Into<Error>) -> Answer {
        Answer::problem(&e.into(), self.request_id())
    }

    fn answer(&self, r: Result<Answer>) -> Answer {
        r.unwrap_or_else(|e| self.problem(e))
    }

    fn json<T: DeserializeOwned>(&self, body: Body<'_>) -> Result<T> {
        json_body(self.content_type.as_deref(), body, MAX_BODY_BYTES)
    }

    /// The body of a route that takes none: accepted when empty, else it must be [`Empty`].
    fn empty(&self, body: Body<'_>) -> Result<()> {
        match body {
            Ok([]) => Ok(()),
            _ => self.json::<Empty>(body).map(|Empty {}| ()),
        }
    }

    /// The audit action of a login or refresh route (`auth.login`, `auth.refresh`), whose
    /// attempts are audited whatever refuses them.
    fn attempt(&self) -> Option<&'static str> {
        match self.origin.route.as_deref()? {
            "/v1/auth/login" => Some("auth.login"),
            "/v1/auth/refresh" => Some("auth.refresh"),
            _ => None,
        }
    }

    /// The JSON body of a login or refresh: a refused one is audited as an attempt.
    async fn attempt_body<T: DeserializeOwned>(&self, action: &str, body: Body<'_>) -> Result<T> {
        let parsed = self.json(body);
        if let Err(e) = &parsed {
            ops::audit_refused_attempt(&self.app, action, &self.origin, e).await;
        }
        parsed
    }

    fn query<T: DeserializeOwned>(&self) -> Result<T> {
        query(&self.query)
    }
}

/// 404 for a path no route serves.
pub fn not_found(c: &Call) -> Answer {
    c.problem(Error::NotFound)
}

/// 405 for a method a served path does not allow.
pub fn method_not_allowed(c: &Call) -> Answer {
    c.problem(Error::MethodNotAllowed)
}

/// `GET /health`: 200, or 503 naming the component that is down.
pub fn health(c: &Call) -> Answer {
    let (ok, body) = ops::health(&c.app);
    Answer::json(if ok { 200 } else { 503 }, &body)
}

/// `GET /metrics`: the Prometheus text, to clients the configuration allows
/// ([`Config::metrics_allow`](crate::Config::metrics_allow)); anyone else gets the same
/// 404 as a path that does not exist.
pub fn metrics(c: &Call) -> Answer {
    if !c.app.config().metrics_allow.allows(c.client_addr()) {
        tracing::debug!(client = ?c.client_addr(), "metrics refused to this client address");
        return not_found(c);
    }
    Answer {
        status: 200,
        headers: vec![("content-type", PROMETHEUS_TEXT.to_owned())],
        body: metrics_text(&c.app).into_bytes(),
        audit: None,
    }
}

/// Sets the gauges read at scrape time (audit queue figures, component health) and renders
/// every metric in Prometheus text.
pub fn metrics_text(app: &App) -> String {
    let stats = app.audit().stats();
    metrics::gauge!("tenancy_audit_events_stored").set(stats.stored as f64);
    metrics::gauge!("tenancy_audit_events_spooled").set(stats.spooled as f64);
    metrics::gauge!("tenancy_audit_store_errors").set(stats.store_errors as f64);
    metrics::gauge!("tenancy_audit_event_id_conflicts").set(stats.conflicts as f64);
    for (name, h) in app.health() {
        let up = if h.status == HealthStatus::Down {
            0.0
        } else {
            1.0
        };
        metrics::gauge!("tenancy_component_up", "component" => name).set(up);
    }
    metrics_handle().render()
}

/// `GET /openapi.json`.
pub fn openapi() -> Answer {
    Answer::json(200, &openapi::document())
}

/// `POST /v1/auth/login`.
pub async fn login(c: &Call, body: Body<'_>) -> Answer {
    let r = async {
        let req = c.attempt_body("auth.login", body).await?;
        let t = ops::login(&c.app, req, &c.origin).await?;
        Ok(Answer::json(200, &t))
    };
    c.answer(r.await)
}

/// `POST /v1/auth/refresh`.
pub async fn refresh(c: &Call, body: Body<'_>) -> Answer {
    let r = async {
        let req = c.attempt_body("auth.refresh", body).await?;
        let t = ops::refresh(&c.app, req, &c.origin).await?;
        Ok(Answer::json(200, &t))
    };
    c.answer(r.await)
}

/// `POST /v1/auth/logout`: `claims` are the verified claims of the presented token (the
/// tenancy layer's [`RequestMeta::claims`]); the body is nothing or `{}`.
pub async fn logout(
    c: &Call,
    ctx: &TenantContext,
    claims: Option<&Claims>,
    body: Body<'_>,
) -> Answer {
    let r = async {
        c.empty(body)?;
        ops::logout(&c.app, ctx, claims).await?;
        Ok(Answer::empty(204))
    };
    c.answer(r.await)
}

/// `GET /v1/me`.
pub fn me(ctx: &TenantContext) -> Answer {
    Answer::json(200, &ops::me(ctx))
}

/// `GET /v1/records`.
pub async fn list_records(c: &Call, ctx: &TenantContext) -> Answer {
    let r = async {
        // Who may ask before what they ask: a caller without the permission gets its 403
        // (audited as a denial) whatever the query or body.
        records::require(ctx, "records:read")?;
        let q: ListQuery = c.query()?;
        let page = records::list(
            c.app.records(),
            ctx,
            q.limit.unwrap_or(RECORDS_PAGE),
            q.before.as_deref(),
        )
        .await?;
        Ok(Answer::json(200, &page))
    };
    c.answer(r.await)
}

/// `POST /v1/records`: 201 with the record, its `Location`, and its id for the audit record.
pub async fn create_record(c: &Call, ctx: &TenantContext, body: Body<'_>) -> Answer {
    let r = async {
        records::require(ctx, "records:write")?;
        let new: NewRecord = c.json(body)?;
        let rec = records::create(c.app.records(), ctx, new).await?;
        let mut a = Answer::json(201, &rec);
        a.headers
            .push(("location", format!("/v1/records/{}", rec.id)));
        a.audit = Some(AuditNote {
            resource_id: Some(rec.id),
            ..AuditNote::default()
        });
        Ok(a)
    };
    c.answer(r.await)
}

/// `GET /v1/records/{id}`.
pub async fn get_record(c: &Call, ctx: &TenantContext, id: &str) -> Answer {
    let r = records::get(c.app.records(), ctx, id).await;
    c.answer(r.map(|rec| Answer::json(200, &rec)))
}

/// `DELETE /v1/records/{id}`.
pub async fn delete_record(c: &Call, ctx: &TenantContext, id: &str) -> Answer {
    let r = records::delete(c.app.records(), ctx, id).await;
    c.answer(r.map(|()| Answer::empty(204)))
}

/// `GET /v1/tenant/audit`.
pub async fn tenant_audit(c: &Call, ctx: &TenantContext) -> Answer {
    let r = async {
        records::require(ctx, "audit:read")?;
        let q: AuditQuery = c.query()?;
        let page = ops::tenant_audit(&c.app, ctx, q.before, q.limit).await?;
        Ok(Answer::json(200, &page))
    };
    c.answer(r.await)
}

/// `PUT /v1/admin/tenants/{tenant}`: 201 when created, 200 when changed.
pub async fn put_tenant(c: &Call, ctx: &TenantContext, tenant: &str, body: Body<'_>) -> Answer {
    let r = async {
        ops::require_super_admin(ctx)?;
        let (created, v) = ops::put_tenant(&c.app, ctx, tenant, c.json(body)?).await?;
        Ok(Answer::json(if created { 201 } else { 200 }, &v))
    };
    c.answer(r.await)
}

/// `GET /v1/admin/tenants/{tenant}`.
pub async fn get_tenant(c: &Call, ctx: &TenantContext, tenant: &str) -> Answer {
    let r = ops::get_tenant(&c.app, ctx, tenant).await;
    c.answer(r.map(|v| Answer::json(200, &v)))
}

/// `PUT /v1/admin/tenants/{tenant}/limits`.
pub async fn put_limits(c: &Call, ctx: &TenantContext, tenant: &str, body: Body<'_>) -> Answer {
    let r = async {
        ops::require_super_admin(ctx)?;
        let v = ops::put_limits(&c.app, ctx, tenant, c.json(body)?).await?;
        Ok(Answer::json(200, &v))
    };
    c.answer(r.await)
}

/// `POST /v1/admin/tenants/{tenant}/bypass`.
pub async fn bypass(c: &Call, ctx: &TenantContext, tenant: &str, body: Body<'_>) -> Answer {
    let r = async {
        ops::require_super_admin(ctx)?;
        let v = ops::bypass(&c.app, ctx, tenant, c.json(body)?).await?;
        Ok(Answer::json(200, &v))
    };
    c.answer(r.await)
}

/// `POST /v1/admin/tenants/{tenant}/suspend` (`suspend`) and `/resume`; the body is nothing
/// or `{}`.
pub async fn set_status(
    c: &Call,
    ctx: &TenantContext,
    tenant: &str,
    suspend: bool,
    body: Body<'_>,
) -> Answer {
    let r = async {
        ops::require_super_admin(ctx)?;
        c.empty(body)?;
        let v = ops::set_status(&c.app, ctx, tenant, suspend).await?;
        Ok(Answer::json(200, &v))
    };
    c.answer(r.await)
}

/// `GET /v1/admin/audit/verify?tenant=T`.
pub async fn verify_audit(c: &Call, ctx: &TenantContext) -> Answer {
    let r = async {
        ops::require_super_admin(ctx)?;
        let q: VerifyQuery = c.query()?;
        let v = ops::verify_audit(&c.app, ctx, &q.tenant).await?;
        Ok(Answer::json(200, &v))
    };
    c.answer(r.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        assert!(is_json(Some("application/json")));
        assert!(is_json(Some("Application/JSON; charset=utf-8")));
        assert!(is_json(Some("application/merge-patch+json")));
        assert!(!is_json(Some("text/json")));
        assert!(!is_json(Some("application/jsonx")));
        assert!(!is_json(None));
    }

    /// A refused body or query names JSON's kinds of value, never a type of the server's.
    #[test]
    fn refusals_say_what_json_was_expected_in_json_words() {
        let detail = |e: Error| match e {
            Error::BadRequest(d) => d.into_owned(),
            other => panic!("{other:?}"),
        };
        let json = |body: &[u8]| {
            detail(json_body::<NewRecord>(Some("application/json"), Ok(body), 1024).unwrap_err())
        };
        assert_eq!(
            json(b"null"),
            "invalid request body: invalid type: null, expected a JSON object at line 1 column 4"
        );
        let bypass = |body: &[u8]| {
            detail(json_body::<ops::Bypass>(Some("application/json"), Ok(body), 1024).unwrap_err())
        };
        assert_eq!(
            bypass(br#"{"seconds":-1}"#),
            "invalid request body: invalid value: integer `-1`, expected a whole number, 0 or \
             more at line 1 column 13"
        );
        // A whole number written as a float is a whole number (JSON Schema's `integer`).
        let ok: ops::Bypass =
            json_body(Some("application/json"), Ok(br#"{"seconds":276.0}"#), 1024).unwrap();
        assert_eq!(ok.seconds, ops::WholeNumber(276));
        assert_eq!(
            bypass(br#"{"seconds":276.5}"#),
            "invalid request body: invalid value: floating point `276.5`, expected a whole \
             number, 0 or more at line 1 column 16"
        );
        let limits: ops::PutLimits = json_body(
            Some("application/json"),
            Ok(br#"{"tenant_burst":100.0,"user_burst":null}"#),
            1024,
        )
        .unwrap();
        assert_eq!(
            (limits.tenant_burst, limits.user_burst, limits.user_per_hour),
            (Some(Some(100)), Some(None), None)
        );
        let q = detail(query::<AuditQuery>("limit=x").unwrap_err());
        assert_eq!(q, "query: limit: invalid digit found in string");
        let q = detail(query::<AuditQuery>("colour=red").unwrap_err());
        assert!(
            q.starts_with("query: colour: unknown field `colour`"),
            "{q}"
        );
        // What holds no such word is left as it is.
        assert_eq!(plain_words("expected `,` or `}`"), "expected `,` or `}`");
        assert_eq!(
            plain_words("invalid type: string \"x\", expected f64; expected i32"),
            "invalid type: string \"x\", expected a number; expected a whole number"
        );
    }

    #[test]
    fn refusals_in_order_and_problems_render() {
        let e =
            json_body::<VerifyQuery>(Some("text/plain"), Err(BodyError::TooLarge), 8).unwrap_err();
        assert_eq!(e.status(), 415, "the content type is judged first");
        let e = json_body::<VerifyQuery>(Some("application/json"), Err(BodyError::Unreadable), 8)
            .unwrap_err();
        assert_eq!(e.status(), 400);
        let a = Answer::problem(&Error::Unauthorized, None);
        assert_eq!(a.status, 401);
        assert_eq!(a.header("www-authenticate"), Some("Bearer"));
        let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body["status"], 401);
        let a = Answer::problem(&Error::MethodNotAllowed, None);
        assert_eq!(a.status, 405);
        assert_eq!(a.header("www-authenticate"), None);
        let opaque = Answer::problem(&Error::Internal("db at 10.0.0.7 said no".into()), None);
        assert!(!String::from_utf8_lossy(&opaque.body).contains("10.0.0.7"));
    }
}
