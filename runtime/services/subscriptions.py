"""Subscriptions: which actors listen to which events.

Each actor's subscriptions are rows of its own database (``dotdo.storage.workflow``), written
in its turns; the shared subscription index (``dotdo.storage.subscriptions``) is where senders
look them up. The index is added to before the turn commits and rewritten from the
actor's rows when the turn ends, so it is never missing a committed subscription; a row
left behind by a crash only sends the actor an event it drops (``listens``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack

from dotdo.storage.errors import StorageError
from dotdo.storage.subscriptions import WILDCARD, Subscription, SubscriptionIndex
from dotdo.storage.workflow import SubscriptionRow

from dotdo.runtime.core.errors import SupervisorClosed
from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.services.workflow import activation_of_turn, check_priority, check_timeout, fields, method_of, own_turn, parse_path

if TYPE_CHECKING:
    from dotdo.storage.database import ActorDatabase

    from dotdo.runtime.core.activation import Activation
    from dotdo.runtime.supervisor import Supervisor

log = logging.getLogger("dotdo.events")

SUBSCRIBE_METHOD = "$subscribe"
"""The system method that subscribes an actor on its own worker."""


@dataclass(frozen=True, slots=True)
class Subscribed:
    """A subscription: events ``pattern`` run ``method`` on ``actor``. Awaiting it is
    optional for one's own methods and returns it."""

    pattern: str
    actor: ActorId
    method: str
    priority: int
    timeout: float | None

    def __await__(self) -> Generator[Any, None, Subscribed]:
        return self
        yield  # pragma: no cover - makes this a generator


class SubscriptionService:
    """The subscriptions of one supervisor. Created by it."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor
        self._index: SubscriptionIndex | None = None
        # What each activation's table says it listens to, (noun, verb, method), once
        # read; and the activations whose turn changed it (sync the index at its end).
        self._subscribed: dict[Activation, set[tuple[str, str, str]]] = {}
        self._dirty: set[Activation] = set()
        # Told of each actor whose entries this process rewrote from its table (a
        # cluster node publishes them to the other nodes).
        self.on_change: list[Callable[[ActorId], None]] = []
        hooks = supervisor.hooks
        hooks.activated.append(self._activated)
        hooks.turn_ended.append(self._turn_ended)
        hooks.reloaded.append(self._reloaded)
        hooks.closed.append(self._closed)

    def _activated(self, activation: Activation) -> None:
        if activation.kind.subscriptions and activation.divert is None and not self._sup.config.storage.read_only:
            self.declare(activation)

    def _turn_ended(self, activation: Activation) -> None:
        if activation in self._dirty:
            self.sync(activation)

    def _reloaded(self, activation: Activation) -> None:
        self._subscribed.pop(activation, None)
        if activation.kind.subscriptions:
            self.declare(activation)
        self.sync(activation)

    def _closed(self, activation: Activation) -> None:
        self._subscribed.pop(activation, None)
        self._dirty.discard(activation)

    def changed(self, activation: Activation) -> None:
        """The actor's subscriptions changed in this turn (or its data moved): read them
        again, and bring the shared index in step when the turn ends."""
        self._subscribed.pop(activation, None)
        self._dirty.add(activation)
        activation.mark()

    def open(self) -> None:
        config = self._sup.config
        self._index = SubscriptionIndex.open(config.data_dir, config.storage.durability, config.storage.read_only)

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    @property
    def index(self) -> SubscriptionIndex:
        if self._index is None:
            raise SupervisorClosed("the supervisor is not running (use `async with`)")
        return self._index

    def subscribe(
        self, actor: ActorId, pattern: str, handler: object, *, priority: int = 0, timeout: float | None = None
    ) -> Subscribed:
        """Subscribe ``actor`` (whose turn this is) to ``pattern`` with ``handler``."""
        activation = own_turn(self._sup, actor, "subscriptions")
        noun, verb = parse_path(pattern, wildcards=True)
        method = method_of(activation, handler, "a subscription")
        row = SubscriptionRow(noun, verb, method, check_priority(priority), None if timeout is None else check_timeout(timeout))
        self._add(activation, row)
        return Subscribed(f"{noun}.{verb}", activation.id, method, row.priority, row.timeout)

    def _add(self, activation: Activation, row: SubscriptionRow) -> None:
        if activation.db.workflow.subscribe(row):
            # The shared index first, like the alarm index: an event sent from now on
            # finds the subscriber; the turn's end makes the index match the truth.
            self.index.add(_entry(activation.id, row))
            self.changed(activation)

    def unsubscribe(self, actor: ActorId, pattern: str, handler: object = None) -> int:
        """Remove ``actor``'s subscriptions to ``pattern`` (of ``handler``, or all)."""
        activation = own_turn(self._sup, actor, "subscriptions")
        noun, verb = parse_path(pattern, wildcards=True)
        method = None if handler is None else method_of(activation, handler, "a subscription")
        removed = activation.db.workflow.unsubscribe(noun, verb, method)
        if removed:
            self.changed(activation)
        return removed

    def subscriptions(self, actor: ActorId) -> list[Subscribed]:
        """``actor``'s subscriptions (inside its turn)."""
        activation = own_turn(self._sup, actor, "subscriptions")
        return [
            Subscribed(f"{r.noun}.{r.verb}", actor, r.method, r.priority, r.timeout)
            for r in activation.db.workflow.subscriptions()
        ]

    async def subscribe_remote(
        self, target: ActorId, pattern: str, method: str, *, priority: int = 0, timeout: float | None = None
    ) -> Subscribed:
        """Subscribe another actor (a turn of its own on it, on its worker)."""
        parse_path(pattern, wildcards=True)
        payload = msgpack.packb([pattern, method, check_priority(priority), None if timeout is None else check_timeout(timeout)])
        raw = await self._sup.system_call(target, SUBSCRIBE_METHOD, payload)
        pattern, method, priority, timeout = msgpack.unpackb(raw)
        return Subscribed(pattern, target, method, priority, timeout)

    async def subscribe_here(self, instance: Any, payload: bytes) -> bytes:
        """The turn that runs ``subscribe_remote`` on the subscriber."""
        pattern, method, priority, timeout = fields(payload, 4)
        activation = activation_of_turn()
        sub = self.subscribe(activation.id, pattern, method, priority=priority, timeout=timeout)
        return msgpack.packb([sub.pattern, sub.method, sub.priority, sub.timeout])

    def declare(self, activation: Activation) -> None:
        """Subscribe a new activation to what its class declares (``@S.on...``), once."""
        declared = activation.kind.subscriptions
        if not declared:
            return
        workflow = activation.db.workflow
        have = {(r.noun, r.verb, r.method): r for r in workflow.subscriptions()}
        for noun, verb, method, priority, timeout in declared:
            row = SubscriptionRow(noun, verb, method, priority, timeout)
            if have.get((noun, verb, method)) != row:
                workflow.subscribe(row)  # outside a turn: commits now
                self.index.add(_entry(activation.id, row))
                self._told(activation.id)

    def sync(self, activation: Activation) -> None:
        """After a turn that changed subscriptions: the index says what the actor's
        table says."""
        self._dirty.discard(activation)
        db = activation.db
        if db.closed:
            return
        try:
            rows = db.workflow.subscriptions()
            self.index.replace(activation.id.namespace, activation.id.hex, [_entry(activation.id, r) for r in rows])
        except StorageError:
            log.exception("cannot update the subscription index for %s", activation.label)
            return
        self._told(activation.id)

    def _told(self, actor: ActorId) -> None:
        for listener in self.on_change:
            listener(actor)

    def reindex(self, actor: ActorId, db: ActorDatabase) -> None:
        """Make the index match the table of an actor that is not active here."""
        self.index.replace(actor.namespace, actor.hex, [_entry(actor, r) for r in db.workflow.subscriptions()])
        self._told(actor)

    def forget(self, actor: ActorId) -> None:
        """Drop the index entries of an actor whose database was deleted."""
        self.index.replace(actor.namespace, actor.hex, [])
        self._told(actor)

    def listens(self, activation: Activation, noun: str, verb: str, method: str) -> bool:
        subscribed = self._subscribed.get(activation)
        if subscribed is None:
            subscribed = self._subscribed[activation] = {(r.noun, r.verb, r.method) for r in activation.db.workflow.subscriptions()}
        return any(
            (n, v, method) in subscribed for n in (noun, WILDCARD) for v in (verb, WILDCARD)
        )

def _entry(actor: ActorId, row: SubscriptionRow) -> Subscription:
    return Subscription(row.noun, row.verb, actor.namespace, actor.hex, actor.name, row.method, row.priority, row.timeout)


