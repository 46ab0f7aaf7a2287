// Server-Sent Events against the real binary: the client's SSE mode (exact resume after the
// network drops, replies through POSTs, thread filters), the event ids themselves (a reconnect
// with `Last-Event-ID` replays exactly the missed events), a slow SSE reader closed as a slow
// consumer, and POSTs only to one's own connections.

import { test } from "node:test";
import assert from "node:assert/strict";

import type { EventFrame } from "../src/index.js";
import { client, serverPerFile, Proxy, sleep, SwitchboardServer, token, until } from "./support.js";

let server: SwitchboardServer;
serverPerFile((s) => (server = s));

const notice = (user: string, n: number, extra: Record<string, unknown> = {}) =>
  ({ tenant: "acme", user, kind: "notice", data: { n }, ...extra });

test("SSE mode: events, a reply by POST, and an exact resume after the network drops", async () => {
  const proxy = await Proxy.start(server.port);
  const c = client({ url: proxy.ws, token: token("sse-a"), transport: "sse" });
  const got: EventFrame[] = [];
  c.on("event", (e) => got.push(e));
  await c.connect();
  const reply = (await c.request({ text: "over sse" })) as { accepted: boolean; run_id: string };
  assert.equal(reply.accepted, true);
  await until(() => got.some((e) => e.kind === "agent_completed"), "the run over SSE");
  const before = got.length;
  // The reconnect (whose backoff may draw 0 ms) waits at the proxy until the three are published:
  // otherwise the state can be "open" again before the wait below first looks.
  proxy.holdNew();
  proxy.drop();
  await until(() => c.state !== "open", "the drop");
  for (let n = 1; n <= 3; n++) await server.publish(notice("sse-a", n));
  proxy.releaseNew();
  await until(() => got.length === before + 3 && c.state === "open", "the resume over SSE");
  await server.publish(notice("sse-a", 4));
  await until(() => got.length === before + 4, "live after the resume");
  const tail = got.slice(before);
  assert.deepEqual(tail.map((e) => (e.data as { n: number }).n), [1, 2, 3, 4]);
  assert.deepEqual(tail.map((e) => e.replayed), [true, true, true, false]);
  const seqs = got.map((e) => e.seq);
  assert.deepEqual(seqs, seqs.map((_, i) => i + 1), "every seq once, in order");
  assert.equal(proxy.connections >= 2, true);
  await proxy.close();
});

test("SSE mode keeps thread subscriptions across reconnects (sent as ?threads=)", async () => {
  const proxy = await Proxy.start(server.port);
  const c = client({ url: proxy.ws, token: token("sse-t"), transport: "sse" });
  c.subscribe("t1");
  const got: EventFrame[] = [];
  c.on("event", (e) => got.push(e));
  await c.connect();
  await server.publish(notice("sse-t", 1, { thread: "t2" }));
  await server.publish(notice("sse-t", 2, { thread: "t1" }));
  await until(() => got.length === 1, "the t1 event");
  proxy.holdNew(); // as above: the reconnect waits until both are published
  proxy.drop();
  await until(() => c.state !== "open", "the drop");
  await server.publish(notice("sse-t", 3, { thread: "t2" }));
  await server.publish(notice("sse-t", 4, { thread: "t1" }));
  proxy.releaseNew();
  await until(() => got.length === 2, "the replayed t1 event");
  await sleep(100);
  assert.deepEqual(got.map((e) => [e.thread_id, (e.data as { n: number }).n, e.replayed]), [
    ["t1", 2, false],
    ["t1", 4, true],
  ]);
  await proxy.close();
});

/** Reads an SSE response into events until `stop` says so. */
async function readEvents(res: Response, stop: (events: { id: string; data: string }[]) => boolean) {
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  const events: { id: string; data: string }[] = [];
  let buf = "";
  while (!stop(events)) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let end: number;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      const id = /^id: (.*)$/m.exec(block)?.[1];
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (id && data) events.push({ id, data });
    }
  }
  await reader.cancel();
  return events;
}

test("the event id carries the positions: Last-Event-ID replays exactly what was missed", async () => {
  const t = token("sse-raw");
  const open = (last?: string) =>
    fetch(`${server.http}/sse?token=${t}`, { headers: last ? { "Last-Event-ID": last } : {} });
  const first = await open();
  assert.equal(first.headers.get("content-type"), "text/event-stream");
  const publishing = (async () => {
    await sleep(200);
    for (let n = 1; n <= 2; n++) await server.publish(notice("sse-raw", n));
  })();
  const seen = await readEvents(first, (ev) => ev.filter((e) => e.data.includes('"notice"')).length === 2);
  await publishing;
  const lastId = seen.at(-1)!.id;
  for (let n = 3; n <= 5; n++) await server.publish(notice("sse-raw", n));
  const again = await open(lastId);
  const replay = await readEvents(again, (ev) => ev.some((e) => e.data.includes('"resumed"')));
  const notices = replay.filter((e) => e.data.includes('"notice"')).map((e) => JSON.parse(e.data).data.n);
  assert.deepEqual(notices, [3, 4, 5]);
  const resumed = JSON.parse(replay.find((e) => e.data.includes('"resumed"'))!.data);
  assert.equal(resumed.recovered, true);
  // A garbled id is refused, not taken as a fresh start.
  assert.equal((await open("not-an-id")).status, 400);
});

test("a slow SSE reader is closed as a slow consumer, and nobody else waits for it", async () => {
  const t = token("sse-slow");
  const stalled = await fetch(`${server.http}/sse?token=${t}`); // never read
  const fast = client({ url: server.ws, token: token("sse-fast") });
  const fastGot: EventFrame[] = [];
  fast.on("event", (e) => fastGot.push(e));
  await fast.connect();
  const before = await server.metric('switchboard_connections_closed_total{reason="slow_consumer"}');
  const blob = "x".repeat(200 * 1024);
  for (let n = 0; n < 60; n++) {
    await server.publish({ tenant: "acme", user: "sse-slow", kind: "tool_completed", data: { n, blob } });
    await server.publish(notice("sse-fast", n));
  }
  await until(() => fastGot.length === 60, "the fast reader's events");
  let closed = before;
  for (let i = 0; i < 200 && closed <= before; i++) {
    closed = await server.metric('switchboard_connections_closed_total{reason="slow_consumer"}');
    await sleep(100);
  }
  assert.ok(closed > before, `slow_consumer closes: ${before} -> ${closed}`);
  await stalled.body?.cancel();
});

test("POST /sse/{conn_id} takes frames only from the connection's own user", async () => {
  const alice = client({ url: server.ws, token: token("sse-owner"), transport: "sse" });
  await alice.connect();
  const conn = alice.connection!.conn_id;
  const post = (tok: string | null) =>
    fetch(`${server.http}/sse/${conn}`, {
      method: "POST",
      headers: tok ? { Authorization: `Bearer ${tok}` } : {},
      body: JSON.stringify({ type: "ping" }),
    });
  assert.equal((await post(null)).status, 401);
  assert.equal((await post(token("sse-intruder"))).status, 404);
  assert.equal((await post(token("sse-owner", { tenant: "globex" }))).status, 404);
  assert.equal((await post(token("sse-owner"))).status, 202);
  assert.equal((await fetch(`${server.http}/sse/0v999`, { method: "POST", headers: { Authorization: `Bearer ${token("sse-owner")}` }, body: "{}" })).status, 404);
});

test("the hub's close ends the stream with a close event carrying the code", async () => {
  const own = await SwitchboardServer.start();
  const res = await fetch(`${own.http}/sse?token=${token("sse-bye")}`);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const first = await reader.read();
  text += first.value ?? "";
  const stopping = own.shutdown(); // SIGINT: every connection closed with server_shutdown
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
  }
  await stopping;
  assert.match(text, /^retry: \d+\n\n/, "a reconnect delay first");
  assert.match(text, /event: close\ndata: \{"code":4006,"reason":"server_shutdown"\}\n\n$/, text.slice(-200));
});
