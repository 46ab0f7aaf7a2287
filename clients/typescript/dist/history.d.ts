import type { EventFrame, HistoryFrame, StreamName } from "./frames.js";
/**
 * Whose history: a stream (`"u"` the user's, `"t"` the tenant broadcast, `"r:<room>"`), or one
 * thread's or one agent run's events (of the user's stream unless `stream` says otherwise).
 */
export type HistoryTarget = StreamName | {
    thread: string;
    run?: string;
    stream?: StreamName;
} | {
    run: string;
    thread?: string;
    stream?: StreamName;
};
/** Which page of a stream's history to ask for. */
export interface HistoryOptions {
    /** At most this many messages, 1 to the server's `max_history_messages` (default 100). */
    limit?: number;
    /** The last `limit` messages before this seq (the next older page: the first seq you have). */
    before?: number;
    /** The first `limit` messages after this seq (catching up from a position). */
    after?: number;
    /** The epoch the seqs above belong to: another epoch answers nothing, `reason: "epoch_mismatch"`. */
    epoch?: number;
    /** How long to wait for the answer, in ms; default the client's `replyTimeoutMs`. */
    timeoutMs?: number;
}
/** A page of a stream's history: its position now and events as they were delivered live. */
export interface HistoryPage {
    stream: StreamName;
    /** The stream's epoch and last seq now. */
    epoch: number;
    seq: number;
    /** The oldest seq the server still holds. */
    available_from: number;
    /** More events lie beyond this page: ask again with `before` the first seq (or `after` the last). */
    more: boolean;
    /** Why the page holds less than asked, when it is not the end of the stream. */
    reason?: HistoryFrame["reason"];
    /** Oldest first, shaped like live events (`replayed: false`); not deduplicated against them. */
    events: EventFrame[];
}
/**
 * A history request that got no page: refused by the server (`unknown_stream`: not a stream this
 * connection has; `history_busy`; `invalid_field`: e.g. a `limit` over the server's maximum;
 * `rate_limited`), refused here before sending (`invalid_field`), or unanswered (`timeout`).
 */
export declare class HistoryError extends Error {
    readonly code: string;
    name: string;
    constructor(code: string, message: string);
}
/** Error codes that only a `history` request gets: such an error answers the one in flight. */
export declare const HISTORY_REFUSALS: ReadonlySet<string>;
/** The `history` frame for a request; throws [`HistoryError`] `invalid_field` for bad input. */
export declare function historyRequest(target: HistoryTarget, opts: HistoryOptions, id: string): Record<string, unknown>;
/** The page a `history` frame carries, its messages shaped like live events. */
export declare function historyPage(f: HistoryFrame): HistoryPage;
