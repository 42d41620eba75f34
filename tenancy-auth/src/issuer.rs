//! [`TokenIssuer`]: short-lived access tokens and rotating refresh tokens.
//!
//! - Access tokens carry `iss`, `aud`, `sub`, `exp`, `nbf`, `iat`, `jti`, `tenant_id`,
//!   `user_id`, `user_role`, `permissions` and, when a session exists, `sid`. They live
//!   [`DEFAULT_ACCESS_TTL`] unless configured otherwise.
//! - Refresh tokens are opaque: `rt2.<tenant>.<session>.<256 random bits>.<tag>`. Only the
//!   SHA-256 of the random part is stored, in the session's data, so a leaked session store
//!   does not leak usable refresh tokens. The tag is an HMAC-SHA-256 of the random part under
//!   a key of the session's own (kept in its data): it proves that a token was issued for the
//!   session, whenever that was. A token is accepted only with its tag: the random part of
//!   the current token under another tag, or none, spends nothing and ends nothing. (Whoever
//!   can read the session store can read the keys too, and so make tokens that end sessions
//!   as reuse does; not tokens that take one over.)
//! - [`TokenIssuer::refresh`] spends the presented refresh token and returns a new pair.
//!   Presenting a spent one again (any token whose tag is the session's, but is not its
//!   current one) is taken as theft (the attacker and the owner now both hold the family):
//!   the whole session ends, and every access token bound to it is refused by a verifier
//!   that checks sessions. That holds however many times the session was rotated, and a
//!   token with a made-up secret or tag ends nothing.
//! - The role and permissions are fixed at login: every refresh mints them again as they
//!   were then (they are kept in the session's refresh state, not looked up anew). A change
//!   of role or permissions takes effect at the user's next login; to force it, end the
//!   user's sessions ([`SessionAdmin::revoke_user`](tenancy_core::SessionAdmin::revoke_user),
//!   or [`TokenIssuer::logout`] per session), after which refreshes fail with `SessionEnded`
//!   and verifiers that check sessions refuse the outstanding access tokens.
//!
//! ```
//! use std::sync::Arc;
//! use tenancy_auth::{Algorithm, JwtVerifier, SigningKey, TokenIssuer};
//! use tenancy_core::{memory::MemorySessionStore, SessionStore, TokenRejection, TokenVerifier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store: Arc<dyn SessionStore> = Arc::new(MemorySessionStore::new());
//! let key = SigningKey::hmac(b"0123456789abcdef0123456789abcdef", Algorithm::HS256)?;
//! let verifier = JwtVerifier::builder()
//!     .issuer("https://id.example", key.verify_key()?)
//!     .audience("api")
//!     .sessions(store.clone())
//!     .build()?;
//! let issuer = TokenIssuer::builder(key, "https://id.example", "api")
//!     .sessions(store)
//!     .build()?;
//!
//! let first = issuer
//!     .login(&"acme".parse()?, &"alice".parse()?, &"user".parse()?, &Default::default())
//!     .await?;
//! let second = issuer.refresh(first.refresh_token.expose()).await?;
//! verifier.verify(&second.access_token).await?;
//!
//! // The first refresh token is spent: presenting it again ends the session.
//! let reuse = issuer.refresh(first.refresh_token.expose()).await.unwrap_err();
//! assert!(matches!(reuse, tenancy_core::Error::Rejected(TokenRejection::Revoked)));
//! let after = verifier.verify(&second.access_token).await.unwrap_err();
//! assert!(matches!(after, tenancy_core::Error::Rejected(TokenRejection::SessionEnded)));
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Header;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tenancy_core::{
    Audience, Claims, Error as CoreError, NewSession, PermissionSet, Role, Session, SessionId,
    SessionStore, SharedClock, TenantId, TokenRejection, UserId, system_clock,
};

use crate::error::{Error, Result};
use crate::key::SigningKey;

/// Default access token lifetime.
///
/// Why this default: an access token cannot be recalled from a client once issued (short of
/// a denylist or session check), so it should live only minutes; 5 minutes keeps refresh
/// traffic modest while bounding the damage of a leaked token.
pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(5 * 60);

/// How many spent refresh tokens a session saved by an earlier version remembers for reuse
/// detection. Such sessions have no tag key (their tokens are `rt1.<tenant>.<session>.<secret>`,
/// without a tag), so a spent token is recognised by its fingerprint in this history.
///
/// A session rotated more often forgets its oldest spent tokens. From then on, an `rt1`
/// token that matches neither the current token nor a remembered one is taken for a
/// forgotten spent one, and ends the session as reuse does: otherwise a thief holding the
/// current token could rotate until the owner's spent token is forgotten, and keep the
/// session. The price: for such a session, whoever knows its id (the `sid` claim of its
/// access tokens) can end it with a made-up `rt1` token. Such a session moves to tagged
/// tokens at its next refresh (and keeps its history for the `rt1` tokens it spent before);
/// sessions started by this version need no history: the tag of every token they issued
/// tells it apart from a made-up one.
pub const SPENT_HISTORY: usize = 160;

/// Hex digits of a spent token's hash kept for reuse detection (64 bits): a secret presented
/// at random matches one of [`SPENT_HISTORY`] fingerprints with odds of 1 in 10^17, so a
/// stranger who knows a session id cannot end it by guessing while its history is whole
/// (see [`SPENT_HISTORY`] for a session that has forgotten some).
pub const SPENT_FINGERPRINT_HEX: usize = 16;

/// The session data member that holds the refresh state.
const STATE_KEY: &str = "tenancy_auth";
/// Refresh tokens longer than this are refused before parsing.
const MAX_REFRESH_LEN: usize = 512;

/// A refresh token. Its `Debug` output is redacted; use [`RefreshToken::expose`] to send it.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(String);

impl RefreshToken {
    /// The token text, to hand to the client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken([redacted])")
    }
}

/// What a login or a refresh returns. Its `Debug` output shows neither token.
///
/// ```
/// # use tenancy_auth::{Algorithm, SigningKey, TokenIssuer};
/// # use tenancy_core::memory::MemorySessionStore;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let key = SigningKey::hmac(b"0123456789abcdef0123456789abcdef", Algorithm::HS256)?;
/// # let issuer = TokenIssuer::builder(key, "https://id.example", "api")
/// #     .sessions(std::sync::Arc::new(MemorySessionStore::new()))
/// #     .build()?;
/// # let pair = issuer
/// #     .login(&"acme".parse()?, &"alice".parse()?, &"user".parse()?, &Default::default())
/// #     .await?;
/// let shown = format!("{pair:?}");
/// assert!(!shown.contains(&pair.access_token));
/// assert!(!shown.contains(pair.refresh_token.expose()));
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct TokenPair {
    /// The signed access token.
    pub access_token: String,
    /// The new refresh token (the previous one, if any, is now spent).
    pub refresh_token: RefreshToken,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// The tenant.
    pub tenant: TenantId,
    /// The session both tokens belong to.
    pub session: SessionId,
}

impl fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenPair")
            .field("access_token", &"<redacted>")
            .field("refresh_token", &self.refresh_token)
            .field("expires_in", &self.expires_in)
            .field("tenant", &self.tenant)
            .field("session", &self.session)
            .finish()
    }
}

/// Refresh state kept in the session's data.
#[derive(Serialize, Deserialize)]
struct RefreshState {
    /// Hex SHA-256 of the current refresh secret.
    current: String,
    /// Fingerprints (the first [`SPENT_FINGERPRINT_HEX`] hex digits of the SHA-256) of
    /// recently spent secrets, newest last (at most [`SPENT_HISTORY`]). Sessions saved by
    /// earlier versions hold whole hashes here; only their first digits are compared.
    spent: Vec<String>,
    /// How many times the token was rotated.
    generation: u64,
    /// The session's tag key (base64url, 256 bits): each refresh token issued for the session
    /// carries an HMAC of its secret under it. `None` in sessions saved by earlier versions,
    /// whose tokens carry no tag (reuse is then told by `spent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// Whether, when the session moved from `rt1` to tagged tokens, its history had already
    /// forgotten some of its spent `rt1` tokens (any unknown `rt1` token is then taken for
    /// one of them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    legacy_forgotten: bool,
    role: Role,
    permissions: PermissionSet,
}

fn hash_hex(secret: &[u8]) -> String {
    let d = Sha256::digest(secret);
    let mut s = String::with_capacity(64);
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Bytes of a refresh token's tag (128 bits).
const TAG_BYTES: usize = 16;

/// The tag of a refresh token's `secret` under the session's `key`.
fn tag(key: &[u8], secret: &[u8]) -> Result<[u8; TAG_BYTES], CoreError> {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).map_err(CoreError::corrupt)?;
    mac.update(secret);
    let full = mac.finalize().into_bytes();
    let mut t = [0u8; TAG_BYTES];
    t.copy_from_slice(&full[..TAG_BYTES]);
    Ok(t)
}

/// The session's tag key, decoded; `None` for a session saved by an earlier version.
fn tag_key(state: &RefreshState) -> Result<Option<Vec<u8>>, CoreError> {
    state
        .key
        .as_deref()
        .map(|k| URL_SAFE_NO_PAD.decode(k).map_err(CoreError::corrupt))
        .transpose()
}

fn new_secret() -> Result<[u8; 32], CoreError> {
    let mut s = [0u8; 32];
    getrandom::fill(&mut s).map_err(|e| CoreError::unavailable(Box::new(e)))?;
    Ok(s)
}

fn new_jti() -> Result<String> {
    let mut s = [0u8; 16];
    getrandom::fill(&mut s).map_err(|e| Error::Signing(Box::new(e)))?;
    Ok(URL_SAFE_NO_PAD.encode(s))
}

fn reject(r: TokenRejection) -> CoreError {
    CoreError::Rejected(r)
}

/// Builds a [`TokenIssuer`]; see [`TokenIssuer::builder`].
#[derive(Debug)]
#[must_use]
pub struct TokenIssuerBuilder {
    key: SigningKey,
    iss: String,
    aud: String,
    access_ttl: Duration,
    sessions: Option<Arc<dyn SessionStore>>,
    idle_timeout: Duration,
    absolute_ttl: Duration,
    clock: SharedClock,
}

impl TokenIssuerBuilder {
    /// Access token lifetime (default [`DEFAULT_ACCESS_TTL`]; at most one day). With a
    /// session store it must be below the
    /// [session idle timeout](Self::session_idle_timeout), or [`build`](Self::build) refuses:
    /// verification does not count as session activity, so a token outliving the idle window
    /// would log an active user out.
    pub fn access_ttl(mut self, ttl: Duration) -> Self {
        self.access_ttl = ttl;
        self
    }

    /// The session store that holds sessions and refresh state; needed for
    /// [`TokenIssuer::login`], [`TokenIssuer::refresh`] and [`TokenIssuer::logout`].
    pub fn sessions(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.sessions = Some(store);
        self
    }

    /// Ends a session (and its refresh token) after this long without a refresh (default
    /// [`tenancy_core::DEFAULT_IDLE_TIMEOUT`]). Must exceed the
    /// [access token lifetime](Self::access_ttl).
    pub fn session_idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Ends a session this long after login, whatever the activity (default
    /// [`tenancy_core::DEFAULT_ABSOLUTE_TTL`]).
    pub fn session_absolute_ttl(mut self, d: Duration) -> Self {
        self.absolute_ttl = d;
        self
    }

    /// The clock for `iat`, `nbf` and `exp` (default: the system clock).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Checks the configuration and builds the issuer.
    ///
    /// Errors ([`Error::Config`]): an empty issuer or audience; an access token lifetime of
    /// zero or over a day; with a session store, an access token lifetime not below the
    /// session idle timeout (the message names both), or a session idle timeout or absolute
    /// lifetime outside [`tenancy_core::MIN_SESSION_TTL`]..=[`tenancy_core::MAX_SESSION_TTL`],
    /// which every session store refuses.
    pub fn build(self) -> Result<TokenIssuer> {
        if self.iss.is_empty() || self.aud.is_empty() {
            return Err(Error::Config(
                "issuer and audience must not be empty".into(),
            ));
        }
        if self.access_ttl.is_zero() || self.access_ttl > Duration::from_secs(86_400) {
            return Err(Error::Config(
                "access token lifetime must be between 1 s and one day".into(),
            ));
        }
        // Verifying an access token is no session activity: a token that outlives the idle
        // window is refused (`SessionEnded`) while its user is still active, and the refresh
        // token has died with the session. Only tokens bound to sessions are concerned; an
        // issuer without a session store mints tokens that no session can end.
        if self.sessions.is_some() && self.access_ttl >= self.idle_timeout {
            return Err(Error::Config(
                format!(
                    "access token lifetime ({} s) must be below the session idle timeout ({} s): \
                     verification does not count as activity, so a longer-lived token would log \
                     active users out",
                    self.access_ttl.as_secs_f64(),
                    self.idle_timeout.as_secs_f64(),
                )
                .into(),
            ));
        }
        // Every session store refuses lifetimes outside these bounds: refused here, at start-up,
        // rather than at each login.
        if self.sessions.is_some() {
            for (what, d) in [
                ("session idle timeout", self.idle_timeout),
                ("session absolute lifetime", self.absolute_ttl),
            ] {
                if !(tenancy_core::MIN_SESSION_TTL..=tenancy_core::MAX_SESSION_TTL).contains(&d) {
                    return Err(Error::Config(
                        format!(
                            "{what} ({} s) must be between {} s and {} s",
                            d.as_secs_f64(),
                            tenancy_core::MIN_SESSION_TTL.as_secs(),
                            tenancy_core::MAX_SESSION_TTL.as_secs(),
                        )
                        .into(),
                    ));
                }
            }
        }
        let mut header = Header::new(self.key.algorithm());
        header.kid = self.key.kid().map(str::to_owned);
        Ok(TokenIssuer {
            inner: Arc::new(IssuerInner {
                header,
                key: self.key,
                iss: self.iss,
                aud: self.aud,
                access_ttl: self.access_ttl,
                sessions: self.sessions,
                idle_timeout: self.idle_timeout,
                absolute_ttl: self.absolute_ttl,
                clock: self.clock,
            }),
        })
    }
}

struct IssuerInner {
    header: Header,
    key: SigningKey,
    iss: String,
    aud: String,
    access_ttl: Duration,
    sessions: Option<Arc<dyn SessionStore>>,
    idle_timeout: Duration,
    absolute_ttl: Duration,
    clock: SharedClock,
}

/// Mints access tokens and manages refresh tokens. Cheap to clone.
#[derive(Clone)]
pub struct TokenIssuer {
    inner: Arc<IssuerInner>,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("key", &self.inner.key)
            .field("iss", &self.inner.iss)
            .field("aud", &self.inner.aud)
            .field("access_ttl", &self.inner.access_ttl)
            .field("sessions", &self.inner.sessions.is_some())
            .finish()
    }
}

impl TokenIssuer {
    /// An issuer signing with `key`, writing `iss` and `aud` into every token.
    pub fn builder(
        key: SigningKey,
        iss: impl Into<String>,
        aud: impl Into<String>,
    ) -> TokenIssuerBuilder {
        TokenIssuerBuilder {
            key,
            iss: iss.into(),
            aud: aud.into(),
            access_ttl: DEFAULT_ACCESS_TTL,
            sessions: None,
            idle_timeout: tenancy_core::DEFAULT_IDLE_TIMEOUT,
            absolute_ttl: tenancy_core::DEFAULT_ABSOLUTE_TTL,
            clock: system_clock(),
        }
    }

    /// The access token lifetime.
    pub fn access_ttl(&self) -> Duration {
        self.inner.access_ttl
    }

    /// The claims an access token for this identity would carry, issued now.
    pub fn claims(
        &self,
        tenant: &TenantId,
        user: &UserId,
        role: &Role,
        permissions: &PermissionSet,
        session: Option<&SessionId>,
    ) -> Result<Claims> {
        let now = self.inner.clock.now().unix_timestamp();
        let ttl = i64::try_from(self.inner.access_ttl.as_secs()).unwrap_or(86_400);
        Ok(Claims {
            iss: self.inner.iss.clone(),
            aud: Audience::one(self.inner.aud.clone()),
            sub: user.as_str().to_owned(),
            exp: now + ttl,
            nbf: Some(now),
            iat: Some(now),
            jti: Some(new_jti()?),
            tenant_id: tenant.clone(),
            user_id: user.clone(),
            user_role: role.clone(),
            permissions: permissions.clone(),
            sid: session.copied(),
        })
    }

    /// Signs `claims` as they are.
    pub fn sign(&self, claims: &Claims) -> Result<String> {
        crate::crypto_provider();
        jsonwebtoken::encode(&self.inner.header, claims, self.inner.key.encoding_key())
            .map_err(|e| Error::Signing(Box::new(e)))
    }

    /// Mints an access token for this identity, bound to `session` when given.
    pub fn access_token(
        &self,
        tenant: &TenantId,
        user: &UserId,
        role: &Role,
        permissions: &PermissionSet,
        session: Option<&SessionId>,
    ) -> Result<String> {
        self.sign(&self.claims(tenant, user, role, permissions, session)?)
    }

    fn store(&self) -> Result<&Arc<dyn SessionStore>, CoreError> {
        self.inner
            .sessions
            .as_ref()
            .ok_or_else(|| CoreError::from(Error::Config("the issuer has no session store".into())))
    }

    /// A new pair for `session`: its refresh token carries `secret` and, with the session's
    /// tag `key`, the secret's tag (`rt2`; without a key, `rt1` as earlier versions issued).
    fn pair(
        &self,
        session: &Session,
        secret: &[u8; 32],
        key: Option<&[u8]>,
        role: &Role,
        permissions: &PermissionSet,
    ) -> Result<TokenPair, CoreError> {
        let access = self.access_token(
            &session.tenant,
            &session.user,
            role,
            permissions,
            Some(&session.id),
        )?;
        let (tenant, id, secret_text) =
            (&session.tenant, session.id, URL_SAFE_NO_PAD.encode(secret));
        let refresh = match key {
            Some(key) => format!(
                "rt2.{tenant}.{id}.{secret_text}.{}",
                URL_SAFE_NO_PAD.encode(tag(key, secret)?)
            ),
            None => format!("rt1.{tenant}.{id}.{secret_text}"),
        };
        Ok(TokenPair {
            access_token: access,
            refresh_token: RefreshToken(refresh),
            expires_in: self.inner.access_ttl.as_secs(),
            tenant: session.tenant.clone(),
            session: session.id,
        })
    }

    /// Starts a session for an authenticated user and returns its first token pair.
    ///
    /// Checking the user's credentials is the caller's business; this only issues. `role` and
    /// `permissions` are kept for the session's whole life: every
    /// [`refresh`](Self::refresh) mints them unchanged.
    pub async fn login(
        &self,
        tenant: &TenantId,
        user: &UserId,
        role: &Role,
        permissions: &PermissionSet,
    ) -> Result<TokenPair, CoreError> {
        let store = self.store()?;
        let secret = new_secret()?;
        let key = new_secret()?;
        let state = RefreshState {
            current: hash_hex(&secret),
            spent: Vec::new(),
            generation: 0,
            key: Some(URL_SAFE_NO_PAD.encode(key)),
            legacy_forgotten: false,
            role: role.clone(),
            permissions: permissions.clone(),
        };
        let mut data = tenancy_core::SessionData::new();
        data.insert(
            STATE_KEY.into(),
            serde_json::to_value(&state).map_err(CoreError::corrupt)?,
        );
        let session = store
            .create(
                NewSession::new(tenant.clone(), user.clone())
                    .with_idle_timeout(self.inner.idle_timeout)
                    .with_absolute_ttl(self.inner.absolute_ttl)
                    .with_data(data),
            )
            .await?;
        self.pair(&session, &secret, Some(&key), role, permissions)
    }

    /// Spends `refresh_token` and returns a new pair for the same session.
    ///
    /// The new access token carries the role and permissions given at
    /// [`login`](Self::login), not the user's current ones: this issuer does not look them up.
    /// A changed role or permission set takes effect at the next login. To apply it now (a
    /// demotion, a removed permission), end the user's sessions with
    /// [`SessionAdmin::revoke_user`](tenancy_core::SessionAdmin::revoke_user) (or
    /// [`logout`](Self::logout) per session): their refresh tokens then fail with
    /// `SessionEnded`, and a verifier that checks sessions refuses their access tokens at once.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tenancy_auth::{Algorithm, SigningKey, TokenIssuer};
    /// use tenancy_core::{memory::MemorySessionStore, SessionAdmin, TokenRejection};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = Arc::new(MemorySessionStore::new());
    /// let key = SigningKey::hmac(b"0123456789abcdef0123456789abcdef", Algorithm::HS256)?;
    /// let issuer = TokenIssuer::builder(key, "https://id.example", "api")
    ///     .sessions(store.clone())
    ///     .build()?;
    /// let (acme, alice) = ("acme".parse()?, "alice".parse()?);
    /// let pair = issuer
    ///     .login(&acme, &alice, &"tenant_admin".parse()?, &Default::default())
    ///     .await?;
    ///
    /// // Alice is demoted. A refresh would mint `tenant_admin` again: end her sessions, so
    /// // that her next tokens come from a login with her new role.
    /// store.revoke_user(&acme, &alice).await?;
    /// let refused = issuer.refresh(pair.refresh_token.expose()).await.unwrap_err();
    /// assert!(matches!(refused, tenancy_core::Error::Rejected(TokenRejection::SessionEnded)));
    /// # Ok(()) }
    /// ```
    ///
    /// Refusals ([`tenancy_core::Error::Rejected`]): `Malformed` (not one of ours),
    /// `SessionEnded` (logged out, expired or revoked), `BadSignature` (right session, but a
    /// secret or tag it never issued: nothing is revoked, since anyone who saw a session id
    /// could otherwise end it), and `Revoked` when the token was already spent (its tag is
    /// the session's), in which case the whole session has just been ended, however long
    /// ago the token was spent. Store failures pass through
    /// ([`tenancy_core::Error::Unavailable`]). The current token's random part under another
    /// tag, or without one, is `BadSignature`: only the token as issued is spent. (A session
    /// saved by an earlier version tells its spent `rt1` tokens by a bounded history instead,
    /// see [`SPENT_HISTORY`], and its refresh returns a tagged `rt2` token.)
    ///
    /// The new access token is signed before the rotation is saved: a failure to make it
    /// leaves the presented token current, so the client may retry with it.
    ///
    /// A lost reply does not end the session. When saving the rotated state fails with a
    /// retryable error ([`is_retryable`](tenancy_core::Error::is_retryable): a timeout or an
    /// outage, after which the write may have committed all the same), the session is loaded
    /// again: if it holds the new refresh token's hash, the save did commit and the new pair
    /// is returned as if it had answered. Otherwise the error is returned and the presented
    /// token is still the current one, so the client may retry with it. (If that second load
    /// fails too, the error is returned although the write may have committed; a retry with
    /// the then spent token is taken for reuse, as nothing tells it apart from theft.)
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, CoreError> {
        let store = self.store()?;
        let (tenant, sid, presented, presented_tag) = parse_refresh(refresh_token)?;
        let presented_hash = hash_hex(&presented);
        for _ in 0..3 {
            let Some(mut session) = store.load(&tenant, &sid).await? else {
                return Err(reject(TokenRejection::SessionEnded));
            };
            let mut state: RefreshState = match session.data.get(STATE_KEY) {
                Some(v) => serde_json::from_value(v.clone()).map_err(CoreError::corrupt)?,
                None => return Err(reject(TokenRejection::BadSignature)),
            };
            let key = tag_key(&state)?;
            // Whether the session issued the token, by its tag: `None` for an `rt1` token
            // (no tag), told by the history of a session of an earlier version instead.
            let issued = match (&key, &presented_tag) {
                (Some(key), Some(t)) => Some(bool::from(tag(key, &presented)?.as_slice().ct_eq(t))),
                // A tag the session has no key for: it never issued that token.
                (None, Some(_)) => Some(false),
                (_, None) => None,
            };
            // The current token, in the form the session issued it: with its tag when the
            // session has a key (a stolen secret under another tag or none is no token of
            // the session's, and spends nothing), without one when it has none.
            let current = ct_eq(&state.current, &presented_hash) && issued.unwrap_or(key.is_none());
            if current {
                let secret = new_secret()?;
                let mut spent = std::mem::replace(&mut state.current, hash_hex(&secret));
                let mut key = key;
                if key.is_none() {
                    // A session of an earlier version: the spent `rt1` token joins its
                    // history, and the session moves to tagged tokens from now on.
                    spent.truncate(SPENT_FINGERPRINT_HEX);
                    state.spent.push(spent);
                    if state.spent.len() > SPENT_HISTORY {
                        let excess = state.spent.len() - SPENT_HISTORY;
                        state.spent.drain(..excess);
                    }
                    state.generation += 1;
                    state.legacy_forgotten = state.generation > state.spent.len() as u64;
                    let new_key = new_secret()?;
                    state.key = Some(URL_SAFE_NO_PAD.encode(new_key));
                    key = Some(new_key.to_vec());
                } else {
                    state.generation += 1;
                }
                session.data.insert(
                    STATE_KEY.into(),
                    serde_json::to_value(&state).map_err(CoreError::corrupt)?,
                );
                // Everything that can fail is done before the save: once the rotation is
                // stored the presented token is spent, and a client told of a failure after
                // that would retry with it and be taken for a thief. A save changes neither
                // the session's id, tenant nor user, all the pair is made of.
                let pair = self.pair(
                    &session,
                    &secret,
                    key.as_deref(),
                    &state.role,
                    &state.permissions,
                )?;
                match store.save(&session).await {
                    Ok(_) => return Ok(pair),
                    // Someone else saved first (maybe a concurrent refresh with this very
                    // token): load again and decide on the new state.
                    Err(CoreError::Conflict(_)) => continue,
                    Err(CoreError::NotFound) => return Err(reject(TokenRejection::SessionEnded)),
                    // A timeout or an outage may have hidden a write that committed: the
                    // presented token would then be spent, and the client's retry with it
                    // taken for theft. Look whether our rotation is what the store holds.
                    Err(e) if e.is_retryable() => {
                        if !self.stored_rotation(&tenant, &sid, &state.current).await {
                            return Err(e);
                        }
                        tracing::info!(
                            tenant = %tenant,
                            session = %sid,
                            error = %e,
                            "refresh: the store's reply was lost but the rotation was stored"
                        );
                        return Ok(pair);
                    }
                    Err(e) => return Err(e),
                }
            }
            // Not the current token: a spent one of this session, or one it never issued.
            let spent = match issued {
                // The tag says whether the session issued it.
                Some(issued) => issued,
                // An `rt1` token: one of those a session of an earlier version issued, told by
                // its history of spent tokens; once it had forgotten the oldest, any unknown
                // `rt1` token may be one of them. A session that never issued `rt1` tokens
                // has neither.
                None => {
                    let fingerprint = &presented_hash[..SPENT_FINGERPRINT_HEX];
                    let remembered = state.spent.iter().any(|h| {
                        h.get(..SPENT_FINGERPRINT_HEX)
                            .is_some_and(|h| ct_eq(h, fingerprint))
                    });
                    let forgotten = match key {
                        Some(_) => state.legacy_forgotten,
                        None => state.generation > state.spent.len() as u64,
                    };
                    remembered || forgotten
                }
            };
            if !spent {
                return Err(reject(TokenRejection::BadSignature));
            }
            tracing::warn!(
                tenant = %tenant,
                session = %sid,
                generation = state.generation,
                "spent refresh token presented again: revoking the session"
            );
            store.delete(&tenant, &sid).await?;
            return Err(reject(TokenRejection::Revoked));
        }
        Err(CoreError::Conflict(
            "refresh raced with other session updates".into(),
        ))
    }

    /// Whether the stored session's current refresh hash is `current` (the rotation this call
    /// tried to save did commit); `false` when it is not, or the store cannot tell.
    async fn stored_rotation(&self, tenant: &TenantId, sid: &SessionId, current: &str) -> bool {
        let stored = async {
            let session = self.store().ok()?.load(tenant, sid).await.ok()??;
            serde_json::from_value::<RefreshState>(session.data.get(STATE_KEY)?.clone()).ok()
        };
        stored
            .await
            .is_some_and(|state| ct_eq(&state.current, current))
    }

    /// Ends the session: its refresh token stops working at once, and its access tokens are
    /// refused by any verifier that checks sessions. `true` when the session was live.
    pub async fn logout(&self, tenant: &TenantId, session: &SessionId) -> Result<bool, CoreError> {
        self.store()?.delete(tenant, session).await
    }
}

/// A refresh token's tenant, session, secret and tag (`None` for an `rt1` token, which has
/// none).
type ParsedRefresh = (TenantId, SessionId, Vec<u8>, Option<Vec<u8>>);

fn parse_refresh(token: &str) -> Result<ParsedRefresh, CoreError> {
    let malformed = || reject(TokenRejection::Malformed);
    if token.len() > MAX_REFRESH_LEN {
        return Err(reject(TokenRejection::Oversized));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let (t, s, secret, tag) = match parts.as_slice() {
        ["rt1", t, s, secret] => (t, s, secret, None),
        ["rt2", t, s, secret, tag] => (t, s, secret, Some(tag)),
        _ => return Err(malformed()),
    };
    let tenant = TenantId::parse(t).map_err(|_| malformed())?;
    let sid = SessionId::parse(s).map_err(|_| malformed())?;
    let secret = URL_SAFE_NO_PAD.decode(secret).map_err(|_| malformed())?;
    if secret.len() != 32 {
        return Err(malformed());
    }
    let tag = tag
        .map(|t| URL_SAFE_NO_PAD.decode(t).map_err(|_| malformed()))
        .transpose()?;
    if tag.as_ref().is_some_and(|t| t.len() != TAG_BYTES) {
        return Err(malformed());
    }
    Ok((tenant, sid, secret, tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_parse_strictly() {
        let sid = SessionId::generate();
        let secret = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let good = format!("rt1.acme.{sid}.{secret}");
        assert!(parse_refresh(&good).is_ok());
        let tag = URL_SAFE_NO_PAD.encode([9u8; TAG_BYTES]);
        let tagged = format!("rt2.acme.{sid}.{secret}.{tag}");
        assert_eq!(
            parse_refresh(&tagged).unwrap().3.as_deref(),
            Some(&[9u8; TAG_BYTES][..])
        );
        for bad in [
            format!("rt2.acme.{sid}.{secret}"),
            format!("rt1.acme.{sid}.{secret}.{tag}"),
            format!("rt2.acme.{sid}.{secret}.{tag}x"),
            format!(
                "rt2.acme.{sid}.{secret}.{}",
                URL_SAFE_NO_PAD.encode([9u8; 15])
            ),
            format!("rt3.acme.{sid}.{secret}.{tag}"),
            format!("rt1.ACME.{sid}.{secret}"),
            format!("rt1.acme.nope.{secret}"),
            format!("rt1.acme.{sid}.{secret}x"),
            format!("rt1.acme.{sid}.{secret}.x"),
            format!("rt1.acme.{sid}"),
            String::new(),
        ] {
            assert!(
                matches!(
                    parse_refresh(&bad),
                    Err(CoreError::Rejected(TokenRejection::Malformed))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_refresh(&"a".repeat(600)),
            Err(CoreError::Rejected(TokenRejection::Oversized))
        ));
    }

    /// An access token must expire before its session can go idle: verification is no
    /// activity, so a token outliving the idle window would log an active user out.
    #[test]
    fn access_tokens_must_expire_before_the_session_idles() {
        let key = || SigningKey::hmac(&[7; 32], jsonwebtoken::Algorithm::HS256).unwrap();
        let store = || -> Arc<dyn SessionStore> {
            Arc::new(tenancy_core::memory::MemorySessionStore::new())
        };
        let build = |ttl: u64, idle: Option<u64>| {
            let mut b = TokenIssuer::builder(key(), "https://id.example", "api")
                .sessions(store())
                .access_ttl(Duration::from_secs(ttl));
            if let Some(idle) = idle {
                b = b.session_idle_timeout(Duration::from_secs(idle));
            }
            b.build()
        };
        let default_idle = tenancy_core::DEFAULT_IDLE_TIMEOUT.as_secs();
        for (ttl, idle) in [
            (default_idle, None),
            (default_idle + 1, None),
            (3600, None),
            (600, Some(600)),
            (601, Some(600)),
        ] {
            let e = build(ttl, idle).unwrap_err();
            let shown = e.to_string();
            let idle = idle.unwrap_or(default_idle);
            assert!(matches!(e, Error::Config(_)), "{ttl} s / {idle} s: {e:?}");
            assert!(
                shown.contains(&format!("access token lifetime ({ttl} s)"))
                    && shown.contains(&format!("session idle timeout ({idle} s)")),
                "{shown}"
            );
        }
        for (ttl, idle) in [(default_idle - 1, None), (300, None), (599, Some(600))] {
            build(ttl, idle).unwrap_or_else(|e| panic!("{ttl} s / {idle:?}: {e}"));
        }
        // Without a session store there are no sessions to idle: tokens minted on their
        // own (a command-line tool's) may live up to a day.
        TokenIssuer::builder(key(), "https://id.example", "api")
            .access_ttl(Duration::from_secs(86_400))
            .build()
            .unwrap();
    }

    #[test]
    fn session_lifetimes_every_store_refuses_are_refused_at_build() {
        let key = || SigningKey::hmac(&[7; 32], jsonwebtoken::Algorithm::HS256).unwrap();
        let build = |absolute: Duration| {
            TokenIssuer::builder(key(), "https://id.example", "api")
                .sessions(Arc::new(tenancy_core::memory::MemorySessionStore::new()))
                .session_absolute_ttl(absolute)
                .build()
        };
        let over = tenancy_core::MAX_SESSION_TTL + Duration::from_secs(1);
        let e = build(over).unwrap_err();
        assert!(e.to_string().contains("session absolute lifetime"), "{e}");
        build(tenancy_core::MAX_SESSION_TTL).unwrap();
        let e = TokenIssuer::builder(key(), "https://id.example", "api")
            .sessions(Arc::new(tenancy_core::memory::MemorySessionStore::new()))
            .access_ttl(Duration::from_secs(1))
            .session_idle_timeout(Duration::from_millis(1_500))
            .build();
        assert!(e.is_ok(), "{e:?}");
    }

    /// The new access token is made before the rotation is saved: when making it fails, the
    /// presented refresh token stays current, and the client's retry is no reuse.
    #[tokio::test]
    async fn a_failure_to_sign_leaves_the_presented_token_current() {
        let store: Arc<dyn SessionStore> =
            Arc::new(tenancy_core::memory::MemorySessionStore::new());
        let good = TokenIssuer::builder(
            SigningKey::hmac(&[7; 32], jsonwebtoken::Algorithm::HS256).unwrap(),
            "https://id.example",
            "api",
        )
        .sessions(store.clone())
        .build()
        .unwrap();
        // A secret bound to RS256 cannot sign: every access token fails to be made.
        let broken = TokenIssuer::builder(
            SigningKey::new(
                jsonwebtoken::EncodingKey::from_secret(&[7; 32]),
                jsonwebtoken::Algorithm::RS256,
            ),
            "https://id.example",
            "api",
        )
        .sessions(store.clone())
        .build()
        .unwrap();
        let pair = good
            .login(
                &"acme".parse().unwrap(),
                &"alice".parse().unwrap(),
                &"user".parse().unwrap(),
                &PermissionSet::default(),
            )
            .await
            .unwrap();
        let e = broken
            .refresh(pair.refresh_token.expose())
            .await
            .unwrap_err();
        assert!(e.is_retryable(), "{e:?}");
        // Nothing was stored: the same token is still the current one.
        let next = good.refresh(pair.refresh_token.expose()).await.unwrap();
        assert_eq!(next.session, pair.session);
        good.refresh(next.refresh_token.expose()).await.unwrap();
    }

    #[test]
    fn debug_output_hides_secrets() {
        let t = RefreshToken("rt1.acme.x.secret".into());
        assert!(!format!("{t:?}").contains("secret"));
    }
}
