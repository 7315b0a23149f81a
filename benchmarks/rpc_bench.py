"""In-process RPC benchmark: calls through a ``Supervisor`` against a direct await.

dotdo: ``await sup.S.Counter(name).increment()`` on the built-in Counter example, from
trio tasks outside any actor: the stub encodes the arguments, the supervisor checks
them, finds the activation, waits at its turn gate, runs the turn (a KV read and a
committed write) and copies the result back, all through msgpack.

Baseline, in the same run: ``await counter.increment()`` on a plain object doing the
same apsw read and committed write (same pragmas, same table, msgpack values) with no
actor layer, so the ratio is what the layer costs. dotdo yields to the scheduler once
per call by design; the ``bare+yield`` column adds one ``trio.lowlevel.checkpoint()``
per bare call, to tell scheduling from the rest.

Figures: sequential calls to one actor (p50/p99 microseconds per call), and
``--callers`` concurrent trio tasks calling over ``--callers`` actors (one each) and
over one actor (calls per second). Runs on one core (pinned when it can).

    python benchmarks/rpc_bench.py [--calls 20000] [--callers 100] [--durability normal]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import apsw
import msgpack
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.examples import Counter  # noqa: E402
from runtime.supervisor import Supervisor  # noqa: E402
from storage import Durability, StorageOptions  # noqa: E402

_GET = "SELECT v FROM kv WHERE k = ?"
_PUT = "INSERT OR REPLACE INTO kv(k, v) VALUES (?, ?)"
_KEY = b"value"


class BareCounter:
    """The Counter's increment on a plain apsw connection: no turns, no copies."""

    def __init__(self, path: Path, sync: str, yields: bool = False) -> None:
        self.conn = apsw.Connection(str(path), statementcachesize=24)
        self.yields = yields
        for _ in self.conn.execute(
            f"PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA synchronous={sync};"
            "PRAGMA cache_size=-256;"
            "CREATE TABLE IF NOT EXISTS kv(k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;"
        ):
            pass

    async def increment(self, by: int = 1) -> int:
        if self.yields:
            await trio.lowlevel.checkpoint()
        conn = self.conn
        row = conn.execute(_GET, (_KEY,)).fetchone()
        value = (0 if row is None else msgpack.unpackb(row[0])) + by
        conn.execute("BEGIN")
        conn.execute(_PUT, (_KEY, msgpack.packb(value)))
        conn.execute("COMMIT")
        return value

    def read(self) -> int:
        row = self.conn.execute(_GET, (_KEY,)).fetchone()
        return 0 if row is None else int(msgpack.unpackb(row[0]))


Call = Callable[[], Awaitable[Any]]


async def sequential(call: Call, n: int) -> list[float]:
    """Per-call times in microseconds, ``n`` calls one after another."""
    clock = time.perf_counter_ns
    times = [0.0] * n
    for i in range(n):
        t0 = clock()
        await call()
        times[i] = (clock() - t0) / 1e3
    return times


async def concurrent(calls: Sequence[Call], per_caller: int) -> float:
    """Calls per second with one trio task per entry of ``calls``, each calling
    ``per_caller`` times."""

    async def caller(call: Call) -> None:
        for _ in range(per_caller):
            await call()

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(caller, call)
    return len(calls) * per_caller / (time.perf_counter() - start)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace, root: Path) -> list[tuple[str, float, float, float]]:
    durability = Durability(args.durability)
    sync = "FULL" if durability is Durability.FULL else "NORMAL"
    callers = args.callers
    per_caller = max(1, args.calls // callers)
    rows: list[tuple[str, float, float, float]] = []
    (root / "bare").mkdir()
    bare_one = BareCounter(root / "bare" / "one.sqlite", sync)
    yield_one = BareCounter(root / "bare" / "one-y.sqlite", sync, yields=True)
    bare_many = [BareCounter(root / "bare" / f"{i}.sqlite", sync) for i in range(callers)]
    yield_many = [BareCounter(root / "bare" / f"{i}-y.sqlite", sync, yields=True) for i in range(callers)]
    async with Supervisor([Counter], root / "dotdo", storage=StorageOptions(durability=durability)) as sup:
        one = sup.S.Counter("one")
        many = [sup.S.Counter(f"c{i}") for i in range(callers)]

        def stub_call(stub: Any) -> Call:
            return lambda: stub.increment()

        # Activate and warm everything (statement caches, page caches).
        for call in [stub_call(one), *(stub_call(s) for s in many), bare_one.increment, yield_one.increment,
                     *(b.increment for b in bare_many), *(b.increment for b in yield_many)]:
            for _ in range(20):
                await call()

        gc.collect()
        for label, q in (("sequential p50 (us/call)", 0.5), ("sequential p99 (us/call)", 0.99)):
            rows.append((label, 0.0, 0.0, 0.0))
        seq: dict[str, list[float]] = {"dotdo": [], "bare": [], "yield": []}
        # Interleave short runs so a noisy neighbour hits all three alike.
        chunk = max(1, args.calls // 10)
        for _ in range(10):
            seq["dotdo"] += await sequential(stub_call(one), chunk)
            seq["bare"] += await sequential(bare_one.increment, chunk)
            seq["yield"] += await sequential(yield_one.increment, chunk)
        rows[0] = ("sequential p50 (us/call)", _pct(seq["dotdo"], 0.5), _pct(seq["bare"], 0.5), _pct(seq["yield"], 0.5))
        rows[1] = ("sequential p99 (us/call)", _pct(seq["dotdo"], 0.99), _pct(seq["bare"], 0.99), _pct(seq["yield"], 0.99))

        for label, mine, theirs, yielding in (
            (f"{callers} callers, {callers} actors (calls/s)", [stub_call(s) for s in many],
             [b.increment for b in bare_many], [b.increment for b in yield_many]),
            (f"{callers} callers, 1 actor (calls/s)", [stub_call(one)] * callers,
             [bare_one.increment] * callers, [yield_one.increment] * callers),
        ):
            best = {"dotdo": 0.0, "bare": 0.0, "yield": 0.0}
            for _ in range(args.repeat):
                best["dotdo"] = max(best["dotdo"], await concurrent(mine, per_caller))
                best["bare"] = max(best["bare"], await concurrent(theirs, per_caller))
                best["yield"] = max(best["yield"], await concurrent(yielding, per_caller))
            rows.append((label, best["dotdo"], best["bare"], best["yield"]))

        # Every call was applied once: the counters hold what was called.
        calls_one = 20 + args.calls // 10 * 10 + args.repeat * callers * per_caller
        got_one = await one.get()
        got_many = [await s.get() for s in many]
        want_many = 20 + args.repeat * per_caller
        if got_one != calls_one or any(v != want_many for v in got_many):
            raise SystemExit(f"counter mismatch: one={got_one} (want {calls_one}), many={set(got_many)} (want {want_many})")
        if bare_one.read() != calls_one:
            raise SystemExit("bare counter mismatch")
    for counter in [bare_one, yield_one, *bare_many, *yield_many]:
        counter.conn.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per figure (default 20000)")
    parser.add_argument("--callers", type=int, default=100, help="concurrent trio tasks (default 100)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per concurrent figure; the best is kept (default 3)")
    parser.add_argument("--durability", choices=["normal", "full"], default="normal")
    parser.add_argument("--dir", help="where to create databases (default: a temporary folder)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = trio.run(run, args, Path(tmp))
    print(f"# RPC benchmark: in-process, durability={args.durability}, one core, {time.strftime('%Y-%m-%d')}")
    print(f"{'figure':36} {'dotdo':>10} {'bare':>10} {'ratio':>7} {'bare+yield':>11} {'ratio':>7}")
    for label, mine, theirs, yielding in rows:
        print(f"{label:36} {mine:10,.1f} {theirs:10,.1f} {mine / theirs:7.2f} {yielding:11,.1f} {mine / yielding:7.2f}")


if __name__ == "__main__":
    main()
