// The wire protocol's server → client frames (README, "Wire protocol"), as TypeScript types and a
// decoder that checks the fields the client relies on. `test/server-frames.generated.ts`, written
// by the Rust test `tests/client_fixtures.rs` from the real hub, type-checks one sample of every
// frame type against these types, so the two sides cannot drift apart silently.
/** The control frame types, at run time (checked against [`ControlFrame`] below). */
export const CONTROL_TYPES = [
    "connected",
    "refresh_required",
    "refreshed",
    "resumed",
    "skipped",
    "joined",
    "left",
    "error",
    "pong",
    "reply",
    "history",
    "resync",
    "presence",
    "presence_diff",
];
const _everyTypeListed = Object.fromEntries(CONTROL_TYPES.map((t) => [t, true]));
void _everyTypeListed;
/** A frame the client could not read. */
export class FrameError extends Error {
    name = "FrameError";
}
const isObj = (v) => typeof v === "object" && v !== null && !Array.isArray(v);
const num = (v) => typeof v === "number" && Number.isFinite(v);
const str = (v) => typeof v === "string";
const isPos = (v) => isObj(v) && num(v.epoch) && num(v.seq);
/** The fields each control frame must have, and their checks. */
const REQUIRED = {
    connected: {
        conn_id: str,
        tenant: str,
        user: str,
        heartbeat_ms: num,
        session_expires_in_ms: (v) => v === null || num(v),
        streams: (v) => isObj(v) && Object.values(v).every(isPos),
    },
    refresh_required: { expires_in_ms: num },
    refreshed: { session_expires_in_ms: (v) => v === null || num(v) },
    resumed: {
        recovered: (v) => typeof v === "boolean",
        streams: (v) => isObj(v) && Object.values(v).every((r) => isPos(r) && typeof r.recovered === "boolean"),
    },
    skipped: { count: num },
    joined: { stream: str, epoch: num, seq: num },
    left: { stream: str },
    error: { code: str, message: str, id: (v) => v === undefined || str(v) },
    pong: {},
    reply: { id: str },
    history: {
        stream: str,
        epoch: num,
        seq: num,
        available_from: num,
        more: (v) => typeof v === "boolean",
        messages: (v) => Array.isArray(v) && v.every((m) => isObj(m) && str(m.type) && num(m.seq)),
    },
    resync: { stream: str, epoch: num, seq: num, reason: str },
    presence: {
        scope: str,
        count: num,
        members: (v) => v === null || (Array.isArray(v) && v.every((m) => isObj(m) && str(m.user))),
    },
    presence_diff: {
        scope: str,
        joins: (v) => Array.isArray(v) && v.every((j) => isObj(j) && str(j.user)),
        leaves: (v) => Array.isArray(v) && v.every(str),
    },
};
/**
 * Reads one text frame. Throws [`FrameError`] for anything that is not a frame of the protocol
 * (not JSON, no `type`, a control frame missing a field, an event without its position). A
 * control type this client does not know yet (a newer server) is also an error, so that it is
 * seen rather than mistaken for an event.
 */
export function decodeFrame(text, replayed = false) {
    let v;
    try {
        v = JSON.parse(text);
    }
    catch {
        throw new FrameError("not JSON");
    }
    if (!isObj(v) || !str(v.type))
        throw new FrameError("no type");
    const checks = REQUIRED[v.type];
    if (checks) {
        for (const [field, ok] of Object.entries(checks)) {
            if (!ok(v[field]))
                throw new FrameError(`${v.type}: bad or missing ${field}`);
        }
        return v;
    }
    if (!str(v.stream) || !num(v.epoch) || !num(v.seq)) {
        throw new FrameError(`${v.type}: not a known frame, and not an event`);
    }
    const { type, ...rest } = v;
    return { ...rest, type: "event", kind: type, replayed };
}
