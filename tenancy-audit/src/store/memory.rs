use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tenancy_core::TenantId;

use super::{Appended, AuditStore, Chains, ScanCursor, ScanPage, check_purge, page};
use crate::Result;
use crate::chain::{Anchor, ChainHead, StoredRecord};
use crate::codec::EncodedEvent;

#[derive(Debug, Default)]
struct State {
    chains: Chains,
    records: HashMap<TenantId, Vec<StoredRecord>>,
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
            st.records.entry(r.tenant.clone()).or_default().push(r);
        }
        Self {
            state: Arc::new(Mutex::new(st)),
        }
    }

    /// A copy of one tenant's records, in stored order.
    pub fn records(&self, tenant: &TenantId) -> Vec<StoredRecord> {
        self.lock().records.get(tenant).cloned().unwrap_or_default()
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
        let (records, out) = st.chains.prepare(events);
        st.chains.commit(&records);
        // One lookup per run of records of the same tenant.
        let mut records = records.into_iter().peekable();
        while let Some(first) = records.next() {
            let tenant = first.tenant.clone();
            let list = st.records.entry(first.tenant.clone()).or_default();
            list.push(first);
            while let Some(r) = records.next_if(|r| r.tenant == tenant) {
                list.push(r);
            }
        }
        Ok(out)
    }

    async fn scan(&self, tenant: &TenantId, cursor: ScanCursor, limit: usize) -> Result<ScanPage> {
        let st = self.lock();
        let all = st.records.get(tenant).map_or(&[][..], Vec::as_slice);
        let (range, next) = page(all, |r| r.seq, cursor, limit);
        Ok(ScanPage {
            records: all[range].to_vec(),
            next,
        })
    }

    async fn newest(
        &self,
        tenant: &TenantId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>> {
        let st = self.lock();
        let all = st.records.get(tenant).map_or(&[][..], Vec::as_slice);
        Ok(all
            .iter()
            .rev()
            .filter(|r| before.is_none_or(|b| r.seq < b))
            .take(limit)
            .cloned()
            .collect())
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
        let records = st.records.get(tenant).map_or(&[][..], Vec::as_slice);
        check_purge(records, anchor)?;
        let before = records.len();
        let kept: Vec<StoredRecord> = records
            .iter()
            .filter(|r| r.seq > anchor.seq)
            .cloned()
            .collect();
        let removed = (before - kept.len()) as u64;
        st.records.insert(tenant.clone(), kept);
        st.chains.set_anchor(tenant, anchor);
        Ok(removed)
    }

    async fn tenants(&self) -> Result<Vec<TenantId>> {
        let mut t: Vec<TenantId> = self.lock().records.keys().cloned().collect();
        t.sort();
        Ok(t)
    }
}
