"""Calls relayed to the owner of their address, and the owner that is this process.

``Relay`` sends a call, a pipeline, an HTTP request or a system call to an ``Owner`` the
locator named, chain and all, under this side's deadline too: an owner that stops
answering costs a ``CallTimeout``, not a hang. ``Here`` is the owner that is this very
process: what a call that waited while its address moved runs through when the address
ends up here after all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import trio

from dotdo.runtime.core.calls import CallsInFlight
from dotdo.runtime.core.context import Turn, current_turn
from dotdo.runtime.core.errors import CallTimeout, NotSent, SupervisorClosed, Unavailable
from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.placement.locator import Locator, Owner
from dotdo.runtime.transport import wire

if TYPE_CHECKING:
    from dotdo.runtime.supervisor import Supervisor

T = TypeVar("T")

FORWARD_MARGIN = 1.0
"""Seconds a call relayed to its owner is given past its deadline to report back (its
own turn ends at the deadline) before this side gives up on it."""

HttpReply = tuple[int, list[tuple[bytes, bytes]], bytes]


class Relay:
    """Sends calls to their owners for one supervisor.

    An owner that is ``moving`` is waited for (``Locator.placed``): the call then goes
    to the new owner, or runs ``here``.

    Args:
        locator: Where addresses run.
        here: This process as an owner.
        calls: This side's calls in flight (a closing side relays only for its turns).
        call_timeout: The deadline of a relayed call that names none, in seconds.
        current: The turn running in this task on this side, if any.
    """

    def __init__(
        self, locator: Locator, here: Owner, calls: CallsInFlight, call_timeout: float, current: Callable[[], Turn | None]
    ) -> None:
        self._locator = locator
        self._here = here
        self._calls = calls
        self._call_timeout = call_timeout
        self._current = current

    async def call(
        self,
        owner: Owner,
        target: ActorId,
        steps: list[tuple[str, bytes]],
        timeout: float | None,
        chain: str | None = None,
        path: tuple[str, ...] = (),
    ) -> bytes:
        """Run a call (or pipeline) on ``owner``; the result packed. A call that could
        not be sent to an owner that went away goes to the next one (see ``_sent``)."""
        return await self._sent(owner, target, timeout, lambda at, s: at.call_raw(target, steps, s, chain, path))

    async def fetch(self, owner: Owner, target: ActorId, request: wire.HttpRequest, timeout: float | None = None) -> HttpReply:
        """Hand an HTTP request to ``owner``'s actor; its (status, headers, body)."""
        return await self._sent(owner, target, timeout, lambda at, s: at.fetch(target, request, s))

    async def _sent(self, owner: Owner, target: ActorId, timeout: float | None, send: Callable[[Owner, float], Awaitable[T]]) -> T:
        """``send`` to ``owner`` (once it is not moving); when it was not sent (``NotSent``:
        the owner's node is gone, or going) and the locator places ``target`` elsewhere
        once the owner is out of its view, to that one, within the same deadline."""
        seconds = self._call_timeout if timeout is None else timeout
        with trio.move_on_after(seconds + FORWARD_MARGIN):
            while True:
                if owner.moving:
                    owner = await self.settle(target)
                try:
                    return await self._within(owner, target, timeout, lambda s: send(owner, s))
                except NotSent:
                    moved = await self._locator.elsewhere(target, owner)
                    if moved is owner:
                        raise
                    owner = self._here if moved is None else moved
        raise CallTimeout(f"call to {target} did not finish within {seconds:g} s: its owner went away and no other took it in time")

    async def settle(self, target: ActorId) -> Owner:
        """The owner of ``target`` once it is not moving (``here`` when it is this
        process)."""
        owner = await self._locator.placed(target)
        return self._here if owner is None else owner

    async def _within(self, owner: Owner, target: ActorId, timeout: float | None, send: Callable[[float], Awaitable[T]]) -> T:
        """``send(seconds)`` under this side's deadline too."""
        if self._calls.closing and self._current() is None:
            raise SupervisorClosed("the supervisor is shutting down")
        seconds = self._call_timeout if timeout is None else timeout
        remaining = trio.current_effective_deadline() - trio.current_time()
        seconds = max(min(seconds, remaining), 0.001)
        with trio.move_on_after(seconds + FORWARD_MARGIN):
            return await send(seconds)
        raise CallTimeout(f"call to {target} on {owner.label} did not finish within {seconds:g} s")


class Here(Owner):
    """This process, as an owner: calls run through its supervisor as if they had
    arrived over the transport from a trusted peer."""

    label = "this process"

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor

    async def call_raw(
        self, target: ActorId, steps: list[tuple[str, bytes]], timeout: float, chain: str | None, path: tuple[str, ...]
    ) -> bytes:
        turn = current_turn.get()
        if turn is not None:  # as a link does: the output gate, and the calling turn's chain
            turn.activation.db.commit()
            output = turn.activation.output
            if output is not None:
                await output()
            if chain is None:
                chain, path = turn.chain, turn.path
        return await self._sup.call_from_peer(target, steps, timeout=timeout, chain=chain, path=path, trusted=True)

    async def fetch(self, target: ActorId, request: wire.HttpRequest, timeout: float) -> HttpReply:
        handler = self._sup.wire_fetch
        if handler is None:
            raise Unavailable(f"{target} is served here, but this process serves no HTTP requests over the transport")
        return await handler(target, request, timeout)
