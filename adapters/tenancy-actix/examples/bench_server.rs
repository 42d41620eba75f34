//! The server the `wrk` benchmark hits: one framework, one variant, one port.
//!
//! ```text
//! cargo run --release -p tenancy-actix --example bench_server -- <axum|axum-percore|actix> <bare|busy<N>|full|full-nocache|full-noaudit> <port>
//! ```
//!
//! - `bare`: `GET /v1/records` answers `ok`, nothing else.
//! - `full`: the same handler behind the whole tenancy stack: HS256 bearer token verified by
//!   `tenancy_auth::JwtVerifier` (its verification cache on, as by default), tenant resolved
//!   from an in-memory directory, in-memory limiter with a quota too high to deny, and the
//!   route audited through `tenancy_audit::AuditDispatcher` (enqueue on the request path; the
//!   writer hashes and stores each event into its in-memory store on its own thread).
//! - `full-nocache`: as `full`, with the verifier's cache off, so every request verifies
//!   the HS256 signature and decodes the claims.
//! - `full-noaudit`: as `full`, with the route not audited (no event per request), to show
//!   what the audit pipeline costs.
//! - `busy<N>` (`busy4`, `busy8`, ...): `bare` whose handler first keeps its thread busy for
//!   N µs: what N µs of any work per request costs the framework on this machine, the scale
//!   against which to read what the stack's own CPU time per request costs it.
//!
//! Both frameworks serve with two worker threads: axum on tokio's multi-threaded runtime (its
//! usual setup), or with `axum-percore` on one single-threaded runtime per thread, each with
//! its own `SO_REUSEPORT` listener (how actix-web serves). The audit writer runs where both example
//! servers run it: on a thread of its own (`AuditDispatcherBuilder::start_on_own_thread`),
//! lingering 2 ms (the default) after each append for events to gather. The first line
//! printed is a bearer token for the `full` variants.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use tenancy_audit::AuditDispatcher;
use tenancy_audit::store::MemoryAuditStore;
use tenancy_auth::{JwtVerifier, VerifyKey};
use tenancy_core::memory::{MemoryRateLimiter, MemoryTenantDirectory};
use tenancy_core::{
    AuditSink, QuotaOverrides, TenantDirectory, TenantId, TenantSettings, TierName,
};
use tenancy_http::{RouteRule, Tenancy};

const SECRET: &[u8] = b"bench-secret-of-at-least-thirty-two-bytes";
const ISS: &str = "https://id.example";
const AUD: &str = "api";
const WORKERS: usize = 2;

fn token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let claims = serde_json::json!({
        "iss": ISS, "aud": AUD, "sub": "bob", "iat": now, "nbf": now, "exp": now + 86_400,
        "jti": "bench", "tenant_id": "acme", "user_id": "bob", "user_role": "user",
        "permissions": ["records:read"],
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap_or_else(|e| fail(&format!("cannot sign the bench token: {e}")))
}

fn fail(msg: &str) -> ! {
    eprintln!("bench_server: {msg}");
    std::process::exit(2)
}

/// The audit dispatcher over an in-memory store, its writer on a thread of its own, as
/// `tenancy-server` and `tenancy-actix-server` start it.
async fn audit_dispatcher() -> AuditDispatcher {
    AuditDispatcher::builder(Arc::new(MemoryAuditStore::new()))
        .start_on_own_thread()
        .await
        .unwrap_or_else(|e| fail(&format!("audit dispatcher: {e}")))
}

#[derive(Debug, Clone, Copy)]
struct Full {
    cache: bool,
    audited: bool,
}

async fn tenancy(full: Full, audit: Arc<dyn AuditSink>) -> Tenancy {
    let key =
        VerifyKey::hmac(SECRET, Algorithm::HS256).unwrap_or_else(|e| fail(&format!("key: {e}")));
    let mut verifier = JwtVerifier::builder().issuer(ISS, key).audience(AUD);
    if !full.cache {
        verifier = verifier.cache_capacity(0);
    }
    let verifier = verifier
        .build()
        .unwrap_or_else(|e| fail(&format!("verifier: {e}")));
    let directory = MemoryTenantDirectory::new();
    let mut acme =
        TenantSettings::new(TierName::parse("standard").unwrap_or_else(|e| fail(&e.to_string())));
    acme.overrides = QuotaOverrides {
        tenant_per_hour: Some(1_000_000_000_000),
        tenant_burst: Some(1_000_000_000),
        user_per_hour: Some(1_000_000_000_000),
        user_burst: Some(1_000_000_000),
    };
    let id = TenantId::parse("acme").unwrap_or_else(|e| fail(&e.to_string()));
    directory
        .put(&id, acme)
        .await
        .unwrap_or_else(|e| fail(&e.to_string()));
    let mut rule = RouteRule::new("/v1/records")
        .unwrap_or_else(|e| fail(&e.to_string()))
        .method("GET");
    if full.audited {
        rule = rule
            .audit("records.list")
            .unwrap_or_else(|e| fail(&e.to_string()));
    }
    Tenancy::builder(
        Arc::new(verifier),
        Arc::new(directory),
        Arc::new(MemoryRateLimiter::new()),
        audit,
    )
    .with_route(rule)
    .build()
    .unwrap_or_else(|e| fail(&e.to_string()))
}

/// Keeps the thread busy for `busy` (the `busy<N>` variants' handler work).
fn spend(busy: Duration) {
    if busy.is_zero() {
        return;
    }
    let start = Instant::now();
    while start.elapsed() < busy {
        std::hint::spin_loop();
    }
}

/// The axum app: the handler, behind the tenancy stack for the `full` variants.
async fn axum_app(full: Option<Full>, busy: Duration) -> axum::Router {
    let handler = move || async move {
        spend(busy);
        "ok"
    };
    let app = axum::Router::new().route("/v1/records", axum::routing::get(handler));
    match full {
        Some(full) => {
            let t = tenancy(full, Arc::new(audit_dispatcher().await)).await;
            app.layer(tenancy_tower::TenancyLayer::new(t))
        }
        None => app,
    }
}

async fn serve_axum_on(listener: tokio::net::TcpListener, app: axum::Router) {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .unwrap_or_else(|e| fail(&format!("serve: {e}")));
}

fn serve_axum(full: Option<Full>, busy: Duration, port: u16) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("runtime: {e}")));
    rt.block_on(async move {
        let app = axum_app(full, busy).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| fail(&format!("bind: {e}")));
        serve_axum_on(listener, app).await;
    });
}

/// axum as actix-web runs: one single-threaded runtime per worker thread, each accepting on
/// its own `SO_REUSEPORT` listener, so a connection stays on the thread that accepted it. The
/// main thread's runtime drives the audit writer's timers, as actix-web's does.
fn serve_axum_per_core(full: Option<Full>, busy: Duration, port: u16) {
    let current_thread = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| fail(&format!("runtime: {e}")))
    };
    let main = current_thread();
    let app = main.block_on(axum_app(full, busy));
    for _ in 0..WORKERS {
        let app = app.clone();
        let rt = current_thread();
        std::thread::spawn(move || {
            rt.block_on(async move {
                let listener = tokio::net::TcpSocket::new_v4()
                    .and_then(|s| {
                        s.set_reuseport(true)?;
                        s.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
                        s.listen(1024)
                    })
                    .unwrap_or_else(|e| fail(&format!("bind: {e}")));
                serve_axum_on(listener, app).await;
            });
        });
    }
    main.block_on(std::future::pending::<()>());
}

fn serve_actix(full: Option<Full>, busy: Duration, port: u16) {
    use actix_web::{App, HttpResponse, HttpServer, web};
    actix_web::rt::System::new().block_on(async move {
        let handler = move || async move {
            spend(busy);
            HttpResponse::Ok().body("ok")
        };
        let result = match full {
            None => {
                HttpServer::new(move || App::new().route("/v1/records", web::get().to(handler)))
                    .workers(WORKERS)
                    .bind(("127.0.0.1", port))
                    .unwrap_or_else(|e| fail(&format!("bind: {e}")))
                    .run()
                    .await
            }
            Some(full) => {
                let t = tenancy(full, Arc::new(audit_dispatcher().await)).await;
                HttpServer::new(move || {
                    App::new()
                        .wrap(tenancy_actix::TenancyMiddleware::new(t.clone()))
                        .route("/v1/records", web::get().to(handler))
                })
                .workers(WORKERS)
                .bind(("127.0.0.1", port))
                .unwrap_or_else(|e| fail(&format!("bind: {e}")))
                .run()
                .await
            }
        };
        result.unwrap_or_else(|e| fail(&format!("serve: {e}")));
    });
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [framework, variant, port] = args.as_slice() else {
        fail(
            "usage: bench_server <axum|axum-percore|actix> <bare|busy<N>|full|full-nocache|full-noaudit> <port>",
        );
    };
    let mut busy = Duration::ZERO;
    let full = match variant.as_str() {
        "bare" => None,
        v if v.starts_with("busy") => {
            let micros = v
                .strip_prefix("busy")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| fail("busy<N>: N is a whole number of microseconds"));
            busy = Duration::from_micros(micros);
            None
        }
        "full" => Some(Full {
            cache: true,
            audited: true,
        }),
        "full-nocache" => Some(Full {
            cache: false,
            audited: true,
        }),
        "full-noaudit" => Some(Full {
            cache: true,
            audited: false,
        }),
        other => fail(&format!("unknown variant `{other}`")),
    };
    let port: u16 = port
        .parse()
        .unwrap_or_else(|_| fail("the port must be a number"));
    println!("{}", token());
    match framework.as_str() {
        "axum" => serve_axum(full, busy, port),
        "actix" => serve_actix(full, busy, port),
        "axum-percore" => serve_axum_per_core(full, busy, port),
        other => fail(&format!("unknown framework `{other}`")),
    }
}
