//! The connection pool: [`RedisConfig`] (a builder) and [`RedisPool`] (cheap to clone), for
//! one Redis node or a Redis Cluster, with connect and response timeouts, retry with
//! exponential backoff on connect, and a health check (ping latency and pool figures).
//!
//! ```no_run
//! use std::time::Duration;
//! use tenancy_cache::RedisConfig;
//! use tenancy_core::HealthCheck;
//!
//! # #[tokio::main] async fn main() -> Result<(), tenancy_cache::Error> {
//! let pool = RedisConfig::single("redis://127.0.0.1:6379")
//!     .with_pool_size(16)
//!     .with_connect_timeout(Duration::from_millis(500))
//!     .connect()
//!     .await?;
//! let health = pool.check().await;
//! println!("{:?} {:?}", health.status, health.figures);
//!
//! let cluster = RedisConfig::cluster(["redis://127.0.0.1:7001", "redis://127.0.0.1:7002"])
//!     .connect()
//!     .await?;
//! assert!(cluster.is_cluster());
//! # Ok(()) }
//! ```
//!
//! The pool is a `bb8` pool over multiplexed connections. A command borrows a pooled
//! connection only to clone its handle, so concurrent commands share the pooled sockets
//! (pipelined by the `redis` crate) instead of queueing for a checkout. A connection in use is
//! not pinged when it is checked out (that would double the round trips of every rate-limit
//! decision); instead a connection whose command fails with a connection error is marked
//! broken, the pool drops it, and the next checkout opens a fresh one. A one-node connection
//! is pinged before a command uses it, and replaced when the ping fails, in two cases: it sat
//! unused for longer than [`RedisConfig::with_idle_check_after`] (15 s by default: a server's
//! or a proxy's idle timeout may have closed it), or another connection of the pool broke
//! since it was last taken (a Redis restart closes them all). Without the ping the first
//! command on each closed connection would fail, and a failed command cannot safely be sent
//! again: it may have run before the socket broke. After a restart, the one command that
//! finds the first closed connection still fails. So is a connection
//! whose server answers `READONLY` or `MASTERDOWN`: after a fail-over the old primary is a
//! replica, and only a new connection (to an address that now resolves to the new primary)
//! can write again; keeping the old one would fail every write while `PING` still answers.
//! On a Cluster a timeout does not replace the handle: it comes from one node, the handle
//! (which reconnects its nodes itself) keeps serving the others, and a new handle would wait
//! on the silent node too (the rate limiter's circuit breakers are per hash slot for the
//! same reason).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, Pipeline, RedisError, Value};
use tenancy_core::{Health, HealthCheck, HealthStatus};

use crate::error::{Error, Result};

/// Default number of pooled connections.
///
/// Why this default: each connection is multiplexed and shared by concurrent commands, so a
/// few carry tens of thousands of requests per second; a small pool keeps Redis's client
/// count low when many instances share it.
pub const DEFAULT_POOL_SIZE: u32 = 4;
/// Default bound on opening one TCP connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default bound on waiting for one reply.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Default bound on waiting for a pooled connection.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time a one-node connection may sit unused before it is pinged when next taken
/// ([`RedisConfig::with_idle_check_after`]).
///
/// Why this default: the pool hands its connections out in turn, so with a few connections a
/// service of a few commands a second leaves each unused for a second or more, and a shorter
/// window would ping before most of its commands. Idle timeouts that close connections (a
/// server's `timeout`, a proxy's or a load balancer's) are 30 s and more; a restart is found
/// by the first connection that breaks, whatever the window.
pub const DEFAULT_IDLE_CHECK_AFTER: Duration = Duration::from_secs(15);

enum Target {
    Single(Client),
    Cluster(Box<ClusterClient>),
}

/// How to reach Redis and how to pool connections; [`RedisConfig::connect`] builds the pool.
#[derive(Clone)]
pub struct RedisConfig {
    urls: Vec<String>,
    cluster: bool,
    pool_size: u32,
    min_idle: Option<u32>,
    connect_timeout: Duration,
    response_timeout: Duration,
    acquire_timeout: Duration,
    idle_check_after: Duration,
    connect_attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry passwords: show only how many there are.
        f.debug_struct("RedisConfig")
            .field("nodes", &self.urls.len())
            .field("cluster", &self.cluster)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("idle_check_after", &self.idle_check_after)
            .field("connect_attempts", &self.connect_attempts)
            .finish()
    }
}

impl RedisConfig {
    fn new(urls: Vec<String>, cluster: bool) -> Self {
        Self {
            urls,
            cluster,
            pool_size: DEFAULT_POOL_SIZE,
            min_idle: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            idle_check_after: DEFAULT_IDLE_CHECK_AFTER,
            connect_attempts: 3,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        }
    }

    /// One Redis server (`redis://host:port/db`, `rediss://` for TLS when the `redis` crate is
    /// built with it).
    pub fn single(url: impl Into<String>) -> Self {
        Self::new(vec![url.into()], false)
    }

    /// A Redis Cluster, reached through any of these nodes.
    pub fn cluster<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(urls.into_iter().map(Into::into).collect(), true)
    }

    /// Pooled connections (at least 1).
    pub fn with_pool_size(mut self, n: u32) -> Self {
        self.pool_size = n.max(1);
        self
    }

    /// Connections kept open while idle (none by default: connections open on demand); at
    /// most the pool size.
    pub fn with_min_idle(mut self, n: u32) -> Self {
        self.min_idle = Some(n);
        self
    }

    /// Bound on opening one connection.
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Bound on waiting for one reply; a connection that times out is replaced.
    pub fn with_response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d;
        self
    }

    /// Bound on waiting for a pooled connection (including opening one).
    pub fn with_acquire_timeout(mut self, d: Duration) -> Self {
        self.acquire_timeout = d;
        self
    }

    /// How long a one-node connection may sit unused before it is pinged when next taken
    /// ([`DEFAULT_IDLE_CHECK_AFTER`] by default). A connection whose ping fails is replaced
    /// before the command runs, so that a server or proxy that closed its idle sockets (its
    /// `timeout` setting, an idle timeout) costs no failed command. `Duration::ZERO` pings
    /// before every command that finds its connection unused for a millisecond or more;
    /// `Duration::MAX` pings only the connections taken before another one broke. A Cluster
    /// handle is not pinged: it reconnects its nodes itself, and a ping would reach only one
    /// of them.
    pub fn with_idle_check_after(mut self, d: Duration) -> Self {
        self.idle_check_after = d;
        self
    }

    /// Connect attempts per new connection (at least 1), with exponential backoff starting
    /// at `backoff` and doubling up to one second.
    pub fn with_connect_retries(mut self, attempts: u32, backoff: Duration) -> Self {
        self.connect_attempts = attempts.max(1);
        self.backoff = backoff;
        self
    }

    fn target(&self) -> Result<Target> {
        let bad = |e: RedisError| {
            tracing::debug!(error = %e, "refused Redis URL");
            Error::invalid("redis url", "not a valid Redis URL")
        };
        if self.urls.is_empty() {
            return Err(Error::invalid("redis url", "at least one URL is needed"));
        }
        if self.cluster {
            // Known limitation, deliberately left at the `redis` crate's default of 16 retries:
            // after an I/O error or a timeout on a request it had already written, the Cluster
            // client sends it again, so a script may run twice (the rate-limit script then
            // counts a request twice; a repeated session CREATE finds its own first write and
            // creates a second session under a fresh id, leaving the first one unused; a
            // repeated SAVE or ROTATE reports a conflict or an ended session although the
            // first run succeeded). It cannot
            // be turned off on its own: in `redis` 1.8 one budget, checked in
            // `cluster_async::request::choose_response` (`retry < number_of_retries`), governs
            // every retry alike, so `.retries(0)` would also stop the client from following
            // MOVED and ASK redirects and from waiting out TRYAGAIN, CLUSTERDOWN or a READONLY
            // primary during resharding and fail-over, turning each into a failed call. (With
            // the client's overall response timeout left at its default, the response timeout,
            // a wait longer than that for TRYAGAIN or CLUSTERDOWN ends as a timeout all the
            // same; the redirects are what the retries are kept for.)
            let client = ClusterClient::builder(self.urls.iter().map(String::as_str))
                .connection_timeout(self.connect_timeout)
                .response_timeout(self.response_timeout)
                .build()
                .map_err(bad)?;
            Ok(Target::Cluster(Box::new(client)))
        } else {
            if self.urls.len() != 1 {
                return Err(Error::invalid("redis url", "a single node takes one URL"));
            }
            Ok(Target::Single(
                Client::open(self.urls[0].as_str()).map_err(bad)?,
            ))
        }
    }

    /// Builds the pool without connecting: the first use opens connections. For services that
    /// must start while Redis is down (the rate limiter then follows its failure policies).
    /// Call it inside a Tokio runtime: the pool starts its task that closes idle and old
    /// connections there (outside one, that start panics).
    ///
    /// Errors: [`Error::Invalid`] for a malformed URL.
    pub fn connect_lazy(self) -> Result<RedisPool> {
        let opened = Arc::new(AtomicU64::new(0));
        let manager = Manager {
            target: self.target()?,
            times: Arc::new(PoolTimes::new()),
            opened: opened.clone(),
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            attempts: self.connect_attempts,
            backoff: self.backoff,
            max_backoff: self.max_backoff,
        };
        let last_error = Arc::new(Mutex::new(None));
        let pool = bb8::Pool::builder()
            .max_size(self.pool_size)
            .min_idle(self.min_idle.map(|n| n.min(self.pool_size)))
            .test_on_check_out(false)
            .connection_timeout(self.acquire_timeout)
            .retry_connection(false)
            .idle_timeout(Some(Duration::from_secs(300)))
            .max_lifetime(Some(Duration::from_secs(1800)))
            .error_sink(Box::new(Sink(last_error.clone())))
            .build_unchecked(manager);
        Ok(RedisPool {
            inner: Arc::new(PoolInner {
                pool,
                cluster: self.cluster,
                acquire_timeout: self.acquire_timeout,
                idle_check_after: self.idle_check_after,
                last_error,
                opened,
                connecting: Mutex::new(None),
                timeouts_at_last_check: AtomicU64::new(0),
                pinged: AtomicU64::new(0),
            }),
        })
    }

    /// Builds the pool and opens one connection (with the configured retries), so that a
    /// wrong address fails at start-up.
    ///
    /// Errors: [`Error::Invalid`] for a malformed URL, [`Error::Connect`] when Redis cannot be
    /// reached, [`Error::PoolTimeout`] when it did not answer in time.
    pub async fn connect(self) -> Result<RedisPool> {
        let pool = self.connect_lazy()?;
        pool.ping().await?;
        Ok(pool)
    }
}

/// A connection as the pool holds it: one node or one cluster handle (both multiplexed, so
/// clones share one socket), plus a broken flag, shared by the clones, set when a command fails
/// with a connection error.
#[derive(Clone)]
pub(crate) struct Conn {
    inner: ConnInner,
    state: Arc<ConnState>,
}

/// What the pool's connections share: the instant they count milliseconds from, and how many
/// of them have broken.
#[derive(Debug)]
struct PoolTimes {
    epoch: Instant,
    breaks: AtomicU64,
}

impl PoolTimes {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            breaks: AtomicU64::new(0),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }
}

/// What the pool knows of one connection, shared by the clones of its handle.
struct ConnState {
    /// A command failed in a way that leaves the connection unusable: the pool drops it.
    broken: AtomicBool,
    times: Arc<PoolTimes>,
    /// When the connection was last taken from the pool ([`PoolTimes::ms`]).
    taken_ms: AtomicU64,
    /// [`PoolTimes::breaks`] when it was last taken.
    breaks_seen: AtomicU64,
}

impl ConnState {
    /// A connection opened just now, when the pool had counted `breaks` breaks.
    fn new(times: Arc<PoolTimes>, breaks: u64) -> Self {
        let now = times.ms(Instant::now());
        Self {
            broken: AtomicBool::new(false),
            times,
            taken_ms: AtomicU64::new(now),
            breaks_seen: AtomicU64::new(breaks),
        }
    }

    fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Marks the connection broken, and every other connection of the pool suspect until it
    /// is next taken: what broke this one (a server restart, a fail-over) may have broken
    /// them.
    fn break_now(&self) {
        if !self.broken.swap(true, Ordering::Relaxed) {
            self.times.breaks.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records that the connection is taken at `now`; returns how long it sat unused, and
    /// whether another connection broke since it was last taken (or opened).
    fn take(&self, now: Instant) -> (Duration, bool) {
        let now_ms = self.times.ms(now);
        let last = self.taken_ms.swap(now_ms, Ordering::Relaxed);
        let breaks = self.times.breaks.load(Ordering::Relaxed);
        let seen = self.breaks_seen.swap(breaks, Ordering::Relaxed);
        (
            Duration::from_millis(now_ms.saturating_sub(last)),
            breaks > seen,
        )
    }
}

#[derive(Clone)]
enum ConnInner {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, Value> {
        match &mut self.inner {
            ConnInner::Single(c) => c.req_packed_command(cmd),
            ConnInner::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match &mut self.inner {
            ConnInner::Single(c) => c.req_packed_commands(pipeline, offset, count),
            ConnInner::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            ConnInner::Single(c) => c.get_db(),
            ConnInner::Cluster(c) => c.get_db(),
        }
    }
}

struct Manager {
    target: Target,
    times: Arc<PoolTimes>,
    opened: Arc<AtomicU64>,
    connect_timeout: Duration,
    response_timeout: Duration,
    attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
}

impl Manager {
    async fn connect_once(&self) -> Result<ConnInner, RedisError> {
        match &self.target {
            Target::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.response_timeout));
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(ConnInner::Single)
            }
            Target::Cluster(client) => client.get_async_connection().await.map(ConnInner::Cluster),
        }
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    async fn connect(&self) -> Result<Conn, RedisError> {
        let mut delay = self.backoff;
        let mut attempt = 1;
        loop {
            // Breaks counted before the connection is made: one that a restart during the
            // connect makes suspect is pinged before its first command.
            let breaks = self.times.breaks.load(Ordering::Relaxed);
            match self.connect_once().await {
                Ok(inner) => {
                    self.opened.fetch_add(1, Ordering::Relaxed);
                    return Ok(Conn {
                        inner,
                        state: Arc::new(ConnState::new(self.times.clone(), breaks)),
                    });
                }
                Err(e) if attempt >= self.attempts => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "Redis connect failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.max_backoff);
                    attempt += 1;
                }
            }
        }
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        redis::cmd("PING").query_async::<()>(conn).await
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.state.is_broken()
    }
}

/// Keeps the last connect error, so that a pool timeout can say why.
#[derive(Debug, Clone)]
struct Sink(Arc<Mutex<Option<RedisError>>>);

impl bb8::ErrorSink<RedisError> for Sink {
    fn sink(&self, error: RedisError) {
        tracing::debug!(error = %error, "Redis connection failed");
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error);
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<RedisError>> {
        Box::new(self.clone())
    }
}

/// Pool figures for dashboards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolFigures {
    /// Open connections.
    pub connections: u32,
    /// Open connections not checked out.
    pub idle: u32,
    /// Connections opened since the pool was built.
    pub created: u64,
    /// Connections dropped because a command failed on them: a connection error, a
    /// `READONLY` or `MASTERDOWN` reply, or a reply that never came within the response
    /// timeout (a limiter's call past its own bound included).
    pub closed_broken: u64,
    /// Checkouts that timed out.
    pub acquire_timeouts: u64,
    /// Connections pinged before a command used them: unused for longer than the idle check
    /// allows, or taken before another connection broke
    /// ([`RedisConfig::with_idle_check_after`]).
    pub pinged: u64,
}

/// A pool of Redis connections (one node or a cluster); cheap to clone.
#[derive(Clone)]
pub struct RedisPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    pool: bb8::Pool<Manager>,
    cluster: bool,
    acquire_timeout: Duration,
    idle_check_after: Duration,
    last_error: Arc<Mutex<Option<RedisError>>>,
    opened: Arc<AtomicU64>,
    /// The connection attempt for an empty pool under way (or the last one, answered).
    connecting: Mutex<Option<Connecting>>,
    /// Checkout timeouts counted by bb8 when the last health check ran.
    timeouts_at_last_check: AtomicU64,
    /// [`PoolFigures::pinged`].
    pinged: AtomicU64,
}

impl fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPool")
            .field("cluster", &self.inner.cluster)
            .field("figures", &self.figures())
            .finish()
    }
}

/// Whether an error means the connection must be replaced: the connection itself is gone, or
/// its server is no longer a writable primary (`READONLY`: demoted to a replica in a
/// fail-over; `MASTERDOWN`: a replica that lost its primary). For these two the socket still
/// works, so nothing else would ever replace it: every write would fail until the pool's
/// maximum lifetime ends it, while `PING` (the health check) keeps answering.
///
/// On a Cluster handle a timeout is not one of them: it comes from the one node that did not
/// answer, the handle keeps working for the others, and a replacement handle would first wait
/// on that node too, so that one frozen node would take every tenant down with it.
fn breaks_connection(e: &RedisError, cluster: bool) -> bool {
    use redis::{ErrorKind as K, ServerErrorKind as S};
    if cluster && e.is_timeout() {
        return false;
    }
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(e.kind(), K::Server(S::ReadOnly | S::MasterDown))
}

impl RedisPool {
    /// Whether this pool talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.cluster
    }

    /// Current pool figures.
    pub fn figures(&self) -> PoolFigures {
        let s = self.inner.pool.state();
        PoolFigures {
            connections: s.connections,
            idle: s.idle_connections,
            created: self.inner.opened.load(Ordering::Relaxed),
            closed_broken: s.statistics.connections_closed_broken,
            acquire_timeouts: s.statistics.get_timed_out,
            pinged: self.inner.pinged.load(Ordering::Relaxed),
        }
    }

    /// Sends `PING` and returns the round-trip time.
    ///
    /// Errors: as for any command ([`Error::Connect`], [`Error::PoolTimeout`],
    /// [`Error::Redis`]).
    pub async fn ping(&self) -> Result<Duration> {
        let start = Instant::now();
        self.query::<()>(&redis::cmd("PING")).await?;
        Ok(start.elapsed())
    }

    /// Runs one command on a pooled connection.
    ///
    /// Errors: [`Error::Connect`] or [`Error::PoolTimeout`] when no connection could be had,
    /// [`Error::Redis`] when the command failed, [`Error::Corrupt`] when the reply does not
    /// convert to `T`.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        let mut conn = self.conn().await?;
        let value = cmd
            .query_async::<Value>(&mut conn)
            .await
            .map_err(|e| failed(&conn, e))?;
        convert(value)
    }

    /// Runs a pipeline on one pooled connection and returns its replies.
    #[cfg(feature = "session")]
    pub(crate) async fn pipeline(&self, pipe: &Pipeline) -> Result<Vec<Value>> {
        let mut conn = self.conn().await?;
        pipe.query_async::<Vec<Value>>(&mut conn)
            .await
            .map_err(|e| failed(&conn, e))
    }

    #[cfg(any(
        feature = "rate-limit",
        feature = "session",
        feature = "cache",
        feature = "denylist"
    ))]
    /// Runs `script` with `EVALSHA`, and with `EVAL` (which also caches it again) when the
    /// server answers `NOSCRIPT` (after a restart or `SCRIPT FLUSH`). One round trip in the
    /// common case.
    pub(crate) async fn eval(
        &self,
        script: &Lua,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> Result<Value> {
        let mut conn = self.conn().await?;
        Self::eval_on(&mut conn, script, keys, args).await
    }

    /// As [`eval`](Self::eval), answering within `bound` (checkout and script). When the
    /// bound runs out while the script's reply is awaited, the call is not dropped: it goes on
    /// in the background until the reply or the pool's response timeout, and a timeout there
    /// marks the connection broken, as any call's would. Dropping it instead would let a
    /// connection whose peer vanished without a reset stay in the pool (the `redis` crate
    /// reports its timeout only to a caller still waiting), while marking the connection
    /// broken at once would rebuild a healthy shared connection after one slow reply.
    ///
    /// Errors: as [`eval`](Self::eval), and [`Error::Timeout`] when the bound ran out.
    #[cfg(feature = "rate-limit")]
    pub(crate) async fn eval_within(
        &self,
        bound: Duration,
        script: &'static Lua,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::from_std(crate::limiter::later(Instant::now(), bound));
        let mut conn = tokio::time::timeout_at(deadline, self.conn())
            .await
            .map_err(|_| Error::Timeout(bound))??;
        let (keys, args) = (keys.to_vec(), args.to_vec());
        let mut call =
            Box::pin(async move { Self::eval_on(&mut conn, script, &keys, &args).await });
        match tokio::time::timeout_at(deadline, call.as_mut()).await {
            Ok(r) => r,
            Err(_) => {
                tokio::spawn(async move {
                    if let Err(e) = call.await {
                        tracing::debug!(error = %e, "a limiter call past its bound failed");
                    }
                });
                Err(Error::Timeout(bound))
            }
        }
    }

    #[cfg(any(
        feature = "rate-limit",
        feature = "session",
        feature = "cache",
        feature = "denylist"
    ))]
    async fn eval_on(
        conn: &mut Conn,
        script: &Lua,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> Result<Value> {
        let build = |verb: &str, body: &[u8]| {
            let mut cmd = redis::cmd(verb);
            cmd.arg(body).arg(keys.len()).arg(keys).arg(args);
            cmd
        };
        let evalsha = build("EVALSHA", script.sha.as_bytes());
        match evalsha.query_async::<Value>(conn).await {
            Ok(v) => Ok(v),
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                tracing::debug!(script = script.name, "script not cached; sending it again");
                build("EVAL", script.source.as_bytes())
                    .query_async::<Value>(conn)
                    .await
                    .map_err(|e| failed(conn, e))
            }
            Err(e) => Err(failed(conn, e)),
        }
    }

    /// Checks that no primary evicts keys: `maxmemory-policy` is `noeviction`, or there is no
    /// memory bound (`maxmemory 0`). `store` names the caller and `lost` says what an eviction
    /// would cost, for the error and the warnings. A node that refuses `CONFIG GET` (renamed
    /// or disabled on managed services, or an ACL without it) is logged and passed.
    ///
    /// Errors: [`Error::Misconfigured`] naming the first evicting node; connection errors.
    #[cfg(any(feature = "session", feature = "denylist"))]
    pub(crate) async fn check_no_eviction(&self, lost: &'static str) -> Result<()> {
        const SETTING: &str = "maxmemory-policy";
        let mut cmd = redis::cmd("CONFIG");
        // The policy and the memory bound in one reply: a server without a bound
        // (`maxmemory 0`) never evicts, whatever its policy.
        cmd.arg("GET").arg("maxmemory*");
        for (node, reply) in self.on_every_primary(cmd).await? {
            let reply = match reply {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(
                        node,
                        error = %e,
                        "cannot read maxmemory-policy (CONFIG GET refused): make sure it is \
                         noeviction ({lost})"
                    );
                    continue;
                }
            };
            let found: std::collections::HashMap<String, String> =
                FromRedisValue::from_redis_value(reply).map_err(|e| Error::Corrupt(Box::new(e)))?;
            if found.get("maxmemory").is_some_and(|m| m == "0") {
                continue;
            }
            match found.get(SETTING) {
                Some(p) if p == "noeviction" => {}
                Some(p) => {
                    return Err(Error::Misconfigured {
                        node,
                        setting: SETTING,
                        value: p.clone(),
                        reason: lost,
                    });
                }
                None => tracing::warn!(
                    node,
                    "Redis reported no maxmemory-policy: make sure it is noeviction"
                ),
            }
        }
        Ok(())
    }

    /// Sends `cmd` to the one node, or to every primary of a Cluster, and returns each node's
    /// reply (named by its address on a Cluster, `server` on one node). An error reply stays
    /// with its node (a node may refuse a command the others take); a connection error fails
    /// the whole call.
    #[cfg(any(feature = "session", feature = "denylist"))]
    pub(crate) async fn on_every_primary(&self, cmd: Cmd) -> Result<NodeReplies> {
        use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
        let mut conn = self.conn().await?;
        let replies = match &mut conn.inner {
            ConnInner::Single(c) => match cmd.query_async::<Value>(c).await {
                Ok(v) => Ok(vec![("server".to_owned(), Ok(v))]),
                Err(e) if e.code().is_some() && !breaks_connection(&e, false) => {
                    Ok(vec![("server".to_owned(), Err(e))])
                }
                Err(e) => Err(e),
            },
            ConnInner::Cluster(c) => c
                .route_command(
                    cmd,
                    RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                )
                .await
                .map(|v| match v {
                    Value::Map(nodes) => nodes
                        .into_iter()
                        .map(|(node, reply)| {
                            let node = String::from_redis_value(node)
                                .unwrap_or_else(|_| "cluster node".to_owned());
                            (node, reply.extract_error())
                        })
                        .collect(),
                    other => vec![("cluster".to_owned(), other.extract_error())],
                }),
        };
        replies.map_err(|e| failed(&conn, e))
    }

    /// A connection to send on. The pooled connection is only borrowed long enough to clone
    /// it: a multiplexed connection carries many requests at once, so callers never queue
    /// behind each other for a checkout. A connection found broken goes back to the pool,
    /// which drops it, and the next one is taken.
    async fn conn(&self) -> Result<Conn> {
        for _ in 0..=self.inner.pool.state().connections {
            let mut pooled = self.checkout().await?;
            if !pooled.state.is_broken() && self.answers_after_idle(&mut pooled).await {
                return Ok(pooled.clone());
            }
            // Dropped broken: the pool closes it.
        }
        self.checkout().await.map(|c| c.clone())
    }

    /// Whether a connection just taken may carry a command: `false` when it is a one-node
    /// connection that sat unused for longer than the idle check allows, or was last taken
    /// before another connection of the pool broke, and its ping failed on the connection (it
    /// is then marked broken). Held checked out during the ping, so that concurrent callers
    /// take other connections meanwhile, and the next caller to take this one finds it
    /// freshly used.
    async fn answers_after_idle(&self, conn: &mut Conn) -> bool {
        let (idle, suspect) = conn.state.take(Instant::now());
        let cluster = matches!(conn.inner, ConnInner::Cluster(_));
        if cluster || (!suspect && idle <= self.inner.idle_check_after) {
            return true;
        }
        self.inner.pinged.fetch_add(1, Ordering::Relaxed);
        match redis::cmd("PING").query_async::<Value>(conn).await {
            Ok(_) => true,
            Err(e) => {
                let e = failed(conn, e);
                if conn.state.is_broken() {
                    tracing::debug!(error = %e, idle = ?idle, suspect, "Redis connection closed while idle; replacing it");
                    return false;
                }
                // Not the connection's fault (a server still loading its data, say): the
                // command will meet the same answer and report it.
                true
            }
        }
    }

    async fn checkout(&self) -> Result<bb8::PooledConnection<'_, Manager>> {
        if self.inner.pool.state().connections == 0 {
            // Nothing open (first use, or every connection broke): connect here, so that an
            // unreachable Redis fails after the connect retries, or the acquire timeout if
            // that comes first (the attempt goes on, on its own task, for the next caller).
            tokio::time::timeout(self.inner.acquire_timeout, self.fill_empty_pool())
                .await
                .map_err(|_| Error::PoolTimeout(self.inner.acquire_timeout))??;
        }
        match self.inner.pool.get().await {
            Ok(c) => Ok(c),
            Err(bb8::RunError::User(e)) => Err(Error::Connect(e)),
            Err(bb8::RunError::TimedOut) => {
                let last = self
                    .inner
                    .last_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                Err(match last {
                    Some(e) => Error::Connect(e),
                    None => Error::PoolTimeout(self.inner.acquire_timeout),
                })
            }
        }
    }
}

/// The answer of a connection attempt for an empty pool, once there is one.
type Connecting = tokio::sync::watch::Receiver<Option<std::result::Result<(), RedisError>>>;

impl RedisPool {
    /// Opens a connection into the empty pool. One attempt at a time: every caller that finds
    /// the pool empty while it runs waits for its answer, so an outage or a cold start under
    /// load opens one connection, not one per caller. The attempt runs on a task of its own:
    /// a caller that stops waiting (its bound ran out) does not abandon it, and the
    /// connection it makes is there for the next call, however long it took to make.
    async fn fill_empty_pool(&self) -> Result<()> {
        let mut answer = {
            let mut slot = self
                .inner
                .connecting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // An attempt is under way while it has not answered and its task is alive (a
            // task dropped with its runtime never answers: a new attempt replaces it).
            match slot
                .as_ref()
                .filter(|rx| rx.borrow().is_none() && rx.has_changed().is_ok())
            {
                Some(running) => running.clone(),
                None => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    let pool = self.inner.pool.clone();
                    tokio::spawn(async move {
                        let made = pool.dedicated_connection().await.map(|conn| {
                            // When the pool filled up meanwhile, the connection is dropped.
                            let _ = pool.add(conn);
                        });
                        let _ = tx.send(Some(made));
                    });
                    *slot = Some(rx.clone());
                    rx
                }
            }
        };
        let made = match answer.wait_for(Option::is_some).await {
            Ok(made) => made.clone(),
            // The task ended without an answer (its runtime is shutting down).
            Err(_) => return Err(Error::PoolTimeout(self.inner.acquire_timeout)),
        };
        match made {
            Some(Err(e)) => Err(Error::Connect(e)),
            _ => Ok(()),
        }
    }
}

/// Per node, its address and its reply (an error reply as `Err`).
#[cfg(any(feature = "session", feature = "denylist"))]
pub(crate) type NodeReplies = Vec<(String, std::result::Result<Value, RedisError>)>;

/// Marks the connection broken when the error means it is gone, and wraps the error.
fn failed(conn: &Conn, e: RedisError) -> Error {
    if breaks_connection(&e, matches!(conn.inner, ConnInner::Cluster(_))) {
        conn.state.break_now();
    }
    Error::Redis(e)
}

fn convert<T: FromRedisValue>(v: Value) -> Result<T> {
    T::from_redis_value(v).map_err(|e| Error::Corrupt(Box::new(e)))
}

#[async_trait]
impl HealthCheck for RedisPool {
    fn component(&self) -> &str {
        "redis"
    }

    /// Pings with the pool's acquire timeout as the bound; `Down` when the ping fails,
    /// `Degraded` when it succeeded but some checkouts timed out since the last check (of
    /// this pool or a clone of it; the first check counts from the pool's start).
    async fn check(&self) -> Health {
        let bound = self
            .inner
            .acquire_timeout
            .saturating_add(Duration::from_millis(500));
        let mut health = match tokio::time::timeout(bound, self.ping()).await {
            Ok(Ok(rtt)) => Health::up().with_latency(rtt),
            Ok(Err(e)) => Health::down(format!("ping failed: {e}")),
            Err(_) => Health::down(format!("ping timed out after {bound:?}")),
        };
        let f = self.figures();
        let before = self
            .inner
            .timeouts_at_last_check
            .swap(f.acquire_timeouts, Ordering::Relaxed);
        if health.status == HealthStatus::Up && f.acquire_timeouts > before {
            health.status = HealthStatus::Degraded;
            health.detail = Some(format!(
                "{} connection checkouts timed out since the last check",
                f.acquire_timeouts - before
            ));
        }
        health
            .with_figure("connections", u64::from(f.connections))
            .with_figure("idle", u64::from(f.idle))
            .with_figure("created", f.created)
            .with_figure("closed_broken", f.closed_broken)
            .with_figure("acquire_timeouts", f.acquire_timeouts)
            .with_figure("pinged", f.pinged)
    }
}

/// A Lua script with its SHA1, as sent with `EVALSHA`.
#[cfg(any(
    feature = "rate-limit",
    feature = "session",
    feature = "cache",
    feature = "denylist"
))]
#[derive(Debug)]
pub(crate) struct Lua {
    pub(crate) name: &'static str,
    pub(crate) source: String,
    pub(crate) sha: String,
}

#[cfg(any(
    feature = "rate-limit",
    feature = "session",
    feature = "cache",
    feature = "denylist"
))]
impl Lua {
    pub(crate) fn new(name: &'static str, source: String) -> Self {
        let sha = redis::Script::new(&source).get_hash().to_owned();
        Self { name, source, sha }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_of_a_server_that_stopped_being_a_writable_primary_break_the_connection() {
        use redis::{ErrorKind as K, ServerErrorKind as S};
        for kind in [S::ReadOnly, S::MasterDown] {
            let e = RedisError::from((K::Server(kind), "reply"));
            assert!(breaks_connection(&e, false), "{e}");
            assert!(breaks_connection(&e, true), "{e}");
        }
        for kind in [S::NoScript, S::NoPerm, S::ResponseError, S::BusyLoading] {
            let e = RedisError::from((K::Server(kind), "reply"));
            assert!(
                !breaks_connection(&e, false) && !breaks_connection(&e, true),
                "an error reply keeps the connection: {e}"
            );
        }
    }

    /// A timeout replaces a one-node connection (its one peer may be gone) but not a Cluster
    /// handle, whose other nodes still answer; a dropped connection replaces either.
    #[test]
    fn a_timeout_replaces_a_node_connection_but_not_a_cluster_handle() {
        let timeout = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(timeout.is_timeout());
        assert!(breaks_connection(&timeout, false));
        assert!(!breaks_connection(&timeout, true));
        let dropped = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(breaks_connection(&dropped, false) && breaks_connection(&dropped, true));
    }

    #[cfg(feature = "session")]
    #[tokio::test]
    async fn a_command_for_every_primary_reaches_each_cluster_primary() {
        let urls: Vec<String> = std::env::var("TENANCY_TEST_REDIS_CLUSTER_URLS")
            .unwrap_or_else(|_| {
                "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003".into()
            })
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect();
        let pool = match RedisConfig::cluster(urls.clone())
            .with_connect_retries(1, Duration::ZERO)
            .connect()
            .await
        {
            Ok(p) => p,
            Err(e) => return tenancy_tests::service_missing("Redis Cluster", &e),
        };
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let replies = pool.on_every_primary(cmd).await.unwrap();
        // The local Cluster has one primary per URL and no replicas.
        assert_eq!(replies.len(), urls.len(), "{replies:?}");
        for (node, reply) in replies {
            assert!(node.starts_with("127.0.0.1:"), "{node}");
            assert!(reply.is_ok(), "{node}: {reply:?}");
        }
    }

    #[tokio::test]
    async fn health_is_degraded_once_after_checkouts_timed_out() {
        let Some(redis) = tenancy_tests::redis().await else {
            return;
        };
        let pool = RedisConfig::single(redis.url())
            .with_pool_size(1)
            .with_acquire_timeout(Duration::from_millis(200))
            .connect()
            .await
            .unwrap();
        assert_eq!(pool.check().await.status, HealthStatus::Up);
        {
            // Hold the only connection: the next checkout times out.
            let _held = pool.inner.pool.get().await.unwrap();
            let err = pool.ping().await.expect_err("no connection to be had");
            assert!(matches!(err, Error::PoolTimeout(_)), "{err:?}");
        }
        let h = pool.check().await;
        assert_eq!(h.status, HealthStatus::Degraded, "{h:?}");
        assert_eq!(h.figures["acquire_timeouts"], 1, "{h:?}");
        let h = pool.check().await;
        assert_eq!(
            h.status,
            HealthStatus::Up,
            "no timeout since the last check: {h:?}"
        );
    }

    /// A connection the server closed while it sat idle in the pool (a Redis restart, an
    /// idle timeout, `CLIENT KILL`) is found out by a `PING` when it is next taken, and
    /// replaced: the command that takes it is answered, not failed.
    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced_before_a_command_uses_it() {
        let Some(redis) = tenancy_tests::redis().await else {
            return;
        };
        let pool = RedisConfig::single(redis.url())
            .with_pool_size(1)
            .with_idle_check_after(Duration::from_millis(50))
            .connect()
            .await
            .unwrap();
        let ids = client_ids(&pool, 1).await;
        kill(redis.url(), &ids).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after: i64 = pool
            .query(redis::cmd("CLIENT").arg("ID"))
            .await
            .expect("the closed connection is replaced, not used");
        assert!(!ids.contains(&after), "a new connection answered");
        assert_eq!(pool.figures().closed_broken, 1, "{:?}", pool.figures());
        assert_eq!(pool.figures().created, 2, "{:?}", pool.figures());
        assert_eq!(pool.figures().pinged, 1, "{:?}", pool.figures());
    }

    /// `pool` built, once it holds `n` connections.
    async fn with_connections(config: RedisConfig, n: u32) -> RedisPool {
        let pool = config.with_min_idle(n).connect().await.unwrap();
        for _ in 0..100 {
            if pool.figures().connections == n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pool
    }

    /// The ids of the connections `pool` holds, taken in turn; `n` of them.
    async fn client_ids(pool: &RedisPool, n: usize) -> std::collections::BTreeSet<i64> {
        let mut ids = std::collections::BTreeSet::new();
        for _ in 0..4 * n {
            let id: i64 = pool.query(redis::cmd("CLIENT").arg("ID")).await.unwrap();
            ids.insert(id);
        }
        assert_eq!(ids.len(), n, "{ids:?}");
        ids
    }

    /// Closes the connections `ids` from a connection of its own.
    async fn kill(url: &str, ids: &std::collections::BTreeSet<i64>) {
        let killer = Client::open(url).unwrap();
        let mut killer = killer.get_multiplexed_async_connection().await.unwrap();
        for id in ids {
            let killed: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(*id)
                .query_async(&mut killer)
                .await
                .unwrap();
            assert_eq!(killed, 1);
        }
    }

    /// When one connection breaks (its server restarted, say), the pool's other connections
    /// are pinged before their next command, however recently they were used: one failed
    /// command, not one per pooled connection.
    #[tokio::test]
    async fn once_a_connection_breaks_the_others_are_pinged_before_use() {
        let Some(redis) = tenancy_tests::redis().await else {
            return;
        };
        let config = RedisConfig::single(redis.url())
            .with_pool_size(3)
            .with_idle_check_after(Duration::MAX);
        let pool = with_connections(config, 3).await;
        let ids = client_ids(&pool, 3).await;
        kill(redis.url(), &ids).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let cmd = redis::cmd("CLIENT").arg("ID").clone();
        let first = pool.query::<i64>(&cmd).await;
        assert!(
            first.is_err(),
            "the first command met a closed connection: {first:?}"
        );
        for i in 0..6 {
            let id: i64 = pool
                .query(&cmd)
                .await
                .unwrap_or_else(|e| panic!("command {i} after the first failed: {e}"));
            assert!(!ids.contains(&id), "a closed connection answered");
        }
        // The two other closed connections (and a new one opened between two breaks).
        assert!(pool.figures().pinged >= 2, "{:?}", pool.figures());
    }

    /// Connections in turn, each used every second or so, are not pinged: the idle check
    /// waits longer than that.
    #[tokio::test]
    async fn connections_used_in_turn_are_not_pinged() {
        let Some(redis) = tenancy_tests::redis().await else {
            return;
        };
        let pool = with_connections(RedisConfig::single(redis.url()).with_pool_size(4), 4).await;
        for _ in 0..8 {
            pool.ping().await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(pool.figures().pinged, 0, "{:?}", pool.figures());
    }
}
