"""Replicated storage under faults: three nodes as processes on loopback with a real etcd,
every slot with two replicas (quorum: a reply leaves once one of them holds its
commit), under a write load through every node. A node is killed (``kill -9``): its
slots come back on their replicas once its lease expires, with every acknowledged
write; it restarts on its disk and takes its share again. Afterwards every
acknowledged write is present and no address was active on two nodes at once."""

from __future__ import annotations

import json
import random
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import trio

from tests.dotdo.cluster import ACCOUNTS, CALLERS, TTL, Load, check_history, fault_node, fired_history, history
from tests.dotdo.serving import Served, dotdo, kill_group
from tests.etcd_server import EtcdServer



async def status(etcd: EtcdServer, cwd: Path) -> dict:
    done = await dotdo("cluster", "status", "--json", "--slots", "--cluster", etcd.url, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def settled(state: dict, names: set[str]) -> bool:
    """Every slot owned by one of ``names``, replicated on the others and in sync there,
    nothing moving."""
    table = state["table"]
    return bool(table) and all(
        row["owner"] in names and set(row["replicas"]) == set(row["in_sync"]) == names - {row["owner"]} and not row["moving_to"]
        for row in table
    ) and not state["promoting"]


async def test_a_killed_primary_loses_no_acknowledged_write_and_its_slots_come_back_on_replicas(tmp_path: Path, etcd: EtcdServer) -> None:
    rng = random.Random(21)
    async with AsyncExitStack() as stack, httpx.AsyncClient() as client:

        async def start(name: str) -> Served:
            return await fault_node(stack, tmp_path, etcd, name, "--replicas", "2")

        nodes = {name: await start(name) for name in ("a", "b", "c")}
        with trio.fail_after(60):
            while not settled(await status(etcd, tmp_path), {"a", "b", "c"}):
                await trio.sleep(0.2)
        load = Load(client, dict(nodes), rng)
        async with trio.open_nursery() as nursery:
            for _ in range(CALLERS):
                nursery.start_soon(load.caller)
            await trio.sleep(2)
            del load.live["b"]
            await kill_group(nodes["b"].process)  # kill -9: only its replicas have its slots now
            killed = trio.current_time()
            with trio.fail_after(60):
                while True:
                    state = await status(etcd, tmp_path)
                    if all(row["owner"] in ("a", "c") for row in state["table"]) and not state["promoting"]:
                        break
                    await trio.sleep(0.1)
            back = trio.current_time() - killed
            await trio.sleep(2)
            nodes["b"] = await start("b")  # back on its disk: its old copies are stale, it takes its share anew
            load.live["b"] = nodes["b"]
            with trio.fail_after(120):
                while not settled(await status(etcd, tmp_path), {"a", "b", "c"}):
                    await trio.sleep(0.2)
            await trio.sleep(2)
            load.running = False
        acked = sum(len(s) for s in load.acked.values())
        assert acked > 200 and len(load.acked) == len(ACCOUNTS)
        for account in ACCOUNTS:
            record = await (fired_history if account in load.armed else history)(client, nodes["a"], account)
            check_history(account, record, load.acked.get(account, set()))
        gaps = sorted(load.gaps)
        print(
            f"replication faults: {load.sent} writes sent, {acked} acknowledged (all present), {load.refused} refused; "
            f"b's slots served again {back:.2f} s after kill -9 (lease TTL {TTL} s); longest an account went without "
            f"a write: {gaps[-1]:.2f} s"
        )
