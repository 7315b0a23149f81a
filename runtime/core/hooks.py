"""Where the services plug into the turn core.

The core runs turns and keeps the activation table; it knows no service. A service that
must act when an activation is built, when the outermost turn of an actor ends, when its
data was replaced under it, or when it closes, registers a hook here; a service that must
do something before one actor's ``on_start`` or take over its calls does it per
activation (``Activation.before_start``, ``Activation.divert``). Hooks run in the order
they were registered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dotdo.runtime.core.activation import Activation
    from dotdo.runtime.core.calls import Call

Hook = Callable[["Activation"], None]


class Diverter(Protocol):
    """Takes over some calls of one activation (a sharded actor's router)."""

    def takes(self, activation: Activation, fn: Callable[..., Any]) -> bool:
        """Whether a call of ``fn`` goes to the diverter instead of a turn here."""

    def call(self, activation: Activation, call: Call) -> Awaitable[Any]:
        """Run the call elsewhere and return its result."""


class Hooks:
    """The hooks of one supervisor's core.

    Attributes:
        activated: A new activation is built (its database open, its instance made), before
            it enters the table and before any turn: read what it needs from the database.
        turn_ended: The outermost turn of an actor ended (committed or rolled back) and an
            earlier hook or a turn marked it (``Activation.mark``): bring shared indexes in
            step with what the turn wrote.
        reloaded: The data under an activation was replaced (a checkout, a restore) and it
            has a new instance: forget what was read from the old data.
        closed: An activation was closed (passivated, shut down, failed, released): drop
            what was kept for it.
    """

    __slots__ = ("activated", "turn_ended", "reloaded", "closed")

    def __init__(self) -> None:
        self.activated: list[Hook] = []
        self.turn_ended: list[Hook] = []
        self.reloaded: list[Hook] = []
        self.closed: list[Hook] = []

    @staticmethod
    def run(hooks: list[Hook], activation: Activation) -> None:
        for hook in hooks:
            hook(activation)
