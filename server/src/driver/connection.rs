//! One connection's task: it reads the socket into the hub task and writes what the hub queued,
//! both from one loop over the unsplit socket.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use switchboard::{CloseReason, ConnId, DisconnectReason};
use tokio::sync::mpsc;

use super::outbox::{Moved, Receiver, Rest, Stop};
use super::socket::SocketWriter;
use super::{Accepted, AcceptedParts, Command, Handle, Out};

impl Handle {
    /// Runs one connection on its socket until it ends: one task reads the socket into the hub
    /// and writes what the hub queued for it.
    ///
    /// What the transport refuses never reaches the hub: a binary frame is closed with 1003
    /// (unsupported data; the protocol is JSON text), a text frame that is not UTF-8 with 1007,
    /// a message over the transport's size limit ([`Handle::configure`]) with 1009, any other
    /// WebSocket protocol error with 1002. Each ends the connection as abnormal.
    ///
    /// The connection's state is built before the returned future, so the socket is held once in
    /// the task, not both as an argument and as a local.
    pub fn serve(
        self,
        mut accepted: Accepted,
        socket: WebSocket,
    ) -> impl Future<Output = ()> + Send + 'static {
        let id = accepted.id;
        let parts = accepted.parts.take();
        let conn = parts.map(|AcceptedParts { outbox, _alive, .. }| {
            let conn = Conn {
                id,
                writer: outbox.socket(),
                rest: None,
                socket,
                read_waker: outbox.read_waker(),
                read_more: true,
                outbox,
                moved: self.moved.clone(),
                batch: 0,
                dirty: false,
                flush_bytes: self.cfg.flush_bytes,
            };
            (conn, _alive)
        });
        let mut conn = conn;
        async move {
            // Borrowed where it lies: moving it out would give it a second slot in the task.
            let Some((conn, _alive)) = conn.as_mut() else { return };
            let (reason, refusal) = self.run(id, conn).await;
            // If the hub closed it, it already forgot it and ignores this.
            if let Some(wait) = self.forward(Command::Gone { conn: id, reason }) {
                wait.await;
            }
            if let Some(frame) = refusal {
                Box::pin(conn.refuse(frame, self.cfg.close_timeout)).await;
            }
        }
    }

    /// Sends a command to the hub task if its channel has room; if not, returns the wait for
    /// room, boxed: a connection's task is as large as the largest state its future can be in,
    /// and a full channel is the rare case.
    fn forward(&self, cmd: Command) -> Option<Pin<Box<dyn Future<Output = bool> + Send + '_>>> {
        match self.tx.try_send(cmd) {
            Err(mpsc::error::TrySendError::Full(cmd)) => Some(Box::pin(self.send(cmd))),
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => None,
        }
    }

    /// The connection's loop: returns how it ended, and the close frame to refuse the peer with
    /// if the transport refused what it sent.
    async fn run(&self, id: ConnId, conn: &mut Conn) -> (DisconnectReason, Option<CloseFrame>) {
        let close_timeout = self.cfg.close_timeout;
        loop {
            match std::future::poll_fn(|cx| conn.poll_event(cx)).await {
                Event::Read(Ok(Message::Text(text))) => {
                    let cmd = Command::Frame { conn: id, bytes: Bytes::from(text) };
                    if let Some(wait) = self.forward(cmd) {
                        wait.await;
                    }
                }
                Event::Read(Ok(Message::Binary(_))) => {
                    let frame = close_frame(1003, "binary frames are not supported");
                    return (DisconnectReason::Abnormal, Some(frame));
                }
                Event::Read(Ok(Message::Pong(_))) => {
                    if let Some(wait) = self.forward(Command::Pong { conn: id }) {
                        wait.await;
                    }
                }
                // Answered by tungstenite itself, which queued the pong: the hub task must not
                // write to the socket until the task has flushed it.
                Event::Read(Ok(Message::Ping(_))) => conn.outbox.busy(),
                Event::Read(Ok(Message::Close(frame))) => {
                    // Send tungstenite's queued reply to the peer's close.
                    conn.outbox.busy();
                    let flush = tokio::time::timeout(close_timeout, conn.socket.flush());
                    let _ = Box::pin(flush).await;
                    return (peer_closed(frame.as_ref()), None);
                }
                Event::Read(Err(err)) => {
                    return (DisconnectReason::Abnormal, transport_refusal(&err));
                }
                Event::Ended => return (DisconnectReason::Abnormal, None),
                Event::Close(reason) => {
                    // The hub closed it (and forgot it): send the close frame, then give the peer
                    // a moment to answer it.
                    let closing = async {
                        conn.send_close(reason, close_timeout).await;
                        conn.linger(close_timeout).await
                    };
                    return (Box::pin(closing).await, None);
                }
                // The hub dropped the outbox without a close, or the socket failed while writing.
                Event::Detached | Event::WriteFailed => {
                    // Nothing more will be written: the hub's pushes are refused from now on
                    // instead of piling up while the task lingers.
                    conn.outbox.end();
                    return (Box::pin(conn.linger(close_timeout)).await, None);
                }
            }
        }
    }
}

/// How a peer's close frame ends the connection: 1000/1001 (or no code) is clean.
fn peer_closed(frame: Option<&CloseFrame>) -> DisconnectReason {
    if frame.is_none_or(|f| matches!(f.code, 1000 | 1001)) {
        DisconnectReason::Clean
    } else {
        DisconnectReason::Abnormal
    }
}

/// What woke the connection's loop.
enum Event {
    /// A message from the socket, or its read error.
    Read(Result<Message, axum::Error>),
    /// The socket's read side ended.
    Ended,
    /// The hub closed the connection.
    Close(CloseReason),
    /// The hub let go of the connection without a close.
    Detached,
    /// Writing to the socket failed.
    WriteFailed,
}

/// One connection's socket and its outbox.
struct Conn {
    id: ConnId,
    socket: WebSocket,
    /// The same socket as the hub task writes to it, when it does ([`super::socket`]): the rest
    /// of a frame it began is written through this, past tungstenite.
    writer: Option<SocketWriter>,
    /// The rest of a frame the hub task began, being written.
    rest: Option<Box<Rest>>,
    outbox: Receiver,
    /// Where a flush names the connection for the hub task to settle its written bytes.
    moved: std::sync::Arc<Moved>,
    /// Text bytes handed to the socket since its last completed flush.
    batch: usize,
    /// Whether anything was handed to the socket since its last completed flush.
    dirty: bool,
    /// Bytes handed to the socket before a flush must complete.
    flush_bytes: usize,
    /// The waker the socket's read side is polled with ([`Receiver::read_waker`]).
    read_waker: Waker,
    /// The read side returned a message when last polled: it may hold more without a new wake.
    read_more: bool,
}

impl Conn {
    /// Waits for the next thing to do, writing what the outbox holds meanwhile: a close from the
    /// hub first, then a completed flush, then a message from the socket.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        self.outbox.register(cx.waker());
        match self.outbox.stop() {
            Some(Stop::Close(reason)) => return Poll::Ready(Event::Close(reason)),
            Some(Stop::Detached) => return Poll::Ready(Event::Detached),
            None => {}
        }
        match self.poll_write(cx) {
            Poll::Ready(event) => return Poll::Ready(event),
            Poll::Pending => {}
        }
        // Only when the read side woke the task (or returned a message last time): each poll of
        // tungstenite's read zero-fills its read buffer before it tries the socket, which a wake
        // for the outbox or a writable socket would pay for nothing.
        if !(std::mem::take(&mut self.read_more) | self.outbox.take_read_woken()) {
            return Poll::Pending;
        }
        let mut read_cx = Context::from_waker(&self.read_waker);
        match Pin::new(&mut self.socket).poll_next(&mut read_cx) {
            Poll::Ready(Some(msg)) => {
                self.read_more = true;
                Poll::Ready(Event::Read(msg))
            }
            Poll::Ready(None) => Poll::Ready(Event::Ended),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Hands queued frames to the socket (up to `flush_bytes` unflushed) and flushes them, until
    /// the queue is empty or the socket is not ready. Ready only with why writing stopped.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if let Err(()) = std::task::ready!(self.poll_rest(cx)) {
            return Poll::Ready(Event::WriteFailed);
        }
        loop {
            while self.batch < self.flush_bytes {
                match Pin::new(&mut self.socket).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(Event::WriteFailed),
                    Poll::Pending => break,
                }
                // The waker is registered: a push into the empty queue wakes the task.
                let Some(out) = self.outbox.pop() else { break };
                let (msg, n) = to_message(out);
                if Pin::new(&mut self.socket).start_send(msg).is_err() {
                    return Poll::Ready(Event::WriteFailed);
                }
                self.batch += n;
                self.dirty = true;
            }
            if !self.dirty {
                // Nothing of ours to flush, but tungstenite may hold a reply it queued while
                // reading (a pong) that a full socket held back: the read side is not polled
                // again on a writable socket, so flush here (no syscall when there is none).
                return match Pin::new(&mut self.socket).poll_flush(cx) {
                    Poll::Ready(Err(_)) => Poll::Ready(Event::WriteFailed),
                    Poll::Ready(Ok(())) => {
                        // Everything written: the hub task may write to the socket itself (a
                        // connection served without a shared socket skips the lock).
                        if self.writer.is_some() {
                            self.outbox.idle();
                        }
                        Poll::Pending
                    }
                    Poll::Pending => Poll::Pending,
                };
            }
            match std::task::ready!(Pin::new(&mut self.socket).poll_flush(cx)) {
                Ok(()) => {
                    self.dirty = false;
                    // Counted for the hub task, which settles it with `Hub::written` on its next
                    // turn; named to it only if it took every earlier count.
                    let bytes = std::mem::take(&mut self.batch);
                    if bytes > 0 && self.outbox.add_written(bytes) {
                        self.moved.push(self.id);
                    }
                }
                Err(_) => return Poll::Ready(Event::WriteFailed),
            }
        }
    }

    /// Writes the rest of a frame the hub task began, if there is one, straight to the socket:
    /// nothing else may be written before it. Ready with `Err` if the socket failed.
    fn poll_rest(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        if self.rest.is_none() {
            self.rest = self.outbox.take_rest();
        }
        let (Some(rest), Some(writer)) = (&mut self.rest, &self.writer) else {
            return Poll::Ready(Ok(()));
        };
        loop {
            let (header, frame) = rest.remaining();
            let buf = if header.is_empty() { frame } else { header };
            match std::task::ready!(writer.poll_write(cx, buf)) {
                Ok(0) | Err(_) => return Poll::Ready(Err(())),
                Ok(n) if rest.advance(n) => break,
                Ok(_) => {}
            }
        }
        let bytes = self.rest.take().map_or(0, |rest| rest.frame_len());
        if self.outbox.add_written(bytes) {
            self.moved.push(self.id);
        }
        Poll::Ready(Ok(()))
    }

    /// Sends the frames queued before the close (unless the peer is a slow consumer: its queue
    /// is abandoned), then the close frame with the reason's code, within `timeout`.
    async fn send_close(&mut self, reason: CloseReason, timeout: Duration) {
        self.outbox.busy();
        let _ = tokio::time::timeout(timeout, async {
            // A frame the hub task began is finished first, whatever the reason: a frame cut
            // short would garble everything after it.
            if std::future::poll_fn(|cx| self.poll_rest(cx)).await.is_err() {
                return Ok(());
            }
            if reason != CloseReason::SlowConsumer {
                while let Some(out) = self.outbox.pop() {
                    self.socket.feed(to_message(out).0).await?;
                }
            }
            let frame =
                CloseFrame { code: reason.code(), reason: Utf8Bytes::from_static(reason.as_str()) };
            self.socket.send(Message::Close(Some(frame))).await
        })
        .await;
    }

    /// Closes the connection with a close frame the transport chose (the peer broke the
    /// protocol), abandoning whatever is queued, and lets the peer answer it.
    async fn refuse(&mut self, frame: CloseFrame, timeout: Duration) {
        self.outbox.busy();
        let _ = tokio::time::timeout(timeout, self.socket.send(Message::Close(Some(frame)))).await;
        // Let the peer read the close frame and answer it (a stream that failed is already over
        // and returns `None` at once).
        let _ = tokio::time::timeout(timeout, async {
            while let Some(Ok(msg)) = self.socket.next().await {
                if let Message::Close(_) = msg {
                    break;
                }
            }
        })
        .await;
    }

    /// After our close frame (or a failed write): reads until the peer's close reply, the end of
    /// the stream, or `timeout`. Anything else it sends is dropped.
    async fn linger(&mut self, timeout: Duration) -> DisconnectReason {
        // Reading may send tungstenite's reply to a close.
        self.outbox.busy();
        let read = async {
            while let Some(msg) = self.socket.next().await {
                match msg {
                    Ok(Message::Close(frame)) => return peer_closed(frame.as_ref()),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            DisconnectReason::Abnormal
        };
        tokio::time::timeout(timeout, read).await.unwrap_or(DisconnectReason::Abnormal)
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
