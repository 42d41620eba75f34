//! Permissions known at compile time, for the `RequirePermission` extractors of both adapters.
//!
//! ```
//! tenancy_http::permission!(pub RecordsWrite = "records:write");
//! use tenancy_http::PermissionName;
//! assert_eq!(RecordsWrite::PERMISSION, "records:write");
//! ```

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
