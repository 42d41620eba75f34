//! Positive paths: every algorithm verifies, key formats load, claims come through.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::json;
use tenancy_auth::{Algorithm, JwtVerifier, KeySet, VerifyKey};
use tenancy_core::{TokenRejection, TokenVerifier};

const ALGS: [Algorithm; 12] = tenancy_auth::key::ALL_ALGORITHMS;

fn verifier_all(clock: &tenancy_core::ManualClock) -> JwtVerifier {
    let mut keys = KeySet::new();
    for alg in ALGS {
        keys.insert(signing(alg).1);
    }
    JwtVerifier::builder()
        .issuer(ISS, keys)
        .audience(AUD)
        .clock(shared(clock))
        .build()
        .unwrap()
}

#[tokio::test]
async fn every_algorithm_verifies() {
    let clock = clock();
    let v = verifier_all(&clock);
    for alg in ALGS {
        let t = token(alg, &claims(now(&clock)));
        let c = v
            .verify_uncached(&t)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(c.tenant_id.as_str(), "acme");
        assert_eq!(c.user_id.as_str(), "alice");
        assert!(c.permissions.allows(&"records:write".parse().unwrap()));
    }
}

#[tokio::test]
async fn issuer_tokens_verify_for_each_signing_algorithm() {
    let clock = clock();
    let v = verifier_all(&clock);
    for alg in ALGS {
        let (sk, _) = signing(alg);
        let issuer = tenancy_auth::TokenIssuer::builder(sk, ISS, AUD)
            .clock(shared(&clock))
            .build()
            .unwrap();
        let t = issuer
            .access_token(
                &"acme".parse().unwrap(),
                &"bob".parse().unwrap(),
                &"tenant_admin".parse().unwrap(),
                &["audit:read".parse().unwrap()].into_iter().collect(),
                None,
            )
            .unwrap();
        let c = v
            .verify(&t)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(c.user_id.as_str(), "bob");
        assert_eq!(c.exp, now(&clock) + 300);
        assert!(c.jti.is_some());
    }
}

#[tokio::test]
async fn keys_load_from_pem_der_and_jwk() {
    let clock = clock();
    let rsa_der = VerifyKey::rsa_der(&key_bytes("rsa_public.der"), Algorithm::RS256).unwrap();
    let ec_der = VerifyKey::ec_der(&key_bytes("ec256_public.der"), Algorithm::ES256).unwrap();
    let ed_der = VerifyKey::ed_der(&key_bytes("ed_public.der")).unwrap();
    let rsa_pem = VerifyKey::rsa_pem(&key_bytes("rsa_public.pem"), Algorithm::RS256).unwrap();
    let ec_pem = VerifyKey::ec_pem(&key_bytes("ec256_public.pem"), Algorithm::ES256).unwrap();
    let ed_pem = VerifyKey::ed_pem(&key_bytes("ed_public.pem")).unwrap();
    for (alg, keys) in [
        (Algorithm::RS256, [rsa_der, rsa_pem]),
        (Algorithm::ES256, [ec_der, ec_pem]),
        (Algorithm::EdDSA, [ed_der, ed_pem]),
    ] {
        for k in keys {
            let k = k.with_kid(format!("k-{}", alg_name(alg)));
            let v = JwtVerifier::builder()
                .issuer(ISS, k)
                .audience(AUD)
                .clock(shared(&clock))
                .build()
                .unwrap();
            v.verify(&token(alg, &claims(now(&clock)))).await.unwrap();
        }
    }
    // JWKs, public halves exported by the signing keys.
    for alg in [
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        let (sk, _) = signing(alg);
        let jwk = sk.public_jwk().unwrap().unwrap();
        let k = VerifyKey::from_jwk(jwk.to_string().as_bytes()).unwrap();
        assert_eq!(k.algorithm(), alg);
        assert_eq!(k.kid(), sk.kid());
        let v = JwtVerifier::builder()
            .issuer(ISS, k)
            .audience(AUD)
            .clock(shared(&clock))
            .build()
            .unwrap();
        v.verify(&token(alg, &claims(now(&clock)))).await.unwrap();
    }
}

#[test]
fn weak_and_mismatched_keys_are_refused_at_load() {
    use tenancy_auth::Error;
    let weak = |r: Result<VerifyKey, Error>| matches!(r, Err(Error::WeakKey { .. }));
    assert!(weak(VerifyKey::hmac(&[1; 31], Algorithm::HS256)));
    assert!(weak(VerifyKey::hmac(&[1; 47], Algorithm::HS384)));
    assert!(weak(VerifyKey::hmac(&[1; 63], Algorithm::HS512)));
    assert!(weak(VerifyKey::hmac(&[1; 64], Algorithm::RS256)));
    assert!(weak(VerifyKey::rsa_pem(
        &key_bytes("rsa1024_public.pem"),
        Algorithm::RS256
    )));
    assert!(weak(VerifyKey::rsa_pem(
        &key_bytes("rsa_public.pem"),
        Algorithm::HS256
    )));
    assert!(weak(VerifyKey::ec_pem(
        &key_bytes("ec256_public.pem"),
        Algorithm::ES384
    )));
    assert!(matches!(
        VerifyKey::rsa_pem(b"not a pem", Algorithm::RS256),
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        VerifyKey::from_jwk(br#"{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}"#),
        Err(Error::InvalidKey { .. })
    ));
}

#[test]
fn configuration_mistakes_are_refused() {
    use tenancy_auth::Error;
    let k = || signing(Algorithm::HS256).1;
    assert!(matches!(
        JwtVerifier::builder().audience(AUD).build(),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        JwtVerifier::builder().issuer(ISS, k()).build(),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        JwtVerifier::builder()
            .issuer(ISS, k())
            .issuer(ISS, k())
            .audience(AUD)
            .build(),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        JwtVerifier::builder()
            .issuer(ISS, k())
            .audience(AUD)
            .require_session()
            .build(),
        Err(Error::Config(_))
    ));
}

/// Settings that would silently weaken a check are refused at build, with a message that
/// names them: a leeway over 5 minutes, an empty issuer or audience.
#[test]
fn settings_that_weaken_checks_are_refused() {
    use std::time::Duration;
    use tenancy_auth::Error;
    let k = || signing(Algorithm::HS256).1;
    let refused = |b: tenancy_auth::JwtVerifierBuilder, what: &str| match b.build() {
        Err(Error::Config(m)) => assert!(m.contains(what), "{what}: {m}"),
        other => panic!("{what}: {other:?}"),
    };
    let good = || JwtVerifier::builder().issuer(ISS, k()).audience(AUD);
    for leeway in [
        Duration::from_secs(301),
        Duration::from_millis(300_001),
        Duration::MAX,
    ] {
        refused(good().leeway(leeway), "leeway");
    }
    good().leeway(Duration::from_secs(300)).build().unwrap();
    refused(
        JwtVerifier::builder().issuer("", k()).audience(AUD),
        "issuer must not be empty",
    );
    refused(
        good().tenant_issuer("", k(), ["acme".parse().unwrap()]),
        "issuer must not be empty",
    );
    refused(
        JwtVerifier::builder().issuer(ISS, k()).audience(""),
        "audience must not be empty",
    );
    refused(good().audience(""), "audience must not be empty");
}

#[tokio::test]
async fn leeway_applies_to_exp_and_nbf() {
    let clock = clock();
    let v = JwtVerifier::builder()
        .issuer(ISS, signing(Algorithm::HS256).1)
        .audience(AUD)
        .leeway(std::time::Duration::from_secs(10))
        .cache_capacity(0)
        .clock(shared(&clock))
        .build()
        .unwrap();
    let n = now(&clock);
    let mut c = claims(n);
    c.insert("exp".into(), (n - 9).into());
    v.verify(&token(Algorithm::HS256, &c)).await.unwrap();
    c.insert("exp".into(), (n - 10).into());
    let e = v.verify(&token(Algorithm::HS256, &c)).await.unwrap_err();
    assert!(
        matches!(e, tenancy_core::Error::Rejected(TokenRejection::Expired)),
        "{e}"
    );
    let mut c = claims(n);
    c.insert("nbf".into(), (n + 10).into());
    v.verify(&token(Algorithm::HS256, &c)).await.unwrap();
    c.insert("nbf".into(), (n + 11).into());
    let e = v.verify(&token(Algorithm::HS256, &c)).await.unwrap_err();
    assert!(
        matches!(
            e,
            tenancy_core::Error::Rejected(TokenRejection::NotYetValid)
        ),
        "{e}"
    );
}

/// A caching HS256 verifier without leeway, and a token of it that expires in 60 s.
fn cached_verifier_and_token(clock: &tenancy_core::ManualClock) -> (JwtVerifier, String) {
    let v = JwtVerifier::builder()
        .issuer(ISS, signing(Algorithm::HS256).1)
        .audience(AUD)
        .leeway(std::time::Duration::ZERO)
        .clock(shared(clock))
        .build()
        .unwrap();
    let n = now(clock);
    let mut c = claims(n);
    c.insert("exp".into(), (n + 60).into());
    (v, token(Algorithm::HS256, &c))
}

#[tokio::test]
async fn the_cache_serves_repeats_and_never_past_exp() {
    let clock = clock();
    let (v, t) = cached_verifier_and_token(&clock);
    v.verify(&t).await.unwrap();
    for _ in 0..5 {
        v.verify(&t).await.unwrap();
    }
    let s = v.cache_stats();
    assert_eq!((s.entries, s.hits, s.misses), (1, 5, 1));
    clock.advance(std::time::Duration::from_secs(59));
    v.verify(&t).await.unwrap();
    assert_eq!(v.cache_stats().hits, 6);
    clock.advance(std::time::Duration::from_secs(1));
    let e = v.verify(&t).await.unwrap_err();
    assert!(
        matches!(e, tenancy_core::Error::Rejected(TokenRejection::Expired)),
        "{e}"
    );
    assert_eq!(v.cache_stats().entries, 0, "an expired token stayed cached");
    v.clear_cache();
}

#[tokio::test]
async fn try_verify_answers_at_once_under_static_keys_and_counts_once() {
    let clock = clock();
    let (v, t) = cached_verifier_and_token(&clock);
    // Static keys: a token not seen yet is verified at once, counted as one miss and cached.
    let first = v.try_verify(&t).expect("static keys").unwrap();
    let s = v.cache_stats();
    assert_eq!((s.entries, s.hits, s.misses), (1, 0, 1));
    // Then the cached claims themselves, counted as one hit.
    let again = v.try_verify(&t).expect("a cached token").unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    let awaited = v.verify_shared(&t).await.unwrap();
    assert!(Arc::ptr_eq(&first, &awaited));
    let s = v.cache_stats();
    assert_eq!((s.hits, s.misses), (2, 1));
    // Refusals are `verify_shared`'s own.
    for bad in ["not-a-token", "a.b.c", &"x".repeat(20_000)] {
        let now = v.try_verify(bad).expect("decided at once").unwrap_err();
        let later = v.verify_shared(bad).await.unwrap_err();
        assert_eq!(
            format!("{now:?}"),
            format!("{later:?}"),
            "{}",
            &bad[..bad.len().min(20)]
        );
    }
    // Never past `exp`.
    clock.advance(std::time::Duration::from_secs(60));
    let e = v.try_verify(&t).expect("decided at once").unwrap_err();
    assert!(
        matches!(e, tenancy_core::Error::Rejected(TokenRejection::Expired)),
        "{e}"
    );
    // Without a cache, the same at once, and nothing is counted.
    let uncached = JwtVerifier::builder()
        .issuer(ISS, signing(Algorithm::HS256).1)
        .audience(AUD)
        .clock(shared(&clock))
        .cache_capacity(0)
        .build()
        .unwrap();
    let t = token(Algorithm::HS256, &claims(now(&clock)));
    let at_once = uncached.try_verify(&t).expect("static keys").unwrap();
    assert_eq!(*at_once, uncached.verify(&t).await.unwrap());
    assert_eq!(uncached.cache_stats(), tenancy_auth::CacheStats::default());
}

/// Most libraries write a `kid` into every token, while a deployment often configures a single
/// key without one: a `kid` that no key carries falls back to the keys without a `kid` bound to
/// the header's `alg`. A `kid` that names a key still matches that key only.
#[tokio::test]
async fn an_unknown_kid_falls_back_to_keys_without_a_kid() {
    let clock = clock();
    let n = now(&clock);
    let mut secret = HMAC_SECRET.to_vec();
    secret.resize(64, b'x');
    let plain_hs = VerifyKey::hmac(&secret, Algorithm::HS256).unwrap();
    let plain_rs = VerifyKey::rsa_pem(&key_bytes("rsa_public.pem"), Algorithm::RS256).unwrap();
    let v = JwtVerifier::builder()
        .issuer(ISS, KeySet::new().with(plain_hs.clone()).with(plain_rs))
        .audience(AUD)
        .clock(shared(&clock))
        .build()
        .unwrap();
    // `token` writes the kid `k-HS256` / `k-RS256`, which no key here carries.
    for alg in [Algorithm::HS256, Algorithm::RS256] {
        v.verify(&token(alg, &claims(n)))
            .await
            .unwrap_or_else(|e| panic!("{alg:?} token with a kid, key without: {e}"));
    }
    // A single key without a kid, as a verifier is most often given.
    let single = JwtVerifier::builder()
        .issuer(ISS, plain_hs.clone())
        .audience(AUD)
        .clock(shared(&clock))
        .build()
        .unwrap();
    single
        .verify(&token(Algorithm::HS256, &claims(n)))
        .await
        .unwrap();

    // Beside keys with kids: the kid `k-HS256` now names another secret, and only that.
    let named = VerifyKey::hmac(
        b"another-secret-0123456789abcdef0123456789",
        Algorithm::HS256,
    )
    .unwrap()
    .with_kid("k-HS256");
    let v = JwtVerifier::builder()
        .issuer(
            ISS,
            KeySet::new()
                .with(plain_hs)
                .with(named)
                .with(signing(Algorithm::RS256).1),
        )
        .audience(AUD)
        .clock(shared(&clock))
        .build()
        .unwrap();
    let rejection = |r: Result<tenancy_core::Claims, tenancy_core::Error>| match r {
        Err(tenancy_core::Error::Rejected(r)) => Some(r),
        _ => None,
    };
    let payload = serde_json::Value::Object(claims(n)).to_string();
    let hs = |kid: &str| {
        raw_token(
            &format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#),
            &payload,
            Algorithm::HS256,
            &encoding_key(Algorithm::HS256),
        )
    };
    // Signed with the kid-less secret but naming the other key's kid: refused.
    assert_eq!(
        rejection(v.verify(&hs("k-HS256")).await),
        Some(TokenRejection::BadSignature)
    );
    // The same secret under a kid nobody carries: the kid-less key verifies it.
    v.verify(&hs("k-unknown")).await.unwrap();
    // An unknown kid for an alg whose only key has a kid: no fallback.
    let rs = raw_token(
        r#"{"alg":"RS256","kid":"k-unknown"}"#,
        &payload,
        Algorithm::RS256,
        &encoding_key(Algorithm::RS256),
    );
    assert_eq!(
        rejection(v.verify(&rs).await),
        Some(TokenRejection::UnknownKey)
    );
}

/// The eight points of small order on edwards25519, as a public key would encode them: the
/// identity, the point of order 2, the two of order 4 and the four of order 8.
const SMALL_ORDER_ED25519: [&str; 8] = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
];

/// An Ed25519 public key of small order verifies a signature anyone can write (`R` the
/// identity, `s` zero) for every message, or for one message in eight: such a key is refused
/// as weak wherever a key is loaded (a JWK, a JWKS document, DER), and a token signed so is
/// not accepted.
#[tokio::test]
async fn ed25519_keys_of_small_order_are_refused_everywhere() {
    use tenancy_auth::Error;
    for hex in SMALL_ORDER_ED25519 {
        let x: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "weak", "x": b64(&x)});
        let r = VerifyKey::from_jwk(jwk.to_string().as_bytes());
        assert!(matches!(r, Err(Error::WeakKey { .. })), "JWK {hex}: {r:?}");
        let mut der = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        der.extend_from_slice(&x);
        let r = VerifyKey::ed_der(&der);
        assert!(matches!(r, Err(Error::WeakKey { .. })), "DER {hex}: {r:?}");
        let (keys, skipped) =
            KeySet::from_jwks(json!({"keys": [jwk]}).to_string().as_bytes()).unwrap();
        assert_eq!((keys.len(), skipped), (0, 1), "JWKS {hex}");
    }
    // A good key beside the weak one: the document loads, and the forged token is refused.
    let good = signing(Algorithm::EdDSA).0.public_jwk().unwrap().unwrap();
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let doc = json!({"keys": [
        good,
        {"kty": "OKP", "crv": "Ed25519", "kid": "weak", "x": b64(&identity)},
    ]});
    let (keys, skipped) = KeySet::from_jwks(doc.to_string().as_bytes()).unwrap();
    assert_eq!((keys.len(), skipped), (1, 1));
    let v = JwtVerifier::builder()
        .issuer(ISS, keys)
        .audience(AUD)
        .build()
        .unwrap();
    let header = json!({"alg": "EdDSA", "kid": "weak"});
    let claims = json!({"iss": ISS, "aud": AUD, "sub": "mallory", "exp": 4_102_444_800_i64,
        "tenant_id": "acme", "user_id": "mallory", "user_role": "super_admin"});
    let mut sig = [0u8; 64];
    sig[0] = 1;
    let forged = format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(&sig)
    );
    assert!(
        v.verify(&forged).await.is_err(),
        "a forged token was accepted"
    );
}

/// A key with a member written twice is refused the same way alone and in a JWKS document
/// (where it is skipped): parsers that keep the first of the two and parsers that keep the
/// last would read different keys from it.
#[test]
fn a_jwk_with_a_member_twice_is_refused_alone_and_in_a_document() {
    let good = signing(Algorithm::EdDSA).0.public_jwk().unwrap().unwrap();
    let x = good["x"].as_str().unwrap();
    let twice =
        format!(r#"{{"kty":"OKP","crv":"Ed25519","use":"enc","use":"sig","kid":"d","x":"{x}"}}"#);
    assert!(VerifyKey::from_jwk(twice.as_bytes()).is_err());
    let doc = format!(r#"{{"keys":[{twice}, {good}]}}"#);
    let (keys, skipped) = KeySet::from_jwks(doc.as_bytes()).unwrap();
    assert_eq!((keys.len(), skipped), (1, 1));
    // Once, the same key loads.
    let once = format!(r#"{{"kty":"OKP","crv":"Ed25519","use":"sig","kid":"d","x":"{x}"}}"#);
    let (keys, skipped) = KeySet::from_jwks(format!(r#"{{"keys":[{once}]}}"#).as_bytes()).unwrap();
    assert_eq!((keys.len(), skipped), (1, 0));
}

/// JWKs the verification backend would refuse at every signature are refused at load, so that
/// a key set never holds a key that can verify nothing: RSA moduli over 4096 bits, RSA
/// exponents that are even, below 3 or above 2^33 - 1, EC points off their curve, bytes that
/// are no Ed25519 point.
#[test]
fn keys_the_backend_cannot_use_are_refused_at_load() {
    use tenancy_auth::Error;
    let good = signing(Algorithm::RS256).0.public_jwk().unwrap().unwrap();
    let n = good["n"].as_str().unwrap().to_owned();
    let rsa = |n: &str, e: &str| {
        VerifyKey::from_jwk(
            json!({"kty": "RSA", "kid": "r", "n": n, "e": e})
                .to_string()
                .as_bytes(),
        )
    };
    // The good key itself loads: the checks below refuse only what they should.
    rsa(&n, "AQAB").unwrap();
    rsa(&n, &b64(&[3])).unwrap();

    // An 8192-bit modulus (top bit set, odd).
    let mut big = vec![0x5a_u8; 1024];
    big[0] = 0xc5;
    big[1023] = 0x01;
    let mut refused = vec![("8192-bit modulus", rsa(&b64(&big), "AQAB"))];
    for (what, e) in [
        ("even exponent 65536", b64(&[1, 0, 0])),
        ("even exponent 2", b64(&[2])),
        ("exponent 1", b64(&[1])),
        ("exponent 2^33 + 1", b64(&[2, 0, 0, 0, 1])),
        ("exponent equal to the modulus", n.clone()),
    ] {
        refused.push((what, rsa(&n, &e)));
    }
    // (1, 1) is not on P-256.
    let mut one = [0u8; 32];
    one[31] = 1;
    refused.push((
        "EC point off its curve",
        VerifyKey::from_jwk(
            json!({"kty": "EC", "crv": "P-256", "x": b64(&one), "y": b64(&one)})
                .to_string()
                .as_bytes(),
        ),
    ));
    // y = 2 has no x on edwards25519: the bytes decompress to no point.
    let mut y2 = [0u8; 32];
    y2[0] = 2;
    refused.push((
        "bytes that are no Ed25519 point",
        VerifyKey::from_jwk(
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&y2)})
                .to_string()
                .as_bytes(),
        ),
    ));
    for (what, r) in refused {
        assert!(
            matches!(r, Err(Error::WeakKey { .. } | Error::InvalidKey { .. })),
            "{what}: {r:?}"
        );
    }
}
