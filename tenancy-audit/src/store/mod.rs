//! [`AuditStore`]: chained, append-only storage of encoded events, and its backends.
//!
//! | backend | type | feature |
//! |---|---|---|
//! | memory | [`MemoryAuditStore`] | always |
//! | JSON lines file | [`FileAuditStore`] | always |
//! | PostgreSQL | `PgAuditStore` | `postgres` |
//!
//! A store assigns each tenant's events a gapless `seq` and chains their hashes
//! ([`chain`](crate::chain)); an event id already stored for the tenant is not stored again.
//!
//! ```
//! use tenancy_audit::{codec::Codec, store::{AuditStore, MemoryAuditStore}};
//! use tenancy_core::{AuditEvent, Outcome, TenantId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tenancy_audit::Error> {
//! let store = MemoryAuditStore::new();
//! let acme = TenantId::parse("acme")?;
//! let e = Codec::default().encode(&AuditEvent::new(acme.clone(), "records.read", Outcome::Success))?;
//! let first = store.append(&[e.clone(), e]).await?;
//! assert_eq!((first[0].seq, first[1].duplicate), (1, true));
//! assert_eq!(store.head(&acme).await?.map(|h| h.seq), Some(1));
//! # Ok(()) }
//! ```

mod file;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use tenancy_core::{EventId, TenantId};

use crate::Result;
use crate::chain::{Anchor, ChainHead, StoredRecord, genesis, link};
use crate::codec::EncodedEvent;

pub use file::{FileAuditStore, FsyncPolicy};
pub use memory::MemoryAuditStore;
#[cfg(feature = "postgres")]
pub use postgres::{PgAuditStore, PgAuditStoreBuilder, SCHEMA_SQL};

/// How many records [`AuditStore::walk`] reads per page by default.
pub const WALK_PAGE: usize = 5_000;

/// What happened to one appended event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The event.
    pub event_id: EventId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Its `seq` (the earlier one when it was a duplicate).
    pub seq: u64,
    /// Whether the event id was already stored, so nothing was written.
    pub duplicate: bool,
    /// Whether it was a duplicate whose payload differs from the one stored under its id
    /// (or earlier in the batch): the id was reused for another event. The stored event
    /// stays and this one is not stored; the [`AuditDispatcher`](crate::AuditDispatcher)
    /// logs it at error level, payload included, and counts it
    /// ([`DispatcherStats::conflicts`](crate::DispatcherStats::conflicts)). A replay of the
    /// same event (after an outage, from the spool) is a duplicate without conflict.
    pub conflict: bool,
}

/// A place in a tenant's chain, for paging through [`AuditStore::scan`]: the `seq` of the
/// last record a page returned (the next page starts after it), so that a purge between two
/// pages skips no record that is still stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanCursor(pub u64);

impl ScanCursor {
    /// The start of a chain.
    pub const START: Self = Self(0);
}

/// The page a scan from `cursor` returns out of `all` (a tenant's records, ordered by
/// `seq`): its range, at most `limit` long, and the cursor of the next page, if any.
pub(crate) fn page<T>(
    all: &[T],
    seq: impl Fn(&T) -> u64,
    cursor: ScanCursor,
    limit: usize,
) -> (std::ops::Range<usize>, Option<ScanCursor>) {
    let start = all.partition_point(|r| seq(r) <= cursor.0);
    let end = start.saturating_add(limit.max(1)).min(all.len());
    let next = all
        .get(end.wrapping_sub(1))
        .filter(|_| end < all.len())
        .map(|r| ScanCursor(seq(r)));
    (start..end, next)
}

/// The next chunk of a walk by place ([`walk_in_place`]): of `len` records held, after
/// `purged` records purged before them since the store was opened, the indices of the (at
/// most [`WALK_PAGE`]) records from place `at`, and the place after them. Places count from
/// the first record held at open, purged ones included, so that a purge between two chunks
/// neither skips nor repeats a record.
pub(crate) fn chunk_at(len: usize, purged: u64, at: u64) -> (std::ops::Range<usize>, u64) {
    let start = usize::try_from(at.saturating_sub(purged))
        .unwrap_or(usize::MAX)
        .min(len);
    let end = start.saturating_add(WALK_PAGE).min(len);
    (start..end, purged.saturating_add(end as u64))
}

/// [`AuditStore::walk`] for a store that holds a tenant's records in the order they were
/// stored or loaded (memory, JSONL file): chunk by chunk, by their place there rather than by
/// `seq`. Paging by `seq` assumes that order is `seq` order: a record a tamperer put out of
/// order (a forged copy of an early record after a page's last one) would be stepped over at
/// the page boundary, and verification would never see it. `chunk(at)` returns the records
/// from place `at` ([`chunk_at`]) and the place after them.
pub(crate) async fn walk_in_place<Fut>(
    mut chunk: impl FnMut(u64) -> Fut + Send,
    visit: &mut (dyn for<'r> FnMut(&'r StoredRecord) + Send),
) -> Result<u64>
where
    Fut: Future<Output = Result<(Vec<StoredRecord>, u64)>> + Send,
{
    let (mut at, mut n) = (0, 0);
    loop {
        let (records, next) = chunk(at).await?;
        if records.is_empty() {
            return Ok(n);
        }
        for r in &records {
            visit(r);
        }
        n += records.len() as u64;
        at = next;
    }
}

/// One page of [`AuditStore::scan`].
#[derive(Debug, Clone, Default)]
pub struct ScanPage {
    /// Records in stored order.
    pub records: Vec<StoredRecord>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<ScanCursor>,
}

/// Chained, append-only storage of encoded events.
#[async_trait]
pub trait AuditStore: Send + Sync + fmt::Debug + 'static {
    /// Appends events in order: each gets its tenant's next `seq`, chained to the previous
    /// hash. An event id already stored for its tenant (or repeated in the batch) is reported
    /// as a duplicate and not written, as a conflict when its payload is not the stored one.
    /// The outcomes come one per event, in the batch's order. Either the whole batch is stored or none of it, but
    /// for a crash in the middle of a JSONL write, which can leave the batch's first whole
    /// lines stored (a retry, as the dispatcher makes, stores the rest: the stored ones come
    /// back as duplicates).
    async fn append(&self, events: &[EncodedEvent]) -> Result<Vec<Appended>>;

    /// Up to `limit` records of `tenant` in stored order (by `seq` unless the storage was
    /// tampered with), from `cursor`.
    async fn scan(&self, tenant: &TenantId, cursor: ScanCursor, limit: usize) -> Result<ScanPage>;

    /// Feeds every record of `tenant` in stored order to `visit`, one at a time, and returns
    /// how many there were. What [`verify`](crate::verify::verify) reads a chain with.
    ///
    /// The default pages through [`AuditStore::scan`], by `seq`; a store whose storage can hold
    /// records out of `seq` order (the memory and JSONL stores, given tampered records) walks
    /// them in the order they are held instead, so that verification sees every one. A
    /// backend may stream instead and pass the same record value each time with new contents,
    /// so `visit` must copy what it keeps.
    async fn walk(
        &self,
        tenant: &TenantId,
        visit: &mut (dyn for<'r> FnMut(&'r StoredRecord) + Send),
    ) -> Result<u64> {
        let mut cursor = ScanCursor::START;
        let mut n = 0;
        loop {
            let page = self.scan(tenant, cursor, WALK_PAGE).await?;
            for r in &page.records {
                visit(r);
            }
            n += page.records.len() as u64;
            match page.next {
                Some(next) => cursor = next,
                None => return Ok(n),
            }
        }
    }

    /// Up to `limit` records of `tenant`, newest first, with `seq` below `before` when given.
    async fn newest(
        &self,
        tenant: &TenantId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>>;

    /// The tenant's last record, if any.
    async fn head(&self, tenant: &TenantId) -> Result<Option<ChainHead>>;

    /// The tenant's purge anchor, if a purge happened.
    async fn anchor(&self, tenant: &TenantId) -> Result<Option<Anchor>>;

    /// Deletes the tenant's records up to and including `anchor.seq` and keeps `anchor` as the
    /// chain's new start. Refused unless `anchor.hash` is the stored hash at `anchor.seq`.
    /// Returns how many records were deleted. Use [`retention`](crate::retention), which
    /// records the purge as an event first.
    async fn purge(&self, tenant: &TenantId, anchor: Anchor) -> Result<u64>;

    /// Every tenant with a chain.
    async fn tenants(&self) -> Result<Vec<TenantId>>;

    /// Makes every append that has returned durable: on stable storage, so that it survives
    /// a crash of the machine. The [`AuditDispatcher`](crate::AuditDispatcher) calls it
    /// before it answers a `flush`, a `record_sync` or a shutdown, so that those answer for
    /// durably stored events whatever a store's own sync schedule (the JSONL store's
    /// [`FsyncPolicy`]). A store wrapping another must pass this on.
    ///
    /// The default does nothing: for stores whose appends are durable once they return (a
    /// PostgreSQL commit, under the server's default `synchronous_commit = on`) and for the
    /// memory store, which has no storage to sync.
    async fn sync(&self) -> Result<()> {
        Ok(())
    }
}

/// The hasher of event-id maps: seeded per process, and far cheaper than the default SipHash
/// on the writer's path (a lookup and two inserts per event: 0.83k instructions per event with
/// SipHash, 0.03k with foldhash, by callgrind). Event ids are 128 random bits unless a caller
/// sets its own; the random seed keeps chosen ids from aiming at one bucket.
type IdHasher = foldhash::quality::RandomState;

/// A map from event ids (of one tenant, or with the tenant's place in a batch) to `seq`.
pub(crate) type IdMap<K> = HashMap<K, u64, IdHasher>;

#[derive(Debug, Default, Clone)]
pub(crate) struct TenantChain {
    pub(crate) head: Option<ChainHead>,
    pub(crate) anchor: Option<Anchor>,
    pub(crate) ids: IdMap<EventId>,
}

impl TenantChain {
    fn next(&self, tenant: &TenantId) -> (u64, crate::chain::Digest) {
        match (self.head, self.anchor) {
            // Saturating: a seq this large only comes from a tampered file, and verification
            // reports what follows it.
            (Some(h), _) => (h.seq.saturating_add(1), h.hash),
            (None, Some(a)) => (a.seq.saturating_add(1), a.hash),
            (None, None) => (1, genesis(tenant)),
        }
    }
}

/// Up to this many tenants in one batch, [`Chains::prepare`] finds a tenant by scanning.
const SCAN_TENANTS: usize = 8;

/// Chain heads and seen event ids of stores that keep them in memory (memory and file).
#[derive(Debug, Default)]
pub(crate) struct Chains {
    pub(crate) tenants: HashMap<TenantId, TenantChain>,
}

impl Chains {
    /// The records a batch would add, and the per-event outcomes; nothing changes until
    /// [`Chains::commit`].
    ///
    /// Each tenant of the batch is looked up once, not once per event: a batch usually holds a
    /// few tenants, found by a short scan (by index past [`SCAN_TENANTS`]).
    ///
    /// `stored_payload_is` answers whether the payload stored at a tenant's `seq` is the given
    /// one, for an event whose id the chain already holds (a store that cannot tell, the
    /// record being purged or unreadable, answers `true`: a plain duplicate).
    pub(crate) fn prepare(
        &self,
        events: &[EncodedEvent],
        mut stored_payload_is: impl FnMut(&TenantId, u64, &[u8]) -> bool,
    ) -> (Vec<StoredRecord>, Vec<Appended>) {
        /// A tenant of the batch: its stored chain, and its next `seq` and previous hash as
        /// staged so far.
        struct Staged<'a> {
            tenant: &'a TenantId,
            chain: Option<&'a TenantChain>,
            seq: u64,
            prev: crate::chain::Digest,
        }
        let mut staged: Vec<Staged<'_>> = Vec::new();
        let mut index: HashMap<&TenantId, usize> = HashMap::new();
        // Event ids staged in this batch, by tenant position in `staged`: the record's index
        // in `records`.
        let mut batch_ids: HashMap<(usize, EventId), usize, IdHasher> =
            HashMap::with_capacity_and_hasher(events.len(), IdHasher::default());
        let mut records = Vec::with_capacity(events.len());
        let mut out = Vec::with_capacity(events.len());
        let mut last: Option<usize> = None;
        for e in events {
            let t = match last.filter(|&i| staged[i].tenant == &e.tenant) {
                Some(i) => i,
                None => {
                    let found = if staged.len() <= SCAN_TENANTS {
                        staged.iter().position(|s| s.tenant == &e.tenant)
                    } else {
                        index.get(&e.tenant).copied()
                    };
                    found.unwrap_or_else(|| {
                        let chain = self.tenants.get(&e.tenant);
                        let (seq, prev) =
                            chain.map_or_else(|| (1, genesis(&e.tenant)), |c| c.next(&e.tenant));
                        staged.push(Staged {
                            tenant: &e.tenant,
                            chain,
                            seq,
                            prev,
                        });
                        if staged.len() > SCAN_TENANTS {
                            if index.is_empty() {
                                index.extend(staged.iter().enumerate().map(|(i, s)| (s.tenant, i)));
                            } else {
                                index.insert(&e.tenant, staged.len() - 1);
                            }
                        }
                        staged.len() - 1
                    })
                }
            };
            last = Some(t);
            let s = &mut staged[t];
            let known = match s.chain.and_then(|c| c.ids.get(&e.event_id).copied()) {
                Some(seq) => Some((seq, !stored_payload_is(&e.tenant, seq, &e.payload))),
                None => batch_ids.get(&(t, e.event_id)).map(|&i| {
                    let r: &StoredRecord = &records[i];
                    (r.seq, r.payload != e.payload)
                }),
            };
            if let Some((seq, conflict)) = known {
                out.push(Appended {
                    event_id: e.event_id,
                    tenant: e.tenant.clone(),
                    seq,
                    duplicate: true,
                    conflict,
                });
                continue;
            }
            let (seq, prev) = (s.seq, s.prev);
            let hash = link(&e.tenant, seq, &prev, &e.payload);
            s.seq = seq.saturating_add(1);
            s.prev = hash;
            batch_ids.insert((t, e.event_id), records.len());
            records.push(StoredRecord {
                tenant: e.tenant.clone(),
                seq,
                event_id: e.event_id,
                occurred_at: e.occurred_at,
                payload: e.payload.clone(),
                prev_hash: prev,
                hash,
            });
            out.push(Appended {
                event_id: e.event_id,
                tenant: e.tenant.clone(),
                seq,
                duplicate: false,
                conflict: false,
            });
        }
        (records, out)
    }

    /// Takes stored records into the heads and id sets, one tenant lookup per run of records
    /// of the same tenant.
    pub(crate) fn commit(&mut self, records: &[StoredRecord]) {
        for run in records.chunk_by(|a, b| a.tenant == b.tenant) {
            let (Some(first), Some(last)) = (run.first(), run.last()) else {
                continue;
            };
            let chain = self.tenants.entry(first.tenant.clone()).or_default();
            for r in run {
                chain.ids.insert(r.event_id, r.seq);
            }
            chain.head = Some(last.head());
        }
    }

    /// Notes a record read back from storage (the last one seen of a tenant is its head).
    pub(crate) fn observe(&mut self, r: &StoredRecord) {
        let c = self.tenants.entry(r.tenant.clone()).or_default();
        c.ids.insert(r.event_id, r.seq);
        c.head = Some(r.head());
    }

    pub(crate) fn set_anchor(&mut self, tenant: &TenantId, anchor: Anchor) {
        self.tenants.entry(tenant.clone()).or_default().anchor = Some(anchor);
    }
}

/// Whether `anchor` may be purged to: its hash is the stored hash at its `seq`.
pub(crate) fn check_purge(
    heads: impl IntoIterator<Item = ChainHead>,
    anchor: Anchor,
) -> Result<()> {
    match heads.into_iter().find(|h| h.seq == anchor.seq) {
        Some(h) if h.hash == anchor.hash => Ok(()),
        _ => Err(crate::Error::Conflict(
            "purge anchor does not match the stored chain",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Digest;
    use crate::codec::Codec;
    use tenancy_core::{AuditEvent, Outcome};

    /// Places count purged records too: after a purge, the walk goes on where it was.
    #[test]
    fn chunks_go_on_from_their_place_across_a_purge() {
        assert_eq!(chunk_at(10, 0, 0), (0..10, 10));
        assert_eq!(
            chunk_at(WALK_PAGE + 3, 0, 0),
            (0..WALK_PAGE, WALK_PAGE as u64)
        );
        assert_eq!(
            chunk_at(WALK_PAGE + 3, 0, WALK_PAGE as u64),
            (WALK_PAGE..WALK_PAGE + 3, WALK_PAGE as u64 + 3)
        );
        // 4 records visited, then 3 purged: the 5th record is now the 2nd held.
        assert_eq!(chunk_at(7, 3, 4), (1..7, 10));
        // Purged past the place reached: on from the first record held.
        assert_eq!(chunk_at(2, 8, 4), (0..2, 10));
        assert_eq!(chunk_at(2, 8, 10), (2..2, 10));
    }

    fn event(tenant: &TenantId, id: u8) -> EncodedEvent {
        let mut e = AuditEvent::new(tenant.clone(), "x.y", Outcome::Success);
        e.event_id = EventId::from_bytes([id; 16]);
        Codec::default().encode_owned(e).unwrap()
    }

    /// Many tenants interleaved in one batch (past the scanned few), duplicates inside the
    /// batch, the same event id in two tenants, and a second batch on top: every record is
    /// where an independent walk of the rules puts it.
    #[test]
    fn a_batch_of_many_interleaved_tenants_chains_each_tenant_on_its_own() {
        let tenants: Vec<TenantId> = (0..20)
            .map(|i| TenantId::parse(&format!("t{i}")).unwrap())
            .collect();
        let mut batch = Vec::new();
        for round in 0..3u8 {
            for t in &tenants {
                batch.push(event(t, round));
            }
        }
        batch.push(event(&tenants[3], 1)); // a duplicate within the batch
        let mut chains = Chains::default();
        let (records, out) = chains.prepare(&batch, |_, _, _| true);
        chains.commit(&records);
        assert_eq!(records.len(), 60);
        assert_eq!(out.len(), 61);
        assert_eq!(
            (out[60].duplicate, out[60].seq, &out[60].tenant),
            (true, 2, &tenants[3])
        );
        let mut expect: HashMap<&TenantId, (u64, Digest)> = HashMap::new();
        for r in &records {
            let (seq, prev) = expect
                .get(&r.tenant)
                .copied()
                .unwrap_or((1, genesis(&r.tenant)));
            assert_eq!((r.seq, r.prev_hash), (seq, prev), "{} {}", r.tenant, r.seq);
            assert!(r.is_self_consistent());
            expect.insert(&r.tenant, (seq + 1, r.hash));
        }
        for t in &tenants {
            assert_eq!(chains.tenants[t].head.map(|h| h.seq), Some(3));
        }
        // A second batch continues each chain; a known id is a duplicate of its first seq.
        let more = vec![
            event(&tenants[19], 9),
            event(&tenants[0], 0),
            event(&tenants[0], 9),
        ];
        let (records, out) = chains.prepare(&more, |_, _, _| true);
        assert_eq!(records.len(), 2);
        assert_eq!(
            out.iter().map(|a| (a.seq, a.duplicate)).collect::<Vec<_>>(),
            vec![(4, false), (1, true), (4, false)]
        );
        assert_eq!(records[0].prev_hash, expect[&tenants[19]].1);
    }
}
