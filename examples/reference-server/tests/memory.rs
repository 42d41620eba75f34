//! The contract over real HTTP on loopback, memory mode (JSONL audit file).

mod common;

use common::{Harness, scenario};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_in_memory_mode() {
    let h = Harness::memory().await;
    scenario::auth(&h).await;
    scenario::records(&h).await;
    scenario::permissions(&h).await;
    scenario::admin(&h).await;
    scenario::limits(&h).await;
    scenario::bodies(&h).await;
    scenario::audit_trail(&h).await;

    // Alter one stored acme event in the file, keeping the line well-formed.
    let path = h.app().config().audit_file();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let target = lines
        .iter()
        .position(|l| l.contains("\"tenant\":\"acme\"") && l.contains("records.create"))
        .expect("an acme records.create line");
    lines[target] = lines[target].replacen("records.create", "records.cleate", 1);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    scenario::tampered(&h).await;
    h.stop_after_tamper().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_audit_queue_into_the_file() {
    let h = Harness::memory().await;
    let alice = h.login("acme", "alice").await;
    h.create_records(&alice, 20).await;
    let path = h.app().config().audit_file();
    let _dir = h.stop().await;
    let text = std::fs::read_to_string(&path).unwrap();
    let creates = text
        .lines()
        .filter(|l| l.contains("records.create"))
        .count();
    assert_eq!(
        creates, 20,
        "every accepted event is in the file after shutdown"
    );
}

/// Logins are limited per client address (`TENANCY_LOGIN_PER_MINUTE`); probes are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_limited_per_address_and_probes_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::memory_config(dir.path());
    config.login_per_minute = 3;
    let h = Harness::start(config, dir).await;
    let guess = serde_json::json!({"tenant_id": "acme", "username": "alice", "password": "guess"});
    for _ in 0..3 {
        let r = h.post("/v1/auth/login", None, &guess).await;
        assert_eq!(r.status, 401, "{}", r.text);
        assert!(
            r.header("x-ratelimit-remaining").is_some(),
            "{:?}",
            r.headers
        );
        // A limit per client, named for what it counts: there is no user before a login.
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"client-60\";q=3;w=60"),
            "{:?}",
            r.headers
        );
    }
    let r = h.post("/v1/auth/login", None, &guess).await;
    assert_eq!(r.status, 429, "{}", r.text);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // The right password waits too: the limit is per address, not per outcome.
    let right =
        serde_json::json!({"tenant_id": "acme", "username": "alice", "password": "password"});
    assert_eq!(h.post("/v1/auth/login", None, &right).await.status, 429);
    for _ in 0..10 {
        let r = h.send("GET", "/health", None, None, &[]).await;
        assert_eq!(r.status, 200);
        assert!(r.header("x-ratelimit-limit").is_none(), "{:?}", r.headers);
    }
    h.stop().await;
}

/// A tenant that does not exist is refused after the same password hashing as a wrong
/// password, so the answer's timing does not tell which tenants exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_tenant_costs_a_password_check_too() {
    let h = Harness::memory().await;
    let users = h.app().users().clone();
    for tenant in ["acme", "nosuch", "Not A Tenant"] {
        let before = users.password_checks();
        let body =
            serde_json::json!({"tenant_id": tenant, "username": "alice", "password": "guess"});
        assert_eq!(h.post("/v1/auth/login", None, &body).await.status, 401);
        assert_eq!(users.password_checks() - before, 1, "{tenant}");
    }
    h.stop().await;
}

/// A refresh token anyone can write, naming a tenant, is refused without an event in that
/// tenant's trail (strangers must not fill it); the refusal goes to the platform's. A spent
/// token of a real session presented again is the tenant's event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_refresh_tokens_stay_out_of_the_named_tenants_trail() {
    let h = Harness::memory().await;
    let alice = h.login("acme", "alice").await;
    let refresh = async |token: &str| {
        h.post(
            "/v1/auth/refresh",
            None,
            &serde_json::json!({"refresh_token": token}),
        )
        .await
    };
    let refusals = |actions: Vec<(String, String)>| {
        actions
            .into_iter()
            .filter(|(a, o)| a == "auth.refresh" && o == "denied")
            .count()
    };
    let before = refusals(h.actions(&alice).await);
    for forged in [
        "rt2.acme.AAAAAAAAAAAAAAAAAAAAAA.x.y",
        "rt1.acme.AAAAAAAAAAAAAAAAAAAAAA.x",
    ] {
        common::assert_problem(&refresh(forged).await, 401);
    }
    assert_eq!(
        refusals(h.actions(&alice).await),
        before,
        "forged tokens in acme's trail"
    );
    let path = h.app().config().audit_file();

    // A real session's spent token, presented again: acme's event.
    let pair = h.login_pair("acme", "bob").await;
    let spent = pair["refresh_token"].as_str().unwrap().to_owned();
    let first = refresh(&spent).await;
    assert_eq!(first.status, 200, "{}", first.text);
    common::assert_problem(&refresh(&spent).await, 401);
    assert_eq!(refusals(h.actions(&alice).await), before + 1);
    let _dir = h.stop().await;
    let text = std::fs::read_to_string(&path).unwrap();
    let platform_refusals = text
        .lines()
        .filter(|l| {
            l.contains("\"tenant\":\"platform\"")
                && l.contains("auth.refresh")
                && l.contains("refresh_token_refused")
        })
        .count();
    assert_eq!(
        platform_refusals, 2,
        "the forged tokens' refusals in the platform's trail"
    );
}
