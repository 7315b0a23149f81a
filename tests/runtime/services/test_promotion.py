"""``promote``: a thing becomes an actor; a crash between any two steps leaves exactly
one owner of the thing (tested by failing at each step, then restarting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from dotdo import DO, ActorExists, InvalidInput, ThingNotFound
from dotdo.runtime.supervisor import Supervisor


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs (it is not an Exception,
    so no handler of the code under test catches it)."""


class Shop(DO):
    async def setup(self) -> None:
        db = self.S.db
        db.create("Customer", {"tier": "gold", "spent": 10}, id="alice", name="Alice Smith")
        db.create("Order", {"total": 5}, id="o1")
        db.relate("alice", "placed", "o1")
        db.create("Note", {"text": "hello"}, id="n1")

    async def promote(self, thing_id: str) -> str:
        stub = await self.S.promote(thing_id)
        return str(stub.id)

    async def thing(self, thing_id: str) -> Any:
        found = self.S.db.get(thing_id)
        return None if found is None else found.as_dict()

    async def touch(self, thing_id: str) -> None:
        self.S.db.update(thing_id, {"touched": True})

    async def related(self, thing_id: str) -> list[str]:
        return [t.id for t in self.S.db.related(thing_id, "placed", direction="in")]


class Customer(DO):
    async def me(self) -> Any:
        found = self.S.db.get(self.id.name)
        return None if found is None else found.as_dict()

    async def orders(self) -> list[str]:
        return [t.id for t in self.S.db.related(self.id.name, "placed")]

    async def spend(self, amount: int) -> int:
        thing = self.S.db.get(self.id.name)
        assert thing is not None
        updated = self.S.db.update(thing.id, {"spent": thing.data["spent"] + amount})
        return int(updated.data["spent"])

    async def hits(self, text: str) -> list[str]:
        return [t.id for t, _ in self.S.db.search(text)]


KINDS = [Shop, Customer]


async def test_promote_moves_the_thing_and_its_relationships(tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path) as sup:
        shop = sup.S.Shop("main")
        await shop.setup()
        assert await shop.promote("alice") == "Customer/alice"
        alice = sup.S.Customer("alice")
        me = await alice.me()
        assert me["data"] == {"tier": "gold", "spent": 10} and me["$version"] == 1 and me["name"] == "Alice Smith"
        assert await alice.orders() == ["o1"]
        assert await alice.hits("smith") == ["alice"]
        assert await alice.spend(5) == 15
        # the parent keeps a reference, refuses writes to it, and keeps its graph
        ref = await shop.thing("alice")
        assert ref["data"] == {} and ref["meta"]["$promoted"].startswith("Customer/")
        with pytest.raises(Exception, match="promoted"):
            await shop.touch("alice")
        assert await shop.related("o1") == ["alice"]
        with pytest.raises(InvalidInput, match="promoted already"):
            await shop.promote("alice")


async def test_promote_refuses_bad_targets(tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path) as sup:
        shop = sup.S.Shop("main")
        await shop.setup()
        with pytest.raises(ThingNotFound):
            await shop.promote("nobody")
        with pytest.raises(InvalidInput, match="not an actor kind"):
            await shop.promote("o1")  # $type Order has no kind here


@pytest.mark.parametrize("step", ["promote.copied", "promote.decided"])
async def test_a_crash_at_each_step_leaves_one_owner(tmp_path: Path, step: str) -> None:
    async with Supervisor(KINDS, tmp_path) as sup:
        shop = sup.S.Shop("main")
        await shop.setup()

        def crash(name: str) -> None:
            if name == step:
                raise Crash(name)

        sup.lifecycle.fault = crash
        with pytest.raises(Crash):
            await sup.lifecycle.admin(shop.id, "promote", thing_id="alice")
    async with Supervisor(KINDS, tmp_path) as sup:  # the restart
        shop = sup.S.Shop("main")
        alice = sup.S.Customer("alice")
        in_parent = await shop.thing("alice")
        me = await alice.me()
        if step == "promote.copied":  # before the decision: the parent still owns it
            assert in_parent["data"]["tier"] == "gold"
            assert me is None  # the copy was abandoned
            await shop.touch("alice")  # and the parent serves writes
            assert await shop.promote("alice") == "Customer/alice"  # a retry succeeds
            assert (await alice.me())["data"]["touched"] is True
        else:  # after it: the new actor owns it
            assert "$promoted" in in_parent["meta"]
            assert me["data"]["tier"] == "gold"
            assert await alice.spend(1) == 11


async def test_promote_while_the_thing_is_being_called(tmp_path: Path) -> None:
    """Calls to the parent during the promotion wait for it; none sees it half done."""
    async with Supervisor(KINDS, tmp_path) as sup:
        shop = sup.S.Shop("main")
        await shop.setup()
        seen: list[Any] = []

        async def reader() -> None:
            for _ in range(30):
                seen.append(await shop.thing("alice"))
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.sleep(0)
            await shop.promote("alice")
        for thing in seen:  # either the whole thing, or the whole reference
            assert thing["data"] == {"tier": "gold", "spent": 10} or "$promoted" in thing["meta"]
        assert "$promoted" in seen[-1]["meta"] or len(seen) == 30


async def test_promote_onto_an_actor_with_data_is_refused(tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path) as sup:
        shop = sup.S.Shop("main")
        await shop.setup()
        # Customer/alice exists already with its own data
        other = sup.S.Shop("other")
        await other.setup()
        await other.promote("alice")
        with pytest.raises(ActorExists):
            await shop.promote("alice")
        assert (await shop.thing("alice"))["data"]["tier"] == "gold"  # unchanged
