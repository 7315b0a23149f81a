"""Point-in-time history of one actor's database: bookmarks and restore.

Every commit of the actor's connection is archived from SQLite's own write-ahead log,
as Litestream does. A WAL hook (``apsw.Connection.set_wal_hook``) runs after each
commit; the commits' frames are copied from the ``-wal`` file and appended to a log,
each commit with its time. A *generation* is a base (a snapshot of the database, or
nothing for a database created empty) and the log of the commits after it; the state
after any commit is its generation's base with the logged pages applied up to that
commit. ``restore`` builds that state in a temporary file, checks it
(``PRAGMA quick_check``), and copies it into the live connection in one transaction.

The pieces, each with its part of the design:

- ``dotdo.storage.archive``: ``Archive``, copying commits from the WAL to the log, in batches,
  without ever skipping one (continuity, marks).
- ``dotdo.storage.generations``: continuing the archive at open (catching up what a killed
  process left in the WAL) or starting a new generation; pruning.
- ``dotdo.storage.history_log``: the files (generation logs and snapshots), the log's
  header and records, reading them back.
- ``dotdo.storage.bookmarks``: bookmarks, finding the state one names, rebuilding it.
- here: ``History``, the API (``ActorDatabase.history``), and ``HistoryInfo``.

**Costs** (``benchmarks/history_bench.py``: one core, history on against off in the
same run, measured 2026-11-23 on a 2-vCPU VM with ext4):

- *Write turns.* One KV put and its commit: 0.56-0.68x the rate with history off
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
import math
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import apsw

from dotdo.storage import backup
from dotdo.storage.archive import Gap
from dotdo.storage.bookmarks import bookmark_check, build, format_bookmark, locate, parse_bookmark, seq_at
from dotdo.storage.errors import BookmarkError, StorageError, TransactionError
from dotdo.storage.generations import Generations
from dotdo.storage.history_log import SNAPSHOT, first_commit_time, generations, read_header

if TYPE_CHECKING:
    from dotdo.storage.database import ActorDatabase


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


class History(Generations):
    """The point-in-time history of one actor's database (``ActorDatabase.history``):
    its archive (``Archive``, ``Generations``) with bookmarks and restore. Synchronous.

    ``ActorDatabase.open`` attaches it. Nothing here raises from the commit path: a
    failure to archive is kept (``info().error``), and the next checkpoint,
    ``capture`` or open starts a new generation.
    """

    __slots__ = ("_check_hex",)

    def __init__(self, db: ActorDatabase) -> None:
        super().__init__(db)
        self._check_hex = ""

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

    @property
    def wal_hook(self) -> Callable[[apsw.Connection, str, int], int] | None:
        """The WAL hook that archives commits (None: history is off), for an owner that
        chains it behind its own (``ActorDatabase.replicate``)."""
        return self._on_commit if self._on else None

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
        hear of at once (``dotdo.storage.backup.load``); start a new generation if archiving
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
                except Gap as gap:
                    self._fail(gap)
            if self._broken is not None:  # continue from a new snapshot
                self._start(created=False, continuous=False)
            elif self._outgrown():
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
        return format_bookmark(self._seq, self._check)

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
        found = seq_at(self._dir, when)
        if found is not None:
            return format_bookmark(found, self._check)
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
        seq = parse_bookmark(bookmark, self._check)
        if self._db.connection.in_transaction:
            raise TransactionError("cannot restore with uncommitted writes; commit first")
        self.capture()
        gen, header, pages, db_pages, alive = locate(self._dir, seq, self._seq, self._clock() - self._retention)
        if not alive:
            raise BookmarkError(f"the bookmark {bookmark} is outside the retention window")
        temporary = f"{self._dir}/restore.tmp-{secrets.token_hex(4)}"
        try:
            build(temporary, gen, header, pages, db_pages)
            with backup.opened(temporary) as check:
                result = [row[0] for row in check.execute("PRAGMA quick_check")]
            if result != ["ok"]:
                raise StorageError(f"the archived state of {bookmark} is damaged ({result[0]}); nothing was restored")
            undo = format_bookmark(self._seq, self._check)
            backup.load(self._db, temporary)
            self._db.forget_features()  # feature tables may differ in the restored state
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
        gens = generations(self._dir)
        earliest = None
        if gens:
            first = gens[0]
            with contextlib.suppress(StorageError, OSError):  # damaged: unknown
                if read_header(first.log).base_kind == SNAPSHOT:
                    earliest = first.base_time
                else:
                    earliest = first_commit_time(first.log)
        if earliest is not None:
            earliest = max(earliest, self._clock() - self._retention)
        used = 0
        with contextlib.suppress(FileNotFoundError), os.scandir(self._dir) as entries:
            used = sum(entry.stat().st_size for entry in entries)
        latest = self._time if math.isfinite(self._time) and gens else None
        return HistoryInfo(self._retention, earliest, latest, len(gens), used, self._broken)

    def _require(self) -> None:
        if not self._on:
            raise BookmarkError(f"history is off for {self._db.address} (StorageOptions.history is 0)")

    @property
    def _check(self) -> str:
        if not self._check_hex:
            self._check_hex = bookmark_check(self._db.address)
        return self._check_hex
