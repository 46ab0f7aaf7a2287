//! Connections, users and breakers: how the model opens, closes, detaches and retires.

use super::*;

impl Model {
    pub(super) fn breaker_changed(&mut self, (t, u): (usize, usize)) {
        let state = self.breaker_state((t, u));
        self.emit(o_breaker(&tenant_name(t), &user_name(u), &state));
    }

    /// A user's breaker state (closed when nothing is remembered).
    pub(super) fn breaker_state(&self, key: (usize, usize)) -> BState {
        self.breakers.get(&key).map_or(BState::Closed, |b| b.state)
    }

    /// A connection of user `key` closed: the breaker rule of `src/breaker.rs`. A failing probe
    /// reopens it, a clean one makes room for another probe; while closed, an abnormal close of
    /// a connection younger than `probe_healthy_after` and opened after the last counted failure
    /// counts, and `threshold` of those within `window` open it. Returns whether it opened.
    pub(super) fn breaker_closed(
        &mut self,
        key: (usize, usize),
        id: ConnId,
        c: &MConn,
        abnormal: bool,
    ) -> bool {
        let now = self.clock;
        let b = self.cfg.breaker;
        let (window, healthy) = (Self::ms(b.window), Self::ms(b.probe_healthy_after));
        if let Some(e) = self.breakers.get_mut(&key) {
            match e.state {
                BState::HalfOpen(Some(p)) if p == id => {
                    e.probe_since = None;
                    if abnormal {
                        e.state = BState::Open(now + Self::ms(b.open_for));
                        return true;
                    }
                    e.state = BState::HalfOpen(None);
                    e.expires = now + window;
                    return false;
                }
                BState::Closed => {}
                _ => return false,
            }
            if c.order <= e.coalesce_upto {
                return false;
            }
        }
        if !abnormal || now - c.opened >= healthy {
            return false;
        }
        if !self.breakers.contains_key(&key) {
            if self.breakers.len() >= self.cfg.max_breakers as usize {
                // Closed entries closest to expiry first, else the armed one due first.
                let victim = (self.breakers.iter())
                    .min_by_key(|(_, e)| (e.state != BState::Closed, self.breaker_deadline(e)))
                    .map(|(k, _)| *k);
                if let Some(k) = victim {
                    self.breakers.remove(&k);
                    self.c.breakers_evicted += 1;
                }
            }
            let fresh = MBreaker {
                state: BState::Closed,
                failures: VecDeque::new(),
                probe_since: None,
                coalesce_upto: 0,
                expires: now + window,
            };
            self.breakers.insert(key, fresh);
        }
        let latest = self.c.opened;
        let e = self.breakers.get_mut(&key).expect("just made");
        while e.failures.front().is_some_and(|&f| now - f >= window) {
            e.failures.pop_front();
        }
        e.failures.push_back(now);
        e.coalesce_upto = latest;
        e.expires = now + window;
        if e.failures.len() >= b.threshold as usize {
            e.failures.clear();
            e.state = BState::Open(now + Self::ms(b.open_for));
            return true;
        }
        false
    }

    /// A user lost its last connection: kept for `user_retention` (retired at once without);
    /// room under `max_detached_users` is made first. (Its breaker is kept apart.)
    pub(super) fn detach(&mut self, key: (usize, usize)) {
        let now = self.clock;
        let retention = Self::ms(self.cfg.user_retention);
        if retention == 0 {
            self.retire(key);
            return;
        }
        let retires_at = now + retention;
        let detached = self.users.values().filter(|u| u.detached.is_some()).count();
        if detached >= self.cfg.max_detached_users as usize {
            self.evict_detached();
        }
        self.users.get_mut(&key).unwrap().detached = Some((now, retires_at));
    }

    /// Retires the detached user closest to retirement, early. False if there is none.
    pub(super) fn evict_detached(&mut self) -> bool {
        let Some(first) = self.users.values().filter_map(|u| u.detached.map(|d| d.1)).min() else {
            return false;
        };
        let tied: Vec<(usize, usize)> = self
            .users
            .iter()
            .filter(|(_, u)| u.detached.is_some_and(|d| d.1 == first))
            .map(|(k, _)| *k)
            .collect();
        // Which of several users with the same deadline goes first is left open: the one the
        // hub retires first (the others, still candidates now, can only retire after it).
        let order = |k: &(usize, usize)| self.hints.retired_order.get(k).copied();
        let key = *tied.iter().min_by_key(|k| (order(k).is_none(), order(k))).expect("a candidate");
        self.c.users_evicted += 1;
        self.retire(key);
        true
    }

    pub(super) fn retire(&mut self, key: (usize, usize)) {
        self.users.remove(&key);
        self.c.users_retired += 1;
        self.emit(o_user_retired(&tenant_name(key.0), &user_name(key.1)));
        self.drop_tenant_if_unused(key.0);
    }

    /// A tenant is kept while it holds users or rooms (idle ones included).
    pub(super) fn drop_tenant_if_unused(&mut self, t: usize) {
        let users = self.users.keys().any(|(ut, _)| *ut == t);
        if !users && !self.rooms.keys().any(|(rt, _)| *rt == t) {
            self.tenants.remove(&t);
        }
    }

    /// A room lost its last member: dropped at once without `room_retention`, else kept idle
    /// (its stream still buffering) until the retention runs out. (`max_idle_rooms` is never
    /// reached here: which of several rooms idled at the same instant it evicts is left open.)
    pub(super) fn room_emptied(&mut self, key: (usize, usize)) {
        let retention = Self::ms(self.cfg.room_retention);
        if retention == 0 {
            self.drop_room(key);
            return;
        }
        let until = self.clock + retention;
        self.rooms.get_mut(&key).expect("an emptied room").idle = Some(until);
    }

    /// Forgets a room and its stream, and its tenant if nothing else holds it.
    pub(super) fn drop_room(&mut self, key: (usize, usize)) {
        self.rooms.remove(&key);
        self.drop_tenant_if_unused(key.0);
    }

    /// Rooms without members, kept for `room_retention`.
    pub(super) fn idle_rooms(&self) -> usize {
        self.rooms.values().filter(|r| r.idle.is_some()).count()
    }

    // --- per-connection calls ---

    pub(super) fn pong(&mut self, id: ConnId) -> Result<(), ConnError> {
        self.lookup(id)?;
        let now = self.clock;
        let c = self.live.get_mut(&id).unwrap();
        c.last_act = now;
        c.ping_at = None;
        self.c.pongs += 1;
        Ok(())
    }

    pub(super) fn written(&mut self, id: ConnId, bytes: u32) -> Result<(), ConnError> {
        self.lookup(id)?;
        let c = self.live.get_mut(&id).unwrap();
        c.unwritten = c.unwritten.saturating_sub(u64::from(bytes));
        self.c.bytes_written += u64::from(bytes);
        Ok(())
    }

    pub(super) fn refresh(&mut self, id: ConnId, exp: Option<Ms>) -> Result<(), RefreshError> {
        self.lookup(id)?;
        if exp.is_some_and(|e| e <= self.clock) {
            return Err(RefreshError::ExpiryInPast);
        }
        let c = self.live.get_mut(&id).unwrap();
        c.exp = exp;
        c.refresh_sent = false;
        self.c.refreshed += 1;
        Ok(())
    }

    pub(super) fn join(&mut self, id: ConnId, room: usize) -> Result<bool, RoomError> {
        self.lookup(id)?;
        let c = &self.live[&id];
        if c.in_room(room) {
            return Ok(false);
        }
        let limit = self.cfg.max_rooms_per_connection;
        if c.rooms.len() >= limit as usize {
            let (t, u) = (c.tenant, c.user);
            self.limit(LimitKind::RoomsPerConnection, Some(id), t, u);
            return Err(RoomError::TooManyRooms { limit });
        }
        let key = (c.tenant, room);
        if !self.rooms.contains_key(&key) {
            let stream = self.stream();
            self.rooms.insert(key, MRoom { members: Vec::new(), stream, idle: None });
        }
        let r = self.rooms.get_mut(&key).unwrap();
        // An idle room comes back with its stream (same epoch, same seqs).
        r.idle = None;
        r.members.push(id);
        let (pos, base) = ((r.stream.epoch, r.stream.seq), r.stream.seq);
        let c = self.live.get_mut(&id).unwrap();
        c.rooms.push((room, base));
        // Issue 10 item 5: what was sent before a leave counts again (same epoch); forgotten
        // rooms count as sent up to the re-join position.
        let remembered = c.left.iter().position(|l| l.0 == room).map(|i| c.left.remove(i));
        let sent = match remembered {
            Some((_, epoch, sent)) if epoch == pos.0 => sent,
            Some(_) => 0,
            None if c.left_forgotten => base,
            None => 0,
        };
        c.sent.insert(format!("r:{}", room_name(room)), sent);
        // The client learns where the room's stream stands (so that it can resume it later).
        let _still_open = self.control(id, &f_joined(room, pos));
        Ok(true)
    }

    pub(super) fn leave(&mut self, id: ConnId, room: usize) -> Result<bool, ConnError> {
        self.lookup(id)?;
        let c = self.live.get_mut(&id).unwrap();
        let Some(pos) = c.rooms.iter().position(|(r, _)| *r == room) else { return Ok(false) };
        c.rooms.remove(pos);
        let key = (c.tenant, room);
        // Issue 10 item 5: remembered until the resume, within max_rooms_per_connection.
        let sent = c.sent.remove(&format!("r:{}", room_name(room))).unwrap_or(0);
        if !c.resumed {
            let epoch = self.rooms[&key].stream.epoch;
            c.left.retain(|l| l.0 != room);
            if c.left.len() >= self.cfg.max_rooms_per_connection as usize {
                c.left.remove(0);
                c.left_forgotten = true;
            }
            c.left.push((room, epoch, sent));
        }
        let r = self.rooms.get_mut(&key).unwrap();
        r.members.retain(|m| *m != id);
        if r.members.is_empty() {
            self.room_emptied(key);
        }
        let _still_open = self.control(id, &f_left(room));
        Ok(true)
    }

    /// A client frame of `size` bytes (`positions`: a `resume`'s, as sent; `echo`: the id an
    /// `error` refusing it carries); `Err(Ok(e))` is a peer error.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn receive(
        &mut self,
        id: ConnId,
        frame: &In,
        size: usize,
        positions: Option<&[(String, u64, u64)]>,
        refused: Option<PeerError>,
        echo: Option<String>,
    ) -> Result<(), Result<PeerError, ConnError>> {
        self.lookup(id).map_err(Err)?;
        let now = self.clock;
        self.c.frames_received += 1;
        let c = self.live.get_mut(&id).unwrap();
        c.last_act = now;
        c.ping_at = None;
        let limit = self.cfg.max_frame_bytes;
        // A frame over the limit is not read for its id.
        self.echo = if size > limit { None } else { echo };
        if size > limit {
            let err = PeerError::FrameTooLarge { size, limit };
            let limit = Some(LimitKind::FrameSize);
            return Err(Ok(self.peer_error(id, err, limit, AuditKind::OversizedFrame)));
        }
        if let In::Garbage(i) = frame {
            let err = GARBAGE[*i].1.clone();
            return Err(Ok(self.peer_error(id, err, None, AuditKind::MalformedFrame)));
        }
        // Raw bytes the protocol refuses (`crate::raw::decode`).
        if let Some(err) = refused {
            return Err(Ok(self.peer_error(id, err, None, AuditKind::MalformedFrame)));
        }
        // A connection has at most 2 + max_rooms_per_connection streams to resume.
        let max_positions = 2 + self.cfg.max_rooms_per_connection as usize;
        if positions.is_some_and(|p| p.len() > max_positions) {
            let err = PeerError::InvalidField { field: "positions" };
            return Err(Ok(self.peer_error(id, err, None, AuditKind::MalformedFrame)));
        }
        assert!(!matches!(frame, In::Oversized(_)), "oversized frames are over the limit");
        let c = self.live.get_mut(&id).unwrap();
        // `message` frames draw on the user's quota (shared by its connections), control frames
        // on the connection's own allowance.
        let (allowed, limit) = match frame {
            In::Message(..) => {
                let q = *self.cfg.tiers.get(c.tier);
                let interval = Duration::from_secs(60) / q.messages_per_minute;
                let user = self.users.get_mut(&(c.tenant, c.user)).expect("held");
                (user.messages.take(now, interval, q.message_burst), LimitKind::MessageRate)
            }
            _ => (c.control.take(now), LimitKind::ControlRate),
        };
        if !allowed {
            // Answered, never a violation (issue 10 item 14).
            let err = PeerError::RateLimited;
            return Err(Ok(self.refuse_frame(id, err, Some(limit), AuditKind::Flood)));
        }
        let c = self.live.get_mut(&id).unwrap();
        if matches!(frame, In::Resume(..) | In::Remembered(..) | In::Positions(..)) {
            if c.resumed {
                let err = PeerError::AlreadyResumed;
                return Err(Ok(self.peer_error(id, err, None, AuditKind::MalformedFrame)));
            }
            c.resumed = true;
            let _still_open = self.release(id, Some(positions.expect("a resume's positions")));
            return Ok(());
        }
        // Any other valid frame but a filter (which may come first, so that the replay honours
        // it) ends the resume window: what was held back follows first.
        let filter = matches!(frame, In::Subscribe(_) | In::Unsubscribe(_));
        if c.held && !filter && !self.release(id, None) {
            return Ok(());
        }
        let c = self.live.get_mut(&id).unwrap();
        let (tn, un) = (tenant_name(c.tenant), user_name(c.user));
        match frame {
            In::Subscribe(th) => {
                let max = self.cfg.max_thread_subscriptions as usize;
                let threads = c.threads.get_or_insert_with(Vec::new);
                if !threads.contains(th) {
                    if threads.len() >= max {
                        let limit = LimitKind::ThreadSubscriptions;
                        let err = PeerError::TooManySubscriptions { limit: max as u32 };
                        let audit = AuditKind::LimitHit(limit);
                        return Err(Ok(self.peer_error(id, err, Some(limit), audit)));
                    }
                    threads.push(*th);
                }
            }
            In::Unsubscribe(None) => c.threads = None,
            In::Unsubscribe(Some(th)) => {
                // Without any thread left the filter is gone (issue 10 item 16).
                if let Some(threads) = &mut c.threads {
                    threads.retain(|t| t != th);
                    if threads.is_empty() {
                        c.threads = None;
                    }
                }
            }
            In::Message(th, n) => {
                self.c.inbound += 1;
                let thread = th.map(thread_name);
                self.emit(o_inbound(id, &tn, &un, thread.as_deref(), &json!({ "n": n })));
            }
            In::Ping => {
                let _still_open = self.control(id, &f_pong());
            }
            In::Resume(..)
            | In::Remembered(..)
            | In::Positions(..)
            | In::Spoiled(..)
            | In::Garbage(_)
            | In::Oversized(_)
            | In::Raw(_) => {
                unreachable!()
            }
        }
        Ok(())
    }

    /// A violation: refused, and the `max_violations`-th in a row closes (issue 10 item 14).
    pub(super) fn peer_error(
        &mut self,
        id: ConnId,
        err: PeerError,
        limit: Option<LimitKind>,
        audit: AuditKind,
    ) -> PeerError {
        let now = self.clock;
        let err = self.refuse_frame(id, err, limit, audit);
        let Some(c) = self.live.get_mut(&id) else { return err };
        let (tn, un) = (tenant_name(c.tenant), user_name(c.user));
        c.peer_errors += 1;
        if !c.violations.take(now) || c.violations.credit < c.violations.interval {
            self.emit(o_audit(AuditKind::ViolationClose, Some(id), Some(&tn), Some(&un)));
            self.close_conn(id, ClosedBy::Hub(CloseReason::ProtocolViolation));
        }
        err
    }

    /// A refused frame: counted, audited, answered with an `error` frame.
    pub(super) fn refuse_frame(
        &mut self,
        id: ConnId,
        err: PeerError,
        limit: Option<LimitKind>,
        audit: AuditKind,
    ) -> PeerError {
        self.c.protocol_errors += 1;
        let c = &self.live[&id];
        let (tn, un) = (tenant_name(c.tenant), user_name(c.user));
        if let Some(limit) = limit {
            *self.c.limits.entry(limit).or_default() += 1;
            self.emit(o_limit(limit));
        }
        self.emit(o_audit(audit, Some(id), Some(&tn), Some(&un)));
        let frame = f_error(&err, self.echo.take().as_deref());
        let _still_open = self.control(id, &frame);
        err
    }

    /// Ends the resume window and answers a `resume` (DESIGN section 5, `Config::resume_window`):
    /// per stream of the connection (user, tenant, rooms), live delivery covered what followed
    /// its base unless the connection was held. A named stream is replayed from the client's
    /// position up to the base (up to now if held), if the buffer covers it; a held connection's
    /// own backlog follows regardless, and if that is no longer buffered the connection is closed
    /// with `SlowConsumer` instead. Issue 10 item 3: all of it within a budget, what is left under
    /// `max_unwritten_bytes` after the unwritten bytes, a pending `skipped` notice and the largest
    /// `resumed` frame; a stream that does not fit is `too_large` (nothing of it replayed), a held
    /// backlog that does not fit closes with `SlowConsumer`. Returns whether it is still open.
    pub(super) fn release(&mut self, id: ConnId, positions: Option<&[(String, u64, u64)]>) -> bool {
        let now = self.clock;
        let retention = self.cfg.retention;
        let c = self.live.get_mut(&id).unwrap();
        let was_held = std::mem::replace(&mut c.held, false);
        let (t, u) = (c.tenant, c.user);
        if positions.is_some() {
            c.left.clear();
        }
        let mut streams = vec![
            ("u".to_owned(), SKey::User(t, u), c.user_base),
            ("t".into(), SKey::Tenant(t), c.tenant_base),
        ];
        for (r, base) in &c.rooms {
            streams.push((format!("r:{}", room_name(*r)), SKey::Room(t, *r), *base));
        }
        let (mut replayed, mut lost, mut reports) = (0u32, false, Vec::new());
        // Issue 10 item 3: the replay's budget under the hard limit.
        let c = &self.live[&id];
        let resumed_max = positions.map_or(0, |p| f_resumed_max(p.iter().map(|(n, ..)| n)));
        let reserved = c.unwritten + notice_len(c.skipped) + resumed_max;
        let mut budget = self.cfg.max_unwritten_bytes.saturating_sub(reserved);
        for (name, key, base) in streams {
            self.stream_mut(key).trim(now, &retention);
            let s = self.stream_ref(key);
            let (epoch, seq) = (s.epoch, s.seq);
            let upto = if was_held { seq } else { base };
            let requested = positions.and_then(|p| p.iter().find(|(n, ..)| *n == name));
            let sent = self.live[&id].sent.get(&name).copied().unwrap_or(0);
            let outcome = match requested {
                None => None,
                Some(&(_, e, s)) if e == epoch && s >= upto && s <= seq => Some(Ok(0)),
                // Issue 10 item 5: later seqs already went out; the gap cannot come in order.
                Some(&(_, e, s)) if e == epoch && s < upto && s < sent => Some(Err("live_ahead")),
                Some(&(_, e, s)) => Some(self.send(id, key, Some(e), s, upto, &mut budget)),
            };
            let backlog = match outcome {
                None => was_held,
                Some(Ok(n)) => {
                    replayed += n;
                    let r = self.report(key, true, None, n);
                    reports.push((name, r));
                    false
                }
                Some(Err(why)) => {
                    let r = self.report(key, false, Some(why), 0);
                    reports.push((name, r));
                    was_held
                }
            };
            if backlog {
                match self.send(id, key, None, base, upto, &mut budget) {
                    Ok(n) => replayed += n,
                    Err(_) => lost = true,
                }
            }
        }
        self.c.replayed += u64::from(replayed);
        if lost {
            self.close_conn(id, ClosedBy::Hub(CloseReason::SlowConsumer));
            return false;
        }
        let Some(positions) = positions else { return true };
        let mut foreign = false;
        for (name, ..) in positions {
            if !reports.iter().any(|(n, _)| n == name) {
                foreign = true;
                let report = Report {
                    recovered: false,
                    reason: Some("unknown_stream"),
                    epoch: 0,
                    seq: 0,
                    available_from: 0,
                    replayed: 0,
                };
                reports.push((name.clone(), report));
            }
        }
        if foreign {
            let (tn, un) = (tenant_name(t), user_name(u));
            self.emit(o_audit(AuditKind::ForeignStream, Some(id), Some(&tn), Some(&un)));
        }
        let recovered = reports.iter().all(|(_, r)| r.recovered);
        if recovered {
            self.c.resumes_recovered += 1;
        } else {
            self.c.resumes_unrecovered += 1;
        }
        self.deliver(id, &f_resumed(recovered, &reports));
        true
    }

    pub(super) fn report(
        &self,
        key: SKey,
        recovered: bool,
        reason: Option<&'static str>,
        n: u32,
    ) -> Report {
        let s = self.stream_ref(key);
        Report {
            recovered,
            reason,
            epoch: s.epoch,
            seq: s.seq,
            available_from: s.available_from(),
            replayed: n,
        }
    }

    /// Replays the buffered messages in `(after, upto]` that the connection may see, if the
    /// buffer holds all of them (`epoch`: the client's; `None`: the stream's own) and they all
    /// fit in `budget` (issue 10 item 3: `too_large` otherwise).
    pub(super) fn send(
        &mut self,
        id: ConnId,
        key: SKey,
        epoch: Option<u64>,
        after: u64,
        upto: u64,
        budget: &mut u64,
    ) -> Result<u32, &'static str> {
        let s = self.stream_ref(key);
        if epoch.is_some_and(|e| e != s.epoch) {
            return Err("epoch_mismatch");
        }
        if after > s.seq || upto > s.seq {
            return Err("future_seq");
        }
        if after < upto && s.available_from() > after + 1 {
            return Err("gap_too_old");
        }
        let c = &self.live[&id];
        let frames: Vec<String> = s
            .buf
            .iter()
            .filter(|e| e.seq > after && e.seq <= upto && c.admits(id, &e.scope))
            .map(|e| e.frame.clone())
            .collect();
        let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
        if bytes > *budget {
            return Err("too_large");
        }
        *budget -= bytes;
        for f in &frames {
            self.deliver(id, f);
        }
        Ok(frames.len() as u32)
    }
}
