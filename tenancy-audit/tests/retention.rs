//! Retention purges on every store: verification of what remains still passes, the purge is
//! an event, a forged anchor is caught, and a chain that does not verify is not purged.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tenancy_audit::checkpoint::TrustedCheckpoint;
use tenancy_audit::codec::Codec;
use tenancy_audit::retention::{PURGE_ACTION, Retention};
use tenancy_audit::store::{AuditStore, FileAuditStore, MemoryAuditStore, PgAuditStore};
use tenancy_audit::verify::{Reason, verify};
use tenancy_core::testkit::Fixture;
use tenancy_core::{Clock, ManualClock};

use common::{all, event};

async fn purge_suite(store: &dyn AuditStore) {
    let clock = ManualClock::new();
    let t = Fixture::new().tenant("ret");
    let codec = Codec::default();
    // 10 old events, then 40 days later 5 recent ones.
    for i in 0..10 {
        let e = event(&t, i).at(clock.now());
        store.append(&[codec.encode(&e).unwrap()]).await.unwrap();
        clock.advance(Duration::from_secs(60));
    }
    clock.advance(Duration::from_secs(86_400 * 40));
    for i in 10..15 {
        let e = event(&t, i).at(clock.now());
        store.append(&[codec.encode(&e).unwrap()]).await.unwrap();
    }
    let retention = Retention::new()
        .with_max_age(time::Duration::days(30))
        .with_clock(Arc::new(clock.clone()));
    let report = retention.purge(store, &t).await.unwrap();
    assert_eq!(report.purged, 10);
    assert_eq!(report.anchor.map(|a| a.seq), Some(10));
    assert_eq!(report.event_seq, Some(16));
    let left = all(store, &t).await;
    assert_eq!(left.first().map(|r| r.seq), Some(11));
    let last = tenancy_audit::codec::decode(&left.last().unwrap().payload).unwrap();
    assert_eq!(last.action, PURGE_ACTION);
    let v = verify(store, &t, &[]).await.unwrap();
    assert!(v.is_valid(), "{v:?}");
    assert_eq!(v.records, 6);
    // Nothing more is old enough: a second purge does nothing.
    assert_eq!(retention.purge(store, &t).await.unwrap().purged, 0);
    // Appends continue the chain after a purge.
    store
        .append(&[codec.encode(&event(&t, 99)).unwrap()])
        .await
        .unwrap();
    assert!(verify(store, &t, &[]).await.unwrap().is_valid());
}

#[tokio::test]
async fn purge_keeps_memory_chain_verifiable() {
    purge_suite(&MemoryAuditStore::new()).await;
}

#[tokio::test]
async fn purge_keeps_file_chain_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let store = FileAuditStore::open(&path).await.unwrap();
    purge_suite(&store).await;
    // The anchor survives a reopen.
    let again = FileAuditStore::builder(&path)
        .read_only()
        .open()
        .await
        .unwrap();
    let t = again.tenants().await.unwrap();
    assert!(verify(&again, &t[0], &[]).await.unwrap().is_valid());
}

#[tokio::test]
async fn purge_keeps_postgres_chain_verifiable() {
    let Some(db) = tenancy_tests::postgres().await else {
        return;
    };
    let store = PgAuditStore::builder(db.url()).connect().unwrap();
    store.migrate().await.unwrap();
    purge_suite(&store).await;
}

#[tokio::test]
async fn unconfirmed_anchor_and_tampered_chain_are_refused() {
    let store = MemoryAuditStore::new();
    let t = Fixture::new().tenant("f");
    for i in 0..5 {
        store
            .append(&[Codec::default().encode(&event(&t, i)).unwrap()])
            .await
            .unwrap();
    }
    // A prefix deleted through the store without a purge event: caught.
    let third = store.records(&t)[2].head();
    store
        .purge(
            &t,
            tenancy_audit::Anchor {
                seq: third.seq,
                hash: third.hash,
            },
        )
        .await
        .unwrap();
    let v = verify(&store, &t, &[]).await.unwrap();
    assert_eq!(v.finding.map(|f| f.reason), Some(Reason::UnconfirmedPurge));
    // And such a chain is not purged further.
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(86_400 * 365 * 20));
    let err = Retention::new()
        .with_clock(Arc::new(clock))
        .purge(&store, &t)
        .await
        .unwrap_err();
    assert!(matches!(err, tenancy_audit::Error::Conflict(_)), "{err}");
}

/// `n` events a minute apart, from `clock`'s now.
async fn old_events(
    store: &dyn AuditStore,
    t: &tenancy_core::TenantId,
    clock: &ManualClock,
    n: usize,
) {
    for i in 0..n {
        let e = event(t, i).at(clock.now());
        store
            .append(&[Codec::default().encode(&e).unwrap()])
            .await
            .unwrap();
        clock.advance(Duration::from_secs(60));
    }
}

fn signed(
    signer: &tenancy_audit::checkpoint::CheckpointSigner,
    t: &tenancy_core::TenantId,
    head: tenancy_audit::chain::ChainHead,
) -> TrustedCheckpoint {
    signer
        .sign(t, head, time::OffsetDateTime::now_utc())
        .verify(&signer.verifying_key())
        .unwrap()
}

/// A purge past a signed checkpoint is believed only when a checkpoint signed after the purge
/// covers its event. Otherwise a store that wrote its own anchor and purge event, above every
/// checkpoint, could replace the whole history unnoticed.
#[tokio::test]
async fn a_purge_past_a_checkpoint_needs_a_checkpoint_after_it() {
    let signer = tenancy_audit::checkpoint::CheckpointSigner::generate("test").unwrap();
    let t = Fixture::new().tenant("cp");
    let clock = ManualClock::new();
    let retention = Retention::new()
        .with_max_age(time::Duration::days(30))
        .with_clock(Arc::new(clock.clone()));

    // The genuine chain: 5 events, checkpointed at the third. (A checkpoint at the anchor
    // itself proves the anchor: it is compared, not waived.)
    let genuine = MemoryAuditStore::new();
    old_events(&genuine, &t, &clock, 5).await;
    let early = signed(&signer, &t, genuine.records(&t)[2].head());

    // A forged store: other history, purged above the checkpoint's seq, with its own anchor
    // and its own purge event.
    let forged = MemoryAuditStore::new();
    old_events(&forged, &t, &clock, 8).await;
    clock.advance(Duration::from_secs(86_400 * 40));
    old_events(&genuine, &t, &clock, 1).await;
    old_events(&forged, &t, &clock, 1).await;
    assert_eq!(retention.purge(&forged, &t).await.unwrap().purged, 8);
    assert!(verify(&forged, &t, &[]).await.unwrap().is_valid());
    let finding = async |store: &MemoryAuditStore, cps: &[TrustedCheckpoint]| {
        verify(store, &t, cps)
            .await
            .unwrap()
            .finding
            .map(|f| f.reason)
    };
    let early_only = std::slice::from_ref(&early);
    assert_eq!(
        finding(&forged, early_only).await,
        Some(Reason::UnsignedPurge)
    );

    // The genuine purge, past the checkpoint: refused with the old checkpoint alone, valid
    // once a checkpoint is signed after the purge.
    assert_eq!(retention.purge(&genuine, &t).await.unwrap().purged, 5);
    assert_eq!(
        finding(&genuine, early_only).await,
        Some(Reason::UnsignedPurge)
    );
    let after = signed(&signer, &t, genuine.records(&t).last().unwrap().head());
    let both = [early.clone(), after];
    assert_eq!(finding(&genuine, &both).await, None);
    // The later checkpoint does not vouch for the forged store's purge.
    let v = verify(&forged, &t, &both).await.unwrap();
    assert!(!v.is_valid(), "{v:?}");
}

/// A checkpoint vouches for the chain from its start, so one at the head, signed before a
/// purge, does not believe the purge of records below it: whoever can write the store can
/// write an anchor and a purge event as well as the retention job can. A checkpoint signed
/// after the purge does.
#[tokio::test]
async fn a_checkpoint_above_the_anchor_signed_before_the_purge_does_not_believe_it() {
    let signer = tenancy_audit::checkpoint::CheckpointSigner::generate("test").unwrap();
    let t = Fixture::new().tenant("cphead");
    let clock = ManualClock::new();
    let retention = Retention::new()
        .with_max_age(time::Duration::days(30))
        .with_clock(Arc::new(clock.clone()));
    let store = MemoryAuditStore::new();
    // Five old events, then five recent ones; the checkpoint is at the head, seq 10.
    old_events(&store, &t, &clock, 5).await;
    clock.advance(Duration::from_secs(86_400 * 40));
    old_events(&store, &t, &clock, 5).await;
    let at_head = signed(&signer, &t, store.records(&t).last().unwrap().head());
    assert_eq!(retention.purge(&store, &t).await.unwrap().purged, 5);
    let v = verify(&store, &t, std::slice::from_ref(&at_head))
        .await
        .unwrap();
    assert_eq!(
        v.finding.map(|f| f.reason),
        Some(Reason::UnsignedPurge),
        "{v:?}"
    );
    let after = signed(&signer, &t, store.records(&t).last().unwrap().head());
    let v = verify(&store, &t, &[at_head, after]).await.unwrap();
    assert!(v.is_valid(), "{v:?}");
}

/// A store whose first anchor read is from before a purge that then commits, as when a purge
/// commits between `verify`'s read of the anchor and its walk of the records.
#[derive(Debug)]
struct StaleAnchorOnce {
    inner: MemoryAuditStore,
    stale: std::sync::Mutex<Option<Option<tenancy_audit::Anchor>>>,
}

#[async_trait::async_trait]
impl AuditStore for StaleAnchorOnce {
    async fn append(
        &self,
        events: &[tenancy_audit::codec::EncodedEvent],
    ) -> tenancy_audit::Result<Vec<tenancy_audit::store::Appended>> {
        self.inner.append(events).await
    }
    async fn scan(
        &self,
        t: &tenancy_core::TenantId,
        c: tenancy_audit::store::ScanCursor,
        l: usize,
    ) -> tenancy_audit::Result<tenancy_audit::store::ScanPage> {
        self.inner.scan(t, c, l).await
    }
    async fn newest(
        &self,
        t: &tenancy_core::TenantId,
        b: Option<u64>,
        l: usize,
    ) -> tenancy_audit::Result<Vec<tenancy_audit::StoredRecord>> {
        self.inner.newest(t, b, l).await
    }
    async fn head(
        &self,
        t: &tenancy_core::TenantId,
    ) -> tenancy_audit::Result<Option<tenancy_audit::ChainHead>> {
        self.inner.head(t).await
    }
    async fn anchor(
        &self,
        t: &tenancy_core::TenantId,
    ) -> tenancy_audit::Result<Option<tenancy_audit::Anchor>> {
        if let Some(stale) = self.stale.lock().unwrap().take() {
            return Ok(stale);
        }
        self.inner.anchor(t).await
    }
    async fn purge(
        &self,
        t: &tenancy_core::TenantId,
        a: tenancy_audit::Anchor,
    ) -> tenancy_audit::Result<u64> {
        self.inner.purge(t, a).await
    }
    async fn tenants(&self) -> tenancy_audit::Result<Vec<tenancy_core::TenantId>> {
        self.inner.tenants().await
    }
}

/// A purge that commits between `verify`'s read of the anchor and its walk does not make a
/// sound chain read as broken: the anchor has moved, and the chain is verified again from the
/// new one. A chain that is broken stays broken.
#[tokio::test]
async fn a_purge_between_the_anchor_and_the_walk_is_no_finding() {
    let clock = ManualClock::new();
    let t = Fixture::new().tenant("race");
    let codec = Codec::default();
    let store = StaleAnchorOnce {
        inner: MemoryAuditStore::new(),
        stale: std::sync::Mutex::new(None),
    };
    for i in 0..5 {
        let e = event(&t, i).at(clock.now());
        store.append(&[codec.encode(&e).unwrap()]).await.unwrap();
    }
    clock.advance(Duration::from_secs(86_400 * 40));
    let before = store.anchor(&t).await.unwrap();
    let retention = Retention::new()
        .with_max_age(time::Duration::days(30))
        .with_clock(Arc::new(clock.clone()));
    assert_eq!(retention.purge(&store, &t).await.unwrap().purged, 5);

    *store.stale.lock().unwrap() = Some(before);
    let v = verify(&store, &t, &[]).await.unwrap();
    assert!(v.is_valid(), "{v:?}");

    // A real finding is not hidden by the second look: a checkpoint the chain disagrees with
    // fails both walks.
    let signer = tenancy_audit::checkpoint::CheckpointSigner::from_seed("k", [1; 32]);
    let wrong = tenancy_audit::ChainHead {
        seq: 6,
        hash: tenancy_audit::Digest([9; 32]),
    };
    let cp: TrustedCheckpoint = signer
        .sign(&t, wrong, time::OffsetDateTime::now_utc())
        .verify(&signer.verifying_key())
        .unwrap();
    *store.stale.lock().unwrap() = Some(before);
    let v = verify(&store, &t, &[cp]).await.unwrap();
    assert_eq!(
        v.finding.map(|f| f.reason),
        Some(Reason::Rewritten),
        "{v:?}"
    );
}
