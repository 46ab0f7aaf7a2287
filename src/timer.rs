//! Deadline queue: an indexed binary min-heap.
//!
//! Each component that arms timers keeps one of these (the connections their heartbeat and session
//! deadlines, the users their retirements, the tenants their idle rooms, the buffers their age
//! timers, the breakers theirs). An entry can be moved or cancelled in O(log n) through its
//! [`TimerId`], so a queue never holds dead entries: its size is the number of armed timers.
//! `tick` pops only what is due, and the next deadline is the heap's root, read in O(1). Timers
//! due at the same instant come out in no promised order.

use std::num::NonZeroU32;
use std::time::Instant;

use slab::Slab;

/// Handle to an armed timer: its entry's index plus one, so that an `Option<TimerId>` (a
/// connection's timer, say) takes 4 bytes rather than 8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerId(NonZeroU32);

impl TimerId {
    fn new(index: usize) -> Self {
        let id = u32::try_from(index + 1).ok().and_then(NonZeroU32::new);
        Self(id.expect("fewer than 2^32 - 1 armed timers"))
    }

    fn index(self) -> usize {
        self.0.get() as usize - 1
    }
}

#[derive(Clone, Copy, Debug)]
struct HeapEntry {
    at: Instant,
    id: u32,
}

#[derive(Debug)]
struct Entry<K> {
    key: K,
    pos: u32,
}

#[derive(Debug)]
pub(crate) struct TimerQueue<K> {
    heap: Vec<HeapEntry>,
    entries: Slab<Entry<K>>,
}

impl<K> TimerQueue<K> {
    pub(crate) fn new() -> Self {
        Self { heap: Vec::new(), entries: Slab::new() }
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Arms a timer for `key` at `at`.
    pub(crate) fn insert(&mut self, at: Instant, key: K) -> TimerId {
        let pos = self.heap.len() as u32;
        let index = self.entries.insert(Entry { key, pos });
        let id = TimerId::new(index);
        self.heap.push(HeapEntry { at, id: index as u32 });
        self.sift_up(pos as usize);
        id
    }

    /// When `id` fires.
    pub(crate) fn deadline(&self, id: TimerId) -> Instant {
        self.heap[self.entries[id.index()].pos as usize].at
    }

    /// Moves an armed timer to `at`.
    pub(crate) fn reschedule(&mut self, id: TimerId, at: Instant) {
        let pos = self.entries[id.index()].pos as usize;
        let old = self.heap[pos].at;
        self.heap[pos].at = at;
        if at < old {
            self.sift_up(pos);
        } else {
            self.sift_down(pos);
        }
    }

    /// Disarms a timer.
    pub(crate) fn cancel(&mut self, id: TimerId) -> K {
        let entry = self.entries.remove(id.index());
        self.remove_at(entry.pos as usize);
        entry.key
    }

    /// The earliest deadline.
    #[inline]
    pub(crate) fn peek(&self) -> Option<Instant> {
        self.heap.first().map(|e| e.at)
    }

    /// The earliest deadline and its key.
    #[inline]
    pub(crate) fn peek_key(&self) -> Option<(Instant, &K)> {
        let top = self.heap.first()?;
        Some((top.at, &self.entries[top.id as usize].key))
    }

    /// Removes and returns the earliest timer if it is due at `now`.
    #[inline]
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<K> {
        let top = *self.heap.first()?;
        if top.at > now {
            return None;
        }
        let entry = self.entries.remove(top.id as usize);
        self.remove_at(0);
        Some(entry.key)
    }

    /// Removes and returns the earliest timer, due or not.
    pub(crate) fn pop_first(&mut self) -> Option<K> {
        let top = *self.heap.first()?;
        let entry = self.entries.remove(top.id as usize);
        self.remove_at(0);
        Some(entry.key)
    }

    fn remove_at(&mut self, pos: usize) {
        let last = self.heap.len() - 1;
        self.heap.swap(pos, last);
        self.heap.pop();
        if pos < self.heap.len() {
            self.set_pos(pos);
            // The moved entry may belong above or below its new place.
            self.sift_up(pos);
            self.sift_down(pos);
        }
    }

    fn set_pos(&mut self, pos: usize) {
        let id = self.heap[pos].id as usize;
        self.entries[id].pos = pos as u32;
    }

    fn sift_up(&mut self, mut pos: usize) {
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.heap[pos].at >= self.heap[parent].at {
                break;
            }
            self.heap.swap(pos, parent);
            self.set_pos(pos);
            pos = parent;
        }
        self.set_pos(pos);
    }

    fn sift_down(&mut self, mut pos: usize) {
        let n = self.heap.len();
        loop {
            let left = 2 * pos + 1;
            if left >= n {
                break;
            }
            let right = left + 1;
            let child =
                if right < n && self.heap[right].at < self.heap[left].at { right } else { left };
            if self.heap[child].at >= self.heap[pos].at {
                break;
            }
            self.heap.swap(pos, child);
            self.set_pos(pos);
            pos = child;
        }
        self.set_pos(pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16),
        Reschedule(usize, u16),
        Cancel(usize),
        Pop(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u16>().prop_map(Op::Insert),
            (any::<usize>(), any::<u16>()).prop_map(|(i, t)| Op::Reschedule(i, t)),
            any::<usize>().prop_map(Op::Cancel),
            any::<u16>().prop_map(Op::Pop),
        ]
    }

    proptest! {
        /// The queue behaves like a naive list of (deadline, key) under any mix of operations.
        #[test]
        fn matches_a_naive_model(ops in proptest::collection::vec(op(), 0..200)) {
            let base = Instant::now();
            let at = |t: u16| base + Duration::from_millis(u64::from(t));
            let mut q = TimerQueue::new();
            // (id, key, deadline)
            let mut model: Vec<(TimerId, u32, Instant)> = Vec::new();
            let mut next_key = 0u32;
            for op in ops {
                match op {
                    Op::Insert(t) => {
                        let id = q.insert(at(t), next_key);
                        model.push((id, next_key, at(t)));
                        next_key += 1;
                    }
                    Op::Reschedule(i, t) if !model.is_empty() => {
                        let i = i % model.len();
                        q.reschedule(model[i].0, at(t));
                        model[i].2 = at(t);
                    }
                    Op::Cancel(i) if !model.is_empty() => {
                        let i = i % model.len();
                        let (id, key, _) = model.swap_remove(i);
                        prop_assert_eq!(q.cancel(id), key);
                    }
                    Op::Pop(t) => {
                        let now = at(t);
                        let earliest = model.iter().map(|m| m.2).min();
                        match q.pop_due(now) {
                            Some(key) => {
                                let i = model.iter().position(|m| m.1 == key).unwrap();
                                prop_assert!(model[i].2 <= now);
                                prop_assert_eq!(Some(model[i].2), earliest);
                                model.swap_remove(i);
                            }
                            None => prop_assert!(earliest.is_none_or(|e| e > now)),
                        }
                    }
                    _ => {}
                }
                prop_assert_eq!(q.len(), model.len());
                prop_assert_eq!(q.peek(), model.iter().map(|m| m.2).min());
                for m in &model {
                    prop_assert_eq!(q.deadline(m.0), m.2);
                }
            }
        }
    }
}
