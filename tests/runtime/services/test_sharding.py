"""Sharding: split, route, fan out, reshard, unshard; under traffic and across crashes."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import trio

from dotdo import DO, InvalidInput
from dotdo.runtime.supervisor import Supervisor

CUSTOMERS = [f"c{i}" for i in range(12)]


class Crash(BaseException):
    """Stands for the process dying at a step (not an Exception: nothing catches it)."""


class Orders(DO):
    async def place(self, customer: str, total: int, order: str) -> str:
        self.sql.exec("CREATE TABLE IF NOT EXISTS lines(customer TEXT, total INTEGER, ref TEXT PRIMARY KEY)")
        self.sql.exec("INSERT INTO lines VALUES (?, ?, ?)", customer, total, order)
        self.S.db.create("Order", {"customer": customer, "total": total, "rank": total % 7}, id=order)
        return self.id.name or ""

    async def mine(self, customer: str) -> list[str]:
        return [t.id for t in self.S.db.list("Order", where={"data.customer": customer}, limit=1000)]

    async def lines(self) -> int:
        try:
            return int(self.sql.exec("SELECT count(*) AS n FROM lines").one()["n"])
        except Exception:
            return 0

    async def keep(self, key: str) -> None:
        self.storage.put(key, 1)


async def fill(sup: Supervisor, count: int, seed: int = 7) -> list[str]:
    orders = sup.S.Orders("shop")
    rng = random.Random(seed)
    made = []
    for i in range(count):
        await orders.place(rng.choice(CUSTOMERS), rng.randrange(1000), f"o{i:04d}")
        made.append(f"o{i:04d}")
    return made


QUERIES: list[dict[str, Any]] = [
    {"op": "list", "type": "Order", "limit": 1000},
    {"op": "list", "type": "Order", "order_by": "data.total", "limit": 10},
    {"op": "list", "type": "Order", "order_by": ["-data.rank", "data.total"], "limit": 7, "offset": 5},
    {"op": "list", "type": "Order", "where": {"data.total": {"$gt": 500}}, "order_by": "-data.total", "limit": 15},
    {"op": "list", "type": "Order", "order_by": "data.rank", "limit": 20, "offset": 40},
    {"op": "count", "type": "Order"},
    {"op": "count", "type": "Order", "where": {"data.customer": "c3"}},
    {"op": "find_one", "type": "Order", "order_by": "-data.total"},
    {"op": "get", "id": "o0007"},
]


async def answers(sup: Supervisor) -> list[Any]:
    target = sup.S.Orders("shop").id
    return [await sup.lifecycle.admin(target, "query", **q) for q in QUERIES]


async def test_shard_results_equal_the_unsharded_ones(tmp_path: Path) -> None:
    async with Supervisor([Orders], tmp_path) as sup:
        await fill(sup, 120)
        before = await answers(sup)
        orders = sup.S.Orders("shop")
        mine = {c: sorted(await orders.mine(c)) for c in CUSTOMERS}
        report = await sup.lifecycle.admin(orders.id, "shard", n=4, key="customer")
        assert report["sharded"]["n"] == 4
        assert await answers(sup) == before
        # keyed calls reach the shard that holds the key's rows
        for c in CUSTOMERS:
            assert sorted(await orders.mine(c)) == mine[c]
        # an unkeyed call goes to every shard
        per_shard = await orders.lines()
        assert isinstance(per_shard, list) and len(per_shard) == 4 and sum(per_shard) == 120
        # new writes after the shard land in the key's shard and show in queries
        await orders.place("c3", 5, "new1")
        assert "new1" in await orders.mine("c3")
        assert (await sup.lifecycle.admin(orders.id, "query", op="count", type="Order")) == 121
        # reshard to 3, then back into one actor: nothing lost, same answers
        await sup.lifecycle.admin(orders.id, "shard", n=3, key="customer")
        assert (await sup.lifecycle.admin(orders.id, "query", op="count", type="Order")) == 121
        await sup.lifecycle.admin(orders.id, "shard", n=1)
        assert await orders.lines() == 121
        after = await answers(sup)
        assert after[0] == [t for t in after[0]]  # a list, unsharded again
        assert [t["$id"] for t in after[0]][:120] == [t["$id"] for t in before[0]]
        assert after[5] == 121


async def test_shard_under_concurrent_writes_loses_nothing(tmp_path: Path) -> None:
    async with Supervisor([Orders], tmp_path) as sup:
        await fill(sup, 30)
        orders = sup.S.Orders("shop")
        acknowledged: list[str] = []

        async def writer(prefix: str) -> None:
            for i in range(25):
                await orders.place(CUSTOMERS[i % len(CUSTOMERS)], i, f"{prefix}{i}")
                acknowledged.append(f"{prefix}{i}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, "a")
            nursery.start_soon(writer, "b")
            await trio.sleep(0.005)
            await sup.lifecycle.admin(orders.id, "shard", n=3, key="customer")
        found = await sup.lifecycle.admin(orders.id, "query", op="list", type="Order", limit=1000)
        ids = sorted(t["$id"] for t in found)
        assert ids == sorted([f"o{i:04d}" for i in range(30)] + acknowledged)  # each once
        assert sum(await orders.lines()) == len(ids)


@pytest.mark.parametrize("step", ["shard.copied.0", "shard.copied.2", "shard.decided"])
async def test_a_crash_while_sharding_loses_and_doubles_nothing(tmp_path: Path, step: str) -> None:
    async with Supervisor([Orders], tmp_path) as sup:
        await fill(sup, 60)
        before = await answers(sup)

        def crash(name: str) -> None:
            if name == step:
                raise Crash(name)

        sup.lifecycle.fault = crash
        with pytest.raises(Crash):
            await sup.lifecycle.admin(sup.S.Orders("shop").id, "shard", n=3, key="customer")
    async with Supervisor([Orders], tmp_path) as sup:
        assert await answers(sup) == before
        lines = await sup.S.Orders("shop").lines()
        assert (sum(lines) if isinstance(lines, list) else lines) == 60
        if step != "shard.decided":  # a retry after the crash works and reuses the copies' ids
            await sup.lifecycle.admin(sup.S.Orders("shop").id, "shard", n=3, key="customer")
            assert await answers(sup) == before


@pytest.mark.parametrize("step", ["unshard.gathered", "unshard.decided"])
async def test_a_crash_while_unsharding_loses_and_doubles_nothing(tmp_path: Path, step: str) -> None:
    async with Supervisor([Orders], tmp_path) as sup:
        await fill(sup, 60)
        before = await answers(sup)
        await sup.lifecycle.admin(sup.S.Orders("shop").id, "shard", n=3, key="customer")

        def crash(name: str) -> None:
            if name == step:
                raise Crash(name)

        sup.lifecycle.fault = crash
        with pytest.raises(Crash):
            await sup.lifecycle.admin(sup.S.Orders("shop").id, "shard", n=1)
    async with Supervisor([Orders], tmp_path) as sup:
        got = await answers(sup)
        assert [t["$id"] for t in got[0]] == [t["$id"] for t in before[0]]
        assert got[1:] == before[1:]
        # the retired shards' files are removed by the next operation
        report = await sup.lifecycle.admin(sup.S.Orders("shop").id, "shard", n=2, key="customer")
        assert report["sharded"]["n"] == 2
        shard_files = list((tmp_path / "Orders").rglob("*.sqlite"))
        assert len(shard_files) == 3  # the router and two shards


async def test_shard_refuses_what_it_cannot_split(tmp_path: Path) -> None:
    async with Supervisor([Orders], tmp_path) as sup:
        orders = sup.S.Orders("shop")
        await fill(sup, 5)
        with pytest.raises(InvalidInput, match="no column 'region'"):
            await sup.lifecycle.admin(orders.id, "shard", n=2, key="region")
        with pytest.raises(InvalidInput):
            await sup.lifecycle.admin(orders.id, "shard", n=0, key="customer")
        with pytest.raises(InvalidInput):
            await sup.lifecycle.admin(orders.id, "shard", n=2, key="data.customer")
        with pytest.raises(InvalidInput, match="not sharded"):
            await sup.lifecycle.admin(orders.id, "shard", n=1)
        await orders.keep("k")
        with pytest.raises(InvalidInput, match="key-value"):
            await sup.lifecycle.admin(orders.id, "shard", n=2, key="customer")
        assert await orders.lines() == 5  # nothing moved
