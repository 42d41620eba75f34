//! The [`TokenVerifier`] trait.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{Claims, Result};

/// Turns a bearer token into verified [`Claims`].
///
/// `tenancy-auth`'s `JwtVerifier` is the implementation for JWTs; any other scheme (opaque
/// tokens looked up in a database, mTLS identities) implements this trait:
///
/// ```
/// use async_trait::async_trait;
/// use tenancy_core::{Claims, Error, TokenRejection, TokenVerifier};
///
/// /// Opaque tokens issued by an introspection service, here a fixed table.
/// #[derive(Debug)]
/// struct Table(Vec<(String, Claims)>);
///
/// #[async_trait]
/// impl TokenVerifier for Table {
///     async fn verify(&self, token: &str) -> Result<Claims, Error> {
///         self.0
///             .iter()
///             .find(|(t, _)| t == token)
///             .map(|(_, c)| c.clone())
///             .ok_or(Error::Rejected(TokenRejection::UnknownKey))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let v = Table(vec![]);
/// assert!(matches!(v.verify("nope").await, Err(Error::Rejected(_))));
/// # }
/// ```
///
/// A refusal is [`Error::Rejected`](crate::Error::Rejected) with the reason for operators; a
/// verifier that cannot decide (key provider down and no cached keys) returns
/// [`Error::Unavailable`](crate::Error::Unavailable).
#[async_trait]
pub trait TokenVerifier: Send + Sync + fmt::Debug + 'static {
    /// Verifies `token` (without the `Bearer ` prefix).
    async fn verify(&self, token: &str) -> Result<Claims>;

    /// As [`TokenVerifier::verify`], with the claims shared: a verifier that keeps the claims
    /// it verified (a cache) hands out its own copy instead of cloning it, which is what the
    /// HTTP layers call on every request. By default, [`TokenVerifier::verify`]'s claims in
    /// a new [`Arc`].
    ///
    /// ```
    /// # use async_trait::async_trait;
    /// # use tenancy_core::{Claims, Error, TokenRejection, TokenVerifier};
    /// # #[derive(Debug)] struct Refuse;
    /// # #[async_trait] impl TokenVerifier for Refuse {
    /// #     async fn verify(&self, _: &str) -> Result<Claims, Error> {
    /// #         Err(Error::Rejected(TokenRejection::BadSignature))
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let refused = Refuse.verify_shared("token").await;
    /// assert!(matches!(refused, Err(Error::Rejected(TokenRejection::BadSignature))));
    /// # }
    /// ```
    async fn verify_shared(&self, token: &str) -> Result<Arc<Claims>> {
        self.verify(token).await.map(Arc::new)
    }

    /// [`TokenVerifier::verify_shared`]'s answer when it is at hand without waiting (a
    /// verifier's cache), else `None`, and the caller awaits `verify_shared`. The HTTP layers
    /// ask this first on every request: an answer here costs no future. By default `None`.
    ///
    /// An implementation returns `Some` only with exactly what `verify_shared` would return
    /// at that moment, and counts nothing it would count again when `None` is followed by
    /// `verify_shared`.
    ///
    /// ```
    /// # use async_trait::async_trait;
    /// # use tenancy_core::{Claims, Error, TokenRejection, TokenVerifier};
    /// # #[derive(Debug)] struct Refuse;
    /// # #[async_trait] impl TokenVerifier for Refuse {
    /// #     async fn verify(&self, _: &str) -> Result<Claims, Error> {
    /// #         Err(Error::Rejected(TokenRejection::BadSignature))
    /// #     }
    /// # }
    /// assert!(Refuse.try_verify("token").is_none());
    /// ```
    fn try_verify(&self, token: &str) -> Option<Result<Arc<Claims>>> {
        let _ = token;
        None
    }
}
