//! Soak: 8 tasks × 5 tenants × N operations on a pool of 2 connections, with injected
//! panics, cancellations and SQL errors. Every row read belongs to its reader, and the
//! per-tenant row counts reconcile with the committed writes.
//!
//! N defaults to 600 operations per task and tenant (24,000 in all), the largest size that
//! stays within about a minute on the CI machine's two shared cores in a debug build: 800
//! took 69 s and the full 2,000 (80,000 operations) took 223 s there, both passing. Set
//! `TENANCY_SOAK_OPS=2000` to run the full size.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{TestEnv, tenant};
use tenancy_core::TenantId;
use tenancy_db::{Error, TenantPool};

const TASKS: usize = 8;
const TENANTS: usize = 5;

#[derive(Debug, Default)]
struct Tally {
    committed: [AtomicI64; TENANTS],
    panics: AtomicU64,
    cancels: AtomicU64,
    errors: AtomicU64,
    reads: AtomicU64,
    foreign_rows: AtomicU64,
}

/// A small deterministic generator (xorshift), one per task.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn insert(pool: &TenantPool, t: &TenantId, title: String) -> Result<(), Error> {
    pool.scope(t, async |tx| {
        let owner: String = sqlx::query_scalar(
            "INSERT INTO records (title, body) VALUES ($1, 'soak') RETURNING tenant_id",
        )
        .bind(title)
        .fetch_one(&mut **tx)
        .await?;
        assert_eq!(
            owner,
            tx.tenant().as_str(),
            "inserted row landed in another tenant"
        );
        Ok(())
    })
    .await
}

async fn op(pool: &TenantPool, t: &TenantId, k: usize, task: usize, rng: &mut Rng, tally: &Tally) {
    let title = format!("{task}-{}", rng.next());
    match rng.next() % 100 {
        // Committed insert.
        0..=44 => {
            insert(pool, t, title).await.expect("insert");
            tally.committed[k].fetch_add(1, Ordering::Relaxed);
        }
        // Reads: every row seen is the reader's; point lookups of random ids.
        45..=79 => {
            let probe = i64::try_from(rng.next() % 40_000).unwrap_or(1);
            pool.scope(t, async |tx| {
                let groups: Vec<(String, i64)> =
                    sqlx::query_as("SELECT tenant_id, count(*) FROM records GROUP BY 1")
                        .fetch_all(&mut **tx)
                        .await?;
                let found: Option<String> =
                    sqlx::query_scalar("SELECT tenant_id FROM records WHERE id = $1")
                        .bind(probe)
                        .fetch_optional(&mut **tx)
                        .await?;
                let foreign = groups.iter().filter(|(g, _)| g != t.as_str()).count()
                    + usize::from(found.as_deref().is_some_and(|f| f != t.as_str()));
                tally
                    .foreign_rows
                    .fetch_add(foreign as u64, Ordering::Relaxed);
                tally.reads.fetch_add(1, Ordering::Relaxed);
                Ok::<_, Error>(())
            })
            .await
            .expect("read");
        }
        // A borrower without tenant: refused (42501), whatever the connection served before.
        80..=81 => {
            let mut tx = pool.begin_unscoped().await.expect("unscoped");
            let r = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM records")
                .fetch_one(&mut *tx)
                .await;
            let e = r.expect_err("a borrower without tenant read tenant rows");
            assert_eq!(common::sqlstate(&e).as_deref(), Some("42501"), "{e}");
        }
        // Delete one of the tenant's rows.
        82..=89 => {
            let gone: Option<String> = pool
                .scope(t, async |tx| {
                    let r = sqlx::query_scalar(
                        "DELETE FROM records WHERE id = (SELECT min(id) FROM records)
                         RETURNING tenant_id",
                    )
                    .fetch_optional(&mut **tx)
                    .await?;
                    Ok::<_, Error>(r)
                })
                .await
                .expect("delete");
            if let Some(owner) = gone {
                assert_eq!(owner, t.as_str(), "deleted another tenant's row");
                tally.committed[k].fetch_sub(1, Ordering::Relaxed);
            }
        }
        // Panic after a write inside scope: the write must roll back.
        90..=92 => {
            let (pool, t2) = (pool.clone(), t.clone());
            let r = tokio::spawn(async move {
                pool.scope(&t2, async |tx| {
                    sqlx::query("INSERT INTO records (title, body) VALUES ($1, 'panic')")
                        .bind(title)
                        .execute(&mut **tx)
                        .await?;
                    if tx.tenant().as_str().starts_with("soak") {
                        panic!("injected panic");
                    }
                    Ok::<_, Error>(())
                })
                .await
            })
            .await;
            assert!(r.unwrap_err().is_panic());
            tally.panics.fetch_add(1, Ordering::Relaxed);
        }
        // Cancellation after a write, mid-statement.
        93..=95 => {
            let r = tokio::time::timeout(
                Duration::from_millis(1),
                pool.scope(t, async |tx| {
                    sqlx::query("INSERT INTO records (title, body) VALUES ($1, 'cancelled')")
                        .bind(title)
                        .execute(&mut **tx)
                        .await?;
                    sqlx::query("SELECT pg_sleep(0.003)")
                        .execute(&mut **tx)
                        .await?;
                    Ok::<_, Error>(())
                }),
            )
            .await;
            match r {
                Err(_) => {
                    tally.cancels.fetch_add(1, Ordering::Relaxed);
                }
                // Finished within the deadline (rare): it committed.
                Ok(r) => {
                    r.expect("uncancelled scope");
                    tally.committed[k].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // SQL error after a write: rolled back.
        _ => {
            let r = pool
                .scope(t, async |tx| {
                    sqlx::query("INSERT INTO records (title, body) VALUES ($1, 'error')")
                        .bind(title)
                        .execute(&mut **tx)
                        .await?;
                    sqlx::query("SELECT 1/0").execute(&mut **tx).await?;
                    Ok::<_, Error>(())
                })
                .await;
            assert_eq!(r.unwrap_err().sqlstate().as_deref(), Some("22012"));
            tally.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_pool_of_two() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    // Keep the injected panics out of the output; report any other panic as usual.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|m| *m == "injected panic");
        if !injected {
            default_hook(info);
        }
    }));
    let ops: usize = std::env::var("TENANCY_SOAK_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let pool = TenantPool::connect(
        env.runtime_config()
            .with_max_connections(2)
            .with_acquire_timeout(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    let tenants: Arc<Vec<TenantId>> =
        Arc::new((0..TENANTS).map(|i| tenant(&format!("soak-{i}"))).collect());
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let (pool, tenants, tally) = (pool.clone(), Arc::clone(&tenants), Arc::clone(&tally));
        handles.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (task as u64 + 1));
            for i in 0..ops * TENANTS {
                let k = (task + i) % TENANTS;
                op(&pool, &tenants[k], k, task, &mut rng, &tally).await;
            }
        }));
    }
    for h in handles {
        h.await.expect("soak task");
    }
    let elapsed = started.elapsed();

    let mut admin = env.admin().await;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT tenant_id, count(*) FROM records GROUP BY 1 ORDER BY 1")
            .fetch_all(&mut admin)
            .await
            .unwrap();
    let stray: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM records WHERE body IN ('panic', 'cancelled', 'error')",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    for (k, t) in tenants.iter().enumerate() {
        let got = rows
            .iter()
            .find(|(name, _)| name == t.as_str())
            .map_or(0, |(_, n)| *n);
        assert_eq!(
            got,
            tally.committed[k].load(Ordering::Relaxed),
            "count of {t}"
        );
    }
    assert_eq!(rows.len(), TENANTS, "rows of unknown tenants: {rows:?}");
    assert_eq!(stray, 0, "rolled-back writes survived");
    assert_eq!(
        tally.foreign_rows.load(Ordering::Relaxed),
        0,
        "a reader saw another tenant's row"
    );
    let (panics, cancels, errors) = (
        tally.panics.load(Ordering::Relaxed),
        tally.cancels.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
    );
    assert!(
        panics > 0 && cancels > 0 && errors > 0,
        "faults were not injected"
    );
    eprintln!(
        "soak: {TASKS} tasks x {TENANTS} tenants x {ops} ops = {} ops in {elapsed:?} on a pool of 2; \
         reads {}, panics {panics}, cancels {cancels}, errors {errors}, rows {rows:?}",
        TASKS * TENANTS * ops,
        tally.reads.load(Ordering::Relaxed),
    );
    pool.close().await;
}
