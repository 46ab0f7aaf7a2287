//! The model bus behaves as the cluster vocabulary's module doc says the engine must, and its
//! faults do what their docs say.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::{BusEntry, BusFailure, BusOp, BusReply, OpId, StreamKey, StreamPos};
use switchboard_testkit::bus::{BusEvent, EndKind, ModelBus};

const TTL: Duration = Duration::from_secs(3600);

fn id(n: u64) -> OpId {
    OpId::from_raw(1, n)
}

fn user(u: &str) -> StreamKey {
    StreamKey::user("acme", u)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn pos(epoch: u64, seq: u64) -> StreamPos {
    StreamPos { epoch, seq }
}

/// A small driver: numbers operations and collects events.
struct Drive {
    bus: ModelBus,
    t0: Instant,
    next: u64,
}

impl Drive {
    fn new(seed: u64) -> Self {
        Self { bus: ModelBus::new(seed), t0: Instant::now(), next: 0 }
    }

    fn at(&self, d: Duration) -> Instant {
        self.t0 + d
    }

    fn op(&mut self) -> OpId {
        self.next += 1;
        id(self.next)
    }

    fn subscribe(&mut self, t: Duration, node: usize, stream: &StreamKey) -> OpId {
        let op = self.op();
        self.bus.submit(self.at(t), node, BusOp::Subscribe { op, stream: stream.clone() });
        op
    }

    fn unsubscribe(&mut self, t: Duration, node: usize, stream: &StreamKey) {
        self.bus.submit(self.at(t), node, BusOp::Unsubscribe { stream: stream.clone() });
    }

    #[allow(clippy::too_many_arguments)]
    fn append_with(
        &mut self,
        t: Duration,
        node: usize,
        stream: &StreamKey,
        payload: &str,
        key: Option<&str>,
        keep: u32,
        ttl: Duration,
    ) -> OpId {
        let op = self.op();
        self.bus.submit(
            self.at(t),
            node,
            BusOp::Append {
                op,
                stream: stream.clone(),
                payload: Arc::from(payload),
                idempotency_key: key.map(Arc::from),
                keep,
                ttl,
            },
        );
        op
    }

    fn append(&mut self, t: Duration, node: usize, stream: &StreamKey, payload: &str) -> OpId {
        self.append_with(t, node, stream, payload, None, 100, TTL)
    }

    fn fetch(
        &mut self,
        t: Duration,
        node: usize,
        stream: &StreamKey,
        after: u64,
        limit: u32,
    ) -> OpId {
        let op = self.op();
        self.bus.submit(
            self.at(t),
            node,
            BusOp::Fetch { op, stream: stream.clone(), after, limit },
        );
        op
    }

    fn rotate(&mut self, t: Duration, node: usize, stream: &StreamKey, epoch: u64) -> OpId {
        let op = self.op();
        self.bus.submit(self.at(t), node, BusOp::Rotate { op, stream: stream.clone(), epoch });
        op
    }

    /// Every event due for `node` at `t`.
    fn drain(&mut self, t: Duration, node: usize) -> Vec<BusEvent> {
        let now = self.at(t);
        std::iter::from_fn(|| self.bus.poll(now, node)).collect()
    }

    /// The one reply to `op` among `node`'s due events (the others are discarded).
    fn reply(&mut self, t: Duration, node: usize, op: OpId) -> Result<BusReply, BusFailure> {
        let found: Vec<_> =
            replies(&self.drain(t, node)).into_iter().filter(|(o, _)| *o == op).collect();
        assert_eq!(found.len(), 1, "exactly one reply to {op}");
        found.into_iter().next().map(|(_, r)| r).unwrap()
    }
}

fn replies(events: &[BusEvent]) -> Vec<(OpId, Result<BusReply, BusFailure>)> {
    events
        .iter()
        .filter_map(|e| match e {
            BusEvent::Reply { op, reply } => Some((*op, reply.clone())),
            BusEvent::Message { .. } | BusEvent::Signal { .. } => None,
        })
        .collect()
}

fn messages(events: &[BusEvent]) -> Vec<(StreamKey, StreamPos, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            BusEvent::Message { stream, pos, payload } => {
                Some((stream.clone(), *pos, payload.to_string()))
            }
            BusEvent::Reply { .. } | BusEvent::Signal { .. } => None,
        })
        .collect()
}

fn appended(r: &Result<BusReply, BusFailure>) -> StreamPos {
    match r {
        Ok(BusReply::Appended { pos }) => *pos,
        other => panic!("expected Appended, got {other:?}"),
    }
}

#[test]
fn seqs_are_assigned_in_submission_order_across_nodes_in_one_epoch() {
    let mut d = Drive::new(1);
    let s = user("ann");
    let ops: Vec<(usize, OpId)> =
        (0..9).map(|i| (i % 3, d.append(secs(0), i % 3, &s, &format!("m{i}")))).collect();
    let all: Vec<_> = (0..3).flat_map(|n| replies(&d.drain(secs(0), n))).collect();
    let positions: Vec<StreamPos> = ops
        .iter()
        .map(|(_, op)| appended(&all.iter().find(|(o, _)| o == op).expect("answered").1))
        .collect();
    let epoch = positions[0].epoch;
    assert_ne!(epoch, 0);
    assert_eq!(positions, (1..=9).map(|q| pos(epoch, q)).collect::<Vec<_>>());
    assert_eq!(d.bus.top(&s), pos(epoch, 9));
    let h = d.bus.history(&s);
    assert_eq!(h.len(), 9);
    assert_eq!(h.iter().map(|a| a.by).collect::<Vec<_>>(), vec![0, 1, 2, 0, 1, 2, 0, 1, 2]);
    assert_eq!(&*h[4].payload, "m4");
    assert!(h.iter().all(|a| a.ended.is_none()));
    // Another stream gets its own epoch and seqs.
    let other = StreamKey::room("acme", "lobby");
    let op = d.append(secs(0), 0, &other, "x");
    let p = appended(&d.reply(secs(0), 0, op));
    assert_eq!(p.seq, 1);
    assert_ne!(p.epoch, epoch);
}

#[test]
fn subscribe_reports_zero_top_without_an_epoch_and_the_real_top_with_one() {
    let mut d = Drive::new(2);
    let s = user("bob");
    let op = d.subscribe(secs(0), 0, &s);
    assert_eq!(d.reply(secs(0), 0, op), Ok(BusReply::Subscribed { top: pos(0, 0) }));
    let a = d.append(secs(0), 1, &s, "hello");
    let p = appended(&d.reply(secs(0), 1, a));
    let op = d.subscribe(secs(0), 1, &s);
    assert_eq!(d.reply(secs(0), 1, op), Ok(BusReply::Subscribed { top: p }));
    assert_eq!(d.bus.subscribers(&s), vec![0, 1]);
}

#[test]
fn messages_reach_the_subscribers_of_the_instant_in_order_and_publish_precedes_the_reply() {
    let mut d = Drive::new(3);
    let s = user("cat");
    d.subscribe(secs(0), 0, &s);
    d.subscribe(secs(0), 1, &s);
    d.drain(secs(0), 0);
    d.drain(secs(0), 1);
    let ops: Vec<OpId> = (1..=5).map(|i| d.append(secs(0), 0, &s, &format!("p{i}"))).collect();
    // Node 2 subscribes after the fifth append: it sees only what comes later.
    d.subscribe(secs(0), 2, &s);
    d.append(secs(0), 1, &s, "p6");
    d.unsubscribe(secs(0), 1, &s);
    d.append(secs(0), 0, &s, "p7");

    let ev0 = d.drain(secs(0), 0);
    // The appender's FIFO: each message before its own reply.
    assert_eq!(ev0.len(), 13);
    for (i, op) in ops.iter().enumerate() {
        assert!(matches!(&ev0[2 * i], BusEvent::Message { pos, .. } if pos.seq == i as u64 + 1));
        assert!(matches!(&ev0[2 * i + 1], BusEvent::Reply { op: o, .. } if o == op));
    }
    let seqs = |ev: &[BusEvent]| messages(ev).iter().map(|(_, p, _)| p.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&ev0), vec![1, 2, 3, 4, 5, 6, 7]);
    let ev1 = d.drain(secs(0), 1);
    assert_eq!(seqs(&ev1), vec![1, 2, 3, 4, 5, 6], "unsubscribed before p7");
    assert_eq!(messages(&ev1)[5].2, "p6");
    let ev2 = d.drain(secs(0), 2);
    assert_eq!(seqs(&ev2), vec![6, 7]);
    assert!(
        matches!(&ev2[0], BusEvent::Reply { reply: Ok(BusReply::Subscribed { top }), .. } if top.seq == 5)
    );
    assert_eq!(d.bus.stats().messages_sent, 7 + 6 + 2);
}

#[test]
fn the_log_is_trimmed_to_keep_and_fetch_reports_the_first_entry_it_still_has() {
    let mut d = Drive::new(4);
    let s = user("dan");
    for i in 1..=5 {
        d.append_with(secs(0), 0, &s, &format!("e{i}"), None, 3, TTL);
    }
    let log: Vec<u64> = d.bus.log(&s).iter().map(|e| e.seq).collect();
    assert_eq!(log, vec![3, 4, 5]);
    let h = d.bus.history(&s);
    assert_eq!(h[0].ended.map(|(_, k)| k), Some(EndKind::Trimmed));
    assert_eq!(h[1].ended.map(|(_, k)| k), Some(EndKind::Trimmed));
    assert!(h[2].ended.is_none());
    let top = d.bus.top(&s);
    d.drain(secs(0), 0);

    let f = d.fetch(secs(0), 0, &s, 0, 10);
    let entry = |seq: u64| BusEntry { seq, payload: Arc::from(format!("e{seq}")) };
    assert_eq!(
        d.reply(secs(0), 0, f),
        Ok(BusReply::Fetched { top, entries: vec![entry(3), entry(4), entry(5)] })
    );
    let f = d.fetch(secs(0), 0, &s, 3, 1);
    assert_eq!(d.reply(secs(0), 0, f), Ok(BusReply::Fetched { top, entries: vec![entry(4)] }));
    let f = d.fetch(secs(0), 0, &s, 5, 10);
    assert_eq!(d.reply(secs(0), 0, f), Ok(BusReply::Fetched { top, entries: vec![] }));
    let f = d.fetch(secs(0), 0, &user("nobody"), 0, 10);
    assert_eq!(d.reply(secs(0), 0, f), Ok(BusReply::Fetched { top: pos(0, 0), entries: vec![] }));
    // keep 0: the seq still advances, the log holds nothing.
    d.append_with(secs(0), 0, &s, "e6", None, 0, TTL);
    assert!(d.bus.log(&s).is_empty());
    assert_eq!(d.bus.top(&s).seq, 6);
}

#[test]
fn an_idle_stream_expires_entirely_after_its_ttl_and_comes_back_with_a_new_epoch() {
    let mut d = Drive::new(5);
    let s = user("eve");
    d.append_with(secs(0), 0, &s, "a", None, 10, secs(10));
    d.append_with(secs(5), 0, &s, "b", None, 10, secs(10));
    let first = d.bus.top(&s);
    d.bus.advance(d.at(Duration::from_millis(14_999)));
    assert_eq!(d.bus.top(&s), first, "alive until 10 s after its last append");
    d.bus.advance(d.at(secs(15)));
    assert_eq!(d.bus.top(&s), pos(0, 0));
    assert!(d.bus.log(&s).is_empty());
    assert_eq!(d.bus.streams().count(), 0);
    assert_eq!(d.bus.stats().streams_expired, 1);
    assert!(d.bus.history(&s).iter().all(|a| a.ended.map(|(_, k)| k) == Some(EndKind::Expired)));
    d.drain(secs(15), 0);
    let op = d.append_with(secs(16), 0, &s, "c", None, 10, secs(10));
    let p = appended(&d.reply(secs(16), 0, op));
    assert_eq!(p.seq, 1);
    assert_ne!(p.epoch, first.epoch);
}

#[test]
fn a_repeated_idempotency_key_appends_nothing_and_names_the_first_position_until_its_ttl() {
    let mut d = Drive::new(6);
    let s = user("fay");
    d.subscribe(secs(0), 1, &s);
    let a = d.append_with(secs(0), 0, &s, "once", Some("k1"), 10, secs(10));
    let first = appended(&d.reply(secs(0), 0, a));
    let b = d.append_with(secs(1), 0, &s, "once again", Some("k1"), 10, secs(10));
    assert_eq!(d.reply(secs(1), 0, b), Ok(BusReply::Duplicate { pos: first }));
    assert_eq!(d.bus.top(&s), first);
    assert_eq!(d.bus.history(&s).len(), 1);
    // Another key appends; keys are per stream.
    let c = d.append_with(secs(2), 0, &s, "other", Some("k2"), 10, secs(10));
    assert_eq!(appended(&d.reply(secs(2), 0, c)).seq, 2);
    let e = d.append_with(secs(2), 0, &user("gil"), "same key elsewhere", Some("k1"), 10, secs(10));
    assert_eq!(appended(&d.reply(secs(2), 0, e)).seq, 1);
    // A keyless append keeps the stream alive past k1's ttl; k1 is then forgotten.
    d.append_with(secs(8), 0, &s, "filler", None, 10, secs(100));
    let f = d.append_with(secs(9), 0, &s, "k1 still known", Some("k1"), 10, secs(10));
    assert_eq!(d.reply(secs(9), 0, f), Ok(BusReply::Duplicate { pos: first }));
    let g = d.append_with(secs(10), 0, &s, "k1 forgotten", Some("k1"), 10, secs(10));
    assert_eq!(appended(&d.reply(secs(10), 0, g)), pos(first.epoch, 4));
    let seen: Vec<String> = messages(&d.drain(secs(10), 1)).into_iter().map(|m| m.2).collect();
    assert_eq!(seen, vec!["once", "other", "filler", "k1 forgotten"], "duplicates publish nothing");
    assert_eq!(d.bus.stats().duplicates, 2);
}

#[test]
fn tops_come_in_the_order_asked() {
    let mut d = Drive::new(7);
    let (a, b) = (user("a"), StreamKey::tenant("acme"));
    d.append(secs(0), 0, &a, "1");
    d.append(secs(0), 0, &a, "2");
    d.append(secs(0), 0, &b, "1");
    let (ta, tb) = (d.bus.top(&a), d.bus.top(&b));
    let op = d.op();
    d.bus.submit(
        d.at(secs(0)),
        0,
        BusOp::Tops { op, streams: vec![b.clone(), user("none"), a.clone()] },
    );
    assert_eq!(d.reply(secs(0), 0, op), Ok(BusReply::Tops(vec![tb, pos(0, 0), ta])));
    assert_eq!(ta.seq, 2);
}

#[test]
fn rotate_replaces_only_the_named_epoch() {
    let mut d = Drive::new(8);
    let s = user("hal");
    for i in 0..3 {
        d.append(secs(0), 0, &s, &format!("{i}"));
    }
    let old = d.bus.top(&s);
    d.drain(secs(0), 0);
    let r = d.rotate(secs(1), 0, &s, old.epoch);
    let new = match d.reply(secs(1), 0, r) {
        Ok(BusReply::Rotated { top }) => top,
        other => panic!("{other:?}"),
    };
    assert_ne!(new.epoch, old.epoch);
    assert_ne!(new.epoch, 0);
    assert_eq!(new.seq, 0);
    assert!(d.bus.log(&s).is_empty());
    assert!(d.bus.history(&s).iter().all(|a| a.ended.map(|(_, k)| k) == Some(EndKind::Rotated)));
    // A second rotation naming the old epoch changes nothing.
    let r = d.rotate(secs(1), 1, &s, old.epoch);
    assert_eq!(d.reply(secs(1), 1, r), Ok(BusReply::Rotated { top: new }));
    // Nor does rotating a stream that does not exist.
    let r = d.rotate(secs(1), 1, &user("none"), 0);
    assert_eq!(d.reply(secs(1), 1, r), Ok(BusReply::Rotated { top: pos(0, 0) }));
    assert!(d.bus.streams().all(|k| *k == s));
    let a = d.append(secs(2), 0, &s, "fresh");
    assert_eq!(appended(&d.reply(secs(2), 0, a)), pos(new.epoch, 1));
    assert_eq!(d.bus.stats().rotations, 1);
}

#[test]
fn restart_empty_forgets_streams_epochs_and_keys_but_keeps_subscriptions() {
    let mut d = Drive::new(9);
    let s = user("ivy");
    d.subscribe(secs(0), 1, &s);
    d.append_with(secs(0), 0, &s, "before", Some("k"), 10, TTL);
    let old = d.bus.top(&s);
    d.drain(secs(0), 0);
    d.drain(secs(0), 1);
    d.bus.restart_empty();
    assert_eq!(d.bus.top(&s), pos(0, 0));
    assert_eq!(d.bus.streams().count(), 0);
    assert_eq!(d.bus.history(&s)[0].ended.map(|(_, k)| k), Some(EndKind::Restarted));
    assert_eq!(d.bus.subscriptions(1).cloned().collect::<Vec<_>>(), vec![s.clone()]);
    let a = d.append_with(secs(1), 0, &s, "after", Some("k"), 10, TTL);
    let p = appended(&d.reply(secs(1), 0, a));
    assert_eq!(p.seq, 1);
    assert_ne!(p.epoch, old.epoch);
    assert_eq!(messages(&d.drain(secs(1), 1)), vec![(s.clone(), p, "after".to_string())]);
}

#[test]
fn losing_the_tail_moves_the_seq_back_in_the_same_epoch() {
    let mut d = Drive::new(10);
    let s = user("jo");
    for i in 1..=5 {
        d.append_with(secs(0), 0, &s, &format!("v{i}"), Some(&format!("k{i}")), 100, TTL);
    }
    let epoch = d.bus.top(&s).epoch;
    d.drain(secs(0), 0);
    d.bus.lose_tail(&s, 2);
    assert_eq!(d.bus.top(&s), pos(epoch, 3));
    assert_eq!(d.bus.log(&s).last().map(|e| e.seq), Some(3));
    let ends: Vec<_> = d.bus.history(&s).iter().map(|a| a.ended.map(|(_, k)| k)).collect();
    assert_eq!(ends, vec![None, None, None, Some(EndKind::TailLost), Some(EndKind::TailLost)]);
    // The lost append's key is gone with it: retrying appends again, at a reused seq.
    let a = d.append_with(secs(1), 0, &s, "v4 again", Some("k4"), 100, TTL);
    assert_eq!(appended(&d.reply(secs(1), 0, a)), pos(epoch, 4));
    let b = d.append_with(secs(1), 0, &s, "v3 again", Some("k3"), 100, TTL);
    assert_eq!(d.reply(secs(1), 0, b), Ok(BusReply::Duplicate { pos: pos(epoch, 3) }));
    assert_eq!(d.bus.history(&s).len(), 6);

    // Losing every append of an epoch loses the stream.
    let t = user("kim");
    d.append(secs(2), 0, &t, "only");
    d.bus.lose_tail_everywhere(1);
    assert_eq!(d.bus.top(&t), pos(0, 0));
    assert_eq!(d.bus.top(&s), pos(epoch, 3), "every stream lost one");
}

#[test]
fn message_loss_hits_only_live_messages_of_the_nodes_it_names() {
    let mut d = Drive::new(11);
    let s = user("lee");
    for n in 0..3 {
        d.subscribe(secs(0), n, &s);
    }
    d.bus.set_message_loss(Some(1), 1_000_000);
    d.bus.set_message_loss(Some(2), 500_000);
    let ops: Vec<OpId> = (0..1000).map(|i| d.append(secs(0), 0, &s, &format!("{i}"))).collect();
    let ev0 = d.drain(secs(0), 0);
    assert_eq!(messages(&ev0).len(), 1000);
    assert_eq!(replies(&ev0).len(), 1001, "replies are never lost");
    assert_eq!(replies(&ev0)[1000].0, ops[999]);
    assert_eq!(messages(&d.drain(secs(0), 1)).len(), 0);
    let got2: Vec<u64> = messages(&d.drain(secs(0), 2)).iter().map(|m| m.1.seq).collect();
    assert!((350..650).contains(&got2.len()), "about half lost: {}", got2.len());
    assert!(got2.windows(2).all(|w| w[0] < w[1]), "what arrives is in order");
    assert_eq!(d.bus.stats().messages_lost, 1000 + (1000 - got2.len() as u64));
    // `None` sets every node.
    d.bus.set_message_loss(None, 0);
    d.append(secs(1), 0, &s, "after");
    assert_eq!(messages(&d.drain(secs(1), 1)).len(), 1);
}

#[test]
fn held_and_late_deliveries_keep_their_order() {
    let mut d = Drive::new(12);
    let s = user("max");
    d.subscribe(secs(0), 1, &s);
    d.drain(secs(0), 1);
    d.bus.hold(Some(1), d.at(secs(5)));
    for i in 0..3 {
        d.append(secs(1), 0, &s, &format!("{i}"));
    }
    assert!(d.drain(Duration::from_millis(4_999), 1).is_empty());
    assert_eq!(d.bus.queued(1), 3);
    assert_eq!(d.bus.next_due(1), Some(d.at(secs(5))));
    let got: Vec<u64> = messages(&d.drain(secs(5), 1)).iter().map(|m| m.1.seq).collect();
    assert_eq!(got, vec![1, 2, 3]);
    assert!(!d.drain(secs(5), 0).is_empty(), "node 0 was not held");

    d.bus.set_latency(Some(1), secs(1), secs(2));
    for i in 0..20 {
        d.append(secs(10), 0, &s, &format!("{i}"));
    }
    assert!(d.drain(Duration::from_millis(10_999), 1).is_empty());
    let due = d.bus.next_due(1).expect("queued");
    assert!(due >= d.at(secs(11)) && due <= d.at(secs(12)));
    let got: Vec<u64> = messages(&d.drain(secs(12), 1)).iter().map(|m| m.1.seq).collect();
    assert_eq!(got, (4..=23).collect::<Vec<_>>());
}

#[test]
fn failed_ops_are_not_performed_and_timed_out_ops_are_never_answered() {
    let mut d = Drive::new(13);
    let s = user("ned");
    d.bus.set_op_faults(1_000_000, 0);
    let ops: Vec<OpId> = (0..10).map(|i| d.append(secs(0), 0, &s, &format!("{i}"))).collect();
    let r = replies(&d.drain(secs(0), 0));
    assert_eq!(r, ops.iter().map(|o| (*o, Err(BusFailure::Retryable))).collect::<Vec<_>>());
    assert_eq!(d.bus.top(&s), pos(0, 0));
    assert_eq!(d.bus.stats().ops_failed, 10);

    d.bus.set_op_faults(0, 1_000_000);
    for i in 0..200 {
        d.append(secs(1), 0, &s, &format!("{i}"));
    }
    assert!(d.drain(secs(100), 0).is_empty());
    let done = d.bus.top(&s).seq;
    assert!((60..140).contains(&done), "about half performed: {done}");
    assert_eq!(d.bus.stats().ops_timed_out, 200);

    d.bus.set_op_faults(200_000, 0);
    let ops: Vec<OpId> = (0..500).map(|i| d.append(secs(2), 0, &s, &format!("{i}"))).collect();
    let r = replies(&d.drain(secs(2), 0));
    assert_eq!(r.iter().map(|(o, _)| *o).collect::<Vec<_>>(), ops, "each answered once, in order");
    let failed = r.iter().filter(|(_, x)| x.is_err()).count();
    assert!((60..140).contains(&failed), "about a fifth failed: {failed}");
    assert_eq!(d.bus.top(&s).seq, done + (500 - failed) as u64);
}

#[test]
fn while_down_everything_fails_and_no_message_flows_but_subscriptions_survive() {
    let mut d = Drive::new(14);
    let s = user("oz");
    d.subscribe(secs(0), 1, &s);
    d.drain(secs(0), 1);
    d.bus.hold(Some(1), d.at(secs(1)));
    d.append(secs(0), 0, &s, "queued");
    let sub = d.subscribe(secs(0), 1, &user("other"));
    assert_eq!(d.bus.queued(1), 2);
    d.bus.go_down();
    assert!(!d.bus.is_up() && !d.bus.reachable(0));
    // The queued message is lost with the connection; the queued reply is kept.
    let ev = d.drain(secs(1), 1);
    assert_eq!(ev.len(), 1);
    assert!(matches!(&ev[0], BusEvent::Reply { op, reply: Ok(_) } if *op == sub));
    let a = d.append(secs(2), 0, &s, "while down");
    assert_eq!(d.reply(secs(2), 0, a), Err(BusFailure::Retryable));
    let f = d.fetch(secs(2), 0, &s, 0, 10);
    assert_eq!(d.reply(secs(2), 0, f), Err(BusFailure::Retryable));
    assert_eq!(d.bus.top(&s).seq, 1, "nothing performed");
    assert_eq!(d.bus.stats().ops_unreachable, 2);
    d.bus.come_up();
    let a = d.append(secs(3), 0, &s, "back");
    assert_eq!(appended(&d.reply(secs(3), 0, a)).seq, 2);
    assert_eq!(
        messages(&d.drain(secs(3), 1)).iter().map(|m| m.2.as_str()).collect::<Vec<_>>(),
        vec!["back"]
    );
}

#[test]
fn a_disconnected_node_loses_its_messages_and_ops_while_the_others_go_on() {
    let mut d = Drive::new(15);
    let s = user("pia");
    let broadcast = StreamKey::tenant("acme");
    d.subscribe(secs(0), 0, &s);
    d.subscribe(secs(0), 1, &s);
    d.subscribe(secs(0), 1, &broadcast);
    d.drain(secs(0), 0);
    d.drain(secs(0), 1);
    d.bus.disconnect(1);
    assert!(d.bus.reachable(0) && !d.bus.reachable(1));
    d.append(secs(1), 0, &s, "missed");
    let f = d.fetch(secs(1), 1, &s, 0, 10);
    let ev1 = d.drain(secs(1), 1);
    assert_eq!(replies(&ev1), vec![(f, Err(BusFailure::Retryable))]);
    assert!(messages(&ev1).is_empty());
    assert_eq!(messages(&d.drain(secs(1), 0)).len(), 1);
    // Unsubscribing while cut off still takes effect (the driver will not restore it).
    d.unsubscribe(secs(1), 1, &broadcast);
    d.bus.reconnect(1);
    d.append(secs(2), 0, &broadcast, "not for node 1");
    d.append(secs(2), 0, &s, "seen");
    let got: Vec<u64> = messages(&d.drain(secs(2), 1)).iter().map(|m| m.1.seq).collect();
    assert_eq!(got, vec![2], "the subscription survived, the gap is the node's to repair");
}

#[test]
fn a_crashed_node_loses_its_subscriptions_and_queue() {
    let mut d = Drive::new(16);
    let s = user("quin");
    d.subscribe(secs(0), 2, &s);
    d.append(secs(0), 0, &s, "x");
    assert_eq!(d.bus.queued(2), 2);
    d.bus.crash_node(2);
    assert_eq!(d.bus.queued(2), 0);
    assert!(d.bus.subscribers(&s).is_empty());
    d.append(secs(1), 0, &s, "y");
    assert!(d.drain(secs(1), 2).is_empty());
}

#[test]
fn a_full_queue_loses_live_messages_but_not_replies() {
    let mut d = Drive::new(17);
    let s = user("ray");
    d.subscribe(secs(0), 1, &s);
    d.bus.set_queue_limit(3);
    let ops: Vec<OpId> = (0..5).map(|i| d.append(secs(0), 1, &s, &format!("{i}"))).collect();
    let ev = d.drain(secs(0), 1);
    assert_eq!(replies(&ev).len(), 6);
    assert_eq!(replies(&ev)[5].0, ops[4]);
    assert!(messages(&ev).len() < 5);
    assert_eq!(d.bus.stats().messages_lost, 5 - messages(&ev).len() as u64);
}

#[test]
fn the_same_seed_replays_the_same_run_and_another_seed_does_not() {
    fn run(seed: u64) -> (Vec<BusEvent>, Vec<BusEvent>) {
        let mut d = Drive::new(seed);
        d.bus.set_message_loss(None, 300_000);
        d.bus.set_latency(None, Duration::ZERO, secs(1));
        d.bus.set_op_faults(100_000, 100_000);
        let s = user("sal");
        d.subscribe(secs(0), 1, &s);
        for i in 0..200 {
            d.append(secs(i / 10), (i % 2) as usize, &s, &format!("{i}"));
        }
        (d.drain(secs(100), 0), d.drain(secs(100), 1))
    }
    let a = run(42);
    assert_eq!(a, run(42));
    assert_ne!(a, run(43));
}

/// Random operations and faults from several nodes: after every step each stream's log is
/// exactly its appends that have not ended, in seq order and in the current epoch, and each
/// node sees each epoch's seqs strictly ascending (no tail loss here: that one moves seqs back).
#[test]
fn the_log_is_always_the_unended_history_and_every_node_sees_seqs_ascend() {
    use std::collections::BTreeMap;
    use switchboard_testkit::Rng;
    for seed in 0..20 {
        let mut d = Drive::new(seed);
        let mut rng = Rng::seeded(seed);
        let streams =
            [user("u1"), user("u2"), StreamKey::room("acme", "r"), StreamKey::tenant("acme")];
        d.bus.set_message_loss(Some(2), 200_000);
        d.bus.set_latency(Some(1), Duration::ZERO, Duration::from_millis(500));
        let mut seen: Vec<BTreeMap<(StreamKey, u64), u64>> = vec![BTreeMap::new(); 3];
        let mut delivered = 0;
        for step in 0..600u64 {
            let t = Duration::from_millis(step * 100);
            let node = rng.index(3);
            let s = &streams[rng.index(streams.len())];
            match rng.below(20) {
                0..=9 => {
                    let key = rng.chance(30).then(|| format!("k{}", rng.below(20)));
                    let keep = 1 + rng.below(6) as u32;
                    d.append_with(
                        t,
                        node,
                        s,
                        &format!("{seed}/{step}"),
                        key.as_deref(),
                        keep,
                        secs(5),
                    );
                }
                10..=12 => {
                    d.subscribe(t, node, s);
                }
                13 => d.unsubscribe(t, node, s),
                14 => {
                    let top = d.bus.top(s);
                    d.rotate(t, node, s, top.epoch);
                }
                15 => d.bus.restart_empty(),
                16 => d.bus.crash_node(node),
                _ => {
                    d.fetch(t, node, s, rng.below(5), 3);
                }
            }
            for (n, seen) in seen.iter_mut().enumerate() {
                for (stream, p, _) in messages(&d.drain(t, n)) {
                    delivered += 1;
                    if let Some(last) = seen.insert((stream.clone(), p.epoch), p.seq) {
                        assert!(
                            p.seq > last,
                            "seed {seed}: node {n} saw {stream:?} seq {} after {last}",
                            p.seq
                        );
                    }
                }
            }
            for s in &streams {
                let top = d.bus.top(s);
                let live: Vec<(u64, String)> = d
                    .bus
                    .history(s)
                    .iter()
                    .filter(|a| a.ended.is_none())
                    .map(|a| {
                        assert_eq!(
                            a.pos.epoch, top.epoch,
                            "seed {seed}: an unended entry of an old epoch"
                        );
                        (a.pos.seq, a.payload.to_string())
                    })
                    .collect();
                let log: Vec<(u64, String)> =
                    d.bus.log(s).into_iter().map(|e| (e.seq, e.payload.to_string())).collect();
                assert_eq!(log, live, "seed {seed} step {step}");
                assert!(
                    log.last().is_none_or(|(q, _)| *q == top.seq),
                    "the newest entry is the top"
                );
                assert!(log.windows(2).all(|w| w[1].0 == w[0].0 + 1), "contiguous");
            }
        }
        assert!(delivered > 100, "seed {seed}: the run delivered something ({delivered})");
    }
}

#[test]
fn leases_are_granted_up_to_the_limit_evict_the_oldest_or_refuse_and_expire() {
    use switchboard::{LeaseHolder, NodeId};
    let mut bus = ModelBus::new(3);
    let t0 = Instant::now();
    let user = StreamKey::user("acme", "alice");
    let holder = |n: &str, c: u64| LeaseHolder { node: NodeId::new(n), conn: c };
    let ttl = Duration::from_secs(30);
    let mut n = 0;
    let mut lease = |bus: &mut ModelBus, at: Instant, h: LeaseHolder, evict: bool| {
        n += 1;
        let op = OpId::from_raw(0, n);
        let user = user.clone();
        bus.submit(at, 0, BusOp::Lease { op, user, holder: h, limit: 2, ttl, evict_oldest: evict });
        let events: Vec<BusEvent> = std::iter::from_fn(|| bus.poll(at, 0)).collect();
        replies(&events).pop().expect("a reply").1
    };
    let granted = Ok(BusReply::Leased { granted: true, evicted: None });
    assert_eq!(lease(&mut bus, t0, holder("a", 1), false), granted);
    assert_eq!(lease(&mut bus, t0, holder("b", 1), false), granted);
    let refused = Ok(BusReply::Leased { granted: false, evicted: None });
    assert_eq!(lease(&mut bus, t0, holder("b", 2), false), refused);
    let evicted = Ok(BusReply::Leased { granted: true, evicted: Some(holder("a", 1)) });
    assert_eq!(lease(&mut bus, t0, holder("b", 2), true), evicted);
    assert_eq!(bus.leases(&user, t0), 2);
    // Without renewal they expire; a full set has room again.
    let later = t0 + ttl + Duration::from_secs(1);
    assert_eq!(bus.leases(&user, later), 0);
    assert_eq!(lease(&mut bus, later, holder("c", 1), false), granted);
}

#[test]
fn presence_sets_are_written_refreshed_read_and_expire_per_node() {
    use switchboard::{NodeId, PresenceHeld, UserId};
    let mut d = Drive::new(4);
    let lobby = StreamKey::room("acme", "lobby");
    let ttl = secs(6);
    d.subscribe(secs(0), 1, &lobby);
    d.drain(secs(0), 1);
    let entry = |u: &str| (UserId::from(u), Some(Arc::<str>::from(r#"{"n":1}"#)));
    let update =
        |d: &mut Drive, t: u64, node: &str, replace: bool, joins: &[&str], leaves: &[&str]| {
            let op = d.op();
            let signal: Arc<str> = Arc::from(format!("sig {node} {t}"));
            let update = BusOp::PresenceUpdate {
                op,
                scope: lobby.clone(),
                node: NodeId::from(node),
                replace,
                joins: joins.iter().map(|u| entry(u)).collect(),
                leaves: leaves.iter().map(|u| UserId::from(*u)).collect(),
                ttl,
                signal,
            };
            d.bus.submit(d.at(secs(t)), 0, update);
            d.reply(secs(t), 0, op)
        };
    assert_eq!(update(&mut d, 0, "a", true, &["alice", "bob"], &[]), Ok(BusReply::PresenceWritten));
    assert_eq!(update(&mut d, 1, "b", true, &["carol"], &[]), Ok(BusReply::PresenceWritten));
    assert_eq!(update(&mut d, 2, "a", false, &["dave"], &["bob"]), Ok(BusReply::PresenceWritten));
    // Every write's signal went to the scope's subscribers, after the write.
    let signals: Vec<String> = d
        .drain(secs(2), 1)
        .into_iter()
        .filter_map(|e| match e {
            BusEvent::Signal { payload, .. } => Some(payload.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(signals, ["sig a 0", "sig b 1", "sig a 2"]);
    let names = |set: &std::collections::BTreeSet<UserId>| -> Vec<String> {
        set.iter().map(ToString::to_string).collect()
    };
    assert_eq!(names(&d.bus.presence_members(&lobby, d.at(secs(2)))), ["alice", "carol", "dave"]);
    // A read returns each live set with its time left, within the limit.
    let op = d.op();
    d.bus.submit(d.at(secs(3)), 0, BusOp::PresenceRead { op, scope: lobby.clone(), limit: 10 });
    let Ok(BusReply::Presence { held, truncated: false }) = d.reply(secs(3), 0, op) else {
        panic!("a full read")
    };
    let expected_a =
        PresenceHeld { node: "a".into(), ttl: secs(5), users: vec![entry("alice"), entry("dave")] };
    assert_eq!(held[0], expected_a);
    assert_eq!((held[1].node.as_str(), held[1].ttl), ("b", secs(4)));
    let op = d.op();
    d.bus.submit(d.at(secs(3)), 0, BusOp::PresenceRead { op, scope: lobby.clone(), limit: 2 });
    let Ok(BusReply::Presence { held, truncated }) = d.reply(secs(3), 0, op) else { panic!() };
    assert!(truncated && held.iter().map(|h| h.users.len()).sum::<usize>() == 2);
    // A refresh extends the sets that exist and names the others.
    let op = d.op();
    let scopes =
        vec![(lobby.clone(), Arc::from("refresh a")), (StreamKey::tenant("acme"), Arc::from("x"))];
    d.bus.submit(d.at(secs(6)), 0, BusOp::PresenceRefresh { op, node: "a".into(), ttl, scopes });
    let missing = vec![StreamKey::tenant("acme")];
    assert_eq!(d.reply(secs(6), 0, op), Ok(BusReply::PresenceRefreshed { missing }));
    // b's set was not refreshed: it is gone 6 s after its write; a's lives on.
    assert_eq!(names(&d.bus.presence_members(&lobby, d.at(secs(7)))), ["alice", "dave"]);
    assert_eq!(d.bus.presence_nodes(&lobby, d.at(secs(11))), vec![NodeId::from("a")]);
    assert!(d.bus.presence_members(&lobby, d.at(secs(12))).is_empty());
    // Leaving the last user removes the set at once; an engine restart loses everything.
    assert_eq!(update(&mut d, 13, "a", false, &["erin"], &[]), Ok(BusReply::PresenceWritten));
    assert_eq!(update(&mut d, 13, "a", false, &[], &["erin"]), Ok(BusReply::PresenceWritten));
    assert!(d.bus.presence_nodes(&lobby, d.at(secs(13))).is_empty());
    assert_eq!(update(&mut d, 14, "b", false, &["fay"], &[]), Ok(BusReply::PresenceWritten));
    d.bus.restart_empty();
    assert!(d.bus.presence_members(&lobby, d.at(secs(14))).is_empty());
}

#[test]
fn signals_can_be_lost_on_purpose() {
    let mut d = Drive::new(5);
    let lobby = StreamKey::room("acme", "lobby");
    d.subscribe(secs(0), 1, &lobby);
    d.drain(secs(0), 1);
    d.bus.set_signal_loss(1_000_000);
    let signal = |p: &str| BusOp::Signal { stream: lobby.clone(), payload: Arc::from(p) };
    d.bus.submit(d.at(secs(1)), 0, signal("lost"));
    d.bus.set_signal_loss(0);
    d.bus.submit(d.at(secs(1)), 0, signal("kept"));
    let got: Vec<BusEvent> = d.drain(secs(1), 1);
    assert_eq!(got, vec![BusEvent::Signal { stream: lobby.clone(), payload: Arc::from("kept") }]);
    assert_eq!(d.bus.stats().signals_lost, 1);
}
