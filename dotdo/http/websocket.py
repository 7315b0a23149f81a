"""WebSocket upgrades to an actor's URL, and the connections they become
(``dotdo.runtime.services.websockets`` holds the sockets and runs the turns).

An upgrade to ``/{namespace}/{id}[/{path}]`` reaches the actor's ``fetch`` as a GET
request whose ``request.websocket`` is the socket offered (``None`` on every other
request). If ``fetch`` accepts it (``self.accept_websocket``), the handshake completes
and the connection runs until either side closes; if not, the upgrade is refused with
the response ``fetch`` returned when it is an error (status 400 or more: status,
headers and body), else with 426 (the actor took no socket). Pings are answered and the
close handshake completed by the HTTP server; a message over ``--max-ws-message`` closes
the socket (1009), and a text frame that is not UTF-8 ends the connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket as Connection
from starlette.websockets import WebSocketDisconnect

from dotdo.errors import DotdoError, Unavailable
from dotdo.http.responses import as_response, error_response
from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.services.websockets import WebSocket

if TYPE_CHECKING:
    from dotdo.http.routes import Handlers


async def serve_websocket(handlers: Handlers, connection: Connection) -> None:
    """One upgrade request: the actor's ``fetch``, then the connection if it accepted."""
    supervisor = handlers.supervisor
    request = Request(dict(connection.scope, type="http", method="GET"), _no_body)
    try:
        target = handlers.addressed(request)
        if supervisor.locate(target) is not None:
            # Owned by another worker or node: WebSockets are not relayed there yet.
            await connection.send_denial_response(error_response(_elsewhere(target)))
            return
        ws = supervisor.websockets.offer(target)
        request.websocket = ws  # type: ignore[attr-defined]
        response = as_response(await supervisor.fetch(target, request, located=True))
    except DotdoError as exc:
        await connection.send_denial_response(error_response(exc))
        return
    if not ws.accepted:
        if response.status_code < 400:  # not a refusal: the client asked for a socket
            response = JSONResponse(
                {"error": "UpgradeRequired", "message": f"{target} did not accept the WebSocket (self.accept_websocket in its fetch)"},
                status_code=426,
            )
        await connection.send_denial_response(response)
        return
    try:
        await connection.accept()
        await _run(supervisor, connection, ws)
    finally:
        supervisor.websockets.forget(ws)


async def _run(supervisor: Any, connection: Connection, ws: WebSocket) -> None:
    """Messages in (each a turn, in order), messages out, until either side closes;
    then the actor's ``websocket_close``."""
    hub = supervisor.websockets
    closed: tuple[int, str] = (1006, "")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_write, connection, ws, nursery.cancel_scope)
        while True:
            message = await connection.receive()
            if message["type"] == "websocket.disconnect":
                closed = (int(message.get("code") or 1005), str(message.get("reason") or ""))
                nursery.cancel_scope.cancel()
                break
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            await hub.message(ws, data)
    code, reason = closed
    await hub.closed(ws, code, reason, code != 1006)


async def _write(connection: Connection, ws: WebSocket, connection_scope: trio.CancelScope) -> None:
    try:
        while True:
            item = await ws.next_out()
            if isinstance(item, tuple):
                code, reason = item
                await connection.close(code, reason)
                return
            if isinstance(item, str):
                await connection.send_text(item)
            else:
                await connection.send_bytes(item)
    except (WebSocketDisconnect, RuntimeError, OSError):
        connection_scope.cancel()  # the client is gone: the reader sees it too


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _elsewhere(target: ActorId) -> DotdoError:
    return Unavailable(f"{target} runs in another process; its WebSockets are served where it runs: retry")
