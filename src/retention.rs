//! How much of each stream is kept for recovery.

use std::time::Duration;

/// Bounds of one stream's recovery buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Most messages kept (default 1000).
    pub max_messages: usize,
    /// Most frame bytes kept (default 1 MiB).
    pub max_bytes: usize,
    /// Oldest message kept (default 2 min).
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self { max_messages: 1000, max_bytes: 1 << 20, max_age: Duration::from_secs(120) }
    }
}
