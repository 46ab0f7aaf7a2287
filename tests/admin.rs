//! Issue 14 item 5, the library half of the admin API: a tenant's users, connections and rooms
//! a page at a time, connections found by the id their client was told, and a user's kick.
mod common;

use common::*;
use switchboard::{CloseReason, DisconnectReason, Principal, TenantId, UserId};

#[test]
fn a_tenant_is_listed_a_page_at_a_time_and_never_another_tenants() {
    let mut sim = Sim::new(quiet());
    let mut acme = Vec::new();
    for user in ["carol", "alice", "bob"] {
        acme.push(sim.connect("acme", user));
    }
    let globex = sim.connect("globex", "alice");
    sim.hub.join(sim.now, acme[0], "lobby").unwrap();
    sim.hub.join(sim.now, acme[1], "ops").unwrap();
    sim.hub.join(sim.now, globex, "zeta").unwrap();
    sim.hub.disconnect(sim.now, acme[2], DisconnectReason::Clean).unwrap();
    sim.drain();
    let tenant = TenantId::from("acme");

    let names = |views: &[switchboard::UserView<'_>]| -> Vec<String> {
        views.iter().map(|u| u.user().to_string()).collect()
    };
    let first = sim.hub.tenant_users(&tenant, None, 2);
    assert_eq!(names(&first), ["alice", "bob"], "sorted; bob is detached but still held");
    let rest = sim.hub.tenant_users(&tenant, Some("bob"), 2);
    assert_eq!(names(&rest), ["carol"]);

    let conns = sim.hub.tenant_connections(&tenant, None, 10).unwrap();
    let ids: Vec<_> = conns.iter().map(|c| c.id()).collect();
    assert_eq!(ids.len(), 2, "bob's connection closed");
    assert!(conns.iter().all(|c| c.tenant().as_str() == "acme"));
    let after = ids[0].to_string();
    let page = sim.hub.tenant_connections(&tenant, Some(&after), 10).unwrap();
    assert_eq!(page.iter().map(|c| c.id()).collect::<Vec<_>>(), ids[1..]);
    assert!(sim.hub.tenant_connections(&tenant, Some("nonsense"), 10).is_none());

    let rooms = sim.hub.tenant_rooms(&tenant, None, 10);
    let rooms: Vec<_> = rooms.iter().map(|r| (r.room.to_string(), r.members)).collect();
    assert_eq!(rooms, [("lobby".into(), 1), ("ops".into(), 1)]);
    assert_eq!(sim.hub.tenant_rooms(&tenant, Some("lobby"), 10).len(), 1);
    assert!(sim.hub.tenant_users(&TenantId::from("initech"), None, 10).is_empty());
}

#[test]
fn a_kick_closes_every_connection_of_the_user_as_kicked() {
    let mut sim = Sim::new(quiet());
    let a = sim.connect("acme", "alice");
    let b = sim.connect_as(Principal::new("acme", "alice"));
    let other = sim.connect("globex", "alice");
    let closed = sim.hub.kick_user(sim.now, &TenantId::from("acme"), &UserId::from("alice"));
    assert_eq!(closed, 2);
    let mut kicked = closes(&sim.drain());
    kicked.sort_by_key(|(c, _)| *c);
    assert_eq!(kicked, [(a, CloseReason::Kicked), (b, CloseReason::Kicked)]);
    assert!(sim.hub.connection(other).is_some(), "the same user id of another tenant stays");
    assert_eq!(CloseReason::Kicked.code(), 4005);
    assert!(!CloseReason::Kicked.reconnect());
}
