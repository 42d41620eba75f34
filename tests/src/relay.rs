//! A TCP relay in front of a server (Redis, PostgreSQL), standing in for the network between a
//! pool and its server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A TCP relay in front of a server on loopback: new connections can be pointed at another
/// server (a fail-over behind a DNS name or a load balancer), and the connections already
/// carried can be cut silently (the peer host vanished: no reply, no reset, the socket stays
/// open). Stopped when dropped.
#[derive(Debug)]
pub struct Relay {
    port: u16,
    state: Arc<RelayState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct RelayState {
    target: std::sync::Mutex<u16>,
    /// Connections accepted under an older generation are cut.
    generation: AtomicU64,
    /// How long a new connection waits before it reaches its server, in milliseconds.
    delay_ms: AtomicU64,
}

impl Relay {
    /// Relays to `127.0.0.1:<target>`.
    pub async fn start(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind the relay: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("relay address: {e}"))
            .port();
        let state = Arc::new(RelayState {
            target: std::sync::Mutex::new(target),
            generation: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            // Dropped with the accept loop, which aborts every relayed connection.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let st = st.clone();
                conns.spawn(async move {
                    let generation = st.generation.load(Ordering::SeqCst);
                    let target = *st
                        .target
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let delay = st.delay_ms.load(Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let Ok(upstream) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (ur, uw) = upstream.into_split();
                    tokio::join!(pump(cr, uw, generation, &st), pump(ur, cw, generation, &st));
                });
            }
        });
        Self { port, state, task }
    }

    /// The relay's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// New connections go to `127.0.0.1:<target>`; open ones keep their server.
    pub fn point_to(&self, target: u16) {
        *self
            .state
            .target
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = target;
    }

    /// New connections reach their server only after `delay` (a slow network or TLS
    /// handshake): nothing either side sends passes before.
    pub fn delay_connections(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Every connection open now swallows what either side sends, without closing: a request
    /// on it never gets a reply. New connections are relayed normally.
    pub fn cut_silently(&self) {
        self.state.generation.fetch_add(1, Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    generation: u64,
    state: &RelayState,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if state.generation.load(Ordering::SeqCst) != generation {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
