//! A hub on a virtual clock, and the small configuration and target helpers the integration
//! tests share.

use std::time::{Duration, Instant};

use switchboard::{Action, Config, ConnId, Envelope, EventKind, Heartbeat, Hub, Principal, Target};

use crate::frames::deliveries;

/// A hub driven on a virtual clock.
pub struct Sim {
    /// The hub under test.
    pub hub: Hub,
    /// The virtual clock's origin.
    pub start: Instant,
    /// The virtual clock.
    pub now: Instant,
}

impl Default for Sim {
    fn default() -> Self {
        Self::new(Config::default())
    }
}

impl Sim {
    /// A hub with this configuration, its clock at a fresh start instant.
    pub fn new(cfg: Config) -> Self {
        let start = Instant::now();
        Self { hub: Hub::new(cfg).expect("valid config"), start, now: start }
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

    /// Connects `(tenant, user)` with the default principal; see [`Sim::connect_as`].
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

/// Whole seconds.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Milliseconds.
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

/// `Target::User`.
pub fn user_target(tenant: &str, user: &str) -> Target {
    Target::User { tenant: tenant.into(), user: user.into() }
}

/// `Target::Thread`.
pub fn thread_target(tenant: &str, user: &str, thread: &str) -> Target {
    Target::Thread { tenant: tenant.into(), user: user.into(), thread: thread.into() }
}
