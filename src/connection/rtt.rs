//! A connection's round-trip time, measured from the hub's own heartbeat pings: from the instant
//! the hub asked for a `Ping` to the transport's pong. A client's `ping` frame (which the hub
//! answers with a `pong` frame) never feeds it: the client would be timing itself.
//!
//! Eight bytes per connection: the last sample and a smoothed estimate in microseconds, the
//! latter an exponentially weighted moving average with TCP's gain of 1/8 (RFC 6298's `SRTT`).

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use super::Connection;

/// A connection's round-trip times, as [`ConnView::round_trip`](crate::ConnView::round_trip)
/// shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoundTrip {
    /// The latest sample.
    pub last: Duration,
    /// The smoothed estimate: each sample moves it an eighth of the way (the first sets it).
    pub smoothed: Duration,
}

/// The estimator's state. Microsecond resolution; a sample of less than 1 µs counts as 1 µs (so
/// that zero can mean "no sample yet") and one over `u32::MAX` µs (71 minutes, far past any
/// heartbeat timeout, beyond which nothing is sampled) saturates.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Rtt {
    last_us: Option<NonZeroU32>,
    smoothed_us: u32,
}

impl Rtt {
    /// Folds in one sample.
    pub(crate) fn sample(&mut self, rtt: Duration) {
        let us = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX).max(1);
        self.smoothed_us = match self.last_us {
            None => us,
            // SRTT <- 7/8 SRTT + 1/8 R, rounded to the nearest microsecond.
            Some(_) => {
                let next = (7 * u64::from(self.smoothed_us) + u64::from(us) + 4) / 8;
                u32::try_from(next).unwrap_or(u32::MAX).max(1)
            }
        };
        self.last_us = NonZeroU32::new(us);
    }

    /// The measurements, once there is one.
    pub(crate) fn get(&self) -> Option<RoundTrip> {
        let last = self.last_us?;
        Some(RoundTrip {
            last: Duration::from_micros(last.get().into()),
            smoothed: Duration::from_micros(self.smoothed_us.into()),
        })
    }
}

impl Connection {
    /// A transport pong arrived at `now`: the peer is alive, and if it answers the hub's ping
    /// within `timeout` (the heartbeat's: a later one would have closed a silent connection),
    /// the round trip is sampled and returned. An unsolicited pong, or a second one, samples
    /// nothing.
    pub(crate) fn pong(&mut self, now: Instant, timeout: Duration) -> Option<Duration> {
        self.seen(now);
        let rtt = now.saturating_duration_since(self.ping_sent.take()?);
        if rtt > timeout {
            return None;
        }
        self.rtt.sample(rtt);
        Some(rtt)
    }

    /// Its round-trip times, once a pong answered a ping.
    pub(crate) fn round_trip(&self) -> Option<RoundTrip> {
        self.rtt.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_first_sample_sets_the_estimate_and_later_ones_move_it_an_eighth() {
        let mut rtt = Rtt::default();
        assert_eq!(rtt.get(), None);
        rtt.sample(ms(80));
        assert_eq!(rtt.get(), Some(RoundTrip { last: ms(80), smoothed: ms(80) }));
        rtt.sample(ms(160));
        assert_eq!(rtt.get(), Some(RoundTrip { last: ms(160), smoothed: ms(90) }));
        // A steady link converges on its round trip.
        for _ in 0..100 {
            rtt.sample(ms(20));
        }
        let smoothed = rtt.get().unwrap().smoothed;
        assert!(smoothed.abs_diff(ms(20)) < Duration::from_micros(10), "{smoothed:?}");
    }

    #[test]
    fn extremes_stay_representable() {
        let mut rtt = Rtt::default();
        rtt.sample(Duration::ZERO);
        assert_eq!(rtt.get().unwrap().last, Duration::from_micros(1), "zero is one microsecond");
        rtt.sample(Duration::from_secs(1 << 40));
        let got = rtt.get().unwrap();
        assert_eq!(got.last, Duration::from_micros(u32::MAX.into()), "saturates");
        assert!(got.smoothed > Duration::from_secs(60));
    }
}
