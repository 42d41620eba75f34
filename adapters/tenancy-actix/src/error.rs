//! The error type of `tenancy-actix`: what the extractors reject with.
//!
//! ```
//! use actix_web::ResponseError;
//! use tenancy_actix::Error;
//!
//! let err = Error::MissingLayer { extractor: "Tenant", layer: "ResolveTenant" };
//! assert_eq!(err.status_code().as_u16(), 500);
//! assert!(err.to_string().contains("ResolveTenant"));
//! ```

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use tenancy_http::{AuditNote, Rejection};

use crate::head::render;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an extractor refused, or why a middleware could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The middleware that supplies the extractor's data did not run for this request: the
    /// application is set up wrongly (answered with a 500 naming the middleware).
    #[error("`{extractor}` needs the `{layer}` middleware in front of this route")]
    MissingLayer {
        /// The extractor that could not find its data.
        extractor: &'static str,
        /// The middleware to add.
        layer: &'static str,
    },
    /// The request is refused (for example a missing permission).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] tenancy_http::Error),
}

impl Error {
    /// The HTTP answer for this error (a misconfiguration is logged at error level as it is
    /// built).
    pub fn rejection(&self) -> Rejection {
        match self {
            Self::MissingLayer { extractor, layer } => Rejection::missing_layer(extractor, layer),
            Self::Rejected(r) => r.clone(),
            Self::Config(e) => Rejection::misconfigured(e.to_string()),
        }
    }
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        // Without building the rejection: a misconfiguration's constructor logs it, once, in
        // `error_response`.
        match self {
            Self::Rejected(r) => {
                StatusCode::from_u16(r.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            Self::MissingLayer { .. } | Self::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        // A missing layer or a refused configuration is logged at error level by the
        // rejection's constructor.
        let r = self.rejection();
        let mut resp = render(&r);
        resp.extensions_mut().insert(AuditNote {
            reason: Some(r.kind().label().into_owned()),
            ..AuditNote::default()
        });
        resp
    }
}
