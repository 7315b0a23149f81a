"""The call path (dotdo.runtime.core.turns): one turn at a time, the output gate, rollback,
reentrancy, deadlines, on_start."""

from pathlib import Path

import pytest
import trio
import trio.testing

from dotdo import DO, ActorError, CallTimeout, DeadlockError, DotdoError, InvalidValue, Overloaded
from dotdo.runtime.supervisor import Supervisor
from tests.runtime.kinds import KINDS, Flaky


async def test_turns_are_one_at_a_time(sup: Supervisor) -> None:
    box = sup.S.Box("counter")
    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(box.increment_slowly)
    assert await box.get("n") == 50


async def test_turns_run_in_arrival_order(sup: Supervisor) -> None:
    box = sup.S.Box("order")
    order = []

    async def caller(i: int) -> None:
        await box.echo(i)
        order.append(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.sleep, 0.05)
        await trio.sleep(0.01)  # the gate is now held; the rest queue
        for i in range(10):
            nursery.start_soon(caller, i)
            await trio.sleep(0.001)
    assert order == list(range(10))


async def test_a_raising_handler_rolls_back_and_the_actor_keeps_serving(sup: Supervisor) -> None:
    box = sup.S.Box("a")
    with pytest.raises(ActorError) as info:
        await box.put_then_fail("k", 1)
    assert info.value.remote_type == "ValueError"
    assert "boom after writing" in str(info.value)
    assert await box.get("k") is None
    await box.put("k", 2)
    assert await box.get("k") == 2


async def test_writes_are_committed_before_an_outgoing_call(sup: Supervisor) -> None:
    # The callee looks at the caller's database while the caller's turn waits for it.
    assert await sup.S.Box("a").put_and_call("k", 1, "Prober", "p", "uncommitted_of", "a") is False


async def test_writes_before_an_outgoing_call_survive_a_later_failure(sup: Supervisor) -> None:
    box = sup.S.Box("a")
    with pytest.raises(ActorError, match="failed after the call"):
        await box.put_call_then_fail("k", 1, "b")
    assert await box.get("k") == 1  # committed at the output point
    assert await box.get("k.after") is None  # written after it, rolled back


async def test_a_callback_sees_the_write(sup: Supervisor) -> None:
    # A writes, calls B, B calls back A (same chain: admitted) and reads the write.
    result = await sup.S.Box("a").put_and_call("k", "seen", "Box", "b", "call_other", "Box", "a", "get", "k")
    assert result == "seen"


async def test_reentrancy_a_b_a(sup: Supervisor) -> None:
    value = await sup.S.Box("a").call_other("Box", "b", "call_other", "Box", "a", "echo", 7)
    assert value == 7


async def test_a_true_deadlock_is_reported(sup: Supervisor) -> None:
    # a and b each start a turn (two chains), then each calls the other: a cycle.
    a, b = sup.S.Box("a"), sup.S.Box("b")
    errors: list[BaseException] = []

    async def call(me: object, other: str) -> None:
        try:
            await me.call_other("Box", other, "echo", 1)  # type: ignore[attr-defined]
        except DotdoError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, a, "b")
        nursery.start_soon(call, b, "a")
    assert len(errors) == 1  # one chain is refused; the other then completes
    error = errors[0]
    assert isinstance(error, DeadlockError)
    assert "Box/a" in str(error) and "Box/b" in str(error)
    assert set(error.chain) == {"Box/a", "Box/b"}


async def test_a_busy_actor_makes_waiting_callers_time_out(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with Supervisor(KINDS, tmp_path, call_timeout=1.0) as sup:
        box = sup.S.Box("busy")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.call, box.id, "sleep", (0.9,))
            await trio.sleep(0.1)
            with pytest.raises(CallTimeout, match="waited until its deadline") as info:
                await sup.call(box.id, "echo", (1,), timeout=0.5)
            assert not isinstance(info.value, DeadlockError)


async def test_a_handler_past_its_deadline_is_cancelled_and_rolled_back(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with Supervisor(KINDS, tmp_path, call_timeout=1.0) as sup:
        box = sup.S.Box("slow")
        with pytest.raises(CallTimeout, match="within 1 s"):
            await box.sleep(5)
        with pytest.raises(CallTimeout, match="within 0.5 s"):
            await box.quick(2)  # @rpc(timeout=0.5)
        assert await box.quick(0.1) == "done"
        assert await box.echo("still serving") == "still serving"


async def test_overload_refuses_quickly(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with Supervisor(KINDS, tmp_path, max_mailbox=3) as sup:
        box = sup.S.Box("hot")
        results: list[object] = []

        async def call() -> None:
            try:
                results.append(await box.echo(1))
            except Overloaded as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(box.sleep, 1)
            await trio.sleep(0.1)
            for _ in range(5):
                nursery.start_soon(call)
        assert results.count(1) == 3
        assert sum(isinstance(r, Overloaded) for r in results) == 2


async def test_an_unsendable_result_is_an_error_and_rolls_back(sup: Supervisor) -> None:
    box = sup.S.Box("a")
    with pytest.raises(InvalidValue, match="type set"):
        await box.returns_unsendable()
    assert await box.get("written") is None


async def test_on_start_runs_once_per_activation_as_a_turn(tmp_path: Path) -> None:
    Flaky.starts = 0
    async with Supervisor(KINDS, tmp_path) as sup:
        flaky = sup.S.Flaky("f")
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(flaky.ping)
        assert Flaky.starts == 1
        sup.passivate(flaky.id)
        assert await flaky.ping() == "pong"
        assert Flaky.starts == 2


async def test_a_failing_on_start_fails_the_queued_calls_and_is_retried_later(tmp_path: Path) -> None:
    Flaky.starts = 0
    async with Supervisor(KINDS, tmp_path, env={"flaky": "fail"}) as sup:
        flaky = sup.S.Flaky("f")
        errors: list[BaseException] = []

        async def ping() -> None:
            try:
                await flaky.ping()
            except ActorError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(ping)
        assert len(errors) == 3
        assert all("cannot start" in str(e) for e in errors)
        assert Flaky.starts == 1
        assert not sup.is_active(flaky.id)
        with pytest.raises(ActorError):
            await flaky.ping()
        assert Flaky.starts == 2
    async with Supervisor(KINDS, tmp_path) as sup:
        assert await sup.S.Flaky("f").ping() == "pong"


class Ledger(DO):
    """Entries that must name an account: foreign keys, checked at once or at the commit."""

    async def on_start(self) -> None:
        self.sql.exec(
            "CREATE TABLE IF NOT EXISTS accounts(id TEXT PRIMARY KEY);"
            "CREATE TABLE IF NOT EXISTS entries(account TEXT NOT NULL REFERENCES accounts(id), amount INTEGER)"
        )

    async def post(self, account: str, amount: int, *, open_after: bool = False, defer: bool = True) -> int:
        self.storage.put("posted", True)
        if defer:
            self.sql.exec("PRAGMA defer_foreign_keys = ON")
        self.sql.exec("INSERT INTO entries VALUES (?, ?)", account, amount)
        if open_after:
            self.sql.exec("INSERT INTO accounts VALUES (?)", account)
        return len(self.sql.exec("SELECT * FROM entries"))

    async def state(self) -> list[object]:
        return [self.storage.get("posted"), [tuple(r) for r in self.sql.exec("SELECT * FROM entries").raw()]]


async def test_a_turn_whose_deferred_foreign_keys_fail_at_its_commit_is_rolled_back(tmp_path: Path) -> None:
    async with Supervisor([Ledger], tmp_path) as sup:
        ledger = sup.S.Ledger("books")
        assert await ledger.post("cash", 5, open_after=True) == 1  # resolved before the commit
        with pytest.raises(DotdoError) as caught:
            await ledger.post("bank", 7)  # never opened
        assert type(caught.value).__name__ == "SqlError"
        assert "FOREIGN KEY constraint failed" in str(caught.value) and "rolled back" in str(caught.value)
        with pytest.raises(DotdoError, match="FOREIGN KEY constraint failed"):
            await ledger.post("bank", 7, defer=False)  # checked at once
        assert await ledger.state() == [True, [["cash", 5]]]  # values are copied as lists
