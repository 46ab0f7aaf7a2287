//! Arbitrary bytes as inbound frames on live connections. Frames are separated by 0xFF (never
//! valid UTF-8, so never inside a real frame); they alternate between two users' connections.
//! Presence is on (tenants and rooms); a message that carries an `id` is answered with a reply
//! echoing its data. After every frame: no panic, every delivery goes to a live connection,
//! invariants hold (presence's included).
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use switchboard::{Action, Config, Hub, PresenceConfig, Principal, Reply};

fuzz_target!(|data: &[u8]| {
    let cfg = Config {
        max_frame_bytes: 512,
        resume_window: Duration::from_millis(5),
        presence: Some(PresenceConfig::default()),
        ..Config::default()
    };
    let mut hub = Hub::new(cfg).unwrap();
    let mut now = Instant::now();
    let mut live = vec![
        hub.connect(now, Principal::new("a", "alice")).unwrap(),
        hub.connect(now, Principal::new("b", "bob")).unwrap(),
    ];
    hub.join(now, live[0], "room").unwrap();
    while hub.poll_action().is_some() {}
    for (i, frame) in data.split(|&b| b == 0xFF).enumerate() {
        if live.is_empty() {
            break;
        }
        now += Duration::from_millis(3);
        let conn = live[i % live.len()];
        let _ = hub.receive(now, conn, frame);
        hub.tick(now);
        while let Some(action) = hub.poll_action() {
            match action {
                Action::Deliver { conn, frame } => {
                    assert!(live.contains(&conn), "delivery to a closed connection");
                    assert!(serde_json::from_str::<serde_json::Value>(frame.as_str()).is_ok());
                }
                Action::Close { conn, .. } => live.retain(|c| *c != conn),
                Action::Inbound(msg) => {
                    assert!(live.contains(&msg.from.conn));
                    if let Some(id) = &msg.id {
                        // Any data the client sent, echoed: refused or sent, never a panic.
                        let _ = hub.reply(now, msg.from.conn, id, Reply::Data(msg.data.clone()));
                    }
                }
                _ => {}
            }
        }
        hub.check_invariants().unwrap();
    }
});
