//! Cluster mode: a bus reply that arrives after the stream it describes has moved on (a new
//! epoch, later messages, the stream dropped and followed anew) must not move the stream back.
//! One node is driven by hand here, so that a reply can be held while later messages arrive: the
//! order a real bus gives when its replies and its live channel travel on different connections.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::{
    Action, BusEntry, BusOp, BusReply, ClusterConfig, Config, Envelope, EventKind, Hub, OpId,
    Principal, StreamKey, StreamPos, Target,
};
use switchboard_testkit::frames::parse;

/// One node over a bus the test plays: subscriptions and leases are answered at once, appends,
/// fetches and top checks are recorded for the test to answer (or not).
struct Manual {
    hub: Hub,
    now: Instant,
    /// Appended payloads, in publish order.
    appended: Vec<String>,
    /// Fetches asked for and not answered yet, with the seq each reads after.
    fetches: Vec<(OpId, u64)>,
    /// Top checks asked for and not answered yet, with the streams they read.
    tops: Vec<(OpId, Vec<StreamKey>)>,
    /// Rotations asked for and not answered yet.
    rotations: Vec<OpId>,
    frames: Vec<Value>,
    key: StreamKey,
    /// Where subscriptions are answered.
    subscribed_at: StreamPos,
}

impl Manual {
    /// acme/alice connected, her stream at `(epoch, 0)`, and notes 1 to 4 published (appended,
    /// not yet back on the live channel).
    fn new(epoch: u64) -> Self {
        let mut cfg = Config { cluster: Some(ClusterConfig::new("n0")), ..Config::default() };
        cfg.heartbeat.interval = Duration::from_secs(3600);
        let hub = Hub::new(cfg).expect("valid");
        let key = StreamKey::user("acme", "alice");
        let mut m = Self {
            hub,
            now: Instant::now(),
            appended: Vec::new(),
            fetches: Vec::new(),
            tops: Vec::new(),
            rotations: Vec::new(),
            frames: Vec::new(),
            key,
            subscribed_at: StreamPos { epoch, seq: 0 },
        };
        m.hub.connect(m.now, Principal::new("acme", "alice")).expect("admitted");
        m.drain();
        for n in 1..=4 {
            let note =
                Envelope::new(Target::user("acme", "alice"), EventKind::Custom("note".into()))
                    .data(json!({ "n": n }));
            m.hub.publish(m.now, note).expect("accepted");
        }
        m.drain();
        m
    }

    /// Answers subscriptions, records appends, fetches and top checks, and keeps the frames.
    fn drain(&mut self) {
        let top = self.subscribed_at;
        while let Some(action) = self.hub.poll_action() {
            match action {
                Action::Deliver { frame, .. } => self.frames.push(parse(frame.as_str())),
                Action::Bus(op) => match *op {
                    BusOp::Subscribe { op, .. } => {
                        self.hub.bus_reply(self.now, op, Ok(BusReply::Subscribed { top }))
                    }
                    BusOp::Append { payload, .. } => self.appended.push(payload.to_string()),
                    BusOp::Fetch { op, after, .. } => self.fetches.push((op, after)),
                    BusOp::Tops { op, streams } => self.tops.push((op, streams)),
                    BusOp::Rotate { op, .. } => self.rotations.push(op),
                    BusOp::Lease { op, .. } => {
                        let granted = BusReply::Leased { granted: true, evicted: None };
                        self.hub.bus_reply(self.now, op, Ok(granted))
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }

    /// Note `seq` (of the four published) arrives on the live channel at `(epoch, seq)`.
    fn arrive(&mut self, epoch: u64, seq: u64) {
        let payload = self.appended[seq as usize - 1].clone();
        let key = self.key.clone();
        self.hub.bus_message(self.now, &key, StreamPos { epoch, seq }, &payload);
        self.drain();
    }

    /// Runs the clock until the node asks for a top check.
    fn until_top_check(&mut self) -> (OpId, Vec<StreamKey>) {
        for _ in 0..100 {
            self.now += Duration::from_secs(5);
            self.hub.tick(self.now);
            self.drain();
            if let Some(check) = self.tops.pop() {
                return check;
            }
        }
        panic!("no top check within 500 s");
    }

    /// Answers a top check: alice's stream at `top`, any other where it was subscribed.
    fn answer_tops(&mut self, (op, streams): (OpId, Vec<StreamKey>), top: StreamPos) {
        let tops = streams.iter().map(|s| if *s == self.key { top } else { self.subscribed_at });
        self.answer(op, BusReply::Tops(tops.collect()));
    }

    fn answer(&mut self, op: OpId, reply: BusReply) {
        self.hub.bus_reply(self.now, op, Ok(reply));
        self.drain();
    }

    /// The log's entries for `seqs`, as a fetch answers them.
    fn entries(&self, seqs: std::ops::RangeInclusive<u64>) -> Vec<BusEntry> {
        let payload = |seq: u64| self.appended[seq as usize - 1].as_str().into();
        seqs.map(|seq| BusEntry { seq, payload: payload(seq) }).collect()
    }

    /// Seq 3 of epoch 6 arrives after seqs 1 and 2: each was sent once, in order, and nothing is
    /// left to read from the log.
    fn epoch_6_goes_on(&mut self) {
        self.arrive(6, 3);
        assert_eq!(
            self.seqs(6),
            [1, 2, 3],
            "each seq of epoch 6 once, in order: {:?}",
            self.frames
        );
        assert!(self.fetches.is_empty(), "nothing to read from the log: {:?}", self.fetches);
    }

    fn of_type(&self, kind: &str) -> Vec<&Value> {
        self.frames.iter().filter(|f| f["type"] == kind).collect()
    }

    /// The seqs of `epoch` the connection was sent, in order.
    fn seqs(&self, epoch: u64) -> Vec<u64> {
        let notes = self.of_type("note").into_iter().filter(|f| f["epoch"] == epoch);
        notes.map(|f| f["seq"].as_u64().expect("seq")).collect()
    }
}

#[test]
fn a_repair_answered_after_the_stream_moved_to_a_new_epoch_is_ignored() {
    let mut m = Manual::new(5);
    // Seq 1 of epoch 5 is lost on the way: seq 2 waits while the log is read.
    m.arrive(5, 2);
    assert_eq!(m.fetches.len(), 1, "a repair is in flight");
    // Before it is answered the stream moves to epoch 6, whose first two seqs are delivered.
    m.arrive(6, 1);
    m.arrive(6, 2);
    let resyncs = m.of_type("resync").len();
    assert_eq!(resyncs, 1, "told once that the epoch changed: {:?}", m.frames);
    // The repair's answer describes epoch 5: it must not move the stream back to it.
    let entries = m.entries(1..=2);
    let (op, _) = m.fetches.remove(0);
    m.answer(op, BusReply::Fetched { top: StreamPos { epoch: 5, seq: 2 }, entries });
    assert_eq!(m.of_type("resync").len(), resyncs, "no second epoch change: {:?}", m.frames);
    assert_eq!(m.hub.stats().bus.late_replies, 1, "the stale answer is counted");
    m.epoch_6_goes_on();
}

#[test]
fn a_top_check_answered_after_the_stream_moved_to_a_new_epoch_is_ignored() {
    let mut m = Manual::new(5);
    m.arrive(5, 1);
    let check = m.until_top_check();
    // The log is read at (5, 1); then the stream moves to epoch 6 before the answer is back.
    m.arrive(6, 1);
    m.arrive(6, 2);
    let resyncs = m.of_type("resync").len();
    m.answer_tops(check, StreamPos { epoch: 5, seq: 1 });
    assert_eq!(m.of_type("resync").len(), resyncs, "not moved back to epoch 5: {:?}", m.frames);
    m.epoch_6_goes_on();
}

#[test]
fn a_top_check_read_before_later_messages_arrived_is_no_sign_the_log_went_backwards() {
    let mut m = Manual::new(5);
    m.arrive(5, 1);
    let check = m.until_top_check();
    // The log is read at (5, 1); seqs 2 and 3, appended after that read, arrive first.
    m.arrive(5, 2);
    m.arrive(5, 3);
    let ops_before = m.hub.stats().bus.ops;
    m.answer_tops(check, StreamPos { epoch: 5, seq: 1 });
    // Seq 1 was delivered before the read, so a top of 1 is what the log held: no rotation.
    assert_eq!(m.hub.stats().bus.ops, ops_before, "no rotation asked for");
    assert!(m.of_type("resync").is_empty(), "{:?}", m.frames);
    assert_eq!(m.seqs(5), [1, 2, 3]);
}

#[test]
fn a_top_check_below_what_was_delivered_before_it_was_read_rotates_the_stream() {
    let mut m = Manual::new(5);
    m.arrive(5, 1);
    m.arrive(5, 2);
    let check = m.until_top_check();
    let ops_before = m.hub.stats().bus.ops;
    // Seq 2 was delivered before the read, and the log's top is 1: a failover lost its tail.
    m.answer_tops(check, StreamPos { epoch: 5, seq: 1 });
    assert_eq!(m.rotations.len(), 1, "a rotation is asked for");
    assert_eq!(m.hub.stats().bus.ops, ops_before + 1);
}

#[test]
fn a_rotation_answered_after_the_new_epoch_arrived_does_not_start_it_over_again() {
    let mut m = Manual::new(5);
    m.arrive(5, 1);
    m.arrive(5, 2);
    let check = m.until_top_check();
    m.answer_tops(check, StreamPos { epoch: 5, seq: 1 });
    let rotation = m.rotations.pop().expect("a rotation is asked for");
    // The new epoch's first messages arrive before the rotation's answer.
    m.arrive(6, 1);
    m.arrive(6, 2);
    let resyncs = m.of_type("resync").len();
    assert_eq!(resyncs, 1, "{:?}", m.frames);
    m.answer(rotation, BusReply::Rotated { top: StreamPos { epoch: 6, seq: 2 } });
    assert_eq!(m.of_type("resync").len(), resyncs, "not started over again: {:?}", m.frames);
    m.epoch_6_goes_on();
}

#[test]
fn a_repair_read_before_later_messages_arrived_is_no_sign_the_log_went_backwards() {
    let mut m = Manual::new(5);
    m.arrive(5, 1);
    // Seq 2 is late: 3 waits while the log is read, at (5, 3).
    m.arrive(5, 3);
    let (op, _) = m.fetches.pop().expect("a repair is in flight");
    // Then 2 arrives after all, and 4, appended after the read.
    m.arrive(5, 2);
    m.arrive(5, 4);
    assert_eq!(m.seqs(5), [1, 2, 3, 4]);
    let ops_before = m.hub.stats().bus.ops;
    let entries = m.entries(2..=3);
    m.answer(op, BusReply::Fetched { top: StreamPos { epoch: 5, seq: 3 }, entries });
    assert_eq!(m.hub.stats().bus.ops, ops_before, "no rotation asked for");
    assert!(m.of_type("resync").is_empty(), "{:?}", m.frames);
    assert_eq!(m.seqs(5), [1, 2, 3, 4], "nothing sent twice");
}

#[test]
fn a_message_of_the_epoch_a_rotation_replaced_arriving_late_is_dropped() {
    let mut m = Manual::new(5);
    m.arrive(5, 1);
    m.arrive(5, 2);
    let check = m.until_top_check();
    m.answer_tops(check, StreamPos { epoch: 5, seq: 1 });
    let rotation = m.rotations.pop().expect("a rotation is asked for");
    m.answer(rotation, BusReply::Rotated { top: StreamPos { epoch: 6, seq: 0 } });
    assert_eq!(m.of_type("resync").len(), 1, "told of epoch 6: {:?}", m.frames);
    // A message appended in epoch 5 before the rotation comes on the live channel after its
    // answer (they travel on different connections).
    m.arrive(5, 3);
    assert_eq!(m.of_type("resync").len(), 1, "not taken back to epoch 5: {:?}", m.frames);
    assert_eq!(m.hub.stats().bus.duplicates_dropped, 1, "dropped and counted");
    // It is past what was delivered of epoch 5, so the log is read once; it is in epoch 6.
    let (op, _) = m.fetches.pop().expect("one read of the log");
    m.answer(op, BusReply::Fetched { top: StreamPos { epoch: 6, seq: 0 }, entries: Vec::new() });
    assert!(m.fetches.is_empty(), "{:?}", m.fetches);
    assert_eq!(m.of_type("resync").len(), 1, "still in epoch 6: {:?}", m.frames);
    m.arrive(6, 1);
    assert_eq!(m.seqs(6), [1], "{:?}", m.frames);
}

#[test]
fn a_malformed_message_at_another_epoch_is_dropped_before_it_moves_the_stream() {
    let mut m = Manual::new(5);
    m.arrive(5, 1);
    let key = m.key.clone();
    // A driver bug: garbage at an epoch the stream has never had.
    m.hub.bus_message(m.now, &key, StreamPos { epoch: 9, seq: 4 }, "{not a payload");
    m.drain();
    assert!(m.of_type("resync").is_empty(), "the stream stays in epoch 5: {:?}", m.frames);
    assert!(m.fetches.is_empty(), "nothing to fetch: {:?}", m.fetches);
    assert_eq!(m.hub.stats().bus.mismatches, 1, "audited as the driver's bug");
    m.arrive(5, 2);
    assert_eq!(m.seqs(5), [1, 2], "{:?}", m.frames);
}

#[test]
fn a_stream_taken_back_to_the_epoch_it_left_goes_on_from_what_it_delivered_there() {
    let mut m = Manual::new(5);
    m.arrive(5, 1);
    m.arrive(5, 2);
    // Another node's rotation started epoch 6 and its first message arrives; then a failover
    // loses the rotation (replication is asynchronous), and the log is back in epoch 5 at 2.
    m.arrive(6, 1);
    assert_eq!(m.seqs(6), [1], "{:?}", m.frames);
    let check = m.until_top_check();
    m.answer_tops(check, StreamPos { epoch: 5, seq: 2 });
    let resync = *m.of_type("resync").last().expect("told of the move back");
    assert_eq!((&resync["epoch"], &resync["seq"]), (&json!(5), &json!(2)), "{resync}");
    // Whatever the node asks of the log now, it is answered as the log is: seqs 1 and 2.
    while let Some((op, after)) = m.fetches.pop() {
        let entries = m.entries(after.min(2) + 1..=2);
        m.answer(op, BusReply::Fetched { top: StreamPos { epoch: 5, seq: 2 }, entries });
    }
    assert_eq!(m.seqs(5), [1, 2], "seqs 1 and 2 of epoch 5 are not sent again: {:?}", m.frames);
    assert!(m.rotations.is_empty(), "the log kept what was delivered: {:?}", m.rotations);
    m.arrive(5, 3);
    assert_eq!(m.seqs(5), [1, 2, 3], "{:?}", m.frames);
}

#[test]
fn a_stream_taken_back_to_the_epoch_it_left_below_what_it_delivered_there_rotates() {
    let mut m = Manual::new(5);
    m.arrive(5, 1);
    m.arrive(5, 2);
    m.arrive(6, 1);
    // The failover also lost seq 2 of epoch 5: the position would be handed out again.
    let check = m.until_top_check();
    m.answer_tops(check, StreamPos { epoch: 5, seq: 1 });
    while let Some((op, after)) = m.fetches.pop() {
        let entries = m.entries(after.min(1) + 1..=1);
        m.answer(op, BusReply::Fetched { top: StreamPos { epoch: 5, seq: 1 }, entries });
    }
    assert_eq!(m.seqs(5), [1, 2], "nothing of epoch 5 sent again: {:?}", m.frames);
    assert_eq!(m.rotations.len(), 1, "a rotation is asked for");
}

#[test]
fn a_message_of_the_epoch_a_lost_rotation_left_past_what_was_delivered_there_is_fetched_at_once() {
    let mut m = Manual::new(5);
    m.arrive(5, 1);
    m.arrive(6, 1);
    // A failover lost epoch 6: the next publish is appended as seq 2 of epoch 5. It is dropped
    // (epoch 5 is the one the stream left), but it is past what was delivered there: the log
    // is read at once rather than at the next top check.
    m.arrive(5, 2);
    let (op, after) = m.fetches.pop().expect("the log is read");
    let log_top = StreamPos { epoch: 5, seq: 2 };
    m.answer(op, BusReply::Fetched { top: log_top, entries: m.entries(after + 1..=2) });
    while let Some((op, after)) = m.fetches.pop() {
        m.answer(op, BusReply::Fetched { top: log_top, entries: m.entries(after + 1..=2) });
    }
    assert_eq!(m.seqs(5), [1, 2], "seq 2 of epoch 5 delivered, seq 1 not again: {:?}", m.frames);
    // A message of the left epoch at or below what was delivered there is only late.
    let ops = m.hub.stats().bus.ops;
    m.arrive(6, 1);
    m.arrive(5, 1);
    assert!(m.fetches.is_empty(), "no read for a late message: {:?}", m.fetches);
    assert_eq!(m.hub.stats().bus.ops, ops, "{:?}", m.frames);
}
