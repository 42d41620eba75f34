//! Walks a tenant's chain and reports the first bad `seq` and why.
//!
//! Internal checks, record by record: the `seq` is the next one, the stored `prev_hash` is
//! the previous record's hash, the stored hash is the [`chain::link`](crate::chain::link) of the
//! record's tenant, `seq`, previous hash and exact bytes, the bytes decode, and the event inside
//! names this tenant and the same id and time as the record's columns.
//!
//! Limits, by design: a chain that was cut short at the end, or rewritten and rehashed from
//! some point on, is consistent with itself. Only a signed [`checkpoint`](crate::checkpoint)
//! catches those; pass the ones you hold.
//!
//! ```
//! use tenancy_audit::{codec::Codec, store::{AuditStore, MemoryAuditStore}, verify};
//! use tenancy_core::{AuditEvent, Outcome, TenantId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tenancy_audit::Error> {
//! let store = MemoryAuditStore::new();
//! let acme = TenantId::parse("acme")?;
//! for _ in 0..3 {
//!     let e = AuditEvent::new(acme.clone(), "records.read", Outcome::Success);
//!     store.append(&[Codec::default().encode(&e)?]).await?;
//! }
//! let report = verify::verify(&store, &acme, &[]).await?;
//! assert!(report.is_valid());
//! assert_eq!(report.records, 3);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;
use tenancy_core::TenantId;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::chain::{Anchor, ChainHead, Digest, StoredRecord, genesis, link};
use crate::checkpoint::TrustedCheckpoint;
use crate::codec::{decode, header};
use crate::retention::PURGE_ACTION;
use crate::store::AuditStore;
use crate::{Error, Result};

/// How many records one page of a paged read (export, retention) holds.
pub const PAGE: usize = crate::store::WALK_PAGE;

/// How far a misplaced record's true position is searched for, to tell a reordering from a
/// modification.
const REORDER_WINDOW: u64 = 64;

/// Why a chain failed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// The record's bytes, hash, previous hash, id or time do not match.
    Modified,
    /// A `seq` is absent.
    Missing,
    /// A record stands at another position than the one it was chained at, or a `seq`
    /// appears twice.
    Reordered,
    /// The record belongs to another tenant's chain.
    Spliced,
    /// The chain ends before a checkpoint's `seq`: its tail was removed.
    Truncated,
    /// The hash at a checkpoint's `seq` differs from the signed one: history was rewritten.
    Rewritten,
    /// The chain starts after a purge that no purge event in the chain confirms.
    UnconfirmedPurge,
    /// A checkpoint given was signed before the purge event, and no checkpoint signed since
    /// covers that event: the store alone vouches for the purge, and a store that wrote its
    /// own anchor and purge event could have replaced all of history. This holds whether or
    /// not the purge removed the checkpoint's own record. Sign a checkpoint after each purge
    /// and pass it along.
    UnsignedPurge,
}

impl Reason {
    /// A short, stable label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Modified => "modified",
            Self::Missing => "missing",
            Self::Reordered => "reordered",
            Self::Spliced => "spliced",
            Self::Truncated => "truncated",
            Self::Rewritten => "rewritten",
            Self::UnconfirmedPurge => "unconfirmed_purge",
            Self::UnsignedPurge => "unsigned_purge",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first problem found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The first bad `seq`.
    pub seq: u64,
    /// Why.
    pub reason: Reason,
}

/// The outcome of verifying one tenant's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// The tenant.
    pub tenant: TenantId,
    /// How many records were read.
    pub records: u64,
    /// The last record that verified, if any.
    pub head: Option<ChainHead>,
    /// The purge anchor the chain starts from, if any.
    pub anchor: Option<Anchor>,
    /// The first problem, or `None` when the chain verified.
    pub finding: Option<Finding>,
}

impl Verification {
    /// Whether the chain verified (internally and against every checkpoint given).
    pub fn is_valid(&self) -> bool {
        self.finding.is_none()
    }

    /// The summary the reference server returns:
    /// `{"valid", "events", "first_bad_seq", "reason"}`.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "valid": self.is_valid(),
            "events": self.records,
            "first_bad_seq": self.finding.map(|f| f.seq),
            "reason": self.finding.map(|f| f.reason.as_str()),
        })
    }
}

#[derive(Debug)]
enum Pending {
    /// A gap at `seq`: missing unless the record turns up later.
    Gap(u64),
    Found(Finding),
}

/// Verifies records fed in stored order; [`verify`] drives it over a store.
#[derive(Debug)]
pub struct ChainVerifier {
    tenant: TenantId,
    anchor: Option<Anchor>,
    next_seq: u64,
    prev: Digest,
    records: u64,
    head: Option<ChainHead>,
    pending: Option<Pending>,
    purge_confirmed: bool,
    /// The `seq` of the purge event that confirmed the anchor.
    purge_seq: Option<u64>,
    wanted: HashMap<u64, Digest>,
    seen_wanted: HashMap<u64, Digest>,
    /// The lowest `seq` at which two trusted checkpoints name different hashes: the chain
    /// forked (rewritten, then signed again), whichever of them the records agree with.
    forked: Option<u64>,
}

impl ChainVerifier {
    /// A verifier for `tenant`'s chain, starting after `anchor` when the chain was purged.
    pub fn new(tenant: TenantId, anchor: Option<Anchor>) -> Self {
        let (next_seq, prev) = match anchor {
            Some(a) => (a.seq.saturating_add(1), a.hash),
            None => (1, genesis(&tenant)),
        };
        Self {
            tenant,
            anchor,
            next_seq,
            prev,
            records: 0,
            head: None,
            pending: None,
            purge_confirmed: false,
            purge_seq: None,
            wanted: HashMap::new(),
            seen_wanted: HashMap::new(),
            forked: None,
        }
    }

    /// Also checks the chain against these checkpoints at [`ChainVerifier::finish`].
    ///
    /// # Errors
    /// [`Error::BadCheckpoint`] for a checkpoint of another tenant.
    pub fn with_checkpoints(mut self, checkpoints: &[TrustedCheckpoint]) -> Result<Self> {
        for cp in checkpoints {
            if cp.tenant() != &self.tenant {
                return Err(Error::BadCheckpoint("checkpoint is for another tenant"));
            }
            let (seq, hash) = (cp.head().seq, cp.head().hash);
            if self
                .wanted
                .insert(seq, hash)
                .is_some_and(|other| other != hash)
            {
                self.forked = Some(self.forked.map_or(seq, |f| f.min(seq)));
            }
        }
        Ok(self)
    }

    /// Whether a problem has been found (further records only classify it).
    pub fn failed(&self) -> bool {
        matches!(self.pending, Some(Pending::Found(_)))
    }

    /// Feeds the next record in stored order.
    pub fn push(&mut self, r: &StoredRecord) {
        self.records += 1;
        match self.pending {
            Some(Pending::Found(_)) => return,
            Some(Pending::Gap(missing)) => {
                if r.tenant == self.tenant && r.seq == missing {
                    self.found(missing, Reason::Reordered);
                }
                return;
            }
            None => {}
        }
        let n = self.next_seq;
        if r.seq > n {
            self.pending = Some(Pending::Gap(n));
            return;
        }
        if let Some(reason) = self.check(r, n) {
            self.found(n, reason);
            return;
        }
        if self.wanted.contains_key(&n) {
            self.seen_wanted.insert(n, r.hash);
        }
        if !self.purge_confirmed && self.confirms_anchor(r) {
            self.purge_confirmed = true;
            self.purge_seq = Some(n);
        }
        self.prev = r.hash;
        self.head = Some(r.head());
        self.next_seq = n.saturating_add(1);
    }

    fn found(&mut self, seq: u64, reason: Reason) {
        self.pending = Some(Pending::Found(Finding { seq, reason }));
    }

    fn check(&self, r: &StoredRecord, n: u64) -> Option<Reason> {
        if r.tenant != self.tenant {
            return Some(Reason::Spliced);
        }
        if r.seq < n {
            return Some(Reason::Reordered);
        }
        let Some(header) = header(&r.payload) else {
            return Some(Reason::Modified);
        };
        let event = &header.event;
        if event.tenant != self.tenant.as_str() {
            return Some(Reason::Spliced);
        }
        // The payload's id is the column's id exactly when it is its 32 lowercase hex digits
        // (the only form an id parses from), so compare the text without parsing.
        let same_id = event.event_id.as_bytes() == crate::hex::encode_16(r.event_id.as_bytes());
        let same_time =
            OffsetDateTime::parse(&event.occurred_at, &Rfc3339).is_ok_and(|t| t == r.occurred_at);
        let consistent =
            r.prev_hash == self.prev && link(&self.tenant, n, &self.prev, &r.payload) == r.hash;
        if consistent && same_id && same_time {
            return None;
        }
        // Is this an intact record of another position of this chain?
        let lo = n.saturating_sub(REORDER_WINDOW).max(1);
        let moved = (lo..=n.saturating_add(REORDER_WINDOW))
            .filter(|k| *k != n)
            .any(|k| link(&self.tenant, k, &r.prev_hash, &r.payload) == r.hash);
        Some(if moved && same_id {
            Reason::Reordered
        } else {
            Reason::Modified
        })
    }

    fn confirms_anchor(&self, r: &StoredRecord) -> bool {
        let Some(anchor) = self.anchor else {
            return false;
        };
        if header(&r.payload).is_none_or(|h| h.event.action != PURGE_ACTION) {
            return false;
        }
        let Ok(event) = decode(&r.payload) else {
            return false;
        };
        event.action == PURGE_ACTION
            && event
                .details
                .get("through_seq")
                .and_then(serde_json::Value::as_u64)
                == Some(anchor.seq)
            && event
                .details
                .get("through_hash")
                .and_then(serde_json::Value::as_str)
                == Some(anchor.hash.to_string().as_str())
    }

    /// The result.
    pub fn finish(self) -> Verification {
        let mut finding = match self.pending {
            Some(Pending::Found(f)) => Some(f),
            Some(Pending::Gap(seq)) => Some(Finding {
                seq,
                reason: Reason::Missing,
            }),
            None => None,
        };
        let mut consider = |f: Finding| {
            if finding.is_none_or(|old| f.seq < old.seq) {
                finding = Some(f);
            }
        };
        if let Some(seq) = self.forked {
            consider(Finding {
                seq,
                reason: Reason::Rewritten,
            });
        }
        if let Some(a) = self.anchor
            && !self.purge_confirmed
        {
            consider(Finding {
                seq: a.seq.saturating_add(1),
                reason: Reason::UnconfirmedPurge,
            });
        }
        if let Some(a) = self.anchor {
            // A checkpoint signed before the purge vouched for records the purge removed
            // (every checkpoint covers the chain from its start): it is waived only when
            // signed history covers the purge, a checkpoint at or after its event that the
            // records match. Without a confirmed purge event, a checkpoint below the anchor.
            let before_purge = self.purge_seq.unwrap_or(a.seq);
            let waived = self.wanted.keys().any(|seq| *seq < before_purge);
            let covered = self.purge_seq.is_some_and(|p| {
                self.wanted
                    .iter()
                    .any(|(seq, hash)| *seq >= p && self.seen_wanted.get(seq) == Some(hash))
            });
            if waived && !covered {
                consider(Finding {
                    seq: a.seq.saturating_add(1),
                    reason: Reason::UnsignedPurge,
                });
            }
        }
        let verified_to = self.next_seq - 1;
        for (seq, hash) in &self.wanted {
            let anchor_seq = self.anchor.map_or(0, |a| a.seq);
            if *seq < anchor_seq {
                // Purged: nothing left to compare.
                continue;
            }
            if *seq == anchor_seq {
                if self.anchor.is_some_and(|a| a.hash != *hash) {
                    consider(Finding {
                        seq: *seq,
                        reason: Reason::Rewritten,
                    });
                }
                continue;
            }
            if *seq > verified_to {
                if self.pending.is_none() {
                    consider(Finding {
                        seq: verified_to + 1,
                        reason: Reason::Truncated,
                    });
                }
                continue;
            }
            match self.seen_wanted.get(seq) {
                Some(got) if got == hash => {}
                _ => consider(Finding {
                    seq: *seq,
                    reason: Reason::Rewritten,
                }),
            }
        }
        Verification {
            tenant: self.tenant,
            records: self.records,
            head: self.head,
            anchor: self.anchor,
            finding,
        }
    }
}

/// Verifies `tenant`'s chain in `store`, internally and against `checkpoints`.
///
/// # Errors
/// When the store cannot be read (for example an unreadable line in a JSONL file), or a
/// checkpoint is for another tenant.
pub async fn verify<S: AuditStore + ?Sized>(
    store: &S,
    tenant: &TenantId,
    checkpoints: &[TrustedCheckpoint],
) -> Result<Verification> {
    let anchor = store.anchor(tenant).await?;
    let first = verify_from(store, tenant, anchor, checkpoints).await;
    if matches!(&first, Ok(v) if v.is_valid()) {
        return first;
    }
    // A purge that committed between reading the anchor and walking the records leaves a
    // walk that starts past what the anchor says, or a store that cannot be read where it
    // was: a sound chain would read as broken. When the anchor has moved since, the chain is
    // verified once more, from the new anchor.
    let now = store.anchor(tenant).await?;
    if now == anchor {
        return first;
    }
    verify_from(store, tenant, now, checkpoints).await
}

async fn verify_from<S: AuditStore + ?Sized>(
    store: &S,
    tenant: &TenantId,
    anchor: Option<Anchor>,
    checkpoints: &[TrustedCheckpoint],
) -> Result<Verification> {
    let mut v = ChainVerifier::new(tenant.clone(), anchor).with_checkpoints(checkpoints)?;
    store.walk(tenant, &mut |r| v.push(r)).await?;
    Ok(v.finish())
}
