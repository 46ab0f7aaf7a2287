// switchboard's TypeScript client: browsers and node 20+ (pass a WebSocket implementation).
export * from "./backoff.js";
export * from "./close.js";
export * from "./frames.js";
export * from "./history.js";
export * from "./sse.js";
export * from "./stream.js";
export * from "./types.js";
export * from "./client.js";
