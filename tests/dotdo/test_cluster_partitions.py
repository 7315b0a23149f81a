"""The cluster under network partitions, under a write load: node c runs in a network
namespace of its own (``tests/dotdo/netns.py``), so that it can be cut off from etcd
only, from its peers only, or from both, silently, while a and b (on this machine)
carry the load (one on c's accounts, one on theirs). Afterwards every acknowledged
write is present, no address was ever active on two nodes at once, each address was
only ever active on the node that owns its slot (c's were never served by a or b), and
a's and b's own accounts never went unavailable.

What the cluster promises without replicas (``--replicas 0``): a node cut off from etcd stops serving at its local deadline
and the others answer 503 for its slots (never serve them themselves) until it is back;
a node cut off from its peers only stays live, and calls relayed to it fail (503, 504,
or the client's timeout) until the link is back.
"""

from __future__ import annotations

import itertools
import json
import random
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from dotdo.runtime.cluster.slots import slot_of
from dotdo.runtime.core.ids import resolve
from tests.dotdo.cluster import ACCOUNTS, CALLERS, FAULT_KINDS, SLOTS, TTL, Load, check_history, cluster_node, health, history, until_slots
from tests.dotdo.netns import namespace_host, require
from tests.dotdo.serving import Served, dotdo
from tests.etcd_server import EtcdServer, etcd_server

SHARES = {"a": 6, "b": 5, "c": 5}
RECOVERY_TIMEOUT = 30.0
CALL_TIMEOUT = 2
"""The nodes' --call-timeout: a call relayed to a node that cannot be reached fails
(504) after it."""
PEER_CUT = CALL_TIMEOUT + TTL + 1.5


async def status(tmp_path: Path, etcd: EtcdServer) -> dict[str, Any]:
    """``dotdo cluster status --json``: what etcd says (read on this machine)."""
    done = await dotdo("cluster", "status", "--json", "--slots", "--cluster", etcd.url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)  # type: ignore[no-any-return]


async def live(tmp_path: Path, etcd: EtcdServer) -> set[str]:
    return {node["name"] for node in (await status(tmp_path, etcd))["nodes"] if node["live"]}


async def until_written_after(load: Load, since: float) -> tuple[float, float]:
    """Wait until each of the load's accounts had a successful write after ``since``;
    how long after the first one had one, and the last one."""
    first = None
    with trio.fail_after(RECOVERY_TIMEOUT):
        while True:
            written = [load.last_ok[account] for account in load.accounts if load.last_ok.get(account, -1.0) > since]
            if written and first is None:
                first = min(written) - since
            if len(written) == len(load.accounts):
                assert first is not None
                return first, max(written) - since
            await trio.sleep(0.02)


def owners(table: list[dict[str, Any]]) -> dict[str, str]:
    """The node each account is on, by the slot table (``dotdo cluster status``)."""
    owner = {record["slot"]: record["owner"] for record in table}
    return {account: owner[slot_of(resolve("Account", account).hex, SLOTS)] for account in ACCOUNTS}


@pytest.fixture
def namespaces() -> None:
    """Skip (fail under CI) before the test starts where no namespace can be made."""
    require()


async def test_a_node_cut_off_from_etcd_its_peers_or_both_loses_nothing_and_doubles_nothing(tmp_path: Path, namespaces: None) -> None:
    rng = random.Random(21)
    async with namespace_host() as host, etcd_server(tmp_path, hosts=[host.etcd_host]) as etcd:
        async with AsyncExitStack() as stack, httpx.AsyncClient(trust_env=False) as client:
            nodes: dict[str, Served] = {}
            # Without replicas: c's slots wait for c (test_replication_partitions has them taken over).
            options = ("--call-timeout", str(CALL_TIMEOUT), "--replicas", "0")
            for name in ("a", "b"):
                nodes[name] = await stack.enter_async_context(
                    cluster_node(tmp_path, etcd, name, "--host", host.peer_host, *options, "--env", f"NODE={name}", FAULT_KINDS)
                )
            nodes["c"] = await stack.enter_async_context(
                cluster_node(
                    tmp_path, etcd, "c", "--host", host.address, *options, "--env", "NODE=c", FAULT_KINDS,
                    url=etcd.url_at(host.etcd_host), program=host.program(),
                )
            )  # fmt: skip
            await until_slots(client, SHARES, nodes)
            formed = await status(tmp_path, etcd)
            assert formed["unavailable_slots"] == 0 and not formed["moving"]
            owner = owners(formed["table"])

            # Two loads through a and b, one on c's accounts and one on the others, so
            # that callers waiting on c do not hold up the writes to a's and b's.
            seqs = itertools.count()
            on_c = [account for account in ACCOUNTS if owner[account] == "c"]
            load = Load(client, {"a": nodes["a"], "b": nodes["b"]}, rng, accounts=on_c, seqs=seqs)
            others = Load(client, dict(load.live), rng, accounts=[a for a in ACCOUNTS if a not in on_c], seqs=seqs)
            assert load.accounts and others.accounts
            figures: dict[str, tuple[float, float]] = {}

            async def own_slots_kept() -> None:
                """a and b hold their own slots, never c's."""
                held = {name: (await health(client, nodes[name]))["slots"] for name in ("a", "b")}
                assert held == {"a": SHARES["a"], "b": SHARES["b"]}

            async with trio.open_nursery() as nursery:
                for _ in range(CALLERS // 2):
                    nursery.start_soon(load.caller)
                    nursery.start_soon(others.caller)
                began = trio.current_time()
                await until_written_after(load, began)  # c serves, through a and b
                await until_written_after(others, began)

                # 1. c cut off from etcd only: it stops serving at its deadline, its lease
                # expires, a and b answer 503 for its slots and keep their own
                refused = load.refused
                host.cut(etcd=True)
                cut = trio.current_time()
                await trio.sleep(TTL + 1)
                assert "c" not in await live(tmp_path, etcd)
                await own_slots_kept()
                await trio.sleep(max(0.0, cut + 2 * TTL + 1 - trio.current_time()))
                assert load.refused > refused
                host.heal()
                healed = trio.current_time()
                figures["etcd cut"] = await until_written_after(load, healed)
                assert await live(tmp_path, etcd) == {"a", "b", "c"}
                await own_slots_kept()

                # 2. c cut off from its peers only: still live in etcd, the calls a and b
                # relay to it fail (past the call timeout), nothing is served twice
                refused = load.refused
                host.cut(peers=True)
                cut = trio.current_time()
                await trio.sleep(TTL + 1)
                assert await live(tmp_path, etcd) == {"a", "b", "c"}
                await own_slots_kept()
                await trio.sleep(max(0.0, cut + PEER_CUT - trio.current_time()))
                assert await live(tmp_path, etcd) == {"a", "b", "c"}
                assert load.refused > refused
                host.heal()
                healed = trio.current_time()
                figures["peer cut"] = await until_written_after(load, healed)
                assert (await health(client, nodes["c"]))["slots"] == SHARES["c"]

                # 3. c cut off from both
                refused = load.refused
                host.cut(etcd=True, peers=True)
                await trio.sleep(2 * TTL + 1)
                assert "c" not in await live(tmp_path, etcd)
                await own_slots_kept()
                assert load.refused > refused
                host.heal()
                healed = trio.current_time()
                figures["both cut"] = await until_written_after(load, healed)
                await until_slots(client, SHARES, nodes)
                await until_written_after(others, healed)
                load.running = others.running = False  # each caller ends after its request
            await trio.sleep(1)  # the alarms armed last fire

            acked = {**load.acked, **others.acked}
            assert len(acked) == len(ACCOUNTS) and sum(len(seqs) for seqs in others.acked.values()) > 200
            for account in ACCOUNTS:
                record = await history(client, nodes["a"], account)
                check_history(account, record, acked.get(account, set()))
                if account in load.armed | others.armed:
                    assert record["fired"], f"{account}: its alarm never fired"
                # no slot moved: each address was only ever active on its slot's owner
                assert {activation["node"] for activation in record["activations"]} == {owner[account]}, (account, record)
            assert set(owner.values()) == {"a", "b", "c"}
            longest = {name: max(of.longest.get(a, 0.0) for a in of.accounts) for name, of in (("c", load), ("a/b", others))}
            print(
                f"cluster partitions: {load.sent + others.sent} writes sent, {sum(len(s) for s in acked.values())} acknowledged "
                f"(all present), {load.refused + others.refused} refused (to c's {len(load.accounts)} accounts: "
                f"{load.sent} sent, {load.refused} refused); longest an account went without a write: "
                f"on c {longest['c']:.2f} s, on a or b {longest['a/b']:.2f} s; c's accounts written again after a heal "
                f"(first, all; s): " + ", ".join(f"{k} {first:.2f}, {every:.2f}" for k, (first, every) in figures.items())
            )
            assert others.refused == 0, "a partition of c held up writes to a's and b's own accounts"
