"""Schedule phrases: cron strings and a small natural language, to next run times.

Everything a user can write becomes one of two canonical specs, which is what is
stored and what next times are computed from:

- ``cron:<5-field expression>``: computed by croniter in the schedule's time zone, so
  "daily at 6am" in ``Europe/Paris`` follows Paris's clocks through DST changes.
- ``every:<seconds>``: a fixed interval aligned to the Unix epoch, not to the day (runs
  fall on multiples of the interval since 1970-01-01 00:00 UTC), for intervals that a
  cron expression cannot say (``every 7 minutes``, ``every 3 days``).

Accepted phrases (case and extra spaces do not matter)::

    0 9 * * 1          any 5-field cron expression; @hourly @daily @weekly @monthly @yearly
    every minute       every hour   every day   every week   hourly   daily   weekly   monthly
    every 15 minutes   every 2 hours   every 30 seconds   every 3 days
    daily at 6am       every day at noon   at 17:30   weekdays at 17:30   weekends at 10am
    monday at 9am      every friday at 5:30pm   mondays and thursdays at 8   mon, wed, fri at noon

Times: ``6am``, ``6:30 pm``, ``17:30``, ``9`` (on the hour), ``noon``, ``midnight``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from dotdo.runtime.core.errors import InvalidSchedule

_EXAMPLES = "a cron string ('0 9 * * 1'), 'every 15 minutes', 'daily at 6am', 'weekdays at 17:30' or 'monday at 9am'"

_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}  # fmt: skip

_DAYS = {
    "sunday": 0, "monday": 1, "tuesday": 2, "wednesday": 3, "thursday": 4, "friday": 5, "saturday": 6,
    "sun": 0, "mon": 1, "tue": 2, "tues": 2, "wed": 3, "thu": 4, "thur": 4, "thurs": 4, "fri": 5, "sat": 6,
}  # fmt: skip

_ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

_WORDS = {
    "every minute": "* * * * *",
    "every hour": "0 * * * *",
    "hourly": "0 * * * *",
    "every week": "0 0 * * 1",
    "weekly": "0 0 * * 1",
    "monthly": "0 0 1 * *",
    "every month": "0 0 1 * *",
}

_INTERVAL = re.compile(r"every (\d+) ?([a-z]+)\Z")
_TIME = re.compile(r"(\d{1,2})(?:[:.](\d{2}))? ?(am|pm)?\Z")
_CRON_MINUTES = re.compile(r"[0-9*/,\-]+\Z")
_CRON_FIELD = re.compile(r"(?:[0-9*/,\-?#lw]|[a-z]{3})+\Z")


@dataclass(frozen=True, slots=True)
class Schedule:
    """A parsed schedule.

    Attributes:
        phrase: What the user wrote.
        spec: The canonical form (``cron:...`` or ``every:<seconds>``).
        tz: The IANA time zone its times are in.
    """

    phrase: str
    spec: str
    tz: str = "UTC"

    def next_after(self, when: float) -> float:
        """The first run strictly after ``when`` (epoch seconds)."""
        kind, _, body = self.spec.partition(":")
        if kind == "every":
            interval = float(body)
            return (math.floor(when / interval) + 1) * interval
        start = dt.datetime.fromtimestamp(when, _zone(self.tz))
        return float(croniter(body, start).get_next(float))

    def next_datetime(self, when: float) -> dt.datetime:
        """``next_after`` as an aware datetime in the schedule's time zone."""
        return dt.datetime.fromtimestamp(self.next_after(when), _zone(self.tz))


def parse(phrase: object, tz: str = "UTC") -> Schedule:
    """Understand a schedule phrase (see the module docs for what is accepted).

    Raises:
        InvalidSchedule: The phrase or the time zone cannot be understood; the message
            names the phrase.
    """
    if not isinstance(phrase, str):
        raise InvalidSchedule(f"a schedule is a phrase or cron string, got {type(phrase).__name__}")
    _zone(tz)
    text = " ".join(phrase.lower().replace(",", " , ").split()).replace(" , ", ", ")
    if not text:
        raise InvalidSchedule(f"the schedule is empty: write {_EXAMPLES}")
    if len(text) > 200:
        raise InvalidSchedule(f"the schedule {phrase[:40]!r}... is too long (200 characters at most)")
    try:
        spec = _spec(text)
    except InvalidSchedule as exc:
        raise InvalidSchedule(f"cannot understand the schedule {phrase!r}: {exc}") from None
    return Schedule(phrase, spec, tz)


def from_spec(phrase: str, spec: str, tz: str) -> Schedule:
    """A schedule as stored (already canonical)."""
    return Schedule(phrase, spec, tz)


@lru_cache(maxsize=64)
def _zone(tz: object) -> ZoneInfo:
    if not isinstance(tz, str) or not tz:
        raise InvalidSchedule(f"a time zone is an IANA name such as 'UTC' or 'Europe/Paris', got {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(f"unknown time zone {tz!r}: use an IANA name such as 'UTC' or 'Europe/Paris'") from None


def _spec(text: str) -> str:
    if text in _ALIASES:
        return f"cron:{_ALIASES[text]}"
    if text in _WORDS:
        return f"cron:{_WORDS[text]}"
    fields = text.split(" ")
    if len(fields) == 5 and _CRON_MINUTES.match(fields[0]) and all(_CRON_FIELD.match(f) for f in fields):
        if not croniter.is_valid(text):
            raise InvalidSchedule("it looks like a cron expression, but is not a valid one")
        return f"cron:{text}"
    interval = _INTERVAL.match(text)
    if interval:
        return _interval(int(interval.group(1)), interval.group(2))
    if text.startswith("every ") and text[6:] in _UNITS:
        return _interval(1, text[6:])
    days, _, at = text.partition(" at ")
    if text.startswith("at "):
        days, at = "daily", text[3:]
    minute, hour = _time(at) if at else (0, 0)
    return f"cron:{minute} {hour} {_days(days)}"


def _interval(count: int, unit: str) -> str:
    seconds = _UNITS.get(unit)
    if seconds is None:
        raise InvalidSchedule(f"unknown unit {unit!r} (seconds, minutes, hours, days or weeks)")
    if count < 1:
        raise InvalidSchedule("an interval must be at least 1")
    total = count * seconds
    if total > 366 * 86400:
        raise InvalidSchedule("an interval must be at most a year")
    # Cron (which follows the time zone's clock) when it can say it exactly.
    if seconds == 60 and 60 % count == 0:
        return "cron:* * * * *" if count == 1 else f"cron:*/{count} * * * *"
    if seconds == 3600 and 24 % count == 0:
        return "cron:0 * * * *" if count == 1 else f"cron:0 */{count} * * *"
    if seconds == 86400 and count == 1:
        return "cron:0 0 * * *"
    if seconds == 604800 and count == 1:
        return "cron:0 0 * * 1"
    return f"every:{total}"


def _time(text: str) -> tuple[int, int]:
    text = text.strip()
    if text == "noon":
        return 0, 12
    if text == "midnight":
        return 0, 0
    match = _TIME.match(text)
    if not match:
        raise InvalidSchedule(f"cannot read the time {text!r} (write 6am, 6:30pm, 17:30, noon or midnight)")
    hour, minute, half = int(match.group(1)), int(match.group(2) or 0), match.group(3)
    if half is not None:
        if not 1 <= hour <= 12:
            raise InvalidSchedule(f"{text!r}: with am/pm the hour is 1 to 12")
        hour = hour % 12 + (12 if half == "pm" else 0)
    if hour > 23 or minute > 59:
        raise InvalidSchedule(f"{text!r} is not a time of day")
    return minute, hour


def _days(text: str) -> str:
    """The day-of-month, month and day-of-week fields for a days phrase."""
    text = text.removeprefix("every ").strip()
    if text in ("daily", "day", "days"):
        return "* * *"
    if text in ("weekday", "weekdays"):
        return "* * 1-5"
    if text in ("weekend", "weekends"):
        return "* * 0,6"
    if text in ("monthly", "month"):
        return "1 * *"
    if text in ("weekly", "week"):
        return "* * 1"
    names = [n for n in re.split(r"[ ,]+|\band\b", text) if n and n != "every"]
    if not names:
        raise InvalidSchedule(f"expected days before 'at' ({_EXAMPLES})")
    numbers = []
    for name in names:
        day = _DAYS.get(name.removesuffix("s") if name not in _DAYS else name)
        if day is None:
            raise InvalidSchedule(f"{name!r} is not a day; write {_EXAMPLES}")
        if day not in numbers:
            numbers.append(day)
    return "* * " + ",".join(str(n) for n in sorted(numbers))
