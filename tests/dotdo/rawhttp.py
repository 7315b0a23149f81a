"""A raw HTTP/1.1 client for tests that send what no client library would: control
characters and dot segments left as they are, broken framing, requests that stall or
trickle. Replies are parsed just enough to judge them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import trio


@dataclass(frozen=True)
class Reply:
    """What the server sent back on one connection, read until it closed.

    Attributes:
        status: The final status (1xx interim replies skipped); None when the server
            closed the connection without a whole reply.
        headers: Its headers, names in lower case.
        body: Its body (as framed by Content-Length, else up to the close).
        raw: Every byte received.
    """

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)

    def __str__(self) -> str:
        if self.status is None:
            return f"closed after {len(self.raw)} bytes {self.raw[:80]!r}"
        return f"{self.status} {self.body[:300]!r}"


def request(
    method: str,
    target: str | bytes,
    body: bytes = b"",
    *,
    headers: Iterable[tuple[str, str]] = (),
    length: bool = True,
    close: bool = True,
) -> bytes:
    """The bytes of one request: ``target`` exactly as given, ``Host``, ``Content-Length``
    unless ``length`` is false or a body framing header is given, and
    ``Connection: close`` unless ``close`` is false."""
    headers = list(headers)
    names = {name.lower() for name, _ in headers}
    if length and not names & {"content-length", "transfer-encoding"}:
        headers.append(("Content-Length", str(len(body))))
    if close and "connection" not in names:
        headers.append(("Connection", "close"))
    target = target.encode("latin-1") if isinstance(target, str) else target
    head = b"%s %s HTTP/1.1\r\nHost: test\r\n" % (method.encode("ascii"), target)
    head += b"".join(b"%s: %s\r\n" % (n.encode("latin-1"), v.encode("latin-1")) for n, v in headers)
    return head + b"\r\n" + body


async def exchange(port: int, parts: bytes | Iterable[bytes], *, pause: float = 0.0, limit: float = 10.0) -> Reply:
    """Connect to 127.0.0.1:``port``, send ``parts`` (``pause`` seconds apart; an
    endless iterable trickles), and read until the server closes the connection.

    Sending stops when the server stops reading; the reply is read meanwhile, so a
    server that answers early is heard.

    Raises:
        trio.TooSlowError: The server neither answered nor closed within ``limit``.
    """
    chunks = [parts] if isinstance(parts, bytes) else parts
    with trio.fail_after(limit):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(_send, stream, chunks, pause)
            raw = await _read_to_close(stream)
            nursery.cancel_scope.cancel()
    return parse(raw)


async def _send(stream: trio.SocketStream, chunks: Iterable[bytes], pause: float) -> None:
    """Send each chunk, ``pause`` apart; quietly stop when the server hung up."""
    try:
        for index, chunk in enumerate(chunks):
            if index and pause:
                await trio.sleep(pause)
            await stream.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _read_to_close(stream: trio.SocketStream) -> bytes:
    """Every byte until the server closes (or resets) the connection."""
    received = bytearray()
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:  # a reset: what came before it still counts
            return bytes(received)
        if not chunk:
            return bytes(received)
        received += chunk


def parse(raw: bytes) -> Reply:
    """The first final reply in ``raw`` (everything the connection carried)."""
    rest = raw
    while True:
        end = rest.find(b"\r\n\r\n")
        if end < 0:
            return Reply(None, raw=raw)
        lines = rest[:end].decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        rest = rest[end + 4 :]
        if 100 <= status < 200 and status != 101:  # interim (100 Continue): the next one counts
            continue
        if "content-length" in headers:
            rest = rest[: int(headers["content-length"])]
        return Reply(status, headers, rest, raw)
