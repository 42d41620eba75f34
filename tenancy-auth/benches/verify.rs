//! Verification throughput per algorithm, our HS256 path against a bare
//! `jsonwebtoken::decode` in the same run, and the cost of a verification-cache hit.
//!
//! `cargo bench -p tenancy-auth --bench verify -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{DecodingKey, EncodingKey, Validation};
use tenancy_auth::key::{ALL_ALGORITHMS, algorithm_name};
use tenancy_auth::{Algorithm, JwtVerifier, KeySet, SigningKey, TokenIssuer};
use tenancy_core::{Claims, TokenVerifier};

const ISS: &str = "https://id.example";
const AUD: &str = "api";

/// Polls a future that completes without waiting (static keys, no store): no runtime
/// overhead in the measurement.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("verification waited on I/O in a benchmark"),
    }
}

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

const SECRET: &[u8] = b"bench-secret-0123456789abcdef0123456789abcdef0123456789abcdefXYZ";

fn signing_key(alg: Algorithm) -> SigningKey {
    let k = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => SigningKey::hmac(SECRET, alg),
        Algorithm::ES256 => SigningKey::ec_pem(&key_file("ec256_private.pem"), alg),
        Algorithm::ES384 => SigningKey::ec_pem(&key_file("ec384_private.pem"), alg),
        Algorithm::EdDSA => SigningKey::ed_pem(&key_file("ed_private.pem")),
        _ => SigningKey::rsa_pem(&key_file("rsa_private.pem"), alg),
    };
    k.unwrap().with_kid(algorithm_name(alg))
}

fn token_for(key: &SigningKey) -> String {
    TokenIssuer::builder(key.clone(), ISS, AUD)
        .build()
        .unwrap()
        .access_token(
            &"acme".parse().unwrap(),
            &"alice".parse().unwrap(),
            &"user".parse().unwrap(),
            &[
                "records:read".parse().unwrap(),
                "records:write".parse().unwrap(),
            ]
            .into_iter()
            .collect(),
            Some(&tenancy_core::SessionId::generate()),
        )
        .unwrap()
}

fn verifier(keys: KeySet, cache: usize) -> JwtVerifier {
    JwtVerifier::builder()
        .issuer(ISS, keys)
        .audience(AUD)
        .cache_capacity(cache)
        .build()
        .unwrap()
}

fn per_algorithm(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify_uncached");
    for alg in ALL_ALGORITHMS {
        let key = signing_key(alg);
        let v = verifier(KeySet::new().with(key.verify_key().unwrap()), 0);
        let token = token_for(&key);
        ready(v.verify(&token)).unwrap();
        g.bench_function(algorithm_name(alg), |b| {
            b.iter(|| ready(v.verify(black_box(&token))).unwrap());
        });
    }
    g.finish();
}

fn hs256_against_bare_decode(c: &mut Criterion) {
    let key = signing_key(Algorithm::HS256);
    let token = token_for(&key);
    let ours = verifier(KeySet::new().with(key.verify_key().unwrap()), 0);
    let bare_key = DecodingKey::from_secret(SECRET);
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[ISS]);
    validation.set_audience(&[AUD]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    // Sanity: both accept the token, and the encoding key round-trips.
    jsonwebtoken::decode::<Claims>(&token, &bare_key, &validation).unwrap();
    let _ = EncodingKey::from_secret(SECRET);
    ready(ours.verify(&token)).unwrap();

    let mut g = c.benchmark_group("hs256");
    g.bench_function("bare_jsonwebtoken_decode", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<Claims>(black_box(&token), &bare_key, &validation).unwrap()
        });
    });
    g.bench_function("tenancy_verify_uncached", |b| {
        b.iter(|| ready(ours.verify(black_box(&token))).unwrap());
    });
    g.finish();
}

fn cache_hit(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache");
    for alg in [Algorithm::HS256, Algorithm::RS256] {
        let key = signing_key(alg);
        let v = verifier(KeySet::new().with(key.verify_key().unwrap()), 10_000);
        let token = token_for(&key);
        ready(v.verify(&token)).unwrap();
        g.bench_function(format!("hit_{}", algorithm_name(alg)), |b| {
            b.iter(|| ready(v.verify(black_box(&token))).unwrap());
        });
    }
    g.finish();
}

criterion_group!(benches, per_algorithm, hs256_against_bare_decode, cache_hit);
criterion_main!(benches);
