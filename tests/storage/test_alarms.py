"""The alarm and schedule rows of one actor database."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from dotdo.storage import schema
from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase
from dotdo.storage.alarms import FAILURES_KEPT, AlarmRow, ScheduleRow


def test_alarm_set_get_delete(db: ActorDatabase) -> None:
    assert db.alarms.get() is None
    first = db.alarms.set(100.0)
    assert first == AlarmRow(100.0, 100.0, 0, 1)
    second = db.alarms.set(50.0)
    assert second.seq == 2 and db.alarms.get() == second  # replaced, not added
    assert db.alarms.delete(seq=1) is False  # not the current alarm
    assert db.alarms.delete(seq=2) is True
    assert db.alarms.get() is None and db.alarms.delete() is False
    assert db.alarms.retry(2, 60.0, 1) is False  # a deleted alarm is not revived
    assert db.alarms.next_due(1e12) is None and db.alarms.pending() == []


def test_seq_grows_across_deletes(db: ActorDatabase) -> None:
    db.alarms.set(1.0)
    db.alarms.delete()
    assert db.alarms.set(2.0).seq == 2  # never reused: a handler can tell its alarm from a new one
    assert db.alarms.set(3.0).seq == 3


def _v2_database(path: Path, statements: str) -> None:
    """A database as schema version 2 left it (the alarm sequence counter in _dotdo_meta)."""
    conn = apsw.Connection(str(path))
    for migration in schema.MIGRATIONS[:2]:
        migration.apply(conn)
    for _ in conn.execute(f"PRAGMA user_version = 2; {statements}"):
        pass
    conn.close()


@pytest.mark.parametrize(
    ("v2_state", "alarm", "next_seq"),
    [
        ("", None, 1),
        (
            "INSERT INTO _dotdo_meta VALUES ('alarm_seq', 5);"
            "INSERT INTO _dotdo_alarm VALUES (1, 100.0, 104.0, 2, 5);",
            AlarmRow(100.0, 104.0, 2, 5),
            6,
        ),
        ("INSERT INTO _dotdo_meta VALUES ('alarm_seq', 7);", None, 8),  # set, then deleted
    ],
)
def test_version_3_keeps_the_alarm_and_its_sequence(
    tmp_path: Path, v2_state: str, alarm: AlarmRow | None, next_seq: int
) -> None:
    address = Address("T", "old")
    path = address.path(tmp_path)
    path.parent.mkdir(parents=True)
    _v2_database(path, v2_state)
    with ActorDatabase.open(tmp_path, address) as db:
        assert db.stats().schema_version == schema.LATEST_VERSION
        assert db.alarms.get() == alarm
        assert "alarm_seq" not in db.meta()
        assert db.alarms.set(1.0).seq == next_seq


def test_retry_moves_only_the_named_alarm(db: ActorDatabase) -> None:
    row = db.alarms.set(100.0)
    assert db.alarms.retry(row.seq, 102.5, 1) is True
    assert db.alarms.get() == AlarmRow(100.0, 102.5, 1, row.seq)
    assert db.alarms.retry(row.seq + 1, 200.0, 2) is False


def test_alarm_writes_join_the_turn(db: ActorDatabase) -> None:
    db.alarms.set(10.0)
    db.begin_turn()
    db.alarms.set(20.0)
    db.rollback()
    db.end_turn()
    assert db.alarms.get().due == 10.0  # type: ignore[union-attr]


def test_alarm_survives_reopen(tmp_path: Path) -> None:
    with ActorDatabase.open(tmp_path, Address("T", "a")) as db:
        db.alarms.set(42.0)
        db.alarms.put_schedule("s", "hourly", "cron:0 * * * *", "UTC", "tick", 3600.0)
    with ActorDatabase.open(tmp_path, Address("T", "a")) as db:
        assert db.alarms.get().scheduled == 42.0  # type: ignore[union-attr]
        assert [s.name for s in db.alarms.schedules()] == ["s"]


def test_schedules_crud_and_conditional_advance(db: ActorDatabase) -> None:
    row = db.alarms.put_schedule("b", "hourly", "cron:0 * * * *", "UTC", "tick", 3600.0)
    db.alarms.put_schedule("a", "daily", "cron:0 0 * * *", "UTC", "tock", 86400.0)
    assert [s.name for s in db.alarms.schedules()] == ["a", "b"]
    assert db.alarms.advance(row, 7200.0, 3601.0, None) is True
    after = db.alarms.schedule("b")
    assert isinstance(after, ScheduleRow)
    assert (after.next_run, after.last_run, after.runs, after.failures) == (7200.0, 3601.0, 1, 0)
    # A stale row (the schedule moved or changed meanwhile) does not advance it.
    assert db.alarms.advance(row, 9999.0, 3602.0, "boom") is False
    assert db.alarms.advance(after, 10800.0, 7201.0, "ValueError: x") is True
    failed = db.alarms.schedule("b")
    assert failed is not None and failed.failures == 1 and failed.last_error == "ValueError: x"
    assert db.alarms.delete_schedule("b") is True
    assert db.alarms.delete_schedule("b") is False
    assert db.alarms.schedule("b") is None


def test_pending_and_next_due_pick_the_earliest(db: ActorDatabase) -> None:
    assert db.alarms.pending() == [] and db.alarms.next_due(1e12) is None
    db.alarms.put_schedule("late", "x", "every:10", "UTC", "m", 300.0)
    db.alarms.put_schedule("early", "y", "every:10", "UTC", "m", 100.0)
    db.alarms.set(200.0)
    assert [(p.item, p.kind, p.due) for p in db.alarms.pending()] == [
        ("early", "schedule", 100.0),
        ("", "alarm", 200.0),
        ("late", "schedule", 300.0),
    ]
    assert db.alarms.next_due(50.0) is None
    first = db.alarms.next_due(250.0)
    assert isinstance(first, ScheduleRow) and first.name == "early"
    db.alarms.delete_schedule("early")
    assert isinstance(db.alarms.next_due(250.0), AlarmRow)
    assert db.alarms.next_due(150.0) is None


def test_failures_are_kept_bounded_newest_first(db: ActorDatabase) -> None:
    for i in range(FAILURES_KEPT + 20):
        db.alarms.record_failure("", float(i), 7, "RuntimeError", f"failure {i}" + "x" * 5000)
    failures = list(db.alarms.failures())
    assert len(failures) == FAILURES_KEPT
    assert failures[0].scheduled == FAILURES_KEPT + 19.0
    assert len(failures[0].message) == 2000
