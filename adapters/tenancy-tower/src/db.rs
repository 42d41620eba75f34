//! The `TenantTx` extractor (feature `db`): a PostgreSQL transaction bound to the request's
//! tenant, under row-level security.
//!
//! It begins a [`tenancy_db::TenantTx`] for the tenant of the verified context on the
//! [`TenantPool`] found in the request extensions (add it with `axum::Extension(pool)`). The
//! handler commits it; dropped uncommitted, it rolls back. The tenant comes only from the
//! verified token, never from the path or the body.
//!
//! ```no_run
//! use axum::{routing::post, Extension, Router};
//! use tenancy_db::TenantPool;
//! use tenancy_tower::TenantTx;
//!
//! async fn create(mut tx: TenantTx) -> Result<String, tenancy_tower::Error> {
//!     let id: i64 = sqlx::query_scalar("INSERT INTO records (title, body) VALUES ('t', 'b') RETURNING id")
//!         .fetch_one(&mut **tx)
//!         .await
//!         .map_err(|_| tenancy_tower::Error::Rejected(tenancy_http::Rejection::unavailable()))?;
//!     tx.commit().await.map_err(|_| tenancy_tower::Error::Rejected(tenancy_http::Rejection::unavailable()))?;
//!     Ok(id.to_string())
//! }
//!
//! # fn app(pool: TenantPool) -> Router {
//! Router::new().route("/v1/records", post(create)).layer(Extension(pool))
//! // .layer(TenancyLayer::new(tenancy)) resolves the tenant first.
//! # }
//! ```

use std::ops::{Deref, DerefMut};

use axum::extract::FromRequestParts;
use http::request::Parts;
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

impl<S: Send + Sync> FromRequestParts<S> for TenantTx {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        let tenant = parts
            .extensions
            .get::<RequestMeta>()
            .and_then(RequestMeta::context)
            .map(|c| c.tenant.clone())
            .ok_or(Error::MissingLayer {
                extractor: "TenantTx",
                layer: "ResolveTenant",
            })?;
        let pool = parts
            .extensions
            .get::<TenantPool>()
            .cloned()
            .ok_or(Error::MissingLayer {
                extractor: "TenantTx",
                layer: "Extension<TenantPool>",
            })?;
        match pool.begin(&tenant).await {
            Ok(tx) => Ok(Self(tx)),
            Err(e) => {
                tracing::warn!(error = %e, tenant = %tenant, "cannot begin a tenant transaction");
                let mut r = Rejection::unavailable();
                if let Some(meta) = parts.extensions.get::<RequestMeta>() {
                    r = r.with_request_id(meta.request_id());
                }
                Err(Error::Rejected(r))
            }
        }
    }
}
