"""Sending: the event log, the outbox with its dead letters, and the inbox at the
receiving end (part of ``WorkflowStore``, ``dotdo.storage.workflow``).

``record_send`` writes the event, its action and one outbox row per subscriber in the
current transaction, so a send commits with the turn that made it, or not at all. The
outbox hands out deliveries in order (``take``), removes them once delivered, and moves
them to the dead letters once given up on; the receiver's inbox drops a delivery it
handled before, by the sender's ``seq`` (never reused).

Values (event data) arrive already encoded (bytes); this module stores them and does not
look inside. Times are epoch seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import apsw

from dotdo.storage.errors import translate
from dotdo.storage.workflow_tables import WorkflowTables

OUTBOX_ITEM = "\x00outbox"
"""The outbox's item in the alarm index (schedule names cannot hold NUL)."""


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


_DELIVERY_COLUMNS = (
    "o.seq, o.action, o.path, o.namespace, o.hex, o.name, o.method, o.timeout, o.attempts, "
    "o.max_attempts, o.initial, o.max_wait, e.uid, e.data, e.timestamp, e.trace_id, e.correlation_id"
)
_REPLAY_COLUMNS = "action, event, path, namespace, hex, name, method, priority, rank, timeout, max_attempts, initial, max_wait"


class Outbox(WorkflowTables):
    """The sending side of the workflow tables, and the inbox."""

    __slots__ = ()

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

    def queued(self) -> int:
        """How many deliveries are queued."""
        if not self.ready:
            return 0
        return int(self._rows("SELECT count(*) FROM _dotdo_outbox")[0][0])

    # -- the event log ---------------------------------------------------------------

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
        where = ""
        bindings: tuple[int, ...] = ()
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
