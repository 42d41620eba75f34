//! The error type of `tenancy-cache`, and how it maps into [`tenancy_core::Error`].
//!
//! Methods of the core traits return [`tenancy_core::Error`]; the pool and the builders of this
//! crate return [`Error`]. The mapping keeps the cause as the source:
//!
//! | `tenancy_cache::Error`                                  | `tenancy_core::Error` |
//! |---------------------------------------------------------|-----------------------|
//! | `Invalid`                                               | `Invalid`             |
//! | `Connect`, `Redis` when [transient], `CircuitOpen`      | `Unavailable`         |
//! | `Timeout`, `PoolTimeout`                                | `Timeout`             |
//! | `Corrupt`, a `WRONGTYPE` reply                          | `Corrupt`             |
//! | `Connect`, `Redis` otherwise (a refused command)        | `Internal`            |
//! | `Misconfigured`                                         | `Internal`            |
//!
//! # Down or refused
//! Only a failure that may pass by itself is *transient* ([`Error::is_unavailable`]): an I/O
//! error, a timeout, a dropped or refused connection, and the error replies of a server that
//! is busy, full or changing shape (`LOADING`, `BUSY`, `TRYAGAIN`, `CLUSTERDOWN`,
//! `MASTERDOWN`, `OOM`, `MISCONF` (writes stopped while a snapshot cannot be saved: a full
//! disk), `NOREPLICAS`, too many clients, `READONLY` from a primary that became
//! a replica in a fail-over, and `MOVED`/`ASK`, which the Cluster client follows by itself
//! and only surface mid-resharding).
//! These take the outage path: the rate limiter's failure policies and circuit breaker.
//!
//! Every other error reply means Redis refused the command and will refuse it again: missing
//! ACL permissions (`NOPERM`), wrong credentials (`WRONGPASS`), a server too old for the scripts (`ERR syntax error` for `SET ... PXAT`
//! before Redis 6.2), a script bug. Treating those as an outage would let fail-open limits
//! stop limiting for as long as the misconfiguration lasts, silently; instead the call fails
//! with core's non-retryable [`Internal`](tenancy_core::ErrorKind::Internal) (an operator has to
//! act), logged with the reply.
//!
//! The scripts of this crate need **Redis 6.2 or later** (`SET ... PXAT`, `KEEPTTL`).
//!
//! [transient]: Error::is_unavailable
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
    /// A setting of the Redis server rules out correct operation; an operator has to change
    /// it (`RedisSessionStore::check_eviction_policy` and `RedisDenylist::check_eviction_policy`
    /// report an evicting `maxmemory-policy`).
    #[error("Redis {node}: `{setting}` is `{value}`, but {reason}")]
    Misconfigured {
        /// The node that reported it (an address on a Cluster, `server` on one node).
        node: String,
        /// The setting (`maxmemory-policy`).
        setting: &'static str,
        /// The value the server reported.
        value: String,
        /// Why the value is refused and what to set instead.
        reason: &'static str,
    },
}

impl Error {
    /// Whether retrying later may succeed: timeouts, an open breaker, and connection failures
    /// or error replies that are [transient](self#down-or-refused); not a command Redis
    /// refused (`NOPERM`, `WRONGPASS`, `ERR ...`), which it will refuse again.
    ///
    /// ```
    /// use tenancy_cache::Error;
    ///
    /// let busy = redis::make_extension_error("BUSY".into(), Some("script running".into()));
    /// assert!(Error::Redis(busy).is_unavailable());
    /// let refused = redis::make_extension_error("WRONGPASS".into(), None);
    /// assert!(!Error::Redis(refused).is_unavailable());
    /// ```
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::PoolTimeout(_) | Self::CircuitOpen => true,
            Self::Connect(e) | Self::Redis(e) => is_transient(e),
            Self::Invalid(_) | Self::Corrupt(_) | Self::Misconfigured { .. } => false,
        }
    }

    #[cfg(any(
        feature = "rate-limit",
        feature = "session",
        feature = "cache",
        feature = "denylist"
    ))]
    pub(crate) fn corrupt(msg: &'static str) -> Self {
        Self::Corrupt(msg.into())
    }

    pub(crate) fn invalid(what: &'static str, reason: &'static str) -> Self {
        Self::Invalid(ParseError::new(what, reason))
    }
}

/// Whether a Redis error may pass by itself (see [Down or refused](self#down-or-refused)).
pub(crate) fn is_transient(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind as K, ServerErrorKind as S};
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return true;
    }
    match e.kind() {
        K::Io | K::ClusterConnectionNotFound => true,
        K::Server(
            S::BusyLoading
            | S::TryAgain
            | S::ClusterDown
            | S::MasterDown
            | S::Moved
            | S::Ask
            | S::ReadOnly,
        ) => true,
        _ => {
            matches!(
                e.code(),
                Some(
                    "BUSY"
                        | "LOADING"
                        | "TRYAGAIN"
                        | "CLUSTERDOWN"
                        | "MASTERDOWN"
                        | "READONLY"
                        | "OOM"
                        | "MISCONF"
                        | "NOREPLICAS"
                )
            ) || e
                .detail()
                .is_some_and(|d| d.contains("max number of clients reached"))
        }
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
            Error::Misconfigured { .. } => Self::Internal(Box::new(e)),
            Error::Redis(ref r) if is_wrong_type(r) => Self::Corrupt(Box::new(e)),
            Error::Connect(ref r) | Error::Redis(ref r) if !is_transient(r) => {
                Self::Internal(Box::new(e))
            }
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

    fn server(kind: redis::ServerErrorKind) -> redis::RedisError {
        redis::RedisError::from((redis::ErrorKind::Server(kind), "reply"))
    }

    #[test]
    fn only_transient_failures_are_unavailable() {
        use redis::ServerErrorKind as S;
        let io = |k| redis::RedisError::from(std::io::Error::from(k));
        let transient = [
            io(std::io::ErrorKind::ConnectionReset),
            io(std::io::ErrorKind::BrokenPipe),
            io(std::io::ErrorKind::TimedOut),
            io(std::io::ErrorKind::ConnectionRefused),
            server(S::BusyLoading),
            server(S::TryAgain),
            server(S::ClusterDown),
            server(S::MasterDown),
            server(S::Moved),
            server(S::Ask),
            server(S::ReadOnly),
            redis::make_extension_error("BUSY".into(), None),
            redis::make_extension_error("OOM".into(), None),
            redis::make_extension_error("MISCONF".into(), None),
            redis::make_extension_error("NOREPLICAS".into(), None),
            redis::RedisError::from((
                redis::ErrorKind::Server(S::ResponseError),
                "reply",
                "max number of clients reached".to_owned(),
            )),
            redis::RedisError::from((redis::ErrorKind::ClusterConnectionNotFound, "gone")),
        ];
        for e in transient {
            let shown = e.to_string();
            assert!(Error::Redis(e).is_unavailable(), "{shown}");
        }
        let refused = [
            server(S::NoPerm),
            server(S::ResponseError),
            server(S::CrossSlot),
            server(S::NoScript),
            redis::make_extension_error("WRONGPASS".into(), None),
            redis::make_extension_error("NOAUTH".into(), None),
            redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "auth")),
        ];
        for e in refused {
            let shown = e.to_string();
            let err = Error::Redis(e);
            assert!(!err.is_unavailable(), "{shown}");
            let core = tenancy_core::Error::from(err);
            assert_eq!(core.kind(), ErrorKind::Internal, "{shown}");
            assert!(
                std::error::Error::source(&core).is_some(),
                "the reply is kept"
            );
        }
        let wrongpass = redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "a"));
        assert!(!Error::Connect(wrongpass).is_unavailable());
        let down =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let core = tenancy_core::Error::from(Error::Connect(down));
        assert_eq!(core.kind(), ErrorKind::Unavailable);
    }
}
