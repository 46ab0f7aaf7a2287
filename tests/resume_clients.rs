//! Property: a client that comes back and resumes with the positions its earlier connection
//! remembers gets, per stream, exactly what it missed: no duplicates of what it already saw, in
//! order, with no gap on its user stream, and the `resumed` frame says `recovered: false` exactly
//! when it must (the stream's epoch changed, the client is ahead of the stream, or the gap is no
//! longer buffered).
//!
//! Unlike `tests/resume_props.rs` (whose devices keep their own positions across connections),
//! the cases here resume with what one earlier connection remembers: the shared vocabulary's
//! steps (`switchboard_testkit::strategy::resume_steps`: connections addressed exactly,
//! `In::Remembered` resumes, the resume knobs) run through
//! `Runner::apply`, which checks every action, result, stat and view against the shared model; the
//! client-side checks below then run over the actions the step queued.
use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::Value;
use switchboard::{Action, ConnId, MetricEvent};
use switchboard_testkit::frames::{EventFrame, parse};
use switchboard_testkit::model::Runner;
use switchboard_testkit::strategy::{cases, resume_knobs, resume_steps};
use switchboard_testkit::vocab::{In, Knobs, Op, Step};

/// How many resumes from remembered positions the client-side checks looked at, and how many of
/// their streams were recovered (reported at the end of a run with `--nocapture`).
#[derive(Default)]
struct Seen {
    resumes: u64,
    recovered: u64,
    unrecovered: u64,
}

/// What the checks keep across the steps of one case.
#[derive(Default)]
struct Clients {
    /// Connections closed so far.
    closed: HashSet<ConnId>,
    /// Per connection, the connections that were already closed when it connected: a client's
    /// new connection comes after its earlier one closed, so only those are its predecessors.
    closed_before: HashMap<ConnId, HashSet<ConnId>>,
    /// Per (connection, stream), every `(epoch, seq)` of an event it received, in order.
    received: HashMap<(ConnId, String), Vec<(u64, u64)>>,
    /// Per connection, the rooms' streams it is in (from `joined` and `left`).
    rooms: HashMap<ConnId, HashSet<String>>,
    /// Per (connection, stream), where the stream stood when the connection got it (`connected`
    /// for `u` and `t`, `joined` for a room): what came after reached it live, so a resume from
    /// a position at or past this needs nothing from the buffer.
    base: HashMap<(ConnId, String), (u64, u64)>,
}

impl Clients {
    fn observe(&mut self, actions: &[Action]) {
        for a in actions {
            match a {
                Action::Deliver { conn, frame } => {
                    let v = parse(frame.as_str());
                    let stream = v["stream"].as_str().map(str::to_owned);
                    if v["type"] == "joined" {
                        if let (Some(name), Some(epoch), Some(seq)) =
                            (&stream, v["epoch"].as_u64(), v["seq"].as_u64())
                        {
                            self.base.insert((*conn, name.clone()), (epoch, seq));
                        }
                        self.rooms.entry(*conn).or_default().extend(stream);
                    } else if v["type"] == "left" {
                        let rooms = self.rooms.entry(*conn).or_default();
                        rooms.retain(|r| Some(r) != stream.as_ref());
                    } else if v["type"] == "connected" {
                        self.closed_before.insert(*conn, self.closed.clone());
                        for name in ["u", "t"] {
                            let pos = &v["streams"][name];
                            if let (Some(epoch), Some(seq)) =
                                (pos["epoch"].as_u64(), pos["seq"].as_u64())
                            {
                                self.base.insert((*conn, name.to_owned()), (epoch, seq));
                            }
                        }
                    } else if let Some(e) = EventFrame::decode(&v).filter(|e| e.kind != "joined") {
                        self.received.entry((*conn, e.stream)).or_default().push((e.epoch, e.seq));
                    }
                }
                Action::Metric(m) => {
                    if let MetricEvent::ConnectionClosed { conn, .. } = &**m {
                        self.closed.insert(*conn);
                    }
                }
                _ => {}
            }
        }
    }
}

/// One case: every step through the shared model, then the client-side checks of a resume.
fn run_case(knobs: &Knobs, steps: &[Step], seen: &mut Seen) -> Result<(), TestCaseError> {
    let mut r = Runner::new(knobs);
    let mut clients = Clients::default();
    for (i, step) in steps.iter().enumerate() {
        // Who resumes, and what the connection it resumes from remembers, before the step: only
        // a connection of the same user that closed before this one connected (a device that
        // came back).
        let resume = match &step.op {
            Op::Receive { who, frame: In::Remembered(from, _) } => {
                match (r.resolve(*who), r.resolve(*from)) {
                    (Some(id), Some(from))
                        if r.user_of(id) == r.user_of(from)
                            && clients
                                .closed_before
                                .get(&id)
                                .is_some_and(|c| c.contains(&from)) =>
                    {
                        r.remembered(from).filter(|m| !m.is_empty()).map(|m| (id, m.clone()))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let fail = |e: TestCaseError| TestCaseError::fail(format!("step {i}: {step:?}\n{e}"));
        r.apply(step).map_err(fail)?;
        clients.observe(r.actions());
        if let Some((id, memory)) = resume {
            check_resume(r.actions(), &clients, id, &memory, seen).map_err(fail)?;
        }
    }
    Ok(())
}

/// The client-side checks of one resume of connection `id` from `memory` (per stream, the
/// `(epoch, seq)` the client last saw on its earlier connection): over the actions that resume
/// queued, and over every event the new connection received (live ones before the resume
/// included).
fn check_resume(
    actions: &[Action],
    clients: &Clients,
    id: ConnId,
    memory: &BTreeMap<String, (u64, u64)>,
    seen: &mut Seen,
) -> Result<(), TestCaseError> {
    let frames: Vec<Value> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver { conn, frame } if *conn == id => Some(parse(frame.as_str())),
            _ => None,
        })
        .collect();
    // An error frame (rate limited, a second resume) or a close: nothing was resumed.
    let Some(resumed) = frames.iter().find(|f| f["type"] == "resumed") else {
        return Ok(());
    };
    seen.resumes += 1;
    let mut all_recovered = true;
    // Every stream the client named is reported.
    for (name, &(epoch, seq)) in memory {
        let report = &resumed["streams"][name];
        prop_assert!(report.is_object(), "resumed names every stream the client sent: {name}");
        let recovered = report["recovered"].as_bool().unwrap();
        let (now_epoch, now_seq) =
            (report["epoch"].as_u64().unwrap(), report["seq"].as_u64().unwrap());
        let from = report["available_from"].as_u64().unwrap();
        // Recovered exactly when the connection has the stream, the stream is the one the client
        // knew, it is not ahead of it, and what it missed before this connection got the stream
        // is still buffered (nothing missed counts as buffered; what came after reached it live).
        let has = name == "u"
            || name == "t"
            || clients.rooms.get(&id).is_some_and(|r| r.contains(name.as_str()));
        let live_from = clients.base.get(&(id, name.clone())).filter(|b| b.0 == epoch);
        // Events this connection got live before this resume (this step's replay taken out): if
        // one is past the client's position, what it missed before them can no longer come in
        // order (`live_ahead`).
        let mut before: Vec<u64> = clients
            .received
            .get(&(id, name.clone()))
            .into_iter()
            .flatten()
            .filter(|(e, _)| *e == epoch)
            .map(|(_, s)| *s)
            .collect();
        for f in frames.iter().filter_map(EventFrame::decode) {
            if f.stream == *name && f.kind != "joined" {
                if let Some(i) = before.iter().position(|s| *s == f.seq) {
                    before.remove(i);
                }
            }
        }
        let live_ahead = before.iter().any(|s| *s > seq);
        let must = has
            && now_epoch == epoch
            && seq <= now_seq
            && (seq == now_seq
                || live_from.is_some_and(|b| seq >= b.1)
                || (!live_ahead && from <= seq + 1));
        prop_assert_eq!(
            recovered,
            must,
            "recovered for {} from {:?}: {}",
            name,
            (epoch, seq),
            report
        );
        all_recovered &= recovered;
        let replayed: Vec<u64> = frames
            .iter()
            .filter_map(EventFrame::decode)
            .filter(|e| e.stream == *name && e.kind != "joined")
            .map(|e| {
                assert_eq!(e.epoch, now_epoch, "a replay comes from the stream's epoch");
                e.seq
            })
            .collect();
        prop_assert!(
            replayed.windows(2).all(|w| w[0] < w[1]),
            "{name}: replay out of order: {replayed:?}"
        );
        if recovered {
            seen.recovered += 1;
            prop_assert!(
                replayed.iter().all(|s| *s > seq),
                "{name}: a replay repeats what the client saw (after {seq}): {replayed:?}"
            );
            prop_assert_eq!(
                report["replayed"].as_u64().unwrap(),
                replayed.iter().filter(|s| **s <= now_seq).count() as u64,
                "{}: the report counts the replayed events",
                name
            );
            // Everything the new connection got on this stream's epoch, live and replayed.
            let mut chain: Vec<u64> = clients
                .received
                .get(&(id, name.clone()))
                .into_iter()
                .flatten()
                .filter(|(e, _)| *e == now_epoch)
                .map(|(_, s)| *s)
                .collect();
            prop_assert!(
                chain.iter().all(|s| *s > seq),
                "{name}: the client got again what it saw (after {seq}): {chain:?}"
            );
            let received = chain.len();
            chain.sort_unstable();
            chain.dedup();
            prop_assert_eq!(chain.len(), received, "{}: an event arrived twice", name);
            if name == "u" {
                // No thread filters and no roles on a user stream: every missed event is due,
                // live or replayed.
                let last = chain.last().copied().unwrap_or(0).max(now_seq);
                let want: Vec<u64> = (seq + 1..=last).collect();
                prop_assert_eq!(chain, want, "the user stream's replay is exact");
            }
        } else {
            prop_assert!(report["reason"].is_string(), "{name}: an unrecovered stream says why");
        }
    }
    // The frame's own flag: recovered exactly when every stream it reports is (streams of the
    // connection the client did not name are reported too, and must be recovered for it).
    let every = resumed["streams"].as_object().unwrap().values().all(|s| s["recovered"] == true);
    prop_assert_eq!(resumed["recovered"].as_bool(), Some(every));
    if !all_recovered {
        seen.unrecovered += 1;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1_000), ..ProptestConfig::default() })]

    /// Clients resuming from remembered positions over the shared model.
    #[test]
    fn a_client_resuming_from_what_it_remembers_gets_exactly_what_it_missed(
        knobs in resume_knobs(),
        steps in resume_steps(),
    ) {
        let mut seen = Seen::default();
        run_case(&knobs, &steps, &mut seen)?;
    }
}

/// The strategy reaches what the property is about: over a fixed number of cases, resumes from
/// remembered positions happen, some of their streams are recovered and some resumes are not.
#[test]
fn the_cases_reach_recovered_and_unrecovered_resumes() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let mut seen = Seen::default();
    for _ in 0..200 {
        let knobs = resume_knobs().new_tree(&mut runner).unwrap().current();
        let steps = resume_steps().new_tree(&mut runner).unwrap().current();
        run_case(&knobs, &steps, &mut seen).unwrap();
    }
    assert!(seen.resumes > 50, "only {} resumes", seen.resumes);
    assert!(seen.recovered > 20, "only {} recovered streams", seen.recovered);
    assert!(seen.unrecovered > 10, "only {} unrecovered resumes", seen.unrecovered);
}
