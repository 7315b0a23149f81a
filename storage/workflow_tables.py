"""The workflow tables of one actor: the ``workflow`` feature that declares them, and the
access every part of ``WorkflowStore`` (``dotdo.storage.workflow``) shares.

The tables are built the first time an actor sends, receives, subscribes or runs a
step: reads on a database without them find nothing and build nothing; the first write
builds them (``ActorDatabase.require``), in the current transaction.

- ``_dotdo_events``: every event the actor sent (append-only).
- ``_dotdo_actions``: every operation (``send``, ``try``, ``do``) with its status.
- ``_dotdo_outbox``: one row per (event, subscriber) still to deliver. ``seq`` comes
  from AUTOINCREMENT, so it is never reused: receivers de-duplicate by it.
- ``_dotdo_dead_letters``: deliveries given up on, kept until replayed.
- ``_dotdo_inbox``: (sender, seq) of deliveries already handled here.
- ``_dotdo_subscriptions``: what this actor listens to (the truth behind the shared
  subscription index, ``dotdo.storage.subscriptions``).

Never edit a released migration: append one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import apsw

from dotdo.storage import schema
from dotdo.storage.errors import translate

if TYPE_CHECKING:
    from dotdo.storage.database import ActorDatabase

WORKFLOW = schema.feature(
    "workflow",
    "events, actions, outbox, dead letters, inbox and subscriptions",
    (
        schema.Migration(
            1,
            "the workflow tables",
            schema.run_sql(
                """
                CREATE TABLE _dotdo_events(
                    id INTEGER PRIMARY KEY,
                    uid TEXT NOT NULL UNIQUE,
                    verb TEXT NOT NULL,
                    source TEXT NOT NULL,
                    data BLOB NOT NULL,
                    timestamp REAL NOT NULL,
                    trace_id TEXT,
                    correlation_id TEXT
                );
                CREATE TABLE _dotdo_actions(
                    id INTEGER PRIMARY KEY,
                    verb TEXT NOT NULL,
                    target TEXT,
                    actor TEXT NOT NULL,
                    input BLOB,
                    output BLOB,
                    error TEXT,
                    durability TEXT NOT NULL CHECK (durability IN ('send', 'try', 'do')),
                    status TEXT NOT NULL
                        CHECK (status IN ('pending', 'running', 'retrying', 'completed', 'failed')),
                    step TEXT UNIQUE,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    policy BLOB,
                    resume_at REAL,
                    created_at REAL NOT NULL,
                    updated_at REAL NOT NULL
                );
                CREATE INDEX _dotdo_actions_resume ON _dotdo_actions(resume_at) WHERE resume_at IS NOT NULL;
                CREATE TABLE _dotdo_outbox(
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    action INTEGER NOT NULL,
                    event INTEGER NOT NULL,
                    path TEXT NOT NULL,
                    namespace TEXT NOT NULL,
                    hex TEXT NOT NULL,
                    name TEXT,
                    method TEXT NOT NULL,
                    priority INTEGER NOT NULL,
                    rank INTEGER NOT NULL,
                    timeout REAL,
                    due REAL NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    max_attempts INTEGER NOT NULL,
                    initial REAL NOT NULL,
                    max_wait REAL NOT NULL,
                    last_error TEXT
                );
                CREATE INDEX _dotdo_outbox_due ON _dotdo_outbox(due);
                CREATE INDEX _dotdo_outbox_action ON _dotdo_outbox(action);
                CREATE INDEX _dotdo_outbox_receiver ON _dotdo_outbox(namespace, hex, path);
                CREATE TABLE _dotdo_dead_letters(
                    id INTEGER PRIMARY KEY,
                    seq INTEGER NOT NULL,
                    action INTEGER NOT NULL,
                    event INTEGER NOT NULL,
                    path TEXT NOT NULL,
                    namespace TEXT NOT NULL,
                    hex TEXT NOT NULL,
                    name TEXT,
                    method TEXT NOT NULL,
                    priority INTEGER NOT NULL,
                    rank INTEGER NOT NULL,
                    timeout REAL,
                    attempts INTEGER NOT NULL,
                    max_attempts INTEGER NOT NULL,
                    initial REAL NOT NULL,
                    max_wait REAL NOT NULL,
                    error TEXT NOT NULL,
                    failed_at REAL NOT NULL
                );
                CREATE TABLE _dotdo_inbox(
                    sender TEXT NOT NULL,
                    seq INTEGER NOT NULL,
                    PRIMARY KEY (sender, seq)
                ) WITHOUT ROWID;
                CREATE TABLE _dotdo_subscriptions(
                    noun TEXT NOT NULL,
                    verb TEXT NOT NULL,
                    method TEXT NOT NULL,
                    priority INTEGER NOT NULL,
                    timeout REAL,
                    PRIMARY KEY (noun, verb, method)
                ) WITHOUT ROWID;
                """
            ),
        ),
    ),
)


class WorkflowTables:
    """Reads and writes on the workflow tables of one ``ActorDatabase``: the base of the
    parts that ``WorkflowStore`` gathers (``dotdo.storage.outbox``, ``dotdo.storage.steps``)."""

    __slots__ = ("_db",)

    def __init__(self, db: ActorDatabase) -> None:
        self._db = db

    @property
    def ready(self) -> bool:
        """Whether the tables exist (reads on a database without them find nothing)."""
        return self._db.has("workflow")

    def _rows(self, query: str, *bindings: object) -> list[tuple]:
        try:
            return self._db.connection.execute(query, bindings).fetchall()
        except apsw.Error as exc:
            raise translate(exc, self._db.address) from None

    def _write(self, query: str, *bindings: object) -> list[tuple]:
        db = self._db
        db.require("workflow")
        try:
            db.ensure_transaction()
            return db.connection.execute(query, bindings).fetchall()
        except apsw.Error as exc:
            raise translate(exc, db.address) from None

    def _changes(self, query: str, *bindings: object) -> int:
        conn = self._db.connection
        before = conn.total_changes()
        self._write(query, *bindings)
        return conn.total_changes() - before
