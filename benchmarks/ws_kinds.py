"""The actor kind of ``websocket_bench.py``: one chat room, the counterpart of the workerd
``Room`` in ``workerd_room/room.js``. Each message is counted in storage and broadcast to
every socket of the room; ``"ping"`` is answered ``"pong"`` by the server without waking
the room; ``"?instance"`` is answered, to its sender only, with the activation's id and
the time it started (a new id after a quiet spell means the room hibernated)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.responses import Response

from dotdo import DO, WebSocket


class Room(DO):
    async def on_start(self) -> None:
        self.instance = f"{uuid.uuid4()} {int(time.time() * 1000)}"
        self.set_websocket_auto_response("ping", "pong")

    async def fetch(self, request: Any) -> Response:
        ws = request.websocket  # None unless the request is a WebSocket upgrade
        if ws is None:
            return Response("expected a websocket", status_code=426)
        self.accept_websocket(ws, tags=("room",))
        return Response(status_code=101)

    async def websocket_message(self, ws: WebSocket, message: str | bytes) -> None:
        if message == "?instance":
            ws.send(f"instance {self.instance}")
            return
        self.storage.put("count", (self.storage.get("count") or 0) + 1)
        for other in self.get_websockets():
            other.send(message)  # goes out after this turn's commit
