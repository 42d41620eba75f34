//! JWKS against a real local HTTP server: rotation (a new key appears, an old one is retired),
//! the unknown-`kid` refresh rate limit, provider outage with the circuit breaker, recovery,
//! cold start with the provider down, bad documents, and background refresh.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tenancy_auth::{Algorithm, BreakerState, JwksKeySet, JwtVerifier, SigningKey};
use tenancy_core::{
    Error, HealthCheck, HealthStatus, ManualClock, TokenRejection as R, TokenVerifier,
};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A JWKS endpoint whose document the test changes, and which it can stop and restart on the
/// same port.
struct JwksServer {
    addr: SocketAddr,
    doc: Arc<Mutex<(StatusCode, String)>>,
    hits: Arc<AtomicU64>,
    tasks: Option<JoinSet<()>>,
}

impl JwksServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut s = Self {
            addr: listener.local_addr().unwrap(),
            doc: Arc::new(Mutex::new((StatusCode::OK, r#"{"keys":[]}"#.into()))),
            hits: Arc::new(AtomicU64::new(0)),
            tasks: None,
        };
        s.serve(listener);
        s
    }

    fn serve(&mut self, listener: TcpListener) {
        let doc = self.doc.clone();
        let hits = self.hits.clone();
        let mut tasks = JoinSet::new();
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let conns_for_drop = conns.clone();
        tasks.spawn(async move {
            let _keep = conns_for_drop;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let doc = doc.clone();
                let hits = hits.clone();
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let (status, body) = doc.lock().unwrap().clone();
                    hits.fetch_add(1, Ordering::SeqCst);
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                conns.lock().unwrap().spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        self.tasks = Some(tasks);
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn set(&self, keys: &[&SigningKey]) {
        let keys: Vec<_> = keys
            .iter()
            .map(|k| k.public_jwk().unwrap().unwrap())
            .collect();
        *self.doc.lock().unwrap() = (StatusCode::OK, json!({ "keys": keys }).to_string());
    }

    fn set_raw(&self, status: StatusCode, body: &str) {
        *self.doc.lock().unwrap() = (status, body.to_owned());
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops listening and drops every open connection.
    async fn stop(&mut self) {
        if let Some(mut t) = self.tasks.take() {
            t.shutdown().await;
        }
        // Connection tasks die with their JoinSet, dropped with the accept task.
        tokio::task::yield_now().await;
    }

    async fn restart(&mut self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }
}

fn rsa_key(file: &str, kid: &str) -> SigningKey {
    SigningKey::rsa_pem(&key_bytes(file), Algorithm::RS256)
        .unwrap()
        .with_kid(kid)
}

fn ec_key(kid: &str) -> SigningKey {
    SigningKey::ec_pem(&key_bytes("ec256_private.pem"), Algorithm::ES256)
        .unwrap()
        .with_kid(kid)
}

fn mint(key: &SigningKey, clock: &ManualClock) -> String {
    mint_for(key, clock, tenancy_auth::DEFAULT_ACCESS_TTL)
}

/// A token valid for `ttl`.
fn mint_for(key: &SigningKey, clock: &ManualClock, ttl: Duration) -> String {
    tenancy_auth::TokenIssuer::builder(key.clone(), ISS, AUD)
        .clock(shared(clock))
        .access_ttl(ttl)
        .build()
        .unwrap()
        .access_token(
            &"acme".parse().unwrap(),
            &"alice".parse().unwrap(),
            &"user".parse().unwrap(),
            &Default::default(),
            None,
        )
        .unwrap()
}

fn jwks(server: &JwksServer, clock: &ManualClock) -> JwksKeySet {
    JwksKeySet::builder(server.url())
        .allow_plain_http()
        .background_refresh(false)
        .refresh_interval(Duration::from_secs(300))
        .min_refresh_interval(Duration::from_secs(30))
        .failure_threshold(3)
        .open_for(Duration::from_secs(60))
        .fetch_timeout(Duration::from_secs(2))
        .clock(shared(clock))
        .build()
        .unwrap()
}

fn verifier(source: &JwksKeySet, clock: &ManualClock) -> JwtVerifier {
    JwtVerifier::builder()
        .issuer(ISS, source.clone())
        .audience(AUD)
        .algorithms([Algorithm::RS256, Algorithm::ES256])
        .clock(shared(clock))
        .build()
        .unwrap()
}

fn reason(e: Error) -> R {
    match e {
        Error::Rejected(r) => r,
        other => panic!("expected a rejection, got {other}"),
    }
}

/// A provider serving `keys`, a source on it (refreshed every 300 s, unknown kids at most
/// every 30 s) and a verifier on that source, on one manual clock.
struct Provider {
    server: JwksServer,
    clock: ManualClock,
    source: JwksKeySet,
    v: JwtVerifier,
}

async fn provider(keys: &[&SigningKey]) -> Provider {
    let server = JwksServer::start().await;
    let clock = ManualClock::new();
    server.set(keys);
    let source = jwks(&server, &clock);
    let v = verifier(&source, &clock);
    Provider {
        server,
        clock,
        source,
        v,
    }
}

/// Two RSA keys under the kids `a` and `b`.
fn keys_a_b() -> (SigningKey, SigningKey) {
    (
        rsa_key("rsa_private.pem", "a"),
        rsa_key("rsa2_private.pem", "b"),
    )
}

#[tokio::test]
async fn rotation_new_key_appears_old_key_retires() {
    let (a, b) = keys_a_b();
    let Provider {
        server,
        clock,
        source,
        v,
    } = provider(&[&a]).await;

    let token_a = mint(&a, &clock);
    // JWKS keys may have to be fetched: nothing is decided without waiting, nothing fetched.
    assert!(v.try_verify(&token_a).is_none());
    assert_eq!((server.hits(), v.cache_stats().misses), (0, 0));
    v.verify(&token_a).await.unwrap();
    assert_eq!(server.hits(), 1, "first use fetches once");
    assert_eq!(v.cache_stats().misses, 1, "the miss is counted once");
    // Verified once, the token is answered from the cache at once.
    assert!(v.try_verify(&token_a).is_some_and(|r| r.is_ok()));
    v.verify(&token_a).await.unwrap();
    assert_eq!(server.hits(), 1, "cached keys are reused");

    // The provider adds key b; a token signed by it triggers one refresh and verifies.
    server.set(&[&a, &b]);
    let token_b = mint(&b, &clock);
    v.verify(&token_b).await.unwrap();
    assert_eq!(server.hits(), 2);

    // Random kids within the rate-limit interval cost the provider nothing more.
    for i in 0..50 {
        let mut h = jsonwebtoken::Header::new(Algorithm::RS256);
        h.kid = Some(format!("random-{i}"));
        let t = jsonwebtoken::encode(&h, &json!({}), &encoding_key(Algorithm::RS256)).unwrap();
        assert_eq!(reason(v.verify(&t).await.unwrap_err()), R::UnknownKey);
    }
    assert_eq!(server.hits(), 2, "unknown kids hammered the provider");

    // Key a is retired. After the next refresh, token_a is refused, even though it was
    // cached as valid.
    server.set(&[&b]);
    clock.advance(Duration::from_secs(301));
    v.verify(&token_b).await.unwrap(); // stale: refreshes inline
    assert_eq!(server.hits(), 3);
    assert!(source.cached().unwrap().get("a").is_none());
    assert_eq!(reason(v.verify(&token_a).await.unwrap_err()), R::UnknownKey);
    v.verify(&token_b).await.unwrap();

    // An ES256 key joins the set alongside RSA.
    let e = ec_key("e");
    server.set(&[&b, &e]);
    clock.advance(Duration::from_secs(31));
    v.verify(&mint(&e, &clock)).await.unwrap();
}

/// A stale set and a kid the provider does not publish: one fetch, a refusal, and the fetch
/// lock free again (it was once held across a second wait for itself, hanging the request and
/// every later refresh).
#[tokio::test]
async fn a_stale_set_and_an_unknown_kid_fetch_once_and_answer() {
    let (a, b) = keys_a_b();
    let Provider {
        server, clock, v, ..
    } = provider(&[&a]).await;
    v.verify(&mint(&a, &clock)).await.unwrap();
    assert_eq!(server.hits(), 1);

    clock.advance(Duration::from_secs(301));
    let mut h = jsonwebtoken::Header::new(Algorithm::RS256);
    h.kid = Some("unknown".into());
    let t = jsonwebtoken::encode(&h, &json!({}), &encoding_key(Algorithm::RS256)).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), v.verify(&t))
        .await
        .expect("a stale set and an unknown kid hung the verifier");
    assert_eq!(reason(answer.unwrap_err()), R::UnknownKey);
    assert_eq!(server.hits(), 2, "the stale set is fetched once, not twice");

    // Nothing holds the lock: the next refresh (a new kid) goes through.
    server.set(&[&a, &b]);
    clock.advance(Duration::from_secs(31));
    let next = tokio::time::timeout(Duration::from_secs(10), v.verify(&mint(&b, &clock)))
        .await
        .expect("the fetch lock stayed held");
    next.unwrap();
    assert_eq!(server.hits(), 3);
}

/// The provider replaces the key behind a kid (a compromised key rotated in place): tokens
/// verified under the old key are checked again, not served from the cache.
#[tokio::test]
async fn a_key_replaced_under_the_same_kid_empties_the_cache() {
    let (old, new) = (
        rsa_key("rsa_private.pem", "k1"),
        rsa_key("rsa2_private.pem", "k1"),
    );
    let Provider {
        server, clock, v, ..
    } = provider(&[&old]).await;
    // Valid beyond the refresh interval: only the key change can refuse it.
    let token_old = mint_for(&old, &clock, Duration::from_secs(3600));
    v.verify(&token_old).await.unwrap();
    assert!(
        v.try_verify(&token_old).is_some_and(|r| r.is_ok()),
        "cached"
    );

    server.set(&[&new]);
    clock.advance(Duration::from_secs(301));
    v.verify(&mint(&new, &clock)).await.unwrap(); // a miss on a stale set: refreshes
    assert_eq!(server.hits(), 2);
    assert!(
        v.try_verify(&token_old).is_none(),
        "served from the cache after the key changed"
    );
    assert_eq!(
        reason(v.verify(&token_old).await.unwrap_err()),
        R::BadSignature
    );
}

#[tokio::test]
async fn outage_serves_cached_keys_opens_the_breaker_and_recovers() {
    let mut server = JwksServer::start().await;
    let clock = ManualClock::new();
    let (a, b) = (
        rsa_key("rsa_private.pem", "a"),
        rsa_key("rsa2_private.pem", "b"),
    );
    server.set(&[&a]);
    let source = jwks(&server, &clock);
    let v = verifier(&source, &clock);
    let token_a = mint(&a, &clock);
    v.verify(&token_a).await.unwrap();
    assert_eq!(source.health().status, HealthStatus::Up);
    assert_eq!(v.check().await.status, HealthStatus::Up);

    server.stop().await;
    // Each stale verification tries a refresh; each fails; tokens keep verifying.
    for i in 0..3 {
        clock.advance(Duration::from_secs(301));
        let fresh = mint(&a, &clock);
        v.verify(&fresh)
            .await
            .unwrap_or_else(|e| panic!("attempt {i}: {e}"));
    }
    let (fetches, failures) = source.fetch_counts();
    assert_eq!((fetches, failures), (4, 3));
    assert!(
        matches!(source.breaker(), BreakerState::Open { .. }),
        "{:?}",
        source.breaker()
    );
    let h = v.check().await;
    assert_eq!(h.status, HealthStatus::Degraded, "{h:?}");
    assert!(h.detail.unwrap_or_default().contains("cached keys"));

    // While open, nothing is sent, even for unknown kids, and cached keys still verify.
    clock.advance(Duration::from_secs(31));
    let token_b = mint(&b, &clock);
    assert_eq!(reason(v.verify(&token_b).await.unwrap_err()), R::UnknownKey);
    v.verify(&mint(&a, &clock)).await.unwrap();
    assert_eq!(
        source.fetch_counts().0,
        4,
        "requests sent while the breaker was open"
    );
    assert!(matches!(
        source.refresh().await,
        Err(tenancy_auth::Error::CircuitOpen)
    ));

    // The provider comes back with a rotated set; after the open period the next use is the
    // trial request, which closes the breaker.
    server.set(&[&a, &b]);
    server.restart().await;
    clock.advance(Duration::from_secs(61));
    assert_eq!(source.breaker(), BreakerState::HalfOpen);
    v.verify(&token_b).await.unwrap();
    assert_eq!(source.breaker(), BreakerState::Closed);
    assert_eq!(v.check().await.status, HealthStatus::Up);
    assert!(server.hits() >= 2);
}

#[tokio::test]
async fn cold_start_with_the_provider_down_is_unavailable_not_rejected() {
    let mut server = JwksServer::start().await;
    let clock = ManualClock::new();
    let a = rsa_key("rsa_private.pem", "a");
    server.set(&[&a]);
    server.stop().await;
    let source = jwks(&server, &clock);
    let v = verifier(&source, &clock);
    let token = mint(&a, &clock);
    let e = v.verify(&token).await.unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)), "{e}");
    assert!(e.is_retryable());
    assert_eq!(v.check().await.status, HealthStatus::Down);

    server.restart().await;
    v.verify(&token).await.unwrap();
    assert_eq!(v.check().await.status, HealthStatus::Up);
}

#[tokio::test]
async fn bad_documents_never_replace_a_good_set() {
    let server = JwksServer::start().await;
    let clock = ManualClock::new();
    let a = rsa_key("rsa_private.pem", "a");
    server.set(&[&a]);
    let source = jwks(&server, &clock);
    source.refresh().await.unwrap();
    for (status, body) in [
        (StatusCode::OK, "not json"),
        (StatusCode::OK, r#"{"keys":[]}"#),
        (
            StatusCode::OK,
            r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"tiny"}]}"#,
        ),
        (StatusCode::INTERNAL_SERVER_ERROR, "{}"),
    ] {
        server.set_raw(status, body);
        clock.advance(Duration::from_secs(61));
        assert!(source.refresh().await.is_err(), "{status} {body}");
        assert!(source.cached().unwrap().get("a").is_some());
    }
    // A document with one usable key among unusable ones is accepted; the others are skipped.
    let jwk = a.public_jwk().unwrap().unwrap();
    server.set_raw(
        StatusCode::OK,
        &json!({"keys": [jwk, {"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}, {"kty":"XYZ"}]})
            .to_string(),
    );
    clock.advance(Duration::from_secs(61));
    let set = source.refresh().await.unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(source.health().figures.get("skipped_keys"), Some(&2));
}

#[tokio::test]
async fn plain_http_needs_an_explicit_opt_in() {
    let e = JwksKeySet::builder("http://127.0.0.1:1/jwks")
        .build()
        .unwrap_err();
    assert!(matches!(e, tenancy_auth::Error::Config(_)));
    let e = JwksKeySet::builder("ftp://example/jwks")
        .allow_plain_http()
        .build()
        .unwrap_err();
    assert!(matches!(e, tenancy_auth::Error::Config(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_refresh_picks_up_new_keys() {
    let server = JwksServer::start().await;
    let (a, b) = (
        rsa_key("rsa_private.pem", "a"),
        rsa_key("rsa2_private.pem", "b"),
    );
    server.set(&[&a]);
    let source = JwksKeySet::builder(server.url())
        .allow_plain_http()
        .refresh_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    source.refresh().await.unwrap();
    server.set(&[&b]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while source.cached().unwrap().get("b").is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "background refresh did not run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(source.cached().unwrap().get("a").is_none());
    // Dropping the last handle stops the task: no more requests reach the server.
    drop(source);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hits = server.hits();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.hits(), hits, "background task outlived its key set");
}

/// A JWKS is public: an HMAC secret published in it must never become a key, or every reader
/// of the document could mint tokens for the issuer.
#[tokio::test]
async fn a_published_hmac_secret_is_skipped_not_trusted() {
    let a = rsa_key("rsa_private.pem", "a");
    let secret = b"a-shared-secret-that-is-long-enough-for-hs256";
    let server = JwksServer::start().await;
    let clock = ManualClock::new();
    server.set_raw(
        StatusCode::OK,
        &json!({"keys": [
            a.public_jwk().unwrap().unwrap(),
            {"kty": "oct", "kid": "shared", "alg": "HS256", "k": b64(secret)},
            {"kty": "oct", "k": b64(secret)},
        ]})
        .to_string(),
    );
    let source = jwks(&server, &clock);
    // Even with HS256 allowed, the published secret verifies nothing.
    let v = JwtVerifier::builder()
        .issuer(ISS, source.clone())
        .audience(AUD)
        .algorithms([Algorithm::RS256, Algorithm::HS256])
        .clock(shared(&clock))
        .build()
        .unwrap();
    v.verify(&mint(&a, &clock)).await.unwrap();
    let keys = source.cached().unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys.get("shared").is_none());
    assert_eq!(source.health().figures.get("skipped_keys"), Some(&2));
    for kid in [Some("shared"), None] {
        let forger = SigningKey::hmac(secret, Algorithm::HS256).unwrap();
        let forger = match kid {
            Some(kid) => forger.with_kid(kid),
            None => forger,
        };
        let forged = mint(&forger, &clock);
        assert_eq!(
            reason(v.verify(&forged).await.unwrap_err()),
            R::UnknownKey,
            "a token signed with the published secret (kid {kid:?})"
        );
    }

    // A document of secrets only holds no usable key: a failed fetch, the good set kept.
    server.set_raw(
        StatusCode::OK,
        &json!({"keys": [{"kty": "oct", "kid": "shared", "k": b64(secret)}]}).to_string(),
    );
    assert!(matches!(
        source.refresh().await,
        Err(tenancy_auth::Error::InvalidKeySet(_))
    ));
    assert!(source.cached().unwrap().get("a").is_some());
}

/// Without `.algorithms()`, a JWKS issuer's public-key algorithms are allowed beside the
/// static keys' own: a static HS256 issuer does not lock out a tenant's RS256 provider.
#[tokio::test]
async fn jwks_issuers_allow_public_key_algorithms_by_default() {
    let a = rsa_key("rsa_private.pem", "a");
    let e = ec_key("e");
    let server = JwksServer::start().await;
    let clock = ManualClock::new();
    server.set(&[&a, &e]);
    let source = jwks(&server, &clock);
    let (own_key, own_vk) = signing(Algorithm::HS256);
    const OWN: &str = "https://own.example";
    let v = JwtVerifier::builder()
        .issuer(OWN, own_vk)
        .tenant_issuer(ISS, source.clone(), ["acme".parse().unwrap()])
        .audience(AUD)
        .clock(shared(&clock))
        .build()
        .unwrap();
    let own = tenancy_auth::TokenIssuer::builder(own_key, OWN, AUD)
        .clock(shared(&clock))
        .build()
        .unwrap()
        .access_token(
            &"globex".parse().unwrap(),
            &"bob".parse().unwrap(),
            &"user".parse().unwrap(),
            &Default::default(),
            None,
        )
        .unwrap();
    v.verify(&own).await.unwrap();
    v.verify(&mint(&a, &clock))
        .await
        .expect("an RS256 token of the JWKS issuer");
    v.verify(&mint(&e, &clock))
        .await
        .expect("an ES256 token of the JWKS issuer");
    // HMAC is not widened: only the static key's HS256 is allowed.
    let hs384 = token(Algorithm::HS384, &claims(now(&clock)));
    assert_eq!(
        reason(v.verify(&hs384).await.unwrap_err()),
        R::AlgorithmNotAllowed
    );
    // Each key still verifies only its own algorithm: RSA key `a` under PS256 is refused.
    let ps = SigningKey::rsa_pem(&key_bytes("rsa_private.pem"), Algorithm::PS256)
        .unwrap()
        .with_kid("a");
    assert_eq!(
        reason(v.verify(&mint(&ps, &clock)).await.unwrap_err()),
        R::AlgorithmNotAllowed
    );

    // A verifier on a JWKS alone builds and verifies without `.algorithms()` too.
    let only = JwtVerifier::builder()
        .issuer(ISS, source)
        .audience(AUD)
        .clock(shared(&clock))
        .build()
        .expect("a JWKS-only verifier needs no algorithm list");
    only.verify(&mint(&e, &clock)).await.unwrap();
}

/// A key published without a `kid` is told apart by its material: a refresh that serves it
/// unchanged retires nothing (the verification cache is kept); replacing it retires it.
#[tokio::test]
async fn a_key_without_kid_is_retired_only_when_it_changes() {
    let plain = SigningKey::rsa_pem(&key_bytes("rsa_private.pem"), Algorithm::RS256).unwrap();
    let other = SigningKey::rsa_pem(&key_bytes("rsa2_private.pem"), Algorithm::RS256).unwrap();
    let Provider {
        server,
        clock,
        source,
        v,
    } = provider(&[&plain]).await;
    let t = mint_for(&plain, &clock, Duration::from_secs(3600));
    v.verify(&t).await.unwrap();
    assert!(v.try_verify(&t).is_some_and(|r| r.is_ok()), "cached");

    clock.advance(Duration::from_secs(301));
    source.refresh().await.unwrap();
    assert_eq!(server.hits(), 2);
    assert!(
        v.try_verify(&t).is_some_and(|r| r.is_ok()),
        "the same kid-less key was counted as retired: the cache was emptied"
    );

    server.set(&[&other]);
    clock.advance(Duration::from_secs(301));
    source.refresh().await.unwrap();
    assert!(
        v.try_verify(&t).is_none(),
        "served from the cache after the kid-less key changed"
    );
    assert_eq!(reason(v.verify(&t).await.unwrap_err()), R::BadSignature);
}

/// A document whose only keys load but could verify nothing (a modulus over 4096 bits, an
/// even exponent, an EC point off its curve, bytes that are no Ed25519 point) is a failed
/// fetch: the good set stays, and its tokens keep verifying.
#[tokio::test]
async fn a_document_of_unusable_keys_never_replaces_a_good_set() {
    let a = rsa_key("rsa_private.pem", "a");
    let Provider {
        server,
        clock,
        source,
        v,
    } = provider(&[&a]).await;
    let token = mint_for(&a, &clock, Duration::from_secs(3600));
    v.verify(&token).await.unwrap();

    let good = a.public_jwk().unwrap().unwrap();
    let mut big = vec![0x5a_u8; 1024];
    big[0] = 0xc5;
    big[1023] = 0x01;
    let mut one = [0u8; 32];
    one[31] = 1;
    let mut y2 = [0u8; 32];
    y2[0] = 2;
    for (what, key) in [
        (
            "8192-bit modulus",
            json!({"kty": "RSA", "kid": "big", "n": b64(&big), "e": "AQAB"}),
        ),
        (
            "even exponent",
            json!({"kty": "RSA", "kid": "even", "n": good["n"], "e": b64(&[1, 0, 0])}),
        ),
        (
            "EC point off its curve",
            json!({"kty": "EC", "kid": "ec", "crv": "P-256", "x": b64(&one), "y": b64(&one)}),
        ),
        (
            "no Ed25519 point",
            json!({"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": b64(&y2)}),
        ),
    ] {
        server.set_raw(StatusCode::OK, &json!({ "keys": [key] }).to_string());
        clock.advance(Duration::from_secs(61));
        assert!(
            matches!(
                source.refresh().await,
                Err(tenancy_auth::Error::InvalidKeySet(_))
            ),
            "{what}: the document was taken as a key set"
        );
        let cached = source.cached().unwrap();
        assert!(
            cached.get("a").is_some() && cached.len() == 1,
            "{what}: the good set was replaced"
        );
    }
    assert!(
        v.try_verify(&token).is_some_and(|r| r.is_ok()),
        "the cache was emptied"
    );
    v.verify(&mint(&a, &clock)).await.unwrap();
}

/// The provider rotates in a new key, then fails. A token signed by the new key triggers a
/// refresh that fails: the answer is the retryable `Unavailable` (as on a cold start with the
/// same outage), not `UnknownKey`, which would make the client throw a valid token away. When
/// no request is sent for the token (the unknown-kid rate limit, the open breaker), the old
/// set decides: `UnknownKey`.
#[tokio::test]
async fn a_failed_refresh_for_an_unknown_kid_is_unavailable_not_unknown() {
    let (a, b) = keys_a_b();
    let Provider {
        mut server,
        clock,
        source,
        v,
    } = provider(&[&a]).await;
    v.verify(&mint(&a, &clock)).await.unwrap();
    assert_eq!(server.hits(), 1);

    let unavailable = |r: Result<tenancy_core::Claims, Error>, what: &str| match r {
        Err(e @ Error::Unavailable(_)) => assert!(e.is_retryable(), "{what}: {e}"),
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    };

    // An HTTP error from the provider.
    server.set_raw(StatusCode::SERVICE_UNAVAILABLE, "{}");
    let token_b = mint(&b, &clock);
    unavailable(v.verify(&token_b).await, "HTTP 503");
    assert_eq!(server.hits(), 2, "one request for the unknown kid");
    // Within the rate-limit interval nothing is sent: the old set decides.
    assert_eq!(reason(v.verify(&token_b).await.unwrap_err()), R::UnknownKey);
    assert_eq!(server.hits(), 2);

    // A transport error: nobody listens. This failure is the third in a row and opens the
    // breaker; the request was still sent for this token.
    server.stop().await;
    for attempt in 0..2 {
        clock.advance(Duration::from_secs(31));
        unavailable(
            v.verify(&token_b).await,
            &format!("connection refused {attempt}"),
        );
    }
    assert!(matches!(source.breaker(), BreakerState::Open { .. }));
    // Breaker open: nothing is sent, the token is unknown to the set we have.
    clock.advance(Duration::from_secs(31));
    assert_eq!(reason(v.verify(&token_b).await.unwrap_err()), R::UnknownKey);
    assert_eq!(source.fetch_counts(), (4, 3));
    // Cached keys verify throughout.
    v.verify(&mint(&a, &clock)).await.unwrap();

    // The provider is back with the rotated set: the same token verifies.
    server.set(&[&a, &b]);
    server.restart().await;
    clock.advance(Duration::from_secs(61));
    v.verify(&token_b).await.unwrap();
}

/// One kid may name keys of different algorithms (RFC 7517 4.5): a token's `alg` picks its
/// key. Two different keys of one algorithm under one kid cannot be told apart: neither
/// verifies, and the rest of the set does. A key published twice is one key.
#[tokio::test]
async fn a_kid_naming_two_keys_is_told_apart_by_alg_or_not_used() {
    let rsa = rsa_key("rsa_private.pem", "k");
    let ec = ec_key("k");
    let Provider {
        server,
        clock,
        source,
        v,
    } = provider(&[&rsa, &ec]).await;
    v.verify(&mint(&rsa, &clock)).await.expect("RS256 under k");
    v.verify(&mint(&ec, &clock)).await.expect("ES256 under k");
    assert_eq!(source.health().figures.get("skipped_keys"), Some(&0));

    // The same kid and algorithm for two RSA keys, beside a good key and a repeated one.
    let (d1, d2) = (
        rsa_key("rsa_private.pem", "d"),
        rsa_key("rsa2_private.pem", "d"),
    );
    let good = ec_key("good");
    server.set(&[&d1, &good, &d2, &good]);
    let refreshed = source.refresh().await;
    let keys = refreshed.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(source.health().figures.get("skipped_keys"), Some(&2));
    for key in [&d1, &d2] {
        assert_eq!(
            reason(v.verify(&mint(key, &clock)).await.unwrap_err()),
            R::UnknownKey
        );
    }
    v.verify(&mint(&good, &clock)).await.expect("the good key");
}
