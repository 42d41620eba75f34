//! A request body for tests of what reads it: chunks handed out and counted.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;

/// `count` chunks of `len` bytes, then the end (or, with `stall`, nothing more ever); the
/// bytes handed out are counted in the shared counter [`CountedChunks::new`] returns. A
/// `futures_core::Stream` of `Result<Bytes, E>`, which is what axum's `Body::from_stream` and
/// actix-web's `Payload` take.
#[derive(Debug)]
pub struct CountedChunks<E> {
    len: usize,
    count: usize,
    stall: bool,
    read: Arc<AtomicUsize>,
    error: std::marker::PhantomData<fn() -> E>,
}

impl<E> CountedChunks<E> {
    /// The chunks, and the counter of bytes read from them.
    pub fn new(len: usize, count: usize, stall: bool) -> (Self, Arc<AtomicUsize>) {
        let read = Arc::new(AtomicUsize::new(0));
        let chunks = Self {
            len,
            count,
            stall,
            read: Arc::clone(&read),
            error: std::marker::PhantomData,
        };
        (chunks, read)
    }
}

impl<E> futures_core::Stream for CountedChunks<E> {
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.count == 0 {
            return if self.stall {
                Poll::Pending
            } else {
                Poll::Ready(None)
            };
        }
        self.count -= 1;
        self.read.fetch_add(self.len, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Bytes::from(vec![b'a'; self.len]))))
    }
}
