"""Connection resets: a client that resets its TCP connection ends that connection and
nothing else (issue 17).

A real server (``python -m dotdo serve``, one worker or two, in a process group of its
own) serves ``reset_kinds.py``. Raw clients reset transport connections (``SO_LINGER``
0, then close: the kernel sends an RST instead of a FIN) at every stage of their life:
before the hello and in the middle of it, right after the welcome, in the middle of a
call frame, with slow calls in flight, during pipelines, and during fetch frames that
the worker they reached passes on to the other one (which worker holds a connection is
read from ``/proc``). A ``dotdo.connect`` client with 64 calls in flight is killed
with SIGKILL, and HTTP connections are reset in the middle of a request body and while
a slow ``fetch`` runs.

Well-behaved clients (HTTP, and a ``dotdo.connect`` connection) call all through;
after every stage, the same processes serve (none died or was restarted), those
clients have seen no error, ``/_health`` answers and stderr holds no traceback.
``pytest -s`` prints how many resets each stage made.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from dotdo import connect
from dotdo.runtime.core import values
from dotdo.runtime.transport import wire
from dotdo.runtime.core.ids import ActorId, resolve
from tests.dotdo.rawhttp import request as http_request
from tests.dotdo.serving import Served, dotdo_serve_group, environment, group_members, owned_by, post_whole, rpc_url

KINDS = str(Path(__file__).with_name("reset_kinds.py"))

LINGER_ZERO = struct.pack("ii", 1, 0)
"""``SO_LINGER`` on with a zero timeout: closing the socket resets the connection."""
HELLO = wire.encode(wire.Hello(wire.VERSION, None))
SLOW = 0.3
"""Seconds a slow call or fetch takes: every reset lands before it ends."""
PAUSE = (0.02, 0.15)
"""Seconds between sending requests and the reset: uniform in this range (the server
has read the requests and started them by then)."""
EACH = 8
"""Resets of each kind in a stage."""
FORWARDED_EACH = 4
"""Resets during forwarded fetches wanted per worker the connection reached."""
MAX_LANDING_TRIES = 40
"""Connections made at most to get ``FORWARDED_EACH`` on each worker (the kernel
picks the worker of each connection)."""
KILLED_CLIENTS, KILLED_CLIENT_CALLS = 2, 64
KILLED_CLIENT_CALL = 0.1
"""Seconds the first call of a killed client takes (each next one 5 ms more)."""
STEADY_TASKS = 2
"""Well-behaved tasks of each kind (HTTP, transport)."""
SETTLE = 0.2
"""Seconds given after a stage for a process that is going to die to do so."""
STAGE_TIMEOUT = 20
HANDSHAKE_TIMEOUT = 5
BAD_SIGNS = ("Traceback", "ExceptionGroup", "exited with", "restarting")


@dataclass
class Target:
    """The server under test, and what the stages need to know about it."""

    served: Served
    workers: int
    rng: random.Random
    rpc_port: int
    http_port: int
    names: list[list[str]]
    """Sleeper names owned by each worker."""
    worker_of_pid: dict[int, int]
    """Each worker process's index (with one worker: the server process, 0)."""
    request_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def spread(self, count: int) -> list[str]:
        """``count`` names, owned by the workers in turn."""
        return [self.names[i % self.workers][i // self.workers % len(self.names[0])] for i in range(count)]

    def next_id(self) -> int:
        return next(self.request_ids)

    async def pause(self) -> None:
        await trio.sleep(self.rng.uniform(*PAUSE))


# -- raw transport clients -------------------------------------------------------------


def reset(stream: trio.SocketStream) -> None:
    """Close ``stream`` with a TCP reset."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
    stream.socket.close()


@asynccontextmanager
async def resetting(port: int, *, welcome: bool, graceful: bool = False) -> AsyncIterator[trio.SocketStream]:
    """A raw connection to 127.0.0.1:``port`` (past the welcome if ``welcome``), reset
    when the block ends (closed normally if ``graceful``)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        if welcome:
            await stream.send_all(HELLO)
            answer: wire.Message | None = None
            with trio.move_on_after(HANDSHAKE_TIMEOUT):
                [answer] = await read_messages(stream, 1)
            assert answer is not None, f"no welcome within {HANDSHAKE_TIMEOUT} s (a worker restarting?)"
            assert isinstance(answer, wire.Welcome), answer
        yield stream
    finally:
        if graceful:
            await stream.aclose()
        else:
            reset(stream)


async def read_messages(stream: trio.SocketStream, count: int) -> list[wire.Message]:
    """The next ``count`` frames from the server (several may come in one read)."""
    decoder = wire.FrameDecoder()
    messages: list[wire.Message] = []
    while len(messages) < count:
        data = await stream.receive_some(65536)
        assert data, "the server closed the connection"
        messages.extend(wire.decode(body) for body in decoder.feed(data))
    return messages


def call_frame(target: Target, name: str, steps: list[tuple[str, list[object]]]) -> bytes:
    """A call (several steps: a pipeline) to Sleeper ``name``; each step ``(method, args)``."""
    packed = [(method, values.pack([args, {}])) for method, args in steps]
    return wire.encode_call(target.next_id(), resolve("Sleeper", name), packed, None, None, ())


def fetch_frame(target: Target, actor: ActorId, seconds: float) -> bytes:
    """A fetch frame: GET the actor's ``fetch``, answered after ``seconds``."""
    http = wire.HttpRequest("GET", f"/Sleeper/{actor.hex}/slow", f"seconds={seconds}".encode(), [], b"")
    return wire.encode(wire.Fetch(target.next_id(), actor, http, None))


def pipeline_steps(target: Target, start: int) -> list[tuple[str, list[object]]]:
    """Three steps that hop from actor to actor (across workers), then a slow call."""
    hops = target.spread(start + 3)[start:]
    return [("next", [name, 0.02]) for name in hops] + [("slow", [SLOW])]


def holder_of(stream: trio.SocketStream, pids: Iterable[int]) -> int:
    """Which of ``pids`` holds the server end of ``stream`` (Linux: that socket's inode
    from /proc/net/tcp, looked for among each process's descriptors)."""
    here, there = stream.socket.getsockname()[1], stream.socket.getpeername()[1]
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == there and int(fields[2].rsplit(":", 1)[1], 16) == here:
            inodes.add(f"socket:[{fields[9]}]")
    holders = []
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    holders.append(pid)
            except OSError:
                continue
    assert len(holders) == 1, f"the server end of port {here} is held by {holders}"
    return holders[0]


# -- the stages: each makes its resets and returns how many ------------------------------


async def before_hello(target: Target) -> int:
    """Connect and reset; also after half a hello."""
    for _ in range(EACH):
        async with resetting(target.rpc_port, welcome=False):
            await trio.sleep(target.rng.uniform(0, 0.02))
        async with resetting(target.rpc_port, welcome=False) as stream:
            await stream.send_all(HELLO[: target.rng.randrange(1, len(HELLO))])
            await target.pause()
    return 2 * EACH


async def after_welcome(target: Target) -> int:
    for _ in range(EACH):
        async with resetting(target.rpc_port, welcome=True):
            pass
    return EACH


async def mid_frame(target: Target) -> int:
    """Reset with part of a call frame sent."""
    for i in range(EACH):
        frame = call_frame(target, target.spread(i + 1)[i], [("slow", [SLOW])])
        async with resetting(target.rpc_port, welcome=True) as stream:
            await stream.send_all(frame[: target.rng.randrange(1, len(frame))])
            await target.pause()
    return EACH


async def calls_in_flight(target: Target) -> int:
    """Reset with slow calls and events running, to actors of every worker."""
    for _ in range(EACH):
        frames = [call_frame(target, name, [("slow", [SLOW])]) for name in target.spread(8)]
        args = values.pack([[SLOW], {}])
        frames += [wire.encode(wire.Event(resolve("Sleeper", name), "slow", args)) for name in target.spread(2)]
        async with resetting(target.rpc_port, welcome=True) as stream:
            await stream.send_all(b"".join(frames))
            await target.pause()
    return EACH


async def pipelines(target: Target) -> int:
    """Reset with pipelines running, their steps hopping between the workers' actors."""
    for _ in range(EACH):
        frames = [call_frame(target, target.spread(1)[0], pipeline_steps(target, start)) for start in range(3)]
        async with resetting(target.rpc_port, welcome=True) as stream:
            await stream.send_all(b"".join(frames))
            await target.pause()
    return EACH


async def forwarded_fetches(target: Target) -> int:
    """Reset with slow fetch frames running for actors the connection's worker does not
    own (with one worker: its own), until each worker has had ``FORWARDED_EACH``."""
    landed: Counter[int] = Counter()
    for _ in range(MAX_LANDING_TRIES):
        async with resetting(target.rpc_port, welcome=True) as stream:
            worker = target.worker_of_pid[holder_of(stream, target.worker_of_pid)]
            other = target.names[(worker + 1) % target.workers]
            frames = [fetch_frame(target, resolve("Sleeper", name), SLOW) for name in other[:4]]
            await stream.send_all(b"".join(frames))
            await target.pause()
        landed[worker] += 1
        if all(landed[w] >= FORWARDED_EACH for w in range(target.workers)):
            break
    assert all(landed[w] >= FORWARDED_EACH for w in range(target.workers)), f"connections reached workers {landed}"
    return landed.total()


KILLED_CLIENT = """
import sys, trio
from dotdo.runtime.transport.connection import Connection  # what dotdo.connect opens, without importing all of dotdo

async def main(port, names, calls, seconds):
    async with await Connection.open("127.0.0.1", port) as S, trio.open_nursery() as nursery:
        for i in range(calls):
            nursery.start_soon(S.Sleeper(names[i % len(names)]).slow, seconds + 0.005 * i)
        await trio.sleep(0.05)
        print("in flight", flush=True)
        await trio.sleep_forever()

trio.run(main, int(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3]), float(sys.argv[4]))
"""


async def killed_clients(target: Target) -> int:
    """A ``dotdo.connect`` client (``Connection``) in a child process, killed with its
    calls in flight: first before any reply came (its kernel closes the connection
    with a FIN), then stopped while replies come in and killed with them unread (with
    data unread, the kernel resets the connection)."""
    names = ",".join(target.spread(16))
    for round_ in range(KILLED_CLIENTS):
        args = [sys.executable, "-c", KILLED_CLIENT, str(target.rpc_port), names, str(KILLED_CLIENT_CALLS), str(KILLED_CLIENT_CALL)]
        proc = await trio.lowlevel.open_process(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=environment())
        assert proc.stdout is not None
        async with proc.stdout:
            try:
                said = b""
                while not said.endswith(b"\n"):
                    chunk = await proc.stdout.receive_some(100)
                    assert chunk, f"the client exited with {await proc.wait()} before its calls were in flight"
                    said += chunk
                assert said == b"in flight\n"
                if round_ % 2:
                    proc.send_signal(signal.SIGSTOP)
                    await trio.sleep(SLOW)  # replies arrive, and wait unread
                else:
                    await trio.sleep(target.rng.uniform(0, 0.04))
            finally:
                proc.kill()
                await proc.wait()
    return KILLED_CLIENTS


async def http_cut_bodies(target: Target) -> int:
    """Reset HTTP requests (an RPC call, a fetch) in the middle of their bodies."""
    for i in range(EACH):
        name = target.spread(i + 1)[i]
        body = json.dumps({"args": [SLOW], "pad": "x" * 4000}).encode()
        path = f"/_rpc/Sleeper/{name}/slow" if i % 2 else f"/Sleeper/{name}/up?seconds={SLOW}"
        raw = http_request("POST", path, body, headers=[("Content-Type", "application/json")], close=False)
        async with resetting(target.http_port, welcome=False) as stream:
            await stream.send_all(raw[: target.rng.randrange(len(raw) - len(body) + 1, len(raw))])
            await target.pause()
    return EACH


async def http_slow_fetches(target: Target) -> int:
    """Reset HTTP connections while the actor's ``fetch`` runs (on either worker)."""
    for i in range(EACH):
        name = target.spread(i + 1)[i]
        async with resetting(target.http_port, welcome=False) as stream:
            await stream.send_all(http_request("GET", f"/Sleeper/{name}/slow?seconds={SLOW}", close=False))
            await target.pause()
    return EACH


STAGES: list[tuple[str, Callable[[Target], Awaitable[int]]]] = [
    ("before the hello", before_hello),
    ("after the welcome", after_welcome),
    ("mid-frame", mid_frame),
    ("calls in flight", calls_in_flight),
    ("pipelines", pipelines),
    ("forwarded fetches", forwarded_fetches),
    ("killed dotdo.connect clients", killed_clients),
    ("HTTP bodies cut off", http_cut_bodies),
    ("HTTP slow fetches", http_slow_fetches),
]


# -- the well-behaved clients -----------------------------------------------------------


@dataclass
class Steady:
    """What the well-behaved clients did: calls answered, and every error they met."""

    calls: int = 0
    errors: list[str] = field(default_factory=list)


async def keep_hitting(label: str, hit: Callable[[], Awaitable[Any]], steady: Steady) -> None:
    """Call ``hit`` until cancelled; each call must answer one more than the last (an
    actor that counts its hits, which only this task calls)."""
    hits = 0
    while True:
        try:
            got = await hit()
        except Exception as exc:  # any failure is what the suite reports
            steady.errors.append(f"{label}: {exc!r}")
            return
        hits += 1
        if got != hits:
            steady.errors.append(f"{label}: hit {hits} answered {got}")
            return
        steady.calls += 1
        await trio.sleep(0.005)


async def http_hit(client: httpx.AsyncClient, name: str) -> Any:
    # One chunk, no generator: the suite cancels these mid-request when it ends.
    response = await post_whole(client, f"/_rpc/Sleeper/{name}/hit", b"{}", {"content-type": "application/json"})
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    return response.json()["result"]


# -- the checks -------------------------------------------------------------------------


async def check_unharmed(target: Target, pids: set[int], steady: Steady) -> None:
    """The same processes serve, ``/_health`` answers, the well-behaved clients met no
    error, stderr is clean."""
    await trio.sleep(SETTLE)
    members = group_members(target.served.process.pid)
    assert members == pids, f"the server's processes went from {sorted(pids)} to {sorted(members)}"
    err = target.served.errors()
    assert not any(sign in err for sign in BAD_SIGNS), "the server's stderr is not clean"  # run_stages shows it
    assert not steady.errors, f"the well-behaved clients met errors: {steady.errors}"
    async with httpx.AsyncClient(base_url=target.served.url, timeout=10) as client:
        health = await client.get("/_health")
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text


async def run_stages(target: Target, pids: set[int], steady: Steady, made: Counter[str]) -> str | None:
    """Every stage, each followed by ``check_unharmed`` (the last one's is the check
    after all resets); what went wrong, and where (None: nothing)."""
    for stage, run in STAGES:
        try:
            with trio.fail_after(STAGE_TIMEOUT):
                made[stage] = await run(target)
                await check_unharmed(target, pids, steady)
        except (OSError, AssertionError, trio.BrokenResourceError, trio.TooSlowError) as exc:  # refused, reset: the server is gone
            return f"{stage}: {type(exc).__name__}: {exc}\nthe server's stderr:\n{target.served.errors()}"
    return None


async def check_raw_frames_work(target: Target) -> None:
    """The frames the stages send, left to run, are answered with replies (so the
    resets hit calls that run, not frames the server refuses)."""
    name = target.spread(1)[0]
    frames = [
        call_frame(target, name, [("slow", [0.01])]),
        call_frame(target, name, pipeline_steps(target, 0)[:-1] + [("slow", [0.01])]),
        *(fetch_frame(target, resolve("Sleeper", names[0]), 0.01) for names in target.names),
    ]
    async with resetting(target.rpc_port, welcome=True, graceful=True) as stream:
        await stream.send_all(b"".join(frames))
        answers = await read_messages(stream, len(frames))
    assert all(isinstance(answer, wire.Reply) for answer in answers), answers


async def worker_pids(url: str, names: list[list[str]]) -> dict[int, int]:
    """Each worker's pid, from an actor it owns."""
    async with connect(url) as S:
        return {await S.Sleeper(owned[0]).pid(): worker for worker, owned in enumerate(names)}


async def target_of(served: Served, workers: int) -> Target:
    """What the stages need to know about ``served``, a server of ``workers`` workers."""
    names = [owned_by("Sleeper", worker, 8, workers, prefix="s") for worker in range(workers)]
    pids = group_members(served.process.pid)
    assert len(pids) == (1 if workers == 1 else 1 + workers)
    by_pid = await worker_pids(rpc_url(served), names)
    assert set(by_pid) == (pids if workers == 1 else pids - {served.process.pid})
    rpc_port, http_port = (int(url.rsplit(":", 1)[1]) for url in (rpc_url(served), served.url))
    return Target(served, workers, random.Random(f"resets {workers}"), rpc_port, http_port, names, by_pid)


# -- the suite --------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
async def test_connection_resets_at_every_stage_leave_the_server_serving(tmp_path: Path, workers: int) -> None:
    args = ["--data", str(tmp_path / "data"), "--workers", str(workers), KINDS]
    async with dotdo_serve_group(tmp_path, "serve", *args) as served:
        with trio.fail_after(STAGE_TIMEOUT):
            target = await target_of(served, workers)
        pids = group_members(served.process.pid)
        steady, made = Steady(), Counter[str]()
        # A fresh HTTP connection for each request, so that with two workers both take them.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with (
            httpx.AsyncClient(base_url=served.url, timeout=10, limits=limits) as client,
            connect(rpc_url(served)) as S,
            trio.open_nursery() as nursery,
        ):
            for i in range(STEADY_TASKS):
                nursery.start_soon(keep_hitting, f"HTTP steady-{i}", partial(http_hit, client, f"steady-{i}"), steady)
                nursery.start_soon(keep_hitting, f"transport steady-rpc-{i}", S.Sleeper(f"steady-rpc-{i}").hit, steady)
            with trio.fail_after(STAGE_TIMEOUT):
                await check_raw_frames_work(target)
            failure = await run_stages(target, pids, steady, made)
            nursery.cancel_scope.cancel()
        assert failure is None, f"the resets {failure}"
        assert not steady.errors and steady.calls > 0, steady.errors
        print(
            f"\n{workers} worker(s): {made.total()} resets ({', '.join(f'{n} {s}' for s, n in made.items())}); "
            f"{steady.calls} well-behaved calls, none failed"
        )


async def test_a_worker_killed_with_replies_unread_leaves_the_other_serving(tmp_path: Path) -> None:
    """A worker that dies with another worker's replies unread on their link resets
    that link (as a client's reset does): the other worker loses that connection only,
    and the parent restarts the dead one."""
    args = ["--data", str(tmp_path / "data"), "--workers", "2", KINDS]
    async with dotdo_serve_group(tmp_path, "serve", *args) as served:
        with trio.fail_after(STAGE_TIMEOUT):
            target = await target_of(served, 2)
            async with resetting(target.rpc_port, welcome=True) as stream:
                victim = holder_of(stream, target.worker_of_pid)
                dead = target.worker_of_pid[victim]
                frames = [call_frame(target, name, [("slow", [0.05])]) for name in target.names[1 - dead]]
                await stream.send_all(b"".join(frames))  # passed on to the other worker
                await trio.sleep(0.02)
                os.kill(victim, signal.SIGSTOP)
                await trio.sleep(SLOW)  # the other worker's replies arrive, and wait unread
                os.kill(victim, signal.SIGKILL)
            while victim in group_members(served.process.pid) or len(group_members(served.process.pid)) < 3:
                await trio.sleep(0.05)  # until the parent has restarted the victim
            after = await worker_pids(rpc_url(served), target.names)
        survivor = next(pid for pid, worker in target.worker_of_pid.items() if worker != dead)
        assert after.get(survivor) == 1 - dead and victim not in after, f"worker pids went from {target.worker_of_pid} to {after}"
        err = served.errors()
        [exit_line] = [line for line in err.splitlines() if "exited with" in line]
        assert exit_line.startswith(f"dotdo: worker {dead} (pid {victim}) exited with signal SIGKILL; restarting"), err
        assert "Traceback" not in err and "ExceptionGroup" not in err, err
