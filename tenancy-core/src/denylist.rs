//! Revocation of single tokens: the [`Denylist`] trait.
//!
//! A token verifier given a denylist refuses a token whose `jti` is on it, in the token's
//! tenant. An entry must be kept until the revoked token's `exp` plus the verifier's clock
//! leeway, the last moment a verifier still accepts the token; after that it is refused as
//! expired anyway and the entry may be forgotten. (An entry dropped at `exp` would let the
//! token back in for the leeway after it.) Backends: [`MemoryDenylist`](crate::memory::MemoryDenylist)
//! in one process; `RedisDenylist` (tenancy-cache) and `PgDenylist` (tenancy-db) shared by
//! every instance of a service, so that a logout on one instance holds on all of them.
//!
//! ```
//! use tenancy_core::{Denylist, TenantId, memory::MemoryDenylist};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tenancy_core::Error> {
//! let denylist = MemoryDenylist::new();
//! let acme = TenantId::parse("acme")?;
//! denylist.revoke(&acme, "token-1", 4_102_444_800).await?;
//! assert!(denylist.is_revoked(&acme, "token-1").await?);
//! assert!(!denylist.is_revoked(&TenantId::parse("globex")?, "token-1").await?);
//! # Ok(()) }
//! ```

use std::fmt;

use async_trait::async_trait;

use crate::{Result, TenantId};

/// Longest `jti` a backend stores: 1 KiB. A verifier refuses longer ones before asking.
pub const MAX_JTI_BYTES: usize = 1024;

/// Revoked token ids, per tenant.
///
/// Every backend keeps an entry until the `expires_at` it was given (a later `revoke` of the
/// same `jti` can extend an entry, never shorten it), keeps the tenants apart, and treats a
/// `jti` as opaque bytes: any text up to [`MAX_JTI_BYTES`], separators and wildcards of the
/// backend's own syntax included. A backend that cannot answer returns an error (kind
/// `Unavailable`); the verifier then refuses the token rather than guess.
#[async_trait]
pub trait Denylist: Send + Sync + fmt::Debug + 'static {
    /// Whether `jti` of `tenant` has been revoked (and its entry has not expired).
    async fn is_revoked(&self, tenant: &TenantId, jti: &str) -> Result<bool>;

    /// Revokes `jti` of `tenant` until `expires_at` (seconds since the Unix epoch), after
    /// which the entry may be forgotten. A moment already past revokes nothing.
    ///
    /// `expires_at` must be the last moment a verifier can still accept the token: its `exp`
    /// plus the verifier's clock leeway, not `exp` alone. `tenancy_auth::JwtVerifier::revoke`
    /// passes exactly that.
    ///
    /// # Errors
    /// `Invalid` for a `jti` [`check_jti`] refuses; `Unavailable` when the backend cannot be
    /// reached.
    async fn revoke(&self, tenant: &TenantId, jti: &str, expires_at: i64) -> Result<()>;
}

/// Refuses a `jti` no backend stores (the same check in every backend).
///
/// # Errors
/// `Invalid` when `jti` is empty, longer than [`MAX_JTI_BYTES`], or holds a control character.
pub fn check_jti(jti: &str) -> Result<()> {
    if jti.len() > MAX_JTI_BYTES {
        return Err(crate::ParseError::new("jti", "longer than 1024 bytes").into());
    }
    // Empty, every such token would share one revocation; a control character would reach
    // the logs and audit records that name a revoked token.
    if jti.is_empty() {
        return Err(crate::ParseError::new("jti", "must not be empty").into());
    }
    if jti.chars().any(char::is_control) {
        return Err(crate::ParseError::new("jti", "must not contain control characters").into());
    }
    Ok(())
}
