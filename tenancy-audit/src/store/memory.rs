use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tenancy_core::{EventId, TenantId};
use time::OffsetDateTime;

use super::{
    Appended, AuditStore, Chains, ScanCursor, ScanPage, check_purge, chunk_at, page, walk_in_place,
};
use crate::Result;
use crate::chain::{Anchor, ChainHead, Digest, StoredRecord};
use crate::codec::EncodedEvent;

#[derive(Debug, Default)]
struct State {
    chains: Chains,
    records: HashMap<TenantId, Trail>,
}

/// One tenant's records: their stored bytes one after another in one buffer, and the rest of
/// each record beside it. An appended event's bytes are copied here, and the encoder's buffer
/// is freed: a long-running store grows one buffer per tenant rather than keeping one
/// allocation per event (made on whichever request thread encoded it) for ever.
#[derive(Debug, Default)]
struct Trail {
    bytes: Vec<u8>,
    rows: Vec<Row>,
    /// Records purged so far ([`chunk_at`]).
    purged: u64,
}

/// A record without its tenant, its payload a range of [`Trail::bytes`].
#[derive(Debug, Clone)]
struct Row {
    seq: u64,
    event_id: EventId,
    occurred_at: OffsetDateTime,
    payload: Range<usize>,
    prev_hash: Digest,
    hash: Digest,
}

impl Trail {
    fn push(&mut self, r: &StoredRecord) {
        self.push_row(
            &r.payload,
            Row {
                seq: r.seq,
                event_id: r.event_id,
                occurred_at: r.occurred_at,
                payload: 0..0,
                prev_hash: r.prev_hash,
                hash: r.hash,
            },
        );
    }

    /// Appends `payload` to the buffer and `row` with its range there.
    fn push_row(&mut self, payload: &[u8], mut row: Row) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        row.payload = at..self.bytes.len();
        self.rows.push(row);
    }

    /// Whether the payload stored at `seq` is `payload` (`true` when `seq` is not held).
    fn payload_is(&self, seq: u64, payload: &[u8]) -> bool {
        self.rows
            .binary_search_by_key(&seq, |r| r.seq)
            .map_or(true, |i| {
                self.bytes[self.rows[i].payload.clone()] == *payload
            })
    }

    fn record(&self, tenant: &TenantId, row: &Row) -> StoredRecord {
        StoredRecord {
            tenant: tenant.clone(),
            seq: row.seq,
            event_id: row.event_id,
            occurred_at: row.occurred_at,
            payload: Arc::from(&self.bytes[row.payload.clone()]),
            prev_hash: row.prev_hash,
            hash: row.hash,
        }
    }

    fn records<'a>(
        &'a self,
        tenant: &'a TenantId,
        rows: impl IntoIterator<Item = &'a Row> + 'a,
    ) -> impl Iterator<Item = StoredRecord> + 'a {
        rows.into_iter().map(move |row| self.record(tenant, row))
    }

    /// Drops the records up to `seq` (records loaded by [`MemoryAuditStore::from_records`]
    /// may be in any order) and their bytes; the number dropped.
    fn purge_to(&mut self, seq: u64) -> u64 {
        let before = self.rows.len();
        let mut kept = Self::default();
        for row in self.rows.iter().filter(|r| r.seq > seq) {
            kept.push_row(&self.bytes[row.payload.clone()], row.clone());
        }
        let dropped = (before - kept.rows.len()) as u64;
        kept.purged = self.purged + dropped;
        *self = kept;
        dropped
    }
}

/// Keeps chains in memory: for tests, examples and short-lived processes. Cheap to clone;
/// clones share the records.
///
/// [`MemoryAuditStore::from_records`] loads records as they are (for example an export being
/// checked), so that [`verify`](crate::verify) can examine them.
///
/// ```
/// use tenancy_audit::store::{AuditStore, MemoryAuditStore};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tenancy_audit::Error> {
/// let store = MemoryAuditStore::new();
/// assert!(store.tenants().await?.is_empty());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryAuditStore {
    state: Arc<Mutex<State>>,
}

impl MemoryAuditStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding `records` in the given order, unchecked (verification checks them).
    pub fn from_records(records: impl IntoIterator<Item = StoredRecord>) -> Self {
        let mut st = State::default();
        for r in records {
            st.chains.observe(&r);
            st.records.entry(r.tenant.clone()).or_default().push(&r);
        }
        Self {
            state: Arc::new(Mutex::new(st)),
        }
    }

    /// A copy of one tenant's records, in stored order.
    pub fn records(&self, tenant: &TenantId) -> Vec<StoredRecord> {
        let st = self.lock();
        st.records
            .get(tenant)
            .map(|t| t.records(tenant, &t.rows).collect())
            .unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every write is one push).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl AuditStore for MemoryAuditStore {
    async fn append(&self, events: &[EncodedEvent]) -> Result<Vec<Appended>> {
        let mut st = self.lock();
        let (records, out) = {
            let stored = &st.records;
            st.chains.prepare(events, |tenant, seq, payload| {
                stored
                    .get(tenant)
                    .is_none_or(|t| t.payload_is(seq, payload))
            })
        };
        st.chains.commit(&records);
        // One lookup per run of records of the same tenant.
        for run in records.chunk_by(|a, b| a.tenant == b.tenant) {
            let Some(first) = run.first() else { continue };
            let trail = st.records.entry(first.tenant.clone()).or_default();
            for r in run {
                trail.push(r);
            }
        }
        Ok(out)
    }

    async fn scan(&self, tenant: &TenantId, cursor: ScanCursor, limit: usize) -> Result<ScanPage> {
        let st = self.lock();
        let Some(trail) = st.records.get(tenant) else {
            return Ok(ScanPage::default());
        };
        let (range, next) = page(&trail.rows, |r| r.seq, cursor, limit);
        Ok(ScanPage {
            records: trail.records(tenant, &trail.rows[range]).collect(),
            next,
        })
    }

    async fn walk(
        &self,
        tenant: &TenantId,
        visit: &mut (dyn for<'r> FnMut(&'r StoredRecord) + Send),
    ) -> Result<u64> {
        let chunk = |at| {
            let st = self.lock();
            let chunk = st.records.get(tenant).map_or_else(
                || (Vec::new(), at),
                |t| {
                    let (range, next) = chunk_at(t.rows.len(), t.purged, at);
                    (t.records(tenant, &t.rows[range]).collect(), next)
                },
            );
            std::future::ready(Ok(chunk))
        };
        walk_in_place(chunk, visit).await
    }

    async fn newest(
        &self,
        tenant: &TenantId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>> {
        let st = self.lock();
        let Some(trail) = st.records.get(tenant) else {
            return Ok(Vec::new());
        };
        let rows = trail
            .rows
            .iter()
            .rev()
            .filter(|r| before.is_none_or(|b| r.seq < b))
            .take(limit);
        Ok(trail.records(tenant, rows).collect())
    }

    async fn head(&self, tenant: &TenantId) -> Result<Option<ChainHead>> {
        Ok(self.lock().chains.tenants.get(tenant).and_then(|c| c.head))
    }

    async fn anchor(&self, tenant: &TenantId) -> Result<Option<Anchor>> {
        Ok(self
            .lock()
            .chains
            .tenants
            .get(tenant)
            .and_then(|c| c.anchor))
    }

    async fn purge(&self, tenant: &TenantId, anchor: Anchor) -> Result<u64> {
        let mut st = self.lock();
        let heads = st.records.get(tenant).map_or(&[][..], |t| &t.rows[..]);
        check_purge(
            heads.iter().map(|r| ChainHead {
                seq: r.seq,
                hash: r.hash,
            }),
            anchor,
        )?;
        let removed = st
            .records
            .get_mut(tenant)
            .map_or(0, |t| t.purge_to(anchor.seq));
        st.chains.set_anchor(tenant, anchor);
        Ok(removed)
    }

    async fn tenants(&self) -> Result<Vec<TenantId>> {
        let mut t: Vec<TenantId> = self.lock().records.keys().cloned().collect();
        t.sort();
        Ok(t)
    }
}
