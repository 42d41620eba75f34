//! In-memory backends for every core trait.
//!
//! They hold state in the process: right for tests, single-instance services and as a local
//! fallback; a service running several instances needs a shared backend (Redis, PostgreSQL)
//! for limits, sessions and revoked tokens. Every backend here bounds its memory without a background task:
//! expired state is reclaimed during ordinary calls, amortised over them.
//!
//! ```
//! use std::sync::Arc;
//! use tenancy_core::memory::{MemoryRateLimiter, MemorySessionStore, MemoryTenantDirectory};
//! use tenancy_core::{ManualClock, RateLimiter, SessionStore, TenantDirectory};
//!
//! // Every backend is cheap to clone and usable as `Arc<dyn Trait>`; tests pass a fake clock.
//! let clock = Arc::new(ManualClock::new());
//! let limiter: Arc<dyn RateLimiter> = Arc::new(MemoryRateLimiter::with_clock(clock.clone()));
//! let sessions: Arc<dyn SessionStore> = Arc::new(MemorySessionStore::with_clock(clock));
//! let directory: Arc<dyn TenantDirectory> = Arc::new(MemoryTenantDirectory::new());
//! # let _ = (limiter, sessions, directory);
//! ```

mod audit;
mod cache;
mod denylist;
mod directory;
mod limiter;
mod session;

pub use audit::MemoryAuditSink;
pub use cache::{DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, MemoryTenantCache};
pub use denylist::MemoryDenylist;
pub use directory::MemoryTenantDirectory;
pub use limiter::{DEFAULT_MAX_KEYS, MemoryRateLimiter};
pub use session::MemorySessionStore;

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, recovering the data if another thread panicked while holding it: every
/// critical section here leaves the state consistent at each step, so the data is still good.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
