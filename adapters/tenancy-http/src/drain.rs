//! Reading what is left of a refused request's body, so that the refusal reaches the client.
//!
//! A server that answers before it has read the request's body (a 401 for a missing token,
//! a 429, a 413 for a declared length over the limit) and then closes the connection with
//! bytes still unread makes the kernel reset it; the reset can wipe the answer from the
//! client's buffers before it reads it, and a client still sending its body sees "connection
//! reset" or "broken pipe" instead of the answer. hyper reads what has already arrived of an
//! unread body and then closes the connection; actix-web reads the rest of an unread chunked
//! body and keeps the connection, but answers an unread body of declared length with
//! `Connection: close` and reads on only briefly.
//!
//! Both adapters therefore read the rest of a refused body and throw it away before the
//! answer goes out, within [`DrainLimits`], with [`drain`]: the connection then serves the
//! next request. When the rest is not read (too long, too slow, broken), the answer closes
//! the connection. They leave alone HTTP/2 requests (refusing a stream does not touch the
//! connection) and, on axum, requests that expect `100 Continue` (hyper would tell the
//! client to send the body only to throw it away; without the 100 the client sends none).

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;

use bytes::Buf;
use futures_core::Stream;

/// How much of a refused body is read and thrown away, and for how long.
///
/// ```
/// use std::time::Duration;
/// use tenancy_http::DrainLimits;
///
/// let limits = DrainLimits::default();
/// assert_eq!(limits.bytes, 1 << 20);
/// assert_eq!(limits.time, Duration::from_secs(2));
/// // A declared length over the bound is not read at all.
/// assert!(!limits.worth_reading(Some(b"2000000")));
/// assert!(limits.worth_reading(Some(b"70000")));
/// assert!(limits.worth_reading(None)); // chunked: found out by reading
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainLimits {
    /// Reading stops once more than this many bytes have arrived (default 1 MiB: at most
    /// this and one chunk are read); a declared `Content-Length` over it is not read at all.
    pub bytes: u64,
    /// For at most this long (default 2 s).
    pub time: Duration,
}

impl Default for DrainLimits {
    fn default() -> Self {
        Self {
            bytes: 1 << 20,
            time: Duration::from_secs(2),
        }
    }
}

impl DrainLimits {
    /// Whether a body whose `Content-Length` is `content_length` (`None`: not declared) is
    /// worth reading: not when the declared length is over [`DrainLimits::bytes`]. The
    /// declared length is the whole body's, even when an inner layer has read part of it.
    pub fn worth_reading(&self, content_length: Option<&[u8]>) -> bool {
        declared_length(content_length).is_none_or(|n| n <= self.bytes)
    }
}

/// A `Content-Length` value as a number: `None` when there is none or it is not one.
///
/// ```
/// use tenancy_http::drain::declared_length;
///
/// assert_eq!(declared_length(Some(b" 70000 ")), Some(70_000));
/// assert_eq!(declared_length(Some(b"lots")), None);
/// assert_eq!(declared_length(None), None);
/// ```
pub fn declared_length(content_length: Option<&[u8]>) -> Option<u64> {
    content_length
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Reads what is left of a refused body and throws it away: `body` is its chunks, `deadline`
/// a timer the caller's runtime provides that ends after [`DrainLimits::time`]. Returns
/// whether the body was read to its end; it is not when the declared length is over the
/// bound ([`DrainLimits::worth_reading`]), when more than [`DrainLimits::bytes`] arrive,
/// when the deadline comes first, or when reading fails. The connection can serve the next
/// request only when it was.
///
/// ```
/// use std::pin::Pin;
/// use std::task::{Context, Poll};
/// use tenancy_http::{DrainLimits, drain};
///
/// /// A body as a stream of chunks; when they run out, it ends, or stalls.
/// struct Chunks(Vec<&'static [u8]>, bool);
/// impl futures_core::Stream for Chunks {
///     type Item = Result<&'static [u8], std::io::Error>;
///     fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
///         match self.0.pop() {
///             Some(chunk) => Poll::Ready(Some(Ok(chunk))),
///             None if self.1 => Poll::Pending,
///             None => Poll::Ready(None),
///         }
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let limits = DrainLimits::default();
/// let never = || std::future::pending::<()>();
/// assert!(drain(limits, None, Chunks(vec![b"abc", b"def"], false), never()).await);
/// // Over the bound: left unread.
/// assert!(!drain(limits, Some(b"2000000"), Chunks(vec![], false), never()).await);
/// // Too slow: the deadline ends it.
/// let deadline = tokio::time::sleep(std::time::Duration::from_millis(10));
/// assert!(!drain(limits, None, Chunks(vec![b"abc"], true), deadline).await);
/// # });
/// ```
pub async fn drain<S, B, E>(
    limits: DrainLimits,
    content_length: Option<&[u8]>,
    mut body: S,
    deadline: impl Future<Output = ()>,
) -> bool
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: Buf,
{
    if !limits.worth_reading(content_length) {
        return false;
    }
    let mut deadline = pin!(deadline);
    let mut left = limits.bytes;
    std::future::poll_fn(|cx| {
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        // A body that is always ready (empty chunks) still lets other tasks run.
        for _ in 0..64 {
            match Pin::new(&mut body).poll_next(cx) {
                Poll::Ready(None) => return Poll::Ready(true),
                Poll::Ready(Some(Ok(chunk))) => match left.checked_sub(chunk.remaining() as u64) {
                    Some(l) => left = l,
                    None => return Poll::Ready(false),
                },
                Poll::Ready(Some(Err(_))) => return Poll::Ready(false),
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

pin_project_lite::pin_project! {
    /// The response future of an adapter's draining middleware: the inner service's future
    /// as it is for a request without a body (`direct`), or a future that awaits the answer
    /// and then drains the rest of the body (`draining`, boxed by the adapter).
    pub struct DrainFuture<F, G> {
        #[pin]
        inner: Either<F, G>,
    }
}

pin_project_lite::pin_project! {
    #[project = EitherProj]
    enum Either<F, G> {
        Direct { #[pin] fut: F },
        Draining { #[pin] fut: G },
    }
}

impl<F, G> DrainFuture<F, G> {
    /// The inner service's future, for a request without a body.
    pub fn direct(fut: F) -> Self {
        Self {
            inner: Either::Direct { fut },
        }
    }

    /// The answer, then the rest of the body.
    pub fn draining(fut: G) -> Self {
        Self {
            inner: Either::Draining { fut },
        }
    }
}

impl<F, G> std::fmt::Debug for DrainFuture<F, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainFuture").finish_non_exhaustive()
    }
}

impl<T, F: Future<Output = T>, G: Future<Output = T>> Future for DrainFuture<F, G> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<T> {
        match self.project().inner.project() {
            EitherProj::Direct { fut } => fut.poll(cx),
            EitherProj::Draining { fut } => fut.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Context;

    use tenancy_tests::body::CountedChunks;

    type Body = CountedChunks<()>;

    fn body(len: usize, count: usize) -> Body {
        CountedChunks::new(len, count, false).0
    }

    async fn run(limits: DrainLimits, declared: Option<&[u8]>, b: Body) -> bool {
        drain(limits, declared, b, tokio::time::sleep(limits.time)).await
    }

    #[tokio::test(start_paused = true)]
    async fn reads_to_the_end_within_the_bytes() {
        let limits = DrainLimits::default();
        // Exactly the bound, in 1 KiB chunks.
        assert!(run(limits, None, body(1024, 1024)).await);
        assert!(run(limits, Some(b"1048576"), body(1024, 1024)).await);
        // One byte over it.
        assert!(!run(limits, None, body(1025, 1024)).await);
        // Declared over it: nothing read.
        assert!(!run(limits, Some(b" 1048577 "), body(0, 0)).await);
        // A length that is not a number is read and found out.
        assert!(run(limits, Some(b"lots"), body(10, 1)).await);
    }

    // On the real clock: a paused one only moves when every task waits, and this one never
    // does.
    #[tokio::test]
    async fn empty_chunks_forever_end_at_the_deadline() {
        let limits = DrainLimits {
            bytes: 10,
            time: Duration::from_millis(50),
        };
        assert!(!run(limits, None, body(0, usize::MAX)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_ends_at_the_deadline() {
        let limits = DrainLimits::default();
        let (stalled, _) = CountedChunks::new(10, 3, true);
        let started = tokio::time::Instant::now();
        assert!(!run(limits, None, stalled).await);
        assert_eq!(started.elapsed(), limits.time);
    }

    #[tokio::test]
    async fn a_broken_body_is_not_read_to_its_end() {
        struct Broken;
        impl Stream for Broken {
            type Item = Result<bytes::Bytes, ()>;
            fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
                Poll::Ready(Some(Err(())))
            }
        }
        let limits = DrainLimits::default();
        assert!(!drain(limits, None, Broken, std::future::pending()).await);
    }
}
