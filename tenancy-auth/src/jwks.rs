//! Keys from a JWKS URL: [`JwksKeySet`].
//!
//! - **Refresh.** The set is fetched on first use, then again every refresh interval
//!   (default 5 minutes) by a background task when a Tokio runtime is running at build time,
//!   and otherwise on the first verification after the interval.
//! - **Unknown `kid`.** A token naming a key the set does not hold triggers one refresh, at
//!   most once per `min_refresh_interval` (default 30 s), so that a flood of tokens with random
//!   `kid`s costs the provider one request per interval, not one per token. When that refresh
//!   fails, the token may well be signed by a key the provider has just rotated in: the
//!   answer is [`tenancy_core::Error::Unavailable`] (retry later), not a refusal. Without a
//!   request (rate limited, breaker open) the cached set decides: the key is unknown.
//! - **Outage.** A failed fetch keeps the last good set: verification goes on with the cached
//!   keys. After `failure_threshold` consecutive failures (default 3) the circuit breaker opens
//!   for `open_for` (default 30 s): no request is sent while it is open; then one trial request
//!   decides. [`JwksKeySet::breaker`] and the [`HealthCheck`] impl show the state (`Degraded`
//!   while serving cached keys during an outage, `Down` when no set was ever fetched, in which
//!   case verification answers [`tenancy_core::Error::Unavailable`]).
//! - **Rotation.** A new key appears: it verifies as soon as the set is refreshed (an unknown
//!   `kid` triggers that refresh). An old key is retired: it stops verifying at the next
//!   refresh, and the verifier's cache is emptied so no token signed by it is served from
//!   cache.
//!   A key without a `kid` is told apart by its algorithm and key material: republished
//!   unchanged, it is not retired.
//! - **Safety.** Only `https://` URLs unless [`JwksKeySetBuilder::allow_plain_http`] is set;
//!   responses are capped at 1 MiB and the fetch timeout (5 s by default), whichever
//!   [`JwksFetcher`] fetches them; keys this crate cannot use are skipped, a document
//!   with no usable key is a failed fetch (it never replaces a good set). Symmetric (HMAC)
//!   keys are always skipped, with a warning: the document is public, and a secret anyone can
//!   read would let anyone sign tokens ([`KeySet::from_jwks`]). Logs and `Debug` output show
//!   the URL without its user information, query and fragment, which may carry credentials.
//!
//! ```no_run
//! use std::time::Duration;
//! use tenancy_auth::{Algorithm, JwksKeySet, JwtVerifier};
//!
//! # #[tokio::main] async fn main() -> Result<(), tenancy_auth::Error> {
//! let jwks = JwksKeySet::builder("https://id.example/.well-known/jwks.json")
//!     .refresh_interval(Duration::from_secs(600))
//!     .build()?;
//! let verifier = JwtVerifier::builder()
//!     .issuer("https://id.example/", jwks.clone())
//!     .audience("api")
//!     .algorithms([Algorithm::RS256, Algorithm::ES256])
//!     .build()?;
//! jwks.refresh().await?; // optional: fetch now rather than on the first token
//! # let _ = verifier; Ok(()) }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tenancy_core::{Health, HealthCheck, SharedClock, system_clock};

use crate::error::{Error, Result};
use crate::key::KeySet;

/// Default interval between background refreshes.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// Shortest refresh interval and unknown-`kid` refresh interval [`JwksKeySetBuilder::build`]
/// accepts: below it, a flood of tokens with random `kid`s would fetch the set for nearly
/// every token.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Default least time between two refreshes caused by unknown `kid`s.
///
/// Why this default: a legitimate rotation is picked up within 30 s, while tokens with random
/// `kid`s can make us call the provider at most twice a minute.
pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Default consecutive failures that open the circuit breaker.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// Default time the breaker stays open before a trial request.
pub const DEFAULT_OPEN_FOR: Duration = Duration::from_secs(30);
/// Default timeout of one fetch.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Fetches a JWKS document. The default is an HTTP(S) client (hyper + rustls); implement this
/// to fetch through your own client or proxy.
///
/// Whatever the fetcher, [`JwksKeySet`] bounds each fetch by its
/// [fetch timeout](JwksKeySetBuilder::fetch_timeout) and refuses a body over
/// [`MAX_JWKS_BYTES`]; a fetcher that can stop reading early (as [`HttpFetcher`] does) should,
/// so that a huge body is not read whole first. The timeout is a Tokio timer: fetches must run
/// on a Tokio runtime with time enabled, as the built-in client's do.
#[async_trait]
pub trait JwksFetcher: Send + Sync + fmt::Debug + 'static {
    /// The body of a successful (2xx) response for `url`.
    async fn fetch(&self, url: &str) -> Result<Bytes>;
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The default [`JwksFetcher`]: HTTP/1.1 over rustls (*ring*), with a timeout and a size cap.
#[derive(Clone)]
pub struct HttpFetcher {
    client: HttpsClient,
    timeout: Duration,
}

impl fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpFetcher")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpFetcher {
    /// A client trusting the system's root certificates.
    pub fn new(timeout: Duration) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(|e| Error::Fetch(Box::new(e)))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self::from_connector(connector, timeout))
    }

    /// A client with this TLS configuration (a private CA, client certificates, ...).
    pub fn with_tls_config(config: rustls::ClientConfig, timeout: Duration) -> Self {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        Self::from_connector(connector, timeout)
    }

    /// A client for plain `http://` URLs only (no root certificates needed).
    fn plain(timeout: Duration) -> Result<Self> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Fetch(Box::new(e)))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        Ok(Self::with_tls_config(config, timeout))
    }

    fn from_connector(
        connector: hyper_rustls::HttpsConnector<HttpConnector>,
        timeout: Duration,
    ) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self { client, timeout }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("JWKS endpoint answered HTTP {0}")]
struct StatusError(u16);

#[derive(Debug, thiserror::Error)]
#[error("JWKS fetch timed out after {0:?}")]
struct TimeoutError(Duration);

#[derive(Debug, thiserror::Error)]
#[error("JWKS document of {0} bytes is over the limit of {MAX_JWKS_BYTES} bytes")]
struct TooLargeError(usize);

#[async_trait]
impl JwksFetcher for HttpFetcher {
    async fn fetch(&self, url: &str) -> Result<Bytes> {
        let uri: http::Uri = url.parse().map_err(|e| Error::Fetch(Box::new(e)))?;
        let req = http::Request::get(uri)
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| Error::Fetch(Box::new(e)))?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| Error::Fetch(Box::new(e)))?;
            if !resp.status().is_success() {
                return Err(Error::Fetch(Box::new(StatusError(resp.status().as_u16()))));
            }
            let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(Error::Fetch)?;
            Ok(body.to_bytes())
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| Error::Fetch(Box::new(TimeoutError(self.timeout))))?
    }
}

/// The circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Fetches go through.
    Closed,
    /// Too many consecutive failures: no request is sent until `retry_in` has passed.
    Open {
        /// Time left before the next trial request.
        retry_in: Duration,
    },
    /// The open period is over and the next fetch is a trial: success closes the breaker,
    /// failure opens it again.
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
struct Config {
    refresh_interval: Duration,
    min_refresh_interval: Duration,
    failure_threshold: u32,
    open_for: Duration,
}

#[derive(Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    fetched_at: Option<u64>,
    last_kid_refresh: Option<u64>,
    consecutive_failures: u32,
    open_until: Option<u64>,
    last_error: Option<String>,
    fetches: u64,
    failures: u64,
    skipped_keys: usize,
    /// Completed fetch attempts, including those refused by the open breaker.
    attempts: u64,
}

struct Inner {
    url: String,
    /// `url` as logs and `Debug` show it ([`redact_url`]).
    shown_url: String,
    fetcher: Arc<dyn JwksFetcher>,
    /// Bound on one fetch, whatever the fetcher.
    timeout: Duration,
    cfg: Config,
    clock: SharedClock,
    state: RwLock<State>,
    fetch_lock: tokio::sync::Mutex<()>,
    epochs: Mutex<Vec<Weak<AtomicU64>>>,
    background: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(h) = self
            .background
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            h.abort();
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Builds a [`JwksKeySet`]; see [`JwksKeySet::builder`].
#[derive(Debug)]
#[must_use]
pub struct JwksKeySetBuilder {
    url: String,
    fetcher: Option<Arc<dyn JwksFetcher>>,
    cfg: Config,
    timeout: Duration,
    allow_http: bool,
    background: bool,
    clock: SharedClock,
}

impl JwksKeySetBuilder {
    /// Interval between refreshes (default [`DEFAULT_REFRESH_INTERVAL`]; at least 1 s, or
    /// [`build`](Self::build) refuses).
    pub fn refresh_interval(mut self, d: Duration) -> Self {
        self.cfg.refresh_interval = d;
        self
    }

    /// Least time between two refreshes caused by unknown `kid`s (default
    /// [`DEFAULT_MIN_REFRESH_INTERVAL`]; at least 1 s, or [`build`](Self::build) refuses:
    /// shorter, tokens with random `kid`s would make nearly every verification a fetch).
    pub fn min_refresh_interval(mut self, d: Duration) -> Self {
        self.cfg.min_refresh_interval = d;
        self
    }

    /// Consecutive failures that open the breaker (default [`DEFAULT_FAILURE_THRESHOLD`]).
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.cfg.failure_threshold = n.max(1);
        self
    }

    /// How long the breaker stays open (default [`DEFAULT_OPEN_FOR`]).
    pub fn open_for(mut self, d: Duration) -> Self {
        self.cfg.open_for = d;
        self
    }

    /// Timeout of one fetch (default [`DEFAULT_FETCH_TIMEOUT`]), with the default client or
    /// one given to [`fetcher`](Self::fetcher).
    pub fn fetch_timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Fetches with this client instead of the default one.
    pub fn fetcher(mut self, fetcher: Arc<dyn JwksFetcher>) -> Self {
        self.fetcher = Some(fetcher);
        self
    }

    /// Accepts an `http://` URL. Only for tests and for providers reached over a trusted
    /// local link: a key set fetched in clear can be replaced by anyone on the path.
    pub fn allow_plain_http(mut self) -> Self {
        self.allow_http = true;
        self
    }

    /// Whether to start the background refresh task (default: yes, when built inside a Tokio
    /// runtime). Without it the set is refreshed on use once the interval has passed.
    pub fn background_refresh(mut self, on: bool) -> Self {
        self.background = on;
        self
    }

    /// The clock for refresh intervals and the breaker (default: the system clock).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Checks the configuration and builds the source (nothing is fetched yet).
    ///
    /// Errors ([`Error::Config`]): a URL that is not `https://` (or `http://` with
    /// [`allow_plain_http`](Self::allow_plain_http)); a refresh interval or unknown-`kid`
    /// refresh interval under 1 s.
    pub fn build(self) -> Result<JwksKeySet> {
        let is_https = self.url.starts_with("https://");
        let is_http = self.url.starts_with("http://");
        if !(is_https || (is_http && self.allow_http)) {
            return Err(Error::Config(
                "the JWKS URL must be https:// (or http:// with allow_plain_http)".into(),
            ));
        }
        for (what, d) in [
            ("refresh_interval", self.cfg.refresh_interval),
            ("min_refresh_interval", self.cfg.min_refresh_interval),
        ] {
            if d < MIN_INTERVAL {
                return Err(Error::Config(
                    format!(
                        "JWKS {what} ({} s) must be at least {} s: shorter, tokens with \
                         unknown kids would fetch the key set for nearly every token",
                        d.as_secs_f64(),
                        MIN_INTERVAL.as_secs(),
                    )
                    .into(),
                ));
            }
        }
        let fetcher: Arc<dyn JwksFetcher> = match self.fetcher {
            Some(f) => f,
            None if is_https => Arc::new(HttpFetcher::new(self.timeout)?),
            None => Arc::new(HttpFetcher::plain(self.timeout)?),
        };
        let set = JwksKeySet {
            inner: Arc::new(Inner {
                shown_url: redact_url(&self.url),
                url: self.url,
                fetcher,
                timeout: self.timeout,
                cfg: self.cfg,
                clock: self.clock,
                state: RwLock::new(State::default()),
                fetch_lock: tokio::sync::Mutex::new(()),
                epochs: Mutex::new(Vec::new()),
                background: Mutex::new(None),
            }),
        };
        if self.background
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let weak = Arc::downgrade(&set.inner);
            let every = self.cfg.refresh_interval.max(Duration::from_secs(1));
            let handle = rt.spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(inner) = weak.upgrade() else { break };
                    let _ = JwksKeySet { inner }.refresh().await;
                }
            });
            *set.inner
                .background
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle);
        }
        Ok(set)
    }
}

/// A key set fetched from a JWKS URL and kept fresh; see the [module docs](crate::jwks).
/// Cheap to clone (clones share the cached set).
#[derive(Clone)]
pub struct JwksKeySet {
    inner: Arc<Inner>,
}

impl fmt::Debug for JwksKeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksKeySet")
            .field("url", &self.inner.shown_url)
            .field("keys", &self.cached().map(|k| k.len()))
            .field("breaker", &self.breaker())
            .finish()
    }
}

impl JwksKeySet {
    /// A builder for the JWKS at `url`.
    pub fn builder(url: impl Into<String>) -> JwksKeySetBuilder {
        JwksKeySetBuilder {
            url: url.into(),
            fetcher: None,
            cfg: Config {
                refresh_interval: DEFAULT_REFRESH_INTERVAL,
                min_refresh_interval: DEFAULT_MIN_REFRESH_INTERVAL,
                failure_threshold: DEFAULT_FAILURE_THRESHOLD,
                open_for: DEFAULT_OPEN_FOR,
            },
            timeout: DEFAULT_FETCH_TIMEOUT,
            allow_http: false,
            background: true,
            clock: system_clock(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now(&self) -> u64 {
        self.inner.clock.now_nanos()
    }

    /// The URL this set is fetched from, as given (with any credentials in it; logs and
    /// `Debug` output show it redacted).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The last good key set, if one was ever fetched.
    pub fn cached(&self) -> Option<Arc<KeySet>> {
        self.read().keys.clone()
    }

    /// The circuit breaker's state now.
    pub fn breaker(&self) -> BreakerState {
        let now = self.now();
        let s = self.read();
        match s.open_until {
            Some(until) if until > now => BreakerState::Open {
                retry_in: Duration::from_nanos(until - now),
            },
            Some(_) => BreakerState::HalfOpen,
            None => BreakerState::Closed,
        }
    }

    /// How many fetches were attempted (requests actually sent) and how many failed.
    pub fn fetch_counts(&self) -> (u64, u64) {
        let s = self.read();
        (s.fetches, s.failures)
    }

    pub(crate) fn attach_epoch(&self, epoch: &Arc<AtomicU64>) {
        self.inner
            .epochs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::downgrade(epoch));
    }

    fn bump_epochs(&self) {
        let mut epochs = self
            .inner
            .epochs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        epochs.retain(|w| match w.upgrade() {
            Some(e) => {
                e.fetch_add(1, Ordering::AcqRel);
                true
            }
            None => false,
        });
    }

    /// Fetches the set now (single flight: concurrent callers wait for the same fetch).
    ///
    /// The fetch runs on a task of its own: a caller that stops waiting (a request dropped
    /// by its client or a timeout) does not abort it, and its outcome is recorded all the
    /// same: the new set, or a failure that counts toward the breaker. (Aborted with each
    /// dropped caller, a slow provider would be asked again by every request, and its
    /// failures never open the breaker.)
    ///
    /// Errors: [`Error::CircuitOpen`] while the breaker is open (nothing is sent),
    /// [`Error::Fetch`] or [`Error::InvalidKeySet`] when the fetch fails; the last good set is
    /// kept either way.
    pub async fn refresh(&self) -> Result<Arc<KeySet>> {
        let this = self.clone();
        match tokio::spawn(async move { this.refresh_here().await }).await {
            Ok(done) => done,
            // The task panicked, or its runtime is shutting down.
            Err(e) => Err(Error::Fetch(Box::new(e))),
        }
    }

    /// [`JwksKeySet::refresh`], on the caller's task.
    async fn refresh_here(&self) -> Result<Arc<KeySet>> {
        let attempts_before = self.read().attempts;
        let _guard = self.inner.fetch_lock.lock().await;
        // Someone else fetched while we waited: use that rather than asking again.
        if self.read().attempts != attempts_before
            && let Some(k) = self.cached()
        {
            return Ok(k);
        }
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<Arc<KeySet>> {
        let now = self.now();
        {
            let mut s = self.write();
            s.attempts += 1;
            if s.open_until.is_some_and(|until| until > now) {
                return Err(Error::CircuitOpen);
            }
            s.fetches += 1;
        }
        let result = self
            .bounded_fetch()
            .await
            .and_then(|body| KeySet::parse_jwks(&body))
            .and_then(|parsed| {
                parsed.warn(&self.inner.shown_url);
                if parsed.set.is_empty() {
                    Err(Error::InvalidKeySet(
                        "the key set holds no usable key".into(),
                    ))
                } else {
                    Ok((parsed.set, parsed.skipped))
                }
            });
        let now = self.now();
        match result {
            Ok((set, skipped)) => {
                let set = Arc::new(set);
                let retired = {
                    let mut s = self.write();
                    // A key is retired when no equal key (kid, algorithm and material)
                    // remains: its kid is gone, or now names other material or another
                    // algorithm (a replaced, perhaps compromised, key).
                    let retired = s.keys.as_ref().is_some_and(|old| {
                        old.iter().any(|k| !set.iter().any(|new| new.same_as(k)))
                    });
                    s.keys = Some(Arc::clone(&set));
                    s.fetched_at = Some(now);
                    s.consecutive_failures = 0;
                    s.open_until = None;
                    s.last_error = None;
                    s.skipped_keys = skipped;
                    retired
                };
                if retired {
                    self.bump_epochs();
                }
                tracing::debug!(url = %self.inner.shown_url, keys = set.len(), skipped, "JWKS refreshed");
                Ok(set)
            }
            Err(e) => {
                let mut s = self.write();
                s.failures += 1;
                s.consecutive_failures += 1;
                s.last_error = Some(error_chain(&e));
                if s.consecutive_failures >= self.inner.cfg.failure_threshold {
                    s.open_until = Some(now.saturating_add(nanos(self.inner.cfg.open_for)));
                }
                tracing::warn!(
                    url = %self.inner.shown_url,
                    consecutive_failures = s.consecutive_failures,
                    error = %error_chain(&e),
                    "JWKS fetch failed; serving the last good key set"
                );
                Err(e)
            }
        }
    }

    /// The fetcher's answer within the fetch timeout and size limit: a custom fetcher is
    /// held to them as the built-in one is.
    async fn bounded_fetch(&self) -> Result<Bytes> {
        let timeout = self.inner.timeout;
        let body = tokio::time::timeout(timeout, self.inner.fetcher.fetch(&self.inner.url))
            .await
            .map_err(|_| Error::Fetch(Box::new(TimeoutError(timeout))))??;
        if body.len() > MAX_JWKS_BYTES {
            return Err(Error::Fetch(Box::new(TooLargeError(body.len()))));
        }
        Ok(body)
    }

    /// The keys to verify a token with `kid`: fetches on first use, refreshes when stale, and
    /// once per `min_refresh_interval` when `kid` is unknown.
    ///
    /// [`tenancy_core::Error::Unavailable`] when no set was ever fetched and fetching fails,
    /// and when `kid` is unknown and the fetch made for this call failed: the provider may
    /// publish the key, it could not be asked. When no fetch was made (the unknown-`kid` rate
    /// limit, the open breaker) the cached set answers, and the token's key is unknown to it.
    pub(crate) async fn keys_for(&self, kid: Option<&str>) -> tenancy_core::Result<Arc<KeySet>> {
        let now = self.now();
        let (keys, stale) = {
            let s = self.read();
            let stale = s
                .fetched_at
                .is_none_or(|at| now.saturating_sub(at) >= nanos(self.inner.cfg.refresh_interval));
            (s.keys.clone(), stale)
        };
        let Some(keys) = keys else {
            return self
                .refresh()
                .await
                .map_err(tenancy_core::Error::unavailable);
        };
        if stale && !matches!(self.breaker(), BreakerState::Open { .. }) {
            // Stale and nobody fetching: refresh now (on the fetch's own task, see `refresh`);
            // on failure keep serving cached keys.
            let idle = self.inner.fetch_lock.try_lock().is_ok();
            let fetched = if idle {
                Some(self.refresh().await)
            } else {
                None
            };
            match fetched {
                // Just fetched: a kid unknown to this set is unknown to the provider now.
                Some(Ok(k)) => return Ok(k),
                // Just failed: a kid unknown to the cached set is not asked for again at once.
                Some(Err(e)) => return self.unknown_kid(keys, kid, Some(e)).await,
                None => {}
            }
        }
        self.unknown_kid(keys, kid, None).await
    }

    /// `keys`, unless `kid` is unknown to them: then one refresh (rate limited), whose
    /// failure is `Unavailable`, as is `failed`, a fetch that just failed for this call.
    async fn unknown_kid(
        &self,
        keys: Arc<KeySet>,
        kid: Option<&str>,
        failed: Option<Error>,
    ) -> tenancy_core::Result<Arc<KeySet>> {
        let Some(kid) = kid else { return Ok(keys) };
        if keys.get(kid).is_some() {
            return Ok(keys);
        }
        if let Some(e) = failed {
            return failed_refresh(e, keys);
        }
        let now = self.now();
        {
            let mut s = self.write();
            let min = nanos(self.inner.cfg.min_refresh_interval);
            if s.last_kid_refresh
                .is_some_and(|at| now.saturating_sub(at) < min)
            {
                return Ok(keys);
            }
            s.last_kid_refresh = Some(now);
        }
        match self.refresh().await {
            Ok(k) => Ok(k),
            Err(e) => failed_refresh(e, keys),
        }
    }

    /// The source's health: `Up` with a fresh set, `Degraded` while serving a cached set
    /// after failed fetches, `Down` when no set was ever fetched and fetching fails.
    pub fn health(&self) -> Health {
        let now = self.now();
        let breaker = self.breaker();
        let s = self.read();
        let keys = s.keys.as_ref().map_or(0, |k| k.len() as u64);
        let mut h = match (&s.keys, s.consecutive_failures) {
            (Some(_), 0) => Health::up(),
            (Some(_), n) => Health::degraded(format!(
                "serving cached keys after {n} failed fetches ({})",
                s.last_error.as_deref().unwrap_or("unknown error")
            )),
            (None, 0) => Health::up().with_figure("not_fetched_yet", 1),
            (None, n) => Health::down(format!(
                "no key set: {n} failed fetches ({})",
                s.last_error.as_deref().unwrap_or("unknown error")
            )),
        };
        let breaker_figure = match breaker {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open { .. } => 2,
        };
        h = h
            .with_figure("keys", keys)
            .with_figure("skipped_keys", s.skipped_keys as u64)
            .with_figure("consecutive_failures", u64::from(s.consecutive_failures))
            .with_figure("fetches", s.fetches)
            .with_figure("failures", s.failures)
            .with_figure("breaker", breaker_figure);
        if let Some(at) = s.fetched_at {
            h = h.with_figure("age_secs", now.saturating_sub(at) / 1_000_000_000);
        }
        h
    }
}

/// The answer for a token whose `kid` the cached `keys` lack, after the refresh for it
/// failed with `e`: `Unavailable` when a request was sent (the provider may publish the key),
/// the cached set when none was (the open breaker), which then refuses the key as unknown.
fn failed_refresh(e: Error, keys: Arc<KeySet>) -> tenancy_core::Result<Arc<KeySet>> {
    match e {
        Error::CircuitOpen => Ok(keys),
        e => Err(tenancy_core::Error::unavailable(e)),
    }
}

/// `url` without what may carry credentials: the user information (`user:password@`) and
/// the query and fragment are replaced by `[redacted]`.
fn redact_url(url: &str) -> String {
    const R: &str = "[redacted]";
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    match authority.rsplit_once('@') {
        Some((_, host)) => {
            out.push_str(R);
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    match tail.find(['?', '#']) {
        Some(i) => {
            out.push_str(&tail[..i]);
            out.push_str(&tail[i..=i]);
            out.push_str(R);
        }
        None => out.push_str(tail),
    }
    out
}

fn error_chain(e: &Error) -> String {
    let mut out = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[async_trait]
impl HealthCheck for JwksKeySet {
    fn component(&self) -> &str {
        "jwks"
    }

    async fn check(&self) -> Health {
        self.health()
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    #[test]
    fn urls_are_redacted_for_display() {
        for (url, shown) in [
            (
                "https://id.example/.well-known/jwks.json",
                "https://id.example/.well-known/jwks.json",
            ),
            (
                "https://user:hunter2@id.example:8443/jwks?api_key=s3cret#frag",
                "https://[redacted]@id.example:8443/jwks?[redacted]",
            ),
            (
                "http://127.0.0.1:8080?token=x",
                "http://127.0.0.1:8080?[redacted]",
            ),
            (
                "https://id.example/jwks#k",
                "https://id.example/jwks#[redacted]",
            ),
            ("https://a@b@id.example/", "https://[redacted]@id.example/"),
            (
                "https://id.example/p@th/jwks",
                "https://id.example/p@th/jwks",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    /// Serves a fixed document, or fails.
    #[derive(Debug)]
    struct Fixed(Option<&'static str>);

    #[async_trait]
    impl JwksFetcher for Fixed {
        async fn fetch(&self, _url: &str) -> Result<Bytes> {
            match self.0 {
                Some(doc) => Ok(Bytes::from_static(doc.as_bytes())),
                None => Err(Error::Fetch("provider down".into())),
            }
        }
    }

    /// Never answers.
    #[derive(Debug)]
    struct Hangs;

    #[async_trait]
    impl JwksFetcher for Hangs {
        async fn fetch(&self, _url: &str) -> Result<Bytes> {
            std::future::pending().await
        }
    }

    /// Serves a document of its own making.
    #[derive(Debug)]
    struct Owned(Bytes);

    #[async_trait]
    impl JwksFetcher for Owned {
        async fn fetch(&self, _url: &str) -> Result<Bytes> {
            Ok(self.0.clone())
        }
    }

    /// Serves its document after a while.
    #[derive(Debug)]
    struct Slow(Bytes, Duration);

    #[async_trait]
    impl JwksFetcher for Slow {
        async fn fetch(&self, _url: &str) -> Result<Bytes> {
            tokio::time::sleep(self.1).await;
            Ok(self.0.clone())
        }
    }

    /// A caller that stops waiting does not abort the fetch: its set arrives all the same,
    /// and the next caller is served from it without asking the provider again.
    #[tokio::test(start_paused = true)]
    async fn a_fetch_outlives_the_caller_that_stopped_waiting() {
        const DOC: &str = r#"{"keys":[
            {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]}"#;
        let source = with_fetcher(Slow(
            Bytes::from_static(DOC.as_bytes()),
            Duration::from_millis(200),
        ))
        .build()
        .unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(50), source.refresh()).await;
        assert!(gave_up.is_err(), "the caller was meant to stop waiting");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            source.cached().map(|k| k.len()),
            Some(1),
            "the fetch was aborted"
        );
        assert_eq!(source.fetch_counts(), (1, 0));
        source.keys_for(Some("ed")).await.unwrap();
        assert_eq!(source.fetch_counts(), (1, 0), "asked again");
    }

    fn with_fetcher(fetcher: impl JwksFetcher) -> JwksKeySetBuilder {
        JwksKeySet::builder(URL)
            .fetcher(Arc::new(fetcher))
            .background_refresh(false)
    }

    fn is_fetch_error<E: std::error::Error + 'static>(e: &Error) -> bool {
        matches!(e, Error::Fetch(inner) if inner.is::<E>())
    }

    /// A custom fetcher that never answers is cut off at the fetch timeout, as the built-in
    /// client is, and counts as a failed fetch.
    #[tokio::test(start_paused = true)]
    async fn a_custom_fetcher_is_held_to_the_fetch_timeout() {
        for (configured, limit) in [
            (None, DEFAULT_FETCH_TIMEOUT),
            (Some(Duration::from_secs(2)), Duration::from_secs(2)),
        ] {
            let mut b = with_fetcher(Hangs);
            if let Some(d) = configured {
                b = b.fetch_timeout(d);
            }
            let source = b.build().unwrap();
            let started = tokio::time::Instant::now();
            // Bounded here too, so that a fetch left unbounded fails the test, not hangs it.
            let e = tokio::time::timeout(limit * 2, source.refresh())
                .await
                .expect("the fetch was not cut off")
                .unwrap_err();
            assert!(is_fetch_error::<TimeoutError>(&e), "{e:?}");
            assert_eq!(started.elapsed(), limit);
            assert_eq!(source.fetch_counts(), (1, 1));
        }
    }

    /// A custom fetcher's body over [`MAX_JWKS_BYTES`] is refused (the last good set stays);
    /// one of exactly the limit is read.
    #[tokio::test]
    async fn a_custom_fetcher_is_held_to_the_size_limit() {
        const DOC: &str = r#"{"keys":[
            {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]}"#;
        let padded = |len: usize| {
            let mut doc = DOC.as_bytes().to_vec();
            doc.resize(len, b' ');
            Bytes::from(doc)
        };
        let at_limit = with_fetcher(Owned(padded(MAX_JWKS_BYTES))).build().unwrap();
        assert_eq!(at_limit.refresh().await.unwrap().len(), 1);

        let over = with_fetcher(Owned(padded(MAX_JWKS_BYTES + 1)))
            .build()
            .unwrap();
        let e = over.refresh().await.unwrap_err();
        assert!(is_fetch_error::<TooLargeError>(&e), "{e:?}");
        assert!(over.cached().is_none());
        assert_eq!(over.fetch_counts(), (1, 1));
    }

    /// Refresh intervals under a second would let tokens with random `kid`s fetch the set
    /// for nearly every token: refused at build, with the setting named.
    #[test]
    fn refresh_intervals_under_a_second_are_refused() {
        let zero = Duration::ZERO;
        let short = Duration::from_millis(999);
        for (name, b) in [
            ("refresh_interval", source_builder().refresh_interval(zero)),
            ("refresh_interval", source_builder().refresh_interval(short)),
            (
                "min_refresh_interval",
                source_builder().min_refresh_interval(zero),
            ),
            (
                "min_refresh_interval",
                source_builder().min_refresh_interval(short),
            ),
        ] {
            let e = b.build().unwrap_err();
            assert!(
                matches!(&e, Error::Config(m) if m.contains(&format!("JWKS {name} (")) && m.contains("at least 1 s")),
                "{name}: {e:?}"
            );
        }
        source_builder()
            .refresh_interval(MIN_INTERVAL)
            .min_refresh_interval(MIN_INTERVAL)
            .build()
            .unwrap();
    }

    fn source_builder() -> JwksKeySetBuilder {
        with_fetcher(Fixed(None))
    }

    /// Records every event's fields as text.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<String>>);

    struct Fields<'a>(&'a mut String);

    impl tracing::field::Visit for Fields<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
            let _ = write!(self.0, "{}={:?} ", field.name(), value);
        }
    }

    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut out = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = write!(out, "{} ", event.metadata().level());
            event.record(&mut Fields(&mut out));
            out.push('\n');
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    const URL: &str = "https://alice:hunter2@id.example/jwks?api_key=s3cret";

    fn source(doc: Option<&'static str>) -> JwksKeySet {
        JwksKeySet::builder(URL)
            .fetcher(Arc::new(Fixed(doc)))
            .background_refresh(false)
            .build()
            .unwrap()
    }

    /// A kid naming two different keys of one algorithm: neither is used, the rest of the set
    /// is, and the warning names the kid.
    #[test]
    fn a_kid_naming_two_keys_of_one_algorithm_is_named_in_a_warning() {
        let own = crate::SigningKey::ed_pem(include_bytes!("../tests/keys/ed_private.pem"))
            .unwrap()
            .with_kid("d")
            .public_jwk()
            .unwrap()
            .unwrap();
        const RFC: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let doc = serde_json::json!({"keys": [
            own,
            {"kty": "OKP", "crv": "Ed25519", "kid": "d", "x": RFC},
            {"kty": "OKP", "crv": "Ed25519", "kid": "good", "x": RFC},
        ]})
        .to_string();
        let capture = Capture::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let up = source(Some(Box::leak(doc.into_boxed_str())));
        tracing::subscriber::with_default(capture.clone(), || {
            rt.block_on(async {
                let keys = up.refresh().await.unwrap();
                assert_eq!(keys.len(), 1);
                assert!(keys.get("good").is_some() && keys.get("d").is_none());
            });
        });
        assert_eq!(up.health().figures.get("skipped_keys"), Some(&2));
        let logged = capture.0.lock().unwrap().clone();
        assert!(
            logged.contains("WARN") && logged.contains("same kid") && logged.contains("[\"d\"]"),
            "no warning naming the kid: {logged}"
        );
    }

    #[test]
    fn logs_and_debug_hide_url_credentials_and_symmetric_keys_warn() {
        // One Ed25519 key and one published HMAC secret.
        const DOC: &str = r#"{"keys":[
            {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"oct","kid":"shared","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}
        ]}"#;
        let capture = Capture::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (down, up) = (source(None), source(Some(DOC)));
        tracing::subscriber::with_default(capture.clone(), || {
            rt.block_on(async {
                assert!(down.refresh().await.is_err());
                let keys = up.refresh().await.unwrap();
                assert_eq!(keys.len(), 1);
                assert!(
                    keys.get("shared").is_none(),
                    "a published secret was loaded"
                );
            });
        });
        assert_eq!(up.health().figures.get("skipped_keys"), Some(&1));
        let logged = capture.0.lock().unwrap().clone();
        assert!(logged.contains("id.example/jwks"), "{logged}");
        assert!(
            logged.contains("WARN") && logged.contains("symmetric=1"),
            "no warning about the symmetric key: {logged}"
        );
        for shown in [logged, format!("{down:?}"), format!("{up:?}")] {
            assert!(
                !shown.contains("hunter2") && !shown.contains("s3cret") && !shown.contains("alice"),
                "credentials shown: {shown}"
            );
        }
        assert_eq!(up.url(), URL);
    }
}
