"""Actor kinds for the connection-reset suite (``test_resets.py``), served by path.

``Sleeper`` has methods that take their time, so that a client can reset its connection
while they run: a plain call, a pipeline step that returns another ``Sleeper``, and an
HTTP ``fetch``. ``hit`` is what the well-behaved clients call all through.
"""

from __future__ import annotations

import os

import trio
from starlette.requests import Request
from starlette.responses import Response

from dotdo import DO


class Sleeper(DO):
    """Sleeps on request; counts its hits."""

    async def pid(self) -> int:
        """The process this actor runs in (its owner worker)."""
        return os.getpid()

    async def slow(self, seconds: float) -> int:
        await trio.sleep(seconds)
        return os.getpid()

    async def next(self, name: str, seconds: float = 0.0) -> object:
        """Another ``Sleeper``, after ``seconds``: a pipeline step."""
        await trio.sleep(seconds)
        return self.S.Sleeper(name)

    async def hit(self) -> int:
        """How many times this actor was hit, this one included (a turn that commits)."""
        hits = (self.storage.get("hits") or 0) + 1
        self.storage.put("hits", hits)
        return hits

    async def fetch(self, request: Request) -> Response:
        """``?seconds=S``: answer after S seconds, with the body read whole."""
        body = await request.body()
        await trio.sleep(float(request.query_params.get("seconds", "0")))
        return Response(b"slept:%d" % len(body), headers={"x-pid": str(os.getpid())}, media_type="text/plain")
