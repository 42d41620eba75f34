//! Backends killed under running servers (dedicated instances started here, never the
//! shared ones): `/health` turns 503 naming the component, requests follow the configured
//! failure policy, and everything recovers when the service returns, with no audit event
//! lost. Each case runs against the axum and the actix-web server at once, and their
//! answers are compared.

mod common;

use std::time::Duration;

use common::services::{PgCluster, RedisInstance};
use common::{Entry, Flavor, Harness, Reply, assert_problem, assert_same, config, entry};
use tenancy_core::FailurePolicy;

/// How long a component's state may take to show in `/health` (checks run every second).
const SETTLE: Duration = Duration::from_secs(20);

fn down(r: &Reply, component: &str) -> bool {
    r.body["components"][component]["status"] == "down"
}

/// A 503 problem that names no internal cause.
#[track_caller]
fn opaque_503(who: &str, r: &Reply) {
    assert_problem(who, r, 503);
    let detail = r.body["detail"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    for leak in [
        "redis",
        "postgres",
        "127.0.0.1",
        "connection",
        "refused",
        "pool",
    ] {
        assert!(
            !detail.contains(leak),
            "{who}: the 503 names {leak:?}: {}",
            r.text
        );
    }
}

/// Polls the tenant's audit trail (as `admin`) until every id in `ids` shows in it.
async fn wait_for_events(h: &Harness, admin: &str, ids: &[String]) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let r = h.get("/v1/tenant/audit?limit=500", Some(admin)).await;
        let missing: Vec<&String> = ids
            .iter()
            .filter(|id| !r.text.contains(id.as_str()))
            .collect();
        if r.status == 200 && missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{} events missing {missing:?}: {}",
                r.status, r.text
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn verify_valid(h: &Harness, root: &str, tenant: &str) {
    let r = h
        .get(
            &format!("/v1/admin/audit/verify?tenant={tenant}"),
            Some(root),
        )
        .await;
    assert_eq!(r.status, 200, "{}: {}", h.flavor.name(), r.text);
    assert_eq!(
        r.body["valid"],
        true,
        "{} {tenant}: {}",
        h.flavor.name(),
        r.text
    );
}

struct Side {
    h: Harness,
    session: String,
    minted: String,
    root: String,
    log: Vec<Entry>,
    outage_ids: Vec<String>,
}

impl Side {
    fn who(&self) -> String {
        self.h.flavor.name().to_owned()
    }

    async fn step(
        &mut self,
        case: &str,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        id: Option<&str>,
    ) -> Reply {
        let headers: Vec<(&str, &str)> = id.map(|i| vec![("x-request-id", i)]).unwrap_or_default();
        let r = self.h.send(method, path, token, body, &headers).await;
        self.log.push(entry(case, &r, id));
        r
    }
}

async fn side(h: Harness) -> Side {
    let (session, _) = h.login("acme", "bob").await;
    let (root, _) = h.login("platform", "root").await;
    let minted = h.mint("acme", "bob", "user", &["records:read", "records:write"]);
    Side {
        h,
        session,
        minted,
        root,
        log: Vec::new(),
        outage_ids: Vec::new(),
    }
}

const RECORD: &str = r#"{"title":"during","body":"the outage"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_both_servers() {
    let Some(mut redis) = RedisInstance::start() else {
        return;
    };
    let mut sides = Vec::new();
    let mut dbs = Vec::new();
    for policy in [
        FailurePolicy::Local,
        FailurePolicy::FailClosed,
        FailurePolicy::FailOpen,
    ] {
        for flavor in Flavor::BOTH {
            let Some(db) = tenancy_tests::postgres().await else {
                return;
            };
            let dir = tempfile::tempdir().unwrap();
            let c = config(dir.path(), |c| {
                c.database_url = Some(db.url().to_owned());
                c.redis_url = Some(redis.url());
                c.rate_limit_failure = policy;
                c.health_interval = Duration::from_secs(1);
            });
            sides.push((policy, side(Harness::start(flavor, c, dir).await).await));
            dbs.push(db);
        }
    }
    for (_, s) in &mut sides {
        let token = s.session.clone();
        let r = s
            .step("before", "GET", "/v1/me", Some(&token), None, None)
            .await;
        assert_eq!(r.status, 200, "{}: {}", s.who(), r.text);
    }

    redis.kill();
    for (policy, s) in &mut sides {
        let who = format!("{} {policy:?}", s.who());
        let health = s.h.health_until(503, SETTLE).await;
        assert_eq!(health.status, 503, "{who}: {}", health.text);
        assert_eq!(health.body["status"], "degraded", "{who}");
        assert!(
            down(&health, "redis"),
            "{who}: redis not named down: {}",
            health.text
        );
        s.log.push(entry("health during", &health, None));

        // The limiter's policy decides for tokens that need no session.
        let minted = s.minted.clone();
        let id = format!("redis-outage-{}-{policy:?}-1", s.who()).to_ascii_lowercase();
        let me = s
            .step(
                "minted token during",
                "GET",
                "/v1/me",
                Some(&minted),
                None,
                None,
            )
            .await;
        let create = s
            .step(
                "write during",
                "POST",
                "/v1/records",
                Some(&minted),
                Some(RECORD),
                Some(&id),
            )
            .await;
        match policy {
            FailurePolicy::FailClosed => {
                opaque_503(&who, &me);
                opaque_503(&who, &create);
            }
            _ => {
                assert_eq!(me.status, 200, "{who}: {}", me.text);
                // Local: decided by the in-process limiter, with its headers.
                assert!(
                    *policy != FailurePolicy::Local || me.header("x-ratelimit-limit").is_some(),
                    "{who}: {:?}",
                    me.headers
                );
                assert_eq!(create.status, 201, "{who}: {}", create.text);
                s.outage_ids.push(id);
            }
        }
        // Sessions live in Redis: a session token cannot be checked, a login cannot start one.
        let session = s.session.clone();
        let r = s
            .step(
                "session token during",
                "GET",
                "/v1/me",
                Some(&session),
                None,
                None,
            )
            .await;
        opaque_503(&who, &r);
        let r = s
            .step(
                "login during",
                "POST",
                "/v1/auth/login",
                None,
                Some(r#"{"tenant_id":"acme","username":"alice","password":"password"}"#),
                Some("login-during-outage"),
            )
            .await;
        opaque_503(&who, &r);
        // An admin limits change (a super admin is never limited) needs the limiter to reset
        // the tenant's state: refused before anything changes, so the tenant keeps its limits.
        let admin =
            s.h.mint("platform", "root", "super_admin", &["tenants:admin"]);
        let r = s
            .step(
                "limits change during",
                "PUT",
                "/v1/admin/tenants/acme/limits",
                Some(&admin),
                Some(r#"{"tenant_per_hour":7777}"#),
                None,
            )
            .await;
        opaque_503(&who, &r);
        let r = s
            .step(
                "limits after the refused change",
                "GET",
                "/v1/admin/tenants/acme",
                Some(&admin),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{who}: {}", r.text);
        assert_ne!(
            r.body["limits"]["tenant"]["limit"], 7777,
            "{who}: {}",
            r.text
        );
    }

    redis.resume();
    for (policy, s) in &mut sides {
        let who = format!("{} {policy:?}", s.who());
        let health = s.h.health_until(200, SETTLE).await;
        assert_eq!(health.status, 200, "{who}: {}", health.text);
        s.log.push(entry("health after", &health, None));
        // The session outlived the outage (the server kept its data on disk).
        let session = s.session.clone();
        let r = s
            .step(
                "session token after",
                "GET",
                "/v1/me",
                Some(&session),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{who}: {}", r.text);
        let minted = s.minted.clone();
        let r = s
            .step(
                "write after",
                "POST",
                "/v1/records",
                Some(&minted),
                Some(RECORD),
                None,
            )
            .await;
        assert_eq!(r.status, 201, "{who}: {}", r.text);
        let (alice, _) = s.h.login("acme", "alice").await;
        wait_for_events(&s.h, &alice, &s.outage_ids)
            .await
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        let root = s.root.clone();
        verify_valid(&s.h, &root, "acme").await;
        // Where the login reached its handler (the limiter did not fail closed first), the
        // session store's outage left a trace: `auth.login`, outcome `error`, in the
        // platform's trail.
        if *policy != FailurePolicy::FailClosed {
            wait_for_events(&s.h, &root, &["login-during-outage".to_owned()])
                .await
                .unwrap_or_else(|e| panic!("{who}: the refused login was not audited: {e}"));
        }
    }

    let mut by_policy: Vec<(FailurePolicy, Side)> = sides;
    while let (Some((p2, b)), Some((p1, a))) = (by_policy.pop(), by_policy.pop()) {
        assert_eq!(p1, p2);
        assert_same(
            (&format!("{} {p1:?}", a.who()), &a.log),
            (&format!("{} {p2:?}", b.who()), &b.log),
        );
        let (mut a, mut b) = (a, b);
        assert!(a.h.stop().await && b.h.stop().await, "clean shutdown");
    }
    drop(dbs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_killed_under_both_servers() {
    let Some(cluster) = PgCluster::start() else {
        return;
    };
    let Some(redis) = tenancy_tests::redis().await else {
        return;
    };
    let mut sides = Vec::new();
    for flavor in Flavor::BOTH {
        let name = format!("contract_{}", flavor.name());
        {
            use sqlx::Connection as _;
            let mut admin = sqlx::PgConnection::connect(&cluster.url())
                .await
                .expect("connect");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .expect("create database");
            admin.close().await.ok();
        }
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), |c| {
            c.database_url = Some(tenancy_tests::with_database(&cluster.url(), &name));
            c.redis_url = Some(redis.url().to_owned());
            c.redis_namespace = format!("{}{}", redis.prefix(), flavor.name());
            c.health_interval = Duration::from_secs(1);
        });
        sides.push(side(Harness::start(flavor, c, dir).await).await);
    }
    for s in &mut sides {
        let token = s.session.clone();
        let r = s
            .step(
                "write before",
                "POST",
                "/v1/records",
                Some(&token),
                Some(RECORD),
                None,
            )
            .await;
        assert_eq!(r.status, 201, "{}: {}", s.who(), r.text);
    }

    cluster.kill();
    for s in &mut sides {
        let who = s.who();
        let health = s.h.health_until(503, SETTLE).await;
        assert_eq!(health.status, 503, "{who}: {}", health.text);
        let components = health.body["components"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let named: Vec<&String> = components
            .iter()
            .filter(|(_, v)| v["status"] == "down")
            .map(|(k, _)| k)
            .collect();
        assert!(
            named.iter().any(|k| k.as_str() == "audit"),
            "{who}: audit not named: {}",
            health.text
        );
        assert!(
            named
                .iter()
                .any(|k| k.contains("database") || k.contains("postgres")),
            "{who}: the database not named: {}",
            health.text
        );
        s.log.push(entry("health during", &health, None));
        // Tenant requests need the tenant directory and the records: refused, opaquely.
        let token = s.session.clone();
        let r = s
            .step(
                "read during",
                "GET",
                "/v1/records",
                Some(&token),
                None,
                None,
            )
            .await;
        opaque_503(&who, &r);
        let r = s
            .step(
                "write during",
                "POST",
                "/v1/records",
                Some(&token),
                Some(RECORD),
                None,
            )
            .await;
        opaque_503(&who, &r);
        // Denials are still audited: the events wait in the spool.
        for i in 0..5 {
            let id = format!("pg-outage-{who}-{i}");
            let r = s
                .step(
                    "denied during",
                    "GET",
                    "/v1/me",
                    Some("not.a.jwt"),
                    None,
                    Some(&id),
                )
                .await;
            assert_problem(&who, &r, 401);
            s.outage_ids.push(id);
        }
    }

    cluster.resume();
    for s in &mut sides {
        let who = s.who();
        let health = s.h.health_until(200, SETTLE).await;
        assert_eq!(health.status, 200, "{who}: {}", health.text);
        s.log.push(entry("health after", &health, None));
        let token = s.session.clone();
        let r = s
            .step("read after", "GET", "/v1/records", Some(&token), None, None)
            .await;
        assert_eq!(r.status, 200, "{who}: {}", r.text);
        assert!(
            r.text.contains("the outage"),
            "{who}: the record from before: {}",
            r.text
        );
        let r = s
            .step(
                "write after",
                "POST",
                "/v1/records",
                Some(&token),
                Some(RECORD),
                None,
            )
            .await;
        assert_eq!(r.status, 201, "{who}: {}", r.text);
        // Every denial made during the outage reached the platform trail.
        let root = s.root.clone();
        wait_for_events(&s.h, &root, &s.outage_ids)
            .await
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        verify_valid(&s.h, &root, "platform").await;
        verify_valid(&s.h, &root, "acme").await;
    }
    let (mut b, mut a) = (sides.pop().unwrap(), sides.pop().unwrap());
    assert_same(("axum", &a.log), ("actix", &b.log));
    assert!(a.h.stop().await, "axum: clean shutdown");
    assert!(b.h.stop().await, "actix: clean shutdown");
}
