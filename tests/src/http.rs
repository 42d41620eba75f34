//! A small HTTP/1 client for tests that talk to a server over loopback.
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! let client = tenancy_tests::http::Client::new("http://127.0.0.1:8080", "axum");
//! let reply = client.send("GET", "/health", None, None, &[]).await;
//! assert_eq!(reply.status, 200);
//! assert_eq!(reply.body["status"], "ok");
//! # }
//! ```

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// An answer: status, headers, body as JSON (`Null` when not JSON) and as text.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: http::HeaderMap,
    /// The body parsed as JSON, or `Null`.
    pub body: Value,
    /// The body as text (lossy UTF-8).
    pub text: String,
}

impl Reply {
    /// A header's value, when present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A client bound to one server's base URL; `label` names the server in panic messages.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    label: String,
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client for `base` (`http://host:port`, no trailing slash).
    pub fn new(base: impl Into<String>, label: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            label: label.into(),
            // Idle pooled connections are dropped soon, so a restarted server is reached afresh.
            inner: HyperClient::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(5))
                .build_http(),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and reads the whole answer (30 s at most). `token` becomes a bearer
    /// `Authorization`; a body is sent as `application/json` unless `headers` names another
    /// content type.
    ///
    /// # Panics
    /// When the server does not answer in time or the request cannot be sent.
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
        if body.is_some()
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .unwrap_or_else(|e| panic!("{} {method} {path}: invalid request: {e}", self.label));
        let resp = tokio::time::timeout(Duration::from_secs(30), self.inner.request(req))
            .await
            .unwrap_or_else(|_| panic!("{} {method} {path}: no answer in 30 s", self.label))
            .unwrap_or_else(|e| panic!("{} {method} {path}: {e}", self.label));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{} {method} {path}: body: {e}", self.label))
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }
}
