"""The cluster under faults, under a write load: nodes join, drain (SIGTERM), die
(kill -9) and pause past their lease (SIGSTOP), as processes on loopback with a real
etcd. Afterwards every acknowledged write is present, no address was ever active on
two nodes at once (each ``Account`` records its activations and which one made each
write, in its own tables), and alarms kept firing where their actors went.
"""

from __future__ import annotations

import itertools
import random
import signal
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.dotdo.cluster import SLOTS, TTL, cluster_node, health, until_slots
from tests.dotdo.serving import Served, kill_group
from tests.etcd_server import EtcdServer

KINDS = str(Path(__file__).with_name("cluster_fault_kinds.py"))
ACCOUNTS = [f"acct{i}" for i in range(40)]
CALLERS = 8
CALL_TIMEOUT = 10.0


@dataclass
class Load:
    """Writes to random accounts through random live nodes, noting what was
    acknowledged and how long each account went without a successful write."""

    client: httpx.AsyncClient
    live: dict[str, Served]
    rng: random.Random
    acked: dict[str, set[int]] = field(default_factory=dict)
    armed: set[str] = field(default_factory=set)
    refused: int = 0
    sent: int = 0
    last_ok: dict[str, float] = field(default_factory=dict)
    gaps: list[float] = field(default_factory=list)
    seqs: Any = field(default_factory=itertools.count)

    async def caller(self) -> None:
        while True:
            account = self.rng.choice(ACCOUNTS)
            node = self.rng.choice(sorted(self.live.values(), key=lambda s: s.url))
            seq = next(self.seqs)
            arm = self.rng.random() < 0.05
            self.sent += 1
            try:
                response = await self.client.post(
                    f"{node.url}/_rpc/Account/{account}/write", json={"args": [seq], "kwargs": {"arm": arm}}, timeout=CALL_TIMEOUT
                )
            except httpx.HTTPError:
                self.refused += 1
                continue
            if response.status_code == 200:
                assert response.json() == {"result": seq}
                self.acked.setdefault(account, set()).add(seq)
                if arm:
                    self.armed.add(account)
                now = trio.current_time()
                if account in self.last_ok:
                    self.gaps.append(now - self.last_ok[account])
                self.last_ok[account] = now
            else:
                assert response.status_code in (503, 504), response.text
                self.refused += 1
                await trio.sleep(0.05)


async def history(client: httpx.AsyncClient, node: Served, account: str) -> dict[str, Any]:
    with trio.fail_after(60):
        while True:
            response = await client.post(f"{node.url}/_rpc/Account/{account}/history", json={"args": [], "kwargs": {}})
            if response.status_code == 200:
                return response.json()["result"]  # type: ignore[no-any-return]
            await trio.sleep(0.2)


def check_history(account: str, record: dict[str, Any], acked: set[int]) -> None:
    """Every acknowledged write is there, and the activations never overlapped: each
    one's writes all come before the next one started."""
    writes = record["writes"]
    present = {w["seq"] for w in writes}
    assert acked <= present, f"{account}: acknowledged writes missing: {sorted(acked - present)[:10]}"
    starts = {a["id"]: a["started"] for a in record["activations"]}
    last: dict[int, float] = {}
    previous = 0
    for write in writes:
        assert write["activation"] >= previous, f"{account}: activation {previous} wrote after {write['activation']} began"
        previous = write["activation"]
        last[write["activation"]] = write["at"]
    ids = sorted(starts)
    for earlier, later in zip(ids, ids[1:]):
        if earlier in last:
            assert last[earlier] <= starts[later], f"{account}: activations {earlier} and {later} overlapped"


async def test_under_load_nodes_join_drain_die_and_pause_without_losing_or_doubling(tmp_path: Path, etcd: EtcdServer) -> None:
    rng = random.Random(20)
    async with AsyncExitStack() as stack, httpx.AsyncClient() as client:
        stacks: dict[str, AsyncExitStack] = {}

        async def start(name: str) -> Served:
            inner = stacks[name] = AsyncExitStack()
            await stack.enter_async_context(inner)
            return await inner.enter_async_context(cluster_node(tmp_path, etcd, name, "--env", f"NODE={name}", KINDS))

        nodes = {"a": await start("a"), "b": await start("b")}
        await until_slots(client, {"a": SLOTS // 2, "b": SLOTS // 2}, nodes)
        load = Load(client, dict(nodes), rng)
        figures: dict[str, float] = {}
        async with trio.open_nursery() as nursery:
            for _ in range(CALLERS):
                nursery.start_soon(load.caller)
            await trio.sleep(1.5)

            # join: c takes its share while the load runs
            nodes["c"] = await start("c")
            load.live["c"] = nodes["c"]
            began = trio.current_time()
            await until_slots(client, {"a": 6, "b": 5, "c": 5}, nodes)
            figures["join settled (s)"] = trio.current_time() - began
            await trio.sleep(1)

            # drain: b stops gracefully and hands its slots over
            del load.live["b"]
            began = trio.current_time()
            nodes["b"].process.send_signal(signal.SIGTERM)
            with trio.fail_after(60):
                assert await nodes["b"].process.wait() == 0
            figures["drain (s)"] = trio.current_time() - began
            await until_slots(client, {"a": 8, "c": 8}, nodes)
            await trio.sleep(1)

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
                while (await health(client, nodes["c"]))["slots"] != 8:
                    await trio.sleep(0.1)
            load.live["c"] = nodes["c"]
            await trio.sleep(1)

            # and b joins again
            nodes["b"] = await start("b")
            load.live["b"] = nodes["b"]
            await until_slots(client, {"a": 6, "b": 5, "c": 5}, nodes)
            await trio.sleep(1.5)
            nursery.cancel_scope.cancel()

        acked = sum(len(seqs) for seqs in load.acked.values())
        assert acked > 200 and len(load.acked) == len(ACCOUNTS)
        for account in ACCOUNTS:
            record = await history(client, nodes["a"], account)
            check_history(account, record, load.acked.get(account, set()))
            if account in load.armed:
                assert record["fired"], f"{account}: its alarm never fired"
        nodes_seen = {a["node"] for account in ACCOUNTS for a in (await history(client, nodes["b"], account))["activations"]}
        assert nodes_seen == {"a", "b", "c"}
        gaps = sorted(load.gaps)
        print(
            f"cluster faults: {load.sent} writes sent, {acked} acknowledged (all present), {load.refused} refused; "
            f"longest an account went without a write: {gaps[-1]:.2f} s (p99 {gaps[int(len(gaps) * 0.99)]:.2f} s); "
            + ", ".join(f"{k} {v:.2f}" for k, v in figures.items())
        )
