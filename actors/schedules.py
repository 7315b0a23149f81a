"""``self.S.every``: recurring schedules, in words, cron or the fluent forms.

All of these register the same kind of durable schedule (see ``dotdo.runtime.services.schedules`` for
every phrase understood)::

    self.S.every("0 9 * * 1", self.weekly_report)          # cron
    self.S.every("weekdays at 17:30", self.close_books)    # words
    self.S.every.monday.at("9am")(self.weekly_report)      # fluent
    self.S.every.hour(self.tick)
    self.S.every(15).minutes(self.poll)
    self.S.every.day.at("noon").do(self.lunch, tz="Europe/Paris")

A schedule is named after its method unless given ``name=``; registering the same name
again replaces it (the same schedule again changes nothing, so ``on_start`` is the place
to register them). Each call returns a ``ScheduleInfo`` with the next run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dotdo.runtime.services import schedules
from dotdo.runtime.core.errors import InvalidSchedule

if TYPE_CHECKING:
    from dotdo.runtime.services.alarm_info import ScheduleInfo
    from dotdo.runtime.core.context import ActorContext

_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_UNITS = ("seconds", "minutes", "hours", "days", "weeks")


class Every:
    """A schedule being described; call it with the method to run to register it."""

    __slots__ = ("_ctx", "_phrase", "_tz")

    def __init__(self, ctx: ActorContext, phrase: str = "", tz: str | None = None) -> None:
        self._ctx = ctx
        self._phrase = phrase
        self._tz = tz

    def __call__(self, what: Any = None, handler: Any = None, *, name: str | None = None, tz: str | None = None) -> Any:
        """``every("phrase", handler)`` registers; ``every("phrase")`` and ``every(15)``
        describe; ``every.monday.at("9am")(handler)`` registers the described one."""
        if not self._phrase:
            if isinstance(what, bool) or not isinstance(what, str | int):
                raise InvalidSchedule(f"every() takes a schedule phrase or a count, got {what!r}")
            if isinstance(what, int):
                if handler is not None:
                    raise InvalidSchedule(f"every({what}) needs a unit: every({what}).minutes(handler)")
                return _Count(self._ctx, what, tz)
            described = Every(self._ctx, what, tz)
            return described if handler is None else described.do(handler, name=name)
        if handler is not None:
            raise InvalidSchedule(f"the schedule {self._phrase!r} is already described; pass only the method")
        return self.do(what, name=name, tz=tz)

    def do(self, handler: Any, *, name: str | None = None, tz: str | None = None) -> ScheduleInfo:
        """Register the described schedule to run ``handler`` (a method of this actor,
        or its name)."""
        if not self._phrase:
            raise InvalidSchedule("describe the schedule first: every('daily at 6am').do(handler)")
        schedule = schedules.parse(self._phrase, tz or self._tz or "UTC")
        ctx = self._ctx
        return ctx.supervisor.alarms.add_schedule(ctx, schedule, handler, name)

    def at(self, time: str) -> Every:
        """At a time of day: ``every.monday.at("9am")``, ``every.day.at("17:30")``."""
        if not isinstance(time, str):
            raise InvalidSchedule(f"at() takes a time such as '9am' or '17:30', got {time!r}")
        if not self._phrase:
            return Every(self._ctx, f"at {time}", self._tz)
        return Every(self._ctx, f"{self._phrase} at {time}", self._tz)

    def _then(self, phrase: str) -> Every:
        if self._phrase:
            raise InvalidSchedule(f"cannot add {phrase!r} to the schedule {self._phrase!r}")
        return Every(self._ctx, phrase, self._tz)

    def __getattr__(self, word: str) -> Every:
        if word.startswith("_"):
            raise AttributeError(word)
        if word in _DAYS:
            return self._then(word)
        if word in ("day", "weekday", "weekend", "hour", "minute", "week", "month"):
            return self._then({"day": "daily", "weekday": "weekdays", "weekend": "weekends"}.get(word, f"every {word}"))
        raise AttributeError(f"every.{word}: use a day (every.monday), day, weekday, weekend, hour, minute, week or month")

    def __repr__(self) -> str:
        return f"<every {self._phrase!r}>" if self._phrase else "<every>"


class _Count:
    """``every(15)``, waiting for its unit: ``.minutes``."""

    __slots__ = ("_ctx", "_count", "_tz")

    def __init__(self, ctx: ActorContext, count: int, tz: str | None) -> None:
        self._ctx = ctx
        self._count = count
        self._tz = tz

    def __getattr__(self, unit: str) -> Every:
        if unit not in _UNITS:
            raise AttributeError(f"every({self._count}).{unit}: the unit is one of {', '.join(_UNITS)}")
        return Every(self._ctx, f"every {self._count} {unit}", self._tz)
