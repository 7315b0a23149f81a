"""The transport's frames and messages (see ``docs/protocol.md``, the reference).

A frame is a 4-byte big-endian unsigned length, then that many bytes of msgpack: an
array whose first element is the message kind. Arguments and results travel as msgpack
``bin`` inside the frame (``dotdo.runtime.core.values`` encodings), so the envelope is decoded with
no extension types and values are decoded on their own, with references bound to the
receiving side.

Everything here is synchronous and side-effect free: the server (``dotdo.runtime.transport.server``)
and the client connection (``dotdo.runtime.transport.connection``) do the I/O.
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack

from dotdo.storage.errors import DotdoError

from dotdo.runtime.core.errors import ProtocolError
from dotdo.runtime.core.ids import ActorId, id_from_string, named

VERSION = 1
HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
"""Largest frame payload accepted, in bytes (the length prefix not counted)."""

HELLO, WELCOME, CALL, REPLY, ERROR, CANCEL, EVENT, PING, PONG, FETCH = range(1, 11)
KIND_NAMES = {
    HELLO: "hello",
    WELCOME: "welcome",
    CALL: "call",
    REPLY: "reply",
    ERROR: "error",
    CANCEL: "cancel",
    EVENT: "event",
    PING: "ping",
    PONG: "pong",
    FETCH: "fetch",
}
MAX_REQUEST_ID = 2**63 - 1
MAX_STEPS = 64
"""Steps in one pipelined call."""
MAX_HEADERS = 256
"""Header lines in one fetch."""


# -- messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    token: str | None


@dataclass(frozen=True, slots=True)
class Welcome:
    """The server's answer to a hello: its limits. ``max_inflight_bytes`` (None from
    servers that do not say) bounds the bytes of requests in flight, as
    ``max_inflight`` bounds their number."""

    version: int
    max_frame: int
    max_inflight: int
    max_inflight_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Call:
    """A call (several steps: a pipeline). ``timeout`` is seconds from receipt."""

    id: int
    target: ActorId
    steps: list[tuple[str, bytes]]
    timeout: float | None = None
    chain: str | None = None
    path: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reply:
    id: int
    result: bytes


@dataclass(frozen=True, slots=True)
class Error:
    """An error for request ``id`` (None: about the connection itself)."""

    id: int | None
    type: str
    message: str
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Cancel:
    id: int


@dataclass(frozen=True, slots=True)
class Event:
    """A one-way call: run, result dropped, nothing sent back."""

    target: ActorId
    method: str
    args: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    id: int


@dataclass(frozen=True, slots=True)
class Pong:
    id: int


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An HTTP request as it travels in a fetch: ``path`` as sent (percent-encoded),
    ``query`` the raw query string, header names lower-case."""

    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(frozen=True, slots=True)
class Fetch:
    """An HTTP request for an actor's ``fetch``; answered by a reply whose result is
    ``[status, [[name, value], ...], body]``. ``timeout`` is seconds from receipt."""

    id: int
    target: ActorId
    request: HttpRequest
    timeout: float | None = None


Message = Hello | Welcome | Call | Reply | Error | Cancel | Event | Ping | Pong | Fetch


# -- encoding --------------------------------------------------------------------------


def _target(target: ActorId) -> list[Any]:
    return [target.namespace, target.hex, target.name]


def _options(timeout: float | None, chain: str | None, path: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if timeout is not None:
        options["timeout"] = timeout
    if chain is not None:
        options["chain"] = chain
    if path:
        options["path"] = list(path)
    return options


def _call_array(
    request: int, target: ActorId, steps: list[tuple[str, bytes]], timeout: float | None, chain: str | None, path: tuple[str, ...]
) -> list[Any]:
    return [CALL, request, _target(target), [[m, a] for m, a in steps], _options(timeout, chain, path)]


def to_wire(message: Message) -> list[Any]:
    """The msgpack array of a message."""
    match message:
        case Call(id, target, steps, timeout, chain, path):
            return _call_array(id, target, steps, timeout, chain, path)
        case Reply(id, result):
            return [REPLY, id, result]
        case Error(id, type_, text, attrs):
            return [ERROR, id, {"type": type_, "message": text, "attrs": attrs}]
        case Cancel(id):
            return [CANCEL, id]
        case Event(target, method, args):
            return [EVENT, _target(target), method, args]
        case Ping(id):
            return [PING, id]
        case Pong(id):
            return [PONG, id]
        case Hello(version, token):
            return [HELLO, {"version": version, "token": token}]
        case Fetch(id, target, request, timeout):
            http = {
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "headers": [[name, value] for name, value in request.headers],
                "body": request.body,
            }
            return [FETCH, id, _target(target), http, _options(timeout, None, ())]
        case Welcome(version, max_frame, max_inflight, max_inflight_bytes):
            limits = {"version": version, "max_frame": max_frame, "max_inflight": max_inflight}
            if max_inflight_bytes is not None:
                limits["max_inflight_bytes"] = max_inflight_bytes
            return [WELCOME, limits]
    raise TypeError(f"not a message: {message!r}")


def encode(message: Message) -> bytes:
    """One frame: length prefix and msgpack body."""
    body = msgpack.packb(to_wire(message), use_bin_type=True)
    return HEADER.pack(len(body)) + body


def encode_call(
    request: int, target: ActorId, steps: list[tuple[str, bytes]], timeout: float | None, chain: str | None, path: tuple[str, ...]
) -> bytes:
    """``encode(Call(...))`` without building the message (the hot path)."""
    body = msgpack.packb(_call_array(request, target, steps, timeout, chain, path), use_bin_type=True)
    return HEADER.pack(len(body)) + body


def encode_reply(request: int, result: bytes) -> bytes:
    """``encode(Reply(request, result))`` without building the message (the hot path)."""
    body = msgpack.packb([REPLY, request, result], use_bin_type=True)
    return HEADER.pack(len(body)) + body


# -- decoding --------------------------------------------------------------------------


class FrameDecoder:
    """Cuts a byte stream into frame bodies. Feed it what the socket gives.

    Raises ``ProtocolError`` (from ``feed``) for a frame longer than ``max_frame``;
    after that the stream cannot be trusted and the connection should close.
    """

    __slots__ = ("max_frame", "_buffer")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every frame body now complete, in order."""
        buffer = self._buffer
        buffer += data
        bodies: list[bytes] = []
        start = 0
        size = len(buffer)
        while size - start >= HEADER.size:
            (length,) = HEADER.unpack_from(buffer, start)
            if length > self.max_frame:
                raise ProtocolError(f"a frame of {length:,} bytes is over the limit of {self.max_frame:,}")
            end = start + HEADER.size + length
            if end > size:
                break
            bodies.append(bytes(buffer[start + HEADER.size : end]))
            start = end
        if start:
            del buffer[:start]
        return bodies

    @property
    def pending(self) -> int:
        """Bytes received that do not make a whole frame yet."""
        return len(self._buffer)


def decode(body: bytes) -> Message:
    """The message in one frame body.

    Raises:
        ProtocolError: Not msgpack, not an array of a known kind, or fields of the
            wrong type; the message names what is wrong.
    """
    try:
        raw = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"a frame is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(raw, list) or not raw or type(raw[0]) is not int:
        raise ProtocolError("a frame must be a msgpack array starting with the message kind (an integer)")
    kind = raw[0]
    parse = _PARSERS.get(kind)
    if parse is None:
        raise ProtocolError(f"unknown message kind {kind}")
    return parse(raw)


def _shape(raw: list[Any], count: int, name: str) -> None:
    if len(raw) != count:
        raise ProtocolError(f"a {name} frame has {count} elements, got {len(raw)}")


def _request_id(value: Any, name: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_REQUEST_ID:
        raise ProtocolError(f"the request id of a {name} frame must be an integer from 0 to 2**63-1")
    return value


def _text(value: Any, what: str, limit: int = 4096) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError(f"{what} must be text of at most {limit} characters")
    return value


def _parse_target(value: Any) -> ActorId:
    if not isinstance(value, list) or len(value) != 3:
        raise ProtocolError("a target must be [namespace, hex id, name or nil]")
    namespace, hex_id, name = value
    if not isinstance(namespace, str) or not isinstance(hex_id, str) or not (name is None or isinstance(name, str)):
        raise ProtocolError("a target must be [namespace, hex id, name or nil] of text")
    actor_id = _actor_id(namespace, hex_id)
    if name is None:
        return actor_id
    try:
        return named(actor_id.namespace, actor_id.hex, name)
    except DotdoError as exc:
        raise ProtocolError(f"bad target: {exc}") from None


@functools.lru_cache(maxsize=4096)
def _actor_id(namespace: str, hex_id: str) -> ActorId:
    # Each id is checked once (ActorId is immutable); refusals are not remembered. The
    # name stays out of the cache: it could pin thousands of frame-long strings.
    try:
        return id_from_string(namespace, hex_id)
    except DotdoError as exc:
        raise ProtocolError(f"bad target: {exc}") from None


def _parse_hello(raw: list[Any]) -> Hello:
    _shape(raw, 2, "hello")
    body = raw[1]
    if not isinstance(body, dict) or type(body.get("version")) is not int:
        raise ProtocolError("a hello frame is [1, {version, token}]")
    token = body.get("token")
    if token is not None:
        token = _text(token, "the token")
    return Hello(body["version"], token)


def _parse_welcome(raw: list[Any]) -> Welcome:
    _shape(raw, 2, "welcome")
    body = raw[1]
    if not isinstance(body, dict) or not all(type(body.get(k)) is int for k in ("version", "max_frame", "max_inflight")):
        raise ProtocolError("a welcome frame is [2, {version, max_frame, max_inflight[, max_inflight_bytes]}]")
    max_bytes = body.get("max_inflight_bytes")
    if max_bytes is not None and (type(max_bytes) is not int or max_bytes < 1):
        raise ProtocolError("a welcome's max_inflight_bytes must be a positive integer")
    return Welcome(body["version"], body["max_frame"], body["max_inflight"], max_bytes)


def _parse_call(raw: list[Any]) -> Call:
    _shape(raw, 5, "call")
    request = _request_id(raw[1], "call")
    target = _parse_target(raw[2])
    steps_raw, options = raw[3], raw[4]
    if not isinstance(steps_raw, list) or not 1 <= len(steps_raw) <= MAX_STEPS:
        raise ProtocolError(f"a call has 1 to {MAX_STEPS} steps")
    steps: list[tuple[str, bytes]] = []
    for step in steps_raw:
        if not isinstance(step, list) or len(step) != 2 or not isinstance(step[1], bytes):
            raise ProtocolError("a call step is [method, arguments as bin]")
        steps.append((_text(step[0], "a method name", 256), step[1]))
    return Call(request, target, steps, *_parse_options(options))


def _parse_options(options: Any) -> tuple[float | None, str | None, tuple[str, ...]]:
    if not isinstance(options, dict):
        raise ProtocolError("call options must be a map")
    timeout = options.get("timeout")
    if timeout is not None:
        if type(timeout) not in (int, float) or not math.isfinite(timeout) or timeout <= 0:
            raise ProtocolError("a call timeout must be a positive number of seconds")
        timeout = float(timeout)
    chain = options.get("chain")
    if chain is not None:
        chain = _text(chain, "a call chain", 128)
    path_raw = options.get("path", [])
    if not isinstance(path_raw, list) or len(path_raw) > 1024:
        raise ProtocolError("a call path must be a list of at most 1024 addresses")
    path = tuple(_text(p, "a path entry", 512) for p in path_raw)
    return timeout, chain, path


def _parse_fetch(raw: list[Any]) -> Fetch:
    _shape(raw, 5, "fetch")
    request = _request_id(raw[1], "fetch")
    target = _parse_target(raw[2])
    http = raw[3]
    if not isinstance(http, dict):
        raise ProtocolError("a fetch request is a map {method, path, query, headers, body}")
    method = _text(http.get("method"), "an HTTP method", 16)
    path = _text(http.get("path"), "an HTTP path", 65536)
    if not path.startswith("/"):
        raise ProtocolError("an HTTP path must start with /")
    query, body, headers_raw = http.get("query", b""), http.get("body", b""), http.get("headers", [])
    if not isinstance(query, bytes) or not isinstance(body, bytes):
        raise ProtocolError("a fetch's query and body must be bin")
    if not isinstance(headers_raw, list) or len(headers_raw) > MAX_HEADERS:
        raise ProtocolError(f"a fetch's headers are a list of at most {MAX_HEADERS} [name, value] pairs of bin")
    headers: list[tuple[bytes, bytes]] = []
    for pair in headers_raw:
        if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], bytes) or not isinstance(pair[1], bytes):
            raise ProtocolError("a fetch header is [name, value], both bin")
        headers.append((pair[0], pair[1]))
    timeout, _chain, _path = _parse_options(raw[4])  # a fetch starts a chain of its own
    return Fetch(request, target, HttpRequest(method, path, query, headers, body), timeout)


def _parse_reply(raw: list[Any]) -> Reply:
    _shape(raw, 3, "reply")
    if not isinstance(raw[2], bytes):
        raise ProtocolError("a reply's result must be bin")
    return Reply(_request_id(raw[1], "reply"), raw[2])


def _parse_error(raw: list[Any]) -> Error:
    _shape(raw, 3, "error")
    request = None if raw[1] is None else _request_id(raw[1], "error")
    body = raw[2]
    if not isinstance(body, dict):
        raise ProtocolError("an error frame is [5, id or nil, {type, message, attrs}]")
    attrs = body.get("attrs") or {}
    if not isinstance(attrs, dict):
        raise ProtocolError("error attrs must be a map")
    return Error(request, _text(body.get("type"), "an error type", 128), _text(body.get("message"), "an error message", 65536), attrs)


def _parse_cancel(raw: list[Any]) -> Cancel:
    _shape(raw, 2, "cancel")
    return Cancel(_request_id(raw[1], "cancel"))


def _parse_event(raw: list[Any]) -> Event:
    _shape(raw, 4, "event")
    if not isinstance(raw[3], bytes):
        raise ProtocolError("an event's arguments must be bin")
    return Event(_parse_target(raw[1]), _text(raw[2], "a method name", 256), raw[3])


def _parse_ping(raw: list[Any]) -> Ping:
    _shape(raw, 2, "ping")
    return Ping(_request_id(raw[1], "ping"))


def _parse_pong(raw: list[Any]) -> Pong:
    _shape(raw, 2, "pong")
    return Pong(_request_id(raw[1], "pong"))


_PARSERS = {
    HELLO: _parse_hello,
    WELCOME: _parse_welcome,
    CALL: _parse_call,
    REPLY: _parse_reply,
    ERROR: _parse_error,
    CANCEL: _parse_cancel,
    EVENT: _parse_event,
    PING: _parse_ping,
    PONG: _parse_pong,
    FETCH: _parse_fetch,
}
