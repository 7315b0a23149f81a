"""One actor's workflow tables: the event log, the actions log, the outbox with its dead
letters, the inbox that de-duplicates deliveries, and its subscriptions.

These tables are the ``workflow`` feature (``storage.schema``): built the first time an
actor sends, receives, subscribes or runs a step. Everything here runs inside the
actor's turn and commits with it, which is what makes ``send`` durable: the event, its
action and one outbox row per subscriber are written in the turn's own commit, or not
at all.

- ``_dotdo_events``: every event the actor sent (append-only).
- ``_dotdo_actions``: every operation (``send``, ``try``, ``do``) with its status.
- ``_dotdo_outbox``: one row per (event, subscriber) still to deliver. ``seq`` comes
  from AUTOINCREMENT, so it is never reused: receivers de-duplicate by it.
- ``_dotdo_dead_letters``: deliveries given up on, kept until replayed.
- ``_dotdo_inbox``: (sender, seq) of deliveries already handled here.
- ``_dotdo_subscriptions``: what this actor listens to (the truth behind the shared
  subscription index, ``storage.subscriptions``).

Values (event data, step input and output) arrive already encoded (bytes); this module
stores them and does not look inside. Times are epoch seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import apsw

from storage import schema
from storage.alarms import PendingItem
from storage.errors import translate

if TYPE_CHECKING:
    from storage.database import ActorDatabase

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

OUTBOX_ITEM = "\x00outbox"
"""The outbox's item in the alarm index (schedule names cannot hold NUL)."""
STEPS_ITEM = "\x00steps"
"""Durable steps to resume, in the alarm index."""


@dataclass(frozen=True, slots=True)
class Target:
    """One subscriber an event goes to."""

    namespace: str
    hex: str
    name: str | None
    method: str
    rank: int  # the subscription's priority
    timeout: float | None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how far apart a delivery or step is tried."""

    attempts: int
    initial: float
    max_wait: float


@dataclass(frozen=True, slots=True)
class Delivery:
    """An outbox row being delivered, with its event."""

    seq: int
    action: int
    path: str
    namespace: str
    hex: str
    name: str | None
    method: str
    timeout: float | None
    attempts: int
    policy: RetryPolicy
    uid: str
    data: bytes
    timestamp: float
    trace_id: str | None
    correlation_id: str | None


@dataclass(frozen=True, slots=True)
class EventRow:
    """An event from the log."""

    id: int
    uid: str
    verb: str
    source: str
    data: bytes
    timestamp: float
    trace_id: str | None
    correlation_id: str | None


@dataclass(frozen=True, slots=True)
class ActionRow:
    """An operation from the actions log."""

    id: int
    verb: str
    target: str | None
    actor: str
    input: bytes | None
    output: bytes | None
    error: str | None
    durability: str
    status: str
    step: str | None
    attempts: int
    policy: bytes | None
    resume_at: float | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A delivery given up on."""

    id: int
    seq: int
    action: int
    path: str
    namespace: str
    hex: str
    name: str | None
    method: str
    attempts: int
    error: str
    failed_at: float


@dataclass(frozen=True, slots=True)
class SubscriptionRow:
    """One subscription of this actor: events ``noun.verb`` (either may be ``*``) run
    ``method``."""

    noun: str
    verb: str
    method: str
    priority: int
    timeout: float | None


_ACTION_COLUMNS = (
    "id, verb, target, actor, input, output, error, durability, status, step, attempts, policy, resume_at, created_at, updated_at"
)
_DELIVERY_COLUMNS = (
    "o.seq, o.action, o.path, o.namespace, o.hex, o.name, o.method, o.timeout, o.attempts, "
    "o.max_attempts, o.initial, o.max_wait, e.uid, e.data, e.timestamp, e.trace_id, e.correlation_id"
)
_REPLAY_COLUMNS = "action, event, path, namespace, hex, name, method, priority, rank, timeout, max_attempts, initial, max_wait"


class WorkflowStore:
    """The workflow tables of one ``ActorDatabase`` (``db.workflow``)."""

    __slots__ = ("_db",)

    def __init__(self, db: ActorDatabase) -> None:
        self._db = db

    # -- plumbing --------------------------------------------------------------------

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

    # -- sending ---------------------------------------------------------------------

    def record_send(
        self,
        *,
        uid: str,
        path: str,
        source: str,
        data: bytes,
        now: float,
        due: float,
        priority: int,
        policy: RetryPolicy,
        trace_id: str | None,
        correlation_id: str | None,
        targets: Sequence[Target],
    ) -> int:
        """Log an event and queue it for ``targets``, in the current transaction;
        returns the action's id."""
        db = self._db
        db.require("workflow")
        conn = db.connection
        try:
            with db.transaction():
                conn.execute(
                    "INSERT INTO _dotdo_events(uid, verb, source, data, timestamp, trace_id, correlation_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (uid, path, source, data, now, trace_id, correlation_id),
                )
                event = conn.last_insert_rowid()
                conn.execute(
                    "INSERT INTO _dotdo_actions(verb, target, actor, input, durability, status, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, 'send', ?, ?, ?)",
                    (path, f"{len(targets)} subscriber(s)", source, data, "pending" if targets else "completed", now, now),
                )
                action = conn.last_insert_rowid()
                if targets:
                    conn.executemany(
                        "INSERT INTO _dotdo_outbox(action, event, path, namespace, hex, name, method, priority, rank, "
                        "timeout, due, max_attempts, initial, max_wait) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (
                                action, event, path, t.namespace, t.hex, t.name, t.method, priority, t.rank, t.timeout,
                                due, policy.attempts, policy.initial, policy.max_wait,
                            )
                            for t in targets
                        ],
                    )
        except apsw.Error as exc:
            raise translate(exc, db.address) from None
        return int(action)

    def take(self, now: float, limit: int) -> tuple[list[Delivery], dict[tuple[str, str], int]]:
        """The deliveries to make now, in delivery order, and for each receiver the
        lowest ``seq`` still queued for it (anything lower was delivered).

        Order: higher event priority first, then higher subscription priority, then
        ``seq``. A failed delivery moves the later rows of its (receiver, path) to its
        retry time too (``failed``), so events of one path reach a receiver in the
        order sent (among events of the same priority: a higher one may overtake).
        """
        if not self.ready:
            return [], {}
        rows = self._rows(
            f"SELECT {_DELIVERY_COLUMNS} FROM _dotdo_outbox AS o JOIN _dotdo_events AS e ON e.id = o.event "
            "WHERE o.due <= ? ORDER BY o.priority DESC, o.rank DESC, o.seq LIMIT ?",
            now,
            limit,
        )
        deliveries = [
            Delivery(
                seq, action, path, ns, hex_id, name, method, timeout, attempts,
                RetryPolicy(max_attempts, initial, max_wait), uid, data, ts, trace, corr,
            )
            for (seq, action, path, ns, hex_id, name, method, timeout, attempts, max_attempts, initial, max_wait,
                 uid, data, ts, trace, corr) in rows
        ]
        lows: dict[tuple[str, str], int] = {}
        for d in deliveries:
            key = (d.namespace, d.hex)
            if key not in lows:
                lows[key] = int(
                    self._rows("SELECT min(seq) FROM _dotdo_outbox WHERE namespace = ? AND hex = ?", *key)[0][0]
                )
        return deliveries, lows

    def delivered(self, seqs: Sequence[int], now: float) -> None:
        """Remove delivered rows; actions with nothing left to deliver are completed."""
        if not seqs:
            return
        marks = ",".join("?" * len(seqs))
        actions = self._write(f"DELETE FROM _dotdo_outbox WHERE seq IN ({marks}) RETURNING action", *seqs)
        self._settle({a for (a,) in actions}, now)

    def failed(self, delivery: Delivery, error: str, due: float | None, now: float) -> None:
        """Record a failed attempt: retry at ``due`` (and the receiver's later rows of
        the same path no earlier), or (None) move the row to the dead letters."""
        attempts = delivery.attempts + 1
        if due is not None:
            self._write(
                "UPDATE _dotdo_outbox SET attempts = ?, due = ?, last_error = ? WHERE seq = ?",
                attempts,
                due,
                error[:2000],
                delivery.seq,
            )
            self._write(
                "UPDATE _dotdo_outbox SET due = ? WHERE namespace = ? AND hex = ? AND path = ? AND seq > ? AND due < ?",
                due,
                delivery.namespace,
                delivery.hex,
                delivery.path,
                delivery.seq,
                due,
            )
            self._write(
                "UPDATE _dotdo_actions SET status = 'retrying', attempts = max(attempts, ?), error = ?, updated_at = ? "
                "WHERE id = ? AND status IN ('pending', 'retrying')",
                attempts,
                error[:2000],
                now,
                delivery.action,
            )
            return
        self._write(
            f"INSERT INTO _dotdo_dead_letters(seq, {_REPLAY_COLUMNS}, attempts, error, failed_at) "
            f"SELECT seq, {_REPLAY_COLUMNS}, ?, ?, ? FROM _dotdo_outbox WHERE seq = ?",
            attempts,
            error[:2000],
            now,
            delivery.seq,
        )
        self._write("DELETE FROM _dotdo_outbox WHERE seq = ?", delivery.seq)
        self._write(
            "UPDATE _dotdo_actions SET status = 'failed', attempts = max(attempts, ?), error = ?, updated_at = ? WHERE id = ?",
            attempts,
            error[:2000],
            now,
            delivery.action,
        )

    def _settle(self, actions: set[int], now: float) -> None:
        if not actions:
            return
        marks = ",".join("?" * len(actions))
        self._write(
            f"UPDATE _dotdo_actions SET status = 'completed', updated_at = ? WHERE id IN ({marks}) "
            "AND status IN ('pending', 'retrying') "
            "AND NOT EXISTS (SELECT 1 FROM _dotdo_outbox WHERE action = _dotdo_actions.id)",
            now,
            *actions,
        )

    def next_due(self) -> float | None:
        """When the earliest queued delivery is due, or None."""
        if not self.ready:
            return None
        rows = self._rows("SELECT min(due) FROM _dotdo_outbox")
        return rows[0][0]

    def queued(self) -> int:
        """How many deliveries are queued."""
        if not self.ready:
            return 0
        return int(self._rows("SELECT count(*) FROM _dotdo_outbox")[0][0])

    # -- dead letters ----------------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Deliveries given up on, oldest first."""
        if not self.ready:
            return []
        return [
            DeadLetter(*row)
            for row in self._rows(
                "SELECT id, seq, action, path, namespace, hex, name, method, attempts, error, failed_at "
                "FROM _dotdo_dead_letters ORDER BY id LIMIT ?",
                limit,
            )
        ]

    def replay(self, ids: Sequence[int] | None, now: float) -> int:
        """Queue dead letters (all, or those ``ids``) again, as new deliveries (new
        ``seq``) with a fresh count of attempts; returns how many."""
        if not self.ready:
            return 0
        where, bindings = "", ()
        if ids is not None:
            if not ids:
                return 0
            where = f"WHERE id IN ({','.join('?' * len(ids))})"
            bindings = tuple(ids)
        with self._db.transaction():
            count = self._changes(
                f"INSERT INTO _dotdo_outbox({_REPLAY_COLUMNS}, due, attempts) "
                f"SELECT {_REPLAY_COLUMNS}, ?, 0 FROM _dotdo_dead_letters {where} ORDER BY id",
                now,
                *bindings,
            )
            self._write(
                "UPDATE _dotdo_actions SET status = 'pending', updated_at = ? "
                f"WHERE id IN (SELECT action FROM _dotdo_dead_letters {where})",
                now,
                *bindings,
            )
            self._write(f"DELETE FROM _dotdo_dead_letters {where}", *bindings)
        return count

    # -- receiving -------------------------------------------------------------------

    def accept(self, sender: str, seq: int, low: int) -> bool:
        """Record the delivery ``(sender, seq)``; False if it was handled before.
        Forgets the sender's deliveries below ``low`` (it will not send them again)."""
        if not self._write("INSERT OR IGNORE INTO _dotdo_inbox(sender, seq) VALUES (?, ?) RETURNING seq", sender, seq):
            return False
        self._write("DELETE FROM _dotdo_inbox WHERE sender = ? AND seq < ?", sender, min(low, seq))
        return True

    # -- logs ------------------------------------------------------------------------

    def events(self, limit: int = 100, after: int = 0) -> list[EventRow]:
        """Events sent by this actor, oldest first, after the event ``after`` (its id)."""
        if not self.ready:
            return []
        return [
            EventRow(*row)
            for row in self._rows(
                "SELECT id, uid, verb, source, data, timestamp, trace_id, correlation_id FROM _dotdo_events "
                "WHERE id > ? ORDER BY id LIMIT ?",
                after,
                limit,
            )
        ]

    def actions(self, limit: int = 100, after: int = 0, durability: str | None = None) -> list[ActionRow]:
        """The actions log, oldest first."""
        if not self.ready:
            return []
        clause = "" if durability is None else " AND durability = ?"
        bindings: tuple[object, ...] = (after,) if durability is None else (after, durability)
        return [
            ActionRow(*row)
            for row in self._rows(
                f"SELECT {_ACTION_COLUMNS} FROM _dotdo_actions WHERE id > ?{clause} ORDER BY id LIMIT ?", *bindings, limit
            )
        ]

    # -- steps -----------------------------------------------------------------------

    def step(self, identity: str) -> ActionRow | None:
        """The durable step ``identity``, or None."""
        if not self.ready:
            return None
        rows = self._rows(f"SELECT {_ACTION_COLUMNS} FROM _dotdo_actions WHERE step = ?", identity)
        return ActionRow(*rows[0]) if rows else None

    def start(
        self,
        *,
        verb: str,
        actor: str,
        durability: str,
        data: bytes,
        now: float,
        step: str | None = None,
        policy: bytes | None = None,
        resume_at: float | None = None,
    ) -> int:
        """Record an operation as running; returns its action id. A step recorded
        before (running, retrying or failed) is taken over, attempts and all."""
        if step is not None:
            rows = self._write(
                "UPDATE _dotdo_actions SET status = 'running', resume_at = ?, policy = ?, updated_at = ? "
                "WHERE step = ? AND status != 'completed' RETURNING id",
                resume_at,
                policy,
                now,
                step,
            )
            if rows:
                return int(rows[0][0])
        rows = self._write(
            "INSERT INTO _dotdo_actions(verb, target, actor, input, durability, status, step, policy, resume_at, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?) RETURNING id",
            verb,
            actor,
            actor,
            data,
            durability,
            step,
            policy,
            resume_at,
            now,
            now,
        )
        return int(rows[0][0])

    def attempt_failed(self, action: int, error: str, now: float, resume_at: float | None) -> int:
        """Count a failed attempt (status ``retrying``); returns the attempts so far."""
        rows = self._write(
            "UPDATE _dotdo_actions SET status = 'retrying', attempts = attempts + 1, error = ?, resume_at = ?, "
            "updated_at = ? WHERE id = ? RETURNING attempts",
            error[:2000],
            resume_at,
            now,
            action,
        )
        return int(rows[0][0])

    def finish(self, action: int, *, output: bytes | None = None, error: str | None = None, now: float) -> None:
        """Record the end of an operation: completed with ``output``, or failed with ``error``."""
        status = "failed" if error is not None else "completed"
        self._write(
            "UPDATE _dotdo_actions SET status = ?, output = ?, error = coalesce(?, error), resume_at = NULL, "
            "attempts = attempts + 1, updated_at = ? WHERE id = ?",
            status,
            output,
            None if error is None else error[:2000],
            now,
            action,
        )

    def extend(self, action: int, resume_at: float) -> None:
        """Move a running step's resume time (it is alive and still running)."""
        self._write("UPDATE _dotdo_actions SET resume_at = ? WHERE id = ?", resume_at, action)

    def resumable(self, now: float, orphaned_before: float) -> list[ActionRow]:
        """Steps whose process may have died: running or retrying, due to resume at
        ``now``, or last recorded before ``orphaned_before`` (by a process that is gone)."""
        if not self.ready:
            return []
        return [
            ActionRow(*row)
            for row in self._rows(
                f"SELECT {_ACTION_COLUMNS} FROM _dotdo_actions WHERE resume_at <= ?1 "
                "OR (resume_at IS NOT NULL AND updated_at < ?2) ORDER BY resume_at",
                now,
                orphaned_before,
            )
        ]

    # -- subscriptions ---------------------------------------------------------------

    def subscriptions(self) -> list[SubscriptionRow]:
        """This actor's subscriptions."""
        if not self.ready:
            return []
        return [
            SubscriptionRow(*row)
            for row in self._rows("SELECT noun, verb, method, priority, timeout FROM _dotdo_subscriptions ORDER BY noun, verb, method")
        ]

    def subscribe(self, row: SubscriptionRow) -> bool:
        """Add or update a subscription; whether anything changed."""
        return (
            self._changes(
                "INSERT INTO _dotdo_subscriptions(noun, verb, method, priority, timeout) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(noun, verb, method) DO UPDATE SET priority = excluded.priority, timeout = excluded.timeout "
                "WHERE priority IS NOT excluded.priority OR timeout IS NOT excluded.timeout",
                row.noun,
                row.verb,
                row.method,
                row.priority,
                row.timeout,
            )
            > 0
        )

    def unsubscribe(self, noun: str, verb: str, method: str | None) -> int:
        """Remove subscriptions to ``noun.verb`` (of ``method``, or all); how many."""
        if not self.ready:
            return 0
        if method is None:
            return self._changes("DELETE FROM _dotdo_subscriptions WHERE noun = ? AND verb = ?", noun, verb)
        return self._changes(
            "DELETE FROM _dotdo_subscriptions WHERE noun = ? AND verb = ? AND method = ?", noun, verb, method
        )

    # -- what is pending -------------------------------------------------------------

    def pending(self) -> list[PendingItem]:
        """The outbox and the steps to resume, as items of the alarm index."""
        if not self.ready:
            return []
        items = []
        for item, kind, due in self._rows(
            "SELECT ?1, 'outbox', min(due) FROM _dotdo_outbox HAVING count(*) "
            "UNION ALL SELECT ?2, 'steps', min(resume_at) FROM _dotdo_actions WHERE resume_at IS NOT NULL HAVING count(*)",
            OUTBOX_ITEM,
            STEPS_ITEM,
        ):
            items.append(PendingItem(item, kind, None, due, 0))
        return items

    def due_at(self, now: float, orphaned_before: float = 0.0) -> bool:
        """Whether a delivery or a step to resume is due at ``now`` (see ``resumable``)."""
        if not self.ready:
            return False
        return bool(
            self._rows(
                "SELECT 1 WHERE EXISTS (SELECT 1 FROM _dotdo_outbox WHERE due <= ?1) "
                "OR EXISTS (SELECT 1 FROM _dotdo_actions WHERE resume_at <= ?1 "
                "OR (resume_at IS NOT NULL AND updated_at < ?2))",
                now,
                orphaned_before,
            )
        )
