//! A writer started on its own thread whose runtime ends without `shutdown`: the thread
//! stops, quietly. It neither panics on a timer of the runtime that is gone nor waits for
//! ever on a queue that no runtime serves (a thread leaked with every runtime).
//!
//! One test in its own binary: it installs a panic hook, which is global to the process.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tenancy_audit::AuditDispatcher;
use tenancy_audit::store::MemoryAuditStore;
use tenancy_core::{AuditEvent, AuditSink, Outcome, TenantId, TryRecord};

fn event() -> AuditEvent {
    AuditEvent::new(
        TenantId::parse("acme").unwrap(),
        "records.read",
        Outcome::Success,
    )
}

/// Starts a writer on its own thread in a runtime of its own, records `events` events, lets
/// the writer settle for `settle` (lingering with a timer, or idle on its queue), drops the
/// runtime, and waits until the writer has let its queue go.
fn run_and_drop_runtime(events: usize, linger: Duration, settle: Duration) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let audit: AuditDispatcher = runtime.block_on(async {
        let audit = AuditDispatcher::builder(Arc::new(MemoryAuditStore::new()))
            .with_linger(linger)
            .start_on_own_thread()
            .await
            .unwrap();
        for _ in 0..events {
            audit.record(event()).await.unwrap();
        }
        tokio::time::sleep(settle).await;
        audit
    });
    drop(runtime);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match audit.try_record(event()) {
            TryRecord::Done(Err(_)) => return,
            _ if Instant::now() > deadline => {
                panic!("the writer still takes events 10 s after its runtime ended")
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn a_writer_whose_runtime_ends_stops_without_a_panic() {
    let panics: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&panics);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("tenancy-audit") {
            seen.lock().unwrap().push(info.to_string());
        }
        previous(info);
    }));
    // Lingering: the writer waits on a timer when the runtime ends.
    run_and_drop_runtime(3, Duration::from_secs(5), Duration::from_millis(50));
    // Idle: the writer waits on its queue, with no timer, when the runtime ends.
    run_and_drop_runtime(0, Duration::ZERO, Duration::from_millis(50));
    let _ = std::panic::take_hook();
    assert_eq!(*panics.lock().unwrap(), Vec::<String>::new());
}
