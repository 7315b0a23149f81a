"""Generations of an actor's history (``dotdo.storage.history``): continuing the archive at
open, with what a killed process left in the WAL, or starting a new generation.

A generation's base is a snapshot of the database, or nothing for a database this open
created (its every commit is then in the WAL, and copied at once). At open the archive
continues its last generation only if the WAL still holds the position after the last
archived commit, or the WAL restarted after a mark and the database file still matches
it (its inode, size and mtime); the commits a killed process left in the WAL are then
copied, stamped with the WAL's modification time (the time of the last of them).
Otherwise (the file was replaced, or written with history off and checkpointed) a new
generation starts from a snapshot, with seq numbers from the next multiple of 2**20, so
a bookmark of a lost commit is refused rather than misread. A new generation also
starts when the log outgrows ``max(database, MIN_LOG_BYTES)`` (at a checkpoint), after
a gap in the WAL, and after a failure to archive. Each new generation deletes the
generations that end before the retention window.
"""

from __future__ import annotations

import os
from pathlib import Path

import apsw

from dotdo.storage import backup
from dotdo.storage.archive import FRAME_HEADER, WAL_FRAME, WAL_HEADER, Archive, file_identity, wal_valid
from dotdo.storage.errors import StorageError
from dotdo.storage.history_log import EMPTY, FILE_HEADER, MARK, NO_SALTS, READ, SNAPSHOT, Gen, create_log, generations, prune, tail


class Generations(Archive):
    """An ``Archive`` that loads itself at open and starts new generations."""

    __slots__ = ()

    def _load(self, created: bool) -> None:
        """Continue the last generation, or start a new one."""
        gens = generations(self._dir)
        if not gens:
            self._start(created=created, continuous=False)
            return
        gen = gens[-1]
        header, last, end, size = tail(gen.log)
        self._gen, self._log, self._log_bytes, self._page_size = gen.number, gen.log, end, header.page_size
        identity: tuple[int, int, int] | None = header.identity
        self._seq, self._time = gen.base_seq, gen.base_time
        self._salts, self._frame, self._cksum = header.salts, header.frame, header.cksum
        if last is not None:
            self._seq, self._time, self._db_pages = last.seq, last.time, last.db_pages
            self._salts, self._frame, self._cksum = last.salts, last.frame, last.cksum
            identity = last.identity if last.kind == MARK else None
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
            fd = os.open(self._wal, READ)
        except FileNotFoundError:
            fd = -1
        try:
            header = os.pread(fd, WAL_HEADER, 0) if fd >= 0 else b""
            valid = wal_valid(header) and int.from_bytes(header[8:12], "big") == self._page_size
            if valid and header[16:24] == self._salts and self._frame:
                at = WAL_HEADER + (self._frame - 1) * (self._page_size + FRAME_HEADER)
                frame = os.pread(fd, FRAME_HEADER, at)
                if frame[8:16] != self._salts or frame[16:24] != self._cksum:
                    return False
                start = self._frame
            elif identity is not None and file_identity(self._db.path) == identity:
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
            if not self._gen and (gens := generations(self._dir)):  # the archive failed to load
                # Its last generation holds an unknown number of states (under 2**32).
                self._gen = gens[-1].number
                self._seq = max(self._seq, (((gens[-1].base_seq >> 32) + 1) << 32) - 1)
        number = self._gen + 1
        page_size = int(conn.pragma("page_size"))
        if created and os.path.getsize(self._db.path) <= page_size:
            # A file this open created: its one page is rewritten by the schema's first
            # commit, so the base is empty and every commit is in the WAL (copied below).
            kind = EMPTY
        else:
            if self._full and self._unsynced and self._log:
                self._sync()
            left, done = conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
            if left or done:
                raise StorageError(f"cannot checkpoint {self._db.address} to start a history generation")
            backup.save(conn, f"{self._dir}/g{number:08x}.base")
            kind = SNAPSHOT
        # A generation that does not continue the last one starts at the next multiple
        # of 2**20: a bookmark of a commit the archive lost (a torn log after a power
        # loss) is then unknown rather than the name of some later state.
        seq = self._seq if continuous or not self._gen else ((self._seq >> 20) + 1) << 20
        now = self._clock()
        when = max(now, self._time)
        log = create_log(self._dir, number, page_size, seq, when, kind, file_identity(self._db.path), self._full)
        self._gen, self._log, self._log_bytes, self._page_size = number, log, FILE_HEADER, page_size
        self._seq, self._time, self._salts, self._frame, self._cksum = seq, when, NO_SALTS, 0, NO_SALTS
        self._restart_ok, self._unsynced, self._broken = True, False, None
        if kind == EMPTY:
            self._take_new()
        if number > 1:
            self._prune()

    def _take_new(self) -> None:
        """Copy the WAL of a database this open created: written by this open only, so
        every frame with the header's salts is whole (no checkpoint needed)."""
        try:
            fd = os.open(self._wal, READ)
        except FileNotFoundError:
            return
        try:
            data = os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
        if not wal_valid(data):
            return
        size = self._page_size + FRAME_HEADER
        salts = data[16:24]
        frames = memoryview(data)[WAL_HEADER:]
        count = last = 0
        while (count + 1) * size <= len(frames) and frames[count * size + 8 : count * size + 16] == salts:
            count += 1
            if WAL_FRAME.unpack_from(frames, (count - 1) * size)[1]:
                last = count  # up to the last commit
        self._append_frames(frames[: last * size].tobytes(), 0, salts, [(last, self._clock())])

    def _prune(self, gens: list[Gen] | None = None) -> None:
        """Delete the generations whose every state ended before the window."""
        prune(generations(self._dir) if gens is None else gens, self._clock() - self._retention)
