//! What every benchmark publishes, shared by `hub.rs` and `profile.rs` so that wall-clock and
//! instruction figures measure the same work.

use serde_json::{Value, json};

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
