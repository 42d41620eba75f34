//! The in-memory limiter next to governor's keyed limiter, in the same run.
//!
//! `cargo bench -p tenancy-core --bench limiter`
//!
//! Each iteration makes one decision. Ours decides two quotas at once (the tenant's and the
//! user's, all or nothing); governor decides one key. Keys are visited round robin. Before the
//! timings, the bench reports resident memory per idle key for both, measured from
//! `/proc/self/statm` around the insertion of 100k keys.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use governor::{Quota as GQuota, RateLimiter as GLimiter};
use tenancy_core::memory::MemoryRateLimiter;
use tenancy_core::{Limit, ManualClock, Quota, RateLimitRequest, TenantId, UserId};

fn requests(n: usize) -> Vec<RateLimitRequest> {
    // One request an hour with a burst of a billion: every decision is an allow (the common
    // case) and every key stays live between its visits, as the keys of a tenant active within
    // its period do. (With a rate so high that a key rests before its next visit, a key is
    // dropped by the sweep and stored again: that measures churn, not decisions, and governor,
    // which never drops a key unless asked to, would not pay for it.)
    let limits = vec![
        Limit::tenant(Quota::per_hour(1).with_burst(1_000_000_000)),
        Limit::user(Quota::per_hour(1).with_burst(1_000_000_000)),
    ];
    // One user id shared by every request, as governor's keys share the text `user`.
    let user = UserId::parse("user").expect("valid user");
    (0..n)
        .map(|i| {
            RateLimitRequest::new(
                TenantId::parse(&format!("tenant-{i}")).expect("valid tenant"),
                Some(user.clone()),
                limits.clone(),
            )
        })
        .collect()
}

fn governor_keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("tenant-{i}:user")).collect()
}

fn governor_limiter() -> governor::DefaultKeyedRateLimiter<String> {
    // The same quota as ours: one an hour, a burst far beyond what the bench consumes.
    GLimiter::keyed(GQuota::per_hour(NonZeroU32::MIN).allow_burst(NonZeroU32::MAX))
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("limiter_decision");
    group.throughput(Throughput::Elements(1));
    for n in [1usize, 10_000, 100_000] {
        let reqs = requests(n);
        let ours = MemoryRateLimiter::new();
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("tenancy_two_quotas", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % reqs.len();
                black_box(ours.check_now(&reqs[i]).allowed)
            });
        });

        let keys = governor_keys(n);
        let theirs = governor_limiter();
        let mut j = 0;
        group.bench_with_input(BenchmarkId::new("governor_keyed_one_key", n), &n, |b, _| {
            b.iter(|| {
                j = (j + 1) % keys.len();
                black_box(theirs.check_key(&keys[j]).is_ok())
            });
        });
    }
    group.finish();
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[allow(clippy::print_stdout)]
fn memory_per_key() {
    // Requests and keys are built inside the loops and dropped, so the resident growth is
    // what each limiter keeps: its map entries and the key text it holds on to.
    const N: usize = 100_000;
    let ours = MemoryRateLimiter::with_clock(Arc::new(ManualClock::new()));
    let before = resident_bytes();
    for i in 0..N {
        let r = RateLimitRequest::new(
            TenantId::parse(&format!("tenant-{i}")).expect("valid tenant"),
            Some(UserId::parse("user").expect("valid user")),
            vec![
                Limit::tenant(Quota::per_hour(1000)),
                Limit::user(Quota::per_hour(100)),
            ],
        );
        ours.check_now(&r);
    }
    let after = resident_bytes();
    let stored = ours.key_count() as u64;
    println!(
        "memory: tenancy: {N} (tenant, user) pairs = {stored} stored keys (tenant slot + user entry each): {:.0} bytes per pair, {:.0} bytes per stored key",
        (after - before) as f64 / N as f64,
        (after - before) as f64 / stored as f64
    );
    let theirs = governor_limiter();
    let before = resident_bytes();
    for i in 0..N {
        let k = format!("tenant-{i}:user");
        let _ = theirs.check_key(&k);
    }
    let after = resident_bytes();
    println!(
        "memory: governor: {} keys: {:.0} bytes per key",
        theirs.len(),
        (after - before) as f64 / N as f64
    );
}

criterion_group!(benches, decisions);

fn main() {
    memory_per_key();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
