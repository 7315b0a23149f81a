"""One activation: an actor instance, its open database and its turn gate; and what the
caller of a failed turn is told."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import DotdoError

from dotdo.runtime.core.errors import ActorError, TurnStopped
from dotdo.runtime.core.gate import TurnGate, WaitGraph
from dotdo.runtime.core.hooks import Diverter
from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.core.kinds import KindSpec


class ActivationState(enum.Enum):
    """Where an activation is in its life."""

    STARTING = "starting"  # built; on_start has not finished
    ACTIVE = "active"
    CLOSED = "closed"  # passivated or shut down; its database is closed
    MOVED = "moved"  # closed because the address is placed elsewhere now
    FAILED = "failed"  # on_start raised; the next call builds a new activation


class AfterTurn(enum.Enum):
    """What is done with an activation once its outermost turn ends."""

    RELOAD = "reload"  # its data was replaced: a new instance, on_start again
    RELEASE = "release"  # an operation needs its file: closed
    MOVED = "moved"  # the address is placed elsewhere now: closed, waiting calls go there


class PassivationReason(enum.Enum):
    """Why an activation was closed."""

    IDLE = "idle"  # no call for longer than the idle timeout
    CAPACITY = "capacity"  # least recently used when the active cap was passed
    SHUTDOWN = "shutdown"  # the supervisor is closing
    START_FAILED = "start_failed"  # on_start raised
    REQUESTED = "requested"  # an administrator or the actor asked
    MOVED = "moved"  # the address is placed elsewhere now


@dataclass(frozen=True, slots=True)
class ActivationStats:
    """A snapshot of one activation, for metrics and admin listings."""

    address: str
    state: ActivationState
    turns: int
    mailbox_depth: int
    busy: bool
    last_used: float


class Activation:
    """An actor instance with its database and gate. Owned by one supervisor's
    ``ActivationTable``; services keep what they know of it themselves (see
    ``dotdo.runtime.core.hooks``)."""

    __slots__ = (
        "id",
        "label",
        "kind",
        "db",
        "instance",
        "gate",
        "state",
        "turns",
        "last_used",
        "failure",
        "supervisor",
        "started",
        "marked",
        "after",
        "before_start",
        "divert",
        "output",
    )

    def __init__(self, actor_id: ActorId, kind: KindSpec, db: ActorDatabase, supervisor: Any, graph: WaitGraph, now: float) -> None:
        self.id = actor_id
        self.label = str(actor_id)
        self.kind = kind
        self.db = db
        self.instance: Any = None
        self.gate = TurnGate(self.label, graph)
        self.state = ActivationState.STARTING
        self.turns = 0
        self.last_used = now
        self.failure: BaseException | None = None
        self.supervisor = supervisor  # what stubs made inside its turns call through
        self.started = kind.on_start is None
        self.marked = False  # a service has work for the end of the outermost turn
        # What happens to the activation once its outermost turn ends: RELOAD (a new
        # instance over replaced data), RELEASE (closed: an operation needs the file),
        # MOVED (closed: the address is placed elsewhere now). None: nothing.
        self.after: AfterTurn | None = None
        # What must run, in order, before on_start (a promotion to settle); empty: nothing.
        self.before_start: list[Callable[[Activation], Awaitable[None]]] = []
        self.divert: Diverter | None = None  # takes over its calls (a sharded actor's router)
        # What a turn awaits after its commit and before its reply leaves (a cluster's
        # replicas acknowledging the commit); None: nothing.
        self.output: Callable[[], Awaitable[None]] | None = None

    def mark(self) -> None:
        """Ask for the ``turn_ended`` hooks once the outermost turn ends."""
        self.marked = True

    def stats(self) -> ActivationStats:
        """A snapshot of this activation."""
        gate = self.gate
        return ActivationStats(self.label, self.state, self.turns, gate.waiting, gate.owner is not None, self.last_used)

    def __repr__(self) -> str:
        return f"<Activation {self.label} {self.state.value} turns={self.turns}>"


def raise_public(exc: BaseException, activation: Activation) -> NoReturn:
    """Raise what the caller of a failed turn sees (see ``public_error``), chained to
    ``exc``."""
    error = public_error(exc, activation)
    if error is exc:
        raise exc
    raise error from exc


def public_error(exc: BaseException, activation: Activation) -> BaseException:
    """What the caller sees: dotdo errors and cancellation as they are, anything the
    actor's code raised as an ``ActorError`` naming its type."""
    if isinstance(exc, TurnStopped):  # stopped on purpose: its abort, its CPU limit
        return exc.error
    if isinstance(exc, DotdoError) or not isinstance(exc, Exception):
        return exc
    return ActorError(type(exc).__name__, str(exc), address=(activation.id.namespace, activation.id.hex))
