//! Heap bytes per idle connection and per detached user, with 1,000,000 of them in one hub, next
//! to the baseline (`baseline/mod.rs`) holding the same population. Measured with a counting
//! global allocator (requested bytes; the system allocator's own overhead is not included, on
//! either side), as `tests/alloc.rs` does at 100,000.
//!
//! Run: `cargo bench --bench memory`. Under `cargo test --benches` (no `--bench` argument) it runs
//! the same scenarios at 10,000 as a smoke test.

mod baseline;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::Instant;

use switchboard::{Config, DisconnectReason, Hub, Principal, Tier};

use baseline::{Baseline, BaselineConfig};

struct Counting;

static IN_USE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator and only adds an atomic counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        IN_USE.fetch_add(layout.size() as i64, Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size() as i64, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        IN_USE.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn in_use() -> i64 {
    IN_USE.load(Relaxed)
}

fn drain(hub: &mut Hub) {
    while hub.poll_action().is_some() {}
}

fn drain_baseline(b: &Baseline) {
    b.drain(|_, _| {});
}

fn hub_config(n: usize, per_user: u32) -> Config {
    let mut cfg = Config {
        max_connections: n as u32 + 1,
        max_detached_users: n as u32 + 1,
        ..Config::default()
    };
    cfg.tiers.enterprise.max_connections_per_user = per_user;
    cfg
}

fn baseline_config(n: usize, per_user: usize) -> BaselineConfig {
    BaselineConfig {
        max_connections: n + 1,
        max_connections_per_user: per_user,
        ..BaselineConfig::default()
    }
}

/// Heap held per connection when `n` connections of `n / per_user` users are open and idle.
fn idle(n: usize, per_user: usize) -> (i64, i64) {
    let now = Instant::now();
    let before = in_use();
    let mut hub = Hub::new(hub_config(n, per_user as u32)).unwrap();
    for u in 0..n / per_user {
        let p = Principal::new("acme", format!("user-{u:07}")).tier(Tier::Enterprise);
        for _ in 0..per_user {
            hub.connect(now, p.clone()).unwrap();
        }
        drain(&mut hub);
    }
    assert_eq!(hub.stats().connections_active, n as u64);
    let ours = (in_use() - before) / n as i64;
    drop(hub);

    let before = in_use();
    let b = Baseline::new(baseline_config(n, per_user));
    for u in 0..n / per_user {
        let user = format!("user-{u:07}");
        for _ in 0..per_user {
            b.connect(now, "acme", &user).unwrap();
        }
        drain_baseline(&b);
    }
    assert_eq!(b.connection_count(), n);
    let theirs = (in_use() - before) / n as i64;
    (ours, theirs)
}

/// Heap held per detached user (no buffered messages) when `n` users have come and gone, one
/// connection each, within retention. The connection tables stay at one slot (each user
/// disconnects before the next connects), so this is the user's state alone.
fn detached(n: usize) -> (i64, i64) {
    let now = Instant::now();
    let mut hub = Hub::new(hub_config(n, 25)).unwrap();
    // Warm up the single connection slot and the action queue.
    let id = hub.connect(now, Principal::new("acme", "warm-up")).unwrap();
    hub.disconnect(now, id, DisconnectReason::Clean).unwrap();
    drain(&mut hub);
    let before = in_use();
    for u in 0..n {
        let id = hub.connect(now, Principal::new("acme", format!("user-{u:07}"))).unwrap();
        drain(&mut hub);
        hub.disconnect(now, id, DisconnectReason::Clean).unwrap();
        drain(&mut hub);
    }
    assert_eq!(hub.stats().users_detached, n as u64 + 1);
    assert_eq!(hub.stats().buffered_messages, 0);
    let ours = (in_use() - before) / n as i64;
    drop(hub);

    let b = Baseline::new(baseline_config(n, 25));
    let id = b.connect(now, "acme", "warm-up").unwrap();
    b.disconnect(now, id);
    drain_baseline(&b);
    let before = in_use();
    for u in 0..n {
        let id = b.connect(now, "acme", &format!("user-{u:07}")).unwrap();
        drain_baseline(&b);
        b.disconnect(now, id);
    }
    // Every user entry is still held (the baseline's idle managers wait for cleanup).
    assert_eq!(b.counters().3, n + 1);
    let theirs = (in_use() - before) / n as i64;
    (ours, theirs)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 1_000_000 } else { 10_000 };
    println!("Heap bytes (requested, counting allocator), {n} per scenario\n");
    println!("| scenario | switchboard | baseline | baseline ÷ switchboard |");
    println!("|---|---:|---:|---:|");
    let row = |name: String, (ours, theirs): (i64, i64)| {
        println!("| {name} | {ours} B | {theirs} B | {:.2}× |", theirs as f64 / ours as f64);
    };
    row(format!("per idle connection ({n} conns, 4 per user)"), idle(n, 4));
    row(format!("per idle connection ({n} conns, 1 per user)"), idle(n, 1));
    row(format!("per detached user ({n} users, no messages)"), detached(n));
}
