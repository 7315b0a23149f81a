"""The files of an actor's history (``dotdo.storage.history``): generations, their logs and
snapshots, and how a log is written and read back.

Files, beside the database (``<digest>.sqlite``)::

    <digest>.history/
        g<gen>-<base seq>-<base time, us>.log    header, then one record per commit
        g<gen>.base                              the generation's snapshot (not for an
                                                 empty base)

A log record is ``length, crc32, body, length``. A crash leaves at worst a torn last
record: readers stop before it, and the next open cuts it off. Snapshots are written by
``dotdo.storage.backup.save`` (a temporary file renamed into place); a generation exists once
its log, written the same way (``create_log``), does. Nothing archived is rewritten, so
a crash at any point loses at most what it interrupted. Generations that end before the
retention window are deleted (``prune``).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from dotdo.storage.errors import StorageError

READ = os.O_RDONLY | os.O_CLOEXEC
NO_SALTS = bytes(8)
# Log header: magic, generation, page size, base seq, base time, base kind, WAL position
# (salts, next frame, checksum), database file identity (inode, size, mtime_ns); crc32.
_LOG_MAGIC = b"dotdo-h1"
_HEADER = struct.Struct("<8sIIQdB8sI8sQQq")
CRC = struct.Struct("<I")
FILE_HEADER = _HEADER.size + CRC.size
# Record: body length and crc32, body, body length again (to find the last from the end).
# Body: kind, seq, time, database pages, WAL position after it, file identity (marks);
# then, for a commit, (page number, page) for each page it wrote.
FRAMING = struct.Struct("<II")
FIXED = struct.Struct("<BQdI8sI8sQQq")
PGNO = struct.Struct("<I")
COMMIT, MARK = 1, 2  # record kinds
EMPTY, SNAPSHOT = 0, 1  # base kinds
_CHECK_TAIL_CRC = 1 << 20  # the last record's crc is checked at open below this size
_LOG_NAME = re.compile(r"g([0-9a-f]{8})-([0-9a-f]{16})-([0-9a-f]{14})\.log")


class Gen(NamedTuple):
    """One generation on disk, as its log's name gives it."""

    number: int
    base_seq: int
    base_time: float  # from the name: microseconds, rounded down
    log: str

    @property
    def base(self) -> str:
        return f"{self.log[: self.log.rindex('/')]}/g{self.number:08x}.base"


class Header(NamedTuple):
    """A log's header: its base, and the WAL position and database file it starts from."""

    page_size: int
    base_kind: int
    salts: bytes
    frame: int
    cksum: bytes
    identity: tuple[int, int, int]


class Record(NamedTuple):
    """A log record: a commit or a mark."""

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


def history_dir(path: Path) -> Path:
    """Where the archive of the database at ``path`` lives."""
    return Path(os.path.splitext(str(path))[0] + ".history")


def generations(directory: str) -> list[Gen]:
    """The generations in ``directory``, oldest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    gens = []
    for name in names:
        match = _LOG_NAME.fullmatch(name)
        if match:
            number, seq, micros = (int(part, 16) for part in match.groups())
            gens.append(Gen(number, seq, micros / 1e6, f"{directory}/{name}"))
    gens.sort()
    return gens


def prune(gens: list[Gen], horizon: float) -> None:
    """Delete the generations whose every state ended before ``horizon``."""
    keep = 0
    while keep + 1 < len(gens) and gens[keep + 1].base_time <= horizon:
        keep += 1
    for gen in gens[:keep]:
        with contextlib.suppress(OSError):  # retried at the next generation or open
            os.unlink(gen.log)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(gen.base)


def create_log(
    directory: str, number: int, page_size: int, seq: int, when: float, kind: int, identity: tuple[int, int, int], full: bool
) -> str:
    """Write the log of a new generation (its header only) and return its path: a
    temporary file renamed into place (with ``full``, synced, and the directory too)."""
    body = _HEADER.pack(_LOG_MAGIC, number, page_size, seq, when, kind, NO_SALTS, 0, NO_SALTS, *identity)
    micros = max(0, math.floor(when * 1e6)) & (1 << 56) - 1
    log = f"{directory}/g{number:08x}-{seq:016x}-{micros:014x}.log"
    temporary = f"{log}.tmp-{secrets.token_hex(4)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, body + CRC.pack(zlib.crc32(body)))
        if full:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, log)
    if full:
        fsync(directory)
    return log


def encode_record(body: bytes) -> bytes:
    """Frame ``body`` as a record."""
    return FRAMING.pack(len(body), zlib.crc32(body)) + body + CRC.pack(len(body))


def _parse_header(raw: bytes, log: str) -> Header:
    if len(raw) != FILE_HEADER or CRC.unpack_from(raw, _HEADER.size)[0] != zlib.crc32(raw[: _HEADER.size]):
        raise StorageError(f"the history log {log} has a damaged header")
    magic, _, page_size, _, _, kind, salts, frame, cksum, ino, size, mtime = _HEADER.unpack_from(raw)
    if magic != _LOG_MAGIC:
        raise StorageError(f"{log} is not a history log of this version")
    return Header(page_size, kind, salts, frame, cksum, (ino, size, mtime))


def read_header(log: str) -> Header:
    """The header of ``log``.

    Raises:
        StorageError: It is damaged, or of another version.
    """
    fd = os.open(log, READ)
    try:
        return _parse_header(os.pread(fd, FILE_HEADER, 0), log)
    finally:
        os.close(fd)


def _parse_record(body: bytes, at: int, page_size: int) -> Record:
    kind, seq, when, db_pages, salts, frame, cksum, ino, size, mtime = FIXED.unpack_from(body)
    npages = (len(body) - FIXED.size) // (PGNO.size + page_size)
    end = at + FRAMING.size + len(body) + CRC.size
    pages_at = at + FRAMING.size + FIXED.size
    return Record(kind, seq, when, db_pages, salts, frame, cksum, (ino, size, mtime), pages_at, npages, end)


def records(log: str) -> Iterator[tuple[Record, bytes]]:
    """The whole records of a log with their bodies, in order; stops at the first torn
    or damaged one."""
    page_size = read_header(log).page_size
    with open(log, "rb") as f:
        at = f.seek(FILE_HEADER)
        while True:
            framing = f.read(FRAMING.size)
            if len(framing) < FRAMING.size:
                return
            length, crc = FRAMING.unpack(framing)
            body = f.read(length)
            trailer = f.read(CRC.size)
            if len(body) < length or trailer != CRC.pack(length) or zlib.crc32(body) != crc or length < FIXED.size:
                return
            yield _parse_record(body, at, page_size), body
            at += FRAMING.size + length + CRC.size


def tail(log: str) -> tuple[Header, Record | None, int, int]:
    """A log's header, last whole record, where that record ends, and the file's size.
    Reads from the end; scans the whole log only when the end is torn."""
    fd = os.open(log, READ)
    try:
        size = os.fstat(fd).st_size
        header = _parse_header(os.pread(fd, FILE_HEADER, 0), log)
        if size == FILE_HEADER:
            return header, None, size, size
        (length,) = CRC.unpack(os.pread(fd, CRC.size, size - CRC.size))
        at = size - CRC.size - length - FRAMING.size
        if at >= FILE_HEADER and length >= FIXED.size:
            read = length if length <= _CHECK_TAIL_CRC else FIXED.size
            raw = os.pread(fd, FRAMING.size + read, at)
            framed, crc = FRAMING.unpack_from(raw)
            body = raw[FRAMING.size :]
            if framed == length and (read < length or zlib.crc32(body) == crc):
                record = _parse_record(body, at, header.page_size)
                npages = (length - FIXED.size) // (PGNO.size + header.page_size)
                return header, record._replace(npages=npages, end=size), size, size
    finally:
        os.close(fd)
    last, end = None, FILE_HEADER
    for record, _ in records(log):
        last, end = record, record.end
    return header, last, end, size


def first_commit_time(log: str) -> float | None:
    """The time of the first commit in ``log`` (None: it holds none)."""
    return next((record.time for record, _ in records(log) if record.kind == COMMIT), None)


def fsync(path: str) -> None:
    """Flush the file or directory at ``path`` to disk."""
    fd = os.open(path, READ)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
