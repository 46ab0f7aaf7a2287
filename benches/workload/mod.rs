//! What every benchmark publishes, shared by `hub.rs` and `profile.rs` so that wall-clock and
//! instruction figures measure the same work.

use serde_json::{Value, json};
use switchboard::{Envelope, EventKind, Target};

use crate::baseline::Message;

pub const TENANT: &str = "acme";

/// A typical agent event: a tool call with arguments, one key that the default config redacts.
pub fn payload() -> Value {
    json!({
        "agent": "researcher",
        "step": 3,
        "status": "running",
        "message": "Querying the quarterly revenue table for the last four quarters",
        "tool": {
            "name": "sql",
            "args": {
                "query": "select quarter, revenue from sales where year = 2025",
                "limit": 100,
                "api_key": "sk-live-0123456789"
            }
        },
        "tokens": { "prompt": 1234, "completion": 321 }
    })
}

/// The event switchboard publishes in every workload.
pub fn envelope(target: Target) -> Envelope {
    Envelope::new(target, EventKind::ToolExecuting).run("run-42").data(payload())
}

/// The same event as the baseline's message.
pub fn message() -> Message {
    Message {
        kind: "tool_executing".into(),
        thread_id: None,
        run_id: Some("run-42".into()),
        data: payload(),
    }
}

pub mod cluster;
