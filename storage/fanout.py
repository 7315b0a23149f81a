"""Merging the answers of several shards to one semantic-store query, so that a sharded
actor answers exactly as the unsharded one would: same order, same ties, same limits.

Each shard answers ``list`` with its first ``offset + limit`` things; the merge puts
them in a scratch in-memory table in creation order (which is the unsharded store's
tie-break: row ids grow with creation) and runs the same compiled ``ORDER BY`` over it.
Counts add up; search and nearest merge by score and distance.
"""

from __future__ import annotations

import json
from typing import Any

import apsw

from dotdo.storage.query import compile_query
from dotdo.storage.things_model import THING_COLUMNS, row_to_thing

_TABLE = """
CREATE TABLE _dotdo_things(
    rid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, type TEXT NOT NULL, name TEXT,
    data BLOB NOT NULL, meta BLOB NOT NULL, visibility TEXT NOT NULL, version INTEGER NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL
)
"""


def merge_list(parts: list[list[dict[str, Any]]], order_by: Any, limit: int, offset: int) -> list[dict[str, Any]]:
    """The things ``list(..., order_by, limit, offset)`` returns over the union of the
    shards' answers (each a ``Thing.as_dict`` list of at least ``offset + limit``)."""
    things = sorted((t for part in parts for t in part), key=lambda t: (t["created_at"], t["$id"]))
    conn = apsw.Connection(":memory:")
    try:
        conn.execute(_TABLE)
        conn.executemany(
            "INSERT INTO _dotdo_things(id, type, name, data, meta, visibility, version, created_at, updated_at) "
            "VALUES (?, ?, ?, jsonb(?), jsonb(?), ?, ?, ?, ?)",
            [
                (t["$id"], t["$type"], t["name"], json.dumps(t["data"]), json.dumps(t["meta"]), t["visibility"],
                 t["$version"], t["created_at"], t["updated_at"])
                for t in things
            ],
        )
        compiled = compile_query(None, order_by, frozenset())
        rows = conn.execute(
            f"SELECT {THING_COLUMNS} FROM _dotdo_things AS t WHERE {compiled.where} ORDER BY {compiled.order} LIMIT ? OFFSET ?",
            (*compiled.params, limit, offset),
        ).fetchall()
    finally:
        conn.close()
    return [row_to_thing(row).as_dict() for row in rows]


def merge_scored(parts: list[list[Any]], limit: int) -> list[Any]:
    """``[thing, score]`` answers of search (bm25: lower is better) or nearest (a
    distance), best first, ties in creation order."""
    pairs = [p for part in parts for p in part]
    pairs.sort(key=lambda p: (p[1], p[0]["created_at"], p[0]["$id"]))
    return pairs[:limit]
