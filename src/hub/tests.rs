//! Unit tests of the hub's own dispatching (timers, wake reasons, snapshots).

use super::*;

#[test]
fn next_timeout_names_the_component_that_wakes_the_hub() {
    let mut hub = Hub::new(Config::default()).expect("default config");
    let t0 = Instant::now();
    assert_eq!(hub.next_timeout(), None);
    let conn = hub.connect(t0, Principal::new("acme", "alice")).expect("admitted");
    assert_eq!(hub.next_timeout(), Some((t0, WakeReason::Drain)));
    while hub.poll_action().is_some() {}
    let heartbeat = t0 + Config::default().heartbeat.interval;
    assert_eq!(hub.next_timeout(), Some((heartbeat, WakeReason::Connection(conn))));
    assert_eq!(hub.poll_timeout(), Some(heartbeat));
    hub.disconnect(t0, conn, DisconnectReason::Clean).expect("open");
    while hub.poll_action().is_some() {}
    let retires = t0 + Config::default().user_retention;
    assert_eq!(hub.next_timeout(), Some((retires, WakeReason::UserRetention)));
    assert_eq!(hub.stats().users_detached, 1);
    assert_eq!(hub.stats().connections_active, 0);
    hub.tick(retires);
    assert_eq!(hub.stats().users_detached, 0);
    assert_eq!(hub.stats().users_retired, 1);
    assert_eq!(hub.next_timeout().map(|(_, why)| why), Some(WakeReason::Drain));
}

#[test]
fn a_snapshot_due_with_a_connection_timer_sees_what_that_timer_did() {
    use crate::action::MetricEvent;
    let mut cfg = Config::default();
    let (interval, timeout) = (cfg.heartbeat.interval, cfg.heartbeat.timeout);
    cfg.snapshot_interval = Some(interval + timeout);
    let mut hub = Hub::new(cfg).expect("valid config");
    let t0 = Instant::now();
    hub.connect(t0, Principal::new("acme", "alice")).expect("admitted");
    while hub.poll_action().is_some() {}
    hub.tick(t0 + interval); // the ping, never answered
    while hub.poll_action().is_some() {}
    let at = t0 + interval + timeout;
    assert_eq!(hub.next_timeout().map(|(t, _)| t), Some(at));
    hub.tick(at);
    let snapshots: Vec<HubStats> = std::iter::from_fn(|| hub.poll_action())
        .filter_map(|a| match a {
            Action::Metric(m) => match *m {
                MetricEvent::Snapshot(s) => Some(*s),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(snapshots.len(), 1);
    assert_eq!(snapshots[0].connections_active, 0);
    assert_eq!(snapshots[0].closed_by.heartbeat_timeout, 1);
    assert_eq!(hub.next_timeout(), Some((at + interval + timeout, WakeReason::Snapshot)));
}

/// A room fan-out where some members cannot take the frame through the fast lane (behind for a
/// thinking frame, then owing a `skipped` notice): the first loop stops at the first of them and
/// the second carries on, so every member still gets its frames in member order, each notice
/// right before its frame, and the members the lane took share the one frame.
#[test]
fn a_room_fan_out_past_members_off_the_lane_keeps_member_order() {
    use crate::envelope::{Envelope, EventKind, Target};
    let cfg = Config { max_inflight_bytes: 5_000, ..Config::default() };
    let mut hub = Hub::new(cfg).expect("valid config");
    let now = Instant::now();
    let members: Vec<ConnId> = (0..8)
        .map(|i| {
            let id = hub.connect(now, Principal::new("acme", format!("m{i}").as_str())).unwrap();
            assert!(hub.join(now, id, "lobby").unwrap());
            id
        })
        .collect();
    while hub.poll_action().is_some() {}
    let room = || Target::Room { tenant: "acme".into(), room: "lobby".into() };
    let drain = |hub: &mut Hub| {
        std::iter::from_fn(|| hub.poll_action())
            .filter_map(|a| match a {
                Action::Deliver { conn, frame } => Some((conn, frame)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // Members 2 and 5 are left with more than `max_inflight_bytes` unwritten; the others
    // confirm theirs.
    let big = Envelope::new(room(), EventKind::AgentStarted)
        .data(serde_json::json!({ "pad": "x".repeat(6_000) }));
    let published = hub.publish(now, big).unwrap();
    assert_eq!(published.delivered, 8);
    drain(&mut hub);
    let behind = [members[2], members[5]];
    for &id in members.iter().filter(|id| !behind.contains(id)) {
        hub.written(now, id, usize::MAX >> 1).unwrap();
    }
    // A thinking frame: skipped for the two behind, the others (through the lane) in member
    // order.
    let thinking = hub.publish(now, Envelope::new(room(), EventKind::AgentThinking)).unwrap();
    assert_eq!((thinking.delivered, thinking.skipped), (6, 2));
    let got = drain(&mut hub);
    let took: Vec<ConnId> = got.iter().map(|(c, _)| *c).collect();
    let live: Vec<ConnId> = members.iter().copied().filter(|id| !behind.contains(id)).collect();
    assert_eq!(took, live);
    assert!(got.iter().all(|(_, f)| Frame::ptr_eq(f, &got[0].1)));
    // A critical frame: every member, the two behind after their `skipped` notice.
    let completed = hub.publish(now, Envelope::new(room(), EventKind::AgentCompleted)).unwrap();
    assert_eq!(completed.delivered, 8);
    let got = drain(&mut hub);
    let mut expected = Vec::new();
    for &id in &members {
        if behind.contains(&id) {
            expected.push((id, true));
        }
        expected.push((id, false));
    }
    let seen: Vec<(ConnId, bool)> =
        got.iter().map(|(c, f)| (*c, f.as_str().contains(r#""type":"skipped""#))).collect();
    assert_eq!(seen, expected);
    let event = got.iter().find(|(_, f)| !f.as_str().contains("skipped")).unwrap();
    let events = got.iter().filter(|(_, f)| Frame::ptr_eq(f, &event.1)).count();
    assert_eq!(events, 8);
}

/// The meters' one-second bucket is recomputed only when a call's time reaches the end of the
/// current one, and is then what counting from the first call gives: whole seconds elapsed.
#[test]
fn the_meter_clock_counts_whole_seconds_from_the_first_call() {
    let mut hub = Hub::new(Config::default()).expect("default config");
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    for (at, bucket) in [
        (ms(0), 0),
        (ms(999), 0),
        (ms(1000), 1),
        (ms(1001), 1),
        (ms(500), 1), // earlier than the last call: the clock does not go back
        (ms(2999), 2),
        (ms(3000), 3),
        (ms(60_250), 60),
    ] {
        hub.clock(t0 + at);
        assert_eq!(hub.flow.clock.bucket, bucket, "at {at:?}");
    }
}
