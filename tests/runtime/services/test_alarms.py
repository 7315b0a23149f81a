"""Durable alarms and schedules, through a real supervisor driven by trio's MockClock.

The supervisor's wall clock follows trio's clock (``clock=``), so with ``autojump_clock`` (every
test takes it) a test sleeps through hours of backoff in no real time, and every time is exact.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from dotdo import DO, ActorError, DotdoError, InvalidInput, InvalidSchedule
from dotdo.runtime.core.ids import ActorId, id_from_name
from dotdo.runtime.placement.locator import MOVING, Locator, Owner
from dotdo.runtime.supervisor import Supervisor
from dotdo.storage.alarms import PendingItem

T0 = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.timezone.utc).timestamp()


def mock_wall_clock() -> float:
    return T0 + trio.current_time()


FAST = {"alarm_retry_initial": 0.05, "alarm_max_retries": 3, "clock": mock_wall_clock}


class Clock(DO):
    """Records every alarm run in its KV store."""

    async def arm(self, seconds_from_now: float) -> str:
        return self.set_alarm(mock_wall_clock() + seconds_from_now).isoformat()

    async def arm_at(self, when: Any) -> None:
        self.set_alarm(when)

    async def arm_then_fail(self, seconds_from_now: float) -> None:
        self.set_alarm(mock_wall_clock() + seconds_from_now)
        raise ValueError("changed my mind")

    async def disarm(self) -> bool:
        return self.delete_alarm()

    async def alarm_time(self) -> float | None:
        when = self.get_alarm()
        return None if when is None else when.timestamp()

    async def plan(self, failures: int, delete_on_failure: bool = False, sleep: float = 0.0) -> None:
        self.storage.put("plan", {"failures": failures, "delete": delete_on_failure, "sleep": sleep})

    async def runs(self) -> list[dict[str, Any]]:
        return self.storage.get("runs") or []

    async def alarm(self, info: Any) -> None:
        runs = self.storage.get("runs") or []
        runs.append(
            {
                "at": mock_wall_clock(),
                "scheduled": info.scheduled_time.timestamp(),
                "retry_count": info.retry_count,
                "is_retry": info.is_retry,
                "seen_alarm": self.get_alarm() is not None,
            }
        )
        self.storage.put("runs", runs)
        plan = self.storage.get("plan") or {"failures": 0, "delete": False, "sleep": 0.0}
        if plan["sleep"]:
            await trio.sleep(plan["sleep"])
        if len(runs) <= plan["failures"]:
            # The runs list is rolled back with the failure: keep the count elsewhere.
            if plan["delete"]:
                self.delete_alarm()
            raise RuntimeError(f"failure {len(runs)}")


class Counted(Clock):
    """Like Clock, but keeps its run log outside the rolled-back turn (in memory)."""

    log: list[dict[str, Any]]

    def __init__(self) -> None:
        self.log = []

    async def memory(self) -> list[dict[str, Any]]:
        return self.log

    async def alarm(self, info: Any) -> None:
        self.log.append({"at": mock_wall_clock(), "retry_count": info.retry_count, "is_retry": info.is_retry})
        plan = self.storage.get("plan") or {"failures": 0, "delete": False, "sleep": 0.0}
        if plan["sleep"] and len(self.log) == 1:
            await trio.sleep(plan["sleep"])
        if len(self.log) <= plan["failures"]:
            if plan["delete"]:
                self.delete_alarm()
            raise RuntimeError(f"failure {len(self.log)}")


class Ticker(DO):
    """Schedules."""

    async def on_start(self) -> None:
        if self.storage.get("auto"):
            self.S.every("every 1 seconds", self.tick)

    async def start(self, phrase: str, tz: str = "UTC", name: str | None = None) -> dict[str, Any]:
        info = self.S.every(phrase, self.tick, name=name, tz=tz)
        return {"name": info.name, "next": info.next_run.timestamp(), "phrase": info.phrase}

    async def fluent(self, form: str) -> str:
        every = self.S.every
        made = {
            "monday": lambda: every.monday.at("9am")(self.tick),
            "hour": lambda: every.hour(self.tick),
            "minute": lambda: every.minute.do(self.tick),
            "noon": lambda: every.day.at("noon")(self.tick),
            "count": lambda: every(15).minutes(self.tick),
            "described": lambda: every("weekdays at 17:30")(self.tick),
        }[form]()
        return made.phrase

    async def auto(self) -> None:
        self.storage.put("auto", True)

    async def stop(self, name: str) -> bool:
        return self.S.unschedule(name)

    async def listing(self) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "phrase": s.phrase, "runs": s.runs, "failures": s.failures, "last_error": s.last_error}
            for s in self.S.schedules()
        ]

    async def tick(self, run: Any) -> None:
        ticks = self.storage.get("ticks") or []
        ticks.append({"at": mock_wall_clock(), "due": run.scheduled_time.timestamp(), "name": run.name})
        self.storage.put("ticks", ticks)
        if self.storage.get("explode"):
            raise ValueError("tick exploded")

    async def explode(self) -> None:
        self.storage.put("explode", True)

    async def ticks(self) -> list[dict[str, Any]]:
        return self.storage.get("ticks") or []

    async def pretend_missed(self, name: str, days: int) -> None:
        # As if the server had been down for ``days``: the schedule was due long ago.
        past = mock_wall_clock() - days * 86400
        self._dotdo_ctx.db.connection.execute("UPDATE _dotdo_schedules SET next_run = ? WHERE name = ?", (past, name))
        self._dotdo_ctx.supervisor.alarms.index.lower(
            self.id.namespace, self.id.hex, self.id.name, PendingItem(name, "schedule", "", past, 0)
        )

    async def schedule_sync(self, phrase: str) -> None:
        self.S.every(phrase, self.not_async)

    def not_async(self) -> None:
        pass


class NoHandler(DO):
    async def arm(self) -> None:
        self.set_alarm(mock_wall_clock())


KINDS = [Clock, Counted, Ticker, NoHandler]


@pytest.fixture
async def sup(tmp_path: Path) -> AsyncIterator[Supervisor]:
    async with Supervisor(KINDS, tmp_path, **FAST) as supervisor:
        yield supervisor


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll an async check until it returns something truthy."""
    with trio.fail_after(timeout):
        while True:
            result = await check()
            if result:
                return result
            await trio.sleep(0.01)


# -- alarms ----------------------------------------------------------------------------


async def test_an_alarm_in_the_past_fires_at_once_and_is_cleared(autojump_clock: MockClock, sup: Supervisor) -> None:
    clock = sup.S.Clock("a")
    await clock.arm(-10)
    runs = await eventually(clock.runs)
    assert len(runs) == 1
    assert runs[0]["retry_count"] == 0 and runs[0]["is_retry"] is False
    assert runs[0]["seen_alarm"] is False  # get_alarm() is None while the handler runs
    assert await clock.alarm_time() is None
    await trio.sleep(0.1)
    assert len(await clock.runs()) == 1


async def test_a_future_alarm_fires_on_time_not_before(autojump_clock: MockClock, sup: Supervisor) -> None:
    clock = sup.S.Clock("a")
    start = mock_wall_clock()
    await clock.arm(0.3)
    assert await clock.alarm_time() == pytest.approx(start + 0.3, abs=0.05)
    await trio.sleep(0.15)
    assert await clock.runs() == []
    runs = await eventually(clock.runs)
    assert runs[0]["at"] >= runs[0]["scheduled"]
    assert runs[0]["at"] - runs[0]["scheduled"] < 1.0


async def test_setting_again_replaces_the_alarm(autojump_clock: MockClock, sup: Supervisor) -> None:
    clock = sup.S.Clock("a")
    await clock.arm(0.1)
    await clock.arm(0.4)
    await trio.sleep(0.25)
    assert await clock.runs() == []
    runs = await eventually(clock.runs)
    await trio.sleep(0.2)
    assert len(await clock.runs()) == 1
    assert runs[0]["at"] >= runs[0]["scheduled"]


async def test_a_rolled_back_turn_leaves_the_alarm_as_it_was(autojump_clock: MockClock, sup: Supervisor) -> None:
    clock = sup.S.Clock("a")
    with pytest.raises(ActorError):
        await clock.arm_then_fail(0.05)
    assert await clock.alarm_time() is None
    await clock.arm(0.4)
    before = await clock.alarm_time()
    with pytest.raises(ActorError):
        await clock.arm_then_fail(0.05)
    assert await clock.alarm_time() == before
    await trio.sleep(0.2)
    assert await clock.runs() == []  # the rolled-back earlier time did not fire
    runs = await eventually(clock.runs)
    assert runs[0]["scheduled"] == pytest.approx(before)


async def test_delete_alarm_cancels_it(autojump_clock: MockClock, sup: Supervisor) -> None:
    clock = sup.S.Clock("a")
    await clock.arm(0.1)
    assert await clock.disarm() is True
    assert await clock.disarm() is False
    await trio.sleep(0.3)
    assert await clock.runs() == []
    assert sup.alarms.index.count() == 0


async def test_alarm_times_in_every_form(autojump_clock: MockClock, sup: Supervisor) -> None:
    clock = sup.S.Clock("a")
    soon = dt.datetime.fromtimestamp(mock_wall_clock(), dt.timezone.utc) + dt.timedelta(hours=1)
    await clock.arm_at(soon)
    assert await clock.alarm_time() == pytest.approx(soon.timestamp())
    await clock.arm_at(soon.timestamp() + 5)
    assert await clock.alarm_time() == pytest.approx(soon.timestamp() + 5)
    for bad in ["tomorrow", float("nan"), float("inf"), True, [1]]:
        with pytest.raises(InvalidInput):
            await clock.arm_at(bad)


async def test_a_failing_alarm_is_retried_with_growing_backoff(autojump_clock: MockClock, sup: Supervisor) -> None:
    counted = sup.S.Counted("a")
    await counted.plan(2)
    await counted.arm(0)
    log = await eventually(lambda: _at_least(counted.memory, 3))
    assert [r["retry_count"] for r in log] == [0, 1, 2]
    assert [r["is_retry"] for r in log] == [False, True, True]
    first, second = log[1]["at"] - log[0]["at"], log[2]["at"] - log[1]["at"]
    assert first >= 0.05 and second >= 0.1  # 0.05 s, then doubled (plus jitter)
    await trio.sleep(0.3)
    assert len(await counted.memory()) == 3
    assert await counted.alarm_time() is None


async def test_an_alarm_is_abandoned_after_the_last_retry_and_recorded(autojump_clock: MockClock, sup: Supervisor) -> None:
    counted = sup.S.Counted("a")
    await counted.plan(100)
    await counted.arm(0)
    log = await eventually(lambda: _at_least(counted.memory, 4), timeout=10)
    await trio.sleep(0.5)
    assert len(await counted.memory()) == 4  # the first run and 3 retries (alarm_max_retries=3)
    assert await counted.alarm_time() is None
    assert sup.alarms.abandoned == 1
    activation = sup.activation_of(counted.id)
    failures = list(activation.db.alarms.failures())
    assert len(failures) == 1 and failures[0].attempts == 4
    assert failures[0].error_type == "RuntimeError" and failures[0].message == "failure 4"
    assert log[0]["retry_count"] == 0


async def test_delete_alarm_inside_a_failing_handler_stops_retries(autojump_clock: MockClock, sup: Supervisor) -> None:
    counted = sup.S.Counted("a")
    await counted.plan(100, delete_on_failure=True)
    await counted.arm(0)
    await eventually(counted.memory)
    await trio.sleep(0.4)
    assert len(await counted.memory()) == 1
    assert await counted.alarm_time() is None


async def test_a_handler_past_its_deadline_is_retried(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path, call_timeout=0.1, **FAST) as sup:
        counted = sup.S.Counted("a")
        await counted.plan(0, sleep=1.0)  # the first run sleeps past the deadline
        await counted.arm(0)
        log = await eventually(lambda: _at_least(counted.memory, 2))
        assert [r["retry_count"] for r in log[:2]] == [0, 1]


async def test_alarms_fire_for_passivated_actors(autojump_clock: MockClock, sup: Supervisor) -> None:
    clock = sup.S.Clock("a")
    await clock.arm(0.2)
    assert sup.passivate(clock.id)
    assert not sup.is_active(clock.id)
    await trio.sleep(0.4)
    activation = sup.activation_of(clock.id)
    assert activation is not None  # activated by the alarm, not by a call
    assert len(await clock.runs()) == 1


async def test_alarms_survive_a_restart_and_late_ones_fire_on_start_up(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        await sup.S.Clock("due-while-down").arm(0.1)
        await sup.S.Clock("due-later").arm(0.6)
        await sup.S.Clock("cancelled").arm(0.1)
        await sup.S.Clock("cancelled").disarm()
    await trio.sleep(0.3)  # the server is down when the first one is due
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        started = mock_wall_clock()
        late = await eventually(sup.S.Clock("due-while-down").runs)
        assert late[0]["at"] - started < 0.5
        assert await sup.S.Clock("due-later").runs() == []
        assert len(await eventually(sup.S.Clock("due-later").runs)) == 1
        await trio.sleep(0.1)
        assert await sup.S.Clock("cancelled").runs() == []


async def test_a_stale_index_entry_does_not_fire_and_is_removed(autojump_clock: MockClock, sup: Supervisor) -> None:
    # What a crash between the index write and the actor's commit leaves behind.
    target = id_from_name("Clock", "ghost")
    sup.alarms.index.lower("Clock", target.hex, "ghost", PendingItem("", "alarm", None, mock_wall_clock() - 1, 0))
    sup.alarms._wake.set()
    with trio.fail_after(5):
        while sup.alarms.index.count():
            await trio.sleep(0.01)
    assert await sup.S.Clock("ghost").runs() == []


async def test_the_index_is_written_before_the_turn_commits(autojump_clock: MockClock, sup: Supervisor) -> None:
    clock = sup.S.Clock("a")
    await clock.arm(100)
    entries = sup.alarms.index.entries("Clock")
    assert [(e.item, e.kind) for e in entries] == [("", "alarm")]
    assert entries[0].due == pytest.approx(await clock.alarm_time())
    # Moving the alarm later keeps the index exact after the commit...
    await clock.arm(200)
    assert sup.alarms.index.entries("Clock")[0].due == pytest.approx(await clock.alarm_time())
    # ...and a rolled-back move leaves it at (or before) the committed time.
    with pytest.raises(ActorError):
        await clock.arm_then_fail(50)
    assert sup.alarms.index.entries("Clock")[0].due <= await clock.alarm_time() + 1e-5


async def test_alarm_api_errors(autojump_clock: MockClock, sup: Supervisor) -> None:
    with pytest.raises(DotdoError, match="no alarm"):
        await sup.S.NoHandler("a").arm()
    clock = sup.S.Clock("a")
    await clock.runs()
    instance = sup.activation_of(clock.id).instance
    with pytest.raises(DotdoError, match="inside one of its own turns"):
        instance.set_alarm(mock_wall_clock())


async def test_many_pending_alarms_need_no_tasks_or_open_databases(autojump_clock: MockClock, tmp_path: Path) -> None:
    count = 1000
    later = mock_wall_clock() + 3600
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        for i in range(count):
            await sup.S.Clock(f"c{i}").arm_at(later + i)
            sup.passivate(id_from_name("Clock", f"c{i}"))
        assert sup.alarms.index.count() == count
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        await trio.sleep(0.05)
        assert sup.statistics().active == 0  # start-up opened no actor database
        tasks = _tasks(trio.lowlevel.current_root_task())
        assert tasks < 100  # the scheduler and its fixed pool of workers, not one per alarm
        assert sup.alarms.index.count() == count
        first = sup.alarms.index.entries("Clock", limit=1)[0]
        assert first.due >= later


def _tasks(task: trio.lowlevel.Task) -> int:
    return 1 + sum(_tasks(child) for nursery in task.child_nurseries for child in nursery.child_tasks)


async def _at_least(check: Callable[[], Any], n: int) -> Any:
    result = await check()
    return result if len(result) >= n else None


# -- schedules -------------------------------------------------------------------------


async def test_a_schedule_runs_on_time_repeatedly(autojump_clock: MockClock, sup: Supervisor) -> None:
    ticker = sup.S.Ticker("a")
    started = await ticker.start("every 1 seconds")
    assert started["name"] == "tick"
    assert started["next"] == pytest.approx(int(mock_wall_clock()) + 1, abs=1)
    ticks = await eventually(lambda: _at_least(ticker.ticks, 2), timeout=4)
    assert ticks[1]["due"] - ticks[0]["due"] == pytest.approx(1.0)
    for tick in ticks:
        assert tick["at"] >= tick["due"] and tick["name"] == "tick"


async def test_registering_the_same_schedule_again_changes_nothing(autojump_clock: MockClock, sup: Supervisor) -> None:
    ticker = sup.S.Ticker("a")
    first = await ticker.start("daily at 6am")
    again = await ticker.start("daily at 6am")
    assert again == first
    moved = await ticker.start("daily at 7am")
    assert moved["next"] - first["next"] in (3600.0, 3600.0 - 86400)
    assert [s["phrase"] for s in await ticker.listing()] == ["daily at 7am"]
    entries = sup.alarms.index.entries("Ticker")
    assert len(entries) == 1 and entries[0].due == moved["next"] and entries[0].spec == "daily at 7am"


async def test_several_schedules_share_the_one_alarm_and_can_be_removed(autojump_clock: MockClock, sup: Supervisor) -> None:
    ticker = sup.S.Ticker("a")
    await ticker.start("daily at 6am", name="morning")
    await ticker.start("weekdays at 17:30", name="evening")
    assert [s["name"] for s in await ticker.listing()] == ["evening", "morning"]
    assert {e.item for e in sup.alarms.index.entries("Ticker")} == {"morning", "evening"}
    assert await ticker.stop("morning") is True
    assert await ticker.stop("morning") is False
    assert [e.item for e in sup.alarms.index.entries("Ticker")] == ["evening"]


async def test_time_zones_are_per_schedule(autojump_clock: MockClock, sup: Supervisor) -> None:
    ticker = sup.S.Ticker("a")
    utc_run = await ticker.start("daily at 6am", name="utc")
    tokyo_run = await ticker.start("daily at 6am", tz="Asia/Tokyo", name="tokyo")
    assert dt.datetime.fromtimestamp(utc_run["next"], dt.timezone.utc).hour == 6
    assert dt.datetime.fromtimestamp(tokyo_run["next"], dt.timezone.utc).hour == 21  # 06:00 JST
    with pytest.raises(InvalidSchedule, match="Mars/Base"):
        await ticker.start("daily", tz="Mars/Base")


async def test_a_missed_schedule_runs_once_on_start_up(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        ticker = sup.S.Ticker("a")
        await ticker.start("daily at 6am")
        await ticker.pretend_missed("tick", days=5)
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        ticker = sup.S.Ticker("a")
        ticks = await eventually(ticker.ticks)
        await trio.sleep(0.2)
        assert len(await ticker.ticks()) == 1  # not once per missed day
        entry = sup.alarms.index.entries("Ticker")[0]
        assert mock_wall_clock() < entry.due <= mock_wall_clock() + 86400
        assert ticks[0]["due"] < mock_wall_clock() - 4 * 86400


async def test_a_failing_scheduled_run_is_recorded_and_the_schedule_moves_on(autojump_clock: MockClock, sup: Supervisor) -> None:
    ticker = sup.S.Ticker("a")
    await ticker.start("daily at 6am")
    await ticker.explode()
    await ticker.pretend_missed("tick", days=1)
    sup.alarms._wake.set()
    with trio.fail_after(5):
        while not (await ticker.listing())[0]["failures"]:
            await trio.sleep(0.01)
    listing = (await ticker.listing())[0]
    assert listing["runs"] == 1 and listing["last_error"] == "ValueError: tick exploded"
    assert await ticker.ticks() == []  # the failed run was rolled back
    assert sup.alarms.index.entries("Ticker")[0].due > mock_wall_clock()


async def test_schedules_registered_in_on_start(autojump_clock: MockClock, sup: Supervisor) -> None:
    ticker = sup.S.Ticker("a")
    await ticker.auto()
    sup.passivate(ticker.id)
    assert [s["phrase"] for s in await ticker.listing()] == ["every 1 seconds"]
    assert [e.item for e in sup.alarms.index.entries("Ticker")] == ["tick"]


@pytest.mark.parametrize(
    ("form", "phrase"),
    [
        ("monday", "monday at 9am"),
        ("hour", "every hour"),
        ("minute", "every minute"),
        ("noon", "daily at noon"),
        ("count", "every 15 minutes"),
        ("described", "weekdays at 17:30"),
    ],
)
async def test_fluent_forms(autojump_clock: MockClock, sup: Supervisor, form: str, phrase: str) -> None:
    assert await sup.S.Ticker("a").fluent(form) == phrase


async def test_schedule_errors_name_the_phrase(autojump_clock: MockClock, sup: Supervisor) -> None:
    ticker = sup.S.Ticker("a")
    with pytest.raises(InvalidSchedule, match="'whenever you like'"):
        await ticker.start("whenever you like")
    with pytest.raises(InvalidInput, match="not an async method"):
        await ticker.schedule_sync("hourly")
    assert await ticker.listing() == []


async def test_default_policy_backs_off_from_2_s_doubling_and_stops_after_6_retries(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    # Kept active throughout (idle passivation would reset the in-memory log).
    async with Supervisor(KINDS, tmp_path, clock=mock_wall_clock, idle_timeout=float("inf")) as sup:
        counted = sup.S.Counted("a")
        await counted.plan(100)
        await counted.arm(0)
        await trio.sleep(3600)
        log = await counted.memory()
        assert [r["retry_count"] for r in log] == [0, 1, 2, 3, 4, 5, 6]
        gaps = [b["at"] - a["at"] for a, b in zip(log, log[1:])]
        for attempt, gap in enumerate(gaps, start=1):
            base = 2.0 * 2 ** (attempt - 1)  # 2, 4, 8, 16, 32, 64 s
            assert base <= gap < base + 1.0 + 0.01  # plus up to 1 s of jitter
        assert await counted.alarm_time() is None
        assert sup.alarms.abandoned == 1
        assert sup.alarms.index.count() == 0


class Rearm(DO):
    async def arm(self, seconds: float) -> None:
        self.set_alarm(dt.timedelta(seconds=seconds))

    async def alarm(self) -> None:  # the no-argument form
        fired = (self.storage.get("fired") or 0) + 1
        self.storage.put("fired", fired)
        if fired == 1:
            self.delete_alarm()
            self.set_alarm(dt.timedelta(seconds=10))

    async def fired(self) -> int:
        return self.storage.get("fired") or 0


async def test_a_handler_may_delete_and_set_a_new_alarm(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor([Rearm], tmp_path, clock=mock_wall_clock) as sup:
        actor = sup.S.Rearm("a")
        await actor.arm(1)
        await trio.sleep(5)
        assert await actor.fired() == 1
        assert len(sup.alarms.index.entries()) == 1  # the new alarm survived the first run
        await trio.sleep(10)
        assert await actor.fired() == 2
        assert sup.alarms.index.count() == 0


class Relay(DO):
    """Re-arms itself from its handler and notes what the index said meanwhile."""

    async def arm(self, seconds: float) -> None:
        self.set_alarm(mock_wall_clock() + seconds)

    async def alarm(self, info: Any) -> None:
        runs = (self.storage.get("runs") or 0) + 1
        self.storage.put("runs", runs)
        if runs < 3:
            self.set_alarm(mock_wall_clock() + 60)
            index = self._dotdo_ctx.supervisor.alarms.index
            # Written in this turn's commit, but not lowered into the index: the entry
            # that started this delivery (due now or earlier) still wakes the actor.
            earliest = min(e.due for e in index.entries("Relay") if e.hex == self.id.hex)
            self.storage.put(f"index_due_{runs}", earliest - mock_wall_clock())

    async def state(self) -> dict[str, Any]:
        return dict(self.storage.list())


async def test_a_rearming_handler_leaves_the_index_exact_and_never_late(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor([Relay], tmp_path, clock=mock_wall_clock) as sup:
        actor = sup.S.Relay("r")
        await actor.arm(5)
        await trio.sleep(6)
        state = await actor.state()
        assert state["runs"] == 1 and state["index_due_1"] <= 0
        # Once the delivery ends, the index says exactly what the database says.
        entries = sup.alarms.index.entries("Relay")
        assert [e.due for e in entries] == [pytest.approx(mock_wall_clock() + 59, abs=0.5)]
    # A restart before the next run: it runs on time, not before and not lost.
    async with Supervisor([Relay], tmp_path, clock=mock_wall_clock) as sup:
        actor = sup.S.Relay("r")
        await trio.sleep(50)
        assert (await actor.state())["runs"] == 1
        await trio.sleep(10)
        assert (await actor.state())["runs"] == 2
        await trio.sleep(61)
        assert (await actor.state())["runs"] == 3
        assert sup.alarms.index.count() == 0


# -- delete_all ------------------------------------------------------------------------


class Wiper(DO):
    """An alarm and a schedule beside its data, then delete_all; counts runs in memory
    (its storage is what delete_all takes)."""

    runs: list[str]

    def __init__(self) -> None:
        self.runs = []
        self.wipe_in_alarm = False

    async def fill(self, alarm_in: float) -> None:
        self.storage.put({"a": 1, "b": 2})
        self.sql.exec("CREATE TABLE notes(text TEXT); INSERT INTO notes VALUES ('hi')")
        self.set_alarm(mock_wall_clock() + alarm_in)
        self.S.every("every 1 hours", self.tick)

    async def wipe(self, fail: bool = False) -> int:
        keys = self.storage.delete_all()
        if fail:
            raise ValueError("changed my mind")
        return keys

    async def wipe_in_next_alarm(self) -> None:
        self.wipe_in_alarm = True

    async def state(self) -> dict[str, Any]:
        tables = self.sql.exec("SELECT name FROM sqlite_schema WHERE type = 'table' AND name = 'notes'")
        return {
            "keys": self.storage.list(),
            "tables": [row["name"] for row in tables],
            "alarm": self.get_alarm() is not None,
            "schedules": [s.name for s in self.S.schedules()],
            "runs": self.runs,
        }

    async def alarm(self) -> None:
        self.runs.append("alarm")
        if self.wipe_in_alarm:
            self.storage.delete_all()
            raise ValueError("failed after delete_all")

    async def tick(self) -> None:
        self.runs.append("tick")


FULL = {"keys": {"a": 1, "b": 2}, "tables": ["notes"], "alarm": True, "schedules": ["tick"], "runs": []}


async def test_delete_all_takes_the_alarm_and_schedules_and_the_index_follows(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor([Wiper], tmp_path, **FAST) as sup:
        wiper = sup.S.Wiper("w")
        await wiper.fill(100)
        assert sorted(e.kind for e in sup.alarms.pending("Wiper")) == ["alarm", "schedule"]
        assert await wiper.wipe() == 2
        assert sup.alarms.pending("Wiper") == []  # synced at the turn's end
        assert await wiper.state() == {"keys": {}, "tables": [], "alarm": False, "schedules": [], "runs": []}
        await trio.sleep(2 * 3600)
        assert (await wiper.state())["runs"] == []


async def test_a_turn_that_deletes_all_then_raises_keeps_everything(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor([Wiper], tmp_path, **FAST) as sup:
        wiper = sup.S.Wiper("w")
        await wiper.fill(100)
        before = sup.alarms.pending("Wiper")
        with pytest.raises(ActorError, match="changed my mind"):
            await wiper.wipe(fail=True)
        assert sup.alarms.pending("Wiper") == before
        assert await wiper.state() == FULL
        await trio.sleep(101)
        assert (await wiper.state())["runs"] == ["alarm"]


async def test_delete_all_in_a_failing_alarm_handler_stops_retries_as_delete_alarm_does(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with Supervisor([Wiper], tmp_path, **FAST) as sup:
        wiper = sup.S.Wiper("w")
        await wiper.fill(0.1)
        await wiper.wipe_in_next_alarm()
        await trio.sleep(1.0)  # past every retry
        # The handler's turn rolled back: the data is back, the alarm is not retried.
        assert await wiper.state() == {**FULL, "alarm": False, "runs": ["alarm"]}
        assert [e.kind for e in sup.alarms.pending("Wiper")] == ["schedule"]


class Away(Locator):
    """Places every actor here, except while ``away``: then elsewhere (as a cluster's
    locator does for a slot moving or just taken over)."""

    def __init__(self) -> None:
        self.away = False

    def locate(self, target: ActorId) -> Owner | None:
        return MOVING if self.away else None


async def test_an_alarm_whose_actor_is_unavailable_for_a_moment_is_retried_soon(autojump_clock: MockClock, tmp_path: Path) -> None:
    locator = Away()
    async with Supervisor(KINDS, tmp_path, locator=locator, **FAST) as sup:
        clock = sup.S.Clock("u")
        start = mock_wall_clock()
        await clock.arm(1.0)
        locator.away = True  # at its time, and a few retries after it, it runs elsewhere
        await trio.sleep(3.0)
        assert sup.alarms.pending()  # not run, not lost
        locator.away = False
        runs = await eventually(clock.runs, timeout=10.0)
        assert len(runs) == 1 and runs[0]["retry_count"] == 0  # its handler never failed
        # retried 0.5, 1 and 2 s after each failure (at 1, 1.5 and 2.5 s): it ran at 4.5 s
        assert 3.0 <= runs[0]["at"] - start <= 5.0
