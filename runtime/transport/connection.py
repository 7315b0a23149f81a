"""The client end of a transport connection: what remote stubs send through
(``docs/protocol.md`` is the reference; ``dotdo.runtime.transport.server`` is the server).

``Connection`` has no task of its own. One caller waiting for its reply reads the socket
and hands every reply it reads to its owner; when its own has come, it wakes another
waiting caller to read on. Replies may come in any order, and an idle connection costs
nothing.
"""

from __future__ import annotations

import functools
import itertools
import math
import select
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from dotdo.storage.address import validate_namespace
from dotdo.storage.errors import DotdoError

from dotdo.runtime.core import values
from dotdo.runtime.transport import wire, wire_errors
from dotdo.runtime.core.errors import ConnectionLost, MethodNotAllowed, NotSent, ProtocolError
from dotdo.runtime.core.context import current_turn
from dotdo.runtime.transport.flow import ByteBudget
from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.stubs import ActorStub, Namespaces
from dotdo.runtime.transport.server import RECEIVE_CHUNK

SEND_TIMEOUT = 10.0
"""Seconds a client waits for the server to take a frame before it gives up on it."""
_RDHUP: int | None = getattr(select, "POLLRDHUP", None)


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
        # The server reads no more than this many bytes of requests at once: sending
        # more would stall this side's writes (and fail them after SEND_TIMEOUT).
        self._budget = ByteBudget(welcome.max_inflight_bytes)
        decoder.max_frame = max(decoder.max_frame, welcome.max_frame)  # replies as large as requests
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
            raise wire_errors.error_from_frame(answer)
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
            output = turn.activation.output
            if output is not None:
                await output()
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
            raise wire_errors.error_from_frame(frame)
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
            frame = make(request)
            if len(frame) - wire.HEADER.size > self.welcome.max_frame:  # before it waits for room it can never use
                raise ProtocolError(f"the call is {len(frame):,} bytes, over the server's frame limit of {self.welcome.max_frame:,}")
            await self._budget.take(len(frame))
            waiter = self._waiting[request] = _Waiter()
            try:
                await self._send_frame(frame)
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
                self._budget.give(len(frame))

    async def _send(self, message: wire.Message) -> None:
        await self._send_frame(wire.encode(message))

    async def _send_frame(self, frame: bytes) -> None:
        """Queue a frame and, unless another caller is sending already (it sends this
        one too), send everything queued: frames of callers that arrive while a write
        is under way go out together in the next write (``request`` has checked the
        frame against the server's limit)."""
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
                self._fail(wire_errors.error_from_frame(message))
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
