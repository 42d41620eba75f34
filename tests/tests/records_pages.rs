//! `GET /v1/records` a page at a time: newest first, `next_before` leads to the next page
//! and is `null` on the last, nothing skipped or repeated, and a bad `limit` or cursor is a
//! 400; on both servers, in memory and with PostgreSQL.

mod common;

use common::{Flavor, Harness, config};
use serde_json::json;

async fn pages(h: &Harness) {
    let who = h.flavor.name();
    // A tenant of its own, so that the list holds only what this test creates.
    let (root, _) = h.login("platform", "root").await;
    let made = h
        .send(
            "PUT",
            "/v1/admin/tenants/pages",
            Some(&root),
            Some(r#"{"tier":"premium"}"#),
            &[],
        )
        .await;
    assert_eq!(made.status, 201, "{who}: {}", made.text);
    let token = h.mint("pages", "pat", "user", &["records:read", "records:write"]);
    let mut created = Vec::new();
    for i in 0..5 {
        let r = h
            .post(
                "/v1/records",
                Some(&token),
                &json!({"title": format!("p{i}"), "body": ""}),
            )
            .await;
        assert_eq!(r.status, 201, "{who}: {}", r.text);
        created.push(r.body["id"].as_str().unwrap().to_owned());
    }

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut path = "/v1/records?limit=2".to_owned();
    loop {
        let r = h.get(&path, Some(&token)).await;
        assert_eq!(r.status, 200, "{who} {path}: {}", r.text);
        let records = r.body["records"].as_array().unwrap();
        sizes.push(records.len());
        seen.extend(records.iter().map(|x| x["id"].as_str().unwrap().to_owned()));
        match r.body["next_before"].as_str() {
            Some(next) => path = format!("/v1/records?limit=2&before={next}"),
            None => {
                assert!(r.body["next_before"].is_null(), "{who}: {}", r.text);
                break;
            }
        }
        assert!(sizes.len() < 10, "{who}: the pages never end");
    }
    assert_eq!(sizes, [2, 2, 1], "{who}");
    // Newest first: the reverse of the order they were created in. (PostgreSQL stamps each
    // record with its transaction's start; these were created one after another.)
    created.reverse();
    assert_eq!(seen, created, "{who}");

    for bad in [
        "/v1/records?limit=0",
        "/v1/records?limit=1001",
        "/v1/records?before=nonsense",
        "/v1/records?before=12-zz",
        // Microseconds whose nanoseconds overflow an i128, with a well-formed id.
        "/v1/records?before=999999999999999999999999999999999999-0123456789abcdef0123456789abcdef",
        "/v1/records?before=99999999999999999999-0123456789abcdef0123456789abcdef",
    ] {
        let r = h.get(bad, Some(&token)).await;
        assert_eq!(r.status, 400, "{who} {bad}: {}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_in_memory_on_both_servers() {
    for flavor in [Flavor::Axum, Flavor::Actix] {
        let mut h = Harness::memory(flavor).await;
        pages(&h).await;
        assert!(h.stop().await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_with_postgres_on_both_servers() {
    for flavor in [Flavor::Axum, Flavor::Actix] {
        let Some(db) = tenancy_tests::postgres().await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), |c| c.database_url = Some(db.url().to_owned()));
        let mut h = Harness::start(flavor, c, dir).await;
        pages(&h).await;
        assert!(h.stop().await);
        drop(db);
    }
}
