import { type BackoffOptions } from "./backoff.js";
import { FrameError, type ConnectedFrame, type ErrorFrame, type EventFrame, type Position, type ResumedFrame, type ServerFrame } from "./frames.js";
import { EventStream, type EventFilter } from "./stream.js";
/** Why the token provider is called. */
export type TokenReason = 
/** The first connection. */
"connect"
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
    onmessage: ((ev: {
        data: unknown;
    }) => void) | null;
    onclose: ((ev: {
        code: number;
        reason: string;
    }) => void) | null;
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
    heartbeat?: {
        intervalMs?: number;
        timeoutMs?: number;
    };
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
    reconnecting: {
        attempt: number;
        delayMs: number;
        code: number;
        reason: string;
    };
    /** The client stopped for good (a close code that forbids retrying, a refused token). */
    stopped: Stopped;
}
/** A reply that carried an error, or a request that got none. */
export declare class ReplyError extends Error {
    readonly code: string;
    name: string;
    constructor(code: string, message: string);
}
/** Sending needs a live connection. */
export declare class NotConnectedError extends Error {
    name: string;
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
/** One logical connection to a switchboard server, across reconnects. */
export declare class Client {
    #private;
    /** Stream → the last position processed. */
    readonly positions: Map<string, Position>;
    /** Scope → presence, for the scopes this connection is in. */
    readonly presence: Map<string, PresenceState>;
    readonly stats: ClientStats;
    /** The current (or last) `connected` frame. */
    connection: ConnectedFrame | null;
    state: ClientState;
    constructor(opts: ClientOptions);
    /** Subscribes to one kind of client event; returns the unsubscribe function. */
    on<K extends keyof ClientEvents>(name: K, fn: (v: ClientEvents[K]) => void): () => void;
    /**
     * Connects (once; later calls wait for the same connection). Resolves when the connection is
     * live: after `resumed` on a reconnect, at once on a first connection. Rejects if the client
     * stops for good first.
     */
    connect(): Promise<void>;
    /** Closes for good: no reconnect; iterators end, outstanding requests are rejected. */
    close(): void;
    /**
     * Closes the current socket cleanly (1000) and reconnects as after any drop: for trying
     * resume by hand. A clean close does not count towards the server's reconnect breaker.
     */
    drop(): void;
    /** Forgets every stream position (for a different user, or after refetching everything). */
    resetPositions(): void;
    /** Narrows the connection to `thread` (plus thread-less user events); kept across reconnects. */
    subscribe(thread: string): void;
    /** Drops one thread, or without one every thread (the connection gets all events again). */
    unsubscribe(thread?: string): void;
    /** Every new event that passes `filter`, as an async iterator. */
    events(filter?: EventFilter): EventStream;
    /**
     * The events of one thread: subscribes to it (the server then sends only the subscribed
     * threads' events) and unsubscribes when the loop ends.
     */
    thread(thread: string): EventStream;
    /**
     * The events of one agent run. Filtered here for now; when the server offers run
     * subscriptions this also subscribes, like [`Client.thread`].
     */
    run(run: string): EventStream;
    /** Sends a client `message` (to the application). Throws if not connected. */
    send(data: unknown, opts?: {
        thread?: string;
    }): void;
    /**
     * Sends a `message` with an `id` and resolves with the application's `reply` data; rejects with
     * [`ReplyError`] for an error reply, a timeout (`code: "timeout"`) or a lost connection
     * (`code: "disconnected"`: the reply could only come on the connection that asked), and
     * with [`NotConnectedError`] when there is no live connection to ask on.
     */
    request(data: unknown, opts?: {
        thread?: string;
        timeoutMs?: number;
    }): Promise<unknown>;
    /** Asks for a fresh presence snapshot of a scope (`"t"` or `"r:<room>"`). */
    requestPresence(scope: string): void;
    /** Sends any frame (for protocol features newer than this client). Throws if not connected. */
    sendFrame(frame: Record<string, unknown>): void;
}
