// The Socket.IO peer of switchboard's end-to-end benchmark (`scripts/bench-e2e.sh`,
// `examples/loadgen.rs`): the same job as `cargo run --example server`, the way people write it
// with Socket.IO today.
//
// - Clients connect over WebSocket (`/socket.io/?EIO=4&transport=websocket`) and authenticate
//   with an HS256 JWT in the Socket.IO handshake (`auth: { token }`), verified by a middleware
//   with the same claims as switchboard's server (`sub`, `tenant`, `exp`).
// - Each socket joins its user's room and its tenant's room.
// - `POST /publish` (admin key as `Authorization: Bearer <key>`) takes switchboard's flat body,
//   `{"tenant", "user"?, "kind", "data"}`, and emits `kind` with `data` to the user's room or,
//   without `user`, to the tenant's room. It answers `{"delivered": <sockets in the room>}`. A
//   JSON array of 1 to 100 such bodies is a batch, answered `{"results": [...]}` with a `status`
//   per entry, as switchboard's batch publish is.
// - `GET /healthz` answers `{"status":"ok","connections":N}`.
//
// Plain Socket.IO 4 on one node process with its defaults (in-memory adapter, heartbeats every
// 25 s, no compression): nothing switched off, nothing added.
//
//   node server.js --listen 127.0.0.1:8081 --jwt-secret S --admin-key K
//
// Cluster mode (`scripts/bench-cluster.sh`): with `--redis URL` (or PEER_REDIS) several processes
// share one Redis through Socket.IO's own adapters, so that a publish through any node reaches
// clients on every node. `--adapter` (PEER_ADAPTER) picks which:
//
// - `redis` (default): `@socket.io/redis-adapter`, Redis pub/sub. Socket.IO's connection-state
//   recovery is not available with it (its sessions are not shared), so a client that moves to
//   another node reconnects plainly.
// - `streams`: `@socket.io/redis-streams-adapter`, one Redis stream per namespace, with
//   `connectionStateRecovery` on (2 minutes): event packets carry their stream offset, and a
//   client that reconnects with its `pid` and last offset gets the packets it missed, on any
//   node, if its session was saved. Socket.IO saves a session when the server sees the
//   connection close, so a node that dies without closing (SIGKILL) saves none.
//
// In cluster mode `POST /publish` answers `{"published":true}` once the emit is handed to the
// adapter (Socket.IO's emit does not report whether Redis took it, nor the recipients on other
// nodes), and `/healthz` answers only once the Redis connections are up.
//
//   node server.js --listen 127.0.0.1:8082 --jwt-secret S --admin-key K \
//     --redis redis://127.0.0.1:6379/ --adapter streams

"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const jwt = require("jsonwebtoken");

function parseArgs(argv) {
  const opts = {
    listen: process.env.PEER_LISTEN || "127.0.0.1:8081",
    jwtSecret: process.env.PEER_JWT_SECRET,
    adminKey: process.env.PEER_ADMIN_KEY,
    redis: process.env.PEER_REDIS,
    adapter: process.env.PEER_ADAPTER || "redis",
  };
  for (let i = 2; i < argv.length; i++) {
    const [flag, inline] = argv[i].split("=", 2);
    const value = () => (inline !== undefined ? inline : argv[++i]);
    switch (flag) {
      case "--listen": opts.listen = value(); break;
      case "--jwt-secret": opts.jwtSecret = value(); break;
      case "--admin-key": opts.adminKey = value(); break;
      case "--redis": opts.redis = value(); break;
      case "--adapter": opts.adapter = value(); break;
      case "--help":
        console.log(
          "node server.js --listen HOST:PORT --jwt-secret SECRET --admin-key KEY [--redis URL [--adapter redis|streams]]",
        );
        process.exit(0);
        break;
      default:
        console.error(`unknown argument ${argv[i]}`);
        process.exit(2);
    }
  }
  if (!opts.jwtSecret || !opts.adminKey) {
    console.error("--jwt-secret and --admin-key are required");
    process.exit(2);
  }
  if (!["redis", "streams"].includes(opts.adapter)) {
    console.error(`unknown --adapter ${opts.adapter} (redis or streams)`);
    process.exit(2);
  }
  return opts;
}

const opts = parseArgs(process.argv);
// Redis connections to wait for before listening (cluster mode).
const ready = [];
const userRoom = (tenant, user) => `u:${tenant}:${user}`;
const tenantRoom = (tenant) => `t:${tenant}`;

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

// One envelope of a publish: emitted to its room; the answer's body (without `status`), or an
// error to refuse it with.
function publishOne(body) {
  if (body === null || typeof body !== "object" || typeof body.tenant !== "string" || typeof body.kind !== "string") {
    return { status: 400, body: { error: "bad_target", message: "`tenant` and `kind` are required" } };
  }
  const room = typeof body.user === "string" ? userRoom(body.tenant, body.user) : tenantRoom(body.tenant);
  io.to(room).emit(body.kind, body.data === undefined ? null : body.data);
  if (opts.redis) return { status: 200, body: { published: true } };
  const members = io.of("/").adapter.rooms.get(room);
  return { status: 200, body: { delivered: members ? members.size : 0 } };
}

// A JSON array is a batch, as on switchboard: 1 to 100 envelopes emitted in order, answered
// `{"results": [{…, "status"}, …]}`.
function publish(req, res) {
  if (req.headers.authorization !== `Bearer ${opts.adminKey}`) {
    return reply(res, 401, { error: "unauthorized" });
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch (e) {
      return reply(res, 400, { error: "bad_request", message: e.message });
    }
    if (Array.isArray(body)) {
      if (body.length < 1 || body.length > 100) {
        return reply(res, 400, { error: "bad_batch", message: "a batch holds 1 to 100 envelopes" });
      }
      const results = body.map((entry) => {
        const one = publishOne(entry);
        return { ...one.body, status: one.status };
      });
      return reply(res, 200, { results });
    }
    const one = publishOne(body);
    reply(res, one.status, one.body);
  });
}

const httpServer = http.createServer((req, res) => {
  const path = req.url.split("?", 1)[0];
  if (req.method === "POST" && path === "/publish") return publish(req, res);
  if (req.method === "GET" && path === "/healthz") {
    return reply(res, 200, { status: "ok", connections: io.engine.clientsCount });
  }
  reply(res, 404, { error: "not_found" });
});

const io = new Server(httpServer, clusterOptions());

// The adapter (and recovery) in cluster mode; nothing in single-process mode.
function clusterOptions() {
  const base = { serveClient: false };
  if (!opts.redis) return base;
  const { createClient } = require("redis");
  const client = (role) => {
    const c = createClient({ url: opts.redis });
    // An unhandled `error` event would end the process; Redis outages are logged and retried.
    c.on("error", (e) => console.error(`redis ${role}: ${e.message}`));
    return c;
  };
  if (opts.adapter === "streams") {
    const { createAdapter } = require("@socket.io/redis-streams-adapter");
    const c = client("streams");
    ready.push(c.connect());
    return {
      ...base,
      adapter: createAdapter(c),
      connectionStateRecovery: { maxDisconnectionDuration: 2 * 60 * 1000 },
    };
  }
  const { createAdapter } = require("@socket.io/redis-adapter");
  const pub = client("pub");
  const sub = client("sub");
  ready.push(pub.connect(), sub.connect());
  return { ...base, adapter: createAdapter(pub, sub) };
}

io.use((socket, next) => {
  const token = socket.handshake.auth && socket.handshake.auth.token;
  if (typeof token !== "string") return next(new Error("unauthorized"));
  try {
    const claims = jwt.verify(token, opts.jwtSecret, { algorithms: ["HS256"] });
    if (!claims.sub || !claims.tenant) return next(new Error("unauthorized"));
    socket.data.tenant = claims.tenant;
    socket.data.user = claims.sub;
    next();
  } catch {
    next(new Error("unauthorized"));
  }
});

io.on("connection", (socket) => {
  const { tenant, user } = socket.data;
  socket.join([userRoom(tenant, user), tenantRoom(tenant)]);
});

const sep = opts.listen.lastIndexOf(":");
const host = opts.listen.slice(0, sep);
const port = Number(opts.listen.slice(sep + 1));
Promise.all(ready).then(
  () =>
    httpServer.listen(port, host, () => {
      const addr = httpServer.address();
      const mode = opts.redis ? `, ${opts.adapter} adapter over ${opts.redis}` : "";
      console.log(`socket.io peer listening on http://${addr.address}:${addr.port} (pid ${process.pid}${mode})`);
    }),
  (e) => {
    console.error(`redis: ${e.message}`);
    process.exit(1);
  },
);

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    io.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
