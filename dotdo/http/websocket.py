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

An upgrade that reaches a worker (or node) other than the actor's owner is relayed:
the owner runs ``fetch`` and holds the socket for the actor, this process holds the
client's connection (``dotdo.runtime.services.websocket_relay``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket as Connection

from dotdo.errors import DotdoError, Overloaded
from dotdo.http.fetch import capture, rebuilt, wire_request
from dotdo.http.responses import as_response, error_response
from dotdo.runtime.core.ids import ActorId
from dotdo.connections import upgraded
from dotdo.runtime.placement.forwarding import HttpReply
from dotdo.runtime.services.websockets import WebSocket
from dotdo.runtime.supervisor import Supervisor
from dotdo.runtime.transport import wire
from dotdo.runtime.transport.listening import connection_slot

if TYPE_CHECKING:
    from dotdo.http.routes import Handlers


class WebSocketUpgrades:
    """ASGI middleware taking every WebSocket upgrade straight to ``serve_websocket``,
    around the app: a socket is long-lived and many are open at once, so its task keeps
    no frames of the app's routing, body and exception layers (which have nothing to do
    for it: a refusal is an error response sent here)."""

    def __init__(self, app: ASGIApp, handlers: Handlers) -> None:
        self.app = app
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        await serve_websocket(self.handlers, Connection(scope, receive, send))


async def serve_websocket(handlers: Handlers, connection: Connection) -> None:
    """One upgrade request: the actor's ``fetch`` (here, or relayed to the process that
    owns the actor), then the connection if it accepted."""
    if handlers.websockets >= handlers.max_websockets:
        refused = Overloaded(f"this server holds {handlers.max_websockets:,} WebSockets, its most (--max-websockets): retry later")
        await connection.send_denial_response(error_response(refused))
        return
    handlers.websockets += 1
    try:
        accepted = await _accepted(handlers, connection)
        if accepted is None:
            return
        ws, relayed = accepted
        hub = handlers.supervisor.websockets
        if relayed:
            await _serve(handlers, connection, ws, hub.relay.message, hub.relay.closed)
            return
        try:
            await _serve(handlers, connection, ws, hub.message, hub.closed)
        finally:
            hub.forget(ws)
    finally:
        handlers.websockets -= 1


async def _accepted(handlers: Handlers, connection: Connection) -> tuple[WebSocket, bool] | None:
    """The upgrade offered to the actor: its socket, and whether it is relayed to the
    actor's owner elsewhere; None when it was refused (the refusal sent). What it took
    to decide (the request, the response) is not kept for the socket's life."""
    supervisor = handlers.supervisor
    hub = supervisor.websockets
    request = Request(dict(connection.scope, type="http", method="GET"), _no_body)
    parts = request.url.path.split("/")
    if len(parts) < 3 or not parts[1] or not parts[2]:  # upgrades are not routed: any path comes here
        message = f"no actor at {request.url.path}: a WebSocket is opened at an actor's URL, /NAMESPACE/ID[/PATH]"
        await connection.send_denial_response(JSONResponse({"error": "NotFound", "message": message}, status_code=404))
        return None
    try:
        target = handlers.addressed(request)
        if supervisor.locate(target) is not None:  # owned by another worker or node
            proxy, reply = await hub.relay.open(target, await wire_request(request))
            if proxy is not None:
                return proxy, True
            status, headers, body = reply
            denied = Response(body, status)
            denied.raw_headers = headers
            await connection.send_denial_response(denied)
            return None
        ws = hub.offer(target)
        request.websocket = ws  # type: ignore[attr-defined]
        response = as_response(await supervisor.fetch(target, request, located=True))
    except DotdoError as exc:
        await connection.send_denial_response(error_response(exc))
        return None
    if not ws.accepted:
        await connection.send_denial_response(_refusal(target, response))
        return None
    return ws, False


def relay_open(supervisor: Supervisor) -> Callable[[ActorId, list[Any], WebSocket], Awaitable[HttpReply]]:
    """What runs an upgrade relayed to this process, the actor's owner, by the one
    holding the client's connection (``WebSocketRelay.open_hook``): the actor's
    ``fetch`` with ``ws`` offered; its refusal captured whole when it did not accept."""

    async def open_relayed(target: ActorId, parts: list[Any], ws: WebSocket) -> HttpReply:
        method, path, query, headers, body = parts
        http = wire.HttpRequest(str(method), str(path), bytes(query), [(bytes(k), bytes(v)) for k, v in headers], bytes(body))
        request = rebuilt(target, http)
        request.websocket = ws  # type: ignore[attr-defined]
        response = as_response(await supervisor.fetch(target, request, located=True))
        if ws.accepted:
            return 101, [], b""
        return await capture(_refusal(target, response), request.scope)

    return open_relayed


def _refusal(target: ActorId, response: Response) -> Response:
    """What an upgrade that ``fetch`` did not accept is answered with: its response
    when it is an error, else 426 (the client asked for a socket)."""
    if response.status_code >= 400:
        return response
    return JSONResponse(
        {"error": "UpgradeRequired", "message": f"{target} did not accept the WebSocket (self.accept_websocket in its fetch)"},
        status_code=426,
    )


async def _serve(
    handlers: Handlers,
    connection: Connection,
    ws: WebSocket,
    message: Callable[[WebSocket, str | bytes], Awaitable[None]],
    closed: Callable[[WebSocket, int, str, bool], Awaitable[None]],
) -> None:
    """Messages in (each handed to ``message`` in order) until either side closes, what
    the actor sends going out through the server's flusher (``dotdo.http.outlets``);
    then ``closed``."""
    await connection.accept()
    slot = connection_slot.get()
    if slot is not None:  # a WebSocket now: it counts against --max-websockets, not --max-connections
        slot.release()
    connection_of = upgraded.get()
    if connection_of is not None:
        connection_of.keep_open()
    end: tuple[int, str] = (1006, "")
    with trio.CancelScope() as reader:
        outlet = handlers.flusher.attach(ws, connection, connection_of, reader)
        try:
            while True:
                received = await connection.receive()
                if received["type"] == "websocket.disconnect":
                    end = (int(received.get("code") or 1005), str(received.get("reason") or ""))
                    break
                data = received.get("text")
                if data is None:
                    data = received.get("bytes") or b""
                await message(ws, data)
        finally:
            outlet.detach()
    code, reason = end
    await closed(ws, code, reason, code != 1006)


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}
