// The fixture written by the Rust test `tests/client_fixtures.rs` from the real hub: every sample
// decodes to the frame type it claims, the control types are exactly the ones the client knows,
// and the TypeScript twin (type-checked by tsc against the client's types) holds the same samples.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { resolve } from "node:path";

import { CONTROL_TYPES, decodeFrame, FrameError } from "../src/index.js";
import { samples } from "./server-frames.generated.js";

const here = fileURLToPath(new URL(".", import.meta.url));
const fixture = JSON.parse(readFileSync(resolve(here, "../../../fixtures/server-frames.json"), "utf8")) as {
  frames: Record<string, unknown>[];
};

test("every sample of the fixture decodes to the type it claims", () => {
  assert.ok(fixture.frames.length >= CONTROL_TYPES.length + 5);
  for (const wire of fixture.frames) {
    const f = decodeFrame(JSON.stringify(wire));
    if ((CONTROL_TYPES as readonly string[]).includes(wire.type as string)) {
      assert.equal(f.type, wire.type);
      assert.deepEqual(f, wire);
    } else {
      assert.equal(f.type, "event");
      assert.ok(f.type === "event" && f.kind === wire.type && f.seq === wire.seq && f.epoch === wire.epoch);
    }
  }
});

test("the fixture has a sample of every control frame type and of every agent kind", () => {
  const types = new Set(fixture.frames.map((f) => f.type as string));
  for (const t of CONTROL_TYPES) assert.ok(types.has(t), `a sample of ${t}`);
  for (const kind of ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"]) {
    assert.ok(types.has(kind), `a sample of ${kind}`);
  }
});

test("the type-checked TypeScript twin holds the same samples", () => {
  assert.deepEqual(JSON.parse(JSON.stringify(samples)), fixture.frames);
});

test("what is not a frame of the protocol is refused with a FrameError", () => {
  const bad = [
    "not json",
    "[1,2]",
    '{"no":"type"}',
    '{"type":"connected","conn_id":"x"}',
    '{"type":"resumed","recovered":true,"streams":{"u":{"epoch":1}}}',
    '{"type":"agent_started","stream":"u","seq":1}',
    '{"type":"some_new_control_frame"}',
  ];
  for (const text of bad) assert.throws(() => decodeFrame(text), FrameError, text);
});
