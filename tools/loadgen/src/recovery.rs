//! The recovery test (`--recovery`): what a client loses or receives twice when the node it is
//! connected to dies mid-stream and it moves to another node of the cluster.
//!
//! Every client connects to the first `--addr` (node A). Publishing runs through another node
//! (`--publish-via`, default the second `--addr`, node B) at `--rate` publishes per second for
//! `--duration` seconds, alternating a tenant broadcast and a publish to one user; each payload
//! carries the publish's number `n`. `--kill-after` seconds into it, the process `--kill-pid`
//! (node A, named by the script that started it) gets SIGKILL. Its clients see their connection
//! end and reconnect to the other nodes (round-robin over every `--addr` but the first):
//!
//! - switchboard: with `resume` and, per stream (`u`, `t`), the epoch and seq of the last event
//!   received (or of the `connected` frame when none came), as README's clients do;
//! - Socket.IO: with the session id (`pid`) and the offset of the last event received when the
//!   server gave them (connection-state recovery, the streams adapter), else a plain reconnect.
//!
//! The ground truth is the publisher's record of the publishes answered 200. For each client,
//! **lost** counts those addressed to it (its user or its tenant) that it never received,
//! **duplicated** counts receptions beyond the first of one publish, and **unexpected** counts
//! receptions of publishes that were not answered 200 (a failure reported to the publisher
//! although the message went out). Publishing starts when every client is live, and the clients
//! are closed only after publishing ended and every client that lost its node has reconnected
//! and been quiet for a drain period, so a message still on its way is not counted as lost.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};

use crate::cli::{Cli, ServerKind};
use crate::publish::HttpConn;
use crate::run::fmt_opt;
use crate::ws::Ws;

/// What the clients and the publisher share.
struct Shared {
    kind: ServerKind,
    /// Clients live on node A (first connection).
    live: AtomicUsize,
    /// Clients whose first connection ended (node A died under them).
    disconnected: AtomicUsize,
    /// Clients live again on another node.
    reconnected: AtomicUsize,
    /// Microseconds from the kill to each reconnected client's live moment.
    reconnect_us: Mutex<Vec<u64>>,
    /// When node A was killed, if it was.
    killed_at: Mutex<Option<Instant>>,
    /// Event frames received, ever (to see when the drain is quiet).
    received: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Reconnects in flight at once.
    gate: Arc<Semaphore>,
}

impl Shared {
    pub(crate) fn fail(&self, why: String) {
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(why);
        }
    }
}

/// One client's record.
#[derive(Default)]
struct Record {
    /// Receptions per publish number.
    seen: HashMap<u64, u32>,
    /// switchboard: the last (epoch, seq) per stream, `u` and `t`.
    positions: HashMap<String, (u64, u64)>,
    /// Socket.IO: the session id and the offset of the last event.
    sio_pid: Option<String>,
    sio_offset: Option<String>,
    /// Whether the reconnect was reported recovered (switchboard's `resumed`, Socket.IO's
    /// session id given back); `None` without a reconnect.
    recovered: Option<bool>,
    /// switchboard `resync` frames (the cluster says messages may be missing).
    resyncs: u64,
    /// Connections made after the first.
    reconnects: u32,
}

/// How a connection ended.
enum Ended {
    /// The run is over.
    Stopped,
    /// The server went away (or closed on us).
    Lost(String),
}

/// Runs the recovery test; prints a summary and one `RESULT` line.
pub(crate) async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    if cli.addrs.len() < 2 {
        return Err("--recovery needs two --addr at least: node A first, then the others".into());
    }
    let Some(rate) = cli.rate.filter(|r| *r > 0.0 && r.is_finite()) else {
        return Err("--recovery needs a positive --rate".into());
    };
    let via = cli.addrs[cli.publish_via.unwrap_or(1)];
    let node_a = cli.addrs[0];
    let others: Vec<SocketAddr> = cli.addrs[1..].to_vec();
    let n = cli.clients;
    let users = n.div_ceil(cli.conns_per_user);
    let tenants = cli.tenants.min(users);
    let user_of = |c: usize| c / cli.conns_per_user;

    let keys = switchboard_server::auth::Keys::new(cli.jwt_secret.as_bytes())?;
    let tokens: Vec<Arc<str>> = (0..users)
        .map(|u| {
            let claims = switchboard_server::auth::Claims {
                tier: Some("enterprise".into()),
                ..switchboard_server::auth::Claims::new(
                    &format!("t{}", u % tenants),
                    &format!("u{u}"),
                    Duration::from_secs(3600),
                )
            };
            Arc::from(keys.sign(&claims))
        })
        .collect();

    let shared = Arc::new(Shared {
        kind: cli.server,
        live: AtomicUsize::new(0),
        disconnected: AtomicUsize::new(0),
        reconnected: AtomicUsize::new(0),
        reconnect_us: Mutex::new(Vec::new()),
        killed_at: Mutex::new(None),
        received: AtomicU64::new(0),
        first_error: Mutex::new(None),
        gate: Arc::new(Semaphore::new(cli.connect_concurrency.max(1))),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut clients = Vec::with_capacity(n);
    let connect_started = Instant::now();
    for c in 0..n {
        let shared = shared.clone();
        let token = tokens[user_of(c)].clone();
        let stop = stop_rx.clone();
        let next = others[c % others.len()];
        clients.push(tokio::spawn(async move {
            let mut record = Record::default();
            client(&shared, c as u64, &token, node_a, next, &mut record, stop).await;
            record
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while shared.live.load(Relaxed) < n {
        if Instant::now() > deadline || shared.disconnected.load(Relaxed) > 0 {
            let why = shared.first_error.lock().unwrap().clone().unwrap_or_default();
            return Err(format!(
                "only {} of {n} clients live on node A; first error: {why}",
                shared.live.load(Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "recovery, {:?}: {n} clients ({users} users of {}, {tenants} tenants) live on node A {node_a} in {:.1} s",
        cli.server,
        cli.conns_per_user,
        connect_started.elapsed().as_secs_f64()
    );

    // Publish at a fixed rate through node B; kill node A on the way.
    let ok = Arc::new(Mutex::new(Vec::<u64>::new()));
    let failed = Arc::new(Mutex::new(Vec::<u64>::new()));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(cli.duration);
    let next = Arc::new(AtomicU64::new(0));
    let publishers = cli.publishers.clamp(1, 8);
    let mut tasks = Vec::new();
    for i in 0..publishers {
        let (ok, failed, next, shared) = (ok.clone(), failed.clone(), next.clone(), shared.clone());
        let admin = cli.admin_key.clone();
        let interval = Duration::from_secs_f64(publishers as f64 / rate);
        let first = start + interval.mul_f64(i as f64 / publishers as f64);
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<HttpConn> = None;
            let mut due = first;
            while due < end {
                tokio::time::sleep_until(due.into()).await;
                due += interval;
                let k = next.fetch_add(1, Relaxed);
                let body = publish_body(k, users, tenants, start);
                let mut answer = match conn.as_mut() {
                    Some(c) => c.post(&via, "/publish", &admin, &body).await,
                    None => Err(std::io::ErrorKind::NotConnected.into()),
                };
                if answer.is_err() {
                    answer = match HttpConn::connect(via).await {
                        Ok(c) => conn.insert(c).post(&via, "/publish", &admin, &body).await,
                        Err(e) => Err(e),
                    };
                }
                match answer {
                    Ok((200, _)) => ok.lock().unwrap().push(k),
                    Ok((status, reply)) => {
                        failed.lock().unwrap().push(k);
                        shared.fail(format!(
                            "publish {k} answered {status}: {}",
                            String::from_utf8_lossy(&reply)
                        ));
                    }
                    Err(e) => {
                        failed.lock().unwrap().push(k);
                        shared.fail(format!("publish {k} failed: {e}"));
                        conn = None;
                    }
                }
            }
        }));
    }
    let signal = match cli.kill_signal.to_ascii_uppercase().trim_start_matches("SIG") {
        "KILL" => libc::SIGKILL,
        "TERM" => libc::SIGTERM,
        other => return Err(format!("--kill-signal {other}: KILL or TERM").into()),
    };
    let kill_at = start + Duration::from_secs_f64(cli.kill_after);
    if let Some(pid) = cli.kill_pid {
        tokio::time::sleep_until(kill_at.into()).await;
        *shared.killed_at.lock().unwrap() = Some(Instant::now());
        // SAFETY: kill has no memory preconditions; the pid is the one the caller named.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            return Err(format!("kill {pid}: {}", std::io::Error::last_os_error()).into());
        }
    }
    for t in tasks {
        t.await?;
    }
    // Drain: every client that lost node A back, and no event for `--settle` seconds.
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    let quiet = Duration::from_secs_f64(cli.settle.max(1.0));
    let mut last = (shared.received.load(Relaxed), Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = shared.received.load(Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
        let back = shared.reconnected.load(Relaxed) >= shared.disconnected.load(Relaxed);
        if (back && last.1.elapsed() >= quiet) || Instant::now() > drain_deadline {
            break;
        }
    }
    let _ = stop_tx.send(true);
    let mut records = Vec::with_capacity(n);
    for c in clients {
        records.push(c.await?);
    }

    // The ground truth: who each answered publish was for.
    let ok = std::mem::take(&mut *ok.lock().unwrap());
    let failed = std::mem::take(&mut *failed.lock().unwrap());
    let ok_set: std::collections::HashSet<u64> = ok.iter().copied().collect();
    let (mut expected, mut received, mut lost, mut duplicated, mut unexpected) = (0u64, 0, 0, 0, 0);
    let mut clients_with_loss = 0usize;
    let mut clients_with_dup = 0usize;
    let mut lost_after_kill = 0u64;
    let kill_n = (cli.kill_after * rate) as u64;
    for (c, r) in records.iter().enumerate() {
        let (u, t) = (user_of(c), user_of(c) % tenants);
        let mut lost_here = 0;
        for &k in &ok {
            let (target_tenant, target_user) = target_of(k, users, tenants);
            let mine = match target_user {
                Some(tu) => tu == u,
                None => target_tenant == t,
            };
            if mine {
                expected += 1;
                if !r.seen.contains_key(&k) {
                    lost_here += 1;
                    if k >= kill_n {
                        lost_after_kill += 1;
                    }
                }
            }
        }
        let dup_here: u64 = r.seen.values().map(|&v| u64::from(v.saturating_sub(1))).sum();
        received += r.seen.values().map(|&v| u64::from(v)).sum::<u64>();
        unexpected += r.seen.keys().filter(|k| !ok_set.contains(k)).count() as u64;
        lost += lost_here;
        duplicated += dup_here;
        clients_with_loss += usize::from(lost_here > 0);
        clients_with_dup += usize::from(dup_here > 0);
    }
    let recovered = records.iter().filter(|r| r.recovered == Some(true)).count();
    let not_recovered = records.iter().filter(|r| r.recovered == Some(false)).count();
    let resyncs: u64 = records.iter().map(|r| r.resyncs).sum();
    let reconnects: u64 = records.iter().map(|r| u64::from(r.reconnects)).sum();
    let mut times = shared.reconnect_us.lock().unwrap().clone();
    times.sort_unstable();
    let pct = |p: f64| {
        (!times.is_empty())
            .then(|| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1])
            .map(|us| us as f64 / 1000.0)
    };
    let killed = shared.killed_at.lock().unwrap().map(|at| at.duration_since(start).as_secs_f64());

    println!(
        "  publishes          {} sent through {via} at {rate}/s over {:.1} s: {} answered 200, {} failed",
        ok.len() + failed.len(),
        cli.duration,
        ok.len(),
        failed.len()
    );
    println!(
        "  node A             {} at {} s; {} clients lost it, {} live again on other nodes (after the kill: p50 {} ms, max {} ms), {} connections made",
        cli.kill_pid.map_or("not killed".to_owned(), |p| format!(
            "pid {p} sent SIG{}",
            cli.kill_signal.to_ascii_uppercase().trim_start_matches("SIG")
        )),
        fmt_opt(killed, 2),
        shared.disconnected.load(Relaxed),
        shared.reconnected.load(Relaxed),
        fmt_opt(pct(0.5), 0),
        fmt_opt(pct(1.0), 0),
        reconnects
    );
    println!(
        "  recovery reported  {recovered} recovered, {not_recovered} not recovered{}",
        if cli.server == ServerKind::Switchboard {
            format!(", {resyncs} resync frames")
        } else {
            String::new()
        }
    );
    println!(
        "  deliveries         {expected} expected, {received} received: {lost} lost ({lost_after_kill} of them published after the kill) on {clients_with_loss} clients, {duplicated} duplicated on {clients_with_dup} clients, {unexpected} of failed publishes"
    );
    if let Some(why) = shared.first_error.lock().unwrap().as_ref() {
        println!("  first error        {why}");
    }
    let mut line = String::from("RESULT");
    let mut kv = |k: &str, v: String| {
        let _ = write!(line, " {k}={v}");
    };
    kv("mode", "recovery".into());
    kv("label", cli.label.clone());
    kv("server", format!("{:?}", cli.server).to_lowercase());
    kv("clients", n.to_string());
    kv("rate", rate.to_string());
    kv("signal", cli.kill_signal.to_ascii_uppercase().trim_start_matches("SIG").to_owned());
    kv("publishes_ok", ok.len().to_string());
    kv("publishes_failed", failed.len().to_string());
    kv("expected", expected.to_string());
    kv("received", received.to_string());
    kv("lost", lost.to_string());
    kv("lost_after_kill", lost_after_kill.to_string());
    kv("duplicated", duplicated.to_string());
    kv("unexpected", unexpected.to_string());
    kv("clients_with_loss", clients_with_loss.to_string());
    kv("clients_with_dup", clients_with_dup.to_string());
    kv("disconnected", shared.disconnected.load(Relaxed).to_string());
    kv("reconnected", shared.reconnected.load(Relaxed).to_string());
    kv("recovered", recovered.to_string());
    kv("not_recovered", not_recovered.to_string());
    kv("resyncs", resyncs.to_string());
    kv("reconnect_p50_ms", fmt_opt(pct(0.5), 0));
    kv("reconnect_max_ms", fmt_opt(pct(1.0), 0));
    println!("{line}");
    Ok(())
}

/// Publish `k`: even numbers go to a tenant, odd ones to a user, each round-robin.
fn target_of(k: u64, users: usize, tenants: usize) -> (usize, Option<usize>) {
    let i = k / 2;
    if k % 2 == 0 {
        ((i % tenants as u64) as usize, None)
    } else {
        let u = (i % users as u64) as usize;
        (u % tenants, Some(u))
    }
}

fn publish_body(k: u64, users: usize, tenants: usize, start: Instant) -> String {
    let (tenant, user) = target_of(k, users, tenants);
    let mut body = format!(r#"{{"tenant":"t{tenant}","#);
    if let Some(u) = user {
        let _ = write!(body, r#""user":"u{u}","#);
    }
    let _ =
        write!(body, r#""kind":"bench","data":{{"ts":{},"n":{k}}}}}"#, start.elapsed().as_micros());
    body
}

/// One client: live on node A, then (once A is gone) on `next`, until the stop.
async fn client(
    shared: &Shared,
    index: u64,
    token: &str,
    node_a: SocketAddr,
    next: SocketAddr,
    record: &mut Record,
    mut stop: watch::Receiver<bool>,
) {
    match connection(shared, index, token, node_a, false, record, &mut stop).await {
        Ok(Ended::Stopped) => return,
        Ok(Ended::Lost(why)) | Err(why) => {
            shared.disconnected.fetch_add(1, Relaxed);
            if shared.killed_at.lock().unwrap().is_none() {
                shared.fail(format!("client {index} lost node A before the kill: {why}"));
            }
        }
    }
    // Reconnect, a few at a time, until it holds or the run stops.
    loop {
        if *stop.borrow() {
            return;
        }
        record.reconnects += 1;
        match connection(shared, index, token, next, true, record, &mut stop).await {
            Ok(Ended::Stopped) => return,
            Ok(Ended::Lost(why)) | Err(why) => {
                shared.fail(format!("client {index} on {next}: {why}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One connection's life. `again`: a reconnect (resume with what `record` holds).
async fn connection(
    shared: &Shared,
    index: u64,
    token: &str,
    addr: SocketAddr,
    again: bool,
    record: &mut Record,
    stop: &mut watch::Receiver<bool>,
) -> Result<Ended, String> {
    // Connects take turns until live (`--connect-concurrency`), as a fleet of real clients
    // spreads its own out, and as servers that bound connections being set up expect.
    let mut permit = tokio::select! {
        p = shared.gate.clone().acquire_owned() => p.ok(),
        _ = stop.changed() => return Ok(Ended::Stopped),
    };
    let opened = async {
        match shared.kind {
            ServerKind::Switchboard => Ws::open(addr, None, "/ws", Some(token), index, None).await,
            ServerKind::Socketio => {
                Ws::open(addr, None, "/socket.io/?EIO=4&transport=websocket", None, index, None)
                    .await
            }
        }
    };
    let mut ws = tokio::select! {
        ws = opened => ws.map_err(|e| e.to_string())?,
        _ = stop.changed() => return Ok(Ended::Stopped),
    };
    let mut live = false;
    loop {
        let mut events = 0u64;
        while let Some((_fin, opcode, range)) = ws.next_frame().map_err(|e| e.to_string())? {
            match opcode {
                0x1 | 0x2 => {}
                0x8 => {
                    return Ok(Ended::Lost(format!(
                        "closed by the server: {}",
                        String::from_utf8_lossy(&ws.buf[range])
                    )));
                }
                0x9 => {
                    let payload = ws.buf[range].to_vec();
                    ws.queue(0xA, &payload);
                    continue;
                }
                _ => continue,
            }
            let payload = ws.buf[range].to_vec();
            let step = match shared.kind {
                ServerKind::Switchboard => on_switchboard(&payload, token, again, record, &mut ws)?,
                ServerKind::Socketio => on_socketio(&payload, token, again, record, &mut ws)?,
            };
            match step {
                Step::Event => events += 1,
                Step::Live if !live => {
                    live = true;
                    permit.take();
                    if again {
                        shared.reconnected.fetch_add(1, Relaxed);
                        if let Some(at) = *shared.killed_at.lock().unwrap() {
                            shared
                                .reconnect_us
                                .lock()
                                .unwrap()
                                .push(at.elapsed().as_micros() as u64);
                        }
                    } else {
                        shared.live.fetch_add(1, Relaxed);
                    }
                }
                _ => {}
            }
        }
        if events > 0 {
            shared.received.fetch_add(events, Relaxed);
        }
        ws.flush().await.map_err(|e| e.to_string())?;
        tokio::select! {
            n = ws.read_more() => match n {
                Ok(0) => return Ok(Ended::Lost("end of stream".into())),
                Ok(_) => {}
                Err(e) => return Ok(Ended::Lost(e.to_string())),
            },
            _ = stop.changed() => {
                ws.queue(0x8, &[0x03, 0xe8]);
                let _ = ws.flush().await;
                return Ok(Ended::Stopped);
            }
        }
    }
}

enum Step {
    Event,
    Live,
    Other,
}

/// The publish number `n` in an event's `data`.
fn publish_number(data: &serde_json::Value) -> Option<u64> {
    data.get("n")?.as_u64()
}

fn on_switchboard(
    payload: &[u8],
    _token: &str,
    again: bool,
    record: &mut Record,
    ws: &mut Ws,
) -> Result<Step, String> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("unreadable frame: {e}"))?;
    let kind = v.get("type").and_then(|t| t.as_str()).unwrap_or("");
    match kind {
        "connected" => {
            if !again {
                // The starting positions, for a resume before any event came.
                if let Some(streams) = v.get("streams").and_then(|s| s.as_object()) {
                    for (name, p) in streams {
                        if let (Some(e), Some(s)) = (
                            p.get("epoch").and_then(|x| x.as_u64()),
                            p.get("seq").and_then(|x| x.as_u64()),
                        ) {
                            record.positions.insert(name.clone(), (e, s));
                        }
                    }
                }
                ws.queue(0x1, br#"{"type":"ping"}"#);
                return Ok(Step::Other);
            }
            let mut frame = String::from(r#"{"type":"resume","positions":{"#);
            for (i, (name, (e, s))) in record.positions.iter().enumerate() {
                if i > 0 {
                    frame.push(',');
                }
                let _ = write!(frame, r#""{name}":{{"epoch":{e},"seq":{s}}}"#);
            }
            frame.push_str("}}");
            ws.queue(0x1, frame.as_bytes());
            // Live from here: the replay and then live events follow.
            Ok(Step::Live)
        }
        "pong" => Ok(Step::Live),
        "resumed" => {
            record.recovered = v.get("recovered").and_then(|r| r.as_bool());
            Ok(Step::Other)
        }
        "resync" => {
            record.resyncs += 1;
            if let (Some(stream), Some(e), Some(s)) = (
                v.get("stream").and_then(|x| x.as_str()),
                v.get("epoch").and_then(|x| x.as_u64()),
                v.get("seq").and_then(|x| x.as_u64()),
            ) {
                record.positions.insert(stream.to_owned(), (e, s));
            }
            Ok(Step::Other)
        }
        "error" => Err(format!("error frame: {}", String::from_utf8_lossy(payload))),
        _ => {
            let Some(k) = v.get("data").and_then(publish_number) else {
                return Ok(Step::Other);
            };
            *record.seen.entry(k).or_insert(0) += 1;
            if let (Some(stream), Some(e), Some(s)) = (
                v.get("stream").and_then(|x| x.as_str()),
                v.get("epoch").and_then(|x| x.as_u64()),
                v.get("seq").and_then(|x| x.as_u64()),
            ) {
                record.positions.insert(stream.to_owned(), (e, s));
            }
            Ok(Step::Event)
        }
    }
}

fn on_socketio(
    payload: &[u8],
    token: &str,
    again: bool,
    record: &mut Record,
    ws: &mut Ws,
) -> Result<Step, String> {
    match payload {
        [b'0', ..] => {
            // Engine.IO open: connect to the main namespace, asking to recover when the server
            // gave us a session and we saw an offset.
            let mut packet = format!(r#"40{{"token":"{token}""#);
            if again {
                if let (Some(pid), Some(offset)) = (&record.sio_pid, &record.sio_offset) {
                    let _ = write!(packet, r#","pid":"{pid}","offset":"{offset}""#);
                }
            }
            packet.push('}');
            ws.queue(0x1, packet.as_bytes());
            Ok(Step::Other)
        }
        [b'2', ..] => {
            ws.queue(0x1, b"3");
            Ok(Step::Other)
        }
        [b'4', b'0', rest @ ..] => {
            let v: serde_json::Value = serde_json::from_slice(rest).unwrap_or_default();
            let pid = v.get("pid").and_then(|p| p.as_str()).map(str::to_owned);
            if again {
                record.recovered = Some(pid.is_some() && pid == record.sio_pid);
            }
            if pid.is_some() {
                record.sio_pid = pid;
            }
            Ok(Step::Live)
        }
        [b'4', b'2', rest @ ..] => {
            let v: serde_json::Value =
                serde_json::from_slice(rest).map_err(|e| format!("unreadable event: {e}"))?;
            let Some(k) = v.get(1).and_then(publish_number) else { return Ok(Step::Other) };
            *record.seen.entry(k).or_insert(0) += 1;
            if let Some(offset) = v.get(2).and_then(|o| o.as_str()) {
                record.sio_offset = Some(offset.to_owned());
            }
            Ok(Step::Event)
        }
        [b'4', b'4', ..] | [b'1', ..] => {
            Err(format!("refused: {}", String::from_utf8_lossy(payload)))
        }
        _ => Ok(Step::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_alternate_between_tenants_and_users() {
        assert_eq!(target_of(0, 6, 3), (0, None));
        assert_eq!(target_of(1, 6, 3), (0, Some(0)));
        assert_eq!(target_of(2, 6, 3), (1, None));
        assert_eq!(target_of(9, 6, 3), (1, Some(4)));
        assert_eq!(target_of(13, 6, 3), (0, Some(0)));
    }

    #[test]
    fn the_body_carries_the_publish_number() {
        let body = publish_body(3, 6, 3, Instant::now());
        assert!(body.starts_with(r#"{"tenant":"t1","user":"u1","kind":"bench","data":{"ts":"#));
        assert!(body.ends_with(r#","n":3}}"#));
    }
}
