//! [`Config`]: every setting of the server, from `TENANCY_*` variables and an optional TOML
//! file, checked before anything starts.
//!
//! | variable | TOML key | default | meaning |
//! |---|---|---|---|
//! | `TENANCY_CONFIG` | — | none | a TOML file with any of the keys below (variables win over the file) |
//! | `TENANCY_LISTEN` | `listen` | `127.0.0.1:8080` | address to listen on (beyond loopback only with a key of your own and no demo users: the dev key and the demo password are public) |
//! | `TENANCY_ENV` | `env` | `dev` | `dev`, `test` or `prod` |
//! | `TENANCY_JWT_SECRET` | `jwt_secret` | a fixed dev-only secret outside prod | HS256 secret, at least 32 bytes |
//! | `TENANCY_JWT_PUBLIC_KEY_FILE` | `jwt_public_key_file` | none | PEM public key (RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA) |
//! | `TENANCY_JWT_PRIVATE_KEY_FILE` | `jwt_private_key_file` | none | PEM private key matching the public key, for issuing tokens at login |
//! | `TENANCY_JWT_JWKS_URL` | `jwt_jwks_url` | none | verify tokens with keys from a JWKS URL (login then needs a signing key too) |
//! | `TENANCY_JWT_ISSUER` | `jwt_issuer` | `tenancy-server` | `iss` written and required |
//! | `TENANCY_JWT_AUDIENCE` | `jwt_audience` | `tenancy-api` | `aud` written and required |
//! | `TENANCY_ACCESS_TOKEN_TTL` | `access_token_ttl_secs` | `300` | access token lifetime, seconds: at least 10 and below the session idle timeout (1800) |
//! | `TENANCY_DATABASE_URL` | `database_url` | none (memory) | PostgreSQL for records, sessions (unless Redis is set), revoked tokens, tenant directory and audit |
//! | `TENANCY_DATABASE_OWNER_URL` | `database_owner_url` | `TENANCY_DATABASE_URL` | the role that runs migrations and owns the tables |
//! | `TENANCY_DATABASE_RUNTIME_ROLE` | `database_runtime_role` | `tenancy_runtime` | the role tenant requests run as, when the database URL's own role may bypass row-level security (dev and test only) |
//! | `TENANCY_REDIS_URL` | `redis_url` | none (memory) | Redis for rate limits, sessions, and revoked tokens (unless PostgreSQL is set) |
//! | `TENANCY_DATA_DIR` | `data_dir` | `./tenancy-data` | the JSONL audit file and the audit spool |
//! | `TENANCY_DEMO_USERS` | `demo_users` | `true` in dev and test, `false` in prod | seed the demo tenants and users |
//! | `TENANCY_RATE_LIMIT_FAILURE` | `rate_limit_failure` | `local` | when Redis cannot decide: `local`, `fail_closed` or `fail_open` |
//! | `TENANCY_HEALTH_INTERVAL` | `health_interval_secs` | `5` | seconds between background component checks |
//! | `TENANCY_IDLE_TIMEOUT` | `idle_timeout_secs` | `75` | seconds a connection may take to send a request's head (request line and headers), counted from when the server starts waiting for it, kept-alive connections between requests included; then it is closed. Keep it above the idle timeout of a load balancer in front (60 s on AWS's), which would otherwise send requests on connections being closed |
//! | `TENANCY_LOGIN_PER_MINUTE` | `login_per_minute` | `60` | logins and refreshes per client address per minute (all at once, at most), before 429 |
//! | `TENANCY_TRUSTED_PROXIES` | `trusted_proxies` | none | comma-separated addresses and networks of the reverse proxies in front of the server (`10.0.0.0/8, 192.0.2.7`): only for requests from them is the client address read from their header. Without it the peer is the client: behind a proxy every client would share the proxy's address (one login limit for all, and `private` metrics open to everyone) |
//! | `TENANCY_FORWARDED_HEADER` | `forwarded_header` | `x-forwarded-for` | the header those proxies write: `x-forwarded-for` or `forwarded` (RFC 7239); the other one is never read |
//! | `TENANCY_METRICS_ALLOW` | `metrics_allow` | `private` in prod, `any` elsewhere | who may read `GET /metrics`: `any`, `private` (loopback and private networks) or a comma-separated list of addresses and networks (`10.0.0.0/8, 192.0.2.7`); others get 404. Prod refuses `any` |
//!
//! ```
//! use std::collections::HashMap;
//! use tenancy_server::Config;
//!
//! let vars = HashMap::from([("TENANCY_LISTEN".to_owned(), "127.0.0.1:0".to_owned())]);
//! let config = Config::from_vars(&vars)?;
//! assert_eq!(config.listen.port(), 0);
//! assert!(config.demo_users);
//!
//! let bad = HashMap::from([("TENANCY_ENV".to_owned(), "prod".to_owned())]);
//! let err = Config::from_vars(&bad).unwrap_err();
//! assert!(err.to_string().contains("TENANCY_JWT_SECRET"));
//! # Ok::<(), tenancy_server::Error>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use tenancy_core::FailurePolicy;
use tenancy_http::IpNet;

use crate::{Error, Result};

/// The HS256 secret used outside prod when none is configured.
///
/// Why a fixed value rather than a random one: `tenancy-server token` and a running dev
/// server must agree on the key without any setup. It is public, so prod refuses to start
/// without a key of its own.
pub const DEV_JWT_SECRET: &str = "tenancy-dev-secret-not-for-production-use";

/// The environment the server runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Env {
    /// Local development: demo data, the dev key when none is set.
    Dev,
    /// Automated tests: like dev, with cheaper password hashing.
    Test,
    /// Production: every unsafe setting is refused at start.
    Prod,
}

impl Env {
    /// `dev`, `test` or `prod`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dev => "dev",
            Self::Test => "test",
            Self::Prod => "prod",
        }
    }
}

impl FromStr for Env {
    type Err = &'static str;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "dev" => Ok(Self::Dev),
            "test" => Ok(Self::Test),
            "prod" => Ok(Self::Prod),
            _ => Err("must be dev, test or prod"),
        }
    }
}

/// Where the server's token verification keys come from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyConfig {
    /// An HS256 shared secret.
    Secret(String),
    /// A PEM public key file, with an optional private key file for issuing.
    PublicKey {
        /// The public key file.
        public: PathBuf,
        /// The private key file, when this server issues tokens.
        private: Option<PathBuf>,
    },
    /// A JWKS URL, with an optional private key file for issuing.
    Jwks {
        /// The URL.
        url: String,
        /// The private key file, when this server issues tokens.
        private: Option<PathBuf>,
    },
}

impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("Secret([redacted])"),
            Self::PublicKey { public, private } => f
                .debug_struct("PublicKey")
                .field("public", public)
                .field("private", private)
                .finish(),
            Self::Jwks { url, private } => f
                .debug_struct("Jwks")
                .field("url", url)
                .field("private", private)
                .finish(),
        }
    }
}

/// Who may read `GET /metrics` (client addresses as the request layer resolves them,
/// through trusted proxies).
///
/// Why `private` is the prod default: the metrics name tenants, routes and the health of
/// every backend; a scraper runs next to the server, not on the internet.
///
/// ```
/// use tenancy_server::config::MetricsAllow;
///
/// let private = MetricsAllow::private();
/// assert!(private.allows(Some("127.0.0.1".parse().unwrap())));
/// assert!(private.allows(Some("10.1.2.3".parse().unwrap())));
/// assert!(!private.allows(Some("203.0.113.9".parse().unwrap())));
/// assert!(!private.allows(None));
/// assert!(MetricsAllow::Anyone.allows(None));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricsAllow {
    /// Every client.
    Anyone,
    /// Clients inside one of these networks.
    Networks(Vec<IpNet>),
}

/// Loopback and private networks: IPv4 127/8, 10/8, 172.16/12, 192.168/16; IPv6 ::1 and
/// unique local fc00::/7.
const PRIVATE_NETWORKS: [&str; 6] = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "::1/128",
    "fc00::/7",
];

impl MetricsAllow {
    /// Loopback and private networks only.
    pub fn private() -> Self {
        Self::Networks(
            PRIVATE_NETWORKS
                .iter()
                .filter_map(|n| IpNet::parse(n).ok())
                .collect(),
        )
    }

    /// Whether a client at `addr` may read the metrics (an unknown address may not, unless
    /// anyone may).
    pub fn allows(&self, addr: Option<std::net::IpAddr>) -> bool {
        match self {
            Self::Anyone => true,
            Self::Networks(nets) => addr.is_some_and(|a| nets.iter().any(|n| n.contains(a))),
        }
    }

    fn parse(s: &str, env: Env) -> Result<Self> {
        const SETTING: &str = "TENANCY_METRICS_ALLOW";
        match s.trim() {
            "any" if env == Env::Prod => Err(invalid(
                SETTING,
                "`any` is refused in prod: name the scraper's networks, or `private`",
            )),
            "any" => Ok(Self::Anyone),
            "private" => Ok(Self::private()),
            list => {
                let nets = list
                    .split(',')
                    .map(|n| {
                        IpNet::parse(n.trim()).map_err(|e| {
                            invalid(
                                SETTING,
                                format!("{e}; expected `any`, `private` or addresses and networks like 10.0.0.0/8"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Self::Networks(nets))
            }
        }
    }
}

/// The validated configuration of the server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The environment.
    pub env: Env,
    /// Token keys.
    pub key: KeyConfig,
    /// Whether `key` is the public dev secret (no key was configured).
    pub dev_key: bool,
    /// `iss` of issued tokens, required of verified ones.
    pub issuer: String,
    /// `aud` of issued tokens, required of verified ones.
    pub audience: String,
    /// Access token lifetime, below the session idle timeout
    /// ([`tenancy_core::DEFAULT_IDLE_TIMEOUT`]).
    pub access_token_ttl: Duration,
    /// PostgreSQL for records, sessions (unless Redis is set), revoked tokens, tenant
    /// directory and audit.
    pub database_url: Option<String>,
    /// The role that runs migrations (defaults to `database_url`).
    pub database_owner_url: Option<String>,
    /// The runtime role used when `database_url`'s role may bypass row-level security.
    pub database_runtime_role: String,
    /// Redis for rate limits, sessions, and revoked tokens (unless PostgreSQL is set).
    pub redis_url: Option<String>,
    /// Key prefix of every Redis key (default `tenancy`).
    pub redis_namespace: String,
    /// Directory of the JSONL audit file and the spool.
    pub data_dir: PathBuf,
    /// Seed the demo tenants and users.
    pub demo_users: bool,
    /// What the rate limiter does when Redis cannot decide.
    pub rate_limit_failure: FailurePolicy,
    /// Seconds between background component checks.
    pub health_interval: Duration,
    /// How long a connection may take to send a request's head, counted from when the server
    /// starts waiting for it (kept-alive connections between requests included); then it is
    /// closed.
    ///
    /// Why a bound: a client that sends its headers a byte at a time, or nothing, would hold
    /// its connection (a socket, a task) for ever, and a few thousand of them every file
    /// descriptor. Why 75 s by default: above the idle timeouts of the usual load balancers
    /// (60 s on AWS's): one in front must close an idle connection before the server does, or
    /// it sends a request on a connection the server is closing and answers its client 502.
    pub idle_timeout: Duration,
    /// Logins and refreshes per client address per minute.
    ///
    /// Why 60 by default: enough for everyone behind one office's address to log in at the
    /// start of the day within a few minutes, while a password guesser gets one try a
    /// second and each try's password hashing stays bounded per address.
    pub login_per_minute: u64,
    /// Who may read `GET /metrics`.
    pub metrics_allow: MetricsAllow,
    /// The reverse proxies whose forwarding header gives the client's address.
    pub trusted_proxies: tenancy_http::TrustedProxies,
}

/// The raw settings, as read from the file and the environment, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: Option<String>,
    env: Option<String>,
    jwt_secret: Option<String>,
    jwt_public_key_file: Option<PathBuf>,
    jwt_private_key_file: Option<PathBuf>,
    jwt_jwks_url: Option<String>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    access_token_ttl_secs: Option<u64>,
    database_url: Option<String>,
    database_owner_url: Option<String>,
    database_runtime_role: Option<String>,
    redis_url: Option<String>,
    redis_namespace: Option<String>,
    data_dir: Option<PathBuf>,
    demo_users: Option<bool>,
    rate_limit_failure: Option<String>,
    health_interval_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    login_per_minute: Option<u64>,
    metrics_allow: Option<String>,
    trusted_proxies: Option<String>,
    forwarded_header: Option<String>,
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> Error {
    Error::Config {
        setting,
        reason: reason.into(),
    }
}

/// `TENANCY_FOO` for the TOML key `foo`, the name errors use.
fn var_name(key: &'static str) -> &'static str {
    match key {
        "listen" => "TENANCY_LISTEN",
        "env" => "TENANCY_ENV",
        "jwt_secret" => "TENANCY_JWT_SECRET",
        "jwt_public_key_file" => "TENANCY_JWT_PUBLIC_KEY_FILE",
        "jwt_private_key_file" => "TENANCY_JWT_PRIVATE_KEY_FILE",
        "jwt_jwks_url" => "TENANCY_JWT_JWKS_URL",
        "jwt_issuer" => "TENANCY_JWT_ISSUER",
        "jwt_audience" => "TENANCY_JWT_AUDIENCE",
        "access_token_ttl_secs" => "TENANCY_ACCESS_TOKEN_TTL",
        "database_url" => "TENANCY_DATABASE_URL",
        "database_owner_url" => "TENANCY_DATABASE_OWNER_URL",
        "database_runtime_role" => "TENANCY_DATABASE_RUNTIME_ROLE",
        "redis_url" => "TENANCY_REDIS_URL",
        "redis_namespace" => "TENANCY_REDIS_NAMESPACE",
        "data_dir" => "TENANCY_DATA_DIR",
        "demo_users" => "TENANCY_DEMO_USERS",
        "rate_limit_failure" => "TENANCY_RATE_LIMIT_FAILURE",
        "health_interval_secs" => "TENANCY_HEALTH_INTERVAL",
        "idle_timeout_secs" => "TENANCY_IDLE_TIMEOUT",
        "login_per_minute" => "TENANCY_LOGIN_PER_MINUTE",
        "metrics_allow" => "TENANCY_METRICS_ALLOW",
        "trusted_proxies" => "TENANCY_TRUSTED_PROXIES",
        "forwarded_header" => "TENANCY_FORWARDED_HEADER",
        _ => "TENANCY_CONFIG",
    }
}

impl Raw {
    fn overlay(&mut self, vars: &HashMap<String, String>) -> Result<()> {
        let get = |key: &'static str| vars.get(var_name(key)).filter(|v| !v.is_empty()).cloned();
        let num = |key: &'static str| -> Result<Option<u64>> {
            get(key)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| invalid(var_name(key), "must be a whole number"))
                })
                .transpose()
        };
        macro_rules! take {
            ($field:ident) => {
                if let Some(v) = get(stringify!($field)) {
                    self.$field = Some(v.into());
                }
            };
        }
        take!(listen);
        take!(env);
        take!(jwt_secret);
        take!(jwt_public_key_file);
        take!(jwt_private_key_file);
        take!(jwt_jwks_url);
        take!(jwt_issuer);
        take!(jwt_audience);
        take!(database_url);
        take!(database_owner_url);
        take!(database_runtime_role);
        take!(redis_url);
        take!(redis_namespace);
        take!(data_dir);
        take!(rate_limit_failure);
        take!(metrics_allow);
        take!(trusted_proxies);
        take!(forwarded_header);
        if let Some(v) = num("access_token_ttl_secs")? {
            self.access_token_ttl_secs = Some(v);
        }
        if let Some(v) = num("health_interval_secs")? {
            self.health_interval_secs = Some(v);
        }
        if let Some(v) = num("idle_timeout_secs")? {
            self.idle_timeout_secs = Some(v);
        }
        if let Some(v) = num("login_per_minute")? {
            self.login_per_minute = Some(v);
        }
        if let Some(v) = get("demo_users") {
            self.demo_users = Some(match v.as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(invalid("TENANCY_DEMO_USERS", "must be true or false")),
            });
        }
        Ok(())
    }
}

/// The `TENANCY_*` variables among `vars`. Others are not looked at (one that is not UTF-8
/// is no concern of the server's); a `TENANCY_*` value that is not UTF-8 is an error naming
/// it.
fn tenancy_vars(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for (k, v) in vars {
        let Some(name) = k.to_str().filter(|k| k.starts_with("TENANCY_")) else {
            continue;
        };
        let value = v
            .into_string()
            .map_err(|_| invalid("TENANCY_*", format!("{name} is not valid UTF-8")))?;
        out.insert(name.to_owned(), value);
    }
    Ok(out)
}

impl Config {
    /// Reads `TENANCY_CONFIG` (when set) and every `TENANCY_*` variable of the process, and
    /// validates.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting that is wrong.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(&tenancy_vars(std::env::vars_os())?)
    }

    /// Like [`Config::from_env`], from the given variables (the file named by
    /// `TENANCY_CONFIG` among them is read).
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting that is wrong.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self> {
        let mut raw = match vars.get("TENANCY_CONFIG").filter(|v| !v.is_empty()) {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| invalid("TENANCY_CONFIG", format!("cannot read {path}: {e}")))?;
                Self::parse_toml(&text)?
            }
            None => Raw::default(),
        };
        raw.overlay(vars)?;
        Self::validate(raw)
    }

    /// Parses and validates a TOML configuration alone (no variables).
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting that is wrong, or `TENANCY_CONFIG` for a file
    /// that is not valid TOML or has unknown keys.
    pub fn from_toml(text: &str) -> Result<Self> {
        Self::validate(Self::parse_toml(text)?)
    }

    fn parse_toml(text: &str) -> Result<Raw> {
        toml::from_str(text).map_err(|e| invalid("TENANCY_CONFIG", e.message().to_owned()))
    }

    fn validate(raw: Raw) -> Result<Self> {
        let env = match raw.env.as_deref() {
            None => Env::Dev,
            Some(s) => s.parse().map_err(|e: &str| invalid("TENANCY_ENV", e))?,
        };
        let listen = match raw.listen.as_deref() {
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
            Some(s) => s.parse().map_err(|_| {
                invalid(
                    "TENANCY_LISTEN",
                    format!("{s:?} is not an address like 127.0.0.1:8080"),
                )
            })?,
        };
        let keys = [
            raw.jwt_secret.is_some(),
            raw.jwt_public_key_file.is_some(),
            raw.jwt_jwks_url.is_some(),
        ];
        if keys.iter().filter(|k| **k).count() > 1 {
            return Err(invalid(
                "TENANCY_JWT_SECRET",
                "set only one of TENANCY_JWT_SECRET, TENANCY_JWT_PUBLIC_KEY_FILE and TENANCY_JWT_JWKS_URL",
            ));
        }
        let mut dev_key = false;
        let key = if let Some(secret) = raw.jwt_secret {
            if secret.len() < 32 {
                return Err(invalid(
                    "TENANCY_JWT_SECRET",
                    "must be at least 32 bytes (HS256 keys shorter than the hash are guessable)",
                ));
            }
            if secret == DEV_JWT_SECRET && env == Env::Prod {
                return Err(invalid(
                    "TENANCY_JWT_SECRET",
                    "the public dev secret is refused in prod",
                ));
            }
            KeyConfig::Secret(secret)
        } else if let Some(public) = raw.jwt_public_key_file {
            KeyConfig::PublicKey {
                public,
                private: raw.jwt_private_key_file,
            }
        } else if let Some(url) = raw.jwt_jwks_url {
            if env == Env::Prod && !url.starts_with("https://") {
                return Err(invalid("TENANCY_JWT_JWKS_URL", "must be https:// in prod"));
            }
            KeyConfig::Jwks {
                url,
                private: raw.jwt_private_key_file,
            }
        } else if env == Env::Prod {
            return Err(invalid(
                "TENANCY_JWT_SECRET",
                "prod needs a key: set TENANCY_JWT_SECRET, TENANCY_JWT_PUBLIC_KEY_FILE or TENANCY_JWT_JWKS_URL",
            ));
        } else {
            dev_key = true;
            KeyConfig::Secret(DEV_JWT_SECRET.to_owned())
        };
        // The dev secret is in this crate's source: with it, anyone can sign a platform
        // `super_admin` token. It serves only this machine.
        if matches!(&key, KeyConfig::Secret(s) if s == DEV_JWT_SECRET) && !listen.ip().is_loopback()
        {
            return Err(invalid(
                "TENANCY_LISTEN",
                format!(
                    "{listen} is reachable from other machines, and the dev key is public (anyone \
                     could sign a super_admin token): listen on 127.0.0.1, or set a key of your \
                     own (TENANCY_JWT_SECRET)"
                ),
            ));
        }
        let nonempty =
            |v: Option<String>, setting: &'static str, default: &str| -> Result<String> {
                match v {
                    None => Ok(default.to_owned()),
                    Some(s) if s.trim().is_empty() || s.len() > 256 => {
                        Err(invalid(setting, "must be 1 to 256 characters"))
                    }
                    Some(s) => Ok(s),
                }
            };
        let issuer = nonempty(raw.jwt_issuer, "TENANCY_JWT_ISSUER", "tenancy-server")?;
        let audience = nonempty(raw.jwt_audience, "TENANCY_JWT_AUDIENCE", "tenancy-api")?;
        let ttl = raw.access_token_ttl_secs.unwrap_or(300);
        if ttl < 10 {
            return Err(invalid(
                "TENANCY_ACCESS_TOKEN_TTL",
                "must be at least 10 seconds (and below the session idle timeout)",
            ));
        }
        // The server's issuer keeps the default session idle timeout (`App::build` sets none).
        // Verifying an access token is no session activity, so a token living as long as the
        // idle window would log active users out; the issuer would refuse to build anyway.
        let idle = tenancy_core::DEFAULT_IDLE_TIMEOUT.as_secs();
        if ttl >= idle {
            return Err(invalid(
                "TENANCY_ACCESS_TOKEN_TTL",
                format!(
                    "{ttl} s is not below the session idle timeout ({idle} s): a token must \
                     expire before its session can go idle, or active users are logged out"
                ),
            ));
        }
        for (url, setting) in [
            (&raw.database_url, "TENANCY_DATABASE_URL"),
            (&raw.database_owner_url, "TENANCY_DATABASE_OWNER_URL"),
        ] {
            if let Some(u) = url
                && !(u.starts_with("postgres://") || u.starts_with("postgresql://"))
            {
                return Err(invalid(setting, "must be a postgres:// URL"));
            }
        }
        if raw.database_owner_url.is_some() && raw.database_url.is_none() {
            return Err(invalid(
                "TENANCY_DATABASE_OWNER_URL",
                "needs TENANCY_DATABASE_URL as well",
            ));
        }
        let runtime_role = raw
            .database_runtime_role
            .unwrap_or_else(|| "tenancy_runtime".to_owned());
        tenancy_db::schema::RoleName::parse(&runtime_role)
            .map_err(|e| invalid("TENANCY_DATABASE_RUNTIME_ROLE", e.to_string()))?;
        if let Some(u) = &raw.redis_url
            && !(u.starts_with("redis://") || u.starts_with("rediss://"))
        {
            return Err(invalid(
                "TENANCY_REDIS_URL",
                "must be a redis:// or rediss:// URL",
            ));
        }
        let redis_namespace = raw.redis_namespace.unwrap_or_else(|| "tenancy".to_owned());
        tenancy_cache::keys::KeySpace::new(&redis_namespace)
            .map_err(|e| invalid("TENANCY_REDIS_NAMESPACE", e.to_string()))?;
        let demo_users = raw.demo_users.unwrap_or(env != Env::Prod);
        if demo_users && env == Env::Prod {
            return Err(invalid(
                "TENANCY_DEMO_USERS",
                "demo users (password `password`) are refused in prod",
            ));
        }
        // The demo users include the platform's super admin, with a published password.
        if demo_users && !listen.ip().is_loopback() {
            return Err(invalid(
                "TENANCY_DEMO_USERS",
                format!(
                    "{listen} is reachable from other machines, and the demo users' password is \
                     public (one is the platform's super admin): listen on 127.0.0.1, or set \
                     TENANCY_DEMO_USERS=false"
                ),
            ));
        }
        let rate_limit_failure = match raw.rate_limit_failure.as_deref() {
            None | Some("local") => FailurePolicy::Local,
            Some("fail_closed") => FailurePolicy::FailClosed,
            Some("fail_open") => FailurePolicy::FailOpen,
            Some(_) => {
                return Err(invalid(
                    "TENANCY_RATE_LIMIT_FAILURE",
                    "must be local, fail_closed or fail_open",
                ));
            }
        };
        let interval = raw.health_interval_secs.unwrap_or(5);
        if !(1..=300).contains(&interval) {
            return Err(invalid(
                "TENANCY_HEALTH_INTERVAL",
                "must be between 1 and 300 seconds",
            ));
        }
        let idle = raw.idle_timeout_secs.unwrap_or(75);
        if !(1..=3600).contains(&idle) {
            return Err(invalid(
                "TENANCY_IDLE_TIMEOUT",
                "must be between 1 and 3600 seconds",
            ));
        }
        let login_per_minute = raw.login_per_minute.unwrap_or(60);
        if !(1..=1_000_000).contains(&login_per_minute) {
            return Err(invalid(
                "TENANCY_LOGIN_PER_MINUTE",
                "must be between 1 and 1000000",
            ));
        }
        let metrics_allow = match raw.metrics_allow.as_deref() {
            Some(s) => MetricsAllow::parse(s, env)?,
            None if env == Env::Prod => MetricsAllow::private(),
            None => MetricsAllow::Anyone,
        };
        let header = match raw.forwarded_header.as_deref() {
            None | Some("x-forwarded-for") => tenancy_http::ForwardedHeader::XForwardedFor,
            Some("forwarded") => tenancy_http::ForwardedHeader::Forwarded,
            Some(_) => {
                return Err(invalid(
                    "TENANCY_FORWARDED_HEADER",
                    "must be x-forwarded-for or forwarded",
                ));
            }
        };
        let trusted_proxies = match raw.trusted_proxies.as_deref() {
            None => tenancy_http::TrustedProxies::none(),
            Some(list) => tenancy_http::TrustedProxies::parse(
                list.split(',').map(str::trim).filter(|e| !e.is_empty()),
            )
            .map_err(|e| invalid("TENANCY_TRUSTED_PROXIES", e.to_string()))?
            .with_header(header),
        };
        Ok(Self {
            listen,
            env,
            key,
            dev_key,
            issuer,
            audience,
            access_token_ttl: Duration::from_secs(ttl),
            database_url: raw.database_url,
            database_owner_url: raw.database_owner_url,
            database_runtime_role: runtime_role,
            redis_url: raw.redis_url,
            redis_namespace,
            data_dir: raw
                .data_dir
                .unwrap_or_else(|| PathBuf::from("tenancy-data")),
            demo_users,
            rate_limit_failure,
            health_interval: Duration::from_secs(interval),
            idle_timeout: Duration::from_secs(idle),
            login_per_minute,
            metrics_allow,
            trusted_proxies,
        })
    }

    /// A configuration for tests: `test` environment, listening on `127.0.0.1:0`, data in
    /// `data_dir`, everything else at its default.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        let mut vars = HashMap::new();
        vars.insert("TENANCY_ENV".to_owned(), "test".to_owned());
        vars.insert("TENANCY_LISTEN".to_owned(), "127.0.0.1:0".to_owned());
        let mut c =
            Self::from_vars(&vars).unwrap_or_else(|e| unreachable!("defaults are valid: {e}"));
        c.data_dir = data_dir.into();
        c
    }

    /// The JSONL audit file used when no database is configured.
    pub fn audit_file(&self) -> PathBuf {
        self.data_dir.join("audit.jsonl")
    }

    /// The spool the audit dispatcher writes to while its store is down.
    pub fn audit_spool(&self) -> PathBuf {
        self.data_dir.join("audit.spool")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_timeout_defaults_to_75_seconds_and_is_bounded() {
        let with = |v: Option<&str>| {
            let mut vars = HashMap::from([("TENANCY_LISTEN".to_owned(), "127.0.0.1:0".to_owned())]);
            if let Some(v) = v {
                vars.insert("TENANCY_IDLE_TIMEOUT".to_owned(), v.to_owned());
            }
            Config::from_vars(&vars)
        };
        assert_eq!(with(None).unwrap().idle_timeout, Duration::from_secs(75));
        assert_eq!(
            with(Some("120")).unwrap().idle_timeout,
            Duration::from_secs(120)
        );
        for bad in ["0", "3601", "soon"] {
            let err = with(Some(bad)).unwrap_err().to_string();
            assert!(err.contains("TENANCY_IDLE_TIMEOUT"), "{bad}: {err}");
        }
    }

    #[test]
    fn variables_that_are_not_utf8_are_skipped_or_named() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt as _;
        let bad = || OsString::from_vec(vec![0x66, 0xff]);
        let vars = vec![
            (OsString::from("FOO"), bad()),
            (bad(), OsString::from("x")),
            (OsString::from("TENANCY_ENV"), OsString::from("test")),
        ];
        let read = tenancy_vars(vars.into_iter()).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read["TENANCY_ENV"], "test");
        let err =
            tenancy_vars(std::iter::once((OsString::from("TENANCY_ENV"), bad()))).unwrap_err();
        assert!(err.to_string().contains("TENANCY_ENV"), "{err}");
    }

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        Config::from_vars(&vars(pairs)).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_the_memory_demo() {
        let c = Config::from_vars(&HashMap::new()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.env, Env::Dev);
        assert!(c.dev_key && c.demo_users);
        assert!(c.database_url.is_none() && c.redis_url.is_none());
        assert_eq!(c.audit_file(), PathBuf::from("tenancy-data/audit.jsonl"));
    }

    /// The public dev key and the demo users serve loopback only; a key of one's own, without
    /// the demo users, may listen anywhere.
    #[test]
    fn the_dev_key_is_refused_beyond_loopback() {
        for listen in ["0.0.0.0:8080", "[::]:8080", "192.0.2.7:8080"] {
            let e = err(&[("TENANCY_LISTEN", listen)]);
            assert!(e.contains("TENANCY_LISTEN") && e.contains("dev key"), "{e}");
        }
        let e = err(&[
            ("TENANCY_LISTEN", "0.0.0.0:8080"),
            ("TENANCY_JWT_SECRET", DEV_JWT_SECRET),
        ]);
        assert!(e.contains("dev key"), "{e}");
        for listen in ["127.0.0.1:8080", "[::1]:8080"] {
            assert!(Config::from_vars(&vars(&[("TENANCY_LISTEN", listen)])).is_ok());
        }
        // A key of one's own: the demo users, whose password is public too, must go as well.
        let own = "a-secret-of-our-own-that-is-long-enough";
        let e = err(&[
            ("TENANCY_LISTEN", "0.0.0.0:8080"),
            ("TENANCY_JWT_SECRET", own),
        ]);
        assert!(e.contains("TENANCY_DEMO_USERS"), "{e}");
        assert!(
            Config::from_vars(&vars(&[
                ("TENANCY_LISTEN", "0.0.0.0:8080"),
                ("TENANCY_JWT_SECRET", own),
                ("TENANCY_DEMO_USERS", "false")
            ]))
            .is_ok()
        );
    }

    #[test]
    fn errors_name_the_setting() {
        assert!(err(&[("TENANCY_LISTEN", "nope")]).contains("TENANCY_LISTEN"));
        assert!(err(&[("TENANCY_ENV", "staging")]).contains("TENANCY_ENV"));
        assert!(err(&[("TENANCY_JWT_SECRET", "short")]).contains("TENANCY_JWT_SECRET"));
        assert!(err(&[("TENANCY_DATABASE_URL", "mysql://x")]).contains("TENANCY_DATABASE_URL"));
        assert!(err(&[("TENANCY_REDIS_URL", "http://x")]).contains("TENANCY_REDIS_URL"));
        assert!(err(&[("TENANCY_ACCESS_TOKEN_TTL", "x")]).contains("TENANCY_ACCESS_TOKEN_TTL"));
        assert!(
            err(&[("TENANCY_RATE_LIMIT_FAILURE", "maybe")]).contains("TENANCY_RATE_LIMIT_FAILURE")
        );
        assert!(
            err(&[("TENANCY_DATABASE_RUNTIME_ROLE", "Robert'); DROP")])
                .contains("TENANCY_DATABASE_RUNTIME_ROLE")
        );
        let e = err(&[("TENANCY_METRICS_ALLOW", "10.0.0.0/8, intranet")]);
        assert!(
            e.contains("TENANCY_METRICS_ALLOW") && e.contains("intranet"),
            "{e}"
        );
        assert!(err(&[("TENANCY_METRICS_ALLOW", "10.0.0.0/33")]).contains("TENANCY_METRICS_ALLOW"));
    }

    /// The server's sessions idle out after the issuer's default idle timeout (30 min);
    /// an access token must expire before that.
    #[test]
    fn access_token_ttl_stays_below_the_session_idle_timeout() {
        let idle = tenancy_core::DEFAULT_IDLE_TIMEOUT.as_secs();
        for ttl in [idle, idle + 1, 86_400] {
            let e = err(&[("TENANCY_ACCESS_TOKEN_TTL", &ttl.to_string())]);
            assert!(
                e.contains("TENANCY_ACCESS_TOKEN_TTL")
                    && e.contains(&format!("session idle timeout ({idle} s)")),
                "{ttl}: {e}"
            );
        }
        let ok = Config::from_vars(&vars(&[(
            "TENANCY_ACCESS_TOKEN_TTL",
            &(idle - 1).to_string(),
        )]))
        .unwrap();
        assert_eq!(ok.access_token_ttl, Duration::from_secs(idle - 1));
    }

    #[test]
    fn metrics_are_private_in_prod_and_open_elsewhere() {
        let secret = "0123456789abcdef0123456789abcdef";
        let dev = Config::from_vars(&HashMap::new()).unwrap();
        assert_eq!(dev.metrics_allow, MetricsAllow::Anyone);
        let prod = Config::from_vars(&vars(&[
            ("TENANCY_ENV", "prod"),
            ("TENANCY_JWT_SECRET", secret),
        ]))
        .unwrap();
        assert_eq!(prod.metrics_allow, MetricsAllow::private());
        let e = err(&[
            ("TENANCY_ENV", "prod"),
            ("TENANCY_JWT_SECRET", secret),
            ("TENANCY_METRICS_ALLOW", "any"),
        ]);
        assert!(e.contains("TENANCY_METRICS_ALLOW"), "{e}");
        let listed = Config::from_vars(&vars(&[
            ("TENANCY_ENV", "prod"),
            ("TENANCY_JWT_SECRET", secret),
            ("TENANCY_METRICS_ALLOW", "192.0.2.7, 2001:db8::/32"),
        ]))
        .unwrap();
        let ip = |s: &str| Some(s.parse().unwrap());
        assert!(listed.metrics_allow.allows(ip("192.0.2.7")));
        assert!(listed.metrics_allow.allows(ip("2001:db8::1")));
        assert!(!listed.metrics_allow.allows(ip("127.0.0.1")));
        assert!(!listed.metrics_allow.allows(ip("192.0.2.8")));
    }

    #[test]
    fn trusted_proxies_and_their_header() {
        let none = Config::from_vars(&HashMap::new()).unwrap();
        assert!(none.trusted_proxies.is_empty());
        let listed = Config::from_vars(&vars(&[
            ("TENANCY_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.7"),
            ("TENANCY_FORWARDED_HEADER", "forwarded"),
        ]))
        .unwrap();
        let p = &listed.trusted_proxies;
        assert!(
            p.is_trusted("10.1.2.3".parse().unwrap()) && p.is_trusted("192.0.2.7".parse().unwrap())
        );
        assert!(!p.is_trusted("192.0.2.8".parse().unwrap()));
        assert_eq!(p.header(), tenancy_http::ForwardedHeader::Forwarded);
        let default_header =
            Config::from_vars(&vars(&[("TENANCY_TRUSTED_PROXIES", "10.0.0.1")])).unwrap();
        assert_eq!(
            default_header.trusted_proxies.header(),
            tenancy_http::ForwardedHeader::XForwardedFor
        );
        assert!(
            err(&[("TENANCY_TRUSTED_PROXIES", "10.0.0.0/8, proxy")])
                .contains("TENANCY_TRUSTED_PROXIES")
        );
        assert!(
            err(&[("TENANCY_FORWARDED_HEADER", "x-real-ip")]).contains("TENANCY_FORWARDED_HEADER")
        );
    }

    #[test]
    fn prod_refuses_unsafe_settings() {
        let secret = "0123456789abcdef0123456789abcdef";
        assert!(err(&[("TENANCY_ENV", "prod")]).contains("TENANCY_JWT_SECRET"));
        assert!(
            err(&[
                ("TENANCY_ENV", "prod"),
                ("TENANCY_JWT_SECRET", DEV_JWT_SECRET)
            ])
            .contains("dev secret")
        );
        assert!(
            err(&[
                ("TENANCY_ENV", "prod"),
                ("TENANCY_JWT_SECRET", secret),
                ("TENANCY_DEMO_USERS", "true")
            ])
            .contains("TENANCY_DEMO_USERS")
        );
        let ok = Config::from_vars(&vars(&[
            ("TENANCY_ENV", "prod"),
            ("TENANCY_JWT_SECRET", secret),
        ]))
        .unwrap();
        assert!(!ok.demo_users && !ok.dev_key);
    }

    #[test]
    fn toml_file_with_variables_on_top() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenancy.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\njwt_audience = \"files\"\nhealth_interval_secs = 2\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = Config::from_vars(&vars(&[
            ("TENANCY_CONFIG", p),
            ("TENANCY_JWT_AUDIENCE", "vars"),
        ]))
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.audience, "vars");
        assert_eq!(c.health_interval, Duration::from_secs(2));
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let e = err(&[("TENANCY_CONFIG", p)]);
        assert!(e.contains("TENANCY_CONFIG") && e.contains("lisen"), "{e}");
    }
}
