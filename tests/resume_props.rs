//! Property: clients (a user's devices) that disconnect, reconnect and `resume` with the
//! positions they last saw receive, per stream and across their successive connections, exactly
//! the published sequence filtered to what they may see: no duplicates, no gaps, in order, as
//! long as every resume came within retention; and the `resumed` frame says `recovered: false`
//! only when the log justifies it (epoch changed, or the gap is no longer buffered).
//!
//! Nothing here predicts the hub. The operations are the shared vocabulary's
//! (`switchboard_testkit::vocab::Op`, drawn by `strategy::device_ops` as `(device, op)` pairs) and
//! every one goes through the shared `Runner`, which checks every action, result, stat and view
//! against the shared reference model. This file only drives devices (the shared client model,
//! `switchboard_testkit::client`) over those steps and checks what each device sees. Where the
//! properties of the file it replaces are checked now:
//!
//! - exact delivery across connections (the client side, here): every event a device gets is the
//!   message published at that `(stream, epoch, seq)`, on one of its own streams, for a role and
//!   connection it is (`Client::on_event`: isolation); seqs only grow per stream (order, no
//!   duplicate); between two events of one epoch, and between where a resume leaves a device and
//!   the head the `resumed` frame reports, no message it may see is skipped (`Client::lost`: no
//!   gap); every `recovered: false` has a reason the log justifies (`Client::unrecovered`), and a
//!   device then starts over from the reported head (or, while held, gets what was held back from
//!   its connection's base). At the end every device comes back and resumes, so the last stretch
//!   is checked too;
//! - the hub side (by the `Runner`, against the model): `Published::delivered`, `held`,
//!   `undeliverable` and `position`; the exact `resumed` frame (which streams recover, reasons,
//!   `available_from`, `replayed`) and the replayed frames; retention modelled exactly (the last
//!   `max_messages` kept, age trims on publish, before a replay and on each stream's age timer);
//!   epochs new whenever a stream is created anew (user retired and seen again, tenant dropped,
//!   room emptied) and stable otherwise; every counter of `stats()` (publishes, undeliverable,
//!   held_back, replayed, resumes recovered and unrecovered, protocol errors, the buffered and
//!   rooms gauges); the views (held, rooms, thread filter, users' phase and buffers); invariants;
//! - thread filters before a resume (`In::Subscribe`): right after connecting, or (with a window,
//!   `late_subscribe`) right before resuming; the replay honours them and `Published::held`
//!   counts exactly the held connections a message is for;
//! - spoiled positions (`In::Spoiled`): a device may first send a `resume` whose user position is
//!   wrongly typed or incomplete; the model predicts the `invalid_field` error, the audit, the
//!   counter, and that the connection stays as it was (held if it was, not resumed);
//! - late ticks (`Op::Sleep`): the clock moves, the next operation reaches the hub at the new time
//!   before the tick, which comes right after it (before the clock moves again).
//!
//! What changed in coverage: the clock of the properties is in milliseconds (the model's unit),
//! so there an age lands on `max_age` exactly (kept) and one millisecond past it (dropped); the
//! nanosecond boundary the earlier version reached at random is checked by
//! `a_message_is_kept_for_exactly_max_age_to_the_nanosecond` (timer and resume). Backpressure is kept out (limits of 1 GiB, the heartbeat never pings); the hub never
//! closes a device's connection here (checked). A held device resumes before its window would
//! end and before its backlog would outgrow the buffer (the hub closes it then, by design;
//! tested elsewhere).
mod common;

use std::collections::HashMap;

use serde_json::Value;
use switchboard::{Action, ConnId, Retention};
use switchboard_testkit::client::{Client, Log, Published, StreamKey, Visibility};
use switchboard_testkit::frames::{EventFrame, parse};
use switchboard_testkit::model::Runner;
use switchboard_testkit::strategy::{Device, cases, device_knobs, device_ops, devices};
use switchboard_testkit::vocab::{
    In, Ms, Op, ROLES, Step, T0, Tgt, Who, config, room_name, tenant_name, thread_name, user_name,
};

use proptest::prelude::*;

/// The recovery buffer's message bound (`device_knobs`).
const MAX_MESSAGES: u64 = 6;

/// A device and its connection now.
struct Dev {
    spec: Device,
    client: Client,
    conn: Option<ConnId>,
    last_closed: Option<ConnId>,
    /// In its resume window.
    held: bool,
    resumed: bool,
    subscribed: bool,
    /// When its connection opened (caller's clock, ms).
    opened_at: Ms,
    rooms: Vec<usize>,
    /// Where each stream stood when the connection got it (`connected`, `joined`).
    bases: HashMap<StreamKey, (u64, u64)>,
}

impl Dev {
    fn keys(&self) -> Vec<StreamKey> {
        let mut keys = vec![self.client.user_stream(), self.client.tenant_stream()];
        let tenant = &self.client.tenant;
        keys.extend(self.rooms.iter().map(|r| StreamKey::room(tenant, room_name(*r))));
        keys
    }
}

/// What a run reached, for the coverage test.
#[derive(Debug, Default)]
struct Seen {
    events: u64,
    replayed: u64,
    resumes: u64,
    unrecovered: u64,
    spoiled: u64,
    late_ticks: u64,
}

struct World {
    r: Runner,
    devs: Vec<Dev>,
    log: Log,
    /// The last `(epoch, seq)` each stream reported (publishes, `connected`, `joined`).
    heads: HashMap<StreamKey, (u64, u64)>,
    retention: Retention,
    window: Ms,
    /// The caller's clock (the runner's), ms.
    clock: Ms,
    /// The clock moved and the hub has not been ticked since.
    late: bool,
    seen: Seen,
}

impl World {
    fn new(specs: Vec<Device>, window: Ms) -> Self {
        let knobs = device_knobs(window);
        let devs = specs
            .into_iter()
            .map(|spec| {
                let (t, u) = spec.user;
                let mut client = Client::new(tenant_name(t), user_name(u));
                if spec.admin {
                    client.roles = vec![ROLES[0].to_owned()];
                }
                Dev {
                    spec,
                    client,
                    conn: None,
                    last_closed: None,
                    held: false,
                    resumed: false,
                    subscribed: false,
                    opened_at: 0,
                    rooms: Vec::new(),
                    bases: HashMap::new(),
                }
            })
            .collect();
        Self {
            r: Runner::new(&knobs),
            devs,
            log: Log::default(),
            heads: HashMap::new(),
            retention: config(&knobs).retention,
            window,
            clock: T0,
            late: false,
            seen: Seen::default(),
        }
    }

    fn who(&self, id: ConnId) -> Who {
        self.r.who_is(id).expect("fewer than 256 connections")
    }

    /// Runs one step through the shared runner (which checks it against the model) and returns
    /// the frames it delivered to devices, as (device, frame), in order. The hub never closes a
    /// device's connection here.
    fn apply(&mut self, op: Op) -> Vec<(usize, Value)> {
        let step = Step { back: 0, op };
        if let Err(e) = self.r.apply(&step) {
            panic!("{step:?}\n{e}");
        }
        let mut out = Vec::new();
        for a in self.r.actions() {
            match a {
                Action::Deliver { conn, frame } => {
                    let v = parse(frame.as_str());
                    let dev = self.devs.iter().position(|d| d.conn == Some(*conn));
                    // A `connected` frame is for the connection the step opened.
                    let dev = dev.or_else(|| {
                        let Op::Connect { .. } = step.op else { return None };
                        Some(usize::MAX)
                    });
                    out.push((dev.expect("a delivery to a device's connection"), v));
                }
                Action::Close { conn, reason } => panic!("the hub closed {conn}: {reason:?}"),
                _ => {}
            }
        }
        out
    }

    /// Event frames reached device `d`: isolation and order (`Client::on_event`), and no gap
    /// since its last event of the same epoch (`Client::lost`).
    fn events(&mut self, frames: &[(usize, Value)]) {
        for (d, f) in frames {
            let Some(event) = EventFrame::decode(f).filter(|e| e.kind != "joined") else {
                continue;
            };
            let client = &mut self.devs[*d].client;
            let key = client.key_of(&event.stream).expect("a stream of the device");
            if let Some((epoch, seq)) = client.position(&key).filter(|p| p.0 == event.epoch) {
                let lost = client.lost(&self.log, &key, epoch, seq, event.seq);
                assert!(lost.is_empty(), "device {d}: {key} skipped {lost:?} before {event:?}");
            }
            let n = f["data"]["n"].as_u64().expect("every payload carries its number");
            client.on_event(&self.log, &event, n).unwrap_or_else(|e| panic!("device {d}: {e}"));
            self.seen.events += 1;
        }
    }

    /// The step that follows a late tick's clock move: the tick comes right after it.
    fn after_op(&mut self) {
        if self.late {
            self.late = false;
            self.seen.late_ticks += 1;
            let frames = self.apply(Op::Tick(0));
            assert!(frames.is_empty(), "ticks deliver nothing here: {frames:?}");
        }
    }

    fn run(&mut self, dev: usize, op: Op) {
        match op {
            Op::Tick(ms) | Op::Sleep(ms) => {
                // A late tick is overtaken by one call, not by a clock that keeps moving.
                self.after_op();
                let then = self.clock + Ms::from(ms);
                // Devices resume within their window: those whose window ends by then resume now.
                for d in 0..self.devs.len() {
                    if self.devs[d].held && self.devs[d].opened_at + self.window <= then {
                        self.resume(d);
                    }
                }
                self.clock = then;
                let late = matches!(op, Op::Sleep(_));
                let frames = self.apply(op);
                assert!(frames.is_empty(), "ticks deliver nothing here: {frames:?}");
                self.late = late;
                return;
            }
            Op::Connect { .. } => self.connect(dev),
            Op::Disconnect { clean, .. } => {
                if let Some(id) = self.devs[dev].conn.take() {
                    let who = self.who(id);
                    assert!(self.apply(Op::Disconnect { who, clean }).is_empty());
                    let d = &mut self.devs[dev];
                    d.last_closed = Some(id);
                    d.client.conn = None;
                    d.held = false;
                }
            }
            Op::Receive { .. } => {
                if self.devs[dev].held {
                    self.resume(dev);
                }
            }
            Op::Join { room, .. } => {
                if self.devs[dev].conn.is_some() {
                    self.join(dev, room);
                }
            }
            Op::Leave { room, .. } => {
                if let Some(id) = self.devs[dev].conn {
                    let who = self.who(id);
                    let frames = self.apply(Op::Leave { who, room, joined: false });
                    assert!(frames.iter().all(|(_, f)| f["type"] == "left"), "{frames:?}");
                    self.devs[dev].rooms.retain(|r| *r != room);
                }
            }
            Op::Publish { target, kind, thread } => self.publish(dev, target, kind, thread),
            other => unreachable!("not a device operation: {other:?}"),
        }
        self.after_op();
    }

    fn publish(&mut self, dev: usize, target: Tgt, kind: usize, thread: Option<usize>) {
        let (key, visibility, target) = match target {
            Tgt::User(t, u) => {
                let vis = thread.map_or(Visibility::All, |th| Visibility::Thread(thread_name(th)));
                (StreamKey::user(tenant_name(t), user_name(u)), vis, target)
            }
            Tgt::Thread(t, u, th) => {
                let key = StreamKey::user(tenant_name(t), user_name(u));
                (key, Visibility::Thread(thread_name(th)), target)
            }
            Tgt::Conn(_) => {
                let d = &self.devs[dev];
                // Its live connection, or else the one it closed last (refused: closed or stale).
                let Some(id) = d.conn.or(d.last_closed) else { return };
                (d.client.user_stream(), Visibility::Conn(id), Tgt::Conn(self.who(id)))
            }
            Tgt::Room(t, r) => {
                (StreamKey::room(tenant_name(t), room_name(r)), Visibility::All, target)
            }
            Tgt::Tenant(t, role) => {
                let vis = role.map_or(Visibility::All, |r| Visibility::Role(ROLES[r].to_owned()));
                (StreamKey::tenant(tenant_name(t)), vis, target)
            }
            other => unreachable!("not a resume target: {other:?}"),
        };
        // A held connection's backlog must stay buffered until its resume: resume before it
        // would outgrow the buffer.
        if let Some(&(epoch, seq)) = self.heads.get(&key) {
            for d in 0..self.devs.len() {
                let base = self.devs[d].bases.get(&key).copied();
                let due = base.is_some_and(|b| b.0 == epoch && seq + 1 - b.1 > MAX_MESSAGES);
                if self.devs[d].held && due {
                    self.resume(d);
                }
            }
        }
        let frames = self.apply(Op::Publish { target, kind, thread });
        if let Some((n, p)) = self.r.published() {
            if let Some((_, pos)) = &p.position {
                let (epoch, seq) = (pos.epoch, pos.seq);
                let at = self.r.now();
                let published =
                    Published { key: key.clone(), epoch, seq, visibility, critical: true, at };
                self.log.record(*n, published);
                self.heads.insert(key, (epoch, seq));
            }
        }
        self.events(&frames);
    }

    fn connect(&mut self, dev: usize) {
        if self.devs[dev].conn.is_some() {
            return;
        }
        let (tenant, user) = self.devs[dev].spec.user;
        let roles = u8::from(self.devs[dev].spec.admin);
        let frames = self.apply(Op::Connect { tenant, user, tier: 3, roles, expires_in: None });
        let Some(Action::Deliver { conn: id, .. }) = self.r.actions().iter().find(|a| {
            matches!(a, Action::Deliver { frame, .. } if frame.as_str().contains("\"connected\""))
        }) else {
            panic!("device {dev} not admitted: {frames:?}");
        };
        let id = *id;
        assert_eq!(frames.len(), 1, "only the connected frame: {frames:?}");
        let connected = &frames[0].1;
        let (window, clock) = (self.window, self.clock);
        let d = &mut self.devs[dev];
        d.conn = Some(id);
        d.client.conn = Some(id);
        d.client.filter = None;
        d.held = window > 0;
        d.resumed = false;
        d.subscribed = false;
        d.opened_at = clock;
        d.rooms.clear();
        d.bases.clear();
        for (wire, key) in [("u", d.client.user_stream()), ("t", d.client.tenant_stream())] {
            let p = &connected["streams"][wire];
            let pos = (p["epoch"].as_u64().unwrap(), p["seq"].as_u64().unwrap());
            d.bases.insert(key.clone(), pos);
            // First sight of this stream: the device starts from the connected position.
            d.client.start(key.clone(), pos);
            self.heads.insert(key, pos);
        }
        // The application puts the connection into its rooms.
        for r in self.devs[dev].spec.rooms.clone() {
            self.join(dev, r);
        }
        if window == 0 || !self.devs[dev].spec.late_subscribe {
            self.subscribe(dev);
        }
        if window == 0 {
            // Without a window the device narrows its streams first, then resumes at once.
            self.resume(dev);
        }
    }

    fn join(&mut self, dev: usize, room: usize) {
        let who = self.who(self.devs[dev].conn.expect("live"));
        let frames = self.apply(Op::Join { who, room });
        let Some((_, f)) = frames.first() else {
            assert!(self.devs[dev].rooms.contains(&room), "a join that announced nothing");
            return;
        };
        assert_eq!((frames.len(), f["type"].as_str()), (1, Some("joined")), "{frames:?}");
        let d = &mut self.devs[dev];
        let key = StreamKey::room(&d.client.tenant, room_name(room));
        let pos = (f["epoch"].as_u64().unwrap(), f["seq"].as_u64().unwrap());
        d.rooms.push(room);
        d.bases.insert(key.clone(), pos);
        // Before its resume the device keeps what it last saw of the room (to resume from it);
        // otherwise (first sight, or a connection that can no longer resume) it starts from the
        // joined position.
        if d.resumed || d.client.position(&key).is_none() {
            d.client.set_position(key.clone(), pos);
        }
        self.heads.insert(key, pos);
    }

    fn subscribe(&mut self, dev: usize) {
        let who = self.who(self.devs[dev].conn.expect("live"));
        let filter = self.devs[dev].spec.filter.clone();
        for &th in filter.iter().flatten() {
            let frames = self.apply(Op::Receive { who, frame: In::Subscribe(th) });
            assert!(frames.is_empty(), "subscribing delivers nothing: {frames:?}");
        }
        let d = &mut self.devs[dev];
        d.client.filter = filter.map(|f| f.into_iter().map(thread_name).collect());
        d.subscribed = true;
    }

    fn resume(&mut self, dev: usize) {
        if !self.devs[dev].subscribed {
            self.subscribe(dev);
        }
        let d = &self.devs[dev];
        let (id, held) = (d.conn.expect("live"), d.held);
        let who = self.who(id);
        let positions: Vec<(String, u64, u64)> = d
            .keys()
            .iter()
            .map(|k| {
                let (e, s) = d.client.position(k).expect("a position on each of its streams");
                (k.wire(), e, s)
            })
            .collect();
        let (spoil, extra) = (d.spec.spoil, d.spec.extra);
        if let Some(variant) = spoil {
            let frames =
                self.apply(Op::Receive { who, frame: In::Spoiled(positions.clone(), variant) });
            assert_eq!(frames.len(), 1, "only the error frame: {frames:?}");
            assert_eq!(frames[0].1["code"], "invalid_field", "{frames:?}");
            self.seen.spoiled += 1;
        }
        let frames =
            self.apply(Op::Receive { who, frame: In::Positions(positions.clone(), extra) });
        let (last, events) = frames.split_last().expect("a resumed frame");
        let resumed = &last.1;
        assert_eq!(resumed["type"], "resumed", "the resumed frame comes last: {frames:?}");
        assert!(frames.iter().all(|(fd, _)| *fd == dev));
        self.seen.resumes += 1;
        let reports = resumed["streams"].as_object().expect("streams").clone();
        let now = self.r.now();
        let mut heads = Vec::new();
        for (wire, r) in &reports {
            let d = &mut self.devs[dev];
            let key = d.client.key_of(wire).expect("a stream");
            let head = (r["epoch"].as_u64().unwrap(), r["seq"].as_u64().unwrap());
            if r["recovered"] == false {
                self.seen.unrecovered += 1;
                // The reason is justified by the log; the device starts over from the head, and
                // what was held back still follows, from the connection's base.
                let check = d.client.unrecovered(&self.log, wire, r, &self.retention, now);
                check.unwrap_or_else(|e| panic!("device {dev}: {e}"));
                if held {
                    let base = d.bases[&key];
                    assert_eq!(base.0, head.0, "a held connection's stream is not created anew");
                    d.client.set_position(key.clone(), base);
                }
            }
            heads.push((key, head));
        }
        self.seen.replayed += events.len() as u64;
        self.events(events);
        let d = &mut self.devs[dev];
        for (key, (epoch, seq)) in heads {
            // Everything up to the head it may see has arrived: live before, or replayed now.
            let pos = d.client.position(&key).expect("a position");
            assert_eq!(pos.0, epoch, "device {dev}: {key} left on another epoch");
            let lost = d.client.lost(&self.log, &key, epoch, pos.1, seq + 1);
            assert!(lost.is_empty(), "device {dev}: {key} missed {lost:?} up to {seq}");
            if pos.1 < seq {
                d.client.set_position(key, (epoch, seq));
            }
        }
        d.held = false;
        d.resumed = true;
    }
}

fn run_case(specs: Vec<Device>, ops: Vec<(usize, Op)>, window: Ms) -> Seen {
    let mut world = World::new(specs, window);
    for (dev, op) in ops {
        world.run(dev, op);
    }
    // Finally everyone comes back and resumes: the last stretch must be complete too.
    let n = world.devs.len();
    for d in 0..n {
        world.connect(d);
    }
    for d in 0..n {
        if world.devs[d].held {
            world.resume(d);
        }
    }
    world.run(0, Op::Tick(1_000));
    for (i, d) in world.devs.iter().enumerate() {
        assert!(d.conn.is_some() && d.resumed && !d.held, "device {i}");
    }
    world.seen
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(1000),
        max_shrink_iters: 20_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// No resume window: each device narrows and resumes right after connecting.
    #[test]
    fn resume_replays_exactly_what_was_missed_without_window(
        specs in devices(),
        ops in device_ops(),
    ) {
        run_case(specs, ops, 0);
    }

    /// With a resume window: publishes may come between a connect and its resume, and the
    /// device narrows before it resumes.
    #[test]
    fn resume_replays_exactly_what_was_missed_with_window(
        specs in devices(),
        ops in device_ops(),
    ) {
        run_case(specs, ops, 3_000);
    }
}

/// The strategy reaches what the properties are about: over a fixed number of cases, events,
/// resumes, unrecovered streams, spoiled resumes and late ticks all happen.
#[test]
fn the_cases_reach_what_the_properties_are_about() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[3; 32]);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let mut total = Seen::default();
    for i in 0..100 {
        let specs = devices().new_tree(&mut runner).unwrap().current();
        let ops = device_ops().new_tree(&mut runner).unwrap().current();
        let seen = run_case(specs, ops, if i % 2 == 0 { 0 } else { 3_000 });
        total.events += seen.events;
        total.replayed += seen.replayed;
        total.resumes += seen.resumes;
        total.unrecovered += seen.unrecovered;
        total.spoiled += seen.spoiled;
        total.late_ticks += seen.late_ticks;
    }
    eprintln!("{total:?}");
    assert!(total.events > 1_000, "{total:?}");
    assert!(total.replayed > 100, "{total:?}");
    assert!(total.resumes > 500, "{total:?}");
    assert!(total.unrecovered > 50, "{total:?}");
    assert!(total.spoiled > 50, "{total:?}");
    assert!(total.late_ticks > 100, "{total:?}");
}

/// The age boundary to the nanosecond (the properties run in milliseconds): a message aged
/// exactly `max_age` is kept, by the stream's age timer and for a resume; one nanosecond more and
/// the timer drops it, and a resume from before it is `gap_too_old`.
#[test]
fn a_message_is_kept_for_exactly_max_age_to_the_nanosecond() {
    use std::time::Duration;
    use switchboard::{EventKind, Principal};
    let max_age = Duration::from_secs(30);
    let cfg = switchboard::Config {
        retention: Retention { max_messages: 6, max_bytes: 1 << 30, max_age },
        user_retention: Duration::from_secs(60),
        ..common::quiet()
    };
    for late in [Duration::ZERO, Duration::from_nanos(1)] {
        let mut sim = common::Sim::new(cfg.clone());
        let first = sim.connect("acme", "alice");
        let actions = sim.publish_to_user("acme", "alice", EventKind::ToolCompleted);
        let event = EventFrame::decode(&common::frames_for(&actions, first)[0]).expect("an event");
        let kept_at = sim.now;
        // The age timer is due one nanosecond after `max_age`, not before.
        let due = sim.hub.poll_timeout().expect("the age timer is armed");
        assert!(due <= kept_at + max_age + Duration::from_nanos(1), "{due:?}");
        sim.now = kept_at + max_age + late;
        sim.hub.tick(sim.now);
        let buffered = sim.hub.user("acme", "alice").expect("held").buffered().0;
        assert_eq!(buffered, usize::from(late.is_zero()), "aged {:?} past max_age", late);
        assert_eq!(sim.hub.stats().buffered_messages, buffered as u64);
        sim.drain();
        // A second device resumes from before the message.
        let second = sim.hub.connect(sim.now, Principal::new("acme", "alice")).expect("admitted");
        sim.drain();
        let resume = serde_json::json!({"type": "resume", "positions": {"u": {"epoch": event.epoch, "seq": 0}}});
        sim.hub.receive(sim.now, second, resume.to_string().as_bytes()).expect("resumed");
        let frames = common::frames_for(&sim.drain(), second);
        let report = &frames.last().expect("a resumed frame")["streams"]["u"];
        if late.is_zero() {
            assert_eq!(
                (report["recovered"].as_bool(), report["replayed"].as_u64()),
                (Some(true), Some(1)),
                "{report}"
            );
        } else {
            assert_eq!(report["reason"], "gap_too_old", "{report}");
        }
    }
}
