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

/// A TCP relay in front of a Redis server, standing in for the network between the pool and
/// Redis: new connections can be pointed at another server (a fail-over behind a DNS name or a
/// load balancer), and the connections already carried can be cut silently (the peer host
/// vanished: no reply, no reset, the socket stays open). Stopped when dropped.
pub struct Relay {
    port: u16,
    state: std::sync::Arc<RelayState>,
    task: tokio::task::JoinHandle<()>,
}

struct RelayState {
    target: std::sync::Mutex<u16>,
    /// Connections accepted under an older generation are cut.
    generation: std::sync::atomic::AtomicU64,
    /// How long a new connection waits before it reaches its server, in milliseconds.
    delay_ms: std::sync::atomic::AtomicU64,
}

impl Relay {
    /// Relays to `127.0.0.1:<target>`.
    pub async fn start(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let state = std::sync::Arc::new(RelayState {
            target: std::sync::Mutex::new(target),
            generation: std::sync::atomic::AtomicU64::new(0),
            delay_ms: std::sync::atomic::AtomicU64::new(0),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            // Dropped with the accept loop, which aborts every relayed connection.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let st = st.clone();
                conns.spawn(async move {
                    let generation = st.generation.load(std::sync::atomic::Ordering::SeqCst);
                    let target = *st.target.lock().unwrap();
                    let delay = st.delay_ms.load(std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let Ok(upstream) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (ur, uw) = upstream.into_split();
                    tokio::join!(pump(cr, uw, generation, &st), pump(ur, cw, generation, &st));
                });
            }
        });
        Self { port, state, task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// New connections go to `127.0.0.1:<target>`; open ones keep their server.
    pub fn point_to(&self, target: u16) {
        *self.state.target.lock().unwrap() = target;
    }

    /// New connections reach their server only after `delay` (a slow network or TLS
    /// handshake): nothing either side sends passes before.
    pub fn delay_connections(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state
            .delay_ms
            .store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every connection open now swallows what either side sends, without closing: a request
    /// on it never gets a reply. New connections are relayed normally.
    pub fn cut_silently(&self) {
        self.state
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    generation: u64,
    state: &RelayState,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if state.generation.load(std::sync::atomic::Ordering::SeqCst) != generation {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
