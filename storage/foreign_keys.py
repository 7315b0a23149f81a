"""Foreign keys in actor databases: enforced on every connection, as Durable Objects do.

Every connection opens with ``PRAGMA foreign_keys = ON``. SQLite checks a constraint
when a row that takes part in it is written (a child inserted or its key changed, a
parent deleted or its key changed), never on reads: data written before enforcement
that violates a constraint keeps working, and only a write that would add a violation
fails. User SQL may read ``PRAGMA foreign_keys`` and read or set ``PRAGMA
defer_foreign_keys``, which moves the checks of the rest of the transaction to its
commit (SQLite resets it at every commit and rollback).

The engine's own operations that move user rows take the same rules with them:

- those that write in the caller's transaction (a merge, gathering shards, emptying
  a router, ``delete_all``) run ``deferred`` (which defers ``ON DELETE RESTRICT`` too:
  tables can be emptied in any order), and refuse, before the commit, a result that
  would leave references to missing rows (``left_dangling``);
- the shard split, which deletes other shards' rows from a fresh copy in a transaction
  of its own, runs with enforcement ``off``: no ``ON DELETE`` action may reach rows
  that stay, and the split is refused beforehand if a reference would cross shards
  (``crossing``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import apsw


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Reference:
    """One foreign key: ``child(columns)`` references ``parent(keys)``."""

    child: str
    columns: tuple[str, ...]
    parent: str
    keys: tuple[str, ...]


def references(conn: apsw.Connection, tables: list[str]) -> list[Reference]:
    """The foreign keys of ``tables`` whose parent table exists (a key naming its
    parent's primary key implicitly is resolved to it)."""
    existing = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    found: list[Reference] = []
    for table in tables:
        keys: dict[int, list[tuple[str, str, str | None]]] = {}
        for row in conn.execute(f"PRAGMA foreign_key_list({_quote(table)})"):
            ident, _seq, parent, column, key = row[:5]
            keys.setdefault(ident, []).append((parent, column, key))
        for parts in keys.values():
            parent = parts[0][0]
            if parent not in existing:
                continue
            named = tuple(key for _, _, key in parts)
            if None in named:
                named = _primary_key(conn, parent)
            found.append(Reference(table, tuple(column for _, column, _ in parts), parent, tuple(k for k in named if k)))
    return found


def _primary_key(conn: apsw.Connection, table: str) -> tuple[str, ...]:
    pk = sorted((row[5], row[1]) for row in conn.execute(f"PRAGMA table_info({_quote(table)})") if row[5])
    return tuple(name for _, name in pk) or ("rowid",)


@contextlib.contextmanager
def deferred(conn: apsw.Connection) -> Iterator[None]:
    """Defer foreign-key checks to the commit of the open transaction, for a block of
    engine writes; the setting is put back as it was when the block ends."""
    before = int(conn.pragma("defer_foreign_keys"))
    conn.execute("PRAGMA defer_foreign_keys = ON")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA defer_foreign_keys = {before}")


def pending(conn: apsw.Connection) -> bool:
    """Whether the open transaction holds foreign-key violations that its commit would
    refuse (deferred ones not resolved since)."""
    return conn.status(apsw.SQLITE_DBSTATUS_DEFERRED_FKS)[0] != 0


@contextlib.contextmanager
def left_dangling(conn: apsw.Connection, refuse: Callable[[], Exception]) -> Iterator[None]:
    """Run a block of engine writes deferred (see ``deferred``) and raise ``refuse()``
    if it leaves references to missing rows that the transaction did not hold before
    (the commit would refuse them; the caller rolls back)."""
    before = pending(conn)
    with deferred(conn):
        yield
        if not before and pending(conn):
            raise refuse()


@contextlib.contextmanager
def off(conn: apsw.Connection) -> Iterator[None]:
    """Turn enforcement off on ``conn`` for a block that opens its own transaction (the
    pragma has no effect inside one), and on again after."""
    if conn.in_transaction:
        raise RuntimeError("foreign keys can only be turned off outside a transaction")
    conn.execute("PRAGMA foreign_keys = OFF")
    try:
        yield
    finally:
        conn.execute("PRAGMA foreign_keys = ON")


def violations(conn: apsw.Connection, limit: int = 3) -> list[str]:
    """Tables holding rows that reference missing rows (``PRAGMA foreign_key_check``):
    up to ``limit`` of them, as ``child -> parent``."""
    seen: list[str] = []
    for child, _rowid, parent, _fk in conn.execute("PRAGMA foreign_key_check"):
        entry = f"{child} -> {parent}"
        if entry not in seen and not child.startswith("_dotdo_"):
            seen.append(entry)
            if len(seen) == limit:
                break
    return seen


def crossing(conn: apsw.Connection, tables: list[str], column: str, n: int) -> list[str]:
    """References between rows of ``tables`` whose shard column ``column`` puts them in
    different ones of ``n`` shards (``dotdo_shard`` must be registered on ``conn``): up
    to one example per foreign key, as ``child -> parent``."""
    col = _quote(column)
    found: list[str] = []
    for ref in references(conn, tables):
        if ref.parent not in tables or len(ref.keys) != len(ref.columns):
            continue
        on = " AND ".join(f"c.{_quote(a)} = p.{_quote(b)}" for a, b in zip(ref.columns, ref.keys, strict=True))
        rows = conn.execute(
            f"SELECT 1 FROM {_quote(ref.child)} AS c JOIN {_quote(ref.parent)} AS p ON {on} "
            f"WHERE dotdo_shard(c.{col}, ?1) != dotdo_shard(p.{col}, ?1) LIMIT 1",
            (n,),
        ).fetchall()
        if rows:
            found.append(f"{ref.child} -> {ref.parent}")
    return found
