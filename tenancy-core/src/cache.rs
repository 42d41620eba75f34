//! The tenant-namespaced cache: [`TenantCache`].
//!
//! Keys live inside a tenant's namespace: the same key under two tenants names two entries,
//! and [`TenantCache::invalidate_tenant`] drops one tenant's entries without touching others.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::{ParseError, Result, TenantId};

/// Longest accepted cache key, in bytes.
pub const CACHE_KEY_MAX_LEN: usize = 512;

/// Checks a cache key: 1 to 512 bytes, no control characters. Backends encode keys before
/// placing them in a store, so any other character is allowed.
pub fn check_cache_key(key: &str) -> Result<(), ParseError> {
    if key.is_empty() || key.len() > CACHE_KEY_MAX_LEN {
        return Err(ParseError::new("cache key", "must be 1 to 512 bytes"));
    }
    if key.chars().any(char::is_control) {
        return Err(ParseError::new(
            "cache key",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Longest accepted cache TTL: ten years.
///
/// Why this bound: a longer one is a unit mistake (milliseconds passed as seconds) far more
/// often than an intent; every backend applies it, so a TTL one accepts no other refuses.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Largest accepted cache value: 64 MiB.
pub const MAX_CACHE_VALUE_BYTES: usize = 64 << 20;

/// Checks what [`TenantCache::set`] stores besides the key: a TTL from 1 nanosecond to
/// [`MAX_CACHE_TTL`] and a value of at most [`MAX_CACHE_VALUE_BYTES`].
///
/// ```
/// use std::time::Duration;
/// use tenancy_core::{MAX_CACHE_TTL, check_cache_entry};
///
/// assert!(check_cache_entry(b"v", Duration::from_secs(60)).is_ok());
/// assert!(check_cache_entry(b"v", Duration::ZERO).is_err());
/// assert!(check_cache_entry(b"v", MAX_CACHE_TTL + Duration::from_secs(1)).is_err());
/// ```
pub fn check_cache_entry(value: &[u8], ttl: Duration) -> Result<(), ParseError> {
    if ttl.is_zero() {
        return Err(ParseError::new("cache ttl", "must be positive"));
    }
    if ttl > MAX_CACHE_TTL {
        return Err(ParseError::new("cache ttl", "must be at most ten years"));
    }
    if value.len() > MAX_CACHE_VALUE_BYTES {
        return Err(ParseError::new("cache value", "must be at most 64 MiB"));
    }
    Ok(())
}

/// Hit and miss counts since the cache was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups that found a live entry.
    pub hits: u64,
    /// Lookups that found nothing (or an expired entry).
    pub misses: u64,
}

/// A cache whose entries belong to tenants.
///
/// ```
/// use std::time::Duration;
/// use tenancy_core::{memory::MemoryTenantCache, TenantCache, TenantId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tenancy_core::Error> {
/// let cache = MemoryTenantCache::new();
/// let acme = TenantId::parse("acme")?;
/// cache.set(&acme, "report:2026", b"...", Duration::from_secs(300)).await?;
/// cache.invalidate_tenant(&acme).await?;
/// assert_eq!(cache.get(&acme, "report:2026").await?, None);
/// # Ok(()) }
/// ```
#[async_trait]
pub trait TenantCache: Send + Sync + fmt::Debug + 'static {
    /// The live value under `key` in `tenant`'s namespace.
    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<Vec<u8>>>;

    /// Stores `value` under `key` for `ttl`.
    ///
    /// Errors: [`Error::Invalid`](crate::Error::Invalid) for a key that fails
    /// [`check_cache_key`], or a value or TTL that fails [`check_cache_entry`] (a TTL of zero
    /// or above [`MAX_CACHE_TTL`], a value above [`MAX_CACHE_VALUE_BYTES`]).
    async fn set(&self, tenant: &TenantId, key: &str, value: &[u8], ttl: Duration) -> Result<()>;

    /// Removes `key`; `true` when a live entry was removed.
    async fn delete(&self, tenant: &TenantId, key: &str) -> Result<bool>;

    /// Makes every entry of `tenant` unreachable at once.
    async fn invalidate_tenant(&self, tenant: &TenantId) -> Result<()>;

    /// Hit and miss counts of this cache handle (and its clones).
    fn stats(&self) -> CacheStats;
}
