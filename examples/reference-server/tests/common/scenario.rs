//! The contract cases, run against a server in any mode.

use std::time::Duration;

use serde_json::json;

use super::{Harness, assert_problem};

/// Login, refresh, refresh reuse revoking the session, logout.
pub async fn auth(h: &Harness) {
    let bad = h
        .post(
            "/v1/auth/login",
            None,
            &json!({"tenant_id": "acme", "username": "bob", "password": "nope"}),
        )
        .await;
    assert_problem(&bad, 401);
    assert_eq!(bad.header("www-authenticate"), Some("Bearer"));
    let unknown = h
        .post(
            "/v1/auth/login",
            None,
            &json!({"tenant_id": "nosuch", "username": "bob", "password": "password"}),
        )
        .await;
    assert_problem(&unknown, 401);
    // What was wrong is not said: the same words for a wrong password and an unknown tenant.
    assert_eq!(
        bad.body["detail"],
        "the credentials or the refresh token were not accepted"
    );
    assert_eq!(bad.body["detail"], unknown.body["detail"]);

    let first = h.login_pair("acme", "bob").await;
    assert_eq!(first["token_type"], "Bearer");
    assert!(first["expires_in"].as_u64().unwrap() > 0);
    let access = first["access_token"].as_str().unwrap();
    let me = h.get("/v1/me", access).await;
    assert_eq!(me.status, 200, "{}", me.text);
    assert_eq!(me.body["tenant_id"], "acme");
    assert_eq!(me.body["user_id"], "bob");
    assert_eq!(me.body["role"], "user");
    assert_eq!(me.body["tier"], "standard");
    assert_eq!(
        me.body["permissions"],
        json!(["records:read", "records:write"])
    );
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "ratelimit-policy",
        "ratelimit",
        "x-request-id",
    ] {
        assert!(me.header(name).is_some(), "{name} missing");
    }

    // Refresh: a new pair; the old refresh token is spent.
    let old_refresh = first["refresh_token"].as_str().unwrap();
    let second = h
        .post(
            "/v1/auth/refresh",
            None,
            &json!({"refresh_token": old_refresh}),
        )
        .await;
    assert_eq!(second.status, 200, "{}", second.text);
    let new_access = second.body["access_token"].as_str().unwrap().to_owned();
    assert_ne!(second.body["refresh_token"], first["refresh_token"]);
    assert_eq!(h.get("/v1/me", &new_access).await.status, 200);
    // Reuse of the spent token: 401, and the whole session is revoked.
    let reuse = h
        .post(
            "/v1/auth/refresh",
            None,
            &json!({"refresh_token": old_refresh}),
        )
        .await;
    assert_problem(&reuse, 401);
    assert_problem(&h.get("/v1/me", &new_access).await, 401);
    let newest = h
        .post(
            "/v1/auth/refresh",
            None,
            &json!({"refresh_token": second.body["refresh_token"]}),
        )
        .await;
    assert_problem(&newest, 401);

    // Logout ends the session: access and refresh tokens refused.
    let pair = h.login_pair("acme", "bob").await;
    let access = pair["access_token"].as_str().unwrap();
    let out = h
        .send("POST", "/v1/auth/logout", Some(access), None, &[])
        .await;
    assert_eq!(out.status, 204, "{}", out.text);
    assert_problem(&h.get("/v1/me", access).await, 401);
    let after = h
        .post(
            "/v1/auth/refresh",
            None,
            &json!({"refresh_token": pair["refresh_token"]}),
        )
        .await;
    assert_problem(&after, 401);
    assert_eq!(after.body["detail"], bad.body["detail"]);
    // Garbage bearer tokens: 401, with the words of every refused bearer token.
    let junk = h.get("/v1/me", "not.a.jwt").await;
    assert_problem(&junk, 401);
    assert_eq!(junk.body["detail"], "a valid bearer token is required");
}

/// Records CRUD; another tenant's ids answer 404.
pub async fn records(h: &Harness) {
    let alice = h.login("acme", "alice").await;
    let bob = h.login("acme", "bob").await;
    let other = h.login("globex", "alice").await;
    let created = h
        .post(
            "/v1/records",
            Some(&alice),
            &json!({"title": "plan", "body": "secret"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created.header("location"),
        Some(format!("/v1/records/{id}").as_str())
    );
    let read = h.get(&format!("/v1/records/{id}"), &bob).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["title"], "plan");
    let list = h.get("/v1/records", &bob).await;
    assert!(
        list.body["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str())
    );

    // globex sees nothing of it, and cannot tell it exists.
    let cross = h.get(&format!("/v1/records/{id}"), &other).await;
    assert_problem(&cross, 404);
    let never = h
        .get("/v1/records/00000000000000000000000000000000", &other)
        .await;
    assert_eq!(cross.body["detail"], never.body["detail"]);
    assert_problem(
        &h.send(
            "DELETE",
            &format!("/v1/records/{id}"),
            Some(&other),
            None,
            &[],
        )
        .await,
        404,
    );
    let globex_list = h.get("/v1/records", &other).await;
    assert!(!globex_list.text.contains(&id));
    assert_problem(&h.get("/v1/records/..%2F..%2Fetc", &bob).await, 404);

    let del = h
        .send(
            "DELETE",
            &format!("/v1/records/{id}"),
            Some(&bob),
            None,
            &[],
        )
        .await;
    assert_eq!(del.status, 204);
    assert_problem(&h.get(&format!("/v1/records/{id}"), &alice).await, 404);
    assert_problem(
        &h.send(
            "DELETE",
            &format!("/v1/records/{id}"),
            Some(&bob),
            None,
            &[],
        )
        .await,
        404,
    );
}

/// Permissions and the tenant header.
pub async fn permissions(h: &Harness) {
    let bob = h.login("acme", "bob").await;
    assert_problem(&h.get("/v1/tenant/audit", &bob).await, 403);
    assert_problem(&h.get("/v1/admin/tenants/acme", &bob).await, 403);
    assert_problem(
        &h.post("/v1/admin/tenants/acme/suspend", Some(&bob), &json!({}))
            .await,
        403,
    );
    let alice = h.login("acme", "alice").await;
    assert_problem(
        &h.get("/v1/admin/audit/verify?tenant=acme", &alice).await,
        403,
    );

    // A token carrying only records:read may not write.
    let issuer = h.app().issuer().unwrap();
    let read_only = issuer
        .access_token(
            &"acme".parse().unwrap(),
            &"carol".parse().unwrap(),
            &"user".parse().unwrap(),
            &["records:read".parse().unwrap()].into_iter().collect(),
            None,
        )
        .unwrap();
    assert_eq!(h.get("/v1/records", &read_only).await.status, 200);
    assert_problem(
        &h.post(
            "/v1/records",
            Some(&read_only),
            &json!({"title": "t", "body": "b"}),
        )
        .await,
        403,
    );

    // The tenant header must name the token's tenant.
    let mismatch = h
        .send(
            "GET",
            "/v1/me",
            Some(&bob),
            None,
            &[("x-tenant-id", "globex")],
        )
        .await;
    assert_problem(&mismatch, 403);
    let matching = h
        .send(
            "GET",
            "/v1/me",
            Some(&bob),
            None,
            &[("x-tenant-id", "acme")],
        )
        .await;
    assert_eq!(matching.status, 200);

    // Request ids are echoed.
    let echoed = h
        .send("GET", "/health", None, None, &[("x-request-id", "abc-123")])
        .await;
    assert_eq!(echoed.header("x-request-id"), Some("abc-123"));
}

/// Suspend, resume, tenant creation.
pub async fn admin(h: &Harness) {
    let root = h.login("platform", "root").await;
    let globex = h.login("globex", "bob").await;
    assert_eq!(h.get("/v1/me", &globex).await.status, 200);
    let s = h
        .post("/v1/admin/tenants/globex/suspend", Some(&root), &json!({}))
        .await;
    assert_eq!(s.status, 200, "{}", s.text);
    assert_eq!(s.body["status"], "suspended");
    assert_problem(&h.get("/v1/me", &globex).await, 403);
    let login = h
        .post(
            "/v1/auth/login",
            None,
            &json!({"tenant_id": "globex", "username": "bob", "password": "password"}),
        )
        .await;
    // The same 401 as a wrong password: the answer tests no password.
    assert_problem(&login, 401);
    let r = h
        .post("/v1/admin/tenants/globex/resume", Some(&root), &json!({}))
        .await;
    assert_eq!(r.body["status"], "active");
    assert_eq!(h.get("/v1/me", &globex).await.status, 200);

    let created = h
        .put(
            "/v1/admin/tenants/initech",
            &root,
            &json!({"tier": "standard"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let changed = h
        .put(
            "/v1/admin/tenants/initech",
            &root,
            &json!({"tier": "premium"}),
        )
        .await;
    assert_eq!(changed.status, 200);
    assert_eq!(changed.body["tier"], "premium");
    let bad_tier = h
        .put("/v1/admin/tenants/initech", &root, &json!({"tier": "gold"}))
        .await;
    assert_problem(&bad_tier, 400);
    let view = h.get("/v1/admin/tenants/initech", &root).await;
    assert_eq!(view.body["limits"]["tenant"]["limit"], 5000);
    assert_problem(&h.get("/v1/admin/tenants/nosuch", &root).await, 404);
    assert_problem(&h.get("/v1/admin/tenants/Not%20Valid", &root).await, 400);
}

/// The limit is reached, then restored; an admin change applies on the next request; a
/// bypass lifts the limit.
pub async fn limits(h: &Harness) {
    let root = h.login("platform", "root").await;
    let bob = h.login("acme", "bob").await;
    assert_eq!(
        h.get("/v1/me", &bob).await.header("x-ratelimit-limit"),
        Some("300")
    );
    // One request per second per user, burst 2: effective on the next request.
    let set = h
        .put(
            "/v1/admin/tenants/acme/limits",
            &root,
            &json!({"user_per_hour": 3600, "user_burst": 2}),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text);
    let first = h.get("/v1/me", &bob).await;
    assert_eq!(
        first.header("x-ratelimit-limit"),
        Some("3600"),
        "{:?}",
        first.headers
    );
    let mut denied = None;
    for _ in 0..6 {
        let r = h.get("/v1/me", &bob).await;
        if r.status == 429 {
            denied = Some(r);
            break;
        }
    }
    let denied = denied.expect("the limit is reached");
    assert_problem(&denied, 429);
    let retry: u64 = denied.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert!(denied.header("x-ratelimit-remaining").is_some());
    tokio::time::sleep(Duration::from_secs(retry) + Duration::from_millis(200)).await;
    assert_eq!(
        h.get("/v1/me", &bob).await.status,
        200,
        "restored after Retry-After"
    );

    // Emergency bypass: nothing is refused while it lasts.
    let b = h
        .post(
            "/v1/admin/tenants/acme/bypass",
            Some(&root),
            &json!({"seconds": 60}),
        )
        .await;
    assert_eq!(b.status, 200, "{}", b.text);
    assert!(b.body["bypass_until"].is_string());
    for _ in 0..5 {
        assert_eq!(h.get("/v1/me", &bob).await.status, 200);
    }
    let end = h
        .post(
            "/v1/admin/tenants/acme/bypass",
            Some(&root),
            &json!({"seconds": 0}),
        )
        .await;
    assert!(end.body["bypass_until"].is_null());
    let usage = h.get("/v1/admin/tenants/acme", &root).await;
    assert!(usage.body["usage"]["remaining"].is_u64(), "{}", usage.text);
    // Back to the tier's quotas.
    let reset = h
        .put(
            "/v1/admin/tenants/acme/limits",
            &root,
            &json!({"user_per_hour": 300, "user_burst": 30}),
        )
        .await;
    assert_eq!(reset.status, 200);
    // Super admins are not limited and carry no limit headers.
    let r = h.get("/v1/me", &root).await;
    assert!(r.header("x-ratelimit-limit").is_none());
}

/// Body handling: 413, malformed JSON, unknown fields, media type.
pub async fn bodies(h: &Harness) {
    let bob = h.login("acme", "bob").await;
    let big = json!({"title": "x", "body": "a".repeat(70 * 1024)}).to_string();
    assert_problem(
        &h.send("POST", "/v1/records", Some(&bob), Some(&big), &[])
            .await,
        413,
    );
    let malformed = h
        .send("POST", "/v1/records", Some(&bob), Some("{\"title\":"), &[])
        .await;
    assert_problem(&malformed, 400);
    assert!(
        malformed.body["detail"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );
    let unknown = h
        .post(
            "/v1/records",
            Some(&bob),
            &json!({"title": "t", "body": "b", "owner": "globex"}),
        )
        .await;
    assert_problem(&unknown, 400);
    assert!(
        unknown.body["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `owner`")
    );
    let text = h
        .send(
            "POST",
            "/v1/records",
            Some(&bob),
            None,
            &[("content-type", "text/plain")],
        )
        .await;
    assert_problem(&text, 415);
    let empty_title = h
        .post(
            "/v1/records",
            Some(&bob),
            &json!({"title": "", "body": "b"}),
        )
        .await;
    assert_problem(&empty_title, 400);
    let login_extra = h
        .post(
            "/v1/auth/login",
            None,
            &json!({"tenant_id": "acme", "username": "bob", "password": "password", "role": "super_admin"}),
        )
        .await;
    assert_problem(&login_extra, 400);
    assert_problem(&h.get("/v1/nowhere", &bob).await, 404);
}

/// Every kind of action shows in the trail, which verifies.
pub async fn audit_trail(h: &Harness) {
    let alice = h.login("acme", "alice").await;
    let actions = h.actions(&alice).await;
    let has = |a: &str, o: &str| actions.iter().any(|(x, y)| x == a && y == o);
    for (a, o) in [
        ("auth.login", "success"),
        ("auth.login", "denied"),
        ("auth.refresh", "success"),
        ("auth.refresh", "denied"),
        ("auth.logout", "success"),
        ("records.create", "success"),
        ("records.read", "success"),
        ("records.read", "failure"),
        ("records.list", "success"),
        ("records.delete", "success"),
        ("admin.tenant.limits", "success"),
        ("admin.tenant.bypass", "success"),
        ("ratelimit.bypass", "success"),
    ] {
        assert!(has(a, o), "{a} {o} missing from {actions:?}");
    }
    // Denials: 429 and 403 are audited.
    assert!(actions.iter().any(|(_, o)| o == "denied"));
    let root = h.login("platform", "root").await;
    let v = h.get("/v1/admin/audit/verify?tenant=acme", &root).await;
    assert_eq!(v.status, 200, "{}", v.text);
    assert_eq!(v.body["valid"], true, "{}", v.text);
    assert!(v.body["events"].as_u64().unwrap() >= 10);
    assert!(v.body["first_bad_seq"].is_null());
    // A tenant nobody knows, with no trail: 404, not a valid empty trail.
    assert_problem(
        &h.get("/v1/admin/audit/verify?tenant=acmee", &root).await,
        404,
    );
    // Pages: newest first, then older.
    let page = h.get("/v1/tenant/audit?limit=2", &alice).await;
    let seqs: Vec<u64> = page.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 2);
    assert!(seqs[0] > seqs[1]);
    let next = page.body["next_before"].as_u64().unwrap();
    let older = h
        .get(&format!("/v1/tenant/audit?limit=2&before={next}"), &alice)
        .await;
    assert!(older.body["events"][0]["seq"].as_u64().unwrap() < next);
    assert_problem(&h.get("/v1/tenant/audit?limit=0", &alice).await, 400);
    assert_problem(&h.get("/v1/tenant/audit?colour=red", &alice).await, 400);
}

/// After `tamper` changed a stored acme event, verification fails and names it.
pub async fn tampered(h: &Harness) {
    let root = h.login("platform", "root").await;
    let v = h.get("/v1/admin/audit/verify?tenant=acme", &root).await;
    assert_eq!(v.status, 200, "{}", v.text);
    assert_eq!(v.body["valid"], false, "{}", v.text);
    assert!(v.body["reason"].is_string(), "{}", v.text);
    let other = h.get("/v1/admin/audit/verify?tenant=globex", &root).await;
    assert_eq!(other.body["valid"], true, "{}", other.text);
}
