"""The request body limit: ``BodyLimit``, the ASGI middleware that refuses bodies over
``--max-body`` bytes (``DEFAULT_MAX_BODY`` unless told) with 413."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dotdo.errors import BodyTooLarge, InvalidInput
from dotdo.http.responses import error_response

DEFAULT_MAX_BODY = 1024 * 1024


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
