"""The supervisor's index of pending alarms: which actor must wake, and when.

One small SQLite file (``<data_dir>/_dotdo/alarms.sqlite``) with a row per pending item
(an actor's alarm, or one of its schedules). The scheduler reads the earliest rows, so
100,000 pending alarms cost 100,000 rows here, not 100,000 sleeping tasks or open
databases, and start-up reads one row, not every actor's file.

The index is a hint; each actor's own database is the truth. Two rules keep the hint
safe:

- **Never later than the truth.** Before a turn that sets an alarm commits, the index
  is lowered to the new time (``lower``), so a crash at any point leaves an entry at or
  before the real time: a missing entry is impossible.
- **Stale entries are harmless.** When the actor's turn ends, its entries are replaced by
  what its database now says (``replace``). An entry left behind by a crash only wakes
  the actor early; it finds nothing due and corrects the index.

Times are epoch seconds. Synchronous, like the rest of ``storage``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import apsw

from dotdo.storage.alarms import PendingItem
from dotdo.storage.errors import StorageError, translate
from dotdo.storage.opening import connect_read_only
from dotdo.storage.options import Durability

INDEX_DIR = "_dotdo"
INDEX_FILE = "alarms.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending(
    namespace TEXT NOT NULL,
    hex TEXT NOT NULL,
    item TEXT NOT NULL,
    name TEXT,
    kind TEXT NOT NULL,
    spec TEXT,
    due REAL NOT NULL,
    retries INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, hex, item)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_due ON pending(due);
"""


def open_index(path: Path, durability: Durability, schema: str, what: str, read_only: bool = False) -> apsw.Connection:
    """Open (creating if needed) an index file shared by every process serving a data
    directory: WAL, the given durability, a writer waiting up to 5 s for another, and
    its ``schema`` (idempotent statements) in place.

    With ``read_only`` (a data directory that cannot be written) the file is read as it
    is, or, when there is none, an empty index is kept in memory.

    Raises:
        StorageError: The file cannot be created or opened (the message names ``what``).
    """
    if read_only:
        return _open_index_read_only(path, schema, what)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = apsw.Connection(str(path))
    except OSError as exc:
        raise StorageError(f"cannot create the {what} at {path}: {exc}") from None
    except apsw.Error as exc:
        raise StorageError(f"cannot open the {what} at {path}: {exc}") from None
    try:
        conn.set_busy_timeout(5000)
        sync = "FULL" if durability is Durability.FULL else "NORMAL"
        for _ in conn.execute(f"PRAGMA journal_mode=WAL; PRAGMA synchronous={sync};" + schema):
            pass
    except apsw.Error as exc:
        conn.close()
        raise StorageError(f"cannot open the {what} at {path}: {exc}") from None
    return conn


def _open_index_read_only(path: Path, schema: str, what: str) -> apsw.Connection:
    try:
        if path.exists():
            return connect_read_only(path)
        conn = apsw.Connection(":memory:")
        for _ in conn.execute(schema):
            pass
        return conn
    except apsw.Error as exc:
        raise StorageError(f"cannot read the {what} at {path}: {exc}") from None


class IndexFile:
    """One open index file (see ``open_index``): closing and plain queries."""

    def __init__(self, conn: apsw.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    def close(self) -> None:
        """Close the file. Safe to call twice."""
        self._conn.close()

    def _exec(self, query: str, bindings: Sequence[object] = ()) -> list[tuple]:
        try:
            return self._conn.execute(query, bindings).fetchall()
        except apsw.Error as exc:
            raise translate(exc) from None


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One pending item of one actor."""

    namespace: str
    hex: str
    name: str | None
    item: str
    kind: str
    spec: str | None
    due: float
    retries: int


class AlarmIndex(IndexFile):
    """The pending-alarm index of one data directory. Open with ``AlarmIndex.open``."""

    def __init__(self, conn: apsw.Connection, path: Path, serves: Callable[[str], bool] | None) -> None:
        super().__init__(conn, path)
        self._mine = ""  # the condition that picks this process's rows (all: none)
        if serves is not None:
            # Not deterministic: what a process serves may change while it runs.
            conn.create_scalar_function("dotdo_serves", lambda hex_id: int(serves(hex_id)), 1)
            self._mine = " AND dotdo_serves(hex)"

    @classmethod
    def open(
        cls,
        data_dir: Path | str,
        durability: Durability = Durability.NORMAL,
        serves: Callable[[str], bool] | None = None,
        read_only: bool = False,
    ) -> AlarmIndex:
        """Open (creating if needed) the index of ``data_dir``.

        With ``serves`` (a test of an actor's hex id: whether this process runs it, as
        the locator says) ``due`` and ``next_after`` see only those actors. Several
        processes may write the file at once (SQLite's WAL; a writer waits for another
        up to 5 s).

        Raises:
            StorageError: The file cannot be created or opened.
        """
        path = Path(data_dir) / INDEX_DIR / INDEX_FILE
        conn = open_index(path, durability, _SCHEMA, "alarm index", read_only)
        return cls(conn, path, serves)

    # -- writes ----------------------------------------------------------------------

    def lower(self, namespace: str, hex_id: str, name: str | None, item: PendingItem) -> None:
        """Make sure the index wakes the actor at ``item.due`` or earlier (committed
        when this returns: call it before the actor's own commit)."""
        self._exec(
            "INSERT INTO pending(namespace, hex, item, name, kind, spec, due, retries) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(namespace, hex, item) DO UPDATE SET due = min(due, excluded.due), "
            "kind = excluded.kind, spec = excluded.spec",
            (namespace, hex_id, item.item, name, item.kind, item.spec, item.due, item.retries),
        )

    def replace(self, namespace: str, hex_id: str, name: str | None, items: Iterable[PendingItem]) -> None:
        """Replace the actor's entries with ``items`` (what its database says after a commit)."""
        conn = self._conn
        try:
            with conn:
                conn.execute("DELETE FROM pending WHERE namespace = ? AND hex = ?", (namespace, hex_id))
                conn.executemany(
                    "INSERT INTO pending(namespace, hex, item, name, kind, spec, due, retries) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(namespace, hex_id, i.item, name, i.kind, i.spec, i.due, i.retries) for i in items],
                )
        except apsw.Error as exc:
            raise translate(exc) from None

    def postpone(self, namespace: str, hex_id: str, until: float) -> None:
        """Move the actor's due entries to ``until`` (its activation failed; try later)."""
        self._exec(
            "UPDATE pending SET due = ? WHERE namespace = ? AND hex = ? AND due < ?",
            (until, namespace, hex_id, until),
        )

    def advance(self, kind: str, until: float) -> None:
        """Make this process's entries of ``kind`` due at ``until`` at the latest."""
        self._exec(f"UPDATE pending SET due = ? WHERE kind = ? AND due > ?{self._mine}", (until, kind, until))

    # -- reads -----------------------------------------------------------------------

    def due(self, now: float, namespaces: Sequence[str], limit: int) -> list[IndexEntry]:
        """Entries due at ``now`` in ``namespaces``, earliest first, at most ``limit``."""
        marks = ",".join("?" * len(namespaces))
        rows = self._exec(
            f"SELECT namespace, hex, name, item, kind, spec, due, retries FROM pending "
            f"WHERE due <= ? AND namespace IN ({marks}){self._mine} ORDER BY due LIMIT ?",
            (now, *namespaces, limit),
        )
        return [IndexEntry(*row) for row in rows]

    def next_after(self, now: float, namespaces: Sequence[str]) -> float | None:
        """The earliest due time after ``now`` in ``namespaces``, or None."""
        marks = ",".join("?" * len(namespaces))
        rows = self._exec(
            f"SELECT due FROM pending WHERE due > ? AND namespace IN ({marks}){self._mine} ORDER BY due LIMIT 1",
            (now, *namespaces),
        )
        return rows[0][0] if rows else None

    def entries(self, namespace: str | None = None, limit: int = 1000, after: tuple[str, str, str] | None = None) -> list[IndexEntry]:
        """Entries by actor (namespace, id, item order), for listings; page with ``after``
        (the last entry's namespace, hex and item)."""
        where, bindings = [], []
        if namespace is not None:
            where.append("namespace = ?")
            bindings.append(namespace)
        if after is not None:
            where.append("(namespace, hex, item) > (?, ?, ?)")
            bindings.extend(after)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self._exec(
            f"SELECT namespace, hex, name, item, kind, spec, due, retries FROM pending {clause}"
            "ORDER BY namespace, hex, item LIMIT ?",
            (*bindings, limit),
        )
        return [IndexEntry(*row) for row in rows]

    def of_actors(self, namespace: str, hexes: Sequence[str]) -> list[IndexEntry]:
        """The entries of these actors of ``namespace``."""
        if not hexes:
            return []
        marks = ", ".join("?" * len(hexes))
        rows = self._exec(
            f"SELECT namespace, hex, name, item, kind, spec, due, retries FROM pending WHERE namespace = ? AND hex IN ({marks})",
            (namespace, *hexes),
        )
        return [IndexEntry(*row) for row in rows]

    def count(self) -> int:
        """How many entries there are."""
        return int(self._exec("SELECT count(*) FROM pending")[0][0])
