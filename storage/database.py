"""One actor's SQLite database: opening, turns, savepoints, statistics, closing.

The database holds an exclusive ``flock`` on its file from open to close. That makes
"at most one activation of an address" a property of the file itself: a second open,
from this process or another, gets ``DatabaseLocked`` instead of a second view of the
data (a lock dies with its process, so a crash never leaves one behind). SQLite itself
runs on its ``unix-none`` VFS in WAL mode with ``locking_mode=EXCLUSIVE``: the flock is
the only lock, and the WAL index lives in heap memory. SQLite's default VFS would lock
too, but it finds a file's locks by walking a list of every file the process has open,
so each open would cost time in proportion to the actors already active (about 1 ms at
6,000). An open actor holds three file descriptors: the lock, the database, its WAL.

Turns (used by the runtime around each message)::

    with db.turn():              # or begin_turn() / commit() / rollback() / end_turn()
        db.kv.put("a", 1)        # joins the turn's transaction
        db.commit()              # an output point: everything so far is durable
        db.kv.put("b", 2)
        raise Boom               # rolls back "b" only; "a" stays

Inside a turn, a transaction starts lazily at the first write, so turns that only read
cost no BEGIN/COMMIT. Outside a turn every write commits on its own. ``transaction()``
is a savepoint: an exception inside rolls back only that block.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import apsw

from storage import schema
from storage.address import Address
from storage.errors import DatabaseLocked, StorageError, StorageFull, StorageReadOnly, TransactionError

if TYPE_CHECKING:
    from storage.alarms import AlarmStore
    from storage.branches import Branches
    from storage.history import History
    from storage.kv import KVStore
    from storage.sql import SqlStore
    from storage.things import ThingStore
    from storage.workflow import WorkflowStore


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
        history: Seconds of point-in-time history kept per actor (``storage.history``:
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


def translate(exc: apsw.Error, address: Address | None = None) -> StorageError:
    """Map an apsw error to the storage error that says what happened and what to do."""
    where = f" ({address})" if address is not None else ""
    addr = (address.namespace, address.id) if address is not None else None
    if isinstance(exc, apsw.BusyError | apsw.LockedError):
        return DatabaseLocked(
            f"the database{where} is held by another activation; "
            "only one process may serve an address at a time",
            address=addr,
        )
    if isinstance(exc, apsw.FullError):
        return StorageFull(f"the disk is full{where}; the write was rolled back", address=addr)
    if isinstance(exc, apsw.ReadOnlyError):
        return StorageReadOnly(
            f"the database{where} is read-only (a read-only data directory or file system); the write was rolled back",
            address=addr,
        )
    if isinstance(exc, apsw.CorruptError | apsw.NotADBError):
        return StorageError(f"the database file{where} is damaged or not SQLite", address=addr)
    if isinstance(exc, apsw.CantOpenError | apsw.IOError):
        return StorageError(f"cannot read or write the database{where}: {exc}", address=addr)
    return StorageError(f"storage failed{where}: {type(exc).__name__}: {exc}", address=addr)


class ActorDatabase:
    """The private SQLite database of one actor. Synchronous; one owner at a time.

    Use ``ActorDatabase.open`` to get one, and ``close`` (or ``with``) when done.
    """

    __slots__ = (
        "address",
        "path",
        "_wal_path",
        "_lock",
        "options",
        "_conn",
        "_turn_depth",
        "_savepoints",
        "_kv",
        "_sql",
        "_alarms",
        "_things",
        "_workflow",
        "_branches",
        "_history",
        "_vectors_loaded",
        "_features",
        "_stepping",
    )

    def __init__(self, conn: apsw.Connection, address: Address, path: Path, options: StorageOptions, lock: int):
        self._lock = lock
        self.address = address
        self.path = path
        self._wal_path = f"{path}-wal"
        self.options = options
        self._conn = conn
        self._turn_depth = 0
        self._savepoints = 0
        self._kv: KVStore | None = None
        self._sql: SqlStore | None = None
        self._alarms: AlarmStore | None = None
        self._things: ThingStore | None = None
        self._workflow: WorkflowStore | None = None
        self._branches: Branches | None = None
        self._history: History | None = None
        self._vectors_loaded = False
        self._features: set[str] = set()  # features known to be in place (see require)
        self._stepping = False  # inside step(): see there

    # -- opening and closing ---------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: Path | str,
        address: Address,
        options: StorageOptions | None = None,
        *,
        name: str | None = None,
    ) -> ActorDatabase:
        """Open (creating if needed) the database of ``address`` under ``data_dir``.

        Runs pending schema migrations. On a new database, records the address (and
        ``name``, the human name the id was derived from, when there is one).

        Raises:
            DatabaseLocked: Another activation holds this database.
            StorageError: The file cannot be created, opened or migrated.
        """
        options = options or StorageOptions()
        path = address.path(Path(data_dir))
        if options.read_only:
            return cls._open_read_only(path, address, options)
        lock = _lock(path, address)
        try:
            created = os.fstat(lock).st_size == 0
            conn = apsw.Connection(
                str(path), flags=apsw.SQLITE_OPEN_READWRITE, vfs="unix-none", statementcachesize=options.statement_cache
            )
        except apsw.Error as exc:
            os.close(lock)
            raise translate(exc, address) from None
        try:
            _configure(conn, options, created)
            if _lock_and_migrate(conn, address, name):
                # The connection that built or upgraded a schema keeps about 100 KiB more
                # of SQLite's memory than a fresh one to the same file (measured: 180 KiB
                # against 80); an actor stays open long after it is created, so it gets
                # a fresh connection (about 0.1 ms, once per creation or upgrade). The
                # WAL stays (no checkpoint on close), and so does the flock.
                conn.close()
                conn = apsw.Connection(
                    str(path), flags=apsw.SQLITE_OPEN_READWRITE, vfs="unix-none", statementcachesize=options.statement_cache
                )
                _configure(conn, options, False)
                _lock_and_migrate(conn, address, name)
            _trim_page_cache(conn, options)
        except BaseException as exc:
            _abandon(conn, lock, exc, address)
        db = cls(conn, address, path, options, lock)
        if options.history > 0:
            # History archives every commit through a WAL hook, from here on; it first
            # catches up on commits a killed process left unarchived in the WAL. It
            # raises nothing (a failure is kept in history.info().error).
            from storage.history import History

            db._history = History(db)
            try:
                db._history.attach(created)
            except BaseException:
                db.close()
                raise
        return db

    @classmethod
    def _open_read_only(cls, path: Path, address: Address, options: StorageOptions) -> ActorDatabase:
        """``open`` under ``options.read_only``: the existing file, its lock taken
        through a read-only descriptor, its schema checked but never changed."""
        where = (address.namespace, address.id)
        try:
            lock = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StorageReadOnly(
                f"{address} has no data yet, and the data directory is read-only: it cannot be created",
                address=where,
            ) from None
        except OSError as exc:
            raise StorageError(f"cannot open the database of {address}: {exc.strerror}", address=where) from None
        try:
            _flock(lock, address)
            conn = connect_read_only(path, options.statement_cache)
        except BaseException as exc:
            os.close(lock)
            if isinstance(exc, apsw.Error):
                raise translate(exc, address) from None
            raise
        try:
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
        return cls(conn, address, path, options, lock)

    def close(self) -> None:
        """Roll back anything uncommitted and close the file. The WAL is checkpointed
        into the database only when it has grown past ``wal_keep_kib`` (see
        ``StorageOptions``); committed data is in it either way.

        Safe to call twice.
        """
        conn = self._conn
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except apsw.ConnectionClosedError:
            return
        except apsw.Error:
            pass
        self._turn_depth = 0
        self._savepoints = 0
        history = self._history
        try:
            if history is not None:
                history.before_close()  # archive first: the close may checkpoint the WAL
            if _size(self._wal_path) > self.options.wal_keep_kib * 1024:
                conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0)
            conn.close()
            if history is not None:
                history.after_close()  # still under the flock
        except apsw.Error as exc:
            conn.close(True)  # nothing uncommitted is left; the file must not stay open
            raise translate(exc, self.address) from None
        finally:
            lock, self._lock = self._lock, -1
            if lock >= 0:
                os.close(lock)  # releases the flock, after SQLite is done with the file

    @property
    def closed(self) -> bool:
        """Whether ``close`` has been called."""
        try:
            self._conn.in_transaction
        except apsw.ConnectionClosedError:
            return True
        return False

    def __enter__(self) -> ActorDatabase:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ActorDatabase {self.address}>"

    # -- the stores ------------------------------------------------------------------

    @property
    def kv(self) -> KVStore:
        """The key-value API over this database."""
        if self._kv is None:
            from storage.kv import KVStore

            self._kv = KVStore(self)
        return self._kv

    @property
    def sql(self) -> SqlStore:
        """The SQL API over this database."""
        if self._sql is None:
            from storage.sql import SqlStore

            self._sql = SqlStore(self)
        return self._sql

    @property
    def alarms(self) -> AlarmStore:
        """The actor's alarm and schedules."""
        if self._alarms is None:
            from storage.alarms import AlarmStore

            self._alarms = AlarmStore(self)
        return self._alarms

    @property
    def things(self) -> ThingStore:
        """The semantic stores: things, relationships, full-text and vector search."""
        if self._things is None:
            from storage.things import ThingStore

            self._things = ThingStore(self)
        return self._things

    @property
    def workflow(self) -> WorkflowStore:
        """Events, actions, the outbox, the inbox and subscriptions."""
        if self._workflow is None:
            from storage.workflow import WorkflowStore

            self._workflow = WorkflowStore(self)
        return self._workflow

    @property
    def branches(self) -> Branches:
        """Git-style branches of this actor's data: create, checkout, merge, diff."""
        if self._branches is None:
            from storage.branches import Branches

            self._branches = Branches(self)
        return self._branches

    @property
    def history(self) -> History:
        """Bookmarks and point-in-time restore (``storage.history``)."""
        if self._history is None:
            from storage.history import History

            self._history = History(self)
            self._history.attach()
        return self._history

    @property
    def connection(self) -> apsw.Connection:
        """The underlying apsw connection, for the engine's own stores. Not for user SQL."""
        return self._conn

    # -- turns -----------------------------------------------------------------------

    @property
    def in_turn(self) -> bool:
        """Whether a turn is open (writes then join one transaction until an output point)."""
        return self._turn_depth > 0

    @property
    def has_uncommitted(self) -> bool:
        """Whether there are writes that a ``rollback`` would discard."""
        return bool(self._conn.in_transaction)

    def begin_turn(self) -> None:
        """Open a turn. Turns nest (a reentrant call runs inside the turn that made it).

        Raises:
            TransactionError: A ``transaction()`` block is open (a turn cannot start
                inside one: the block's end would commit the turn's writes).
        """
        if self._savepoints:
            raise TransactionError("cannot begin a turn inside storage.transaction()")
        self._turn_depth += 1

    def end_turn(self) -> None:
        """Close the innermost turn; the caller commits or rolls back first."""
        if self._turn_depth == 0:
            raise TransactionError("end_turn() without begin_turn()")
        self._turn_depth -= 1

    def commit(self) -> None:
        """Make every write since the last output point durable (an output point).

        Raises:
            TransactionError: Inside a ``transaction()`` block: its writes cannot leave
                the actor before the block ends.
            StorageError: The commit failed; the writes were rolled back.
        """
        conn = self._conn
        if not conn.in_transaction:
            return
        if self._savepoints:
            raise TransactionError(
                "cannot reply, call another actor or send an event inside "
                "storage.transaction(): finish the block first"
            )
        if self._stepping:
            try:
                conn.execute("RELEASE _dotdo_step")
                conn.execute("COMMIT")
                conn.execute("BEGIN")
                conn.execute("SAVEPOINT _dotdo_step")
            except apsw.Error as exc:
                self.rollback()
                raise translate(exc, self.address) from None
            return
        try:
            conn.execute("COMMIT")
        except apsw.Error as exc:
            self.rollback()
            raise translate(exc, self.address) from None

    def rollback(self) -> None:
        """Discard every write since the last output point."""
        conn = self._conn
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except apsw.Error as exc:
                raise translate(exc, self.address) from None
        self._savepoints = 0
        self._stepping = False
        self._features.clear()  # a feature built since the last commit is gone

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Run a block as a turn: commit when it ends, roll back if it raises.

        Works around ``await``: under cancellation the ``Cancelled`` exception rolls the
        turn back like any other.
        """
        self.begin_turn()
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        else:
            self.commit()
        finally:
            self._turn_depth -= 1

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """A part of a turn that behaves as a turn of its own: if it raises, its writes
        since it began (or since an output point inside it) are rolled back and the
        turn's earlier writes stay. An output point inside it (``commit``) commits
        everything before, as in a turn. Used to run several event deliveries in one
        turn, each with its own fate. Steps do not nest.
        """
        if self._stepping or self._savepoints or not self._turn_depth:
            raise TransactionError("a step runs inside a turn, outside transaction() blocks, and does not nest")
        conn = self._conn
        try:
            self.ensure_transaction()
            conn.execute("SAVEPOINT _dotdo_step")
        except apsw.Error as exc:
            raise translate(exc, self.address) from None
        self._stepping = True
        try:
            yield
        except BaseException:
            self._stepping = False
            self._savepoints = 0
            self._features.clear()
            with contextlib.suppress(apsw.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK TO _dotdo_step")
                    conn.execute("RELEASE _dotdo_step")
            raise
        else:
            self._stepping = False
            try:
                conn.execute("RELEASE _dotdo_step")
            except apsw.Error as exc:
                raise translate(exc, self.address) from None

    def ensure_transaction(self) -> None:
        """Start the turn's transaction before a write, if a turn is open and none is."""
        if self._turn_depth and not self._conn.in_transaction:
            self._conn.execute("BEGIN")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A block whose writes all happen or, if it raises, none do (a savepoint).

        Inside a turn the block's writes still commit with the turn. Outside a turn the
        block commits when it ends. Blocks nest. Replying, calling another actor or
        sending an event inside the block raises ``TransactionError``.
        """
        conn = self._conn
        self.ensure_transaction()
        name = f"_dotdo_sp{self._savepoints}"
        try:
            conn.execute(f"SAVEPOINT {name}")
        except apsw.Error as exc:
            raise translate(exc, self.address) from None
        self._savepoints += 1
        try:
            yield
        except BaseException:
            self._savepoints -= 1
            self._features.clear()
            with contextlib.suppress(apsw.Error):
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
            raise
        else:
            self._savepoints -= 1
            try:
                conn.execute(f"RELEASE {name}")
            except apsw.Error as exc:
                raise translate(exc, self.address) from None

    @property
    def savepoint_depth(self) -> int:
        """How many ``transaction()`` blocks are open."""
        return self._savepoints

    # -- features --------------------------------------------------------------------

    def has(self, feature: str) -> bool:
        """Whether the tables of ``feature`` exist (without building them)."""
        if feature in self._features:
            return True
        declared = schema.FEATURES[feature]
        try:
            rows = self._conn.execute("SELECT 1 FROM _dotdo_meta WHERE key = ?", (declared.meta_key,)).fetchall()
        except apsw.Error as exc:
            raise translate(exc, self.address) from None
        if rows:
            self.require(feature)  # checks the version, and remembers
        return bool(rows)

    def require(self, feature: str) -> None:
        """Make sure the tables of ``feature`` (see ``storage.schema``) exist.

        The first call on a database that lacks them builds them: inside a turn, in the
        turn's transaction (so a turn that rolls back takes them away again, and the
        next call builds them again); outside one, in a transaction of its own. Later
        calls cost a set lookup.

        Raises:
            StorageError: The feature's tables are newer than this dotdo, or cannot be built.
        """
        if feature in self._features:
            return
        declared = schema.FEATURES[feature]
        conn = self._conn
        try:
            rows = conn.execute("SELECT value FROM _dotdo_meta WHERE key = ?", (declared.meta_key,)).fetchall()
            version = int(rows[0][0]) if rows else 0
            if version > declared.latest:
                raise StorageError(
                    f"the {feature} tables of {self.address} have version {version}, newer than "
                    f"this dotdo understands ({declared.latest}); upgrade dotdo"
                )
            if version < declared.latest:
                if self._turn_depth or self._savepoints:
                    self.ensure_transaction()
                    schema.migrate_feature(conn, declared, version)
                else:
                    with conn:
                        schema.migrate_feature(conn, declared, version)
        except apsw.Error as exc:
            raise translate(exc, self.address) from None
        self._features.add(feature)

    # -- metadata and statistics -----------------------------------------------------

    def stored_address(self) -> Address:
        """The address recorded inside the database when it was created."""
        rows = self.meta()
        return Address(str(rows["namespace"]), str(rows["id"]))

    def meta(self) -> dict[str, object]:
        """What the engine recorded about this database (address, name, creation time)."""
        return dict(self._conn.execute("SELECT key, value FROM _dotdo_meta").fetchall())

    def stats(self) -> DatabaseStats:
        """Size on disk and page figures."""
        conn = self._conn
        page_size = int(conn.pragma("page_size"))
        page_count = int(conn.pragma("page_count"))
        freelist = int(conn.pragma("freelist_count"))
        version = int(conn.pragma("user_version"))
        return DatabaseStats(
            path=str(self.path),
            file_bytes=_size(self.path),
            wal_bytes=_size(self._wal_path),
            page_size=page_size,
            page_count=page_count,
            freelist_count=freelist,
            schema_version=version,
        )

    # -- extensions ------------------------------------------------------------------

    def load_vectors(self) -> None:
        """Load sqlite-vec into this connection (once). Extension loading stays off
        for everything else."""
        if self._vectors_loaded:
            return
        import sqlite_vec

        conn = self._conn
        conn.enable_load_extension(True)
        try:
            conn.load_extension(sqlite_vec.loadable_path())
        except apsw.Error as exc:
            raise StorageError(f"cannot load sqlite-vec: {exc}") from None
        finally:
            conn.enable_load_extension(False)
        self._vectors_loaded = True


def _size(path: Path | str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def connect_read_only(path: Path, statement_cache: int = 12) -> apsw.Connection:
    """A connection that only reads the SQLite file at ``path``, on a file system that
    cannot be written and while nobody writes the file.

    A WAL database is read without its shared-memory file, which could not be created:
    with a WAL beside it, the WAL's index is built in this connection's memory
    (exclusive locking mode, no file locks); without one, the file is the whole
    database and is opened as immutable.
    """
    if Path(f"{path}-wal").exists():
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY, vfs="unix-none", statementcachesize=statement_cache)
        conn.execute("PRAGMA locking_mode=EXCLUSIVE").fetchall()
    else:
        uri = f"file:{urllib.parse.quote(str(path))}?immutable=1"
        conn = apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI, statementcachesize=statement_cache)
    conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()  # fails now, not at first use
    return conn


def _lock(path: Path, address: Address) -> int:
    """Open the database file (creating it and its directory if needed) and take its
    exclusive flock; returns the descriptor that holds the lock.

    Raises:
        DatabaseLocked: Another open holds the lock.
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


def _abandon(conn: apsw.Connection, lock: int, exc: BaseException, address: Address) -> NoReturn:
    """Close a half-opened database (connection, then lock) and raise what stopped it,
    as a storage error when SQLite raised it."""
    conn.close()
    os.close(lock)
    if isinstance(exc, apsw.Error):
        raise translate(exc, address) from None
    raise exc


def _unopened(exc: OSError, address: Address, what: str) -> StorageError:
    """The error for a database file that cannot be made or opened: read-only, full,
    or another failure, each said plainly."""
    where = (address.namespace, address.id)
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
