"""Whole-database copies with SQLite's online backup API: the building block of clone,
branches and restore.

An actor's connection runs on the ``unix-none`` VFS in exclusive locking mode, with its
WAL index in its own heap (``dotdo.storage.database``): no other connection may open its file
while it is open. So every copy goes *through* that connection: ``save`` copies it
page by page into another file, ``load`` copies a file into it. Both see only committed
data: the caller commits its turn first (``ActorDatabase.commit``), and both refuse to
run inside an open transaction.

Side files (branch copies, history snapshots, clones being built) are opened with
``open_file``: the same VFS and locking, so they leave no ``-shm`` file behind. They are
only ever touched by whoever holds the owning actor's lock.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import apsw

from dotdo.storage.errors import StorageError, TransactionError

if TYPE_CHECKING:
    from dotdo.storage.database import ActorDatabase


def open_file(path: Path | str, *, create: bool = False) -> apsw.Connection:
    """A private connection to a side file (not an actor's live database).

    Raises:
        StorageError: The file is missing (and ``create`` is false) or unusable.
    """
    flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
    try:
        conn = apsw.Connection(str(path), flags=flags, vfs="unix-none")
        for _ in conn.execute("PRAGMA locking_mode=EXCLUSIVE; PRAGMA synchronous=NORMAL"):
            pass
    except apsw.Error as exc:
        raise StorageError(f"cannot open {path}: {type(exc).__name__}: {exc}") from None
    return conn


@contextlib.contextmanager
def opened(path: Path | str, *, create: bool = False) -> Iterator[apsw.Connection]:
    """``open_file`` as a context manager that closes the connection."""
    conn = open_file(path, create=create)
    try:
        yield conn
    finally:
        conn.close()


def copy(source: apsw.Connection, dest: apsw.Connection) -> None:
    """Replace ``dest``'s main database with ``source``'s, in one step. The destination
    changes in one transaction: on failure it is as it was.

    Raises:
        StorageError: The copy failed.
    """
    try:
        with dest.backup("main", source, "main") as backup:
            backup.step(-1)
    except apsw.Error as exc:
        raise StorageError(f"copying the database failed: {type(exc).__name__}: {exc}") from None


def save(conn: apsw.Connection, path: Path | str) -> int:
    """Write a consistent copy of ``conn``'s committed data to ``path``, atomically: the
    copy is built in a temporary file beside it, synced, then renamed over ``path``. A
    crash leaves either the old file or the new one (and perhaps a ``.tmp-`` file, which
    ``sweep_temporary`` removes). Returns the size of the copy in bytes.

    Raises:
        TransactionError: ``conn`` has a transaction open (commit first).
        StorageError: The copy or the rename failed.
    """
    if conn.in_transaction:
        raise TransactionError("cannot copy a database with uncommitted writes; commit first")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        dest = open_file(temporary, create=True)
        try:
            copy(conn, dest)
            # Fold the copy's WAL (if the source's header made it one) into the file, so
            # the copy is a single self-contained file.
            dest.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        finally:
            dest.close()
        _remove_sidecars(temporary)
        _fsync(temporary)
        os.replace(temporary, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        _remove_sidecars(temporary)
        raise
    return path.stat().st_size


def load(db: ActorDatabase, path: Path | str) -> None:
    """Replace the live database of ``db`` with the copy at ``path``, in one transaction
    of ``db``'s own connection: afterwards every reader sees the copy, and on failure
    nothing changed. The caller clears what it cached about the old content.

    Raises:
        TransactionError: ``db`` has uncommitted writes (commit first).
        StorageError: The copy is missing or unusable.
    """
    conn = db.connection
    if conn.in_transaction:
        raise TransactionError("cannot replace a database with uncommitted writes; commit first")
    if not Path(path).exists():
        raise StorageError(f"the copy {path} does not exist")
    with opened(path) as source:
        copy(source, conn)


def vacuum(conn: apsw.Connection) -> None:
    """VACUUM ``conn``'s database and truncate its WAL. VACUUM builds the new file as an
    attached database; attaching is otherwise off for actor connections
    (``dotdo.storage.opening._configure``), so it is allowed for the statement only."""
    conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 1)
    try:
        for _ in conn.execute("VACUUM"):
            pass
    finally:
        conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 0)
    conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)


def file_size(path: Path | str) -> int:
    """Bytes of a database file and its WAL together (0 for a missing file)."""
    total = 0
    for name in (str(path), f"{path}-wal"):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(name).st_size
    return total


def sweep_temporary(directory: Path) -> int:
    """Remove copies a crash left half-built in ``directory``; returns how many."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in directory.iterdir():
            if ".tmp-" in entry.name:
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed += 1
    return removed


def remove(path: Path | str) -> None:
    """Delete a database file with its WAL and shared-memory files (missing is fine)."""
    for name in (str(path), f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _remove_sidecars(path: Path) -> None:
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush the directory ``path`` to disk, so that a file created, renamed or removed
    in it stays so after a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
