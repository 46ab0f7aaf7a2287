// Fails unless the committed dist/ is exactly what `npm run build` makes from the current src/:
// the server embeds dist/switchboard.js (so it runs without node), and this keeps it honest.
// Builds into a temporary directory with the pinned tsc and esbuild and compares file by file.
//
//   node scripts/check-build.mjs

import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const root = resolve(new URL("..", import.meta.url).pathname);
const out = mkdtempSync(join(tmpdir(), "switchboard-dist-"));
const bin = (name) => join(root, "node_modules/.bin", name);
try {
  execFileSync(bin("tsc"), ["-p", "tsconfig.json", "--outDir", out], { cwd: root, stdio: "inherit" });
  execFileSync(bin("esbuild"), [
    "src/index.ts", "--bundle", "--format=esm", "--target=es2022", "--legal-comments=none",
    `--outfile=${join(out, "switchboard.js")}`, "--log-level=warning",
  ], { cwd: root, stdio: "inherit" });
  const committed = readdirSync(join(root, "dist")).sort();
  const fresh = readdirSync(out).sort();
  const problems = [];
  if (committed.join() !== fresh.join()) problems.push(`files differ: dist has [${committed}], a fresh build [${fresh}]`);
  for (const f of fresh) {
    let old = null;
    try { old = readFileSync(join(root, "dist", f), "utf8"); } catch {}
    if (old !== readFileSync(join(out, f), "utf8")) problems.push(`dist/${f} is not the build of src/`);
  }
  if (problems.length) {
    console.error(problems.join("\n") + "\nrun `npm run build` in clients/typescript and commit dist/");
    process.exit(1);
  }
  console.log(`dist/ matches a fresh build of src/ (${fresh.length} files)`);
} finally {
  rmSync(out, { recursive: true, force: true });
}
