//! Starting and stopping the server.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{App, Config, Error, Result};

/// How long [`Server::shutdown`] lets in-flight requests finish.
///
/// Why 30 s: long enough for any request of this API (the slowest waits a few seconds for the
/// audit store, a body at most [`BODY_READ_TIMEOUT`](crate::app::BODY_READ_TIMEOUT)), short
/// enough for a process supervisor's stop timeout; the actix-web server waits as long.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// A running server: its address, its [`App`], and a graceful [`Server::shutdown`].
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    app: App,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Serves `app` on `listener` (already bound; `127.0.0.1:0` in tests) until
/// [`Server::shutdown`].
///
/// # Errors
/// [`Error::Startup`] when the listener has no local address.
pub async fn serve(app: App, listener: TcpListener) -> Result<Server> {
    let addr = listener.local_addr().map_err(|e| Error::Startup {
        what: "listener",
        source: Box::new(e),
    })?;
    let router = crate::http::router(app.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
        })
        .await
    });
    Ok(Server {
        addr,
        app,
        stop: Some(stop),
        task,
    })
}

/// Builds the [`App`] from `config`, binds `config.listen` and serves.
///
/// # Errors
/// As [`App::build`]; [`Error::Config`] naming `TENANCY_LISTEN` when the address cannot be
/// bound.
pub async fn start(config: Config) -> Result<Server> {
    let listener = bind(&config).await?;
    let app = App::build(config).await?;
    serve(app, listener).await
}

/// Binds `config.listen`.
///
/// # Errors
/// [`Error::Config`] naming `TENANCY_LISTEN` when the address cannot be bound.
pub async fn bind(config: &Config) -> Result<TcpListener> {
    TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Config {
            setting: "TENANCY_LISTEN",
            reason: format!("cannot listen on {}: {e}", config.listen),
        })
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM: when a binary serving an [`App`] should stop.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
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
    /// [`SHUTDOWN_TIMEOUT`]), drains the audit queue into the store (what cannot be stored
    /// stays in the spool for the next start), and closes the pools.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when audit events had to stay in the spool; [`Error::Internal`]
    /// when the server task failed, or audit events were lost or could not be made durable.
    pub async fn shutdown(self) -> Result<()> {
        self.shutdown_within(SHUTDOWN_TIMEOUT).await
    }

    /// [`Server::shutdown`], letting in-flight requests finish for at most `grace`. Past it,
    /// the server stops waiting for the connections still open (a client that neither sends
    /// nor reads) and drains the audit queue all the same; what those connections still do is
    /// cut short when the runtime ends.
    ///
    /// # Errors
    /// As [`Server::shutdown`].
    pub async fn shutdown_within(mut self, grace: Duration) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = match tokio::time::timeout(grace, &mut self.task).await {
            Ok(served) => served,
            Err(_) => {
                tracing::warn!(
                    ?grace,
                    "connections still open after the shutdown grace period; no longer waiting"
                );
                self.task.abort();
                Ok(Ok(()))
            }
        };
        let drained = self.app.shutdown().await;
        match served {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Internal(Box::new(e))),
            Err(e) => return Err(Error::Internal(Box::new(e))),
        }
        drained
    }
}
