//! One table of HTTP cases run against an axum app (tenancy-tower) and an actix-web app
//! (tenancy-actix) built from the same configuration: both must give the same status, the
//! same headers and the same body, and each case's expectations must hold.
//!
//! Tokens are real HS256 JWTs minted with `jsonwebtoken` and verified by
//! `tenancy_auth::JwtVerifier`; the tenant directory, limiter and audit sink are the
//! in-memory backends of tenancy-core, on a manual clock so both apps see the same time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpResponse, web};
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use jsonwebtoken::Algorithm;
use jsonwebtoken::{EncodingKey, Header as JwtHeader};
use serde_json::{Value, json};
use tenancy_auth::{JwtVerifier, VerifyKey};
use tenancy_core::memory::{MemoryAuditSink, MemoryRateLimiter, MemoryTenantDirectory};
use tenancy_core::{
    AuditEvent, Clock, ManualClock, Outcome, QuotaOverrides, RateLimitDecision, RateLimitRequest,
    RateLimiter, TenantDirectory, TenantId, TenantSettings, TenantStatus, TierName,
};
use tenancy_http::{RouteRule, Tenancy, TrustedProxies};
use tower::ServiceExt;

const SECRET: &[u8] = b"conformance-secret-of-at-least-32-bytes!";
const ISS: &str = "https://id.example";
const AUD: &str = "api";

tenancy_tower::permission!(ReadT = "records:read");
tenancy_tower::permission!(WriteT = "records:write");
tenancy_actix::permission!(ReadA = "records:read");
tenancy_actix::permission!(WriteA = "records:write");

/// A rate limiter whose backend is unreachable: every decision fails, as a Redis limiter
/// does when its server is gone and its policy is to fail closed.
#[derive(Debug)]
struct UnreachableLimiter;

#[async_trait::async_trait]
impl RateLimiter for UnreachableLimiter {
    async fn check(&self, _: &RateLimitRequest) -> tenancy_core::Result<RateLimitDecision> {
        Err(tenancy_core::Error::unavailable(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "limiter backend unreachable",
        )))
    }
}

struct World {
    clock: ManualClock,
}

impl World {
    fn new() -> Self {
        Self {
            clock: ManualClock::new(),
        }
    }

    /// The verifier of the tokens `World::token` signs.
    fn verifier(&self) -> JwtVerifier {
        JwtVerifier::builder()
            .issuer(ISS, VerifyKey::hmac(SECRET, Algorithm::HS256).unwrap())
            .audience(AUD)
            .clock(Arc::new(self.clock.clone()))
            .build()
            .unwrap()
    }

    fn now(&self) -> i64 {
        (self.clock.now_nanos() / 1_000_000_000) as i64
    }

    fn claims(&self, tenant: &str, user: &str, role: &str, perms: &[&str]) -> Value {
        json!({
            "iss": ISS, "aud": AUD, "sub": user, "iat": self.now(), "nbf": self.now(),
            "exp": self.now() + 600, "jti": format!("{tenant}-{user}"),
            "tenant_id": tenant, "user_id": user, "user_role": role, "permissions": perms,
        })
    }

    fn sign(&self, claims: &Value) -> String {
        jsonwebtoken::encode(
            &JwtHeader::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn token(&self, tenant: &str, user: &str, role: &str, perms: &[&str]) -> String {
        self.sign(&self.claims(tenant, user, role, perms))
    }

    /// The tenancy configuration both apps are built from; each call gives fresh backends.
    async fn tenancy(
        &self,
        limiter_down: bool,
    ) -> (Tenancy, MemoryAuditSink, MemoryTenantDirectory) {
        let clock: Arc<dyn Clock> = Arc::new(self.clock.clone());
        let verifier = self.verifier();
        let directory = MemoryTenantDirectory::new();
        let tier = |t: &str| TierName::parse(t).unwrap();
        let put = |name: &str, s: TenantSettings| {
            let d = directory.clone();
            let id = TenantId::parse(name).unwrap();
            async move { d.put(&id, s).await.unwrap() }
        };
        put("acme", TenantSettings::new(tier("standard"))).await;
        put("globex", TenantSettings::new(tier("premium"))).await;
        put("platform", TenantSettings::new(tier("premium"))).await;
        let mut suspended = TenantSettings::new(tier("standard"));
        suspended.status = TenantStatus::Suspended;
        put("initech", suspended).await;
        let tiny = QuotaOverrides {
            tenant_per_hour: Some(2),
            tenant_burst: Some(2),
            ..QuotaOverrides::default()
        };
        let mut limited = TenantSettings::new(tier("standard"));
        limited.overrides = tiny;
        put("limited", limited.clone()).await;
        put("limited-b", limited.clone()).await;
        put("limited-c", limited).await;
        let mut bypassed = TenantSettings::new(tier("standard"));
        bypassed.overrides = tiny;
        bypassed.bypass_until = Some(self.clock.now() + Duration::from_secs(600));
        put("bypassed", bypassed).await;
        let mut gold = TenantSettings::new(tier("gold"));
        gold.overrides = QuotaOverrides::default();
        put("goldco", gold).await;

        let limiter: Arc<dyn RateLimiter> = if limiter_down {
            Arc::new(UnreachableLimiter)
        } else {
            Arc::new(MemoryRateLimiter::with_clock(clock.clone()))
        };
        let audit = MemoryAuditSink::new();
        let tenancy = Tenancy::builder(
            Arc::new(verifier),
            Arc::new(directory.clone()),
            limiter,
            Arc::new(audit.clone()),
        )
        .with_clock(clock)
        .with_trusted_proxies(TrustedProxies::parse(["10.0.0.0/8"]).unwrap())
        .with_public_route("/health")
        .unwrap()
        .with_exempt_route("/v1/admin/{*rest}")
        .unwrap()
        .with_route(
            RouteRule::new("/v1/records/{id}")
                .unwrap()
                .method("GET")
                .audit("records.read")
                .unwrap()
                .resource("record", "id"),
        )
        .build()
        .unwrap();
        (tenancy, audit, directory)
    }
}

fn ctx_json(ctx: &tenancy_core::TenantContext) -> String {
    json!({
        "tenant": ctx.tenant, "user": ctx.user, "role": ctx.role,
        "tier": ctx.tier, "permissions": ctx.permissions.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
    })
    .to_string()
}

fn axum_app(tenancy: Tenancy) -> Router {
    use axum::routing::get;
    use tenancy_tower::{RequirePermission, Tenant};
    let json = |body: String| ([(http::header::CONTENT_TYPE, "application/json")], body);
    Router::new()
        .route(
            "/health",
            get(move || async move { json("{\"status\":\"ok\"}".into()) }),
        )
        .route(
            "/v1/me",
            get(move |who: Option<Tenant>| async move {
                match who {
                    Some(Tenant(ctx)) => json(ctx_json(&ctx)),
                    None => json("null".into()),
                }
            }),
        )
        .route(
            "/v1/records",
            get(
                move |RequirePermission(ctx, ..): RequirePermission<ReadT>| async move {
                    json(format!("{{\"records_of\":\"{}\"}}", ctx.tenant))
                },
            )
            .post(
                move |RequirePermission(ctx, ..): RequirePermission<WriteT>| async move {
                    (
                        http::StatusCode::CREATED,
                        json(format!("{{\"created_for\":\"{}\"}}", ctx.tenant)),
                    )
                },
            ),
        )
        .route(
            "/v1/records/{id}",
            get(move |Tenant(ctx): Tenant| async move {
                json(format!("{{\"record_of\":\"{}\"}}", ctx.tenant))
            }),
        )
        .route(
            "/v1/admin/tenants/{tenant}",
            get(move |Tenant(ctx): Tenant| async move { json(ctx_json(&ctx)) }),
        )
        .layer(tenancy_tower::TenancyLayer::new(tenancy))
}

fn actix_routes(cfg: &mut web::ServiceConfig) {
    use tenancy_actix::{RequirePermission, Tenant};
    let json = |body: String| {
        HttpResponse::Ok()
            .content_type("application/json")
            .body(body)
    };
    cfg.route(
        "/health",
        web::get().to(move || async move { json("{\"status\":\"ok\"}".into()) }),
    )
    .route(
        "/v1/me",
        web::get().to(move |who: Option<Tenant>| async move {
            match who {
                Some(Tenant(ctx)) => json(ctx_json(&ctx)),
                None => json("null".into()),
            }
        }),
    )
    .route(
        "/v1/records",
        web::get().to(
            move |RequirePermission(ctx, ..): RequirePermission<ReadA>| async move {
                json(format!("{{\"records_of\":\"{}\"}}", ctx.tenant))
            },
        ),
    )
    .route(
        "/v1/records",
        web::post().to(
            move |RequirePermission(ctx, ..): RequirePermission<WriteA>| async move {
                HttpResponse::Created()
                    .content_type("application/json")
                    .body(format!("{{\"created_for\":\"{}\"}}", ctx.tenant))
            },
        ),
    )
    .route(
        "/v1/records/{id}",
        web::get().to(move |Tenant(ctx): Tenant| async move {
            json(format!("{{\"record_of\":\"{}\"}}", ctx.tenant))
        }),
    )
    .route(
        "/v1/admin/tenants/{tenant}",
        web::get().to(move |Tenant(ctx): Tenant| async move { json(ctx_json(&ctx)) }),
    );
}

/// The actix-web app of the cases: [`actix_routes`] behind the middleware.
async fn actix_app(
    tenancy: Tenancy,
) -> impl actix_web::dev::Service<
    actix_http::Request,
    Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
    Error = actix_web::Error,
> {
    actix_web::test::init_service(
        App::new()
            .wrap(tenancy_actix::TenancyMiddleware::new(tenancy))
            .configure(actix_routes),
    )
    .await
}

/// One request of a case.
#[derive(Clone)]
struct Req {
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    peer: Option<SocketAddr>,
}

impl Req {
    fn get(path: &str) -> Self {
        Self {
            method: "GET",
            path: path.to_owned(),
            headers: Vec::new(),
            peer: None,
        }
    }

    fn post(path: &str) -> Self {
        Self {
            method: "POST",
            ..Self::get(path)
        }
    }

    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }

    fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    fn peer(mut self, addr: &str) -> Self {
        self.peer = Some(addr.parse().unwrap());
        self
    }
}

/// What a response looked like: status, headers (minus the ones a framework adds by itself),
/// and the body as JSON.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Value,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

const FRAMEWORK_HEADERS: &[&str] = &["content-length", "date"];

fn seen(status: u16, headers: Vec<(String, String)>, body: &[u8]) -> Seen {
    let mut map = BTreeMap::new();
    for (k, v) in headers {
        if !FRAMEWORK_HEADERS.contains(&k.as_str()) {
            assert!(map.insert(k.clone(), v).is_none(), "header {k} sent twice");
        }
    }
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
    };
    Seen {
        status,
        headers: map,
        body,
    }
}

async fn call_axum(app: &Router, r: &Req) -> Seen {
    let mut b = http::Request::builder().method(r.method).uri(&r.path);
    for (k, v) in &r.headers {
        b = b.header(k, v);
    }
    let mut req = b.body(Body::empty()).unwrap();
    if let Some(p) = r.peer {
        req.extensions_mut().insert(ConnectInfo(p));
    }
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    seen(status, headers, &body)
}

async fn call_actix<S, B>(app: &S, r: &Req) -> Seen
where
    S: actix_web::dev::Service<
            actix_http::Request,
            Response = actix_web::dev::ServiceResponse<B>,
            Error = actix_web::Error,
        >,
    B: actix_web::body::MessageBody,
{
    let method = actix_web::http::Method::from_bytes(r.method.as_bytes()).unwrap();
    let mut t = actix_web::test::TestRequest::default()
        .method(method)
        .uri(&r.path);
    for (k, v) in &r.headers {
        t = t.append_header((k.as_str(), v.as_str()));
    }
    if let Some(p) = r.peer {
        t = t.peer_addr(p);
    }
    let resp = actix_web::test::call_service(app, t.to_request()).await;
    let (status, headers) = (resp.status().as_u16(), actix_headers(resp.headers()));
    let body = actix_web::test::read_body(resp).await;
    seen(status, headers, &body)
}

fn actix_headers(h: &actix_web::http::header::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect()
}

type Check = Box<dyn Fn(&[Seen])>;

struct Case {
    name: &'static str,
    requests: Vec<Req>,
    check: Check,
}

fn case(name: &'static str, requests: Vec<Req>, check: impl Fn(&[Seen]) + 'static) -> Case {
    Case {
        name,
        requests,
        check: Box::new(check),
    }
}

fn assert_problem(s: &Seen, status: u16, kind: &str) {
    assert_eq!(s.status, status, "{s:#?}");
    assert_eq!(s.header("content-type"), Some("application/problem+json"));
    assert_eq!(s.body["status"], status);
    assert_eq!(s.body["type"], format!("urn:tenancy:problem:{kind}"));
    assert!(s.body["title"].is_string() && s.body["detail"].is_string());
}

fn assert_401(s: &Seen) {
    assert_problem(s, 401, "unauthorized");
    assert_eq!(s.header("www-authenticate"), Some("Bearer"));
    assert_eq!(s.body["detail"], "a valid bearer token is required");
}

const RATE_HEADERS: &[&str] = &[
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit-policy",
    "ratelimit",
];

fn assert_limited(s: &Seen) {
    for h in RATE_HEADERS {
        assert!(s.header(h).is_some(), "missing {h}: {s:#?}");
    }
}

fn assert_unlimited(s: &Seen) {
    for h in RATE_HEADERS {
        assert!(s.header(h).is_none(), "unexpected {h}: {s:#?}");
    }
}

fn unauthorized(name: &'static str, req: Req) -> Case {
    case(name, vec![req], |s| assert_401(&s[0]))
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn cases(w: &World) -> Vec<Case> {
    let bob = w.token("acme", "bob", "user", &["records:read", "records:write"]);
    let reader = w.token("acme", "carol", "user", &["records:read"]);
    let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = w.claims("acme", "bob", "user", &["records:read"]);
        f(c.as_object_mut().unwrap());
        w.sign(&c)
    };
    let mut out = vec![
        unauthorized("no token", Req::get("/v1/me").header("x-request-id", "c-1")),
        unauthorized(
            "garbage token",
            Req::get("/v1/me")
                .bearer("not.a.jwt")
                .header("x-request-id", "c-2"),
        ),
        unauthorized(
            "basic scheme",
            Req::get("/v1/me")
                .header("authorization", "Basic Ym9iOnBhc3N3b3Jk")
                .header("x-request-id", "c-3"),
        ),
        unauthorized(
            "two authorization headers",
            Req::get("/v1/me")
                .bearer(&bob)
                .bearer(&bob)
                .header("x-request-id", "c-4"),
        ),
        unauthorized("bad signature", {
            let t = jsonwebtoken::encode(
                &JwtHeader::new(Algorithm::HS256),
                &w.claims("acme", "bob", "user", &[]),
                &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!"),
            )
            .unwrap();
            Req::get("/v1/me").bearer(&t).header("x-request-id", "c-5")
        }),
        unauthorized("alg none", {
            let head = b64url(br#"{"alg":"none","typ":"JWT"}"#);
            let body = b64url(
                w.claims("acme", "bob", "super_admin", &[])
                    .to_string()
                    .as_bytes(),
            );
            Req::get("/v1/me")
                .bearer(&format!("{head}.{body}."))
                .header("x-request-id", "c-6")
        }),
        unauthorized(
            "expired",
            Req::get("/v1/me")
                .bearer(&with(&|c| {
                    c.insert("exp".into(), json!(w.now() - 3600));
                }))
                .header("x-request-id", "c-7"),
        ),
        unauthorized(
            "not yet valid",
            Req::get("/v1/me")
                .bearer(&with(&|c| {
                    c.insert("nbf".into(), json!(w.now() + 3600));
                }))
                .header("x-request-id", "c-8"),
        ),
        unauthorized(
            "wrong issuer",
            Req::get("/v1/me")
                .bearer(&with(&|c| {
                    c.insert("iss".into(), json!("https://evil.example"));
                }))
                .header("x-request-id", "c-9"),
        ),
        unauthorized(
            "wrong audience",
            Req::get("/v1/me")
                .bearer(&with(&|c| {
                    c.insert("aud".into(), json!("other-api"));
                }))
                .header("x-request-id", "c-10"),
        ),
    ];
    for (i, claim) in ["tenant_id", "user_id", "user_role", "permissions", "exp"]
        .into_iter()
        .enumerate()
    {
        out.push(unauthorized(
            "missing claim",
            Req::get("/v1/me")
                .bearer(&with(&|c| {
                    c.remove(claim);
                }))
                .header("x-request-id", &format!("c-missing-{i}")),
        ));
    }
    for (i, (claim, v)) in [
        ("tenant_id", json!("ACME")),
        ("tenant_id", json!("a{b}")),
        ("user_role", json!("Root!")),
        ("permissions", json!("records:read")),
        ("exp", json!("tomorrow")),
    ]
    .into_iter()
    .enumerate()
    {
        out.push(unauthorized(
            "invalid claim",
            Req::get("/v1/me")
                .bearer(&with(&|c| {
                    c.insert(claim.into(), v.clone());
                }))
                .header("x-request-id", &format!("c-invalid-{i}")),
        ));
    }
    let limited = w.token("limited", "dave", "user", &["records:read"]);
    let limited_b = w.token("limited-b", "dan", "user", &["records:read"]);
    let bypassed = w.token("bypassed", "erin", "user", &["records:read"]);
    let root = w.token("platform", "root", "super_admin", &["records:read"]);
    out.extend([
        case(
            "valid token",
            vec![
                Req::get("/v1/me")
                    .bearer(&bob)
                    .header("x-request-id", "c-20"),
            ],
            |s| {
                assert_eq!(s[0].status, 200);
                assert_eq!(s[0].body["tenant"], "acme");
                assert_eq!(s[0].body["tier"], "standard");
                assert_eq!(s[0].header("x-request-id"), Some("c-20"));
                assert_limited(&s[0]);
                assert_eq!(s[0].header("x-ratelimit-limit"), Some("300"));
                assert_eq!(
                    s[0].header("ratelimit-policy"),
                    Some("\"tenant-3600\";q=1000;w=3600, \"user-3600\";q=300;w=3600")
                );
            },
        ),
        case(
            "matching tenant header",
            vec![
                Req::get("/v1/me")
                    .bearer(&bob)
                    .header("x-tenant-id", "acme")
                    .header("x-request-id", "c-21"),
            ],
            |s| assert_eq!(s[0].status, 200),
        ),
        case(
            "wrong tenant header",
            vec![
                Req::get("/v1/me")
                    .bearer(&bob)
                    .header("x-tenant-id", "globex")
                    .header("x-request-id", "c-22"),
            ],
            |s| {
                assert_problem(&s[0], 403, "tenant-mismatch");
                assert_eq!(s[0].body["request_id"], "c-22");
                // Refused, but a request of bob's all the same: limited and counted.
                assert_limited(&s[0]);
            },
        ),
        case(
            "wrong tenant header counts against the limit",
            (0..3)
                .map(|i| {
                    Req::get("/v1/me")
                        .bearer(&limited_b)
                        .header("x-tenant-id", "globex")
                        .header("x-request-id", &format!("c-22b-{i}"))
                })
                .collect(),
            |s| {
                assert_problem(&s[0], 403, "tenant-mismatch");
                assert_eq!(s[0].header("x-ratelimit-remaining"), Some("1"));
                assert_problem(&s[1], 403, "tenant-mismatch");
                assert_eq!(s[1].header("x-ratelimit-remaining"), Some("0"));
                assert_problem(&s[2], 429, "rate-limited");
                assert_limited(&s[2]);
                assert!(s[2].header("retry-after").is_some());
            },
        ),
        case(
            "hostile tenant header",
            vec![
                Req::get("/v1/me")
                    .bearer(&bob)
                    .header("x-tenant-id", "acme' OR '1'='1")
                    .header("x-request-id", "c-23"),
            ],
            |s| assert_problem(&s[0], 403, "tenant-mismatch"),
        ),
        case(
            "suspended tenant",
            vec![
                Req::get("/v1/me")
                    .bearer(&w.token("initech", "peter", "user", &["records:read"]))
                    .header("x-request-id", "c-24"),
            ],
            |s| {
                assert_problem(&s[0], 403, "tenant-suspended");
                // Refused, but a request of peter's all the same: limited and counted.
                assert_limited(&s[0]);
            },
        ),
        case(
            "unknown tenant",
            vec![
                Req::get("/v1/me")
                    .bearer(&w.token("nowhere", "zed", "user", &["records:read"]))
                    .header("x-request-id", "c-25"),
            ],
            |s| assert_problem(&s[0], 403, "unknown-tenant"),
        ),
        case(
            "missing permission",
            vec![
                Req::post("/v1/records")
                    .bearer(&reader)
                    .header("x-request-id", "c-26"),
            ],
            |s| {
                assert_problem(&s[0], 403, "missing-permission");
                assert_eq!(
                    s[0].body["detail"],
                    "permission `records:write` is required"
                );
                assert_limited(&s[0]);
            },
        ),
        case(
            "permission granted",
            vec![
                Req::post("/v1/records")
                    .bearer(&bob)
                    .header("x-request-id", "c-27"),
            ],
            |s| {
                assert_eq!(s[0].status, 201);
                assert_eq!(s[0].body["created_for"], "acme");
            },
        ),
        case(
            "limit reached",
            (0..3)
                .map(|i| {
                    Req::get("/v1/me")
                        .bearer(&limited)
                        .header("x-request-id", &format!("c-28-{i}"))
                })
                .collect(),
            |s| {
                assert_eq!(s[0].status, 200);
                assert_eq!(s[0].header("x-ratelimit-remaining"), Some("1"));
                assert_eq!(s[1].status, 200);
                assert_eq!(s[1].header("x-ratelimit-remaining"), Some("0"));
                assert_problem(&s[2], 429, "rate-limited");
                assert_limited(&s[2]);
                let retry: u64 = s[2].header("retry-after").unwrap().parse().unwrap();
                assert!(retry >= 1, "{retry}");
                assert_eq!(retry, 1800);
            },
        ),
        case(
            "bypass window",
            (0..4)
                .map(|i| {
                    Req::get("/v1/me")
                        .bearer(&bypassed)
                        .header("x-request-id", &format!("c-29-{i}"))
                })
                .collect(),
            |s| {
                for r in s {
                    assert_eq!(r.status, 200, "{r:#?}");
                    assert_limited(r);
                    assert!(r.header("retry-after").is_none());
                }
            },
        ),
        case(
            "exempt route",
            vec![
                Req::get("/v1/admin/tenants/acme")
                    .bearer(&limited)
                    .header("x-request-id", "c-30"),
            ],
            |s| {
                assert_eq!(s[0].status, 200);
                assert_unlimited(&s[0]);
            },
        ),
        case(
            "super admin role outside the platform tenant",
            // Refused, and counted as the user of that tenant it is: the refusal cannot be
            // repeated (and audited) without limit.
            (0..3)
                .map(|i| {
                    Req::get("/v1/me")
                        .bearer(&w.token("limited-c", "mallory", "super_admin", &[]))
                        .header("x-request-id", &format!("c-31b-{i}"))
                })
                .collect(),
            |s| {
                assert_problem(&s[0], 403, "platform-role");
                assert_eq!(s[0].body["request_id"], "c-31b-0");
                assert_limited(&s[0]);
                assert_eq!(s[0].header("x-ratelimit-remaining"), Some("1"));
                assert_problem(&s[1], 403, "platform-role");
                assert_problem(&s[2], 429, "rate-limited");
                assert!(s[2].header("retry-after").is_some());
            },
        ),
        case(
            "super admin is not limited",
            (0..3)
                .map(|i| {
                    Req::get("/v1/me")
                        .bearer(&root)
                        .header("x-request-id", &format!("c-31-{i}"))
                })
                .collect(),
            |s| {
                for r in s {
                    assert_eq!(r.status, 200);
                    assert_eq!(r.body["role"], "super_admin");
                    assert_unlimited(r);
                }
            },
        ),
        case(
            "unknown tier is a server error that names no cause beyond setup",
            vec![
                Req::get("/v1/me")
                    .bearer(&w.token("goldco", "gil", "user", &[]))
                    .header("x-request-id", "c-32"),
            ],
            |s| assert_problem(&s[0], 500, "misconfigured"),
        ),
        case(
            "oversized header",
            vec![
                Req::get("/v1/me")
                    .bearer(&bob)
                    .header("x-padding", &"a".repeat(20_000))
                    .header("x-request-id", "c-33"),
            ],
            |s| {
                assert_problem(&s[0], 431, "header-too-large");
                assert_eq!(s[0].header("x-request-id"), Some("c-33"));
            },
        ),
        case(
            "oversized token",
            vec![
                Req::get("/v1/me")
                    .bearer(&"a".repeat(9000))
                    .header("x-request-id", "c-34"),
            ],
            |s| assert_401(&s[0]),
        ),
        case(
            "public route without token",
            vec![Req::get("/health").header("x-request-id", "c-35")],
            |s| {
                assert_eq!(s[0].status, 200);
                assert_eq!(s[0].body["status"], "ok");
                assert_unlimited(&s[0]);
            },
        ),
        case(
            "audited route",
            vec![
                Req::get("/v1/records/42")
                    .bearer(&bob)
                    .header("x-request-id", "c-36"),
            ],
            |s| assert_eq!(s[0].body["record_of"], "acme"),
        ),
        case(
            "audited route with an encoded id",
            vec![
                Req::get("/v1/records/%34%32")
                    .bearer(&bob)
                    .header("x-request-id", "c-39"),
            ],
            |s| assert_eq!(s[0].body["record_of"], "acme"),
        ),
        case(
            "insane request id is replaced",
            vec![Req::get("/health").header("x-request-id", "bad id with spaces")],
            |s| {
                let id = s[0].header("x-request-id").unwrap();
                assert_eq!(id.len(), 22, "{id}");
            },
        ),
        case(
            "client address through a trusted proxy",
            vec![
                Req::get("/v1/me")
                    .peer("10.1.1.1:5000")
                    .header("x-forwarded-for", "9.9.9.9, 203.0.113.7")
                    .header("x-request-id", "c-38"),
            ],
            |s| assert_401(&s[0]),
        ),
    ]);
    out
}

/// Masks what legitimately differs between two apps (generated request ids).
fn comparable(mut s: Seen, case: &str) -> Seen {
    if case == "insane request id is replaced" {
        s.headers
            .insert("x-request-id".into(), "<generated>".into());
    }
    s
}

/// Tenant, action, outcome, reason, client address.
type AuditRow = (String, String, Outcome, Option<String>, Option<String>);

fn audit_summary(events: &[AuditEvent]) -> Vec<AuditRow> {
    events
        .iter()
        .map(|e| {
            (
                e.tenant.to_string(),
                e.action.clone(),
                e.outcome,
                e.reason.clone(),
                e.origin.client_addr.map(|a| a.to_string()),
            )
        })
        .collect()
}

#[actix_web::test]
async fn axum_and_actix_answer_every_case_alike() {
    let w = World::new();
    let (tower_tenancy, tower_audit, _) = w.tenancy(false).await;
    let (actix_tenancy, actix_audit, _) = w.tenancy(false).await;
    let axum = axum_app(tower_tenancy);
    let actix = actix_app(actix_tenancy).await;
    let cases = cases(&w);
    assert!(cases.len() >= 30, "{}", cases.len());
    for c in &cases {
        let mut seen_axum = Vec::new();
        for r in &c.requests {
            let a = call_axum(&axum, r).await;
            let b = call_actix(&actix, r).await;
            assert_eq!(
                comparable(a.clone(), c.name),
                comparable(b, c.name),
                "case `{}`: axum and actix differ",
                c.name
            );
            seen_axum.push(a);
        }
        (c.check)(&seen_axum);
    }

    // Both audit trails recorded the same events, in the same order.
    let (ta, aa) = (tower_audit.events(), actix_audit.events());
    assert_eq!(audit_summary(&ta), audit_summary(&aa));
    let has = |action: &str, reason: Option<&str>| {
        ta.iter()
            .any(|e| e.action == action && e.reason.as_deref() == reason)
    };
    assert!(has("auth.denied", Some("unauthenticated:missing")));
    assert!(has("auth.denied", Some("unauthenticated:expired")));
    assert!(has("tenant.denied", Some("tenant_mismatch")));
    assert!(has("tenant.denied", Some("tenant_suspended")));
    assert!(has("ratelimit.denied", Some("rate_limited")));
    assert!(has("http.denied", Some("missing_permission")));
    let bypass: Vec<_> = ta
        .iter()
        .filter(|e| e.action == "ratelimit.bypass")
        .collect();
    assert_eq!(
        bypass.len(),
        2,
        "requests 3 and 4 of the bypass case exceed the quota"
    );
    assert!(
        bypass
            .iter()
            .all(|e| e.tenant.as_str() == "bypassed" && e.outcome == Outcome::Success)
    );
    let read = ta.iter().find(|e| e.action == "records.read").unwrap();
    assert_eq!(read.resource.as_ref().unwrap().id.as_deref(), Some("42"));
    // The id as the handler received it, not as it was spelled in the path.
    let encoded = ta
        .iter()
        .find(|e| {
            e.origin
                .request_id
                .as_ref()
                .is_some_and(|r| r.as_str() == "c-39")
        })
        .unwrap();
    assert_eq!(encoded.action, "records.read");
    assert_eq!(encoded.resource.as_ref().unwrap().id.as_deref(), Some("42"));
    assert_eq!(read.origin.route.as_deref(), Some("/v1/records/{id}"));
    assert_eq!(read.actor.user.as_ref().unwrap().as_str(), "bob");
    // The client behind the trusted proxy, not the forged leftmost entry nor the proxy.
    let proxied = ta
        .iter()
        .find(|e| {
            e.origin
                .request_id
                .as_ref()
                .is_some_and(|r| r.as_str() == "c-38")
        })
        .unwrap();
    assert_eq!(
        proxied.origin.client_addr.unwrap().to_string(),
        "203.0.113.7"
    );
    // A 401 never names the reason to the client, but the trail does.
    assert!(
        ta.iter()
            .all(|e| e.reason.as_deref() != Some("unauthenticated:missing")
                || e.tenant.as_str() == "platform")
    );
}

/// Requests that one framework routes to an audited handler although the path or method is
/// not spelled as the rule: actix-web decodes the path before routing, axum answers `HEAD`
/// with the `GET` handler. The rule (audit, limits) applies to them as to the plain request.
#[actix_web::test]
async fn requests_a_framework_routes_to_an_audited_handler_are_audited() {
    let w = World::new();
    let bob = w.token("acme", "bob", "user", &["records:read"]);
    let (tower_tenancy, tower_audit, _) = w.tenancy(false).await;
    let (actix_tenancy, actix_audit, _) = w.tenancy(false).await;
    let axum = axum_app(tower_tenancy);
    let actix = actix_app(actix_tenancy).await;
    let head = Req {
        method: "HEAD",
        ..Req::get("/v1/records/42").bearer(&bob)
    };
    let s = call_axum(&axum, &head).await;
    assert_eq!(s.status, 200, "{s:#?}");
    assert_limited(&s);
    let s = call_actix(&actix, &Req::get("/v1/r%65cords/%34%32").bearer(&bob)).await;
    assert_eq!(
        (s.status, &s.body["record_of"]),
        (200, &json!("acme")),
        "{s:#?}"
    );
    assert_limited(&s);
    for events in [tower_audit.events(), actix_audit.events()] {
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_eq!(events[0].action, "records.read");
        assert_eq!(
            events[0].resource.as_ref().unwrap().id.as_deref(),
            Some("42")
        );
        assert_eq!(events[0].origin.route.as_deref(), Some("/v1/records/{id}"));
    }
}

/// An audit sink whose store is down.
#[derive(Debug)]
struct DownSink;

#[async_trait::async_trait]
impl tenancy_core::AuditSink for DownSink {
    async fn record(&self, _: AuditEvent) -> tenancy_core::Result<()> {
        Err(tenancy_core::Error::unavailable("the audit store is down"))
    }
}

/// A route audited synchronously whose event cannot be stored answers 503, alike, and the
/// answer still carries the rate-limit headers (the actix middleware once dropped them).
#[actix_web::test]
async fn a_synchronous_audit_that_fails_answers_503_alike_with_the_limit_headers() {
    let w = World::new();
    let bob = w.token("acme", "bob", "user", &["records:read"]);
    let build = || async {
        let clock: Arc<dyn Clock> = Arc::new(w.clock.clone());
        let verifier = w.verifier();
        let directory = MemoryTenantDirectory::new();
        directory
            .put(
                &TenantId::parse("acme").unwrap(),
                TenantSettings::new(TierName::parse("standard").unwrap()),
            )
            .await
            .unwrap();
        Tenancy::builder(
            Arc::new(verifier),
            Arc::new(directory),
            Arc::new(MemoryRateLimiter::with_clock(clock.clone())),
            Arc::new(DownSink),
        )
        .with_clock(clock)
        .with_route(
            RouteRule::new("/v1/records/{id}")
                .unwrap()
                .method("GET")
                .audit("records.read")
                .unwrap()
                .audit_sync(),
        )
        .build()
        .unwrap()
    };
    let axum = axum_app(build().await);
    let actix = actix_app(build().await).await;
    let req = Req::get("/v1/records/42")
        .bearer(&bob)
        .header("x-request-id", "c-sync");
    let a = call_axum(&axum, &req).await;
    let b = call_actix(&actix, &req).await;
    assert_eq!(a, b, "axum and actix differ");
    assert_problem(&a, 503, "unavailable");
    assert_limited(&a);
}

#[actix_web::test]
async fn a_failed_limiter_fails_closed_alike() {
    let w = World::new();
    let (t1, _, _) = w.tenancy(true).await;
    let (t2, _, _) = w.tenancy(true).await;
    let axum = axum_app(t1);
    let actix = actix_app(t2).await;
    let bob = w.token("acme", "bob", "user", &["records:read"]);
    let r = Req::get("/v1/me")
        .bearer(&bob)
        .header("x-request-id", "down-1");
    let a = call_axum(&axum, &r).await;
    let b = call_actix(&actix, &r).await;
    assert_eq!(a, b);
    assert_problem(&a, 503, "unavailable");
    assert_eq!(
        a.body["detail"],
        "the service is temporarily unavailable; retry later"
    );
    assert!(!a.body.to_string().contains("unreachable"));
    // Exempt routes and super admins never ask the limiter.
    let root = w.token("platform", "root", "super_admin", &[]);
    let r = Req::get("/v1/me")
        .bearer(&root)
        .header("x-request-id", "down-2");
    let (a, b) = (call_axum(&axum, &r).await, call_actix(&actix, &r).await);
    assert_eq!(a, b);
    assert_eq!(a.status, 200);
}

#[actix_web::test]
async fn extractors_name_the_missing_layer_alike() {
    use tenancy_actix::Tenant as ATenant;
    use tenancy_tower::Tenant as TTenant;
    let axum = Router::new()
        .route(
            "/me",
            axum::routing::get(|_: TTenant| async { "unreachable" }),
        )
        .route(
            "/records",
            axum::routing::get(|_: tenancy_tower::RequirePermission<ReadT>| async {
                "unreachable"
            }),
        );
    let actix = actix_web::test::init_service(
        App::new()
            .route(
                "/me",
                web::get().to(|_: ATenant| async { HttpResponse::Ok().finish() }),
            )
            .route(
                "/records",
                web::get().to(|_: tenancy_actix::RequirePermission<ReadA>| async {
                    HttpResponse::Ok().finish()
                }),
            ),
    )
    .await;
    for (path, extractor) in [("/me", "Tenant"), ("/records", "RequirePermission")] {
        let r = Req::get(path);
        let a = call_axum(&axum, &r).await;
        let b = call_actix(&actix, &r).await;
        assert_problem(&a, 500, "misconfigured");
        assert_eq!(a.status, b.status);
        assert_eq!(a.header("content-type"), b.header("content-type"));
        for s in [&a, &b] {
            let detail = s.body["detail"].as_str().unwrap();
            assert!(detail.contains(extractor), "{detail}");
            assert!(detail.contains("ResolveTenant"), "{detail}");
        }
    }
}

#[actix_web::test]
async fn directory_changes_take_effect_on_the_next_request_alike() {
    let w = World::new();
    let (t1, _, d1) = w.tenancy(false).await;
    let (t2, _, d2) = w.tenancy(false).await;
    let axum = axum_app(t1);
    let actix = actix_app(t2).await;
    let token = w.token("globex", "gina", "user", &["records:read"]);
    let r = Req::get("/v1/me")
        .bearer(&token)
        .header("x-request-id", "m-1");
    let (a, b) = (call_axum(&axum, &r).await, call_actix(&actix, &r).await);
    assert_eq!(a, b);
    assert_eq!(a.body["tier"], "premium");
    assert_eq!(a.header("x-ratelimit-limit"), Some("1500"));

    // Override the user quota, then suspend: each change shows on the next request.
    let globex = TenantId::parse("globex").unwrap();
    for d in [&d1, &d2] {
        let mut s = d.get(&globex).await.unwrap().unwrap();
        s.overrides.user_per_hour = Some(7);
        d.put(&globex, s).await.unwrap();
    }
    let (a, b) = (call_axum(&axum, &r).await, call_actix(&actix, &r).await);
    assert_eq!(a, b);
    assert_eq!(a.header("x-ratelimit-limit"), Some("7"));
    for d in [&d1, &d2] {
        let mut s = d.get(&globex).await.unwrap().unwrap();
        s.status = TenantStatus::Suspended;
        d.put(&globex, s).await.unwrap();
    }
    let (a, b) = (call_axum(&axum, &r).await, call_actix(&actix, &r).await);
    assert_eq!(a, b);
    assert_problem(&a, 403, "tenant-suspended");
}

/// A middleware inside the stack that refuses: axum's answers with a response, actix-web's
/// with an error (actix-web renders it outside the stack). Both answers carry the request id
/// and the rate-limit headers, and both refusals are audited alike.
#[actix_web::test]
async fn an_inner_middlewares_refusal_is_decorated_and_audited_alike() {
    let w = World::new();
    let bob = w.token("acme", "bob", "user", &["records:read"]);
    let (t_axum, audit_axum, _) = w.tenancy(false).await;
    let (t_actix, audit_actix, _) = w.tenancy(false).await;
    let axum = Router::new()
        .route("/v1/records/{id}", axum::routing::get(|| async { "never" }))
        .layer(axum::middleware::from_fn(
            |_: axum::extract::Request, _: axum::middleware::Next| async {
                (http::StatusCode::FORBIDDEN, "inner refusal")
            },
        ))
        .layer(tenancy_tower::TenancyLayer::new(t_axum));
    let actix = actix_web::test::init_service(
        App::new()
            .route("/v1/records/{id}", web::get().to(|| async { "never" }))
            .wrap_fn(|_, _| async {
                Err::<actix_web::dev::ServiceResponse, _>(actix_web::error::ErrorForbidden(
                    "inner refusal",
                ))
            })
            .wrap(tenancy_actix::TenancyMiddleware::new(t_actix)),
    )
    .await;
    let req = Req::get("/v1/records/42")
        .bearer(&bob)
        .header("x-request-id", "c-inner");
    let a = call_axum(&axum, &req).await;
    // As actix-web's server answers: an error that reaches it is rendered by the error.
    let b = {
        let mut t = actix_web::test::TestRequest::get().uri(&req.path);
        for (k, v) in &req.headers {
            t = t.append_header((k.as_str(), v.as_str()));
        }
        let e = actix_web::test::try_call_service(&actix, t.to_request())
            .await
            .expect_err("the inner middleware's error");
        let resp = e.error_response();
        let (status, headers) = (resp.status().as_u16(), actix_headers(resp.headers()));
        let body = actix_web::body::to_bytes(resp.into_body()).await.unwrap();
        seen(status, headers, &body)
    };
    assert_eq!(a.status, 403);
    assert_eq!(
        (a.status, &a.body),
        (b.status, &b.body),
        "axum and actix differ"
    );
    for (name, value) in &a.headers {
        if name != "content-length" {
            assert_eq!(b.headers.get(name), Some(value), "{name}");
        }
    }
    assert_eq!(
        a.headers.get("x-request-id").map(String::as_str),
        Some("c-inner")
    );
    assert_limited(&b);
    let (ea, eb) = (audit_axum.events(), audit_actix.events());
    assert_eq!(audit_summary(&ea), audit_summary(&eb));
    assert!(
        ea.iter().any(|e| e.reason.as_deref() == Some("status_403")),
        "{:?}",
        audit_summary(&ea)
    );
}
