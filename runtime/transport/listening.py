"""Accepting connections under a cap, for every server in dotdo (the transport here,
HTTP in ``dotdo.connections``).

``accept_loop`` takes one of a fixed number of slots before each ``accept`` and gives it
back when the connection has closed, so a server never holds more sockets than its cap:
past it, new connections wait in the kernel's listen backlog. Each connection runs in
the nursery it is given, inside ``contained``: whatever ends one connection (the peer
resetting it, a bug in the code serving it) ends that connection alone, never the
nursery above it and so never the server.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import trio

log = logging.getLogger("dotdo.listening")

# accept(2) failures that mean "out of descriptors or memory for now" (as trio's own
# serve_listeners treats them): wait and try again rather than stop serving.
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
CAPACITY_RETRY = 0.1
"""Seconds between tries of an accept that failed for lack of descriptors."""

Handler = Callable[[trio.SocketStream], Awaitable[Any]]


async def accept_loop(listener: trio.SocketListener, handler: Handler, slots: trio.Semaphore, nursery: trio.Nursery, what: str) -> None:
    """Accept connections on ``listener`` while a slot of ``slots`` is free, each served
    by ``handler`` in ``nursery`` (``what`` names them in logs); cancelled, it stops
    accepting and closes the listener."""
    async with listener:
        while True:
            await slots.acquire()
            try:
                stream = await accept(listener)
            except BaseException:
                slots.release()
                raise
            nursery.start_soon(_connection, handler, stream, slots, what)


async def accept(listener: trio.SocketListener) -> trio.SocketStream:
    """The next connection; out of descriptors, wait and try again."""
    while True:
        try:
            return await listener.accept()
        except OSError as exc:
            if exc.errno not in CAPACITY_ERRNOS:
                raise
            log.warning("accept failed (%s); retrying in %g s", errno.errorcode[exc.errno], CAPACITY_RETRY)
            await trio.sleep(CAPACITY_RETRY)


class Slot:
    """The slot one connection holds: given back when it closes, or earlier by the code
    serving it (``connection_slot``), once, when the connection turns into something
    another cap counts (an HTTP connection upgraded to a WebSocket)."""

    __slots__ = ("_slots",)

    def __init__(self, slots: trio.Semaphore) -> None:
        self._slots: trio.Semaphore | None = slots

    def release(self) -> None:
        if self._slots is not None:
            slots, self._slots = self._slots, None
            slots.release()


connection_slot: ContextVar[Slot | None] = ContextVar("connection_slot", default=None)
"""The slot of the connection the current task serves (tasks started while serving it
see it too)."""


async def _connection(handler: Handler, stream: trio.SocketStream, slots: trio.Semaphore, what: str) -> None:
    """Serve one connection, then close it and give its slot back."""
    slot = Slot(slots)
    connection_slot.set(slot)  # this task's own context: the connection's
    try:
        await contained(handler(stream), what)
    finally:
        try:
            await trio.aclose_forcefully(stream)
        finally:
            slot.release()


async def contained(work: Awaitable[Any], what: str) -> None:
    """Await ``work`` (serving one connection) so that its failure ends it alone.

    A broken or closed stream means the peer went away: nothing to report. Anything
    else that escapes is a bug in the code serving the connection: logged, and
    contained. Failures arrive wrapped in exception groups when they leave a nursery
    (trio >= 0.25), hence ``except*``. Cancellation passes through untouched.
    """
    try:
        await work
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except* Exception as group:
        log.error("%s failed inside dotdo; it was closed", what, exc_info=group)
