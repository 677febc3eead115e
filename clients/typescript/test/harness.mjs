// Test harness: a real redis-server and a real xcord-gateway, started and stopped by
// the tests themselves (by PID), a TCP proxy for cutting connections, HS256 tokens.
import { spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const pkgDir = path.resolve(here, "..");
export const repoDir = path.resolve(pkgDir, "..", "..");

export const JWT_SECRET = "test-secret-" + crypto.randomBytes(6).toString("hex");
export const ADMIN_TOKEN = "test-admin-" + crypto.randomBytes(6).toString("hex");

/** The gateway binary: $XCORD_GATEWAY_BIN, or <repo>/target/debug/xcord-gateway. */
export function gatewayBin() {
  const bin = process.env.XCORD_GATEWAY_BIN || path.join(repoDir, "target", "debug", "xcord-gateway");
  if (!fs.existsSync(bin)) {
    throw new Error(`gateway binary not found at ${bin}: build it (cargo build) or set XCORD_GATEWAY_BIN`);
  }
  return bin;
}

const children = new Set();
process.on("exit", () => {
  for (const c of children) {
    try {
      process.kill(c.pid, "SIGKILL");
    } catch {
      /* gone */
    }
  }
});

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolve with `promise`, or reject after `ms` naming `what`. */
export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Poll `pred` (sync or async) until it is truthy, at most `ms`. */
export async function waitFor(pred, ms, what, every = 20) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(every);
  }
}

/** A free loopback port below 32768 (outside Linux's ephemeral range). */
export async function freePort() {
  for (let i = 0; i < 200; i++) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    const ok = await new Promise((resolve) => {
      const srv = net.createServer();
      srv.once("error", () => resolve(false));
      srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
    });
    if (ok) return port;
  }
  throw new Error("no free port found");
}

function tcpReachable(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

function waitExit(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve({ code: child.exitCode, signal: child.signalCode });
    else child.once("exit", (code, signal) => resolve({ code, signal }));
  });
}

/** Start redis-server on a free port; returns {port, url, pid, stop()}. */
export async function startRedis() {
  for (let tries = 0; tries < 5; tries++) {
    const port = await freePort();
    const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    children.add(child);
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    const spawnError = new Promise((resolve) => child.once("error", resolve));
    const exited = waitExit(child);
    const up = await Promise.race([
      waitFor(() => tcpReachable(port), 5000, "redis-server to listen").then(() => "up", () => "timeout"),
      exited.then(() => "exited"),
      spawnError.then((e) => {
        throw new Error(`cannot start redis-server (${e.message}): install it (apt-get install redis-server)`);
      }),
    ]);
    if (up === "up") {
      return {
        port,
        url: `redis://127.0.0.1:${port}/`,
        pid: child.pid,
        async stop() {
          if (child.exitCode === null && child.signalCode === null) process.kill(child.pid, "SIGKILL");
          await exited;
          children.delete(child);
        },
      };
    }
    if (child.exitCode === null) process.kill(child.pid, "SIGKILL");
    await exited;
    children.delete(child);
    if (!/Address already in use/i.test(out) && up !== "exited") throw new Error(`redis-server did not start: ${out}`);
  }
  throw new Error("redis-server: no port after 5 tries");
}

/**
 * Start the gateway; resolves once it logged both listeners (and /readyz is 200).
 * Returns {addr, admin, wsUrl, pid, stderr(), stop(), terminate(), exited}.
 */
export async function startGateway({ redisUrl, listen = "127.0.0.1:0", drainSeconds, heartbeatMs, extraArgs = [], adminToken = ADMIN_TOKEN } = {}) {
  const args = ["--listen", listen, "--admin-listen", "127.0.0.1:0", "--jwt-secret", JWT_SECRET, "--shards", "1"];
  if (adminToken) args.push("--admin-token", adminToken);
  if (redisUrl) args.push("--redis", redisUrl);
  if (drainSeconds !== undefined) args.push("--drain-seconds", String(drainSeconds));
  if (heartbeatMs !== undefined) args.push("--heartbeat-interval-ms", String(heartbeatMs));
  args.push(...extraArgs);
  const child = spawn(gatewayBin(), args, { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, XCORD_LOG: "info" } });
  children.add(child);
  const exited = waitExit(child).then((r) => {
    children.delete(child);
    return r;
  });
  let err = "";
  let admin = null;
  let addr = null;
  const ready = new Promise((resolve, reject) => {
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (d) => {
      err += d;
      if (err.length > 200_000) err = err.slice(-100_000);
      const a = /admin listening on (\S+)/.exec(err);
      const l = /(?<!admin )listening on (\S+)/.exec(err);
      if (a) admin = a[1];
      if (l) addr = l[1];
      if (admin && addr) resolve();
    });
    child.once("error", reject);
    exited.then((r) => reject(new Error(`gateway exited early (${JSON.stringify(r)}): ${err}`)));
  });
  try {
    await withTimeout(ready, 15_000, "gateway to log its listeners");
    if (redisUrl) await waitFor(async () => (await fetch(`http://${admin}/readyz`)).status === 200, 10_000, "gateway /readyz");
  } catch (e) {
    if (child.exitCode === null) process.kill(child.pid, "SIGKILL");
    throw e;
  }
  return {
    addr,
    admin,
    wsUrl: `ws://${addr}/api/v1/ws`,
    pid: child.pid,
    exited,
    stderr: () => err,
    /** SIGTERM (drain), resolved when the process has exited. */
    async terminate(ms = 15_000) {
      if (child.exitCode === null && child.signalCode === null) process.kill(child.pid, "SIGTERM");
      return withTimeout(exited, ms, "gateway to exit after SIGTERM");
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) process.kill(child.pid, "SIGKILL");
      await exited;
    },
  };
}

/** An HS256 JWT signed with the test secret. */
export function signToken(claims, secret = JWT_SECRET) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64(claims);
  const sig = crypto.createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** A token for `sub` valid for `ttl` seconds (negative: already expired). */
export function tokenFor(sub, { servers = [], dms = [], ttl = 3600 } = {}) {
  const now = Math.floor(Date.now() / 1000);
  return signToken({ sub, iat: now, exp: now + ttl, servers, dms });
}

/** POST /api/v1/publish; asserts 202. */
export async function publish(admin, channel, event, payload, adminToken = ADMIN_TOKEN) {
  const res = await fetch(`http://${admin}/api/v1/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${adminToken}`, "content-type": "application/json" },
    body: JSON.stringify({ channel, event, payload }),
  });
  if (res.status !== 202) throw new Error(`publish answered ${res.status}: ${await res.text()}`);
}

/** One Redis command over RESP (enough for PUBLISH/SADD in tests). */
export function redisCommand(port, ...args) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, "127.0.0.1");
    let buf = "";
    s.setEncoding("utf8");
    s.once("error", reject);
    s.on("data", (d) => {
      buf += d;
      if (buf.endsWith("\r\n")) {
        s.destroy();
        resolve(buf.trim());
      }
    });
    const parts = [`*${args.length}`];
    for (const a of args) {
      const str = String(a);
      parts.push(`$${Buffer.byteLength(str)}`, str);
    }
    s.write(parts.join("\r\n") + "\r\n");
  });
}

/** GET /metrics and read one sample (name with its labels, e.g. `xcord_connections{shard="0"}`). */
export async function metric(admin, sample) {
  const text = await (await fetch(`http://${admin}/metrics`)).text();
  for (const line of text.split("\n")) {
    if (line.startsWith(sample + " ")) return Number(line.slice(sample.length + 1));
  }
  return undefined;
}

/**
 * A TCP proxy in front of the gateway. `connections` counts accepted sockets;
 * `drop()` resets every live pair (the client sees 1006, the gateway a dropped
 * TCP connection); `hold()`/`release()` park new connections before they reach
 * the gateway; `silence()` cuts the gateway side but leaves the client's socket
 * open and mute (a dead connection as the client sees it).
 */
export async function startProxy(targetAddr) {
  const [host, portStr] = [targetAddr.slice(0, targetAddr.lastIndexOf(":")), targetAddr.slice(targetAddr.lastIndexOf(":") + 1)];
  const pairs = new Set();
  let held = false;
  let waiting = [];
  const proxy = {
    connections: 0,
    addr: "",
    wsUrl: "",
    drop() {
      for (const p of pairs) {
        p.client.resetAndDestroy();
        p.upstream?.resetAndDestroy();
      }
      pairs.clear();
    },
    silence() {
      for (const p of pairs) {
        p.silenced = true;
        p.upstream?.resetAndDestroy();
      }
    },
    hold() {
      held = true;
    },
    release() {
      held = false;
      const w = waiting;
      waiting = [];
      for (const f of w) f();
    },
    close() {
      proxy.drop();
      for (const p of pairs) p.client.destroy();
      return new Promise((r) => server.close(() => r()));
    },
  };
  const server = net.createServer((client) => {
    proxy.connections++;
    const pair = { client, upstream: null, silenced: false };
    pairs.add(pair);
    client.pause();
    client.on("error", () => {});
    client.on("close", () => {
      if (!pair.silenced) pair.upstream?.destroy();
      pairs.delete(pair);
    });
    const go = () => {
      if (client.destroyed) return;
      const up = net.connect(Number(portStr), host);
      pair.upstream = up;
      up.on("error", () => {});
      up.on("close", () => {
        if (!pair.silenced) client.destroy();
      });
      up.on("data", (d) => {
        if (!pair.silenced) client.write(d);
      });
      client.on("data", (d) => {
        if (!pair.silenced && !up.destroyed) up.write(d);
      });
      up.once("connect", () => client.resume());
    };
    if (held) waiting.push(go);
    else go();
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  proxy.addr = `127.0.0.1:${server.address().port}`;
  proxy.wsUrl = `ws://${proxy.addr}/api/v1/ws`;
  return proxy;
}

/** Record what a client emits. */
export function record(client) {
  const log = { events: [], states: [], errors: [], gaps: [], resumed: [], connected: [], disconnected: [] };
  client.on("event", (e) => log.events.push(e));
  client.on("error", (e) => log.errors.push(e));
  client.on("gap", (g) => {
    log.gaps.push(g);
    log.states.push("gap");
  });
  client.on("resumed", (r) => {
    log.resumed.push(r);
    log.states.push("resumed");
  });
  client.on("connected", (c) => {
    log.connected.push(c);
    log.states.push("connected");
  });
  client.on("connecting", () => log.states.push("connecting"));
  client.on("disconnected", (d) => {
    log.disconnected.push(d);
    log.states.push(`disconnected:${d.code}`);
  });
  return log;
}

/** A fresh temporary directory (removed by the caller). */
export function tempDir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}
