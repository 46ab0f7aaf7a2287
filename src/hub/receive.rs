//! Client frames: validation, rate limits, subscriptions, inbound messages; a `resume` is handed
//! to `resume.rs`.

use std::time::Instant;

use crate::action::{Action, RefreshRequest};
use crate::action::{Inbound, Origin};
use crate::client_frame::{ClientFrame, echo_id, frame_id, parse_client_frame};
use crate::envelope::Reply;
use crate::error::{PeerError, ReceiveError};
use crate::error::{RefreshError, ReplyError};
use crate::hub::Hub;
use crate::hub::millis;
use crate::hub::presence::Requested;
use crate::ids::{ConnId, ThreadId};
use crate::kinds::{AuditKind, CloseReason, ClosedBy, LimitKind};
use crate::limits::Rate;
use crate::payload::{MAX_DATA_DEPTH, depth_within};

impl Hub {
    /// A text (or binary) frame arrived from the client. Any frame proves the peer alive, and any
    /// valid one but `subscribe`/`unsubscribe` ends the connection's resume window (filters may be
    /// set first, so that the replay honours them).
    ///
    /// A frame that is oversized, malformed, unknown, over a rate or over a limit gets an `error`
    /// frame (naming the frame's `id` when it had a valid one, so the client can fail that
    /// request at once) and `Err(ReceiveError::Peer(..))`. Each of those but a rate overrun is a violation:
    /// the `max_violations`-th in a row also closes the connection with
    /// [`CloseReason::ProtocolViolation`]. A rate overrun (`rate_limited`) never closes it: an
    /// honest client that bursts is told to slow down, not to go away (a client that floods and
    /// does not read its `error` frames is closed as a slow consumer).
    ///
    /// # Errors
    ///
    /// - [`ReceiveError::Conn`]: the caller named a connection that is not open (see
    ///   [`ConnError`](crate::ConnError));
    ///   nothing changes.
    /// - [`ReceiveError::Peer`]: the client misbehaved (oversized, malformed or unknown frame, over a
    ///   rate, over a limit, a second `resume`). The client got an `error` frame, the event was
    ///   audited, and at the `max_violations`-th violation in a row (rate overruns excepted) the
    ///   connection was closed with [`CloseReason::ProtocolViolation`]. The caller needs to do
    ///   nothing but drain the actions.
    pub fn receive(
        &mut self,
        now: Instant,
        conn: ConnId,
        frame: &[u8],
    ) -> Result<(), ReceiveError> {
        let now = self.clock(now);
        let idx = self.resolve(now, conn)?;
        self.out.stats.frames_received += 1;
        self.conns.get_mut(idx).seen(now);
        self.conns.rearm_if_earlier(idx, &self.cfg);
        if frame.len() > self.cfg.max_frame_bytes {
            let err =
                PeerError::FrameTooLarge { size: frame.len(), limit: self.cfg.max_frame_bytes };
            let limit = LimitKind::FrameSize;
            // Not parsed for its id: a frame this large is not read twice.
            let audit = AuditKind::OversizedFrame;
            return Err(self.peer_error(now, idx, err, Some(limit), audit, None));
        }
        let max_positions = 2 + self.cfg.max_rooms_per_connection as usize;
        let (max_id, max_history) = (self.cfg.max_client_id_bytes, self.cfg.max_history_messages);
        let parsed = match parse_client_frame(frame, max_id, max_positions, max_history) {
            Ok(f) => f,
            Err(err) => {
                let id = echo_id(frame, max_id);
                let audit = AuditKind::MalformedFrame;
                return Err(self.peer_error(now, idx, err, None, audit, id.as_deref()));
            }
        };
        let c = self.conns.get_mut(idx);
        // `message` frames draw on the user's quota, shared by its connections (DESIGN §6);
        // control frames on the connection's own allowance.
        let (bucket, rate, limit) = if parsed.is_message() {
            let q = self.cfg.tiers.get(c.tier());
            (
                &mut self.users.get_mut(c.user()).messages,
                Rate::per_minute(q.messages_per_minute, q.message_burst),
                LimitKind::MessageRate,
            )
        } else {
            let rate = Rate::per_minute(self.cfg.control_frames_per_minute, self.cfg.control_burst);
            (c.control_allowance(), rate, LimitKind::ControlRate)
        };
        if !bucket.try_take(now, rate) {
            // Answered, never a violation.
            let (err, audit) = (PeerError::RateLimited, AuditKind::Flood);
            let id = frame_id(&parsed, frame, max_id);
            return Err(self.refuse(now, idx, err, Some(limit), audit, id.as_deref()));
        }
        let c = self.conns.get_mut(idx);
        if let ClientFrame::Resume { positions } = &parsed {
            if !c.claim_resume() {
                let (err, audit) = (PeerError::AlreadyResumed, AuditKind::MalformedFrame);
                let id = echo_id(frame, max_id);
                return Err(self.peer_error(now, idx, err, None, audit, id.as_deref()));
            }
            if self.node.is_some() {
                if self.conns.get(idx).is_awaiting() {
                    // Before `connected`: answered once the streams are set up.
                    let id = self.conns.id_of(idx);
                    let owned = positions.iter().map(|(n, p)| (n.to_string(), *p)).collect();
                    self.early_resumes.insert(id, owned);
                } else {
                    let _still_open = self.resume_clustered(now, idx, positions);
                }
                return Ok(());
            }
            let _still_open = self.release(now, idx, Some(positions));
            return Ok(());
        }
        // Filters may be set while held (so that the replay already honours them); any other
        // frame starts live delivery.
        let filter =
            matches!(parsed, ClientFrame::Subscribe { .. } | ClientFrame::Unsubscribe { .. });
        // An awaiting connection (cluster mode) goes live when its streams are set up, and one
        // whose resume waits for the log when the log answers.
        let id = self.conns.id_of(idx);
        let c = self.conns.get(idx);
        let waiting = c.is_awaiting() || self.resuming(id);
        if c.is_held() && !filter && !waiting && !self.release(now, idx, None) {
            // Its backlog was lost: it was closed (SlowConsumer) and the frame goes with it.
            return Ok(());
        }
        let c = self.conns.get_mut(idx);
        match parsed {
            ClientFrame::Subscribe { thread, run } => {
                let max = self.cfg.max_thread_subscriptions;
                let thread_ok = thread.is_none_or(|t| c.narrow_to(&t, max).is_ok());
                let run_ok = run.is_none_or(|r| c.narrow_to_run(&r, max).is_ok());
                if !(thread_ok && run_ok) {
                    let err = PeerError::TooManySubscriptions { limit: max };
                    let limit = LimitKind::ThreadSubscriptions;
                    let (audit, id) = (AuditKind::LimitHit(limit), echo_id(frame, max_id));
                    return Err(self.peer_error(now, idx, err, Some(limit), audit, id.as_deref()));
                }
            }
            ClientFrame::Unsubscribe { thread: None, run: None } => c.widen(),
            ClientFrame::Unsubscribe { thread, run } => {
                if let Some(thread) = thread {
                    c.unsubscribe(&thread);
                }
                if let Some(run) = run {
                    c.unsubscribe_run(&run);
                }
            }
            ClientFrame::Message { thread, data, id } => {
                let (tier, user) = (c.tier(), c.user());
                let owner = self.users.get(user);
                let labels = c.labels().clone();
                let from =
                    Origin { tenant: owner.tenant.clone(), user: owner.user.clone(), conn, labels };
                let clock = self.flow.clock;
                self.flow.tier(tier).inbound.add(clock, 1);
                self.users.get_mut(user).meters.inbound.add(clock, 1);
                let thread = thread.map(|t| ThreadId::from(&*t));
                let id = id.map(|id| std::sync::Arc::from(&*id));
                self.out.inbound(Inbound { from, thread, data, id });
            }
            ClientFrame::Ping => {
                let writer = &mut self.flow.writer;
                let pong = self.pong.get_or_insert_with(|| writer.pong()).clone();
                self.control_or_close(now, idx, &pong);
            }
            ClientFrame::Refresh { token } => {
                let (tenant, user) = self.owner(idx);
                let expires_at = self.conns.get(idx).expires_at();
                let token = token.into_owned();
                self.out.stats.refresh_requests += 1;
                let request = RefreshRequest { conn, tenant, user, expires_at, token };
                self.out.push_action(Action::RefreshRequested(Box::new(request)));
            }
            ClientFrame::Presence { scope } => match self.presence_requested(now, idx, &scope) {
                Requested::Sent => {}
                // Presence is off there: answered, neither audited nor a violation.
                Requested::Off => {
                    self.out.stats.protocol_errors += 1;
                    let id = echo_id(frame, max_id);
                    let frame = self.flow.writer.error(&PeerError::NoPresence, id.as_deref());
                    self.control_or_close(now, idx, &frame);
                    return Err(ReceiveError::Peer(PeerError::NoPresence));
                }
                // Asking who is in a room it is not in: audited like reading a foreign stream.
                Requested::NotMember => {
                    let (err, audit) = (PeerError::NoPresence, AuditKind::ForeignStream);
                    let id = echo_id(frame, max_id);
                    return Err(self.refuse(now, idx, err, None, audit, id.as_deref()));
                }
            },
            ClientFrame::History(request) => {
                if let Err(err) = self.history(now, idx, &request) {
                    let audit = match err {
                        PeerError::UnknownStream => AuditKind::ForeignStream,
                        _ => AuditKind::MalformedFrame,
                    };
                    // Answered, not a violation: a client may ask about a room it just left.
                    return Err(self.refuse(now, idx, err, None, audit, request.id.as_deref()));
                }
            }
            ClientFrame::Resume { .. } => unreachable!("handled above"),
        }
        Ok(())
    }

    /// Answers the client message `id` that connection `conn` sent (its [`Inbound::id`]) with a
    /// `reply` frame, to that connection only. A reply is a control frame: never skipped, and
    /// counted against the connection's byte budget like any frame.
    ///
    /// # Errors
    ///
    /// Nothing is sent when it fails: [`ReplyError::Conn`] if the connection has gone (it may
    /// have closed since its message arrived: a normal race, not a bug); [`ReplyError::InvalidId`],
    /// [`ReplyError::InvalidError`], [`ReplyError::TooDeep`] or [`ReplyError::TooLarge`] for an
    /// answer that could not be sent to anyone.
    pub fn reply(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: &str,
        answer: Reply,
    ) -> Result<(), ReplyError> {
        let now = self.clock(now);
        let limit = self.cfg.max_client_id_bytes;
        if id.is_empty() || id.len() > limit {
            return Err(ReplyError::InvalidId { limit });
        }
        let result = match &answer {
            Reply::Data(data) => {
                if !depth_within(data, MAX_DATA_DEPTH) {
                    return Err(ReplyError::TooDeep { limit: MAX_DATA_DEPTH });
                }
                Ok(data)
            }
            Reply::Error { code, message } => {
                if code.is_empty() || code.len() > 64 || message.len() > 1024 {
                    return Err(ReplyError::InvalidError);
                }
                Err((code.as_str(), message.as_str()))
            }
        };
        let idx = self.resolve(now, conn)?;
        let frame = self.flow.writer.reply(id, result, &self.redactor);
        let bytes = frame.len() as u64;
        if bytes > self.cfg.max_unwritten_bytes {
            return Err(ReplyError::TooLarge { bytes, limit: self.cfg.max_unwritten_bytes });
        }
        self.out.stats.replies_sent += 1;
        self.control_or_close(now, idx, &frame);
        Ok(())
    }

    /// Answers a client's `refresh` ([`Action::RefreshRequested`]): `Ok(expires_at)` extends the
    /// session ([`Hub::refresh`]) and tells the client in a `refreshed` frame; `Err(why)` keeps
    /// the session as it is, answers an `error` frame (`refresh_refused`, with `why`, at most 200
    /// bytes of it) and is audited ([`AuditKind::RefreshRefused`]).
    ///
    /// # Errors
    ///
    /// As [`Hub::refresh`]: the connection has gone, or the new expiry is not in the future (then
    /// the client is told it was refused).
    pub fn answer_refresh(
        &mut self,
        now: Instant,
        conn: ConnId,
        verdict: Result<Option<Instant>, &str>,
    ) -> Result<(), RefreshError> {
        let now = self.clock(now);
        let idx = self.resolve(now, conn)?;
        let why = match verdict {
            Ok(expires_at) => match self.refresh(now, conn, expires_at) {
                Ok(()) => {
                    let left = expires_at.map(|at| millis(at.saturating_duration_since(now)));
                    let frame = self.flow.writer.refreshed(left);
                    self.control_or_close(now, idx, &frame);
                    return Ok(());
                }
                Err(e) => {
                    self.refuse_refresh(now, idx, "the new expiry is not in the future");
                    return Err(e);
                }
            },
            Err(why) => why,
        };
        self.refuse_refresh(now, idx, why);
        Ok(())
    }

    fn refuse_refresh(&mut self, now: Instant, idx: u32, why: &str) {
        self.out.stats.refreshes_refused += 1;
        self.audit_conn(AuditKind::RefreshRefused, idx);
        let mut end = why.len().min(200);
        while !why.is_char_boundary(end) {
            end -= 1;
        }
        let err = PeerError::RefreshRefused { why: why[..end].to_owned() };
        let frame = self.flow.writer.error(&err, None);
        self.control_or_close(now, idx, &frame);
    }

    /// Answers a violation: refuse the frame ([`Hub::refuse`]), and close the connection when it
    /// spends the last of its violation allowance (the `max_violations`-th in a row).
    fn peer_error(
        &mut self,
        now: Instant,
        idx: u32,
        err: PeerError,
        limit: Option<LimitKind>,
        audit: AuditKind,
        id: Option<&str>,
    ) -> ReceiveError {
        let err = self.refuse(now, idx, err, limit, audit, id);
        if !self.conns.contains(idx) {
            return err;
        }
        let allowance = Rate::every(self.cfg.violation_refill, self.cfg.max_violations);
        if self.conns.get_mut(idx).violation_spends_allowance(now, allowance) {
            self.audit_conn(AuditKind::ViolationClose, idx);
            self.close_conn(now, idx, ClosedBy::Hub(CloseReason::ProtocolViolation));
        }
        err
    }

    /// Refuses a frame: count it, audit it, and tell the client with an `error` frame carrying
    /// the frame's `id` if it had one (or close the connection as a slow consumer if it cannot
    /// take one).
    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &mut self,
        now: Instant,
        idx: u32,
        err: PeerError,
        limit: Option<LimitKind>,
        audit: AuditKind,
        id: Option<&str>,
    ) -> ReceiveError {
        self.out.stats.protocol_errors += 1;
        match limit {
            Some(limit) => self.limit_conn(limit, audit, idx),
            None => self.audit_conn(audit, idx),
        }
        let frame = self.flow.writer.error(&err, id);
        self.control_or_close(now, idx, &frame);
        ReceiveError::Peer(err)
    }
}
