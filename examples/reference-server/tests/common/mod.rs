//! Test support: a server started in-process on 127.0.0.1:0 and a small HTTP client.

#![allow(dead_code, unreachable_pub)]

pub mod scenario;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tenancy_server::{App, Config, Server};

pub struct Harness {
    pub server: Option<Server>,
    pub base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    pub dir: tempfile::TempDir,
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn memory_config(dir: &std::path::Path) -> Config {
    Config::for_tests(dir)
}

impl Harness {
    pub async fn start(config: Config, dir: tempfile::TempDir) -> Self {
        let app = App::build(config).await.expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = tenancy_server::serve(app, listener).await.unwrap();
        let base = format!("http://{}", server.local_addr());
        Self {
            server: Some(server),
            base,
            client: Client::builder(TokioExecutor::new()).build_http(),
            dir,
        }
    }

    pub async fn memory() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = memory_config(dir.path());
        Self::start(config, dir).await
    }

    pub fn app(&self) -> &App {
        self.server.as_ref().unwrap().app()
    }

    /// Shuts the server down gracefully and hands back its data directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(s) = self.server.take() {
            s.shutdown().await.expect("clean shutdown");
        }
        self.dir
    }

    /// Shuts down after the audit file was altered behind the server's back: the store may
    /// refuse to append to a file it no longer recognises, leaving events in the spool, so
    /// the shutdown may report them as not yet stored (and only that).
    pub async fn stop_after_tamper(mut self) {
        if let Some(s) = self.server.take() {
            match s.shutdown().await {
                Ok(()) | Err(tenancy_server::Error::Unavailable(_)) => {}
                Err(e) => panic!("unexpected shutdown error: {e}"),
            }
        }
    }

    /// Sends a request; `body` is sent as `application/json` when given.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("answer in time")
            .expect("request sent");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send("GET", path, Some(token), None, &[]).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        self.send("POST", path, token, Some(&body.to_string()), &[])
            .await
    }

    pub async fn put(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.send("PUT", path, Some(token), Some(&body.to_string()), &[])
            .await
    }

    /// Logs in and returns the whole token answer.
    pub async fn login_pair(&self, tenant: &str, user: &str) -> Value {
        let r = self
            .post(
                "/v1/auth/login",
                None,
                &serde_json::json!({"tenant_id": tenant, "username": user, "password": "password"}),
            )
            .await;
        assert_eq!(r.status, 200, "login {tenant}/{user}: {}", r.text);
        r.body
    }

    pub async fn login(&self, tenant: &str, user: &str) -> String {
        self.login_pair(tenant, user).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Every action recorded in `tenant`'s audit trail, newest first (read as `admin`).
    pub async fn actions(&self, admin_token: &str) -> Vec<(String, String)> {
        let r = self.get("/v1/tenant/audit?limit=500", admin_token).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["action"].as_str().unwrap().to_owned(),
                    e["outcome"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

/// Asserts a problem+json answer with `status`.
pub fn assert_problem(r: &Reply, status: u16) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{}",
        r.text
    );
    assert_eq!(r.body["status"], status);
    for k in ["type", "title", "detail"] {
        assert!(r.body[k].is_string(), "{k} in {}", r.text);
    }
    assert!(r.header("x-request-id").is_some());
}
