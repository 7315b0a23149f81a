"""The archive of one actor's commits, copied from SQLite's write-ahead log
(``dotdo.storage.history`` draws the whole design; ``dotdo.storage.history_log`` holds the files).

A WAL hook (``apsw.Connection.set_wal_hook``) runs after each commit; the commits'
frames are copied from the ``-wal`` file and appended to the current generation's log,
each commit with its time.

**Batches.** The hook only notes each commit (the WAL's frame count, the time). It
copies the noted commits in one read and one write once they span ``FLUSH_FRAMES``
frames or the oldest is ``FLUSH_SECONDS`` old, and always before a checkpoint, a close,
a bookmark or a restore. Until then the frames are in the WAL, which nothing
checkpoints before they are copied. A page-sized append costs about five times a large
one per page (measured on ext4 and tmpfs). A process killed with commits not yet
copied leaves them in the WAL, where the next open finds them (``dotdo.storage.generations``).

**Continuity.** The archive must never skip a commit, or every state it rebuilds after
the gap is wrong. The hook replaces SQLite's auto-checkpoint: it checkpoints
(``PASSIVE``, past ``CHECKPOINT_PAGES`` like SQLite) only after copying, then writes a
*mark* (the database file's inode, size and mtime). Each record carries the WAL
position after it (salts, frame, checksum), and each copy starts from there: a WAL
that restarted other than after a mark is a ``Gap``, and a new generation starts from a
snapshot. A checkpoint of the live connection that history did not make therefore costs
a snapshot; use ``History.checkpoint``. An open checks the same position, and the mark,
before it continues the archive (``dotdo.storage.generations``).

**Generations.** At a checkpoint, the hook also starts a new generation once the log
outgrows ``max(database, MIN_LOG_BYTES)``.
"""

from __future__ import annotations

import abc
import contextlib
import math
import os
import struct
import zlib
from typing import TYPE_CHECKING

import apsw

from dotdo.storage.history_log import COMMIT, CRC, FIXED, FRAMING, MARK, NO_SALTS, PGNO, READ, encode_record, fsync, history_dir

if TYPE_CHECKING:
    from pathlib import Path

    from dotdo.storage.database import ActorDatabase

CHECKPOINT_PAGES = 1000  # SQLite's own auto-checkpoint threshold, which the hook replaces
MIN_LOG_BYTES = 16 << 20  # a log grows to max(database, this) before a new generation
FLUSH_FRAMES = 64  # the hook copies commits in batches of this many WAL frames (256 KiB)...
FLUSH_SECONDS = 1.0  # ...or once the oldest commit not copied is this old

WAL_HEADER = 32
FRAME_HEADER = 24
WAL_FRAME = struct.Struct(">II")  # a WAL frame header starts: page number, database pages
_WAL_MAGIC = (0x377F0682, 0x377F0683)
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC


class Gap(Exception):
    """The WAL does not continue what the archive holds."""


class Archive(abc.ABC):
    """The archive of one actor's commits and where it stands: the current generation,
    the state after the last commit copied and the WAL position after it. Synchronous.

    Nothing here raises from the commit path: a failure to archive is kept
    (``_broken``), and the next checkpoint, capture or open starts a new generation.
    ``dotdo.storage.generations.Generations`` adds loading at open and new generations;
    ``dotdo.storage.history.History``, the API.
    """

    __slots__ = (
        "_db", "_on", "_dir", "_wal", "_clock", "_retention", "_full",
        "_gen", "_log", "_log_bytes", "_page_size", "_seq", "_time", "_db_pages",
        "_salts", "_frame", "_cksum", "_restart_ok", "_unsynced", "_broken", "_pending",
    )  # fmt: skip

    def __init__(self, db: ActorDatabase) -> None:
        from dotdo.storage.options import Durability

        options = db.options
        self._db = db
        self._retention = float(options.history)
        self._on = self._retention > 0
        self._clock = options.clock
        self._full = options.durability is Durability.FULL
        self._dir = str(history_dir(db.path))
        self._wal = f"{db.path}-wal"
        self._gen = 0
        self._log = ""
        self._log_bytes = 0
        self._page_size = 0
        self._seq = 0  # the current state
        self._time = -math.inf  # its commit time
        self._db_pages = 0
        self._salts = NO_SALTS  # the WAL position after it
        self._frame = 0
        self._cksum = NO_SALTS
        self._restart_ok = False  # all the WAL is archived and checkpointed: it may restart
        self._unsynced = False
        self._broken: str | None = None
        self._pending: list[tuple[int, float]] = []  # commits noted, not copied: (frames, time)

    def _on_commit(self, conn: apsw.Connection, name: str, npages: int) -> int:
        """The WAL hook: runs after every commit of the actor's connection (and for a
        commit made outside a statement, such as a backup into the connection, at the
        next statement) with the WAL's frame count. See "Batches" above."""
        if name != "main":
            return apsw.SQLITE_OK
        try:
            if self._broken is None:
                now = self._clock()
                pending = self._pending
                pending.append((npages, now))
                if npages >= CHECKPOINT_PAGES:
                    self._flush()
                    if self._outgrown():
                        self._start(created=False, continuous=True)  # checkpoints too
                    else:
                        self._checkpoint()
                elif (
                    npages - (self._frame if npages >= self._frame else 0) >= FLUSH_FRAMES  # (0: restarted)
                    or now - pending[0][1] >= FLUSH_SECONDS
                ):
                    self._flush()
            elif npages >= CHECKPOINT_PAGES:
                self._start(created=False, continuous=False)  # retry, at checkpoint pace
        except Gap as gap:  # someone else checkpointed: continue from a snapshot now
            self._fail(gap)
            with contextlib.suppress(Exception):
                self._start(created=False, continuous=False)
        except Exception as exc:
            self._fail(exc)
            if npages >= CHECKPOINT_PAGES:  # keep the WAL bounded even so
                with contextlib.suppress(apsw.Error):
                    conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        return apsw.SQLITE_OK

    def _flush(self) -> None:
        """Copy the commits the hook noted."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        end = pending[-1][0]  # the WAL's frame count at the last of them
        size = self._page_size + FRAME_HEADER
        fd = os.open(self._wal, READ)
        try:
            salts = os.pread(fd, WAL_HEADER, 0)[16:24]
            if salts == self._salts:
                start = self._frame
            elif self._restart_ok:  # the WAL restarted after the archive's checkpoint
                start = 0
            else:
                raise Gap("the WAL restarted after a checkpoint history did not make")
            if end <= start:
                return  # a late report of frames copied already
            data = os.pread(fd, (end - start) * size, WAL_HEADER + start * size)
        finally:
            os.close(fd)
        self._append_frames(data, start, salts, pending)

    def _collect(self) -> None:
        """Copy every committed frame of the WAL: those the hook noted, then any it has
        not heard of."""
        self._flush()
        try:
            fd = os.open(self._wal, READ)
        except FileNotFoundError:
            return
        try:
            header = os.pread(fd, WAL_HEADER, 0)
            if not wal_valid(header):
                return  # an empty WAL (a new one is written at the next commit)
            if int.from_bytes(header[8:12], "big") != self._page_size:
                raise Gap("the WAL has another page size")
            if header[16:24] == self._salts:
                start = self._frame
            elif self._restart_ok:
                start = 0
            else:
                raise Gap("the WAL restarted after a checkpoint history did not make")
            self._take(fd, header, start, recovered=False)
        finally:
            os.close(fd)

    def _take(self, fd: int, header: bytes, start: int, *, recovered: bool) -> None:
        """Copy the committed frames of the WAL ``fd`` from frame ``start`` on."""
        salts = header[16:24]
        size = self._page_size + FRAME_HEADER
        if os.pread(fd, FRAME_HEADER, WAL_HEADER + start * size)[8:16] != salts:
            return  # nothing after the last archived commit
        # Frames with these salts may still be rolled back or torn: SQLite knows where
        # the last commit ends, and a checkpoint reports it.
        log, done = self._db.connection.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        if log > start:
            now = self._clock()
            if recovered:  # a killed process's: the WAL last changed with the last of them
                now = min(now, max(os.fstat(fd).st_mtime, self._time))
            data = os.pread(fd, (log - start) * size, WAL_HEADER + start * size)
            self._append_frames(data, start, salts, [(log, now)])
        if log == done == self._frame:
            self._mark()

    def _append_frames(self, data: bytes, start: int, salts: bytes, times: list[tuple[int, float]]) -> None:
        """Append one record per commit in ``data`` (WAL frames from index ``start``).
        A commit's time is that of the first (frame count, time) of ``times`` that
        counts its frames."""
        size = self._page_size + FRAME_HEADER
        view = memoryview(data)
        seq, last_time = self._seq, self._time
        pages: dict[int, memoryview] = {}
        parts: list[bytes | memoryview] = []
        last = None
        slot = 0
        for index in range(len(data) // size):
            at = index * size
            number, commit = WAL_FRAME.unpack_from(data, at)
            pages[number] = view[at + FRAME_HEADER : at + size]
            if not commit:
                continue
            if data[at + 8 : at + 16] != salts:
                raise Gap("a frame of another WAL among the frames to copy")
            seq += 1
            frame = start + index + 1
            while slot + 1 < len(times) and times[slot][0] < frame:
                slot += 1
            when = max(times[slot][1], last_time)
            last_time = when
            cksum = data[at + 16 : at + 24]
            fixed = FIXED.pack(COMMIT, seq, when, commit, salts, frame, cksum, 0, 0, 0)
            crc = zlib.crc32(fixed)
            framing = len(parts)
            parts += (fixed, fixed)  # the first becomes the framing once the crc is known
            for number, page in pages.items():
                pgno = PGNO.pack(number)
                crc = zlib.crc32(page, zlib.crc32(pgno, crc))
                parts += (pgno, page)
            length = FIXED.size + len(pages) * (PGNO.size + self._page_size)
            parts[framing] = FRAMING.pack(length, crc)
            parts.append(CRC.pack(length))
            last = (commit, frame, cksum)
            pages = {}
        if last is None:
            return
        self._write(parts)
        self._seq, self._time = seq, last_time
        self._db_pages, self._frame, self._cksum = last
        self._salts = salts
        self._restart_ok = False

    def _checkpoint(self) -> None:
        """SQLite's auto-checkpoint, after the frames are copied."""
        if self._full and self._unsynced:
            self._sync()
        log, done = self._db.connection.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        if log == done == self._frame:
            self._mark()

    def _mark(self) -> None:
        """Record that the database file holds the current state (a checkpoint ended):
        the WAL may restart from here while the file keeps this identity."""
        position = (self._salts, self._frame, self._cksum)
        fixed = FIXED.pack(MARK, self._seq, self._time, self._db_pages, *position, *file_identity(self._db.path))
        self._write([encode_record(fixed)])
        self._restart_ok = True

    def _write(self, parts: list[bytes | memoryview]) -> None:
        """Append ``parts`` in one write (measured: five times cheaper than ``writev``
        of the parts here)."""
        blob = memoryview(b"".join(parts))
        fd = os.open(self._log, _APPEND)
        try:
            rest = blob
            while rest:
                rest = rest[os.write(fd, rest) :]
        finally:
            os.close(fd)
        self._log_bytes += len(blob)
        self._unsynced = True

    def _sync(self) -> None:
        fsync(self._log)
        self._unsynced = False

    def _outgrown(self) -> bool:
        """Whether the log has outgrown ``max(database, MIN_LOG_BYTES)``."""
        return self._log_bytes > max(self._db_pages * self._page_size, MIN_LOG_BYTES)

    def _fail(self, exc: Exception) -> None:
        self._broken = f"{type(exc).__name__}: {exc}"
        self._pending = []

    @abc.abstractmethod
    def _start(self, *, created: bool, continuous: bool) -> None:
        """Start a new generation from the current state (``Generations._start``)."""


def wal_valid(header: bytes) -> bool:
    """Whether ``header`` starts with a WAL header."""
    return len(header) >= WAL_HEADER and WAL_FRAME.unpack_from(header)[0] in _WAL_MAGIC


def file_identity(path: Path | str) -> tuple[int, int, int]:
    """The identity of the database file at ``path``: inode, size and mtime_ns."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns
