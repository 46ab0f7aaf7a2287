//! The serialized text frame every `Deliver` carries: one buffer shared by every recipient.

use std::fmt;
use std::sync::Arc;

/// A serialized text frame, shared by every recipient of one publish.
///
/// Cloning is a reference-count increment: a fan-out to ten thousand connections holds one copy of
/// the bytes. It is valid UTF-8 JSON; send it as a WebSocket text frame. `AsRef<[u8]>` lets a
/// transport wrap it without copying (for example `bytes::Bytes::from_owner(frame)`).
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Arc<str>);

impl Frame {
    pub(crate) fn new(text: &str) -> Self {
        Self(Arc::from(text))
    }

    /// The frame's JSON text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Length in bytes; this is what [`Hub::written`](crate::Hub::written) counts.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the frame is empty (never true for frames the hub builds).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether two frames share one buffer (true for every recipient of one publish).
    #[must_use]
    pub fn ptr_eq(a: &Frame, b: &Frame) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl AsRef<str> for Frame {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
