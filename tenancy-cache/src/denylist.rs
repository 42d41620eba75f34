//! [`RedisDenylist`]: revoked token ids in Redis, shared by every instance of a service.
//!
//! ```no_run
//! use tenancy_cache::{RedisConfig, RedisDenylist};
//! use tenancy_core::{Denylist, TenantId};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = RedisConfig::single("redis://127.0.0.1:6379").connect().await?;
//! let denylist = RedisDenylist::new(pool);
//! denylist.check_eviction_policy().await?;              // refuses an evicting Redis
//! let acme = TenantId::parse("acme")?;
//! denylist.revoke(&acme, "token-1", 4_102_444_800).await?;
//! assert!(denylist.is_revoked(&acme, "token-1").await?);
//! # Ok(()) }
//! ```
//!
//! # How entries are stored
//! One string per revoked token, under `<ns>:d:{t:<tenant>}:j:<base64url jti>` (see
//! [`keys`](crate::keys)), holding the entry's `expires_at`. Whether a token is revoked is
//! decided on the denylist's [`Clock`](tenancy_core::Clock) against that value; the Redis TTL
//! (the time left on that clock plus [`GC_GRACE_SECS`]) only reclaims memory, so a Redis
//! whose clock runs ahead cannot end an entry early. A revocation is one script: it never
//! moves a stored `expires_at` back.
//!
//! # Eviction
//! An evicted entry lets its revoked token back in. The denylist needs `noeviction` on every
//! primary, as the session store does: check it at start-up with
//! [`RedisDenylist::check_eviction_policy`].

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Value;
use tenancy_core::{Denylist, SharedClock, TenantId, check_jti, system_clock};

use crate::error::{Error, Result};
use crate::keys::KeySpace;
use crate::pool::{Lua, RedisPool};

/// Redis keeps an entry this much longer than its `expires_at` on the denylist's clock
/// (memory only: the token is accepted again on that clock already), so that clocks that
/// disagree by less than this cannot end an entry early.
pub const GC_GRACE_SECS: i64 = 60;

/// The longest Redis TTL an entry is given (about 140 million years): within what Redis
/// accepts for `EX` and what a Lua number holds exactly, whatever `expires_at` a caller passes.
const MAX_TTL_SECS: i64 = 1 << 52;

// KEYS: the entry. ARGV: expires_at, its TTL in seconds. Keeps the later expires_at.
static REVOKE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        "denylist_revoke",
        r"
local held = tonumber(redis.call('GET', KEYS[1]) or '')
local e = tonumber(ARGV[1])
if held and held >= e then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"
        .to_owned(),
    )
});

/// A [`Denylist`] in Redis (one node or a Cluster): a revocation holds on every instance that
/// uses the same Redis and namespace.
#[derive(Clone)]
pub struct RedisDenylist {
    pool: RedisPool,
    keys: KeySpace,
    clock: SharedClock,
}

impl std::fmt::Debug for RedisDenylist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDenylist")
            .field("namespace", &self.keys.namespace())
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl RedisDenylist {
    /// A denylist on `pool`, in the default namespace, deciding expiry on the system clock.
    pub fn new(pool: RedisPool) -> Self {
        Self {
            pool,
            keys: KeySpace::default(),
            clock: system_clock(),
        }
    }

    /// The same denylist in another key space (another namespace).
    pub fn with_key_space(mut self, keys: KeySpace) -> Self {
        self.keys = keys;
        self
    }

    /// The same denylist deciding expiry on `clock`.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The pool this denylist uses.
    pub fn pool(&self) -> &RedisPool {
        &self.pool
    }

    /// Checks, once at start-up, that Redis never evicts this denylist's entries (an evicted
    /// entry lets its revoked token back in): `maxmemory-policy` must be `noeviction` on
    /// every primary, unless there is no memory bound. Where `CONFIG GET` is refused, logs a
    /// warning and passes.
    ///
    /// # Errors
    /// [`Error::Misconfigured`] naming the evicting node; connection errors.
    pub async fn check_eviction_policy(&self) -> Result<()> {
        self.pool
            .check_no_eviction(
                "the denylist needs noeviction: an evicted entry lets its revoked token back in",
            )
            .await
    }

    fn now(&self) -> i64 {
        self.clock.now().unix_timestamp()
    }
}

#[async_trait]
impl Denylist for RedisDenylist {
    async fn is_revoked(&self, tenant: &TenantId, jti: &str) -> tenancy_core::Result<bool> {
        if check_jti(jti).is_err() {
            // Never stored (`revoke` refuses it), so never revoked; and no key is built from it.
            return Ok(false);
        }
        let key = self.keys.denylist_entry(tenant, jti);
        let held: Option<String> = self.pool.query(redis::cmd("GET").arg(&key)).await?;
        match held {
            None => Ok(false),
            Some(v) => {
                let expires_at: i64 = v
                    .parse()
                    .map_err(|_| Error::corrupt("denylist: entry is not a time"))?;
                Ok(expires_at > self.now())
            }
        }
    }

    async fn revoke(
        &self,
        tenant: &TenantId,
        jti: &str,
        expires_at: i64,
    ) -> tenancy_core::Result<()> {
        check_jti(jti)?;
        let now = self.now();
        if expires_at <= now {
            return Ok(());
        }
        let ttl = expires_at
            .saturating_sub(now)
            .saturating_add(GC_GRACE_SECS)
            .min(MAX_TTL_SECS);
        let key = self.keys.denylist_entry(tenant, jti);
        match self
            .pool
            .eval(
                &REVOKE,
                &[key],
                &[
                    expires_at.to_string().into_bytes(),
                    ttl.to_string().into_bytes(),
                ],
            )
            .await?
        {
            Value::Int(_) => Ok(()),
            _ => Err(Error::corrupt("denylist: unexpected reply").into()),
        }
    }
}
