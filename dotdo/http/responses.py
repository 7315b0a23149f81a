"""What the HTTP app answers with: JSON in dotdo's encodings, errors as JSON (each with
the status of ``dotdo.errors.http_status``, its message capped), and what an actor's
``fetch`` returned as a response."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import traceback
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from dotdo.errors import DotdoError, http_status
from dotdo.runtime.stubs import ActorStub

log = logging.getLogger("dotdo.http")

# Longest error message sent (characters): a message that lists every problem of a
# large input (one per argument of 300,000) would otherwise be many times its size.
MAX_MESSAGE = 2000


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


RETRY_AFTER = "1"
"""Seconds a client is told to wait before retrying a 503 (``Retry-After``)."""


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
    # 503 is always worth a retry (a restarting worker, an owner being moved or away,
    # a full mailbox): say when.
    headers = {"Retry-After": RETRY_AFTER} if status == 503 else None
    return JSON(body, status_code=status, headers=headers)


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


async def on_routing_error(request: Request, exc: Exception) -> Response:
    """The app's handler of starlette's ``HTTPException`` (``routing_error``)."""
    assert isinstance(exc, HTTPException)
    return routing_error(request, exc)


async def on_error(request: Request, exc: Exception, *, debug: bool) -> Response:
    """The app's handler of an error a route raised: ``error_response``, with the
    traceback when ``debug``; an error that is not a ``DotdoError`` (a bug) is logged."""
    if not isinstance(exc, DotdoError):
        log.error("unhandled error serving %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(exc, debug)


def as_response(value: Any) -> Response:
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
