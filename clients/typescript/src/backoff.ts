// Reconnect delays: full-jitter exponential backoff. Each delay is drawn uniformly from
// [0, min(maxMs, baseMs * 2^attempt)], so that clients dropped together (a deploy, a network
// blip) spread their reconnects over the whole window instead of arriving in waves.

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
export const DEFAULT_BACKOFF: Required<BackoffOptions> = {
  baseMs: 500,
  maxMs: 30_000,
  stableAfterMs: 10_000,
};

/** The upper bound of the window for attempt `attempt` (0-based). */
export function backoffCeiling(attempt: number, opts: BackoffOptions = {}): number {
  const { baseMs, maxMs } = { ...DEFAULT_BACKOFF, ...opts };
  // 2^attempt overflows to Infinity long after it passed maxMs; min() keeps it finite.
  return Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 62));
}

/** A full-jitter delay for attempt `attempt`; `random` returns values in [0, 1). */
export function backoffDelay(
  attempt: number,
  opts: BackoffOptions = {},
  random: () => number = Math.random,
): number {
  return Math.floor(random() * backoffCeiling(attempt, opts));
}
