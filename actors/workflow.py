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

from dotdo.runtime.services.events import Sent
from dotdo.runtime.services.subscriptions import Subscribed
from dotdo.runtime.services.workflow import Retry, own_turn
from dotdo.runtime.stubs import NamespaceStub

from dotdo.actors.schedules import Every
from dotdo.actors.subscribe import On, on

if TYPE_CHECKING:
    from dotdo.runtime.services.alarm_info import ScheduleInfo
    from dotdo.runtime.core.context import ActorContext
    from dotdo.storage.outbox import DeadLetter, EventRow
    from dotdo.storage.steps import ActionRow
    from dotdo.storage.things import ThingStore


class Workflow:
    """The workflow context of one actor (``$`` in the TypeScript original)."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: ActorContext) -> None:
        self._ctx = ctx

    @property
    def every(self) -> Every:
        """Recurring schedules: ``self.S.every("daily at 6am", self.report)``, or
        ``self.S.every.monday.at("9am")(self.report)`` (see ``dotdo.actors.schedules``)."""
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
        (``dotdo.storage.things``): ``self.S.db.create("Customer", {...})``."""
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
        """Subscriptions: ``self.S.on.Customer.created(self.welcome)`` (see ``dotdo.actors.subscribe``)."""
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
        before the next; the last failure is recorded and raised. See ``dotdo.runtime.services.steps``.
        """
        ctx = self._ctx
        return await ctx.supervisor.steps.do(ctx.id, step, data, key=key, retry=retry, timeout=timeout)

    # -- lifecycle (dotdo.runtime.services.lifecycle): each runs inside this turn, after committing it ---

    async def _lifecycle(self, operation: str, **arguments: Any) -> Any:
        ctx = self._ctx
        sup = ctx.supervisor
        activation = own_turn(sup, ctx.id, operation)
        return await sup.lifecycle.run(activation, operation, arguments)

    async def clone(self, new_id: str, *, alarms: bool = True) -> dict[str, Any]:
        """Copy this actor's data (as committed so far) to the blank actor ``new_id`` (a
        name or an id) of the same kind; the copy is independent afterwards. With
        ``alarms=False`` the copy has no alarm and no schedules. Returns a report."""
        return await self._lifecycle("clone", new_id=new_id, alarms=alarms)  # type: ignore[no-any-return]

    async def compact(self, *, retention: float | None = None) -> dict[str, Any]:
        """Fold events and finished actions older than ``retention`` seconds (default:
        the server's, 7 days) into summary rows, vacuum, truncate the WAL. Returns the
        bytes before and after."""
        return await self._lifecycle("compact", retention=retention)  # type: ignore[no-any-return]

    async def branch(self, name: str) -> dict[str, Any]:
        """Fork the current state into the new branch ``name`` (``dotdo.storage.branches``)."""
        return await self._lifecycle("branch", name=name)  # type: ignore[no-any-return]

    async def checkout(self, name: str) -> dict[str, Any]:
        """Serve the branch ``name`` from now on; the actor is reloaded when this turn
        ends (a new instance, ``on_start`` again)."""
        return await self._lifecycle("checkout", name=name)  # type: ignore[no-any-return]

    async def merge(self, source: str, *, policy: str = "fail") -> dict[str, Any]:
        """Bring the changes of branch ``source`` since the fork into the current branch.
        ``policy``: ``fail`` (raise ``MergeConflict`` listing the rows, change nothing),
        ``source`` (its rows win) or ``current`` (ours stay)."""
        return await self._lifecycle("merge", source=source, policy=policy)  # type: ignore[no-any-return]

    async def branches(self) -> list[dict[str, Any]]:
        """Every branch: name, whether current, parent, creation time, size."""
        return await self._lifecycle("branches")  # type: ignore[no-any-return]

    async def delete_branch(self, name: str) -> dict[str, Any]:
        """Delete a branch (not the current one)."""
        return await self._lifecycle("delete_branch", name=name)  # type: ignore[no-any-return]

    async def diff(self, a: str, b: str | None = None) -> dict[str, Any]:
        """Rows inserted, updated and deleted per table from branch ``a`` to ``b``
        (default: the current branch)."""
        return await self._lifecycle("diff", a=a, b=b)  # type: ignore[no-any-return]

    async def bookmark(self, at: float | dt.datetime | None = None) -> str:
        """A bookmark of the current state, or of the state at ``at`` (epoch seconds or
        an aware datetime) within the history's retention window."""
        if isinstance(at, dt.datetime):
            at = at.timestamp()
        result = await self._lifecycle("bookmark", at=at)
        return result["bookmark"]  # type: ignore[no-any-return]

    async def restore(self, bookmark: str) -> str:
        """Replace this actor's data with its state at ``bookmark``; returns the undo
        bookmark (restoring to it undoes this). The actor is reloaded when this turn
        ends."""
        result = await self._lifecycle("restore", bookmark=bookmark)
        return result["undo"]  # type: ignore[no-any-return]

    async def promote(self, thing_id: str) -> Any:
        """Make the thing ``thing_id`` of ``self.S.db`` an actor of its own (the kind
        named by its ``$type``), taking its data and relationships; returns its stub."""
        result = await self._lifecycle("promote", thing_id=thing_id)
        return self._ctx.supervisor.S[result["namespace"]](result["name"])

    async def shard(self, n: int, *, key: str = "$id") -> dict[str, Any]:
        """Split this actor's things and keyed tables over ``n`` shard actors by a hash
        of ``key``; this address becomes their router (``dotdo.runtime.services.sharding``). On a
        router, reshards to ``n`` (``n=1``: back into this actor)."""
        return await self._lifecycle("shard", n=n, key=key)  # type: ignore[no-any-return]

    async def unshard(self) -> dict[str, Any]:
        """Bring every shard's rows back into this actor (``shard(1)``)."""
        return await self._lifecycle("shard", n=1)  # type: ignore[no-any-return]

    def __getattr__(self, namespace: str) -> NamespaceStub:
        if namespace.startswith("_"):
            raise AttributeError(namespace)
        return self._ctx.supervisor.S[namespace]

    def __getitem__(self, namespace: str) -> NamespaceStub:
        return self._ctx.supervisor.S[namespace]

    def __repr__(self) -> str:
        return f"<S of {self._ctx.id}>"
