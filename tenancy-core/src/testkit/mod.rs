//! Conformance suites, one per trait, that any backend runs against itself (feature
//! `testkit`).
//!
//! Each suite is an async function that panics with the name of the failing case. Every suite
//! includes tenant isolation: what tenant A writes, tenant B cannot read, list, overwrite or
//! exhaust. A [`Fixture`] gives each run tenant ids of its own, so suites can share one Redis or
//! PostgreSQL server with other runs.
//!
//! ```
//! use std::sync::Arc;
//! use tenancy_core::{memory::MemoryRateLimiter, testkit};
//!
//! # #[tokio::main]
//! # async fn main() {
//! testkit::rate_limiter(Arc::new(MemoryRateLimiter::new()), &testkit::Fixture::new()).await;
//! # }
//! ```

mod audit;
mod cache;
mod denylist;
mod directory;
mod limiter;
mod session;

pub use audit::audit_sink;
pub use cache::tenant_cache;
pub use denylist::denylist;
pub use directory::tenant_directory;
pub use limiter::rate_limiter;
pub use session::session_store;

use std::time::Duration;

use crate::{ManualClock, TenantId, UserId};

/// Unique names for one suite run.
#[derive(Debug, Clone)]
pub struct Fixture {
    prefix: String,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    /// A fixture with a fresh random prefix.
    pub fn new() -> Self {
        let raw = crate::id::random_bytes::<5>();
        let prefix = raw.iter().map(|b| format!("{b:02x}")).collect::<String>();
        Self {
            prefix: format!("t{prefix}"),
        }
    }

    /// The prefix this fixture puts in front of every tenant id.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A tenant id unique to this fixture.
    pub fn tenant(&self, name: &str) -> TenantId {
        TenantId::parse(&format!("{}-{name}", self.prefix))
            .unwrap_or_else(|e| panic!("fixture tenant {name}: {e}"))
    }

    /// A user id (user ids need no prefix: they live inside a tenant).
    pub fn user(&self, name: &str) -> UserId {
        UserId::parse(name).unwrap_or_else(|e| panic!("fixture user {name}: {e}"))
    }
}

/// How a suite moves time forward for the backend under test.
#[derive(Debug, Clone)]
pub enum TimeControl {
    /// The backend was built on this clock; the suite advances it.
    Manual(ManualClock),
    /// The backend's expiry runs on a clock the suite cannot move (a server's); the suite
    /// waits in real time, with short timeouts.
    Real,
}

impl TimeControl {
    pub(crate) async fn advance(&self, by: Duration) {
        match self {
            Self::Manual(c) => c.advance(by),
            Self::Real => tokio::time::sleep(by).await,
        }
    }
}
