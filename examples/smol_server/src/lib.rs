//! The same wire protocol on smol and async-tungstenite: proof that the hub does not care which
//! runtime drives it. Kept small: one WebSocket endpoint (any path) with the same JWT check and
//! the same demo agent as the tokio server (`switchboard_server::{auth, agent}`, which are plain
//! code without a runtime); no publish API, metrics or page (see `server/` for those).
//!
//! ```sh
//! cargo run -p switchboard-smol-example     # ws://127.0.0.1:8081/?token=…, prints demo tokens
//! SWITCHBOARD_JWT_SECRET=… SWITCHBOARD_LISTEN=127.0.0.1:9000 cargo run -p switchboard-smol-example
//! ```
//!
//! Same shape as the tokio driver: the hub in one task, fed by one bounded channel; a reader and
//! a writer per connection; the writer reports `written`; one timer follows `poll_timeout`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};
use smol::channel::{Receiver, Sender, TrySendError, bounded};
use smol::net::{TcpListener, TcpStream};
use smol::stream::StreamExt;
use switchboard::{
    Action, CloseReason, Config, ConnId, DisconnectReason, Envelope, Frame, Hub, Inbound,
    Principal, RoomId,
};

use switchboard_server::agent;
pub use switchboard_server::auth::{self, Identity, Keys};

enum Cmd {
    Open {
        principal: Principal,
        rooms: Vec<RoomId>,
        out: Sender<Out>,
        reply: Sender<Option<ConnId>>,
    },
    Frame {
        conn: ConnId,
        bytes: Bytes,
    },
    Pong {
        conn: ConnId,
    },
    Written {
        conn: ConnId,
        bytes: usize,
    },
    Gone {
        conn: ConnId,
        reason: DisconnectReason,
    },
    Publish(Envelope),
}

enum Out {
    Text(Frame),
    Ping,
    Close(CloseReason),
    /// A close the transport decides on its own (the hub never saw what it refuses).
    Refuse(CloseCode, &'static str),
}

/// Accepts connections until the listener fails.
pub async fn serve(listener: TcpListener, keys: Keys, pace: Duration) -> std::io::Result<()> {
    let config = Config {
        resume_window: Duration::from_millis(1500),
        seed: auth::random_u64(),
        ..Config::default()
    };
    let hub = Hub::new(config).expect("valid config");
    let (tx, rx) = bounded(4096);
    smol::spawn(hub_task(hub, rx, tx.clone(), pace)).detach();
    loop {
        let (stream, _) = listener.accept().await?;
        smol::spawn(connection(stream, keys.clone(), tx.clone())).detach();
    }
}

/// The hub's task: commands in, actions out, one timer.
async fn hub_task(mut hub: Hub, rx: Receiver<Cmd>, tx: Sender<Cmd>, pace: Duration) {
    let mut peers: HashMap<ConnId, Sender<Out>> = HashMap::new();
    let mut runs = 0u64;
    loop {
        let deadline = hub.poll_timeout();
        let timer = async {
            match deadline {
                Some(at) => {
                    smol::Timer::at(at).await;
                    None
                }
                None => std::future::pending().await,
            }
        };
        let cmd = smol::future::or(async { Some(rx.recv().await) }, timer).await;
        let now = Instant::now();
        match cmd {
            None => hub.tick(now),
            Some(Err(_)) => return,
            Some(Ok(cmd)) => match cmd {
                Cmd::Open { principal, rooms, out, reply } => {
                    let id = hub.connect(now, principal).ok();
                    if let Some(id) = id {
                        peers.insert(id, out);
                        for room in rooms {
                            let _ = hub.join(now, id, room);
                        }
                    }
                    let _ = reply.try_send(id);
                }
                Cmd::Frame { conn, bytes } => drop(hub.receive(now, conn, &bytes)),
                Cmd::Pong { conn } => drop(hub.pong(now, conn)),
                Cmd::Written { conn, bytes } => drop(hub.written(now, conn, bytes)),
                Cmd::Gone { conn, reason } => {
                    peers.remove(&conn);
                    let _ = hub.disconnect(now, conn, reason);
                }
                Cmd::Publish(env) => drop(hub.publish(now, env)),
            },
        }
        while let Some(action) = hub.poll_action() {
            match action {
                Action::Deliver { conn, frame } => {
                    push(&mut hub, &peers, now, conn, Out::Text(frame))
                }
                Action::Ping { conn } => push(&mut hub, &peers, now, conn, Out::Ping),
                Action::Close { conn, reason } => {
                    // If the outbox is full, dropping it ends the writer, which drops the socket.
                    if let Some(out) = peers.remove(&conn) {
                        let _ = out.try_send(Out::Close(reason));
                    }
                }
                Action::Inbound(msg) => {
                    runs += 1;
                    smol::spawn(run_agent(*msg, format!("run-{runs}"), pace, tx.clone())).detach();
                }
                // This example verifies no tokens: a client's `refresh` is answered, never left
                // waiting.
                Action::RefreshRequested(r) => {
                    let _ =
                        hub.answer_refresh(now, r.conn, Err("this server cannot verify tokens"));
                }
                _ => {} // audits and metrics: see examples/server for a fuller driver
            }
        }
    }
}

fn push(hub: &mut Hub, peers: &HashMap<ConnId, Sender<Out>>, now: Instant, conn: ConnId, out: Out) {
    if let Some(tx) = peers.get(&conn) {
        if let Err(TrySendError::Full(Out::Text(_))) = tx.try_send(out) {
            let _ = hub.close(now, conn, CloseReason::SlowConsumer);
        }
    }
}

async fn run_agent(msg: Inbound, run: String, pace: Duration, tx: Sender<Cmd>) {
    for step in agent::script(&agent::prompt_of(&msg), pace) {
        smol::Timer::after(step.after).await;
        if tx.send(Cmd::Publish(agent::envelope(&msg, &run, &step))).await.is_err() {
            return;
        }
    }
}

/// Authenticates during the handshake (401 on a bad token), then runs the connection.
async fn connection(stream: TcpStream, keys: Keys, tx: Sender<Cmd>) {
    let mut identity: Option<Identity> = None;
    // The signature is tungstenite's handshake callback; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, res: Response| -> Result<Response, ErrorResponse> {
        let query = req.uri().query().unwrap_or("");
        let from_query = query.split('&').find_map(|p| p.strip_prefix("token="));
        let from_header = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match from_header.or(from_query).map(|t| keys.verify(t)) {
            Some(Ok(id)) => {
                identity = Some(id);
                Ok(res)
            }
            Some(Err(e)) => Err(unauthorized(e.to_string())),
            None => Err(unauthorized("no token".into())),
        }
    };
    let Ok(ws) = async_tungstenite::accept_hdr_async(stream, check).await else { return };
    let Some(Identity { principal, rooms }) = identity else { return };
    let (out_tx, out_rx) = bounded(16 * 1024);
    let refuse_tx = out_tx.clone();
    let (reply_tx, reply_rx) = bounded(1);
    let open = Cmd::Open { principal, rooms, out: out_tx, reply: reply_tx };
    let (mut sender, mut receiver) = ws.split();
    let admitted = match tx.send(open).await {
        Ok(()) => reply_rx.recv().await.ok().flatten(),
        Err(_) => None,
    };
    let Some(id) = admitted else {
        // A limit or the reconnect breaker refused it (the tokio server answers with HTTP 429).
        let frame = CloseFrame { code: CloseCode::Policy, reason: "refused".into() };
        let _ = sender.close(Some(frame)).await;
        return;
    };

    // Writer: frames in order, `written` after each flush, the close frame with its code.
    let writer_tx = tx.clone();
    let writer = smol::spawn(async move {
        while let Ok(out) = out_rx.recv().await {
            let result = match out {
                Out::Text(frame) => {
                    let n = frame.len();
                    let text = Utf8Bytes::try_from(Bytes::from_owner(frame)).expect("UTF-8");
                    let sent = sender.send(Message::Text(text)).await;
                    if sent.is_ok() {
                        let _ = writer_tx.send(Cmd::Written { conn: id, bytes: n }).await;
                    }
                    sent
                }
                Out::Ping => sender.send(Message::Ping(Bytes::new())).await,
                Out::Close(reason) => {
                    let code = CloseCode::from(reason.code());
                    let frame = CloseFrame { code, reason: reason.as_str().into() };
                    let _ = sender.close(Some(frame)).await;
                    return;
                }
                Out::Refuse(code, why) => {
                    let _ = sender.close(Some(CloseFrame { code, reason: why.into() })).await;
                    return;
                }
            };
            if result.is_err() {
                return;
            }
        }
    });

    // Reader: frames and pongs to the hub until the socket ends, or until a peer that was sent a
    // close frame has had five seconds to answer it. As on the tokio server, a binary frame is
    // not part of the protocol (JSON text): it never reaches the hub, and the connection is
    // closed with 1003 (unsupported data) after the frames already queued for it.
    let mut refused = false;
    let reader = async {
        loop {
            match receiver.next().await {
                Some(Ok(Message::Text(text))) => {
                    let _ = tx.send(Cmd::Frame { conn: id, bytes: text.into() }).await;
                }
                Some(Ok(Message::Binary(_))) => {
                    let why = "binary frames are not supported";
                    refused = refuse_tx.try_send(Out::Refuse(CloseCode::Unsupported, why)).is_ok();
                    break DisconnectReason::Abnormal;
                }
                Some(Ok(Message::Pong(_))) => {
                    let _ = tx.send(Cmd::Pong { conn: id }).await;
                }
                Some(Ok(Message::Close(frame))) => {
                    let clean = frame.is_none_or(|f| matches!(u16::from(f.code), 1000 | 1001));
                    break if clean { DisconnectReason::Clean } else { DisconnectReason::Abnormal };
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break DisconnectReason::Abnormal,
            }
        }
    };
    let mut writer = writer;
    let lingered = async {
        (&mut writer).await;
        smol::Timer::after(Duration::from_secs(5)).await;
        DisconnectReason::Abnormal
    };
    let reason = smol::future::or(reader, lingered).await;
    // The hub ignores this if it closed the connection itself.
    let _ = tx.send(Cmd::Gone { conn: id, reason }).await;
    if refused {
        // Let the writer send the close frame (bounded: a peer that does not read is dropped).
        let wait = async {
            smol::Timer::after(Duration::from_secs(5)).await;
        };
        smol::future::or(writer, wait).await;
    }
}

fn unauthorized(why: String) -> ErrorResponse {
    let mut res = ErrorResponse::new(Some(why));
    *res.status_mut() = async_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED;
    res
}
