//! Shared helpers for the integration tests: test keys, a clock, and a raw token builder
//! that can produce any header, payload and signature (for the adversarial corpus).
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::EncodingKey;
use serde_json::{Value, json};
use tenancy_auth::{Algorithm, SigningKey, VerifyKey};
use tenancy_core::{Clock, ManualClock};

pub const ISS: &str = "https://id.example";
pub const AUD: &str = "api";
pub const HMAC_SECRET: &[u8] = b"test-secret-0123456789abcdef0123456789";

pub fn key_bytes(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

pub fn clock() -> ManualClock {
    ManualClock::new()
}

pub fn now(clock: &ManualClock) -> i64 {
    clock.now().unix_timestamp()
}

/// Valid claims at `now`.
pub fn claims(now: i64) -> serde_json::Map<String, Value> {
    json!({
        "iss": ISS, "aud": AUD, "sub": "alice", "exp": now + 300, "nbf": now - 5,
        "iat": now - 5, "jti": "jti-1", "tenant_id": "acme", "user_id": "alice",
        "user_role": "user", "permissions": ["records:read", "records:write"],
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key (for jsonwebtoken's low-level signer) and the matching verify key per
/// algorithm.
pub fn signing(alg: Algorithm) -> (SigningKey, VerifyKey) {
    let sk = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let mut secret = HMAC_SECRET.to_vec();
            secret.resize(64, b'x');
            SigningKey::hmac(&secret, alg).unwrap()
        }
        Algorithm::ES256 => SigningKey::ec_pem(&key_bytes("ec256_private.pem"), alg).unwrap(),
        Algorithm::ES384 => SigningKey::ec_pem(&key_bytes("ec384_private.pem"), alg).unwrap(),
        Algorithm::EdDSA => SigningKey::ed_pem(&key_bytes("ed_private.pem")).unwrap(),
        _ => SigningKey::rsa_pem(&key_bytes("rsa_private.pem"), alg).unwrap(),
    };
    let sk = sk.with_kid(format!("k-{}", alg_name(alg)));
    let vk = sk.verify_key().unwrap();
    (sk, vk)
}

pub fn alg_name(alg: Algorithm) -> &'static str {
    tenancy_auth::key::algorithm_name(alg)
}

/// The raw encoding key behind a signing key of this crate's test set.
pub fn encoding_key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let mut secret = HMAC_SECRET.to_vec();
            secret.resize(64, b'x');
            EncodingKey::from_secret(&secret)
        }
        Algorithm::ES256 => EncodingKey::from_ec_pem(&key_bytes("ec256_private.pem")).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(&key_bytes("ec384_private.pem")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&key_bytes("ed_private.pem")).unwrap(),
        _ => EncodingKey::from_rsa_pem(&key_bytes("rsa_private.pem")).unwrap(),
    }
}

/// Builds `header.payload.signature` from raw JSON texts, signing with `key` under `alg`.
pub fn raw_token(header: &str, payload: &str, alg: Algorithm, key: &EncodingKey) -> String {
    let message = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{sig}")
}

/// A token with a standard header (`alg`, `kid` of the test key) over `claims`.
pub fn token(alg: Algorithm, claims: &serde_json::Map<String, Value>) -> String {
    let header = json!({"alg": alg_name(alg), "typ": "JWT", "kid": format!("k-{}", alg_name(alg))});
    raw_token(
        &header.to_string(),
        &Value::Object(claims.clone()).to_string(),
        alg,
        &encoding_key(alg),
    )
}

pub fn shared(clock: &ManualClock) -> Arc<dyn Clock> {
    Arc::new(clock.clone())
}
