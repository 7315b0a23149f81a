"""One activation: an actor instance, its open database and its turn gate; and what the
caller of a failed turn is told."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import DotdoError

from dotdo.runtime.core.errors import ActorError
from dotdo.runtime.core.gate import TurnGate, WaitGraph
from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.core.kinds import KindSpec

if TYPE_CHECKING:
    from dotdo.runtime.supervisor import Supervisor


class ActivationState(enum.Enum):
    """Where an activation is in its life."""

    STARTING = "starting"  # built; on_start has not finished
    ACTIVE = "active"
    CLOSED = "closed"  # passivated or shut down; its database is closed
    FAILED = "failed"  # on_start raised; the next call builds a new activation


class PassivationReason(enum.Enum):
    """Why an activation was closed."""

    IDLE = "idle"  # no call for longer than the idle timeout
    CAPACITY = "capacity"  # least recently used when the active cap was passed
    SHUTDOWN = "shutdown"  # the supervisor is closing
    START_FAILED = "start_failed"  # on_start raised
    REQUESTED = "requested"  # an administrator or the actor asked


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
    """An actor instance with its database and gate. Owned by one ``Supervisor``."""

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
        "wake_dirty",
        "alarm_running",
        "alarm_deleted",
        "indexed",
        "delivering",
        "subscribed",
        "subscriptions_dirty",
        "live_steps",
        "reload",
        "router",
        "promotion_pending",
    )

    def __init__(self, actor_id: ActorId, kind: KindSpec, db: ActorDatabase, supervisor: Supervisor, graph: WaitGraph, now: float) -> None:
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
        self.supervisor = supervisor
        self.started = kind.on_start is None
        self.wake_dirty = False  # a turn changed the alarm or schedules: sync the index
        self.alarm_running: int | None = None  # seq of the alarm whose handler runs
        self.alarm_deleted = False  # delete_alarm() was called by the running handler
        # What the alarm index holds for this actor, item -> (due, retries), as far as
        # this activation knows (None: unknown). A due here is never earlier than the
        # index's, so "already early enough" checks against it are safe.
        self.indexed: dict[str, tuple[float, int]] | None = None
        self.delivering = False  # an alarm delivery runs turn after turn: sync at its end
        self.subscribed: set[tuple[str, str, str]] | None = None  # (noun, verb, method), once read
        self.subscriptions_dirty = False  # a turn changed subscriptions: sync the shared index
        self.live_steps: set[int] = set()  # actions of the durable steps running now
        # A turn replaced the data (checkout, restore: "reload") or asked to let go of
        # the database ("release"): done when the turn ends (dotdo.runtime.services.lifecycle).
        self.reload: str | None = None
        self.router: Any = None  # a sharded actor's configuration (dotdo.runtime.services.sharding)
        self.promotion_pending = False  # a promotion's copy, settled before the first call

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
    if isinstance(exc, DotdoError) or not isinstance(exc, Exception):
        return exc
    return ActorError(type(exc).__name__, str(exc), address=(activation.id.namespace, activation.id.hex))
