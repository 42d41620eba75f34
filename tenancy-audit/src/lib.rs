//! `tenancy-audit`: a tamper-evident, per-tenant audit trail that never drops an event.
//!
//! - [`codec`]: the stable, versioned byte form of a [`tenancy_core::AuditEvent`], with
//!   [`redact`]ion applied before anything is stored, hashed, spooled or exported.
//! - [`chain`]: per-tenant hash chains with a gapless `seq`; [`verify`] walks a chain and
//!   reports the first bad `seq` and why; [`checkpoint`]s signed with Ed25519 catch a cut-off
//!   tail or a rehashed rewrite.
//! - [`store`]: the [`AuditStore`] trait and its backends: memory, JSON lines file, and
//!   PostgreSQL (feature `postgres`) in an append-only table.
//! - [`AuditDispatcher`]: the [`tenancy_core::AuditSink`] for request handlers: redact,
//!   encode and enqueue on the caller's thread (no store round trip), batched background writes, spool to disk while the store is down, replay, drain on
//!   shutdown; `record_sync` for routes that must not answer first.
//! - [`retention`]: purge by age without breaking verification; every purge is an event.
//! - [`export`]: JSON lines and CloudEvents 1.0.
//!
//! ```
//! use std::sync::Arc;
//! use tenancy_audit::{AuditDispatcher, store::FileAuditStore, verify};
//! use tenancy_core::{AuditEvent, AuditSink, Outcome, TenantId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = FileAuditStore::open(dir.path().join("audit.jsonl")).await?;
//! let audit = AuditDispatcher::builder(Arc::new(store.clone()))
//!     .with_spool(dir.path().join("audit.spool"))
//!     .start()
//!     .await?;
//! let acme = TenantId::parse("acme")?;
//! audit.record(AuditEvent::new(acme.clone(), "auth.login", Outcome::Success)).await?;
//! audit.shutdown().await?;
//!
//! // `audit verify --tenant acme`
//! let report = verify::verify(&store, &acme, &[]).await?;
//! assert!(report.is_valid());
//! // `GET /v1/tenant/audit`: newest first, 50 per page.
//! let page = tenancy_audit::newest_events(&store, &acme, None, 50).await?;
//! assert_eq!(page[0].event.action, "auth.login");
//! # Ok(()) }
//! ```
//!
//! # Features
//! | feature    | enables                                                  | default |
//! |------------|----------------------------------------------------------|---------|
//! | `postgres` | `store::PgAuditStore`, the PostgreSQL store (sqlx)       | no      |

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod chain;
pub mod checkpoint;
pub mod codec;
pub mod dispatcher;
mod error;
pub mod export;
mod hex;
pub mod redact;
pub mod retention;
mod spool;
pub mod store;
pub mod verify;

pub use chain::{Anchor, ChainHead, Digest, StoredRecord};
pub use dispatcher::{AuditDispatcher, AuditDispatcherBuilder, DispatcherStats};
pub use error::{Error, Result};
pub use store::AuditStore;

use tenancy_core::{AuditEvent, TenantId};

/// Syncs the directory holding `path`, so that a file just created or renamed there is still
/// there after a crash (syncing the file itself does not make its directory entry durable).
pub(crate) fn sync_dir_of(path: &std::path::Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// The mode of every file this crate creates (the JSONL store, the spool and its cursor and
/// rejected-events file, a purge's rewrite before it takes the mode of the file it replaces):
/// read and write for the owner only, whatever the umask. Audit trails name users, addresses
/// and what they did; other local accounts have no business reading them.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Opens `path` for appending, creating it ([`FILE_MODE`]) when missing; a file created here
/// has its directory synced ([`sync_dir_of`]) before it is used.
pub(crate) fn open_or_create(
    path: &std::path::Path,
    options: &mut std::fs::OpenOptions,
) -> std::io::Result<std::fs::File> {
    let mut create = options.clone();
    std::os::unix::fs::OpenOptionsExt::mode(&mut create, FILE_MODE);
    match create.create_new(true).open(path) {
        Ok(file) => {
            sync_dir_of(path)?;
            Ok(file)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => options.open(path),
        Err(e) => Err(e),
    }
}

/// Creates `path` ([`FILE_MODE`]) or truncates it, for writing.
pub(crate) fn create_truncated(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    options.open(path)
}

/// Takes an exclusive lock on `file` for as long as it stays open, without waiting: the mark
/// of a file's one writer (the JSONL store, the spool). A lock held elsewhere, by another
/// process or another open handle in this one, is refused with [`Error::Conflict`]`(busy)`.
pub(crate) fn lock_exclusive(
    file: &std::fs::File,
    context: &'static str,
    busy: &'static str,
) -> Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Conflict(busy)),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(context, e)),
    }
}

/// One decoded record, as an API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// The record's `seq` (use it as the `before` cursor of the next page).
    pub seq: u64,
    /// The record's hash.
    pub hash: Digest,
    /// The stored (redacted) event.
    pub event: AuditEvent,
}

/// A page of `tenant`'s events, newest first: at most `limit`, with `seq` below `before`
/// when given. Pass the last entry's `seq` as `before` for the next page.
///
/// # Errors
/// Store errors; [`Error::Malformed`] for a record that does not decode.
pub async fn newest_events<S: AuditStore + ?Sized>(
    store: &S,
    tenant: &TenantId,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<AuditEntry>> {
    store
        .newest(tenant, before, limit)
        .await?
        .into_iter()
        .map(|r| {
            Ok(AuditEntry {
                seq: r.seq,
                hash: r.hash,
                event: codec::decode(&r.payload)?,
            })
        })
        .collect()
}
