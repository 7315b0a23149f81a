"""``self.S``: an actor's view of the rest of the system: stubs to other actors, its
recurring schedules, events (``send``, ``on``), steps (``try_``, ``do``) and its
semantic stores (``db``).

``self.S.Customer("alice").notify("hi")`` calls another actor. The call is part of the
current turn's call chain (so a call back to this actor is admitted) and its deadline,
and this turn's writes are committed before it leaves (the output gate).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from runtime.events import Sent
from runtime.subscriptions import Subscribed
from runtime.workflow import Retry
from runtime.stubs import NamespaceStub

from actors.schedules import Every
from actors.subscribe import On, on

if TYPE_CHECKING:
    from runtime.alarms import ScheduleInfo
    from runtime.context import ActorContext
    from storage.things import ThingStore
    from storage.workflow import ActionRow, DeadLetter, EventRow


class Workflow:
    """The workflow context of one actor (``$`` in the TypeScript original)."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: ActorContext) -> None:
        self._ctx = ctx

    @property
    def every(self) -> Every:
        """Recurring schedules: ``self.S.every("daily at 6am", self.report)``, or
        ``self.S.every.monday.at("9am")(self.report)`` (see ``actors.schedules``)."""
        return Every(self._ctx)

    def schedules(self) -> list[ScheduleInfo]:
        """This actor's schedules, by name, with their next and last runs."""
        ctx = self._ctx
        return ctx.supervisor.alarms.schedules(ctx)

    def unschedule(self, name: str) -> bool:
        """Remove the schedule ``name`` (by default a schedule is named after its
        method); whether there was one."""
        ctx = self._ctx
        return ctx.supervisor.alarms.remove_schedule(ctx, name)

    # -- the semantic stores -----------------------------------------------------------

    @property
    def db(self) -> ThingStore:
        """Things, relationships, full-text and vector search, in this actor's database
        (``storage.things``): ``self.S.db.create("Customer", {...})``."""
        return self._ctx.db.things

    # -- events ----------------------------------------------------------------------

    def send(
        self,
        event: str,
        data: Any = None,
        *,
        priority: int = 0,
        delay: float | dt.timedelta | None = None,
        retry: Retry | None = None,
        trace_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Sent:
        """Send the event ``event`` (``"Noun.verb"``) with ``data`` to its subscribers.

        Fire-and-forget for the caller, durable underneath: the event is written with
        this turn's commit (a turn that fails sends nothing) and delivered after it, at
        least once, to every actor subscribed to the path at the time of sending; each
        receiver runs its handler once per event (deliveries are de-duplicated).

        Args:
            event: ``Noun.verb``, two names joined by a dot.
            data: What the handlers get as ``event.data`` (values that can travel).
            priority: Among this actor's pending deliveries, higher goes first
                (-1000 to 1000).
            delay: Seconds (or a timedelta) before delivery.
            retry: How failed deliveries are retried before they go to the dead
                letters (default: the server's, 5 tries from 1 s apart, doubling).
            trace_id: Ties events of one cause together (default: the trace of the event
                being handled, or a new one).
            correlation_id: Your own id to find related events by (default: the one of
                the event being handled).

        Returns:
            A ``Sent`` with the event's id and how many deliveries were queued
            (awaiting it is allowed and changes nothing).

        Raises:
            InvalidInput: A bad path, priority, delay or id; ``InvalidValue``: data that
                cannot travel. Nothing is sent then.
        """
        ctx = self._ctx
        return ctx.supervisor.events.send(
            ctx.id,
            event,
            data,
            priority=priority,
            delay=delay,
            retry=retry,
            trace_id=trace_id,
            correlation_id=correlation_id,
        )

    @property
    def on(self) -> On:
        """Subscriptions: ``self.S.on.Customer.created(self.welcome)`` (see ``actors.subscribe``)."""
        return on

    def off(self, event: str, handler: object = None) -> int:
        """Stop listening to ``event`` (a pattern as subscribed) with ``handler`` (a
        method or its name), or with every handler; how many subscriptions ended."""
        ctx = self._ctx
        return ctx.supervisor.subscriptions.unsubscribe(ctx.id, event, handler)

    def subscriptions(self) -> list[Subscribed]:
        """What this actor listens to."""
        ctx = self._ctx
        return ctx.supervisor.subscriptions.subscriptions(ctx.id)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Deliveries of this actor's events that were given up on, oldest first."""
        return self._ctx.db.workflow.dead_letters(limit)

    def replay(self, ids: list[int] | None = None) -> int:
        """Deliver dead letters again (all, or those with ``ids``), with fresh tries;
        how many were queued."""
        ctx = self._ctx
        return ctx.supervisor.events.replay(ctx.id, ids)

    def events(self, limit: int = 100, after: int = 0) -> list[EventRow]:
        """The events this actor sent, oldest first (page with ``after``, an event's id)."""
        return self._ctx.db.workflow.events(limit, after)

    def actions(self, limit: int = 100, after: int = 0, durability: str | None = None) -> list[ActionRow]:
        """The actions log (sends, tries, steps), oldest first."""
        return self._ctx.db.workflow.actions(limit, after, durability)

    # -- steps -----------------------------------------------------------------------

    async def try_(self, step: object, data: Any = None, *, timeout: float | None = None) -> Any:
        """Run ``step`` (a method of this actor, or its name) once with ``data``, under
        ``timeout`` seconds, recorded in the actions log. Its writes commit with it, or
        are rolled back when it raises (the error is recorded and raised).
        """
        ctx = self._ctx
        return await ctx.supervisor.steps.try_(ctx.id, step, data, timeout=timeout)

    async def do(
        self,
        step: object,
        data: Any = None,
        *,
        key: str | int | None = None,
        retry: Retry | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run ``step`` (a method of this actor, or its name) with ``data`` as a durable
        step: recorded before it runs, retried by ``retry`` (default: 3 tries), resumed
        after a crash, and never run again once completed: asking again for the same
        step (its name, and ``key`` when given) returns the recorded result.

        Each try runs under ``timeout`` seconds when given. A failed try is rolled back
        before the next; the last failure is recorded and raised. See ``runtime.steps``.
        """
        ctx = self._ctx
        return await ctx.supervisor.steps.do(ctx.id, step, data, key=key, retry=retry, timeout=timeout)

    def __getattr__(self, namespace: str) -> NamespaceStub:
        if namespace.startswith("_"):
            raise AttributeError(namespace)
        return self._ctx.supervisor.S[namespace]

    def __getitem__(self, namespace: str) -> NamespaceStub:
        return self._ctx.supervisor.S[namespace]

    def __repr__(self) -> str:
        return f"<S of {self._ctx.id}>"
