use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use crate::directory::to_microseconds;
use crate::{Result, TenantDirectory, TenantId, TenantSettings, Upsert};

/// Tenants in process memory; every change is visible to the next call.
///
/// ```
/// use tenancy_core::{memory::MemoryTenantDirectory, TenantDirectory, TenantId, TenantSettings, TierName, Upsert};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tenancy_core::Error> {
/// let dir = MemoryTenantDirectory::new();
/// let acme = TenantId::parse("acme")?;
/// let settings = TenantSettings::new(TierName::parse("standard")?);
/// assert_eq!(dir.put(&acme, settings.clone()).await?, Upsert::Created);
/// assert_eq!(dir.get(&acme).await?, Some(settings));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryTenantDirectory {
    tenants: Arc<RwLock<BTreeMap<TenantId, TenantSettings>>>,
}

impl MemoryTenantDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    fn lookup(&self, tenant: &TenantId) -> Option<TenantSettings> {
        let map = self
            .tenants
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(tenant).cloned()
    }
}

#[async_trait]
impl TenantDirectory for MemoryTenantDirectory {
    async fn get(&self, tenant: &TenantId) -> Result<Option<TenantSettings>> {
        Ok(self.lookup(tenant))
    }

    fn try_get(&self, tenant: &TenantId) -> Option<Result<Option<TenantSettings>>> {
        Some(Ok(self.lookup(tenant)))
    }

    async fn put(&self, tenant: &TenantId, settings: TenantSettings) -> Result<Upsert> {
        let mut map = self
            .tenants
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(
            match map.insert(tenant.clone(), to_microseconds(settings)) {
                Some(_) => Upsert::Updated,
                None => Upsert::Created,
            },
        )
    }

    async fn put_if(
        &self,
        tenant: &TenantId,
        expected: Option<&TenantSettings>,
        settings: TenantSettings,
    ) -> Result<Option<Upsert>> {
        let mut map = self
            .tenants
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.get(tenant) != expected {
            return Ok(None);
        }
        Ok(Some(
            match map.insert(tenant.clone(), to_microseconds(settings)) {
                Some(_) => Upsert::Updated,
                None => Upsert::Created,
            },
        ))
    }

    async fn remove(&self, tenant: &TenantId) -> Result<bool> {
        let mut map = self
            .tenants
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(map.remove(tenant).is_some())
    }

    async fn list(&self) -> Result<Vec<(TenantId, TenantSettings)>> {
        let map = self
            .tenants
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}
