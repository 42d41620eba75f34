//! Clients that hold a connection without sending a whole request head: a head sent a byte at
//! a time, a connection that sends nothing, a kept-alive connection left idle. The server
//! closes each once the header read timeout has passed, and serves other clients meanwhile.

mod common;

use std::time::{Duration, Instant};

use tenancy_server::App;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TIMEOUT: Duration = Duration::from_millis(600);

/// Reads until the peer closes; what was read, and when the close came.
async fn until_closed(mut s: TcpStream) -> (Vec<u8>, Instant) {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    match read {
        Ok(Ok(_)) => {}
        // A reset is a close too.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("read: {e}"),
        Err(_) => panic!("the connection was still open after 10 s"),
    }
    (buf, Instant::now())
}

/// The server on memory backends in `dir`, with `idle_timeout`.
async fn start(dir: &tempfile::TempDir, idle_timeout: Duration) -> tenancy_server::Server {
    let mut config = common::memory_config(dir.path());
    config.idle_timeout = idle_timeout;
    let app = App::build(config).await.expect("app builds");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    tenancy_server::serve(app, listener).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_whole_request_head_are_closed_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, TIMEOUT).await;
    let addr = server.local_addr();
    let started = Instant::now();

    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let silent = TcpStream::connect(addr).await.unwrap();
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The slow client goes on, a byte now and then, never finishing its head.
    let slow = tokio::spawn(async move {
        for b in b"X-Slow: 1" {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        slow
    });

    // Served meanwhile.
    let mut other = TcpStream::connect(addr).await.unwrap();
    other
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = until_closed(other).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");

    let (from_silent, silent_closed) = until_closed(silent).await;
    let (from_kept, kept_closed) = until_closed(kept).await;
    let (_, slow_closed) = until_closed(slow.await.unwrap()).await;
    assert!(from_silent.is_empty(), "{from_silent:?}");
    assert!(
        from_kept.starts_with(b"HTTP/1.1 200"),
        "the kept-alive connection's request was answered"
    );
    for (who, closed) in [
        ("silent", silent_closed),
        ("kept-alive", kept_closed),
        ("slow", slow_closed),
    ] {
        let after = closed - started;
        assert!(
            after >= TIMEOUT - Duration::from_millis(100) && after < TIMEOUT * 5,
            "the {who} connection closed after {after:?}"
        );
    }
    server.shutdown().await.unwrap();
}

/// A shutdown lets a request in flight finish (its body still arriving) and answers it, and
/// takes no new connection meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_answers_the_request_in_flight_and_takes_no_new_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, Duration::from_secs(75)).await;
    let addr = server.local_addr();
    let body = br#"{"tenant_id":"acme","username":"bob","password":"wrong"}"#;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&body[..10]).await.unwrap();
    // The request has reached the service, which waits for the rest of its body.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stopping = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "the shutdown waits for the request"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connection once the shutdown began"
    );
    client.write_all(&body[10..]).await.unwrap();
    let (answer, _) = until_closed(client).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 401"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the shutdown ends once the request is answered")
        .unwrap()
        .unwrap();
}
