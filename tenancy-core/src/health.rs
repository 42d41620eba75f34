//! Health checks: [`HealthCheck`] and [`Health`].
//!
//! ```
//! use tenancy_core::{Health, HealthStatus};
//! let h = Health::degraded("serving from cached keys").with_figure("keys", 3);
//! assert_eq!(h.status, HealthStatus::Degraded);
//! assert!(HealthStatus::Down > HealthStatus::Degraded, "worst status sorts last");
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

/// Up, degraded or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Working.
    Up,
    /// Working with reduced guarantees (serving from a fallback, a cached key set, ...).
    Degraded,
    /// Not working.
    Down,
}

/// The result of one health check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// The status.
    pub status: HealthStatus,
    /// A short human-readable note (never a secret or a connection string).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How long the check took, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Figures for dashboards: pool size, idle connections, keys, ...
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub figures: BTreeMap<String, u64>,
}

impl Health {
    /// An `Up` result.
    pub fn up() -> Self {
        Self {
            status: HealthStatus::Up,
            detail: None,
            latency_ms: None,
            figures: BTreeMap::new(),
        }
    }

    /// A `Down` result with a note.
    pub fn down(detail: impl Into<String>) -> Self {
        Self {
            status: HealthStatus::Down,
            detail: Some(detail.into()),
            ..Self::up()
        }
    }

    /// A `Degraded` result with a note.
    pub fn degraded(detail: impl Into<String>) -> Self {
        Self {
            status: HealthStatus::Degraded,
            detail: Some(detail.into()),
            ..Self::up()
        }
    }

    /// With a figure.
    pub fn with_figure(mut self, name: impl Into<String>, value: u64) -> Self {
        self.figures.insert(name.into(), value);
        self
    }

    /// With the time the check took.
    pub fn with_latency(mut self, d: Duration) -> Self {
        self.latency_ms = Some(d.as_secs_f64() * 1000.0);
        self
    }
}

/// A component that can report its health.
///
/// ```
/// use tenancy_core::{memory::MemoryRateLimiter, HealthCheck, HealthStatus};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = MemoryRateLimiter::new();
/// let health = limiter.check().await;
/// assert_eq!((limiter.component(), health.status), ("rate_limiter", HealthStatus::Up));
/// assert_eq!(health.figures.get("keys"), Some(&0));
/// # }
/// ```
#[async_trait]
pub trait HealthCheck: Send + Sync + fmt::Debug + 'static {
    /// The component's name in health reports (`"database"`, `"redis"`, `"audit"`, ...).
    fn component(&self) -> &str;

    /// Checks the component now. Must return within a bounded time.
    async fn check(&self) -> Health;
}
