//! A connection's outbox, shared by the hub task (which queues) and the connection's task (which
//! writes): the queued frames and pings, the hub's close, and the bytes flushed that the hub has
//! not been told of yet.
//!
//! It replaces a bounded channel and a one-shot slot per connection with one small allocation:
//! a mutex around a queue (never held across an await: held for a push, a pop, or the one
//! non-blocking system call of a direct write by the hub task or a writer task, see
//! [`State::direct`]) and a waker.
//! The hub bounds what it queues by bytes (`max_unwritten_bytes`, released by `written`); the
//! frame count passed to [`Outbox::push`] is a second fence.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use switchboard::{CloseReason, ConnId, Frame};
use tokio::sync::Notify;

use super::Out;
use super::socket::{self, SocketWriter};

/// What the hub task queued for one connection.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    state: Mutex<State>,
    /// The connection task's waker: woken when the queue stops being empty, and on a close.
    waker: AtomicWaker,
    /// Text bytes flushed since the hub last took them ([`Outbox::take_written`]).
    written: AtomicUsize,
    /// Flushes that wrote text since the hub last took them: with `written`, how many frames
    /// each write carries.
    flushes: AtomicUsize,
    /// The socket's read side woke the task since it last looked ([`Receiver::read_waker`]).
    read_woken: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Out>,
    /// The socket, when the hub task may write to it itself ([`super::socket`]).
    socket: Option<SocketWriter>,
    /// Whether it may now: the connection's task has nothing queued, half-written or in its
    /// transport's buffer, so a frame written straight to the socket cannot land inside another.
    /// The task sets it when it has flushed everything ([`Outbox::idle`]) and clears it before
    /// it writes anything itself ([`Outbox::busy`]); the hub clears it when it queues.
    direct: bool,
    /// The rest of a frame the hub task began to write and the socket did not take whole: the
    /// connection's task writes it before anything else. Boxed: it is rare, and every
    /// connection's outbox would otherwise hold its size.
    rest: Option<Box<Rest>>,
    /// The hub closed the connection with this reason.
    close: Option<CloseReason>,
    /// The hub let go of the connection (its peer entry was dropped).
    detached: bool,
    /// The connection's task ended: nothing more is queued.
    ended: bool,
}

/// The unwritten tail of a frame the hub task wrote in part ([`Outbox::push`]).
#[derive(Debug)]
pub(super) struct Rest {
    /// The frame's header.
    header: [u8; 10],
    header_len: u8,
    frame: Frame,
    /// Bytes of header and frame already written.
    sent: usize,
}

impl Rest {
    /// What remains to be written, from `sent` on: of the header, then of the frame.
    pub(super) fn remaining(&self) -> (&[u8], &[u8]) {
        let header = &self.header[..usize::from(self.header_len)];
        let frame = self.frame.as_str().as_bytes();
        match self.sent.checked_sub(header.len()) {
            Some(into_frame) => (&[], &frame[into_frame..]),
            None => (&header[self.sent..], frame),
        }
    }

    /// Notes `n` more bytes written; true once everything is.
    pub(super) fn advance(&mut self, n: usize) -> bool {
        self.sent += n;
        self.sent >= usize::from(self.header_len) + self.frame.len()
    }

    /// The frame's length (what the hub counts as written once it is).
    pub(super) fn frame_len(&self) -> usize {
        self.frame.len()
    }
}

/// Why [`Outbox::push`] did not queue.
#[derive(Debug)]
pub(super) enum Refused {
    /// The queue holds its limit of frames: the connection is behind.
    Full(Out),
    /// The connection's task ended.
    Ended,
}

/// What the connection's task should do instead of writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// Close with this reason.
    Close(CloseReason),
    /// The hub let go without a close.
    Detached,
}

impl State {
    /// Writes the queued frames to the socket while it takes them whole (up to
    /// [`State::WRITE_FRAMES`] per write): returns their text bytes. A frame the socket took
    /// in part becomes the [`Rest`]; if anything is left, direct writes end until the task is
    /// idle again.
    fn write_direct(&mut self) -> usize {
        let mut written = 0;
        // Taken out for the loop (the queue changes under it) and put back: no reference count.
        let Some(socket) = self.socket.take() else { return 0 };
        while !self.queue.is_empty() {
            let mut headers = [[0u8; 10]; Self::WRITE_FRAMES];
            let mut lens = [(0usize, 0usize); Self::WRITE_FRAMES];
            let mut count = 0;
            for (i, out) in self.queue.iter().take(Self::WRITE_FRAMES).enumerate() {
                let Out::Text(frame) = out else { break };
                lens[i] = (socket::text_header(frame.len(), &mut headers[i]), frame.len());
                count = i + 1;
            }
            if count == 0 {
                break;
            }
            let mut slices: [IoSlice<'_>; 2 * Self::WRITE_FRAMES] =
                [IoSlice::new(&[]); 2 * Self::WRITE_FRAMES];
            for (i, out) in self.queue.iter().take(count).enumerate() {
                let Out::Text(frame) = out else { unreachable!("counted above") };
                slices[2 * i] = IoSlice::new(&headers[i][..lens[i].0]);
                slices[2 * i + 1] = IoSlice::new(frame.as_str().as_bytes());
            }
            let mut sent = match socket.try_write(&slices[..2 * count]) {
                Ok(n) => n,
                Err(_) => break,
            };
            let mut whole = 0;
            for &(header_len, len) in &lens[..count] {
                if sent < header_len + len {
                    break;
                }
                sent -= header_len + len;
                written += len;
                whole += 1;
            }
            self.queue.drain(..whole);
            if whole < count {
                if sent > 0 {
                    let Some(Out::Text(frame)) = self.queue.pop_front() else {
                        unreachable!("a text frame was counted here")
                    };
                    let header_len = lens[whole].0 as u8;
                    let rest = Rest { header: headers[whole], header_len, frame, sent };
                    self.rest = Some(Box::new(rest));
                }
                break;
            }
        }
        self.socket = Some(socket);
        if !self.queue.is_empty() || self.rest.is_some() {
            self.direct = false;
        }
        written
    }

    /// Frames one direct write carries at most (two slices each).
    const WRITE_FRAMES: usize = 32;
}

impl Outbox {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned queue is still a valid queue.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hub side: queues `out` for the connection, unless `limit` frames are queued already or
    /// the task ended. While the socket is idle ([`State::direct`]) and `direct` allows, text
    /// frames are held for the hub task to write straight to the socket at the end of its turn
    /// ([`Outbox::flush`]), several in one write; anything else ends that (a ping goes
    /// through the task). `Ok(true)`: the queue was empty, so the caller must call
    /// [`Outbox::flush`] once its run of pushes is over (through [`Wakes`]), and a burst goes
    /// out in one write rather than one system call per frame; `Ok(false)`: a flush or the task
    /// is already due, and takes this too.
    pub(super) fn push(&self, out: Out, limit: usize, direct: bool) -> Result<bool, Refused> {
        let mut state = self.state();
        if state.ended {
            return Err(Refused::Ended);
        }
        if state.queue.len() >= limit {
            return Err(Refused::Full(out));
        }
        let wake = state.queue.is_empty() && state.rest.is_none();
        if !(direct && matches!(out, Out::Text(_))) {
            state.direct = false;
        }
        state.queue.push_back(out);
        Ok(wake)
    }

    /// Hub side, after a run of pushes: if `direct` and the socket is still the hub's to write
    /// ([`State::direct`]), writes what was queued straight to it, as much as it takes at once,
    /// and returns those text bytes (the frames'); whatever it did not take, and anything queued
    /// otherwise, is the connection's task's, which is woken.
    pub(super) fn flush(&self, direct: bool) -> usize {
        let mut state = self.state();
        let mut written = 0;
        if state.direct && direct {
            written = state.write_direct();
        } else if !state.queue.is_empty() {
            // The task's to write, then: it may pop them.
            state.direct = false;
        }
        let more = !state.queue.is_empty() || state.rest.is_some();
        drop(state);
        if more {
            self.wake_writer();
        }
        written
    }
    /// Gives the hub task the connection's socket to write to directly, once the connection's
    /// task says it is idle ([`Outbox::idle`]).
    pub(super) fn share_socket(&self, socket: SocketWriter) {
        self.state().socket = Some(socket);
    }

    /// The socket the hub task may write to, if it was given one.
    pub(super) fn socket(&self) -> Option<SocketWriter> {
        self.state().socket.clone()
    }

    /// Connection side: the task wrote and flushed everything it had; if nothing is queued the
    /// hub task may write to the socket directly until the task writes again.
    pub(super) fn idle(&self) {
        let mut state = self.state();
        state.direct = state.socket.is_some()
            && state.queue.is_empty()
            && state.rest.is_none()
            && state.close.is_none()
            && !state.detached
            && !state.ended;
    }

    /// Connection side: the task is about to write something of its own (a reply its transport
    /// queued while reading, a close): no direct write may start until it is idle again.
    pub(super) fn busy(&self) {
        self.state().direct = false;
    }

    /// Connection side: the rest of a frame the hub task began, to be written before anything
    /// else.
    pub(super) fn take_rest(&self) -> Option<Box<Rest>> {
        self.state().rest.take()
    }

    /// Hub side: wakes the connection's task to write what was pushed (not through the read
    /// side's [`Wake`], which would also have the task poll its socket).
    pub(super) fn wake_writer(&self) {
        self.waker.wake();
    }

    /// Hub side: asks the connection's task to close with `reason` (after the queued frames,
    /// unless it is a slow consumer).
    pub(super) fn close(&self, reason: CloseReason) {
        let mut state = self.state();
        state.close.get_or_insert(reason);
        state.direct = false;
        drop(state);
        self.waker.wake();
    }

    /// Hub side: the hub forgot the connection.
    pub(super) fn detach(&self) {
        let mut state = self.state();
        state.detached = true;
        state.direct = false;
        drop(state);
        self.waker.wake();
    }

    /// Hub side: the bytes flushed since the last call, and in how many flushes.
    pub(super) fn take_written(&self) -> (usize, usize) {
        let bytes = self.written.swap(0, Ordering::AcqRel);
        // Counted before the bytes were added (see `add_written`): the swap above sees it.
        (bytes, self.flushes.swap(0, Ordering::Relaxed))
    }

    /// Connection side: the waker to wake when something arrives. Call before looking.
    pub(super) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Connection side: whether the hub asked for a close or let go.
    pub(super) fn stop(&self) -> Option<Stop> {
        let state = self.state();
        match (state.close, state.detached) {
            (Some(reason), _) => Some(Stop::Close(reason)),
            (None, true) => Some(Stop::Detached),
            (None, false) => None,
        }
    }

    /// Connection side: the oldest queued frame or ping.
    pub(super) fn pop(&self) -> Option<Out> {
        let mut state = self.state();
        if state.direct {
            // Held for the hub task's direct write at the end of its turn.
            return None;
        }
        let out = state.queue.pop_front();
        // A burst's queue gives its memory back once drained.
        if out.is_none() && state.queue.capacity() > 64 {
            state.queue = VecDeque::new();
        }
        out
    }

    /// Connection side: whether the socket's read side woke the task since the last call.
    pub(super) fn take_read_woken(&self) -> bool {
        self.read_woken.swap(false, Ordering::AcqRel)
    }

    /// Connection side: the next queued output, or why there is none (a close first).
    pub(super) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Result<Out, Stop>> {
        self.register(cx.waker());
        if let Some(stop) = self.stop() {
            return Poll::Ready(Err(stop));
        }
        match self.pop() {
            Some(out) => Poll::Ready(Ok(out)),
            None => Poll::Pending,
        }
    }

    /// Connection side: the task stopped writing (it ended, or it only waits for the peer's
    /// close now); what is queued is dropped and later pushes are refused.
    pub(super) fn end(&self) {
        let mut state = self.state();
        state.ended = true;
        state.direct = false;
        state.queue = VecDeque::new();
        state.rest = None;
        // The socket closes once the task drops its own hold too.
        state.socket = None;
    }

    /// Connection side: adds flushed text bytes. True if the hub had taken every earlier count,
    /// so the connection must be named to it again ([`Moved::push`]).
    pub(super) fn add_written(&self, bytes: usize) -> bool {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.written.fetch_add(bytes, Ordering::AcqRel) == 0
    }
}

/// The connection task's hold on its outbox: dropping it (the task ended) drops what is queued
/// and refuses later pushes.
#[derive(Debug)]
pub(super) struct Receiver(Arc<Outbox>);

impl Receiver {
    /// The receiving side of `outbox`.
    pub(super) fn new(outbox: Arc<Outbox>) -> Self {
        Receiver(outbox)
    }
}

impl Receiver {
    /// A waker for the socket's read side: it notes that the read side woke the task
    /// ([`Outbox::take_read_woken`]) and wakes the task, so the task polls the read side only
    /// when it may have something. No allocation: it shares the outbox's.
    pub(super) fn read_waker(&self) -> Waker {
        Waker::from(self.0.clone())
    }
}

/// The read side's waker ([`Receiver::read_waker`]).
impl Wake for Outbox {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.read_woken.store(true, Ordering::Release);
        self.waker.wake();
    }
}

impl Deref for Receiver {
    type Target = Outbox;

    fn deref(&self) -> &Outbox {
        &self.0
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The connections the hub task pushed to and has yet to flush ([`Outbox::flush`]: a direct
/// write, or a wake of the connection's task). Deferred to the end of the hub task's turn
/// ([`Wakes::flush_all`]) so that a burst for one connection, such as the messages of a batch
/// publish or of one read from the bus, is written with one system call: a task woken at the
/// first push may run on another core at once and write one frame per call while the hub is
/// still pushing the rest.
///
/// A large fan-out (a turn that reaches [`Wakes::BATCH`] connections) is handed over in batches
/// as it goes, so that writing starts on the other cores while the hub is still pushing. With
/// direct writes on ([`Wakes::writers`]) each batch goes to a *writer task* of its own, which
/// writes the batch's frames straight to the sockets as the hub task does for a small turn
/// ([`write_batch`]), unless the large fan-out follows another within [`Writers::SPACING`]: then
/// the hub is publishing faster than writers would find frames to gather, and the turn's batches
/// wake the connections' tasks instead. A task runs later than a writer task that writes 64
/// connections in one poll, so it finds more publishes' frames queued and writes them with one
/// system call: on a pinned server saturated with tenant broadcasts (fan-out 1,000), writer
/// tasks for every fan-out made 1.75 frames per write against the tasks' 2.8, and delivered
/// 150,700 a second against 194,500 (docs/benchmarks/fanout-latency.md, *Session 15*).
#[derive(Debug, Default)]
pub(super) struct Wakes {
    pending: Vec<(ConnId, Arc<Outbox>)>,
    /// Connections the hub task wrote to directly whose bytes it has yet to settle.
    pub(super) written: Vec<ConnId>,
    /// Whether this turn already handed a batch over: a large fan-out, whose every batch is
    /// written off the hub task.
    spilled: bool,
    /// Whether this turn's batches go to writer tasks (decided at its first batch).
    to_writers: bool,
    /// Whether the hub task may write to sockets itself ([`super::DriverConfig::direct_writes`]).
    pub(super) direct: bool,
    /// Writer tasks' shared state, when a large fan-out's batches may go to writer tasks;
    /// `None`: they always go to the connections' tasks.
    pub(super) writers: Option<Writers>,
    /// Batches handed to writer tasks so far ([`super::DriverStats::writer_batches`]).
    pub(super) writer_batches: u64,
}

/// What the hub task keeps for writer tasks.
#[derive(Debug)]
pub(super) struct Writers {
    /// Where writer tasks name the connections they wrote to.
    moved: Arc<Moved>,
    /// When the last large fan-out began.
    last: Option<Instant>,
}

impl Writers {
    /// Large fan-outs closer together than this go to the connections' tasks, which gather
    /// several publishes' frames per write. At 2 or 10 broadcasts a second every fan-out gets
    /// writer tasks; a saturated hub starts one every few milliseconds.
    pub(super) const SPACING: Duration = Duration::from_millis(20);

    /// Writer tasks that name the connections they wrote to in `moved`.
    pub(super) fn new(moved: Arc<Moved>) -> Self {
        Writers { moved, last: None }
    }

    /// A large fan-out begins `now`: whether its batches go to writer tasks.
    fn begin(&mut self, now: Instant) -> bool {
        let spaced = self.last.is_none_or(|last| now.duration_since(last) >= Self::SPACING);
        self.last = Some(now);
        spaced
    }

    /// Hands `batch` to a new writer task.
    fn spawn(&self, batch: Vec<(ConnId, Arc<Outbox>)>) {
        let moved = self.moved.clone();
        tokio::spawn(async move { write_batch(batch, &moved) });
    }
}

impl Wakes {
    /// How many connections are gathered before they are handed over in the middle of a turn: a
    /// large fan-out gets its first writers going on the other cores while the hub goes on
    /// pushing. A turn that reaches fewer connections is written by the hub task itself where it
    /// can ([`Outbox::flush`]).
    pub(super) const BATCH: usize = 64;

    /// Notes that `outbox` went from empty to not ([`Outbox::push`] returned `true`).
    pub(super) fn add(&mut self, conn: ConnId, outbox: &Arc<Outbox>) {
        self.pending.push((conn, outbox.clone()));
        if self.pending.len() >= Self::BATCH {
            if !self.spilled {
                self.spilled = true;
                self.to_writers = self.writers.as_mut().is_some_and(|w| w.begin(Instant::now()));
            }
            self.hand_over();
        }
    }

    /// The end of a turn: flushes every connection noted since the last call.
    pub(super) fn flush_all(&mut self) {
        if std::mem::take(&mut self.spilled) {
            self.hand_over();
        } else {
            self.flush(self.direct);
        }
    }

    /// Hands the pending connections of a large fan-out to a writer task, or to their own tasks.
    fn hand_over(&mut self) {
        match &self.writers {
            Some(writers) if self.to_writers && !self.pending.is_empty() => {
                let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(Self::BATCH));
                writers.spawn(batch);
                self.writer_batches += 1;
            }
            _ => self.flush(false),
        }
    }

    fn flush(&mut self, direct: bool) {
        for (conn, outbox) in self.pending.drain(..) {
            // Counted as one flush, like a task's.
            let bytes = outbox.flush(direct);
            if bytes > 0 && outbox.add_written(bytes) {
                self.written.push(conn);
            }
        }
    }
}

/// A writer task's work: writes each connection's queued frames straight to its socket where the
/// socket is the hub's to write and takes them at once ([`Outbox::flush`]); the rest goes to the
/// connection's task, which is woken. Then names the connections that wrote to the hub task, with
/// one lock for the batch.
///
/// For a large fan-out this replaces, per connection, the wake and poll of its task and the copy
/// into tungstenite's buffer with one system call, and it runs on whichever worker is free: a
/// 10,000-connection broadcast is written on every core while the hub is still pushing.
fn write_batch(batch: Vec<(ConnId, Arc<Outbox>)>, moved: &Moved) {
    let mut named = Vec::new();
    for (conn, outbox) in batch {
        let bytes = outbox.flush(true);
        if bytes > 0 && outbox.add_written(bytes) {
            named.push(conn);
        }
    }
    moved.push_all(&mut named);
}

/// The connections whose tasks flushed bytes the hub has not been told of, gathered for the hub
/// task to settle with `Hub::written` once per turn of its loop instead of one command per flush.
#[derive(Debug, Default)]
pub(super) struct Moved {
    conns: Mutex<Vec<ConnId>>,
    /// Wakes the hub task when the list stops being empty.
    pub(super) notify: Notify,
}

impl Moved {
    /// Names a connection whose written count went from zero to more.
    pub(super) fn push(&self, conn: ConnId) {
        self.add(|list| list.push(conn));
    }

    /// Names every connection in `conns` (left empty), with one lock.
    pub(super) fn push_all(&self, conns: &mut Vec<ConnId>) {
        if !conns.is_empty() {
            self.add(|list| list.append(conns));
        }
    }

    /// Adds to the list under its lock, and wakes the hub task if it was empty.
    fn add(&self, add: impl FnOnce(&mut Vec<ConnId>)) {
        let mut list = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let was_empty = list.is_empty();
        add(&mut list);
        drop(list);
        if was_empty {
            self.notify.notify_one();
        }
    }

    /// Moves the named connections into `into` (emptied first), leaving the list empty.
    pub(super) fn take(&self, into: &mut Vec<ConnId>) {
        into.clear();
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *conns, into);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_is_bounded_by_frames_and_refused_once_the_task_ended() {
        let outbox = Outbox::default();
        assert!(outbox.push(Out::Ping, 2, false).is_ok());
        assert!(outbox.push(Out::Ping, 2, false).is_ok());
        assert!(matches!(outbox.push(Out::Ping, 2, false), Err(Refused::Full(Out::Ping))));
        assert!(matches!(outbox.pop(), Some(Out::Ping)));
        assert!(outbox.push(Out::Ping, 2, false).is_ok(), "room again after a pop");
        let outbox = Arc::new(outbox);
        drop(Receiver::new(outbox.clone()));
        assert!(outbox.pop().is_none(), "what was queued is dropped");
        assert!(matches!(outbox.push(Out::Ping, 2, false), Err(Refused::Ended)));
    }

    /// A waker that counts its wakes.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn counted() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        (count, waker)
    }

    /// `n` outboxes, each with a registered waker that counts its wakes.
    fn watched_outboxes(n: usize) -> Vec<(Arc<Outbox>, Arc<Count>)> {
        (0..n)
            .map(|_| {
                let (count, waker) = counted();
                let outbox = Arc::new(Outbox::default());
                outbox.register(&waker);
                (outbox, count)
            })
            .collect()
    }

    #[test]
    fn pushes_wake_each_task_once_at_the_end_of_the_turn() {
        let (a_wakes, a_waker) = counted();
        let (b_wakes, b_waker) = counted();
        let (a, b) = (Arc::new(Outbox::default()), Arc::new(Outbox::default()));
        a.register(&a_waker);
        b.register(&b_waker);
        let mut wakes = Wakes { direct: true, ..Wakes::default() };
        for _ in 0..10 {
            for (i, outbox) in [&a, &b].into_iter().enumerate() {
                if matches!(outbox.push(Out::Ping, 64, false), Ok(true)) {
                    wakes.add(ConnId::from_raw(i as u32, 0), outbox);
                }
            }
        }
        let woken = |c: &Arc<Count>| c.0.load(Ordering::SeqCst);
        assert_eq!((woken(&a_wakes), woken(&b_wakes)), (0, 0), "nobody woken mid-turn");
        wakes.flush_all();
        assert_eq!((woken(&a_wakes), woken(&b_wakes)), (1, 1), "each woken once for 10 frames");
        wakes.flush_all();
        assert_eq!((woken(&a_wakes), woken(&b_wakes)), (1, 1), "nothing new: no wake");
    }

    #[tokio::test]
    async fn a_writer_task_wakes_the_tasks_of_connections_it_may_not_write_to() {
        // No socket shared with the hub: the writer task cannot write, so it wakes each task.
        let outboxes = watched_outboxes(Wakes::BATCH + 1);
        let moved = Arc::new(Moved::default());
        let writers = Some(Writers::new(moved.clone()));
        let mut wakes = Wakes { direct: true, writers, ..Wakes::default() };
        for (i, (outbox, _)) in outboxes.iter().enumerate() {
            assert!(outbox.push(Out::Ping, 8, true).unwrap(), "was empty");
            wakes.add(ConnId::from_raw(i as u32, 0), outbox);
        }
        assert_eq!(wakes.writer_batches, 1, "one full batch handed over mid-turn");
        let woken = || outboxes.iter().map(|(_, c)| c.0.load(Ordering::SeqCst)).collect::<Vec<_>>();
        // The writer task runs once this task yields (current-thread runtime).
        tokio::task::yield_now().await;
        let now = woken();
        assert!(now[..Wakes::BATCH].iter().all(|&n| n == 1), "the writer woke its batch: {now:?}");
        assert_eq!(now[Wakes::BATCH], 0, "the rest waits for the end of the turn");
        wakes.flush_all();
        assert_eq!(wakes.writer_batches, 2, "the turn's last connections are a batch of their own");
        tokio::task::yield_now().await;
        assert!(woken().iter().all(|&n| n == 1), "everyone woken once");
        let mut named = Vec::new();
        moved.take(&mut named);
        assert!(named.is_empty(), "nothing was written, so nothing to settle: {named:?}");
    }

    #[test]
    fn large_fan_outs_close_together_go_to_the_connections_tasks() {
        let mut writers = Writers::new(Arc::default());
        let t0 = Instant::now();
        assert!(writers.begin(t0), "the first one gets writer tasks");
        assert!(!writers.begin(t0 + Writers::SPACING / 2), "one soon after does not");
        assert!(!writers.begin(t0 + Writers::SPACING), "measured from the one before it");
        assert!(writers.begin(t0 + Writers::SPACING * 2), "one after a pause does again");
    }

    #[test]
    fn a_large_fan_out_wakes_its_first_tasks_before_the_turn_ends() {
        let outboxes = watched_outboxes(Wakes::BATCH + 1);
        let mut wakes = Wakes::default();
        for (i, (outbox, _)) in outboxes.iter().enumerate() {
            assert!(outbox.push(Out::Ping, 8, false).unwrap(), "was empty");
            wakes.add(ConnId::from_raw(i as u32, 0), outbox);
        }
        let woken: Vec<usize> = outboxes.iter().map(|(_, c)| c.0.load(Ordering::SeqCst)).collect();
        assert!(woken[..Wakes::BATCH].iter().all(|&n| n == 1), "the first batch is woken");
        assert_eq!(woken[Wakes::BATCH], 0, "the rest waits for the end of the turn");
    }

    #[test]
    fn a_close_wins_over_a_detach_and_keeps_its_first_reason() {
        let outbox = Outbox::default();
        assert_eq!(outbox.stop(), None);
        outbox.detach();
        assert_eq!(outbox.stop(), Some(Stop::Detached));
        outbox.close(CloseReason::SlowConsumer);
        outbox.close(CloseReason::ServerShutdown);
        assert_eq!(outbox.stop(), Some(Stop::Close(CloseReason::SlowConsumer)));
    }

    #[test]
    fn written_bytes_and_flushes_name_the_connection_once_until_the_hub_takes_them() {
        let outbox = Outbox::default();
        assert!(outbox.add_written(10), "first bytes: name it");
        assert!(!outbox.add_written(5), "already named");
        assert_eq!(outbox.take_written(), (15, 2), "15 bytes in 2 flushes");
        assert_eq!(outbox.take_written(), (0, 0));
        assert!(outbox.add_written(1), "taken: name it again");
    }

    #[test]
    fn the_read_waker_marks_the_read_side_and_wakes_the_task() {
        let (count, waker) = counted();
        let rx = Receiver::new(Arc::new(Outbox::default()));
        rx.register(&waker);
        assert!(!rx.take_read_woken());
        rx.read_waker().wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(rx.take_read_woken());
        assert!(!rx.take_read_woken(), "taken once");
    }

    #[test]
    fn moved_connections_are_taken_in_order_and_the_list_is_left_empty() {
        let moved = Moved::default();
        let a = ConnId::from_raw(1, 0);
        let b = ConnId::from_raw(2, 0);
        moved.push(a);
        moved.push(b);
        let mut taken = vec![ConnId::from_raw(9, 0)];
        moved.take(&mut taken);
        assert_eq!(taken, vec![a, b]);
        moved.take(&mut taken);
        assert!(taken.is_empty());
    }

    #[test]
    fn a_push_into_an_empty_queue_asks_for_a_wake_and_a_second_does_not() {
        let (count, waker) = counted();
        let outbox = Outbox::default();
        outbox.register(&waker);
        assert!(outbox.push(Out::Ping, 8, false).unwrap(), "was empty");
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "the push itself never wakes");
        assert_eq!(outbox.flush(true), 0, "nothing for the hub to write itself");
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the flush wakes the task");
        outbox.register(&waker);
        assert!(!outbox.push(Out::Ping, 8, false).unwrap(), "not empty: nothing to flush");
        outbox.close(CloseReason::ServerShutdown);
        assert_eq!(count.0.load(Ordering::SeqCst), 2, "a close always wakes");
    }

    /// Frames of `sizes` bytes of data each, made by a hub (a frame is only ever the hub's).
    fn frames(sizes: &[usize]) -> Vec<Frame> {
        use switchboard::{Action, Config, Envelope, EventKind, Hub, Principal, Target};
        let mut hub = Hub::new(Config::default()).unwrap();
        let now = std::time::Instant::now();
        let conn = hub.connect(now, Principal::new("acme", "alice")).unwrap();
        while hub.poll_action().is_some() {}
        let mut out = Vec::new();
        for &size in sizes {
            let target = Target::User { tenant: "acme".into(), user: "alice".into() };
            let env = Envelope::new(target, EventKind::custom("note"))
                .data(serde_json::json!({ "pad": "x".repeat(size) }));
            hub.publish(now, env).unwrap();
            while let Some(action) = hub.poll_action() {
                if let Action::Deliver { frame, .. } = action {
                    // Written at once: the hub holds back what a connection has not taken.
                    hub.written(now, conn, frame.len()).unwrap();
                    out.push(frame);
                }
            }
        }
        out
    }

    /// What a client reads of `frames` as WebSocket text frames from a server.
    fn on_the_wire(frames: &[Frame]) -> Vec<u8> {
        let mut wire = Vec::new();
        for frame in frames {
            let mut header = [0u8; 10];
            let n = socket::text_header(frame.len(), &mut header);
            wire.extend_from_slice(&header[..n]);
            wire.extend_from_slice(frame.as_str().as_bytes());
        }
        wire
    }

    /// A connected pair on loopback: the server's end shared, the client's end to read.
    async fn pair() -> (SocketWriter, tokio::net::TcpStream, socket::SharedSocket) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // A small receive buffer: loopback's own would take megabytes before the sender waits.
        let client = tokio::net::TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(64 * 1024).unwrap();
        let client = client.connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (io, writer) = socket::share(accepted.unwrap().0);
        (writer, client.unwrap(), io)
    }

    #[tokio::test]
    async fn a_burst_for_an_idle_socket_is_written_by_the_hub_in_one_write() {
        use tokio::io::AsyncReadExt;
        let (writer, mut client, _io) = pair().await;
        let outbox = Outbox::default();
        let (woken, waker) = counted();
        outbox.register(&waker);
        outbox.share_socket(writer);
        let burst = frames(&[10, 200, 70_000]);
        // Before the task says it is idle, frames are the task's.
        assert!(outbox.push(Out::Text(burst[0].clone()), 8, true).unwrap(), "was empty");
        assert_eq!(outbox.flush(true), 0);
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert!(outbox.pop().is_some());
        outbox.idle();
        for frame in &burst {
            outbox.push(Out::Text(frame.clone()), 8, true).unwrap();
        }
        assert!(outbox.pop().is_none(), "held for the hub's write, not the task's");
        let text: usize = burst.iter().map(Frame::len).sum();
        assert_eq!(outbox.flush(true), text, "all three written by the hub");
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "the task was not woken");
        let want = on_the_wire(&burst);
        let mut got = vec![0u8; want.len()];
        client.read_exact(&mut got).await.unwrap();
        assert!(got == want, "the client reads the three frames whole and in order");
        // A ping goes through the task, and ends direct writes until it is idle again.
        outbox.push(Out::Ping, 8, true).unwrap();
        outbox.push(Out::Text(burst[0].clone()), 8, true).unwrap();
        assert_eq!(outbox.flush(true), 0);
        assert!(matches!(outbox.pop(), Some(Out::Ping)));
        assert!(matches!(outbox.pop(), Some(Out::Text(_))));
    }

    #[tokio::test]
    async fn what_a_full_socket_does_not_take_is_finished_by_the_task_before_anything_else() {
        use tokio::io::AsyncReadExt;
        let (writer, mut client, _io) = pair().await;
        let outbox = Outbox::default();
        outbox.share_socket(writer.clone());
        outbox.idle();
        // Far more than loopback's buffers take at once.
        let big = frames(&[900_000; 12]);
        for frame in &big {
            outbox.push(Out::Text(frame.clone()), 16, true).unwrap();
        }
        let direct = outbox.flush(true);
        assert!(
            direct < big.iter().map(Frame::len).sum::<usize>(),
            "the socket filled up: {direct}"
        );
        assert_eq!(direct % big[0].len(), 0, "counted in whole frames: {direct}");
        let reader = tokio::spawn(async move {
            let want = on_the_wire(&frames(&[900_000; 12]));
            let mut got = vec![0u8; want.len()];
            client.read_exact(&mut got).await.unwrap();
            got == want
        });
        // What the task does: the rest of the frame cut short first, then the queue in order.
        let write = |buf: &[u8]| {
            let writer = writer.clone();
            let buf = buf.to_vec();
            async move {
                let mut at = 0;
                while at < buf.len() {
                    at +=
                        std::future::poll_fn(|cx| writer.poll_write(cx, &buf[at..])).await.unwrap();
                }
            }
        };
        let rest = outbox.take_rest();
        let cut = usize::from(rest.is_some());
        if let Some(mut rest) = rest {
            let (header, tail) = rest.remaining();
            let pending = [header, tail].concat();
            assert!(!rest.advance(pending.len() - 1), "one byte short is not done");
            assert!(rest.advance(1));
            write(&pending).await;
        }
        let mut queued = Vec::new();
        while let Some(out) = outbox.pop() {
            let Out::Text(frame) = out else { panic!("only frames were queued") };
            queued.push(frame);
        }
        let whole = direct / big[0].len();
        assert_eq!(whole + cut + queued.len(), 12, "every frame is written, cut or queued");
        write(&on_the_wire(&queued)).await;
        assert!(reader.await.unwrap(), "the client reads every frame whole and in order");
    }
}
