//! Starting and stopping the server.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{App, Config, Error, Result};

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

    /// Stops accepting connections, lets in-flight requests finish, drains the audit queue
    /// into the store (what cannot be stored stays in the spool for the next start), and
    /// closes the pools.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when audit events had to stay in the spool; [`Error::Internal`]
    /// when the server task failed.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = (&mut self.task).await;
        let drained = self.app.shutdown().await;
        match served {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Internal(Box::new(e))),
            Err(e) => return Err(Error::Internal(Box::new(e))),
        }
        drained
    }
}
