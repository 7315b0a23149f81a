"""Storage benchmark: committed KV writes, reads, SQL updates, and activation cost.

Each figure is measured for dotdo's storage layer and, in the same run, for a bare apsw
baseline doing the same SQL on a connection with the same pragmas, so the ratio shows
what the layer costs. Runs on one core (the process pins itself when it can).

    python benchmarks/storage_bench.py [--ops 50000] [--dbs 10000] [--durability normal]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import apsw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dotdo.storage.address import Address  # noqa: E402
from dotdo.storage.database import ActorDatabase  # noqa: E402
from dotdo.storage.options import Durability, StorageOptions  # noqa: E402


def _bare(path: Path, sync: str) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    for _ in conn.execute(
        f"PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA synchronous={sync};"
        "CREATE TABLE IF NOT EXISTS kv(k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;"
        "CREATE TABLE IF NOT EXISTS counter(id INTEGER PRIMARY KEY, n INTEGER);"
        "INSERT OR IGNORE INTO counter VALUES (1, 0);"
    ):
        pass
    return conn


def _rate(n: int, fn: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def hot(ops: int, durability: Durability, root: Path) -> list[tuple[str, float, float]]:
    """Per-second rates on one hot database: (name, dotdo, bare)."""
    sync = "FULL" if durability is Durability.FULL else "NORMAL"
    db = ActorDatabase.open(root / "hot", Address("Bench", "hot"), StorageOptions(durability=durability))
    db.sql.exec("CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER); INSERT INTO counter VALUES (1, 0)")
    bare = _bare(root / "bare.sqlite", sync)
    kv, sql = db.kv, db.sql
    keys = [f"key{i % 1000}" for i in range(ops)]
    raw_keys = [k.encode() for k in keys]
    payload = {"name": "alice", "visits": 12, "tags": ["a", "b"]}
    import msgpack

    raw_payload = msgpack.packb(payload)

    def dotdo_write(i: int) -> None:
        with db.turn():
            kv.put(keys[i], payload)

    def bare_write(i: int) -> None:
        bare.execute("BEGIN")
        bare.execute("INSERT OR REPLACE INTO kv(k, v) VALUES (?, ?)", (raw_keys[i], raw_payload))
        bare.execute("COMMIT")

    def dotdo_read(i: int) -> object:
        return kv.get(keys[i])

    def bare_read(i: int) -> object:
        row = bare.execute("SELECT v FROM kv WHERE k = ?", (raw_keys[i],)).fetchone()
        return msgpack.unpackb(row[0])

    def dotdo_update(i: int) -> None:
        with db.turn():
            sql.exec("UPDATE counter SET n = n + 1 WHERE id = 1")

    def bare_update(i: int) -> None:
        bare.execute("BEGIN")
        bare.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
        bare.execute("COMMIT")

    results = []
    for name, mine, theirs in [
        ("committed KV writes/s", dotdo_write, bare_write),
        ("KV reads/s", dotdo_read, bare_read),
        ("committed SQL updates/s", dotdo_update, bare_update),
    ]:
        _rate(min(ops, 2000), mine)
        _rate(min(ops, 2000), theirs)
        results.append((name, _rate(ops, mine), _rate(ops, theirs)))
    db.close()
    bare.close()
    return results


def activation(count: int, root: Path) -> dict[str, list[float]]:
    """Open an existing database and read one key, over ``count`` databases."""
    addresses = [Address("Bench", f"actor-{i}") for i in range(count)]
    bare_paths = [root / "bare" / f"{i}.sqlite" for i in range(count)]
    (root / "bare").mkdir()
    started = time.perf_counter()
    for i, address in enumerate(addresses):
        with ActorDatabase.open(root / "many", address) as db:
            db.kv.put("state", {"n": i})
        conn = _bare(bare_paths[i], "NORMAL")
        conn.execute("INSERT INTO kv VALUES (?, ?)", (b"state", b"x"))
        conn.close()
        if i and i % 2000 == 0:
            print(f"  created {i}/{count} databases ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    times: dict[str, list[float]] = {"dotdo open+read": [], "dotdo close": [], "bare open+read": [], "bare close": []}
    for i, address in enumerate(addresses):
        t0 = time.perf_counter()
        db = ActorDatabase.open(root / "many", address)
        db.kv.get("state")
        t1 = time.perf_counter()
        db.close()
        t2 = time.perf_counter()
        conn = apsw.Connection(str(bare_paths[i]), flags=apsw.SQLITE_OPEN_READWRITE)
        for _ in conn.execute("PRAGMA locking_mode=EXCLUSIVE; PRAGMA synchronous=NORMAL"):
            pass
        conn.execute("SELECT v FROM kv WHERE k = ?", (b"state",)).fetchall()
        t3 = time.perf_counter()
        conn.close()
        t4 = time.perf_counter()
        times["dotdo open+read"].append(t1 - t0)
        times["dotdo close"].append(t2 - t1)
        times["bare open+read"].append(t3 - t2)
        times["bare close"].append(t4 - t3)
    return times


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=50_000, help="operations per hot figure")
    parser.add_argument("--dbs", type=int, default=10_000, help="databases for the activation figure")
    parser.add_argument("--durability", choices=["normal", "full"], default="normal")
    parser.add_argument("--dir", help="where to create databases (default: a temporary folder)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    durability = Durability(args.durability)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        print(f"# storage benchmark: durability={durability.value}, one core, {time.strftime('%Y-%m-%d')}")
        print(f"{'figure':32} {'dotdo':>12} {'bare apsw':>12} {'ratio':>7}")
        for name, mine, theirs in hot(args.ops, durability, root):
            print(f"{name:32} {mine:12,.0f} {theirs:12,.0f} {mine / theirs:7.2f}")
        times = activation(args.dbs, root)
        for what in ("open+read", "close"):
            mine, theirs = times[f"dotdo {what}"], times[f"bare {what}"]
            for label, q in (("p50", 0.5), ("p99", 0.99)):
                a, b = _pct(mine, q), _pct(theirs, q)
                print(f"{what + ' ' + label + ' (us)':32} {a:12,.0f} {b:12,.0f} {a / b:7.2f}")
        mean = statistics.fmean(times["dotdo open+read"]) * 1e6
        print(f"{'open+read mean (us)':32} {mean:12,.0f}   over {args.dbs:,} databases")


if __name__ == "__main__":
    main()
