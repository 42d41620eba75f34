//! Shared helpers of the integration tests: events, and ways to lay down (possibly tampered)
//! records in each store.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use tenancy_audit::chain::StoredRecord;
use tenancy_audit::codec::{Codec, EncodedEvent};
use tenancy_audit::store::{AuditStore, ScanCursor};
use tenancy_core::{AuditEvent, Outcome, TenantId};
use time::format_description::well_known::Rfc3339;

pub fn event(tenant: &TenantId, i: usize) -> AuditEvent {
    AuditEvent::new(tenant.clone(), "records.read", Outcome::Success)
        .with_resource("record", i.to_string())
        .with_detail("n", i)
}

pub fn encoded(tenant: &TenantId, i: usize) -> EncodedEvent {
    Codec::default().encode(&event(tenant, i)).unwrap()
}

/// Every record of a tenant, in stored order.
pub async fn all<S: AuditStore + ?Sized>(store: &S, tenant: &TenantId) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let mut cursor = ScanCursor::START;
    loop {
        let page = store.scan(tenant, cursor, 500).await.unwrap();
        out.extend(page.records);
        match page.next {
            Some(c) => cursor = c,
            None => return out,
        }
    }
}

/// A tenant's events, decoded, in stored order (the `read` of the sink conformance suite).
pub async fn events(store: &Arc<dyn AuditStore>, tenant: TenantId) -> Vec<AuditEvent> {
    all(store.as_ref(), &tenant)
        .await
        .iter()
        .map(|r| tenancy_audit::codec::decode(&r.payload).unwrap())
        .collect()
}

/// One record as a line of the JSONL store's file.
pub fn file_line(r: &StoredRecord) -> String {
    serde_json::json!({
        "tenant": r.tenant.as_str(),
        "seq": r.seq,
        "event_id": r.event_id.to_string(),
        "occurred_at": r.occurred_at.format(&Rfc3339).unwrap(),
        "prev_hash": r.prev_hash.to_string(),
        "hash": r.hash.to_string(),
        "payload": std::str::from_utf8(&r.payload).unwrap(),
    })
    .to_string()
}
