"""``self.S``: an actor's view of the rest of the system (stubs to other actors, its
recurring schedules).

``self.S.Customer("alice").notify("hi")`` calls another actor. The call is part of the
current turn's call chain (so a call back to this actor is admitted) and its deadline,
and this turn's writes are committed before it leaves (the output gate).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.stubs import NamespaceStub

from actors.schedules import Every

if TYPE_CHECKING:
    from runtime.alarms import ScheduleInfo
    from runtime.context import ActorContext


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

    def __getattr__(self, namespace: str) -> NamespaceStub:
        if namespace.startswith("_"):
            raise AttributeError(namespace)
        return self._ctx.supervisor.S[namespace]

    def __getitem__(self, namespace: str) -> NamespaceStub:
        return self._ctx.supervisor.S[namespace]

    def __repr__(self) -> str:
        return f"<S of {self._ctx.id}>"
