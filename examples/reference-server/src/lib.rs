//! `tenancy-server`: the reference assembly of the tenancy crates — a multi-tenant HTTP API
//! on axum, runnable with nothing installed, and a library to embed or re-serve it.
//!
//! - [`Config`]: every setting from `TENANCY_*` variables and an optional TOML file,
//!   validated at start (errors name the setting; prod refuses unsafe settings).
//! - [`App`]: the assembled, framework-free state. Memory backends and a JSONL audit file by
//!   default; PostgreSQL (records under row-level security, sessions, revoked tokens,
//!   tenant directory, audit) with `TENANCY_DATABASE_URL`; Redis (limits, sessions, revoked
//!   tokens) with `TENANCY_REDIS_URL`. With both, sessions are in Redis and revoked tokens in
//!   PostgreSQL.
//! - [`records`] and [`ops`]: every endpoint's behaviour as plain async functions over an
//!   [`App`] and a verified [`TenantContext`](tenancy_core::TenantContext), so a second
//!   framework serves the same contract by calling them.
//! - [`web`]: each endpoint's HTTP answer, framework-free: body and query parsing with their
//!   refusals, problem rendering, the `/metrics` address rule. Both servers call it.
//! - [`http`]: the axum routes, a thin layer over [`web`].
//! - [`start`] / [`serve`]: run the server on an address or on a listener you bound (tests
//!   bind `127.0.0.1:0`), and get a [`Server`] handle with the bound address and a graceful
//!   [`Server::shutdown`] that drains the audit queue.
//!
//! ```no_run
//! use tenancy_server::{Config, serve, App};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = App::build(Config::for_tests("./tenancy-data-test")).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = serve(app, listener).await?;
//! println!("listening on http://{}", server.local_addr());
//! // ... talk HTTP to it ...
//! server.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Features
//! | feature | enables | default |
//! |---------|---------|---------|
//! | —       | this crate has no optional features: memory, PostgreSQL and Redis are chosen at run time | — |

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod app;
pub mod config;
pub mod error;
pub mod http;
pub mod openapi;
pub mod ops;
pub mod records;
mod server;
pub mod users;
pub mod web;

pub use app::{App, Stores};
pub use config::{Config, Env};
pub use error::{Error, Result};
pub use server::{SHUTDOWN_TIMEOUT, Server, bind, serve, shutdown_signal, start};

/// Sends the server's logs (5xx causes, audit spooling, start-up, shutdown) to stderr.
///
/// The filter comes from `TENANCY_LOG` (then `RUST_LOG`), in `tracing` directive syntax, and
/// defaults to `info`. Call it once, first thing in `main`; later calls do nothing. Libraries
/// never call it: embedding services install their own subscriber.
///
/// ```
/// tenancy_server::init_logging();
/// tenancy_server::init_logging(); // harmless
/// ```
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("TENANCY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
