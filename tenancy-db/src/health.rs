//! Health: a background ping every 30 s (by default) and [`DbHealth`], which answers from the
//! last ping and the live pool figures without touching the database.
//!
//! ```no_run
//! use tenancy_core::HealthCheck;
//! use tenancy_db::{DbConfig, TenantPool};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tenancy_db::Error> {
//! let pool = TenantPool::connect(DbConfig::new("postgres://app_runtime@127.0.0.1/app")?).await?;
//! let health = pool.health().check().await; // no query: the last ping and the pool figures
//! println!("{:?} {:?} {:?}", health.status, health.latency_ms, health.figures);
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::Connection as _;
use tenancy_core::{Health, HealthCheck};

use crate::pool::Shared;

#[derive(Debug, Clone)]
struct Ping {
    at: Instant,
    latency: Duration,
    failure: Option<String>,
}

/// The last ping of one pool.
#[derive(Debug)]
pub(crate) struct HealthState {
    component: &'static str,
    last: Mutex<Option<Ping>>,
    interval: Mutex<Duration>,
}

impl HealthState {
    pub(crate) fn new(component: &'static str) -> Self {
        Self {
            component,
            last: Mutex::new(None),
            interval: Mutex::new(Duration::from_secs(30)),
        }
    }

    fn record(&self, ping: Ping) {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ping);
    }

    fn last(&self) -> Option<Ping> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A successful ping older than three intervals means the health task is stuck. The
    /// arithmetic saturates: a configured `Duration::MAX` never panics.
    fn is_stale(&self, ping: &Ping) -> bool {
        ping.at.elapsed() > self.interval().saturating_mul(3)
    }

    fn interval(&self) -> Duration {
        *self
            .interval
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Pings once: on an idle pooled connection when there is one, else on a dedicated connection
/// (so a busy pool does not read as a dead database).
async fn ping(shared: &Shared, timeout: Duration) -> Ping {
    let start = Instant::now();
    let answer = if let Some(mut conn) = shared.pool.try_acquire() {
        let answer = tokio::time::timeout(timeout, conn.ping()).await;
        if !matches!(answer, Ok(Ok(()))) {
            // Not pooled again: a connection that did not answer may be waiting on a peer
            // that is gone, and the pool's own ping on its return has no bound.
            conn.close_on_drop();
        }
        answer
    } else {
        let dedicated = async {
            let options = shared.pool.connect_options();
            let mut conn = sqlx::PgConnection::connect_with(&options).await?;
            conn.ping().await?;
            conn.close().await
        };
        tokio::time::timeout(timeout, dedicated).await
    };
    let failure = match answer {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("ping failed: {}", short(&e))),
        Err(_) => Some(format!("ping timed out after {timeout:?}")),
    };
    Ping {
        at: Instant::now(),
        latency: start.elapsed(),
        failure,
    }
}

/// A short cause for the health detail: the kind of failure, never a connection string.
fn short(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::Io(_) => "connection error",
        sqlx::Error::Tls(_) => "TLS error",
        sqlx::Error::PoolClosed => "pool closed",
        sqlx::Error::PoolTimedOut => "pool timed out",
        sqlx::Error::Database(_) => "database error",
        sqlx::Error::Protocol(_) => "protocol error",
        _ => "error",
    }
}

/// Pings once now, then every `interval` in a background task that ends with the pool.
pub(crate) async fn spawn(shared: &Arc<Shared>, interval: Duration, timeout: Duration) {
    *shared
        .health
        .interval
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = interval;
    shared.health.record(ping(shared, timeout).await);
    let weak: Weak<Shared> = Arc::downgrade(shared);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Some(shared) = weak.upgrade() else { return };
            if shared.pool.is_closed() {
                return;
            }
            let result = ping(&shared, timeout).await;
            if let Some(why) = &result.failure {
                tracing::warn!(target: "tenancy_db::health", component = shared.health.component, "{why}");
            }
            shared.health.record(result);
        }
    });
}

/// The [`HealthCheck`] of a [`TenantPool`](crate::TenantPool) or
/// [`PlatformPool`](crate::PlatformPool): the last background ping (status, latency) and the
/// pool figures (`max`, `size`, `idle`, `in_use`, `waiting`, `acquired_total`,
/// `acquire_timeouts_total`, `tainted_closed_total`). Checking never queries the database.
#[derive(Clone)]
pub struct DbHealth {
    shared: Arc<Shared>,
}

impl fmt::Debug for DbHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbHealth")
            .field("component", &self.shared.health.component)
            .finish_non_exhaustive()
    }
}

impl DbHealth {
    pub(crate) fn new(shared: &Arc<Shared>) -> Self {
        Self {
            shared: Arc::clone(shared),
        }
    }

    /// Pings now and records the result (the background task does this every interval).
    pub async fn ping_now(&self, timeout: Duration) -> Health {
        self.shared.health.record(ping(&self.shared, timeout).await);
        self.snapshot()
    }

    /// The health from the last ping and the live pool figures.
    pub fn snapshot(&self) -> Health {
        let m = self.shared.metrics();
        let mut health = match self.shared.health.last() {
            _ if self.shared.pool.is_closed() => Health::down("pool closed"),
            None => Health::degraded("not pinged yet"),
            Some(p) => {
                let h = match &p.failure {
                    Some(why) => Health::down(why.clone()),
                    // A ping older than three intervals means the health task is stuck.
                    None if self.shared.health.is_stale(&p) => {
                        Health::degraded("last successful ping is stale")
                    }
                    None => Health::up(),
                };
                h.with_latency(p.latency)
            }
        };
        for (name, value) in [
            ("max", u64::from(m.max)),
            ("size", u64::from(m.size)),
            ("idle", u64::from(m.idle)),
            ("in_use", u64::from(m.in_use)),
            ("waiting", m.waiting),
            ("acquired_total", m.acquired_total),
            ("acquire_timeouts_total", m.acquire_timeouts_total),
            ("tainted_closed_total", m.tainted_closed_total),
        ] {
            health = health.with_figure(name, value);
        }
        health
    }
}

#[async_trait]
impl HealthCheck for DbHealth {
    fn component(&self) -> &str {
        self.shared.health.component
    }

    async fn check(&self) -> Health {
        self.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_with_a_huge_interval_does_not_overflow() {
        let state = HealthState::new("database");
        *state.interval.lock().unwrap() = Duration::MAX;
        let ping = Ping {
            at: Instant::now(),
            latency: Duration::ZERO,
            failure: None,
        };
        assert!(!state.is_stale(&ping));
        *state.interval.lock().unwrap() = Duration::ZERO;
        std::thread::sleep(Duration::from_millis(2));
        assert!(state.is_stale(&ping));
    }
}
