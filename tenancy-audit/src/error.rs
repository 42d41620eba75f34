//! The error type of `tenancy-audit`.
//!
//! Every failure keeps its cause. [`Error`] converts into [`tenancy_core::Error`] so that the
//! dispatcher can answer through the core [`AuditSink`](tenancy_core::AuditSink) trait:
//! a store that cannot be reached becomes `Unavailable` (retryable), undecodable stored bytes
//! become `Corrupt`, bad input becomes `Invalid`.
//!
//! ```
//! use tenancy_audit::Error;
//! use tenancy_core::ErrorKind;
//!
//! let err = Error::InvalidConfig("batch size must be at least 1");
//! assert_eq!(tenancy_core::Error::from(err).kind(), ErrorKind::Invalid);
//! ```

use tenancy_core::{BoxError, ParseError};

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in `tenancy-audit`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file (JSONL store, spool, key file) could not be read or written.
    #[error("audit file i/o failed: {context}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The database failed or could not be reached.
    #[error("audit database failed: {context}")]
    Database {
        /// What was being done.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// Stored bytes could not be decoded (a malformed line, an unknown format version, a bad
    /// hash length). Tampering is reported by verification, not by this error.
    #[error("stored audit data is malformed: {what}")]
    Malformed {
        /// What could not be decoded.
        what: &'static str,
        /// The decoder's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// An event could not be encoded.
    #[error("audit event could not be encoded")]
    Encode(#[source] serde_json::Error),
    /// A value given by the caller is invalid (a tenant id, a key, a checkpoint).
    #[error(transparent)]
    Invalid(#[from] ParseError),
    /// A configuration value is out of range.
    #[error("invalid audit configuration: {0}")]
    InvalidConfig(&'static str),
    /// A checkpoint signature did not verify, or its key is unknown.
    #[error("checkpoint signature rejected: {0}")]
    BadCheckpoint(&'static str),
    /// The store refused an operation because its state changed under it (a JSONL file
    /// truncated, replaced or written by another process), or a file that takes one writer
    /// at a time (a JSONL store's file, a dispatcher's spool) is held by another.
    #[error("audit store changed under it: {0}")]
    Conflict(&'static str),
    /// The dispatcher's writer has stopped; nothing more can be accepted.
    #[error("audit dispatcher is closed")]
    Closed,
    /// The store was unavailable: the events are safe in the spool and will be stored on
    /// recovery, but they are not in the store yet.
    #[error("audit store unavailable; events are spooled for replay")]
    Spooled(#[source] Option<std::sync::Arc<Error>>),
    /// A flush or `record_sync` waited its time while the events it waits for are neither
    /// stored nor spooled (no spool, or the spool failing too): they are held in memory and
    /// still retried, but they are not safe (a stop of the process now loses them), unlike
    /// [`Error::Spooled`]. In `tenancy_core`'s terms a `Timeout`, not the `Unavailable` that
    /// callers may take for "safe".
    #[error("audit store and spool unavailable; events are held in memory only")]
    Held(#[source] Option<std::sync::Arc<Error>>),
    /// The writer stopped with events that neither the store nor the spool took (no spool
    /// configured, or the spool failed): they are lost. Only a shutdown answers this.
    #[error("{events} audit events were neither stored nor spooled when the writer stopped")]
    Lost {
        /// How many.
        events: usize,
        /// The last store or spool failure.
        #[source]
        source: Option<std::sync::Arc<Error>>,
    },
}

impl Error {
    pub(crate) fn io(context: &'static str, source: std::io::Error) -> Self {
        Self::Io { context, source }
    }

    pub(crate) fn malformed(what: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Malformed {
            what,
            source: Some(source.into()),
        }
    }

    pub(crate) fn malformed_plain(what: &'static str) -> Self {
        Self::Malformed { what, source: None }
    }

    /// Whether retrying the same operation later may succeed (the store was unreachable).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Io { .. }
                | Self::Database { .. }
                | Self::Spooled(_)
                | Self::Held(_)
                | Self::Conflict(_)
        )
    }
}

impl From<Error> for tenancy_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(p) => Self::Invalid(p),
            Error::InvalidConfig(_) | Error::Encode(_) => {
                Self::Invalid(ParseError::new("audit event", e.to_string()))
            }
            Error::Malformed { .. } | Error::BadCheckpoint(_) => Self::corrupt(e),
            Error::Conflict(_) => Self::Conflict(std::borrow::Cow::Owned(e.to_string())),
            Error::Io { .. } | Error::Database { .. } | Error::Closed | Error::Spooled(_) => {
                Self::unavailable(e)
            }
            Error::Held(_) => Self::Timeout,
            Error::Lost { .. } => Self::internal(e),
        }
    }
}
