"""Steps: ``S.try_`` and ``S.do`` (recorded, retried, resumed, never run twice)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from dotdo import DO, ActorError, CallTimeout, InvalidInput, Retry
from dotdo.runtime.supervisor import Supervisor

T0 = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.timezone.utc).timestamp()


def wall() -> float:
    return T0 + trio.current_time()


FAST = {"clock": wall, "step_lease": 5.0, "step_retry_initial": 0.1, "step_retry_max": 1.0}


class Orders(DO):
    runs: dict[str, int]
    failures: int
    hang: bool

    def __init__(self) -> None:
        self.runs = {}  # in memory: counts every try, rolled back or not
        self.failures = 0
        self.hang = False

    async def charge(self, data: dict[str, Any]) -> dict[str, Any]:
        self.runs["charge"] = self.runs.get("charge", 0) + 1
        self.storage.put(f"charged:{data['order']}", data["amount"])
        if self.hang:
            await trio.sleep_forever()
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("card declined")
        return {"receipt": f"r-{data['order']}", "amount": data["amount"]}

    def _not_async(self) -> None:
        return None

    async def checkout(self, order: str, amount: int, key: str | None = None) -> dict[str, Any]:
        result = await self.S.do(self.charge, {"order": order, "amount": amount}, key=key)
        self.storage.put("last", result)
        return result

    async def checkout_policy(self, order: str, attempts: int) -> Any:
        return await self.S.do("charge", {"order": order, "amount": 1}, retry=Retry(attempts=attempts, initial=0.1))

    async def attempt(self, order: str, timeout: float | None = None) -> Any:
        return await self.S.try_(self.charge, {"order": order, "amount": 2}, timeout=timeout)

    async def plan(self, failures: int = 0, hang: bool = False) -> None:
        self.failures = failures
        self.hang = hang

    async def count(self) -> dict[str, int]:
        return self.runs

    async def charged(self, order: str) -> Any:
        return self.storage.get(f"charged:{order}")

    async def actions(self) -> list[list[Any]]:
        return [[a.verb, a.durability, a.status, a.step, a.attempts, a.error] for a in self.S.actions()]

    async def bad(self, what: str) -> None:
        if what == "missing":
            await self.S.do("nope")
        elif what == "sync":
            await self.S.do("_not_async")
        elif what == "key":
            await self.S.do(self.charge, {}, key=[1])  # type: ignore[arg-type]
        elif what == "timeout":
            await self.S.try_(self.charge, {}, timeout=-1)
        elif what == "retry":
            await self.S.do(self.charge, {}, retry=3)  # type: ignore[arg-type]


async def test_a_completed_step_is_not_run_again(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor([Orders], tmp_path, **FAST) as sup:
        orders = sup.S.Orders("o")
        first = await orders.checkout("a1", 10)
        assert first == {"receipt": "r-a1", "amount": 10}
        again = await orders.checkout("a1", 99)  # same step: the recorded result
        assert again == first
        assert await orders.count() == {"charge": 1}
        other = await orders.checkout("b2", 5, key="b2")  # another key: another step
        assert other["receipt"] == "r-b2"
        assert await orders.count() == {"charge": 2}
        actions = await orders.actions()
        assert [a[:5] for a in actions] == [["charge", "do", "completed", "charge", 1], ["charge", "do", "completed", "charge#b2", 1]]
    async with Supervisor([Orders], tmp_path, **FAST) as sup:  # also after a restart
        assert await sup.S.Orders("o").checkout("a1", 1) == first
        assert await sup.S.Orders("o").count() == {}


async def test_failed_tries_are_rolled_back_and_retried(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor([Orders], tmp_path, **FAST) as sup:
        orders = sup.S.Orders("o")
        await orders.plan(failures=2)
        started = wall()
        assert (await orders.checkout("c3", 7))["receipt"] == "r-c3"
        assert await orders.count() == {"charge": 3}
        assert wall() - started >= 0.1 + 0.2
        actions = await orders.actions()
        assert actions[0][:5] == ["charge", "do", "completed", "charge", 3]


async def test_a_step_that_keeps_failing_is_recorded_and_raised(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor([Orders], tmp_path, **FAST) as sup:
        orders = sup.S.Orders("o")
        await orders.plan(failures=10)
        with pytest.raises(ActorError, match="card declined"):
            await orders.checkout_policy("d4", 2)
        assert await orders.count() == {"charge": 2}
        assert await orders.charged("d4") is None  # each failed try was rolled back
        [action] = await orders.actions()
        assert action[:5] == ["charge", "do", "failed", "charge", 2]
        assert "card declined" in action[5]
        await orders.plan(failures=0)  # a failed step may be asked for again
        assert (await orders.checkout_policy("d4", 2))["receipt"] == "r-d4"


async def test_a_step_cut_short_by_a_crash_is_resumed_after_restart(autojump_clock: MockClock, tmp_path: Path) -> None:
    with trio.CancelScope() as crash:
        async with Supervisor([Orders], tmp_path, **FAST) as sup:
            orders = sup.S.Orders("o")
            await orders.plan(hang=True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(orders.checkout, "e5", 3)
                await trio.sleep(1)
                crash.cancel()  # the server dies while the step runs
    async with Supervisor([Orders], tmp_path, **FAST) as sup:
        orders = sup.S.Orders("o")
        with trio.fail_after(2):  # resumed at start-up, not at the end of its lease
            while await orders.charged("e5") is None:
                await trio.sleep(0.01)
        assert await orders.count() == {"charge": 1}  # ran once in this process
        assert (await orders.actions())[0][:4] == ["charge", "do", "completed", "charge"]
        assert (await orders.checkout("e5", 3))["receipt"] == "r-e5"  # the recorded result
        assert await orders.count() == {"charge": 1}


async def test_a_step_whose_turn_timed_out_is_resumed_at_its_lease(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor([Orders], tmp_path, call_timeout=1.0, **FAST) as sup:
        orders = sup.S.Orders("o")
        await orders.plan(hang=True)
        with pytest.raises(Exception, match="did not finish"):
            await orders.checkout("f6", 4)
        await orders.plan(hang=False)
        started = wall()
        with trio.fail_after(30):
            while await orders.charged("f6") is None:
                await trio.sleep(0.05)
        assert wall() - started <= FAST["step_lease"] + 1
        assert (await orders.actions())[0][2] == "completed"


async def test_try_runs_once_and_is_recorded(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor([Orders], tmp_path, **FAST) as sup:
        orders = sup.S.Orders("o")
        assert (await orders.attempt("g7"))["amount"] == 2
        await orders.plan(failures=1)
        with pytest.raises(ActorError, match="card declined"):
            await orders.attempt("h8")
        assert await orders.charged("h8") is None
        await orders.plan(hang=True)
        with pytest.raises(CallTimeout, match="did not finish within 0.5"):
            await orders.attempt("i9", timeout=0.5)
        actions = await orders.actions()
        assert [a[1:3] for a in actions] == [["try", "completed"], ["try", "failed"], ["try", "failed"]]
        assert await orders.count() == {"charge": 3}


@pytest.mark.parametrize("what", ["missing", "sync", "key", "timeout", "retry"])
async def test_bad_steps_are_refused(autojump_clock: MockClock, tmp_path: Path, what: str) -> None:
    async with Supervisor([Orders], tmp_path, **FAST) as sup:
        with pytest.raises(InvalidInput):
            await sup.S.Orders("o").bad(what)
        assert await sup.S.Orders("o").actions() == []
