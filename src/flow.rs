//! Flow control: how a frame reaches one connection. Live event frames are offered under the
//! connection's backpressure (a low-priority frame is skipped for a connection that is behind, a
//! critical one that does not fit dooms the connection); control frames and replays are
//! delivered under the hard limit only; a `skipped` notice precedes the next frame after skips.
//! It owns the frame writer and the per-tier traffic meters.

use crate::config::{Config, Tier};
use crate::connection::{Connection, Connections, OFF_LANE};
use crate::envelope::Priority;
use crate::frame::Frame;
use crate::ids::ConnId;
use crate::outbox::Outbox;
use crate::protocol::FrameWriter;
use crate::stats::{MeterClock, Meters, Rates};

/// What happened when a frame was offered to one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    Delivered,
    /// Low priority, and the connection is over its soft limit.
    Skipped,
    /// The connection is in its resume window; the buffer will replay it.
    Held,
    /// Critical, and it does not fit under the hard limit: the caller closes the connection.
    Overflow,
}

/// The frame writer, the per-tier meters and their clock.
#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) writer: FrameWriter,
    tiers: [Meters; 4],
    pub(crate) clock: MeterClock,
}

impl Flow {
    pub(crate) fn new(clock: MeterClock) -> Self {
        Self { writer: FrameWriter::default(), tiers: [Meters::default(); 4], clock }
    }

    /// One tier's meters.
    pub(crate) fn tier(&mut self, tier: Tier) -> &mut Meters {
        &mut self.tiers[tier_index(tier)]
    }

    /// Folds one fan-out's live deliveries per tier into the tier meters.
    pub(crate) fn count_tiers(&mut self, tally: TierTally) {
        for (meters, n) in self.tiers.iter_mut().zip(tally.0) {
            if n > 0 {
                meters.delivered.add(self.clock, n);
            }
        }
    }

    /// Moving averages of one tier's traffic.
    pub(crate) fn tier_rates(&self, tier: Tier) -> Rates {
        self.tiers[tier_index(tier)].rates(self.clock)
    }

    /// Queues a frame for a connection unconditionally (control frames and replays), preceded by
    /// a `skipped` notice if frames were skipped since its last delivery.
    pub(crate) fn deliver(
        &mut self,
        out: &mut Outbox,
        conns: &mut Connections,
        idx: u32,
        frame: &Frame,
    ) {
        let id = conns.id_of(idx);
        self.deliver_to(out, id, conns.get_mut(idx), frame);
    }

    /// [`Flow::deliver`] to a connection record already looked up (`id` is its id).
    #[inline(always)]
    fn deliver_to(&mut self, out: &mut Outbox, id: ConnId, conn: &mut Connection, frame: &Frame) {
        if conn.skipped() > 0 {
            self.notify_skipped(out, id, conn);
        }
        conn.queued(frame.len() as u64);
        out.deliver(id, frame);
    }

    /// The `skipped` notice that precedes a connection's next frame after skips.
    #[cold]
    #[inline(never)]
    fn notify_skipped(&mut self, out: &mut Outbox, id: ConnId, conn: &mut Connection) {
        let notice = self.writer.skipped(conn.take_skipped());
        out.deliver(id, &notice);
        conn.queued(notice.len() as u64);
    }

    /// The fast lane of one fan-out of `frame` at `priority`: see [`Lane`].
    pub(crate) fn lane(&self, frame: &Frame, priority: Priority, cfg: &Config) -> Lane {
        let len = frame.len() as u64;
        // The most a connection may have unwritten for the frame to fit: under the hard limit,
        // and for a thinking frame under the soft limit too (a connection with nothing
        // unwritten gets it even when it does not fit there, but through the full offer).
        // Below `OFF_LANE`, so that the lane's one comparison also excludes the connections held
        // or owing a notice, and that a count it takes does not reach that bit when the frame is
        // added (whatever the limit: a count past it goes through the full offer).
        let room = |limit: u64| limit.checked_sub(len).map_or(0, |l| l.saturating_add(1));
        let mut bound = room(cfg.max_unwritten_bytes.min(OFF_LANE - 1));
        if priority == Priority::Low {
            bound = bound.min(room(cfg.max_inflight_bytes));
        }
        Lane { bound, len, clock: self.clock }
    }

    /// Offers a live event frame under the connection's backpressure, to a connection record
    /// already looked up (`id` is its id): a fan-out looks each recipient up once, for its
    /// filter, this offer and what it marks as sent. The offer is not counted in the hub's stats
    /// here (deliveries, frames held back, thinking frames skipped): the fan-out counts them at
    /// its end ([`Outbox::count_deliveries`], [`Outbox::count_offers`]). A fan-out delivers
    /// through its [`Lane`] where it can, and calls this for the other recipients only (held,
    /// behind, after skips), so this is not inlined into its loop.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn offer_to(
        &mut self,
        out: &mut Outbox,
        id: ConnId,
        conn: &mut Connection,
        frame: &Frame,
        priority: Priority,
        cfg: &Config,
        tally: &mut TierTally,
    ) -> Offer {
        if conn.is_held() {
            return Offer::Held;
        }
        let after = conn.unwritten() + notice_len(conn.skipped()) + frame.len() as u64;
        // Skipped only for a connection that is actually behind: one that has confirmed
        // everything gets even a thinking frame larger than the soft limit.
        if priority == Priority::Low && conn.unwritten() > 0 && after > cfg.max_inflight_bytes {
            conn.skip();
            return Offer::Skipped;
        }
        if after > cfg.max_unwritten_bytes {
            return Offer::Overflow;
        }
        // Metered on the connection, whose record this already touches: a fan-out must not
        // visit every recipient's user state (the user view sums its connections' meters).
        conn.count_delivered(self.clock);
        tally.0[tier_index(conn.tier())] += 1;
        if conn.skipped() > 0 {
            self.notify_skipped(out, id, conn);
        }
        conn.queued(frame.len() as u64);
        // Counted by the fan-out, once for all of its deliveries.
        out.deliver_in_run(id, frame);
        Offer::Delivered
    }

    /// Offers a control frame (`pong`, `error`, `refresh_required`, `joined`, …) under the hard
    /// limit: a client that never reads cannot make them pile up. `Overflow`: the caller closes
    /// the connection with `SlowConsumer`.
    pub(crate) fn control(
        &mut self,
        out: &mut Outbox,
        conns: &mut Connections,
        idx: u32,
        frame: &Frame,
        cfg: &Config,
    ) -> Offer {
        let conn = conns.get(idx);
        if conn.unwritten() + notice_len(conn.skipped()) + frame.len() as u64
            > cfg.max_unwritten_bytes
        {
            return Offer::Overflow;
        }
        self.deliver(out, conns, idx, frame);
        Offer::Delivered
    }
}

/// What one fan-out decides for every recipient at once: a connection that is live (not held),
/// owes no `skipped` notice and has less than `bound` bytes unwritten takes the frame, whatever
/// its priority ([`Lane::takes`]); [`Flow::offer_to`] decides for the others, with the same
/// outcome for these. Per recipient that is three comparisons instead of the offer's sums and
/// priority checks (callgrind, `room-1000`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lane {
    /// Unwritten bytes below this: the frame fits under the hard limit, and for a thinking frame
    /// under the soft limit. 0 when it never fits that way.
    bound: u64,
    /// The frame's length.
    pub(crate) len: u64,
    /// The meters' clock during this fan-out.
    pub(crate) clock: MeterClock,
}

impl Lane {
    /// Whether `conn` takes the frame without a closer look: [`Flow::offer_to`] would deliver
    /// it, with no `skipped` notice before it.
    #[inline(always)]
    pub(crate) fn takes(&self, conn: &Connection) -> bool {
        // `lane_load` is `OFF_LANE` or more when it is held or owes a notice (see there).
        conn.lane_load() < self.bound
    }

    /// Delivers the frame to `conn` (which [`Lane::takes`] it), as [`Flow::offer_to`] would,
    /// except for queuing it: the caller writes the recipient into its run's slots
    /// ([`Outbox::run_slots`]).
    #[inline(always)]
    pub(crate) fn deliver(&self, conn: &mut Connection, tally: &mut TierTally) {
        conn.count_delivered(self.clock);
        tally.0[tier_index(conn.tier())] += 1;
        conn.queued(self.len);
    }
}

/// Live deliveries per tier during one fan-out, for [`Flow::count_tiers`] at its end: a count
/// per recipient rather than a meter update. (A fan-out reaches at most `u32::MAX` connections,
/// the most the slot table can hold.)
#[derive(Debug, Default)]
pub(crate) struct TierTally([u32; 4]);

/// The length of the `skipped` notice that precedes the next frame after `skipped` skips:
/// `{"type":"skipped","count":N}`. Backpressure checks count it with the frame it precedes.
pub(crate) fn notice_len(skipped: u32) -> u64 {
    if skipped == 0 { 0 } else { 27 + u64::from(skipped.checked_ilog10().unwrap_or(0) + 1) }
}

/// The largest a `resumed` frame answering a `resume` that names `names` can be: one report per
/// name at its longest (longest reason, largest numbers). A replay leaves this much room under
/// `max_unwritten_bytes` so that the `resumed` frame always fits after it.
pub(crate) fn resumed_bound<'a>(names: impl Iterator<Item = &'a str>) -> u64 {
    // `{"type":"resumed","recovered":false,"streams":{}}`
    const FRAME: u64 = 49;
    // `{"recovered":false,"reason":"unknown_stream","epoch":E,"seq":S,"available_from":A,
    // "replayed":N}` with every number at its type's maximum.
    const REPORT: u64 = 161;
    // Each name as JSON escapes it, in quotes, then a colon; a comma between reports.
    let (n, len) =
        names.fold((0u64, 0), |(n, len), name| (n + 1, len + REPORT + 3 + json_str_len(name)));
    FRAME + len + n.saturating_sub(1)
}

/// The length of `s` inside a JSON string as the frame writer escapes it (quotes excluded).
fn json_str_len(s: &str) -> u64 {
    s.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

fn tier_index(tier: Tier) -> usize {
    match tier {
        Tier::Free => 0,
        Tier::Early => 1,
        Tier::Mid => 2,
        Tier::Enterprise => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection record with `unwritten` bytes, `skipped` skips, in its resume window if
    /// `held`.
    fn conn(unwritten: u64, skipped: u32, held: bool) -> Connection {
        use crate::ids::Roles;
        use crate::labels::Labels;
        let now = std::time::Instant::now();
        let mut c =
            Connection::new(now, 0, Tier::Free, Roles::none(), Labels::none(), None, held, 0, 0);
        c.queued(unwritten);
        for _ in 0..skipped {
            c.skip();
        }
        c
    }

    /// Wherever the lane takes a frame, the full offer delivers it too, with no notice before
    /// it and the same bytes counted; and the lane takes the common case.
    #[test]
    fn the_lane_takes_only_what_the_offer_delivers() {
        let clock = MeterClock::new(std::time::Duration::ZERO, std::time::Duration::from_secs(60));
        let mut taken = 0;
        for (inflight, unwritten_max) in [(100, 100), (100, 250), (1, 1000), (500, 501)] {
            let cfg = Config {
                max_inflight_bytes: inflight,
                max_unwritten_bytes: unwritten_max,
                ..Config::default()
            };
            for len in [1usize, 2, 50, 99, 100, 101, 249, 250, 251, 500, 1000, 1001] {
                let frame = Frame::new(&"x".repeat(len));
                for priority in [Priority::Low, Priority::Critical] {
                    let mut flow = Flow::new(clock);
                    let lane = flow.lane(&frame, priority, &cfg);
                    let edges = [0, 1, 2, 49, 50, 51, 99, 100, 101, 150, 151, 249, 250, 251, 999];
                    for unwritten in edges {
                        for (skipped, held) in [(0, false), (1, false), (0, true)] {
                            let mut fast = conn(unwritten, skipped, held);
                            if !lane.takes(&fast) {
                                continue;
                            }
                            taken += 1;
                            let id = ConnId::new(0, 1);
                            let (mut out, mut tally) = (Outbox::default(), TierTally::default());
                            out.open_run(&frame, 1);
                            lane.deliver(&mut fast, &mut tally);
                            let (slots, filled) = out.run_slots();
                            slots[filled] = id;
                            out.fill_to(filled + 1);
                            out.close_run();
                            let mut full = conn(unwritten, skipped, held);
                            let (mut out2, mut tally2) = (Outbox::default(), TierTally::default());
                            out2.open_run(&frame, 1);
                            let offer = flow.offer_to(
                                &mut out2,
                                id,
                                &mut full,
                                &frame,
                                priority,
                                &cfg,
                                &mut tally2,
                            );
                            out2.close_run();
                            let case = (inflight, unwritten_max, len, priority, unwritten, skipped);
                            assert_eq!(offer, Offer::Delivered, "{case:?}");
                            assert_eq!(fast.unwritten(), full.unwritten(), "{case:?}");
                            assert_eq!(tally.0, tally2.0, "{case:?}");
                            assert!(out.pop().is_some() && out.is_empty(), "{case:?}");
                            assert!(out2.pop().is_some() && out2.is_empty(), "{case:?}");
                        }
                    }
                }
            }
        }
        let cfg = Config::default();
        let lane = Flow::new(clock).lane(&Frame::new("{}"), Priority::Low, &cfg);
        assert!(lane.takes(&conn(0, 0, false)) && taken > 100, "{taken}");
    }

    /// Held connections and those owing a `skipped` notice stay out of the lane whatever the
    /// limits (its one comparison reads them from the count's top bit), the bit follows both as
    /// they change, and the count itself never shows it.
    #[test]
    fn the_lane_leaves_held_and_skipped_connections_to_the_offer() {
        let clock = MeterClock::new(std::time::Duration::ZERO, std::time::Duration::from_secs(60));
        let cfg = Config {
            max_unwritten_bytes: u64::MAX,
            max_inflight_bytes: u64::MAX,
            ..Config::default()
        };
        for priority in [Priority::Low, Priority::Critical] {
            let lane = Flow::new(clock).lane(&Frame::new("{}"), priority, &cfg);
            let mut c = conn(100, 0, true);
            assert!(!lane.takes(&c), "held");
            assert_eq!(c.unwritten(), 100);
            c.written(30);
            assert_eq!(c.unwritten(), 70);
            assert!(!lane.takes(&c), "still held");
            assert!(c.end_hold());
            assert!(lane.takes(&c), "live");
            c.skip();
            c.skip();
            assert!(!lane.takes(&c), "owes a notice");
            c.queued(5);
            assert_eq!(c.unwritten(), 75);
            c.written(1000);
            assert_eq!(c.unwritten(), 0);
            assert!(!lane.takes(&c), "still owes a notice");
            assert_eq!(c.take_skipped(), 2);
            assert!(lane.takes(&c), "notice taken");
            c.await_streams();
            assert!(!lane.takes(&c), "awaiting its streams");
            c.streams_ready(0, 0, true);
            assert!(!lane.takes(&c), "in its resume window");
            c.streams_ready(0, 0, false);
            assert!(lane.takes(&c) && c.unwritten() == 0);
            c.queued(1 << 40);
            assert!(lane.takes(&c) && c.unwritten() == 1 << 40);
        }
    }

    #[test]
    fn the_notice_length_is_the_written_notice_length() {
        let mut w = FrameWriter::default();
        for n in [1, 9, 10, 99, 100, 12345, u32::MAX] {
            assert_eq!(notice_len(n), w.skipped(n).len() as u64, "count {n}");
        }
        assert_eq!(notice_len(0), 0);
    }

    #[test]
    fn the_resumed_bound_is_the_longest_resumed_frame() {
        use crate::protocol::StreamReport;
        let worst = StreamReport {
            recovered: false,
            reason: Some("unknown_stream"),
            epoch: u64::MAX,
            seq: u64::MAX,
            available_from: u64::MAX,
            replayed: u32::MAX,
        };
        let mut w = FrameWriter::default();
        let cases: [&[&str]; 4] = [&[], &["u"], &["u", "t", "r:lobby"], &["a\"b\\c\n\u{1}\u{7f}é"]];
        for names in cases {
            let reports: Vec<(String, StreamReport)> =
                names.iter().map(|n| ((*n).to_owned(), worst.clone())).collect();
            let exact = w.resumed(false, &reports).len() as u64;
            assert_eq!(resumed_bound(names.iter().copied()), exact, "{names:?}");
            // Every other report is shorter.
            let best: Vec<(String, StreamReport)> = reports
                .iter()
                .map(|(n, r)| (n.clone(), StreamReport { recovered: true, reason: None, ..*r }))
                .collect();
            assert!(w.resumed(true, &best).len() as u64 <= exact);
        }
    }
}
