//! The demo agent: a client `message` starts a simulated pipeline for that user and thread —
//! `agent_started`, several `agent_thinking`, `tool_executing`, `tool_completed`,
//! `agent_completed`, with short pauses — so the product visibly works.
//!
//! The script is pure data; a runtime plays it (the tokio server in `app.rs`, the smol server in
//! `examples/smol_server.rs`). Self-contained, so both can include it.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard::{Envelope, EventKind, Inbound, Target};

/// One event of a run, published `after` the previous one.
#[derive(Clone, Debug)]
pub struct Step {
    /// The pause before this event.
    pub after: Duration,
    /// The event's kind.
    pub kind: EventKind,
    /// The event's payload.
    pub data: Value,
}

/// How many `agent_thinking` events a run has.
pub const THOUGHTS: usize = 3;

/// The events of one run answering `prompt`, `pace` apart.
pub fn script(prompt: &str, pace: Duration) -> Vec<Step> {
    // The prompt is untrusted client text: keep it short, never interpret it.
    let prompt: String = prompt.chars().take(200).collect();
    let step = |kind, data| Step { after: pace, kind, data };
    let mut steps = vec![Step {
        after: Duration::ZERO,
        kind: EventKind::AgentStarted,
        data: json!({ "agent": "demo", "prompt": prompt }),
    }];
    let thoughts = ["Reading the request", "Planning a search", "Choosing a tool"];
    for (i, thought) in thoughts.iter().enumerate().take(THOUGHTS) {
        steps.push(step(EventKind::AgentThinking, json!({ "thought": thought, "step": i + 1 })));
    }
    steps.push(step(EventKind::ToolExecuting, json!({ "tool": "search", "input": prompt })));
    steps.push(step(
        EventKind::ToolCompleted,
        json!({ "tool": "search", "output": format!("3 results for {:?}", prompt) }),
    ));
    steps.push(step(
        EventKind::AgentCompleted,
        json!({ "answer": format!("Done: I looked into {:?}.", prompt) }),
    ));
    steps
}

/// The text a client message asks about: `data.text` if it is a string, else the JSON itself.
pub fn prompt_of(msg: &Inbound) -> String {
    match msg.data.get("text").and_then(Value::as_str) {
        Some(text) => text.to_owned(),
        None => msg.data.to_string(),
    }
}

/// Where a run's events go: the sender's thread if it named one, else all of the sender's
/// connections. Built from the authenticated origin only, never from ids inside the payload.
pub fn target_of(msg: &Inbound) -> Target {
    let (tenant, user) = (msg.from.tenant.clone(), msg.from.user.clone());
    match &msg.thread {
        Some(thread) => Target::Thread { tenant, user, thread: thread.clone() },
        None => Target::User { tenant, user },
    }
}

/// The envelope for one step of run `run` answering `msg`.
pub fn envelope(msg: &Inbound, run: &str, step: &Step) -> Envelope {
    let mut env = Envelope::new(target_of(msg), step.kind.clone()).run(run).data(step.data.clone());
    if let Some(thread) = &msg.thread {
        env = env.thread(thread.clone());
    }
    env
}
