//! Presence traffic, counted (not timed): the frames and bytes the hub emits for presence in a
//! 1,000-member room when one member joins and leaves, and in a reconnect storm (every connection
//! of a node dropping and coming back within a few seconds, as in a deploy), beside what a naive
//! presence sends — one join or leave frame to every member per connection event, the design the
//! origin system and several peers use.
//!
//! The second table is cluster mode (issue 13): three nodes over the test kit's model bus, what
//! presence costs on the bus at rest (each node's refresh per period), for one join, and when a
//! node dies and its users reconnect to the others, beside a naive cluster presence (each
//! connection refreshes its own entry; every connection event is broadcast by every node to its
//! members).
//!
//! ```sh
//! cargo bench --bench presence              # prints two tables (deterministic: counts, not times)
//! ```
//!
//! The numbers do not depend on the machine: they are the hub's output on a virtual clock.

use std::time::{Duration, Instant};

use switchboard::{
    Action, ClusterConfig, Config, ConnId, DisconnectReason, Heartbeat, Hub, PresenceConfig,
    PresenceMeta, Principal, Tier,
};
use switchboard_testkit::bus::BusStats;
use switchboard_testkit::cluster::Cluster;

/// Frames and bytes of presence sent.
#[derive(Default, Clone, Copy)]
struct Traffic {
    frames: u64,
    bytes: u64,
}

impl Traffic {
    fn add(&mut self, other: Traffic) {
        self.frames += other.frames;
        self.bytes += other.bytes;
    }
}

fn presence_traffic(hub: &mut Hub) -> Traffic {
    let mut t = Traffic::default();
    while let Some(action) = hub.poll_action() {
        if let Action::Deliver { frame, .. } = action {
            let text = frame.as_str();
            if text.starts_with(r#"{"type":"presence"#) {
                t.frames += 1;
                t.bytes += text.len() as u64;
            }
        }
    }
    t
}

fn hub(max_members: u32) -> Hub {
    let mut presence = PresenceConfig::default();
    presence.max_members = max_members;
    presence.tenant = false;
    Hub::new(Config {
        presence: Some(presence),
        heartbeat: Heartbeat {
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(600),
        },
        max_connections: 200_000,
        ..Config::default()
    })
    .expect("valid config")
}

fn principal(i: usize) -> Principal {
    let meta = PresenceMeta::new(&serde_json::json!({ "name": format!("User {i}") })).unwrap();
    Principal::new("acme", format!("user-{i}")).meta(meta)
}

/// A room of `members` users, one connection each, settled (the joins announced).
fn room(hub: &mut Hub, now: &mut Instant, members: usize) -> Vec<ConnId> {
    let ids: Vec<ConnId> = (0..members)
        .map(|i| {
            let id = hub.connect(*now, principal(i)).unwrap();
            hub.join(*now, id, "lobby").unwrap();
            id
        })
        .collect();
    *now += Duration::from_secs(1);
    hub.tick(*now);
    presence_traffic(hub);
    ids
}

/// A naive presence's frame: `{"type":"presence_join","room":"lobby","user":…,"meta":…}`.
fn naive_frame_bytes(i: usize) -> u64 {
    format!(r#"{{"type":"presence_join","room":"lobby","user":"user-{i}","meta":{{"name":"User {i}"}}}}"#)
        .len() as u64
}

fn main() {
    single_node();
    cluster();
}

fn single_node() {
    let members = 1_000;
    let mut now = Instant::now();

    // One member joins a settled room, then leaves for good.
    let mut h = hub(10_000);
    let _ = room(&mut h, &mut now, members);
    let newcomer = h.connect(now, principal(members)).unwrap();
    h.join(now, newcomer, "lobby").unwrap();
    let snapshot = presence_traffic(&mut h);
    now += Duration::from_secs(1);
    h.tick(now);
    let join_diffs = presence_traffic(&mut h);
    h.disconnect(now, newcomer, DisconnectReason::Clean).unwrap();
    now += Duration::from_secs(10);
    h.tick(now);
    now += Duration::from_secs(1);
    h.tick(now);
    let mut leave_diffs = presence_traffic(&mut h);
    leave_diffs.add(presence_traffic(&mut h));
    let naive_join = Traffic {
        frames: members as u64 + 1,
        bytes: (members as u64 + 1) * naive_frame_bytes(members),
    };

    println!(
        "presence traffic, room of {members} members (counts from the hub's output; not timed)\n"
    );
    println!("| what | switchboard frames | switchboard bytes | naive frames | naive bytes |");
    println!("|---|---:|---:|---:|---:|");
    println!("| a member joins: its snapshot | {} | {} | – | – |", snapshot.frames, snapshot.bytes);
    println!(
        "| a member joins: diffs to the room | {} | {} | {} | {} |",
        join_diffs.frames, join_diffs.bytes, naive_join.frames, naive_join.bytes
    );
    println!(
        "| a member leaves (after the grace) | {} | {} | {} | {} |",
        leave_diffs.frames,
        leave_diffs.bytes,
        members,
        members as u64 * naive_frame_bytes(members)
    );

    // Reconnect storms: every connection drops and is back within 3 s (inside the 5 s grace).
    for (members, max) in [(1_000usize, 1_000u32), (10_000, 1_000)] {
        let mut h = hub(max);
        let ids = room(&mut h, &mut now, members);
        let mut storm = Traffic::default();
        // Each client drops and is back 3 s later (inside the 5 s grace); 100 clients per 20 ms.
        let start = now;
        for (i, id) in ids.iter().enumerate() {
            h.disconnect(now, *id, DisconnectReason::Abnormal).unwrap();
            if i % 100 == 99 {
                now += Duration::from_millis(20);
                h.tick(now);
                storm.add(presence_traffic(&mut h));
            }
        }
        now = start + Duration::from_secs(3);
        for i in 0..ids.len() {
            let id = h.connect(now, principal(i)).unwrap();
            h.join(now, id, "lobby").unwrap();
            storm.add(presence_traffic(&mut h));
            if i % 100 == 99 {
                now += Duration::from_millis(20);
                h.tick(now);
                storm.add(presence_traffic(&mut h));
            }
        }
        for _ in 0..40 {
            now += Duration::from_millis(250);
            h.tick(now);
            storm.add(presence_traffic(&mut h));
        }
        // Naive: every drop is a leave to the others, every return a join to the others.
        let n = members as u64;
        let naive_frames = 2 * n * (n - 1);
        let naive_bytes = naive_frames * naive_frame_bytes(members / 2);
        println!(
            "| storm: {members} members (limit {max}) drop and return within 3 s | {} | {} | {} | {} |",
            storm.frames, storm.bytes, naive_frames, naive_bytes
        );
    }
    println!(
        "\nswitchboard: a snapshot to each connection entering the room (a count only above the \
         limit), diffs batched per 250 ms and none for a return within the 5 s grace. Naive: one \
         frame per member per connection event."
    );
}

/// Presence frames among a cluster's actions: (frames, bytes).
fn cluster_frames(out: &[(usize, Action)]) -> Traffic {
    let mut t = Traffic::default();
    for (_, action) in out {
        if let Action::Deliver { frame, .. } = action {
            if frame.as_str().starts_with(r#"{"type":"presence"#) {
                t.frames += 1;
                t.bytes += frame.len() as u64;
            }
        }
    }
    t
}

/// What the bus did between two snapshots of its counters: operations of any kind, presence
/// script calls (writes, refreshed scopes and reads), signals delivered and their bytes.
fn bus_delta(before: &BusStats, after: &BusStats) -> (u64, u64, u64, u64) {
    let scripts = |s: &BusStats| s.presence_writes + s.presence_reads;
    (
        after.ops - before.ops,
        scripts(after) - scripts(before),
        after.signals_sent - before.signals_sent,
        after.signal_bytes - before.signal_bytes,
    )
}

fn cluster() {
    const NODES: usize = 3;
    const ROOMS: usize = 10;
    const USERS: usize = 1_000;
    let ttl = Duration::from_secs(15);
    let mut c = Cluster::new(NODES, 9, |i| {
        let mut presence = PresenceConfig::default();
        presence.tenant = false;
        let mut cluster = ClusterConfig::new(format!("node-{i}").as_str());
        cluster.presence_ttl = ttl;
        // Only presence on the bus: no top checks, leases renewed rarely.
        cluster.top_check_interval = None;
        cluster.lease_ttl = Duration::from_secs(3600);
        Config {
            presence: Some(presence),
            cluster: Some(cluster),
            heartbeat: Heartbeat {
                interval: Duration::from_secs(3600),
                timeout: Duration::from_secs(600),
            },
            ..Config::default()
        }
    });
    let room = |u: usize| format!("room-{}", u % ROOMS);
    let enter = |c: &mut Cluster, node: usize, u: usize| {
        let now = c.now;
        let hub = c.hub(node).expect("alive");
        let id = hub.connect(now, principal(u).tier(Tier::Enterprise)).unwrap();
        hub.join(now, id, room(u).as_str()).unwrap();
    };
    for u in 0..USERS {
        enter(&mut c, u % NODES, u);
    }
    c.advance(Duration::from_secs(20));

    // At rest: a minute of refreshes (every third of the ttl).
    let before = c.bus.stats().clone();
    let quiet = c.advance(Duration::from_secs(60));
    let (ops, writes, signals, bytes) = bus_delta(&before, c.bus.stats());
    let periods = 60 / (ttl.as_secs() / 3) * NODES as u64;
    println!(
        "\ncluster presence over the model bus: {NODES} nodes, {USERS} users in {ROOMS} rooms"
    );
    println!(
        "of 100 (each on one node, a third per node), presence_ttl 15 s (counts, not timed)\n"
    );
    println!("| what | switchboard | naive |");
    println!("|---|---:|---:|");
    println!(
        "| at rest, per node per refresh period (5 s): bus operations / presence script calls / \
         signals delivered / their bytes | {} / {} / {} / {} | {} / {} / 0 / 0 |",
        ops / periods,
        writes / periods,
        signals / periods,
        bytes / periods,
        USERS as u64 / NODES as u64,
        USERS as u64 / NODES as u64,
    );
    assert_eq!(cluster_frames(&quiet).frames, 0, "nothing for the clients at rest");

    // One user joins room-0 on node 0.
    let before = c.bus.stats().clone();
    enter(&mut c, 0, USERS);
    let out = c.advance(Duration::from_secs(1));
    let (_, scripts, signals, bytes) = bus_delta(&before, c.bus.stats());
    let frames = cluster_frames(&out);
    println!(
        "| one join in a room of 100 on 3 nodes: presence script calls / signals / bytes; \
         presence frames to clients | {scripts} / {signals} / {bytes}; {} | – / {} / – ; {} |",
        frames.frames, NODES, 101
    );

    // Node 0 dies; its users reconnect to nodes 1 and 2 within 3 s (inside the ttl).
    let before = c.bus.stats().clone();
    c.crash(0);
    let mut out = Vec::new();
    let moved: Vec<usize> = (0..USERS).filter(|u| u % NODES == 0).chain([USERS]).collect();
    for (k, u) in moved.iter().enumerate() {
        enter(&mut c, 1 + k % 2, *u);
        if k % 10 == 9 {
            out.extend(c.advance(Duration::from_millis(90)));
        }
    }
    out.extend(c.advance(Duration::from_secs(30)));
    let (_, scripts, signals, bytes) = bus_delta(&before, c.bus.stats());
    let frames = cluster_frames(&out);
    // What clients get is the returning connections' snapshots: nobody left or joined.
    let naive = moved.len() as u64 * 2 * 100;
    println!(
        "| a node dies, its {} users reconnect to the other two within 3 s (30 s counted): \
         presence script calls / signals / bytes; presence frames to clients (bytes) | {scripts} / \
         {signals} / {bytes}; {} ({}) | – ; {naive} |",
        moved.len(),
        frames.frames,
        frames.bytes,
    );
    println!(
        "\nswitchboard: one refresh operation per node per period (one script call per room it \
         holds users in, one pipeline), one write and one signal per subscribed node per batch of \
         changes; users who move to another node within the ttl never leave. Naive: every \
         connection refreshes its own entry, and every leave and join is broadcast to the room."
    );
}
