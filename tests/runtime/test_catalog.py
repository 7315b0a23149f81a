"""The activation table (runtime.catalog): activation, eviction, passivation."""

from pathlib import Path

import trio
import trio.testing

from runtime.supervisor import Supervisor
from tests.runtime.kinds import KINDS


async def test_first_call_activates_and_later_calls_reuse_the_instance(sup: Supervisor) -> None:
    box = sup.S.Box("a")
    assert not sup.is_active(box.id)
    await box.put("k", 1)
    assert sup.is_active(box.id)
    instance = sup._active[("Box", box.id.hex)].instance
    await box.get("k")
    assert sup._active[("Box", box.id.hex)].instance is instance
    assert sup.statistics().activations == 1


async def test_state_survives_passivation(sup: Supervisor) -> None:
    box = sup.S.Box("a")
    await box.put("k", {"v": [1, 2]})
    assert sup.passivate(box.id)
    assert not sup.is_active(box.id)
    assert await box.get("k") == {"v": [1, 2]}
    assert sup.statistics().activations == 2


async def test_idle_actors_are_passivated(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with Supervisor(KINDS, tmp_path, idle_timeout=10) as sup:
        a, b = sup.S.Box("a"), sup.S.Box("b")
        await a.put("k", 1)
        await b.put("k", 2)
        await trio.sleep(6)
        await b.get("k")
        await trio.sleep(8)
        assert not sup.is_active(a.id)
        assert sup.is_active(b.id)
        await trio.sleep(10)
        assert not sup.is_active(b.id)
        assert await a.get("k") == 1 and await b.get("k") == 2


async def test_the_active_cap_passivates_the_least_recently_used(tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path, max_active=3) as sup:
        stubs = [sup.S.Box(f"b{i}") for i in range(5)]
        for i, stub in enumerate(stubs):
            await stub.put("i", i)
        await stubs[2].get("i")
        await stubs[0].get("i")  # reactivated: evicts the least recently used
        active = {a.address for a in sup.activations()}
        assert len(active) == 3
        assert active == {"Box/b4", "Box/b2", "Box/b0"}
        for i, stub in enumerate(stubs):
            assert await stub.get("i") == i


async def test_a_busy_actor_is_never_passivated(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with Supervisor(KINDS, tmp_path, max_active=1, idle_timeout=1) as sup:
        slow = sup.S.Box("slow")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow.sleep, 5)
            await trio.sleep(0.1)
            await sup.S.Box("other").put("k", 1)  # over the cap, but slow is mid-turn
            await trio.sleep(3)  # past the idle timeout, still mid-turn
            assert sup.is_active(slow.id)
            assert not sup.passivate(slow.id)
        assert sup.is_active(slow.id) or await slow.echo(1) == 1
