//! The layers on a plain tower service (no axum router): stacked one by one in the documented
//! order, fed the peer address through `PeerAddr`, with real HS256 tokens verified by
//! `tenancy_auth::JwtVerifier`. Metrics are captured with a local recorder to check names,
//! labels and the bound on tenant labels.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use jsonwebtoken::{EncodingKey, Header as JwtHeader};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use tenancy_auth::{Algorithm, JwtVerifier, VerifyKey};
use tenancy_core::memory::{MemoryAuditSink, MemoryRateLimiter, MemoryTenantDirectory};
use tenancy_core::{
    Clock, ManualClock, QuotaOverrides, RateLimitRequest, RateLimiter, TenantDirectory, TenantId,
    TenantSettings, TierName,
};
use tenancy_http::{RequestMeta, Tenancy, TrustedProxies};
use tenancy_tower::{
    AuditLayer, AuthenticateLayer, PeerAddr, RateLimitLayer, ResolveTenantLayer, SetRequestIdLayer,
    TenancyLayer,
};
use tower::{ServiceBuilder, ServiceExt};

const SECRET: &[u8] = b"layers-test-secret-of-at-least-32-bytes";

#[derive(Debug, Default)]
struct Captured {
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<BTreeMap<String, usize>>,
}

fn render(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

#[derive(Debug)]
struct Count(Arc<AtomicU64>);

impl metrics::CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct Hist(Arc<Captured>, String);

impl metrics::HistogramFn for Hist {
    fn record(&self, _: f64) {
        *self
            .0
            .histograms
            .lock()
            .unwrap()
            .entry(self.1.clone())
            .or_default() += 1;
    }
}

#[derive(Debug, Clone, Default)]
struct CaptureRecorder(Arc<Captured>);

impl Recorder for CaptureRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let cell = self
            .0
            .counters
            .lock()
            .unwrap()
            .entry(render(key))
            .or_default()
            .clone();
        Counter::from_arc(Arc::new(Count(cell)))
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Hist(self.0.clone(), render(key))))
    }
}

impl CaptureRecorder {
    fn counter(&self, key: &str) -> u64 {
        self.0
            .counters
            .lock()
            .unwrap()
            .get(key)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    fn keys(&self, prefix: &str) -> Vec<String> {
        self.0
            .counters
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }
}

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

/// A backend that answers only after yielding once, and never without waiting (its `try_*`
/// are the traits' `None`): the decisions then go on in the layers' response future.
#[derive(Debug)]
struct Waiting<T>(T);

#[async_trait::async_trait]
impl TenantDirectory for Waiting<MemoryTenantDirectory> {
    async fn get(&self, tenant: &TenantId) -> tenancy_core::Result<Option<TenantSettings>> {
        tokio::task::yield_now().await;
        self.0.get(tenant).await
    }
    async fn put(
        &self,
        tenant: &TenantId,
        settings: TenantSettings,
    ) -> tenancy_core::Result<tenancy_core::Upsert> {
        self.0.put(tenant, settings).await
    }
    async fn put_if(
        &self,
        tenant: &TenantId,
        expected: Option<&TenantSettings>,
        settings: TenantSettings,
    ) -> tenancy_core::Result<Option<tenancy_core::Upsert>> {
        self.0.put_if(tenant, expected, settings).await
    }
    async fn remove(&self, tenant: &TenantId) -> tenancy_core::Result<bool> {
        self.0.remove(tenant).await
    }
    async fn list(&self) -> tenancy_core::Result<Vec<(TenantId, TenantSettings)>> {
        self.0.list().await
    }
}

#[async_trait::async_trait]
impl RateLimiter for Waiting<MemoryRateLimiter> {
    async fn check(
        &self,
        request: &RateLimitRequest,
    ) -> tenancy_core::Result<tenancy_core::RateLimitDecision> {
        tokio::task::yield_now().await;
        self.0.check(request).await
    }
}

async fn tenancy(clock: &ManualClock, audit: MemoryAuditSink, tenants: usize) -> Tenancy {
    tenancy_with(clock, audit, tenants, false).await
}

async fn tenancy_with(
    clock: &ManualClock,
    audit: MemoryAuditSink,
    tenants: usize,
    waiting: bool,
) -> Tenancy {
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
    for i in 0..tenants {
        let mut s = TenantSettings::new(TierName::parse("standard").unwrap());
        s.overrides = QuotaOverrides {
            user_per_hour: Some(1),
            user_burst: Some(1),
            ..QuotaOverrides::default()
        };
        directory
            .put(&TenantId::parse(&format!("t{i}")).unwrap(), s)
            .await
            .unwrap();
    }
    let limiter = MemoryRateLimiter::with_clock(shared.clone());
    let (directory, limiter): (Arc<dyn TenantDirectory>, Arc<dyn RateLimiter>) = if waiting {
        (Arc::new(Waiting(directory)), Arc::new(Waiting(limiter)))
    } else {
        (Arc::new(directory), Arc::new(limiter))
    };
    Tenancy::builder(Arc::new(verifier), directory, limiter, Arc::new(audit))
        .with_clock(shared)
        .with_max_tenant_labels(3)
        .with_trusted_proxies(TrustedProxies::parse(["127.0.0.1"]).unwrap())
        .with_route(common::items_rule())
        .build()
        .unwrap()
}

/// Runs `f` on a current-thread runtime with a recorder of its own, and returns the recorder.
fn recorded(f: impl Future<Output = ()>) -> CaptureRecorder {
    let recorder = CaptureRecorder::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || rt.block_on(f));
    recorder
}

fn request(path: &str, token: Option<&str>) -> http::Request<Body> {
    let mut b = http::Request::builder()
        .uri(path)
        .header("x-forwarded-for", "198.51.100.4");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let mut req = b.body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(PeerAddr("127.0.0.1:40000".parse().unwrap()));
    req
}

#[test]
fn individual_layers_on_a_plain_service_decide_count_and_audit() {
    let recorder = recorded(async {
        let clock = ManualClock::new();
        let audit = MemoryAuditSink::new();
        let t = tenancy(&clock, audit.clone(), 10).await;
        let svc = ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(t.clone()))
            .layer(AuthenticateLayer::new(t.clone()))
            .layer(ResolveTenantLayer::new(t.clone()))
            .layer(RateLimitLayer::new(t.clone()))
            .layer(AuditLayer::new(t))
            .service_fn(|req: http::Request<Body>| async move {
                let meta = req.extensions().get::<RequestMeta>();
                let ctx = meta.and_then(RequestMeta::context);
                let body = ctx.map(|c| c.tenant.to_string()).unwrap_or_default();
                Ok::<_, Infallible>(http::Response::new(Body::from(body)))
            });

        // Tokens for tenants the directory does not know, first: refused, and labelled
        // `_unresolved`, so they take none of the three tenant labels.
        for i in 0..5 {
            let tok = token(&clock, &format!("ghost{i}"), 600);
            let refused = svc
                .clone()
                .oneshot(request("/items/7", Some(&tok)))
                .await
                .unwrap();
            assert_eq!(refused.status(), 403);
        }
        // Ten tenants, two requests each: the second is over the per-user quota of one.
        for i in 0..10 {
            let tok = token(&clock, &format!("t{i}"), 600);
            let first = svc
                .clone()
                .oneshot(request("/items/7", Some(&tok)))
                .await
                .unwrap();
            assert_eq!(first.status(), 200);
            assert!(first.headers().contains_key("x-request-id"));
            let second = svc
                .clone()
                .oneshot(request("/items/7", Some(&tok)))
                .await
                .unwrap();
            assert_eq!(second.status(), 429);
            assert_eq!(second.headers()["retry-after"], "3600");
        }
        let none = svc
            .clone()
            .oneshot(request("/items/7", None))
            .await
            .unwrap();
        assert_eq!(none.status(), 401);
        let expired = token(&clock, "t0", -600);
        let old = svc
            .clone()
            .oneshot(request("/items/7", Some(&expired)))
            .await
            .unwrap();
        assert_eq!(old.status(), 401);

        // Audit: each allowed read with the resource from the path, the client from the
        // trusted proxy's header; each denial with its reason.
        let events = audit.events();
        let reads: Vec<_> = events
            .iter()
            .filter(|e| e.outcome == tenancy_core::Outcome::Success)
            .collect();
        assert_eq!(reads.len(), 10);
        assert!(reads.iter().all(|e| e.action == "items.read"
            && e.resource.as_ref().and_then(|r| r.id.as_deref()) == Some("7")
            && e.origin.client_addr == Some("198.51.100.4".parse().unwrap())));
        assert_eq!(
            events
                .iter()
                .filter(|e| e.reason.as_deref() == Some("rate_limited"))
                .count(),
            10
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| e.reason.as_deref() == Some("unauthenticated:expired"))
                .count(),
            1
        );
    });

    // Requests by tenant, route template and status, with at most 3 tenant labels + other.
    let keys = recorder.keys("tenancy_http_requests_total");
    let tenants: BTreeSet<String> = keys
        .iter()
        .filter_map(|k| k.split("tenant=").nth(1))
        .map(|rest| rest.split(',').next().unwrap_or_default().to_owned())
        .collect();
    // Three tenants, `_other`, `_none`, `_unresolved`.
    assert_eq!(tenants.len(), 6, "{tenants:?}");
    assert!(
        ["t0", "t1", "t2", "_other", "_none", "_unresolved"]
            .iter()
            .all(|t| tenants.contains(*t))
    );
    assert_eq!(
        recorder.counter(
            "tenancy_http_requests_total{tenant=_unresolved,route=/items/{id},status=403}"
        ),
        5
    );
    assert_eq!(
        recorder.counter("tenancy_http_requests_total{tenant=_other,route=/items/{id},status=200}"),
        7
    );
    assert_eq!(
        recorder.counter("tenancy_http_requests_total{tenant=_none,route=/items/{id},status=401}"),
        2
    );
    assert_eq!(
        recorder.counter("tenancy_ratelimit_decisions_total{outcome=allowed}"),
        10
    );
    assert_eq!(
        recorder.counter("tenancy_ratelimit_decisions_total{outcome=denied}"),
        10
    );
    assert_eq!(
        recorder.counter("tenancy_auth_failures_total{reason=missing}"),
        1
    );
    assert_eq!(
        recorder.counter("tenancy_auth_failures_total{reason=expired}"),
        1
    );
    let histograms = recorder.0.histograms.lock().unwrap();
    assert_eq!(
        histograms.values().sum::<usize>(),
        27,
        "one latency sample per request: {histograms:?}"
    );
}

/// A response as the comparison below sees it: status, headers, body.
type Answer = (u16, Vec<(String, String)>, bytes::Bytes);

/// The stack decides in `call` when every backend answers at once, and in the response future
/// when one waits: both give the same answers, call the inner service once per request let
/// through, and audit the same events.
#[tokio::test]
async fn decisions_made_at_once_and_after_waiting_answer_alike() {
    let mut seen = Vec::new();
    for waiting in [false, true] {
        let clock = ManualClock::new();
        let audit = MemoryAuditSink::new();
        let t = tenancy_with(&clock, audit.clone(), 2, waiting).await;
        let calls = Arc::new(AtomicU64::new(0));
        let counted = calls.clone();
        let svc = ServiceBuilder::new()
            .layer(TenancyLayer::new(t))
            .service_fn(move |req: http::Request<Body>| {
                counted.fetch_add(1, Ordering::SeqCst);
                let tenant = req
                    .extensions()
                    .get::<RequestMeta>()
                    .and_then(RequestMeta::context)
                    .map(|c| c.tenant.to_string())
                    .unwrap_or_default();
                async move { Ok::<_, Infallible>(http::Response::new(Body::from(tenant))) }
            });
        let known = token(&clock, "t1", 600);
        let unknown = token(&clock, "t9", 600);
        let mut answers: Vec<Answer> = Vec::new();
        for tok in [Some(&known), Some(&known), Some(&unknown), None] {
            let resp = svc
                .clone()
                .oneshot(request("/items/7", tok.map(String::as_str)))
                .await
                .unwrap();
            let mut headers: Vec<(String, String)> = resp
                .headers()
                .iter()
                .filter(|(k, _)| *k != "x-request-id")
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                .collect();
            headers.sort();
            let status = resp.status().as_u16();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
                .await
                .unwrap();
            answers.push((status, headers, body));
        }
        let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
        assert_eq!(statuses, [200, 429, 403, 401], "waiting: {waiting}");
        assert_eq!(&answers[0].2[..], b"t1", "waiting: {waiting}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "waiting: {waiting}");
        let events: Vec<(String, tenancy_core::Outcome)> = audit
            .events()
            .into_iter()
            .map(|e| (e.action, e.outcome))
            .collect();
        assert_eq!(events.len(), 4, "waiting: {waiting}: {events:?}");
        seen.push((answers, events));
    }
    // Problem bodies carry the request id, which differs per request: compare the statuses,
    // the headers and the successful body.
    let strip = |a: &[Answer]| {
        a.iter()
            .map(|(s, h, b)| {
                (
                    *s,
                    h.clone(),
                    if *s == 200 {
                        b.clone()
                    } else {
                        bytes::Bytes::new()
                    },
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&seen[0].0), strip(&seen[1].0));
    assert_eq!(seen[0].1, seen[1].1);
}

/// An inner service that fails (a hyper or tonic service with an error type): no response to
/// decorate, but the request is still counted, as a 500, by the stack and by the separate
/// layers alike.
#[test]
fn a_failing_inner_service_is_still_counted() {
    let recorder = recorded(async {
        let clock = ManualClock::new();
        // A quota of one request per user: one user for each way of stacking.
        let t = tenancy(&clock, MemoryAuditSink::new(), 2).await;
        let tok = token(&clock, "t0", 600);
        let tok1 = token(&clock, "t1", 600);
        let failing = |_req: http::Request<Body>| async {
            Err::<http::Response<Body>, &'static str>("backend gone")
        };
        let stacked = ServiceBuilder::new()
            .layer(TenancyLayer::new(t.clone()))
            .service_fn(failing);
        let err = stacked.oneshot(request("/items/7", Some(&tok))).await;
        assert_eq!(err.unwrap_err(), "backend gone");
        let layered = ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(t.clone()))
            .layer(AuthenticateLayer::new(t.clone()))
            .layer(ResolveTenantLayer::new(t.clone()))
            .layer(RateLimitLayer::new(t.clone()))
            .layer(AuditLayer::new(t))
            .service_fn(failing);
        let err = layered.oneshot(request("/items/7", Some(&tok1))).await;
        assert_eq!(err.unwrap_err(), "backend gone");
    });
    for tenant in ["t0", "t1"] {
        assert_eq!(
            recorder.counter(&format!(
                "tenancy_http_requests_total{{tenant={tenant},route=/items/{{id}},status=500}}"
            )),
            1,
            "{tenant}"
        );
    }
}

/// `TenancyLayer`'s refusals are counted with their status and carry the request id, whether
/// the decision was made in `call` or, with backends that wait, in the response future.
#[test]
fn the_stack_counts_its_refusals_decided_at_once_or_later() {
    for waiting in [false, true] {
        let recorder = recorded(async move {
            let clock = ManualClock::new();
            let t = tenancy_with(&clock, MemoryAuditSink::new(), 1, waiting).await;
            let svc = ServiceBuilder::new()
                .layer(TenancyLayer::new(t))
                .service_fn(|_req: http::Request<Body>| async {
                    Ok::<_, Infallible>(http::Response::new(Body::from("ok")))
                });
            let tok = token(&clock, "t0", 600);
            let ghost = token(&clock, "ghost", 600);
            let cases = [
                (None, 401),
                (Some(&ghost), 403),
                (Some(&tok), 200),
                (Some(&tok), 429),
            ];
            for (token, status) in cases {
                let resp = svc
                    .clone()
                    .oneshot(request("/items/7", token.map(String::as_str)))
                    .await
                    .unwrap();
                assert_eq!(resp.status(), status, "waiting: {waiting}");
                assert!(resp.headers().contains_key("x-request-id"));
            }
        });
        for (tenant, status) in [
            ("_none", 401),
            ("_unresolved", 403),
            ("t0", 200),
            ("t0", 429),
        ] {
            assert_eq!(
                recorder.counter(&format!(
                    "tenancy_http_requests_total{{tenant={tenant},route=/items/{{id}},status={status}}}"
                )),
                1,
                "{tenant} {status}, waiting: {waiting}"
            );
        }
    }
}
