"""The workflow tables (``storage.workflow``), the feature mechanism that builds them on
first use, and the shared subscription index."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import ActorDatabase, Address
from storage.subscriptions import Subscription, SubscriptionIndex
from storage.workflow import OUTBOX_ITEM, RetryPolicy, SubscriptionRow, Target

POLICY = RetryPolicy(3, 0.1, 1.0)
_uids = iter(range(10**6))


def tables(db: ActorDatabase) -> set[str]:
    return {row[0] for row in db.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def send(db: ActorDatabase, path: str, targets: list[Target], *, now: float = 100.0, priority: int = 0, due: float | None = None) -> int:
    return db.workflow.record_send(
        uid=f"u{next(_uids)}",
        path=path,
        source="Test/one",
        data=b"\xc0",
        now=now,
        due=now if due is None else due,
        priority=priority,
        policy=POLICY,
        trace_id=None,
        correlation_id=None,
        targets=targets,
    )


A = Target("R", "a" * 64, "a", "handle", 0, None)
B = Target("R", "b" * 64, "b", "handle", 0, None)


def test_a_database_that_never_uses_the_workflow_has_none_of_its_tables(db: ActorDatabase) -> None:
    assert "_dotdo_outbox" not in tables(db)
    # Reads find nothing and build nothing.
    assert db.workflow.take(0, 10) == ([], {})
    assert db.workflow.pending() == [] and db.workflow.subscriptions() == [] and not db.workflow.due_at(1e12)
    assert "_dotdo_outbox" not in tables(db)
    send(db, "X.y", [])
    assert {"_dotdo_events", "_dotdo_actions", "_dotdo_outbox", "_dotdo_inbox"} <= tables(db)


def test_tables_built_in_a_turn_that_rolls_back_are_built_again(db: ActorDatabase) -> None:
    db.begin_turn()
    send(db, "X.y", [A])
    db.rollback()
    db.end_turn()
    assert "_dotdo_outbox" not in tables(db)
    assert not db.has("workflow")
    with db.turn():
        send(db, "X.y", [A])
    assert db.workflow.queued() == 1


def test_tables_built_in_a_savepoint_that_rolls_back_are_built_again(db: ActorDatabase) -> None:
    with db.turn():
        with pytest.raises(ValueError):
            with db.transaction():
                send(db, "X.y", [A])
                raise ValueError
        send(db, "X.y", [A])
    assert db.workflow.queued() == 1


def test_the_feature_survives_reopening(tmp_path: Path) -> None:
    with ActorDatabase.open(tmp_path, Address("Test", "one")) as db:
        send(db, "X.y", [A])
    with ActorDatabase.open(tmp_path, Address("Test", "one")) as db:
        assert db.workflow.queued() == 1
        assert db.has("workflow")


def test_a_newer_feature_version_is_refused(tmp_path: Path) -> None:
    with ActorDatabase.open(tmp_path, Address("Test", "one")) as db:
        send(db, "X.y", [])
        db.connection.execute("UPDATE _dotdo_meta SET value = 99 WHERE key = 'schema.workflow'")
    with ActorDatabase.open(tmp_path, Address("Test", "one")) as db:
        with pytest.raises(Exception, match="newer than this dotdo"):
            db.workflow.queued()


def test_take_orders_by_priority_then_sequence_and_gives_each_receiver_its_low_mark(db: ActorDatabase) -> None:
    send(db, "X.low", [A, B], priority=0)
    send(db, "X.high", [A], priority=5)
    send(db, "X.later", [A], due=500.0)
    deliveries, lows = db.workflow.take(100.0, 10)
    assert [(d.path, d.hex[0]) for d in deliveries] == [("X.high", "a"), ("X.low", "a"), ("X.low", "b")]
    assert lows == {("R", "a" * 64): deliveries[1].seq, ("R", "b" * 64): deliveries[2].seq}
    assert db.workflow.pending()[0].item == OUTBOX_ITEM and db.workflow.pending()[0].due == 100.0


def test_a_failure_holds_back_later_events_of_the_same_path_to_that_receiver(db: ActorDatabase) -> None:
    for i in range(3):
        send(db, "X.step", [A, B], now=100.0 + i)
    deliveries, _ = db.workflow.take(200.0, 10)
    first_to_a = next(d for d in deliveries if d.hex[0] == "a")
    db.workflow.failed(first_to_a, "boom", 300.0, 200.0)
    deliveries, _ = db.workflow.take(200.0, 10)
    assert {d.hex[0] for d in deliveries} == {"b"}  # a's later events wait for the retry
    deliveries, _ = db.workflow.take(300.0, 10)
    assert [d.seq for d in deliveries if d.hex[0] == "a"] == sorted(d.seq for d in deliveries if d.hex[0] == "a")
    assert deliveries[0].attempts == 1


def test_delivered_rows_complete_their_action_and_dead_letters_fail_it(db: ActorDatabase) -> None:
    send(db, "X.y", [A, B])
    deliveries, _ = db.workflow.take(100.0, 10)
    db.workflow.delivered([deliveries[0].seq], 101.0)
    assert db.workflow.actions()[0].status == "pending"  # one receiver still to go
    db.workflow.failed(deliveries[1], "gone", None, 102.0)
    [dead] = db.workflow.dead_letters()
    assert (dead.path, dead.hex, dead.attempts, dead.error) == ("X.y", B.hex, 1, "gone")
    assert db.workflow.actions()[0].status == "failed"
    assert db.workflow.replay(None, 103.0) == 1
    assert db.workflow.dead_letters() == []
    [again], _ = db.workflow.take(103.0, 10)
    assert again.seq > deliveries[1].seq and again.attempts == 0
    db.workflow.delivered([again.seq], 104.0)
    assert db.workflow.actions()[0].status == "completed"


def test_sequence_numbers_are_never_reused(db: ActorDatabase) -> None:
    send(db, "X.y", [A])
    [first], _ = db.workflow.take(100.0, 10)
    db.workflow.delivered([first.seq], 100.0)
    send(db, "X.y", [A])
    [second], _ = db.workflow.take(100.0, 10)
    assert second.seq > first.seq


def test_the_inbox_drops_repeats_and_forgets_below_the_low_mark(db: ActorDatabase) -> None:
    inbox = db.workflow
    assert inbox.accept("S/1", 5, 5)
    assert not inbox.accept("S/1", 5, 5)
    assert inbox.accept("S/1", 6, 5)
    assert inbox.accept("S/2", 5, 5)  # another sender's 5
    assert inbox.accept("S/1", 9, 9)  # 5 and 6 were acknowledged: forgotten
    rows = db.connection.execute("SELECT sender, seq FROM _dotdo_inbox ORDER BY sender, seq").fetchall()
    assert rows == [("S/1", 9), ("S/2", 5)]


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
    from storage import TransactionError

    with pytest.raises(TransactionError):
        with db.step():
            pass
    with db.turn():
        with db.step():
            with pytest.raises(TransactionError):
                with db.step():
                    pass
