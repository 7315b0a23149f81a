"""HTTP requests as fetch frames, and back: ``wire_request`` packs a request whole for
the actor's owner (another worker, over the transport), and ``fetch_handler`` runs one
that arrived: the actor's ``fetch`` with the request rebuilt, its ASGI response
captured whole."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Scope

from dotdo.http.responses import as_response
from dotdo.runtime.core.errors import Moved
from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.placement.locator import MOVING
from dotdo.runtime.supervisor import Supervisor
from dotdo.runtime.transport import wire
from dotdo.runtime.transport.server import FetchHandler


async def wire_request(request: Request) -> wire.HttpRequest:
    """An HTTP request as a fetch frame carries it (the body read whole)."""
    scope = request.scope
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
    return wire.HttpRequest(
        request.method,
        raw_path.split(b"?", 1)[0].decode("latin-1"),
        scope.get("query_string", b""),
        list(scope["headers"]),
        await request.body(),
    )


def fetch_handler(supervisor: Supervisor) -> FetchHandler:
    """What runs a fetch frame (from another worker, or any transport client): the
    actor's ``fetch`` with the request rebuilt, its response captured whole."""

    async def handle(target: ActorId, http: wire.HttpRequest, timeout: float | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        owner = supervisor.locate(target)
        if owner is not None:
            return await supervisor.relay.fetch(owner, target, http, timeout)
        request = rebuilt(target, http)
        request.websocket = None  # type: ignore[attr-defined]  # a relayed request is never an upgrade
        try:
            value = await supervisor.fetch(target, request, timeout=timeout, located=True)
        except Moved:  # placed elsewhere while it waited: it goes to the new owner
            return await supervisor.relay.fetch(MOVING, target, http, timeout)
        return await capture(as_response(value), request.scope)

    return handle


def rebuilt(target: ActorId, http: wire.HttpRequest) -> Request:
    """The request a fetch frame carries, as the actor's ``fetch`` receives it."""
    path = unquote(http.path)
    parts = path.split("/", 3)
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": http.method,
        "scheme": "http",
        "path": path,
        "raw_path": http.path.encode("latin-1"),
        "query_string": http.query,
        "root_path": "",
        "headers": http.headers,
        "server": None,
        "client": None,
        "path_params": {"namespace": target.namespace, "id": parts[2] if len(parts) > 2 else "", "rest": parts[3] if len(parts) > 3 else ""},
    }
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": http.body, "more_body": False}
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    return Request(scope, receive)


async def capture(response: Response, scope: Scope) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run ``response`` as ASGI and keep what it sends: (status, headers, body)."""
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def receive() -> Message:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await response(scope, receive, send)
    return int(start["status"]), [(bytes(k), bytes(v)) for k, v in start.get("headers", [])], b"".join(chunks)
