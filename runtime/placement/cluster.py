"""The locator of a cluster node: the slot table decides the node, the workers split the
node's share as on one machine.

``ClusterLocator.locate(target)`` reads the slot of ``target`` in the node's view of the
cluster (``dotdo.runtime.cluster.view``) and answers:

- this process (None), when this node owns the slot at a settled epoch, this worker
  owns the address among the node's workers, and the node is serving (its session is
  before its local deadline: ``dotdo.runtime.cluster.session``);
- another worker of this node, as ``WorkerLocator`` would;
- ``MOVING`` while the slot changes hands (a call waits in ``placed``, bounded by its
  own deadline, then goes to the new owner);
- the owning node, reached over its transport (``Nodes``), when it is live;
- an ``Unreachable`` owner, whose calls fail with ``Unavailable`` (HTTP 503, retry),
  when the owner is not live (its lease expired: it died, or is cut off), when this
  node owns the slot but is past its deadline, or before the cluster is formed. A
  slot of a dead node is served elsewhere only once one of its in-sync replicas took
  it over (``dotdo.runtime.placement.failover``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from dotdo.runtime.cluster.session import Session
from dotdo.runtime.cluster.slots import slot_of
from dotdo.runtime.cluster.view import ClusterView
from dotdo.runtime.core.errors import ConnectionLost, NotSent, Unavailable
from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.placement.locator import MOVING, Locator, Owner, Worker, worker_of
from dotdo.runtime.transport import wire
from dotdo.runtime.transport.connection import Connection
from dotdo.runtime.transport.peers import PEER_INFLIGHT, Peers


class Unreachable(Owner):
    """An owner no call can reach now: each fails with ``Unavailable`` saying why."""

    def __init__(self, why: str) -> None:
        self.why = why
        self.label = why

    async def call_raw(
        self, target: ActorId, steps: list[tuple[str, bytes]], timeout: float, chain: str | None, path: tuple[str, ...]
    ) -> bytes:
        raise Unavailable(f"{target} cannot be reached: {self.why}; retry later")

    async def fetch(self, target: ActorId, request: wire.HttpRequest, timeout: float) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        raise Unavailable(f"{target} cannot be reached: {self.why}; retry later")


class Node(Owner):
    """Another node of the cluster, reached over its transport with the cluster secret."""

    def __init__(self, nodes: Nodes, name: str, advertise: str) -> None:
        self.nodes = nodes
        self.name = name
        self.advertise = advertise
        self.label = f"node {name}"

    async def call_raw(
        self, target: ActorId, steps: list[tuple[str, bytes]], timeout: float, chain: str | None, path: tuple[str, ...]
    ) -> bytes:
        conn = await self.nodes.link(self.name, self.advertise)
        return await conn.call_raw(target, steps, timeout, chain, path)

    async def fetch(self, target: ActorId, request: wire.HttpRequest, timeout: float) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        conn = await self.nodes.link(self.name, self.advertise)
        return await conn.fetch(target, request, timeout)


class Nodes:
    """Links to the other nodes, one connection each, opened when first needed and again
    after one broke or the node moved to another address.

    Args:
        secret: The cluster secret every node presents to the others.
        connect_timeout: Seconds to connect and shake hands.
    """

    def __init__(self, secret: str, *, connect_timeout: float = 5.0) -> None:
        self._secret = secret
        self._connect_timeout = connect_timeout
        self._links: dict[str, tuple[str, Connection]] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._owners: dict[tuple[str, str], Node] = {}

    def owner(self, name: str, advertise: str) -> Node:
        """The owner that is node ``name`` at ``advertise`` (one object per pair)."""
        node = self._owners.get((name, advertise))
        if node is None:
            node = self._owners[name, advertise] = Node(self, name, advertise)
        return node

    async def link(self, name: str, advertise: str) -> Connection:
        held = self._links.get(name)
        if held is not None and held[0] == advertise and not held[1].closed:
            return held[1]
        async with self._locks.setdefault(name, trio.Lock()):
            held = self._links.get(name)
            if held is not None and held[0] == advertise and not held[1].closed:
                return held[1]
            if held is not None:
                await held[1].aclose()
            host, _, port = advertise.rpartition(":")
            try:
                conn = await Connection.open(
                    host.strip("[]"), int(port), token=self._secret, max_inflight=PEER_INFLIGHT, connect_timeout=self._connect_timeout
                )
            except NotSent:
                raise
            except ConnectionLost as exc:  # no connection, so nothing was sent on it
                raise NotSent(f"node {name} at {advertise}: {exc}; the call was not sent") from None
            self._links[name] = (advertise, conn)
            return conn

    async def drop(self, name: str) -> None:
        """Close the link to node ``name``, which left the cluster (its lease is gone):
        calls still waiting on it get ``ConnectionLost`` now rather than at their
        deadline (the node stopped serving before its lease could expire, so no answer
        can come that it may give)."""
        held = self._links.pop(name, None)
        if held is not None:
            await held[1].aclose()

    async def aclose(self) -> None:
        links, self._links = self._links, {}
        for _, conn in links.values():
            await conn.aclose()


class ClusterLocator(Locator):
    """Where addresses run on a cluster node (see the module).

    Args:
        view: The node's view of the cluster.
        session: The node's membership.
        nodes: Links to the other nodes.
        peers: This node's workers (None: the node is one process).
        clock: The monotonic clock (the session's).
    """

    def __init__(
        self,
        view: ClusterView,
        session: Session,
        nodes: Nodes,
        peers: Peers | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.view = view
        self.session = session
        self.name = session.info.name
        self.nodes = nodes
        self.peers = peers
        self.index = peers.index if peers is not None else 0
        self.count = peers.count if peers is not None else 1
        self._workers: list[Worker | None] = [None if i == self.index else Worker(peers, i) for i in range(self.count)] if peers else [None]
        self._clock = clock
        self.lag: Callable[[], dict[str, dict[str, float]]] | None = None
        """Replication's figures for ``describe`` (set when this worker replicates)."""
        self.shipped: Callable[[], dict[str, int]] | None = None
        """What replication has sent to replicas, in all (for ``describe``)."""

    @property
    def serving(self) -> bool:
        """Whether this node may serve its slots now: before its session's deadline,
        and with a view that has seen the revision its lease was taken at (a node back
        with a new lease must not serve slots that failed over while it was away, as
        a stale view would still show them its own)."""
        return self.session.serving and self.view.revision >= self.session.joined_revision

    def slot(self, target: ActorId) -> int | None:
        """The slot of ``target``, or None before the cluster is formed."""
        config = self.view.state.config
        return None if config is None else slot_of(target.hex, config.slots)

    def locate(self, target: ActorId) -> Owner | None:
        slot = self.slot(target)
        record = None if slot is None else self.view.slot(slot)
        if record is None:
            return Unreachable("the cluster is not formed yet")
        if record.moving:
            return MOVING
        if record.owner == self.name:
            if not self.session.serving:
                return Unreachable(f"node {self.name} is cut off from etcd (its lease could not be renewed)")
            if not self.serving:
                return Unreachable(f"node {self.name} is back with a new lease and has not caught up with the cluster yet")
            return self._workers[worker_of(target.hex, self.count)]
        info = self.view.state.nodes.get(record.owner)
        if info is None:
            return Unreachable(f"its slot {record.slot} is on node {record.owner}, which is not live")
        return self.nodes.owner(record.owner, info.advertise)

    def guard(self, target: ActorId) -> Callable[[], None]:
        """What the database of ``target``'s activation here asks before every output
        point: it raises ``Unavailable`` once this node is past its deadline or no
        longer owns the slot (the turn is then rolled back, and nothing it did is
        acknowledged)."""
        slot = self.slot(target)
        view, name = self.view, self.name

        def check() -> None:
            if not self.serving:
                raise Unavailable(f"node {name} is cut off from etcd; the turn was rolled back; retry later")
            record = view.slot(slot) if slot is not None else None
            if record is None or record.owner != name:
                raise Unavailable(f"{target} moved to another node; the turn was rolled back; retry")

        return check

    def owned(self) -> frozenset[int]:
        """The slots this node owns (moving or not)."""
        return frozenset(r.slot for r in self.view.state.slots.values() if r.owner == self.name)

    async def placed(self, target: ActorId) -> Owner | None:
        """Like ``locate`` once the slot of ``target`` is not moving (the caller's
        deadline bounds the wait)."""
        while True:
            owner = self.locate(target)
            if owner is not MOVING:
                return owner
            await self.view.changed()

    async def elsewhere(self, target: ActorId, owner: Owner) -> Owner | None:
        """Where ``target`` runs once the view no longer names ``owner`` (a node that
        went away: it handed the slot over, or its lease expires), waiting for the
        view to change (the caller's deadline bounds the wait). Another worker of this
        node is not waited for: it is being restarted, the caller hears so."""
        if not isinstance(owner, Node):
            return owner
        while True:
            current = self.locate(target)
            if current is not owner and current is not MOVING:
                return current
            await self.view.changed()

    def serves(self, hex_id: str) -> bool:
        config = self.view.state.config
        if config is None or not self.serving:
            return False
        record = self.view.slot(slot_of(hex_id, config.slots))
        return (
            record is not None
            and record.owner == self.name
            and not record.moving
            and worker_of(hex_id, self.count) == self.index
        )

    @property
    def partial(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        held = sum(1 for r in self.view.state.slots.values() if r.owner == self.name)
        described: dict[str, Any] = {"worker": self.index, "workers": self.count, "slots": held, "revision": self.view.revision}
        if self.lag is not None:
            described["replicas"] = self.lag()  # this worker's active actors, by replica node
        if self.shipped is not None:
            described["shipped"] = self.shipped()
        return described

    async def aclose(self) -> None:
        await self.nodes.aclose()
        if self.peers is not None:
            await self.peers.aclose()
