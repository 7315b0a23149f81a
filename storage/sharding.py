"""Splitting one actor's data over shard actors by a key, and gathering it back.

What is split: the semantic store (things, their relationships, vectors and text index)
by the key, and every user SQL table by its column named like the key. ``key`` is
``$id`` (things by ``$id``, tables by an ``id`` column) or a field name: things by
``data[key]``, tables by the column ``key``. The shard of a value is the same function
in Python (``shard_of_value``, for routing calls) and in SQL (``dotdo_shard``).

What is refused, with the reason, before anything is copied: a key-value store that
holds entries (its keys are not the shard key), a user table without the key column,
a relationship or a foreign key whose two ends fall in different shards, rows that
reference missing rows (they could not be gathered again), a pending alarm or
schedule, and events not yet delivered.

Splitting (``write_shard``) copies the whole database into the shard with the backup
API, deletes what belongs to other shards and vacuums: one full copy per shard. A shard
copy records ``shard.of`` (its router and generation) so a copy left by a crash before
the router committed is recognised and overwritten by the next attempt. Gathering
(``gather``) inserts a shard's rows into the router in its open transaction, things in
creation order with fresh row ids.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import apsw

from dotdo.storage import backup, foreign_keys
from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import ActorExists, InvalidInput, translate
from dotdo.storage.lifecycle import is_blank, make_independent
from dotdo.storage.options import StorageOptions
from dotdo.storage.query import create_index, parse_field
from dotdo.storage.things import THINGS
from dotdo.storage.workflow_tables import WORKFLOW

MAX_SHARDS = 256
_KEY_RE = re.compile(r"\$id\Z|[A-Za-z_][A-Za-z0-9_]{0,63}\Z")


def check_key(key: object) -> str:
    """``key`` if it is ``$id`` or a plain field name (``InvalidInput`` otherwise)."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise InvalidInput(f"a shard key is '$id' or a field name (letters, digits, _), got {key!r}")
    return key


def check_count(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SHARDS:
        raise InvalidInput(f"the number of shards is an integer from 1 to {MAX_SHARDS}, got {n!r}")
    return n


def column_of(key: str) -> str:
    """The user-table column and method parameter that carry the key."""
    return "id" if key == "$id" else key


def shard_of_value(value: Any, n: int) -> int:
    """Which of ``n`` shards holds rows whose key is ``value``. Values compare as SQLite
    sees them: 5 and 5.0 are the same key, text is text."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value is None:
        raw = b"n"
    elif isinstance(value, bool):
        raw = b"i" + str(int(value)).encode()
    elif isinstance(value, int):
        raw = b"i" + str(value).encode()
    elif isinstance(value, float):
        raw = b"f" + repr(value).encode()
    elif isinstance(value, str):
        raw = b"s" + value.encode("utf-8", "surrogatepass")
    elif isinstance(value, bytes):
        raw = b"b" + value
    else:
        raw = b"j" + json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return int.from_bytes(hashlib.sha256(raw).digest()[:8], "big") % n


def register(conn: apsw.Connection) -> None:
    """Make ``dotdo_shard(value, n)`` available to SQL on ``conn``."""
    conn.create_scalar_function("dotdo_shard", shard_of_value, 2, deterministic=True)


def _thing_key(key: str, alias: str) -> str:
    if key == "$id":
        return f"{alias}.id"
    return f"json_extract({alias}.data, '$.{key}')"  # key is checked: an identifier


def user_tables(conn: apsw.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_dotdo\\_%' ESCAPE '\\' "
        "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
    ).fetchall()
    return [name for (name,) in rows]


def _columns(conn: apsw.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f'PRAGMA table_info("{_quoted(table)}")')]


def _quoted(name: str) -> str:
    return name.replace('"', '""')


def check_splittable(db: ActorDatabase, key: str, n: int) -> list[str]:
    """Refuse (``InvalidInput``) what cannot be split by ``key`` (see the module);
    returns the user tables that will be."""
    conn = db.connection
    problems: list[str] = []
    try:
        register(conn)
        if conn.execute("SELECT 1 FROM _dotdo_kv LIMIT 1").fetchall():
            problems.append("the key-value store holds entries (their keys are not the shard key: move them to things or a table)")
        if conn.execute("SELECT 1 FROM _dotdo_alarm WHERE due IS NOT NULL UNION ALL SELECT 1 FROM _dotdo_schedules").fetchall():
            problems.append("an alarm or a schedule is pending (delete it first)")
        tables = user_tables(conn)
        column = column_of(key)
        missing = [t for t in tables if column not in _columns(conn, t)]
        if missing:
            problems.append(f"the tables {', '.join(missing)} have no column {column!r}")
        else:
            dangling = foreign_keys.violations(conn)
            if dangling:
                problems.append(
                    f"rows reference missing rows ({', '.join(dangling)}: see PRAGMA foreign_key_check), "
                    "and gathering the shards again would be refused"
                )
            across = foreign_keys.crossing(conn, tables, column, n)
            if across:
                problems.append(f"foreign keys would cross shards ({', '.join(across)})")
        if db.has(WORKFLOW.name) and conn.execute("SELECT 1 FROM _dotdo_outbox LIMIT 1").fetchall():
            problems.append("events are still being delivered (try again when they are)")
        if db.has(THINGS.name):
            crossing = conn.execute(
                "SELECT a.id, r.verb, b.id FROM _dotdo_relationships AS r "
                "JOIN _dotdo_things AS a ON a.rid = r.src JOIN _dotdo_things AS b ON b.rid = r.dst "
                f"WHERE dotdo_shard({_thing_key(key, 'a')}, ?1) != dotdo_shard({_thing_key(key, 'b')}, ?1) LIMIT 3",
                (n,),
            ).fetchall()
            if crossing:
                shown = "; ".join(f"{a} -{verb}-> {b}" for a, verb, b in crossing)
                problems.append(f"relationships would cross shards ({shown})")
    except apsw.Error as exc:
        raise translate(exc, db.address) from None
    if problems:
        raise InvalidInput(f"cannot shard {db.address} by {key!r}: " + "; ".join(problems))
    return tables


def write_shard(
    db: ActorDatabase,
    data_dir: Path,
    address: Address,
    *,
    name: str | None,
    options: StorageOptions,
    key: str,
    n: int,
    index: int,
    marker: str,
) -> int:
    """Make the shard ``index`` of ``n`` at ``address``: the rows of ``db`` (committed)
    whose key falls there. ``marker`` identifies this router and generation; a target
    that is neither blank nor marked with it is refused (``ActorExists``). Returns the
    shard's size in bytes."""
    target = ActorDatabase.open(data_dir, address, options, name=name)
    try:
        if target.meta().get("shard.of") != marker and not is_blank(target):
            raise ActorExists(str(address), " and is not a shard of this actor")
        backup.copy(db.connection, target.connection)
        conn = target.connection
        register(conn)
        try:
            # No ON DELETE action may reach the rows that stay (none references a row
            # that goes: check_splittable refused crossing references).
            with foreign_keys.off(conn), conn:
                make_independent(conn, address, name, db.address, alarms=False)
                conn.execute("INSERT OR REPLACE INTO _dotdo_meta(key, value) VALUES ('shard.of', ?)", (marker,))
                _keep_only(conn, key, n, index)
            backup.vacuum(conn)
        except apsw.Error as exc:
            raise translate(exc, address) from None
    finally:
        target.close()
    return backup.file_size(target.path)


def _keep_only(conn: apsw.Connection, key: str, n: int, index: int) -> None:
    column = _quoted(column_of(key))
    for table in user_tables(conn):
        conn.execute(f'DELETE FROM "{_quoted(table)}" WHERE dotdo_shard("{column}", ?) != ?', (n, index))
    if conn.execute("SELECT 1 FROM sqlite_schema WHERE name = '_dotdo_things'").fetchall():
        gone = f"SELECT rid FROM _dotdo_things AS t WHERE dotdo_shard({_thing_key(key, 't')}, ?1) != ?2"
        conn.execute(f"DELETE FROM _dotdo_relationships WHERE src IN ({gone}) OR dst IN ({gone})", (n, index))
        conn.execute(f"DELETE FROM _dotdo_vectors WHERE rid IN ({gone})", (n, index))
        conn.execute(f"DELETE FROM _dotdo_things_fts WHERE rowid IN ({gone})", (n, index))
        conn.execute(f"DELETE FROM _dotdo_things WHERE rid IN ({gone})", (n, index))


def become_router(db: ActorDatabase, router: str, generation: int) -> None:
    """In the caller's transaction (whose commit decides): delete every row sharding
    moved out and the actor's subscriptions (events go to the shards), and record the
    router configuration. The router keeps its tables, empty."""
    conn = db.connection
    db.ensure_transaction()
    with foreign_keys.deferred(conn):  # parents may go before their children
        for table in user_tables(conn):
            conn.execute(f'DELETE FROM "{_quoted(table)}"')
    if db.has(THINGS.name):
        for table in ("_dotdo_relationships", "_dotdo_vectors", "_dotdo_things", "_dotdo_things_fts"):
            conn.execute(f"DELETE FROM {table}")
    if db.has(WORKFLOW.name):
        conn.execute("DELETE FROM _dotdo_subscriptions")
    set_meta(db, {"shards": router, "shards.generation": generation})


def set_meta(db: ActorDatabase, pairs: dict[str, Any]) -> None:
    """Set (or, for None, delete) ``_dotdo_meta`` keys, in the caller's transaction."""
    conn = db.connection
    db.ensure_transaction()
    for key, value in pairs.items():
        if value is None:
            conn.execute("DELETE FROM _dotdo_meta WHERE key = ?", (key,))
        else:
            conn.execute("INSERT OR REPLACE INTO _dotdo_meta(key, value) VALUES (?, ?)", (key, value))


def gather(db: ActorDatabase, sources: list[ActorDatabase]) -> int:
    """Insert every row of the shards ``sources`` into ``db`` (in ``db``'s open
    transaction); returns how many rows. Things get fresh row ids, in creation order
    across all shards (the unsharded store's order).

    Raises:
        InvalidInput: A row collides with one already gathered (a primary key taken in
            two shards); the caller rolls back.
    """
    conn = db.connection
    db.ensure_transaction()
    moved = 0

    def dangling() -> Exception:
        return InvalidInput("rows of the shards reference rows that no shard holds; nothing was moved")

    with foreign_keys.left_dangling(conn, dangling):  # a child may come before its parent's shard
        for source in sources:
            for table in user_tables(source.connection):
                moved += _copy_table(conn, source.connection, table)
    holding = [source for source in sources if source.has(THINGS.name)]
    if holding:
        db.require(THINGS.name)
        moved += _copy_things(db, [source.connection for source in holding])
    return moved


def _copy_table(conn: apsw.Connection, src: apsw.Connection, table: str) -> int:
    sql = src.execute("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?", (table,)).fetchall()[0][0]
    if not conn.execute("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (table,)).fetchall():
        conn.execute(sql)
    columns = _columns(src, table)
    names = ", ".join(f'"{_quoted(c)}"' for c in columns)
    marks = ", ".join("?" * len(columns))
    rows = src.execute(f'SELECT {names} FROM "{_quoted(table)}"').fetchall()
    try:
        conn.executemany(f'INSERT INTO "{_quoted(table)}"({names}) VALUES ({marks})', rows)
    except apsw.ConstraintError as exc:
        raise InvalidInput(f"the table {table} has rows with the same key in two shards ({exc}); nothing was moved") from None
    return len(rows)


_THING_FIELDS = "id, type, name, data, meta, visibility, version, created_at, updated_at"


def _copy_things(db: ActorDatabase, sources: list[apsw.Connection]) -> int:
    conn = db.connection
    search = db.things.search_index  # the text index is kept in code (dotdo.storage.search)
    rows = []
    for index, src in enumerate(sources):
        query = f"SELECT {_THING_FIELDS}, json(data), rid FROM _dotdo_things"
        rows.extend((*row, index) for row in src.execute(query))
    rows.sort(key=lambda row: (row[7], row[0]))  # created_at, id
    rids: dict[tuple[int, int], int] = {}
    for *fields, data_text, rid, index in rows:
        try:
            new = conn.execute(
                f"INSERT INTO _dotdo_things({_THING_FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING rid", fields
            ).fetchall()[0][0]
        except apsw.ConstraintError:
            raise InvalidInput(f"the thing {fields[0]!r} is in two shards; nothing was moved") from None
        rids[index, rid] = new
        search.index_text(new, fields[2], json.loads(data_text), new=True)
    moved = len(rows)
    for index, src in enumerate(sources):
        vectors = src.execute("SELECT rid, type, embedding FROM _dotdo_vectors").fetchall()
        conn.executemany(
            "INSERT INTO _dotdo_vectors(rid, type, embedding) VALUES (?, ?, ?)", [(rids[index, r], t, e) for r, t, e in vectors]
        )
        edges = src.execute("SELECT src, verb, dst, data, created_at FROM _dotdo_relationships").fetchall()
        conn.executemany(
            "INSERT INTO _dotdo_relationships(src, verb, dst, data, created_at) VALUES (?, ?, ?, ?, ?)",
            [(rids[index, s], v, rids[index, d], data, at) for s, v, d, data, at in edges],
        )
        _copy_settings(conn, src)
        moved += len(vectors) + len(edges)
    return moved


def _copy_settings(conn: apsw.Connection, src: apsw.Connection) -> None:
    """Field indexes and the vector dimension follow the things."""
    for type_, field in src.execute("SELECT type, field FROM _dotdo_thing_indexes").fetchall():
        if not conn.execute("SELECT 1 FROM _dotdo_thing_indexes WHERE type = ? AND field = ?", (type_, field)).fetchall():
            create_index(conn, type_, parse_field(field))
