"""Replicating a cluster node's active actors to the replicas of their slots, and the
output gate that waits for them (issue 21's data path; failover and repair build on it).

**Primary.** When an actor of a slot that has replicas is activated, the node starts a
*stream* for it: a random id, a base (the whole database, ``serialize``d at
activation, position 0) and then every commit read from its WAL right after it
(``ActorDatabase.replicate``, ``dotdo.storage.replication``), numbered 1, 2, ...
One feeder task per replica node sends, in one ``$node.replicate`` call at a time,
everything that node has not acknowledged yet, for every stream that lists it: commits
of many actors that committed meanwhile travel together, so the cost per turn is one
round trip, shared. A base travels first, in parts (``$node.replicate_base``).

**Acknowledgement.** A turn's reply leaves once enough replicas hold its commit
(``Activation.output``, awaited by the turn core after the commit): with ``ack``
``quorum``, a majority of the slot's copies (the primary and its replicas: one replica
of two, one of one), with ``all`` every replica, with ``none`` none (asynchronous:
what the replicas have not acknowledged is lost with the primary's disk). A turn whose
commit is not held in time fails with ``Unavailable`` (the commit is on the primary;
whether a later primary has it depends on the replicas).

**Replica.** ``$node.replicate`` is taken only from the slot's owner for a node its
record lists as a replica; the commits are held in the node's ``ReplicaStore`` (a
redo log written first, then the copy) and answered with the position each copy holds
(-1: this copy needs a base first, which the primary then sends).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from dotdo.storage.errors import DotdoError
from dotdo.storage.replication import ReplicaGap, ReplicaStore

from dotdo.runtime.cluster.slots import slot_of
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
SEND_TIMEOUT = 10.0
RETRY = 0.5
NEEDS_BASE = -1
"""A replica's answer for a copy that must start from a base."""
REFUSED = -2
"""A replica's answer for an actor it is not (yet, as its view says) a replica of."""
MAX_UNACKED = 4096
"""Commits a stream keeps for a replica that does not acknowledge them; past it the
replica is sent a new base when it answers again."""


def needed(replicas: int, ack: str) -> int:
    """Replica acknowledgements a commit needs among ``replicas`` (besides the primary)."""
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
    commits: list[tuple[int, bytes]] = field(default_factory=list)  # not yet held by every replica
    acked: dict[str, int] = field(default_factory=dict)  # each replica's position; absent: needs the base
    changed: trio.Event = field(default_factory=trio.Event)
    closed: bool = False

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class Replication:
    """A worker's replication, as primary of its actors and as replica of others' (see
    the module).

    Args:
        supervisor: This worker's supervisor.
        locator: The node's locator (the slot table, the links to other nodes).
        ack: ``quorum``, ``all`` or ``none``.
        durable: Whether replicas fsync what they hold before acknowledging it.
        timeout: Seconds a turn waits for its commit to be held before it fails.
    """

    def __init__(self, supervisor: Supervisor, locator: ClusterLocator, *, ack: str = "quorum", durable: bool = False, timeout: float = SEND_TIMEOUT) -> None:
        if ack not in ACKS:
            raise ValueError(f"ack is one of {', '.join(ACKS)}, not {ack!r}")
        self.sup = supervisor
        self.locator = locator
        self.name = locator.name
        self.ack = ack
        self.timeout = timeout
        self.store = ReplicaStore(supervisor.config.data_dir, durable)
        self.streams: dict[tuple[str, str], Stream] = {}
        self._feeders: dict[str, trio.Event] = {}
        self._seen: dict[int, tuple[str, ...]] = {}  # each owned slot's replicas, as last seeded
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
        slot = self._slot(activation.id)
        if slot is None or not self.replicas_of(slot) or self.sup.config.storage.read_only:
            return
        db = activation.db

        def image() -> bytes | None:
            if db.closed:
                return None
            conn = db.connection
            return None if conn.in_transaction else conn.serialize("main")

        # A stream is named by the slot's epoch, then chance: the later primary's sorts after.
        record = self.locator.view.slot(slot)
        name = (record.epoch if record is not None else 0).to_bytes(8, "big") + secrets.token_bytes(8)
        stream = Stream(activation.id, slot, name, image)
        stream.base = image()
        self.streams[activation.id.namespace, activation.id.hex] = stream

        def commit(data: bytes) -> None:
            stream.seq += 1
            stream.commits.append((stream.seq, data))
            self._wake(stream)

        db.replicate(commit)
        activation.output = lambda: self.held(stream)
        self._wake(stream)

    def _closed(self, activation: Activation) -> None:
        stream = self.streams.pop((activation.id.namespace, activation.id.hex), None)
        if stream is not None:
            stream.closed = True
            stream.notify()

    def placement_changed(self) -> None:
        """The slot table changed: replicas may have joined a stream (they need a base),
        and a slot of this node that gained replicas has its idle actors seeded."""
        for stream in list(self.streams.values()):
            self._wake(stream)
            stream.notify()  # a turn waiting for replicas that left the slot's list looks again
        for slot, record in self.locator.view.state.slots.items():
            if record.owner != self.name or record.moving:
                continue
            gained = set(record.replicas) - set(self._seen.get(slot, ()))
            self._seen[slot] = record.replicas
            if gained and self._nursery is not None:
                self._nursery.start_soon(self._seed, slot)

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
            try:
                await self.sup.run_turn(actor, _nothing)
            except DotdoError as exc:
                log.warning("slot %d: cannot seed %s on its replicas: %s", slot, actor, exc)
                continue
            stream = self.streams.get((entry.namespace, entry.hex))
            if stream is not None:
                with trio.move_on_after(self.timeout):
                    while not all(n in stream.acked for n in self.replicas_of(slot)):
                        await stream.changed.wait()
            self.sup.passivate(actor)
            seeded += 1
        if seeded:
            log.info("slot %d: seeded %d idle actors on its replicas", slot, seeded)

    def _wake(self, stream: Stream) -> None:
        for node in self.replicas_of(stream.slot):
            wake = self._feeders.get(node)
            if wake is None:
                wake = self._feeders[node] = trio.Event()
                if self._nursery is not None:
                    self._nursery.start_soon(self._feed, node)
            wake.set()

    async def held(self, stream: Stream) -> None:
        """Wait until enough replicas hold the stream's last commit (see the module)."""
        target = stream.seq
        with trio.move_on_after(self.timeout):
            while True:
                replicas = self.replicas_of(stream.slot)
                have = sum(1 for node in replicas if stream.acked.get(node, -1) >= target)
                if have >= needed(len(replicas), self.ack):
                    return
                await stream.changed.wait()
        raise Unavailable(
            f"{stream.actor}: its commit was not held by enough replicas within {self.timeout:g} s; "
            "it is on this node, and may or may not survive its loss"
        )

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
        # Only the streams with something for this node: a base, or commits it lacks.
        mine = [
            s for s in self.streams.values()
            if node in self.replicas_of(s.slot) and (node not in s.acked or s.acked[node] < s.seq)
        ]
        if not mine:
            return
        link = await self.locator.nodes.link(node, info.advertise)
        for stream in mine:
            if node not in stream.acked:  # a base first, in parts
                await self._send_base(link, node, stream)
        mine = [s for s in mine if not s.closed and node in s.acked]
        if not mine:
            return
        entries = []
        for stream in mine:
            position = stream.acked.get(node)
            pending = [] if position is None else [data for seq, data in stream.commits if seq > position]
            entries.append([stream.actor.namespace, stream.actor.hex, stream.id, pending])
        reply = values.unpack(await link.call_raw(NODE_TARGET, [(REPLICATE, values.pack([self.name, entries]))], SEND_TIMEOUT))
        again = False
        for stream, position in zip(mine, reply):
            if position == NEEDS_BASE:
                stream.acked.pop(node, None)  # it needs a base: the next round sends one
                again = True
                continue
            if position == REFUSED:  # its view does not have it a replica yet: later
                again = True
                continue
            stream.acked[node] = position
            self._trim(stream)
            stream.notify()
        if again or any(stream.acked.get(node, -1) < stream.seq for stream in mine):
            await trio.sleep(RETRY if again else 0)
            self._feeders[node].set()

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
        stream.acked[node] = at
        if all(n in stream.acked for n in self.replicas_of(stream.slot)):
            stream.base = None  # every replica has one: no need to keep it

    def _trim(self, stream: Stream) -> None:
        """Forget the commits every replica holds; a replica that lags past
        ``MAX_UNACKED`` gets a new base instead."""
        based = [stream.acked[n] for n in self.replicas_of(stream.slot) if n in stream.acked]
        low = min(based, default=stream.seq)
        stream.commits = [(seq, data) for seq, data in stream.commits if seq > low]
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
                namespace, hex_id, stream, commits = _shape(entry, 4, method)
                if not self._accepts(sender, namespace, hex_id):
                    positions.append(REFUSED)
                    continue
                try:
                    positions.append(self.store.receive(namespace, hex_id, stream, commits))
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

