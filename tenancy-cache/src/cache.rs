//! [`RedisTenantCache`]: a tenant-namespaced cache in Redis, implementing [`TenantCache`].
//!
//! ```no_run
//! use std::time::Duration;
//! use tenancy_cache::{RedisConfig, RedisTenantCache};
//! use tenancy_core::{TenantCache, TenantId};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = RedisConfig::single("redis://127.0.0.1:6379").connect().await?;
//! let cache = RedisTenantCache::new(pool);
//! let acme = TenantId::parse("acme")?;
//! cache.set(&acme, "plan:{gold}*", b"gold", Duration::from_secs(60)).await?;
//! assert_eq!(cache.get(&acme, "plan:{gold}*").await?, Some(b"gold".to_vec()));
//! cache.invalidate_tenant(&acme).await?;
//! assert_eq!(cache.get(&acme, "plan:{gold}*").await?, None);
//! assert_eq!((cache.stats().hits, cache.stats().misses), (1, 1));
//! # Ok(()) }
//! ```
//!
//! # How entries are stored
//! An entry lives under `<ns>:c:{t:<tenant>}:k:<base64url key>` with a Redis TTL, its value
//! prefixed by the tenant's *generation* at the time it was written. The generation
//! (`<ns>:c:{t:<tenant>}:gen`) is replaced by [`TenantCache::invalidate_tenant`]: one `SET`
//! makes every older entry unreachable at once, however many there are, and Redis drops them
//! when their TTLs end. The generation key itself expires after the longest-lived entry, so
//! an idle tenant leaves nothing behind. Every operation is one script call on the tenant's
//! slot.
//!
//! A generation is a random 128-bit token, never a counter, and a missing generation key
//! means a miss: when Redis evicts the generation key before the entries (`maxmemory`), every
//! entry becomes unreachable, and no new generation can take the value of an old one, so an
//! invalidated entry is never served again. (Needs Redis 6.0 or later for `KEEPTTL`.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::Value;
use tenancy_core::{
    CacheStats, Health, HealthCheck, ParseError, TenantCache, TenantId, check_cache_key,
};

use crate::error::{CORRUPT_CODE, Error, Result};
use crate::keys::KeySpace;
use crate::pool::{Lua, RedisPool};

/// The bounds every tenant cache keeps, defined once in tenancy-core: the longest TTL and the
/// largest value.
pub use tenancy_core::{MAX_CACHE_TTL, MAX_CACHE_VALUE_BYTES};

// KEYS: generation, entry. Returns the value, or nil when absent or from an older generation.
static GET: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        "cache_get",
        format!(
            r"
local v = redis.call('GET', KEYS[2])
if not v then return false end
-- No generation: it was evicted or expired, and with it any knowledge of which entries are
-- current. Nothing may be served.
local g = redis.call('GET', KEYS[1])
if not g then return false end
local sep = string.find(v, ':', 1, true)
if not sep then return redis.error_reply('{CORRUPT_CODE} cache entry') end
if string.sub(v, 1, sep - 1) ~= g then return false end
return string.sub(v, sep + 1)
"
        ),
    )
});

// KEYS: generation, entry. ARGV: value, ttl in ms, a fresh generation (used when there is none).
static SET: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        "cache_set",
        r"
local ttl = tonumber(ARGV[2])
local g = redis.call('GET', KEYS[1])
if not g then
  g = ARGV[3]
  redis.call('SET', KEYS[1], g, 'PX', ttl)
elseif redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
redis.call('SET', KEYS[2], g .. ':' .. ARGV[1], 'PX', ttl)
return 1
"
        .to_owned(),
    )
});

// KEYS: generation, entry. Returns 1 when a live entry of the current generation was removed.
static DELETE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        "cache_delete",
        r"
local v = redis.call('GET', KEYS[2])
if not v then return 0 end
redis.call('DEL', KEYS[2])
local g = redis.call('GET', KEYS[1])
if not g then return 0 end
if string.sub(v, 1, #g + 1) == g .. ':' then return 1 end
return 0
"
        .to_owned(),
    )
});

// KEYS: generation. ARGV: a fresh generation. No generation key means no entry is reachable:
// nothing to invalidate.
static INVALIDATE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        "cache_invalidate",
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
end
return 1
"
        .to_owned(),
    )
});

/// A generation no earlier one can have had: 128 bits from a randomly keyed hash of the time
/// and a process-wide counter, in hex.
///
/// Why random rather than a counter: a counter lives in the generation key, and when Redis
/// evicts that key (under `maxmemory`) before the entries, a counter started again would meet
/// the generations of entries invalidated long ago, and serve them again.
fn fresh_generation() -> Vec<u8> {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    // Each `RandomState` has keys of its own: two of them give independent 64-bit halves.
    let (a, b) = (RandomState::new(), RandomState::new());
    format!("{:016x}{:016x}", a.hash_one((n, t)), b.hash_one((t, n))).into_bytes()
}

#[derive(Debug, Default)]
struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
}

/// A tenant-namespaced cache in Redis (one node or a Cluster); cheap to clone, and clones
/// share hit and miss counts.
///
/// See the [module documentation](self) for the storage layout and an example.
#[derive(Clone)]
pub struct RedisTenantCache {
    pool: RedisPool,
    keys: KeySpace,
    counts: Arc<Counts>,
}

impl std::fmt::Debug for RedisTenantCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTenantCache")
            .field("namespace", &self.keys.namespace())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn ttl_ms(ttl: Duration) -> Result<Vec<u8>> {
    if ttl.is_zero() {
        return Err(Error::Invalid(ParseError::new(
            "cache ttl",
            "must be positive",
        )));
    }
    if ttl > MAX_CACHE_TTL {
        return Err(Error::Invalid(ParseError::new(
            "cache ttl",
            "must be at most ten years",
        )));
    }
    // Redis expires in whole milliseconds: round up so an entry never ends early.
    let ms = ttl.as_millis() + u128::from(!ttl.subsec_nanos().is_multiple_of(1_000_000));
    Ok(ms.to_string().into_bytes())
}

impl RedisTenantCache {
    /// A cache on `pool` in the default namespace.
    pub fn new(pool: RedisPool) -> Self {
        Self {
            pool,
            keys: KeySpace::default(),
            counts: Arc::default(),
        }
    }

    /// The same cache in another key space (namespace), with counts of its own.
    pub fn with_key_space(mut self, keys: KeySpace) -> Self {
        self.keys = keys;
        self.counts = Arc::default();
        self
    }

    fn keys_for(&self, tenant: &TenantId, key: &str) -> Result<[String; 2]> {
        check_cache_key(key)?;
        Ok([
            self.keys.cache_generation(tenant),
            self.keys.cache_entry(tenant, key),
        ])
    }
}

#[async_trait]
impl TenantCache for RedisTenantCache {
    async fn get(&self, tenant: &TenantId, key: &str) -> tenancy_core::Result<Option<Vec<u8>>> {
        let keys = self.keys_for(tenant, key)?;
        let found = match self.pool.eval(&GET, &keys, &[]).await? {
            Value::Nil => None,
            Value::BulkString(b) => Some(b),
            _ => return Err(Error::corrupt("cache: unexpected reply").into()),
        };
        let counter = if found.is_some() {
            &self.counts.hits
        } else {
            &self.counts.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(found)
    }

    async fn set(
        &self,
        tenant: &TenantId,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> tenancy_core::Result<()> {
        let keys = self.keys_for(tenant, key)?;
        let ttl = ttl_ms(ttl)?;
        if value.len() > MAX_CACHE_VALUE_BYTES {
            return Err(Error::invalid("cache value", "must be at most 64 MiB").into());
        }
        self.pool
            .eval(&SET, &keys, &[value.to_vec(), ttl, fresh_generation()])
            .await?;
        Ok(())
    }

    async fn delete(&self, tenant: &TenantId, key: &str) -> tenancy_core::Result<bool> {
        let keys = self.keys_for(tenant, key)?;
        Ok(self.pool.eval(&DELETE, &keys, &[]).await? == Value::Int(1))
    }

    async fn invalidate_tenant(&self, tenant: &TenantId) -> tenancy_core::Result<()> {
        let keys = [self.keys.cache_generation(tenant)];
        self.pool
            .eval(&INVALIDATE, &keys, &[fresh_generation()])
            .await?;
        Ok(())
    }

    fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.counts.hits.load(Ordering::Relaxed),
            misses: self.counts.misses.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl HealthCheck for RedisTenantCache {
    fn component(&self) -> &str {
        "cache"
    }

    async fn check(&self) -> Health {
        let s = self.stats();
        self.pool
            .check()
            .await
            .with_figure("hits", s.hits)
            .with_figure("misses", s.misses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_do_not_repeat() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let g = fresh_generation();
            assert_eq!(g.len(), 32);
            assert!(!g.contains(&b':'));
            assert!(seen.insert(g));
        }
    }

    #[test]
    fn ttls_round_up_to_whole_milliseconds() {
        assert_eq!(ttl_ms(Duration::from_nanos(1)).unwrap(), b"1");
        assert_eq!(ttl_ms(Duration::from_millis(1500)).unwrap(), b"1500");
        assert_eq!(ttl_ms(Duration::from_micros(1500)).unwrap(), b"2");
        assert!(ttl_ms(Duration::ZERO).is_err());
        assert!(ttl_ms(MAX_CACHE_TTL + Duration::from_secs(1)).is_err());
    }
}
