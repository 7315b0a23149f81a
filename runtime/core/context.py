"""What a running turn knows about itself, and what an actor instance is given.

The current turn is kept in a ``ContextVar``: turns run in the caller's task, so nested
calls (A calls B in the same task) see B's turn while B runs and A's again after. Child
tasks started inside a turn inherit it, which is what makes their calls part of the
same call chain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from dotdo.storage.database import ActorDatabase

from dotdo.runtime.core.errors import TurnStopped
from dotdo.runtime.core.ids import ActorId

if TYPE_CHECKING:
    from dotdo.runtime.core.activation import Activation


@dataclass(frozen=True, slots=True)
class ActorContext:
    """Given to an actor kind's ``create`` when an address is activated.

    Attributes:
        id: The actor's id.
        db: Its database (open for the activation's lifetime).
        env: The server's configuration values (read-only).
        supervisor: The supervisor hosting it (for stubs and alarms).
    """

    id: ActorId
    db: ActorDatabase
    env: Mapping[str, str]
    supervisor: Any


class Turn:
    """The turn running in this task: which actor, which call chain, which deadline.

    Attributes:
        activation: The actor whose turn this is.
        chain: The call chain id (shared by every call this turn causes).
        path: Addresses from the chain's first actor to this one, for messages.
        deadline: When the call that started this turn must be done (trio clock).
        cpu: CPU seconds charged to this turn so far (``dotdo.runtime.core.cpu``).
        stopped: Why the turn must not commit, once it was stopped (``TurnStopped``).
    """

    __slots__ = ("activation", "chain", "path", "deadline", "cpu", "stopped", "held")

    def __init__(self, activation: Activation, chain: str, path: tuple[str, ...], deadline: float) -> None:
        self.activation = activation
        self.chain = chain
        self.path = path
        self.deadline = deadline
        self.cpu = 0.0
        self.stopped: TurnStopped | None = None
        self.held: list[tuple[Callable[[Any], None], Any]] | None = None

    def hold(self, release: Callable[[Any], None], item: Any) -> None:
        """Keep ``item`` (a WebSocket message) until the turn's commit has left the
        output gate, then ``release`` it; a turn rolled back drops it."""
        if self.held is None:
            self.held = []
        self.held.append((release, item))

    def release(self) -> None:
        """Let out what ``hold`` kept (the turn committed): to the turn it runs inside,
        when that is a turn of the same actor (it commits later), else out."""
        held, self.held = self.held, None
        if not held:
            return
        outer = current_turn.get()
        if outer is not None and outer.activation is self.activation:
            for release, item in held:
                outer.hold(release, item)
            return
        for release, item in held:
            release(item)

    @property
    def supervisor(self) -> Any:
        return self.activation.supervisor


current_turn: ContextVar[Turn | None] = ContextVar("dotdo_current_turn", default=None)

# The supervisor most recently entered in this trio run (for the ambient ``dotdo.S``).
current_supervisor: trio.lowlevel.RunVar[Any] = trio.lowlevel.RunVar("dotdo_supervisor")


def turn_of(supervisor: Any) -> Turn | None:
    """The current turn, if it runs on ``supervisor``."""
    turn = current_turn.get()
    if turn is not None and turn.activation.supervisor is supervisor:
        return turn
    return None
