"""The msgpack/TCP transport's server: it runs calls that arrive from connections
(``docs/protocol.md`` is the reference; ``runtime.connection`` is the client end).

One task per connection reads frames and starts one task per call in the connection's
own nursery; at most ``max_inflight`` calls run at once per connection. At the cap the
reader stops reading, so a fast sender is slowed by TCP itself and no call is dropped.
A frame that breaks the protocol gets an error frame and the connection is closed;
other connections never notice.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from storage.errors import DotdoError

from runtime import values, wire, wire_errors
from runtime.errors import MethodNotAllowed, Overloaded, ProtocolError, Unauthorized
from runtime.ids import ActorId

if TYPE_CHECKING:
    from runtime.supervisor import Supervisor

log = logging.getLogger("dotdo.transport")

RECEIVE_CHUNK = 65536
"""Bytes read from a socket at a time (by the server and by ``runtime.connection``)."""
HANDSHAKE_TIMEOUT = 10.0
DEFAULT_MAX_INFLIGHT = 128
DEFAULT_MAX_CONNECTIONS = 256


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """Settings of the transport server.

    Attributes:
        token: Shared secret every connection must present first (None: none needed).
        admin_token: A second secret taken in place of ``token`` (``dotdo serve``'s
            admin token, which opens every client route over HTTP too); it is asked
            for only where ``token`` is.
        max_frame: Largest frame accepted, in bytes.
        max_inflight: Calls one connection may have running; past it the server stops
            reading from that connection until one finishes.
        handshake_timeout: Seconds a new connection has to send its hello.
        trusted: Whether connections may make the runtime's system calls (event
            deliveries, subscriptions): only the socket other workers connect to.
        max_connections: Connections open at once; one more gets an ``Overloaded``
            error frame and is closed (each holds a file descriptor, which actors
            need for their databases).
    """

    token: str | None = field(default=None, repr=False)  # secrets stay out of logs
    admin_token: str | None = field(default=None, repr=False)
    max_frame: int = wire.DEFAULT_MAX_FRAME
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    trusted: bool = False
    max_connections: int = DEFAULT_MAX_CONNECTIONS


@dataclass(slots=True)
class _ServerConnection:
    """One served connection: its calls' nursery, and the replies waiting to be sent.

    Replies are not sent one by one: a call that ends adds its frame to ``outbox`` and
    the connection's writer sends everything waiting in one write. A call's slot is
    given back only once its reply is handed to the kernel, so a peer that stops
    reading stops its calls too (the outbox holds at most ``max_inflight`` replies).
    """

    stream: trio.abc.Stream
    slots: trio.Semaphore
    nursery: trio.Nursery | None = None
    running: dict[int, trio.CancelScope] = field(default_factory=dict)
    cancelled: set[int] = field(default_factory=set)
    outbox: list[bytes] = field(default_factory=list)
    owed: int = 0  # slots to give back once the outbox is sent
    wake: trio.Event = field(default_factory=trio.Event)
    closing: bool = False
    broken: bool = False

    def queue(self, frame: bytes, slot: bool) -> None:
        if self.broken:
            if slot:
                self.slots.release()
            return
        self.outbox.append(frame)
        if slot:
            self.owed += 1
        self.wake.set()


FetchHandler = Callable[[ActorId, wire.HttpRequest, "float | None"], Awaitable[tuple[int, list[tuple[bytes, bytes]], bytes]]]
"""Runs a fetch frame: (target, request, timeout) -> (status, headers, body)."""


class TransportServer:
    """Runs calls that arrive over the transport on a supervisor (and fetch frames on
    ``fetch``, the HTTP side's handler, when given)."""

    def __init__(
        self, supervisor: Supervisor, options: TransportOptions = TransportOptions(), fetch: FetchHandler | None = None
    ) -> None:
        self._sup = supervisor
        self.options = options
        self._fetch = fetch
        self.connections = 0
        self._slots = trio.Semaphore(options.max_connections)
        # The secrets a hello may present (none: no token is asked for).
        accepted = (options.token, options.admin_token) if options.token is not None else ()
        self._secrets = tuple(token.encode() for token in accepted if token is not None)

    async def serve_listeners(self, listeners: list[trio.SocketListener]) -> None:
        """Serve connections from ``listeners`` (sockets made elsewhere) until cancelled."""
        await trio.serve_listeners(self.handle, listeners)

    async def serve(self, host: str, port: int, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``host:port`` (0: any free port) until cancelled."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started(listeners)
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection until it closes or breaks the protocol; past
        ``max_connections``, refuse it with an ``Overloaded`` error frame."""
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            async with stream:
                refusal = Overloaded(f"the server has {self.options.max_connections} transport connections open; retry later")
                with trio.move_on_after(1):
                    await _send_quietly(stream, wire.encode(wire_errors.error_frame(None, refusal)))
            return
        try:
            await self._serve(stream)
        finally:
            self._slots.release()

    async def _serve(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        decoder = wire.FrameDecoder(self.options.max_frame)
        try:
            async with stream:
                if not await self._handshake(stream, decoder):
                    return
                conn = _ServerConnection(stream, trio.Semaphore(self.options.max_inflight))
                last: wire.Message | None = None
                async with trio.open_nursery() as writer:
                    writer.start_soon(self._write, conn)
                    async with trio.open_nursery() as calls:
                        conn.nursery = calls
                        try:
                            await self._read(conn, decoder)
                        except ProtocolError as exc:
                            last = wire_errors.error_frame(None, exc)
                        calls.cancel_scope.cancel()  # the peer is gone or broke the protocol
                    conn.closing = True  # the writer sends what is left, then ends
                    conn.wake.set()
                if last is not None and not conn.broken:
                    await _send_quietly(stream, wire.encode(last))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.connections -= 1

    async def _handshake(self, stream: trio.abc.Stream, decoder: wire.FrameDecoder) -> bool:
        hello: wire.Message | None = None
        problem: DotdoError | None = None
        early = False  # whole frames came with the hello
        with trio.move_on_after(self.options.handshake_timeout):
            while hello is None:
                data = await stream.receive_some(RECEIVE_CHUNK)
                if not data:
                    return False
                try:
                    bodies = decoder.feed(data)
                    if bodies:
                        hello = wire.decode(bodies[0])
                        early = len(bodies) > 1
                except ProtocolError as exc:
                    problem = exc
                    break
        problem = problem or self._refusal(hello, early or decoder.pending > 0)
        if problem is not None:
            await _send_quietly(stream, wire.encode(wire_errors.error_frame(None, problem)))
            return False
        welcome = wire.Welcome(wire.VERSION, self.options.max_frame, self.options.max_inflight)
        await stream.send_all(wire.encode(welcome))
        return True

    def _refusal(self, hello: wire.Message | None, early: bool) -> DotdoError | None:
        """Why the connection that sent ``hello`` (and, if ``early``, more bytes before
        its welcome) is refused (None: it is welcome)."""
        if hello is None:
            return ProtocolError("no hello within the handshake timeout")
        if not isinstance(hello, wire.Hello):
            return ProtocolError("the first frame must be a hello")
        if hello.version != wire.VERSION:
            return ProtocolError(f"protocol version {hello.version} is not supported (this server speaks {wire.VERSION})")
        if self._secrets and not _admitted(hello.token, self._secrets):
            return Unauthorized("wrong or missing token")
        if early:
            return ProtocolError("frames sent before the welcome")
        return None

    async def _read(self, conn: _ServerConnection, decoder: wire.FrameDecoder) -> None:
        stream = conn.stream
        nursery = conn.nursery
        assert nursery is not None
        while True:
            data = await stream.receive_some(RECEIVE_CHUNK)
            if not data:
                return
            for body in decoder.feed(data):
                message = wire.decode(body)
                if isinstance(message, wire.Call | wire.Fetch):
                    if message.id in conn.running:
                        raise ProtocolError(f"request id {message.id} is already in flight")
                    await conn.slots.acquire()  # at the cap: stop reading until a call ends
                    scope = conn.running[message.id] = trio.CancelScope()
                    run = self._run_call if isinstance(message, wire.Call) else self._run_fetch
                    nursery.start_soon(run, conn, message, scope)
                elif isinstance(message, wire.Cancel):
                    scope = conn.running.get(message.id)
                    if scope is not None:
                        conn.cancelled.add(message.id)
                        scope.cancel()
                elif isinstance(message, wire.Event):
                    await conn.slots.acquire()
                    nursery.start_soon(self._run_event, conn, message)
                elif isinstance(message, wire.Ping):
                    conn.queue(wire.encode(wire.Pong(message.id)), False)
                else:
                    raise ProtocolError(f"a client does not send {wire.KIND_NAMES[wire.to_wire(message)[0]]} frames")

    async def _run_call(self, conn: _ServerConnection, call: wire.Call, scope: trio.CancelScope) -> None:
        async def run() -> bytes | None:
            if len(call.steps) == 1:  # the call's own deadline scope is the one a cancel cancels
                return await self._sup.call_from_peer(
                    call.target, call.steps, timeout=call.timeout, chain=call.chain, path=call.path, scope=scope,
                    trusted=self.options.trusted,
                )
            with scope:
                return await self._sup.call_from_peer(
                    call.target, call.steps, timeout=call.timeout, chain=call.chain, path=call.path
                )
            return None

        await self._answer(conn, call.id, call.target, scope, run)

    async def _run_fetch(self, conn: _ServerConnection, fetch: wire.Fetch, scope: trio.CancelScope) -> None:
        async def run() -> bytes | None:
            if self._fetch is None:
                raise MethodNotAllowed(fetch.target.namespace, "fetch", (), "this server takes no fetch frames")
            with scope:
                status, headers, body = await self._fetch(fetch.target, fetch.request, fetch.timeout)
                return values.pack([status, [[name, value] for name, value in headers], body])
            return None

        await self._answer(conn, fetch.id, fetch.target, scope, run)

    async def _answer(
        self, conn: _ServerConnection, request: int, target: ActorId, scope: trio.CancelScope, run: Callable[[], Awaitable[bytes | None]]
    ) -> None:
        """Run a request and queue its reply (none when the client cancelled it)."""
        frame: bytes | None = None
        try:
            packed = await run()
            if packed is not None:
                frame = wire.encode_reply(request, packed)
        except DotdoError as exc:
            frame = wire.encode(wire_errors.error_frame(request, exc))
        except Exception as exc:  # a bug in dotdo, not in the actor (that is ActorError)
            log.exception("request %s to %s failed inside dotdo", request, target)
            frame = wire.encode(wire_errors.error_frame(request, DotdoError(f"internal error: {type(exc).__name__}")))
        finally:
            del conn.running[request]
            if request in conn.cancelled:  # the client gave up: it expects nothing
                conn.cancelled.discard(request)
                frame = None
            if frame is None:
                conn.slots.release()
            else:
                conn.queue(frame, True)

    async def _run_event(self, conn: _ServerConnection, event: wire.Event) -> None:
        try:
            await self._sup.call_from_peer(event.target, [(event.method, event.args)], timeout=None)
        except DotdoError as exc:
            log.warning("event %s on %s failed: %s", event.method, event.target, exc)
        except Exception:
            log.exception("event %s on %s failed inside dotdo", event.method, event.target)
        finally:
            conn.slots.release()

    async def _write(self, conn: _ServerConnection) -> None:
        """Send queued frames, all that waited in one write, until the connection closes."""
        stream = conn.stream
        while True:
            await conn.wake.wait()
            conn.wake = trio.Event()
            if conn.outbox:
                data = b"".join(conn.outbox) if len(conn.outbox) > 1 else conn.outbox[0]
                conn.outbox.clear()
                owed, conn.owed = conn.owed, 0
                try:
                    await stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    conn.broken = True
                    if conn.nursery is not None:
                        conn.nursery.cancel_scope.cancel()
                    return
                finally:
                    for _ in range(owed):
                        conn.slots.release()
            if conn.closing and not conn.outbox:
                return


def _admitted(presented: str | None, secrets: tuple[bytes, ...]) -> bool:
    """Whether ``presented`` is one of ``secrets``: each is compared, in time that does
    not depend on where they differ."""
    given = (presented or "").encode()
    return any([hmac.compare_digest(given, secret) for secret in secrets])  # a list: no short cut


LINGER = 1.0
"""Seconds a connection being closed for an error keeps reading (and dropping) input."""


async def _send_quietly(stream: trio.abc.Stream, frame: bytes) -> None:
    """Send a last frame if the peer still listens (it may not), and close our side so
    that the peer reads it: closing with the peer's bytes still unread would make the
    kernel reset the connection, and the peer could lose the frame."""
    with trio.move_on_after(LINGER):
        try:
            await stream.send_all(frame)
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            while await stream.receive_some(RECEIVE_CHUNK):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass
