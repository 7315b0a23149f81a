// The anchor of benchmarks/websocket_bench.py: one chat room as a Durable Object with
// the WebSocket hibernation API. Each message is counted in storage and broadcast to
// every socket of the room; "ping" is answered "pong" by the runtime without waking the
// object; "?instance" is answered, to its sender only, with the instance's id and the
// time it was made (a new id after a quiet spell means the object hibernated).
import { DurableObject } from "cloudflare:workers";

export class Room extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.instance = `${crypto.randomUUID()} ${Date.now()}`;
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair("ping", "pong"));
  }

  async fetch(request) {
    if (request.headers.get("Upgrade") !== "websocket") {
      return new Response("expected a websocket", { status: 426 });
    }
    const [client, server] = Object.values(new WebSocketPair());
    this.ctx.acceptWebSocket(server, ["room"]);
    return new Response(null, { status: 101, webSocket: client });
  }

  async webSocketMessage(ws, message) {
    if (message === "?instance") {
      ws.send(`instance ${this.instance}`);
      return;
    }
    // Not awaited: the output gate holds the sends below until the write is durable.
    this.ctx.storage.put("count", ((await this.ctx.storage.get("count")) ?? 0) + 1);
    for (const other of this.ctx.getWebSockets()) {
      other.send(message);
    }
  }
}

export default {
  async fetch(request, env) {
    if (new URL(request.url).pathname !== "/room") {
      return new Response("not found", { status: 404 });
    }
    return env.ROOM.get(env.ROOM.idFromName("main")).fetch(request);
  },
};
