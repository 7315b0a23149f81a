"""Replication's data path on a cluster (dotdo.runtime.placement.replication), two nodes
served in this process with a real etcd: each slot gets a replica on the other node,
every commit of an active actor reaches it before the turn's reply leaves, and the
replica's copy of each actor holds every acknowledged write."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path

import apsw
import httpx
import trio

from dotdo.runtime.core.ids import resolve
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
                    if [h["slots"] for h in health] == [SLOTS // 2] * 2 and await replicated(etcd):
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


def held_by(copy_path: Path, scratch: Path) -> list[int]:
    """The writes a replica's copy holds (its log replayed on a copy of its files, so
    that the live replica is left alone)."""
    scratch.mkdir()
    copied = scratch / copy_path.name
    copied.write_bytes(copy_path.read_bytes())
    Path(f"{copied}.replica").write_bytes(Path(f"{copy_path}.replica").read_bytes())
    copy = ReplicaCopy.open(copied)
    conn = apsw.Connection(f"file:{copy.path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return sorted(r[0] for r in conn.execute("SELECT seq FROM writes"))
    finally:
        conn.close()


async def replicated(etcd: EtcdServer) -> bool:
    records = await slot_records(etcd)
    return len(records) == SLOTS and all(r.get("replicas") == [("b" if r["owner"] == "a" else "a")] for r in records)


async def slot_owners(etcd: EtcdServer) -> dict[int, str]:
    return {i: r["owner"] for i, r in enumerate(await slot_records(etcd))}


async def slot_records(etcd: EtcdServer) -> list[dict[str, object]]:
    from dotdo.runtime.cluster.etcd import Etcd

    async with Etcd(etcd.endpoints) as client:
        kvs, _ = await client.range("/dotdo/slots/")
    return [json.loads(kv.value) for kv in kvs]
