// History requests and run subscriptions against the real binary: pages of a stream, of a
// thread and of a run; refusals as typed errors (the server's, and bad input caught before
// sending); a timeout; a request cut off by a dropped connection asked again on the next one;
// per-run iteration narrowed by the server (`subscribe` with `run_id`), kept across reconnects
// over WebSocket and SSE, and dropped when the loop ends.

import { test } from "node:test";
import assert from "node:assert/strict";

import { HistoryError, NotConnectedError, type EventFrame } from "../src/index.js";
import { client, serverPerFile, Proxy, sleep, SwitchboardServer, token, until } from "./support.js";

let server: SwitchboardServer;
serverPerFile((s) => (server = s));

const pub = (user: string, n: number, extra: Record<string, unknown> = {}) =>
  server.publish({ tenant: "acme", user, kind: "notice", data: { n }, ...extra });
// A reconnect that waits ~400 ms: long enough to publish while the client is away.
const away = { backoff: { baseMs: 400, maxMs: 400 }, random: () => 0.99 };
const ns = (events: EventFrame[]) => events.map((e) => (e.data as { n: number }).n);

test("history: the last page of a stream, then the page before it", async () => {
  const c = client({ url: server.ws, token: token("hist-1") });
  await c.connect();
  for (let n = 1; n <= 5; n++) await pub("hist-1", n);
  await until(() => c.positions.get("u")?.seq === 5, "five live events");
  const last = await c.history("u", { limit: 3 });
  assert.equal(last.stream, "u");
  assert.equal(last.seq, 5);
  assert.equal(last.more, true);
  assert.deepEqual(last.events.map((e) => e.seq), [3, 4, 5]);
  assert.deepEqual(ns(last.events), [3, 4, 5]);
  assert.ok(last.events.every((e) => e.type === "event" && e.kind === "notice" && !e.replayed));
  const older = await c.history("u", { limit: 3, before: last.events[0]!.seq });
  assert.deepEqual(ns(older.events), [1, 2]);
  assert.equal(older.more, false);
  const after = await c.history("u", { after: 3 });
  assert.deepEqual(ns(after.events), [4, 5]);
  // Another epoch: nothing, and why.
  const stale = await c.history("u", { epoch: last.epoch + 1 });
  assert.deepEqual([stale.events.length, stale.reason], [0, "epoch_mismatch"]);
});

test("history of one thread and of one run; concurrent requests each get their own page", async () => {
  const c = client({ url: server.ws, token: token("hist-2") });
  await c.connect();
  await pub("hist-2", 1, { thread: "ta" });
  await pub("hist-2", 2, { thread: "tb" });
  await pub("hist-2", 3, { run: "ra" });
  await pub("hist-2", 4, { thread: "ta" });
  await pub("hist-2", 5, { run: "rb" });
  await until(() => c.positions.get("u")?.seq === 5, "five live events");
  const [ta, ra, all] = await Promise.all([c.history({ thread: "ta" }), c.history({ run: "ra" }), c.history()]);
  assert.deepEqual(ns(ta.events), [1, 4]);
  assert.deepEqual(ns(ra.events), [3]);
  assert.deepEqual(ns(all.events), [1, 2, 3, 4, 5]);
});

test("history refusals are typed errors, and the connection goes on", async () => {
  const c = client({ url: server.ws, token: token("hist-3") });
  await assert.rejects(c.history(), NotConnectedError);
  await c.connect();
  const errors: string[] = [];
  c.on("serverError", (e) => errors.push(e.code));
  // The server's: a room this connection is not in; a limit over the server's maximum.
  await assert.rejects(c.history("r:elsewhere"), (e: HistoryError) => e instanceof HistoryError && e.code === "unknown_stream");
  await assert.rejects(c.history("u", { limit: 100_000 }), (e: HistoryError) => e.code === "invalid_field");
  // Bad input is refused before it is sent (no protocol violation counted).
  await assert.rejects(c.history("u", { before: 3, after: 1 }), (e: HistoryError) => e.code === "invalid_field");
  await assert.rejects(c.history("u", { limit: 0 }), (e: HistoryError) => e.code === "invalid_field");
  await assert.rejects(c.history({ thread: "" }), (e: HistoryError) => e.code === "invalid_field");
  assert.deepEqual(errors, [], "a refusal answers the request, it is not a stray server error");
  await pub("hist-3", 1);
  const page = await c.history();
  assert.deepEqual(ns(page.events), [1]);
  assert.equal(c.state, "open");
});

test("an unanswered history request times out; one cut off by a drop is asked again", async () => {
  const proxy = await Proxy.start(server.port);
  const c = client({ url: proxy.ws, token: token("hist-4"), backoff: { baseMs: 20, maxMs: 50 } });
  await c.connect();
  await pub("hist-4", 1);
  await until(() => c.positions.get("u")?.seq === 1, "a live event");
  proxy.pause();
  await assert.rejects(c.history("u", { timeoutMs: 200 }), (e: HistoryError) => e.code === "timeout");
  await pub("hist-4", 2);
  const asked = c.history("u", { timeoutMs: 10_000 });
  await sleep(50);
  proxy.drop(); // the request reached the server; its answer never comes on this connection
  proxy.resume();
  const page = await asked;
  assert.deepEqual(ns(page.events), [1, 2]);
  assert.equal(c.stats.connects, 2);
  await proxy.close();
});

test("a run's iterator subscribes by run_id: the server narrows delivery, across a reconnect", async () => {
  const proxy = await Proxy.start(server.port);
  const c = client({ url: proxy.ws, token: token("runs-1"), ...away });
  const got: EventFrame[] = [];
  c.on("event", (e) => got.push(e));
  await c.connect();
  const r1 = c.run("r1");
  await sleep(50); // the subscribe frame reaches the server
  await pub("runs-1", 1, { run: "r2" });
  await pub("runs-1", 2, { run: "r1" });
  await pub("runs-1", 3); // names no run or thread: a user-wide notice still comes
  await until(() => got.length === 2, "r1's event and the notice");
  proxy.holdNew(); // the reconnect waits until both are published, so 5 is always replayed
  proxy.drop();
  await until(() => c.stats.reconnects === 1, "the drop");
  await pub("runs-1", 4, { run: "r2" });
  await pub("runs-1", 5, { run: "r1" });
  proxy.releaseNew();
  await until(() => got.length === 3 && c.state === "open", "the replay");
  await sleep(100);
  // The other run's events never reached the client: the server filtered them, live and replayed.
  assert.deepEqual(got.map((e) => [e.run_id ?? null, (e.data as { n: number }).n, e.replayed]), [
    ["r1", 2, false],
    [null, 3, false],
    ["r1", 5, true],
  ]);
  assert.deepEqual(ns([(await r1.next()).value!, (await r1.next()).value!]), [2, 5], "the iterator holds r1's only");
  await r1.return(); // unsubscribes: the connection gets every event again
  await sleep(50);
  await pub("runs-1", 6, { run: "r2" });
  await until(() => got.length === 4, "r2's event after the loop ended");
  await proxy.close();
});

test("a loop over a run ends, another over the same run keeps the subscription", async () => {
  const c = client({ url: server.ws, token: token("runs-2") });
  const got: EventFrame[] = [];
  c.on("event", (e) => got.push(e));
  await c.connect();
  const a = c.run("r1");
  const b = c.run("r1");
  await a.return();
  await sleep(50);
  await pub("runs-2", 1, { run: "r2" });
  await pub("runs-2", 2, { run: "r1" });
  const e = await b.next();
  assert.equal((e.value!.data as { n: number }).n, 2);
  await sleep(100);
  assert.deepEqual(ns(got), [2], "still narrowed to r1");
});

test("SSE mode keeps run subscriptions across reconnects (sent as ?runs=)", async () => {
  const proxy = await Proxy.start(server.port);
  const c = client({ url: proxy.ws, token: token("sse-runs"), transport: "sse", ...away });
  const got: EventFrame[] = [];
  c.on("event", (e) => got.push(e));
  await c.connect();
  const r = c.run("r1");
  await sleep(100);
  await pub("sse-runs", 1, { run: "r2" });
  await pub("sse-runs", 2, { run: "r1" });
  await until(() => got.length === 1, "r1's event");
  proxy.holdNew();
  proxy.drop();
  await until(() => c.stats.reconnects === 1, "the drop");
  await pub("sse-runs", 3, { run: "r2" });
  await pub("sse-runs", 4, { run: "r1" });
  proxy.releaseNew();
  await until(() => got.length === 2 && c.state === "open", "the replay over SSE");
  await sleep(100);
  assert.deepEqual(got.map((e) => [e.run_id, (e.data as { n: number }).n, e.replayed]), [
    ["r1", 2, false],
    ["r1", 4, true],
  ]);
  const page = await c.history({ run: "r1" });
  assert.deepEqual(ns(page.events), [2, 4], "history over SSE too");
  await r.return();
  await proxy.close();
});
