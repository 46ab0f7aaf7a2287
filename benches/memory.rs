//! Heap bytes per idle connection and per detached user, with 1,000,000 of them in one hub, next
//! to the baseline (`baseline/mod.rs`) holding the same population. Measured with a counting
//! global allocator (requested bytes; the system allocator's own overhead is not included, on
//! either side), as `tests/alloc.rs` does at 100,000.
//!
//! A second table counts what one publish allocates (calls and requested bytes, freed or not):
//! a local publish, a clustered publish (issue 11: serialized once, then appended), and one bus
//! message delivered, each to a user with one connection among 1,000 others.
//!
//! Run: `cargo bench --bench memory`. Under `cargo test --benches` (no `--bench` argument) it runs
//! the same scenarios at 10,000 as a smoke test.

mod baseline;
// Shared with `hub.rs` and `profile.rs`; this bench uses only the switchboard side of it.
#[allow(dead_code)]
mod workload;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use switchboard::{
    Action, BusReply, Config, ConnId, DisconnectReason, Hub, Principal, StreamPos, Target, Tier,
};

use baseline::{Baseline, BaselineConfig};
use workload::cluster::{EPOCH, bus_payload, clustered, settle};
use workload::{TENANT, envelope};

struct Counting;

static IN_USE: AtomicI64 = AtomicI64::new(0);
/// Allocation calls (a growing `realloc` counts as one) and the bytes they asked for, ever.
static CALLS: AtomicU64 = AtomicU64::new(0);
static REQUESTED: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator and only adds an atomic counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        IN_USE.fetch_add(layout.size() as i64, Relaxed);
        CALLS.fetch_add(1, Relaxed);
        REQUESTED.fetch_add(layout.size() as u64, Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size() as i64, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        IN_USE.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        if new_size > layout.size() {
            CALLS.fetch_add(1, Relaxed);
            REQUESTED.fetch_add((new_size - layout.size()) as u64, Relaxed);
        }
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

/// Runs `f`, returning the allocation calls and requested bytes it made.
fn allocations(f: impl FnOnce()) -> (u64, u64) {
    let (calls, bytes) = (CALLS.load(Relaxed), REQUESTED.load(Relaxed));
    f();
    (CALLS.load(Relaxed) - calls, REQUESTED.load(Relaxed) - bytes)
}

/// A hub (clustered if `cluster`) with 1,000 users of one connection and `alice` with one.
fn alice_hub(cluster: bool, now: Instant) -> (Hub, ConnId) {
    let cfg = if cluster { clustered(hub_config(2000, 3)) } else { hub_config(2000, 3) };
    let mut hub = Hub::new(cfg).unwrap();
    let connect = |hub: &mut Hub, user: &str| {
        let id = hub.connect(now, Principal::new(TENANT, user)).unwrap();
        settle(hub, now);
        id
    };
    for i in 0..1000 {
        connect(&mut hub, &format!("bg{i}"));
    }
    let alice = connect(&mut hub, "alice");
    (hub, alice)
}

/// Per step, allocation calls and requested bytes of a local publish, a clustered publish
/// (including dropping the append it emits), and a bus message delivered; then the frame's and
/// the bus payload's lengths. Inputs, acknowledgements and the bus's replies are outside the count.
fn publish_allocations(steps: u64) -> ([(f64, f64); 3], usize, usize) {
    let now = Instant::now();
    let target = || Target::User { tenant: TENANT.into(), user: "alice".into() };
    let per =
        |(calls, bytes): (u64, u64)| (calls as f64 / steps as f64, bytes as f64 / steps as f64);
    let sum = |a: &mut (u64, u64), b: (u64, u64)| {
        a.0 += b.0;
        a.1 += b.1;
    };

    let (mut hub, alice) = alice_hub(false, now);
    hub.publish(now, envelope(target())).unwrap();
    let frame = std::iter::from_fn(|| hub.poll_action())
        .find_map(|a| match a {
            Action::Deliver { frame, .. } => Some(frame),
            _ => None,
        })
        .expect("delivered");
    drain(&mut hub);
    hub.written(now, alice, usize::MAX >> 1).unwrap();
    let mut local = (0, 0);
    for i in 0..steps + 128 {
        let e = envelope(target());
        let counted = allocations(|| {
            hub.publish(now, e).unwrap();
            drain(&mut hub);
        });
        // The first 128 warm up the queues and the buffer.
        if i >= 128 {
            sum(&mut local, counted);
        }
        hub.written(now, alice, usize::MAX >> 1).unwrap();
    }

    let (mut node, alice) = alice_hub(true, now);
    let (key, payload) = bus_payload(&mut node, now, envelope(target()));
    let (mut clustered_publish, mut bus) = ((0, 0), (0, 0));
    for i in 0..steps + 128 {
        let e = envelope(target());
        let mut op = None;
        let counted = allocations(|| {
            op = node.publish(now, e).unwrap().op;
            drain(&mut node);
        });
        let appended = BusReply::Appended { pos: StreamPos { epoch: EPOCH, seq: i + 1 } };
        node.bus_reply(now, op.expect("an append"), Ok(appended));
        drain(&mut node);
        let pos = StreamPos { epoch: EPOCH, seq: i + 1 };
        let mut delivered = 0;
        let received = allocations(|| {
            node.bus_message(now, &key, pos, &payload);
            while let Some(action) = node.poll_action() {
                delivered += usize::from(matches!(action, Action::Deliver { .. }));
            }
        });
        assert_eq!(delivered, 1, "each bus message reaches alice");
        if i >= 128 {
            sum(&mut clustered_publish, counted);
            sum(&mut bus, received);
        }
        node.written(now, alice, usize::MAX >> 1).unwrap();
    }
    ([per(local), per(clustered_publish), per(bus)], frame.len(), payload.len())
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

    let steps = if full { 100_000 } else { 1_000 };
    let ([local, clustered, bus], frame, payload) = publish_allocations(steps);
    println!("\nAllocations per publish to a user with 1 connection, mean of {steps}");
    println!("(the delivered frame is {frame} bytes, the bus payload {payload} bytes)\n");
    println!("| step | allocation calls | bytes requested |");
    println!("|---|---:|---:|");
    for (name, (calls, bytes)) in [
        ("local publish (serialize, buffer, deliver)", local),
        ("clustered publish (serialize, encode, emit the append)", clustered),
        ("bus message delivered (decode, render, buffer, deliver)", bus),
    ] {
        println!("| {name} | {calls:.2} | {bytes:.1} |");
    }
}
