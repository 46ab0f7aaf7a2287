// History requests (README, "Wire protocol": the client's `history` frame and the server's
// answer): what may be asked, checked before it is sent, and the answer as events shaped like
// live ones. The client (client.ts) sends one request at a time and correlates the answer by id.

import type { EventFrame, HistoryFrame, StreamName } from "./frames.js";

/**
 * Whose history: a stream (`"u"` the user's, `"t"` the tenant broadcast, `"r:<room>"`), or one
 * thread's or one agent run's events (of the user's stream unless `stream` says otherwise).
 */
export type HistoryTarget =
  | StreamName
  | { thread: string; run?: string; stream?: StreamName }
  | { run: string; thread?: string; stream?: StreamName };

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
export class HistoryError extends Error {
  override name = "HistoryError";
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** Error codes that only a `history` request gets: such an error answers the one in flight. */
export const HISTORY_REFUSALS: ReadonlySet<string> = new Set(["unknown_stream", "history_busy"]);

const seqOk = (v: unknown) => v === undefined || (Number.isSafeInteger(v) && (v as number) >= 0);
const idOk = (v: unknown) => v === undefined || (typeof v === "string" && v.length > 0);

/** The `history` frame for a request; throws [`HistoryError`] `invalid_field` for bad input. */
export function historyRequest(target: HistoryTarget, opts: HistoryOptions, id: string): Record<string, unknown> {
  const t = typeof target === "string" ? { stream: target } : target;
  const { limit, before, after, epoch } = opts;
  const bad = (field: string, why: string) => new HistoryError("invalid_field", `history: ${field} ${why}`);
  if (typeof t !== "object" || t === null) throw bad("target", "must be a stream name or {thread} / {run}");
  const stream = t.stream ?? "u";
  if (typeof stream !== "string" || !stream) throw bad("stream", "must be a stream name");
  const { thread, run } = t as { thread?: string; run?: string };
  if (!idOk(thread)) throw bad("thread", "must be a non-empty string");
  if (!idOk(run)) throw bad("run", "must be a non-empty string");
  if (limit !== undefined && !(Number.isSafeInteger(limit) && limit >= 1)) throw bad("limit", "must be 1 or more");
  if (!seqOk(before)) throw bad("before", "must be a seq");
  if (!seqOk(after)) throw bad("after", "must be a seq");
  if (!seqOk(epoch)) throw bad("epoch", "must be an epoch");
  if (before !== undefined && after !== undefined) throw bad("after", "cannot go with before");
  return { type: "history", id, stream, limit, before, after, epoch, thread_id: thread, run_id: run };
}

/** The page a `history` frame carries, its messages shaped like live events. */
export function historyPage(f: HistoryFrame): HistoryPage {
  const events = f.messages.map(({ type, ...rest }): EventFrame => ({ ...rest, type: "event", kind: type, replayed: false }));
  const page: HistoryPage = {
    stream: f.stream,
    epoch: f.epoch,
    seq: f.seq,
    available_from: f.available_from,
    more: f.more,
    events,
  };
  if (f.reason !== undefined) page.reason = f.reason;
  return page;
}
