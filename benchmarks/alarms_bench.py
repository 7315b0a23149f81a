"""Alarms benchmark: firing rate, lateness, memory and start-up with many pending alarms.

One process, one supervisor, one core (the process pins itself when it can):

1. **Burst.** ``--actors`` actors (10,000) each arm an alarm due at the same moment;
   each run re-arms the actor's alarm until it has fired ``--per-actor`` times (10), so
   100,000 alarms fire as fast as the server can: alarms fired per second. Baseline in
   the same run: the same handler work done as plain in-process calls from as many
   concurrent callers as there are delivery workers, so the ratio is what the alarm
   machinery (index, reading the due row, re-arming) costs.
2. **Paced.** The same actors get one alarm each, spread evenly over ``--window``
   seconds (1,000/s by default, well under capacity): lateness (fired minus scheduled),
   p50 and p99.
3. **Start-up.** ``--pending`` actors (100,000) each with a pending alarm an hour away,
   written through the storage layer exactly as turns write them (actor row plus index
   entry); then the time to start a supervisor until its scheduler has looked at the
   index, and its RSS.

    python benchmarks/alarms_bench.py [--actors 10000] [--per-actor 10] [--window 10]
                                      [--pending 100000] [--data DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dotdo import DO  # noqa: E402
from dotdo.server import tune_gc  # noqa: E402
from dotdo.runtime.core.ids import id_from_name  # noqa: E402
from dotdo.runtime.supervisor import Supervisor  # noqa: E402
from dotdo.storage.address import Address  # noqa: E402
from dotdo.storage.database import ActorDatabase  # noqa: E402
from dotdo.storage.alarm_index import AlarmIndex  # noqa: E402
from dotdo.storage.alarms import PendingItem  # noqa: E402


class Pinger(DO):
    """Counts its runs; re-arms itself until it has run ``per_actor`` times."""

    # Benchmark bookkeeping, set by the harness (not a pattern for real actors).
    fired_at: ClassVar[list[float]] = []
    lateness: ClassVar[list[float]] = []
    per_actor: ClassVar[int] = 1

    async def arm(self, when: float) -> None:
        self.set_alarm(when)

    async def work(self) -> int:
        # What an alarm run does, as a plain call (the baseline).
        runs = (self.storage.get("runs") or 0) + 1
        self.storage.put("runs", runs)
        return runs

    async def alarm(self, info: Any) -> None:
        now = self._dotdo_ctx.supervisor.alarms.now()
        Pinger.fired_at.append(now)
        Pinger.lateness.append(now - info.scheduled_time.timestamp())
        runs = (self.storage.get("runs") or 0) + 1
        self.storage.put("runs", runs)
        if runs < Pinger.per_actor:
            self.set_alarm(now)


class BenchClock:
    """Wall clock the harness can move forward, so that arming thousands of actors
    (which takes a while) does not overlap the alarms it sets."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.time() + self.skew

    def jump(self, sup: Supervisor, seconds: float) -> None:
        self.skew += seconds
        sup.alarms._wake.set()  # the scheduler sleeps until the next due time: look again


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _wait_for(count: int, limit: float) -> None:
    with trio.move_on_after(limit):
        while len(Pinger.fired_at) < count:
            await trio.sleep(0.05)


async def burst(root: Path, actors: int, per_actor: int) -> dict[str, float]:
    Pinger.per_actor = per_actor
    Pinger.fired_at, Pinger.lateness = [], []
    total = actors * per_actor
    clock = BenchClock()
    async with Supervisor([Pinger], root / "burst", clock=clock) as sup:
        workers = sup.config.alarm_concurrency
        # Baseline: the same work as plain calls, from as many concurrent callers as
        # there are delivery workers, on passivated actors of their own.
        plain = [f"b{i}" for i in range(actors)]
        await _arm_all(sup, plain, None)
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for w in range(workers):
                nursery.start_soon(_calls, sup, plain[w::workers], per_actor)
        call_rate = total / (time.perf_counter() - start)
        print(f"  baseline: {call_rate:,.0f} calls/s", flush=True)
        # Arm every actor for one moment an hour away (each passivated after), then
        # move the clock there: every alarm is due at once.
        names = [f"p{i}" for i in range(actors)]
        due = clock() + 3600
        arm_rate = await _arm_all(sup, names, due)
        print(f"  armed {actors:,} actors at {arm_rate:,.0f}/s", flush=True)
        start = time.perf_counter()
        clock.jump(sup, 3600)
        await _wait_for(total, 600)
        elapsed = time.perf_counter() - start
        return {
            "fired": len(Pinger.fired_at),
            "alarm_rate": len(Pinger.fired_at) / elapsed,
            "call_rate": call_rate,
            "arm_rate": arm_rate,
            "peak_rss": peak_rss_mib(),
        }


async def _arm_all(sup: Supervisor, names: list[str], when: float | None, step: float = 0.0) -> float:
    """Arm each actor (or, with ``when`` None, just activate it), then passivate it."""
    start = time.perf_counter()
    for i, name in enumerate(names):
        actor = sup.S.Pinger(name)
        if when is None:
            await actor.work()
        else:
            await actor.arm(when + i * step)
        sup.passivate(actor.id)
    return len(names) / (time.perf_counter() - start)


async def _calls(sup: Supervisor, names: list[str], times: int) -> None:
    for name in names:
        actor = sup.S.Pinger(name)
        for _ in range(times):
            await actor.work()


async def paced(root: Path, actors: int, window: float) -> dict[str, float]:
    names = [f"q{i}" for i in range(actors)]
    Pinger.per_actor = 1
    Pinger.fired_at, Pinger.lateness = [], []
    clock = BenchClock()
    async with Supervisor([Pinger], root / "paced", clock=clock) as sup:
        begin = clock() + 3600
        await _arm_all(sup, names, begin, window / actors)
        clock.jump(sup, begin - clock() - 1.0)  # the first alarm is a second away
        await _wait_for(actors, window + 60)
    return {
        "fired": len(Pinger.lateness),
        "rate": actors / window,
        "p50_ms": pct(Pinger.lateness, 0.50) * 1000,
        "p99_ms": pct(Pinger.lateness, 0.99) * 1000,
        "max_ms": max(Pinger.lateness) * 1000,
    }


def populate(root: Path, pending: int) -> float:
    """``pending`` actors with an alarm an hour away, written as turns write them."""
    data = root / "startup"
    index = AlarmIndex.open(data)
    due = time.time() + 3600
    start = time.perf_counter()
    for i in range(pending):
        target = id_from_name("Pinger", f"s{i}")
        with ActorDatabase.open(data, Address("Pinger", target.hex), name=target.name) as db:
            index.lower("Pinger", target.hex, target.name, PendingItem("", "alarm", None, due + i * 0.01, 0))
            db.alarms.set(due + i * 0.01)
        if (i + 1) % 10_000 == 0:
            print(f"  populated {i + 1:,}/{pending:,} actors", flush=True)
    index.close()
    return time.perf_counter() - start


async def startup(root: Path, pending: int) -> dict[str, float]:
    before = rss_mib()
    start = time.perf_counter()
    async with Supervisor([Pinger], root / "startup") as sup:
        # The scheduler's first look at the index happens before __aenter__ returns or
        # right after; one more pass guarantees it has run.
        await trio.sleep(0)
        ready = time.perf_counter() - start
        count = sup.alarms.index.count()
        active = sup.statistics().active
        after = rss_mib()
    return {"seconds": ready, "pending": count, "active": active, "rss_delta": after - before, "rss": after}


async def main_async(args: argparse.Namespace) -> None:
    root = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="dotdo-alarms-"))
    print(f"data: {root}")
    print(f"1. burst: {args.actors:,} actors x {args.per_actor} alarms, all due at once")
    b = await burst(root, args.actors, args.per_actor)
    print(f"2. paced: {args.actors:,} alarms over {args.window:g} s")
    # Each phase starts quiet: the burst's leftovers (100,000 timings in memory, and
    # hundreds of MB of written pages the kernel would flush during the paced run)
    # are not the paced run's.
    gc.collect()
    os.sync()
    p = await paced(root, args.actors, args.window)
    s: dict[str, float] | None = None
    if args.pending:
        print(f"3. start-up with {args.pending:,} pending alarms")
        took = populate(root, args.pending)
        print(f"  populated in {took:.1f} s")
        s = await startup(root, args.pending)
    print()
    print(f"{'figure':<44}{'value':>14}")
    print(f"{'alarms fired (burst)':<44}{b['fired']:>14,.0f}")
    print(f"{'alarms fired per second':<44}{b['alarm_rate']:>14,.0f}")
    print(f"{'baseline: same work as calls per second':<44}{b['call_rate']:>14,.0f}")
    print(f"{'ratio alarms / calls':<44}{b['alarm_rate'] / b['call_rate']:>14.2f}")
    print(f"{'set_alarm turns per second (with activation)':<44}{b['arm_rate']:>14,.0f}")
    print(f"{'paced rate (alarms/s)':<44}{p['rate']:>14,.0f}")
    print(f"{'lateness p50 (ms)':<44}{p['p50_ms']:>14.1f}")
    print(f"{'lateness p99 (ms)':<44}{p['p99_ms']:>14.1f}")
    print(f"{'lateness max (ms)':<44}{p['max_ms']:>14.1f}")
    print(f"{'peak RSS after burst and paced (MiB)':<44}{b['peak_rss']:>14.0f}")
    if s is not None:
        print(f"{'start-up with pending alarms (s)':<44}{s['seconds']:>14.3f}")
        print(f"{'  pending in the index':<44}{s['pending']:>14,.0f}")
        print(f"{'  databases opened at start-up':<44}{s['active']:>14,.0f}")
        print(f"{'  RSS after start-up (MiB)':<44}{s['rss']:>14.0f}")
    print(f"\nmachine: {os.cpu_count()} cores, {dt.date.today().isoformat()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actors", type=int, default=10_000)
    parser.add_argument("--per-actor", type=int, default=10)
    parser.add_argument("--window", type=float, default=10.0, help="seconds the paced alarms spread over")
    parser.add_argument("--pending", type=int, default=100_000, help="pending alarms for start-up (0: skip)")
    parser.add_argument("--data", help="data directory (default: a new temporary one)")
    args = parser.parse_args()
    tune_gc()  # the collector settings of `dotdo serve`
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        except OSError:
            pass
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
