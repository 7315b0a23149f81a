"""RPC benchmark: in-process calls, calls over the TCP transport, and HTTP with workers.

Sections (``--sections``, default all three):

``inproc``: calls through a ``Supervisor`` against a direct await.

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

With ``--vs DIR``, the section measures the code of this checkout and of the checkout
DIR (e.g. the code before a change) side by side: ``--rounds`` times each, alternating,
each time in a subprocess that runs this script with ``--inproc-worker`` and the code of
one checkout (see ``benchmarks/checkouts.py``), in either layout (``dotdo.runtime``,
``dotdo.actors`` and ``dotdo.storage``, or before issue 18 top-level ``runtime``,
``actors`` and ``storage``). Each run has its bare baselines; printed are each
checkout's table (medians over the rounds), then per figure dotdo's and the bare
counter's medians from both and their ratio this/DIR (the bare ratio is the same code
twice: how far the machine's noise alone moves a figure).

``tcp``: ``dotdo serve --workers 1`` in a subprocess on one core, this process as the
client on the other, over loopback: sequential calls (``get``, a read, and
``increment``, a committed write) p50/p99, and 64 trio tasks calling over 64 actors on
one connection (calls/s). Baseline in the same run: ``benchmarks/bare_echo.py``, a trio
+ msgpack echo server with the same framing: sequential round trips, and a window of 64
frames kept in flight by one task (messages/s; no per-call task, actor or storage).

``workers``: ``http_bench.py --compare workers`` (HTTP with ``--workers 2`` against
``--workers 1``, both scenarios) with ``--http-duration`` seconds per round.

    python benchmarks/rpc_bench.py [--sections inproc,tcp,workers] [--calls 20000]
        [--callers 100] [--durability normal] [--http-duration 10]
        [--vs /path/to/other/checkout] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import apsw
import msgpack
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import checkouts  # noqa: E402

ROOT = checkouts.ROOT

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
Rows = list[tuple[str, float, float, float]]
"""The in-process figures: (figure, dotdo, bare, bare+yield) per row."""


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


def _layers(tree: Path) -> tuple[Any, Any, Any, Any]:
    """The Supervisor, the Counter example, Durability and StorageOptions, from the
    modules where ``tree`` defines them; stops unless they are ``tree``'s."""
    prefix = "dotdo." if checkouts.supervisor_module(tree).startswith("dotdo.") else ""
    supervisor = importlib.import_module(f"{prefix}runtime.supervisor")
    examples = importlib.import_module(f"{prefix}actors.examples")
    storage = importlib.import_module(f"{prefix}storage.options")
    for module in (supervisor, examples, storage):
        if not Path(module.__file__ or "").resolve().is_relative_to(tree.resolve()):
            raise SystemExit(f"{module.__name__} is imported from {module.__file__}, not from {tree}")
    return supervisor.Supervisor, examples.Counter, storage.Durability, storage.StorageOptions


async def run(args: argparse.Namespace, root: Path, tree: Path = ROOT) -> Rows:
    """The in-process figures of ``tree``'s code, with databases under ``root``."""
    Supervisor, Counter, Durability, StorageOptions = _layers(tree)
    durability = Durability(args.durability)
    sync = "FULL" if durability is Durability.FULL else "NORMAL"
    callers = args.callers
    per_caller = max(1, args.calls // callers)
    rows: Rows = []
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


def _print_inproc(rows: Rows) -> None:
    print(f"{'figure':36} {'dotdo':>10} {'bare':>10} {'ratio':>7} {'bare+yield':>11} {'ratio':>7}")
    for label, mine, theirs, yielding in rows:
        print(f"{label:36} {mine:10,.1f} {theirs:10,.1f} {mine / theirs:7.2f} {yielding:11,.1f} {mine / yielding:7.2f}")


def _worker_run(args: argparse.Namespace, tree: Path) -> Rows:
    """One run of the in-process section in a subprocess with ``tree``'s code."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--inproc-worker", str(tree), "--calls", str(args.calls),
            "--callers", str(args.callers), "--repeat", str(args.repeat), "--durability", args.durability]
    if args.dir:
        argv += ["--dir", str(Path(args.dir).resolve())]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tree, env=checkouts.env(tree))
    if done.returncode != 0:
        raise SystemExit(f"the in-process run of {tree} failed:\n{done.stderr}")
    return [(label, *figures) for label, *figures in json.loads(done.stdout.splitlines()[-1])]


def _medians(runs: list[Rows]) -> Rows:
    """Per figure, the median of each column over ``runs``."""
    return [(rows[0][0], *(statistics.median(column) for column in zip(*(row[1:] for row in rows))))
            for rows in zip(*runs)]


def inproc_vs(args: argparse.Namespace, date: str) -> None:
    """``--vs``: the in-process section of this checkout and of DIR, alternating."""
    trees = {"this": ROOT, "vs": args.vs.resolve()}
    runs: dict[str, list[Rows]] = {name: [] for name in trees}
    for round_ in range(args.rounds):
        for name in trees if round_ % 2 == 0 else reversed(trees):
            rows = _worker_run(args, trees[name])
            runs[name].append(rows)
            print(f"  round {round_ + 1}: {name:4} " + "  ".join(f"{row[1]:,.1f}" for row in rows), file=sys.stderr, flush=True)
    medians = {name: _medians(runs[name]) for name in trees}
    for name, tree in trees.items():
        print(f"# RPC benchmark: in-process, durability={args.durability}, one core, {date}, {tree} "
              f"(medians of {args.rounds} runs, alternating with the other checkout)")
        _print_inproc(medians[name])
        print()
    print(f"# this checkout ({ROOT}) against {trees['vs']}: medians, ratio this/vs "
          "(us/call: lower is better; calls/s: higher)")
    print(f"{'figure':36} {'this':>10} {'vs':>10} {'ratio':>7} {'bare this':>10} {'bare vs':>10} {'ratio':>7}")
    for mine, theirs in zip(medians["this"], medians["vs"]):
        print(f"{mine[0]:36} {mine[1]:10,.1f} {theirs[1]:10,.1f} {mine[1] / theirs[1]:7.2f} "
              f"{mine[2]:10,.1f} {theirs[2]:10,.1f} {mine[2] / theirs[2]:7.2f}")


# -- over TCP ---------------------------------------------------------------------------

INFLIGHT = 64


def _spawn(argv: list[str], cpu: int | None, scratch: Path, name: str) -> tuple[subprocess.Popen[bytes], str, int]:
    """Start a server printing ``  rpc:  tcp://HOST:PORT``; return it and its address."""
    log = open(scratch / f"{name}.log", "wb")  # noqa: SIM115 - kept open for the process
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, cwd=ROOT, env=checkouts.env(ROOT))
    if cpu is not None:
        os.sched_setaffinity(proc.pid, {cpu})
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode()
        if "rpc:  tcp://" in line:
            host, port = line.split("tcp://", 1)[1].split()[0].rsplit(":", 1)
            return proc, host, int(port)
    proc.kill()
    raise SystemExit(f"{name} did not start: {(scratch / f'{name}.log').read_text()}")


async def _bare_sequential(host: str, port: int, n: int) -> list[float]:
    from dotdo.runtime.transport.wire import HEADER, FrameDecoder

    stream = await trio.open_tcp_stream(host, port)
    decoder = FrameDecoder()
    payload = msgpack.packb([[], {}])
    times = []
    async with stream:
        for i in range(n):
            t0 = time.perf_counter_ns()
            body = msgpack.packb([i, payload])
            await stream.send_all(HEADER.pack(len(body)) + body)
            while not decoder.feed(await stream.receive_some(65536)):
                pass
            times.append((time.perf_counter_ns() - t0) / 1e3)
    return times


async def _bare_window(host: str, port: int, n: int, window: int) -> float:
    """Messages/s with ``window`` frames kept in flight by one task."""
    from dotdo.runtime.transport.wire import HEADER, FrameDecoder

    stream = await trio.open_tcp_stream(host, port)
    decoder = FrameDecoder()
    payload = msgpack.packb([[], {}])

    def frame(i: int) -> bytes:
        body = msgpack.packb([i, payload])
        return HEADER.pack(len(body)) + body

    async with stream:
        start = time.perf_counter()
        await stream.send_all(b"".join(frame(i) for i in range(window)))
        sent, received = window, 0
        while received < n:
            got = decoder.feed(await stream.receive_some(65536))
            received += len(got)
            more = min(len(got), n - sent)
            if more > 0:
                await stream.send_all(b"".join(frame(sent + i) for i in range(more)))
                sent += more
        return n / (time.perf_counter() - start)


async def _dotdo_concurrent(S: Any, method: str, per_task: int) -> float:
    """Calls/s with INFLIGHT tasks on one connection, one actor each."""
    return await concurrent([getattr(S.Counter(f"c{i}"), method) for i in range(INFLIGHT)], per_task)


async def run_tcp(args: argparse.Namespace, scratch: Path, server_cpu: int | None) -> list[tuple[str, float, float]]:
    from dotdo.client import connect

    dotdo, d_host, d_port = _spawn(
        [sys.executable, "-m", "dotdo", "serve", "--workers", "1", "--port", "0",
         "--data", str(scratch / "tcp-data"), "--durability", args.durability],
        server_cpu, scratch, "dotdo",
    )
    bare, b_host, b_port = _spawn([sys.executable, str(ROOT / "benchmarks" / "bare_echo.py")], server_cpu, scratch, "bare")
    rows: list[tuple[str, float, float]] = []
    try:
        n = args.calls
        per_task = max(1, n // INFLIGHT)
        async with connect(f"tcp://{d_host}:{d_port}") as S:
            one = S.Counter("one")
            for _ in range(200):
                await one.increment()
            await _dotdo_concurrent(S, "increment", 20)  # open and warm the 64 actors
            seq: dict[str, list[float]] = {"get": [], "increment": [], "bare": []}
            chunk = max(1, n // 10)
            for _ in range(10):  # interleaved, so a noisy neighbour hits all alike
                for method in ("get", "increment"):
                    call = getattr(one, method)
                    for _ in range(chunk):
                        t0 = time.perf_counter_ns()
                        await call()
                        seq[method].append((time.perf_counter_ns() - t0) / 1e3)
                seq["bare"] += await _bare_sequential(b_host, b_port, chunk)
            for method in ("get", "increment"):
                rows.append((f"sequential {method} p50 (us)", _pct(seq[method], 0.5), _pct(seq["bare"], 0.5)))
                rows.append((f"sequential {method} p99 (us)", _pct(seq[method], 0.99), _pct(seq["bare"], 0.99)))
            best = {"get": 0.0, "increment": 0.0, "bare": 0.0}
            for _ in range(args.repeat):
                for method in ("get", "increment"):
                    best[method] = max(best[method], await _dotdo_concurrent(S, method, per_task))
                best["bare"] = max(best["bare"], await _bare_window(b_host, b_port, INFLIGHT * per_task, INFLIGHT))
            for method in ("get", "increment"):
                rows.append((f"{INFLIGHT} in flight, {method} (calls/s)", best[method], best["bare"]))
            total = await one.get()
            if total != 200 + chunk * 10:
                raise SystemExit(f"counter mismatch over TCP: {total}")
    finally:
        for proc in (dotdo, bare):
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="inproc,tcp,workers", help="comma-separated: inproc, tcp, workers (default all)")
    parser.add_argument("--http-duration", type=float, default=10.0, help="seconds per round of the workers section (default 10)")
    parser.add_argument("--calls", type=int, default=20_000, help="calls per figure (default 20000)")
    parser.add_argument("--callers", type=int, default=100, help="concurrent trio tasks (default 100)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per concurrent figure; the best is kept (default 3)")
    parser.add_argument("--durability", choices=["normal", "full"], default="normal")
    parser.add_argument("--dir", help="where to create databases (default: a temporary folder)")
    parser.add_argument("--vs", type=Path, metavar="DIR",
                        help="inproc: measure this checkout's code and DIR's side by side, alternating, each run in a "
                        "subprocess (e.g. DIR: a checkout of the code before a change)")
    parser.add_argument("--rounds", type=int, default=3, help="with --vs: runs of each checkout (default 3)")
    parser.add_argument("--inproc-worker", type=Path, metavar="DIR",
                        help="what --vs runs in each subprocess: the inproc section alone, with the code of DIR "
                        "(which the subprocess's environment selects: benchmarks/checkouts.py); prints its figures "
                        "as one JSON line")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else []
    if args.inproc_worker is not None:
        if cores:
            os.sched_setaffinity(0, {cores[-1]})
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            print(json.dumps(trio.run(run, args, Path(tmp), args.inproc_worker)))
        return
    checkouts.install(ROOT)
    sections = [part.strip() for part in args.sections.split(",") if part.strip()]
    unknown = set(sections) - {"inproc", "tcp", "workers"}
    if unknown:
        raise SystemExit(f"unknown sections: {', '.join(sorted(unknown))}")
    date = time.strftime("%Y-%m-%d")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if "inproc" in sections and args.vs is not None:
            for tree in (ROOT, args.vs):
                checkouts.verify(tree)
            inproc_vs(args, date)
        elif "inproc" in sections:
            if cores:
                os.sched_setaffinity(0, {cores[-1]})
            rows = trio.run(run, args, Path(tmp))
            print(f"# RPC benchmark: in-process, durability={args.durability}, one core, {date}")
            _print_inproc(rows)
        if "tcp" in sections:
            server_cpu = cores[0] if len(cores) >= 2 else None
            if len(cores) >= 2:
                os.sched_setaffinity(0, {cores[-1]})
            tcp_rows = trio.run(run_tcp, args, Path(tmp), server_cpu)
            placement = "server and client on separate cores" if server_cpu is not None else "unpinned"
            print(f"\n# RPC benchmark: TCP over loopback, one connection, durability={args.durability}, {placement}, {date}")
            print(f"{'figure':36} {'dotdo':>10} {'bare echo':>10} {'ratio':>7}")
            for label, mine, theirs in tcp_rows:
                print(f"{label:36} {mine:10,.1f} {theirs:10,.1f} {mine / theirs:7.2f}")
        if "workers" in sections:
            if cores:
                os.sched_setaffinity(0, set(cores))
            import http_bench

            http_args = argparse.Namespace(
                duration=args.http_duration, connections=32, threads=1, rounds=2, counters=2000,
                route="fetch", loadgen="auto", compare="workers", no_pin=True, dir=None, vs=None,
            )
            results = []
            for scenario in ("hot", "spread"):
                results.extend(http_bench.run_scenario(scenario, http_args, Path(tmp), None))
            http_bench._table(results, http_args)


if __name__ == "__main__":
    main()
