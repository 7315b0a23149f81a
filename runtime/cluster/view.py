"""What a node knows of its cluster, kept current by an etcd watch, and the transactions
that change it.

Everything lives under one key prefix (``/dotdo/{cluster}`` by default):

- ``config``: the cluster's fixed settings (``{"slots": N, "formed": bool}``);
- ``nodes/{name}``: one per live node, bound to its lease (``dotdo.runtime.cluster.session``);
- ``slots/{slot}``: one record per slot (``dotdo.runtime.cluster.slots``);
- ``drain/{name}``: a node asked to hand all its slots over (``dotdo cluster drain``).

``ClusterView.run`` reads the prefix once and then watches it from the next revision,
so the view moves through etcd's revisions in order; if the watch breaks it reads the
whole prefix again. The view is a cache for routing: every decision that must be agreed
is a transaction here that compares the revision the decision was made at.

A new cluster is formed by its first node: ``form`` creates ``config`` (compared with
``create_revision == 0``, so one node wins), then the slot records in batches (etcd
takes at most 128 operations per transaction), then marks the cluster formed. A
former that dies half-way finishes when it comes back (the records name it); nobody
serves a slot that has no record.
"""

from __future__ import annotations

import dataclasses

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import trio

from dotdo.runtime.cluster.etcd import Compacted, Compare, Etcd, EtcdError, EtcdUnavailable, Event, KeyValue, Op
from dotdo.runtime.cluster.session import NodeInfo, node_key
from dotdo.runtime.cluster.slots import DEFAULT_SLOTS, MAX_SLOTS, SlotRecord, parse_slot_key, slot_key

log = logging.getLogger("dotdo.cluster")

BATCH = 100
"""Slot records created per transaction while forming (etcd's limit is 128 operations)."""
REREAD_DELAY = 0.5
REFRESH_EVERY = 10.0
"""Seconds a watch runs before the view reads the prefix whole again and watches on
from there: a watch whose connection was cut without a word (a partition) gives no
error and no events, and an etcd that sends no progress notifications cannot tell."""


@dataclass(frozen=True, slots=True)
class Config:
    """The cluster's fixed settings."""

    slots: int
    formed: bool
    by: str

    def encode(self) -> bytes:
        return json.dumps({"slots": self.slots, "formed": self.formed, "by": self.by}, sort_keys=True).encode()

    @classmethod
    def decode(cls, value: bytes) -> Config:
        try:
            body = json.loads(value)
            config = cls(int(body["slots"]), bool(body["formed"]), str(body["by"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a cluster configuration: {value[:80]!r}") from exc
        if not 1 <= config.slots <= MAX_SLOTS:
            raise ValueError(f"a cluster of {config.slots} slots (1 to {MAX_SLOTS})")
        return config


@dataclass
class State:
    """The cluster as of one etcd revision."""

    revision: int = 0
    config: Config | None = None
    config_revision: int = 0
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    leases: dict[str, int] = field(default_factory=dict)
    """Each live node's key's create revision: a node that restarts has another."""
    slots: dict[int, SlotRecord] = field(default_factory=dict)
    draining: set[str] = field(default_factory=set)


class ClusterView:
    """A node's view of the cluster under ``prefix`` (see the module).

    Args:
        etcd: The cluster's etcd.
        prefix: The cluster's key prefix.
    """

    def __init__(self, etcd: Etcd, prefix: str) -> None:
        self.etcd = etcd
        self.prefix = prefix.rstrip("/")
        self.state = State()
        self._changed = trio.Event()
        self._refresh = trio.Event()

    # -- reading ---------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self.state.revision

    def slot(self, slot: int) -> SlotRecord | None:
        return self.state.slots.get(slot)

    @property
    def formed(self) -> bool:
        config = self.state.config
        return config is not None and config.formed and len(self.state.slots) == config.slots

    async def changed(self) -> None:
        """Wait until the view moves to a later revision."""
        await self._changed.wait()

    async def until(self, revision: int) -> None:
        """Wait until the view has seen ``revision`` (a transaction's, say)."""
        while self.state.revision < revision:
            await self.changed()

    def refresh(self) -> None:
        """Read the cluster whole again now and watch on from there (the node could
        not reach etcd for a while: its watch may be dead without knowing it)."""
        self._refresh.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read the cluster, report started, then follow it until cancelled: reading it
        all again whenever the watch breaks, every ``REFRESH_EVERY`` seconds, and when
        asked (``refresh``)."""
        await self.reload()
        task_status.started()
        while True:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch, nursery.cancel_scope)
                with trio.move_on_after(REFRESH_EVERY):
                    await self._refresh.wait()
                nursery.cancel_scope.cancel()
            self._refresh = trio.Event()
            try:
                await self.reload()
            except EtcdUnavailable as exc:
                log.warning("etcd does not answer: %s", exc)
                await trio.sleep(REREAD_DELAY)

    async def _watch(self, done: trio.CancelScope) -> None:
        """Follow the watch until it ends, then cancel ``done`` (to read again)."""
        try:
            async with self.etcd.watch(self.prefix + "/", self.state.revision + 1) as batches:
                async for events, revision in batches:
                    self.apply(events, revision)
        except (Compacted, EtcdUnavailable) as exc:
            log.info("cluster watch ended (%s); reading the cluster again", exc)
            await trio.sleep(REREAD_DELAY)
        done.cancel()

    async def reload(self) -> None:
        """Read everything under the prefix again."""
        kvs, revision = await self.etcd.range(self.prefix + "/")
        state = State(revision=revision)
        for kv in kvs:
            self._put(state, kv)
        self.state = state
        self._notify()

    def apply(self, events: list[Event], revision: int) -> None:
        """Take a batch of watched changes, as of ``revision``."""
        for event in events:
            if event.type == "put":
                self._put(self.state, event.kv)
            else:
                self._delete(self.state, event.kv.key)
        self.state.revision = max(self.state.revision, revision)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _put(self, state: State, kv: KeyValue) -> None:
        rest = kv.key[len(self.prefix) + 1 :]
        try:
            if rest == "config":
                state.config = Config.decode(kv.value)
                state.config_revision = kv.mod_revision
            elif rest.startswith("nodes/"):
                name = rest[len("nodes/") :]
                state.nodes[name] = NodeInfo.decode(name, kv.value)
                state.leases[name] = kv.create_revision
            elif rest.startswith("drain/"):
                state.draining.add(rest[len("drain/") :])
            else:
                slot = parse_slot_key(self.prefix, kv.key)
                if slot is not None:
                    state.slots[slot] = SlotRecord.decode(slot, kv.value, kv.mod_revision)
        except ValueError as exc:
            log.warning("ignoring %s: %s", kv.key, exc)

    def _delete(self, state: State, key: str) -> None:
        rest = key[len(self.prefix) + 1 :]
        if rest == "config":
            state.config = None
        elif rest.startswith("nodes/"):
            state.nodes.pop(rest[len("nodes/") :], None)
            state.leases.pop(rest[len("nodes/") :], None)
        elif rest.startswith("drain/"):
            state.draining.discard(rest[len("drain/") :])
        else:
            slot = parse_slot_key(self.prefix, key)
            if slot is not None:
                state.slots.pop(slot, None)

    # -- changing ----------------------------------------------------------------------

    async def form(self, node: str, slots: int = DEFAULT_SLOTS) -> None:
        """Form the cluster with every slot on ``node`` if it has not been formed (or
        finish forming it, when ``node`` began). Returns when the view shows it formed.

        Raises:
            ValueError: ``slots`` is out of range.
            EtcdError: The configuration in etcd is not readable.
        """
        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"a cluster has 1 to {MAX_SLOTS} slots (got {slots})")
        key = f"{self.prefix}/config"
        config = Config(slots, False, node)
        created = await self.etcd.txn([Compare.create_revision(key, "==", 0)], [Op.put(key, config.encode())], [Op.get(key)])
        if not created.succeeded:
            held = created.responses[0]
            if not held:
                raise EtcdError("the cluster's configuration vanished while it was being read; try again")
            config = Config.decode(held[0].value)
            if config.formed or config.by != node:
                await self._until_formed()
                return
        # Ours to form (now or after a crash half-way): the records not yet made, in
        # batches, each only if the configuration is still ours and unformed.
        kvs, _ = await self.etcd.range(f"{self.prefix}/slots/")
        made = {parse_slot_key(self.prefix, kv.key) for kv in kvs}
        missing = [s for s in range(config.slots) if s not in made]
        unformed = Compare.value(key, "==", config.encode())
        for start in range(0, len(missing), BATCH):
            batch = missing[start : start + BATCH]
            puts = [Op.put(slot_key(self.prefix, s), SlotRecord(s, node, 0).encode()) for s in batch]
            absent = [Compare.create_revision(slot_key(self.prefix, s), "==", 0) for s in batch]
            result = await self.etcd.txn([unformed, *absent], puts)
            if not result.succeeded:
                raise EtcdError("the cluster changed while it was being formed; start the node again")
        formed = Config(config.slots, True, node)
        await self.etcd.txn([unformed], [Op.put(key, formed.encode())])
        await self._until_formed()

    async def _until_formed(self) -> None:
        while not self.formed:
            await self.changed()

    async def begin_move(self, record: SlotRecord, target: str) -> SlotRecord | None:
        """Mark ``record``'s slot as moving to ``target``, if it is still at
        ``record.epoch``; the record at its new epoch, or None if it changed."""
        return await self._replace(record, dataclasses.replace(record, moving_to=target))

    async def end_move(self, record: SlotRecord, *, done: bool) -> SlotRecord | None:
        """End the move of a moving ``record``: ownership goes to its target (``done``:
        only while the target is live) or stays with its owner; the record at its new
        epoch, or None if it changed (or, with ``done``, the target is not live)."""
        if record.moving_to is None:
            raise ValueError(f"slot {record.slot} is not moving")
        owner = record.moving_to if done else record.owner
        live = [Compare.create_revision(node_key(self.prefix, record.moving_to), ">", 0)] if done else []
        # The new owner is no replica of its own; the others still hold every acknowledged commit.
        replicas = tuple(r for r in record.replicas if r != owner)
        in_sync = tuple(r for r in record.in_sync if r != owner)
        return await self._replace(record, SlotRecord(record.slot, owner, 0, None, replicas, in_sync=in_sync), live)

    async def take_over(self, record: SlotRecord, node: str, replicas: tuple[str, ...], in_sync: tuple[str, ...]) -> SlotRecord | None:
        """Make ``node``, a replica of ``record``'s slot, its owner (promoting) in place
        of an owner that is not live, with these replicas (``in_sync`` of them in
        sync): only if the record is still at its epoch, its owner holds no lease and
        ``node`` does; the record at its new epoch, or None."""
        fenced = [
            Compare.create_revision(node_key(self.prefix, record.owner), "==", 0),
            Compare.create_revision(node_key(self.prefix, node), ">", 0),
        ]
        return await self._replace(record, SlotRecord(record.slot, node, 0, None, replicas, True, in_sync), fenced)

    async def promoted(self, record: SlotRecord) -> SlotRecord | None:
        """End the promotion of ``record``'s slot: its owner serves it."""
        return await self._replace(record, dataclasses.replace(record, promoting=False))

    async def set_replicas(self, record: SlotRecord, replicas: tuple[str, ...]) -> SlotRecord | None:
        """Give ``record``'s slot these replicas, if it is still at ``record.epoch``;
        the record at its new epoch, or None if it changed."""
        in_sync = tuple(r for r in record.in_sync if r in replicas)
        return await self._replace(record, dataclasses.replace(record, replicas=replicas, in_sync=in_sync))

    async def set_in_sync(
        self, record: SlotRecord, in_sync: tuple[str, ...], added: tuple[str, int] | None = None
    ) -> SlotRecord | None:
        """Say which of ``record``'s replicas are in sync (see ``SlotRecord``), if it is
        still at ``record.epoch`` and, with ``added`` (a node and the create revision of
        its key when it was caught up), that node has not restarted since; the record
        at its new epoch, or None if it changed."""
        if not set(in_sync) <= set(record.replicas):
            raise ValueError(f"slot {record.slot}: {in_sync} are not all replicas of it")
        ordered = tuple(r for r in record.replicas if r in in_sync)
        same = [] if added is None else [Compare.create_revision(node_key(self.prefix, added[0]), "==", added[1])]
        return await self._replace(record, dataclasses.replace(record, in_sync=ordered), same)

    async def _replace(self, record: SlotRecord, new: SlotRecord, also: list[Compare] | None = None) -> SlotRecord | None:
        key = slot_key(self.prefix, record.slot)
        compare = [Compare.mod_revision(key, "==", record.epoch), *(also or [])]
        result = await self.etcd.txn(compare, [Op.put(key, new.encode())])
        if not result.succeeded:
            return None
        return dataclasses.replace(new, epoch=result.revision)

    async def set_draining(self, node: str, draining: bool = True) -> int:
        """Ask ``node`` to hand all its slots over (or stop asking); the revision."""
        key = f"{self.prefix}/drain/{node}"
        if draining:
            return await self.etcd.put(key, b"")
        await self.etcd.delete(key)
        return (await self.etcd.range(key))[1]


def owners(records: Iterable[SlotRecord]) -> dict[str, list[int]]:
    """The slots of each owner, in order."""
    held: dict[str, list[int]] = {}
    for record in sorted(records, key=lambda r: r.slot):
        held.setdefault(record.owner, []).append(record.slot)
    return held
