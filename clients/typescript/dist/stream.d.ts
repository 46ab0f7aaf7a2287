import type { EventFrame } from "./frames.js";
/** Which events an iterator wants; every given field must match. */
export interface EventFilter {
    stream?: string;
    thread?: string;
    run?: string;
    kind?: string;
}
/** A `for await` consumer fell more events behind than the iterator buffers. */
export declare class OverflowError extends Error {
    readonly limit: number;
    name: string;
    constructor(limit: number);
}
/** Whether `e` passes `f`. */
export declare function matches(e: EventFrame, f: EventFilter): boolean;
/** One `for await` consumer of events. */
export declare class EventStream implements AsyncIterableIterator<EventFrame> {
    #private;
    readonly filter: EventFilter;
    private readonly limit;
    private readonly onEnd;
    constructor(filter: EventFilter, limit: number, onEnd: () => void);
    /** Called by the client for every accepted event. */
    push(e: EventFrame): void;
    /** Ends the stream with an error (after what is queued has been read). */
    fail(err: Error): void;
    /** Ends the stream normally. */
    end(): void;
    next(): Promise<IteratorResult<EventFrame>>;
    return(): Promise<IteratorResult<EventFrame>>;
    [Symbol.asyncIterator](): this;
}
