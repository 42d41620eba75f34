use std::future::Future;

use super::Fixture;
use crate::{AuditEvent, AuditSink, Outcome, TenantId};

/// The [`AuditSink`] conformance suite. `read` returns what the sink has stored for a tenant,
/// in the order it was recorded.
pub async fn audit_sink<S, R, F>(sink: &S, read: R, fx: &Fixture)
where
    S: AuditSink + ?Sized,
    R: Fn(TenantId) -> F,
    F: Future<Output = Vec<AuditEvent>>,
{
    let (a, b) = (fx.tenant("audit-a"), fx.tenant("audit-b"));
    let mut sent_a = Vec::new();
    for i in 0..20 {
        let e = AuditEvent::new(a.clone(), "records.read", Outcome::Success)
            .with_user(fx.user("alice"))
            .with_resource("record", i.to_string());
        sink.record(e.clone())
            .await
            .unwrap_or_else(|e| panic!("record: {e}"));
        sent_a.push(e);
    }
    let eb =
        AuditEvent::new(b.clone(), "auth.login", Outcome::Denied).with_reason("bad_credentials");
    sink.record(eb.clone())
        .await
        .unwrap_or_else(|e| panic!("record: {e}"));
    // A repeated event id is stored once.
    sink.record(sent_a[3].clone())
        .await
        .unwrap_or_else(|e| panic!("record: {e}"));
    // Event ids are idempotency keys within a tenant: B's event that happens to carry an id A
    // already used is B's own event and is stored.
    let mut cross = AuditEvent::new(b.clone(), "records.write", Outcome::Success);
    cross.event_id = sent_a[7].event_id;
    sink.record(cross.clone())
        .await
        .unwrap_or_else(|e| panic!("record: {e}"));
    sink.flush().await.unwrap_or_else(|e| panic!("flush: {e}"));

    let got_a = read(a.clone()).await;
    let ids = |v: &[AuditEvent]| v.iter().map(|e| e.event_id).collect::<Vec<_>>();
    assert_eq!(
        ids(&got_a),
        ids(&sent_a),
        "tenant A: every event once, in order"
    );
    assert!(
        got_a.iter().all(|e| e.tenant == a),
        "isolation: B's event in A's trail"
    );
    assert_eq!(
        got_a[5].resource, sent_a[5].resource,
        "event content round trip"
    );
    let got_b = read(b.clone()).await;
    assert_eq!(
        ids(&got_b),
        vec![eb.event_id, cross.event_id],
        "tenant B: its events only, including one whose id tenant A also used"
    );
    assert_eq!(got_b[0].reason.as_deref(), Some("bad_credentials"));
    assert_eq!(got_b[1].action, "records.write", "B's event with A's id");

    // Synchronous recording is visible at once.
    let sync = AuditEvent::new(b.clone(), "admin.tenant.suspend", Outcome::Success);
    sink.record_sync(sync.clone())
        .await
        .unwrap_or_else(|e| panic!("record_sync: {e}"));
    assert_eq!(
        ids(&read(b).await),
        vec![eb.event_id, cross.event_id, sync.event_id],
        "record_sync not stored on return"
    );
}
