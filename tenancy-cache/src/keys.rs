//! Every Redis key this crate uses is built here, and nowhere else.
//!
//! Layout (`<ns>` is the namespace, `tenancy` by default):
//!
//! | key                                          | holds                                   |
//! |----------------------------------------------|-----------------------------------------|
//! | `<ns>:rl:{t:<tenant>}:t:<period>`            | GCRA TAT of a tenant-wide limit         |
//! | `<ns>:rl:{t:<tenant>}:u:<user>:<period>`     | GCRA TAT of a per-user limit            |
//! | `<ns>:rl:{t:<tenant>}:c:<client>:<period>`   | GCRA TAT of a per-client limit          |
//! | `<ns>:s:{t:<tenant>}:id:<session id>`        | a session (hash)                        |
//! | `<ns>:s:{t:<tenant>}:u:<user>`               | a user's session ids (set)              |
//! | `<ns>:c:{t:<tenant>}:gen`                    | the tenant's cache generation           |
//! | `<ns>:c:{t:<tenant>}:k:<key>`                | a cache entry                           |
//! | `<ns>:d:{t:<tenant>}:j:<jti>`                | a revoked token id (denylist entry)     |
//!
//! - The tenant appears once, as the Cluster hash tag `{t:<tenant>}`: all of a tenant's keys
//!   live in one slot, so one Lua script may touch all of them on a Cluster. Tenant ids are
//!   validated by [`TenantId`] (`[a-z0-9_-]`), so they cannot contain `{`, `}`, `:` or `*`.
//! - User ids, cache keys and token ids may contain any character: they are written as
//!   unpadded base64url (`[A-Za-z0-9_-]`), so `}`, `:`, `*` or `{t:other}` in them cannot end
//!   the hash tag, add a key segment or act as a `SCAN` pattern.
//! - Session ids are base64url by construction ([`SessionId`]).
//! - The namespace is checked: `[A-Za-z0-9_.-]` and `:`, 1 to 64 bytes, so it cannot open a
//!   hash tag or carry glob characters.
//!
//! ```
//! use tenancy_cache::keys::KeySpace;
//! use tenancy_core::{TenantId, UserId};
//!
//! let ks = KeySpace::new("app")?;
//! let acme = TenantId::parse("acme")?;
//! let hostile = UserId::parse("}{t:other}:*")?;
//! let key = ks.limit_user(&acme, &hostile, 60);
//! assert_eq!(key, "app:rl:{t:acme}:u:fXt0Om90aGVyfToq:60");
//! assert_eq!(KeySpace::hash_tag(&key), Some("t:acme"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tenancy_core::{ParseError, SessionId, TenantId, UserId};

/// The default namespace.
pub const DEFAULT_NAMESPACE: &str = "tenancy";

/// Builds the keys of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    ns: Arc<str>,
}

impl Default for KeySpace {
    fn default() -> Self {
        Self {
            ns: Arc::from(DEFAULT_NAMESPACE),
        }
    }
}

/// Writes `s` as unpadded base64url.
fn encode(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s.as_bytes())
}

impl KeySpace {
    /// A key space under `namespace`.
    ///
    /// Errors: a namespace that is empty, longer than 64 bytes, or has a character outside
    /// `[A-Za-z0-9_.:-]`.
    pub fn new(namespace: &str) -> Result<Self, ParseError> {
        if namespace.is_empty() || namespace.len() > 64 {
            return Err(ParseError::new("key namespace", "must be 1 to 64 bytes"));
        }
        if !namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'))
        {
            return Err(ParseError::new(
                "key namespace",
                "may contain only A-Z, a-z, 0-9, '_', '.', '-' and ':'",
            ));
        }
        Ok(Self {
            ns: Arc::from(namespace),
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    fn base(&self, area: &str, tenant: &TenantId) -> String {
        format!("{}:{area}:{{t:{}}}", self.ns, tenant.as_str())
    }

    /// The state key of a tenant-wide limit of `period_secs`.
    pub fn limit_tenant(&self, tenant: &TenantId, period_secs: u64) -> String {
        format!("{}:t:{period_secs}", self.base("rl", tenant))
    }

    /// The state key of a per-user limit of `period_secs`.
    pub fn limit_user(&self, tenant: &TenantId, user: &UserId, period_secs: u64) -> String {
        format!(
            "{}:u:{}:{period_secs}",
            self.base("rl", tenant),
            encode(user.as_str())
        )
    }

    /// The state key of a per-client limit of `period_secs` (the client's key in `client`).
    pub fn limit_client(&self, tenant: &TenantId, client: &UserId, period_secs: u64) -> String {
        format!(
            "{}:c:{}:{period_secs}",
            self.base("rl", tenant),
            encode(client.as_str())
        )
    }

    /// A `SCAN` pattern matching every limit key of `tenant` and nothing else.
    pub fn limit_pattern(&self, tenant: &TenantId) -> String {
        format!("{}:*", self.base("rl", tenant))
    }

    /// The hash of a session.
    pub fn session(&self, tenant: &TenantId, id: &SessionId) -> String {
        format!("{}:id:{}", self.base("s", tenant), id.as_str())
    }

    /// The set of a user's session ids.
    pub fn session_index(&self, tenant: &TenantId, user: &UserId) -> String {
        format!("{}:u:{}", self.base("s", tenant), encode(user.as_str()))
    }

    /// The cache generation of `tenant` (raised to invalidate all its entries).
    pub fn cache_generation(&self, tenant: &TenantId) -> String {
        format!("{}:gen", self.base("c", tenant))
    }

    /// A cache entry; `key` is any checked cache key.
    pub fn cache_entry(&self, tenant: &TenantId, key: &str) -> String {
        format!("{}:k:{}", self.base("c", tenant), encode(key))
    }

    /// The denylist entry of token id `jti` (any text).
    pub fn denylist_entry(&self, tenant: &TenantId, jti: &str) -> String {
        format!("{}:j:{}", self.base("d", tenant), encode(jti))
    }

    /// The part of `key` that Redis Cluster hashes: the text between the first `{` and the
    /// next `}`, when not empty.
    pub fn hash_tag(key: &str) -> Option<&str> {
        let open = key.find('{')?;
        let close = key[open + 1..].find('}')? + open + 1;
        (close > open + 1).then(|| &key[open + 1..close])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn hostile_user_ids_stay_inside_the_tenant_tag() {
        let ks = KeySpace::default();
        let acme = t("acme");
        let hostile = [
            "{t:other}",
            "}",
            "{",
            "*",
            "a:b:c",
            "u:x:60",
            "}{t:globex}*",
            "~\u{a0}x",
            "ü ñ 漢字",
        ];
        let mut seen = std::collections::HashSet::new();
        for h in hostile {
            let user = UserId::parse(h).unwrap();
            for key in [
                ks.limit_user(&acme, &user, 60),
                ks.session_index(&acme, &user),
                ks.cache_entry(&acme, h),
                ks.denylist_entry(&acme, h),
            ] {
                assert_eq!(KeySpace::hash_tag(&key), Some("t:acme"), "{key}");
                let tail = &key[key.find('}').unwrap() + 1..];
                assert!(
                    !tail.contains(['{', '}', '*', '?', '[', ']', '\\']),
                    "{key}"
                );
                assert!(key.starts_with("tenancy:"), "{key}");
                assert!(seen.insert(key.clone()), "two inputs, one key: {key}");
            }
        }
        // The tenant pattern never matches another tenant whose id extends this one.
        let pattern = ks.limit_pattern(&acme);
        assert!(
            !ks.limit_tenant(&t("acme2"), 60)
                .starts_with(&pattern[..pattern.len() - 1])
        );
    }

    #[test]
    fn user_and_tenant_keys_cannot_collide() {
        let ks = KeySpace::default();
        let acme = t("acme");
        // A user key always has the `:u:` segment, a tenant key never: no user id can
        // produce the tenant key, whatever its characters.
        let tenant_key = ks.limit_tenant(&acme, 60);
        let user_key = ks.limit_user(&acme, &UserId::parse("t").unwrap(), 60);
        assert_ne!(tenant_key, user_key);
        assert_eq!(tenant_key, "tenancy:rl:{t:acme}:t:60");
    }

    #[test]
    fn a_client_key_is_not_the_user_key_of_the_same_id() {
        let ks = KeySpace::default();
        let id = UserId::parse("ip:192.0.2.7").unwrap();
        let client = ks.limit_client(&t("acme"), &id, 60);
        assert_ne!(client, ks.limit_user(&t("acme"), &id, 60));
        assert_eq!(client, "tenancy:rl:{t:acme}:c:aXA6MTkyLjAuMi43:60");
        assert_eq!(KeySpace::hash_tag(&client), Some("t:acme"));
    }

    #[test]
    fn namespaces_are_checked() {
        assert!(KeySpace::new("app:v1").is_ok());
        for bad in ["", "a{b", "a}b", "a*", "a b", "ä", &"x".repeat(65)] {
            assert!(KeySpace::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hash_tags() {
        assert_eq!(KeySpace::hash_tag("a{b}c"), Some("b"));
        assert_eq!(KeySpace::hash_tag("a{}c{d}"), None);
        assert_eq!(KeySpace::hash_tag("abc"), None);
    }
}
