"""WebSocket room benchmark: one room of ``--sockets`` (1,000) WebSockets, in workerd (the
anchor: a Durable Object with the hibernation API, ``benchmarks/workerd_room/``) and in
``dotdo serve`` (the ``Room`` of ``benchmarks/ws_kinds.py``), in the same run, one after
the other. Each message a socket sends is counted in the room's storage and broadcast to
every socket of the room, its sender included; messages are 64 bytes of text carrying
the sender and its send time.

The clients are two processes (``--clients``), each holding its share of the sockets in
one ``epoll`` loop over plain sockets, with the WebSocket framing done here: a trio
task and a wsproto parser per socket cost several times the CPU per message, and the
clients share the machine's two cores with the server. Figures, per server:

- **maximum rate**: ``--window`` (4) sockets, spread over the clients, each keep one
  message in flight (the next leaves when its own copy comes back), so the room always
  has broadcasts waiting; deliveries received by all clients per second over
  ``--duration`` s, after a second of warm-up, and the broadcast latency p50 / p99 (from
  the send time in the message to its arrival at each of the other sockets).
- **fixed rate**: ``--rate`` (10) broadcasts/s (10,000 deliveries/s with 1,000 sockets),
  sent on a schedule from one socket per client: p50 / p99 latency.
- **memory**: the resident set (VmRSS from /proc/PID/status, summed over the server's
  process tree) once the room has been used by one socket, which then closed; then with
  every socket open and idle; and the KiB per idle socket between the two.
- **hibernation**: with every socket open and the room quiet, one socket waits 2, 4, 6 ...
  s (``--hibernate-step``, up to ``--hibernate-max``) between probes: a ``?instance``
  message that the room answers with its instance's id and start time, so a new id
  means the object was evicted in between. Before each probe it sends ``--pings``
  ``ping`` messages, which the runtime answers ``pong`` without waking the room: their
  round-trip time is reported from the probe that found the room hibernated (so taken
  while it was), and the start time of the new instance tells whether a ping woke it.

Afterwards every client checks that each broadcast reached every socket. dotdo is given
``--idle-timeout`` 10 s (workerd hibernates an idle object after about 10 s) and
otherwise its defaults (a room of 1,000 fits them: sockets have their own cap,
``--max-websockets``, and no read timeout). A dotdo that refuses
the upgrade (one without WebSockets) is skipped with its answer. workerd comes from npm:
``npm install`` in ``benchmarks/workerd_room/``. Each figure is printed per server, with
the ratio dotdo/workerd when both ran.

    python benchmarks/websocket_bench.py [--servers workerd,dotdo] [--duration 10]
        [--sockets 1000] [--rate 10] [--window 4] [--clients 2] [--workers 1]
        [--idle-timeout 10] [--hibernate-step 2] [--hibernate-max 20] [--pings 100]
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import checkouts
from http_bench import Server

ROOT = checkouts.ROOT
WORKERD_ROOM = Path(__file__).resolve().parent / "workerd_room"
WORKERD = WORKERD_ROOM / "node_modules" / ".bin" / "workerd"
KINDS = Path(__file__).resolve().parent / "ws_kinds.py"
SIZE = 64  # bytes of every broadcast message
DRAIN = 1.0  # seconds a load keeps reading after its last send


class Refused(Exception):
    """The server answered the upgrade with something other than 101."""


# -- the client side of a socket ---------------------------------------------------------


@dataclass
class Conn:
    """One client WebSocket: its socket, its id in the room (its messages carry it), the
    bytes of a frame not yet whole, and messages read but not yet taken."""

    sock: socket.socket
    id: int
    buf: bytes = b""
    pending: deque[bytes] = field(default_factory=deque)


def connect(url: str, id_: int, timeout: float = 30.0) -> Conn:
    """Open a WebSocket to ``url`` (``ws://host:port/path``); raises ``Refused`` with the
    server's answer when the upgrade is not accepted."""
    host_port, _, path = url.removeprefix("ws://").partition("/")
    host, _, port = host_port.partition(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if status.split()[1:2] != ["101"]:
        sock.close()
        raise Refused(f"{status} {rest[:200]!r}")
    conn = Conn(sock, id_)
    conn.pending.extend(messages(conn, rest))
    return conn


def frame(payload: bytes, opcode: int = 1) -> bytes:
    """A final, masked client frame (payloads under 126 bytes, as every one here)."""
    mask = os.urandom(4)
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(len(payload), "big")
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked


def messages(conn: Conn, data: bytes) -> list[bytes]:
    """The payloads of the whole data frames in what has arrived on ``conn``, the rest
    kept for later; pings are answered, and a close frame raises ``ConnectionError``."""
    buf = conn.buf + data if conn.buf else data
    out = []
    i, n = 0, len(buf)
    while n - i >= 2:
        length, head = buf[i + 1] & 0x7F, 2
        if length == 126:
            length, head = int.from_bytes(buf[i + 2 : i + 4], "big"), 4
        elif length == 127:
            length, head = int.from_bytes(buf[i + 2 : i + 10], "big"), 10
        end = i + head + length
        if end > n:
            break
        opcode, payload = buf[i] & 0x0F, buf[i + head : end]
        if opcode == 8:
            code = int.from_bytes(payload[:2], "big") if payload else 1005
            raise ConnectionError(f"socket {conn.id} closed by the server: {code} {payload[2:]!r}")
        if opcode == 9:
            conn.sock.sendall(frame(payload, 0xA))
        elif opcode in (0, 1, 2):
            out.append(payload)
        i = end
    conn.buf = buf[i:]
    return out


def next_message(conn: Conn) -> bytes:
    """The next message on ``conn``, waiting for it (the socket's timeout applies)."""
    while not conn.pending:
        data = conn.sock.recv(65536)
        if not data:
            raise ConnectionError(f"socket {conn.id} closed")
        conn.pending.extend(messages(conn, data))
    return conn.pending.popleft()


def broadcast_message(conn: Conn) -> bytes:
    """A frame of ``SIZE`` bytes carrying ``conn``'s id and the time now."""
    return frame((b"%04d %019d " % (conn.id, time.monotonic_ns())).ljust(SIZE, b"x"))


def close(conn: Conn) -> None:
    try:
        conn.sock.sendall(frame((1000).to_bytes(2, "big"), 8))
    except OSError:
        pass
    conn.sock.close()


# -- what a client process does ----------------------------------------------------------


@dataclass
class LoadResult:
    """One client's share of a load: broadcasts it sent, deliveries it received (in the
    measured window, and in all), the latencies of the measured ones (ms), and the CPU
    time it used (s)."""

    sent: int
    counted: int
    received: int
    latencies: array[float]
    cpu: float


def load(conns: list[Conn], start: float, warm: float, duration: float, window: int, rate: float, offset: float) -> LoadResult:
    """Send and receive from ``start`` (``time.monotonic``) for ``warm`` + ``duration`` s,
    measuring the last ``duration``, then read for ``DRAIN`` s more. With ``window``,
    that many sockets each keep one message in flight; with ``rate``, the first socket
    sends that many per second, the first at ``start + offset``."""
    poller, by_fd = select.epoll(), {conn.sock.fileno(): conn for conn in conns}
    for fd, conn in by_fd.items():
        conn.sock.setblocking(False)
        poller.register(fd, select.EPOLLIN)
    begin_ns, end = int((start + warm) * 1e9), start + warm + duration
    end_ns = int(end * 1e9)
    latencies: array[float] = array("d")
    sent = counted = received = 0
    time.sleep(max(0.0, start - time.monotonic()))
    cpu = time.process_time()
    for conn in conns[:window]:
        conn.sock.send(broadcast_message(conn))
        sent += 1
    next_send = start + offset
    while (now := time.monotonic()) < end + DRAIN:
        if rate and next_send <= now < end:
            conns[0].sock.send(broadcast_message(conns[0]))
            sent += 1
            next_send += 1 / rate
        timeout = min(0.05, end + DRAIN - now, max(0.0, next_send - now) if rate and now < end else 0.05)
        for fd, _ in poller.poll(timeout):
            conn = by_fd[fd]
            data = conn.sock.recv(262144)
            if not data:
                raise ConnectionError(f"socket {conn.id} closed")
            arrived = time.monotonic_ns()
            measured = begin_ns <= arrived < end_ns
            for payload in messages(conn, data):
                received += 1
                sender = int(payload[:4])
                if sender == conn.id:
                    if window and arrived < end_ns:
                        conn.sock.send(broadcast_message(conn))
                        sent += 1
                elif measured:
                    latencies.append((arrived - int(payload[5:24])) / 1e6)
                counted += measured
    poller.close()
    for conn in conns:
        conn.sock.settimeout(30)
    return LoadResult(sent, counted, received, latencies, time.process_time() - cpu)


@dataclass
class Hibernation:
    """What the idle probes found: after how many seconds of quiet the room had a new
    instance (None: not within the longest gap), the ping round trips before that probe
    (ms), and whether the new instance started before the probe (a ping woke it)."""

    after: float | None
    rtts: list[float]
    woken_by_ping: bool


def instance(conn: Conn) -> tuple[str, int]:
    """The room's instance id and its start time (ms since the epoch), as it says."""
    conn.sock.sendall(frame(b"?instance"))
    while not (reply := next_message(conn)).startswith(b"instance "):
        pass  # a late broadcast
    _, id_, born = reply.decode().split()
    return id_, int(born)


def hibernation(conns: list[Conn], step: float, longest: float, pings: int) -> Hibernation:
    """Probe the quiet room after gaps of ``step``, 2 ``step`` ... up to ``longest`` s."""
    conn = conns[0]
    first, _ = instance(conn)
    gap, rtts = step, []
    while gap <= longest:
        time.sleep(gap)
        rtts = []
        for _ in range(pings):
            sent = time.perf_counter()
            conn.sock.sendall(frame(b"ping"))
            while next_message(conn) != b"pong":
                pass
            rtts.append((time.perf_counter() - sent) * 1e3)
        probed = int(time.time() * 1000)
        now, born = instance(conn)
        if now != first:
            return Hibernation(gap, rtts, born < probed - 1)
        gap += step
    return Hibernation(None, rtts, False)


def client(pipe: Connection, url: str, ids: range) -> None:
    """A client process: open a socket per id, say so, then run what the pipe asks
    (``load`` or ``hibernation`` with their arguments) until ``None``."""
    try:
        conns = [connect(url, id_) for id_ in ids]
    except (Refused, OSError) as error:
        pipe.send(error)
        return
    pipe.send(len(conns))
    commands: dict[str, Callable[..., Any]] = {"load": load, "hibernation": hibernation}
    while (command := pipe.recv()) is not None:
        name, *arguments = command
        pipe.send(commands[name](conns, *arguments))
    for conn in conns:
        close(conn)


# -- servers -----------------------------------------------------------------------------


def start_workerd(scratch: Path) -> Server:
    """workerd serving ``workerd_room/config.capnp`` on a socket opened here (port 0)."""
    if not WORKERD.exists():
        raise FileNotFoundError(f"no workerd: run npm install in {WORKERD_ROOM}")
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    storage = scratch / "workerd-storage"
    storage.mkdir()
    log = scratch / "workerd.log"
    with listener, open(log, "wb") as err:
        argv = [str(WORKERD), "serve", str(WORKERD_ROOM / "config.capnp"), "-S", f"http={listener.fileno()}",
                "-d", f"storage={storage}"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, pass_fds=(listener.fileno(),))
        port = listener.getsockname()[1]
    return Server("workerd", proc, f"ws://127.0.0.1:{port}/room", log)


def start_dotdo(scratch: Path, args: argparse.Namespace) -> Server:
    """``dotdo serve ws_kinds.py`` on a free port, once it listens."""
    log = scratch / "dotdo.log"
    argv = [sys.executable, "-m", "dotdo", "serve", str(KINDS), "--host", "127.0.0.1", "--port", "0", "--rpc-port", "0",
            "--workers", str(args.workers), "--data", str(scratch / "dotdo-data"), "--idle-timeout", str(args.idle_timeout),
            "--log-level", "warning"]
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env=checkouts.env(ROOT))
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (line := proc.stdout.readline().decode()):
        if line.strip().startswith("http: "):
            host_port = line.split("http: ", 1)[1].split()[0].removeprefix("http://").rstrip("/")
            return Server("dotdo", proc, f"ws://{host_port}/Room/main", log)
    proc.kill()
    raise RuntimeError(f"dotdo did not start:\n{log.read_text()}")


# -- one server's run --------------------------------------------------------------------


@dataclass
class Load:
    """What one load measured: deliveries/s in its window, their latency p50 and p99
    (ms), deliveries that never arrived, and the cores the server and the clients kept
    busy (CPU seconds per second of the load)."""

    rate: float
    p50: float
    p99: float
    lost: int
    server_cores: float
    client_cores: float


@dataclass
class Figures:
    """What one server measured (memory in KiB)."""

    maximum: Load
    fixed: Load
    rss_empty: float
    rss_idle: float
    per_socket: float
    hibernation: Hibernation


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def first_use(url: str) -> None:
    """One socket sends one message, takes its copy back and closes: the room exists."""
    conn = connect(url, 9999)
    conn.sock.sendall(broadcast_message(conn))
    next_message(conn)
    close(conn)


def run_load(server: Server, pipes: list[Connection], args: argparse.Namespace, *, window: int = 0, rate: float = 0.0,
             warm: float = 1.0) -> Load:
    """One load over every client: ``window`` broadcasts kept in flight, or ``rate`` per
    second."""
    start = time.monotonic() + 0.5
    cpu = server.cpu_seconds()
    share = len(pipes)
    for index, pipe in enumerate(pipes):
        part = window // share + (index < window % share)
        pipe.send(("load", start, warm, args.duration, part, rate / share, index / rate if rate else 0.0))
    results: list[LoadResult] = [pipe.recv() for pipe in pipes]
    elapsed = time.monotonic() - start
    latencies = [x for r in results for x in r.latencies]
    return Load(
        rate=sum(r.counted for r in results) / args.duration,
        p50=percentile(latencies, 0.5),
        p99=percentile(latencies, 0.99),
        lost=sum(r.sent for r in results) * args.sockets - sum(r.received for r in results),
        server_cores=(server.cpu_seconds() - cpu) / elapsed,
        client_cores=sum(r.cpu for r in results) / elapsed,
    )


def _say(server: Server, what: str, load: Load) -> None:
    print(f"  {server.name}: {what}: {load.rate:,.0f} deliveries/s, p50 {load.p50:.1f} ms, p99 {load.p99:.1f} ms, "
          f"CPU: server {load.server_cores:.2f} cores, clients {load.client_cores:.2f}", file=sys.stderr)


def measure(server: Server, args: argparse.Namespace) -> Figures | None:
    """Every figure of one server, or None when it refuses the upgrade."""
    try:
        first_use(server.url)
    except Refused as refused:
        print(f"  {server.name}: skipped, the upgrade to {server.url} was refused: {refused}", file=sys.stderr)
        return None
    time.sleep(1.0)
    rss_empty = server.rss_mb() * 1024
    context = multiprocessing.get_context("fork")
    pipes, procs = [], []
    bounds = [args.sockets * i // args.clients for i in range(args.clients + 1)]
    try:
        for low, high in zip(bounds, bounds[1:]):
            mine, theirs = context.Pipe()
            proc = context.Process(target=client, args=(theirs, server.url, range(low, high)), daemon=True)
            proc.start()
            pipes.append(mine)
            procs.append(proc)
        started = time.perf_counter()
        for pipe in pipes:
            if isinstance(opened := pipe.recv(), BaseException):
                raise opened
        print(f"  {server.name}: {args.sockets:,} sockets open in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        time.sleep(2.0)
        rss_idle = server.rss_mb() * 1024
        pipes[0].send(("hibernation", args.hibernate_step, args.hibernate_max, args.pings))
        slept = pipes[0].recv()
        found = f"a new instance after {slept.after:g} s idle" if slept.after else "no new instance"
        print(f"  {server.name}: idle probes: {found}", file=sys.stderr)
        maximum = run_load(server, pipes, args, window=args.window)
        _say(server, "maximum", maximum)
        fixed = run_load(server, pipes, args, rate=args.rate, warm=0.5)
        _say(server, f"{args.rate:g} broadcasts/s", fixed)
        for pipe in pipes:
            pipe.send(None)
    finally:
        for pipe in pipes:
            pipe.close()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    return Figures(maximum, fixed, rss_empty, rss_idle, (rss_idle - rss_empty) / args.sockets, slept)


# -- the table ---------------------------------------------------------------------------


def _slept(figures: Figures, args: argparse.Namespace) -> str:
    after = figures.hibernation.after
    if after is None:
        return f"not in {args.hibernate_max:g} s"
    return f"{max(0.0, after - args.hibernate_step):g}-{after:g} s"


def report(results: dict[str, Figures], args: argparse.Namespace) -> None:
    names = list(results)
    print(f"\n# WebSocket room benchmark: {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, one room of "
          f"{args.sockets:,} sockets, {SIZE}-byte messages, {args.clients} client processes, {args.duration:g} s per load; "
          f"maximum: {args.window} broadcasts in flight; dotdo --workers {args.workers} --idle-timeout {args.idle_timeout:g}")
    rows: list[tuple[str, Callable[[Figures], float], str]] = [
        ("maximum: delivered messages/s", lambda f: f.maximum.rate, ",.0f"),
        ("maximum: broadcast latency p50 ms", lambda f: f.maximum.p50, ".1f"),
        ("maximum: broadcast latency p99 ms", lambda f: f.maximum.p99, ".1f"),
        ("maximum: server CPU, cores", lambda f: f.maximum.server_cores, ".2f"),
        ("maximum: clients' CPU, cores", lambda f: f.maximum.client_cores, ".2f"),
        (f"{args.rate:g} broadcasts/s: delivered messages/s", lambda f: f.fixed.rate, ",.0f"),
        (f"{args.rate:g} broadcasts/s: latency p50 ms", lambda f: f.fixed.p50, ".1f"),
        (f"{args.rate:g} broadcasts/s: latency p99 ms", lambda f: f.fixed.p99, ".1f"),
        (f"{args.rate:g} broadcasts/s: server CPU, cores", lambda f: f.fixed.server_cores, ".2f"),
        ("RSS, no socket open, MiB", lambda f: f.rss_empty / 1024, ".1f"),
        (f"RSS, {args.sockets:,} idle sockets, MiB", lambda f: f.rss_idle / 1024, ".1f"),
        ("KiB per idle socket", lambda f: f.per_socket, ".1f"),
        ("auto-response round trip p50 ms", lambda f: percentile(f.hibernation.rtts, 0.5), ".3f"),
        ("auto-response round trip p99 ms", lambda f: percentile(f.hibernation.rtts, 0.99), ".3f"),
    ]
    head = f"{'figure':44}" + "".join(f"{name:>12}" for name in names) + ("   dotdo/workerd" if len(names) == 2 else "")
    print(head)
    print("-" * len(head))
    for label, value, spec in rows:
        line = f"{label:44}" + "".join(f"{format(value(f), spec):>12}" for f in results.values())
        if len(names) == 2 and value(results["workerd"]):
            line += f"   {value(results['dotdo']) / value(results['workerd']):.2f}x"
        print(line)
    print(f"{'hibernated after idle':44}" + "".join(f"{_slept(f, args):>12}" for f in results.values()))
    print(f"{'a ping woke it':44}" + "".join(f"{'yes' if f.hibernation.woken_by_ping else 'no':>12}" for f in results.values()))
    print(f"{'deliveries lost':44}" + "".join(f"{f.maximum.lost + f.fixed.lost:>12}" for f in results.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="workerd,dotdo", help="comma-separated: workerd, dotdo (default both)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per load (default 10)")
    parser.add_argument("--sockets", type=int, default=1000, help="sockets in the room (default 1000)")
    parser.add_argument("--clients", type=int, default=2, help="client processes sharing the sockets (default 2)")
    parser.add_argument("--window", type=int, default=4, help="broadcasts in flight at the maximum rate (default 4)")
    parser.add_argument("--rate", type=float, default=10.0, help="broadcasts/s of the fixed-rate load (default 10)")
    parser.add_argument("--workers", type=int, default=1, help="dotdo serve --workers (default 1)")
    parser.add_argument("--idle-timeout", type=float, default=10.0, help="dotdo serve --idle-timeout (default 10)")
    parser.add_argument("--hibernate-step", type=float, default=2.0, help="growth of the idle gaps, s (default 2)")
    parser.add_argument("--hibernate-max", type=float, default=20.0, help="longest idle gap, s (default 20)")
    parser.add_argument("--pings", type=int, default=100, help="auto-response round trips per probe (default 100)")
    args = parser.parse_args()
    starters: dict[str, Callable[[Path], Server]] = {"workerd": start_workerd, "dotdo": lambda d: start_dotdo(d, args)}
    results: dict[str, Figures] = {}
    for name in [s.strip() for s in args.servers.split(",") if s.strip()]:
        if name not in starters:
            raise SystemExit(f"unknown server {name!r}")
        with tempfile.TemporaryDirectory(prefix=f"websocket-bench-{name}-") as scratch:
            server = starters[name](Path(scratch))
            try:
                if (figures := measure(server, args)) is not None:
                    results[name] = figures
            finally:
                server.stop()
    if results:
        report(results, args)
    if any(f.maximum.lost or f.fixed.lost for f in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
