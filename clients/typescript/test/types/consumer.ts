// Compiled (not run) by test/build.test.mjs: the published types narrow as documented.
import { GatewayClient, isEvent, type GatewayEvent, type SubscribeResult, type WebSocketConstructorLike } from "@xcord/gateway-client";

declare const WS: WebSocketConstructorLike;
const client = new GatewayClient({ url: "ws://127.0.0.1:8080/api/v1/ws", getToken: async () => "jwt", WebSocket: WS });

client.on("event", (e: GatewayEvent) => {
  if (e.known && e.event === "dm.typing") {
    const typing: boolean = e.payload.isTyping;
    void typing;
  }
  if (e.known) {
    switch (e.event) {
      case "server.member.presence": {
        const p: "online" | "idle" | "dnd" | "offline" = e.payload.presence;
        void p;
        break;
      }
      case "live.viewer.count": {
        const n: number = e.payload.count;
        void n;
        break;
      }
    }
  } else {
    const anything: unknown = e.payload;
    void anything;
  }
  if (isEvent(e, "server.message.new")) {
    const ids: [string, string] = [e.payload.serverId, e.payload.channelId];
    void ids;
  }
  // @ts-expect-error: an unknown event's payload is not typed
  e.payload.isTyping;
});

client.onEvent("notification.new", (e) => {
  const n: Record<string, unknown> = e.payload.notification;
  void n;
  // @ts-expect-error: not a field of notification.new
  e.payload.count;
});

client.on("disconnected", ({ code, willRetryInMs }) => {
  const c: number = code;
  const w: number | null = willRetryInMs;
  void c, w;
});
client.on("gap", (g) => void g.channels.map((c: string) => c));
// @ts-expect-error: not a client event
client.on("nope", () => {});

async function main(): Promise<void> {
  await client.connect();
  const r: SubscribeResult = await client.subscribe(["server:s1", "dm:c1"]);
  r.errors.forEach((e) => void [e.channel, e.code]);
  client.typing("dm:c1");
  client.stopTyping("dm:c1");
  client.setPresence("idle");
  // @ts-expect-error: offline is not a status a client sets
  client.setPresence("offline");
  client.close();
}
void main;
