"""Serving: a supervisor behind the HTTP app on hypercorn's trio worker."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import trio
from hypercorn.config import Config as HypercornConfig

from dotdo.auth import Tokens
from dotdo.banner import print_banner, url
from dotdo.logs import ACCESS_FORMAT, access_logger
from dotdo.serve_lock import ServeLock, serving_lock
from dotdo.connections import serve_http
from dotdo.http import create_app, fetch_handler
from dotdo.http.websocket import relay_open
from dotdo.options import ServeOptions
from dotdo.workers import WorkerSpec, serve_workers
from dotdo.runtime.services.websockets import GOING_AWAY
from dotdo.runtime.transport.descriptors import (
    DEFAULT_MAX_WEBSOCKETS,
    descriptor_budget,
    peer_connections,
    raise_soft_limit,
    websocket_share,
)
from dotdo.runtime.core.kinds import KindSpec
from dotdo.runtime.transport.peers import PEER_INFLIGHT, PEER_INFLIGHT_BYTES, Peers
from dotdo.runtime.placement.node import ClusterNode, ClusterSettings
from dotdo.runtime.supervisor import Supervisor
from dotdo.runtime.transport.server import TransportOptions, TransportServer
from dotdo.storage.errors import DotdoError
from dotdo.storage.options import StorageOptions

log = logging.getLogger("dotdo.server")


def writable(data_dir: Path) -> bool:
    """Whether ``data_dir`` can be written (created, when it does not exist yet): a
    read-only file system or missing permissions say no."""
    if data_dir.exists():
        return os.access(data_dir, os.W_OK)
    try:
        data_dir.mkdir(parents=True)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise DotdoError(f"cannot create the data directory {data_dir}: {exc.strerror}") from None
        raise
    return True


async def wait_for_signal() -> None:
    """Return on the first SIGINT or SIGTERM (the default shutdown trigger)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


def _descriptors(options: ServeOptions, first: bool) -> ServeOptions:
    """``options`` with the active-actor and WebSocket caps one serving process (each
    worker, with several) can hold within its open-file limit: ``max_active`` and
    ``max_websockets``, refused when they do not fit, else what fits. The ``first``
    process of a server raises its soft limit for the WebSockets (its workers inherit
    it, and the caps).

    Raises:
        DotdoError: They do not fit, or the limit is too small for the rest.
    """
    parts = {"max_connections": options.max_connections, "workers": options.workers}
    requested = DEFAULT_MAX_WEBSOCKETS if options.max_websockets is None else options.max_websockets
    base = descriptor_budget(**parts)
    gained = raise_soft_limit(requested) if first else 0
    websockets = websocket_share(base, gained, options.max_active, options.max_websockets)
    budget = descriptor_budget(**parts, websockets=websockets)
    max_active = budget.admit(options.max_active)
    if first and options.max_websockets is None and websockets < DEFAULT_MAX_WEBSOCKETS:
        log.warning(
            "the open-file limit (%d, which could not be raised further) leaves room for %d WebSockets per process, not %d: "
            "raise its hard limit, or give --max-websockets", budget.limit, websockets, DEFAULT_MAX_WEBSOCKETS,
        )
    log.info("descriptors: limit %d, %s, actors %d x %d", budget.limit, budget.describe(), max_active, budget.per_actor)
    return dataclasses.replace(options, max_active=max_active, max_websockets=websockets)


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def serve(
    kinds: Iterable[type | KindSpec],
    options: ServeOptions = ServeOptions(),
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    out: TextIO | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    worker: WorkerSpec | None = None,
) -> None:
    """Serve ``kinds`` over HTTP until ``shutdown_trigger`` returns (default: SIGINT or
    SIGTERM), then stop gracefully: stop accepting, let in-flight requests finish (their
    turns commit or roll back), close every database.

    With ``options.workers`` > 1 this process starts and watches that many worker
    processes (``dotdo.workers``); the kinds must then be classes defined in importable
    modules. ``task_status.started`` receives the bound URLs (useful with port 0).

    Raises:
        DotdoError: Before anything starts, when the settings cannot be served: unusable
            tokens, or an open-file limit too small for ``options.max_active`` or for
            the connections (``dotdo.runtime.transport.descriptors``).
    """
    out = out if out is not None else sys.stdout
    Tokens(options.token, options.admin_token)  # refuses unusable tokens before anything starts
    options = _descriptors(options, first=worker is None)
    if worker is None and not options.read_only and not writable(options.data_dir):
        if options.cluster:
            raise DotdoError(f"a cluster node needs a data directory it can write; {options.data_dir} cannot be written")
        log.warning("the data directory %s cannot be written: serving it read-only", options.data_dir)
        options = dataclasses.replace(options, read_only=True)
    if options.cluster:
        check_cluster(options)
    with contextlib.ExitStack() as held:
        if worker is None and not options.read_only:  # one server per data directory
            lock = held.enter_context(serving_lock(options.data_dir))
            task_status = _Noting(task_status, lock)
        await _serve(kinds, options, shutdown_trigger, out, task_status, worker)


class _Noting:
    """A task status that also writes the bound URLs into the data directory's lock."""

    def __init__(self, status: trio.TaskStatus[list[str]], lock: ServeLock) -> None:
        self._status = status
        self._lock = lock

    def started(self, value: list[str]) -> None:
        self._lock.note(value)
        self._status.started(value)


async def _serve(
    kinds: Iterable[type | KindSpec],
    options: ServeOptions,
    shutdown_trigger: Callable[[], Awaitable[None]] | None,
    out: TextIO,
    task_status: Any,
    worker: WorkerSpec | None,
) -> None:
    if worker is None and options.workers > 1:
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        await serve_workers(
            list(kinds),
            options,
            shutdown_trigger=shutdown_trigger,
            out=out,
            log_level=level,
            task_status=task_status,
        )
        return
    data_dir = options.data_dir.resolve()
    peers = None if worker is None else Peers(worker.index, worker.peer_paths, worker.secret)
    rpc_port = options.transport_port()
    listeners: list[trio.SocketListener] = []
    if worker is None and rpc_port is not None:
        listeners = await trio.open_tcp_listeners(rpc_port, host=options.host)
    async with contextlib.AsyncExitStack() as stack:
        node: ClusterNode | None = None
        if options.cluster:
            if options.advertise is None and listeners:
                options = dataclasses.replace(options, advertise=_bind(options.host, listeners[0].socket.getsockname()[1]))
            node = await stack.enter_async_context(ClusterNode(cluster_settings(options), data_dir, peers))
        await _serve_on(kinds, options, data_dir, peers, node, listeners, worker, shutdown_trigger, out, task_status)
    if worker is None:
        print("dotdo stopped: every database closed", file=out, flush=True)


async def _serve_on(
    kinds: Iterable[type | KindSpec],
    options: ServeOptions,
    data_dir: Path,
    peers: Peers | None,
    node: ClusterNode | None,
    listeners: list[trio.SocketListener],
    worker: WorkerSpec | None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None,
    out: TextIO,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    """The supervisor, its HTTP server and its transports, until the shutdown trigger
    (then, on a cluster node, the drain) and the graceful stop."""
    tokens = Tokens(options.token, options.admin_token)
    supervisor = Supervisor(
        kinds,
        data_dir,
        **({"locator": node.locator} if node is not None else {"peers": peers}),
        storage=StorageOptions(
            durability=options.durability, history=0.0 if options.read_only else options.history, read_only=options.read_only
        ),
        idle_timeout=options.idle_timeout,
        max_active=options.max_active,
        call_timeout=options.call_timeout,
        cpu_limit=options.cpu_limit,
        max_mailbox=options.max_mailbox,
        shutdown_grace=options.shutdown_grace,
        env=options.env,
        max_ws_message=options.max_ws_message,
    )
    config = HypercornConfig()
    config.bind = [_bind(options.host, options.port) if worker is None else f"fd://{worker.http_fd}"]
    config.accesslog = access_logger() if options.access_log else None
    config.access_log_format = ACCESS_FORMAT
    # hypercorn logs through our logging setup, not a handler of its own.
    config.errorlog = logging.getLogger("hypercorn.error")
    config.loglevel = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    config.graceful_timeout = options.shutdown_grace
    config.keep_alive_timeout = options.keep_alive_timeout
    config.read_timeout = options.read_timeout
    config.include_server_header = False
    config.websocket_max_message_size = options.max_ws_message
    # No server pings: an upgraded connection has no read timeout and TCP keepalive
    # instead (dotdo.connections.Upgraded.keep_open), so a quiet socket costs no task.
    config.websocket_ping_interval = None
    app = create_app(
        supervisor, max_body=options.max_body, debug=options.debug, tokens=tokens, max_websockets=options.max_websockets or 0
    )
    base_trigger = shutdown_trigger or (wait_for_signal if worker is None else _worker_stop)

    async def trigger() -> None:
        await base_trigger()
        if node is not None:
            await node.leave()  # hand the slots over while still serving (relaying) calls
            await node.stop()  # then no move or takeover may start while the server closes
        # WebSockets would hold the graceful stop for its whole grace: their clients are
        # told to go (1001) and reconnect elsewhere or later.
        supervisor.websockets.close_all(None, GOING_AWAY, "the server is stopping")

    fetch = fetch_handler(supervisor)
    supervisor.wire_fetch = fetch  # a request relayed here after its actor moved runs through it
    supervisor.websockets.relay.open_hook = relay_open(supervisor)  # an upgrade held by another worker or node
    async with supervisor, trio.open_nursery() as nursery:
        if node is not None:
            node.attach(supervisor)
        rpc_urls: list[str] = []
        transports_stop = trio.Event()  # the transports stop (gracefully) when HTTP has
        # Either token opens the transport, as either opens the client routes over HTTP;
        # on a cluster node, the cluster secret opens it as another node.
        transport_options = TransportOptions(
            token=tokens.client,
            admin_token=tokens.admin,
            max_connections=options.max_connections,
            max_body=options.max_body,
            peer_token=options.cluster_secret if node is not None else None,
        )
        transport = TransportServer(supervisor, transport_options, fetch)
        if worker is not None:
            if worker.rpc_fd is not None:
                nursery.start_soon(_transport_on, transport, [_inherited(worker.rpc_fd)], transports_stop, options.shutdown_grace)
        elif listeners:
            nursery.start_soon(_transport_on, transport, listeners, transports_stop, options.shutdown_grace)
            rpc_urls = [url("tcp", listener.socket.getsockname()) for listener in listeners]
        binds: list[str] = await nursery.start(_http, app, config, options.max_connections, trigger, transports_stop)
        if worker is not None:
            # The peers' socket last: the parent takes an answer on it for "ready".
            peer_options = TransportOptions(
                token=worker.secret,
                max_inflight=PEER_INFLIGHT,
                max_inflight_bytes=PEER_INFLIGHT_BYTES,
                max_body=options.max_body,
                max_connections=peer_connections(worker.workers),
                max_handshakes=peer_connections(worker.workers),
                trusted=True,
            )
            peer_server = TransportServer(supervisor, peer_options, fetch)
            nursery.start_soon(_transport_on, peer_server, [_inherited(worker.peer_fd)], transports_stop, options.shutdown_grace)
            task_status.started(binds)
            return
        print_banner(
            out,
            supervisor.registry.namespaces,
            binds,
            rpc_urls,
            tokens=tokens,
            host=options.host,
            data_dir=data_dir,
            durability=options.durability,
            read_only=options.read_only,
        )
        if node is not None:
            print(f"cluster node {node.name}, advertised at {options.advertise}", file=out, flush=True)
        task_status.started(binds)


NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}\Z")
MIN_SECRET = 16


def check_cluster(options: ServeOptions) -> None:
    """Refuse cluster settings that cannot work, before anything starts (all but
    ``--advertise``, which may come from the port bound).

    Raises:
        DotdoError: A setting is missing or unusable.
    """
    if options.read_only:
        raise DotdoError("a cluster node cannot serve read-only: its slots' actors must be writable")
    if not options.node or not NODE_NAME.match(options.node):
        raise DotdoError("--cluster needs --node NAME: 1 to 63 letters, digits, '-' or '_', starting with a letter or digit")
    secret = options.cluster_secret
    if not secret or len(secret) < MIN_SECRET:
        raise DotdoError(f"--cluster needs a cluster secret of at least {MIN_SECRET} characters in $DOTDO_CLUSTER_SECRET, the same on every node")
    if options.transport_port() is None:
        raise DotdoError("--cluster needs the transport (nodes relay calls over it): do not give --rpc-port 0")


def cluster_settings(options: ServeOptions) -> ClusterSettings:
    """How this server joins its cluster (``options.cluster``).

    Raises:
        DotdoError: A setting is missing or unusable.
    """
    check_cluster(options)
    assert options.node is not None and options.cluster_secret is not None
    advertise = options.advertise
    if advertise is None:
        raise DotdoError("--cluster needs --advertise HOST:PORT, where the other nodes reach this node's transport")
    host, _, port = advertise.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or host.strip("[]") in ("0.0.0.0", "::"):
        raise DotdoError(f"--advertise must be HOST:PORT that other nodes can reach, not {advertise!r}")
    return ClusterSettings(
        endpoints=tuple(options.cluster),
        name=options.node,
        advertise=advertise,
        secret=options.cluster_secret,
        http=_bind(options.host, options.port),
        ttl=options.lease_ttl,
        slots=options.slots,
        drain_timeout=options.drain_timeout,
        replicas=options.replicas,
        ack=options.ack,
    )


async def _http(
    app: Any,
    config: HypercornConfig,
    max_connections: int,
    trigger: Callable[[], Awaitable[None]],
    then: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn until the shutdown trigger, with at most ``max_connections`` open
    (``dotdo.connections``), then set ``then`` (the transports stop)."""
    try:
        await serve_http(app, config, max_connections=max_connections, shutdown_trigger=trigger, task_status=task_status)
    finally:
        then.set()


async def _transport_on(transport: TransportServer, listeners: list[trio.SocketListener], stop: trio.Event, grace: float) -> None:
    """Serve the transport until ``stop``, then stop it gracefully: a call already
    running is answered (within ``grace`` seconds), one that arrives is refused as not
    sent, so that a peer relaying to this node sends it to the next owner."""
    await transport.serve_listeners(listeners, stop, grace)


def _inherited(fd: int) -> trio.SocketListener:
    """A listener on a socket the parent opened (a worker's inherited descriptor)."""
    return trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))


async def _worker_stop() -> None:
    """A worker's shutdown trigger: SIGTERM from the parent, or its stdin closing (the
    parent is gone)."""
    async with trio.open_nursery() as nursery:

        async def parent_gone() -> None:
            stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
            async with stream:
                while await stream.receive_some(1024):
                    pass
            nursery.cancel_scope.cancel()

        async def terminated() -> None:
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(parent_gone)
        nursery.start_soon(terminated)


GC_THRESHOLDS = (10_000, 20, 10)
"""Python's collector settings for a serving process (the defaults are 700, 10, 10)."""


QUIET_LOGGERS = ("httpx", "httpcore")
"""Libraries whose INFO lines (one per etcd request) drown a node's own log."""


def quiet_libraries() -> None:
    """Log the libraries of ``QUIET_LOGGERS`` from WARNING up only (``dotdo serve``'s
    logging set-up, in the server and in each worker)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))


def tune_gc() -> None:
    """Set the garbage collector up for a server holding thousands of actors.

    With Python's defaults, the young generation is collected every 700 allocations and
    promotes objects quickly, so full collections come often; with tens of thousands of
    live objects each one pauses every actor for 20 to 100 ms. Collecting the young
    generation every 10,000 allocations lets short-lived objects (a call's arguments,
    a request) die young, and ``gc.freeze`` moves what exists at start-up (modules,
    classes) out of every later collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(kinds: Iterable[type | KindSpec], options: ServeOptions = ServeOptions(), **kwargs: Any) -> None:
    """Blocking form of ``serve`` (starts its own trio run), for a process of its own:
    it also tunes the garbage collector (``tune_gc``). ``options.workers`` > 1 runs
    that many worker processes (see ``serve``)."""
    tune_gc()
    try:
        trio.run(partial(serve, list(kinds), options, **kwargs))
    except BaseExceptionGroup as group:  # a start-up failure inside a nursery: raise it plainly
        leaves = _leaves(group)
        if len(leaves) == 1 and isinstance(leaves[0], (DotdoError, OSError)):
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
