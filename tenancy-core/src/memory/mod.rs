//! In-memory backends for every core trait.
//!
//! They hold state in the process: right for tests, single-instance services and as a local
//! fallback; a service running several instances needs a shared backend (Redis, PostgreSQL)
//! for limits and sessions. Every backend here bounds its memory without a background task:
//! expired state is reclaimed during ordinary calls, amortised over them.

mod audit;
mod cache;
mod directory;
mod limiter;
mod session;

pub use audit::MemoryAuditSink;
pub use cache::{DEFAULT_MAX_ENTRIES, MemoryTenantCache};
pub use directory::MemoryTenantDirectory;
pub use limiter::{DEFAULT_MAX_KEYS, MemoryRateLimiter};
pub use session::MemorySessionStore;

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, recovering the data if another thread panicked while holding it: every
/// critical section here leaves the state consistent at each step, so the data is still good.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
