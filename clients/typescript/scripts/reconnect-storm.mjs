// How 1,000 clients come back after the server restarts: every client is connected, the server
// is stopped with SIGINT (each connection closed with server_shutdown, 4006) and started again on
// the same port; the script records when each client is live again (`connected`, then `resumed`)
// and prints connects per 100 ms. Run twice: with this client's full-jitter backoff, and with the
// jitter removed (every client waits the whole window: what a fixed-delay client does), the
// baseline of a reconnect storm.
//
//   node scripts/reconnect-storm.mjs <switchboard binary> [clients=1000]
//
// Needs `npm run build` and `npm ci` (for `ws`); raises no limits itself: run it under
// `ulimit -n 8192` (the server is started the same way).

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { createServer } from "node:net";
import WebSocket from "ws";
import { Client } from "../dist/index.js";

const bin = process.argv[2];
const N = Number(process.argv[3] ?? 1000);
const SECRET = "reconnect-storm-secret, 32 bytes or more";
const b64 = (v) => Buffer.from(v).toString("base64url");
const token = (user) => {
  const head = b64(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64(JSON.stringify({ sub: user, tenant: "storm", tier: "enterprise", roles: [], exp: Math.floor(Date.now() / 1000) + 3600 }));
  return `${head}.${body}.${createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url")}`;
};
const port = await new Promise((ok) => {
  const s = createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => ok(p)); });
});

function start() {
  const child = spawn(bin, ["--listen", `127.0.0.1:${port}`, "--jwt-secret", SECRET, "--admin-key", "reconnect-storm-admin-key",
    "--max-connections", String(N + 100)], { stdio: ["ignore", "pipe", "inherit"] });
  return new Promise((ok) => {
    let out = "";
    child.stdout.on("data", (d) => { out += d; if (out.includes("listening on")) ok(child); });
  });
}
const stop = (child) => new Promise((ok) => { child.once("exit", ok); child.kill("SIGINT"); });

// Every connection attempt's start, to see how attempts bunch up (a storm) or spread.
let attempts = [];
class CountingWebSocket extends WebSocket {
  constructor(url) {
    attempts.push(performance.now());
    super(url);
  }
}

async function run(label, random) {
  let server = await start();
  const clients = [];
  for (let i = 0; i < N; i++) {
    const c = new Client({ url: `ws://127.0.0.1:${port}/ws`, token: token(`u${i}`), WebSocket: CountingWebSocket, random });
    clients.push(c);
    await c.connect();
  }
  const live = [];
  for (const c of clients) c.on("resumed", () => live.push(performance.now()));
  attempts = [];
  const down = performance.now();
  await stop(server);
  server = await start();
  const t0 = performance.now();
  while (live.length < N) await new Promise((r) => setTimeout(r, 50));
  const buckets = new Map();
  for (const t of live) { const b = Math.max(0, Math.floor((t - t0) / 100)); buckets.set(b, (buckets.get(b) ?? 0) + 1); }
  const peak = Math.max(...buckets.values());
  const last = Math.max(...live) - t0;
  const per10 = new Map();
  for (const t of attempts) { const b = Math.floor((t - down) / 10); per10.set(b, (per10.get(b) ?? 0) + 1); }
  const burst = Math.max(...per10.values());
  console.log(`${label}: server down for ${((t0 - down) / 1000).toFixed(2)} s; all ${N} live again ${(last / 1000).toFixed(2)} s after it was back; ` +
    `${attempts.length} connection attempts, at most ${burst} within one 10 ms window; peak ${peak} resumes per 100 ms`);
  console.log("  resumes per 100 ms: " + [...buckets.keys()].sort((a, b) => a - b).map((b) => `${b}:${buckets.get(b)}`).join(" "));
  for (const c of clients) c.close();
  await stop(server);
}

await run("full jitter (this client)", Math.random);
await run("no jitter (baseline)", () => 0.999);
