// The switchboard client: one logical connection that survives reconnects. It keeps the last
// position of every stream, sends `resume` first after each reconnect, drops duplicates by
// (stream, epoch, seq), reports streams that could not be recovered, backs off with full jitter
// and follows the server's close codes. See the README for the protocol it speaks.
import { backoffDelay, DEFAULT_BACKOFF } from "./backoff.js";
import { closeInfo } from "./close.js";
import { decodeFrame, } from "./frames.js";
import { HISTORY_REFUSALS, HistoryError, historyPage, historyRequest, } from "./history.js";
import { encodeEventId, SseSocket } from "./sse.js";
import { EventStream } from "./stream.js";
/**
 * Calls the application's code (a listener, `onResync`): its bug must not break the connection
 * or leave a frame half handled, so it is surfaced asynchronously instead.
 */
function guarded(call) {
    try {
        call();
    }
    catch (err) {
        queueMicrotask(() => {
            throw err;
        });
    }
}
/** A reply that carried an error, or a request that got none. */
export class ReplyError extends Error {
    code;
    name = "ReplyError";
    constructor(code, message) {
        super(message);
        this.code = code;
    }
}
/** Sending needs a live connection. */
export class NotConnectedError extends Error {
    name = "NotConnectedError";
}
const OPEN = 1;
/** One logical connection to a switchboard server, across reconnects. */
export class Client {
    /** Stream → the last position processed. */
    positions = new Map();
    /** Scope → presence, for the scopes this connection is in. */
    presence = new Map();
    stats = {
        connects: 0,
        reconnects: 0,
        events: 0,
        duplicates: 0,
        replayed: 0,
        skipped: 0,
    };
    /** The current (or last) `connected` frame. */
    connection = null;
    state = "idle";
    #opts;
    #backoff;
    #threads = new Set();
    #runs = new Set();
    #histories = [];
    /** Pings sent and pongs received on the current connection (pongs come back in order). */
    #pings = 0;
    #pongs = 0;
    #streams = new Set();
    #pending = new Map();
    #listeners = new Map();
    #ws = null;
    #token = null;
    #attempt = 0;
    #opened = false;
    #resuming = false;
    #stopped = false;
    #identity = null;
    #timer = null;
    #stable = null;
    #watchdog = null;
    #lastFrameAt = 0;
    #nextId = 0;
    #rejectedOnce = false;
    #ready = [];
    constructor(opts) {
        this.#opts = opts;
        this.#backoff = { ...DEFAULT_BACKOFF, ...opts.backoff };
        if (typeof opts.token === "string")
            this.#token = opts.token;
        this.#load();
    }
    /** Subscribes to one kind of client event; returns the unsubscribe function. */
    on(name, fn) {
        let set = this.#listeners.get(name);
        if (!set)
            this.#listeners.set(name, (set = new Set()));
        set.add(fn);
        return () => void set.delete(fn);
    }
    #emit(name, v) {
        for (const fn of this.#listeners.get(name) ?? [])
            guarded(() => fn(v));
    }
    /**
     * Connects (once; later calls wait for the same connection). Resolves when the connection is
     * live: after `resumed` on a reconnect, at once on a first connection. Rejects if the client
     * stops for good first.
     */
    connect() {
        const ready = new Promise((resolve, reject) => this.#ready.push({ resolve, reject }));
        if (this.state === "open" && !this.#resuming)
            this.#settle(null);
        else if (this.state === "idle" || this.state === "closed") {
            this.#stopped = false;
            void this.#open();
        }
        return ready;
    }
    /** Closes for good: no reconnect; iterators end, outstanding requests are rejected. */
    close() {
        this.#stopped = true;
        this.#clearTimers();
        const ws = this.#ws;
        this.#ws = null;
        if (ws) {
            ws.onclose = ws.onmessage = ws.onopen = ws.onerror = null;
            ws.close(1000, "client closed");
        }
        this.#failPending(new NotConnectedError("the client was closed"));
        this.#failHistories(new NotConnectedError("the client was closed"));
        for (const s of [...this.#streams])
            s.end();
        this.#setState("closed");
        this.#settle(new NotConnectedError("the client was closed"));
    }
    /**
     * Closes the current socket cleanly (1000) and reconnects as after any drop: for trying
     * resume by hand. A clean close does not count towards the server's reconnect breaker.
     */
    drop() {
        this.#ws?.close(1000, "dropped by the client");
    }
    /** Forgets every stream position (for a different user, or after refetching everything). */
    resetPositions() {
        this.positions.clear();
        this.#save();
    }
    /**
     * Narrows the connection to a thread (a string) or an agent run (`{ run }`), plus the user's
     * events that name neither; kept across reconnects (sent again before `resume`). Several
     * subscriptions add up: an event passes if its thread or its run is one of them.
     */
    subscribe(to) {
        const { thread, run } = typeof to === "string" ? { thread: to } : to;
        if (thread !== undefined)
            this.#threads.add(thread);
        if (run !== undefined)
            this.#runs.add(run);
        if (thread !== undefined || run !== undefined)
            this.#sendIfOpen({ type: "subscribe", thread_id: thread, run_id: run });
    }
    /**
     * Drops a thread (a string) or a run (`{ run }`); without an argument every subscription (the
     * connection gets all of its user's events again, as it does when the last one goes).
     */
    unsubscribe(from) {
        const { thread, run } = typeof from === "string" ? { thread: from } : (from ?? {});
        if (thread === undefined && run === undefined) {
            this.#threads.clear();
            this.#runs.clear();
        }
        if (thread !== undefined)
            this.#threads.delete(thread);
        if (run !== undefined)
            this.#runs.delete(run);
        this.#sendIfOpen({ type: "unsubscribe", thread_id: thread, run_id: run });
    }
    /** Every new event that passes `filter`, as an async iterator. */
    events(filter = {}) {
        const s = new EventStream(filter, this.#opts.maxBuffered ?? 10_000, () => this.#streams.delete(s));
        this.#streams.add(s);
        return s;
    }
    /**
     * The events of one thread: subscribes to it (the server then sends only the subscribed
     * threads' and runs' events) and unsubscribes when the loop ends.
     */
    thread(thread) {
        return this.#narrowed({ thread });
    }
    /**
     * The events of one agent run: subscribes to it by `run_id` (the server then sends only the
     * subscribed runs' and threads' events, replays after a reconnect included) and unsubscribes
     * when the loop ends.
     */
    run(run) {
        return this.#narrowed({ run });
    }
    #narrowed(n) {
        this.subscribe(n);
        const key = "run" in n ? "run" : "thread";
        const s = new EventStream(n, this.#opts.maxBuffered ?? 10_000, () => {
            this.#streams.delete(s);
            // Another loop over the same thread or run keeps the subscription.
            if (![...this.#streams].some((o) => o.filter[key] === n[key]))
                this.unsubscribe(n);
        });
        this.#streams.add(s);
        return s;
    }
    /**
     * A page of history: the last `limit` events of a stream (`"u"` by default) that this
     * connection may see, or of one thread or run (`{ thread }`, `{ run }`), or the page `before`
     * or `after` a seq. Waits for a resume in progress; requests go one at a time. Rejects with
     * [`HistoryError`] for a refusal or a timeout, and with [`NotConnectedError`] when there is no
     * connection; a request cut off by a reconnect is asked again on the next connection.
     */
    history(target = "u", opts = {}) {
        let frame;
        try {
            frame = historyRequest(target, opts, `h${++this.#nextId}`);
            if (this.state !== "open")
                throw new NotConnectedError("not connected");
        }
        catch (err) {
            return Promise.reject(err);
        }
        const ms = opts.timeoutMs ?? this.#opts.replyTimeoutMs ?? 10_000;
        return new Promise((resolve, reject) => {
            const timeout = () => this.#endHistory(h, new HistoryError("timeout", `no history within ${ms} ms`));
            const h = { frame, resolve, reject, timer: setTimeout(timeout, ms), sent: false, ping: 0 };
            this.#histories.push(h);
            this.#nextHistory();
        });
    }
    /** Sends a client `message` (to the application). Throws if not connected. */
    send(data, opts = {}) {
        this.#sendNow({ type: "message", thread_id: opts.thread, data });
    }
    /**
     * Sends a `message` with an `id` and resolves with the application's `reply` data; rejects with
     * [`ReplyError`] for an error reply, a timeout (`code: "timeout"`) or a lost connection
     * (`code: "disconnected"`: the reply could only come on the connection that asked), and
     * with [`NotConnectedError`] when there is no live connection to ask on.
     */
    request(data, opts = {}) {
        const id = `q${++this.#nextId}`;
        try {
            this.#sendNow({ type: "message", id, thread_id: opts.thread, data });
        }
        catch (err) {
            return Promise.reject(err);
        }
        const ms = opts.timeoutMs ?? this.#opts.replyTimeoutMs ?? 10_000;
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => {
                this.#pending.delete(id);
                reject(new ReplyError("timeout", `no reply within ${ms} ms`));
            }, ms);
            this.#pending.set(id, { resolve, reject, timer });
        });
    }
    /** Asks for a fresh presence snapshot of a scope (`"t"` or `"r:<room>"`). */
    requestPresence(scope) {
        this.#sendNow({ type: "presence", scope });
    }
    /** Sends any frame (for protocol features newer than this client). Throws if not connected. */
    sendFrame(frame) {
        this.#sendNow(frame);
    }
    // -------------------------------------------------------------------------------------------
    #setState(s) {
        if (this.state === s)
            return;
        this.state = s;
        this.#emit("state", s);
    }
    #settle(err) {
        for (const r of this.#ready.splice(0))
            err ? r.reject(err) : r.resolve();
    }
    #clearTimers() {
        if (this.#timer)
            clearTimeout(this.#timer);
        if (this.#stable)
            clearTimeout(this.#stable);
        if (this.#watchdog)
            clearTimeout(this.#watchdog);
        this.#timer = this.#stable = this.#watchdog = null;
    }
    /** Abandons a connection without waiting for a close handshake that cannot complete. */
    #giveUp(ws, token, code, reason) {
        if (this.#ws !== ws)
            return;
        ws.onclose = ws.onmessage = ws.onopen = null;
        try {
            ws.close(code === 1006 ? 1000 : code, reason);
        }
        catch {
            /* still connecting: nothing to close cleanly */
        }
        void this.#onClose(ws, token, code, reason);
    }
    /** Pings an idle connection, and gives it up when even the ping gets no answer. */
    #watch(ws, token, heartbeatMs) {
        const intervalMs = this.#opts.heartbeat?.intervalMs ?? heartbeatMs;
        const timeoutMs = this.#opts.heartbeat?.timeoutMs ?? 10_000;
        if (this.#watchdog)
            clearTimeout(this.#watchdog); // the handshake's timer
        const check = (pingedAt) => {
            if (this.#ws !== ws)
                return;
            const now = Date.now();
            if (pingedAt !== null && this.#lastFrameAt < pingedAt) {
                // No frame since the ping: the connection is dead.
                return this.#giveUp(ws, token, 4000, "heartbeat_timeout");
            }
            const idle = now - this.#lastFrameAt;
            if (idle >= intervalMs) {
                try {
                    ws.send(JSON.stringify({ type: "ping" }));
                    this.#pings += 1;
                }
                catch {
                    /* the close handler will run */
                }
                this.#watchdog = setTimeout(() => check(now), timeoutMs);
            }
            else {
                this.#watchdog = setTimeout(() => check(null), intervalMs - idle);
            }
        };
        this.#watchdog = setTimeout(() => check(null), intervalMs);
    }
    #sendNow(frame) {
        if (!this.#ws || this.#ws.readyState !== OPEN || this.state !== "open") {
            throw new NotConnectedError("not connected");
        }
        this.#ws.send(JSON.stringify(frame));
        if (frame.type === "ping")
            this.#pings += 1;
    }
    #sendIfOpen(frame) {
        if (this.#ws && this.#ws.readyState === OPEN && this.state === "open")
            this.#ws.send(JSON.stringify(frame));
    }
    async #getToken(reason) {
        const src = this.#opts.token;
        if (typeof src === "string")
            return src;
        this.#token = await src(reason);
        return this.#token;
    }
    get #sse() {
        return this.#opts.transport === "sse";
    }
    /** An SSE stream resuming from the positions held (the server sends the subscriptions and
     * `resume` itself, from the query and `Last-Event-ID`). */
    #sseSocket(token) {
        const base = new URL(".", this.#opts.url.replace(/^ws/, "http"));
        const lastEventId = this.positions.size ? encodeEventId(this.positions) : null;
        const { fetch } = this.#opts;
        return new SseSocket(base.href, token, { threads: this.#threads, runs: this.#runs, lastEventId, fetch });
    }
    #wsUrl(token) {
        const url = new URL(this.#opts.url);
        if (url.protocol === "http:")
            url.protocol = "ws:";
        if (url.protocol === "https:")
            url.protocol = "wss:";
        url.searchParams.set("token", token);
        return url.toString();
    }
    async #open() {
        this.#setState(this.stats.connects || this.stats.reconnects ? "reconnecting" : "connecting");
        let token;
        try {
            token = this.#token ?? (await this.#getToken(this.stats.connects ? "expired" : "connect"));
        }
        catch {
            // The provider failed (its backend is down?): try again later like any failed attempt.
            return this.#retry(0, "token_provider_failed");
        }
        if (this.#stopped)
            return;
        const Ctor = this.#opts.WebSocket ?? globalThis.WebSocket;
        if (!Ctor && !this.#sse)
            throw new Error("no WebSocket implementation: pass one as `WebSocket`");
        this.#opened = false;
        const ws = this.#sse ? this.#sseSocket(token) : new Ctor(this.#wsUrl(token));
        this.#ws = ws;
        // A handshake that neither completes nor fails (a black-holed network) is given up too.
        this.#watchdog = setTimeout(() => {
            this.#giveUp(ws, token, 1006, "connect_timeout"); // cleared by `connected`
        }, this.#opts.heartbeat?.timeoutMs ?? 10_000);
        ws.onopen = () => {
            this.#opened = true;
        };
        ws.onmessage = (ev) => {
            this.#lastFrameAt = Date.now();
            if (typeof ev.data === "string")
                this.#onText(ev.data);
        };
        ws.onerror = () => { }; // a close always follows
        ws.onclose = (ev) => void this.#onClose(ws, token, ev.code, ev.reason);
    }
    async #onClose(ws, token, code, reason) {
        if (this.#ws !== ws)
            return;
        this.#ws = null;
        if (this.#stable)
            clearTimeout(this.#stable);
        if (this.#watchdog)
            clearTimeout(this.#watchdog);
        this.#stable = this.#watchdog = null;
        this.#failPending(new ReplyError("disconnected", "the connection closed before the reply"));
        // History is a read: a request cut off is asked again on the next connection (within its timeout).
        for (const h of this.#histories)
            h.sent = false;
        if (this.#stopped)
            return;
        let minDelay = 0;
        if (!this.#opened) {
            // The handshake failed, and WebSocket APIs do not say why: ask the endpoint (an SSE
            // request already has the answer).
            const why = ws instanceof SseSocket ? ws.refusal : await this.#probe(token);
            if (this.#stopped)
                return;
            if (why?.status === 401) {
                // A provider may have a better token (the old one expired); ask it once.
                if (typeof this.#opts.token === "function" && !this.#rejectedOnce) {
                    this.#rejectedOnce = true;
                    const fresh = await this.#getToken("rejected").catch(() => token);
                    if (this.#stopped)
                        return;
                    if (fresh !== token)
                        return this.#retry(0, "token_rejected");
                }
                return this.#stop(401, why.error, why.message);
            }
            if (why?.status === 403)
                return this.#stop(403, why.error, why.message);
            if (why?.retryAfterMs)
                minDelay = why.retryAfterMs;
        }
        const info = closeInfo(code);
        if (info.action === "stop")
            return this.#stop(code, reason || info.reason);
        if (info.action === "reauthenticate") {
            this.#token = null;
            if (typeof this.#opts.token === "string")
                return this.#stop(code, info.reason);
        }
        this.#retry(code, info.reason, minDelay);
    }
    #retry(code, reason, minDelayMs = 0) {
        if (this.#stopped)
            return;
        const delayMs = Math.max(minDelayMs, backoffDelay(this.#attempt, this.#backoff, this.#opts.random));
        this.#attempt += 1;
        this.stats.reconnects += 1;
        this.#setState("reconnecting");
        this.#emit("reconnecting", { attempt: this.#attempt, delayMs, code, reason });
        this.#timer = setTimeout(() => {
            this.#timer = null;
            void this.#open();
        }, delayMs);
    }
    #stop(code, reason, message) {
        this.#stopped = true;
        this.#clearTimers();
        this.#failPending(new NotConnectedError(`stopped: ${reason}`));
        this.#failHistories(new NotConnectedError(`stopped: ${reason}`));
        for (const s of [...this.#streams])
            s.fail(new NotConnectedError(`stopped: ${reason}`));
        this.#setState("closed");
        this.#emit("stopped", message === undefined ? { code, reason } : { code, reason, message });
        this.#settle(new NotConnectedError(`stopped: ${reason} (${code})`));
    }
    /** Why a handshake failed: 401/403 with the server's code, or a `Retry-After`. */
    async #probe(token) {
        const f = this.#opts.fetch ?? globalThis.fetch;
        if (!f)
            return null;
        try {
            const url = new URL(this.#opts.url);
            url.protocol = url.protocol === "wss:" || url.protocol === "https:" ? "https:" : "http:";
            const res = await f(url.toString(), { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
            let error = String(res.status);
            let message = "";
            try {
                const body = (await res.json());
                if (body.error)
                    error = body.error;
                if (body.message)
                    message = body.message;
            }
            catch {
                /* not JSON */
            }
            const retry = Number(res.headers.get("retry-after"));
            return { status: res.status, error, message, retryAfterMs: Number.isFinite(retry) ? retry * 1000 : 0 };
        }
        catch {
            return null; // unreachable: keep retrying
        }
    }
    /** Sends the oldest queued history request, when none is in flight and the connection is live. */
    #nextHistory() {
        const h = this.#histories[0];
        if (!h || h.sent || this.#resuming || this.state !== "open")
            return;
        try {
            this.#sendNow(h.frame);
            this.#sendNow({ type: "ping" }); // its `pong` closes the window in which an `error` is this request's
            h.sent = true;
            h.ping = this.#pings;
        }
        catch {
            /* asked again on the next connection */
        }
    }
    #endHistory(h, err, page) {
        const i = this.#histories.indexOf(h);
        if (i < 0)
            return;
        this.#histories.splice(i, 1);
        clearTimeout(h.timer);
        if (err)
            h.reject(err);
        else
            h.resolve(page);
        this.#nextHistory();
    }
    #failHistories(err) {
        for (const h of [...this.#histories])
            this.#endHistory(h, err);
    }
    /** The in-flight history request's answer, or an `error` that is its refusal (then `true`). */
    #historyAnswered(f) {
        const h = this.#histories[0];
        if (!h?.sent)
            return false;
        if (f.type === "history") {
            if (f.id !== h.frame.id)
                return false;
            this.#endHistory(h, null, historyPage(f));
        }
        else {
            // A refusal with an id is this request's only if it names it. One without (an older
            // server) is if only history requests get its code, or if it came before the pong that
            // answers the ping sent after the request.
            const mine = f.id !== undefined ? f.id === h.frame.id : HISTORY_REFUSALS.has(f.code) || this.#pongs < h.ping;
            if (!mine)
                return false;
            this.#endHistory(h, new HistoryError(f.code, f.message));
        }
        return true;
    }
    /** Ends the pending `request` `id` with its answer; false if none waits under that id. */
    #answer(id, error, data) {
        const p = this.#pending.get(id);
        if (!p)
            return false;
        this.#pending.delete(id);
        clearTimeout(p.timer);
        if (error)
            p.reject(new ReplyError(error.code, error.message));
        else
            p.resolve(data);
        return true;
    }
    #failPending(err) {
        for (const [id, p] of this.#pending) {
            clearTimeout(p.timer);
            p.reject(err);
            this.#pending.delete(id);
        }
    }
    #onText(text) {
        let f;
        try {
            f = decodeFrame(text, this.#resuming);
        }
        catch (err) {
            this.#emit("protocolError", err);
            return;
        }
        this.#emit("frame", f);
        switch (f.type) {
            case "connected":
                return this.#onConnected(f);
            case "resumed":
                return this.#onResumed(f);
            case "event":
                return this.#onEvent(f);
            case "joined":
                if (!this.positions.has(f.stream))
                    this.#setPos(f.stream, { epoch: f.epoch, seq: f.seq });
                return;
            case "left":
                this.positions.delete(f.stream);
                this.presence.delete(f.stream);
                return this.#save();
            case "resync":
                return this.#resync(f.stream, { epoch: f.epoch, seq: f.seq }, f.reason);
            case "presence":
                return this.#onPresence(f);
            case "presence_diff":
                return this.#onPresenceDiff(f);
            case "skipped":
                this.stats.skipped += f.count;
                return;
            case "refresh_required":
                return void this.#refresh();
            case "reply":
                return void this.#answer(f.id, f.error, f.data);
            case "history":
                return void this.#historyAnswered(f);
            case "error":
                // A refused `request` (it carries the request's id) fails at once, not at its timeout.
                if (f.id !== undefined && this.#answer(f.id, f, undefined))
                    return;
                if (!this.#historyAnswered(f))
                    this.#emit("serverError", f);
                return;
            case "pong":
                this.#pongs += 1;
                return;
            case "refreshed":
                return;
        }
    }
    #onConnected(f) {
        this.connection = f;
        this.stats.connects += 1;
        this.#rejectedOnce = false;
        // Positions saved for another user (a new token) must not be resumed.
        if (this.#identity && (this.#identity.tenant !== f.tenant || this.#identity.user !== f.user)) {
            this.positions.clear();
        }
        this.#identity = { tenant: f.tenant, user: f.user };
        const resume = this.positions.size > 0;
        this.#pings = this.#pongs = 0;
        for (const [name, pos] of Object.entries(f.streams)) {
            if (!this.positions.has(name))
                this.positions.set(name, pos);
        }
        this.#save();
        // Thread and run filters first, so that the replay already honours them; then `resume` (or
        // any frame, which ends the server's resume window at once). Only then is the connection
        // open to the application's frames (a frame of its before `resume` would end the window).
        if (this.#sse) {
            this.#resuming = resume; // the server sent the subscriptions and `resume` (or a ping)
            if (!resume)
                this.#pings = 1;
        }
        else {
            for (const t of this.#threads)
                this.#ws?.send(JSON.stringify({ type: "subscribe", thread_id: t }));
            for (const r of this.#runs)
                this.#ws?.send(JSON.stringify({ type: "subscribe", run_id: r }));
            if (resume) {
                this.#resuming = true;
                this.#ws?.send(JSON.stringify({ type: "resume", positions: Object.fromEntries(this.positions) }));
            }
            else {
                this.#ws?.send(JSON.stringify({ type: "ping" }));
                this.#pings = 1;
            }
        }
        this.#setState("open");
        this.#stable = setTimeout(() => {
            this.#attempt = 0;
        }, this.#backoff.stableAfterMs);
        if (this.#ws)
            this.#watch(this.#ws, this.#token ?? "", f.heartbeat_ms);
        this.#emit("connected", f);
        if (!resume)
            this.#settle(null);
        this.#nextHistory();
    }
    #onResumed(f) {
        this.#resuming = false;
        for (const [name, r] of Object.entries(f.streams)) {
            if (!r.recovered)
                this.#resync(name, { epoch: r.epoch, seq: r.seq }, r.reason ?? "unknown");
        }
        this.#emit("resumed", f);
        this.#settle(null);
        this.#nextHistory();
    }
    #onEvent(e) {
        const last = this.positions.get(e.stream);
        if (last && last.epoch === e.epoch && e.seq <= last.seq) {
            this.stats.duplicates += 1;
            return;
        }
        this.#setPos(e.stream, { epoch: e.epoch, seq: e.seq });
        this.stats.events += 1;
        if (e.replayed)
            this.stats.replayed += 1;
        this.#emit("event", e);
        for (const s of [...this.#streams])
            s.push(e);
    }
    #resync(stream, position, reason) {
        this.#setPos(stream, position);
        const r = { stream, position, reason };
        guarded(() => this.#opts.onResync?.(r));
        this.#emit("resync", r);
    }
    #onPresence(f) {
        const members = f.members && new Map(f.members.map((m) => [m.user, m.meta]));
        const p = { scope: f.scope, count: f.count, members };
        this.presence.set(f.scope, p);
        this.#emit("presence", p);
    }
    #onPresenceDiff(f) {
        const p = this.presence.get(f.scope);
        if (!p?.members)
            return; // no list to apply it to (over the limit, or no snapshot yet)
        for (const j of f.joins)
            p.members.set(j.user, j.meta);
        for (const l of f.leaves)
            p.members.delete(l);
        p.count = p.members.size;
        this.#emit("presence", p);
    }
    async #refresh() {
        if (typeof this.#opts.token === "string")
            return; // nothing to refresh with: 4001 will stop
        try {
            const token = await this.#getToken("refresh");
            this.#sendIfOpen({ type: "refresh", token });
        }
        catch {
            // The provider failed: the session will expire (4001) and the client re-authenticates.
        }
    }
    #setPos(stream, pos) {
        this.positions.set(stream, pos);
        this.#save();
    }
    #save() {
        const { storage, storageKey = "switchboard-positions" } = this.#opts;
        if (!storage)
            return;
        try {
            storage.setItem(storageKey, JSON.stringify({ identity: this.#identity, positions: Object.fromEntries(this.positions) }));
        }
        catch {
            /* full or forbidden storage: positions still live in memory */
        }
    }
    #load() {
        const { storage, storageKey = "switchboard-positions" } = this.#opts;
        if (!storage)
            return;
        try {
            const saved = JSON.parse(storage.getItem(storageKey) ?? "null");
            if (!saved)
                return;
            this.#identity = saved.identity;
            for (const [k, v] of Object.entries(saved.positions ?? {})) {
                if (Number.isFinite(v?.epoch) && Number.isFinite(v?.seq))
                    this.positions.set(k, { epoch: v.epoch, seq: v.seq });
            }
        }
        catch {
            storage.removeItem(storageKey);
        }
    }
}
