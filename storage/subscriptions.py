"""The subscription index: which actors listen to which events, for the whole data
directory.

One small SQLite file (``<data_dir>/_dotdo/subscriptions.sqlite``) shared by every
process serving the directory (worker processes read and write it at once, through
SQLite's WAL). A sender looks up the subscribers of ``Noun.verb`` here when it sends;
the lookup is served from memory and re-read only when another connection changed the
file (``PRAGMA data_version``), so it costs a few microseconds.

Like the alarm index it is a hint: each actor's own ``_dotdo_subscriptions`` table is the
truth. A subscription is added here before the turn that makes it commits (so an event
sent right after reaches it) and the actor's entries are rewritten from its table when the
turn ends; a row left behind by a crash only sends the actor an event it drops.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import apsw

from dotdo.storage.alarm_index import INDEX_DIR, IndexFile, open_index
from dotdo.storage.errors import translate
from dotdo.storage.options import Durability

INDEX_FILE = "subscriptions.sqlite"
WILDCARD = "*"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions(
    noun TEXT NOT NULL,
    verb TEXT NOT NULL,
    namespace TEXT NOT NULL,
    hex TEXT NOT NULL,
    name TEXT,
    method TEXT NOT NULL,
    priority INTEGER NOT NULL,
    timeout REAL,
    PRIMARY KEY (noun, verb, namespace, hex, method)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS subscriptions_actor ON subscriptions(namespace, hex);
"""

_COLUMNS = "noun, verb, namespace, hex, name, method, priority, timeout"


@dataclass(frozen=True, slots=True)
class Subscription:
    """Events ``noun.verb`` (either may be ``*``) run ``method`` on the actor
    ``namespace``/``hex``."""

    noun: str
    verb: str
    namespace: str
    hex: str
    name: str | None
    method: str
    priority: int
    timeout: float | None


class SubscriptionIndex(IndexFile):
    """The subscription index of one data directory. Open with ``SubscriptionIndex.open``."""

    def __init__(self, conn: apsw.Connection, path: Path) -> None:
        super().__init__(conn, path)
        self._version = -1
        self._cache: dict[tuple[str, str], list[Subscription]] = {}

    @classmethod
    def open(cls, data_dir: Path | str, durability: Durability = Durability.NORMAL, read_only: bool = False) -> SubscriptionIndex:
        """Open (creating if needed) the index of ``data_dir`` (see ``open_index`` for
        ``read_only``).

        Raises:
            StorageError: The file cannot be created or opened.
        """
        path = Path(data_dir) / INDEX_DIR / INDEX_FILE
        return cls(open_index(path, durability, _SCHEMA, "subscription index", read_only), path)

    # -- lookups ---------------------------------------------------------------------

    def refresh(self) -> None:
        """Forget what was read if another connection changed the file since."""
        # PRAGMA data_version changes when another connection commits (the file
        # control of the same name lags until this connection reads).
        version = self._exec("PRAGMA data_version")[0][0]
        if version != self._version:
            self._cache.clear()
            self._version = version

    def matching(self, noun: str, verb: str, *, refresh: bool = True) -> list[Subscription]:
        """The subscriptions an event ``noun.verb`` goes to (exact and wildcard ones),
        in a stable order; without ``refresh``, as of the last ``refresh``."""
        if refresh:
            self.refresh()
        key = (noun, verb)
        found = self._cache.get(key)
        if found is None:
            found = [
                Subscription(*row)
                for row in self._exec(
                    f"SELECT {_COLUMNS} FROM subscriptions WHERE noun IN (?, '*') AND verb IN (?, '*') "
                    "ORDER BY namespace, hex, method, noun, verb",
                    (noun, verb),
                )
            ]
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = found
        return found

    def of_actor(self, namespace: str, hex_id: str) -> list[Subscription]:
        """The actor's entries."""
        return [
            Subscription(*row)
            for row in self._exec(
                f"SELECT {_COLUMNS} FROM subscriptions WHERE namespace = ? AND hex = ? ORDER BY noun, verb, method",
                (namespace, hex_id),
            )
        ]

    def all(self) -> list[Subscription]:
        """Every entry, by actor."""
        return [Subscription(*row) for row in self._exec(f"SELECT {_COLUMNS} FROM subscriptions ORDER BY namespace, hex, noun, verb, method")]

    # -- writes ----------------------------------------------------------------------

    def add(self, subscription: Subscription) -> None:
        """Add (or update) one entry, committed when this returns."""
        s = subscription
        self._exec(
            f"INSERT OR REPLACE INTO subscriptions({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (s.noun, s.verb, s.namespace, s.hex, s.name, s.method, s.priority, s.timeout),
        )
        self._cache.clear()

    def replace(self, namespace: str, hex_id: str, subscriptions: Iterable[Subscription]) -> None:
        """Make the actor's entries exactly ``subscriptions``."""
        conn = self._conn
        try:
            with conn:
                conn.execute("DELETE FROM subscriptions WHERE namespace = ? AND hex = ?", (namespace, hex_id))
                conn.executemany(
                    f"INSERT OR REPLACE INTO subscriptions({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(s.noun, s.verb, s.namespace, s.hex, s.name, s.method, s.priority, s.timeout) for s in subscriptions],
                )
        except apsw.Error as exc:
            raise translate(exc) from None
        self._cache.clear()
