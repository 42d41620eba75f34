//! The conformance suites against every in-memory backend.

use std::sync::Arc;

use tenancy_core::memory::{
    MemoryAuditSink, MemoryDenylist, MemoryRateLimiter, MemorySessionStore, MemoryTenantCache,
    MemoryTenantDirectory,
};
use tenancy_core::testkit::{self, Fixture, TimeControl};
use tenancy_core::{Clock as _, ManualClock};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_rate_limiter() {
    testkit::rate_limiter(Arc::new(MemoryRateLimiter::new()), &Fixture::new()).await;
}

#[tokio::test]
async fn memory_session_store() {
    let clock = ManualClock::new();
    let store = MemorySessionStore::with_clock(Arc::new(clock.clone()));
    testkit::session_store(&store, TimeControl::Manual(clock), &Fixture::new()).await;
}

#[tokio::test]
async fn memory_denylist() {
    let clock = ManualClock::new();
    let list = MemoryDenylist::with_clock(Arc::new(clock.clone()));
    let now = {
        let clock = clock.clone();
        move || clock.now().unix_timestamp()
    };
    testkit::denylist(&list, now, TimeControl::Manual(clock), &Fixture::new()).await;
}

#[tokio::test]
async fn memory_tenant_cache() {
    let clock = ManualClock::new();
    let cache = MemoryTenantCache::with_clock(Arc::new(clock.clone()));
    testkit::tenant_cache(&cache, TimeControl::Manual(clock), &Fixture::new()).await;
}

#[tokio::test]
async fn memory_tenant_directory() {
    testkit::tenant_directory(&MemoryTenantDirectory::new(), &Fixture::new()).await;
}

#[tokio::test]
async fn memory_audit_sink() {
    let sink = MemoryAuditSink::new();
    let read = |t| {
        let sink = sink.clone();
        async move { sink.events_for(&t) }
    };
    testkit::audit_sink(&sink, read, &Fixture::new()).await;
}
