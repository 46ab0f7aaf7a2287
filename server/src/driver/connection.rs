//! One connection's tasks: the reader feeds the hub task, the writer performs what it asks for.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use switchboard::{CloseReason, ConnId, DisconnectReason};
use tokio::sync::{mpsc, oneshot};

use super::{Accepted, AcceptedParts, Command, Handle, Out};

impl Handle {
    /// Runs one connection on its socket until it ends: a reader feeding the hub, and a writer
    /// performing what the hub asks for.
    ///
    /// What the transport refuses never reaches the hub: a binary frame is closed with 1003
    /// (unsupported data; the protocol is JSON text), a text frame that is not UTF-8 with 1007,
    /// a message over the transport's size limit ([`Handle::configure`]) with 1009, any other
    /// WebSocket protocol error with 1002. Each ends the connection as abnormal.
    pub async fn serve(self, mut accepted: Accepted, socket: WebSocket) {
        let id = accepted.id;
        let Some(parts) = accepted.parts.take() else { return };
        let AcceptedParts { frames, close, _alive, .. } = parts;
        let close_timeout = self.cfg.close_timeout;
        let (sink, mut stream) = socket.split();
        let (refuse, refused) = oneshot::channel();
        let mut writer = tokio::spawn(write_loop(self.clone(), id, sink, frames, close, refused));
        let mut writer_done = false;
        let mut linger: Option<tokio::time::Instant> = None;
        let mut refusal: Option<CloseFrame> = None;
        let reason = loop {
            let lingering = async {
                match linger {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        self.send(Command::Frame { conn: id, bytes: Bytes::from(text) }).await;
                    }
                    Some(Ok(Message::Binary(_))) => {
                        if writer_done {
                            continue; // closing already; only the peer's close reply matters
                        }
                        refusal = Some(close_frame(1003, "binary frames are not supported"));
                        break DisconnectReason::Abnormal;
                    }
                    Some(Ok(Message::Pong(_))) => {
                        self.send(Command::Pong { conn: id }).await;
                    }
                    // Answered by tungstenite itself.
                    Some(Ok(Message::Ping(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        let clean = frame.is_none_or(|f| matches!(f.code, 1000 | 1001));
                        break if clean { DisconnectReason::Clean } else { DisconnectReason::Abnormal };
                    }
                    Some(Err(err)) => {
                        if !writer_done {
                            refusal = transport_refusal(&err);
                        }
                        break DisconnectReason::Abnormal;
                    }
                    None => break DisconnectReason::Abnormal,
                },
                _ = &mut writer, if !writer_done => {
                    // The writer ended: the hub closed the connection (close frame sent or timed
                    // out) or the socket failed. Give the peer a moment to answer the close.
                    writer_done = true;
                    linger = Some(tokio::time::Instant::now() + close_timeout);
                }
                () = lingering => break DisconnectReason::Abnormal,
            }
        };
        // The writer looks at this before anything else, so it sends this close frame even
        // though `Gone` below also ends it.
        let refused = refusal.is_some_and(|frame| refuse.send(frame).is_ok());
        // If the hub closed it, it already forgot it and ignores this.
        self.send(Command::Gone { conn: id, reason }).await;
        if !writer_done {
            // `Gone` drops the outbox, which ends the writer.
            if tokio::time::timeout(close_timeout, &mut writer).await.is_err() {
                writer.abort();
            }
        }
        if refused {
            // Let the peer read the close frame and answer it (a stream that failed is already
            // over and returns `None` at once).
            let _ = tokio::time::timeout(close_timeout, async {
                while let Some(Ok(msg)) = stream.next().await {
                    if let Message::Close(_) = msg {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

fn close_frame(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame { code, reason: Utf8Bytes::from_static(reason) }
}

/// The close frame that answers a read error, if the peer is still there to read one: 1009 for a
/// message over the size limit, 1007 for text that is not UTF-8, 1002 for other protocol errors.
fn transport_refusal(err: &axum::Error) -> Option<CloseFrame> {
    use tungstenite::error::{Error, ProtocolError};
    let err = std::error::Error::source(err)?.downcast_ref::<Error>()?;
    match err {
        Error::Capacity(_) => Some(close_frame(1009, "message too big")),
        Error::Utf8(_) => Some(close_frame(1007, "text frame is not valid UTF-8")),
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        Error::Protocol(_) => Some(close_frame(1002, "protocol error")),
        _ => None,
    }
}

type Sink = SplitSink<WebSocket, Message>;

/// Performs `Deliver` and `Ping` in order, flushes in batches, reports `written`, and on `Close`
/// sends the close frame. Ends when the connection is closed or gone.
async fn write_loop(
    handle: Handle,
    id: ConnId,
    mut sink: Sink,
    mut frames: mpsc::Receiver<Out>,
    mut close: oneshot::Receiver<CloseReason>,
    refused: oneshot::Receiver<CloseFrame>,
) {
    let cfg = handle.cfg.clone();
    // Resolves only with a frame: a reader that ends without refusing anything drops the sender.
    let refused = async move {
        match refused.await {
            Ok(frame) => frame,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::pin!(refused);
    loop {
        let first = tokio::select! {
            biased;
            frame = &mut refused => {
                send_close_frame(&mut sink, frame, cfg.close_timeout).await;
                return;
            }
            reason = &mut close => {
                if let Ok(reason) = reason {
                    send_close(&mut sink, &mut frames, reason, cfg.close_timeout).await;
                }
                return;
            }
            out = frames.recv() => match out {
                Some(out) => out,
                None => return, // gone: the reader reported it
            },
        };
        let batch = send_batch(&mut sink, first, &mut frames, cfg.flush_bytes);
        let sent = tokio::select! {
            biased;
            frame = &mut refused => {
                send_close_frame(&mut sink, frame, cfg.close_timeout).await;
                return;
            }
            reason = &mut close => {
                // The hub closed it while a send was stuck (a slow consumer) or in progress.
                if let Ok(reason) = reason {
                    send_close(&mut sink, &mut frames, reason, cfg.close_timeout).await;
                }
                return;
            }
            sent = batch => sent,
        };
        match sent {
            Ok(0) => {}
            Ok(bytes) => {
                handle.send(Command::Written { conn: id, bytes }).await;
            }
            Err(_) => return, // the socket failed; the reader sees it too
        }
    }
}

fn to_message(out: Out) -> (Message, usize) {
    match out {
        Out::Text(frame) => {
            let n = frame.len();
            // Shares the frame's buffer: no copy of the bytes per recipient.
            let text = Utf8Bytes::try_from(Bytes::from_owner(frame)).expect("frames are UTF-8");
            (Message::Text(text), n)
        }
        Out::Ping => (Message::Ping(Bytes::new()), 0),
    }
}

/// Sends `first` and whatever else is already queued (up to `flush_bytes`), then flushes once.
/// Returns the text bytes flushed.
async fn send_batch(
    sink: &mut Sink,
    first: Out,
    frames: &mut mpsc::Receiver<Out>,
    flush_bytes: usize,
) -> Result<usize, axum::Error> {
    let (msg, mut bytes) = to_message(first);
    sink.feed(msg).await?;
    while bytes < flush_bytes {
        let Ok(out) = frames.try_recv() else { break };
        let (msg, n) = to_message(out);
        sink.feed(msg).await?;
        bytes += n;
    }
    sink.flush().await?;
    Ok(bytes)
}

/// Sends the frames queued before the close (unless the peer is a slow consumer: its queue is
/// abandoned), then the close frame with the reason's code, within `timeout`.
async fn send_close(
    sink: &mut Sink,
    frames: &mut mpsc::Receiver<Out>,
    reason: CloseReason,
    timeout: Duration,
) {
    let _ = tokio::time::timeout(timeout, async {
        if reason != CloseReason::SlowConsumer {
            while let Ok(out) = frames.try_recv() {
                sink.feed(to_message(out).0).await?;
            }
        }
        let frame =
            CloseFrame { code: reason.code(), reason: Utf8Bytes::from_static(reason.as_str()) };
        sink.send(Message::Close(Some(frame))).await
    })
    .await;
}

/// Sends a close frame the transport chose (the peer broke the protocol), abandoning whatever is
/// queued, within `timeout`.
async fn send_close_frame(sink: &mut Sink, frame: CloseFrame, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, sink.send(Message::Close(Some(frame)))).await;
}
