//! The checks after every step: actions, stats and views.

use super::*;

impl Runner {
    pub(super) fn check_actions(
        &mut self,
        pre: &Model,
        ctx: &Ctx,
        addressed: Option<&(ConnId, String)>,
        actions: &[Action],
    ) -> Result<(), TestCaseError> {
        // Exact agreement with the model: every predicted output, nothing else.
        let mut got: Vec<String> = actions.iter().map(|a| normalize(a, self.sim.start)).collect();
        let mut want = self.model.out.clone();
        got.sort();
        want.sort();
        if got != want {
            let missing: Vec<&String> = want.iter().filter(|w| !got.contains(w)).collect();
            let extra: Vec<&String> = got.iter().filter(|g| !want.contains(g)).collect();
            return Err(fail(format!(
                "actions differ from the model\n  missing: {missing:#?}\n  unexpected: {extra:#?}\n  all: {actions:#?}"
            )));
        }

        let new_conn = match ctx {
            Ctx::Connect { new } => *new,
            _ => None,
        };
        let cfg = &pre.cfg;
        let mut closed_here: BTreeSet<ConnId> = BTreeSet::new();
        // Seqs replayed in this step, per (connection, stream): in order.
        let mut replayed: HashMap<(ConnId, String), u64> = HashMap::new();
        for a in actions {
            let mentioned = match a {
                Action::Deliver { conn, .. }
                | Action::Ping { conn }
                | Action::Close { conn, .. } => Some(*conn),
                _ => None,
            };
            if let Some(conn) = mentioned {
                // (1) Only live connections are addressed, and nothing after their close.
                prop_assert!(
                    pre.live.contains_key(&conn) || new_conn == Some(conn),
                    "(1) action for a connection that is not live: {a:?}"
                );
                prop_assert!(!closed_here.contains(&conn), "(1) action after the close: {a:?}");
            }
            match a {
                Action::Deliver { conn, frame } => {
                    prop_assert!(!frame.as_str().contains(SECRET), "redacted key leaked: {frame}");
                    let v = parse_frame(frame.as_str());
                    let ty = v["type"].as_str().unwrap_or_default();
                    if ty == "connected" {
                        prop_assert_eq!(
                            Some(*conn),
                            new_conn,
                            "connected frame outside its connect"
                        );
                        let (t, u) = self.model.binding[conn];
                        let user_inc = self.model.users[&(t, u)].stream.inc;
                        let tenant_inc = self.model.tenants[&t].inc;
                        let ue = v["streams"]["u"]["epoch"].as_u64().unwrap_or_default();
                        let te = v["streams"]["t"]["epoch"].as_u64().unwrap_or_default();
                        self.learn_epoch(user_inc, format!("u@{t}/{u}"), ue)?;
                        self.learn_epoch(tenant_inc, format!("t@{t}"), te)?;
                    }
                    if ty == "left" {
                        prop_assert!(
                            matches!(ctx, Ctx::Room { id } if id == conn),
                            "left frame outside its leave: {a:?}"
                        );
                    }
                    if ty == "joined" {
                        // Only a join announces a room, and a room a connection just joined
                        // stays (closing it would not have delivered the frame).
                        prop_assert!(
                            matches!(ctx, Ctx::Room { id } if id == conn),
                            "joined frame outside its join: {a:?}"
                        );
                        let stream = v["stream"].as_str().unwrap_or_default();
                        let c = &self.model.live[conn];
                        let room = (0..ROOMS).find(|r| format!("r:{}", room_name(*r)) == stream);
                        let room = room.and_then(|r| self.model.rooms.get(&(c.tenant, r)));
                        let room = room.ok_or_else(|| fail(format!("no room for {frame}")))?;
                        let epoch = v["epoch"].as_u64().unwrap_or_default();
                        let identity = format!("{stream}@{}", c.tenant);
                        self.learn_epoch(room.stream.inc, identity, epoch)?;
                    }
                    let control = [
                        "connected",
                        "pong",
                        "error",
                        "refresh_required",
                        "skipped",
                        "resumed",
                        "joined",
                        "left",
                    ];
                    if control.contains(&ty) {
                        continue;
                    }
                    let c = &pre.live[conn];
                    let (t, u) = (c.tenant, c.user);
                    let stream = v["stream"].as_str().unwrap_or_default().to_owned();
                    let epoch = v["epoch"].as_u64().unwrap_or_default();
                    let seq = v["seq"].as_u64().unwrap_or_default();
                    prop_assert!(seq >= 1, "seqs start at 1: {frame}");
                    let room = (0..ROOMS).find(|r| format!("r:{}", room_name(*r)) == stream);
                    let (inc, identity) = match (stream.as_str(), room) {
                        ("u", _) => (pre.users[&(t, u)].stream.inc, format!("u@{t}/{u}")),
                        ("t", _) => (pre.tenants[&t].inc, format!("t@{t}")),
                        (_, Some(r)) => {
                            let room = pre.rooms.get(&(t, r));
                            let room = room.ok_or_else(|| fail(format!("no room for {frame}")))?;
                            (room.stream.inc, format!("{stream}@{t}"))
                        }
                        _ => return Err(fail(format!("unknown stream {stream}"))),
                    };
                    prop_assert!(
                        self.delivered.insert((*conn, stream.clone(), epoch, seq)),
                        "(4) {} delivered twice to {}",
                        frame,
                        conn
                    );
                    if let Ctx::Publish { target, thread } = ctx {
                        // A live event frame: the target must admit the connection's binding.
                        let admitted = match target {
                            ResolvedTarget::User(t, u) => {
                                (c.tenant, c.user) == (*t, *u) && c.wants(*thread)
                            }
                            ResolvedTarget::Thread(t, u, th) => {
                                (c.tenant, c.user) == (*t, *u) && c.wants(Some(*th))
                            }
                            ResolvedTarget::Conn(id) => conn == id,
                            ResolvedTarget::Room(t, r) => c.tenant == *t && c.in_room(*r),
                            ResolvedTarget::Tenant(t, role) => {
                                c.tenant == *t && role.is_none_or(|r| c.has_role(r))
                            }
                            ResolvedTarget::Everyone => cfg.allow_global_broadcast,
                        };
                        prop_assert!(
                            admitted,
                            "(1) {target:?} does not admit {conn} ({c:?}): {frame}"
                        );
                        // (4) Seqs strictly increase per (connection, stream, epoch).
                        let last = self.seqs.entry((*conn, stream.clone(), epoch)).or_insert(0);
                        prop_assert!(
                            seq > *last,
                            "(4) seq {seq} after {} on {conn} {stream}",
                            *last
                        );
                        *last = seq;
                        self.learn_epoch(inc, identity, epoch)?;
                    } else {
                        // A replay: to the connection that resumed (or whose window ended),
                        // from its own streams only, in order.
                        let replaying = match ctx {
                            Ctx::Receive { id, .. } => id == conn,
                            Ctx::Tick => c.held,
                            _ => false,
                        };
                        prop_assert!(
                            replaying,
                            "(1) event frame outside a publish or replay: {a:?}"
                        );
                        prop_assert!(
                            room.is_none_or(|r| c.in_room(r)),
                            "(1) replay of a room {conn} is not in"
                        );
                        let own = self.epochs.get(&inc).copied();
                        prop_assert_eq!(
                            Some(epoch),
                            own,
                            "(1) replay from another stream: {}",
                            frame
                        );
                        let last = replayed.entry((*conn, stream.clone())).or_insert(0);
                        prop_assert!(seq > *last, "(4) replay of seq {seq} after {}", *last);
                        *last = seq;
                    }
                }
                Action::Ping { conn } => {
                    let c = &pre.live[conn];
                    let at = self.model.clock;
                    prop_assert!(matches!(ctx, Ctx::Tick), "ping outside a tick: {a:?}");
                    prop_assert!(
                        c.ping_at.is_none() && at >= c.last_act + Model::ms(cfg.heartbeat.interval),
                        "ping at {at} for {conn} not silent for an interval: {c:?}"
                    );
                }
                Action::Close { conn, reason } => {
                    closed_here.insert(*conn);
                    let c = &pre.live[conn];
                    let at = self.model.clock;
                    let app_close =
                        matches!(ctx, Ctx::AppClose { id, reason: r } if id == conn && r == reason);
                    let consistent = match reason {
                        CloseReason::HeartbeatTimeout => {
                            matches!(ctx, Ctx::Tick)
                                && c.ping_at.is_some_and(|p| {
                                    at >= p + Model::ms(cfg.heartbeat.timeout) && c.last_act <= p
                                })
                        }
                        CloseReason::SessionExpired => {
                            matches!(ctx, Ctx::Tick) && c.exp.is_some_and(|e| e <= at)
                        }
                        CloseReason::Replaced => {
                            cfg.user_limit_policy == UserLimitPolicy::EvictOldest
                                && new_conn
                                    .is_some_and(|n| self.model.binding[&n] == (c.tenant, c.user))
                        }
                        CloseReason::ProtocolViolation => {
                            matches!(ctx, Ctx::Receive { id, peer_error: true } if id == conn)
                                && c.peer_errors + 1 >= cfg.max_violations
                        }
                        CloseReason::SlowConsumer => {
                            // Over its hard limit in a fan-out; its held-back backlog no longer
                            // buffered when its resume window ends; or too far behind to take a
                            // control frame (`pong` and `error` on a receive, `refresh_required`
                            // in a tick, `joined`/`left`; none is longer than a client frame).
                            let addressed = match ctx {
                                Ctx::Tick => true,
                                Ctx::Receive { id, .. } | Ctx::Room { id } => id == conn,
                                _ => false,
                            };
                            let longest = (cfg.max_frame_bytes + 100) as u64;
                            let behind = c.unwritten + notice_len(c.skipped) + longest
                                > cfg.max_unwritten_bytes;
                            app_close
                                || matches!(ctx, Ctx::Publish { .. })
                                || (addressed && (c.held || behind))
                        }
                        _ => app_close,
                    };
                    prop_assert!(
                        consistent,
                        "close inconsistent with the model: {a:?} {c:?} {ctx:?}"
                    );
                }
                Action::Inbound(i) => {
                    let Ctx::Receive { id, .. } = ctx else {
                        return Err(fail(format!("inbound outside a receive: {a:?}")));
                    };
                    let (t, u) = pre.binding[id];
                    prop_assert_eq!(i.from.conn, *id);
                    prop_assert_eq!(i.from.tenant.as_str(), tenant_name(t));
                    prop_assert_eq!(i.from.user.as_str(), user_name(u));
                }
                _ => {}
            }
        }

        // One serialization per message: its recipients share one buffer.
        if matches!(ctx, Ctx::Publish { .. }) {
            let mut first: HashMap<(String, u64, u64), &switchboard::Frame> = HashMap::new();
            for a in actions {
                let Action::Deliver { frame, .. } = a else { continue };
                let v = parse_frame(frame.as_str());
                let Some(seq) = v["seq"].as_u64() else { continue };
                let stream = v["stream"].as_str().unwrap_or_default().to_owned();
                let key = (stream, v["epoch"].as_u64().unwrap_or_default(), seq);
                let shared = first.entry(key).or_insert(frame);
                prop_assert!(
                    switchboard::Frame::ptr_eq(shared, frame),
                    "recipients of one message got separate buffers: {frame}"
                );
            }
        }

        // (2) A stale or closed id is never honoured.
        if let Some((id, result)) = addressed {
            if !pre.live.contains_key(id) {
                prop_assert!(result.starts_with("Err("), "(2) {id} is not live but got {result}");
                let slot_reused = superseded(pre.live.keys(), *id);
                prop_assert_eq!(
                    result.contains("Stale"),
                    slot_reused,
                    "(2) {} answered {} (slot reused: {})",
                    id,
                    result,
                    slot_reused
                );
                let audited = actions.iter().any(|a| {
                    matches!(a, Action::Audit(e) if e.kind == AuditKind::StaleConnId && e.conn == Some(*id))
                });
                prop_assert_eq!(audited, slot_reused, "(2) stale id {} audit", id);
                prop_assert!(
                    !actions.iter().any(|a| matches!(a,
                        Action::Deliver { conn, .. } | Action::Ping { conn } | Action::Close { conn, .. }
                        if conn == id)),
                    "(2) action for the dead id {id}"
                );
            }
        }
        Ok(())
    }

    /// (3) The hub's counters and gauges equal the model's.
    pub(super) fn check_stats(&self) -> Result<(), TestCaseError> {
        let s = self.sim.hub.stats();
        let m = &self.model;
        let c = &m.c;
        let active_users = m.users.values().filter(|u| !u.conns.is_empty()).count() as u64;
        let (buffered_messages, buffered_bytes) = m.buffered();
        let idle_rooms = m.idle_rooms() as u64;
        let pairs: [(&str, u64, u64); 40] = [
            ("connections_active", s.connections_active, m.live.len() as u64),
            ("connections_opened", s.connections_opened, c.opened),
            ("connections_closed", s.connections_closed, c.closed),
            ("users_active", s.users_active, active_users),
            ("users_detached", s.users_detached, m.users.len() as u64 - active_users),
            ("users_created", s.users_created, c.users_created),
            ("users_retired", s.users_retired, c.users_retired),
            ("users_evicted", s.users_evicted, c.users_evicted),
            ("tenants", s.tenants, m.tenants.len() as u64),
            ("rooms", s.rooms, m.rooms.len() as u64 - idle_rooms),
            ("rooms_idle", s.rooms_idle, idle_rooms),
            ("connects_refused_expired", s.connects_refused_expired, c.refused_expired),
            ("security_violations", s.security_violations, c.security),
            ("audit_events", s.audit_events, c.audits),
            ("stale_ids_refused", s.stale_ids_refused, c.stale),
            ("publishes", s.publishes, c.publishes),
            ("undeliverable", s.undeliverable, c.undeliverable),
            ("deliveries", s.deliveries, c.deliveries),
            ("bytes_delivered", s.bytes_delivered, c.bytes_delivered),
            ("bytes_written", s.bytes_written, c.bytes_written),
            ("frames_received", s.frames_received, c.frames_received),
            ("inbound_messages", s.inbound_messages, c.inbound),
            ("protocol_errors", s.protocol_errors, c.protocol_errors),
            ("pings_sent", s.pings_sent, c.pings),
            ("pongs_received", s.pongs_received, c.pongs),
            ("refresh_required_sent", s.refresh_required_sent, c.refresh_required),
            ("sessions_refreshed", s.sessions_refreshed, c.refreshed),
            ("thinking_skipped", s.thinking_skipped, c.thinking_skipped),
            ("held_back", s.held_back, c.held_back),
            ("replayed", s.replayed, c.replayed),
            ("resumes_recovered", s.resumes_recovered, c.resumes_recovered),
            ("resumes_unrecovered", s.resumes_unrecovered, c.resumes_unrecovered),
            ("buffered_messages", s.buffered_messages, buffered_messages),
            ("buffered_bytes", s.buffered_bytes, buffered_bytes),
            ("breakers_opened", s.breakers_opened, c.breakers_opened),
            ("breaker_refusals", s.breaker_refusals, c.breaker_refusals),
            ("breakers_evicted", s.breakers_evicted, c.breakers_evicted),
            (
                "total_connection_lifetime_ms",
                s.total_connection_lifetime.as_millis() as u64,
                c.lifetime,
            ),
            ("limit_rejections total", s.limit_rejections.total(), c.limits.values().sum()),
            ("heartbeat_timeouts", s.heartbeat_timeouts(), {
                let by = ClosedBy::Hub(CloseReason::HeartbeatTimeout);
                c.closed_by.get(&by).copied().unwrap_or_default()
            }),
        ];
        for (name, hub, model) in pairs {
            prop_assert_eq!(hub, model, "(3) stats.{} differs", name);
        }
        for &by in CLOSED_BY {
            let want = c.closed_by.get(&by).copied().unwrap_or_default();
            prop_assert_eq!(s.closed_by.get(by), want, "(3) stats.closed_by {:?}", by);
        }
        for &kind in LIMIT_KINDS {
            let want = c.limits.get(&kind).copied().unwrap_or_default();
            prop_assert_eq!(
                s.limit_rejections.get(kind),
                want,
                "(3) stats.limit_rejections {:?}",
                kind
            );
        }
        Ok(())
    }

    /// The read-only views and `poll_timeout` agree with the model.
    pub(super) fn check_views(&self) -> Result<(), TestCaseError> {
        let hub = &self.sim.hub;
        let m = &self.model;
        for id in &m.minted {
            let view = hub.connection(*id);
            let Some(c) = m.live.get(id) else {
                prop_assert!(view.is_none(), "view of the closed connection {id}");
                continue;
            };
            let v = view.ok_or_else(|| fail(format!("no view of the live connection {id}")))?;
            prop_assert_eq!(v.id(), *id);
            prop_assert_eq!(v.tenant().as_str(), tenant_name(c.tenant));
            prop_assert_eq!(v.user().as_str(), user_name(c.user));
            prop_assert_eq!(v.tier(), c.tier);
            let roles: Vec<&str> = v.roles().iter().map(|r| r.as_str()).collect();
            let want: Vec<&str> = (0..2).filter(|b| c.has_role(*b)).map(|b| ROLES[b]).collect();
            prop_assert_eq!(roles, want, "roles of {}", id);
            prop_assert_eq!(v.opened_at(), self.at(c.opened));
            prop_assert_eq!(v.last_seen(), self.at(c.last_act), "last_seen of {}", id);
            prop_assert_eq!(v.awaiting_pong(), c.ping_at.is_some(), "awaiting_pong of {}", id);
            prop_assert_eq!(v.expires_at(), c.exp.map(|e| self.at(e)));
            let threads =
                v.threads().map(|ts| ts.iter().map(|t| t.to_string()).collect::<Vec<_>>());
            let want = c.threads.as_ref().map(|ts| ts.iter().map(|t| thread_name(*t)).collect());
            prop_assert_eq!(threads, want, "thread filter of {}", id);
            let rooms: BTreeSet<String> = v.rooms().map(|r| r.to_string()).collect();
            let want: BTreeSet<String> = c.rooms.iter().map(|(r, _)| room_name(*r)).collect();
            prop_assert_eq!(rooms, want, "rooms of {}", id);
            prop_assert_eq!(v.unwritten_bytes(), c.unwritten, "unwritten bytes of {}", id);
            prop_assert_eq!(v.skipped_pending(), c.skipped, "skipped_pending of {}", id);
            prop_assert_eq!(v.held(), c.held, "held of {}", id);
            let deadline = self.at(m.conn_deadline(c));
            let next_check = v.next_check().expect("the model's instants are all representable");
            prop_assert!(
                next_check <= deadline,
                "{id} is next checked at {:?}, after its deadline {:?}",
                next_check - self.sim.start,
                deadline - self.sim.start
            );
        }
        for t in 0..TENANTS {
            for u in 0..USERS {
                let view = hub.user(&tenant_name(t), &user_name(u));
                let Some(mu) = m.users.get(&(t, u)) else {
                    prop_assert!(view.is_none(), "user t{t}/u{u} should not be held");
                    continue;
                };
                let v = view.ok_or_else(|| fail(format!("user t{t}/u{u} should be held")))?;
                prop_assert_eq!(v.connection_count(), mu.conns.len());
                prop_assert_eq!(v.connections().collect::<Vec<_>>(), mu.conns.clone());
                prop_assert_eq!(v.stream_position().seq, mu.stream.seq);
                prop_assert_eq!(v.buffered(), (mu.stream.buf.len(), mu.stream.bytes));
                prop_assert_eq!(
                    breaker_state(v.breaker(), self.sim.start),
                    m.breaker_state((t, u)),
                    "breaker of t{}/u{}",
                    t,
                    u
                );
                prop_assert_eq!(v.created_at(), self.at(mu.created));
                let phase = match mu.detached {
                    None => UserPhase::Active,
                    Some((since, retires_at)) => UserPhase::Detached {
                        since: self.at(since),
                        retires_at: self.at(retires_at),
                    },
                };
                prop_assert_eq!(v.phase(), phase, "phase of t{}/u{}", t, u);
            }
        }
        let next = hub.poll_timeout();
        match m.next_deadline() {
            None => prop_assert_eq!(next, None, "nothing is armed"),
            Some(d) => {
                let next =
                    next.ok_or_else(|| fail("poll_timeout is None with work pending".into()))?;
                prop_assert!(
                    next <= self.at(d),
                    "poll_timeout {:?} is after the model's next deadline {:?}",
                    next - self.sim.start,
                    Duration::from_millis(d)
                );
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The properties
