//! [`AuditDispatcher`]: the [`AuditSink`] that request handlers call.
//!
//! - [`AuditSink::record`] redacts and encodes the event ([`Codec`], about half a
//!   microsecond) and puts the bytes on a bounded queue. When the queue is full it waits for
//!   room (back-pressure); it never drops an event. Encoding where the event was made keeps
//!   the event's memory on the thread that allocated it: the writer receives one buffer.
//!   The queue is in memory: events on it when the process is killed (up to the queue's
//!   capacity and one batch) are lost. What must survive a crash is recorded with
//!   [`AuditSink::record_sync`], or followed by [`AuditSink::flush`]; a shutdown
//!   ([`AuditDispatcher::shutdown`]) stores everything queued.
//! - A background writer takes encoded events off the queue in batches and appends each
//!   batch to the [`AuditStore`]. After an append that did not
//!   fill a batch it lingers (2 ms by default) for more events to gather: while requests keep
//!   coming the writer wakes a few hundred times a second, not once per event.
//! - When the store fails (an error, no answer within the append timeout, or a panic), the
//!   batch goes to a local spool file (synced to disk), and so does
//!   everything after it, in order, until the spool has been replayed into the store. Replay
//!   retries with exponential back-off. Event ids make replay idempotent: a batch that reached
//!   the store just before a crash is not stored twice.
//! - [`AuditSink::record_sync`] and [`AuditSink::flush`] wait until earlier events are in the
//!   store and durable there ([`AuditStore::sync`], whatever the store's own sync schedule);
//!   when the store stays down longer than the sync timeout they return an error saying the
//!   events are spooled (they will still be stored).
//! - [`AuditDispatcher::shutdown`] drains the queue and tries a last replay.
//!
//! ```
//! use std::sync::Arc;
//! use tenancy_audit::{AuditDispatcher, store::MemoryAuditStore};
//! use tenancy_core::{AuditEvent, AuditSink, Outcome, TenantId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = MemoryAuditStore::new();
//! let audit = AuditDispatcher::builder(Arc::new(store.clone()))
//!     .with_spool(dir.path().join("audit.spool"))
//!     .start()
//!     .await?;
//! let acme = TenantId::parse("acme")?;
//! audit.record(AuditEvent::new(acme.clone(), "records.read", Outcome::Success)).await?;
//! audit.record_sync(AuditEvent::new(acme.clone(), "admin.tenant.suspend", Outcome::Success)).await?;
//! assert_eq!(store.records(&acme).len(), 2);
//! audit.shutdown().await?;
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tenancy_core::{AuditEvent, AuditSink, Health, HealthCheck, TryRecord};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::codec::{Codec, EncodedEvent};
use crate::spool::Spool;
use crate::store::AuditStore;
use crate::{Error, Result};

/// Default queue capacity.
pub const DEFAULT_CAPACITY: usize = 8_192;
/// Default largest batch per store append.
pub const DEFAULT_BATCH: usize = 512;
/// Default time the writer waits for more events after an append that did not fill a batch.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(2);
/// Default bound on one store append ([`AuditDispatcherBuilder::with_append_timeout`]).
pub const DEFAULT_APPEND_TIMEOUT: Duration = Duration::from_secs(10);

enum Msg {
    Event(EncodedEvent),
    Flush(oneshot::Sender<Result<()>>),
    Shutdown(oneshot::Sender<Result<()>>),
}

/// Counters of a running dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DispatcherStats {
    /// Events appended to the store (duplicates included), directly or by replay.
    pub stored: u64,
    /// Events written to the spool.
    pub spooled: u64,
    /// Events replayed from the spool into the store.
    pub replayed: u64,
    /// Failed store appends.
    pub store_errors: u64,
    /// Events not stored because their id was stored before with another payload (the id
    /// reused for another event; [`Appended::conflict`](crate::store::Appended::conflict)):
    /// each is logged at error level with its payload.
    pub conflicts: u64,
}

#[derive(Debug, Default)]
struct Counters {
    stored: AtomicU64,
    spooled: AtomicU64,
    replayed: AtomicU64,
    store_errors: AtomicU64,
    conflicts: AtomicU64,
    /// Whether events wait for the store (in the spool or in memory), as of the writer's
    /// last turn.
    backlog: AtomicBool,
}

/// Builds an [`AuditDispatcher`].
#[derive(Debug)]
pub struct AuditDispatcherBuilder {
    store: Arc<dyn AuditStore>,
    codec: Codec,
    capacity: usize,
    batch: usize,
    linger: Duration,
    spool: Option<PathBuf>,
    sync_timeout: Duration,
    retry_min: Duration,
    retry_max: Duration,
    drain_timeout: Duration,
    append_timeout: Duration,
}

impl AuditDispatcherBuilder {
    /// The codec (and so the redaction policy) applied before anything is stored or spooled.
    pub fn with_codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Queue capacity (default [`DEFAULT_CAPACITY`]); when full, `record` waits.
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Largest batch per store append (default [`DEFAULT_BATCH`]).
    pub fn with_batch_size(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    /// How long the writer waits for more events after an append that did not fill a batch
    /// (default [`DEFAULT_LINGER`]). Events are queued at once either way and
    /// [`AuditSink::flush`], [`AuditSink::record_sync`] and [`AuditDispatcher::shutdown`] cut
    /// the wait short; what it changes is how often the writer wakes. With zero, the writer
    /// appends as soon as events arrive, waking once per event when they come one by one.
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// The spool file used while the store is down (a `.cursor` and, if ever needed, a
    /// `.rejected` file are kept beside it). A running dispatcher holds its spool locked: one
    /// spool file serves one dispatcher at a time, in this process or any other.
    ///
    /// Without a spool, a failed batch is retried from memory: the writer stops taking new
    /// events until the store is back, the queue fills, and `record` waits. Nothing is lost
    /// while the process lives, but requests block; configure a spool in production.
    pub fn with_spool(mut self, path: impl Into<PathBuf>) -> Self {
        self.spool = Some(path.into());
        self
    }

    /// How long `record_sync` and `flush` wait for a spooled event to reach the store before
    /// answering [`Error::Spooled`] ([`Error::Held`] when it is not even in the spool; default
    /// 5 s). A timeout too long to represent as a
    /// deadline (`Duration::MAX`) waits for about 30 years: in effect, for ever.
    pub fn with_sync_timeout(mut self, timeout: Duration) -> Self {
        self.sync_timeout = timeout;
        self
    }

    /// Retry back-off: first and largest delay (defaults 50 ms and 5 s). The delay doubles
    /// after each failure, saturating at the largest.
    pub fn with_retry(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min;
        self.retry_max = max.max(min);
        self
    }

    /// How long [`AuditDispatcher::shutdown`] keeps replaying the spool (default 10 s). As
    /// with the sync timeout, `Duration::MAX` means for ever.
    pub fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How long one store append may take before it counts as failed and its batch is
    /// spooled (default [`DEFAULT_APPEND_TIMEOUT`]). The same bound applies to the store sync
    /// ([`AuditStore::sync`]) made before a flush is answered.
    ///
    /// Why a bound: a store that never answers (a network black hole, a lock held by a
    /// transaction left open) would otherwise stop the writer, fill the queue and block every
    /// `record`, and `flush` would never answer. An append that timed out may still have been
    /// stored; its replay from the spool is absorbed by event-id idempotency.
    pub fn with_append_timeout(mut self, timeout: Duration) -> Self {
        self.append_timeout = timeout;
        self
    }

    /// Opens the spool and starts the writer as a task on the current tokio runtime. Events
    /// left in the spool by an earlier run are replayed first.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a zero capacity or batch size; [`Error::Io`] when the
    /// spool cannot be opened; [`Error::Conflict`] when another dispatcher (in this process
    /// or another) holds the spool.
    pub async fn start(self) -> Result<AuditDispatcher> {
        let (dispatcher, writer) = self.prepare().await?;
        tokio::spawn(writer.run());
        Ok(dispatcher)
    }

    /// As [`AuditDispatcherBuilder::start`], with the writer on a thread of its own (named
    /// `tenancy-audit`) instead of a task among the caller's runtime's tasks.
    ///
    /// Why: chaining (two SHA-256 hashes per event) and store appends are CPU work. As a task,
    /// the writer takes turns on the workers that serve requests, and each batch holds a
    /// worker for its whole length; on its own thread it leaves them to requests, and the
    /// operating system shares the cores. In the `wrk` benchmark of `docs/benchmarks.md`
    /// (axum, two workers, an event per request; measured while the writer still encoded the
    /// events itself) this cost about 6 µs less CPU per request.
    ///
    /// The thread polls the writer itself but belongs to the caller's runtime
    /// ([`tokio::runtime::Handle::block_on`]): the store's sockets and the writer's timers are
    /// the runtime's, so a connection pool the store shares with the rest of the program can
    /// hand the writer's connections to anyone, before and after the writer ends. (A runtime
    /// of the thread's own would take its connections' I/O down with it when the writer
    /// ends, under whoever holds them then.) On a current-thread runtime this needs the
    /// runtime's `block_on` to be running, as it is under `#[tokio::main]`: that is what
    /// drives the I/O and timers. Call [`AuditDispatcher::shutdown`] before the runtime ends:
    /// a runtime that ends first takes the writer's thread with it (the thread stops; it
    /// neither panics on a timer of the runtime that is gone nor waits for ever), and the
    /// events still queued are not stored (a warning says so).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tenancy_audit::{AuditDispatcher, store::MemoryAuditStore};
    /// use tenancy_core::{AuditEvent, AuditSink, Outcome, TenantId};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryAuditStore::new();
    /// let audit = AuditDispatcher::builder(Arc::new(store.clone())).start_on_own_thread().await?;
    /// let acme = TenantId::parse("acme")?;
    /// audit.record_sync(AuditEvent::new(acme.clone(), "records.read", Outcome::Success)).await?;
    /// assert_eq!(store.records(&acme).len(), 1);
    /// audit.shutdown().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`AuditDispatcherBuilder::start`]; [`Error::Io`] when the thread cannot be started.
    pub async fn start_on_own_thread(self) -> Result<AuditDispatcher> {
        let (dispatcher, writer) = self.prepare().await?;
        let runtime = tokio::runtime::Handle::current();
        // A task of the runtime holds `alive` until the writer ends. A runtime that ends
        // drops its tasks before it stops its timers and I/O, so the writer hears of it
        // first and stops there.
        let (mut alive, gone) = oneshot::channel::<()>();
        runtime.spawn(async move { alive.closed().await });
        std::thread::Builder::new()
            .name("tenancy-audit".into())
            .spawn(move || runtime.block_on(writer.run_until(gone)))
            .map_err(|e| Error::io("audit writer thread", e))?;
        Ok(dispatcher)
    }

    /// Checks the settings, opens the spool, and makes the handle and the writer.
    async fn prepare(self) -> Result<(AuditDispatcher, Writer)> {
        if self.capacity == 0 {
            return Err(Error::InvalidConfig("queue capacity must be at least 1"));
        }
        if self.batch == 0 {
            return Err(Error::InvalidConfig("batch size must be at least 1"));
        }
        let spool = match self.spool.clone() {
            Some(path) => Some(Arc::new(Mutex::new(
                tokio::task::spawn_blocking(move || Spool::open(&path))
                    .await
                    .map_err(|e| Error::io("open audit spool", std::io::Error::other(e)))??,
            ))),
            None => None,
        };
        let (tx, rx) = mpsc::channel(self.capacity);
        let counters = Arc::new(Counters::default());
        let urgent = Arc::new(Notify::new());
        let writer = Writer {
            rx,
            urgent: Arc::clone(&urgent),
            store: self.store,
            batch: self.batch,
            linger: self.linger,
            spool,
            held: Vec::new(),
            waiters: Vec::new(),
            sync_timeout: self.sync_timeout,
            retry_min: self.retry_min,
            retry_max: self.retry_max,
            drain_timeout: self.drain_timeout,
            append_timeout: self.append_timeout,
            backoff: self.retry_min,
            next_retry: Instant::now(),
            last_error: None,
            counters: Arc::clone(&counters),
        };
        let dispatcher = AuditDispatcher {
            tx,
            codec: Arc::new(self.codec),
            urgent,
            counters,
        };
        Ok((dispatcher, writer))
    }
}

/// The non-blocking, never-dropping [`AuditSink`]. Cheap to clone; clones share the queue.
#[derive(Debug, Clone)]
pub struct AuditDispatcher {
    tx: mpsc::Sender<Msg>,
    codec: Arc<Codec>,
    /// Cuts the writer's linger short for a message someone waits on.
    urgent: Arc<Notify>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Event(_) => "Event",
            Self::Flush(_) => "Flush",
            Self::Shutdown(_) => "Shutdown",
        })
    }
}

impl AuditDispatcher {
    /// A builder writing to `store`.
    pub fn builder(store: Arc<dyn AuditStore>) -> AuditDispatcherBuilder {
        AuditDispatcherBuilder {
            store,
            codec: Codec::default(),
            capacity: DEFAULT_CAPACITY,
            batch: DEFAULT_BATCH,
            linger: DEFAULT_LINGER,
            spool: None,
            sync_timeout: Duration::from_secs(5),
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            append_timeout: DEFAULT_APPEND_TIMEOUT,
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> DispatcherStats {
        DispatcherStats {
            stored: self.counters.stored.load(Ordering::Relaxed),
            spooled: self.counters.spooled.load(Ordering::Relaxed),
            replayed: self.counters.replayed.load(Ordering::Relaxed),
            store_errors: self.counters.store_errors.load(Ordering::Relaxed),
            conflicts: self.counters.conflicts.load(Ordering::Relaxed),
        }
    }

    /// Stores everything queued, tries to replay the spool until the drain timeout, syncs the
    /// store ([`AuditStore::sync`]) and stops the writer. Later calls to `record` fail with
    /// [`Error::Closed`].
    ///
    /// # Errors
    /// [`Error::Spooled`] when events remain in the spool (they replay at the next start);
    /// [`Error::Lost`] when events that neither the store nor the spool took remain (no
    /// spool, or a failing one: they are gone once the writer stops);
    /// [`Error::Closed`] when the writer had already stopped; the store's error when the
    /// final sync failed.
    pub async fn shutdown(&self) -> Result<()> {
        self.request(Msg::Shutdown).await
    }

    /// Sends a message that someone waits on and waits for its answer.
    async fn request(&self, msg: fn(oneshot::Sender<Result<()>>) -> Msg) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        // A writer holding events it could not store takes from the queue only when told to:
        // while the queue is full, the message waits for room that only the writer can make.
        // Tell it again until the message is in (other senders may take the room first).
        let send = self.tx.send(msg(tx));
        tokio::pin!(send);
        loop {
            self.urgent.notify_one();
            tokio::select! {
                sent = &mut send => {
                    sent.map_err(|_| Error::Closed)?;
                    break;
                }
                () = tokio::time::sleep(CONTROL_RETRY) => {}
            }
        }
        // Stored as a permit if the writer is not lingering now: its next linger ends at once.
        self.urgent.notify_one();
        rx.await.map_err(|_| Error::Closed)?
    }
}

#[async_trait]
impl AuditSink for AuditDispatcher {
    /// Redacts, encodes and queues the event; waits only while the queue is full.
    async fn record(&self, event: AuditEvent) -> tenancy_core::Result<()> {
        let encoded = self.codec.encode_owned(event)?;
        self.tx
            .send(Msg::Event(encoded))
            .await
            .map_err(|_| Error::Closed.into())
    }

    /// As `record` when the queue has room; hands the event back when it is full.
    fn try_record(&self, event: AuditEvent) -> TryRecord {
        let permit = match self.tx.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Full(())) => return TryRecord::Wait(Box::new(event)),
            Err(mpsc::error::TrySendError::Closed(())) => {
                return TryRecord::Done(Err(Error::Closed.into()));
            }
        };
        TryRecord::Done(
            self.codec
                .encode_owned(event)
                .map(|encoded| permit.send(Msg::Event(encoded)))
                .map_err(Into::into),
        )
    }

    /// Returns once every event queued before it is in the store, synced to disk
    /// ([`AuditStore::sync`]; a failed sync is an [`Error::Io`]). While the store is down,
    /// events are spooled rather than stored: after the sync timeout (default 5 s) this
    /// returns [`Error::Spooled`] (kind `Unavailable`); the events are safe on disk and are
    /// replayed, in order, when the store is back. When the spool cannot take them either (no
    /// spool, or its disk failing), it returns [`Error::Held`] (kind `Timeout`): they wait in
    /// memory, retried, but are not safe yet. `record_sync` is `record` then `flush`.
    async fn flush(&self) -> tenancy_core::Result<()> {
        Ok(self.request(Msg::Flush).await?)
    }
}

/// `Up` while events reach the store; `Degraded` while the store fails and events wait in the
/// spool (or in memory without one), nothing lost; `Down` once the writer has stopped. The
/// figures are the [`DispatcherStats`] and the events queued now.
///
/// ```
/// use std::sync::Arc;
/// use tenancy_audit::{AuditDispatcher, store::MemoryAuditStore};
/// use tenancy_core::{HealthCheck, HealthStatus};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tenancy_audit::Error> {
/// let audit = AuditDispatcher::builder(Arc::new(MemoryAuditStore::new())).start().await?;
/// assert_eq!((audit.component(), audit.check().await.status), ("audit", HealthStatus::Up));
/// audit.shutdown().await?;
/// assert_eq!(audit.check().await.status, HealthStatus::Down);
/// # Ok(()) }
/// ```
#[async_trait]
impl HealthCheck for AuditDispatcher {
    fn component(&self) -> &str {
        "audit"
    }

    async fn check(&self) -> Health {
        let stats = self.stats();
        let health = if self.tx.is_closed() {
            Health::down("audit writer stopped")
        } else if self.counters.backlog.load(Ordering::Relaxed) {
            Health::degraded("audit store failing; events spooled for replay")
        } else {
            Health::up()
        };
        health
            .with_figure(
                "queued",
                (self.tx.max_capacity() - self.tx.capacity()) as u64,
            )
            .with_figure("stored", stats.stored)
            .with_figure("spooled", stats.spooled)
            .with_figure("replayed", stats.replayed)
            .with_figure("store_errors", stats.store_errors)
            .with_figure("conflicts", stats.conflicts)
    }
}

/// [`Waiter::until`] of a waiter whose events are held in memory, not yet in the spool.
const HELD: u64 = u64::MAX;

struct Waiter {
    reply: oneshot::Sender<Result<()>>,
    /// Spool offset the replay must pass; [`HELD`] while the events are held in memory.
    until: u64,
    deadline: Instant,
}

struct Writer {
    rx: mpsc::Receiver<Msg>,
    urgent: Arc<Notify>,
    store: Arc<dyn AuditStore>,
    batch: usize,
    linger: Duration,
    spool: Option<Arc<Mutex<Spool>>>,
    /// Encoded events that neither the store nor the spool took yet (no spool, or spool
    /// write failed). The writer takes no new events while this is not empty.
    held: Vec<EncodedEvent>,
    waiters: Vec<Waiter>,
    sync_timeout: Duration,
    retry_min: Duration,
    retry_max: Duration,
    drain_timeout: Duration,
    append_timeout: Duration,
    backoff: Duration,
    next_retry: Instant,
    last_error: Option<Arc<Error>>,
    counters: Arc<Counters>,
}

/// How far away a deadline that cannot be represented is put (as tokio does for a timeout
/// it cannot represent): about 30 years.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The instant `after` from now, or [`FAR_FUTURE`] from now when that sum overflows: every
/// deadline the writer computes from a configured duration goes through here, so that
/// `Duration::MAX` (no limit, in effect) cannot panic the writer and lose its events.
fn deadline_after(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after).unwrap_or_else(|| now + FAR_FUTURE)
}

fn lock(m: &Mutex<Spool>) -> std::sync::MutexGuard<'_, Spool> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn on_spool<T: Send + 'static>(
    spool: &Arc<Mutex<Spool>>,
    f: impl FnOnce(&mut Spool) -> Result<T> + Send + 'static,
) -> Result<T> {
    let spool = Arc::clone(spool);
    tokio::task::spawn_blocking(move || f(&mut lock(&spool)))
        .await
        .map_err(|e| Error::io("audit spool task", std::io::Error::other(e)))?
}

impl Writer {
    fn spool_pending(&self) -> bool {
        self.spool.as_ref().is_some_and(|s| lock(s).pending())
    }

    fn backlog(&self) -> bool {
        !self.held.is_empty() || self.spool_pending()
    }

    /// [`Writer::run`], until `gone` says that the runtime the writer's thread polls on has
    /// ended: its timers and I/O are then gone, and nothing queued can be stored.
    async fn run_until(self, mut gone: oneshot::Receiver<()>) {
        let run = self.run();
        tokio::pin!(run);
        tokio::select! {
            biased;
            _ = &mut gone => {
                tracing::warn!(
                    "the audit writer's runtime ended before AuditDispatcher::shutdown: \
                     events still queued are not stored"
                );
            }
            () = &mut run => {}
        }
    }

    async fn run(mut self) {
        self.publish();
        loop {
            let msg = if self.backlog() || !self.waiters.is_empty() {
                let wake = self.wake_at();
                tokio::select! {
                    biased;
                    () = tokio::time::sleep_until(wake) => {
                        self.retry().await;
                        self.expire_waiters();
                        self.publish();
                        // A replay that is not done is due again at once, and this arm comes
                        // first: take what queued meanwhile now, or it waits for the whole
                        // replay (requests blocked on a full queue, a flush or shutdown not
                        // even seen, so its timeout not applied).
                        match self.held.is_empty().then(|| self.rx.try_recv().ok()) {
                            Some(Some(m)) => Some(m),
                            _ => continue,
                        }
                    }
                    m = self.rx.recv(), if self.held.is_empty() => m,
                    // Holding events the store refused (no spool, or a failing one), the
                    // writer takes no new ones; but a flush or a shutdown must still be
                    // answered. Queued events ahead of it join the held ones (the queue
                    // bounds them).
                    () = self.urgent.notified(), if !self.held.is_empty() => {
                        match self.take_control() {
                            Some(m) => Some(m),
                            None => continue,
                        }
                    }
                }
            } else {
                self.rx.recv().await
            };
            let Some(first) = msg else {
                // Every handle is gone: store what is left, as a shutdown would.
                let _ = self.drain().await;
                return;
            };
            let mut msgs = vec![first];
            self.take_more(&mut msgs);
            if msgs.len() < self.batch && self.linger.is_zero() {
                // Give concurrent requests one turn to add to this batch: fewer, larger store
                // appends, and fewer wake-ups of an idle writer on the request path.
                tokio::task::yield_now().await;
                self.take_more(&mut msgs);
            }
            let full = msgs.len() >= self.batch;
            let mut events = Vec::new();
            let mut flushed = false;
            let mut msgs = msgs.into_iter();
            while let Some(m) = msgs.next() {
                match m {
                    Msg::Event(e) => events.push(e),
                    Msg::Flush(reply) => {
                        self.write(std::mem::take(&mut events)).await;
                        self.add_waiter(reply).await;
                        flushed = true;
                    }
                    Msg::Shutdown(reply) => {
                        let later: Vec<Msg> = msgs.collect();
                        self.shut_down(events, later, reply).await;
                        return;
                    }
                }
            }
            self.write(events).await;
            self.publish();
            if flushed && !self.held.is_empty() && !self.rx.is_empty() {
                // Holding events, the writer sees a control message only when notified, and
                // the notifications of two requests sent before it looked are one: another
                // flush or shutdown may wait behind the events still queued. Look again.
                self.urgent.notify_one();
            }
            if !full && !self.linger.is_zero() && !self.backlog() && self.waiters.is_empty() {
                // Not polling the queue meanwhile, so `record` wakes nobody: events gather
                // for the next append. A flush or shutdown ends the wait.
                tokio::select! {
                    biased;
                    () = self.urgent.notified() => {}
                    () = tokio::time::sleep(self.linger) => {}
                }
            }
        }
    }

    /// The first flush or shutdown in the queue, the events queued before it moved to `held`.
    fn take_control(&mut self) -> Option<Msg> {
        while let Ok(m) = self.rx.try_recv() {
            match m {
                Msg::Event(e) => self.held.push(e),
                control => return Some(control),
            }
        }
        None
    }

    /// Stops: refuses new events (`record` answers [`Error::Closed`] from now on, and a health
    /// check sees the writer down), stores every event queued before that (`events`, the rest
    /// of the batch, what is still in the queue), replays the spool until the drain timeout,
    /// and answers every waiting flush or shutdown.
    async fn shut_down(
        &mut self,
        mut events: Vec<EncodedEvent>,
        later: Vec<Msg>,
        reply: oneshot::Sender<Result<()>>,
    ) {
        self.rx.close();
        let mut replies = vec![reply];
        let mut later = later;
        // After `close`, `recv` returns what is queued (and what holders of a permit still
        // send), then `None`.
        while let Some(m) = self.rx.recv().await {
            later.push(m);
        }
        for m in later {
            match m {
                Msg::Event(e) => events.push(e),
                Msg::Flush(r) | Msg::Shutdown(r) => replies.push(r),
            }
        }
        while !events.is_empty() {
            let rest = events.split_off(events.len().min(self.batch));
            self.write(events).await;
            events = rest;
        }
        let res = self.drain().await;
        // The spool's lock goes before the answer: a caller that starts a dispatcher on the
        // same spool as soon as `shutdown` answers must not find it still held.
        drop(self.spool.take());
        let mut replies = replies.into_iter();
        let first = replies.next();
        for r in replies {
            let _ = r.send(res.as_ref().map_err(repeat).copied());
        }
        if let Some(first) = first {
            let _ = first.send(res);
        }
    }

    /// Makes the backlog visible to [`HealthCheck::check`].
    fn publish(&self) {
        self.counters
            .backlog
            .store(self.backlog(), Ordering::Relaxed);
    }

    fn take_more(&mut self, msgs: &mut Vec<Msg>) {
        while msgs.len() < self.batch {
            match self.rx.try_recv() {
                Ok(m) => msgs.push(m),
                Err(_) => break,
            }
        }
    }

    fn wake_at(&self) -> Instant {
        let mut at = if self.backlog() {
            self.next_retry
        } else {
            deadline_after(Duration::from_secs(3600))
        };
        for w in &self.waiters {
            at = at.min(w.deadline);
        }
        at
    }

    fn spooled_error(&self) -> Error {
        Error::Spooled(self.last_error.clone())
    }

    async fn add_waiter(&mut self, reply: oneshot::Sender<Result<()>>) {
        // Health reflects the state a waiter is answered in before the answer arrives.
        self.publish();
        if !self.backlog() {
            self.answer_stored(vec![reply]).await;
            return;
        }
        // Events still held lie beyond the spool's end: until they are spooled, no replay
        // position covers them (`spool_held` sets the real one).
        let until = if self.held.is_empty() {
            self.spool.as_ref().map_or(0, |s| lock(s).end())
        } else {
            HELD
        };
        self.waiters.push(Waiter {
            reply,
            until,
            deadline: deadline_after(self.sync_timeout),
        });
    }

    async fn release_waiters(&mut self) {
        self.publish();
        if !self.held.is_empty() {
            return;
        }
        let cursor = self.spool.as_ref().map(|s| {
            let s = lock(s);
            if s.pending() { s.cursor() } else { u64::MAX }
        });
        let done = cursor.unwrap_or(u64::MAX);
        let (ready, rest): (Vec<_>, Vec<_>) = self.waiters.drain(..).partition(|w| w.until <= done);
        self.waiters = rest;
        self.answer_stored(ready.into_iter().map(|w| w.reply).collect())
            .await;
    }

    /// Answers waiters whose events are all in the store, once the store has made them
    /// durable ([`AuditStore::sync`]): `flush` and `record_sync` answer for durably stored
    /// events, whatever the store's own sync schedule. A failed sync is their error.
    async fn answer_stored(&mut self, replies: Vec<oneshot::Sender<Result<()>>>) {
        if replies.is_empty() {
            return;
        }
        match self.sync_store().await {
            Ok(()) => {
                for r in replies {
                    let _ = r.send(Ok(()));
                }
            }
            Err(e) => {
                self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "audit store sync failed");
                let e = Arc::new(e);
                for r in replies {
                    let cause = std::io::Error::other(Arc::clone(&e));
                    let _ = r.send(Err(Error::io("sync audit store", cause)));
                }
            }
        }
    }

    fn expire_waiters(&mut self) {
        let now = Instant::now();
        let (late, rest): (Vec<_>, Vec<_>) =
            self.waiters.drain(..).partition(|w| w.deadline <= now);
        self.waiters = rest;
        for w in late {
            let e = self.unsafe_error(&w);
            let _ = w.reply.send(Err(e));
        }
    }

    /// Why `w` is answered before its events are stored: they are in the spool (safe), or
    /// still held in memory (not safe).
    fn unsafe_error(&self, w: &Waiter) -> Error {
        if w.until == HELD {
            Error::Held(self.last_error.clone())
        } else {
            self.spooled_error()
        }
    }

    fn failed(&mut self, err: Error) {
        self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %err, "audit store append failed; spooling");
        self.last_error = Some(Arc::new(err));
        self.back_off();
    }

    /// Schedules the next retry after the current back-off, and doubles the back-off (up to
    /// the largest). Saturating: a huge `retry_max` means a long wait, not a panic.
    fn back_off(&mut self) {
        self.next_retry = deadline_after(self.backoff);
        self.backoff = self.backoff.saturating_mul(2).min(self.retry_max);
    }

    fn recovered(&mut self) {
        self.backoff = self.retry_min;
        self.last_error = None;
    }

    /// One store append, within the append timeout. An event the store refused as a
    /// conflict (its id stored before with another payload) is counted and logged at error
    /// level with its payload, the one place it is kept.
    async fn append(&self, events: &[EncodedEvent]) -> Result<()> {
        let out = self
            .bounded("audit store append", self.store.append(events))
            .await?;
        for (outcome, event) in out.iter().zip(events).filter(|(o, _)| o.conflict) {
            self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                tenant = %outcome.tenant,
                event_id = %outcome.event_id,
                stored_seq = outcome.seq,
                payload = %String::from_utf8_lossy(&event.payload),
                "audit event not stored: its id is stored already, with another payload"
            );
        }
        Ok(())
    }

    /// [`AuditStore::sync`], within the append timeout.
    async fn sync_store(&self) -> Result<()> {
        self.bounded("audit store sync", self.store.sync()).await
    }

    /// `call` to the store, failed with a time-out after the append timeout. A store that
    /// panics fails the call like any store error (its batch goes to the spool), rather than
    /// ending the writer and, with it, every later event.
    async fn bounded<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.append_timeout, CatchPanic(Box::pin(call))).await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                Err(Error::io(
                    what,
                    std::io::Error::other(format!("the store panicked: {message}")),
                ))
            }
            Err(_) => Err(Error::io(
                what,
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", self.append_timeout),
                ),
            )),
        }
    }

    /// Stores a batch, or spools it; keeps it in memory if even that fails.
    async fn write(&mut self, events: Vec<EncodedEvent>) {
        if events.is_empty() {
            return;
        }
        if !self.backlog() {
            match self.append(&events).await {
                Ok(_) => {
                    self.counters
                        .stored
                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                    self.recovered();
                    return;
                }
                Err(e) => self.failed(e),
            }
        }
        self.held.extend(events);
        self.spool_held().await;
    }

    async fn spool_held(&mut self) {
        let Some(spool) = self.spool.clone() else {
            return;
        };
        if self.held.is_empty() {
            return;
        }
        // The blocking task gets a copy: the batch stays here until the spool has it.
        let copy = self.held.clone();
        let n = copy.len() as u64;
        match on_spool(&spool, move |s| s.append(&copy)).await {
            Ok(()) => {
                self.held.clear();
                self.counters.spooled.fetch_add(n, Ordering::Relaxed);
                let end = lock(&spool).end();
                for w in &mut self.waiters {
                    if w.until == HELD {
                        w.until = end;
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit spool write failed; holding events in memory");
                self.last_error = Some(Arc::new(e));
                self.back_off();
            }
        }
    }

    /// One retry step: held events, then a spool batch.
    async fn retry(&mut self) {
        if Instant::now() < self.next_retry {
            return;
        }
        if !self.held.is_empty() {
            let events = std::mem::take(&mut self.held);
            if self.spool_pending() {
                self.held = events;
                self.spool_held().await;
            } else {
                match self.append(&events).await {
                    Ok(_) => {
                        self.counters
                            .stored
                            .fetch_add(events.len() as u64, Ordering::Relaxed);
                        self.recovered();
                    }
                    Err(e) => {
                        self.held = events;
                        self.failed(e);
                        self.spool_held().await;
                    }
                }
            }
        }
        if let Some(spool) = self.spool.clone() {
            while lock(&spool).pending() {
                let batch = self.batch;
                let read = on_spool(&spool, move |s| Ok((s.cursor(), s.read(batch)?))).await;
                let (events, end) = match read {
                    // Pending, yet not one whole line: the spool ends inside a line (bytes a
                    // failed write left). Reading again finds the same, so back off.
                    Ok((cursor, (_, end))) if end == cursor => {
                        let e = Error::malformed_plain("audit spool ends inside a line");
                        tracing::error!(error = %e, offset = cursor, "audit spool read failed");
                        self.failed(e);
                        break;
                    }
                    Ok((_, x)) => x,
                    Err(e) => {
                        tracing::error!(error = %e, "audit spool read failed");
                        self.failed(e);
                        break;
                    }
                };
                if !events.is_empty()
                    && let Err(e) = self.append(&events).await
                {
                    self.failed(e);
                    break;
                }
                let n = events.len() as u64;
                self.counters.stored.fetch_add(n, Ordering::Relaxed);
                self.counters.replayed.fetch_add(n, Ordering::Relaxed);
                if let Err(e) = on_spool(&spool, move |s| s.advance(end)).await {
                    self.failed(e);
                    break;
                }
                self.recovered();
                self.release_waiters().await;
                self.expire_waiters();
                if !self.rx.is_empty() {
                    // One batch at a time while messages wait: new events go to the spool
                    // before the queue blocks requests, and a flush or shutdown is seen.
                    break;
                }
            }
        }
        self.release_waiters().await;
    }

    /// Replays until everything is stored or the drain timeout passes.
    async fn drain(&mut self) -> Result<()> {
        let deadline = deadline_after(self.drain_timeout);
        while self.backlog() && Instant::now() < deadline {
            tokio::time::sleep_until(self.next_retry.min(deadline)).await;
            self.retry().await;
        }
        self.release_waiters().await;
        for w in std::mem::take(&mut self.waiters) {
            let e = self.unsafe_error(&w);
            let _ = w.reply.send(Err(e));
        }
        // What reached the store is made durable before the writer stops, as for a flush
        // (not while the store is down: the sync would only wait out its timeout).
        let synced = if self.backlog() {
            Ok(())
        } else {
            self.sync_store().await
        };
        if let Err(e) = &synced {
            tracing::error!(error = %e, "audit store sync failed at shutdown");
        }
        if !self.held.is_empty() {
            tracing::error!(
                events = self.held.len(),
                "audit events neither stored nor spooled at shutdown"
            );
            return Err(Error::Lost {
                events: self.held.len(),
                source: self.last_error.clone(),
            });
        }
        if self.backlog() {
            return Err(self.spooled_error());
        }
        synced
    }
}

/// How often a flush or shutdown waiting for room in a full queue tells a writer that holds
/// events to make room.
const CONTROL_RETRY: Duration = Duration::from_millis(20);

/// The same answer for another caller, as near as an error that cannot be cloned allows:
/// spooled and lost events as they are, a failed sync as the same I/O failure, anything else
/// as a stopped writer.
fn repeat(e: &Error) -> Error {
    match e {
        Error::Spooled(last) => Error::Spooled(last.clone()),
        Error::Held(last) => Error::Held(last.clone()),
        Error::Lost { events, source } => Error::Lost {
            events: *events,
            source: source.clone(),
        },
        Error::Io { context, source } => Error::io(
            context,
            std::io::Error::new(source.kind(), source.to_string()),
        ),
        _ => Error::Closed,
    }
}

/// Polls a future, turning a panic inside it into `Err` with the panic's payload.
struct CatchPanic<F>(std::pin::Pin<Box<F>>);

impl<F: Future> Future for CatchPanic<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = &mut self.get_mut().0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    use crate::chain::{Anchor, ChainHead, StoredRecord};
    use crate::store::{Appended, MemoryAuditStore, ScanCursor, ScanPage};
    use tenancy_core::{Outcome, TenantId};

    /// A memory store that fails every append while `down` is set.
    #[derive(Debug, Default)]
    struct Flaky {
        inner: MemoryAuditStore,
        down: AtomicBool,
        panicking: AtomicBool,
    }

    impl Flaky {
        fn set_down(&self, down: bool) {
            self.down.store(down, Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl AuditStore for Flaky {
        async fn append(&self, events: &[EncodedEvent]) -> Result<Vec<Appended>> {
            assert!(
                !self.panicking.load(Ordering::SeqCst),
                "the test store panics"
            );
            if self.down.load(Ordering::SeqCst) {
                return Err(Error::io(
                    "test store",
                    std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "down"),
                ));
            }
            self.inner.append(events).await
        }
        async fn scan(&self, t: &TenantId, c: ScanCursor, l: usize) -> Result<ScanPage> {
            self.inner.scan(t, c, l).await
        }
        async fn newest(
            &self,
            t: &TenantId,
            b: Option<u64>,
            l: usize,
        ) -> Result<Vec<StoredRecord>> {
            self.inner.newest(t, b, l).await
        }
        async fn head(&self, t: &TenantId) -> Result<Option<ChainHead>> {
            self.inner.head(t).await
        }
        async fn anchor(&self, t: &TenantId) -> Result<Option<Anchor>> {
            self.inner.anchor(t).await
        }
        async fn purge(&self, t: &TenantId, a: Anchor) -> Result<u64> {
            self.inner.purge(t, a).await
        }
        async fn tenants(&self) -> Result<Vec<TenantId>> {
            self.inner.tenants().await
        }
        async fn sync(&self) -> Result<()> {
            self.inner.sync().await
        }
    }

    fn encoded(tenant: &TenantId, i: usize) -> EncodedEvent {
        Codec::default()
            .encode_owned(
                AuditEvent::new(tenant.clone(), "x.y", Outcome::Success).with_detail("n", i),
            )
            .unwrap()
    }

    /// A writer (not running: the test drives it) over `store`, spooling to `dir`.
    async fn writer(store: Arc<Flaky>, dir: &tempfile::TempDir) -> (AuditDispatcher, Writer) {
        AuditDispatcher::builder(store)
            .with_spool(dir.path().join("audit.spool"))
            .with_retry(Duration::from_secs(3600), Duration::from_secs(3600))
            .prepare()
            .await
            .unwrap()
    }

    /// A store that panics in `append` fails the batch like any store error: it goes to the
    /// spool, the writer lives on, and once the store behaves every event is stored. Before,
    /// the panic ended the writer: the queued events were lost and every later `record`
    /// answered `Closed`.
    #[tokio::test]
    async fn a_panicking_store_does_not_end_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Flaky::default());
        let tenant = TenantId::parse("acme").unwrap();
        let audit = AuditDispatcher::builder(Arc::clone(&store) as Arc<dyn AuditStore>)
            .with_spool(dir.path().join("audit.spool"))
            .with_retry(Duration::from_millis(10), Duration::from_millis(50))
            .with_sync_timeout(Duration::from_millis(200))
            .start()
            .await
            .unwrap();
        store.panicking.store(true, Ordering::SeqCst);
        for i in 0..20 {
            let event =
                AuditEvent::new(tenant.clone(), "x.y", Outcome::Success).with_detail("n", i);
            audit
                .record(event)
                .await
                .expect("record while the store panics");
        }
        let flushed = audit.flush().await;
        assert!(
            flushed
                .as_ref()
                .is_err_and(|e| e.kind() == tenancy_core::ErrorKind::Unavailable),
            "spooled, not closed: {flushed:?}"
        );
        assert!(audit.stats().store_errors >= 1);
        store.panicking.store(false, Ordering::SeqCst);
        let mut stored = false;
        for _ in 0..100 {
            if audit.flush().await.is_ok() {
                stored = true;
                break;
            }
        }
        assert!(stored, "the replay never finished");
        assert_eq!(store.inner.records(&tenant).len(), 20);
        audit.shutdown().await.unwrap();
    }

    /// A flush of events the spool refused (they are held in memory) is not answered `Ok`
    /// once the spool takes them: only once the replay has put them in the store.
    #[tokio::test]
    async fn a_flush_of_held_events_waits_for_the_store_not_for_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Flaky::default());
        let tenant = TenantId::parse("acme").unwrap();
        let (_handle, mut w) = writer(Arc::clone(&store), &dir).await;
        let spool = w.spool.clone().unwrap();

        // The store is down and the spool's disk is full: the event stays in memory.
        store.set_down(true);
        let full = File::options().append(true).open("/dev/full").unwrap();
        let real = lock(&spool).replace_file(full);
        w.write(vec![encoded(&tenant, 0)]).await;
        assert_eq!(w.held.len(), 1, "neither the store nor the spool took it");
        let (reply, mut answer) = oneshot::channel();
        w.add_waiter(reply).await;

        // The disk has room again: the retry spools the event; the store is still down.
        lock(&spool).replace_file(real);
        w.next_retry = Instant::now();
        w.retry().await;
        assert!(
            w.held.is_empty() && w.spool_pending(),
            "spooled, not stored"
        );
        assert!(
            matches!(answer.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            "the flush was answered while its event was only in the spool"
        );

        // The store is back: the replay stores the event, and only then is the flush answered.
        store.set_down(false);
        w.next_retry = Instant::now();
        w.retry().await;
        assert!(matches!(answer.try_recv(), Ok(Ok(()))));
        assert_eq!(store.inner.records(&tenant).len(), 1);
    }

    /// Timeouts of `Duration::MAX` and a largest back-off of `Duration::MAX` mean "no limit",
    /// not a deadline that overflows and panics the writer: through a short outage it still
    /// records, answers a waiting `record_sync` once the replay is done, flushes and shuts
    /// down, and every event reaches the store.
    #[tokio::test]
    async fn unbounded_timeouts_do_not_panic_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Flaky::default());
        let tenant = TenantId::parse("acme").unwrap();
        let event =
            |i: usize| AuditEvent::new(tenant.clone(), "x.y", Outcome::Success).with_detail("n", i);
        let sink = AuditDispatcher::builder(Arc::clone(&store) as Arc<dyn AuditStore>)
            .with_spool(dir.path().join("audit.spool"))
            .with_sync_timeout(Duration::MAX)
            .with_drain_timeout(Duration::MAX)
            .with_append_timeout(Duration::MAX)
            .with_retry(Duration::from_millis(1), Duration::MAX)
            .start()
            .await
            .unwrap();
        sink.record(event(0)).await.unwrap();
        sink.record_sync(event(1)).await.unwrap();

        // The store is down for a moment: the event is spooled, its caller waits.
        store.set_down(true);
        let waiting = tokio::spawn({
            let sink = sink.clone();
            let e = event(2);
            async move { sink.record_sync(e).await }
        });
        let started = std::time::Instant::now();
        while sink.stats().spooled == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "never spooled");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        store.set_down(false);
        let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the waiting record_sync was never answered")
            .unwrap();
        assert!(answer.is_ok(), "{answer:?}");

        sink.record(event(3)).await.unwrap();
        sink.flush().await.unwrap();
        sink.shutdown().await.unwrap();
        assert_eq!(store.inner.records(&tenant).len(), 4);
        assert!(sink.stats().store_errors >= 1, "{:?}", sink.stats());
    }

    /// With the store down and no spool, the writer holds what it could not store, and
    /// the queue fills behind it: a shutdown still gets in and answers (`Lost`) after the
    /// drain timeout, instead of waiting for room for ever.
    #[tokio::test]
    async fn a_shutdown_behind_a_full_queue_answers() {
        let store = Arc::new(Flaky::default());
        store.set_down(true);
        let tenant = TenantId::parse("acme").unwrap();
        let sink = AuditDispatcher::builder(Arc::clone(&store) as Arc<dyn AuditStore>)
            .with_capacity(4)
            .with_batch_size(2)
            .with_retry(Duration::from_millis(5), Duration::from_millis(20))
            .with_drain_timeout(Duration::from_millis(200))
            .start()
            .await
            .unwrap();
        // Enough events to leave the writer holding some and the queue full; the callers
        // past the queue's room wait, on tasks of their own.
        let mut waiting = Vec::new();
        for i in 0..16 {
            let (sink, e) = (
                sink.clone(),
                AuditEvent::new(tenant.clone(), "x.y", Outcome::Success).with_detail("n", i),
            );
            waiting.push(tokio::spawn(async move { sink.record(e).await }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answer = tokio::time::timeout(Duration::from_secs(10), sink.shutdown())
            .await
            .expect("the shutdown never got into the full queue");
        assert!(matches!(answer, Err(Error::Lost { .. })), "{answer:?}");
        for w in waiting {
            let _ = w.await;
        }
    }

    /// A back-off of `Duration::MAX` saturates instead of overflowing, and so does the retry
    /// deadline computed from it.
    #[tokio::test]
    async fn a_huge_back_off_saturates() {
        let dir = tempfile::tempdir().unwrap();
        let (_handle, mut w) = AuditDispatcher::builder(Arc::new(Flaky::default()))
            .with_spool(dir.path().join("audit.spool"))
            .with_retry(Duration::MAX / 2 + Duration::from_secs(1), Duration::MAX)
            .prepare()
            .await
            .unwrap();
        for _ in 0..3 {
            w.failed(Error::io(
                "test store",
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "down"),
            ));
        }
        assert_eq!(w.backoff, Duration::MAX);
        assert!(w.next_retry > Instant::now() + Duration::from_secs(86_400 * 365));
    }

    /// A spool whose replay finds no whole line before its end (bytes a failed write left,
    /// then an append after them) makes the writer report a failure and back off, not read
    /// the same nothing again for ever.
    #[tokio::test]
    async fn a_spool_ending_inside_a_line_backs_off_instead_of_spinning() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Flaky::default());
        let tenant = TenantId::parse("acme").unwrap();
        let (_handle, mut w) = writer(Arc::clone(&store), &dir).await;
        let spool = w.spool.clone().unwrap();
        // Leftover bytes of a failed write, then an event appended behind them: the spool's
        // length now ends one line short of the file's, inside a line.
        File::options()
            .append(true)
            .open(dir.path().join("audit.spool"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"partial"))
            .unwrap();
        lock(&spool).append(&[encoded(&tenant, 0)]).unwrap();
        assert!(w.spool_pending());

        tokio::time::timeout(Duration::from_secs(10), w.retry())
            .await
            .expect("the replay kept reading a spool that ends inside a line");
        assert_eq!(w.counters.store_errors.load(Ordering::Relaxed), 1);
        assert!(
            matches!(w.last_error.as_deref(), Some(Error::Malformed { .. })),
            "{:?}",
            w.last_error
        );
        assert!(w.next_retry > Instant::now(), "the writer backs off");
    }
}
