//! Memory and allocation budgets, measured with a counting global allocator.
//!
//! Counts are per thread (the test harness runs tests on several threads), so each test sees
//! only its own allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use switchboard::{Config, ConnId, DisconnectReason, Hub, Principal, Tier};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static IN_USE: Cell<i64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counters are plain thread-local cells with const
// initializers, so touching them never allocates or re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        IN_USE.with(|c| c.set(c.get() + layout.size() as i64));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.with(|c| c.set(c.get() - layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        IN_USE.with(|c| c.set(c.get() + new_size as i64 - layout.size() as i64));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

fn in_use() -> i64 {
    IN_USE.with(Cell::get)
}

fn drain(hub: &mut Hub) {
    while hub.poll_action().is_some() {}
}

fn big_config() -> Config {
    Config { max_connections: 200_000, max_detached_users: 200_000, ..Config::default() }
}

/// Connects, drains, disconnects and drains one returning user; returns the allocations made.
fn cycle(hub: &mut Hub, now: Instant, principal: &Principal) -> u64 {
    let before = allocs();
    let id = hub.connect(now, principal.clone()).unwrap();
    drain(hub);
    hub.disconnect(now, id, DisconnectReason::Clean).unwrap();
    drain(hub);
    allocs() - before
}

/// The steady-state cycle of a returning user allocates exactly three blocks: the `connected`
/// frame, whose text (connection id, stream positions) is unique to the connection, and the two
/// metric events it pushes (`ConnectionOpened`, `ConnectionClosed`), which `Action::Metric`
/// carries boxed so that the `Deliver` of every fan-out recipient moves in 32 bytes. Everything
/// else reuses what the previous cycle left: the connection's slab slot, the tenant's and user's
/// connection lists, the timer heap, the frame writer's buffer, the action queue. The principal's
/// ids are reference-counted, so cloning them allocates nothing.
#[test]
fn a_returning_users_connect_disconnect_cycle_allocates_its_frame_and_two_metrics() {
    for others in [0usize, 10_000] {
        let mut hub = Hub::new(big_config()).unwrap();
        let now = Instant::now();
        for i in 0..others {
            hub.connect(now, Principal::new("other", format!("u{i}")).tier(Tier::Enterprise))
                .unwrap();
        }
        drain(&mut hub);
        let alice = Principal::new("acme", "alice");
        for _ in 0..10 {
            cycle(&mut hub, now, &alice); // warm up: first-time growth of every list
        }
        let per_cycle: Vec<u64> = (0..1000).map(|_| cycle(&mut hub, now, &alice)).collect();
        assert!(
            per_cycle.iter().all(|&n| n == 3),
            "with {others} other connections: allocations per cycle {:?}",
            &per_cycle[..10]
        );
    }
}

/// Heap held by the hub per idle connection, over 100,000 connections of 25,000 users (four
/// devices each): the connection record, its slot, its timer, its place in its tenant's and
/// user's lists, and a quarter of a user's state and ids.
#[test]
fn an_idle_connection_costs_at_most_512_heap_bytes() {
    let mut hub = Hub::new(big_config()).unwrap();
    let now = Instant::now();
    let before = in_use();
    for u in 0..25_000 {
        let p = Principal::new("acme", format!("user-{u:05}")).tier(Tier::Enterprise);
        for _ in 0..4 {
            hub.connect(now, p.clone()).unwrap();
        }
        drain(&mut hub);
    }
    let per_conn = (in_use() - before) / 100_000;
    assert_eq!(hub.stats().connections_active, 100_000);
    assert!(per_conn <= 512, "{per_conn} bytes per idle connection");
    eprintln!("heap bytes per idle connection: {per_conn}");
}

/// Heap held per detached user without buffered messages: its state, its ids, its index entry
/// and its retirement timer. The connection slots they used are measured separately (above), so
/// one user's 20,000 connections first grow the connection tables to their working size.
#[test]
fn a_detached_user_without_messages_costs_at_most_1_kib() {
    let mut cfg = big_config();
    cfg.tiers.enterprise.max_connections_per_user = 20_000;
    let mut hub = Hub::new(cfg).unwrap();
    let now = Instant::now();
    let warm = Principal::new("acme", "warm-up").tier(Tier::Enterprise);
    let warm: Vec<ConnId> = (0..20_000).map(|_| hub.connect(now, warm.clone()).unwrap()).collect();
    drain(&mut hub);
    for id in warm {
        hub.disconnect(now, id, DisconnectReason::Clean).unwrap();
    }
    drain(&mut hub);
    let before = in_use();
    let ids: Vec<ConnId> = (0..20_000)
        .map(|u| hub.connect(now, Principal::new("acme", format!("user-{u:05}"))).unwrap())
        .collect();
    drain(&mut hub);
    for id in ids {
        hub.disconnect(now, id, DisconnectReason::Clean).unwrap();
    }
    drain(&mut hub);
    assert_eq!(hub.stats().users_detached, 20_001);
    assert_eq!(hub.stats().buffered_messages, 0);
    let per_user = (in_use() - before) / 20_000;
    assert!(per_user <= 1024, "{per_user} bytes per detached user");
    eprintln!("heap bytes per detached user: {per_user}");
}

/// 10,000 churn cycles over a stable population — users coming and going, detaching, retiring
/// and coming back — leave the heap exactly where it was.
#[test]
fn churn_leaves_the_heap_where_it_started() {
    let cfg = Config { user_retention: Duration::from_secs(30), ..big_config() };
    let mut hub = Hub::new(cfg).unwrap();
    let mut now = Instant::now();
    let users: Vec<Principal> = (0..50).map(|u| Principal::new("acme", format!("u{u}"))).collect();
    let run = |hub: &mut Hub, now: &mut Instant, cycles: usize| {
        let mut open: Vec<ConnId> = Vec::new();
        for i in 0..cycles {
            *now += Duration::from_millis(50);
            let p = &users[(i * 7) % users.len()];
            if let Ok(id) = hub.connect(*now, p.clone()) {
                open.push(id);
            }
            if open.len() > 20 {
                let id = open.remove((i * 13) % open.len());
                hub.disconnect(*now, id, DisconnectReason::Clean).unwrap();
            }
            hub.tick(*now);
            drain(hub);
        }
        for id in open {
            hub.disconnect(*now, id, DisconnectReason::Clean).unwrap();
        }
        // Let every user retire, so the end state is the start state.
        *now += Duration::from_secs(60);
        hub.tick(*now);
        drain(hub);
    };
    run(&mut hub, &mut now, 10_000); // warm up: every list reaches its working size
    let before = in_use();
    run(&mut hub, &mut now, 10_000);
    assert_eq!(hub.stats().connections_active, 0);
    assert_eq!(hub.stats().users_detached, 0);
    assert_eq!(in_use(), before, "heap in use changed over 10,000 churn cycles");
}
