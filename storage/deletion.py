"""``delete_all``: everything an actor stored, deleted in one commit.

Durable Objects' ``deleteAll()`` on a SQLite-backed object removes "the entire contents
of a Durable Object's private SQLite database", atomically, and (compatibility date
2026-02-24 and later) its alarm. Here that is, in one savepoint (inside a turn it joins
the turn's transaction: a turn that then raises gets everything back):

- every key-value pair;
- every user table, view and virtual table, *dropped* (their indexes, triggers and
  rows in ``sqlite_sequence`` and ``sqlite_stat1`` go with them): the schema is as new,
  and a ``CREATE TABLE`` that ran once runs again. Foreign keys between them are no
  obstacle: their checks are deferred while the tables are dropped;
- the semantic stores (``dotdo.storage.things``): things, relationships, the full-text
  index, vectors, the field indexes and the vector dimension;
- the alarm (its sequence number lives on, telling a running alarm from a later one)
  and every schedule. The runtime brings the shared alarm index in line at the turn's
  end: an actor calls this through it (``AlarmService.delete_all``).

What is kept is either the engine's, not the actor's data, or owed to other actors:

- ``_dotdo_meta``: the address and name, the versions of the engine's tables, the
  database's place among branches, shards and promotions. The database still belongs
  to the same actor; the engine's tables stay, empty, so nothing is built twice.
- Events the actor sent, the outbox and the dead letters: turns that committed sent
  them, their receivers are owed them, and an outbox ``seq`` is never reused
  (receivers de-duplicate by it). Deleting them would unsend them; in Durable Objects
  a request made before ``deleteAll()`` is not undone either.
- The inbox: the deliveries already handled here, so a redelivered event still has its
  effect once.
- Subscriptions: the actor's wiring to events, mirrored in the shared subscription
  index (``self.S.off`` removes them).
- The actions log with its durable steps: a completed step never runs again, a
  running one resumes. Abandoned alarm runs and compaction summaries: records of what
  happened.
- ``_dotdo_promoted``: a promotion's decision, which the promoted actor asks its
  parent about; without it the parent's half would be lost.
- Everything outside the file: branches and the history archive. Restoring to a
  bookmark taken before ``delete_all`` brings everything back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import apsw

from dotdo.storage import foreign_keys
from dotdo.storage.errors import translate

if TYPE_CHECKING:
    from dotdo.storage.database import ActorDatabase

_USER = "name NOT LIKE '\\_dotdo\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"

# Views first (they name tables), virtual tables next (dropping one drops its shadow
# tables, which cannot be dropped on their own), then the remaining tables.
_DROPS = (
    ("VIEW", f"type = 'view' AND {_USER}"),
    ("TABLE", f"type = 'table' AND {_USER} AND sql LIKE 'CREATE VIRTUAL TABLE%'"),
    ("TABLE", f"type = 'table' AND {_USER}"),
)


@dataclass(frozen=True, slots=True)
class Deleted:
    """What ``delete_all`` removed.

    Attributes:
        keys: Key-value pairs.
        tables: Names of the user tables, views and virtual tables dropped.
        things: Things of the semantic stores.
        alarm: Whether an alarm was set.
        schedules: Schedules.
    """

    keys: int
    tables: tuple[str, ...]
    things: int
    alarm: bool
    schedules: int


def delete_all(db: ActorDatabase) -> Deleted:
    """Delete everything the actor stored (see the module docstring), all or nothing.

    Outside a turn it commits on its own; inside one it joins the turn.

    Raises:
        StorageError: The deletion failed; nothing was deleted.
    """
    conn = db.connection
    try:
        with db.transaction():
            conn.execute("DELETE FROM _dotdo_kv")
            keys = conn.changes()
            tables = drop_user_tables(conn)
            things = db.things.delete_all()
            alarm = db.alarms.delete()
            schedules = db.alarms.delete_schedules()
    except apsw.Error as exc:
        raise translate(exc, db.address) from None
    return Deleted(keys, tables, things, alarm, schedules)


def drop_user_tables(conn: apsw.Connection) -> tuple[str, ...]:
    """Drop every table, view and virtual table of user SQL; their names (the caller
    holds a transaction)."""
    dropped: list[str] = []
    # Dropping a table deletes its rows first, under its foreign keys: checks deferred
    # (ON DELETE RESTRICT too), a parent's missing children are counted, then uncounted
    # with the child's rows.
    with foreign_keys.deferred(conn):
        for kind, where in _DROPS:
            names = [row[0] for row in conn.execute(f"SELECT name FROM sqlite_schema WHERE {where} ORDER BY name").fetchall()]
            for name in names:
                conn.execute(f"DROP {kind} {_quote(name)}")
            dropped.extend(names)
    return tuple(dropped)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
