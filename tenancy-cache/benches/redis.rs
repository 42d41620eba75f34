//! Redis rate-limit decisions and session loads, with `redis-benchmark` as the ceiling, in one
//! run against a `redis-server` the bench starts for itself on a free loopback port.
//!
//! `cargo bench -p tenancy-cache --bench redis -- --warm-up-time 1 --measurement-time 3`
//!
//! - `redis_rate_limit/tenancy_64_tasks`: one process, 64 tokio tasks, each decision a
//!   tenant limit and a user limit (always allowed, so every call writes both keys).
//! - After the criterion groups, the same workload is timed directly (200k decisions) and
//!   `redis-benchmark -c 64` runs the same script with `EVALSHA`, the same keys and the same
//!   arguments, alternating twice; the ratio is printed.
//! - `session_load`: p50 and p99 of `load` (and `save`) from 64 concurrent tasks over 1000
//!   sessions, printed after the groups.

use std::hint::black_box;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use tenancy_cache::keys::KeySpace;
use tenancy_cache::limiter::decision_script_sha;
use tenancy_cache::{RedisConfig, RedisPool, RedisRateLimiter, RedisSessionStore};
use tenancy_core::{
    Limit, NewSession, Quota, RateLimitRequest, RateLimiter, SessionStore, TenantId, UserId,
};
use tokio::runtime::Runtime;

const TASKS: u64 = 64;

struct Server {
    port: u16,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed for this bench");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpListener::bind(("127.0.0.1", port)).is_ok() || !pong(port) {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { port, child }
}

fn pong(port: u16) -> bool {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "ping"])
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
}

fn limits() -> Vec<Limit> {
    let q = Quota::per_second(1_000_000_000).with_burst(1_000_000_000);
    vec![Limit::tenant(q), Limit::user(q)]
}

fn request() -> RateLimitRequest {
    RateLimitRequest::new(
        TenantId::parse("bench").expect("tenant"),
        Some(UserId::parse("user").expect("user")),
        limits(),
    )
}

/// `iters` decisions spread over 64 tasks; the elapsed wall time.
async fn decisions(limiter: &Arc<RedisRateLimiter>, iters: u64) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let n = iters / TASKS + u64::from(i < iters % TASKS);
        let l = limiter.clone();
        tasks.push(tokio::spawn(async move {
            let r = request();
            for _ in 0..n {
                let d = l.check(&r).await.expect("decision");
                assert!(d.allowed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    start.elapsed()
}

fn redis_benchmark(port: u16, n: u64) -> f64 {
    let ks = KeySpace::default();
    let r = request();
    let mut args = vec![
        "-h".to_owned(),
        "127.0.0.1".to_owned(),
        "-p".to_owned(),
        port.to_string(),
        "-c".to_owned(),
        TASKS.to_string(),
        "-n".to_owned(),
        n.to_string(),
        "-q".to_owned(),
        "EVALSHA".to_owned(),
        decision_script_sha().to_owned(),
        "2".to_owned(),
        ks.limit_tenant(&r.tenant, 1),
        ks.limit_user(&r.tenant, r.user.as_ref().expect("user"), 1),
    ];
    for l in r.applicable() {
        let t = l.quota.emission_interval_nanos();
        args.push(t.saturating_mul(r.cost).to_string());
        args.push(t.saturating_mul(l.quota.burst).to_string());
        args.push("1".to_owned());
    }
    let out = Command::new("redis-benchmark")
        .args(&args)
        .output()
        .expect("redis-benchmark must be installed for this bench");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .split(['\r', '\n'])
        .rfind(|l| l.contains(" requests per second"))
        .unwrap_or_else(|| panic!("unexpected redis-benchmark output: {text}"));
    line.split(": ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected redis-benchmark line: {line}"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// p50 and p99 of `load` and of `save` over 1000 sessions from 64 tasks.
async fn session_latencies(pool: RedisPool) -> [(Duration, Duration); 2] {
    let store = Arc::new(RedisSessionStore::new(pool));
    let tenant = TenantId::parse("bench").expect("tenant");
    let mut sessions = Vec::new();
    for i in 0..1000 {
        let mut data = tenancy_core::SessionData::new();
        data.insert("refresh".into(), "x".repeat(64).into());
        data.insert("n".into(), i.into());
        sessions.push(
            store
                .create(
                    NewSession::new(
                        tenant.clone(),
                        UserId::parse(&format!("u{i}")).expect("user"),
                    )
                    .with_data(data),
                )
                .await
                .expect("create"),
        );
    }
    let sessions = Arc::new(sessions);
    let mut out = [(Duration::ZERO, Duration::ZERO); 2];
    for (slot, save) in [(0, false), (1, true)] {
        let mut tasks = Vec::new();
        for t in 0..TASKS as usize {
            let (store, sessions) = (store.clone(), sessions.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(200);
                // Each task owns the sessions t, t+64, ... so saves never conflict.
                for round in 0..200 {
                    let idx = (t + 64 * (round % 15)) % sessions.len();
                    let s = &sessions[idx];
                    if save {
                        let current = store.load(&s.tenant, &s.id).await.expect("load");
                        let current = current.expect("live");
                        let begin = Instant::now();
                        store.save(&current).await.expect("save");
                        lat.push(begin.elapsed());
                    } else {
                        let start = Instant::now();
                        black_box(store.load(&s.tenant, &s.id).await.expect("load"));
                        lat.push(start.elapsed());
                    }
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all.sort();
        out[slot] = (percentile(&all, 0.50), percentile(&all, 0.99));
    }
    out
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let server = start_server();
    let rt = Runtime::new().expect("runtime");
    let pool = rt.block_on(async {
        RedisConfig::single(format!("redis://127.0.0.1:{}", server.port))
            .with_min_idle(4)
            .connect()
            .await
            .expect("pool")
    });
    // A generous decision timeout: the machine is shared with builds, and this measures
    // throughput, not the failure policy.
    let limiter = Arc::new(
        RedisRateLimiter::builder(pool.clone())
            .with_timeout(Duration::from_secs(2))
            .build(),
    );

    let mut group = c.benchmark_group("redis_rate_limit");
    group.throughput(Throughput::Elements(1));
    group.bench_function("tenancy_64_tasks", |b| {
        b.iter_custom(|iters| rt.block_on(decisions(&limiter, iters)));
    });
    group.finish();

    let store = RedisSessionStore::new(pool.clone());
    let s = rt.block_on(async {
        store
            .create(NewSession::new(
                TenantId::parse("bench").expect("tenant"),
                UserId::parse("single").expect("user"),
            ))
            .await
            .expect("create")
    });
    c.bench_function("session_load_one_task", |b| {
        b.iter(|| {
            rt.block_on(async { black_box(store.load(&s.tenant, &s.id).await.expect("load")) })
        });
    });
    c.final_summary();

    // Direct comparison, alternating to spread the noise of a shared machine.
    const N: u64 = 200_000;
    let mut ours = Vec::new();
    let mut ceiling = Vec::new();
    for _ in 0..2 {
        ceiling.push(redis_benchmark(server.port, N));
        let d = rt.block_on(decisions(&limiter, N));
        ours.push(N as f64 / d.as_secs_f64());
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!("\n== decisions per second, 64 concurrent clients, same script/keys/arguments");
    println!(
        "redis-benchmark EVALSHA -c 64: {ceiling:.0?} (mean {:.0})",
        mean(&ceiling)
    );
    println!(
        "tenancy RedisRateLimiter, 64 tasks: {ours:.0?} (mean {:.0})",
        mean(&ours)
    );
    println!(
        "ratio: {:.2} (target: at least 0.50)",
        mean(&ours) / mean(&ceiling)
    );

    let [(l50, l99), (s50, s99)] = rt.block_on(session_latencies(pool));
    println!("\n== sessions, 64 concurrent tasks, 1000 sessions, loopback");
    println!("load: p50 {l50:?}, p99 {l99:?}");
    println!("save: p50 {s50:?}, p99 {s99:?}");
}
