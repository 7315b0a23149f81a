"""The settings of actor databases, and the figures they report."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass


class Durability(enum.StrEnum):
    """How far a commit must reach before it returns.

    ``NORMAL``: the commit is in the operating system when it returns; it survives the
    process being killed (``kill -9``), not a power loss. ``FULL``: the WAL is fsynced on
    every commit; it survives power loss, at the cost of one fsync per committed turn.
    """

    NORMAL = "normal"
    FULL = "full"


@dataclass(frozen=True, slots=True)
class StorageOptions:
    """Settings applied to every actor database a process opens.

    Attributes:
        durability: See ``Durability``.
        cache_kib: Page cache per connection. Small by design: thousands of warm actors
            share the operating system's file cache instead of each holding their own.
        statement_cache: Prepared statements kept per connection.
        wal_keep_kib: A WAL up to this size stays in place when the database closes;
            the next open replays it. A larger one is checkpointed into the database
            and removed. Checkpointing on every close would cost three fsyncs per
            activation that wrote anything (the checkpoint's two and the new WAL
            header's on the next write); keeping a small WAL costs its disk space and
            a read of it at the next open.
        history: Seconds of point-in-time history kept per actor (``dotdo.storage.history``:
            bookmarks and restore); 0, the default, turns it off (nothing is archived).
            While on, every commit is also appended to the actor's archive: measured,
            small write turns run at 0.56-0.68x the rate without it, and a busy actor
            (5 commits/s) keeps about 106 MB of archive per hour of window.
        clock: The time source of history (epoch seconds); tests pass their own.
        sql_time_limit: Seconds one ``sql.exec`` call may run before SQLite stops it
            (``SqlError``; the turn rolls back unless the actor catches it). Storage
            calls are synchronous, so a runaway query would hold up every actor of
            the process, not just its own.
        read_only: Open existing databases for reading only, create none, migrate
            none, archive nothing: for a data directory that cannot be written. Every
            write then raises ``StorageReadOnly`` and changes nothing.
    """

    durability: Durability = Durability.NORMAL
    cache_kib: int = 256
    statement_cache: int = 12
    wal_keep_kib: int = 512
    history: float = 0.0
    clock: Callable[[], float] = time.time
    sql_time_limit: float = 10.0
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class DatabaseStats:
    """Size figures for one database, for compaction and metrics."""

    path: str
    file_bytes: int
    wal_bytes: int
    page_size: int
    page_count: int
    freelist_count: int
    schema_version: int

    @property
    def size_bytes(self) -> int:
        """Bytes on disk, database file plus WAL."""
        return self.file_bytes + self.wal_bytes
