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
//!   occurs as part of a key (`db_password`, `X-Api-Key`), and so is the second item of a
//!   `[name, value]` pair whose name is one (`["Authorization", "…"]`, as headers are often
//!   logged).
//! - Whatever its key, a string value that carries a credential is masked: an HTTP
//!   authorization value (`Bearer` or `Basic` and a credential, also inside a longer text) or
//!   a JWT. Other secrets in free text are not recognised: keep them out of `details`.
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

use std::fmt;
use std::net::IpAddr;

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

/// The redaction policy. [`RedactionPolicy::new`] masks the default sensitive detail keys
/// and drops session ids; everything else is kept until configured otherwise.
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
/// (`Bearer` or `Basic`, a space and at least 8 credential characters, also inside a longer
/// text such as a logged header line) or a JWT (`eyJ…` with two dots).
fn credential_like(s: &str) -> bool {
    let b = s.as_bytes();
    let token68 = |c: &u8| c.is_ascii_alphanumeric() || b"-._~+/=".contains(c);
    // The scheme, a space, and a credential of at least 8 characters (not "basic plan").
    let scheme = |w: &[u8]| {
        (0..b.len().saturating_sub(w.len())).any(|i| {
            b[i..i + w.len()].eq_ignore_ascii_case(w)
                && b[i + w.len()] == b' '
                && b[i + w.len() + 1..]
                    .iter()
                    .take_while(|c| token68(c))
                    .count()
                    >= 8
        })
    };
    let jwt = s.match_indices("eyJ").any(|(i, _)| {
        let token = b[i..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            .filter(|c| **c == b'.')
            .count();
        token >= 2
    });
    jwt || scheme(b"bearer") || scheme(b"basic")
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
    /// The first two bytes of every fragment, sorted; `None` when a fragment is shorter than
    /// two bytes (every key is then scanned).
    starts: Option<Vec<[u8; 2]>>,
}

impl Fragments {
    fn new(list: Vec<String>) -> Self {
        let starts = list
            .iter()
            .map(|f| match f.as_bytes() {
                [a, b, ..] => Some([*a, *b]),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(|mut starts| {
                starts.sort_unstable();
                starts.dedup();
                starts
            });
        Self { list, starts }
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
                .any(|w| starts.binary_search(&[w[0], w[1]]).is_ok())
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

    /// A rule for one detail key (matched exactly, ignoring case, `-` and `_`), at any depth.
    /// An explicit rule wins over the sensitive-name list.
    pub fn with_detail(mut self, key: &str, action: FieldAction) -> Self {
        self.detail_rules.push((normalise(key), action));
        self
    }

    /// Adds a fragment to the sensitive-name list (masked wherever it occurs in a key).
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
            resource,
            reason,
            origin,
            details,
            ..
        } = event;
        let tenant: &TenantId = tenant;
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

    fn text(&self, tenant: &TenantId, action: FieldAction, value: String) -> Option<String> {
        match action {
            FieldAction::Keep => Some(value),
            FieldAction::Drop => None,
            FieldAction::Mask => Some(MASK.to_owned()),
            FieldAction::Hash => Some(self.hash_text(tenant, value.as_bytes())),
        }
    }

    fn action_for(&self, key: &str, nested: bool) -> FieldAction {
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
        if self.sensitive.found_in(k) {
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
        // Most maps (`{"status": 200}`) keep every entry as it is: read them, rather than
        // take each entry out and put it back.
        let unchanged = map.iter().all(|(k, v)| {
            !v.is_object()
                && !v.is_array()
                && !v.as_str().is_some_and(credential_like)
                && self.action_for(k, nested) == FieldAction::Keep
        });
        if unchanged {
            return;
        }
        map.retain(|k, v| {
            match self.action_for(k, nested) {
                FieldAction::Drop => return false,
                FieldAction::Mask => *v = Value::String(MASK.to_owned()),
                FieldAction::Hash => {
                    let hashed = match &*v {
                        Value::String(s) => self.hash_text(tenant, s.as_bytes()),
                        other => self.hash_text(tenant, other.to_string().as_bytes()),
                    };
                    *v = Value::String(hashed);
                }
                FieldAction::Keep => self.value(tenant, v),
            }
            true
        });
    }

    fn value(&self, tenant: &TenantId, v: &mut Value) {
        match v {
            Value::Object(m) => self.object(tenant, m, true),
            Value::Array(a) => {
                // A list of pairs, as headers are often logged: `["Authorization", "x"]`.
                if let [Value::String(name), value] = a.as_mut_slice()
                    && self.action_for(name, true) == FieldAction::Mask
                {
                    *value = Value::String(MASK.to_owned());
                }
                for x in a {
                    self.value(tenant, x);
                }
            }
            Value::String(s) if credential_like(s) => *v = Value::String(MASK.to_owned()),
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
