"""Slot handover: a node gives one of its slots, actors and files, to another node.

The owner of a slot moves it (``Handover.move``), in four steps, each safe to stop at:

1. **begin**: one etcd transaction marks the slot moving to the target at a new epoch
   (compared with the epoch it was read at). From the moment each process of the
   cluster sees it, calls to the slot wait (``ClusterLocator.placed``) instead of
   activating anything;
2. **release**: every worker of this node closes the slot's activations once their
   turns end (``$node.release``, answered once the worker has seen the moving epoch
   and holds none);
3. **copy**: each actor's files (database, WAL, history archive, branches), as the
   actor directory lists them (``dotdo.storage.directory``), stream to the target
   over the transport in chunks (``$node.receive``) into a staging folder there; the
   target then puts them in place, replacing whatever it held of the slot before,
   and indexes their alarms and subscriptions (``$node.install``);
4. **end**: one etcd transaction gives the slot to the target at a new epoch. Only
   then does this node delete its copies.

A move that fails before its end (the target died, a transfer broke) is ended the
other way: the slot stays here at a new epoch and serves again. A node that died in
the middle finds its own moving slots at start and ends them the same way. The target
never serves a slot before the record names it, and this node never serves one after
(its database guard refuses every output point of an actor whose slot it no longer
owns: ``ClusterLocator.guard``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from dotdo.storage.address import Address
from dotdo.storage.backup import fsync_dir
from dotdo.storage.database import ActorDatabase
from dotdo.storage.directory import Entry, files_of
from dotdo.storage.errors import DotdoError, StorageError

from dotdo.runtime.cluster.etcd import EtcdUnavailable
from dotdo.runtime.cluster.slots import SlotRecord, slot_key, slot_of
from dotdo.runtime.cluster.view import ClusterView
from dotdo.runtime.core import values
from dotdo.runtime.core.errors import ProtocolError
from dotdo.runtime.core.ids import ActorId, id_from_name, id_from_string
from dotdo.runtime.transport.connection import Connection

if TYPE_CHECKING:
    from dotdo.runtime.placement.cluster import Nodes
    from dotdo.runtime.supervisor import Supervisor
    from dotdo.runtime.transport.peers import Peers

log = logging.getLogger("dotdo.cluster")

NODE_TARGET: ActorId = id_from_name("Cluster", "node")
"""The target of a node operation's frame (the transport needs one; it is ignored)."""
RELEASE = "$node.release"
RECEIVE = "$node.receive"
INSTALL = "$node.install"
CHUNK = 1024 * 1024
"""Bytes of a file sent per ``$node.receive``."""
IN_FLIGHT = 4
"""Chunks of a slot's files on their way at once."""
RELEASE_POLL = 0.01
STAGING = "_dotdo/incoming"
MOVE_TIMEOUT = 300.0
"""Seconds one node operation of a move may take."""
END_TIMEOUT = 30.0
"""Seconds a move's end may take once its files are at the target (etcd not answering):
past them the outcome is read from the record when the node next looks."""


class MoveFailed(DotdoError):
    """A slot could not be handed over; it stays with its owner."""


def _actor_files(data_dir: Path, entry: Entry) -> list[Path]:
    """Every regular file of one actor, folders walked."""
    found: list[Path] = []
    for path in files_of(data_dir, entry.namespace, entry.hex):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            found.append(path)
    return found


def remove_actor_files(data_dir: Path, entry: Entry) -> None:
    """Delete every file of one actor under ``data_dir`` (database, WAL, history, branches)."""
    _remove(files_of(data_dir, entry.namespace, entry.hex))


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                path.unlink()
            except FileNotFoundError:
                pass


class Handover:
    """Moves slots between this node and others (see the module), for one worker.

    Args:
        supervisor: This worker's supervisor.
        view: The node's view of the cluster.
        name: This node's name.
        nodes: Links to the other nodes.
        peers: This node's other workers (None: the node is one process).
    """

    def __init__(self, supervisor: Supervisor, view: ClusterView, name: str, nodes: Nodes, peers: Peers | None) -> None:
        self.sup = supervisor
        self.view = view
        self.name = name
        self.nodes = nodes
        self.peers = peers
        self.data_dir = supervisor.config.data_dir

    # -- the node operations (what other workers and nodes call) -------------------

    async def handle(self, method: str, payload: bytes) -> bytes:
        """Run one ``$node.`` operation; its result packed."""
        args = values.unpack(payload)
        if not isinstance(args, list):
            raise ProtocolError(f"{method} takes a list of arguments")
        if method == RELEASE:
            slot, epoch = _ints(args, 2, method)
            return values.pack(await self.release_here(slot, epoch))
        if method == RECEIVE:
            if len(args) != 5 or not isinstance(args[2], str) or not isinstance(args[4], bytes):
                raise ProtocolError(f"{method} takes [slot, epoch, path, offset, data]")
            slot, epoch, offset = _ints([args[0], args[1], args[3]], 3, method)
            self._write(slot, epoch, args[2], offset, args[4])
            return values.pack(None)
        if method == INSTALL:
            if len(args) != 3 or not isinstance(args[2], list):
                raise ProtocolError(f"{method} takes [slot, epoch, actors]")
            slot, epoch = _ints(args[:2], 2, method)
            entries = [_entry(raw) for raw in args[2]]
            self._install(slot, epoch, entries)
            return values.pack(len(entries))
        raise ProtocolError(f"unknown node operation {method}")

    async def release_here(self, slot: int, epoch: int) -> int:
        """Close this worker's activations of ``slot`` once the view shows it moving at
        ``epoch`` (so no new one is made); the number closed."""
        await self.view.until(epoch)
        config = self.view.state.config
        if config is None:
            return 0
        closed = 0
        while True:
            held = [a for a in self.sup.table if slot_of(a.id.hex, config.slots) == slot]
            if not held:
                return closed
            for activation in held:
                self.sup.moved(activation.id)
                closed += 1
            await trio.sleep(RELEASE_POLL)

    def _staging(self, slot: int, epoch: int) -> Path:
        return self.data_dir / STAGING / f"{slot:05d}.{epoch}"

    def _write(self, slot: int, epoch: int, relative: str, offset: int, data: bytes) -> None:
        """Write a chunk of a file of the slot into its staging folder."""
        path = self._staging(slot, epoch) / _checked(relative)
        if offset == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            # A move begun again at the same epoch never happens (each begin is a new
            # revision), but a chunk sent twice after a broken link may: start over.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        else:
            fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def _install(self, slot: int, epoch: int, entries: list[Entry]) -> None:
        """Put the staged files of ``slot`` in place (replacing what this node held of
        the slot: files left by an earlier tenure) and index them."""
        staging = self._staging(slot, epoch)
        directory = self.sup.table.directory
        config = self.view.state.config
        if directory is None or config is None:
            raise MoveFailed("this node cannot take slots: its data directory is read-only or the cluster is not formed")
        record = self.view.slot(slot)
        if record is None or record.owner == self.name:
            raise MoveFailed(f"slot {slot} is already this node's: nothing to install")
        stale = directory.of_slot(config.slots, slot)
        for entry in stale:
            _remove(files_of(self.data_dir, entry.namespace, entry.hex))
            self.sup.alarms.forget(ActorId(entry.namespace, entry.hex, entry.name))
        directory.forget(stale)
        if staging.is_dir():
            for top in sorted(staging.iterdir()):  # namespaces
                for staged in sorted(p for p in top.rglob("*") if p.is_file()):
                    final = self.data_dir / staged.relative_to(staging)
                    final.parent.mkdir(parents=True, exist_ok=True)
                    with open(staged, "rb+") as handle:
                        os.fsync(handle.fileno())
                    os.replace(staged, final)
                    fsync_dir(final.parent)
            shutil.rmtree(staging, ignore_errors=True)
        directory.add(entries)
        for entry in entries:
            self.index_actor(entry)

    def index_actor(self, entry: Entry) -> None:
        """Index the alarms and subscriptions of an actor just received."""
        actor = ActorId(entry.namespace, entry.hex, entry.name)
        if not Address(entry.namespace, entry.hex).path(self.data_dir).exists():
            return
        try:
            db = ActorDatabase.open(self.data_dir, actor.address, self.sup.config.storage, name=entry.name)
        except StorageError:
            log.exception("cannot index %s after receiving it", actor)
            return
        try:
            self.sup.alarms.reindex(actor, db)
            self.sup.subscriptions.reindex(actor, db)
        finally:
            db.close()

    # -- moving a slot out ---------------------------------------------------------

    async def move(self, record: SlotRecord, target: str) -> bool:
        """Hand ``record``'s slot to node ``target`` (see the module); whether it moved.

        Raises:
            MoveFailed: The move could not complete; the slot stays here.
        """
        info = self.view.state.nodes.get(target)
        if info is None:
            return False
        moving = await self.view.begin_move(record, target)
        if moving is None:
            return False  # the record changed since it was read: plan again
        started = trio.current_time()
        try:
            with trio.fail_after(MOVE_TIMEOUT):
                await self._release_everywhere(moving)
                sent = await self._copy(moving, info.advertise)
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await self.end(moving, done=False)
            if isinstance(exc, Exception):
                raise MoveFailed(f"slot {record.slot} could not move to {target}: {exc}; it stays on {self.name}") from exc
            raise
        # The end and the deletion of this node's copies go together, even when the node
        # is stopping (its drain ends the moment the record changes hands): a move
        # cancelled in between would leave the actors' old files here for good.
        ended: bool | None = None
        with trio.CancelScope(shield=True), trio.move_on_after(END_TIMEOUT):
            ended = await self.end(moving, done=True)
            if ended:
                self._drop(sent)
        if ended is None:
            raise MoveFailed(f"slot {record.slot}: etcd did not confirm its move to {target} within {END_TIMEOUT:g} s; its files stay here")
        if not ended:
            raise MoveFailed(f"slot {record.slot} could not move to {target}: it is not live any more; the slot stays on {self.name}")
        log.info(
            "slot %d moved to %s: %d actors in %.2f s", record.slot, target, len(sent), trio.current_time() - started
        )
        return True

    async def _release_everywhere(self, moving: SlotRecord) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.release_here, moving.slot, moving.epoch)
            if self.peers is not None:
                for index in range(self.peers.count):
                    if index != self.peers.index:
                        nursery.start_soon(self._release_on, index, moving)

    async def _release_on(self, worker: int, moving: SlotRecord) -> None:
        assert self.peers is not None
        payload = values.pack([moving.slot, moving.epoch])
        await self.peers.call_raw(worker, NODE_TARGET, [(RELEASE, payload)], MOVE_TIMEOUT)

    async def _copy(self, moving: SlotRecord, advertise: str) -> list[Entry]:
        """Stream the slot's files to its target and have them installed; the actors sent."""
        directory = self.sup.table.directory
        config = self.view.state.config
        assert directory is not None and config is not None and moving.moving_to is not None
        entries = [e for e in directory.of_slot(config.slots, moving.slot) if files_of(self.data_dir, e.namespace, e.hex)]
        link = await self.nodes.link(moving.moving_to, advertise)
        window = trio.Semaphore(IN_FLIGHT)
        async with trio.open_nursery() as nursery:
            for entry in entries:
                for path in _actor_files(self.data_dir, entry):
                    await self._send_file(link, moving, path, window, nursery)
        listed = [[e.namespace, e.hex, e.name] for e in entries]
        await link.call_raw(NODE_TARGET, [(INSTALL, values.pack([moving.slot, moving.epoch, listed]))], MOVE_TIMEOUT)
        return entries

    async def _send_file(self, link: Connection, moving: SlotRecord, path: Path, window: trio.Semaphore, nursery: trio.Nursery) -> None:
        """Send one file in chunks: the first (which creates the file there) alone, the
        rest up to ``IN_FLIGHT`` at a time (each lands at its offset)."""
        relative = str(path.relative_to(self.data_dir))

        async def send(offset: int, data: bytes) -> None:
            try:
                payload = values.pack([moving.slot, moving.epoch, relative, offset, data])
                await link.call_raw(NODE_TARGET, [(RECEIVE, payload)], MOVE_TIMEOUT)
            finally:
                window.release()

        with open(path, "rb") as handle:
            offset = 0
            while True:
                data = handle.read(CHUNK)
                if offset and not data:
                    return
                await window.acquire()
                if offset == 0:
                    await send(0, data)
                else:
                    nursery.start_soon(send, offset, data)
                offset += len(data)
                if len(data) < CHUNK:
                    return

    async def end(self, moving: SlotRecord, *, done: bool) -> bool:
        """End the move in etcd, however long etcd takes to answer (an answer lost in
        transit is read back from the record); whether the slot went to the target. A
        target that is not live any more does not get it: the move ends the other way."""
        key = slot_key(self.view.prefix, moving.slot)
        while True:
            try:
                if await self.view.end_move(moving, done=done) is not None:
                    return done
                kv = await self.view.etcd.get(key)
                if kv is None or kv.mod_revision != moving.epoch:
                    # Ended already, by the attempt whose answer was lost: as it said.
                    ended = None if kv is None else SlotRecord.decode(moving.slot, kv.value, kv.mod_revision)
                    return ended is not None and ended.owner == moving.moving_to
                if done:
                    log.warning("slot %d: its target %s is not live; the move ends the other way", moving.slot, moving.moving_to)
                    done = False
            except EtcdUnavailable as exc:
                log.warning("slot %d: cannot end its move yet (%s); trying again", moving.slot, exc)
                await trio.sleep(0.5)

    def _drop(self, sent: list[Entry]) -> None:
        """Delete this node's copies of actors handed over, and their index entries."""
        directory = self.sup.table.directory
        for entry in sent:
            _remove(files_of(self.data_dir, entry.namespace, entry.hex))
            # Its subscriptions stay in the index: the cluster's mirror of them
            # (dotdo.runtime.placement.subscription_mirror), now published by its new owner.
            self.sup.alarms.forget(ActorId(entry.namespace, entry.hex, entry.name))
        if directory is not None:
            directory.forget(sent)


def _ints(args: list[object], count: int, method: str) -> list[int]:
    if len(args) < count or not all(type(a) is int and a >= 0 for a in args[:count]):
        raise ProtocolError(f"{method}: expected {count} whole numbers")
    return [int(a) for a in args[:count]]  # type: ignore[call-overload]


def _entry(raw: object) -> Entry:
    if not isinstance(raw, list) or len(raw) != 3 or not all(isinstance(v, str) for v in raw[:2]):
        raise ProtocolError("an actor is [namespace, hex, name or nil]")
    namespace, hex_id, name = raw
    try:
        id_from_string(namespace, hex_id)
    except DotdoError as exc:
        raise ProtocolError(f"bad actor: {exc}") from None
    return Entry(namespace, hex_id, name if isinstance(name, str) else None)


def _checked(relative: str) -> Path:
    """A file path sent by another node, refused unless it is inside a namespace folder
    of the data directory."""
    path = Path(relative)
    if path.is_absolute() or ".." in path.parts or len(path.parts) < 3 or path.parts[0].startswith("_"):
        raise ProtocolError(f"refusing a file outside the actors' folders: {relative!r}")
    return path
