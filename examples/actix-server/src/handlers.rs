//! The actix-web routes: each reads the request, calls the operation the axum route calls,
//! and renders the answer the way `tenancy_server::http` does.

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{FromRequest, HttpMessage as _, HttpRequest, HttpResponse, ResponseError, web};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tenancy_actix::http_core::PROBLEM_JSON;
use tenancy_actix::{AuditNote, Tenant};
use tenancy_core::RequestId;
use tenancy_server::app::{MAX_BODY_BYTES, metrics_handle};
use tenancy_server::records::{self, NewRecord};
use tenancy_server::{App, Error, openapi, ops};

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    let resource = |path: &str| web::resource(path).default_service(web::to(method_not_allowed));
    cfg.app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
        .service(resource("/health").route(web::get().to(health)))
        .service(resource("/metrics").route(web::get().to(metrics)))
        .service(resource("/openapi.json").route(web::get().to(openapi_doc)))
        .service(resource("/v1/auth/login").route(web::post().to(login)))
        .service(resource("/v1/auth/refresh").route(web::post().to(refresh)))
        .service(resource("/v1/auth/logout").route(web::post().to(logout)))
        .service(resource("/v1/me").route(web::get().to(me)))
        .service(
            resource("/v1/records")
                .route(web::get().to(list_records))
                .route(web::post().to(create_record)),
        )
        .service(
            resource("/v1/records/{id}")
                .route(web::get().to(get_record))
                .route(web::delete().to(delete_record)),
        )
        .service(resource("/v1/tenant/audit").route(web::get().to(tenant_audit)))
        .service(
            resource("/v1/admin/tenants/{tenant}")
                .route(web::put().to(put_tenant))
                .route(web::get().to(get_tenant)),
        )
        .service(resource("/v1/admin/tenants/{tenant}/limits").route(web::put().to(put_limits)))
        .service(resource("/v1/admin/tenants/{tenant}/bypass").route(web::post().to(bypass)))
        .service(resource("/v1/admin/tenants/{tenant}/suspend").route(web::post().to(suspend)))
        .service(resource("/v1/admin/tenants/{tenant}/resume").route(web::post().to(resume)))
        .service(resource("/v1/admin/audit/verify").route(web::get().to(verify)))
        .default_service(web::to(not_found));
}

/// An operation's [`Error`] with the request id to quote in its problem body.
#[derive(Debug)]
pub(crate) struct ApiError(Error, Option<RequestId>);

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// problem+json; a 401 carries `WWW-Authenticate: Bearer`; the cause of a 5xx goes to
    /// the log, not the body.
    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(error = %self.0, source = ?std::error::Error::source(&self.0), "request failed");
        }
        let mut resp = HttpResponse::build(status);
        resp.insert_header((header::CONTENT_TYPE, PROBLEM_JSON));
        if status == StatusCode::UNAUTHORIZED {
            resp.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        resp.body(serde_json::to_vec(&self.0.problem(self.1.as_ref())).unwrap_or_default())
    }
}

type Reply = Result<HttpResponse, ApiError>;

/// The app and the request id the middleware assigned.
struct Req {
    app: App,
    id: Option<RequestId>,
    query: String,
    content_type: Option<HeaderValue>,
}

impl FromRequest for Req {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(match req.app_data::<web::Data<App>>() {
            Some(app) => Ok(Self {
                app: app.get_ref().clone(),
                id: req.extensions().get::<RequestId>().cloned(),
                query: req.query_string().to_owned(),
                content_type: req.headers().get(header::CONTENT_TYPE).cloned(),
            }),
            None => Err(actix_web::error::ErrorInternalServerError(
                "tenancy_server::App missing from the app data",
            )),
        })
    }
}

/// The request body as read under the 64 KiB limit.
type Body = Result<web::Bytes, actix_web::Error>;

impl Req {
    fn err(&self, e: impl Into<Error>) -> ApiError {
        ApiError(e.into(), self.id.clone())
    }

    /// A JSON body: `application/json` (or `+json`), at most 64 KiB, no unknown fields;
    /// refused with 415, 413, or 400 saying what is wrong with the document, as the axum
    /// routes refuse it.
    fn json<T: DeserializeOwned>(&self, body: Body) -> Result<T, ApiError> {
        let json = self
            .content_type
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            });
        if !json {
            return Err(self.err(Error::UnsupportedMediaType));
        }
        let bytes = body.map_err(|e| {
            self.err(
                if e.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE {
                    Error::PayloadTooLarge(MAX_BODY_BYTES)
                } else {
                    Error::BadRequest("the request body could not be read".into())
                },
            )
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            let what = match e.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    "malformed JSON"
                }
                _ => "invalid request body",
            };
            self.err(Error::BadRequest(format!("{what}: {e}").into()))
        })
    }

    /// The query string, parsed by the very function the axum routes use, so refusals
    /// read the same.
    fn query<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let uri: axum::http::Uri = format!("/?{}", self.query)
            .parse()
            .map_err(|_| self.err(Error::BadRequest("query: not a valid query string".into())))?;
        axum::extract::Query::<T>::try_from_uri(&uri)
            .map(|q| q.0)
            .map_err(|r| {
                self.err(Error::BadRequest(
                    format!("query: {}", r.body_text()).into(),
                ))
            })
    }
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(serde_json::to_vec(body).unwrap_or_default())
}

async fn not_found(r: Req) -> HttpResponse {
    r.err(Error::NotFound).error_response()
}

async fn method_not_allowed(r: Req) -> HttpResponse {
    let body = serde_json::json!({
        "type": "urn:tenancy:problem:method-not-allowed",
        "title": "Method Not Allowed",
        "status": 405,
        "detail": "this method is not allowed on this path",
        "request_id": r.id,
    });
    HttpResponse::MethodNotAllowed()
        .insert_header((header::CONTENT_TYPE, PROBLEM_JSON))
        .body(serde_json::to_vec(&body).unwrap_or_default())
}

async fn health(r: Req) -> HttpResponse {
    let (ok, body) = ops::health(&r.app);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &body)
}

async fn metrics(r: Req) -> HttpResponse {
    let stats = r.app.audit().stats();
    metrics::gauge!("tenancy_audit_events_stored").set(stats.stored as f64);
    metrics::gauge!("tenancy_audit_events_spooled").set(stats.spooled as f64);
    metrics::gauge!("tenancy_audit_store_errors").set(stats.store_errors as f64);
    for (name, h) in r.app.health() {
        let up = if h.status == tenancy_core::HealthStatus::Down {
            0.0
        } else {
            1.0
        };
        metrics::gauge!("tenancy_component_up", "component" => name).set(up);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics_handle().render())
}

async fn openapi_doc() -> HttpResponse {
    json_response(StatusCode::OK, &openapi::document())
}

async fn login(r: Req, body: Body) -> Reply {
    let t = ops::login(&r.app, r.json(body)?, r.id.as_ref())
        .await
        .map_err(|e| r.err(e))?;
    Ok(json_response(StatusCode::OK, &t))
}

async fn refresh(r: Req, body: Body) -> Reply {
    let t = ops::refresh(&r.app, r.json(body)?, r.id.as_ref())
        .await
        .map_err(|e| r.err(e))?;
    Ok(json_response(StatusCode::OK, &t))
}

async fn logout(r: Req, Tenant(ctx): Tenant) -> Reply {
    ops::logout(&r.app, &ctx).await.map_err(|e| r.err(e))?;
    Ok(HttpResponse::NoContent().finish())
}

async fn me(Tenant(ctx): Tenant) -> HttpResponse {
    json_response(StatusCode::OK, &ops::me(&ctx))
}

// The query documents of the axum routes (private there).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    before: Option<u64>,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyQuery {
    tenant: String,
}

async fn list_records(r: Req, Tenant(ctx): Tenant) -> Reply {
    let q: ListQuery = r.query()?;
    let list = records::list(r.app.records(), &ctx, q.limit.unwrap_or(100))
        .await
        .map_err(|e| r.err(e))?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "records": list }),
    ))
}

async fn create_record(r: Req, Tenant(ctx): Tenant, body: Body) -> Reply {
    let new: NewRecord = r.json(body)?;
    let rec = records::create(r.app.records(), &ctx, new)
        .await
        .map_err(|e| r.err(e))?;
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

async fn get_record(r: Req, Tenant(ctx): Tenant, id: web::Path<String>) -> Reply {
    let rec = records::get(r.app.records(), &ctx, &id)
        .await
        .map_err(|e| r.err(e))?;
    Ok(json_response(StatusCode::OK, &rec))
}

async fn delete_record(r: Req, Tenant(ctx): Tenant, id: web::Path<String>) -> Reply {
    records::delete(r.app.records(), &ctx, &id)
        .await
        .map_err(|e| r.err(e))?;
    Ok(HttpResponse::NoContent().finish())
}

async fn tenant_audit(r: Req, Tenant(ctx): Tenant) -> Reply {
    let q: AuditQuery = r.query()?;
    let page = ops::tenant_audit(&r.app, &ctx, q.before, q.limit)
        .await
        .map_err(|e| r.err(e))?;
    Ok(json_response(StatusCode::OK, &page))
}

async fn put_tenant(r: Req, Tenant(ctx): Tenant, t: web::Path<String>, body: Body) -> Reply {
    let (created, v) = ops::put_tenant(&r.app, &ctx, &t, r.json(body)?)
        .await
        .map_err(|e| r.err(e))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &v))
}

async fn get_tenant(r: Req, Tenant(ctx): Tenant, t: web::Path<String>) -> Reply {
    let v = ops::get_tenant(&r.app, &ctx, &t)
        .await
        .map_err(|e| r.err(e))?;
    Ok(json_response(StatusCode::OK, &v))
}

async fn put_limits(r: Req, Tenant(ctx): Tenant, t: web::Path<String>, body: Body) -> Reply {
    let v = ops::put_limits(&r.app, &ctx, &t, r.json(body)?)
        .await
        .map_err(|e| r.err(e))?;
    Ok(json_response(StatusCode::OK, &v))
}

async fn bypass(r: Req, Tenant(ctx): Tenant, t: web::Path<String>, body: Body) -> Reply {
    let v = ops::bypass(&r.app, &ctx, &t, r.json(body)?)
        .await
        .map_err(|e| r.err(e))?;
    Ok(json_response(StatusCode::OK, &v))
}

async fn suspend(r: Req, Tenant(ctx): Tenant, t: web::Path<String>) -> Reply {
    let v = ops::set_status(&r.app, &ctx, &t, true)
        .await
        .map_err(|e| r.err(e))?;
    Ok(json_response(StatusCode::OK, &v))
}

async fn resume(r: Req, Tenant(ctx): Tenant, t: web::Path<String>) -> Reply {
    let v = ops::set_status(&r.app, &ctx, &t, false)
        .await
        .map_err(|e| r.err(e))?;
    Ok(json_response(StatusCode::OK, &v))
}

async fn verify(r: Req, Tenant(ctx): Tenant) -> Reply {
    let q: VerifyQuery = r.query()?;
    let v = ops::verify_audit(&r.app, &ctx, &q.tenant)
        .await
        .map_err(|e| r.err(e))?;
    Ok(json_response(StatusCode::OK, &v))
}
