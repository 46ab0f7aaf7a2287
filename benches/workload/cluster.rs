//! Cluster-mode setups shared by `hub.rs` and `profile.rs`: a clustered hub driven by hand, the
//! way a driver over a perfect bus would drive it, so that the measured step is only the hub's.
//!
//! The driver here confirms every subscription at [`EPOCH`] with nothing in the log yet, grants
//! every lease, answers every append at once, and keeps the payloads of the appends it saw (the
//! bytes a real bus would carry to every node). Nothing else a node asks for (top checks, renewals,
//! fetches) happens without `tick`, which the workloads never call.

use std::sync::Arc;
use std::time::Instant;

use switchboard::{
    Action, BusOp, BusReply, ClusterConfig, Config, Envelope, Hub, StreamKey, StreamPos,
};

/// The epoch the bus gives every stream.
pub const EPOCH: u64 = 7;

/// `cfg` as one node of a cluster, without the periodic top check (nothing would answer it).
pub fn clustered(mut cfg: Config) -> Config {
    let mut cluster = ClusterConfig::new("bench-node");
    cluster.top_check_interval = None;
    cfg.cluster = Some(cluster);
    cfg
}

/// Answers the hub's bus operations until it has none left (subscriptions confirmed at
/// `(EPOCH, 0)`, leases granted, appends acknowledged at `(EPOCH, 1)`); every other action is
/// dropped. Returns the appends, in order: each one's stream and payload.
pub fn settle(hub: &mut Hub, now: Instant) -> Vec<(StreamKey, Arc<str>)> {
    let mut appends = Vec::new();
    while let Some(action) = hub.poll_action() {
        let Action::Bus(op) = action else { continue };
        match *op {
            BusOp::Subscribe { op, .. } => {
                let top = StreamPos { epoch: EPOCH, seq: 0 };
                hub.bus_reply(now, op, Ok(BusReply::Subscribed { top }));
            }
            BusOp::Lease { op, .. } => {
                hub.bus_reply(now, op, Ok(BusReply::Leased { granted: true, evicted: None }));
            }
            BusOp::Append { op, stream, payload, .. } => {
                let pos = StreamPos { epoch: EPOCH, seq: 1 };
                hub.bus_reply(now, op, Ok(BusReply::Appended { pos }));
                appends.push((stream, payload));
            }
            _ => {}
        }
    }
    appends
}

/// The bus payload of `envelope` as published by `hub` (a clustered hub), with its stream: what
/// every subscribed node receives. The publish is acknowledged and its outcome drained.
///
/// # Panics
/// If the hub is not clustered or the publish fails (a bug in the workload).
pub fn bus_payload(hub: &mut Hub, now: Instant, envelope: Envelope) -> (StreamKey, Arc<str>) {
    let published = hub.publish(now, envelope).expect("the workload's publish is valid");
    assert!(published.op.is_some(), "a clustered publish issues an append");
    let mut appends = settle(hub, now);
    assert_eq!(appends.len(), 1, "one publish, one append");
    appends.pop().expect("one append")
}
