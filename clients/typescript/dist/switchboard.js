// src/backoff.ts
var DEFAULT_BACKOFF = {
  baseMs: 500,
  maxMs: 3e4,
  stableAfterMs: 1e4
};
function backoffCeiling(attempt, opts = {}) {
  const { baseMs, maxMs } = { ...DEFAULT_BACKOFF, ...opts };
  return Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 62));
}
function backoffDelay(attempt, opts = {}, random = Math.random) {
  return Math.floor(random() * backoffCeiling(attempt, opts));
}

// src/close.ts
var CLOSE_CODES = {
  4e3: { reason: "heartbeat_timeout", action: "reconnect" },
  4001: { reason: "session_expired", action: "reauthenticate" },
  4002: { reason: "replaced", action: "stop" },
  4003: { reason: "slow_consumer", action: "reconnect" },
  4004: { reason: "protocol_violation", action: "stop" },
  4005: { reason: "kicked", action: "stop" },
  4006: { reason: "server_shutdown", action: "reconnect" },
  4007: { reason: "unavailable", action: "reconnect" },
  4008: { reason: "user_limit", action: "stop" },
  4009: { reason: "max_lifetime", action: "reconnect" }
};
function closeInfo(code) {
  return CLOSE_CODES[code] ?? { reason: code === 1006 ? "connection_lost" : `code_${code}`, action: "reconnect" };
}

// src/frames.ts
var CONTROL_TYPES = [
  "connected",
  "refresh_required",
  "refreshed",
  "resumed",
  "skipped",
  "joined",
  "left",
  "error",
  "pong",
  "reply",
  "history",
  "resync",
  "presence",
  "presence_diff"
];
var _everyTypeListed = Object.fromEntries(
  CONTROL_TYPES.map((t) => [t, true])
);
var FrameError = class extends Error {
  name = "FrameError";
};
var isObj = (v) => typeof v === "object" && v !== null && !Array.isArray(v);
var num = (v) => typeof v === "number" && Number.isFinite(v);
var str = (v) => typeof v === "string";
var isPos = (v) => isObj(v) && num(v.epoch) && num(v.seq);
var REQUIRED = {
  connected: {
    conn_id: str,
    tenant: str,
    user: str,
    heartbeat_ms: num,
    session_expires_in_ms: (v) => v === null || num(v),
    streams: (v) => isObj(v) && Object.values(v).every(isPos)
  },
  refresh_required: { expires_in_ms: num },
  refreshed: { session_expires_in_ms: (v) => v === null || num(v) },
  resumed: {
    recovered: (v) => typeof v === "boolean",
    streams: (v) => isObj(v) && Object.values(v).every((r) => isPos(r) && typeof r.recovered === "boolean")
  },
  skipped: { count: num },
  joined: { stream: str, epoch: num, seq: num },
  left: { stream: str },
  error: { code: str, message: str, id: (v) => v === void 0 || str(v) },
  pong: {},
  reply: { id: str },
  history: {
    stream: str,
    epoch: num,
    seq: num,
    available_from: num,
    more: (v) => typeof v === "boolean",
    messages: (v) => Array.isArray(v) && v.every((m) => isObj(m) && str(m.type) && num(m.seq))
  },
  resync: { stream: str, epoch: num, seq: num, reason: str },
  presence: {
    scope: str,
    count: num,
    members: (v) => v === null || Array.isArray(v) && v.every((m) => isObj(m) && str(m.user))
  },
  presence_diff: {
    scope: str,
    joins: (v) => Array.isArray(v) && v.every((j) => isObj(j) && str(j.user)),
    leaves: (v) => Array.isArray(v) && v.every(str)
  }
};
function decodeFrame(text, replayed = false) {
  let v;
  try {
    v = JSON.parse(text);
  } catch {
    throw new FrameError("not JSON");
  }
  if (!isObj(v) || !str(v.type)) throw new FrameError("no type");
  const checks = REQUIRED[v.type];
  if (checks) {
    for (const [field, ok] of Object.entries(checks)) {
      if (!ok(v[field])) throw new FrameError(`${v.type}: bad or missing ${field}`);
    }
    return v;
  }
  if (!str(v.stream) || !num(v.epoch) || !num(v.seq)) {
    throw new FrameError(`${v.type}: not a known frame, and not an event`);
  }
  const { type, ...rest } = v;
  return { ...rest, type: "event", kind: type, replayed };
}

// src/history.ts
var HistoryError = class extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
  code;
  name = "HistoryError";
};
var HISTORY_REFUSALS = /* @__PURE__ */ new Set(["unknown_stream", "history_busy"]);
var seqOk = (v) => v === void 0 || Number.isSafeInteger(v) && v >= 0;
var idOk = (v) => v === void 0 || typeof v === "string" && v.length > 0;
function historyRequest(target, opts, id) {
  const t = typeof target === "string" ? { stream: target } : target;
  const { limit, before, after, epoch } = opts;
  const bad = (field, why) => new HistoryError("invalid_field", `history: ${field} ${why}`);
  if (typeof t !== "object" || t === null) throw bad("target", "must be a stream name or {thread} / {run}");
  const stream = t.stream ?? "u";
  if (typeof stream !== "string" || !stream) throw bad("stream", "must be a stream name");
  const { thread, run } = t;
  if (!idOk(thread)) throw bad("thread", "must be a non-empty string");
  if (!idOk(run)) throw bad("run", "must be a non-empty string");
  if (limit !== void 0 && !(Number.isSafeInteger(limit) && limit >= 1)) throw bad("limit", "must be 1 or more");
  if (!seqOk(before)) throw bad("before", "must be a seq");
  if (!seqOk(after)) throw bad("after", "must be a seq");
  if (!seqOk(epoch)) throw bad("epoch", "must be an epoch");
  if (before !== void 0 && after !== void 0) throw bad("after", "cannot go with before");
  return { type: "history", id, stream, limit, before, after, epoch, thread_id: thread, run_id: run };
}
function historyPage(f) {
  const events = f.messages.map(({ type, ...rest }) => ({ ...rest, type: "event", kind: type, replayed: false }));
  const page = {
    stream: f.stream,
    epoch: f.epoch,
    seq: f.seq,
    available_from: f.available_from,
    more: f.more,
    events
  };
  if (f.reason !== void 0) page.reason = f.reason;
  return page;
}

// src/sse.ts
function encodeEventId(positions) {
  const json = JSON.stringify(Object.fromEntries([...positions].map(([k, p]) => [k, [p.epoch, p.seq]])));
  let bin = "";
  for (const b of new TextEncoder().encode(json)) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
var SseSocket = class {
  readyState = 0;
  onopen = null;
  onmessage = null;
  onclose = null;
  onerror = null;
  /** Set when the server answered the `GET` with an error status. */
  refusal = null;
  #abort = new AbortController();
  #fetch;
  #base;
  #token;
  #connId = null;
  #posting = Promise.resolve();
  #closed = false;
  constructor(base, token, opts) {
    this.#fetch = opts.fetch ?? globalThis.fetch.bind(globalThis);
    this.#base = new URL(base);
    this.#token = token;
    const url = new URL("sse", this.#base);
    const threads = [...opts.threads];
    if (threads.length) url.searchParams.set("threads", threads.join(","));
    const runs = [...opts.runs ?? []];
    if (runs.length) url.searchParams.set("runs", runs.join(","));
    const headers = { Authorization: `Bearer ${token}`, Accept: "text/event-stream" };
    if (opts.lastEventId) headers["Last-Event-ID"] = opts.lastEventId;
    void this.#run(url, headers);
  }
  async #run(url, headers) {
    let res;
    try {
      res = await this.#fetch(url, { headers, signal: this.#abort.signal, cache: "no-store" });
    } catch {
      return this.#end(1006, "unreachable");
    }
    if (!res.ok || !res.body) {
      let body = {};
      try {
        body = await res.json();
      } catch {
      }
      const retry = Number(res.headers.get("retry-after"));
      this.refusal = {
        status: res.status,
        error: body.error ?? String(res.status),
        message: body.message ?? "",
        retryAfterMs: Number.isFinite(retry) ? retry * 1e3 : 0
      };
      return this.#end(1006, `http_${res.status}`);
    }
    this.readyState = 1;
    this.onopen?.({});
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    let event = "";
    let data = [];
    try {
      for (; ; ) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let nl;
        while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + (buf.startsWith("\r\n", nl) ? 2 : 1));
          if (line === "") {
            if (data.length) this.#dispatch(event, data.join("\n"));
            event = "";
            data = [];
            if (this.#closed) return;
          } else if (!line.startsWith(":")) {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "data") data.push(val);
            else if (field === "event") event = val;
          }
        }
      }
    } catch {
    }
    this.#end(1006, "stream_ended");
  }
  #dispatch(event, data) {
    if (event === "close") {
      let code = 1006;
      let reason = "";
      try {
        ({ code, reason } = JSON.parse(data));
      } catch {
      }
      this.#abort.abort();
      return this.#end(code, reason);
    }
    if (this.#connId === null) {
      const m = /"type":"connected","conn_id":"([^"]+)"/.exec(data);
      if (m) this.#connId = m[1];
    }
    this.onmessage?.({ data });
  }
  #end(code, reason) {
    if (this.#closed) return;
    this.#closed = true;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  send(text) {
    if (this.readyState !== 1 || this.#connId === null) throw new Error("the SSE stream is not open");
    const url = new URL(`sse/${encodeURIComponent(this.#connId)}`, this.#base);
    const init = { method: "POST", headers: { Authorization: `Bearer ${this.#token}` }, body: text };
    this.#posting = this.#posting.then(() => this.#fetch(url, init)).catch(() => {
    });
  }
  close(code = 1e3, reason = "") {
    this.#abort.abort();
    queueMicrotask(() => this.#end(code, reason));
  }
};

// src/stream.ts
var OverflowError = class extends Error {
  constructor(limit) {
    super(`the consumer fell more than ${limit} events behind`);
    this.limit = limit;
  }
  limit;
  name = "OverflowError";
};
function matches(e, f) {
  return (f.stream === void 0 || e.stream === f.stream) && (f.thread === void 0 || e.thread_id === f.thread) && (f.run === void 0 || e.run_id === f.run) && (f.kind === void 0 || e.kind === f.kind);
}
var EventStream = class {
  constructor(filter, limit, onEnd) {
    this.filter = filter;
    this.limit = limit;
    this.onEnd = onEnd;
  }
  filter;
  limit;
  onEnd;
  #queue = [];
  #waiting = [];
  #failed = null;
  #done = false;
  /** Called by the client for every accepted event. */
  push(e) {
    if (this.#done || !matches(e, this.filter)) return;
    const next = this.#waiting.shift();
    if (next) return next({ value: e, done: false });
    if (this.#queue.length >= this.limit) return this.fail(new OverflowError(this.limit));
    this.#queue.push(e);
  }
  /** Ends the stream with an error (after what is queued has been read). */
  fail(err) {
    if (this.#done) return;
    this.#failed = err;
    this.#finish();
  }
  /** Ends the stream normally. */
  end() {
    this.#finish();
  }
  #finish() {
    if (this.#done) return;
    this.#done = true;
    this.onEnd();
    for (const w of this.#waiting.splice(0)) w({ value: void 0, done: true });
  }
  next() {
    const e = this.#queue.shift();
    if (e) return Promise.resolve({ value: e, done: false });
    if (this.#failed) {
      const err = this.#failed;
      this.#failed = null;
      return Promise.reject(err);
    }
    if (this.#done) return Promise.resolve({ value: void 0, done: true });
    return new Promise((resolve) => this.#waiting.push(resolve));
  }
  return() {
    this.#queue.length = 0;
    this.#finish();
    return Promise.resolve({ value: void 0, done: true });
  }
  [Symbol.asyncIterator]() {
    return this;
  }
};

// src/client.ts
function guarded(call) {
  try {
    call();
  } catch (err) {
    queueMicrotask(() => {
      throw err;
    });
  }
}
var ReplyError = class extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
  code;
  name = "ReplyError";
};
var NotConnectedError = class extends Error {
  name = "NotConnectedError";
};
var OPEN = 1;
var Client = class {
  /** Stream → the last position processed. */
  positions = /* @__PURE__ */ new Map();
  /** Scope → presence, for the scopes this connection is in. */
  presence = /* @__PURE__ */ new Map();
  stats = {
    connects: 0,
    reconnects: 0,
    events: 0,
    duplicates: 0,
    replayed: 0,
    skipped: 0
  };
  /** The current (or last) `connected` frame. */
  connection = null;
  state = "idle";
  #opts;
  #backoff;
  #threads = /* @__PURE__ */ new Set();
  #runs = /* @__PURE__ */ new Set();
  #histories = [];
  /** Pings sent and pongs received on the current connection (pongs come back in order). */
  #pings = 0;
  #pongs = 0;
  #streams = /* @__PURE__ */ new Set();
  #pending = /* @__PURE__ */ new Map();
  #listeners = /* @__PURE__ */ new Map();
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
    if (typeof opts.token === "string") this.#token = opts.token;
    this.#load();
  }
  /** Subscribes to one kind of client event; returns the unsubscribe function. */
  on(name, fn) {
    let set = this.#listeners.get(name);
    if (!set) this.#listeners.set(name, set = /* @__PURE__ */ new Set());
    set.add(fn);
    return () => void set.delete(fn);
  }
  #emit(name, v) {
    for (const fn of this.#listeners.get(name) ?? []) guarded(() => fn(v));
  }
  /**
   * Connects (once; later calls wait for the same connection). Resolves when the connection is
   * live: after `resumed` on a reconnect, at once on a first connection. Rejects if the client
   * stops for good first.
   */
  connect() {
    const ready = new Promise((resolve, reject) => this.#ready.push({ resolve, reject }));
    if (this.state === "open" && !this.#resuming) this.#settle(null);
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
      ws.close(1e3, "client closed");
    }
    this.#failPending(new NotConnectedError("the client was closed"));
    this.#failHistories(new NotConnectedError("the client was closed"));
    for (const s of [...this.#streams]) s.end();
    this.#setState("closed");
    this.#settle(new NotConnectedError("the client was closed"));
  }
  /**
   * Closes the current socket cleanly (1000) and reconnects as after any drop: for trying
   * resume by hand. A clean close does not count towards the server's reconnect breaker.
   */
  drop() {
    this.#ws?.close(1e3, "dropped by the client");
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
    if (thread !== void 0) this.#threads.add(thread);
    if (run !== void 0) this.#runs.add(run);
    if (thread !== void 0 || run !== void 0) this.#sendIfOpen({ type: "subscribe", thread_id: thread, run_id: run });
  }
  /**
   * Drops a thread (a string) or a run (`{ run }`); without an argument every subscription (the
   * connection gets all of its user's events again, as it does when the last one goes).
   */
  unsubscribe(from) {
    const { thread, run } = typeof from === "string" ? { thread: from } : from ?? {};
    if (thread === void 0 && run === void 0) {
      this.#threads.clear();
      this.#runs.clear();
    }
    if (thread !== void 0) this.#threads.delete(thread);
    if (run !== void 0) this.#runs.delete(run);
    this.#sendIfOpen({ type: "unsubscribe", thread_id: thread, run_id: run });
  }
  /** Every new event that passes `filter`, as an async iterator. */
  events(filter = {}) {
    const s = new EventStream(filter, this.#opts.maxBuffered ?? 1e4, () => this.#streams.delete(s));
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
    const s = new EventStream(n, this.#opts.maxBuffered ?? 1e4, () => {
      this.#streams.delete(s);
      if (![...this.#streams].some((o) => o.filter[key] === n[key])) this.unsubscribe(n);
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
      if (this.state !== "open") throw new NotConnectedError("not connected");
    } catch (err) {
      return Promise.reject(err);
    }
    const ms = opts.timeoutMs ?? this.#opts.replyTimeoutMs ?? 1e4;
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
    } catch (err) {
      return Promise.reject(err);
    }
    const ms = opts.timeoutMs ?? this.#opts.replyTimeoutMs ?? 1e4;
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
    if (this.state === s) return;
    this.state = s;
    this.#emit("state", s);
  }
  #settle(err) {
    for (const r of this.#ready.splice(0)) err ? r.reject(err) : r.resolve();
  }
  #clearTimers() {
    if (this.#timer) clearTimeout(this.#timer);
    if (this.#stable) clearTimeout(this.#stable);
    if (this.#watchdog) clearTimeout(this.#watchdog);
    this.#timer = this.#stable = this.#watchdog = null;
  }
  /** Abandons a connection without waiting for a close handshake that cannot complete. */
  #giveUp(ws, token, code, reason) {
    if (this.#ws !== ws) return;
    ws.onclose = ws.onmessage = ws.onopen = null;
    try {
      ws.close(code === 1006 ? 1e3 : code, reason);
    } catch {
    }
    void this.#onClose(ws, token, code, reason);
  }
  /** Pings an idle connection, and gives it up when even the ping gets no answer. */
  #watch(ws, token, heartbeatMs) {
    const intervalMs = this.#opts.heartbeat?.intervalMs ?? heartbeatMs;
    const timeoutMs = this.#opts.heartbeat?.timeoutMs ?? 1e4;
    if (this.#watchdog) clearTimeout(this.#watchdog);
    const check = (pingedAt) => {
      if (this.#ws !== ws) return;
      const now = Date.now();
      if (pingedAt !== null && this.#lastFrameAt < pingedAt) {
        return this.#giveUp(ws, token, 4e3, "heartbeat_timeout");
      }
      const idle = now - this.#lastFrameAt;
      if (idle >= intervalMs) {
        try {
          ws.send(JSON.stringify({ type: "ping" }));
          this.#pings += 1;
        } catch {
        }
        this.#watchdog = setTimeout(() => check(now), timeoutMs);
      } else {
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
    if (frame.type === "ping") this.#pings += 1;
  }
  #sendIfOpen(frame) {
    if (this.#ws && this.#ws.readyState === OPEN && this.state === "open") this.#ws.send(JSON.stringify(frame));
  }
  async #getToken(reason) {
    const src = this.#opts.token;
    if (typeof src === "string") return src;
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
    if (url.protocol === "http:") url.protocol = "ws:";
    if (url.protocol === "https:") url.protocol = "wss:";
    url.searchParams.set("token", token);
    return url.toString();
  }
  async #open() {
    this.#setState(this.stats.connects || this.stats.reconnects ? "reconnecting" : "connecting");
    let token;
    try {
      token = this.#token ?? await this.#getToken(this.stats.connects ? "expired" : "connect");
    } catch {
      return this.#retry(0, "token_provider_failed");
    }
    if (this.#stopped) return;
    const Ctor = this.#opts.WebSocket ?? globalThis.WebSocket;
    if (!Ctor && !this.#sse) throw new Error("no WebSocket implementation: pass one as `WebSocket`");
    this.#opened = false;
    const ws = this.#sse ? this.#sseSocket(token) : new Ctor(this.#wsUrl(token));
    this.#ws = ws;
    this.#watchdog = setTimeout(() => {
      this.#giveUp(ws, token, 1006, "connect_timeout");
    }, this.#opts.heartbeat?.timeoutMs ?? 1e4);
    ws.onopen = () => {
      this.#opened = true;
    };
    ws.onmessage = (ev) => {
      this.#lastFrameAt = Date.now();
      if (typeof ev.data === "string") this.#onText(ev.data);
    };
    ws.onerror = () => {
    };
    ws.onclose = (ev) => void this.#onClose(ws, token, ev.code, ev.reason);
  }
  async #onClose(ws, token, code, reason) {
    if (this.#ws !== ws) return;
    this.#ws = null;
    if (this.#stable) clearTimeout(this.#stable);
    if (this.#watchdog) clearTimeout(this.#watchdog);
    this.#stable = this.#watchdog = null;
    this.#failPending(new ReplyError("disconnected", "the connection closed before the reply"));
    for (const h of this.#histories) h.sent = false;
    if (this.#stopped) return;
    let minDelay = 0;
    if (!this.#opened) {
      const why = ws instanceof SseSocket ? ws.refusal : await this.#probe(token);
      if (this.#stopped) return;
      if (why?.status === 401) {
        if (typeof this.#opts.token === "function" && !this.#rejectedOnce) {
          this.#rejectedOnce = true;
          const fresh = await this.#getToken("rejected").catch(() => token);
          if (this.#stopped) return;
          if (fresh !== token) return this.#retry(0, "token_rejected");
        }
        return this.#stop(401, why.error, why.message);
      }
      if (why?.status === 403) return this.#stop(403, why.error, why.message);
      if (why?.retryAfterMs) minDelay = why.retryAfterMs;
    }
    const info = closeInfo(code);
    if (info.action === "stop") return this.#stop(code, reason || info.reason);
    if (info.action === "reauthenticate") {
      this.#token = null;
      if (typeof this.#opts.token === "string") return this.#stop(code, info.reason);
    }
    this.#retry(code, info.reason, minDelay);
  }
  #retry(code, reason, minDelayMs = 0) {
    if (this.#stopped) return;
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
    for (const s of [...this.#streams]) s.fail(new NotConnectedError(`stopped: ${reason}`));
    this.#setState("closed");
    this.#emit("stopped", message === void 0 ? { code, reason } : { code, reason, message });
    this.#settle(new NotConnectedError(`stopped: ${reason} (${code})`));
  }
  /** Why a handshake failed: 401/403 with the server's code, or a `Retry-After`. */
  async #probe(token) {
    const f = this.#opts.fetch ?? globalThis.fetch;
    if (!f) return null;
    try {
      const url = new URL(this.#opts.url);
      url.protocol = url.protocol === "wss:" || url.protocol === "https:" ? "https:" : "http:";
      const res = await f(url.toString(), { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
      let error = String(res.status);
      let message = "";
      try {
        const body = await res.json();
        if (body.error) error = body.error;
        if (body.message) message = body.message;
      } catch {
      }
      const retry = Number(res.headers.get("retry-after"));
      return { status: res.status, error, message, retryAfterMs: Number.isFinite(retry) ? retry * 1e3 : 0 };
    } catch {
      return null;
    }
  }
  /** Sends the oldest queued history request, when none is in flight and the connection is live. */
  #nextHistory() {
    const h = this.#histories[0];
    if (!h || h.sent || this.#resuming || this.state !== "open") return;
    try {
      this.#sendNow(h.frame);
      this.#sendNow({ type: "ping" });
      h.sent = true;
      h.ping = this.#pings;
    } catch {
    }
  }
  #endHistory(h, err, page) {
    const i = this.#histories.indexOf(h);
    if (i < 0) return;
    this.#histories.splice(i, 1);
    clearTimeout(h.timer);
    if (err) h.reject(err);
    else h.resolve(page);
    this.#nextHistory();
  }
  #failHistories(err) {
    for (const h of [...this.#histories]) this.#endHistory(h, err);
  }
  /** The in-flight history request's answer, or an `error` that is its refusal (then `true`). */
  #historyAnswered(f) {
    const h = this.#histories[0];
    if (!h?.sent) return false;
    if (f.type === "history") {
      if (f.id !== h.frame.id) return false;
      this.#endHistory(h, null, historyPage(f));
    } else {
      const mine = f.id !== void 0 ? f.id === h.frame.id : HISTORY_REFUSALS.has(f.code) || this.#pongs < h.ping;
      if (!mine) return false;
      this.#endHistory(h, new HistoryError(f.code, f.message));
    }
    return true;
  }
  /** Ends the pending `request` `id` with its answer; false if none waits under that id. */
  #answer(id, error, data) {
    const p = this.#pending.get(id);
    if (!p) return false;
    this.#pending.delete(id);
    clearTimeout(p.timer);
    if (error) p.reject(new ReplyError(error.code, error.message));
    else p.resolve(data);
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
    } catch (err) {
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
        if (!this.positions.has(f.stream)) this.#setPos(f.stream, { epoch: f.epoch, seq: f.seq });
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
        if (f.id !== void 0 && this.#answer(f.id, f, void 0)) return;
        if (!this.#historyAnswered(f)) this.#emit("serverError", f);
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
    if (this.#identity && (this.#identity.tenant !== f.tenant || this.#identity.user !== f.user)) {
      this.positions.clear();
    }
    this.#identity = { tenant: f.tenant, user: f.user };
    const resume = this.positions.size > 0;
    this.#pings = this.#pongs = 0;
    for (const [name, pos] of Object.entries(f.streams)) {
      if (!this.positions.has(name)) this.positions.set(name, pos);
    }
    this.#save();
    if (this.#sse) {
      this.#resuming = resume;
      if (!resume) this.#pings = 1;
    } else {
      for (const t of this.#threads) this.#ws?.send(JSON.stringify({ type: "subscribe", thread_id: t }));
      for (const r of this.#runs) this.#ws?.send(JSON.stringify({ type: "subscribe", run_id: r }));
      if (resume) {
        this.#resuming = true;
        this.#ws?.send(JSON.stringify({ type: "resume", positions: Object.fromEntries(this.positions) }));
      } else {
        this.#ws?.send(JSON.stringify({ type: "ping" }));
        this.#pings = 1;
      }
    }
    this.#setState("open");
    this.#stable = setTimeout(() => {
      this.#attempt = 0;
    }, this.#backoff.stableAfterMs);
    if (this.#ws) this.#watch(this.#ws, this.#token ?? "", f.heartbeat_ms);
    this.#emit("connected", f);
    if (!resume) this.#settle(null);
    this.#nextHistory();
  }
  #onResumed(f) {
    this.#resuming = false;
    for (const [name, r] of Object.entries(f.streams)) {
      if (!r.recovered) this.#resync(name, { epoch: r.epoch, seq: r.seq }, r.reason ?? "unknown");
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
    if (e.replayed) this.stats.replayed += 1;
    this.#emit("event", e);
    for (const s of [...this.#streams]) s.push(e);
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
    if (!p?.members) return;
    for (const j of f.joins) p.members.set(j.user, j.meta);
    for (const l of f.leaves) p.members.delete(l);
    p.count = p.members.size;
    this.#emit("presence", p);
  }
  async #refresh() {
    if (typeof this.#opts.token === "string") return;
    try {
      const token = await this.#getToken("refresh");
      this.#sendIfOpen({ type: "refresh", token });
    } catch {
    }
  }
  #setPos(stream, pos) {
    this.positions.set(stream, pos);
    this.#save();
  }
  #save() {
    const { storage, storageKey = "switchboard-positions" } = this.#opts;
    if (!storage) return;
    try {
      storage.setItem(storageKey, JSON.stringify({ identity: this.#identity, positions: Object.fromEntries(this.positions) }));
    } catch {
    }
  }
  #load() {
    const { storage, storageKey = "switchboard-positions" } = this.#opts;
    if (!storage) return;
    try {
      const saved = JSON.parse(storage.getItem(storageKey) ?? "null");
      if (!saved) return;
      this.#identity = saved.identity;
      for (const [k, v] of Object.entries(saved.positions ?? {})) {
        if (Number.isFinite(v?.epoch) && Number.isFinite(v?.seq)) this.positions.set(k, { epoch: v.epoch, seq: v.seq });
      }
    } catch {
      storage.removeItem(storageKey);
    }
  }
};
export {
  CLOSE_CODES,
  CONTROL_TYPES,
  Client,
  DEFAULT_BACKOFF,
  EventStream,
  FrameError,
  HISTORY_REFUSALS,
  HistoryError,
  NotConnectedError,
  OverflowError,
  ReplyError,
  SseSocket,
  backoffCeiling,
  backoffDelay,
  closeInfo,
  decodeFrame,
  encodeEventId,
  historyPage,
  historyRequest,
  matches
};
