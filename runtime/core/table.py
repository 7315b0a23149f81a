"""The activation table: finding or building an actor's activation, and closing it again.

An ``ActivationTable`` holds one supervisor's activations, keyed by
``(namespace, hex id)`` and ordered from least to most recently used. It is the only
thing that adds to it or takes from it, and it keeps its invariant: at most one
activation per address (backed by the exclusive lock on the database file).

An activation is closed (passivated) when it has been idle past ``idle_timeout`` (the
sweep), when building another one would pass ``max_active`` (the least recently used
idle ones go first), when asked, or at shutdown. Passivation never happens in the middle
of a turn: a busy activation is skipped, except at shutdown once running calls were
drained or cancelled. Nothing is lost by it; the next call builds a new activation.

An activation whose database finds no file descriptor left (``OutOfDescriptors``: the
open-file limit is spent, which ``dotdo.runtime.transport.descriptors`` budgets against
but a full system table or a lowered limit can still cause) passivates a batch of idle
actors, so that a burst of such activations does not pay for it one by one, and opens
once more; if that fails too, the caller is told ``Overloaded`` and may retry.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import trio

from dotdo.storage.database import ActorDatabase
from dotdo.storage.directory import ActorDirectory
from dotdo.storage.errors import OutOfDescriptors, StorageError
from dotdo.storage.options import StorageOptions

from dotdo.runtime.core.activation import Activation, ActivationState, PassivationReason, raise_public
from dotdo.runtime.core.calls import CallsInFlight
from dotdo.runtime.core.context import ActorContext
from dotdo.runtime.core.errors import Overloaded, SupervisorClosed
from dotdo.runtime.core.gate import WaitGraph
from dotdo.runtime.core.hooks import Hooks
from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.core.kinds import Registry

log = logging.getLogger("dotdo.runtime")


def descriptor_batch(active: int) -> int:
    """Idle actors passivated at once when ``active`` hold the descriptors: 1% of them,
    at least 8."""
    return max(8, active // 100)


class ActivationTable:
    """The activations of one supervisor.

    Args:
        registry: The kinds that may be activated.
        data_dir, storage: Where their databases are, and how they are opened.
        max_active: Activations kept at most (the least recently used idle ones go).
        idle_timeout: Seconds without a call after which an activation is closed.
        env: What instances read as ``self.env``.
        owner: What stubs made inside turns call through (the supervisor).
        calls: The calls in flight (a closing supervisor activates only for them).
        hooks: Told when an activation is built, reloaded and closed.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        data_dir: Path,
        storage: StorageOptions,
        max_active: int,
        idle_timeout: float,
        env: Mapping[str, str],
        owner: Any,
        calls: CallsInFlight,
        hooks: Hooks,
    ) -> None:
        self.registry = registry
        self.data_dir = data_dir
        self.storage = storage
        self.max_active = max_active
        self.idle_timeout = idle_timeout
        self.env = env
        self.owner = owner
        self.calls = calls
        self.hooks = hooks
        self.graph = WaitGraph()
        self.activations = 0  # built so far
        self.passivations = 0  # closed so far
        self._active: OrderedDict[tuple[str, str], Activation] = OrderedDict()
        # Told of every actor before its database may be created (the supervisor opens it).
        self.directory: ActorDirectory | None = None

    # -- the table -------------------------------------------------------------------

    def get(self, target: ActorId) -> Activation | None:
        """The activation of ``target``, if it has one now."""
        return self._active.get((target.namespace, target.hex))

    def __contains__(self, target: ActorId) -> bool:
        return (target.namespace, target.hex) in self._active

    def __len__(self) -> int:
        return len(self._active)

    def __iter__(self) -> Iterator[Activation]:
        """The activations, least recently used first (a snapshot: closing some while
        iterating is safe)."""
        return iter(list(self._active.values()))

    # -- building --------------------------------------------------------------------

    def activate(self, target: ActorId) -> Activation:
        """The activation of ``target``, built (database opened, instance created) if it
        has none; either way it becomes the most recently used. ``on_start`` has not run
        yet on a new one (``dotdo.runtime.core.turns`` runs it in the first turn).

        Raises:
            SupervisorClosed: The supervisor is closing and no call is left running.
            ActorNotFound: Unknown namespace.
            Overloaded: No file descriptor is left for its database, even after
                passivating idle actors. Retryable.
            DotdoError: The database could not be opened, or building the instance
                failed (an ``ActorError`` when the actor's own code raised).
        """
        key = (target.namespace, target.hex)
        active = self._active
        activation = active.get(key)
        if activation is not None:
            active.move_to_end(key)
            return activation
        calls = self.calls
        if calls.closing and not len(calls):
            raise SupervisorClosed("the supervisor is shutting down")
        kind = self.registry.kind(target.namespace)
        db = self._open(target)
        activation = Activation(target, kind, db, self.owner, self.graph, trio.current_time())
        try:
            activation.instance = self.instance(activation)
            Hooks.run(self.hooks.activated, activation)
        except BaseException as exc:
            db.close()
            raise_public(exc, activation)
        if activation.started and not activation.before_start:
            activation.state = ActivationState.ACTIVE
        else:
            activation.started = False
        excess = len(active) + 1 - self.max_active
        if excess > 0:
            self.evict(excess)
        active[key] = activation
        self.activations += 1
        return activation

    def instance(self, activation: Activation) -> Any:
        """A new instance of the activation's kind over its database."""
        return activation.kind.create(ActorContext(activation.id, activation.db, self.env, self.owner))

    def reload(self, activation: Activation) -> None:
        """A fresh instance over data that was replaced under ``activation`` (a checkout,
        a restore), ``on_start`` before its next call; the ``reloaded`` hooks are told."""
        activation.db.forget_features()
        activation.instance = self.instance(activation)
        activation.started = activation.kind.on_start is None
        activation.state = ActivationState.ACTIVE if activation.started else ActivationState.STARTING
        Hooks.run(self.hooks.reloaded, activation)

    def _open(self, target: ActorId) -> ActorDatabase:
        """Open the database of ``target``; out of file descriptors, passivate a batch of
        idle actors (``descriptor_batch``) and try once more.

        Raises:
            Overloaded: Still no descriptor (none was idle, or another part of the
                process took what they gave back).
            DotdoError: The database could not be opened for another reason.
        """
        if self.directory is not None:
            self.directory.note(target.namespace, target.hex, target.name)
        try:
            return ActorDatabase.open(self.data_dir, target.address, self.storage, name=target.name)
        except OutOfDescriptors as exc:
            log.warning("%s; passivating idle actors", exc)
        if self.evict(descriptor_batch(len(self._active))):
            try:
                return ActorDatabase.open(self.data_dir, target.address, self.storage, name=target.name)
            except OutOfDescriptors:
                pass
        raise Overloaded(
            "the server is out of file descriptors; retry later", address=(target.namespace, target.hex)
        ) from None

    # -- closing ---------------------------------------------------------------------

    def evict(self, count: int) -> int:
        """Passivate up to ``count`` idle actors, least recently used first (busy ones
        are passed over; the walk stops as soon as enough are found); returns how many."""
        victims: list[Activation] = []
        for activation in self._active.values():
            if activation.gate.idle and activation.state is not ActivationState.STARTING:
                victims.append(activation)
                if len(victims) >= count:
                    break
        for activation in victims:
            self.passivate(activation, PassivationReason.CAPACITY)
        return len(victims)

    def passivate(self, activation: Activation, reason: PassivationReason) -> bool:
        """Close an idle activation. Never in the middle of a turn: a busy one is skipped
        (except at shutdown, after running calls were drained or cancelled)."""
        if not activation.gate.idle and reason is not PassivationReason.SHUTDOWN:
            return False
        self.close(activation, reason, ActivationState.CLOSED)
        return True

    def close(self, activation: Activation, reason: PassivationReason, state: ActivationState) -> None:
        """Take ``activation`` out of the table, mark it ``state`` and close its database
        (calls still waiting at its gate see the state and are told why)."""
        key = (activation.id.namespace, activation.id.hex)
        if self._active.get(key) is activation:
            del self._active[key]
        activation.state = state
        self.passivations += 1
        try:
            activation.db.close()
        except StorageError:
            log.exception("closing %s (%s) failed", activation.label, reason.value)
        Hooks.run(self.hooks.closed, activation)
        log.debug("passivated %s (%s)", activation.label, reason.value)

    def close_all(self) -> None:
        """Close every activation (shutdown, once running calls were drained or
        cancelled)."""
        for activation in list(self._active.values()):
            self.passivate(activation, PassivationReason.SHUTDOWN)

    async def sweep_idle(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Passivate actors idle past ``idle_timeout``, looking a few times per timeout.
        Runs in the supervisor's nursery until it is cancelled (returns at once when the
        timeout is infinite)."""
        timeout = self.idle_timeout
        interval = min(max(timeout / 4, 0.01), 10.0)
        task_status.started()
        if math.isinf(timeout):
            return
        while True:
            await trio.sleep(interval)
            cutoff = trio.current_time() - timeout
            closed = 0
            for activation in list(self._active.values()):
                if activation.last_used > cutoff:
                    break
                if activation.state is ActivationState.ACTIVE and self.passivate(activation, PassivationReason.IDLE):
                    closed += 1
                    if closed % 100 == 0:
                        await trio.sleep(0)
