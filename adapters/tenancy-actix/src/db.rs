//! The `TenantTx` extractor (feature `db`): a PostgreSQL transaction bound to the request's
//! tenant, under row-level security.
//!
//! It begins a [`tenancy_db::TenantTx`] for the tenant of the verified context on the
//! [`TenantPool`] in the app data (`App::app_data(pool)` or `web::Data<TenantPool>`). The
//! handler commits it; dropped uncommitted, it rolls back. The tenant comes only from the
//! verified token.
//!
//! ```no_run
//! use actix_web::{web, App, HttpResponse};
//! use tenancy_actix::TenantTx;
//! use tenancy_db::TenantPool;
//!
//! async fn count(mut tx: TenantTx) -> HttpResponse {
//!     match sqlx::query_scalar::<_, i64>("SELECT count(*) FROM records").fetch_one(&mut **tx).await {
//!         Ok(n) => HttpResponse::Ok().body(n.to_string()),
//!         Err(_) => HttpResponse::ServiceUnavailable().finish(),
//!     }
//! }
//!
//! # fn app(pool: TenantPool) {
//! let app = App::new().app_data(pool).route("/v1/records/count", web::get().to(count));
//! // .wrap(TenancyMiddleware::new(tenancy)) resolves the tenant first.
//! # let _ = app;
//! # }
//! ```

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use tenancy_db::TenantPool;
use tenancy_http::{Rejection, RequestMeta};

use crate::Error;

/// A transaction bound to the request's tenant; derefs to [`tenancy_db::TenantTx`].
#[derive(Debug)]
pub struct TenantTx(pub tenancy_db::TenantTx);

impl TenantTx {
    /// The transaction itself.
    pub fn into_inner(self) -> tenancy_db::TenantTx {
        self.0
    }

    /// Commits.
    pub async fn commit(self) -> tenancy_db::Result<()> {
        self.0.commit().await
    }
}

impl Deref for TenantTx {
    type Target = tenancy_db::TenantTx;

    fn deref(&self) -> &tenancy_db::TenantTx {
        &self.0
    }
}

impl DerefMut for TenantTx {
    fn deref_mut(&mut self) -> &mut tenancy_db::TenantTx {
        &mut self.0
    }
}

impl FromRequest for TenantTx {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let (tenant, request_id) = match req.extensions().get::<RequestMeta>() {
            Some(m) => (
                m.context().map(|c| c.tenant.clone()),
                Some(m.request_id().clone()),
            ),
            None => (None, None),
        };
        let pool = req.app_data::<TenantPool>().cloned().or_else(|| {
            req.app_data::<web::Data<TenantPool>>()
                .map(|d| TenantPool::clone(d))
        });
        Box::pin(async move {
            let tenant = tenant.ok_or(Error::MissingLayer {
                extractor: "TenantTx",
                layer: "ResolveTenant",
            })?;
            let pool = pool.ok_or(Error::MissingLayer {
                extractor: "TenantTx",
                layer: "app_data(TenantPool)",
            })?;
            match pool.begin(&tenant).await {
                Ok(tx) => Ok(Self(tx)),
                Err(e) => {
                    tracing::warn!(error = %e, tenant = %tenant, "cannot begin a tenant transaction");
                    let mut r = Rejection::unavailable();
                    if let Some(id) = &request_id {
                        r = r.with_request_id(id);
                    }
                    Err(Error::Rejected(r))
                }
            }
        })
    }
}
