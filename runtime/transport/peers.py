"""The other workers of a server: the connections to reach them.

A server with N workers (``dotdo serve --workers N``) gives each actor one owner (the
locator decides which: ``dotdo.runtime.placement.locator``). Each worker listens on a unix socket of its own for its
peers' calls (the transport's protocol, with a secret the parent made); ``Peers`` opens
one connection to each peer when it is first needed and opens it again after it broke.
A peer that is being restarted keeps its socket (the parent holds it), so a new
connection waits in its backlog until the worker is back rather than failing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import trio

from dotdo.runtime.transport import wire
from dotdo.runtime.transport.connection import Connection
from dotdo.runtime.core.errors import NotSent
from dotdo.runtime.core.ids import ActorId

T = TypeVar("T")

PEER_INFLIGHT = 4096
"""Calls one worker may have running at another at once (its server's cap too)."""
PEER_INFLIGHT_BYTES = 4 * wire.DEFAULT_MAX_FRAME
"""Bytes of those calls' frames in flight at once: one link carries every forwarded
call of a worker, so it gets more than a client connection."""


class Peers:
    """Worker ``index`` of ``len(paths)``, and its links to the others (``paths[i]`` is
    worker ``i``'s socket)."""

    def __init__(self, index: int, paths: Sequence[str], token: str, *, connect_timeout: float = 30.0) -> None:
        if not 0 <= index < len(paths):
            raise ValueError(f"worker {index} of {len(paths)}")
        self.index = index
        self.count = len(paths)
        self.paths = list(paths)
        self._token = token
        self._connect_timeout = connect_timeout
        self._links: dict[int, Connection] = {}
        self._locks = [trio.Lock() for _ in paths]

    async def link(self, worker: int) -> Connection:
        """The connection to ``worker``, opened (again) if there is none that works."""
        conn = self._links.get(worker)
        if conn is not None and not conn.closed:
            return conn
        async with self._locks[worker]:  # one caller opens it; the others wait and share it
            conn = self._links.get(worker)
            if conn is None or conn.closed:
                conn = await Connection.open_unix(
                    self.paths[worker],
                    token=self._token,
                    max_inflight=PEER_INFLIGHT,
                    connect_timeout=self._connect_timeout,
                    label=f"worker {worker}",
                )
                self._links[worker] = conn
            return conn

    async def call_raw(
        self,
        worker: int,
        target: ActorId,
        steps: list[tuple[str, bytes]],
        timeout: float | None,
        chain: str | None = None,
        path: tuple[str, ...] = (),
    ) -> bytes:
        """Run a call (or pipeline) on the worker owning ``target``; the result packed.

        Raises:
            ConnectionLost: The worker went away while the call ran (it may or may not
                have run; its turn committed or rolled back as a whole). Retryable.
        """
        return await self._on(worker, lambda conn: conn.call_raw(target, steps, timeout, chain, path))

    async def fetch(
        self, worker: int, target: ActorId, request: wire.HttpRequest, timeout: float | None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Hand an HTTP request to the worker owning ``target``."""
        return await self._on(worker, lambda conn: conn.fetch(target, request, timeout))

    async def _on(self, worker: int, send: Callable[[Connection], Awaitable[T]]) -> T:
        """``send`` on the link to ``worker``; once more on a fresh link if the first
        was over before the request left (a restarted worker)."""
        try:
            return await send(await self.link(worker))
        except NotSent:
            return await send(await self.link(worker))

    async def aclose(self) -> None:
        """Close every link."""
        links, self._links = self._links, {}
        for conn in links.values():
            await conn.aclose()

    def __repr__(self) -> str:
        return f"<Peers worker {self.index} of {self.count}>"

