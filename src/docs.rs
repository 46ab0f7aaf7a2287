//! # The protocol, lifecycles and limits
//!
//! This module holds no code: it is the reference the README gives, rendered by rustdoc so that it
//! sits beside the API it describes. (Keep the two in step: the README's sections "Lifecycles"
//! through "Wire protocol" are this text.)
//!
//! ## Lifecycles
//!
//! **Connection.** `connect` → open; the first action is the `connected` frame. Any inbound frame or
//! pong proves it alive; after `heartbeat.interval` (25 s) of silence the hub asks for a `Ping`; with
//! no sign of life within `heartbeat.timeout` (10 s) it closes with `heartbeat_timeout`. A session
//! with `expires_at` gets `refresh_required` `session_grace` (60 s) before it expires and is closed
//! with `session_expired` at expiry unless the caller `refresh`es it. A tier with
//! `max_connection_lifetime` (none by default) closes its connections with `max_lifetime` (4009,
//! reconnect and resume) once they are that old, each at a point of the cap's last tenth drawn from
//! the seed, so that sockets opened together after a deploy are not all moved at once. A closed
//! connection is forgotten at once; its id then reports `recently_closed` for `tombstone_ttl`
//! (60 s). The pong that answers the hub's ping measures the connection's **round trip**: the time
//! from the hub asking for the ping to the pong (`ConnView::round_trip`: the last sample and a
//! smoothed one, RFC 6298's 1/8 gain; `HubStats::round_trips`: a histogram). A client's own `ping`
//! frames, a pong nobody asked for and one later than `heartbeat.timeout` measure nothing, and the
//! hub decides nothing on it: a client can only delay or hasten its own.
//!
//! **User.** Created by its first connection; *active* while it has connections; *detached* after the
//! last one closes, when it keeps its stream for `user_retention` (2 min); *retired* after that.
//! Publishing to a user the hub does not hold creates nothing and is reported undeliverable.
//!
//! **Rooms** are tenant-scoped, joined and left only by the server (`join`/`leave`, each announced to
//! the connection with a `joined`/`left` frame). A room whose last member leaves is dropped at once,
//! or, with `Config::room_retention` (the server keeps rooms as long as users), kept idle with
//! its stream still buffering, so that a member who drops off for a moment can resume it.
//!
//! ## Delivery guarantees
//!
//! Every message belongs to one **stream**: the user's own stream (`"u"`: targets `User`, `Thread`,
//! `Connection`), the tenant's broadcast stream (`"t"`), or a room's stream (`"r:<room>"`). A stream
//! has an **epoch** (a new random number whenever the stream is created anew: a user seen again after
//! retirement, a room re-created after it emptied) and a **seq** that grows by one per message. Every
//! event frame carries `stream`, `epoch` and `seq`.
//!
//! What switchboard guarantees:
//!
//! 1. **Isolation.** A frame reaches a connection only if the target admits it: the connection's
//!    user (and thread and run filter), a room it is in, its tenant (and role), or that very connection. A
//!    replay after `resume` follows the same rule. No API resolves across tenants except
//!    `Target::Everyone`, off by default.
//! 2. **Order and no duplicates.** On one connection, a stream's seqs only grow: a replay never
//!    sends a seq at or below one this connection was already sent (live, or before it left and
//!    re-joined a room); when the client's position is below that, the stream is reported
//!    `recovered: false` with reason `live_ahead` rather than replayed out of order.
//! 3. **No silent loss of critical events on a live connection.** Every event but `agent_thinking`
//!    (and custom kinds published as droppable, `EventKind::CustomDroppable`) is delivered in order, or the connection is closed with `slow_consumer` (4003) so the client
//!    resumes. `agent_thinking` may be skipped for a connection that is behind (it has bytes not yet
//!    confirmed by `written`, and this frame would take it past `max_inflight_bytes`, default
//!    128 KiB); a connection with nothing unwritten gets it whatever its size. The next frame to a
//!    connection that skipped is then `{"type":"skipped","count":N}`.
//! 4. **Exact recovery within retention.** Each stream keeps its last messages — at most 1,000
//!    messages, 1 MiB and 2 minutes by default (`Config::retention`), and at most
//!    `max_buffered_bytes` (512 MiB) over all streams, a hard cap: past it, detached users are
//!    retired early, then the oldest messages of all streams are shed (a stream's newest too, if it
//!    must; a single event larger than the cap is delivered live but not kept), and a later resume
//!    across a shed message says `recovered: false` for that stream. A detached user's stream keeps buffering for
//!    `user_retention` (2 min). A client that reconnects and resumes within those bounds receives
//!    exactly the messages it missed that it may see, in order, then `resumed` with
//!    `recovered: true`. Otherwise it gets `recovered: false` for that stream, and must refetch
//!    that state from the application. That includes a gap too large to send at once: a replay
//!    never takes a connection past `max_unwritten_bytes`, so a stream whose missed messages do
//!    not all fit is not replayed at all (`too_large`, see below).
//! 5. **Bounded memory.** A stalled reader costs at most `max_unwritten_bytes` (1 MiB) of queued
//!    frames before it is closed; it never delays other connections. A replay after `resume` is
//!    held to the same limit.
//!
//! What the guarantees do not cover: messages to `Target::Connection` are replayed only to that same
//! connection (a reconnect is a new connection); a connection narrowed to threads sees gaps in seq
//! where other threads' messages were; `Everyone` is one message per tenant stream.
//!
//! What a client must do: remember, per stream, the `epoch` and `seq` of the last event it processed
//! (the `connected` frame gives the starting positions of `u` and `t`, a `joined` frame those of a
//! room); after a reconnect, send `resume` with those positions **first** (only `subscribe` and
//! `unsubscribe` may come before it, so that the replay already honours the thread filter); on `recovered: false` for a stream, refetch
//! and continue from the position the report gives. Set `Config::resume_window` (for example 2 s)
//! so that events published between the reconnect and the `resume` are held and replayed in order;
//! with the default of 0, live delivery starts at once, and a stream that already delivered live
//! events past the client's position answers `recovered: false` (`live_ahead`): refetch it.
//!
//! ### Resume protocol
//!
//! ```text
//! client                                   hub
//!   |-- WebSocket connect ------------------>|  hub.connect(principal)
//!   |<-- {"type":"connected", "conn_id":..,  |
//!   |     "streams":{"u":{"epoch":E,"seq":S},"t":{..}}}
//!   |-- {"type":"resume","positions":{      |
//!   |     "u":{"epoch":E,"seq":41},          |
//!   |     "r:standup":{"epoch":R,"seq":7}}} ->|
//!   |<-- missed events of u, t, each room, in order (only what this connection may see)
//!   |<-- {"type":"resumed","recovered":true,"streams":{
//!   |     "u":{"recovered":true,"epoch":E,"seq":45,"available_from":3,"replayed":4},
//!   |     "r:standup":{"recovered":false,"reason":"gap_too_old","epoch":R,"seq":2100,"available_from":1101,"replayed":0}}}
//!   |<-- live events ...
//! ```
//!
//! `reason` is `epoch_mismatch` (the stream was re-created), `gap_too_old` (the missing messages are
//! no longer all buffered), `future_seq` (the client claims a seq the stream has not reached),
//! `live_ahead` (this connection was already sent later seqs of the stream — live before the
//! resume, or before it left and re-joined the room — so the gap cannot come in order),
//! `too_large` (the missed messages this connection may see do not all fit in what is left of
//! `max_unwritten_bytes` once the bytes it has not confirmed with `written` and room for the
//! `resumed` frame are counted: nothing of that stream is replayed, never a part; streams are
//! replayed in order — `u`, `t`, then rooms — and the ones after it that fit still are; everything
//! after the report comes live) or `unknown_stream` (not one of this connection's streams:
//! nothing of it is replayed, and the attempt is audited). A connection held in its resume window
//! gets the events published while it was held when it goes live; if they are no longer buffered,
//! or do not fit under `max_unwritten_bytes`, it is closed with `slow_consumer` (4003) instead, so
//! that it resumes rather than miss them or exceed the limit. A connection resumes at most once (`already_resumed`), and a `resume` may
//! name at most `2 + max_rooms_per_connection` streams.
//!
//! ### Reconnect breaker
//!
//! The breaker guards against a client that fails to *create* connections again and again, not
//! against networks that blink. A failure is an abnormal close (transport error, heartbeat timeout,
//! slow-consumer or protocol-violation close) of a connection that lived less than 10 s
//! (`breaker.probe_healthy_after`) and was opened after the user's last counted failure: several
//! tabs of one user that drop together count once, and a long-lived connection's drop not at all.
//! Five failures of one user within 60 s open that user's breaker for 60 s: `connect` fails with
//! `ConnectError::BreakerOpen { retry_after }`. Then it is half-open and admits one probe connection;
//! if the probe stays up 10 s the breaker closes, if it fails the breaker opens again. Transitions are
//! audited and pushed as `MetricEvent::BreakerChanged`; `hub.user(..).breaker()` shows the state.
//! The breaker is kept apart from the user's state and outlives it (whatever `user_retention` is):
//! from the first counted failure until 60 s after the last one, or while open or half-open (a
//! half-open breaker whose probe never comes is forgotten 60 s later). At most `max_breakers`
//! (100,000) are kept; beyond that the closed one closest to expiry is forgotten first
//! (`breakers_evicted`).
//!
//! ## Presence
//!
//! Who is online, per tenant and per room, at user granularity: a user with three tabs is one entry
//! with three connections. Off by default; `Config::presence = Some(PresenceConfig::default())` turns
//! it on for tenants and rooms (`tenant` and `rooms` choose which).
//!
//! - A connection entering a scope (its tenant at `connected`, a room at `joined`) gets a `presence`
//!   snapshot: the users the scope's members were last told about. Then every member gets
//!   `presence_diff` batches, at most one per scope per `flush_interval` (250 ms), each with the net
//!   changes since the last one, so snapshot + diffs applied in order give every member the same
//!   picture, which is the truth as of the last batch. A client may ask again (`presence` frame).
//! - A user **joins** with its first connection in the scope and **leaves** only after its last one
//!   closed *and* `grace` (5 s) passed without a new one: a reconnect, a dropped network or a deploy
//!   within the grace is invisible. A user who comes and goes within one batch is never announced.
//! - `Principal::meta(PresenceMeta::new(&json!({"name": "Alice"}))?)` attaches what members see
//!   beside the id (a JSON object of at most 1 KiB, from what the application authenticated; shown,
//!   never used for routing; the latest connection's wins).
//! - Bounded: a scope above `max_members` (1,000) users stops sending diffs. Its members get a
//!   `presence` frame with `members: null` and the count (counted as the limit
//!   `presence_scope_size`, audited); they can still ask for the count. Below nine tenths of the limit
//!   everyone gets a full snapshot and diffs resume. Diffs cost one frame per member per batch, so a
//!   reconnect storm of N users in a scope of M members costs M frames per 250 ms, not N × M.
//! - The application reads a scope with `hub.presence(&tenant, &PresenceScope::Room(room))`:
//!   count, users (with their connection counts and metadata), and whether it is over the limit.
//!   Nothing about presence is audited but the size limit and a request for a room the connection
//!   is not in (like reading a foreign stream).
//! - Counters: `presence_snapshots_sent`, `presence_diffs_sent`, gauge `presence_scopes`.
//!
//! **In cluster mode** presence is cluster-wide ("Cluster mode" below has the bus operations):
//!
//! - Each node keeps, per scope, its own set on the bus: the users it holds there (a connection, or
//!   a grace running), with their metadata, expiring `ClusterConfig::presence_ttl` (15 s) after its
//!   last write. Its changes go out once per flush (at most 256 users per write), each write
//!   publishing an unsequenced signal on the scope's channel with the changes and a digest of the
//!   node's whole set; every third of the ttl the node refreshes each of its sets
//!   (`PresenceRefresh`, one script per scope on Redis), the scopes spread over the period in 32
//!   slices so that the refresh never reaches the engine as one burst.
//! - A node with connections in a scope keeps a view of the other nodes' sets there: it reads the
//!   scope from the bus when the scope gets its first connection here (that connection's snapshot
//!   waits for the read, so it names the users of every node), then follows the signals. Each node
//!   renders the changes for its own connections, in its own batches: a user is counted per node
//!   that holds it, and a member is told a join or a leave only when the cluster-wide set changes —
//!   a user on two nodes joins once and leaves once, never once per server.
//! - Timing: a change on one node reaches the members on another within two `flush_interval`s
//!   (the writer's batch, then the reader's). A user whose last connection closed leaves everyone's
//!   presence within `grace + 2 × flush_interval`; one that reconnects to another node within the
//!   grace never leaves.
//! - **A node that dies** (or loses the bus): the others drop its set when it has sent nothing for
//!   its ttl, so its users leave within `presence_ttl + flush_interval` of its last refresh — at
//!   most `presence_ttl + flush_interval` after the death, and no sooner than two thirds of the ttl
//!   (the last refresh may be that old). A user who reconnects to another node before then never
//!   leaves. A node that comes back under the same name replaces its old set with its first write,
//!   so its old users do not come back; the bus's copy of a dead node's set expires by itself.
//! - A signal lost on the way (a driver drops what a full queue cannot take) shows at the next
//!   signal of that node — within a third of the ttl — as a digest that disagrees with the view,
//!   and the scope is read again; a lost leave is late by at most `presence_ttl`.
//! - While the bus is down a node cannot hear the others: its picture of them stays as it was
//!   (no flicker), its writes are kept for later, and when the bus is back it refreshes its sets
//!   (writing again, whole, those the bus lost or that failed: it re-announces what it holds) and
//!   reads every scope again. After an outage longer than the ttl, each node's users leave the other
//!   nodes' presence until the node is heard again.
//! - Bounded: at most `PresenceConfig::max_remote_entries` (10,000) other nodes' entries per scope
//!   (past it they are left out, the count is a lower bound, counted as the limit
//!   `presence_remote_entries`); at most 1,024 signals wait per scope while it is read (past that
//!   it is read again); a signal's claimed ttl is capped at an hour.
//! - `hub.presence(..)` is the cluster-wide picture of a scope this node has connections in
//!   (`PresentUser::nodes`: how many other nodes hold each user; `conns` counts this node's).
//! - Counters (`HubStats::bus`): `presence_signals`, `presence_mismatches`, `presence_reads`,
//!   `presence_expired` (other nodes' sets dropped for silence), `presence_rewrites`, gauge
//!   `presence_remote_entries`.
//!
//! ## Limits (defaults)
//!
//! | limit | default | on overflow |
//! |---|---|---|
//! | connections in total | 100,000 | `ConnectError::TooManyConnections` |
//! | connections per tenant | none | `ConnectError::TenantLimit` |
//! | connections per user, by tier | free 3 / early 10 / mid 15 / enterprise 25 | `ConnectError::UserLimit`, or with `EvictOldest` the oldest is closed `replaced` |
//! | `message` frames per user (shared by its connections, kept across a reconnect within retention), by tier | 30 / 100 / 200 / 500 per minute, a minute's worth back to back (a user within the rate over any 60 s is never refused) | `error` frame `rate_limited` (never a violation, never a close) |
//! | control frames per connection | 600 per minute, burst 60 | `error` frame `rate_limited` (never a violation, never a close) |
//! | inbound frame size | 64 KiB | `error` frame `frame_too_large` |
//! | rooms per connection | 128 | `RoomError::TooManyRooms` |
//! | thread subscriptions per connection | 64 | `error` frame `too_many_subscriptions` |
//! | protocol violations in a row (malformed, unknown, oversized, invalid, over a subscription limit, second `resume`; not rate overruns) | 5 (one forgiven per 12 s): the 5th closes | close `protocol_violation` |
//! | unwritten bytes per connection | 128 KiB soft / 1 MiB hard | `agent_thinking` skipped (only when the connection is behind) / close `slow_consumer` (control frames too); a replay never exceeds the hard limit: a stream whose gap does not fit is reported `recovered: false`, `too_large`, and a held backlog that does not fit closes `slow_consumer` |
//! | largest event frame | `max_unwritten_bytes` (1 MiB) | `PublishError::TooLarge { bytes, limit }` (HTTP 413 on the server's `/publish`): refused before anything is kept or delivered, nobody is closed. Large tool outputs: raise `Config::max_unwritten_bytes` (and `max_inflight_bytes` below it), and `retention.max_bytes` for such events to stay recoverable |
//! | nesting depth of event `data` | 128 (`MAX_DATA_DEPTH`, as serde_json's parser) | `PublishError::TooDeep { limit }` |
//! | recovery buffer per stream | 1,000 messages, 1 MiB, 2 min | oldest dropped; a resume across them says `recovered: false` |
//! | recovery buffers in total | 512 MiB, a hard cap | detached users retired early, then the oldest messages of all streams are shed; an event larger than the cap is delivered live but not kept |
//! | detached users | 100,000 | the one closest to retirement is retired early |
//! | idle rooms (with `room_retention`) | 100,000 | the one closest to being dropped is dropped early |
//! | breaker failures per user (abnormal closes of connections younger than 10 s, coalesced) | 5 in 60 s | `ConnectError::BreakerOpen { retry_after }` |
//! | connection lifetime, by tier (`TierQuota::max_connection_lifetime`) | none | close `max_lifetime` (4009) between 90 % and 100 % of the cap |
//! | connection labels (`Principal::labels`) | 8 pairs; keys `A-Z a-z 0-9 _ - .` up to 64 bytes; values up to 256 bytes | `LabelsError` when built (`TooMany`, `InvalidKey`, `ValueTooLong`, `Duplicate`); nothing connects with them |
//! | reconnect breakers remembered | 100,000 | the closed one closest to expiry is forgotten |
//! | presence: users per scope with diffs | 1,000 (`PresenceConfig::max_members`) | members get a count-only `presence` (limit `presence_scope_size`); diffs resume below nine tenths |
//! | cluster mode: other nodes' presence entries per scope | 10,000 (`PresenceConfig::max_remote_entries`) | left out (limit `presence_remote_entries`): the scope's count becomes a lower bound |
//!
//! Every refusal also emits `Action::Audit` and `Action::Metric` and is counted in `stats()`.
//! Configured keys (`password`, `api_key`, `token`, `secret`, `authorization`, matched ignoring
//! case) are replaced by `"[redacted]"` at any depth before a frame is built.
//!
//! **What the hub keeps in memory, and what it does not.** The hub holds no credential: it never
//! sees a token at connect (the caller authenticates and hands it a `Principal`), and a client's
//! `refresh` token only passes through, inside `Action::RefreshRequested` (whose `Debug` leaves it
//! out), for the caller to verify; the hub keeps no copy once the action is drained. Redaction
//! happens before any frame is built or buffered: an event's `data` (and a `reply`'s) is redacted
//! while it is serialized, so the one frame shared by every recipient, the recovery buffer that
//! replays it and, in cluster mode, the payload appended to the bus never hold the values of those
//! keys; the envelope's own `data` is dropped once its frame is built.
//! What the hub does keep is what it routes and shows: ids, roles, `Principal::meta` (presence, seen
//! by the scope's members) and `Principal::labels` (seen by the application and in audit events,
//! never by clients), bounded as above. Client `message` data is not redacted: it is the
//! application's input, handed over in `Action::Inbound` and not kept. The core cannot wipe memory
//! (its dependencies are serde, serde_json, thiserror, slab and hashbrown); the server's secrets are
//! wiped by the server (see the README, "Operations").
//!
//! ## Wire protocol
//!
//! JSON text frames.
//!
//! **Server → client**
//!
//! | `type` | fields | when |
//! |---|---|---|
//! | `agent_started`, `agent_thinking`, `tool_executing`, `tool_completed`, `agent_completed`, or a custom kind | `stream` (`"u"` the user's stream, `"t"` the tenant broadcast, `"r:<room>"` a room), `epoch`, `seq`, optional `thread_id`, `run_id`, and `data` (absent, never `null`, when the event has none) | an event |
//! | `connected` | `conn_id`, `tenant`, `user`, `heartbeat_ms`, `session_expires_in_ms` (or `null`), `streams`: `{ "u": {epoch, seq}, "t": {epoch, seq} }` | first frame of every connection |
//! | `refresh_required` | `expires_in_ms` | `session_grace` before the session expires |
//! | `refreshed` | `session_expires_in_ms` (or `null`) | a client `refresh` was accepted: the session was extended on the open connection |
//! | `resumed` | `recovered`, `streams`: per stream `{recovered, reason?, epoch, seq, available_from, replayed}` | after the replay that answers a `resume` |
//! | `skipped` | `count` | before the next frame, when `agent_thinking` frames (or droppable custom kinds') were skipped for backpressure |
//! | `joined` | `stream` (`"r:<room>"`), `epoch`, `seq` | the server put the connection into a room; live delivery of it starts after `seq` |
//! | `left` | `stream` | the server took the connection out of a room |
//! | `error` | `code`, `message`, and `id` when the refused frame carried a valid one (a JSON object whose `id` is a string of 1 to `max_client_id_bytes`; a frame over the size limit is not read for it) | a client frame was refused; with the `id`, a client fails that request (`message`, `history`) at once |
//! | `pong` | | answer to a client `ping` |
//! | `reply` | `id` (the client message's), and `data` (redacted like an event's; absent when `null`) or `error`: `{code, message}` | the application answered a `message` that carried an `id` (`Hub::reply`), to that connection only |
//! | `history` | `id` (the request's, if it had one), `stream`, `epoch` and `seq` (the stream's position now), `available_from` (the oldest seq still held), `more` (more messages it may see lie beyond this page: ask again with `before` the first seq, or `after` the last), optional `reason` (`epoch_mismatch`: the request's `epoch` is not the stream's, nothing returned; `log_unavailable`: cluster mode, the log could not be read, only the node's buffer answered; `too_large`: the next message does not fit in what the connection may still be handed), `messages`: the event frames exactly as delivered live, oldest first | answers a `history` request. Bounded by `limit` and by `max_unwritten_bytes` less what the connection has unwritten. A single node answers from the recovery buffer (`retention`); in cluster mode the buffer is a cache in front of the Redis log, which is read when the buffer does not reach the page's window (the `fetch_limit` seqs before the page's end, or after `after`); one request per connection may wait for the log (`error` `history_busy` otherwise) |
//! | `resync` | `stream`, `epoch`, `seq`, `recovered` (`false`), `reason` (`gap_too_old`, `epoch_changed`) | cluster mode: messages of the stream up to `(epoch, seq)` may be missing (the log no longer holds them, or the stream started over); take `(epoch, seq)` as the stream's position and refetch its state |
//! | `presence` | `scope` (`"t"` the tenant, `"r:<room>"` a room), `count` (users present), `members`: `[{user, conns, meta?}]` as last announced (`conns`: the user's connections on the node that sent the frame), or `null` when the scope is over `PresenceConfig::max_members` | presence on: when the connection enters a scope (after `connected` / `joined`), when asked, and to every member when the scope crosses its size limit |
//! | `presence_diff` | `scope`, `joins`: `[{user, meta?}]`, `leaves`: `[user]` | presence on: at most once per `flush_interval` (250 ms) per scope, the net changes since the last batch (a user joins with its first connection in the scope and leaves after its last one closed and `grace`, 5 s, passed without a new one) |
//!
//! Example: `{"type":"agent_started","stream":"u","epoch":77,"seq":42,"thread_id":"t1","run_id":"r9","data":{"agent":"researcher"}}`
//!
//! `seq` grows by one per message of a stream; a connection narrowed to threads or runs sees gaps
//! where other threads' and runs' messages were (and so does a connection left out of a publish
//! with `exclude`).
//!
//! **Runs.** Events of one agent run carry its `run_id`. `Target::Run { tenant, user, run }` (and
//! `/publish` with `user` and `run` but no `thread`) reaches exactly that user's connections that
//! subscribed to the run (`{"type":"subscribe","run_id":"r9"}`) plus those not narrowed at all; a
//! connection narrowed to other threads or runs gets it only if it also watches the event's thread.
//! The same rule holds for every user-stream event that names a run (so `Target::User` with a run
//! set routes like `Target::Run`), for the replay after `resume`, and in cluster mode, where the bus
//! message carries the thread and the run. The demo agent's `reply` names the run it starts, so a
//! client can subscribe to it. `epoch` changes only when a stream is created anew.
//!
//! **Client → server**
//!
//! | `type` | fields | effect |
//! |---|---|---|
//! | `subscribe` | `thread_id`, `run_id`, or both | narrow this connection's user stream to the threads and agent runs it subscribed to: it then gets an event of its user if the event's thread or its run is one of them, or if the event has neither (user-wide notices); at most `max_thread_subscriptions` (64) threads and as many runs (`too_many_subscriptions`) |
//! | `unsubscribe` | `thread_id` and/or `run_id`, or none | drop a thread or a run; when the last one goes, or without either, the filter is gone and the connection receives all of its user's events again |
//! | `message` | optional `thread_id`, `data`, optional `id` (a string of 1 to `max_client_id_bytes`, 128) | surfaced to the application as `Action::Inbound`, stamped with the authenticated origin (ids inside `data` are never trusted); with an `id`, the application may answer with a `reply` carrying it |
//! | `ping` | | answered with a `pong` frame |
//! | `resume` | `positions`: `{ "u": {epoch, seq}, "t": {...}, "r:<room>": {...} }`, the last position seen per stream | once per connection, first (after any `subscribe`): replays exactly the missed messages the connection may see, in order, then `resumed` |
//! | `refresh` | `token`: a new token for this session | handed to the application (`Action::RefreshRequested`), which verifies it; accepted: the session ends later and the client gets `refreshed`; refused (another tenant or user, no later expiry, invalid): an `error` frame `refresh_refused`, audited (`refresh_refused`), the session unchanged |
//! | `presence` | `scope` (`"t"` or `"r:<room>"`) | a fresh `presence` snapshot of a scope the connection is in; `error` `no_presence` when presence is off there or the connection is not in that room |
//! | `history` | `stream` (`"u"`, `"t"`, `"r:<room>"`), optional `limit` (1 to `max_history_messages`, 100, the default), `before` or `after` (a seq), `epoch`, `thread_id`, `run_id`, `id` | the last `limit` messages of a stream the connection has that it may see (or those before `before`, or the first after `after`), filtered exactly as live delivery is (its user, thread and run filter, role, `exclude`), and only those of `thread_id` / `run_id` when given; answered by one `history` frame. Another user's stream cannot be named (`u` is always the asker's); a room it is not in: `error` `unknown_stream`, audited (`foreign_stream`), not a violation |
//!
//! A malformed frame, an unknown or missing `type`, an invalid field, a frame over the size limit or
//! over a rate gets an `error` frame (`malformed`, `unknown_type`, `missing_type`, `invalid_field`,
//! `frame_too_large`, `rate_limited`, `too_many_subscriptions`, `already_resumed`, `no_presence`,
//! `refresh_refused`, `unknown_stream`, `history_busy`) and a typed `Err`
//! to the caller.
//!
//! **Close codes**
//!
//! | code | reason | reconnect? |
//! |---|---|---|
//! | 4000 | `heartbeat_timeout` | yes |
//! | 4001 | `session_expired` | yes, after re-authenticating |
//! | 4002 | `replaced` | no |
//! | 4003 | `slow_consumer` | yes, and resume |
//! | 4004 | `protocol_violation` | no |
//! | 4005 | `kicked` | no |
//! | 4006 | `server_shutdown` | yes |
//! | 4007 | `unavailable` (cluster mode: the bus could not set the connection up) | yes, after a backoff |
//! | 4008 | `user_limit` (cluster mode: the user holds its quota on other nodes) | no |
//! | 4009 | `max_lifetime` (the tier's `max_connection_lifetime` passed) | yes, at once, and resume |
//!
//! ## Cluster mode
//!
//! One hub is one process. Set `Config::cluster` (`ClusterConfig::new(node_id)`) and the hub becomes
//! one **node** of several that share a **bus** — an engine with a per-stream log and live channels:
//! Redis in production (the server's `bus::redis` driver), the test kit's `ModelBus` in the tests.
//! Without it nothing changes: a single node needs no bus.
//!
//! **What the driver does.** Besides the single-node actions, drain and perform:
//!
//! | action | the driver does | and feeds back |
//! |---|---|---|
//! | `Action::Bus(BusOp::Subscribe { op, stream })` | subscribe to the stream's channel, then read its top | `bus_reply(now, op, Ok(BusReply::Subscribed { top }))` (`top` is `(0, 0)` for a stream with no epoch) |
//! | `Action::Bus(BusOp::Unsubscribe { stream })` | unsubscribe | — |
//! | `Action::Bus(BusOp::Append { op, stream, payload, idempotency_key, keep, ttl })` | atomically: set an epoch if absent, `seq + 1`, append, trim to `keep`, expire after `ttl`, remember the key, publish on the channel | `Ok(Appended { pos })`, or `Ok(Duplicate { pos })` for a key seen before |
//! | `Action::Bus(BusOp::Fetch { op, stream, after, limit })` | atomically: the top and the entries after `after` | `Ok(Fetched { top, entries })` |
//! | `Action::Bus(BusOp::Tops { op, streams })` | read many tops | `Ok(Tops(..))`, in order |
//! | `Action::Bus(BusOp::Rotate { op, stream, epoch })` | a new epoch (seq 0) if it is still `epoch` | `Ok(Rotated { top })` |
//! | `Action::Bus(BusOp::Lease { op, user, holder, limit, ttl, evict_oldest })` | atomically in the user's lease set: drop expired, then grant, evict the oldest, or refuse | `Ok(Leased { granted, evicted })` |
//! | `Action::Bus(BusOp::Renew { op, leases, ttl })` / `Release { user, holder }` | extend; a lease the set lost (expired, or the engine restarted empty) is added back only while the user's set has room / drop a lease | `Ok(Renewed { refused })` (those connections close 4008) / — |
//! | `Action::Bus(BusOp::Signal { stream, payload })` | publish on the channel, unlogged | — |
//! | `Action::Bus(BusOp::PresenceUpdate { op, scope, node, replace, joins, leaves, ttl, signal })` | atomically: write the node's set in the scope (replace it, or remove `leaves` and add `joins`), let it live `ttl` (an empty set is gone), publish `signal` on the scope's channel | `Ok(PresenceWritten)` |
//! | `Action::Bus(BusOp::PresenceRefresh { op, node, ttl, scopes })` | for each scope: if the node's set exists, extend it and publish the scope's signal | `Ok(PresenceRefreshed { missing })` (the scopes whose set was gone) |
//! | `Action::Bus(BusOp::PresenceRead { op, scope, limit })` | every node's live set in the scope with the time it has left, at most `limit` users | `Ok(Presence { held, truncated })` |
//! | `Action::Published { op, outcome }` | answer the publisher (`Appended`, `Duplicate`, `Failed`) | — |
//!
//! Every live message on a subscribed channel goes to `hub.bus_message(now, &stream, pos, &payload)`
//! and every signal to `hub.bus_signal(now, &stream, &payload)`. A failed operation is
//! `bus_reply(now, op, Err(BusFailure::Retryable))` (or `Refused`). When the connection to the bus
//! is lost call `hub.bus_down(now)`; when it is back and the subscriptions are restored,
//! `hub.bus_up(now)`. Deadlines are the hub's: keep calling `tick` at `poll_timeout`. Payloads are
//! opaque text; store and forward them byte for byte. The crate docs show the whole loop over a toy
//! engine, compiled.
//!
//! **What a node guarantees.**
//! - Positions come from the engine, never from a node: a publish returns at once with
//!   `Published::op`, and every node — the publishing one too — delivers the message when it comes
//!   back on the channel, as the same bytes a single node would have sent.
//! - A message is checked against the stream it arrived on before anything else (tenant, user or
//!   room, and the stream named inside the frame): a mismatch is dropped and audited
//!   (`bus_mismatch`), so a driver bug cannot leak one tenant's event to another.
//! - Per stream, a node delivers seqs in order, once: a duplicate is dropped; a gap holds what comes
//!   after it (at most `max_held_per_stream`) while the log fills it; what the log no longer holds
//!   becomes a `resync` frame for the stream's connections — never a silent hole. A lost *last*
//!   message is found by the top check (every `top_check_interval`, ±50 % jitter).
//! - `connected` and `joined` wait until the node knows the streams' true positions (and the
//!   connection's lease is granted), so the positions they report are the log's.
//! - `resume` works on any node: what the local buffer (now a cache in front of the log) lacks is
//!   fetched from the log after the client's position, merged, deduplicated and replayed in order,
//!   then `resumed`. A client whose node died reconnects anywhere and recovers exactly.
//! - The per-user connection quota of each tier holds **across the cluster**: each connection takes
//!   a lease (granted, refused → close 4008 `user_limit`, or granted by evicting the user's oldest
//!   connection, which its node closes with `replaced` — told through the user's channel when it is
//!   elsewhere). Each lease is renewed every third of `lease_ttl` (30 s) — the users spread over
//!   that period in 32 slices, since one burst of renewal scripts delays every node's publishes
//!   behind it — all at once when the bus is back, and released on close; a lease the engine lost is added back only if the user's set has room,
//!   so after an engine restart a connection may be closed (4008) rather than the quota exceeded. Rate
//!   buckets, the reconnect breaker and the hub-wide and tenant connection limits stay per node.
//! - `Target::Connection` is node-local: a connection id names a connection of its own node only
//!   (another node answers `ConnError` — or, if it happens to have a connection with the same id,
//!   that one: never pass ids between nodes; address users, threads, rooms or tenants instead).
//!   `Target::Everyone` is refused (`PublishError::EveryoneInCluster`): publish per tenant.
//! - `Envelope::idempotency_key` makes a retried publish safe: the engine appends a key it saw on
//!   the stream within `retention.max_age` only once and answers `Duplicate` (a single node keeps
//!   its own memory of keys instead: `Published::duplicate`, at most `max_idempotency_keys`).
//!
//! **Failures.**
//!
//! | what happens | what the node does |
//! |---|---|
//! | the bus is unreachable (`bus_down`) | publishes fail fast (`PublishError::Bus(BusFailure::Down)`); open connections stay open; new connections are refused (`ConnectError::Unavailable`: no lease can be taken); operations in flight fail (a publish reports `Failed`, a connection waiting for its setup closes 4007 `unavailable`); a `resume` that needs the log waits up to `resume_wait` (5 s), then answers `recovered: false` for those streams |
//! | the bus is back (`bus_up`) | a new generation of operation ids (late replies from before are ignored); the top of every stream the node holds is read and gaps are fetched; interrupted subscriptions are made again; waiting resumes fetch |
//! | an operation gets no reply within `op_timeout` (3 s) | it fails as retryable; a reply that comes later is ignored and counted (`bus.late_replies`) |
//! | a stream's last local holder leaves and a new one comes while its subscription is still unanswered | the node subscribes anew, and only the new subscription's answer sets the stream's position: the old one's (which may predate messages delivered since) is ignored and counted (`bus.late_replies`) |
//! | a repair (the fetch filling a gap) is answered after its stream started over (a new epoch arrived, or the stream was dropped and followed anew) | only the stream's current repair settles: the earlier answer describes a log the stream has left (taking it would move the stream back to the old epoch and send its seqs again), so it is ignored and counted (`bus.late_replies`) |
//! | a live message is lost | the next one shows the gap and the log fills it (`bus.gaps_repaired`); a lost last one is found by the top check |
//! | the log no longer covers a gap | `resync` (`gap_too_old`) to the stream's connections, then delivery goes on (`bus.gaps_lost`) |
//! | the engine restarted empty, or a stream expired | the next message or top check shows another epoch: the stream starts over, `resync` (`epoch_changed`) |
//! | a failover lost the tail of a log (its top, as a repair or top check read it, went below what had been delivered before that read, same epoch) | the stream is rotated to a new epoch so that no position is handed out twice; `resync` (`epoch_changed`) |
//! | a failover lost a rotation (a top check, a repair, or the read a message of the left epoch starts finds the log back in the epoch the stream left, with that epoch's log) | the stream goes back to that epoch from where it was there: `resync` (`epoch_changed`) at that position, and only what the log holds past it is delivered, so nothing of that epoch is sent twice; if the log is below that position (the failover lost some of it too), the stream is rotated as above. A node with nobody left in the room forgets its stream, so each connection remembers what it was sent in the rooms it left, for the room's last two epochs: a re-join into an epoch whose log is below that rotates too |
//! | a repair or top check is answered after seqs appended later arrived live (replies and live messages travel apart) | no sign of a lost tail: only what was delivered before the log was read is compared with its top, so a late answer never rotates a healthy stream |
//! | a top check or rotation is answered after its stream moved to another epoch (the new epoch's messages came first) | the answer is not applied: taking it would move the stream back to the epoch it left, or start the new one over and send its seqs again |
//! | a message of the epoch a stream left arrives after whatever moved it on (a rotation's answer, a newer epoch's messages) | dropped and counted (`bus.duplicates_dropped`): epochs are never reused, so it is late, not the start of another epoch; taking it would move the stream back. If its seq is past what the stream delivered of that epoch, the log is read at once (one read per stream at a time): a failover may have lost the newer epoch (see the lost rotation above) |
//! | a node dies | its clients reconnect to other nodes and `resume` there from the log; its leases expire within `lease_ttl` (until then they count against the users' quotas); its users leave the others' presence within `presence_ttl + flush_interval` unless they reconnected elsewhere first |
//! | a message names another stream, or is malformed | dropped, audited `bus_mismatch`, counted (`bus.mismatches`) |
//!
//! **Limits and what is bounded.** Operations in flight: `max_inflight_ops` (10,000; past it a
//! publish fails with `BusFailure::Overloaded`, a subscription or lease closes the waiting connection
//! 4007). Messages held behind one gap: `max_held_per_stream` (1,000; past it the gap is given up with
//! a `resync`). Entries per fetch: `fetch_limit` (1,000). The lease slack: while a node cannot renew
//! (its link is down for longer than `lease_ttl`), its connections' leases expire and other nodes may
//! admit that many more connections of those users until it renews again.
//!
//! **Counters.** `HubStats::bus` (operations, failures, timeouts, late replies, untracked messages,
//! duplicates dropped, gaps repaired and lost, mismatches, epochs changed, in flight, streams,
//! presence signals, mismatches, reads, expired sets, rewrites and other nodes' entries),
//! `HubStats::resyncs_sent`, `publishes_failed`, `connects_refused_unavailable`, and the close
//! counters `unavailable` and `user_limit`.
