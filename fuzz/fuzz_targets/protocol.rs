//! Parse/serialize round trips of the wire frames: client frames parsed from arbitrary bytes read
//! back the same after re-serialization; event frames built from arbitrary parts read back field
//! for field, redacted exactly where a key matches; arbitrary text as raw data is refused exactly
//! when it is not JSON and otherwise reads back as parsed and redacted.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use switchboard::fuzzing::{
    client_frame_round_trip, event_frame_round_trip, raw_payload_round_trip,
};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    client: &'a [u8],
    kind: &'a str,
    room: Option<&'a str>,
    epoch: u64,
    seq: u64,
    thread: Option<&'a str>,
    run: Option<&'a str>,
    data: &'a str,
    redact: Vec<String>,
}

fuzz_target!(|input: Input<'_>| {
    client_frame_round_trip(input.client).unwrap();
    // Event data is any JSON the application could hand over.
    let data = serde_json::from_str(input.data).unwrap_or(serde_json::Value::Null);
    let redact: Vec<String> = input.redact.into_iter().filter(|k| !k.is_empty()).collect();
    // The same text as raw data, whatever it is.
    raw_payload_round_trip(input.data, &redact).unwrap();
    event_frame_round_trip(
        input.kind,
        input.room,
        input.epoch,
        input.seq,
        input.thread,
        input.run,
        &data,
        &redact,
    )
    .unwrap();
});
