//! N clustered hubs on one virtual clock over one [`ModelBus`] (DESIGN §11): the drive loop a
//! real driver runs, done in memory and deterministically.
//!
//! [`Cluster::pump`] does what a driver does until nothing moves: every [`Action::Bus`] a hub
//! emits goes to [`ModelBus::submit`]; every [`BusEvent`] due for a node goes back into its hub
//! ([`Hub::bus_message`], [`Hub::bus_reply`]); a change of the node's reachability
//! ([`ModelBus::reachable`]) is told to its hub ([`Hub::bus_down`], [`Hub::bus_up`]) before any
//! other input. Every other action is handed back to the caller, tagged with its node.
//! [`Cluster::advance`] moves the clock forward, stopping at every instant a hub's timer
//! ([`Hub::poll_timeout`]) or a delayed bus delivery ([`ModelBus::next_due`]) is due.

use std::time::{Duration, Instant};

use switchboard::{Action, ClusterConfig, Config, Hub};

use crate::bus::{BusEvent, ModelBus};

/// How many rounds [`Cluster::pump`] runs at one instant before it decides the nodes and the bus
/// are feeding each other forever (a bug in the hub or in this harness).
const MAX_ROUNDS: usize = 1_000_000;

/// One node: its hub (or `None` while crashed), its configuration, and whether its hub was last
/// told the bus is reachable.
struct Node {
    hub: Option<Hub>,
    cfg: Config,
    told_up: bool,
}

/// N hubs over one model bus, on one virtual clock.
pub struct Cluster {
    /// The shared bus; call its fault methods directly (the next pump tells the hubs).
    pub bus: ModelBus,
    /// The virtual clock's origin.
    pub start: Instant,
    /// The virtual clock.
    pub now: Instant,
    nodes: Vec<Node>,
}

impl Cluster {
    /// `n` nodes named `node-0`, `node-1`, …; `cfg(i)` gives node `i`'s configuration, whose
    /// `cluster` is set to [`ClusterConfig::new`] of that name unless `cfg` set one.
    ///
    /// # Panics
    /// If a configuration is invalid (a bug in the test).
    pub fn new(n: usize, seed: u64, mut cfg: impl FnMut(usize) -> Config) -> Self {
        let start = Instant::now();
        let nodes = (0..n)
            .map(|i| {
                let mut c = cfg(i);
                if c.cluster.is_none() {
                    c.cluster = Some(ClusterConfig::new(format!("node-{i}").as_str()));
                }
                let hub = Hub::new(c.clone()).expect("valid config");
                Node { hub: Some(hub), cfg: c, told_up: true }
            })
            .collect();
        Self { bus: ModelBus::new(seed), start, now: start, nodes }
    }

    /// How many nodes (crashed ones included).
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s hub, or `None` while it is crashed (or `i` is out of range). A change of the
    /// node's reachability since it was last told is told to it first, so that a call made right
    /// after a fault sees it.
    pub fn hub(&mut self, i: usize) -> Option<&mut Hub> {
        self.tell_reachability(i);
        self.nodes.get_mut(i).and_then(|n| n.hub.as_mut())
    }

    /// Tells node `i`'s hub whether it can reach the bus, if that changed since it was last told;
    /// returns whether it told it something.
    fn tell_reachability(&mut self, i: usize) -> bool {
        let now = self.now;
        let up = self.bus.reachable(i);
        let Some(Node { hub: Some(hub), told_up, .. }) = self.nodes.get_mut(i) else {
            return false;
        };
        if up == *told_up {
            return false;
        }
        if up {
            hub.bus_up(now);
        } else {
            hub.bus_down(now);
        }
        *told_up = up;
        true
    }

    /// Node `i`'s hub, read-only.
    #[must_use]
    pub fn hub_ref(&self, i: usize) -> Option<&Hub> {
        self.nodes.get(i).and_then(|n| n.hub.as_ref())
    }

    /// Whether node `i` is running.
    #[must_use]
    pub fn is_alive(&self, i: usize) -> bool {
        self.hub_ref(i).is_some()
    }

    /// Node `i` dies: its hub's state is dropped, and the bus forgets its subscriptions and
    /// queued events. Its clients' connections are gone with it (the caller reconnects them
    /// elsewhere). Returns false if it was not running.
    pub fn crash(&mut self, i: usize) -> bool {
        let Some(node) = self.nodes.get_mut(i) else { return false };
        if node.hub.take().is_none() {
            return false;
        }
        self.bus.crash_node(i);
        true
    }

    /// Node `i` starts again, empty, with its configuration. Returns false if it was running.
    ///
    /// # Panics
    /// Never for a configuration that was valid at [`Cluster::new`].
    pub fn restart(&mut self, i: usize) -> bool {
        let Some(node) = self.nodes.get_mut(i) else { return false };
        if node.hub.is_some() {
            return false;
        }
        node.hub = Some(Hub::new(node.cfg.clone()).expect("valid config"));
        // A new hub assumes the bus is up; the next pump tells it otherwise.
        node.told_up = true;
        true
    }

    /// Runs the drive loop at the current instant until no hub has an action and no bus event
    /// is due; returns every non-bus action, tagged with its node, in the order produced.
    ///
    /// # Panics
    /// If the nodes and the bus still feed each other after a million rounds (a livelock).
    pub fn pump(&mut self) -> Vec<(usize, Action)> {
        let mut out = Vec::new();
        let now = self.now;
        for round in 0.. {
            assert!(round < MAX_ROUNDS, "the cluster did not settle at {:?}", now - self.start);
            let mut moved = false;
            for i in 0..self.nodes.len() {
                moved |= self.tell_reachability(i);
                let Some(hub) = self.nodes[i].hub.as_mut() else { continue };
                if hub.poll_timeout().is_some_and(|at| at <= now) {
                    hub.tick(now);
                }
                while let Some(action) = hub.poll_action() {
                    moved = true;
                    match action {
                        Action::Bus(op) => self.bus.submit(now, i, *op),
                        other => out.push((i, other)),
                    }
                }
                while let Some(event) = self.bus.poll(now, i) {
                    moved = true;
                    match event {
                        BusEvent::Message { stream, pos, payload } => {
                            hub.bus_message(now, &stream, pos, &payload);
                        }
                        BusEvent::Signal { stream, payload } => {
                            hub.bus_signal(now, &stream, &payload);
                        }
                        BusEvent::Reply { op, reply } => hub.bus_reply(now, op, reply),
                    }
                }
            }
            if !moved {
                break;
            }
        }
        out
    }

    /// The earliest instant after now at which a running node has a timer or a bus delivery due.
    #[must_use]
    pub fn next_wake(&self) -> Option<Instant> {
        (0..self.nodes.len())
            .filter_map(|i| {
                let hub = self.nodes[i].hub.as_ref()?;
                [hub.poll_timeout(), self.bus.next_due(i)].into_iter().flatten().min()
            })
            .min()
    }

    /// Moves the clock forward by `d`, stopping at every instant something is due on the way
    /// (and at the end) to run the drive loop; returns every non-bus action, tagged with its
    /// node.
    pub fn advance(&mut self, d: Duration) -> Vec<(usize, Action)> {
        let end = self.now + d;
        let mut out = self.pump();
        while let Some(at) = self.next_wake().filter(|at| *at <= end) {
            // A deadline at or before now was served by the pump just run; never go back.
            self.now = self.now.max(at);
            self.bus.advance(self.now);
            out.extend(self.pump());
            // After a pump every timer due now has run and every due event was fed: a wake at
            // or before now would make this loop spin, and is a bug worth stopping for.
            assert!(
                self.next_wake().is_none_or(|next| next > self.now),
                "a node stays due at {:?} after the drive loop ran",
                self.now - self.start
            );
        }
        self.now = self.now.max(end);
        self.bus.advance(self.now);
        out.extend(self.pump());
        out
    }
}

#[cfg(test)]
mod tests {
    use switchboard::{
        Action, BusFailure, ConnId, Envelope, EventKind, Principal, PublishError, PublishOutcome,
        Target,
    };

    use super::Cluster;
    use crate::frames::deliveries;
    use crate::sim::{quiet, secs};

    /// Connects alice on node `i` and returns her connection once `connected` was delivered.
    fn connect(c: &mut Cluster, i: usize) -> ConnId {
        let now = c.now;
        let id = c
            .hub(i)
            .expect("alive")
            .connect(now, Principal::new("acme", "alice"))
            .expect("admitted");
        let out = c.pump();
        let mine: Vec<Action> = out.into_iter().filter(|(n, _)| *n == i).map(|(_, a)| a).collect();
        let first = deliveries(&mine).into_iter().find(|(conn, _)| *conn == id);
        assert_eq!(first.expect("a connected frame").1["type"], "connected");
        id
    }

    fn publish(c: &mut Cluster, i: usize) {
        let now = c.now;
        let env = Envelope::new(Target::user("acme", "alice"), EventKind::AgentStarted);
        let published = c.hub(i).expect("alive").publish(now, env).expect("accepted");
        assert!(published.op.is_some(), "a clustered publish issues an append");
    }

    /// The `agent_started` frames each node delivered to each connection, as `(node, conn, seq)`.
    fn events(out: &[(usize, Action)]) -> Vec<(usize, ConnId, u64)> {
        out.iter()
            .flat_map(|(n, a)| {
                deliveries(std::slice::from_ref(a)).into_iter().map(move |(conn, f)| (*n, conn, f))
            })
            .filter(|(_, _, f)| f["type"] == "agent_started")
            .map(|(n, conn, f)| (n, conn, f["seq"].as_u64().expect("a seq")))
            .collect()
    }

    fn outcomes(out: &[(usize, Action)]) -> Vec<(usize, PublishOutcome)> {
        out.iter()
            .filter_map(|(n, a)| match a {
                Action::Published { outcome, .. } => Some((*n, (**outcome).clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_publish_on_one_node_reaches_the_connections_on_the_others_once() {
        let mut c = Cluster::new(3, 1, |_| quiet());
        let a = connect(&mut c, 0);
        let b = connect(&mut c, 2);
        publish(&mut c, 1);
        publish(&mut c, 0);
        let out = c.pump();
        let mut got = events(&out);
        got.sort_by_key(|(n, _, s)| (*n, *s));
        assert_eq!(got, vec![(0, a, 1), (0, a, 2), (2, b, 1), (2, b, 2)]);
        let appended: Vec<usize> = outcomes(&out)
            .into_iter()
            .filter(|(_, o)| matches!(o, PublishOutcome::Appended { .. }))
            .map(|(n, _)| n)
            .collect();
        assert_eq!(appended, vec![0, 1], "each publisher told its outcome (node 0 pumped first)");
        let stream = switchboard::StreamKey::user("acme", "alice");
        assert_eq!(c.bus.history(&stream).len(), 2);
        assert_eq!(c.bus.subscribers(&stream), vec![0, 2]);
    }

    #[test]
    fn the_hubs_are_told_when_the_bus_goes_down_and_comes_back() {
        let mut c = Cluster::new(2, 2, |_| quiet());
        let a = connect(&mut c, 1);
        c.bus.go_down();
        let ops_before = c.bus.stats().ops;
        let now = c.now;
        let env = Envelope::new(Target::user("acme", "alice"), EventKind::AgentStarted);
        let refused = c.hub(0).expect("alive").publish(now, env);
        assert_eq!(refused.err(), Some(PublishError::Bus(BusFailure::Down)), "fails fast");
        let out = c.pump();
        assert!(events(&out).is_empty() && outcomes(&out).is_empty());
        assert_eq!(c.bus.stats().ops, ops_before, "nothing reached the bus");
        c.bus.come_up();
        publish(&mut c, 0);
        let out = c.advance(secs(1));
        assert_eq!(events(&out), vec![(1, a, 1)]);
    }

    #[test]
    fn a_crashed_node_is_forgotten_by_the_bus_and_restarts_empty() {
        let mut c = Cluster::new(2, 3, |_| quiet());
        connect(&mut c, 0);
        let b = connect(&mut c, 1);
        assert!(c.crash(0));
        assert!(!c.crash(0) && !c.is_alive(0));
        let stream = switchboard::StreamKey::user("acme", "alice");
        assert_eq!(c.bus.subscribers(&stream), vec![1]);
        publish(&mut c, 1);
        assert_eq!(events(&c.pump()), vec![(1, b, 1)]);
        assert!(c.restart(0) && !c.restart(0));
        assert_eq!(c.hub_ref(0).expect("alive").stats().connections_opened, 0);
        let a = connect(&mut c, 0);
        publish(&mut c, 0);
        let mut got = events(&c.pump());
        got.sort();
        assert_eq!(got, vec![(0, a, 2), (1, b, 2)]);
    }

    #[test]
    fn advance_runs_timers_and_late_deliveries_on_the_way() {
        let mut c = Cluster::new(2, 4, |_| quiet());
        let a = connect(&mut c, 1);
        c.bus.set_latency(Some(1), secs(2), secs(2));
        publish(&mut c, 0);
        assert!(events(&c.advance(secs(1))).is_empty(), "not due before 2 s");
        assert_eq!(events(&c.advance(secs(1))), vec![(1, a, 1)]);
        assert_eq!(c.now - c.start, secs(2));
    }

    #[test]
    fn a_node_that_lost_live_messages_repairs_them_from_the_log() {
        let mut c = Cluster::new(2, 5, |_| quiet());
        let a = connect(&mut c, 1);
        c.bus.set_message_loss(Some(1), 1_000_000);
        publish(&mut c, 0);
        publish(&mut c, 0);
        assert!(events(&c.pump()).is_empty());
        c.bus.set_message_loss(Some(1), 0);
        publish(&mut c, 0);
        // The third message shows a gap; the node fetches the first two before it.
        assert_eq!(events(&c.advance(secs(1))), vec![(1, a, 1), (1, a, 2), (1, a, 3)]);
    }

    #[test]
    fn a_lost_last_message_is_found_by_the_periodic_top_check_while_advancing() {
        let mut c = Cluster::new(2, 6, |_| quiet());
        let a = connect(&mut c, 1);
        c.bus.set_message_loss(Some(1), 1_000_000);
        publish(&mut c, 0);
        assert!(events(&c.advance(secs(1))).is_empty(), "lost, nothing after it shows the gap");
        // The check runs every 30 s ± 50 %: within 45 s it has run at least once.
        assert_eq!(events(&c.advance(secs(45))), vec![(1, a, 1)]);
    }

    #[test]
    fn a_node_cut_off_from_the_bus_is_told_and_catches_up_when_back() {
        let mut c = Cluster::new(2, 7, |_| quiet());
        let a = connect(&mut c, 1);
        c.bus.disconnect(1);
        publish(&mut c, 0);
        let out = c.pump();
        assert!(events(&out).is_empty());
        assert!(matches!(outcomes(&out).as_slice(), [(0, PublishOutcome::Appended { .. })]));
        c.bus.reconnect(1);
        // Back up, the node checks its streams' tops and fetches what it missed.
        assert_eq!(events(&c.advance(secs(1))), vec![(1, a, 1)]);
    }
}
