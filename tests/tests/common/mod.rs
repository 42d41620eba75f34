//! Support for the cross-server contract suite: the axum and the actix-web servers started
//! in-process on `127.0.0.1:0`, a small HTTP client, the table of contract cases and the
//! runner that plays it against a server and records what came back.

#![allow(dead_code, unreachable_pub)]

pub mod cases;
pub mod services;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tenancy_server::{App, Config};
use tenancy_tests::http::Client;
pub use tenancy_tests::http::Reply;

/// Which framework serves the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `tenancy-server` (axum).
    Axum,
    /// `tenancy-actix-server` (actix-web).
    Actix,
}

impl Flavor {
    pub const BOTH: [Flavor; 2] = [Flavor::Axum, Flavor::Actix];

    pub fn name(self) -> &'static str {
        match self {
            Self::Axum => "axum",
            Self::Actix => "actix",
        }
    }
}

enum Running {
    Axum(tenancy_server::Server),
    Actix(tenancy_actix_server::Server),
}

/// One server under test and a client for it.
pub struct Harness {
    pub flavor: Flavor,
    running: Option<Running>,
    app: App,
    pub base: String,
    client: Client,
    pub dir: tempfile::TempDir,
}

/// The test configuration (environment `test`, data in `dir`) with `edit` applied.
pub fn config(dir: &Path, edit: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::for_tests(dir);
    edit(&mut c);
    c
}

impl Harness {
    /// Builds the app from `config` and serves it with `flavor` on `127.0.0.1:0`.
    pub async fn start(flavor: Flavor, config: Config, dir: tempfile::TempDir) -> Self {
        let app = App::build(config).await.expect("the app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let (running, addr) = match flavor {
            Flavor::Axum => {
                let s = tenancy_server::serve(app.clone(), listener)
                    .await
                    .expect("axum server starts");
                let a = s.local_addr();
                (Running::Axum(s), a)
            }
            Flavor::Actix => {
                let s = tenancy_actix_server::serve(app.clone(), listener)
                    .await
                    .expect("actix server starts");
                let a = s.local_addr();
                (Running::Actix(s), a)
            }
        };
        Self {
            flavor,
            running: Some(running),
            app,
            base: format!("http://{addr}"),
            client: Client::new(format!("http://{addr}"), flavor.name()),
            dir,
        }
    }

    /// A server in memory mode with a fresh data directory.
    pub async fn memory(flavor: Flavor) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let c = config(dir.path(), |_| {});
        Self::start(flavor, c, dir).await
    }

    pub fn app(&self) -> &App {
        &self.app
    }

    /// Graceful shutdown (the data directory stays until the harness is dropped); returns
    /// whether the audit queue drained completely.
    pub async fn stop(&mut self) -> bool {
        match self.running.take() {
            Some(Running::Axum(s)) => s.shutdown().await.is_ok(),
            Some(Running::Actix(s)) => s.shutdown().await.is_ok(),
            None => true,
        }
    }

    /// Sends a request; a body is sent with `content-type: application/json` unless
    /// `headers` names another.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.client.send(method, path, token, body, headers).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.send("GET", path, token, None, &[]).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        self.send("POST", path, token, Some(&body.to_string()), &[])
            .await
    }

    /// Logs in and returns `(access, refresh)`.
    pub async fn login(&self, tenant: &str, user: &str) -> (String, String) {
        let r = self
            .post(
                "/v1/auth/login",
                None,
                &serde_json::json!({"tenant_id": tenant, "username": user, "password": "password"}),
            )
            .await;
        assert_eq!(
            r.status,
            200,
            "{} login {tenant}/{user}: {}",
            self.flavor.name(),
            r.text
        );
        (
            r.body["access_token"]
                .as_str()
                .expect("access token")
                .to_owned(),
            r.body["refresh_token"]
                .as_str()
                .expect("refresh token")
                .to_owned(),
        )
    }

    /// An access token from the server's own issuer, with the given permissions and no
    /// session (so it does not depend on the session store).
    pub fn mint(&self, tenant: &str, user: &str, role: &str, permissions: &[&str]) -> String {
        self.app
            .issuer()
            .expect("the test server issues tokens")
            .access_token(
                &tenant.parse().expect("tenant id"),
                &user.parse().expect("user id"),
                &role.parse().expect("role"),
                &permissions
                    .iter()
                    .map(|p| p.parse().expect("permission"))
                    .collect(),
                None,
            )
            .expect("a token")
    }

    /// As [`Harness::mint`], signed with the server's key but without a `jti` (as a token
    /// from another JWT library may come): it cannot be put on a denylist.
    pub fn mint_without_jti(&self, tenant: &str, user: &str, permissions: &[&str]) -> String {
        let issuer = self.app.issuer().expect("the test server issues tokens");
        let mut claims = issuer
            .claims(
                &tenant.parse().expect("tenant id"),
                &user.parse().expect("user id"),
                &"user".parse().expect("role"),
                &permissions
                    .iter()
                    .map(|p| p.parse().expect("permission"))
                    .collect(),
                None,
            )
            .expect("claims");
        claims.jti = None;
        issuer.sign(&claims).expect("a token")
    }

    /// Polls `/health` until its status is `want` (at most `within`); returns the last answer.
    pub async fn health_until(&self, want: u16, within: Duration) -> Reply {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let r = self.get("/health", None).await;
            if r.status == want || tokio::time::Instant::now() >= deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Asserts a problem+json answer with `status` (and `WWW-Authenticate` on a 401).
#[track_caller]
pub fn assert_problem(who: &str, r: &Reply, status: u16) {
    assert_eq!(r.status, status, "{who}: {}", r.text);
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{who}: {}",
        r.text
    );
    assert_eq!(r.body["status"], status, "{who}: {}", r.text);
    for k in ["type", "title", "detail"] {
        assert!(r.body[k].is_string(), "{who}: `{k}` in {}", r.text);
    }
    if status == 401 {
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{who}");
    }
}

/// Variables a case table reads and writes (`{name}` in paths, bodies and headers).
pub type Vars = HashMap<String, String>;

/// Replaces every `{name}` whose name is a variable.
pub fn fill(s: &str, vars: &Vars) -> String {
    let mut out = s.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// What one case gave, reduced to what the contract fixes (no tokens, ids, times or
/// counters that move with the clock), for comparing servers.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub case: String,
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

/// Headers compared by value.
const SAME_VALUE: &[&str] = &[
    "allow",
    "content-type",
    "www-authenticate",
    "x-ratelimit-limit",
    "ratelimit-policy",
];
/// Headers compared by presence (their values move with the clock).
const SAME_PRESENCE: &[&str] = &[
    "x-request-id",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit",
    "retry-after",
    "location",
];
/// Body fields whose values differ from run to run.
const VOLATILE: &[&str] = &[
    "access_token",
    "refresh_token",
    "id",
    "session_id",
    "request_id",
    "created_at",
    "bypass_until",
    "usage",
    "event_id",
    "occurred_at",
    "seq",
    "hash",
    "prev_hash",
    "next_before",
    "latency_ms",
    "events",
];

fn mask(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = if VOLATILE.contains(&k.as_str()) {
                        Value::String(format!("<{}>", kind(v)))
                    } else {
                        mask(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(mask).collect()),
        other => other.clone(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Reduces a reply for comparison.
pub fn entry(case: &str, r: &Reply, sent_request_id: Option<&str>) -> Entry {
    let mut headers = BTreeMap::new();
    for name in SAME_VALUE {
        if let Some(v) = r.header(name) {
            headers.insert((*name).to_owned(), v.to_owned());
        }
    }
    for name in SAME_PRESENCE {
        if r.header(name).is_some() {
            headers.insert((*name).to_owned(), "<present>".to_owned());
        }
    }
    if let Some(sent) = sent_request_id {
        headers.insert(
            "x-request-id".to_owned(),
            if r.header("x-request-id") == Some(sent) {
                "<echoed>".to_owned()
            } else {
                "<replaced>".to_owned()
            },
        );
    }
    let body = if r.body.is_null() && !r.text.is_empty() && !r.text.starts_with('#') {
        Value::String(r.text.clone())
    } else if r.text.starts_with('#') {
        // Prometheus text: the series move with every request.
        Value::String("<metrics>".to_owned())
    } else {
        mask(&r.body)
    };
    Entry {
        case: case.to_owned(),
        status: r.status,
        headers,
        body,
    }
}

/// Asserts that the servers' transcripts match case by case.
#[track_caller]
pub fn assert_same(a: (&str, &[Entry]), b: (&str, &[Entry])) {
    assert_eq!(
        a.1.len(),
        b.1.len(),
        "{} ran {} cases, {} ran {}",
        a.0,
        a.1.len(),
        b.0,
        b.1.len()
    );
    let mut diffs = Vec::new();
    for (x, y) in a.1.iter().zip(b.1) {
        if x != y {
            diffs.push(format!(
                "case {:?}:\n  {}: {} {:?} {}\n  {}: {} {:?} {}",
                x.case, a.0, x.status, x.headers, x.body, b.0, y.status, y.headers, y.body
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "the servers differ:\n{}",
        diffs.join("\n")
    );
}
