"""Events between actors: durable sends, subscriptions, delivery and de-duplication.

``self.S.send("Customer.created", data)`` writes the event to the sender's log and one
outbox row per subscriber, in the sending turn's own commit (``storage.workflow``): a
turn that rolls back sends nothing, and a committed send is never lost. Delivery runs
after the commit, driven by the alarm index (``runtime.alarms``): the outbox is one more
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
(``storage.subscriptions``), where senders look them up.
"""

from __future__ import annotations

import datetime as dt
import inspect
import itertools
import logging
import math
import re
import secrets
from collections.abc import Generator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack
import tenacity
import trio

from storage.errors import DotdoError, InvalidInput, StorageError
from storage.subscriptions import WILDCARD, Subscription, SubscriptionIndex
from storage.workflow import OUTBOX_ITEM, Delivery, RetryPolicy, SubscriptionRow, Target

from runtime import values
from runtime.context import current_turn, turn_of
from runtime.errors import ProtocolError
from runtime.ids import ActorId

if TYPE_CHECKING:
    from storage.alarms import PendingItem

    from runtime.activation import Activation
    from runtime.supervisor import Supervisor

log = logging.getLogger("dotdo.events")

EVENT_METHOD = "$event"
"""The system method a delivery travels as between worker processes."""
SUBSCRIBE_METHOD = "$subscribe"
"""The system method that subscribes an actor on its own worker."""
BATCH = 256
"""Outbox rows one delivery round takes."""
CHUNK = 64
"""Events one system call delivers to a receiver (each a step of one turn there)."""
SKIPPED = 1
"""A receiver's answer for an event it did not run (an earlier one of its path failed)."""
PARALLEL_RECEIVERS = 32
"""Receivers one round delivers to at once."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")


@dataclass(frozen=True, slots=True)
class Retry:
    """How a delivery (``send``) or a step (``do``) is retried.

    Attributes:
        attempts: Tries in all, the first included (1: no retry).
        initial: Seconds before the first retry; each retry waits twice the one before,
            plus up to half of ``initial`` of jitter.
        max_wait: The longest wait between two tries.
    """

    attempts: int = 5
    initial: float = 1.0
    max_wait: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or isinstance(self.attempts, bool) or not 1 <= self.attempts <= 1000:
            raise InvalidInput(f"Retry.attempts is a whole number from 1 to 1000, got {self.attempts!r}")
        for field_name in ("initial", "max_wait"):
            value = getattr(self, field_name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 86400 or math.isnan(value):
                raise InvalidInput(f"Retry.{field_name} is seconds from 0 to 86400, got {value!r}")

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.attempts, float(self.initial), float(self.max_wait))

    def wait(self, attempts_so_far: int) -> float:
        """Seconds to wait after ``attempts_so_far`` failed tries."""
        return backoff(self.policy, attempts_so_far)


def backoff(policy: RetryPolicy, attempts_so_far: int) -> float:
    """Seconds before the next try of ``policy`` after ``attempts_so_far`` failures."""
    wait = tenacity.wait_exponential_jitter(
        multiplier=policy.initial, max=policy.max_wait, exp_base=2, jitter=policy.initial / 2
    )
    state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    state.attempt_number = attempts_so_far
    return float(wait(state))


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


current_event: ContextVar[Event | None] = ContextVar("dotdo_current_event", default=None)


def parse_path(path: object, *, wildcards: bool = False) -> tuple[str, str]:
    """``"Noun.verb"`` as (noun, verb); with ``wildcards`` either part may be ``*``.

    Raises:
        InvalidInput: Not two names joined by a dot.
    """
    if isinstance(path, str):
        noun, dot, verb = path.partition(".")
        if dot and all(_NAME.fullmatch(part) or (wildcards and part == WILDCARD) for part in (noun, verb)):
            return noun, verb
    allowed = " (either may be *)" if wildcards else ""
    raise InvalidInput(f"an event path is Noun.verb: two names joined by a dot{allowed}, got {path!r}")


def _seconds(value: object, what: str) -> float:
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 10 * 365 * 86400:
        raise InvalidInput(f"{what} is seconds (or a timedelta) from 0 to ten years, got {value!r}")
    return float(value)


def _priority(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not -1000 <= value <= 1000:
        raise InvalidInput(f"a priority is a whole number from -1000 to 1000, got {value!r}")
    return value


def _optional_id(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise InvalidInput(f"{what} is text of 1 to 200 characters, got {value!r}")
    return value


def own_turn(supervisor: Supervisor, actor: ActorId, what: str) -> Activation:
    """The activation of ``actor`` if this task runs one of its turns.

    Raises:
        DotdoError: Called elsewhere.
    """
    turn = turn_of(supervisor)
    if turn is None or turn.activation.id != actor or turn.activation.instance is None:
        raise DotdoError(f"{what} of {actor} can only be used inside one of its own turns")
    return turn.activation


def method_of(activation: Activation, handler: object, what: str) -> str:
    """The name of ``handler``: a method of the actor (bound) or its name.

    Raises:
        InvalidInput: Not an async method of the actor's class.
    """
    if isinstance(handler, str):
        name = handler
    else:
        name = getattr(handler, "__name__", None)
        if getattr(handler, "__self__", None) is not activation.instance or not isinstance(name, str):
            raise InvalidInput(f"{what} runs a method of this actor (self.method or its name), got {handler!r}")
    fn = getattr(type(activation.instance), name, None)
    if fn is None or not inspect.iscoroutinefunction(fn):
        raise InvalidInput(f"{activation.kind.namespace}.{name} is not an async method: {what} cannot run it")
    return name


class EventService:
    """The events of one supervisor. Created by it."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor
        self._index: SubscriptionIndex | None = None
        config = supervisor.config
        self.default_retry = Retry(config.event_max_attempts, config.event_retry_initial, config.event_retry_max)
        self.delivered = 0
        self.dead = 0
        # Event ids: a random prefix per supervisor and a counter (unique, and cheaper
        # than fresh random bytes per event).
        self._uid_prefix = secrets.token_hex(8)
        self._uid_seq = itertools.count(1)
        self._refreshed_for: Any = None  # the turn in which the index was last re-read

    def open(self) -> None:
        config = self._sup.config
        self._index = SubscriptionIndex.open(config.data_dir, config.storage.durability)

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    @property
    def index(self) -> SubscriptionIndex:
        if self._index is None:
            from runtime.errors import SupervisorClosed

            raise SupervisorClosed("the supervisor is not running (use `async with`)")
        return self._index

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
        priority = _priority(priority)
        wait = 0.0 if delay is None else _seconds(delay, "delay")
        if retry is not None and not isinstance(retry, Retry):
            raise InvalidInput(f"retry is a dotdo.Retry, got {type(retry).__name__}")
        policy = (retry or self.default_retry).policy
        handling = current_event.get()
        trace_id = _optional_id(trace_id, "trace_id") or (handling.trace_id if handling else None) or secrets.token_hex(8)
        correlation_id = _optional_id(correlation_id, "correlation_id") or (handling.correlation_id if handling else None)
        packed = values.pack(data)
        # The index is re-read once per turn: a subscription acknowledged before the
        # turn began is seen by every send in it.
        turn = current_turn.get()
        refresh = turn is not self._refreshed_for
        self._refreshed_for = turn
        targets = [
            Target(s.namespace, s.hex, s.name, s.method, s.priority, s.timeout)
            for s in self.index.matching(noun, verb, refresh=refresh)
        ]
        now = self._sup.alarms.now()
        due = now + wait
        uid = f"{self._uid_prefix}{next(self._uid_seq):016x}"
        if targets:
            # The index first (committed now), so that a crash after the turn's commit
            # still finds the outbox (see storage.alarm_index).
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

    # -- subscriptions ---------------------------------------------------------------

    def subscribe(
        self, actor: ActorId, pattern: str, handler: object, *, priority: int = 0, timeout: float | None = None
    ) -> Subscribed:
        """Subscribe ``actor`` (whose turn this is) to ``pattern`` with ``handler``."""
        activation = own_turn(self._sup, actor, "subscriptions")
        noun, verb = parse_path(pattern, wildcards=True)
        method = method_of(activation, handler, "a subscription")
        row = SubscriptionRow(noun, verb, method, _priority(priority), None if timeout is None else _timeout(timeout))
        self._add(activation, row)
        return Subscribed(f"{noun}.{verb}", activation.id, method, row.priority, row.timeout)

    def _add(self, activation: Activation, row: SubscriptionRow) -> None:
        if activation.db.workflow.subscribe(row):
            # The shared index first, like the alarm index: an event sent from now on
            # finds the subscriber; the turn's end makes the index match the truth.
            self.index.add(_entry(activation.id, row))
            activation.subscribed = None
            activation.subscriptions_dirty = True

    def unsubscribe(self, actor: ActorId, pattern: str, handler: object = None) -> int:
        """Remove ``actor``'s subscriptions to ``pattern`` (of ``handler``, or all)."""
        activation = own_turn(self._sup, actor, "subscriptions")
        noun, verb = parse_path(pattern, wildcards=True)
        method = None if handler is None else method_of(activation, handler, "a subscription")
        removed = activation.db.workflow.unsubscribe(noun, verb, method)
        if removed:
            activation.subscribed = None
            activation.subscriptions_dirty = True
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
        payload = msgpack.packb([pattern, method, _priority(priority), None if timeout is None else _timeout(timeout)])
        raw = await self._sup.system_call(target, SUBSCRIBE_METHOD, payload)
        pattern, method, priority, timeout = msgpack.unpackb(raw)
        return Subscribed(pattern, target, method, priority, timeout)

    async def _subscribe_here(self, instance: Any, payload: bytes) -> bytes:
        """The turn that runs ``subscribe_remote`` on the subscriber."""
        pattern, method, priority, timeout = _fields(payload, 4)
        activation = _activation()
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

    def sync_subscriptions(self, activation: Activation) -> None:
        """After a turn that changed subscriptions: the index says what the actor's
        table says."""
        activation.subscriptions_dirty = False
        db = activation.db
        if db.closed:
            return
        try:
            rows = db.workflow.subscriptions()
            self.index.replace(activation.id.namespace, activation.id.hex, [_entry(activation.id, r) for r in rows])
        except StorageError:
            log.exception("cannot update the subscription index for %s", activation.label)

    def _listens(self, activation: Activation, noun: str, verb: str, method: str) -> bool:
        subscribed = activation.subscribed
        if subscribed is None:
            subscribed = activation.subscribed = {(r.noun, r.verb, r.method) for r in activation.db.workflow.subscriptions()}
        return any(
            (n, v, method) in subscribed for n in (noun, WILDCARD) for v in (verb, WILDCARD)
        )

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
        activation = _activation()
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
        workflow = _activation().db.workflow
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
        namespace, hex_id, name, low, items = _fields(envelope, 5)
        activation = _activation()
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
                    if self._listens(activation, noun, verb, method) and workflow.accept(sender, seq, low):
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
        """A system call's turn: a delivery or a subscription."""
        if method == EVENT_METHOD:
            return await self.receive(instance, payload)
        if method == SUBSCRIBE_METHOD:
            return await self._subscribe_here(instance, payload)
        raise ProtocolError(f"unknown system method {method!r}")

    # -- dead letters ----------------------------------------------------------------

    def replay(self, actor: ActorId, ids: list[int] | None = None) -> int:
        """Queue ``actor``'s dead letters again (inside its turn)."""
        activation = own_turn(self._sup, actor, "dead letters")
        now = self._sup.alarms.now()
        self._sup.alarms.lower(activation, _outbox_item(now))
        return activation.db.workflow.replay(ids, now)


def _timeout(value: object) -> float:
    seconds = _seconds(value, "a timeout")
    if seconds <= 0:
        raise InvalidInput(f"a timeout is more than 0 seconds, got {value!r}")
    return seconds


def _outbox_item(due: float) -> PendingItem:
    from storage.alarms import PendingItem

    return PendingItem(OUTBOX_ITEM, "outbox", None, due, 0)


def _entry(actor: ActorId, row: SubscriptionRow) -> Subscription:
    return Subscription(row.noun, row.verb, actor.namespace, actor.hex, actor.name, row.method, row.priority, row.timeout)


def _fields(payload: bytes, count: int) -> list[Any]:
    try:
        fields = msgpack.unpackb(payload)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"a system call's payload is not msgpack: {exc}") from None
    if not isinstance(fields, list) or len(fields) != count:
        raise ProtocolError(f"a system call's payload must be a list of {count}")
    return fields


def _activation() -> Activation:
    turn = current_turn.get()
    assert turn is not None
    return turn.activation

