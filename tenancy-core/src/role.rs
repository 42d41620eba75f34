//! Roles and permissions.
//!
//! A [`Permission`] is `resource:action`; `resource:*` grants every action on a resource.
//! A [`Role`] is one of the three built-ins or an application-defined name.
//!
//! ```
//! use tenancy_core::{Permission, PermissionSet, Role};
//!
//! let granted: PermissionSet = ["records:*", "audit:read"].iter().map(|p| p.parse()).collect::<Result<_, _>>()?;
//! assert!(granted.allows(&"records:write".parse()?));
//! assert!(!granted.allows(&"audit:write".parse()?));
//! assert!(Permission::parse("records").is_err());
//! assert_eq!(Role::parse("tenant_admin")?, Role::TenantAdmin);
//! # Ok::<(), tenancy_core::ParseError>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::ParseError;

const NAME_MAX_LEN: usize = 64;

/// `[a-z][a-z0-9_.-]{0,63}`: the shape of resource names, actions and custom role names.
pub(crate) fn check_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > NAME_MAX_LEN {
        return Err("each part must be 1 to 64 characters");
    }
    if !s.as_bytes()[0].is_ascii_lowercase() {
        return Err("each part must start with a lowercase letter");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err("each part may contain only a-z, 0-9, '_', '.' and '-'");
    }
    Ok(())
}

/// The role a user holds within its tenant.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Role {
    /// Platform operator: acts across tenants and is not rate limited.
    SuperAdmin,
    /// Administers one tenant (its users, its audit trail).
    TenantAdmin,
    /// An ordinary user of one tenant.
    User,
    /// An application-defined role (`[a-z][a-z0-9_.-]{0,63}`, not a built-in name). Made only
    /// by [`Role::parse`], so that what a token carries and what the program holds are the
    /// same role: a `Custom` spelled `super_admin` would be issued as one and come back as
    /// [`Role::SuperAdmin`].
    Custom(CustomRole),
}

/// The name of an application-defined [`Role`], as [`Role::parse`] checked it.
///
/// ```
/// use tenancy_core::Role;
///
/// let Role::Custom(auditor) = Role::parse("auditor")? else { unreachable!() };
/// assert_eq!(auditor.as_str(), "auditor");
/// assert!(!matches!(Role::parse("super_admin")?, Role::Custom(_)));
/// # Ok::<(), tenancy_core::ParseError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomRole(Arc<str>);

impl CustomRole {
    /// The role's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CustomRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Role {
    /// Parses a role name.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        Ok(match s {
            "super_admin" => Self::SuperAdmin,
            "tenant_admin" => Self::TenantAdmin,
            "user" => Self::User,
            other => {
                check_name(other).map_err(|r| ParseError::new("role", r))?;
                Self::Custom(CustomRole(Arc::from(other)))
            }
        })
    }

    /// The role's name as carried in tokens.
    pub fn as_str(&self) -> &str {
        match self {
            Self::SuperAdmin => "super_admin",
            Self::TenantAdmin => "tenant_admin",
            Self::User => "user",
            Self::Custom(name) => name.as_str(),
        }
    }

    /// Whether this is the platform-wide [`Role::SuperAdmin`].
    pub fn is_super_admin(&self) -> bool {
        matches!(self, Self::SuperAdmin)
    }
}

/// A permission: `resource:action`, or `resource:*` for every action on the resource.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission {
    text: Arc<str>,
    colon: usize,
}

impl Permission {
    /// Parses `resource:action`.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        const WHAT: &str = "permission";
        let Some(colon) = s.find(':') else {
            return Err(ParseError::new(WHAT, "must be `resource:action`"));
        };
        let (resource, action) = (&s[..colon], &s[colon + 1..]);
        check_name(resource).map_err(|r| ParseError::new(WHAT, r))?;
        if action != "*" {
            check_name(action).map_err(|r| ParseError::new(WHAT, r))?;
        }
        Ok(Self {
            text: Arc::from(s),
            colon,
        })
    }

    /// The resource part.
    pub fn resource(&self) -> &str {
        &self.text[..self.colon]
    }

    /// The action part (`*` for a wildcard).
    pub fn action(&self) -> &str {
        &self.text[self.colon + 1..]
    }

    /// Whether this is a `resource:*` wildcard.
    pub fn is_wildcard(&self) -> bool {
        self.action() == "*"
    }

    /// Whether holding `self` grants `wanted`.
    pub fn grants(&self, wanted: &Permission) -> bool {
        self.resource() == wanted.resource()
            && (self.is_wildcard() || self.action() == wanted.action())
    }

    /// The full `resource:action` text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A set of granted permissions. Cheap to clone: clones share the permissions (a request's
/// context is cloned into the request and into the decisions).
#[derive(Clone, PartialEq, Eq)]
pub struct PermissionSet(Arc<[Permission]>);

impl Default for PermissionSet {
    fn default() -> Self {
        Self(Arc::from([]))
    }
}

impl PermissionSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether any granted permission grants `wanted`.
    pub fn allows(&self, wanted: &Permission) -> bool {
        self.0.iter().any(|p| p.grants(wanted))
    }

    /// Adds a permission (no duplicates are kept).
    pub fn insert(&mut self, permission: Permission) {
        if !self.0.contains(&permission) {
            let mut all = self.0.to_vec();
            all.push(permission);
            self.0 = Arc::from(all);
        }
    }

    /// The granted permissions, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = &Permission> {
        self.0.iter()
    }

    /// How many permissions are granted.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing is granted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        let mut all: Vec<Permission> = Vec::new();
        for p in iter {
            if !all.contains(&p) {
                all.push(p);
            }
        }
        Self(Arc::from(all))
    }
}

impl serde::Serialize for PermissionSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

impl<'de> serde::Deserialize<'de> for PermissionSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<Permission>::deserialize(d)?.into_iter().collect())
    }
}

impl fmt::Debug for PermissionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.iter()).finish()
    }
}

macro_rules! text_impls {
    ($name:ident, $what:literal) => {
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.as_str())
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                Self::parse(s)
            }
        }
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}
text_impls!(Role, "role");
text_impls!(Permission, "permission");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_need_a_colon_and_sane_parts() {
        for bad in [
            "records",
            "",
            ":read",
            "records:",
            "Records:read",
            "a:b:c",
            "re cords:read",
            "*:read",
            "records:**",
        ] {
            assert!(Permission::parse(bad).is_err(), "{bad:?}");
        }
        let p = Permission::parse("records:read").unwrap();
        assert_eq!((p.resource(), p.action()), ("records", "read"));
    }

    #[test]
    fn wildcard_grants_only_its_resource() {
        let w = Permission::parse("records:*").unwrap();
        assert!(w.grants(&Permission::parse("records:delete").unwrap()));
        assert!(!w.grants(&Permission::parse("audit:read").unwrap()));
        let exact = Permission::parse("records:read").unwrap();
        assert!(!exact.grants(&Permission::parse("records:write").unwrap()));
        // A granted wildcard does not turn a wanted wildcard into something smaller.
        assert!(!exact.grants(&w));
    }

    #[test]
    fn roles_round_trip() {
        for name in ["super_admin", "tenant_admin", "user", "auditor"] {
            assert_eq!(Role::parse(name).unwrap().as_str(), name);
        }
        assert!(Role::parse("Auditor").is_err());
        assert!(Role::parse("").is_err());
        assert_eq!(
            serde_json::to_string(&Role::TenantAdmin).unwrap(),
            "\"tenant_admin\""
        );
    }
}
