// What a close code means for reconnecting (README, "Close codes").
/** The server's close codes and what each asks of a client. */
export const CLOSE_CODES = {
    4000: { reason: "heartbeat_timeout", action: "reconnect" },
    4001: { reason: "session_expired", action: "reauthenticate" },
    4002: { reason: "replaced", action: "stop" },
    4003: { reason: "slow_consumer", action: "reconnect" },
    4004: { reason: "protocol_violation", action: "stop" },
    4005: { reason: "kicked", action: "stop" },
    4006: { reason: "server_shutdown", action: "reconnect" },
    4007: { reason: "unavailable", action: "reconnect" },
    4008: { reason: "user_limit", action: "stop" },
    4009: { reason: "max_lifetime", action: "reconnect" },
};
/**
 * What to do after close `code`. Codes the server does not document (1006 for a lost network,
 * 1001 for a proxy going away, …) are transport trouble: reconnect.
 */
export function closeInfo(code) {
    return CLOSE_CODES[code] ?? { reason: code === 1006 ? "connection_lost" : `code_${code}`, action: "reconnect" };
}
