//! A profiling driver, not a benchmark: builds one of `hub.rs`'s workloads (same populations, same
//! payload), then runs its measured step `N` times inside `region`, so that callgrind can count
//! exactly that:
//!
//! ```text
//! cargo bench --bench profile --no-run     # prints the binary's path
//! valgrind --tool=callgrind --toggle-collect='profile::region' <binary> <workload> <N>
//! callgrind_annotate --inclusive=yes callgrind.out.<pid>
//! ```
//!
//! Instructions per step = the collected total ÷ N; the same workload prefixed with `baseline-`
//! runs the baseline. Instruction counts do not depend on the machine's load, so their ratios are
//! a steadier companion to the wall-clock ratios of `hub.rs` on a shared machine (they ignore
//! cache misses, which the wall clock does not).
//!
//! Workloads: `churn`, `publish-1`, `publish-1-noredact`, `publish-3`, `room-<n>`, `tenant-<n>`,
//! `tick-<n>`, `sweep-<k>-of-<n>`, `resume-1000`, `floor-<n>`; without a baseline side:
//! `publish-1-raw` and `publish-1-raw-noredact` (the data as JSON text, [`RawData`]),
//! `floor-publish-1` and `floor-publish-1-text` (see [`floor_publish_1`]), and `raw-new`:
//! [`RawData::new`] on the same payload, the validation the server runs on each body before
//! `publish-1-raw`.
//!
//! `floor-<n>` is no hub at all: the least any fan-out to `n` recipients does, to compare the cost
//! of a further recipient with (issue 16 item 5). Per recipient it pushes the recipient's id and
//! a clone of the shared frame (an `Arc<str>` of the event's serialized size) onto a queue, then
//! takes each back out and drops it, as a transport does once it wrote the frame. No checks, no
//! meters, no stream. It has no baseline side.
//!
//! Cluster mode (switchboard only, no baseline; compared with the local workload of the same
//! shape, see `scripts/bench-instructions.sh`):
//!
//! - `bus-message-user-<n>`, `bus-message-room-<n>`, `bus-message-tenant-<n>`: one
//!   [`Hub::bus_message`] (the payload a clustered publish of the same envelope produced, captured
//!   once in the setup) fanned out to `n` local connections of one user (among 10,000 others, as
//!   `publish-<n>`), of a room (as `room-<n>`), of a tenant (as `tenant-<n>`); each step one seq
//!   further, so the sequencer delivers each.
//! - `publish-clustered-1`: a clustered [`Hub::publish`] to a user with one connection among
//!   10,000 others (as `publish-1`): validate, redact, serialize once, emit the append. Each step
//!   also acknowledges the append with [`Hub::bus_reply`] (else the in-flight bound fills up),
//!   which the script subtracts.

mod baseline;
mod workload;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard::{
    Action, Audience, BusReply, Config, ConnId, DisconnectReason, Envelope, Hub, Principal,
    RawData, StreamPos, Target, Tier,
};

use baseline::{Baseline, BaselineConfig, Message, To};
use workload::cluster::{EPOCH, bus_payload, clustered, settle};
use workload::{TENANT, envelope, message, payload};

fn drain(hub: &mut Hub) {
    while let Some(action) = hub.poll_action() {
        black_box(&action);
    }
}

fn drain_baseline(b: &Baseline) {
    b.drain(|id, out| {
        black_box((id, &out));
    });
}

/// The measured region: callgrind collects only inside this function.
#[inline(never)]
fn region(n: usize, step: &mut dyn FnMut()) {
    for _ in 0..n {
        step();
    }
}

/// Both sides, populated alike.
struct Pair {
    hub: Hub,
    b: Baseline,
    now: Instant,
    /// The hub is one node of a cluster: its bus operations are answered (`workload::cluster`).
    clustered: bool,
}

impl Pair {
    fn new(redact: bool, per_user: u32) -> Self {
        let mut cfg = Config {
            max_connections: 1_100_000,
            max_detached_users: 1_100_000,
            ..Config::default()
        };
        cfg.tiers.enterprise.max_connections_per_user = per_user;
        let mut bcfg = BaselineConfig {
            max_connections: 1_100_000,
            max_connections_per_user: per_user as usize,
            ..BaselineConfig::default()
        };
        if !redact {
            cfg.redact_keys.clear();
            bcfg.redact_keys.clear();
        }
        Self {
            hub: Hub::new(cfg).unwrap(),
            b: Baseline::new(bcfg),
            now: Instant::now(),
            clustered: false,
        }
    }

    /// [`Pair::new`] with the hub as one node of a cluster.
    fn clustered(redact: bool, per_user: u32) -> Self {
        let mut p = Self::new(redact, per_user);
        let mut cfg = p.hub.config().clone();
        cfg = clustered(cfg);
        p.hub = Hub::new(cfg).unwrap();
        p.clustered = true;
        p
    }

    /// Drains the hub, answering its bus operations in cluster mode.
    fn settle(&mut self) {
        if self.clustered {
            settle(&mut self.hub, self.now);
        } else {
            drain(&mut self.hub);
        }
    }

    /// One connection of `user` on each side (`Enterprise` tier, so `per_user` applies).
    fn connect(&mut self, at: Instant, user: &str) -> (ConnId, u64) {
        let p = Principal::new(TENANT, user).tier(Tier::Enterprise);
        let id = self.hub.connect(at, p).unwrap();
        let bid = self.b.connect(at, TENANT, user).unwrap();
        self.settle();
        drain_baseline(&self.b);
        (id, bid)
    }

    fn populate(&mut self, n: usize) {
        for i in 0..n {
            self.connect(self.now, &format!("bg{i}"));
        }
    }
}

/// Publishes `n` copies of `env` (switchboard) or of the same message to `to` (baseline) on one
/// side, acknowledging deliveries to `ids` every 128 publishes (as `hub.rs` does, there outside
/// the clock).
fn publish(p: &mut Pair, baseline: bool, n: usize, env: Envelope, to: To<'_>, ids: &[ConnId]) {
    let now = p.now;
    if baseline {
        let mut inputs: Vec<Message> = (0..n).map(|_| message()).collect();
        let b = &p.b;
        region(n, &mut || {
            let m = inputs.pop().unwrap();
            black_box(b.publish(now, to, m));
            drain_baseline(b);
        });
    } else {
        let mut inputs: Vec<Envelope> = (0..n).map(|_| env.clone()).collect();
        let hub = &mut p.hub;
        let mut done = 0;
        region(n, &mut || {
            black_box(hub.publish(now, inputs.pop().unwrap()).unwrap());
            drain(hub);
            done += 1;
            if done % 128 == 0 {
                for &id in ids {
                    hub.written(now, id, usize::MAX >> 1).unwrap();
                }
            }
        });
    }
}

/// `n` members (each its own user) of the room `lobby`, or of the tenant when `!room`.
fn fan_out_members(p: &mut Pair, n: usize, room: bool) -> Vec<ConnId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let user = format!("member-{i}");
        let id = p.hub.connect(p.now, Principal::new(TENANT, user.as_str())).unwrap();
        let bid = p.b.connect(p.now, TENANT, &user).unwrap();
        if room {
            p.hub.join(p.now, id, "lobby").unwrap();
            p.b.join(bid, "lobby");
        }
        ids.push(id);
        if p.clustered || i % 1024 == 0 {
            p.settle();
            drain_baseline(&p.b);
        }
    }
    p.settle();
    drain_baseline(&p.b);
    ids
}

/// Feeds the bus payload of a publish to `target` back into the (clustered) hub `n` times, one
/// seq further each time, acknowledging deliveries to `ids` every 128 messages (as `publish`).
fn bus_messages(p: &mut Pair, n: usize, target: Target, ids: &[ConnId]) {
    let now = p.now;
    let hub = &mut p.hub;
    let (key, payload) = bus_payload(hub, now, envelope(target));
    // The first message reaches every connection (the setup is what it claims to be).
    hub.bus_message(now, &key, StreamPos { epoch: EPOCH, seq: 1 }, &payload);
    let mut delivered = 0;
    while let Some(action) = hub.poll_action() {
        delivered += usize::from(matches!(action, Action::Deliver { .. }));
    }
    assert_eq!(delivered, ids.len(), "one bus message, one delivery per connection");
    for &id in ids {
        hub.written(now, id, usize::MAX >> 1).unwrap();
    }
    let (mut seq, mut done) = (1, 0);
    region(n, &mut || {
        seq += 1;
        hub.bus_message(now, &key, StreamPos { epoch: EPOCH, seq }, &payload);
        drain(hub);
        done += 1;
        if done % 128 == 0 {
            for &id in ids {
                hub.written(now, id, usize::MAX >> 1).unwrap();
            }
        }
    });
    // Every step was delivered in order: the next seq still reaches every connection.
    for &id in ids {
        hub.written(now, id, usize::MAX >> 1).unwrap();
    }
    hub.bus_message(now, &key, StreamPos { epoch: EPOCH, seq: seq + 1 }, &payload);
    let mut delivered = 0;
    while let Some(action) = hub.poll_action() {
        delivered += usize::from(matches!(action, Action::Deliver { .. }));
    }
    assert_eq!(delivered, ids.len(), "the sequencer still delivers after {n} messages");
}

/// `floor-publish-1`: serialize + route, the least a publish of raw JSON data to a user with one
/// connection (among 10,000 other users) does. Route: find the user's connections in a map by
/// tenant, then user. Serialize: the event's fields through serde, then the data text copied
/// in, into one shared `Arc<str>`: the very bytes of the hub's frame (checked against a frame of
/// the hub without redaction, epoch included). Then, as `floor-<n>`, push (id, frame) and take it
/// out and drop it. No validation, redaction, stream or recovery buffer.
///
/// `floor-publish-1-text` (`by_hand`): the same, but the frame written by hand as text, as the
/// hub writes it: the field names and this event's strings copied in as they are (no escape
/// check: they are known to need none), only the two numbers through serde_json into bytes and
/// checked as UTF-8. The least serializing can cost, not what serde costs.
fn floor_publish_1(n: usize, by_hand: bool) {
    #[derive(serde::Serialize)]
    struct Head<'a> {
        #[serde(rename = "type")]
        ty: &'a str,
        stream: &'a str,
        epoch: u64,
        seq: u64,
        run_id: &'a str,
    }
    type Routes = HashMap<String, HashMap<String, Vec<ConnId>>>;
    let mut p = Pair::new(false, 3);
    let mut routes = Routes::new();
    let users = routes.entry(TENANT.to_owned()).or_default();
    for i in 0..10_000 {
        let user = format!("bg{i}");
        users.insert(user.clone(), vec![p.connect(p.now, &user).0]);
    }
    users.insert("alice".to_owned(), vec![p.connect(p.now, "alice").0]);
    let data = payload().to_string();
    // The hub's frame for the same event (redaction off, so that the data is copied as is), and
    // the epoch of its user stream, which the floor writes too.
    let mut sample = Pair::new(false, 3);
    let one = sample.connect(sample.now, "alice").0;
    let raw = RawData::new(data.as_str()).unwrap();
    let target = Target::User { tenant: TENANT.into(), user: "alice".into() };
    sample.hub.publish(sample.now, envelope(target).raw_data(raw)).unwrap();
    let expect = std::iter::from_fn(|| sample.hub.poll_action())
        .find_map(|a| match a {
            Action::Deliver { conn, frame } if conn == one => Some(frame.as_str().to_owned()),
            _ => None,
        })
        .expect("the sample publish reaches alice");
    let epoch = serde_json::from_str::<serde_json::Value>(&expect).unwrap()["epoch"]
        .as_u64()
        .expect("an epoch");
    let write = |buf: &mut Vec<u8>, text: &mut String, seq: u64| {
        if by_hand {
            text.clear();
            text.push_str(r#"{"type":"tool_executing","stream":"u""#);
            buf.clear();
            buf.extend_from_slice(br#","epoch":"#);
            serde_json::to_writer(&mut *buf, &epoch).unwrap();
            buf.extend_from_slice(br#","seq":"#);
            serde_json::to_writer(&mut *buf, &seq).unwrap();
            text.push_str(std::str::from_utf8(buf).unwrap());
            text.push_str(r#","run_id":"run-42","data":"#);
            text.push_str(&data);
            text.push('}');
        } else {
            let head = Head { ty: "tool_executing", stream: "u", epoch, seq, run_id: "run-42" };
            buf.clear();
            serde_json::to_writer(&mut *buf, &head).unwrap();
            buf.pop();
            buf.extend_from_slice(br#","data":"#);
            buf.extend_from_slice(data.as_bytes());
            buf.push(b'}');
        }
    };
    let (mut buf, mut text, mut seq) = (Vec::<u8>::new(), String::new(), 0u64);
    let frame_of = |buf: &[u8], text: &str| -> Arc<str> {
        if by_hand { Arc::from(text) } else { Arc::from(std::str::from_utf8(buf).unwrap()) }
    };
    write(&mut buf, &mut text, 1);
    assert_eq!(&*frame_of(&buf, &text), expect, "the floor writes the hub's frame");
    let mut queue: Vec<(ConnId, Arc<str>)> = Vec::new();
    region(n, &mut || {
        let conns = &routes[black_box(TENANT)][black_box("alice")];
        seq += 1;
        write(&mut buf, &mut text, seq);
        let frame = frame_of(&buf, &text);
        for &id in conns {
            queue.push((id, Arc::clone(&frame)));
        }
        for delivery in queue.drain(..) {
            black_box(&delivery);
        }
    });
}

fn number(s: &str) -> usize {
    s.parse().unwrap_or_else(|_| panic!("not a number: {s}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(workload), Some(n)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: profile [baseline-]<workload> <N>  (see the file's docs)");
        std::process::exit(2);
    };
    let n = number(n);
    let (baseline, workload) = match workload.strip_prefix("baseline-") {
        Some(w) => (true, w),
        None => (false, workload.as_str()),
    };
    let parts: Vec<&str> = workload.split('-').collect();
    match parts.as_slice() {
        ["churn"] => {
            let mut p = Pair::new(true, 3);
            p.populate(10_000);
            let users: Vec<String> = (0..1000).map(|i| format!("returning-{i}")).collect();
            let principals: Vec<Principal> =
                users.iter().map(|u| Principal::new(TENANT, u.as_str())).collect();
            for u in &users {
                let (id, bid) = p.connect(p.now, u);
                p.hub.disconnect(p.now, id, DisconnectReason::Clean).unwrap();
                p.b.disconnect(p.now, bid);
            }
            drain(&mut p.hub);
            let (now, mut i) = (p.now, 0);
            if baseline {
                let b = &p.b;
                region(n, &mut || {
                    i = (i + 1) % users.len();
                    let id = b.connect(now, TENANT, &users[i]).unwrap();
                    drain_baseline(b);
                    b.disconnect(now, id);
                    drain_baseline(b);
                });
            } else {
                let hub = &mut p.hub;
                region(n, &mut || {
                    i = (i + 1) % principals.len();
                    let id = hub.connect(now, principals[i].clone()).unwrap();
                    drain(hub);
                    hub.disconnect(now, id, DisconnectReason::Clean).unwrap();
                    drain(hub);
                });
            }
        }
        ["publish", "clustered", conns] => {
            assert!(!baseline, "the cluster workloads have no baseline");
            let mut p = Pair::clustered(true, 3);
            p.populate(10_000);
            for _ in 0..number(conns) {
                p.connect(p.now, "alice");
            }
            let env = envelope(Target::User { tenant: TENANT.into(), user: "alice".into() });
            let mut inputs: Vec<Envelope> = (0..n).map(|_| env.clone()).collect();
            let (hub, now) = (&mut p.hub, p.now);
            let appended = || Ok(BusReply::Appended { pos: StreamPos { epoch: EPOCH, seq: 1 } });
            region(n, &mut || {
                let published = hub.publish(now, inputs.pop().unwrap()).unwrap();
                drain(hub);
                // Outside the measure (subtracted): the bus's answer, so ops do not pile up.
                hub.bus_reply(now, published.op.expect("a clustered publish"), appended());
                drain(hub);
            });
        }
        ["publish", conns, rest @ ..] => {
            // `raw`: the data as JSON text (`RawData`, the server's path), no baseline side.
            let raw = rest.contains(&"raw");
            assert!(!(raw && baseline), "the raw workloads have no baseline");
            let mut p = Pair::new(!rest.contains(&"noredact"), 3);
            p.populate(10_000);
            let ids: Vec<ConnId> =
                (0..number(conns)).map(|_| p.connect(p.now, "alice").0).collect();
            let mut env = envelope(Target::User { tenant: TENANT.into(), user: "alice".into() });
            if raw {
                env = env.raw_data(RawData::new(payload().to_string()).unwrap());
            }
            let to = To::User { tenant: TENANT, user: "alice" };
            publish(&mut p, baseline, n, env, to, &ids);
        }
        ["floor", "publish", "1", rest @ ..] => {
            assert!(!baseline, "the floor has no baseline");
            floor_publish_1(n, rest == ["text"]);
        }
        ["raw", "new"] => {
            // What `POST /publish` runs on each body before the hub sees it: the validation
            // that notes what `publish-1-raw` later reads (the text copied in and freed too).
            assert!(!baseline, "validation has no baseline");
            let text = payload().to_string();
            region(n, &mut || {
                black_box(RawData::new(black_box(text.as_str())).unwrap());
            });
        }
        [kind @ ("room" | "tenant"), members] => {
            let room = *kind == "room";
            let mut p = Pair::new(true, 3);
            let ids = fan_out_members(&mut p, number(members), room);
            let (target, to) = if room {
                (
                    Target::Room { tenant: TENANT.into(), room: "lobby".into() },
                    To::Room { tenant: TENANT, room: "lobby" },
                )
            } else {
                (
                    Target::Tenant { tenant: TENANT.into(), audience: Audience::All },
                    To::Tenant { tenant: TENANT },
                )
            };
            publish(&mut p, baseline, n, envelope(target), to, &ids);
        }
        ["floor", members] => {
            assert!(!baseline, "the floor has no baseline");
            let mut p = Pair::new(true, 3);
            let ids = fan_out_members(&mut p, number(members), false);
            // A frame of the size a room fan-out shares (the same event, serialized once).
            let mut sample = Pair::new(true, 3);
            let one = fan_out_members(&mut sample, 1, true)[0];
            let target = Target::Room { tenant: TENANT.into(), room: "lobby".into() };
            sample.hub.publish(sample.now, envelope(target)).unwrap();
            let frame: Arc<str> = std::iter::from_fn(|| sample.hub.poll_action())
                .find_map(|a| match a {
                    Action::Deliver { conn, frame } if conn == one => {
                        Some(Arc::from(frame.as_str()))
                    }
                    _ => None,
                })
                .expect("the sample publish reaches its member");
            let mut queue: Vec<(ConnId, Arc<str>)> = Vec::with_capacity(ids.len());
            region(n, &mut || {
                for &id in &ids {
                    queue.push((id, Arc::clone(&frame)));
                }
                for delivery in queue.drain(..) {
                    black_box(&delivery);
                }
            });
        }
        ["bus", "message", shape @ ("user" | "room" | "tenant"), conns] => {
            assert!(!baseline, "the cluster workloads have no baseline");
            let conns = number(conns);
            let mut p = Pair::clustered(true, 3);
            let (ids, target) = match *shape {
                "user" => {
                    p.populate(10_000);
                    let ids = (0..conns).map(|_| p.connect(p.now, "alice").0).collect();
                    (ids, Target::User { tenant: TENANT.into(), user: "alice".into() })
                }
                "room" => (
                    fan_out_members(&mut p, conns, true),
                    Target::Room { tenant: TENANT.into(), room: "lobby".into() },
                ),
                _ => (
                    fan_out_members(&mut p, conns, false),
                    Target::Tenant { tenant: TENANT.into(), audience: Audience::All },
                ),
            };
            bus_messages(&mut p, n, target, &ids);
        }
        ["tick", conns] => {
            let mut p = Pair::new(true, 4);
            for u in 0..number(conns) / 4 {
                let user = format!("user-{u:07}");
                for _ in 0..4 {
                    if baseline {
                        p.b.connect(p.now, TENANT, &user).unwrap();
                    } else {
                        let pr = Principal::new(TENANT, user.as_str()).tier(Tier::Enterprise);
                        p.hub.connect(p.now, pr).unwrap();
                    }
                }
                drain(&mut p.hub);
                drain_baseline(&p.b);
            }
            let at = p.now + Duration::from_secs(1);
            if baseline {
                let b = &p.b;
                region(n, &mut || {
                    b.sweep(at);
                    drain_baseline(b);
                });
            } else {
                let hub = &mut p.hub;
                region(n, &mut || {
                    hub.tick(at);
                    drain(hub);
                });
            }
        }
        ["sweep", k, "of", conns] => {
            // As in `hub.rs`: phases over the interval, k due per sweep, pongs right back. Here
            // the pongs are inside the region (callgrind reports `Hub::pong` on its own).
            let (k, conns) = (number(k), number(conns));
            let phases = conns / k;
            let interval = Config::default().heartbeat.interval;
            let step = interval / phases as u32;
            let mut p = Pair::new(true, 3);
            let mut ids: Vec<Vec<(ConnId, u64)>> = Vec::new();
            for ph in 0..phases {
                let at = p.now + step * ph as u32;
                ids.push((0..k).map(|i| p.connect(at, &format!("u{ph}-{i}"))).collect());
            }
            let (t0, mut j) = (p.now, 0u64);
            let sweep = |p: &mut Pair, j: &mut u64| {
                let at = t0 + interval + step * *j as u32;
                let phase = &ids[(*j % phases as u64) as usize];
                *j += 1;
                if baseline {
                    p.b.sweep(at);
                    drain_baseline(&p.b);
                    phase.iter().for_each(|&(_, bid)| p.b.pong(at, bid));
                } else {
                    p.hub.tick(at);
                    drain(&mut p.hub);
                    phase.iter().for_each(|&(id, _)| p.hub.pong(at, id).unwrap());
                }
            };
            for _ in 0..2 * phases {
                sweep(&mut p, &mut j);
            }
            region(n, &mut || sweep(&mut p, &mut j));
        }
        ["resume", "1000"] => {
            let mut p = Pair::new(true, 3);
            p.populate(10_000);
            let now = p.now;
            let (id, bid) = p.connect(now, "alice");
            p.hub.disconnect(now, id, DisconnectReason::Clean).unwrap();
            p.b.disconnect(now, bid);
            let target = || Target::User { tenant: TENANT.into(), user: "alice".into() };
            for _ in 0..1000 {
                p.hub.publish(now, envelope(target())).unwrap();
            }
            drain(&mut p.hub);
            let epoch = p.hub.user(TENANT, "alice").unwrap().stream_position().epoch;
            let resume = json!({"type": "resume", "positions": {"u": {"epoch": epoch, "seq": 0}}})
                .to_string();
            if baseline {
                // The refill (1,000 queued publishes) is inside the region here; callgrind shows
                // `Baseline::publish` apart from `Baseline::connect`, which does the replay.
                let b = &p.b;
                region(n, &mut || {
                    for _ in 0..1000 {
                        b.publish(now, To::User { tenant: TENANT, user: "alice" }, message());
                    }
                    let id = b.connect(now, TENANT, "alice").unwrap();
                    drain_baseline(b);
                    b.disconnect(now, id);
                });
            } else {
                let hub = &mut p.hub;
                let alice = Principal::new(TENANT, "alice");
                region(n, &mut || {
                    let id = hub.connect(now, alice.clone()).unwrap();
                    drain(hub);
                    hub.receive(now, id, resume.as_bytes()).unwrap();
                    drain(hub);
                    hub.disconnect(now, id, DisconnectReason::Clean).unwrap();
                    drain(hub);
                });
            }
        }
        _ => panic!("unknown workload {workload}"),
    }
}
