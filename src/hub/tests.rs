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
