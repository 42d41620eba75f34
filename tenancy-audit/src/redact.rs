//! Redaction: what is removed, masked or replaced by a keyed hash before an event is stored,
//! hashed, spooled or exported.
//!
//! Redaction runs inside [`Codec::encode`](crate::codec::Codec::encode), so nothing
//! downstream of it (the chain hash, every store, the spool, the exports) ever sees the
//! original values.
//!
//! - Detail keys are matched case-insensitively on their letters and digits only (`API Key`,
//!   `api.key`, `api_key` are one key), at any depth of nested objects and arrays. A built-in
//!   list of sensitive names (`password`, `pwd`, `token`, `secret`, `authorization`,
//!   `bearer`, `jwt`, `cookie`, `api_key`, `ssn`, `credit_card`, ...) is masked wherever it
//!   occurs as part of a key (`db_password`, `X-Api-Key`). The second item of a
//!   `[name, value]` pair (`["Authorization", "…"]`, as headers are often logged; also split
//!   further, `["Authorization", "Bearer", "…"]`) gets the rule of its name the same way:
//!   masked, hashed, or removed (leaving `[name]`); so does the `value` of a `{"name",
//!   "value"}` object (as HAR files write headers). A few short names are masked only as
//!   the whole key ([`DEFAULT_SENSITIVE_EXACT_KEYS`]: `pass`, `auth`, `pin`, `sid`, ...), since
//!   as fragments they would catch `passport` or `author`. Keys are scrubbed like values (a
//!   URL with a token as the key of a count).
//! - Whatever its key, a string value that carries a credential is masked whole: an HTTP
//!   authorization value (a scheme — `Bearer`, `Basic`, `Token`, `Digest`, `ApiKey` or
//!   `DPoP`, in any case, at the start of a word — then white space and a credential: at
//!   least 8 token characters with a digit, one of `+=_~` or a capital past the first, or at
//!   least 20 of them; also inside a longer text) or a JWT. Prose after a scheme's name
//!   ("Token validation failed", "token expired.") is kept.
//! - In URLs inside a string value, the password of the user information and the values of
//!   query and fragment parameters whose names are sensitive (matched like detail keys, plus
//!   the exact names `code`, `key` and `sig`) are replaced, and the rest of the URL stays
//!   readable: `https://user:[redacted]@host/cb?access_token=[redacted]&state=s1`. A
//!   parameter whose name has a `Hash` or `Drop` rule is hashed or emptied instead.
//! - A line of text that reads like a header with a sensitive name (`Cookie: sid=…`,
//!   `Set-Cookie: …`, `X-Api-Key: …`) keeps its name and loses its value.
//! - The free-text fields of an event (action, resource type, route, and the resource id and
//!   reason when their rule keeps them) are checked the same way as detail values.
//! - Other secrets in free text (`password=x` outside a URL, an API key with no scheme before
//!   it) are not recognised: keep them out of events.
//! - Keyed hashes (`hmac:` + base64url of HMAC-SHA-256) keep identifiers matchable without
//!   storing them. The key is derived per tenant from a master key, so the same user id hashes
//!   differently in two tenants' trails and one tenant's hashes say nothing about another's.
//!
//! ```
//! use tenancy_audit::codec::Codec;
//! use tenancy_audit::redact::{AddrAction, FieldAction, RedactionKey, RedactionPolicy};
//! use tenancy_core::{AuditEvent, Outcome, TenantId, UserId};
//!
//! let policy = RedactionPolicy::new()
//!     .with_key(RedactionKey::from_bytes([7; 32]))
//!     .with_user(FieldAction::Hash)
//!     .with_client_addr(AddrAction::Truncate)
//!     .with_detail("email", FieldAction::Hash);
//! let codec = Codec::new(policy)?;
//! let event = AuditEvent::new(TenantId::parse("acme")?, "auth.login", Outcome::Success)
//!     .with_user(UserId::parse("alice@example.com")?)
//!     .with_detail("password", "hunter2")
//!     .with_detail("email", "alice@example.com");
//! let encoded = codec.encode(&event)?;
//! let text = std::str::from_utf8(&encoded.payload)?;
//! assert!(!text.contains("hunter2") && !text.contains("alice@example.com"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::cmp::Reverse;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tenancy_core::{AuditEvent, SessionId, TenantId, UserId};

use crate::{Error, Result};

/// The text that replaces a masked value.
pub const MASK: &str = "[redacted]";

/// Detail key fragments that are masked by default wherever they appear in a key.
///
/// Why this default: callers put whatever is at hand into `details`; a credential that slips
/// in must not become a permanent, replicated, exported part of a compliance log.
pub const DEFAULT_SENSITIVE_KEYS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "authorization",
    "cookie",
    "apikey",
    "privatekey",
    "credential",
    "ssn",
    "socialsecurity",
    "creditcard",
    "cardnumber",
    "cvv",
    "iban",
    "otp",
    "pwd",
    "jwt",
    "bearer",
    "signature",
];

/// Detail key names (normalised) masked by default when they are the whole key: as fragments
/// they would catch `passport`, `author` or `spinner`.
pub const DEFAULT_SENSITIVE_EXACT_KEYS: &[&str] = &[
    "pass",
    "auth",
    "pin",
    "passcode",
    "sid",
    "sessionid",
    "sessionkey",
];

/// URL query and fragment parameter names (normalised) that are masked though no sensitive
/// fragment occurs in them: an OAuth authorization code, an API key (`?key=`), a signature
/// (`?sig=`). Matched exactly, and only in URLs: as fragments they would catch `status_code`.
const SENSITIVE_URL_PARAMS: &[&str] = &["code", "key", "sig"];

/// What ends a line of text that may hold headers ([`RedactionPolicy::scrub`]).
const LINE_BREAKS: [char; 2] = ['\n', '\r'];

/// HTTP authorization schemes (lower case) whose credential follows the scheme name.
const AUTH_SCHEMES: &[&[u8]] = &[b"bearer", b"basic", b"token", b"digest", b"apikey", b"dpop"];

/// What happens to one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldAction {
    /// Stored as given.
    Keep,
    /// Removed.
    Drop,
    /// Replaced by [`MASK`] (a session, which has a fixed format, is dropped instead).
    Mask,
    /// Replaced by a keyed hash: equal values in one tenant's trail stay equal.
    Hash,
}

/// What happens to the client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddrAction {
    /// Stored as given.
    Keep,
    /// Host bits cleared: IPv4 to its /24, IPv6 to its /48.
    Truncate,
    /// Removed.
    Drop,
}

/// The master key for keyed hashes. Keep it out of the audit store: whoever holds it can test
/// guesses against the hashes.
#[derive(Clone)]
pub struct RedactionKey([u8; 32]);

impl RedactionKey {
    /// A key from 32 bytes (for example read from a secret store).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh random key.
    ///
    /// # Errors
    /// When the operating system's random source fails.
    pub fn generate() -> Result<Self> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b)
            .map_err(|e| Error::io("random key", std::io::Error::other(e.to_string())))?;
        Ok(Self(b))
    }

    fn tenant_key(&self, tenant: &TenantId) -> Hmac<Sha256> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable_key());
        m.update(b"tenancy-audit/redact/v1\0");
        m.update(tenant.as_str().as_bytes());
        let derived = m.finalize().into_bytes();
        Hmac::<Sha256>::new_from_slice(&derived).unwrap_or_else(|_| unreachable_key())
    }
}

// HMAC accepts keys of any length; this is never reached.
fn unreachable_key() -> Hmac<Sha256> {
    panic!("HMAC rejected a 32-byte key")
}

impl fmt::Debug for RedactionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RedactionKey(..)")
    }
}

/// The redaction policy. [`RedactionPolicy::new`] masks the default sensitive detail keys and
/// the credentials it recognises in any text (see the [module docs](crate::redact)), and drops session
/// ids; everything else is kept until configured otherwise.
#[derive(Debug, Clone)]
pub struct RedactionPolicy {
    key: Option<RedactionKey>,
    user: FieldAction,
    session: FieldAction,
    resource_id: FieldAction,
    reason: FieldAction,
    client_addr: AddrAction,
    details_default: FieldAction,
    detail_rules: Vec<(String, FieldAction)>,
    sensitive: Fragments,
}

impl Default for RedactionPolicy {
    fn default() -> Self {
        Self::new()
    }
}

/// A key as it is matched: letters and digits only, lower case (`API Key`, `api.key`,
/// `api_key` and `apiKey` are all `apikey`).
fn normalise(key: &str) -> String {
    key.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Whether a string value carries a credential whatever its key: an HTTP authorization value
/// (a scheme of [`AUTH_SCHEMES`] in any case at the start of a word, white space, and a word
/// that looks like a credential rather than prose, also inside a longer text such as a logged
/// header line) or a JWT (`eyJ…` with two dots).
fn credential_like(s: &str) -> bool {
    let b = s.as_bytes();
    let token68 = |c: &u8| c.is_ascii_alphanumeric() || b"-._~+/=".contains(c);
    // A credential, not a word of prose ("Token validation failed", "token expired.",
    // "basic plan", "Bearer tokens/sessions"): at least 8 characters (a sentence's last dot
    // aside) with a digit, one of `+=_~`, a capital past the first, or at least 20 characters.
    // Only the first 20 characters are looked at: the test is the same past them, and a long
    // run costs no more for each scheme word before it.
    let credential_word = |credential: &str| {
        let mut w = [0u8; 20];
        let mut len = 0;
        for c in credential.bytes().take_while(token68).take(w.len()) {
            w[len] = c;
            len += 1;
        }
        let w = &w[..len];
        let w = if len < 20 {
            w.strip_suffix(b".").unwrap_or(w)
        } else {
            w
        };
        w.len() >= 8
            && (w.len() >= 20
                || w.iter().any(|c| c.is_ascii_digit() || b"+=_~".contains(c))
                || w.iter().skip(1).any(u8::is_ascii_uppercase))
    };
    // The scheme at the start of a word, any run of white space (`Bearer  x`, `Bearer\tx`),
    // and a credential.
    let scheme_at = |i: usize| {
        AUTH_SCHEMES.iter().any(|w| {
            b.get(i..i + w.len())
                .is_some_and(|x| x.eq_ignore_ascii_case(w))
                // The scheme is ASCII, so `i + w.len()` is a character boundary.
                && s.get(i + w.len()..).is_some_and(|rest| {
                    let credential = rest.trim_start();
                    credential.len() < rest.len() && credential_word(credential)
                })
        })
    };
    let scheme = b.iter().enumerate().any(|(i, c)| {
        matches!(c.to_ascii_lowercase(), b'a' | b'b' | b'd' | b't')
            && (i == 0 || !b[i - 1].is_ascii_alphanumeric())
            && scheme_at(i)
    });
    // `eyJ…` with two dots in one run of JWT characters. Each run is read once: the search
    // goes on past its end (a run of `eyJeyJ…` is not read again from each `eyJ`).
    let jwt = || {
        let jwt_char = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
        let mut from = 0;
        while let Some(at) = s.get(from..).and_then(|rest| rest.find("eyJ")) {
            let start = from + at;
            let run = b[start..].iter().take_while(|c| jwt_char(c)).count();
            if b[start..start + run].iter().filter(|c| **c == b'.').count() >= 2 {
                return true;
            }
            from = start + run.max(3);
        }
        false
    };
    scheme || jwt()
}

/// A URL parameter name as it is matched: percent-escapes decoded (`api%5Fkey` is `api_key`).
fn decode_name(name: &str) -> Cow<'_, str> {
    if !name.contains('%') {
        return Cow::Borrowed(name);
    }
    let hex = |c: u8| char::from(c).to_digit(16);
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                // Two hex digits are at most 0xff.
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'%'));
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Where a word of free text ends: URLs are cut out of text at white space and quotes.
fn ends_word(c: u8) -> bool {
    c.is_ascii_whitespace() || matches!(c, b'"' | b'\'' | b'<' | b'>' | b'`')
}

/// The first position in `b[from..to]` holding one of `set`, or `to`.
fn find_any(b: &[u8], from: usize, to: usize, set: &[u8]) -> usize {
    b[from..to]
        .iter()
        .position(|c| set.contains(c))
        .map_or(to, |n| from + n)
}

/// Whether `fragment` occurs in `key`. Keys and fragments are a few bytes long: a plain scan
/// over the windows beats `str::contains`, whose searcher is set up anew on every call (most
/// fragments are longer than most keys, and fail at once here).
fn contains(key: &str, fragment: &str) -> bool {
    let (k, f) = (key.as_bytes(), fragment.as_bytes());
    match f.first() {
        None => true,
        Some(&first) => k.windows(f.len()).any(|w| w[0] == first && w == f),
    }
}

/// The sensitive-name fragments (normalised), with the pairs of bytes they start with: a key
/// that holds none of those pairs cannot contain a fragment, and most keys (`status`, `id`)
/// are ruled out by that alone, without a scan per fragment.
#[derive(Debug, Clone)]
struct Fragments {
    list: Vec<String>,
    /// The first two bytes of every fragment, as a set of the 65 536 pairs (one bit each: a
    /// pair is looked up with one load, where a binary search of the sorted pairs took a
    /// chain of unpredictable branches for every two bytes of every key); `None` when a
    /// fragment is shorter than two bytes (every key is then scanned).
    starts: Option<Box<PairSet>>,
}

/// A set of byte pairs, one bit per pair.
#[derive(Clone)]
struct PairSet([u64; 1024]);

impl PairSet {
    fn index(a: u8, b: u8) -> (usize, u64) {
        let i = usize::from(a) << 8 | usize::from(b);
        (i / 64, 1 << (i % 64))
    }

    fn insert(&mut self, a: u8, b: u8) {
        let (word, bit) = Self::index(a, b);
        self.0[word] |= bit;
    }

    fn contains(&self, a: u8, b: u8) -> bool {
        let (word, bit) = Self::index(a, b);
        self.0[word] & bit != 0
    }
}

impl fmt::Debug for PairSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs = (0..=u8::MAX)
            .flat_map(|a| (0..=u8::MAX).map(move |b| (a, b)))
            .filter(|&(a, b)| self.contains(a, b))
            .map(|(a, b)| String::from_utf8_lossy(&[a, b]).into_owned());
        f.debug_set().entries(pairs).finish()
    }
}

impl Fragments {
    fn new(list: Vec<String>) -> Self {
        let mut starts = Box::new(PairSet([0; 1024]));
        let all_long = list.iter().all(|f| match f.as_bytes() {
            [a, b, ..] => {
                starts.insert(*a, *b);
                true
            }
            _ => false,
        });
        Self {
            list,
            starts: all_long.then_some(starts),
        }
    }

    fn push(&mut self, fragment: String) {
        let mut list = std::mem::take(&mut self.list);
        list.push(fragment);
        *self = Self::new(list);
    }

    /// Whether a fragment occurs in the normalised `key`.
    fn found_in(&self, key: &str) -> bool {
        if let Some(starts) = &self.starts
            && !key
                .as_bytes()
                .windows(2)
                .any(|w| starts.contains(w[0], w[1]))
        {
            return false;
        }
        self.list.iter().any(|f| contains(key, f))
    }
}

impl RedactionPolicy {
    /// The default policy.
    ///
    /// Why session ids are dropped by default: a session id is a bearer credential until it
    /// expires; an audit trail is read by more people than the session store.
    pub fn new() -> Self {
        Self {
            key: None,
            user: FieldAction::Keep,
            session: FieldAction::Drop,
            resource_id: FieldAction::Keep,
            reason: FieldAction::Keep,
            client_addr: AddrAction::Keep,
            details_default: FieldAction::Keep,
            detail_rules: Vec::new(),
            sensitive: Fragments::new(
                DEFAULT_SENSITIVE_KEYS
                    .iter()
                    .map(|s| normalise(s))
                    .collect(),
            ),
        }
    }

    /// Sets the master key for [`FieldAction::Hash`].
    pub fn with_key(mut self, key: RedactionKey) -> Self {
        self.key = Some(key);
        self
    }

    /// What happens to the acting user id.
    pub fn with_user(mut self, action: FieldAction) -> Self {
        self.user = action;
        self
    }

    /// What happens to the session id.
    pub fn with_session(mut self, action: FieldAction) -> Self {
        self.session = action;
        self
    }

    /// What happens to the resource id.
    pub fn with_resource_id(mut self, action: FieldAction) -> Self {
        self.resource_id = action;
        self
    }

    /// What happens to the reason.
    pub fn with_reason(mut self, action: FieldAction) -> Self {
        self.reason = action;
        self
    }

    /// What happens to the client address.
    pub fn with_client_addr(mut self, action: AddrAction) -> Self {
        self.client_addr = action;
        self
    }

    /// What happens to detail keys no rule names (`Keep` unless set; `Drop` makes the policy
    /// an allow-list).
    pub fn with_details_default(mut self, action: FieldAction) -> Self {
        self.details_default = action;
        self
    }

    /// A rule for one detail key (matched exactly on its letters and digits, ignoring case), at
    /// any depth; it also applies to the value of a `[name, value]` pair and of a URL
    /// parameter of that name. An explicit rule wins over the sensitive-name list.
    pub fn with_detail(mut self, key: &str, action: FieldAction) -> Self {
        self.detail_rules.push((normalise(key), action));
        self
    }

    /// Adds a fragment to the sensitive-name list (masked wherever it occurs in a key, a pair's
    /// name or a URL parameter's name).
    pub fn with_sensitive_key(mut self, fragment: &str) -> Self {
        self.sensitive.push(normalise(fragment));
        self
    }

    /// Checks that the policy can be applied: a `Hash` action needs a key.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when a field is to be hashed and no key is set.
    pub fn validate(&self) -> Result<()> {
        let hashes = [self.user, self.session, self.resource_id, self.reason]
            .contains(&FieldAction::Hash)
            || self.details_default == FieldAction::Hash
            || self
                .detail_rules
                .iter()
                .any(|(_, a)| *a == FieldAction::Hash);
        if hashes && self.key.is_none() {
            return Err(Error::InvalidConfig(
                "a redaction rule hashes a field but no redaction key is set",
            ));
        }
        Ok(())
    }

    fn hash(&self, tenant: &TenantId, value: &[u8]) -> Option<Vec<u8>> {
        let mut m = self.key.as_ref()?.tenant_key(tenant);
        m.update(value);
        Some(m.finalize().into_bytes().to_vec())
    }

    fn hash_text(&self, tenant: &TenantId, value: &[u8]) -> String {
        match self.hash(tenant, value) {
            Some(h) => format!("hmac:{}", URL_SAFE_NO_PAD.encode(h)),
            // `validate` refuses a hashing policy without a key; never store the value.
            None => MASK.to_owned(),
        }
    }

    /// Applies the policy to an event, in place.
    pub fn apply(&self, event: &mut AuditEvent) {
        // Borrowed, not cloned: the tenant id is shared with the threads serving requests.
        let AuditEvent {
            tenant,
            actor,
            action,
            resource,
            reason,
            origin,
            details,
            ..
        } = event;
        let tenant: &TenantId = tenant;
        // Free text has no rule of its own: it is checked for credentials like detail values.
        if let Some(scrubbed) = self.scrub(tenant, action) {
            *action = scrubbed;
        }
        if let Some(route) = origin.route.as_mut()
            && let Some(scrubbed) = self.scrub(tenant, route)
        {
            *route = scrubbed;
        }
        if let Some(resource) = resource.as_mut()
            && let Some(scrubbed) = self.scrub(tenant, &resource.kind)
        {
            resource.kind = scrubbed;
        }
        if let Some(user) = actor.user.take() {
            actor.user = match self.user {
                FieldAction::Keep => Some(user),
                FieldAction::Drop => None,
                FieldAction::Mask => UserId::parse(MASK).ok(),
                FieldAction::Hash => {
                    UserId::parse(&self.hash_text(tenant, user.as_str().as_bytes())).ok()
                }
            };
        }
        if let Some(session) = actor.session.take() {
            actor.session = match self.session {
                FieldAction::Keep => Some(session),
                FieldAction::Drop | FieldAction::Mask => None,
                FieldAction::Hash => self
                    .hash(tenant, session.as_str().as_bytes())
                    .and_then(|h| SessionId::parse(&URL_SAFE_NO_PAD.encode(&h[..16])).ok()),
            };
        }
        if let Some(resource) = resource.as_mut()
            && let Some(id) = resource.id.take()
        {
            resource.id = self.text(tenant, self.resource_id, id);
        }
        if let Some(text) = reason.take() {
            *reason = self.text(tenant, self.reason, text);
        }
        if let Some(addr) = origin.client_addr.take() {
            origin.client_addr = match self.client_addr {
                AddrAction::Keep => Some(addr),
                AddrAction::Drop => None,
                AddrAction::Truncate => Some(truncate(addr)),
            };
        }
        self.object(tenant, details, false);
    }

    /// A free-text field under its rule; a kept one is checked for credentials.
    fn text(&self, tenant: &TenantId, action: FieldAction, value: String) -> Option<String> {
        match action {
            FieldAction::Keep => Some(self.scrub(tenant, &value).unwrap_or(value)),
            FieldAction::Drop => None,
            FieldAction::Mask => Some(MASK.to_owned()),
            FieldAction::Hash => Some(self.hash_text(tenant, value.as_bytes())),
        }
    }

    /// A hashed value: a string's text, anything else's JSON.
    fn hash_value(&self, tenant: &TenantId, v: &Value) -> String {
        match v {
            Value::String(s) => self.hash_text(tenant, s.as_bytes()),
            other => self.hash_text(tenant, other.to_string().as_bytes()),
        }
    }

    /// A string with the credentials it carries redacted, or `None` when it carries none: a
    /// credential-like value ([`credential_like`]) is masked whole, as a detail value is; in
    /// its URLs, only the secret parts are replaced ([`RedactionPolicy::scrub_urls`]).
    fn scrub(&self, tenant: &TenantId, s: &str) -> Option<String> {
        // One pass settles the usual text (a route, an action): every credential or URL
        // secret needs white space after its scheme (ASCII, the vertical tab included, or
        // not), a JWT's `J`, or a URL's `?`, `#` or `@`.
        if !s.bytes().any(|c| {
            c.is_ascii_whitespace() || matches!(c, 0x0B | b'?' | b'#' | b'@' | b'J' | b':' | 0x80..)
        }) {
            return None;
        }
        if credential_like(s) {
            return Some(MASK.to_owned());
        }
        let lines = self.scrub_header_lines(s);
        match self.scrub_urls(tenant, lines.as_deref().unwrap_or(s)) {
            Some(scrubbed) => Some(scrubbed),
            None => lines,
        }
    }

    /// Masks the value of each line of `s` that reads like a header with a sensitive name
    /// (`Cookie: sid=…`, `Set-Cookie: …`, `X-Api-Key: …`); `None` when there is none. A
    /// line ends at a line feed or a carriage return, alone or together.
    fn scrub_header_lines(&self, s: &str) -> Option<String> {
        if !s.contains(':') {
            return None;
        }
        // Nothing is built for text without such a line (a URL, a time of day).
        if !s
            .split_inclusive(LINE_BREAKS)
            .any(|line| self.sensitive_header_value(line).is_some())
        {
            return None;
        }
        let mut out = String::with_capacity(s.len());
        for line in s.split_inclusive(LINE_BREAKS) {
            match self.sensitive_header_value(line) {
                Some(value) => {
                    out.push_str(&line[..value.start]);
                    out.push(' ');
                    out.push_str(MASK);
                    out.push_str(&line[value.end..]);
                }
                None => out.push_str(line),
            }
        }
        Some(out)
    }

    /// The value's range in `line` (after the colon, line break excluded) when the line reads
    /// `Name: value` with a name whose rule is not `Keep` and a value not masked already.
    fn sensitive_header_value(&self, line: &str) -> Option<Range<usize>> {
        let indent = line.len() - line.trim_start().len();
        let colon = indent + line[indent..].find(':')?;
        let name = &line[indent..colon];
        let is_header_name = !name.is_empty()
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        let value = line[colon + 1..].trim_end_matches(['\r', '\n']);
        let keep = !is_header_name
            || value.trim().is_empty()
            || value.trim() == MASK
            || self.action_for(name, true, &[]) == FieldAction::Keep;
        (!keep).then(|| colon + 1..colon + 1 + value.len())
    }

    /// Replaces the password of each URL's user information and the values of sensitive
    /// query and fragment parameters; `None` when nothing is replaced.
    fn scrub_urls(&self, tenant: &TenantId, s: &str) -> Option<String> {
        let b = s.as_bytes();
        // Most text has no query, fragment or user information at all.
        if !b.iter().any(|c| matches!(c, b'?' | b'#' | b'@')) {
            return None;
        }
        let mut edits = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if ends_word(b[i]) {
                i += 1;
                continue;
            }
            let end = b[i..]
                .iter()
                .position(|c| ends_word(*c))
                .map_or(b.len(), |n| i + n);
            self.scrub_word(tenant, s, i..end, &mut edits);
            i = end;
        }
        if edits.is_empty() {
            return None;
        }
        edits.sort_by_key(|(r, _): &(Range<usize>, String)| (r.start, Reverse(r.end)));
        let mut out = String::with_capacity(s.len());
        let mut at = 0;
        for (r, text) in edits {
            // A password inside the value of a sensitive parameter went with the value; one
            // that overlaps a value (a malformed URL) hides the rest of it too.
            if r.end <= at {
                continue;
            }
            out.push_str(&s[at..r.start.max(at)]);
            out.push_str(&text);
            at = r.end;
        }
        out.push_str(&s[at..]);
        (out != s).then_some(out)
    }

    /// The edits for one word of text (`word` holds no white space or quote). Every range
    /// starts and ends next to an ASCII byte or at the word's ends: character boundaries.
    fn scrub_word(
        &self,
        tenant: &TenantId,
        s: &str,
        word: Range<usize>,
        edits: &mut Vec<(Range<usize>, String)>,
    ) {
        let b = s.as_bytes();
        let Range { start, end } = word;
        // `scheme://user:password@host`: the password, in every URL of the word (one may sit
        // in another's query: `?next=https://u:p@h`). The host ends at the first `/` only: a
        // raw `?` or `#` in a password (`postgres://u:p#ss@db`) must not cut it short; nor, as
        // below, a raw `/`.
        for (p, _) in s[start..end].match_indices("://") {
            let authority = start + p + 3;
            let authority_end = find_any(b, authority, end, b"/");
            let colon = |upto: usize| b[authority..upto].iter().position(|c| *c == b':');
            // `https://host?q=a:b@c` has a query, not a user.
            let no_query = |colon: usize| {
                !b[authority..authority + colon]
                    .iter()
                    .any(|c| matches!(c, b'?' | b'#'))
            };
            let password = if let Some(at) =
                b[authority..authority_end].iter().rposition(|c| *c == b'@')
                && let Some(colon) = colon(authority + at)
                && no_query(colon)
            {
                Some(authority + colon + 1..authority + at)
            } else if let Some(colon) = colon(authority_end)
                && no_query(colon)
                // A raw `/` in a password (`postgres://u:p/ss@db/app`): what follows the
                // colon up to the `/` is no port (`https://h:8080/@user` keeps its path),
                // and an `@` comes later in the word; the user information runs to the last
                // `@` before the `/` that follows the first.
                && !b[authority + colon + 1..authority_end].iter().all(u8::is_ascii_digit)
                && let Some(first_at) = b[authority_end..end].iter().position(|c| *c == b'@')
            {
                let first_at = authority_end + first_at;
                let host_end = find_any(b, first_at, end, b"/");
                let at = b[first_at..host_end]
                    .iter()
                    .rposition(|c| *c == b'@')
                    .map_or(first_at, |i| first_at + i);
                Some(authority + colon + 1..at)
            } else {
                None
            };
            if let Some(password) = password.filter(|p| !p.is_empty()) {
                edits.push((password, MASK.to_owned()));
            }
        }
        // `?name=value&...` and `#name=value&...` (OAuth puts tokens in the fragment).
        let separators = b"?#&;";
        let mut j = find_any(b, start, end, b"?#");
        while j < end {
            let name_start = j + 1;
            let name_end = find_any(b, name_start, end, b"=?#&;");
            if name_end == end || b[name_end] != b'=' {
                j = name_end;
                continue;
            }
            let value_start = name_end + 1;
            let name = decode_name(&s[name_start..name_end]);
            let action = self.action_for(&name, true, SENSITIVE_URL_PARAMS);
            if action == FieldAction::Keep {
                // The value may hold a URL with parameters of its own.
                j = find_any(b, value_start, end, separators);
                continue;
            }
            // A sensitive value runs to the next parameter, `?` and `;` included.
            let value_end = find_any(b, value_start, end, b"&#");
            let value = &s[value_start..value_end];
            let replacement = match action {
                FieldAction::Drop => String::new(),
                FieldAction::Hash => self.hash_text(tenant, value.as_bytes()),
                FieldAction::Keep | FieldAction::Mask => MASK.to_owned(),
            };
            if !value.is_empty() {
                edits.push((value_start..value_end, replacement));
            }
            j = value_end;
        }
    }

    /// The rule for a key: an explicit rule, else `Mask` for a sensitive name (a fragment of
    /// the list, or one of `exact`), else the default.
    fn action_for(&self, key: &str, nested: bool, exact: &[&str]) -> FieldAction {
        // Short ASCII keys (nearly all) are normalised on the stack.
        let mut buf = [0u8; 64];
        let owned;
        let k: &str = match buf.get_mut(..key.len()) {
            Some(dst) if key.is_ascii() => {
                let mut n = 0;
                for b in key.bytes().filter(u8::is_ascii_alphanumeric) {
                    dst[n] = b.to_ascii_lowercase();
                    n += 1;
                }
                std::str::from_utf8(&dst[..n]).unwrap_or_default()
            }
            _ => {
                owned = normalise(key);
                &owned
            }
        };
        if let Some((_, a)) = self.detail_rules.iter().rev().find(|(r, _)| *r == k) {
            return *a;
        }
        if self.sensitive.found_in(k)
            || exact.contains(&k)
            || DEFAULT_SENSITIVE_EXACT_KEYS.contains(&k)
        {
            return FieldAction::Mask;
        }
        // Inside a kept object, unnamed keys are kept: the default applies to top-level keys.
        if nested {
            FieldAction::Keep
        } else {
            self.details_default
        }
    }

    /// Applies the detail rules to an object, in place (nothing is copied when nothing is
    /// redacted).
    fn object(&self, tenant: &TenantId, map: &mut serde_json::Map<String, Value>, nested: bool) {
        // `{"name": "Cookie", "value": "…"}`, as HAR files and many loggers write headers:
        // the value gets the rule of the name, as it would under that key.
        if let (Some(Value::String(name)), Some(_)) = (map.get("name"), map.get("value")) {
            let action = self.action_for(name, true, &[]);
            if let Some(value) = map.get_mut("value") {
                match action {
                    FieldAction::Keep => {}
                    FieldAction::Drop => *value = Value::Null,
                    FieldAction::Mask => *value = Value::String(MASK.to_owned()),
                    FieldAction::Hash => *value = Value::String(self.hash_value(tenant, value)),
                }
            }
        }
        // Most maps (`{"status": 200}`) keep every entry as it is: read them, rather than
        // take each entry out and put it back.
        let unchanged = map.iter().all(|(k, v)| {
            !v.is_object()
                && !v.is_array()
                && v.as_str().is_none_or(|s| self.scrub(tenant, s).is_none())
                && self.action_for(k, nested, &[]) == FieldAction::Keep
                && self.scrub(tenant, k).is_none()
        });
        if unchanged {
            return;
        }
        // A key can carry a credential too (a URL with a token as the key of a count).
        if map.keys().any(|k| self.scrub(tenant, k).is_some()) {
            *map = std::mem::take(map)
                .into_iter()
                .map(|(k, v)| (self.scrub(tenant, &k).unwrap_or(k), v))
                .collect();
        }
        map.retain(|k, v| {
            match self.action_for(k, nested, &[]) {
                FieldAction::Drop => return false,
                FieldAction::Mask => *v = Value::String(MASK.to_owned()),
                FieldAction::Hash => *v = Value::String(self.hash_value(tenant, v)),
                FieldAction::Keep => self.value(tenant, v),
            }
            true
        });
    }

    fn value(&self, tenant: &TenantId, v: &mut Value) {
        match v {
            Value::Object(m) => self.object(tenant, m, true),
            Value::Array(a) => {
                // A name and its value, as headers are often logged: `["Authorization", "x"]`,
                // or split further (`["Authorization", "Bearer", "x"]`). What follows the name
                // gets the rule of the name, as it would under that key.
                if let [Value::String(name), rest @ ..] = a.as_mut_slice()
                    && !rest.is_empty()
                {
                    match self.action_for(name, true, &[]) {
                        FieldAction::Keep => {}
                        FieldAction::Drop => a.truncate(1),
                        FieldAction::Mask => rest.fill(Value::String(MASK.to_owned())),
                        FieldAction::Hash => {
                            for value in rest {
                                *value = Value::String(self.hash_value(tenant, value));
                            }
                        }
                    }
                }
                for x in a {
                    self.value(tenant, x);
                }
            }
            Value::String(s) => {
                if let Some(scrubbed) = self.scrub(tenant, s) {
                    *s = scrubbed;
                }
            }
            _ => {}
        }
    }
}

fn truncate(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            IpAddr::from([o[0], o[1], o[2], 0])
        }
        IpAddr::V6(v6) => {
            let mut s = v6.segments();
            s[3..].fill(0);
            IpAddr::from(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenancy_core::Outcome;

    fn event() -> AuditEvent {
        AuditEvent::new(TenantId::parse("acme").unwrap(), "x.y", Outcome::Success)
    }

    #[test]
    fn fragment_search_finds_what_str_contains_finds() {
        for (key, fragment) in [
            ("password", "password"),
            ("userpassword", "password"),
            ("passwordhint", "password"),
            ("passwor", "password"),
            ("status", "token"),
            ("xtokenx", "token"),
            ("ssn", ""),
            ("", "ssn"),
            ("", ""),
            ("aab", "ab"),
        ] {
            assert_eq!(
                contains(key, fragment),
                key.contains(fragment),
                "{key:?} {fragment:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn fragment_search_agrees_with_str_contains(key in "[a-e]{0,12}", fragment in "[a-e]{0,4}") {
            proptest::prop_assert_eq!(contains(&key, &fragment), key.contains(fragment.as_str()));
        }
    }

    #[test]
    fn hashes_are_keyed_per_tenant_and_stable() {
        let p = RedactionPolicy::new()
            .with_key(RedactionKey::from_bytes([1; 32]))
            .with_user(FieldAction::Hash);
        let mut a1 = event().with_user(UserId::parse("alice").unwrap());
        let mut a2 = event().with_user(UserId::parse("alice").unwrap());
        let mut b = a1.clone();
        b.tenant = TenantId::parse("globex").unwrap();
        p.apply(&mut a1);
        p.apply(&mut a2);
        p.apply(&mut b);
        assert_eq!(a1.actor.user, a2.actor.user, "matchable within a tenant");
        assert_ne!(a1.actor.user, b.actor.user, "distinct per tenant");
        assert!(a1.actor.user.unwrap().as_str().starts_with("hmac:"));
    }

    #[test]
    fn sensitive_keys_are_masked_at_any_depth_and_rules_win() {
        let p = RedactionPolicy::new().with_detail("session_token_hint", FieldAction::Keep);
        let mut e = event()
            .with_detail("DB-Password", "p1")
            .with_detail(
                "nested",
                serde_json::json!({"list": [{"apiKey": "k1"}], "ok": 1}),
            )
            .with_detail("session_token_hint", "visible");
        p.apply(&mut e);
        let text = serde_json::to_string(&e).unwrap();
        assert!(!text.contains("p1") && !text.contains("k1"), "{text}");
        assert!(text.contains("visible") && text.contains("\"ok\":1"));
    }

    #[test]
    fn keys_in_any_spelling_and_credentials_under_any_key_are_masked() {
        let p = RedactionPolicy::new();
        let mut e = event()
            .with_detail("Api Key", "k1")
            .with_detail("api.key", "k2")
            .with_detail("pwd", "k3")
            .with_detail("auth", "Bearer k4k4k4k4k4")
            .with_detail("msg", "sent Authorization: bearer k5k5k5k5k5 upstream")
            .with_detail("claims", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJrNiJ9.c2ln")
            .with_detail(
                "headers",
                serde_json::json!([["Authorization", "k7"], ["Accept", "json"]]),
            )
            .with_detail("note", "basic k8k8k8k8k8==")
            .with_detail("status", 200)
            .with_detail("author", "kept by design")
            .with_detail("text", "a basically harmless text about eyJ.x")
            .with_detail("plan", "basic plan");
        p.apply(&mut e);
        let text = serde_json::to_string(&e).unwrap();
        for secret in ["k1", "k2", "k3", "k4", "k5", "k6\"", "c2ln", "k7", "k8"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(
            text.contains("kept by design") && text.contains("json"),
            "{text}"
        );
        assert!(
            text.contains("basically harmless") && text.contains("basic plan"),
            "{text}"
        );
        assert!(text.contains("\"status\":200"), "{text}");
    }

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJrNiJ9.c2ln";

    #[test]
    fn free_text_fields_are_checked_for_credentials() {
        let hdr = format!("Bearer {JWT}");
        let mut e = AuditEvent::new(
            TenantId::parse("acme").unwrap(),
            "auth.login Token k1k1k1k1k1",
            Outcome::Denied,
        )
        .with_resource("record", JWT)
        .with_route("/v1/cb?access_token=k2k2&state=s1")
        .with_reason(format!("bad token {hdr}"));
        RedactionPolicy::new().apply(&mut e);
        let text = serde_json::to_string(&e).unwrap();
        for secret in ["k1", "k2", "c2ln", "eyJ"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(e.action, MASK);
        assert_eq!(e.reason.as_deref(), Some(MASK));
        assert_eq!(e.resource.unwrap().id.as_deref(), Some(MASK));
        assert_eq!(
            e.origin.route.as_deref(),
            Some("/v1/cb?access_token=[redacted]&state=s1")
        );

        // Ordinary free text is left alone, and a field's own rule comes first.
        let p = RedactionPolicy::new()
            .with_key(RedactionKey::from_bytes([3; 32]))
            .with_reason(FieldAction::Hash);
        let mut plain = event()
            .with_resource("record", "42")
            .with_route("/v1/records/{id}")
            .with_reason("token expired");
        let before = plain.clone();
        RedactionPolicy::new().apply(&mut plain);
        assert_eq!(plain, before);
        let mut hashed = event().with_reason(hdr.clone());
        p.apply(&mut hashed);
        let expected = p.hash_text(&hashed.tenant, hdr.as_bytes());
        assert_eq!(hashed.reason, Some(expected));
    }

    #[test]
    fn urls_keep_their_shape_but_lose_their_secrets() {
        let p = RedactionPolicy::new()
            .with_key(RedactionKey::from_bytes([5; 32]))
            .with_detail("email", FieldAction::Hash)
            .with_detail("trace", FieldAction::Drop);
        let cases = [
            (
                "https://x/cb?access_token=abc&state=s1",
                "https://x/cb?access_token=[redacted]&state=s1",
            ),
            (
                "https://user:pass@host/db?x=1",
                "https://user:[redacted]@host/db?x=1",
            ),
            (
                "postgres://u:p#ss@db:5432",
                "postgres://u:[redacted]@db:5432",
            ),
            (
                "postgres://app:s3cr/t@db/app",
                "postgres://app:[redacted]@db/app",
            ),
            (
                "dsn=postgres://app:a/b@c@db:5432/app?sslmode=require",
                "dsn=postgres://app:[redacted]@db:5432/app?sslmode=require",
            ),
            ("https://h:8080/@user/post", "https://h:8080/@user/post"),
            ("https://medium.com/@user", "https://medium.com/@user"),
            (
                "https://x/cb#access_token=abc&expires_in=3600",
                "https://x/cb#access_token=[redacted]&expires_in=3600",
            ),
            (
                "callback https://x/cb?code=c0de&Client-Secret=s3cr3t failed",
                "callback https://x/cb?code=[redacted]&Client-Secret=[redacted] failed",
            ),
            (
                "/p?api%5Fkey=k&sig=z&key=q",
                "/p?api%5Fkey=[redacted]&sig=[redacted]&key=[redacted]",
            ),
            (
                "https://a/?next=https://u:pw@b/c?token=t&x=1",
                "https://a/?next=https://u:[redacted]@b/c?token=[redacted]&x=1",
            ),
            ("/p?trace=t1&status_code=200", "/p?trace=&status_code=200"),
            ("https://host?q=a:b@c", "https://host?q=a:b@c"),
            ("what? #1 user@example.com", "what? #1 user@example.com"),
        ];
        for (given, expected) in cases {
            let mut e = event().with_detail("url", given);
            p.apply(&mut e);
            assert_eq!(e.details["url"], expected, "{given}");
        }
        let mut e = event().with_detail("url", "https://x/?email=a@b.c");
        p.apply(&mut e);
        let hashed = p.hash_text(&e.tenant, b"a@b.c");
        assert_eq!(e.details["url"], format!("https://x/?email={hashed}"));
    }

    #[test]
    fn any_white_space_after_any_known_scheme_is_a_credential() {
        for value in [
            "Bearer  k1k1k1k1k1",
            "Bearer\tk1k1k1k1k1",
            "authorization: bearer \r\n k1k1k1k1k1",
            "Token k1k1k1k1k1",
            "Basic\u{a0}k1k1k1k1k1==",
            "DIGEST username=\"k1k1k1k1\", response=\"abc\"",
            "ApiKey k1k1k1k1k1",
            "dpop k1k1k1k1k1",
            "Bearer\u{0B}k1k1k1k1k1",
            "Bearer abcdefghijklmnopqrst",
            "Token abc_defghij",
        ] {
            assert!(credential_like(value), "{value:?}");
            let mut e = event().with_detail("note", value);
            RedactionPolicy::new().apply(&mut e);
            assert_eq!(e.details["note"], MASK, "{value:?}");
        }
        for value in [
            "token expired",
            "Basic plan",
            "tokens: 3",
            "Bearer",
            "digest",
            // Prose after a scheme's name is no credential.
            "Token validation failed",
            "the refresh token signature was refused",
            "Basic authentication is disabled",
            "subtoken k1k1k1k1k1",
            "token expired.",
            "the token revoked.",
            "Bearer tokens/sessions",
            "re-issued token re-issued",
        ] {
            assert!(!credential_like(value), "{value:?}");
        }
    }

    /// Credentials in the shapes headers and requests are logged in: short names that are
    /// the whole key, a URL as a key, `{"name", "value"}` objects, a name split from its
    /// value over several items, header lines in free text, and `?auth=` in a URL. Words
    /// that merely contain those names are kept.
    #[test]
    fn credentials_in_logged_header_shapes_are_masked() {
        let p = RedactionPolicy::new();
        let mut e = event()
            .with_detail("pass", "hunter2a")
            .with_detail("auth", "hunter2b")
            .with_detail("PIN", "1234")
            .with_detail("passport", "kept-1")
            .with_detail("author", "kept-2")
            .with_detail("https://x.example/cb?access_token=hunter2c", 200)
            .with_detail(
                "har",
                serde_json::json!([
                    {"name": "Cookie", "value": "sid=hunter2d"},
                    {"name": "Accept", "value": "kept-3"}
                ]),
            )
            .with_detail(
                "split",
                serde_json::json!(["Authorization", "Bearer", "hunter2e9X"]),
            )
            .with_detail("line", "Cookie: session=hunter2f")
            .with_detail("lines", "Accept: kept-4\r\nX-Api-Key:hunter2g\r\n")
            .with_detail(
                "old-mac",
                "Accept: kept-6\rX-Api-Key: hunter2j\rVia: kept-7",
            )
            .with_detail("url", "https://x.example/p?auth=hunter2h&page=kept-5");
        e.reason = Some("Set-Cookie: sid=hunter2i".into());
        p.apply(&mut e);
        let text = serde_json::to_string(&e).unwrap();
        for secret in [
            "hunter2a",
            "hunter2b",
            "1234",
            "hunter2c",
            "hunter2d",
            "hunter2e9X",
            "hunter2f",
            "hunter2g",
            "hunter2h",
            "hunter2i",
            "hunter2j",
        ] {
            assert!(!text.contains(secret), "{secret} reached the event: {text}");
        }
        for kept in [
            "kept-1",
            "kept-2",
            "kept-3",
            "kept-4",
            "kept-5",
            "Accept: kept-4",
            "Accept: kept-6",
            "Via: kept-7",
        ] {
            assert!(text.contains(kept), "{kept} was lost: {text}");
        }
        assert_eq!(e.details["line"], "Cookie: [redacted]");
        assert_eq!(e.reason.as_deref(), Some("Set-Cookie: [redacted]"));
    }

    #[test]
    fn pairs_get_whatever_rule_their_name_has() {
        let p = RedactionPolicy::new()
            .with_key(RedactionKey::from_bytes([9; 32]))
            .with_detail("authorization", FieldAction::Hash)
            .with_detail("x-trace", FieldAction::Drop);
        let mut e = event().with_detail(
            "headers",
            serde_json::json!([
                ["Authorization", "Bearer x"],
                ["X-Trace", "t1"],
                ["Cookie", "c1"],
                ["Accept", "json"]
            ]),
        );
        p.apply(&mut e);
        let hashed = p.hash_text(&e.tenant, b"Bearer x");
        assert_eq!(
            e.details["headers"],
            serde_json::json!([
                ["Authorization", hashed],
                ["X-Trace"],
                ["Cookie", MASK],
                ["Accept", "json"]
            ])
        );
    }

    #[test]
    fn hashing_without_a_key_is_refused_and_addresses_truncate() {
        assert!(
            RedactionPolicy::new()
                .with_resource_id(FieldAction::Hash)
                .validate()
                .is_err()
        );
        assert_eq!(
            truncate("192.0.2.77".parse().unwrap()),
            "192.0.2.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            truncate("2001:db8:1:2:3::9".parse().unwrap()),
            "2001:db8:1::".parse::<IpAddr>().unwrap()
        );
    }

    proptest::proptest! {
        #[test]
        fn the_start_filter_finds_what_a_scan_of_every_fragment_finds(
            key in "[a-z0-9]{0,14}",
            fragments in proptest::collection::vec("[a-z0-9]{0,5}", 0..6),
        ) {
            let scanned = fragments.iter().any(|f| contains(&key, f));
            proptest::prop_assert_eq!(Fragments::new(fragments).found_in(&key), scanned);
        }
    }
}
