//! The binary's stop signals, as it runs: a real `switchboard` process and a real WebSocket
//! client. SIGTERM (what systemd, Docker and Kubernetes send) and SIGINT (Ctrl-C) both close
//! every connection with `server_shutdown` (4006) and end the process with status 0.

use libc::{SIGINT, SIGTERM};

mod procs;

use procs::{Node, NodeOpts, close_of, token};

async fn stops_gracefully_on(signal: libc::c_int) {
    let mut node = Node::start("single", None, &NodeOpts::default());
    let (mut c, _, _) = node.live(&token("acme", "alice", "free", &[])).await;
    node.signal(signal);
    let (code, reason, _) = close_of(&mut c).await;
    assert_eq!((code, reason.as_str()), (4006, "server_shutdown"), "signal {signal}");
    let status = node.wait_exit().expect("the process exits by itself");
    assert!(status.success(), "signal {signal}: exit status {status}\n{}", node.log_tail());
}

#[tokio::test]
async fn sigterm_closes_every_connection_with_server_shutdown_and_exits_cleanly() {
    stops_gracefully_on(SIGTERM).await;
}

#[tokio::test]
async fn sigint_closes_every_connection_with_server_shutdown_and_exits_cleanly() {
    stops_gracefully_on(SIGINT).await;
}
