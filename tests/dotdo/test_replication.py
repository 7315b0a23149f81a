"""Replication's data path on a cluster (dotdo.runtime.placement.replication), two nodes
served in this process with a real etcd: each slot gets a replica on the other node,
every commit of an active actor reaches it before the turn's reply leaves, and the
replica's copy of each actor holds every acknowledged write."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import apsw
import httpx
import trio

from dotdo.options import ServeOptions
from dotdo.runtime.core.ids import resolve
from dotdo.server import serve
from dotdo.storage.replication import ReplicaCopy, ReplicaStore
from tests.dotdo.cluster import SECRET
from tests.dotdo.cluster_fault_kinds import Account
from tests.dotdo.serving import serving
from tests.etcd_server import EtcdServer

SLOTS = 8


async def test_every_acknowledged_write_is_on_the_replica_before_its_reply(tmp_path: Path, etcd: EtcdServer) -> None:
    options = dict(cluster=(etcd.url,), cluster_secret=SECRET, lease_ttl=2, slots=SLOTS, replicas=1, env={"NODE": "?"})
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(serving([Account], tmp_path / "a", node="a", **options))
        b = await stack.enter_async_context(serving([Account], tmp_path / "b", node="b", **options))
        async with httpx.AsyncClient(timeout=10) as client:
            with trio.fail_after(20):  # balanced, and each slot has its replica on the other node
                while True:
                    health = [(await client.get(f"{s.url}/_health")).json() for s in (a, b)]
                    if [h["slots"] for h in health] == [SLOTS // 2] * 2 and await settled(etcd):
                        break
                    await trio.sleep(0.1)
            owners = await slot_owners(etcd)
            acked: dict[str, list[int]] = {}
            for seq in range(60):
                account = f"acct{seq % 12}"
                server = (a, b)[seq % 2]
                response = await client.post(f"{server.url}/_rpc/Account/{account}/write", json={"args": [seq], "kwargs": {}})
                assert response.status_code == 200, response.text
                acked.setdefault(account, []).append(seq)
                # The reply came once the replica held the commit: it is in the replica's copy now.
                actor = resolve("Account", account)
                owner = owners[int(actor.hex[8:16], 16) % SLOTS]
                replica_dir = (tmp_path / ("b" if owner == "a" else "a")).resolve()
                assert held_by(ReplicaStore(replica_dir).path("Account", actor.hex), tmp_path / f"check{seq}") == acked[account]
            shipped = [(await client.get(f"{s.url}/_health")).json()["shipped"] for s in (a, b)]
            assert sum(s["commits"] for s in shipped) >= 60 and sum(s["bases"] for s in shipped) >= 12  # each account's base
            assert all(s["commit_bytes"] >= 4096 * s["commits"] and s["calls"] <= s["commits"] for s in shipped)


def held_by(copy_path: Path, scratch: Path) -> list[int]:
    """The writes a replica's copy holds (its log replayed on a copy of its files, so
    that the live replica is left alone)."""
    conn = copied_replica(copy_path, scratch)
    try:
        return sorted(r[0] for r in conn.execute("SELECT seq FROM writes"))
    finally:
        conn.close()


def copied_replica(copy_path: Path, scratch: Path) -> apsw.Connection:
    """A read-only connection to a copy (in ``scratch``) of a replica's copy, its redo log
    replayed, checked whole."""
    scratch.mkdir()
    copied = scratch / copy_path.name
    copied.write_bytes(copy_path.read_bytes())
    log = Path(f"{copy_path}.replica")
    if log.exists():
        Path(f"{copied}.replica").write_bytes(log.read_bytes())
    copy = ReplicaCopy.open(copied)
    conn = apsw.Connection(f"file:{copy.path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    return conn


async def settled(etcd: EtcdServer) -> bool:
    """Whether the slots are split between a and b, none moving, each replicated on the other."""
    records = await slot_records(etcd)
    return (
        len(records) == SLOTS
        and sorted(r["owner"] for r in records) == ["a"] * (SLOTS // 2) + ["b"] * (SLOTS // 2)
        and not any(r.get("moving_to") for r in records)
        and all(r.get("replicas") == [("b" if r["owner"] == "a" else "a")] for r in records)
    )


async def slot_owners(etcd: EtcdServer) -> dict[int, str]:
    return {i: r["owner"] for i, r in enumerate(await slot_records(etcd))}


async def slot_records(etcd: EtcdServer) -> list[dict[str, object]]:
    from dotdo.runtime.cluster.etcd import Etcd

    async with Etcd(etcd.endpoints) as client:
        kvs, _ = await client.range("/dotdo/slots/")
    return [json.loads(kv.value) for kv in kvs]


@asynccontextmanager
async def crashable(kinds: list[type], data_dir: Path, **options: Any) -> AsyncIterator[tuple[str, trio.CancelScope]]:
    """A served node that the test can stop abruptly (its scope cancelled: no drain, its
    databases closed as a crash would leave them, its lease ended)."""
    opts = replace(ServeOptions(host="127.0.0.1", port=0, data_dir=data_dir, max_active=64), **options)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await serve(kinds, opts, shutdown_trigger=trio.sleep_forever, out=io.StringIO(), task_status=task_status)

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(run)
        yield binds[0], scope
        scope.cancel()


async def test_when_a_primary_dies_its_replica_takes_its_slots_over_with_every_acknowledged_write(tmp_path: Path, etcd: EtcdServer) -> None:
    options = dict(cluster=(etcd.url,), cluster_secret=SECRET, lease_ttl=2, slots=SLOTS, replicas=1, env={"NODE": "?"})
    async with AsyncExitStack() as stack, httpx.AsyncClient(timeout=10) as client:
        a_url, a_scope = await stack.enter_async_context(crashable([Account], tmp_path / "a", node="a", **options))
        b_url, _ = await stack.enter_async_context(crashable([Account], tmp_path / "b", node="b", **options))
        with trio.fail_after(20):
            while not await settled(etcd):
                await trio.sleep(0.1)
        owners = await slot_owners(etcd)
        acked: dict[str, list[int]] = {}
        for seq in range(48):
            account = f"acct{seq % 12}"
            response = await client.post(f"{(a_url, b_url)[seq % 2]}/_rpc/Account/{account}/write", json={"args": [seq], "kwargs": {}})
            assert response.status_code == 200, response.text
            acked.setdefault(account, []).append(seq)
        on_a = [acct for acct in acked if owners[int(resolve("Account", acct).hex[8:16], 16) % SLOTS] == "a"]
        assert on_a and len(on_a) < len(acked)
        a_scope.cancel()  # a is gone: its slots' only other copies are b's replicas
        crashed = trio.current_time()
        back: dict[str, float] = {}
        with trio.fail_after(30):
            for account in on_a:
                while True:
                    response = await client.post(f"{b_url}/_rpc/Account/{account}/history", json={"args": [], "kwargs": {}})
                    if response.status_code == 200:
                        break
                    assert response.status_code == 503, response.text
                    await trio.sleep(0.1)
                back[account] = trio.current_time() - crashed
                writes = [w["seq"] for w in response.json()["result"]["writes"]]
                assert sorted(writes) == acked[account], account  # every acknowledged write, nothing else
        records = await slot_records(etcd)
        assert all(r["owner"] == "b" and not r.get("promoting") for r in records)
        # The taken-over actors keep working on b.
        for account in on_a:
            response = await client.post(f"{b_url}/_rpc/Account/{account}/write", json={"args": [1000], "kwargs": {}})
            assert response.status_code == 200
        print(f"failover: {len(on_a)} accounts back on b after {max(back.values()):.2f} s at most")


async def test_idle_actors_are_seeded_on_a_new_replica_and_survive_their_primary(tmp_path: Path, etcd: EtcdServer) -> None:
    options = dict(cluster=(etcd.url,), cluster_secret=SECRET, lease_ttl=2, slots=SLOTS, replicas=1, env={"NODE": "?"}, idle_timeout=0.2)
    async with AsyncExitStack() as stack, httpx.AsyncClient(timeout=10) as client:
        a_url, a_scope = await stack.enter_async_context(crashable([Account], tmp_path / "a", node="a", **options))
        acked: dict[str, list[int]] = {}
        for seq in range(36):  # written while a is alone: nothing to replicate to
            account = f"acct{seq % 12}"
            assert (await client.post(f"{a_url}/_rpc/Account/{account}/write", json={"args": [seq], "kwargs": {}})).status_code == 200
            acked.setdefault(account, []).append(seq)
        await trio.sleep(1)  # every account passivated (idle 0.2 s)
        b_url, _ = await stack.enter_async_context(crashable([Account], tmp_path / "b", node="b", **options))
        with trio.fail_after(30):
            while not await settled(etcd):
                await trio.sleep(0.1)
        owners = await slot_owners(etcd)
        on_a = [acct for acct in acked if owners[int(resolve("Account", acct).hex[8:16], 16) % SLOTS] == "a"]
        assert on_a
        with trio.fail_after(30):  # b's copies of a's idle accounts arrive (seeded)
            while not all((tmp_path / "b" / "_dotdo" / "replicas").resolve().exists() and ReplicaStore((tmp_path / "b").resolve()).path("Account", resolve("Account", acct).hex).exists() for acct in on_a):
                await trio.sleep(0.1)
        await trio.sleep(0.5)
        a_scope.cancel()
        with trio.fail_after(30):
            for account in on_a:
                while (response := await client.post(f"{b_url}/_rpc/Account/{account}/history", json={"args": [], "kwargs": {}})).status_code == 503:
                    await trio.sleep(0.1)
                assert response.status_code == 200, response.text
                assert sorted(w["seq"] for w in response.json()["result"]["writes"]) == acked[account], account


async def two_nodes(stack: AsyncExitStack, tmp_path: Path, etcd: EtcdServer, **extra: Any) -> tuple[str, trio.CancelScope, str]:
    """Nodes a and b (one replica per slot), settled: a's URL and scope, b's URL."""
    options = dict(cluster=(etcd.url,), cluster_secret=SECRET, lease_ttl=2, slots=SLOTS, replicas=1, env={"NODE": "?"}, **extra)
    a_url, a_scope = await stack.enter_async_context(crashable([Account], tmp_path / "a", node="a", **options))
    b_url, _ = await stack.enter_async_context(crashable([Account], tmp_path / "b", node="b", **options))
    with trio.fail_after(20):
        while not await settled(etcd):
            await trio.sleep(0.1)
    return a_url, a_scope, b_url


async def names_on(node: str, prefix: str, count: int, etcd: EtcdServer) -> list[str]:
    """``count`` account names (``PREFIX<n>``) whose slots ``node`` owns."""
    owners = await slot_owners(etcd)
    return [f"{prefix}{i}" for i in range(100) if owners[int(resolve("Account", f"{prefix}{i}").hex[8:16], 16) % SLOTS] == node][:count]


async def test_commits_larger_than_a_frame_together_or_alone_reach_the_replica(tmp_path: Path, etcd: EtcdServer) -> None:
    """Commits that together (or one alone) are over the transport's frame limit are
    sent in rounds of bounded size (a commit over the round's size as a base): each
    reply still leaves once the replica holds its commit."""
    async with AsyncExitStack() as stack, httpx.AsyncClient(timeout=30) as client:
        a_url, _, _ = await two_nodes(stack, tmp_path, etcd)
        on_a = await names_on("a", "big", 6, etcd)
        statuses: list[int] = []

        async def fill(account: str, size: int) -> None:
            response = await client.post(f"{a_url}/_rpc/Account/{account}/fill", json={"args": ["k", size], "kwargs": {}})
            statuses.append(response.status_code)
            assert response.status_code == 200, response.text

        with trio.fail_after(60):
            await fill(on_a[0], 20 * 1024 * 1024)  # one commit over the frame limit
            async with trio.open_nursery() as nursery:  # 6 x 3.5 MiB at once
                for account in on_a:
                    nursery.start_soon(fill, account, 3584 * 1024)
        assert statuses == [200] * (1 + len(on_a))
        replica = ReplicaStore((tmp_path / "b").resolve())
        for account in on_a:
            conn = copied_replica(replica.path("Account", resolve("Account", account).hex), tmp_path / f"check-{account}")
            try:
                assert conn.execute("SELECT length(body) FROM blobs WHERE key = 'k'").fetchall() == [(3584 * 1024,)]
            finally:
                conn.close()


async def test_history_and_branches_come_back_with_an_actor_after_a_failover(tmp_path: Path, etcd: EtcdServer) -> None:
    async with AsyncExitStack() as stack, httpx.AsyncClient(timeout=30) as client:
        a_url, a_scope, b_url = await two_nodes(stack, tmp_path, etcd, history=3600.0, idle_timeout=0.5)
        on_a = await names_on("a", "hist", 3, etcd)

        async def rpc(url: str, account: str, method: str, *args: Any) -> Any:
            response = await client.post(f"{url}/_rpc/Account/{account}/{method}", json={"args": list(args), "kwargs": {}})
            assert response.status_code == 200, response.text
            return response.json()["result"]

        marks = {}
        for account in on_a:
            for seq in range(3):
                await rpc(a_url, account, "write", seq)
            marks[account] = await rpc(a_url, account, "mark")  # after 3 writes
            await rpc(a_url, account, "fork", "draft")  # a branch of that state
            for seq in range(3, 6):
                await rpc(a_url, account, "write", seq)
        await trio.sleep(1.5)  # passivated (idle 0.5 s): closing wrote their last side files
        for account in on_a[1:-1]:  # and these are active again when a dies
            await rpc(a_url, account, "write", 6)
        last = on_a[-1]
        await rpc(a_url, last, "count")  # active again (its activation committed)
        await rpc(a_url, last, "fork", "late")  # a branch the reply promised, committing nothing
        a_scope.cancel()  # a is gone, with its files
        with trio.fail_after(30):
            for account in on_a:
                while (response := await client.post(f"{b_url}/_rpc/Account/{account}/count", json={"args": [], "kwargs": {}})).status_code == 503:
                    await trio.sleep(0.1)
                assert response.json()["result"] == (6 if account in (on_a[0], last) else 7)
                assert await rpc(b_url, account, "forks") == (["draft", "late", "main"] if account == last else ["draft", "main"])
                await rpc(b_url, account, "back_to", marks[account])  # the history came along
                assert await rpc(b_url, account, "count") == 3
