//! The error type of `tenancy-tower`.
//!
//! Layers never fail with it: their denials are responses. It is what the axum extractors
//! reject with, and what building a stack can return.
//!
//! ```
//! use tenancy_tower::Error;
//!
//! let err = Error::MissingLayer { extractor: "Tenant", layer: "ResolveTenant" };
//! assert_eq!(err.rejection().status(), 500);
//! assert!(err.to_string().contains("ResolveTenant"));
//! ```

use tenancy_http::Rejection;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an extractor refused, or why a stack could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The layer that supplies the extractor's data did not run for this request: the
    /// application is set up wrongly (answered with a 500 naming the layer).
    #[error("`{extractor}` needs the `{layer}` layer in front of this route")]
    MissingLayer {
        /// The extractor that could not find its data.
        extractor: &'static str,
        /// The layer to add.
        layer: &'static str,
    },
    /// The request is refused (for example a missing permission); answered as the
    /// rejection says.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] tenancy_http::Error),
}

impl Error {
    /// The HTTP answer for this error.
    pub fn rejection(&self) -> Rejection {
        match self {
            Self::MissingLayer { extractor, layer } => Rejection::missing_layer(extractor, layer),
            Self::Rejected(r) => r.clone(),
            Self::Config(e) => Rejection::misconfigured(e.to_string()),
        }
    }
}
