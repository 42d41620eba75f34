//! The actix-web routes: each reads the request into a [`Call`], calls the framework-free
//! endpoint of [`tenancy_server::web`] the axum route calls, and sends its [`Answer`].

use std::future::{Ready, ready};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware;
use actix_web::{FromRequest, HttpMessage as _, HttpRequest, HttpResponse, ResponseError, web};
use tenancy_actix::Tenant;
use tenancy_actix::http_core::RequestMeta;
use tenancy_server::app::{BODY_READ_TIMEOUT, MAX_BODY_BYTES};
use tenancy_server::web::{self as endpoints, Answer, BodyError, Call};
use tenancy_server::{App, Error};

/// GET, and HEAD answered by the same handler (actix-web then sends the head without the
/// body), as axum answers them.
fn get() -> actix_web::Route {
    use actix_web::guard;
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    // Every resource and the fallback behind the body limit, as the axum router layers it over
    // every route (each wrapped on its own: a scope around them all would also take the paths
    // of routes an application registers after these). `allow` is the resource's methods as
    // axum lists them in the `Allow` of its 405 (in the order its routes add them, HEAD after
    // GET): actix-web does not list them itself.
    let resource = |path: &str, allow: &'static str| {
        web::resource(path)
            .wrap(middleware::from_fn(limit_body))
            .default_service(web::to(move |r: Req| method_not_allowed(r, allow)))
    };
    const GET: &str = "GET,HEAD";
    const POST: &str = "POST";
    cfg.app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
        .service(resource("/health", GET).route(get().to(health)))
        .service(resource("/metrics", GET).route(get().to(metrics)))
        .service(resource("/openapi.json", GET).route(get().to(openapi_doc)))
        .service(resource("/v1/auth/login", POST).route(web::post().to(login)))
        .service(resource("/v1/auth/refresh", POST).route(web::post().to(refresh)))
        .service(resource("/v1/auth/logout", POST).route(web::post().to(logout)))
        .service(resource("/v1/me", GET).route(get().to(me)))
        .service(
            resource("/v1/records", "GET,HEAD,POST")
                .route(get().to(list_records))
                .route(web::post().to(create_record)),
        )
        .service(
            resource("/v1/records/{id}", "GET,HEAD,DELETE")
                .route(get().to(get_record))
                .route(web::delete().to(delete_record)),
        )
        .service(resource("/v1/tenant/audit", GET).route(get().to(tenant_audit)))
        .service(
            resource("/v1/admin/tenants/{tenant}", "PUT,GET,HEAD")
                .route(web::put().to(put_tenant))
                .route(get().to(get_tenant)),
        )
        .service(
            resource("/v1/admin/tenants/{tenant}/limits", "PUT").route(web::put().to(put_limits)),
        )
        .service(resource("/v1/admin/tenants/{tenant}/bypass", POST).route(web::post().to(bypass)))
        .service(
            resource("/v1/admin/tenants/{tenant}/suspend", POST).route(web::post().to(suspend)),
        )
        .service(resource("/v1/admin/tenants/{tenant}/resume", POST).route(web::post().to(resume)))
        .service(resource("/v1/admin/audit/verify", GET).route(get().to(verify)))
        .default_service(web::to(not_found).wrap(middleware::from_fn(limit_body)));
}

/// Whether a request has a body: a `Content-Length` other than 0, or a `Transfer-Encoding`.
fn has_body(req: &ServiceRequest) -> bool {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(header::TRANSFER_ENCODING)
}

/// Holds every request's body to [`MAX_BODY_BYTES`] and [`BODY_READ_TIMEOUT`] before routing,
/// whether or not its route reads a body, as the axum server does: a declared
/// `Content-Length` over the limit is refused before any of the body is read; any other body
/// is read, at most to the limit and for at most the timeout (else 408), and handed on whole.
/// (What is left of a refused body, [`tenancy_actix::DrainBody`] throws away, within its own
/// bounds.)
async fn limit_body(
    mut req: ServiceRequest,
    next: middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let declared = req.headers().get(header::CONTENT_LENGTH);
    let refused = if endpoints::declares_too_large(declared.map(HeaderValue::as_bytes)) {
        BodyError::TooLarge
    } else if has_body(&req) {
        let (http_req, payload) = req.parts_mut();
        let read = web::Bytes::from_request(http_req, payload);
        match actix_web::rt::time::timeout(BODY_READ_TIMEOUT, read).await {
            Ok(Ok(bytes)) => {
                req.set_payload(bytes.into());
                return next
                    .call(req)
                    .await
                    .map(ServiceResponse::map_into_left_body);
            }
            Ok(Err(e)) => body_error(&e),
            Err(_) => BodyError::TimedOut,
        }
    } else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    let resp = match call(req.request()) {
        Ok(c) => reply(endpoints::body_refused(&c, refused).await),
        Err(missing) => missing.error_response(),
    };
    Ok(req.into_response(resp).map_into_right_body())
}

/// Sends an [`Answer`], with its audit note in the response extensions for the middleware.
fn reply(a: Answer) -> HttpResponse {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = HttpResponse::build(status);
    for (name, value) in a.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            resp.insert_header((n, v));
        }
    }
    let mut resp = resp.body(a.body);
    if let Some(note) = a.audit {
        resp.extensions_mut().insert(note);
    }
    resp
}

/// The [`Call`] of a request: the app from the app data, the origin the middleware
/// resolved, the query string and the content type.
struct Req(Call);

/// The app is missing from the app data: [`configure`] was mounted without it.
#[derive(Debug)]
struct MissingApp;

impl std::fmt::Display for MissingApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tenancy_server::App missing from the app data")
    }
}

impl ResponseError for MissingApp {
    fn error_response(&self) -> HttpResponse {
        tracing::error!("{self}");
        reply(Answer::problem(
            &Error::Internal(self.to_string().into()),
            None,
        ))
    }
}

impl FromRequest for Req {
    type Error = MissingApp;
    type Future = Ready<Result<Self, MissingApp>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(call(req).map(Self))
    }
}

/// The [`Call`] of a request: the app from the app data, the origin the middleware resolved,
/// the query string and the content type.
fn call(req: &HttpRequest) -> Result<Call, MissingApp> {
    let app = req.app_data::<web::Data<App>>().ok_or(MissingApp)?;
    let mut call = Call::new(app.get_ref().clone())
        .with_origin({
            let ext = req.extensions();
            endpoints::origin(ext.get::<RequestMeta>())
        })
        .with_query(req.query_string());
    if let Some(ct) = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        call = call.with_content_type(ct);
    }
    Ok(call)
}

/// The request body as read under the 64 KiB limit.
type RawBody = Result<web::Bytes, actix_web::Error>;

fn body(b: &RawBody) -> endpoints::Body<'_> {
    b.as_deref().map_err(body_error)
}

/// Why actix-web could not read a body: over the payload limit, or unreadable.
fn body_error(e: &actix_web::Error) -> BodyError {
    if e.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE {
        BodyError::TooLarge
    } else {
        BodyError::Unreadable
    }
}

async fn not_found(Req(c): Req) -> HttpResponse {
    reply(endpoints::not_found(&c))
}

/// 405, with the resource's methods in `Allow` (RFC 9110 §15.5.6).
async fn method_not_allowed(Req(c): Req, allow: &'static str) -> HttpResponse {
    let mut a = endpoints::method_not_allowed(&c);
    a.headers.push(("allow", allow.to_owned()));
    reply(a)
}

async fn health(Req(c): Req) -> HttpResponse {
    reply(endpoints::health(&c))
}

async fn metrics(Req(c): Req) -> HttpResponse {
    reply(endpoints::metrics(&c))
}

async fn openapi_doc() -> HttpResponse {
    reply(endpoints::openapi())
}

async fn login(Req(c): Req, b: RawBody) -> HttpResponse {
    reply(endpoints::login(&c, body(&b)).await)
}

async fn refresh(Req(c): Req, b: RawBody) -> HttpResponse {
    reply(endpoints::refresh(&c, body(&b)).await)
}

async fn logout(Req(c): Req, Tenant(ctx): Tenant, req: HttpRequest, b: RawBody) -> HttpResponse {
    // The verified claims, as the tenancy middleware keeps them.
    let claims = req
        .extensions()
        .get::<RequestMeta>()
        .and_then(|m| m.claims().cloned());
    reply(endpoints::logout(&c, &ctx, claims.as_deref(), body(&b)).await)
}

async fn me(Tenant(ctx): Tenant) -> HttpResponse {
    reply(endpoints::me(&ctx))
}

async fn list_records(Req(c): Req, Tenant(ctx): Tenant) -> HttpResponse {
    reply(endpoints::list_records(&c, &ctx).await)
}

async fn create_record(Req(c): Req, Tenant(ctx): Tenant, b: RawBody) -> HttpResponse {
    reply(endpoints::create_record(&c, &ctx, body(&b)).await)
}

async fn get_record(Req(c): Req, Tenant(ctx): Tenant, id: web::Path<String>) -> HttpResponse {
    reply(endpoints::get_record(&c, &ctx, &id).await)
}

async fn delete_record(Req(c): Req, Tenant(ctx): Tenant, id: web::Path<String>) -> HttpResponse {
    reply(endpoints::delete_record(&c, &ctx, &id).await)
}

async fn tenant_audit(Req(c): Req, Tenant(ctx): Tenant) -> HttpResponse {
    reply(endpoints::tenant_audit(&c, &ctx).await)
}

type TenantPath = web::Path<String>;

async fn put_tenant(Req(c): Req, Tenant(ctx): Tenant, t: TenantPath, b: RawBody) -> HttpResponse {
    reply(endpoints::put_tenant(&c, &ctx, &t, body(&b)).await)
}

async fn get_tenant(Req(c): Req, Tenant(ctx): Tenant, t: TenantPath) -> HttpResponse {
    reply(endpoints::get_tenant(&c, &ctx, &t).await)
}

async fn put_limits(Req(c): Req, Tenant(ctx): Tenant, t: TenantPath, b: RawBody) -> HttpResponse {
    reply(endpoints::put_limits(&c, &ctx, &t, body(&b)).await)
}

async fn bypass(Req(c): Req, Tenant(ctx): Tenant, t: TenantPath, b: RawBody) -> HttpResponse {
    reply(endpoints::bypass(&c, &ctx, &t, body(&b)).await)
}

async fn suspend(Req(c): Req, Tenant(ctx): Tenant, t: TenantPath, b: RawBody) -> HttpResponse {
    reply(endpoints::set_status(&c, &ctx, &t, true, body(&b)).await)
}

async fn resume(Req(c): Req, Tenant(ctx): Tenant, t: TenantPath, b: RawBody) -> HttpResponse {
    reply(endpoints::set_status(&c, &ctx, &t, false, body(&b)).await)
}

async fn verify(Req(c): Req, Tenant(ctx): Tenant) -> HttpResponse {
    reply(endpoints::verify_audit(&c, &ctx).await)
}
