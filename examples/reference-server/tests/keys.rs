//! Token keys from the configuration: a PEM key pair (ES256), a PEM public key alone (RS256),
//! a JWKS document served over HTTP; tokens minted by the server, by `tenancy-server token`
//! and by another issuer with the same key are accepted, tokens of any other key refused;
//! unusable keys are refused at start with an error naming the setting.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use common::Harness;
use tenancy_auth::{Algorithm, SigningKey, TokenIssuer};
use tenancy_server::{App, Config};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A test key of tenancy-auth's fixtures (they protect nothing).
fn key_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tenancy-auth/tests/keys")
        .join(name)
}

fn config(dir: &Path, keys: &[(&str, String)]) -> Config {
    let mut vars = HashMap::from([
        ("TENANCY_ENV".to_owned(), "test".to_owned()),
        ("TENANCY_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("TENANCY_DATA_DIR".to_owned(), dir.display().to_string()),
    ]);
    for (k, v) in keys {
        vars.insert((*k).to_owned(), v.clone());
    }
    Config::from_vars(&vars).expect("a valid configuration")
}

fn path(name: &str) -> String {
    key_file(name).display().to_string()
}

/// An access token for acme/bob signed by `key`, with the server's issuer and audience.
fn foreign_token(key: SigningKey, config: &Config) -> String {
    let issuer = TokenIssuer::builder(key, config.issuer.clone(), config.audience.clone())
        .build()
        .expect("an issuer");
    issuer
        .access_token(
            &"acme".parse().unwrap(),
            &"bob".parse().unwrap(),
            &"user".parse().unwrap(),
            &["records:read"]
                .iter()
                .map(|p| p.parse().unwrap())
                .collect(),
            None,
        )
        .expect("a token")
}

fn rsa_key() -> SigningKey {
    SigningKey::rsa_pem(
        &std::fs::read(key_file("rsa_private.pem")).unwrap(),
        Algorithm::RS256,
    )
    .unwrap()
}

fn ec_key() -> SigningKey {
    SigningKey::ec_pem(
        &std::fs::read(key_file("ec256_private.pem")).unwrap(),
        Algorithm::ES256,
    )
    .unwrap()
}

fn header(token: &str) -> serde_json::Value {
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pem_key_pair_issues_and_verifies_es256_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let keys = [
        ("TENANCY_JWT_PUBLIC_KEY_FILE", path("ec256_public.pem")),
        ("TENANCY_JWT_PRIVATE_KEY_FILE", path("ec256_private.pem")),
    ];
    let c = config(dir.path(), &keys);
    let h = Harness::start(c.clone(), dir).await;

    let token = h.login("acme", "bob").await;
    assert_eq!(header(&token)["alg"], "ES256");
    let me = h.get("/v1/me", &token).await;
    assert_eq!(me.status, 200, "{}", me.text);

    // `tenancy-server token` signs with the configured private key.
    let minted = common::mint_with_cli(&keys, "acme", "dave", "user");
    assert_eq!(header(&minted)["alg"], "ES256");
    let me = h.get("/v1/me", &minted).await;
    assert_eq!(me.status, 200, "{}", me.text);
    assert_eq!(me.body["user_id"], "dave");

    // Another issuer holding the same key is believed; any other key is not.
    let same = foreign_token(ec_key(), &c);
    assert_eq!(h.get("/v1/me", &same).await.status, 200);
    let rsa = foreign_token(rsa_key(), &c);
    common::assert_problem(&h.get("/v1/me", &rsa).await, 401);
    let hmac = SigningKey::hmac(
        tenancy_server::config::DEV_JWT_SECRET.as_bytes(),
        Algorithm::HS256,
    )
    .unwrap();
    common::assert_problem(&h.get("/v1/me", &foreign_token(hmac, &c)).await, 401);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_key_alone_verifies_rs256_tokens_and_issues_none() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        &[("TENANCY_JWT_PUBLIC_KEY_FILE", path("rsa_public.pem"))],
    );
    let h = Harness::start(c.clone(), dir).await;
    assert!(h.app().issuer().is_none());
    let login = h
        .post(
            "/v1/auth/login",
            None,
            &serde_json::json!({"tenant_id": "acme", "username": "bob", "password": "password"}),
        )
        .await;
    common::assert_problem(&login, 403);
    // A wrong password gets the same 403: the answer does not test passwords.
    let wrong = h
        .post(
            "/v1/auth/login",
            None,
            &serde_json::json!({"tenant_id": "acme", "username": "bob", "password": "guess"}),
        )
        .await;
    common::assert_problem(&wrong, 403);
    let refresh = h
        .post(
            "/v1/auth/refresh",
            None,
            &serde_json::json!({"refresh_token": "rt1.acme.x.y"}),
        )
        .await;
    common::assert_problem(&refresh, 403);
    let token = foreign_token(rsa_key(), &c);
    let me = h.get("/v1/me", &token).await;
    assert_eq!(me.status, 200, "{}", me.text);
    common::assert_problem(&h.get("/v1/me", &foreign_token(ec_key(), &c)).await, 401);
    let dir = h.stop().await;
    // Both refusals are in the trail.
    let trail = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let refused = trail.lines().filter(|l| l.contains("not_issuing")).count();
    assert_eq!(refused, 3, "two logins and a refresh");
}

/// Serves `doc` as the answer to every request, on loopback.
async fn serve_jwks(doc: String) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let doc = doc.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{doc}",
                    doc.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_document_verifies_tokens_of_its_keys() {
    let mut jwk = ec_key().public_jwk().unwrap().expect("a public JWK");
    jwk["kid"] = "ops-1".into();
    let (url, jwks) = serve_jwks(serde_json::json!({ "keys": [jwk] }).to_string()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        &[
            ("TENANCY_JWT_JWKS_URL", url),
            ("TENANCY_JWT_PRIVATE_KEY_FILE", path("ec256_private.pem")),
        ],
    );
    let h = Harness::start(c.clone(), dir).await;

    let token = h.login("acme", "bob").await;
    let me = h.get("/v1/me", &token).await;
    assert_eq!(me.status, 200, "{}", me.text);
    let with_kid = foreign_token(ec_key().with_kid("ops-1"), &c);
    assert_eq!(h.get("/v1/me", &with_kid).await.status, 200);
    let unknown_kid = foreign_token(ec_key().with_kid("ops-2"), &c);
    common::assert_problem(&h.get("/v1/me", &unknown_kid).await, 401);
    common::assert_problem(&h.get("/v1/me", &foreign_token(rsa_key(), &c)).await, 401);
    h.stop().await;
    jwks.abort();
}

async fn refused(keys: &[(&str, String)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), keys);
    match App::build(c).await {
        Ok(app) => {
            app.shutdown().await.ok();
            panic!("{keys:?} was accepted");
        }
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_keys_are_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let junk = junk.display().to_string();
    let missing = dir.path().join("missing.pem").display().to_string();

    for (keys, setting) in [
        (
            vec![("TENANCY_JWT_PUBLIC_KEY_FILE", junk.clone())],
            "TENANCY_JWT_PUBLIC_KEY_FILE",
        ),
        (
            vec![("TENANCY_JWT_PUBLIC_KEY_FILE", missing.clone())],
            "TENANCY_JWT_PUBLIC_KEY_FILE",
        ),
        (
            // A private key in place of the public one is not a public key.
            vec![("TENANCY_JWT_PUBLIC_KEY_FILE", path("ec256_private.pem"))],
            "TENANCY_JWT_PUBLIC_KEY_FILE",
        ),
        (
            vec![
                ("TENANCY_JWT_PUBLIC_KEY_FILE", path("ec256_public.pem")),
                ("TENANCY_JWT_PRIVATE_KEY_FILE", junk.clone()),
            ],
            "TENANCY_JWT_PRIVATE_KEY_FILE",
        ),
        (
            // A pair that does not belong together: tokens issued would be refused.
            vec![
                ("TENANCY_JWT_PUBLIC_KEY_FILE", path("ec256_public.pem")),
                ("TENANCY_JWT_PRIVATE_KEY_FILE", path("rsa_private.pem")),
            ],
            "TENANCY_JWT_PRIVATE_KEY_FILE",
        ),
        (
            vec![(
                "TENANCY_JWT_JWKS_URL",
                "ftp://keys.example/jwks.json".to_owned(),
            )],
            "TENANCY_JWT_JWKS_URL",
        ),
        (
            vec![
                (
                    "TENANCY_JWT_JWKS_URL",
                    "http://127.0.0.1:9/jwks.json".to_owned(),
                ),
                ("TENANCY_JWT_PRIVATE_KEY_FILE", missing.clone()),
            ],
            "TENANCY_JWT_PRIVATE_KEY_FILE",
        ),
    ] {
        let e = refused(&keys).await;
        assert!(e.contains(setting), "{keys:?}: {e}");
    }
}
