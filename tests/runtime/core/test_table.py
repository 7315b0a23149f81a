"""The activation table (dotdo.runtime.core.table): activation, eviction, passivation, and
activation when the process is out of file descriptors."""

from pathlib import Path

import pytest
import trio
import trio.testing

from dotdo.runtime.core.table import descriptor_batch
from dotdo.runtime.core.errors import Overloaded
from dotdo.runtime.supervisor import Supervisor
from dotdo.storage.opening import DESCRIPTORS_PER_ACTOR
from tests.descriptors import exhausted, free_descriptors
from tests.runtime.kinds import KINDS


async def test_first_call_activates_and_later_calls_reuse_the_instance(sup: Supervisor) -> None:
    box = sup.S.Box("a")
    assert not sup.is_active(box.id)
    await box.put("k", 1)
    assert sup.is_active(box.id)
    instance = sup.activation_of(box.id).instance
    await box.get("k")
    assert sup.activation_of(box.id).instance is instance
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


async def test_out_of_descriptors_an_activation_passivates_a_batch_of_idle_actors_and_opens(tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path) as sup:
        idle = [sup.S.Box(f"idle{i}") for i in range(12)]
        for i, stub in enumerate(idle):
            await stub.put("i", i)
        batch = descriptor_batch(len(idle))
        assert batch == 8
        newcomer = sup.S.Box("new")
        with exhausted(free=0):
            await newcomer.put("i", "new")
            # The least recently used went first; the newcomer holds three of theirs.
            assert [sup.is_active(stub.id) for stub in idle] == [False] * batch + [True] * (len(idle) - batch)
            assert sup.is_active(newcomer.id)
            assert free_descriptors() == (batch - 1) * DESCRIPTORS_PER_ACTOR
            assert await idle[0].get("i") == 0  # the next activation finds descriptors again
        for i, stub in enumerate(idle):
            assert await stub.get("i") == i
        assert await newcomer.get("i") == "new"


async def test_out_of_descriptors_with_no_idle_actor_a_call_is_overloaded(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with Supervisor(KINDS, tmp_path) as sup:
        busy, newcomer = sup.S.Box("busy"), sup.S.Box("new")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(busy.sleep, 5)
            await trio.sleep(1)
            with exhausted(free=DESCRIPTORS_PER_ACTOR - 1):
                with pytest.raises(Overloaded, match="out of file descriptors; retry later") as raised:
                    await newcomer.put("k", 1)
                assert raised.value.address == ("Box", newcomer.id.hex)
                assert free_descriptors() == DESCRIPTORS_PER_ACTOR - 1  # nothing was left open
                assert sup.is_active(busy.id) and not sup.is_active(newcomer.id)  # mid-turn: kept
        await newcomer.put("k", 1)  # descriptors back: served, and its file is whole
        assert await newcomer.get("k") == 1
