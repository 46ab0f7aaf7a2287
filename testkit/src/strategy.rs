//! proptest strategies over the vocabulary: knobs, single operations and the chunks (bursts,
//! reconnect loops, resumes after events) that reach limits quickly.

use proptest::prelude::*;
use switchboard::UserLimitPolicy;

use crate::vocab::*;

/// The knobs of a case under `policy`, with this `(interval, timeout)` heartbeat in ms.
pub fn knobs(policy: UserLimitPolicy, heartbeat: (Ms, Ms)) -> impl Strategy<Value = Knobs> {
    let basics = (any::<bool>(), prop::bool::weighted(0.2), prop::option::weighted(0.3, 3u32..6));
    let delivery = (
        prop::option::weighted(0.5, (1usize..6, 150usize..900, 2_000u64..40_000)),
        prop::option::weighted(0.3, 200u64..2_500),
        prop::option::weighted(0.6, (250u64..1_200, 0u64..1_200)),
        prop_oneof![3 => Just(0u64), 1 => 500u64..6_000],
    );
    let protection = (
        prop::option::weighted(0.7, (1u32..4, 2_000u64..30_000, 1_000u64..20_000, 500u64..8_000)),
        prop::option::weighted(0.2, 1u32..4),
        room_retention(),
    );
    (basics, delivery, protection).prop_map(
        move |(
            (global_broadcast, zero_retention, tenant_cap),
            (retention, max_buffered_bytes, backpressure, resume_window),
            (breaker, small_detached_cap, room_retention),
        )| {
            Knobs {
                policy,
                global_broadcast,
                user_retention: if zero_retention { 0 } else { RETENTION },
                max_frame_bytes: MAX_FRAME_BYTES,
                tenant_cap,
                heartbeat,
                retention,
                max_buffered_bytes,
                backpressure: backpressure.map(|(soft, extra)| (soft, soft + extra)),
                resume_window,
                breaker,
                max_detached_users: small_detached_cap.unwrap_or(NO_DETACHED_CAP),
                room_retention,
            }
        },
    )
}

/// `Knobs::room_retention`: half of the cases drop an emptied room at once, the others keep it
/// idle for a few seconds (so that [`idle_room`] re-joins land before and after it runs out).
pub fn room_retention() -> impl Strategy<Value = Ms> {
    prop_oneof![Just(0), Just(IDLE_ROOM_RETENTION), 1_000u64..30_000]
}

/// The room retention [`idle_room`] aims its waits at.
pub const IDLE_ROOM_RETENTION: Ms = 5_000;

/// A room emptied and joined again: a client joins a room, the room gets events, every member
/// leaves (or the connection drops), the room maybe gets more events while empty, time passes
/// (within `room_retention`, exactly at its end, or past it), and a connection of the same user
/// joins again and resumes with what the first one remembers (so that an idle room's stream is
/// recovered, or a dropped one's new epoch is reported).
pub fn idle_room() -> impl Strategy<Value = Vec<Step>> {
    let wait = prop_oneof![
        Just(1u32),
        Just(IDLE_ROOM_RETENTION as u32 - 1),
        Just(IDLE_ROOM_RETENTION as u32),
        Just(IDLE_ROOM_RETENTION as u32 + 1),
        0u32..40_000,
    ];
    let shape = (0..TENANTS, 0..USERS, 0..ROOMS, 0..4usize, 0..3usize, any::<bool>(), wait);
    shape.prop_map(|(tenant, user, room, before, during, drop, wait)| {
        let connect = Op::Connect { tenant, user, tier: 3, roles: 1, expires_in: None };
        let event = Op::Publish { target: Tgt::Room(tenant, room), kind: 3, thread: None };
        let mut ops = vec![connect.clone(), Op::Join { who: NEWEST, room }];
        ops.extend(std::iter::repeat_n(event.clone(), before));
        ops.push(match drop {
            true => Op::Disconnect { who: NEWEST, clean: true },
            false => Op::Leave { who: NEWEST, room, joined: false },
        });
        ops.extend(std::iter::repeat_n(event, during));
        ops.extend([Op::Tick(wait), connect, Op::Join { who: NEWEST, room }]);
        // The connection made two steps back remembers the room (the newest is the re-join's).
        ops.push(Op::Receive { who: NEWEST, frame: In::Remembered(NEWEST_BUT_ONE, false) });
        at_once(ops)
    })
}

/// A connection, addressed symbolically.
pub fn who() -> impl Strategy<Value = Who> {
    let forged = prop::option::weighted(0.03, any::<(u8, u8)>());
    let exact = prop::option::weighted(0.1, any::<u8>());
    (prop::bool::weighted(0.8), any::<u8>(), forged, exact)
        .prop_map(|(live, n, forged, exact)| Who { live, n, forged, exact })
}

/// Client frames; garbage is drawn from the first `garbage` entries of [`GARBAGE`].
pub fn client_frame(garbage: usize) -> impl Strategy<Value = In> {
    prop_oneof![
        3 => (0..THREADS).prop_map(In::Subscribe),
        2 => prop::option::of(0..THREADS).prop_map(In::Unsubscribe),
        4 => (prop::option::of(0..THREADS), any::<u8>()).prop_map(|(t, n)| In::Message(t, n)),
        2 => Just(In::Ping),
        2 => (
            prop::collection::vec((0..5usize, prop::bool::weighted(0.2), any::<u8>()), 0..5),
            prop::bool::weighted(0.2),
        )
            .prop_map(|(spec, extra)| In::Resume(spec, extra)),
        1 => (who(), prop::bool::weighted(0.2)).prop_map(|(from, extra)| In::Remembered(from, extra)),
        3 => (0..garbage).prop_map(In::Garbage),
        1 => (1usize..40).prop_map(In::Oversized),
        2 => raw_frame(),
    ]
}

/// Raw client frame bytes: a JSON object spelled from [`crate::raw::raw_json`]'s tables (maybe
/// cut short), or any bytes at all.
pub fn raw_frame() -> impl Strategy<Value = In> {
    let kind = prop::option::weighted(0.9, any::<u8>());
    let fields = prop::collection::vec(any::<(u8, u8)>(), 0..4);
    let cut = prop::option::weighted(0.15, any::<u16>().prop_map(|c| c % 64));
    prop_oneof![
        3 => (kind, fields, any::<u8>(), cut)
            .prop_map(|(k, f, ws, cut)| In::Raw(crate::raw::raw_json(k, &f, ws, cut))),
        1 => prop::collection::vec(any::<u8>(), 0..48).prop_map(In::Raw),
    ]
}

/// A publish target, by indices or relative to a connection.
pub fn target() -> impl Strategy<Value = Tgt> {
    // One tenant and one user index beyond those that ever connect: never seen by the hub.
    prop_oneof![
        4 => (0..=TENANTS, 0..=USERS).prop_map(|(t, u)| Tgt::User(t, u)),
        3 => (0..TENANTS, 0..USERS, 0..THREADS).prop_map(|(t, u, th)| Tgt::Thread(t, u, th)),
        2 => who().prop_map(Tgt::Conn),
        3 => (0..=TENANTS, 0..ROOMS).prop_map(|(t, r)| Tgt::Room(t, r)),
        2 => (0..=TENANTS, prop::option::of(0..ROLES.len())).prop_map(|(t, r)| Tgt::Tenant(t, r)),
        1 => Just(Tgt::Everyone),
        4 => who().prop_map(Tgt::UserOf),
        2 => (who(), 0..THREADS).prop_map(|(w, th)| Tgt::ThreadOf(w, th)),
        3 => (who(), 0..ROOMS).prop_map(|(w, r)| Tgt::RoomOf(w, r)),
        2 => (who(), prop::option::of(0..ROLES.len())).prop_map(|(w, r)| Tgt::TenantOf(w, r)),
    ]
}

/// One operation; client garbage from the first `garbage` entries of [`GARBAGE`].
pub fn op(garbage: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..TENANTS, 0..USERS, 0..4usize, 0u8..4, prop::option::weighted(0.4, -2_000i32..30_000))
            .prop_map(|(tenant, user, tier, roles, expires_in)| Op::Connect {
                tenant,
                user,
                tier,
                roles,
                expires_in
            }),
        2 => (who(), any::<bool>()).prop_map(|(who, clean)| Op::Disconnect { who, clean }),
        1 => (who(), 0..APP_CLOSE_REASONS.len()).prop_map(|(who, reason)| Op::Close { who, reason }),
        7 => (who(), client_frame(garbage)).prop_map(|(who, frame)| Op::Receive { who, frame }),
        2 => who().prop_map(|who| Op::Pong { who }),
        // Part of what is unwritten, or everything (`written` saturates).
        2 => (who(), prop_oneof![3 => 0u32..400, 1 => Just(100_000u32)])
            .prop_map(|(who, bytes)| Op::Written { who, bytes }),
        2 => (who(), prop::option::weighted(0.8, -3_000i32..30_000))
            .prop_map(|(who, expires_in)| Op::Refresh { who, expires_in }),
        5 => (who(), 0..ROOMS).prop_map(|(who, room)| Op::Join { who, room }),
        3 => (who(), 0..ROOMS, prop::bool::weighted(0.7))
            .prop_map(|(who, room, joined)| Op::Leave { who, room, joined }),
        8 => (target(), prop_oneof![12 => 0..6usize, 1 => Just(6usize)], prop::option::weighted(0.3, 0..THREADS))
            .prop_map(|(target, kind, thread)| Op::Publish { target, kind, thread }),
        2 => (0u32..3_000).prop_map(Op::Sleep),
        4 => prop_oneof![6 => 0u32..2_000, 3 => 2_000u32..16_000, 1 => 20_000u32..150_000]
            .prop_map(Op::Tick),
        1 => (1u32..5_000).prop_map(Op::TickBack),
        3 => Just(Op::TickNext),
    ]
}

/// How far behind the caller's clock a call is made: mostly not at all.
pub fn back() -> impl Strategy<Value = u32> {
    prop_oneof![6 => Just(0u32), 1 => 1u32..4_000]
}

/// One step, a burst of client frames to one connection (so that rate limits, subscription limits
/// and the violation allowance are reached), a burst of connects (so that connection limits are),
/// several connections joining one room, a failing client's reconnect loop, a resume after
/// events, or a burst of publishes to one user (so that backpressure is reached).
pub fn chunk(garbage: usize) -> impl Strategy<Value = Vec<Step>> {
    prop_oneof![
        12 => (back(), op(garbage)).prop_map(|(back, op)| vec![Step { back, op }]),
        1 => (who(), prop::collection::vec(client_frame(garbage), 2..8)).prop_map(|(who, frames)| {
            frames.into_iter().map(|frame| Step { back: 0, op: Op::Receive { who, frame } }).collect()
        }),
        1 => prop::collection::vec((0..TENANTS, 0..USERS, 0..4usize), 2..5).prop_map(|who| {
            who.into_iter()
                .map(|(tenant, user, tier)| Step {
                    back: 0,
                    op: Op::Connect { tenant, user, tier, roles: 1, expires_in: None },
                })
                .collect()
        }),
        1 => (0..ROOMS, prop::collection::vec(any::<u8>(), 2..6)).prop_map(|(room, ns)| {
            ns.into_iter()
                .map(|n| Step { back: 0, op: Op::Join { who: Who { live: true, n, forged: None, exact: None }, room } })
                .collect()
        }),
        1 => reconnect_loop(),
        1 => resume_after_events(),
        1 => idle_room(),
        1 => (who(), prop::collection::vec((0..6usize, thread()), 2..7)).prop_map(|(w, kinds)| {
            kinds
                .into_iter()
                .map(|(kind, thread)| Step {
                    back: 0,
                    op: Op::Publish { target: Tgt::UserOf(w), kind, thread },
                })
                .collect()
        }),
    ]
}

/// An envelope's thread, if any.
pub fn thread() -> impl Strategy<Value = Option<usize>> {
    prop::option::weighted(0.3, 0..THREADS)
}

/// Operations made one after another at the caller's clock.
pub fn at_once(ops: Vec<Op>) -> Vec<Step> {
    ops.into_iter().map(|op| Step { back: 0, op }).collect()
}

/// A client that keeps failing and reconnecting (so that breakers open, refuse, half-open and
/// close), with time passing.
pub fn reconnect_loop() -> impl Strategy<Value = Vec<Step>> {
    let shape = (0..TENANTS, 0..USERS, 1..5usize, 500u32..25_000, 0u32..12_000);
    shape.prop_map(|(tenant, user, failures, wait, up)| {
        let connect = Op::Connect { tenant, user, tier: 3, roles: 1, expires_in: None };
        let fail = Op::Disconnect { who: NEWEST, clean: false };
        let mut ops = Vec::new();
        for _ in 0..failures {
            ops.extend([connect.clone(), fail.clone()]);
        }
        ops.extend([connect.clone(), Op::Tick(wait), connect.clone(), Op::Tick(up), connect]);
        at_once(ops)
    })
}

/// Events for a user, its tenant and maybe a room its client is in, then another client of the
/// user that connects (maybe joins the room, maybe narrows itself to a thread) and resumes from
/// early positions (so that replays happen).
pub fn resume_after_events() -> impl Strategy<Value = Vec<Step>> {
    let events = prop::collection::vec((0..6usize, thread(), 0..3usize), 0..6);
    let seqs = (0u8..3, 0u8..3, 0u8..3);
    let shape = (0..TENANTS, 0..USERS, prop::option::of(0..ROOMS), events, seqs, thread());
    shape.prop_map(|(tenant, user, room, events, (useq, tseq, rseq), narrow)| {
        let connect = Op::Connect { tenant, user, tier: 3, roles: 1, expires_in: None };
        let join = room.map(|room| Op::Join { who: NEWEST, room });
        let mut ops = vec![connect.clone()];
        ops.extend(join.clone());
        for (kind, thread, stream) in events {
            let target = match (stream, room) {
                (1, _) => Tgt::Tenant(tenant, None),
                (2, Some(r)) => Tgt::Room(tenant, r),
                _ => Tgt::User(tenant, user),
            };
            ops.push(Op::Publish { target, kind, thread });
        }
        ops.push(connect);
        ops.extend(join);
        if let Some(th) = narrow {
            ops.push(Op::Receive { who: NEWEST, frame: In::Subscribe(th) });
        }
        let resume = In::Resume(vec![(0, false, useq), (1, false, tseq), (2, false, rseq)], false);
        ops.push(Op::Receive { who: NEWEST, frame: resume });
        at_once(ops)
    })
}

/// Up to 60 steps, many of them rooms emptied and joined again ([`idle_room`]).
pub fn idle_steps() -> impl Strategy<Value = Vec<Step>> {
    let chunk = prop_oneof![2 => idle_room(), 3 => chunk(OBJECT_GARBAGE)];
    prop::collection::vec(chunk, 1..12)
        .prop_map(|chunks| chunks.into_iter().flatten().take(60).collect())
}

/// Up to 60 steps.
pub fn steps(garbage: usize) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(chunk(garbage), 1..50)
        .prop_map(|chunks| chunks.into_iter().flatten().take(60).collect())
}

/// Either user-limit policy.
pub fn policy() -> impl Strategy<Value = UserLimitPolicy> {
    prop_oneof![Just(UserLimitPolicy::Reject), Just(UserLimitPolicy::EvictOldest)]
}

/// How many cases a property runs: `PROPTEST_CASES` if set, never fewer than `at_least` (the
/// count the property is written for), so that the variable lengthens runs and never shortens
/// them.
#[must_use]
pub fn cases(at_least: u32) -> u32 {
    let env = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok());
    env.unwrap_or(at_least).max(at_least)
}

/// The knobs of a resume case: recovery buffers of six messages aged out after 30 s, a
/// `user_retention` of zero, 20 s or 60 s, frames large enough for a `resume` that names every
/// stream with its real epoch, and a resume window some of the time. No breaker, no backpressure.
pub fn resume_knobs() -> impl Strategy<Value = Knobs> {
    (
        prop::sample::select(vec![0, RETENTION, 60_000]),
        prop_oneof![3 => Just(0u64), 1 => 500u64..6_000],
    )
        .prop_map(|(user_retention, resume_window)| Knobs {
            policy: UserLimitPolicy::Reject,
            global_broadcast: false,
            user_retention,
            max_frame_bytes: 4_096,
            tenant_cap: None,
            heartbeat: HEARTBEAT,
            retention: Some((6, 1 << 20, 30_000)),
            max_buffered_bytes: None,
            backpressure: None,
            resume_window,
            breaker: None,
            max_detached_users: NO_DETACHED_CAP,
            room_retention: 0,
        })
}

/// Steps of clients (two users of one tenant, a third of another) that connect, join rooms, drop
/// and come back, resuming on the newest connection with the positions an earlier connection
/// (addressed exactly) remembers, while events are published to them and the clock moves by a
/// millisecond, by whole seconds, and past the buffers' 30 s age and the users' retention.
pub fn resume_steps() -> impl Strategy<Value = Vec<Step>> {
    let user = prop_oneof![Just((0usize, 0usize)), Just((0, 1)), Just((1, 0))];
    let user = move || user.clone();
    let op = prop_oneof![
        3 => (user(), 0u8..4).prop_map(|((tenant, user), roles)| Op::Connect {
            tenant, user, tier: 3, roles, expires_in: None,
        }),
        2 => (0u8..8, any::<bool>()).prop_map(|(k, clean)| Op::Disconnect { who: exact(k), clean }),
        2 => (0u8..8, prop::bool::weighted(0.2)).prop_map(|(k, extra)| Op::Receive {
            who: NEWEST,
            frame: In::Remembered(exact(k), extra),
        }),
        1 => (any::<u8>(), 0..2usize).prop_map(|(k, room)| Op::Join { who: exact(k), room }),
        6 => (user(), 0..7usize, thread()).prop_map(|((t, u), kind, thread)| Op::Publish {
            target: Tgt::User(t, u), kind, thread,
        }),
        2 => (0..2usize, 0..2usize, 0..6usize).prop_map(|(t, room, kind)| Op::Publish {
            target: Tgt::Room(t, room), kind, thread: None,
        }),
        1 => (0..2usize, prop::option::of(0..2usize), 0..6usize).prop_map(|(t, role, kind)| {
            Op::Publish { target: Tgt::Tenant(t, role), kind, thread: None }
        }),
        1 => (any::<u8>(), 0..1_000u32).prop_map(|(k, bytes)| Op::Written { who: exact(k), bytes }),
        1 => any::<u8>().prop_map(|k| Op::Pong { who: exact(k) }),
        3 => prop::sample::select(vec![1u32, 1_000, 5_000, 10_000, 29_999, 30_000, 30_001, 61_000])
            .prop_map(Op::Tick),
        1 => Just(Op::TickNext),
    ];
    // A device coming back: its newest connection drops, it connects again and resumes with
    // what one of the first connections (mostly its own earlier one) remembers.
    let back = (user(), any::<bool>(), 0u8..8, prop::bool::weighted(0.1)).prop_map(
        |((tenant, user), clean, k, extra)| {
            vec![
                Op::Disconnect { who: NEWEST, clean },
                Op::Connect { tenant, user, tier: 3, roles: 0, expires_in: None },
                Op::Receive { who: NEWEST, frame: In::Remembered(exact(k), extra) },
            ]
        },
    );
    let chunk = prop_oneof![4 => op.prop_map(|op| vec![op]), 1 => back];
    prop::collection::vec(chunk, 1..40).prop_map(|c| at_once(c.into_iter().flatten().collect()))
}

/// One device of the resume properties (`tests/resume_props.rs`): a client of a user that keeps
/// its positions across its connections.
#[derive(Clone, Debug)]
pub struct Device {
    /// Its user, by model index `(tenant, user)`.
    pub user: (usize, usize),
    /// It holds role 0 (`admin`).
    pub admin: bool,
    /// The threads it narrows its connections to (`None`: all of its user's events).
    pub filter: Option<Vec<usize>>,
    /// The rooms the application puts each of its connections into when it connects.
    pub rooms: Vec<usize>,
    /// With a resume window: it narrows right before resuming instead of right after connecting.
    pub late_subscribe: bool,
    /// Before its real `resume` it sends one with a spoiled position ([`In::Spoiled`], which way).
    pub spoil: Option<usize>,
    /// Its positions carry fields of their own, which the hub must ignore.
    pub extra: bool,
}

/// The users of the resume properties' devices (two devices each): two users of tenant 0 and
/// one of tenant 1. User `(0, 3)` never connects (publishing to it reaches no stream).
pub const DEVICE_USERS: [(usize, usize); 3] = [(0, 0), (0, 1), (1, 0)];
/// How many devices a resume case has.
pub const DEVICES: usize = 2 * DEVICE_USERS.len();
/// The clock steps of the resume properties, in ms: with whole seconds and single milliseconds a
/// message's age lands exactly on the 30 s `max_age` (kept) and one millisecond past it
/// (dropped), and a detached user's on its 60 s retention.
pub const DEVICE_TICKS: [u32; 11] =
    [1, 1_000, 5_000, 10_000, 20_000, 29_000, 29_999, 30_000, 30_001, 31_000, 61_000];

/// Device `i` of a resume case.
pub fn device(i: usize) -> impl Strategy<Value = Device> {
    let threads =
        prop_oneof![Just(None), Just(Some(vec![0])), Just(Some(vec![1])), Just(Some(vec![0, 1]))];
    let rooms = prop_oneof![Just(vec![]), Just(vec![0]), Just(vec![1]), Just(vec![0, 1])];
    let spoil = prop::option::weighted(0.25, 0..SPOILED_POSITIONS);
    (threads, any::<bool>(), rooms, any::<bool>(), spoil, any::<bool>()).prop_map(
        move |(filter, admin, rooms, late_subscribe, spoil, extra)| Device {
            user: DEVICE_USERS[i / 2],
            admin,
            filter,
            rooms,
            late_subscribe,
            spoil,
            extra,
        },
    )
}

/// The devices of a resume case.
pub fn devices() -> impl Strategy<Value = Vec<Device>> {
    (0..DEVICES).map(device).collect::<Vec<_>>()
}

/// The knobs of a resume case with this resume window (ms): recovery buffers of six messages
/// aged out after 30 s, users retained 60 s, no backpressure, no breaker, and a heartbeat too slow
/// to ever ping (the devices answer nothing but what the case says).
#[must_use]
pub fn device_knobs(resume_window: Ms) -> Knobs {
    Knobs {
        policy: UserLimitPolicy::Reject,
        global_broadcast: false,
        user_retention: 60_000,
        max_frame_bytes: 4_096,
        tenant_cap: None,
        heartbeat: (864_000_000, 5_000),
        retention: Some((6, 1 << 30, 30_000)),
        max_buffered_bytes: None,
        backpressure: Some((1 << 30, 1 << 30)),
        resume_window,
        breaker: None,
        max_detached_users: NO_DETACHED_CAP,
        room_retention: 0,
    }
}

/// Operations of devices, as `(device, op)`: the device's own operations (`Connect`,
/// `Disconnect`, `Join`, `Leave`, a `resume` as `Receive` of [`In::Positions`], a publish to
/// [`Tgt::Conn`]) address the device's connection, whatever their own fields say (the driver in
/// `tests/resume_props.rs` resolves them, and fills in the positions from its client model);
/// the others (publishes to users, threads, rooms and tenants) ignore the device. `Tick` moves
/// the clock with the hub ticked at once, `Sleep` moves it with the tick late: the next
/// operation reaches the hub first, and the tick (`Tick(0)`) right after it.
pub fn device_ops() -> impl Strategy<Value = Vec<(usize, Op)>> {
    let k = || 0..6usize;
    let d = || 0..DEVICES;
    let users = prop::sample::select(vec![(0usize, 0usize), (0, 1), (1, 0), (0, 3)]);
    let tick = || prop::sample::select(DEVICE_TICKS.to_vec());
    let publish = |target, kind, thread| Op::Publish { target, kind, thread };
    let op = prop_oneof![
        4 => (users.clone(), prop::option::of(0..2usize), k())
            .prop_map(move |((t, u), th, kind)| (0, publish(Tgt::User(t, u), kind, th))),
        2 => (users, 0..2usize, k())
            .prop_map(move |((t, u), th, kind)| (0, publish(Tgt::Thread(t, u, th), kind, None))),
        2 => (d(), k()).prop_map(move |(dev, kind)| (dev, publish(Tgt::Conn(NEWEST), kind, None))),
        3 => (0..2usize, 0..2usize, k())
            .prop_map(move |(t, r, kind)| (0, publish(Tgt::Room(t, r), kind, None))),
        2 => (0..2usize, any::<bool>(), k()).prop_map(move |(t, admin, kind)| {
            (0, publish(Tgt::Tenant(t, admin.then_some(0)), kind, None))
        }),
        3 => (d(), any::<bool>())
            .prop_map(|(dev, clean)| (dev, Op::Disconnect { who: NEWEST, clean })),
        4 => d().prop_map(|dev| {
            let (tenant, user) = DEVICE_USERS[dev / 2];
            (dev, Op::Connect { tenant, user, tier: 3, roles: 0, expires_in: None })
        }),
        2 => d().prop_map(|dev| {
            (dev, Op::Receive { who: NEWEST, frame: In::Positions(Vec::new(), false) })
        }),
        1 => (d(), 0..2usize).prop_map(|(dev, room)| (dev, Op::Join { who: NEWEST, room })),
        1 => (d(), 0..2usize)
            .prop_map(|(dev, room)| (dev, Op::Leave { who: NEWEST, room, joined: false })),
        3 => tick().prop_map(|ms| (0, Op::Tick(ms))),
        2 => tick().prop_map(|ms| (0, Op::Sleep(ms))),
    ];
    prop::collection::vec(op, 1..120)
}
