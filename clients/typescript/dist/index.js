/**
 * @xcord/gateway-client: the official client of the XCORD Gateway
 * (SPEC.md §3 client protocol, §4 channels, §6 presence/typing, §8 resume/refresh).
 *
 * One self-contained ES module with no imports and no runtime dependencies, so that
 * the gateway can embed the compiled file and serve it as-is (the admin console
 * loads it from /ui/client.js). Works in browsers, Tauri webviews and Node >= 20
 * (pass the `ws` package's constructor as `WebSocket` where there is no global one).
 */
const KNOWN_EVENTS = new Set([
    "dm.message.new",
    "dm.message.read",
    "dm.typing",
    "server.message.new",
    "server.member.presence",
    "server.member.join",
    "server.typing",
    "notification.new",
    "live.chat.message",
    "live.viewer.count",
    "user.presence",
]);
/** True for an event name this client version types. */
export function isKnownEventName(name) {
    return KNOWN_EVENTS.has(name);
}
/** Type guard: `if (isEvent(e, "server.message.new")) e.payload.channelId`. */
export function isEvent(e, name) {
    return e.known && e.event === name;
}
// ---------------------------------------------------------------------------
// Helpers (exported for tests and for applications that want the same numbers)
// ---------------------------------------------------------------------------
/**
 * Full-jitter exponential backoff (README, "Resume, token refresh, reconnecting"):
 * `random(0, min(cap, base · 2^attempt))`.
 */
export function backoffDelay(attempt, baseMs, capMs, random = Math.random) {
    const ceiling = Math.min(capMs, baseMs * Math.pow(2, Math.max(0, attempt)));
    const r = random();
    const clamped = r >= 0 && r < 1 ? r : r >= 1 ? 1 : 0;
    return Math.floor(clamped * ceiling);
}
/** The claims of a JWT, without verifying it (null when it is not a JWT). */
export function decodeJwtClaims(token) {
    const parts = token.split(".");
    if (parts.length !== 3)
        return null;
    try {
        let b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
        while (b64.length % 4 !== 0)
            b64 += "=";
        const bin = atob(b64);
        const bytes = new Uint8Array(bin.length);
        for (let i = 0; i < bin.length; i++)
            bytes[i] = bin.charCodeAt(i);
        const claims = JSON.parse(new TextDecoder().decode(bytes));
        return claims !== null && typeof claims === "object" && !Array.isArray(claims) ? claims : null;
    }
    catch {
        return null;
    }
}
/**
 * When to send REFRESH for a token (ms since epoch), or null when it has no `exp`:
 * `exp − min(leadMs, 10% of its lifetime)`.
 */
export function refreshAt(token, nowMs, leadMs = 60000) {
    const claims = decodeJwtClaims(token);
    if (!claims || typeof claims.exp !== "number")
        return null;
    const expMs = claims.exp * 1000;
    const issuedMs = typeof claims.iat === "number" && claims.iat * 1000 <= nowMs ? claims.iat * 1000 : nowMs;
    const lifetime = Math.max(0, expMs - issuedMs);
    return expMs - Math.min(leadMs, lifetime / 10);
}
// ---------------------------------------------------------------------------
// Internals
// ---------------------------------------------------------------------------
const OPEN = 1;
const MAX_TIMEOUT = 0x7fffffff;
/** Close codes after which the client never reconnects by itself. */
const NO_RETRY_CODES = new Set([4003, 4005]);
export class GatewayClient {
    constructor(options) {
        this.listeners = new Map();
        this.eventListeners = new Map();
        this.ws = null;
        /** Bumped whenever a socket is abandoned, so its late callbacks are ignored. */
        this.gen = 0;
        this._state = "idle";
        this.userClosed = false;
        this.forceFreshToken = false;
        this.authFailures = 0;
        this._sessionId = null;
        this._userId = null;
        this.heartbeatMs = 30000;
        this._lastSeq = 0;
        /** Set when the session was lost, so the next HELLO_ACK reports a gap. */
        this.lostSession = null;
        this.attempt = 0;
        this.held = new Set();
        this.outbox = [];
        this.expects = [];
        this.presence = null;
        this.presenceUnsent = false;
        this.typingState = new Map();
        this.typingStartedAt = new Map();
        this.reconnectTimer = null;
        this.handshakeTimer = null;
        this.deadTimer = null;
        this.heartbeatTimer = null;
        this.refreshTimer = null;
        this.readyWaiters = [];
        /** Events dropped because their seq was not above the last one seen (diagnostics). */
        this.duplicatesDropped = 0;
        if (!options || typeof options.url !== "string")
            throw new TypeError("GatewayClient: options.url is required");
        if (options.token === undefined && options.getToken === undefined) {
            throw new TypeError("GatewayClient: a token or a getToken callback is required");
        }
        this.opts = {
            backoffBaseMs: 500,
            backoffCapMs: 30000,
            handshakeTimeoutMs: 15000,
            typingRepeatMs: 8000,
            refreshLeadMs: 60000,
            ...stripUndefined(options),
        };
        this.random = options.random ?? Math.random;
        this.token = options.token ?? null;
        for (const c of options.channels ?? [])
            this.held.add(c);
    }
    // ----- public state -----
    get state() {
        return this._state;
    }
    /** The current (or resumable) session id. */
    get sessionId() {
        return this._sessionId;
    }
    /** The user id HELLO_ACK reported. */
    get userId() {
        return this._userId;
    }
    /** The last event seq seen in this session (0 before any). */
    get lastSeq() {
        return this._lastSeq;
    }
    /** The channels the client holds (granted, or to be subscribed again on a new session). */
    get channels() {
        return [...this.held];
    }
    // ----- events -----
    /** Listen to a client event; returns a function that removes the listener. */
    on(name, listener) {
        let set = this.listeners.get(name);
        if (!set)
            this.listeners.set(name, (set = new Set()));
        set.add(listener);
        return () => this.off(name, listener);
    }
    off(name, listener) {
        this.listeners.get(name)?.delete(listener);
    }
    once(name, listener) {
        const off = this.on(name, (v) => {
            off();
            listener(v);
        });
        return off;
    }
    onEvent(name, listener) {
        let set = this.eventListeners.get(name);
        if (!set)
            this.eventListeners.set(name, (set = new Set()));
        set.add(listener);
        return () => {
            this.eventListeners.get(name)?.delete(listener);
        };
    }
    emit(name, value) {
        const set = this.listeners.get(name);
        if (set)
            for (const l of [...set])
                callListener(l, value);
    }
    // ----- lifecycle -----
    /**
     * Connect (if not already), resolving at the next HELLO_ACK or RESUMED, and
     * rejecting if the client stops for good before that.
     */
    connect() {
        if (this._state === "connected" && this._sessionId && this._userId) {
            return Promise.resolve({ sessionId: this._sessionId, userId: this._userId, heartbeatInterval: this.heartbeatMs });
        }
        const p = new Promise((resolve, reject) => {
            this.readyWaiters.push({ resolve, reject });
        });
        if (this._state === "idle" || this._state === "closed") {
            this.userClosed = false;
            this.authFailures = 0;
            this.attempt = 0;
            this.openSocket();
        }
        return p;
    }
    /**
     * Close for good (a client close 1000: the server discards the session). The
     * channel list is kept: `connect()` later starts a new session holding them.
     */
    close(code = 1000, reason = "client close") {
        const wasActive = this._state !== "closed" && this._state !== "idle";
        this.userClosed = true;
        const ws = this.ws;
        this.teardown();
        this.clearTimer("reconnectTimer");
        if (ws) {
            try {
                ws.close(code, reason);
            }
            catch {
                /* already closing */
            }
        }
        if (this._sessionId)
            this.lostSession = { id: this._sessionId, reason: "new_session" };
        this._sessionId = null;
        this._lastSeq = 0;
        this._state = "closed";
        this.rejectAll(new Error("client closed"));
        if (wasActive)
            this.emit("disconnected", { code, reason, willRetryInMs: null });
    }
    // ----- commands -----
    /**
     * Subscribe. Resolves with the channels granted and one error per refused
     * channel (refusals do not reject). Sent at once when connected, otherwise
     * when the next session is ready. Rejects on RATE_LIMITED or `close()`.
     */
    subscribe(channels) {
        const list = typeof channels === "string" ? [channels] : [...channels];
        if (list.length === 0)
            return Promise.resolve({ granted: [], errors: [] });
        return new Promise((resolve, reject) => {
            this.enqueue({ kind: "sub", channels: list, errors: [], resolve, reject });
        });
    }
    /** Unsubscribe; resolves with the names the server confirmed (or at once when offline without a session). */
    unsubscribe(channels) {
        const list = typeof channels === "string" ? [channels] : [...channels];
        for (const c of list)
            this.held.delete(c);
        if (list.length === 0)
            return Promise.resolve([]);
        return new Promise((resolve, reject) => {
            if (this._state !== "connected" && !this._sessionId) {
                // Nothing on the server holds them; a new session will not subscribe them.
                resolve(list);
                return;
            }
            this.enqueue({ kind: "unsub", channels: list, errors: [], resolve, reject });
        });
    }
    /**
     * The user is typing in `channelId` (`dm:{conv}` or `server:{sid}:channel:{cid}`).
     * Call it on every keystroke: TYPING_START goes out at once, then again every
     * `typingRepeatMs` (8 s) as long as calls keep coming, before the server's 10 s
     * auto-stop. When calls stop the server ends the indicator by itself; call
     * `stopTyping()` to end it at once (e.g. on send).
     */
    typing(channelId) {
        if (this._state !== "connected")
            return;
        const st = this.typingState.get(channelId);
        if (st) {
            st.calledSinceSend = true;
            return;
        }
        const state = { timer: null, calledSinceSend: false, lastSentAt: Date.now() };
        this.typingState.set(channelId, state);
        this.sendTyping("TYPING_START", channelId);
        this.armTyping(channelId, state);
    }
    /** The user stopped typing (sends TYPING_STOP if a TYPING_START may still be live). */
    stopTyping(channelId) {
        const st = this.typingState.get(channelId);
        if (st?.timer)
            clearTimeout(st.timer);
        this.typingState.delete(channelId);
        const started = this.typingStartedAt.get(channelId);
        this.typingStartedAt.delete(channelId);
        if (this._state === "connected" && started !== undefined && Date.now() - started < 10000) {
            this.sendTyping("TYPING_STOP", channelId);
        }
    }
    /** Set this user's presence (`online`, `idle`, `dnd`); re-applied on a new session. */
    setPresence(status) {
        this.presence = status;
        this.presenceUnsent = true;
        if (this._state === "connected")
            this.sendPresence();
    }
    sendPresence() {
        if (!this.presence || !this.sendRaw("SET_PRESENCE", { status: this.presence }))
            return;
        this.presenceUnsent = false;
        this.expects.push({ kind: "presence" });
        this.sendPing();
    }
    /**
     * Send REFRESH now with a token from `getToken` (or the given one). Resolves
     * with the new `exp` from REFRESHED. The client does this by itself before
     * the token expires when it has a `getToken` callback.
     */
    async refresh(token) {
        const t = token ?? (this.opts.getToken ? await this.opts.getToken() : null);
        if (!t)
            throw new Error("refresh: no token and no getToken callback");
        if (this._state !== "connected")
            throw new Error("refresh: not connected");
        return new Promise((resolve, reject) => {
            this.sendRaw("REFRESH", { token: t });
            this.expects.push({ kind: "refresh", token: t, resolve, reject });
        });
    }
    // ----- connection -----
    openSocket() {
        this.clearTimer("reconnectTimer");
        this._state = "connecting";
        const gen = ++this.gen;
        const resume = this._sessionId !== null;
        this.emit("connecting", { attempt: this.attempt, resume });
        if (this.gen !== gen || this.userClosed)
            return; // a listener closed the client
        const needFresh = !!this.opts.getToken && (this.forceFreshToken || !this.token || this.tokenExpiresWithin(this.token, 5000));
        if (!needFresh) {
            this.startSocket(gen, this.token);
            return;
        }
        let got;
        try {
            got = this.opts.getToken();
        }
        catch (e) {
            this.tokenFailed(gen, e);
            return;
        }
        Promise.resolve(got).then((t) => {
            if (this.gen !== gen || this.userClosed)
                return;
            if (typeof t !== "string" || t === "") {
                this.tokenFailed(gen, new Error("getToken returned no token"));
                return;
            }
            this.token = t;
            this.forceFreshToken = false;
            this.startSocket(gen, t);
        }, (e) => this.tokenFailed(gen, e));
    }
    tokenFailed(gen, e) {
        if (this.gen !== gen || this.userClosed)
            return;
        this.emit("error", { code: "TOKEN_UNAVAILABLE", message: errorMessage(e) });
        this.scheduleReconnect(0, "token unavailable", this.nextBackoff());
    }
    tokenExpiresWithin(token, ms) {
        const c = decodeJwtClaims(token);
        return !!c && typeof c.exp === "number" && c.exp * 1000 <= Date.now() + ms;
    }
    startSocket(gen, token) {
        const Ctor = this.opts.WebSocket ?? globalThis.WebSocket;
        if (typeof Ctor !== "function") {
            this.fail("SOCKET_ERROR", "no WebSocket constructor: pass options.WebSocket (e.g. the ws package in Node 20)");
            return;
        }
        let ws;
        try {
            ws = new Ctor(this.opts.url);
        }
        catch (e) {
            this.fail("SOCKET_ERROR", errorMessage(e));
            return;
        }
        this.ws = ws;
        this.handshakeTimer = setTimeout(() => {
            if (this.gen === gen)
                this.abandon(1006, "handshake timeout");
        }, this.opts.handshakeTimeoutMs);
        ws.onopen = () => {
            if (this.gen !== gen)
                return;
            if (this._sessionId) {
                this.sendRaw("RESUME", { token, sessionId: this._sessionId, seq: this._lastSeq });
            }
            else {
                this.sendRaw("HELLO", { token });
            }
        };
        ws.onmessage = (ev) => {
            if (this.gen !== gen)
                return;
            this.onFrame(ev.data);
        };
        ws.onerror = () => {
            /* a close event follows */
        };
        ws.onclose = (ev) => {
            if (this.gen !== gen)
                return;
            this.onSocketClosed(typeof ev?.code === "number" ? ev.code : 1006, typeof ev?.reason === "string" ? ev.reason : "");
        };
    }
    /** Give up on the current socket (dead or stuck) and reconnect as after a network error. */
    abandon(code, reason) {
        const ws = this.ws;
        this.gen++;
        if (ws) {
            try {
                // Not 1000: the server keeps the session for RESUME.
                ws.close(4000, reason);
            }
            catch {
                /* ignore */
            }
        }
        this.onSocketClosed(code, reason);
    }
    onSocketClosed(code, reason) {
        const wasConnected = this._state === "connected";
        this.teardown();
        this.gen++;
        if (this.userClosed)
            return;
        if (code === 4004) {
            this.authFailures++;
            if (wasConnected) {
                // An authentication close ends the session on the server (SPEC §8). A RESUME
                // refused for its token leaves the parked session alone: try it again.
                if (this._sessionId)
                    this.lostSession = { id: this._sessionId, reason: "new_session" };
                this._sessionId = null;
                this._lastSeq = 0;
            }
            if (!this.opts.getToken || this.authFailures >= 2) {
                this.stop(code, reason, "AUTH_FAILED", "authentication failed (4004)" + (this.opts.getToken ? " with a fresh token" : ""));
                return;
            }
            this.forceFreshToken = true;
            this.scheduleReconnect(code, reason, this.nextBackoff());
            return;
        }
        if (NO_RETRY_CODES.has(code)) {
            this.stop(code, reason, "PROTOCOL", `closed ${code}: ${reason || "client protocol error"}`);
            return;
        }
        if (code === 4011) {
            // Node draining: at once, with a small jitter; failures after that back off from base·2.
            const delay = backoffDelay(0, this.opts.backoffBaseMs, this.opts.backoffCapMs, this.random);
            this.attempt = 1;
            this.scheduleReconnect(code, reason, delay);
            return;
        }
        this.scheduleReconnect(code, reason, this.nextBackoff());
    }
    nextBackoff() {
        const d = backoffDelay(this.attempt, this.opts.backoffBaseMs, this.opts.backoffCapMs, this.random);
        this.attempt++;
        return d;
    }
    scheduleReconnect(code, reason, delay) {
        this._state = "reconnecting";
        this.clearTimer("reconnectTimer");
        this.reconnectTimer = setTimeout(() => {
            this.reconnectTimer = null;
            if (!this.userClosed)
                this.openSocket();
        }, delay);
        this.emit("disconnected", { code, reason, willRetryInMs: delay });
    }
    stop(code, reason, errCode, message) {
        this._state = "closed";
        this.rejectAll(new Error(message));
        this.emit("error", { code: errCode, message });
        this.emit("disconnected", { code, reason, willRetryInMs: null });
    }
    fail(code, message) {
        this.teardown();
        this.gen++;
        this._state = "closed";
        this.rejectAll(new Error(message));
        this.emit("error", { code, message });
        this.emit("disconnected", { code: 1006, reason: message, willRetryInMs: null });
    }
    /** Drop the socket and its timers; unanswered subscribe/unsubscribe go back to the outbox. */
    teardown() {
        const ws = this.ws;
        this.ws = null;
        if (ws) {
            ws.onopen = ws.onmessage = ws.onclose = null;
            // Not null: the `ws` package throws an 'error' event nobody listens to (closing a
            // socket that is still connecting emits one).
            ws.onerror = ignore;
        }
        this.clearTimer("handshakeTimer");
        this.clearTimer("deadTimer");
        this.clearTimer("refreshTimer");
        if (this.heartbeatTimer)
            clearInterval(this.heartbeatTimer);
        this.heartbeatTimer = null;
        for (const st of this.typingState.values())
            if (st.timer)
                clearTimeout(st.timer);
        this.typingState.clear();
        this.typingStartedAt.clear();
        const unanswered = [];
        for (const e of this.expects) {
            if (e.kind === "op")
                unanswered.push(e.op);
            else if (e.kind === "refresh")
                e.reject(new Error("connection lost before REFRESHED"));
        }
        this.expects = [];
        this.outbox = [...unanswered, ...this.outbox];
    }
    rejectAll(err) {
        const ops = [...this.expects.flatMap((e) => (e.kind === "op" ? [e.op] : [])), ...this.outbox];
        for (const e of this.expects)
            if (e.kind === "refresh")
                e.reject(err);
        this.expects = [];
        this.outbox = [];
        for (const op of ops) {
            if (op.gap)
                continue;
            op.reject(err);
        }
        const waiters = this.readyWaiters;
        this.readyWaiters = [];
        for (const w of waiters)
            w.reject(err);
    }
    clearTimer(name) {
        const t = this[name];
        if (t)
            clearTimeout(t);
        this[name] = null;
    }
    // ----- frames -----
    sendRaw(type, payload) {
        const ws = this.ws;
        if (!ws || ws.readyState !== OPEN)
            return false;
        try {
            ws.send(JSON.stringify({ type, payload }));
            return true;
        }
        catch {
            return false;
        }
    }
    sendPing() {
        if (this.sendRaw("PING", {}))
            this.expects.push({ kind: "ping" });
    }
    sendTyping(command, channelId) {
        if (!this.sendRaw(command, { channelId }))
            return;
        if (command === "TYPING_START")
            this.typingStartedAt.set(channelId, Date.now());
        this.expects.push({ kind: "typing", command, channel: channelId });
        // The PING closes the command's reply window: TYPING answers nothing on success,
        // and an ERROR without a channel (RATE_LIMITED) is then attributed exactly.
        this.sendPing();
    }
    armTyping(channelId, st) {
        st.timer = setTimeout(() => {
            if (this.typingState.get(channelId) !== st)
                return;
            if (st.calledSinceSend && this._state === "connected") {
                st.calledSinceSend = false;
                st.lastSentAt = Date.now();
                this.sendTyping("TYPING_START", channelId);
                this.armTyping(channelId, st);
            }
            else {
                // No keystroke for a whole period: the server's auto-stop ends the indicator.
                this.typingState.delete(channelId);
            }
        }, this.opts.typingRepeatMs);
    }
    enqueue(op) {
        if (this._state === "connected")
            this.sendOp(op);
        else
            this.outbox.push(op);
    }
    sendOp(op) {
        const type = op.kind === "sub" ? "SUBSCRIBE" : "UNSUBSCRIBE";
        if (this.sendRaw(type, { channels: op.channels })) {
            this.expects.push({ kind: "op", op });
        }
        else {
            this.outbox.push(op);
        }
    }
    flushOutbox() {
        const ops = this.outbox;
        this.outbox = [];
        for (const op of ops)
            this.sendOp(op);
    }
    onFrame(data) {
        this.armDeadTimer();
        let text;
        if (typeof data === "string")
            text = data;
        else if (data instanceof ArrayBuffer)
            text = new TextDecoder().decode(new Uint8Array(data));
        else if (ArrayBuffer.isView(data))
            text = new TextDecoder().decode(data);
        else
            text = String(data);
        let msg;
        try {
            msg = JSON.parse(text);
        }
        catch {
            this.emit("error", { code: "BAD_FRAME", message: "frame is not JSON" });
            return;
        }
        if (!msg || typeof msg !== "object")
            return;
        const p = msg.payload && typeof msg.payload === "object" ? msg.payload : {};
        switch (msg.type) {
            case "EVENT":
                this.onEventFrame(msg.seq, p);
                return;
            case "HELLO_ACK":
                this.onHelloAck(p);
                return;
            case "RESUMED":
                this.onResumed(p);
                return;
            case "INVALID_SESSION":
                this.onInvalidSession();
                return;
            case "PONG":
            case "SUBSCRIBED":
            case "UNSUBSCRIBED":
            case "REFRESHED":
            case "ERROR":
                this.onReply(msg.type, p);
                return;
            default:
                return; // unknown frame types are ignored (forward compatibility)
        }
    }
    onEventFrame(seq, p) {
        if (typeof seq === "number") {
            if (seq <= this._lastSeq) {
                this.duplicatesDropped++;
                return;
            }
            this._lastSeq = seq;
        }
        const name = typeof p.event === "string" ? p.event : "";
        const ev = {
            known: isKnownEventName(name),
            event: name,
            channel: typeof p.channel === "string" ? p.channel : "",
            seq: typeof seq === "number" ? seq : 0,
            payload: p.payload,
        };
        this.emit("event", ev);
        const set = this.eventListeners.get(name);
        if (set)
            for (const l of [...set])
                callListener(l, ev);
    }
    onHelloAck(p) {
        this.clearTimer("handshakeTimer");
        const previous = this.lostSession;
        this.lostSession = null;
        this._sessionId = String(p.sessionId ?? "");
        this._userId = String(p.userId ?? "");
        if (typeof p.heartbeatInterval === "number" && p.heartbeatInterval > 0)
            this.heartbeatMs = p.heartbeatInterval;
        this._lastSeq = 0; // a new session (and possibly a restarted node: seq starts over)
        this.attempt = 0;
        this.authFailures = 0;
        this._state = "connected";
        this.startHeartbeat();
        this.scheduleRefresh();
        const info = { sessionId: this._sessionId, userId: this._userId, heartbeatInterval: this.heartbeatMs };
        this.emit("connected", info);
        // A new session holds only user:{sub}: subscribe again what was held, then the
        // ops that waited; drop queued unsubscribes (nothing to undo on a new session).
        this.outbox = this.outbox.filter((op) => {
            if (op.kind === "unsub") {
                op.resolve(op.channels);
                return false;
            }
            return !op.gap;
        });
        const heldNow = [...this.held];
        if (heldNow.length > 0 || previous) {
            if (heldNow.length > 0) {
                const op = {
                    kind: "sub",
                    channels: heldNow,
                    errors: [],
                    resolve: () => { },
                    reject: () => { },
                    gap: previous ? { reason: previous.reason, previousSessionId: previous.id } : undefined,
                };
                this.sendOp(op);
            }
            else if (previous) {
                this.emit("gap", { reason: previous.reason, sessionId: this._sessionId, previousSessionId: previous.id, channels: [], refused: [] });
            }
        }
        this.flushOutbox();
        // A new session starts online; put back what the user chose.
        if (this.presence && this.presence !== "online")
            this.sendPresence();
        this.resolveReady(info);
    }
    onResumed(p) {
        this.clearTimer("handshakeTimer");
        this.attempt = 0;
        this.authFailures = 0;
        this._state = "connected";
        this.startHeartbeat();
        this.scheduleRefresh();
        const info = { sessionId: String(p.sessionId ?? this._sessionId ?? ""), replayed: typeof p.replayed === "number" ? p.replayed : 0 };
        this.emit("resumed", info);
        this.flushOutbox();
        // The resumed session kept its status; send only a change made while offline.
        if (this.presenceUnsent)
            this.sendPresence();
        this.resolveReady(info);
    }
    onInvalidSession() {
        // Start over on the same connection (SPEC §8); the HELLO_ACK handler re-subscribes
        // and reports the gap.
        if (this._sessionId)
            this.lostSession = { id: this._sessionId, reason: "invalid_session" };
        this._sessionId = null;
        this._lastSeq = 0;
        this.sendRaw("HELLO", { token: this.token });
    }
    resolveReady(info) {
        const waiters = this.readyWaiters;
        this.readyWaiters = [];
        for (const w of waiters)
            w.resolve(info);
    }
    /** Replies come in command order; match each to what was sent. */
    onReply(type, p) {
        for (;;) {
            const head = this.expects[0];
            if (!head) {
                if (type === "ERROR")
                    this.emit("error", serverError(p));
                return;
            }
            if (type === "ERROR") {
                const channel = typeof p.channel === "string" ? p.channel : undefined;
                if (head.kind === "op") {
                    if (channel !== undefined) {
                        if (head.op.kind === "sub") {
                            head.op.errors.push({ channel, code: String(p.code ?? ""), message: String(p.message ?? "") });
                        }
                        else {
                            this.emit("error", serverError(p, "UNSUBSCRIBE"));
                        }
                        return;
                    }
                    // RATE_LIMITED / BAD_PAYLOAD end the command: it was not executed.
                    this.expects.shift();
                    const err = serverError(p, head.op.kind === "sub" ? "SUBSCRIBE" : "UNSUBSCRIBE");
                    if (head.op.gap) {
                        // The re-subscription itself was refused (rate limited): retry on the next
                        // PONG-free moment by putting it back in the outbox.
                        this.outbox.unshift(head.op);
                        this.emit("error", err);
                        setTimeout(() => {
                            if (this._state === "connected")
                                this.flushOutbox();
                        }, this.opts.backoffBaseMs);
                    }
                    else {
                        head.op.reject(Object.assign(new Error(`${err.code}: ${err.message}`), { code: err.code }));
                        this.emit("error", err);
                    }
                    return;
                }
                if (head.kind === "typing") {
                    if (channel === undefined || channel === head.channel) {
                        this.expects.shift();
                        this.emit("error", serverError(p, head.command));
                        return;
                    }
                    this.expects.shift(); // that command produced nothing; try the next
                    continue;
                }
                if (head.kind === "presence") {
                    this.expects.shift();
                    if (channel === undefined) {
                        this.emit("error", serverError(p, "SET_PRESENCE"));
                        return;
                    }
                    continue;
                }
                if (head.kind === "refresh") {
                    this.expects.shift();
                    const err = serverError(p, "REFRESH");
                    head.reject(Object.assign(new Error(`${err.code}: ${err.message}`), { code: err.code }));
                    this.emit("error", err);
                    if (err.code === "RATE_LIMITED")
                        this.scheduleRefreshRetry();
                    return;
                }
                // head is a ping: an ERROR cannot belong to it (PING is never refused)
                this.emit("error", serverError(p));
                return;
            }
            // A positive reply: commands before it that answer nothing on success are done.
            if (head.kind === "typing" || head.kind === "presence") {
                this.expects.shift();
                continue;
            }
            if (type === "PONG") {
                if (head.kind === "ping")
                    this.expects.shift();
                return;
            }
            if (type === "SUBSCRIBED" && head.kind === "op" && head.op.kind === "sub") {
                this.expects.shift();
                this.completeSubscribe(head.op, Array.isArray(p.channels) ? p.channels.map(String) : []);
                return;
            }
            if (type === "UNSUBSCRIBED" && head.kind === "op" && head.op.kind === "unsub") {
                this.expects.shift();
                head.op.resolve(Array.isArray(p.channels) ? p.channels.map(String) : head.op.channels);
                return;
            }
            if (type === "REFRESHED" && head.kind === "refresh") {
                this.expects.shift();
                this.token = head.token;
                const exp = typeof p.exp === "number" ? p.exp : decodeJwtClaims(head.token)?.exp ?? 0;
                this.scheduleRefresh();
                head.resolve(exp);
                this.emit("refreshed", { exp });
                return;
            }
            // Out of step (should not happen): drop the head and try again.
            this.expects.shift();
            if (head.kind === "op")
                this.outbox.push(head.op);
        }
    }
    completeSubscribe(op, granted) {
        const grantedSet = new Set(granted);
        for (const c of granted)
            this.held.add(c);
        for (const c of op.channels)
            if (!grantedSet.has(c))
                this.held.delete(c);
        if (op.gap) {
            this.emit("gap", {
                reason: op.gap.reason,
                sessionId: this._sessionId ?? "",
                previousSessionId: op.gap.previousSessionId,
                channels: granted,
                refused: op.errors,
            });
            return;
        }
        op.resolve({ granted, errors: op.errors });
    }
    // ----- timers -----
    armDeadTimer() {
        if (this._state !== "connected" && this.handshakeTimer)
            return; // the handshake timer covers it
        this.clearTimer("deadTimer");
        const gen = this.gen;
        this.deadTimer = setTimeout(() => {
            if (this.gen === gen)
                this.abandon(1006, "no frame received for 2x heartbeatInterval");
        }, 2 * this.heartbeatMs);
    }
    startHeartbeat() {
        if (this.heartbeatTimer)
            clearInterval(this.heartbeatTimer);
        this.heartbeatTimer = setInterval(() => this.sendPing(), this.heartbeatMs);
        this.armDeadTimer();
    }
    scheduleRefresh() {
        this.clearTimer("refreshTimer");
        if (!this.opts.getToken || !this.token)
            return;
        const at = refreshAt(this.token, Date.now(), this.opts.refreshLeadMs);
        if (at === null)
            return;
        const delay = Math.min(MAX_TIMEOUT, Math.max(0, at - Date.now()));
        this.refreshTimer = setTimeout(() => {
            this.refreshTimer = null;
            this.refresh().catch((e) => {
                if (this._state === "connected")
                    this.emit("error", { code: "REFRESH_FAILED", message: errorMessage(e) });
            });
        }, delay);
    }
    scheduleRefreshRetry() {
        this.clearTimer("refreshTimer");
        this.refreshTimer = setTimeout(() => {
            this.refreshTimer = null;
            this.refresh().catch(() => { });
        }, 5000);
    }
}
function ignore() { }
function serverError(p, command) {
    const e = { code: String(p?.code ?? "ERROR"), message: String(p?.message ?? "") };
    if (typeof p?.channel === "string")
        e.channel = p.channel;
    if (command)
        e.command = command;
    return e;
}
function errorMessage(e) {
    return e instanceof Error ? e.message : String(e);
}
function callListener(l, v) {
    try {
        l(v);
    }
    catch (err) {
        // Like EventTarget: one listener's exception does not stop the others or the client.
        setTimeout(() => {
            throw err;
        }, 0);
    }
}
function stripUndefined(o) {
    const out = {};
    for (const [k, v] of Object.entries(o))
        if (v !== undefined)
            out[k] = v;
    return out;
}
