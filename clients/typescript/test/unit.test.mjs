// The client's timing and bookkeeping against a scripted fake WebSocket, with
// node:test's fake timers: backoff bounds, close-code policy, heartbeat and dead
// connection, dedup, INVALID_SESSION, typing repeats, refresh schedule.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, mock, test } from "node:test";
import { GatewayClient, backoffDelay, decodeJwtClaims, refreshAt } from "../dist/index.js";

/** A WebSocket the test drives by hand. */
class FakeSocket {
  static all = [];
  readyState = 0;
  onopen = null;
  onmessage = null;
  onclose = null;
  onerror = null;
  sent = [];
  closedWith = null;
  constructor(url) {
    this.url = url;
    FakeSocket.all.push(this);
  }
  static get last() {
    return FakeSocket.all.at(-1);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }
  // --- driven by the test ---
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  frame(type, payload, extra = {}) {
    this.onmessage?.({ data: JSON.stringify({ type, payload, ...extra }) });
  }
  event(seq, event, channel, payload) {
    this.frame("EVENT", { event, channel, payload }, { seq });
  }
  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  /** A connection that never opened (refused): browsers report 1006. */
  fail() {
    this.onerror?.({});
    this.serverClose(1006);
  }
  types() {
    return this.sent.map((m) => m.type);
  }
}

function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "HS256" })}.${b64(claims)}.sig`;
}
const nowS = () => Math.floor(Date.now() / 1000);
const TOKEN = () => jwt({ sub: "u", iat: nowS(), exp: nowS() + 3600 });

/** Random values from a list, cycling. */
function seqRandom(values) {
  let i = 0;
  return () => values[i++ % values.length];
}

function make(opts = {}) {
  const c = new GatewayClient({ url: "ws://gw/api/v1/ws", WebSocket: FakeSocket, token: TOKEN(), ...opts });
  const log = { disconnected: [], events: [], gaps: [], errors: [], connecting: [], resumed: [], connected: [] };
  for (const k of ["disconnected", "gap", "error", "connecting", "resumed", "connected"]) {
    c.on(k, (v) => log[k === "gap" ? "gaps" : k === "error" ? "errors" : k].push(v));
  }
  c.on("event", (e) => log.events.push(e));
  return { c, log };
}

/** Open the last socket and acknowledge HELLO. */
function handshake(sessionId = "s1", heartbeatInterval = 30_000) {
  const ws = FakeSocket.last;
  ws.open();
  assert.equal(ws.sent.at(-1).type, "HELLO");
  ws.frame("HELLO_ACK", { sessionId, heartbeatInterval, userId: "u" });
  return ws;
}

/** Node 20's fake timers run only timers due at the start of one tick(): advance in steps. */
function advance(ms, step = 250) {
  for (let t = 0; t < ms; t += step) mock.timers.tick(Math.min(step, ms - t));
}

const QUIET = 1e9; // a heartbeatInterval that keeps PINGs and the dead timer out of the way

const flush = async () => {
  for (let i = 0; i < 5; i++) await Promise.resolve();
};

beforeEach(() => {
  FakeSocket.all = [];
  mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"], now: 1_800_000_000_000 });
});
afterEach(() => {
  mock.timers.reset();
});

describe("backoff", () => {
  test("backoffDelay is random(0, min(cap, base*2^n))", () => {
    assert.equal(backoffDelay(0, 500, 30_000, () => 0), 0);
    assert.equal(backoffDelay(0, 500, 30_000, () => 0.5), 250);
    assert.equal(backoffDelay(3, 500, 30_000, () => 0.5), 2000);
    assert.equal(backoffDelay(10, 500, 30_000, () => 0.999999), 29_999);
    assert.equal(backoffDelay(2000, 500, 30_000, () => 0.5), 15_000, "huge attempt numbers stay at the cap");
    for (let n = 0; n < 200; n++) {
      const d = backoffDelay(n % 12, 500, 30_000);
      assert.ok(d >= 0 && d < Math.min(30_000, 500 * 2 ** (n % 12)), `${d} for n=${n % 12}`);
    }
  });

  test("failed connects wait random(0, min(cap, base*2^n)), n growing, reset by a session", () => {
    const randoms = [0.9, 0.1, 0.5, 0.99, 0.3, 0.75, 0.6, 0.2, 0.95];
    const { c, log } = make({ backoffBaseMs: 500, backoffCapMs: 5000, random: seqRandom(randoms) });
    c.connect().catch(() => {});
    for (let n = 0; n < randoms.length; n++) {
      assert.equal(FakeSocket.all.length, n + 1);
      FakeSocket.last.fail();
      const ceiling = Math.min(5000, 500 * 2 ** n);
      const d = log.disconnected.at(-1);
      assert.equal(d.code, 1006);
      assert.equal(d.willRetryInMs, Math.floor(randoms[n] * ceiling));
      assert.ok(d.willRetryInMs >= 0 && d.willRetryInMs < ceiling);
      assert.equal(c.state, "reconnecting");
      // Not a millisecond early…
      if (d.willRetryInMs > 0) {
        mock.timers.tick(d.willRetryInMs - 1);
        assert.equal(FakeSocket.all.length, n + 1, `attempt ${n + 1} waited`);
        mock.timers.tick(1);
      } else {
        mock.timers.tick(0);
      }
      // …and on time.
      assert.equal(FakeSocket.all.length, n + 2, `attempt ${n + 1} started`);
    }
    // A session resets n: the next drop waits random(0, base) again.
    handshake();
    FakeSocket.last.serverClose(1006);
    assert.ok(log.disconnected.at(-1).willRetryInMs < 500);
    c.close();
  });

  test("Math.random by default: every delay within its bound, capped", () => {
    const { c, log } = make({ backoffBaseMs: 100, backoffCapMs: 1000 });
    c.connect().catch(() => {});
    for (let n = 0; n < 30; n++) {
      FakeSocket.last.fail();
      const d = log.disconnected.at(-1).willRetryInMs;
      assert.ok(d >= 0 && d < Math.min(1000, 100 * 2 ** n), `delay ${d} at n=${n}`);
      mock.timers.tick(d);
    }
    assert.equal(FakeSocket.all.length, 31);
    c.close();
  });

  test("4011 reconnects at once with random(0, base); failures after it back off from base*2", () => {
    const { c, log } = make({ backoffBaseMs: 500, backoffCapMs: 30_000, random: () => 0.5 });
    c.connect().catch(() => {});
    handshake();
    FakeSocket.last.serverClose(4011, "draining");
    assert.deepEqual(log.disconnected.at(-1), { code: 4011, reason: "draining", willRetryInMs: 250 });
    mock.timers.tick(250);
    assert.equal(FakeSocket.all.length, 2);
    FakeSocket.last.fail();
    assert.equal(log.disconnected.at(-1).willRetryInMs, 500, "0.5 * base*2");
    mock.timers.tick(500);
    FakeSocket.last.fail();
    assert.equal(log.disconnected.at(-1).willRetryInMs, 1000);
    c.close();
  });

  test("4008 and 4010 back off like a network error and RESUME", () => {
    for (const code of [4008, 4010, 4009, 1001]) {
      FakeSocket.all = [];
      const { c, log } = make({ backoffBaseMs: 500, random: () => 0.5 });
      c.connect().catch(() => {});
      handshake("sess");
      FakeSocket.last.serverClose(code);
      assert.equal(log.disconnected.at(-1).willRetryInMs, 250, `code ${code}`);
      mock.timers.tick(250);
      FakeSocket.last.open();
      assert.deepEqual(FakeSocket.last.sent[0], { type: "RESUME", payload: { token: c["token"], sessionId: "sess", seq: 0 } });
      c.close();
    }
  });
});

describe("when not to reconnect", () => {
  for (const code of [4003, 4005]) {
    test(`${code} (a client bug): never`, async () => {
      const { c, log } = make();
      const p = c.connect();
      handshake();
      FakeSocket.last.serverClose(code);
      assert.deepEqual(log.disconnected.at(-1), { code, reason: "", willRetryInMs: null });
      assert.equal(c.state, "closed");
      mock.timers.tick(10 * 60_000);
      assert.equal(FakeSocket.all.length, 1);
      await p;
    });
  }

  test("4004 with a static token: never", async () => {
    const { c, log } = make();
    const p = c.connect();
    FakeSocket.last.open();
    FakeSocket.last.serverClose(4004);
    await assert.rejects(p, /authentication failed/);
    assert.deepEqual(log.disconnected.at(-1), { code: 4004, reason: "", willRetryInMs: null });
    assert.equal(log.errors.at(-1).code, "AUTH_FAILED");
    mock.timers.tick(10 * 60_000);
    assert.equal(FakeSocket.all.length, 1);
  });

  test("4004 with a token callback: one fresh token, then stop", async () => {
    let calls = 0;
    const tokens = [];
    const { c, log } = make({
      token: undefined,
      random: () => 0.5,
      getToken: async () => {
        calls++;
        const t = jwt({ sub: "u", n: calls, exp: nowS() + 3600 });
        tokens.push(t);
        return t;
      },
    });
    const p = c.connect();
    await flush();
    assert.equal(calls, 1);
    FakeSocket.last.open();
    assert.equal(FakeSocket.last.sent[0].payload.token, tokens[0]);
    FakeSocket.last.serverClose(4004);
    assert.equal(log.disconnected.at(-1).willRetryInMs, 250);
    mock.timers.tick(250);
    await flush();
    assert.equal(calls, 2, "asked for a new token before reconnecting");
    assert.equal(FakeSocket.all.length, 2);
    FakeSocket.last.open();
    assert.deepEqual(FakeSocket.last.sent[0], { type: "HELLO", payload: { token: tokens[1] } });
    FakeSocket.last.serverClose(4004);
    assert.equal(log.disconnected.at(-1).willRetryInMs, null);
    await assert.rejects(p);
    mock.timers.tick(10 * 60_000);
    await flush();
    assert.equal(FakeSocket.all.length, 2);
    assert.equal(calls, 2);
  });

  test("4004 on an established session ends it; 4004 on a RESUME keeps it for a fresh-token RESUME", async () => {
    let calls = 0;
    const { c, log } = make({ token: undefined, random: () => 0, getToken: () => jwt({ sub: "u", n: ++calls, exp: nowS() + 3600 }) });
    c.connect().catch(() => {});
    await flush();
    handshake("sess");
    FakeSocket.last.serverClose(1006);
    mock.timers.tick(0);
    FakeSocket.last.open();
    assert.equal(FakeSocket.last.sent[0].type, "RESUME");
    FakeSocket.last.serverClose(4004); // the RESUME's token was refused
    mock.timers.tick(0);
    await flush();
    assert.equal(calls, 2);
    FakeSocket.last.open();
    assert.deepEqual(FakeSocket.last.sent[0].payload.sessionId, "sess", "the parked session is tried again");
    FakeSocket.last.frame("RESUMED", { sessionId: "sess", replayed: 0 });
    // Now an authentication close of the live session: it is gone on the server.
    FakeSocket.last.serverClose(4004);
    mock.timers.tick(0);
    await flush();
    assert.equal(calls, 3);
    FakeSocket.last.open();
    assert.equal(FakeSocket.last.sent[0].type, "HELLO");
    FakeSocket.last.frame("HELLO_ACK", { sessionId: "next", heartbeatInterval: 30_000, userId: "u" });
    assert.equal(log.gaps.length, 1);
    assert.equal(log.gaps[0].previousSessionId, "sess");
    c.close();
  });

  test("close() is final, and sends 1000", () => {
    const { c, log } = make({ random: () => 0.5 });
    c.connect().catch(() => {});
    const ws = handshake();
    c.close();
    assert.deepEqual(ws.closedWith, { code: 1000, reason: "client close" });
    assert.deepEqual(log.disconnected.at(-1), { code: 1000, reason: "client close", willRetryInMs: null });
    ws.serverClose(1000); // the late close event changes nothing
    mock.timers.tick(60_000);
    assert.equal(FakeSocket.all.length, 1);
    assert.equal(c.state, "closed");
  });

  test("close() while waiting to reconnect cancels the attempt", () => {
    const { c } = make({ random: () => 0.5 });
    c.connect().catch(() => {});
    handshake();
    FakeSocket.last.serverClose(1006);
    c.close();
    mock.timers.tick(60_000);
    assert.equal(FakeSocket.all.length, 1);
  });
});

describe("heartbeat", () => {
  test("PING every heartbeatInterval; no frame for 2x interval: close and RESUME", () => {
    const { c, log } = make({ random: () => 0.5, backoffBaseMs: 500 });
    c.connect().catch(() => {});
    const ws = handshake("sess", 1000);
    mock.timers.tick(1000);
    assert.deepEqual(ws.types(), ["HELLO", "PING"]);
    ws.frame("PONG", { timestamp: Date.now() });
    mock.timers.tick(1000);
    assert.deepEqual(ws.types(), ["HELLO", "PING", "PING"]);
    ws.frame("PONG", { timestamp: Date.now() });
    // Now nothing comes back any more.
    mock.timers.tick(1999);
    assert.equal(log.disconnected.length, 0);
    mock.timers.tick(1);
    assert.equal(log.disconnected.length, 1);
    assert.equal(log.disconnected[0].code, 1006);
    assert.equal(ws.closedWith.code, 4000, "not 1000: the server keeps the session");
    mock.timers.tick(250);
    FakeSocket.last.open();
    assert.equal(FakeSocket.last.sent[0].type, "RESUME");
    c.close();
  });

  test("a handshake that never completes times out", () => {
    const { c, log } = make({ handshakeTimeoutMs: 3000, random: () => 0.5 });
    c.connect().catch(() => {});
    FakeSocket.last.open();
    mock.timers.tick(2999);
    assert.equal(log.disconnected.length, 0);
    mock.timers.tick(1);
    assert.equal(log.disconnected[0].code, 1006);
    assert.match(log.disconnected[0].reason, /handshake/);
    c.close();
  });
});

describe("sessions", () => {
  test("an EVENT is delivered once: seq at or below the last one is dropped", () => {
    const { c, log } = make();
    c.connect().catch(() => {});
    const ws = handshake();
    ws.event(5, "dm.typing", "dm:c", { conversationId: "c", userId: "x", isTyping: true });
    ws.event(5, "dm.typing", "dm:c", {});
    ws.event(4, "dm.typing", "dm:c", {});
    ws.event(9, "x.custom", "live:a", { a: 1 });
    assert.deepEqual(log.events.map((e) => [e.seq, e.known]), [[5, true], [9, false]]);
    assert.equal(c.duplicatesDropped, 2);
    assert.equal(c.lastSeq, 9);
    c.close();
  });

  test("RESUME carries the last seq; replay then RESUMED; held channels are not re-sent", () => {
    const { c, log } = make({ random: () => 0 });
    c.connect().catch(() => {});
    let ws = handshake("sess");
    const sub = c.subscribe(["live:a", "server:nope"]);
    assert.deepEqual(ws.sent.at(-1), { type: "SUBSCRIBE", payload: { channels: ["live:a", "server:nope"] } });
    ws.frame("ERROR", { code: "FORBIDDEN", message: "no", channel: "server:nope" });
    ws.frame("SUBSCRIBED", { channels: ["live:a"] });
    ws.event(3, "live.viewer.count", "live:a", { streamId: "a", count: 1 });
    ws.serverClose(1006);
    mock.timers.tick(0);
    ws = FakeSocket.last;
    ws.open();
    assert.deepEqual(ws.sent, [{ type: "RESUME", payload: { token: c["token"], sessionId: "sess", seq: 3 } }]);
    ws.event(3, "live.viewer.count", "live:a", { streamId: "a", count: 1 }); // not above 3: dropped
    ws.event(4, "live.viewer.count", "live:a", { streamId: "a", count: 2 });
    ws.frame("RESUMED", { sessionId: "sess", replayed: 2 });
    assert.deepEqual(log.resumed, [{ sessionId: "sess", replayed: 2 }]);
    assert.deepEqual(log.events.map((e) => e.payload.count), [1, 2]);
    assert.deepEqual(ws.types(), ["RESUME"], "a resumed session keeps its subscriptions");
    assert.equal(log.gaps.length, 0);
    return sub.then((r) => {
      assert.deepEqual(r, { granted: ["live:a"], errors: [{ channel: "server:nope", code: "FORBIDDEN", message: "no" }] });
      c.close();
    });
  });

  test("INVALID_SESSION: HELLO on the same socket, re-subscribe, reset seq, then gap", () => {
    const { c, log } = make({ random: () => 0 });
    c.connect().catch(() => {});
    let ws = handshake("old");
    c.subscribe(["live:a", "server:s1"]);
    ws.frame("SUBSCRIBED", { channels: ["live:a", "server:s1"] });
    ws.event(50, "live.viewer.count", "live:a", { count: 1 });
    ws.serverClose(4011);
    mock.timers.tick(0);
    ws = FakeSocket.last;
    ws.open();
    ws.frame("INVALID_SESSION", {});
    assert.deepEqual(ws.types(), ["RESUME", "HELLO"]);
    ws.frame("HELLO_ACK", { sessionId: "new", heartbeatInterval: 30_000, userId: "u" });
    assert.deepEqual(ws.sent.at(-1), { type: "SUBSCRIBE", payload: { channels: ["live:a", "server:s1"] } });
    assert.equal(log.gaps.length, 0, "the gap waits for the re-subscription");
    ws.frame("ERROR", { code: "FORBIDDEN", message: "left", channel: "server:s1" });
    ws.frame("SUBSCRIBED", { channels: ["live:a"] });
    assert.deepEqual(log.gaps, [
      {
        reason: "invalid_session",
        sessionId: "new",
        previousSessionId: "old",
        channels: ["live:a"],
        refused: [{ channel: "server:s1", code: "FORBIDDEN", message: "left" }],
      },
    ]);
    assert.deepEqual(c.channels, ["live:a"]);
    // A restarted node starts seq over: seq 1 is new, not a duplicate.
    ws.event(1, "live.viewer.count", "live:a", { count: 2 });
    assert.deepEqual(log.events.map((e) => e.payload.count), [1, 2]);
    c.close();
  });

  test("subscribe/unsubscribe while offline are sent when the session is back", async () => {
    const { c } = make({ random: () => 0 });
    const sub = c.subscribe("live:early");
    c.connect().catch(() => {});
    let ws = handshake("sess");
    assert.deepEqual(ws.sent.at(-1), { type: "SUBSCRIBE", payload: { channels: ["live:early"] } });
    ws.frame("SUBSCRIBED", { channels: ["live:early"] });
    assert.deepEqual((await sub).granted, ["live:early"]);
    ws.serverClose(1006);
    const sub2 = c.subscribe("live:late");
    const unsub = c.unsubscribe("live:early");
    mock.timers.tick(0);
    ws = FakeSocket.last;
    ws.open();
    ws.frame("RESUMED", { sessionId: "sess", replayed: 0 });
    assert.deepEqual(ws.types(), ["RESUME", "SUBSCRIBE", "UNSUBSCRIBE"]);
    ws.frame("SUBSCRIBED", { channels: ["live:late"] });
    ws.frame("UNSUBSCRIBED", { channels: ["live:early"] });
    assert.deepEqual((await sub2).granted, ["live:late"]);
    assert.deepEqual(await unsub, ["live:early"]);
    assert.deepEqual(c.channels, ["live:late"]);
    c.close();
  });

  test("a SUBSCRIBE unanswered when the connection drops is sent again", async () => {
    const { c } = make({ random: () => 0 });
    c.connect().catch(() => {});
    let ws = handshake("sess");
    const sub = c.subscribe("live:x");
    ws.serverClose(1006);
    mock.timers.tick(0);
    ws = FakeSocket.last;
    ws.open();
    ws.frame("RESUMED", { sessionId: "sess", replayed: 0 });
    assert.deepEqual(ws.types(), ["RESUME", "SUBSCRIBE"]);
    ws.frame("SUBSCRIBED", { channels: ["live:x"] });
    assert.deepEqual((await sub).granted, ["live:x"]);
    c.close();
  });

  test("RATE_LIMITED is matched to the command that caused it", async () => {
    const { c, log } = make();
    c.connect().catch(() => {});
    const ws = handshake();
    c.typing("dm:a");
    const s1 = c.subscribe("live:a");
    // TYPING_START is followed by a PING so its (absent) answer is delimited.
    assert.deepEqual(ws.types(), ["HELLO", "TYPING_START", "PING", "SUBSCRIBE"]);
    ws.frame("PONG", { timestamp: 1 }); // the typing command answered nothing
    ws.frame("ERROR", { code: "RATE_LIMITED", message: "slow down" });
    await assert.rejects(s1, (e) => e.code === "RATE_LIMITED");
    assert.equal(log.errors.at(-1).command, "SUBSCRIBE");
    c.typing("dm:b");
    ws.frame("ERROR", { code: "RATE_LIMITED", message: "slow down" });
    assert.equal(log.errors.at(-1).command, "TYPING_START");
    ws.frame("PONG", { timestamp: 2 });
    const s2 = c.subscribe("live:b");
    ws.frame("SUBSCRIBED", { channels: ["live:b"] });
    assert.deepEqual((await s2).granted, ["live:b"]);
    c.close();
  });
});

describe("typing", () => {
  test("TYPING_START at once, repeated every 8 s while calls go on, then left to the server", () => {
    const { c } = make();
    c.connect().catch(() => {});
    const ws = handshake("s", QUIET);
    const starts = () => ws.sent.filter((m) => m.type === "TYPING_START").length;
    c.typing("dm:c");
    assert.equal(starts(), 1);
    for (let t = 0; t < 20; t++) {
      mock.timers.tick(1000); // a keystroke a second for 20 s
      c.typing("dm:c");
    }
    assert.equal(starts(), 3, "at 0, 8 and 16 s");
    advance(30_000); // typing stopped: one more for the calls made since 16 s, then nothing
    assert.equal(starts(), 4);
    c.typing("dm:c");
    assert.equal(starts(), 5, "a new burst starts at once");
    c.stopTyping("dm:c");
    assert.deepEqual(ws.sent.at(-2), { type: "TYPING_STOP", payload: { channelId: "dm:c" } });
    advance(30_000);
    assert.equal(starts(), 5);
    c.stopTyping("dm:c");
    assert.equal(ws.sent.filter((m) => m.type === "TYPING_STOP").length, 1, "no STOP for what the server already ended");
    c.close();
  });
});

describe("token refresh", () => {
  test("refreshAt: 60 s before exp, or 10% of the lifetime when shorter", () => {
    const now = 1_800_000_000_000;
    const s = now / 1000;
    assert.equal(refreshAt(jwt({ iat: s, exp: s + 3600 }), now), (s + 3600) * 1000 - 60_000);
    assert.equal(refreshAt(jwt({ iat: s, exp: s + 300 }), now), (s + 300) * 1000 - 30_000);
    assert.equal(refreshAt(jwt({ exp: s + 100 }), now), (s + 100) * 1000 - 10_000);
    assert.equal(refreshAt("not a jwt", now), null);
    assert.equal(refreshAt(jwt({ sub: "no exp" }), now), null);
    assert.deepEqual(decodeJwtClaims(jwt({ sub: "ü", exp: 1 })), { sub: "ü", exp: 1 });
  });

  test("REFRESH goes out before exp with a token from the callback", async () => {
    let n = 0;
    const { c } = make({ token: undefined, getToken: () => jwt({ sub: "u", n: ++n, iat: nowS(), exp: nowS() + 600 }) });
    const refreshed = [];
    c.on("refreshed", (r) => refreshed.push(r.exp));
    c.connect().catch(() => {});
    await flush();
    const ws = handshake("s", QUIET);
    advance(540_000 - 1, 10_000);
    await flush();
    assert.ok(!ws.types().includes("REFRESH"));
    mock.timers.tick(1);
    await flush();
    const refresh = ws.sent.find((m) => m.type === "REFRESH");
    assert.ok(refresh, "REFRESH sent 60 s before exp");
    assert.equal(decodeJwtClaims(refresh.payload.token).n, 2);
    ws.frame("REFRESHED", { exp: nowS() + 600 });
    assert.equal(refreshed.length, 1);
    // The next one is scheduled from the new token.
    advance(540_000, 10_000);
    await flush();
    assert.equal(ws.sent.filter((m) => m.type === "REFRESH").length, 2);
    c.close();
  });

  test("an expired cached token is replaced before reconnecting", async () => {
    let n = 0;
    const { c } = make({ token: undefined, random: () => 0, getToken: () => jwt({ sub: "u", n: ++n, exp: nowS() + 60 }) });
    c.connect().catch(() => {});
    await flush();
    handshake();
    mock.timers.tick(0);
    FakeSocket.last.serverClose(1006);
    mock.timers.tick(120_000); // reconnect happens at once, but let the token lapse first
    await flush();
    assert.equal(n, 2);
    c.close();
  });
});

describe("presence", () => {
  test("setPresence is re-applied on a new session, sent once when resumed", () => {
    const { c } = make({ random: () => 0 });
    c.connect().catch(() => {});
    let ws = handshake("a");
    c.setPresence("dnd");
    assert.deepEqual(ws.sent.at(-2), { type: "SET_PRESENCE", payload: { status: "dnd" } });
    ws.serverClose(1006);
    mock.timers.tick(0);
    ws = FakeSocket.last;
    ws.open();
    ws.frame("RESUMED", { sessionId: "a", replayed: 0 });
    assert.deepEqual(ws.types(), ["RESUME"], "the session kept its status");
    ws.serverClose(1006);
    c.setPresence("idle");
    mock.timers.tick(0);
    ws = FakeSocket.last;
    ws.open();
    ws.frame("INVALID_SESSION", {});
    ws.frame("HELLO_ACK", { sessionId: "b", heartbeatInterval: 30_000, userId: "u" });
    assert.deepEqual(ws.types(), ["RESUME", "HELLO", "SET_PRESENCE", "PING"]);
    assert.equal(ws.sent[2].payload.status, "idle");
    c.close();
  });
});
