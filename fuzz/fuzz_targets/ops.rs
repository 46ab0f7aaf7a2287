//! An arbitrary sequence of hub operations, with the hub's invariants and the isolation rule
//! checked after every step. Connections are addressed by an index into every id ever minted
//! (so closed and stale ids are exercised) or forged outright; time moves forwards and backwards.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use switchboard::{
    Action, Audience, CloseReason, Config, ConnId, DisconnectReason, Envelope, EventKind, Hub,
    Principal, Target, Tier, UserLimitPolicy,
};

#[derive(Arbitrary, Debug)]
enum Conn {
    Minted(u8),
    Forged(u8, u8),
}

#[derive(Arbitrary, Debug)]
enum To {
    User(u8, u8),
    Thread(u8, u8, u8),
    Connection(Conn),
    Room(u8, u8),
    Tenant(u8, Option<u8>),
    Everyone,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Connect { tenant: u8, user: u8, tier: u8, roles: u8, expires_in_s: Option<u8> },
    Disconnect { conn: Conn, abnormal: bool },
    Close { conn: Conn },
    Receive { conn: Conn, frame: Frame },
    Raw { conn: Conn, bytes: Vec<u8> },
    Pong { conn: Conn },
    Written { conn: Conn, bytes: u32 },
    Refresh { conn: Conn, expires_in_s: Option<u8> },
    Join { conn: Conn, room: u8 },
    Leave { conn: Conn, room: u8 },
    Publish { to: To, kind: u8, thread: Option<u8>, size: u8 },
    Tick { delta_ms: i32 },
}

#[derive(Arbitrary, Debug)]
enum Frame {
    Subscribe(u8),
    Unsubscribe(Option<u8>),
    Message(Option<u8>),
    Ping,
    Resume { user_seq: u8, epoch_ok: bool, room: Option<u8> },
}

struct Live {
    tenant: String,
    user: String,
    roles: Vec<String>,
    rooms: HashSet<String>,
}

fn name(prefix: &str, n: u8, of: u8) -> String {
    format!("{prefix}{}", n % of)
}

fuzz_target!(|ops: Vec<Op>| {
    let cfg = Config {
        max_connections: 12,
        max_connections_per_tenant: Some(8),
        max_rooms_per_connection: 3,
        max_thread_subscriptions: 2,
        max_detached_users: 4,
        max_inflight_bytes: 600,
        max_unwritten_bytes: 2000,
        max_buffered_bytes: 20_000,
        resume_window: Duration::from_millis(200),
        room_retention: Duration::from_secs(20),
        max_idle_rooms: 2,
        allow_global_broadcast: true,
        user_limit_policy: UserLimitPolicy::EvictOldest,
        snapshot_interval: Some(Duration::from_secs(30)),
        ..Config::default()
    };
    let mut hub = Hub::new(cfg).unwrap();
    let base = Instant::now() + Duration::from_secs(3600);
    let mut offset = Duration::from_secs(0);
    let mut minted: Vec<ConnId> = Vec::new();
    let mut live: HashMap<ConnId, Live> = HashMap::new();

    for op in ops.into_iter().take(300) {
        let now = base + offset;
        let pick = |c: &Conn| match *c {
            Conn::Minted(i) if !minted.is_empty() => Some(minted[i as usize % minted.len()]),
            Conn::Minted(_) => None,
            Conn::Forged(i, g) => Some(ConnId::from_raw(u32::from(i % 16), u32::from(g % 4))),
        };
        // What a delivery of this step may reach: None = no event publish this step.
        let mut allowed: Option<Box<dyn Fn(ConnId, &Live) -> bool>> = None;
        match &op {
            Op::Connect { tenant, user, tier, roles, expires_in_s } => {
                let tenant = name("t", *tenant, 3);
                let user = name("u", *user, 4);
                let roles: Vec<String> =
                    (0..2).filter(|r| roles & (1 << r) != 0).map(|r| format!("role{r}")).collect();
                let mut p = Principal::new(tenant.as_str(), user.as_str())
                    .tier(Tier::ALL[*tier as usize % 4])
                    .roles(roles.iter().map(String::as_str));
                if let Some(s) = expires_in_s {
                    p = p.expires_at(now + Duration::from_secs(u64::from(*s)));
                }
                if let Ok(id) = hub.connect(now, p) {
                    minted.push(id);
                    live.insert(id, Live { tenant, user, roles, rooms: HashSet::new() });
                }
            }
            Op::Disconnect { conn, abnormal } => {
                if let Some(c) = pick(conn) {
                    let reason = if *abnormal {
                        DisconnectReason::Abnormal
                    } else {
                        DisconnectReason::Clean
                    };
                    let ok = hub.disconnect(now, c, reason).is_ok();
                    assert_eq!(
                        ok,
                        live.remove(&c).is_some(),
                        "disconnect honoured a dead id or refused a live one"
                    );
                }
            }
            Op::Close { conn } => {
                if let Some(c) = pick(conn) {
                    assert_eq!(
                        hub.close(now, c, CloseReason::Kicked).is_ok(),
                        live.contains_key(&c)
                    );
                }
            }
            Op::Receive { conn, frame } => {
                if let Some(c) = pick(conn) {
                    let text = match frame {
                        Frame::Subscribe(t) => {
                            format!(r#"{{"type":"subscribe","thread_id":"{}"}}"#, name("th", *t, 3))
                        }
                        Frame::Unsubscribe(Some(t)) => format!(
                            r#"{{"type":"unsubscribe","thread_id":"{}"}}"#,
                            name("th", *t, 3)
                        ),
                        Frame::Unsubscribe(None) => r#"{"type":"unsubscribe"}"#.to_owned(),
                        Frame::Message(t) => match t {
                            Some(t) => format!(
                                r#"{{"type":"message","thread_id":"{}","data":{{"user_id":"forged"}}}}"#,
                                name("th", *t, 3)
                            ),
                            None => r#"{"type":"message","data":1}"#.to_owned(),
                        },
                        Frame::Ping => r#"{"type":"ping"}"#.to_owned(),
                        Frame::Resume { user_seq, epoch_ok, room } => {
                            let epoch = hub
                                .user(
                                    live.get(&c).map_or("", |l| l.tenant.as_str()),
                                    live.get(&c).map_or("", |l| l.user.as_str()),
                                )
                                .map_or(1, |u| u.stream_position().epoch);
                            let epoch = if *epoch_ok { epoch } else { epoch ^ 1 };
                            let room = room.map_or(String::new(), |r| {
                                format!(r#","r:{}":{{"epoch":1,"seq":0}}"#, name("room", r, 3))
                            });
                            format!(
                                r#"{{"type":"resume","positions":{{"u":{{"epoch":{epoch},"seq":{user_seq}}}{room}}}}}"#
                            )
                        }
                    };
                    let r = hub.receive(now, c, text.as_bytes());
                    if !live.contains_key(&c) {
                        assert!(r.is_err(), "a frame on a dead id was accepted");
                    }
                }
            }
            Op::Raw { conn, bytes } => {
                if let Some(c) = pick(conn) {
                    let _ = hub.receive(now, c, bytes);
                }
            }
            Op::Pong { conn } => {
                if let Some(c) = pick(conn) {
                    assert_eq!(hub.pong(now, c).is_ok(), live.contains_key(&c));
                }
            }
            Op::Written { conn, bytes } => {
                if let Some(c) = pick(conn) {
                    assert_eq!(hub.written(now, c, *bytes as usize).is_ok(), live.contains_key(&c));
                }
            }
            Op::Refresh { conn, expires_in_s } => {
                if let Some(c) = pick(conn) {
                    let _ = hub.refresh(
                        now,
                        c,
                        expires_in_s.map(|s| now + Duration::from_secs(u64::from(s))),
                    );
                }
            }
            Op::Join { conn, room } => {
                if let Some(c) = pick(conn) {
                    let room = name("room", *room, 3);
                    if hub.join(now, c, room.as_str().into()).is_ok() {
                        live.get_mut(&c).expect("join honoured a dead id").rooms.insert(room);
                    }
                }
            }
            Op::Leave { conn, room } => {
                if let Some(c) = pick(conn) {
                    let room = name("room", *room, 3);
                    if hub.leave(now, c, &room).is_ok() {
                        live.get_mut(&c).expect("leave honoured a dead id").rooms.remove(&room);
                    }
                }
            }
            Op::Publish { to, kind, thread, size } => {
                let kind = match kind % 4 {
                    0 => EventKind::AgentThinking,
                    1 => EventKind::AgentStarted,
                    2 => EventKind::custom("note"),
                    _ => EventKind::ToolCompleted,
                };
                let target = match to {
                    To::User(t, u) => {
                        let (t, u) = (name("t", *t, 3), name("u", *u, 4));
                        let (t2, u2) = (t.clone(), u.clone());
                        allowed = Some(Box::new(move |_, l| l.tenant == t2 && l.user == u2));
                        Target::User { tenant: t.into(), user: u.into() }
                    }
                    To::Thread(t, u, th) => {
                        let (t, u) = (name("t", *t, 3), name("u", *u, 4));
                        let (t2, u2) = (t.clone(), u.clone());
                        allowed = Some(Box::new(move |_, l| l.tenant == t2 && l.user == u2));
                        Target::Thread {
                            tenant: t.into(),
                            user: u.into(),
                            thread: name("th", *th, 3).into(),
                        }
                    }
                    To::Connection(c) => match pick(c) {
                        Some(c) => {
                            allowed = Some(Box::new(move |id, _| id == c));
                            Target::Connection(c)
                        }
                        None => continue,
                    },
                    To::Room(t, r) => {
                        let (t, r) = (name("t", *t, 3), name("room", *r, 3));
                        let (t2, r2) = (t.clone(), r.clone());
                        allowed =
                            Some(Box::new(move |_, l| l.tenant == t2 && l.rooms.contains(&r2)));
                        Target::Room { tenant: t.into(), room: r.into() }
                    }
                    To::Tenant(t, role) => {
                        let t = name("t", *t, 3);
                        let role = role.map(|r| format!("role{}", r % 2));
                        let (t2, role2) = (t.clone(), role.clone());
                        allowed = Some(Box::new(move |_, l| {
                            l.tenant == t2 && role2.as_ref().is_none_or(|r| l.roles.contains(r))
                        }));
                        let audience = role.map_or(Audience::All, |r| Audience::Role(r.into()));
                        Target::Tenant { tenant: t.into(), audience }
                    }
                    To::Everyone => {
                        allowed = Some(Box::new(|_, _| true));
                        Target::Everyone
                    }
                };
                let mut env = Envelope::new(target, kind)
                    .data(serde_json::json!({ "pad": "x".repeat(*size as usize) }));
                if let Some(th) = thread {
                    env = env.thread(name("th", *th, 3));
                }
                let _ = hub.publish(now, env);
            }
            Op::Tick { delta_ms } => {
                let d = Duration::from_millis(delta_ms.unsigned_abs().into());
                offset = if *delta_ms >= 0 { offset + d } else { offset.saturating_sub(d) };
                hub.tick(base + offset);
            }
        }

        // Drain: every delivery goes to a live connection, and an event frame of this step's
        // publish only where the target allows. Closes remove connections from the model.
        let mut closed = Vec::new();
        while let Some(action) = hub.poll_action() {
            match action {
                Action::Deliver { conn, frame } => {
                    let l = live.get(&conn).expect("delivery to a connection that is not open");
                    let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
                    let is_event = v.get("seq").is_some() && v.get("stream").is_some();
                    if let (true, Some(allowed)) = (is_event, &allowed) {
                        assert!(
                            allowed(conn, l),
                            "event {frame} reached {conn:?} of {}/{}",
                            l.tenant,
                            l.user
                        );
                    }
                }
                Action::Inbound(msg) => {
                    let l = live.get(&msg.from.conn).expect("inbound from a closed connection");
                    assert_eq!(
                        (msg.from.tenant.as_str(), msg.from.user.as_str()),
                        (l.tenant.as_str(), l.user.as_str())
                    );
                }
                Action::Close { conn, .. } => closed.push(conn),
                Action::Metric(switchboard::MetricEvent::ConnectionClosed { conn, .. }) => {
                    closed.push(conn)
                }
                _ => {}
            }
        }
        for c in closed {
            live.remove(&c);
        }
        hub.check_invariants().unwrap();
        assert_eq!(
            hub.stats().connections_active as usize,
            live.len(),
            "model and hub disagree on open connections"
        );
    }
});
