//! The error type of `tenancy-cache`, and how it maps into [`tenancy_core::Error`].
//!
//! Methods of the core traits return [`tenancy_core::Error`]; the pool and the builders of this
//! crate return [`Error`]. The mapping keeps the cause as the source:
//!
//! | `tenancy_cache::Error`            | `tenancy_core::Error` |
//! |-----------------------------------|-----------------------|
//! | `Invalid`                         | `Invalid`             |
//! | `Connect`, `Redis`, `CircuitOpen` | `Unavailable`         |
//! | `Timeout`, `PoolTimeout`          | `Timeout`             |
//! | `Corrupt`, a `WRONGTYPE` reply    | `Corrupt`             |
//!
//! ```
//! use tenancy_cache::{Error, RedisConfig};
//! use tenancy_core::ErrorKind;
//!
//! let err = RedisConfig::single("not a url").connect_lazy().unwrap_err();
//! assert!(matches!(err, Error::Invalid(_)));
//! assert_eq!(tenancy_core::Error::from(err).kind(), ErrorKind::Invalid);
//! ```

use std::time::Duration;

use tenancy_core::{BoxError, ParseError};

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong talking to Redis.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value or an input was refused before anything was sent.
    #[error(transparent)]
    Invalid(#[from] ParseError),
    /// No connection could be established (after the configured retries).
    #[error("could not connect to Redis")]
    Connect(#[source] redis::RedisError),
    /// Redis answered a command with an error, or the connection failed mid-command.
    #[error("Redis command failed")]
    Redis(#[source] redis::RedisError),
    /// The operation did not finish within its time bound.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// No pooled connection became available within the acquire timeout.
    #[error("no Redis connection available within {0:?}")]
    PoolTimeout(Duration),
    /// The rate limiter's circuit breaker is open: Redis failed repeatedly and is not asked
    /// again until the cool-down ends.
    #[error("Redis circuit breaker is open")]
    CircuitOpen,
    /// Redis returned data this crate did not write or cannot read.
    #[error("unexpected data in Redis")]
    Corrupt(#[source] BoxError),
}

impl Error {
    /// Whether retrying later may succeed (connection, timeout and breaker failures).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Timeout(_) | Self::PoolTimeout(_) | Self::CircuitOpen => true,
            Self::Redis(e) => !is_wrong_type(e),
            Self::Invalid(_) | Self::Corrupt(_) => false,
        }
    }

    #[cfg(any(feature = "rate-limit", feature = "session", feature = "cache"))]
    pub(crate) fn corrupt(msg: &'static str) -> Self {
        Self::Corrupt(msg.into())
    }

    pub(crate) fn invalid(what: &'static str, reason: &'static str) -> Self {
        Self::Invalid(ParseError::new(what, reason))
    }
}

fn is_wrong_type(e: &redis::RedisError) -> bool {
    e.code() == Some("WRONGTYPE") || e.code() == Some(CORRUPT_CODE)
}

/// The error code the Lua scripts of this crate raise when they find state they did not write.
pub(crate) const CORRUPT_CODE: &str = "TENANCY_CORRUPT";

impl From<Error> for tenancy_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(p) => Self::Invalid(p),
            Error::Timeout(_) | Error::PoolTimeout(_) => Self::Timeout,
            Error::Corrupt(_) => Self::Corrupt(Box::new(e)),
            Error::Redis(ref r) if is_wrong_type(r) => Self::Corrupt(Box::new(e)),
            Error::Connect(_) | Error::Redis(_) | Error::CircuitOpen => {
                Self::Unavailable(Box::new(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tenancy_core::ErrorKind;

    use super::*;

    #[test]
    fn kinds_map_into_core() {
        let t = tenancy_core::Error::from(Error::Timeout(Duration::from_millis(5)));
        assert_eq!(t.kind(), ErrorKind::Timeout);
        let o = tenancy_core::Error::from(Error::CircuitOpen);
        assert_eq!(o.kind(), ErrorKind::Unavailable);
        assert!(std::error::Error::source(&o).is_some(), "the cause is kept");
        let c = tenancy_core::Error::from(Error::corrupt("bad"));
        assert_eq!(c.kind(), ErrorKind::Corrupt);
        let wrong = redis::make_extension_error(CORRUPT_CODE.to_owned(), None);
        assert!(!Error::Redis(wrong).is_unavailable());
    }
}
