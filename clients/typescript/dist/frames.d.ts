/** A stream's position: its epoch and the last seq seen. */
export interface Position {
    epoch: number;
    seq: number;
}
/** `"u"` the user's stream, `"t"` the tenant broadcast, `"r:<room>"` a room. */
export type StreamName = string;
/** The five agent event kinds; any other event `type` is an application's custom kind. */
export type AgentKind = "agent_started" | "agent_thinking" | "tool_executing" | "tool_completed" | "agent_completed";
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
export type ResumeReason = "epoch_mismatch" | "gap_too_old" | "future_seq" | "live_ahead" | "too_large" | "unknown_stream" | (string & {});
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
    error?: {
        code: string;
        message: string;
    };
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
    joins: {
        user: string;
        meta?: Record<string, unknown>;
    }[];
    leaves: string[];
}
/** Every control frame the server sends. New frame types (history, runs) are added here. */
export type ControlFrame = ConnectedFrame | RefreshRequiredFrame | RefreshedFrame | ResumedFrame | SkippedFrame | JoinedFrame | LeftFrame | ErrorFrame | PongFrame | ReplyFrame | ResyncFrame | HistoryFrame | PresenceFrame | PresenceDiffFrame;
/** The control frame types, at run time (checked against [`ControlFrame`] below). */
export declare const CONTROL_TYPES: readonly ["connected", "refresh_required", "refreshed", "resumed", "skipped", "joined", "left", "error", "pong", "reply", "history", "resync", "presence", "presence_diff"];
/** The wire shape of a frame of type `T`: its control frame, or an event for any other type. */
export type WireFrameOf<T extends string> = T extends ControlFrame["type"] ? Extract<ControlFrame, {
    type: T;
}> : WireEvent;
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
export declare class FrameError extends Error {
    name: string;
}
/**
 * Reads one text frame. Throws [`FrameError`] for anything that is not a frame of the protocol
 * (not JSON, no `type`, a control frame missing a field, an event without its position). A
 * control type this client does not know yet (a newer server) is also an error, so that it is
 * seen rather than mistaken for an event.
 */
export declare function decodeFrame(text: string, replayed?: boolean): ServerFrame;
