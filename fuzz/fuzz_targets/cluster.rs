//! Cluster mode under hub operations and bus events together: 2–3 clustered hubs over the test
//! kit's model bus (connects, disconnects, joins, leaves, publishes, resumes and raw client bytes
//! on any node, the clock moving), bus faults (message loss, latency and holds, failed and
//! timed-out operations, the bus or one node's link down and up, restart-empty, tail loss, a node
//! crashing and coming back empty) and driver bugs (`bus_message` and `bus_reply` with any
//! stream, position, op id, reply and payload). After every step `ClusterRunner` checks every
//! node's invariants, that every frame is JSON and reaches only an open connection entitled to
//! it, and that a connection's seqs per stream and epoch only grow until a `resync`/`resumed`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_testkit::fuzz::{ClusterCase, ClusterRunner};

fuzz_target!(|case: ClusterCase| {
    let mut runner = ClusterRunner::new(&case.knobs);
    for (i, step) in case.steps.iter().enumerate() {
        if let Err(e) = runner.apply(step) {
            panic!("step {i} of {case:?}:\n{e}");
        }
    }
});
