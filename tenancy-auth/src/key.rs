//! Keys: [`VerifyKey`] (a public key or shared secret bound to one algorithm), [`KeySet`]
//! (several keys at once, found by `kid`, for rotation) and [`SigningKey`] (for
//! [`TokenIssuer`](crate::TokenIssuer)).
//!
//! Every key is bound to exactly one [`Algorithm`] when it is loaded, so a token cannot pick
//! how its key is used: an RSA public key can never serve as an HMAC secret, whatever the
//! token's header says.
//!
//! ```
//! use tenancy_auth::{Algorithm, KeySet, SigningKey, VerifyKey};
//!
//! let secret = b"0123456789abcdef0123456789abcdef-example";
//! let old = VerifyKey::hmac(secret, Algorithm::HS256)?.with_kid("2024-01");
//! let new = SigningKey::hmac(b"another secret that is long enough!!", Algorithm::HS256)?
//!     .with_kid("2024-02");
//! let keys = KeySet::new().with(old).with(new.verify_key()?);
//! assert_eq!(keys.len(), 2);
//! assert!(keys.get("2024-02").is_some());
//! # Ok::<(), tenancy_auth::Error>(())
//! ```

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{AlgorithmFamily, DecodingKey, EncodingKey};
use serde::Deserialize;

pub use jsonwebtoken::Algorithm;

use crate::error::{Error, Result};

/// Smallest RSA modulus accepted, in bits.
///
/// Why this default: 2048 bits is the floor in current guidance (NIST SP 800-131A, RFC 7518
/// §3.3); smaller moduli are factorable by a determined attacker.
pub const MIN_RSA_BITS: usize = 2048;

/// Largest RSA modulus accepted, in bits.
///
/// Why this limit: it is the largest the verification backend accepts (RustCrypto `rsa`'s
/// default), so a larger key could verify no signature at all; refusing it at load keeps it
/// out of key sets instead of refusing every token signed under it.
pub const MAX_RSA_BITS: usize = 4096;

/// Largest RSA public exponent accepted: 2^33 - 1, the backend's limit.
const MAX_RSA_EXPONENT: u64 = (1 << 33) - 1;

/// All algorithms this crate knows, in a stable order.
pub const ALL_ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The JOSE name of an algorithm (`"HS256"`, `"EdDSA"`, ...).
pub fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        // `Algorithm` is non-exhaustive; EdDSA is the only other one today.
        _ => "EdDSA",
    }
}

/// A set of algorithms as a bit mask (cheap to copy and test).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AlgSet(u16);

impl AlgSet {
    fn bit(alg: Algorithm) -> u16 {
        let i = ALL_ALGORITHMS.iter().position(|a| *a == alg).unwrap_or(15);
        1 << i
    }
    pub(crate) fn insert(&mut self, alg: Algorithm) {
        self.0 |= Self::bit(alg);
    }
    pub(crate) fn contains(self, alg: Algorithm) -> bool {
        self.0 & Self::bit(alg) != 0
    }
    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// Every public-key algorithm (all but `HS*`).
    #[cfg(feature = "jwks")]
    pub(crate) fn asymmetric() -> Self {
        ALL_ALGORITHMS
            .into_iter()
            .filter(|a| a.family() != AlgorithmFamily::Hmac)
            .collect()
    }
    pub(crate) fn iter(self) -> impl Iterator<Item = Algorithm> {
        ALL_ALGORITHMS
            .into_iter()
            .filter(move |a| self.contains(*a))
    }
}

impl fmt::Debug for AlgSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(algorithm_name))
            .finish()
    }
}

impl FromIterator<Algorithm> for AlgSet {
    fn from_iter<I: IntoIterator<Item = Algorithm>>(iter: I) -> Self {
        let mut s = Self::default();
        for a in iter {
            s.insert(a);
        }
        s
    }
}

fn hmac_min_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

fn check_family(alg: Algorithm, family: AlgorithmFamily) -> Result<()> {
    if alg.family() == family {
        Ok(())
    } else {
        Err(Error::WeakKey {
            alg,
            reason: "the key is of another family than the algorithm",
        })
    }
}

fn check_hmac(secret: &[u8], alg: Algorithm) -> Result<()> {
    check_family(alg, AlgorithmFamily::Hmac)?;
    if secret.len() < hmac_min_len(alg) {
        return Err(Error::WeakKey {
            alg,
            reason: "HMAC secret shorter than the hash output (RFC 7518 §3.2)",
        });
    }
    Ok(())
}

/// `bytes` (a big-endian unsigned integer) without its leading zero bytes.
fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let leading = bytes.iter().take_while(|b| **b == 0).count();
    &bytes[leading..]
}

/// Checks an RSA modulus and public exponent as the verification backend will: modulus of
/// [`MIN_RSA_BITS`] to [`MAX_RSA_BITS`] bits and odd; exponent odd, from 3 to 2^33 - 1, and
/// below the modulus.
fn check_rsa(n: &[u8], e: &[u8], alg: Algorithm) -> Result<()> {
    let weak = |reason| Err(Error::WeakKey { alg, reason });
    let (n, e) = (strip_zeros(n), strip_zeros(e));
    // Whole bytes for the floor, as ever; the exact length for the ceiling.
    let Some(first) = n.first() else {
        return weak("RSA modulus shorter than 2048 bits");
    };
    if n.len() * 8 < MIN_RSA_BITS {
        return weak("RSA modulus shorter than 2048 bits");
    }
    let bits = n.len() * 8 - first.leading_zeros() as usize;
    if bits > MAX_RSA_BITS {
        return weak("RSA modulus longer than 4096 bits");
    }
    if n.last().is_none_or(|b| b % 2 == 0) {
        return weak("RSA modulus is even");
    }
    if e.len() > 8 {
        return weak("RSA public exponent above 2^33 - 1");
    }
    let exponent = e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    if exponent > MAX_RSA_EXPONENT {
        return weak("RSA public exponent above 2^33 - 1");
    }
    if exponent < 3 || exponent % 2 == 0 {
        return weak("RSA public exponent must be odd and at least 3");
    }
    // Unreachable while moduli have at least 2048 bits and exponents at most 34; kept so
    // that this check does not depend on the other two.
    if e.len() > n.len() || (e.len() == n.len() && e >= n) {
        return weak("RSA public exponent not below the modulus");
    }
    Ok(())
}

/// Refuses an Ed25519 public key of small order (the identity and the other seven points of
/// order dividing 8, in any of their encodings). The backend verifies without the strict
/// checks, and under such a key a signature that anyone can write (`R` the identity, `s`
/// zero) verifies for every message: whoever gets it into a key set can have any token
/// accepted. No key made from a private key is one of them.
fn check_ed25519(x: &[u8]) -> Result<()> {
    let weak = |reason| Error::WeakKey {
        alg: Algorithm::EdDSA,
        reason,
    };
    let bytes: &[u8; 32] = x
        .try_into()
        .map_err(|_| Error::invalid_key("Ed25519", "a public key is 32 bytes"))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(bytes)
        .map_err(|e| Error::invalid_key("Ed25519", e))?;
    if key.is_weak() {
        return Err(weak(
            "Ed25519 public key of small order (any signature forger could use it)",
        ));
    }
    Ok(())
}

/// Builds the backend's verifier for `key` once, as every verification would: a key it
/// cannot use (an EC point off its curve, bytes that are no Ed25519 point) is refused at
/// load, rather than turning every signature under it into a mismatch. RSA keys are built
/// by the backend only while verifying; [`check_rsa`] checks what it would.
fn check_usable(key: &DecodingKey, alg: Algorithm, what: &'static str) -> Result<()> {
    crate::crypto_provider();
    // An empty signature over an empty message: `Ok(false)` from a usable key.
    jsonwebtoken::crypto::verify("", b"", key, alg)
        .map(|_| ())
        .map_err(|e| Error::invalid_key(what, e))
}

/// Checks an asymmetric public key against its algorithm: RSA modulus size and exponent,
/// EC curve, and that the backend can use it at all.
fn check_public(key: &DecodingKey, alg: Algorithm) -> Result<()> {
    crate::crypto_provider();
    check_family(alg, key.family())?;
    let jwk =
        Jwk::from_decoding_key(key, Some(alg)).map_err(|e| Error::invalid_key("public", e))?;
    match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = URL_SAFE_NO_PAD
                .decode(&p.n)
                .map_err(|e| Error::invalid_key("RSA", e))?;
            let e = URL_SAFE_NO_PAD
                .decode(&p.e)
                .map_err(|e| Error::invalid_key("RSA", e))?;
            check_rsa(&n, &e, alg)?;
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let expected = match alg {
                Algorithm::ES256 => EllipticCurve::P256,
                _ => EllipticCurve::P384,
            };
            if p.curve != expected {
                return Err(Error::WeakKey {
                    alg,
                    reason: "the EC key is on another curve than the algorithm's",
                });
            }
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve != EllipticCurve::Ed25519 => {
            return Err(Error::WeakKey {
                alg,
                reason: "only Ed25519 keys are supported for EdDSA",
            });
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            let x = URL_SAFE_NO_PAD
                .decode(&p.x)
                .map_err(|e| Error::invalid_key("Ed25519", e))?;
            check_ed25519(&x)?;
        }
        _ => {}
    }
    check_usable(key, alg, "public")
}

fn der_to_pem(der: &[u8], label: &str) -> String {
    let b64 = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// A verification key: a public key (or an HMAC secret) bound to one algorithm, with an
/// optional key id.
#[derive(Clone)]
pub struct VerifyKey {
    kid: Option<Arc<str>>,
    alg: Algorithm,
    key: DecodingKey,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &algorithm_name(self.alg))
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// An HMAC secret for `HS256`, `HS384` or `HS512`.
    ///
    /// Refused when shorter than the hash output (32, 48 or 64 bytes): RFC 7518 §3.2 requires
    /// it, and a short secret can be brute-forced from a single token.
    pub fn hmac(secret: &[u8], alg: Algorithm) -> Result<Self> {
        check_hmac(secret, alg)?;
        Ok(Self::new(DecodingKey::from_secret(secret), alg))
    }

    /// An RSA public key in PEM (`PUBLIC KEY` or `RSA PUBLIC KEY`), for `RS*` or `PS*`.
    /// Moduli under [`MIN_RSA_BITS`] or over [`MAX_RSA_BITS`] are refused, and so are public
    /// exponents that are even, below 3 or above 2^33 - 1.
    pub fn rsa_pem(pem: &[u8], alg: Algorithm) -> Result<Self> {
        let key = DecodingKey::from_rsa_pem(pem).map_err(|e| Error::invalid_key("RSA PEM", e))?;
        check_public(&key, alg)?;
        Ok(Self::new(key, alg))
    }

    /// An RSA public key in DER: SubjectPublicKeyInfo or PKCS#1 `RSAPublicKey`.
    pub fn rsa_der(der: &[u8], alg: Algorithm) -> Result<Self> {
        Self::rsa_pem(der_to_pem(der, "PUBLIC KEY").as_bytes(), alg)
            .or_else(|_| Self::rsa_pem(der_to_pem(der, "RSA PUBLIC KEY").as_bytes(), alg))
    }

    /// An EC public key in PEM (`PUBLIC KEY`): P-256 for `ES256`, P-384 for `ES384`.
    pub fn ec_pem(pem: &[u8], alg: Algorithm) -> Result<Self> {
        let key = DecodingKey::from_ec_pem(pem).map_err(|e| Error::invalid_key("EC PEM", e))?;
        check_public(&key, alg)?;
        Ok(Self::new(key, alg))
    }

    /// An EC public key in DER (SubjectPublicKeyInfo).
    pub fn ec_der(der: &[u8], alg: Algorithm) -> Result<Self> {
        Self::ec_pem(der_to_pem(der, "PUBLIC KEY").as_bytes(), alg)
    }

    /// An Ed25519 public key in PEM (`PUBLIC KEY`), for `EdDSA`.
    pub fn ed_pem(pem: &[u8]) -> Result<Self> {
        let key =
            DecodingKey::from_ed_pem(pem).map_err(|e| Error::invalid_key("Ed25519 PEM", e))?;
        check_public(&key, Algorithm::EdDSA)?;
        Ok(Self::new(key, Algorithm::EdDSA))
    }

    /// An Ed25519 public key in DER (SubjectPublicKeyInfo).
    pub fn ed_der(der: &[u8]) -> Result<Self> {
        Self::ed_pem(der_to_pem(der, "PUBLIC KEY").as_bytes())
    }

    /// A key from one JSON Web Key (RFC 7517).
    ///
    /// The key's `kid` is kept. Without an `alg` member the algorithm follows the key type:
    /// `RS256` for RSA, `ES256`/`ES384` by curve, `EdDSA` for Ed25519, `HS256` for `oct`. A key
    /// whose `use` is not `sig`, or whose `key_ops` do not include `verify`, is refused.
    ///
    /// A symmetric (`oct`) JWK is accepted here, for a shared secret you hold yourself (a
    /// local file or secret store). A key set published for others to read never yields one:
    /// [`KeySet::from_jwks`] and [`JwksKeySet`](crate::JwksKeySet) skip symmetric keys.
    pub fn from_jwk(json: &[u8]) -> Result<Self> {
        let raw: RawJwk = serde_json::from_slice(json).map_err(|e| Error::invalid_key("JWK", e))?;
        raw.into_key()
    }

    fn new(key: DecodingKey, alg: Algorithm) -> Self {
        Self {
            kid: None,
            alg,
            key,
        }
    }

    /// With this key id (`kid`), matched against the token header's `kid`.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(Arc::from(kid.into()));
        self
    }

    /// The key id, if any.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Whether `other` is this very key: same `kid`, algorithm and key material. A set that
    /// keeps a `kid` but changes what stands behind it has retired the old key.
    #[cfg(feature = "jwks")]
    pub(crate) fn same_as(&self, other: &VerifyKey) -> bool {
        use jsonwebtoken::DecodingKeyKind as K;
        self.kid == other.kid
            && self.alg == other.alg
            && match (self.key.kind(), other.key.kind()) {
                (K::SecretOrDer(a), K::SecretOrDer(b)) => a == b,
                (K::RsaModulusExponent { n, e }, K::RsaModulusExponent { n: n2, e: e2 }) => {
                    n == n2 && e == e2
                }
                _ => false,
            }
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}

/// One JWK as found in a JWKS document. Unknown members are ignored; duplicates refused.
#[derive(Deserialize)]
pub(crate) struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    k: Option<String>,
}

fn b64_field(v: Option<&String>, what: &'static str) -> Result<Vec<u8>> {
    let s = v.ok_or_else(|| Error::invalid_key(what, "missing member"))?;
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| Error::invalid_key(what, e))
}

impl RawJwk {
    /// Whether this JWK is a shared secret: `kty` `oct`, or an HMAC `alg` whatever its `kty`.
    fn is_symmetric(&self) -> bool {
        self.kty == "oct"
            || self
                .alg
                .as_deref()
                .is_some_and(|a| a.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("HS")))
    }

    pub(crate) fn into_key(self) -> Result<VerifyKey> {
        if self.use_.as_deref().is_some_and(|u| u != "sig") {
            return Err(Error::invalid_key("JWK", "`use` is not `sig`"));
        }
        if let Some(ops) = &self.key_ops
            && !ops.iter().any(|o| o == "verify")
        {
            return Err(Error::invalid_key(
                "JWK",
                "`key_ops` does not allow `verify`",
            ));
        }
        let named = match self.alg.as_deref() {
            None => None,
            Some(name) => Some(
                name.parse::<Algorithm>()
                    .map_err(|e| Error::invalid_key("JWK `alg`", e))?,
            ),
        };
        let key = match self.kty.as_str() {
            "RSA" => {
                let alg = named.unwrap_or(Algorithm::RS256);
                let n = b64_field(self.n.as_ref(), "JWK `n`")?;
                let e = b64_field(self.e.as_ref(), "JWK `e`")?;
                let key = DecodingKey::from_rsa_raw_components(&n, &e);
                check_public(&key, alg)?;
                VerifyKey::new(key, alg)
            }
            "EC" => {
                let (alg, len) = match self.crv.as_deref() {
                    Some("P-256") => (Algorithm::ES256, 32),
                    Some("P-384") => (Algorithm::ES384, 48),
                    _ => return Err(Error::invalid_key("JWK", "unsupported EC curve")),
                };
                if named.is_some_and(|n| n != alg) {
                    return Err(Error::WeakKey {
                        alg,
                        reason: "JWK `alg` does not match its curve",
                    });
                }
                let x = b64_field(self.x.as_ref(), "JWK `x`")?;
                let y = b64_field(self.y.as_ref(), "JWK `y`")?;
                if x.len() != len || y.len() != len {
                    return Err(Error::invalid_key(
                        "JWK",
                        "EC coordinates of the wrong size",
                    ));
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let key = DecodingKey::from_ec_der(&point);
                check_usable(&key, alg, "JWK EC")?;
                VerifyKey::new(key, alg)
            }
            "OKP" => {
                if self.crv.as_deref() != Some("Ed25519") {
                    return Err(Error::invalid_key("JWK", "unsupported OKP curve"));
                }
                if named.is_some_and(|n| n != Algorithm::EdDSA) {
                    return Err(Error::WeakKey {
                        alg: Algorithm::EdDSA,
                        reason: "JWK `alg` does not match an Ed25519 key",
                    });
                }
                let x = b64_field(self.x.as_ref(), "JWK `x`")?;
                if x.len() != 32 {
                    return Err(Error::invalid_key("JWK", "Ed25519 key of the wrong size"));
                }
                check_ed25519(&x)?;
                let key = DecodingKey::from_ed_der(&x);
                check_usable(&key, Algorithm::EdDSA, "JWK Ed25519")?;
                VerifyKey::new(key, Algorithm::EdDSA)
            }
            "oct" => {
                let alg = named.unwrap_or(Algorithm::HS256);
                let k = b64_field(self.k.as_ref(), "JWK `k`")?;
                VerifyKey::hmac(&k, alg)?
            }
            _ => return Err(Error::invalid_key("JWK", "unsupported key type")),
        };
        Ok(match self.kid {
            Some(kid) => key.with_kid(kid),
            None => key,
        })
    }
}

/// Several verification keys at once, found by `kid`: during a rotation both the old and the
/// new key verify.
///
/// A key added with a `kid` that is already present replaces the older one.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<VerifyKey>,
}

impl KeySet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// With `key` added (replacing a key of the same `kid`).
    pub fn with(mut self, key: VerifyKey) -> Self {
        self.insert(key);
        self
    }

    /// Adds `key` (replacing a key of the same `kid`).
    pub fn insert(&mut self, key: VerifyKey) {
        if let Some(kid) = key.kid() {
            self.keys.retain(|k| k.kid() != Some(kid));
        }
        self.keys.push(key);
    }

    /// Removes the key with this `kid`; `true` when there was one.
    pub fn remove(&mut self, kid: &str) -> bool {
        let before = self.keys.len();
        self.keys.retain(|k| k.kid() != Some(kid));
        before != self.keys.len()
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&VerifyKey> {
        self.keys.iter().find(|k| k.kid() == Some(kid))
    }

    /// Every key.
    pub fn iter(&self) -> impl Iterator<Item = &VerifyKey> {
        self.keys.iter()
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Reads a JWKS document (`{"keys":[...]}`): the public keys an identity provider
    /// publishes.
    ///
    /// Keys this crate cannot use (encryption keys, unknown types or curves, RSA moduli under
    /// 2048 or over 4096 bits, RSA exponents that are even, below 3 or above 2^33 - 1, EC
    /// points off their curve, invalid Ed25519 points) are skipped, so that one exotic key does not take the whole set down; the number
    /// skipped is returned beside the set. A document that is not a JWKS is an error.
    ///
    /// Symmetric keys (`kty` `oct`, or any `HS*` `alg`) are skipped too, counted among the
    /// skipped, with a warning in the log. Why: a JWKS is published for anyone to read, and
    /// whoever reads an HMAC secret can sign tokens with it; honouring one would let every
    /// reader of the document forge tokens for its issuer. A shared secret you hold locally
    /// loads with [`VerifyKey::hmac`] or [`VerifyKey::from_jwk`].
    ///
    /// One `kid` may name keys of different algorithms (RFC 7517 section 4.5 allows it for
    /// alternatives of different key types): a token's `alg` picks among them. Two different
    /// keys of one algorithm under one `kid` are both skipped, counted and named in a warning,
    /// since nothing in a token could say which one signed it. A key published twice is kept
    /// once.
    ///
    /// ```
    /// use tenancy_auth::KeySet;
    ///
    /// let doc = br#"{"keys":[
    ///     {"kty":"oct","kid":"shared","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"},
    ///     {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    /// ]}"#;
    /// let (keys, skipped) = KeySet::from_jwks(doc)?;
    /// assert_eq!((keys.len(), skipped), (1, 1));
    /// assert!(keys.get("shared").is_none());
    /// # Ok::<(), tenancy_auth::Error>(())
    /// ```
    pub fn from_jwks(json: &[u8]) -> Result<(Self, usize)> {
        let parsed = Self::parse_jwks(json)?;
        parsed.warn("document");
        Ok((parsed.set, parsed.skipped))
    }

    /// [`KeySet::from_jwks`] without the warning, telling symmetric keys apart so that the
    /// caller can warn with its own context.
    pub(crate) fn parse_jwks(json: &[u8]) -> Result<ParsedJwks> {
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<Entry>,
        }
        /// A key as [`RawJwk`] reads it, or anything else (skipped). Read straight from the
        /// document, so that a key with a member twice is refused here as by
        /// [`VerifyKey::from_jwk`]: through a JSON value, the last of the two would win.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Entry {
            Key(Box<RawJwk>),
            Other(serde::de::IgnoredAny),
        }
        let doc: Doc = serde_json::from_slice(json).map_err(|e| Error::InvalidKeySet(e.into()))?;
        let mut parsed = ParsedJwks {
            set: Self::new(),
            skipped: 0,
            symmetric: 0,
            ambiguous: Vec::new(),
        };
        let mut keys: Vec<VerifyKey> = Vec::with_capacity(doc.keys.len());
        for entry in doc.keys {
            let Entry::Key(raw) = entry else {
                parsed.skipped += 1;
                continue;
            };
            if raw.is_symmetric() {
                parsed.skipped += 1;
                parsed.symmetric += 1;
                continue;
            }
            match (*raw).into_key() {
                // A key published twice is one key.
                Ok(k) if keys.iter().any(|other| other.same_as(&k)) => {}
                Ok(k) => keys.push(k),
                Err(_) => parsed.skipped += 1,
            }
        }
        // One kid may name keys of different algorithms (RFC 7517 4.5: alternatives of
        // different key types); a token's `alg` picks one of them. Two different keys under one
        // kid and algorithm leave no way to tell which one signs: neither is used.
        let (kept, dropped): (Vec<_>, Vec<_>) = keys.iter().partition(|k| {
            k.kid().is_none_or(|kid| {
                !keys.iter().any(|other| {
                    other.kid() == Some(kid) && other.alg == k.alg && !other.same_as(k)
                })
            })
        });
        parsed.skipped += dropped.len();
        for k in dropped {
            if let Some(kid) = k.kid()
                && !parsed.ambiguous.iter().any(|a| a == kid)
            {
                parsed.ambiguous.push(kid.to_owned());
            }
        }
        parsed.set.keys = kept.into_iter().cloned().collect();
        Ok(parsed)
    }

    /// The key a token with this `kid` and `alg` is verified with; `None` when no key carries
    /// the `kid` or none of them is for `alg`.
    pub(crate) fn find(&self, kid: &str, alg: Algorithm) -> Option<&VerifyKey> {
        self.keys
            .iter()
            .find(|k| k.kid() == Some(kid) && k.alg == alg)
    }

    pub(crate) fn algorithms(&self) -> AlgSet {
        self.keys.iter().map(|k| k.alg).collect()
    }
}

/// A JWKS document read by [`KeySet::parse_jwks`].
pub(crate) struct ParsedJwks {
    /// The usable keys.
    pub(crate) set: KeySet,
    /// Keys left out, symmetric ones included.
    pub(crate) skipped: usize,
    /// Of the skipped, the symmetric (HMAC) keys.
    pub(crate) symmetric: usize,
    /// The kids that name two different keys of one algorithm (their keys are among the
    /// skipped).
    pub(crate) ambiguous: Vec<String>,
}

impl ParsedJwks {
    /// Logs what was left out for a reason the provider should hear about: symmetric keys,
    /// and kids naming two different keys of one algorithm. `source` names the document.
    pub(crate) fn warn(&self, source: &str) {
        if self.symmetric > 0 {
            tracing::warn!(
                source,
                symmetric = self.symmetric,
                "JWKS publishes symmetric (HMAC) keys: skipped, since anyone who can read the \
                 document could sign tokens with them"
            );
        }
        if !self.ambiguous.is_empty() {
            tracing::warn!(
                source,
                kids = ?self.ambiguous,
                "JWKS names two different keys of one algorithm with the same kid: neither is \
                 used, since a token could not say which one signed it"
            );
        }
    }
}

/// A signing key (private key or HMAC secret) bound to one algorithm, with an optional `kid`.
#[derive(Clone)]
pub struct SigningKey {
    kid: Option<String>,
    alg: Algorithm,
    key: EncodingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &algorithm_name(self.alg))
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// An HMAC secret (at least 32, 48 or 64 bytes for HS256, HS384, HS512).
    pub fn hmac(secret: &[u8], alg: Algorithm) -> Result<Self> {
        check_hmac(secret, alg)?;
        Ok(Self::new(EncodingKey::from_secret(secret), alg))
    }

    /// An RSA private key in PEM (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`).
    pub fn rsa_pem(pem: &[u8], alg: Algorithm) -> Result<Self> {
        let key =
            EncodingKey::from_rsa_pem(pem).map_err(|e| Error::invalid_key("RSA private PEM", e))?;
        Self::checked(key, alg)
    }

    /// An EC private key in PKCS#8 PEM (`PRIVATE KEY`), P-256 or P-384.
    pub fn ec_pem(pem: &[u8], alg: Algorithm) -> Result<Self> {
        let key =
            EncodingKey::from_ec_pem(pem).map_err(|e| Error::invalid_key("EC private PEM", e))?;
        Self::checked(key, alg)
    }

    /// An Ed25519 private key in PKCS#8 PEM (`PRIVATE KEY`).
    pub fn ed_pem(pem: &[u8]) -> Result<Self> {
        let key = EncodingKey::from_ed_pem(pem)
            .map_err(|e| Error::invalid_key("Ed25519 private PEM", e))?;
        Self::checked(key, Algorithm::EdDSA)
    }

    fn checked(key: EncodingKey, alg: Algorithm) -> Result<Self> {
        let this = Self::new(key, alg);
        // Derive the public half now: it validates the key against the algorithm.
        this.verify_key()?;
        Ok(this)
    }

    /// Unchecked: the key may not suit `alg` (the issuer's tests make one that cannot sign).
    pub(crate) fn new(key: EncodingKey, alg: Algorithm) -> Self {
        Self {
            kid: None,
            alg,
            key,
        }
    }

    /// With this key id, written into every token's header.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The key id, if any.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The matching verification key (the public half, or the same secret for HMAC), with the
    /// same `kid`.
    pub fn verify_key(&self) -> Result<VerifyKey> {
        crate::crypto_provider();
        let key = if self.alg.family() == AlgorithmFamily::Hmac {
            check_family(self.alg, self.key.family())?;
            VerifyKey::new(DecodingKey::from_secret(self.key.as_bytes()), self.alg)
        } else {
            let jwk = Jwk::from_encoding_key(&self.key, self.alg)
                .map_err(|e| Error::invalid_key("private", e))?;
            let key = DecodingKey::from_jwk(&jwk).map_err(|e| Error::invalid_key("private", e))?;
            check_public(&key, self.alg)?;
            VerifyKey::new(key, self.alg)
        };
        Ok(match &self.kid {
            Some(kid) => key.with_kid(kid.clone()),
            None => key,
        })
    }

    /// The public key as a JWK (JSON), for publishing in a JWKS; `None` for HMAC secrets,
    /// which must never be published.
    pub fn public_jwk(&self) -> Result<Option<serde_json::Value>> {
        if self.alg.family() == AlgorithmFamily::Hmac {
            return Ok(None);
        }
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg)
            .map_err(|e| Error::invalid_key("private", e))?;
        jwk.common.key_id = self.kid.clone();
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        serde_json::to_value(&jwk)
            .map(Some)
            .map_err(|e| Error::invalid_key("JWK", e))
    }

    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.key
    }
}
