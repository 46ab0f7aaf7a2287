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
    pub async fn serve(self, mut accepted: Accepted, socket: WebSocket) {
        let id = accepted.id;
        let Some(parts) = accepted.parts.take() else { return };
        let AcceptedParts { frames, close, _alive, .. } = parts;
        let close_timeout = self.cfg.close_timeout;
        let (sink, mut stream) = socket.split();
        let mut writer = tokio::spawn(write_loop(self.clone(), id, sink, frames, close));
        let mut writer_done = false;
        let mut linger: Option<tokio::time::Instant> = None;
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
                    Some(Ok(Message::Binary(bytes))) => {
                        self.send(Command::Frame { conn: id, bytes }).await;
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
                    Some(Err(_)) | None => break DisconnectReason::Abnormal,
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
        // If the hub closed it, it already forgot it and ignores this.
        self.send(Command::Gone { conn: id, reason }).await;
        if !writer_done {
            // `Gone` drops the outbox, which ends the writer.
            if tokio::time::timeout(close_timeout, &mut writer).await.is_err() {
                writer.abort();
            }
        }
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
) {
    let cfg = handle.cfg.clone();
    loop {
        let first = tokio::select! {
            biased;
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
