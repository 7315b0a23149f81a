"""``dotdo serve --workers N``: a parent process that keeps N worker processes serving.

The parent opens every listening socket and keeps it for the whole run; workers inherit
theirs. Each worker has its own HTTP and transport sockets, bound to the shared ports
with ``SO_REUSEPORT`` (the kernel spreads new connections over them), and a unix socket
its peers reach it on. Each worker owns the actors the locator gives it
(``worker_of(id, N)``, ``dotdo.runtime.placement.locator``) and passes requests for the
others to their owner.

A worker that dies is started again with the same sockets: connections that arrive
meanwhile wait in its sockets' backlog (the parent holds them open), calls that were
running in it fail with ``ConnectionLost`` (retryable, HTTP 503), and its actors come
back with their state (it is on disk) on their first call.

The parent hands each worker its settings as a pickle on the worker's stdin and keeps
that pipe open: a worker whose stdin closes (the parent is gone) stops. The parent
stops the workers with SIGTERM (each drains like a single-process server) and kills
those still running after the grace period.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import trio

from dotdo.auth import Tokens
from dotdo.banner import print_banner, url
from dotdo.options import ServeOptions
from dotdo.runtime.transport.connection import Connection
from dotdo.runtime.core.kinds import KindSpec, Registry
from dotdo.storage.errors import DotdoError

log = logging.getLogger("dotdo.workers")

BACKLOG = 1024
READY_TIMEOUT = 60.0
"""Seconds a worker has to start serving."""
RESTART_DELAY_MAX = 10.0
"""Longest wait before restarting a worker that keeps dying at once."""
STABLE_AFTER = 5.0
"""A worker that ran this long is restarted at once when it dies."""
KILL_AFTER = 5.0
"""Seconds past the shutdown grace before a worker still running is killed."""
WORKER_ENV = "DOTDO_WORKER"
"""Set in every worker's environment (so that a worker cannot start workers)."""

_LENGTH = struct.Struct(">I")


def default_workers() -> int:
    """The cores this process may run on (``dotdo serve``'s default worker count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one worker is told by the parent (pickled on its stdin)."""

    index: int
    workers: int
    sources: list[str]
    kind_names: list[str] | None
    options: ServeOptions
    http_fd: int
    rpc_fd: int | None
    peer_fd: int
    peer_paths: list[str]
    secret: str
    log_level: str = "WARNING"


def kind_sources(kinds: Iterable[type | KindSpec]) -> tuple[list[str], list[str]]:
    """Where a worker finds ``kinds``: modules to import (dotted names, or the file of a
    module loaded from a path or run as a script) and the kinds' qualified names.

    Raises:
        DotdoError: A kind is not a class defined in a module a worker can import.
    """
    sources: list[str] = []
    names: list[str] = []
    for kind in kinds:
        if not isinstance(kind, type):
            raise DotdoError(f"--workers needs actor kinds as classes defined in modules, not {kind!r}")
        module = sys.modules.get(kind.__module__)
        file = getattr(module, "__file__", None)
        if kind.__module__ == "__main__" or kind.__module__.startswith("dotdo_user_"):
            if file is None:
                raise DotdoError(f"--workers: {kind.__qualname__} is defined where a worker cannot import it from")
            source = str(Path(file).resolve())
        else:
            source = kind.__module__
        if "<locals>" in kind.__qualname__:
            raise DotdoError(f"--workers: {kind.__qualname__} is defined inside a function; define it at module level")
        if source not in sources:
            sources.append(source)
        names.append(kind.__qualname__)
    return sources, names


# -- sockets ---------------------------------------------------------------------------


@dataclass
class _Sockets:
    """Every socket the workers serve on, held by the parent for the whole run."""

    http: list[socket.socket] = field(default_factory=list)
    rpc: list[socket.socket] = field(default_factory=list)
    peer: list[socket.socket] = field(default_factory=list)
    peer_paths: list[str] = field(default_factory=list)
    rundir: Path | None = None

    def close(self) -> None:
        for sock in [*self.http, *self.rpc, *self.peer]:
            sock.close()
        if self.rundir is not None:
            shutil.rmtree(self.rundir, ignore_errors=True)

    def fds_of(self, index: int) -> tuple[int, int | None, int]:
        rpc = self.rpc[index].fileno() if self.rpc else None
        return self.http[index].fileno(), rpc, self.peer[index].fileno()


def _tcp_group(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets sharing one port (``SO_REUSEPORT``); port 0: a free
    one, the same for all."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    group: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            group.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind(address)
            address = sock.getsockname()  # the port picked for the first, for the others
            sock.listen(BACKLOG)
            sock.set_inheritable(True)
    except OSError:
        for sock in group:
            sock.close()
        raise
    return group


def _open_sockets(options: ServeOptions, count: int) -> _Sockets:
    sockets = _Sockets()
    try:
        sockets.http = _tcp_group(options.host, options.port, count)
        rpc_port = options.transport_port()
        if rpc_port is not None:
            sockets.rpc = _tcp_group(options.host, rpc_port, count)
        sockets.rundir = Path(tempfile.mkdtemp(prefix="dotdo-"))
        for index in range(count):
            path = str(sockets.rundir / f"w{index}.sock")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sockets.peer.append(sock)
            sock.bind(path)
            sock.listen(BACKLOG)
            sock.set_inheritable(True)
            sockets.peer_paths.append(path)
    except BaseException:
        sockets.close()
        raise
    return sockets


# -- the parent ------------------------------------------------------------------------


class WorkerFailed(DotdoError):
    """A worker could not start (its own error is on stderr)."""


class _Pool:
    """Keeps worker processes 0..n-1 running until ``stop``."""

    def __init__(self, specs: Sequence[WorkerSpec]) -> None:
        self.specs = specs
        self.stopping = False
        self.procs: dict[int, trio.Process] = {}

    async def keep(self, index: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run worker ``index`` and start it again whenever it dies. ``started`` once it
        first serves; a first start that fails is fatal (``WorkerFailed``)."""
        spec = self.specs[index]
        first = True
        quick_deaths = 0
        while True:
            began = trio.current_time()
            proc = await self._spawn(spec)
            try:
                up = await ready(spec, proc)
                if first:
                    if not up:
                        raise WorkerFailed(f"worker {index} did not start (exit status {proc.returncode}); see its error above")
                    first = False
                    task_status.started()
                await proc.wait()
            finally:
                if proc.returncode is None:  # cancelled: the parent is going away
                    with trio.CancelScope(shield=True):
                        await _stop(proc, 1.0)
                if proc.stdin is not None:
                    await proc.stdin.aclose()
                self.procs.pop(index, None)
            if self.stopping:
                return
            lived = trio.current_time() - began
            quick_deaths = 0 if lived >= STABLE_AFTER else quick_deaths + 1
            delay = 0.0 if quick_deaths == 0 else min(0.1 * 2**quick_deaths, RESTART_DELAY_MAX)
            print(
                f"dotdo: worker {index} (pid {proc.pid}) exited with {_status(proc.returncode)}; "
                f"restarting{f' in {delay:.1f} s' if delay else ''}",
                file=sys.stderr,
                flush=True,
            )
            await trio.sleep(delay)

    async def _spawn(self, spec: WorkerSpec) -> trio.Process:
        fds = [fd for fd in (spec.http_fd, spec.rpc_fd, spec.peer_fd) if fd is not None]
        env = dict(os.environ, **{WORKER_ENV: str(spec.index)})
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "dotdo.worker"],
            stdin=subprocess.PIPE,
            pass_fds=fds,
            env=env,
        )
        self.procs[spec.index] = proc
        payload = pickle.dumps(spec)
        assert proc.stdin is not None
        try:
            await proc.stdin.send_all(_LENGTH.pack(len(payload)) + payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # it died already: ready() sees it
        return proc

    def kill(self) -> None:
        """SIGKILL every worker still running."""
        self.stopping = True
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.kill()

    async def stop(self, grace: float) -> None:
        """SIGTERM every worker, wait up to ``grace`` + KILL_AFTER, kill the rest."""
        self.stopping = True
        async with trio.open_nursery() as nursery:
            for proc in list(self.procs.values()):
                nursery.start_soon(_stop, proc, grace + KILL_AFTER)


async def ready(spec: WorkerSpec, proc: trio.Process) -> bool:
    """Whether the worker came up: it answers on its peer socket (which it opens last)
    before it exits or ``READY_TIMEOUT`` passes."""
    answered = False
    async with trio.open_nursery() as nursery:

        async def exited() -> None:
            await proc.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(exited)
        with trio.move_on_after(READY_TIMEOUT):
            try:
                conn = await Connection.open_unix(
                    spec.peer_paths[spec.index], token=spec.secret, connect_timeout=READY_TIMEOUT
                )
                await conn.aclose()
                answered = True
            except DotdoError:  # gone, refusing, or broken mid-handshake: not ready
                pass
        nursery.cancel_scope.cancel()
    return answered


async def _stop(proc: trio.Process, wait: float) -> None:
    """SIGTERM ``proc``; SIGKILL it if it still runs ``wait`` seconds later."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    with trio.move_on_after(wait):
        await proc.wait()
        return
    print(f"dotdo: worker pid {proc.pid} did not stop in time; killing it", file=sys.stderr, flush=True)
    proc.kill()
    await proc.wait()


def _status(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


async def serve_workers(
    kinds: Sequence[type | KindSpec],
    options: ServeOptions,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None,
    out: TextIO,
    log_level: str = "WARNING",
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``options.workers`` worker processes serving ``kinds`` until
    ``shutdown_trigger`` returns (or SIGINT or SIGTERM comes), then stop them
    gracefully."""
    if os.environ.get(WORKER_ENV):
        raise DotdoError(
            "a worker tried to start workers: guard the script's serve()/run() call with "
            "`if __name__ == \"__main__\":`"
        )
    count = options.workers
    registry = Registry(kinds)  # refuse bad kinds here, once, not in every worker
    sources, names = kind_sources(kinds)
    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    worker_options = dataclasses.replace(options, data_dir=data_dir)
    sockets = _open_sockets(options, count)
    if options.cluster and options.advertise is None and sockets.rpc:
        # Every worker listens on the one transport port: the node's, for the others.
        port = sockets.rpc[0].getsockname()[1]
        host = f"[{options.host}]" if ":" in options.host else options.host
        worker_options = dataclasses.replace(worker_options, advertise=f"{host}:{port}")
    secret = secrets.token_urlsafe(32)
    try:
        specs = []
        for index in range(count):
            http_fd, rpc_fd, peer_fd = sockets.fds_of(index)
            specs.append(
                WorkerSpec(index, count, sources, names, worker_options, http_fd, rpc_fd, peer_fd, sockets.peer_paths, secret, log_level)
            )
        pool = _Pool(specs)
        # The parent holds SIGINT and SIGTERM for its whole life: the first (or the
        # trigger) stops the workers gracefully, another one kills them at once.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                for index in range(count):
                    await nursery.start(pool.keep, index)
                http_urls = [url("http", sockets.http[0].getsockname())]
                rpc_urls = [url("tcp", sock.getsockname()) for sock in sockets.rpc[:1]]
                print_banner(
                    out,
                    registry.namespaces,
                    http_urls,
                    rpc_urls,
                    tokens=Tokens(options.token, options.admin_token),
                    host=options.host,
                    data_dir=data_dir,
                    durability=options.durability,
                    read_only=options.read_only,
                    workers=count,
                )
                task_status.started(http_urls)
                async with trio.open_nursery() as waiting:

                    async def first_signal() -> None:
                        await signals.__anext__()
                        waiting.cancel_scope.cancel()

                    async def trigger() -> None:
                        await shutdown_trigger()
                        waiting.cancel_scope.cancel()

                    waiting.start_soon(first_signal)
                    if shutdown_trigger is not None:
                        waiting.start_soon(trigger)
                async with trio.open_nursery() as stopping:

                    async def again() -> None:
                        await signals.__anext__()
                        print("dotdo: stopping the workers now", file=sys.stderr, flush=True)
                        pool.kill()

                    stopping.start_soon(again)
                    # A cluster node's workers first hand its slots over (up to the drain timeout).
                    await pool.stop(options.shutdown_grace + (options.drain_timeout if options.cluster else 0.0))
                    stopping.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
    finally:
        sockets.close()
    print("dotdo stopped: every database closed", file=out, flush=True)


def read_spec(stream: Any) -> WorkerSpec:
    """The spec the parent wrote on a worker's stdin."""
    header = stream.read(_LENGTH.size)
    if len(header) != _LENGTH.size:
        raise DotdoError("dotdo.worker is started by `dotdo serve --workers N`, not by hand")
    (length,) = _LENGTH.unpack(header)
    payload = stream.read(length)
    spec = pickle.loads(payload)
    if not isinstance(spec, WorkerSpec):
        raise DotdoError("dotdo.worker got something other than a worker spec")
    return spec
