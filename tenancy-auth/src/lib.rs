//! `tenancy-auth`: JWT issue and verification that is safe by default.
//!
//! - [`JwtVerifier`] implements [`tenancy_core::TokenVerifier`]: an allowed set of
//!   algorithms (never `none`, keys bound to one algorithm so a public key cannot be used as an
//!   HMAC secret), `exp`, `iss` and `aud` required and checked, `nbf` and `iat` checked with a
//!   leeway, the tenancy claims required ([`tenancy_core::Claims::from_json`]), an 8 KiB size
//!   limit before any decoding, key sets with `kid` per issuer, a verification cache, a `jti`
//!   [`Denylist`] and session liveness through a [`tenancy_core::SessionStore`].
//! - Keys come from PEM, DER, JWK ([`VerifyKey`], [`KeySet`]) or a JWKS URL
//!   ([`JwksKeySet`], feature `jwks`) refreshed in the background, refreshed on an unknown
//!   `kid` at a limited rate, and served from the last good set while the provider is down
//!   behind a circuit breaker whose state shows in health checks.
//! - [`TokenIssuer`] mints access tokens and opaque refresh tokens that rotate on every use;
//!   a spent refresh token presented again ends the whole session.
//!
//! Refusals are [`tenancy_core::Error::Rejected`] with the precise
//! [`tenancy_core::TokenRejection`] for logs and metrics; an HTTP layer answers all of them
//! with the same `401`.
//!
//! ```
//! use tenancy_auth::{Algorithm, JwtVerifier, SigningKey, TokenIssuer};
//! use tenancy_core::TokenVerifier;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = SigningKey::hmac(b"a secret of at least thirty-two bytes", Algorithm::HS256)?;
//! let issuer = TokenIssuer::builder(key.clone(), "https://id.example", "api").build()?;
//! let verifier = JwtVerifier::builder()
//!     .issuer("https://id.example", key.verify_key()?)
//!     .audience("api")
//!     .build()?;
//!
//! let token = issuer.access_token(
//!     &"acme".parse()?, &"alice".parse()?, &"user".parse()?, &Default::default(), None,
//! )?;
//! assert_eq!(verifier.verify(&token).await?.user_id.as_str(), "alice");
//! # Ok(()) }
//! ```
//!
//! # Features
//! | feature | enables | default |
//! |---------|---------|---------|
//! | `jwks`  | [`JwksKeySet`]: keys from a JWKS URL over HTTP(S) (hyper + rustls with *ring*, system roots), background refresh, circuit breaker | yes |
//!
//! The JWT cryptography is `jsonwebtoken` with its `rust_crypto` backend named explicitly:
//! there is no build of this crate without a backend. `jsonwebtoken` picks its process-wide
//! provider from its features, and when another crate of the same binary enables its
//! `aws_lc_rs` feature too, it can pick none and would panic at the first key or signature.
//! So, before its first key, signature or verification, this crate installs the
//! `rust_crypto` provider as the process default, unless one is installed already: an
//! application that wants another installs it (`CryptoProvider::install_default`) before it
//! builds any key, issuer or verifier of this crate.

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod cache;
pub mod error;
pub mod issuer;
#[cfg(feature = "jwks")]
pub mod jwks;
pub mod key;
pub mod revocation;
pub mod verifier;

pub use cache::CacheStats;
pub use error::{Error, Result};
pub use issuer::{DEFAULT_ACCESS_TTL, RefreshToken, TokenIssuer, TokenIssuerBuilder, TokenPair};
#[cfg(feature = "jwks")]
pub use jwks::{BreakerState, JwksKeySet, JwksKeySetBuilder};
pub use key::{Algorithm, KeySet, SigningKey, VerifyKey};
pub use revocation::{Denylist, MemoryDenylist};
pub use verifier::{
    DEFAULT_LEEWAY, DEFAULT_MAX_TOKEN_LEN, JwtVerifier, JwtVerifierBuilder, KeySource,
};

/// Installs `jsonwebtoken`'s `rust_crypto` provider as the process default unless one is
/// already (see the crate docs); called before every use of `jsonwebtoken`'s cryptography.
pub(crate) fn crypto_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // `Err`: another provider was installed first, and is used.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    });
}
