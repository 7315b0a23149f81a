"""Actor kinds for the tests of ``dotdo serve --workers N`` (loaded by file path)."""

from __future__ import annotations

import datetime as dt
import os

import trio
from starlette.requests import Request
from starlette.responses import Response

from dotdo import DO


class Probe(DO):
    """Says which process runs it, how often it was started and called."""

    async def on_start(self) -> None:
        self.storage.put("starts", (self.storage.get("starts") or 0) + 1)

    async def hit(self) -> dict[str, int]:
        hits = (self.storage.get("hits") or 0) + 1
        self.storage.put("hits", hits)
        return {"pid": os.getpid(), "hits": hits, "starts": self.storage.get("starts")}

    async def bounce(self, other: str, depth: int) -> list[int]:
        """Call ``other``, which calls back, ``depth`` times: one call chain crossing
        between actors (and workers) while each caller waits in its turn."""
        if depth == 0:
            return [os.getpid()]
        assert self.id.name is not None
        return [os.getpid(), *await self.S.Probe(other).bounce(self.id.name, depth - 1)]

    async def friend(self, name: str) -> object:
        return self.S.Probe(name)

    async def slow(self, seconds: float) -> int:
        await trio.sleep(seconds)
        return os.getpid()

    async def arm(self, seconds: float) -> None:
        self.set_alarm(dt.timedelta(seconds=seconds))

    async def alarm(self) -> None:
        self.storage.put("fired", os.getpid())

    async def fired(self) -> int | None:
        return self.storage.get("fired")

    async def listen(self) -> None:
        self.S.on.Probe.pinged(self._pinged)

    async def _pinged(self, event: object) -> None:
        self.storage.put("pinged", [os.getpid(), event.data, event.source.id.name])  # type: ignore[attr-defined]

    async def ping(self) -> int:
        return self.S.send("Probe.pinged", self.id.name).subscribers

    async def pinged(self) -> list[object] | None:
        return self.storage.get("pinged")

    async def fetch(self, request: Request) -> Response:
        body = await request.body()
        return Response(
            b"echo:" + body + b"?" + request.url.query.encode(),
            status_code=201,
            headers={"x-pid": str(os.getpid()), "x-path": request.url.path, "x-seen": request.headers.get("x-test", "")},
            media_type="text/plain",
        )
