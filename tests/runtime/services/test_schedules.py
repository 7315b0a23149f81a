"""Schedule phrases to next run times (pure computation, fixed instants)."""

from __future__ import annotations

import datetime as dt

import pytest

from dotdo.runtime.core.errors import InvalidSchedule
from dotdo.runtime.services.schedules import parse


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp()


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@pytest.mark.parametrize(
    ("phrase", "now", "expected"),
    [
        # cron strings
        ("0 9 * * 1", "2026-11-23 10:00", "2026-11-30 09:00:00"),  # a Monday after 9: next week
        ("0 9 * * 1", "2026-11-23 08:59", "2026-11-23 09:00:00"),
        ("0 0 31 * *", "2026-02-10 00:00", "2026-03-31 00:00:00"),  # skips the short month
        ("0 0 29 2 *", "2026-03-01 00:00", "2028-02-29 00:00:00"),  # the next leap day
        ("@monthly", "2026-01-31 23:59", "2026-02-01 00:00:00"),
        ("@yearly", "2026-12-31 23:59:59", "2027-01-01 00:00:00"),
        # words
        ("daily at 6am", "2026-11-23 06:00", "2026-11-24 06:00:00"),  # strictly after
        ("daily at 6am", "2026-11-23 05:59:59", "2026-11-23 06:00:00"),
        ("every day at noon", "2026-02-28 13:00", "2026-03-01 12:00:00"),
        ("every day at noon", "2028-02-28 13:00", "2028-02-29 12:00:00"),  # leap year
        ("at midnight", "2026-12-31 23:00", "2027-01-01 00:00:00"),
        ("weekdays at 17:30", "2026-11-27 18:00", "2026-11-30 17:30:00"),  # Friday evening -> Monday
        ("weekends at 10am", "2026-11-23 00:00", "2026-11-28 10:00:00"),
        ("monday at 9am", "2026-11-29 09:00", "2026-11-30 09:00:00"),
        ("every friday at 5:30pm", "2026-11-23 00:00", "2026-11-27 17:30:00"),
        ("mon, wed and fri at 12am", "2026-11-24 00:00", "2026-11-25 00:00:00"),
        ("monthly", "2026-04-30 12:00", "2026-05-01 00:00:00"),
        ("every 15 minutes", "2026-11-23 10:07", "2026-11-23 10:15:00"),
        ("every 15 minutes", "2026-11-23 23:50", "2026-11-24 00:00:00"),
        ("every 7 minutes", "2026-11-23 00:00", "2026-11-23 00:01:00"),  # aligned to the epoch, not the day
        ("every 2 hours", "2026-11-23 23:10", "2026-11-24 00:00:00"),
        ("every 30 seconds", "2026-11-23 10:00:10", "2026-11-23 10:00:30"),
        ("every hour", "2026-02-28 23:30", "2026-03-01 00:00:00"),
        ("every minute", "2026-11-23 10:00:59", "2026-11-23 10:01:00"),
        ("hourly", "2026-11-23 10:00", "2026-11-23 11:00:00"),
    ],
)
def test_next_runs_in_utc(phrase: str, now: str, expected: str) -> None:
    assert iso(parse(phrase).next_after(at(now))) == expected


def test_time_zones_follow_the_local_clock() -> None:
    paris = parse("daily at 6am", tz="Europe/Paris")
    # Winter: UTC+1; summer: UTC+2 (DST starts 2026-03-29).
    assert iso(paris.next_after(at("2026-03-28 12:00"))) == "2026-03-29 04:00:00"
    assert iso(paris.next_after(at("2026-01-10 12:00"))) == "2026-01-11 05:00:00"
    assert paris.next_datetime(at("2026-01-10 12:00")).hour == 6


@pytest.mark.parametrize(
    ("phrase", "spec"),
    [
        ("0 9 * * 1", "cron:0 9 * * 1"),
        ("  Daily   AT 6AM ", "cron:0 6 * * *"),
        ("every 15 minutes", "cron:*/15 * * * *"),
        ("every 7 minutes", "every:420"),
        ("every 3 days", "every:259200"),
        ("weekdays at 17:30", "cron:30 17 * * 1-5"),
        ("mondays and thursdays at 8", "cron:0 8 * * 1,4"),
        ("every day at noon", "cron:0 12 * * *"),
        ("every week", "cron:0 0 * * 1"),
    ],
)
def test_canonical_specs(phrase: str, spec: str) -> None:
    assert parse(phrase).spec == spec


@pytest.mark.parametrize(
    "phrase",
    ["", "whenever", "daily at 25:00", "daily at 13pm", "every 0 minutes", "fooday at 9am", "61 * * * *", "every 5 parsecs", "every 500 days", "x" * 300],
)
def test_unparseable_phrases_raise_naming_the_phrase(phrase: str) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        parse(phrase)
    if phrase and len(phrase) < 200:
        assert repr(phrase) in str(caught.value)


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", None])
def test_unknown_time_zones(tz: object) -> None:
    with pytest.raises(InvalidSchedule, match="time zone"):
        parse("daily", tz=tz)  # type: ignore[arg-type]


def test_not_a_string() -> None:
    with pytest.raises(InvalidSchedule):
        parse(15)
