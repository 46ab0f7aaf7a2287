//! The runner: drives hub and model side by side and checks after every step.

use super::*;

mod checks;

// ---------------------------------------------------------------------------------------------
// The runner: drives hub and model side by side and checks after every step.

/// What the step did, for the property checks.
#[derive(Debug)]
enum Ctx {
    Connect {
        new: Option<ConnId>,
    },
    Tick,
    Receive {
        id: ConnId,
        peer_error: bool,
    },
    AppClose {
        id: ConnId,
        reason: CloseReason,
    },
    /// `join` or `leave`.
    Room {
        id: ConnId,
    },
    Publish {
        target: ResolvedTarget,
        thread: Option<usize>,
    },
    Other,
}

/// Drives one hub and the model side by side from the same [`Step`]s.
pub struct Runner {
    sim: Sim,
    model: Model,
    /// The caller's clock.
    t: Ms,
    /// Last seq seen live per (connection, stream, epoch).
    seqs: HashMap<(ConnId, String, u64), u64>,
    /// Every (connection, stream, epoch, seq) delivered, live or replayed.
    delivered: HashSet<(ConnId, String, u64, u64)>,
    /// Epoch learned per stream incarnation, and every epoch seen per stream identity.
    epochs: HashMap<u64, u64>,
    stream_epochs: HashMap<String, HashSet<u64>>,
    /// `poll_timeout` right after the hub call, and the actions it queued.
    pending: Option<Instant>,
    actions: Vec<Action>,
    /// What each connection's client remembers: per stream, the last `(epoch, seq)` it was told
    /// (`connected`, `joined`, `resumed`) or received (an event).
    remembered: HashMap<ConnId, BTreeMap<String, (u64, u64)>>,
    /// What the hub answered the last step, if it was an accepted publish, with the number its
    /// payload carries (`data.n`).
    published: Option<(u64, switchboard::Published)>,
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

impl Runner {
    /// A fresh hub and model for these knobs.
    pub fn new(knobs: &Knobs) -> Self {
        let cfg = config(knobs);
        Self {
            sim: Sim::new(cfg.clone()),
            model: Model::new(cfg),
            t: T0,
            seqs: HashMap::new(),
            delivered: HashSet::new(),
            epochs: HashMap::new(),
            stream_epochs: HashMap::new(),
            pending: None,
            actions: Vec::new(),
            remembered: HashMap::new(),
            published: None,
        }
    }

    fn at(&self, ms: Ms) -> Instant {
        self.sim.start + Duration::from_millis(ms)
    }

    fn pick(&self, who: Who) -> Option<ConnId> {
        if let Some(k) = who.exact.filter(|_| who.forged.is_none()) {
            let minted = &self.model.minted;
            return (!minted.is_empty()).then(|| minted[k as usize % minted.len()]);
        }
        if let Some((index, generation)) = who.forged {
            return Some(ConnId::from_raw(u32::from(index % 16), u32::from(generation % 4)));
        }
        if !who.live && who.n == NEWEST_BUT_ONE.n && who.exact.is_none() {
            let minted = &self.model.minted;
            return minted.len().checked_sub(2).or(minted.len().checked_sub(1)).map(|i| minted[i]);
        }
        if who.live && who.n == NEWEST.n {
            let newest = self.model.minted.iter().rev().find(|id| self.model.live.contains_key(id));
            if let Some(id) = newest {
                return Some(*id);
            }
        }
        let live: Vec<ConnId> = self.model.live.keys().copied().collect();
        let dead: Vec<ConnId> = self
            .model
            .minted
            .iter()
            .copied()
            .filter(|id| !self.model.live.contains_key(id))
            .collect();
        let from = match (who.live, live.is_empty(), dead.is_empty()) {
            (true, false, _) | (false, false, true) => live,
            (_, _, false) => dead,
            (_, true, true) => return None,
        };
        Some(from[who.n as usize % from.len()])
    }

    /// A time relative to the caller's clock, as a model instant (never before the start).
    fn rel(&self, d: i32) -> Ms {
        (self.t as i64 + i64::from(d)).max(0) as Ms
    }

    /// Takes what the hub queued (after noting `poll_timeout`), and what the model may learn
    /// from it (see [`Hints`]).
    fn collect(&mut self) {
        self.pending = self.sim.hub.poll_timeout();
        self.actions = self.sim.drain();
        let mut h = Hints::default();
        for (i, a) in self.actions.iter().enumerate() {
            let conn = match a {
                Action::Deliver { conn, .. }
                | Action::Ping { conn }
                | Action::Close { conn, .. } => Some(*conn),
                Action::Metric(m) => match &**m {
                    MetricEvent::ConnectionClosed { conn, .. } => Some(*conn),
                    _ => None,
                },
                _ => None,
            };
            if let Some(conn) = conn {
                h.conn_order.entry(conn).or_insert(i);
            }
            let Action::Metric(metric) = a else { continue };
            if let MetricEvent::UserRetired { tenant, user } = &**metric {
                if let (Some(t), Some(u)) = (index_in(tenant.as_str()), index_in(user.as_str())) {
                    h.retired_order.entry((t, u)).or_insert(i);
                }
            }
            if let MetricEvent::BreakerChanged { tenant, user, state } = &**metric {
                if !matches!(state, BreakerState::Open { .. }) {
                    if let (Some(t), Some(u)) = (index_in(tenant.as_str()), index_in(user.as_str()))
                    {
                        h.breaker_order.entry((t, u)).or_insert(i);
                    }
                }
            }
        }
        self.model.hints = h;
        for a in &self.actions {
            let Action::Deliver { conn, frame } = a else { continue };
            let v: Value = crate::frames::parse(frame.as_str());
            let memory = self.remembered.entry(*conn).or_default();
            match v["type"].as_str() {
                Some("connected" | "resumed") => {
                    for name in v["streams"].as_object().into_iter().flat_map(|m| m.keys()) {
                        if let Some(p) = crate::frames::stream_position(&v, name) {
                            memory.insert(name.clone(), p);
                        }
                    }
                }
                // Event frames and `joined` (which names its stream and position).
                _ => {
                    if let Some(ev) = crate::frames::EventFrame::decode(&v) {
                        memory.insert(ev.stream, (ev.epoch, ev.seq));
                    }
                }
            }
        }
    }

    /// The last step's publish, if it was accepted: the number its payload carries (`data.n`,
    /// unique among accepted publishes) and what the hub reported (already checked against the
    /// model).
    #[must_use]
    pub fn published(&self) -> Option<&(u64, switchboard::Published)> {
        self.published.as_ref()
    }

    /// The caller's clock as an instant.
    #[must_use]
    pub fn now(&self) -> Instant {
        self.at(self.t)
    }

    /// The [`Who`] that addresses exactly connection `id` (see [`exact`]), if it was minted
    /// among the first 256 connections.
    #[must_use]
    pub fn who_is(&self, id: ConnId) -> Option<Who> {
        let k = self.model.minted.iter().position(|m| *m == id)?;
        u8::try_from(k).ok().map(exact)
    }

    /// What the hub queued in the last step, in order.
    #[must_use]
    pub fn actions(&self) -> &[Action] {
        &self.actions
    }

    /// The connection a [`Who`] addresses now (as a step would resolve it).
    #[must_use]
    pub fn resolve(&self, who: Who) -> Option<ConnId> {
        self.pick(who)
    }

    /// The `(tenant, user)` a minted connection belongs to, by model index.
    #[must_use]
    pub fn user_of(&self, id: ConnId) -> Option<(usize, usize)> {
        self.model.binding.get(&id).copied()
    }

    /// What the client of connection `id` remembers, per stream: `(epoch, seq)`.
    #[must_use]
    pub fn remembered(&self, id: ConnId) -> Option<&BTreeMap<String, (u64, u64)>> {
        self.remembered.get(&id)
    }

    /// Applies every step in turn; the first failure names its step.
    ///
    /// # Errors
    /// The first disagreement between hub and model, or the first broken invariant.
    pub fn run(&mut self, steps: &[Step]) -> Result<(), TestCaseError> {
        for (i, s) in steps.iter().enumerate() {
            self.apply(s).map_err(|e| fail(format!("step {i}: {s:?}\n{e}")))?;
        }
        Ok(())
    }

    /// A `resume`'s positions, as `(stream, epoch, seq)` sorted by stream (as the JSON object
    /// holds them).
    fn positions(&self, id: ConnId, spec: &[(usize, bool, u8)]) -> Vec<(String, u64, u64)> {
        let m = &self.model;
        // A forged id that was never minted is bound to no one; the hub refuses it anyway.
        let (t, u) = m.binding.get(&id).copied().unwrap_or_default();
        let rooms: Vec<usize> =
            m.live.get(&id).map_or(Vec::new(), |c| c.rooms.iter().map(|(r, _)| *r).collect());
        let mut out = BTreeMap::new();
        for &(stream, wrong, n) in spec {
            let (name, s) = match stream {
                0 => ("u".to_owned(), m.users.get(&(t, u)).map(|u| &u.stream)),
                1 => ("t".to_owned(), m.tenants.get(&t)),
                2 | 3 => {
                    let r = if rooms.is_empty() { stream - 2 } else { rooms[stream % rooms.len()] };
                    (format!("r:{}", room_name(r)), m.rooms.get(&(t, r)).map(|r| &r.stream))
                }
                _ => ("zz".to_owned(), None),
            };
            let (epoch, seq) = s.map_or((1, 0), |s| (s.epoch, s.seq));
            let epoch = if wrong { epoch + 1 } else { epoch };
            out.insert(name, (epoch, u64::from(n) % (seq + 2)));
        }
        out.into_iter().map(|(n, (e, s))| (n, e, s)).collect()
    }

    /// Applies one step to the hub and the model, then checks everything.
    ///
    /// # Errors
    /// A disagreement between hub and model, or a broken invariant.
    pub fn apply(&mut self, step: &Step) -> Result<(), TestCaseError> {
        let pre = self.model.clone();
        self.model.out.clear();
        self.pending = None;
        self.actions.clear();
        self.published = None;
        let now = self.t.saturating_sub(u64::from(step.back));
        let mut ctx = Ctx::Other;
        // An id the step addresses, and the debug form of what the hub answered.
        let mut addressed: Option<(ConnId, String)> = None;
        match &step.op {
            Op::Connect { tenant, user, tier, roles, expires_in } => {
                let (t, u, tier) = (*tenant, *user, tier_of(*tier));
                let exp = expires_in.map(|d| self.rel(d));
                let role_names: Vec<&str> =
                    (0..2).filter(|b| roles & (1 << b) != 0).map(|b| ROLES[b]).collect();
                let mut p =
                    Principal::new(tenant_name(t), user_name(u)).tier(tier).roles(role_names);
                if let Some(e) = exp {
                    p = p.expires_at(self.at(e));
                }
                let got = self.sim.hub.connect(self.at(now), p);
                self.collect();
                self.model.observe(now);
                let want = self.model.admission(t, u, tier, exp);
                match (got, want) {
                    (Ok(id), Ok(evict)) => {
                        prop_assert!(
                            !self.model.minted.contains(&id),
                            "(2) connect minted an id that was already used: {id}"
                        );
                        self.model.admit(id, t, u, tier, *roles, exp, evict);
                        ctx = Ctx::Connect { new: Some(id) };
                    }
                    (Err(e), Err(allowed)) => {
                        prop_assert!(
                            allowed.contains(&e),
                            "connect refused with {e:?}, model allows {allowed:?}"
                        );
                        self.model.refuse(&e, t, u);
                        ctx = Ctx::Connect { new: None };
                    }
                    (got, want) => {
                        return Err(fail(format!("connect: hub {got:?}, model {want:?}")));
                    }
                }
            }
            Op::Disconnect { who, clean } => {
                let Some(id) = self.pick(*who) else { return Ok(()) };
                let reason =
                    if *clean { DisconnectReason::Clean } else { DisconnectReason::Abnormal };
                let got = self.sim.hub.disconnect(self.at(now), id, reason);
                self.collect();
                self.model.observe(now);
                let want = self.model.lookup(id).map(|()| {
                    self.model.close_conn(id, ClosedBy::Transport(reason));
                });
                prop_assert_eq!(&got, &want, "disconnect {}", id);
                addressed = Some((id, format!("{got:?}")));
            }
            Op::Close { who, reason } => {
                let Some(id) = self.pick(*who) else { return Ok(()) };
                let reason = APP_CLOSE_REASONS[*reason];
                let got = self.sim.hub.close(self.at(now), id, reason);
                self.collect();
                self.model.observe(now);
                let want = self.model.lookup(id).map(|()| {
                    self.model.close_conn(id, ClosedBy::Hub(reason));
                });
                prop_assert_eq!(&got, &want, "close {}", id);
                addressed = Some((id, format!("{got:?}")));
                ctx = Ctx::AppClose { id, reason };
            }
            Op::Receive { who, frame: sent } => {
                let Some(id) = self.pick(*who) else { return Ok(()) };
                // Raw bytes are answered as what they decode to; a valid frame outside the
                // model's domain is not sent (one over the size limit is, whatever it holds).
                let mut refused = None;
                let mut raw_positions = None;
                let decoded;
                let frame = match sent {
                    In::Raw(bytes) if bytes.len() <= self.model.cfg.max_frame_bytes => {
                        let max_id = self.model.cfg.max_client_id_bytes;
                        let d = crate::raw::decode(bytes, max_id);
                        let Some(f) = d.model_frame(bytes) else { return Ok(()) };
                        match d {
                            crate::raw::Decoded::Refused(e) => refused = Some(e),
                            crate::raw::Decoded::Resume(p) => raw_positions = Some(p),
                            _ => {}
                        }
                        decoded = f;
                        &decoded
                    }
                    other => other,
                };
                let positions = match frame {
                    In::Resume(..) if raw_positions.is_some() => raw_positions,
                    In::Resume(spec, _) => Some(self.positions(id, spec)),
                    In::Remembered(from, _) => {
                        let memory = self.pick(*from).and_then(|f| self.remembered.get(&f));
                        match memory {
                            Some(m) if !m.is_empty() => {
                                Some(m.iter().map(|(n, &(e, s))| (n.clone(), e, s)).collect())
                            }
                            _ => return Ok(()),
                        }
                    }
                    // Sorted by stream, one per stream (as the JSON object holds them).
                    In::Positions(list, _) => {
                        let sorted: BTreeMap<&String, (u64, u64)> =
                            list.iter().map(|(n, e, s)| (n, (*e, *s))).collect();
                        Some(sorted.into_iter().map(|(n, (e, s))| (n.clone(), e, s)).collect())
                    }
                    In::Spoiled(..) => {
                        refused = Some(PeerError::InvalidField { field: "positions" });
                        None
                    }
                    _ => None,
                };
                let bytes: Vec<u8> = match frame {
                    _ if matches!(sent, In::Raw(_)) => {
                        let In::Raw(bytes) = sent else { unreachable!() };
                        bytes.clone()
                    }
                    In::Subscribe(th) => {
                        json!({"type": "subscribe", "thread_id": thread_name(*th)})
                            .to_string()
                            .into()
                    }
                    In::Unsubscribe(None) => br#"{"type":"unsubscribe"}"#.to_vec(),
                    In::Unsubscribe(Some(th)) => {
                        json!({"type": "unsubscribe", "thread_id": thread_name(*th)})
                            .to_string()
                            .into()
                    }
                    In::Message(th, n) => {
                        let mut m = json!({"type": "message", "data": {"n": n}});
                        if let Some(th) = th {
                            m["thread_id"] = json!(thread_name(*th));
                        }
                        m.to_string().into()
                    }
                    In::Ping => br#"{"type":"ping"}"#.to_vec(),
                    In::Spoiled(list, variant) => {
                        let mut streams: serde_json::Map<String, Value> = list
                            .iter()
                            .map(|(n, e, s)| (n.clone(), json!({"epoch": e, "seq": s})))
                            .collect();
                        let (e, s) = list
                            .iter()
                            .find(|(n, ..)| n == "u")
                            .map_or((1, 0), |(_, e, s)| (*e, *s));
                        streams.insert("u".to_owned(), spoiled_position(*variant, e, s));
                        json!({"type": "resume", "positions": streams}).to_string().into()
                    }
                    In::Resume(_, extra) | In::Remembered(_, extra) | In::Positions(_, extra) => {
                        let position = |e, s| match extra {
                            true => json!({"epoch": e, "seq": s, "x": [0]}),
                            false => json!({"epoch": e, "seq": s}),
                        };
                        let streams: serde_json::Map<String, Value> = (positions.iter().flatten())
                            .map(|(n, e, s)| (n.clone(), position(e, s)))
                            .collect();
                        json!({"type": "resume", "positions": streams}).to_string().into()
                    }
                    In::Garbage(i) => GARBAGE[*i].0.to_vec(),
                    In::Oversized(extra) => {
                        let head = br#"{"type":"message","data":""#;
                        let limit = self.model.cfg.max_frame_bytes;
                        let pad = limit + extra - head.len() - 2;
                        let mut v = head.to_vec();
                        v.extend(std::iter::repeat_n(b'x', pad));
                        v.extend(b"\"}");
                        assert!(v.len() > limit);
                        v
                    }
                    In::Raw(bytes) => bytes.clone(),
                };
                let got = self.sim.hub.receive(self.at(now), id, &bytes);
                self.collect();
                self.model.observe(now);
                // Where JSON breaks is serde's to say: a malformed frame's position is the hub's.
                if let (Some(PeerError::Malformed { .. }), Err(ReceiveError::Peer(e))) =
                    (&refused, &got)
                {
                    if matches!(e, PeerError::Malformed { .. }) {
                        refused = Some(e.clone());
                    }
                }
                let echo = crate::raw::echo_id(&bytes, self.model.cfg.max_client_id_bytes);
                let want =
                    self.model.receive(id, frame, bytes.len(), positions.as_deref(), refused, echo);
                let peer_error = matches!(got, Err(ReceiveError::Peer(_)));
                match (&got, &want) {
                    (Ok(()), Ok(())) => {}
                    (Err(ReceiveError::Conn(g)), Err(Err(w))) if g == w => {}
                    (Err(ReceiveError::Peer(g)), Err(Ok(w))) if g == w => {}
                    _ => return Err(fail(format!("receive: hub {got:?}, model {want:?}"))),
                }
                addressed = Some((id, format!("{got:?}")));
                ctx = Ctx::Receive { id, peer_error };
            }
            Op::Pong { who } => {
                let Some(id) = self.pick(*who) else { return Ok(()) };
                let got = self.sim.hub.pong(self.at(now), id);
                self.collect();
                self.model.observe(now);
                let want = self.model.pong(id);
                prop_assert_eq!(&got, &want, "pong {}", id);
                addressed = Some((id, format!("{got:?}")));
            }
            Op::Written { who, bytes } => {
                let Some(id) = self.pick(*who) else { return Ok(()) };
                let got = self.sim.hub.written(self.at(now), id, *bytes as usize);
                self.collect();
                self.model.observe(now);
                let want = self.model.written(id, *bytes);
                prop_assert_eq!(&got, &want, "written {}", id);
                addressed = Some((id, format!("{got:?}")));
            }
            Op::Refresh { who, expires_in } => {
                let Some(id) = self.pick(*who) else { return Ok(()) };
                let exp = expires_in.map(|d| self.rel(d));
                let got = self.sim.hub.refresh(self.at(now), id, exp.map(|e| self.at(e)));
                self.collect();
                self.model.observe(now);
                let want = self.model.refresh(id, exp);
                prop_assert_eq!(&got, &want, "refresh {}", id);
                addressed = Some((id, format!("{got:?}")));
            }
            Op::Join { who, room } => {
                let Some(id) = self.pick(*who) else { return Ok(()) };
                let got = self.sim.hub.join(self.at(now), id, room_name(*room));
                self.collect();
                self.model.observe(now);
                let want = self.model.join(id, *room);
                prop_assert_eq!(&got, &want, "join {}", id);
                addressed = Some((id, format!("{got:?}")));
                ctx = Ctx::Room { id };
            }
            Op::Leave { who, room, joined } => {
                let Some(id) = self.pick(*who) else { return Ok(()) };
                let room = match self.model.live.get(&id) {
                    Some(c) if *joined && !c.rooms.is_empty() => c.rooms[room % c.rooms.len()].0,
                    _ => *room,
                };
                let got = self.sim.hub.leave(self.at(now), id, room_name(room));
                self.collect();
                self.model.observe(now);
                let want = self.model.leave(id, room);
                prop_assert_eq!(&got, &want, "leave {}", id);
                addressed = Some((id, format!("{got:?}")));
                ctx = Ctx::Room { id };
            }
            Op::Publish { target, kind, thread } => {
                let resolved = match target {
                    Tgt::User(t, u) => ResolvedTarget::User(*t, *u),
                    Tgt::Thread(t, u, th) => ResolvedTarget::Thread(*t, *u, *th),
                    Tgt::Conn(who) => match self.pick(*who) {
                        Some(id) => ResolvedTarget::Conn(id),
                        None => return Ok(()),
                    },
                    Tgt::Room(t, r) => ResolvedTarget::Room(*t, *r),
                    Tgt::Tenant(t, r) => ResolvedTarget::Tenant(*t, *r),
                    Tgt::Everyone => ResolvedTarget::Everyone,
                    Tgt::UserOf(who)
                    | Tgt::ThreadOf(who, _)
                    | Tgt::RoomOf(who, _)
                    | Tgt::TenantOf(who, _) => {
                        // Relative to a connection ever minted: a forged id has no user.
                        let minted = Who { forged: None, ..*who };
                        let Some(id) = self.pick(minted) else { return Ok(()) };
                        let (t, u) = self.model.binding[&id];
                        match target {
                            Tgt::UserOf(_) => ResolvedTarget::User(t, u),
                            Tgt::ThreadOf(_, th) => ResolvedTarget::Thread(t, u, *th),
                            // Mostly a room the connection is in.
                            Tgt::RoomOf(_, r) => match self.model.live.get(&id) {
                                Some(c) if !c.rooms.is_empty() => {
                                    ResolvedTarget::Room(t, c.rooms[r % c.rooms.len()].0)
                                }
                                _ => ResolvedTarget::Room(t, *r),
                            },
                            _ => {
                                let Tgt::TenantOf(_, role) = target else { unreachable!() };
                                ResolvedTarget::Tenant(t, *role)
                            }
                        }
                    }
                };
                let hub_target = match &resolved {
                    ResolvedTarget::User(t, u) => {
                        Target::User { tenant: tenant_name(*t).into(), user: user_name(*u).into() }
                    }
                    ResolvedTarget::Thread(t, u, th) => Target::Thread {
                        tenant: tenant_name(*t).into(),
                        user: user_name(*u).into(),
                        thread: thread_name(*th).into(),
                    },
                    ResolvedTarget::Conn(id) => Target::Connection(*id),
                    ResolvedTarget::Room(t, r) => {
                        Target::Room { tenant: tenant_name(*t).into(), room: room_name(*r).into() }
                    }
                    ResolvedTarget::Tenant(t, r) => Target::Tenant {
                        tenant: tenant_name(*t).into(),
                        audience: match r {
                            None => Audience::All,
                            Some(r) => Audience::Role(Role::from(ROLES[*r])),
                        },
                    },
                    ResolvedTarget::Everyone => Target::Everyone,
                };
                let kind = event_kind(*kind);
                let mut env = Envelope::new(hub_target, kind.clone())
                    .data(json!({"api_key": SECRET, "n": self.model.c.publishes}));
                if let Some(th) = thread {
                    env = env.thread(thread_name(*th));
                }
                let n = self.model.c.publishes;
                let got = self.sim.hub.publish(self.at(now), env);
                self.published = got.as_ref().ok().map(|p| (n, p.clone()));
                self.collect();
                self.model.observe(now);
                let want = self.model.publish(&resolved, &kind, *thread);
                match (&got, &want) {
                    (Ok(p), Ok(w)) => {
                        prop_assert_eq!(p.delivered, w.delivered, "publish delivered");
                        prop_assert_eq!(p.skipped, w.skipped, "publish skipped");
                        prop_assert_eq!(p.closed, w.closed, "publish closed");
                        prop_assert_eq!(p.held, w.held, "publish held");
                        prop_assert_eq!(p.undeliverable(), w.delivered == 0 && w.held == 0);
                        let got_pos = p.position.as_ref().map(|(n, pos)| (n.to_string(), pos.seq));
                        let want_pos = w.position.as_ref().map(|(n, seq, _)| (n.clone(), *seq));
                        prop_assert_eq!(got_pos, want_pos, "publish position");
                        if let (Some((n, pos)), Some((_, _, inc))) = (&p.position, &w.position) {
                            let identity = self.stream_identity(&n.to_string(), &resolved);
                            self.learn_epoch(*inc, identity, pos.epoch)?;
                        }
                    }
                    (Err(g), Err(w)) if g == w => {}
                    _ => return Err(fail(format!("publish: hub {got:?}, model {want:?}"))),
                }
                // An invalid kind is refused before the target is looked at.
                if let (ResolvedTarget::Conn(id), false) =
                    (&resolved, matches!(got, Err(PublishError::InvalidKind)))
                {
                    addressed = Some((*id, format!("{got:?}")));
                }
                ctx = Ctx::Publish { target: resolved, thread: *thread };
            }
            Op::Sleep(ms) => {
                self.t += u64::from(*ms);
                return Ok(());
            }
            Op::Tick(ms) => {
                self.t += u64::from(*ms);
                let now = self.t.saturating_sub(u64::from(step.back));
                self.tick(now);
                ctx = Ctx::Tick;
            }
            Op::TickBack(ms) => {
                let now = self.t.saturating_sub(u64::from(*ms));
                self.tick(now);
                ctx = Ctx::Tick;
            }
            Op::TickNext => {
                let Some(next) = self.sim.hub.poll_timeout() else { return Ok(()) };
                let since = next.saturating_duration_since(self.sim.start).as_nanos();
                let now = since.div_ceil(1_000_000) as Ms;
                self.t = self.t.max(now);
                self.tick(now);
                ctx = Ctx::Tick;
            }
        }
        // While actions are queued, `poll_timeout` is the last `now` seen ("drain first").
        if !self.actions.is_empty() {
            prop_assert_eq!(
                self.pending,
                Some(self.at(self.model.clock)),
                "poll_timeout with actions queued"
            );
        }
        // A tick leaves nothing due behind: the next deadline is in the future.
        if matches!(ctx, Ctx::Tick) {
            let next = self.sim.hub.poll_timeout();
            prop_assert!(
                next.is_none_or(|n| n > self.at(self.model.clock)),
                "after a tick at {}ms, poll_timeout is {:?}",
                self.model.clock,
                next.map(|n| n - self.sim.start)
            );
        }
        let actions = std::mem::take(&mut self.actions);
        self.check_actions(&pre, &ctx, addressed.as_ref(), &actions)?;
        // Kept for [`Runner::actions`]: checks of the caller's own run over them.
        self.actions = actions;
        self.check_stats()?;
        self.check_views()?;
        self.sim.hub.check_invariants().map_err(|e| fail(format!("hub invariant: {e}")))
    }

    fn tick(&mut self, now: Ms) {
        self.sim.hub.tick(self.at(now));
        self.collect();
        self.model.observe(now);
        self.model.tick();
    }

    fn stream_identity(&self, wire: &str, target: &ResolvedTarget) -> String {
        match target {
            ResolvedTarget::Room(t, _) => format!("{wire}@{t}"),
            ResolvedTarget::Tenant(t, _) => format!("t@{t}"),
            ResolvedTarget::User(t, u) | ResolvedTarget::Thread(t, u, _) => format!("u@{t}/{u}"),
            ResolvedTarget::Conn(id) => {
                let (t, u) = self.model.binding[id];
                format!("u@{t}/{u}")
            }
            ResolvedTarget::Everyone => unreachable!("Everyone reports no position"),
        }
    }

    /// Records the epoch of a stream incarnation; a stream created anew must get a new epoch.
    fn learn_epoch(&mut self, inc: u64, identity: String, epoch: u64) -> Result<(), TestCaseError> {
        match self.epochs.get(&inc) {
            Some(&known) => {
                prop_assert_eq!(
                    known,
                    epoch,
                    "epoch of {} changed within one incarnation",
                    identity
                )
            }
            None => {
                prop_assert!(epoch != 0, "stream {identity} has epoch 0");
                let seen = self.stream_epochs.entry(identity.clone()).or_default();
                prop_assert!(
                    seen.insert(epoch),
                    "stream {identity} created anew but reuses epoch {epoch}"
                );
                self.epochs.insert(inc, epoch);
            }
        }
        Ok(())
    }
}

/// Runs `steps` against a fresh hub and model configured by `knobs`.
///
/// # Errors
/// The first disagreement between hub and model, or the first broken invariant.
pub fn run(knobs: &Knobs, steps: &[Step]) -> Result<(), TestCaseError> {
    Runner::new(knobs).run(steps)
}
