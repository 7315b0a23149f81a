"""Replicating one actor's database, commit by commit: what the primary captures and
what a replica applies (the first part of a cluster's replicated storage).

**Capture.** Right after each commit of the actor's connection, a WAL hook reads that
commit's frames from the ``-wal`` file (``CommitReader``): the pages it wrote, the
last image of each, and the database's size in pages after it. A commit is then a
self-contained *page set* (``Commit``, encoded with a CRC), the unit LiteFS ships too:
applying it to the state before it gives the state after it, whatever SQLite did to
its own WAL meanwhile (checkpoints, restarts, which the reader follows by the WAL's
salts).

**Apply.** A replica keeps a plain copy of the database file, which nothing opens
while it replicates, and a redo log beside it (``<db>.replica``). ``ReplicaCopy.apply``
appends the commit to the log (fsynced, with ``durable``) and only then writes its
pages into the copy, so a crash at any point leaves the log holding every commit the
replica acknowledged, and the next open (``ReplicaCopy.open``) writes them again
(page writes are idempotent). Each commit carries its position (``seq``): a commit at
or below the replica's position is a repeat and is ignored; one that skips a position
is refused (``ReplicaGap``: the replica must catch up first). Once the copy is
fsynced the log is emptied (``settle``). A copy whose log is empty is a valid SQLite
database: promoting the replica is opening it.

Synchronous, like the rest of ``storage``.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dotdo.storage import side_files
from dotdo.storage.address import Address
from dotdo.storage.alarm_index import INDEX_DIR
from dotdo.storage.directory import ActorDirectory, Entry
from dotdo.storage.errors import StorageError

WAL_HEADER = 32
FRAME_HEADER = 24
_FRAME = struct.Struct(">II")  # a frame header starts: page number, database pages after a commit
_COMMIT = struct.Struct(">IIIQ")  # page size, database pages, page count, seq
_RECORD = struct.Struct(">II")  # a redo record: body length, crc32 of the body
_POSITION = struct.Struct(">16sQ")  # the stream, the position in it
LOG_MAGIC = b"dotdo-replica-2\n"


class ReplicaGap(StorageError):
    """A commit arrived that does not follow the replica's position: it must catch up
    (or be copied afresh) first."""


@dataclass(frozen=True, slots=True)
class Commit:
    """One commit as a page set.

    Attributes:
        seq: Its position in the actor's sequence of commits (1, 2, ...).
        page_size: The database's page size.
        db_pages: The database's size in pages after the commit.
        pages: The image of each page the commit wrote, by page number (from 1).
    """

    seq: int
    page_size: int
    db_pages: int
    pages: dict[int, bytes]

    def encode(self) -> bytes:
        """The commit as bytes: a header, then each page number and image, then a CRC."""
        parts = [_COMMIT.pack(self.page_size, self.db_pages, len(self.pages), self.seq)]
        for pgno in sorted(self.pages):
            parts.append(pgno.to_bytes(4, "big"))
            parts.append(self.pages[pgno])
        body = b"".join(parts)
        return body + zlib.crc32(body).to_bytes(4, "big")

    @classmethod
    def decode(cls, data: bytes) -> Commit:
        """A commit from ``encode``'s bytes.

        Raises:
            StorageError: The bytes are not a whole, intact commit.
        """
        if len(data) < _COMMIT.size + 4 or zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "big"):
            raise StorageError("a replicated commit arrived damaged (its checksum does not match)")
        page_size, db_pages, count, seq = _COMMIT.unpack_from(data)
        expected = _COMMIT.size + count * (4 + page_size) + 4
        if len(data) != expected or page_size < 512 or page_size & (page_size - 1):
            raise StorageError("a replicated commit is malformed")
        pages: dict[int, bytes] = {}
        offset = _COMMIT.size
        for _ in range(count):
            pgno = int.from_bytes(data[offset : offset + 4], "big")
            pages[pgno] = data[offset + 4 : offset + 4 + page_size]
            offset += 4 + page_size
        return cls(seq, page_size, db_pages, pages)


class CommitReader:
    """Reads each commit's frames from a connection's WAL, called from its WAL hook
    right after the commit (``read(frames)``, the WAL's frame count the hook is told).

    Args:
        wal: The ``-wal`` file of the database.
        seq: The position of the last commit already replicated (the next is seq + 1).
    """

    def __init__(self, wal: str, seq: int = 0) -> None:
        self._wal = wal
        self.seq = seq
        self._salts = b""
        self._frames = 0  # frames of the WAL (with these salts) already read

    def read(self, frames: int) -> Commit:
        """The commit that just ended with the WAL holding ``frames`` frames.

        Raises:
            StorageError: The WAL cannot be read, or holds no commit frame there.
        """
        try:
            with open(self._wal, "rb") as wal:
                header = wal.read(WAL_HEADER)
                if len(header) < WAL_HEADER:
                    raise StorageError(f"the WAL {self._wal} has no header after a commit")
                page_size = int.from_bytes(header[8:12], "big")
                salts = header[16:24]
                if salts != self._salts or frames < self._frames:  # restarted since
                    self._salts, self._frames = salts, 0
                start = self._frames
                size = FRAME_HEADER + page_size
                wal.seek(WAL_HEADER + start * size)
                data = wal.read((frames - start) * size)
        except OSError as exc:
            raise StorageError(f"cannot read the WAL {self._wal}: {exc}") from None
        count = len(data) // size
        pages: dict[int, bytes] = {}
        db_pages = 0
        for i in range(count):
            base = i * size
            pgno, after = _FRAME.unpack_from(data, base)
            pages[pgno] = data[base + FRAME_HEADER : base + size]
            if after:
                db_pages = after
        if not pages or not db_pages:
            raise StorageError(f"no commit frame in {self._wal} between frames {start} and {frames}")
        self._frames = start + count
        self.seq += 1
        return Commit(self.seq, page_size, db_pages, pages)


class ReplicaCopy:
    """A replica's copy of one actor's database and its redo log (see the module).
    Open with ``ReplicaCopy.open``.

    Args:
        path: The copy's database file.
        durable: fsync the log before a commit counts as held (and the copy before the
            log is emptied).
    """

    def __init__(self, path: Path, durable: bool = True) -> None:
        self.path = path
        self.log = Path(f"{path}.replica")
        self.durable = durable
        self.stream = bytes(16)  # which primary's sequence the position counts in
        self.position = 0
        self._unsettled = 0  # commits in the log

    @classmethod
    def open(cls, path: Path | str, *, durable: bool = True) -> ReplicaCopy:
        """The copy at ``path`` (created empty at position 0 if there is none), with
        the commits its log holds written again.

        Raises:
            StorageError: The log is not a replica's log.
        """
        copy = cls(Path(path), durable)
        copy._recover()
        return copy

    def _recover(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.log.exists():
            self._write_log(0)  # a new copy: nothing held yet
            return
        data = self.log.read_bytes()
        if not data.startswith(LOG_MAGIC) or len(data) < len(LOG_MAGIC) + _POSITION.size:
            raise StorageError(f"{self.log} is not a replica's log")
        self.stream, self.position = _POSITION.unpack_from(data, len(LOG_MAGIC))
        offset = len(LOG_MAGIC) + _POSITION.size
        commits = []
        while offset + _RECORD.size <= len(data):
            length, crc = _RECORD.unpack_from(data, offset)
            body = data[offset + _RECORD.size : offset + _RECORD.size + length]
            if len(body) < length or zlib.crc32(body) != crc:
                break  # torn at the end by a crash: that commit was never acknowledged
            commits.append(Commit.decode(body))
            offset += _RECORD.size + length
        for commit in commits:
            if commit.seq > self.position:
                self._write_pages(commit)
                self.position = commit.seq
        self.settle()

    @property
    def base_path(self) -> Path:
        """Where a base being received is written (``receive_base``)."""
        return self.path.with_name(self.path.name + ".base")

    def receive_base(self, stream: bytes, position: int, offset: int, total: int, chunk: bytes) -> bool:
        """Write part of a base, a whole database image of the primary's ``stream`` at
        ``position`` (a new primary, a new replica, or one that fell out of step);
        whether it was the last part (the copy then starts over from it).

        Raises:
            StorageError: The parts do not fit together, or the files cannot be written.
        """
        if len(stream) != 16 or offset + len(chunk) > total:
            raise StorageError("a replica base arrived malformed")
        try:
            fd = os.open(self.base_path, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if offset == 0 else 0) | os.O_CLOEXEC, 0o644)
            try:
                os.pwrite(fd, chunk, offset)
                done = offset + len(chunk) == total
                if done and self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if not done:
                return False
            if self.base_path.stat().st_size != total:
                raise StorageError("a replica base arrived with parts missing")
            os.replace(self.base_path, self.path)
        except OSError as exc:
            raise StorageError(f"cannot write the replica copy {self.path}: {exc}") from None
        self.stream = stream
        self._write_log(position)
        return True

    def apply(self, data: bytes, fault: Callable[[], None] | None = None, *, sync: bool = True) -> bool:
        """Hold the commit ``data`` (``Commit.encode``): in the log first, then in the
        copy; whether it was new (a repeat at or below the position is ignored).
        ``sync=False`` leaves the log's fsync to a later ``sync()`` (several commits
        held at once, then made durable together).

        Raises:
            ReplicaGap: It does not follow the position.
            StorageError: It is damaged, or the files cannot be written.
        """
        commit = Commit.decode(data)
        if commit.seq <= self.position:
            return False
        if commit.seq != self.position + 1:
            raise ReplicaGap(f"commit {commit.seq} arrived at a replica holding {self.position}")
        body = data
        record = _RECORD.pack(len(body), zlib.crc32(body)) + body
        try:
            fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            try:
                os.write(fd, record)
                if self.durable and sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot write the replica log {self.log}: {exc}") from None
        if fault is not None:
            fault()  # tests: a crash between the log and the copy
        self._write_pages(commit)
        self.position = commit.seq
        self._unsettled += 1
        return True

    def _write_pages(self, commit: Commit) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                for pgno, image in commit.pages.items():
                    os.pwrite(fd, image, (pgno - 1) * commit.page_size)
                os.ftruncate(fd, commit.db_pages * commit.page_size)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot write the replica copy {self.path}: {exc}") from None

    def sync(self) -> None:
        """Make the log durable (after ``apply(..., sync=False)``)."""
        if not self.durable:
            return
        try:
            fd = os.open(self.log, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot sync the replica log {self.log}: {exc}") from None

    def settle(self) -> None:
        """Make the copy durable and empty the log (its commits are all in the copy)."""
        try:
            if self.durable and self.path.exists():
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._write_log(self.position)
        except OSError as exc:
            raise StorageError(f"cannot settle the replica copy {self.path}: {exc}") from None
        self._unsettled = 0

    def _write_log(self, position: int) -> None:
        temporary = self.log.with_name(self.log.name + ".tmp")
        with open(temporary, "wb") as handle:
            handle.write(LOG_MAGIC + _POSITION.pack(self.stream, position))
            if self.durable:
                os.fsync(handle.fileno())
        os.replace(temporary, self.log)
        self.position = position

    @property
    def unsettled(self) -> int:
        """Commits held in the log and not yet settled into the copy."""
        return self._unsettled


REPLICAS_DIR = "replicas"
"""Under the data directory's ``_dotdo``: the copies this node keeps for other nodes."""


class ReplicaStore:
    """The replica copies one data directory keeps of actors owned elsewhere, one
    ``ReplicaCopy`` each, filed by address like the actors' own databases (under
    ``<data_dir>/_dotdo/replicas``).

    Args:
        data_dir: The node's data directory.
        durable: fsync what is held before it is acknowledged.
    """

    def __init__(self, data_dir: Path | str, durable: bool = False) -> None:
        self.root = Path(data_dir) / INDEX_DIR / REPLICAS_DIR
        self.durable = durable
        self._copies: dict[tuple[str, str], ReplicaCopy] = {}
        self.directory = ActorDirectory.open(self.root)  # the copies held, by actor

    def close(self) -> None:
        self.directory.close()

    def path(self, namespace: str, hex_id: str) -> Path:
        return Address(namespace, hex_id).path(self.root)

    def copy(self, namespace: str, hex_id: str) -> ReplicaCopy:
        """The copy of one actor (made empty at position 0 when there is none)."""
        key = (namespace, hex_id)
        held = self._copies.get(key)
        if held is None:
            self.directory.note(namespace, hex_id, None)  # before the copy's file exists
            held = self._copies[key] = ReplicaCopy.open(self.path(namespace, hex_id), durable=self.durable)
        return held

    def forget_copy(self, namespace: str, hex_id: str) -> None:
        """Forget what was read of one copy (its files were replaced from elsewhere)."""
        self._copies.pop((namespace, hex_id), None)

    def take(self, namespace: str, hex_id: str) -> Path:
        """Settle one copy and hand its file over (a promotion moves it into place):
        the store forgets it; the file's path."""
        copy = self.copy(namespace, hex_id)
        copy.settle()
        del self._copies[namespace, hex_id]
        try:
            copy.log.unlink()
        except FileNotFoundError:
            pass
        self.directory.forget([Entry(namespace, hex_id, None)])
        return copy.path

    def drop(self, namespace: str, hex_id: str) -> None:
        """Delete one copy (this node is no replica of its actor any more)."""
        self._copies.pop((namespace, hex_id), None)
        path = self.path(namespace, hex_id)
        for file in (path, Path(f"{path}.replica"), Path(f"{path}.base")):
            try:
                file.unlink()
            except FileNotFoundError:
                pass
        side_files.remove(path)
        self.directory.forget([Entry(namespace, hex_id, None)])

    def receive(
        self, namespace: str, hex_id: str, stream: bytes, commits: list[bytes], side: list[side_files.Operation] = ()
    ) -> int:
        """Hold commits a primary sent for one actor, in order, in its ``stream``
        (begun by a base: ``ReplicaCopy.receive_base``), then the changes to its side
        files that came with them (``dotdo.storage.side_files``); the position now held.
        With ``stream`` empty only side files came (the actor was passivated): they go
        beside whatever copy is held.

        Raises:
            ReplicaGap: The stream is not the one this copy follows (a base must come
                first), or a commit skips a position, or side files came for an actor
                of which no copy is held.
            StorageError: Something arrived damaged, or the files cannot be written.
        """
        path = self.path(namespace, hex_id)
        if not stream:
            if (namespace, hex_id) not in self._copies and not path.exists():
                raise ReplicaGap(f"{namespace}/{hex_id[:12]}: no copy is held to keep its side files beside")
            side_files.apply(path, list(side), durable=self.durable)
            return self.copy(namespace, hex_id).position
        copy = self.copy(namespace, hex_id)
        if copy.stream != stream:
            raise ReplicaGap(f"{namespace}/{hex_id[:12]}: a new primary's stream needs a base first")
        for data in commits:
            copy.apply(data, sync=False)
        copy.sync()
        if copy.unsettled >= SETTLE_AFTER:
            copy.settle()
        if side:
            side_files.apply(path, list(side), durable=self.durable)
        return copy.position

    def settle_all(self) -> None:
        """Settle every copy (before the node stops)."""
        for copy in self._copies.values():
            copy.settle()


SETTLE_AFTER = 64
"""Commits a replica's log holds before its copy is settled (the log emptied)."""
