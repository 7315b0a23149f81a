"""WebSockets relayed between processes: a client's socket held by one worker (or node),
its actor owned by another.

An upgrade that lands on a process that does not own its actor is offered to the owner
(``$ws.open``, routed by the actor's address like any call): the owner runs the
actor's ``fetch`` with a socket whose messages go to an ``Outbox`` rather than to a
connection of its own, and answers whether it was accepted. The process holding the
client's connection (the holder) then

- sends each message from the client to the owner (``$ws.message``: the owner runs the
  turn, and answers once it is done, so messages are handled in order), and the close
  (``$ws.closed``);
- pulls what the actor sends (``$ws.pull``, one long poll per holder and actor: a
  ``Room``), which the owner answers as soon as something is waiting, in batches; a
  message broadcast to many of the holder's sockets crosses once, with their ids.

On the owner these sockets are the actor's like any other (``get_websockets``, tags,
attachments, hibernation). A holder that stops pulling for ``EXPIRY`` seconds is gone:
its sockets are closed there (``websocket_close`` with 1006). On the holder, an owner
that cannot be reached, or that no longer knows the socket (the actor moved), closes
the client's sockets with 1012 (service restart), so that they reconnect and reach the
actor where it is.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

import trio

from dotdo.storage.errors import DotdoError, InvalidInput

from dotdo.runtime.core import values
from dotdo.runtime.core.errors import Unavailable
from dotdo.runtime.core.ids import ActorId

if TYPE_CHECKING:
    from dotdo.runtime.services.websockets import Item, WebSocket, WebSockets
    from dotdo.runtime.supervisor import Supervisor

log = logging.getLogger("dotdo.websockets")

METHODS = "$ws."
OPEN = "$ws.open"
MESSAGE = "$ws.message"
CLOSED = "$ws.closed"
PULL = "$ws.pull"
PULL_WAIT = 10.0
"""Seconds the owner holds a pull that finds nothing waiting before it answers empty."""
PULL_TIMEOUT = PULL_WAIT + 10.0
EXPIRY = PULL_TIMEOUT + 10.0
"""Seconds without a pull after which the owner takes a holder for gone."""
MAX_OUTBOX = 64 * 1024 * 1024
"""Bytes waiting for one holder's pull at most; past it, the holder is too slow and the
outbox's sockets are closed (1013)."""
MOVED = 1012
TRY_AGAIN = 1013


class Outbox:
    """On the owner: what the actor sent to one holder's sockets, waiting for its pull,
    as ``[item, [socket ids]]`` entries in order (an item sent to several sockets in a
    row is one entry)."""

    def __init__(self, clock: Any) -> None:
        self.sockets: dict[int, WebSocket] = {}
        self.entries: list[list[Any]] = []
        self.bytes = 0
        self.ready = trio.Event()
        self.pulling = 0
        self._clock = clock
        self.pulled = clock()

    def put(self, ws: WebSocket, item: Item) -> None:
        last = self.entries[-1] if self.entries else None
        if last is not None and (last[0] is item or last[0] == item) and ws.id not in last[2]:
            last[1].append(ws.id)
            last[2].add(ws.id)
        else:
            self.entries.append([item, [ws.id], {ws.id}])
            self.bytes += len(item) if isinstance(item, (str, bytes)) else 0
            if self.bytes > MAX_OUTBOX:  # the holder is too slow: its sockets close
                self.entries, self.bytes = [], 0
                for held in self.sockets.values():
                    held.closing = True
                    self.entries.append([(TRY_AGAIN, "the server holding this socket does not keep up"), [held.id], {held.id}])
        self.ready.set()

    def take(self) -> list[list[Any]]:
        entries, self.entries = self.entries, []
        self.bytes = 0
        self.ready = trio.Event()
        return [[list(item) if isinstance(item, tuple) else item, ids] for item, ids, _ in entries]

    def idle_for(self) -> float:
        return 0.0 if self.pulling else self._clock() - self.pulled


class Room:
    """On the holder: the client connections it holds for one actor owned elsewhere
    (their local sockets, by the owner's socket id), and the task pulling what the
    actor sends them."""

    def __init__(self, target: ActorId) -> None:
        self.target = target
        self.proxies: dict[int, WebSocket] = {}
        self.early: dict[int, list[Item]] = {}
        """What arrived for a socket whose open answer has not been seen here yet."""
        self.running = False


class WebSocketRelay:
    """Both ends of the relay for one supervisor's hub (see the module)."""

    def __init__(self, hub: WebSockets, supervisor: Supervisor) -> None:
        self._hub = hub
        self._sup = supervisor
        self.holder = secrets.token_hex(8)
        """This process as a holder (new at each start: sockets do not outlive it)."""
        self._outboxes: dict[tuple[str, str, str], Outbox] = {}
        self._rooms: dict[tuple[str, str], Room] = {}
        self.open_hook: Any = None
        """Runs ``fetch`` for a relayed upgrade: ``(target, http, ws) -> (status,
        headers, body)`` (set by the HTTP server; None: this process serves none)."""

    # -- the holder's side ----------------------------------------------------------

    async def open(self, target: ActorId, http: Any) -> tuple[WebSocket | None, Any]:
        """Offer an upgrade (``wire.HttpRequest``) to the owner of ``target``: the local
        socket to run the client's connection with when it was accepted (else None),
        and the owner's (status, headers, body) when it was not."""
        payload = values.pack([self.holder, http.method, http.path, http.query, http.headers, http.body])
        answer = values.unpack(await self._sup.websocket_call(target, OPEN, payload))
        if not answer["accepted"]:
            status, headers, body = answer["reply"]
            return None, (status, [(bytes(k), bytes(v)) for k, v in headers], body)
        proxy = self._hub.offer(target, socket_id=answer["id"])
        room = self._rooms.get(_key(target))
        if room is None:
            room = self._rooms[_key(target)] = Room(target)
        room.proxies[proxy.id] = proxy
        for item in room.early.pop(proxy.id, ()):
            proxy.put(item)
        if not room.running:
            room.running = True
            self._sup.nursery.start_soon(self._pull, room)
        return proxy, None

    async def message(self, proxy: WebSocket, message: str | bytes) -> None:
        await self._send(proxy, MESSAGE, [self.holder, proxy.id, message])

    async def closed(self, proxy: WebSocket, code: int, reason: str, was_clean: bool) -> None:
        """The client's connection ended: the owner forgets the socket, and its actor
        hears of it unless it closed the socket itself (as for a socket of its own)."""
        room = self._rooms.get(_key(proxy.actor))
        if room is None or room.proxies.pop(proxy.id, None) is None:
            return  # its room ended: the owner is gone or forgot it
        room.early.pop(proxy.id, None)
        await self._send(proxy, CLOSED, [self.holder, proxy.id, code, reason, was_clean])

    async def _send(self, proxy: WebSocket, method: str, body: list[Any]) -> None:
        try:
            await self._sup.websocket_call(proxy.actor, method, values.pack(body))
        except DotdoError as exc:
            if method == MESSAGE:
                log.info("%s: its owner did not take a message (%s): closing the socket", proxy.actor, exc)
                proxy.put((MOVED, "the actor's server cannot be reached: reconnect"))
            else:
                log.info("%s: its owner did not hear that a socket closed (%s)", proxy.actor, exc)

    async def _pull(self, room: Room) -> None:
        """Pull what the actor sends the room's sockets until none is left (or the owner
        cannot be reached, or forgot them: then they are closed with 1012)."""
        key = _key(room.target)
        try:
            while room.proxies:
                try:
                    reply = values.unpack(
                        await self._sup.websocket_call(room.target, PULL, values.pack(self.holder), timeout=PULL_TIMEOUT)
                    )
                except DotdoError as exc:
                    if not self._sup.closing:
                        log.info("%s: cannot pull its WebSocket messages (%s): closing its %d relayed sockets", room.target, exc, len(room.proxies))
                    break
                for item, ids in reply["entries"]:
                    if isinstance(item, list):
                        item = (int(item[0]), str(item[1]))
                    for socket_id in ids:
                        proxy = room.proxies.get(socket_id)
                        if proxy is None:
                            room.early.setdefault(socket_id, []).append(item)
                        else:
                            proxy.put(item)
                if reply["gone"]:
                    break
        finally:
            room.running = False
            if self._rooms.get(key) is room:
                del self._rooms[key]
            for proxy in room.proxies.values():
                proxy.put((MOVED, "the actor's server went away or the actor moved: reconnect"))

    def proxies(self) -> list[WebSocket]:
        """Every client socket held here for an actor owned elsewhere."""
        return [proxy for room in self._rooms.values() for proxy in room.proxies.values()]

    # -- the owner's side ------------------------------------------------------------

    async def serve(self, method: str, target: ActorId, payload: bytes) -> bytes:
        """Run a relay call that reached the owner of ``target``."""
        body = values.unpack(payload)
        if method == OPEN:
            return values.pack(await self._open(target, body))
        if method == PULL:
            return values.pack(await self._pulled(target, _text(body)))
        if method not in (MESSAGE, CLOSED) or not isinstance(body, list) or len(body) < 2:
            raise InvalidInput(f"{method} is not a WebSocket relay call")
        ws = self._socket(target, _text(body[0]), body[1])
        if method == MESSAGE:
            if len(body) != 3 or not isinstance(body[2], (str, bytes)):
                raise InvalidInput("$ws.message carries [holder, socket, text or bytes]")
            await self._hub.message(ws, body[2])
        else:
            code, reason, clean = (body[2:] + [1006, "", False])[:3]
            self._drop(target, _text(body[0]), ws.id)
            await self._hub.closed(ws, int(code), str(reason), bool(clean))
        return values.pack(None)

    async def _open(self, target: ActorId, body: Any) -> dict[str, Any]:
        if self.open_hook is None:
            raise Unavailable(f"{target} is served here, but this process serves no HTTP: its WebSockets cannot be relayed")
        if not isinstance(body, list) or len(body) != 6:
            raise InvalidInput("$ws.open carries [holder, method, path, query, headers, body]")
        holder = _text(body[0])
        key = (target.namespace, target.hex, holder)
        outbox = self._outboxes.get(key)
        if outbox is None:
            outbox = self._outboxes[key] = Outbox(self._hub.clock)
            self._sup.nursery.start_soon(self._expire, target, holder, outbox)
        ws = self._hub.offer(target)
        ws.sink = outbox
        outbox.sockets[ws.id] = ws
        try:
            status, headers, reply = await self.open_hook(target, body[1:], ws)
        except BaseException:
            self._drop(target, holder, ws.id)
            raise
        if not ws.accepted:
            self._drop(target, holder, ws.id)
            return {"accepted": False, "reply": [status, [list(h) for h in headers], reply]}
        return {"accepted": True, "id": ws.id}

    async def _pulled(self, target: ActorId, holder: str) -> dict[str, Any]:
        outbox = self._outboxes.get((target.namespace, target.hex, holder))
        if outbox is None:
            return {"entries": [], "gone": True}
        outbox.pulling += 1
        try:
            with trio.move_on_after(PULL_WAIT):
                await outbox.ready.wait()
        finally:
            outbox.pulling -= 1
            outbox.pulled = self._hub.clock()
        return {"entries": outbox.take(), "gone": False}

    def _socket(self, target: ActorId, holder: str, socket_id: Any) -> WebSocket:
        outbox = self._outboxes.get((target.namespace, target.hex, holder))
        ws = None if outbox is None else outbox.sockets.get(socket_id)
        if ws is None:
            raise Unavailable(f"{target} holds no WebSocket {socket_id!r} of that holder here (it moved, or its server restarted)")
        return ws

    def _drop(self, target: ActorId, holder: str, socket_id: int) -> None:
        outbox = self._outboxes.get((target.namespace, target.hex, holder))
        if outbox is not None:
            outbox.sockets.pop(socket_id, None)

    async def _expire(self, target: ActorId, holder: str, outbox: Outbox) -> None:
        """End ``outbox`` once its sockets are gone, or its holder stopped pulling for
        ``EXPIRY`` seconds (then its sockets close as if their clients went away)."""
        key = (target.namespace, target.hex, holder)
        try:
            while True:
                await trio.sleep(max(EXPIRY - outbox.idle_for(), 1.0))
                if not outbox.sockets and not outbox.pulling:
                    return
                if outbox.idle_for() >= EXPIRY:
                    log.warning("%s: the holder of %d of its WebSockets stopped pulling: closing them", target, len(outbox.sockets))
                    for ws in list(outbox.sockets.values()):
                        outbox.sockets.pop(ws.id, None)
                        try:
                            await self._hub.closed(ws, 1006, "", False)
                        except DotdoError as exc:
                            log.warning("%s: websocket_close failed: %s", target, exc)
                    return
        finally:
            if self._outboxes.get(key) is outbox:
                del self._outboxes[key]


def _key(actor: ActorId) -> tuple[str, str]:
    return (actor.namespace, actor.hex)


def _text(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise InvalidInput("a WebSocket relay call names its holder")
    return value
