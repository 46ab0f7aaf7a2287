//! Shared harness for the integration tests: a hub on a virtual clock, and helpers to read what
//! it asked for. Only the public API is used.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard::{
    Action, AuditEvent, AuditKind, CloseReason, Config, ConnId, Envelope, EventKind, Heartbeat,
    Hub, MetricEvent, Principal, Target,
};

/// A hub driven on a virtual clock.
pub struct Sim {
    pub hub: Hub,
    pub start: Instant,
    pub now: Instant,
}

impl Sim {
    pub fn new(cfg: Config) -> Self {
        let start = Instant::now();
        Self { hub: Hub::new(cfg).expect("valid config"), start, now: start }
    }

    pub fn default() -> Self {
        Self::new(Config::default())
    }

    /// Moves the virtual clock forward and runs due timers.
    pub fn advance(&mut self, d: Duration) -> Vec<Action> {
        self.now += d;
        self.hub.tick(self.now);
        self.drain()
    }

    /// Everything queued since the last drain.
    pub fn drain(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.hub.poll_action()).collect()
    }

    /// Connects a principal, drains, and checks that its first delivery is `connected`.
    pub fn connect_as(&mut self, principal: Principal) -> ConnId {
        let id = self.hub.connect(self.now, principal).expect("connect admitted");
        let actions = self.drain();
        let first = deliveries(&actions).into_iter().find(|(c, _)| *c == id);
        let (_, frame) = first.expect("a connected frame");
        assert_eq!(frame["type"], "connected");
        id
    }

    pub fn connect(&mut self, tenant: &str, user: &str) -> ConnId {
        self.connect_as(Principal::new(tenant, user))
    }

    /// Publishes an event to a user and returns the resulting actions.
    pub fn publish_to_user(&mut self, tenant: &str, user: &str, kind: EventKind) -> Vec<Action> {
        let env = Envelope::new(Target::User { tenant: tenant.into(), user: user.into() }, kind);
        self.hub.publish(self.now, env).expect("publish accepted");
        self.drain()
    }
}

/// Every `Deliver` as (connection, parsed JSON frame).
pub fn deliveries(actions: &[Action]) -> Vec<(ConnId, Value)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver { conn, frame } => {
                Some((*conn, serde_json::from_str(frame.as_str()).expect("frames are JSON")))
            }
            _ => None,
        })
        .collect()
}

/// The frames delivered to one connection.
pub fn frames_for(actions: &[Action], conn: ConnId) -> Vec<Value> {
    deliveries(actions).into_iter().filter(|(c, _)| *c == conn).map(|(_, f)| f).collect()
}

/// Every `Close` as (connection, reason).
pub fn closes(actions: &[Action]) -> Vec<(ConnId, CloseReason)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Close { conn, reason } => Some((*conn, *reason)),
            _ => None,
        })
        .collect()
}

/// Every `Ping`.
pub fn pings(actions: &[Action]) -> Vec<ConnId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Ping { conn } => Some(*conn),
            _ => None,
        })
        .collect()
}

/// Every audit kind, in order.
pub fn audits(actions: &[Action]) -> Vec<AuditKind> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Audit(e) => Some(e.kind),
            _ => None,
        })
        .collect()
}

/// Every audit event, in order.
pub fn audit_events(actions: &[Action]) -> Vec<AuditEvent> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Audit(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// Every metric event, in order.
pub fn metrics(actions: &[Action]) -> Vec<MetricEvent> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Metric(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// How many `Inbound` actions there are.
pub fn inbound_count(actions: &[Action]) -> usize {
    actions.iter().filter(|a| matches!(a, Action::Inbound(_))).count()
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// A config whose heartbeats stay out of the way of session, retention and limit tests.
pub fn quiet() -> Config {
    Config {
        heartbeat: Heartbeat { interval: secs(3600), timeout: secs(600) },
        ..Config::default()
    }
}

pub fn user_target(tenant: &str, user: &str) -> Target {
    Target::User { tenant: tenant.into(), user: user.into() }
}

pub fn thread_target(tenant: &str, user: &str, thread: &str) -> Target {
    Target::Thread { tenant: tenant.into(), user: user.into(), thread: thread.into() }
}

/// A small deterministic generator (xorshift64*), so that randomized tests are reproducible.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
