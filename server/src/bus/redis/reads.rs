//! Presence reads, for the hub's [`BusOp::PresenceRead`](switchboard::BusOp::PresenceRead)s and
//! the HTTP layer's [`BusQuery::Presence`]: two round trips, so that the read script is handed
//! every key it touches.
//!
//! 1. `ZRANGE` of each scope's node index (one key per command), pipelined for every scope read
//!    at once;
//! 2. one script per scope that listed a node, whose KEYS are the index and each listed node's
//!    set, named here by [`StreamNames::presence_set`]; pipelined as well. A node that writes its
//!    first set in the scope between the two steps is not in this read (it is in the next), as
//!    if the read had come a moment earlier; a listed node whose set is gone by step 2 is simply
//!    not in the answer.
//!
//! All of a scope's keys share its hash tag, so step 2 touches one slot and runs on Redis Cluster
//! as it does on one Redis. A script Redis no longer knows is loaded and step 2 sent once more.

use std::sync::Arc;
use std::time::Instant;

use redis::aio::ConnectionManager;
use redis::{Pipeline, Value};
use switchboard::{BusFailure, BusReply, NodeId, StreamKey};
use tokio::sync::mpsc;

use super::keys::StreamNames;
use super::scripts::{self, Scripts};
use super::{RETRYABLE_CODES, is_noscript, load_scripts, server_error};
use crate::bus::{BusMetrics, BusQuery, QueryRequest};

/// One scope to read: its stream and the most users its answer holds.
pub(crate) type Read<'a> = (&'a StreamKey, u32);

/// Reads each scope's presence; one answer per read, in order.
pub(crate) async fn presence(
    conn: &mut ConnectionManager,
    scripts: &Scripts,
    prefix: &str,
    reads: &[Read<'_>],
) -> Vec<Result<BusReply, BusFailure>> {
    let names: Vec<StreamNames> = reads.iter().map(|(s, _)| StreamNames::of(prefix, s)).collect();
    let mut answers: Vec<Option<Result<BusReply, BusFailure>>> = vec![None; reads.len()];
    // Step 1: the node indexes.
    let mut pipe = Pipeline::new();
    for n in &names {
        pipe.cmd("ZRANGE").arg(n.presence_nodes()).arg(0).arg(-1);
    }
    let indexes = match send(conn, &pipe).await {
        Ok(replies) => replies,
        Err(failure) => return vec![Err(failure); reads.len()],
    };
    // Step 2: a script per scope that has nodes.
    let mut sets = Vec::new();
    for (i, reply) in indexes.iter().enumerate() {
        match listed(reply) {
            Ok(nodes) if nodes.is_empty() => {
                answers[i] = Some(Ok(BusReply::Presence { held: Vec::new(), truncated: false }));
            }
            Ok(nodes) => sets.push((i, nodes)),
            Err(failure) => answers[i] = Some(Err(failure)),
        }
    }
    let mut retried = false;
    while !sets.is_empty() {
        let mut pipe = Pipeline::new();
        for (i, nodes) in &sets {
            let n = &names[*i];
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(scripts.presence_read.hash())
                .arg(1 + nodes.len())
                .arg(n.presence_nodes());
            for node in nodes {
                cmd.arg(n.presence_set(&NodeId::new(node.as_str())));
            }
            cmd.arg(reads[*i].1);
            for node in nodes {
                cmd.arg(node.as_str());
            }
        }
        let replies = match send(conn, &pipe).await {
            Ok(replies) => replies,
            Err(failure) => {
                for (i, _) in &sets {
                    answers[*i] = Some(Err(failure.clone()));
                }
                break;
            }
        };
        let mut again = Vec::new();
        for ((i, nodes), reply) in sets.into_iter().zip(&replies) {
            if !retried && is_noscript(reply) {
                again.push((i, nodes));
                continue;
            }
            answers[i] = Some(held(reply));
        }
        if !again.is_empty() && !load_scripts(conn, scripts).await {
            for (i, _) in &again {
                answers[*i] = Some(Err(BusFailure::Retryable));
            }
            break;
        }
        retried = true;
        sets = again;
    }
    answers.into_iter().map(|a| a.unwrap_or(Err(BusFailure::Retryable))).collect()
}

/// Sends a pipeline: its replies, one per command, or why it failed as a whole.
async fn send(conn: &mut ConnectionManager, pipe: &Pipeline) -> Result<Vec<Value>, BusFailure> {
    match conn.send_packed_commands(pipe, 0, pipe.len()).await {
        Ok(replies) if replies.len() == pipe.len() => Ok(replies),
        Ok(_) | Err(_) => Err(BusFailure::Retryable),
    }
}

/// A reply Redis refused, as a failure: retryable when Redis may answer differently later.
fn refused(err: &redis::ServerError) -> BusFailure {
    eprintln!("switchboard: redis refused a presence read: {err:?}");
    if RETRYABLE_CODES.contains(&err.code()) { BusFailure::Retryable } else { BusFailure::Refused }
}

/// Step 1's reply: the nodes the index lists.
fn listed(reply: &Value) -> Result<Vec<String>, BusFailure> {
    if let Some(err) = server_error(reply) {
        return Err(refused(err));
    }
    match scripts::members(reply) {
        Ok(nodes) => Ok(nodes.into_iter().map(str::to_owned).collect()),
        Err(e) => {
            eprintln!("switchboard: {e}");
            Err(BusFailure::Refused)
        }
    }
}

/// Step 2's reply: the live sets.
fn held(reply: &Value) -> Result<BusReply, BusFailure> {
    if let Some(err) = server_error(reply) {
        return Err(refused(err));
    }
    match scripts::presence_read(reply) {
        Ok((held, truncated)) => Ok(BusReply::Presence { held, truncated }),
        Err(e) => {
            eprintln!("switchboard: {e}");
            Err(BusFailure::Refused)
        }
    }
}

/// Serves the HTTP layer's queries one at a time, until every [`BusReader`](crate::bus::BusReader)
/// is gone. Each is counted as its operation kind (`presence_read`).
pub(crate) async fn serve(
    mut conn: ConnectionManager,
    scripts: Arc<Scripts>,
    prefix: String,
    metrics: Arc<BusMetrics>,
    mut queries: mpsc::Receiver<QueryRequest>,
) {
    while let Some(QueryRequest { query, reply }) = queries.recv().await {
        let at = Instant::now();
        let answer = match &query {
            BusQuery::Presence { scope, limit } => {
                let mut answers = presence(&mut conn, &scripts, &prefix, &[(scope, *limit)]).await;
                answers.pop().unwrap_or(Err(BusFailure::Retryable))
            }
        };
        metrics.record("presence_read", at.elapsed(), answer.is_err());
        // The asker may have given up (its timeout): nothing to do.
        let _ = reply.send(answer);
    }
}
