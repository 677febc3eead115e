/**
 * @xcord/gateway-client: the official client of the XCORD Gateway
 * (SPEC.md §3 client protocol, §4 channels, §6 presence/typing, §8 resume/refresh).
 *
 * One self-contained ES module with no imports and no runtime dependencies, so that
 * the gateway can embed the compiled file and serve it as-is (the admin console
 * loads it from /ui/client.js). Works in browsers, Tauri webviews and Node >= 20
 * (pass the `ws` package's constructor as `WebSocket` where there is no global one).
 */

// ---------------------------------------------------------------------------
// Domain events (the platform design document, plus SPEC §6's user.presence and
// server.typing). The entity shapes the document leaves open are open interfaces:
// an application may narrow them by declaration merging
// (`declare module "@xcord/gateway-client" { interface Message { id: string } }`).
// ---------------------------------------------------------------------------

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
  "dm.message.new": { message: Message };
  "dm.message.read": { conversationId: string; messageId: string; readAt: string };
  "dm.typing": { conversationId: string; userId: string; isTyping: boolean };
  "server.message.new": { serverId: string; channelId: string; message: ChannelMessage };
  "server.member.presence": { serverId: string; userId: string; presence: Presence };
  "server.member.join": { serverId: string; member: ServerMember };
  "server.typing": { serverId: string; channelId: string; userId: string; isTyping: boolean };
  "notification.new": { notification: Notification };
  "live.chat.message": { streamId: string; message: ChatMessage };
  "live.viewer.count": { streamId: string; count: number };
  "user.presence": { userId: string; presence: Presence };
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
  [K in KnownEventName]: EventEnvelope & { known: true; event: K; payload: GatewayEventMap[K] };
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
export type GatewayEventOf<K extends KnownEventName> = Extract<KnownGatewayEvent, { event: K }>;

const KNOWN_EVENTS: ReadonlySet<string> = new Set<KnownEventName>([
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
export function isKnownEventName(name: string): name is KnownEventName {
  return KNOWN_EVENTS.has(name);
}

/** Type guard: `if (isEvent(e, "server.message.new")) e.payload.channelId`. */
export function isEvent<K extends KnownEventName>(e: GatewayEvent, name: K): e is GatewayEventOf<K> {
  return e.known && e.event === name;
}

// ---------------------------------------------------------------------------
// Client state events
// ---------------------------------------------------------------------------

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
export type ConnectionState =
  | "idle" // never connected
  | "connecting" // opening a socket, sending HELLO/RESUME
  | "connected" // HELLO_ACK or RESUMED received
  | "reconnecting" // waiting for the backoff timer
  | "closed"; // close() called, or a close code after which it will not retry

/** Events the client emits (`client.on(name, listener)`). */
export interface ClientEventMap {
  /** A socket is being opened; `resume` when it will try RESUME first. */
  connecting: { attempt: number; resume: boolean };
  /** HELLO_ACK: a new session. */
  connected: { sessionId: string; userId: string; heartbeatInterval: number };
  /** RESUMED: the old session continues; `replayed` events were re-sent. */
  resumed: { sessionId: string; replayed: number };
  /**
   * The connection ended. `willRetryInMs` is the delay before the next attempt,
   * or null when the client will not reconnect by itself.
   */
  disconnected: { code: number; reason: string; willRetryInMs: number | null };
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
  refreshed: { exp: number };
}

export type ClientEventName = keyof ClientEventMap;

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Helpers (exported for tests and for applications that want the same numbers)
// ---------------------------------------------------------------------------

/**
 * Full-jitter exponential backoff (README, "Resume, token refresh, reconnecting"):
 * `random(0, min(cap, base · 2^attempt))`.
 */
export function backoffDelay(attempt: number, baseMs: number, capMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(capMs, baseMs * Math.pow(2, Math.max(0, attempt)));
  const r = random();
  const clamped = r >= 0 && r < 1 ? r : r >= 1 ? 1 : 0;
  return Math.floor(clamped * ceiling);
}

/** The claims of a JWT, without verifying it (null when it is not a JWT). */
export function decodeJwtClaims(token: string): { sub?: string; exp?: number; iat?: number; [claim: string]: unknown } | null {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    let b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4 !== 0) b64 += "=";
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims !== null && typeof claims === "object" && !Array.isArray(claims) ? claims : null;
  } catch {
    return null;
  }
}

/**
 * When to send REFRESH for a token (ms since epoch), or null when it has no `exp`:
 * `exp − min(leadMs, 10% of its lifetime)`.
 */
export function refreshAt(token: string, nowMs: number, leadMs = 60_000): number | null {
  const claims = decodeJwtClaims(token);
  if (!claims || typeof claims.exp !== "number") return null;
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

type Listener<T> = (value: T) => void;

interface PendingOp {
  kind: "sub" | "unsub";
  channels: string[];
  errors: ChannelError[];
  resolve: (v: any) => void;
  reject: (e: Error) => void;
  /** An internal re-subscription after a new session; completes the `gap`. */
  gap?: { reason: "invalid_session" | "new_session"; previousSessionId: string };
}

/** What the client waits for, in the order commands were sent (replies come in order). */
type Expect =
  | { kind: "op"; op: PendingOp }
  | { kind: "ping" }
  | { kind: "typing"; command: string; channel: string }
  | { kind: "presence" }
  | { kind: "refresh"; token: string; resolve: (exp: number) => void; reject: (e: Error) => void };

interface TypingState {
  timer: ReturnType<typeof setTimeout> | null;
  calledSinceSend: boolean;
  lastSentAt: number;
}

/** Close codes after which the client never reconnects by itself. */
const NO_RETRY_CODES = new Set([4003, 4005]);

export class GatewayClient {
  private readonly opts: Required<Pick<GatewayClientOptions, "backoffBaseMs" | "backoffCapMs" | "handshakeTimeoutMs" | "typingRepeatMs" | "refreshLeadMs">> &
    GatewayClientOptions;
  private readonly random: () => number;
  private readonly listeners = new Map<string, Set<Listener<any>>>();
  private readonly eventListeners = new Map<string, Set<Listener<any>>>();

  private ws: WebSocketLike | null = null;
  /** Bumped whenever a socket is abandoned, so its late callbacks are ignored. */
  private gen = 0;
  private _state: ConnectionState = "idle";
  private userClosed = false;

  private token: string | null;
  private forceFreshToken = false;
  private authFailures = 0;

  private _sessionId: string | null = null;
  private _userId: string | null = null;
  private heartbeatMs = 30_000;
  private _lastSeq = 0;
  /** Set when the session was lost, so the next HELLO_ACK reports a gap. */
  private lostSession: { id: string; reason: "invalid_session" | "new_session" } | null = null;
  private attempt = 0;

  private readonly held = new Set<string>();
  private outbox: PendingOp[] = [];
  private expects: Expect[] = [];
  private presence: PresenceStatus | null = null;
  private presenceUnsent = false;
  private readonly typingState = new Map<string, TypingState>();
  private readonly typingStartedAt = new Map<string, number>();

  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private handshakeTimer: ReturnType<typeof setTimeout> | null = null;
  private deadTimer: ReturnType<typeof setTimeout> | null = null;
  private heartbeatTimer: ReturnType<typeof setInterval> | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  private readyWaiters: { resolve: (v: ClientEventMap["connected"] | ClientEventMap["resumed"]) => void; reject: (e: Error) => void }[] = [];

  /** Events dropped because their seq was not above the last one seen (diagnostics). */
  duplicatesDropped = 0;

  constructor(options: GatewayClientOptions) {
    if (!options || typeof options.url !== "string") throw new TypeError("GatewayClient: options.url is required");
    if (options.token === undefined && options.getToken === undefined) {
      throw new TypeError("GatewayClient: a token or a getToken callback is required");
    }
    this.opts = {
      backoffBaseMs: 500,
      backoffCapMs: 30_000,
      handshakeTimeoutMs: 15_000,
      typingRepeatMs: 8_000,
      refreshLeadMs: 60_000,
      ...stripUndefined(options),
    };
    this.random = options.random ?? Math.random;
    this.token = options.token ?? null;
    for (const c of options.channels ?? []) this.held.add(c);
  }

  // ----- public state -----

  get state(): ConnectionState {
    return this._state;
  }
  /** The current (or resumable) session id. */
  get sessionId(): string | null {
    return this._sessionId;
  }
  /** The user id HELLO_ACK reported. */
  get userId(): string | null {
    return this._userId;
  }
  /** The last event seq seen in this session (0 before any). */
  get lastSeq(): number {
    return this._lastSeq;
  }
  /** The channels the client holds (granted, or to be subscribed again on a new session). */
  get channels(): string[] {
    return [...this.held];
  }

  // ----- events -----

  /** Listen to a client event; returns a function that removes the listener. */
  on<K extends ClientEventName>(name: K, listener: Listener<ClientEventMap[K]>): () => void {
    let set = this.listeners.get(name);
    if (!set) this.listeners.set(name, (set = new Set()));
    set.add(listener);
    return () => this.off(name, listener);
  }

  off<K extends ClientEventName>(name: K, listener: Listener<ClientEventMap[K]>): void {
    this.listeners.get(name)?.delete(listener);
  }

  once<K extends ClientEventName>(name: K, listener: Listener<ClientEventMap[K]>): () => void {
    const off = this.on(name, (v) => {
      off();
      listener(v);
    });
    return off;
  }

  /** Listen to one domain event by name, with its payload typed. */
  onEvent<K extends KnownEventName>(name: K, listener: Listener<GatewayEventOf<K>>): () => void;
  onEvent(name: string, listener: Listener<GatewayEvent>): () => void;
  onEvent(name: string, listener: Listener<any>): () => void {
    let set = this.eventListeners.get(name);
    if (!set) this.eventListeners.set(name, (set = new Set()));
    set.add(listener);
    return () => {
      this.eventListeners.get(name)?.delete(listener);
    };
  }

  private emit<K extends ClientEventName>(name: K, value: ClientEventMap[K]): void {
    const set = this.listeners.get(name);
    if (set) for (const l of [...set]) callListener(l, value);
  }

  // ----- lifecycle -----

  /**
   * Connect (if not already), resolving at the next HELLO_ACK or RESUMED, and
   * rejecting if the client stops for good before that.
   */
  connect(): Promise<ClientEventMap["connected"] | ClientEventMap["resumed"]> {
    if (this._state === "connected" && this._sessionId && this._userId) {
      return Promise.resolve({ sessionId: this._sessionId, userId: this._userId, heartbeatInterval: this.heartbeatMs });
    }
    const p = new Promise<ClientEventMap["connected"] | ClientEventMap["resumed"]>((resolve, reject) => {
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
  close(code = 1000, reason = "client close"): void {
    const wasActive = this._state !== "closed" && this._state !== "idle";
    this.userClosed = true;
    const ws = this.ws;
    this.teardown();
    this.clearTimer("reconnectTimer");
    if (ws) {
      try {
        ws.close(code, reason);
      } catch {
        /* already closing */
      }
    }
    if (this._sessionId) this.lostSession = { id: this._sessionId, reason: "new_session" };
    this._sessionId = null;
    this._lastSeq = 0;
    this._state = "closed";
    this.rejectAll(new Error("client closed"));
    if (wasActive) this.emit("disconnected", { code, reason, willRetryInMs: null });
  }

  // ----- commands -----

  /**
   * Subscribe. Resolves with the channels granted and one error per refused
   * channel (refusals do not reject). Sent at once when connected, otherwise
   * when the next session is ready. Rejects on RATE_LIMITED or `close()`.
   */
  subscribe(channels: string | string[]): Promise<SubscribeResult> {
    const list = typeof channels === "string" ? [channels] : [...channels];
    if (list.length === 0) return Promise.resolve({ granted: [], errors: [] });
    return new Promise<SubscribeResult>((resolve, reject) => {
      this.enqueue({ kind: "sub", channels: list, errors: [], resolve, reject });
    });
  }

  /** Unsubscribe; resolves with the names the server confirmed (or at once when offline without a session). */
  unsubscribe(channels: string | string[]): Promise<string[]> {
    const list = typeof channels === "string" ? [channels] : [...channels];
    for (const c of list) this.held.delete(c);
    if (list.length === 0) return Promise.resolve([]);
    return new Promise<string[]>((resolve, reject) => {
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
  typing(channelId: string): void {
    if (this._state !== "connected") return;
    const st = this.typingState.get(channelId);
    if (st) {
      st.calledSinceSend = true;
      return;
    }
    const state: TypingState = { timer: null, calledSinceSend: false, lastSentAt: Date.now() };
    this.typingState.set(channelId, state);
    this.sendTyping("TYPING_START", channelId);
    this.armTyping(channelId, state);
  }

  /** The user stopped typing (sends TYPING_STOP if a TYPING_START may still be live). */
  stopTyping(channelId: string): void {
    const st = this.typingState.get(channelId);
    if (st?.timer) clearTimeout(st.timer);
    this.typingState.delete(channelId);
    const started = this.typingStartedAt.get(channelId);
    this.typingStartedAt.delete(channelId);
    if (this._state === "connected" && started !== undefined && Date.now() - started < 10_000) {
      this.sendTyping("TYPING_STOP", channelId);
    }
  }

  /** Set this user's presence (`online`, `idle`, `dnd`); re-applied on a new session. */
  setPresence(status: PresenceStatus): void {
    this.presence = status;
    this.presenceUnsent = true;
    if (this._state === "connected") this.sendPresence();
  }

  private sendPresence(): void {
    if (!this.presence || !this.sendRaw("SET_PRESENCE", { status: this.presence })) return;
    this.presenceUnsent = false;
    this.expects.push({ kind: "presence" });
    this.sendPing();
  }

  /**
   * Send REFRESH now with a token from `getToken` (or the given one). Resolves
   * with the new `exp` from REFRESHED. The client does this by itself before
   * the token expires when it has a `getToken` callback.
   */
  async refresh(token?: string): Promise<number> {
    const t = token ?? (this.opts.getToken ? await this.opts.getToken() : null);
    if (!t) throw new Error("refresh: no token and no getToken callback");
    if (this._state !== "connected") throw new Error("refresh: not connected");
    return new Promise<number>((resolve, reject) => {
      this.sendRaw("REFRESH", { token: t });
      this.expects.push({ kind: "refresh", token: t, resolve, reject });
    });
  }

  // ----- connection -----

  private openSocket(): void {
    this.clearTimer("reconnectTimer");
    this._state = "connecting";
    const gen = ++this.gen;
    const resume = this._sessionId !== null;
    this.emit("connecting", { attempt: this.attempt, resume });
    if (this.gen !== gen || this.userClosed) return; // a listener closed the client
    const needFresh =
      !!this.opts.getToken && (this.forceFreshToken || !this.token || this.tokenExpiresWithin(this.token, 5_000));
    if (!needFresh) {
      this.startSocket(gen, this.token as string);
      return;
    }
    let got: string | Promise<string>;
    try {
      got = (this.opts.getToken as () => string | Promise<string>)();
    } catch (e) {
      this.tokenFailed(gen, e);
      return;
    }
    Promise.resolve(got).then(
      (t) => {
        if (this.gen !== gen || this.userClosed) return;
        if (typeof t !== "string" || t === "") {
          this.tokenFailed(gen, new Error("getToken returned no token"));
          return;
        }
        this.token = t;
        this.forceFreshToken = false;
        this.startSocket(gen, t);
      },
      (e) => this.tokenFailed(gen, e),
    );
  }

  private tokenFailed(gen: number, e: unknown): void {
    if (this.gen !== gen || this.userClosed) return;
    this.emit("error", { code: "TOKEN_UNAVAILABLE", message: errorMessage(e) });
    this.scheduleReconnect(0, "token unavailable", this.nextBackoff());
  }

  private tokenExpiresWithin(token: string, ms: number): boolean {
    const c = decodeJwtClaims(token);
    return !!c && typeof c.exp === "number" && c.exp * 1000 <= Date.now() + ms;
  }

  private startSocket(gen: number, token: string): void {
    const Ctor = this.opts.WebSocket ?? (globalThis as any).WebSocket;
    if (typeof Ctor !== "function") {
      this.fail("SOCKET_ERROR", "no WebSocket constructor: pass options.WebSocket (e.g. the ws package in Node 20)");
      return;
    }
    let ws: WebSocketLike;
    try {
      ws = new Ctor(this.opts.url);
    } catch (e) {
      this.fail("SOCKET_ERROR", errorMessage(e));
      return;
    }
    this.ws = ws;
    this.handshakeTimer = setTimeout(() => {
      if (this.gen === gen) this.abandon(1006, "handshake timeout");
    }, this.opts.handshakeTimeoutMs);
    ws.onopen = () => {
      if (this.gen !== gen) return;
      if (this._sessionId) {
        this.sendRaw("RESUME", { token, sessionId: this._sessionId, seq: this._lastSeq });
      } else {
        this.sendRaw("HELLO", { token });
      }
    };
    ws.onmessage = (ev: { data: unknown }) => {
      if (this.gen !== gen) return;
      this.onFrame(ev.data);
    };
    ws.onerror = () => {
      /* a close event follows */
    };
    ws.onclose = (ev: { code?: number; reason?: string }) => {
      if (this.gen !== gen) return;
      this.onSocketClosed(typeof ev?.code === "number" ? ev.code : 1006, typeof ev?.reason === "string" ? ev.reason : "");
    };
  }

  /** Give up on the current socket (dead or stuck) and reconnect as after a network error. */
  private abandon(code: number, reason: string): void {
    const ws = this.ws;
    this.gen++;
    if (ws) {
      try {
        // Not 1000: the server keeps the session for RESUME.
        ws.close(4000, reason);
      } catch {
        /* ignore */
      }
    }
    this.onSocketClosed(code, reason);
  }

  private onSocketClosed(code: number, reason: string): void {
    const wasConnected = this._state === "connected";
    this.teardown();
    this.gen++;
    if (this.userClosed) return;
    if (code === 4004) {
      this.authFailures++;
      if (wasConnected) {
        // An authentication close ends the session on the server (SPEC §8). A RESUME
        // refused for its token leaves the parked session alone: try it again.
        if (this._sessionId) this.lostSession = { id: this._sessionId, reason: "new_session" };
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

  private nextBackoff(): number {
    const d = backoffDelay(this.attempt, this.opts.backoffBaseMs, this.opts.backoffCapMs, this.random);
    this.attempt++;
    return d;
  }

  private scheduleReconnect(code: number, reason: string, delay: number): void {
    this._state = "reconnecting";
    this.clearTimer("reconnectTimer");
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (!this.userClosed) this.openSocket();
    }, delay);
    this.emit("disconnected", { code, reason, willRetryInMs: delay });
  }

  private stop(code: number, reason: string, errCode: string, message: string): void {
    this._state = "closed";
    this.rejectAll(new Error(message));
    this.emit("error", { code: errCode, message });
    this.emit("disconnected", { code, reason, willRetryInMs: null });
  }

  private fail(code: string, message: string): void {
    this.teardown();
    this.gen++;
    this._state = "closed";
    this.rejectAll(new Error(message));
    this.emit("error", { code, message });
    this.emit("disconnected", { code: 1006, reason: message, willRetryInMs: null });
  }

  /** Drop the socket and its timers; unanswered subscribe/unsubscribe go back to the outbox. */
  private teardown(): void {
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
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
    for (const st of this.typingState.values()) if (st.timer) clearTimeout(st.timer);
    this.typingState.clear();
    this.typingStartedAt.clear();
    const unanswered: PendingOp[] = [];
    for (const e of this.expects) {
      if (e.kind === "op") unanswered.push(e.op);
      else if (e.kind === "refresh") e.reject(new Error("connection lost before REFRESHED"));
    }
    this.expects = [];
    this.outbox = [...unanswered, ...this.outbox];
  }

  private rejectAll(err: Error): void {
    const ops = [...this.expects.flatMap((e) => (e.kind === "op" ? [e.op] : [])), ...this.outbox];
    for (const e of this.expects) if (e.kind === "refresh") e.reject(err);
    this.expects = [];
    this.outbox = [];
    for (const op of ops) {
      if (op.gap) continue;
      op.reject(err);
    }
    const waiters = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of waiters) w.reject(err);
  }

  private clearTimer(name: "reconnectTimer" | "handshakeTimer" | "deadTimer" | "refreshTimer"): void {
    const t = this[name];
    if (t) clearTimeout(t);
    this[name] = null;
  }

  // ----- frames -----

  private sendRaw(type: string, payload: unknown): boolean {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) return false;
    try {
      ws.send(JSON.stringify({ type, payload }));
      return true;
    } catch {
      return false;
    }
  }

  private sendPing(): void {
    if (this.sendRaw("PING", {})) this.expects.push({ kind: "ping" });
  }

  private sendTyping(command: "TYPING_START" | "TYPING_STOP", channelId: string): void {
    if (!this.sendRaw(command, { channelId })) return;
    if (command === "TYPING_START") this.typingStartedAt.set(channelId, Date.now());
    this.expects.push({ kind: "typing", command, channel: channelId });
    // The PING closes the command's reply window: TYPING answers nothing on success,
    // and an ERROR without a channel (RATE_LIMITED) is then attributed exactly.
    this.sendPing();
  }

  private armTyping(channelId: string, st: TypingState): void {
    st.timer = setTimeout(() => {
      if (this.typingState.get(channelId) !== st) return;
      if (st.calledSinceSend && this._state === "connected") {
        st.calledSinceSend = false;
        st.lastSentAt = Date.now();
        this.sendTyping("TYPING_START", channelId);
        this.armTyping(channelId, st);
      } else {
        // No keystroke for a whole period: the server's auto-stop ends the indicator.
        this.typingState.delete(channelId);
      }
    }, this.opts.typingRepeatMs);
  }

  private enqueue(op: PendingOp): void {
    if (this._state === "connected") this.sendOp(op);
    else this.outbox.push(op);
  }

  private sendOp(op: PendingOp): void {
    const type = op.kind === "sub" ? "SUBSCRIBE" : "UNSUBSCRIBE";
    if (this.sendRaw(type, { channels: op.channels })) {
      this.expects.push({ kind: "op", op });
    } else {
      this.outbox.push(op);
    }
  }

  private flushOutbox(): void {
    const ops = this.outbox;
    this.outbox = [];
    for (const op of ops) this.sendOp(op);
  }

  private onFrame(data: unknown): void {
    this.armDeadTimer();
    let text: string;
    if (typeof data === "string") text = data;
    else if (data instanceof ArrayBuffer) text = new TextDecoder().decode(new Uint8Array(data));
    else if (ArrayBuffer.isView(data)) text = new TextDecoder().decode(data as Uint8Array);
    else text = String(data);
    let msg: any;
    try {
      msg = JSON.parse(text);
    } catch {
      this.emit("error", { code: "BAD_FRAME", message: "frame is not JSON" });
      return;
    }
    if (!msg || typeof msg !== "object") return;
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

  private onEventFrame(seq: unknown, p: any): void {
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
    } as GatewayEvent;
    this.emit("event", ev);
    const set = this.eventListeners.get(name);
    if (set) for (const l of [...set]) callListener(l, ev);
  }

  private onHelloAck(p: any): void {
    this.clearTimer("handshakeTimer");
    const previous = this.lostSession;
    this.lostSession = null;
    this._sessionId = String(p.sessionId ?? "");
    this._userId = String(p.userId ?? "");
    if (typeof p.heartbeatInterval === "number" && p.heartbeatInterval > 0) this.heartbeatMs = p.heartbeatInterval;
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
        const op: PendingOp = {
          kind: "sub",
          channels: heldNow,
          errors: [],
          resolve: () => {},
          reject: () => {},
          gap: previous ? { reason: previous.reason, previousSessionId: previous.id } : undefined,
        };
        this.sendOp(op);
      } else if (previous) {
        this.emit("gap", { reason: previous.reason, sessionId: this._sessionId, previousSessionId: previous.id, channels: [], refused: [] });
      }
    }
    this.flushOutbox();
    // A new session starts online; put back what the user chose.
    if (this.presence && this.presence !== "online") this.sendPresence();
    this.resolveReady(info);
  }

  private onResumed(p: any): void {
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
    if (this.presenceUnsent) this.sendPresence();
    this.resolveReady(info);
  }

  private onInvalidSession(): void {
    // Start over on the same connection (SPEC §8); the HELLO_ACK handler re-subscribes
    // and reports the gap.
    if (this._sessionId) this.lostSession = { id: this._sessionId, reason: "invalid_session" };
    this._sessionId = null;
    this._lastSeq = 0;
    this.sendRaw("HELLO", { token: this.token });
  }

  private resolveReady(info: ClientEventMap["connected"] | ClientEventMap["resumed"]): void {
    const waiters = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of waiters) w.resolve(info);
  }

  /** Replies come in command order; match each to what was sent. */
  private onReply(type: string, p: any): void {
    for (;;) {
      const head = this.expects[0];
      if (!head) {
        if (type === "ERROR") this.emit("error", serverError(p));
        return;
      }
      if (type === "ERROR") {
        const channel = typeof p.channel === "string" ? p.channel : undefined;
        if (head.kind === "op") {
          if (channel !== undefined) {
            if (head.op.kind === "sub") {
              head.op.errors.push({ channel, code: String(p.code ?? ""), message: String(p.message ?? "") });
            } else {
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
              if (this._state === "connected") this.flushOutbox();
            }, this.opts.backoffBaseMs);
          } else {
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
          if (err.code === "RATE_LIMITED") this.scheduleRefreshRetry();
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
        if (head.kind === "ping") this.expects.shift();
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
      if (head.kind === "op") this.outbox.push(head.op);
    }
  }

  private completeSubscribe(op: PendingOp, granted: string[]): void {
    const grantedSet = new Set(granted);
    for (const c of granted) this.held.add(c);
    for (const c of op.channels) if (!grantedSet.has(c)) this.held.delete(c);
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

  private armDeadTimer(): void {
    if (this._state !== "connected" && this.handshakeTimer) return; // the handshake timer covers it
    this.clearTimer("deadTimer");
    const gen = this.gen;
    this.deadTimer = setTimeout(() => {
      if (this.gen === gen) this.abandon(1006, "no frame received for 2x heartbeatInterval");
    }, 2 * this.heartbeatMs);
  }

  private startHeartbeat(): void {
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = setInterval(() => this.sendPing(), this.heartbeatMs);
    this.armDeadTimer();
  }

  private scheduleRefresh(): void {
    this.clearTimer("refreshTimer");
    if (!this.opts.getToken || !this.token) return;
    const at = refreshAt(this.token, Date.now(), this.opts.refreshLeadMs);
    if (at === null) return;
    const delay = Math.min(MAX_TIMEOUT, Math.max(0, at - Date.now()));
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      this.refresh().catch((e) => {
        if (this._state === "connected") this.emit("error", { code: "REFRESH_FAILED", message: errorMessage(e) });
      });
    }, delay);
  }

  private scheduleRefreshRetry(): void {
    this.clearTimer("refreshTimer");
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      this.refresh().catch(() => {});
    }, 5_000);
  }
}

function ignore(): void {}

function serverError(p: any, command?: string): GatewayClientError {
  const e: GatewayClientError = { code: String(p?.code ?? "ERROR"), message: String(p?.message ?? "") };
  if (typeof p?.channel === "string") e.channel = p.channel;
  if (command) e.command = command;
  return e;
}

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function callListener(l: (v: any) => void, v: unknown): void {
  try {
    l(v);
  } catch (err) {
    // Like EventTarget: one listener's exception does not stop the others or the client.
    setTimeout(() => {
      throw err;
    }, 0);
  }
}

function stripUndefined<T extends object>(o: T): T {
  const out: any = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = v;
  return out;
}
