"""The store of the workflow tables (``dotdo.storage.workflow``): an actor's subscriptions; and
the shared subscription index and the steps of a turn, which the workflow builds on."""

from __future__ import annotations

from pathlib import Path

import pytest

from dotdo.storage.database import ActorDatabase
from dotdo.storage.subscriptions import Subscription, SubscriptionIndex
from dotdo.storage.workflow import SubscriptionRow


def test_subscriptions_of_an_actor(db: ActorDatabase) -> None:
    row = SubscriptionRow("Customer", "*", "audit", 2, 5.0)
    assert db.workflow.subscribe(row)
    assert not db.workflow.subscribe(row)  # unchanged
    assert db.workflow.subscribe(SubscriptionRow("Customer", "*", "audit", 3, None))
    assert db.workflow.subscriptions() == [SubscriptionRow("Customer", "*", "audit", 3, None)]
    assert db.workflow.unsubscribe("Customer", "*", None) == 1


def test_the_subscription_index_sees_other_connections_writes(tmp_path: Path) -> None:
    first = SubscriptionIndex.open(tmp_path)
    second = SubscriptionIndex.open(tmp_path)
    try:
        assert second.matching("Customer", "created") == []
        sub = Subscription("Customer", "*", "Mailer", "c" * 64, "m", "welcome", 0, None)
        first.add(sub)
        assert second.matching("Customer", "created") == [sub]
        assert second.matching("Order", "created") == []
        star = Subscription("*", "created", "Audit", "d" * 64, None, "note", 1, 2.0)
        first.add(star)
        assert second.matching("Order", "created") == [star]
        first.replace("Mailer", "c" * 64, [])
        assert second.matching("Customer", "created") == [star]
        assert first.of_actor("Audit", "d" * 64) == [star]
    finally:
        first.close()
        second.close()


def test_a_step_rolls_back_alone_and_an_output_point_inside_commits_what_came_before(db: ActorDatabase) -> None:
    with db.turn():
        db.kv.put("before", 1)
        with pytest.raises(ValueError):
            with db.step():
                db.kv.put("failed", 1)
                raise ValueError
        with db.step():
            db.kv.put("kept", 1)
        with pytest.raises(ValueError):
            with db.step():
                db.kv.put("committed", 1)
                db.commit()  # an output point inside the step: everything so far is durable
                db.kv.put("lost", 1)
                raise ValueError
    assert {k: db.kv.get(k) for k in ("before", "failed", "kept", "committed", "lost")} == {
        "before": 1,
        "failed": None,
        "kept": 1,
        "committed": 1,
        "lost": None,
    }


def test_steps_are_only_for_turns_and_do_not_nest(db: ActorDatabase) -> None:
    from dotdo.storage.errors import TransactionError

    with pytest.raises(TransactionError):
        with db.step():
            pass
    with db.turn():
        with db.step():
            with pytest.raises(TransactionError):
                with db.step():
                    pass
