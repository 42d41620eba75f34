//! `jsonwebtoken`'s process-wide crypto provider: an application's own, installed before any
//! key of this crate, is the one this crate's signing and verification use (the crate installs
//! its `rust_crypto` provider only when none is). Its own test binary: the provider is set
//! once per process.

use std::sync::atomic::{AtomicUsize, Ordering};

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, rust_crypto};
use tenancy_auth::{Algorithm, JwtVerifier, SigningKey, TokenIssuer};
use tenancy_core::TokenVerifier as _;

static SIGNERS: AtomicUsize = AtomicUsize::new(0);
static VERIFIERS: AtomicUsize = AtomicUsize::new(0);

fn counting_signer(
    alg: &Algorithm,
    key: &jsonwebtoken::EncodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    SIGNERS.fetch_add(1, Ordering::SeqCst);
    (rust_crypto::DEFAULT_PROVIDER.signer_factory)(alg, key)
}

fn counting_verifier(
    alg: &Algorithm,
    key: &jsonwebtoken::DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn jsonwebtoken::crypto::JwtVerifier>> {
    VERIFIERS.fetch_add(1, Ordering::SeqCst);
    (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(alg, key)
}

#[tokio::test]
async fn an_application_provider_installed_first_is_the_one_used() {
    let app: &'static CryptoProvider = Box::leak(Box::new(CryptoProvider {
        signer_factory: counting_signer,
        verifier_factory: counting_verifier,
        key_utils: rust_crypto::DEFAULT_PROVIDER.key_utils.clone(),
    }));
    app.install_default()
        .unwrap_or_else(|_| panic!("a provider was installed before the test"));

    let secret = b"0123456789abcdef0123456789abcdef";
    let key = SigningKey::hmac(secret, Algorithm::HS256).unwrap();
    let verifier = JwtVerifier::builder()
        .issuer("https://id.example", key.verify_key().unwrap())
        .audience("api")
        .build()
        .unwrap();
    let issuer = TokenIssuer::builder(key, "https://id.example", "api")
        .build()
        .unwrap();
    let token = issuer
        .access_token(
            &"acme".parse().unwrap(),
            &"alice".parse().unwrap(),
            &"user".parse().unwrap(),
            &Default::default(),
            None,
        )
        .unwrap();
    let claims = verifier.verify(&token).await.unwrap();
    assert_eq!(claims.tenant_id.as_str(), "acme");
    assert!(
        SIGNERS.load(Ordering::SeqCst) >= 1,
        "signed by another provider"
    );
    assert!(
        VERIFIERS.load(Ordering::SeqCst) >= 1,
        "verified by another provider"
    );

    // Installing again fails: the application's provider stays the default.
    assert!(
        rust_crypto::DEFAULT_PROVIDER.install_default().is_err(),
        "the crate replaced the application's provider"
    );
}
