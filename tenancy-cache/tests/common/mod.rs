//! Test support: the shared Redis, the local Redis Cluster, and dedicated throw-away servers.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tenancy_cache::keys::KeySpace;
use tenancy_cache::{RedisConfig, RedisPool};

/// The default addresses of the local cluster started by `.ci/services.d/redis-cluster`.
pub const DEFAULT_CLUSTER_URLS: &str =
    "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003";

pub fn cluster_urls() -> Vec<String> {
    std::env::var("TENANCY_TEST_REDIS_CLUSTER_URLS")
        .unwrap_or_else(|_| DEFAULT_CLUSTER_URLS.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Generous bounds: the test machine is shared with concurrent builds.
pub fn config(c: RedisConfig) -> RedisConfig {
    c.with_response_timeout(Duration::from_secs(5))
        .with_acquire_timeout(Duration::from_secs(5))
        .with_connect_timeout(Duration::from_secs(2))
}

/// The shared single-node Redis with a key space of this test's own.
pub async fn single() -> Option<(RedisPool, KeySpace)> {
    let redis = tenancy_tests::redis().await?;
    let pool = config(RedisConfig::single(redis.url()))
        .connect()
        .await
        .expect("pool on the shared Redis");
    Some((
        pool,
        KeySpace::new(redis.prefix()).expect("prefix is a namespace"),
    ))
}

/// The local Redis Cluster with a key space of this test's own, or `None` (after saying why)
/// when it is unreachable and services are not required.
pub async fn cluster() -> Option<(RedisPool, KeySpace)> {
    let urls = cluster_urls();
    let connect =
        config(RedisConfig::cluster(urls.clone()).with_connect_retries(1, Duration::ZERO))
            .connect();
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(pool)) => {
            assert!(pool.is_cluster());
            let ns = tenancy_tests::unique("c");
            Some((pool, KeySpace::new(&ns).expect("namespace")))
        }
        Ok(Err(e)) => {
            tenancy_tests::service_missing(
                "Redis Cluster (run .ci/services.d/redis-cluster)",
                &format!("{}: {e}", urls.join(",")),
            );
            None
        }
        Err(_) => {
            tenancy_tests::service_missing(
                "Redis Cluster (run .ci/services.d/redis-cluster)",
                &"connect timed out after 10 s",
            );
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A `redis-server` of the test's own on a free loopback port: stopped and restarted by the
/// test, killed when dropped. Never the shared server.
pub struct DedicatedRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl DedicatedRedis {
    /// Starts one, or returns `None` (after saying why) when `redis-server` is not installed
    /// and services are not required.
    pub async fn start() -> Option<Self> {
        let dir = std::env::temp_dir().join(tenancy_tests::unique("tenancy-redis-"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut r = Self {
            port: free_port(),
            dir,
            child: None,
        };
        if let Err(e) = r.spawn() {
            tenancy_tests::service_missing("redis-server (for a dedicated test server)", &e);
            return None;
        }
        r.wait_up().await;
        Some(r)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if ping(&self.url()).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dedicated redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: no persistence).
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().expect("restart redis-server");
        self.wait_up().await;
    }

    /// A plain connection for inspecting the server (`INFO`, `SCRIPT FLUSH`).
    pub async fn admin(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("admin connection")
    }
}

/// A Redis Cluster of the test's own: `n` primaries (no replicas) on free loopback ports,
/// whose nodes the test may freeze (`SIGSTOP`: connections stay open, nothing answers) and
/// thaw; killed when dropped. Never the shared Cluster.
pub struct DedicatedCluster {
    nodes: Vec<(u16, Child)>,
    dir: PathBuf,
}

impl DedicatedCluster {
    /// Starts one and waits for `cluster_state:ok`, or returns `None` (after saying why) when
    /// `redis-server` or `redis-cli` is not installed and services are not required. A node
    /// is not marked failing before 60 s of silence, so a test may freeze one for that long
    /// without the Cluster going down as a whole.
    pub async fn start(n: usize) -> Option<Self> {
        let dir = std::env::temp_dir().join(tenancy_tests::unique("tenancy-cluster-"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut cluster = Self {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..n {
            let port = free_port();
            let node_dir = cluster.dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let spawned = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "60000",
                ])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            match spawned {
                Ok(child) => cluster.nodes.push((port, child)),
                Err(e) => {
                    tenancy_tests::service_missing("redis-server (for a dedicated Cluster)", &e);
                    return None;
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for url in cluster.urls() {
            while !ping(&url).await {
                assert!(Instant::now() < deadline, "{url} did not start");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(cluster.nodes.iter().map(|(p, _)| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        match created {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => {
                tenancy_tests::service_missing("redis-cli (for a dedicated Cluster)", &e);
                return None;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for i in 0..n {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut cluster.node(i).await)
                    .await
                    .expect("CLUSTER INFO");
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the Cluster did not form: {info}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Some(cluster)
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(p, _)| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// A plain connection to node `i`.
    pub async fn node(&self, i: usize) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.nodes[i].0))
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("node connection")
    }

    /// The index of the node serving `key`'s hash slot (asked of node 0: `CLUSTER KEYSLOT`,
    /// then `CLUSTER SLOTS`).
    pub async fn node_of(&self, key: &str) -> usize {
        let mut c = self.node(0).await;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut c)
            .await
            .expect("CLUSTER KEYSLOT");
        let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut c)
            .await
            .expect("CLUSTER SLOTS");
        for range in ranges {
            let redis::Value::Array(parts) = range else {
                continue;
            };
            let int = |v: &redis::Value| match v {
                redis::Value::Int(i) => *i,
                other => panic!("CLUSTER SLOTS: {other:?}"),
            };
            let (start, end) = (int(&parts[0]), int(&parts[1]));
            let redis::Value::Array(primary) = &parts[2] else {
                panic!("CLUSTER SLOTS: {parts:?}");
            };
            let port = int(&primary[1]);
            if (start..=end).contains(&slot) {
                return self
                    .nodes
                    .iter()
                    .position(|(p, _)| i64::from(*p) == port)
                    .expect("a node of this Cluster");
            }
        }
        panic!("slot {slot} is served by no node");
    }

    fn signal(&self, i: usize, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.nodes[i].1.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal}");
    }

    /// Node `i` stops answering: its connections stay open, its replies never come.
    pub fn freeze(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Node `i` answers again.
    pub fn thaw(&self, i: usize) {
        self.signal(i, "-CONT");
    }
}

impl Drop for DedicatedCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            // A frozen node dies of SIGKILL too.
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    redis::cmd("PING")
        .query_async::<String>(&mut c)
        .await
        .is_ok()
}

impl Drop for DedicatedRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `INFO commandstats` as command name -> calls.
pub async fn command_calls(
    conn: &mut redis::aio::MultiplexedConnection,
) -> std::collections::HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

pub use tenancy_tests::relay::Relay;

/// The Redis URL through `relay`.
pub fn relay_url(relay: &Relay) -> String {
    format!("redis://127.0.0.1:{}", relay.port())
}
