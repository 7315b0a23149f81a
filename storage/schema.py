"""The engine's own tables and their migrations.

Every actor database carries its schema version in ``PRAGMA user_version`` (read from
the file header, so checking it costs nothing at activation). Opening a database runs
the migrations it has not seen yet, in order, in one transaction: a database is either
at the old version or at the new one, never in between.

Engine tables share the reserved prefix ``_dotdo_``; user SQL cannot name them.
To add a table, append a ``Migration`` to ``MIGRATIONS``; never edit a released one.

**Features.** The workflow stores (things, relationships, search, actions, events, the
outbox...) are many tables, and most actors never touch them. Built into every database,
they would make each actor's file seven times larger and every open slower (SQLite parses
the whole schema when a connection first uses it). So they come as *features*: a named
chain of migrations, versioned in ``_dotdo_meta`` (key ``schema.<name>``), applied by
``ActorDatabase.require(name)`` the first time an actor uses them, in the transaction of
the write that needs them. Same rule: append migrations, never edit a released one.
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


def run_sql(sql: str) -> Callable[[apsw.Connection], None]:
    def apply(conn: apsw.Connection) -> None:
        for _ in conn.execute(sql):
            pass

    return apply


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "address metadata and the key-value table",
        run_sql(
            """
            CREATE TABLE _dotdo_meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
            CREATE TABLE _dotdo_kv(k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
            """
        ),
    ),
    Migration(
        2,
        "the alarm, recurring schedules and abandoned alarm runs",
        run_sql(
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
        run_sql(
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


@dataclass(frozen=True, slots=True)
class Feature:
    """A set of engine tables created on first use (see the module docstring)."""

    name: str
    summary: str
    migrations: tuple[Migration, ...]

    @property
    def latest(self) -> int:
        return self.migrations[-1].version

    @property
    def meta_key(self) -> str:
        return f"schema.{self.name}"


FEATURES: dict[str, Feature] = {}


def feature(name: str, summary: str, migrations: tuple[Migration, ...]) -> Feature:
    """Declare a feature (at import time of the module that owns its tables)."""
    if name in FEATURES:
        raise ValueError(f"the feature {name!r} is declared twice")
    versions = [m.version for m in migrations]
    if not versions or versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"the migrations of {name!r} must be numbered 1, 2, ...")
    declared = FEATURES[name] = Feature(name, summary, migrations)
    return declared


def migrate_feature(conn: apsw.Connection, declared: Feature, current: int) -> int:
    """Apply the feature's migrations newer than ``current`` (the caller holds the
    transaction); return the new version."""
    version = current
    for migration in declared.migrations:
        if migration.version > version:
            migration.apply(conn)
            version = migration.version
    conn.execute(
        "INSERT OR REPLACE INTO _dotdo_meta(key, value) VALUES (?, ?)", (declared.meta_key, version)
    ).fetchall()
    return version


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
