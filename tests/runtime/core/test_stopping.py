"""Turns stopped on purpose: ``self.abort(reason)`` (Durable Objects' ``ctx.abort()``), the
CPU-time limit of a turn, and a turn that outlived its deadline without awaiting."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from dotdo import DO, Aborted, CallTimeout, CpuLimitExceeded, DotdoError
from dotdo.runtime.core.cpu import CpuWatch
from dotdo.runtime.supervisor import Supervisor


class Resettable(DO):
    """Counts, and can abort, spin or overrun."""

    async def on_start(self) -> None:
        self.starts = (self.storage.get("starts") or 0) + 1
        self.storage.put("starts", self.starts)
        self.memory = 0  # lives in the instance only

    async def bump(self) -> dict[str, int]:
        self.memory += 1
        n = (self.storage.get("n") or 0) + 1
        self.storage.put("n", n)
        return {"n": n, "memory": self.memory, "starts": self.starts}

    async def bump_then_abort(self, reason: str) -> None:
        self.storage.put("n", 1000)
        self.abort(reason)

    async def abort_and_swallow(self) -> str:
        self.storage.put("n", 2000)
        try:
            self.abort("swallowed")
        except BaseException:
            pass
        return "kept going"

    async def spin(self, seconds: float) -> str:
        self.storage.put("n", 3000)
        end = time.process_time() + seconds
        x = 0
        while time.process_time() < end:
            x += 1
        return "done"

    async def spin_catching(self, seconds: float) -> str:
        self.storage.put("n", 4000)
        end = time.process_time() + seconds
        while time.process_time() < end:
            try:
                while time.process_time() < end:
                    pass
            except Exception:
                pass  # an Exception handler does not see the stop
        return "done"

    async def spin_with_awaits(self, seconds: float) -> str:
        end = time.process_time() + seconds
        while time.process_time() < end:
            busy = time.process_time() + 0.01
            while time.process_time() < busy:
                pass
            await trio.sleep(0)
        return "done"

    async def block(self, seconds: float) -> str:
        self.storage.put("n", 5000)
        time.sleep(seconds)  # no await: the call's deadline cannot interrupt it
        return "done"

    async def call_spinner(self, name: str, seconds: float) -> str:
        try:
            await self.S.Resettable(name).spin(seconds)
        except CpuLimitExceeded as exc:
            return f"caught: {type(exc).__name__}"
        return "not stopped"


async def test_abort_rolls_back_resets_the_instance_and_tells_the_caller(tmp_path: Path) -> None:
    async with Supervisor([Resettable], tmp_path) as sup:
        stub = sup.S.Resettable("r")
        assert await stub.bump() == {"n": 1, "memory": 1, "starts": 1}
        with pytest.raises(Aborted, match="the actor aborted: broken invariant") as caught:
            await stub.bump_then_abort("broken invariant")
        assert caught.value.reason == "broken invariant"
        assert not sup.is_active(stub.id)  # the activation ended
        # A fresh instance (on_start again, memory gone); the aborted write rolled back.
        assert await stub.bump() == {"n": 2, "memory": 1, "starts": 2}


async def test_an_abort_caught_by_the_actor_still_does_not_commit(tmp_path: Path) -> None:
    async with Supervisor([Resettable], tmp_path) as sup:
        stub = sup.S.Resettable("r")
        with pytest.raises(Aborted, match="swallowed"):
            await stub.abort_and_swallow()
        assert (await stub.bump())["n"] == 1


async def test_abort_outside_a_turn_of_the_actor_is_refused(tmp_path: Path) -> None:
    instance = Resettable()
    with pytest.raises(DotdoError, match="inside one"):
        instance.abort("no turn")


async def test_calls_waiting_for_an_aborted_actor_are_told_to_retry(tmp_path: Path) -> None:
    async with Supervisor([Resettable], tmp_path) as sup:
        stub = sup.S.Resettable("r")
        outcomes: list[str] = []

        async def aborting() -> None:
            try:
                await stub.spin_with_awaits(0.05)
                await stub.bump_then_abort("now")
            except Aborted:
                outcomes.append("aborted")

        async def waiting() -> None:
            await trio.sleep(0.01)
            try:
                await stub.bump()
                outcomes.append("served")
            except DotdoError as exc:
                outcomes.append(type(exc).__name__)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(aborting)
            nursery.start_soon(waiting)
        assert "aborted" in outcomes and len(outcomes) == 2
        assert (await stub.bump())["n"] >= 1  # and the actor serves again


async def test_a_turn_past_its_cpu_limit_is_stopped_and_rolled_back(tmp_path: Path) -> None:
    async with Supervisor([Resettable], tmp_path, cpu_limit=0.3, call_timeout=30) as sup:
        stub = sup.S.Resettable("r")
        await stub.bump()
        started = time.process_time()
        with pytest.raises(CpuLimitExceeded, match="more than 0.3 s of CPU"):
            await stub.spin(5.0)
        assert time.process_time() - started < 2.0  # stopped near the limit, not after 5 s
        assert not sup.is_active(stub.id)
        assert await stub.bump() == {"n": 2, "memory": 1, "starts": 2}  # its write rolled back


async def test_the_cpu_limit_cannot_be_caught_by_the_actor(tmp_path: Path) -> None:
    async with Supervisor([Resettable], tmp_path, cpu_limit=0.3) as sup:
        stub = sup.S.Resettable("r")
        with pytest.raises(CpuLimitExceeded):
            await stub.spin_catching(3.0)
        assert (await stub.bump())["n"] == 1


async def test_cpu_time_across_awaits_counts_toward_the_limit(tmp_path: Path) -> None:
    async with Supervisor([Resettable], tmp_path, cpu_limit=0.3) as sup:
        with pytest.raises(CpuLimitExceeded):
            await sup.S.Resettable("r").spin_with_awaits(3.0)
        assert await sup.S.Resettable("fine").spin_with_awaits(0.05) == "done"  # under the limit


async def test_a_nested_turn_past_the_limit_stops_alone(tmp_path: Path) -> None:
    async with Supervisor([Resettable], tmp_path, cpu_limit=0.3) as sup:
        outer = sup.S.Resettable("outer")
        assert await outer.call_spinner("inner", 3.0) == "caught: CpuLimitExceeded"
        assert sup.is_active(outer.id)  # the caller's turn went on and committed
        assert not sup.is_active(sup.S.Resettable("inner").id)


async def test_no_limit_when_none_and_the_timer_is_restored(tmp_path: Path) -> None:
    previous = signal.getsignal(signal.SIGPROF)
    async with Supervisor([Resettable], tmp_path, cpu_limit=None) as sup:
        assert signal.getsignal(signal.SIGPROF) is previous
        assert await sup.S.Resettable("r").spin(0.2) == "done"
    async with Supervisor([Resettable], tmp_path, cpu_limit=5) as sup:
        assert signal.getsignal(signal.SIGPROF) is not previous
        assert signal.getitimer(signal.ITIMER_PROF)[1] == pytest.approx(0.1)
    assert signal.getsignal(signal.SIGPROF) is previous
    assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)


def test_the_tick_is_a_tenth_of_a_short_limit() -> None:
    assert CpuWatch(0.5).tick == pytest.approx(0.05)
    assert CpuWatch(30).tick == pytest.approx(0.1)
    assert CpuWatch(None).limit is None and CpuWatch(float("inf")).limit is None


async def test_a_turn_that_outlived_its_deadline_without_awaiting_is_rolled_back(tmp_path: Path) -> None:
    async with Supervisor([Resettable], tmp_path, cpu_limit=None) as sup:
        stub = sup.S.Resettable("r")
        await stub.bump()
        with pytest.raises(CallTimeout, match="before the call's deadline; it was rolled back"):
            await sup.call(stub.id, "block", [0.4], timeout=0.2)
        assert (await stub.bump())["n"] == 2  # never acknowledged, never committed




def test_cpu_watches_left_in_any_order_restore_the_timer_and_handler_before_them() -> None:
    original = signal.getsignal(signal.SIGPROF)
    assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)
    first, second, third = CpuWatch(1.0), CpuWatch(2.0), CpuWatch(3.0)
    first.__enter__()
    second.__enter__()
    third.__enter__()
    first.__exit__(None, None, None)  # left first, while the later two run: the timer stays
    assert signal.getsignal(signal.SIGPROF) == third._sample and signal.getitimer(signal.ITIMER_PROF)[1] > 0
    third.__exit__(None, None, None)  # the last entered: the one still running is in force
    assert signal.getsignal(signal.SIGPROF) == second._sample and signal.getitimer(signal.ITIMER_PROF)[1] > 0
    second.__exit__(None, None, None)  # the last: what was there before the first
    assert signal.getsignal(signal.SIGPROF) == original
    assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)
