import pytest
import trio
import trio.testing

from dotdo.runtime.core.errors import CallTimeout, DeadlockError, Overloaded
from dotdo.runtime.core.gate import TurnGate, WaitGraph


def test_free_gate_and_reentrancy() -> None:
    gate = TurnGate("X/a", WaitGraph())
    assert gate.idle
    assert gate.try_enter("c1")
    assert gate.try_enter("c1")  # same chain: admitted
    assert not gate.try_enter("c2")
    gate.exit()
    assert gate.owner == "c1"
    gate.exit()
    assert gate.idle


async def test_fifo_handoff(autojump_clock: trio.testing.MockClock) -> None:
    gate = TurnGate("X/a", WaitGraph())
    assert gate.try_enter("holder")
    order: list[str] = []

    async def wait(chain: str) -> None:
        await gate.enter(chain, trio.current_time() + 60, 100)
        order.append(chain)
        gate.exit()

    async with trio.open_nursery() as nursery:
        for chain in ["w1", "w2", "w3"]:
            nursery.start_soon(wait, chain)
            await trio.sleep(0.01)
        assert gate.waiting == 3
        # A newcomer may not jump the queue while others wait.
        assert not gate.try_enter("late")
        gate.exit()
    assert order == ["w1", "w2", "w3"]
    assert gate.idle


async def test_cancelled_waiter_leaves_the_queue(autojump_clock: trio.testing.MockClock) -> None:
    gate = TurnGate("X/a", WaitGraph())
    gate.try_enter("holder")
    with trio.move_on_after(1):
        await gate.enter("quitter", trio.current_time() + 60, 100)
    assert gate.waiting == 0
    gate.exit()
    assert gate.idle


async def test_waiter_cancelled_after_the_handoff_passes_the_gate_on(autojump_clock: trio.testing.MockClock) -> None:
    gate = TurnGate("X/a", WaitGraph())
    gate.try_enter("holder")
    got: list[str] = []

    async def second() -> None:
        await gate.enter("second", trio.current_time() + 60, 100)
        got.append("second")
        gate.exit()

    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def first() -> None:
            with scope:
                await gate.enter("first", trio.current_time() + 60, 100)
                got.append("first")

        nursery.start_soon(first)
        await trio.sleep(0.01)
        nursery.start_soon(second)
        await trio.sleep(0.01)
        scope.cancel()  # "first" is cancelled, but has not run its cleanup yet...
        gate.exit()  # ...when the holder hands it the gate
    assert got == ["second"]
    assert gate.idle


async def test_timeout_and_overload(autojump_clock: trio.testing.MockClock) -> None:
    graph = WaitGraph()
    gate = TurnGate("X/a", graph)
    gate.try_enter("holder")
    with pytest.raises(CallTimeout, match="busy with chain holder"):
        await gate.enter("waiter", trio.current_time() + 1, 100)
    assert gate.waiting == 0
    with pytest.raises(Overloaded, match="calls waiting"):
        await gate.enter("waiter", trio.current_time() + 1, 0)


async def test_cycles_are_detected_when_they_form() -> None:
    graph = WaitGraph()
    a, b, c = (TurnGate(f"X/{n}", graph) for n in "abc")
    a.try_enter("c1")
    b.try_enter("c2")
    c.try_enter("c3")
    graph.add("c1", b)  # c1 waits for b (held by c2)
    graph.add("c2", c)  # c2 waits for c (held by c3)
    with pytest.raises(DeadlockError) as info:
        await a.enter("c3", trio.current_time() + 10, 100)  # c3 waiting for a closes the cycle
    assert info.value.chain == ("X/a", "X/b", "X/c")
    assert graph.cycle("c9", a) is None
