// The Server-Sent Events transport, behind the WebSocket interface the client already drives:
// `GET /sse` streamed with fetch (so the token goes in a header, and the client's own backoff
// and close-code handling apply, not EventSource's fixed retry), client frames as
// `POST /sse/{conn_id}` in order, `event: close` as the close code. A browser's plain
// EventSource works against the same endpoint too (its `Last-Event-ID` resumes exactly).
/** Positions as the server's SSE event id: base64url of `{"<stream>":[epoch,seq],…}`. */
export function encodeEventId(positions) {
    const json = JSON.stringify(Object.fromEntries([...positions].map(([k, p]) => [k, [p.epoch, p.seq]])));
    let bin = "";
    for (const b of new TextEncoder().encode(json))
        bin += String.fromCharCode(b);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
/** One SSE connection, shaped like a WebSocket for the client. */
export class SseSocket {
    readyState = 0;
    onopen = null;
    onmessage = null;
    onclose = null;
    onerror = null;
    /** Set when the server answered the `GET` with an error status. */
    refusal = null;
    #abort = new AbortController();
    #fetch;
    #base;
    #token;
    #connId = null;
    #posting = Promise.resolve();
    #closed = false;
    constructor(base, token, opts) {
        this.#fetch = opts.fetch ?? globalThis.fetch.bind(globalThis);
        this.#base = new URL(base);
        this.#token = token;
        const url = new URL("sse", this.#base);
        const threads = [...opts.threads];
        if (threads.length)
            url.searchParams.set("threads", threads.join(","));
        const runs = [...(opts.runs ?? [])];
        if (runs.length)
            url.searchParams.set("runs", runs.join(","));
        const headers = { Authorization: `Bearer ${token}`, Accept: "text/event-stream" };
        if (opts.lastEventId)
            headers["Last-Event-ID"] = opts.lastEventId;
        void this.#run(url, headers);
    }
    async #run(url, headers) {
        let res;
        try {
            res = await this.#fetch(url, { headers, signal: this.#abort.signal, cache: "no-store" });
        }
        catch {
            return this.#end(1006, "unreachable");
        }
        if (!res.ok || !res.body) {
            let body = {};
            try {
                body = (await res.json());
            }
            catch {
                /* not JSON */
            }
            const retry = Number(res.headers.get("retry-after"));
            this.refusal = {
                status: res.status,
                error: body.error ?? String(res.status),
                message: body.message ?? "",
                retryAfterMs: Number.isFinite(retry) ? retry * 1000 : 0,
            };
            return this.#end(1006, `http_${res.status}`);
        }
        this.readyState = 1;
        this.onopen?.({});
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        let event = "";
        let data = [];
        try {
            for (;;) {
                const { value, done } = await reader.read();
                if (done)
                    break;
                buf += value;
                let nl;
                while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
                    const line = buf.slice(0, nl);
                    buf = buf.slice(nl + (buf.startsWith("\r\n", nl) ? 2 : 1));
                    if (line === "") {
                        if (data.length)
                            this.#dispatch(event, data.join("\n"));
                        event = "";
                        data = [];
                        if (this.#closed)
                            return;
                    }
                    else if (!line.startsWith(":")) {
                        const colon = line.indexOf(":");
                        const field = colon < 0 ? line : line.slice(0, colon);
                        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
                        if (field === "data")
                            data.push(val);
                        else if (field === "event")
                            event = val;
                    }
                }
            }
        }
        catch {
            /* aborted or broken: a close follows */
        }
        this.#end(1006, "stream_ended");
    }
    #dispatch(event, data) {
        if (event === "close") {
            let code = 1006;
            let reason = "";
            try {
                ({ code, reason } = JSON.parse(data));
            }
            catch {
                /* keep 1006 */
            }
            this.#abort.abort();
            return this.#end(code, reason);
        }
        if (this.#connId === null) {
            const m = /"type":"connected","conn_id":"([^"]+)"/.exec(data);
            if (m)
                this.#connId = m[1];
        }
        this.onmessage?.({ data });
    }
    #end(code, reason) {
        if (this.#closed)
            return;
        this.#closed = true;
        this.readyState = 3;
        this.onclose?.({ code, reason });
    }
    send(text) {
        if (this.readyState !== 1 || this.#connId === null)
            throw new Error("the SSE stream is not open");
        const url = new URL(`sse/${encodeURIComponent(this.#connId)}`, this.#base);
        const init = { method: "POST", headers: { Authorization: `Bearer ${this.#token}` }, body: text };
        // One at a time, so frames reach the hub in the order they were sent.
        this.#posting = this.#posting.then(() => this.#fetch(url, init)).catch(() => { });
    }
    close(code = 1000, reason = "") {
        this.#abort.abort();
        // Like a WebSocket, the close is reported asynchronously.
        queueMicrotask(() => this.#end(code, reason));
    }
}
