"""The msgpack/TCP transport: a server that runs calls from connections, and the client
connection that stubs send through (``docs/protocol.md`` is the reference).

Server: one task per connection reads frames and starts one task per call in the
connection's own nursery; at most ``max_inflight`` calls run at once per connection.
At the cap the reader stops reading, so a fast sender is slowed by TCP itself and no
call is dropped. A frame that breaks the protocol gets an error frame and the
connection is closed; other connections never notice.

Client: ``Connection`` has no task of its own. One caller waiting for its reply reads
the socket and hands every reply it reads to its owner; when its own has come, it wakes
another waiting caller to read on. Replies may come in any order, and an idle
connection costs nothing.
"""

from __future__ import annotations

import functools
import hmac
import itertools
import logging
import math
import select
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from storage.address import validate_namespace
from storage.errors import DotdoError

from runtime import values, wire
from runtime.errors import ConnectionLost, MethodNotAllowed, NotSent, Overloaded, ProtocolError, Unauthorized
from runtime.context import current_turn
from runtime.ids import ActorId
from runtime.stubs import ActorStub, Namespaces

if TYPE_CHECKING:
    from runtime.supervisor import Supervisor

log = logging.getLogger("dotdo.transport")

RECEIVE_CHUNK = 65536
HANDSHAKE_TIMEOUT = 10.0
DEFAULT_MAX_INFLIGHT = 128
DEFAULT_MAX_CONNECTIONS = 256
_RDHUP: int | None = getattr(select, "POLLRDHUP", None)
SEND_TIMEOUT = 10.0
"""Seconds a client waits for the server to take a frame before it gives up on it."""


# -- server ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """Settings of the transport server.

    Attributes:
        token: Shared secret every connection must present first (None: none needed).
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

    token: str | None = None
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
                    await _send_quietly(stream, wire.encode(wire.error_frame(None, refusal)))
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
                            last = wire.error_frame(None, exc)
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
            await _send_quietly(stream, wire.encode(wire.error_frame(None, problem)))
            return False
        welcome = wire.Welcome(wire.VERSION, self.options.max_frame, self.options.max_inflight)
        await stream.send_all(wire.encode(welcome))
        return True

    def _refusal(self, hello: wire.Message | None, early: bool) -> DotdoError | None:
        """Why the connection that sent ``hello`` (and, if ``early``, more bytes before
        its welcome) is refused (None: it is welcome)."""
        expected = self.options.token
        if hello is None:
            return ProtocolError("no hello within the handshake timeout")
        if not isinstance(hello, wire.Hello):
            return ProtocolError("the first frame must be a hello")
        if hello.version != wire.VERSION:
            return ProtocolError(f"protocol version {hello.version} is not supported (this server speaks {wire.VERSION})")
        if expected is not None and not hmac.compare_digest((hello.token or "").encode(), expected.encode()):
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
            frame = wire.encode(wire.error_frame(request, exc))
        except Exception as exc:  # a bug in dotdo, not in the actor (that is ActorError)
            log.exception("request %s to %s failed inside dotdo", request, target)
            frame = wire.encode(wire.error_frame(request, DotdoError(f"internal error: {type(exc).__name__}")))
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


# -- client ------------------------------------------------------------------------------


class _Waiter:
    __slots__ = ("frame", "event")

    def __init__(self) -> None:
        self.frame: wire.Reply | wire.Error | None = None
        self.event = trio.Event()  # set when the frame is in, or when it must read


class Connection:
    """The client end of one transport connection: what remote stubs send through.

    Open with ``await Connection.open(host, port, token=...)`` (or ``dotdo.connect``);
    ``S`` gives stubs. Close with ``aclose`` (or ``async with``).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        decoder: wire.FrameDecoder,
        welcome: wire.Welcome,
        max_inflight: int,
        label: str,
    ) -> None:
        self._stream = stream
        self._decoder = decoder
        self.welcome = welcome
        self.label = label
        self._outbox: list[bytes] = []
        self._flushing = False
        self._reading = False
        self._slots = trio.Semaphore(max(1, min(max_inflight, welcome.max_inflight)))
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Waiter] = {}
        self._closed: DotdoError | None = None
        self.frames_sent = 0
        self.frames_received = 0
        self.S = RemoteNamespaces(self)

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        token: str | None = None,
        max_inflight: int = 64,
        connect_timeout: float = 10.0,
    ) -> Connection:
        """Connect over TCP and shake hands.

        Raises:
            Unauthorized: The server wants another token.
            ProtocolError: The other end does not speak this protocol.
            ConnectionLost: Nothing listens there, or it hung up.
        """
        connect = functools.partial(trio.open_tcp_stream, host, port)
        return await cls._open(connect, f"tcp://{host}:{port}", token, max_inflight, connect_timeout)

    @classmethod
    async def open_unix(
        cls,
        path: str,
        *,
        token: str | None = None,
        max_inflight: int = 64,
        connect_timeout: float = 10.0,
        label: str | None = None,
    ) -> Connection:
        """``open`` over a unix socket (how the workers of one server reach each other)."""
        connect = functools.partial(trio.open_unix_socket, path)
        return await cls._open(connect, label or f"unix:{path}", token, max_inflight, connect_timeout)

    @classmethod
    async def _open(
        cls,
        connect: Callable[[], Awaitable[trio.abc.Stream]],
        label: str,
        token: str | None,
        max_inflight: int,
        timeout: float,
    ) -> Connection:
        try:
            with trio.fail_after(timeout):
                stream = await connect()
        except (OSError, trio.TooSlowError) as exc:
            raise ConnectionLost(f"cannot connect to {label}: {exc or 'timed out'}") from None
        decoder = wire.FrameDecoder()
        try:
            with trio.fail_after(timeout):
                await stream.send_all(wire.encode(wire.Hello(wire.VERSION, token)))
                answer = await _read_one(stream, decoder)
        except BaseException as exc:
            await trio.aclose_forcefully(stream)
            if isinstance(exc, trio.TooSlowError):
                raise ConnectionLost(f"{label} did not answer the hello") from None
            if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError)):
                raise ConnectionLost(f"{label} closed the connection") from None
            raise
        if isinstance(answer, wire.Error):
            await trio.aclose_forcefully(stream)
            raise wire.error_from_frame(answer)
        if not isinstance(answer, wire.Welcome):
            await trio.aclose_forcefully(stream)
            raise ProtocolError(f"{label} answered the hello with a {type(answer).__name__}")
        return cls(stream, decoder, answer, max_inflight, label)

    @property
    def closed(self) -> bool:
        """Whether the connection is over (closed, broken or refused by the server)."""
        return self._closed is not None

    async def aclose(self) -> None:
        """Close the connection; calls still waiting get ``ConnectionLost``."""
        self._fail(ConnectionLost(f"the connection to {self.label} was closed"))
        await trio.aclose_forcefully(self._stream)

    async def __aenter__(self) -> RemoteNamespaces:
        return self.S

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<Connection {self.label}>"

    # -- the Caller protocol of stubs ------------------------------------------------

    def check_namespace(self, namespace: str) -> None:
        validate_namespace(namespace)  # which kinds exist is the server's to say

    def check_method(self, namespace: str, method: str) -> None:
        if method.startswith("_"):
            raise MethodNotAllowed(namespace, method, (), "private methods cannot be called")

    async def call_packed(self, target: ActorId, method: str, payload: bytes, timeout: float | None = None) -> Any:
        return await self.call_pipeline(target, [(method, payload)], timeout)

    async def call_pipeline(self, target: ActorId, steps: list[tuple[str, bytes]], timeout: float | None = None) -> Any:
        """Send the whole chain in one frame; the server forwards each step to the actor
        the previous one returned and replies once."""
        return values.unpack(await self.call_raw(target, steps, timeout), self._ref)

    async def call_raw(
        self,
        target: ActorId,
        steps: list[tuple[str, bytes]],
        timeout: float | None = None,
        chain: str | None = None,
        path: tuple[str, ...] = (),
    ) -> bytes:
        """``call_pipeline`` with the result left packed.

        Made from inside a turn, the call commits the turn's writes first (nothing
        leaves a turn before it is durable) and joins the turn's call chain, so that a
        call coming back to the calling actor along it is admitted; with no ``timeout``
        it gets what is left of the turn's deadline.
        """
        turn = current_turn.get()
        if turn is not None:
            turn.activation.db.commit()  # the output gate
            if chain is None:
                chain, path = turn.chain, turn.path
        timeout = _remaining(timeout)
        return await self._result(lambda request: wire.encode_call(request, target, steps, timeout, chain, path))

    async def fetch(self, target: ActorId, request: wire.HttpRequest, timeout: float | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Hand an HTTP request to the actor's ``fetch``; returns (status, headers, body)."""
        timeout = _remaining(timeout)
        answer = values.unpack(await self._result(lambda request_id: wire.encode(wire.Fetch(request_id, target, request, timeout))))
        if (
            not isinstance(answer, list)
            or len(answer) != 3
            or type(answer[0]) is not int
            or not isinstance(answer[1], list)
            or not isinstance(answer[2], bytes)
        ):
            raise ProtocolError(f"{self.label} answered a fetch with something other than [status, headers, body]")
        return answer[0], [(bytes(name), bytes(value)) for name, value in answer[1]], answer[2]

    def _ref(self, actor_id: ActorId) -> ActorStub:
        return ActorStub(self, actor_id)

    # -- requests --------------------------------------------------------------------

    async def ping(self) -> float:
        """Round-trip time to the server, in seconds."""
        started = trio.current_time()
        await self.request(lambda request: wire.encode(wire.Ping(request)))
        return trio.current_time() - started

    async def _result(self, make: Callable[[int], bytes]) -> bytes:
        """The packed result of the request ``make`` builds (its error raised)."""
        frame = await self.request(make)
        if isinstance(frame, wire.Error):
            raise wire.error_from_frame(frame)
        return frame.result

    async def request(self, make: Callable[[int], bytes]) -> wire.Reply | wire.Error:
        """Send the frame ``make(request_id)`` and wait for its answer.

        Raises:
            NotSent: The connection was closed, or found closed by the server while
                nothing was in flight, before the request left.
            ConnectionLost: It closed while the request was in flight.
        """
        if self._closed is None and not self._waiting and self._hung_up():
            self._fail(ConnectionLost(f"{self.label} closed the connection"))
            await trio.aclose_forcefully(self._stream)
        if self._closed is not None:
            if isinstance(self._closed, ConnectionLost):
                raise NotSent(f"{self._closed.public}; the call was not sent")
            raise self._closed
        async with self._slots:
            request = next(self._ids)
            waiter = self._waiting[request] = _Waiter()
            try:
                await self._send_frame(make(request))
                while waiter.frame is None:
                    if self._closed is not None:
                        raise self._closed
                    if self._reading:
                        await waiter.event.wait()
                        if waiter.frame is None:  # woken to take over the reading
                            waiter.event = trio.Event()
                    else:
                        await self._read_until(waiter)
                return waiter.frame
            except trio.Cancelled:
                if self._closed is None:
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        await self._send(wire.Cancel(request))
                raise
            finally:
                self._waiting.pop(request, None)

    async def _send(self, message: wire.Message) -> None:
        await self._send_frame(wire.encode(message))

    async def _send_frame(self, frame: bytes) -> None:
        """Queue a frame and, unless another caller is sending already (it sends this
        one too), send everything queued: frames of callers that arrive while a write
        is under way go out together in the next write."""
        if len(frame) - wire.HEADER.size > self.welcome.max_frame:
            raise ProtocolError(f"the call is {len(frame):,} bytes, over the server's frame limit of {self.welcome.max_frame:,}")
        if self._closed is not None:
            raise self._closed
        self._outbox.append(frame)
        self.frames_sent += 1
        if self._flushing:
            return
        self._flushing = True
        outbox = self._outbox
        try:
            # Shielded: a write cut short would leave half a frame on the stream. A server
            # that reads nothing for SEND_TIMEOUT is taken for gone.
            with trio.CancelScope(shield=True, deadline=trio.current_time() + SEND_TIMEOUT) as waited:
                await trio.lowlevel.checkpoint()  # callers ready to run add their frames first
                while outbox:
                    data = b"".join(outbox) if len(outbox) > 1 else outbox[0]
                    outbox.clear()
                    await self._stream.send_all(data)
            if waited.cancelled_caught:
                self._fail(ConnectionLost(f"{self.label} took no data for {SEND_TIMEOUT:g} s"))
                await trio.aclose_forcefully(self._stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._fail(ConnectionLost(f"the connection to {self.label} broke"))
        finally:
            self._flushing = False
        if self._closed is not None:
            raise self._closed

    async def _read_until(self, waiter: _Waiter) -> None:
        """Be the reader until ``waiter`` has its frame, then wake another waiting
        caller to read on (if any still waits)."""
        self._reading = True
        try:
            while waiter.frame is None:
                if self._closed is not None:
                    raise self._closed
                try:
                    data = await self._stream.receive_some(RECEIVE_CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    self._fail(ConnectionLost(f"the connection to {self.label} closed with calls in flight"))
                    raise self._closed  # type: ignore[misc]
                try:
                    for body in self._decoder.feed(data):
                        self._dispatch(wire.decode(body))
                except ProtocolError as exc:
                    self._fail(ConnectionLost(f"{self.label} broke the protocol: {exc}"))
                    await trio.aclose_forcefully(self._stream)
                    raise self._closed from None  # type: ignore[misc]
        finally:
            self._reading = False
            for other in self._waiting.values():
                if other.frame is None and other is not waiter:
                    other.event.set()
                    break

    def _hung_up(self) -> bool:
        """Whether the server has closed its end (a worker that died, a server that
        stopped). Checked before a request on an idle connection, where no reader
        would have seen it, so that a request is not sent into a connection that is
        already over. (Linux tells this apart from late replies waiting to be read.)"""
        socket_ = getattr(self._stream, "socket", None)
        if socket_ is None or _RDHUP is None:
            return False
        poller = select.poll()
        poller.register(socket_.fileno(), _RDHUP)
        return any(events & (_RDHUP | select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))

    def _dispatch(self, message: wire.Message) -> None:
        self.frames_received += 1
        if isinstance(message, wire.Reply | wire.Error):
            if message.id is None:  # about the connection: it is over
                assert isinstance(message, wire.Error)
                self._fail(wire.error_from_frame(message))
                return
            waiter = self._waiting.get(message.id)
            if waiter is not None:
                waiter.frame = message
                waiter.event.set()
        elif isinstance(message, wire.Pong):
            waiter = self._waiting.get(message.id)
            if waiter is not None:
                waiter.frame = wire.Reply(message.id, b"")
                waiter.event.set()
        else:
            raise ProtocolError(f"a server does not send {type(message).__name__.lower()} frames")

    def _fail(self, error: DotdoError) -> None:
        if self._closed is None:
            self._closed = error
            for waiter in self._waiting.values():
                waiter.event.set()  # they see the connection is over


def _remaining(timeout: float | None) -> float | None:
    """``timeout``, or else what is left until the caller's deadline (None: no deadline)."""
    if timeout is not None:
        return timeout
    remaining = trio.current_effective_deadline() - trio.current_time()
    return remaining if math.isfinite(remaining) and remaining > 0 else None


async def _read_one(stream: trio.abc.Stream, decoder: wire.FrameDecoder) -> wire.Message:
    while True:
        data = await stream.receive_some(RECEIVE_CHUNK)
        if not data:
            raise trio.BrokenResourceError("closed")
        bodies = decoder.feed(data)
        if bodies:
            return wire.decode(bodies[0])


class RemoteNamespaces(Namespaces):
    """``S`` of a connection: ``S.Customer("alice")`` as in-process, plus ``aclose``
    (also ``async with``), ``ping`` and ``connection``. A namespace whose name clashes
    with these is reached as ``S["aclose"]``."""

    __slots__ = ()

    @property
    def connection(self) -> Connection:
        return self._caller  # type: ignore[return-value]

    async def aclose(self) -> None:
        """Close the connection."""
        await self.connection.aclose()

    async def ping(self) -> float:
        """Round-trip time to the server, in seconds."""
        return await self.connection.ping()

    async def __aenter__(self) -> RemoteNamespaces:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<S via {self.connection.label}>"
