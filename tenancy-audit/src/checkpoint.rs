//! Signed checkpoints: a chain head signed with an Ed25519 key kept away from the log.
//!
//! Internal verification proves that a chain is consistent with itself. It cannot notice that
//! the newest records were cut off, or that someone with write access rewrote history and
//! recomputed every hash. A checkpoint can: it records `(tenant, seq, hash)` at some moment,
//! signed with a key the log's writers do not hold. Verified against it, a chain must still
//! reach `seq` and have the same hash there.
//!
//! Keep the signing key outside the audit store (a secret manager, another machine); publish
//! or archive checkpoints somewhere the store's writers cannot change.
//!
//! ```
//! use tenancy_audit::chain::{ChainHead, Digest};
//! use tenancy_audit::checkpoint::CheckpointSigner;
//! use tenancy_core::TenantId;
//!
//! let signer = CheckpointSigner::from_seed("ops-2026", [9; 32]);
//! let head = ChainHead { seq: 42, hash: Digest([1; 32]) };
//! let cp = signer.sign(&TenantId::parse("acme")?, head, time::OffsetDateTime::UNIX_EPOCH);
//! let text = serde_json::to_string(&cp)?;
//! let back: tenancy_audit::checkpoint::Checkpoint = serde_json::from_str(&text)?;
//! let trusted = back.verify(&signer.verifying_key())?;
//! assert_eq!(trusted.head().seq, 42);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use tenancy_core::TenantId;
use time::OffsetDateTime;

use crate::chain::{ChainHead, Digest};
use crate::{Error, Result};

const DOMAIN: &[u8] = b"tenancy-audit/checkpoint/v1\0";

/// A signed statement that `tenant`'s chain had `head` at `signed_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The tenant.
    pub tenant: TenantId,
    /// The chain head at signing time.
    pub seq: u64,
    /// The hash at `seq`.
    pub hash: Digest,
    /// When it was signed.
    #[serde(with = "time::serde::rfc3339")]
    pub signed_at: OffsetDateTime,
    /// A name for the signing key, to pick the verifying key during rotation.
    pub key_id: String,
    /// The Ed25519 signature, base64url without padding.
    pub signature: String,
}

fn message(
    tenant: &TenantId,
    seq: u64,
    hash: &Digest,
    at: OffsetDateTime,
    key_id: &str,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(160);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&(tenant.as_str().len() as u64).to_be_bytes());
    m.extend_from_slice(tenant.as_str().as_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash.as_bytes());
    m.extend_from_slice(&at.unix_timestamp_nanos().to_be_bytes());
    m.extend_from_slice(&(key_id.len() as u64).to_be_bytes());
    m.extend_from_slice(key_id.as_bytes());
    m
}

impl Checkpoint {
    /// Checks the signature with `key`; only a verified checkpoint can be used by
    /// [`verify`](crate::verify).
    ///
    /// # Errors
    /// [`Error::BadCheckpoint`] when the signature does not verify.
    pub fn verify(&self, key: &VerifyingKey) -> Result<TrustedCheckpoint> {
        let raw = URL_SAFE_NO_PAD
            .decode(&self.signature)
            .map_err(|_| Error::BadCheckpoint("signature is not base64url"))?;
        let sig = Signature::from_slice(&raw)
            .map_err(|_| Error::BadCheckpoint("signature has the wrong length"))?;
        let msg = message(
            &self.tenant,
            self.seq,
            &self.hash,
            self.signed_at,
            &self.key_id,
        );
        key.verify(&msg, &sig)
            .map_err(|_| Error::BadCheckpoint("signature does not verify"))?;
        Ok(TrustedCheckpoint {
            tenant: self.tenant.clone(),
            head: ChainHead {
                seq: self.seq,
                hash: self.hash,
            },
        })
    }
}

/// A checkpoint whose signature has been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedCheckpoint {
    tenant: TenantId,
    head: ChainHead,
}

impl TrustedCheckpoint {
    /// The tenant it covers.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The signed head.
    pub fn head(&self) -> ChainHead {
        self.head
    }
}

/// Signs checkpoints.
pub struct CheckpointSigner {
    key_id: String,
    key: SigningKey,
}

impl fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    /// A signer from a 32-byte Ed25519 seed.
    pub fn from_seed(key_id: impl Into<String>, seed: [u8; 32]) -> Self {
        Self {
            key_id: key_id.into(),
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// A signer with a fresh random key. Store [`CheckpointSigner::seed`] safely, away from the log.
    ///
    /// # Errors
    /// When the operating system's random source fails.
    pub fn generate(key_id: impl Into<String>) -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| Error::io("random key", std::io::Error::other(e.to_string())))?;
        Ok(Self::from_seed(key_id, seed))
    }

    /// The seed, to store the key.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// A signer from its seed as 64 hex digits ([`CheckpointSigner::seed_hex`]).
    ///
    /// ```
    /// use tenancy_audit::checkpoint::CheckpointSigner;
    /// let signer = CheckpointSigner::generate("ops-1")?;
    /// let again = CheckpointSigner::from_seed_hex("ops-1", &signer.seed_hex())?;
    /// assert_eq!(again.verifying_key(), signer.verifying_key());
    /// assert!(CheckpointSigner::from_seed_hex("ops-1", "abcd").is_err());
    /// # Ok::<(), tenancy_audit::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::BadCheckpoint`] when the text is not 32 bytes in hex.
    pub fn from_seed_hex(key_id: impl Into<String>, hex: &str) -> Result<Self> {
        let seed: [u8; 32] = crate::hex::decode(hex.trim())
            .and_then(|b| b.try_into().ok())
            .ok_or(Error::BadCheckpoint("a signing key seed is 64 hex digits"))?;
        Ok(Self::from_seed(key_id, seed))
    }

    /// The seed as 64 lowercase hex digits, to store the key in a file.
    pub fn seed_hex(&self) -> String {
        crate::hex::encode(&self.seed())
    }

    /// The key id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key that verifies this signer's checkpoints.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs `head` of `tenant`'s chain.
    pub fn sign(&self, tenant: &TenantId, head: ChainHead, at: OffsetDateTime) -> Checkpoint {
        let msg = message(tenant, head.seq, &head.hash, at, &self.key_id);
        let sig = self.key.sign(&msg);
        Checkpoint {
            tenant: tenant.clone(),
            seq: head.seq,
            hash: head.hash,
            signed_at: at,
            key_id: self.key_id.clone(),
            signature: URL_SAFE_NO_PAD.encode(sig.to_bytes()),
        }
    }
}

/// Parses a verifying key from 64 lowercase hex digits.
///
/// # Errors
/// [`Error::BadCheckpoint`] when the text is not a valid Ed25519 public key.
pub fn verifying_key_from_hex(s: &str) -> Result<VerifyingKey> {
    let bytes = crate::hex::decode(s.trim())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or(Error::BadCheckpoint(
            "public key must be 64 lowercase hex digits",
        ))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| Error::BadCheckpoint("not an Ed25519 public key"))
}

/// Shows a verifying key as 64 lowercase hex digits.
pub fn verifying_key_to_hex(key: &VerifyingKey) -> String {
    crate::hex::encode(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tampered_checkpoints_and_wrong_keys_are_refused() {
        let signer = CheckpointSigner::generate("k1").unwrap();
        let other = CheckpointSigner::generate("k1").unwrap();
        let t = TenantId::parse("acme").unwrap();
        let cp = signer.sign(
            &t,
            ChainHead {
                seq: 3,
                hash: Digest([4; 32]),
            },
            OffsetDateTime::UNIX_EPOCH,
        );
        assert!(cp.verify(&signer.verifying_key()).is_ok());
        assert!(cp.verify(&other.verifying_key()).is_err());
        for tamper in [
            |c: &mut Checkpoint| c.seq += 1,
            |c: &mut Checkpoint| c.hash = Digest([5; 32]),
            |c: &mut Checkpoint| c.tenant = TenantId::parse("globex").unwrap(),
            |c: &mut Checkpoint| c.key_id.push('x'),
            |c: &mut Checkpoint| c.signature.replace_range(0..1, "A"),
        ] {
            let mut bad = cp.clone();
            tamper(&mut bad);
            if bad != cp {
                assert!(bad.verify(&signer.verifying_key()).is_err());
            }
        }
        let hex = verifying_key_to_hex(&signer.verifying_key());
        assert_eq!(
            verifying_key_from_hex(&hex).unwrap(),
            signer.verifying_key()
        );
    }
}
