//! The `tenancy-actix-server` binary: starts from `TENANCY_*` variables, serves, and on
//! SIGTERM or SIGINT stops, drains the audit queue into the JSONL file and exits 0.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// One HTTP/1.1 exchange over a fresh connection: `(status, body)`.
fn call(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn start(port: u16, dir: &std::path::Path) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_tenancy-actix-server"))
        .env("TENANCY_ENV", "test")
        .env("TENANCY_LISTEN", format!("127.0.0.1:{port}"))
        .env("TENANCY_DATA_DIR", dir)
        .env_remove("TENANCY_DATABASE_URL")
        .env_remove("TENANCY_REDIS_URL")
        .env_remove("TENANCY_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn wait(mut child: Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the server did not stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serves_then_stops_on_a_signal_with_the_audit_trail_flushed() {
    for signal in ["-TERM", "-INT"] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = start(port, dir.path());
        let (status, body) = call(
            port,
            "POST",
            "/v1/auth/login",
            None,
            r#"{"tenant_id":"acme","username":"alice","password":"password"}"#,
        );
        assert_eq!(status, 200, "{body}");
        let token = body
            .split("\"access_token\":\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_owned();
        for i in 0..5 {
            let (status, body) = call(
                port,
                "POST",
                "/v1/records",
                Some(&token),
                &format!(r#"{{"title":"r{i}","body":""}}"#),
            );
            assert_eq!(status, 201, "{body}");
        }
        let killed = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(killed.success());
        let status = wait(child);
        assert!(status.success(), "{signal}: exit {status:?}");
        let trail = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        let creates = trail
            .lines()
            .filter(|l| l.contains("records.create"))
            .count();
        assert_eq!(creates, 5, "{signal}: every accepted event is in the file");
        assert!(trail.contains("auth.login"));
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "stopped listening"
        );
    }
}

#[test]
fn a_bad_setting_is_named_and_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_tenancy-actix-server"))
        .env("TENANCY_ENV", "prod")
        .env_remove("TENANCY_JWT_SECRET")
        .env_remove("TENANCY_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TENANCY_JWT_SECRET"), "{err}");
}
