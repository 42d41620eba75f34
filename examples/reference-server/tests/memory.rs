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
