//! The error type of `tenancy-http`: configuration that cannot be used.
//!
//! Request-time refusals are not errors of this kind: they are [`Rejection`](crate::Rejection)s,
//! answered as problem+json responses.
//!
//! ```
//! use tenancy_http::{Error, TrustedProxies};
//!
//! let err = TrustedProxies::parse(["10.0.0.0/33"]).unwrap_err();
//! assert!(matches!(err, Error::InvalidProxy { .. }));
//! ```

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Configuration refused by a builder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A trusted-proxy entry is neither an IP address nor a CIDR network (or one with bits
    /// set past its prefix length).
    #[error("invalid trusted proxy `{entry}`: {reason}")]
    InvalidProxy {
        /// The entry as configured.
        entry: String,
        /// Why it was refused.
        reason: String,
    },
    /// A route pattern is malformed.
    #[error("invalid route pattern `{pattern}`: {reason}")]
    InvalidRoute {
        /// The pattern as configured.
        pattern: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A header name is not a lowercase HTTP token.
    #[error("invalid header name `{name}`: must be a lowercase HTTP token")]
    InvalidHeaderName {
        /// The name as configured.
        name: String,
    },
    /// A value was refused by `tenancy-core` (a tenant id, a quota, an action name...).
    #[error(transparent)]
    Core(#[from] tenancy_core::ParseError),
}
