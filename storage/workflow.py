"""One actor's workflow tables, as one store: ``WorkflowStore`` (``db.workflow``).

These tables are the ``workflow`` feature (``dotdo.storage.workflow_tables``): built the first
time an actor sends, receives, subscribes or runs a step. Everything here runs inside the
actor's turn and commits with it, which is what makes ``send`` durable: the event, its
action and one outbox row per subscriber are written in the turn's own commit, or not
at all.

The store gathers the parts, each in its module:

- ``dotdo.storage.outbox``: the event log, the outbox, its dead letters, and the inbox that
  de-duplicates deliveries;
- ``dotdo.storage.steps``: the actions log and the durable steps recorded in it;
- here: the actor's subscriptions (the truth behind the shared subscription index,
  ``dotdo.storage.subscriptions``), and what is pending for the alarm index.
"""

from __future__ import annotations

from dataclasses import dataclass

from dotdo.storage.alarms import PendingItem
from dotdo.storage.outbox import OUTBOX_ITEM, Outbox
from dotdo.storage.steps import STEPS_ITEM, Steps


@dataclass(frozen=True, slots=True)
class SubscriptionRow:
    """One subscription of this actor: events ``noun.verb`` (either may be ``*``) run
    ``method``."""

    noun: str
    verb: str
    method: str
    priority: int
    timeout: float | None


class WorkflowStore(Outbox, Steps):
    """The workflow tables of one ``ActorDatabase`` (``db.workflow``)."""

    __slots__ = ()

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
