"""Events benchmark: durable events delivered per second between actors, in-process.

One process, one supervisor, one core (the process pins itself when it can):

1. **One to one.** A sender sends ``--events`` events (``--batch`` per turn) to one
   subscriber, whose handler counts them in its KV store: events delivered per second,
   from the first send to the last handler's commit. Each event is written to the
   sender's log and outbox in the sending turn, delivered in its own turn on the
   receiver (de-duplicated through its inbox), and removed from the outbox.
2. **Fan-in.** ``--senders`` senders each send their share to the same subscriber.
3. **Fan-out.** One sender, ``--fanout`` subscribers: deliveries per second.

Baseline in the same run: the same handler work as plain in-process calls from the
sender's turn to the receiver (``await self.S.Receiver("r").handle(...)``, sequential:
the shape of "tell the other actor" without durability), so the ratio is what the
outbox, the inbox and the delivery rounds cost.

    python benchmarks/events_bench.py [--events 20000] [--batch 100] [--senders 10]
                                      [--fanout 10] [--data DIR]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dotdo import DO, Event, on  # noqa: E402
from dotdo.server import tune_gc  # noqa: E402
from dotdo.runtime.supervisor import Supervisor  # noqa: E402


class Sender(DO):
    async def blast(self, count: int, offset: int) -> int:
        for i in range(count):
            self.S.send("Bench.tick", offset + i)
        return count

    async def direct(self, count: int, offset: int, receiver: str) -> int:
        stub = self.S.Receiver(receiver)
        for i in range(count):
            await stub.handle(offset + i)
        return count


class Receiver(DO):
    @on.Bench.tick
    async def tick(self, event: Event) -> None:
        self.storage.put("count", (self.storage.get("count") or 0) + 1)

    async def handle(self, value: int) -> None:
        self.storage.put("count", (self.storage.get("count") or 0) + 1)

    async def count(self) -> int:
        return self.storage.get("count") or 0


async def _wait_for(sup: Supervisor, receivers: list[str], total: int) -> None:
    while True:
        done = 0
        for name in receivers:
            done += await sup.S.Receiver(name).count()
        if done >= total:
            return
        await trio.sleep(0.002)


async def run_events(data: Path, events: int, batch: int, senders: int, receivers: int) -> float:
    """Seconds to deliver ``events`` sends to ``receivers`` subscribers each."""
    async with Supervisor([Sender, Receiver], data, alarm_concurrency=16) as sup:
        names = [f"r{i}" for i in range(receivers)]
        for name in names:
            await sup.S.Receiver(name).count()  # activated: subscribed
        per_sender = events // senders
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for s in range(senders):
                async def send_all(s: int = s) -> None:
                    stub = sup.S.Sender(f"s{s}")
                    for offset in range(0, per_sender, batch):
                        await stub.blast(min(batch, per_sender - offset), offset)
                nursery.start_soon(send_all)
            nursery.start_soon(_wait_for, sup, names, per_sender * senders * receivers)
        elapsed = time.perf_counter() - started
        if sup.events.dead:
            raise SystemExit(f"{sup.events.dead} deliveries were dead-lettered")
        return elapsed


async def run_direct(data: Path, events: int, batch: int) -> float:
    """Seconds for the same handler work as plain calls from the sender's turns."""
    async with Supervisor([Sender, Receiver], data) as sup:
        stub = sup.S.Sender("s")
        await sup.S.Receiver("d").count()
        started = time.perf_counter()
        for offset in range(0, events, batch):
            await stub.direct(min(batch, events - offset), offset, "d")
        elapsed = time.perf_counter() - started
        assert await sup.S.Receiver("d").count() == events
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=100, help="events sent per sending turn")
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--fanout", type=int, default=10)
    parser.add_argument("--data", type=Path, default=None, help="data directory (default: a temporary one)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
        except OSError:
            pass
    tune_gc()
    base = args.data or Path(tempfile.mkdtemp(prefix="dotdo-events-"))
    rows: list[tuple[str, int, float, Any]] = []

    def phase(label: str, fn: Any, *fn_args: Any) -> float:
        gc.collect()
        seconds = trio.run(fn, *fn_args)
        return seconds

    n = args.events
    direct = phase("direct", run_direct, base / "direct", n, args.batch)
    one = phase("one", run_events, base / "one", n, args.batch, 1, 1)
    fan_in = phase("fan-in", run_events, base / "fanin", n, args.batch, args.senders, 1)
    fan_out_events = max(n // args.fanout, 1)
    fan_out = phase("fan-out", run_events, base / "fanout", fan_out_events, args.batch, 1, args.fanout)
    base_rate = n / direct
    rows.append(("plain calls, sender -> receiver (baseline)", n, n / direct, None))
    rows.append(("events, 1 sender -> 1 subscriber", n, n / one, (n / one) / base_rate))
    rows.append((f"events, {args.senders} senders -> 1 subscriber", n, n / fan_in, (n / fan_in) / base_rate))
    deliveries = fan_out_events * args.fanout
    rows.append((f"events, 1 sender -> {args.fanout} subscribers", deliveries, deliveries / fan_out, (deliveries / fan_out) / base_rate))
    print(f"events benchmark: {n} events, {args.batch} per sending turn, one core, data in {base}")
    print(f"{'':48} {'handled':>9} {'per second':>12} {'vs calls':>9}")
    for label, count, rate, ratio in rows:
        print(f"{label:48} {count:9,d} {rate:12,.0f} {'' if ratio is None else f'{ratio:8.2f}x':>9}")


if __name__ == "__main__":
    main()
