//! The `tenancy-actix-server` binary: starts from `TENANCY_*` variables, serves, and on
//! SIGTERM or SIGINT stops, drains the audit queue into the JSONL file and exits 0.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Starts the binary on a port the system picks, and returns it with that port once the
/// binary says it listens. (A port picked beforehand could be taken by someone else before the
/// binary binds it, and a connect that succeeds may reach that someone instead.)
fn start(dir: &std::path::Path) -> (Child, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenancy-actix-server"))
        .env("TENANCY_ENV", "test")
        .env("TENANCY_LISTEN", "127.0.0.1:0")
        .env("TENANCY_DATA_DIR", dir)
        .env_remove("TENANCY_DATABASE_URL")
        .env_remove("TENANCY_REDIS_URL")
        .env_remove("TENANCY_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the whole output, so that the binary never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on http://").nth(1) {
                let addr = addr.split_whitespace().next().unwrap_or_default();
                let _ = tx.send(addr.parse::<std::net::SocketAddr>().map(|a| a.port()));
            }
        }
    });
    let port = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(port) => port.unwrap(),
        Err(e) => {
            let _ = child.kill();
            panic!(
                "the server did not say where it listens ({e}): {:?}",
                child.wait()
            );
        }
    };
    (child, port)
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
        let (child, port) = start(dir.path());
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
