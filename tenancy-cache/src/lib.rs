//! `tenancy-cache`: the Redis backends of the tenancy crates, on one Redis node or a Redis
//! Cluster, over a `bb8` pool of multiplexed connections.
//!
//! - [`RedisRateLimiter`]: [`RateLimiter`](tenancy_core::RateLimiter) +
//!   [`QuotaAdmin`](tenancy_core::QuotaAdmin): GCRA for every limit of a request (tenant and
//!   user, several windows, weights, shadow limits) in one Lua script and one round trip,
//!   failure policies per limit, a circuit breaker and a cache of recent denials.
//! - [`RedisSessionStore`]: [`SessionStore`](tenancy_core::SessionStore) +
//!   [`SessionAdmin`](tenancy_core::SessionAdmin), with idle and absolute expiry on the
//!   store's clock, a per-user index, atomic optimistic versioning and id rotation.
//! - [`RedisDenylist`]: [`Denylist`](tenancy_core::Denylist), revoked token ids shared by
//!   every instance of a service, decided on the denylist's clock.
//! - [`RedisTenantCache`]: [`TenantCache`](tenancy_core::TenantCache), with TTLs, hit and miss
//!   counts, and invalidation of all of a tenant's entries in one step.
//! - [`RedisPool`] / [`RedisConfig`]: the pool, its timeouts, connect retries with backoff, and
//!   a [`HealthCheck`](tenancy_core::HealthCheck) (ping latency, pool figures).
//! - [`keys`]: the one place where Redis keys are built. A tenant's keys share one Cluster
//!   slot (`{t:<tenant>}`); user ids, cache keys and token ids are encoded so that no character in them can
//!   leave the tenant's namespace.
//!
//! ```no_run
//! use tenancy_cache::{RedisConfig, RedisSessionStore};
//! use tenancy_core::{NewSession, SessionStore, TenantId, UserId};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = RedisConfig::single("redis://127.0.0.1:6379").connect().await?;
//! let sessions = RedisSessionStore::new(pool.clone());
//! let s = sessions
//!     .create(NewSession::new(TenantId::parse("acme")?, UserId::parse("alice")?))
//!     .await?;
//! assert!(sessions.load(&s.tenant, &s.id).await?.is_some());
//! # Ok(()) }
//! ```
//!
//! # Features
//! | feature      | enables                                    | default |
//! |--------------|--------------------------------------------|---------|
//! | `rate-limit` | [`RedisRateLimiter`]                       | yes     |
//! | `session`    | [`RedisSessionStore`]                      | yes     |
//! | `cache`      | [`RedisTenantCache`]                       | yes     |
//! | `denylist`   | [`RedisDenylist`]                          | yes     |
//!
//! Redis Cluster support is always built in: [`RedisConfig::cluster`] gives a pool that every
//! backend uses unchanged. One difference: after an I/O error or a timeout on a request it had
//! already sent, the Cluster client sends it again, so a script can run twice. The rate
//! limiter may then count a request twice, a session `create` may leave an unused session
//! behind, and a `save` or `rotate` may report a conflict or an ended session although its
//! first run succeeded. On one node nothing is resent.
//!
//! # Redis version
//! The scripts need **Redis 6.2 or later** (`SET ... PXAT` in the rate limiter, `KEEPTTL` in
//! the cache). An older server refuses them with an error reply, which is reported as a
//! refused command (not retryable, see [`error`](crate::error#down-or-refused)), never taken
//! for an outage.

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[cfg(feature = "cache")]
pub mod cache;
#[cfg(feature = "denylist")]
pub mod denylist;
pub mod error;
pub mod keys;
#[cfg(feature = "rate-limit")]
pub mod limiter;
#[cfg(any(feature = "rate-limit", feature = "session"))]
mod lua;
pub mod pool;
#[cfg(feature = "session")]
pub mod session;

#[cfg(feature = "cache")]
pub use cache::RedisTenantCache;
#[cfg(feature = "denylist")]
pub use denylist::RedisDenylist;
pub use error::{Error, Result};
#[cfg(feature = "rate-limit")]
pub use limiter::{RedisRateLimiter, RedisRateLimiterBuilder};
pub use pool::{PoolFigures, RedisConfig, RedisPool};
#[cfg(feature = "session")]
pub use session::RedisSessionStore;
