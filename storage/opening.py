"""Opening an actor's database file: the lock, the connection, its settings, the schema.

The database holds an exclusive ``flock`` on its file from open to close. That makes
"at most one activation of an address" a property of the file itself: a second open,
from this process or another, gets ``DatabaseLocked`` instead of a second view of the
data (a lock dies with its process, so a crash never leaves one behind). SQLite itself
runs on its ``unix-none`` VFS in WAL mode with ``locking_mode=EXCLUSIVE``: the flock is
the only lock, and the WAL index lives in heap memory. SQLite's default VFS would lock
too, but it finds a file's locks by walking a list of every file the process has open,
so each open would cost time in proportion to the actors already active (about 1 ms at
6,000). An open actor holds three file descriptors (``DESCRIPTORS_PER_ACTOR``): the
lock, the database, its WAL; the archive of ``--history`` opens its files only for the
moment it reads or writes them.

An open that fails for want of a descriptor (``EMFILE``: this process's open-file limit;
``ENFILE``: the system's) raises ``OutOfDescriptors``, which the runtime answers by
passivating idle actors; every open closes what it opened when it fails.

A data directory that cannot be written is opened read-only (``open_read_only``): the
lock is taken through a read-only descriptor and a WAL database is read without its
shared-memory file (``connect_read_only``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
import urllib.parse
from pathlib import Path
from typing import NoReturn

import apsw

from dotdo.storage import schema
from dotdo.storage.address import Address
from dotdo.storage.errors import DatabaseLocked, OutOfDescriptors, StorageError, StorageFull, StorageReadOnly, translate
from dotdo.storage.options import Durability, StorageOptions

DESCRIPTORS_PER_ACTOR = 3
"""File descriptors an open database holds: its flock'd file, SQLite's own descriptor of
the same file (the ``unix-none`` VFS opens it again), and its WAL. No ``-shm`` file:
in exclusive locking mode the WAL index lives in heap memory."""

# errnos that mean "no descriptor left" rather than anything about the file itself.
_NO_DESCRIPTOR = {errno.EMFILE: "this process has", errno.ENFILE: "the system has"}


def open_read_write(path: Path, address: Address, options: StorageOptions, name: str | None) -> tuple[apsw.Connection, int, bool]:
    """Open (creating if needed) the database file at ``path``, take its flock and bring
    its schema up to date; returns the connection, the descriptor holding the lock, and
    whether the file was new.

    Raises:
        DatabaseLocked: Another open holds the lock.
        OutOfDescriptors: No file descriptor is left to open it with.
        StorageError: The file cannot be created, opened or migrated.
    """
    lock = _lock(path, address)
    try:
        created = os.fstat(lock).st_size == 0
        conn = _connect(path, options)
    except BaseException as exc:
        _abandon(None, lock, exc, address)
    try:
        _configure(conn, options, created)
        if _lock_and_migrate(conn, address, name):
            # The connection that built or upgraded a schema keeps about 100 KiB more
            # of SQLite's memory than a fresh one to the same file (measured: 180 KiB
            # against 80); an actor stays open long after it is created, so it gets
            # a fresh connection (about 0.1 ms, once per creation or upgrade). The
            # WAL stays (no checkpoint on close), and so does the flock.
            conn.close()
            conn = _connect(path, options)
            _configure(conn, options, False)
            _lock_and_migrate(conn, address, name)
        _trim_page_cache(conn, options)
    except BaseException as exc:
        _abandon(conn, lock, exc, address)
    return conn, lock, created


def open_read_only(path: Path, address: Address, options: StorageOptions) -> tuple[apsw.Connection, int]:
    """Open the existing database file at ``path`` for reading only (``options.read_only``):
    its lock taken through a read-only descriptor, its schema checked but never changed.
    Returns the connection and the descriptor holding the lock.

    Raises:
        StorageReadOnly: The file does not exist, or its schema would need an upgrade.
        DatabaseLocked: Another open holds the lock.
        OutOfDescriptors: No file descriptor is left to open it with.
        StorageError: The file cannot be opened.
    """
    where = (address.namespace, address.id)
    try:
        lock = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise StorageReadOnly(
            f"{address} has no data yet, and the data directory is read-only: it cannot be created",
            address=where,
        ) from None
    except OSError as exc:
        if exc.errno in _NO_DESCRIPTOR:
            raise _out_of_descriptors(exc.errno, address) from None
        raise StorageError(f"cannot open the database of {address}: {exc.strerror}", address=where) from None
    wal = _has_wal(path)
    try:
        _flock(lock, address)
        conn = _read_only_connection(path, options.statement_cache, wal)
    except BaseException as exc:
        _abandon(None, lock, exc, address)
    try:
        _start_reading(conn, wal)
        _configure(conn, options, False)
        version = int(conn.pragma("user_version"))
        if version != schema.LATEST_VERSION:
            raise StorageReadOnly(
                f"the database of {address} has schema version {version}, not {schema.LATEST_VERSION}, "
                "and cannot be upgraded while the data directory is read-only",
                address=where,
            )
        _trim_page_cache(conn, options)
    except BaseException as exc:
        _abandon(conn, lock, exc, address)
    return conn, lock


def _connect(path: Path, options: StorageOptions) -> apsw.Connection:
    return apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE, vfs="unix-none", statementcachesize=options.statement_cache)


def connect_read_only(path: Path, statement_cache: int = 12) -> apsw.Connection:
    """A connection that only reads the SQLite file at ``path``, on a file system that
    cannot be written and while nobody writes the file.

    A WAL database is read without its shared-memory file, which could not be created:
    with a WAL beside it, the WAL's index is built in this connection's memory
    (exclusive locking mode, no file locks); without one, the file is the whole
    database and is opened as immutable.
    """
    wal = _has_wal(path)
    conn = _read_only_connection(path, statement_cache, wal)
    try:
        _start_reading(conn, wal)
    except BaseException:
        conn.close()
        raise
    return conn


def _has_wal(path: Path) -> bool:
    return Path(f"{path}-wal").exists()


def _read_only_connection(path: Path, statement_cache: int, wal: bool) -> apsw.Connection:
    if wal:
        return apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY, vfs="unix-none", statementcachesize=statement_cache)
    uri = f"file:{urllib.parse.quote(str(path))}?immutable=1"
    return apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI, statementcachesize=statement_cache)


def _start_reading(conn: apsw.Connection, wal: bool) -> None:
    """Read the schema of a read-only connection, so that an unreadable file fails now
    and not at first use (a WAL database first in exclusive mode: no shared memory)."""
    if wal:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE").fetchall()
    conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()


def _lock(path: Path, address: Address) -> int:
    """Open the database file (creating it and its directory if needed) and take its
    exclusive flock; returns the descriptor that holds the lock.

    Raises:
        DatabaseLocked: Another open holds the lock.
        OutOfDescriptors: No file descriptor is left to open it with.
        StorageError: The file or its directory cannot be created or opened.
    """
    flags = os.O_RDWR | os.O_CLOEXEC
    try:
        try:
            fd = os.open(path, flags)
        except (FileNotFoundError, NotADirectoryError):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _unopened(exc, address, "create the data directory for") from None
            fd = os.open(path, flags | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _unopened(exc, address, "create or open the database of") from None
    try:
        _flock(fd, address)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _abandon(conn: apsw.Connection | None, lock: int, exc: BaseException, address: Address) -> NoReturn:
    """Close a half-opened database (its connection when there is one, then its lock)
    and raise what stopped it, as a storage error when SQLite raised it."""
    # Judged before anything is closed: closing frees descriptors, after which a lack
    # of them could no longer be seen.
    error = _failure(exc, conn, address) if isinstance(exc, apsw.Error) else None
    try:
        if conn is not None:
            conn.close()
    finally:
        os.close(lock)
    if error is None:
        raise exc
    raise error from None


def _failure(exc: apsw.Error, conn: apsw.Connection | None, address: Address) -> StorageError:
    """The storage error for SQLite's ``exc`` in an open of ``address``:
    ``OutOfDescriptors`` when a file could not be opened for want of a descriptor."""
    if isinstance(exc, apsw.CantOpenError | apsw.IOError):
        code = _system_errno(conn)
        if code in _NO_DESCRIPTOR:
            return _out_of_descriptors(code, address)
    return translate(exc, address)


def _system_errno(conn: apsw.Connection | None) -> int:
    """The errno of SQLite's last failed system call on ``conn``; without a connection
    (SQLite could not open the file at all), what opening one more descriptor says."""
    if conn is not None:
        try:
            return conn.system_errno
        except apsw.ConnectionClosedError:  # the reopen after a migration failed
            pass
    try:
        os.close(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        return exc.errno or 0
    return 0


def _out_of_descriptors(code: int, address: Address) -> OutOfDescriptors:
    return OutOfDescriptors(
        f"cannot open the database of {address}: {_NO_DESCRIPTOR[code]} no file descriptor left "
        f"({errno.errorcode[code]}); retry once others are closed",
        address=(address.namespace, address.id),
    )


def _unopened(exc: OSError, address: Address, what: str) -> StorageError:
    """The error for a database file that cannot be made or opened: read-only, full,
    or another failure, each said plainly."""
    where = (address.namespace, address.id)
    if exc.errno in _NO_DESCRIPTOR:
        return _out_of_descriptors(exc.errno, address)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StorageReadOnly(
            f"cannot {what} {address} for writing: {exc.strerror} "
            "(a read-only data directory is served with dotdo serve --read-only)",
            address=where,
        )
    if exc.errno == errno.ENOSPC:
        return StorageFull(f"cannot {what} {address}: the disk is full", address=where)
    return StorageError(f"cannot {what} {address}: {exc.strerror or exc}", address=where)


def _flock(fd: int, address: Address) -> None:
    """Take the exclusive flock of an open database file (a read-only descriptor will
    do: flock needs no write access).

    Raises:
        DatabaseLocked: Another open holds the lock.
        StorageError: The lock cannot be taken.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise DatabaseLocked(
                f"the database ({address}) is held by another activation; "
                "only one process may serve an address at a time",
                address=(address.namespace, address.id),
            ) from None
        raise StorageError(f"cannot lock the database of {address}: {exc.strerror}", address=(address.namespace, address.id)) from None


def _configure(conn: apsw.Connection, options: StorageOptions, created: bool) -> None:
    """Apply the per-connection settings (each is lost when the connection closes)."""
    # Hardening: no ATTACH at all, no schema tricks, no extension loading by SQL.
    conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 0)
    conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
    conn.config(apsw.SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0)
    conn.set_busy_timeout(0)
    conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)  # see StorageOptions.wal_keep_kib
    pragmas = (
        "PRAGMA locking_mode=EXCLUSIVE;"
        "PRAGMA foreign_keys=ON;"  # as Durable Objects: see dotdo.storage.foreign_keys
        f"PRAGMA cache_size=-{int(options.cache_kib)};"
        "PRAGMA journal_size_limit=4194304;"
    )
    if created and options.durability is Durability.NORMAL:
        # A new, empty file: the switch to WAL and the schema are written without the
        # three fsyncs they would cost (rollback journal, database, new WAL header).
        # Under `normal` nothing is promised against power loss; a killed process loses
        # nothing, and a file cut short before its schema commits is migrated again.
        pragmas += "PRAGMA synchronous=OFF; PRAGMA journal_mode=WAL;"
    else:
        pragmas += _synchronous(options)
        if created:
            pragmas += "PRAGMA journal_mode=WAL;"
    for _ in conn.execute(pragmas):
        pass


def _synchronous(options: StorageOptions) -> str:
    return f"PRAGMA synchronous={'FULL' if options.durability is Durability.FULL else 'NORMAL'};"


def _trim_page_cache(conn: apsw.Connection, options: StorageOptions) -> None:
    """Give back the page cache's up-front allocation (about 86 KiB per connection).

    SQLite's page cache allocates 20 pages in one block when it first fills, sized by the
    default cache, before any ``PRAGMA cache_size`` can run (the pragma reads the schema
    first). Emptying the cache frees that block; re-filling it while its size is tiny
    (under 3 pages) allocates page by page, and a cache that is never empty again keeps
    allocating page by page after it is raised to its real size. With thousands of
    actors open this is most of their memory.
    """
    for _ in conn.execute(
        "PRAGMA cache_size=0; PRAGMA cache_size=2; SELECT count(*) FROM _dotdo_meta;"
        f"PRAGMA cache_size=-{int(options.cache_kib)};"
    ):
        pass


def _small_lookaside() -> None:
    """Shrink SQLite's per-connection lookaside memory (by default about 30 KiB more per
    connection than dotdo's small statements need). Only possible before any connection
    is open in the process; otherwise the default stays."""
    if apsw.connections():
        return
    try:
        apsw.shutdown()
        apsw.config(apsw.SQLITE_CONFIG_LOOKASIDE, 128, 32)
    except apsw.Error:
        pass
    finally:
        apsw.initialize()


_small_lookaside()


def _lock_and_migrate(conn: apsw.Connection, address: Address, name: str | None) -> bool:
    """Take the write lock for this connection's lifetime and bring the schema up to
    date; returns whether it changed the schema."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.pragma("user_version"))
        if version > schema.LATEST_VERSION:
            raise StorageError(
                f"the database of {address} has schema version {version}, newer than this "
                f"dotdo understands ({schema.LATEST_VERSION}); upgrade dotdo"
            )
        if version < schema.LATEST_VERSION:
            schema.migrate(conn, version)
            if version == 0:
                conn.executemany(
                    "INSERT OR REPLACE INTO _dotdo_meta(key, value) VALUES (?, ?)",
                    [
                        ("namespace", address.namespace),
                        ("id", address.id),
                        ("created_at", time.time()),
                        ("name", name),
                    ],
                )
        conn.execute("COMMIT")
        return version < schema.LATEST_VERSION
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
