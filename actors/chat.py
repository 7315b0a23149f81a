"""``ChatRoom``, the WebSocket example among the built-in kinds: a room per id, with a
small page.

- ``GET /ChatRoom/<room>`` serves the page (HTML and a few lines of JavaScript), which
  opens a WebSocket to ``/ChatRoom/<room>/ws?name=<name>``.
- Each socket gets the room's latest messages when it joins; each message it sends is
  stored (the room keeps its last ``KEEP``) and broadcast to every socket as JSON
  (``{"type": "message", "from", "text", "at"}``); joins and leaves are broadcast too
  (``{"type": "join" | "leave", "name", "members"}``). ``ping`` is answered ``pong``
  by the server, without waking the room.
- RPC: ``history(limit)`` and ``members()``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from dotdo.actors.base import DO
from dotdo.storage.errors import InvalidInput

KEEP = 100
"""Messages a room keeps."""
JOIN_HISTORY = 20
"""Messages a socket is sent when it joins."""
MAX_TEXT = 1000
"""Characters of a message at most."""
MAX_NAME = 40


class ChatRoom(DO):
    """A chat room per id: WebSocket clients share it (see the module)."""

    async def on_start(self) -> None:
        self.sql.exec(
            "CREATE TABLE IF NOT EXISTS messages("
            " id INTEGER PRIMARY KEY, name TEXT NOT NULL, text TEXT NOT NULL, at REAL NOT NULL)"
        )
        self.set_websocket_auto_response("ping", "pong")

    async def fetch(self, request: Request) -> Response:
        ws = request.websocket  # type: ignore[attr-defined]
        if ws is None:
            if request.method != "GET":
                return JSONResponse({"error": "MethodNotAllowed", "message": "GET the page, or open a WebSocket"}, status_code=405)
            return HTMLResponse(_page(self.id.name or self.id.hex))
        name = request.query_params.get("name", "").strip() or "anon"
        if len(name) > MAX_NAME:
            return JSONResponse({"error": "InvalidInput", "message": f"a name is at most {MAX_NAME} characters"}, status_code=400)
        self.accept_websocket(ws, tags=("member",))
        ws.serialize_attachment({"name": name})
        for message in reversed(await self.history(JOIN_HISTORY)):
            ws.send(json.dumps({"type": "message", **message}))
        self._broadcast({"type": "join", "name": name, "members": self._names()})
        return Response(status_code=101)

    async def websocket_message(self, ws: Any, message: str | bytes) -> None:
        if not isinstance(message, str):
            raise InvalidInput("a chat message is text")
        text = message.strip()
        if not text:
            return
        if len(text) > MAX_TEXT:
            raise InvalidInput(f"a chat message is at most {MAX_TEXT} characters")
        name = ws.deserialize_attachment()["name"]
        at = time.time()
        self.sql.exec("INSERT INTO messages(name, text, at) VALUES (?, ?, ?)", name, text, at)
        self.sql.exec("DELETE FROM messages WHERE id <= (SELECT max(id) FROM messages) - ?", KEEP)
        self._broadcast({"type": "message", "from": name, "text": text, "at": at})

    async def websocket_close(self, ws: Any, code: int, reason: str, was_clean: bool) -> None:
        name = ws.deserialize_attachment()["name"]
        self._broadcast({"type": "leave", "name": name, "members": self._names()})

    async def websocket_error(self, ws: Any, error: Exception) -> None:
        ws.send(json.dumps({"type": "error", "message": str(error)}))

    async def history(self, limit: int = JOIN_HISTORY) -> list[dict[str, Any]]:
        """The latest ``limit`` messages, newest first."""
        rows = self.sql.exec("SELECT name, text, at FROM messages ORDER BY id DESC LIMIT ?", max(0, min(limit, KEEP))).fetchall()
        return [{"from": r["name"], "text": r["text"], "at": r["at"]} for r in rows]

    async def members(self) -> list[str]:
        """The names of the sockets open in the room."""
        return self._names()

    def _names(self) -> list[str]:
        return sorted(ws.deserialize_attachment()["name"] for ws in self.get_websockets("member"))

    def _broadcast(self, event: dict[str, Any]) -> None:
        text = json.dumps(event)
        for ws in self.get_websockets("member"):
            ws.send(text)


def _page(room: str) -> str:
    # The room's name goes into the script as a JSON string, with "<" escaped so that no
    # name can end the script element; everything shown is set as text, never as HTML.
    return PAGE.replace("__ROOM__", json.dumps(room).replace("<", "\\u003c"))


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dotdo chat</title>
<style>
  body { font: 15px system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }
  #log { border: 1px solid #ccc; height: 20rem; overflow-y: auto; padding: .5rem; }
  #log p { margin: .2rem 0; } .meta { color: #777; } .from { font-weight: 600; }
  form { display: flex; gap: .5rem; margin-top: .5rem; } #text { flex: 1; }
</style>
</head>
<body>
<h1>Room <span id="room"></span></h1>
<p class="meta">Members: <span id="members"></span> <span id="status">connecting</span></p>
<div id="log"></div>
<form id="form"><input id="text" autocomplete="off" placeholder="Say something" disabled><button id="send" disabled>Send</button></form>
<script>
const room = __ROOM__;
const $ = (id) => document.getElementById(id);
$("room").textContent = room;
const name = new URLSearchParams(location.search).get("name") || prompt("Your name?") || "anon";
const scheme = location.protocol === "https:" ? "wss:" : "ws:";
const base = location.pathname.replace(/\\/+$/, "");
const ws = new WebSocket(`${scheme}//${location.host}${base}/ws?name=${encodeURIComponent(name)}`);
function line(cls, parts) {
  const p = document.createElement("p");
  p.className = cls;
  for (const [c, text] of parts) { const s = document.createElement("span"); s.className = c; s.textContent = text; p.append(s); }
  $("log").append(p);
  $("log").scrollTop = $("log").scrollHeight;
}
ws.onopen = () => { $("status").textContent = ""; $("text").disabled = $("send").disabled = false; $("text").focus(); };
ws.onclose = (e) => { $("status").textContent = `disconnected (${e.code})`; $("text").disabled = $("send").disabled = true; };
ws.onmessage = (e) => {
  const m = JSON.parse(e.data);
  if (m.type === "message") line("message", [["from", m.from + ": "], ["text", m.text]]);
  else if (m.type === "error") line("meta", [["text", "error: " + m.message]]);
  else { line("meta", [["text", `${m.name} ${m.type === "join" ? "joined" : "left"}`]]); $("members").textContent = m.members.join(", "); }
};
$("form").onsubmit = (e) => { e.preventDefault(); const t = $("text").value.trim(); if (t) ws.send(t); $("text").value = ""; };
</script>
</body>
</html>
"""
