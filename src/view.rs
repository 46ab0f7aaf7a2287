//! Read-only views of one user or one connection. They borrow the hub, so they can never outlive
//! the state they show, and the hub returns `None` once that state is gone.

use std::time::Instant;

use crate::config::Tier;
use crate::connection::{Connection, Connections, RoundTrip};
use crate::ids::{ConnId, Roles, RoomId, RunId, StreamPos, TenantId, ThreadId, UserId};
use crate::kinds::BreakerState;
use crate::labels::Labels;
use crate::stats::{MeterClock, Rates};
use crate::user::{UserPhase, UserState};

/// A user's state, as of now.
#[derive(Debug)]
pub struct UserView<'a> {
    pub(crate) state: &'a UserState,
    pub(crate) conns: &'a Connections,
    pub(crate) retires_at: Option<Instant>,
    pub(crate) clock: MeterClock,
    /// The user's breaker (kept apart from its state, see `breaker.rs`).
    pub(crate) breaker: BreakerState,
}

impl<'a> UserView<'a> {
    /// The tenant.
    #[must_use]
    pub fn tenant(&self) -> &'a TenantId {
        &self.state.tenant
    }

    /// The user.
    #[must_use]
    pub fn user(&self) -> &'a UserId {
        &self.state.user
    }

    /// Active, or detached until when.
    #[must_use]
    pub fn phase(&self) -> UserPhase {
        match (self.state.retire, self.retires_at) {
            (Some((_, since)), Some(retires_at)) => UserPhase::Detached { since, retires_at },
            _ => UserPhase::Active,
        }
    }

    /// The user's open connections, oldest first.
    pub fn connections(&self) -> impl Iterator<Item = ConnId> + 'a {
        let conns = self.conns;
        self.state.conns.iter().map(move |&i| conns.id_of(i))
    }

    /// How many connections are open.
    #[must_use]
    pub fn connection_count(&self) -> usize {
        self.state.conns.len()
    }

    /// The position of the last message of the user's stream.
    #[must_use]
    pub fn stream_position(&self) -> StreamPos {
        self.state.stream.position()
    }

    /// Messages and frame bytes in the user stream's recovery buffer.
    #[must_use]
    pub fn buffered(&self) -> (usize, usize) {
        self.state.stream.buffered()
    }

    /// The user's reconnect breaker.
    #[must_use]
    pub fn breaker(&self) -> BreakerState {
        self.breaker
    }

    /// Moving averages of the user's traffic.
    #[must_use]
    pub fn rates(&self) -> Rates {
        let mut meters = self.state.meters;
        for &c in &self.state.conns {
            meters.delivered.absorb(self.conns.get(c).delivered(), self.clock);
        }
        meters.rates(self.clock)
    }

    /// When the state was created (first connection).
    #[must_use]
    pub fn created_at(&self) -> Instant {
        self.state.created_at
    }

    /// The user's last sign of life: the latest inbound frame, pong or opening of any of its
    /// connections; for a detached user, when its last connection closed.
    #[must_use]
    pub fn last_activity(&self) -> Instant {
        let conns = self.state.conns.iter().map(|&c| self.conns.get(c).last_seen());
        let detached = self.state.retire.map(|(_, since)| since);
        conns.chain(detached).max().unwrap_or(self.state.created_at)
    }
}

/// An open connection, as of now.
#[derive(Debug)]
pub struct ConnView<'a> {
    pub(crate) id: ConnId,
    pub(crate) conn: &'a Connection,
    pub(crate) user: &'a UserState,
    pub(crate) next_timer: Option<Instant>,
}

impl<'a> ConnView<'a> {
    /// The connection's id.
    #[must_use]
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Its tenant (fixed at connect).
    #[must_use]
    pub fn tenant(&self) -> &'a TenantId {
        &self.user.tenant
    }

    /// Its user (fixed at connect).
    #[must_use]
    pub fn user(&self) -> &'a UserId {
        &self.user.user
    }

    /// The principal's tier.
    #[must_use]
    pub fn tier(&self) -> Tier {
        self.conn.tier()
    }

    /// The principal's roles.
    #[must_use]
    pub fn roles(&self) -> &'a Roles {
        self.conn.roles()
    }

    /// The principal's labels ([`Principal::labels`](crate::Principal::labels)).
    #[must_use]
    pub fn labels(&self) -> &'a Labels {
        self.conn.labels()
    }

    /// When it opened.
    #[must_use]
    pub fn opened_at(&self) -> Instant {
        self.conn.opened_at()
    }

    /// Its last inbound frame or pong (or its opening).
    #[must_use]
    pub fn last_seen(&self) -> Instant {
        self.conn.last_seen()
    }

    /// Whether a ping is outstanding.
    #[must_use]
    pub fn awaiting_pong(&self) -> bool {
        self.conn.awaiting_pong()
    }

    /// When its session expires, if it does.
    #[must_use]
    pub fn expires_at(&self) -> Option<Instant> {
        self.conn.expires_at()
    }

    /// Its round-trip times (last and smoothed), measured from the hub's heartbeat pings to the
    /// transport's pongs; `None` until a pong answered a ping. A client's `ping` frames play no
    /// part. A client can delay or hasten its own pongs, so the hub decides nothing on them: they
    /// are for dashboards and logs.
    #[must_use]
    pub fn round_trip(&self) -> Option<RoundTrip> {
        self.conn.round_trip()
    }

    /// The threads it narrowed its stream to (empty when it subscribed to runs only); `None` when
    /// it receives all of its user's events.
    #[must_use]
    pub fn threads(&self) -> Option<&'a [ThreadId]> {
        self.conn.threads()
    }

    /// The agent runs it subscribed to; `None` when it receives all of its user's events.
    #[must_use]
    pub fn runs(&self) -> Option<&'a [RunId]> {
        self.conn.runs()
    }

    /// The rooms it is in.
    pub fn rooms(&self) -> impl Iterator<Item = &'a RoomId> + 'a {
        self.conn.memberships().iter().map(|m| m.room())
    }

    /// Bytes handed out in `Deliver` actions and not yet confirmed by `written`.
    #[must_use]
    pub fn unwritten_bytes(&self) -> u64 {
        self.conn.unwritten()
    }

    /// `agent_thinking` frames skipped since its last delivery (the next delivery reports them).
    #[must_use]
    pub fn skipped_pending(&self) -> u32 {
        self.conn.skipped()
    }

    /// Whether it is still in its resume window (live delivery not started).
    #[must_use]
    pub fn held(&self) -> bool {
        self.conn.is_held()
    }

    /// When the hub will next look at this connection (heartbeat or session), at the latest;
    /// `None` if none of its deadlines can be represented (they lie past the end of the clock's
    /// range: it has no timer).
    #[must_use]
    pub fn next_check(&self) -> Option<Instant> {
        self.next_timer
    }
}
