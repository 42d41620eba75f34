//! axum extractors (feature `axum`): [`Tenant`], `Option<Tenant>`, [`RequirePermission`].
//!
//! They read the request's [`RequestMeta`], the one value the layers put in the request
//! extensions (with the claims and the tenant context in it). When a layer is missing the
//! rejection is a 500 whose problem body names the layer to add, so a misconfigured router
//! fails loudly on its first request instead of serving without a tenant.
//!
//! ```
//! use axum::{routing::get, Router};
//! use tenancy_tower::{permission, RequirePermission, Tenant};
//!
//! permission!(pub RecordsRead = "records:read");
//!
//! async fn me(Tenant(ctx): Tenant) -> String {
//!     ctx.tenant.to_string()
//! }
//!
//! async fn records(RequirePermission(ctx, ..): RequirePermission<RecordsRead>) -> String {
//!     format!("records of {}", ctx.tenant)
//! }
//!
//! async fn maybe(who: Option<Tenant>) -> &'static str {
//!     if who.is_some() { "signed in" } else { "anonymous" }
//! }
//!
//! let app: Router = Router::new()
//!     .route("/v1/me", get(me))
//!     .route("/v1/records", get(records))
//!     .route("/hello", get(maybe));
//! // .layer(TenancyLayer::new(tenancy)) supplies what they extract.
//! # let _ = app;
//! ```

use std::marker::PhantomData;
use std::ops::Deref;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use tenancy_core::TenantContext;
use tenancy_http::{AuditNote, PermissionName, PermissionRefusal, RequestMeta, require_permission};

use crate::Error;
use crate::head::render;

/// The request's verified tenant context. Needs [`ResolveTenant`](crate::ResolveTenant)
/// (part of [`TenancyLayer`](crate::TenancyLayer)).
///
/// As `Option<Tenant>`, it is `None` on public routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub TenantContext);

impl Deref for Tenant {
    type Target = TenantContext;

    fn deref(&self) -> &TenantContext {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        parts
            .extensions
            .get::<RequestMeta>()
            .and_then(RequestMeta::context)
            .cloned()
            .map(Tenant)
            .ok_or(Error::MissingLayer {
                extractor: "Tenant",
                layer: "ResolveTenant",
            })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Tenant {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Error> {
        let Some(meta) = parts.extensions.get::<RequestMeta>() else {
            return Err(Error::MissingLayer {
                extractor: "Option<Tenant>",
                layer: "SetRequestId",
            });
        };
        Ok(meta.context().cloned().map(Tenant))
    }
}

/// The tenant context of a caller holding permission `P`; any other caller gets a 403
/// problem naming the permission. The handler states its permission in its signature.
#[derive(Debug, Clone)]
pub struct RequirePermission<P: PermissionName>(pub TenantContext, pub PhantomData<P>);

impl<P: PermissionName> Deref for RequirePermission<P> {
    type Target = TenantContext;

    fn deref(&self) -> &TenantContext {
        &self.0
    }
}

impl<S: Send + Sync, P: PermissionName> FromRequestParts<S> for RequirePermission<P> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        match require_permission::<P>(parts.extensions.get::<RequestMeta>()) {
            Ok(ctx) => Ok(Self(ctx.clone(), PhantomData)),
            Err(PermissionRefusal::NoContext) => Err(Error::MissingLayer {
                extractor: "RequirePermission",
                layer: "ResolveTenant",
            }),
            Err(PermissionRefusal::Rejected(r)) => Err(Error::Rejected(r)),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let r = self.rejection();
        if matches!(self, Error::MissingLayer { .. }) {
            tracing::error!(error = %self, "tenancy extractor used without its layer");
        }
        let mut resp: Response = render(&r);
        resp.extensions_mut().insert(AuditNote {
            reason: Some(r.kind().label().into_owned()),
            ..AuditNote::default()
        });
        resp
    }
}
