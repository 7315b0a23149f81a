"""What alarm handlers and schedule listings are told, and the times they are told in.

``alarm(self, info)`` gets an ``AlarmInfo``; a scheduled method taking one argument gets
a ``ScheduleRun``; ``self.S.schedules()`` lists ``ScheduleInfo``. Times are aware UTC
datetimes (``utc``); an alarm may be set with a datetime, a timedelta or epoch seconds
(``to_epoch``).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from dotdo.storage.alarms import ScheduleRow
from dotdo.storage.errors import InvalidInput

_LATEST = dt.datetime(9999, 1, 1, tzinfo=dt.timezone.utc).timestamp()


@dataclass(frozen=True, slots=True)
class AlarmInfo:
    """What ``alarm(self, info)`` is told about the run.

    Attributes:
        scheduled_time: When the alarm was set for (UTC).
        retry_count: Failed runs of this alarm before this one.
        is_retry: Whether this run is a retry.
    """

    scheduled_time: dt.datetime
    retry_count: int
    is_retry: bool


@dataclass(frozen=True, slots=True)
class ScheduleRun:
    """What a scheduled method taking one argument is told about the run.

    Attributes:
        name: The schedule's name.
        phrase: Its schedule, as written.
        scheduled_time: When this run was due (UTC).
    """

    name: str
    phrase: str
    scheduled_time: dt.datetime


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """A schedule as listed by ``self.S.schedules()``."""

    name: str
    phrase: str
    method: str
    tz: str
    next_run: dt.datetime
    last_run: dt.datetime | None
    runs: int
    failures: int
    last_error: str | None


def to_epoch(when: object, now: float) -> float:
    """Epoch seconds from a timezone-aware datetime, a timedelta from now, or a number.

    Raises:
        InvalidInput: Anything else, a naive datetime, or a time not finite.
    """
    if isinstance(when, dt.datetime):
        if when.tzinfo is None:
            raise InvalidInput("the alarm time is a naive datetime: give it a timezone (datetime.now(timezone.utc) + ...)")
        value = when.timestamp()
    elif isinstance(when, dt.timedelta):
        value = now + when.total_seconds()
    elif isinstance(when, int | float) and not isinstance(when, bool):
        value = float(when)
    else:
        raise InvalidInput(f"an alarm time is a datetime, a timedelta or epoch seconds, got {type(when).__name__}")
    if not math.isfinite(value) or value > _LATEST:
        raise InvalidInput(f"the alarm time {when!r} is not a usable time")
    return value


def utc(epoch: float) -> dt.datetime:
    """An aware UTC datetime from epoch seconds."""
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc)


def schedule_info(row: ScheduleRow) -> ScheduleInfo:
    """The listing of a schedule's row."""
    return ScheduleInfo(
        name=row.name,
        phrase=row.phrase,
        method=row.method,
        tz=row.tz,
        next_run=utc(row.next_run),
        last_run=utc(row.last_run) if row.last_run is not None else None,
        runs=row.runs,
        failures=row.failures,
        last_error=row.last_error,
    )
