// The client against the real `switchboard` binary (no mocks): exact resume after the network
// drops, dedupe, full-jitter backoff within its bounds, the close codes' reconnect hints, token
// refresh and re-authentication, replies with timeouts, threads, presence and stored positions.

import { test } from "node:test";
import assert from "node:assert/strict";

import { backoffCeiling, CLOSE_CODES, ReplyError, type EventFrame, type Resync, type Stopped } from "../src/index.js";
import { client, serverPerFile, freePort, Proxy, sleep, SwitchboardServer, token, until } from "./support.js";

let server: SwitchboardServer;
serverPerFile((s) => (server = s));

/** Collects every event a client hands out. */
function collect(c: ReturnType<typeof client>): EventFrame[] {
  const got: EventFrame[] = [];
  c.on("event", (e) => got.push(e));
  return got;
}

const notice = (user: string, n: number) => ({ tenant: "acme", user, kind: "notice", data: { n } });

test("after the network drops, the client resumes and gets exactly what it missed, in order", async () => {
  const proxy = await Proxy.start(server.port);
  const c = client({ url: proxy.ws, token: token("resume-1") });
  const got = collect(c);
  let resumed = 0;
  c.on("resumed", (f) => {
    assert.equal(f.recovered, true);
    resumed += 1;
  });
  await c.connect();
  for (let n = 1; n <= 3; n++) await server.publish(notice("resume-1", n));
  await until(() => got.length === 3, "three live events");
  // Its reconnect (whose backoff may draw 0 ms) waits at the proxy until all three are published.
  proxy.holdNew();
  proxy.drop();
  await until(() => c.state !== "open", "the client to notice the drop");
  // Published while the client is away: the server buffers them for the user.
  for (let n = 4; n <= 6; n++) await server.publish(notice("resume-1", n));
  proxy.releaseNew();
  await until(() => resumed === 1 && got.length === 6, "the resume");
  for (let n = 7; n <= 8; n++) await server.publish(notice("resume-1", n));
  await until(() => got.length === 8, "live events after the resume");
  assert.deepEqual(got.map((e) => (e.data as { n: number }).n), [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.deepEqual(got.map((e) => e.seq), [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.deepEqual(got.map((e) => e.replayed), [false, false, false, true, true, true, false, false]);
  assert.equal(c.stats.replayed, 3);
  assert.equal(proxy.connections, 2);
  await proxy.close();
});

test("events the network delivers twice are handed out once", async () => {
  const proxy = await Proxy.start(server.port);
  proxy.duplicateEvents = true;
  const c = client({ url: proxy.ws, token: token("dedupe-1") });
  const got = collect(c);
  await c.connect();
  for (let n = 1; n <= 5; n++) await server.publish(notice("dedupe-1", n));
  await until(() => c.stats.duplicates === 5, "five duplicates seen");
  assert.deepEqual(got.map((e) => e.seq), [1, 2, 3, 4, 5]);
  await proxy.close();
});

test("positions survive in storage: a new client resumes where the last one stopped", async () => {
  const store = new Map<string, string>();
  const storage = {
    getItem: (k: string) => store.get(k) ?? null,
    setItem: (k: string, v: string) => void store.set(k, v),
    removeItem: (k: string) => void store.delete(k),
  };
  const first = client({ url: server.ws, token: token("store-1"), storage });
  const seen = collect(first);
  await first.connect();
  await server.publish(notice("store-1", 1));
  await until(() => seen.length === 1, "the first event");
  first.close();
  await server.publish(notice("store-1", 2));
  await server.publish(notice("store-1", 3));
  const second = client({ url: server.ws, token: token("store-1"), storage });
  const got = collect(second);
  await second.connect(); // resolves after `resumed`
  assert.deepEqual(got.map((e) => [(e.data as { n: number }).n, e.replayed]), [[2, true], [3, true]]);
  // Another user's client must not resume alice's positions.
  const other = client({ url: server.ws, token: token("store-2"), storage });
  let resync = 0;
  other.on("resync", () => (resync += 1));
  await other.connect();
  assert.equal(other.connection?.user, "store-2");
  assert.equal(resync, 0, "nothing of store-1 was resumed");
});

test("an onResync that throws neither breaks the connection nor leaves the resume half done", async () => {
  // Positions of an epoch the server never had: the resume reports the stream lost.
  const saved = { identity: { tenant: "acme", user: "resync-bug" }, positions: { u: { epoch: 1, seq: 5 } } };
  const storage = { getItem: () => JSON.stringify(saved), setItem: () => {}, removeItem: () => {} };
  // The client surfaces a callback's error asynchronously (an uncaught exception); this test
  // catches it where it is thrown, on the microtask queue.
  const surfaced: unknown[] = [];
  const original = globalThis.queueMicrotask;
  globalThis.queueMicrotask = (cb) =>
    original(() => {
      try {
        cb();
      } catch (err) {
        surfaced.push(err);
      }
    });
  try {
    const c = client({
      url: server.ws,
      token: token("resync-bug"),
      storage,
      onResync: () => {
        throw new Error("the application's bug");
      },
    });
    const resyncs: string[] = [];
    c.on("resync", (r) => resyncs.push(r.reason));
    await c.connect(); // resolves after `resumed`: the resume was finished
    assert.deepEqual(resyncs, ["epoch_mismatch"]);
    await until(() => surfaced.length === 1, "the callback's error, surfaced");
    const got = collect(c);
    await server.publish(notice("resync-bug", 1));
    await until(() => got.length === 1, "a live event after the resync");
    assert.equal(c.state, "open");
    c.close();
  } finally {
    globalThis.queueMicrotask = original;
  }
});

test("reconnect delays are full-jitter draws within the documented bounds", async () => {
  const port = await freePort(); // nobody listens there
  const backoff = { baseMs: 20, maxMs: 160 };
  const c = client({ url: `ws://127.0.0.1:${port}/ws`, token: token("nobody"), backoff });
  const delays: { attempt: number; delayMs: number; at: number }[] = [];
  c.on("reconnecting", (r) => delays.push({ ...r, at: Date.now() }));
  void c.connect().catch(() => {});
  await until(() => delays.length >= 12, "twelve attempts", 20_000);
  c.close();
  for (const [i, d] of delays.entries()) {
    const ceiling = backoffCeiling(i, backoff);
    assert.ok(d.delayMs >= 0 && d.delayMs < ceiling, `attempt ${i}: ${d.delayMs} within [0, ${ceiling})`);
    if (i > 0) {
      const waited = d.at - delays[i - 1]!.at;
      assert.ok(waited >= delays[i - 1]!.delayMs - 2, `attempt ${i} waited ${waited} >= ${delays[i - 1]!.delayMs}`);
    }
  }
  assert.equal(backoffCeiling(3, backoff), 160, "capped at maxMs");
  // Jitter: the capped attempts do not all draw the same delay.
  assert.ok(new Set(delays.slice(3).map((d) => d.delayMs)).size > 1, "the delays are spread");
  // With a fixed draw the delay is exactly the window times the draw.
  const fixed = client({ url: `ws://127.0.0.1:${port}/ws`, token: token("nobody"), backoff, random: () => 0.5 });
  const fixedDelays: number[] = [];
  fixed.on("reconnecting", (r) => fixedDelays.push(r.delayMs));
  void fixed.connect().catch(() => {});
  await until(() => fixedDelays.length >= 5, "five attempts");
  fixed.close();
  assert.deepEqual(fixedDelays.slice(0, 5), [10, 20, 40, 80, 80]);
});

test("close codes that forbid retrying stop the client: protocol_violation (4004)", async () => {
  const c = client({ url: server.ws, token: token("violator") });
  const stopped = new Promise<Stopped>((ok) => c.on("stopped", ok));
  await c.connect();
  for (let i = 0; i < 5; i++) c.sendFrame({ type: "no_such_frame" });
  const why = await stopped;
  assert.deepEqual(why, { code: 4004, reason: "protocol_violation" });
  assert.equal(c.state, "closed");
  await sleep(300);
  assert.equal(c.stats.connects, 1, "it never reconnected");
  assert.equal(CLOSE_CODES[4002]!.action, "stop");
  assert.equal(CLOSE_CODES[4005]!.action, "stop");
});

test("server_shutdown (4006): reconnect to the restarted server and report the lost streams", async () => {
  const own = await SwitchboardServer.start();
  const c = client({ url: own.ws, token: token("restart-1"), backoff: { baseMs: 100, maxMs: 400 } });
  const resyncs: Resync[] = [];
  const got = collect(c);
  c.on("resync", (r) => resyncs.push(r));
  const codes: number[] = [];
  c.on("reconnecting", (r) => codes.push(r.code));
  await c.connect();
  await own.publish(notice("restart-1", 1));
  await until(() => got.length === 1, "an event");
  await own.shutdown();
  await until(() => codes.length > 0, "a reconnect scheduled");
  assert.equal(codes[0], 4006);
  const again = await SwitchboardServer.start({ port: own.port });
  try {
    await until(() => c.state === "open" && resyncs.length > 0, "the resume on the new server");
    // A new process: every stream was created anew, so nothing could be recovered exactly.
    const u = resyncs.find((r) => r.stream === "u")!;
    assert.equal(u.reason, "epoch_mismatch");
    assert.notEqual(u.position.epoch, got[0]!.epoch);
    await again.publish(notice("restart-1", 2));
    await until(() => got.length === 2, "live events from the new server");
    assert.equal(got[1]!.epoch, u.position.epoch);
  } finally {
    c.close();
    await again.shutdown();
  }
});

test("a token provider refreshes the session before it ends, and re-authenticates after 4001", async () => {
  // Sessions of 3 s: `refresh_required` comes at once (the grace is 60 s).
  const reasons: string[] = [];
  let refuse = true;
  const c = client({
    url: server.ws,
    token: (reason) => {
      reasons.push(reason);
      // The first refresh hands over another user's token: refused, the session ends (4001).
      // The next one a token that ends later (one of 3 s again would not extend the session).
      if (reason === "refresh") return token(refuse ? "intruder" : "session-1", { ttlSecs: 3600 });
      return token("session-1", { ttlSecs: 3 });
    },
    backoff: { baseMs: 50, maxMs: 100 },
  });
  const errors: string[] = [];
  c.on("serverError", (e) => errors.push(e.code));
  const codes: number[] = [];
  c.on("reconnecting", (r) => codes.push(r.code));
  // Listening from the start: the accepted refresh may come before the waits below end.
  let refreshed = 0;
  c.on("frame", (f) => void (f.type === "refreshed" && refreshed++));
  await c.connect();
  await until(() => errors.includes("refresh_refused"), "the refused refresh");
  refuse = false;
  await until(() => codes.includes(4001), "session_expired", 10_000);
  await until(() => c.state === "open" && c.stats.connects === 2, "a new connection with a fresh token");
  assert.deepEqual(reasons.slice(0, 3), ["connect", "refresh", "expired"]);
  // The new session gets `refresh_required` too; this time the refresh is accepted.
  await until(() => refreshed === 1, "the accepted refresh");
  assert.equal(c.stats.connects, 2, "the refreshed session goes on");
  c.close();
});

test("a token refused at the handshake stops the client with the server's reason", async () => {
  const c = client({ url: server.ws, token: token("mallory", { secret: "not the server's secret, 32+ bytes" }) });
  const stopped = new Promise<Stopped>((ok) => c.on("stopped", ok));
  await assert.rejects(c.connect());
  const why = await stopped;
  assert.equal(why.code, 401);
  assert.equal(why.reason, "invalid");
  assert.match(why.message ?? "", /bad signature/);
});

test("a request gets the application's reply; a reply that does not come times out", async () => {
  const proxy = await Proxy.start(server.port);
  const c = client({ url: proxy.ws, token: token("asker") });
  await c.connect();
  const events = c.thread("t-reply");
  const reply = (await c.request({ text: "hello" }, { thread: "t-reply" })) as { accepted: boolean; run_id: string };
  assert.equal(reply.accepted, true);
  const kinds: string[] = [];
  for await (const e of events) {
    assert.equal(e.thread_id, "t-reply");
    assert.equal(e.run_id, reply.run_id);
    kinds.push(e.kind);
    if (e.kind === "agent_completed") break;
  }
  assert.deepEqual(kinds, [
    "agent_started", "agent_thinking", "agent_thinking", "agent_thinking",
    "tool_executing", "tool_completed", "agent_completed",
  ]);
  proxy.pause(); // the server's answer is held back
  await assert.rejects(c.request({ text: "again" }, { timeoutMs: 200 }), (e: ReplyError) => e.code === "timeout");
  proxy.resume();
  await proxy.close();
});

test("a request the server refuses fails at once with the server's code", async () => {
  const c = client({ url: server.ws, token: token("asker-flood", { tier: "free" }) });
  await c.connect();
  const stray: string[] = [];
  c.on("serverError", (e) => stray.push(e.code));
  // More messages at once than the free tier's burst (30): those over it are refused, with their ids.
  // The timeout is far off: a refusal that waited for it would fail with "timeout" instead.
  const asked = Array.from({ length: 60 }, (_, n) => c.request({ text: `q${n}` }, { timeoutMs: 50_000 }));
  const settled = await Promise.allSettled(asked);
  const refused = settled.flatMap((r) => (r.status === "rejected" ? [(r.reason as ReplyError).code] : []));
  assert.ok(refused.length > 0 && refused.length < 60, `${refused.length} refused`);
  assert.deepEqual(new Set(refused), new Set(["rate_limited"]));
  assert.deepEqual(stray, [], "a refusal answers its request, it is not a stray server error");
  assert.equal(c.state, "open");
});

test("a thread subscription narrows delivery and is restored after a reconnect", async () => {
  const proxy = await Proxy.start(server.port);
  const c = client({ url: proxy.ws, token: token("threads-1") });
  const got = collect(c);
  await c.connect();
  const t1 = c.thread("t1");
  await sleep(50); // the subscribe frame reaches the server
  const pub = (thread: string, n: number) =>
    server.publish({ tenant: "acme", user: "threads-1", thread, kind: "notice", data: { n } });
  await pub("t2", 1);
  await pub("t1", 2);
  await until(() => got.length === 1, "the t1 event");
  proxy.holdNew(); // the reconnect waits until both are published (its backoff may draw 0 ms)
  proxy.drop();
  await until(() => c.state !== "open", "the drop");
  await pub("t2", 3);
  await pub("t1", 4);
  proxy.releaseNew();
  await until(() => got.length === 2, "the replayed t1 event");
  assert.deepEqual(got.map((e) => [e.thread_id, (e.data as { n: number }).n, e.replayed]), [
    ["t1", 2, false],
    ["t1", 4, true],
  ]);
  const first = await t1.next();
  assert.equal(first.value?.thread_id, "t1");
  await t1.return();
  await sleep(50);
  await pub("t2", 5);
  await until(() => got.length === 3, "t2 again after unsubscribing");
  await proxy.close();
});

test("presence: a room's members as snapshot plus diffs", async () => {
  const a = client({ url: server.ws, token: token("pres-a", { rooms: ["hall"], name: "Ann" }) });
  await a.connect();
  await until(() => a.presence.get("r:hall") !== undefined, "the snapshot");
  const b = client({ url: server.ws, token: token("pres-b", { rooms: ["hall"] }) });
  await b.connect();
  await until(() => a.presence.get("r:hall")?.members?.has("pres-b") === true, "b's join", 5_000);
  const hall = a.presence.get("r:hall")!;
  assert.ok(hall.members!.has("pres-a"));
  assert.deepEqual(hall.members!.get("pres-a"), { name: "Ann" });
  assert.equal(hall.count, 2);
});

test("a connection that silently stops answering is given up and resumed (client heartbeat)", async () => {
  const proxy = await Proxy.start(server.port);
  const c = client({
    url: proxy.ws,
    token: token("silent-1"),
    heartbeat: { intervalMs: 200, timeoutMs: 300 },
    backoff: { baseMs: 50, maxMs: 100 },
  });
  const got = collect(c);
  const codes = [] as number[];
  c.on("reconnecting", (r) => codes.push(r.code));
  await c.connect();
  await server.publish(notice("silent-1", 1));
  await until(() => got.length === 1, "a live event");
  await sleep(600);
  assert.equal(codes.length, 0, "an idle but answering connection is kept (pings answered)");
  proxy.pause(); // the server's bytes stop arriving; no close, no error
  await server.publish(notice("silent-1", 2));
  await until(() => codes.includes(4000), "the heartbeat timeout", 5_000);
  proxy.resume();
  await until(() => got.length === 2 && c.state === "open", "the resume");
  assert.deepEqual(got.map((e) => [e.seq, e.replayed]), [[1, false], [2, true]]);
  await proxy.close();
});
