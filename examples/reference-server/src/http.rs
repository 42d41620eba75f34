//! The axum routes: a thin layer that parses requests, calls the framework-free operations
//! in [`ops`] and [`records`], and renders their answers.
//!
//! [`router`] returns the whole API with the tenancy stack (request id, authentication,
//! tenant resolution, rate limits, audit) and the 64 KiB body limit in front of it.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use tenancy_server::{http, App, Config};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = App::build(Config::from_env()?).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, http::router(app).into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```

use axum::Router;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tenancy_core::RequestId;
use tenancy_http::{AuditNote, PROBLEM_JSON};
use tenancy_tower::{TenancyLayer, Tenant};

use crate::app::{App, MAX_BODY_BYTES, metrics_handle};
use crate::records::{self, NewRecord};
use crate::{Error, openapi, ops};

/// An [`Error`] with the request id to quote in its problem body.
#[derive(Debug)]
pub struct ApiError(pub Error, pub Option<RequestId>);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e, None)
    }
}

/// Renders `e` as an `application/problem+json` response (a 401 carries
/// `WWW-Authenticate: Bearer`). The cause of a 5xx goes to the log, not the body.
pub fn problem_response(e: &Error, request_id: Option<&RequestId>) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::error!(error = %e, source = ?std::error::Error::source(e), "request failed");
    }
    let body = serde_json::to_vec(&e.problem(request_id)).unwrap_or_default();
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    if status == StatusCode::UNAUTHORIZED {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        problem_response(&self.0, self.1.as_ref())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The request id the tenancy layer assigned.
#[derive(Debug, Clone, Default)]
pub struct ReqId(pub Option<RequestId>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ReqId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<RequestId>().cloned()))
    }
}

impl ReqId {
    fn err(&self, e: impl Into<Error>) -> ApiError {
        ApiError(e.into(), self.0.clone())
    }
}

/// A JSON body: `application/json`, at most 64 KiB, no unknown fields. Refusals are
/// problem+json: 415, 413, or 400 saying what is wrong with the document.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let id = req.extensions().get::<RequestId>().cloned();
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            })
            .unwrap_or(false);
        if !json {
            return Err(ApiError(Error::UnsupportedMediaType, id));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r: BytesRejection| {
                let e = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Error::PayloadTooLarge(MAX_BODY_BYTES)
                } else {
                    Error::BadRequest("the request body could not be read".into())
                };
                ApiError(e, id.clone())
            })?;
        serde_json::from_slice(&bytes).map(Json).map_err(|e| {
            let what = match e.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    "malformed JSON"
                }
                _ => "invalid request body",
            };
            ApiError(Error::BadRequest(format!("{what}: {e}").into()), id)
        })
    }
}

fn query<T>(q: Result<Query<T>, QueryRejection>, id: &ReqId) -> ApiResult<T> {
    q.map(|Query(v)| v).map_err(|r| {
        id.err(Error::BadRequest(
            format!("query: {}", r.body_text()).into(),
        ))
    })
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = (status, bytes).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The whole API with the tenancy stack and the body limit.
pub fn router(app: App) -> Router {
    let tenancy = app.tenancy().clone();
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_doc))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/me", get(me))
        .route("/v1/records", get(list_records).post(create_record))
        .route("/v1/records/{id}", get(get_record).delete(delete_record))
        .route("/v1/tenant/audit", get(tenant_audit))
        .route(
            "/v1/admin/tenants/{tenant}",
            put(put_tenant).get(get_tenant),
        )
        .route("/v1/admin/tenants/{tenant}/limits", put(put_limits))
        .route("/v1/admin/tenants/{tenant}/bypass", post(bypass))
        .route("/v1/admin/tenants/{tenant}/suspend", post(suspend))
        .route("/v1/admin/tenants/{tenant}/resume", post(resume))
        .route("/v1/admin/audit/verify", get(verify))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TenancyLayer::new(tenancy))
        .with_state(app)
}

async fn not_found(id: ReqId) -> ApiError {
    id.err(Error::NotFound)
}

async fn method_not_allowed(id: ReqId) -> Response {
    let mut resp = problem_response(
        &Error::BadRequest("method not allowed on this path".into()),
        id.0.as_ref(),
    );
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    let body = serde_json::json!({
        "type": "urn:tenancy:problem:method-not-allowed",
        "title": "Method Not Allowed",
        "status": 405,
        "detail": "this method is not allowed on this path",
        "request_id": id.0,
    });
    *resp.body_mut() = axum::body::Body::from(serde_json::to_vec(&body).unwrap_or_default());
    resp
}

async fn health(State(app): State<App>) -> Response {
    let (ok, body) = ops::health(&app);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &body)
}

async fn metrics(State(app): State<App>) -> Response {
    let stats = app.audit().stats();
    metrics::gauge!("tenancy_audit_events_stored").set(stats.stored as f64);
    metrics::gauge!("tenancy_audit_events_spooled").set(stats.spooled as f64);
    metrics::gauge!("tenancy_audit_store_errors").set(stats.store_errors as f64);
    for (name, h) in app.health() {
        let up = if h.status == tenancy_core::HealthStatus::Down {
            0.0
        } else {
            1.0
        };
        metrics::gauge!("tenancy_component_up", "component" => name).set(up);
    }
    let text = metrics_handle().render();
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

async fn openapi_doc() -> Response {
    json_response(StatusCode::OK, &openapi::document())
}

async fn login(
    State(app): State<App>,
    id: ReqId,
    Json(body): Json<ops::LoginRequest>,
) -> ApiResult<Response> {
    let t = ops::login(&app, body, id.0.as_ref())
        .await
        .map_err(|e| id.err(e))?;
    Ok(json_response(StatusCode::OK, &t))
}

async fn refresh(
    State(app): State<App>,
    id: ReqId,
    Json(body): Json<ops::RefreshRequest>,
) -> ApiResult<Response> {
    let t = ops::refresh(&app, body, id.0.as_ref())
        .await
        .map_err(|e| id.err(e))?;
    Ok(json_response(StatusCode::OK, &t))
}

async fn logout(State(app): State<App>, id: ReqId, Tenant(ctx): Tenant) -> ApiResult<StatusCode> {
    ops::logout(&app, &ctx).await.map_err(|e| id.err(e))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(Tenant(ctx): Tenant) -> Response {
    json_response(StatusCode::OK, &ops::me(&ctx))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
}

async fn list_records(
    State(app): State<App>,
    id: ReqId,
    Tenant(ctx): Tenant,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let q = query(q, &id)?;
    let list = records::list(app.records(), &ctx, q.limit.unwrap_or(100))
        .await
        .map_err(|e| id.err(e))?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "records": list }),
    ))
}

async fn create_record(
    State(app): State<App>,
    id: ReqId,
    Tenant(ctx): Tenant,
    Json(body): Json<NewRecord>,
) -> ApiResult<Response> {
    let rec = records::create(app.records(), &ctx, body)
        .await
        .map_err(|e| id.err(e))?;
    let mut resp = json_response(StatusCode::CREATED, &rec);
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/records/{}", rec.id)) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    resp.extensions_mut().insert(AuditNote {
        resource_id: Some(rec.id),
        ..AuditNote::default()
    });
    Ok(resp)
}

async fn get_record(
    State(app): State<App>,
    id: ReqId,
    Tenant(ctx): Tenant,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> ApiResult<Response> {
    let Ok(Path(rid)) = path else {
        return Err(id.err(Error::NotFound));
    };
    let rec = records::get(app.records(), &ctx, &rid)
        .await
        .map_err(|e| id.err(e))?;
    Ok(json_response(StatusCode::OK, &rec))
}

async fn delete_record(
    State(app): State<App>,
    id: ReqId,
    Tenant(ctx): Tenant,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> ApiResult<StatusCode> {
    let Ok(Path(rid)) = path else {
        return Err(id.err(Error::NotFound));
    };
    records::delete(app.records(), &ctx, &rid)
        .await
        .map_err(|e| id.err(e))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    before: Option<u64>,
    limit: Option<usize>,
}

async fn tenant_audit(
    State(app): State<App>,
    id: ReqId,
    Tenant(ctx): Tenant,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let q = query(q, &id)?;
    let page = ops::tenant_audit(&app, &ctx, q.before, q.limit)
        .await
        .map_err(|e| id.err(e))?;
    Ok(json_response(StatusCode::OK, &page))
}

async fn put_tenant(
    State(app): State<App>,
    id: ReqId,
    Tenant(ctx): Tenant,
    Path(tenant): Path<String>,
    Json(body): Json<ops::PutTenant>,
) -> ApiResult<Response> {
    let (created, v) = ops::put_tenant(&app, &ctx, &tenant, body)
        .await
        .map_err(|e| id.err(e))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &v))
}

async fn get_tenant(
    State(app): State<App>,
    id: ReqId,
    Tenant(ctx): Tenant,
    Path(tenant): Path<String>,
) -> ApiResult<Response> {
    let v = ops::get_tenant(&app, &ctx, &tenant)
        .await
        .map_err(|e| id.err(e))?;
    Ok(json_response(StatusCode::OK, &v))
}

async fn put_limits(
    State(app): State<App>,
    id: ReqId,
    Tenant(ctx): Tenant,
    Path(tenant): Path<String>,
    Json(body): Json<ops::PutLimits>,
) -> ApiResult<Response> {
    let v = ops::put_limits(&app, &ctx, &tenant, body)
        .await
        .map_err(|e| id.err(e))?;
    Ok(json_response(StatusCode::OK, &v))
}

async fn bypass(
    State(app): State<App>,
    id: ReqId,
    Tenant(ctx): Tenant,
    Path(tenant): Path<String>,
    Json(body): Json<ops::Bypass>,
) -> ApiResult<Response> {
    let v = ops::bypass(&app, &ctx, &tenant, body)
        .await
        .map_err(|e| id.err(e))?;
    Ok(json_response(StatusCode::OK, &v))
}

async fn suspend(
    State(app): State<App>,
    id: ReqId,
    Tenant(ctx): Tenant,
    Path(tenant): Path<String>,
) -> ApiResult<Response> {
    let v = ops::set_status(&app, &ctx, &tenant, true)
        .await
        .map_err(|e| id.err(e))?;
    Ok(json_response(StatusCode::OK, &v))
}

async fn resume(
    State(app): State<App>,
    id: ReqId,
    Tenant(ctx): Tenant,
    Path(tenant): Path<String>,
) -> ApiResult<Response> {
    let v = ops::set_status(&app, &ctx, &tenant, false)
        .await
        .map_err(|e| id.err(e))?;
    Ok(json_response(StatusCode::OK, &v))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyQuery {
    tenant: String,
}

async fn verify(
    State(app): State<App>,
    id: ReqId,
    Tenant(ctx): Tenant,
    q: Result<Query<VerifyQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let q = query(q, &id)?;
    let v = ops::verify_audit(&app, &ctx, &q.tenant)
        .await
        .map_err(|e| id.err(e))?;
    Ok(json_response(StatusCode::OK, &v))
}
