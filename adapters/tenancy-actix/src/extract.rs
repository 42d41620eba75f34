//! Extractors: [`Tenant`] (and `Option<Tenant>`), [`RequirePermission`].
//!
//! They read the request's [`RequestMeta`], the one value the middleware puts in the request
//! extensions (with the claims and the tenant context in it). When the middleware is missing,
//! [`Tenant`] and [`RequirePermission`] answer a 500 whose problem body names it.
//! `Option<Tenant>` is `None` on public routes; note that actix-web's blanket `Option<T>`
//! extractor also turns a missing middleware into `None`.
//!
//! ```
//! use actix_web::{web, App, HttpResponse};
//! use tenancy_actix::{permission, RequirePermission, Tenant};
//!
//! permission!(pub RecordsRead = "records:read");
//!
//! async fn me(Tenant(ctx): Tenant) -> HttpResponse {
//!     HttpResponse::Ok().body(ctx.tenant.to_string())
//! }
//!
//! async fn records(RequirePermission(ctx, ..): RequirePermission<RecordsRead>) -> HttpResponse {
//!     HttpResponse::Ok().body(format!("records of {}", ctx.tenant))
//! }
//!
//! let app = App::new()
//!     .route("/v1/me", web::get().to(me))
//!     .route("/v1/records", web::get().to(records));
//! // .wrap(TenancyMiddleware::new(tenancy)) supplies what they extract.
//! # let _ = app;
//! ```

use std::future::{Ready, ready};
use std::marker::PhantomData;
use std::ops::Deref;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use tenancy_core::TenantContext;
use tenancy_http::{PermissionName, PermissionRefusal, RequestMeta, require_permission};

use crate::Error;

/// The request's verified tenant context. Needs [`ResolveTenant`](crate::ResolveTenant)
/// (part of [`TenancyMiddleware`](crate::TenancyMiddleware)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub TenantContext);

impl Deref for Tenant {
    type Target = TenantContext;

    fn deref(&self) -> &TenantContext {
        &self.0
    }
}

impl FromRequest for Tenant {
    type Error = Error;
    type Future = Ready<Result<Self, Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<RequestMeta>()
                .and_then(RequestMeta::context)
                .cloned()
                .map(Tenant)
                .ok_or(Error::MissingLayer {
                    extractor: "Tenant",
                    layer: "ResolveTenant",
                }),
        )
    }
}

/// The tenant context of a caller holding permission `P`; any other caller gets a 403
/// problem naming the permission.
#[derive(Debug, Clone)]
pub struct RequirePermission<P: PermissionName>(pub TenantContext, pub PhantomData<P>);

impl<P: PermissionName> Deref for RequirePermission<P> {
    type Target = TenantContext;

    fn deref(&self) -> &TenantContext {
        &self.0
    }
}

impl<P: PermissionName> FromRequest for RequirePermission<P> {
    type Error = Error;
    type Future = Ready<Result<Self, Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(require::<P>(req))
    }
}

fn require<P: PermissionName>(req: &HttpRequest) -> Result<RequirePermission<P>, Error> {
    match require_permission::<P>(req.extensions().get::<RequestMeta>()) {
        Ok(ctx) => Ok(RequirePermission(ctx.clone(), PhantomData)),
        Err(PermissionRefusal::NoContext) => Err(Error::MissingLayer {
            extractor: "RequirePermission",
            layer: "ResolveTenant",
        }),
        Err(PermissionRefusal::Rejected(r)) => Err(Error::Rejected(r)),
    }
}
