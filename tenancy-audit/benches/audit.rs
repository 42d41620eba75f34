//! Benchmarks: enqueue cost on the request path, the writer's cost per event (encode, chain,
//! memory store), PostgreSQL appends per second (one tenant and
//! 100 tenants, batched and not), verification rows per second.
//!
//! `cargo bench -p tenancy-audit --all-features -- --warm-up-time 1 --measurement-time 3`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tenancy_audit::AuditDispatcher;
use tenancy_audit::codec::{Codec, EncodedEvent};
use tenancy_audit::store::{AuditStore, MemoryAuditStore, PgAuditStore};
use tenancy_audit::verify::verify;
use tenancy_core::testkit::Fixture;
use tenancy_core::{AuditEvent, AuditSink, Outcome, TenantId, UserId};

fn event(tenant: &TenantId, i: u64) -> AuditEvent {
    AuditEvent::new(tenant.clone(), "records.read", Outcome::Success)
        .with_user(UserId::parse("alice").unwrap())
        .with_resource("record", i.to_string())
        .with_route("/v1/records/{id}")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn enqueue(c: &mut Criterion) {
    let rt = rt();
    let tenant = Fixture::new().tenant("bench");
    let store = MemoryAuditStore::new();
    let sink = rt.block_on(async {
        AuditDispatcher::builder(Arc::new(store))
            .with_capacity(1 << 20)
            .start()
            .await
            .unwrap()
    });
    let mut g = c.benchmark_group("audit_enqueue");
    g.throughput(Throughput::Elements(1));
    g.bench_function("record (redact, encode, enqueue)", |b| {
        b.iter_custom(|iters| {
            let events: Vec<AuditEvent> = (0..iters).map(|i| event(&tenant, i)).collect();
            rt.block_on(async {
                let start = Instant::now();
                for e in events {
                    sink.record(e).await.unwrap();
                }
                let took = start.elapsed();
                sink.flush().await.unwrap();
                took
            })
        });
    });
    g.bench_function("record_sync (waits for the store)", |b| {
        b.iter_custom(|iters| {
            let events: Vec<AuditEvent> = (0..iters).map(|i| event(&tenant, i)).collect();
            rt.block_on(async {
                let start = Instant::now();
                for e in events {
                    sink.record_sync(e).await.unwrap();
                }
                start.elapsed()
            })
        });
    });
    g.finish();
}

/// The writer's work per event, off the request path: redact and encode (canonical form),
/// and then chain-hash and keep it in the memory store. `serde_json::to_vec` of the same event
/// (not canonical, not redacted) is the scale it is measured against.
fn writer(c: &mut Criterion) {
    let rt = rt();
    let tenant = Fixture::new().tenant("bench");
    let mut e = event(&tenant, 42).with_role(tenancy_core::Role::User);
    e.origin.request_id = Some(tenancy_core::RequestId::generate());
    e.origin.client_addr = Some(std::net::IpAddr::from([192, 0, 2, 7]));
    let codec = Codec::default();
    let mut g = c.benchmark_group("audit_writer");
    g.throughput(Throughput::Elements(1));
    g.bench_function("serde_json::to_vec (scale)", |b| {
        b.iter(|| serde_json::to_vec(std::hint::black_box(&e)).unwrap());
    });
    g.bench_function("Codec::encode", |b| {
        b.iter(|| codec.encode(std::hint::black_box(&e)).unwrap());
    });
    let store = MemoryAuditStore::new();
    g.bench_function("encode + memory append, batches of 64", |b| {
        b.iter_custom(|iters| {
            let events: Vec<AuditEvent> = (0..iters)
                .map(|_| {
                    let mut x = e.clone();
                    x.event_id = tenancy_core::EventId::generate();
                    x
                })
                .collect();
            rt.block_on(async {
                let start = Instant::now();
                let mut batch = Vec::with_capacity(64);
                for x in events {
                    batch.push(codec.encode_owned(x).unwrap());
                    if batch.len() == 64 {
                        store.append(&batch).await.unwrap();
                        batch.clear();
                    }
                }
                store.append(&batch).await.unwrap();
                start.elapsed()
            })
        });
    });
    g.finish();
}

fn pg_appends(c: &mut Criterion) {
    let rt = rt();
    let Some(db) = rt.block_on(tenancy_tests::postgres()) else {
        return;
    };
    // The pool is created lazily and needs the runtime's context.
    let _guard = rt.enter();
    let store = PgAuditStore::builder(db.url())
        .with_max_connections(4)
        .connect()
        .unwrap();
    rt.block_on(store.migrate()).unwrap();
    let fx = Fixture::new();
    let one = fx.tenant("one");
    let many: Vec<TenantId> = (0..100).map(|i| fx.tenant(&format!("m{i}"))).collect();
    let codec = Codec::default();
    // Successive batches start at the next tenant, so single appends over 100 tenants go to
    // each tenant in turn rather than always to the first.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let batch = |tenants: &[TenantId], n: usize| -> Vec<EncodedEvent> {
        let start = next.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        (start..start + n)
            .map(|i| {
                codec
                    .encode(&event(&tenants[i % tenants.len()], i as u64))
                    .unwrap()
            })
            .collect()
    };
    let mut g = c.benchmark_group("audit_pg_append");
    g.sample_size(10);
    for (name, tenants, size) in [
        ("1 tenant, batch 1", std::slice::from_ref(&one), 1usize),
        ("1 tenant, batch 500", std::slice::from_ref(&one), 500),
        ("100 tenants, batch 1", &many[..], 1),
        ("100 tenants, batch 500", &many[..], 500),
    ] {
        g.throughput(Throughput::Elements(size as u64));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let batches: Vec<Vec<EncodedEvent>> =
                    (0..iters).map(|_| batch(tenants, size)).collect();
                rt.block_on(async {
                    let start = Instant::now();
                    for bt in &batches {
                        store.append(bt).await.unwrap();
                    }
                    start.elapsed()
                })
            });
        });
    }
    // Four concurrent writers of batches of 500 over 100 tenants, as four dispatchers in four
    // processes would.
    g.throughput(Throughput::Elements(4 * 500));
    g.bench_function("100 tenants, batch 500, 4 writers", |b| {
        b.iter_custom(|iters| {
            let batches: Vec<Vec<Vec<EncodedEvent>>> = (0..iters)
                .map(|_| (0..4).map(|_| batch(&many, 500)).collect())
                .collect();
            rt.block_on(async {
                let start = Instant::now();
                for round in batches {
                    let mut hs = Vec::new();
                    for bt in round {
                        let s = store.clone();
                        hs.push(tokio::spawn(async move { s.append(&bt).await.unwrap() }));
                    }
                    for h in hs {
                        h.await.unwrap();
                    }
                }
                start.elapsed()
            })
        });
    });
    g.finish();

    // Verification straight from PostgreSQL.
    let rows = rt.block_on(async {
        let t = fx.tenant("verify");
        for _ in 0..40 {
            store
                .append(&batch(std::slice::from_ref(&t), 500))
                .await
                .unwrap();
        }
        t
    });
    let mut g = c.benchmark_group("audit_verify");
    g.sample_size(10);
    g.throughput(Throughput::Elements(20_000));
    g.bench_function("postgres, 20k rows", |b| {
        b.iter(|| {
            let v = rt.block_on(verify(&store, &rows, &[])).unwrap();
            assert!(v.is_valid());
        });
    });
    g.finish();
}

fn verification(c: &mut Criterion) {
    let rt = rt();
    let tenant = Fixture::new().tenant("v");
    let store = MemoryAuditStore::new();
    let codec = Codec::default();
    rt.block_on(async {
        for chunk in 0..40 {
            let batch: Vec<EncodedEvent> = (0..500)
                .map(|i| codec.encode(&event(&tenant, chunk * 500 + i)).unwrap())
                .collect();
            store.append(&batch).await.unwrap();
        }
    });
    let mut g = c.benchmark_group("audit_verify");
    g.throughput(Throughput::Elements(20_000));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("memory, 20k rows", |b| {
        b.iter(|| {
            let v = rt.block_on(verify(&store, &tenant, &[])).unwrap();
            assert!(v.is_valid());
        });
    });
    g.finish();
}

criterion_group!(benches, enqueue, writer, verification, pg_appends);
criterion_main!(benches);
