//! The OpenAPI document matches what the server does: every documented operation is
//! called, answers with a documented status, and the document lists exactly the
//! operations of `tenancy_server::openapi::OPERATIONS`.

mod common;

use common::Harness;
use serde_json::json;
use tenancy_server::openapi::OPERATIONS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_answers_as_documented() {
    let h = Harness::memory().await;
    let doc = h.send("GET", "/openapi.json", None, None, &[]).await;
    assert_eq!(doc.status, 200);
    let paths = doc.body["paths"].as_object().unwrap();
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented, OPERATIONS.len());

    let root = h.login("platform", "root").await;
    let alice = h.login("acme", "alice").await;
    let created = h
        .post(
            "/v1/records",
            Some(&alice),
            &json!({"title": "walk", "body": "b"}),
        )
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let refresh = h.login_pair("acme", "bob").await["refresh_token"].clone();

    // In the order of OPERATIONS (resume follows suspend), each looked up in the document.
    for &(method, path, _, _) in OPERATIONS {
        let op = &paths[path][method];
        assert!(op.is_object(), "{method} {path} is not in the document");
        let (method, path) = (method.to_owned(), path.to_owned());
        {
            let concrete = path.replace("{id}", &id).replace("{tenant}", "acme");
            let admin = path.starts_with("/v1/admin");
            let token = if admin { root.clone() } else { alice.clone() };
            let secured = !op["security"].as_array().unwrap().is_empty();
            let query = match path.as_str() {
                "/v1/admin/audit/verify" => "?tenant=acme",
                "/v1/tenant/audit" => "?limit=5",
                _ => "",
            };
            let body = match (method.as_str(), path.as_str()) {
                ("post", "/v1/auth/login") => {
                    Some(json!({"tenant_id": "acme", "username": "bob", "password": "password"}))
                }
                ("post", "/v1/auth/refresh") => Some(json!({"refresh_token": refresh})),
                ("post", "/v1/records") => Some(json!({"title": "t", "body": "b"})),
                ("put", "/v1/admin/tenants/{tenant}") => Some(json!({"tier": "standard"})),
                ("put", "/v1/admin/tenants/{tenant}/limits") => Some(json!({"tenant_burst": 100})),
                ("post", "/v1/admin/tenants/{tenant}/bypass") => Some(json!({"seconds": 0})),
                _ => None,
            };
            // Logout last would end alice's session for the rest of the walk: use its own.
            let token = if path == "/v1/auth/logout" {
                h.login("acme", "bob").await
            } else {
                token
            };
            let body_text = body.as_ref().map(ToString::to_string);
            let r = h
                .send(
                    &method.to_uppercase(),
                    &format!("{concrete}{query}"),
                    secured.then_some(token.as_str()),
                    body_text.as_deref(),
                    &[],
                )
                .await;
            let statuses: Vec<String> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            assert!(
                statuses.contains(&r.status.to_string()),
                "{method} {path} answered {} (documented: {statuses:?}): {}",
                r.status,
                r.text
            );
            assert!(
                r.status < 300,
                "{method} {path} should succeed here: {} {}",
                r.status,
                r.text
            );
            if r.status != 204 && path != "/metrics" {
                assert!(r.body.is_object(), "{method} {path}: JSON body expected");
                let schema =
                    &op["responses"][r.status.to_string()]["content"]["application/json"]["schema"];
                for field in schema["required"].as_array().into_iter().flatten() {
                    let f = field.as_str().unwrap();
                    assert!(
                        r.body.get(f).is_some(),
                        "{method} {path}: `{f}` missing in {}",
                        r.text
                    );
                }
            }
            if secured {
                let anonymous = h
                    .send(
                        &method.to_uppercase(),
                        &format!("{concrete}{query}"),
                        None,
                        body_text.as_deref(),
                        &[],
                    )
                    .await;
                assert_eq!(anonymous.status, 401, "{method} {path} without a token");
                assert!(
                    statuses.contains(&"401".to_owned()),
                    "{method} {path} documents 401"
                );
            }
        }
    }
    // Deleting the walked record happened; reading it again is 404 as documented.
    let gone = h.get(&format!("/v1/records/{id}"), &alice).await;
    assert_eq!(gone.status, 404);
    h.stop().await;
}

/// The document's statuses for `method path`.
fn documented(doc: &serde_json::Value, method: &str, path: &str) -> Vec<u16> {
    doc["paths"][path][method]["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {path} is not in the document"))
        .keys()
        .map(|k| k.parse().unwrap())
        .collect()
}

/// A request every operation is sent in the hostile walk: a name, the token to send (by
/// whose), the body and the extra headers.
struct Case {
    name: &'static str,
    token: Who,
    body: Option<String>,
    headers: &'static [(&'static str, &'static str)],
}

#[derive(Clone, Copy)]
enum Who {
    Nobody,
    Garbage,
    /// A tenant admin (no admin permission on the platform routes).
    Alice,
    /// A plain user (no `audit:read`, no admin permission).
    Bob,
    Root,
}

/// Every answer to a hostile or unlucky request is one the document lists for its operation,
/// and a problem document: another media type, broken JSON, an oversized body, a malformed
/// token, a tenant header that disagrees with the token, a user without the permission, a
/// user or a client address whose limit is spent. A generated client knows every answer it
/// can get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_limited_requests_get_documented_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::memory_config(dir.path());
    // The four logins below, then the walk's own calls of the login and refresh routes: the
    // client address's limit is spent during the first walk.
    config.login_per_minute = 8;
    let h = Harness::start(config, dir).await;
    let doc = h.send("GET", "/openapi.json", None, None, &[]).await.body;
    let root = h.login("platform", "root").await;
    let alice = h.login("acme", "alice").await;
    let bob = h.login("acme", "bob").await;
    // The first walk logs bob out: a second session for the second walk.
    let bob_again = h.login("acme", "bob").await;
    let big = format!(r#"{{"title":"t","body":"{}"}}"#, "a".repeat(70 * 1024));
    let cases = [
        Case {
            name: "another media type",
            token: Who::Root,
            body: Some("{}".into()),
            headers: &[("content-type", "text/plain")],
        },
        Case {
            name: "broken JSON",
            token: Who::Root,
            body: Some(r#"{"title":"#.into()),
            headers: &[],
        },
        Case {
            name: "oversized body",
            token: Who::Root,
            body: Some(big),
            headers: &[],
        },
        Case {
            name: "malformed token",
            token: Who::Garbage,
            body: None,
            headers: &[],
        },
        Case {
            name: "tenant header of another tenant",
            token: Who::Alice,
            body: None,
            headers: &[("x-tenant-id", "globex")],
        },
        Case {
            name: "tenant admin",
            token: Who::Alice,
            body: None,
            headers: &[],
        },
        Case {
            name: "plain user",
            token: Who::Bob,
            body: None,
            headers: &[],
        },
        Case {
            name: "no token",
            token: Who::Nobody,
            body: None,
            headers: &[],
        },
        Case {
            name: "headers over 16 KiB",
            token: Who::Root,
            body: None,
            headers: Box::leak(Box::new([(
                "x-padding",
                &*Box::leak("a".repeat(17 * 1024).into_boxed_str()),
            )])),
        },
    ];
    // Logout last: it ends the session of the token it is sent.
    let mut ops: Vec<_> = OPERATIONS.iter().collect();
    ops.sort_by_key(|(_, path, _, _)| *path == "/v1/auth/logout");
    let mut seen = std::collections::BTreeSet::new();
    let mut walk = async |cases: &[Case], bob: &str| {
        for &&(method, path, _, _) in &ops {
            let statuses = documented(&doc, method, path);
            let concrete = path
                .replace("{id}", "00000000000000000000000000000000")
                .replace("{tenant}", "acme");
            for case in cases {
                let token = match case.token {
                    Who::Nobody => None,
                    Who::Garbage => Some("not.a.token"),
                    Who::Alice => Some(alice.as_str()),
                    Who::Bob => Some(bob),
                    Who::Root => Some(root.as_str()),
                };
                let r = h
                    .send(
                        &method.to_uppercase(),
                        &concrete,
                        token,
                        case.body.as_deref(),
                        case.headers,
                    )
                    .await;
                assert!(
                    statuses.contains(&r.status),
                    "{method} {path}, {}: {} is not documented ({statuses:?}): {}",
                    case.name,
                    r.status,
                    r.text
                );
                if r.status >= 400 {
                    common::assert_problem(&r, r.status);
                }
                seen.insert(r.status);
            }
        }
    };
    walk(&cases, &bob).await;
    // Spend the plain user's limit (one request a second, burst 1), then walk again: every
    // route a tenant's user can call is limited, the platform's too (the refusal of the
    // permission comes after the limit).
    let set = h
        .put(
            "/v1/admin/tenants/acme/limits",
            &root,
            &json!({"user_per_hour": 3600, "user_burst": 1}),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text);
    let plain = [Case {
        name: "plain user, limit spent",
        token: Who::Bob,
        body: None,
        headers: &[],
    }];
    walk(&plain, &bob_again).await;
    for status in [400, 401, 403, 413, 415, 429, 431] {
        assert!(seen.contains(&status), "the walk met {status}: {seen:?}");
    }
    h.stop().await;
}
