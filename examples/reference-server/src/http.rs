//! The axum routes: each reads the request into a [`Call`], calls the framework-free
//! endpoint in [`web`], and sends its [`Answer`].
//!
//! [`router`] returns the whole API with the tenancy stack (request id, authentication,
//! tenant resolution, rate limits, audit) and the body limits (64 KiB, read within
//! [`BODY_READ_TIMEOUT`]) in front of it. Served as below, by `axum::serve`, nothing bounds
//! how long a client may take to send a request's head: [`serve`](crate::serve) does
//! ([`Config::idle_timeout`](crate::Config::idle_timeout)); serve the router this way only
//! behind a proxy that bounds it.
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
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Path, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, header};
use tenancy_http::RequestMeta;
use tenancy_tower::{DrainBodyLayer, TenancyLayer, Tenant};

use crate::app::{App, BODY_READ_TIMEOUT, MAX_BODY_BYTES};
use crate::web::{self, Answer, BodyError, Call};

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = Response::new(axum::body::Body::from(self.body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        for (name, value) in self.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                h.insert(n, v);
            }
        }
        if let Some(note) = self.audit {
            resp.extensions_mut().insert(note);
        }
        resp
    }
}

impl FromRequestParts<App> for Call {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        app: &App,
    ) -> Result<Self, Self::Rejection> {
        let mut call = Call::new(app.clone())
            .with_origin(web::origin(parts.extensions.get::<RequestMeta>()))
            .with_query(parts.uri.query().unwrap_or_default());
        if let Some(ct) = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        {
            call = call.with_content_type(ct);
        }
        Ok(call)
    }
}

/// The request body as read under [`DefaultBodyLimit`].
type RawBody = Result<Bytes, BytesRejection>;

fn body(b: &RawBody) -> web::Body<'_> {
    match b {
        Ok(bytes) => Ok(bytes),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Unreadable),
    }
}

/// The verified claims of the request's token, as the tenancy layer keeps them
/// ([`RequestMeta::claims`]); `None` on a public route.
struct VerifiedClaims(Option<std::sync::Arc<tenancy_core::Claims>>);

impl FromRequestParts<App> for VerifiedClaims {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &App,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<RequestMeta>()
                .and_then(|m| m.claims().cloned()),
        ))
    }
}

/// A path parameter, percent-decoded. One whose bytes are not UTF-8 once decoded is handed on
/// with U+FFFD in their place, as actix-web hands it to its handlers
/// ([`decode_segment`](tenancy_http::routes::decode_segment)): the endpoint then answers as
/// for any value of no resource, after the same permission checks, on both servers.
struct Param(String);

impl FromRequestParts<App> for Param {
    type Rejection = Answer;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        app: &App,
    ) -> Result<Self, Answer> {
        if let Ok(Path(p)) = Path::<String>::from_request_parts(parts, app).await {
            return Ok(Self(p));
        }
        // Every route here has one parameter: its segment of the path, by its place in the
        // route template.
        let raw = parts.extensions.get::<MatchedPath>().and_then(|m| {
            let at = m.as_str().split('/').position(|s| s.starts_with('{'))?;
            parts.uri.path().split('/').nth(at)
        });
        match raw {
            Some(raw) => Ok(Self(tenancy_http::routes::decode_segment(raw).into_owned())),
            None => {
                let Ok(c) = Call::from_request_parts(parts, app).await;
                Err(web::not_found(&c))
            }
        }
    }
}

/// The whole API with the tenancy stack and the body limit.
pub fn router(app: App) -> Router {
    let tenancy = app.tenancy().clone();
    let api = Router::new()
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
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            limit_body,
        ))
        .layer(TenancyLayer::new(tenancy))
        // Outside everything: what is left of a refused body is read before the answer.
        .layer(DrainBodyLayer::default())
        .with_state(app);
    // Before routing, escaped unreserved characters are decoded (`/v1/r%65cords` is
    // `/v1/records`, RFC 3986 §6.2.2.2), so that axum routes a path as actix-web, which
    // decodes before matching, does.
    Router::new().fallback_service(tower::util::MapRequest::new(api, decode_unreserved))
}

/// The request with `%XX` escapes of unreserved characters in its path decoded
/// ([`tenancy_http::routes::decode_unreserved`]); the query stays as sent.
fn decode_unreserved<B>(mut req: http::Request<B>) -> http::Request<B> {
    let std::borrow::Cow::Owned(path) = tenancy_http::routes::decode_unreserved(req.uri().path())
    else {
        return req;
    };
    let with_query = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = http::uri::PathAndQuery::try_from(with_query) {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// Holds every request's body to [`MAX_BODY_BYTES`] and [`BODY_READ_TIMEOUT`] before routing,
/// whether or not its route reads a body: a declared `Content-Length` over the limit is
/// refused before any of the body is read; any other body is read, at most to the limit and
/// for at most the timeout (else 408), and handed on whole. (What is left of a refused body,
/// [`DrainBodyLayer`] throws away, within its own bounds.) Inside the tenancy layer, so that
/// an unauthenticated request is refused before its body is read.
async fn limit_body(State(app): State<App>, req: axum::extract::Request, next: Next) -> Response {
    use http_body_util::{BodyExt as _, LengthLimitError, Limited};
    let (mut parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .map(HeaderValue::as_bytes);
    let refused = if web::declares_too_large(declared) {
        BodyError::TooLarge
    } else if axum::body::HttpBody::is_end_stream(&body) {
        return next
            .run(axum::extract::Request::from_parts(parts, body))
            .await;
    } else {
        let read = Limited::new(body, MAX_BODY_BYTES).collect();
        match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
            Ok(Ok(read)) => {
                let body = axum::body::Body::from(read.to_bytes());
                return next
                    .run(axum::extract::Request::from_parts(parts, body))
                    .await;
            }
            Ok(Err(e)) if e.is::<LengthLimitError>() => BodyError::TooLarge,
            Ok(Err(_)) => BodyError::Unreadable,
            Err(_) => BodyError::TimedOut,
        }
    };
    // The request's `Call` only for a refusal: a request that passes pays for none.
    let Ok(c) = Call::from_request_parts(&mut parts, &app).await;
    web::body_refused(&c, refused).await.into_response()
}

async fn not_found(c: Call) -> Answer {
    web::not_found(&c)
}

async fn method_not_allowed(c: Call) -> Answer {
    web::method_not_allowed(&c)
}

async fn health(c: Call) -> Answer {
    web::health(&c)
}

async fn metrics(c: Call) -> Answer {
    web::metrics(&c)
}

async fn openapi_doc() -> Answer {
    web::openapi()
}

async fn login(c: Call, b: RawBody) -> Answer {
    web::login(&c, body(&b)).await
}

async fn refresh(c: Call, b: RawBody) -> Answer {
    web::refresh(&c, body(&b)).await
}

async fn logout(
    c: Call,
    Tenant(ctx): Tenant,
    VerifiedClaims(v): VerifiedClaims,
    b: RawBody,
) -> Answer {
    web::logout(&c, &ctx, v.as_deref(), body(&b)).await
}

async fn me(Tenant(ctx): Tenant) -> Answer {
    web::me(&ctx)
}

async fn list_records(c: Call, Tenant(ctx): Tenant) -> Answer {
    web::list_records(&c, &ctx).await
}

async fn create_record(c: Call, Tenant(ctx): Tenant, b: RawBody) -> Answer {
    web::create_record(&c, &ctx, body(&b)).await
}

async fn get_record(c: Call, Tenant(ctx): Tenant, Param(id): Param) -> Answer {
    web::get_record(&c, &ctx, &id).await
}

async fn delete_record(c: Call, Tenant(ctx): Tenant, Param(id): Param) -> Answer {
    web::delete_record(&c, &ctx, &id).await
}

async fn tenant_audit(c: Call, Tenant(ctx): Tenant) -> Answer {
    web::tenant_audit(&c, &ctx).await
}

async fn put_tenant(c: Call, Tenant(ctx): Tenant, Param(t): Param, b: RawBody) -> Answer {
    web::put_tenant(&c, &ctx, &t, body(&b)).await
}

async fn get_tenant(c: Call, Tenant(ctx): Tenant, Param(t): Param) -> Answer {
    web::get_tenant(&c, &ctx, &t).await
}

async fn put_limits(c: Call, Tenant(ctx): Tenant, Param(t): Param, b: RawBody) -> Answer {
    web::put_limits(&c, &ctx, &t, body(&b)).await
}

async fn bypass(c: Call, Tenant(ctx): Tenant, Param(t): Param, b: RawBody) -> Answer {
    web::bypass(&c, &ctx, &t, body(&b)).await
}

async fn suspend(c: Call, Tenant(ctx): Tenant, Param(t): Param, b: RawBody) -> Answer {
    web::set_status(&c, &ctx, &t, true, body(&b)).await
}

async fn resume(c: Call, Tenant(ctx): Tenant, Param(t): Param, b: RawBody) -> Answer {
    web::set_status(&c, &ctx, &t, false, body(&b)).await
}

async fn verify(c: Call, Tenant(ctx): Tenant) -> Answer {
    web::verify_audit(&c, &ctx).await
}
