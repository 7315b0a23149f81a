"""History benchmark: what point-in-time history (storage/history.py) costs.

One process, one core (the process pins itself when it can). Each figure is measured
with history on and, in the same run, off (``StorageOptions(history=0)``), so the ratio
is what history costs:

1. **Write turns.** One KV put and its commit per turn, on one hot actor of ``--keys``
   keys (1,000): turns per second. On and off run in alternating rounds of ``--round``
   turns (4,000: several checkpoints each), so the machine's noise falls on both alike;
   the figure is over all rounds (the median round ratio too). Also the archive bytes
   per commit, and the hook's cost per commit split into its parts (timed in a separate
   pass, which the timing itself slows a little).
2. **File descriptors** an open actor holds, measured on ``--actors`` (200) open actors;
   and what keeping the archive's two files open would save per copy (an open and a
   close each, timed).
3. **Activation.** Open and close of an existing actor, and creation of a new one.
4. **Restore under a steady load.** One actor takes ``--rate`` commits per simulated
   second (a KV put of a ~200-byte value among ``--keys`` keys) for ``--hours``
   simulated hours (a fake clock); then it is restored to its state one hour back and
   back again (the undo), ``--restores`` times: time per restore. And what the archive
   holds on disk for that load: bytes per simulated hour (what retention costs).

    python benchmarks/history_bench.py [--turns 40000] [--round 4000] [--keys 1000]
                                       [--actors 200] [--rate 5] [--hours 2]
                                       [--restores 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dotdo.storage.address import Address  # noqa: E402
from dotdo.storage.database import ActorDatabase  # noqa: E402
from dotdo.storage.options import StorageOptions  # noqa: E402
from dotdo.storage import history, history_log  # noqa: E402

PAYLOAD = {"name": "alice", "visits": 12, "tags": ["a", "b"]}
ON = StorageOptions(history=7 * 86400.0)
OFF = StorageOptions(history=0)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def archive_bytes(db: ActorDatabase) -> int:
    return sum(p.stat().st_size for p in history_log.history_dir(db.path).iterdir())


def turns(root: Path, total: int, per_round: int, keys: int) -> dict[str, Any]:
    """Alternating rounds of write turns on two actors, one with history and one without."""
    dbs = {
        "on": ActorDatabase.open(root / "turns", Address("Bench", "on"), ON),
        "off": ActorDatabase.open(root / "turns", Address("Bench", "off"), OFF),
    }
    names = [f"key{i % keys}" for i in range(per_round)]
    elapsed: dict[str, float] = defaultdict(float)
    ratios = []

    def run(db: ActorDatabase) -> float:
        kv = db.kv
        start = time.perf_counter()
        for name in names:
            with db.turn():
                kv.put(name, PAYLOAD)
        return time.perf_counter() - start

    for db in dbs.values():  # warm: every key exists, the WAL has cycled once
        run(db)
    archived_before = archive_bytes(dbs["on"])
    rounds = max(1, total // per_round)
    for i in range(rounds):
        order = ("on", "off") if i % 2 else ("off", "on")
        took = {mode: run(dbs[mode]) for mode in order}
        for mode, seconds in took.items():
            elapsed[mode] += seconds
        ratios.append(took["off"] / took["on"])
    per_commit = (archive_bytes(dbs["on"]) - archived_before) / (rounds * per_round)
    info = dbs["on"].history.info()
    for db in dbs.values():
        db.close()
    return {
        "on": rounds * per_round / elapsed["on"],
        "off": rounds * per_round / elapsed["off"],
        "median_ratio": statistics.median(ratios),
        "bytes_per_commit": per_commit,
        "generations": info.generations,
    }


@contextmanager
def timed_parts(parts: dict[str, float]) -> Iterator[None]:
    """Time History's archiving steps (patched in for one pass, then restored)."""
    names = ("_on_commit", "_flush", "_append_frames", "_write", "_checkpoint", "_start")
    saved = {name: getattr(history.History, name) for name in names}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(self, *args, **kwargs)
            finally:
                parts[name] += time.perf_counter() - start

        return timed

    for name, fn in saved.items():
        setattr(history.History, name, wrap(name, fn))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(history.History, name, fn)


def hook_parts(root: Path, total: int, keys: int) -> dict[str, float]:
    """Microseconds per commit in each archiving step (nested: a step includes those it calls)."""
    parts: dict[str, float] = defaultdict(float)
    with timed_parts(parts):
        db = ActorDatabase.open(root / "parts", Address("Bench", "parts"), ON)
        kv = db.kv
        for i in range(total):
            with db.turn():
                kv.put(f"key{i % keys}", PAYLOAD)
        db.close()
    return {name: seconds / total * 1e6 for name, seconds in parts.items()}


def descriptors(root: Path, count: int) -> dict[str, float]:
    """Descriptors held per open actor, and the cost of an open+close pair."""
    result = {}
    for mode, options in (("on", ON), ("off", OFF)):
        before = len(os.listdir("/proc/self/fd"))
        dbs = [ActorDatabase.open(root / "fds", Address("Bench", f"{mode}{i}"), options) for i in range(count)]
        for i, db in enumerate(dbs):
            db.kv.put("k", i)
        result[mode] = (len(os.listdir("/proc/self/fd")) - before) / count
        for db in dbs:
            db.close()
    probe = ActorDatabase.open(root / "fds", Address("Bench", "on0"), ON)
    log = max(history_log.history_dir(probe.path).glob("*.log"))
    probe.close()
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        os.close(os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))
    result["open_close_us"] = (time.perf_counter() - start) / n * 1e6
    return result


def activation(root: Path, count: int) -> dict[str, float]:
    """Median microseconds: create (open a new actor, one put, close), reopen+close."""
    result = {}
    for mode, options in (("on", ON), ("off", OFF)):
        created, reopened = [], []
        addresses = [Address("Bench", f"act-{mode}-{i}") for i in range(count)]
        for address in addresses:
            start = time.perf_counter()
            with ActorDatabase.open(root / "act", address, options) as db:
                db.kv.put("state", 1)
            created.append(time.perf_counter() - start)
        for address in addresses:
            start = time.perf_counter()
            ActorDatabase.open(root / "act", address, options).close()
            reopened.append(time.perf_counter() - start)
        result[f"create_{mode}"] = statistics.median(created) * 1e6
        result[f"reopen_{mode}"] = statistics.median(reopened) * 1e6
    return result


def restore_under_load(root: Path, rate: float, hours: float, keys: int, restores: int) -> dict[str, float]:
    """Seconds to restore one hour back after a steady simulated load; archive size."""
    clock = Clock()
    db = ActorDatabase.open(root / "load", Address("Bench", "load"), StorageOptions(clock=clock, history=7 * 86400.0))
    kv = db.kv
    value = "v" * 200
    commits = int(rate * hours * 3600)
    step = 1.0 / rate
    start = time.perf_counter()
    for i in range(commits):
        with db.turn():
            kv.put(f"key{(i * 7919) % keys}", {"n": i, "v": value})
        clock.now += step
    load_seconds = time.perf_counter() - start
    times = []
    target = db.history.bookmark_at(clock.now - 3600)
    for _ in range(restores):
        start = time.perf_counter()
        undo = db.history.restore(target)
        times.append(time.perf_counter() - start)
        clock.now += 1
        db.history.restore(undo)
        clock.now += 1
    info = db.history.info()
    db_bytes = db.stats().page_count * db.stats().page_size
    db.close()
    return {
        "commits": commits,
        "load_rate": commits / load_seconds,
        "restore_ms": statistics.median(times) * 1e3,
        "restore_max_ms": max(times) * 1e3,
        "disk_per_hour": info.disk_bytes / hours,
        "disk": info.disk_bytes,
        "db_bytes": db_bytes,
        "generations": info.generations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=40_000, help="write turns per mode")
    parser.add_argument("--round", type=int, default=4_000, help="turns per alternating round")
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--actors", type=int, default=200, help="open actors for the descriptor count")
    parser.add_argument("--rate", type=float, default=5.0, help="simulated commits per second (restore)")
    parser.add_argument("--hours", type=float, default=2.0, help="simulated hours of load (restore)")
    parser.add_argument("--restores", type=int, default=5)
    parser.add_argument("--dir", help="where to create databases (default: a temporary folder)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        print(f"# history benchmark: one core, {time.strftime('%Y-%m-%d')}, durability normal")
        t = turns(root, args.turns, args.round, args.keys)
        parts = hook_parts(root, min(args.turns, 20_000), args.keys)
        fds = descriptors(root, args.actors)
        act = activation(root, 500)
        load = restore_under_load(root, args.rate, args.hours, args.keys, args.restores)
    print(f"{'figure':44} {'history on':>12} {'off':>12} {'ratio':>7}")
    print(f"{'write turns/s (1 KV put + commit)':44} {t['on']:12,.0f} {t['off']:12,.0f} {t['on'] / t['off']:7.2f}")
    print(f"{'  median of the round ratios':44} {'':12} {'':12} {t['median_ratio']:7.2f}")
    print(f"{'archive bytes per commit':44} {t['bytes_per_commit']:12,.0f}")
    print(f"{'descriptors per open actor':44} {fds['on']:12.2f} {fds['off']:12.2f}")
    print(f"{'open+close of a file (us; two per copy)':44} {fds['open_close_us']:12.2f}")
    for what in ("create", "reopen"):
        on, off = act[f"{what}_on"], act[f"{what}_off"]
        print(f"{what + ' actor, median (us)':44} {on:12,.0f} {off:12,.0f} {on / off:7.2f}")
    print("hook cost per commit (us; a step includes those below it):")
    for name in ("_on_commit", "_flush", "_append_frames", "_write", "_checkpoint", "_start"):
        print(f"  {name:42} {parts.get(name, 0.0):12.2f}")
    hours = args.hours
    print(f"steady load: {load['commits']:,} commits over {hours:g} simulated hours ({args.rate:g}/s), "
          f"database {load['db_bytes'] / 1e6:.2f} MB")  # fmt: skip
    print(f"{'  write turns/s during the load':44} {load['load_rate']:12,.0f}")
    print(f"{'  restore 1 hour back, median (ms)':44} {load['restore_ms']:12.1f}")
    print(f"{'  restore 1 hour back, max (ms)':44} {load['restore_max_ms']:12.1f}")
    print(f"{'  archive on disk (MB)':44} {load['disk'] / 1e6:12.1f}   {load['generations']} generations")
    print(f"{'  archive per simulated hour (MB)':44} {load['disk_per_hour'] / 1e6:12.1f}")
    print(f"{'  retention of 7 days at this load (GB)':44} {load['disk_per_hour'] * 24 * 7 / 1e9:12.1f}")


if __name__ == "__main__":
    main()
