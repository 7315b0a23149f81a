"""HTTP load benchmark: ``dotdo serve`` (one worker, the Counter example) against a bare
starlette + hypercorn + apsw app doing the same increment (``benchmarks/bare_app.py``);
or, with ``--compare workers``, ``dotdo serve --workers 2`` against ``--workers 1``
(nothing pinned: two workers need both cores, and share them with the load generator);
or, with ``--compare token``, ``dotdo serve --token`` (every request carrying
``Authorization: Bearer``) against ``dotdo serve`` without one: what access checking costs;
or, with ``--vs DIR``, the server that ``--compare`` measures (by default ``dotdo serve``
with one worker) running this checkout's code against the same server running the code
of the checkout DIR (e.g. the code before a change; see ``benchmarks/checkouts.py`` for
how a subprocess is made to run it), with the same options and the same load.

Both servers run as subprocesses on 127.0.0.1 (free ports, temporary data directories,
durability ``normal``), in the same run, and the load alternates between them round by
round so that a noisy machine affects both alike. Scenarios:

- ``hot``: every request increments the same counter.
- ``spread``: ``--counters`` (2,000) distinct counters are warmed first (one request
  each), then each request picks one at random.

Requests are ``POST /Counter/<id>/increment`` (the actor's ``fetch``, how a Durable
Object is usually reached over HTTP), or with ``--route rpc``
``POST /_rpc/Counter/<id>/increment`` with the body ``{"args":[],"kwargs":{}}``.
The load comes from ``wrk`` when it is installed (a Lua script picks the counter and
reports through ``done``), else from a trio + httpx generator (which saturates before
the servers do: its figures compare the servers under a lighter load only). On a
machine with two or more cores the servers are pinned to one core and the load
generator to another.

Reported per scenario and server: requests/s, p50 and p99 latency, the CPU time the
server's processes spent per request during the load (user + system, from
/proc/PID/stat: what a request costs the server even when the load generator is the
bottleneck), the server's RSS after the load (``VmRSS``), errors, and the ratio dotdo/bare (with ``--vs``: this
checkout's ``this`` over DIR's ``vs``). Afterwards every counter is read back: the sum
must be at least the number of successful increments, and at most that plus the
requests that were in flight when the load stopped. The exit status is 1 when a request
failed or a read-back is off.

    python benchmarks/http_bench.py [--duration 10] [--connections 32] [--threads 1]
        [--rounds 2] [--counters 2000] [--scenarios hot,spread] [--route fetch|rpc]
        [--compare bare|workers|token] [--vs /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import checkouts

ROOT = checkouts.ROOT
RPC_BODY = b'{"args":[],"kwargs":{}}'
TOKEN = "bench-client-token-0123456789abcdef"  # the --compare token server's client token


# -- servers ---------------------------------------------------------------------------


@dataclass
class Server:
    """A server subprocess and where it listens."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    token: str | None = None

    def headers(self, body: bytes | None) -> dict[str, str]:
        """The headers of a request with ``body`` (None: no body) to this server."""
        headers = {"content-type": "application/json"} if body else {}
        if self.token is not None:
            headers["authorization"] = f"Bearer {self.token}"
        return headers

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        assert parts.hostname is not None and parts.port is not None
        return parts.hostname, parts.port

    def rss_mb(self) -> float:
        """Resident memory now of the server and its worker processes, from
        /proc/PID/status (MiB)."""
        return sum(_rss_kib(pid) for pid in _tree(self.proc.pid)) / 1024

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server and its worker processes."""
        return sum(_cpu_ticks(pid) for pid in _tree(self.proc.pid)) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from the parent ids in /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def _cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


SERVERS = {"bare": None, "dotdo": 1, "w1": 1, "w2": 2, "token": 1}
"""Server names: the bare app, and dotdo with that many worker processes (``token``: one,
with ``--token``)."""

COMPARE = {"bare": ("bare", "dotdo"), "workers": ("w1", "w2"), "token": ("dotdo", "token")}
"""Per ``--compare``: the baseline, then the server measured against it."""


@dataclass(frozen=True)
class Contender:
    """One server of the comparison: its name in the table, which server (a name of
    ``SERVERS``), and the checkout whose code it runs."""

    label: str
    kind: str
    tree: Path = ROOT


def contenders(args: argparse.Namespace) -> list[Contender]:
    """The baseline, then the server measured against it: the pair of ``--compare``, or
    with ``--vs`` its measured server from DIR, then from this checkout."""
    baseline, measured = COMPARE[args.compare]
    if args.vs is None:
        return [Contender(baseline, baseline), Contender(measured, measured)]
    return [Contender("vs", measured, args.vs.resolve()), Contender("this", measured)]


def start_server(contender: Contender, data_dir: Path, logs: Path, cpu: int | None) -> Server:
    """Start ``bare`` or a dotdo (``dotdo``, ``w1``, ``w2``, ``token``) running the
    contender's checkout on a free port and wait until it listens."""
    name = contender.kind
    workers = SERVERS[name]
    if workers is not None:
        # Only options that dotdo serve has had since before issue 18, so that --vs can
        # run the code of then.
        argv = [sys.executable, "-m", "dotdo", "serve", "--host", "127.0.0.1", "--port", "0", "--rpc-port", "0",
                "--workers", str(workers), "--data", str(data_dir), "--durability", "normal", "--log-level", "warning"]
        if name == "token":
            argv += ["--token", TOKEN]
    else:
        argv = [sys.executable, str(ROOT / "benchmarks" / "bare_app.py"), "--host", "127.0.0.1",
                "--port", "0", "--data", str(data_dir)]
    log = logs / f"{data_dir.parent.name}-{contender.label}.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=contender.tree, env=checkouts.env(contender.tree))
    if cpu is not None:
        os.sched_setaffinity(proc.pid, {cpu})
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if not line:
            break
        if line.strip().startswith("http: "):
            url = line.split("http: ", 1)[1].split()[0]  # the banner may add "(token required)"
            return Server(contender.label, proc, url, log, TOKEN if name == "token" else None)
    proc.kill()
    raise RuntimeError(f"{contender.label} did not start:\n{log.read_text()}")


# -- requests outside the load ----------------------------------------------------------


def path_of(counter: str, route: str) -> str:
    if route == "rpc":
        return f"/_rpc/Counter/{counter}/increment"
    return f"/Counter/{counter}/increment"


def _request(server: Server, conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None) -> dict[str, Any]:
    conn.request(method, path, body=body, headers=server.headers(body))
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
    decoded: dict[str, Any] = json.loads(data)
    return decoded


def warm(server: Server, counters: list[str], route: str) -> int:
    """One increment per counter, sequentially; returns how many succeeded (all)."""
    conn = http.client.HTTPConnection(*server.host_port, timeout=30)
    body = RPC_BODY if route == "rpc" else None
    for counter in counters:
        _request(server, conn, "POST", path_of(counter, route), body)
    conn.close()
    return len(counters)


def read_total(server: Server, counters: list[str]) -> int:
    """The sum of the counters' values, read back over HTTP."""
    conn = http.client.HTTPConnection(*server.host_port, timeout=30)
    total = sum(int(_request(server, conn, "GET", f"/Counter/{counter}", None)["value"]) for counter in counters)
    conn.close()
    return total


# -- load --------------------------------------------------------------------------------


@dataclass
class Load:
    """What one load run measured."""

    requests: int  # completed responses
    non_2xx: int
    errors: int  # connect, read, write errors and timeouts
    seconds: float
    p50_ms: float
    p99_ms: float
    server_cpu: float = 0.0  # seconds of CPU the server's processes used during the load

    @property
    def cpu_us(self) -> float:
        """The server's CPU time per completed request, in microseconds."""
        return self.server_cpu / self.requests * 1e6 if self.requests else 0.0

    @property
    def ok(self) -> int:
        return self.requests - self.non_2xx

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


_WRK_SCRIPT = """
wrk.method = "POST"
{body}
local counters = {{{counters}}}
local count = #counters
local route = "{route}"
local nthreads = 0

function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
end

function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
end

function request()
  local c = counters[math.random(1, count)]
  local path
  if route == "rpc" then path = "/_rpc/Counter/" .. c .. "/increment"
  else path = "/Counter/" .. c .. "/increment" end
  return wrk.format(nil, path)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,'
    .. '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_load(wrk: str, server: Server, counters: list[str], route: str, args: argparse.Namespace, scratch: Path) -> Load:
    argv = wrk_command(wrk, server.url, counters, route, args, scratch, token=server.token)
    return parse_wrk(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def wrk_command(
    wrk: str, url: str, counters: list[str], route: str, args: argparse.Namespace, scratch: Path, *, token: str | None = None
) -> list[str]:
    """The wrk command line of a load on ``url`` over ``counters`` (its Lua script is
    written in ``scratch``); ``args`` gives threads, connections and duration."""
    script = scratch / f"load-{abs(hash((url, tuple(counters)))):x}.lua"
    body = "wrk.body = '" + RPC_BODY.decode() + "'\nwrk.headers[\"Content-Type\"] = \"application/json\"" if route == "rpc" else ""
    if token is not None:
        body += f'\nwrk.headers["Authorization"] = "Bearer {token}"'
    script.write_text(_WRK_SCRIPT.format(body=body, counters=",".join(f'"{c}"' for c in counters), route=route))
    return [wrk, "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.duration:g}s",
            "--timeout", "10s", "--latency", "-s", str(script), url]


def parse_wrk(out: str) -> Load:
    """The ``Load`` a wrk run of ``wrk_command`` printed."""
    line = next((x for x in out.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    r = json.loads(line[len("WRKJSON "):])
    return Load(
        requests=r["requests"],
        non_2xx=r["status"],
        errors=r["connect"] + r["read"] + r["write"] + r["timeout"],
        seconds=r["duration_us"] / 1e6,
        p50_ms=r["p50_us"] / 1e3,
        p99_ms=r["p99_us"] / 1e3,
    )


def python_load(server: Server, counters: list[str], route: str, args: argparse.Namespace) -> Load:
    """The fallback generator: ``--connections`` trio tasks sharing an httpx client."""
    import random

    import httpx
    import trio

    latencies: list[float] = []
    counts = {"requests": 0, "non_2xx": 0, "errors": 0}
    body = RPC_BODY if route == "rpc" else None
    headers = server.headers(body)

    async def worker(client: httpx.AsyncClient, stop: float) -> None:
        while trio.current_time() < stop:
            path = path_of(random.choice(counters), route)
            start = time.perf_counter()
            try:
                response = await client.post(path, content=body, headers=headers)
            except httpx.HTTPError:
                counts["errors"] += 1
                continue
            latencies.append(time.perf_counter() - start)
            counts["requests"] += 1
            if not 200 <= response.status_code < 300:
                counts["non_2xx"] += 1

    async def run() -> float:
        limits = httpx.Limits(max_connections=args.connections, max_keepalive_connections=args.connections)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=10) as client:
            start = trio.current_time()
            stop = start + args.duration
            async with trio.open_nursery() as nursery:
                for _ in range(args.connections):
                    nursery.start_soon(worker, client, stop)
            return trio.current_time() - start

    seconds = trio.run(run)
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3 if latencies else 0.0

    return Load(counts["requests"], counts["non_2xx"], counts["errors"], seconds, pct(0.5), pct(0.99))


# -- the run ---------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    server: str
    loads: list[Load]
    rss_mb: float
    expected_min: int
    expected_max: int
    read_back: int

    def median(self, field: Callable[[Load], float]) -> float:
        return statistics.median(field(load) for load in self.loads)

    @property
    def correct(self) -> bool:
        return self.expected_min <= self.read_back <= self.expected_max

    @property
    def failures(self) -> int:
        return sum(load.non_2xx + load.errors for load in self.loads)


def run_scenario(scenario: str, args: argparse.Namespace, scratch: Path, cpus: tuple[int, int] | None) -> list[Result]:
    counters = ["hot"] if scenario == "hot" else [f"c{i}" for i in range(args.counters)]
    wrk = None if args.loadgen == "python" else shutil.which("wrk")
    if args.loadgen == "wrk" and wrk is None:
        raise SystemExit("wrk is not installed")
    pair = contenders(args)
    names = [contender.label for contender in pair]
    servers: dict[str, Server] = {}
    loads: dict[str, list[Load]] = {name: [] for name in names}
    ok: dict[str, int] = {}
    try:
        for contender in pair:
            name = contender.label
            data = scratch / scenario / name
            servers[name] = start_server(contender, data, scratch, cpus[1] if cpus else None)
            started = time.perf_counter()
            ok[name] = warm(servers[name], counters, args.route)
            print(f"  {scenario}: {name} warmed {len(counters):,} counter(s) in "
                  f"{time.perf_counter() - started:.1f} s, RSS {servers[name].rss_mb():.0f} MB", file=sys.stderr, flush=True)
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else reversed(names):
                cpu_before = servers[name].cpu_seconds()
                if wrk is not None:
                    load = wrk_load(wrk, servers[name], counters, args.route, args, scratch)
                else:
                    load = python_load(servers[name], counters, args.route, args)
                load.server_cpu = servers[name].cpu_seconds() - cpu_before
                loads[name].append(load)
                print(f"  {scenario} round {round_ + 1}: {name:5} {load.rate:8,.0f} req/s  p50 {load.p50_ms:6.2f} ms"
                      f"  p99 {load.p99_ms:6.2f} ms  CPU {load.cpu_us:5.0f} us/req  non-2xx {load.non_2xx}"
                      f"  errors {load.errors}", file=sys.stderr, flush=True)
        results = []
        for name in names:
            server = servers[name]
            rss = server.rss_mb()
            done = ok[name] + sum(load.ok for load in loads[name])
            # Requests still in flight when the load stopped may have been applied too.
            in_flight = args.connections * len(loads[name])
            results.append(Result(scenario, name, loads[name], rss, done, done + in_flight,
                                  read_total(server, counters)))
        return results
    finally:
        for server in servers.values():
            server.stop()


def _table(results: list[Result], args: argparse.Namespace) -> None:
    if args.loadgen != "python" and shutil.which("wrk"):
        load = f"wrk, {args.threads} thread(s)"
    else:
        load = "trio+httpx (no wrk; the client is the bottleneck, compare ratios only)"
    theirs, mine = (contender.label for contender in contenders(args))
    against = f"{mine}/{theirs}"
    print(f"\n# HTTP benchmark: {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, route {args.route}, "
          f"{args.connections} connections, load {load}, {args.duration:g} s x {args.rounds} round(s) "
          f"(medians), durability normal", flush=True)
    if args.vs is not None:
        server = COMPARE[args.compare][1]
        print(f"# server {server}: this = this checkout ({ROOT}), vs = {args.vs.resolve()}", flush=True)
        against = "this/vs"
    head = (f"{'scenario':10} {'server':6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>10} {'RSS MB':>8} "
            f"{'failed':>7} {'read back':>10}")
    print(head)
    print("-" * len(head))
    by_scenario: dict[str, dict[str, Result]] = {}
    for r in results:
        by_scenario.setdefault(r.scenario, {})[r.server] = r
        check = "ok" if r.correct else f"BAD {r.read_back}"
        print(f"{r.scenario:10} {r.server:6} {r.median(lambda x: x.rate):9,.0f} {r.median(lambda x: x.p50_ms):8.2f} "
              f"{r.median(lambda x: x.p99_ms):8.2f} {r.median(lambda x: x.cpu_us):10.0f} {r.rss_mb:8.1f} "
              f"{r.failures:7} {check:>10}")
    for scenario, pair in by_scenario.items():
        d, b = pair[mine], pair[theirs]

        def ratio(f: Callable[[Load], float]) -> float:
            return d.median(f) / b.median(f)

        print(f"{scenario:10} {'ratio':6} {ratio(lambda x: x.rate):8.2f}x {ratio(lambda x: x.p50_ms):7.2f}x "
              f"{ratio(lambda x: x.p99_ms):7.2f}x {ratio(lambda x: x.cpu_us):9.2f}x {d.rss_mb / b.rss_mb:7.2f}x   ({against})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per server per round (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per server (default 2)")
    parser.add_argument("--counters", type=int, default=2000, help="counters in the spread scenario (default 2000)")
    parser.add_argument("--scenarios", default="hot,spread", help="comma-separated: hot, spread (default both)")
    parser.add_argument("--route", choices=["fetch", "rpc"], default="fetch", help="fetch (default) or rpc")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--compare", choices=sorted(COMPARE), default="bare",
                        help="bare: dotdo (one worker) against the bare app (default); workers: --workers 2 against "
                        "--workers 1; token: dotdo --token against dotdo without")
    parser.add_argument("--vs", type=Path, metavar="DIR",
                        help="another checkout (e.g. the code before a change): the server --compare measures runs "
                        "this checkout's code and DIR's, alternating round by round, instead of against its baseline")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and load to separate cores")
    parser.add_argument("--dir", help="where to put data directories (default: a temporary folder)")
    args = parser.parse_args()
    for contender in contenders(args):
        checkouts.verify(contender.tree)
    cpus: tuple[int, int] | None = None
    if not args.no_pin and args.compare != "workers" and hasattr(os, "sched_setaffinity"):
        available = sorted(os.sched_getaffinity(0))
        if len(available) >= 2:
            cpus = (available[0], available[-1])
            os.sched_setaffinity(0, {cpus[0]})  # this process and the load generator it starts
    results: list[Result] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="dotdo-http-bench-") as tmp:
        for scenario in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
            if scenario not in ("hot", "spread"):
                raise SystemExit(f"unknown scenario {scenario!r}")
            results.extend(run_scenario(scenario, args, Path(tmp), cpus))
    _table(results, args)
    if not all(r.correct and r.failures == 0 for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
