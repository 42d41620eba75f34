//! [`Users`]: the accounts this server logs in, with Argon2id password hashes.
//!
//! Why Argon2id: it is memory-hard, so a stolen hash costs an attacker memory as well as
//! time per guess. Production hashes use the crate's recommended parameters (19 MiB, 2
//! passes); the `test` environment uses the smallest memory cost, since test builds are
//! unoptimised and log in hundreds of times. The parameters travel inside each hash, so
//! verification always uses the ones a hash was made with.
//!
//! A login for an unknown user still runs one verification against a fixed dummy hash, so
//! the answer takes as long as for a known user with a wrong password.
//!
//! ```
//! use tenancy_server::users::{Users, hash_password};
//! use tenancy_core::{Role, TenantId, UserId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let users = Users::new(true);
//! let acme = TenantId::parse("acme")?;
//! users.insert(&acme, &UserId::parse("bob")?, Role::parse("user")?, "s3cret").await?;
//! assert!(users.check(&acme, "bob", "s3cret").await?.is_some());
//! assert!(users.check(&acme, "bob", "wrong").await?.is_none());
//! assert!(users.check(&acme, "nobody", "s3cret").await?.is_none());
//! assert!(hash_password("x", true)?.starts_with("$argon2id$"));
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tenancy_core::{Permission, PermissionSet, Role, TenantId, UserId};

use crate::{Error, Result};

/// The demo password of every demo user.
pub const DEMO_PASSWORD: &str = "password";

/// One account.
#[derive(Clone)]
pub struct User {
    /// The user id.
    pub id: UserId,
    /// The role within its tenant.
    pub role: Role,
    hash: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

fn argon(cheap: bool) -> Result<Argon2<'static>> {
    let params = if cheap {
        Params::new(Params::MIN_M_COST, 1, 1, None)
    } else {
        Ok(Params::DEFAULT)
    }
    .map_err(|e| Error::Internal(e.to_string().into()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes `password` with Argon2id and a fresh random salt, in PHC string form.
///
/// # Errors
/// [`Error::Internal`] when the system random source fails.
pub fn hash_password(password: &str, cheap: bool) -> Result<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| Error::Internal(Box::new(e)))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Internal(e.to_string().into()))?;
    argon(cheap)?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(e.to_string().into()))
}

fn verify(hash: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// The permissions the server's own tokens carry for `role`.
///
/// `user`: `records:read`, `records:write`; `tenant_admin`: those and `audit:read`;
/// `super_admin`: those and `tenants:admin`. Other roles get none.
pub fn permissions_for(role: &Role) -> PermissionSet {
    let names: &[&str] = match role.as_str() {
        "user" => &["records:read", "records:write"],
        "tenant_admin" => &["records:read", "records:write", "audit:read"],
        "super_admin" => &[
            "records:read",
            "records:write",
            "audit:read",
            "tenants:admin",
        ],
        _ => &[],
    };
    names
        .iter()
        .filter_map(|n| Permission::parse(n).ok())
        .collect()
}

/// The accounts, kept in memory (seeded at start).
#[derive(Debug, Clone)]
pub struct Users {
    inner: Arc<RwLock<HashMap<(TenantId, String), User>>>,
    cheap: bool,
    dummy: Arc<str>,
    /// Password checks run, against accounts or the dummy hash.
    checks: Arc<std::sync::atomic::AtomicU64>,
}

impl Users {
    /// An empty set; `cheap` selects the fast test parameters for new hashes.
    pub fn new(cheap: bool) -> Self {
        let dummy = hash_password("not a password anyone has", cheap).unwrap_or_default();
        Self {
            inner: Arc::default(),
            cheap,
            dummy: dummy.into(),
            checks: Arc::default(),
        }
    }

    /// Adds or replaces an account.
    ///
    /// # Errors
    /// [`Error::Internal`] when hashing fails.
    pub async fn insert(
        &self,
        tenant: &TenantId,
        user: &UserId,
        role: Role,
        password: &str,
    ) -> Result<()> {
        let cheap = self.cheap;
        let password = password.to_owned();
        let hash = tokio::task::spawn_blocking(move || hash_password(&password, cheap))
            .await
            .map_err(|e| Error::Internal(Box::new(e)))??;
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        map.insert(
            (tenant.clone(), user.as_str().to_owned()),
            User {
                id: user.clone(),
                role,
                hash,
            },
        );
        Ok(())
    }

    /// Seeds the demo accounts: `alice` (tenant_admin) and `bob` (user) in `acme` and
    /// `globex`, `root` (super_admin) in `platform`; password [`DEMO_PASSWORD`].
    ///
    /// # Errors
    /// [`Error::Internal`] when hashing fails.
    pub async fn seed_demo(&self) -> Result<()> {
        let parse = |t: &str, u: &str, r: &str| -> Result<(TenantId, UserId, Role)> {
            Ok((
                TenantId::parse(t).map_err(tenancy_core::Error::from)?,
                UserId::parse(u).map_err(tenancy_core::Error::from)?,
                Role::parse(r).map_err(tenancy_core::Error::from)?,
            ))
        };
        for (t, u, r) in [
            ("acme", "alice", "tenant_admin"),
            ("acme", "bob", "user"),
            ("globex", "alice", "tenant_admin"),
            ("globex", "bob", "user"),
            ("platform", "root", "super_admin"),
        ] {
            let (t, u, r) = parse(t, u, r)?;
            self.insert(&t, &u, r, DEMO_PASSWORD).await?;
        }
        Ok(())
    }

    /// The account when `password` is right, else `None`. Takes as long for an unknown user.
    ///
    /// # Errors
    /// [`Error::Internal`] when the hashing task fails.
    pub async fn check(
        &self,
        tenant: &TenantId,
        username: &str,
        password: &str,
    ) -> Result<Option<User>> {
        let found = self
            .inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(tenant.clone(), username.to_owned()))
            .cloned();
        let hash = found
            .as_ref()
            .map_or_else(|| self.dummy.to_string(), |u| u.hash.clone());
        let ok = self.verify(hash, password.to_owned()).await?;
        Ok(found.filter(|_| ok))
    }

    /// Checks `password` against `hash` on the blocking pool, counted.
    async fn verify(&self, hash: String, password: String) -> Result<bool> {
        self.checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || verify(&hash, &password))
            .await
            .map_err(|e| Error::Internal(Box::new(e)))
    }

    /// How many password checks ran (a refused unknown tenant counts one, as a wrong password
    /// does).
    pub fn password_checks(&self) -> u64 {
        self.checks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The work of a failed [`Users::check`] without an account to check: a password check
    /// against the dummy hash, so that refusing an unknown tenant takes as long as refusing
    /// a wrong password.
    ///
    /// # Errors
    /// When the blocking task cannot run.
    pub async fn check_nobody(&self) -> Result<()> {
        self.verify(self.dummy.to_string(), String::new())
            .await
            .map(drop)
    }

    /// How many accounts exist.
    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether there is no account.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
