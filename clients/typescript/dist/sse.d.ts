import type { Position } from "./frames.js";
import type { WebSocketLike } from "./types.js";
/** Why the server refused to open the stream (the HTTP answer), for the client's handling. */
export interface Refusal {
    status: number;
    error: string;
    message: string;
    retryAfterMs: number;
}
/** Positions as the server's SSE event id: base64url of `{"<stream>":[epoch,seq],…}`. */
export declare function encodeEventId(positions: Map<string, Position>): string;
/** One SSE connection, shaped like a WebSocket for the client. */
export declare class SseSocket implements WebSocketLike {
    #private;
    readyState: number;
    onopen: ((ev: unknown) => void) | null;
    onmessage: ((ev: {
        data: unknown;
    }) => void) | null;
    onclose: ((ev: {
        code: number;
        reason: string;
    }) => void) | null;
    onerror: ((ev: unknown) => void) | null;
    /** Set when the server answered the `GET` with an error status. */
    refusal: Refusal | null;
    constructor(base: string, token: string, opts: {
        threads: Iterable<string>;
        runs?: Iterable<string>;
        lastEventId: string | null;
        fetch?: typeof fetch;
    });
    send(text: string): void;
    close(code?: number, reason?: string): void;
}
