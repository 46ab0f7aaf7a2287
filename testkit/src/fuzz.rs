//! Whole cases from fuzzer bytes (feature `arbitrary`): the same vocabulary and the same bounds as
//! the proptest strategies in [`crate::strategy`], built from an [`Unstructured`] so that a
//! coverage-guided fuzzer mutates operations rather than bytes. The `ops` fuzz target is a loop
//! over [`Case::steps`] through [`crate::Runner::apply`]; the `cluster` target is a loop over
//! [`ClusterCase::steps`] through [`ClusterRunner::apply`] (2–3 clustered hubs over the model bus,
//! with bus faults and forged bus input).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Arbitrary, Result, Unstructured};
use serde_json::Value;
use switchboard::{
    Action, BusEntry, BusFailure, BusReply, ClusterConfig, ConnId, DisconnectReason, Envelope,
    EventKind, OpId, Principal, StreamKey, StreamPos, Target, UserLimitPolicy,
};

use crate::cluster::Cluster;
use crate::frames::EventFrame;

use crate::vocab::*;

/// At most this many steps per case (as in the property tests, and bounded so that a case
/// opens at most 60 connections, which keeps the untripped breaker's `u32::MAX` threshold out of
/// reach).
pub const MAX_STEPS: usize = 60;

/// One fuzz case: the knobs of the hub's configuration and the steps to run.
#[derive(Clone, Debug)]
pub struct Case {
    /// The configuration a case varies.
    pub knobs: Knobs,
    /// What happens, in order.
    pub steps: Vec<Step>,
}

impl<'a> Arbitrary<'a> for Case {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let knobs = knobs(u)?;
        let mut steps = Vec::new();
        while steps.len() < MAX_STEPS && !u.is_empty() {
            steps.push(Step {
                back: if u.ratio(1, 7)? { u.int_in_range(1..=3_999)? } else { 0 },
                op: op(u)?,
            });
        }
        Ok(Self { knobs, steps })
    }
}

fn opt<'a, T>(
    u: &mut Unstructured<'a>,
    f: impl FnOnce(&mut Unstructured<'a>) -> Result<T>,
) -> Result<Option<T>> {
    Ok(if u.arbitrary()? { Some(f(u)?) } else { None })
}

fn below(u: &mut Unstructured<'_>, n: usize) -> Result<usize> {
    u.int_in_range(0..=n - 1)
}

fn knobs(u: &mut Unstructured<'_>) -> Result<Knobs> {
    let policy =
        if u.arbitrary()? { UserLimitPolicy::Reject } else { UserLimitPolicy::EvictOldest };
    let heartbeat = if u.ratio(1, 4)? { (4_000, 8_000) } else { HEARTBEAT };
    let retention = opt(u, |u| {
        Ok((u.int_in_range(1..=5)?, u.int_in_range(150..=899)?, u.int_in_range(2_000..=39_999)?))
    })?;
    let max_buffered_bytes = opt(u, |u| u.int_in_range(200..=2_499))?;
    let backpressure = opt(u, |u| {
        let soft = u.int_in_range(250..=1_199)?;
        Ok((soft, soft + u.int_in_range(0..=1_199)?))
    })?;
    let resume_window = if u.ratio(1, 4)? { u.int_in_range(500..=5_999)? } else { 0 };
    let breaker = opt(u, |u| {
        Ok((
            u.int_in_range(1..=3)?,
            u.int_in_range(2_000..=29_999)?,
            u.int_in_range(1_000..=19_999)?,
            u.int_in_range(500..=7_999)?,
        ))
    })?;
    Ok(Knobs {
        policy,
        global_broadcast: u.arbitrary()?,
        user_retention: if u.ratio(1, 5)? { 0 } else { RETENTION },
        max_frame_bytes: MAX_FRAME_BYTES,
        tenant_cap: opt(u, |u| u.int_in_range(3..=5))?,
        heartbeat,
        retention,
        max_buffered_bytes,
        backpressure,
        resume_window,
        breaker,
        max_detached_users: opt(u, |u| u.int_in_range(1..=3))?.unwrap_or(NO_DETACHED_CAP),
        room_retention: if u.arbitrary()? { 0 } else { u.int_in_range(1..=30_000)? },
    })
}

fn who(u: &mut Unstructured<'_>) -> Result<Who> {
    let forged = if u.ratio(1, 16)? { Some(u.arbitrary()?) } else { None };
    let exact = if u.ratio(1, 8)? { Some(u.arbitrary()?) } else { None };
    Ok(Who { live: !u.ratio(1, 5)?, n: u.arbitrary()?, forged, exact })
}

fn expires_in(u: &mut Unstructured<'_>, lo: i32) -> Result<Option<i32>> {
    opt(u, |u| u.int_in_range(lo..=29_999))
}

/// Raw bytes (feature `arbitrary`): a frame spelled from [`crate::raw::raw_json`]'s tables, maybe
/// cut short, or whatever bytes the fuzzer has.
fn raw(u: &mut Unstructured<'_>) -> Result<In> {
    if u.ratio(3, 4)? {
        let kind = if u.ratio(9, 10)? { Some(u.arbitrary()?) } else { None };
        let n = below(u, 4)?;
        let mut fields = Vec::with_capacity(n);
        for _ in 0..n {
            fields.push(u.arbitrary()?);
        }
        let cut = if u.ratio(1, 6)? { Some(u.int_in_range(0..=63)?) } else { None };
        Ok(In::Raw(crate::raw::raw_json(kind, &fields, u.arbitrary()?, cut)))
    } else {
        let len = u.int_in_range(0..=200)?;
        Ok(In::Raw(u.bytes(len)?.to_vec()))
    }
}

fn frame(u: &mut Unstructured<'_>) -> Result<In> {
    Ok(match u.choose_index(9)? {
        8 => raw(u)?,
        0 => In::Subscribe(below(u, THREADS)?),
        1 => In::Unsubscribe(opt(u, |u| below(u, THREADS))?),
        2 => In::Message(opt(u, |u| below(u, THREADS))?, u.arbitrary()?),
        3 => In::Ping,
        4 => {
            let n = below(u, 5)?;
            let mut spec = Vec::with_capacity(n);
            for _ in 0..n {
                spec.push((below(u, 5)?, u.ratio(1, 5)?, u.arbitrary()?));
            }
            In::Resume(spec, u.ratio(1, 5)?)
        }
        5 => In::Garbage(below(u, GARBAGE.len())?),
        6 => In::Remembered(who(u)?, u.ratio(1, 5)?),
        _ => In::Oversized(u.int_in_range(1..=39)?),
    })
}

fn role(u: &mut Unstructured<'_>) -> Result<Option<usize>> {
    opt(u, |u| below(u, ROLES.len()))
}

fn target(u: &mut Unstructured<'_>) -> Result<Tgt> {
    Ok(match u.choose_index(10)? {
        0 => Tgt::User(below(u, TENANTS + 1)?, below(u, USERS + 1)?),
        1 => Tgt::Thread(below(u, TENANTS)?, below(u, USERS)?, below(u, THREADS)?),
        2 => Tgt::Conn(who(u)?),
        3 => Tgt::Room(below(u, TENANTS + 1)?, below(u, ROOMS)?),
        4 => Tgt::Tenant(below(u, TENANTS + 1)?, role(u)?),
        5 => Tgt::Everyone,
        6 => Tgt::UserOf(who(u)?),
        7 => Tgt::ThreadOf(who(u)?, below(u, THREADS)?),
        8 => Tgt::RoomOf(who(u)?, below(u, ROOMS)?),
        _ => Tgt::TenantOf(who(u)?, role(u)?),
    })
}

fn op(u: &mut Unstructured<'_>) -> Result<Op> {
    Ok(match u.choose_index(14)? {
        0 => Op::Connect {
            tenant: below(u, TENANTS)?,
            user: below(u, USERS)?,
            tier: below(u, 4)?,
            roles: u.int_in_range(0..=3)?,
            expires_in: expires_in(u, -2_000)?,
        },
        1 => Op::Disconnect { who: who(u)?, clean: u.arbitrary()? },
        2 => Op::Close { who: who(u)?, reason: below(u, APP_CLOSE_REASONS.len())? },
        3 => Op::Receive { who: who(u)?, frame: frame(u)? },
        4 => Op::Pong { who: who(u)? },
        5 => Op::Written {
            who: who(u)?,
            bytes: if u.ratio(1, 4)? { 100_000 } else { u.int_in_range(0..=399)? },
        },
        6 => Op::Refresh { who: who(u)?, expires_in: expires_in(u, -3_000)? },
        7 => Op::Join { who: who(u)?, room: below(u, ROOMS)? },
        8 => Op::Leave { who: who(u)?, room: below(u, ROOMS)?, joined: u.arbitrary()? },
        9 => Op::Publish {
            target: target(u)?,
            kind: below(u, 7)?,
            thread: opt(u, |u| below(u, THREADS))?,
        },
        10 => Op::Sleep(u.int_in_range(0..=2_999)?),
        11 => Op::Tick(u.int_in_range(0..=150_000)?),
        12 => Op::TickBack(u.int_in_range(1..=4_999)?),
        _ => Op::TickNext,
    })
}

mod cluster;
pub use cluster::*;

#[cfg(test)]
mod tests;
