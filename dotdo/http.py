"""The HTTP app: each actor at its own URL, RPC over JSON, health and kinds.

Routes (``{id}`` is a name, or a 64-hex id of the namespace)::

    GET  /_health                              {"status": "ok", ...}
    GET  /_kinds                               namespaces and their callable methods
    POST /_rpc/{namespace}/{id}/{method}       body {"args": [...], "kwargs": {...}}
                                               -> {"result": ...}
    GET  /_admin/alarms[?namespace=&limit=&after=]
                                               pending alarms and schedules by actor:
                                               {"alarms": [...], "after": <next page cursor>}
    POST /_admin/actors/{namespace}/{id}/{operation}
                                               a lifecycle operation (clone, compact,
                                               branch, checkout, merge, branches,
                                               delete_branch, diff, bookmark, restore,
                                               history, promote, shard, query), body: its
                                               arguments as a JSON object -> {"result": ...}
    *    /{namespace}/{id}[/{path}]            the actor's fetch(request)

Errors are JSON ``{"error": <type>, "message": ...}`` with the status of
``dotdo.errors.http_status``; a path no route takes is 404 ``NotFound``, a method its
route does not take 405 ``HttpMethodNotAllowed``. A request body is read whole before
any turn, within the call deadline (``--call-timeout``), and must be strict JSON where
JSON is expected (no NaN or Infinity). JSON results encode bytes as base64 text,
datetimes as ISO 8601 and actor references as ``{"$actor": {"namespace", "id", "name"}}``.
"""

from __future__ import annotations

import base64
import functools
import datetime as dt
import json
import logging
import traceback
from urllib.parse import unquote
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dotdo.auth import Tokens, bearer
from dotdo.bodies import parse_json, read_body
from dotdo.errors import BodyTooLarge, DotdoError, InvalidId, InvalidInput, Unauthorized, http_status
from dotdo.runtime.transport import wire
from dotdo.runtime.core.errors import Moved
from dotdo.runtime.core.ids import ActorId, resolve
from dotdo.runtime.placement.locator import MOVING
from dotdo.runtime.stubs import ActorStub
from dotdo.runtime.supervisor import Supervisor
from dotdo.runtime.transport.server import FetchHandler

log = logging.getLogger("dotdo.http")

DEFAULT_MAX_BODY = 1024 * 1024

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _json_default(obj: object) -> object:
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode("ascii")
    if isinstance(obj, dt.datetime | dt.date):
        return obj.isoformat()
    if isinstance(obj, ActorStub):
        return {"$actor": {"namespace": obj.id.namespace, "id": obj.id.hex, "name": obj.id.name}}
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class JSON(JSONResponse):
    """JSON with dotdo's encodings for bytes, datetimes and actor references."""

    def render(self, content: Any) -> bytes:
        try:
            return json.dumps(
                content, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_json_default
            ).encode("utf-8")
        except ValueError as exc:  # NaN or infinity: JSON has no spelling for them
            raise DotdoError(f"the result cannot be sent as JSON: {exc}") from None


def error_response(error: BaseException, debug: bool = False) -> JSON:
    """The JSON response for an error raised while serving a request."""
    if isinstance(error, DotdoError):
        body: dict[str, Any] = {"error": type(error).__name__, "message": _capped(error.public)}
        remote = getattr(error, "remote_type", None)
        if remote:
            body["remote_type"] = remote
        status = http_status(error)
    else:
        body = {"error": "InternalError", "message": "the server failed to handle the request"}
        status = 500
    if debug:
        body["traceback"] = "".join(traceback.format_exception(error))
    return JSON(body, status_code=status)


# Longest error message sent (characters): a message that lists every problem of a
# large input (one per argument of 300,000) would otherwise be many times its size.
MAX_MESSAGE = 2000


def _capped(message: str) -> str:
    """``message``, cut at ``MAX_MESSAGE`` characters (saying how much was left out)."""
    if len(message) <= MAX_MESSAGE:
        return message
    return f"{message[:MAX_MESSAGE]}... ({len(message) - MAX_MESSAGE} more characters)"


def routing_error(request: Request, exc: HTTPException) -> JSON:
    """Starlette's own refusals as JSON errors like dotdo's: no route for the path (404,
    ``NotFound``), or a route that does not take the method (405,
    ``HttpMethodNotAllowed``, with ``Allow``)."""
    where = _capped(f"{request.method} {request.url.path}")
    if exc.status_code == 404:
        body = {"error": "NotFound", "message": f"no route for {where}"}
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        body = {"error": "HttpMethodNotAllowed", "message": f"no route for {where}; allowed: {allowed}"}
    else:
        body = {"error": "HttpError", "message": _capped(f"{exc.detail} ({where})")}
    return JSON(body, status_code=exc.status_code, headers=exc.headers)


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


# Ids one app remembers (least recently used go first): deriving an id from a name
# hashes it twice, which costs more than the rest of the routing of a request.
MAX_KNOWN_IDS = 4096


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413.

    A declared Content-Length over the limit is refused before the app runs; a body
    that grows past the limit while streaming raises ``BodyTooLarge`` from ``receive``.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    await error_response(InvalidInput("invalid Content-Length header"))(scope, receive, send)
                    return
                if declared > limit:
                    # The unread body makes the connection unusable: say it will close.
                    response = error_response(BodyTooLarge.over(declared, limit, whole=False))
                    response.headers["connection"] = "close"
                    await response(scope, receive, send)
                    return
                break
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge.over(received, limit, whole=False)
            return message

        await self.app(scope, limited, send)


class TokenAuth:
    """ASGI middleware refusing requests without the token their route needs
    (``dotdo.auth``): 401 for a wrong or missing token, 403 for a client token on an
    admin route. The refusal goes out before the body is read; when a body was
    announced the connection closes after it, so the unread body is never taken for
    the next request."""

    def __init__(self, app: ASGIApp, tokens: Tokens) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        refusal = self.tokens.check(scope["path"], bearer(headers))
        if refusal is None:  # the server's token is not the actor's business: fetch never sees it
            scope = dict(scope, headers=[(name, value) for name, value in headers if name != b"authorization"])
            await self.app(scope, receive, send)
            return
        response = error_response(refusal)
        if isinstance(refusal, Unauthorized):
            response.headers["www-authenticate"] = 'Bearer realm="dotdo"'
        if any(name in (b"content-length", b"transfer-encoding") for name, _ in headers):
            response.headers["connection"] = "close"
        await response(scope, receive, send)


async def _json_object(request: Request, seconds: float, shape: str = "{...}") -> dict[str, Any]:
    """The request body as a JSON object (an empty body is ``{}``), arrived within
    ``seconds``."""
    raw = await read_body(request, seconds)
    body = parse_json(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise InvalidInput(f"the request body must be a JSON object: {shape}")
    return body


def create_app(
    supervisor: Supervisor, *, max_body: int = DEFAULT_MAX_BODY, debug: bool = False, tokens: Tokens = Tokens()
) -> Starlette:
    """The ASGI app serving ``supervisor``'s actors; ``tokens`` say who may use which
    routes (``dotdo.auth``; the default asks for none)."""

    async def health(request: Request) -> Response:
        stats = supervisor.statistics()
        body: dict[str, Any] = {"status": "ok", "active_actors": stats.active, "calls_in_flight": stats.calls_in_flight}
        if supervisor.config.storage.read_only:
            body["read_only"] = True
        body.update(supervisor.locator.describe())  # which worker of how many, with several
        return JSON(body)

    async def kinds(request: Request) -> Response:
        listing = {
            spec.namespace: {"methods": sorted(spec.methods), "fetch": spec.fetch is not None}
            for spec in supervisor.registry
        }
        return JSON({"kinds": listing})

    @functools.lru_cache(maxsize=MAX_KNOWN_IDS)
    def resolved(namespace: str, raw: str) -> ActorId:
        # Each id named in a URL is checked and hashed once (ActorId is immutable);
        # refusals raise and are not remembered.
        supervisor.registry.kind(namespace)
        return _actor_id(namespace, raw)

    def addressed(request: Request) -> ActorId:
        segments = _segments(request)
        return resolved(segments[1], segments[2])

    async def rpc(request: Request) -> Response:
        segments = _segments(request)
        if len(segments) != 5:
            raise InvalidInput("the RPC route is POST /_rpc/{namespace}/{id}/{method}")
        namespace, method = segments[2], segments[4]
        target = resolved(namespace, segments[3])
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

    async def actor(request: Request) -> Response:
        target = addressed(request)
        # The body is read before the turn (fetch gets it from the request's cache): a
        # slow client holds its own connection, never the actor.
        await read_body(request, supervisor.config.call_timeout)
        owner = supervisor.locate(target)
        if owner is None:
            try:
                return _as_response(await supervisor.fetch(target, request, located=True))
            except Moved:  # placed elsewhere while it waited: it goes to the new owner
                owner = MOVING
        # Another process owns the actor: the request goes there whole.
        status, headers, body = await supervisor.relay.fetch(owner, target, await wire_request(request))
        forwarded = Response(body, status_code=status)
        forwarded.raw_headers = headers
        return forwarded

    async def alarms(request: Request) -> Response:
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

    async def lifecycle(request: Request) -> Response:
        segments = _segments(request)
        if len(segments) != 6:
            raise InvalidInput("the lifecycle route is POST /_admin/actors/{namespace}/{id}/{operation}")
        target = resolved(segments[3], segments[4])
        arguments = await _json_object(request, supervisor.config.call_timeout)
        result = await supervisor.lifecycle.request(target, segments[5], arguments)
        return JSON({"result": result})

    async def on_routing_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return routing_error(request, exc)

    async def on_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, DotdoError):
            log.error("unhandled error serving %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(exc, debug)

    routes = [
        Route("/_health", health, methods=["GET", "HEAD"]),
        Route("/_kinds", kinds, methods=["GET"]),
        Route("/_rpc/{rest:path}", rpc, methods=["POST"]),
        Route("/_admin/alarms", alarms, methods=["GET"]),
        Route("/_admin/actors/{rest:path}", lifecycle, methods=["POST"]),
        Route("/{namespace}/{id}", actor, methods=_ALL_METHODS),
        Route("/{namespace}/{id}/{rest:path}", actor, methods=_ALL_METHODS),
    ]
    # DotdoError is answered by the exception middleware; anything else is a bug, answered
    # by the outermost middleware (which also lets the server log it).
    app = Starlette(routes=routes, exception_handlers={DotdoError: on_error, Exception: on_error})
    app.add_exception_handler(HTTPException, on_routing_error)  # 404 and 405 as JSON too
    app.add_middleware(BodyLimit, limit=max_body)
    if tokens.required:  # outermost: a refused request never reaches the body limit or the app
        app.add_middleware(TokenAuth, tokens=tokens)
    return app


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

        value = await supervisor.fetch(target, Request(scope, receive), timeout=timeout, located=True)
        return await _capture(_as_response(value), scope)

    return handle


async def _capture(response: Response, scope: Scope) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
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


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat()


def _as_response(value: Any) -> Response:
    """What ``fetch`` returned, as a response: a Response as is; dict or list as JSON;
    str as text; None as 204."""
    if isinstance(value, Response):
        return value
    if isinstance(value, dict | list):
        return JSON(value)
    if isinstance(value, str):
        return PlainTextResponse(value)
    if value is None:
        return Response(status_code=204)
    raise DotdoError(f"fetch returned {type(value).__name__}; return a starlette Response, a dict, a list, a str or None")
