//! Revocation: a `jti` [`Denylist`] and session liveness.
//!
//! A verifier given a denylist ([`JwtVerifierBuilder::denylist`](crate::JwtVerifierBuilder::denylist))
//! refuses a token whose `jti` is on it with
//! [`TokenRejection::Revoked`](tenancy_core::TokenRejection::Revoked).
//! [`JwtVerifier::revoke`](crate::JwtVerifier::revoke) puts a token it accepted on the list
//! until the token's `exp` plus the verifier's clock leeway, the last moment the token could
//! still be accepted. With
//! [`denylist_only_without_session`](crate::JwtVerifierBuilder::denylist_only_without_session)
//! the denylist is asked only about tokens without a session, and a session-bound token is
//! revoked by ending its session. The trait and its in-memory backend live in `tenancy-core` and are
//! re-exported here; `tenancy_cache::RedisDenylist` and `tenancy_db::PgDenylist` share one
//! list between every instance of a service. Session liveness (the other half of
//! revocation) goes through the [`SessionStore`](tenancy_core::SessionStore) given to
//! [`JwtVerifierBuilder::sessions`](crate::JwtVerifierBuilder::sessions).
//!
//! ```
//! use tenancy_auth::{Denylist, MemoryDenylist};
//! use tenancy_core::TenantId;
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

pub use tenancy_core::Denylist;
pub use tenancy_core::memory::MemoryDenylist;
