//! `tenancy_tower::DrainBodyLayer` and `tenancy_actix::DrainBody`, each outside the tenancy
//! stack of its framework, which refuses a request without a token before reading its body:
//! both read the rest of the body (counted here) within the bounds, keep the connection when
//! they could, and close it past the bounds, alike.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::{HttpResponse, test, web};
use tenancy_actix::{DrainBody, DrainLimits, Tenancy, TenancyMiddleware};
use tenancy_core::memory::{MemoryAuditSink, MemoryRateLimiter, MemoryTenantDirectory};
use tenancy_tests::body::CountedChunks;
use tenancy_tower::{DrainBodyLayer, TenancyLayer};
use tower::ServiceExt as _;

fn tenancy() -> Tenancy {
    let verifier = tenancy_auth::JwtVerifier::builder()
        .issuer(
            "https://id.example",
            tenancy_auth::VerifyKey::hmac(
                b"drain-test-secret-of-at-least-32-bytes",
                tenancy_auth::Algorithm::HS256,
            )
            .unwrap(),
        )
        .audience("api")
        .build()
        .unwrap();
    Tenancy::builder(
        Arc::new(verifier),
        Arc::new(MemoryTenantDirectory::new()),
        Arc::new(MemoryRateLimiter::new()),
        Arc::new(MemoryAuditSink::new()),
    )
    .build()
    .unwrap()
}

/// What a refusal came to: whether the answer keeps the connection, its status, and the
/// bytes of the body read.
type Seen = (bool, u16, usize);

/// A body of `count` chunks of `len` bytes (then the end, or a stall), declared `declared`
/// bytes long, sent without a token to `POST /v1/upload` on axum and on actix-web.
async fn both(
    limits: DrainLimits,
    (len, count, stall): (usize, usize, bool),
    declared: &str,
) -> [Seen; 2] {
    // axum
    let app = axum::Router::new()
        .route("/v1/upload", axum::routing::post(|| async { "stored" }))
        .layer(TenancyLayer::new(tenancy()))
        .layer(DrainBodyLayer::new(limits));
    let (chunks, read) = CountedChunks::<PayloadError>::new(len, count, stall);
    let req = http::Request::post("/v1/upload")
        .header("content-length", declared)
        .body(axum::body::Body::from_stream(chunks))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let closes = resp
        .headers()
        .get("connection")
        .is_some_and(|v| v == "close");
    let axum = (!closes, resp.status().as_u16(), read.load(Ordering::SeqCst));

    // actix-web
    let app = test::init_service(
        actix_web::App::new()
            .wrap(TenancyMiddleware::new(tenancy()))
            .wrap(DrainBody::new(limits))
            .route("/v1/upload", web::post().to(HttpResponse::Ok)),
    )
    .await;
    let (chunks, read) = CountedChunks::<PayloadError>::new(len, count, stall);
    let stream: Pin<Box<dyn futures_core::Stream<Item = _>>> = Box::pin(chunks);
    let mut req = actix_http::Request::with_payload(Payload::from(stream));
    let head = req.head_mut();
    head.method = actix_web::http::Method::POST;
    head.uri = "/v1/upload".parse().unwrap();
    head.headers.insert(
        actix_web::http::header::CONTENT_LENGTH,
        actix_web::http::header::HeaderValue::from_str(declared).unwrap(),
    );
    let resp = test::call_service(&app, req).await;
    let actix = (
        resp.response().keep_alive(),
        resp.status().as_u16(),
        read.load(Ordering::SeqCst),
    );
    [axum, actix]
}

#[actix_web::test]
async fn the_rest_of_a_refused_body_is_read_and_the_connection_kept() {
    let seen = both(DrainLimits::default(), (10 * 1024, 10, false), "102400").await;
    assert_eq!(seen, [(true, 401, 100 * 1024); 2]);
}

#[actix_web::test]
async fn past_the_bytes_the_answer_closes_the_connection() {
    // A declared length within the bound that the body then overruns (1.5 MiB).
    for (keep, status, n) in both(DrainLimits::default(), (8 * 1024, 192, false), "1048576").await {
        assert_eq!((keep, status), (false, 401));
        assert!(n > 1 << 20 && n <= (1 << 20) + 8 * 1024, "{n}");
    }
}

#[actix_web::test]
async fn a_declared_length_past_the_bytes_is_not_read() {
    let seen = both(DrainLimits::default(), (8 * 1024, 4, false), "2000000").await;
    assert_eq!(seen, [(false, 401, 0); 2]);
}

#[actix_web::test]
async fn a_stalled_body_is_given_up_at_the_deadline() {
    let limits = DrainLimits {
        time: Duration::from_millis(100),
        ..DrainLimits::default()
    };
    let started = std::time::Instant::now();
    let seen = both(limits, (1024, 3, true), "10000").await;
    assert!(started.elapsed() >= 2 * limits.time);
    assert_eq!(seen, [(false, 401, 3 * 1024); 2]);
}
