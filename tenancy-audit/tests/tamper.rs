//! Tamper detection against the memory, JSONL file and PostgreSQL stores: each kind of
//! change is laid down through the store's own storage and read back through its own read
//! path, and verification must report it at exactly the right `seq`.

mod common;

use tenancy_audit::chain::{StoredRecord, link};
use tenancy_audit::checkpoint::{CheckpointSigner, TrustedCheckpoint};
use tenancy_audit::store::{AuditStore, FileAuditStore, MemoryAuditStore, PgAuditStore, WALK_PAGE};
use tenancy_audit::verify::{Finding, Reason, verify};
use tenancy_core::TenantId;
use tenancy_core::testkit::Fixture;

use common::{all, encoded};

const N: usize = 10;

struct Case {
    name: &'static str,
    /// Changes tenant A's records (B's are given for splicing).
    tamper: fn(&mut Vec<StoredRecord>, &[StoredRecord]),
    internal: Option<Finding>,
    with_checkpoint: Option<Finding>,
    /// Whether the change means anything in a store that reads by `seq`.
    seq_ordered_too: bool,
}

fn at(seq: u64, reason: Reason) -> Option<Finding> {
    Some(Finding { seq, reason })
}

fn rehash_from(records: &mut [StoredRecord], from: usize) {
    for i in from..records.len() {
        let prev = records[i - 1].hash;
        let r = &mut records[i];
        r.prev_hash = prev;
        r.hash = link(&r.tenant, r.seq, &prev, &r.payload);
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "payload byte",
            tamper: |a, _| {
                let mut p = a[4].payload.to_vec();
                let i = p.windows(4).position(|w| w == b"read").unwrap();
                p[i + 3] = b'e';
                a[4].payload = p.into();
            },
            internal: at(5, Reason::Modified),
            with_checkpoint: at(5, Reason::Modified),
            seq_ordered_too: true,
        },
        Case {
            name: "hash byte",
            tamper: |a, _| a[4].hash.0[7] ^= 1,
            internal: at(5, Reason::Modified),
            with_checkpoint: at(5, Reason::Modified),
            seq_ordered_too: true,
        },
        Case {
            name: "prev_hash byte",
            tamper: |a, _| a[4].prev_hash.0[0] ^= 0x80,
            internal: at(5, Reason::Modified),
            with_checkpoint: at(5, Reason::Modified),
            seq_ordered_too: true,
        },
        Case {
            name: "event_id",
            tamper: |a, _| a[4].event_id = tenancy_core::EventId::generate(),
            internal: at(5, Reason::Modified),
            with_checkpoint: at(5, Reason::Modified),
            seq_ordered_too: true,
        },
        Case {
            name: "occurred_at",
            tamper: |a, _| a[4].occurred_at += time::Duration::microseconds(1),
            internal: at(5, Reason::Modified),
            with_checkpoint: at(5, Reason::Modified),
            seq_ordered_too: true,
        },
        Case {
            name: "seq",
            tamper: |a, _| a[4].seq = 50,
            internal: at(5, Reason::Missing),
            with_checkpoint: at(5, Reason::Missing),
            seq_ordered_too: true,
        },
        Case {
            name: "tenant",
            tamper: |a, b| a[4].tenant = b[0].tenant.clone(),
            internal: at(5, Reason::Missing),
            with_checkpoint: at(5, Reason::Missing),
            seq_ordered_too: true,
        },
        Case {
            name: "deleted record",
            tamper: |a, _| {
                a.remove(4);
            },
            internal: at(5, Reason::Missing),
            with_checkpoint: at(5, Reason::Missing),
            seq_ordered_too: true,
        },
        Case {
            name: "swapped, seq kept",
            tamper: |a, _| a.swap(4, 5),
            internal: at(5, Reason::Reordered),
            with_checkpoint: at(5, Reason::Reordered),
            seq_ordered_too: false,
        },
        Case {
            name: "swapped and renumbered",
            tamper: |a, _| {
                a.swap(4, 5);
                a[4].seq = 5;
                a[5].seq = 6;
            },
            internal: at(5, Reason::Reordered),
            with_checkpoint: at(5, Reason::Reordered),
            seq_ordered_too: true,
        },
        Case {
            name: "spliced from tenant B",
            tamper: |a, b| {
                let mut moved = b[1].clone();
                moved.tenant = a[0].tenant.clone();
                moved.seq = 5;
                a[4] = moved;
            },
            internal: at(5, Reason::Spliced),
            with_checkpoint: at(5, Reason::Spliced),
            seq_ordered_too: true,
        },
        Case {
            name: "rehashed rewrite",
            tamper: |a, _| {
                let mut p = a[4].payload.to_vec();
                let i = p.windows(4).position(|w| w == b"read").unwrap();
                p[i] = b'R';
                a[4].payload = p.into();
                rehash_from(a, 4);
            },
            internal: None,
            with_checkpoint: at(N as u64, Reason::Rewritten),
            seq_ordered_too: true,
        },
        Case {
            name: "truncated tail",
            tamper: |a, _| a.truncate(N - 3),
            internal: None,
            with_checkpoint: at((N - 2) as u64, Reason::Truncated),
            seq_ordered_too: true,
        },
    ]
}

/// Builds a genuine chain of `N` records for A and 3 for B.
async fn genuine(fx: &Fixture) -> (TenantId, TenantId, Vec<StoredRecord>, Vec<StoredRecord>) {
    let (a, b) = (fx.tenant("a"), fx.tenant("b"));
    let store = MemoryAuditStore::new();
    for i in 0..N {
        store.append(&[encoded(&a, i)]).await.unwrap();
    }
    for i in 0..3 {
        store.append(&[encoded(&b, i)]).await.unwrap();
    }
    let ra = store.records(&a);
    let rb = store.records(&b);
    (a, b, ra, rb)
}

async fn check<S: AuditStore + ?Sized>(
    store: &S,
    tenant: &TenantId,
    case: &Case,
    cp: &TrustedCheckpoint,
    backend: &str,
) {
    let internal = verify(store, tenant, &[]).await.unwrap();
    assert_eq!(
        internal.finding, case.internal,
        "{backend}: {} (internal)",
        case.name
    );
    let checked = verify(store, tenant, std::slice::from_ref(cp))
        .await
        .unwrap();
    assert_eq!(
        checked.finding, case.with_checkpoint,
        "{backend}: {} (with checkpoint)",
        case.name
    );
}

fn checkpoint(tenant: &TenantId, records: &[StoredRecord]) -> TrustedCheckpoint {
    let signer = CheckpointSigner::generate("test").unwrap();
    let head = records.last().unwrap().head();
    signer
        .sign(tenant, head, time::OffsetDateTime::now_utc())
        .verify(&signer.verifying_key())
        .unwrap()
}

#[tokio::test]
async fn memory_store_detects_every_tampering() {
    let fx = Fixture::new();
    let (a, _b, ra, rb) = genuine(&fx).await;
    let cp = checkpoint(&a, &ra);
    let clean = MemoryAuditStore::from_records(ra.clone());
    assert!(
        verify(&clean, &a, std::slice::from_ref(&cp))
            .await
            .unwrap()
            .is_valid()
    );
    for case in cases() {
        let mut t = ra.clone();
        (case.tamper)(&mut t, &rb);
        let store = MemoryAuditStore::from_records(t.into_iter().chain(rb.clone()));
        check(&store, &a, &case, &cp, "memory").await;
    }
}

/// Two trusted checkpoints that disagree about one `seq` prove a fork (history rewritten,
/// then signed again): reported whichever of them the records agree with.
#[tokio::test]
async fn checkpoints_that_disagree_about_a_seq_are_a_rewrite() {
    let fx = Fixture::new();
    let (a, _b, ra, _rb) = genuine(&fx).await;
    let store = MemoryAuditStore::from_records(ra.clone());
    let genuine_cp = checkpoint(&a, &ra);
    let mut forged = ra.clone();
    let last = forged.last_mut().unwrap();
    last.hash = link(&a, last.seq, &last.prev_hash, b"rewritten");
    let forged_cp = checkpoint(&a, &forged);
    let seq = ra.last().unwrap().seq;
    for cps in [
        [genuine_cp.clone(), forged_cp.clone()],
        [forged_cp, genuine_cp],
    ] {
        let v = verify(&store, &a, &cps).await.unwrap();
        assert_eq!(v.finding, at(seq, Reason::Rewritten), "{cps:?}");
    }
}

/// A tampered file with the largest possible `seq` is reported, not a panic or a wrap to 0.
#[tokio::test]
async fn the_largest_seq_in_a_file_is_a_finding_not_an_overflow() {
    let fx = Fixture::new();
    let (a, _b, ra, _rb) = genuine(&fx).await;
    let mut t = ra.clone();
    t.last_mut().unwrap().seq = u64::MAX;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("max.jsonl");
    let text: String = t.iter().map(|r| common::file_line(r) + "\n").collect();
    std::fs::write(&path, text).unwrap();
    let store = FileAuditStore::open(&path).await.unwrap();
    let v = verify(&store, &a, &[]).await.unwrap();
    assert!(!v.is_valid(), "{v:?}");
    // Appending after it neither panics nor reuses seq 0.
    store.append(&[encoded(&a, 99)]).await.unwrap();
    let v = verify(&store, &a, &[]).await.unwrap();
    assert!(!v.is_valid(), "{v:?}");
}

#[tokio::test]
async fn file_store_detects_every_tampering() {
    let fx = Fixture::new();
    let (a, b, ra, rb) = genuine(&fx).await;
    let cp = checkpoint(&a, &ra);
    let dir = tempfile::tempdir().unwrap();
    for (i, case) in cases().into_iter().enumerate() {
        let mut t = ra.clone();
        (case.tamper)(&mut t, &rb);
        let path = dir.path().join(format!("case{i}.jsonl"));
        let mut text = String::new();
        for r in t.iter().chain(&rb) {
            text.push_str(&common::file_line(r));
            text.push('\n');
        }
        std::fs::write(&path, text).unwrap();
        let store = FileAuditStore::builder(&path)
            .read_only()
            .open()
            .await
            .unwrap();
        check(&store, &a, &case, &cp, "file").await;
    }
    // The store's own file, written through the store, verifies; a byte changed inside the
    // payload on disk is found at its seq.
    let path = dir.path().join("own.jsonl");
    let store = FileAuditStore::open(&path).await.unwrap();
    for i in 0..N {
        store.append(&[encoded(&a, i)]).await.unwrap();
    }
    store.append(&[encoded(&b, 0)]).await.unwrap();
    assert!(verify(&store, &a, &[]).await.unwrap().is_valid());
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let changed = lines[6].replacen(r#"\"n\":6"#, r#"\"n\":9"#, 1);
    assert_ne!(changed, lines[6]);
    let mut out = lines.clone();
    out[6] = &changed;
    std::fs::write(&path, out.join("\n") + "\n").unwrap();
    let reopened = FileAuditStore::builder(&path)
        .read_only()
        .open()
        .await
        .unwrap();
    assert_eq!(
        verify(&reopened, &a, &[]).await.unwrap().finding,
        at(7, Reason::Modified)
    );
    // A line that is no longer JSON cannot be attributed: reading refuses with a clear error.
    let mut broken = lines.clone();
    broken[2] = "{not json";
    std::fs::write(&path, broken.join("\n") + "\n").unwrap();
    let reopened = FileAuditStore::builder(&path)
        .read_only()
        .open()
        .await
        .unwrap();
    let err = verify(&reopened, &a, &[]).await.unwrap_err();
    let cause = std::error::Error::source(&err).map(ToString::to_string);
    assert_eq!(
        cause.as_deref(),
        Some("line 3 of the audit file cannot be read"),
        "{err:?}"
    );
}

/// A forged copy of an early record placed after a full walk page (after the
/// `WALK_PAGE`th record) is read and reported: a walk that paged by `seq` stepped over it at
/// the page boundary and called the chain valid, and a writer then continued the chain from
/// the forged record.
#[tokio::test]
async fn a_record_out_of_order_past_a_walk_page_is_reported() {
    let fx = Fixture::new();
    let a = fx.tenant("a");
    let genuine = MemoryAuditStore::new();
    let events: Vec<_> = (0..WALK_PAGE).map(|i| encoded(&a, i)).collect();
    for batch in events.chunks(500) {
        genuine.append(batch).await.unwrap();
    }
    let mut records = genuine.records(&a);
    assert_eq!(records.len(), WALK_PAGE);
    // Line 3 again, its action changed.
    let mut forged = records[2].clone();
    let payload = String::from_utf8(forged.payload.to_vec()).unwrap();
    forged.payload = payload
        .replacen("records.read", "admin.grant", 1)
        .into_bytes()
        .into();
    assert_ne!(forged.payload, records[2].payload);
    records.push(forged);

    let memory = MemoryAuditStore::from_records(records.clone());
    let v = verify(&memory, &a, &[]).await.unwrap();
    assert!(!v.is_valid(), "memory: {v:?}");
    assert_eq!(v.records, WALK_PAGE as u64 + 1, "memory: {v:?}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forged.jsonl");
    let text: String = records
        .iter()
        .map(|r| common::file_line(r) + "\n")
        .collect();
    std::fs::write(&path, text).unwrap();
    let file = FileAuditStore::open(&path).await.unwrap();
    let v = verify(&file, &a, &[]).await.unwrap();
    assert!(!v.is_valid(), "file: {v:?}");
    assert_eq!(v.records, WALK_PAGE as u64 + 1, "file: {v:?}");
    // Events stored after it do not make the chain valid again.
    file.append(&[encoded(&a, 7)]).await.unwrap();
    let v = verify(&file, &a, &[]).await.unwrap();
    assert!(!v.is_valid(), "file after an append: {v:?}");
}

async fn pg_store() -> Option<(tenancy_tests::TestDatabase, PgAuditStore)> {
    let db = tenancy_tests::postgres().await?;
    let store = PgAuditStore::builder(db.url()).connect().unwrap();
    store.migrate().await.unwrap();
    Some((db, store))
}

/// Replaces the stored rows of A and B with `records`, bypassing the triggers as a superuser
/// with direct table access would.
async fn pg_lay_down(store: &PgAuditStore, tenants: &[&TenantId], records: &[StoredRecord]) {
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    let names: Vec<&str> = tenants.iter().map(|t| t.as_str()).collect();
    sqlx::query("DELETE FROM tenancy_audit.events WHERE tenant_id = ANY($1)")
        .bind(&names)
        .execute(&mut *tx)
        .await
        .unwrap();
    for r in records {
        sqlx::query(
            "INSERT INTO tenancy_audit.events
               (tenant_id, seq, event_id, occurred_at, payload, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(r.tenant.as_str())
        .bind(r.seq as i64)
        .bind(r.event_id.as_bytes().to_vec())
        .bind(r.occurred_at)
        .bind(&*r.payload)
        .bind(r.prev_hash.as_bytes().to_vec())
        .bind(r.hash.as_bytes().to_vec())
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn postgres_store_detects_every_tampering() {
    let Some((_db, store)) = pg_store().await else {
        return;
    };
    let fx = Fixture::new();
    let (a, b) = (fx.tenant("a"), fx.tenant("b"));
    for i in 0..N {
        store.append(&[encoded(&a, i)]).await.unwrap();
    }
    for i in 0..3 {
        store.append(&[encoded(&b, i)]).await.unwrap();
    }
    let ra = all(&store, &a).await;
    let rb = all(&store, &b).await;
    let cp = checkpoint(&a, &ra);
    assert!(
        verify(&store, &a, std::slice::from_ref(&cp))
            .await
            .unwrap()
            .is_valid()
    );
    for case in cases() {
        if !case.seq_ordered_too {
            // Rows of a table have no order but their `seq`: trading places while keeping
            // `seq` changes nothing a reader can see.
            continue;
        }
        let mut t = ra.clone();
        (case.tamper)(&mut t, &rb);
        pg_lay_down(
            &store,
            &[&a, &b],
            &t.iter().chain(&rb).cloned().collect::<Vec<_>>(),
        )
        .await;
        check(&store, &a, &case, &cp, "postgres").await;
    }
    // The untouched original still verifies after all that.
    pg_lay_down(
        &store,
        &[&a, &b],
        &ra.iter().chain(&rb).cloned().collect::<Vec<_>>(),
    )
    .await;
    assert!(verify(&store, &a, &[cp]).await.unwrap().is_valid());
}
