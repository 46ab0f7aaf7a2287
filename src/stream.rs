//! Streams: every message belongs to one (a user's, a room's, a tenant's broadcast), and gets the
//! next sequence number of that stream's current epoch.
//!
//! Sequence assignment happens in exactly one place, [`Stream::assign`]; a clustered hub will
//! replace that seam with positions handed out by a broker, so nothing else may assume that seqs
//! are minted locally.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::frame::Frame;
use crate::ids::{ConnId, Role, RoomId, RunId, StreamPos, TenantId, ThreadId};
use crate::retention::Retention;
use crate::timer::{TimerId, TimerQueue};

/// Who may receive a buffered message when it is replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Anyone on the stream.
    All,
    /// Connections whose filter admits an event of this thread and run (at least one is set:
    /// see `narrowing.rs`).
    Subject {
        /// The event's thread.
        thread: Option<ThreadId>,
        /// The event's run.
        run: Option<RunId>,
    },
    /// Exactly this connection (a `Target::Connection` message).
    Conn(ConnId),
    /// Connections whose principal holds this role.
    Role(Role),
    /// No connection of this node (cluster mode: a `Target::Connection` message for another
    /// node's connection). Kept so that the stream's seqs stay contiguous.
    Nobody,
}

impl Scope {
    /// The scope of a user-stream event of `thread` and `run`.
    pub(crate) fn subject(thread: Option<&ThreadId>, run: Option<&RunId>) -> Self {
        match (thread, run) {
            (None, None) => Scope::All,
            _ => Scope::Subject { thread: thread.cloned(), run: run.cloned() },
        }
    }
}

/// Who may receive a message: its scope, less one excluded connection
/// ([`Envelope::exclude`](crate::Envelope::exclude)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Visible {
    pub(crate) scope: Scope,
    pub(crate) except: Option<ConnId>,
}

impl From<Scope> for Visible {
    fn from(scope: Scope) -> Self {
        Visible { scope, except: None }
    }
}

/// One message kept for recovery. The frame is the one that was delivered live (shared).
#[derive(Clone, Debug)]
pub(crate) struct Buffered {
    pub(crate) seq: u64,
    pub(crate) at: Instant,
    pub(crate) frame: Frame,
    pub(crate) visible: Visible,
}

/// Why a stream could not be recovered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unrecoverable {
    /// The client's epoch is not the stream's: the stream was created anew since.
    EpochMismatch,
    /// The client claims a seq the stream has not reached.
    FutureSeq,
    /// The messages after the client's seq are no longer all buffered.
    GapTooOld,
    /// This connection was already sent later seqs of the stream than the client's position (a
    /// room left and re-joined, or live delivery before the resume): the gap cannot be delivered
    /// in order.
    LiveAhead,
    /// The missing messages this connection may see do not all fit in what is left of its
    /// `max_unwritten_bytes` (issue 10 item 3): none are replayed, the client refetches.
    TooLarge,
}

impl Unrecoverable {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Unrecoverable::EpochMismatch => "epoch_mismatch",
            Unrecoverable::FutureSeq => "future_seq",
            Unrecoverable::GapTooOld => "gap_too_old",
            Unrecoverable::LiveAhead => "live_ahead",
            Unrecoverable::TooLarge => "too_large",
        }
    }
}

/// The sequence state and recovery buffer of one stream.
#[derive(Debug)]
pub(crate) struct Stream {
    epoch: u64,
    last_seq: u64,
    /// Contiguous: every assigned seq is pushed, so entries hold `first..=last_seq`.
    buf: VecDeque<Buffered>,
    bytes: usize,
    /// Armed while anything is buffered: fires when the oldest message outlives `max_age`, so
    /// that quiet streams age too (the timer queue is in [`Buffers`]).
    pub(crate) trim_timer: Option<TimerId>,
}

impl Stream {
    pub(crate) fn new(epoch: u64) -> Self {
        Self { epoch, last_seq: 0, buf: VecDeque::new(), bytes: 0, trim_timer: None }
    }

    /// When the oldest buffered message was kept.
    pub(crate) fn oldest_at(&self) -> Option<Instant> {
        self.buf.front().map(|b| b.at)
    }

    /// The position of the last message (seq 0 if none yet).
    pub(crate) fn position(&self) -> StreamPos {
        StreamPos { epoch: self.epoch, seq: self.last_seq }
    }

    /// The position [`Stream::assign`] will hand out next (a frame is built, and size-checked,
    /// before its position is taken).
    pub(crate) fn next_position(&self) -> StreamPos {
        StreamPos { epoch: self.epoch, seq: self.last_seq + 1 }
    }

    /// Cluster mode: a stream whose last message is at `pos` (positions come from the bus).
    pub(crate) fn at(pos: StreamPos) -> Self {
        Self {
            epoch: pos.epoch,
            last_seq: pos.seq,
            buf: VecDeque::new(),
            bytes: 0,
            trim_timer: None,
        }
    }

    /// Cluster mode: takes `pos`, handed out by the bus, as the next position. False if it does
    /// not follow the last one (the caller starts the stream over at it).
    pub(crate) fn take(&mut self, pos: StreamPos) -> bool {
        if pos.epoch != self.epoch || pos.seq != self.last_seq + 1 {
            return false;
        }
        self.last_seq = pos.seq;
        true
    }

    /// Assigns the next position to a message. The one seam where seqs are minted (outside
    /// cluster mode; there, [`Stream::take`]).
    pub(crate) fn assign(&mut self) -> StreamPos {
        self.last_seq += 1;
        StreamPos { epoch: self.epoch, seq: self.last_seq }
    }

    /// Keeps the message at `seq` (just assigned) for recovery, within `limits`.
    pub(crate) fn keep(
        &mut self,
        now: Instant,
        seq: u64,
        frame: &Frame,
        visible: Visible,
        limits: &Retention,
    ) {
        debug_assert!(self.buf.back().is_none_or(|b| b.seq + 1 == seq));
        self.bytes += frame.len();
        self.buf.push_back(Buffered { seq, at: now, frame: frame.clone(), visible });
        self.trim(now, limits);
    }

    /// Drops what exceeds the count, byte and age bounds (oldest first).
    pub(crate) fn trim(&mut self, now: Instant, limits: &Retention) {
        // A message kept before `now - max_age` is too old. That instant is subtracted once, on
        // the first look at the age (`Some(None)`: the clock cannot go back that far, so nothing
        // is), and compared with each message's: fewer instructions than taking the age of each
        // (callgrind, `publish-1-raw`).
        let mut cutoff = None;
        while let Some(front) = self.buf.front() {
            // The count and byte bounds first: they are cheaper than the age's clock arithmetic,
            // which a full buffer (the usual state) then skips for the message it drops.
            if self.buf.len() > limits.max_messages
                || self.bytes > limits.max_bytes
                || cutoff
                    .get_or_insert_with(|| now.checked_sub(limits.max_age))
                    .is_some_and(|c| front.at < c)
            {
                self.bytes -= front.frame.len();
                self.buf.pop_front();
            } else {
                break;
            }
        }
    }

    /// Drops the oldest message if it is `seq` of `epoch` (the hub-wide cap sheds in global age
    /// order, and its queue may name messages this stream already dropped). Returns whether it
    /// did. The newest message goes too if it must: a later resume across it is unrecoverable.
    pub(crate) fn shed_oldest(&mut self, epoch: u64, seq: u64) -> bool {
        if self.epoch != epoch || self.buf.front().is_none_or(|b| b.seq != seq) {
            return false;
        }
        let front = self.buf.pop_front().expect("checked");
        self.bytes -= front.frame.len();
        true
    }

    /// Drops every buffered message (one too large for the hub-wide cap cannot be kept, and a
    /// buffer holds a contiguous range, so nothing older can be replayed across it either).
    fn clear(&mut self) {
        self.buf.clear();
        self.bytes = 0;
    }

    /// The stream's epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the newest message kept is `seq` (a publish's, just kept: not dropped at once by
    /// the stream's bounds or the hub-wide cap).
    pub(crate) fn keeps_newest(&self, seq: u64) -> bool {
        self.buf.back().is_some_and(|b| b.seq == seq)
    }

    /// Buffered messages and their frame bytes.
    pub(crate) fn buffered(&self) -> (usize, usize) {
        (self.buf.len(), self.bytes)
    }

    /// The oldest seq still buffered (`last_seq + 1` when nothing is).
    pub(crate) fn available_from(&self) -> u64 {
        self.buf.front().map_or(self.last_seq + 1, |b| b.seq)
    }

    /// The messages in `(after, upto]`, if the buffer holds all of them. `after == upto` is an
    /// empty, always covered range.
    pub(crate) fn range(
        &self,
        epoch: u64,
        after: u64,
        upto: u64,
    ) -> Result<impl Iterator<Item = &Buffered> + Clone, Unrecoverable> {
        if epoch != self.epoch {
            return Err(Unrecoverable::EpochMismatch);
        }
        if after > self.last_seq || upto > self.last_seq {
            return Err(Unrecoverable::FutureSeq);
        }
        if after < upto && self.available_from() > after + 1 {
            return Err(Unrecoverable::GapTooOld);
        }
        let first = self.available_from();
        let skip = (after + 1).saturating_sub(first) as usize;
        let take = upto.saturating_sub(after) as usize;
        Ok(self.buf.iter().skip(skip).take(take))
    }

    /// Cluster mode: [`Stream::range`] with `extra` in front of the buffer: entries fetched from
    /// the log (ascending, in this stream's epoch) for what the buffer no longer holds. Every seq
    /// of `(after, upto]` must come from one or the other.
    pub(crate) fn range_with<'a>(
        &'a self,
        extra: &'a [Buffered],
        epoch: u64,
        after: u64,
        upto: u64,
    ) -> Result<Vec<&'a Buffered>, Unrecoverable> {
        if epoch != self.epoch {
            return Err(Unrecoverable::EpochMismatch);
        }
        if after > self.last_seq || upto > self.last_seq {
            return Err(Unrecoverable::FutureSeq);
        }
        let available = self.available_from();
        let mut out = Vec::new();
        let mut next = after + 1;
        for entry in extra {
            if entry.seq < next {
                continue;
            }
            if entry.seq > upto || entry.seq >= available || entry.seq != next {
                break;
            }
            out.push(entry);
            next += 1;
        }
        if next <= upto {
            if next < available {
                return Err(Unrecoverable::GapTooOld);
            }
            out.extend(self.range(epoch, next - 1, upto)?);
        }
        Ok(out)
    }
}

/// The hub's seeded generator of epochs (SplitMix64). Epochs are kept below 2^53 so that
/// JavaScript clients read them exactly, and are never 0.
#[derive(Clone, Debug)]
pub(crate) struct Epochs {
    state: u64,
}

impl Epochs {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub(crate) fn next(&mut self) -> u64 {
        loop {
            self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let epoch = mix64(self.state) & ((1 << 53) - 1);
            if epoch != 0 {
                return epoch;
            }
        }
    }
}

/// SplitMix64's output function: 64 well-mixed bits from any 64 (a bijection), for the seeded
/// values the hub derives without keeping a generator (epochs, lifetime jitter).
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Which stream an age timer belongs to (a queue of its own, so that the per-connection timer
/// entries stay small).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TrimKey {
    User(u32),
    Tenant(TenantId),
    Room(TenantId, RoomId),
}

/// The recovery buffers' shared state: the age timers of every stream (a queue of their own, so
/// that the per-connection timer entries stay small) and the hub-wide totals, which
/// `max_buffered_bytes` caps and the stats report.
#[derive(Debug)]
pub(crate) struct Buffers {
    trims: TimerQueue<TrimKey>,
    messages: u64,
    bytes: u64,
    /// Every kept message in the order it was kept (so oldest first, across streams): what the
    /// hub-wide cap sheds. Entries of messages a stream dropped on its own are skipped when they
    /// reach the front, and compacted away when they outnumber the buffered messages.
    order: VecDeque<(TrimKey, u64, u64)>,
}

impl Buffers {
    pub(crate) fn new() -> Self {
        Self { trims: TimerQueue::new(), messages: 0, bytes: 0, order: VecDeque::new() }
    }

    /// The oldest kept message, `(stream, epoch, seq)`, taken off the shedding queue (it may
    /// already be gone from its stream).
    pub(crate) fn pop_oldest(&mut self) -> Option<(TrimKey, u64, u64)> {
        self.order.pop_front()
    }

    /// Whether the shedding queue holds so many stale entries that it should be compacted.
    pub(crate) fn order_needs_compaction(&self) -> bool {
        self.order.len() as u64 > 2 * self.messages + 1024
    }

    /// Keeps only the shedding queue's entries `live` says are still buffered.
    pub(crate) fn compact_order(&mut self, mut live: impl FnMut(&TrimKey, u64, u64) -> bool) {
        self.order.retain(|(key, epoch, seq)| live(key, *epoch, *seq));
    }

    /// Sheds `seq` of `epoch`, the stream's oldest message, for the hub-wide cap. Returns whether
    /// it was still there.
    pub(crate) fn shed(
        &mut self,
        stream: &mut Stream,
        key: TrimKey,
        epoch: u64,
        seq: u64,
        cfg: &Config,
    ) -> bool {
        let before = stream.buffered();
        if !stream.shed_oldest(epoch, seq) {
            return false;
        }
        self.rebuffered(before, stream.buffered());
        self.sync_age_timer(stream, || key, cfg.retention.max_age);
        true
    }

    /// Messages and frame bytes in all recovery buffers.
    pub(crate) fn totals(&self) -> (u64, u64) {
        (self.messages, self.bytes)
    }

    /// Armed age timers (one per stream holding messages).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn armed(&self) -> usize {
        self.trims.len()
    }

    /// When the next stream's oldest message outlives `max_age`.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.trims.peek()
    }

    /// The next stream whose age timer is due at `now`; the caller finds it and hands it to
    /// [`Buffers::handle_timeout`].
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<TrimKey> {
        self.trims.pop_due(now)
    }

    /// A stream's age timer fired: trim it and re-arm for its new oldest message.
    pub(crate) fn handle_timeout(
        &mut self,
        stream: &mut Stream,
        key: TrimKey,
        now: Instant,
        cfg: &Config,
    ) {
        stream.trim_timer = None;
        self.trim(stream, now, cfg);
        self.sync_age_timer(stream, || key, cfg.retention.max_age);
    }

    /// Keeps a message in a stream's buffer (within its bounds) and arms the stream's age timer.
    /// A message larger than the hub-wide cap is not kept (and empties the buffer: it holds a
    /// contiguous range). The caller then sheds to the cap ([`Buffers::pop_oldest`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn keep(
        &mut self,
        stream: &mut Stream,
        key: impl FnOnce() -> TrimKey,
        now: Instant,
        pos: StreamPos,
        frame: &Frame,
        visible: Visible,
        cfg: &Config,
    ) {
        let before = stream.buffered();
        let key = key();
        if frame.len() as u64 > cfg.max_buffered_bytes {
            stream.clear();
        } else {
            stream.keep(now, pos.seq, frame, visible, &cfg.retention);
            // What the stream just dropped to stay in its bounds is usually at the front of the
            // shedding queue (always, while one stream is kept): it goes now, rather than by a
            // compaction that looks each entry's stream up (callgrind, `publish-1`).
            let (epoch, from) = (stream.epoch(), stream.available_from());
            while let Some((k, e, s)) = self.order.front() {
                if *k != key || (*e == epoch && *s >= from) {
                    break;
                }
                self.order.pop_front();
            }
            if stream.buffered().0 > 0 {
                self.order.push_back((key.clone(), pos.epoch, pos.seq));
            }
        }
        self.rebuffered(before, stream.buffered());
        self.sync_age_timer(stream, || key, cfg.retention.max_age);
    }

    /// Trims a stream to its bounds at `now` (the age bound is otherwise applied when it grows).
    /// A stream left empty disarms its age timer; one still holding messages keeps it (it may
    /// fire early, which only re-arms it).
    pub(crate) fn trim(&mut self, stream: &mut Stream, now: Instant, cfg: &Config) {
        let before = stream.buffered();
        stream.trim(now, &cfg.retention);
        self.rebuffered(before, stream.buffered());
        if stream.buffered().0 == 0 {
            if let Some(timer) = stream.trim_timer.take() {
                self.trims.cancel(timer);
            }
        }
    }

    /// A stream is dropped with its buffer and its age timer.
    pub(crate) fn dropped(&mut self, stream: &Stream) {
        self.rebuffered(stream.buffered(), (0, 0));
        if let Some(timer) = stream.trim_timer {
            self.trims.cancel(timer);
        }
    }

    /// Adjusts the totals after a stream changed from `before` to `after`.
    fn rebuffered(&mut self, before: (usize, usize), after: (usize, usize)) {
        self.messages = (self.messages + after.0 as u64) - before.0 as u64;
        self.bytes = (self.bytes + after.1 as u64) - before.1 as u64;
    }

    /// Keeps a stream's age timer in step with its buffer: armed (if it is not already) while
    /// the stream holds messages, to fire just after the oldest outlives `max_age`; disarmed once
    /// it holds none (a keep can empty a buffer: a message larger than the byte bound is not
    /// kept).
    fn sync_age_timer(
        &mut self,
        stream: &mut Stream,
        key: impl FnOnce() -> TrimKey,
        max_age: Duration,
    ) {
        match (stream.trim_timer, stream.oldest_at()) {
            (None, Some(at)) => {
                // Past the end of the clock's range there is no age timer ("never"); the count
                // and byte bounds still hold.
                let due =
                    at.checked_add(max_age).and_then(|d| d.checked_add(Duration::from_nanos(1)));
                if let Some(due) = due {
                    stream.trim_timer = Some(self.trims.insert(due, key()));
                }
            }
            (Some(timer), None) => {
                self.trims.cancel(timer);
                stream.trim_timer = None;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::StreamName;

    #[test]
    fn seqs_start_at_one_and_grow_by_one() {
        let mut s = Stream::new(7);
        assert_eq!(s.position(), StreamPos { epoch: 7, seq: 0 });
        assert_eq!(s.assign().seq, 1);
        assert_eq!(s.assign().seq, 2);
        assert_eq!(s.position(), StreamPos { epoch: 7, seq: 2 });
    }

    fn frame(n: usize) -> Frame {
        Frame::new(&"x".repeat(n))
    }

    #[test]
    fn the_buffer_replays_exact_ranges_and_refuses_what_it_no_longer_holds() {
        let t0 = Instant::now();
        let limits =
            Retention { max_messages: 3, max_bytes: 1000, max_age: Duration::from_secs(60) };
        let mut s = Stream::new(9);
        for _ in 0..5 {
            let pos = s.assign();
            s.keep(t0, pos.seq, &frame(10), Scope::All.into(), &limits);
        }
        // Holds seqs 3, 4, 5.
        assert_eq!(s.available_from(), 3);
        fn seqs<'a>(r: Result<impl Iterator<Item = &'a Buffered>, Unrecoverable>) -> Vec<u64> {
            r.unwrap().map(|b| b.seq).collect()
        }
        assert_eq!(seqs(s.range(9, 2, 5)), vec![3, 4, 5]);
        assert_eq!(seqs(s.range(9, 3, 4)), vec![4]);
        assert_eq!(seqs(s.range(9, 5, 5)), Vec::<u64>::new());
        assert_eq!(s.range(9, 1, 5).err(), Some(Unrecoverable::GapTooOld));
        assert_eq!(s.range(8, 4, 5).err(), Some(Unrecoverable::EpochMismatch));
        assert_eq!(s.range(9, 6, 6).err(), Some(Unrecoverable::FutureSeq));
        // Nothing missing is always recoverable, even when nothing is buffered any more.
        s.trim(t0 + Duration::from_secs(61), &limits);
        assert_eq!(s.buffered(), (0, 0));
        assert_eq!(seqs(s.range(9, 5, 5)), Vec::<u64>::new());
        assert_eq!(s.range(9, 4, 5).err(), Some(Unrecoverable::GapTooOld));
    }

    #[test]
    fn the_buffer_respects_its_byte_bound() {
        let t0 = Instant::now();
        let limits =
            Retention { max_messages: 100, max_bytes: 25, max_age: Duration::from_secs(60) };
        let mut s = Stream::new(1);
        for _ in 0..10 {
            let pos = s.assign();
            s.keep(t0, pos.seq, &frame(10), Scope::All.into(), &limits);
            assert!(s.buffered().1 <= 25);
        }
        assert_eq!(s.buffered(), (2, 20));
    }

    #[test]
    fn epochs_are_seeded_distinct_and_js_safe() {
        let mut a = Epochs::new(1);
        let mut b = Epochs::new(1);
        let xs: Vec<u64> = (0..1000).map(|_| a.next()).collect();
        let ys: Vec<u64> = (0..1000).map(|_| b.next()).collect();
        assert_eq!(xs, ys, "same seed, same epochs");
        let mut sorted = xs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), xs.len(), "no repeats");
        assert!(xs.iter().all(|&e| e != 0 && e < (1 << 53)));
        assert_ne!(Epochs::new(2).next(), xs[0]);
    }

    #[test]
    fn stream_names_match_the_wire() {
        assert_eq!(StreamName::User.to_string(), "u");
        assert_eq!(StreamName::Tenant.to_string(), "t");
        assert_eq!(StreamName::Room(RoomId::from("lobby")).to_string(), "r:lobby");
    }
}
