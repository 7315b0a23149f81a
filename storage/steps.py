"""The actions log and the durable steps recorded in it (part of ``WorkflowStore``,
``dotdo.storage.workflow``).

Every operation has a row in ``_dotdo_actions``: a send (written by ``dotdo.storage.outbox``)
and each ``try`` or ``do``. A durable step is a row with a ``step`` identity: started as
running, counted when an attempt fails, finished as completed or failed; its
``resume_at`` is when to resume it should its process die, and the alarm index holds
that time under ``STEPS_ITEM``.

Values (step input and output, the retry policy) arrive already encoded (bytes); this
module stores them and does not look inside. Times are epoch seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from dotdo.storage.workflow_tables import WorkflowTables


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


_ACTION_COLUMNS = (
    "id, verb, target, actor, input, output, error, durability, status, step, attempts, policy, resume_at, created_at, updated_at"
)

STEPS_ITEM = "\x00steps"
"""Durable steps to resume, in the alarm index."""


class Steps(WorkflowTables):
    """The actions log and its durable steps."""

    __slots__ = ()

    # -- the actions log -------------------------------------------------------------

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
