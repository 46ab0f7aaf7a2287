//! A full consistency check of the hub's internal indexes and gauges, for fuzzers, simulations and
//! tests (feature `fuzzing`). It walks everything, so it is far too slow for production use.

use crate::hub::Hub;
use crate::ids::UserId;
use crate::presence::{PresenceScope, ScopeKey};
use crate::stream::Stream;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

impl Hub {
    /// Presence agrees with the connections: each user's connections per scope (its tenant once
    /// `connected`, each room once `joined`); in cluster mode also with the view of the other
    /// nodes' users and with what this node told the bus.
    fn check_presence(&self) -> Result<(), String> {
        let Some(p) = &self.cfg.presence else { return Ok(()) };
        let mut expected: hashbrown::HashMap<ScopeKey, hashbrown::HashMap<UserId, u32>> =
            hashbrown::HashMap::new();
        for (_, c) in self.conns.iter() {
            if c.is_awaiting() {
                continue;
            }
            let user = &self.users.slab[c.user() as usize];
            let mut count = |scope: PresenceScope| {
                let key = (user.tenant.clone(), scope);
                *expected.entry(key).or_default().entry(user.user.clone()).or_default() += 1;
            };
            if p.tenant {
                count(PresenceScope::Tenant);
            }
            if p.rooms {
                for m in c.memberships().iter().filter(|m| m.is_announced()) {
                    count(PresenceScope::Room(m.room().clone()));
                }
            }
        }
        self.presence.check(&expected)?;
        let (remote, published) = self.presence.cluster_counts();
        self.remote.check(&remote, &published)
    }

    /// Checks that every index agrees with every other and that every gauge in
    /// [`stats`](Hub::stats) equals what it counts. Returns a description of the first
    /// disagreement. Costs O(everything).
    pub fn check_invariants(&self) -> Result<(), String> {
        let cfg = &self.cfg;
        let stats = self.stats();
        let mut buffered = (0usize, 0usize);
        let mut trim_timers = 0usize;
        let mut stream_ok = |what: &str, s: &Stream| -> Result<(), String> {
            let (n, b) = s.buffered();
            let armed = s.trim_timer.is_some();
            ensure!(armed == (n > 0), "{what}: age timer armed {armed} with {n} buffered");
            trim_timers += usize::from(armed);
            ensure!(n <= cfg.retention.max_messages, "{what}: {n} messages over the bound");
            ensure!(b <= cfg.retention.max_bytes, "{what}: {b} bytes over the bound");
            buffered.0 += n;
            buffered.1 += b;
            Ok(())
        };

        let (mut n_conns, mut conn_timers) = (0, 0usize);
        for (idx, c) in self.conns.iter() {
            n_conns += 1;
            let user =
                self.users.slab.get(c.user() as usize).ok_or(format!("conn {idx}: no user"))?;
            ensure!(user.conns.contains(&idx), "conn {idx}: not in its user's list");
            let tenant = self.tenants.get(&user.tenant).ok_or(format!("conn {idx}: no tenant"))?;
            ensure!(
                tenant.conns.get(c.tenant_pos() as usize) == Some(&idx),
                "conn {idx}: tenant back-pointer broken"
            );
            ensure!(
                c.memberships().len() <= cfg.max_rooms_per_connection as usize,
                "conn {idx}: too many rooms"
            );
            for (slot, m) in c.memberships().iter().enumerate() {
                let room = tenant
                    .rooms
                    .get(m.room())
                    .ok_or(format!("conn {idx}: room {} missing", m.room()))?;
                let member = room
                    .members
                    .get(m.pos() as usize)
                    .ok_or(format!("conn {idx}: bad room pos"))?;
                ensure!(
                    member.conn == idx
                        && member.id() == self.conns.id_of(idx)
                        && member.slot as usize == slot,
                    "conn {idx}: room {} back-pointer broken",
                    m.room()
                );
            }
            if let (Some(threads), Some(runs)) = (c.threads(), c.runs()) {
                ensure!(
                    threads.len() <= cfg.max_thread_subscriptions as usize
                        && runs.len() <= cfg.max_thread_subscriptions as usize,
                    "conn {idx}: too many threads or runs"
                );
                ensure!(!threads.is_empty() || !runs.is_empty(), "conn {idx}: an empty filter");
            }

            let armed = self.conns.timer_deadline(idx);
            match (armed, c.next_deadline(cfg)) {
                (Some(armed), Some(due)) => {
                    ensure!(armed <= due, "conn {idx}: timer armed after its deadline");
                }
                (None, Some(_)) => ensure!(false, "conn {idx}: a deadline without a timer"),
                (_, None) => {}
            }
            conn_timers += usize::from(armed.is_some());
        }
        // History requests wait for the log only in cluster mode, one per open connection.
        for id in self.histories.keys() {
            let open = self.conns.contains(id.index) && self.conns.id_of(id.index) == *id;
            ensure!(open && self.node.is_some(), "a history request of {id} waits, not open");
        }
        ensure!(
            n_conns as u64 == stats.connections_active,
            "connections_active {} != {n_conns}",
            stats.connections_active
        );
        ensure!(n_conns <= cfg.max_connections as usize, "over max_connections");

        let (mut active, mut detached) = (0u64, 0u64);
        for (uidx, u) in self.users.iter() {
            ensure!(
                self.users.find(u.tenant.as_str(), u.user.as_str()) == Some(uidx),
                "user {uidx}: not indexed"
            );
            for &c in &u.conns {
                let conn = self.conns.iter().find(|(i, _)| *i == c);
                ensure!(
                    conn.is_some_and(|(_, conn)| conn.user() == uidx),
                    "user {uidx}: lists a foreign conn {c}"
                );
            }
            if u.conns.is_empty() {
                detached += 1;
                ensure!(u.retire.is_some(), "user {uidx}: detached without a retirement timer");
            } else {
                active += 1;
                ensure!(u.retire.is_none(), "user {uidx}: active with a retirement timer");
            }
            ensure!(self.tenants.contains_key(&u.tenant), "user {uidx}: tenant missing");
            stream_ok("user stream", &u.stream)?;
        }
        ensure!(self.users.indexed() == self.users.slab.len(), "user index size differs");
        ensure!(active == stats.users_active, "users_active {} != {active}", stats.users_active);
        ensure!(
            detached == stats.users_detached,
            "users_detached {} != {detached}",
            stats.users_detached
        );
        ensure!(detached as usize <= cfg.max_detached_users as usize, "over max_detached_users");

        let (mut rooms, mut idle) = (0u64, 0u64);
        for (name, t) in self.tenants.iter() {
            let users = self.users.iter().filter(|(_, u)| &u.tenant == name).count();
            ensure!(
                users == t.users as usize,
                "tenant {name}: {} users counted, {users} found",
                t.users
            );
            ensure!(!t.is_unused(), "tenant {name}: kept while unused");
            let conns =
                self.conns.iter().filter(|(_, c)| &self.users.get(c.user()).tenant == name).count();
            ensure!(
                conns == t.conns.len(),
                "tenant {name}: {} conns listed, {conns} found",
                t.conns.len()
            );
            stream_ok("tenant stream", &t.stream)?;
            for (room, r) in &t.rooms {
                if r.members.is_empty() {
                    idle += 1;
                    ensure!(r.idle.is_some(), "room {room}: kept while empty and not idle");
                } else {
                    rooms += 1;
                    ensure!(r.idle.is_none(), "room {room}: idle with members");
                }
                stream_ok("room stream", &r.stream)?;
            }
        }
        ensure!(self.tenants.len() as u64 == stats.tenants, "tenants gauge");
        ensure!(rooms == stats.rooms, "rooms gauge {} != {rooms}", stats.rooms);
        ensure!(idle == stats.rooms_idle, "rooms_idle gauge {} != {idle}", stats.rooms_idle);
        ensure!(self.tenants.idle_rooms() as u64 == idle, "idle room timers");
        ensure!(idle <= u64::from(cfg.max_idle_rooms), "over max_idle_rooms");
        ensure!(
            buffered.0 as u64 == stats.buffered_messages
                && buffered.1 as u64 == stats.buffered_bytes,
            "buffered gauges {}/{} != {}/{}",
            stats.buffered_messages,
            stats.buffered_bytes,
            buffered.0,
            buffered.1
        );
        ensure!(
            self.buffers.armed() == trim_timers,
            "{} age timers armed, {trim_timers} expected",
            self.buffers.armed()
        );
        ensure!(
            self.breakers.timers() == self.breakers.len(),
            "breakers: {} timers for {} entries",
            self.breakers.timers(),
            self.breakers.len()
        );
        ensure!(self.breakers.len() <= cfg.max_breakers as usize, "over max_breakers");
        ensure!(
            self.conns.armed() == conn_timers,
            "{} connection timers armed, {conn_timers} expected",
            self.conns.armed()
        );
        let snapshots = cfg.snapshot_interval.is_some() && self.last_now.is_some();
        ensure!(
            self.snapshot.poll_timeout().is_some() == snapshots,
            "snapshot timer armed {}, expected {snapshots}",
            self.snapshot.poll_timeout().is_some()
        );
        ensure!(
            stats.connections_opened == stats.connections_closed + stats.connections_active,
            "opened != closed + active"
        );
        self.check_presence()
    }
}
