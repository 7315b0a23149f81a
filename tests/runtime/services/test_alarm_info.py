import datetime as dt
import math

import pytest

from dotdo.runtime.services.alarm_info import schedule_info, to_epoch, utc
from dotdo.storage.alarms import ScheduleRow
from dotdo.storage.errors import InvalidInput


def test_alarm_times_in_every_form() -> None:
    when = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    assert to_epoch(when, now=0.0) == when.timestamp()
    assert to_epoch(dt.timedelta(seconds=10), now=100.0) == 110.0
    assert to_epoch(5, now=100.0) == 5.0 and to_epoch(2.5, now=0.0) == 2.5


@pytest.mark.parametrize("bad", [dt.datetime(2030, 1, 1), "tomorrow", True, None, [1], math.nan, math.inf, 1e300])
def test_unusable_alarm_times_are_refused(bad: object) -> None:
    with pytest.raises(InvalidInput, match="naive" if isinstance(bad, dt.datetime) else "alarm time"):
        to_epoch(bad, now=0.0)


def test_times_are_told_in_aware_utc() -> None:
    assert utc(0.0) == dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def test_a_schedule_is_listed_from_its_row() -> None:
    row = ScheduleRow(name="daily", phrase="daily at 6am", spec="0 6 * * *", tz="UTC", method="tick",
                      next_run=86400.0 + 6 * 3600, last_run=None, runs=0, failures=0, last_error=None, created_at=0.0)
    info = schedule_info(row)
    assert (info.name, info.phrase, info.method, info.tz) == ("daily", "daily at 6am", "tick", "UTC")
    assert info.next_run == dt.datetime(1970, 1, 2, 6, tzinfo=dt.timezone.utc) and info.last_run is None
