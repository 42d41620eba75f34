//! Test support: a server started in-process on 127.0.0.1:0 and a small HTTP client.

#![allow(dead_code, unreachable_pub)]

pub mod scenario;

use serde_json::Value;
use tenancy_server::{App, Config, Server};
use tenancy_tests::http::Client;
pub use tenancy_tests::http::Reply;

pub struct Harness {
    pub server: Option<Server>,
    pub base: String,
    client: Client,
    pub dir: tempfile::TempDir,
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
            client: Client::new(base.clone(), "tenancy-server"),
            base,
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
        self.client.send(method, path, token, body, headers).await
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

    /// Creates `n` records (`r0`, `r1`, ...) with `token`.
    pub async fn create_records(&self, token: &str, n: usize) {
        for i in 0..n {
            let r = self
                .post(
                    "/v1/records",
                    Some(token),
                    &serde_json::json!({"title": format!("r{i}"), "body": ""}),
                )
                .await;
            assert_eq!(r.status, 201, "{}", r.text);
        }
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

/// The `tenancy-server` binary, inheriting no `TENANCY_*` variable.
pub fn bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tenancy-server"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TENANCY_") {
            c.env_remove(k);
        }
    }
    c
}

/// The token `tenancy-server token --tenant T --user U --role R` prints with the settings
/// `vars`.
pub fn mint_with_cli(vars: &[(&str, String)], tenant: &str, user: &str, role: &str) -> String {
    let out = bin()
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["token", "--tenant", tenant, "--user", user, "--role", role])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
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
