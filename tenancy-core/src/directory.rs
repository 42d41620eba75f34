//! The [`TenantDirectory`]: which tenants exist, their status, tier, overrides and bypass.
//!
//! Changes are visible on the next call: a layer asks the directory on each request (a
//! backend may cache, but must not serve a stale status after a change it made).

use std::fmt;

use async_trait::async_trait;

use crate::{Result, TenantId, TenantSettings};

/// Whether [`TenantDirectory::put`] created the tenant or changed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// The tenant did not exist.
    Created,
    /// The tenant existed and was replaced.
    Updated,
}

/// Knows every tenant and its settings.
///
/// ```
/// use tenancy_core::memory::MemoryTenantDirectory;
/// use tenancy_core::{TenantDirectory, TenantId, TenantSettings, TenantStatus, TierName};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tenancy_core::Error> {
/// let dir = MemoryTenantDirectory::new();
/// let acme = TenantId::parse("acme")?;
/// dir.put(&acme, TenantSettings::new(TierName::parse("standard")?)).await?;
/// // Suspend: the next request for acme sees it.
/// let mut s = dir.get(&acme).await?.expect("known tenant");
/// s.status = TenantStatus::Suspended;
/// dir.put(&acme, s).await?;
/// assert!(dir.get(&acme).await?.expect("known tenant").is_suspended());
/// # Ok(()) }
/// ```
#[async_trait]
pub trait TenantDirectory: Send + Sync + fmt::Debug + 'static {
    /// The tenant's settings, or `None` for an unknown tenant.
    async fn get(&self, tenant: &TenantId) -> Result<Option<TenantSettings>>;

    /// [`TenantDirectory::get`]'s answer when it is at hand without waiting (a map in memory,
    /// a cache), else `None`, and the caller awaits `get`. The HTTP layers ask this first on
    /// every request: an answer here costs no future. By default `None`.
    ///
    /// An implementation returns `Some` only with exactly what `get` would return at that
    /// moment.
    ///
    /// ```
    /// use tenancy_core::memory::MemoryTenantDirectory;
    /// use tenancy_core::{TenantDirectory, TenantId, TenantSettings, TierName};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let directory = MemoryTenantDirectory::new();
    /// let acme = TenantId::parse("acme")?;
    /// directory.put(&acme, TenantSettings::new(TierName::parse("pro")?)).await?;
    /// let now = directory.try_get(&acme).expect("a map in memory answers at once")?;
    /// assert_eq!(now, directory.get(&acme).await?);
    /// # Ok(()) }
    /// ```
    fn try_get(&self, tenant: &TenantId) -> Option<Result<Option<TenantSettings>>> {
        let _ = tenant;
        None
    }

    /// Creates or replaces the tenant's settings.
    async fn put(&self, tenant: &TenantId, settings: TenantSettings) -> Result<Upsert>;

    /// Removes the tenant; `true` when it existed.
    async fn remove(&self, tenant: &TenantId) -> Result<bool>;

    /// Every tenant, ordered by id.
    async fn list(&self) -> Result<Vec<(TenantId, TenantSettings)>>;
}
