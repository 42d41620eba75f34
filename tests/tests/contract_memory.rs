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
