//! Tenant isolation against the real PostgreSQL: three seeded tenants, every kind of
//! statement, no-context failures, connection hand-over after panics, cancellations, errors
//! and commits, hostile tenant ids, and what the runtime role cannot do.

mod common;

use std::time::Duration;

use common::{TestEnv, assert_42501, seed, sqlstate, tenant};
use tenancy_core::TenantId;
use tenancy_db::{BeginMode, TenantPool};

async fn three_tenants(env: &TestEnv, pool: &TenantPool) -> (TenantId, TenantId, TenantId) {
    let _ = env;
    let (a, b, c) = (tenant("acme"), tenant("globex"), tenant("initech"));
    seed(pool, &[&a, &b, &c], 5).await;
    (a, b, c)
}

/// Rows per tenant as the database owner sees them (bypassing nothing: the owner is filtered
/// too, so count as superuser).
async fn counts(env: &TestEnv) -> Vec<(String, i64)> {
    let mut admin = env.admin().await;
    sqlx::query_as("SELECT tenant_id, count(*) FROM records GROUP BY 1 ORDER BY 1")
        .fetch_all(&mut admin)
        .await
        .expect("counts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_from_a_never_touch_b() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let pool = env.runtime_pool(4).await;
    let (a, b, c) = three_tenants(&env, &pool).await;
    let before = counts(&env).await;
    assert_eq!(
        before,
        vec![
            ("acme".into(), 5),
            ("globex".into(), 5),
            ("initech".into(), 5)
        ]
    );
    let b_id: i64 = {
        let mut tx = pool.begin(&b).await.unwrap();
        sqlx::query_scalar("SELECT min(id) FROM records")
            .fetch_one(&mut *tx)
            .await
            .unwrap()
    };

    let mut tx = pool.begin(&a).await.unwrap();
    // Reads: only A's rows, whatever the filter says.
    let tenants: Vec<String> = sqlx::query_scalar("SELECT DISTINCT tenant_id FROM records")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(tenants, vec!["acme".to_owned()]);
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM records WHERE tenant_id IN ('globex', 'initech') OR true",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(n, 5, "an explicit filter for B must not widen A's view");
    // Point lookup of B's id: absent.
    let found: Option<String> =
        sqlx::query_scalar("SELECT title FROM records WHERE id = $1 AND tenant_id = 'globex'")
            .bind(b_id)
            .fetch_optional(&mut *tx)
            .await
            .unwrap();
    assert_eq!(found, None, "point lookup of B's row from A");
    // Join: comments join records only within A.
    let joined: Vec<(String, String)> = sqlx::query_as(
        "SELECT r.tenant_id, c.tenant_id FROM records r JOIN comments c ON c.record_id = r.id",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(joined.len(), 5);
    assert!(
        joined.iter().all(|(r, c)| r == "acme" && c == "acme"),
        "{joined:?}"
    );
    // CTE, including a data-modifying one.
    let cte: i64 = sqlx::query_scalar(
        "WITH mine AS (SELECT * FROM records), touched AS (
             UPDATE records SET body = body || '!' WHERE tenant_id <> 'acme' RETURNING id)
         SELECT (SELECT count(*) FROM mine) * 100 + (SELECT count(*) FROM touched)",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(cte, 500, "CTE saw 5 rows of A and updated none of B's");
    // UPDATE and DELETE aimed at B: zero rows; RETURNING shows nothing of B.
    let updated: Vec<String> =
        sqlx::query_scalar("UPDATE records SET title = 'pwned' WHERE id = $1 RETURNING tenant_id")
            .bind(b_id)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert!(updated.is_empty(), "UPDATE reached B's row");
    let deleted = sqlx::query("DELETE FROM records WHERE tenant_id = 'globex'")
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(deleted, 0, "DELETE reached B's rows");
    // Unfiltered UPDATE ... RETURNING: A's rows only.
    let returned: Vec<String> =
        sqlx::query_scalar("UPDATE records SET body = body RETURNING tenant_id")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert_eq!(returned, vec!["acme".to_owned(); 5]);
    // ON CONFLICT on B's key from A: inserting tenant_id = B is refused outright.
    let r = sqlx::query(
        "INSERT INTO records (tenant_id, title, body) VALUES ('globex', 'globex-title-0', 'x')
         ON CONFLICT (tenant_id, title) DO UPDATE SET body = 'overwritten'",
    )
    .execute(&mut *tx)
    .await;
    assert_42501(r, "ON CONFLICT into B");
    tx.rollback().await.unwrap();

    // ON CONFLICT on A's own key with A's default tenant: updates A only.
    let mut tx = pool.begin(&a).await.unwrap();
    let up: Vec<String> = sqlx::query_scalar(
        "INSERT INTO records (title, body) VALUES ('acme-title-0', 'x')
         ON CONFLICT (tenant_id, title) DO UPDATE SET body = 'upserted' RETURNING tenant_id",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(up, vec!["acme".to_owned()]);
    // A title B already uses does not conflict for A (uniqueness is per tenant).
    sqlx::query("INSERT INTO records (title, body) VALUES ('globex-title-0', 'mine')")
        .execute(&mut *tx)
        .await
        .expect("per-tenant uniqueness");
    // Inserting into B, or moving a row into B: 42501.
    let r = sqlx::query("INSERT INTO records (tenant_id, title, body) VALUES ('globex', 't', 'b')")
        .execute(&mut *tx)
        .await;
    assert_42501(r, "INSERT into B from A");
    tx.rollback().await.unwrap();
    let mut tx = pool.begin(&a).await.unwrap();
    let r = sqlx::query("UPDATE records SET tenant_id = 'globex'")
        .execute(&mut *tx)
        .await;
    assert_42501(r, "moving A's rows into B");
    tx.rollback().await.unwrap();
    // A comment of A pointing at B's record: the composite foreign key refuses it.
    let mut tx = pool.begin(&a).await.unwrap();
    let r = sqlx::query("INSERT INTO comments (record_id, text) VALUES ($1, 'x')")
        .bind(b_id)
        .execute(&mut *tx)
        .await;
    let e = r.expect_err("comment of A on B's record");
    assert_eq!(sqlstate(&e).as_deref(), Some("23503"), "{e}");
    tx.rollback().await.unwrap();

    let mut after = counts(&env).await;
    after.sort();
    assert_eq!(after, before, "B's and C's rows unchanged");
    let mut admin = env.admin().await;
    let pwned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM records WHERE title = 'pwned' OR body LIKE '%!' OR body = 'overwritten'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(pwned, 0);
    let _ = c;
    pool.close().await;
}

#[tokio::test]
async fn no_tenant_context_fails_closed_on_fresh_and_reused_connections() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let pool = env.runtime_pool(1).await;
    let (a, _, _) = three_tenants(&env, &pool).await;
    pool.close().await;

    for mode in [BeginMode::OneMessage, BeginMode::TwoRoundTrips] {
        // A fresh pool of one connection.
        let pool = TenantPool::connect(
            env.runtime_config()
                .with_max_connections(1)
                .with_begin_mode(mode),
        )
        .await
        .unwrap();
        let mut tx = pool.begin_unscoped().await.unwrap();
        let fresh_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_42501(
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM records")
                .fetch_one(&mut *tx)
                .await,
            "fresh connection without tenant",
        );
        drop(tx);

        // The same connection after serving tenant A.
        let mut tx = pool.begin(&a).await.unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(pid, fresh_pid, "pool of one: same backend");
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM records")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, 5);
        tx.commit().await.unwrap();

        let mut tx = pool.begin_unscoped().await.unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(pid, fresh_pid, "pool of one: same backend after A");
        let setting: Option<String> =
            sqlx::query_scalar("SELECT current_setting('app.tenant_id', true)")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        assert!(
            setting.unwrap_or_default().is_empty(),
            "tenant setting survived the commit"
        );
        assert_42501(
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM records")
                .fetch_one(&mut *tx)
                .await,
            "reused connection without tenant",
        );
        drop(tx);
        // Outside any transaction (autocommit) on the same connection: also refused.
        let mut tx = pool.begin_unscoped().await.unwrap();
        sqlx::query("COMMIT").execute(&mut *tx).await.unwrap();
        assert_42501(
            sqlx::query("INSERT INTO records (title, body) VALUES ('x', 'y')")
                .execute(&mut *tx)
                .await,
            "autocommit insert without tenant",
        );
        drop(tx);
        pool.close().await;
    }
}

/// The tenant setting and backend pid seen by the next borrower of a pool of one.
async fn next_borrower(pool: &TenantPool) -> (i32, String) {
    let mut tx = pool.begin_unscoped().await.unwrap();
    let row: (i32, Option<String>) =
        sqlx::query_as("SELECT pg_backend_pid(), current_setting('app.tenant_id', true)")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_42501(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM records")
            .fetch_one(&mut *tx)
            .await,
        "next borrower without tenant",
    );
    (row.0, row.1.unwrap_or_default())
}

async fn pid_of(pool: &TenantPool, t: &TenantId) -> i32 {
    let mut tx = pool.begin(t).await.unwrap();
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_borrower_carries_no_tenant_after_panic_cancel_error_commit() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let pool = env.runtime_pool(1).await;
    let (a, _, _) = three_tenants(&env, &pool).await;
    let pid = pid_of(&pool, &a).await;

    // Panic inside scope.
    let p = pool.clone();
    let t = a.clone();
    let joined = tokio::spawn(async move {
        p.scope(&t, async |tx| {
            sqlx::query("UPDATE records SET body = 'during panic'")
                .execute(&mut **tx)
                .await?;
            if tx.tenant().as_str() == "acme" {
                panic!("injected panic inside scope");
            }
            Ok::<_, tenancy_db::Error>(())
        })
        .await
    })
    .await;
    assert!(joined.unwrap_err().is_panic());
    let (p2, setting) = next_borrower(&pool).await;
    assert_eq!((p2, setting.as_str()), (pid, ""), "after panic");
    let mut admin = env.admin().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM records WHERE body = 'during panic'")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(n, 0, "the panicking scope's write was rolled back");

    // A cancelled query (the future dropped mid-statement).
    let cancelled = tokio::time::timeout(Duration::from_millis(200), async {
        let mut tx = pool.begin(&a).await.unwrap();
        sqlx::query("SELECT pg_sleep(1)").execute(&mut *tx).await
    })
    .await;
    assert!(cancelled.is_err(), "the query should have been cancelled");
    let (p2, setting) = next_borrower(&pool).await;
    assert_eq!((p2, setting.as_str()), (pid, ""), "after cancellation");

    // A SQL error inside scope.
    let r = pool
        .scope(&a, async |tx| {
            sqlx::query("SELECT 1/0").execute(&mut **tx).await?;
            Ok::<_, tenancy_db::Error>(())
        })
        .await;
    assert_eq!(r.unwrap_err().sqlstate().as_deref(), Some("22012"));
    let (p2, setting) = next_borrower(&pool).await;
    assert_eq!((p2, setting.as_str()), (pid, ""), "after SQL error");

    // A commit.
    pool.scope(&a, async |tx| {
        sqlx::query("UPDATE records SET body = 'committed' WHERE title = 'acme-title-0'")
            .execute(&mut **tx)
            .await?;
        Ok::<_, tenancy_db::Error>(())
    })
    .await
    .unwrap();
    let (p2, setting) = next_borrower(&pool).await;
    assert_eq!((p2, setting.as_str()), (pid, ""), "after commit");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM records WHERE body = 'committed'")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(n, 1, "the committed write is there");

    // A TenantTx dropped without commit.
    {
        let mut tx = pool.begin(&a).await.unwrap();
        sqlx::query("DELETE FROM records")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    let (p2, setting) = next_borrower(&pool).await;
    assert_eq!((p2, setting.as_str()), (pid, ""), "after drop");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM records WHERE tenant_id = 'acme'")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(n, 5, "the dropped transaction's delete was rolled back");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_begin_never_lends_an_open_transaction() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let pool = env.runtime_pool(1).await;
    let mut admin = env.admin().await;
    let (a, _, _) = three_tenants(&env, &pool).await;
    // Cancel `begin` at every point of its round trip: dropped after 1, 2, ... polls (each
    // poll after the first follows a wake-up from the socket or the pool), so the cut points do
    // not depend on how fast the machine is. After each, the next borrower of the pool's single
    // connection is outside any transaction and has no tenant.
    let mut cancelled = 0;
    for step in 0..300u64 {
        let polls_allowed = 1 + step % 12;
        // The future lives in this block only: dropping it is the cancellation.
        let finished = {
            let mut fut = std::pin::pin!(pool.begin(&a));
            let mut polls = 0;
            std::future::poll_fn(|cx| {
                polls += 1;
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
                    std::task::Poll::Pending if polls >= polls_allowed => {
                        std::task::Poll::Ready(None)
                    }
                    std::task::Poll::Pending => std::task::Poll::Pending,
                }
            })
            .await
        };
        match finished {
            None => cancelled += 1,
            Some(r) => drop(r.unwrap()),
        }
        // The server's clock before the next transaction begins: a transaction that began
        // later is the borrower's own; one that began earlier was left open by the
        // cancelled `begin` (and the borrower's BEGIN only warned "already in progress").
        let before: time::OffsetDateTime = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&mut admin)
            .await
            .unwrap();
        let mut tx = pool.begin_unscoped().await.unwrap();
        let (setting, began): (Option<String>, time::OffsetDateTime) =
            sqlx::query_as("SELECT current_setting('app.tenant_id', true), now()")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        assert_eq!(
            setting.unwrap_or_default(),
            "",
            "step {step}: tenant lent with the connection"
        );
        assert!(
            began >= before,
            "step {step}: the borrower's transaction began at {began}, before {before}: \
             a transaction left open by the cancelled begin was lent"
        );
        assert_42501(
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM records")
                .fetch_one(&mut *tx)
                .await,
            "borrower after a cancelled begin",
        );
        tx.rollback().await.unwrap();
    }
    assert!(cancelled > 0, "no begin was cancelled");
    pool.close().await;
}

#[tokio::test]
async fn release_guard_closes_connections_carrying_a_session_setting() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let a = tenant("acme");

    // Without the guard, application SQL that sets the tenant for the session leaks it.
    let plain = env.runtime_pool(1).await;
    let mut tx = plain.begin(&a).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', 'acme', false)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (p2, setting) = {
        let mut tx = plain.begin_unscoped().await.unwrap();
        sqlx::query_as::<_, (i32, Option<String>)>(
            "SELECT pg_backend_pid(), current_setting('app.tenant_id', true)",
        )
        .fetch_one(&mut *tx)
        .await
        .unwrap()
    };
    assert_eq!(
        (p2, setting.as_deref()),
        (pid, Some("acme")),
        "the hazard the guard exists for"
    );
    plain.close().await;

    // With the guard, that connection is closed on release and never lent again.
    let guarded = TenantPool::connect(
        env.runtime_config()
            .with_max_connections(1)
            .with_release_guard(true),
    )
    .await
    .unwrap();
    let mut tx = guarded.begin(&a).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', 'acme', false)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (p2, setting) = next_borrower(&guarded).await;
    assert_ne!(p2, pid, "the tainted connection was lent again");
    assert_eq!(setting, "");
    assert_eq!(guarded.metrics().tainted_closed_total, 1);
    // A clean connection is kept.
    let (p3, _) = next_borrower(&guarded).await;
    assert_eq!(p3, p2, "a clean connection was closed");
    assert_eq!(guarded.metrics().tainted_closed_total, 1);
    guarded.close().await;
}

#[tokio::test]
async fn hostile_tenant_ids_never_reach_sql() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let pool = env.runtime_pool(2).await;
    let (a, _, _) = three_tenants(&env, &pool).await;
    let long = "a".repeat(10 * 1024);
    let hostile = [
        "x' OR '1'='1",
        "'; RESET ALL; --",
        "acme\0",
        "\0",
        long.as_str(),
        "acmé",
        "😀",
        "ACME",
        "acme; SET LOCAL app.tenant_id = 'globex'",
        "",
    ];
    for h in hostile {
        // The only way to a TenantTx is a TenantId, and the only way to a TenantId is the
        // checked parse: these never become one.
        assert!(TenantId::parse(h).is_err(), "{h:?} parsed as a tenant id");
    }
    // Defence in depth: even a hostile value placed in the setting by other means (here a
    // bind parameter, so nothing is injected) is refused by the helper, not matched.
    let mut tx = pool.begin_unscoped().await.unwrap();
    for h in [
        "x' OR '1'='1",
        "'; RESET ALL; --",
        long.as_str(),
        "acmé",
        "😀",
    ] {
        sqlx::query("SAVEPOINT s").execute(&mut *tx).await.unwrap();
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(h)
            .execute(&mut *tx)
            .await
            .unwrap();
        assert_42501(
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM records")
                .fetch_one(&mut *tx)
                .await,
            h,
        );
        sqlx::query("ROLLBACK TO SAVEPOINT s")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    drop(tx);
    // Nothing was damaged, and the good tenant still works.
    let mut tx = pool.begin(&a).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM records")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 5);
    drop(tx);
    assert_eq!(counts(&env).await.iter().map(|(_, n)| n).sum::<i64>(), 15);
    pool.close().await;
}

#[tokio::test]
async fn runtime_role_cannot_escape_row_level_security() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let pool = env.runtime_pool(1).await;
    let (a, _, _) = three_tenants(&env, &pool).await;

    let mut tx = pool.begin(&a).await.unwrap();
    // row_security = off: allowed to set, but then any RLS-filtered query errors (42501)
    // instead of returning unfiltered rows.
    sqlx::query("SET LOCAL row_security = off")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_42501(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM records")
            .fetch_one(&mut *tx)
            .await,
        "row_security = off",
    );
    tx.rollback().await.unwrap();

    let attempts = [
        "ALTER TABLE records DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE records NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY tenancy_isolation ON records",
        "TRUNCATE records",
        "TRUNCATE tenancy.sessions",
        "SET ROLE postgres",
        "ALTER ROLE CURRENT_USER BYPASSRLS",
        "CREATE OR REPLACE FUNCTION tenancy.current_tenant_id() RETURNS text LANGUAGE sql AS $$ SELECT 'globex' $$",
        "SELECT * FROM tenancy.tenants",
    ];
    for sql in attempts {
        let mut tx = pool.begin(&a).await.unwrap();
        let r = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await;
        assert_42501(r, sql);
    }
    let owner_sql = format!("SET ROLE \"{}\"", env.owner);
    let mut tx = pool.begin(&a).await.unwrap();
    assert_42501(
        sqlx::raw_sql(sqlx::AssertSqlSafe(owner_sql))
            .execute(&mut *tx)
            .await,
        "SET ROLE owner",
    );
    drop(tx);
    assert_eq!(counts(&env).await.iter().map(|(_, n)| n).sum::<i64>(), 15);
    pool.close().await;
}

/// A pool of one connection as the runtime role, opening transactions in `mode`.
async fn one_connection(env: &TestEnv, mode: BeginMode) -> TenantPool {
    TenantPool::connect(
        env.runtime_config()
            .with_max_connections(1)
            .with_begin_mode(mode),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn both_begin_forms_scope_the_tenant_to_the_transaction() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    for mode in [BeginMode::OneMessage, BeginMode::TwoRoundTrips] {
        let pool = one_connection(&env, mode).await;
        let t = tenant("acme");
        let mut tx = pool.begin(&t).await.unwrap();
        let (setting, local): (String, String) =
            sqlx::query_as("SELECT current_setting('app.tenant_id'), tenancy.current_tenant_id()")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        assert_eq!(
            (setting.as_str(), local.as_str()),
            ("acme", "acme"),
            "{mode:?}"
        );
        tx.commit().await.unwrap();
        let m = pool.metrics();
        assert_eq!((m.max, m.acquired_total), (1, 1), "{mode:?}");
        pool.close().await;
    }
}

/// What outlives a transaction on a pooled connection besides settings: a cursor declared
/// `WITH HOLD` and a temporary table, both filled with one tenant's rows. The next transaction
/// on that connection, of another tenant or of none, finds neither, in both begin forms, also
/// after a rollback brought the dropped temporary table back. Inside the transaction that
/// makes it, a temporary table works as usual.
#[tokio::test]
async fn held_cursors_and_temporary_tables_never_reach_the_next_tenant() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    for mode in [BeginMode::OneMessage, BeginMode::TwoRoundTrips] {
        let pool = one_connection(&env, mode).await;
        let (a, b) = (tenant("acme"), tenant("globex"));
        if mode == BeginMode::OneMessage {
            seed(&pool, &[&a, &b], 2).await;
        }
        let made: Vec<String> = pool
            .scope(&a, async |tx| {
                sqlx::raw_sql(
                    "CREATE TEMP TABLE export_rows AS SELECT tenant_id, title FROM records;
                     DECLARE export CURSOR WITH HOLD FOR SELECT tenant_id, title FROM records",
                )
                .execute(&mut **tx)
                .await?;
                let seen = sqlx::query_scalar("SELECT DISTINCT tenant_id FROM export_rows")
                    .fetch_all(&mut **tx)
                    .await?;
                Ok::<_, tenancy_db::Error>(seen)
            })
            .await
            .unwrap();
        assert_eq!(
            made,
            ["acme"],
            "{mode:?}: a temporary table inside its transaction"
        );

        // Each read in its own transaction: the failed one rolls back, which brings the
        // temporary table dropped at its start back for the next.
        for round in 0..2 {
            for (sql, state) in [
                ("SELECT * FROM export_rows", "42P01"),
                ("FETCH ALL FROM export", "34000"),
            ] {
                let mut tx = pool.begin(&b).await.unwrap();
                let e = sqlx::query(sql)
                    .fetch_all(&mut *tx)
                    .await
                    .expect_err("another tenant read what acme left");
                assert_eq!(
                    sqlstate(&e).as_deref(),
                    Some(state),
                    "{mode:?} {round} {sql}: {e}"
                );
            }
        }
        let mut tx = pool.begin_unscoped().await.unwrap();
        let e = sqlx::query("SELECT * FROM export_rows")
            .fetch_all(&mut *tx)
            .await
            .expect_err("an unscoped transaction read the temporary table");
        assert_eq!(sqlstate(&e).as_deref(), Some("42P01"), "{mode:?}: {e}");
        drop(tx);
        assert_eq!(pool.metrics().max, 1);
        pool.close().await;
    }
}
