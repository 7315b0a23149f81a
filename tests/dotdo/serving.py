"""A real dotdo server on 127.0.0.1 (port 0) for the duration of a test: in this
process (``serving``), or as ``python -m dotdo serve`` (``dotdo_serve``)."""

from __future__ import annotations

import io
import os
import resource
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from dotdo import ServeOptions, serve
from dotdo.runtime.core.ids import resolve
from dotdo.runtime.placement.locator import worker_of


@dataclass
class Server:
    url: str
    client: httpx.AsyncClient
    out: io.StringIO
    data_dir: Path
    stop: trio.Event


@asynccontextmanager
async def serving(kinds: Iterable[type], data_dir: Path, **options: Any) -> AsyncIterator[Server]:
    """Serve ``kinds`` until the block ends (or ``server.stop`` is set); the server has
    fully stopped (every database closed) when this returns."""
    opts = replace(ServeOptions(host="127.0.0.1", port=0, data_dir=data_dir, max_active=64), **options)
    out = io.StringIO()
    stop = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                partial(serve, list(kinds), opts, shutdown_trigger=stop.wait, out=out)
            )
            assert len(binds) == 1 and binds[0].startswith("http://127.0.0.1:")
            async with httpx.AsyncClient(base_url=binds[0], timeout=10) as client:
                try:
                    yield Server(binds[0], client, out, data_dir.resolve(), stop)
                finally:
                    stop.set()


def open_files_under(directory: Path) -> list[str]:
    """Paths under ``directory`` this process has open (Linux: /proc/self/fd)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


# -- python -m dotdo, as subprocesses ----------------------------------------------------

STARTUP_TIMEOUT = 30
STOP_TIMEOUT = 15
# The dotdo command the helpers run: this interpreter's; a test of an installation gives
# that installation's console script instead.
DOTDO: tuple[str, ...] = (sys.executable, "-m", "dotdo")


def environment() -> dict[str, str]:
    """This process's environment without the DOTDO_ variables a developer's shell may
    hold (a server URL, tokens): each test says what it wants."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOTDO_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Served:
    process: trio.Process
    url: str
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text()

    def errors(self) -> str:
        return self.stderr.read_text()


def rpc_url(served: Served) -> str:
    """The transport address ``dotdo serve`` printed (``tcp://HOST:PORT``)."""
    [line] = [line for line in served.output().splitlines() if "rpc:  " in line]
    return line.split("rpc:  ", 1)[1].split()[0]


def owned_by(namespace: str, worker: int, count: int, workers: int = 2, prefix: str = "p") -> list[str]:
    """``count`` names (``PREFIX<n>``) whose actors of ``namespace`` worker ``worker``
    of ``workers`` owns."""
    names: list[str] = []
    i = 0
    while len(names) < count:
        name = f"{prefix}{i}"
        if worker_of(resolve(namespace, name).hex, workers) == worker:
            names.append(name)
        i += 1
    return names


async def wait_for_url(process: trio.Process, stdout: Path, stderr: Path, host: str = "127.0.0.1") -> str:
    """The HTTP URL a starting ``dotdo serve`` prints (its output in ``stdout``), once
    its banner is complete (on ``host``: its ``--host``); fails if the process exits
    first."""
    with trio.fail_after(STARTUP_TIMEOUT):
        while "stop: Ctrl-C" not in stdout.read_text():
            if process.poll() is not None:
                raise AssertionError(f"dotdo serve exited with {process.returncode}: {stderr.read_text()}")
            await trio.sleep(0.02)
    [url] = [line.split("http: ", 1)[1].split()[0] for line in stdout.read_text().splitlines() if "http: " in line]
    assert url.startswith(f"http://{host}:") and not url.endswith(":0")
    return url


def open_file_limit(limit: int | tuple[int, int] | None) -> Callable[[], None] | None:
    """What a child process runs before it starts to have ``limit`` as its open-file
    limit (``ulimit -n``): a number is the soft and the hard limit (so the server
    cannot raise it for its WebSockets), a pair is (soft, hard); None: nothing, it keeps
    this process's limit."""
    if limit is None:
        return None
    soft, hard = (limit, limit) if isinstance(limit, int) else limit

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return lower


@asynccontextmanager
async def dotdo_serve(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    nofile: int | tuple[int, int] | None = None,
    program: Sequence[str] = DOTDO,
) -> AsyncIterator[Served]:
    """``python -m dotdo serve --port 0 ARGS`` (or ``program``'s) in ``tmp_path`` until it
    printed its URL; killed on exit if it is still running. One worker process unless
    ARGS say ``--workers``; ``env`` adds environment variables, ``nofile`` sets its
    open-file limit."""
    stdout, stderr = tmp_path / "serve.out", tmp_path / "serve.err"
    process = await _open_serve(
        tmp_path, stdout, stderr, args, {**environment(), **(env or {})}, nofile=nofile, program=program
    )
    try:
        url = await wait_for_url(process, stdout, stderr)
        yield Served(process, url, stdout, stderr)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(STOP_TIMEOUT):
            await process.wait()


async def dotdo(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    nofile: int | tuple[int, int] | None = None,
    program: Sequence[str] = DOTDO,
) -> subprocess.CompletedProcess[bytes]:
    """``python -m dotdo ARGS`` (or ``program``'s), its output captured; ``env`` adds
    variables, ``nofile`` sets its open-file limit."""
    with trio.fail_after(STARTUP_TIMEOUT):
        return await trio.run_process(
            [*program, *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env={**environment(), **(env or {})},
            preexec_fn=open_file_limit(nofile),
        )


async def stop(served: Served, sig: signal.Signals) -> int:
    served.process.send_signal(sig)
    with trio.fail_after(STOP_TIMEOUT):
        return await served.process.wait()


# -- python -m dotdo serve in a process group of its own, for kill -9 ----------------


def group_environment(tmp_dir: Path) -> dict[str, str]:
    """``environment()`` with temporary files (the workers' socket directory) under
    ``tmp_dir``: a killed server cannot clean them up, and they stay inside the test's
    directory."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    return {**environment(), "TMPDIR": str(tmp_dir)}


async def spawn_group(
    run_dir: Path, name: str, *args: str, env: dict[str, str] | None = None, program: Sequence[str] = DOTDO
) -> tuple[trio.Process, Path, Path]:
    """Start ``python -m dotdo serve --port 0 ARGS`` (or ``program``'s: it must exec the
    server in its own process, as ``ip netns exec NS python -m dotdo`` does) in a session
    of its own (so ``kill_group`` reaches the server and every worker it starts), its
    output in ``run_dir/NAME.out`` and ``.err`` (returned with the process). One worker
    process unless ARGS say ``--workers``; ``env`` adds environment variables."""
    stdout, stderr = run_dir / f"{name}.out", run_dir / f"{name}.err"
    environ = {**group_environment(run_dir / "tmp"), **(env or {})}
    process = await _open_serve(run_dir, stdout, stderr, args, environ, new_session=True, program=program)
    return process, stdout, stderr


async def _open_serve(
    cwd: Path,
    stdout: Path,
    stderr: Path,
    args: tuple[str, ...],
    env: dict[str, str],
    *,
    new_session: bool = False,
    nofile: int | tuple[int, int] | None = None,
    program: Sequence[str] = DOTDO,
) -> trio.Process:
    """Start ``python -m dotdo serve --port 0 ARGS`` (or ``program``'s) in ``cwd``, its
    output in the two files; one worker process unless ARGS say ``--workers``;
    ``nofile``: its open-file limit."""
    workers = [] if "--workers" in args else ["--workers", "1"]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        return await trio.lowlevel.open_process(
            [*program, "serve", "--port", "0", *workers, *args],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=new_session,
            preexec_fn=open_file_limit(nofile),
        )


@asynccontextmanager
async def dotdo_serve_group(
    run_dir: Path, name: str, *args: str, env: dict[str, str] | None = None, program: Sequence[str] = DOTDO
) -> AsyncIterator[Served]:
    """``spawn_group`` until the server printed its URL (on ARGS' ``--host``, if they
    give one); the group is killed on exit if a process of it still runs."""
    process, stdout, stderr = await spawn_group(run_dir, name, *args, env=env, program=program)
    host = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
    try:
        url = await wait_for_url(process, stdout, stderr, host)
        yield Served(process, url, stdout, stderr)
    finally:
        if process.returncode is None or group_alive(process.pid):
            await kill_group(process)


def group_members(pgid: int) -> set[int]:
    """The processes of group ``pgid`` still running (zombies do not count; Linux)."""
    members = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ")".
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.add(int(entry))
    return members


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies do not count; Linux)."""
    return bool(group_members(pgid))


async def kill_group(process: trio.Process) -> None:
    """SIGKILL every process of ``process``'s group (a server started by
    ``spawn_group`` and its workers) at once, and wait until none is left."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    with trio.fail_after(STOP_TIMEOUT):
        await process.wait()
        while group_alive(process.pid):
            await trio.sleep(0.01)


class Body(httpx.AsyncByteStream):
    """A request body in one chunk, without an async generator: httpx's own is left
    unfinished when the connection breaks while it is sent, and trio warns
    (ResourceWarning, an error in this suite) when such a generator is collected."""

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        data, self._data = self._data, None
        if data is None:
            raise StopAsyncIteration
        return data


async def post_whole(client: httpx.AsyncClient, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """POST ``body`` as one chunk (``Body``): a request cancelled or cut off while it is
    sent leaves no async generator behind to warn when it is collected."""
    request = client.build_request("POST", path, content=body, headers=headers)
    request.stream = Body(body)
    return await client.send(request)
