"""Bookmarks of an actor's history (``dotdo.storage.history``), and the archived states they
name: found by bookmark (``locate``) or by time (``seq_at``), rebuilt in a file
(``build``).

A bookmark is ``<seq:016x>-<check>``. ``seq`` numbers the states of one actor and only
increases, across generations. ``check`` is 8 hex of a hash of the address, so another
actor's bookmark is refused. A state stays restorable while it was current at some
moment of the retention window (``StorageOptions.history`` seconds, 7 days by default).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from typing import TYPE_CHECKING

from dotdo.storage.errors import BookmarkError
from dotdo.storage.history_log import COMMIT, FIXED, PGNO, READ, SNAPSHOT, Gen, Header, first_commit_time, generations, read_header, records

if TYPE_CHECKING:
    from dotdo.storage.address import Address

_BOOKMARK = re.compile(r"([0-9a-f]{16})-([0-9a-f]{8})")


def bookmark_check(address: Address) -> str:
    """The check of the bookmarks of ``address``."""
    return hashlib.sha256(b"dotdo-bookmark\x00" + address.digest.encode()).hexdigest()[:8]


def format_bookmark(seq: int, check: str) -> str:
    """The bookmark of the state ``seq``."""
    return f"{seq:016x}-{check}"


def parse_bookmark(bookmark: object, check: str) -> int:
    """The state ``bookmark`` names.

    Raises:
        BookmarkError: It is not a bookmark, or its check is not ``check`` (another
            actor's).
    """
    match = _BOOKMARK.fullmatch(bookmark) if isinstance(bookmark, str) else None
    if match is None:
        raise BookmarkError(f"not a bookmark: {bookmark!r}"[:200])
    if match.group(2) != check:
        raise BookmarkError(f"the bookmark {bookmark} belongs to another actor")
    return int(match.group(1), 16)


def seq_at(directory: str, when: float) -> int | None:
    """The state current at ``when``: after the last commit at or before it (None:
    nothing archived then)."""
    for gen in reversed(generations(directory)):
        if gen.base_time > when:
            continue
        found = gen.base_seq if read_header(gen.log).base_kind == SNAPSHOT else None
        for record, _ in records(gen.log):
            if record.kind == COMMIT:
                if record.time > when:
                    break
                found = record.seq
        return found
    return None


def locate(directory: str, seq: int, latest: int, horizon: float) -> tuple[Gen, Header, dict[int, int], int, bool]:
    """The generation holding ``seq``; its pages up to ``seq`` (number -> offset in the
    log) and size then; whether the state was current after ``horizon`` (``latest``:
    the current state).

    Raises:
        BookmarkError: ``seq`` is not archived, or no longer.
    """
    if seq > latest:
        raise BookmarkError(f"no state {seq:x} is archived")
    gens = generations(directory)
    for index in range(len(gens) - 1, -1, -1):
        gen = gens[index]
        if seq < gen.base_seq:
            continue
        header = read_header(gen.log)
        if seq == gen.base_seq and header.base_kind != SNAPSHOT:
            continue
        pages: dict[int, int] = {}
        db_pages = os.path.getsize(gen.base) // header.page_size if seq == gen.base_seq else -1
        ended = math.inf  # when the next state replaced it
        step = PGNO.size + header.page_size
        for record, body in records(gen.log):
            if record.kind != COMMIT:
                continue
            if record.seq > seq:
                ended = record.time
                break
            for i in range(record.npages):
                (number,) = PGNO.unpack_from(body, FIXED.size + i * step)
                pages[number] = record.pages_at + i * step + PGNO.size
            if record.seq == seq:
                db_pages = record.db_pages
        if db_pages < 0:
            break
        if ended == math.inf and seq < latest and index + 1 < len(gens):
            after = gens[index + 1]
            ended = after.base_time if after.base_seq > seq else first_commit_time(after.log) or math.inf
        return gen, header, pages, db_pages, ended > horizon
    raise BookmarkError(f"the state {seq:x} is no longer archived (outside the retention window)")


def build(path: str, gen: Gen, header: Header, pages: dict[int, int], db_pages: int) -> None:
    """Write a state: the generation's base, the latest logged version of each page,
    cut to the commit's size."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if header.base_kind == SNAPSHOT:
            source = os.open(gen.base, READ)
            try:
                while chunk := os.read(source, 1 << 20):
                    os.write(fd, chunk)
            finally:
                os.close(source)
        log = os.open(gen.log, READ)
        try:
            for number, at in sorted(pages.items()):
                if number <= db_pages:
                    os.pwrite(fd, os.pread(log, header.page_size, at), (number - 1) * header.page_size)
        finally:
            os.close(log)
        os.ftruncate(fd, db_pages * header.page_size)
    finally:
        os.close(fd)
