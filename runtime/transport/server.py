"""The msgpack/TCP transport's server: it runs calls that arrive from connections
(``docs/protocol.md`` is the reference; ``dotdo.runtime.transport.connection`` is the client end).

One task per connection reads frames and starts one task per call in the connection's
own nursery; at most ``max_inflight`` calls (and ``max_inflight_bytes`` of their frames)
run at once per connection, and everything a connection has queued to send counts
against those caps until it has left. At a cap the reader stops reading, so a fast
sender is slowed by TCP itself and no call is dropped.

Each connection is its own failure domain: a frame that breaks the protocol gets an
error frame and the connection is closed; a peer that resets it, stops reading its
replies or never says hello loses that connection alone, and other connections never
notice. Before its hello a connection may send only a hello's worth of bytes, and the
connections still in their handshake have a cap of their own (``max_handshakes``): past
it, the one that has waited longest is dropped, so silent sockets cannot lock out
clients that answer.
"""

from __future__ import annotations

import hmac
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from dotdo.storage.errors import DotdoError, InvalidValue

from dotdo.runtime.core import values
from dotdo.runtime.transport import wire, wire_errors
from dotdo.runtime.core.errors import BodyTooLarge, MethodNotAllowed, NotSent, Overloaded, ProtocolError, Unauthorized
from dotdo.runtime.transport.flow import ByteBudget
from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.transport.listening import accept_loop

if TYPE_CHECKING:
    from dotdo.runtime.supervisor import Supervisor

log = logging.getLogger("dotdo.transport")

RECEIVE_CHUNK = 65536
"""Bytes read from a socket at a time (by the server and by ``dotdo.runtime.transport.connection``)."""
HANDSHAKE_TIMEOUT = 10.0
MAX_HELLO = 16 * 1024
"""Largest hello frame accepted, in bytes: what a connection may send before it is
authenticated (a hello with the longest token allowed fits)."""
DEFAULT_MAX_INFLIGHT = 128
DEFAULT_MAX_INFLIGHT_BYTES = wire.DEFAULT_MAX_FRAME
"""Bytes of frames one connection may have in flight: one largest frame, or many
smaller ones."""
DEFAULT_MAX_CONNECTIONS = 256
"""Open connections per process at most (``--max-connections``), for the transport and
for HTTP each; the descriptor budget (``descriptors``) counts them, and the default
``--max-active`` leaves room for them."""
DEFAULT_MAX_HANDSHAKES = 64
QUIET_CHECK = 0.02
"""Seconds between looks, while the server stops, at whether its requests have all
been answered."""
DEFAULT_WRITE_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """Settings of the transport server.

    Attributes:
        token: Shared secret every connection must present first (None: none needed).
        admin_token: A second secret taken in place of ``token`` (``dotdo serve``'s
            admin token, which opens every client route over HTTP too); it is asked
            for only where ``token`` is.
        max_frame: Largest frame accepted, in bytes (and sent: a reply that would be
            larger is answered with an ``InvalidValue`` error instead).
        max_inflight: Calls one connection may have running (or replies waiting to be
            sent); past it the server stops reading from that connection until one
            finishes.
        max_inflight_bytes: The same cap in bytes of frames (at least ``max_frame``, so
            that any frame can run).
        max_body: Largest body of a fetch frame, as ``--max-body`` bounds HTTP bodies
            (None: only the frame limit); one larger is refused with ``BodyTooLarge``.
        handshake_timeout: Seconds a new connection has to send its hello.
        max_handshakes: Connections in their handshake at once, on top of
            ``max_connections``; one more drops the oldest.
        write_timeout: Seconds a peer may take none of the replies waiting for it
            before the connection is closed (noticed within a quarter more).
        trusted: Whether connections may make the runtime's system calls (event
            deliveries, subscriptions): only the socket other workers connect to.
        peer_token: The cluster secret: a connection whose hello presents it is
            another node's, and trusted whatever ``trusted`` says (it is taken where
            ``token`` is asked for, and where none is).
        max_connections: Connections past their handshake at once; one more gets an
            ``Overloaded`` error frame for its hello and is closed (each holds a file
            descriptor, which actors need for their databases).
    """

    token: str | None = field(default=None, repr=False)  # secrets stay out of logs
    admin_token: str | None = field(default=None, repr=False)
    max_frame: int = wire.DEFAULT_MAX_FRAME
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES
    max_body: int | None = None
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    trusted: bool = False
    peer_token: str | None = field(default=None, repr=False)
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES
    write_timeout: float = DEFAULT_WRITE_TIMEOUT

    def __post_init__(self) -> None:
        for name in ("max_frame", "max_inflight", "max_connections", "max_handshakes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_inflight_bytes < self.max_frame:
            raise ValueError(f"max_inflight_bytes ({self.max_inflight_bytes}) must be at least max_frame ({self.max_frame})")


@dataclass(slots=True, eq=False)  # one per socket: compared (and hashed) by identity
class _ServerConnection:
    """One served connection: its calls' nursery, and the replies waiting to be sent.

    Every request takes a slot and its frame's size from the connection's caps before
    it runs (``admit``) and gives them back once its reply is handed to the kernel, or
    when it ends with nothing to send (``release``); a reply's own bytes count from when
    it is queued. So a peer that stops reading stops its calls too: what waits in
    ``outbox`` is at most ``max_inflight`` replies, and its bytes are bounded.

    Replies are not sent one by one: a call that ends adds its frame to ``outbox`` and
    the connection's writer sends everything waiting in one write.
    """

    stream: trio.abc.Stream
    slots: trio.Semaphore
    budget: ByteBudget
    trusted: bool = False  # may make system calls: a worker of this server, or another node
    nursery: trio.Nursery | None = None
    running: dict[int, trio.CancelScope] = field(default_factory=dict)
    cancelled: set[int] = field(default_factory=set)
    outbox: list[bytes] = field(default_factory=list)
    owed_slots: int = 0  # given back once the outbox is sent
    owed_bytes: int = 0
    wake: trio.Event = field(default_factory=trio.Event)
    writing_since: float | None = None  # when the write under way began
    closing: bool = False
    broken: bool = False

    async def admit(self, size: int) -> None:
        """Wait for a slot and ``size`` bytes (the reader, before it starts a request)."""
        await self.slots.acquire()
        try:
            await self.budget.take(size)
        except BaseException:
            self.slots.release()
            raise

    def release(self, size: int) -> None:
        """Give back what ``admit(size)`` took."""
        self.budget.give(size)
        self.slots.release()

    def queue(self, frame: bytes, size: int) -> None:
        """Queue ``frame``, the answer to a request admitted with ``size`` bytes."""
        if self.broken:
            self.release(size)
            return
        self.outbox.append(frame)
        self.budget.borrow(len(frame))
        self.owed_slots += 1
        self.owed_bytes += size + len(frame)
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
        """Connections being served, in their handshake or past it."""
        self.established = 0
        """Connections past their handshake."""
        # Every socket this server holds: those past their handshake, and those in it.
        self._sockets = trio.Semaphore(options.max_connections + options.max_handshakes)
        self._handshaking: dict[int, trio.CancelScope] = {}  # oldest first
        self._serials = itertools.count()
        # The secrets a hello may present (none: no token is asked for).
        accepted = (options.token, options.admin_token) if options.token is not None else ()
        self._secrets = tuple(token.encode() for token in accepted if token is not None)
        self._peer_secret = options.peer_token.encode() if options.peer_token is not None else None
        self._served: set[_ServerConnection] = set()
        self.closing = False
        """Whether the server is stopping (``serve_listeners``' ``stop``): requests are
        refused with ``NotSent``."""

    async def serve_listeners(
        self, listeners: list[trio.SocketListener], stop: trio.Event | None = None, grace: float = 0.0
    ) -> None:
        """Serve connections from ``listeners`` (sockets made elsewhere) until cancelled,
        or until ``stop`` is set: then stop gracefully (``closing``): accept no more
        connections, answer each request that arrives with ``NotSent`` (it did not
        run: the client sends it elsewhere), and close the connections once every
        request that was running has been answered, or after ``grace`` seconds."""
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(accept_loop, listener, self.handle, self._sockets, connections, "a transport connection")
                if stop is not None:
                    await stop.wait()
                    accepting.cancel_scope.cancel()
            self.closing = True
            with trio.move_on_after(grace):
                while not self.quiet():
                    await trio.sleep(QUIET_CHECK)
            connections.cancel_scope.cancel()

    def quiet(self) -> bool:
        """Whether no request is running and no reply waits to be sent."""
        return all(not conn.running and not conn.outbox and conn.writing_since is None for conn in self._served)

    async def serve(self, host: str, port: int, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``host:port`` (0: any free port) until cancelled."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started(listeners)
        await self.serve_listeners(listeners)

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection until it closes, breaks or breaks the protocol.

        A peer that goes away (even with a reset, in the middle of a frame or with calls
        running) ends here: its calls are cancelled and nothing is raised. Past
        ``max_connections`` a hello is answered with an ``Overloaded`` error frame.
        """
        self.connections += 1
        try:
            async with stream:
                decoder = wire.FrameDecoder(min(MAX_HELLO, self.options.max_frame))
                hello = await self._handshake(stream, decoder)
                if hello is None:
                    return
                try:  # _handshake counted this connection as established
                    options = self.options
                    welcome = wire.Welcome(wire.VERSION, options.max_frame, options.max_inflight, options.max_inflight_bytes)
                    await stream.send_all(wire.encode(welcome))
                    decoder.max_frame = options.max_frame
                    await self._serve(stream, decoder, options.trusted or self._is_peer(hello))
                finally:
                    self.established -= 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away while we wrote to it
        finally:
            self.connections -= 1

    async def _serve(self, stream: trio.abc.Stream, decoder: wire.FrameDecoder, trusted: bool) -> None:
        options = self.options
        conn = _ServerConnection(stream, trio.Semaphore(options.max_inflight), ByteBudget(options.max_inflight_bytes), trusted)
        self._served.add(conn)
        try:
            await self._serve_connection(conn, decoder)
        finally:
            self._served.discard(conn)

    async def _serve_connection(self, conn: _ServerConnection, decoder: wire.FrameDecoder) -> None:
        stream = conn.stream
        last: wire.Message | None = None
        async with trio.open_nursery() as writer:
            writer.start_soon(self._write, conn, writer.cancel_scope)
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

    async def _handshake(self, stream: trio.abc.Stream, decoder: wire.FrameDecoder) -> wire.Hello | None:
        """Take the hello: the hello when it is welcome (the connection then counts as
        established), None when it was refused with an error frame or never came.

        While it runs the connection counts as handshaking; a newer connection over
        ``max_handshakes`` cancels the oldest one's handshake (it is closed, unanswered).
        """
        serial = next(self._serials)
        if len(self._handshaking) >= self.options.max_handshakes:
            oldest = next(iter(self._handshaking))
            self._handshaking.pop(oldest).cancel()
        with trio.CancelScope() as scope:
            self._handshaking[serial] = scope
            try:
                return await self._answer_hello(stream, decoder)
            finally:
                self._handshaking.pop(serial, None)
        return None  # dropped for a newer connection

    async def _answer_hello(self, stream: trio.abc.Stream, decoder: wire.FrameDecoder) -> wire.Hello | None:
        hello: wire.Message | None = None
        problem: DotdoError | None = None
        early = False  # whole frames came with the hello
        with trio.move_on_after(self.options.handshake_timeout):
            while hello is None:
                try:
                    data = await stream.receive_some(RECEIVE_CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
                if not data:
                    return None
                try:
                    bodies = decoder.feed(data)
                    if bodies:
                        hello = wire.decode(bodies[0])
                        early = len(bodies) > 1
                except ProtocolError as exc:
                    problem = exc
                    break
        problem = problem or self._refusal(hello, early or decoder.pending > 0)
        if problem is None and self.established >= self.options.max_connections:
            problem = Overloaded(f"the server has {self.options.max_connections} transport connections open; retry later")
        if problem is not None:
            await _send_quietly(stream, wire.encode(wire_errors.error_frame(None, problem)))
            return None
        assert isinstance(hello, wire.Hello)  # _refusal refuses anything else
        self.established += 1  # with the check above, no checkpoint between: the cap holds
        return hello

    def _refusal(self, hello: wire.Message | None, early: bool) -> DotdoError | None:
        """Why the connection that sent ``hello`` (and, if ``early``, more bytes before
        its welcome) is refused (None: it is welcome)."""
        if hello is None:
            return ProtocolError("no hello within the handshake timeout")
        if not isinstance(hello, wire.Hello):
            return ProtocolError("the first frame must be a hello")
        if hello.version != wire.VERSION:
            return ProtocolError(f"protocol version {hello.version} is not supported (this server speaks {wire.VERSION})")
        if self._secrets and not _admitted(hello.token, self._secrets) and not self._is_peer(hello):
            return Unauthorized("wrong or missing token")
        if early:
            return ProtocolError("frames sent before the welcome")
        return None

    def _is_peer(self, hello: wire.Hello) -> bool:
        """Whether ``hello`` presents the cluster secret (another node)."""
        return self._peer_secret is not None and _admitted(hello.token, (self._peer_secret,))

    async def _read(self, conn: _ServerConnection, decoder: wire.FrameDecoder) -> None:
        """Read and start requests until the peer closes or resets the connection."""
        stream = conn.stream
        nursery = conn.nursery
        assert nursery is not None
        while True:
            try:
                data = await stream.receive_some(RECEIVE_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # a reset: the peer is gone as surely as after a close
            if not data:
                return
            for body in decoder.feed(data):
                message = wire.decode(body)
                size = len(body)
                if isinstance(message, wire.Call | wire.Fetch):
                    if message.id in conn.running:
                        raise ProtocolError(f"request id {message.id} is already in flight")
                    await conn.admit(size)  # at a cap: stop reading until a call ends
                    if self.closing:
                        refused = NotSent("the server is stopping; the call did not run")
                        conn.queue(wire.encode(wire_errors.error_frame(message.id, refused)), size)
                        continue
                    scope = conn.running[message.id] = trio.CancelScope()
                    run = self._run_call if isinstance(message, wire.Call) else self._run_fetch
                    nursery.start_soon(run, conn, message, scope, size)
                elif isinstance(message, wire.Cancel):
                    scope = conn.running.get(message.id)
                    if scope is not None:
                        conn.cancelled.add(message.id)
                        scope.cancel()
                elif isinstance(message, wire.Event):
                    await conn.admit(size)
                    nursery.start_soon(self._run_event, conn, message, size)
                elif isinstance(message, wire.Ping):
                    await conn.admit(size)  # a pong waits in the outbox like a reply
                    conn.queue(wire.encode(wire.Pong(message.id)), size)
                else:
                    raise ProtocolError(f"a client does not send {wire.KIND_NAMES[wire.to_wire(message)[0]]} frames")

    async def _run_call(self, conn: _ServerConnection, call: wire.Call, scope: trio.CancelScope, size: int) -> None:
        async def run() -> bytes | None:
            if len(call.steps) == 1:  # the call's own deadline scope is the one a cancel cancels
                return await self._sup.call_from_peer(
                    call.target, call.steps, timeout=call.timeout, chain=call.chain, path=call.path, scope=scope,
                    trusted=conn.trusted,
                )
            with scope:
                return await self._sup.call_from_peer(
                    call.target, call.steps, timeout=call.timeout, chain=call.chain, path=call.path
                )
            return None

        await self._answer(conn, call.id, call.target, scope, run, size)

    async def _run_fetch(self, conn: _ServerConnection, fetch: wire.Fetch, scope: trio.CancelScope, size: int) -> None:
        async def run() -> bytes | None:
            if self._fetch is None:
                raise MethodNotAllowed(fetch.target.namespace, "fetch", (), "this server takes no fetch frames")
            limit = self.options.max_body
            if limit is not None and len(fetch.request.body) > limit:
                raise BodyTooLarge.over(len(fetch.request.body), limit)
            with scope:
                status, headers, body = await self._fetch(fetch.target, fetch.request, fetch.timeout)
                return values.pack([status, [[name, value] for name, value in headers], body])
            return None

        await self._answer(conn, fetch.id, fetch.target, scope, run, size)

    async def _answer(
        self,
        conn: _ServerConnection,
        request: int,
        target: ActorId,
        scope: trio.CancelScope,
        run: Callable[[], Awaitable[bytes | None]],
        size: int,
    ) -> None:
        """Run a request (admitted with ``size`` bytes) and queue its reply (none when
        the client cancelled it)."""
        frame: bytes | None = None
        try:
            packed = await run()
            if packed is not None:
                frame = wire.encode_reply(request, packed)
                if len(frame) - wire.HEADER.size > self.options.max_frame:
                    too_large = InvalidValue(
                        f"the result ({len(packed):,} bytes) is over the frame limit of {self.options.max_frame:,} "
                        "bytes and cannot be sent; the call did run"
                    )
                    frame = wire.encode(wire_errors.error_frame(request, too_large))
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
                conn.release(size)
            else:
                conn.queue(frame, size)

    async def _run_event(self, conn: _ServerConnection, event: wire.Event, size: int) -> None:
        try:
            await self._sup.call_from_peer(event.target, [(event.method, event.args)], timeout=None)
        except DotdoError as exc:
            log.warning("event %s on %s failed: %s", event.method, event.target, exc)
        except Exception:
            log.exception("event %s on %s failed inside dotdo", event.method, event.target)
        finally:
            conn.release(size)

    async def _write(self, conn: _ServerConnection, connection: trio.CancelScope) -> None:
        """Send queued frames until the connection closes, while ``_watch_writes`` gives
        up on a peer that takes nothing (cancelling ``connection``)."""
        async with trio.open_nursery() as watching:
            watching.start_soon(self._watch_writes, conn, connection)
            await self._send_queued(conn)
            watching.cancel_scope.cancel()

    async def _send_queued(self, conn: _ServerConnection) -> None:
        """Send queued frames, all that waited in one write, until the connection closes."""
        stream = conn.stream
        while True:
            await conn.wake.wait()
            conn.wake = trio.Event()
            if conn.outbox:
                data = b"".join(conn.outbox) if len(conn.outbox) > 1 else conn.outbox[0]
                conn.outbox.clear()
                slots, conn.owed_slots = conn.owed_slots, 0
                owed, conn.owed_bytes = conn.owed_bytes, 0
                conn.writing_since = trio.current_time()
                try:
                    await stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    conn.broken = True
                    if conn.nursery is not None:
                        conn.nursery.cancel_scope.cancel()
                    return
                finally:
                    conn.writing_since = None
                    conn.budget.give(owed)
                    for _ in range(slots):
                        conn.slots.release()
            if conn.closing and not conn.outbox:
                return

    async def _watch_writes(self, conn: _ServerConnection, scope: trio.CancelScope) -> None:
        """Give the connection up (cancel ``scope``: its writer and its calls) once a
        write has waited ``write_timeout`` for the peer to take data. A task that looks
        now and then, rather than a deadline around every write: that would cost each
        reply a cancel scope."""
        timeout = self.options.write_timeout
        while True:
            await trio.sleep(timeout / 4)
            since = conn.writing_since
            if since is not None and trio.current_time() - since >= timeout:
                log.info("closing a transport connection: its peer took no data for %g s", timeout)
                conn.broken = True
                scope.cancel()
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
