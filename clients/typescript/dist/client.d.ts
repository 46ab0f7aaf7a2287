import { type ConnectedFrame, type Position } from "./frames.js";
import { type HistoryOptions, type HistoryPage, type HistoryTarget } from "./history.js";
import { EventStream, type EventFilter } from "./stream.js";
import type { ClientEvents, ClientOptions, ClientState, ClientStats, Narrowing, PresenceState } from "./types.js";
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
    /**
     * Narrows the connection to a thread (a string) or an agent run (`{ run }`), plus the user's
     * events that name neither; kept across reconnects (sent again before `resume`). Several
     * subscriptions add up: an event passes if its thread or its run is one of them.
     */
    subscribe(to: string | Narrowing): void;
    /**
     * Drops a thread (a string) or a run (`{ run }`); without an argument every subscription (the
     * connection gets all of its user's events again, as it does when the last one goes).
     */
    unsubscribe(from?: string | Narrowing): void;
    /** Every new event that passes `filter`, as an async iterator. */
    events(filter?: EventFilter): EventStream;
    /**
     * The events of one thread: subscribes to it (the server then sends only the subscribed
     * threads' and runs' events) and unsubscribes when the loop ends.
     */
    thread(thread: string): EventStream;
    /**
     * The events of one agent run: subscribes to it by `run_id` (the server then sends only the
     * subscribed runs' and threads' events, replays after a reconnect included) and unsubscribes
     * when the loop ends.
     */
    run(run: string): EventStream;
    /**
     * A page of history: the last `limit` events of a stream (`"u"` by default) that this
     * connection may see, or of one thread or run (`{ thread }`, `{ run }`), or the page `before`
     * or `after` a seq. Waits for a resume in progress; requests go one at a time. Rejects with
     * [`HistoryError`] for a refusal or a timeout, and with [`NotConnectedError`] when there is no
     * connection; a request cut off by a reconnect is asked again on the next connection.
     */
    history(target?: HistoryTarget, opts?: HistoryOptions): Promise<HistoryPage>;
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
