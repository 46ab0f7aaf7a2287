// The client's option, event and state types (the Client class is in client.ts).

import type { BackoffOptions } from "./backoff.js";
import type { ConnectedFrame, ErrorFrame, EventFrame, FrameError, Position, ResumedFrame, ServerFrame } from "./frames.js";

/** Why the token provider is called. */
export type TokenReason =
  /** The first connection. */
  | "connect"
  /** The server sent `refresh_required`: the session ends soon. */
  | "refresh"
  /** The session expired (close 4001): the next connection needs a new token. */
  | "expired"
  /** The server refused the token at the handshake (401). */
  | "rejected";

/** A token, or a function that returns a fresh one (called as [`TokenReason`] says). */
export type TokenSource = string | ((reason: TokenReason) => string | Promise<string>);

/** What the client needs of `localStorage`/`sessionStorage` to keep positions across loads. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** The part of the WebSocket API the client uses (the browser's, or node's `ws` package). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** A WebSocket constructor. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** How a [`Client`] connects and behaves. */
export interface ClientOptions {
  /** The server's WebSocket endpoint, `wss://host/ws` (`https://host/ws` works too). */
  url: string;
  /**
   * `"websocket"` (the default) or `"sse"`: Server-Sent Events from `/sse` beside the same
   * endpoint, client frames by `POST` (for networks that block WebSockets). Same semantics.
   */
  transport?: "websocket" | "sse";
  /** A token, or a provider of fresh ones. */
  token: TokenSource;
  /** A WebSocket implementation; default `globalThis.WebSocket` (node 20 has none: pass `ws`). */
  WebSocket?: WebSocketConstructor;
  /** Used to ask why a handshake failed (401, 403, 429); default `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** Reconnect timing (see [`DEFAULT_BACKOFF`]). */
  backoff?: BackoffOptions;
  /** The jitter's source of randomness, in [0, 1); default `Math.random`. */
  random?: () => number;
  /** Keeps positions across page loads or process restarts (e.g. `sessionStorage`). */
  storage?: StorageLike;
  /** The storage key; default `"switchboard-positions"`. */
  storageKey?: string;
  /** How long [`Client.request`] waits for a reply by default, in ms. Default 10,000. */
  replyTimeoutMs?: number;
  /** How many events one iterator buffers for a slow `for await` loop. Default 10,000. */
  maxBuffered?: number;
  /**
   * Dead-connection detection: after `intervalMs` without a frame (default: the server's
   * `heartbeat_ms`) the client sends `ping`; with no frame `timeoutMs` later (default 10,000) it
   * gives the connection up as `heartbeat_timeout` and reconnects. A WebSocket whose network
   * vanished can otherwise look open for minutes (the server's pings are invisible to a page).
   */
  heartbeat?: { intervalMs?: number; timeoutMs?: number };
  /** Called when a stream could not be recovered: refetch its state, then go on from there. */
  onResync?: (resync: Resync) => void;
}

/** A stream whose missed messages did not all come: the application should refetch its state. */
export interface Resync {
  stream: string;
  /** The position the stream continues from. */
  position: Position;
  /** `epoch_mismatch`, `gap_too_old`, `live_ahead`, … (README, "Resume protocol"). */
  reason: string;
}

/** Where the client is. */
export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** Who is present in a scope, as the server last announced it. */
export interface PresenceState {
  scope: string;
  count: number;
  /** user → meta; `null` when the scope is too large for a list. */
  members: Map<string, Record<string, unknown> | undefined> | null;
}

/** Why the client stopped for good. */
export interface Stopped {
  /** The close code, or the handshake's HTTP status (401, 403). */
  code: number;
  /** The close reason, or the server's error code (`invalid`, `expired`, …). */
  reason: string;
  /** The server's explanation of a refused handshake, when it gave one. */
  message?: string;
}

/** What the client emits; `on(name, fn)` subscribes. */
export interface ClientEvents {
  /** Every frame, decoded (events included). */
  frame: ServerFrame;
  /** Every new event (duplicates dropped). */
  event: EventFrame;
  state: ClientState;
  connected: ConnectedFrame;
  resumed: ResumedFrame;
  resync: Resync;
  presence: PresenceState;
  /** An `error` frame: the server refused something this client sent. */
  serverError: ErrorFrame;
  /** A frame this client could not read. */
  protocolError: FrameError;
  /** A reconnect is scheduled. */
  reconnecting: { attempt: number; delayMs: number; code: number; reason: string };
  /** The client stopped for good (a close code that forbids retrying, a refused token). */
  stopped: Stopped;
}

/** Counters, for display and tests. */
export interface ClientStats {
  connects: number;
  reconnects: number;
  events: number;
  duplicates: number;
  replayed: number;
  skipped: number;
}

/** What a connection can be narrowed to: a thread, an agent run, or both. */
export interface Narrowing {
  thread?: string;
  run?: string;
}
