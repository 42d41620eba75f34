//! The verification cache: repeated tokens skip the signature check.
//!
//! Entries are keyed by the SHA-256 digest of the token (the token itself is not kept), hold
//! the verified claims, and are never served at or after the token's `exp`. The cache is
//! bounded: sharded maps with a per-shard capacity, expired entries swept as inserts go, and a
//! random live entry evicted when a shard is full. A change of keys (a key retired from a
//! JWKS) empties it, so a token signed by a retired key is checked again.
//!
//! Revocation (`jti` denylist) and session liveness are not cached: they are checked on every
//! call, hit or miss, so a logout takes effect at once.
//!
//! ```
//! use std::time::Duration;
//! use tenancy_auth::{Algorithm, JwtVerifier, KeySet, VerifyKey};
//!
//! let key = VerifyKey::hmac(b"0123456789abcdef0123456789abcdef", Algorithm::HS256)?;
//! let verifier = JwtVerifier::builder()
//!     .issuer("https://id.example", KeySet::new().with(key))
//!     .audience("api")
//!     .cache_capacity(50_000) // the default is 10 000; 0 turns the cache off
//!     .build()?;
//! assert_eq!(verifier.cache_stats().entries, 0);
//! # Ok::<(), tenancy_auth::Error>(())
//! ```

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tenancy_core::{Claims, UniformHasher};

const SHARDS: usize = 16;

/// Figures about a verifier's cache, for dashboards and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CacheStats {
    /// Entries held now.
    pub entries: usize,
    /// The most entries it will hold.
    pub capacity: usize,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went on to full verification.
    pub misses: u64,
}

struct Entry {
    /// Shared with every caller the entry is served to (no copy per hit).
    claims: Arc<Claims>,
    exp: i64,
    epoch: u64,
}

#[derive(Default)]
struct Shard {
    /// Keyed by the token's SHA-256 digest, already uniform: an attacker cannot aim at a
    /// bucket without a SHA-256 preimage, so the map keeps the digest's bits as its hash.
    map: HashMap<[u8; 32], Entry, BuildHasherDefault<UniformHasher>>,
    inserts_since_sweep: usize,
    /// Counted under the shard's lock: a counter of its own that every lookup increments
    /// would be one more cache line that all request threads write.
    hits: u64,
    misses: u64,
}

/// A shard on cache lines of its own: threads looking up tokens of different shards do not
/// write to the same line.
#[repr(align(64))]
struct Padded(Mutex<Shard>);

pub(crate) struct VerificationCache {
    shards: Vec<Padded>,
    per_shard: usize,
}

pub(crate) type Digest32 = [u8; 32];

pub(crate) fn digest(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

fn lock(m: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    // A panic while holding the lock cannot leave a shard half-updated in a way that matters
    // (each operation is a single map call), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl VerificationCache {
    pub(crate) fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS)
                .map(|_| Padded(Mutex::new(Shard::default())))
                .collect(),
            per_shard,
        }
    }

    fn shard(&self, key: &Digest32) -> &Mutex<Shard> {
        &self.shards[usize::from(key[0]) % SHARDS].0
    }

    /// The cached claims, when present, issued under `epoch` and not expired at `now`; a hit
    /// is counted. A miss is counted by [`VerificationCache::missed`], where the token is
    /// then verified (a look that finds the token's keys out of reach verifies nothing).
    pub(crate) fn get(&self, key: &Digest32, now: i64, epoch: u64) -> Option<Arc<Claims>> {
        let mut shard = lock(self.shard(key));
        let found = match shard.map.get(key) {
            Some(e) if e.exp > now && e.epoch == epoch => Some(Arc::clone(&e.claims)),
            Some(_) => {
                shard.map.remove(key);
                None
            }
            None => None,
        };
        if found.is_some() {
            shard.hits += 1;
        }
        found
    }

    /// Counts a lookup that went on to full verification.
    pub(crate) fn missed(&self, key: &Digest32) {
        lock(self.shard(key)).misses += 1;
    }

    pub(crate) fn insert(&self, key: Digest32, claims: &Arc<Claims>, now: i64, epoch: u64) {
        if claims.exp <= now {
            return;
        }
        let mut shard = lock(self.shard(&key));
        shard.inserts_since_sweep += 1;
        if shard.inserts_since_sweep >= self.per_shard {
            shard.inserts_since_sweep = 0;
            shard.map.retain(|_, e| e.exp > now && e.epoch == epoch);
        }
        if shard.map.len() >= self.per_shard && !shard.map.contains_key(&key) {
            // HashMap iteration order is randomised per map: this evicts an arbitrary entry.
            if let Some(victim) = shard.map.keys().next().copied() {
                shard.map.remove(&victim);
            }
        }
        shard.map.insert(
            key,
            Entry {
                claims: Arc::clone(claims),
                exp: claims.exp,
                epoch,
            },
        );
    }

    pub(crate) fn clear(&self) {
        for s in &self.shards {
            lock(&s.0).map.clear();
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let mut stats = CacheStats {
            capacity: self.per_shard * SHARDS,
            ..CacheStats::default()
        };
        for s in &self.shards {
            let s = lock(&s.0);
            stats.entries += s.map.len();
            stats.hits += s.hits;
            stats.misses += s.misses;
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Arc<Claims> {
        Arc::new(
            Claims::from_json(
            format!(
                r#"{{"iss":"i","aud":"a","sub":"s","exp":{exp},"tenant_id":"acme","user_id":"u","user_role":"user","permissions":[]}}"#
            )
            .as_bytes(),
            )
            .unwrap(),
        )
    }

    #[test]
    fn expired_and_old_epoch_entries_are_not_served() {
        let c = VerificationCache::new(100);
        let k = digest("t1");
        c.insert(k, &claims(1_000), 900, 0);
        assert!(c.get(&k, 999, 0).is_some());
        assert!(c.get(&k, 1_000, 0).is_none(), "served at exp");
        c.insert(k, &claims(1_000), 900, 0);
        assert!(c.get(&k, 950, 1).is_none(), "served across a key change");
        c.insert(k, &claims(1_000), 1_000, 0);
        assert_eq!(c.stats().entries, 0, "an expired token was cached");
    }

    #[test]
    fn size_is_bounded() {
        let c = VerificationCache::new(64);
        for i in 0..10_000 {
            c.insert(digest(&format!("t{i}")), &claims(5_000), 10, 0);
        }
        let s = c.stats();
        assert!(s.entries <= s.capacity, "{s:?}");
        assert!(s.entries >= 32, "{s:?}");
    }
}
