// The wire protocol's server → client frames (README, "Wire protocol"), as TypeScript types and a
// decoder that checks the fields the client relies on. `test/server-frames.generated.ts`, written
// by the Rust test `tests/client_fixtures.rs` from the real hub, type-checks one sample of every
// frame type against these types, so the two sides cannot drift apart silently.

/** A stream's position: its epoch and the last seq seen. */
export interface Position {
  epoch: number;
  seq: number;
}

/** `"u"` the user's stream, `"t"` the tenant broadcast, `"r:<room>"` a room. */
export type StreamName = string;

/** The five agent event kinds; any other event `type` is an application's custom kind. */
export type AgentKind =
  | "agent_started"
  | "agent_thinking"
  | "tool_executing"
  | "tool_completed"
  | "agent_completed";

/** An event as it travels: `type` is its kind (an agent kind or a custom one). */
export interface WireEvent {
  type: string;
  stream: StreamName;
  epoch: number;
  seq: number;
  thread_id?: string;
  run_id?: string;
  /** Absent, never `null`, when the event carries none. */
  data?: unknown;
}

export interface ConnectedFrame {
  type: "connected";
  conn_id: string;
  tenant: string;
  user: string;
  heartbeat_ms: number;
  session_expires_in_ms: number | null;
  streams: Record<StreamName, Position>;
}
export interface RefreshRequiredFrame {
  type: "refresh_required";
  expires_in_ms: number;
}
export interface RefreshedFrame {
  type: "refreshed";
  session_expires_in_ms: number | null;
}
/** Why a stream could not be resumed exactly (README, "Resume protocol"). */
export type ResumeReason =
  | "epoch_mismatch"
  | "gap_too_old"
  | "future_seq"
  | "live_ahead"
  | "too_large"
  | "unknown_stream"
  | (string & {});
export interface StreamReport {
  recovered: boolean;
  reason?: ResumeReason;
  epoch: number;
  seq: number;
  available_from: number;
  replayed: number;
}
export interface ResumedFrame {
  type: "resumed";
  recovered: boolean;
  streams: Record<StreamName, StreamReport>;
}
export interface SkippedFrame {
  type: "skipped";
  count: number;
}
export interface JoinedFrame {
  type: "joined";
  stream: StreamName;
  epoch: number;
  seq: number;
}
export interface LeftFrame {
  type: "left";
  stream: StreamName;
}
export interface ErrorFrame {
  type: "error";
  code: string;
  message: string;
  /** The refused frame's `id` (a `request`'s or a `history` request's), when it had one. */
  id?: string;
}
export interface PongFrame {
  type: "pong";
}
export interface ReplyFrame {
  type: "reply";
  id: string;
  data?: unknown;
  error?: { code: string; message: string };
}
/** The answer to a `history` request: the stream's position now and a page of its events as they
 * were delivered live, oldest first. */
export interface HistoryFrame {
  type: "history";
  id?: string;
  stream: StreamName;
  epoch: number;
  seq: number;
  available_from: number;
  more: boolean;
  reason?: "epoch_mismatch" | "log_unavailable" | "too_large" | (string & {});
  messages: WireEvent[];
}
export interface ResyncFrame {
  type: "resync";
  stream: StreamName;
  epoch: number;
  seq: number;
  recovered: false;
  reason: string;
}
export interface PresenceMember {
  user: string;
  conns: number;
  meta?: Record<string, unknown>;
}
export interface PresenceFrame {
  type: "presence";
  scope: string;
  count: number;
  members: PresenceMember[] | null;
}
export interface PresenceDiffFrame {
  type: "presence_diff";
  scope: string;
  joins: { user: string; meta?: Record<string, unknown> }[];
  leaves: string[];
}

/** Every control frame the server sends. New frame types (history, runs) are added here. */
export type ControlFrame =
  | ConnectedFrame
  | RefreshRequiredFrame
  | RefreshedFrame
  | ResumedFrame
  | SkippedFrame
  | JoinedFrame
  | LeftFrame
  | ErrorFrame
  | PongFrame
  | ReplyFrame
  | ResyncFrame
  | HistoryFrame
  | PresenceFrame
  | PresenceDiffFrame;

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
] as const;

// Compile-time: the list names every control frame type and nothing else.
type ListedType = (typeof CONTROL_TYPES)[number];
const _everyTypeListed: Record<ControlFrame["type"], true> = Object.fromEntries(
  CONTROL_TYPES.map((t) => [t, true]),
) as Record<ListedType, true>;
void _everyTypeListed;

/** The wire shape of a frame of type `T`: its control frame, or an event for any other type. */
export type WireFrameOf<T extends string> = T extends ControlFrame["type"]
  ? Extract<ControlFrame, { type: T }>
  : WireEvent;

/** Any frame as it travels. */
export type ServerWireFrame = ControlFrame | WireEvent;

/** An event as the client hands it out: `type: "event"`, the wire's type as `kind`. */
export interface EventFrame extends Omit<WireEvent, "type"> {
  type: "event";
  kind: AgentKind | (string & {});
  /** Whether it came in the replay after a `resume`. */
  replayed: boolean;
}

/** Every frame the client hands out: a discriminated union on `type`. */
export type ServerFrame = ControlFrame | EventFrame;

/** A frame the client could not read. */
export class FrameError extends Error {
  override name = "FrameError";
}

const isObj = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);
const num = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);
const str = (v: unknown): v is string => typeof v === "string";
const isPos = (v: unknown): v is Position => isObj(v) && num(v.epoch) && num(v.seq);

/** The fields each control frame must have, and their checks. */
const REQUIRED: Record<ControlFrame["type"], Record<string, (v: unknown) => boolean>> = {
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
    streams: (v) =>
      isObj(v) && Object.values(v).every((r) => isPos(r) && typeof (r as { recovered?: unknown }).recovered === "boolean"),
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
export function decodeFrame(text: string, replayed = false): ServerFrame {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new FrameError("not JSON");
  }
  if (!isObj(v) || !str(v.type)) throw new FrameError("no type");
  const checks = (REQUIRED as Record<string, Record<string, (v: unknown) => boolean>>)[v.type];
  if (checks) {
    for (const [field, ok] of Object.entries(checks)) {
      if (!ok(v[field])) throw new FrameError(`${v.type}: bad or missing ${field}`);
    }
    return v as unknown as ControlFrame;
  }
  if (!str(v.stream) || !num(v.epoch) || !num(v.seq)) {
    throw new FrameError(`${v.type}: not a known frame, and not an event`);
  }
  const { type, ...rest } = v;
  return { ...(rest as Omit<WireEvent, "type">), type: "event", kind: type, replayed };
}
