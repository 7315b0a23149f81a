"""The activation table: finding or building an actor's activation, and closing it again.

A supervisor keeps its activations in ``Supervisor._active``, keyed by
``(namespace, hex id)`` and ordered from least to most recently used. The functions here
are the only ones that add to it or take from it, and they keep its invariant: at most
one activation per address (backed by the exclusive lock on the database file).

An activation is closed (passivated) when it has been idle past ``idle_timeout`` (the
sweep), when building another one would pass ``max_active`` (the least recently used
idle ones go first), when asked, or at shutdown. Passivation never happens in the middle
of a turn: a busy activation is skipped, except at shutdown once running calls were
drained or cancelled. Nothing is lost by it; the next call builds a new activation.

An activation whose database finds no file descriptor left (``OutOfDescriptors``: the
open-file limit is spent, which ``dotdo.runtime.transport.descriptors`` budgets against but a full
system table or a lowered limit can still cause) passivates a batch of idle actors, so
that a burst of such activations does not pay for it one by one, and opens once more;
if that fails too, the caller is told ``Overloaded`` and may retry.

These are functions of the supervisor rather than methods so that ``Supervisor`` stays
the one owner of the state while its parts live in modules of their own; they cost a
call no more than a method would.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import trio

from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import OutOfDescriptors, StorageError
from dotdo.storage.promotion import pending as pending_promotion

from dotdo.runtime.services import sharding
from dotdo.runtime.core.activation import Activation, ActivationState, PassivationReason, raise_public
from dotdo.runtime.core.context import ActorContext
from dotdo.runtime.core.errors import Overloaded, SupervisorClosed
from dotdo.runtime.core.ids import ActorId

if TYPE_CHECKING:
    from dotdo.runtime.supervisor import Supervisor

log = logging.getLogger("dotdo.runtime")


def activate(sup: Supervisor, target: ActorId) -> Activation:
    """The activation of ``target``, built (database opened, instance created) if it has
    none; either way it becomes the most recently used. ``on_start`` has not run yet on
    a new one (``dotdo.runtime.core.turns.ready`` runs it in the first turn).

    Raises:
        SupervisorClosed: The supervisor is closing and no call is left running.
        ActorNotFound: Unknown namespace.
        Overloaded: No file descriptor is left for its database, even after
            passivating idle actors. Retryable.
        DotdoError: The database could not be opened, or building the instance failed
            (an ``ActorError`` when the actor's own code raised).
    """
    key = (target.namespace, target.hex)
    active = sup._active
    activation = active.get(key)
    if activation is not None:
        active.move_to_end(key)
        return activation
    if sup._closing and not sup._entries:
        raise SupervisorClosed("the supervisor is shutting down")
    kind = sup.registry.kind(target.namespace)
    now = trio.current_time()
    db = _open(sup, target)
    activation = Activation(target, kind, db, sup, sup._graph, now)
    try:
        meta = db.meta()
        activation.router = sharding.router_of(meta)
        if pending_promotion(meta) is not None:
            activation.promotion_pending = True
            activation.started = False
        activation.instance = kind.create(ActorContext(target, db, sup.env, sup))
        if kind.subscriptions and activation.router is None and not sup.config.storage.read_only:
            sup.subscriptions.declare(activation)
    except BaseException as exc:
        db.close()
        raise_public(exc, activation)
    if activation.started:
        activation.state = ActivationState.ACTIVE
    excess = len(active) + 1 - sup.config.max_active
    if excess > 0:
        evict(sup, excess)
    active[key] = activation
    sup._activations += 1
    return activation


def _open(sup: Supervisor, target: ActorId) -> ActorDatabase:
    """Open the database of ``target``; out of file descriptors, passivate a batch of
    idle actors (``DESCRIPTOR_BATCH``) and try once more.

    Raises:
        Overloaded: Still no descriptor (none was idle, or another part of the process
            took what they gave back).
        DotdoError: The database could not be opened for another reason.
    """
    config = sup.config
    try:
        return ActorDatabase.open(config.data_dir, target.address, config.storage, name=target.name)
    except OutOfDescriptors as exc:
        log.warning("%s; passivating idle actors", exc)
    if evict(sup, descriptor_batch(len(sup._active))):
        try:
            return ActorDatabase.open(config.data_dir, target.address, config.storage, name=target.name)
        except OutOfDescriptors:
            pass
    raise Overloaded(
        "the server is out of file descriptors; retry later", address=(target.namespace, target.hex)
    ) from None


def descriptor_batch(active: int) -> int:
    """Idle actors passivated at once when ``active`` hold the descriptors: 1% of them,
    at least 8."""
    return max(8, active // 100)


def evict(sup: Supervisor, count: int) -> int:
    """Passivate up to ``count`` idle actors, least recently used first (busy ones
    are passed over; the walk stops as soon as enough are found); returns how many."""
    victims: list[Activation] = []
    for activation in sup._active.values():
        if activation.gate.idle and activation.state is not ActivationState.STARTING:
            victims.append(activation)
            if len(victims) >= count:
                break
    for activation in victims:
        passivate(sup, activation, PassivationReason.CAPACITY)
    return len(victims)


def passivate(sup: Supervisor, activation: Activation, reason: PassivationReason) -> bool:
    """Close an idle activation. Never in the middle of a turn: a busy one is skipped
    (except at shutdown, after running calls were drained or cancelled)."""
    if not activation.gate.idle and reason is not PassivationReason.SHUTDOWN:
        return False
    close_activation(sup, activation, reason, ActivationState.CLOSED)
    return True


def close_activation(sup: Supervisor, activation: Activation, reason: PassivationReason, state: ActivationState) -> None:
    """Take ``activation`` out of the table, mark it ``state`` and close its database
    (calls still waiting at its gate see the state and are told why)."""
    key = (activation.id.namespace, activation.id.hex)
    if sup._active.get(key) is activation:
        del sup._active[key]
    activation.state = state
    sup._passivations += 1
    try:
        activation.db.close()
    except StorageError:
        log.exception("closing %s (%s) failed", activation.label, reason.value)
    log.debug("passivated %s (%s)", activation.label, reason.value)


async def sweep_idle(sup: Supervisor, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Passivate actors idle past ``idle_timeout``, looking a few times per timeout.
    Runs in the supervisor's nursery until it is cancelled (returns at once when the
    timeout is infinite)."""
    timeout = sup.config.idle_timeout
    interval = min(max(timeout / 4, 0.01), 10.0)
    task_status.started()
    if math.isinf(timeout):
        return
    while True:
        await trio.sleep(interval)
        cutoff = trio.current_time() - timeout
        closed = 0
        for activation in list(sup._active.values()):
            if activation.last_used > cutoff:
                break
            if activation.state is ActivationState.ACTIVE and passivate(sup, activation, PassivationReason.IDLE):
                closed += 1
                if closed % 100 == 0:
                    await trio.sleep(0)
