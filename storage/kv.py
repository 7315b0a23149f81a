"""The key-value API (Durable Objects' storage API, in Python) over one actor database.

Keys are strings, ordered by their UTF-8 bytes (the same order as Python's ``str``
comparison). Values are anything ``dotdo.storage.codec`` can encode. Limits: a key is at most
2 KiB of UTF-8, an encoded value at most 2 MiB, a batch at most 128 keys. A batch that
breaks a limit is refused whole before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, overload

import apsw

from dotdo.storage import codec, deletion
from dotdo.storage.errors import InvalidInput, InvalidKey, StorageLimitExceeded, translate

if TYPE_CHECKING:
    from dotdo.storage.database import ActorDatabase
    from dotdo.storage.sql import SqlStore

MAX_KEY_BYTES = 2048
MAX_VALUE_BYTES = 2 * 1024 * 1024
MAX_BATCH = 128

_MISSING: Any = object()

_GET = "SELECT v FROM _dotdo_kv WHERE k = ?"
_PUT = "INSERT OR REPLACE INTO _dotdo_kv(k, v) VALUES (?, ?)"
_DELETE = "DELETE FROM _dotdo_kv WHERE k = ?"


def _key(key: object) -> bytes:
    if not isinstance(key, str):
        raise InvalidKey(f"keys are strings, got {type(key).__name__}")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey("key is not valid unicode (lone surrogate)") from None
    if len(raw) > MAX_KEY_BYTES:
        raise StorageLimitExceeded(
            f"key of {len(raw)} bytes is over the {MAX_KEY_BYTES}-byte limit",
            limit=MAX_KEY_BYTES,
            actual=len(raw),
        )
    return raw


def _value(value: object) -> bytes:
    raw = codec.encode(value)
    if len(raw) > MAX_VALUE_BYTES:
        raise StorageLimitExceeded(
            f"value of {len(raw)} bytes (encoded) is over the {MAX_VALUE_BYTES}-byte limit",
            limit=MAX_VALUE_BYTES,
            actual=len(raw),
        )
    return raw


def _batch(keys: Iterable[object]) -> list[bytes]:
    raws = [_key(k) for k in keys]
    if len(raws) > MAX_BATCH:
        raise StorageLimitExceeded(
            f"a batch of {len(raws)} keys is over the {MAX_BATCH}-key limit",
            limit=MAX_BATCH,
            actual=len(raws),
        )
    return raws


def _successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix``."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


class KVStore:
    """Key-value access to one actor's database; see the module docstring for limits."""

    __slots__ = ("_db", "_conn")

    def __init__(self, db: ActorDatabase) -> None:
        self._db = db
        self._conn = db.connection

    @overload
    def get(self, key: str) -> Any: ...
    @overload
    def get(self, key: list[str] | tuple[str, ...]) -> dict[str, Any]: ...

    def get(self, key: str | list[str] | tuple[str, ...]) -> Any:
        """Read one key (its value, or None when absent) or several.

        With a list, returns a dict of the keys that exist, in key order.

        Raises:
            InvalidKey, StorageLimitExceeded: A key is not valid; nothing was read.
        """
        if isinstance(key, str):
            try:
                row = self._conn.execute(_GET, (_key(key),)).fetchone()
            except apsw.Error as exc:
                raise translate(exc, self._db.address) from None
            return None if row is None else codec.decode(row[0])
        raws = sorted(set(_batch(_listed(key))))
        if not raws:
            return {}
        marks = ",".join("?" * len(raws))
        sql = f"SELECT k, v FROM _dotdo_kv WHERE k IN ({marks}) ORDER BY k"
        try:
            rows = self._conn.execute(sql, raws).fetchall()
        except apsw.Error as exc:
            raise translate(exc, self._db.address) from None
        return {k.decode("utf-8"): codec.decode(v) for k, v in rows}

    def put(self, key: str | Mapping[str, Any], value: Any = _MISSING) -> None:
        """Write one key, or every entry of a mapping (atomically).

        Raises:
            InvalidKey, InvalidValue, StorageLimitExceeded: Nothing was written.
            StorageError: The write failed.
        """
        db = self._db
        if isinstance(key, str):
            if value is _MISSING:
                raise InvalidInput("put(key, value) needs a value; use delete() to remove a key")
            args = (_key(key), _value(value))
            try:
                db.ensure_transaction()
                self._conn.execute(_PUT, args)
            except apsw.Error as exc:
                raise translate(exc, db.address) from None
            return
        if not isinstance(key, Mapping):
            raise InvalidKey(f"keys are strings, got {type(key).__name__}")
        if value is not _MISSING:
            raise InvalidInput("put(entries) takes a mapping and no separate value")
        raws = _batch(key.keys())
        rows = [(raw, _value(v)) for raw, v in zip(raws, key.values(), strict=True)]
        self._write_many(_PUT, rows)

    @overload
    def delete(self, key: str) -> bool: ...
    @overload
    def delete(self, key: list[str] | tuple[str, ...]) -> int: ...

    def delete(self, key: str | list[str] | tuple[str, ...]) -> bool | int:
        """Delete one key (returns whether it existed) or several (returns how many did)."""
        conn = self._conn
        if isinstance(key, str):
            raw = _key(key)
            try:
                self._db.ensure_transaction()
                conn.execute(_DELETE, (raw,))
                return conn.changes() > 0
            except apsw.Error as exc:
                raise translate(exc, self._db.address) from None
        raws = sorted(set(_batch(_listed(key))))
        before = conn.total_changes()
        self._write_many(_DELETE, [(r,) for r in raws])
        return conn.total_changes() - before

    def list(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        start_after: str | None = None,
        end: str | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> dict[str, Any]:
        """Entries in key order (descending if ``reverse``), as an ordered dict.

        Args:
            prefix: Only keys starting with this.
            start: Only keys >= this (inclusive). Exclusive with ``start_after``.
            start_after: Only keys > this.
            end: Only keys < this (exclusive).
            limit: At most this many entries (a positive int).
            reverse: Descending order. The bounds keep their meaning: with ``reverse``
                the result starts from the last key below ``end``.
        """
        if start is not None and start_after is not None:
            raise InvalidInput("list() takes start or start_after, not both")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0
        ):
            raise InvalidInput(f"limit must be a positive int, got {limit!r}")
        where: list[str] = []
        args: list[bytes | int] = []
        if prefix is not None:
            low = _key(prefix)
            if low:
                where.append("k >= ?")
                args.append(low)
            high = _successor(low)
            if high is not None:
                where.append("k < ?")
                args.append(high)
        if start is not None:
            where.append("k >= ?")
            args.append(_key(start))
        if start_after is not None:
            where.append("k > ?")
            args.append(_key(start_after))
        if end is not None:
            where.append("k < ?")
            args.append(_key(end))
        sql = "SELECT k, v FROM _dotdo_kv"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY k DESC" if reverse else " ORDER BY k"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        try:
            rows = self._conn.execute(sql, args).fetchall()
        except apsw.Error as exc:
            raise translate(exc, self._db.address) from None
        return {k.decode("utf-8"): codec.decode(v) for k, v in rows}

    def delete_all(self) -> int:
        """Delete everything the actor stored, in one commit: every key, every user SQL
        table (dropped), the semantic stores, the alarm and the schedules. What is kept,
        and why, is in ``dotdo.storage.deletion``. Returns how many keys there were.

        Raises:
            StorageError: The deletion failed; nothing was deleted.
        """
        return deletion.delete_all(self._db).keys

    def transaction(self) -> AbstractContextManager[None]:
        """A block whose writes (KV and SQL) all happen or, if it raises, none do.

        See ``ActorDatabase.transaction``: a savepoint inside the turn. Replying or
        calling another actor inside the block raises ``TransactionError``.
        """
        return self._db.transaction()

    @property
    def sql(self) -> SqlStore:
        """The SQL API over the same database."""
        return self._db.sql

    def _write_many(self, sql: str, rows: list[tuple[bytes, ...]]) -> None:
        if not rows:
            return
        db = self._db
        try:
            with db.transaction():
                self._conn.executemany(sql, rows)
        except apsw.Error as exc:
            raise translate(exc, db.address) from None


def _listed(keys: object) -> list[object]:
    if isinstance(keys, list | tuple):
        return list(keys)
    raise InvalidKey(f"keys are strings (or a list of them), got {type(keys).__name__}")
