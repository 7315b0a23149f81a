"""A cluster node, for one worker process: membership, the view, the locator, slot
moves, and leaving.

``async with ClusterNode(settings, data_dir) as node:`` connects to etcd, joins (worker
0 joins; the node's other workers follow its lease: ``dotdo.runtime.cluster.session``),
reads the cluster and forms it if it is new, and gives ``node.locator``, which a
``Supervisor`` then runs on. ``node.attach(supervisor)`` starts what runs with the
supervisor:

- every worker follows placement: when the node is cut off (past its deadline) or a
  slot stops being its own, the activations that are no longer its own are closed,
  and its alarm scheduler looks at its index again; every activation's database is
  guarded (``ClusterLocator.guard``), so nothing leaves an actor that is not ours;
- worker 0 coordinates: it carries out the moves of this node's slots that the
  balancing plan names (``dotdo.runtime.cluster.slots.plan``: when a node joins, when
  one drains), one slot at a time (``dotdo.runtime.placement.handover``).

``leave()`` drains the node (hands every slot to the others, when there are others to
take them) before it stops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from dotdo.storage.directory import data_identity
from dotdo.storage.errors import DotdoError
from dotdo.storage.options import Durability

from dotdo.runtime.cluster.etcd import Etcd, EtcdError
from dotdo.runtime.cluster.session import DEFAULT_TTL, NodeInfo, Session
from dotdo.runtime.cluster.slots import DEFAULT_SLOTS, plan, replica_plan, slot_of
from dotdo.runtime.cluster.view import ClusterView
from dotdo.runtime.placement.cluster import ClusterLocator, Nodes
from dotdo.runtime.core import values
from dotdo.runtime.placement.handover import MOVE_TIMEOUT, NODE_TARGET, Handover, MoveFailed
from dotdo.runtime.placement.failover import Failover
from dotdo.runtime.placement.replication import CATCH_UP, FETCH, PIN_CHECK, POSITIONS, REPLICATE, REPLICATE_BASE, Replication
from dotdo.runtime.placement.subscription_mirror import SubscriptionMirror

if TYPE_CHECKING:
    from dotdo.runtime.core.activation import Activation
    from dotdo.runtime.supervisor import Supervisor
    from dotdo.runtime.transport.peers import Peers

log = logging.getLogger("dotdo.cluster")

PREFIX = "/dotdo"
"""Where a cluster keeps its keys in etcd."""
DEFAULT_DRAIN_TIMEOUT = 120.0
SETTLE_EVERY = 0.25
"""Seconds between looks at the node's deadline (placement changes are seen at once)."""
RETRY_MOVE = 1.0
STALE_REFRESH = 2.0
"""Seconds a node with a new lease waits for its view to see it before reading the
cluster's state anew (a watch that died unseen)."""
CATCH_UPS = 4
"""Replicas a node catches up at once."""


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """How a node joins its cluster (``dotdo serve --cluster ...``).

    Attributes:
        endpoints: etcd's client URLs.
        name: This node's name (``--node``).
        advertise: ``host:port`` where the other nodes reach this node's transport.
        secret: The cluster secret nodes present to each other.
        http: ``host:port`` of this node's HTTP server (shown by ``dotdo cluster status``).
        ttl: The lease's TTL in seconds.
        slots: The number of slots, when this node forms the cluster.
        drain_timeout: Seconds a node leaving gracefully may take to hand its slots over.
        replicas: Copies of each of this node's slots kept on other nodes.
        ack: How many of them hold a commit before a turn's reply leaves
            (``dotdo.runtime.placement.replication``).
    """

    endpoints: tuple[str, ...]
    name: str
    advertise: str
    secret: str = field(repr=False)
    http: str = ""
    ttl: int = DEFAULT_TTL
    slots: int = DEFAULT_SLOTS
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    replicas: int = 0
    ack: str = "quorum"


class ClusterNode:
    """One worker's part of a cluster node (see the module).

    Args:
        settings: How to join.
        data_dir: The node's data directory (its identity is kept there).
        peers: The node's other workers (None: one process).
    """

    def __init__(self, settings: ClusterSettings, data_dir: Path, peers: Peers | None = None) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.peers = peers
        self.leader = peers is None or peers.index == 0
        self.name = settings.name
        self._locator: ClusterLocator | None = None
        self._handover: Handover | None = None
        self._mirror: SubscriptionMirror | None = None
        self._replication: Replication | None = None
        self.failover: Failover | None = None
        self._tasks = trio.CancelScope()
        self._tasks_done = trio.Event()
        self._etcd: Etcd | None = None
        self._nursery_cm: Any = None
        self._nursery: trio.Nursery | None = None

    @property
    def locator(self) -> ClusterLocator:
        if self._locator is None:
            raise DotdoError("the cluster node is not running (use `async with`)")
        return self._locator

    @property
    def view(self) -> ClusterView:
        return self.locator.view

    @property
    def session(self) -> Session:
        return self.locator.session

    async def __aenter__(self) -> ClusterNode:
        settings = self.settings
        self._etcd = etcd = Etcd(list(settings.endpoints))
        await etcd.__aenter__()
        try:
            info = NodeInfo(settings.name, settings.advertise, data_identity(self.data_dir), settings.http)
            session = Session(etcd, PREFIX, info, ttl=settings.ttl, follow=not self.leader)
            view = ClusterView(etcd, PREFIX)
            self._nursery_cm = trio.open_nursery()
            self._nursery = nursery = await self._nursery_cm.__aenter__()
        except BaseException:
            await etcd.aclose()
            raise
        try:
            await nursery.start(view.run)
            await nursery.start(session.run)
            if self.leader:
                await etcd.delete(f"{PREFIX}/drain/{settings.name}")  # a node that starts means to serve
                await view.form(settings.name, settings.slots)
            else:
                while not view.formed:
                    await view.changed()
        except BaseException as exc:
            await self._close(exc)
            raise
        self._locator = ClusterLocator(view, session, Nodes(settings.secret), self.peers)
        log.info("node %s is in the cluster (%d slots, revision %d)", settings.name, len(view.state.slots), view.revision)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._close(exc_info[1])

    async def _close(self, exc: BaseException | None) -> None:
        try:
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
                await self._nursery_cm.__aexit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)
        finally:
            self._nursery = None
            if self._etcd is not None:
                with trio.CancelScope(shield=True):
                    await self._etcd.aclose()

    # -- with a supervisor -------------------------------------------------------------

    def attach(self, supervisor: Supervisor) -> None:
        """Guard the supervisor's activations, take node operations, follow placement
        and (worker 0) coordinate moves, in the supervisor's nursery."""
        locator = self.locator
        self._handover = handover = Handover(supervisor, locator.view, self.name, locator.nodes, self.peers)
        durable = supervisor.config.storage.durability is Durability.FULL
        self._replication = replication = Replication(
            supervisor, locator, replicating=self.settings.replicas > 0, ack=self.settings.ack, durable=durable
        )

        async def node_call(method: str, payload: bytes) -> bytes:
            if method in (REPLICATE, REPLICATE_BASE, POSITIONS, FETCH, CATCH_UP):
                return await replication.handle(method, payload)
            return await handover.handle(method, payload)

        supervisor.node_calls = node_call
        locator.lag = replication.lag
        locator.shipped = replication.shipped
        supervisor.nursery.start_soon(replication.run)
        self.failover = Failover(locator, replication, handover, self.settings.ack)

        def guard(activation: Activation) -> None:
            activation.db.guard = locator.guard(activation.id)

        supervisor.hooks.activated.append(guard)
        directory = supervisor.table.directory
        if self.leader and directory is not None and not directory.complete:
            # A data directory served before it had an actor directory: its actors are
            # read once from their files, so that moves find every one of them.
            log.info("node %s: listed %d actors of its data directory", self.name, directory.scan())
        assert self._etcd is not None
        self._mirror = mirror = SubscriptionMirror(self._etcd, supervisor, locator, follow=self.leader)
        supervisor.nursery.start_soon(self._run_tasks, supervisor, mirror)

    async def _run_tasks(self, supervisor: Supervisor, mirror: SubscriptionMirror) -> None:
        """What follows placement and changes it, until ``stop`` (before the supervisor
        closes its files: a move or a takeover must not find them closed)."""
        try:
            with self._tasks:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(mirror.run)
                    nursery.start_soon(self._follow, supervisor, mirror)
                    if self.leader:
                        assert self.failover is not None
                        # A node that starts cannot know what it missed while it was away,
                        # nor whether its disk is the one it had: it is in sync for no slot.
                        await self._leave_in_sync()
                        nursery.start_soon(self._coordinate)
                        nursery.start_soon(self.failover.run)
                        nursery.start_soon(self._sync_replicas)
        finally:
            self._tasks_done.set()

    async def stop(self) -> None:
        """Stop following and changing placement (the node is stopping: after
        ``leave``), and wait until that has stopped: a move that was ending finishes
        (it deletes this node's copies of what it sent) before the supervisor closes
        the files it needs."""
        self._tasks.cancel()
        if self._handover is not None:  # attached: its tasks were started
            await self._tasks_done.wait()

    async def _follow(self, supervisor: Supervisor, mirror: SubscriptionMirror) -> None:
        """Close the activations this node may no longer hold, when that changes."""
        locator = self.locator
        before: tuple[bool, frozenset[int]] | None = None
        members = set(locator.view.state.nodes)
        seen = -1
        renewing = locator.session.serving
        behind = trio.current_time()
        while True:
            present = set(locator.view.state.nodes)
            for gone in members - present:
                await locator.nodes.drop(gone)
            members = present
            if locator.session.serving and not renewing:
                locator.view.refresh()  # back from a cut: the watches may have died unseen
                mirror.refresh()
                behind = trio.current_time()
            renewing = locator.session.serving
            if renewing and not locator.serving and trio.current_time() - behind > STALE_REFRESH:
                locator.view.refresh()  # a new lease the view has not seen yet: read it all again
                behind = trio.current_time()
            now = (locator.serving, locator.owned())
            if now != before:
                if self._replication is not None:
                    self._replication.placement_changed()
                if self.leader:  # slots taken (all of them at start): publish their subscribers
                    mirror.publish_slots(now[1] - (before[1] if before is not None else frozenset()))
                before = now
                self._release_lost(supervisor, *now)
                supervisor.alarms.placement_changed()
                supervisor.websockets.placement_changed()
            if self._replication is not None and locator.view.revision != seen:
                seen = locator.view.revision
                self._replication.placement_changed()  # replica lists may have changed
            with trio.move_on_after(SETTLE_EVERY):
                await locator.view.changed()

    def _release_lost(self, supervisor: Supervisor, serving: bool, owned: frozenset[int]) -> None:
        config = self.view.state.config
        if config is None:
            return
        lost = 0
        for activation in supervisor.table:
            if not serving or slot_of(activation.id.hex, config.slots) not in owned:
                supervisor.moved(activation.id)
                lost += 1
        if lost:
            log.warning("node %s: closing %d activations it no longer holds (serving: %s)", self.name, lost, serving)

    async def _coordinate(self) -> None:
        """Carry out this node's moves, one slot at a time, as the plan names them."""
        view, handover = self.view, self._handover
        assert handover is not None
        # A move this node began before it stopped: it ends where it began.
        for record in list(view.state.slots.values()):
            if record.owner == self.name and record.moving_to is not None:
                log.info("slot %d: ending the move to %s begun before this node restarted", record.slot, record.moving_to)
                await handover.end(record, done=False)
        while True:
            if await self._replicas_step():
                continue
            move = self._next_move()
            if move is not None:
                record = view.slot(move.slot)
                try:
                    if record is not None and await handover.move(record, move.target):
                        continue
                except (MoveFailed, EtcdError) as exc:
                    log.warning("%s", exc)
                await trio.sleep(RETRY_MOVE)
                continue
            with trio.move_on_after(SETTLE_EVERY * 4):
                await view.changed()

    async def _replicas_step(self) -> bool:
        """Give one of this node's slots the replicas the plan names; whether one changed."""
        state = self.view.state
        if not self.locator.serving or not self.view.formed:
            return False
        for change in replica_plan(state.slots, state.nodes, self.settings.replicas, state.draining):
            record = state.slots.get(change.slot)
            if record is None or record.owner != self.name:
                continue
            try:
                done = await self.view.set_replicas(record, change.replicas)
            except EtcdError as exc:
                log.warning("slot %d: cannot set its replicas: %s", change.slot, exc)
                await trio.sleep(RETRY_MOVE)
                return False
            if done is not None:
                await self.view.until(done.epoch)
                return True
        return False

    async def _leave_in_sync(self) -> None:
        """Take this node out of every slot's in-sync replicas."""
        view = self.view
        while True:
            mine = [r for r in view.state.slots.values() if self.name in r.in_sync]
            if not mine:
                return
            for record in mine:
                try:
                    done = await view.set_in_sync(record, tuple(n for n in record.in_sync if n != self.name))
                except EtcdError as exc:
                    log.warning("slot %d: cannot take this node out of its in-sync replicas yet: %s", record.slot, exc)
                    await trio.sleep(RETRY_MOVE)
                    continue
                if done is not None:
                    await view.until(done.epoch)

    async def _sync_replicas(self) -> None:
        """Catch up the replicas of this node's slots that are not in sync, a few at a
        time, and add each to its slot's in-sync set once it is."""
        view = self.view
        running: set[tuple[int, str]] = set()
        limit = trio.CapacityLimiter(CATCH_UPS)

        async def one(slot: int, node: str) -> None:
            try:
                async with limit:
                    await self._catch_up(slot, node)
            finally:
                running.discard((slot, node))

        async with trio.open_nursery() as nursery:
            while True:
                for record in sorted(view.state.slots.values(), key=lambda r: r.slot):
                    if record.owner != self.name or record.moving or not self.locator.serving:
                        continue
                    for node in record.replicas:
                        pair = (record.slot, node)
                        if node not in record.in_sync and node in view.state.nodes and node not in view.state.draining and pair not in running:
                            running.add(pair)
                            nursery.start_soon(one, *pair)
                with trio.move_on_after(SETTLE_EVERY * 4):
                    await view.changed()

    async def _catch_up(self, slot: int, node: str) -> bool:
        """Catch ``node`` up on ``slot`` on every worker of this node, then say it is in
        sync; whether it is."""
        lease = self.view.state.leases.get(node)
        replication = self._replication
        assert replication is not None and lease is not None
        try:
            await replication.catch_up(slot, node)
            pinned = trio.current_time()  # every worker waits for it from now, for PIN_HOLD
            if self.peers is not None:
                payload = values.pack([slot, node])
                for worker in range(self.peers.count):
                    if worker != self.peers.index:
                        await self.peers.call_raw(worker, NODE_TARGET, [(CATCH_UP, payload)], MOVE_TIMEOUT)
            record = self.view.slot(slot)
            if record is None or record.owner != self.name or record.moving or node not in record.replicas or node in record.in_sync:
                return False
            if trio.current_time() - pinned > PIN_CHECK:
                return False  # a worker may stop waiting for it before the record says it is in sync
            done = await self.view.set_in_sync(record, (*record.in_sync, node), added=(node, lease))
        except (DotdoError, EtcdError, OSError, trio.TooSlowError) as exc:
            log.warning("slot %d: cannot catch replica %s up yet: %s", slot, node, exc)
            await trio.sleep(RETRY_MOVE)
            return False
        if done is None:
            return False
        await self.view.until(done.epoch)
        log.info("slot %d: replica %s is in sync", slot, node)
        return True

    def _next_move(self) -> Any:
        state = self.view.state
        if not self.locator.serving or not self.view.formed:
            return None
        mine = [m for m in plan(state.slots, state.nodes, state.draining) if m.source == self.name]
        return mine[0] if mine else None

    # -- leaving -----------------------------------------------------------------------

    async def leave(self) -> None:
        """Drain: ask for this node's slots to move, and wait (up to the drain timeout)
        until they have, or until no other node could take them."""
        view, name = self.view, self.name
        if not self.locator.serving:
            return
        try:
            await view.set_draining(name)
        except EtcdError as exc:
            log.warning("node %s cannot drain: %s; stopping with its slots", name, exc)
            return
        with trio.move_on_after(self.settings.drain_timeout) as waited:
            while True:
                state = view.state
                held = [r for r in state.slots.values() if r.owner == name]
                takers = [n for n in state.nodes if n != name and n not in state.draining]
                if not held or not takers:
                    break
                await view.changed()
        if waited.cancelled_caught:
            log.warning("node %s: the drain did not finish within %g s; stopping with its remaining slots", name, self.settings.drain_timeout)
        held = sum(1 for r in view.state.slots.values() if r.owner == name)
        log.info("node %s leaves holding %d slots", name, held)
