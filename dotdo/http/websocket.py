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
from starlette.websockets import WebSocket as Connection
from starlette.websockets import WebSocketDisconnect

from dotdo.errors import DotdoError, Overloaded
from dotdo.http.fetch import capture, rebuilt, wire_request
from dotdo.http.responses import as_response, error_response
from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.placement.forwarding import HttpReply
from dotdo.connections import raw_send
from dotdo.runtime.services.websockets import WebSocket, unframe
from dotdo.runtime.supervisor import Supervisor
from dotdo.runtime.transport import wire
from dotdo.runtime.transport.listening import connection_slot

if TYPE_CHECKING:
    from dotdo.http.routes import Handlers


async def serve_websocket(handlers: Handlers, connection: Connection) -> None:
    """One upgrade request: the actor's ``fetch`` (here, or relayed to the process that
    owns the actor), then the connection if it accepted."""
    if handlers.websockets >= handlers.max_websockets:
        refused = Overloaded(f"this server holds {handlers.max_websockets:,} WebSockets, its most (--max-websockets): retry later")
        await connection.send_denial_response(error_response(refused))
        return
    handlers.websockets += 1
    try:
        await _upgrade(handlers, connection)
    finally:
        handlers.websockets -= 1


async def _upgrade(handlers: Handlers, connection: Connection) -> None:
    supervisor = handlers.supervisor
    hub = supervisor.websockets
    request = Request(dict(connection.scope, type="http", method="GET"), _no_body)
    try:
        target = handlers.addressed(request)
        if supervisor.locate(target) is not None:  # owned by another worker or node
            proxy, reply = await hub.relay.open(target, await wire_request(request))
            if proxy is None:
                status, headers, body = reply
                denied = Response(body, status)
                denied.raw_headers = headers
                await connection.send_denial_response(denied)
                return
            await _serve(connection, proxy, hub.relay.message, hub.relay.closed)
            return
        ws = hub.offer(target)
        request.websocket = ws  # type: ignore[attr-defined]
        response = as_response(await supervisor.fetch(target, request, located=True))
    except DotdoError as exc:
        await connection.send_denial_response(error_response(exc))
        return
    if not ws.accepted:
        await connection.send_denial_response(_refusal(target, response))
        return
    try:
        await _serve(connection, ws, hub.message, hub.closed)
    finally:
        hub.forget(ws)


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
    connection: Connection,
    ws: WebSocket,
    message: Callable[[WebSocket, str | bytes], Awaitable[None]],
    closed: Callable[[WebSocket, int, str, bool], Awaitable[None]],
) -> None:
    """Messages in (each handed to ``message`` in order), messages out, until either
    side closes; then ``closed``."""
    await connection.accept()
    slot = connection_slot.get()
    if slot is not None:  # a WebSocket now: it counts against --max-websockets, not --max-connections
        slot.release()
    end: tuple[int, str] = (1006, "")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_write, connection, ws, nursery.cancel_scope)
        while True:
            received = await connection.receive()
            if received["type"] == "websocket.disconnect":
                end = (int(received.get("code") or 1005), str(received.get("reason") or ""))
                nursery.cancel_scope.cancel()
                break
            data = received.get("text")
            if data is None:
                data = received.get("bytes") or b""
            await message(ws, data)
    code, reason = end
    await closed(ws, code, reason, code != 1006)


async def _write(connection: Connection, ws: WebSocket, connection_scope: trio.CancelScope) -> None:
    """Send what the actor sends, every frame waiting in one write (straight to the
    connection, in turn with the HTTP server's own writes: ``raw_send``), then the close
    when there is one."""
    send = raw_send.get()
    try:
        while True:
            frames, close = await ws.next_out()
            if frames:
                if send is not None:
                    await send(frames)
                else:  # served by another ASGI server: message by message
                    for message in unframe(frames):
                        await (connection.send_text(message) if isinstance(message, str) else connection.send_bytes(message))
            if close is not None:
                await connection.close(*close)
                return
    except (WebSocketDisconnect, RuntimeError, OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        connection_scope.cancel()  # the client is gone: the reader sees it too


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}
