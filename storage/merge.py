"""Diffs and three-way merges between copies of one actor's database, with SQLite's
session extension (``dotdo.storage.branches`` holds the copies and calls these).

**What takes part.** User tables (any table not named ``_dotdo_...`` or ``sqlite_...``),
the key-value table ``_dotdo_kv`` and the semantic store's ``_dotdo_things``,
``_dotdo_relationships`` and ``_dotdo_vectors``. Not the engine's bookkeeping (meta,
alarm, schedules, the workflow tables), nor the things store's field-index registry
(indexes are schema, not rows), nor virtual tables and their shadow tables: the things'
full-text index is rebuilt for the things a merge changes.

**Rows with a primary key** are compared by key; an update carries only the columns it
changed, so a row changed in different columns on the two sides merges without a
conflict (SQLite's rule); the same column changed on both sides to different values is
a conflict. **Tables without a primary key** have rowids that mean nothing across
copies (two branches appending to a log both make rowid 7), so their rows are compared
by content, as multisets: a changed row is one row removed and one added, and there are
no conflicts (a row the source removed that the current no longer has is left alone).

**Things** are identified by ``$id``, not by the integer ``rid`` the relationships,
vectors and full-text index join on: two branches each creating a thing may give both
the same rid. Before comparing, the copies are renumbered (inside a transaction that is
rolled back, so the files never change) so that each ``$id`` has the rid it has in the
current branch, or a fresh one above every rid in use: rows of the same thing then meet,
rows of different things never do, and the same ``$id`` created on both sides is a
real conflict.

**Schemas.** A table the source has and the current lacks is created (with its indexes
and triggers) before the rows are applied. A table whose columns differ between the
copies is refused (``InvalidInput``, naming it). Tables dropped on one side are not
dropped by a merge. User triggers do not fire while a merge applies rows: their effects
on the source are rows of the merge already.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import apsw

from dotdo.storage import foreign_keys
from dotdo.storage.errors import InvalidInput, MergeConflict
from dotdo.storage.search import DIMENSION_KEY, SearchIndex

if TYPE_CHECKING:
    from dotdo.storage.database import ActorDatabase

THINGS = "_dotdo_things"
RELATIONSHIPS = "_dotdo_relationships"
VECTORS = "_dotdo_vectors"
KV = "_dotdo_kv"
THING_TABLES = (THINGS, RELATIONSHIPS, VECTORS)
ENGINE_TABLES = frozenset((KV, *THING_TABLES))
POLICIES = ("fail", "source", "current")

_KINDS = {
    apsw.SQLITE_CHANGESET_DATA: "data",
    apsw.SQLITE_CHANGESET_NOTFOUND: "notfound",
    apsw.SQLITE_CHANGESET_CONFLICT: "conflict",
    apsw.SQLITE_CHANGESET_CONSTRAINT: "constraint",
    apsw.SQLITE_CHANGESET_FOREIGN_KEY: "foreign_key",
}
_OPS = {"INSERT": "inserted", "UPDATE": "updated", "DELETE": "deleted"}
_CREATE_TABLE = "CREATE TABLE "


def quote(name: str) -> str:
    """An SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Table:
    """One table taking part, as one copy has it."""

    name: str
    sql: str
    columns: tuple[str, ...]
    shape: tuple[tuple[str, str, int], ...]  # (column, declared type, primary-key position)

    @property
    def keys(self) -> tuple[str, ...]:
        """The primary-key columns, in key order (empty: a table without one)."""
        return tuple(name for name, _, pk in sorted(self.shape, key=lambda c: c[2]) if pk)


def tables(conn: apsw.Connection, schema: str) -> dict[str, Table]:
    """The tables of ``schema`` that take part in diffs and merges."""
    s = quote(schema)
    found: dict[str, Table] = {}
    listing: list[tuple[Any, ...]] = conn.execute(f"PRAGMA {s}.table_list").fetchall()
    for _schema, name, kind, *_ in listing:
        if kind != "table" or name.startswith("sqlite_"):
            continue
        if name.startswith("_dotdo_") and name not in ENGINE_TABLES:
            continue
        sql: list[tuple[Any, ...]] = conn.execute(
            f"SELECT sql FROM {s}.sqlite_schema WHERE type = 'table' AND name = ?", (name,)
        ).fetchall()
        info: list[tuple[Any, ...]] = conn.execute(f"PRAGMA {s}.table_info({quote(name)})").fetchall()
        shape = tuple((col, (decl or "").upper(), pk) for _cid, col, decl, _nn, _dflt, pk in info)
        found[name] = Table(name, sql[0][0], tuple(c[0] for c in shape), shape)
    return found


@dataclass(slots=True)
class Changes:
    """What turns the old copy into the new one (``compare``)."""

    new: str  # the schema names on the private connection
    old: str
    tables: dict[str, Table]  # the new copy's tables that take part
    old_tables: frozenset[str]  # the names of the old copy's
    changeset: bytes  # for the tables with a primary key
    counts: dict[str, Counter[str]]  # per table: rows "inserted", "updated", "deleted"
    loose: dict[str, tuple[Counter[tuple[Any, ...]], Counter[tuple[Any, ...]]]]  # keyless: (added, removed)
    dropped: dict[str, int] = field(default_factory=dict)  # tables only the old copy has: their rows

    @property
    def empty(self) -> bool:
        return not any(_total(c) for c in self.counts.values()) and not self.dropped

    def summary(self) -> dict[str, dict[str, int]]:
        """Per table with changes: rows inserted, updated and deleted."""
        out: dict[str, dict[str, int]] = {}
        for name, counts in sorted(self.counts.items()):
            if _total(counts):
                out[name] = {op: counts[op] for op in _OPS.values()}
        for name, rows in sorted(self.dropped.items()):
            out[name] = {"inserted": 0, "updated": 0, "deleted": rows}
        return out


def compare(
    conn: apsw.Connection,
    new: str,
    old: str,
    *,
    reference: str | list[tuple[str, int]],
    current: dict[str, Table] | None = None,
) -> Changes:
    """The changes from schema ``old`` to schema ``new`` of the private connection
    ``conn``, which must have a transaction open (the copies are renumbered inside it;
    the caller rolls it back).

    Args:
        reference: Whose rids things get: a schema of ``conn``, or ``(id, rid)`` rows.
        current: The tables of the branch the changes will be applied to, when there
            is one: their columns must match too.

    Raises:
        InvalidInput: A table's columns differ between the copies.
    """
    new_tables, old_tables = tables(conn, new), tables(conn, old)
    for name, table in new_tables.items():
        for other in (old_tables.get(name), (current or {}).get(name)):
            if other is not None and other.shape != table.shape:
                raise InvalidInput(
                    f"the table {name!r} has different columns on the two branches "
                    f"({_columns(other)} against {_columns(table)}); make them the same first"
                )
    if THINGS in new_tables or THINGS in old_tables:
        _align_things(conn, [s for s, t in ((new, new_tables), (old, old_tables)) if THINGS in t], reference)
    session = apsw.Session(conn, new)
    try:
        for name, table in new_tables.items():
            if not table.keys:
                continue
            session.attach(name)
            if name in old_tables:
                session.diff(old, name)
            else:  # new on this side: compare with an empty copy
                conn.execute("CREATE TEMP TABLE " + _body(table))
                session.diff("temp", name)
        changeset = session.changeset()
    finally:
        session.close()
    counts = _count(changeset)
    loose = {}
    for name, table in new_tables.items():
        if not table.keys:
            before = _content(conn, old, table) if name in old_tables else Counter()
            after = _content(conn, new, table)
            loose[name] = (after - before, before - after)
            counts[name] = Counter(inserted=sum(loose[name][0].values()), deleted=sum(loose[name][1].values()))
    dropped = {
        name: int(conn.execute(f"SELECT count(*) FROM {quote(old)}.{quote(name)}").fetchall()[0][0])  # type: ignore[arg-type]
        for name in old_tables
        if name not in new_tables
    }
    return Changes(new, old, new_tables, frozenset(old_tables), changeset, counts, loose, dropped)


def _count(changeset: bytes) -> dict[str, Counter[str]]:
    """Rows inserted, updated and deleted per table in ``changeset``."""
    counts: dict[str, Counter[str]] = {}
    for change in apsw.Changeset.iter(changeset):
        counts.setdefault(change.name, Counter())[_OPS[change.op]] += 1
    return counts


def _total(counts: Counter[str] | None) -> int:
    return sum(counts.values()) if counts else 0


def _columns(table: Table) -> str:
    return "(" + ", ".join(name for name, _, _ in table.shape) + ")"


def _body(table: Table) -> str:
    """The table's CREATE statement without its ``CREATE TABLE `` (SQLite stores it
    normalised: always this prefix)."""
    if not table.sql.startswith(_CREATE_TABLE):
        raise InvalidInput(f"the table {table.name!r} cannot be merged: unexpected definition {table.sql[:60]!r}")
    return table.sql[len(_CREATE_TABLE) :]


def _content(conn: apsw.Connection, schema: str, table: Table) -> Counter[tuple[Any, ...]]:
    """The rows of a table without a primary key, as a multiset."""
    cols = ", ".join(quote(c) for c in table.columns)
    rows = conn.execute(f"SELECT {cols}, count(*) FROM {quote(schema)}.{quote(table.name)} GROUP BY {cols}")
    return Counter({tuple(row[:-1]): row[-1] for row in rows})


def _align_things(conn: apsw.Connection, schemas: list[str], reference: str | list[tuple[str, int]]) -> None:
    """Renumber the things of ``schemas`` so that each ``$id`` has its rid in
    ``reference``, or one fresh rid shared by every schema (see the module docstring)."""
    conn.execute(
        "CREATE TEMP TABLE _dotdo_ref(id TEXT PRIMARY KEY, rid INTEGER NOT NULL) WITHOUT ROWID;"
        "CREATE TEMP TABLE _dotdo_moves(old INTEGER PRIMARY KEY, new INTEGER NOT NULL);"
    )
    if isinstance(reference, str):
        conn.execute(f"INSERT INTO temp._dotdo_ref SELECT id, rid FROM {quote(reference)}.{THINGS}")
    else:
        conn.executemany("INSERT INTO temp._dotdo_ref VALUES (?, ?)", reference)
    tops = [f"SELECT max(rid) FROM {quote(s)}.{THINGS}" for s in schemas] + ["SELECT max(rid) FROM temp._dotdo_ref"]
    fresh = 1 + max((row[0] or 0) for row in conn.execute(" UNION ALL ".join(tops)))
    every = " UNION ALL ".join(f"SELECT id, rid FROM {quote(s)}.{THINGS}" for s in schemas)
    # Fresh rids in the order the things were made on their branch.
    conn.execute(
        "INSERT INTO temp._dotdo_ref SELECT id, ? + row_number() OVER (ORDER BY first, id) "
        f"FROM (SELECT id, min(rid) AS first FROM ({every}) GROUP BY id) "
        "WHERE id NOT IN (SELECT id FROM temp._dotdo_ref)",
        (fresh - 1,),
    )
    for schema in schemas:
        s = quote(schema)
        conn.execute(
            f"INSERT INTO temp._dotdo_moves SELECT t.rid, r.rid FROM {s}.{THINGS} AS t "
            "JOIN temp._dotdo_ref AS r ON r.id = t.id WHERE t.rid != r.rid"
        )
        if conn.execute("SELECT 1 FROM temp._dotdo_moves LIMIT 1").fetchall():
            # Through negative numbers, so that no two rows ever share a key midway.
            moved = "(SELECT -1 - new FROM temp._dotdo_moves WHERE old = {0})"
            hit = "IN (SELECT old FROM temp._dotdo_moves)"
            for table in (THINGS, VECTORS):
                conn.execute(f"UPDATE {s}.{table} AS x SET rid = {moved.format('x.rid')} WHERE x.rid {hit}")
                conn.execute(f"UPDATE {s}.{table} SET rid = -1 - rid WHERE rid < 0")
            conn.execute(
                f"UPDATE {s}.{RELATIONSHIPS} AS x SET "
                f"src = CASE WHEN x.src {hit} THEN {moved.format('x.src')} ELSE x.src END, "
                f"dst = CASE WHEN x.dst {hit} THEN {moved.format('x.dst')} ELSE x.dst END "
                f"WHERE x.src {hit} OR x.dst {hit}"
            )
            conn.execute(
                f"UPDATE {s}.{RELATIONSHIPS} SET src = CASE WHEN src < 0 THEN -1 - src ELSE src END, "
                "dst = CASE WHEN dst < 0 THEN -1 - dst ELSE dst END WHERE src < 0 OR dst < 0"
            )
        conn.execute("DELETE FROM temp._dotdo_moves")


# -- applying a merge ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applied:
    """What ``apply`` changed: per-table counts and the conflicts the policy resolved."""

    tables: dict[str, dict[str, int]]
    resolved: list[dict[str, Any]]


class _Merge:
    """One application of ``Changes`` to the live database (see ``apply``)."""

    def __init__(self, db: ActorDatabase, priv: apsw.Connection, changes: Changes, policy: str) -> None:
        self.db = db
        self.conn = db.connection
        self.priv = priv
        self.changes = changes
        self.policy = policy
        self.unresolved: list[dict[str, Any]] = []
        self.resolved: list[dict[str, Any]] = []
        self.reinsert: list[tuple[str, tuple[Any, ...]]] = []
        # Whether the transaction held deferred violations of its own before the merge
        # (its commit will judge them), and whether the merge was found to add some.
        self.dangling_before = foreign_keys.pending(self.conn)
        self.dangling = False

    # -- conflicts -----------------------------------------------------------------

    def conflict(self, reason: int, change: apsw.TableChange) -> int:
        kind = _KINDS.get(reason, str(reason))
        if reason == apsw.SQLITE_CHANGESET_FOREIGN_KEY:
            if not self.dangling_before:
                self.dangling = True
                self.unresolved.append({"table": None, "key": None, "kind": kind, "op": None, "count": change.fk_conflicts})
            return apsw.SQLITE_CHANGESET_OMIT
        row: Any = change.new if change.op == "INSERT" else change.old
        key = tuple(row[i] for i in sorted(change.pk_columns))
        entry = {"table": change.name, "key": self.describe(change.name, key), "kind": kind, "op": change.op.lower()}
        if self.policy == "fail":
            self.unresolved.append(entry)
        elif self.policy == "current":
            self.resolved.append(entry)
        elif reason in (apsw.SQLITE_CHANGESET_DATA, apsw.SQLITE_CHANGESET_CONFLICT):
            self.resolved.append(entry)
            return apsw.SQLITE_CHANGESET_REPLACE
        elif reason == apsw.SQLITE_CHANGESET_NOTFOUND:
            # Updated on the source, deleted on the current: the source's row comes back.
            self.resolved.append(entry)
            self.reinsert.append((change.name, key))
        else:  # a constraint of the current branch refuses the source's row
            self.unresolved.append(entry)
        return apsw.SQLITE_CHANGESET_OMIT

    def describe(self, table: str, key: tuple[Any, ...]) -> list[Any]:
        """A row's key as a reader knows it: things by ``$id``, KV keys as text."""
        if table == KV:
            return [key[0].decode("utf-8", "replace") if isinstance(key[0], bytes) else key[0]]
        if table in (THINGS, VECTORS):
            return [self.thing_id(key[0])]
        if table == RELATIONSHIPS:
            return [self.thing_id(key[0]), key[1], self.thing_id(key[2])]
        return list(key)

    def thing_id(self, rid: int) -> str | int:
        c = self.changes
        for schema in (c.new, c.old):
            try:
                rows = self.priv.execute(f"SELECT id FROM {quote(schema)}.{THINGS} WHERE rid = ?", (rid,)).fetchall()
            except apsw.SQLError:
                continue  # no things table on this side
            if rows:
                return str(rows[0][0])
        return rid  # not reached: a conflicting row is in one of the copies

    # -- the steps -------------------------------------------------------------------

    def check(self, live: dict[str, Table]) -> None:
        """Refuse, before writing anything, what cannot be merged."""
        c = self.changes
        for name in c.tables:
            if name not in live and name not in THING_TABLES and name in c.old_tables and _total(c.counts.get(name)):
                raise InvalidInput(f"the table {name!r} was dropped on the current branch; its changes cannot be merged")
        vectors = c.counts.get(VECTORS, Counter())
        if vectors["inserted"] or vectors["updated"]:
            theirs, ours = self.dimension(self.priv, c.new), self.dimension(self.conn, "main")
            if theirs and ours and theirs != ours:
                raise InvalidInput(f"the branches' vectors have different dimensions ({theirs} against {ours})")

    @staticmethod
    def dimension(conn: apsw.Connection, schema: str) -> int | None:
        rows: list[Any] = conn.execute(
            f"SELECT value FROM {quote(schema)}._dotdo_meta WHERE key = ?", (DIMENSION_KEY,)
        ).fetchall()
        return int(rows[0][0]) if rows else None

    def create_tables(self, live: dict[str, Table]) -> None:
        """Create what the source has and the current lacks."""
        c = self.changes
        missing = [name for name in c.tables if name not in live]
        if any(name in THING_TABLES for name in missing):
            from dotdo.storage.things import THINGS as FEATURE

            self.db.require(FEATURE.name)
        if c.counts.get(VECTORS) and self.dimension(self.conn, "main") is None:
            theirs = self.dimension(self.priv, c.new)
            if theirs:
                self.conn.execute("INSERT INTO _dotdo_meta(key, value) VALUES (?, ?)", (DIMENSION_KEY, theirs))
        for name in missing:
            if name in THING_TABLES:
                continue
            self.conn.execute(c.tables[name].sql)
            extras: list[tuple[Any, ...]] = self.priv.execute(
                f"SELECT sql FROM {quote(c.new)}.sqlite_schema WHERE tbl_name = ? AND type IN ('index', 'trigger') "
                "AND sql IS NOT NULL ORDER BY type, name",
                (name,),
            ).fetchall()
            for (sql,) in extras:
                self.conn.execute(sql)

    def apply_keyless(self) -> dict[str, Counter[str]]:
        counts: dict[str, Counter[str]] = {}
        for name, (added, removed) in self.changes.loose.items():
            table = self.changes.tables[name]
            cols = ", ".join(quote(c) for c in table.columns)
            where = " AND ".join(f"{quote(c)} IS ?" for c in table.columns)
            t = quote(name)
            for row, n in removed.items():
                self.conn.execute(f"DELETE FROM {t} WHERE rowid IN (SELECT rowid FROM {t} WHERE {where} LIMIT {n})", row)
                counts.setdefault(name, Counter())["deleted"] += self.conn.changes()
            marks = ", ".join("?" for _ in table.columns)
            for row, n in added.items():
                self.conn.executemany(f"INSERT INTO {t}({cols}) VALUES ({marks})", [row] * n)
                counts.setdefault(name, Counter())["inserted"] += n
        return counts

    def apply_reinserts(self) -> None:
        for name, key in self.reinsert:
            table = self.changes.tables[name]
            cols = ", ".join(quote(c) for c in table.columns)
            where = " AND ".join(f"{quote(c)} IS ?" for c in table.keys)
            rows = self.priv.execute(
                f"SELECT {cols} FROM {quote(self.changes.new)}.{quote(name)} WHERE {where}", key
            ).fetchall()
            if not rows:
                continue
            marks = ", ".join("?" for _ in table.columns)
            try:
                with self.conn:
                    self.conn.execute(f"INSERT INTO {quote(name)}({cols}) VALUES ({marks})", rows[0])
            except apsw.ConstraintError:
                self.unresolved.append({"table": name, "key": self.describe(name, key), "kind": "constraint", "op": "update"})

    def fix_things(self, session: apsw.Session) -> None:
        """Keep the semantic store whole: no edge or vector of a thing that is gone, and
        the full-text entry of every thing the merge touched up to date."""
        touched: set[int] = set()
        edges: set[tuple[Any, ...]] = set()
        vectors: set[int] = set()
        for change in apsw.Changeset.iter(session.changeset()):
            row: Any = change.new if change.op == "INSERT" else change.old
            if change.name == THINGS:
                touched.add(row[0])
            elif change.name == RELATIONSHIPS and change.op != "DELETE":
                edges.add((row[0], row[1], row[2]))
            elif change.name == VECTORS and change.op != "DELETE":
                vectors.add(row[0])
        if not (touched or edges or vectors):
            return
        conn = self.conn
        search = SearchIndex(self.db, lambda: True)

        def exists(rid: int) -> bool:
            return bool(conn.execute(f"SELECT 1 FROM {THINGS} WHERE rid = ?", (rid,)).fetchall())

        for rid in sorted(touched):
            rows: list[Any] = conn.execute(f"SELECT name, json(data) FROM {THINGS} WHERE rid = ?", (rid,)).fetchall()
            if rows:
                search.index_text(rid, rows[0][0], json.loads(rows[0][1]), new=False)
            else:
                search.forget(rid)
                conn.execute(f"DELETE FROM {RELATIONSHIPS} WHERE src = ? OR dst = ?", (rid, rid))
        for src, verb, dst in edges:
            if not (exists(src) and exists(dst)):
                conn.execute(f"DELETE FROM {RELATIONSHIPS} WHERE src = ? AND verb = ? AND dst = ?", (src, verb, dst))
        for rid in vectors:
            if not exists(rid):
                search.delete_vector(rid)


def apply(
    db: ActorDatabase, priv: apsw.Connection, changes: Changes, policy: str, live: dict[str, Table], what: str
) -> Applied:
    """Apply ``changes`` (from the merge base to the source) to the live database of
    ``db``, resolving conflicts by ``policy``; ``what`` names the merge in errors. The
    caller holds a savepoint and rolls it back when this raises; ``priv``'s transaction
    (the renumbered copies) is still open.

    Raises:
        InvalidInput: A table dropped on the current branch has changes on the source,
            or the vectors' dimensions differ. Nothing was written.
        MergeConflict: Conflicts under ``fail``, or ones the policy cannot resolve.
    """
    merge = _Merge(db, priv, changes, policy)
    merge.check(live)
    conn = db.connection
    merge.create_tables(live)
    triggers = conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, -1)
    conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
    session = apsw.Session(conn, "main")
    try:
        for name, table in changes.tables.items():
            if table.keys:
                session.attach(name)
        # The changes carry every row an ON DELETE action made on the source, as they
        # carry what its triggers did: neither runs again here. Checks are deferred to
        # the end, where a merge that leaves references to missing rows is refused.
        with foreign_keys.deferred(conn):
            if changes.changeset:
                apsw.Changeset.apply(
                    changes.changeset,
                    conn,
                    conflict=merge.conflict,
                    flags=apsw.SQLITE_CHANGESETAPPLY_IGNORENOOP | apsw.SQLITE_CHANGESETAPPLY_FKNOACTION,
                )
            merge.apply_reinserts()
            keyless = merge.apply_keyless()
            if not (merge.dangling_before or merge.dangling) and foreign_keys.pending(conn):
                merge.unresolved.append({"table": None, "key": None, "kind": "foreign_key", "op": None, "count": None})
        if merge.unresolved:
            count = len(merge.unresolved)
            why = "changed on both branches since they forked" if policy == "fail" else "that the policy cannot resolve"
            rows = sum(entry["kind"] != "foreign_key" for entry in merge.unresolved)
            parts = [f"{rows} row(s) {why}"] if rows else []
            if rows < count:
                parts.append("merged, rows would reference rows that do not exist (a foreign key)")
            raise MergeConflict(f"{what}: {'; '.join(parts)}; nothing was merged", merge.unresolved)
        merge.fix_things(session)
        counts = _count(session.changeset())
    finally:
        session.close()
        conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, triggers)
    for name, applied in keyless.items():
        counts.setdefault(name, Counter()).update(applied)
    summary = {name: {op: c[op] for op in _OPS.values()} for name, c in sorted(counts.items()) if _total(c)}
    return Applied(summary, merge.resolved)
