"""A node's membership (dotdo.runtime.cluster.session) against a real etcd: the lease, the
node's key, the local deadline, and what happens when etcd or the node stops answering."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from dotdo.runtime.cluster.etcd import Etcd
from dotdo.runtime.cluster.session import NodeInfo, NodeNameTaken, Session, node_key

PREFIX = "/dotdo/test"


def info(name: str = "n1", data_id: str = "data-1") -> NodeInfo:
    return NodeInfo(name, "127.0.0.1:9000", data_id, "127.0.0.1:8787")


async def test_a_node_joins_with_its_key_on_a_lease_and_leaves_without_it(etcd: Any) -> None:
    async with Etcd(etcd.endpoints) as client, trio.open_nursery() as nursery:
        session = Session(client, PREFIX, info(), ttl=2)
        with trio.fail_after(10):
            await nursery.start(session.run)
        assert session.serving and 0 < session.remaining() <= 2 - session.margin
        held = await client.get(node_key(PREFIX, "n1"))
        assert held is not None and held.lease == session.lease
        assert session.joined_revision == held.mod_revision  # the claim: a view must see it first
        assert NodeInfo.decode("n1", held.value) == info()
        with trio.fail_after(10):
            first = session.deadline
            await session.changed()  # a keep-alive moved the deadline on
            assert session.deadline > first
        nursery.cancel_scope.cancel()
    assert not session.serving
    async with Etcd(etcd.endpoints) as client:
        assert await client.get(node_key(PREFIX, "n1")) is None  # revoked on the way out


async def test_a_name_held_by_another_data_directory_is_refused_but_our_own_is_taken_over(etcd: Any) -> None:
    async with Etcd(etcd.endpoints) as client, trio.open_nursery() as nursery:
        old = Session(client, PREFIX, info(), ttl=2)
        with trio.fail_after(10):
            await nursery.start(old.run)
        with pytest.raises(NodeNameTaken, match="another data directory"), trio.fail_after(10):
            await nursery.start(Session(client, PREFIX, info(data_id="data-2"), ttl=2).run)
        assert old.serving
        # The same data directory (a process restarted before its old lease expired).
        new = Session(client, PREFIX, info(), ttl=2)
        with trio.fail_after(10):
            await nursery.start(new.run)
        held = await client.get(node_key(PREFIX, "n1"))
        assert held is not None and held.lease == new.lease != old.lease
        assert new.joined_revision == held.mod_revision > old.joined_revision  # taken over
        nursery.cancel_scope.cancel()


async def test_a_node_whose_etcd_stops_answering_stops_serving_before_its_lease_can_expire(etcd: Any, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="dotdo.cluster")
    async with Etcd(etcd.endpoints, timeout=0.5) as client, trio.open_nursery() as nursery:
        session = Session(client, PREFIX, info(), ttl=2, margin=0.5)
        with trio.fail_after(10):
            await nursery.start(session.run)
        etcd.pause()
        paused = trio.current_time()
        try:
            with trio.fail_after(5):
                while session.serving:
                    await trio.sleep(0.05)
            # It stopped by its own deadline: at most TTL - margin after the pause began.
            assert trio.current_time() - paused <= 2 - 0.5 + 0.2
        finally:
            etcd.resume()
        with trio.fail_after(15):
            while not session.serving:
                await trio.sleep(0.05)
        held = await client.get(node_key(PREFIX, "n1"))
        assert held is not None and held.lease == session.lease
        assert session.joined_revision == held.mod_revision  # the claim: a view must see it first
        nursery.cancel_scope.cancel()
    # Said once each way, with the reason (a keep-alive that timed out has no message).
    said = [r.getMessage() for r in caplog.records if "etcd" in r.getMessage()]
    assert len(said) == 2 and said[1] == "node n1: etcd answers again", said
    assert said[0].startswith("node n1: etcd does not answer (") and "unless etcd answers" in said[0]
    assert "()" not in said[0]  # the reason is never empty


async def test_a_node_paused_past_its_deadline_does_not_serve_until_it_renewed(etcd: Any) -> None:
    skew = [0.0]  # the node's clock jumps as a process paused by SIGSTOP would find it

    def clock() -> float:
        return trio.current_time() + skew[0]

    async with Etcd(etcd.endpoints) as client, trio.open_nursery() as nursery:
        session = Session(client, PREFIX, info(), ttl=3, clock=clock)
        with trio.fail_after(10):
            await nursery.start(session.run)
        skew[0] = 10.0
        assert not session.serving  # at once, before any keep-alive ran
        with trio.fail_after(10):
            await session.changed()
        assert session.serving  # renewed: either the same lease or, expired, a new one
        nursery.cancel_scope.cancel()


def test_settings_are_checked() -> None:
    client = Etcd(["http://127.0.0.1:1"])
    for ttl in (1, 2.5, 0):
        with pytest.raises(ValueError, match="TTL"):
            Session(client, PREFIX, info(), ttl=ttl)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="margin"):
        Session(client, PREFIX, info(), ttl=4, margin=2)
    for bad in (b"", b"{}", b'{"advertise": 1, "data_id": "x"}'):
        with pytest.raises(ValueError, match="not a node record"):
            NodeInfo.decode("n1", bad)
