// What the tests share: the real `switchboard` binary on a free port of 127.0.0.1 (stopped by
// PID), HS256 tokens signed with the secret it was given, `POST /publish`, and a TCP proxy
// between client and server that can cut every connection (a dropped network), pause the
// server's bytes, or deliver every event frame twice.

import { spawn, type ChildProcess } from "node:child_process";
import { after, afterEach, before } from "node:test";
import { createHmac } from "node:crypto";
import { once } from "node:events";
import { createServer, connect, type AddressInfo, type Server, type Socket } from "node:net";
import { fileURLToPath } from "node:url";
import { resolve } from "node:path";
import WebSocket from "ws";

import { Client, type ClientOptions, type WebSocketConstructor } from "../src/index.js";

export const SECRET = "typescript-client-test-secret, 32+ bytes";
export const ADMIN = "typescript-client-admin-key";

/** The binary under test: `SWITCHBOARD_BIN`, else the workspace's debug build. */
export function binary(): string {
  if (process.env.SWITCHBOARD_BIN) return process.env.SWITCHBOARD_BIN;
  const here = fileURLToPath(new URL(".", import.meta.url));
  return resolve(here, "../../../../target/debug/switchboard");
}

/** A free TCP port of 127.0.0.1 right now. */
export async function freePort(): Promise<number> {
  const s = createServer();
  s.listen(0, "127.0.0.1");
  await once(s, "listening");
  const port = (s.address() as AddressInfo).port;
  s.close();
  await once(s, "close");
  return port;
}

/** One running server process. */
export class SwitchboardServer {
  log = "";
  private constructor(
    readonly child: ChildProcess,
    readonly port: number,
  ) {}

  /** Starts the binary on `port` (a free one by default) and waits until it listens. */
  static async start(opts: { port?: number; args?: string[] } = {}): Promise<SwitchboardServer> {
    const port = opts.port ?? (await freePort());
    const args = [
      "--listen", `127.0.0.1:${port}`,
      "--jwt-secret", SECRET,
      "--admin-key", ADMIN,
      "--agent-pace-ms", "20",
      ...(opts.args ?? []),
    ];
    const child = spawn(binary(), args, { stdio: ["ignore", "pipe", "pipe"] });
    const server = new SwitchboardServer(child, port);
    const listening = new Promise<void>((ok, fail) => {
      const timer = setTimeout(() => fail(new Error(`no "listening on" within 20 s:\n${server.log}`)), 20_000);
      const onData = (d: Buffer) => {
        server.log += d.toString();
        if (server.log.includes("listening on")) {
          clearTimeout(timer);
          ok();
        }
      };
      child.stdout!.on("data", onData);
      child.stderr!.on("data", (d: Buffer) => (server.log += d.toString()));
      child.once("exit", (code) => fail(new Error(`server exited (${code}):\n${server.log}`)));
    });
    await listening;
    return server;
  }

  get http(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get ws(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** SIGINT (the server's Ctrl-C: every connection closed with 4006), then waits for the exit. */
  async shutdown(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = once(this.child, "exit");
    this.child.kill("SIGINT");
    await exited;
  }

  /** SIGKILL by PID. */
  kill(): void {
    if (this.child.exitCode === null) this.child.kill("SIGKILL");
  }

  /** `POST /publish` with the admin key; returns the answer's body. */
  async publish(body: unknown): Promise<Record<string, unknown>> {
    const res = await fetch(`${this.http}/publish`, {
      method: "POST",
      headers: { Authorization: `Bearer ${ADMIN}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const json = (await res.json()) as Record<string, unknown>;
    if (res.status !== 200) throw new Error(`publish: ${res.status} ${JSON.stringify(json)}`);
    return json;
  }

  /** The value of one un-labelled series of `/metrics`. */
  async metric(name: string): Promise<number> {
    const text = await (await fetch(`${this.http}/metrics`)).text();
    const line = text.split("\n").find((l) => l.startsWith(name + " "));
    return Number(line?.split(" ")[1] ?? NaN);
  }
}

const b64 = (v: string | Buffer) => Buffer.from(v).toString("base64url");

/** An HS256 token for `user` of `tenant`, valid for `ttlSecs`. */
export function token(
  user: string,
  opts: { tenant?: string; ttlSecs?: number; rooms?: string[]; name?: string; secret?: string; tier?: string } = {},
): string {
  const claims = {
    sub: user,
    tenant: opts.tenant ?? "acme",
    tier: opts.tier ?? "enterprise",
    roles: ["member"],
    rooms: opts.rooms ?? [],
    exp: Math.floor(Date.now() / 1000) + (opts.ttlSecs ?? 3600),
    ...(opts.name ? { name: opts.name } : {}),
  };
  const head = b64(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64(JSON.stringify(claims));
  const sig = createHmac("sha256", opts.secret ?? SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** A client of node's `ws` package, closed by [`closeAll`]. */
const clients: Client[] = [];
export function client(opts: Omit<ClientOptions, "WebSocket">): Client {
  const c = new Client({ WebSocket: WebSocket as unknown as WebSocketConstructor, ...opts });
  clients.push(c);
  return c;
}
export function closeAll(): void {
  for (const c of clients.splice(0)) c.close();
}

/** Every proxy a test started and did not close: closed after each test ([`serverPerFile`]). */
const proxies = new Set<Proxy>();

/**
 * One server for a test file: started before its first test (handed to `set`), shut down after
 * its last, every client closed after each test.
 */
export function serverPerFile(set: (server: SwitchboardServer) => void): void {
  let server: SwitchboardServer | undefined;
  before(async () => {
    server = await SwitchboardServer.start();
    set(server);
  });
  after(async () => {
    await server?.shutdown();
  });
  afterEach(async () => {
    closeAll();
    // A proxy left listening would keep the file's process alive after its last test.
    await Promise.all([...proxies].map((p) => p.close()));
  });
}

/** Resolves when `cond()` holds (polled), or rejects after `ms`. */
export async function until(cond: () => boolean, what: string, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A TCP proxy in front of a server. `drop()` cuts every connection (the client sees 1006, the
 * server a transport error); `pause()` holds the server's bytes back; `holdNew()` keeps new
 * connections waiting, unanswered, until `releaseNew()`; `duplicateEvents` makes the
 * proxy send every event frame of the server twice (server frames are unmasked, so the proxy
 * can read them: a WebSocket text frame is 2 bytes of header, an extended length, the payload).
 */
export class Proxy {
  readonly pairs = new Set<[Socket, Socket]>();
  duplicateEvents = false;
  paused = false;
  connections = 0;
  private held: (() => void)[] = [];
  /** Connections accepted while new ones are held, and their target: `null` when not holding. */
  private waiting: [Socket, number][] | null = null;

  private constructor(
    readonly server: Server,
    readonly port: number,
  ) {}

  static async start(target: number): Promise<Proxy> {
    let proxy: Proxy | undefined;
    const server = createServer((down) => proxy!.accept(down, target));
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    proxy = new Proxy(server, (server.address() as AddressInfo).port);
    proxies.add(proxy);
    return proxy;
  }

  get ws(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  private accept(down: Socket, target: number): void {
    // Held: nothing is read from it (a socket without a `data` listener buffers) until released.
    if (this.waiting) return void this.waiting.push([down, target]);
    this.connections += 1;
    const up = connect(target, "127.0.0.1");
    const pair: [Socket, Socket] = [down, up];
    this.pairs.add(pair);
    const end = () => {
      down.destroy();
      up.destroy();
      this.pairs.delete(pair);
    };
    down.on("error", end).on("close", end);
    up.on("error", end).on("close", end);
    down.on("data", (d) => up.write(d));
    let upgraded = false;
    let raw = false;
    let buf = Buffer.alloc(0);
    up.on("data", (d: Buffer) => {
      const forward = () => {
        if (raw) return void down.write(d);
        if (!upgraded) {
          // The HTTP response of the upgrade: pass it through, frames follow. Any other
          // response (an SSE stream, plain HTTP) passes through untouched.
          buf = Buffer.concat([buf, d]);
          const i = buf.indexOf("\r\n\r\n");
          if (i < 0) return;
          if (!buf.subarray(0, 12).toString().startsWith("HTTP/1.1 101")) {
            raw = true;
            down.write(buf);
            return;
          }
          down.write(buf.subarray(0, i + 4));
          upgraded = true;
          d = buf.subarray(i + 4);
          buf = Buffer.alloc(0);
        }
        buf = Buffer.concat([buf, d]);
        for (;;) {
          const frame = nextFrame(buf);
          if (!frame) break;
          buf = buf.subarray(frame.length);
          down.write(frame);
          if (this.duplicateEvents && isEvent(frame)) down.write(frame);
        }
      };
      if (this.paused) this.held.push(forward);
      else forward();
    });
  }

  drop(): void {
    for (const [a, b] of this.pairs) {
      a.destroy();
      b.destroy();
    }
    this.pairs.clear();
  }

  pause(): void {
    this.paused = true;
  }

  /** New connections wait, unanswered, until `releaseNew()`. */
  holdNew(): void {
    this.waiting ??= [];
  }

  /** Lets the held connections through to the server, and any new one from now on. */
  releaseNew(): void {
    const waiting = this.waiting ?? [];
    this.waiting = null;
    for (const [down, target] of waiting) {
      if (!down.destroyed) this.accept(down, target);
    }
  }

  resume(): void {
    this.paused = false;
    for (const f of this.held.splice(0)) f();
  }

  /** Stops listening and cuts every connection; resolves once the listening socket is closed. */
  async close(): Promise<void> {
    proxies.delete(this);
    if (!this.server.listening) return;
    const closed = once(this.server, "close");
    this.server.close();
    this.drop();
    for (const [down] of this.waiting ?? []) down.destroy();
    this.waiting = null;
    await closed;
  }
}

/** The first whole WebSocket frame of `buf` (server frames are never masked), or null. */
function nextFrame(buf: Buffer): Buffer | null {
  if (buf.length < 2) return null;
  let len = buf[1]! & 0x7f;
  let head = 2;
  if (len === 126) {
    if (buf.length < 4) return null;
    len = buf.readUInt16BE(2);
    head = 4;
  } else if (len === 127) {
    if (buf.length < 10) return null;
    len = Number(buf.readBigUInt64BE(2));
    head = 10;
  }
  if (buf.length < head + len) return null;
  return buf.subarray(0, head + len);
}

/** Whether a frame is a single-frame text message holding an event (it has a `seq`). */
function isEvent(frame: Buffer): boolean {
  if (frame[0] !== 0x81) return false;
  const len = frame[1]! & 0x7f;
  const head = len === 126 ? 4 : len === 127 ? 10 : 2;
  const text = frame.subarray(head).toString();
  return text.includes('"seq":') && !text.startsWith('{"type":"joined"') && !text.startsWith('{"type":"resync"');
}
