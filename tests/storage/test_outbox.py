"""The sending side of the workflow tables (``dotdo.storage.outbox``): the order deliveries
are taken in, retries and dead letters, sequence numbers, and the inbox."""

from __future__ import annotations

from dotdo.storage.database import ActorDatabase
from dotdo.storage.outbox import OUTBOX_ITEM, RetryPolicy, Target

POLICY = RetryPolicy(3, 0.1, 1.0)
_uids = iter(range(10**6))


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
