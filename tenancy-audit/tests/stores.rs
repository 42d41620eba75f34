//! Appends, the dispatcher and outages against the memory, JSONL file and PostgreSQL stores.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Connection as _;
use tenancy_audit::chain::{Anchor, ChainHead, StoredRecord};
use tenancy_audit::codec::EncodedEvent;
use tenancy_audit::store::{
    Appended, AuditStore, FileAuditStore, MemoryAuditStore, PgAuditStore, ScanCursor, ScanPage,
};
use tenancy_audit::verify::verify;
use tenancy_audit::{AuditDispatcher, Error};
use tenancy_core::testkit::{self, Fixture};
use tenancy_core::{AuditSink, HealthCheck, HealthStatus, TenantId};

use common::{all, encoded, event, events};

async fn pg() -> Option<(tenancy_tests::TestDatabase, PgAuditStore)> {
    let db = tenancy_tests::postgres().await?;
    let store = PgAuditStore::builder(db.url())
        .with_max_connections(8)
        .with_acquire_timeout(Duration::from_secs(2))
        .connect()
        .unwrap();
    store.migrate().await.unwrap();
    Some((db, store))
}

/// Many tasks append to one tenant at once (batches of 1 to 7); the chain is gapless and
/// verifies.
async fn concurrent_round_trip(stores: Vec<Arc<dyn AuditStore>>, tenant: &TenantId) {
    let tasks = 8;
    let per_task = 40;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = Arc::clone(&stores[t % stores.len()]);
        let tenant = tenant.clone();
        handles.push(tokio::spawn(async move {
            let mut i = 0;
            while i < per_task {
                let n = (t + i) % 7 + 1;
                let batch: Vec<EncodedEvent> = (i..(i + n).min(per_task))
                    .map(|k| encoded(&tenant, t * 1000 + k))
                    .collect();
                i += batch.len();
                store.append(&batch).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let records = all(stores[0].as_ref(), tenant).await;
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    let want: Vec<u64> = (1..=(tasks * per_task) as u64).collect();
    assert_eq!(seqs, want, "gapless, no forks");
    let report = verify(stores[0].as_ref(), tenant, &[]).await.unwrap();
    assert!(report.is_valid(), "{report:?}");
    assert_eq!(report.records, (tasks * per_task) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_memory() {
    let fx = Fixture::new();
    concurrent_round_trip(vec![Arc::new(MemoryAuditStore::new())], &fx.tenant("c")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileAuditStore::open(dir.path().join("a.jsonl"))
        .await
        .unwrap();
    let fx = Fixture::new();
    concurrent_round_trip(vec![Arc::new(store.clone())], &fx.tenant("c")).await;
    // Reopening reads the same chain back.
    let again = FileAuditStore::builder(dir.path().join("a.jsonl"))
        .read_only()
        .open()
        .await
        .unwrap();
    assert_eq!(
        again.head(&fx.tenant("c")).await.unwrap(),
        store.head(&fx.tenant("c")).await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_postgres_from_several_pools() {
    let Some((db, store)) = pg().await else {
        return;
    };
    // Three independent pools stand for three processes: only the database serialises them.
    let mut stores: Vec<Arc<dyn AuditStore>> = vec![Arc::new(store)];
    for _ in 0..2 {
        stores.push(Arc::new(PgAuditStore::builder(db.url()).connect().unwrap()));
    }
    let fx = Fixture::new();
    concurrent_round_trip(stores, &fx.tenant("c")).await;
}

/// A database whose default isolation is REPEATABLE READ (or SERIALIZABLE): the store still
/// runs its appends at READ COMMITTED, so a writer that waited for a tenant's lock reads the
/// head the previous writer committed, not the one of a snapshot taken before it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_postgres_under_a_repeatable_read_default() {
    let Some((db, store)) = pg().await else {
        return;
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{}\" SET default_transaction_isolation = 'repeatable read'",
        db.name()
    )))
    .execute(store.pool())
    .await
    .unwrap();
    // New pools: their connections start with the database's new default.
    let mut stores: Vec<Arc<dyn AuditStore>> = Vec::new();
    for _ in 0..3 {
        let s = PgAuditStore::builder(db.url()).connect().unwrap();
        let level: String = sqlx::query_scalar("SHOW default_transaction_isolation")
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(level, "repeatable read");
        stores.push(Arc::new(s));
    }
    let fx = Fixture::new();
    concurrent_round_trip(stores, &fx.tenant("rr")).await;
}

/// A batch over two tenants mixing new events, events stored by an earlier batch and events
/// repeated within the batch: duplicates keep their first `seq`, the new events get the next
/// ones in batch order, and `walk` reads each chain back whole, past a page boundary. An id
/// repeated with another payload (stored before, or earlier in the batch) is a conflict, and
/// the first payload stays.
async fn duplicates_and_walk(store: Arc<dyn AuditStore>, fx: &Fixture) {
    let (a, b) = (fx.tenant("dup-a"), fx.tenant("dup-b"));
    let first: Vec<EncodedEvent> = (0..3).map(|i| encoded(&a, i)).collect();
    store.append(&first).await.unwrap();
    let new_b = encoded(&b, 10);
    // The same id as another event, with this one's payload.
    let reusing = |id: &EncodedEvent, i: usize| EncodedEvent {
        event_id: id.event_id,
        ..encoded(&a, i)
    };
    let mut batch = vec![
        new_b.clone(),
        first[1].clone(),
        encoded(&a, 3),
        new_b,
        first[0].clone(),
        encoded(&a, 4),
        reusing(&first[2], 20),
    ];
    batch.push(reusing(&batch[5], 21));
    let out = store.append(&batch).await.unwrap();
    let got: Vec<(&str, u64, bool, bool)> = out
        .iter()
        .map(|o| (o.tenant.as_str(), o.seq, o.duplicate, o.conflict))
        .collect();
    let (an, bn) = (a.as_str(), b.as_str());
    assert_eq!(
        got,
        vec![
            (bn, 1, false, false),
            (an, 2, true, false),
            (an, 4, false, false),
            (bn, 1, true, false),
            (an, 1, true, false),
            (an, 5, false, false),
            (an, 3, true, true),
            (an, 5, true, true),
        ]
    );
    let stored = all(store.as_ref(), &a).await;
    assert_eq!(
        stored[2].payload, first[2].payload,
        "the first payload stays"
    );
    assert_eq!(stored[4].payload, batch[5].payload);
    let ids: Vec<_> = all(store.as_ref(), &a)
        .await
        .iter()
        .map(|r| r.event_id)
        .collect();
    let want: Vec<_> = [&first[0], &first[1], &first[2], &batch[2], &batch[5]]
        .iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(ids, want, "stored once each, in order");

    // More than one page of the default walk.
    let n = tenancy_audit::store::WALK_PAGE + 7;
    let c = fx.tenant("walk");
    for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
        let events: Vec<EncodedEvent> = chunk.iter().map(|i| encoded(&c, *i)).collect();
        store.append(&events).await.unwrap();
    }
    let mut seqs = Vec::new();
    let walked = store.walk(&c, &mut |r| seqs.push(r.seq)).await.unwrap();
    assert_eq!(walked, n as u64);
    assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>());
    let report = verify(store.as_ref(), &c, &[]).await.unwrap();
    assert!(report.is_valid(), "{report:?}");
    assert_eq!(report.records, n as u64);
}

#[tokio::test]
async fn duplicates_and_walk_memory() {
    duplicates_and_walk(Arc::new(MemoryAuditStore::new()), &Fixture::new()).await;
}

#[tokio::test]
async fn duplicates_and_walk_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileAuditStore::open(dir.path().join("a.jsonl"))
        .await
        .unwrap();
    duplicates_and_walk(Arc::new(store), &Fixture::new()).await;
}

#[tokio::test]
async fn duplicates_and_walk_postgres() {
    let Some((_db, store)) = pg().await else {
        return;
    };
    duplicates_and_walk(Arc::new(store), &Fixture::new()).await;
}

#[tokio::test]
async fn postgres_runtime_role_may_only_insert_and_select() {
    let Some((db, store)) = pg().await else {
        return;
    };
    let role = tenancy_tests::unique("audit_rt_");
    let password = tenancy_tests::unique("pw");
    let mut admin = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}' NOSUPERUSER NOBYPASSRLS"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    store.grant_runtime(&role).await.unwrap();
    let url = db.url().replacen(
        "postgres://postgres@",
        &format!("postgres://{role}:{password}@"),
        1,
    );
    // Run the checks in a task so that the role is dropped even when one fails.
    let owner_url = db.url().to_owned();
    let role_in_task = role.clone();
    let outcome = tokio::spawn(async move {
        let mut admin = sqlx::PgConnection::connect(&owner_url).await.unwrap();
        let rt = PgAuditStore::builder(&url).connect().unwrap();
        let fx = Fixture::new();
        let t = fx.tenant("r");
        rt.append(&[encoded(&t, 1), encoded(&t, 2)]).await.unwrap();
        assert!(verify(&rt, &t, &[]).await.unwrap().is_valid());
        let mut conn = rt.pool().acquire().await.unwrap();
        for sql in [
            "UPDATE tenancy_audit.events SET payload = payload",
            "DELETE FROM tenancy_audit.events",
            "TRUNCATE tenancy_audit.events",
            "DELETE FROM tenancy_audit.anchors",
            "SELECT tenancy_audit.purge('x', 1, '\\x00')",
        ] {
            let err = sqlx::raw_sql(sql).execute(&mut *conn).await.unwrap_err();
            assert!(
                err.to_string().contains("permission denied"),
                "{sql}: {err}"
            );
        }
        // A role granted UPDATE and DELETE cannot lift the triggers with the purge switch.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "GRANT UPDATE, DELETE ON tenancy_audit.events TO \"{role_in_task}\""
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        for sql in [
            "SET tenancy_audit.purging = 'on'; UPDATE tenancy_audit.events SET payload = payload",
            "SET tenancy_audit.purging = 'on'; DELETE FROM tenancy_audit.events",
        ] {
            let err = sqlx::raw_sql(sql).execute(&mut *conn).await.unwrap_err();
            assert!(err.to_string().contains("append-only"), "{sql}: {err}");
        }
        sqlx::raw_sql("RESET tenancy_audit.purging")
            .execute(&mut *conn)
            .await
            .unwrap();
        drop(conn);
        rt.pool().close().await;
        // The owner is stopped by the triggers.
        for sql in [
            "UPDATE tenancy_audit.events SET payload = payload",
            "DELETE FROM tenancy_audit.events",
            "TRUNCATE tenancy_audit.events",
        ] {
            let err = sqlx::raw_sql(sql).execute(&mut admin).await.unwrap_err();
            assert!(err.to_string().contains("append-only"), "{sql}: {err}");
        }
    })
    .await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\""
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Where the dispatcher's writer runs.
#[derive(Clone, Copy)]
enum Writer {
    Task,
    OwnThread,
}

async fn sink_suite(store: Arc<dyn AuditStore>, writer: Writer) {
    let dir = tempfile::tempdir().unwrap();
    let builder = AuditDispatcher::builder(Arc::clone(&store)).with_spool(dir.path().join("spool"));
    let sink = match writer {
        Writer::Task => builder.start().await,
        Writer::OwnThread => builder.start_on_own_thread().await,
    }
    .unwrap();
    let read_store = Arc::clone(&store);
    testkit::audit_sink(
        &sink,
        move |t| {
            let s = Arc::clone(&read_store);
            async move { events(&s, t).await }
        },
        &Fixture::new(),
    )
    .await;
    sink.shutdown().await.unwrap();
    assert!(matches!(
        sink.record(event(&Fixture::new().tenant("x"), 0)).await,
        Err(e) if e.kind() == tenancy_core::ErrorKind::Unavailable
    ));
}

#[tokio::test]
async fn dispatcher_conforms_over_memory() {
    sink_suite(Arc::new(MemoryAuditStore::new()), Writer::Task).await;
}

#[tokio::test]
async fn dispatcher_conforms_over_memory_on_its_own_thread() {
    sink_suite(Arc::new(MemoryAuditStore::new()), Writer::OwnThread).await;
}

#[tokio::test]
async fn dispatcher_conforms_over_file() {
    let dir = tempfile::tempdir().unwrap();
    sink_suite(
        Arc::new(
            FileAuditStore::open(dir.path().join("a.jsonl"))
                .await
                .unwrap(),
        ),
        Writer::Task,
    )
    .await;
}

#[tokio::test]
async fn dispatcher_conforms_over_postgres() {
    let Some((_db, store)) = pg().await else {
        return;
    };
    sink_suite(Arc::new(store), Writer::Task).await;
}

/// The writer's thread takes connections from the pool the test's runtime reads through;
/// once the writer has ended, every connection of the pool, those it used included, still
/// answers (queries run as many at once as the pool holds, so each connection is used).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatcher_conforms_over_postgres_on_its_own_thread() {
    let Some((_db, store)) = pg().await else {
        return;
    };
    let store: Arc<dyn AuditStore> = Arc::new(store);
    sink_suite(Arc::clone(&store), Writer::OwnThread).await;
    // At once (the writer's thread may still be ending) and again later.
    for round in 0..6 {
        if round == 3 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let queries: Vec<_> = (0..16)
            .map(|_| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.tenants().await })
            })
            .collect();
        for q in queries {
            assert!(!q.await.unwrap().unwrap().is_empty());
        }
    }
}

/// A pool of one connection, opened by the writer on its own thread, then busy with the
/// test's queries while the writer ends: the queries never notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_writer_opened_outlives_the_writer() {
    let Some(db) = tenancy_tests::postgres().await else {
        return;
    };
    let migrate = PgAuditStore::builder(db.url()).connect().unwrap();
    migrate.migrate().await.unwrap();
    // A fresh pool: its one connection is opened by the writer's first append.
    let store = PgAuditStore::builder(db.url())
        .with_max_connections(1)
        .connect()
        .unwrap();
    let store: Arc<dyn AuditStore> = Arc::new(store);
    let sink = AuditDispatcher::builder(Arc::clone(&store))
        .start_on_own_thread()
        .await
        .unwrap();
    let tenant = TenantId::parse("acme").unwrap();
    sink.record_sync(event(&tenant, 1)).await.unwrap();
    let reader = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + Duration::from_millis(600);
            let mut n = 0;
            while tokio::time::Instant::now() < until {
                assert!(!store.tenants().await.unwrap().is_empty());
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    sink.shutdown().await.unwrap();
    drop(sink);
    assert!(reader.await.unwrap() > 10);
}

/// Records `total` events, making the store fail after the first third with `down` and
/// recover with `up`; nothing is lost, nothing duplicated, order kept.
async fn outage<D, U>(store: Arc<dyn AuditStore>, down: D, up: U)
where
    D: AsyncFnOnce(),
    U: AsyncFnOnce(),
{
    let dir = tempfile::tempdir().unwrap();
    let sink = AuditDispatcher::builder(Arc::clone(&store))
        .with_spool(dir.path().join("spool"))
        .with_batch_size(16)
        .with_sync_timeout(Duration::from_millis(300))
        .with_retry(Duration::from_millis(20), Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let tenant = Fixture::new().tenant("o");
    let mut sent = Vec::new();
    let mut down = Some(down);
    for i in 0..300 {
        if i == 100 {
            sink.flush().await.unwrap();
            if let Some(down) = down.take() {
                down().await;
            }
        }
        let e = event(&tenant, i);
        sent.push(e.event_id);
        sink.record(e).await.unwrap();
        if i == 200 {
            // The store is down: a synchronous caller hears that its events are spooled.
            let err = sink.flush().await.unwrap_err();
            assert_eq!(err.kind(), tenancy_core::ErrorKind::Unavailable, "{err}");
            // And the health check says so.
            let health = sink.check().await;
            assert_eq!(health.status, HealthStatus::Degraded, "{health:?}");
            assert!(health.figures["spooled"] > 0, "{health:?}");
        }
    }
    assert!(sink.stats().spooled > 0, "{:?}", sink.stats());
    up().await;
    let mut stored = false;
    for _ in 0..100 {
        if sink.flush().await.is_ok() {
            stored = true;
            break;
        }
    }
    assert!(stored, "store recovered but events not replayed");
    assert_eq!(sink.check().await.status, HealthStatus::Up);
    sink.shutdown().await.unwrap();
    assert_eq!(sink.check().await.status, HealthStatus::Down);
    let got: Vec<_> = events(&store, tenant.clone())
        .await
        .iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(got.len(), sent.len(), "count in = count stored");
    assert_eq!(got, sent, "in order, once each");
    assert!(
        verify(store.as_ref(), &tenant, &[])
            .await
            .unwrap()
            .is_valid()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_outage_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    std::fs::create_dir(&dir).unwrap();
    let store = FileAuditStore::open(dir.join("audit.jsonl")).await.unwrap();
    let (d1, d2) = (dir.clone(), dir.clone());
    let aside = root.path().join("aside");
    let (a1, a2) = (aside.clone(), aside);
    outage(
        Arc::new(store),
        // The store's directory is replaced by a plain file: opening fails even for root.
        async move || {
            std::fs::rename(&d1, &a1).unwrap();
            std::fs::write(&d1, b"not a directory").unwrap();
        },
        async move || {
            std::fs::remove_file(&d2).unwrap();
            std::fs::rename(&a2, &d2).unwrap();
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_loses_nothing() {
    let Some((db, store)) = pg().await else {
        return;
    };
    let admin_url = db.admin_url().to_owned();
    let name = db.name().to_owned();
    let block = format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = '{name}' AND pid <> pg_backend_pid();"
    );
    let unblock = format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true;");
    let (u1, u2) = (admin_url.clone(), admin_url);
    outage(
        Arc::new(store),
        async move || {
            let mut c = sqlx::PgConnection::connect(&u1).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(block))
                .execute(&mut c)
                .await
                .unwrap();
        },
        async move || {
            let mut c = sqlx::PgConnection::connect(&u2).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(unblock))
                .execute(&mut c)
                .await
                .unwrap();
        },
    )
    .await;
}

/// A real store that counts its appends, and with `stall` set never returns from one after
/// it went through: the writer is then stuck after the store has the events and before the
/// spool cursor moves. Gated ([`Spy::gated`]), each append waits for a permit the test hands
/// out, then fails while `down` is set.
#[derive(Debug)]
struct Spy {
    inner: Arc<dyn AuditStore>,
    appends: std::sync::atomic::AtomicUsize,
    stall: bool,
    /// How long each append takes before it reaches the store.
    delay: Duration,
    /// When set, each append first waits for a permit (the test decides how far the writer
    /// gets), counted in `begun` as it starts.
    gate: Option<tokio::sync::Semaphore>,
    begun: std::sync::atomic::AtomicUsize,
    /// Appends fail (after the gate) while set.
    down: std::sync::atomic::AtomicBool,
}

impl Spy {
    fn new(inner: Arc<dyn AuditStore>, stall: bool) -> Self {
        Self {
            inner,
            appends: std::sync::atomic::AtomicUsize::new(0),
            stall,
            delay: Duration::ZERO,
            gate: None,
            begun: std::sync::atomic::AtomicUsize::new(0),
            down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A store whose every append takes `delay`.
    fn slow(inner: Arc<dyn AuditStore>, delay: Duration) -> Self {
        Self {
            delay,
            ..Self::new(inner, false)
        }
    }

    /// A store whose appends each wait for a permit ([`Spy::allow`]), then fail while `down`.
    fn gated(inner: Arc<dyn AuditStore>, down: bool) -> Self {
        Self {
            gate: Some(tokio::sync::Semaphore::new(0)),
            down: std::sync::atomic::AtomicBool::new(down),
            ..Self::new(inner, false)
        }
    }

    /// Lets `n` more appends through the gate.
    fn allow(&self, n: usize) {
        if let Some(g) = &self.gate {
            g.add_permits(n);
        }
    }

    /// Waits (up to 10 s) until `n` appends have begun.
    async fn begun(&self, n: usize) {
        for _ in 0..10_000 {
            if self.begun.load(std::sync::atomic::Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("{n} appends did not begin within 10 s");
    }

    /// Appends that got through to `inner`.
    fn appends(&self) -> usize {
        self.appends.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait]
impl AuditStore for Spy {
    async fn append(&self, events: &[EncodedEvent]) -> tenancy_audit::Result<Vec<Appended>> {
        self.begun.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(g) = &self.gate {
            g.acquire().await.unwrap().forget();
        }
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Io {
                context: "test store",
                source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "down"),
            });
        }
        tokio::time::sleep(self.delay).await;
        let out = self.inner.append(events).await?;
        self.appends
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.stall {
            std::future::pending::<()>().await;
        }
        Ok(out)
    }
    async fn scan(&self, t: &TenantId, c: ScanCursor, l: usize) -> tenancy_audit::Result<ScanPage> {
        self.inner.scan(t, c, l).await
    }
    async fn newest(
        &self,
        t: &TenantId,
        b: Option<u64>,
        l: usize,
    ) -> tenancy_audit::Result<Vec<StoredRecord>> {
        self.inner.newest(t, b, l).await
    }
    async fn head(&self, t: &TenantId) -> tenancy_audit::Result<Option<ChainHead>> {
        self.inner.head(t).await
    }
    async fn anchor(&self, t: &TenantId) -> tenancy_audit::Result<Option<Anchor>> {
        self.inner.anchor(t).await
    }
    async fn purge(&self, t: &TenantId, a: Anchor) -> tenancy_audit::Result<u64> {
        self.inner.purge(t, a).await
    }
    async fn tenants(&self) -> tenancy_audit::Result<Vec<TenantId>> {
        self.inner.tenants().await
    }
    async fn sync(&self) -> tenancy_audit::Result<()> {
        self.inner.sync().await
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts a dispatcher on `spool` once the "killed process" before it has let go of the spool.
/// A process's death releases its spool lock at once; a runtime shut down in the background
/// drops its tasks, and the spool they hold, on its own threads a moment later. Until then
/// the spool is refused as held by another dispatcher.
async fn start_after_death(store: Arc<dyn AuditStore>, spool: &std::path::Path) -> AuditDispatcher {
    let started = std::time::Instant::now();
    loop {
        match AuditDispatcher::builder(Arc::clone(&store))
            .with_spool(spool)
            .start()
            .await
        {
            Err(Error::Conflict(_)) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            result => return result.unwrap(),
        }
    }
}

#[test]
fn killed_writer_between_spool_and_replay_loses_and_duplicates_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    std::fs::create_dir(&dir).unwrap();
    let spool = root.path().join("audit.spool");
    let aside = root.path().join("aside");
    let tenant = Fixture::new().tenant("k");
    let main = runtime();
    let store: Arc<dyn AuditStore> = Arc::new(
        main.block_on(FileAuditStore::open(dir.join("audit.jsonl")))
            .unwrap(),
    );

    // 1. The store is down; 60 events are spooled; the process dies.
    std::fs::rename(&dir, &aside).unwrap();
    std::fs::write(&dir, b"x").unwrap();
    let rt = runtime();
    let sent: Vec<_> = rt.block_on(async {
        let sink = AuditDispatcher::builder(Arc::clone(&store))
            .with_spool(&spool)
            .with_sync_timeout(Duration::from_millis(100))
            .start()
            .await
            .unwrap();
        let mut sent = Vec::new();
        for i in 0..60 {
            let e = event(&tenant, i);
            sent.push(e.event_id);
            sink.record(e).await.unwrap();
        }
        assert!(sink.flush().await.is_err(), "store is down");
        assert_eq!(sink.stats().spooled, 60);
        sent
    });
    rt.shutdown_background();
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&aside, &dir).unwrap();
    assert!(main.block_on(all(store.as_ref(), &tenant)).is_empty());

    // 2. The next process replays into the store and dies before recording that it did.
    let rt = runtime();
    let stalled: Arc<dyn AuditStore> = Arc::new(Spy::new(Arc::clone(&store), true));
    rt.block_on(async {
        let _sink = start_after_death(stalled, &spool).await;
        for _ in 0..200 {
            if all(store.as_ref(), &tenant).await.len() == 60 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("replay did not reach the store");
    });
    rt.shutdown_background();

    // 3. A third start replays the same spool again: the store keeps each event once.
    main.block_on(async {
        let sink = start_after_death(Arc::clone(&store), &spool).await;
        sink.flush().await.unwrap();
        assert_eq!(sink.stats().replayed, 60, "the spool was replayed again");
        sink.shutdown().await.unwrap();
        let got: Vec<_> = events(&store, tenant.clone())
            .await
            .iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(got, sent, "nothing lost, nothing duplicated, in order");
        assert!(
            verify(store.as_ref(), &tenant, &[])
                .await
                .unwrap()
                .is_valid()
        );
    });
    assert_eq!(std::fs::metadata(&spool).unwrap().len(), 0, "spool emptied");
}

/// Waits (up to 5 s) until the store holds `n` records of `tenant`.
async fn stored(store: &MemoryAuditStore, tenant: &TenantId, n: usize) {
    let started = std::time::Instant::now();
    while store.records(tenant).len() < n {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{n} events not stored within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_lingers_for_more_events_but_never_keeps_a_caller_waiting() {
    let store = MemoryAuditStore::new();
    let spy = Arc::new(Spy::new(Arc::new(store.clone()), false));
    let sink = AuditDispatcher::builder(Arc::clone(&spy) as Arc<dyn AuditStore>)
        .with_linger(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let tenant = Fixture::new().tenant("linger");
    // The first event is appended at once; the writer then lingers, and the events that
    // arrive meanwhile are appended together when it ends.
    sink.record(event(&tenant, 0)).await.unwrap();
    stored(&store, &tenant, 1).await;
    for i in 1..=20 {
        sink.record(event(&tenant, i)).await.unwrap();
    }
    stored(&store, &tenant, 21).await;
    assert_eq!(
        spy.appends(),
        2,
        "the 20 lingering events went in one append"
    );
    sink.shutdown().await.unwrap();

    // A caller that waits for the store does not wait out the linger, nor does a flush or a
    // shutdown: with an hour's linger, these return at once.
    let sink = AuditDispatcher::builder(Arc::new(store.clone()))
        .with_linger(Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        for i in 21..24 {
            sink.record_sync(event(&tenant, i)).await.unwrap();
            assert_eq!(store.records(&tenant).len(), i + 1);
        }
        sink.record(event(&tenant, 24)).await.unwrap();
        sink.flush().await.unwrap();
        assert_eq!(store.records(&tenant).len(), 25);
        sink.record(event(&tenant, 25)).await.unwrap();
        sink.shutdown().await.unwrap();
    })
    .await
    .expect("a waiting caller was kept waiting for the linger");
    assert_eq!(store.records(&tenant).len(), 26);
    assert!(verify(&store, &tenant, &[]).await.unwrap().is_valid());
}

/// Events queued behind a shutdown (recorded while the writer was busy) are stored before
/// the writer stops, and once it has stopped `record` refuses instead of dropping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_behind_a_shutdown_are_stored_not_dropped() {
    let store = MemoryAuditStore::new();
    let slow = Arc::new(Spy::slow(
        Arc::new(store.clone()),
        Duration::from_millis(300),
    ));
    let sink = AuditDispatcher::builder(slow as Arc<dyn AuditStore>)
        .with_linger(Duration::ZERO)
        .start()
        .await
        .unwrap();
    let tenant = Fixture::new().tenant("late");
    sink.record(event(&tenant, 0)).await.unwrap();
    // The writer is in its 300 ms append of event 0; the shutdown queues behind it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopping = tokio::spawn({
        let sink = sink.clone();
        async move { sink.shutdown().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Queued after the shutdown, while the writer still appends: accepted, so stored.
    let mut accepted = 1;
    for i in 1..4 {
        if sink.record(event(&tenant, i)).await.is_ok() {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 4, "the queue had room: every record was accepted");
    stopping.await.unwrap().unwrap();
    assert_eq!(
        store.records(&tenant).len(),
        accepted,
        "an accepted event was dropped"
    );
    let refused = sink.record(event(&tenant, 9)).await.unwrap_err();
    assert_eq!(refused.kind(), tenancy_core::ErrorKind::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_record_takes_an_event_at_once_or_hands_it_back() {
    use tenancy_core::TryRecord;
    // The writer is stuck in its first append, so the queue (room for 2) fills up.
    let store = MemoryAuditStore::new();
    let stuck = Arc::new(Spy::new(Arc::new(store.clone()), true));
    let sink = AuditDispatcher::builder(Arc::clone(&stuck) as Arc<dyn AuditStore>)
        .with_capacity(2)
        .with_linger(Duration::ZERO)
        .start()
        .await
        .unwrap();
    let tenant = Fixture::new().tenant("try");
    sink.record(event(&tenant, 0)).await.unwrap();
    stored(&store, &tenant, 1).await;
    let mut taken = 0;
    let back = loop {
        let e = event(&tenant, 1 + taken);
        let id = e.event_id;
        match sink.try_record(e) {
            TryRecord::Done(r) => {
                r.unwrap();
                taken += 1;
                assert!(taken <= 2, "more events taken than the queue holds");
            }
            TryRecord::Wait(e) => {
                assert_eq!(e.event_id, id, "the same event comes back");
                break taken;
            }
        }
    };
    assert_eq!(
        back, 2,
        "the queue took two events, then handed the third back"
    );

    // A stopped dispatcher refuses at once.
    let sink = AuditDispatcher::builder(Arc::new(MemoryAuditStore::new()))
        .start()
        .await
        .unwrap();
    sink.shutdown().await.unwrap();
    assert!(matches!(
        sink.try_record(event(&tenant, 9)),
        TryRecord::Done(Err(e)) if e.kind() == tenancy_core::ErrorKind::Unavailable
    ));
}

/// While the writer is held in an append, `record` returns for as many events as the queue
/// holds (and the batch in the writer's hands), and the rest wait, neither refused nor
/// dropped; once the store lets appends through, every one of them is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_applies_back_pressure_instead_of_dropping() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let store = MemoryAuditStore::new();
    let gated = Arc::new(Spy::gated(Arc::new(store.clone()), false));
    let sink = AuditDispatcher::builder(Arc::clone(&gated) as Arc<dyn AuditStore>)
        .with_capacity(4)
        .with_batch_size(2)
        .with_linger(Duration::ZERO)
        .start()
        .await
        .unwrap();
    let tenant = Fixture::new().tenant("q");
    let returned = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for i in 0..200 {
        let (s, t, returned) = (sink.clone(), tenant.clone(), Arc::clone(&returned));
        handles.push(tokio::spawn(async move {
            let r = s.record(event(&t, i)).await;
            returned.fetch_add(1, Ordering::SeqCst);
            r
        }));
    }
    gated.begun(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let early = returned.load(Ordering::SeqCst);
    assert!(
        (4..=6).contains(&early),
        "{early} records returned while the writer was held: the queue holds 4, the batch 2"
    );
    assert_eq!(gated.appends(), 0);

    gated.allow(1_000);
    for h in handles {
        h.await.unwrap().unwrap();
    }
    sink.shutdown().await.unwrap();
    let records = store.records(&tenant);
    assert_eq!(records.len(), 200);
    let ids: std::collections::HashSet<_> = records.iter().map(|r| r.event_id).collect();
    assert_eq!(ids.len(), 200, "every event once");
    assert!(matches!(
        AuditDispatcher::builder(Arc::new(store))
            .with_capacity(0)
            .start()
            .await,
        Err(Error::InvalidConfig(_))
    ));
}

/// Appends from several operating-system processes at once: this test starts copies of its
/// own test binary as writers (they take the child branch through the environment) while it
/// appends too; the chain must come out gapless and verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_appends_from_several_processes() {
    const CHILD: &str = "TENANCY_AUDIT_TEST_WRITER";
    const PER_WRITER: usize = 120;
    if let Ok(spec) = std::env::var(CHILD) {
        let (url, tenant) = spec.split_once(' ').unwrap();
        let tenant = TenantId::parse(tenant).unwrap();
        let store = PgAuditStore::builder(url).connect().unwrap();
        let pid = std::process::id() as usize;
        for chunk in 0..(PER_WRITER / 6) {
            let batch: Vec<EncodedEvent> = (0..6)
                .map(|i| encoded(&tenant, pid * 10_000 + chunk * 6 + i))
                .collect();
            store.append(&batch).await.unwrap();
        }
        return;
    }
    let Some((db, store)) = pg().await else {
        return;
    };
    let tenant = Fixture::new().tenant("p");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            tokio::process::Command::new(&exe)
                .args([
                    "--exact",
                    "postgres_appends_from_several_processes",
                    "--quiet",
                ])
                .env(CHILD, format!("{} {}", db.url(), tenant))
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for i in 0..PER_WRITER {
        store.append(&[encoded(&tenant, i)]).await.unwrap();
    }
    for mut c in children {
        assert!(c.wait().await.unwrap().success(), "a writer process failed");
    }
    let records = all(&store, &tenant).await;
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=(4 * PER_WRITER) as u64).collect::<Vec<_>>());
    assert!(verify(&store, &tenant, &[]).await.unwrap().is_valid());
}

/// A store that never answers does not stop the writer: each append gives up after the
/// append timeout and its batch goes to the spool, so `record_sync` answers `Spooled` instead
/// of waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_never_answers_times_out_into_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let silent = Arc::new(Spy::slow(
        Arc::new(MemoryAuditStore::new()),
        Duration::from_secs(3600),
    ));
    let sink = AuditDispatcher::builder(silent as Arc<dyn AuditStore>)
        .with_spool(dir.path().join("audit.spool"))
        .with_append_timeout(Duration::from_millis(100))
        .with_sync_timeout(Duration::from_millis(300))
        .with_retry(Duration::from_millis(50), Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let tenant = Fixture::new().tenant("silent");
    let answered =
        tokio::time::timeout(Duration::from_secs(5), sink.record_sync(event(&tenant, 0)))
            .await
            .expect("record_sync waited for a store that never answers");
    let err = answered.unwrap_err();
    assert_eq!(err.kind(), tenancy_core::ErrorKind::Unavailable, "{err}");
    assert!(sink.stats().spooled >= 1, "{:?}", sink.stats());
}

/// Without a spool, events a failing store never took are reported lost at shutdown, not
/// "spooled for replay".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_without_a_spool_reports_events_lost() {
    let silent = Arc::new(Spy::slow(
        Arc::new(MemoryAuditStore::new()),
        Duration::from_secs(3600),
    ));
    let sink = AuditDispatcher::builder(silent as Arc<dyn AuditStore>)
        .with_append_timeout(Duration::from_millis(50))
        .with_drain_timeout(Duration::from_millis(200))
        .with_retry(Duration::from_millis(20), Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let tenant = Fixture::new().tenant("lost");
    sink.record(event(&tenant, 0)).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), sink.shutdown())
        .await
        .expect("shutdown waited for a store that never answers")
        .unwrap_err();
    assert!(matches!(err, Error::Lost { events: 1, .. }), "{err:?}");
}

/// One writer per JSONL file: a second store opening it for writing is refused while the
/// first is open (two writers would fork the chains); readers are not; once the first is
/// gone the file opens again.
#[tokio::test]
async fn a_jsonl_file_has_one_writer_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.jsonl");
    let first = FileAuditStore::open(&path).await.unwrap();
    let t = Fixture::new().tenant("one");
    first.append(&[encoded(&t, 1)]).await.unwrap();
    let second = FileAuditStore::open(&path).await;
    assert!(matches!(second, Err(Error::Conflict(_))), "{second:?}");
    let reader = FileAuditStore::builder(&path)
        .read_only()
        .open()
        .await
        .unwrap();
    assert!(reader.head(&t).await.unwrap().is_some());
    drop(first);
    let reopened = FileAuditStore::open(&path).await.unwrap();
    assert!(reopened.head(&t).await.unwrap().is_some());
}

/// Waits (up to 10 s) until `n` messages are queued for the writer.
async fn queued(sink: &AuditDispatcher, n: u64) {
    for _ in 0..10_000 {
        if sink.check().await.figures["queued"] == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!(
        "{n} messages were not queued within 10 s: {:?}",
        sink.check().await
    );
}

/// A long replay (a spool of thousands of events, the store back) takes what is queued
/// between its batches: a flush sent meanwhile is seen, and answered within its timeout,
/// while most of the spool still waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_replay_takes_queued_messages_between_its_batches() {
    const SPOOLED: usize = 3_000;
    const BATCH: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.spool");
    let tenant = Fixture::new().tenant("replay");
    let mut sent = Vec::new();
    let mut spool = Vec::new();
    for i in 0..SPOOLED {
        let e = encoded(&tenant, i);
        sent.push(e.event_id);
        spool.extend_from_slice(&e.payload);
        spool.push(b'\n');
    }
    // What an earlier run left: the events in the spool, in its format.
    std::fs::write(&path, spool).unwrap();
    let store = MemoryAuditStore::new();
    let gate = Arc::new(Spy::gated(Arc::new(store.clone()), false));
    let sink = AuditDispatcher::builder(Arc::clone(&gate) as Arc<dyn AuditStore>)
        .with_spool(&path)
        .with_batch_size(BATCH)
        .with_sync_timeout(Duration::ZERO)
        .start()
        .await
        .unwrap();
    // The replay starts and its first append waits at the gate; a flush queues behind it.
    gate.begun(1).await;
    let mut flushing = tokio::spawn({
        let sink = sink.clone();
        async move { sink.flush().await }
    });
    queued(&sink, 1).await;
    // The replay may go on for three appends, far from the end of the spool.
    gate.allow(3);
    let answer = match tokio::time::timeout(Duration::from_secs(10), &mut flushing).await {
        Ok(answer) => answer,
        Err(_) => {
            // Not seen yet: let the replay run to its end to see when it is.
            gate.allow(SPOOLED);
            flushing.await
        }
    };
    let replayed = gate.appends();
    assert!(
        replayed <= 3,
        "the flush was answered only after {replayed} of {} replay appends",
        SPOOLED.div_ceil(BATCH)
    );
    let err = answer.unwrap().unwrap_err();
    assert_eq!(err.kind(), tenancy_core::ErrorKind::Unavailable, "{err}");

    gate.allow(SPOOLED);
    sink.shutdown().await.unwrap();
    let got: Vec<_> = store.records(&tenant).iter().map(|r| r.event_id).collect();
    assert_eq!(got, sent, "the whole spool replayed, in order, once each");
}

/// Two flushes sent while the writer holds events the store refused (no spool), with more
/// than a batch of events between them, are both answered within the sync timeout: the
/// second is not left in the queue behind the events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_flush_behind_a_batch_of_held_events_is_answered() {
    let store = MemoryAuditStore::new();
    let gate = Arc::new(Spy::gated(Arc::new(store.clone()), true));
    let sink = AuditDispatcher::builder(Arc::clone(&gate) as Arc<dyn AuditStore>)
        .with_batch_size(4)
        .with_sync_timeout(Duration::from_millis(100))
        .with_retry(Duration::from_secs(3600), Duration::from_secs(3600))
        .with_drain_timeout(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let tenant = Fixture::new().tenant("flushes");
    // The writer's first append waits at the gate while the rest queues up.
    sink.record(event(&tenant, 0)).await.unwrap();
    gate.begun(1).await;
    let flush = || {
        let sink = sink.clone();
        tokio::spawn(async move { sink.flush().await })
    };
    let first = flush();
    queued(&sink, 1).await;
    for i in 1..=10 {
        sink.record(event(&tenant, i)).await.unwrap();
    }
    let second = flush();
    queued(&sink, 12).await;
    // The append fails: event 0 is held, and the writer takes no new events.
    gate.allow(1);
    for (name, flush) in [("first", first), ("second", second)] {
        let answer = tokio::time::timeout(Duration::from_secs(10), flush)
            .await
            .unwrap_or_else(|_| panic!("the {name} flush was not answered within 10 s"))
            .unwrap();
        // Held in memory, not spooled (there is no spool): not safe, so not `Unavailable`,
        // which callers may take for "safe".
        let err = answer.unwrap_err();
        assert_eq!(err.kind(), tenancy_core::ErrorKind::Timeout, "{err}");
    }
    let err = sink.shutdown().await.unwrap_err();
    assert!(matches!(err, Error::Lost { events: 11, .. }), "{err:?}");
}

/// Once `shutdown` has answered, the spool is free: a dispatcher started on it at once (a
/// restart within the process) is not refused as a second holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_is_free_once_shutdown_answers() {
    let root = tempfile::tempdir().unwrap();
    let spool = root.path().join("audit.spool");
    let store: Arc<dyn AuditStore> = Arc::new(MemoryAuditStore::new());
    let tenant = Fixture::new().tenant("restart");
    for own_thread in [false, true] {
        for i in 0..40 {
            let builder = AuditDispatcher::builder(Arc::clone(&store)).with_spool(&spool);
            let sink = if own_thread {
                builder.start_on_own_thread().await
            } else {
                builder.start().await
            }
            .unwrap_or_else(|e| panic!("start {i} (own thread: {own_thread}): {e}"));
            sink.record(event(&tenant, i)).await.unwrap();
            sink.shutdown().await.unwrap();
        }
    }
    assert_eq!(all(store.as_ref(), &tenant).await.len(), 80);
}

/// A scan's cursor is a place in the chain (the last `seq` read), not a position in a list:
/// a purge between two pages (retention running during an export) skips no record that is
/// still stored.
async fn a_purge_between_pages_skips_nothing(store: Arc<dyn AuditStore>) {
    let t = Fixture::new().tenant("paging");
    let events: Vec<EncodedEvent> = (0..10).map(|i| encoded(&t, i)).collect();
    store.append(&events).await.unwrap();
    let first = store.scan(&t, ScanCursor::START, 4).await.unwrap();
    let seqs = |p: &ScanPage| p.records.iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&first), [1, 2, 3, 4]);
    let anchor = Anchor {
        seq: 3,
        hash: first.records[2].hash,
    };
    store.purge(&t, anchor).await.unwrap();
    let second = store.scan(&t, first.next.unwrap(), 4).await.unwrap();
    assert_eq!(seqs(&second), [5, 6, 7, 8]);
    let third = store.scan(&t, second.next.unwrap(), 4).await.unwrap();
    assert_eq!(seqs(&third), [9, 10]);
    assert_eq!(third.next, None);
}

#[tokio::test]
async fn a_purge_between_pages_skips_nothing_memory() {
    a_purge_between_pages_skips_nothing(Arc::new(MemoryAuditStore::new())).await;
}

#[tokio::test]
async fn a_purge_between_pages_skips_nothing_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileAuditStore::open(dir.path().join("a.jsonl"))
        .await
        .unwrap();
    a_purge_between_pages_skips_nothing(Arc::new(store)).await;
}

/// An event recorded again (a caller's retry) is stored once and is no conflict; another
/// event under an id already stored is not stored, and the dispatcher counts it.
#[tokio::test]
async fn an_event_id_reused_for_another_event_is_counted_not_stored() {
    let store = MemoryAuditStore::new();
    let sink = AuditDispatcher::builder(Arc::new(store.clone()))
        .start()
        .await
        .unwrap();
    let tenant = Fixture::new().tenant("reuse");
    let first = event(&tenant, 1);
    sink.record(first.clone()).await.unwrap();
    sink.record(first.clone()).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(sink.stats().conflicts, 0, "a retry is no conflict");

    let mut other = event(&tenant, 2);
    other.event_id = first.event_id;
    sink.record(other).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(sink.stats().conflicts, 1);
    let records = store.records(&tenant);
    assert_eq!(records.len(), 1);
    let decoded = tenancy_audit::codec::decode(&records[0].payload).unwrap();
    assert_eq!(decoded.details.get("n"), Some(&serde_json::json!(1)));
    sink.shutdown().await.unwrap();
}
