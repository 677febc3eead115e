// The client against the REAL gateway binary and a REAL redis-server.
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import { GatewayClient } from "../dist/index.js";
import {
  freePort,
  metric,
  publish,
  record,
  redisCommand,
  sleep,
  startGateway,
  startProxy,
  startRedis,
  tokenFor,
  waitFor,
  withTimeout,
} from "./harness.mjs";

let redis;
before(async () => {
  redis = await startRedis();
});
after(async () => {
  await redis?.stop();
});

function client(opts) {
  return new GatewayClient({ WebSocket, backoffBaseMs: 100, backoffCapMs: 2000, ...opts });
}

const seqsOf = (events) => events.map((e) => e.seq);
const idsOf = (events, event) => events.filter((e) => e.event === event).map((e) => e.payload?.n ?? e.payload?.id);

describe("a connected client", () => {
  let gw;
  before(async () => {
    gw = await startGateway({ redisUrl: redis.url });
  });
  after(async () => {
    await gw?.stop();
  });

  test("connects, subscribes (per-channel ERRORs) and receives typed events", async () => {
    const c = client({ url: gw.wsUrl, token: tokenFor("alice", { servers: ["s1"], dms: ["c1"] }) });
    const log = record(c);
    try {
      const ready = await withTimeout(c.connect(), 5000, "connect");
      assert.equal(ready.userId, "alice");
      assert.equal(typeof ready.sessionId, "string");
      assert.equal(c.state, "connected");

      const res = await withTimeout(
        c.subscribe(["server:s1", "server:s2", "dm:c1", "live:show:chat", "nope:x", "dm:c2"]),
        5000,
        "subscribe",
      );
      assert.deepEqual(res.granted.sort(), ["dm:c1", "live:show:chat", "server:s1"]);
      const byChannel = Object.fromEntries(res.errors.map((e) => [e.channel, e.code]));
      assert.deepEqual(byChannel, { "server:s2": "FORBIDDEN", "nope:x": "INVALID_CHANNEL", "dm:c2": "FORBIDDEN" });
      assert.deepEqual(c.channels.sort(), ["dm:c1", "live:show:chat", "server:s1"]);
      assert.equal(log.errors.length, 0, "channel refusals go to the promise, not to 'error'");

      const typed = [];
      c.onEvent("server.message.new", (e) => typed.push(e.payload.channelId));
      const counts = [];
      c.onEvent("live.viewer.count", (e) => counts.push(e.payload.count));

      await publish(gw.admin, "server:s1:channel:general", "server.message.new", { serverId: "s1", channelId: "general", message: { id: "m1" } });
      await publish(gw.admin, "server:s2:channel:x", "server.message.new", { serverId: "s2", channelId: "x", message: { id: "no" } });
      // A backend publishing straight into Redis, as the design document's Go Publisher does.
      await redisCommand(redis.port, "PUBLISH", "events:live:show:chat", JSON.stringify({ type: "live.viewer.count", payload: { streamId: "show", count: 42 } }));
      await publish(gw.admin, "dm:c1", "dm.custom.thing", { hello: 1 });
      await publish(gw.admin, "dm:c1", "dm.message.new", { message: { id: "m2" } });

      // Alice's own presence (user.presence, server.member.presence on server:s1) may
      // interleave: it goes through Redis after HELLO_ACK.
      const notPresence = () => log.events.filter((e) => !/presence$/.test(e.event));
      await waitFor(() => notPresence().length >= 4, 5000, "4 events");
      await sleep(150);
      const events = notPresence();
      assert.deepEqual(
        events.map((e) => [e.event, e.channel, e.known]),
        [
          ["server.message.new", "server:s1:channel:general", true],
          ["live.viewer.count", "live:show:chat", true],
          ["dm.custom.thing", "dm:c1", false],
          ["dm.message.new", "dm:c1", true],
        ],
      );
      assert.deepEqual(events[3].payload, { message: { id: "m2" } });
      assert.deepEqual(typed, ["general"]);
      assert.deepEqual(counts, [42]);
      const seqs = seqsOf(log.events);
      assert.ok(seqs.every((s, i) => i === 0 || s > seqs[i - 1]), `seq strictly increasing: ${seqs}`);
      assert.equal(c.lastSeq, seqs.at(-1));

      // Unsubscribe: the promise carries the server's UNSUBSCRIBED list.
      const gone = await withTimeout(c.unsubscribe("live:show:chat"), 5000, "unsubscribe");
      assert.deepEqual(gone, ["live:show:chat"]);
      assert.deepEqual(c.channels.sort(), ["dm:c1", "server:s1"]);
      const before = notPresence().length;
      await publish(gw.admin, "live:show:chat", "live.viewer.count", { streamId: "show", count: 1 });
      await publish(gw.admin, "server:s1", "server.member.join", { serverId: "s1", member: { id: "bob" } });
      await waitFor(() => notPresence().length > before, 5000, "server.member.join");
      await sleep(100);
      assert.deepEqual(notPresence().slice(before).map((e) => e.event), ["server.member.join"]);
    } finally {
      c.close();
    }
  });

  test("typing repeats TYPING_START while it goes on, presence is broadcast", async () => {
    const alice = client({ url: gw.wsUrl, token: tokenFor("alice2", { servers: ["s7"], dms: ["c7"] }), typingRepeatMs: 400 });
    const bob = client({ url: gw.wsUrl, token: tokenFor("bob2", { servers: ["s7"], dms: ["c7"] }) });
    const bobLog = record(bob);
    const aliceLog = record(alice);
    try {
      await withTimeout(Promise.all([alice.connect(), bob.connect()]), 5000, "connect");
      await withTimeout(bob.subscribe(["server:s7", "dm:c7"]), 5000, "subscribe");

      const typingEvents = () => bobLog.events.filter((e) => e.event === "server.typing" && e.payload.userId === "alice2");
      alice.typing("server:s7:channel:general");
      await waitFor(() => typingEvents().length >= 1, 5000, "server.typing");
      assert.deepEqual(typingEvents()[0].payload, { serverId: "s7", channelId: "general", userId: "alice2", isTyping: true });
      // Keystrokes keep coming for ~1 s: TYPING_START goes out again every 400 ms.
      const startCommands = async () => metric(gw.admin, 'xcord_commands_total{type="TYPING_START"}');
      const startsBefore = await startCommands();
      const began = Date.now();
      for (let i = 0; i < 10; i++) {
        alice.typing("server:s7:channel:general");
        await sleep(100);
      }
      const elapsed = Date.now() - began;
      const starts = (await startCommands()) - startsBefore;
      assert.ok(starts >= 2 && starts <= Math.ceil(elapsed / 400), `TYPING_START repeated every 400 ms while typing (${starts} in ${elapsed} ms)`);
      alice.stopTyping("server:s7:channel:general");
      await waitFor(() => typingEvents().some((e) => e.payload.isTyping === false), 5000, "isTyping false");

      // DM typing, and a refused one (FORBIDDEN goes to 'error' with the command).
      alice.typing("dm:c7");
      await waitFor(() => bobLog.events.some((e) => e.event === "dm.typing"), 5000, "dm.typing");
      assert.deepEqual(bobLog.events.find((e) => e.event === "dm.typing").payload, { conversationId: "c7", userId: "alice2", isTyping: true });
      alice.typing("dm:not-mine");
      await waitFor(() => aliceLog.errors.length >= 1, 5000, "typing error");
      assert.equal(aliceLog.errors[0].code, "FORBIDDEN");
      assert.equal(aliceLog.errors[0].command, "TYPING_START");

      alice.setPresence("dnd");
      await waitFor(
        () => bobLog.events.some((e) => e.event === "server.member.presence" && e.payload.userId === "alice2" && e.payload.presence === "dnd"),
        5000,
        "server.member.presence dnd",
      );
      await waitFor(() => aliceLog.events.some((e) => e.event === "user.presence" && e.payload.presence === "dnd"), 5000, "own user.presence");
    } finally {
      alice.close();
      bob.close();
    }
  });

  test("a SUBSCRIBE refused with RATE_LIMITED rejects its promise", async () => {
    const g = await startGateway({ redisUrl: redis.url, extraArgs: ["--rate-limit", "3/60s"] });
    const c = client({ url: g.wsUrl, token: tokenFor("carol", { servers: ["s1"] }) });
    const log = record(c);
    try {
      await withTimeout(c.connect(), 5000, "connect");
      c.typing("server:s1:channel:a"); // 1
      const r1 = c.subscribe("live:a"); // 2
      const r2 = c.subscribe("live:b"); // 3
      const r3 = c.subscribe("live:c"); // 4: refused
      assert.deepEqual((await withTimeout(r1, 5000, "r1")).granted, ["live:a"]);
      assert.deepEqual((await withTimeout(r2, 5000, "r2")).granted, ["live:b"]);
      await assert.rejects(withTimeout(r3, 5000, "r3"), (e) => e.code === "RATE_LIMITED");
      assert.deepEqual(c.channels.sort(), ["live:a", "live:b"]);
      assert.equal(log.errors.at(-1).command, "SUBSCRIBE");
      assert.equal(c.state, "connected");
    } finally {
      c.close();
      await g.stop();
    }
  });

  test("heartbeat keeps an idle connection up; a mute connection is detected and resumed", async () => {
    const g = await startGateway({ redisUrl: redis.url, heartbeatMs: 500 });
    const proxy = await startProxy(g.addr);
    const c = client({ url: proxy.wsUrl, token: tokenFor("dave") });
    const log = record(c);
    try {
      const ready = await withTimeout(c.connect(), 5000, "connect");
      assert.equal(ready.heartbeatInterval, 500);
      await withTimeout(c.subscribe("live:hb"), 5000, "subscribe");
      await sleep(2500); // five intervals: the server would close 4009 after 1 s without PINGs
      assert.equal(log.disconnected.length, 0, `no disconnect while idle: ${JSON.stringify(log.disconnected)}`);
      assert.equal(proxy.connections, 1);

      // The gateway side goes away, the client's socket stays open but silent.
      proxy.silence();
      await waitFor(() => log.disconnected.length >= 1, 3000, "dead connection detected");
      assert.equal(log.disconnected[0].code, 1006);
      assert.match(log.disconnected[0].reason, /heartbeat/);
      assert.ok(log.disconnected[0].willRetryInMs !== null);
      await waitFor(() => log.resumed.length >= 1, 5000, "resumed");
      assert.equal(log.gaps.length, 0);
      await publish(g.admin, "live:hb", "live.viewer.count", { streamId: "hb", count: 3 });
      await waitFor(() => log.events.some((e) => e.event === "live.viewer.count"), 5000, "event after resume");
    } finally {
      c.close();
      await proxy.close();
      await g.stop();
    }
  });
});

describe("reconnecting", () => {
  test("a dropped TCP connection resumes with nothing lost or doubled", async () => {
    const g = await startGateway({ redisUrl: redis.url });
    const proxy = await startProxy(g.addr);
    const c = client({ url: proxy.wsUrl, token: tokenFor("erin", { servers: ["s3"] }) });
    const log = record(c);
    try {
      const first = await withTimeout(c.connect(), 5000, "connect");
      await withTimeout(c.subscribe(["server:s3", "live:r"]), 5000, "subscribe");
      await publish(g.admin, "server:s3", "server.member.join", { serverId: "s3", member: { id: "u" }, n: 1 });
      await waitFor(() => idsOf(log.events, "server.member.join").length === 1, 5000, "event 1");

      proxy.hold(); // the reconnect waits at the proxy until the events below are published
      proxy.drop();
      await waitFor(() => log.disconnected.length === 1, 5000, "disconnected");
      assert.equal(log.disconnected[0].code, 1006);
      assert.ok(log.disconnected[0].willRetryInMs >= 0 && log.disconnected[0].willRetryInMs <= 100);
      await waitFor(async () => (await metric(g.admin, 'xcord_connections{shard="0"}')) === 0, 5000, "gateway noticed the drop");
      for (const n of [2, 3, 4]) await publish(g.admin, n === 3 ? "live:r" : "server:s3", "server.member.join", { serverId: "s3", member: { id: "u" }, n });
      await sleep(100);
      proxy.release();

      const resumed = await withTimeout(
        new Promise((r) => c.once("resumed", r)),
        5000,
        "resumed",
      );
      assert.equal(resumed.sessionId, first.sessionId);
      assert.equal(resumed.replayed, 3);
      await publish(g.admin, "server:s3", "server.member.join", { serverId: "s3", member: { id: "u" }, n: 5 });
      await waitFor(() => idsOf(log.events, "server.member.join").length === 5, 5000, "event 5");
      await sleep(150);
      assert.deepEqual(idsOf(log.events, "server.member.join"), [1, 2, 3, 4, 5]);
      assert.equal(log.gaps.length, 0, "a resume is no gap");
      assert.equal(log.connected.length, 1, "no second HELLO");
      assert.equal(c.duplicatesDropped, 0);
      const seqs = seqsOf(log.events);
      assert.ok(seqs.every((s, i) => i === 0 || s > seqs[i - 1]), `seq strictly increasing: ${seqs}`);
      assert.deepEqual(log.states.filter((s) => s !== "connecting"), ["connected", "disconnected:1006", "resumed"]);
      assert.equal(proxy.connections, 2);
    } finally {
      c.close();
      await proxy.close();
      await g.stop();
    }
  });

  test("a drained node: reconnect to its successor, HELLO again, gap, no duplicate", async () => {
    const port = await freePort();
    const listen = `127.0.0.1:${port}`;
    let g = await startGateway({ redisUrl: redis.url, listen, drainSeconds: 1 });
    // random 0.5: a 4011 reconnects after 50 ms; failures then wait 100, 200, 400, … ms.
    const c = client({ url: g.wsUrl, token: tokenFor("frank", { servers: ["s4"] }), random: () => 0.5 });
    const log = record(c);
    let g2;
    try {
      const first = await withTimeout(c.connect(), 5000, "connect");
      await withTimeout(c.subscribe(["server:s4", "live:d"]), 5000, "subscribe");
      for (const n of [1, 2]) await publish(g.admin, "server:s4", "server.member.join", { serverId: "s4", member: {}, n });
      await waitFor(() => idsOf(log.events, "server.member.join").length === 2, 5000, "events 1-2");
      const oldSeq = c.lastSeq;

      const exit = await g.terminate();
      assert.equal(exit.code, 0, "a drained gateway exits 0");
      assert.equal(log.disconnected[0]?.code, 4011);
      assert.equal(log.disconnected[0].willRetryInMs, 50, "4011: at once with a jitter below base");
      g2 = await startGateway({ redisUrl: redis.url, listen, drainSeconds: 1 });

      const gap = await withTimeout(new Promise((r) => c.once("gap", r)), 10_000, "gap after re-HELLO");
      assert.equal(gap.previousSessionId, first.sessionId);
      assert.notEqual(gap.sessionId, first.sessionId);
      assert.deepEqual(gap.channels.sort(), ["live:d", "server:s4"]);
      assert.deepEqual(gap.refused, []);
      assert.equal(log.connected.length, 2);
      assert.equal(log.resumed.length, 0);
      assert.ok(c.lastSeq < oldSeq, "seq tracking restarted with the new node");

      // After the gap (channels subscribed again), events flow; the new node's seq
      // starts over and is not mistaken for duplicates.
      for (const n of [3, 4]) await publish(g2.admin, "server:s4", "server.member.join", { serverId: "s4", member: {}, n });
      await publish(g2.admin, "live:d", "live.chat.message", { streamId: "d", message: { text: "hi" } });
      await waitFor(() => log.events.some((e) => e.event === "live.chat.message"), 5000, "events after the gap");
      await sleep(150);
      assert.deepEqual(idsOf(log.events, "server.member.join"), [1, 2, 3, 4]);
      assert.equal(c.duplicatesDropped, 0);
      const disconnects = log.disconnected.map((d) => d.code);
      assert.equal(disconnects[0], 4011);
      assert.ok(disconnects.slice(1).every((code) => code === 1006), `then only failed connects: ${disconnects}`);
      for (const d of log.disconnected.slice(1)) assert.ok(d.willRetryInMs <= 2000);
    } finally {
      c.close();
      await g.stop();
      await g2?.stop();
    }
  });

  test("a server that accepts TCP but never answers the upgrade: handshake timeout, backoff", async () => {
    const hole = net.createServer((s) => s.on("error", () => {}));
    await new Promise((r) => hole.listen(0, "127.0.0.1", r));
    const c = client({ url: `ws://127.0.0.1:${hole.address().port}/api/v1/ws`, token: tokenFor("kim"), handshakeTimeoutMs: 300, backoffBaseMs: 50 });
    const log = record(c);
    try {
      c.connect().catch(() => {});
      await waitFor(() => log.disconnected.length >= 2, 5000, "two handshake timeouts");
      for (const d of log.disconnected) {
        assert.equal(d.code, 1006);
        assert.match(d.reason, /handshake timeout/);
      }
      assert.equal(c.state === "reconnecting" || c.state === "connecting", true);
    } finally {
      c.close();
      hole.close();
    }
  });

  test("4004: no reconnect loop (static token; token callback asked once)", async () => {
    const g = await startGateway({ redisUrl: redis.url });
    const proxy = await startProxy(g.addr);
    const expired = () => tokenFor("gina", { ttl: -120 });
    try {
      // A static expired token: one attempt, then stop.
      const a = client({ url: proxy.wsUrl, token: expired() });
      const la = record(a);
      await assert.rejects(withTimeout(a.connect(), 5000, "connect a"), /authentication failed/);
      assert.deepEqual(la.disconnected, [{ code: 4004, reason: la.disconnected[0].reason, willRetryInMs: null }]);
      assert.equal(a.state, "closed");
      assert.equal(la.errors.at(-1).code, "AUTH_FAILED");

      // A callback that only has expired tokens: asked again once, then stop.
      let asked = 0;
      const b = client({ url: proxy.wsUrl, getToken: async () => (asked++, expired()) });
      const lb = record(b);
      await assert.rejects(withTimeout(b.connect(), 5000, "connect b"), /authentication failed/);
      assert.equal(asked, 2);
      assert.deepEqual(lb.disconnected.map((d) => [d.code, d.willRetryInMs === null]), [[4004, false], [4004, true]]);

      await sleep(1000); // a loop would show here
      assert.equal(proxy.connections, 3, "1 upgrade for the static token, 2 for the callback");
      assert.equal(await metric(g.admin, "xcord_connections_accepted_total"), 3);
      assert.equal(await metric(g.admin, 'xcord_connections_closed_total{code="4004"}'), 3);

      // A callback whose second token is good: reconnects once and is connected.
      let n = 0;
      const c = client({ url: proxy.wsUrl, getToken: () => (n++ === 0 ? expired() : tokenFor("gina")) });
      const ready = await withTimeout(c.connect(), 5000, "connect c");
      assert.equal(ready.userId, "gina");
      assert.equal(proxy.connections, 5);
      c.close();
    } finally {
      await proxy.close();
      await g.stop();
    }
  });

  test("REFRESH before exp keeps a short token's connection open; a static token ends 4004", async () => {
    // 4 s tokens: REFRESH 10% (0.4 s) before exp. Without it the gateway closes 4004
    // at exp + grace (1 s here).
    const g = await startGateway({ redisUrl: redis.url, extraArgs: ["--token-grace-seconds", "1", "--jwt-leeway-seconds", "0"] });
    let issued = 0;
    const c = client({ url: g.wsUrl, getToken: () => (issued++, tokenFor("hank", { ttl: 4 })) });
    const s = client({ url: g.wsUrl, token: tokenFor("ivan", { ttl: 4 }) });
    const log = record(c);
    const slog = record(s);
    const refreshed = [];
    c.on("refreshed", (r) => refreshed.push(r.exp));
    try {
      await withTimeout(Promise.all([c.connect(), s.connect()]), 5000, "connect");
      await sleep(6500);
      assert.equal(log.disconnected.length, 0, `refreshed in time: ${JSON.stringify(log.disconnected)}`);
      assert.ok(refreshed.length >= 1, "at least one REFRESHED");
      assert.ok(refreshed.every((e, i) => i === 0 || e >= refreshed[i - 1]));
      assert.equal(issued, 1 + refreshed.length);
      assert.equal(c.state, "connected");
      // The static token cannot be refreshed: closed 4004 and not retried.
      assert.deepEqual(slog.disconnected.map((d) => [d.code, d.willRetryInMs]), [[4004, null]]);
      assert.equal(s.state, "closed");
    } finally {
      c.close();
      s.close();
      await g.stop();
    }
  });
});
