"""The app's routes, as a list (``routes``; the table is in ``dotdo.http``), and their
handlers: the methods of ``Handlers``, which holds the supervisor they serve and the
ids its URLs have named."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dotdo.bodies import parse_json, read_body
from dotdo.errors import InvalidId, InvalidInput
from dotdo.http.fetch import wire_request
from dotdo.http.outlets import Flusher
from dotdo.http.responses import JSON, as_response
from dotdo.runtime.core.errors import Moved
from dotdo.runtime.core.ids import ActorId, resolve
from dotdo.runtime.placement.locator import MOVING
from dotdo.runtime.services.listing import list_actors
from dotdo.runtime.supervisor import Supervisor
from dotdo.runtime.transport.descriptors import DEFAULT_MAX_WEBSOCKETS

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

# Ids one app remembers (least recently used go first): deriving an id from a name
# hashes it twice, which costs more than the rest of the routing of a request.
MAX_KNOWN_IDS = 4096


def routes(handlers: Handlers) -> list[BaseRoute]:
    """The app's routes, each to a method of ``handlers``."""
    return [
        Route("/_health", handlers.health, methods=["GET", "HEAD"]),
        Route("/_kinds", handlers.kinds, methods=["GET"]),
        Route("/_rpc/{rest:path}", handlers.rpc, methods=["POST"]),
        Route("/_admin/alarms", handlers.alarms, methods=["GET"]),
        Route("/_admin/actors/{namespace}", handlers.actors, methods=["GET"]),
        Route("/_admin/actors/{rest:path}", handlers.lifecycle, methods=["POST"]),
        Route("/{namespace}/{id}", handlers.actor, methods=ALL_METHODS),
        Route("/{namespace}/{id}/{rest:path}", handlers.actor, methods=ALL_METHODS),
    ]


class Handlers:
    """The route handlers of one app, over ``supervisor``'s actors."""

    def __init__(self, supervisor: Supervisor, max_websockets: int = DEFAULT_MAX_WEBSOCKETS) -> None:
        self.supervisor = supervisor
        self.max_websockets = max_websockets
        self.websockets = 0
        """WebSocket connections open (or being upgraded) now."""
        self.flusher = Flusher(supervisor)
        """Writes what the actors send to their sockets (``dotdo.http.outlets``)."""
        # Each id named in a URL is checked and hashed once (ActorId is immutable);
        # refusals raise and are not remembered. The cache is the app's own.
        self.resolved = functools.lru_cache(maxsize=MAX_KNOWN_IDS)(self._resolve)

    def _resolve(self, namespace: str, raw: str) -> ActorId:
        """The id ``raw`` names in ``namespace``, a namespace the supervisor serves."""
        self.supervisor.registry.kind(namespace)
        return _actor_id(namespace, raw)

    def addressed(self, request: Request) -> ActorId:
        """The actor a ``/{namespace}/{id}[/{path}]`` request is for."""
        segments = _segments(request)
        return self.resolved(segments[1], segments[2])

    async def health(self, request: Request) -> Response:
        """``GET /_health``: the server is up, and how busy it is."""
        supervisor = self.supervisor
        stats = supervisor.statistics()
        body: dict[str, Any] = {
            "status": "ok", "active_actors": stats.active, "calls_in_flight": stats.calls_in_flight, "websockets": self.websockets,
        }  # fmt: skip
        if supervisor.config.storage.read_only:
            body["read_only"] = True
        body.update(supervisor.locator.describe())  # which worker of how many, with several
        return JSON(body)

    async def kinds(self, request: Request) -> Response:
        """``GET /_kinds``: the namespaces served and their callable methods."""
        listing = {
            spec.namespace: {"methods": sorted(spec.methods), "fetch": spec.fetch is not None}
            for spec in self.supervisor.registry
        }
        return JSON({"kinds": listing})

    async def rpc(self, request: Request) -> Response:
        """``POST /_rpc/{namespace}/{id}/{method}``: call a public method."""
        supervisor = self.supervisor
        segments = _segments(request)
        if len(segments) != 5:
            raise InvalidInput("the RPC route is POST /_rpc/{namespace}/{id}/{method}")
        namespace, method = segments[2], segments[4]
        target = self.resolved(namespace, segments[3])
        supervisor.check_method(namespace, method)
        body = await _json_object(request, supervisor.config.call_timeout, '{"args": [...], "kwargs": {...}}')
        unknown = set(body) - {"args", "kwargs"}
        if unknown:
            raise InvalidInput(f"unknown fields in the request body: {', '.join(sorted(unknown))}")
        args = body.get("args", [])
        kwargs = body.get("kwargs", {})
        if not isinstance(args, list):
            raise InvalidInput('"args" must be a JSON array')
        if not isinstance(kwargs, dict):
            raise InvalidInput('"kwargs" must be a JSON object')
        result = await supervisor.call(target, method, args, kwargs)
        return JSON({"result": result})

    async def actor(self, request: Request) -> Response:
        """``/{namespace}/{id}[/{path}]``, any method: the actor's ``fetch``, here or at its owner."""
        supervisor = self.supervisor
        target = self.addressed(request)
        # The body is read before the turn (fetch gets it from the request's cache): a
        # slow client holds its own connection, never the actor.
        await read_body(request, supervisor.config.call_timeout)
        request.websocket = None  # type: ignore[attr-defined]  # not an upgrade (those go to ``websocket``)
        owner = supervisor.locate(target)
        if owner is None:
            try:
                return as_response(await supervisor.fetch(target, request, located=True))
            except Moved:  # placed elsewhere while it waited: it goes to the new owner
                owner = MOVING
        # Another process owns the actor: the request goes there whole.
        status, headers, body = await supervisor.relay.fetch(owner, target, await wire_request(request))
        forwarded = Response(body, status_code=status)
        forwarded.raw_headers = headers
        return forwarded

    async def alarms(self, request: Request) -> Response:
        """``GET /_admin/alarms``: a page of pending alarms and schedules."""
        supervisor = self.supervisor
        query = request.query_params
        namespace = query.get("namespace") or None
        if namespace is not None:
            supervisor.registry.kind(namespace)
        try:
            limit = int(query.get("limit", "1000"))
        except ValueError:
            raise InvalidInput("limit must be a whole number") from None
        if not 1 <= limit <= 10_000:
            raise InvalidInput("limit must be between 1 and 10000")
        after = None
        if query.get("after"):
            parts = query["after"].split("/", 2)
            if len(parts) != 3:
                raise InvalidInput("after is the cursor of the previous page (namespace/hex/item)")
            after = (parts[0], parts[1], parts[2])
        entries = supervisor.alarms.pending(namespace, limit, after)
        listing = [
            {
                "namespace": e.namespace,
                "id": e.hex,
                "name": e.name,
                "kind": e.kind,
                "item": e.item,
                "schedule": e.spec,
                "next": _iso(e.due),
                "retries": e.retries,
            }
            for e in entries
        ]
        last = entries[-1] if len(entries) == limit else None
        cursor = f"{last.namespace}/{last.hex}/{last.item}" if last is not None else None
        return JSON({"alarms": listing, "after": cursor})

    async def actors(self, request: Request) -> Response:
        """``GET /_admin/actors/{namespace}?after=&limit=``: a page of the namespace's
        actors (``dotdo.runtime.services.listing``), in id order; ``after`` of the
        answer is the cursor of the next page (null: this was the last)."""
        query = request.query_params
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            raise InvalidInput("limit must be a whole number") from None
        namespace = unquote(request.path_params["namespace"])
        page = list_actors(self.supervisor, namespace, query.get("after") or None, limit)
        listing = [
            {
                "id": a.hex,
                "name": a.name,
                "bytes": a.bytes,
                "last_write": None if a.changed is None else _iso(a.changed),
                "alarm": None if a.alarm is None else _iso(a.alarm),
                "schedules": a.schedules,
            }
            for a in page
        ]
        return JSON({"namespace": namespace, "actors": listing, "after": page[-1].hex if len(page) == limit else None})

    async def lifecycle(self, request: Request) -> Response:
        """``POST /_admin/actors/{namespace}/{id}/{operation}``: a lifecycle operation."""
        supervisor = self.supervisor
        segments = _segments(request)
        if len(segments) != 6:
            raise InvalidInput("the lifecycle route is POST /_admin/actors/{namespace}/{id}/{operation}")
        target = self.resolved(segments[3], segments[4])
        arguments = await _json_object(request, supervisor.config.call_timeout)
        result = await supervisor.lifecycle.request(target, segments[5], arguments)
        return JSON({"result": result})


def _segments(request: Request) -> list[str]:
    """The request path's segments, each percent-decoded on its own, so that an id
    holding ``/`` (sent as ``%2F``) stays one segment."""
    raw = request.scope.get("raw_path")
    if raw is None:
        return request.url.path.split("/")
    try:
        return [unquote(part.decode("latin-1"), errors="strict") for part in raw.split(b"?", 1)[0].split(b"/")]
    except UnicodeDecodeError:
        raise InvalidId("invalid id: the path is not valid percent-encoded UTF-8") from None


def _actor_id(namespace: str, raw: str) -> ActorId:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in raw):
        raise InvalidId("invalid id: control characters are not allowed in URLs")
    return resolve(namespace, raw)


async def _json_object(request: Request, seconds: float, shape: str = "{...}") -> dict[str, Any]:
    """The request body as a JSON object (an empty body is ``{}``), arrived within
    ``seconds``."""
    raw = await read_body(request, seconds)
    body = parse_json(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise InvalidInput(f"the request body must be a JSON object: {shape}")
    return body


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat()
