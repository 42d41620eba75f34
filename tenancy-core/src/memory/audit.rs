use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::lock;
use crate::{AuditEvent, AuditSink, EventId, Result, TenantId, TryRecord};

#[derive(Debug, Default)]
struct State {
    events: Vec<AuditEvent>,
    /// Event ids already stored, per tenant: an id is an idempotency key within its tenant
    /// (as in the durable stores), so another tenant's event with the same id is its own event.
    seen: HashSet<(TenantId, EventId)>,
}

/// Collects audit events in memory, in arrival order; an `event_id` repeated within a tenant is
/// stored once.
/// For tests and examples: it keeps everything it is given.
///
/// ```
/// use tenancy_core::{memory::MemoryAuditSink, AuditEvent, AuditSink, Outcome, TenantId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tenancy_core::Error> {
/// let sink = MemoryAuditSink::new();
/// let acme = TenantId::parse("acme")?;
/// let e = AuditEvent::new(acme.clone(), "records.read", Outcome::Success);
/// sink.record(e.clone()).await?;
/// sink.record(e).await?;
/// assert_eq!(sink.events_for(&acme).len(), 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryAuditSink {
    state: Arc<Mutex<State>>,
}

impl MemoryAuditSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every event, in arrival order.
    pub fn events(&self) -> Vec<AuditEvent> {
        lock(&self.state).events.clone()
    }

    /// The events of one tenant, in arrival order.
    pub fn events_for(&self, tenant: &TenantId) -> Vec<AuditEvent> {
        lock(&self.state)
            .events
            .iter()
            .filter(|e| &e.tenant == tenant)
            .cloned()
            .collect()
    }
}

#[async_trait]
impl AuditSink for MemoryAuditSink {
    async fn record(&self, event: AuditEvent) -> Result<()> {
        self.keep(event);
        Ok(())
    }

    fn try_record(&self, event: AuditEvent) -> TryRecord {
        self.keep(event);
        TryRecord::Done(Ok(()))
    }
}

impl MemoryAuditSink {
    fn keep(&self, event: AuditEvent) {
        let mut st = lock(&self.state);
        if st.seen.insert((event.tenant.clone(), event.event_id)) {
            st.events.push(event);
        }
    }
}
