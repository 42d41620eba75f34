//! The adversarial corpus: every hostile or broken token is refused, each with its specific
//! reason. A positive control shows the unmutated token verifies, so each refusal is caused by
//! the mutation alone.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use jsonwebtoken::EncodingKey;
use serde_json::{Value, json};
use tenancy_auth::{Algorithm, Denylist, JwtVerifier, KeySet, MemoryDenylist, SigningKey};
use tenancy_core::memory::MemorySessionStore;
use tenancy_core::{
    ManualClock, NewSession, SessionStore, TenantId, TokenRejection as R, TokenVerifier, UserId,
};

struct Case {
    name: &'static str,
    token: String,
    expected: R,
}

fn hs() -> EncodingKey {
    encoding_key(Algorithm::HS256)
}

fn rs() -> EncodingKey {
    encoding_key(Algorithm::RS256)
}

fn header(alg: &str, kid: &str) -> String {
    json!({"alg": alg, "typ": "JWT", "kid": kid}).to_string()
}

fn hs_header() -> String {
    header("HS256", "k-HS256")
}

fn body(c: &serde_json::Map<String, Value>) -> String {
    Value::Object(c.clone()).to_string()
}

/// HS256 token over a raw payload text.
fn hs_raw(payload: &str) -> String {
    raw_token(&hs_header(), payload, Algorithm::HS256, &hs())
}

/// HS256 token over claims with one change.
fn with(name: &str, v: Value, n: i64) -> String {
    let mut c = claims(n);
    c.insert(name.into(), v);
    hs_raw(&body(&c))
}

fn without(name: &str, n: i64) -> String {
    let mut c = claims(n);
    c.remove(name);
    hs_raw(&body(&c))
}

fn unsigned(header: &str, payload: &str, sig: &str) -> String {
    format!(
        "{}.{}.{sig}",
        b64(header.as_bytes()),
        b64(payload.as_bytes())
    )
}

fn flip_char(s: &str, at: usize) -> String {
    let mut bytes = s.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

fn segments(t: &str) -> Vec<String> {
    t.split('.').map(str::to_owned).collect()
}

fn cases(n: i64) -> Vec<Case> {
    let good = token(Algorithm::HS256, &claims(n));
    let seg = segments(&good);
    let payload = body(&claims(n));
    let rsa_public_pem = key_bytes("rsa_public.pem");
    let other_secret = EncodingKey::from_secret(b"another-secret-0123456789abcdef0123456789");
    let rsa2 = EncodingKey::from_rsa_pem(&key_bytes("rsa2_private.pem")).unwrap();
    let mut c = Vec::new();
    let mut add = |name: &'static str, token: String, expected: R| {
        c.push(Case {
            name,
            token,
            expected,
        });
    };

    // --- algorithm games
    add(
        "alg none, empty signature",
        unsigned(r#"{"alg":"none","typ":"JWT"}"#, &payload, ""),
        R::AlgorithmNotAllowed,
    );
    add(
        "alg None",
        unsigned(r#"{"alg":"None"}"#, &payload, ""),
        R::AlgorithmNotAllowed,
    );
    add(
        "alg NONE with a signature",
        unsigned(r#"{"alg":"NONE"}"#, &payload, &seg[2]),
        R::AlgorithmNotAllowed,
    );
    add(
        "alg nOnE with kid",
        unsigned(r#"{"alg":"nOnE","kid":"k-HS256"}"#, &payload, ""),
        R::AlgorithmNotAllowed,
    );
    add(
        "RS public key used as HMAC secret (kid of the RSA key)",
        raw_token(
            &header("HS256", "k-RS256"),
            &payload,
            Algorithm::HS256,
            &EncodingKey::from_secret(&rsa_public_pem),
        ),
        R::AlgorithmNotAllowed,
    );
    add(
        "RS public key used as HMAC secret (no kid)",
        raw_token(
            r#"{"alg":"HS256"}"#,
            &payload,
            Algorithm::HS256,
            &EncodingKey::from_secret(&rsa_public_pem),
        ),
        R::BadSignature,
    );
    add(
        "HMAC key id with RS256 header",
        raw_token(
            &header("RS256", "k-HS256"),
            &payload,
            Algorithm::RS256,
            &rs(),
        ),
        R::AlgorithmNotAllowed,
    );
    add(
        "algorithm outside the allowed set (ES256)",
        raw_token(
            &header("ES256", "k-ES256"),
            &payload,
            Algorithm::ES256,
            &encoding_key(Algorithm::ES256),
        ),
        R::AlgorithmNotAllowed,
    );
    add(
        "PS256 not allowed though the key is RSA",
        raw_token(
            &header("PS256", "k-RS256"),
            &payload,
            Algorithm::PS256,
            &rs(),
        ),
        R::AlgorithmNotAllowed,
    );
    add(
        "unknown algorithm name",
        unsigned(r#"{"alg":"HS1024","kid":"k-HS256"}"#, &payload, &seg[2]),
        R::AlgorithmNotAllowed,
    );
    add(
        "alg missing",
        unsigned(r#"{"typ":"JWT","kid":"k-HS256"}"#, &payload, &seg[2]),
        R::Malformed,
    );
    add(
        "alg not a string",
        unsigned(r#"{"alg":256,"kid":"k-HS256"}"#, &payload, &seg[2]),
        R::Malformed,
    );

    // --- signature games
    add(
        "stripped signature",
        format!("{}.{}.", seg[0], seg[1]),
        R::BadSignature,
    );
    add(
        "signature segment removed",
        format!("{}.{}", seg[0], seg[1]),
        R::Malformed,
    );
    add(
        "flipped payload byte",
        format!("{}.{}.{}", seg[0], flip_char(&seg[1], 10), seg[2]),
        R::BadSignature,
    );
    add(
        "flipped signature byte",
        format!("{}.{}.{}", seg[0], seg[1], flip_char(&seg[2], 5)),
        R::BadSignature,
    );
    add(
        "header re-encoded after signing",
        format!(
            "{}.{}.{}",
            b64(br#"{"alg":"HS256","typ":"JWT","kid":"k-HS256","x":1}"#),
            seg[1],
            seg[2]
        ),
        R::BadSignature,
    );
    add(
        "payload swapped from another token",
        format!(
            "{}.{}.{}",
            seg[0],
            segments(&with("user_role", json!("tenant_admin"), n))[1],
            seg[2]
        ),
        R::BadSignature,
    );
    add(
        "wrong HMAC key",
        raw_token(&hs_header(), &payload, Algorithm::HS256, &other_secret),
        R::BadSignature,
    );
    add(
        "wrong RSA key",
        raw_token(
            &header("RS256", "k-RS256"),
            &payload,
            Algorithm::RS256,
            &rsa2,
        ),
        R::BadSignature,
    );
    add(
        "unknown kid",
        raw_token(
            &header("HS256", "k-rotated-away"),
            &payload,
            Algorithm::HS256,
            &hs(),
        ),
        R::UnknownKey,
    );
    add(
        "kid not a string",
        unsigned(r#"{"alg":"HS256","kid":7}"#, &payload, &seg[2]),
        R::Malformed,
    );
    add(
        "critical header extension",
        raw_token(
            r#"{"alg":"HS256","kid":"k-HS256","crit":["exp"],"exp":1}"#,
            &payload,
            Algorithm::HS256,
            &hs(),
        ),
        R::Malformed,
    );

    // --- time
    add("expired", with("exp", json!(n - 3600), n), R::Expired);
    add("expired at the epoch", with("exp", json!(1), n), R::Expired);
    add(
        "not yet valid",
        with("nbf", json!(n + 3600), n),
        R::NotYetValid,
    );
    add(
        "issued in the future",
        with("iat", json!(n + 3600), n),
        R::NotYetValid,
    );
    add(
        "huge integer exp (past year 9999)",
        with("exp", json!(i64::MAX), n),
        R::InvalidClaim("exp"),
    );
    add(
        "huge float exp",
        hs_raw(&payload.replace(&format!("\"exp\":{}", n + 300), "\"exp\":1e30")),
        R::InvalidClaim("exp"),
    );
    add(
        "exp beyond u64",
        hs_raw(&payload.replace(
            &format!("\"exp\":{}", n + 300),
            "\"exp\":99999999999999999999999999",
        )),
        R::InvalidClaim("exp"),
    );
    add(
        "exp beyond f64",
        hs_raw(&payload.replace(&format!("\"exp\":{}", n + 300), "\"exp\":1e400")),
        R::Malformed,
    );
    add(
        "negative exp",
        with("exp", json!(-1), n),
        R::InvalidClaim("exp"),
    );

    // --- issuer, audience
    add(
        "wrong iss",
        with("iss", json!("https://evil.example"), n),
        R::WrongIssuer,
    );
    add(
        "iss with trailing slash",
        with("iss", json!(format!("{ISS}/")), n),
        R::WrongIssuer,
    );
    add(
        "wrong aud",
        with("aud", json!("other-api"), n),
        R::WrongAudience,
    );
    add(
        "aud list without ours",
        with("aud", json!(["a", "b"]), n),
        R::WrongAudience,
    );

    // --- required claims
    for name in [
        "iss",
        "aud",
        "sub",
        "exp",
        "tenant_id",
        "user_id",
        "user_role",
        "permissions",
    ] {
        add("missing claim", without(name, n), R::MissingClaim(name));
    }
    add(
        "null tenant_id",
        with("tenant_id", Value::Null, n),
        R::MissingClaim("tenant_id"),
    );

    // --- claim types and values
    add(
        "exp as a string",
        with("exp", json!("tomorrow"), n),
        R::InvalidClaim("exp"),
    );
    add(
        "nbf as a bool",
        with("nbf", json!(true), n),
        R::InvalidClaim("nbf"),
    );
    add(
        "iss as a number",
        with("iss", json!(1), n),
        R::InvalidClaim("iss"),
    );
    add(
        "aud as a number",
        with("aud", json!(7), n),
        R::InvalidClaim("aud"),
    );
    add(
        "tenant_id as a number",
        with("tenant_id", json!(42), n),
        R::InvalidClaim("tenant_id"),
    );
    add(
        "hostile tenant_id",
        with("tenant_id", json!("acme'; DROP TABLE x;--"), n),
        R::InvalidClaim("tenant_id"),
    );
    add(
        "tenant_id with a Redis hash tag",
        with("tenant_id", json!("acme{x}"), n),
        R::InvalidClaim("tenant_id"),
    );
    add(
        "user_id with a control character",
        with("user_id", json!("al\u{0}ice"), n),
        R::InvalidClaim("user_id"),
    );
    add(
        "user_role not a role",
        with("user_role", json!("Admin!"), n),
        R::InvalidClaim("user_role"),
    );
    add(
        "permissions as a string",
        with("permissions", json!("records:read"), n),
        R::InvalidClaim("permissions"),
    );
    add(
        "permission without an action",
        with("permissions", json!(["records"]), n),
        R::InvalidClaim("permissions"),
    );
    add(
        "sid not a session id",
        with("sid", json!("not-a-session"), n),
        R::InvalidClaim("sid"),
    );
    add(
        "jti as an object",
        with("jti", json!({"a": 1}), n),
        R::InvalidClaim("jti"),
    );

    // --- encoding and structure
    add("empty token", String::new(), R::Malformed);
    add("only dots", "..".into(), R::Malformed);
    add("extra segment", format!("{good}.e30"), R::Malformed);
    add(
        "five segments (JWE shape)",
        format!("{}.{}.{}.{}.{}", seg[0], seg[1], seg[2], seg[1], seg[2]),
        R::Malformed,
    );
    add(
        "character outside base64url",
        format!("{}*.{}.{}", seg[0], seg[1], seg[2]),
        R::Malformed,
    );
    add(
        "standard base64 alphabet",
        format!(
            "{}.{}.{}",
            seg[0],
            seg[1].replacen('-', "+", 1).replacen('_', "/", 1) + "+",
            seg[2]
        ),
        R::Malformed,
    );
    add(
        "padded base64",
        format!("{}==.{}.{}", seg[0], seg[1], seg[2]),
        R::Malformed,
    );
    add("trailing newline", format!("{good}\n"), R::Malformed);
    add(
        "Bearer prefix left on",
        format!("Bearer {good}"),
        R::Malformed,
    );
    add("payload not JSON", hs_raw("hello"), R::Malformed);
    add("payload a JSON array", hs_raw("[1,2,3]"), R::Malformed);
    add(
        "payload truncated JSON",
        hs_raw(&payload[..payload.len() - 1]),
        R::Malformed,
    );
    add(
        "header not an object",
        unsigned("[\"HS256\"]", &payload, &seg[2]),
        R::Malformed,
    );
    // A derived decoder fills `alg`, `kid`, `crit` by position: validly signed, it would pass.
    add(
        "header a JSON array of the header's three members, signed",
        raw_token(
            r#"["HS256","k-HS256",null]"#,
            &payload,
            Algorithm::HS256,
            &hs(),
        ),
        R::Malformed,
    );
    add(
        "header an array after whitespace",
        raw_token(
            " \n[\"HS256\",\"k-HS256\"]",
            &payload,
            Algorithm::HS256,
            &hs(),
        ),
        R::Malformed,
    );
    add(
        "duplicate claim keys",
        hs_raw(&payload.replacen('{', r#"{"tenant_id":"globex","#, 1)),
        R::Malformed,
    );
    add(
        "duplicate header keys",
        unsigned(
            r#"{"alg":"HS256","alg":"none","kid":"k-HS256"}"#,
            &payload,
            &seg[2],
        ),
        R::Malformed,
    );
    add(
        "non-UTF-8 payload",
        {
            let mut bytes = payload.clone().into_bytes();
            bytes.insert(bytes.len() - 1, b' ');
            let at = bytes.len() - 2;
            bytes[at] = 0xff;
            let msg = format!("{}.{}", seg[0], b64(&bytes));
            let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &hs(), Algorithm::HS256).unwrap();
            format!("{msg}.{sig}")
        },
        R::Malformed,
    );
    add(
        "non-UTF-8 header",
        format!("{}.{}.{}", b64(b"{\"alg\":\"HS256\xff\"}"), seg[1], seg[2]),
        R::Malformed,
    );
    add(
        "oversized (8 KiB + 1)",
        format!("{}.{}.{}", seg[0], "A".repeat(8 * 1024), seg[2]),
        R::Oversized,
    );
    add(
        "oversized garbage (1 MiB)",
        "x".repeat(1 << 20),
        R::Oversized,
    );
    add(
        "oversized but validly signed (huge permission list)",
        with(
            "permissions",
            Value::Array((0..600).map(|i| json!(format!("res{i}:read"))).collect()),
            n,
        ),
        R::Oversized,
    );
    c
}

fn verifier(clock: &ManualClock) -> JwtVerifier {
    JwtVerifier::builder()
        .issuer(
            ISS,
            KeySet::new()
                .with(signing(Algorithm::HS256).1)
                .with(signing(Algorithm::RS256).1),
        )
        .audience(AUD)
        .algorithms([Algorithm::HS256, Algorithm::RS256])
        .clock(shared(clock))
        .build()
        .unwrap()
}

/// A builder trusting the HS256 test key on `clock`, to which a test adds its session store
/// and denylist.
fn hs256(clock: &ManualClock) -> tenancy_auth::JwtVerifierBuilder {
    JwtVerifier::builder()
        .issuer(ISS, signing(Algorithm::HS256).1)
        .audience(AUD)
        .clock(shared(clock))
}

/// A live session of `user` in acme.
async fn session_of(store: &MemorySessionStore, user: &str) -> tenancy_core::Session {
    store
        .create(NewSession::new(
            TenantId::parse("acme").unwrap(),
            UserId::parse(user).unwrap(),
        ))
        .await
        .unwrap()
}

#[tokio::test]
async fn every_hostile_token_is_refused_with_its_reason() {
    let clock = clock();
    let v = verifier(&clock);
    let n = now(&clock);
    // Positive control.
    let good = token(Algorithm::HS256, &claims(n));
    v.verify(&good).await.expect("the unmutated token verifies");
    let rs_good = token(Algorithm::RS256, &claims(n));
    v.verify(&rs_good)
        .await
        .expect("the RS256 control verifies");

    let cases = cases(n);
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        for (path, got) in [
            ("cached", v.verify(&case.token).await),
            ("uncached", v.verify_uncached(&case.token).await),
        ] {
            match got {
                Err(tenancy_core::Error::Rejected(r)) if r == case.expected => {}
                other => failures.push(format!(
                    "{} ({path}): expected {:?}, got {:?}",
                    case.name,
                    case.expected,
                    other.map(|c| c.sub)
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Nothing refused was cached.
    assert_eq!(v.cache_stats().entries, 2);
    eprintln!(
        "{} adversarial cases refused with their reasons",
        cases.len()
    );
}

#[tokio::test]
async fn an_rs_only_verifier_refuses_hmac_whatever_the_key() {
    let clock = clock();
    let v = JwtVerifier::builder()
        .issuer(ISS, signing(Algorithm::RS256).1)
        .audience(AUD)
        .clock(shared(&clock))
        .build()
        .unwrap();
    let payload = body(&claims(now(&clock)));
    let pem = key_bytes("rsa_public.pem");
    for h in [
        r#"{"alg":"HS256"}"#,
        r#"{"alg":"HS256","kid":"k-RS256"}"#,
        r#"{"alg":"HS512"}"#,
    ] {
        let alg = if h.contains("HS512") {
            Algorithm::HS512
        } else {
            Algorithm::HS256
        };
        let t = raw_token(h, &payload, alg, &EncodingKey::from_secret(&pem));
        let e = v.verify(&t).await.unwrap_err();
        assert!(
            matches!(e, tenancy_core::Error::Rejected(R::AlgorithmNotAllowed)),
            "{h}: {e}"
        );
    }
    v.verify(&token(Algorithm::RS256, &claims(now(&clock))))
        .await
        .unwrap();
}

#[tokio::test]
async fn issuers_are_told_apart_and_bound_to_their_tenants() {
    let clock = clock();
    let own = SigningKey::hmac(&[7u8; 32], Algorithm::HS256)
        .unwrap()
        .with_kid("own");
    let byo = SigningKey::hmac(&[9u8; 32], Algorithm::HS256)
        .unwrap()
        .with_kid("byo");
    let v = JwtVerifier::builder()
        .issuer(ISS, own.verify_key().unwrap())
        .tenant_issuer(
            "https://idp.acme.example",
            byo.verify_key().unwrap(),
            [TenantId::parse("acme").unwrap()],
        )
        .audience(AUD)
        .clock(shared(&clock))
        .build()
        .unwrap();
    let n = now(&clock);
    let mint = |key: &SigningKey, iss: &str, tenant: &str| {
        let mut c = claims(n);
        c.insert("iss".into(), json!(iss));
        c.insert("tenant_id".into(), json!(tenant));
        let kid = key.kid().unwrap();
        let secret = if kid == "own" { [7u8; 32] } else { [9u8; 32] };
        raw_token(
            &header("HS256", kid),
            &body(&c),
            Algorithm::HS256,
            &EncodingKey::from_secret(&secret),
        )
    };
    v.verify(&mint(&own, ISS, "globex")).await.unwrap();
    // Our own issuer may mint the platform role.
    let mut root = claims(n);
    root.insert("tenant_id".into(), json!("platform"));
    root.insert("user_role".into(), json!("super_admin"));
    let root = raw_token(
        &header("HS256", "own"),
        &body(&root),
        Algorithm::HS256,
        &EncodingKey::from_secret(&[7u8; 32]),
    );
    assert!(v.verify(&root).await.unwrap().user_role.is_super_admin());
    v.verify(&mint(&byo, "https://idp.acme.example", "acme"))
        .await
        .unwrap();
    let cases = [
        (
            mint(&byo, "https://idp.acme.example", "globex"),
            R::WrongIssuer,
        ),
        (
            mint(&byo, "https://unknown.example", "acme"),
            R::UnknownIssuer,
        ),
        // acme's provider signing as our issuer: our key set has no `byo` key.
        (mint(&byo, ISS, "acme"), R::UnknownKey),
        // acme's provider minting the platform-wide role, for its own tenant.
        (
            {
                let mut c = claims(n);
                c.insert("iss".into(), json!("https://idp.acme.example"));
                c.insert("tenant_id".into(), json!("acme"));
                c.insert("user_role".into(), json!("super_admin"));
                raw_token(
                    &header("HS256", "byo"),
                    &body(&c),
                    Algorithm::HS256,
                    &EncodingKey::from_secret(&[9u8; 32]),
                )
            },
            R::InvalidClaim("user_role"),
        ),
        (
            hs_raw(&body(&{
                let mut c = claims(n);
                c.remove("iss");
                c
            })),
            R::MissingClaim("iss"),
        ),
    ];
    for (t, expected) in cases {
        let e = v.verify(&t).await.unwrap_err();
        assert!(
            matches!(e, tenancy_core::Error::Rejected(r) if r == expected),
            "{expected:?}: {e}"
        );
    }
}

/// A revoked token stays refused through the leeway after its `exp`, when the verifier
/// would otherwise still accept it.
#[tokio::test]
async fn a_revoked_token_stays_refused_through_the_leeway() {
    let clock = clock();
    let denylist = Arc::new(MemoryDenylist::with_clock(shared(&clock)));
    let v = JwtVerifier::builder()
        .issuer(ISS, signing(Algorithm::HS256).1)
        .audience(AUD)
        .leeway(Duration::from_secs(30))
        .denylist(denylist.clone())
        .clock(shared(&clock))
        .build()
        .unwrap();
    let t = token(Algorithm::HS256, &claims(now(&clock)));
    let accepted = v.verify(&t).await.unwrap();
    v.revoke(&accepted).await.unwrap();
    // `exp` is 300 s after issue; the leeway keeps the token acceptable until 330 s.
    let mut at = 0;
    for secs in [0, 299, 300, 310, 329] {
        clock.advance(Duration::from_secs(secs - at));
        at = secs;
        let e = v.verify(&t).await.unwrap_err();
        assert!(
            matches!(e, tenancy_core::Error::Rejected(R::Revoked)),
            "{secs} s after issue: {e}"
        );
    }
    // Past the leeway the token is refused as expired, and the entry may go.
    clock.advance(Duration::from_secs(1));
    let e = v.verify(&t).await.unwrap_err();
    assert!(
        matches!(e, tenancy_core::Error::Rejected(R::Expired)),
        "{e}"
    );
    // Revoking needs a denylist.
    let plain = JwtVerifier::builder()
        .issuer(ISS, signing(Algorithm::HS256).1)
        .audience(AUD)
        .build()
        .unwrap();
    assert!(plain.revoke(&accepted).await.is_err());
}

/// A token without `jti` (the standard makes it optional) is revoked by the hash of its
/// claims: it is refused from then on, and a token with other claims is not.
#[tokio::test]
async fn a_token_without_jti_is_revoked_by_its_claims() {
    let clock = clock();
    let v = JwtVerifier::builder()
        .issuer(ISS, signing(Algorithm::HS256).1)
        .audience(AUD)
        .denylist(Arc::new(MemoryDenylist::with_clock(shared(&clock))))
        .clock(shared(&clock))
        .build()
        .unwrap();
    let without_jti = |user: &str| {
        let mut c = claims(now(&clock));
        c.remove("jti");
        c.insert("user_id".into(), json!(user));
        token(Algorithm::HS256, &c)
    };
    let (alice, bob) = (without_jti("alice"), without_jti("bob"));
    let accepted = v.verify(&alice).await.unwrap();
    assert_eq!(accepted.jti, None);
    v.verify(&bob).await.unwrap();
    v.revoke(&accepted).await.unwrap();
    let e = v.verify(&alice).await.unwrap_err();
    assert!(
        matches!(e, tenancy_core::Error::Rejected(R::Revoked)),
        "{e}"
    );
    v.verify(&bob).await.unwrap();
}

#[tokio::test]
async fn revoked_and_session_ended_tokens_are_refused_even_from_cache() {
    let clock = clock();
    let store = Arc::new(MemorySessionStore::with_clock(shared(&clock)));
    let denylist = Arc::new(MemoryDenylist::with_clock(shared(&clock)));
    let v = hs256(&clock)
        .denylist(denylist.clone())
        .sessions(store.clone())
        .build()
        .unwrap();
    let tenant = TenantId::parse("acme").unwrap();
    let session = session_of(&store, "alice").await;
    let n = now(&clock);
    let mut c = claims(n);
    c.insert("sid".into(), json!(session.id.to_string()));
    c.insert("jti".into(), json!("to-revoke"));
    let revocable = token(Algorithm::HS256, &c);
    let mut c2 = claims(n);
    c2.insert("sid".into(), json!(session.id.to_string()));
    c2.insert("jti".into(), json!("other"));
    let in_session = token(Algorithm::HS256, &c2);

    v.verify(&revocable).await.unwrap();
    v.verify(&in_session).await.unwrap();
    assert_eq!(v.cache_stats().entries, 2);
    // Cached, but revocation and sessions are asked on every call: nothing is at hand
    // without waiting for them.
    assert!(v.try_verify(&revocable).is_none());
    assert!(v.try_verify(&in_session).is_none());

    denylist
        .revoke(&tenant, "to-revoke", n + 300)
        .await
        .unwrap();
    let e = v.verify(&revocable).await.unwrap_err();
    assert!(
        matches!(e, tenancy_core::Error::Rejected(R::Revoked)),
        "{e}"
    );
    v.verify(&in_session).await.unwrap();

    store.delete(&tenant, &session.id).await.unwrap();
    let e = v.verify(&in_session).await.unwrap_err();
    assert!(
        matches!(e, tenancy_core::Error::Rejected(R::SessionEnded)),
        "{e}"
    );
    // The same jti in another tenant is not revoked: the denylist is per tenant.
    assert!(
        !denylist
            .is_revoked(&TenantId::parse("globex").unwrap(), "to-revoke")
            .await
            .unwrap()
    );
}

/// A denylist that cannot answer: any question put to it is seen.
#[derive(Debug)]
struct DownDenylist;

#[async_trait::async_trait]
impl Denylist for DownDenylist {
    async fn is_revoked(&self, _: &TenantId, _: &str) -> tenancy_core::Result<bool> {
        Err(tenancy_core::Error::Unavailable("denylist down".into()))
    }
    async fn revoke(&self, _: &TenantId, _: &str, _: i64) -> tenancy_core::Result<()> {
        Err(tenancy_core::Error::Unavailable("denylist down".into()))
    }
}

#[tokio::test]
async fn the_denylist_can_be_kept_for_tokens_without_a_session() {
    let clock = clock();
    let store = Arc::new(MemorySessionStore::with_clock(shared(&clock)));
    let build = |denylist: Arc<dyn Denylist>, only_without_session: bool| {
        let b = hs256(&clock).denylist(denylist).sessions(store.clone());
        if only_without_session {
            b.denylist_only_without_session().build().unwrap()
        } else {
            b.build().unwrap()
        }
    };
    let tenant = TenantId::parse("acme").unwrap();
    let session = session_of(&store, "alice").await;
    let mut c = claims(now(&clock));
    c.insert("sid".into(), json!(session.id.to_string()));
    let bound = token(Algorithm::HS256, &c);
    let unbound = token(Algorithm::HS256, &claims(now(&clock)));

    // Asked about every token by default; only about tokens without a session when told.
    let every = build(Arc::new(DownDenylist), false);
    let e = every.verify(&bound).await.unwrap_err();
    assert_eq!(e.kind(), tenancy_core::ErrorKind::Unavailable, "{e}");
    let scoped = build(Arc::new(DownDenylist), true);
    let accepted = scoped.verify(&bound).await.unwrap();
    let e = scoped.verify(&unbound).await.unwrap_err();
    assert_eq!(e.kind(), tenancy_core::ErrorKind::Unavailable, "{e}");

    // A session-bound token is revoked by ending its session, which the session check then
    // sees; no entry is written where it would never be looked at. A token without a session
    // is revoked on the denylist as usual.
    let list = Arc::new(MemoryDenylist::with_clock(shared(&clock)));
    let scoped = build(list.clone(), true);
    scoped.revoke(&accepted).await.unwrap();
    assert!(list.is_empty());
    let e = scoped.verify(&bound).await.unwrap_err();
    assert!(
        matches!(e, tenancy_core::Error::Rejected(R::SessionEnded)),
        "{e}"
    );
    assert!(store.load(&tenant, &session.id).await.unwrap().is_none());
    let plain = scoped.verify(&unbound).await.unwrap();
    scoped.revoke(&plain).await.unwrap();
    let e = scoped.verify(&unbound).await.unwrap_err();
    assert!(
        matches!(e, tenancy_core::Error::Rejected(R::Revoked)),
        "{e}"
    );

    // The option needs both a session store and a denylist.
    for (with_sessions, with_denylist) in [(false, true), (true, false)] {
        let mut b = hs256(&clock).denylist_only_without_session();
        if with_sessions {
            b = b.sessions(store.clone());
        }
        if with_denylist {
            b = b.denylist(list.clone());
        }
        assert!(b.build().is_err(), "{with_sessions} {with_denylist}");
    }
}

#[tokio::test]
async fn a_sid_naming_another_users_session_is_refused() {
    let clock = clock();
    let store = Arc::new(MemorySessionStore::with_clock(shared(&clock)));
    let v = hs256(&clock).sessions(store.clone()).build().unwrap();
    let theirs = session_of(&store, "bob").await;
    // `claims` is alice's token; the session is bob's, live.
    let mut c = claims(now(&clock));
    c.insert("sid".into(), json!(theirs.id.to_string()));
    let e = v.verify(&token(Algorithm::HS256, &c)).await.unwrap_err();
    assert!(
        matches!(e, tenancy_core::Error::Rejected(R::SessionEnded)),
        "{e}"
    );
    // The same token with a session of its own user passes.
    let own = session_of(&store, "alice").await;
    c.insert("sid".into(), json!(own.id.to_string()));
    v.verify(&token(Algorithm::HS256, &c)).await.unwrap();
}
