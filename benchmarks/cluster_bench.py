"""Cluster benchmarks: ``dotdo serve --cluster`` nodes (one worker each) and one etcd, as
subprocesses on 127.0.0.1, with wrk as the load (``POST /_rpc/Counter/<id>/increment``).
Every figure is measured against a baseline in the same run:

- ``relay``: requests/s, p50 and p99 through a node that does not own the counters
  (it relays each call to the owner over the transport) against straight to the owner,
  rounds alternating;
- ``move``: the time to move one slot holding 100 actors of 1 MB each from one node to
  a node that joins (the owner's own log line), against copying the same files on the
  same disk (read, write, fsync) in the same run;
- ``drain``: a load through two nodes while a third drains (SIGTERM: it hands its slots
  over and stops), against the same load with no drain: failed calls and p99 added;
- ``scale``: the cluster's requests/s with 1, 2 and 3 nodes (a wrk per node, the
  connections split between them), against 1 node. All share this machine's cores.

    python benchmarks/cluster_bench.py [--scenarios relay,move,drain,scale] [--duration 8]
        [--connections 32] [--rounds 2] [--counters 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import checkouts
import http_bench

ROOT = checkouts.ROOT
sys.path.insert(0, str(ROOT))

from tests.etcd_server import find_etcd, free_port  # noqa: E402  (the project's etcd, as the tests find it)

from dotdo.runtime.cluster.slots import slot_of  # noqa: E402
from dotdo.runtime.core.ids import resolve  # noqa: E402
from dotdo.storage.address import Address  # noqa: E402

SECRET = "cluster-bench-secret-0123456789abcdef"
SLOTS = 256
KINDS = Path(__file__).with_name("cluster_kinds.py")
STARTUP = 60.0


@dataclass
class Node:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    out: Path
    err: Path
    data: Path

    def stop(self, sig: int = signal.SIGTERM, wait: float = 120.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class Cluster:
    """An etcd and the nodes started on it, all stopped by ``close``."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.nodes: dict[str, Node] = {}
        port, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{port}"
        data = scratch / "etcd"
        self.etcd = subprocess.Popen(
            [find_etcd(), "--name", "bench", "--data-dir", str(data), "--listen-client-urls", self.etcd_url,
             "--advertise-client-urls", self.etcd_url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}", "--initial-cluster", f"bench=http://127.0.0.1:{peer}",
             "--logger", "zap", "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _until(lambda: _get(self.etcd_url + "/health") is not None, "etcd")

    def command(self) -> list[str]:
        """The dotdo command the nodes run (``serve`` and its arguments follow)."""
        return [sys.executable, "-m", "dotdo"]

    def options(self) -> list[str]:
        """Options every node is served with (these benchmarks measure a cluster
        without replicas; replication_bench.py measures them)."""
        return ["--replicas", "0"]

    def start(self, name: str, *extra: str, cpus: set[int] | None = None) -> Node:
        out, err = self.scratch / f"{name}.out", self.scratch / f"{name}.err"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOTDO_")}
        env.update(DOTDO_CLUSTER_SECRET=SECRET, PYTHONUNBUFFERED="1")
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(
                [*self.command(), "serve", "--port", "0", "--workers", "1", "--cluster", self.etcd_url,
                 "--node", name, "--data", str(self.scratch / f"{name}-data"), "--slots", str(SLOTS),
                 "--log-level", "info", "--idle-timeout", "600", *self.options(), *extra],
                stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=env, cwd=self.scratch,
                preexec_fn=None if cpus is None else (lambda: os.sched_setaffinity(0, cpus)),
            )  # fmt: skip

        def banner() -> bool:
            if proc.poll() is not None:
                raise SystemExit(f"node {name} exited: {err.read_text()[-2000:]}")
            return "stop: Ctrl-C" in out.read_text()

        _until(banner, f"node {name}")
        [url] = [line.split("http: ", 1)[1].split()[0] for line in out.read_text().splitlines() if "http: " in line]
        node = self.nodes[name] = Node(name, proc, url, out, err, self.scratch / f"{name}-data")
        return node

    def status(self) -> dict:
        done = subprocess.run(
            [sys.executable, "-m", "dotdo", "cluster", "status", "--json", "--slots", "--cluster", self.etcd_url],
            capture_output=True, check=True,
        )  # fmt: skip
        return json.loads(done.stdout)

    def settle(self, names: list[str]) -> dict:
        """Wait until the slots are balanced over ``names`` and nothing moves."""
        share = {n: SLOTS // len(names) + (1 if i < SLOTS % len(names) else 0) for i, n in enumerate(sorted(names))}

        def balanced() -> bool:
            status = self.status()
            held = {n["name"]: n["slots"] for n in status["nodes"] if n["live"] and n["slots"]}
            return held == share and not status["moving"]

        _until(balanced, "the slots to settle", timeout=300)
        return self.status()

    def close(self) -> None:
        for node in self.nodes.values():
            node.stop(signal.SIGKILL, 10)
        self.etcd.kill()
        self.etcd.wait()


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read()
    except OSError:
        return None


def _until(check, what: str, timeout: float = STARTUP) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.1)


def owned(status: dict, names: list[str], node: str, namespace: str = "Counter") -> list[str]:
    owners = {row["slot"]: row["owner"] for row in status["table"]}
    return [n for n in names if owners[slot_of(resolve(namespace, n).hex, SLOTS)] == node]


def call(url: str, namespace: str, name: str, method: str, *args: object) -> object:
    body = json.dumps({"args": list(args), "kwargs": {}}).encode()
    request = urllib.request.Request(f"{url}/_rpc/{namespace}/{name}/{method}", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["result"]


def cpu_seconds(nodes: list[Node]) -> float:
    """User + system CPU the nodes' processes have used (one worker each: no children)."""
    total = 0
    for node in nodes:
        fields = Path(f"/proc/{node.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def loads(
    targets: list[tuple[str, list[str]]], args: argparse.Namespace, scratch: Path, connections: int, cpus: set[int] | None = None
) -> list[http_bench.Load]:
    """wrk on each (url, counters) at once, ``connections`` each (on ``cpus``)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    each = SimpleNamespace(threads=1, connections=connections, duration=args.duration)
    pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
    procs = [
        subprocess.Popen(http_bench.wrk_command(wrk, url, counters, "rpc", each, scratch), stdout=subprocess.PIPE, text=True, preexec_fn=pin)
        for url, counters in targets
    ]
    return [http_bench.parse_wrk(proc.communicate()[0]) for proc in procs]


def warm(url: str, counters: list[str]) -> None:
    for name in counters:
        call(url, "Counter", name, "increment")


# -- scenarios -------------------------------------------------------------------------


def relay(args: argparse.Namespace, scratch: Path) -> list[str]:
    """Both nodes on one core, wrk on the other (on a machine of two or more): the
    relayed path and the direct one get the same CPU, and the CPU per request counts
    both nodes."""
    pinned = (os.cpu_count() or 1) >= 2
    nodes_cpu, load_cpu = ({0}, {1}) if pinned else (None, None)
    cluster = Cluster(scratch)
    try:
        a, b = cluster.start("a", cpus=nodes_cpu), cluster.start("b", cpus=nodes_cpu)
        status = cluster.settle(["a", "b"])
        names = owned(status, [f"c{i}" for i in range(args.counters)], "b")[:200]
        warm(b.url, names)
        via: dict[str, list[tuple[http_bench.Load, float]]] = {"owner": [], "relayed": []}
        for _ in range(args.rounds):
            for label, url in (("owner", b.url), ("relayed", a.url)):
                before = cpu_seconds([a, b])
                [run] = loads([(url, names)], args, scratch, args.connections, load_cpu)
                via[label].append((run, cpu_seconds([a, b]) - before))
        rows = []
        for label, runs in via.items():
            rate = statistics.median(r.rate for r, _ in runs)
            p50 = statistics.median(r.p50_ms for r, _ in runs)
            p99 = statistics.median(r.p99_ms for r, _ in runs)
            cpu = statistics.median(c / r.requests * 1e6 for r, c in runs if r.requests)
            failed = sum(r.non_2xx + r.errors for r, _ in runs)
            rows.append((label, rate, p50, p99, cpu, failed))
        owner, relayed = rows
        where = "both nodes on core 0, wrk on core 1" if pinned else "nothing pinned"
        return [
            f"relay  {label:<8} {rate:>9,.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  CPU {cpu:5.0f} us/req  failed {failed}"
            for label, rate, p50, p99, cpu, failed in rows
        ] + [
            f"relay  relayed/owner ({where}): {relayed[1] / owner[1]:.2f}x req/s, p50 {relayed[2] / owner[2]:.2f}x, "
            f"p99 {relayed[3] / owner[3]:.2f}x, CPU per request {relayed[4] / owner[4]:.2f}x"
        ]
    finally:
        cluster.close()


def move(args: argparse.Namespace, scratch: Path) -> list[str]:
    cluster = Cluster(scratch)
    try:
        a = cluster.start("a", str(KINDS))
        cluster.settle(["a"])
        slot = SLOTS - 1  # a joining node takes the highest slots first
        names: list[str] = []
        i = 0
        while len(names) < 100:
            if slot_of(resolve("Blob", f"blob{i}").hex, SLOTS) == slot:
                names.append(f"blob{i}")
            i += 1
        for name in names:
            assert call(a.url, "Blob", name, "fill", 1024 * 1024) >= 1024 * 1024
        subprocess.run([sys.executable, "-m", "dotdo", "cluster", "status", "--cluster", cluster.etcd_url], check=True, capture_output=True)
        files = [Address("Blob", resolve("Blob", n).hex).path(a.data) for n in names]
        total = sum(f.stat().st_size + (Path(f"{f}-wal").stat().st_size if Path(f"{f}-wal").exists() else 0) for f in files)
        copied = scratch / "copy"
        started = time.perf_counter()
        for f in files:
            for source in (f, Path(f"{f}-wal")):
                if source.exists():
                    target = copied / source.relative_to(a.data)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, target)
                    with open(target, "rb+") as handle:
                        os.fsync(handle.fileno())
        copy_seconds = time.perf_counter() - started
        b = cluster.start("b", str(KINDS))
        marker = f"slot {slot} moved to b: "
        _until(lambda: marker in a.err.read_text(), f"slot {slot} to move", timeout=300)
        line = next(line for line in a.err.read_text().splitlines() if marker in line)
        seconds = float(line.split(" in ")[-1].split()[0])
        sizes = [call(b.url, "Blob", n, "size") for n in names]
        assert all(size >= 1024 * 1024 for size in sizes), "a moved actor lost data"
        return [
            f"move   one slot, {len(names)} actors, {total / 1e6:.0f} MB: {seconds:.2f} s ({total / 1e6 / seconds:.0f} MB/s); "
            f"copying the same files here: {copy_seconds:.2f} s; move/copy {seconds / copy_seconds:.1f}x"
        ]
    finally:
        cluster.close()


def drain(args: argparse.Namespace, scratch: Path) -> list[str]:
    rows = []
    for label in ("steady", "draining"):
        cluster = Cluster(scratch / label)
        try:
            nodes = [cluster.start(n) for n in ("a", "b", "c")]
            cluster.settle(["a", "b", "c"])
            counters = [f"c{i}" for i in range(args.counters)]
            warm(nodes[0].url, counters)
            began = time.monotonic()
            wrk = shutil.which("wrk")
            assert wrk is not None
            each = SimpleNamespace(threads=1, connections=args.connections // 2, duration=args.duration)
            procs = [
                subprocess.Popen(http_bench.wrk_command(wrk, n.url, counters, "rpc", each, scratch / label), stdout=subprocess.PIPE, text=True)
                for n in (nodes[0], nodes[2])
            ]
            drained = None
            if label == "draining":
                time.sleep(args.duration / 4)
                started = time.monotonic()
                assert nodes[1].stop() == 0
                drained = time.monotonic() - started
            runs = [http_bench.parse_wrk(p.communicate()[0]) for p in procs]
            del began
            rate = sum(r.rate for r in runs)
            p99 = max(r.p99_ms for r in runs)
            failed = sum(r.non_2xx + r.errors for r in runs)
            rows.append((label, rate, p99, failed, drained))
        finally:
            cluster.close()
    (_, rate0, p990, _, _), (_, rate1, p991, failed1, drained) = rows
    lines = [f"drain  {label:<9} {rate:>9,.0f} req/s  p99 {p99:7.2f} ms  failed {failed}" for label, rate, p99, failed, _ in rows]
    lines.append(f"drain  the node handed {SLOTS // 3} slots over and stopped in {drained:.2f} s; p99 added {p991 - p990:+.2f} ms; failed calls {failed1}")
    return lines


def scale(args: argparse.Namespace, scratch: Path) -> list[str]:
    cluster = Cluster(scratch)
    results: list[tuple[int, float, float, int]] = []
    try:
        counters = [f"c{i}" for i in range(args.counters)]
        names = ["a", "b", "c"]
        for count in (1, 2, 3):
            cluster.start(names[count - 1])
            cluster.settle(names[:count])
            warm(cluster.nodes["a"].url, counters)
            per_node = max(1, args.connections // count)
            rates: list[float] = []
            failed = 0
            p99s: list[float] = []
            for _ in range(args.rounds):
                runs = loads([(cluster.nodes[n].url, counters) for n in names[:count]], args, scratch, per_node)
                rates.append(sum(r.rate for r in runs))
                p99s.append(max(r.p99_ms for r in runs))
                failed += sum(r.non_2xx + r.errors for r in runs)
            results.append((count, statistics.median(rates), statistics.median(p99s), failed))
    finally:
        cluster.close()
    base = results[0][1]
    return [f"scale  {count} node(s): {rate:>9,.0f} req/s ({rate / base:.2f}x one node)  p99 {p99:7.2f} ms  failed {failed}" for count, rate, p99, failed in results]


SCENARIOS = {"relay": relay, "move": move, "drain": drain, "scale": scale}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="relay,move,drain,scale")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--counters", type=int, default=2000)
    args = parser.parse_args()
    print(f"cluster bench on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, {args.duration:g} s loads, {args.connections} connections")
    for name in args.scenarios.split(","):
        with tempfile.TemporaryDirectory(prefix=f"cluster-{name}-") as scratch:
            root = Path(scratch)
            for sub in ("steady", "draining"):
                (root / sub).mkdir()
            for line in SCENARIOS[name](args, root):
                print(line, flush=True)


if __name__ == "__main__":
    main()
