"""One actor's alarm and recurring schedules, as rows of its own database.

The actor's database is the truth about when it must wake: its one alarm (table
``_dotdo_alarm``) and its schedules (``_dotdo_schedules``). Both are written inside the
turn that changes them, so a turn that rolls back leaves them as they were. The
supervisor's alarm index (``dotdo.storage.alarm_index``) only says when to look.

Times are epoch seconds (UTC). A schedule's ``spec`` is the canonical form the runtime
computes next times from (``cron:<expr>`` or ``every:<seconds>``); ``phrase`` is what the
user wrote. This module stores them; it does not parse them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import apsw

from dotdo.storage.errors import translate

if TYPE_CHECKING:
    from dotdo.storage.database import ActorDatabase

ALARM_ITEM = ""
"""The item name of the alarm in listings and the index (schedules use their own name)."""

FAILURES_KEPT = 100
"""Abandoned runs kept per actor; older records are dropped."""


@dataclass(frozen=True, slots=True)
class AlarmRow:
    """The actor's alarm.

    Attributes:
        scheduled: The time it was set for.
        due: When it next runs (``scheduled``, or later while it is being retried).
        retry_count: Failed runs so far.
        seq: Grows with every ``set``, deletes notwithstanding (a delete clears the
            row but keeps it): tells a running alarm from one set after it.
    """

    scheduled: float
    due: float
    retry_count: int
    seq: int


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A recurring schedule of the actor."""

    name: str
    phrase: str
    spec: str
    tz: str
    method: str
    next_run: float
    last_run: float | None
    runs: int
    failures: int
    last_error: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class PendingItem:
    """One thing the actor must wake for: its alarm or one schedule."""

    item: str
    kind: str  # "alarm" or "schedule"
    spec: str | None
    due: float
    retries: int


@dataclass(frozen=True, slots=True)
class FailureRow:
    """An alarm run that was given up on, or a scheduled run that raised."""

    item: str
    scheduled: float
    failed_at: float
    attempts: int
    error_type: str
    message: str


_SCHEDULE_COLUMNS = "name, phrase, spec, tz, method, next_run, last_run, runs, failures, last_error, created_at"


class AlarmStore:
    """The alarm and schedule rows of one ``ActorDatabase`` (``db.alarms``)."""

    __slots__ = ("_db",)

    def __init__(self, db: ActorDatabase) -> None:
        self._db = db

    def _rows(self, query: str, *bindings: object) -> list[tuple]:
        try:
            return self._db.connection.execute(query, bindings).fetchall()
        except apsw.Error as exc:
            raise translate(exc, self._db.address) from None

    def _write(self, query: str, *bindings: object) -> int:
        db = self._db
        conn = db.connection
        try:
            db.ensure_transaction()
            before = conn.total_changes()
            conn.execute(query, bindings).fetchall()
            return conn.total_changes() - before
        except apsw.Error as exc:
            raise translate(exc, db.address) from None

    # -- the alarm -------------------------------------------------------------------

    def get(self) -> AlarmRow | None:
        """The alarm, or None when none is set."""
        rows = self._rows("SELECT scheduled, due, retry_count, seq FROM _dotdo_alarm WHERE due IS NOT NULL")
        return AlarmRow(*rows[0]) if rows else None

    def set(self, when: float) -> AlarmRow:
        """Set the alarm for ``when``, replacing any alarm (and its retries)."""
        db = self._db
        try:
            db.ensure_transaction()
            # One row for good: a delete only clears it, so the sequence number lives on.
            rows = db.connection.execute(
                "INSERT INTO _dotdo_alarm(slot, scheduled, due, retry_count, seq) VALUES (1, ?1, ?1, 0, 1) "
                "ON CONFLICT(slot) DO UPDATE SET scheduled = ?1, due = ?1, retry_count = 0, seq = seq + 1 "
                "RETURNING seq",
                (when,),
            ).fetchall()
        except apsw.Error as exc:
            raise translate(exc, db.address) from None
        return AlarmRow(when, when, 0, int(rows[0][0]))

    def delete(self, seq: int | None = None) -> bool:
        """Delete the alarm (only if it is still ``seq``, when given); whether one was."""
        clear = "UPDATE _dotdo_alarm SET scheduled = NULL, due = NULL, retry_count = 0 WHERE due IS NOT NULL"
        if seq is None:
            return self._write(clear) > 0
        return self._write(f"{clear} AND seq = ?", seq) > 0

    def retry(self, seq: int, due: float, retry_count: int) -> bool:
        """Move the alarm ``seq`` to ``due`` as retry number ``retry_count``."""
        return (
            self._write(
                "UPDATE _dotdo_alarm SET due = ?, retry_count = ? WHERE seq = ? AND due IS NOT NULL", due, retry_count, seq
            )
            > 0
        )

    # -- schedules -------------------------------------------------------------------

    def schedules(self) -> list[ScheduleRow]:
        """Every schedule, by name."""
        return [ScheduleRow(*row) for row in self._rows(f"SELECT {_SCHEDULE_COLUMNS} FROM _dotdo_schedules ORDER BY name")]

    def schedule(self, name: str) -> ScheduleRow | None:
        """One schedule, or None."""
        rows = self._rows(f"SELECT {_SCHEDULE_COLUMNS} FROM _dotdo_schedules WHERE name = ?", name)
        return ScheduleRow(*rows[0]) if rows else None

    def put_schedule(self, name: str, phrase: str, spec: str, tz: str, method: str, next_run: float) -> ScheduleRow:
        """Add the schedule ``name``, or replace it; counters restart when it changes."""
        now = time.time()
        self._write(
            f"INSERT OR REPLACE INTO _dotdo_schedules({_SCHEDULE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, 0, 0, NULL, ?)",
            name,
            phrase,
            spec,
            tz,
            method,
            next_run,
            now,
        )
        return ScheduleRow(name, phrase, spec, tz, method, next_run, None, 0, 0, None, now)

    def delete_schedule(self, name: str) -> bool:
        """Remove the schedule ``name``; whether it existed."""
        return self._write("DELETE FROM _dotdo_schedules WHERE name = ?", name) > 0

    def delete_schedules(self) -> int:
        """Remove every schedule; how many there were."""
        return self._write("DELETE FROM _dotdo_schedules")

    def advance(self, row: ScheduleRow, next_run: float, ran_at: float, error: str | None) -> bool:
        """Record a run of ``row`` and move it to ``next_run``. Does nothing if the
        schedule was removed or changed meanwhile (the change stands)."""
        return (
            self._write(
                "UPDATE _dotdo_schedules SET next_run = ?, last_run = ?, runs = runs + 1, "
                "failures = failures + ?, last_error = coalesce(?, last_error) "
                "WHERE name = ? AND spec = ? AND tz = ? AND method = ? AND next_run = ?",
                next_run,
                ran_at,
                int(error is not None),
                error,
                row.name,
                row.spec,
                row.tz,
                row.method,
                row.next_run,
            )
            > 0
        )

    # -- what is pending -------------------------------------------------------------

    def pending(self) -> list[PendingItem]:
        """The alarm and every schedule, earliest first."""
        items = [
            PendingItem(ALARM_ITEM, "alarm", None, due, retries)
            for due, retries in self._rows("SELECT due, retry_count FROM _dotdo_alarm WHERE due IS NOT NULL")
        ]
        items.extend(
            PendingItem(name, "schedule", phrase, next_run, 0)
            for name, phrase, next_run in self._rows("SELECT name, phrase, next_run FROM _dotdo_schedules")
        )
        items.sort(key=lambda item: item.due)
        return items

    def next_due(self, now: float) -> AlarmRow | ScheduleRow | None:
        """The earliest alarm or schedule due at ``now``, or None (the alarm first when
        both are due at the same moment)."""
        rows = self._rows(
            "SELECT * FROM ("
            "SELECT 0 AS kind, due AS at, scheduled, due, retry_count, seq, "
            "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL "
            "FROM _dotdo_alarm WHERE due <= ?1 "
            f"UNION ALL SELECT * FROM (SELECT 1, next_run, NULL, NULL, NULL, NULL, {_SCHEDULE_COLUMNS} "
            "FROM _dotdo_schedules WHERE next_run <= ?1 ORDER BY next_run LIMIT 1)"
            ") ORDER BY at, kind LIMIT 1",
            now,
        )
        if not rows:
            return None
        row = rows[0]
        return AlarmRow(*row[2:6]) if row[0] == 0 else ScheduleRow(*row[6:])

    def due_at(self, now: float) -> bool:
        """Whether the alarm or a schedule is due at ``now``."""
        return bool(
            self._rows(
                "SELECT 1 WHERE EXISTS (SELECT 1 FROM _dotdo_alarm WHERE due <= ?1) "
                "OR EXISTS (SELECT 1 FROM _dotdo_schedules WHERE next_run <= ?1)",
                now,
            )
        )

    # -- abandoned runs --------------------------------------------------------------

    def record_failure(self, item: str, scheduled: float, attempts: int, error_type: str, message: str) -> None:
        """Keep a record of a run given up on (the newest ``FAILURES_KEPT`` are kept)."""
        self._write(
            "INSERT INTO _dotdo_alarm_failures(item, scheduled, failed_at, attempts, error_type, message) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            item,
            scheduled,
            time.time(),
            attempts,
            error_type,
            message[:2000],
        )
        self._write(
            "DELETE FROM _dotdo_alarm_failures WHERE id <= (SELECT max(id) FROM _dotdo_alarm_failures) - ?",
            FAILURES_KEPT,
        )

    def failures(self) -> Iterator[FailureRow]:
        """Abandoned runs, newest first."""
        for row in self._rows(
            "SELECT item, scheduled, failed_at, attempts, error_type, message FROM _dotdo_alarm_failures ORDER BY id DESC"
        ):
            yield FailureRow(*row)
