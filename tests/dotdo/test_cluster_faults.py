"""The cluster under faults, under a write load: nodes join, drain (SIGTERM), die
(kill -9) and pause past their lease (SIGSTOP), as processes on loopback with a real
etcd. Afterwards every acknowledged write is present, no address was ever active on
two nodes at once (each ``Account`` records its activations and which one made each
write, in its own tables), and alarms kept firing where their actors went.
"""

from __future__ import annotations

import random
import signal
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import trio

from tests.dotdo.cluster import ACCOUNTS, CALLERS, SLOTS, TTL, Load, check_history, fault_node, fired_history, health, history, until_slots
from tests.dotdo.serving import Served, kill_group
from tests.etcd_server import EtcdServer


async def test_under_load_nodes_join_drain_die_and_pause_without_losing_or_doubling(tmp_path: Path, etcd: EtcdServer) -> None:
    rng = random.Random(20)
    async with AsyncExitStack() as stack, httpx.AsyncClient() as client:

        async def start(name: str) -> Served:
            return await fault_node(stack, tmp_path, etcd, name)

        nodes = {"a": await start("a"), "b": await start("b")}
        await until_slots(client, {"a": SLOTS // 2, "b": SLOTS // 2}, nodes)
        load = Load(client, dict(nodes), rng)
        figures: dict[str, float] = {}
        async with trio.open_nursery() as nursery:
            for _ in range(CALLERS):
                nursery.start_soon(load.caller)
            await trio.sleep(1.5)

            # join: c takes its share while the load runs; no call fails for it
            refused = load.refused
            nodes["c"] = await start("c")
            load.live["c"] = nodes["c"]
            began = trio.current_time()
            await until_slots(client, {"a": 6, "b": 5, "c": 5}, nodes)
            figures["join settled (s)"] = trio.current_time() - began
            await trio.sleep(1)

            # drain: b stops gracefully and hands its slots over; no call fails for it
            del load.live["b"]
            began = trio.current_time()
            nodes["b"].process.send_signal(signal.SIGTERM)
            with trio.fail_after(60):
                assert await nodes["b"].process.wait() == 0
            figures["drain (s)"] = trio.current_time() - began
            await until_slots(client, {"a": 8, "c": 8}, nodes)
            await trio.sleep(1)
            assert load.refused == refused, f"{load.refused - refused} calls failed while a node joined or drained: {load.reasons}"

            # kill -9: a's slots are unavailable until it comes back on its data
            del load.live["a"]
            await kill_group(nodes["a"].process)
            await trio.sleep(TTL + 1)
            nodes["a"] = await start("a")
            load.live["a"] = nodes["a"]
            await until_slots(client, {"a": 8, "c": 8}, nodes)
            await trio.sleep(1)

            # SIGSTOP past the lease: c stops serving at its deadline, comes back after
            del load.live["c"]
            nodes["c"].process.send_signal(signal.SIGSTOP)
            await trio.sleep(2 * TTL + 1)
            nodes["c"].process.send_signal(signal.SIGCONT)
            with trio.fail_after(30):
                while True:
                    try:
                        if (await health(client, nodes["c"]))["slots"] == 8:
                            break
                    except httpx.TransportError:
                        pass  # a kept-alive connection that c closed as idle the moment it went on
                    await trio.sleep(0.1)
            load.live["c"] = nodes["c"]
            await trio.sleep(1)

            # and b joins again
            nodes["b"] = await start("b")
            load.live["b"] = nodes["b"]
            await until_slots(client, {"a": 6, "b": 5, "c": 5}, nodes)
            await trio.sleep(1.5)
            load.running = False

        acked = sum(len(seqs) for seqs in load.acked.values())
        assert acked > 200 and len(load.acked) == len(ACCOUNTS)
        for account in ACCOUNTS:
            record = await (fired_history if account in load.armed else history)(client, nodes["a"], account)
            check_history(account, record, load.acked.get(account, set()))
        nodes_seen = {a["node"] for account in ACCOUNTS for a in (await history(client, nodes["b"], account))["activations"]}
        assert nodes_seen == {"a", "b", "c"}
        gaps = sorted(load.gaps)
        print(
            f"cluster faults: {load.sent} writes sent, {acked} acknowledged (all present), {load.refused} refused; "
            f"longest an account went without a write: {gaps[-1]:.2f} s (p99 {gaps[int(len(gaps) * 0.99)]:.2f} s); "
            + ", ".join(f"{k} {v:.2f}" for k, v in figures.items())
        )
