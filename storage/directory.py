"""The actor directory: every actor whose database exists (or may exist) under a data
directory, by namespace and id.

Database files are named by a hash of their address, so the files alone do not say
which actors they hold without opening each one. The directory does: one small SQLite
file (``<data_dir>/_dotdo/actors.sqlite``, shared by every process serving the data
directory, like the alarm index) with a row per actor, its human name and the bits of
its id that place it in a cluster's slot (``slot_bits``: bits 32 to 63, as
``dotdo.runtime.cluster.slots.slot_of`` reads them).

**Never missing an actor.** A row is written before its database file can be created
(``note``, from the runtime's activation path, which is where every actor's file is
made), so a crash can leave a row without a file (``files_of`` then finds nothing) but
never a file without a row. A data directory that was served before the directory
existed is read once, file by file (``scan``), and marked complete.

Synchronous, like the rest of ``storage``.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import apsw

from dotdo.storage.address import Address
from dotdo.storage.alarm_index import INDEX_DIR, IndexFile, open_index
from dotdo.storage.errors import StorageError
from dotdo.storage.history_log import history_dir
from dotdo.storage.opening import connect_read_only
from dotdo.storage.options import Durability

INDEX_FILE = "actors.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS actors(
    namespace TEXT NOT NULL,
    hex TEXT NOT NULL,
    name TEXT,
    slot_bits INTEGER NOT NULL,
    PRIMARY KEY (namespace, hex)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS directory_meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""


def slot_bits(hex_id: str) -> int:
    """The bits of a 64-hex id that a cluster's slot is taken from."""
    return int(hex_id[8:16], 16)


@dataclass(frozen=True, slots=True)
class Entry:
    """One actor of the directory."""

    namespace: str
    hex: str
    name: str | None


def files_of(data_dir: Path, namespace: str, hex_id: str) -> list[Path]:
    """Every file and folder that belongs to one actor and exists: its database, WAL,
    history archive and branches (folders as themselves, not their contents)."""
    db = Address(namespace, hex_id).path(data_dir)
    candidates = [db, Path(f"{db}-wal"), Path(f"{db}-shm"), history_dir(db), Path(f"{db}.branches")]
    return [path for path in candidates if os.path.lexists(path)]


class ActorDirectory(IndexFile):
    """The actor directory of one data directory. Open with ``ActorDirectory.open``."""

    def __init__(self, conn: apsw.Connection, path: Path, data_dir: Path) -> None:
        super().__init__(conn, path)
        self.data_dir = data_dir
        self._known: set[tuple[str, str]] = set()

    @classmethod
    def open(cls, data_dir: Path | str, durability: Durability = Durability.NORMAL, read_only: bool = False) -> ActorDirectory:
        """Open (creating if needed) the directory of ``data_dir``.

        Raises:
            StorageError: The file cannot be created or opened.
        """
        data_dir = Path(data_dir)
        path = data_dir / INDEX_DIR / INDEX_FILE
        return cls(open_index(path, durability, _SCHEMA, "actor directory", read_only), path, data_dir)

    def note(self, namespace: str, hex_id: str, name: str | None) -> None:
        """Record an actor (before its database may be created); a few microseconds when
        this process recorded it already."""
        key = (namespace, hex_id)
        if key in self._known:
            return
        self._exec(
            "INSERT OR IGNORE INTO actors(namespace, hex, name, slot_bits) VALUES (?, ?, ?, ?)",
            (namespace, hex_id, name, slot_bits(hex_id)),
        )
        self._known.add(key)

    def add(self, entries: Iterable[Entry]) -> None:
        """Record several actors at once (those a node received)."""
        with self._conn:
            for entry in entries:
                self._conn.execute(
                    "INSERT OR REPLACE INTO actors(namespace, hex, name, slot_bits) VALUES (?, ?, ?, ?)",
                    (entry.namespace, entry.hex, entry.name, slot_bits(entry.hex)),
                )

    def forget(self, entries: Iterable[Entry]) -> None:
        """Drop actors whose files left this data directory."""
        with self._conn:
            for entry in entries:
                self._conn.execute("DELETE FROM actors WHERE namespace = ? AND hex = ?", (entry.namespace, entry.hex))
                self._known.discard((entry.namespace, entry.hex))

    def of_slot(self, slots: int, slot: int) -> list[Entry]:
        """The actors in ``slot`` of a cluster of ``slots`` slots."""
        rows = self._exec("SELECT namespace, hex, name FROM actors WHERE slot_bits % ? = ? ORDER BY namespace, hex", (slots, slot))
        return [Entry(*row) for row in rows]

    def page(self, namespace: str, after: str | None = None, limit: int = 100) -> list[Entry]:
        """The actors of ``namespace`` in id order, at most ``limit``, from the one after
        the id ``after`` (the last of the page before)."""
        rows = self._exec(
            "SELECT namespace, hex, name FROM actors WHERE namespace = ? AND hex > ? ORDER BY hex LIMIT ?",
            (namespace, after or "", limit),
        )
        return [Entry(*row) for row in rows]

    def count(self) -> int:
        return int(self._exec("SELECT count(*) FROM actors")[0][0])

    @property
    def complete(self) -> bool:
        """Whether every database file of the data directory has a row (``scan`` ran, or
        the directory was there from the start)."""
        rows = self._exec("SELECT value FROM directory_meta WHERE key = 'complete'")
        return bool(rows and rows[0][0])

    def scan(self) -> int:
        """Record every actor whose database file exists (read from each file's own
        metadata), then mark the directory complete; the number of files read."""
        read = 0
        batch: list[Entry] = []
        for entry in _stored_actors(self.data_dir):
            batch.append(entry)
            read += 1
            if len(batch) >= 500:
                self.add(batch)
                batch.clear()
        self.add(batch)
        self._exec("INSERT OR REPLACE INTO directory_meta(key, value) VALUES ('complete', 1)")
        return read


def _stored_actors(data_dir: Path) -> Iterator[Entry]:
    """The actor each database file under ``data_dir`` says it holds."""
    for namespace_dir in sorted(data_dir.iterdir()) if data_dir.is_dir() else ():
        if not namespace_dir.is_dir() or namespace_dir.name == INDEX_DIR:
            continue
        for bucket in sorted(namespace_dir.iterdir()):
            if not bucket.is_dir():
                continue
            for file in sorted(bucket.glob("*.sqlite")):
                entry = _read_entry(file)
                if entry is not None:
                    yield entry


def _read_entry(file: Path) -> Entry | None:
    try:
        conn = connect_read_only(file)
    except apsw.Error:
        return None
    try:
        meta = dict(conn.execute("SELECT key, value FROM _dotdo_meta WHERE key IN ('namespace', 'id', 'name')").fetchall())
    except apsw.Error:
        return None
    finally:
        conn.close()
    namespace, hex_id = meta.get("namespace"), meta.get("id")
    if not isinstance(namespace, str) or not isinstance(hex_id, str) or len(hex_id) != 64:
        return None
    name = meta.get("name")
    return Entry(namespace, hex_id, name if isinstance(name, str) else None)


IDENTITY_FILE = "identity"


def data_identity(data_dir: Path | str) -> str:
    """The identity of a data directory: a random id made the first time it is asked
    for and kept in ``<data_dir>/_dotdo/identity`` (several processes asking at once
    agree: the first to create the file wins)."""
    path = Path(data_dir) / INDEX_DIR / IDENTITY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    made = secrets.token_hex(16)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        for _ in range(50):
            held = path.read_text().strip()
            if held:
                return held
            time.sleep(0.01)  # another process created it and is writing it
        raise StorageError(f"the data directory's identity file {path} is empty; remove it to make a new one") from None
    try:
        os.write(fd, made.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return made
