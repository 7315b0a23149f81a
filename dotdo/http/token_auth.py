"""Tokens at the door: ``TokenAuth``, the ASGI middleware that refuses a request
without the token its route needs (``dotdo.auth``)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from dotdo.auth import Tokens, bearer
from dotdo.errors import Unauthorized
from dotdo.http.responses import error_response


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
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        refusal = self.tokens.check(scope["path"], bearer(headers))
        if refusal is None:  # the server's token is not the actor's business: fetch never sees it
            scope = dict(scope, headers=[(name, value) for name, value in headers if name != b"authorization"])
            await self.app(scope, receive, send)
            return
        response = error_response(refusal)
        if scope["type"] == "websocket":  # the upgrade refused with the same answer
            await WebSocket(scope, receive, send).send_denial_response(response)
            return
        if isinstance(refusal, Unauthorized):
            response.headers["www-authenticate"] = 'Bearer realm="dotdo"'
        if any(name in (b"content-length", b"transfer-encoding") for name, _ in headers):
            response.headers["connection"] = "close"
        await response(scope, receive, send)
