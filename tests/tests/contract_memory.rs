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
    use tenancy_server::openapi::{OPERATIONS, document, statuses};

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
        for (method, template, needs_token, _) in ops {
            let statuses = statuses(method, template);
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

/// Every event of a trail (read with `token`) that answers the request `request_id`.
async fn events_of(h: &Harness, token: &str, request_id: &str) -> Vec<serde_json::Value> {
    let r = h.get("/v1/tenant/audit?limit=500", Some(token)).await;
    assert_eq!(r.status, 200, "{}: {}", h.flavor.name(), r.text);
    r.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["origin"]["request_id"] == request_id)
        .cloned()
        .collect()
}

/// Each login and refresh, refused or not, leaves exactly one audit event, in the trail of
/// the tenant concerned (the platform's when the tenant is unknown), carrying the client
/// address and the route: never a second, anonymous `http.denied` record in the platform
/// trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_login_and_refresh_is_audited_once_on_both_servers() {
    let mut transcripts = Vec::new();
    for flavor in Flavor::BOTH {
        let mut h = Harness::memory(flavor).await;
        let (root, _) = h.login("platform", "root").await;
        let (alice, _) = h.login("acme", "alice").await;
        let (galice, _) = h.login("globex", "alice").await;
        let (_, gbob_refresh) = h.login("globex", "bob").await;
        let (_, bob_refresh) = h.login("acme", "bob").await;
        let send = |rid: &'static str, path: &'static str, body: String| {
            let h = &h;
            async move {
                h.send("POST", path, None, Some(&body), &[("x-request-id", rid)])
                    .await
            }
        };
        let login = |tenant: &str, password: &str| {
            serde_json::json!({"tenant_id": tenant, "username": "bob", "password": password})
                .to_string()
        };
        let refresh = |t: &str| serde_json::json!({"refresh_token": t}).to_string();
        let mut log = Vec::new();
        for (rid, path, body, status) in [
            (
                "rid-bad-password",
                "/v1/auth/login",
                login("acme", "nope"),
                401,
            ),
            (
                "rid-unknown-tenant",
                "/v1/auth/login",
                login("nosuch", "password"),
                401,
            ),
            (
                "rid-good-login",
                "/v1/auth/login",
                login("acme", "password"),
                200,
            ),
            (
                "rid-refresh",
                "/v1/auth/refresh",
                refresh(&bob_refresh),
                200,
            ),
            ("rid-reuse", "/v1/auth/refresh", refresh(&bob_refresh), 401),
            ("rid-junk-refresh", "/v1/auth/refresh", refresh("junk"), 401),
        ] {
            let r = send(rid, path, body).await;
            assert_eq!(r.status, status, "{} {rid}: {}", flavor.name(), r.text);
            log.push(common::entry(rid, &r, None));
        }
        let globex = |action: &'static str| {
            let (h, root) = (&h, &root);
            async move {
                let path = format!("/v1/admin/tenants/globex/{action}");
                let s = h.post(&path, Some(root), &serde_json::json!({})).await;
                assert_eq!(s.status, 200, "{action}: {}", s.text);
            }
        };
        globex("suspend").await;
        let r = send("rid-suspended", "/v1/auth/refresh", refresh(&gbob_refresh)).await;
        assert_eq!(r.status, 403, "{}", r.text);
        log.push(common::entry("rid-suspended", &r, None));
        globex("resume").await;

        let trails = [("acme", &alice), ("globex", &galice), ("platform", &root)];
        for (rid, tenant, action, outcome, reason) in [
            (
                "rid-bad-password",
                "acme",
                "auth.login",
                "denied",
                Some("bad_credentials"),
            ),
            (
                "rid-unknown-tenant",
                "platform",
                "auth.login",
                "denied",
                Some("bad_credentials"),
            ),
            ("rid-good-login", "acme", "auth.login", "success", None),
            ("rid-refresh", "acme", "auth.refresh", "success", None),
            (
                "rid-reuse",
                "acme",
                "auth.refresh",
                "denied",
                Some("refresh_token_reused_session_revoked"),
            ),
            (
                "rid-junk-refresh",
                "platform",
                "auth.refresh",
                "denied",
                Some("refresh_token_refused"),
            ),
            (
                "rid-suspended",
                "globex",
                "auth.refresh",
                "denied",
                Some("tenant_suspended"),
            ),
        ] {
            let who = format!("{} {rid}", flavor.name());
            let mut found = Vec::new();
            for (trail, token) in trails {
                for e in events_of(&h, token, rid).await {
                    found.push((trail, e));
                }
            }
            assert_eq!(found.len(), 1, "{who}: one event, got {found:?}");
            let (trail, e) = &found[0];
            assert_eq!(*trail, tenant, "{who}: {e}");
            assert_eq!(e["action"], action, "{who}: {e}");
            assert_eq!(e["outcome"], outcome, "{who}: {e}");
            assert_eq!(e["reason"].as_str(), reason, "{who}: {e}");
            assert_eq!(e["origin"]["client_addr"], "127.0.0.1", "{who}: {e}");
            let route = if action == "auth.login" {
                "/v1/auth/login"
            } else {
                "/v1/auth/refresh"
            };
            assert_eq!(e["origin"]["route"], route, "{who}: {e}");
        }
        assert!(h.stop().await);
        transcripts.push(log);
    }
    assert_same(("axum", &transcripts[0]), ("actix", &transcripts[1]));
}

/// A prod-like configuration: environment `prod`, a key of its own, data in `dir`, and the
/// variables of `extra`.
fn prod_config(dir: &std::path::Path, extra: &[(&str, &str)]) -> tenancy_server::Config {
    let mut vars = std::collections::HashMap::from([
        ("TENANCY_ENV".to_owned(), "prod".to_owned()),
        ("TENANCY_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        (
            "TENANCY_JWT_SECRET".to_owned(),
            "prod-test-secret-0123456789abcdef0123".to_owned(),
        ),
        ("TENANCY_DATA_DIR".to_owned(), dir.display().to_string()),
    ]);
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    tenancy_server::Config::from_vars(&vars).expect("a valid prod configuration")
}

/// In prod, `/metrics` answers loopback and private addresses only (or the configured
/// networks); any other client gets the 404 of a path that does not exist, on both servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_are_private_in_prod_on_both_servers() {
    let mut transcripts = Vec::new();
    for flavor in Flavor::BOTH {
        let who = flavor.name();
        let mut log = Vec::new();

        let dir = tempfile::tempdir().unwrap();
        let c = prod_config(dir.path(), &[]);
        let mut h = Harness::start(flavor, c, dir).await;
        let r = h.get("/metrics", None).await;
        assert_eq!(r.status, 200, "{who}: loopback is private: {}", r.text);
        assert!(r.text.contains("tenancy_component_up"), "{who}: {}", r.text);
        log.push(common::entry("metrics from loopback", &r, None));
        assert!(h.stop().await);

        let dir = tempfile::tempdir().unwrap();
        let c = prod_config(
            dir.path(),
            &[("TENANCY_METRICS_ALLOW", "192.0.2.0/24, 2001:db8::/32")],
        );
        let mut h = Harness::start(flavor, c, dir).await;
        let r = h.get("/metrics", None).await;
        common::assert_problem(who, &r, 404);
        assert_eq!(
            r.body["type"], "urn:tenancy:problem:not-found",
            "{who}: a refused scrape looks like a path that does not exist: {}",
            r.text
        );
        log.push(common::entry("metrics from outside the list", &r, None));
        let health = h.get("/health", None).await;
        assert_eq!(health.status, 200, "{who}: {}", health.text);
        assert!(h.stop().await);

        // Behind a trusted proxy (here loopback), the client is the address it forwards: a
        // public client is refused although the connection comes from loopback, a private
        // one is served. An untrusted peer's header would be ignored.
        let dir = tempfile::tempdir().unwrap();
        let c = prod_config(dir.path(), &[("TENANCY_TRUSTED_PROXIES", "127.0.0.1")]);
        let mut h = Harness::start(flavor, c, dir).await;
        let xff = |ip: &'static str| [("x-forwarded-for", ip)];
        let public = h
            .send("GET", "/metrics", None, None, &xff("203.0.113.9"))
            .await;
        common::assert_problem(who, &public, 404);
        log.push(common::entry(
            "metrics for a public client behind the proxy",
            &public,
            None,
        ));
        let private = h
            .send("GET", "/metrics", None, None, &xff("10.1.2.3"))
            .await;
        assert_eq!(private.status, 200, "{who}: {}", private.text);
        log.push(common::entry(
            "metrics for a private client behind the proxy",
            &private,
            None,
        ));
        assert!(h.stop().await);
        transcripts.push(log);
    }
    assert_same(("axum", &transcripts[0]), ("actix", &transcripts[1]));
}

/// Sends `GET /v1/me` with a chunked body of `len` bytes over a raw connection (no declared
/// length, so the server finds the size only by reading) and returns the status line.
async fn chunked_me(h: &Harness, token: &str, len: usize) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = h.base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /v1/me HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 8 * 1024];
    let mut left = len;
    // The server may answer and close before every chunk is sent: a failed write ends the body.
    while left > 0 {
        let n = left.min(chunk.len());
        let framed = [format!("{n:x}\r\n").as_bytes(), &chunk[..n], b"\r\n"].concat();
        if conn.write_all(&framed).await.is_err() {
            break;
        }
        left -= n;
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.read_to_end(&mut answer),
    )
    .await;
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A chunked body, whose size no header declares, is held to the 64 KiB limit on a route that
/// reads no body, on both servers; a small one passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunked_body_over_the_limit_is_refused_on_both_servers() {
    for flavor in Flavor::BOTH {
        let who = flavor.name();
        let mut h = Harness::memory(flavor).await;
        let token = h.mint("acme", "bob", "user", &[]);
        let big = chunked_me(&h, &token, 70 * 1024).await;
        assert!(big.starts_with("HTTP/1.1 413"), "{who}: {big}");
        let small = chunked_me(&h, &token, 100).await;
        assert!(small.starts_with("HTTP/1.1 200"), "{who}: {small}");
        assert!(h.stop().await);
    }
}

/// Reads one answer from a raw connection: its head (status line and headers, names in
/// lowercase) and its body, by its `Content-Length`.
async fn read_answer(conn: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    read_answer_within(conn, std::time::Duration::from_secs(10)).await
}

/// [`read_answer`], waiting at most `wait` for each read.
async fn read_answer_within(
    conn: &mut tokio::net::TcpStream,
    wait: std::time::Duration,
) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(wait, conn.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no answer in {wait:?}"))
            .expect("the connection failed before the answer");
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = buf[end..].to_vec();
    while body.len() < len {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .expect("the answer's body stalled for 10 s")
            .unwrap();
        assert!(n > 0, "closed mid-answer");
        body.extend_from_slice(&chunk[..n]);
    }
    (head, body)
}

/// The head of `POST /v1/records` with a JSON body of `len` bytes over a raw connection to
/// `addr`; `extra` is more header lines, each ending in CRLF.
fn upload_head(addr: &str, extra: &str, len: usize) -> String {
    format!(
        "POST /v1/records HTTP/1.1\r\nhost: {addr}\r\n{extra}\
         content-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    )
}

/// A client that sends its whole body before it reads the answer gets the refusal (413 for
/// the size, 401 without a token), not a reset connection: the server reads what is left of a
/// refused body (up to 1 MiB) and throws it away, and the connection then serves the next
/// request. A declared length over that bound is not read: the 413 closes the connection.
/// Both servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_body_is_read_so_that_the_refusal_arrives_on_both_servers() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    for flavor in Flavor::BOTH {
        let who = flavor.name();
        let mut h = Harness::memory(flavor).await;
        let token = h.mint("acme", "bob", "user", &[]);
        let addr = h.base.trim_start_matches("http://").to_owned();
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let body = vec![b'a'; 900 * 1024];
        let bearer = format!("authorization: Bearer {token}\r\n");
        for (round, (authorization, status)) in [(&*bearer, 413), ("", 401), (&*bearer, 413)]
            .into_iter()
            .enumerate()
        {
            let head = upload_head(&addr, authorization, body.len());
            conn.write_all(head.as_bytes()).await.unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(10), conn.write_all(&body))
                .await
                .unwrap_or_else(|_| panic!("{who}, round {round}: body not read in 10 s"))
                .unwrap_or_else(|e| panic!("{who}, round {round}: body not read: {e}"));
            let (answer, _) = read_answer(&mut conn).await;
            assert!(
                answer.starts_with(&format!("http/1.1 {status}")),
                "{who}, round {round}: {answer}"
            );
            assert!(!answer.contains("connection: close"), "{who}: {answer}");
        }
        // The same connection serves the next request.
        let me =
            format!("GET /v1/me HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\r\n");
        conn.write_all(me.as_bytes()).await.unwrap();
        let (answer, _) = read_answer(&mut conn).await;
        assert!(answer.starts_with("http/1.1 200"), "{who}: {answer}");

        // Over the bound: answered at once, unread, and the connection closed.
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = upload_head(&addr, &bearer, 2 << 20);
        conn.write_all(head.as_bytes()).await.unwrap();
        let (answer, _) = read_answer(&mut conn).await;
        assert!(answer.starts_with("http/1.1 413"), "{who}: {answer}");
        assert!(answer.contains("connection: close"), "{who}: {answer}");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            conn.read_to_end(&mut rest),
        )
        .await;
        assert!(matches!(closed, Ok(Ok(0))), "{who}: {closed:?} {rest:?}");
        assert!(h.stop().await);
    }
}

/// A refused upload whose client expects `100 Continue` gets its 401 on both servers. axum
/// answers at once, without the 100, and the client sends no body; actix-web sends the 100
/// before any middleware runs, so the client sends its body, which is read and thrown away.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_upload_that_expects_100_continue_is_answered_on_both_servers() {
    use tokio::io::AsyncWriteExt as _;
    for flavor in Flavor::BOTH {
        let who = flavor.name();
        let mut h = Harness::memory(flavor).await;
        let addr = h.base.trim_start_matches("http://").to_owned();
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let body = vec![b'a'; 70 * 1024];
        let head = upload_head(&addr, "expect: 100-continue\r\n", body.len());
        conn.write_all(head.as_bytes()).await.unwrap();
        let (first, _) = read_answer(&mut conn).await;
        let answer = if first.starts_with("http/1.1 100") {
            assert!(matches!(flavor, Flavor::Actix), "{who}: {first}");
            conn.write_all(&body).await.unwrap();
            read_answer(&mut conn).await.0
        } else {
            first
        };
        assert!(answer.starts_with("http/1.1 401"), "{who}: {answer}");
        assert!(h.stop().await);
    }
}

/// A record id whose bytes are not UTF-8 once decoded is read as actix-web hands it to
/// handlers, U+FFFD in their place: the answer (404) and the audit record's resource id are
/// the same on both servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_undecodable_id_is_audited_alike_on_both_servers() {
    for flavor in Flavor::BOTH {
        let who = flavor.name();
        let mut h = Harness::memory(flavor).await;
        let (token, _) = h.login("acme", "bob").await;
        let r = h
            .send(
                "GET",
                "/v1/records/%FF%FE",
                Some(&token),
                None,
                &[("x-request-id", "undecodable-id-1")],
            )
            .await;
        assert_eq!(r.status, 404, "{who}: {}", r.text);
        let (admin, _) = h.login("acme", "alice").await;
        let events = events_of(&h, &admin, "undecodable-id-1").await;
        assert_eq!(events.len(), 1, "{who}: {events:?}");
        assert_eq!(
            events[0]["resource"]["id"], "\u{FFFD}\u{FFFD}",
            "{who}: {events:?}"
        );
        assert!(h.stop().await);
    }
}

/// A path with escaped unreserved characters is the same path (RFC 3986): both servers route
/// `/v1/r%65cords` as `/v1/records` (actix-web decodes before matching; the axum server
/// decodes such escapes before routing), and leave other escapes alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn escaped_unreserved_characters_route_alike_on_both_servers() {
    let mut transcripts = Vec::new();
    for flavor in Flavor::BOTH {
        let who = flavor.name();
        let mut h = Harness::memory(flavor).await;
        let (token, _) = h.login("acme", "bob").await;
        let mut log = Vec::new();
        for (path, want) in [
            ("/v1/r%65cords", 200),
            ("/v1/r%65cords?limit=1", 200),
            ("/v1/%6De", 200),
            ("/v1/r%20cords", 404),
            ("/v1/records%2Fx", 404),
        ] {
            let r = h.get(path, Some(&token)).await;
            assert_eq!(r.status, want, "{who}: {path}: {}", r.text);
            log.push(common::entry(path, &r, None));
        }
        assert!(h.stop().await);
        transcripts.push(log);
    }
    assert_same(("axum", &transcripts[0]), ("actix", &transcripts[1]));
}

/// A client that declares a body and then stalls is answered 408 (problem+json, the
/// connection closed) once the body-read deadline has passed, on both servers: it holds no
/// request, and no graceful shutdown, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_body_is_answered_408_on_both_servers() {
    use std::time::{Duration, Instant};
    use tenancy_server::app::BODY_READ_TIMEOUT;
    use tokio::io::AsyncWriteExt as _;
    // Both at once: each waits out the deadline.
    let one = |flavor: Flavor| async move {
        let who = flavor.name();
        let mut h = Harness::memory(flavor).await;
        let token = h.mint("acme", "bob", "user", &["records:write"]);
        let addr = h.base.trim_start_matches("http://").to_owned();
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let bearer = format!("authorization: Bearer {token}\r\n");
        conn.write_all(upload_head(&addr, &bearer, 1000).as_bytes())
            .await
            .unwrap();
        conn.write_all(br#"{"title":"#).await.unwrap();
        let started = Instant::now();
        // The deadline, then at most the 2 s the server spends on what is left of the body.
        let (head, body) =
            read_answer_within(&mut conn, BODY_READ_TIMEOUT + Duration::from_secs(5)).await;
        let waited = started.elapsed();
        assert!(head.starts_with("http/1.1 408"), "{who}: {head}");
        assert!(
            head.contains("content-type: application/problem+json"),
            "{who}: {head}"
        );
        assert!(head.contains("connection: close"), "{who}: {head}");
        assert!(
            waited + Duration::from_millis(200) >= BODY_READ_TIMEOUT,
            "{who}: answered after {waited:?}, before the deadline"
        );
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["status"], 408, "{who}: {problem}");
        assert!(h.stop().await, "{who}: clean shutdown");
        problem["type"].clone()
    };
    let (axum, actix) = tokio::join!(one(Flavor::Axum), one(Flavor::Actix));
    assert_eq!(axum, actix);
}

/// The axum server's graceful shutdown is bounded: connections that would hold it for ever
/// (a client stalled mid-body, a client that asks for answers and never reads them) are
/// waited for at most the grace period, and the audit queue is still drained after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn axum_shutdown_is_bounded_and_still_drains_the_audit_queue() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().unwrap();
    let app = tenancy_server::App::build(common::config(dir.path(), |_| {}))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = tenancy_server::serve(app.clone(), listener).await.unwrap();
    let addr = server.local_addr();
    let client = tenancy_tests::http::Client::new(format!("http://{addr}"), "axum");
    let login = r#"{"tenant_id":"acme","username":"bob","password":"password"}"#;
    let r = client
        .send(
            "POST",
            "/v1/auth/login",
            None,
            Some(login),
            &[("x-request-id", "before-shutdown")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let token = r.body["access_token"].as_str().unwrap().to_owned();

    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let bearer = format!("authorization: Bearer {token}\r\n");
    let head = upload_head(&addr.to_string(), &bearer, 1000);
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(b"{").await.unwrap();
    let mut flood = tokio::net::TcpStream::connect(addr).await.unwrap();
    let ask = format!("GET /openapi.json HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    let writer = tokio::spawn(async move {
        for _ in 0..100_000 {
            if flood.write_all(ask.as_bytes()).await.is_err() {
                break;
            }
        }
        flood
    });
    // Long enough for the server's writes to the flood to block.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    let stopped = tokio::time::timeout(
        Duration::from_secs(20),
        server.shutdown_within(Duration::from_secs(1)),
    )
    .await;
    let took = started.elapsed();
    writer.abort();
    drop(stalled);
    let stopped = stopped.expect("shutdown held by open connections for 20 s");
    assert!(stopped.is_ok(), "the audit queue drains: {stopped:?}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let text = std::fs::read_to_string(app.config().audit_file()).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("before-shutdown") && l.contains("auth.login")),
        "the login is in the audit file"
    );
}

/// A login or refresh refused for its body (unknown field, malformed JSON, wrong content
/// type, over 64 KiB) is an attempt like any other: each leaves exactly one `auth.login` or
/// `auth.refresh` event with outcome `failure`, in the platform's trail (the body names no
/// tenant that could be trusted), with the client address and the route, on both servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_refused_for_its_body_is_audited_once_on_both_servers() {
    let big = format!(
        r#"{{"tenant_id":"acme","username":"bob","password":"{}"}}"#,
        "a".repeat(70 * 1024)
    );
    let json = "application/json";
    let mut transcripts = Vec::new();
    for flavor in Flavor::BOTH {
        let who = flavor.name();
        let mut h = Harness::memory(flavor).await;
        let (root, _) = h.login("platform", "root").await;
        let (alice, _) = h.login("acme", "alice").await;
        let mut log = Vec::new();
        for (rid, path, ct, body, status) in [
            (
                "rid-unknown-field",
                "/v1/auth/login",
                json,
                r#"{"tenant_id":"acme","username":"bob","password":"password","role":"x"}"#,
                400,
            ),
            (
                "rid-malformed",
                "/v1/auth/login",
                json,
                r#"{"tenant_id":"#,
                400,
            ),
            (
                "rid-text",
                "/v1/auth/login",
                "text/plain",
                "acme bob password",
                415,
            ),
            ("rid-too-large", "/v1/auth/login", json, big.as_str(), 413),
            ("rid-refresh-malformed", "/v1/auth/refresh", json, "{", 400),
            (
                "rid-refresh-text",
                "/v1/auth/refresh",
                "text/plain",
                "x",
                415,
            ),
        ] {
            let headers = [("content-type", ct), ("x-request-id", rid)];
            let r = h.send("POST", path, None, Some(body), &headers).await;
            common::assert_problem(&format!("{who} {rid}"), &r, status);
            log.push(common::entry(rid, &r, None));
            let mut found = Vec::new();
            for (trail, token) in [("acme", &alice), ("platform", &root)] {
                for e in events_of(&h, token, rid).await {
                    found.push((trail, e));
                }
            }
            assert_eq!(found.len(), 1, "{who} {rid}: one event, got {found:?}");
            let (trail, e) = &found[0];
            let action = path.trim_start_matches("/v1/").replace('/', ".");
            assert_eq!(*trail, "platform", "{who} {rid}: {e}");
            assert_eq!(e["action"], action, "{who} {rid}: {e}");
            assert_eq!(e["outcome"], "failure", "{who} {rid}: {e}");
            assert!(e["reason"].is_string(), "{who} {rid}: {e}");
            assert_eq!(e["origin"]["client_addr"], "127.0.0.1", "{who} {rid}: {e}");
            assert_eq!(e["origin"]["route"], path, "{who} {rid}: {e}");
            log.push(common::Entry {
                case: format!("{rid} event"),
                status: 0,
                headers: Default::default(),
                body: serde_json::json!([e["action"], e["outcome"], e["reason"]]),
            });
        }
        assert!(h.stop().await);
        transcripts.push(log);
    }
    assert_same(("axum", &transcripts[0]), ("actix", &transcripts[1]));
}

/// A method a path does not serve is answered 405 with the `Allow` the path serves (RFC 9110
/// §15.5.6), the same on both servers, for every path of the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_405_names_the_allowed_methods_on_both_servers() {
    use tenancy_server::openapi::OPERATIONS;
    let mut paths: Vec<&str> = OPERATIONS.iter().map(|(_, p, _, _)| *p).collect();
    paths.dedup();
    let mut transcripts = Vec::new();
    for flavor in Flavor::BOTH {
        let who = flavor.name();
        let mut h = Harness::memory(flavor).await;
        let (root, _) = h.login("platform", "root").await;
        let mut log = Vec::new();
        for template in &paths {
            let path = template
                .replace("{id}", "00000000000000000000000000000000")
                .replace("{tenant}", "globex");
            let r = h.send("PATCH", &path, Some(&root), None, &[]).await;
            common::assert_problem(&format!("{who} PATCH {path}"), &r, 405);
            assert!(
                r.header("allow").is_some_and(|a| !a.is_empty()),
                "{who} PATCH {path}: no Allow: {:?}",
                r.headers
            );
            log.push(common::entry(template, &r, None));
        }
        assert!(h.stop().await);
        transcripts.push(log);
    }
    assert_same(("axum", &transcripts[0]), ("actix", &transcripts[1]));
}

/// Admin routes follow the token's permissions too: a super admin's token scoped down to
/// other permissions administers nothing. And the platform tenant exists without demo users,
/// so that a first start with an empty directory can be administered at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_routes_need_tenants_admin_and_the_platform_always_exists_on_both_servers() {
    let body = serde_json::json!({});
    for flavor in Flavor::BOTH {
        let who = flavor.name();
        let mut h = Harness::memory(flavor).await;
        let scoped = h.mint("platform", "root", "super_admin", &["records:read"]);
        let r = h
            .post("/v1/admin/tenants/acme/suspend", Some(&scoped), &body)
            .await;
        assert_eq!(r.status, 403, "{who}: {}", r.text);
        let r = h.get("/v1/admin/tenants/acme", Some(&scoped)).await;
        assert_eq!(r.status, 403, "{who}: {}", r.text);
        let admin = h.mint("platform", "root", "super_admin", &["tenants:admin"]);
        let r = h.get("/v1/admin/tenants/acme", Some(&admin)).await;
        assert_eq!(r.status, 200, "{who}: {}", r.text);
        assert_eq!(
            r.body["status"], "active",
            "{who}: the refused suspend changed nothing"
        );
        assert!(h.stop().await);

        let dir = tempfile::tempdir().unwrap();
        let c = common::config(dir.path(), |c| c.demo_users = false);
        let mut h = Harness::start(flavor, c, dir).await;
        let admin = h.mint("platform", "root", "super_admin", &["tenants:admin"]);
        let r = h
            .send(
                "PUT",
                "/v1/admin/tenants/newco",
                Some(&admin),
                Some(r#"{"tier":"standard"}"#),
                &[("content-type", "application/json")],
            )
            .await;
        assert_eq!(r.status, 201, "{who}: {}", r.text);
        assert!(h.stop().await);
    }
}

/// Request bodies are JSON objects: an array of the fields in order, which serde would take
/// for the struct, is a 400 like any other invalid body.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_json_array_is_no_request_body_on_both_servers() {
    for flavor in Flavor::BOTH {
        let who = flavor.name();
        let mut h = Harness::memory(flavor).await;
        let login = serde_json::json!(["acme", "bob", "password"]);
        let r = h.post("/v1/auth/login", None, &login).await;
        assert_eq!(r.status, 400, "{who}: {}", r.text);
        let (bob, _) = h.login("acme", "bob").await;
        let r = h
            .post("/v1/records", Some(&bob), &serde_json::json!(["t", "b"]))
            .await;
        assert_eq!(r.status, 400, "{who}: {}", r.text);
        let r = h
            .post("/v1/auth/logout", Some(&bob), &serde_json::json!([]))
            .await;
        assert_eq!(r.status, 400, "{who}: {}", r.text);
        assert!(h.stop().await);
    }
}
