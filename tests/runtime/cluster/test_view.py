"""A node's view of the cluster (dotdo.runtime.cluster.view) against a real etcd: forming
a cluster once, following every change in order, and fenced changes of slot records."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from dotdo.runtime.cluster.etcd import Etcd, EtcdError
from dotdo.runtime.cluster.session import NodeInfo, Session
from dotdo.runtime.cluster.slots import plan
from dotdo.runtime.cluster import view as view_module
from dotdo.runtime.cluster.view import ClusterView, owners

PREFIX = "/dotdo/viewtest"


async def test_two_nodes_forming_at_once_make_one_cluster(etcd: Any) -> None:
    async with Etcd(etcd.endpoints) as client, trio.open_nursery() as nursery:
        a, b = ClusterView(client, PREFIX), ClusterView(client, PREFIX)
        await nursery.start(a.run)
        await nursery.start(b.run)
        with trio.fail_after(15):
            async with trio.open_nursery() as forming:
                forming.start_soon(a.form, "a", 250)  # three batches of records
                forming.start_soon(b.form, "b", 250)
        assert a.formed and b.formed
        assert a.state.slots == b.state.slots and len(a.state.slots) == 250
        (winner,) = owners(a.state.slots.values())
        assert a.state.config is not None and a.state.config.by == winner
        nursery.cancel_scope.cancel()


async def test_moves_are_fenced_by_epoch_and_every_view_follows_them(etcd: Any) -> None:
    async with Etcd(etcd.endpoints) as client, trio.open_nursery() as nursery:
        view = ClusterView(client, PREFIX)
        await nursery.start(view.run)
        with trio.fail_after(10):
            await view.form("a", 4)
            for name in ("a", "b"):
                await nursery.start(Session(client, PREFIX, NodeInfo(name, f"{name}:1", name), ttl=2).run)
            while set(view.state.nodes) != {"a", "b"}:
                await view.changed()
        moves = plan(view.state.slots, view.state.nodes)
        assert [(m.slot, m.target) for m in moves] == [(2, "b"), (3, "b")]
        record = view.slot(2)
        assert record is not None
        moving = await view.begin_move(record, "b")
        assert moving is not None and moving.epoch > record.epoch
        assert await view.begin_move(record, "b") is None  # a stale epoch is refused
        with trio.fail_after(5):
            await view.until(moving.epoch)
        assert view.slot(2) == moving and moving.moving_to == "b"
        done = await view.end_move(moving, done=True)
        assert done is not None and done.owner == "b" and not done.moving
        assert await view.end_move(moving, done=False) is None
        with trio.fail_after(5):
            await view.until(done.epoch)
        assert view.slot(2) == done
        await view.set_draining("b")
        with trio.fail_after(5):
            while "b" not in view.state.draining:
                await view.changed()
        assert [(m.slot, m.source, m.target) for m in plan(view.state.slots, view.state.nodes, view.state.draining)] == [
            (2, "b", "a")
        ]
        await view.set_draining("b", False)
        with trio.fail_after(5):
            while view.state.draining:
                await view.changed()
        nursery.cancel_scope.cancel()


async def test_the_view_reads_everything_again_after_etcd_comes_back(etcd: Any) -> None:
    async with Etcd(etcd.endpoints, timeout=1) as client, trio.open_nursery() as nursery:
        view = ClusterView(client, PREFIX)
        await nursery.start(view.run)
        with trio.fail_after(10):
            await view.form("a", 2)
        await etcd.stop()
        await etcd.start()
        record = view.slot(0)
        assert record is not None
        with trio.fail_after(20):
            while True:
                try:
                    moved = await view.begin_move(record, "z")
                    break
                except EtcdError:  # etcd still starting
                    await trio.sleep(0.2)
            assert moved is not None
            await view.until(moved.epoch)
        assert view.slot(0) == moved
        nursery.cancel_scope.cancel()


class _DeadWatch:
    """A watch whose connection was cut without a word: it never yields, never ends."""

    async def __aenter__(self) -> _DeadWatch:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass

    def __aiter__(self) -> _DeadWatch:
        return self

    async def __anext__(self) -> Any:
        await trio.sleep_forever()


async def test_a_view_whose_watch_died_silently_catches_up_on_refresh_and_on_its_own(etcd: Any, monkeypatch: Any) -> None:
    async with Etcd(etcd.endpoints) as client, Etcd(etcd.endpoints) as other, trio.open_nursery() as nursery:
        view = ClusterView(client, PREFIX)
        await nursery.start(view.run)
        with trio.fail_after(10):
            await view.form("a", 2)
        monkeypatch.setattr(client, "watch", lambda prefix, start: _DeadWatch())
        view.refresh()  # restarts the watch: now a dead one
        await trio.sleep(0.2)
        revision = await other.put(f"{PREFIX}/drain/a", b"")
        await trio.sleep(0.3)
        assert "a" not in view.state.draining  # the dead watch missed it
        view.refresh()
        with trio.fail_after(5):
            await view.until(revision)
        assert "a" in view.state.draining
        monkeypatch.setattr(view_module, "REFRESH_EVERY", 0.5)
        view.refresh()  # the next watch runs 0.5 s before the view reads again
        await trio.sleep(0.2)
        await other.delete(f"{PREFIX}/drain/a")
        with trio.fail_after(5):
            while "a" in view.state.draining:
                await view.changed()
        nursery.cancel_scope.cancel()


async def test_a_move_is_never_given_to_a_target_that_is_not_live(etcd: Any) -> None:
    async with Etcd(etcd.endpoints) as client, trio.open_nursery() as nursery:
        view = ClusterView(client, PREFIX)
        await nursery.start(view.run)
        with trio.fail_after(10):
            await view.form("a", 2)
        record = view.slot(1)
        assert record is not None
        moving = await view.begin_move(record, "ghost")  # no node "ghost" holds a lease
        assert moving is not None
        assert await view.end_move(moving, done=True) is None
        back = await view.end_move(moving, done=False)
        assert back is not None and back.owner == "a" and not back.moving
        nursery.cancel_scope.cancel()


async def test_in_sync_replicas_change_only_at_the_records_epoch_and_a_restarted_node_is_not_added(etcd: Any) -> None:
    prefix = f"{PREFIX}/in-sync"
    async with Etcd(etcd.endpoints) as client, trio.open_nursery() as nursery:
        view = ClusterView(client, prefix)
        await nursery.start(view.run)
        b_session = trio.CancelScope()
        with trio.fail_after(20):
            await view.form("a", 2)
            await nursery.start(Session(client, prefix, NodeInfo("a", "a:1", "a"), ttl=2).run)
            await nursery.start(_session_until, client, prefix, "b", b_session)
            while set(view.state.leases) != {"a", "b"}:
                await view.changed()
            b_lease = view.state.leases["b"]
            record = view.slot(0)
            assert record is not None
            replicated = await view.set_replicas(record, ("b",))
            assert replicated is not None and replicated.in_sync == ()
            with pytest.raises(ValueError):
                await view.set_in_sync(replicated, ("c",))  # no replica of the slot
            in_sync = await view.set_in_sync(replicated, ("b",), added=("b", b_lease))
            assert in_sync is not None and in_sync.in_sync == ("b",) and in_sync.epoch > replicated.epoch
            assert await view.set_in_sync(replicated, ()) is None  # a stale epoch
            await view.until(in_sync.epoch)
            out = await view.set_in_sync(in_sync, ())
            assert out is not None and out.in_sync == ()
            dropped = await view.set_replicas(out, ())
            assert dropped is not None
            again = await view.set_replicas(dropped, ("b",))
            assert again is not None
            # b restarts: its key is made again, so what was caught up before is not added
            b_session.cancel()
        with trio.fail_after(20):
            while "b" in view.state.nodes:
                await view.changed()
            await nursery.start(_session_until, client, prefix, "b", trio.CancelScope())
            while "b" not in view.state.leases:
                await view.changed()
            assert view.state.leases["b"] != b_lease
            await view.until(again.epoch)
            assert await view.set_in_sync(again, ("b",), added=("b", b_lease)) is None
            current = view.slot(0)
            assert current is not None and current.in_sync == ()
        nursery.cancel_scope.cancel()


async def _session_until(client: Etcd, prefix: str, name: str, scope: trio.CancelScope, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    with scope:
        await Session(client, prefix, NodeInfo(name, f"{name}:1", name), ttl=2).run(task_status=task_status)
