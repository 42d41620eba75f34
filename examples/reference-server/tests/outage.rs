//! Killing a dedicated Redis under the server: `/health` turns 503 naming `redis`,
//! requests fail closed (503, never an unchecked session), and everything recovers when
//! Redis returns, with no audit event lost.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Harness;
use tenancy_server::openapi::{OPERATIONS, statuses};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_redis(port: u16, dir: &std::path::Path) -> Option<Child> {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        Ok(c) => Some(c),
        Err(e) => {
            tenancy_tests::service_missing("redis-server (binary)", &e);
            None
        }
    }
}

async fn wait_until(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if ok().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_turns_health_503_and_recovers() {
    let redis_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let Some(mut redis) = start_redis(port, redis_dir.path()) else {
        return;
    };
    let url = format!("redis://127.0.0.1:{port}");
    wait_until("redis to start", async || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let mut config = common::memory_config(dir.path());
    config.redis_url = Some(url);
    config.health_interval = Duration::from_secs(1);
    let h = Harness::start(config, dir).await;
    let alice = h.login("acme", "alice").await;
    let created = h
        .post(
            "/v1/records",
            Some(&alice),
            &serde_json::json!({"title": "before", "body": ""}),
        )
        .await;
    assert_eq!(created.status, 201);

    redis.kill().unwrap();
    redis.wait().unwrap();
    wait_until("/health to report redis down", async || {
        let r = h.send("GET", "/health", None, None, &[]).await;
        r.status == 503 && r.body["components"]["redis"]["status"] == "down"
    })
    .await;
    let health = h.send("GET", "/health", None, None, &[]).await;
    assert_eq!(health.body["status"], "degraded");
    assert_eq!(health.body["components"]["audit"]["status"], "up");
    // Sessions live in Redis: a token cannot be checked, so it is not honoured (503, not 200).
    let during = h.get("/v1/records", &alice).await;
    common::assert_problem(&during, 503);
    assert!(
        !during.text.contains("127.0.0.1"),
        "5xx bodies name no cause"
    );
    // Every operation answers as the OpenAPI document says: each one that needs a token
    // with a 503 (its session cannot be checked).
    for &(method, path, needs_token, _) in OPERATIONS {
        let concrete = path
            .replace("{id}", "00000000000000000000000000000000")
            .replace("{tenant}", "acme");
        let r = h
            .send(
                &method.to_uppercase(),
                &concrete,
                Some(&alice),
                Some("{}"),
                &[],
            )
            .await;
        let documented = statuses(method, path);
        assert!(
            documented.contains(&r.status),
            "{method} {path} with Redis down: {} is not documented ({documented:?}): {}",
            r.status,
            r.text
        );
        if needs_token {
            common::assert_problem(&r, 503);
        }
    }

    let Some(mut again) = start_redis(port, redis_dir.path()) else {
        return;
    };
    wait_until("/health to recover", async || {
        h.send("GET", "/health", None, None, &[]).await.status == 200
    })
    .await;
    // The session survived (append-only file), and requests work again.
    wait_until("requests to succeed again", async || {
        h.get("/v1/records", &alice).await.status == 200
    })
    .await;
    let after = h
        .post(
            "/v1/records",
            Some(&alice),
            &serde_json::json!({"title": "after", "body": ""}),
        )
        .await;
    assert_eq!(after.status, 201);

    // Every request, including the refused one, is in the trail, which verifies.
    let actions = h.actions(&alice).await;
    let creates = actions
        .iter()
        .filter(|(a, o)| a == "records.create" && o == "success")
        .count();
    assert_eq!(creates, 2, "{actions:?}");
    let root = h.login("platform", "root").await;
    let v = h.get("/v1/admin/audit/verify?tenant=acme", &root).await;
    assert_eq!(v.body["valid"], true, "{}", v.text);
    h.stop().await;
    again.kill().ok();
    again.wait().ok();
}
