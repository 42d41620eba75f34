//! Both servers close a connection that sends no whole request head within the configured
//! idle timeout, a kept-alive one between requests included, and not before it.

mod common;

use std::time::{Duration, Instant};

use common::{Flavor, Harness, config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes (or resets) the connection: what came, and how long after
/// `since` the close came.
async fn closed_after(mut s: TcpStream, since: Instant) -> (Vec<u8>, Duration) {
    let mut buf = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("read: {e}"),
        Err(_) => panic!("still open after 10 s"),
    }
    (buf, since.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed_after_the_idle_timeout() {
    const IDLE: Duration = Duration::from_secs(1);
    for flavor in Flavor::BOTH {
        let who = flavor.name();
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), |c| c.idle_timeout = IDLE);
        let h = Harness::start(flavor, c, dir).await;
        let addr = h.base.trim_start_matches("http://").to_owned();

        let started = Instant::now();
        let silent = TcpStream::connect(&addr).await.unwrap();
        let mut partial = TcpStream::connect(&addr).await.unwrap();
        partial
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut kept = TcpStream::connect(&addr).await.unwrap();
        kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();

        let (_, silent_after) = closed_after(silent, started).await;
        let (_, partial_after) = closed_after(partial, started).await;
        let (answered, kept_after) = closed_after(kept, started).await;
        assert!(
            answered.starts_with(b"HTTP/1.1 200"),
            "{who}: {:?}",
            String::from_utf8_lossy(&answered)
        );
        for (what, after) in [
            ("silent", silent_after),
            ("partial head", partial_after),
            ("kept-alive", kept_after),
        ] {
            assert!(
                after >= IDLE - Duration::from_millis(150) && after < IDLE * 4,
                "{who}: the {what} connection closed after {after:?}"
            );
        }
    }
}
