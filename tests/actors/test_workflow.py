"""``self.S`` inside actors: the semantic stores (``self.S.db``) through a real supervisor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dotdo import DO, ActorError, InvalidQuery, ThingNotFound, VersionConflict
from dotdo.runtime.supervisor import Supervisor


class Shop(DO):
    async def add(self, name: str, city: str, score: int) -> dict[str, Any]:
        return self.S.db.create("Customer", {"city": city, "score": score}, name=name).as_dict()

    async def add_then_fail(self, name: str) -> None:
        self.S.db.create("Customer", {"city": "x"}, name=name)
        raise ValueError("rolled back")

    async def rename(self, thing_id: str, name: str, expected: int) -> int:
        return self.S.db.update(thing_id, name=name, expected_version=expected).version

    async def in_city(self, city: str) -> list[str]:
        return [t.name or "" for t in self.S.db.list("Customer", where={"city": city, "score": {"$gte": 2}}, order_by="-score")]

    async def find(self, text: str) -> list[str]:
        return [t.name or "" for t, _ in self.S.db.search(text)]

    async def link(self, a: str, b: str) -> list[str]:
        self.S.db.relate(a, "knows", b)
        return [t.id for t in self.S.db.related(b, "knows", direction="in")]

    async def bad_where(self) -> None:
        self.S.db.list("Customer", where={"city": {"$regex": "x"}})


async def test_the_stores_live_in_the_actor_and_commit_with_its_turns(tmp_path: Path) -> None:
    async with Supervisor([Shop], tmp_path) as sup:
        shop = sup.S.Shop("s")
        ann = await shop.add("Ann", "Paris", 3)
        assert (ann["$type"], ann["name"], ann["$version"], ann["data"]) == ("Customer", "Ann", 1, {"city": "Paris", "score": 3})
        await shop.add("Bob", "Paris", 5)
        await shop.add("Cy", "Rome", 9)
        with pytest.raises(ActorError):
            await shop.add_then_fail("Ghost")
        assert await shop.in_city("Paris") == ["Bob", "Ann"]
        assert await shop.find("ghost") == []
        assert await shop.find("ann") == ["Ann"]
        assert await shop.rename(ann["$id"], "Anne", 1) == 2
        with pytest.raises(VersionConflict):
            await shop.rename(ann["$id"], "Annie", 1)
        with pytest.raises(ThingNotFound):
            await shop.rename("nope", "x", 1)
        with pytest.raises(InvalidQuery):
            await shop.bad_where()
        bob = (await shop.add("Dee", "Oslo", 1))["$id"]
        assert await shop.link(ann["$id"], bob) == [ann["$id"]]
    async with Supervisor([Shop], tmp_path) as sup:  # durable
        assert await sup.S.Shop("s").in_city("Paris") == ["Bob", "Anne"]
