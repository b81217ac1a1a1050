//! `cargo bench --bench rate_limit`: the cost of one rate-limit check (realm + user limiters)
//! with 1, 1,000 and 100,000 distinct users, the memory 100,000 tracked users take, and the
//! time a housekeeping pass over them takes.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Instant;

use zulip_listeners::config::QuotaConfig;
use zulip_listeners::guards::ratelimit::Limits;

/// Resident memory of this process, in bytes (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("the benchmark's quotas are not zero")
}

fn main() {
    let generous = QuotaConfig {
        per_minute: nonzero(u32::MAX / 2),
        burst: nonzero(1_000_000),
    };
    for users in [1i64, 1_000, 100_000] {
        let limits = Limits::new(&generous, &generous);
        let checks = 2_000_000i64;
        // Warm up: every key exists before timing.
        for user in 0..users {
            black_box(limits.check(user % 4, Some(user)));
        }
        let started = Instant::now();
        for i in 0..checks {
            let user = i % users;
            black_box(limits.check(user % 4, Some(user)));
        }
        let ns = started.elapsed().as_nanos() as f64 / checks as f64;
        println!("check (realm + user), {users:>7} distinct users: {ns:6.1} ns");
    }

    // The defaults (100/min per user): a key stays tracked for a while after its last event.
    let per_user = QuotaConfig {
        per_minute: nonzero(100),
        burst: nonzero(20),
    };
    let before = resident_bytes();
    let limits = Limits::new(&generous, &per_user);
    for user in 0..100_000i64 {
        limits.check(user % 4, Some(user));
    }
    let after = resident_bytes();
    let tracked = limits.tracked_keys();
    if let (Some(before), Some(after)) = (before, after) {
        println!(
            "memory for 100,000 tracked users: {:.1} MiB ({} bytes per user)",
            (after.saturating_sub(before)) as f64 / (1024.0 * 1024.0),
            after.saturating_sub(before) / 100_000
        );
    }
    let started = Instant::now();
    let kept = limits.housekeeping();
    println!(
        "housekeeping pass over {tracked} keys: {:.2} ms ({kept} still recent)",
        started.elapsed().as_secs_f64() * 1000.0
    );
}
