"""Whole-actor operations on one database: clone and compact (promote is in
``dotdo.storage.promotion``, shard in ``dotdo.storage.sharding``, branches in ``dotdo.storage.branches``,
restore in ``dotdo.storage.history``).

Both run between turns of the actor (the runtime commits the turn first) and change
nothing of the actor when they fail:

- ``clone_into`` copies the committed database into a new address with the online
  backup API, through the source's own connection, into the target's (which it opens,
  so it holds the target's lock while it copies). The target must be *blank*: never
  written, or only given its engine tables. Then the copy is made independent: its own
  address in ``_dotdo_meta``, no branches, no events still to deliver (those belong to
  the source), no running steps, and without alarms or schedules when asked.
- ``compact`` folds old events and finished actions into one summary row per verb
  (``_dotdo_compacted``), keeps everything current state needs (pending deliveries,
  dead letters and the events they point at, durable steps' records, which make a
  completed step never run again), vacuums, and truncates the WAL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from dotdo.storage import backup, schema
from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import ActorExists, InvalidInput, TransactionError, translate
from dotdo.storage.options import StorageOptions
from dotdo.storage.workflow_tables import WORKFLOW

LIFECYCLE = schema.feature(
    "lifecycle",
    "compaction summaries and promoted things",
    (
        schema.Migration(
            1,
            "the compaction summary and the promoted things",
            schema.run_sql(
                """
                CREATE TABLE _dotdo_compacted(
                    kind TEXT NOT NULL,
                    key TEXT NOT NULL,
                    count INTEGER NOT NULL,
                    first_at REAL NOT NULL,
                    last_at REAL NOT NULL,
                    PRIMARY KEY (kind, key)
                ) WITHOUT ROWID;
                CREATE TABLE _dotdo_promoted(
                    thing_id TEXT PRIMARY KEY,
                    type TEXT NOT NULL,
                    namespace TEXT NOT NULL,
                    hex TEXT NOT NULL,
                    promoted_at REAL NOT NULL
                ) WITHOUT ROWID;
                """
            ),
        ),
    ),
)

PLACE_KEYS = ("branch", "shards", "shards.generation", "shards.retired", "shard.of", "promotion")
"""Meta keys of one database's place among branches (with every ``branch.*`` key),
shards and promotions: a copy must not inherit them."""


@dataclass(frozen=True, slots=True)
class CloneReport:
    """What ``clone_into`` made.

    Attributes:
        namespace, id: The clone's address.
        bytes: Size of the copy on disk.
        alarms: Whether the alarm and schedules were copied.
        seconds: How long the copy took.
    """

    namespace: str
    id: str
    bytes: int
    alarms: bool
    seconds: float


@dataclass(frozen=True, slots=True)
class CompactReport:
    """What ``compact`` did.

    Attributes:
        bytes_before, bytes_after: Database file plus WAL, before and after.
        events_folded, actions_folded: Rows folded into ``_dotdo_compacted``.
        seconds: How long it took.
    """

    bytes_before: int
    bytes_after: int
    events_folded: int
    actions_folded: int
    seconds: float


def is_blank(db: ActorDatabase) -> bool:
    """Whether ``db`` holds nothing an actor wrote: no key-value entries, no user tables,
    no things, no events, no alarm and no schedules (empty engine tables are fine)."""
    conn = db.connection
    query = (
        "SELECT EXISTS(SELECT 1 FROM _dotdo_kv)"
        " OR EXISTS(SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_dotdo\\_%' ESCAPE '\\'"
        "           AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\')"
        " OR EXISTS(SELECT 1 FROM _dotdo_meta WHERE key IN ('shards', 'promotion'))"
        " OR EXISTS(SELECT 1 FROM _dotdo_alarm WHERE due IS NOT NULL)"
        " OR EXISTS(SELECT 1 FROM _dotdo_schedules)"
    )
    try:
        if conn.execute(query).fetchall()[0][0]:
            return False
        for table in ("_dotdo_things", "_dotdo_events", "_dotdo_actions"):
            if _has_table(conn, table) and conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall():
                return False
    except apsw.Error as exc:
        raise translate(exc, db.address) from None
    return True


def open_blank(data_dir: Path, address: Address, options: StorageOptions, name: str | None) -> ActorDatabase:
    """Open the database of ``address`` (creating it), holding its lock, and check that
    it is blank.

    Raises:
        DatabaseLocked: The target is active somewhere.
        ActorExists: It holds data.
    """
    target = ActorDatabase.open(data_dir, address, options, name=name)
    try:
        if not is_blank(target):
            raise ActorExists(str(address))
    except BaseException:
        target.close()
        raise
    return target


def clone_into(
    db: ActorDatabase,
    data_dir: Path,
    address: Address,
    *,
    name: str | None = None,
    alarms: bool = True,
    options: StorageOptions | None = None,
) -> CloneReport:
    """Copy ``db``'s committed state to the blank actor ``address`` (see the module).

    Raises:
        TransactionError: ``db`` has uncommitted writes.
        InvalidInput: ``address`` is the source's own.
        ActorExists: The target holds data; DatabaseLocked: it is active.
    """
    started = time.perf_counter()
    if db.connection.in_transaction:
        raise TransactionError("commit the turn before cloning")
    if address == db.address:
        raise InvalidInput("an actor cannot be cloned onto itself")
    target = open_blank(data_dir, address, options or db.options, name)
    made = False
    try:
        backup.copy(db.connection, target.connection)
        conn = target.connection
        with conn:
            make_independent(conn, address, name, db.address, alarms)
        made = True
    except apsw.Error as exc:
        raise translate(exc, address) from None
    finally:
        target.close()
        if not made:
            # The target was blank: without it, it is as it was (a half-made clone
            # must not look like data).
            backup.remove(target.path)
    return CloneReport(address.namespace, address.id, backup.file_size(target.path), alarms, time.perf_counter() - started)


def make_independent(conn: apsw.Connection, address: Address, name: str | None, source: Address, alarms: bool) -> None:
    """Give a copy its own address and nothing of the source's that was in flight."""
    placeholders = ", ".join("?" * len(PLACE_KEYS))
    conn.execute(f"DELETE FROM _dotdo_meta WHERE key IN ({placeholders}) OR key LIKE 'branch.%'", PLACE_KEYS)
    conn.executemany(
        "INSERT OR REPLACE INTO _dotdo_meta(key, value) VALUES (?, ?)",
        [
            ("namespace", address.namespace),
            ("id", address.id),
            ("name", name),
            ("created_at", time.time()),
            ("cloned_from", f"{source.namespace}/{source.id}"),
        ],
    )
    if not alarms:
        conn.execute("UPDATE _dotdo_alarm SET scheduled = NULL, due = NULL, retry_count = 0")
        conn.execute("DELETE FROM _dotdo_schedules")
    conn.execute("DELETE FROM _dotdo_alarm_failures")
    if _has_table(conn, "_dotdo_outbox"):
        # The source delivers its own events; a running step is the source's to finish.
        conn.execute("DELETE FROM _dotdo_outbox")
        conn.execute("DELETE FROM _dotdo_dead_letters")
        conn.execute(
            "UPDATE _dotdo_actions SET status = 'failed', error = 'not finished when the actor was cloned', "
            "resume_at = NULL WHERE status IN ('pending', 'running', 'retrying')"
        )


def _has_table(conn: apsw.Connection, table: str) -> bool:
    return bool(conn.execute("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (table,)).fetchall())


def compact(db: ActorDatabase, *, before: float) -> CompactReport:
    """Fold events and finished actions older than ``before`` (epoch seconds) into
    summary rows, vacuum, and truncate the WAL (see the module).

    Raises:
        TransactionError: ``db`` has uncommitted writes.
        StorageError: The database failed; nothing was folded.
    """
    started = time.perf_counter()
    conn = db.connection
    if conn.in_transaction:
        raise TransactionError("commit the turn before compacting")
    bytes_before = backup.file_size(db.path)
    events = actions = 0
    try:
        if db.has(WORKFLOW.name):
            with conn:
                db.require(LIFECYCLE.name)
                events, actions = _fold(conn, before)
        backup.vacuum(conn)
    except apsw.Error as exc:
        db.forget_features()
        raise translate(exc, db.address) from None
    return CompactReport(bytes_before, backup.file_size(db.path), events, actions, time.perf_counter() - started)


# Events still needed: an undelivered or dead-lettered delivery points at them.
_OLD_EVENTS = (
    "FROM _dotdo_events AS e WHERE e.timestamp < ?1 "
    "AND NOT EXISTS (SELECT 1 FROM _dotdo_outbox AS o WHERE o.event = e.id) "
    "AND NOT EXISTS (SELECT 1 FROM _dotdo_dead_letters AS d WHERE d.event = e.id)"
)
# Actions no longer needed: finished, without a step name (a durable step's record is
# what makes it return its output instead of running again), not pointed at.
_OLD_ACTIONS = (
    "FROM _dotdo_actions AS a WHERE a.updated_at < ?1 AND a.status IN ('completed', 'failed') "
    "AND a.step IS NULL "
    "AND NOT EXISTS (SELECT 1 FROM _dotdo_outbox AS o WHERE o.action = a.id) "
    "AND NOT EXISTS (SELECT 1 FROM _dotdo_dead_letters AS d WHERE d.action = a.id)"
)
_UPSERT = (
    "INSERT INTO _dotdo_compacted(kind, key, count, first_at, last_at) {select} "
    "ON CONFLICT(kind, key) DO UPDATE SET count = count + excluded.count, "
    "first_at = min(first_at, excluded.first_at), last_at = max(last_at, excluded.last_at)"
)


def _fold(conn: apsw.Connection, before: float) -> tuple[int, int]:
    conn.execute(
        _UPSERT.format(
            select=f"SELECT 'events', e.verb, count(*), min(e.timestamp), max(e.timestamp) {_OLD_EVENTS} GROUP BY e.verb"
        ),
        (before,),
    )
    conn.execute(f"DELETE FROM _dotdo_events WHERE id IN (SELECT e.id {_OLD_EVENTS})", (before,))
    events_folded = conn.changes()
    conn.execute(
        _UPSERT.format(
            select="SELECT 'actions', a.durability || ' ' || a.verb || ' ' || a.status, count(*), "
            f"min(a.created_at), max(a.updated_at) {_OLD_ACTIONS} GROUP BY 1, 2"
        ),
        (before,),
    )
    conn.execute(f"DELETE FROM _dotdo_actions WHERE id IN (SELECT a.id {_OLD_ACTIONS})", (before,))
    return events_folded, conn.changes()


def compacted(db: ActorDatabase) -> list[dict[str, Any]]:
    """The summary rows ``compact`` left: kind, key, count, first and last time."""
    if not db.has(LIFECYCLE.name):
        return []
    rows = db.connection.execute("SELECT kind, key, count, first_at, last_at FROM _dotdo_compacted ORDER BY kind, key")
    return [dict(zip(("kind", "key", "count", "first_at", "last_at"), row)) for row in rows]
