"""Point-in-time history of one actor's database: bookmarks and restore.

Every commit of the actor's connection is archived from SQLite's own write-ahead log,
as Litestream does. A WAL hook (``apsw.Connection.set_wal_hook``) runs after each
commit; the commits' frames are copied from the ``-wal`` file and appended to a log,
each commit with its time. A *generation* is a base (a snapshot of the database, or
nothing for a database created empty) and the log of the commits after it; the state
after any commit is its generation's base with the logged pages applied up to that
commit. ``restore`` builds that state in a temporary file, checks it
(``PRAGMA quick_check``), and copies it into the live connection in one transaction.

Files, beside the database (``<digest>.sqlite``)::

    <digest>.history/
        g<gen>-<base seq>-<base time, us>.log    header, then one record per commit
        g<gen>.base                              the generation's snapshot (not for an
                                                 empty base)

A log record is ``length, crc32, body, length``. A crash leaves at worst a torn last
record: readers stop before it, and the next open cuts it off. Snapshots are written by
``storage.backup.save`` (a temporary file renamed into place); a generation exists once
its log, written the same way, does. Nothing archived is rewritten, so a crash at any
point loses at most what it interrupted.

**Batches.** The hook only notes each commit (the WAL's frame count, the time). It
copies the noted commits in one read and one write once they span ``FLUSH_FRAMES``
frames or the oldest is ``FLUSH_SECONDS`` old, and always before a checkpoint, a close,
a bookmark or a restore. Until then the frames are in the WAL, which nothing
checkpoints before they are copied. A page-sized append costs about five times a large
one per page (measured on ext4 and tmpfs). A process killed with commits not yet
copied leaves them in the WAL: the next open copies them, stamped with the WAL's
modification time (the time of the last of them).

**Continuity.** The archive must never skip a commit, or every state it rebuilds after
the gap is wrong. The hook replaces SQLite's auto-checkpoint: it checkpoints
(``PASSIVE``, past ``CHECKPOINT_PAGES`` like SQLite) only after copying, then writes a
*mark* (the database file's inode, size and mtime). Each record carries the WAL
position after it (salts, frame, checksum). At open the archive continues only if the
WAL still holds that position, or the WAL restarted after a mark and the database file
still matches it. Otherwise (the file was replaced, or written with history off and
checkpointed) a new generation starts from a snapshot, with seq numbers from the next
multiple of 2**20 so a bookmark of a lost commit is refused rather than misread. A
checkpoint of the live connection that history did not make has the same effect at
the next copy; use ``History.checkpoint``.

**Bookmarks** are ``<seq:016x>-<check>``. ``seq`` numbers the states of one actor and
only increases, across generations. ``check`` is 8 hex of a hash of the address, so
another actor's bookmark is refused. A state stays restorable while it was current at
some moment of the retention window (``StorageOptions.history`` seconds, 7 days by
default). A new generation starts when the log outgrows ``max(database,
MIN_LOG_BYTES)`` (at a checkpoint). Generations that end before the window are deleted.

**Costs** (``benchmarks/history_bench.py``: one core, history on against off in the
same run, measured 2026-11-23 on a 2-vCPU VM with ext4):

- *Write turns.* One KV put and its commit: 0.55-0.68x the rate with history off
  (about 43,000 against 77,000 a second: +10 us per commit). Per commit, roughly: the
  hook's call 1 us; building the record 3 us (crc32 1 us of it); reading the frames
  1 us; the second write of each page 2-4 us (the kernel's page cache; it costs
  about four times as much in page-sized writes as in 256 KiB ones, hence the
  batches); new generations 0.7 us. The checkpoints are the ones SQLite makes
  anyway. Keeping the WAL and log open would save two opens per batch (1 us each,
  well under 0.1 us per commit), so no descriptor is kept: an actor still holds 3.
- *Activation.* Reopening an actor costs about 50 us more (the log's tail, the WAL's
  header: 150 against 105 us). Creating one costs about 300 us more (1.2 against
  0.9 ms), mostly the archive's directory.
- *On disk.* Every commit's pages are kept: about 4.3 KB for a one-page commit,
  plus one snapshot per generation. Retention therefore costs ``commit rate x pages
  per commit x 4.3 KB x window``: a steady 5 one-page commits a second keeps about
  105 MB an hour, 18 GB for 7 days.
- *Restore.* Reads one generation (its snapshot and at most about ``max(database,
  MIN_LOG_BYTES)`` of log) and writes the database three times (the temporary file,
  the live copy, its archived copy): 22 ms one hour back under the load above
  (0.3 MB database, 11 generations).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import secrets
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import apsw

from storage import backup
from storage.errors import BookmarkError, StorageError, TransactionError

if TYPE_CHECKING:
    from storage.database import ActorDatabase

CHECKPOINT_PAGES = 1000  # SQLite's own auto-checkpoint threshold, which the hook replaces
MIN_LOG_BYTES = 16 << 20  # a log grows to max(database, this) before a new generation
FLUSH_FRAMES = 64  # the hook copies commits in batches of this many WAL frames (256 KiB)...
FLUSH_SECONDS = 1.0  # ...or once the oldest commit not copied is this old

_WAL_HEADER = 32
_FRAME_HEADER = 24
_WAL_MAGIC = (0x377F0682, 0x377F0683)
_NO_SALTS = bytes(8)
_READ = os.O_RDONLY | os.O_CLOEXEC
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
# Log header: magic, generation, page size, base seq, base time, base kind, WAL position
# (salts, next frame, checksum), database file identity (inode, size, mtime_ns); crc32.
_LOG_MAGIC = b"dotdo-h1"
_HEADER = struct.Struct("<8sIIQdB8sI8sQQq")
_CRC = struct.Struct("<I")
_FILE_HEADER = _HEADER.size + _CRC.size
# Record: body length and crc32, body, body length again (to find the last from the end).
# Body: kind, seq, time, database pages, WAL position after it, file identity (marks);
# then, for a commit, (page number, page) for each page it wrote.
_FRAMING = struct.Struct("<II")
_FIXED = struct.Struct("<BQdI8sI8sQQq")
_PGNO = struct.Struct("<I")
_FRAME = struct.Struct(">II")  # a WAL frame header starts: page number, database pages
_COMMIT, _MARK = 1, 2
_EMPTY, _SNAPSHOT = 0, 1
_CHECK_TAIL_CRC = 1 << 20  # the last record's crc is checked at open below this size
_LOG_NAME = re.compile(r"g([0-9a-f]{8})-([0-9a-f]{16})-([0-9a-f]{14})\.log")
_BOOKMARK = re.compile(r"([0-9a-f]{16})-([0-9a-f]{8})")


@dataclass(frozen=True, slots=True)
class HistoryInfo:
    """What the archive of one actor holds.

    Attributes:
        retention: The window, in seconds (0: history is off).
        earliest: The earliest time ``bookmark_at`` accepts (None: nothing archived).
        latest: Commit time of the current state (None: nothing archived).
        generations: Generations on disk (a snapshot and a log each).
        disk_bytes: Bytes the archive uses on disk.
        error: Why archiving stopped, if it did; it resumes with a new generation.
    """

    retention: float
    earliest: float | None
    latest: float | None
    generations: int
    disk_bytes: int
    error: str | None = None


class _Gen(NamedTuple):
    number: int
    base_seq: int
    base_time: float  # from the name: microseconds, rounded down
    log: str

    @property
    def base(self) -> str:
        return f"{self.log[: self.log.rindex('/')]}/g{self.number:08x}.base"


class _Header(NamedTuple):
    page_size: int
    base_kind: int
    salts: bytes
    frame: int
    cksum: bytes
    identity: tuple[int, int, int]


class _Record(NamedTuple):
    kind: int
    seq: int
    time: float
    db_pages: int
    salts: bytes
    frame: int
    cksum: bytes
    identity: tuple[int, int, int]
    pages_at: int  # offset in the log of the first (page number, page) entry
    npages: int
    end: int  # offset just past the record


class _Gap(Exception):
    """The WAL does not continue what the archive holds."""


class History:
    """The archive of one actor's commits (``ActorDatabase.history``). Synchronous.

    ``ActorDatabase.open`` attaches it. Nothing here raises from the commit path: a
    failure to archive is kept (``info().error``), and the next checkpoint,
    ``capture`` or open starts a new generation.
    """

    __slots__ = (
        "_db", "_on", "_dir", "_wal", "_clock", "_retention", "_check_hex", "_full",
        "_gen", "_log", "_log_bytes", "_page_size", "_seq", "_time", "_db_pages",
        "_salts", "_frame", "_cksum", "_restart_ok", "_unsynced", "_broken", "_pending",
    )  # fmt: skip

    def __init__(self, db: ActorDatabase) -> None:
        from storage.options import Durability

        options = db.options
        self._db = db
        self._retention = float(options.history)
        self._on = self._retention > 0
        self._clock = options.clock
        self._full = options.durability is Durability.FULL
        self._dir = os.path.splitext(str(db.path))[0] + ".history"
        self._wal = f"{db.path}-wal"
        self._check_hex = ""
        self._gen = 0
        self._log = ""
        self._log_bytes = 0
        self._page_size = 0
        self._seq = 0  # the current state
        self._time = -math.inf  # its commit time
        self._db_pages = 0
        self._salts = _NO_SALTS  # the WAL position after it
        self._frame = 0
        self._cksum = _NO_SALTS
        self._restart_ok = False  # all the WAL is archived and checkpointed: it may restart
        self._unsynced = False
        self._broken: str | None = None
        self._pending: list[tuple[int, float]] = []  # commits noted, not copied: (frames, time)

    def __repr__(self) -> str:
        return f"<History {self._db.address} seq={self._seq}>"

    # -- hook-up (ActorDatabase) ------------------------------------------------------

    def attach(self, created: bool = False) -> None:
        """Install the WAL hook and bring the archive up to date (``created``: this open
        created the file, so an archive already there is of an earlier actor)."""
        if not self._on:
            return
        self._db.connection.set_wal_hook(self._on_commit)
        try:
            self._load(created)
        except Exception as exc:  # never block an activation: a new generation follows
            self._fail(exc)

    def before_close(self) -> None:
        """Archive everything (the close may checkpoint the WAL away)."""
        if not self._on or self._broken is not None:
            return
        try:
            self._collect()
            if self._full and self._unsynced:
                self._sync()
        except Exception as exc:
            self._fail(exc)

    def after_close(self) -> None:
        """Write a mark if the close checkpointed the WAL away (the database file is
        then complete, and the next open may continue from a new WAL)."""
        if self._on and self._broken is None and self._log and not os.path.exists(self._wal):
            with contextlib.suppress(Exception):
                self._mark()

    # -- the public API ---------------------------------------------------------------

    def capture(self) -> None:
        """Archive every commit not archived yet, including one the WAL hook does not
        hear of at once (``storage.backup.load``); start a new generation if archiving
        had failed. Checkpoints the WAL when it finds commits the hook missed.

        Raises:
            TransactionError: A transaction is open (commit first).
            StorageError: The archive cannot be written.
        """
        if not self._on:
            return
        if self._db.connection.in_transaction:
            raise TransactionError("cannot capture history inside a transaction; commit first")
        try:
            if self._broken is None:
                try:
                    self._collect()
                except _Gap as gap:
                    self._fail(gap)
            if self._broken is not None:  # continue from a new snapshot
                self._start(created=False, continuous=False)
            elif self._log_bytes > max(self._db_pages * self._page_size, MIN_LOG_BYTES):
                self._start(created=False, continuous=True)
        except Exception as exc:
            self._fail(exc)
            raise StorageError(f"cannot archive the history of {self._db.address}: {self._broken}") from None

    def checkpoint(self) -> None:
        """Archive, then checkpoint the WAL into the database and truncate it. For code
        that must checkpoint the live connection: a checkpoint history did not make
        costs a new generation (a snapshot) at the next copy.

        Raises:
            TransactionError: A transaction is open (commit first).
            StorageError: The archive cannot be written.
        """
        self.capture()
        conn = self._db.connection
        if self._on and self._full and self._unsynced:
            self._sync()
        log, done = conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        if self._on and log == done:
            try:
                self._mark()
            except Exception as exc:  # the next copy starts a new generation instead
                self._fail(exc)

    def bookmark(self) -> str:
        """The bookmark of the current state (after the last commit).

        Raises:
            BookmarkError: History is off.
            TransactionError: A transaction is open (commit first: its writes are not
                part of any state yet).
            StorageError: The archive cannot be written.
        """
        self._require()
        if self._db.connection.in_transaction:
            raise TransactionError("commit before taking a bookmark")
        self.capture()
        return self._format(self._seq)

    def bookmark_at(self, when: float) -> str:
        """The bookmark of the state at ``when`` (epoch seconds): after the last commit
        at or before it.

        Raises:
            BookmarkError: History is off; ``when`` is not a time, is in the future, is
                before the window (``StorageOptions.history`` seconds back), or is
                before anything archived.
        """
        self._require()
        if isinstance(when, bool) or not isinstance(when, int | float) or not math.isfinite(when):
            raise BookmarkError(f"bookmark_at() takes a time in epoch seconds, not {when!r}")
        now = self._clock()
        if when > now:
            raise BookmarkError(f"{when} is in the future (now is {now})")
        if when < now - self._retention:
            raise BookmarkError(f"{when} is before the retention window ({self._retention:g} s back from {now})")
        if not self._db.connection.in_transaction:
            with contextlib.suppress(StorageError):
                self.capture()
        for gen in reversed(self._generations()):
            if gen.base_time > when:
                continue
            found = gen.base_seq if _read_header(gen.log).base_kind == _SNAPSHOT else None
            for record, _ in _records(gen.log):
                if record.kind == _COMMIT:
                    if record.time > when:
                        break
                    found = record.seq
            if found is not None:
                return self._format(found)
            break
        raise BookmarkError(f"nothing is archived at or before {when}")

    def restore(self, bookmark: str) -> str:
        """Replace the database with its state at ``bookmark``, in one transaction;
        return the bookmark of the state just before (restoring it undoes this).

        Raises:
            BookmarkError: History is off, or the bookmark is malformed, of another
                actor, unknown, or outside the window. Nothing changed.
            TransactionError: A transaction is open (commit first).
            StorageError: The archived state fails its integrity check, or the copy
                failed. Nothing changed.
        """
        self._require()
        seq = self._parse(bookmark)
        if self._db.connection.in_transaction:
            raise TransactionError("cannot restore with uncommitted writes; commit first")
        self.capture()
        gen, header, pages, db_pages, alive = self._locate(seq)
        if not alive:
            raise BookmarkError(f"the bookmark {bookmark} is outside the retention window")
        temporary = f"{self._dir}/restore.tmp-{secrets.token_hex(4)}"
        try:
            _build(temporary, gen, header, pages, db_pages)
            with backup.opened(temporary) as check:
                result = [row[0] for row in check.execute("PRAGMA quick_check")]
            if result != ["ok"]:
                raise StorageError(f"the archived state of {bookmark} is damaged ({result[0]}); nothing was restored")
            undo = self._format(self._seq)
            backup.load(self._db, temporary)
            self._db._features.clear()  # feature tables may differ in the restored state
        except apsw.Error as exc:
            raise StorageError(f"the archived state of {bookmark} cannot be read: {exc}") from None
        finally:
            backup.remove(temporary)
        with contextlib.suppress(StorageError):  # kept in info().error; undo stays valid
            self.capture()
        return undo

    def info(self) -> HistoryInfo:
        """What the archive holds (see ``HistoryInfo``)."""
        if not self._on:
            return HistoryInfo(0.0, None, None, 0, 0)
        if self._broken is None:
            try:
                self._flush()  # the figures of what is archived by now
            except Exception as exc:
                self._fail(exc)
        gens = self._generations()
        earliest = None
        if gens:
            first = gens[0]
            with contextlib.suppress(StorageError, OSError):  # damaged: unknown
                if _read_header(first.log).base_kind == _SNAPSHOT:
                    earliest = first.base_time
                else:
                    earliest = _first_commit_time(first.log)
        if earliest is not None:
            earliest = max(earliest, self._clock() - self._retention)
        used = 0
        with contextlib.suppress(FileNotFoundError), os.scandir(self._dir) as entries:
            used = sum(entry.stat().st_size for entry in entries)
        latest = self._time if math.isfinite(self._time) and gens else None
        return HistoryInfo(self._retention, earliest, latest, len(gens), used, self._broken)

    # -- archiving --------------------------------------------------------------------

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
                    if self._log_bytes > max(self._db_pages * self._page_size, MIN_LOG_BYTES):
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
        except _Gap as gap:  # someone else checkpointed: continue from a snapshot now
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
        size = self._page_size + _FRAME_HEADER
        fd = os.open(self._wal, _READ)
        try:
            salts = os.pread(fd, _WAL_HEADER, 0)[16:24]
            if salts == self._salts:
                start = self._frame
            elif self._restart_ok:  # the WAL restarted after the archive's checkpoint
                start = 0
            else:
                raise _Gap("the WAL restarted after a checkpoint history did not make")
            if end <= start:
                return  # a late report of frames copied already
            data = os.pread(fd, (end - start) * size, _WAL_HEADER + start * size)
        finally:
            os.close(fd)
        self._append_frames(data, start, salts, pending)

    def _collect(self) -> None:
        """Copy every committed frame of the WAL: those the hook noted, then any it has
        not heard of."""
        self._flush()
        try:
            fd = os.open(self._wal, _READ)
        except FileNotFoundError:
            return
        try:
            header = os.pread(fd, _WAL_HEADER, 0)
            if not _wal_valid(header):
                return  # an empty WAL (a new one is written at the next commit)
            if int.from_bytes(header[8:12], "big") != self._page_size:
                raise _Gap("the WAL has another page size")
            if header[16:24] == self._salts:
                start = self._frame
            elif self._restart_ok:
                start = 0
            else:
                raise _Gap("the WAL restarted after a checkpoint history did not make")
            self._take(fd, header, start, recovered=False)
        finally:
            os.close(fd)

    def _take(self, fd: int, header: bytes, start: int, *, recovered: bool) -> None:
        """Copy the committed frames of the WAL ``fd`` from frame ``start`` on."""
        salts = header[16:24]
        size = self._page_size + _FRAME_HEADER
        if os.pread(fd, _FRAME_HEADER, _WAL_HEADER + start * size)[8:16] != salts:
            return  # nothing after the last archived commit
        # Frames with these salts may still be rolled back or torn: SQLite knows where
        # the last commit ends, and a checkpoint reports it.
        log, done = self._db.connection.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        if log > start:
            now = self._clock()
            if recovered:  # a killed process's: the WAL last changed with the last of them
                now = min(now, max(os.fstat(fd).st_mtime, self._time))
            data = os.pread(fd, (log - start) * size, _WAL_HEADER + start * size)
            self._append_frames(data, start, salts, [(log, now)])
        if log == done == self._frame:
            self._mark()

    def _append_frames(self, data: bytes, start: int, salts: bytes, times: list[tuple[int, float]]) -> None:
        """Append one record per commit in ``data`` (WAL frames from index ``start``).
        A commit's time is that of the first (frame count, time) of ``times`` that
        counts its frames."""
        size = self._page_size + _FRAME_HEADER
        view = memoryview(data)
        seq, last_time = self._seq, self._time
        pages: dict[int, memoryview] = {}
        parts: list[bytes | memoryview] = []
        last = None
        slot = 0
        for index in range(len(data) // size):
            at = index * size
            number, commit = _FRAME.unpack_from(data, at)
            pages[number] = view[at + _FRAME_HEADER : at + size]
            if not commit:
                continue
            if data[at + 8 : at + 16] != salts:
                raise _Gap("a frame of another WAL among the frames to copy")
            seq += 1
            frame = start + index + 1
            while slot + 1 < len(times) and times[slot][0] < frame:
                slot += 1
            when = max(times[slot][1], last_time)
            last_time = when
            cksum = data[at + 16 : at + 24]
            fixed = _FIXED.pack(_COMMIT, seq, when, commit, salts, frame, cksum, 0, 0, 0)
            crc = zlib.crc32(fixed)
            framing = len(parts)
            parts += (fixed, fixed)  # the first becomes the framing once the crc is known
            for number, page in pages.items():
                pgno = _PGNO.pack(number)
                crc = zlib.crc32(page, zlib.crc32(pgno, crc))
                parts += (pgno, page)
            length = _FIXED.size + len(pages) * (_PGNO.size + self._page_size)
            parts[framing] = _FRAMING.pack(length, crc)
            parts.append(_CRC.pack(length))
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
        fixed = _FIXED.pack(_MARK, self._seq, self._time, self._db_pages, *position, *_identity(self._db.path))
        self._write([_record(fixed)])
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
        _fsync(self._log)
        self._unsynced = False

    def _fail(self, exc: Exception) -> None:
        self._broken = f"{type(exc).__name__}: {exc}"
        self._pending = []

    # -- generations ------------------------------------------------------------------

    def _load(self, created: bool) -> None:
        """Continue the last generation, or start a new one."""
        gens = self._generations()
        if not gens:
            self._start(created=created, continuous=False)
            return
        gen = gens[-1]
        header, last, end, size = _tail(gen.log)
        self._gen, self._log, self._log_bytes, self._page_size = gen.number, gen.log, end, header.page_size
        identity: tuple[int, int, int] | None = header.identity
        self._seq, self._time = gen.base_seq, gen.base_time
        self._salts, self._frame, self._cksum = header.salts, header.frame, header.cksum
        if last is not None:
            self._seq, self._time, self._db_pages = last.seq, last.time, last.db_pages
            self._salts, self._frame, self._cksum = last.salts, last.frame, last.cksum
            identity = last.identity if last.kind == _MARK else None
        if size != end:
            os.truncate(gen.log, end)  # a torn last record
        if created or not self._resume(identity):
            self._start(created=created, continuous=False)
        elif len(gens) > 1:
            self._prune(gens)

    def _resume(self, identity: tuple[int, int, int] | None) -> bool:
        """Whether the WAL and the database file continue the archive; if they do, copy
        the commits a killed process left in the WAL."""
        try:
            fd = os.open(self._wal, _READ)
        except FileNotFoundError:
            fd = -1
        try:
            header = os.pread(fd, _WAL_HEADER, 0) if fd >= 0 else b""
            valid = _wal_valid(header) and int.from_bytes(header[8:12], "big") == self._page_size
            if valid and header[16:24] == self._salts and self._frame:
                at = _WAL_HEADER + (self._frame - 1) * (self._page_size + _FRAME_HEADER)
                frame = os.pread(fd, _FRAME_HEADER, at)
                if frame[8:16] != self._salts or frame[16:24] != self._cksum:
                    return False
                start = self._frame
            elif identity is not None and _identity(self._db.path) == identity:
                self._restart_ok = True  # the WAL restarted after a mark
                start = 0
            else:
                return False
            if valid:
                self._take(fd, header, start, recovered=True)
            return True
        finally:
            if fd >= 0:
                os.close(fd)

    def _start(self, *, created: bool, continuous: bool) -> None:
        """Start a new generation from the current state (``continuous``: the previous
        generation holds every commit up to it)."""
        conn = self._db.connection
        if continuous:
            self._flush()
        self._pending = []
        try:
            os.mkdir(self._dir)
        except FileExistsError:
            backup.sweep_temporary(Path(self._dir))
            if not self._gen and (gens := self._generations()):  # the archive failed to load
                # Its last generation holds an unknown number of states (under 2**32).
                self._gen = gens[-1].number
                self._seq = max(self._seq, (((gens[-1].base_seq >> 32) + 1) << 32) - 1)
        number = self._gen + 1
        page_size = int(conn.pragma("page_size"))
        if created and os.path.getsize(self._db.path) <= page_size:
            # A file this open created: its one page is rewritten by the schema's first
            # commit, so the base is empty and every commit is in the WAL (copied below).
            kind = _EMPTY
        else:
            if self._full and self._unsynced and self._log:
                self._sync()
            left, done = conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
            if left or done:
                raise StorageError(f"cannot checkpoint {self._db.address} to start a history generation")
            backup.save(conn, f"{self._dir}/g{number:08x}.base")
            kind = _SNAPSHOT
        # A generation that does not continue the last one starts at the next multiple
        # of 2**20: a bookmark of a commit the archive lost (a torn log after a power
        # loss) is then unknown rather than the name of some later state.
        seq = self._seq if continuous or not self._gen else ((self._seq >> 20) + 1) << 20
        now = self._clock()
        when = max(now, self._time)
        body = _HEADER.pack(_LOG_MAGIC, number, page_size, seq, when, kind, _NO_SALTS, 0, _NO_SALTS, *_identity(self._db.path))
        micros = max(0, math.floor(when * 1e6)) & (1 << 56) - 1
        log = f"{self._dir}/g{number:08x}-{seq:016x}-{micros:014x}.log"
        temporary = f"{log}.tmp-{secrets.token_hex(4)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, body + _CRC.pack(zlib.crc32(body)))
            if self._full:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, log)
        if self._full:
            _fsync(self._dir)
        self._gen, self._log, self._log_bytes, self._page_size = number, log, _FILE_HEADER, page_size
        self._seq, self._time, self._salts, self._frame, self._cksum = seq, when, _NO_SALTS, 0, _NO_SALTS
        self._restart_ok, self._unsynced, self._broken = True, False, None
        if kind == _EMPTY:
            self._take_new()
        if number > 1:
            self._prune()

    def _take_new(self) -> None:
        """Copy the WAL of a database this open created: written by this open only, so
        every frame with the header's salts is whole (no checkpoint needed)."""
        try:
            fd = os.open(self._wal, _READ)
        except FileNotFoundError:
            return
        try:
            data = os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
        if not _wal_valid(data):
            return
        size = self._page_size + _FRAME_HEADER
        salts = data[16:24]
        frames = memoryview(data)[_WAL_HEADER:]
        count = last = 0
        while (count + 1) * size <= len(frames) and frames[count * size + 8 : count * size + 16] == salts:
            count += 1
            if _FRAME.unpack_from(frames, (count - 1) * size)[1]:
                last = count  # up to the last commit
        self._append_frames(frames[: last * size].tobytes(), 0, salts, [(last, self._clock())])

    def _prune(self, gens: list[_Gen] | None = None) -> None:
        """Delete the generations whose every state ended before the window."""
        gens = self._generations() if gens is None else gens
        horizon = self._clock() - self._retention
        keep = 0
        while keep + 1 < len(gens) and gens[keep + 1].base_time <= horizon:
            keep += 1
        for gen in gens[:keep]:
            with contextlib.suppress(OSError):  # retried at the next generation or open
                os.unlink(gen.log)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(gen.base)

    def _generations(self) -> list[_Gen]:
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            return []
        gens = []
        for name in names:
            match = _LOG_NAME.fullmatch(name)
            if match:
                number, seq, micros = (int(part, 16) for part in match.groups())
                gens.append(_Gen(number, seq, micros / 1e6, f"{self._dir}/{name}"))
        gens.sort()
        return gens

    # -- restore ----------------------------------------------------------------------

    def _locate(self, seq: int) -> tuple[_Gen, _Header, dict[int, int], int, bool]:
        """The generation holding ``seq``; its pages up to ``seq`` (number -> offset in
        the log) and size then; whether the state was current inside the window."""
        if seq > self._seq:
            raise BookmarkError(f"no state {seq:x} is archived")
        gens = self._generations()
        horizon = self._clock() - self._retention
        for index in range(len(gens) - 1, -1, -1):
            gen = gens[index]
            if seq < gen.base_seq:
                continue
            header = _read_header(gen.log)
            if seq == gen.base_seq and header.base_kind != _SNAPSHOT:
                continue
            pages: dict[int, int] = {}
            db_pages = os.path.getsize(gen.base) // header.page_size if seq == gen.base_seq else -1
            ended = math.inf  # when the next state replaced it
            step = _PGNO.size + header.page_size
            for record, body in _records(gen.log):
                if record.kind != _COMMIT:
                    continue
                if record.seq > seq:
                    ended = record.time
                    break
                for i in range(record.npages):
                    (number,) = _PGNO.unpack_from(body, _FIXED.size + i * step)
                    pages[number] = record.pages_at + i * step + _PGNO.size
                if record.seq == seq:
                    db_pages = record.db_pages
            if db_pages < 0:
                break
            if ended == math.inf and seq < self._seq and index + 1 < len(gens):
                after = gens[index + 1]
                ended = after.base_time if after.base_seq > seq else _first_commit_time(after.log) or math.inf
            return gen, header, pages, db_pages, ended > horizon
        raise BookmarkError(f"the state {seq:x} is no longer archived (outside the retention window)")

    # -- bookmarks --------------------------------------------------------------------

    def _require(self) -> None:
        if not self._on:
            raise BookmarkError(f"history is off for {self._db.address} (StorageOptions.history is 0)")

    @property
    def _check(self) -> str:
        if not self._check_hex:
            self._check_hex = hashlib.sha256(b"dotdo-bookmark\x00" + self._db.address.digest.encode()).hexdigest()[:8]
        return self._check_hex

    def _format(self, seq: int) -> str:
        return f"{seq:016x}-{self._check}"

    def _parse(self, bookmark: object) -> int:
        match = _BOOKMARK.fullmatch(bookmark) if isinstance(bookmark, str) else None
        if match is None:
            raise BookmarkError(f"not a bookmark: {bookmark!r}"[:200])
        if match.group(2) != self._check:
            raise BookmarkError(f"the bookmark {bookmark} belongs to another actor")
        return int(match.group(1), 16)


def history_dir(path: Path) -> Path:
    """Where the archive of the database at ``path`` lives."""
    return Path(os.path.splitext(str(path))[0] + ".history")


def _wal_valid(header: bytes) -> bool:
    return len(header) >= _WAL_HEADER and _FRAME.unpack_from(header)[0] in _WAL_MAGIC


def _record(body: bytes) -> bytes:
    return _FRAMING.pack(len(body), zlib.crc32(body)) + body + _CRC.pack(len(body))


def _identity(path: Path | str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def _parse_header(raw: bytes, log: str) -> _Header:
    if len(raw) != _FILE_HEADER or _CRC.unpack_from(raw, _HEADER.size)[0] != zlib.crc32(raw[: _HEADER.size]):
        raise StorageError(f"the history log {log} has a damaged header")
    magic, _, page_size, _, _, kind, salts, frame, cksum, ino, size, mtime = _HEADER.unpack_from(raw)
    if magic != _LOG_MAGIC:
        raise StorageError(f"{log} is not a history log of this version")
    return _Header(page_size, kind, salts, frame, cksum, (ino, size, mtime))


def _read_header(log: str) -> _Header:
    fd = os.open(log, _READ)
    try:
        return _parse_header(os.pread(fd, _FILE_HEADER, 0), log)
    finally:
        os.close(fd)


def _parse_record(body: bytes, at: int, page_size: int) -> _Record:
    kind, seq, when, db_pages, salts, frame, cksum, ino, size, mtime = _FIXED.unpack_from(body)
    npages = (len(body) - _FIXED.size) // (_PGNO.size + page_size)
    end = at + _FRAMING.size + len(body) + _CRC.size
    pages_at = at + _FRAMING.size + _FIXED.size
    return _Record(kind, seq, when, db_pages, salts, frame, cksum, (ino, size, mtime), pages_at, npages, end)


def _records(log: str) -> Iterator[tuple[_Record, bytes]]:
    """The whole records of a log with their bodies, in order; stops at the first torn
    or damaged one."""
    page_size = _read_header(log).page_size
    with open(log, "rb") as f:
        at = f.seek(_FILE_HEADER)
        while True:
            framing = f.read(_FRAMING.size)
            if len(framing) < _FRAMING.size:
                return
            length, crc = _FRAMING.unpack(framing)
            body = f.read(length)
            trailer = f.read(_CRC.size)
            if len(body) < length or trailer != _CRC.pack(length) or zlib.crc32(body) != crc or length < _FIXED.size:
                return
            yield _parse_record(body, at, page_size), body
            at += _FRAMING.size + length + _CRC.size


def _tail(log: str) -> tuple[_Header, _Record | None, int, int]:
    """A log's header, last whole record, where that record ends, and the file's size.
    Reads from the end; scans the whole log only when the end is torn."""
    fd = os.open(log, _READ)
    try:
        size = os.fstat(fd).st_size
        header = _parse_header(os.pread(fd, _FILE_HEADER, 0), log)
        if size == _FILE_HEADER:
            return header, None, size, size
        (length,) = _CRC.unpack(os.pread(fd, _CRC.size, size - _CRC.size))
        at = size - _CRC.size - length - _FRAMING.size
        if at >= _FILE_HEADER and length >= _FIXED.size:
            read = length if length <= _CHECK_TAIL_CRC else _FIXED.size
            raw = os.pread(fd, _FRAMING.size + read, at)
            framed, crc = _FRAMING.unpack_from(raw)
            body = raw[_FRAMING.size :]
            if framed == length and (read < length or zlib.crc32(body) == crc):
                record = _parse_record(body, at, header.page_size)
                npages = (length - _FIXED.size) // (_PGNO.size + header.page_size)
                return header, record._replace(npages=npages, end=size), size, size
    finally:
        os.close(fd)
    last, end = None, _FILE_HEADER
    for record, _ in _records(log):
        last, end = record, record.end
    return header, last, end, size


def _first_commit_time(log: str) -> float | None:
    return next((record.time for record, _ in _records(log) if record.kind == _COMMIT), None)


def _build(path: str, gen: _Gen, header: _Header, pages: dict[int, int], db_pages: int) -> None:
    """Write a state: the generation's base, the latest logged version of each page,
    cut to the commit's size."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if header.base_kind == _SNAPSHOT:
            source = os.open(gen.base, _READ)
            try:
                while chunk := os.read(source, 1 << 20):
                    os.write(fd, chunk)
            finally:
                os.close(source)
        log = os.open(gen.log, _READ)
        try:
            for number, at in sorted(pages.items()):
                if number <= db_pages:
                    os.pwrite(fd, os.pread(log, header.page_size, at), (number - 1) * header.page_size)
        finally:
            os.close(log)
        os.ftruncate(fd, db_pages * header.page_size)
    finally:
        os.close(fd)


def _fsync(path: str) -> None:
    fd = os.open(path, _READ)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
