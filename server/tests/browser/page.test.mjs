// Drives the demo page (on the TypeScript client of clients/typescript) in a real headless chromium: connect with a token, see who is online in
// the lobby, type a message, send it, and wait for the demo agent's five kinds of events to appear in order. Then drop the
// socket from inside the page and check that it reconnects and resumes by itself, and that the
// server counted the drop as a clean close. Then open the page with a rejected token: it must say
// so and stop, and connect again once a good token is pasted.
//
//   node page.test.mjs 'http://127.0.0.1:PORT/?token=…'
//
// Env: CHROMIUM (default /usr/bin/chromium), SCREENSHOT (a PNG path to save the page to).

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer, connect } from "node:net";
import { once } from "node:events";
import { chromium } from "playwright-core";

const url = process.argv[2];
if (!url) {
  console.error("usage: node page.test.mjs <page url with ?token=>");
  process.exit(2);
}
const RUN = [
  "agent_started",
  "agent_thinking",
  "agent_thinking",
  "agent_thinking",
  "tool_executing",
  "tool_completed",
  "agent_completed",
];
const TIMEOUT = 20_000;

function check(cond, message) {
  if (!cond) throw new Error(message);
}

const userDataDir = await mkdtemp(join(tmpdir(), "switchboard-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const page = context.pages()[0] ?? (await context.newPage());
const logs = [];
page.on("console", (m) => logs.push(`console.${m.type()}: ${m.text()}`));
page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));

let failed = false;
try {
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("status").className === "connected", null, { timeout: TIMEOUT });
  const who = await page.textContent("#who");
  console.log(`connected as ${who}`);
  // The page runs on the TypeScript client the server serves compiled.
  const usesClient = await page.evaluate(() =>
    performance.getEntriesByType("resource").some((r) => r.name.endsWith("/switchboard-client.js")) &&
    window.switchboard.client.state === "open");
  check(usesClient, "the page did not load /switchboard-client.js or its client is not open");

  // The token left the address bar, and is kept for this tab only.
  const stored = await page.evaluate(() => ({
    search: location.search,
    local: localStorage.getItem("switchboard-token"),
    session: sessionStorage.getItem("switchboard-token"),
  }));
  check(!stored.search.includes("token"), `the token is still in the URL: ${stored.search}`);
  check(stored.local === null, "the token is in localStorage");
  check(stored.session && url.includes(stored.session), "the token is not in sessionStorage");

  // Room presence: the demo user is in the lobby, and the page lists who is online there by name.
  await page.waitForFunction(() => !document.getElementById("online-box").hidden && document.querySelectorAll("#online li").length > 0, null, { timeout: TIMEOUT });
  const online = await page.$$eval("#online li", (els) => els.map((e) => e.textContent));
  const me = who.split(" @ ")[0];
  check(online.some((t) => t.includes(`(${me})`)), `${me} is not listed online: ${online}`);
  console.log(`online in the lobby: ${online.join(", ")}`);

  // Type a message and send it.
  await page.fill("#thread", "browser");
  await page.fill("#message", "What does switchboard do?");
  await page.click("#send");
  await page.waitForSelector('.run .event[data-kind="agent_completed"]', { timeout: TIMEOUT });
  const kinds = await page.$$eval(".run .event", (els) => els.map((e) => e.dataset.kind));
  console.log(`events: ${kinds.join(", ")}`);
  check(JSON.stringify(kinds) === JSON.stringify(RUN), `expected ${RUN.join(", ")}`);
  const seqs = await page.$$eval(".run .event", (els) => els.map((e) => Number(e.dataset.seq)));
  check(seqs.every((s, i) => i === 0 || s === seqs[i - 1] + 1), `seqs not consecutive: ${seqs}`);
  const started = await page.textContent('.run .event[data-kind="agent_started"] .text');
  check(started.includes("What does switchboard do?"), `agent_started shows the prompt: ${started}`);
  check((await page.textContent(".run h3")).includes("thread browser"), "the run names its thread");

  // Reconnect and resume: drop the socket from inside the page (the page's own debugging hook),
  // and wait for the page to come back and report every stream recovered.
  const resumedBefore = await page.$$eval(".notice", (els) => els.length);
  await page.evaluate(() => window.switchboard.drop());
  await page.waitForFunction(() => document.getElementById("reconnects").textContent !== "0", null, { timeout: TIMEOUT });
  await page.waitForFunction(
    (n) => [...document.querySelectorAll(".notice")].slice(n).some((e) => e.textContent.startsWith("reconnected:")),
    resumedBefore,
    { timeout: TIMEOUT },
  );
  await page.waitForFunction(() => document.getElementById("status").className === "connected", null, { timeout: TIMEOUT });
  console.log("reconnected and resumed");

  // The drop was a clean close: it does not count towards the user's reconnect breaker.
  const metrics = await page.evaluate(async () => (await fetch("/metrics")).text());
  const closed = (reason) => {
    const line = metrics.split("\n").find((l) => l.startsWith(`switchboard_connections_closed_total{reason="${reason}"} `));
    return Number(line?.split(" ")[1]);
  };
  check(closed("client_abnormal") === 0, `the drop counted as abnormal: ${closed("client_abnormal")}`);
  check(closed("client_clean") >= 1, `the drop is not a clean close: ${closed("client_clean")}`);
  console.log("the drop closed cleanly");

  // And the product still works after the resume.
  await page.fill("#message", "Once more");
  await page.click("#send");
  await page.waitForFunction(() => document.querySelectorAll('.run .event[data-kind="agent_completed"]').length === 2, null, { timeout: TIMEOUT });
  const all = await page.$$eval(".run .event", (els) => els.map((e) => e.dataset.kind));
  check(JSON.stringify(all) === JSON.stringify([...RUN, ...RUN]), `second run: ${all.join(", ")}`);
  console.log("second run complete");

  // Another tab of the same user opening that thread loads its recent events from history.
  const tab = await page.context().newPage();
  await tab.goto(url);
  await tab.waitForFunction(() => document.getElementById("status").className === "connected", null, { timeout: TIMEOUT });
  await tab.fill("#thread", "browser");
  await tab.dispatchEvent("#thread", "change");
  await tab.waitForFunction(() => document.querySelectorAll('.run .event[data-kind="agent_completed"]').length === 2, null, { timeout: TIMEOUT });
  const loaded = await tab.$$eval(".run .event", (els) => els.map((e) => [e.dataset.kind, e.querySelector(".meta").textContent]));
  check(JSON.stringify(loaded.map(([k]) => k)) === JSON.stringify([...RUN, ...RUN]), `history: ${loaded.map(([k]) => k).join(", ")}`);
  check(loaded.every(([, meta]) => meta.includes("history")), "history events are not marked as such");
  await tab.close();
  console.log("a new tab loaded the thread's history");

  // A rejected token: the page says so, offers the login form, and does not retry.
  const good = new URL(url).searchParams.get("token");
  const bad = new URL(url);
  bad.searchParams.set("token", good.slice(0, -4) + (good.endsWith("AAAA") ? "BBBB" : "AAAA"));
  await page.goto(bad.href);
  await page.waitForFunction(() => document.getElementById("status").textContent === "token rejected", null, { timeout: TIMEOUT });
  const said = await page.$$eval(".notice.bad", (els) => els.map((e) => e.textContent));
  check(said.some((t) => t.includes("refused the token") && t.includes("bad signature")), `no message: ${said}`);
  check(await page.isVisible("#login"), "the login form is not shown");
  await page.waitForTimeout(2500);
  check((await page.textContent("#reconnects")) === "0", "the page retried a rejected token");
  check((await page.textContent("#status")) === "token rejected", "the page left the rejected state");
  check(await page.evaluate(() => sessionStorage.getItem("switchboard-token")) === null, "the rejected token was kept");
  // A good token pasted into the form connects.
  await page.fill("#token-input", good);
  await page.click("#login-form button");
  await page.waitForFunction(() => document.getElementById("status").className === "connected", null, { timeout: TIMEOUT });
  console.log("a rejected token is reported and not retried; a pasted one connects");

  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });

  // Server-Sent Events: the browser's own EventSource, through a TCP proxy this script can cut.
  // A run starts; after its first event the proxy drops every connection; the browser reconnects
  // by itself with Last-Event-ID, and the server replays exactly what it missed, then `resumed`.
  const target = new URL(url);
  const sockets = new Set();
  const proxy = createServer((down) => {
    const up = connect(Number(target.port), target.hostname);
    for (const [a, b] of [[down, up], [up, down]]) {
      sockets.add(a);
      a.on("data", (d) => b.write(d));
      a.on("error", () => b.destroy());
      a.on("close", () => { b.destroy(); sockets.delete(a); });
    }
  });
  proxy.listen(0, "127.0.0.1");
  await once(proxy, "listening");
  const via = `http://127.0.0.1:${proxy.address().port}`;
  const sse = await context.newPage();
  await sse.goto(`${via}/`);
  await sse.evaluate((tok) => {
    window.sseLog = { frames: [], opens: 0 };
    const es = new EventSource(`/sse?token=${encodeURIComponent(tok)}`);
    es.onopen = () => { window.sseLog.opens += 1; };
    es.onmessage = (e) => window.sseLog.frames.push({ id: e.lastEventId, frame: JSON.parse(e.data) });
  }, good);
  await sse.waitForFunction(() => window.sseLog.frames.some((f) => f.frame.type === "connected"), null, { timeout: TIMEOUT });
  const connId = await sse.evaluate(() => window.sseLog.frames.find((f) => f.frame.type === "connected").frame.conn_id);
  const posted = await fetch(`${target.origin}/sse/${connId}`, {
    method: "POST",
    headers: { Authorization: `Bearer ${good}` },
    body: JSON.stringify({ type: "message", thread_id: "sse", data: { text: "over SSE" } }),
  });
  check(posted.status === 202, `POST /sse/${connId}: ${posted.status}`);
  await sse.waitForFunction(() => window.sseLog.frames.some((f) => f.frame.type === "agent_started"), null, { timeout: TIMEOUT });
  for (const s of sockets) s.destroy(); // the network drops mid-run
  await sse.waitForFunction(() => window.sseLog.frames.some((f) => f.frame.type === "resumed"), null, { timeout: TIMEOUT });
  await sse.waitForFunction(() => window.sseLog.frames.some((f) => f.frame.type === "agent_completed"), null, { timeout: TIMEOUT });
  const log = await sse.evaluate(() => window.sseLog);
  const runEvents = log.frames.map((f) => f.frame).filter((f) => f.thread_id === "sse");
  check(JSON.stringify(runEvents.map((f) => f.type)) === JSON.stringify(RUN), `SSE run: ${runEvents.map((f) => f.type)}`);
  const sseSeqs = runEvents.map((f) => f.seq);
  check(sseSeqs.every((q, i) => i === 0 || q === sseSeqs[i - 1] + 1), `SSE seqs not consecutive: ${sseSeqs}`);
  const resumed = log.frames.find((f) => f.frame.type === "resumed").frame;
  check(resumed.recovered === true && log.opens === 2, `resume over SSE: ${JSON.stringify(resumed)}, opens ${log.opens}`);
  const replayedCount = Object.values(resumed.streams).reduce((a, r) => a + r.replayed, 0);
  console.log(`EventSource resumed after the drop: ${replayedCount} missed events replayed, the run complete and in order`);
  await sse.close();
  proxy.close();
  console.log("browser test passed");
} catch (e) {
  failed = true;
  console.error(`browser test FAILED: ${e.message}`);
  for (const line of logs) console.error(line);
  try {
    console.error((await page.textContent("body")).replace(/\s+/g, " ").slice(0, 2000));
    if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  } catch {}
} finally {
  await context.close();
  await rm(userDataDir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
