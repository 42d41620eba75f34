//! The [`TokenVerifier`] trait.

use std::fmt;

use async_trait::async_trait;

use crate::{Claims, Result};

/// Turns a bearer token into verified [`Claims`].
///
/// A refusal is [`Error::Rejected`](crate::Error::Rejected) with the reason for operators; a
/// verifier that cannot decide (key provider down and no cached keys) returns
/// [`Error::Unavailable`](crate::Error::Unavailable).
#[async_trait]
pub trait TokenVerifier: Send + Sync + fmt::Debug + 'static {
    /// Verifies `token` (without the `Bearer ` prefix).
    async fn verify(&self, token: &str) -> Result<Claims>;
}
