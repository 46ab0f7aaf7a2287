// Bundle size, minified + gzipped (level 9), of this client beside centrifuge-js and
// socket.io-client as published on npm (pinned below, installed into a temporary directory):
// each is bundled for the browser by the pinned esbuild from one entry that imports the client
// class and nothing else. Needs `npm ci` and `npm run build` first.
//
//   node scripts/size.mjs

import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { gzipSync } from "node:zlib";
import { build } from "esbuild";

const PEERS = { centrifuge: "5.8.0", "socket.io-client": "4.8.4" };
const root = resolve(new URL("..", import.meta.url).pathname);
const work = mkdtempSync(join(tmpdir(), "switchboard-size-"));
try {
  writeFileSync(join(work, "package.json"), JSON.stringify({ private: true, type: "module" }));
  const specs = Object.entries(PEERS).map(([name, v]) => `${name}@${v}`);
  execFileSync("npm", ["install", "--no-audit", "--no-fund", "--loglevel=error", ...specs], { cwd: work, stdio: "inherit" });
  const entries = {
    "switchboard-client (this package)": `export { Client } from ${JSON.stringify(join(root, "dist/index.js"))};`,
    [`centrifuge ${PEERS.centrifuge}`]: `export { Centrifuge } from "centrifuge";`,
    [`socket.io-client ${PEERS["socket.io-client"]}`]: `export { io } from "socket.io-client";`,
  };
  console.log("| client | minified | minified + gzip |\n|---|---|---|");
  for (const [name, contents] of Object.entries(entries)) {
    const out = await build({
      stdin: { contents, resolveDir: work, loader: "js" },
      bundle: true,
      minify: true,
      format: "esm",
      platform: "browser",
      target: "es2022",
      legalComments: "none",
      write: false,
      logLevel: "error",
    });
    const bytes = out.outputFiles[0].contents;
    const gz = gzipSync(bytes, { level: 9 }).length;
    console.log(`| ${name} | ${(bytes.length / 1024).toFixed(1)} KB | ${(gz / 1024).toFixed(1)} KB |`);
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
