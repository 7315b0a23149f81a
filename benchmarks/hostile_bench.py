"""Hostile clients against the transport: what they cost the server in memory, and
whether they take it down or lock others out.

Each scenario starts its own ``dotdo serve --workers 1`` (serving
``benchmarks/hostile_kinds.py`` on a temporary data directory), reads its resident
memory when idle, runs the attack from this process over loopback, and reads the
server's memory again: at the peak (``VmHWM``) and a second after the attack ended.
The baseline is the same server idle, in the same run; ``--vs DIR`` runs every
scenario against the code of another checkout too (see ``benchmarks/checkouts.py``),
e.g. the code before a fix, so that both are measured side by side.

Scenarios (``--scenarios``, default all):

``nohello``: ``--connections`` sockets (default 64) each announce a 15 MiB frame and
send it, without a hello.
``pings``: one connection says hello, then sends pings (up to 150 MiB, for at most
60 s) and never reads the pongs; sending stops when the server stops reading for 10 s.
``bigcalls``: one connection sends 60 calls of 8 MiB each (held by the actor for 5 s)
and never reads the replies; the same stop rule.
``silent``: 256 sockets connect and say nothing; then a well-behaved client connects
and calls: how long until its answer (or its refusal).
``resets``: 200 connections reset (SO_LINGER 0) after their hello with calls in
flight: does the server survive (same PID, ``/_health`` answers)?

    python benchmarks/hostile_bench.py [--scenarios nohello,pings,bigcalls,silent,resets]
        [--connections 64] [--vs /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import checkouts  # noqa: E402

ROOT = checkouts.ROOT
checkouts.install(ROOT)

from dotdo.runtime.core import values  # noqa: E402
from dotdo.runtime.transport import wire  # noqa: E402
from dotdo.runtime.core.ids import id_from_name  # noqa: E402

MIB = 1024 * 1024


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    http: str
    rpc: tuple[str, int]

    def memory(self, field_name: str) -> int:
        """The server's ``VmRSS`` or ``VmHWM``, in KiB (0 once it has died)."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except FileNotFoundError:
            return 0
        for line in status.splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1])
        return 0  # a zombie: it died

    def alive(self) -> bool:
        if self.process.poll() is not None:
            return False
        try:
            return httpx.get(f"{self.http}/_health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False


def start(source: Path, data: Path) -> Server:
    out = data.with_suffix(".out")
    env = checkouts.env(source, {k: v for k, v in os.environ.items() if not k.startswith("DOTDO_")})
    env["PYTHONUNBUFFERED"] = "1"
    with out.open("wb") as stdout:
        process = subprocess.Popen(
            [sys.executable, "-m", "dotdo", "serve", "--workers", "1", "--port", "0", "--data", str(data), str(HERE / "hostile_kinds.py")],
            stdout=stdout,
            stderr=subprocess.STDOUT,
            cwd=data.parent,
            env=env,
        )
    deadline = time.monotonic() + 30
    while "stop: Ctrl-C" not in out.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"dotdo serve did not start: {out.read_text()}")
        time.sleep(0.05)
    lines = out.read_text().splitlines()
    http = next(line.split("http: ", 1)[1].split()[0] for line in lines if "http: " in line)
    rpc = next(line.split("rpc:  ", 1)[1].split()[0] for line in lines if "rpc:  " in line)
    host, port = rpc.removeprefix("tcp://").rsplit(":", 1)
    time.sleep(0.5)  # let start-up allocations settle before the idle reading
    return Server(process, http, (host, int(port)))


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


# -- the attacks (each returns a short note of what happened) --------------------------

HELLO = wire.encode(wire.Hello(wire.VERSION, None))


async def _connect(server: Server, *, hello: bool) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    await sock.connect(server.rpc)
    if hello:
        await sock.send(HELLO)
        await sock.recv(256)
    return sock


def _reset(sock: trio.socket.SocketType) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def _send_until_stalled(
    sock: trio.socket.SocketType, chunks: Callable[[], bytes | None], stall: float = 2.0, seconds: float = 60.0
) -> int:
    """Send what ``chunks()`` gives until it gives None, the peer closes, it takes
    nothing for ``stall`` seconds, or ``seconds`` have passed; returns the bytes sent."""
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (chunk := chunks()) is not None:
        view = memoryview(chunk)
        while view:
            with trio.move_on_after(stall) as waited:
                try:
                    count = await sock.send(view)
                except OSError:
                    return sent
            if waited.cancelled_caught:
                return sent
            sent += count
            view = view[count:]
    return sent


async def nohello(server: Server, connections: int) -> str:
    frame_size = 15 * MIB
    body = b"\0" * MIB
    refused = dropped = 0

    async def one() -> None:
        nonlocal refused, dropped
        try:
            sock = await _connect(server, hello=False)
            await sock.send(struct.pack(">I", frame_size))
            answer: bytes | None = None
            with trio.move_on_after(1.0):
                answer = await sock.recv(4096)  # an error frame at once: refused at the length
        except OSError:  # the server is gone
            return
        refused += bool(answer)
        dropped += answer == b""  # closed unanswered: an old handshake past the cap
        parts = iter([body] * 15)
        await _send_until_stalled(sock, lambda: next(parts, None), stall=3.0)
        sock.close()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(one)
    return f"{connections} connections: {refused} refused as soon as their length arrived, {dropped} dropped unanswered"


async def pings(server: Server, connections: int) -> str:
    sock = await _connect(server, hello=True)
    batch = b"".join(wire.encode(wire.Ping(i)) for i in range(4096))
    limit = 150 * MIB
    total = 0

    def next_batch() -> bytes | None:
        nonlocal total
        if total >= limit:
            return None
        total += len(batch)
        return batch

    began = time.monotonic()
    sent = await _send_until_stalled(sock, next_batch, stall=10.0, seconds=60.0)
    _reset(sock)
    return f"{sent / MIB:.1f} MiB of pings taken in {time.monotonic() - began:.0f} s (until 10 s without reading, 60 s or 150 MiB)"


async def bigcalls(server: Server, connections: int) -> str:
    sock = await _connect(server, hello=True)
    payload = values.pack([[b"b" * (8 * MIB), 5.0], {}])
    frames = iter([wire.encode(wire.Call(i, id_from_name("Sink", f"s{i}"), [("hold", payload)])) for i in range(1, 61)])
    sent = await _send_until_stalled(sock, lambda: next(frames, None))
    _reset(sock)
    return f"{sent / MIB:.0f} MiB of 480 MiB of calls taken before the server stopped reading"


async def silent(server: Server, connections: int) -> str:
    socks = [await _connect(server, hello=False) for _ in range(256)]
    from dotdo.client import connect
    from dotdo.storage.errors import DotdoError

    began = time.perf_counter()
    try:
        with trio.fail_after(30):
            async with connect(f"tcp://{server.rpc[0]}:{server.rpc[1]}") as S:
                await S.Sink("a").pid()
        note = f"a client past 256 silent sockets answered in {(time.perf_counter() - began) * 1000:.0f} ms"
    except DotdoError as exc:
        note = f"a client past 256 silent sockets refused after {(time.perf_counter() - began) * 1000:.0f} ms: {type(exc).__name__}"
    for sock in socks:
        sock.close()
    return note


async def resets(server: Server, connections: int) -> str:
    call = b"".join(wire.encode(wire.Call(i, id_from_name("Sink", f"r{i}"), [("hold", values.pack([[b"x", 0.05], {}]))])) for i in range(1, 9))
    pid = server.process.pid
    for _ in range(200):
        try:
            sock = await _connect(server, hello=True)
            await sock.send(call)
            await trio.sleep(0.001)
            _reset(sock)
        except OSError:
            return "the server went away during the resets"
    await trio.sleep(0.5)
    return f"200 resets: {'same pid, /_health answers' if server.alive() and server.process.pid == pid else 'the server died'}"


SCENARIOS: dict[str, Callable[[Server, int], Awaitable[str]]] = {
    "nohello": nohello,
    "pings": pings,
    "bigcalls": bigcalls,
    "silent": silent,
    "resets": resets,
}


def run_one(name: str, source: Path, connections: int) -> tuple[int, int, int, str, bool]:
    with tempfile.TemporaryDirectory(prefix="dotdo-hostile-") as tmp:
        server = start(source, Path(tmp) / "data")
        try:
            idle = server.memory("VmRSS")
            try:
                note = trio.run(SCENARIOS[name], server, connections)
            except (OSError, trio.TooSlowError) as exc:
                note = f"the attack failed: {exc!r}"
            alive = server.alive()
            peak = server.memory("VmHWM")
            time.sleep(1.0)
            after = server.memory("VmRSS")
        finally:
            stop(server)
    return idle, peak, after, note, alive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--vs", type=Path, action="append", default=[], help="another checkout to run the scenarios against")
    args = parser.parse_args()
    sources = [("this code", ROOT), *[(str(path), path.resolve()) for path in args.vs]]
    print(f"{'scenario':<9} {'code':<22} {'idle MiB':>8} {'peak MiB':>8} {'peak/idle':>9} {'after MiB':>9}  alive  what happened")
    for name in args.scenarios.split(","):
        for label, source in sources:
            idle, peak, after, note, alive = run_one(name, source, args.connections)
            ratio = f"{peak / idle:.2f}x" if peak else "-"
            print(f"{name:<9} {label[-22:]:<22} {idle / 1024:>8.0f} {peak / 1024:>8.0f} {ratio:>9} {after / 1024:>9.0f}  {'yes' if alive else 'NO':<5}  {note}", flush=True)


if __name__ == "__main__":
    main()
