//! [`TenantContext`]: the verified identity of one request.
//!
//! ```
//! use tenancy_core::{Claims, Permission, TenantContext, TenantId};
//!
//! let claims = Claims::from_json(br#"{"iss":"i","aud":"a","sub":"bob","exp":4102444800,
//!     "tenant_id":"acme","user_id":"bob","user_role":"user","permissions":["records:read"]}"#).unwrap();
//! let ctx = TenantContext::from_claims(&claims);
//! assert!(ctx.require(&Permission::parse("records:read")?).is_ok());
//! assert!(ctx.require(&Permission::parse("records:write")?).is_err());
//! assert!(ctx.ensure_tenant(&TenantId::parse("acme")?).is_ok());
//! assert!(ctx.ensure_tenant(&TenantId::parse("globex")?).is_err());
//! # Ok::<(), tenancy_core::ParseError>(())
//! ```

use serde::Serialize;

use crate::{
    Claims, Denial, Error, Permission, PermissionSet, RequestId, Role, SessionId, TenantId,
    TierName, UserId,
};

/// Who is calling, for which tenant, with which rights.
///
/// Built only from verified [`Claims`]; the tier and request id are filled in by the layers
/// that resolve them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantContext {
    /// The tenant the request acts for.
    pub tenant: TenantId,
    /// The user.
    pub user: UserId,
    /// The user's role.
    pub role: Role,
    /// The permissions granted by the token.
    pub permissions: PermissionSet,
    /// The session the token belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionId>,
    /// The tenant's tier, once resolved from the tenant directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<TierName>,
    /// The request id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}

impl TenantContext {
    /// The context carried by verified claims.
    pub fn from_claims(claims: &Claims) -> Self {
        Self {
            tenant: claims.tenant_id.clone(),
            user: claims.user_id.clone(),
            role: claims.user_role.clone(),
            permissions: claims.permissions.clone(),
            session: claims.sid,
            tier: None,
            request_id: None,
        }
    }

    /// `Ok` when the token grants `permission`, else [`Error::Denied`].
    pub fn require(&self, permission: &Permission) -> Result<(), Error> {
        if self.permissions.allows(permission) {
            Ok(())
        } else {
            Err(Error::Denied(Denial::MissingPermission(permission.clone())))
        }
    }

    /// `Ok` when `resource_tenant` is the caller's tenant, else [`Error::Denied`].
    ///
    /// Why strict even for super admins: cross-tenant work goes through explicit platform
    /// paths (a platform pool, admin routes), never through a tenant-scoped check that quietly
    /// lets one role through.
    pub fn ensure_tenant(&self, resource_tenant: &TenantId) -> Result<(), Error> {
        if &self.tenant == resource_tenant {
            Ok(())
        } else {
            Err(Error::Denied(Denial::WrongTenant))
        }
    }

    /// `Ok` when the caller holds `role` (or is a super admin), else [`Error::Denied`].
    pub fn require_role(&self, role: &Role) -> Result<(), Error> {
        if &self.role == role || self.role.is_super_admin() {
            Ok(())
        } else {
            Err(Error::Denied(Denial::RoleRequired(match role {
                Role::SuperAdmin => "super_admin",
                Role::TenantAdmin => "tenant_admin",
                Role::User => "user",
                _ => "custom",
            })))
        }
    }

    /// Whether the caller is a platform super admin.
    pub fn is_super_admin(&self) -> bool {
        self.role.is_super_admin()
    }
}
