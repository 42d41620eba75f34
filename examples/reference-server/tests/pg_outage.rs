//! Stopping a private PostgreSQL cluster under the server: `/health` turns 503 naming the
//! database, requests fail closed, audit events accepted meanwhile wait in the spool, and
//! everything recovers when the database returns, with no audit event lost.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Harness;
use tenancy_core::{AuditEvent, AuditSink as _, Outcome, TenantId};

fn pg_bin(name: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop()
}

fn as_postgres(bin: &Path, args: &[&str]) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Cluster {
    pg_ctl: PathBuf,
    data: String,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn create() -> Option<Self> {
        let (Some(initdb), Some(pg_ctl)) = (pg_bin("initdb"), pg_bin("pg_ctl")) else {
            tenancy_tests::service_missing("PostgreSQL binaries (initdb)", &"not installed");
            return None;
        };
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        let data = dir.path().join("data").to_string_lossy().into_owned();
        if !ok || !as_postgres(&initdb, &["-D", &data, "-A", "trust", "-U", "postgres"]) {
            tenancy_tests::service_missing("a private PostgreSQL cluster", &"initdb failed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let c = Self {
            pg_ctl,
            data,
            port,
            _dir: dir,
        };
        c.start().then_some(c)
    }

    fn start(&self) -> bool {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port, self.data
        );
        let log = format!("{}/log", self.data);
        as_postgres(
            &self.pg_ctl,
            &["-D", &self.data, "-o", &opts, "-l", &log, "-w", "start"],
        )
    }

    fn stop(&self) -> bool {
        as_postgres(
            &self.pg_ctl,
            &["-D", &self.data, "-m", "immediate", "-w", "stop"],
        )
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

async fn wait_until(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ok().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_turns_health_503_and_loses_no_audit_event() {
    let Some(cluster) = Cluster::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::memory_config(dir.path());
    config.database_url = Some(cluster.url());
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
    assert_eq!(created.status, 201, "{}", created.text);

    assert!(cluster.stop(), "stop the private cluster");
    wait_until("/health to report the database down", async || {
        let r = h.send("GET", "/health", None, None, &[]).await;
        r.status == 503 && r.body["components"]["database"]["status"] == "down"
    })
    .await;
    let during = h.get("/v1/records", &alice).await;
    common::assert_problem(&during, 503);
    // Events accepted while the store is down go to the spool, in order.
    let acme = TenantId::parse("acme").unwrap();
    for i in 0..25 {
        h.app()
            .audit()
            .record(
                AuditEvent::new(acme.clone(), "test.outage", Outcome::Success).with_detail("n", i),
            )
            .await
            .unwrap();
    }

    assert!(cluster.start(), "restart the private cluster");
    wait_until("/health to recover", async || {
        h.send("GET", "/health", None, None, &[]).await.status == 200
    })
    .await;
    wait_until("requests to succeed again", async || {
        h.get("/v1/records", &alice).await.status == 200
    })
    .await;
    wait_until("the spool to replay", async || {
        h.app().audit().flush().await.is_ok()
    })
    .await;
    let r = h.get("/v1/tenant/audit?limit=500", &alice).await;
    let during: Vec<i64> = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "test.outage")
        .map(|e| e["details"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(
        during.len(),
        25,
        "every event accepted during the outage is stored"
    );
    let mut sorted = during.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..25).collect::<Vec<_>>());
    let root = h.login("platform", "root").await;
    let v = h.get("/v1/admin/audit/verify?tenant=acme", &root).await;
    assert_eq!(v.body["valid"], true, "{}", v.text);
    h.stop().await;
}
