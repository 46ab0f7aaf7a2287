//! A runnable tour of the hub: two tenants, three users, one agent run, a tenant broadcast, a
//! room, a client message, a heartbeat and a stale id. It drives the hub on a virtual clock and
//! prints every action the hub asks for, so you can see the whole protocol without a socket.
//!
//! Run with `cargo run --example quickstart`.

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard::{
    Action, Audience, Config, ConnId, DisconnectReason, Envelope, EventKind, Hub, Principal,
    Target, Tier,
};

/// Drains the hub and prints each action; returns how many frames were delivered.
fn drain(hub: &mut Hub, names: &[(ConnId, &str)], step: &str) -> usize {
    println!("\n── {step}");
    let name = |c: ConnId| names.iter().find(|(id, _)| *id == c).map_or("?", |(_, n)| *n);
    let mut delivered = 0;
    while let Some(action) = hub.poll_action() {
        match action {
            Action::Deliver { conn, frame } => {
                delivered += 1;
                println!("  deliver → {:<13} {}", name(conn), frame);
            }
            Action::Ping { conn } => println!("  ping    → {}", name(conn)),
            Action::Close { conn, reason } => {
                println!("  close   → {} ({}, code {})", name(conn), reason.as_str(), reason.code())
            }
            Action::Inbound(msg) => println!(
                "  inbound ← {}/{} thread={:?} data={}",
                msg.from.tenant, msg.from.user, msg.thread, msg.data
            ),
            Action::Audit(e) => println!("  audit   ! {:?} conn={:?}", e.kind, e.conn),
            Action::Metric(m) => println!("  metric  · {m:?}"),
            other => println!("  other   {other:?}"),
        }
    }
    delivered
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut hub = Hub::new(Config::default())?;
    let t0 = Instant::now();
    let mut now = t0;

    let alice_laptop = hub.connect(now, Principal::new("acme", "alice").tier(Tier::Mid))?;
    let alice_phone = hub.connect(now, Principal::new("acme", "alice").tier(Tier::Mid))?;
    let bob = hub.connect(now, Principal::new("acme", "bob").roles(["admin"]))?;
    let eve = hub.connect(now, Principal::new("globex", "eve"))?;
    let names = [
        (alice_laptop, "alice/laptop"),
        (alice_phone, "alice/phone"),
        (bob, "bob"),
        (eve, "eve@globex"),
    ];
    drain(&mut hub, &names, "four connections, two tenants");

    // Alice's phone narrows itself to thread t2; her laptop keeps receiving everything.
    hub.receive(now, alice_phone, br#"{"type":"subscribe","thread_id":"t2"}"#)?;
    drain(&mut hub, &names, "alice/phone subscribes to thread t2 only");

    let alice = || Target::User { tenant: "acme".into(), user: "alice".into() };
    let run = [
        (EventKind::AgentStarted, json!({"agent": "researcher"})),
        (EventKind::AgentThinking, json!({"thought": "looking up the quarterly numbers"})),
        (EventKind::ToolExecuting, json!({"tool": "sql", "api_key": "sk-live-123"})),
        (EventKind::ToolCompleted, json!({"rows": 12})),
        (EventKind::AgentCompleted, json!({"answer": "revenue grew 8%"})),
    ];
    for (kind, data) in run {
        now += Duration::from_millis(200);
        hub.publish(now, Envelope::new(alice(), kind).thread("t1").run("run-1").data(data))?;
    }
    let n = drain(&mut hub, &names, "an agent run for alice on thread t1 (api_key is redacted)");
    assert_eq!(n, 5, "only the laptop receives thread t1");

    hub.publish(
        now,
        Envelope::new(
            Target::Tenant { tenant: "acme".into(), audience: Audience::Role("admin".into()) },
            EventKind::custom("billing_alert"),
        )
        .data(json!({"usage": "90%"})),
    )?;
    drain(&mut hub, &names, "a broadcast to acme's admins: bob only, never globex");

    hub.join(now, alice_laptop, "standup")?;
    hub.join(now, bob, "standup")?;
    hub.publish(
        now,
        Envelope::new(
            Target::Room { tenant: "acme".into(), room: "standup".into() },
            EventKind::custom("room_note"),
        )
        .data(json!({"text": "standup in 5"})),
    )?;
    drain(&mut hub, &names, "a room of acme: its two members");

    hub.receive(
        now,
        bob,
        br#"{"type":"message","thread_id":"t9","data":{"text":"hi","user_id":"alice"}}"#,
    )?;
    drain(&mut hub, &names, "bob sends a message claiming to be alice: origin says bob");

    let _ = hub.receive(now, eve, b"{not json");
    drain(&mut hub, &names, "eve sends garbage: error frame and an audit event");

    now += Duration::from_secs(25);
    hub.tick(now);
    drain(&mut hub, &names, "25 s of silence: the hub asks for pings");
    hub.pong(now, alice_laptop)?;
    hub.pong(now, alice_phone)?;
    hub.pong(now, bob)?;
    now += Duration::from_secs(10);
    hub.tick(now);
    drain(&mut hub, &names, "10 s later: eve never answered");

    hub.disconnect(now, alice_phone, DisconnectReason::Clean)?;
    let mallory = hub.connect(now, Principal::new("acme", "mallory"))?;
    let names = [(mallory, "mallory"), names[0], names[1], names[2], names[3]];
    drain(&mut hub, &names, "alice's phone leaves; mallory takes its slot");
    let stale =
        hub.publish(now, Envelope::new(Target::Connection(alice_phone), EventKind::AgentStarted));
    println!("  publishing to the phone's old id: {stale:?}");
    drain(&mut hub, &names, "the stale id is refused and audited; mallory receives nothing");

    let s = hub.stats();
    println!(
        "\nstats: {} connections open, {} opened, {} closed ({} heartbeat timeouts), {} deliveries, {} security events",
        s.connections_active,
        s.connections_opened,
        s.connections_closed,
        s.heartbeat_timeouts(),
        s.deliveries,
        s.security_violations
    );
    println!("next timer due in {:?}", hub.poll_timeout().map(|t| t - now));
    Ok(())
}
