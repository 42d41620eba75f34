//! Time as a dependency, so that expiry and rate limits are tested on a fake clock.
//!
//! ```
//! use std::time::Duration;
//! use tenancy_core::{Clock, ManualClock};
//!
//! let clock = ManualClock::new();
//! let t0 = clock.now_nanos();
//! clock.advance(Duration::from_millis(1500));
//! assert_eq!(clock.now_nanos() - t0, 1_500_000_000);
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Nanoseconds since the Unix epoch.
    fn now_nanos(&self) -> u64;

    /// The current instant as an [`OffsetDateTime`] (UTC).
    fn now(&self) -> OffsetDateTime {
        let nanos = i128::from(self.now_nanos());
        OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_nanos(&self) -> u64 {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock set to 2030-01-01T00:00:00Z.
    pub fn new() -> Self {
        Self::at_unix_secs(1_893_456_000)
    }

    /// A clock set to `secs` after the Unix epoch.
    pub fn at_unix_secs(secs: u64) -> Self {
        Self(Arc::new(AtomicU64::new(secs.saturating_mul(1_000_000_000))))
    }

    /// Moves the clock forward, stopping at the largest time it can hold (`u64::MAX`
    /// nanoseconds) rather than wrapping round to the epoch.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // The closure always answers `Some`, so the update cannot fail.
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(nanos))
            });
    }

    /// Sets the clock to `nanos` after the Unix epoch (it may move backwards).
    pub fn set_nanos(&self, nanos: u64) {
        self.0.store(nanos, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A shared clock handle, as backends hold it.
pub type SharedClock = Arc<dyn Clock>;

/// The system clock as a [`SharedClock`].
pub fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_saturates_instead_of_wrapping() {
        let clock = ManualClock::new();
        let start = clock.now_nanos();
        clock.advance(Duration::from_secs(u64::MAX));
        assert_eq!(
            clock.now_nanos(),
            u64::MAX,
            "a huge step stops at the end of time"
        );
        clock.set_nanos(u64::MAX - 10);
        clock.advance(Duration::from_nanos(11));
        assert_eq!(
            clock.now_nanos(),
            u64::MAX,
            "one past the end must not wrap to 0"
        );
        assert!(
            clock.now_nanos() > start,
            "time never moves backwards on advance"
        );
    }
}
