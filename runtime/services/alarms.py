"""Durable alarms and recurring schedules: setting them inside turns, firing them later.

Each actor has one alarm and any number of schedules, stored in its own database
(``dotdo.storage.alarms``) and written in the turn that sets them. The supervisor's
``AlarmService`` keeps the alarm index (``dotdo.storage.alarm_index``) in step and runs one
scheduler task that sleeps until the earliest entry is due, then hands due actors to a
small pool of delivery tasks. Nothing else waits: 100,000 pending alarms are 100,000 index
rows, one sleeping task and ``alarm_concurrency`` idle workers.

A delivery is a turn of its own on the actor (activating it if it was passivated): it
reads what is due from the actor's database (the truth; a stale index entry finds
nothing and is corrected) and runs either the alarm handler or one schedule's method.

Alarm delivery is at least once. A handler that raises is rolled back and retried with
exponential backoff (tenacity's ``wait_exponential_jitter``: 2 s, 4 s, 8 s ... plus up
to half the first wait of jitter), at most ``alarm_max_retries`` times, then abandoned and
recorded in ``_dotdo_alarm_failures``. ``delete_alarm()`` inside the handler stops the
retries even when the handler then raises. A schedule's method that raises is rolled
back, recorded, and the schedule moves on to its next time.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import tenacity
import trio

from dotdo.storage.alarm_index import AlarmIndex, IndexEntry
from dotdo.storage.alarms import ALARM_ITEM, AlarmRow, PendingItem, ScheduleRow
from dotdo.storage.deletion import Deleted, delete_all
from dotdo.storage.errors import DotdoError, InvalidInput, StorageError

from dotdo.runtime.services import schedules
from dotdo.runtime.services.alarm_info import AlarmInfo, ScheduleInfo, ScheduleRun, schedule_info, to_epoch, utc
from dotdo.runtime.core.activation import Activation
from dotdo.runtime.core.errors import CallTimeout, SupervisorClosed, Unavailable
from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.services.workflow import activation_of_turn, method_of, own_turn

if TYPE_CHECKING:
    from dotdo.storage.database import ActorDatabase

    from dotdo.runtime.core.context import ActorContext
    from dotdo.runtime.supervisor import Supervisor

log = logging.getLogger("dotdo.alarms")

BATCH = 256
"""Due index entries read per query."""
MAX_SLEEP = 60.0
"""The scheduler looks at the index at least this often (wall-clock jumps, other writers)."""
MAX_RUNS_PER_WAKE = 64
"""Items one delivery runs before it gives the actor back to the scheduler."""
ACTIVATION_RETRY = 30.0
"""Seconds before retrying an actor whose activation failed (on_start raised, locked)."""
UNAVAILABLE_RETRY = 0.5
"""Seconds before the first retry of an actor that was ``Unavailable`` here (its slot
moving or just taken over, its replicas not holding its commit yet): doubled at each
failure in a row, up to ``ACTIVATION_RETRY``."""
WORKFLOW = "workflow"
"""What ``_fire`` returns when the outbox or a step is due."""


def _takes_argument(fn: Callable[..., Any]) -> bool:
    """Whether a handler (unbound, self first) accepts one more positional argument."""
    try:
        params = list(inspect.signature(fn).parameters.values())[1:]
    except (TypeError, ValueError):
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.kind in positional or p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)


class AlarmState:
    """What the alarm service knows of one activation."""

    __slots__ = ("dirty", "running", "deleted", "indexed", "delivering")

    def __init__(self) -> None:
        self.dirty = False  # a turn changed the alarm or schedules: sync the index
        self.running: int | None = None  # seq of the alarm whose handler runs
        self.deleted = False  # delete_alarm() was called by the running handler
        # What the alarm index holds for this actor, item -> (due, retries), as far as
        # this activation knows (None: unknown). A due here is never earlier than the
        # index's, so "already early enough" checks against it are safe.
        self.indexed: dict[str, tuple[float, int]] | None = None
        self.delivering = False  # an alarm delivery runs turn after turn: sync at its end


class AlarmService:
    """The alarms of one supervisor. Created by it; ``run`` is its task."""

    def __init__(self, supervisor: Supervisor) -> None:
        config = supervisor.config
        self._sup = supervisor
        self.now: Callable[[], float] = config.clock
        self._index: AlarmIndex | None = None
        self._max_retries = config.alarm_max_retries
        self._wait = tenacity.wait_exponential_jitter(
            multiplier=config.alarm_retry_initial, exp_base=2, jitter=config.alarm_retry_initial / 2
        )
        self._stop = tenacity.stop_after_attempt(config.alarm_max_retries + 1)
        self._concurrency = config.alarm_concurrency
        self._inflight: set[tuple[str, str]] = set()
        self._unavailable: dict[tuple[str, str], int] = {}  # failures in a row, by actor
        self._states: dict[Activation, AlarmState] = {}
        hooks = supervisor.hooks
        hooks.turn_ended.append(self._turn_ended)
        hooks.reloaded.append(self._reloaded)
        hooks.closed.append(self._closed)
        self._wake = trio.Event()
        self._planned = math.inf
        self._arity: dict[Callable[..., Any], bool] = {}
        self.abandoned = 0

    # -- what it knows of each activation ----------------------------------------------

    def _state(self, activation: Activation) -> AlarmState:
        state = self._states.get(activation)
        if state is None:
            state = self._states[activation] = AlarmState()
        return state

    def _dirty(self, activation: Activation) -> AlarmState:
        """A turn changed the actor's alarm or schedules: sync the index when it ends."""
        state = self._state(activation)
        state.dirty = True
        activation.mark()
        return state

    def _turn_ended(self, activation: Activation) -> None:
        state = self._states.get(activation)
        if state is not None and state.dirty:
            self.sync(activation)

    def _reloaded(self, activation: Activation) -> None:
        self._state(activation).indexed = None
        self.sync(activation)

    def _closed(self, activation: Activation) -> None:
        self._states.pop(activation, None)

    # -- lifetime --------------------------------------------------------------------

    def open(self) -> None:
        """Open the index (before the supervisor takes calls)."""
        config = self._sup.config
        locator = self._sup.locator  # with other workers: this one wakes only the actors it owns
        serves = locator.serves if locator.partial else None
        read_only = config.storage.read_only
        self._index = AlarmIndex.open(config.data_dir, config.storage.durability, serves, read_only)
        # No step can still be running in a process that is only starting: wake every
        # actor with unfinished steps now rather than at the end of their lease.
        self._sup.steps.started = started = self.now()
        if not read_only:
            self._index.advance("steps", started)

    def close(self) -> None:
        """Close the index (after every activation is closed)."""
        if self._index is not None:
            self._index.close()
            self._index = None

    @property
    def index(self) -> AlarmIndex:
        if self._index is None:
            raise SupervisorClosed("the supervisor is not running (use `async with`)")
        return self._index

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The scheduler and its delivery workers; runs until cancelled. Over a
        read-only data directory nothing runs: a handler could not record its run."""
        if self._sup.config.storage.read_only:
            task_status.started()
            return
        send, receive = trio.open_memory_channel[IndexEntry](0)
        async with trio.open_nursery() as nursery:
            for _ in range(self._concurrency):
                nursery.start_soon(self._worker, receive.clone())
            receive.close()
            task_status.started()
            await self._schedule(send)

    async def _schedule(self, send: trio.MemorySendChannel[IndexEntry]) -> None:
        namespaces = tuple(self._sup.registry.namespaces)
        index = self.index
        inflight = self._inflight
        while not self._sup.closing:
            self._wake = trio.Event()
            now = self.now()
            dispatched = 0
            for entry in index.due(now, namespaces, len(inflight) + BATCH):
                key = (entry.namespace, entry.hex)
                if key in inflight:
                    continue
                inflight.add(key)
                await send.send(entry)
                dispatched += 1
            if dispatched:
                continue
            upcoming = index.next_after(now, namespaces)
            delay = MAX_SLEEP if upcoming is None else min(max(upcoming - now, 0.0), MAX_SLEEP)
            self._planned = now + delay
            with trio.move_on_after(delay):
                await self._wake.wait()
            self._planned = math.inf

    def _wake_for(self, due: float) -> None:
        if due < self._planned:
            self._wake.set()

    async def _worker(self, receive: trio.MemoryReceiveChannel[IndexEntry]) -> None:
        async with receive:
            async for entry in receive:
                key = (entry.namespace, entry.hex)
                try:
                    await self._deliver(entry)
                finally:
                    self._inflight.discard(key)
                    self._wake.set()

    async def _deliver(self, entry: IndexEntry) -> None:
        target = ActorId(entry.namespace, entry.hex, entry.name)
        sup = self._sup
        running: list[AlarmRow | ScheduleRow] = []  # what the current turn runs, once known
        try:
            for _ in range(MAX_RUNS_PER_WAKE):
                running.clear()
                try:
                    more = await sup.run_turn(target, functools.partial(self._fire, running))
                except CallTimeout:
                    if sup.closing:
                        return
                    if running:  # timed out in the handler, not on the way to it
                        await sup.run_turn(target, functools.partial(self._timed_out, running[0]))
                    continue
                if more is WORKFLOW:
                    await sup.events.deliver_round(target)
                    await sup.steps.resume_due(target)
                elif not more:
                    break
            self._unavailable.pop((entry.namespace, entry.hex), None)
        except SupervisorClosed:
            return
        except DotdoError as exc:
            if sup.closing:
                return
            delay = ACTIVATION_RETRY
            if isinstance(exc, Unavailable):  # placement's, passing: sooner, then backing off
                failures = self._unavailable[entry.namespace, entry.hex] = self._unavailable.get((entry.namespace, entry.hex), 0) + 1
                delay = min(ACTIVATION_RETRY, UNAVAILABLE_RETRY * 2 ** (failures - 1))
            log.warning("cannot deliver the alarm of %s: %s; trying again in %g s", target, exc, delay)
            activation = sup.activation_of(target)
            if activation is not None:
                self._state(activation).indexed = None  # postponing moves its entries later
            try:
                self.index.postpone(entry.namespace, entry.hex, self.now() + delay)
            except StorageError:
                log.exception("cannot postpone the alarm of %s", target)
        finally:
            activation = sup.activation_of(target)
            if activation is not None:
                self._state(activation).delivering = False  # the actor's next turn syncs the index

    # -- inside the delivery turn ----------------------------------------------------

    async def _fire(self, running: list[AlarmRow | ScheduleRow], instance: Any) -> bool | str:
        """Run the earliest due item of the actor (appended to ``running``); whether
        another is due after it (then the delivery runs another turn), or ``WORKFLOW``
        when what is due is the outbox or a step to resume (run outside this turn)."""
        activation = activation_of_turn()
        state = self._dirty(activation)
        alarms = activation.db.alarms
        now = self.now()
        item = alarms.next_due(now)
        if item is not None:
            # While this delivery runs, the entry that started it (due now or earlier)
            # stays in the index, so no write of this turn needs to lower it (lower).
            state.delivering = True
            running.append(item)
            if isinstance(item, AlarmRow):
                await self._run_alarm(activation, instance, item, now)
            else:
                await self._run_schedule(activation, instance, item, now)
            later = self.now()
            if alarms.due_at(later) or activation.db.workflow.due_at(later, self._sup.steps.started):
                return True
        elif activation.db.workflow.due_at(now, self._sup.steps.started):
            state.delivering = True
            return WORKFLOW
        # The delivery ends with this turn: rewrite the actor's entries at its end,
        # whatever this activation believes they are (the index said something was due).
        state.delivering = False
        state.indexed = None
        return False

    async def _timed_out(self, item: AlarmRow | ScheduleRow, instance: Any) -> bool:
        """Record that the run of ``item`` hit its deadline (its turn was rolled back)."""
        activation = activation_of_turn()
        self._dirty(activation)
        message = "the run did not finish within the call timeout"
        if isinstance(item, AlarmRow):
            self._alarm_failed(activation, item, "CallTimeout", message, self.now())
        else:
            self._schedule_failed(activation, item, "CallTimeout", message, self.now())
        return True

    async def _run_alarm(self, activation: Activation, instance: Any, row: AlarmRow, now: float) -> None:
        db = activation.db
        handler = activation.kind.alarm
        state = self._state(activation)
        state.running = row.seq
        state.deleted = False
        try:
            if handler is None:
                raise DotdoError(f"{activation.kind.namespace} has no alarm() handler")
            info = AlarmInfo(utc(row.scheduled), row.retry_count, row.retry_count > 0)
            await self._call(handler, instance, info)
        except Exception as exc:
            db.rollback()
            log.warning("the alarm of %s raised %s: %s", activation.label, type(exc).__name__, exc, exc_info=exc)
            self._alarm_failed(activation, row, type(exc).__name__, str(exc), now)
        else:
            db.alarms.delete(row.seq)
        finally:
            state.running = None

    def _alarm_failed(self, activation: Activation, row: AlarmRow, error_type: str, message: str, now: float) -> None:
        alarms = activation.db.alarms
        current = alarms.get()
        if current is None or current.seq != row.seq:
            return  # deleted or replaced (and committed) by the handler before it failed
        if self._state(activation).deleted:
            alarms.delete(row.seq)
            return
        attempts = row.retry_count + 1
        state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempts
        if self._stop(state):
            alarms.delete(row.seq)
            alarms.record_failure(ALARM_ITEM, row.scheduled, attempts, error_type, message)
            self.abandoned += 1
            log.error("the alarm of %s failed %d times and was abandoned: %s: %s", activation.label, attempts, error_type, message)
            return
        alarms.retry(row.seq, now + self._wait(state), attempts)

    async def _run_schedule(self, activation: Activation, instance: Any, row: ScheduleRow, now: float) -> None:
        db = activation.db
        method = getattr(type(instance), row.method, None)
        try:
            if method is None or not inspect.iscoroutinefunction(method):
                raise DotdoError(f"the schedule {row.name!r} runs {row.method}(), which is not an async method of {activation.kind.namespace}")
            await self._call(method, instance, ScheduleRun(row.name, row.phrase, utc(row.next_run)))
        except Exception as exc:
            db.rollback()
            log.warning("the schedule %r of %s raised %s: %s", row.name, activation.label, type(exc).__name__, exc, exc_info=exc)
            self._schedule_failed(activation, row, type(exc).__name__, str(exc), now)
        else:
            db.alarms.advance(row, self._next_run(row, now), now, None)

    def _schedule_failed(self, activation: Activation, row: ScheduleRow, error_type: str, message: str, now: float) -> None:
        alarms = activation.db.alarms
        if alarms.advance(row, self._next_run(row, now), now, f"{error_type}: {message}"):
            alarms.record_failure(row.name, row.next_run, 1, error_type, message)

    @staticmethod
    def _next_run(row: ScheduleRow, now: float) -> float:
        # Once for every missed period: the next run is the first one after now.
        return schedules.from_spec(row.phrase, row.spec, row.tz).next_after(max(now, row.next_run))

    async def _call(self, fn: Callable[..., Awaitable[Any]], instance: Any, info: object) -> None:
        takes = self._arity.get(fn)
        if takes is None:
            takes = self._arity[fn] = _takes_argument(fn)
        if takes:
            await fn(instance, info)
        else:
            await fn(instance)

    # -- the actor's API (called from its turns) -------------------------------------

    def _own(self, ctx: ActorContext) -> Activation:
        return own_turn(self._sup, ctx.id, "alarms and schedules")

    def set_alarm(self, ctx: ActorContext, when: object) -> dt.datetime:
        """Set the actor's alarm (replacing any); returns the time it was set for."""
        activation = self._own(ctx)
        if activation.kind.alarm is None:
            raise DotdoError(f"{activation.kind.namespace} has no alarm() handler: define `async def alarm(self, info)`")
        epoch = to_epoch(when, self.now())
        activation.db.alarms.set(epoch)
        self.lower(activation, PendingItem(ALARM_ITEM, "alarm", None, epoch, 0))
        return utc(epoch)

    def get_alarm(self, ctx: ActorContext) -> dt.datetime | None:
        """When the alarm will next run (UTC), or None: unset, or its handler is running."""
        activation = self._own(ctx)
        row = activation.db.alarms.get()
        if row is None or row.seq == self._state(activation).running:
            return None
        return utc(row.due)

    def delete_alarm(self, ctx: ActorContext) -> bool:
        """Delete the alarm (and stop its retries); whether one was set."""
        return self._deleting(ctx).db.alarms.delete()

    def delete_all(self, ctx: ActorContext) -> Deleted:
        """Delete everything the actor stored (``dotdo.storage.deletion``), its alarm and
        schedules with it; as ``delete_alarm`` does, inside ``alarm`` it stops the retries."""
        return delete_all(self._deleting(ctx).db)

    def _deleting(self, ctx: ActorContext) -> Activation:
        """The activation of a turn that deletes the alarm: the index follows at the
        turn's end, and a running handler is not retried."""
        activation = self._own(ctx)
        state = self._dirty(activation)
        if state.running is not None:
            state.deleted = True
        return activation

    def add_schedule(
        self, ctx: ActorContext, schedule: schedules.Schedule, handler: object, name: str | None = None
    ) -> ScheduleInfo:
        """Register (or update) a schedule running ``handler`` (a method of the actor, or
        its name); registering the same one again changes nothing. The schedule's name
        defaults to the method's name.

        Raises:
            InvalidInput: ``handler`` is not an async method of this actor, or ``name`` is
                not a usable name.
        """
        activation = self._own(ctx)
        method = method_of(activation, handler, "a schedule")
        name = method if name is None else name
        if not isinstance(name, str) or not name or len(name) > 200 or "\x00" in name:
            raise InvalidInput(f"a schedule name is 1 to 200 characters of text, got {name!r}")
        alarms = activation.db.alarms
        existing = alarms.schedule(name)
        if existing is not None and (existing.spec, existing.tz, existing.method) == (schedule.spec, schedule.tz, method):
            return schedule_info(existing)
        next_run = schedule.next_after(self.now())
        row = alarms.put_schedule(name, schedule.phrase, schedule.spec, schedule.tz, method, next_run)
        self.lower(activation, PendingItem(name, "schedule", schedule.phrase, next_run, 0))
        return schedule_info(row)

    def remove_schedule(self, ctx: ActorContext, name: str) -> bool:
        """Remove a schedule; whether it existed."""
        activation = self._own(ctx)
        self._dirty(activation)
        return activation.db.alarms.delete_schedule(name)

    def schedules(self, ctx: ActorContext) -> list[ScheduleInfo]:
        """The actor's schedules, by name."""
        activation = self._own(ctx)
        return [schedule_info(row) for row in activation.db.alarms.schedules()]

    def lower(self, activation: Activation, item: PendingItem) -> None:
        # The index first, committed before the turn's own commit (see dotdo.storage.alarm_index),
        # unless it already wakes the actor at least as early.
        state = self._dirty(activation)
        if state.delivering:
            return  # the index wakes the actor now already; the delivery's end rewrites it
        known = state.indexed
        if known is not None:
            entry = known.get(item.item)
            if entry is not None and entry[0] <= item.due:
                return
        self.index.lower(activation.id.namespace, activation.id.hex, activation.id.name, item)
        if known is not None:
            known[item.item] = (item.due, item.retries)
        self._wake_for(item.due)

    def sync(self, activation: Activation) -> None:
        """After the actor's turn ended: make its index entries match its database."""
        state = self._state(activation)
        if state.delivering:
            activation.mark()  # the delivery's end rewrites the entries; until then, stay dirty
            return
        state.dirty = False
        db = activation.db
        if db.closed or self._index is None:
            return
        try:
            items = db.alarms.pending()
            extra = db.workflow.pending()
            if extra:
                items = sorted(items + extra, key=lambda item: item.due)
            exact = {item.item: (item.due, item.retries) for item in items}
            if exact == state.indexed:
                return
            name = activation.id.name
            if name is None:
                stored = db.meta().get("name")
                name = stored if isinstance(stored, str) else None
            self._index.replace(activation.id.namespace, activation.id.hex, name, items)
            state.indexed = exact
        except StorageError:
            # Safe to skip: the index is never later than the truth (see lower).
            state.indexed = None
            log.exception("cannot update the alarm index for %s", activation.label)
            return
        if items:
            self._wake_for(items[0].due)

    def placement_changed(self) -> None:
        """What this process serves changed (a cluster's slots moved): look at the
        index again, since entries it skipped may now be its own."""
        self._wake.set()

    def reindex(self, actor: ActorId, db: ActorDatabase) -> None:
        """Make the index match the database of an actor that is not active here (a
        clone, a promoted thing, a shard, just written)."""
        if self._index is None:
            return
        items = sorted(db.alarms.pending() + db.workflow.pending(), key=lambda item: item.due)
        self._index.replace(actor.namespace, actor.hex, actor.name, items)
        if items:
            self._wake_for(items[0].due)

    def forget(self, actor: ActorId) -> None:
        """Drop the index entries of an actor whose database was deleted or left this
        data directory."""
        self._unavailable.pop((actor.namespace, actor.hex), None)
        if self._index is not None:
            self._index.replace(actor.namespace, actor.hex, actor.name, [])

    # -- administration --------------------------------------------------------------

    def pending(self, namespace: str | None = None, limit: int = 1000, after: tuple[str, str, str] | None = None) -> list[IndexEntry]:
        """Pending alarms and schedules by actor, from the index."""
        return self.index.entries(namespace, limit, after)
