//! [`JwtVerifier`]: the [`TokenVerifier`] for JWT access tokens.
//!
//! What it checks, in order, and the [`TokenRejection`] each failure gives:
//!
//! | step | refusal |
//! |---|---|
//! | length over the limit (8 KiB by default), before any decoding | `Oversized` |
//! | not three base64url segments, bad base64, header not a JSON object, duplicate header members, a `crit` header | `Malformed` |
//! | `alg` outside the allowed set (`none` is never in it) | `AlgorithmNotAllowed` |
//! | with several issuers: `iss` names none of them | `UnknownIssuer` |
//! | no key for the token (see below) | `UnknownKey` |
//! | the key found is bound to another algorithm than the header's | `AlgorithmNotAllowed` |
//! | signature does not verify (stripped, flipped byte, wrong key) | `BadSignature` |
//! | claims not a JSON object or with duplicate members; a required claim missing or mistyped; a date past year 9999; a `jti` that is empty, over 1024 bytes or holds a control character | `Malformed`, `MissingClaim`, `InvalidClaim` |
//! | `exp` passed, `nbf` or `iat` in the future (each beyond the leeway) | `Expired`, `NotYetValid` |
//! | `iss` not the issuer whose keys verified it, or that issuer not trusted for the token's tenant | `WrongIssuer` |
//! | `aud` without any of the configured audiences | `WrongAudience` |
//! | `jti` on the denylist (a token without `jti`: its [`revocation_id`]; with [`denylist_only_without_session`](JwtVerifierBuilder::denylist_only_without_session), only for a token without `sid`) | `Revoked` |
//! | the `sid` session has ended, or is another user's | `SessionEnded` |
//!
//! The key for a token: when its header's `kid` names a key of the issuer, that key and no
//! other. Otherwise (no `kid`, or one that no key carries, after a permitted JWKS refresh)
//! the keys bound to the header's `alg`: without a `kid`, all of them; with an unknown `kid`,
//! those configured without a `kid` (a single secret or public key, as most deployments
//! configure, while most libraries write a `kid` into every token). None of them:
//! `UnknownKey`.
//!
//! A JWKS provider that is down while no key set has ever been fetched gives
//! [`Error::Unavailable`]; a session store or denylist failure is passed on as it is (fail
//! closed).
//!
//! ```
//! use tenancy_auth::{Algorithm, JwtVerifier, KeySet, SigningKey, TokenIssuer};
//! use tenancy_core::{TokenRejection, TokenVerifier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = SigningKey::hmac(b"0123456789abcdef0123456789abcdef", Algorithm::HS256)?;
//! let verifier = JwtVerifier::builder()
//!     .issuer("https://id.example", KeySet::new().with(key.verify_key()?))
//!     .audience("api")
//!     .build()?;
//!
//! let issuer = TokenIssuer::builder(key, "https://id.example", "api").build()?;
//! let token = issuer.access_token(
//!     &"acme".parse()?, &"alice".parse()?, &"user".parse()?,
//!     &["records:read".parse()?].into_iter().collect(), None,
//! )?;
//! let claims = verifier.verify(&token).await?;
//! assert_eq!(claims.tenant_id.as_str(), "acme");
//!
//! let refused = verifier.verify("e30.e30.").await.unwrap_err();
//! assert!(matches!(refused, tenancy_core::Error::Rejected(TokenRejection::Malformed)));
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::de::IgnoredAny;
use tenancy_core::{
    Claims, Error, Health, HealthCheck, HealthStatus, ParseError, Result, SessionStore,
    SharedClock, TenantId, TokenRejection, TokenVerifier, system_clock,
};

use crate::cache::{CacheStats, Digest32, VerificationCache, digest};
use crate::key::{AlgSet, Algorithm, KeySet, VerifyKey, algorithm_name};
use crate::revocation::Denylist;

/// Default largest token accepted, in bytes.
///
/// Why this default: access tokens are a few hundred bytes to 2 KiB; 8 KiB leaves room for
/// long permission lists while bounding the work an attacker can make us do per request
/// (base64 and JSON decoding happen only after this check).
pub const DEFAULT_MAX_TOKEN_LEN: usize = 8 * 1024;

/// Default clock leeway for `exp`, `nbf` and `iat`.
///
/// Why this default: 30 seconds absorbs ordinary clock drift between the issuer and this
/// server while keeping an expired token's extra life short.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Largest clock leeway [`JwtVerifierBuilder::build`] accepts: more is no clock drift but an
/// extension of every token's life (`Duration::MAX` would accept expired tokens forever).
const MAX_LEEWAY: Duration = Duration::from_secs(5 * 60);

/// Default verification cache capacity (entries).
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// Default bound on the memory of the verification cache's entries: 64 MiB, room for the
/// default 10 000 entries of tokens carrying a few dozen permissions each.
pub const DEFAULT_CACHE_MEMORY: usize = 64 << 20;

/// 9999-12-31T23:59:59Z: `exp`, `nbf` and `iat` beyond it are refused as invalid.
const MAX_NUMERIC_DATE: i64 = 253_402_300_799;

fn reject(r: TokenRejection) -> Error {
    Error::Rejected(r)
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum KeySource {
    /// A fixed set of keys.
    Static(Arc<KeySet>),
    /// Keys fetched from a JWKS URL and kept fresh.
    #[cfg(feature = "jwks")]
    Jwks(crate::jwks::JwksKeySet),
}

impl From<KeySet> for KeySource {
    fn from(k: KeySet) -> Self {
        Self::Static(Arc::new(k))
    }
}

impl From<VerifyKey> for KeySource {
    fn from(k: VerifyKey) -> Self {
        Self::Static(Arc::new(KeySet::new().with(k)))
    }
}

#[cfg(feature = "jwks")]
impl From<crate::jwks::JwksKeySet> for KeySource {
    fn from(k: crate::jwks::JwksKeySet) -> Self {
        Self::Jwks(k)
    }
}

/// One trusted issuer: its name, its keys and, optionally, the tenants it may speak for.
#[derive(Debug, Clone)]
struct TrustedIssuer {
    iss: String,
    keys: KeySource,
    tenants: Option<HashSet<TenantId>>,
}

/// Builds a [`JwtVerifier`]; see [`JwtVerifier::builder`].
#[derive(Debug)]
#[must_use]
pub struct JwtVerifierBuilder {
    issuers: Vec<TrustedIssuer>,
    audiences: Vec<String>,
    algorithms: Option<AlgSet>,
    leeway: Duration,
    max_len: usize,
    cache_capacity: usize,
    cache_memory: usize,
    denylist: Option<Arc<dyn Denylist>>,
    sessions: Option<Arc<dyn SessionStore>>,
    require_session: bool,
    denylist_without_session_only: bool,
    clock: SharedClock,
}

impl JwtVerifierBuilder {
    /// Trusts tokens from `iss` signed by one of `keys` (a [`KeySet`], a single
    /// [`VerifyKey`] or a JWKS source), for any tenant.
    pub fn issuer(mut self, iss: impl Into<String>, keys: impl Into<KeySource>) -> Self {
        self.issuers.push(TrustedIssuer {
            iss: iss.into(),
            keys: keys.into(),
            tenants: None,
        });
        self
    }

    /// Trusts tokens from `iss` signed by one of `keys` only for the listed tenants: a tenant
    /// that brings its own identity provider cannot mint tokens for anyone else, nor tokens
    /// with the platform-wide `super_admin` role (refused as an invalid `user_role`).
    pub fn tenant_issuer(
        mut self,
        iss: impl Into<String>,
        keys: impl Into<KeySource>,
        tenants: impl IntoIterator<Item = TenantId>,
    ) -> Self {
        self.issuers.push(TrustedIssuer {
            iss: iss.into(),
            keys: keys.into(),
            tenants: Some(tenants.into_iter().collect()),
        });
        self
    }

    /// Accepts tokens whose `aud` contains `aud` (call again to accept several). At least one
    /// audience is required: a token meant for another service must not work here.
    pub fn audience(mut self, aud: impl Into<String>) -> Self {
        self.audiences.push(aud.into());
        self
    }

    /// The algorithms a token header may name. `none` is not an algorithm here and can never
    /// be allowed.
    ///
    /// Without this call the allowed set is the algorithms of the static keys given plus,
    /// when an issuer's keys come from a JWKS, every public-key algorithm (`RS*`, `PS*`,
    /// `ES*`, `EdDSA`). Why this default: the keys a JWKS will publish are not known when the
    /// verifier is built, and allowing their algorithms costs nothing in safety, since every
    /// key verifies only the one algorithm it is bound to (a token naming another is
    /// refused) and a JWKS never yields an HMAC key. `HS*` is allowed only for static HMAC
    /// keys. Set the list to narrow it further.
    pub fn algorithms(mut self, algs: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = Some(algs.into_iter().collect());
        self
    }

    /// Clock leeway for `exp`, `nbf` and `iat` (default [`DEFAULT_LEEWAY`]; at most 5 minutes,
    /// or [`build`](Self::build) refuses: a longer one extends every token's life).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Largest token accepted, in bytes (default [`DEFAULT_MAX_TOKEN_LEN`]).
    pub fn max_token_len(mut self, bytes: usize) -> Self {
        self.max_len = bytes;
        self
    }

    /// Verification cache capacity in entries (default [`DEFAULT_CACHE_CAPACITY`]; `0` turns
    /// the cache off).
    pub fn cache_capacity(mut self, entries: usize) -> Self {
        self.cache_capacity = entries;
        self
    }

    /// The most memory the verification cache's entries may take, in bytes (default
    /// [`DEFAULT_CACHE_MEMORY`]), as it estimates each entry's claims. Why a bound of its
    /// own: an identity provider may stuff tokens with permissions, and the entry count alone
    /// would then let the cache grow to several times its usual size; large entries displace
    /// others instead.
    pub fn cache_memory(mut self, bytes: usize) -> Self {
        self.cache_memory = bytes;
        self
    }

    /// Refuses tokens whose `jti` is on `denylist`.
    pub fn denylist(mut self, denylist: Arc<dyn Denylist>) -> Self {
        self.denylist = Some(denylist);
        self
    }

    /// Refuses tokens whose `sid` names a session that `store` no longer holds (logged out,
    /// revoked, expired).
    pub fn sessions(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.sessions = Some(store);
        self
    }

    /// Asks the denylist only about tokens without a `sid`: a token bound to a session is
    /// ended by ending its session (which the session store already checks on every
    /// verification), so a shared denylist costs no second lookup per request for the usual,
    /// session-bound token. [`JwtVerifier::revoke`] then revokes a session-bound token by
    /// ending its session, never by an entry that would not be looked at. Every verifier
    /// sharing one denylist must be built the same way: an entry another verifier writes for
    /// a session-bound token is not seen by this one. Needs [`sessions`](Self::sessions) and
    /// [`denylist`](Self::denylist).
    pub fn denylist_only_without_session(mut self) -> Self {
        self.denylist_without_session_only = true;
        self
    }

    /// Also refuses tokens without a `sid` (`MissingClaim("sid")`). Needs
    /// [`sessions`](Self::sessions).
    pub fn require_session(mut self) -> Self {
        self.require_session = true;
        self
    }

    /// The clock for `exp`/`nbf`/`iat` checks (default: the system clock).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Checks the configuration and builds the verifier.
    ///
    /// Errors: no issuer, no audience, an empty issuer or audience, no allowed algorithm, the
    /// same issuer twice, `require_session` without a session store,
    /// `denylist_only_without_session` without a session store and a denylist, a maximum
    /// length under 64 bytes, a leeway over 5 minutes.
    #[cfg_attr(not(feature = "jwks"), allow(irrefutable_let_patterns))]
    pub fn build(self) -> crate::Result<JwtVerifier> {
        use crate::Error as E;
        if self.issuers.is_empty() {
            return Err(E::Config("at least one issuer is required".into()));
        }
        if self.audiences.is_empty() {
            return Err(E::Config("at least one audience is required".into()));
        }
        // An empty name is no name: it would match a token whose `iss` or `aud` is empty.
        if self.issuers.iter().any(|i| i.iss.is_empty()) {
            return Err(E::Config("an issuer must not be empty".into()));
        }
        if self.audiences.iter().any(String::is_empty) {
            return Err(E::Config("an audience must not be empty".into()));
        }
        let mut seen = HashSet::new();
        if !self.issuers.iter().all(|i| seen.insert(i.iss.as_str())) {
            return Err(E::Config("an issuer is configured twice".into()));
        }
        if self.require_session && self.sessions.is_none() {
            return Err(E::Config("require_session needs a session store".into()));
        }
        if self.denylist_without_session_only
            && (self.sessions.is_none() || self.denylist.is_none())
        {
            return Err(E::Config(
                "denylist_only_without_session needs a session store and a denylist".into(),
            ));
        }
        if self.max_len < 64 {
            return Err(E::Config("max_token_len must be at least 64 bytes".into()));
        }
        if self.leeway > MAX_LEEWAY {
            return Err(E::Config(
                format!(
                    "leeway ({} s) must be at most {} s: a longer one is no clock drift but an \
                     extension of every token's life",
                    self.leeway.as_secs_f64(),
                    MAX_LEEWAY.as_secs(),
                )
                .into(),
            ));
        }
        let algorithms = match self.algorithms {
            Some(a) => a,
            None => {
                let mut all = AlgSet::default();
                for i in &self.issuers {
                    let algs = match &i.keys {
                        KeySource::Static(k) => k.algorithms(),
                        // Each JWKS key is bound to its own algorithm, never an HMAC one.
                        #[cfg(feature = "jwks")]
                        KeySource::Jwks(_) => AlgSet::asymmetric(),
                    };
                    for a in algs.iter() {
                        all.insert(a);
                    }
                }
                all
            }
        };
        if algorithms.is_empty() {
            return Err(E::Config(
                "no algorithm is allowed: give static keys or call algorithms()".into(),
            ));
        }
        let epoch = Arc::new(AtomicU64::new(0));
        #[cfg(feature = "jwks")]
        for i in &self.issuers {
            if let KeySource::Jwks(j) = &i.keys {
                j.attach_epoch(&epoch);
            }
        }
        Ok(JwtVerifier {
            inner: Arc::new(Inner {
                issuers: self.issuers,
                audiences: self.audiences,
                algorithms,
                leeway: i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX),
                max_len: self.max_len,
                cache: (self.cache_capacity > 0)
                    .then(|| VerificationCache::new(self.cache_capacity, self.cache_memory)),
                epoch,
                denylist: self.denylist,
                sessions: self.sessions,
                require_session: self.require_session,
                denylist_without_session_only: self.denylist_without_session_only,
                clock: self.clock,
            }),
        })
    }
}

struct Inner {
    issuers: Vec<TrustedIssuer>,
    audiences: Vec<String>,
    algorithms: AlgSet,
    leeway: i64,
    max_len: usize,
    cache: Option<VerificationCache>,
    /// Bumped by key sources when a key is retired; cache entries of older epochs are stale.
    epoch: Arc<AtomicU64>,
    denylist: Option<Arc<dyn Denylist>>,
    sessions: Option<Arc<dyn SessionStore>>,
    require_session: bool,
    denylist_without_session_only: bool,
    clock: SharedClock,
}

/// Verifies JWT access tokens: allowed algorithms, keys by issuer and `kid`, signature,
/// strict claims, time, issuer, audience, revocation and session liveness, with a
/// verification cache. Cheap to clone.
///
/// Build one with [`JwtVerifier::builder`]; see the [module docs](crate::verifier) for the
/// checks and their rejection reasons.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("JwtVerifier")
            .field(
                "issuers",
                &i.issuers.iter().map(|x| x.iss.as_str()).collect::<Vec<_>>(),
            )
            .field("audiences", &i.audiences)
            .field("algorithms", &i.algorithms)
            .field("leeway_secs", &i.leeway)
            .field("max_len", &i.max_len)
            .field("cache", &i.cache.as_ref().map(VerificationCache::stats))
            .field("denylist", &i.denylist.is_some())
            .field("sessions", &i.sessions.is_some())
            .finish()
    }
}

/// The header members we read. Deserialising into a struct refuses duplicate members.
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<serde_json::Value>,
    kid: Option<serde_json::Value>,
    crit: Option<IgnoredAny>,
}

/// Only `iss`, to choose among several issuers before verifying.
#[derive(Deserialize)]
struct IssOnly {
    iss: Option<serde_json::Value>,
}

/// Decodes a JSON object into `T`. A derived struct decoder also takes a JSON array (fields
/// by position), which is no JOSE header or claims set: refused, as
/// [`Claims::from_json`] does.
fn json_object<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T> {
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(reject(TokenRejection::Malformed));
    }
    serde_json::from_slice(bytes).map_err(|_| reject(TokenRejection::Malformed))
}

fn b64(segment: &str) -> Result<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| reject(TokenRejection::Malformed))
}

fn parse_alg(name: &str) -> Option<Algorithm> {
    crate::key::ALL_ALGORITHMS
        .into_iter()
        .find(|a| algorithm_name(*a) == name)
}

struct Parts<'a> {
    message: &'a str,
    signature: &'a str,
    payload: Vec<u8>,
    alg: Algorithm,
    kid: Option<String>,
}

impl JwtVerifier {
    /// A builder with the secure defaults: 30 s leeway, 8 KiB limit, a 10 000-entry cache, no
    /// denylist and no session check.
    pub fn builder() -> JwtVerifierBuilder {
        JwtVerifierBuilder {
            issuers: Vec::new(),
            audiences: Vec::new(),
            algorithms: None,
            leeway: DEFAULT_LEEWAY,
            max_len: DEFAULT_MAX_TOKEN_LEN,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            cache_memory: DEFAULT_CACHE_MEMORY,
            denylist: None,
            sessions: None,
            require_session: false,
            denylist_without_session_only: false,
            clock: system_clock(),
        }
    }

    /// Revokes a token this verifier accepted, on its denylist: the token's `jti` is refused
    /// from now until the token could no longer pass here anyway, its `exp` plus the leeway.
    /// (An entry kept only until `exp` would let the token back in for the leeway after it.)
    /// Built with [`denylist_only_without_session`](JwtVerifierBuilder::denylist_only_without_session),
    /// a token with a `sid` is revoked by ending its session instead (with every other token of
    /// that session), since the denylist is not asked about it.
    ///
    /// A token without a `jti` is revoked by its [`revocation_id`], which the verification
    /// looks up as it would the `jti`.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the verifier has no denylist; the denylist's or session store's
    /// own errors.
    pub async fn revoke(&self, claims: &Claims) -> Result<()> {
        let Some(list) = &self.inner.denylist else {
            return Err(ParseError::new("verifier", "has no denylist to revoke tokens on").into());
        };
        if let (true, Some(sid), Some(store)) = (
            self.inner.denylist_without_session_only,
            &claims.sid,
            &self.inner.sessions,
        ) {
            store.delete(&claims.tenant_id, sid).await?;
            return Ok(());
        }
        let until = claims.exp.saturating_add(self.inner.leeway);
        list.revoke(&claims.tenant_id, &revocation_id(claims), until)
            .await
    }

    /// Figures about the verification cache (all zero when it is off).
    pub fn cache_stats(&self) -> CacheStats {
        self.inner
            .cache
            .as_ref()
            .map(VerificationCache::stats)
            .unwrap_or_default()
    }

    /// Empties the verification cache (for example after revoking a key by hand).
    pub fn clear_cache(&self) {
        if let Some(c) = &self.inner.cache {
            c.clear();
        }
    }

    fn now(&self) -> i64 {
        self.inner.clock.now().unix_timestamp()
    }

    /// Verifies `token` without the verification cache (the signature is always checked).
    /// Revocation and session liveness are checked as in [`TokenVerifier::verify`].
    pub async fn verify_uncached(&self, token: &str) -> Result<Claims> {
        let claims = self.verify_signed(token).await?;
        self.check_live(&claims).await?;
        Ok(claims)
    }

    /// Splits and decodes the header; the payload is decoded here too (it is needed either
    /// way).
    fn split<'a>(&self, token: &'a str) -> Result<Parts<'a>> {
        if token.len() > self.inner.max_len {
            return Err(reject(TokenRejection::Oversized));
        }
        let mut it = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(reject(TokenRejection::Malformed));
        };
        if h.is_empty() || p.is_empty() {
            return Err(reject(TokenRejection::Malformed));
        }
        let header: RawHeader = json_object(&b64(h)?)?;
        if header.crit.is_some() {
            // We understand no extension, so a critical one must be refused (RFC 7515 §4.1.11).
            return Err(reject(TokenRejection::Malformed));
        }
        let alg = match header.alg {
            Some(serde_json::Value::String(name)) => parse_alg(&name)
                .filter(|a| self.inner.algorithms.contains(*a))
                .ok_or(reject(TokenRejection::AlgorithmNotAllowed))?,
            _ => return Err(reject(TokenRejection::Malformed)),
        };
        let kid = match header.kid {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(k)) => Some(k),
            Some(_) => return Err(reject(TokenRejection::Malformed)),
        };
        let payload = b64(p)?;
        Ok(Parts {
            message: &token[..h.len() + 1 + p.len()],
            signature: s,
            payload,
            alg,
            kid,
        })
    }

    fn choose_issuer(&self, payload: &[u8]) -> Result<&TrustedIssuer> {
        let issuers = &self.inner.issuers;
        if let [only] = issuers.as_slice() {
            return Ok(only);
        }
        let peek: IssOnly = json_object(payload)?;
        let iss = match peek.iss {
            None | Some(serde_json::Value::Null) => {
                return Err(reject(TokenRejection::MissingClaim("iss")));
            }
            Some(serde_json::Value::String(s)) => s,
            Some(_) => return Err(reject(TokenRejection::InvalidClaim("iss"))),
        };
        issuers
            .iter()
            .find(|i| i.iss == iss)
            .ok_or(reject(TokenRejection::UnknownIssuer))
    }

    #[cfg_attr(not(feature = "jwks"), allow(unused_variables))]
    async fn keys(&self, source: &KeySource, kid: Option<&str>) -> Result<Arc<KeySet>> {
        match source {
            KeySource::Static(k) => Ok(Arc::clone(k)),
            #[cfg(feature = "jwks")]
            KeySource::Jwks(j) => j.keys_for(kid).await,
        }
    }

    /// Every check that depends on the token alone (cacheable).
    async fn verify_signed(&self, token: &str) -> Result<Claims> {
        let parts = self.split(token)?;
        let issuer = self.choose_issuer(&parts.payload)?;
        let keys = self.keys(&issuer.keys, parts.kid.as_deref()).await?;
        self.check_signed(&parts, issuer, &keys)
    }

    /// [`JwtVerifier::verify_signed`] without waiting: `None` when the issuer's keys come
    /// from a JWKS source (they may have to be fetched).
    fn try_verify_signed(&self, token: &str) -> Option<Result<Claims>> {
        let parts = match self.split(token) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let issuer = match self.choose_issuer(&parts.payload) {
            Ok(i) => i,
            Err(e) => return Some(Err(e)),
        };
        match &issuer.keys {
            KeySource::Static(keys) => Some(self.check_signed(&parts, issuer, keys)),
            #[cfg(feature = "jwks")]
            KeySource::Jwks(_) => None,
        }
    }

    /// The signature under `keys`, then the claims.
    fn check_signed(
        &self,
        parts: &Parts<'_>,
        issuer: &TrustedIssuer,
        keys: &KeySet,
    ) -> Result<Claims> {
        let verified = match parts.kid.as_deref().filter(|kid| keys.get(kid).is_some()) {
            // A known kid: its own key (of the token's alg, when the kid names keys of
            // several), and no other.
            Some(kid) => {
                let key = keys
                    .find(kid, parts.alg)
                    .ok_or(reject(TokenRejection::AlgorithmNotAllowed))?;
                check_signature(parts, key)?
            }
            // No kid: every key of the header's alg. A kid no key carries: the keys of that
            // alg configured without a kid (a lone secret or public key; most libraries
            // write a kid into every token all the same).
            None => {
                let any_kid = parts.kid.is_none();
                let mut candidates = keys
                    .iter()
                    .filter(|k| k.algorithm() == parts.alg && (any_kid || k.kid().is_none()));
                let first = candidates
                    .next()
                    .ok_or(reject(TokenRejection::UnknownKey))?;
                let mut ok = check_signature(parts, first)?;
                for k in candidates {
                    if ok {
                        break;
                    }
                    ok = check_signature(parts, k)?;
                }
                ok
            }
        };
        if !verified {
            return Err(reject(TokenRejection::BadSignature));
        }
        let claims = Claims::from_json(&parts.payload).map_err(reject)?;
        self.check_claims(issuer, &claims)?;
        Ok(claims)
    }

    fn check_claims(&self, issuer: &TrustedIssuer, claims: &Claims) -> Result<()> {
        // A date past year 9999 is no real expiry; it is refused rather than trusted forever.
        if claims.exp > MAX_NUMERIC_DATE {
            return Err(reject(TokenRejection::InvalidClaim("exp")));
        }
        if claims.nbf.is_some_and(|t| t > MAX_NUMERIC_DATE) {
            return Err(reject(TokenRejection::InvalidClaim("nbf")));
        }
        if claims.iat.is_some_and(|t| t > MAX_NUMERIC_DATE) {
            return Err(reject(TokenRejection::InvalidClaim("iat")));
        }
        let now = self.now();
        let leeway = self.inner.leeway;
        if now >= claims.exp.saturating_add(leeway) {
            return Err(reject(TokenRejection::Expired));
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(leeway))
        {
            return Err(reject(TokenRejection::NotYetValid));
        }
        if claims
            .iat
            .is_some_and(|iat| iat > now.saturating_add(leeway))
        {
            return Err(reject(TokenRejection::NotYetValid));
        }
        if claims.iss != issuer.iss {
            return Err(reject(TokenRejection::WrongIssuer));
        }
        if let Some(tenants) = &issuer.tenants {
            if !tenants.contains(&claims.tenant_id) {
                return Err(reject(TokenRejection::WrongIssuer));
            }
            // A tenant's own provider speaks for its tenants only, never with the
            // platform-wide role (which would be every tenant's admin to whoever trusts
            // `TenantContext::is_super_admin`).
            if claims.user_role.is_super_admin() {
                return Err(reject(TokenRejection::InvalidClaim("user_role")));
            }
        }
        if !self.inner.audiences.iter().any(|a| claims.aud.contains(a)) {
            return Err(reject(TokenRejection::WrongAudience));
        }
        Ok(())
    }

    /// Revocation and session liveness: never cached.
    async fn check_live(&self, claims: &Claims) -> Result<()> {
        let ask_denylist = !(self.inner.denylist_without_session_only && claims.sid.is_some());
        if let (true, Some(list)) = (ask_denylist, &self.inner.denylist)
            && list
                .is_revoked(&claims.tenant_id, &revocation_id(claims))
                .await?
        {
            return Err(reject(TokenRejection::Revoked));
        }
        if let Some(store) = &self.inner.sessions {
            match &claims.sid {
                Some(sid) => {
                    // The session must be live and the token's user's: a `sid` naming
                    // another user's session ends nothing of theirs and proves nothing.
                    let live = store.load(&claims.tenant_id, sid).await?;
                    if live.is_none_or(|s| s.user != claims.user_id) {
                        return Err(reject(TokenRejection::SessionEnded));
                    }
                }
                None if self.inner.require_session => {
                    return Err(reject(TokenRejection::MissingClaim("sid")));
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// The id a token is revoked by on a denylist: its `jti`, or, for a token without one (the
/// standard makes `jti` optional), `~` and the SHA-256 of its claims (base64url), the same for
/// every token with these claims. Tokens with the same claims carry the same rights until the
/// same `exp`: revoking one revokes them all.
///
/// ```
/// use tenancy_auth::verifier::revocation_id;
/// use tenancy_core::Claims;
///
/// let with = |jti: &str| Claims::from_json(format!(
///     r#"{{"iss":"i","aud":"a","sub":"u","exp":4102444800,"tenant_id":"acme","user_id":"u",
///         "user_role":"user","permissions":[]{jti}}}"#).as_bytes()).unwrap();
/// assert_eq!(revocation_id(&with(r#","jti":"j1""#)), "j1");
/// let (a, b) = (with(""), with(""));
/// let derived = revocation_id(&a);
/// assert!(derived.starts_with('~') && derived.len() == 44);
/// assert_eq!(derived, revocation_id(&b));
/// ```
pub fn revocation_id(claims: &Claims) -> std::borrow::Cow<'_, str> {
    use sha2::Digest as _;
    match &claims.jti {
        Some(jti) => std::borrow::Cow::Borrowed(jti),
        None => {
            // Serialising a `Claims` cannot fail (strings, numbers, sets); an empty input
            // would still give one id per claim set's absence, never a panic.
            let bytes = serde_json::to_vec(claims).unwrap_or_default();
            let hash = sha2::Sha256::digest(&bytes);
            std::borrow::Cow::Owned(format!("~{}", URL_SAFE_NO_PAD.encode(hash)))
        }
    }
}

fn check_signature(parts: &Parts<'_>, key: &VerifyKey) -> Result<bool> {
    crate::crypto_provider();
    match jsonwebtoken::crypto::verify(
        parts.signature,
        parts.message.as_bytes(),
        key.decoding_key(),
        parts.alg,
    ) {
        Ok(ok) => Ok(ok),
        Err(e) => match e.kind() {
            jsonwebtoken::errors::ErrorKind::Base64(_) => Err(reject(TokenRejection::Malformed)),
            // A key that cannot be used with this algorithm at verify time: the signature
            // cannot be valid under it.
            _ => Ok(false),
        },
    }
}

#[async_trait]
impl TokenVerifier for JwtVerifier {
    async fn verify(&self, token: &str) -> Result<Claims> {
        self.verify_shared(token).await.map(Arc::unwrap_or_clone)
    }

    /// A cache hit is the cached claims themselves, not a copy.
    async fn verify_shared(&self, token: &str) -> Result<Arc<Claims>> {
        let result = self.verify_cached(token).await;
        log_failure(&result);
        result
    }

    /// The answer when neither keys nor liveness have to be waited for: a cache hit, or a
    /// token verified here under static keys; `None` with a denylist or a session store (asked
    /// on every call) or, on a miss, with keys from a JWKS source.
    fn try_verify(&self, token: &str) -> Option<Result<Arc<Claims>>> {
        if self.inner.denylist.is_some() || self.inner.sessions.is_some() {
            return None;
        }
        let result = match self.lookup(token) {
            Lookup::Done(result) => result,
            Lookup::Verify(_) => return None,
        };
        log_failure(&result);
        Some(result)
    }
}

/// What the verification cache and static keys answered at once.
enum Lookup {
    /// The claims (cached, or verified under static keys), or the refusal.
    Done(Result<Arc<Claims>>),
    /// The keys have to be fetched: verify, then cache under this slot (when caching).
    Verify(Option<(Digest32, i64, u64)>),
}

/// The reason of a refusal is for operators; the token itself is never logged.
fn log_failure(result: &Result<Arc<Claims>>) {
    match result {
        Ok(_) => {}
        Err(Error::Rejected(r)) => tracing::debug!(reason = r.as_str(), "token rejected"),
        Err(other) => tracing::warn!(error = %other, "token verification could not decide"),
    }
}

impl JwtVerifier {
    /// The cache, then static keys; what is left needs the keys of a JWKS source.
    fn lookup(&self, token: &str) -> Lookup {
        let Some(cache) = &self.inner.cache else {
            return match self.try_verify_signed(token) {
                Some(result) => Lookup::Done(result.map(Arc::new)),
                None => Lookup::Verify(None),
            };
        };
        if token.len() > self.inner.max_len {
            return Lookup::Done(Err(reject(TokenRejection::Oversized)));
        }
        let key = digest(token);
        let now = self.now();
        let epoch = self.inner.epoch.load(Ordering::Acquire);
        if let Some(c) = cache.get(&key, now, epoch) {
            return Lookup::Done(Ok(c));
        }
        match self.try_verify_signed(token) {
            Some(result) => {
                cache.missed(&key);
                Lookup::Done(result.map(|c| {
                    let c = Arc::new(c);
                    cache.insert(key, &c, now, epoch);
                    c
                }))
            }
            None => Lookup::Verify(Some((key, now, epoch))),
        }
    }

    async fn verify_cached(&self, token: &str) -> Result<Arc<Claims>> {
        let claims = match self.lookup(token) {
            Lookup::Done(result) => result?,
            Lookup::Verify(slot) => {
                let cache = self.inner.cache.as_ref().zip(slot);
                if let Some((cache, (key, ..))) = &cache {
                    cache.missed(key);
                }
                let c = Arc::new(self.verify_signed(token).await?);
                if let Some((cache, (key, now, epoch))) = cache {
                    cache.insert(key, &c, now, epoch);
                }
                c
            }
        };
        self.check_live(&claims).await?;
        Ok(claims)
    }
}

#[async_trait]
impl HealthCheck for JwtVerifier {
    fn component(&self) -> &str {
        "token_verifier"
    }

    /// `Up` with static keys; with JWKS sources, the worst of their states: `Degraded` while
    /// serving cached keys during a provider outage, `Down` when a source has no key at all.
    async fn check(&self) -> Health {
        #[cfg_attr(not(feature = "jwks"), allow(unused_mut))]
        let mut status = HealthStatus::Up;
        #[cfg_attr(not(feature = "jwks"), allow(unused_mut))]
        let mut notes: Vec<String> = Vec::new();
        let mut keys = 0u64;
        for i in &self.inner.issuers {
            match &i.keys {
                KeySource::Static(k) => keys += k.len() as u64,
                #[cfg(feature = "jwks")]
                KeySource::Jwks(j) => {
                    let h = j.health();
                    keys += h.figures.get("keys").copied().unwrap_or(0);
                    if h.status > status {
                        status = h.status;
                    }
                    if let Some(d) = h.detail {
                        notes.push(format!("{}: {d}", i.iss));
                    }
                }
            }
        }
        let stats = self.cache_stats();
        Health {
            status,
            detail: (!notes.is_empty()).then(|| notes.join("; ")),
            latency_ms: None,
            figures: Default::default(),
        }
        .with_figure("issuers", self.inner.issuers.len() as u64)
        .with_figure("keys", keys)
        .with_figure("cache_entries", stats.entries as u64)
        .with_figure("cache_hits", stats.hits)
        .with_figure("cache_misses", stats.misses)
    }
}
