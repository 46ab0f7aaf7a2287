//! Lookups for operators and transports: connections by the id their client was told, and the
//! listings an admin API pages through. Read-only; nothing here changes the hub.

use crate::hub::Hub;
use crate::ids::ConnId;

impl Hub {
    /// The open connection whose id reads `wire` (as its `connected` frame's `conn_id` and
    /// [`ConnId`]'s `Display` spell it, `<index>v<generation>`); `None` for text that names no
    /// open connection (malformed, closed, or a reused slot's older generation). A lookup, not a
    /// constructor: it never yields an id the hub did not mint for a live connection.
    #[must_use]
    pub fn find_connection(&self, wire: &str) -> Option<ConnId> {
        let (index, generation) = wire.split_once('v')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(index) || !digits(generation) {
            return None;
        }
        let index: u32 = index.parse().ok()?;
        let generation: u32 = generation.parse().ok()?;
        if !self.conns.contains(index) {
            return None;
        }
        let id = self.conns.id_of(index);
        (id.generation == generation).then_some(id)
    }
}
