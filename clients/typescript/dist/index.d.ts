/**
 * @xcord/gateway-client: the official client of the XCORD Gateway
 * (SPEC.md §3 client protocol, §4 channels, §6 presence/typing, §8 resume/refresh).
 *
 * One self-contained ES module with no imports and no runtime dependencies, so that
 * the gateway can embed the compiled file and serve it as-is (the admin console
 * loads it from /ui/client.js). Works in browsers, Tauri webviews and Node >= 20
 * (pass the `ws` package's constructor as `WebSocket` where there is no global one).
 */
/** A DM message as the backend publishes it (shape owned by the backend). */
export interface Message {
    [key: string]: unknown;
}
/** A server-channel message (shape owned by the backend). */
export interface ChannelMessage {
    [key: string]: unknown;
}
/** A server member (shape owned by the backend). */
export interface ServerMember {
    [key: string]: unknown;
}
/** A notification (shape owned by the backend). */
export interface Notification {
    [key: string]: unknown;
}
/** A live-stream chat message (shape owned by the backend). */
export interface ChatMessage {
    [key: string]: unknown;
}
/** A status a client may set with SET_PRESENCE. */
export type PresenceStatus = "online" | "idle" | "dnd";
/** A status as broadcast (a user with no session is `offline`). */
export type Presence = PresenceStatus | "offline";
/** Event name → payload, for every event the platform defines. */
export interface GatewayEventMap {
    "dm.message.new": {
        message: Message;
    };
    "dm.message.read": {
        conversationId: string;
        messageId: string;
        readAt: string;
    };
    "dm.typing": {
        conversationId: string;
        userId: string;
        isTyping: boolean;
    };
    "server.message.new": {
        serverId: string;
        channelId: string;
        message: ChannelMessage;
    };
    "server.member.presence": {
        serverId: string;
        userId: string;
        presence: Presence;
    };
    "server.member.join": {
        serverId: string;
        member: ServerMember;
    };
    "server.typing": {
        serverId: string;
        channelId: string;
        userId: string;
        isTyping: boolean;
    };
    "notification.new": {
        notification: Notification;
    };
    "live.chat.message": {
        streamId: string;
        message: ChatMessage;
    };
    "live.viewer.count": {
        streamId: string;
        count: number;
    };
    "user.presence": {
        userId: string;
        presence: Presence;
    };
}
/** The name of an event the platform defines. */
export type KnownEventName = keyof GatewayEventMap;
/** Fields every delivered event carries. */
export interface EventEnvelope {
    /** The channel the event was published on (`server:s1:channel:c2`, …). */
    channel: string;
    /** The node's sequence number (strictly increasing within a session). */
    seq: number;
}
/** One known event; `known: true` together with `event` narrows `payload`. */
export type KnownGatewayEvent = {
    [K in KnownEventName]: EventEnvelope & {
        known: true;
        event: K;
        payload: GatewayEventMap[K];
    };
}[KnownEventName];
/** An event whose name this client version does not know (forward compatibility). */
export interface UnknownGatewayEvent extends EventEnvelope {
    known: false;
    event: string;
    payload: unknown;
}
/**
 * Every event delivered to the application. Narrow with `known` first:
 * `if (e.known && e.event === "dm.typing") e.payload.isTyping`.
 */
export type GatewayEvent = KnownGatewayEvent | UnknownGatewayEvent;
/** The event of one known name. */
export type GatewayEventOf<K extends KnownEventName> = Extract<KnownGatewayEvent, {
    event: K;
}>;
/** True for an event name this client version types. */
export declare function isKnownEventName(name: string): name is KnownEventName;
/** Type guard: `if (isEvent(e, "server.message.new")) e.payload.channelId`. */
export declare function isEvent<K extends KnownEventName>(e: GatewayEvent, name: K): e is GatewayEventOf<K>;
/** One channel the server refused (an `ERROR {code, message, channel}`). */
export interface ChannelError {
    channel: string;
    code: string;
    message: string;
}
/** What `subscribe()` resolves to. */
export interface SubscribeResult {
    /** The channels granted, as written in the request. */
    granted: string[];
    /** One entry per refused channel. */
    errors: ChannelError[];
}
/** An error reported to the application. */
export interface GatewayClientError {
    /**
     * A server ERROR code (`FORBIDDEN`, `RATE_LIMITED`, …) or one of the client's own:
     * `AUTH_FAILED` (4004 and no way to get a better token), `TOKEN_UNAVAILABLE`
     * (the token callback failed), `BAD_FRAME` (a frame that is not JSON),
     * `SOCKET_ERROR` (the WebSocket could not be created).
     */
    code: string;
    message: string;
    /** The channel an ERROR named, when it named one. */
    channel?: string;
    /** The command the server refused, when the client could tell. */
    command?: string;
}
/** The client's states, as the `state` property reports them. */
export type ConnectionState = "idle" | "connecting" | "connected" | "reconnecting" | "closed";
/** Events the client emits (`client.on(name, listener)`). */
export interface ClientEventMap {
    /** A socket is being opened; `resume` when it will try RESUME first. */
    connecting: {
        attempt: number;
        resume: boolean;
    };
    /** HELLO_ACK: a new session. */
    connected: {
        sessionId: string;
        userId: string;
        heartbeatInterval: number;
    };
    /** RESUMED: the old session continues; `replayed` events were re-sent. */
    resumed: {
        sessionId: string;
        replayed: number;
    };
    /**
     * The connection ended. `willRetryInMs` is the delay before the next attempt,
     * or null when the client will not reconnect by itself.
     */
    disconnected: {
        code: number;
        reason: string;
        willRetryInMs: number | null;
    };
    /**
     * A new session replaced a lost one (INVALID_SESSION, or a session the server
     * discarded): events may have been missed. Emitted once the channels held
     * before have been subscribed again, so a refetch started now leaves no hole.
     */
    gap: {
        reason: "invalid_session" | "new_session";
        sessionId: string;
        previousSessionId: string;
        /** Channels subscribed again. */
        channels: string[];
        /** Channels held before that the server now refuses. */
        refused: ChannelError[];
    };
    /** A domain event (each one delivered once). */
    event: GatewayEvent;
    /** Something the application may want to show or log. */
    error: GatewayClientError;
    /** REFRESHED: the connection now runs on a newer token. */
    refreshed: {
        exp: number;
    };
}
export type ClientEventName = keyof ClientEventMap;
/** The subset of the WebSocket API the client uses (browser, `ws`, undici). */
export interface WebSocketLike {
    readonly readyState: number;
    onopen: ((ev: any) => any) | null;
    onmessage: ((ev: any) => any) | null;
    onclose: ((ev: any) => any) | null;
    onerror: ((ev: any) => any) | null;
    send(data: string): void;
    close(code?: number, reason?: string): void;
}
/** A WebSocket constructor: the browser's, or `ws`'s default export in Node 20. */
export type WebSocketConstructorLike = new (url: string) => WebSocketLike;
export interface GatewayClientOptions {
    /** `ws://host:port/api/v1/ws` (or `wss://…`). */
    url: string;
    /** A static token. Without `getToken` it cannot be refreshed or replaced. */
    token?: string;
    /**
     * Returns a (new) token. Called when there is no token yet, before the current
     * one expires (for REFRESH), and once after an authentication close (4004).
     */
    getToken?: () => string | Promise<string>;
    /** WebSocket constructor; default `globalThis.WebSocket`. */
    WebSocket?: WebSocketConstructorLike;
    /** Channels to subscribe once connected (same as calling `subscribe()` first). */
    channels?: string[];
    /** Backoff base in ms (default 500). */
    backoffBaseMs?: number;
    /** Backoff cap in ms (default 30000). */
    backoffCapMs?: number;
    /** Random source in [0, 1) for the jitter (default Math.random). */
    random?: () => number;
    /** Socket open + HELLO_ACK/RESUMED must arrive within this (default 15000 ms). */
    handshakeTimeoutMs?: number;
    /** TYPING_START is repeated this often while typing goes on (default 8000 ms, below the server's 10 s). */
    typingRepeatMs?: number;
    /** REFRESH this long before `exp` at most (default 60000 ms; 10% of the token's lifetime when that is less). */
    refreshLeadMs?: number;
}
/**
 * Full-jitter exponential backoff (README, "Resume, token refresh, reconnecting"):
 * `random(0, min(cap, base · 2^attempt))`.
 */
export declare function backoffDelay(attempt: number, baseMs: number, capMs: number, random?: () => number): number;
/** The claims of a JWT, without verifying it (null when it is not a JWT). */
export declare function decodeJwtClaims(token: string): {
    sub?: string;
    exp?: number;
    iat?: number;
    [claim: string]: unknown;
} | null;
/**
 * When to send REFRESH for a token (ms since epoch), or null when it has no `exp`:
 * `exp − min(leadMs, 10% of its lifetime)`.
 */
export declare function refreshAt(token: string, nowMs: number, leadMs?: number): number | null;
type Listener<T> = (value: T) => void;
export declare class GatewayClient {
    private readonly opts;
    private readonly random;
    private readonly listeners;
    private readonly eventListeners;
    private ws;
    /** Bumped whenever a socket is abandoned, so its late callbacks are ignored. */
    private gen;
    private _state;
    private userClosed;
    private token;
    private forceFreshToken;
    private authFailures;
    private _sessionId;
    private _userId;
    private heartbeatMs;
    private _lastSeq;
    /** Set when the session was lost, so the next HELLO_ACK reports a gap. */
    private lostSession;
    private attempt;
    private readonly held;
    private outbox;
    private expects;
    private presence;
    private presenceUnsent;
    private readonly typingState;
    private readonly typingStartedAt;
    private reconnectTimer;
    private handshakeTimer;
    private deadTimer;
    private heartbeatTimer;
    private refreshTimer;
    private readyWaiters;
    /** Events dropped because their seq was not above the last one seen (diagnostics). */
    duplicatesDropped: number;
    constructor(options: GatewayClientOptions);
    get state(): ConnectionState;
    /** The current (or resumable) session id. */
    get sessionId(): string | null;
    /** The user id HELLO_ACK reported. */
    get userId(): string | null;
    /** The last event seq seen in this session (0 before any). */
    get lastSeq(): number;
    /** The channels the client holds (granted, or to be subscribed again on a new session). */
    get channels(): string[];
    /** Listen to a client event; returns a function that removes the listener. */
    on<K extends ClientEventName>(name: K, listener: Listener<ClientEventMap[K]>): () => void;
    off<K extends ClientEventName>(name: K, listener: Listener<ClientEventMap[K]>): void;
    once<K extends ClientEventName>(name: K, listener: Listener<ClientEventMap[K]>): () => void;
    /** Listen to one domain event by name, with its payload typed. */
    onEvent<K extends KnownEventName>(name: K, listener: Listener<GatewayEventOf<K>>): () => void;
    onEvent(name: string, listener: Listener<GatewayEvent>): () => void;
    private emit;
    /**
     * Connect (if not already), resolving at the next HELLO_ACK or RESUMED, and
     * rejecting if the client stops for good before that.
     */
    connect(): Promise<ClientEventMap["connected"] | ClientEventMap["resumed"]>;
    /**
     * Close for good (a client close 1000: the server discards the session). The
     * channel list is kept: `connect()` later starts a new session holding them.
     */
    close(code?: number, reason?: string): void;
    /**
     * Subscribe. Resolves with the channels granted and one error per refused
     * channel (refusals do not reject). Sent at once when connected, otherwise
     * when the next session is ready. Rejects on RATE_LIMITED or `close()`.
     */
    subscribe(channels: string | string[]): Promise<SubscribeResult>;
    /** Unsubscribe; resolves with the names the server confirmed (or at once when offline without a session). */
    unsubscribe(channels: string | string[]): Promise<string[]>;
    /**
     * The user is typing in `channelId` (`dm:{conv}` or `server:{sid}:channel:{cid}`).
     * Call it on every keystroke: TYPING_START goes out at once, then again every
     * `typingRepeatMs` (8 s) as long as calls keep coming, before the server's 10 s
     * auto-stop. When calls stop the server ends the indicator by itself; call
     * `stopTyping()` to end it at once (e.g. on send).
     */
    typing(channelId: string): void;
    /** The user stopped typing (sends TYPING_STOP if a TYPING_START may still be live). */
    stopTyping(channelId: string): void;
    /** Set this user's presence (`online`, `idle`, `dnd`); re-applied on a new session. */
    setPresence(status: PresenceStatus): void;
    private sendPresence;
    /**
     * Send REFRESH now with a token from `getToken` (or the given one). Resolves
     * with the new `exp` from REFRESHED. The client does this by itself before
     * the token expires when it has a `getToken` callback.
     */
    refresh(token?: string): Promise<number>;
    private openSocket;
    private tokenFailed;
    private tokenExpiresWithin;
    private startSocket;
    /** Give up on the current socket (dead or stuck) and reconnect as after a network error. */
    private abandon;
    private onSocketClosed;
    private nextBackoff;
    private scheduleReconnect;
    private stop;
    private fail;
    /** Drop the socket and its timers; unanswered subscribe/unsubscribe go back to the outbox. */
    private teardown;
    private rejectAll;
    private clearTimer;
    private sendRaw;
    private sendPing;
    private sendTyping;
    private armTyping;
    private enqueue;
    private sendOp;
    private flushOutbox;
    private onFrame;
    private onEventFrame;
    private onHelloAck;
    private onResumed;
    private onInvalidSession;
    private resolveReady;
    /** Replies come in command order; match each to what was sent. */
    private onReply;
    private completeSubscribe;
    private armDeadTimer;
    private startHeartbeat;
    private scheduleRefresh;
    private scheduleRefreshRetry;
}
export {};
