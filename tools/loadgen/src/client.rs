//! One WebSocket client from connect to close, speaking switchboard's protocol or Socket.IO's
//! (Engine.IO v4 over WebSocket) on top of `ws`.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::watch;

use crate::bytes::{find, invalid, parse_u64};
use crate::cli::ServerKind;
use crate::ctx::Ctx;
use crate::ws::{Phase, Ws};

/// One client from connect to close. Releases `permit` once it is live.
pub(crate) async fn client(
    ctx: &Ctx,
    index: u64,
    token: &str,
    permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // One wait on the stop signal for the client's whole life (not one per wake).
    let mut stop_signal = std::pin::pin!(async move {
        let _ = stop.changed().await;
    });
    let addr = ctx.addrs[index as usize % ctx.addrs.len()];
    let bind = (!ctx.binds.is_empty()).then(|| ctx.binds[index as usize % ctx.binds.len()]);
    let mut ws = match ctx.kind {
        ServerKind::Switchboard => {
            Ws::open(addr, bind, "/ws", Some(token), index, ctx.rcvbuf).await?
        }
        ServerKind::Socketio => {
            let path = "/socket.io/?EIO=4&transport=websocket";
            Ws::open(addr, bind, path, None, index, ctx.rcvbuf).await?
        }
    };
    let connect_packet = format!(r#"40{{"token":"{token}"}}"#);
    let mut phase = Phase::Opening;
    let mut stopping = false;
    let mut close_deadline = None;
    // `--latency-every N`: of a live client's events, every N-th is parsed for its `ts` (the
    // clients start at different offsets); the others are only counted.
    let mut sample = Sampler::new(ctx.latency_every, index);
    // A `:defer` phase stops the reads for its burst; the kernel holds what arrives meanwhile.
    let mut reading = ctx.reading.subscribe();
    loop {
        // Every complete frame in the buffer.
        let mut events = 0u64;
        while let Some((fin, opcode, range)) = ws.next_frame()? {
            // A whole message: in the read buffer, or reassembled from fragments.
            let mut whole: Option<Vec<u8>> = None;
            let range = match opcode {
                0x0 => {
                    ws.partial.extend_from_slice(&ws.buf[range]);
                    if !(fin && ws.partial_open) {
                        continue;
                    }
                    ws.partial_open = false;
                    whole = Some(std::mem::take(&mut ws.partial));
                    0..0
                }
                0x1 | 0x2 if !fin => {
                    ws.partial.clear();
                    ws.partial.extend_from_slice(&ws.buf[range]);
                    ws.partial_open = true;
                    continue;
                }
                0x1 | 0x2 => range,
                0x8 => {
                    if phase != Phase::Closing {
                        // The server closed on us: answer, and count it unless we were stopping.
                        let why = String::from_utf8_lossy(&ws.buf[range]).into_owned();
                        ws.queue(0x8, &[0x03, 0xe8]);
                        let _ = ws.flush().await;
                        if !stopping {
                            ctx.dropped.fetch_add(1, Relaxed);
                            return Err(invalid(format!("closed by the server: {why}")));
                        }
                    }
                    return Ok(());
                }
                0x9 => {
                    let payload = ws.buf[range].to_vec();
                    ws.queue(0xA, &payload);
                    continue;
                }
                _ => continue,
            };
            let payload: &[u8] = whole.as_deref().unwrap_or(&ws.buf[range]);
            if phase == Phase::Live && is_event(ctx.kind, payload) && !sample.take() {
                events += 1;
                continue;
            }
            match handle_message(ctx, payload, phase) {
                Handled::Event(ts) => {
                    events += 1;
                    match ts {
                        Some(ts) => {
                            let now = ctx.now_us();
                            if now >= ctx.window_from.load(Relaxed)
                                && now < ctx.window_to.load(Relaxed)
                            {
                                ctx.hist.record(now.saturating_sub(ts));
                            }
                        }
                        None => {
                            ctx.unreadable.fetch_add(1, Relaxed);
                        }
                    }
                }
                Handled::Opened => {
                    match ctx.kind {
                        // Socket.IO: connect to the main namespace with the token.
                        ServerKind::Socketio => ws.queue(0x1, connect_packet.as_bytes()),
                        // switchboard: a first frame, so that live delivery starts now.
                        ServerKind::Switchboard => ws.queue(0x1, br#"{"type":"ping"}"#),
                    }
                    phase = Phase::Joining;
                }
                Handled::Live => {
                    if phase == Phase::Joining {
                        phase = Phase::Live;
                        permit.take();
                        ctx.ready.fetch_add(1, Relaxed);
                    }
                }
                Handled::EnginePing => ws.queue(0x1, b"3"),
                Handled::Refused(why) => return Err(invalid(why)),
                Handled::Other => {}
            }
        }
        if events > 0 {
            ctx.received.fetch_add(events, Relaxed);
            // Counted by the time of the read: with `--latency-every` above 1 the histogram holds
            // only a sample, so the deliveries in the window are counted here.
            let now = ctx.now_us();
            if now >= ctx.window_from.load(Relaxed) && now < ctx.window_to.load(Relaxed) {
                ctx.in_window.fetch_add(events, Relaxed);
            }
        }
        ws.flush().await?;
        if stopping && phase != Phase::Closing {
            ws.queue(0x8, &[0x03, 0xe8]); // 1000, normal closure
            ws.flush().await?;
            phase = Phase::Closing;
            close_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(5));
        }
        let deadline = async {
            match close_deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let may_read = *reading.borrow_and_update();
        if may_read {
            ws.unpark()?;
            ws.flush().await?;
        } else {
            ws.park()?;
        }
        tokio::select! {
            n = ws.read_more(), if may_read => {
                if n? == 0 {
                    if phase == Phase::Closing {
                        return Ok(());
                    }
                    ctx.dropped.fetch_add(1, Relaxed);
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            // Either way round: a pause drops the read in progress (one `read`, cancel-safe).
            Ok(()) = reading.changed() => {}
            () = &mut stop_signal, if !stopping => stopping = true,
            () = deadline => return Ok(()),
        }
    }
}

/// What a whole message from the server was, as far as a client cares.
pub(crate) enum Handled {
    /// An event, with its `ts` if it had one.
    Event(Option<u64>),
    /// switchboard's `connected`, or Engine.IO's open packet.
    Opened,
    /// switchboard's `pong`, or the Socket.IO connect answer.
    Live,
    /// Engine.IO ping.
    EnginePing,
    Refused(String),
    Other,
}

/// Which of a client's events are parsed for their `ts`: one in `every`, the first after
/// `offset mod every` skipped ones (so that clients sample different publishes).
pub(crate) struct Sampler {
    every: u64,
    until: u64,
}

impl Sampler {
    /// One in `every` (at least 1) events, starting after `offset % every` of them.
    pub(crate) fn new(every: u64, offset: u64) -> Self {
        let every = every.max(1);
        Sampler { every, until: offset % every }
    }

    /// Whether the next event is in the sample.
    pub(crate) fn take(&mut self) -> bool {
        if self.until > 0 {
            self.until -= 1;
            return false;
        }
        self.until = self.every - 1;
        true
    }
}

/// Whether `payload` is a published event, by its first bytes only: switchboard's
/// `{"type":"bench"…` (the kind the load generator publishes), Socket.IO's `42…`.
pub(crate) fn is_event(kind: ServerKind, payload: &[u8]) -> bool {
    match kind {
        ServerKind::Switchboard => payload.starts_with(br#"{"type":"bench""#),
        ServerKind::Socketio => payload.starts_with(b"42"),
    }
}

/// Classifies one message by the server flavour and the handshake phase, reading only the
/// bytes it needs (an event's `ts`, a control message's prefix).
pub(crate) fn handle_message(ctx: &Ctx, payload: &[u8], phase: Phase) -> Handled {
    match ctx.kind {
        ServerKind::Switchboard => {
            if let Some(i) = find(payload, b"\"ts\":") {
                return Handled::Event(parse_u64(&payload[i + 5..]));
            }
            if phase == Phase::Opening && payload.starts_with(br#"{"type":"connected""#) {
                return Handled::Opened;
            }
            if payload.starts_with(br#"{"type":"pong""#) {
                return Handled::Live;
            }
            if payload.starts_with(br#"{"type":"error""#) {
                return Handled::Refused(String::from_utf8_lossy(payload).into_owned());
            }
            Handled::Other
        }
        ServerKind::Socketio => match payload {
            [b'4', b'2', rest @ ..] => {
                Handled::Event(find(rest, b"\"ts\":").and_then(|i| parse_u64(&rest[i + 5..])))
            }
            [b'2', ..] => Handled::EnginePing,
            [b'0', ..] if phase == Phase::Opening => Handled::Opened,
            [b'4', b'0', ..] => Handled::Live,
            [b'4', b'4', ..] | [b'1', ..] => {
                Handled::Refused(String::from_utf8_lossy(payload).into_owned())
            }
            _ => Handled::Other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_one_event_in_n_from_the_offset() {
        let take = |every, offset| {
            let mut s = Sampler::new(every, offset);
            (0..10).map(|_| s.take()).collect::<Vec<_>>()
        };
        assert!(take(1, 7).iter().all(|&t| t));
        assert!(take(0, 3).iter().all(|&t| t), "0 is taken as 1");
        let (t, f) = (true, false);
        assert_eq!(take(4, 0), [t, f, f, f, t, f, f, f, t, f]);
        assert_eq!(take(4, 6), [f, f, t, f, f, f, t, f, f, f]);
    }

    #[test]
    fn events_are_told_by_their_first_bytes() {
        let sb = ServerKind::Switchboard;
        assert!(is_event(sb, br#"{"type":"bench","stream":"t","data":{"ts":1}}"#));
        assert!(!is_event(sb, br#"{"type":"pong"}"#));
        assert!(!is_event(sb, br#"{"type":"connected","conn_id":"c"}"#));
        let sio = ServerKind::Socketio;
        assert!(is_event(sio, br#"42["bench",{"ts":1}]"#));
        assert!(!is_event(sio, b"2"));
        assert!(!is_event(sio, br#"40{"sid":"x"}"#));
    }
}
