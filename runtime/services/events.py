"""Events between actors: durable sends, subscriptions, delivery and de-duplication.

``self.S.send("Customer.created", data)`` writes the event to the sender's log and one
outbox row per subscriber, in the sending turn's own commit (``dotdo.storage.outbox``): a
turn that rolls back sends nothing, and a committed send is never lost. Delivery runs
after the commit, driven by the alarm index (``dotdo.runtime.services.alarms``): the outbox is one more
thing an actor must wake for, so a crash between the commit and the delivery is picked
up after restart like a due alarm, and with worker processes each worker delivers for
the actors it owns.

A delivery round on the sender is three steps: a short turn that takes the due rows, the
deliveries themselves (outside the sender's turn, so the sender keeps serving; one at a
time per receiver, in order, receivers in parallel), and a short turn that removes what
was delivered and reschedules what failed: retried with exponential backoff
(tenacity's ``wait_exponential_jitter``), then moved to the dead letters, which can be
listed and replayed.

Delivery is at least once; the effect is once. Each delivery carries the sender and the
row's ``seq`` (never reused), and the receiver records ``(sender, seq)`` in its inbox in
the same commit as its handler's writes: a repeated delivery finds it and is dropped.
With it comes the lowest ``seq`` the sender still has queued for the receiver, below
which the inbox forgets (those will never come again).

Subscriptions live in each actor's own database and in the shared subscription index
(``dotdo.storage.subscriptions``), where senders look them up.
"""

from __future__ import annotations

import datetime as dt
import inspect
import itertools
import logging
import secrets
from collections.abc import Generator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from dotdo.storage.alarms import PendingItem
from dotdo.storage.errors import DotdoError, InvalidInput
from dotdo.storage.outbox import OUTBOX_ITEM, Delivery, Target

from dotdo.runtime.core import values
from dotdo.runtime.core.context import current_turn
from dotdo.runtime.core.errors import ProtocolError
from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.services.lifecycle import ADMIN_METHOD
from dotdo.runtime.services.subscriptions import SUBSCRIBE_METHOD
from dotdo.runtime.services.workflow import Retry, activation_of_turn, backoff, check_priority, fields, optional_id, own_turn, parse_path, seconds

if TYPE_CHECKING:
    from dotdo.runtime.core.activation import Activation
    from dotdo.runtime.supervisor import Supervisor

log = logging.getLogger("dotdo.events")

EVENT_METHOD = "$event"
"""The system method a delivery travels as between worker processes."""
BATCH = 256
"""Outbox rows one delivery round takes."""
CHUNK = 64
"""Events one system call delivers to a receiver (each a step of one turn there)."""
SKIPPED = 1
"""A receiver's answer for an event it did not run (an earlier one of its path failed)."""
PARALLEL_RECEIVERS = 32
"""Receivers one round delivers to at once."""


@dataclass(frozen=True, slots=True)
class Event:
    """What an event handler is given.

    Attributes:
        id: The event's unique id.
        path: ``Noun.verb``, as sent.
        data: The data sent with it (a copy).
        source: A stub of the actor that sent it.
        timestamp: When it was sent (UTC).
        trace_id: Shared by the events one cause leads to (kept from the event being
            handled when a handler sends more, unless given).
        correlation_id: Set by the sender, or kept like ``trace_id``.
        attempt: 1 for the first delivery, more for retries.
    """

    id: str
    path: str
    data: Any
    source: Any
    timestamp: dt.datetime
    trace_id: str | None
    correlation_id: str | None
    attempt: int

    @property
    def noun(self) -> str:
        return self.path.partition(".")[0]

    @property
    def verb(self) -> str:
        return self.path.partition(".")[2]


@dataclass(frozen=True, slots=True)
class Sent:
    """What ``send`` returns (awaiting it is optional and returns it).

    Attributes:
        id: The event's id.
        path: ``Noun.verb``.
        subscribers: How many deliveries were queued.
    """

    id: str
    path: str
    subscribers: int

    def __await__(self) -> Generator[Any, None, Sent]:
        return self
        yield  # pragma: no cover - makes this a generator


current_event: ContextVar[Event | None] = ContextVar("dotdo_current_event", default=None)


class EventService:
    """The events of one supervisor. Created by it."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor
        config = supervisor.config
        self.default_retry = Retry(config.event_max_attempts, config.event_retry_initial, config.event_retry_max)
        self.delivered = 0
        self.dead = 0
        # Event ids: a random prefix per supervisor and a counter (unique, and cheaper
        # than fresh random bytes per event).
        self._uid_prefix = secrets.token_hex(8)
        self._uid_seq = itertools.count(1)
        self._refreshed_for: Any = None  # the turn in which the index was last re-read

    # -- sending (inside the sender's turn) ------------------------------------------

    def send(
        self,
        actor: ActorId,
        path: str,
        data: Any = None,
        *,
        priority: int = 0,
        delay: float | dt.timedelta | None = None,
        retry: Retry | None = None,
        trace_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Sent:
        """Queue an event for its subscribers in the current turn (see ``Workflow.send``)."""
        activation = own_turn(self._sup, actor, "send")
        noun, verb = parse_path(path)
        priority = check_priority(priority)
        wait = 0.0 if delay is None else seconds(delay, "delay")
        if retry is not None and not isinstance(retry, Retry):
            raise InvalidInput(f"retry is a dotdo.Retry, got {type(retry).__name__}")
        policy = (retry or self.default_retry).policy
        handling = current_event.get()
        trace_id = optional_id(trace_id, "trace_id") or (handling.trace_id if handling else None) or secrets.token_hex(8)
        correlation_id = optional_id(correlation_id, "correlation_id") or (handling.correlation_id if handling else None)
        packed = values.pack(data)
        # The index is re-read once per turn: a subscription acknowledged before the
        # turn began is seen by every send in it.
        turn = current_turn.get()
        refresh = turn is not self._refreshed_for
        self._refreshed_for = turn
        targets = [
            Target(s.namespace, s.hex, s.name, s.method, s.priority, s.timeout)
            for s in self._sup.subscriptions.index.matching(noun, verb, refresh=refresh)
        ]
        now = self._sup.alarms.now()
        due = now + wait
        uid = f"{self._uid_prefix}{next(self._uid_seq):016x}"
        if targets:
            # The index first (committed now), so that a crash after the turn's commit
            # still finds the outbox (see dotdo.storage.alarm_index).
            self._sup.alarms.lower(activation, _outbox_item(due))
        activation.db.workflow.record_send(
            uid=uid,
            path=f"{noun}.{verb}",
            source=activation.label,
            data=packed,
            now=now,
            due=due,
            priority=priority,
            policy=policy,
            trace_id=trace_id,
            correlation_id=correlation_id,
            targets=targets,
        )
        return Sent(uid, f"{noun}.{verb}", len(targets))

    # -- delivery (driven by the alarm service) --------------------------------------

    async def deliver_round(self, target: ActorId) -> None:
        """Deliver what is due in ``target``'s outbox: take, deliver, settle."""
        sup = self._sup
        taken = await sup.run_turn(target, self._take)
        deliveries, lows = taken
        if not deliveries:
            return
        outcomes: dict[int, str | None] = {}
        by_receiver: dict[tuple[str, str], list[Delivery]] = {}
        for delivery in deliveries:
            by_receiver.setdefault((delivery.namespace, delivery.hex), []).append(delivery)
        limit = trio.Semaphore(PARALLEL_RECEIVERS)
        sender = [target.namespace, target.hex, target.name]
        async with trio.open_nursery() as nursery:
            for key, queue in by_receiver.items():
                nursery.start_soon(self._deliver_queue, sender, queue, lows.get(key, 0), outcomes, limit)
        await sup.run_turn(target, lambda instance: self._settle(deliveries, outcomes))

    async def _take(self, instance: Any) -> tuple[list[Delivery], dict[tuple[str, str], int]]:
        activation = activation_of_turn()
        return activation.db.workflow.take(self._sup.alarms.now(), BATCH)

    async def _deliver_queue(
        self, sender: list[str | None], queue: list[Delivery], low: int, outcomes: dict[int, str | None], limit: trio.Semaphore
    ) -> None:
        """Deliver one receiver's rows in order, ``CHUNK`` per system call; a failed
        event holds back the later events of its path (they stay queued)."""
        failed_paths: set[str] = set()
        async with limit:
            for start in range(0, len(queue), CHUNK):
                chunk = [d for d in queue[start : start + CHUNK] if d.path not in failed_paths]
                if not chunk:
                    continue
                try:
                    results = await self._deliver_chunk(sender, chunk, low)
                except (DotdoError, OSError) as exc:
                    results = [f"{type(exc).__name__}: {exc}"] * len(chunk)
                except Exception as exc:  # a bug; logged, and the deliveries are retried
                    log.exception("delivering to %s/%s", chunk[0].namespace, chunk[0].hex)
                    results = [f"{type(exc).__name__}: {exc}"] * len(chunk)
                for delivery, result in zip(chunk, results, strict=True):
                    if result == SKIPPED or delivery.path in failed_paths:
                        continue
                    outcomes[delivery.seq] = result
                    if result is not None:
                        failed_paths.add(delivery.path)

    async def _deliver_chunk(self, sender: list[str | None], chunk: list[Delivery], low: int) -> list[Any]:
        first = chunk[0]
        envelope = msgpack.packb(
            [
                *sender,
                low,
                [
                    [d.seq, d.method, d.uid, d.path, d.data, d.timestamp, d.trace_id, d.correlation_id, d.attempts + 1, d.timeout]
                    for d in chunk
                ],
            ]
        )
        receiver = ActorId(first.namespace, first.hex, first.name)
        timeouts = [d.timeout for d in chunk if d.timeout is not None]
        budget = None if not timeouts else sum(timeouts) + 1.0
        raw = await self._sup.system_call(receiver, EVENT_METHOD, envelope, timeout=budget)
        results = msgpack.unpackb(raw)
        if not isinstance(results, list) or len(results) != len(chunk):
            raise ProtocolError("a delivery's answer must be one result per event")
        return results

    async def _settle(self, deliveries: list[Delivery], outcomes: dict[int, str | None]) -> None:
        workflow = activation_of_turn().db.workflow
        now = self._sup.alarms.now()
        done = [d.seq for d in deliveries if d.seq in outcomes and outcomes[d.seq] is None]
        workflow.delivered(done, now)
        self.delivered += len(done)
        for d in deliveries:
            error = outcomes.get(d.seq)
            if error is None:
                continue
            attempts = d.attempts + 1
            if attempts >= d.policy.attempts:
                workflow.failed(d, error, None, now)
                self.dead += 1
                log.error("gave up delivering %s to %s/%s after %d attempts: %s", d.path, d.namespace, d.hex, attempts, error)
            else:
                workflow.failed(d, error, now + backoff(d.policy, attempts), now)

    # -- receiving (a turn on the receiver) ------------------------------------------

    async def receive(self, instance: Any, envelope: bytes) -> bytes:
        """Run deliveries on the receiver, in order, each as a step of this turn (its
        own fate: a handler that raises rolls back its event alone): de-duplicate,
        then call the handler. Answers one result per event: None (handled, or dropped
        as a repeat or for want of a subscription), ``SKIPPED`` (not run: an earlier
        event of its path failed), or the error."""
        namespace, hex_id, name, low, items = fields(envelope, 5)
        activation = activation_of_turn()
        db = activation.db
        workflow = db.workflow
        sender = f"{namespace}/{hex_id}"
        source = self._sup.ref(ActorId(namespace, hex_id, name))
        results: list[Any] = []
        failed: set[str] = set()
        for seq, method, uid, path, data, timestamp, trace_id, correlation_id, attempt, timeout in items:
            if path in failed:
                results.append(SKIPPED)
                continue
            try:
                with db.step():
                    noun, verb = parse_path(path)
                    # Not (or no longer) subscribed, or handled before: done, nothing to run.
                    if self._sup.subscriptions.listens(activation, noun, verb, method) and workflow.accept(sender, seq, low):
                        when = dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)
                        data = values.unpack(data, self._sup.ref)
                        event = Event(uid, path, data, source, when, trace_id, correlation_id, attempt)
                        await self._handle(instance, activation, method, path, timeout, event)
            except trio.TooSlowError:
                failed.add(path)
                results.append(f"CallTimeout: the handler {method} did not finish within {timeout:g} s; its writes were rolled back")
            except Exception as exc:
                failed.add(path)
                if not isinstance(exc, DotdoError):
                    log.warning("%s raised %s handling %s: %s", activation.label, type(exc).__name__, path, exc, exc_info=exc)
                results.append(f"{type(exc).__name__}: {exc}")
            else:
                results.append(None)
        return msgpack.packb(results)

    @staticmethod
    async def _handle(instance: Any, activation: Activation, method: str, path: str, timeout: float | None, event: Event) -> None:
        handler = getattr(type(instance), method, None)
        if handler is None or not inspect.iscoroutinefunction(handler):
            raise DotdoError(f"{activation.kind.namespace}.{method} is not an async method: it cannot handle {path}")
        token = current_event.set(event)
        try:
            if timeout is None:
                await handler(instance, event)
            else:
                with trio.fail_after(timeout):
                    await handler(instance, event)
        finally:
            current_event.reset(token)

    async def run_system(self, instance: Any, method: str, payload: bytes) -> bytes:
        """A system call's turn: a delivery, a subscription or a lifecycle operation."""
        if method == EVENT_METHOD:
            return await self.receive(instance, payload)
        if method == SUBSCRIBE_METHOD:
            return await self._sup.subscriptions.subscribe_here(instance, payload)
        if method == ADMIN_METHOD:
            return await self._sup.lifecycle.run_admin(instance, payload)
        raise ProtocolError(f"unknown system method {method!r}")

    # -- dead letters ----------------------------------------------------------------

    def replay(self, actor: ActorId, ids: list[int] | None = None) -> int:
        """Queue ``actor``'s dead letters again (inside its turn)."""
        activation = own_turn(self._sup, actor, "dead letters")
        now = self._sup.alarms.now()
        self._sup.alarms.lower(activation, _outbox_item(now))
        return activation.db.workflow.replay(ids, now)


def _outbox_item(due: float) -> PendingItem:
    return PendingItem(OUTBOX_ITEM, "outbox", None, due, 0)


