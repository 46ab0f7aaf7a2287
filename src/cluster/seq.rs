//! The order of one stream's messages as they come over the bus: the position delivered last,
//! the live messages held behind a gap, and the repair in flight. Pure bookkeeping: the hub does
//! the delivering and the asking.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::OpId;
use crate::ids::StreamPos;

/// What became of a live message handed to [`Sequencer::arrive`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Kept; take ready messages with [`Sequencer::pop_ready`].
    Kept,
    /// At or below the last delivered seq: already delivered, dropped.
    Duplicate,
    /// Of the epoch the stream last left: a message that was on its way when the stream moved
    /// on (its live channel is slower than the reply that moved it), dropped. Taking it for a
    /// new epoch would move the stream back.
    Left {
        /// It is past what the stream delivered of that epoch: the log may be back in it (a
        /// failover lost the newer epoch), which only reading the log tells.
        past: bool,
    },
    /// The stream has a new epoch: what was delivered before belongs to another incarnation. The
    /// hub resets its local stream and tells the connections (`resync`); the message is kept.
    NewEpoch {
        /// The epoch delivered until now.
        old: u64,
    },
    /// More messages are held behind a gap than allowed; nothing was kept. The caller gives up
    /// on the gap ([`Sequencer::skip_gap`]) and offers the message again.
    Overflow,
}

/// One stream's sequencing state on one node.
#[derive(Debug)]
pub(crate) struct Sequencer {
    /// The last position delivered (or the top read at subscription). `None` until the
    /// subscription is confirmed: messages that come before are held.
    top: Option<StreamPos>,
    /// Live (or fetched) messages not yet delivered, by seq, in `top.epoch` (or, before the top
    /// is known, in `pending_epoch`).
    held: BTreeMap<u64, Arc<str>>,
    /// The epoch of the held messages while the top is unknown.
    pending_epoch: Option<u64>,
    /// The fetch in flight repairing the gap after `top`.
    pub(crate) repair: Option<OpId>,
    /// Where the stream was when it last left its epoch (a new epoch arrived, or it started
    /// over): epochs are never reused, so a message of it is late, not the start of another; and
    /// a stream taken back to it (the log says so, after a failover lost the newer epoch) goes
    /// on from there ([`Sequencer::restart`]).
    left: Option<StreamPos>,
}

impl Sequencer {
    /// A stream whose subscription is not confirmed yet.
    pub(crate) fn new() -> Self {
        Self { top: None, held: BTreeMap::new(), pending_epoch: None, repair: None, left: None }
    }

    /// The last position delivered, once known.
    pub(crate) fn top(&self) -> Option<StreamPos> {
        self.top
    }

    /// The subscription is confirmed and the stream's top read: held messages at or below it are
    /// dropped (the top's are already in the log; nobody on this node was owed them live). If
    /// the held ones are of another epoch than the top, they are newer (they came after the
    /// subscription): the top's epoch is taken as ended.
    pub(crate) fn confirmed(&mut self, top: StreamPos) -> Option<Arrival> {
        self.top = Some(top);
        match self.pending_epoch.take() {
            Some(epoch) if epoch != top.epoch && top.seq > 0 => {
                self.top = Some(StreamPos { epoch, seq: 0 });
                Some(Arrival::NewEpoch { old: top.epoch })
            }
            Some(epoch) => {
                self.top = Some(StreamPos { epoch, seq: top.seq });
                self.held = self.held.split_off(&(top.seq + 1));
                None
            }
            None => None,
        }
    }

    /// A live message arrived at `pos`.
    pub(crate) fn arrive(&mut self, pos: StreamPos, payload: Arc<str>, max_held: u32) -> Arrival {
        // No message is at seq 0: dropped before it could start a new epoch it does not carry.
        if pos.seq == 0 {
            return Arrival::Duplicate;
        }
        let Some(top) = self.top else {
            // Before the top is known: hold, keeping one epoch (the newest seen).
            if self.pending_epoch.is_some_and(|e| e != pos.epoch) {
                self.held.clear();
            }
            self.pending_epoch = Some(pos.epoch);
            if self.held.len() >= max_held as usize {
                return Arrival::Overflow;
            }
            self.held.insert(pos.seq, payload);
            return Arrival::Kept;
        };
        if let Some(left) = self.left.filter(|l| l.epoch == pos.epoch && pos.epoch != top.epoch) {
            return Arrival::Left { past: pos.seq > left.seq };
        }
        let mut outcome = Arrival::Kept;
        // A stream with nothing yet adopts the first epoch it sees.
        if pos.epoch != top.epoch && !(top.seq == 0 && top.epoch == 0) {
            self.left = Some(top);
            self.held.clear();
            self.repair = None;
            outcome = Arrival::NewEpoch { old: top.epoch };
            self.top = Some(StreamPos { epoch: pos.epoch, seq: 0 });
        } else if top.seq == 0 && top.epoch == 0 {
            self.top = Some(StreamPos { epoch: pos.epoch, seq: 0 });
        }
        let top = self.top.expect("set above");
        if pos.seq <= top.seq {
            return Arrival::Duplicate;
        }
        if self.held.len() >= max_held as usize && !self.held.contains_key(&pos.seq) {
            return Arrival::Overflow;
        }
        self.held.insert(pos.seq, payload);
        outcome
    }

    /// The next message to deliver, if the one right after `top` is held.
    pub(crate) fn pop_ready(&mut self) -> Option<(StreamPos, Arc<str>)> {
        let top = self.top.as_mut()?;
        let (&seq, _) = self.held.first_key_value()?;
        if seq != top.seq + 1 {
            return None;
        }
        let payload = self.held.remove(&seq).expect("just seen");
        top.seq = seq;
        Some((*top, payload))
    }

    /// The seq after which the log must be read to fill a gap, if there is a gap and no repair is
    /// in flight.
    pub(crate) fn gap(&self) -> Option<u64> {
        let top = self.top?;
        let (&first, _) = self.held.first_key_value()?;
        (first > top.seq + 1 && self.repair.is_none()).then_some(top.seq)
    }

    /// Entries fetched from the log after `read_after` (the seq delivered last when the fetch
    /// was asked) arrived, with the log's top `log_top`. Returns the seqs that are lost for good
    /// (the log no longer holds them) as `(after, upto)`, or a new epoch if the log's is not
    /// ours.
    pub(crate) fn fetched(
        &mut self,
        log_top: StreamPos,
        read_after: u64,
        entries: impl IntoIterator<Item = (u64, Arc<str>)>,
    ) -> Fetched {
        self.repair = None;
        let Some(top) = self.top else { return Fetched::Stale };
        if log_top.epoch != top.epoch && !(top.epoch == 0 && top.seq == 0) {
            if log_top.seq == 0 && log_top.epoch == 0 {
                // The stream is gone from the log (expired or the engine restarted empty).
                return Fetched::Gone;
            }
            return Fetched::NewEpoch { epoch: log_top.epoch };
        }
        if top.epoch == 0 && top.seq == 0 {
            self.top = Some(StreamPos { epoch: log_top.epoch, seq: 0 });
        }
        if log_top.seq < read_after {
            // The log went backwards in the same epoch: a failover lost its tail. (Only what was
            // delivered before the read shows it: seqs delivered live since, while the answer
            // was on its way, may have been appended after it.)
            return Fetched::Backwards { log_top };
        }
        for (seq, payload) in entries {
            if seq > top.seq {
                self.held.entry(seq).or_insert(payload);
            }
        }
        let next = self.held.first_key_value().map(|(&s, _)| s);
        match next {
            Some(first) if first > top.seq + 1 => Fetched::Lost { after: top.seq, upto: first - 1 },
            None if log_top.seq > top.seq => {
                // Nothing came back although the log is ahead: it no longer holds them.
                Fetched::Lost { after: top.seq, upto: log_top.seq }
            }
            Some(_) => Fetched::Repaired,
            // Nothing held, the log no further: there was no gap.
            None => Fetched::Current,
        }
    }

    /// Gives up on the seqs up to `upto` (lost): delivery continues after them.
    pub(crate) fn skip_to(&mut self, upto: u64) {
        if let Some(top) = self.top.as_mut() {
            if upto > top.seq {
                top.seq = upto;
            }
        }
        self.held = self.held.split_off(&(upto + 1));
    }

    /// Gives up on the current gap: delivery continues with the first held message.
    pub(crate) fn skip_gap(&mut self) -> Option<(u64, u64)> {
        let top = self.top?;
        let (&first, _) = self.held.first_key_value()?;
        (first > top.seq + 1).then(|| {
            self.skip_to(first - 1);
            (top.seq, first - 1)
        })
    }

    /// Starts the stream over in `epoch` (after a rotation or a new epoch): at seq 0, or, if
    /// that is the epoch it last left, where it was there (what it delivered of that epoch is
    /// the log's, and is not delivered again). Returns where it starts.
    pub(crate) fn restart(&mut self, epoch: u64) -> StreamPos {
        let start = match (self.left, self.top) {
            (Some(left), Some(top)) if left.epoch == epoch && top.epoch != epoch => left,
            _ => StreamPos { epoch, seq: 0 },
        };
        if let Some(top) = self.top.filter(|top| top.epoch != epoch) {
            self.left = Some(top);
        }
        self.top = Some(start);
        self.held.clear();
        self.repair = None;
        self.pending_epoch = None;
        start
    }
}

/// The outcome of a fetch that repaired a gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fetched {
    /// The gap is filled: pop the ready messages.
    Repaired,
    /// The log holds nothing past what was delivered: there was nothing to repair.
    Current,
    /// Seqs `(after, upto]` are no longer in the log: tell the connections, then
    /// [`Sequencer::skip_to`] `upto`.
    Lost { after: u64, upto: u64 },
    /// The log has another epoch than ours.
    NewEpoch { epoch: u64 },
    /// The log holds no epoch any more.
    Gone,
    /// The log's top is below what was delivered, in the same epoch.
    Backwards { log_top: StreamPos },
    /// The stream's subscription is not confirmed (the fetch was for a resume only).
    Stale,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(epoch: u64, seq: u64) -> StreamPos {
        StreamPos { epoch, seq }
    }

    fn msg(n: u64) -> Arc<str> {
        Arc::from(n.to_string())
    }

    fn drain(s: &mut Sequencer) -> Vec<u64> {
        std::iter::from_fn(|| s.pop_ready()).map(|(pos, _)| pos.seq).collect()
    }

    #[test]
    fn in_order_messages_are_delivered_and_duplicates_dropped() {
        let mut s = Sequencer::new();
        assert_eq!(s.confirmed(p(9, 3)), None);
        assert_eq!(s.arrive(p(9, 4), msg(4), 10), Arrival::Kept);
        assert_eq!(drain(&mut s), [4]);
        assert_eq!(s.arrive(p(9, 4), msg(4), 10), Arrival::Duplicate);
        assert_eq!(s.arrive(p(9, 2), msg(2), 10), Arrival::Duplicate);
        assert_eq!(s.top(), Some(p(9, 4)));
    }

    #[test]
    fn a_gap_is_held_until_the_fetch_fills_it() {
        let mut s = Sequencer::new();
        s.confirmed(p(9, 0));
        s.arrive(p(9, 1), msg(1), 10);
        assert_eq!(drain(&mut s), [1]);
        s.arrive(p(9, 4), msg(4), 10);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.gap(), Some(1));
        let entries = [(2, msg(2)), (3, msg(3)), (4, msg(4))];
        assert_eq!(s.fetched(p(9, 4), 1, entries), Fetched::Repaired);
        assert_eq!(drain(&mut s), [2, 3, 4]);
    }

    #[test]
    fn a_gap_the_log_no_longer_holds_is_reported_lost() {
        let mut s = Sequencer::new();
        s.confirmed(p(9, 5));
        s.arrive(p(9, 9), msg(9), 10);
        assert_eq!(
            s.fetched(p(9, 9), 5, [(8, msg(8)), (9, msg(9))]),
            Fetched::Lost { after: 5, upto: 7 }
        );
        s.skip_to(7);
        assert_eq!(drain(&mut s), [8, 9]);
    }

    #[test]
    fn messages_before_the_top_is_known_are_held_and_trimmed_by_it() {
        let mut s = Sequencer::new();
        s.arrive(p(9, 6), msg(6), 10);
        s.arrive(p(9, 7), msg(7), 10);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.confirmed(p(9, 6)), None);
        assert_eq!(drain(&mut s), [7]);
    }

    #[test]
    fn a_new_epoch_restarts_the_stream() {
        let mut s = Sequencer::new();
        s.confirmed(p(9, 5));
        assert_eq!(s.arrive(p(11, 1), msg(1), 10), Arrival::NewEpoch { old: 9 });
        assert_eq!(drain(&mut s), [1]);
        assert_eq!(s.top(), Some(p(11, 1)));
        // A late message of the epoch it left is no new start; nor after a restart.
        assert_eq!(s.arrive(p(9, 6), msg(6), 10), Arrival::Left { past: true });
        assert_eq!(s.arrive(p(9, 5), msg(5), 10), Arrival::Left { past: false });
        assert_eq!(s.restart(12), p(12, 0));
        assert_eq!(s.arrive(p(11, 2), msg(2), 10), Arrival::Left { past: true });
        assert_eq!(s.top(), Some(p(12, 0)));
        // Taken back to the epoch it left, it goes on from where it was there.
        assert_eq!(s.restart(11), p(11, 1));
        assert_eq!(s.arrive(p(11, 1), msg(1), 10), Arrival::Duplicate);
        assert_eq!(s.arrive(p(12, 1), msg(1), 10), Arrival::Left { past: true });
        // Any other epoch starts at 0.
        assert_eq!(s.restart(13), p(13, 0));
        // An empty stream adopts the first epoch without a reset.
        let mut s = Sequencer::new();
        s.confirmed(p(0, 0));
        assert_eq!(s.arrive(p(4, 1), msg(1), 10), Arrival::Kept);
        assert_eq!(drain(&mut s), [1]);
    }

    #[test]
    fn held_messages_are_bounded() {
        let mut s = Sequencer::new();
        s.confirmed(p(9, 0));
        for n in 2..4 {
            assert_eq!(s.arrive(p(9, n), msg(n), 2), Arrival::Kept);
        }
        assert_eq!(s.arrive(p(9, 5), msg(5), 2), Arrival::Overflow);
        assert_eq!(s.skip_gap(), Some((0, 1)));
        assert_eq!(drain(&mut s), [2, 3]);
    }

    #[test]
    fn a_log_that_went_backwards_is_reported() {
        let mut s = Sequencer::new();
        s.confirmed(p(9, 8));
        s.arrive(p(9, 12), msg(12), 10);
        assert_eq!(s.fetched(p(9, 6), 8, []), Fetched::Backwards { log_top: p(9, 6) });
        // Below seqs delivered after the read, but not below what was delivered before it: the
        // log had not taken those yet.
        let mut s = Sequencer::new();
        s.confirmed(p(9, 8));
        assert_eq!(s.fetched(p(9, 6), 6, []), Fetched::Current);
        assert_eq!(s.top(), Some(p(9, 8)), "not moved back");
    }
}
