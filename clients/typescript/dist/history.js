// History requests (README, "Wire protocol": the client's `history` frame and the server's
// answer): what may be asked, checked before it is sent, and the answer as events shaped like
// live ones. The client (client.ts) sends one request at a time and correlates the answer by id.
/**
 * A history request that got no page: refused by the server (`unknown_stream`: not a stream this
 * connection has; `history_busy`; `invalid_field`: e.g. a `limit` over the server's maximum;
 * `rate_limited`), refused here before sending (`invalid_field`), or unanswered (`timeout`).
 */
export class HistoryError extends Error {
    code;
    name = "HistoryError";
    constructor(code, message) {
        super(message);
        this.code = code;
    }
}
/** Error codes that only a `history` request gets: such an error answers the one in flight. */
export const HISTORY_REFUSALS = new Set(["unknown_stream", "history_busy"]);
const seqOk = (v) => v === undefined || (Number.isSafeInteger(v) && v >= 0);
const idOk = (v) => v === undefined || (typeof v === "string" && v.length > 0);
/** The `history` frame for a request; throws [`HistoryError`] `invalid_field` for bad input. */
export function historyRequest(target, opts, id) {
    const t = typeof target === "string" ? { stream: target } : target;
    const { limit, before, after, epoch } = opts;
    const bad = (field, why) => new HistoryError("invalid_field", `history: ${field} ${why}`);
    if (typeof t !== "object" || t === null)
        throw bad("target", "must be a stream name or {thread} / {run}");
    const stream = t.stream ?? "u";
    if (typeof stream !== "string" || !stream)
        throw bad("stream", "must be a stream name");
    const { thread, run } = t;
    if (!idOk(thread))
        throw bad("thread", "must be a non-empty string");
    if (!idOk(run))
        throw bad("run", "must be a non-empty string");
    if (limit !== undefined && !(Number.isSafeInteger(limit) && limit >= 1))
        throw bad("limit", "must be 1 or more");
    if (!seqOk(before))
        throw bad("before", "must be a seq");
    if (!seqOk(after))
        throw bad("after", "must be a seq");
    if (!seqOk(epoch))
        throw bad("epoch", "must be an epoch");
    if (before !== undefined && after !== undefined)
        throw bad("after", "cannot go with before");
    return { type: "history", id, stream, limit, before, after, epoch, thread_id: thread, run_id: run };
}
/** The page a `history` frame carries, its messages shaped like live events. */
export function historyPage(f) {
    const events = f.messages.map(({ type, ...rest }) => ({ ...rest, type: "event", kind: type, replayed: false }));
    const page = {
        stream: f.stream,
        epoch: f.epoch,
        seq: f.seq,
        available_from: f.available_from,
        more: f.more,
        events,
    };
    if (f.reason !== undefined)
        page.reason = f.reason;
    return page;
}
