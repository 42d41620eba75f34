//! Cost of tenant isolation, measured in one run against the real PostgreSQL:
//!
//! - `point_lookup/tenant_tx`: `begin(tenant)`, a point lookup under row-level security,
//!   `commit` (one-message `BEGIN`), against `point_lookup/autocommit_no_rls`: the same
//!   lookup on an identical table without row-level security, in autocommit on a plain pool;
//! - `begin_form/one_message` against `begin_form/two_round_trips`: the same transaction
//!   (begin, lookup, commit) with the tenant set in the `BEGIN` message or by a second
//!   `set_config` round trip;
//! - interleaved only: the same transaction with the commit check on (the default: a probe
//!   for an aborted transaction before `COMMIT`) and off (`DbConfig::with_commit_check`).
//!
//! Run: `cargo bench -p tenancy-db --bench tenant_tx -- --warm-up-time 1 --measurement-time 3`
//! (needs PostgreSQL as for the tests; skips when it is unreachable).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sqlx::postgres::PgPoolOptions;
use tenancy_db::{BeginMode, TenantPool};

const TENANTS: usize = 10;
const ROWS_PER_TENANT: i64 = 1000;

struct Setup {
    // Fields drop in order: the pools, then the database and roles, then the runtime.
    one_message: TenantPool,
    two_trips: TenantPool,
    unchecked: TenantPool,
    plain: sqlx::PgPool,
    ids: Vec<(String, i64)>,
    _env: common::TestEnv,
    rt: tokio::runtime::Runtime,
}

fn setup() -> Option<Setup> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .ok()?;
    let (env, one_message, two_trips, unchecked, plain, ids) = rt.block_on(async {
        let env = common::TestEnv::new().await?;
        let mut owner = env.connect_as(&env.owner).await;
        // The same rows twice: `records` under RLS, `records_plain` without (its column is
        // not called tenant_id, so it is not a tenant table for the audit).
        sqlx::raw_sql(
            "CREATE TABLE records_plain (
                 owner_id text NOT NULL, id bigint NOT NULL, title text NOT NULL,
                 body text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (owner_id, id))",
        )
        .execute(&mut owner)
        .await
        .expect("plain table");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "GRANT SELECT ON records_plain TO \"{}\"",
            env.runtime
        )))
        .execute(&mut owner)
        .await
        .expect("grant");
        let mut admin = env.admin().await;
        sqlx::query(
            "INSERT INTO records (tenant_id, title, body)
             SELECT 'tenant-' || t, 'title ' || n, repeat('x', 200)
             FROM generate_series(0, $1 - 1) t, generate_series(1, $2) n",
        )
        .bind(TENANTS as i64)
        .bind(ROWS_PER_TENANT)
        .execute(&mut admin)
        .await
        .expect("seed");
        sqlx::raw_sql(
            "INSERT INTO records_plain SELECT * FROM records; ANALYZE records; ANALYZE records_plain",
        )
        .execute(&mut admin)
        .await
        .expect("copy");
        let ids: Vec<(String, i64)> =
            sqlx::query_as("SELECT tenant_id, id FROM records ORDER BY random() LIMIT 1000")
                .fetch_all(&mut admin)
                .await
                .expect("ids");
        let one_message = TenantPool::connect(env.runtime_config().with_max_connections(1))
            .await
            .expect("pool");
        let two_trips = TenantPool::connect(
            env.runtime_config()
                .with_max_connections(1)
                .with_begin_mode(BeginMode::TwoRoundTrips),
        )
        .await
        .expect("pool");
        let unchecked = TenantPool::connect(
            env.runtime_config()
                .with_max_connections(1)
                .with_commit_check(false),
        )
        .await
        .expect("pool");
        let plain = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(env.options().username(env.runtime.as_str()))
            .await
            .expect("plain pool");
        Some((env, one_message, two_trips, unchecked, plain, ids))
    })?;
    Some(Setup {
        one_message,
        two_trips,
        unchecked,
        plain,
        ids,
        _env: env,
        rt,
    })
}

async fn lookup_in_tx(pool: &TenantPool, tenant: &tenancy_core::TenantId, id: i64) {
    let mut tx = pool.begin(tenant).await.expect("begin");
    let row: (String, String) = sqlx::query_as("SELECT title, body FROM records WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .expect("lookup");
    tx.commit().await.expect("commit");
    std::hint::black_box(row);
}

fn bench(c: &mut Criterion) {
    let Some(s) = setup() else {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("skipping tenant_tx benches: PostgreSQL unreachable");
        }
        return;
    };
    let tenants: Vec<(tenancy_core::TenantId, i64)> = s
        .ids
        .iter()
        .map(|(t, id)| (common::tenant(t), *id))
        .collect();

    let run = |pool: &TenantPool, iters: u64| -> Duration {
        s.rt.block_on(async {
            let start = Instant::now();
            for i in 0..iters {
                let (t, id) = &tenants[i as usize % tenants.len()];
                lookup_in_tx(pool, t, *id).await;
            }
            start.elapsed()
        })
    };

    let mut g = c.benchmark_group("point_lookup");
    g.bench_function("tenant_tx", |b| {
        b.iter_custom(|iters| run(&s.one_message, iters));
    });
    g.bench_function("autocommit_no_rls", |b| {
        b.iter_custom(|iters| {
            s.rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let (owner, id) = &s.ids[i as usize % s.ids.len()];
                    let row: (String, String) = sqlx::query_as(
                        "SELECT title, body FROM records_plain WHERE owner_id = $1 AND id = $2",
                    )
                    .bind(owner)
                    .bind(id)
                    .fetch_one(&s.plain)
                    .await
                    .expect("lookup");
                    std::hint::black_box(row);
                }
                start.elapsed()
            })
        });
    });
    g.finish();

    let mut g = c.benchmark_group("begin_form");
    g.bench_function("one_message", |b| {
        b.iter_custom(|iters| run(&s.one_message, iters));
    });
    g.bench_function("two_round_trips", |b| {
        b.iter_custom(|iters| run(&s.two_trips, iters));
    });
    g.finish();

    // The CPU is shared with other work, and load drifts between criterion's groups; as a
    // check on the ratios, time the two sides of each comparison interleaved, one operation
    // each in turn, and compare medians.
    s.rt.block_on(async {
        let mut lookups = (Vec::new(), Vec::new());
        let mut forms = (Vec::new(), Vec::new());
        let mut checks = (Vec::new(), Vec::new());
        for i in 0..4000usize {
            let (t, id) = &tenants[i % tenants.len()];
            let (owner, pid) = &s.ids[i % s.ids.len()];
            let start = Instant::now();
            lookup_in_tx(&s.one_message, t, *id).await;
            lookups.0.push(start.elapsed());
            let start = Instant::now();
            let row: (String, String) = sqlx::query_as(
                "SELECT title, body FROM records_plain WHERE owner_id = $1 AND id = $2",
            )
            .bind(owner)
            .bind(pid)
            .fetch_one(&s.plain)
            .await
            .expect("lookup");
            std::hint::black_box(row);
            lookups.1.push(start.elapsed());
            let start = Instant::now();
            lookup_in_tx(&s.two_trips, t, *id).await;
            forms.1.push(start.elapsed());
            forms.0.push(lookups.0[i]);
            let start = Instant::now();
            lookup_in_tx(&s.unchecked, t, *id).await;
            checks.1.push(start.elapsed());
            checks.0.push(lookups.0[i]);
        }
        report("point lookup", "tenant_tx", "autocommit_no_rls", lookups);
        report("begin form", "one_message", "two_round_trips", forms);
        report("commit check", "checked", "unchecked", checks);
    });

    s.rt.block_on(async {
        s.one_message.close().await;
        s.two_trips.close().await;
        s.unchecked.close().await;
        s.plain.close().await;
    });
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[allow(clippy::print_stdout)]
fn report(what: &str, a: &str, b: &str, (xs, ys): (Vec<Duration>, Vec<Duration>)) {
    let n = xs.len();
    let (ma, mb) = (median(xs), median(ys));
    println!(
        "interleaved {what} ({n} pairs): {a} median {:.1} µs, {b} median {:.1} µs, ratio {a}/{b} = {:.2}",
        ma.as_secs_f64() * 1e6,
        mb.as_secs_f64() * 1e6,
        ma.as_secs_f64() / mb.as_secs_f64()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
