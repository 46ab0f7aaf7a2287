/** What the client does after the connection closed. */
export type CloseAction = 
/** Reconnect after a backoff, then resume. */
"reconnect"
/** Get a fresh token from the token provider, then reconnect and resume. */
 | "reauthenticate"
/** Do not reconnect: the server said retrying cannot help. */
 | "stop";
/** A close code the server documents. */
export interface CloseInfo {
    reason: string;
    action: CloseAction;
}
/** The server's close codes and what each asks of a client. */
export declare const CLOSE_CODES: Readonly<Record<number, CloseInfo>>;
/**
 * What to do after close `code`. Codes the server does not document (1006 for a lost network,
 * 1001 for a proxy going away, …) are transport trouble: reconnect.
 */
export declare function closeInfo(code: number): CloseInfo;
