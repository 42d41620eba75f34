//! Permissions known at compile time, and the check the `RequirePermission` extractors of
//! both adapters make with them ([`require_permission`]).
//!
//! ```
//! tenancy_http::permission!(pub RecordsWrite = "records:write");
//! use tenancy_http::PermissionName;
//! assert_eq!(RecordsWrite::PERMISSION, "records:write");
//! ```

use tenancy_core::{Denial, Permission, TenantContext};

use crate::{Rejection, RequestMeta};

/// A permission known at compile time; declare one with [`permission!`](macro@crate::permission).
/// `tenancy_tower::RequirePermission<P>` and `tenancy_actix::RequirePermission<P>` take it, so a
/// handler states its permission in its signature.
pub trait PermissionName: Send + Sync + 'static {
    /// The permission, `resource:action`.
    const PERMISSION: &'static str;
}

/// Declares a type naming a permission, for the adapters' `RequirePermission` extractors.
///
/// ```
/// tenancy_http::permission!(pub AuditRead = "audit:read");
/// use tenancy_http::PermissionName;
/// assert_eq!(AuditRead::PERMISSION, "audit:read");
/// ```
#[macro_export]
macro_rules! permission {
    ($vis:vis $name:ident = $perm:literal) => {
        #[doc = concat!("The permission `", $perm, "`.")]
        #[derive(Debug, Clone, Copy)]
        $vis struct $name;

        impl $crate::PermissionName for $name {
            const PERMISSION: &'static str = $perm;
        }
    };
}

/// Why [`require_permission`] refused.
#[derive(Debug)]
pub enum PermissionRefusal {
    /// The request has no tenant context: the layer that resolves it did not run (an
    /// adapter answers that its `ResolveTenant` stage is missing).
    NoContext,
    /// The caller lacks the permission (403, naming it), or `P` names no valid permission
    /// (500).
    Rejected(Rejection),
}

/// The check of the adapters' `RequirePermission<P>` extractors: the request's tenant
/// context when it grants `P`.
///
/// ```
/// tenancy_http::permission!(RecordsRead = "records:read");
/// use tenancy_http::{PermissionRefusal, require_permission};
/// assert!(matches!(
///     require_permission::<RecordsRead>(None),
///     Err(PermissionRefusal::NoContext)
/// ));
/// ```
pub fn require_permission<P: PermissionName>(
    meta: Option<&RequestMeta>,
) -> Result<&TenantContext, PermissionRefusal> {
    let meta = meta.ok_or(PermissionRefusal::NoContext)?;
    let ctx = meta.context().ok_or(PermissionRefusal::NoContext)?;
    let permission = Permission::parse(P::PERMISSION).map_err(|e| {
        let what = format!("`RequirePermission` names an invalid permission: {e}");
        tracing::error!(parent: meta.span(), what = %what, "server misconfigured");
        PermissionRefusal::Rejected(
            Rejection::misconfiguration(what).with_request_id(meta.request_id()),
        )
    })?;
    if ctx.permissions.allows(&permission) {
        return Ok(ctx);
    }
    Err(PermissionRefusal::Rejected(
        Rejection::denied(Denial::MissingPermission(permission)).with_request_id(meta.request_id()),
    ))
}
