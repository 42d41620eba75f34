//! Per-tenant hash chains: the record layout and the hash rules.
//!
//! Each tenant has its own chain with a gapless `seq` starting at 1. A record's hash is
//!
//! ```text
//! leaf = SHA-256("tenancy-audit/leaf/v1\0" || len(tenant) || tenant || seq || len(payload) || payload)
//! hash = SHA-256("tenancy-audit/link/v1\0" || prev_hash || leaf)
//! ```
//!
//! where `payload` is the exact stored bytes of the redacted, encoded event, integers are
//! big-endian (`len(tenant)` one byte, `seq` and `len(payload)` eight), and the first record's
//! `prev_hash` is the tenant's genesis hash `SHA-256("tenancy-audit/genesis/v1\0" || tenant)`.
//! The distinct prefixes keep leaf, link and genesis hashes from ever being confused; the
//! tenant id and `seq` inside the leaf mean a record copied into another tenant's chain or to
//! another position no longer verifies.
//!
//! ```
//! use tenancy_audit::chain::{genesis, link};
//! use tenancy_core::TenantId;
//!
//! let acme = TenantId::parse("acme")?;
//! let h1 = link(&acme, 1, &genesis(&acme), b"first");
//! let h2 = link(&acme, 2, &h1, b"second");
//! assert_ne!(h1, h2);
//! // The same bytes at the same position of another tenant's chain hash differently.
//! let globex = TenantId::parse("globex")?;
//! assert_ne!(link(&globex, 1, &genesis(&globex), b"first"), h1);
//! # Ok::<(), tenancy_core::ParseError>(())
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tenancy_core::{EventId, ParseError, TenantId};
use time::OffsetDateTime;

const LEAF: &[u8] = b"tenancy-audit/leaf/v1\0";
const LINK: &[u8] = b"tenancy-audit/link/v1\0";
const GENESIS: &[u8] = b"tenancy-audit/genesis/v1\0";

/// A SHA-256 digest; shown and serialised as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 64 lowercase hex digits.
    pub fn parse_hex(s: &str) -> Result<Self, ParseError> {
        let bytes = crate::hex::decode(s).ok_or_else(bad_digest)?;
        Self::from_slice(&bytes).ok_or_else(bad_digest)
    }

    /// A digest from exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }
}

fn bad_digest() -> ParseError {
    ParseError::new("digest", "must be 64 lowercase hex digits")
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hex::encode(&self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// The `prev_hash` of a tenant's first record.
pub fn genesis(tenant: &TenantId) -> Digest {
    let mut h = Sha256::new();
    h.update(GENESIS);
    h.update(tenant.as_str().as_bytes());
    Digest(h.finalize().into())
}

/// The leaf hash of one record: its tenant, `seq` and exact stored bytes.
pub fn leaf(tenant: &TenantId, seq: u64, payload: &[u8]) -> Digest {
    let t = tenant.as_str().as_bytes();
    let mut h = Sha256::new();
    h.update(LEAF);
    // Tenant ids are at most 64 bytes, so the length always fits one byte.
    h.update([u8::try_from(t.len()).unwrap_or(u8::MAX)]);
    h.update(t);
    h.update(seq.to_be_bytes());
    h.update((payload.len() as u64).to_be_bytes());
    h.update(payload);
    Digest(h.finalize().into())
}

/// The chain hash of a record: its predecessor's hash and its own leaf hash.
pub fn link(tenant: &TenantId, seq: u64, prev: &Digest, payload: &[u8]) -> Digest {
    let leaf = leaf(tenant, seq, payload);
    let mut h = Sha256::new();
    h.update(LINK);
    h.update(prev.0);
    h.update(leaf.0);
    Digest(h.finalize().into())
}

/// One stored record of a tenant's chain, exactly as a store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The tenant whose chain holds the record.
    pub tenant: TenantId,
    /// The position in the tenant's chain, from 1, without gaps.
    pub seq: u64,
    /// The event's id (also inside `payload`).
    pub event_id: EventId,
    /// When the event happened, to the microsecond (also inside `payload`).
    pub occurred_at: OffsetDateTime,
    /// The exact stored bytes: the redacted event in the versioned encoding of
    /// [`codec`](crate::codec). A record built from an
    /// [`EncodedEvent`](crate::codec::EncodedEvent) shares its bytes.
    pub payload: std::sync::Arc<[u8]>,
    /// The previous record's hash (the tenant's [`genesis`] hash for `seq` 1).
    pub prev_hash: Digest,
    /// This record's chain hash, [`link`] of the fields above.
    pub hash: Digest,
}

impl StoredRecord {
    /// Whether `hash` is the correct [`link`] of this record's own fields.
    pub fn is_self_consistent(&self) -> bool {
        link(&self.tenant, self.seq, &self.prev_hash, &self.payload) == self.hash
    }

    /// The position of this record after it, as a chain head.
    pub fn head(&self) -> ChainHead {
        ChainHead {
            seq: self.seq,
            hash: self.hash,
        }
    }
}

/// The last record of a chain: its `seq` and hash. What checkpoints sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// The last `seq`.
    pub seq: u64,
    /// The last record's hash.
    pub hash: Digest,
}

/// Where a chain starts after a retention purge: the last purged `seq` and its hash. The first
/// remaining record links to it. Every anchor must be confirmed by an `audit.purge` event in
/// the remaining chain that names the same `seq` and hash (see [`retention`](crate::retention)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// The last purged `seq`.
    pub seq: u64,
    /// That record's hash.
    pub hash: Digest,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_changes_the_hash() {
        let a = TenantId::parse("a").unwrap();
        let b = TenantId::parse("b").unwrap();
        let g = genesis(&a);
        let base = link(&a, 1, &g, b"x");
        assert_ne!(link(&b, 1, &g, b"x"), base);
        assert_ne!(link(&a, 2, &g, b"x"), base);
        assert_ne!(link(&a, 1, &genesis(&b), b"x"), base);
        assert_ne!(link(&a, 1, &g, b"y"), base);
        assert_ne!(genesis(&a), genesis(&b));
        // Domain separation: a leaf is never a link of the same input.
        assert_ne!(leaf(&a, 1, b"x"), base);
        let d = Digest::parse_hex(&base.to_string()).unwrap();
        assert_eq!(d, base);
        assert!(Digest::parse_hex("zz").is_err());
        assert!(Digest::parse_hex(&"A".repeat(64)).is_err());
    }
}
