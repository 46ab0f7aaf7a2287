//! Publishing, fan-out and timers.

use super::*;

impl Model {
    // --- publishing ---

    pub(super) fn publish(
        &mut self,
        target: &ResolvedTarget,
        kind: &EventKind,
        thread: Option<usize>,
    ) -> Result<Expect, PublishError> {
        let custom_ok = |n: &str| !n.is_empty() && !EventKind::RESERVED.contains(&n);
        if let EventKind::Custom(name) = kind {
            if !custom_ok(name) {
                return Err(PublishError::InvalidKind);
            }
        }
        let msg = Msg {
            kind: kind.as_str().to_owned(),
            low: *kind == EventKind::AgentThinking,
            thread,
            n: self.c.publishes,
        };
        let mut doomed = Vec::new();
        let result = match target {
            ResolvedTarget::User(t, u) => self.publish_user((*t, *u), None, &msg, &mut doomed)?,
            ResolvedTarget::Thread(t, u, th) => {
                if thread.is_some_and(|x| x != *th) {
                    return Err(PublishError::ThreadMismatch);
                }
                let msg = Msg { thread: Some(*th), ..msg };
                self.publish_user((*t, *u), None, &msg, &mut doomed)?
            }
            ResolvedTarget::Conn(id) => {
                self.lookup(*id)?;
                let key = self.binding[id];
                self.publish_user(key, Some(*id), &msg, &mut doomed)?
            }
            ResolvedTarget::Room(t, r) => match self.rooms.get_mut(&(*t, *r)) {
                None => Expect::default(),
                Some(room) => {
                    let s = &room.stream;
                    let (pos, inc) = ((s.epoch, s.seq + 1), s.inc);
                    let name = format!("r:{}", room_name(*r));
                    let frame = f_event(&msg.kind, &name, pos, msg.thread, msg.n);
                    self.deliverable(&frame)?;
                    let room = self.rooms.get_mut(&(*t, *r)).expect("just found");
                    room.stream.seq += 1;
                    let members = room.members.clone();
                    self.keep(SKey::Room(*t, *r), pos.1, &frame, MScope::All);
                    let mut result = Expect::default();
                    for m in members {
                        self.offer(m, &frame, msg.low, &mut result, &mut doomed);
                    }
                    result.position = Some((name, pos.1, inc));
                    result
                }
            },
            ResolvedTarget::Tenant(t, role) => {
                self.tenant_deliverable(*t, &msg)?;
                self.publish_tenant(*t, *role, &msg, &mut doomed)
            }
            ResolvedTarget::Everyone => {
                if !self.cfg.allow_global_broadcast {
                    self.emit(o_audit(AuditKind::GlobalBroadcastDenied, None, None, None));
                    return Err(PublishError::GlobalBroadcastDisabled);
                }
                self.emit(o_audit(AuditKind::GlobalBroadcast, None, None, None));
                let mut total = Expect::default();
                let tenants: Vec<usize> = self.tenants.keys().copied().collect();
                // Issue 10 item 9: every tenant's frame is size-checked before any publish.
                for &t in &tenants {
                    self.tenant_deliverable(t, &msg)?;
                }
                for t in tenants {
                    let r = self.publish_tenant(t, None, &msg, &mut doomed);
                    total.delivered += r.delivered;
                    total.skipped += r.skipped;
                    total.closed += r.closed;
                    total.held += r.held;
                }
                total
            }
        };
        self.c.publishes += 1;
        if result.delivered == 0 && result.held == 0 {
            self.c.undeliverable += 1;
        }
        doomed.sort_by_key(|id| (self.hints.conn_order.get(id).copied(), *id));
        for id in doomed {
            self.close_conn(id, ClosedBy::Hub(CloseReason::SlowConsumer));
        }
        // Room under the hub-wide cap is made at the expense of detached users.
        let cap = self.cfg.max_buffered_bytes;
        while self.buffered().1 > cap - cap / 8 && self.evict_detached() {}
        self.shed_to_cap();
        Ok(result)
    }

    /// Offers a live event frame under the connection's backpressure.
    pub(super) fn offer(
        &mut self,
        id: ConnId,
        frame: &str,
        low: bool,
        r: &mut Expect,
        doomed: &mut Vec<ConnId>,
    ) {
        let c = self.live.get_mut(&id).expect("offering to a live connection");
        if c.held {
            self.c.held_back += 1;
            r.held += 1;
            return;
        }
        // The `skipped` notice the frame would carry counts with it.
        let after = c.unwritten + notice_len(c.skipped) + frame.len() as u64;
        // Issue 10 item 9: only a connection that is behind (something unwritten) skips.
        if low && c.unwritten > 0 && after > self.cfg.max_inflight_bytes {
            c.skipped += 1;
            self.c.thinking_skipped += 1;
            r.skipped += 1;
        } else if after > self.cfg.max_unwritten_bytes {
            doomed.push(id);
            r.closed += 1;
        } else {
            self.deliver(id, frame);
            r.delivered += 1;
        }
    }

    pub(super) fn publish_user(
        &mut self,
        key: (usize, usize),
        only: Option<ConnId>,
        msg: &Msg,
        doomed: &mut Vec<ConnId>,
    ) -> Result<Expect, PublishError> {
        let Some(user) = self.users.get(&key) else { return Ok(Expect::default()) };
        let s = &user.stream;
        let (pos, inc) = ((s.epoch, s.seq + 1), s.inc);
        let frame = f_event(&msg.kind, "u", pos, msg.thread, msg.n);
        self.deliverable(&frame)?;
        let user = self.users.get_mut(&key).expect("just found");
        user.stream.seq += 1;
        let scope = match (only, msg.thread) {
            (Some(id), _) => MScope::Conn(id),
            (None, Some(t)) => MScope::Thread(t),
            (None, None) => MScope::All,
        };
        let to: Vec<ConnId> = match only {
            Some(id) => vec![id],
            None => {
                user.conns.iter().copied().filter(|id| self.live[id].wants(msg.thread)).collect()
            }
        };
        self.keep(SKey::User(key.0, key.1), pos.1, &frame, scope);
        let mut result = Expect::default();
        for id in to {
            self.offer(id, &frame, msg.low, &mut result, doomed);
        }
        result.position = Some(("u".to_owned(), pos.1, inc));
        Ok(result)
    }

    /// Issue 10 item 9: a frame larger than `max_unwritten_bytes` is refused at publish.
    fn deliverable(&self, frame: &str) -> Result<(), PublishError> {
        let (bytes, limit) = (frame.len() as u64, self.cfg.max_unwritten_bytes);
        if bytes > limit {
            return Err(PublishError::TooLarge { bytes, limit });
        }
        Ok(())
    }

    /// The size check of a tenant broadcast's frame at the tenant stream's next position.
    fn tenant_deliverable(&self, t: usize, msg: &Msg) -> Result<(), PublishError> {
        let Some(s) = self.tenants.get(&t) else { return Ok(()) };
        self.deliverable(&f_event(&msg.kind, "t", (s.epoch, s.seq + 1), msg.thread, msg.n))
    }

    pub(super) fn publish_tenant(
        &mut self,
        t: usize,
        role: Option<usize>,
        msg: &Msg,
        doomed: &mut Vec<ConnId>,
    ) -> Expect {
        let Some(s) = self.tenants.get_mut(&t) else { return Expect::default() };
        s.seq += 1;
        let (pos, inc) = ((s.epoch, s.seq), s.inc);
        let frame = f_event(&msg.kind, "t", pos, msg.thread, msg.n);
        let scope = role.map_or(MScope::All, MScope::Role);
        self.keep(SKey::Tenant(t), pos.1, &frame, scope);
        let to: Vec<ConnId> = self
            .live
            .iter()
            .filter(|(_, c)| c.tenant == t && role.is_none_or(|r| c.has_role(r)))
            .map(|(id, _)| *id)
            .collect();
        let mut result = Expect::default();
        for id in to {
            self.offer(id, &frame, msg.low, &mut result, doomed);
        }
        result.position = Some(("t".to_owned(), pos.1, inc));
        result
    }

    // --- timers ---

    pub(super) fn tick(&mut self) {
        let now = self.clock;
        // Retirements first (a user's breaker is kept apart: retiring it resets nothing).
        let due: Vec<(usize, usize)> = self
            .users
            .iter()
            .filter(|(_, s)| s.detached.is_some_and(|(_, at)| at <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(user) = self.users.get_mut(&key) else { continue };
            user.detached = None;
            self.retire(key);
        }
        // Idle rooms whose retention ran out are dropped (with their tenant, if nothing else
        // holds it).
        let expired: Vec<(usize, usize)> = (self.rooms.iter())
            .filter(|(_, r)| r.idle.is_some_and(|until| until <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            self.drop_room(key);
        }
        // Age timers: every stream whose oldest message outlived `max_age` is trimmed. (A stream's
        // timer is due no later than its oldest message's deadline, and a trim at a timer that
        // fires early changes nothing: the count and byte bounds always hold.)
        let retention = self.cfg.retention;
        let users = self.users.values_mut().map(|u| &mut u.stream);
        let rooms = self.rooms.values_mut().map(|r| &mut r.stream);
        for s in users.chain(self.tenants.values_mut()).chain(rooms) {
            s.trim(now, &retention);
        }
        // Breaker timers, before the connection timers (the hub runs them first), in the order
        // the hub reported their changes.
        let mut due: Vec<(usize, (usize, usize))> = (self.breakers.iter())
            .filter(|(_, b)| self.breaker_deadline(b) <= now)
            .map(|(k, _)| (self.hints.breaker_order.get(k).copied().unwrap_or(usize::MAX), *k))
            .collect();
        due.sort();
        for (_, key) in due {
            self.breaker_timer(key);
        }
        // Connection timers, in the order the hub ran them.
        let mut due: Vec<(usize, Due)> = Vec::new();
        for (id, c) in &self.live {
            if self.conn_deadline(c) <= now {
                due.push((
                    self.hints.conn_order.get(id).copied().unwrap_or(usize::MAX),
                    Due::Conn(*id),
                ));
            }
        }
        due.sort();
        for (_, d) in due {
            match d {
                Due::Conn(id) if self.live.contains_key(&id) => self.conn_timer(id),
                _ => {}
            }
        }
    }

    pub(super) fn conn_timer(&mut self, id: ConnId) {
        let now = self.clock;
        let cfg = &self.cfg;
        let (interval, timeout) =
            (Self::ms(cfg.heartbeat.interval), Self::ms(cfg.heartbeat.timeout));
        let (grace, window) = (Self::ms(cfg.session_grace), Self::ms(cfg.resume_window));
        let c = self.live.get_mut(&id).unwrap();
        if c.exp.is_some_and(|e| e <= now) {
            self.close_conn(id, ClosedBy::Hub(CloseReason::SessionExpired));
            return;
        }
        if c.ping_at.is_some_and(|p| now >= p + timeout) {
            self.close_conn(id, ClosedBy::Hub(CloseReason::HeartbeatTimeout));
            return;
        }
        let ping = c.ping_at.is_none() && now >= c.last_act + interval;
        if ping {
            c.ping_at = Some(now);
        }
        let refresh = match c.exp {
            Some(exp) if !c.refresh_sent && now + grace >= exp => {
                c.refresh_sent = true;
                Some(exp - now)
            }
            _ => None,
        };
        let release = c.held && now >= c.opened + window;
        if let Some(expires_in) = refresh {
            self.c.refresh_required += 1;
            if !self.control(id, &f_refresh(expires_in)) {
                return;
            }
        }
        if ping {
            self.c.pings += 1;
            self.emit(o_ping(id));
        }
        if release {
            let _still_open = self.release(id, None);
        }
    }

    /// A breaker's timer: open → half-open (kept `window` for a probe); a probe that stayed up
    /// closes it (and it is forgotten, reported closed); a closed entry past its window, or a
    /// half-open one whose probe never came, is forgotten silently.
    pub(super) fn breaker_timer(&mut self, key: (usize, usize)) {
        let now = self.clock;
        let window = Self::ms(self.cfg.breaker.window);
        let b = self.breakers.get_mut(&key).expect("a due breaker");
        match b.state {
            BState::Open(_) => {
                b.state = BState::HalfOpen(None);
                b.expires = now + window;
                self.breaker_changed(key);
            }
            BState::HalfOpen(Some(_)) => {
                self.breakers.remove(&key);
                self.breaker_changed(key);
            }
            _ => {
                self.breakers.remove(&key);
            }
        }
    }

    /// When a breaker's timer is due.
    pub(super) fn breaker_deadline(&self, b: &MBreaker) -> Ms {
        match b.state {
            BState::Open(until) => until,
            BState::HalfOpen(Some(_)) => {
                b.probe_since.expect("a probe") + Self::ms(self.cfg.breaker.probe_healthy_after)
            }
            _ => b.expires,
        }
    }

    /// The earliest instant at which something is due for this connection.
    pub(super) fn conn_deadline(&self, c: &MConn) -> Ms {
        let mut d = match c.ping_at {
            Some(p) => p + Self::ms(self.cfg.heartbeat.timeout),
            None => c.last_act + Self::ms(self.cfg.heartbeat.interval),
        };
        if let Some(exp) = c.exp {
            d = d.min(exp);
            if !c.refresh_sent {
                d = d.min(exp.saturating_sub(Self::ms(self.cfg.session_grace)));
            }
        }
        if c.held {
            d = d.min(c.opened + Self::ms(self.cfg.resume_window));
        }
        d
    }

    /// The earliest instant at which anything is due.
    pub(super) fn next_deadline(&self) -> Option<Ms> {
        let conns = self.live.values().map(|c| self.conn_deadline(c));
        let users = self.users.values().filter_map(|u| u.detached.map(|d| d.1));
        let breakers = self.breakers.values().map(|b| self.breaker_deadline(b));
        let idle_rooms = self.rooms.values().filter_map(|r| r.idle);
        // A stream ages at its oldest message's `kept_at + max_age + 1ns`: by the next ms.
        let age = Self::ms(self.cfg.retention.max_age);
        let streams = (self.users.values().map(|u| &u.stream))
            .chain(self.tenants.values())
            .chain(self.rooms.values().map(|r| &r.stream))
            .filter_map(|s| s.buf.front().map(|e| e.at + age + 1));
        conns.chain(users).chain(breakers).chain(idle_rooms).chain(streams).min()
    }
}
