//! What operators read and set per connection (issue 17): round-trip times from the hub's own
//! pings, bounded connection labels, and the per-tier cap on a connection's lifetime. All on a
//! virtual clock.

mod common;

use common::*;
use switchboard::{RoundTrip, RttHistogram};

// ---------------------------------------------------------------------------------------------
// Round-trip times

#[test]
fn a_pong_answering_the_hubs_ping_measures_the_round_trip() {
    let mut sim = Sim::default();
    let id = sim.connect("acme", "alice");
    assert_eq!(sim.hub.connection(id).unwrap().round_trip(), None, "nothing measured yet");

    assert_eq!(pings(&sim.advance(secs(25))), vec![id]);
    sim.now += ms(80);
    sim.hub.pong(sim.now, id).unwrap();
    let rtt = sim.hub.connection(id).unwrap().round_trip().unwrap();
    assert_eq!((rtt.last, rtt.smoothed), (ms(80), ms(80)));

    // The next ping, one interval after the pong; a slower answer moves the estimate an eighth.
    assert_eq!(pings(&sim.advance(secs(25))), vec![id]);
    sim.now += ms(240);
    sim.hub.pong(sim.now, id).unwrap();
    let rtt = sim.hub.connection(id).unwrap().round_trip().unwrap();
    assert_eq!((rtt.last, rtt.smoothed), (ms(240), ms(100)));

    let h: RttHistogram = sim.hub.stats().round_trips;
    assert_eq!(h.count(), 2);
    assert_eq!(h.sum(), ms(320));
    let le = |bound| h.cumulative().find(|&(b, _)| b == bound).unwrap().1;
    assert_eq!((le(ms(50)), le(ms(100)), le(ms(250))), (0, 1, 2));
}

#[test]
fn a_clients_own_ping_frames_and_unsolicited_pongs_measure_nothing() {
    let mut sim = Sim::default();
    let id = sim.connect("acme", "alice");
    // A client timing itself with `ping` frames gets its `pong` frames; the hub learns nothing.
    for _ in 0..3 {
        sim.now += secs(1);
        sim.hub.receive(sim.now, id, br#"{"type":"ping"}"#).unwrap();
        sim.drain();
    }
    // Pongs nobody asked for (a client may send them as keep-alives) prove life, measure nothing.
    sim.hub.pong(sim.now, id).unwrap();
    assert_eq!(sim.hub.connection(id).unwrap().round_trip(), None);
    assert_eq!(sim.hub.stats().round_trips.count(), 0);
    assert_eq!(sim.hub.stats().pongs_received, 1);

    // A pong answering the hub's ping samples once; a second pong for it samples nothing.
    assert_eq!(pings(&sim.advance(secs(25))), vec![id]);
    sim.now += ms(30);
    sim.hub.pong(sim.now, id).unwrap();
    sim.now += ms(1);
    sim.hub.pong(sim.now, id).unwrap();
    let rtt = sim.hub.connection(id).unwrap().round_trip().unwrap();
    assert_eq!(rtt.last, ms(30));
    assert_eq!(sim.hub.stats().round_trips.count(), 1);
}

#[test]
fn the_pong_times_the_ping_even_after_other_frames_proved_the_peer_alive() {
    let mut sim = Sim::default();
    let id = sim.connect("acme", "alice");
    assert_eq!(pings(&sim.advance(secs(25))), vec![id]);
    sim.now += ms(5);
    sim.hub.receive(sim.now, id, br#"{"type":"subscribe","thread_id":"t1"}"#).unwrap();
    sim.drain();
    assert!(!sim.hub.connection(id).unwrap().awaiting_pong(), "the frame answered liveness");
    sim.now += ms(45);
    sim.hub.pong(sim.now, id).unwrap();
    let rtt: RoundTrip = sim.hub.connection(id).unwrap().round_trip().unwrap();
    assert_eq!(rtt.last, ms(50), "from the ping, not from the frame");
}

#[test]
fn a_pong_later_than_the_heartbeat_timeout_is_no_sample() {
    let mut sim = Sim::default();
    let id = sim.connect("acme", "alice");
    assert_eq!(pings(&sim.advance(secs(25))), vec![id]);
    // Messages keep it alive past the timeout; the pong that finally comes is no round trip.
    for _ in 0..12 {
        sim.now += secs(1);
        sim.hub.receive(sim.now, id, br#"{"type":"ping"}"#).unwrap();
        sim.drain();
    }
    sim.hub.pong(sim.now, id).unwrap();
    assert!(sim.hub.connection(id).is_some());
    assert_eq!(sim.hub.connection(id).unwrap().round_trip(), None);
    assert_eq!(sim.hub.stats().round_trips.count(), 0);
}
