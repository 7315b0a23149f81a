"""HTTP connections: hypercorn's trio server with a cap on how many are open at once.

hypercorn (0.18) accepts every connection the kernel hands it and has no setting to
limit them (pgjones/hypercorn#81). Each open connection holds a file descriptor, and
each active actor holds three (its file's lock, the database, its WAL); the default
``--max-active`` is what the open-file limit leaves once these connections, the
transport's and the rest are counted (``dotdo.runtime.transport.descriptors``). Without a cap, idle
connections could take every descriptor: ``accept`` would fail (trio retries every
0.1 s, logging an error each time) and, worse, actors could not open their databases
(calls then get ``Overloaded`` once idle actors were passivated to no avail).

``serve_http`` is ``hypercorn.trio.serve`` for a plain-text ASGI app (no TLS, no
QUIC: dotdo serves neither) with the accept loop of ``dotdo.runtime.transport.listening``, which takes one of
``max_connections`` slots before each ``accept`` and gives it back when the connection
has closed. Past the cap, new connections wait in the kernel's listen backlog
(hypercorn's ``backlog``, 100), and past that their handshakes go unanswered and the
clients retry them: a client waits, nobody gets an error, and the actors keep their
descriptors. Slots come back on their own: a connection idle between requests, or one
that never finishes its request line and headers, is closed after
``keep_alive_timeout``; one whose client stops sending after ``read_timeout``; a body
trickled in slowly is cut by the app's body deadline (``dotdo.bodies``).

Each connection is still served by hypercorn's own ``TCPServer`` (the same protocol
code, timeouts and graceful shutdown as ``hypercorn.trio.serve``); only the accept loop
is ours, and it contains each connection: one that fails (a reset hypercorn does not
expect, a bug) is closed and logged, and the others go on.
"""

from __future__ import annotations

import copy
import errno
import math
import os
import socket
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from hypercorn.utils import repr_socket_addr, wrap_app

from dotdo.runtime.transport.listening import accept_loop
from dotdo.runtime.transport.server import DEFAULT_MAX_CONNECTIONS  # the same cap for HTTP


async def serve_http(
    app: Any,
    config: Config,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI ``app`` on ``config.bind`` until ``shutdown_trigger`` returns, with
    at most ``max_connections`` connections open at once.

    ``task_status.started`` receives the bound URLs. On shutdown: stop accepting, close
    idle connections, and give requests in flight ``config.graceful_timeout`` seconds
    before they are cancelled (as ``hypercorn.trio.serve`` does).
    """
    if max_connections < 1:
        raise ValueError(f"max_connections must be at least 1, got {max_connections}")
    if config.ssl_enabled:
        raise ValueError("serve_http serves plain HTTP only")
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            sockets = config.create_sockets().insecure_sockets
            for sock in sockets:
                sock.listen(config.backlog)
            listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in sockets]
            binds = [f"http://{repr_socket_addr(sock.family, sock.getsockname())}" for sock in sockets]
            connection_config = copy.copy(config)  # reads are timed by ReadTimed instead
            connection_config.read_timeout = None
            handler = partial(
                _connection, wrapped, connection_config, config.read_timeout, context, ConnectionState(lifespan_state.copy())
            )
            slots = trio.Semaphore(max_connections)
            try:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(accept_loop, listener, handler, slots, connections, "an HTTP connection")
                    task_status.started(binds)
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
            finally:
                await context.terminated.set()  # idle connections close, none is kept alive
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 10
KEEPALIVE_COUNT = 6
"""TCP keepalive on a WebSocket's connection (seconds idle before the first probe,
between probes, probes unanswered): a client gone without a word (its machine off, its
network cut) is noticed by the kernel in about two minutes, at no cost to the process."""


class ReadTimed:
    """A connection's stream as hypercorn is given it (its own read timeout is off):
    each read bounded by ``--read-timeout``, a bound that ``lift`` removes at once, the
    read already waiting included, when the connection becomes a WebSocket (a quiet
    client is not a slow one). Hypercorn takes a read that times out (``TooSlowError``)
    as the end of the connection, as with its own."""

    __slots__ = ("stream", "socket", "_timeout", "_scope")

    def __init__(self, stream: trio.SocketStream, timeout: float | None) -> None:
        self.stream = stream
        self.socket = stream.socket
        self._timeout = timeout
        self._scope: trio.CancelScope | None = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._timeout is None:
            return await self.stream.receive_some(max_bytes)
        with trio.CancelScope(deadline=trio.current_time() + self._timeout) as scope:
            self._scope = scope
            try:
                return await self.stream.receive_some(max_bytes)
            finally:
                self._scope = None
        raise trio.TooSlowError

    def lift(self) -> None:
        self._timeout = None
        if self._scope is not None:
            self._scope.deadline = math.inf

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


class Upgraded:
    """What the app may do to the connection its task serves once it is a WebSocket
    (``upgraded``, set in the connection's task and seen by the app's)."""

    __slots__ = ("_timed", "_stream", "_lock")

    def __init__(self, server: TCPServer, timed: ReadTimed) -> None:
        self._timed = timed
        self._stream = timed.stream
        self._lock = server.send_lock

    async def send(self, data: bytes) -> None:
        """Write ``data`` (whole frames) in turn with hypercorn's own writes (its lock):
        a WebSocket's frames, encoded once for every socket a broadcast goes to, leave
        without a trip through the ASGI layers per message. What hypercorn's
        protocol_send does with raw data, without its shield: the writer is cancelled
        only once the connection is over, when a partial frame no longer matters; a
        broken connection raises here."""
        async with self._lock:
            await self._stream.send_all(data)

    def try_write(self, data: bytes) -> int:
        """Write what the socket's buffer takes of ``data`` now, without waiting; how
        many bytes (0 when it is full, or while hypercorn is writing to it).

        Raises:
            OSError: The connection is broken or closed.
        """
        if self._lock.locked():
            return 0
        fd = self._stream.socket.fileno()  # asked each time: -1 once closed, never a reused number
        if fd < 0:
            raise OSError(errno.EBADF, "the connection is closed")
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0

    def abort(self) -> None:
        """Cut the connection now (a client that reads nothing could hold a graceful
        close forever): whatever waits on it, reading or writing, is woken."""
        self._stream.socket.close()

    def keep_open(self) -> None:
        """The connection is a WebSocket now: no read timeout, TCP keepalive instead."""
        self._timed.lift()
        sock = self._stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL), ("TCP_KEEPCNT", KEEPALIVE_COUNT)):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


upgraded: ContextVar[Upgraded | None] = ContextVar("upgraded", default=None)
"""The connection the current task serves (None: not served by ``serve_http``)."""


async def _connection(
    app: Any, config: Config, read_timeout: float | None, context: WorkerContext, state: ConnectionState, stream: trio.SocketStream
) -> None:
    timed = ReadTimed(stream, read_timeout)
    server = TCPServer(app, config, context, state, timed)  # type: ignore[arg-type]  # a stream as hypercorn uses one
    upgraded.set(Upgraded(server, timed))
    await server.run()
