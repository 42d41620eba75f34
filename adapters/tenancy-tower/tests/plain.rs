//! `TenancyLayer` on a plain tower service, without axum: `http::Request<String>` in, a
//! response body of this file's own out, driven with `tower::ServiceExt::oneshot`, as a hyper
//! or tonic server would drive it.
//!
//! - The stack answers every case exactly as the five layers stacked one by one do (same
//!   status, headers and body), so the single-service stack is the documented order.
//! - The `tenancy.request` span carries the request id, method, route and (once the token is
//!   verified) the tenant, and the handler runs inside it.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use jsonwebtoken::{EncodingKey, Header as JwtHeader};
use tenancy_auth::{Algorithm, JwtVerifier, VerifyKey};
use tenancy_core::memory::{MemoryAuditSink, MemoryRateLimiter, MemoryTenantDirectory};
use tenancy_core::{
    Claims, Clock, ManualClock, QuotaOverrides, RequestId, TenantContext, TenantDirectory,
    TenantId, TenantSettings, TenantStatus, TierName,
};
use tenancy_http::{RequestMeta, Resolved, Tenancy};
use tenancy_tower::{
    AuditLayer, AuthenticateLayer, PeerAddr, RateLimitLayer, ResolveTenantLayer, SetRequestIdLayer,
    TenancyLayer,
};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

const SECRET: &[u8] = b"plain-test-secret-of-at-least-32-bytes";

/// A response body that is not axum's: the layers only need `From<Bytes>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Text(Bytes);

impl From<Bytes> for Text {
    fn from(b: Bytes) -> Self {
        Self(b)
    }
}

type Svc = BoxCloneService<http::Request<String>, http::Response<Text>, Infallible>;

fn token(clock: &ManualClock, tenant: &str, exp_in: i64) -> String {
    let now = (clock.now_nanos() / 1_000_000_000) as i64;
    let claims = serde_json::json!({
        "iss": "https://id.example", "aud": "api", "sub": "u", "exp": now + exp_in,
        "tenant_id": tenant, "user_id": "u", "user_role": "user", "permissions": [],
    });
    jsonwebtoken::encode(
        &JwtHeader::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

async fn tenancy(clock: &ManualClock) -> Tenancy {
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let verifier = JwtVerifier::builder()
        .issuer(
            "https://id.example",
            VerifyKey::hmac(SECRET, Algorithm::HS256).unwrap(),
        )
        .audience("api")
        .clock(shared.clone())
        .build()
        .unwrap();
    let directory = MemoryTenantDirectory::new();
    let mut settings = TenantSettings::new(TierName::parse("standard").unwrap());
    settings.overrides = QuotaOverrides {
        // Four of acme's requests are counted before the last one (the tenant-header mismatch
        // among them); the fifth is refused.
        user_per_hour: Some(4),
        user_burst: Some(4),
        ..QuotaOverrides::default()
    };
    directory
        .put(&TenantId::parse("acme").unwrap(), settings.clone())
        .await
        .unwrap();
    settings.status = TenantStatus::Suspended;
    directory
        .put(&TenantId::parse("frozen").unwrap(), settings)
        .await
        .unwrap();
    Tenancy::builder(
        Arc::new(verifier),
        Arc::new(directory),
        Arc::new(MemoryRateLimiter::with_clock(shared.clone())),
        Arc::new(MemoryAuditSink::new()),
    )
    .with_clock(shared)
    .with_public_route("/health")
    .unwrap()
    .with_route(common::items_rule())
    .build()
    .unwrap()
}

/// The handler: answers with the tenant it was given, and logs one event (so a test
/// subscriber can see which span the handler runs in). The layers add one value to the
/// extensions, the request's meta, and it carries the claims and the context.
async fn handler(req: http::Request<String>) -> Result<http::Response<Text>, Infallible> {
    let meta = req.extensions().get::<RequestMeta>();
    let ext = req.extensions();
    assert!(ext.get::<TenantContext>().is_none() && ext.get::<Claims>().is_none());
    assert!(ext.get::<Resolved>().is_none() && ext.get::<RequestId>().is_none());
    let context = meta.and_then(RequestMeta::context);
    if let Some(c) = context {
        let claims = meta
            .and_then(RequestMeta::claims)
            .expect("claims beside the context");
        assert_eq!(claims.tenant_id, c.tenant);
    }
    let tenant = context.map(|c| c.tenant.to_string()).unwrap_or_default();
    tracing::info!(handled = req.uri().path(), "handler ran");
    Ok(http::Response::new(Text(Bytes::from(tenant))))
}

fn stacked(t: Tenancy) -> Svc {
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(TenancyLayer::new(t))
            .service_fn(handler),
    )
}

fn layered(t: Tenancy) -> Svc {
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(t.clone()))
            .layer(AuthenticateLayer::new(t.clone()))
            .layer(ResolveTenantLayer::new(t.clone()))
            .layer(RateLimitLayer::new(t.clone()))
            .layer(AuditLayer::new(t))
            .service_fn(handler),
    )
}

fn request(n: usize, path: &str, headers: &[(&str, &str)]) -> http::Request<String> {
    let mut b = http::Request::builder()
        .uri(path)
        .header("x-request-id", format!("plain-{n}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut req = b.body(String::new()).unwrap();
    req.extensions_mut()
        .insert(PeerAddr("192.0.2.7:40000".parse().unwrap()));
    req
}

/// Status, headers and body, comparable across services.
fn shape(resp: http::Response<Text>) -> (u16, Vec<(String, String)>, Bytes) {
    let mut headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    (resp.status().as_u16(), headers, resp.into_body().0)
}

/// Every case through `svc`, on a fresh clock and backends each time.
async fn run(make: fn(Tenancy) -> Svc) -> Vec<(u16, Vec<(String, String)>, Bytes)> {
    let clock = ManualClock::new();
    let svc = make(tenancy(&clock).await);
    let acme = format!("Bearer {}", token(&clock, "acme", 600));
    let globex = format!("Bearer {}", token(&clock, "globex", 600));
    let frozen = format!("Bearer {}", token(&clock, "frozen", 600));
    let expired = format!("Bearer {}", token(&clock, "acme", -600));
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("/health", vec![]),
        ("/items/1", vec![]),
        ("/items/1", vec![("authorization", "Basic abc")]),
        ("/items/1", vec![("authorization", &expired)]),
        (
            "/items/1",
            vec![("authorization", &acme), ("authorization", &acme)],
        ),
        ("/items/1", vec![("authorization", &globex)]),
        ("/items/1", vec![("authorization", &frozen)]),
        (
            "/items/1",
            vec![("authorization", &acme), ("x-tenant-id", "globex")],
        ),
        (
            "/items/1",
            vec![("authorization", &acme), ("x-tenant-id", "acme")],
        ),
        ("/items/2", vec![("authorization", &acme)]),
        ("/other", vec![("authorization", &acme)]),
        ("/items/3", vec![("authorization", &acme)]),
    ];
    let mut out = Vec::new();
    for (n, (path, headers)) in cases.iter().enumerate() {
        let resp = svc
            .clone()
            .oneshot(request(n, path, headers))
            .await
            .unwrap();
        out.push(shape(resp));
    }
    out
}

/// Both tests log from the same callsites. tracing caches each callsite's interest
/// globally: a callsite first met on a thread without a subscriber while the span test is
/// installing its own can be left disabled for that test. The tests take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_stack_answers_as_the_layers_stacked_one_by_one() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (stacked, layered) = runtime().block_on(async { (run(stacked).await, run(layered).await) });
    assert_eq!(stacked, layered);
    let statuses: Vec<u16> = stacked.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(
        statuses,
        [200, 401, 401, 401, 401, 403, 403, 403, 200, 200, 200, 429]
    );
    for (i, (status, headers, body)) in stacked.iter().enumerate() {
        let has = |name: &str| headers.iter().any(|(k, _)| k == name);
        let request_id = headers.iter().find(|(k, _)| k == "x-request-id");
        assert_eq!(
            request_id.map(|(_, v)| v.as_str()),
            Some(format!("plain-{i}").as_str()),
            "case {i}"
        );
        if *status == 200 && i > 0 {
            assert_eq!(body.as_ref(), b"acme", "case {i}");
            for name in [
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
                "ratelimit-policy",
                "ratelimit",
            ] {
                assert!(has(name), "case {i}: {name}");
            }
        }
        if *status == 401 {
            assert!(has("www-authenticate"), "case {i}");
        }
    }
    // The tenant-header mismatch is refused but limited like any request of acme's user.
    let mismatch = &stacked[7];
    assert_eq!(mismatch.0, 403);
    assert!(
        mismatch
            .1
            .iter()
            .any(|(k, v)| k == "x-ratelimit-remaining" && v == "3"),
        "{mismatch:?}"
    );
    let limited = &stacked[11];
    assert!(
        limited
            .1
            .iter()
            .any(|(k, v)| k == "retry-after" && v != "0")
    );
}

type SpanFields = (String, HashMap<String, String>);

#[derive(Debug, Default)]
struct Spans {
    next: AtomicU64,
    /// Every span: its name and fields (as recorded so far).
    spans: Mutex<HashMap<u64, SpanFields>>,
    /// The spans entered on this (single) thread, innermost last.
    entered: Mutex<Vec<u64>>,
    /// For each handler event: the innermost span entered when it was logged.
    handler_spans: Mutex<Vec<Option<u64>>>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// A subscriber that keeps every span's name and fields, and the span each handler event
/// was logged in.
#[derive(Debug, Clone, Default)]
struct Capture(Arc<Spans>);

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.0.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0
            .spans
            .lock()
            .unwrap()
            .insert(id, (attrs.metadata().name().to_owned(), fields));
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some((_, fields)) = self.0.spans.lock().unwrap().get_mut(&span.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        if fields.contains_key("handled") {
            let current = self.0.entered.lock().unwrap().last().copied();
            self.0.handler_spans.lock().unwrap().push(current);
        }
    }

    fn enter(&self, span: &Id) {
        self.0.entered.lock().unwrap().push(span.into_u64());
    }

    fn exit(&self, span: &Id) {
        let mut entered = self.0.entered.lock().unwrap();
        if let Some(i) = entered.iter().rposition(|s| *s == span.into_u64()) {
            entered.remove(i);
        }
    }
}

#[test]
fn the_request_span_carries_request_id_and_tenant_and_wraps_the_handler() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let capture = Capture::default();
    let rt = runtime();
    let _guard = tracing::subscriber::set_default(capture.clone());
    // Callsites met before this subscriber existed are asked again.
    tracing::callsite::rebuild_interest_cache();
    rt.block_on(async {
        let clock = ManualClock::new();
        let svc = stacked(tenancy(&clock).await);
        let acme = format!("Bearer {}", token(&clock, "acme", 600));
        let ok = svc
            .clone()
            .oneshot(request(1, "/items/9", &[("authorization", &acme)]))
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        let refused = svc
            .clone()
            .oneshot(request(2, "/items/9", &[]))
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
    });

    let spans = capture.0.spans.lock().unwrap();
    let requests: Vec<&HashMap<String, String>> = spans
        .values()
        .filter(|(name, _)| name == "tenancy.request")
        .map(|(_, fields)| fields)
        .collect();
    assert_eq!(requests.len(), 2, "{spans:?}");
    let by_id = |id: &str| {
        requests
            .iter()
            .find(|f| f.get("request_id").map(String::as_str) == Some(id))
            .unwrap_or_else(|| panic!("no span with request id {id}: {requests:?}"))
    };
    let ok = by_id("plain-1");
    assert_eq!(ok.get("tenant").map(String::as_str), Some("acme"));
    assert_eq!(ok.get("method").map(String::as_str), Some("GET"));
    assert_eq!(ok.get("route").map(String::as_str), Some("/items/{id}"));
    // No verified token, no tenant.
    assert_eq!(by_id("plain-2").get("tenant"), None);

    // The handler ran once (the 401 never reached it), inside the request's span.
    let handler_spans = capture.0.handler_spans.lock().unwrap();
    assert_eq!(handler_spans.len(), 1);
    let (name, fields) = handler_spans[0]
        .and_then(|id| spans.get(&id))
        .expect("the handler ran inside a span");
    assert_eq!(name, "tenancy.request");
    assert_eq!(
        fields.get("request_id").map(String::as_str),
        Some("plain-1")
    );
    assert_eq!(fields.get("tenant").map(String::as_str), Some("acme"));
}
