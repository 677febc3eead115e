// The same dist/index.js in a real headless Chromium (its own WebSocket, with
// permessage-deflate offered as every browser does) against the real gateway.
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { after, before, test } from "node:test";
import { launchChromium } from "./chromium.mjs";
import { pkgDir, publish, startGateway, startRedis, tokenFor } from "./harness.mjs";

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>xcord client test</title></head>
<body>
<pre id="log"></pre>
<script type="module">
import { GatewayClient } from "/client.js";
window.__log = [];
window.__events = [];
window.__start = async (url, token, channels) => {
  const client = new GatewayClient({ url, token });
  window.__client = client;
  for (const name of ["connecting", "connected", "resumed", "disconnected", "gap", "error"]) {
    client.on(name, (v) => window.__log.push([name, v]));
  }
  client.on("event", (e) => {
    window.__events.push(e);
    document.getElementById("log").textContent += e.event + " " + JSON.stringify(e.payload) + "\\n";
  });
  const ready = await client.connect();
  const sub = await client.subscribe(channels);
  return { ready, sub };
};
window.__ready = true;
</script>
</body></html>`;

let redis, gw, server, origin, browser;

before(async () => {
  redis = await startRedis();
  gw = await startGateway({ redisUrl: redis.url });
  const clientJs = fs.readFileSync(path.join(pkgDir, "dist", "index.js"));
  server = http.createServer((req, res) => {
    if (req.url === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(PAGE);
    } else if (req.url === "/client.js") {
      res.writeHead(200, { "content-type": "text/javascript; charset=utf-8" });
      res.end(clientJs);
    } else if (req.url === "/favicon.ico") {
      res.writeHead(204);
      res.end();
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  origin = `http://127.0.0.1:${server.address().port}`;
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  server?.close();
  await gw?.stop();
  await redis?.stop();
});

test("in Chromium: connect, subscribe, receive a published event", async () => {
  const { page, consoleErrors } = browser;
  await page.goto(origin + "/", { timeout: 15_000 });
  await page.waitForFunction(() => window.__ready === true, null, { timeout: 10_000 });

  const token = tokenFor("wendy", { servers: ["s1"] });
  const { ready, sub } = await page.evaluate(([url, t]) => window.__start(url, t, ["server:s1", "server:s9", "live:web"]), [gw.wsUrl, token]);
  assert.equal(ready.userId, "wendy");
  assert.deepEqual(sub.granted.sort(), ["live:web", "server:s1"]);
  assert.deepEqual(sub.errors.map((e) => [e.channel, e.code]), [["server:s9", "FORBIDDEN"]]);

  await publish(gw.admin, "server:s1:channel:general", "server.message.new", {
    serverId: "s1",
    channelId: "general",
    message: { id: "m1", text: "héllo from node" },
  });
  await page.waitForFunction(() => window.__events.some((e) => e.event === "server.message.new"), null, { timeout: 10_000 });
  const events = await page.evaluate(() => window.__events.filter((e) => e.event === "server.message.new"));
  assert.equal(events.length, 1);
  assert.equal(events[0].known, true);
  assert.equal(events[0].channel, "server:s1:channel:general");
  assert.deepEqual(events[0].payload.message, { id: "m1", text: "héllo from node" });
  assert.match(await page.textContent("#log"), /server\.message\.new/);

  const log = await page.evaluate(() => window.__log.map(([n]) => n));
  assert.deepEqual(log.filter((n) => n !== "connecting"), ["connected"]);
  await page.evaluate(() => window.__client.close());
  assert.deepEqual(consoleErrors, []);
});
