"""A small WebSocket client for the tests, on wsproto (the library the server's own
WebSocket side runs on) over a trio stream it owns and always closes: messages, close
codes both ways, pings, refused handshakes, and raw frames a well-behaved client would
never send."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)


class Rejected(Exception):
    """The server refused the upgrade with an HTTP response."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"{status}: {body[:200]!r}")
        self.status = status
        self.body = body


class Closed(Exception):
    """The server closed the socket."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


@dataclass
class Client:
    stream: trio.SocketStream
    ws: WSConnection
    pending: list[str | bytes] = field(default_factory=list)
    pongs: int = 0
    closed: Closed | None = None
    _parts: list[str | bytes] = field(default_factory=list)

    async def send(self, message: str | bytes) -> None:
        await self.stream.send_all(self.ws.send(Message(data=message)))

    async def ping(self) -> None:
        await self.stream.send_all(self.ws.send(Ping(b"p")))

    async def receive(self) -> str | bytes:
        """The next message; ``Closed`` once the server closed the socket."""
        while not self.pending:
            if self.closed is not None:
                raise self.closed
            await self._read()
        return self.pending.pop(0)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close (the handshake completed if the server answers)."""
        if self.closed is None:
            if self.ws.state is ConnectionState.OPEN:  # not begun already
                await self.stream.send_all(self.ws.send(CloseConnection(code=code, reason=reason)))
            with trio.move_on_after(5):
                while self.closed is None:
                    await self._read()

    async def _read(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            self.closed = self.closed or Closed(1006, "")
            return
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                self._parts.append(event.data)
                if event.message_finished:
                    joined = "".join(self._parts) if isinstance(event, TextMessage) else b"".join(self._parts)  # type: ignore[arg-type]
                    self.pending.append(joined)
                    self._parts.clear()
            elif isinstance(event, Ping):
                if self.ws.state is ConnectionState.OPEN:  # not while closing
                    await self.stream.send_all(self.ws.send(event.response()))
            elif isinstance(event, Pong):
                self.pongs += 1
            elif isinstance(event, CloseConnection):
                self.closed = Closed(event.code, event.reason)
                if self.ws.state is ConnectionState.REMOTE_CLOSING:  # the server began it: answer
                    try:
                        await self.stream.send_all(self.ws.send(event.response()))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass  # it closed the connection already


@asynccontextmanager
async def connect(url: str, headers: list[tuple[bytes, bytes]] | None = None) -> AsyncIterator[Client]:
    """A WebSocket to ``url`` (``ws://host:port/path?query``), closed at the end."""
    parts = urlsplit(url)
    stream = await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 80)
    try:
        ws = WSConnection(ConnectionType.CLIENT)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        await stream.send_all(ws.send(Request(host=parts.netloc, target=target, extra_headers=headers or [])))
        client = Client(stream, ws)
        status, body = 0, b""
        while True:
            data = await stream.receive_some(65536)
            if not data:
                raise Rejected(status, body)
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    try:
                        yield client
                    finally:
                        with trio.CancelScope(shield=True):
                            try:
                                await client.close()
                            except (trio.BrokenResourceError, trio.ClosedResourceError):
                                pass  # the server went first
                    return
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise Rejected(status, body)
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        raise Rejected(status, body)
    finally:
        await stream.aclose()
