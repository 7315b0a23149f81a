"""WebSockets on actors, as Cloudflare's hibernation API has them: the sockets live in
the server, not in the actor, so an actor whose only open work is its sockets is
passivated like any idle actor (its database closed, its instance dropped) while they
stay open, and the next message wakes it.

The HTTP side (``dotdo.http.websocket``) holds each connection and hands what arrives
here: ``open`` when an upgrade reaches the actor's ``fetch`` (which accepts the socket
with ``accept``), ``message`` for each message, ``closed`` when the client closes or
goes away. Each message is a turn of its own on the actor (``websocket_message``):
what it writes commits before anything it sends leaves (a socket's ``send`` inside a
turn waits for the turn's commit and output gate, as a reply does: ``Turns``), and a
handler that raises is rolled back, reported to ``websocket_error`` in a turn of its
own, and the socket stays open. A message equal to the actor's auto-response request
is answered here, without waking the actor.

What a socket carries across hibernation (its tags, its attachment, the actor's
auto-response) is kept here, in memory: a socket does not outlive the server.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dotdo.storage.errors import DotdoError, InvalidInput

from dotdo.runtime.core import values
from dotdo.runtime.core.context import current_turn
from dotdo.runtime.core.errors import Overloaded
from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.services.websocket_relay import Outbox, WebSocketRelay

if TYPE_CHECKING:
    from dotdo.runtime.supervisor import Supervisor

log = logging.getLogger("dotdo.websockets")

MAX_TAGS = 10
MAX_TAG = 256
MAX_ATTACHMENT = 2048
"""Bytes of a socket's attachment (msgpack) at most."""
MAX_AUTO_RESPONSE = 2048
"""Characters of an auto-response's request and of its response at most."""
MAX_PER_ACTOR = 32768
MAX_QUEUED = 16 * 1024 * 1024
"""Bytes waiting to be sent on one socket at most; past it the client is too slow and
the socket is closed (1013, try again later, when the close can still reach it; else
its connection is cut)."""
NORMAL = 1000
GOING_AWAY = 1001
SERVICE_RESTART = 1012
TRY_AGAIN = 1013

Item = str | bytes | tuple[int, str]
"""What goes out on a socket: a message, or ``(code, reason)`` to close it with."""
TEXT = 0x1
BINARY = 0x2
FRAMES = 64
"""Messages whose frames the hub keeps (a broadcast sends one message to every socket,
several may be on their way at once)."""


def frame(opcode: int, payload: bytes) -> bytes:
    """A whole, unmasked WebSocket frame (RFC 6455 5.2: what a server sends)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, size))
    elif size < 65536:
        header = bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 127)) + size.to_bytes(8, "big")
    return header + payload


def unframe(data: bytes) -> list[str | bytes]:
    """The messages of frames made by ``frame``, joined (for a connection that takes
    messages rather than bytes)."""
    messages: list[str | bytes] = []
    at = 0
    while at < len(data):
        opcode, size = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if size == 126:
            size, at = int.from_bytes(data[at : at + 2], "big"), at + 2
        elif size == 127:
            size, at = int.from_bytes(data[at : at + 8], "big"), at + 8
        payload = data[at : at + size]
        at += size
        messages.append(payload.decode("utf-8") if opcode == TEXT else payload)
    return messages


class WebSocket:
    """One accepted (or, inside ``fetch``, offered) WebSocket of an actor.

    ``send`` and ``close`` are synchronous: inside a turn of the actor they go out once
    the turn has committed (and its commit is held where it must be), in order;
    outside one, at once.
    """

    __slots__ = ("id", "actor", "tags", "accepted", "_attachment", "_hub", "_queue", "_queued", "sink", "closing", "overflowed", "auto_response_at", "on_ready")

    def __init__(self, hub: WebSockets, socket_id: int, actor: ActorId) -> None:
        self.id = socket_id
        self.actor = actor
        self.tags: tuple[str, ...] = ()
        self.accepted = False
        self.closing = False
        self.overflowed = False
        """The client read too slowly (``MAX_QUEUED``): its connection is to be cut."""
        self.auto_response_at: float | None = None
        """When the server last answered this socket's auto-response (epoch seconds)."""
        self._attachment: bytes | None = None
        self._hub = hub
        self._queue: list[bytes | tuple[int, str]] = []  # frames, then perhaps a close
        self._queued = 0
        self.on_ready: Callable[[WebSocket], None] | None = None
        """Called when something is queued for the connection to send (``take``) and
        nothing was (set by the connection's side)."""
        self.sink: Outbox | None = None
        """Where what is sent goes when the client's connection is held by another
        process (``websocket_relay``); None: this process's connection."""

    # -- what an actor does with it ---------------------------------------------------

    def send(self, message: str | bytes) -> None:
        """Send a text (``str``) or binary (``bytes``) message."""
        if not isinstance(message, (str, bytes, bytearray, memoryview)):
            raise InvalidInput(f"a WebSocket message is text or bytes, not {type(message).__name__}")
        if isinstance(message, (bytearray, memoryview)):
            message = bytes(message)
        self._hub.frame(message)  # refused here if it cannot be sent (encoded once per message)
        self._out(message)

    def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Close the socket with ``code`` (1000, or 3000-4999) and ``reason`` (at most
        123 bytes of UTF-8)."""
        if not isinstance(code, int) or not (code == NORMAL or 3000 <= code <= 4999):
            raise InvalidInput(f"a close code is 1000 or between 3000 and 4999, not {code!r}")
        if not isinstance(reason, str) or len(reason.encode("utf-8", "surrogatepass")) > 123:
            raise InvalidInput("a close reason is text of at most 123 bytes")
        self._out((code, reason))

    def serialize_attachment(self, value: Any) -> None:
        """Keep ``value`` with the socket, across hibernation (a msgpack value: what a
        call may return; at most 2 KiB encoded)."""
        packed = values.pack(value)
        if len(packed) > MAX_ATTACHMENT:
            raise InvalidInput(f"a socket's attachment is at most {MAX_ATTACHMENT} bytes encoded, not {len(packed):,}")
        self._attachment = packed

    def deserialize_attachment(self) -> Any:
        """The value ``serialize_attachment`` kept (None if none)."""
        return None if self._attachment is None else values.unpack(self._attachment)

    # -- the way out ------------------------------------------------------------------

    def _out(self, item: Item) -> None:
        turn = current_turn.get()
        if turn is not None and turn.activation.id == self.actor:
            turn.hold(self.put, item)  # after the turn's commit
        else:
            self.put(item)

    def put(self, item: Item) -> None:
        """Queue ``item`` for the client now (the runtime's: an actor's ``send`` and
        ``close`` go through the turn first)."""
        if self.closing:
            return
        if isinstance(item, tuple):
            self.closing = True
        if self.sink is not None:
            self.sink.put(self, item)
            return
        if not isinstance(item, tuple):
            item = self._hub.frame(item)
            self._queued += len(item)
            if self._queued > MAX_QUEUED:
                self._queue = []
                self.closing = self.overflowed = True
                item = (TRY_AGAIN, "the client does not read its messages")
        queue = self._queue
        queue.append(item)
        if len(queue) == 1 and self.on_ready is not None:
            self.on_ready(self)

    def take(self) -> tuple[bytes, tuple[int, str] | None] | None:
        """What the connection sends next (the HTTP side's writer), None when nothing
        is queued: every frame waiting (encoded, joined), and ``(code, reason)`` when
        it is to close after them."""
        queue = self._queue
        if not queue:
            return None
        self._queue = []
        self._queued = 0
        if isinstance(queue[-1], tuple):  # a close is always last: nothing is queued after it
            return b"".join(queue[:-1]), queue[-1]  # type: ignore[arg-type]
        return b"".join(queue), None  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<WebSocket {self.id} of {self.actor}>"


class WebSockets:
    """The WebSockets of one supervisor's actors (see the module).

    Args:
        supervisor: The supervisor whose actors they are.
        max_message: Bytes of a message at most, either way.
        clock: Epoch seconds (the auto-response's timestamps).
    """

    def __init__(self, supervisor: Supervisor, max_message: int, clock: Callable[[], float]) -> None:
        self._sup = supervisor
        self.max_message = max_message
        self.clock = clock
        self._ids = itertools.count(1)
        self._sockets: dict[tuple[str, str], dict[int, WebSocket]] = {}
        self._auto: dict[tuple[str, str], tuple[str, str]] = {}
        self.relay = WebSocketRelay(self, supervisor)
        self._frames: dict[int, tuple[str | bytes, bytes]] = {}

    # -- from the HTTP side ---------------------------------------------------------------

    def offer(self, actor: ActorId, socket_id: int | None = None) -> WebSocket:
        """A socket for an upgrade request to ``actor``, not accepted yet (its
        ``fetch`` may, with ``accept``); with ``socket_id``, the socket a relayed
        upgrade was accepted as by the actor's owner (``websocket_relay``)."""
        return WebSocket(self, next(self._ids) if socket_id is None else socket_id, actor)

    async def message(self, ws: WebSocket, message: str | bytes) -> None:
        """A message from the client: the auto-response, or a turn of the actor's
        ``websocket_message`` (one that raises is reported to ``websocket_error``)."""
        auto = self._auto.get(_key(ws.actor))
        if auto is not None and message == auto[0]:
            ws.auto_response_at = self.clock()
            ws.put(auto[1])
            return
        try:
            await self._sup.run_turn(ws.actor, lambda actor: _handler(actor, "websocket_message")(ws, message))
        except DotdoError as exc:
            if ws.accepted and not self._sup.closing:
                await self._report(ws, exc)

    async def closed(self, ws: WebSocket, code: int, reason: str, was_clean: bool) -> None:
        """The connection ended: the socket is forgotten, and unless the actor closed it
        itself, its ``websocket_close`` runs (the client closed it, or went away)."""
        if not self.forget(ws) or ws.closing:
            return
        handler = "websocket_close"
        try:
            await self._sup.run_turn(ws.actor, lambda actor: _optional(actor, handler, ws, code, reason, was_clean))
        except DotdoError as exc:
            log.warning("%s: websocket_close failed: %s", ws.actor, exc)

    def forget(self, ws: WebSocket) -> bool:
        """Take ``ws`` out of its actor's sockets; whether it was there."""
        key = _key(ws.actor)
        held = self._sockets.get(key)
        if held is None or held.pop(ws.id, None) is None:
            return False
        if not held:
            del self._sockets[key]
        return True

    def close_all(self, actor: ActorId | None, code: int, reason: str) -> int:
        """Close the sockets of ``actor`` (every actor's with None), with ``code``: the
        actor moved (1012) or the server stops (1001); how many."""
        keys = list(self._sockets) if actor is None else [_key(actor)]
        sockets = [ws for key in keys for ws in self._sockets.get(key, {}).values()]
        if actor is None:
            sockets += self.relay.proxies()
        for ws in sockets:
            ws.put((code, reason))
        return len(sockets)

    def placement_changed(self) -> None:
        """Where actors run changed (a cluster's slots moved): the sockets of an actor
        that runs elsewhere now are closed with 1012 (service restart), so that their
        clients reconnect and reach it where it is."""
        for held in list(self._sockets.values()):
            sockets = list(held.values())
            if sockets and self._sup.locate(sockets[0].actor) is not None:
                for ws in sockets:
                    ws.put((SERVICE_RESTART, "the actor moved: reconnect"))

    async def _report(self, ws: WebSocket, error: DotdoError) -> None:
        try:
            await self._sup.run_turn(ws.actor, lambda actor: _optional(actor, "websocket_error", ws, error))
        except DotdoError as exc:
            log.warning("%s: websocket_error failed too: %s", ws.actor, exc)

    # -- what the actor's API calls ---------------------------------------------------

    def accept(self, actor: ActorId, ws: object, tags: Any) -> None:
        if not isinstance(ws, WebSocket) or ws.actor != actor:
            raise InvalidInput("accept_websocket takes the socket of an upgrade request made to this actor (request.websocket)")
        if ws.accepted:
            raise InvalidInput("this socket was accepted already")
        tags = _tags(tags)
        held = self._sockets.setdefault(_key(actor), {})
        if len(held) >= MAX_PER_ACTOR:
            raise Overloaded(f"{actor} has {MAX_PER_ACTOR:,} WebSockets open, the most an actor may have")
        ws.tags = tags
        ws.accepted = True
        held[ws.id] = ws

    def sockets(self, actor: ActorId, tag: str | None = None) -> list[WebSocket]:
        held = self._sockets.get(_key(actor), {})
        return [ws for ws in held.values() if not ws.closing and (tag is None or tag in ws.tags)]

    def set_auto_response(self, actor: ActorId, request: str | None, response: str | None) -> None:
        if request is None and response is None:
            self._auto.pop(_key(actor), None)
            return
        for what, text in (("request", request), ("response", response)):
            if not isinstance(text, str) or not 0 < len(text) <= MAX_AUTO_RESPONSE:
                raise InvalidInput(f"an auto-response's {what} is text of 1 to {MAX_AUTO_RESPONSE:,} characters")
        assert request is not None and response is not None
        self._auto[_key(actor)] = (request, response)

    def auto_response(self, actor: ActorId) -> tuple[str, str] | None:
        return self._auto.get(_key(actor))

    def frame(self, message: str | bytes) -> bytes:
        """``message`` as the frame that carries it to a client (text or binary, whole),
        encoded once however many sockets it goes to: the last ``FRAMES`` messages'
        frames are kept, by the message object.

        Raises:
            InvalidInput: It is over the size limit, or text that is not Unicode.
        """
        held = self._frames.get(id(message))
        if held is not None and held[0] is message:
            return held[1]
        if isinstance(message, str):
            try:
                payload = message.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInput("a WebSocket text message must be Unicode (it holds a lone surrogate)") from None
        else:
            payload = bytes(message)
        if len(payload) > self.max_message:
            raise InvalidInput(f"a WebSocket message is at most {self.max_message:,} bytes, not {len(payload):,}")
        encoded = frame(TEXT if isinstance(message, str) else BINARY, payload)
        frames = self._frames
        frames[id(message)] = (message, encoded)
        if len(frames) > FRAMES:
            del frames[next(iter(frames))]
        return encoded


def _key(actor: ActorId) -> tuple[str, str]:
    return (actor.namespace, actor.hex)


def _tags(tags: Any) -> tuple[str, ...]:
    if isinstance(tags, str) or not isinstance(tags, (list, tuple, set, frozenset)):
        raise InvalidInput("a socket's tags are a list of strings")
    tags = tuple(tags)
    if len(tags) > MAX_TAGS or not all(isinstance(t, str) and 0 < len(t) <= MAX_TAG for t in tags):
        raise InvalidInput(f"a socket has at most {MAX_TAGS} tags, each of 1 to {MAX_TAG} characters")
    return tags


def _handler(actor: Any, name: str) -> Any:
    handler = getattr(actor, name, None)
    if handler is None:
        raise InvalidInput(f"{type(actor).__name__} has no {name} handler for its WebSockets")
    return handler


async def _optional(actor: Any, name: str, *args: Any) -> None:
    handler = getattr(actor, name, None)
    if handler is not None:
        await handler(*args)
