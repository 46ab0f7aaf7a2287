//! Whole operation sequences against the hub and the shared reference model of
//! `switchboard-testkit`: every operation of the vocabulary (connections addressed by index into
//! the ids ever minted, so closed and stale ones, or forged outright; every target; time going
//! backwards), with raw client frame bytes mixed in (frames spelled from `raw::raw_json`'s tables,
//! cut short, or whatever bytes the fuzzer has, each answered as the protocol reads it), and with
//! every action, result, stat, view and invariant checked after every step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_testkit::Runner;
use switchboard_testkit::fuzz::Case;

fuzz_target!(|case: Case| {
    let mut runner = Runner::new(&case.knobs);
    for (i, step) in case.steps.iter().enumerate() {
        if let Err(e) = runner.apply(step) {
            panic!("step {i} of {case:?}:\n{e}");
        }
    }
});
