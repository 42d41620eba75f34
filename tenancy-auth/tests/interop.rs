//! Interoperability with another JWT implementation: PyJWT (with `cryptography`) mints tokens
//! that we verify, and verifies tokens that we mint, for every algorithm both support.
//!
//! Needs `python3` with the `jwt` and `cryptography` modules (`.ci/services.d/python-jwt`
//! installs them). Without them the test says so and skips, or fails under
//! `TENANCY_REQUIRE_SERVICES=1`.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use serde_json::{Value, json};
use tenancy_auth::{Algorithm, JwtVerifier, KeySet, SigningKey, TokenIssuer};
use tenancy_core::{TokenRejection, TokenVerifier};

const ALGS: [Algorithm; 10] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fn pyjwt_available() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match probe {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            tenancy_tests::service_missing(
                "PyJWT",
                &format!(
                    "python3 cannot import jwt/cryptography ({}); run .ci/services.d/python-jwt",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            );
            false
        }
        Err(e) => {
            tenancy_tests::service_missing("PyJWT", &format!("python3 not runnable: {e}"));
            false
        }
    }
}

fn pyjwt(jobs: &[Value]) -> Vec<Value> {
    let script = format!("{}/tests/pyjwt_helper.py", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::Array(jobs.to_vec()).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "helper failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("helper output is JSON")
}

fn hmac_secret() -> Vec<u8> {
    let mut s = HMAC_SECRET.to_vec();
    s.resize(64, b'x');
    s
}

/// The key text PyJWT needs: private (to mint) or public (to verify) PEM, or the secret.
fn py_key(alg: Algorithm, private: bool) -> String {
    let file = match (alg, private) {
        (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512, _) => {
            return b64(&hmac_secret());
        }
        (Algorithm::ES256, true) => "ec256_private.pem",
        (Algorithm::ES256, false) => "ec256_public.pem",
        (Algorithm::ES384, true) => "ec384_private.pem",
        (Algorithm::ES384, false) => "ec384_public.pem",
        (Algorithm::EdDSA, true) => "ed_private.pem",
        (Algorithm::EdDSA, false) => "ed_public.pem",
        (_, true) => "rsa_private.pem",
        (_, false) => "rsa_public.pem",
    };
    String::from_utf8(key_bytes(file)).unwrap()
}

/// `token` with one byte in the middle of its signature flipped.
///
/// Changing the signature's text instead (say its last character) can leave the decoded bytes
/// the same: the last base64url character also carries padding bits, which lenient decoders
/// such as Python's ignore, so the "tampered" copy could verify there.
fn tamper_signature(token: &str) -> String {
    let (message, signature) = token.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(signature).unwrap();
    let mid = sig.len() / 2;
    sig[mid] ^= 0x01;
    let tampered = format!("{message}.{}", URL_SAFE_NO_PAD.encode(&sig));
    assert_ne!(
        URL_SAFE_NO_PAD
            .decode(tampered.rsplit_once('.').unwrap().1)
            .unwrap(),
        URL_SAFE_NO_PAD.decode(signature).unwrap(),
        "the tampered signature decodes to the same bytes"
    );
    tampered
}

/// The tampering itself, without PyJWT: every algorithm's tampered copy differs in signature
/// bytes and is refused here.
#[tokio::test]
async fn tampered_copies_differ_in_signature_bytes() {
    let clock = tenancy_core::ManualClock::new();
    let v = verifier(&clock);
    for alg in ALGS {
        let good = token(alg, &claims(now(&clock)));
        v.verify(&good).await.unwrap();
        let e = v.verify(&tamper_signature(&good)).await.unwrap_err();
        assert!(
            matches!(
                e,
                tenancy_core::Error::Rejected(TokenRejection::BadSignature)
            ),
            "{alg:?}: {e}"
        );
    }
}

fn verifier(clock: &tenancy_core::ManualClock) -> JwtVerifier {
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
async fn pyjwt_tokens_verify_here() {
    if !pyjwt_available() {
        return;
    }
    // PyJWT checks against the real clock, so the claims are built on it.
    let clock = tenancy_core::ManualClock::at_unix_secs(
        u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap(),
    );
    let v = verifier(&clock);
    let mut c = claims(now(&clock));
    c.insert(
        "sid".into(),
        json!(tenancy_core::SessionId::generate().to_string()),
    );
    let jobs: Vec<Value> = ALGS
        .iter()
        .map(|alg| {
            json!({"op": "mint", "alg": alg_name(*alg), "key": py_key(*alg, true),
                   "kid": format!("k-{}", alg_name(*alg)), "claims": c})
        })
        .collect();
    let minted = pyjwt(&jobs);
    for (alg, out) in ALGS.iter().zip(&minted) {
        let token = out["token"]
            .as_str()
            .unwrap_or_else(|| panic!("{alg:?}: {out}"));
        let claims = v
            .verify(token)
            .await
            .unwrap_or_else(|e| panic!("PyJWT {alg:?} token refused: {e}"));
        assert_eq!(claims.tenant_id.as_str(), "acme");
        assert_eq!(claims.user_id.as_str(), "alice");
        assert_eq!(claims.exp, c["exp"].as_i64().unwrap());
        assert_eq!(
            claims.sid.map(|s| s.to_string()),
            c["sid"].as_str().map(str::to_owned)
        );
        // The same token with one payload byte changed is refused: the check is real.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut p = parts[1].clone().into_bytes();
        p[3] = if p[3] == b'A' { b'B' } else { b'A' };
        parts[1] = String::from_utf8(p).unwrap();
        let e = v.verify(&parts.join(".")).await.unwrap_err();
        assert!(
            matches!(
                e,
                tenancy_core::Error::Rejected(
                    TokenRejection::BadSignature | TokenRejection::Malformed
                )
            ),
            "{alg:?}: {e}"
        );
    }
    // A PyJWT token for another audience is refused here.
    let mut other = c.clone();
    other.insert("aud".into(), json!("someone-else"));
    let out = pyjwt(&[
        json!({"op": "mint", "alg": "HS256", "key": py_key(Algorithm::HS256, true),
                             "kid": "k-HS256", "claims": other}),
    ]);
    let e = v
        .verify(out[0]["token"].as_str().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            tenancy_core::Error::Rejected(TokenRejection::WrongAudience)
        ),
        "{e}"
    );
}

#[tokio::test]
async fn our_tokens_verify_in_pyjwt() {
    if !pyjwt_available() {
        return;
    }
    let mut jobs = Vec::new();
    let mut expected = Vec::new();
    for alg in ALGS {
        let key: SigningKey = signing(alg).0;
        let issuer = TokenIssuer::builder(key, ISS, AUD).build().unwrap();
        let session = tenancy_core::SessionId::generate();
        let token = issuer
            .access_token(
                &"acme".parse().unwrap(),
                &"alice".parse().unwrap(),
                &"tenant_admin".parse().unwrap(),
                &["audit:read".parse().unwrap(), "records:*".parse().unwrap()]
                    .into_iter()
                    .collect(),
                Some(&session),
            )
            .unwrap();
        jobs.push(
            json!({"op": "verify", "alg": alg_name(alg), "key": py_key(alg, false),
                         "token": token, "issuer": ISS, "audience": AUD}),
        );
        expected.push((alg, session));
        // And a tampered copy, which PyJWT must refuse.
        let tampered = tamper_signature(&token);
        jobs.push(
            json!({"op": "verify", "alg": alg_name(alg), "key": py_key(alg, false),
                         "token": tampered, "issuer": ISS, "audience": AUD}),
        );
    }
    let results = pyjwt(&jobs);
    for (i, (alg, session)) in expected.iter().enumerate() {
        let ok = &results[2 * i];
        let claims = &ok["claims"];
        assert!(claims.is_object(), "PyJWT refused our {alg:?} token: {ok}");
        assert_eq!(claims["tenant_id"], "acme");
        assert_eq!(claims["user_role"], "tenant_admin");
        assert_eq!(claims["sid"], session.to_string());
        assert_eq!(claims["permissions"], json!(["audit:read", "records:*"]));
        let bad = &results[2 * i + 1];
        assert!(
            bad["error"].is_string(),
            "PyJWT accepted a tampered {alg:?} token: {bad}"
        );
    }
}
