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

The app is put together here from its parts: ``routes`` (the routes as a list, and their
handlers), ``responses`` (JSON, errors, what ``fetch`` returned), the middlewares
``token_auth`` (outermost) and ``body_limit``, and ``fetch`` (requests as fetch frames,
to and from the worker that owns the actor).
"""

from __future__ import annotations

from functools import partial

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from dotdo.auth import Tokens
from dotdo.errors import DotdoError
from dotdo.http.body_limit import DEFAULT_MAX_BODY, BodyLimit
from dotdo.http.fetch import fetch_handler
from dotdo.http.responses import as_response, error_response, on_error, on_routing_error
from dotdo.http.routes import Handlers, routes
from dotdo.http.token_auth import TokenAuth
from dotdo.http.websocket import WebSocketUpgrades
from dotdo.runtime.supervisor import Supervisor
from dotdo.runtime.transport.descriptors import DEFAULT_MAX_WEBSOCKETS

__all__ = ["DEFAULT_MAX_BODY", "as_response", "create_app", "error_response", "fetch_handler"]


def create_app(
    supervisor: Supervisor,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    debug: bool = False,
    tokens: Tokens = Tokens(),
    max_websockets: int = DEFAULT_MAX_WEBSOCKETS,
) -> ASGIApp:
    """The ASGI app serving ``supervisor``'s actors; ``tokens`` say who may use which
    routes (``dotdo.auth``; the default asks for none); at most ``max_websockets``
    WebSocket connections open at once."""
    handle_error = partial(on_error, debug=debug)
    # DotdoError is answered by the exception middleware; anything else is a bug, answered
    # by the outermost middleware (which also lets the server log it).
    handlers = Handlers(supervisor, max_websockets)
    app = Starlette(routes=routes(handlers), exception_handlers={DotdoError: handle_error, Exception: handle_error})
    app.add_exception_handler(HTTPException, on_routing_error)  # 404 and 405 as JSON too
    app.add_middleware(BodyLimit, limit=max_body)
    # Upgrades go past the token straight to their socket, outside the app: a socket's
    # task then keeps none of its layers' frames for its whole life.
    served: ASGIApp = WebSocketUpgrades(app, handlers)
    if tokens.required:  # outermost: a refused request never reaches the body limit or the app
        served = TokenAuth(served, tokens)
    return served
