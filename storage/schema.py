"""The engine's own tables and their migrations.

Every actor database carries its schema version in ``PRAGMA user_version`` (read from
the file header, so checking it costs nothing at activation). Opening a database runs
the migrations it has not seen yet, in order, in one transaction: a database is either
at the old version or at the new one, never in between.

Engine tables share the reserved prefix ``_dotdo_``; user SQL cannot name them.
To add a table, append a ``Migration`` to ``MIGRATIONS``; never edit a released one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import apsw

RESERVED_PREFIX = "_dotdo_"


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the engine schema: ``apply`` runs inside the migration transaction."""

    version: int
    summary: str
    apply: Callable[[apsw.Connection], None]


def _run(sql: str) -> Callable[[apsw.Connection], None]:
    def apply(conn: apsw.Connection) -> None:
        for _ in conn.execute(sql):
            pass

    return apply


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "address metadata and the key-value table",
        _run(
            """
            CREATE TABLE _dotdo_meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
            CREATE TABLE _dotdo_kv(k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
            """
        ),
    ),
    Migration(
        2,
        "the alarm, recurring schedules and abandoned alarm runs",
        _run(
            """
            CREATE TABLE _dotdo_alarm(
                slot INTEGER PRIMARY KEY CHECK (slot = 1),
                scheduled REAL NOT NULL,
                due REAL NOT NULL,
                retry_count INTEGER NOT NULL DEFAULT 0,
                seq INTEGER NOT NULL
            );
            CREATE TABLE _dotdo_schedules(
                name TEXT PRIMARY KEY,
                phrase TEXT NOT NULL,
                spec TEXT NOT NULL,
                tz TEXT NOT NULL,
                method TEXT NOT NULL,
                next_run REAL NOT NULL,
                last_run REAL,
                runs INTEGER NOT NULL DEFAULT 0,
                failures INTEGER NOT NULL DEFAULT 0,
                last_error TEXT,
                created_at REAL NOT NULL
            ) WITHOUT ROWID;
            CREATE TABLE _dotdo_alarm_failures(
                id INTEGER PRIMARY KEY,
                item TEXT NOT NULL,
                scheduled REAL NOT NULL,
                failed_at REAL NOT NULL,
                attempts INTEGER NOT NULL,
                error_type TEXT NOT NULL,
                message TEXT NOT NULL
            );
            """
        ),
    ),
    Migration(
        3,
        "the alarm row keeps its sequence number when deleted (due and scheduled become NULL)",
        _run(
            """
            CREATE TABLE _dotdo_alarm_v3(
                slot INTEGER PRIMARY KEY CHECK (slot = 1),
                scheduled REAL,
                due REAL,
                retry_count INTEGER NOT NULL DEFAULT 0,
                seq INTEGER NOT NULL,
                CHECK ((scheduled IS NULL) = (due IS NULL))
            );
            INSERT INTO _dotdo_alarm_v3(slot, scheduled, due, retry_count, seq)
                SELECT 1, a.scheduled, a.due, coalesce(a.retry_count, 0),
                       max(coalesce(a.seq, 0), coalesce(m.value, 0))
                FROM (SELECT 1) LEFT JOIN _dotdo_alarm AS a
                LEFT JOIN _dotdo_meta AS m ON m.key = 'alarm_seq'
                WHERE a.slot IS NOT NULL OR m.key IS NOT NULL;
            DROP TABLE _dotdo_alarm;
            ALTER TABLE _dotdo_alarm_v3 RENAME TO _dotdo_alarm;
            DELETE FROM _dotdo_meta WHERE key = 'alarm_seq';
            """
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


def migrate(conn: apsw.Connection, current: int) -> int:
    """Apply every migration newer than ``current``; return the new version.

    The caller holds the transaction. A database newer than this code is refused
    by the caller before this is reached.
    """
    version = current
    for migration in MIGRATIONS:
        if migration.version > version:
            migration.apply(conn)
            version = migration.version
    conn.execute(f"PRAGMA user_version = {int(version)}")
    return version
