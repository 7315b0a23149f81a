"""Promotion: a thing stored inside one actor becomes an actor of its own.

Three commits, in this order (``dotdo.runtime.services.promotion`` runs them):

1. ``adopt``: the new actor's database gets the thing (its ``$id``, ``$type``, data,
   ``$version`` and times), its vector, and its relationships, with a *placeholder*
   thing for each other end (same ``$id`` and ``$type``, no data, ``meta.$ref`` naming
   the parent, which keeps the real one). It is marked ``promotion: pending``.
2. ``decide``, in the parent: the thing becomes a *reference* (no data, ``meta.$promoted``
   naming the new actor; ``update`` refuses it), and ``_dotdo_promoted`` records the
   move. This commit is the decision.
3. ``finish``: the new actor's mark becomes ``done``.

A crash between 1 and 2 leaves the thing in the parent and a pending copy; a crash
between 2 and 3 leaves the decision made and a pending mark. Whoever opens the new
actor next asks the parent (``promoted``) and either finishes or ``abandon``s the copy,
so the thing is served by exactly one of them, never both, never neither. The parent
keeps its own relationships to the reference, so its graph stays navigable.
"""

from __future__ import annotations

import json
import time
from typing import Any

import apsw

from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import ActorExists, InvalidInput, ThingNotFound, translate
from dotdo.storage.lifecycle import LIFECYCLE, is_blank
from dotdo.storage.things import PROMOTED, THINGS

REF = "$ref"

_FIELDS = "id, type, name, data, meta, visibility, version, created_at, updated_at"
_READ = "id, type, name, json(data), json(meta), visibility, version, created_at, updated_at"


def export(db: ActorDatabase, thing_id: str) -> dict[str, Any]:
    """Everything ``adopt`` needs of the thing ``thing_id`` of ``db``.

    Raises:
        ThingNotFound: No such thing. InvalidInput: It was promoted already.
    """
    if not db.has(THINGS.name):
        raise ThingNotFound(thing_id)
    conn = db.connection
    rows = conn.execute(f"SELECT rid, {_READ} FROM _dotdo_things WHERE id = ?", (thing_id,)).fetchall()
    if not rows:
        raise ThingNotFound(thing_id)
    rid, *fields = rows[0]
    if PROMOTED in json.loads(fields[4]):
        raise InvalidInput(f"the thing {thing_id!r} was promoted already")
    vector = conn.execute("SELECT type, embedding FROM _dotdo_vectors WHERE rid = ?", (rid,)).fetchall()
    edges = conn.execute(
        "SELECT 'out', r.verb, o.id, o.type, json(r.data), r.created_at FROM _dotdo_relationships AS r "
        "JOIN _dotdo_things AS o ON o.rid = r.dst WHERE r.src = ?1 "
        "UNION ALL SELECT 'in', r.verb, o.id, o.type, json(r.data), r.created_at FROM _dotdo_relationships AS r "
        "JOIN _dotdo_things AS o ON o.rid = r.src WHERE r.dst = ?1",
        (rid,),
    ).fetchall()
    return {"thing": fields, "vector": vector[0] if vector else None, "edges": edges}


def adopt(target: ActorDatabase, bundle: dict[str, Any], parent: Address) -> None:
    """Step 1: write the thing into the blank ``target`` (or over an abandoned copy of
    the same promotion), marked pending. One commit.

    Raises:
        ActorExists: ``target`` holds other data.
    """
    thing_id = bundle["thing"][0]
    mark = pending(target.meta())
    if not (mark is not None and mark["thing"] == thing_id and mark["parent"] == [parent.namespace, parent.id]) and not is_blank(target):
        raise ActorExists(f"{target.address}", " (a promoted thing needs a new actor)")
    conn = target.connection
    try:
        with conn:
            _wipe(target)
            target.require(THINGS.name)
            search = target.things.search_index
            rid = _insert(conn, bundle["thing"])
            search.index_text(rid, bundle["thing"][2], json.loads(bundle["thing"][3]), new=True)
            if bundle["vector"] is not None:
                conn.execute("INSERT INTO _dotdo_vectors(rid, type, embedding) VALUES (?, ?, ?)", (rid, *bundle["vector"]))
            ref = json.dumps({REF: f"{parent.namespace}/{parent.id}"})
            others: dict[str, int] = {}
            for direction, verb, other_id, other_type, data, created in bundle["edges"]:
                other = others.get(other_id)
                if other is None:
                    now = time.time()
                    other = others[other_id] = _insert(conn, (other_id, other_type, None, "{}", ref, "private", 1, now, now))
                src, dst = (rid, other) if direction == "out" else (other, rid)
                conn.execute(
                    "INSERT OR REPLACE INTO _dotdo_relationships(src, verb, dst, data, created_at) VALUES (?, ?, ?, jsonb(?), ?)",
                    (src, verb, dst, data, created),
                )
            _mark(conn, {"parent": [parent.namespace, parent.id], "thing": thing_id, "state": "pending"})
    except apsw.Error as exc:
        target.forget_features()
        raise translate(exc, target.address) from None


def _insert(conn: apsw.Connection, fields: Any) -> int:
    rows = conn.execute(
        f"INSERT INTO _dotdo_things({_FIELDS}) VALUES (?, ?, ?, jsonb(?), jsonb(?), ?, ?, ?, ?) RETURNING rid", tuple(fields)
    ).fetchall()
    return int(rows[0][0])


def _mark(conn: apsw.Connection, mark: dict[str, Any] | None) -> None:
    if mark is None:
        conn.execute("DELETE FROM _dotdo_meta WHERE key = 'promotion'")
    else:
        conn.execute("INSERT OR REPLACE INTO _dotdo_meta(key, value) VALUES ('promotion', ?)", (json.dumps(mark),))


def _wipe(db: ActorDatabase) -> None:
    if db.has(THINGS.name):
        conn = db.connection
        for table in ("_dotdo_relationships", "_dotdo_vectors", "_dotdo_things", "_dotdo_things_fts"):
            conn.execute(f"DELETE FROM {table}")


def decide(db: ActorDatabase, thing_id: str, target: Address) -> None:
    """Step 2, in the parent's open turn: the thing becomes a reference to ``target``
    and the move is recorded. The caller commits: that commit is the decision."""
    conn = db.connection
    db.ensure_transaction()
    db.require(LIFECYCLE.name)
    rows = conn.execute("SELECT rid FROM _dotdo_things WHERE id = ?", (thing_id,)).fetchall()
    if not rows:
        raise ThingNotFound(thing_id)
    rid = rows[0][0]
    where = {PROMOTED: f"{target.namespace}/{target.id}"}
    conn.execute("UPDATE _dotdo_things SET data = jsonb('{}'), meta = jsonb(?) WHERE rid = ?", (json.dumps(where), rid))
    conn.execute("DELETE FROM _dotdo_vectors WHERE rid = ?", (rid,))
    name = conn.execute("SELECT name FROM _dotdo_things WHERE rid = ?", (rid,)).fetchall()[0][0]
    db.things.search_index.index_text(rid, name, {}, new=False)
    conn.execute(
        "INSERT OR REPLACE INTO _dotdo_promoted(thing_id, type, namespace, hex, promoted_at) "
        "SELECT id, type, ?, ?, ? FROM _dotdo_things WHERE rid = ?",
        (target.namespace, target.id, time.time(), rid),
    )


def promoted(db: ActorDatabase, thing_id: str) -> tuple[str, str] | None:
    """Where the parent ``db`` moved ``thing_id`` to: (namespace, id), or None."""
    if not db.has(LIFECYCLE.name):
        return None
    rows = db.connection.execute("SELECT namespace, hex FROM _dotdo_promoted WHERE thing_id = ?", (thing_id,)).fetchall()
    return (rows[0][0], rows[0][1]) if rows else None


def pending(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The pending promotion mark in a database's ``meta()``, if any."""
    raw = meta.get("promotion")
    if not isinstance(raw, str):
        return None
    mark: dict[str, Any] = json.loads(raw)
    return mark if mark.get("state") == "pending" else None


def finish(db: ActorDatabase) -> None:
    """Step 3: the mark says done."""
    mark = pending(db.meta())
    if mark is None:
        return
    with db.connection:
        _mark(db.connection, {**mark, "state": "done"})


def abandon(db: ActorDatabase) -> None:
    """The parent kept the thing: remove the copy (``db`` was blank before it)."""
    conn = db.connection
    with conn:
        _wipe(db)
        _mark(conn, None)
