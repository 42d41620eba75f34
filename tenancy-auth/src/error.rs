//! The error type of `tenancy-auth`: configuration, key loading, key fetching and token issue.
//!
//! Verification itself answers with [`tenancy_core::Error`] (a refusal is
//! [`tenancy_core::Error::Rejected`] with its [`TokenRejection`](tenancy_core::TokenRejection),
//! a key provider outage with no usable cached key is [`tenancy_core::Error::Unavailable`]), so
//! that middleware handles every [`TokenVerifier`](tenancy_core::TokenVerifier) alike. This
//! enum covers what goes wrong while setting a verifier or an issuer up, and converts into the
//! core error where a core trait needs it.
//!
//! ```
//! use tenancy_auth::{Algorithm, Error, VerifyKey};
//!
//! // An HS256 secret must be at least 32 bytes long.
//! let err = VerifyKey::hmac(b"short", Algorithm::HS256).unwrap_err();
//! assert!(matches!(err, Error::WeakKey { .. }));
//! let core: tenancy_core::Error = err.into();
//! assert_eq!(core.kind(), tenancy_core::ErrorKind::Invalid);
//! ```

use std::borrow::Cow;

use tenancy_core::{BoxError, ParseError};

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while configuring, loading keys, fetching a key set or issuing tokens.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is incomplete or contradictory; the text says which settings and,
    /// where it helps, their values.
    #[error("invalid configuration: {0}")]
    Config(Cow<'static, str>),
    /// Key material could not be parsed (bad PEM, DER or JWK).
    #[error("invalid {what} key")]
    InvalidKey {
        /// Which kind of key was being read (`"RSA PEM"`, `"JWK"`, ...).
        what: &'static str,
        /// The parser's error.
        #[source]
        source: BoxError,
    },
    /// The key is of a kind or size the algorithm must not be used with.
    #[error("weak or mismatched key for {alg:?}: {reason}")]
    WeakKey {
        /// The algorithm the key was meant for.
        alg: jsonwebtoken::Algorithm,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A key set document (JWKS) could not be read.
    #[error("invalid key set document")]
    InvalidKeySet(#[source] BoxError),
    /// The key provider could not be reached or answered with an error.
    #[error("key provider unavailable")]
    Fetch(#[source] BoxError),
    /// The key provider's circuit breaker is open: no request was sent.
    #[error("key provider circuit is open")]
    CircuitOpen,
    /// Signing a token failed.
    #[error("signing failed")]
    Signing(#[source] BoxError),
    /// The session store failed while issuing or refreshing tokens.
    #[error(transparent)]
    Store(#[from] tenancy_core::Error),
    /// A value did not validate.
    #[error(transparent)]
    Invalid(#[from] ParseError),
}

impl Error {
    pub(crate) fn invalid_key(what: &'static str, source: impl Into<BoxError>) -> Self {
        Self::InvalidKey {
            what,
            source: source.into(),
        }
    }
}

impl From<Error> for tenancy_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Store(inner) => inner,
            Error::Invalid(p) => tenancy_core::Error::Invalid(p),
            Error::Fetch(_) | Error::CircuitOpen => tenancy_core::Error::unavailable(e),
            Error::Config(reason) => {
                tenancy_core::Error::Invalid(ParseError::new("auth configuration", reason))
            }
            Error::WeakKey { reason, .. } => {
                tenancy_core::Error::Invalid(ParseError::new("key", reason))
            }
            Error::InvalidKey { what, .. } => {
                tenancy_core::Error::Invalid(ParseError::new("key", what))
            }
            Error::InvalidKeySet(_) => tenancy_core::Error::corrupt(e),
            Error::Signing(_) => tenancy_core::Error::unavailable(e),
        }
    }
}
