//! Retention: purging a tenant's oldest records without breaking verification of the rest.
//!
//! A purge removes the longest run of records, from the start of the chain, that are all older
//! than the cut-off (`now - max_age`). It first verifies the chain (a chain that does not
//! verify is evidence and is not purged), then appends an `audit.purge` event naming the last
//! purged `seq` and its hash, and only then deletes. The store keeps that `(seq, hash)` as the
//! chain's [`Anchor`]; verification starts from it and requires the purge event to confirm it.
//! Checkpoints signed before a purge are believed together with it only when a checkpoint
//! signed after the purge covers its event
//! ([`Reason::UnsignedPurge`](crate::verify::Reason::UnsignedPurge)), whether or not the purge
//! removed their records: the store alone cannot vouch for its own anchor. Sign a checkpoint
//! after each purge.
//!
//! Why six years by default: HIPAA asks for six years of retention of documentation; longer
//! retention is a choice, shorter one must be made deliberately.
//!
//! ```
//! use std::time::Duration;
//! use tenancy_audit::{codec::Codec, retention::Retention, store::{AuditStore, MemoryAuditStore}, verify};
//! use tenancy_core::{AuditEvent, ManualClock, Outcome, TenantId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tenancy_audit::Error> {
//! let clock = ManualClock::new();
//! let store = MemoryAuditStore::new();
//! let acme = TenantId::parse("acme")?;
//! let old = AuditEvent::new(acme.clone(), "records.read", Outcome::Success).at(tenancy_core::Clock::now(&clock));
//! store.append(&[Codec::default().encode(&old)?]).await?;
//! clock.advance(Duration::from_secs(86_400 * 40));
//! let report = Retention::new()
//!     .with_max_age(time::Duration::days(30))
//!     .with_clock(std::sync::Arc::new(clock))
//!     .purge(&store, &acme)
//!     .await?;
//! assert_eq!(report.purged, 1);
//! assert!(verify::verify(&store, &acme, &[]).await?.is_valid());
//! # Ok(()) }
//! ```

use tenancy_core::{AuditEvent, Outcome, SharedClock, TenantId, system_clock};
use time::OffsetDateTime;

use crate::chain::Anchor;
use crate::codec::Codec;
use crate::store::{AuditStore, ScanCursor};
use crate::verify::{PAGE, verify};
use crate::{Error, Result};

/// The action of the event every purge records.
pub const PURGE_ACTION: &str = "audit.purge";

/// The default maximum age: six years (2,192 days).
pub const DEFAULT_MAX_AGE: time::Duration = time::Duration::days(2_192);

/// What a purge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeReport {
    /// The tenant.
    pub tenant: TenantId,
    /// Records older than this were eligible.
    pub cutoff: OffsetDateTime,
    /// The new start of the chain, when anything was purged.
    pub anchor: Option<Anchor>,
    /// How many records were deleted.
    pub purged: u64,
    /// The `seq` of the `audit.purge` event, when one was recorded.
    pub event_seq: Option<u64>,
}

/// Purges records older than a maximum age.
#[derive(Debug, Clone)]
pub struct Retention {
    max_age: time::Duration,
    clock: SharedClock,
}

impl Default for Retention {
    fn default() -> Self {
        Self::new()
    }
}

impl Retention {
    /// Six years, on the system clock.
    pub fn new() -> Self {
        Self {
            max_age: DEFAULT_MAX_AGE,
            clock: system_clock(),
        }
    }

    /// The maximum age.
    pub fn with_max_age(mut self, max_age: time::Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// The clock that says what "now" is.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Purges `tenant`'s records older than the maximum age.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the chain does not verify (nothing is purged); store errors.
    pub async fn purge<S: AuditStore + ?Sized>(
        &self,
        store: &S,
        tenant: &TenantId,
    ) -> Result<PurgeReport> {
        let now = self.clock.now();
        let cutoff = now - self.max_age;
        let report = verify(store, tenant, &[]).await?;
        if !report.is_valid() {
            return Err(Error::Conflict(
                "the chain does not verify; refusing to purge evidence",
            ));
        }
        // The longest prefix of records all older than the cut-off.
        let mut through: Option<Anchor> = None;
        let mut count = 0u64;
        let mut cursor = ScanCursor::START;
        'pages: loop {
            let page = store.scan(tenant, cursor, PAGE).await?;
            for r in &page.records {
                if r.occurred_at >= cutoff {
                    break 'pages;
                }
                through = Some(Anchor {
                    seq: r.seq,
                    hash: r.hash,
                });
                count += 1;
            }
            match page.next {
                Some(n) => cursor = n,
                None => break,
            }
        }
        let Some(anchor) = through else {
            return Ok(PurgeReport {
                tenant: tenant.clone(),
                cutoff,
                anchor: None,
                purged: 0,
                event_seq: None,
            });
        };
        // Record the purge before doing it: a crash in between leaves a purge event and all
        // the records, which still verifies.
        let event = AuditEvent::new(tenant.clone(), PURGE_ACTION, Outcome::Success)
            .at(now)
            .with_resource("audit_trail", tenant.as_str())
            .with_detail("through_seq", anchor.seq)
            .with_detail("through_hash", anchor.hash.to_string())
            .with_detail("cutoff", cutoff.unix_timestamp())
            .with_detail("records", count);
        let appended = store.append(&[Codec::default().encode(&event)?]).await?;
        let purged = store.purge(tenant, anchor).await?;
        Ok(PurgeReport {
            tenant: tenant.clone(),
            cutoff,
            anchor: Some(anchor),
            purged,
            event_seq: appended.first().map(|a| a.seq),
        })
    }

    /// Purges every tenant of the store; stops at the first error.
    ///
    /// # Errors
    /// As [`Retention::purge`].
    pub async fn purge_all<S: AuditStore + ?Sized>(&self, store: &S) -> Result<Vec<PurgeReport>> {
        let mut out = Vec::new();
        for tenant in store.tenants().await? {
            out.push(self.purge(store, &tenant).await?);
        }
        Ok(out)
    }
}
