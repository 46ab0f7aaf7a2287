//! The client SDKs' fixture of server frames, generated from the real core: a hub (and, for
//! `resync`, two cluster nodes over the test kit's model bus) is driven until it has written one
//! sample of every server → client frame type the README's wire-protocol table documents, and
//! the samples are compared with `clients/fixtures/server-frames.json` (which the TypeScript and
//! Python tests parse and type-check) and its TypeScript twin.
//!
//! The test fails when a documented frame type has no sample, when a sample's type is not
//! documented, or when a fixture file is stale. To rewrite them after a protocol change:
//!
//! ```sh
//! SWITCHBOARD_UPDATE_FIXTURES=1 cargo test -p switchboard --test client_fixtures
//! ```

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::*;
use serde_json::{Value, json};
use switchboard::{
    Action, ClusterConfig, Config, ConnId, Envelope, EventKind, PresenceConfig, PresenceMeta,
    Principal, Reply, Retention, Target,
};
use switchboard_testkit::cluster::Cluster;

const JSON_FIXTURE: &str = "clients/fixtures/server-frames.json";
const TS_FIXTURE: &str = "clients/typescript/test/server-frames.generated.ts";

/// Records every frame the hub delivers, in order.
#[derive(Default)]
struct Seen {
    frames: Vec<(ConnId, Value)>,
}

impl Seen {
    fn take(&mut self, actions: &[Action]) {
        self.frames.extend(deliveries(actions));
    }
}

fn single_node_samples() -> Vec<Value> {
    // Room presence only, as the server runs it.
    let mut presence = PresenceConfig::default();
    presence.tenant = false;
    // A small in-flight budget, so that one large critical event puts the connection behind
    // and the next `agent_thinking` is skipped (which produces a `skipped` frame).
    let cfg = Config { presence: Some(presence), max_inflight_bytes: 2048, ..quiet() };
    let mut sim = Sim::new(cfg);
    let mut seen = Seen::default();
    let meta = PresenceMeta::new(&json!({"name": "Alice"})).unwrap();
    let alice = sim
        .hub
        .connect(
            sim.now,
            Principal::new("acme", "alice").expires_at(sim.now + secs(600)).meta(meta),
        )
        .unwrap();
    let a = sim.drain();
    seen.take(&a);
    sim.hub.receive(sim.now, alice, br#"{"type":"ping"}"#).unwrap();
    let a = sim.drain();
    seen.take(&a);
    sim.hub.join(sim.now, alice, "lobby").unwrap();
    let a = sim.drain();
    seen.take(&a);
    let bob = sim.connect("acme", "bob");
    sim.hub.receive(sim.now, bob, br#"{"type":"ping"}"#).unwrap();
    sim.hub.join(sim.now, bob, "lobby").unwrap();
    let a = sim.advance(ms(300));
    seen.take(&a);

    let kinds = [
        EventKind::AgentStarted,
        EventKind::AgentThinking,
        EventKind::ToolExecuting,
        EventKind::ToolCompleted,
        EventKind::AgentCompleted,
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        let env = Envelope::new(Target::thread("acme", "alice", "t1"), kind)
            .thread("t1")
            .run("r9")
            .data(json!({"step": i + 1}));
        sim.hub.publish(sim.now, env).unwrap();
    }
    // A custom kind, thread-less and without data, on the room's stream.
    sim.hub
        .publish(
            sim.now,
            Envelope::new(Target::room("acme", "lobby"), EventKind::Custom("notice".into())),
        )
        .unwrap();
    let a = sim.drain();
    seen.take(&a);
    // Nothing of the above was confirmed `written`: a large critical event puts alice behind,
    // the next thought is skipped, and the event after it comes with a `skipped` frame first.
    let big = json!({"text": "x".repeat(4096)});
    sim.hub
        .publish(
            sim.now,
            Envelope::new(Target::user("acme", "alice"), EventKind::ToolCompleted).data(big),
        )
        .unwrap();
    sim.hub
        .publish(sim.now, Envelope::new(Target::user("acme", "alice"), EventKind::AgentThinking))
        .unwrap();
    sim.hub
        .publish(sim.now, Envelope::new(Target::user("acme", "alice"), EventKind::AgentCompleted))
        .unwrap();
    let a = sim.drain();
    seen.take(&a);

    // Replies, with data and with an error.
    let msg = br#"{"type":"message","id":"q1","thread_id":"t1","data":{"text":"hi"}}"#;
    sim.hub.receive(sim.now, alice, msg).unwrap();
    sim.drain();
    sim.hub.reply(sim.now, alice, "q1", Reply::Data(json!({"run_id": "r9"}))).unwrap();
    let refused = Reply::Error { code: "busy".into(), message: "try later".into() };
    sim.hub.reply(sim.now, alice, "q1", refused).unwrap();
    let a = sim.drain();
    seen.take(&a);

    // A page of history: the last two events of alice's stream, as delivered live.
    sim.hub
        .receive(sim.now, alice, br#"{"type":"history","stream":"u","limit":2,"id":"h1"}"#)
        .unwrap();
    let a = sim.drain();
    seen.take(&a);

    // A refused frame is answered with an error frame, naming the frame's id when it had one.
    let refused = br#"{"type":"message","id":"q1","thread_id":7}"#;
    let _ = sim.hub.receive(sim.now, alice, refused);
    let a = sim.drain();
    seen.take(&a);

    // A second tab resumes: `u` exactly, a room with a wrong epoch is reported lost.
    let tab = sim.hub.connect(sim.now, Principal::new("acme", "alice")).unwrap();
    sim.drain();
    let u = seen
        .frames
        .iter()
        .find(|(c, f)| *c == alice && f["type"] == "connected")
        .map(|(_, f)| f["streams"]["u"]["epoch"].as_u64().unwrap())
        .unwrap();
    sim.hub.join(sim.now, tab, "lobby").unwrap();
    sim.drain();
    let resume = json!({"type": "resume", "positions": {
        "u": {"epoch": u, "seq": 5},
        "r:lobby": {"epoch": 1, "seq": 1},
    }});
    sim.hub.receive(sim.now, tab, resume.to_string().as_bytes()).unwrap();
    let a = sim.drain();
    seen.take(&a);
    // The session: `refresh_required` before expiry, then an accepted refresh.
    let a = sim.advance(secs(545));
    seen.take(&a);
    sim.hub.receive(sim.now, alice, br#"{"type":"refresh","token":"t"}"#).unwrap();
    sim.drain();
    sim.hub.answer_refresh(sim.now, alice, Ok(Some(sim.now + secs(3600)))).unwrap();
    let a = sim.drain();
    seen.take(&a);

    sim.hub.leave(sim.now, alice, "lobby").unwrap();
    let a = sim.drain();
    seen.take(&a);
    seen.frames.into_iter().map(|(_, f)| f).collect()
}

/// Cluster mode's `resync`: a node misses live messages the log no longer holds.
fn resync_samples() -> Vec<Value> {
    let mut c = Cluster::new(2, 7, |n| {
        let mut cfg =
            Config { cluster: Some(ClusterConfig::new(format!("n{n}").as_str())), ..quiet() };
        cfg.retention = Retention { max_messages: 2, ..Retention::default() };
        cfg
    });
    let mut frames = Vec::new();
    let mut absorb = |actions: Vec<(usize, Action)>| {
        for (_, action) in actions {
            if let Action::Deliver { frame, .. } = action {
                frames.push(parse(frame.as_str()));
            }
        }
    };
    let now = c.now;
    c.hub(0).unwrap().connect(now, Principal::new("acme", "alice")).unwrap();
    absorb(c.pump());
    c.hub(1).unwrap().connect(now, Principal::new("acme", "alice")).unwrap();
    absorb(c.pump());
    let note = |n: u64| {
        Envelope::new(Target::user("acme", "alice"), EventKind::Custom("note".into()))
            .data(json!({ "n": n }))
    };
    c.hub(0).unwrap().publish(now, note(1)).unwrap();
    absorb(c.pump());
    c.bus.set_message_loss(Some(1), 1_000_000);
    for n in 2..=5 {
        c.hub(0).unwrap().publish(now, note(n)).unwrap();
        absorb(c.pump());
    }
    c.bus.set_message_loss(Some(1), 0);
    c.hub(0).unwrap().publish(now, note(6)).unwrap();
    absorb(c.pump());
    frames.into_iter().filter(|f| f["type"] == "resync").collect()
}

/// The frame types the README's "Server → client" table documents, and whether it admits
/// custom event kinds.
fn documented_types(readme: &str) -> (BTreeSet<String>, bool) {
    let start = readme.find("**Server → client**").expect("the README's server frame table");
    let end = start + readme[start..].find("**Client → server**").expect("the client table");
    let mut types = BTreeSet::new();
    let mut custom = false;
    for line in readme[start..end].lines().filter(|l| l.starts_with("| `")) {
        let first = line.split('|').nth(1).unwrap_or("");
        if first.trim() == "`type`" {
            continue; // the header row
        }
        custom |= first.contains("custom kind");
        for (i, part) in first.split('`').enumerate() {
            if i % 2 == 1 {
                types.insert(part.to_owned());
            }
        }
    }
    (types, custom)
}

/// One sample per type (the first one seen), in a stable order.
fn pick(all: Vec<Value>) -> BTreeMap<String, Value> {
    let mut samples = BTreeMap::new();
    for frame in all {
        let ty = frame["type"].as_str().expect("every frame has a type").to_owned();
        samples.entry(ty).or_insert(frame);
    }
    samples
}

/// The TypeScript twin: each sample as an object literal that `satisfies` the client's type for
/// its frame type, so `tsc` rejects a missing, mistyped or unknown field.
fn render_ts(samples: &BTreeMap<String, Value>) -> String {
    let mut out = String::from(
        "// Generated by tests/client_fixtures.rs from the real hub; do not edit.\n\
         import type { WireFrameOf } from \"../src/frames.js\";\n\n\
         export const samples = [\n",
    );
    for (ty, frame) in samples {
        let text = serde_json::to_string_pretty(frame).unwrap().replace('\n', "\n  ");
        out.push_str(&format!("  {text} satisfies WireFrameOf<{ty:?}>,\n"));
    }
    out.push_str("];\n");
    out
}

#[test]
fn the_client_fixture_holds_one_fresh_sample_of_every_documented_server_frame() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = single_node_samples();
    all.extend(resync_samples());
    let samples = pick(all);

    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let (documented, custom) = documented_types(&readme);
    assert!(custom, "the README admits custom event kinds");
    let have: BTreeSet<String> = samples.keys().cloned().collect();
    let missing: Vec<_> = documented.difference(&have).collect();
    assert!(missing.is_empty(), "documented frame types without a sample: {missing:?}");
    let undocumented: Vec<_> = have.difference(&documented).collect();
    assert_eq!(undocumented, ["notice"], "only the custom kind may be undocumented");

    let ts_text = render_ts(&samples);
    let body = json!({
        "generated_by": "tests/client_fixtures.rs",
        "frames": samples.into_values().collect::<Vec<_>>(),
    });
    let json_text = serde_json::to_string_pretty(&body).unwrap() + "\n";
    let files = [(JSON_FIXTURE, json_text), (TS_FIXTURE, ts_text)];
    if std::env::var_os("SWITCHBOARD_UPDATE_FIXTURES").is_some() {
        for (path, text) in &files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }
    for (path, text) in &files {
        let on_disk = std::fs::read_to_string(root.join(path)).unwrap_or_default();
        assert!(
            on_disk == *text,
            "{path} is stale: run SWITCHBOARD_UPDATE_FIXTURES=1 cargo test -p switchboard --test \
             client_fixtures and commit it"
        );
    }
}
