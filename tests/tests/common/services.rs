//! Dedicated Redis and PostgreSQL instances that a test may kill and bring back: a
//! `redis-server` on a free port, and a private PostgreSQL cluster (initdb/pg_ctl run as
//! the `postgres` OS user when the test runs as root) in a temporary directory. Never the
//! shared servers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_port(port: u16, up: bool, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        let open = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(200),
        )
        .is_ok();
        if open == up {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `program` can be run.
fn available(program: impl AsRef<std::ffi::OsStr>) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `redis-server` of this test's own, with an append-only file so that what it held
/// survives a kill.
#[derive(Debug)]
pub struct RedisInstance {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisInstance {
    /// Starts one, or returns `None` (after saying why; a panic when services are required)
    /// when `redis-server` is not installed.
    pub fn start() -> Option<Self> {
        if !available("redis-server") {
            tenancy_tests::service_missing("redis-server (for the outage tests)", &"not on PATH");
            return None;
        }
        let mut r = Self {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        r.resume();
        Some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no chance to clean up).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(
            wait_port(self.port, false, Duration::from_secs(5)),
            "redis still up"
        );
    }

    /// Starts the server again on the same port and data directory.
    pub fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        assert!(
            wait_port(self.port, true, Duration::from_secs(10)),
            "redis-server did not come up on {}",
            self.port
        );
    }
}

impl Drop for RedisInstance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A PostgreSQL server program: on the `PATH`, else the newest of Debian's
/// `/usr/lib/postgresql/<version>/bin`.
fn pg_program(name: &str) -> Option<PathBuf> {
    if available(name) {
        return Some(PathBuf::from(name));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let p = e.path().join("bin").join(name);
            p.exists().then_some((v, p))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

/// A private PostgreSQL cluster: its own data directory, port and socket directory.
#[derive(Debug)]
pub struct PgCluster {
    port: u16,
    root: tempfile::TempDir,
    as_postgres: bool,
    initdb: PathBuf,
    pg_ctl: PathBuf,
}

impl PgCluster {
    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn command(&self, program: &Path) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    /// Creates and starts a cluster, or returns `None` (after saying why; a panic when
    /// services are required) when the PostgreSQL programs are not installed.
    pub fn start() -> Option<Self> {
        let (Some(initdb), Some(pg_ctl)) = (pg_program("initdb"), pg_program("pg_ctl")) else {
            tenancy_tests::service_missing(
                "initdb/pg_ctl (for the outage tests)",
                &"not on PATH nor in /usr/lib/postgresql/*/bin",
            );
            return None;
        };
        // PostgreSQL refuses to run as root: as root, run it as the `postgres` user.
        let root_user = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let root = tempfile::Builder::new()
            .prefix("tenancy-pg-")
            .tempdir()
            .expect("temp dir");
        let cluster = Self {
            port: free_port(),
            root,
            as_postgres: root_user,
            initdb,
            pg_ctl,
        };
        if root_user {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(cluster.root.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the cluster directory to postgres");
        }
        let out = cluster
            .command(&cluster.initdb)
            .arg("-D")
            .arg(cluster.data())
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.resume();
        Some(cluster)
    }

    /// The administrative URL (database `postgres`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn log(&self) -> PathBuf {
        self.root.path().join("log")
    }

    /// Starts (again) on the same port and data.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c max_connections=60",
            self.port,
            self.root.path().display()
        );
        let out = self
            .command(&self.pg_ctl)
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log())
            .args(["-o", &options, "-w", "-t", "30", "start"])
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
        assert!(
            wait_port(self.port, true, Duration::from_secs(10)),
            "postgres not up"
        );
    }

    /// Stops the server in immediate mode: every backend is killed, as in a crash.
    pub fn kill(&self) {
        let _ = self.stop("immediate");
        assert!(
            wait_port(self.port, false, Duration::from_secs(10)),
            "postgres still up"
        );
    }

    fn stop(&self, mode: &str) -> bool {
        self.command(&self.pg_ctl)
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
    }
}
