"""A call on its way to a turn, and the calls in flight on a supervisor.

``Call`` is what a turn is asked to run: the handler, its arguments, what to do to the
result, and where the call stands (its chain, the path of actors it came through, its
deadline). It is immutable; the sharding router derives its calls to the shards from it
with ``_replace``.

``CallsInFlight`` counts the calls that entered from outside (each under a cancel scope
of its own), so that closing can wait for them to drain, cancel what is left, and refuse
new ones; it also names new call chains.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import trio

Convert = Callable[[Any], Any] | None
"""What a turn does to its result before it ends (``values.copy`` for an in-process
caller, ``values.pack`` for the transport; None: nothing)."""


class Call(NamedTuple):
    """One call of ``fn(instance, *args, **kwargs)`` as a turn.

    Attributes:
        fn: The handler (an actor method, ``fetch``, or the runtime's own function).
        args: Positional arguments after the instance.
        kwargs: Keyword arguments.
        convert: Applied to the result inside the turn (see ``Convert``).
        chain: The call chain id: a call coming back along it is admitted, not
            deadlocked.
        path: The actors the chain came through, for messages.
        deadline: When the call must be done (trio clock).
    """

    fn: Callable[..., Awaitable[Any]]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    convert: Convert
    chain: str
    path: tuple[str, ...]
    deadline: float


class CallsInFlight:
    """The calls that entered a supervisor from outside, and whether it is closing."""

    __slots__ = ("closing", "scopes", "_drained", "_prefix", "_seq")

    def __init__(self) -> None:
        self.closing = False
        # The cancel scope of each call in flight: ``Turns.entry`` adds and takes them
        # itself (a method call each way cost the contended path 5% of its calls/s).
        self.scopes: set[trio.CancelScope] = set()
        self._drained = trio.Event()
        # Chain ids: a random prefix per supervisor and a sequence number, cheaper than
        # fresh random bytes per call and as unique.
        self._prefix = secrets.token_hex(8) + "-"
        self._seq = itertools.count(1)

    def new_chain(self) -> str:
        """A call chain id no other call of any supervisor has."""
        return self._prefix + str(next(self._seq))

    def __len__(self) -> int:
        return len(self.scopes)

    def drained(self) -> None:
        """The last call has left a closing supervisor (``entry`` says so)."""
        self._drained.set()

    async def drain(self, grace: float) -> None:
        """Refuse new calls; let running ones finish for up to ``grace`` seconds, then
        cancel the rest and give them up to 5 s more to roll back (shielded: this runs
        even when the close itself is cancelled)."""
        self.closing = True
        try:
            if self.scopes:
                with trio.move_on_after(grace):
                    await self._drained.wait()
        finally:
            for scope in list(self.scopes):
                scope.cancel()
            if self.scopes:
                with trio.CancelScope(shield=True) as shielded:
                    shielded.deadline = trio.current_time() + 5
                    await self._drained.wait()
