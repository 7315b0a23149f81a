"""The locator of a cluster node (dotdo.runtime.placement.cluster): each answer from the
slot table, the node's session and the worker split, without etcd (the view is fed the
changes a watch would bring)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dotdo.runtime.cluster.etcd import Etcd, Event, KeyValue
from dotdo.runtime.cluster.session import NodeInfo, Session
from dotdo.runtime.cluster.slots import SlotRecord, slot_key, slot_of
from dotdo.runtime.cluster.view import ClusterView, Config
from dotdo.runtime.core.errors import Unavailable
from dotdo.runtime.core.ids import ActorId, id_from_name
from dotdo.runtime.placement.cluster import ClusterLocator, Node, Nodes, Unreachable
from dotdo.runtime.placement.locator import MOVING
from dotdo.runtime.transport import wire

PREFIX = "/dotdo/t"
SLOTS = 4


def put(key: str, value: bytes, revision: int) -> Event:
    return Event("put", KeyValue(key, value, revision, revision, 1, 0))


class Cluster:
    """A view fed by hand, and the session of node ``a`` with a clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0
        etcd = Etcd(["http://127.0.0.1:1"])  # never asked: the test feeds the view
        self.view = ClusterView(etcd, PREFIX)
        self.session = Session(etcd, PREFIX, NodeInfo("a", "127.0.0.1:1", "d"), ttl=5, clock=lambda: self.now)
        self.revision = 1
        self.feed(put(f"{PREFIX}/config", Config(SLOTS, True, "a").encode(), 1))

    def feed(self, *events: Event) -> None:
        self.revision += 1
        self.view.apply(list(events), self.revision)

    def own(self, slot: int, owner: str, moving_to: str | None = None) -> None:
        self.feed(put(slot_key(PREFIX, slot), SlotRecord(slot, owner, 0, moving_to).encode(), self.revision + 1))

    def live(self, name: str) -> None:
        self.feed(put(f"{PREFIX}/nodes/{name}", NodeInfo(name, f"127.0.0.2:{9000 + ord(name)}", name).encode(), self.revision + 1))


def an_id_in(slot: int) -> ActorId:
    for i in range(10_000):
        actor = id_from_name("Counter", str(i))
        if slot_of(actor.hex, SLOTS) == slot:
            return actor
    raise AssertionError("no id found")


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


async def test_every_answer_of_the_locator(cluster: Cluster) -> None:
    locator = ClusterLocator(cluster.view, cluster.session, Nodes("secret"), clock=lambda: cluster.now)
    target = an_id_in(1)
    unformed = locator.locate(target)
    assert isinstance(unformed, Unreachable) and "not formed" in unformed.why
    cluster.own(1, "a")
    cluster.session.deadline = cluster.now + 3  # as a keep-alive would set it
    assert locator.locate(target) is None and locator.serves(target.hex)
    cluster.now += 3  # past the deadline: cut off
    cut = locator.locate(target)
    assert isinstance(cut, Unreachable) and "cut off" in cut.why and not locator.serves(target.hex)
    cluster.session.deadline = cluster.now + 3
    cluster.own(1, "a", moving_to="b")
    assert locator.locate(target) is MOVING and not locator.serves(target.hex)
    cluster.own(1, "b")
    dead = locator.locate(target)
    assert isinstance(dead, Unreachable) and "node b, which is not live" in dead.why
    with pytest.raises(Unavailable, match="retry later"):
        await dead.call_raw(target, [], 1.0, None, ())
    with pytest.raises(Unavailable, match="retry later"):
        await dead.fetch(target, wire.HttpRequest("GET", "/", b"", [], b""), 1.0)
    cluster.live("b")
    node = locator.locate(target)
    assert isinstance(node, Node) and node.name == "b" and node.advertise == "127.0.0.2:9098"
    assert locator.locate(target) is node  # one owner object per node and address
    assert locator.describe()["slots"] == 0


async def test_a_node_back_with_a_new_lease_serves_nothing_until_its_view_has_seen_it(cluster: Cluster) -> None:
    locator = ClusterLocator(cluster.view, cluster.session, Nodes("secret"), clock=lambda: cluster.now)
    target = an_id_in(1)
    cluster.own(1, "a")  # as a stale view would still say, after a failover it missed
    cluster.session.deadline = cluster.now + 3
    cluster.session.joined_revision = cluster.revision + 2  # the new lease's claim, not seen yet
    behind = locator.locate(target)
    assert isinstance(behind, Unreachable) and "new lease" in behind.why
    assert not locator.serving and not locator.serves(target.hex)
    with pytest.raises(Unavailable):
        locator.guard(target)()
    cluster.own(1, "b")  # what the view catches up on: the slot failed over meanwhile
    cluster.live("a")  # and the node's own key, at the claim's revision
    assert cluster.view.revision >= cluster.session.joined_revision and locator.serving
    assert locator.locate(target) is not None and not locator.serves(target.hex)
    cluster.own(1, "a")
    assert locator.locate(target) is None and locator.serves(target.hex)
    locator.guard(target)()


async def test_a_call_to_a_moving_slot_waits_for_its_new_owner(cluster: Cluster) -> None:
    locator = ClusterLocator(cluster.view, cluster.session, Nodes("secret"), clock=lambda: cluster.now)
    cluster.session.deadline = cluster.now + 3
    target = an_id_in(2)
    cluster.own(2, "b", moving_to="a")
    got: list[object] = []

    async def wait() -> None:
        got.append(await locator.placed(target))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        cluster.live("c")  # another change: still moving, still waiting
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        cluster.own(2, "a")
    assert got == [None]  # it landed here
