//! A driver for counting the instructions of one limiter decision with callgrind, ours next to
//! governor's keyed limiter, on the same keys and quota as `benches/limiter.rs`. Instruction
//! counts do not depend on what else the machine is doing, unlike the bench's timings.
//!
//! ```text
//! cargo build --release -p tenancy-core --example limiter_instructions
//! B=target/release/examples/limiter_instructions
//! # instructions per decision = (count at 200000 - count at 100000) / 100000
//! valgrind --tool=callgrind $B tenancy 10000 100000
//! valgrind --tool=callgrind $B tenancy 10000 200000
//! ```
//!
//! Arguments: `tenancy` or `governor`, the number of keys, the number of decisions after one
//! warm-up round over every key.

use std::hint::black_box;
use std::num::NonZeroU32;

use governor::{Quota as GQuota, RateLimiter as GLimiter};
use tenancy_core::memory::MemoryRateLimiter;
use tenancy_core::{Limit, Quota, RateLimitRequest, TenantId, UserId};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(which), Some(Ok(keys)), Some(Ok(decisions))) = (
        args.get(1),
        args.get(2).map(|a| a.parse::<usize>()),
        args.get(3).map(|a| a.parse::<usize>()),
    ) else {
        eprintln!("usage: limiter_instructions tenancy|governor <keys> <decisions>");
        std::process::exit(2);
    };
    let keys = keys.max(1);
    let mut allowed = 0usize;
    match which.as_str() {
        "tenancy" => {
            let limits = vec![
                Limit::tenant(Quota::per_hour(1).with_burst(1_000_000_000)),
                Limit::user(Quota::per_hour(1).with_burst(1_000_000_000)),
            ];
            let user = UserId::parse("user").expect("valid user");
            let reqs: Vec<_> = (0..keys)
                .map(|i| {
                    let tenant = TenantId::parse(&format!("tenant-{i}")).expect("valid tenant");
                    RateLimitRequest::new(tenant, Some(user.clone()), limits.clone())
                })
                .collect();
            let limiter = MemoryRateLimiter::new();
            for k in 0..keys + decisions {
                allowed += usize::from(limiter.check_now(&reqs[k % keys]).allowed);
            }
        }
        "governor" => {
            let names: Vec<String> = (0..keys).map(|i| format!("tenant-{i}:user")).collect();
            let limiter =
                GLimiter::keyed(GQuota::per_hour(NonZeroU32::MIN).allow_burst(NonZeroU32::MAX));
            for k in 0..keys + decisions {
                allowed += usize::from(black_box(limiter.check_key(&names[k % keys]).is_ok()));
            }
        }
        other => {
            eprintln!("unknown limiter {other:?}: tenancy or governor");
            std::process::exit(2);
        }
    }
    println!("{allowed} allowed");
}
