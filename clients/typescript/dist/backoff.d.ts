/** Reconnect timing. */
export interface BackoffOptions {
    /** The first window's upper bound, in ms. Default 500. */
    baseMs?: number;
    /** No delay is ever longer, in ms. Default 30,000. */
    maxMs?: number;
    /**
     * A connection that stayed up this long resets the attempt count, in ms. Default 10,000 (the
     * server's reconnect breaker counts shorter-lived connections as failures).
     */
    stableAfterMs?: number;
}
/** The defaults, as documented in the README. */
export declare const DEFAULT_BACKOFF: Required<BackoffOptions>;
/** The upper bound of the window for attempt `attempt` (0-based). */
export declare function backoffCeiling(attempt: number, opts?: BackoffOptions): number;
/** A full-jitter delay for attempt `attempt`; `random` returns values in [0, 1). */
export declare function backoffDelay(attempt: number, opts?: BackoffOptions, random?: () => number): number;
