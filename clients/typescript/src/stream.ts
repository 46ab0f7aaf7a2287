// An async iterator over the client's events: a bounded queue between the client (which pushes
// as frames arrive) and a `for await` loop (which pulls). A consumer that falls more than
// `limit` events behind gets an `OverflowError` instead of the client's memory growing.

import type { EventFrame } from "./frames.js";

/** Which events an iterator wants; every given field must match. */
export interface EventFilter {
  stream?: string;
  thread?: string;
  run?: string;
  kind?: string;
}

/** A `for await` consumer fell more events behind than the iterator buffers. */
export class OverflowError extends Error {
  override name = "OverflowError";
  constructor(readonly limit: number) {
    super(`the consumer fell more than ${limit} events behind`);
  }
}

/** Whether `e` passes `f`. */
export function matches(e: EventFrame, f: EventFilter): boolean {
  return (
    (f.stream === undefined || e.stream === f.stream) &&
    (f.thread === undefined || e.thread_id === f.thread) &&
    (f.run === undefined || e.run_id === f.run) &&
    (f.kind === undefined || e.kind === f.kind)
  );
}

/** One `for await` consumer of events. */
export class EventStream implements AsyncIterableIterator<EventFrame> {
  #queue: EventFrame[] = [];
  #waiting: ((r: IteratorResult<EventFrame>) => void)[] = [];
  #failed: Error | null = null;
  #done = false;

  constructor(
    readonly filter: EventFilter,
    private readonly limit: number,
    private readonly onEnd: () => void,
  ) {}

  /** Called by the client for every accepted event. */
  push(e: EventFrame): void {
    if (this.#done || !matches(e, this.filter)) return;
    const next = this.#waiting.shift();
    if (next) return next({ value: e, done: false });
    if (this.#queue.length >= this.limit) return this.fail(new OverflowError(this.limit));
    this.#queue.push(e);
  }

  /** Ends the stream with an error (after what is queued has been read). */
  fail(err: Error): void {
    if (this.#done) return;
    this.#failed = err;
    this.#finish();
  }

  /** Ends the stream normally. */
  end(): void {
    this.#finish();
  }

  #finish(): void {
    if (this.#done) return;
    this.#done = true;
    this.onEnd();
    for (const w of this.#waiting.splice(0)) w({ value: undefined, done: true });
  }

  next(): Promise<IteratorResult<EventFrame>> {
    const e = this.#queue.shift();
    if (e) return Promise.resolve({ value: e, done: false });
    if (this.#failed) {
      const err = this.#failed;
      this.#failed = null;
      return Promise.reject(err);
    }
    if (this.#done) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  return(): Promise<IteratorResult<EventFrame>> {
    this.#queue.length = 0;
    this.#finish();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}
