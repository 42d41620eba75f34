//! The reference contract over real HTTP on loopback, in memory mode (JSONL audit file),
//! against the axum server and the actix-web server: one table of cases, each server's
//! answers checked against the contract and against each other's.

mod common;

use common::cases::{contract, run};
use common::{Flavor, Harness, assert_same};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_in_memory_mode_on_both_servers() {
    let steps = contract();
    let (axum, actix) = tokio::join!(
        async {
            let mut h = Harness::memory(Flavor::Axum).await;
            let t = run(&h, &steps).await;
            assert!(h.stop().await, "axum: the audit queue drains at shutdown");
            t
        },
        async {
            let mut h = Harness::memory(Flavor::Actix).await;
            let t = run(&h, &steps).await;
            assert!(h.stop().await, "actix: the audit queue drains at shutdown");
            t
        },
    );
    assert_same(("axum", &axum), ("actix", &actix));
}

/// A graceful shutdown drains every accepted audit event into the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_the_audit_queue_on_both_servers() {
    for flavor in Flavor::BOTH {
        let mut h = Harness::memory(flavor).await;
        let (alice, _) = h.login("acme", "alice").await;
        for i in 0..20 {
            let r = h
                .post(
                    "/v1/records",
                    Some(&alice),
                    &serde_json::json!({"title": format!("r{i}"), "body": ""}),
                )
                .await;
            assert_eq!(r.status, 201, "{}: {}", flavor.name(), r.text);
        }
        let path = h.app().config().audit_file();
        assert!(h.stop().await, "{}: clean shutdown", flavor.name());
        let text = std::fs::read_to_string(&path).unwrap();
        let creates = text
            .lines()
            .filter(|l| l.contains("records.create"))
            .count();
        assert_eq!(
            creates,
            20,
            "{}: every accepted event is in the file",
            flavor.name()
        );
    }
}

/// The comparison itself: a difference in status, a compared header or a problem body fails.
#[test]
#[should_panic(expected = "the servers differ")]
fn transcripts_that_differ_fail() {
    use common::Entry;
    let a = Entry {
        case: "x".into(),
        status: 400,
        headers: Default::default(),
        body: serde_json::json!({"detail": "malformed JSON: EOF"}),
    };
    let mut b = a.clone();
    b.body = serde_json::json!({"detail": "Query deserialize error"});
    assert_same(("a", &[a]), ("b", &[b]));
}

/// Every operation of the OpenAPI document, called on both servers without a token and
/// with one: each answers with a status the document lists, and both answer alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_documented_operation_answers_as_documented_on_both_servers() {
    use tenancy_server::openapi::{OPERATIONS, document};

    let doc = document();
    let mut transcripts = Vec::new();
    for flavor in Flavor::BOTH {
        let mut h = Harness::memory(flavor).await;
        let (alice, _) = h.login("acme", "alice").await;
        let (root, _) = h.login("platform", "root").await;
        let mut log = Vec::new();
        // Logout last: it ends the session the other calls use.
        let mut ops: Vec<_> = OPERATIONS.iter().collect();
        ops.sort_by_key(|(_, path, _, _)| *path == "/v1/auth/logout");
        for (method, template, needs_token, statuses) in ops {
            assert!(
                doc["paths"][*template][*method].is_object(),
                "{method} {template} is in the document"
            );
            let mut path = template
                .replace("{id}", "00000000000000000000000000000000")
                .replace("{tenant}", "globex");
            if path.ends_with("/verify") {
                path.push_str("?tenant=globex");
            }
            let body = match (*method, *template) {
                ("post", "/v1/auth/login") => {
                    Some(r#"{"tenant_id":"acme","username":"alice","password":"password"}"#)
                }
                ("post", "/v1/auth/refresh") => Some(r#"{"refresh_token":"spent"}"#),
                ("post", "/v1/records") => Some(r#"{"title":"t","body":"b"}"#),
                ("put", "/v1/admin/tenants/{tenant}") => Some(r#"{"tier":"premium"}"#),
                ("put", _) => Some(r#"{"user_burst":30}"#),
                ("post", p) if p.ends_with("/bypass") => Some(r#"{"seconds":0}"#),
                _ => None,
            };
            let token = if template.starts_with("/v1/admin") {
                &root
            } else {
                &alice
            };
            let m = method.to_ascii_uppercase();
            let who = format!("{} {m} {path}", flavor.name());
            let anonymous = h.send(&m, &path, None, body, &[]).await;
            if *needs_token {
                assert_eq!(anonymous.status, 401, "{who}: {}", anonymous.text);
            }
            assert!(
                statuses.contains(&anonymous.status),
                "{who} without a token: {} is not documented ({statuses:?}): {}",
                anonymous.status,
                anonymous.text
            );
            let authed = h.send(&m, &path, Some(token), body, &[]).await;
            assert!(
                statuses.contains(&authed.status),
                "{who}: {} is not documented ({statuses:?}): {}",
                authed.status,
                authed.text
            );
            log.push(common::entry(
                &format!("{m} {template} anonymous"),
                &anonymous,
                None,
            ));
            log.push(common::entry(&format!("{m} {template}"), &authed, None));
        }
        assert!(h.stop().await);
        transcripts.push(log);
    }
    assert_same(("axum", &transcripts[0]), ("actix", &transcripts[1]));
}
