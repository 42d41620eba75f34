//! The verification cache: repeated tokens skip the signature check.
//!
//! Entries are keyed by the SHA-256 digest of the token (the token itself is not kept), hold
//! the verified claims, and are never served at or after the token's `exp`. The cache is
//! bounded in entries and in memory: sharded maps, each with a share of both bounds, expired
//! entries swept as inserts go, and live entries evicted when a shard is full (the first in
//! the map's order: keys are SHA-256 digests, so which entry goes is nobody's choice without a
//! preimage). The memory bound counts each entry's claims (every string, permission and
//! allocation, estimated), so a token stuffed with permissions takes the room of the several
//! ordinary ones it displaces, and a set of claims larger than a shard's share is not cached.
//! A change of keys (a key retired from a JWKS) empties it, so a token signed by a retired
//! key is checked again.
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
//!     .cache_memory(256 << 20) // bytes; the default is 64 MiB
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
    /// The memory the entries take now, in bytes, as the cache estimates it.
    pub bytes: usize,
    /// The most memory the entries may take, in bytes.
    pub memory: usize,
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
    /// What the entry takes ([`weight`]).
    bytes: usize,
}

/// What an entry takes in memory, estimated: the entry, the claims and every allocation they
/// hold (each string's bytes plus the allocator's overhead and rounding).
fn weight(c: &Claims) -> usize {
    const PER_ALLOCATION: usize = 32;
    let text = |s: &str| s.len() + PER_ALLOCATION;
    size_of::<Entry>()
        + size_of::<Claims>()
        + PER_ALLOCATION
        + text(&c.iss)
        + text(&c.sub)
        + c.aud.as_slice().iter().map(|a| text(a)).sum::<usize>()
        + c.jti.as_deref().map_or(0, text)
        + text(c.tenant_id.as_str())
        + text(c.user_id.as_str())
        + c.sid.as_ref().map_or(0, |s| text(s.as_str()))
        + PER_ALLOCATION
        + c.permissions
            .iter()
            .map(|p| size_of_val(p) + text(p.as_str()))
            .sum::<usize>()
}

#[derive(Default)]
struct Shard {
    /// Keyed by the token's SHA-256 digest, already uniform: an attacker cannot aim at a
    /// bucket without a SHA-256 preimage, so the map keeps the digest's bits as its hash.
    map: HashMap<[u8; 32], Entry, BuildHasherDefault<UniformHasher>>,
    /// The entries' [`weight`]s, summed.
    bytes: usize,
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
    bytes_per_shard: usize,
}

impl Shard {
    fn remove(&mut self, key: &Digest32) {
        if let Some(e) = self.map.remove(key) {
            self.bytes -= e.bytes;
        }
    }
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
    /// At most `capacity` entries taking at most `memory` bytes (each shard a sixteenth).
    pub(crate) fn new(capacity: usize, memory: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS)
                .map(|_| Padded(Mutex::new(Shard::default())))
                .collect(),
            per_shard,
            bytes_per_shard: memory / SHARDS,
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
                shard.remove(key);
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
        let bytes = weight(claims);
        if bytes > self.bytes_per_shard {
            return;
        }
        let mut shard = lock(self.shard(&key));
        shard.inserts_since_sweep += 1;
        if shard.inserts_since_sweep >= self.per_shard {
            shard.inserts_since_sweep = 0;
            let mut kept = 0;
            shard.map.retain(|_, e| {
                let keep = e.exp > now && e.epoch == epoch;
                kept += if keep { e.bytes } else { 0 };
                keep
            });
            shard.bytes = kept;
        }
        shard.remove(&key);
        // Room for one more entry of `bytes`: the first entries in the map's order go.
        while shard.map.len() >= self.per_shard || shard.bytes + bytes > self.bytes_per_shard {
            let Some(victim) = shard.map.keys().next().copied() else {
                break;
            };
            shard.remove(&victim);
        }
        shard.bytes += bytes;
        shard.map.insert(
            key,
            Entry {
                claims: Arc::clone(claims),
                exp: claims.exp,
                epoch,
                bytes,
            },
        );
    }

    pub(crate) fn clear(&self) {
        for s in &self.shards {
            let mut s = lock(&s.0);
            s.map.clear();
            s.bytes = 0;
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let mut stats = CacheStats {
            capacity: self.per_shard * SHARDS,
            memory: self.bytes_per_shard * SHARDS,
            ..CacheStats::default()
        };
        for s in &self.shards {
            let s = lock(&s.0);
            stats.entries += s.map.len();
            stats.bytes += s.bytes;
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
        let c = VerificationCache::new(100, 1 << 20);
        let k = digest("t1");
        c.insert(k, &claims(1_000), 900, 0);
        assert!(c.get(&k, 999, 0).is_some());
        assert!(c.get(&k, 1_000, 0).is_none(), "served at exp");
        c.insert(k, &claims(1_000), 900, 0);
        assert!(c.get(&k, 950, 1).is_none(), "served across a key change");
        c.insert(k, &claims(1_000), 1_000, 0);
        assert_eq!(c.stats().entries, 0, "an expired token was cached");
    }

    /// Claims stuffed with permissions: the cache's memory stays within its bound, the large
    /// entries displacing each other (and the ordinary ones), and the account of the bytes
    /// held is exact when entries go by eviction, expiry, replacement or a clear.
    #[test]
    fn memory_is_bounded() {
        fn stuffed(exp: i64, n: usize) -> Arc<Claims> {
            let permissions: Vec<String> = (0..n).map(|i| format!("\"p{i}:read\"")).collect();
            Arc::new(
                Claims::from_json(
                    format!(
                        r#"{{"iss":"i","aud":"a","sub":"s","exp":{exp},"tenant_id":"acme","user_id":"u","user_role":"user","permissions":[{}]}}"#,
                        permissions.join(",")
                    )
                    .as_bytes(),
                )
                .unwrap(),
            )
        }
        let memory = 16 * 64 * 1024;
        let c = VerificationCache::new(100_000, memory);
        let big = stuffed(5_000, 500);
        let heavy = weight(&big);
        assert!(heavy > 500 * 48, "{heavy}");
        for i in 0..2_000 {
            c.insert(digest(&format!("big{i}")), &big, 10, 0);
        }
        let s = c.stats();
        assert!(s.bytes <= s.memory && s.memory == memory, "{s:?}");
        assert!(s.entries < 2_000 && s.entries >= 16, "{s:?}");
        // Ordinary claims still fit, many times more of them.
        for i in 0..2_000 {
            c.insert(digest(&format!("small{i}")), &claims(5_000), 10, 0);
        }
        let s = c.stats();
        assert!(s.bytes <= s.memory && s.entries > 1_000, "{s:?}");
        // The account of bytes held is the sum of what is held.
        let held: usize = c
            .shards
            .iter()
            .map(|p| lock(&p.0).map.values().map(|e| e.bytes).sum::<usize>())
            .sum();
        assert_eq!(held, s.bytes);
        // Claims larger than a shard's share are not cached at all.
        let huge = stuffed(5_000, 2_000);
        assert!(weight(&huge) > memory / 16);
        let k = digest("huge");
        c.insert(k, &huge, 10, 0);
        assert!(c.get(&k, 11, 0).is_none());
        // Replacing, expiring and clearing keep the account.
        let k = digest("small0");
        c.insert(k, &claims(5_000), 10, 0);
        assert!(c.get(&k, 6_000, 0).is_none(), "expired");
        let held: usize = c
            .shards
            .iter()
            .map(|p| lock(&p.0).map.values().map(|e| e.bytes).sum::<usize>())
            .sum();
        assert_eq!(held, c.stats().bytes);
        c.clear();
        assert_eq!((c.stats().entries, c.stats().bytes), (0, 0));
        // The same token cached twice is held, and counted, once.
        let k = digest("again");
        c.insert(k, &claims(5_000), 10, 0);
        c.insert(k, &claims(5_000), 10, 0);
        assert_eq!(
            (c.stats().entries, c.stats().bytes),
            (1, weight(&claims(5_000)))
        );
    }

    #[test]
    fn size_is_bounded() {
        let c = VerificationCache::new(64, 1 << 20);
        for i in 0..10_000 {
            c.insert(digest(&format!("t{i}")), &claims(5_000), 10, 0);
        }
        let s = c.stats();
        assert!(s.entries <= s.capacity, "{s:?}");
        assert!(s.entries >= 32, "{s:?}");
    }
}
