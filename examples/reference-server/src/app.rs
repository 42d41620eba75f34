//! [`App`]: the assembled server state — every backend chosen from the [`Config`], the
//! shared [`Tenancy`] decisions, the token issuer, users, records and the audit trail.
//!
//! An `App` is framework-free and cheap to clone. The axum routes in
//! [`http`](crate::http) are one way to serve it; another framework can serve the same
//! `App` by calling [`Tenancy`] for the request steps and the operations in
//! [`ops`](crate::ops) and [`records`](crate::records) for the handlers.
//!
//! ```no_run
//! use tenancy_server::{App, Config};
//!
//! # #[tokio::main] async fn main() -> Result<(), tenancy_server::Error> {
//! let app = App::build(Config::from_env()?).await?;
//! println!("audit in {}", app.audit_location());
//! app.shutdown().await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::Connection as _;
use sqlx::postgres::PgConnectOptions;
use tenancy_audit::AuditDispatcher;
use tenancy_audit::store::{AuditStore, FileAuditStore, PgAuditStore};
use tenancy_auth::{
    Algorithm, Denylist, JwtVerifier, MemoryDenylist, SigningKey, TokenIssuer, VerifyKey,
};
use tenancy_cache::keys::KeySpace;
use tenancy_cache::{RedisConfig, RedisDenylist, RedisPool, RedisRateLimiter, RedisSessionStore};
use tenancy_core::memory::{MemoryRateLimiter, MemorySessionStore, MemoryTenantDirectory};
use tenancy_core::{
    AuditSink, Health, HealthCheck, HealthStatus, QuotaAdmin, RateLimiter, SessionStore,
    TenantDirectory, TenantId, TenantSettings, TierCatalog, TierName,
};
use tenancy_db::schema::{self, RoleName};
use tenancy_db::{
    DbConfig, Environment, PgDenylist, PgSessionStore, PgTenantDirectory, PlatformPool, TenantPool,
};
use tenancy_http::{RouteRule, Tenancy};

use crate::config::{Config, Env, KeyConfig};
use crate::records::{RECORDS_TABLE_SQL, RecordStore};
use crate::users::Users;
use crate::{Error, Result};

/// Largest request body, in bytes.
///
/// Why 64 KiB: every body of this API is a small JSON document; a bound this low keeps a
/// flood of large bodies from costing memory and parse time.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest a request body may take to arrive, from when the server starts reading it; a
/// body not read to its end by then is answered `408 Request Timeout`.
///
/// Why 10 s: a body of this API is at most [`MAX_BODY_BYTES`], which arrives in well under
/// a second on any working connection; without a bound, a client that declares a length and
/// then stalls holds its request, its worker's memory and a graceful shutdown for ever.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

fn startup(what: &'static str) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> Error {
    move |source| Error::Startup { what, source }
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(
    e: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

/// Where the audit trail is kept.
#[derive(Debug, Clone)]
pub enum AuditBackend {
    /// The JSONL file at this path.
    File(std::path::PathBuf),
    /// The PostgreSQL store.
    Postgres(PgAuditStore),
}

/// The PostgreSQL side of an app.
#[derive(Debug, Clone)]
pub struct Database {
    /// Tenant work (records, sessions) as the runtime role.
    pub tenants: TenantPool,
    /// The tenant directory, as the owner or platform role.
    pub platform: PlatformPool,
    /// The role tenant work runs as.
    pub runtime_role: String,
}

struct Inner {
    config: Config,
    tenancy: Tenancy,
    issuer: Option<TokenIssuer>,
    verifier: Arc<JwtVerifier>,
    directory: Arc<dyn TenantDirectory>,
    limiter: Arc<dyn RateLimiter>,
    quotas: Arc<dyn QuotaAdmin>,
    sessions: Arc<dyn SessionStore>,
    dispatcher: AuditDispatcher,
    audit_store: Arc<dyn AuditStore>,
    audit_backend: AuditBackend,
    records: RecordStore,
    users: Users,
    tiers: TierCatalog,
    database: Option<Database>,
    redis: Option<RedisPool>,
    stores: Stores,
    checks: Vec<Arc<dyn HealthCheck>>,
    health: RwLock<BTreeMap<String, Health>>,
    health_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

const POSTGRES: &str = "PostgreSQL";
const REDIS: &str = "Redis";
const MEMORY: &str = "memory";

/// Where the server keeps each kind of state: `"PostgreSQL"`, `"Redis"` or `"memory"`, as
/// chosen from the configured URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stores {
    /// The records.
    pub records: &'static str,
    /// Sessions: Redis, else PostgreSQL.
    pub sessions: &'static str,
    /// The denylist of revoked tokens: PostgreSQL, else Redis.
    pub revoked_tokens: &'static str,
    /// Rate limits.
    pub limits: &'static str,
}

/// The assembled server; cheap to clone.
#[derive(Clone)]
pub struct App(Arc<Inner>);

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("env", &self.0.config.env)
            .field("database", &self.0.database.is_some())
            .field("redis", &self.0.redis.is_some())
            .field("audit", &self.0.audit_backend)
            .finish_non_exhaustive()
    }
}

/// The process-wide Prometheus recorder (installed once; later calls share it).
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        match builder.install_recorder() {
            Ok(h) => h,
            // Another recorder is installed (an embedding application's): render an empty
            // registry of our own rather than fail.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

/// Reads a PEM key file and guesses the algorithm from the key type.
fn verify_key_from_pem(pem: &[u8]) -> Option<VerifyKey> {
    VerifyKey::ed_pem(pem)
        .ok()
        .or_else(|| VerifyKey::ec_pem(pem, Algorithm::ES256).ok())
        .or_else(|| VerifyKey::rsa_pem(pem, Algorithm::RS256).ok())
}

fn signing_key_from_pem(pem: &[u8]) -> Option<SigningKey> {
    SigningKey::ed_pem(pem)
        .ok()
        .or_else(|| SigningKey::ec_pem(pem, Algorithm::ES256).ok())
        .or_else(|| SigningKey::rsa_pem(pem, Algorithm::RS256).ok())
}

fn read_file(path: &std::path::Path, setting: &'static str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Config {
        setting,
        reason: format!("cannot read {}: {e}", path.display()),
    })
}

/// The signing key the configuration names (`None` when this server only verifies).
///
/// # Errors
/// [`Error::Config`] for an unreadable or unusable key file.
pub fn signing_key(config: &Config) -> Result<Option<SigningKey>> {
    let private = match &config.key {
        KeyConfig::Secret(s) => {
            return SigningKey::hmac(s.as_bytes(), Algorithm::HS256)
                .map(Some)
                .map_err(|e| Error::Config {
                    setting: "TENANCY_JWT_SECRET",
                    reason: e.to_string(),
                });
        }
        KeyConfig::PublicKey { private, .. } | KeyConfig::Jwks { private, .. } => private,
    };
    let Some(path) = private else { return Ok(None) };
    let pem = read_file(path, "TENANCY_JWT_PRIVATE_KEY_FILE")?;
    signing_key_from_pem(&pem).map(Some).ok_or(Error::Config {
        setting: "TENANCY_JWT_PRIVATE_KEY_FILE",
        reason: "not a PEM Ed25519, EC P-256 or RSA private key".into(),
    })
}

/// The token verifier: the configured key, the session store (a token bound to a session is
/// refused once the session ends), and the denylist of revoked `jti`s (a token without a
/// session is refused once logged out). Both are shared by every instance (sessions in
/// Redis, else PostgreSQL; the denylist in PostgreSQL, else Redis), so that a logout on one
/// instance holds on all of them; only without either are they in process memory. A logout
/// ends a session-bound token's session, so the denylist is asked only about tokens without
/// a session: the usual token costs one lookup per request (its session), not two.
fn verifier(
    config: &Config,
    sessions: Arc<dyn SessionStore>,
    denylist: Arc<dyn Denylist>,
) -> Result<JwtVerifier> {
    let b = JwtVerifier::builder()
        .audience(config.audience.clone())
        .sessions(sessions)
        .denylist(denylist)
        .denylist_only_without_session();
    let b = match &config.key {
        KeyConfig::Secret(s) => {
            let k = VerifyKey::hmac(s.as_bytes(), Algorithm::HS256).map_err(|e| Error::Config {
                setting: "TENANCY_JWT_SECRET",
                reason: e.to_string(),
            })?;
            b.issuer(config.issuer.clone(), k)
                .algorithms([Algorithm::HS256])
        }
        KeyConfig::PublicKey { public, .. } => {
            let pem = read_file(public, "TENANCY_JWT_PUBLIC_KEY_FILE")?;
            let k = verify_key_from_pem(&pem).ok_or(Error::Config {
                setting: "TENANCY_JWT_PUBLIC_KEY_FILE",
                reason: "not a PEM Ed25519, EC P-256 or RSA public key".into(),
            })?;
            let alg = k.algorithm();
            b.issuer(config.issuer.clone(), k).algorithms([alg])
        }
        KeyConfig::Jwks { url, .. } => {
            let mut set = tenancy_auth::JwksKeySet::builder(url.clone());
            // Prod refuses http:// at validation; elsewhere a local provider may be plain.
            if config.env != Env::Prod {
                set = set.allow_plain_http();
            }
            let set = set.build().map_err(|e| Error::Config {
                setting: "TENANCY_JWT_JWKS_URL",
                reason: e.to_string(),
            })?;
            b.issuer(config.issuer.clone(), set).algorithms([
                Algorithm::RS256,
                Algorithm::ES256,
                Algorithm::EdDSA,
            ])
        }
    };
    b.build().map_err(|e| Error::Startup {
        what: "token verifier",
        source: Box::new(e),
    })
}

/// Refuses a private key that does not match the public key: the server would issue tokens
/// it then refuses. A token minted with the one must verify with the other.
async fn check_key_pair(issuer: &TokenIssuer, verifier: &JwtVerifier) -> Result<()> {
    use tenancy_core::TokenVerifier as _;
    let mismatch = |reason: String| Error::Config {
        setting: "TENANCY_JWT_PRIVATE_KEY_FILE",
        reason,
    };
    let probe = (|| {
        Some((
            TenantId::parse("platform").ok()?,
            tenancy_core::UserId::parse("key-check").ok()?,
            tenancy_core::Role::parse("user").ok()?,
        ))
    })()
    .ok_or_else(|| mismatch("cannot build the key check".into()))?;
    let token = issuer
        .access_token(&probe.0, &probe.1, &probe.2, &Default::default(), None)
        .map_err(|e| mismatch(format!("cannot sign with this key: {e}")))?;
    verifier.verify(&token).await.map(|_| ()).map_err(|_| {
        mismatch(
            "tokens signed with this key do not verify with TENANCY_JWT_PUBLIC_KEY_FILE; \
             give the matching pair"
                .into(),
        )
    })
}

/// The route rules of the API: which routes are public and which are audited.
///
/// Only the probes (`/health`, `/metrics`, `/openapi.json`) are exempt from rate limits.
/// The admin routes are not: they serve super admins only, who are never limited, and
/// everyone else gets a 403 there that counts against their limits and carries the
/// rate-limit headers, as every answer to a tenant's user does. (Exempting them would let any
/// user send unlimited requests that each wait for a synchronous audit write.)
///
/// # Errors
/// Never for these fixed patterns; the signature follows the builder's.
pub fn route_rules() -> std::result::Result<Vec<RouteRule>, tenancy_http::Error> {
    let r = RouteRule::new;
    Ok(vec![
        // Probes and scrapers are not limited; logins and refreshes are, per client address
        // (`login_per_minute`).
        r("/health")?.public().exempt(),
        r("/metrics")?.public().exempt(),
        r("/openapi.json")?.public().exempt(),
        // `ops::login` and `ops::refresh` audit every outcome (`auth.login`, `auth.refresh`).
        r("/v1/auth/login")?.public().handler_audits_denials(),
        r("/v1/auth/refresh")?.public().handler_audits_denials(),
        r("/v1/auth/logout")?.audit("auth.logout")?,
        r("/v1/records")?.method("GET").audit("records.list")?,
        r("/v1/records")?
            .method("POST")
            .audit("records.create")?
            .resource("record", "id"),
        r("/v1/records/{id}")?
            .method("GET")
            .audit("records.read")?
            .resource("record", "id"),
        r("/v1/records/{id}")?
            .method("DELETE")
            .audit("records.delete")?
            .resource("record", "id"),
        r("/v1/tenant/audit")?.audit("audit.read")?,
        r("/v1/admin/tenants/{tenant}/limits")?
            .audit("admin.tenant.limits")?
            .resource("tenant", "tenant")
            .audit_sync(),
        r("/v1/admin/tenants/{tenant}/bypass")?
            .audit("admin.tenant.bypass")?
            .resource("tenant", "tenant")
            .audit_sync(),
        r("/v1/admin/tenants/{tenant}/suspend")?
            .audit("admin.tenant.suspend")?
            .resource("tenant", "tenant")
            .audit_sync(),
        r("/v1/admin/tenants/{tenant}/resume")?
            .audit("admin.tenant.resume")?
            .resource("tenant", "tenant")
            .audit_sync(),
        r("/v1/admin/tenants/{tenant}")?
            .method("PUT")
            .audit("admin.tenant.put")?
            .resource("tenant", "tenant")
            .audit_sync(),
        r("/v1/admin/tenants/{tenant}")?
            .method("GET")
            .audit("admin.tenant.get")?
            .resource("tenant", "tenant"),
        r("/v1/admin/audit/verify")?.audit("admin.audit.verify")?,
        r("/v1/admin/{*rest}")?.audit("admin.request")?,
    ])
}

/// Whether a catalog-audit finding may be tolerated: row-level security findings on the
/// audit store's own tables (`tenancy_audit.*`). Those hold platform data keyed by tenant,
/// append-only by trigger, written and read only through the audit store's own pool (never
/// through a tenant transaction); the runtime role is granted nothing on them.
fn tolerated(f: &tenancy_db::Finding) -> bool {
    use tenancy_db::Finding as F;
    match f {
        F::RlsDisabled { table } | F::RlsNotForced { table } | F::PolicyMissing { table } => {
            table.starts_with("tenancy_audit.")
        }
        _ => false,
    }
}

/// Runs the catalog audit for `role` and returns the findings that are not tolerated.
///
/// # Errors
/// When the catalog cannot be read.
pub async fn catalog_findings(
    conn: &mut sqlx::PgConnection,
    role: Option<&RoleName>,
) -> Result<Vec<tenancy_db::Finding>> {
    let report = tenancy_db::audit_catalog(conn, role).await?;
    Ok(report
        .findings()
        .iter()
        .filter(|f| !tolerated(f))
        .cloned()
        .collect())
}

async fn retry<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    // Role creation and grants touch cluster-wide catalogs: two servers starting at once
    // can collide ("tuple concurrently updated"); one more try settles it.
    let mut last = None;
    for attempt in 0..4u64 {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
            }
        }
    }
    Err(last.unwrap_or(Error::Conflict))
}

/// Runs every migration the server needs, as the owner at `owner_url`: the tenancy-db
/// schema, the audit store's schema, and the `records` table under row-level security.
///
/// # Errors
/// [`Error::Startup`] when a migration fails.
pub async fn migrate(owner_url: &str) -> Result<()> {
    let mut owner = sqlx::PgConnection::connect(owner_url)
        .await
        .map_err(|e| startup("database connection (owner)")(boxed(e)))?;
    schema::migrate(&mut owner)
        .await
        .map_err(|e| startup("tenancy-db migrations")(boxed(e)))?;
    sqlx::raw_sql(RECORDS_TABLE_SQL)
        .execute(&mut owner)
        .await
        .map_err(|e| startup("records table")(boxed(e)))?;
    schema::protect_table(&mut owner, "public.records")
        .await
        .map_err(|e| startup("records row-level security")(boxed(e)))?;
    let audit = PgAuditStore::builder(owner_url)
        .with_max_connections(1)
        .connect()
        .map_err(|e| startup("audit store")(boxed(e)))?;
    audit
        .migrate()
        .await
        .map_err(|e| startup("audit store migrations")(boxed(e)))?;
    audit.pool().close().await;
    owner.close().await.ok();
    Ok(())
}

/// Whether the database role `user` is a superuser or may bypass row-level security.
///
/// # Errors
/// [`Error::Startup`] when the catalog cannot be read.
pub async fn role_bypasses_rls(conn: &mut sqlx::PgConnection, user: &str) -> Result<bool> {
    let privileged: Option<(bool, bool)> =
        sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1")
            .bind(user)
            .fetch_optional(conn)
            .await
            .map_err(|e| startup("role check")(boxed(e)))?;
    Ok(privileged.is_some_and(|(s, b)| s || b))
}

/// Connects the PostgreSQL side: migrations as the owner, the runtime role, the catalog
/// audit (refusing to serve on findings), the tenant and platform pools and the audit store.
async fn connect_database(config: &Config, url: &str) -> Result<(Database, PgAuditStore)> {
    let owner_url = config.database_owner_url.as_deref().unwrap_or(url);
    retry(|| migrate(owner_url)).await?;
    let environment = match config.env {
        Env::Dev => Environment::Dev,
        Env::Test => Environment::Test,
        Env::Prod => Environment::Prod,
    };
    let opts = PgConnectOptions::from_str(url).map_err(|e| Error::Config {
        setting: "TENANCY_DATABASE_URL",
        reason: e.to_string(),
    })?;
    let mut owner = sqlx::PgConnection::connect(owner_url)
        .await
        .map_err(|e| startup("database connection (owner)")(boxed(e)))?;
    let user = opts.get_username().to_owned();
    let bypasses = role_bypasses_rls(&mut owner, &user).await?;
    let runtime_opts = if bypasses {
        if config.env == Env::Prod {
            return Err(Error::Config {
                setting: "TENANCY_DATABASE_URL",
                reason: format!(
                    "role {user:?} can bypass row-level security; in prod connect as a runtime role \
                     (NOSUPERUSER NOBYPASSRLS) and give the owner in TENANCY_DATABASE_OWNER_URL"
                ),
            });
        }
        opts.clone().username(&config.database_runtime_role)
    } else {
        opts.clone()
    };
    let runtime = RoleName::parse(runtime_opts.get_username()).map_err(|e| Error::Config {
        setting: "TENANCY_DATABASE_URL",
        reason: format!("runtime role name: {e}"),
    })?;
    retry(|| async {
        let mut c = sqlx::PgConnection::connect(owner_url)
            .await
            .map_err(|e| startup("database connection (owner)")(boxed(e)))?;
        if bypasses {
            schema::create_runtime_role(&mut c, &runtime).await?;
        } else {
            schema::grant_runtime_role(&mut c, &runtime).await?;
        }
        schema::grant_table(&mut c, "public.records", &runtime).await?;
        c.close().await.ok();
        Ok(())
    })
    .await?;
    let findings = catalog_findings(&mut owner, Some(&runtime)).await?;
    owner.close().await.ok();
    if !findings.is_empty() {
        let text: Vec<String> = findings.iter().map(ToString::to_string).collect();
        return Err(Error::Startup {
            what: "catalog audit (refusing to serve)",
            source: text.join("; ").into(),
        });
    }
    let db_config = |o: PgConnectOptions| {
        DbConfig::from_options(o)
            .with_environment(environment)
            .with_health_interval(config.health_interval, Duration::from_secs(2))
            .with_connect_retry(3, Duration::from_millis(200), Duration::from_secs(2))
    };
    // The audit above ran with the tolerance for the audit store's own tables; the pool's
    // built-in audit knows no such tolerance.
    let tenants = TenantPool::connect(db_config(runtime_opts).with_catalog_audit(false))
        .await
        .map_err(|e| startup("tenant pool")(boxed(e)))?;
    let owner_opts = PgConnectOptions::from_str(owner_url).map_err(|e| Error::Config {
        setting: "TENANCY_DATABASE_OWNER_URL",
        reason: e.to_string(),
    })?;
    let platform = PlatformPool::connect(db_config(owner_opts).with_max_connections(4))
        .await
        .map_err(|e| startup("platform pool")(boxed(e)))?;
    let audit = PgAuditStore::builder(owner_url)
        .with_acquire_timeout(Duration::from_secs(2))
        .connect()
        .map_err(|e| startup("audit store")(boxed(e)))?;
    Ok((
        Database {
            tenants,
            platform,
            runtime_role: runtime.as_str().to_owned(),
        },
        audit,
    ))
}

/// The audit store as a health component: a read of the platform chain's head, bounded.
#[derive(Debug)]
struct AuditHealth {
    store: Arc<dyn AuditStore>,
    dispatcher: AuditDispatcher,
}

#[async_trait::async_trait]
impl HealthCheck for AuditHealth {
    fn component(&self) -> &str {
        "audit"
    }

    async fn check(&self) -> Health {
        let started = std::time::Instant::now();
        let platform = TenantId::parse("platform").unwrap_or_else(|_| unreachable!());
        let probe = tokio::time::timeout(Duration::from_secs(2), self.store.head(&platform)).await;
        let s = self.dispatcher.stats();
        let h = match probe {
            Ok(Ok(_)) => Health::up().with_latency(started.elapsed()),
            Ok(Err(e)) => Health::down(format!("audit store read failed: {e}")),
            Err(_) => Health::down("audit store read timed out"),
        };
        h.with_figure("stored", s.stored)
            .with_figure("spooled", s.spooled)
            .with_figure("replayed", s.replayed)
            .with_figure("store_errors", s.store_errors)
            .with_figure("conflicts", s.conflicts)
    }
}

/// A named health component around another check (the memory backends share names).
#[derive(Debug)]
struct Named(&'static str, Arc<dyn HealthCheck>);

#[async_trait::async_trait]
impl HealthCheck for Named {
    fn component(&self) -> &str {
        self.0
    }

    async fn check(&self) -> Health {
        self.1.check().await
    }
}

impl App {
    /// Builds every backend the configuration names, runs migrations and the catalog audit
    /// (PostgreSQL), seeds the demo data (dev and test), starts the audit dispatcher and the
    /// background health checks.
    ///
    /// The request layer audits denials and audited routes into the same dispatcher. Login
    /// and refresh record every outcome themselves, once, in the trail of the tenant
    /// concerned; their routes are marked so that the layer adds no second record.
    ///
    /// # Errors
    /// [`Error::Config`] naming a setting, or [`Error::Startup`] naming the backend that
    /// could not start.
    pub async fn build(config: Config) -> Result<Self> {
        let _ = metrics_handle();
        tokio::fs::create_dir_all(&config.data_dir)
            .await
            .map_err(|e| Error::Config {
                setting: "TENANCY_DATA_DIR",
                reason: format!("cannot create {}: {e}", config.data_dir.display()),
            })?;
        let mut checks: Vec<Arc<dyn HealthCheck>> = Vec::new();

        // Redis: limits and sessions.
        let keys = KeySpace::new(&config.redis_namespace).map_err(|e| Error::Config {
            setting: "TENANCY_REDIS_NAMESPACE",
            reason: e.to_string(),
        })?;
        let redis = match &config.redis_url {
            Some(url) => {
                let pool = RedisConfig::single(url.clone())
                    .connect()
                    .await
                    .map_err(|e| startup("Redis pool")(boxed(e)))?;
                checks.push(Arc::new(pool.clone()));
                Some(pool)
            }
            None => None,
        };

        // PostgreSQL: records, sessions, directory, audit.
        let (database, pg_audit) = match &config.database_url {
            Some(url) => {
                let (db, audit) = connect_database(&config, url).await?;
                checks.push(Arc::new(db.tenants.health()));
                checks.push(Arc::new(db.platform.health()));
                (Some(db), Some(audit))
            }
            None => (None, None),
        };

        let (limiter, quotas): (Arc<dyn RateLimiter>, Arc<dyn QuotaAdmin>) = match &redis {
            Some(pool) => {
                let l = RedisRateLimiter::builder(pool.clone())
                    .with_key_space(keys.clone())
                    .build();
                (Arc::new(l.clone()), Arc::new(l))
            }
            None => {
                let l = MemoryRateLimiter::new();
                checks.push(Arc::new(Named("rate_limiter", Arc::new(l.clone()))));
                (Arc::new(l.clone()), Arc::new(l))
            }
        };
        // Sessions and the denylist of revoked tokens: where every instance sees them.
        let (sessions, sessions_in): (Arc<dyn SessionStore>, &'static str) =
            match (&redis, &database) {
                (Some(pool), _) => {
                    let store = RedisSessionStore::new(pool.clone()).with_key_space(keys.clone());
                    // Revocation finds sessions through an index (and, without PostgreSQL, revoked
                    // tokens through entries) that an evicting Redis may drop: such a Redis is
                    // refused. One that cannot be asked now (down at start-up) is not: the server
                    // starts and answers 503 until it is back.
                    match store.check_eviction_policy().await {
                        Ok(()) => {}
                        Err(e) if e.is_unavailable() => {
                            tracing::warn!(error = %e, "could not check Redis's eviction policy");
                        }
                        Err(e) => return Err(startup("Redis session store")(boxed(e))),
                    }
                    (Arc::new(store), REDIS)
                }
                (None, Some(db)) => (Arc::new(PgSessionStore::new(db.tenants.clone())), POSTGRES),
                (None, None) => {
                    let s = MemorySessionStore::new();
                    checks.push(Arc::new(Named("sessions", Arc::new(s.clone()))));
                    (Arc::new(s), MEMORY)
                }
            };
        // PostgreSQL first: every tenant request needs the database already (the directory),
        // so a Redis outage then leaves tokens without a session as it found them (decided by
        // the limiter's failure policy) instead of refusing them all for want of the denylist.
        let (denylist, revoked_tokens_in): (Arc<dyn Denylist>, &'static str) =
            match (&database, &redis) {
                (Some(db), _) => (Arc::new(PgDenylist::new(db.tenants.clone())), POSTGRES),
                (None, Some(pool)) => (
                    Arc::new(RedisDenylist::new(pool.clone()).with_key_space(keys)),
                    REDIS,
                ),
                (None, None) => (Arc::new(MemoryDenylist::new()), MEMORY),
            };
        let directory: Arc<dyn TenantDirectory> = match &database {
            Some(db) => Arc::new(PgTenantDirectory::new(db.platform.clone())),
            None => Arc::new(MemoryTenantDirectory::new()),
        };
        let records = match &database {
            Some(db) => RecordStore::Postgres(db.tenants.clone()),
            None => RecordStore::memory(),
        };
        let stores = Stores {
            records: if database.is_some() { POSTGRES } else { MEMORY },
            sessions: sessions_in,
            revoked_tokens: revoked_tokens_in,
            limits: if redis.is_some() { REDIS } else { MEMORY },
        };

        // Audit: the dispatcher in front of the file or PostgreSQL store.
        let (audit_store, audit_backend): (Arc<dyn AuditStore>, AuditBackend) = match pg_audit {
            Some(pg) => (Arc::new(pg.clone()), AuditBackend::Postgres(pg)),
            None => {
                let path = config.audit_file();
                let store =
                    FileAuditStore::open(path.clone())
                        .await
                        .map_err(|e| Error::Startup {
                            what: "JSONL audit store",
                            source: Box::new(e),
                        })?;
                (Arc::new(store), AuditBackend::File(path))
            }
        };
        // The writer on a thread of its own: its hashing and store appends never take a turn
        // of the workers that serve requests.
        let dispatcher = AuditDispatcher::builder(audit_store.clone())
            .with_spool(config.audit_spool())
            .with_sync_timeout(Duration::from_secs(3))
            .start_on_own_thread()
            .await
            .map_err(|e| startup("audit dispatcher")(boxed(e)))?;
        checks.push(Arc::new(AuditHealth {
            store: audit_store.clone(),
            dispatcher: dispatcher.clone(),
        }));

        // Tokens.
        let verifier = Arc::new(verifier(&config, sessions.clone(), denylist)?);
        checks.push(verifier.clone());
        let issuer = match signing_key(&config)? {
            Some(key) => Some(
                TokenIssuer::builder(key, config.issuer.clone(), config.audience.clone())
                    .access_ttl(config.access_token_ttl)
                    .sessions(sessions.clone())
                    .build()
                    .map_err(|e| startup("token issuer")(boxed(e)))?,
            ),
            None => None,
        };
        if let (Some(issuer), KeyConfig::PublicKey { .. }) = (&issuer, &config.key) {
            check_key_pair(issuer, &verifier).await?;
        }

        let tiers = TierCatalog::default();
        let mut builder = Tenancy::builder(
            verifier.clone(),
            directory.clone(),
            limiter.clone(),
            Arc::new(dispatcher.clone()),
        )
        .with_tiers(tiers.clone())
        .with_failure_policy(config.rate_limit_failure)
        .with_trusted_proxies(config.trusted_proxies.clone())
        // Logins and refreshes (the public routes not exempt) per client address.
        .with_anonymous_limit(tenancy_core::Quota::per_minute(config.login_per_minute));
        for rule in route_rules().map_err(|e| startup("route rules")(boxed(e)))? {
            builder = builder.with_route(rule);
        }
        let tenancy = builder
            .build()
            .map_err(|e| startup("tenancy decisions")(boxed(e)))?;

        let users = Users::new(config.env == Env::Test);
        // The platform tenant, whose super admins create every other tenant, always exists:
        // without it no token could administer an empty directory (a first start in prod).
        let mut seeded = vec![("platform", "premium")];
        if config.demo_users {
            users.seed_demo().await?;
            seeded.extend([("acme", "standard"), ("globex", "premium")]);
        }
        {
            for (tenant, tier) in seeded {
                let t = TenantId::parse(tenant).map_err(tenancy_core::Error::from)?;
                let tier = TierName::parse(tier).map_err(tenancy_core::Error::from)?;
                // Created only where absent: a tenant another instance created or changed
                // meanwhile is left as it is.
                directory
                    .put_if(&t, None, TenantSettings::new(tier))
                    .await?;
            }
        }

        let app = Self(Arc::new(Inner {
            config,
            tenancy,
            issuer,
            verifier,
            directory,
            limiter,
            quotas,
            sessions,
            dispatcher,
            audit_store,
            audit_backend,
            records,
            users,
            tiers,
            database,
            redis,
            stores,
            checks,
            health: RwLock::new(BTreeMap::new()),
            health_task: std::sync::Mutex::new(None),
        }));
        app.refresh_health().await;
        let weak = Arc::downgrade(&app.0);
        let interval = app.0.config.health_interval;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else { return };
                App(inner).refresh_health().await;
            }
        });
        *app.0.health_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(app)
    }

    /// Runs every component check now and caches the results for `/health`.
    pub async fn refresh_health(&self) {
        let mut fresh = BTreeMap::new();
        for c in &self.0.checks {
            let h = c.check().await;
            if h.status == HealthStatus::Down {
                tracing::warn!(component = c.component(), detail = ?h.detail, "component down");
            }
            fresh.insert(c.component().to_owned(), h);
        }
        *self.0.health.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        metrics_handle().run_upkeep();
    }

    /// The cached component health, by component name.
    pub fn health(&self) -> BTreeMap<String, Health> {
        self.0
            .health
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the health checks, drains the audit queue (waiting for the store, or leaving
    /// the rest in the spool for the next start), and closes the pools.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when events had to stay in the spool (safe on disk, stored at
    /// the next start); [`Error::Internal`] when events were lost or could not be made
    /// durable.
    pub async fn shutdown(&self) -> Result<()> {
        if let Some(t) = self
            .0
            .health_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.abort();
        }
        let drained = self.0.dispatcher.shutdown().await;
        if let Some(db) = &self.0.database {
            db.tenants.close().await;
            db.platform.close().await;
        }
        if let AuditBackend::Postgres(pg) = &self.0.audit_backend {
            pg.pool().close().await;
        }
        match drained {
            Ok(()) | Err(tenancy_audit::Error::Closed) => Ok(()),
            // Safe on disk, stored at the next start.
            Err(e @ tenancy_audit::Error::Spooled(_)) => Err(Error::Unavailable(Box::new(e))),
            // Lost, or not made durable: not a clean stop.
            Err(e) => Err(Error::Internal(Box::new(e))),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// The shared request decisions (authentication, tenant, limits, audit), for adapters.
    pub fn tenancy(&self) -> &Tenancy {
        &self.0.tenancy
    }

    /// The token issuer, when this server has a signing key.
    pub fn issuer(&self) -> Option<&TokenIssuer> {
        self.0.issuer.as_ref()
    }

    /// The token verifier.
    pub fn verifier(&self) -> &Arc<JwtVerifier> {
        &self.0.verifier
    }

    /// The tenant directory.
    pub fn directory(&self) -> &Arc<dyn TenantDirectory> {
        &self.0.directory
    }

    /// The rate limiter.
    pub fn limiter(&self) -> &Arc<dyn RateLimiter> {
        &self.0.limiter
    }

    /// The rate limiter's administrative side (usage).
    pub fn quotas(&self) -> &Arc<dyn QuotaAdmin> {
        &self.0.quotas
    }

    /// The session store.
    pub fn sessions(&self) -> &Arc<dyn SessionStore> {
        &self.0.sessions
    }

    /// The audit sink (the dispatcher).
    pub fn audit(&self) -> &AuditDispatcher {
        &self.0.dispatcher
    }

    /// The audit store behind the dispatcher.
    pub fn audit_store(&self) -> &Arc<dyn AuditStore> {
        &self.0.audit_store
    }

    /// Where the audit trail is kept.
    pub fn audit_backend(&self) -> &AuditBackend {
        &self.0.audit_backend
    }

    /// A human-readable location of the audit trail.
    pub fn audit_location(&self) -> String {
        match &self.0.audit_backend {
            AuditBackend::File(p) => p.display().to_string(),
            AuditBackend::Postgres(_) => "PostgreSQL table tenancy_audit.events".to_owned(),
        }
    }

    /// The records.
    pub fn records(&self) -> &RecordStore {
        &self.0.records
    }

    /// The accounts.
    pub fn users(&self) -> &Users {
        &self.0.users
    }

    /// The tier catalog.
    pub fn tiers(&self) -> &TierCatalog {
        &self.0.tiers
    }

    /// The PostgreSQL side, when configured.
    pub fn database(&self) -> Option<&Database> {
        self.0.database.as_ref()
    }

    /// The Redis pool, when configured.
    pub fn redis(&self) -> Option<&RedisPool> {
        self.0.redis.as_ref()
    }

    /// Where each kind of state is kept.
    pub fn stores(&self) -> Stores {
        self.0.stores
    }

    /// Records an audit event without waiting for the store.
    pub(crate) async fn record(&self, event: tenancy_core::AuditEvent) {
        if let Err(e) = self.0.dispatcher.record(event).await {
            tracing::error!(error = %e, "audit dispatcher refused an event");
        }
    }
}
