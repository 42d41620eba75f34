//! The JWT claim model.
//!
//! [`Claims`] carries the registered claims (`iss`, `aud`, `sub`, `exp`, `nbf`, `iat`, `jti`)
//! and the tenancy claims (`tenant_id`, `user_id`, `user_role`, `permissions`, optional `sid`).
//! [`Claims::from_json`] is the strict decoder a verifier uses: it names the claim that is
//! missing or mistyped, and refuses duplicate keys.
//!
//! ```
//! use tenancy_core::{Claims, TokenRejection};
//!
//! let json = br#"{"iss":"https://id.example","aud":"api","sub":"alice","exp":4102444800,
//!   "tenant_id":"acme","user_id":"alice","user_role":"user","permissions":["records:read"]}"#;
//! let claims = Claims::from_json(json)?;
//! assert_eq!(claims.tenant_id.as_str(), "acme");
//!
//! let missing = br#"{"iss":"i","aud":"a","sub":"s","exp":1,"user_id":"u","user_role":"user","permissions":[]}"#;
//! assert_eq!(Claims::from_json(missing).unwrap_err(), TokenRejection::MissingClaim("tenant_id"));
//! # Ok::<(), TokenRejection>(())
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Permission, PermissionSet, Role, SessionId, TenantId, TokenRejection, UserId};

/// The audience claim: one string or several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience(Vec<String>);

impl Audience {
    /// A single audience.
    pub fn one(aud: impl Into<String>) -> Self {
        Self(vec![aud.into()])
    }

    /// Whether `aud` is one of the audiences.
    pub fn contains(&self, aud: &str) -> bool {
        self.0.iter().any(|a| a == aud)
    }

    /// All audiences.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl Serialize for Audience {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        audience_from(&v)
            .ok_or_else(|| serde::de::Error::custom("aud must be a string or an array of strings"))
    }
}

fn audience_from(v: &Value) -> Option<Audience> {
    match v {
        Value::String(s) => Some(Audience::one(s.clone())),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(Audience),
        _ => None,
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: Audience,
    /// Subject (usually the same as `user_id`).
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Not before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Token id, for revocation. [`Claims::from_json`] refuses one longer than
    /// [`MAX_JTI_BYTES`](crate::MAX_JTI_BYTES) as an invalid claim, since no denylist would
    /// store it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The tenant the token acts for.
    pub tenant_id: TenantId,
    /// The user within the tenant.
    pub user_id: UserId,
    /// The user's role.
    pub user_role: Role,
    /// The permissions granted to this token.
    pub permissions: PermissionSet,
    /// The session the token belongs to; when present, the token dies with the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<SessionId>,
}

/// Every known claim as untyped JSON, so that [`Claims::from_json`] can name the faulty one.
/// Deserialising into a struct (not a map) makes serde refuse duplicate keys.
#[derive(Deserialize)]
struct RawClaims {
    iss: Option<Value>,
    aud: Option<Value>,
    sub: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    iat: Option<Value>,
    jti: Option<Value>,
    tenant_id: Option<Value>,
    user_id: Option<Value>,
    user_role: Option<Value>,
    permissions: Option<Value>,
    sid: Option<Value>,
}

fn required(v: Option<Value>, name: &'static str) -> Result<Value, TokenRejection> {
    match v {
        None | Some(Value::Null) => Err(TokenRejection::MissingClaim(name)),
        Some(v) => Ok(v),
    }
}

fn string(v: Value, name: &'static str) -> Result<String, TokenRejection> {
    match v {
        Value::String(s) => Ok(s),
        _ => Err(TokenRejection::InvalidClaim(name)),
    }
}

/// NumericDate: an integer (or a float, truncated) that fits in an `i64` and is not negative.
fn numeric_date(v: &Value, name: &'static str) -> Result<i64, TokenRejection> {
    let n = v.as_number().ok_or(TokenRejection::InvalidClaim(name))?;
    let secs = if let Some(i) = n.as_i64() {
        i
    } else {
        let f = n.as_f64().ok_or(TokenRejection::InvalidClaim(name))?;
        // Past year 292 billion, or NaN: refuse rather than saturate.
        if !(0.0..9.2e18).contains(&f) {
            return Err(TokenRejection::InvalidClaim(name));
        }
        f as i64
    };
    if secs < 0 {
        return Err(TokenRejection::InvalidClaim(name));
    }
    Ok(secs)
}

fn optional<T>(
    v: Option<Value>,
    f: impl FnOnce(Value) -> Result<T, TokenRejection>,
) -> Result<Option<T>, TokenRejection> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => f(v).map(Some),
    }
}

fn parsed<T>(
    v: Value,
    name: &'static str,
    parse: impl FnOnce(&str) -> Result<T, crate::ParseError>,
) -> Result<T, TokenRejection> {
    let s = string(v, name)?;
    parse(&s).map_err(|_| TokenRejection::InvalidClaim(name))
}

impl Claims {
    /// Strictly decodes a JSON claims object, naming the first claim that is missing or invalid.
    ///
    /// Refuses: anything but a JSON object, duplicate keys, a missing `iss`, `aud`, `sub`,
    /// `exp`, `tenant_id`, `user_id`, `user_role` or `permissions`, and any claim of the wrong
    /// type or with an invalid value. Unknown claims are ignored.
    pub fn from_json(bytes: &[u8]) -> Result<Self, TokenRejection> {
        // A derived struct decoder also takes a JSON array (fields by position).
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(TokenRejection::Malformed);
        }
        let raw: RawClaims =
            serde_json::from_slice(bytes).map_err(|_| TokenRejection::Malformed)?;
        let tenant_id = parsed(
            required(raw.tenant_id, "tenant_id")?,
            "tenant_id",
            TenantId::parse,
        )?;
        let user_id = parsed(required(raw.user_id, "user_id")?, "user_id", UserId::parse)?;
        let user_role = parsed(
            required(raw.user_role, "user_role")?,
            "user_role",
            Role::parse,
        )?;
        let permissions = match required(raw.permissions, "permissions")? {
            Value::Array(items) => items
                .into_iter()
                .map(|p| parsed(p, "permissions", Permission::parse))
                .collect::<Result<PermissionSet, _>>()?,
            _ => return Err(TokenRejection::InvalidClaim("permissions")),
        };
        let iss = string(required(raw.iss, "iss")?, "iss")?;
        let aud =
            audience_from(&required(raw.aud, "aud")?).ok_or(TokenRejection::InvalidClaim("aud"))?;
        let sub = string(required(raw.sub, "sub")?, "sub")?;
        let exp = numeric_date(&required(raw.exp, "exp")?, "exp")?;
        let nbf = optional(raw.nbf, |v| numeric_date(&v, "nbf"))?;
        let iat = optional(raw.iat, |v| numeric_date(&v, "iat"))?;
        // A `jti` is opaque, but a denylist stores it: one longer than any store keeps is refused
        // here, so that every token can be revoked.
        let jti = optional(raw.jti, |v| {
            string(v, "jti").and_then(|s| {
                crate::denylist::check_jti(&s)
                    .map(|()| s)
                    .map_err(|_| TokenRejection::InvalidClaim("jti"))
            })
        })?;
        let sid = optional(raw.sid, |v| parsed(v, "sid", SessionId::parse))?;
        Ok(Self {
            iss,
            aud,
            sub,
            exp,
            nbf,
            iat,
            jti,
            tenant_id,
            user_id,
            user_role,
            permissions,
            sid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Map<String, Value> {
        serde_json::json!({
            "iss": "issuer", "aud": ["api", "other"], "sub": "alice", "exp": 4_102_444_800_i64,
            "nbf": 1, "iat": 1, "jti": "t1", "tenant_id": "acme", "user_id": "alice",
            "user_role": "tenant_admin", "permissions": ["records:read", "audit:*"],
            "sid": SessionId::generate().to_string(),
        })
        .as_object()
        .cloned()
        .unwrap_or_default()
    }

    fn decode(m: &serde_json::Map<String, Value>) -> Result<Claims, TokenRejection> {
        Claims::from_json(&serde_json::to_vec(m).unwrap())
    }

    #[test]
    fn full_claims_round_trip() {
        let c = decode(&base()).unwrap();
        assert!(c.aud.contains("other"));
        let again = Claims::from_json(&serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    /// A derived decoder takes the fields of a struct by position from a JSON array too.
    #[test]
    fn only_an_object_is_claims() {
        let c = decode(&base()).unwrap();
        let by_position = serde_json::to_vec(&serde_json::json!([
            c.iss,
            ["api"],
            c.sub,
            c.exp,
            null,
            null,
            null,
            "acme",
            "bob",
            "user",
            [],
            null
        ]))
        .unwrap();
        assert_eq!(
            Claims::from_json(&by_position).unwrap_err(),
            TokenRejection::Malformed
        );
        let spaced = [b" \n".as_slice(), &serde_json::to_vec(&base()).unwrap()].concat();
        assert!(Claims::from_json(&spaced).is_ok());
    }

    #[test]
    fn a_jti_longer_than_a_denylist_keeps_is_refused() {
        let mut m = base();
        m.insert("jti".into(), "j".repeat(crate::MAX_JTI_BYTES).into());
        assert_eq!(
            decode(&m).unwrap().jti.map(|j| j.len()),
            Some(crate::MAX_JTI_BYTES)
        );
        m.insert("jti".into(), "j".repeat(crate::MAX_JTI_BYTES + 1).into());
        assert_eq!(decode(&m).unwrap_err(), TokenRejection::InvalidClaim("jti"));
        for bad in ["", "t1\nrevoked", "t1\u{0}", "t1\u{85}"] {
            m.insert("jti".into(), bad.into());
            assert_eq!(
                decode(&m).unwrap_err(),
                TokenRejection::InvalidClaim("jti"),
                "{bad:?}"
            );
        }
        m.insert("jti".into(), "ünïcode-ok".into());
        assert!(decode(&m).is_ok());
    }

    #[test]
    fn each_required_claim_is_named_when_missing() {
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
            let mut m = base();
            m.remove(name);
            assert_eq!(
                decode(&m).unwrap_err(),
                TokenRejection::MissingClaim(name),
                "{name}"
            );
            let mut m = base();
            m.insert(name.into(), Value::Null);
            assert_eq!(
                decode(&m).unwrap_err(),
                TokenRejection::MissingClaim(name),
                "{name} null"
            );
        }
    }

    #[test]
    fn wrong_types_and_values_are_named() {
        let cases: &[(&str, Value)] = &[
            ("exp", Value::from("tomorrow")),
            ("exp", Value::from(-5)),
            ("exp", serde_json::json!(1e30)),
            ("nbf", Value::from(true)),
            ("tenant_id", Value::from("ACME")),
            ("tenant_id", Value::from(7)),
            ("user_role", Value::from("Admin!")),
            ("permissions", Value::from("records:read")),
            ("permissions", serde_json::json!(["records"])),
            ("aud", serde_json::json!([])),
            ("aud", serde_json::json!([1])),
            ("sid", Value::from("nope")),
            ("iss", Value::from(1)),
        ];
        for (name, v) in cases {
            let mut m = base();
            m.insert((*name).into(), v.clone());
            assert_eq!(
                decode(&m).unwrap_err(),
                TokenRejection::InvalidClaim(name),
                "{name}={v}"
            );
        }
    }

    #[test]
    fn duplicate_keys_and_non_objects_are_malformed() {
        let dup = br#"{"iss":"i","aud":"a","sub":"s","exp":9999999999,"tenant_id":"acme","tenant_id":"globex","user_id":"u","user_role":"user","permissions":[]}"#;
        assert_eq!(
            Claims::from_json(dup).unwrap_err(),
            TokenRejection::Malformed
        );
        assert_eq!(
            Claims::from_json(b"[1]").unwrap_err(),
            TokenRejection::Malformed
        );
        assert_eq!(
            Claims::from_json(b"{").unwrap_err(),
            TokenRejection::Malformed
        );
        assert_eq!(
            Claims::from_json(b"{\"exp\":1e400}").unwrap_err(),
            TokenRejection::Malformed
        );
    }
}
