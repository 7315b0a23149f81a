"""Lifecycle benchmark: clone, compact and shard of one actor holding ``--sizes`` of data
(10 MB and 1 GB by default), through a real supervisor (``lifecycle.admin``: a system
turn on the actor, as the HTTP route and the CLI run it).

The actor's data is a user table ``rows(customer TEXT, payload BLOB)`` of 1 KiB rows
(shardable by ``customer``), plus a fifth of its rows deleted so compact has something
to give back. Each size's database is built once and cached under ``--cache`` (outside
the repository; 1 GB takes about a minute), then copied into a fresh data directory for
every run (the copy is setup, not measured).

Baselines, in the same run:

- clone: copying the database file with ``shutil.copyfile`` (no consistency, no
  lock: the floor for moving the bytes);
- compact: ``VACUUM`` by hand on a private apsw connection to a copy of the file;
- shard into ``--shards`` (4): reported with its ratio to one clone (each shard is a
  full copy, then the rows of other shards are deleted and the file vacuumed).

    python benchmarks/lifecycle_bench.py [--sizes 10,1000] [--shards 4] [--runs 3]
                                         [--cache /tmp/dotdo-lifecycle-bench]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import apsw
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dotdo import DO  # noqa: E402
from dotdo.runtime.core.ids import id_from_name  # noqa: E402
from dotdo.runtime.supervisor import Supervisor  # noqa: E402
from dotdo.storage.database import ActorDatabase  # noqa: E402

ROW = 1024
CUSTOMERS = 1000


class Data(DO):
    async def count(self) -> int:
        return int(self.sql.exec("SELECT count(*) AS n FROM rows").one()["n"])


ACTOR = id_from_name("Data", "big")


def build(cache: Path, megabytes: int) -> Path:
    """The cached data directory holding one actor of about ``megabytes`` MB."""
    root = cache / f"{megabytes}mb"
    path = ACTOR.address.path(root)
    if path.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rows = megabytes * 1024 * 1024 // ROW
    print(f"building a {megabytes} MB actor ({rows:,} rows) in {root} ...", file=sys.stderr, flush=True)
    with ActorDatabase.open(root, ACTOR.address, name="big") as db:
        conn = db.connection
        conn.execute("CREATE TABLE rows(id INTEGER PRIMARY KEY, customer TEXT NOT NULL, payload BLOB NOT NULL)")
        batch = 10_000
        for start in range(0, rows, batch):
            with conn:
                conn.executemany(
                    "INSERT INTO rows(customer, payload) VALUES (?, randomblob(?))",
                    ((f"c{(start + i) % CUSTOMERS}", ROW - 40) for i in range(min(batch, rows - start))),
                )
        with conn:
            conn.execute("DELETE FROM rows WHERE id % 5 = 0")
        conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    return root


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started


def fresh(root: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="dotdo-lifecycle-", dir=os.environ.get("TMPDIR")))
    shutil.copytree(root, target, dirs_exist_ok=True)
    return target


async def measure(root: Path, shards: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    source = ACTOR.address.path(root)
    size = source.stat().st_size
    figures["bytes"] = size

    work = fresh(root)
    try:
        async with Supervisor([Data], work, idle_timeout=3600) as sup:
            await sup.call(ACTOR, "count")  # active, like a serving actor
            figures["clone"] = await timed(lambda: sup.lifecycle.admin(ACTOR, "clone", new_id="copy", timeout=3600))
            figures["compact"] = await timed(lambda: sup.lifecycle.admin(ACTOR, "compact", retention=0, timeout=3600))
            figures["shard"] = await timed(
                lambda: sup.lifecycle.admin(ACTOR, "shard", n=shards, key="customer", timeout=3600)
            )
            figures["unshard"] = await timed(lambda: sup.lifecycle.admin(ACTOR, "shard", n=1, timeout=3600))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    work = fresh(root)
    try:
        copy = work / "copy.sqlite"
        started = time.perf_counter()
        shutil.copyfile(ACTOR.address.path(work), copy)
        figures["copyfile"] = time.perf_counter() - started
        conn = apsw.Connection(str(copy))
        started = time.perf_counter()
        for _ in conn.execute("VACUUM"):
            pass
        figures["vacuum"] = time.perf_counter() - started
        conn.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,1000", help="actor sizes in MB, comma-separated (default: 10,1000)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/dotdo-lifecycle-bench"))
    args = parser.parse_args()
    for megabytes in (int(s) for s in args.sizes.split(",")):
        root = build(args.cache, megabytes)
        runs = [trio.run(measure, root, args.shards) for _ in range(args.runs)]

        def median(key: str) -> float:
            return statistics.median(run[key] for run in runs)

        print(f"\n{megabytes} MB actor ({median('bytes') / 1e6:.1f} MB file), median of {args.runs} runs")
        print(f"  clone    {median('clone'):8.3f} s   file copy {median('copyfile'):.3f} s   ratio {median('clone') / median('copyfile'):.2f}x")
        print(f"  compact  {median('compact'):8.3f} s   VACUUM    {median('vacuum'):.3f} s   ratio {median('compact') / median('vacuum'):.2f}x")
        print(f"  shard {args.shards} {median('shard'):8.3f} s   = {median('shard') / median('clone'):.1f} clones")
        print(f"  unshard  {median('unshard'):8.3f} s")


if __name__ == "__main__":
    main()
