//! `tenancy-actix-server`: the reference server's HTTP contract on actix-web.
//!
//! Nothing here decides anything about tenants, tokens, limits, records or audit. The
//! [`App`] is `tenancy-server`'s (same [`Config`], same backends), the request steps are the
//! [`tenancy_actix`] middleware deciding with the app's own [`Tenancy`](tenancy_actix::Tenancy),
//! and every handler calls the framework-free endpoint of [`tenancy_server::web`] that the
//! axum route calls (body and query parsing, problem rendering and the `/metrics` address
//! rule included). What is left is actix-web glue: handing the request's parts to the
//! endpoint and its answer to actix-web.
//!
//! - [`serve`]: serve an [`App`] on a listener you bound (tests bind `127.0.0.1:0`).
//! - [`start`]: build the [`App`] from a [`Config`], bind `config.listen`, serve.
//! - [`Server::shutdown`]: stop accepting, finish in-flight requests, drain the audit queue.
//! - [`configure`] and [`middleware`]: the routes and the tenancy middleware, to mount the
//!   API in an actix-web application of your own.
//!
//! ```
//! use std::io::{Read as _, Write as _};
//! use tenancy_server::{App, Config};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let app = App::build(Config::for_tests(dir.path())).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = tenancy_actix_server::serve(app, listener).await?;
//!
//! let addr = server.local_addr();
//! let answer = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
//!     let mut s = std::net::TcpStream::connect(addr)?;
//!     s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
//!     let mut out = String::new();
//!     s.read_to_string(&mut out)?;
//!     Ok(out)
//! })
//! .await??;
//! assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
//! assert!(answer.to_ascii_lowercase().contains("x-request-id:"));
//! server.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Features
//! | feature | enables | default |
//! |---------|---------|---------|
//! | —       | this crate has no optional features: memory, PostgreSQL and Redis are chosen at run time, as in `tenancy-server` | — |

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod handlers;

use std::net::SocketAddr;

use actix_web::dev::ServerHandle;
use actix_web::{HttpServer, web};
use tenancy_actix::TenancyMiddleware;
pub use tenancy_server::{App, Config};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What starting, serving or stopping the actix-web server can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Building or shutting down the [`App`] failed (a setting, a backend, or audit events
    /// left in the spool at shutdown); the inner error names which.
    #[error(transparent)]
    App(#[from] tenancy_server::Error),
    /// The listener could not be handed to actix-web.
    #[error("cannot serve on the listener")]
    Listen(#[source] std::io::Error),
    /// The HTTP server stopped with an error, or its task failed.
    #[error("the HTTP server failed")]
    Serve(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// How long [`Server::shutdown`] lets in-flight requests finish, in seconds.
///
/// Why 30: long enough for any request of this API (the slowest waits a few seconds for the
/// audit store), short enough for a process supervisor's stop timeout.
pub const SHUTDOWN_TIMEOUT_SECS: u64 = 30;

/// The tenancy middleware deciding with `app`'s [`Tenancy`](tenancy_actix::Tenancy): request
/// id, authentication, tenant resolution, rate limits and audit, exactly as the axum server
/// applies them.
pub fn middleware(app: &App) -> TenancyMiddleware {
    TenancyMiddleware::new(app.tenancy().clone())
}

/// Registers every route of the contract, the 64 KiB body limit and the `404` fallback.
/// The application must carry the [`App`] as `web::Data<App>` and be wrapped in
/// [`middleware`], and outside it in [`tenancy_actix::DrainBody`], as [`serve`] wraps it.
///
/// ```
/// use actix_web::web;
/// use tenancy_server::{App, Config};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let app = App::build(Config::for_tests(dir.path())).await?;
/// let service = actix_web::App::new()
///     .wrap(tenancy_actix_server::middleware(&app))
///     .wrap(tenancy_actix::DrainBody::default())
///     .app_data(web::Data::new(app.clone()))
///     .configure(tenancy_actix_server::configure);
/// # let _ = service;
/// app.shutdown().await?;
/// # Ok(()) }
/// ```
pub fn configure(cfg: &mut web::ServiceConfig) {
    handlers::configure(cfg);
}

/// A running actix-web server: its address, its [`App`], and a graceful
/// [`Server::shutdown`].
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    app: App,
    handle: ServerHandle,
    task: JoinHandle<std::io::Result<()>>,
}

/// Serves `app` on `listener` (already bound) until [`Server::shutdown`]. Must be called
/// inside a Tokio runtime; actix-web runs its workers on threads of their own.
///
/// The server does not listen for signals itself: the caller decides when to stop (the
/// binary stops on SIGINT and SIGTERM). As the axum server, it closes a connection whose
/// request head has not arrived within the configured
/// [`idle_timeout`](tenancy_server::Config::idle_timeout), kept-alive connections between
/// requests included.
///
/// # Errors
/// [`Error::Listen`] when the listener cannot be handed over.
pub async fn serve(app: App, listener: TcpListener) -> Result<Server> {
    let listener = listener.into_std().map_err(Error::Listen)?;
    let addr = listener.local_addr().map_err(Error::Listen)?;
    let shared = app.clone();
    let idle_timeout = app.config().idle_timeout;
    let server = HttpServer::new(move || {
        actix_web::App::new()
            .wrap(middleware(&shared))
            .wrap(tenancy_actix::DrainBody::default())
            .app_data(web::Data::new(shared.clone()))
            .configure(configure)
    })
    .disable_signals()
    .keep_alive(idle_timeout)
    .client_request_timeout(idle_timeout)
    .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
    .listen(listener)
    .map_err(Error::Listen)?
    .run();
    let handle = server.handle();
    let task = tokio::spawn(server);
    Ok(Server {
        addr,
        app,
        handle,
        task,
    })
}

/// Builds the [`App`] from `config`, binds `config.listen` and serves.
///
/// # Errors
/// As [`App::build`]; an [`Error::App`] naming `TENANCY_LISTEN` when the address cannot be
/// bound.
pub async fn start(config: Config) -> Result<Server> {
    let listener = tenancy_server::bind(&config).await?;
    let app = App::build(config).await?;
    serve(app, listener).await
}

impl Server {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The served app.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// Stops accepting connections, lets in-flight requests finish (up to
    /// [`SHUTDOWN_TIMEOUT_SECS`]), drains the audit queue into the store (what cannot be
    /// stored stays in the spool for the next start), and closes the pools.
    ///
    /// # Errors
    /// [`Error::App`] when audit events had to stay in the spool; [`Error::Serve`] when the
    /// server failed.
    pub async fn shutdown(self) -> Result<()> {
        self.handle.stop(true).await;
        let served = self.task.await;
        let drained = self.app.shutdown().await;
        match served {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Serve(Box::new(e))),
            Err(e) => return Err(Error::Serve(Box::new(e))),
        }
        drained.map_err(Error::App)
    }
}
