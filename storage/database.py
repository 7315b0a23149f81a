"""One actor's SQLite database: turns, savepoints, its stores, statistics, closing.

Opening (the file's lock, the connection's settings, migrations) is in
``dotdo.storage.opening``; settings are ``dotdo.storage.options.StorageOptions``.

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
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw

# Every store is imported here, not on first use: importing opens files, and a store
# first used in a turn of a process out of file descriptors would fail there (a 500)
# instead of the 503 that opening a database gets.
from dotdo.storage import schema
from dotdo.storage.address import Address
from dotdo.storage.alarms import AlarmStore
from dotdo.storage.branches import Branches
from dotdo.storage.errors import SqlError, StorageError, TransactionError, translate
from dotdo.storage.history import History
from dotdo.storage.kv import KVStore
from dotdo.storage.opening import open_read_only, open_read_write
from dotdo.storage.replication import CommitReader
from dotdo.storage.options import DatabaseStats, StorageOptions
from dotdo.storage.sql import SqlStore
from dotdo.storage.things import ThingStore
from dotdo.storage.workflow import WorkflowStore


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
        "guard",
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
        # Asked before every output point (``commit``), read-only turns' included: it
        # raises when nothing may leave the actor now (a cluster node past its deadline).
        self.guard: Callable[[], None] | None = None

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
            OutOfDescriptors: No file descriptor is left to open it with (nothing was
                opened, and nothing is left open).
            StorageError: The file cannot be created, opened or migrated.
        """
        options = options or StorageOptions()
        path = address.path(Path(data_dir))
        if options.read_only:
            conn, lock = open_read_only(path, address, options)
            return cls(conn, address, path, options, lock)
        conn, lock, created = open_read_write(path, address, options, name)
        db = cls(conn, address, path, options, lock)
        if options.history > 0:
            # History archives every commit through a WAL hook, from here on; it first
            # catches up on commits a killed process left unarchived in the WAL. It
            # raises nothing (a failure is kept in history.info().error).
            db._history = History(db)
            try:
                db._history.attach(created)
            except BaseException:
                db.close()
                raise
        return db

    def replicate(self, ship: Callable[[bytes], None], seq: int = 0) -> None:
        """From the next commit on, read each commit from the WAL as a page set
        (``dotdo.storage.replication``) and hand it, encoded, to ``ship``, right after
        the commit and before anything else may checkpoint the WAL; ``seq``: the
        position of the last commit already replicated. History, when on, still
        archives each commit; without it the hook checkpoints as SQLite's
        auto-checkpoint would have (which a WAL hook replaces)."""
        reader = CommitReader(self._wal_path, seq)
        archive = self._history.wal_hook if self._history is not None else None

        def hook(conn: apsw.Connection, name: str, frames: int) -> int:
            if name == "main":
                ship(reader.read(frames).encode())
            if archive is not None:
                return archive(conn, name, frames)
            if frames >= AUTO_CHECKPOINT:
                conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
            return apsw.SQLITE_OK

        self._conn.set_wal_hook(hook)

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
            self._kv = KVStore(self)
        return self._kv

    @property
    def sql(self) -> SqlStore:
        """The SQL API over this database."""
        if self._sql is None:
            self._sql = SqlStore(self)
        return self._sql

    @property
    def alarms(self) -> AlarmStore:
        """The actor's alarm and schedules."""
        if self._alarms is None:
            self._alarms = AlarmStore(self)
        return self._alarms

    @property
    def things(self) -> ThingStore:
        """The semantic stores: things, relationships, full-text and vector search."""
        if self._things is None:
            self._things = ThingStore(self)
        return self._things

    @property
    def workflow(self) -> WorkflowStore:
        """Events, actions, the outbox, the inbox and subscriptions."""
        if self._workflow is None:
            self._workflow = WorkflowStore(self)
        return self._workflow

    @property
    def branches(self) -> Branches:
        """Git-style branches of this actor's data: create, checkout, merge, diff."""
        if self._branches is None:
            self._branches = Branches(self)
        return self._branches

    @property
    def history(self) -> History:
        """Bookmarks and point-in-time restore (``dotdo.storage.history``)."""
        if self._history is None:
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
            SqlError: Deferred foreign-key checks failed; the writes were rolled back.
            StorageError: The commit failed; the writes were rolled back.
            DotdoError: ``guard`` refused the output point (what it raises); nothing
                was committed.
        """
        guard = self.guard
        if guard is not None:
            guard()
        conn = self._conn
        if not conn.in_transaction:
            return
        if self._savepoints:
            raise TransactionError(
                "cannot reply, call another actor or send an event inside "
                "storage.transaction(): finish the block first"
            )
        try:
            if self._stepping:
                conn.execute("RELEASE _dotdo_step")
                conn.execute("COMMIT")
                conn.execute("BEGIN")
                conn.execute("SAVEPOINT _dotdo_step")
            else:
                conn.execute("COMMIT")
        except apsw.ConstraintError as exc:
            # Only deferred checks fail at a commit: PRAGMA defer_foreign_keys = ON
            # and references still missing (SQLite leaves the transaction open).
            self.rollback()
            raise _dangling(exc, "this turn's writes since its last output point") from None
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
        if self._sql is not None:
            self._sql.schema_may_have_changed()  # a table made since is gone

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
                # Releasing the outermost savepoint outside a turn is a commit, which
                # can fail (deferred foreign keys); the savepoint is then still open.
                self._features.clear()
                with contextlib.suppress(apsw.Error):
                    conn.execute(f"ROLLBACK TO {name}")
                    conn.execute(f"RELEASE {name}")
                if isinstance(exc, apsw.ConstraintError):
                    raise _dangling(exc, "the block's writes") from None
                raise translate(exc, self.address) from None

    @property
    def savepoint_depth(self) -> int:
        """How many ``transaction()`` blocks are open."""
        return self._savepoints

    # -- features --------------------------------------------------------------------

    def forget_features(self) -> None:
        """Forget which features' tables are known to be in place: the next ``has`` or
        ``require`` of each looks in the file again.

        Call it when the tables under the open connection may have changed behind this
        object's back: after the data under the connection was replaced (a checkout, a
        restore, a promotion's copy written or settled, a reload after any of these),
        or after a transaction of the caller's own that may have built tables rolled
        back (the ones this object opens forget by themselves).
        """
        self._features.clear()
        if self._sql is not None:
            self._sql.schema_may_have_changed()

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
        """Make sure the tables of ``feature`` (see ``dotdo.storage.schema``) exist.

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


AUTO_CHECKPOINT = 1000
"""WAL frames past which a commit checkpoints when a replication hook replaced
SQLite's own auto-checkpoint (its default threshold)."""


def _size(path: Path | str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _dangling(exc: apsw.ConstraintError, what: str) -> SqlError:
    """The error of a commit refused by deferred foreign-key checks (PRAGMA
    defer_foreign_keys): rows still reference missing rows; ``what`` was rolled back."""
    return SqlError(
        f"{exc}: deferred foreign-key checks (PRAGMA defer_foreign_keys) found rows that reference "
        f"missing rows at the commit; {what} were rolled back",
        sqlite_error=type(exc).__name__,
    )
