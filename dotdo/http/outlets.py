"""Writing what actors send to their WebSockets' clients: one task for every socket of
the server, not one per socket.

A socket's frames are queued on it (``WebSocket.take``); the ``Flusher`` writes them to
each socket that has some, in turn, with the kernel's ``write`` taking what fits in the
socket's buffer at once (nothing waits: a room's broadcast is a thousand writes in one
task, without a thousand task switches, and an idle socket holds no task at all). A
socket whose buffer is full (a slow client), whose connection hypercorn is writing to
(a pong, a close), or whose server is not dotdo's (no ``Upgraded``), is handed off to a
task of its own (``Outlet._drain``) until its queue is empty, so that a slow client
slows only itself; a client that lets 16 MiB pile up is closed (``MAX_QUEUED``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from starlette.websockets import WebSocket as Connection
from starlette.websockets import WebSocketDisconnect

from dotdo.connections import Upgraded
from dotdo.runtime.services.websockets import WebSocket, unframe

if TYPE_CHECKING:
    from dotdo.runtime.supervisor import Supervisor

YIELD_EVERY = 256
"""Sockets the flusher writes to before it lets other tasks run."""


class Flusher:
    """The writer of every WebSocket served here (see the module); its task, and those
    of slow sockets, run in the supervisor's nursery, from the first socket attached."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor
        self._dirty: list[Outlet] = []
        self._wake = trio.Event()
        self._running = False

    def attach(self, ws: WebSocket, connection: Connection, upgraded: Upgraded | None, reader: trio.CancelScope) -> Outlet:
        """Write what ``ws`` queues to ``connection`` until ``Outlet.detach``; a write
        that finds the connection broken cancels ``reader`` (the connection's loop)."""
        if not self._running:
            self._running = True
            self._sup.nursery.start_soon(self._run)
        outlet = Outlet(self, ws, connection, upgraded, reader)
        ws.on_ready = outlet.ready
        outlet.ready(ws)  # what was queued before the socket was open (fetch, on_start)
        return outlet

    def due(self, outlet: Outlet) -> None:
        self._dirty.append(outlet)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            dirty, self._dirty = self._dirty, []
            for count, outlet in enumerate(dirty, 1):
                outlet.flush()
                if count % YIELD_EVERY == 0:
                    await trio.sleep(0)

    def hand_off(self, outlet: Outlet, frames: bytes, close: tuple[int, str] | None) -> None:
        self._sup.nursery.start_soon(outlet._drain, frames, close)


class Outlet:
    """One socket's way out to its client's connection."""

    __slots__ = ("_flusher", "_ws", "_connection", "_upgraded", "_reader", "_due", "_draining", "_closed", "_scope")

    def __init__(self, flusher: Flusher, ws: WebSocket, connection: Connection, upgraded: Upgraded | None, reader: trio.CancelScope) -> None:
        self._flusher = flusher
        self._ws = ws
        self._connection = connection
        self._upgraded = upgraded
        self._reader = reader
        self._due = False
        self._draining = False
        self._closed = False
        self._scope: trio.CancelScope | None = None

    def ready(self, ws: WebSocket) -> None:
        """Something was queued: the flusher writes it on its next round (unless a task
        of the socket's own is writing)."""
        if self._draining and ws.overflowed:  # stuck on a client that does not read
            self._broken(abort=True)
        elif not (self._due or self._draining or self._closed):
            self._due = True
            self._flusher.due(self)

    def flush(self) -> None:
        """Write what is queued, as far as the socket takes it now; hand the rest off."""
        self._due = False
        if self._closed or self._draining:
            return
        taken = self._ws.take()
        if taken is None:
            return
        frames, close = taken
        if frames and self._upgraded is not None:
            try:
                frames = frames[self._upgraded.try_write(frames) :]
            except OSError:
                self._broken()
                return
        if frames or close is not None:
            self._draining = True
            self._flusher.hand_off(self, frames, close)

    async def _drain(self, frames: bytes, close: tuple[int, str] | None) -> None:
        """Write until the socket's queue is empty, waiting as the client reads (a task
        of the socket's own, for as long as that takes); then close, if asked to."""
        with trio.CancelScope() as scope:
            self._scope = scope
            try:
                while not self._closed:
                    if frames:
                        await self._write(frames)
                    if close is not None:
                        self._closed = True
                        await self._connection.close(*close)
                        return
                    taken = self._ws.take()
                    if taken is None:
                        return
                    frames, close = taken
            except (WebSocketDisconnect, RuntimeError, OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                self._broken()
            finally:
                self._scope = None
                self._draining = False
        if not self._closed:
            self.ready(self._ws)  # queued while the last write finished: the flusher's again

    async def _write(self, frames: bytes) -> None:
        if self._upgraded is not None:
            await self._upgraded.send(frames)
            return
        for message in unframe(frames):  # served by another ASGI server: message by message
            await (self._connection.send_text(message) if isinstance(message, str) else self._connection.send_bytes(message))

    def _broken(self, abort: bool = False) -> None:
        """The client is gone (or, with ``abort``, is to be cut off): its connection's
        loop ends too."""
        self._closed = True
        self._reader.cancel()
        if self._scope is not None:
            self._scope.cancel()
        if abort and self._upgraded is not None:
            self._upgraded.abort()

    def detach(self) -> None:
        """The connection ended: nothing more is written to it."""
        self._closed = True
        self._ws.on_ready = None
        if self._scope is not None:
            self._scope.cancel()

    def __repr__(self) -> str:
        return f"<Outlet of {self._ws!r}>"

