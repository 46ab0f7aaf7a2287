//! The idempotency keys a single node remembers: a publish that carries a key seen on the same
//! stream within the retention age appends nothing and answers the first position. (In cluster
//! mode the bus keeps them instead.) Bounded by age and by count, oldest forgotten first.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use crate::cluster::StreamKey;
use crate::ids::{StreamName, StreamPos};

/// A key on a stream.
type Seen = (StreamKey, Arc<str>);

/// The first publish's position, and when it was recorded.
type First = ((StreamName, StreamPos), Instant);

/// Keys by stream, with their first position, and their order of arrival.
#[derive(Debug, Default)]
pub(crate) struct IdempotencyKeys {
    seen: HashMap<Seen, First>,
    order: VecDeque<(Instant, StreamKey, Arc<str>)>,
}

impl IdempotencyKeys {
    /// Forgets keys older than `max_age`, and the oldest beyond `max_keys`.
    fn expire(&mut self, now: Instant, max_age: Duration, max_keys: usize) {
        while let Some((at, _, _)) = self.order.front() {
            let old = now.saturating_duration_since(*at) > max_age;
            if !old && self.order.len() <= max_keys {
                break;
            }
            let (at, stream, key) = self.order.pop_front().expect("peeked");
            // A key re-recorded later (after it expired) keeps its newer entry.
            if self.seen.get(&(stream.clone(), key.clone())).is_some_and(|(_, t)| *t == at) {
                self.seen.remove(&(stream, key));
            }
        }
    }

    /// The first position of `key` on `stream`, if it is remembered.
    pub(crate) fn seen(
        &mut self,
        now: Instant,
        stream: &StreamKey,
        key: &Arc<str>,
        max_age: Duration,
        max_keys: usize,
    ) -> Option<(StreamName, StreamPos)> {
        self.expire(now, max_age, max_keys);
        self.seen.get(&(stream.clone(), key.clone())).map(|(pos, _)| pos.clone())
    }

    /// Remembers `key`'s first position on `stream`.
    pub(crate) fn record(
        &mut self,
        now: Instant,
        stream: StreamKey,
        key: Arc<str>,
        pos: (StreamName, StreamPos),
        max_age: Duration,
        max_keys: usize,
    ) {
        self.seen.insert((stream.clone(), key.clone()), (pos, now));
        self.order.push_back((now, stream, key));
        self.expire(now, max_age, max_keys);
    }

    /// Keys remembered.
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }
}
