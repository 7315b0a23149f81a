"""The locator: one place decides where an address runs, and its owner may change while
calls wait (the interface the cluster extends)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from dotdo import DO
from dotdo.runtime.core.errors import Unavailable
from dotdo.runtime.core.ids import id_from_name
from dotdo.runtime.placement.locator import MOVING, Locator, Worker, WorkerLocator, worker_of
from dotdo.runtime.supervisor import Supervisor
from dotdo.runtime.transport.peers import Peers
from tests.runtime.placement.movable import Movable, Other


class Where(DO):
    """Says which supervisor runs it."""

    async def name(self) -> str:
        return self.env["NAME"]

    async def hold(self, seconds: float) -> str:
        await trio.sleep(seconds)
        return self.env["NAME"]

    async def count(self) -> int:
        n = (self.storage.get("n") or 0) + 1
        self.storage.put("n", n)
        return n


@asynccontextmanager
async def two(tmp_path: Path) -> AsyncIterator[tuple[Movable, Supervisor, Supervisor]]:
    """Supervisor a (placed by a ``Movable``) and supervisor b, where addresses go."""
    locator = Movable()
    async with (
        Supervisor([Where], tmp_path / "a", locator=locator, env={"NAME": "a"}) as a,
        Supervisor([Where], tmp_path / "b", env={"NAME": "b"}) as b,
    ):
        yield locator, a, b


def test_worker_of_is_a_stable_partition() -> None:
    ids = [id_from_name("Where", f"n{i}") for i in range(400)]
    counts = [0, 0, 0]
    for actor in ids:
        owner = worker_of(actor.hex, 3)
        assert owner == worker_of(actor.hex, 3) == int(actor.hex[:8], 16) % 3
        counts[owner] += 1
    assert min(counts) > 80  # roughly even


async def test_a_worker_locator_places_each_address_on_one_worker() -> None:
    peers = [Peers(i, ["/nonexistent/a", "/nonexistent/b"], "secret") for i in range(2)]
    locators = [WorkerLocator(p) for p in peers]
    for i in range(50):
        target = id_from_name("Where", f"n{i}")
        here = [loc.locate(target) is None for loc in locators]
        assert here.count(True) == 1  # exactly one worker runs it
        owner = worker_of(target.hex, 2)
        assert here[owner] and locators[owner].serves(target.hex)
        other = locators[1 - owner].locate(target)
        assert isinstance(other, Worker) and other.index == owner and not locators[1 - owner].serves(target.hex)
    assert locators[1].describe() == {"worker": 1, "workers": 2}
    assert not Locator().partial and locators[0].partial


async def test_every_entry_point_asks_the_locator_once(tmp_path: Path) -> None:
    locator = Movable()
    async with Supervisor([Where], tmp_path, locator=locator, env={"NAME": "a"}) as sup:
        stub = sup.S.Where("x")
        await stub.name()
        asked = locator.asked
        await stub.name()
        assert locator.asked == asked + 1
        await sup.call(stub.id, "name")
        assert locator.asked == asked + 2


async def test_a_call_waits_while_its_address_moves_then_goes_to_the_new_owner(tmp_path: Path) -> None:
    async with two(tmp_path) as (locator, a, b):
        target = a.S.Where("x").id
        assert await a.S.Where("x").name() == "a"
        locator.owners[target] = MOVING
        results: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _append(results, a.S.Where("x").name()))
            await trio.sleep(0.05)
            assert results == []  # it waits for the move to end
            locator.settle(target, Other(b))
        assert results == ["b"]
        assert await a.call(target, "name") == "b"  # relayed from now on


async def test_a_move_that_ends_here_runs_the_call_here(tmp_path: Path) -> None:
    locator = Movable()
    async with Supervisor([Where], tmp_path, locator=locator, env={"NAME": "a"}) as sup:
        target = sup.S.Where("x").id
        locator.owners[target] = MOVING
        results: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _append(results, sup.S.Where("x").name()))
            await trio.sleep(0.05)
            locator.settle(target, None)
        assert results == ["a"]


async def test_calls_waiting_for_a_turn_follow_the_address_when_it_moves(tmp_path: Path) -> None:
    async with two(tmp_path) as (locator, a, b):
        stub = a.S.Where("x")
        target = stub.id
        other = Other(b)
        results: dict[str, str] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_store, results, "holder", stub.hold(0.2))
            await trio.sleep(0.05)  # the holder has the turn
            for i in range(3):
                nursery.start_soon(_store, results, f"waiter{i}", stub.name())
            await trio.sleep(0.05)  # the waiters wait at the gate
            locator.owners[target] = other  # the address moves to b
            a.moved(target)  # ... and a is told: it closes the actor once the turn ends
            assert a.is_active(target)  # mid-turn: not closed under the holder
        assert results == {"holder": "a", "waiter0": "b", "waiter1": "b", "waiter2": "b"}
        assert not a.is_active(target) and b.is_active(target)
        assert other.calls == 3


async def test_an_idle_actor_that_moves_is_closed_at_once(tmp_path: Path) -> None:
    async with two(tmp_path) as (locator, a, b):
        stub = a.S.Where("x")
        assert await stub.count() == 1
        locator.owners[stub.id] = Other(b)
        a.moved(stub.id)
        assert not a.is_active(stub.id)
        assert await stub.count() == 1  # b's own copy: its data did not move with it here
        a.moved(id_from_name("Where", "never-active"))  # nothing to close: nothing happens


async def test_the_runtime_s_own_turns_run_only_where_the_actor_does(tmp_path: Path) -> None:
    async with two(tmp_path) as (locator, a, b):
        target = a.S.Where("x").id
        locator.owners[target] = Other(b)

        async def noop(instance: Any) -> None:
            return None

        with pytest.raises(Unavailable, match="served by supervisor b"):
            await a.run_turn(target, noop)
        assert not a.is_active(target)


async def _append(results: list[str], call: Any) -> None:
    results.append(await call)


async def _store(results: dict[str, str], key: str, call: Any) -> None:
    results[key] = await call
