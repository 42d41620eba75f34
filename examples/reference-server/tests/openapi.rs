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
