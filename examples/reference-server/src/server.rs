//! Starting and stopping the server.

use std::net::SocketAddr;
use std::time::Duration;

use ::http::Request;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt as _;

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
/// [`Server::shutdown`], over HTTP/1.1, closing connections whose request head does not
/// arrive within the configured [`idle_timeout`](crate::Config::idle_timeout).
///
/// # Errors
/// [`Error::Startup`] when the listener has no local address.
pub async fn serve(app: App, listener: TcpListener) -> Result<Server> {
    let header_read_timeout = app.config().idle_timeout;
    let addr = listener.local_addr().map_err(|e| Error::Startup {
        what: "listener",
        source: Box::new(e),
    })?;
    let router = crate::http::router(app.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(accept(listener, router, header_read_timeout, stopped));
    Ok(Server {
        addr,
        app,
        stop: Some(stop),
        task,
    })
}

/// Accepts connections until `stopped`, then lets each finish its request in flight (a
/// kept-alive connection closes after it) and returns once all have.
async fn accept(
    listener: TcpListener,
    router: axum::Router,
    header_read_timeout: Duration,
    mut stopped: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let connections = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was taken: the
                    // listener is still good. A pause keeps a shortage from spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // A response goes out in one write; waiting for more to coalesce only adds latency.
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let connection = connections.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // A client gone mid-request, a malformed request, a head read timed out.
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
    Ok(())
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
