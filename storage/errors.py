"""Errors raised by the storage layer, and the root of dotdo's exception tree.

``DotdoError`` is defined here, in the lowest layer, so every layer above can
derive from it without importing upwards. The whole tree is drawn in
``dotdo/errors.py``; this module holds the storage branch::

    DotdoError
    ├── InvalidInput                 the caller sent something unusable; nothing changed
    │   ├── InvalidNamespace
    │   ├── InvalidId
    │   ├── InvalidKey
    │   ├── InvalidValue
    │   ├── ThingNotFound            no thing with that $id (semantic stores)
    │   ├── ThingExists              create() with an $id already taken
    │   ├── VersionConflict          update() expected another $version
    │   ├── ActorExists              clone/promote/shard target already holds data
    │   ├── BranchNotFound           no branch of that name
    │   ├── BranchExists             branch() with a name already taken
    │   ├── MergeConflict            merge() found rows changed on both sides
    │   ├── BookmarkError            a bookmark that is malformed or out of the window
    │   ├── InvalidQuery             empty, forbidden or reserved-table SQL
    │   └── StorageLimitExceeded     key, value or batch over its limit
    └── StorageError                 the database itself failed
        ├── StorageFull              the disk is full; the write was rolled back
        ├── StorageReadOnly          the data directory cannot be written
        ├── SqlError                 SQLite rejected a user statement
        │   └── RowCountError        one() found zero or several rows
        ├── TransactionError         turn / transaction() misuse
        ├── DatabaseLocked           the file is held by another activation
        └── OutOfDescriptors         no file descriptor left to open the file with
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import apsw

if TYPE_CHECKING:
    from dotdo.storage.address import Address


class DotdoError(Exception):
    """Root of every error dotdo raises on purpose.

    Attributes:
        public: A message safe to show to a remote caller.
        address: ``(namespace, id)`` of the actor concerned, when there is one.
    """

    def __init__(self, message: str, *, address: tuple[str, str] | None = None) -> None:
        super().__init__(message)
        self.public = message
        self.address = address

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.public, self.address, self.__dict__))


def _rebuild(cls: type[DotdoError], message: str, address: Any, state: dict[str, Any]) -> DotdoError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class InvalidInput(DotdoError):
    """The caller sent something unusable; nothing was changed."""


class InvalidNamespace(InvalidInput):
    """A namespace is not a short identifier (a letter, then letters, digits or ``_``)."""


class InvalidId(InvalidInput):
    """An actor id is empty, too long, not text, or not valid for its namespace."""


class InvalidKey(InvalidInput):
    """A storage key is not a string (or is not valid UTF-8)."""


class InvalidValue(InvalidInput):
    """A value cannot be stored: it is not msgpack-able (see ``dotdo.storage.codec``)."""


class InvalidQuery(InvalidInput):
    """A SQL statement is empty, forbidden (transactions, ATTACH, pragmas) or reserved."""


class StorageLimitExceeded(InvalidInput):
    """A key, value or batch is over its documented limit.

    Attributes:
        limit: The limit that was passed, in its unit (bytes or entries).
        actual: What was asked for.
    """

    def __init__(self, message: str, *, limit: int, actual: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.actual = actual


class StorageError(DotdoError):
    """The database failed (I/O error, disk full, corruption). The turn is rolled back."""


class StorageFull(StorageError):
    """The disk (or the file system's quota) is full: the write was rolled back and the
    database is intact. Reads keep working; writes work again once space is freed."""


class StorageReadOnly(StorageError):
    """The data directory or the actor's file cannot be written (a read-only file
    system, permissions, or ``dotdo serve --read-only``): the write was rolled back.
    Reads keep working."""


class SqlError(StorageError):
    """SQLite rejected a user statement (syntax error, constraint, missing table).

    Attributes:
        sqlite_error: The name of the underlying SQLite error (e.g. ``ConstraintError``).
    """

    def __init__(self, message: str, *, sqlite_error: str = "") -> None:
        super().__init__(message)
        self.sqlite_error = sqlite_error


class RowCountError(SqlError):
    """``Cursor.one()`` found zero rows or more than one.

    Attributes:
        count: How many rows the statement returned.
    """

    def __init__(self, message: str, *, count: int) -> None:
        super().__init__(message, sqlite_error="")
        self.count = count


class TransactionError(StorageError):
    """A turn or ``transaction()`` block was used out of order."""


class DatabaseLocked(StorageError):
    """The actor's database is held by another activation (another process or connection).

    Remedy: route the call to the process that owns the actor; only one activation of
    an address may exist at a time.
    """


class OutOfDescriptors(StorageError):
    """The database could not be opened because the process (``EMFILE``) or the whole
    system (``ENFILE``) has no file descriptor left. Nothing was opened or changed.

    Remedy: close something (an active actor holds three descriptors, see
    ``dotdo.storage.opening.DESCRIPTORS_PER_ACTOR``) and try again; a server that keeps
    running out needs a higher open-file limit (``ulimit -n``) or fewer active actors
    or connections.
    """


class ThingNotFound(InvalidInput):
    """No thing has this ``$id`` in the actor's store.

    Attributes:
        thing_id: The id that was asked for.
    """

    def __init__(self, thing_id: str) -> None:
        super().__init__(f"no thing with $id {thing_id!r}")
        self.thing_id = thing_id


class ThingExists(InvalidInput):
    """``create`` was given an ``$id`` that a thing already has. Remedy: ``update`` it,
    or ``create`` without an id to get a new one.

    Attributes:
        thing_id: The id that is taken.
    """

    def __init__(self, thing_id: str) -> None:
        super().__init__(f"a thing with $id {thing_id!r} already exists; use update() to change it")
        self.thing_id = thing_id


class VersionConflict(InvalidInput):
    """``update(..., expected_version=n)`` found another ``$version``: someone changed
    the thing since it was read. Nothing was written. Remedy: read it again, re-apply.

    Attributes:
        thing_id: The thing concerned.
        expected: The version the caller expected.
        actual: The version the store holds.
    """

    def __init__(self, thing_id: str, *, expected: int, actual: int) -> None:
        super().__init__(
            f"thing {thing_id!r} is at $version {actual}, not {expected}: it changed since "
            "it was read; read it again and re-apply the change"
        )
        self.thing_id = thing_id
        self.expected = expected
        self.actual = actual


class ActorExists(InvalidInput):
    """The target of a clone, promote or shard already holds data; nothing was copied.
    Remedy: pick another id, or empty the target first.

    Attributes:
        target: ``"<namespace>/<id>"`` of the target.
    """

    def __init__(self, target: str, detail: str = "") -> None:
        super().__init__(f"the actor {target} already holds data{detail}; nothing was copied")
        self.target = target


class BranchNotFound(InvalidInput):
    """No branch of this name exists in the actor.

    Attributes:
        branch: The name asked for.
    """

    def __init__(self, branch: str) -> None:
        super().__init__(f"no branch named {branch!r}")
        self.branch = branch


class BranchExists(InvalidInput):
    """``branch(name)`` with a name that is taken.

    Attributes:
        branch: The name that is taken.
    """

    def __init__(self, branch: str) -> None:
        super().__init__(f"a branch named {branch!r} already exists")
        self.branch = branch


class MergeConflict(InvalidInput):
    """A merge found rows changed on both branches since they forked, and its policy is
    to fail: nothing was merged. Remedy: resolve the rows on one side, or merge with
    ``policy="source"`` / ``"current"``.

    Attributes:
        conflicts: One dict per conflicting row: ``table``, ``key`` (its primary key
            values), ``kind`` (``data``, ``notfound`` or ``conflict``, SQLite's words).
    """

    def __init__(self, message: str, conflicts: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.conflicts = conflicts


class BookmarkError(InvalidInput):
    """A bookmark that is malformed, belongs to another actor, or lies outside the
    retention window; or a time with no bookmark. Nothing was restored."""


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
