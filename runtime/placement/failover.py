"""Failover: when a slot's owner is not live, one of its replicas takes it over at a new
epoch and makes its copies the actors' databases.

Every node runs this for the slots it replicates (worker 0 of each node). For a slot
whose owner holds no lease:

1. **Who.** The first live node in the record's replica list acts; the others wait.
   It acts only when enough replicas are live that every acknowledged commit is on
   one of them: with ``ack`` ``quorum`` a commit was held by (R + 1) // 2 of the R
   replicas, so R - (R + 1) // 2 + 1 of them must answer (both of two; one of one);
   with ``all`` one suffices; with ``none`` one is taken, with what it has.
2. **Claim.** One etcd transaction makes it the owner, *promoting*, at a new epoch:
   it compares the record's epoch, that the old owner's node key is gone and that
   its own is there (``ClusterView.take_over``). Calls to the slot wait meanwhile,
   as for a move. The old owner stopped serving at its own deadline, before its
   lease could expire, and its database guard refuses anything after.
3. **Gather.** It asks every other live replica which copies it holds and at which
   position of which stream (``$node.replica_positions``). Streams are named by the
   slot's epoch when their primary activated the actor, so a later stream sorts after
   an earlier one; for each actor the copy furthest along wins, fetched from the
   replica that holds it (``$node.replica_fetch``) when it is not its own.
4. **Promote.** Each winning copy replaces whatever the node held of the actor and
   becomes its database (``ReplicaStore.take``); alarms and subscriptions are indexed;
   the actor directory lists it. One transaction ends the promotion (``promoted``):
   the node serves the slot, and the replica plan gives it new replicas.

A node that restarts while promoting finds its record promoting and does it again
(a copy already taken is in place; the others are gathered anew).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import trio

from dotdo.storage.address import Address
from dotdo.storage.directory import Entry
from dotdo.storage.errors import DotdoError

from dotdo.runtime.cluster.etcd import EtcdError
from dotdo.runtime.cluster.slots import SlotRecord
from dotdo.runtime.core import values
from dotdo.runtime.placement.handover import MOVE_TIMEOUT, NODE_TARGET, Handover, remove_actor_files
from dotdo.runtime.placement.replication import FETCH, POSITIONS, Replication, needed

if TYPE_CHECKING:
    from dotdo.runtime.placement.cluster import ClusterLocator

log = logging.getLogger("dotdo.cluster")

LOOK_EVERY = 0.5


def quorum_of(replicas: int, ack: str) -> int:
    """Live replicas a takeover needs so that every acknowledged commit is on one."""
    if replicas == 0:
        return 1
    held = needed(replicas, ack)
    return 1 if held == 0 else replicas - held + 1


class Failover:
    """Takes over the slots this node replicates when their owners die (see the module).

    Args:
        locator: The node's locator.
        replication: This worker's replication (its replica copies).
        handover: This worker's handover (indexing what it takes over).
        ack: The cluster's acknowledgement setting.
    """

    def __init__(self, locator: ClusterLocator, replication: Replication, handover: Handover, ack: str) -> None:
        self.locator = locator
        self.view = locator.view
        self.name = locator.name
        self.replication = replication
        self.handover = handover
        self.ack = ack
        self.data_dir = handover.data_dir
        self.taken: list[tuple[int, float]] = []  # (slot, seconds from seeing its owner gone to serving it)
        self._gone: dict[int, float] = {}

    async def run(self) -> None:
        while True:
            for record in list(self.view.state.slots.values()):
                try:
                    await self._consider(record)
                except (DotdoError, EtcdError, OSError) as exc:
                    log.warning("slot %d: cannot take it over yet: %s", record.slot, exc)
            with trio.move_on_after(LOOK_EVERY):
                await self.view.changed()

    async def _consider(self, record: SlotRecord) -> None:
        nodes = self.view.state.nodes
        if not self.locator.session.serving:
            return
        if record.owner == self.name and record.promoting:
            await self._promote(record)  # ours, begun before (a restart) or just now
            return
        if record.owner in nodes or self.name not in record.replicas or record.moving_to is not None:
            self._gone.pop(record.slot, None)
            return
        self._gone.setdefault(record.slot, trio.current_time())
        live = [r for r in record.replicas if r in nodes]
        if not live or live[0] != self.name:
            return  # another replica acts
        if len(live) < quorum_of(len(record.replicas), self.ack):
            log.warning(
                "slot %d: its owner %s is not live, and only %d of its %d replicas are: it stays unavailable",
                record.slot, record.owner, len(live), len(record.replicas),
            )
            return
        claimed = await self.view.take_over(record, self.name, tuple(r for r in live if r != self.name))
        if claimed is None:
            return  # the record changed: look again
        log.warning("slot %d: taking it over from %s (not live) at epoch %d", record.slot, record.owner, claimed.epoch)
        await self.view.until(claimed.epoch)
        await self._promote(claimed)

    async def _promote(self, record: SlotRecord) -> None:
        config = self.view.state.config
        assert config is not None
        store = self.replication.store
        best: dict[tuple[str, str], tuple[bytes, int, str]] = {}
        for entry in store.directory.of_slot(config.slots, record.slot):
            copy = store.copy(entry.namespace, entry.hex)
            best[entry.namespace, entry.hex] = (copy.stream, copy.position, self.name)
        for node in record.replicas:
            info = self.view.state.nodes.get(node)
            if info is None:
                continue
            link = await self.locator.nodes.link(node, info.advertise)
            held = values.unpack(await link.call_raw(NODE_TARGET, [(POSITIONS, values.pack([record.slot]))], MOVE_TIMEOUT))
            for namespace, hex_id, stream, position in held:
                mine = best.get((namespace, hex_id))
                if mine is None or (stream, position) > mine[:2]:
                    best[namespace, hex_id] = (stream, position, node)
        directory = self.handover.sup.table.directory
        entries = []
        for (namespace, hex_id), (_stream, _position, holder) in sorted(best.items()):
            entry = Entry(namespace, hex_id, None)
            if holder != self.name:
                await self._fetch(holder, entry)
            if not store.path(namespace, hex_id).exists():
                continue  # noted, but no base ever arrived: nothing was acknowledged for it here
            source = store.take(namespace, hex_id)
            remove_actor_files(self.data_dir, entry)
            target = Address(namespace, hex_id).path(self.data_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
            entries.append(entry)
        if directory is not None:
            directory.add(entries)
        for entry in entries:
            self.handover.index_actor(entry)
        done = await self.view.promoted(record)
        if done is None:
            return
        began = self._gone.pop(record.slot, None)
        if began is not None:
            self.taken.append((record.slot, trio.current_time() - began))
        log.warning("slot %d: taken over with %d actors; serving it at epoch %d", record.slot, len(entries), done.epoch)

    async def _fetch(self, holder: str, entry: Entry) -> None:
        """Copy another replica's copy of one actor over this node's own."""
        info = self.view.state.nodes.get(holder)
        if info is None:
            raise DotdoError(f"replica {holder} went away while its copy of {entry.namespace}/{entry.hex[:12]} was needed")
        link = await self.locator.nodes.link(holder, info.advertise)
        copy = self.replication.store.copy(entry.namespace, entry.hex)
        partial = copy.path.with_name(copy.path.name + ".fetch")
        offset = 0
        with open(partial, "wb") as out:
            while True:
                total, chunk = values.unpack(
                    await link.call_raw(NODE_TARGET, [(FETCH, values.pack([entry.namespace, entry.hex, offset]))], MOVE_TIMEOUT)
                )
                out.write(chunk)
                offset += len(chunk)
                if offset >= total or not chunk:
                    break
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, copy.path)
        copy.log.unlink(missing_ok=True)
        self.replication.store.forget_copy(entry.namespace, entry.hex)
