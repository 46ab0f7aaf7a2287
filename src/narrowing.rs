//! What a connection narrowed its user's stream to with `subscribe`: threads and agent runs
//! (the origin's `run_id_connections` index, kept per connection).
//!
//! An event's subjects are its thread and its run. A connection that never subscribed receives
//! all of its user's events. A narrowed one receives the events that have no subject at all
//! (user-wide notices) and those of a thread or a run it subscribed to; an event of another
//! thread or run is not for it. Events without a run are routed exactly as before runs existed.

use crate::ids::{RunId, ThreadId};

/// The threads and runs a connection subscribed to (never both empty: unsubscribing the last
/// widens the connection back to everything).
#[derive(Debug, Default)]
pub(crate) struct Narrowing {
    threads: Vec<ThreadId>,
    runs: Vec<RunId>,
}

/// A `subscribe` that would take one list past its limit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooManySubscriptions;

impl Narrowing {
    /// Whether an event of `thread` and `run` is for this connection.
    #[inline]
    pub(crate) fn admits(&self, thread: Option<&ThreadId>, run: Option<&RunId>) -> bool {
        match (thread, run) {
            (None, None) => true,
            _ => {
                thread.is_some_and(|t| self.threads.contains(t))
                    || run.is_some_and(|r| self.runs.contains(r))
            }
        }
    }

    /// The threads subscribed to.
    pub(crate) fn threads(&self) -> &[ThreadId] {
        &self.threads
    }

    /// The runs subscribed to.
    pub(crate) fn runs(&self) -> &[RunId] {
        &self.runs
    }

    /// Adds a thread, unless the list already holds `max`. Twice is once.
    pub(crate) fn add_thread(
        &mut self,
        thread: &str,
        max: u32,
    ) -> Result<(), TooManySubscriptions> {
        add(&mut self.threads, thread, max)
    }

    /// Adds a run, unless the list already holds `max`. Twice is once.
    pub(crate) fn add_run(&mut self, run: &str, max: u32) -> Result<(), TooManySubscriptions> {
        add(&mut self.runs, run, max)
    }

    /// Removes a thread.
    pub(crate) fn remove_thread(&mut self, thread: &str) {
        self.threads.retain(|t| t.as_str() != thread);
    }

    /// Removes a run.
    pub(crate) fn remove_run(&mut self, run: &str) {
        self.runs.retain(|r| r.as_str() != run);
    }

    /// Whether nothing is subscribed any more (the connection then receives everything again).
    pub(crate) fn is_empty(&self) -> bool {
        self.threads.is_empty() && self.runs.is_empty()
    }
}

fn add<T: for<'a> From<&'a str> + AsRef<str>>(
    list: &mut Vec<T>,
    name: &str,
    max: u32,
) -> Result<(), TooManySubscriptions> {
    if !list.iter().any(|t| t.as_ref() == name) {
        if list.len() >= max as usize {
            return Err(TooManySubscriptions);
        }
        list.push(T::from(name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_narrowed_connection_gets_its_subjects_and_subjectless_events() {
        let mut n = Narrowing::default();
        n.add_thread("t1", 2).unwrap();
        n.add_run("r9", 2).unwrap();
        let (t1, t2) = (ThreadId::from("t1"), ThreadId::from("t2"));
        let (r9, r8) = (RunId::from("r9"), RunId::from("r8"));
        assert!(n.admits(None, None));
        assert!(n.admits(Some(&t1), None));
        assert!(n.admits(None, Some(&r9)));
        assert!(n.admits(Some(&t2), Some(&r9)), "watching the run");
        assert!(n.admits(Some(&t1), Some(&r8)), "watching the thread");
        assert!(!n.admits(Some(&t2), None));
        assert!(!n.admits(None, Some(&r8)));
        assert!(!n.admits(Some(&t2), Some(&r8)));
        n.add_run("r9", 2).unwrap();
        n.add_run("r8", 2).unwrap();
        assert_eq!(n.add_run("r7", 2), Err(TooManySubscriptions));
        assert_eq!(n.runs().len(), 2);
        n.remove_run("r9");
        n.remove_run("r8");
        n.remove_thread("t1");
        assert!(n.is_empty());
    }
}
