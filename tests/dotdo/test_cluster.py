"""``dotdo serve --cluster``: nodes as processes on loopback, with a real etcd.

Every address is served by exactly one node; any node answers any address and relays
it; a node that joins takes its share of the slots, one that stops hands them over
(its actors' files go with them), one that dies leaves its slots unavailable (503,
with Retry-After) until it returns.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.dotdo.cluster import FAULT_KINDS, SLOTS, cluster_node, health, increment, until_slots
from dotdo import connect
from tests.dotdo.serving import Served, dotdo, kill_group, rpc_url
from tests.etcd_server import EtcdServer, free_port

COUNTERS = [f"c{i}" for i in range(24)]


async def test_nodes_share_the_slots_relay_calls_and_hand_slots_over(tmp_path: Path, etcd: EtcdServer) -> None:
    async with httpx.AsyncClient(timeout=30) as client, cluster_node(tmp_path, etcd, "a") as a:
        for name in COUNTERS:
            response = await increment(client, a, name)
            assert response.json() == {"result": 1}
        assert (await health(client, a))["slots"] == SLOTS
        async with cluster_node(tmp_path, etcd, "b") as b:
            await until_slots(client, {"a": SLOTS // 2, "b": SLOTS // 2}, {"a": a, "b": b})
            # The actors that moved to b came with their data; either node reaches each.
            for name in COUNTERS:
                assert (await increment(client, a, name)).json() == {"result": 2}
                assert (await increment(client, b, name)).json() == {"result": 3}
            assert (await health(client, b))["active_actors"] > 0  # b serves some itself
            b.process.send_signal(signal.SIGTERM)  # leaves gracefully: its slots go back to a
            with trio.fail_after(60):
                assert await b.process.wait() == 0
            assert "leaves holding 0 slots" in b.errors()
        assert (await health(client, a))["slots"] == SLOTS
        for name in COUNTERS:
            assert (await increment(client, a, name)).json() == {"result": 4}
    assert not list((tmp_path / "b-data").glob("Counter/*/*.sqlite"))  # handed over, none left behind


async def test_a_dead_nodes_slots_are_unavailable_until_it_returns(tmp_path: Path, etcd: EtcdServer) -> None:
    # Without replicas a node's files are its slots' only copy (with them, see test_replication*).
    async with httpx.AsyncClient(timeout=30) as client, cluster_node(tmp_path, etcd, "a", "--replicas", "0") as a:
        async with cluster_node(tmp_path, etcd, "b", "--replicas", "0") as b:
            await until_slots(client, {"a": SLOTS // 2, "b": SLOTS // 2}, {"a": a, "b": b})
            for name in COUNTERS:
                assert (await increment(client, a, name)).json() == {"result": 1}
            await kill_group(b.process)  # kill -9: nothing handed over
        # Until its lease expires the link to b fails (NotSent: the call did not run);
        # then the view says b is gone. Either way: 503, retry.
        refused: list[str] = []
        with trio.fail_after(30):
            while not refused:
                for name in COUNTERS:
                    response = await increment(client, a, name)
                    if response.status_code == 503:
                        assert response.headers["retry-after"] == "1"
                        if "not live" in response.json()["message"]:
                            assert response.json()["error"] == "Unavailable"
                            refused.append(name)
                    else:
                        assert response.status_code == 200
                await trio.sleep(0.2)
        # Never served elsewhere: a holds on to them as b's (it has no copy).
        assert (await health(client, a))["slots"] == SLOTS // 2
        async with cluster_node(tmp_path, etcd, "b") as b:
            for name in refused:
                with trio.fail_after(30):
                    while (response := await increment(client, b, name)).status_code == 503:
                        await trio.sleep(0.2)
                assert response.status_code == 200
                assert response.json()["result"] == 2  # b's data came back with it; no refused call ran


async def test_a_cluster_node_refuses_settings_that_cannot_work(tmp_path: Path, etcd: EtcdServer) -> None:
    args = ["serve", "--port", "0", "--workers", "1", "--cluster", etcd.url]
    no_node = await dotdo(*args, cwd=tmp_path, env={"DOTDO_CLUSTER_SECRET": "x" * 32})
    assert no_node.returncode == 1 and b"--cluster needs --node NAME" in no_node.stderr
    no_secret = await dotdo(*args, "--node", "a", cwd=tmp_path)
    assert no_secret.returncode == 1 and b"DOTDO_CLUSTER_SECRET" in no_secret.stderr
    bad_url = await dotdo(*args[:-1], "etcd:2379", "--node", "a", cwd=tmp_path)
    assert bad_url.returncode == 2 and b"http://" in bad_url.stderr


async def test_cluster_status_and_drain_from_the_command_line(tmp_path: Path, etcd: EtcdServer) -> None:
    cli = ["cluster"]
    # Fixed HTTP ports: a node started on port 0 cannot say which one it got in etcd.
    # (the transport's port too: HTTP + 1 may be taken)
    ports = [str(free_port()) for _ in range(4)]
    a_ports, b_ports = ("--port", ports[0], "--rpc-port", ports[1]), ("--port", ports[2], "--rpc-port", ports[3])
    async with httpx.AsyncClient(timeout=30) as client, cluster_node(tmp_path, etcd, "a", *a_ports) as a, cluster_node(
        tmp_path, etcd, "b", *b_ports
    ) as b:
        await until_slots(client, {"a": SLOTS // 2, "b": SLOTS // 2}, {"a": a, "b": b})
        for name in COUNTERS:
            assert (await increment(client, b, name)).json() == {"result": 1}
        shown = await dotdo(*cli, "status", "--cluster", etcd.url, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        text = shown.stdout.decode()
        assert f"cluster of {SLOTS} slots, formed" in text
        assert [line.split()[:3] for line in text.splitlines()[2:4]] == [["a", "live", "8"], ["b", "live", "8"]]
        # Each slot's one replica (the other node) is caught up and in sync; the nodes say
        # how far behind the replicas of their active actors are.
        with trio.fail_after(30):
            while True:
                status = json.loads((await dotdo(*cli, "status", "--json", "--slots", "--cluster", etcd.url, cwd=tmp_path)).stdout)
                if status["catching_up_slots"] == 0:
                    break
                await trio.sleep(0.2)
        assert all(row["replicas"] == row["in_sync"] == [{"a": "b", "b": "a"}[row["owner"]]] for row in status["table"])
        lag = {node["name"]: node["replication"] for node in status["nodes"]}
        assert set(lag["b"]) == {"a"} and lag["b"]["a"]["commits"] == 0 and lag["b"]["a"]["bases"] == 0
        listed = (await dotdo(*cli, "status", "--slots", "--cluster", etcd.url, cwd=tmp_path)).stdout.decode()
        assert "replicas of b's active actors: a 0 commits behind" in listed and "catching up" not in listed
        assert f"slot {SLOTS - 1:>5}  b  epoch" in listed and "replicas a" in listed
        drained = await dotdo(*cli, "drain", "b", "--cluster", etcd.url, cwd=tmp_path)
        assert drained.returncode == 0, drained.stderr
        assert b"node b is drained" in drained.stdout and b"slots left" in drained.stderr
        status = json.loads((await dotdo(*cli, "status", "--json", "--cluster", etcd.url, cwd=tmp_path)).stdout)
        by_name = {node["name"]: node for node in status["nodes"]}
        assert by_name["b"] == {**by_name["b"], "live": True, "draining": True, "slots": 0}
        assert by_name["a"]["slots"] == SLOTS and not status["moving"] and status["unavailable_slots"] == 0
        for name in COUNTERS:  # b still answers, relaying to a
            assert (await increment(client, b, name)).json() == {"result": 2}
        cancelled = await dotdo(*cli, "drain", "b", "--cancel", "--cluster", etcd.url, cwd=tmp_path)
        assert cancelled.returncode == 0
        await until_slots(client, {"a": SLOTS // 2, "b": SLOTS // 2}, {"a": a, "b": b})
        for name in COUNTERS:
            assert (await increment(client, a, name)).json() == {"result": 3}
        # Over the transport too, through whichever node answers first.
        async with connect([f"tcp://127.0.0.1:{free_port()}", rpc_url(b), rpc_url(a)], connect_timeout=2) as S:
            for name in COUNTERS:
                assert await S.Counter(name).increment() == 4
    # Both were killed (no drain): once their leases expire, every slot is unavailable.
    with trio.fail_after(30):
        while True:
            dead = json.loads((await dotdo(*cli, "status", "--json", "--cluster", etcd.url, cwd=tmp_path)).stdout)
            if not any(node["live"] for node in dead["nodes"]):
                break
            await trio.sleep(0.5)
    assert dead["unavailable_slots"] == SLOTS and dead["unavailable"] == f"0-{SLOTS - 1}"
    shown = await dotdo(*cli, "status", "--cluster", etcd.url, cwd=tmp_path)
    assert b"NOT LIVE" in shown.stdout and b"unavailable: 16 slots" in shown.stdout


async def test_a_node_of_several_workers_shares_one_lease_and_moves_slots_from_every_worker(tmp_path: Path, etcd: EtcdServer) -> None:
    async with httpx.AsyncClient(timeout=30) as client, cluster_node(tmp_path, etcd, "a", "--workers", "2") as a:
        for name in COUNTERS:
            assert (await increment(client, a, name)).json() == {"result": 1}
        async with cluster_node(tmp_path, etcd, "b", "--workers", "2") as b:
            with trio.fail_after(60):
                while True:
                    status = json.loads((await dotdo("cluster", "status", "--json", "--cluster", etcd.url, cwd=tmp_path)).stdout)
                    held = {node["name"]: node["slots"] for node in status["nodes"]}
                    if held == {"a": SLOTS // 2, "b": SLOTS // 2} and not status["moving"]:
                        break
                    await trio.sleep(0.2)
            for name in COUNTERS:
                assert (await increment(client, b, name)).json() == {"result": 2}
                assert (await increment(client, a, name)).json() == {"result": 3}
            b.process.send_signal(signal.SIGTERM)
            with trio.fail_after(60):
                assert await b.process.wait() == 0
        for name in COUNTERS:
            assert (await increment(client, a, name)).json() == {"result": 4}


async def test_events_reach_subscribers_on_every_node_and_follow_them_when_they_move(tmp_path: Path, etcd: EtcdServer) -> None:
    def rpc(node: Served, namespace: str, name: str, method: str, *args: Any, **kwargs: Any) -> Any:
        return client.post(f"{node.url}/_rpc/{namespace}/{name}/{method}", json={"args": list(args), "kwargs": kwargs})

    auditors = [f"aud{i}" for i in range(6)]
    async with httpx.AsyncClient(timeout=30) as client, cluster_node(tmp_path, etcd, "a", "--env", "NODE=a", FAULT_KINDS) as a:
        async with cluster_node(tmp_path, etcd, "b", "--env", "NODE=b", FAULT_KINDS) as b:
            await until_slots(client, {"a": SLOTS // 2, "b": SLOTS // 2}, {"a": a, "b": b})
            homes = {(await rpc(a, "Auditor", name, "ready")).json()["result"] for name in auditors}
            assert homes == {"a", "b"}  # subscribers on both nodes
            await trio.sleep(1)  # their subscriptions reach the other node's index through etcd
            sent = []
            for i, account in enumerate(f"acct{n}" for n in range(10)):
                node = (a, b)[i % 2]
                assert (await rpc(node, "Account", account, "write", i, event=True)).status_code == 200
                sent.append([account, i, 1])
            await until_seen(client, a, auditors, sent)
            b.process.send_signal(signal.SIGTERM)  # b's auditors move to a, subscriptions and all
            with trio.fail_after(60):
                assert await b.process.wait() == 0, b.errors()[-3000:]
        for i, account in enumerate(f"acct{n}" for n in range(10, 14)):
            assert (await rpc(a, "Account", account, "write", 100 + i, event=True)).status_code == 200
            sent.append([account, 100 + i, 1])
        await until_seen(client, a, auditors, sorted(sent))


async def until_seen(client: httpx.AsyncClient, node: Served, auditors: list[str], sent: list[list[Any]]) -> None:
    """Wait until every auditor handled exactly the events of ``sent``, once each."""
    with trio.fail_after(30):
        while True:
            seen = [(await client.post(f"{node.url}/_rpc/Auditor/{name}/seen", json={"args": [], "kwargs": {}})).json()["result"] for name in auditors]
            if all(sorted(s) == sorted(sent) for s in seen):
                return
            await trio.sleep(0.2)
