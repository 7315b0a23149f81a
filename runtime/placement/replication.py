"""Replicating a cluster node's active actors to the replicas of their slots, and the
output gate that waits for them (failover builds on it: ``failover``).

**Primary.** When an actor is activated on a node whose slots have replicas, the node
starts a *stream* for it: an id (the slot's epoch, then the time), a base (the whole
database, ``serialize``d between turns when a replica needs one) and then every commit read from its WAL right after it
(``ActorDatabase.replicate``, ``dotdo.storage.replication``), numbered 1, 2, ...
One feeder task per replica node sends, in one ``$node.replicate`` call at a time,
everything that node has not acknowledged yet, for every stream that lists it: commits
of many actors that committed meanwhile travel together, so the cost per turn is one
round trip, shared. A base travels first, in parts (``$node.replicate_base``).

**Acknowledgement.** A turn's reply leaves once its commit is held by every *in-sync*
replica of its slot and by every other live replica caught up since it was added
(or last excluded for lagging: a new one is not waited for while it fetches its bases)
(``Activation.output``, awaited by the turn core after the commit), as Kafka's in-sync
replicas work: the slot's record names the in-sync ones (``SlotRecord.in_sync``), and
only they can take the slot over, so whichever does holds every acknowledged commit.
``ack`` sets how many copies must hold it: with ``quorum`` a majority of the slot's
copies (the primary and its live replicas: one replica of two, one of one), with
``all`` every replica, with ``none`` nothing is waited for (asynchronous: what the
replicas have not acknowledged is lost with the primary's disk). An in-sync replica
that is not live, or leaves a commit unacknowledged for ``LAG`` seconds (half the
turn's time, when it has less), is taken out
of the in-sync set in one transaction (on the record's epoch) before a reply leaves
without it, as long as enough copies stay; another replica is only no longer waited
for. Without enough copies the turn waits, and fails with ``Unavailable`` after
``timeout`` (the commit is on the primary; whether a later primary has it depends on
the replicas).

**Catching up.** A replica that is not in sync (new, back from a restart, or taken
out) is caught up by the slot's owner (``catch_up``, on every worker of the node):
the positions its copies hold are read back from it (a copy it lost or that diverged
gets a base), the slot's idle actors are seeded (each activated for a turn that does
nothing, so that its stream sends a base), and once it holds every stream's last
commit it is waited for again (a replica excluded for lagging stays so until then,
so that one that cannot be reached holds no turn up while it is tried); once it
holds what was committed before that, one transaction adds it to the in-sync set
(compared on its lease: not if it restarted meanwhile). A catch-up fails if the
replica was excluded for lagging meanwhile; once a worker has caught it up it waits
for it regardless (``PIN_HOLD``), so that nothing is acknowledged without it between
that and the transaction. A node that starts takes itself out of every in-sync set
first: it cannot know what it missed, or whether its disk is the one it had.

**Side files.** An actor's history archive and branches, files beside its database,
travel with its commits: each round looks at what changed of them since what that
replica was last sent (``dotdo.storage.side_files``: a log's new tail, a new file
whole, a deletion), so a reply that waits for a commit waits for them too. A turn that
changed the actor's branches without committing (a fork) asks for a round of its own
and waits for it; a passivated actor's last side files (closing writes the archive's
last records) go in the next round.

**Replica.** ``$node.replicate`` is taken only from the slot's owner for a node its
record lists as a replica; the commits are held in the node's ``ReplicaStore`` (a
redo log written first, then the copy) and answered with the position each copy holds
(-1: this copy needs a base first, which the primary then sends).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from dotdo.storage import side_files
from dotdo.storage.address import Address
from dotdo.storage.errors import DotdoError
from dotdo.storage.replication import ReplicaGap, ReplicaStore

from dotdo.runtime.cluster.etcd import EtcdError
from dotdo.runtime.cluster.slots import SlotRecord, slot_of
from dotdo.runtime.core import values
from dotdo.runtime.core.errors import ProtocolError, Unavailable
from dotdo.runtime.core.ids import ActorId, id_from_string
from dotdo.runtime.placement.handover import NODE_TARGET

if TYPE_CHECKING:
    from dotdo.runtime.core.activation import Activation
    from dotdo.runtime.placement.cluster import ClusterLocator
    from dotdo.runtime.supervisor import Supervisor

log = logging.getLogger("dotdo.cluster")

REPLICATE = "$node.replicate"
REPLICATE_BASE = "$node.replicate_base"
POSITIONS = "$node.replica_positions"
FETCH = "$node.replica_fetch"
FETCH_CHUNK = 4 * 1024 * 1024
ACKS = ("quorum", "all", "none")
BASE_CHUNK = 4 * 1024 * 1024
"""Bytes of a base sent per ``$node.replicate_base``."""
BATCH_BYTES = 4 * 1024 * 1024
"""Bytes of commits sent per ``$node.replicate`` at most (the rest in the next round)."""
SEND_TIMEOUT = 10.0
LAG = 3.0
"""Seconds an in-sync replica may leave a commit unacknowledged before its owner takes
it out of the in-sync set (when enough others stay)."""
CATCH_UP = "$node.replica_catch_up"
PIN_HOLD = 30.0
"""Seconds a worker keeps waiting for a replica it has caught up, whatever happens,
so that the owner can say it is in sync: the owner does so only if it can begin
within ``PIN_CHECK`` of the first worker's catch-up."""
PIN_CHECK = 5.0
RETRY = 0.5
NEEDS_BASE = -1
"""A replica's answer for a copy that must start from a base."""
REFUSED = -2
"""A replica's answer for an actor it is not (yet, as its view says) a replica of."""
MAX_UNACKED = 4096
"""Commits a stream keeps for a replica that does not acknowledge them; past it the
replica is sent a new base when it answers again."""


def needed(replicas: int, ack: str) -> int:
    """In-sync replicas a slot with ``replicas`` needs before a reply leaves (besides
    the primary): a majority of the copies with ``quorum``, every one with ``all``."""
    if ack == "none" or replicas == 0:
        return 0
    if ack == "all":
        return replicas
    return (replicas + 1) // 2  # a majority of the replicas + 1 copies, the primary being one


@dataclass
class Stream:
    """One active actor's replication, as its primary."""

    actor: ActorId
    slot: int
    id: bytes
    image: Callable[[], bytes | None]  # the database now, between turns (None: inside one)
    base: bytes | None = None  # an image at position base_seq, while a replica needs it
    base_seq: int = 0
    seq: int = 0
    commits: list[tuple[int, bytes, float]] = field(default_factory=list)  # (seq, data, when): not yet held by every replica
    acked: dict[str, int] = field(default_factory=dict)  # each replica's position; absent: needs the base
    changed: trio.Event = field(default_factory=trio.Event)
    closed: bool = False
    branches: int = 0  # the branches folder's mtime when last looked at (0: none)
    sides: dict[str, Path] = field(default_factory=dict)  # its side folders (side_files.roots)

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class Replication:
    """A worker's replication, as primary of its actors and as replica of others' (see
    the module).

    Args:
        supervisor: This worker's supervisor.
        locator: The node's locator (the slot table, the links to other nodes).
        replicating: Whether this node's slots have replicas (``--replicas`` > 0); it
            keeps copies for other nodes either way.
        ack: ``quorum``, ``all`` or ``none``.
        durable: Whether replicas fsync what they hold before acknowledging it.
        timeout: Seconds a turn waits for its commit to be held before it fails.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        locator: ClusterLocator,
        *,
        replicating: bool = True,
        ack: str = "quorum",
        durable: bool = False,
        timeout: float = SEND_TIMEOUT,
    ) -> None:
        if ack not in ACKS:
            raise ValueError(f"ack is one of {', '.join(ACKS)}, not {ack!r}")
        self.sup = supervisor
        self.replicating = replicating
        self.locator = locator
        self.name = locator.name
        self.ack = ack
        self.timeout = timeout
        self.store = ReplicaStore(supervisor.config.data_dir, durable)
        self.streams: dict[tuple[str, str], Stream] = {}
        self._feeders: dict[str, trio.Event] = {}
        # The streams each replica node may lack something of (a feeder's round looks at
        # these only, not at every stream).
        self._pending: dict[str, dict[tuple[str, str], Stream]] = {}
        self._shipped = {"commits": 0, "commit_bytes": 0, "side_bytes": 0, "bases": 0, "base_bytes": 0, "calls": 0}
        self.excluded: dict[tuple[int, str], float] = {}  # replicas not in sync, not waited for (since when)
        self.included: set[tuple[int, str]] = set()  # replicas not in sync yet, waited for (caught up)
        self._pins: dict[tuple[int, str], float] = {}  # caught up, about to be in sync: waited for until then
        # The side files (history, branches) each replica holds of each actor, with the
        # replica's lease then, and the passivated actors whose side files a replica may lack.
        self._side: dict[tuple[str, str, str], tuple[int, side_files.Manifest]] = {}
        self._side_due: dict[str, set[tuple[str, str]]] = {}
        # Turns that changed an actor's branches ask for its side files to be sent
        # (a count per actor and replica), and wait until a round that looked after
        # their ask is acknowledged.
        self._side_asked: dict[tuple[str, str, str], int] = {}
        self._side_done: dict[tuple[str, str, str], int] = {}
        self._nursery: trio.Nursery | None = None
        supervisor.hooks.activated.append(self._activated)
        supervisor.hooks.closed.append(self._closed)

    # -- the primary -------------------------------------------------------------------

    def replicas_of(self, slot: int) -> tuple[str, ...]:
        record = self.locator.view.slot(slot)
        return record.replicas if record is not None and record.owner == self.name else ()

    def _slot(self, actor: ActorId) -> int | None:
        config = self.locator.view.state.config
        return None if config is None else slot_of(actor.hex, config.slots)

    def _activated(self, activation: Activation) -> None:
        # Every activation of a replicating node streams, even of a slot that has no
        # replicas yet: one that gains them while the actor is active must find its
        # commits (a catch-up gives them a base, then what follows).
        slot = self._slot(activation.id)
        if slot is None or not self.replicating or self.sup.config.storage.read_only:
            return
        db = activation.db

        def image() -> bytes | None:
            if db.closed:
                return None
            conn = db.connection
            return None if conn.in_transaction else conn.serialize("main")

        # A stream is named by the slot's epoch, then the time: a later one sorts after.
        record = self.locator.view.slot(slot)
        name = (record.epoch if record is not None else 0).to_bytes(8, "big") + time.time_ns().to_bytes(8, "big")
        stream = Stream(activation.id, slot, name, image)
        stream.sides = side_files.roots(self._db_path(activation.id.namespace, activation.id.hex))
        stream.branches = self._branches_mtime(stream)
        if self.replicas_of(slot):
            stream.base = image()
        self.streams[activation.id.namespace, activation.id.hex] = stream

        def commit(data: bytes) -> None:
            stream.seq += 1
            if not self.replicas_of(slot):
                stream.base = None  # nobody to send it to: a replica that comes gets a base
                return
            stream.commits.append((stream.seq, data, trio.current_time()))
            self._wake(stream)

        db.replicate(commit)
        activation.output = lambda: self.held(stream)
        self._wake(stream)

    def _closed(self, activation: Activation) -> None:
        stream = self.streams.pop((activation.id.namespace, activation.id.hex), None)
        if stream is not None:
            stream.closed = True
            stream.notify()
            # Closing wrote its last side files (the history archive's last commits):
            # its replicas get them, as a passivated actor's, in the next round.
            for node in self.replicas_of(stream.slot):
                self._side_due.setdefault(node, set()).add((activation.id.namespace, activation.id.hex))
                self._feeder(node)

    def placement_changed(self) -> None:
        """The slot table changed: replicas may have joined a stream (they need a
        base) or left it (what they had acknowledged no longer counts)."""
        for slot, node in list(self._pins):
            record = self.locator.view.slot(slot)
            if record is None or node in record.in_sync or node not in record.replicas:
                # In sync now (the in-sync set governs it from here: one that lags is
                # taken out, then no longer waited for), or no longer its replica.
                del self._pins[slot, node]
        config = self.locator.view.state.config
        for namespace, hex_id, node in list(self._side):
            if config is None or node not in self.replicas_of(slot_of(hex_id, config.slots)):
                del self._side[namespace, hex_id, node]  # sent again in full if it is again
        for stream in list(self.streams.values()):
            replicas = self.replicas_of(stream.slot)
            for node in [n for n in stream.acked if n not in replicas]:
                del stream.acked[node]
            self._wake(stream)
            stream.notify()  # a turn waiting for replicas that left the slot's list looks again

    async def _seed(self, slot: int) -> None:
        """Give the replicas of ``slot`` a base of each of its actors this worker serves
        that is not active (an active one's stream sends its own): each is activated
        for a turn that does nothing, its base sent, and passivated again."""
        directory = self.sup.table.directory
        config = self.locator.view.state.config
        if directory is None or config is None:
            return
        seeded = 0
        for entry in directory.of_slot(config.slots, slot):
            if self.sup.closing:
                return
            actor = ActorId(entry.namespace, entry.hex, entry.name)
            if self.locator.locate(actor) is not None or self.sup.is_active(actor):
                continue
            if entry.namespace not in self.sup.registry.namespaces:
                continue
            await self.sup.run_turn(actor, _nothing)
            stream = self.streams.get((entry.namespace, entry.hex))
            if stream is not None:
                with trio.fail_after(self.timeout):
                    while not stream.closed and not all(n in stream.acked for n in self.replicas_of(slot)):
                        await stream.changed.wait()
            self.sup.passivate(actor)
            seeded += 1
        if seeded:
            log.info("slot %d: seeded %d idle actors on its replicas", slot, seeded)

    def _wake(self, stream: Stream) -> None:
        key = (stream.actor.namespace, stream.actor.hex)
        for node in self.replicas_of(stream.slot):
            self._pending.setdefault(node, {})[key] = stream
            self._feeder(node)

    def _db_path(self, namespace: str, hex_id: str) -> Path:
        return Address(namespace, hex_id).path(self.sup.config.data_dir)

    @staticmethod
    def _branches_mtime(stream: Stream) -> int:
        """The modification time of the actor's branches folder (0: it has none): a
        branch made, replaced or deleted changes it."""
        try:
            return os.stat(stream.sides["branches"]).st_mtime_ns
        except FileNotFoundError:
            return 0

    def _feeder(self, node: str) -> None:
        """Wake the feeder of ``node`` (started if it has none yet)."""
        wake = self._feeders.get(node)
        if wake is None:
            wake = self._feeders[node] = trio.Event()
            if self._nursery is not None:
                self._nursery.start_soon(self._feed, node)
        wake.set()

    async def held(self, stream: Stream) -> None:
        """Wait until every in-sync replica (and every one being caught up) holds the
        stream's last commit, and enough are in sync (see the module)."""
        if self.ack == "none":
            return
        target = stream.seq
        began = trio.current_time()
        # A turn that changed the actor's branches (a fork, a deletion) may have
        # committed nothing: its replicas are sent its side files in a round begun now.
        asked: dict[str, int] = {}
        branches = self._branches_mtime(stream)
        if branches != stream.branches:
            stream.branches = branches
            for node in self.replicas_of(stream.slot):
                key = (stream.actor.namespace, stream.actor.hex, node)
                asked[node] = self._side_asked[key] = self._side_asked.get(key, 0) + 1
                self._side_due.setdefault(node, set()).add(key[:2])
                self._feeder(node)
        # A replica lags after LAG, or sooner when the turn's own deadline is nearer:
        # with a short call timeout, a stalled replica must still be found out.
        deadline = min(trio.current_effective_deadline(), began + self.timeout)
        lag = min(LAG, max(0.05, (deadline - began) / 2))
        missing: list[str] = []
        with trio.move_on_after(self.timeout):
            while True:
                record = self.locator.view.slot(stream.slot)
                if record is None or record.owner != self.name or not self.locator.serving:
                    # Taken over (a move waits for the turn's end), or cut off: whether the
                    # new owner has this commit is not known here.
                    raise Unavailable(
                        f"{stream.actor}: this node lost its slot while its commit was being replicated; "
                        "the commit may or may not be kept; retry"
                    )
                waited = self.waited(record)
                missing = [
                    node for node in waited
                    if stream.acked.get(node, -1) < target
                    or self._side_done.get((stream.actor.namespace, stream.actor.hex, node), 0) < asked.get(node, 0)
                ]
                if not missing and self.enough(record, waited):
                    return
                state = self.locator.view.state
                slow = trio.current_time() - began >= lag
                gone = [n for n in missing if n not in state.nodes]
                # A replica not in sync that lags or went away is no longer waited for;
                # an in-sync one is taken out of the in-sync set first.
                for node in missing:
                    if node not in record.in_sync and (slow or node in gone) and not self._pinned(stream.slot, node):
                        self.excluded.setdefault((stream.slot, node), trio.current_time())
                lagging = [n for n in missing if n in record.in_sync and (slow or n in gone or n in state.draining)]
                if lagging:
                    await self._drop_lagging(record, lagging)
                with trio.move_on_after(max(0.05, began + lag - trio.current_time())):
                    await stream.changed.wait()
        raise Unavailable(
            f"{stream.actor}: its commit was not held by enough replicas within {self.timeout:g} s "
            f"(waiting for {', '.join(sorted(missing)) or 'more replicas in sync'}); "
            "it is on this node, and may or may not survive its loss"
        )

    def waited(self, record: SlotRecord) -> set[str]:
        """The replicas a commit of ``record``'s slot waits for: the in-sync ones, and
        every other live one that was caught up and has not been excluded for lagging
        since (any live one when those are too few). Waiting for one
        more is always safe; the ones not in sync count towards ``needed`` too, since
        none of them can take the slot over before it is caught up, and whatever is
        acknowledged meanwhile is on it by then (``catch_up`` fails for one excluded
        since it began)."""
        state = self.locator.view.state
        waited = set(record.in_sync)
        slot = record.slot
        for node in record.in_sync:
            self.included.discard((slot, node))  # in sync now: its record says so
        live = [n for n in record.replicas if n in state.nodes and (slot, n) not in self.excluded]
        # A replica not in sync yet is waited for once it is caught up (``catch_up``),
        # not before: a new one would hold every turn up for LAG while it fetches its
        # bases. Unless too few would be waited for without it.
        waited.update(n for n in live if n not in state.draining and (n in record.in_sync or (slot, n) in self.included))
        if not self.enough(record, waited):  # a draining or new replica still counts then
            waited.update(live)
        return waited

    def enough(self, record: SlotRecord, waited: set[str]) -> bool:
        """Whether ``waited`` are enough copies for ``ack`` among the slot's live
        replicas (a replica that is not live is on its way out of the list)."""
        state = self.locator.view.state
        live = sum(1 for node in record.replicas if node in state.nodes and node not in state.draining)
        return len(waited) >= needed(live, self.ack)

    async def _drop_lagging(self, record: SlotRecord, lagging: list[str]) -> None:
        """Take ``lagging`` out of the slot's in-sync set, if enough stay in it."""
        keep = tuple(n for n in record.in_sync if n not in lagging)
        if not self.enough(record, set(keep) | (self.waited(record) - set(lagging))):
            return  # too few would stay: the turn waits for them
        try:
            done = await self.locator.view.set_in_sync(record, keep)
        except EtcdError as exc:
            log.warning("slot %d: cannot take %s out of its in-sync replicas: %s", record.slot, ",".join(lagging), exc)
            return
        if done is not None:
            log.warning("slot %d: replicas %s lag; out of its in-sync set", record.slot, ",".join(lagging))
            await self.locator.view.until(done.epoch)

    def shipped(self) -> dict[str, int]:
        """What this worker has sent its replicas since it started: ``$node.replicate``
        calls, the commits in them and their bytes (page sets), side-file bytes, and
        bases and their bytes (each replica counted)."""
        return dict(self._shipped)

    def lag(self) -> dict[str, dict[str, float]]:
        """How far behind each replica of this worker's active actors is: commits it has
        not acknowledged, streams it lacks a base of, and the age of the oldest commit it
        lacks (seconds)."""
        now = trio.current_time()
        figures: dict[str, dict[str, float]] = {}
        for stream in self.streams.values():
            for node in self.replicas_of(stream.slot):
                entry = figures.setdefault(node, {"commits": 0, "bases": 0, "seconds": 0.0})
                position = stream.acked.get(node)
                if position is None:
                    entry["bases"] += 1
                    continue
                lacking = [when for seq, _, when in stream.commits if seq > position]
                entry["commits"] += len(lacking)
                if lacking:
                    entry["seconds"] = max(entry["seconds"], round(now - lacking[0], 3))
        return figures

    # -- catching a replica up --------------------------------------------------------

    async def catch_up(self, slot: int, node: str) -> None:
        """Bring ``node`` up to date with this worker's actors of ``slot`` (see the
        module); from now on, its acknowledgement is waited for too."""
        info = self.locator.view.state.nodes.get(node)
        if info is None:
            raise Unavailable(f"replica {node} is not live")
        # Until it has answered and holds nearly everything, a replica that was excluded
        # stays so: one that cannot be reached must not hold turns up while it is tried.
        link = await self.locator.nodes.link(node, info.advertise)
        held = values.unpack(await link.call_raw(NODE_TARGET, [(POSITIONS, values.pack([slot]))], SEND_TIMEOUT))
        holds = {(namespace, hex_id): (stream_id, position) for namespace, hex_id, stream_id, position in held}
        for (namespace, hex_id), stream in list(self.streams.items()):
            if stream.slot == slot and holds.get((namespace, hex_id), (None, None))[0] != stream.id:
                stream.acked.pop(node, None)  # it holds another copy, or none: a base
                stream.base = None
        for stream in [s for s in self.streams.values() if s.slot == slot]:
            self._wake(stream)
        await self._seed(slot)
        await self._until_held(slot, node)
        # Waited for from now: once it holds what was committed before, it holds
        # every commit acknowledged (unless it is excluded again meanwhile).
        self.excluded.pop((slot, node), None)
        self.included.add((slot, node))
        began = trio.current_time()
        await self._until_held(slot, node)
        if self.excluded.get((slot, node), began - 1) >= began:
            raise Unavailable(f"replica {node} fell behind while it was caught up on slot {slot}")
        # Waited for until its slot's record says it is in sync (the owner's next
        # transaction, begun within PIN_CHECK), or PIN_HOLD at most.
        self._pins[slot, node] = trio.current_time() + PIN_HOLD

    async def _until_held(self, slot: int, node: str) -> None:
        """Wait until ``node`` holds the last commit of each of this worker's streams
        of ``slot``."""
        with trio.fail_after(self.timeout * 3):
            for stream in [s for s in self.streams.values() if s.slot == slot]:
                while not stream.closed and stream.acked.get(node, -1) < stream.seq:
                    await stream.changed.wait()

    def _pinned(self, slot: int, node: str) -> bool:
        until = self._pins.get((slot, node))
        if until is not None and until < trio.current_time():
            del self._pins[slot, node]
            return False
        return until is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The feeders, one per replica node, until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for node in list(self._feeders):
                    nursery.start_soon(self._feed, node)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self.store.close()

    async def _feed(self, node: str) -> None:
        wake = self._feeders[node]
        while True:
            await wake.wait()
            wake = self._feeders[node] = trio.Event()
            try:
                await self._send(node)
            except (DotdoError, OSError) as exc:
                log.info("replica %s: %s; sending again", node, exc)
                await trio.sleep(RETRY)
                wake.set()
            except Exception:  # a bug here must not take the node down: this feeder goes on
                log.exception("replica %s: sending failed inside dotdo; sending again", node)
                await trio.sleep(RETRY)
                wake.set()

    async def _send(self, node: str) -> None:
        info = self.locator.view.state.nodes.get(node)
        if info is None:
            return  # not live: what it lacks goes when it is back (repair gives it a base)
        # Only the streams with something for this node: a base, or commits it lacks;
        # and the passivated actors whose side files it may lack.
        candidates = self._pending.pop(node, {})
        try:
            await self._round(node, candidates)
        finally:
            # What it still lacks is looked at again in the next round (also after an error).
            pending = self._pending.setdefault(node, {})
            for key, stream in candidates.items():
                if not stream.closed and self._lacks(stream, node):
                    pending.setdefault(key, stream)

    def _lacks(self, stream: Stream, node: str) -> bool:
        return node in self.replicas_of(stream.slot) and (node not in stream.acked or stream.acked[node] < stream.seq)

    async def _round(self, node: str, candidates: dict[tuple[str, str], Stream]) -> None:
        info = self.locator.view.state.nodes.get(node)
        if info is None:
            return
        mine = [s for s in candidates.values() if not s.closed and self._lacks(s, node)]
        streaming = {(s.actor.namespace, s.actor.hex) for s in mine}  # their side files go with their commits
        due = [key for key in self._side_due.pop(node, set()) if key not in streaming]
        if not mine and not due:
            return
        link = await self.locator.nodes.link(node, info.advertise)
        refused = False
        for stream in mine:
            if node not in stream.acked:  # a base first, in parts
                try:
                    await self._send_base(link, node, stream)
                except Unavailable:  # its view does not have it this stream's replica yet
                    refused = True  # the others go on; this one goes again
        for stream in mine:
            if node in stream.acked and stream.acked[node] >= stream.seq:  # its base was all it lacked
                self._trim(stream)
                stream.notify()
        mine = [s for s in mine if not s.closed and node in s.acked and s.acked[node] < s.seq]
        # One call carries at most BATCH_BYTES of commits and side files (a replica far
        # behind is sent what it lacks over several rounds: a frame has a limit); a
        # commit larger than that on its own goes as a base instead. Each actor's side
        # files (history, branches) go with its commits, as they are after them.
        entries = []
        sides: list[tuple[tuple[str, str, str], side_files.Manifest, int]] = []
        sent: list[Stream | None] = []
        budget = BATCH_BYTES
        behind = False
        for stream in mine:
            position = stream.acked[node]
            lacking = [data for seq, data, _ in stream.commits if seq > position]
            if not lacking or len(lacking[0]) > BATCH_BYTES:
                del stream.acked[node]  # its base goes in the next round, in parts
                stream.base = None
                behind = True
                continue
            pending = []
            for data in lacking:
                if len(data) > budget:
                    break
                pending.append(data)
                budget -= len(data)
            if not pending:
                behind = True
                break  # the budget is spent: the rest next round
            ops, complete = self._side_ops(stream.actor.namespace, stream.actor.hex, node, budget, sides, stream.sides)
            budget -= sum(len(op[2]) for op in ops)
            behind = behind or not complete
            entries.append([stream.actor.namespace, stream.actor.hex, stream.id, pending, ops])
            sent.append(stream)
        for namespace, hex_id in due:
            ops, complete = self._side_ops(namespace, hex_id, node, budget, sides)
            if not complete:
                self._side_due.setdefault(node, set()).add((namespace, hex_id))
                behind = True
            if not ops:
                key, _, asked = sides.pop()  # nothing to send: it holds them as they are
                if complete:
                    self._side_done[key] = max(self._side_done.get(key, 0), asked)
                    self._notify(namespace, hex_id)
                continue
            budget -= sum(len(op[2]) for op in ops)
            entries.append([namespace, hex_id, b"", [], ops])
            sent.append(None)
        if not entries:
            if refused or behind:
                await trio.sleep(RETRY if refused else 0)
                self._feeders[node].set()
            return
        payload = values.pack([self.name, entries])
        reply = values.unpack(await link.call_raw(NODE_TARGET, [(REPLICATE, payload)], SEND_TIMEOUT))
        shipped = self._shipped
        shipped["calls"] += 1
        for entry in entries:
            shipped["commits"] += len(entry[3])
            shipped["commit_bytes"] += sum(len(data) for data in entry[3])
            shipped["side_bytes"] += sum(len(op[2]) for op in entry[4])
        again = refused
        for stream, (key, held, asked), position in zip(sent, sides, reply):
            if position in (NEEDS_BASE, REFUSED):
                again = True
                if stream is not None and position == NEEDS_BASE:
                    stream.acked.pop(node, None)  # it needs a base: the next round sends one,
                    stream.base = None  # taken anew (the commits after an older one may be gone)
                elif stream is None and position == NEEDS_BASE:
                    self._side.pop(key, None)  # it holds no copy: nothing to put them beside
                continue
            self._side[key] = (self.locator.view.state.leases.get(node, 0), held)
            if asked:
                self._side_done[key] = max(self._side_done.get(key, 0), asked)
                self._notify(key[0], key[1])
            if stream is not None:
                stream.acked[node] = position
                self._trim(stream)
                stream.notify()
        if again or behind or any(stream is not None and stream.acked.get(node, -1) < stream.seq for stream in sent):
            await trio.sleep(RETRY if again else 0)
            self._feeders[node].set()

    def _notify(self, namespace: str, hex_id: str) -> None:
        stream = self.streams.get((namespace, hex_id))
        if stream is not None:
            stream.notify()

    def _side_ops(
        self,
        namespace: str,
        hex_id: str,
        node: str,
        budget: int,
        sides: list[tuple[tuple[str, str, str], side_files.Manifest, int]],
        folders: dict[str, Path] | None = None,
    ) -> tuple[list[side_files.Operation], bool]:
        """What ``node`` lacks of one actor's side files (at most ``budget`` bytes), with
        what it holds once it has them and the asks they answer appended to ``sides``;
        whether that is all."""
        key = (namespace, hex_id, node)
        asked = self._side_asked.get(key, 0)
        lease, held = self._side.get(key, (0, {}))
        if lease != self.locator.view.state.leases.get(node, 0):
            held = {}  # the replica restarted since: it is sent everything again
        if folders is None:
            folders = side_files.roots(self._db_path(namespace, hex_id))
        ops, after, complete = side_files.changes(folders, held, budget)
        sides.append((key, after, asked if complete else 0))
        return ops, complete

    async def _send_base(self, link: Any, node: str, stream: Stream) -> None:
        """An image of the stream's database to ``node``, taken between turns unless
        the one taken at activation is still wanted."""
        while stream.base is None:
            if stream.closed:
                return  # passivated meanwhile: its next activation starts a new stream
            image = stream.image()
            if image is not None:
                stream.base, stream.base_seq = image, stream.seq
                break
            await trio.sleep(0.005)  # inside a turn: the next gap between turns
        base, at = stream.base, stream.base_seq
        total = len(base)
        for offset in range(0, max(total, 1), BASE_CHUNK):
            part = base[offset : offset + BASE_CHUNK]
            payload = values.pack([self.name, stream.actor.namespace, stream.actor.hex, stream.id, at, offset, total, part])
            await link.call_raw(NODE_TARGET, [(REPLICATE_BASE, payload)], SEND_TIMEOUT)
            self._shipped["base_bytes"] += len(part)
        self._shipped["bases"] += 1
        if not self._follows(stream, at):
            stream.base = None  # the commits after it were forgotten meanwhile: a later one
            raise Unavailable(f"{stream.actor}: its base for {node} went stale while it was sent; sending another")
        stream.acked[node] = at
        if all(n in stream.acked for n in self.replicas_of(stream.slot)):
            stream.base = None  # every replica has one: no need to keep it

    @staticmethod
    def _follows(stream: Stream, at: int) -> bool:
        """Whether the stream still holds every commit after position ``at``."""
        if stream.seq == at:
            return True
        return bool(stream.commits) and stream.commits[0][0] <= at + 1

    def _trim(self, stream: Stream) -> None:
        """Forget the commits every replica holds; a replica that lags past
        ``MAX_UNACKED`` gets a new base instead."""
        replicas = self.replicas_of(stream.slot)
        based = [stream.acked[n] for n in replicas if n in stream.acked]
        if stream.base is not None and any(n not in stream.acked for n in replicas):
            based.append(stream.base_seq)  # a replica about to get that base needs what follows it
        low = min(based, default=stream.seq)
        stream.commits = [commit for commit in stream.commits if commit[0] > low]
        if stream.base is not None and stream.base_seq < low:
            stream.base = None  # the commits that followed it are gone: a later one is taken
        if len(stream.commits) > MAX_UNACKED:
            for node in [n for n in stream.acked if stream.acked[n] == low]:
                del stream.acked[node]
            stream.commits = stream.commits[-MAX_UNACKED:]

    # -- the replica -------------------------------------------------------------------

    async def handle(self, method: str, payload: bytes) -> bytes:
        """Run ``$node.replicate`` or ``$node.replicate_base`` (from the slot's owner)."""
        args = values.unpack(payload)
        if method == REPLICATE_BASE:
            sender, namespace, hex_id, stream, position, offset, total, part = _shape(args, 8, method)
            if not self._accepts(sender, namespace, hex_id):
                raise Unavailable(f"node {self.name} is not a replica of {namespace}/{hex_id[:12]} under {sender} yet; retry")
            self.store.copy(namespace, hex_id).receive_base(stream, position, offset, total, part)
            return values.pack(None)
        if method == REPLICATE:
            sender, entries = _shape(args, 2, method)
            positions = []
            for entry in entries:
                namespace, hex_id, stream, commits, ops = _shape(entry, 5, method)
                if not self._accepts(sender, namespace, hex_id):
                    positions.append(REFUSED)
                    continue
                try:
                    positions.append(self.store.receive(namespace, hex_id, stream, commits, ops))
                except ReplicaGap:
                    positions.append(NEEDS_BASE)
            return values.pack(positions)
        if method == POSITIONS:
            (slot,) = _shape(args, 1, method)
            config = self.locator.view.state.config
            if config is None or not isinstance(slot, int):
                raise ProtocolError(f"{method} takes a slot")
            held = []
            for entry in self.store.directory.of_slot(config.slots, slot):
                copy = self.store.copy(entry.namespace, entry.hex)
                held.append([entry.namespace, entry.hex, copy.stream, copy.position])
            return values.pack(held)
        if method == CATCH_UP:
            slot, node = _shape(args, 2, method)
            if not isinstance(slot, int) or not isinstance(node, str):
                raise ProtocolError(f"{method} takes a slot and a node")
            await self.catch_up(slot, node)
            return values.pack(None)
        if method == FETCH:
            namespace, hex_id, offset = _shape(args, 3, method)
            copy = self.store.copy(namespace, hex_id)
            if offset == 0:
                copy.settle()
            with open(copy.path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read(FETCH_CHUNK)
            return values.pack([copy.path.stat().st_size, chunk])
        raise ProtocolError(f"unknown node operation {method}")

    def _accepts(self, sender: object, namespace: object, hex_id: object) -> bool:
        """Whether this node's view has it a replica of the actor's slot under ``sender``."""
        if not isinstance(sender, str) or not isinstance(namespace, str) or not isinstance(hex_id, str):
            raise ProtocolError("a replication entry names its sender and actor in text")
        try:
            actor = id_from_string(namespace, hex_id)
        except DotdoError as exc:
            raise ProtocolError(f"bad actor: {exc}") from None
        slot = self._slot(actor)
        record = None if slot is None else self.locator.view.slot(slot)
        return record is not None and record.owner == sender and self.name in record.replicas


async def _nothing(instance: Any) -> None:
    """A turn that only activates its actor (seeding its replicas)."""


def _shape(args: Any, count: int, method: str) -> list[Any]:
    if not isinstance(args, list) or len(args) != count:
        raise ProtocolError(f"{method} takes {count} arguments")
    return args

