"""Semantic stores benchmark: filtered ``list`` with and without a field index, full-text
search, and bulk ``create``, over one actor holding ``--things`` things (100,000).

Each figure is measured for dotdo's ``ThingStore`` and, in the same run, for a bare apsw
baseline: the same query written by hand on an equivalent plain table (same columns,
JSONB data, a type index, the same partial index when dotdo has one, the same FTS5
table), running the very SQL dotdo runs and decoding the JSON of the rows it returns, as
dotdo does. The ratio is what the store costs on top of its SQL (validation, compiling
the filter, finding the field's index, building ``Thing`` objects).

1. **list** ``Customer`` things, 100 at most: equality on ``city`` (500 matches of
   100,000) and a narrow range on ``score`` (about 100 matches); then the same after
   ``create_index`` on each field. Also ``count`` with the equality.
2. **search** one and two words drawn from the corpus vocabulary (each word is in
   about 600 things), the 10 best by bm25.
3. **bulk create**: ``--create`` things in turns of 1,000 (thing and text index entry,
   one commit per turn), against the same inserts by hand.

The generated data is deterministic (``--seed``) and the 100,000-thing databases are kept
under ``--cache`` (built once, about a minute; the field indexes are dropped again at
the end of each run). Runs on one core (the process pins itself when it can).

    python benchmarks/stores_bench.py [--things 100000] [--queries 300] [--create 20000]
                                      [--cache /tmp/dotdo-stores-bench] [--seed 6]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dotdo.storage.address import Address  # noqa: E402
from dotdo.storage.database import ActorDatabase  # noqa: E402
from dotdo.storage.search import document  # noqa: E402

ADDRESS = Address("Bench", "stores")
CITIES = [f"City{i:03d}" for i in range(200)]
BARE_SCHEMA = """
CREATE TABLE IF NOT EXISTS things(
    rid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, type TEXT NOT NULL, name TEXT,
    data BLOB NOT NULL, meta BLOB NOT NULL, visibility TEXT NOT NULL, version INTEGER NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS things_type ON things(type);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(name, body, content='', contentless_delete=1,
    tokenize='unicode61 remove_diacritics 2');
"""
BARE_INSERT = (
    "INSERT INTO things(id, type, name, data, meta, visibility, version, created_at, updated_at) "
    "VALUES (?, 'Customer', ?, jsonb(?), jsonb('{}'), 'private', 1, ?, ?) RETURNING rid"
)
BARE_COLUMNS = "t.id, t.type, t.name, json(t.data), json(t.meta), t.visibility, t.version, t.created_at, t.updated_at"


def vocabulary(rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words: set[str] = set()
    while len(words) < 2000:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(4, 9))))
    return sorted(words)


def generate(n: int, seed: int) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(id, name, data) of ``n`` customers, the same for the same seed."""
    rng = random.Random(seed)
    words = vocabulary(random.Random(seed + 1))
    for i in range(n):
        data = {
            "age": rng.randint(18, 90),
            "city": rng.choice(CITIES),
            "score": rng.random(),
            "email": f"user{i}@example.com",
            "address": {"street": f"{rng.randint(1, 200)} {rng.choice(words)} street", "zip": f"{rng.randint(10000, 99999)}"},
            "bio": " ".join(rng.choice(words) for _ in range(12)),
            "tags": rng.sample(["vip", "new", "churned", "trial", "partner"], 2),
        }
        yield f"c{i:07d}", f"{rng.choice(words).title()} {rng.choice(words).title()}", data


def bare_connection(path: Path) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    for _ in conn.execute("PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;" + BARE_SCHEMA):
        pass
    return conn


def fill(db: ActorDatabase, bare: apsw.Connection, n: int, seed: int, progress: bool) -> tuple[float, float]:
    """Create ``n`` things in both stores, 1,000 per turn; returns (dotdo, bare) things/s."""
    rows = list(generate(n, seed))
    store = db.things
    spent = [0.0, 0.0]
    for start in range(0, n, 1000):
        batch = rows[start : start + 1000]
        t0 = time.perf_counter()
        with db.turn():
            for thing_id, name, data in batch:
                store.create("Customer", data, id=thing_id, name=name)
        t1 = time.perf_counter()
        bare.execute("BEGIN")
        for thing_id, name, data in batch:
            now = time.time()
            rid = bare.execute(BARE_INSERT, (thing_id, name, json.dumps(data, separators=(",", ":")), now, now)).fetchall()[0][0]
            bare.execute("INSERT INTO fts(rowid, name, body) VALUES (?, ?, ?)", (rid, *document(name, data)))
        bare.execute("COMMIT")
        t2 = time.perf_counter()
        spent[0] += t1 - t0
        spent[1] += t2 - t1
        if progress and (start + 1000) % 20_000 == 0:
            print(f"  created {start + 1000:,}/{n:,} things in each store ({sum(spent):.0f} s)", flush=True)
    return n / spent[0], n / spent[1]


def open_cached(cache: Path, n: int, seed: int) -> tuple[ActorDatabase, apsw.Connection]:
    """The databases of ``n`` things for ``seed`` under ``cache``, built if missing."""
    folder = cache / f"things-{n}-seed{seed}"
    done = folder / "complete"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        print(f"building {n:,} things in {folder} (once; later runs reuse it)", flush=True)
        db = ActorDatabase.open(folder, ADDRESS)
        bare = bare_connection(folder / "bare.sqlite")
        fill(db, bare, n, seed, progress=True)
        db.close()
        bare.close()
        done.touch()
    db = ActorDatabase.open(folder, ADDRESS)
    bare = bare_connection(folder / "bare.sqlite")
    drop_indexes(db, bare)  # left over by an interrupted run
    return db, bare


def drop_indexes(db: ActorDatabase, bare: apsw.Connection) -> None:
    for field in ("city", "score"):
        db.things.drop_index("Customer", field)
        bare.execute(f"DROP INDEX IF EXISTS bare_{field}")


def create_indexes(db: ActorDatabase, bare: apsw.Connection) -> dict[str, float]:
    took = {}
    for field in ("city", "score"):
        t0 = time.perf_counter()
        db.things.create_index("Customer", field)
        took[field] = time.perf_counter() - t0
        bare.execute(
            f"CREATE INDEX bare_{field} ON things(type, json_extract(data, '$.{field}')) WHERE type = 'Customer'"
        )
    return took


def latencies(calls: list[Callable[[], object]]) -> list[float]:
    for call in calls[:10]:
        call()
    times = []
    for call in calls:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6


def bare_rows(conn: apsw.Connection, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    rows = conn.execute(sql, args).fetchall()
    return [(*row[:3], json.loads(row[3]), json.loads(row[4]), *row[5:]) for row in rows]


def query_figures(db: ActorDatabase, bare: apsw.Connection, queries: int, seed: int, indexed: bool) -> dict[str, tuple[list[float], list[float]]]:
    """{figure: (dotdo latencies, bare latencies)} of the list and count queries."""
    rng = random.Random(seed + 2)
    store = db.things
    cities = [rng.choice(CITIES) for _ in range(queries)]
    lows = [rng.random() * 0.999 for _ in range(queries)]
    order = "+t.rid" if indexed else "t.rid"  # what dotdo writes (see dotdo.storage.query)
    eq_sql = (
        f"SELECT {BARE_COLUMNS} FROM things AS t WHERE t.type = ? AND json_extract(t.data, '$.city') = ? "
        f"ORDER BY {order} LIMIT 100"
    )
    range_sql = (
        f"SELECT {BARE_COLUMNS} FROM things AS t WHERE t.type = ? AND json_extract(t.data, '$.score') >= ? "
        f"AND json_extract(t.data, '$.score') < ? ORDER BY {order} LIMIT 100"
    )
    count_sql = "SELECT count(*) FROM things AS t WHERE t.type = ? AND json_extract(t.data, '$.city') = ?"
    suffix = "index" if indexed else "no index"
    return {
        f"list city = ? ({suffix})": (
            latencies([lambda c=c: store.list("Customer", where={"city": c}, limit=100) for c in cities]),
            latencies([lambda c=c: bare_rows(bare, eq_sql, ("Customer", c)) for c in cities]),
        ),
        f"list score in [x, x+0.001) ({suffix})": (
            latencies([lambda x=x: store.list("Customer", where={"score": {"$gte": x, "$lt": x + 0.001}}, limit=100) for x in lows]),
            latencies([lambda x=x: bare_rows(bare, range_sql, ("Customer", x, x + 0.001)) for x in lows]),
        ),
        f"count city = ? ({suffix})": (
            latencies([lambda c=c: store.count("Customer", {"city": c}) for c in cities]),
            latencies([lambda c=c: bare.execute(count_sql, ("Customer", c)).fetchall() for c in cities]),
        ),
    }


def search_figures(db: ActorDatabase, bare: apsw.Connection, queries: int, seed: int) -> dict[str, tuple[list[float], list[float]]]:
    rng = random.Random(seed + 3)
    words = vocabulary(random.Random(seed + 1))
    ones = [rng.choice(words) for _ in range(queries)]
    twos = [f"{rng.choice(words)} {rng.choice(words)}" for _ in range(queries)]
    sql = (
        f"SELECT {BARE_COLUMNS}, bm25(fts, 2.0, 1.0) AS rank FROM fts JOIN things AS t ON t.rid = fts.rowid "
        "WHERE fts MATCH ? ORDER BY rank, t.rid LIMIT 10"
    )

    def quoted(text: str) -> str:
        return " ".join(f'"{w}"' for w in text.split())

    return {
        "search one word": (
            latencies([lambda w=w: db.things.search(w) for w in ones]),
            latencies([lambda w=w: bare_rows(bare, sql, (quoted(w),)) for w in ones]),
        ),
        "search two words (or)": (
            latencies([lambda w=w: db.things.search(w.replace(" ", " OR "), syntax="fts5") for w in twos]),
            latencies([lambda w=w: bare_rows(bare, sql, (w.replace(" ", " OR "),)) for w in twos]),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--things", type=int, default=100_000, help="things in the queried store")
    parser.add_argument("--queries", type=int, default=300, help="queries per figure")
    parser.add_argument("--create", type=int, default=20_000, help="things for the bulk-create figure")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "dotdo-stores-bench"))
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        except OSError:
            pass
    db, bare = open_cached(Path(args.cache), args.things, args.seed)
    figures: dict[str, tuple[list[float], list[float]]] = {}
    try:
        print(f"1. list and count, {args.queries} queries each, without then with field indexes", flush=True)
        figures.update(query_figures(db, bare, args.queries, args.seed, indexed=False))
        built = create_indexes(db, bare)
        figures.update(query_figures(db, bare, args.queries, args.seed, indexed=True))
        print("2. full-text search", flush=True)
        figures.update(search_figures(db, bare, args.queries, args.seed))
    finally:
        drop_indexes(db, bare)
        db.close()
        bare.close()
    print(f"3. bulk create, {args.create:,} things", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = ActorDatabase.open(Path(tmp), ADDRESS)
        fresh_bare = bare_connection(Path(tmp) / "bare.sqlite")
        create_rate, bare_rate = fill(fresh, fresh_bare, args.create, args.seed + 9, progress=False)
        fresh.close()
        fresh_bare.close()

    print()
    print(f"# stores benchmark: {args.things:,} things, {args.queries} queries per figure, one core, {time.strftime('%Y-%m-%d')}")
    print(f"{'figure (us)':42} {'dotdo p50':>10} {'dotdo p99':>10} {'bare p50':>10} {'bare p99':>10} {'ratio':>6}")
    for name, (mine, theirs) in figures.items():
        a50, a99, b50, b99 = pct(mine, 0.5), pct(mine, 0.99), pct(theirs, 0.5), pct(theirs, 0.99)
        print(f"{name:42} {a50:10,.0f} {a99:10,.0f} {b50:10,.0f} {b99:10,.0f} {a50 / b50:6.2f}")
    print()
    print(f"{'index speed-up (p50 without / with)':42} {'dotdo':>10} {'bare':>10}")
    for label in ("list city = ?", "list score in [x, x+0.001)", "count city = ?"):
        without, with_ = figures[f"{label} (no index)"], figures[f"{label} (index)"]
        mine = pct(without[0], 0.5) / pct(with_[0], 0.5)
        theirs = pct(without[1], 0.5) / pct(with_[1], 0.5)
        print(f"{label:42} {mine:9.0f}x {theirs:9.0f}x")
    for field, seconds in built.items():
        print(f"{'create_index ' + field + ' (ms)':42} {seconds * 1e3:10,.0f}")
    print()
    print(f"{'bulk create (things/s, 1,000 per turn)':42} {create_rate:10,.0f} {bare_rate:10,.0f} {create_rate / bare_rate:6.2f}")


if __name__ == "__main__":
    main()
