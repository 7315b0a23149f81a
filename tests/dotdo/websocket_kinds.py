"""Actor kinds for the WebSocket tests (``test_websockets.py``)."""

from __future__ import annotations

import os
from typing import Any

from starlette.responses import Response

from dotdo import DO


class Room(DO):
    """A chat room: every message is counted and broadcast to every socket; ``!``
    commands exercise the rest of the API."""

    starts = 0

    async def on_start(self) -> None:
        type(self).starts += 1
        self.set_websocket_auto_response("ping", "pong")

    async def fetch(self, request: Any) -> Any:
        ws = request.websocket
        if ws is None:
            return Response("a room takes WebSockets", status_code=426)
        if request.query_params.get("refuse"):
            return Response("not today", status_code=403)
        user = request.query_params.get("user", "anon")
        self.accept_websocket(ws, tags=("room", f"user:{user}"))
        ws.serialize_attachment({"user": user})
        return Response(status_code=101)

    async def websocket_message(self, ws: Any, message: Any) -> None:
        user = ws.deserialize_attachment()["user"]
        if message == "!fail":
            self.storage.put("failed", True)
            ws.send("never")  # rolled back with the turn: not sent
            raise ValueError("the handler failed")
        if message == "!count":
            ws.send(str(self.storage.get("count") or 0))
            return
        if message == "!close":
            ws.close(4000, "asked to")
            return
        if isinstance(message, str) and message.startswith("!flood "):  # a megabyte a message, to every socket
            block = b"x" * ((1 << 20) - 64)
            for _ in range(int(message.split()[1])):
                for other in self.get_websockets("room"):
                    other.send(block)
            return
        if message == "!who":
            ws.send(",".join(sorted(self.get_tags(s)[1] for s in self.get_websockets("room"))))
            return
        self.storage.put("count", (self.storage.get("count") or 0) + 1)
        for other in self.get_websockets("room"):
            other.send(f"{user}: {message}" if isinstance(message, str) else message)

    async def websocket_close(self, ws: Any, code: int, reason: str, was_clean: bool) -> None:
        closes = self.storage.get("closes") or []
        self.storage.put("closes", [*closes, [code, reason, was_clean]])

    async def websocket_error(self, ws: Any, error: Exception) -> None:
        ws.send(f"error: {type(error).__name__}")

    async def closes(self) -> list[Any]:
        return self.storage.get("closes") or []

    async def failed(self) -> bool:
        return bool(self.storage.get("failed"))

    async def pid(self) -> int:
        """The process the room runs in (its owner, among the server's workers)."""
        return os.getpid()

    async def node(self) -> str:
        """The cluster node the room runs on (its ``NODE`` environment variable)."""
        return str(self.env.get("NODE", "?"))
