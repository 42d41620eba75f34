//! The [`TenantDirectory`]: which tenants exist, their status, tier, overrides and bypass.
//!
//! Changes are visible on the next call: a layer asks the directory on each request (a
//! backend may cache, but must not serve a stale status after a change it made).

use std::fmt;

use async_trait::async_trait;

use crate::{Error, Result, TenantId, TenantSettings};

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
/// use tenancy_core::{update_settings, Error, TenantDirectory, TenantId, TenantSettings, TenantStatus, TierName};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tenancy_core::Error> {
/// let dir = MemoryTenantDirectory::new();
/// let acme = TenantId::parse("acme")?;
/// dir.put(&acme, TenantSettings::new(TierName::parse("standard")?)).await?;
/// // Suspend, without undoing a change another caller makes meanwhile: the next request
/// // for acme sees it.
/// update_settings(&dir, &acme, |s| {
///     let mut s = s.ok_or(Error::NotFound)?;
///     s.status = TenantStatus::Suspended;
///     Ok::<_, Error>(s)
/// })
/// .await?;
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

    /// Creates or replaces the tenant's settings. Times are kept to the microsecond, as
    /// PostgreSQL keeps them: a finer `bypass_until` is read back truncated, in every backend.
    ///
    /// A read, a change and a `put` lose a change that another caller made in between (a
    /// suspension undone by a concurrent change of limits): to change one part of the
    /// settings, use [`update_settings`], which writes with [`TenantDirectory::put_if`].
    async fn put(&self, tenant: &TenantId, settings: TenantSettings) -> Result<Upsert>;

    /// Writes `settings` only while the tenant's settings are still `expected` (`None`: the
    /// tenant does not exist yet), checked and written in one atomic step. `Ok(None)` when
    /// they were something else (nothing is written), else what the write did.
    ///
    /// ```
    /// use tenancy_core::memory::MemoryTenantDirectory;
    /// use tenancy_core::{TenantDirectory, TenantId, TenantSettings, TierName, Upsert};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tenancy_core::Error> {
    /// let dir = MemoryTenantDirectory::new();
    /// let acme = TenantId::parse("acme")?;
    /// let standard = TenantSettings::new(TierName::parse("standard")?);
    /// let premium = TenantSettings::new(TierName::parse("premium")?);
    /// assert_eq!(dir.put_if(&acme, None, standard.clone()).await?, Some(Upsert::Created));
    /// // Someone else created it first: nothing is written.
    /// assert_eq!(dir.put_if(&acme, None, premium.clone()).await?, None);
    /// assert_eq!(dir.put_if(&acme, Some(&standard), premium).await?, Some(Upsert::Updated));
    /// # Ok(()) }
    /// ```
    async fn put_if(
        &self,
        tenant: &TenantId,
        expected: Option<&TenantSettings>,
        settings: TenantSettings,
    ) -> Result<Option<Upsert>>;

    /// Removes the tenant; `true` when it existed.
    async fn remove(&self, tenant: &TenantId) -> Result<bool>;

    /// Every tenant, ordered by id.
    async fn list(&self) -> Result<Vec<(TenantId, TenantSettings)>>;
}

/// How many read-change-write attempts [`update_settings`] makes in all (the first, and one
/// more each time another writer changed the settings between its read and its write)
/// before it gives up with [`Error::Conflict`].
pub const UPDATE_ATTEMPTS: usize = 8;

/// `settings` with its times truncated to the microsecond, as a directory keeps them.
pub(crate) fn to_microseconds(mut settings: TenantSettings) -> TenantSettings {
    settings.bypass_until = settings.bypass_until.map(|t| {
        t.replace_nanosecond(t.nanosecond() / 1000 * 1000)
            .unwrap_or(t)
    });
    settings
}

/// Changes one tenant's settings without losing a concurrent change.
///
/// Reads the settings (`None` for an unknown tenant), lets `change` compute the new ones, and
/// writes them with [`TenantDirectory::put_if`]; when another writer changed the settings in
/// between, reads them again and asks `change` again (up to [`UPDATE_ATTEMPTS`] attempts in all, then
/// [`Error::Conflict`]). An error from `change` is returned as it is, with nothing written.
/// Returns what the write did and the settings written.
///
/// ```
/// use tenancy_core::memory::MemoryTenantDirectory;
/// use tenancy_core::{update_settings, TenantDirectory, TenantId, TenantSettings, TenantStatus, TierName};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tenancy_core::Error> {
/// let dir = MemoryTenantDirectory::new();
/// let acme = TenantId::parse("acme")?;
/// dir.put(&acme, TenantSettings::new(TierName::parse("standard")?)).await?;
/// // Suspend, keeping whatever else the settings hold at the moment of the write.
/// let (_, now) = update_settings(&dir, &acme, |current| {
///     let mut s = current.ok_or(tenancy_core::Error::NotFound)?;
///     s.status = TenantStatus::Suspended;
///     Ok::<_, tenancy_core::Error>(s)
/// })
/// .await?;
/// assert!(now.is_suspended());
/// assert_eq!(dir.get(&acme).await?, Some(now));
/// # Ok(()) }
/// ```
pub async fn update_settings<D, E, F>(
    dir: &D,
    tenant: &TenantId,
    mut change: F,
) -> std::result::Result<(Upsert, TenantSettings), E>
where
    D: TenantDirectory + ?Sized,
    E: From<Error>,
    F: FnMut(Option<TenantSettings>) -> std::result::Result<TenantSettings, E>,
{
    for _ in 0..UPDATE_ATTEMPTS {
        let current = dir.get(tenant).await?;
        // As the directory keeps it, so that what is returned is what a `get` reads.
        let next = to_microseconds(change(current.clone())?);
        if let Some(done) = dir.put_if(tenant, current.as_ref(), next.clone()).await? {
            return Ok((done, next));
        }
    }
    Err(Error::Conflict(
        format!(
            "tenant {tenant}: its settings changed {UPDATE_ATTEMPTS} times while being updated"
        )
        .into(),
    )
    .into())
}
