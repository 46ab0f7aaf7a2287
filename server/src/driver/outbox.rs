//! A connection's outbox, shared by the hub task (which queues) and the connection's task (which
//! writes): the queued frames and pings, the hub's close, and the bytes flushed that the hub has
//! not been told of yet.
//!
//! It replaces a bounded channel and a one-shot slot per connection with one small allocation:
//! a mutex around a queue (never held across an await, only for a push or a pop) and a waker.
//! The hub bounds what it queues by bytes (`max_unwritten_bytes`, released by `written`); the
//! frame count passed to [`Outbox::push`] is a second fence.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use switchboard::{CloseReason, ConnId};
use tokio::sync::Notify;

use super::Out;

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
    /// The hub closed the connection with this reason.
    close: Option<CloseReason>,
    /// The hub let go of the connection (its peer entry was dropped).
    detached: bool,
    /// The connection's task ended: nothing more is queued.
    ended: bool,
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

impl Outbox {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned queue is still a valid queue.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hub side: queues `out` unless `limit` frames are queued already or the task ended.
    /// Returns whether the queue was empty, i.e. whether the connection's task must be woken
    /// ([`Outbox::wake_writer`]); otherwise it is awake or waiting for its socket, and comes back for
    /// the rest. The wake is the caller's so that it can come after a run of pushes: the task
    /// then writes them with one flush instead of one system call per frame.
    pub(super) fn push(&self, out: Out, limit: usize) -> Result<bool, Refused> {
        let mut state = self.state();
        if state.ended {
            return Err(Refused::Ended);
        }
        if state.queue.len() >= limit {
            return Err(Refused::Full(out));
        }
        let was_empty = state.queue.is_empty();
        state.queue.push_back(out);
        Ok(was_empty)
    }

    /// Hub side: wakes the connection's task to write what was pushed (not through the read
    /// side's [`Wake`], which would also have the task poll its socket).
    pub(super) fn wake_writer(&self) {
        self.waker.wake();
    }

    /// Hub side: asks the connection's task to close with `reason` (after the queued frames,
    /// unless it is a slow consumer).
    pub(super) fn close(&self, reason: CloseReason) {
        self.state().close.get_or_insert(reason);
        self.waker.wake();
    }

    /// Hub side: the hub forgot the connection.
    pub(super) fn detach(&self) {
        self.state().detached = true;
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
        state.queue = VecDeque::new();
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

/// The connection tasks the hub task pushed to and has yet to wake. Their wakes are deferred to
/// the end of the hub task's turn ([`Wakes::wake_all`]) so that a burst for one connection, such
/// as the messages of a batch publish or of one read from the bus, is written with one flush: a
/// task woken at the first push may run on another core at once and write one frame per system
/// call while the hub is still pushing the rest.
#[derive(Debug, Default)]
pub(super) struct Wakes(Vec<Arc<Outbox>>);

impl Wakes {
    /// How many tasks are gathered before they are woken in the middle of a turn: a large
    /// fan-out gets its first writers going on the other cores while the hub goes on pushing.
    pub(super) const BATCH: usize = 64;

    /// Notes that `outbox` went from empty to not ([`Outbox::push`] returned `true`).
    pub(super) fn add(&mut self, outbox: &Arc<Outbox>) {
        self.0.push(outbox.clone());
        if self.0.len() >= Self::BATCH {
            self.wake_all();
        }
    }

    /// Wakes every task noted since the last call.
    pub(super) fn wake_all(&mut self) {
        for outbox in self.0.drain(..) {
            outbox.wake_writer();
        }
    }
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
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let was_empty = conns.is_empty();
        conns.push(conn);
        drop(conns);
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
        assert!(outbox.push(Out::Ping, 2).is_ok());
        assert!(outbox.push(Out::Ping, 2).is_ok());
        assert!(matches!(outbox.push(Out::Ping, 2), Err(Refused::Full(Out::Ping))));
        assert!(matches!(outbox.pop(), Some(Out::Ping)));
        assert!(outbox.push(Out::Ping, 2).is_ok(), "room again after a pop");
        let outbox = Arc::new(outbox);
        drop(Receiver::new(outbox.clone()));
        assert!(outbox.pop().is_none(), "what was queued is dropped");
        assert!(matches!(outbox.push(Out::Ping, 2), Err(Refused::Ended)));
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

    #[test]
    fn pushes_wake_each_task_once_at_the_end_of_the_turn() {
        let (a_wakes, a_waker) = counted();
        let (b_wakes, b_waker) = counted();
        let (a, b) = (Arc::new(Outbox::default()), Arc::new(Outbox::default()));
        a.register(&a_waker);
        b.register(&b_waker);
        let mut wakes = Wakes::default();
        for _ in 0..10 {
            for outbox in [&a, &b] {
                if outbox.push(Out::Ping, 64).unwrap() {
                    wakes.add(outbox);
                }
            }
        }
        let woken = |c: &Arc<Count>| c.0.load(Ordering::SeqCst);
        assert_eq!((woken(&a_wakes), woken(&b_wakes)), (0, 0), "nobody woken mid-turn");
        wakes.wake_all();
        assert_eq!((woken(&a_wakes), woken(&b_wakes)), (1, 1), "each woken once for 10 frames");
        wakes.wake_all();
        assert_eq!((woken(&a_wakes), woken(&b_wakes)), (1, 1), "nothing new: no wake");
    }

    #[test]
    fn a_large_fan_out_wakes_its_first_tasks_before_the_turn_ends() {
        let outboxes: Vec<_> = (0..Wakes::BATCH + 1)
            .map(|_| {
                let (count, waker) = counted();
                let outbox = Arc::new(Outbox::default());
                outbox.register(&waker);
                (outbox, count)
            })
            .collect();
        let mut wakes = Wakes::default();
        for (outbox, _) in &outboxes {
            assert!(outbox.push(Out::Ping, 8).unwrap());
            wakes.add(outbox);
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
        assert!(outbox.push(Out::Ping, 8).unwrap(), "was empty: the caller wakes");
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "the push itself never wakes");
        outbox.wake_writer();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        outbox.register(&waker);
        assert!(!outbox.push(Out::Ping, 8).unwrap(), "not empty: no wake needed");
        outbox.close(CloseReason::ServerShutdown);
        assert_eq!(count.0.load(Ordering::SeqCst), 2, "a close always wakes");
    }
}
