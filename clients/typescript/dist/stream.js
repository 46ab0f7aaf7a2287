// An async iterator over the client's events: a bounded queue between the client (which pushes
// as frames arrive) and a `for await` loop (which pulls). A consumer that falls more than
// `limit` events behind gets an `OverflowError` instead of the client's memory growing.
/** A `for await` consumer fell more events behind than the iterator buffers. */
export class OverflowError extends Error {
    limit;
    name = "OverflowError";
    constructor(limit) {
        super(`the consumer fell more than ${limit} events behind`);
        this.limit = limit;
    }
}
/** Whether `e` passes `f`. */
export function matches(e, f) {
    return ((f.stream === undefined || e.stream === f.stream) &&
        (f.thread === undefined || e.thread_id === f.thread) &&
        (f.run === undefined || e.run_id === f.run) &&
        (f.kind === undefined || e.kind === f.kind));
}
/** One `for await` consumer of events. */
export class EventStream {
    filter;
    limit;
    onEnd;
    #queue = [];
    #waiting = [];
    #failed = null;
    #done = false;
    constructor(filter, limit, onEnd) {
        this.filter = filter;
        this.limit = limit;
        this.onEnd = onEnd;
    }
    /** Called by the client for every accepted event. */
    push(e) {
        if (this.#done || !matches(e, this.filter))
            return;
        const next = this.#waiting.shift();
        if (next)
            return next({ value: e, done: false });
        if (this.#queue.length >= this.limit)
            return this.fail(new OverflowError(this.limit));
        this.#queue.push(e);
    }
    /** Ends the stream with an error (after what is queued has been read). */
    fail(err) {
        if (this.#done)
            return;
        this.#failed = err;
        this.#finish();
    }
    /** Ends the stream normally. */
    end() {
        this.#finish();
    }
    #finish() {
        if (this.#done)
            return;
        this.#done = true;
        this.onEnd();
        for (const w of this.#waiting.splice(0))
            w({ value: undefined, done: true });
    }
    next() {
        const e = this.#queue.shift();
        if (e)
            return Promise.resolve({ value: e, done: false });
        if (this.#failed) {
            const err = this.#failed;
            this.#failed = null;
            return Promise.reject(err);
        }
        if (this.#done)
            return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => this.#waiting.push(resolve));
    }
    return() {
        this.#queue.length = 0;
        this.#finish();
        return Promise.resolve({ value: undefined, done: true });
    }
    [Symbol.asyncIterator]() {
        return this;
    }
}
