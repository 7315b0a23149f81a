"""Failover: when a slot's owner is not live, one of its in-sync replicas takes it over
at a new epoch and makes its copies the actors' databases.

Every node runs this for the slots it replicates (worker 0 of each node). For a slot
whose owner holds no lease:

1. **Who.** The first live node of the record's in-sync replicas acts; the others
   wait. Every in-sync replica holds every acknowledged commit (a reply waits for
   each of them, ``dotdo.runtime.placement.replication``), so any one will do. A
   slot none of whose in-sync replicas is live stays unavailable until its owner, or
   one of them, returns. With ``ack`` ``none`` nothing was waited for: the first live
   replica acts, with what it has.
2. **Claim.** One etcd transaction makes it the owner, *promoting*, at a new epoch:
   it compares the record's epoch, that the old owner's node key is gone and that
   its own is there (``ClusterView.take_over``). Calls to the slot wait meanwhile,
   as for a move. The old owner stopped serving at its own deadline, before its
   lease could expire, and its database guard refuses anything after.
3. **Gather.** It asks the other live in-sync replicas which copies they hold and at
   which position of which stream (``$node.replica_positions``). Streams are named
   by the slot's epoch when their primary activated the actor, then the time, so a
   later stream sorts after an earlier one; for each actor the copy furthest along
   wins (it may hold a commit that was never acknowledged, which is no loss), fetched
   from the replica that holds it (``$node.replica_fetch``) when it is not its own.
4. **Promote.** Each winning copy replaces whatever the node held of the actor and
   becomes its database (``ReplicaStore.take``), with the side files (history archive,
   branches) this node's copy holds (an in-sync replica has those of every
   acknowledged commit); files this node kept of the slot's
   other actors, from a time it owned the slot, are stale and deleted; alarms and
   subscriptions are indexed; the actor directory lists the actors. One transaction
   ends the promotion (``promoted``): the node serves the slot, and the replica plan
   gives it new replicas, which are caught up before they are in sync.

A node that restarts while promoting finds its record promoting and does it again
(a copy already taken is in place; the others are gathered anew).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import trio

from dotdo.storage import side_files
from dotdo.storage.address import Address
from dotdo.storage.directory import Entry
from dotdo.storage.errors import DotdoError

from dotdo.runtime.cluster.etcd import EtcdError
from dotdo.runtime.cluster.slots import SlotRecord
from dotdo.runtime.core import values
from dotdo.runtime.placement.handover import MOVE_TIMEOUT, NODE_TARGET, Handover, remove_actor_files
from dotdo.runtime.placement.replication import FETCH, POSITIONS, Replication

if TYPE_CHECKING:
    from dotdo.runtime.placement.cluster import ClusterLocator

log = logging.getLogger("dotdo.cluster")

LOOK_EVERY = 0.5


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
        self._stuck: set[int] = set()  # slots said to stay unavailable (said once)

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
        if not self.locator.serving:
            return
        if record.owner == self.name and record.promoting:
            await self._promote(record)  # ours, begun before (a restart) or just now
            return
        if record.owner in nodes or self.name not in record.replicas or record.moving_to is not None:
            self._gone.pop(record.slot, None)
            self._stuck.discard(record.slot)
            return
        self._gone.setdefault(record.slot, trio.current_time())
        candidates = record.replicas if self.ack == "none" else record.in_sync
        live = [r for r in candidates if r in nodes]
        if not live:
            if record.slot not in self._stuck:
                self._stuck.add(record.slot)
                log.warning(
                    "slot %d: its owner %s is not live, nor any of its in-sync replicas (%s): it stays unavailable",
                    record.slot, record.owner, ",".join(record.in_sync) or "none",
                )
            return
        if live[0] != self.name:
            return  # another replica acts
        others = tuple(r for r in record.replicas if r in nodes and r != self.name)
        in_sync = tuple(r for r in record.in_sync if r in others)
        claimed = await self.view.take_over(record, self.name, others, in_sync)
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
        for node in record.replicas if self.ack == "none" else record.in_sync:
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
            side_files.move(source, target)  # its history and branches, as its replicas held them
            entries.append(entry)
        if directory is not None:
            # What this node kept of the slot's other actors is from a time it owned the
            # slot: no in-sync replica has them, so nothing acknowledged is in them since.
            taken = {(e.namespace, e.hex) for e in entries}
            stale = [e for e in directory.of_slot(config.slots, record.slot) if (e.namespace, e.hex) not in taken]
            for entry in stale:
                remove_actor_files(self.data_dir, entry)
            directory.forget(stale)
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
