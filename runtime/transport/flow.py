"""Flow control by size: how many bytes one connection may have in flight.

A cap on the number of calls in flight does not bound memory when each call may be a
16 MiB frame. ``ByteBudget`` bounds the bytes too: the transport server takes a request's
size from it before running the request and gives it back when the reply has left, and
the client takes it before sending, so that a client never sends more than the server
will read (a server that stops reading would stall the client's writes).
"""

from __future__ import annotations

from collections import deque

import trio


class ByteBudget:
    """At most ``limit`` bytes taken at once (None: no limit, only counted).

    Whoever waits is served in order, so a large request is not passed over forever by
    small ones. A request larger than the whole budget is admitted when nothing else is
    in flight, so that everything the frame limit allows can be sent.
    """

    __slots__ = ("limit", "used", "_waiting")

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"a byte budget must be at least 1 byte, got {limit}")
        self.limit = limit
        self.used = 0
        self._waiting: deque[tuple[int, trio.Event]] = deque()

    def _fits(self, size: int) -> bool:
        return self.limit is None or self.used == 0 or self.used + size <= self.limit

    async def take(self, size: int) -> None:
        """Take ``size`` bytes, waiting until they fit. Not a checkpoint when they fit
        at once (the hot path); cancelled while waiting, nothing is taken."""
        if not self._waiting and self._fits(size):
            self.used += size
            return
        entry = (size, trio.Event())
        self._waiting.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if entry[1].is_set():  # admitted as it was cancelled: hand the bytes back
                self.give(size)
            else:
                self._waiting.remove(entry)
                self._admit()  # it may have held up smaller ones behind it
            raise

    def borrow(self, size: int) -> None:
        """Count ``size`` bytes that are already held (a reply being sent) without
        waiting: they hold up later ``take``s until given back."""
        self.used += size

    def give(self, size: int) -> None:
        """Give back ``size`` bytes taken or borrowed."""
        self.used -= size
        self._admit()

    def _admit(self) -> None:
        while self._waiting and self._fits(self._waiting[0][0]):
            size, event = self._waiting.popleft()
            self.used += size
            event.set()

    def __repr__(self) -> str:
        return f"<ByteBudget {self.used}/{self.limit} waiting={len(self._waiting)}>"
