//! Streams: every message belongs to one (a user's, a room's, a tenant's broadcast), and gets the
//! next sequence number of that stream's current epoch.
//!
//! Sequence assignment happens in exactly one place, [`Stream::assign`]; a clustered hub will
//! replace that seam with positions handed out by a broker, so nothing else may assume that seqs
//! are minted locally.

use std::fmt;

use crate::ids::RoomId;

/// Which stream a message belongs to, as named on the wire (`"u"`, `"t"`, `"r:<room>"`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StreamName {
    /// The user's own stream (targets `User`, `Thread`, `Connection`). Wire name `"u"`.
    User,
    /// The tenant's broadcast stream (`Tenant` target, and `Everyone`). Wire name `"t"`.
    Tenant,
    /// A room's stream. Wire name `"r:<room>"`.
    Room(RoomId),
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamName::User => f.write_str("u"),
            StreamName::Tenant => f.write_str("t"),
            StreamName::Room(room) => write!(f, "r:{room}"),
        }
    }
}

/// A position in a stream: the epoch the stream was created with and a sequence number in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamPos {
    /// Identifies one incarnation of the stream. A stream created anew (a user retired and seen
    /// again, a room emptied and joined again) gets a new epoch, so positions from before cannot
    /// be mistaken for positions in it.
    pub epoch: u64,
    /// The sequence number: 1 for the first message of an epoch, +1 per message. 0 means "nothing
    /// yet".
    pub seq: u64,
}

/// The sequence state of one stream.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stream {
    epoch: u64,
    last_seq: u64,
}

impl Stream {
    pub(crate) fn new(epoch: u64) -> Self {
        Self { epoch, last_seq: 0 }
    }

    /// The position of the last message (seq 0 if none yet).
    pub(crate) fn position(&self) -> StreamPos {
        StreamPos { epoch: self.epoch, seq: self.last_seq }
    }

    /// Assigns the next position to a message. The one seam where seqs are minted.
    pub(crate) fn assign(&mut self) -> StreamPos {
        self.last_seq += 1;
        StreamPos { epoch: self.epoch, seq: self.last_seq }
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
            let mut z = self.state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let epoch = z & ((1 << 53) - 1);
            if epoch != 0 {
                return epoch;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_start_at_one_and_grow_by_one() {
        let mut s = Stream::new(7);
        assert_eq!(s.position(), StreamPos { epoch: 7, seq: 0 });
        assert_eq!(s.assign().seq, 1);
        assert_eq!(s.assign().seq, 2);
        assert_eq!(s.position(), StreamPos { epoch: 7, seq: 2 });
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
