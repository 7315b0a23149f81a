"""An etcd v3 client for trio, over etcd's gRPC-JSON gateway.

The gateway (``POST /v3/kv/range`` and its siblings) speaks JSON over HTTP/1.1, so the
client needs httpx alone, no gRPC stack: keys and values travel base64-encoded, int64
fields come back as JSON strings, and a field that is absent is zero (or false). etcd
3.4 and 3.5 serve the same paths.

Failover: ``Etcd`` is given every endpoint of the cluster, asks the one that answered
last, and on a connection failure or a timeout asks the next. A request that may have
reached etcd is sent again elsewhere only when that is harmless (reads, lease keepalive
and revocation, opening a watch); a ``put``, ``delete``, ``txn`` or ``grant`` that fails
after its headers left raises ``EtcdUnavailable`` at once, and it may or may not have
been applied: the caller re-reads (a fenced ``txn`` makes that cheap). Each attempt is
bounded by the timeout and a call tries each endpoint once, so it takes at most
``len(endpoints) * timeout``.

No task runs in the background: each call is one request (or one per endpoint tried),
and a watch's stream is read only while its owner iterates it, inside its ``async
with``. Errors::

    EtcdError                  etcd answered with an error (code: its gRPC status)
    ├── EtcdUnavailable        no endpoint answered within the timeout; a watch broke
    ├── LeaseExpired           keepalive/time_to_live of a lease that no longer exists
    └── Compacted              a watch started at a revision etcd has compacted away
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import trio

T = TypeVar("T")

NOT_FOUND = 5
"""The gRPC status etcd gives a lease that does not exist."""
UNAVAILABLE = 14
"""The gRPC status of a member that cannot serve now (no leader, shutting down): a
read goes to the next endpoint."""

_RESULTS: Mapping[str, str] = MappingProxyType({"==": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"})
_TARGETS: Mapping[str, str] = MappingProxyType(
    {"create_revision": "CREATE", "mod_revision": "MOD", "version": "VERSION", "value": "VALUE", "lease": "LEASE"}
)


class EtcdError(Exception):
    """etcd answered with an error; the message is etcd's.

    Attributes:
        code: The gRPC status code etcd gave (None when the error is not etcd's own).
    """

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """No endpoint answered within the timeout (the message names each and why), or a
    watch's stream broke. A ``put``, ``delete``, ``txn`` or ``grant`` that raised it may
    or may not have been applied."""


class LeaseExpired(EtcdError):
    """The lease no longer exists (it expired or was revoked): whatever it held is gone.

    Attributes:
        lease: The lease's id.
    """

    def __init__(self, lease: int) -> None:
        super().__init__(f"lease {lease:x} has expired", code=NOT_FOUND)
        self.lease = lease


class Compacted(EtcdError):
    """A watch asked for changes from a revision that etcd compacted: they are lost, so
    the watcher reads the current state again (``Etcd.range``) and watches from there.

    Attributes:
        compact_revision: The oldest revision etcd still has.
    """

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"etcd compacted its history up to revision {compact_revision}")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key as etcd stores it; ``lease`` 0 means none."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a ``txn``: the key's ``field`` compared with ``operand`` by
    ``op`` (``==``, ``!=``, ``<``, ``>``). Built by the class methods; a key that does
    not exist has create_revision, mod_revision and version 0."""

    key: str
    field: str
    op: str
    operand: int | bytes

    def __post_init__(self) -> None:
        if self.op not in _RESULTS:
            raise ValueError(f"compare op {self.op!r}: one of {', '.join(_RESULTS)}")
        if self.field not in _TARGETS:
            raise ValueError(f"compare field {self.field!r}: one of {', '.join(_TARGETS)}")

    @classmethod
    def create_revision(cls, key: str, op: str, revision: int) -> Compare:
        """``create_revision(key, "==", 0)``: the key does not exist."""
        return cls(key, "create_revision", op, revision)

    @classmethod
    def mod_revision(cls, key: str, op: str, revision: int) -> Compare:
        """``mod_revision(key, "==", seen)``: nobody wrote the key since it was read."""
        return cls(key, "mod_revision", op, revision)

    @classmethod
    def version(cls, key: str, op: str, version: int) -> Compare:
        return cls(key, "version", op, version)

    @classmethod
    def value(cls, key: str, op: str, value: bytes) -> Compare:
        return cls(key, "value", op, value)

    @classmethod
    def lease(cls, key: str, op: str, lease: int) -> Compare:
        return cls(key, "lease", op, lease)


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a ``txn`` branch: ``kind`` is ``put``, ``delete`` or ``get``."""

    kind: str
    key: str
    value: bytes = b""
    lease: int = 0
    prefix: bool = False

    @classmethod
    def put(cls, key: str, value: bytes, lease: int = 0) -> Op:
        return cls("put", key, value, lease=lease)

    @classmethod
    def delete(cls, key: str, prefix: bool = False) -> Op:
        return cls("delete", key, prefix=prefix)

    @classmethod
    def get(cls, key: str, prefix: bool = False) -> Op:
        return cls("get", key, prefix=prefix)


@dataclass(frozen=True, slots=True)
class TxnResult:
    """What a ``txn`` did: which branch ran (``succeeded``: the success one), the
    revision after it, and for each op of that branch the keys a ``get`` found (an
    empty list for a put or a delete)."""

    succeeded: bool
    revision: int
    responses: list[list[KeyValue]]


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch: ``type`` is ``put`` or ``delete``; for a delete,
    ``kv.value`` is empty and ``kv.mod_revision`` is the delete's revision."""

    type: str
    kv: KeyValue


# -- the JSON of the gateway --------------------------------------------------------------


def _key_bytes(key: str) -> bytes:
    """The bytes etcd stores for ``key`` (any bytes round-trip through surrogateescape)."""
    return key.encode("utf-8", "surrogateescape")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def prefix_end(prefix: bytes) -> bytes:
    """The end of the range of keys starting with ``prefix`` (etcd's rule: the prefix
    with its last byte below 0xff incremented; ``\\0``, every key, if there is none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _range(key: str, prefix: bool) -> dict[str, str]:
    """The ``key`` (and ``range_end``) of a request for ``key``, or every key under it."""
    raw = _key_bytes(key)
    if not prefix:
        return {"key": _b64(raw)}
    return {"key": _b64(raw or b"\0"), "range_end": _b64(prefix_end(raw))}


def _int(data: Mapping[str, Any], name: str) -> int:
    return int(data.get(name, 0))


def _revision(data: Mapping[str, Any]) -> int:
    return _int(data.get("header", {}), "revision")


def _kv(data: Mapping[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(data.get("key", "")).decode("utf-8", "surrogateescape"),
        value=base64.b64decode(data.get("value", "")),
        create_revision=_int(data, "create_revision"),
        mod_revision=_int(data, "mod_revision"),
        version=_int(data, "version"),
        lease=_int(data, "lease"),
    )


def _kvs(data: Mapping[str, Any]) -> list[KeyValue]:
    return [_kv(kv) for kv in data.get("kvs", ())]


def _compare_json(compare: Compare) -> dict[str, str]:
    operand = _b64(compare.operand) if isinstance(compare.operand, bytes) else str(compare.operand)
    return {
        "key": _b64(_key_bytes(compare.key)),
        "target": _TARGETS[compare.field],
        "result": _RESULTS[compare.op],
        compare.field: operand,
    }


def _op_json(op: Op) -> dict[str, dict[str, Any]]:
    if op.kind == "put":
        return {"request_put": {**_range(op.key, False), "value": _b64(op.value), "lease": str(op.lease)}}
    if op.kind == "delete":
        return {"request_delete_range": _range(op.key, op.prefix)}
    if op.kind == "get":
        return {"request_range": _range(op.key, op.prefix)}
    raise ValueError(f"txn op {op.kind!r}: put, delete or get")


def _stream_error(data: Mapping[str, Any]) -> EtcdError | None:
    """The error a streamed answer carries instead of a result (``{"error": {...}}``)."""
    error = data.get("error")
    if not isinstance(error, dict):
        return None
    return EtcdError(str(error.get("message", error)), code=error.get("grpc_code", error.get("code")))


def _answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a complete answer; EtcdError if it is an error."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise EtcdError(f"{response.url} answered HTTP {response.status_code}, not etcd's JSON: {response.text[:200]!r}")
    if response.status_code != 200:
        raise EtcdError(str(data.get("message", data)), code=data.get("code"))
    error = _stream_error(data)
    if error is not None:
        raise error
    result: dict[str, Any] = data.get("result", data)  # a streamed RPC's answer (keepalive)
    return result


async def _complete(endpoint: str, response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a streamed answer, read to its end."""
    try:
        await response.aread()
    finally:
        await response.aclose()
    return _answer(response)


# -- requests -------------------------------------------------------------------------------


class _Body(httpx.AsyncByteStream):
    """A request body sent as one chunk by a plain iterator: httpx's own is an async
    generator, which a request cancelled mid-send leaves unfinished for the garbage
    collector, and trio warns (ResourceWarning) when it collects one."""

    def __init__(self, data: bytes) -> None:
        self._chunks = [data]

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if not self._chunks:
            raise StopAsyncIteration
        return self._chunks.pop()


class _Failed(Exception):
    """One endpoint did not answer; ``reached``: the request may have reached etcd."""

    def __init__(self, reason: str, reached: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reached = reached


class _Watch:
    """The batches of one watch's stream, read as its owner iterates (an iterator
    object: an async generator abandoned mid-stream would make trio warn)."""

    def __init__(self, response: httpx.Response, endpoint: str) -> None:
        self._response = response
        self._endpoint = endpoint
        self._chunks = response.aiter_text()
        self._buffer = ""
        self._decoder = json.JSONDecoder()

    def __aiter__(self) -> _Watch:
        return self

    async def __anext__(self) -> tuple[list[Event], int]:
        while True:
            message = await self.message()
            result = message.get("result", {})
            if result.get("canceled"):
                if _int(result, "compact_revision"):
                    raise Compacted(_int(result, "compact_revision"))
                raise EtcdError(f"etcd cancelled the watch: {result.get('cancel_reason', 'no reason given')}")
            if result.get("created"):
                continue
            events = [Event("delete" if e.get("type") == "DELETE" else "put", _kv(e["kv"])) for e in result.get("events", ())]
            return events, _revision(result)

    async def message(self) -> dict[str, Any]:
        """The next JSON object of the stream (the gateway ends each with a newline;
        objects run together are read too)."""
        while True:
            self._buffer = self._buffer.lstrip()
            if self._buffer and ("\n" in self._buffer or self._buffer.endswith("}")):
                try:
                    message, end = self._decoder.raw_decode(self._buffer)
                except ValueError:
                    if "\n" in self._buffer:  # a whole line that is not JSON
                        raise EtcdError(f"garbled watch stream from {self._endpoint}: {self._buffer[:200]!r}") from None
                else:
                    self._buffer = self._buffer[end:]
                    if not isinstance(message, dict):
                        raise EtcdError(f"garbled watch stream from {self._endpoint}: {message!r}")
                    error = _stream_error(message)
                    if error is not None:
                        raise EtcdUnavailable(f"the watch stream from {self._endpoint} broke: {error}", code=error.code)
                    return message
            try:
                self._buffer += await anext(self._chunks)
            except StopAsyncIteration:
                raise EtcdUnavailable(f"the watch stream from {self._endpoint} ended") from None
            except httpx.HTTPError as error:
                raise EtcdUnavailable(f"the watch stream from {self._endpoint} broke: {error!r}") from error

    async def aclose(self) -> None:
        """Close the stream. Its chunks come through a chain of httpx's async
        generators; reading on in a cancelled scope raises Cancelled through every one
        of them at the first read, so none is left to the garbage collector."""
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                async for _ in self._chunks:
                    pass
            except httpx.HTTPError:
                pass
        with trio.CancelScope(shield=True):  # closing a socket does not wait on the network
            await self._response.aclose()


class Etcd:
    """A client of one etcd cluster, given its members' client URLs.

    Args:
        endpoints: ``http://HOST:PORT`` (or https) of each member, at least one.
        timeout: Seconds each attempt at a request (one endpoint) may take, or opening
            a watch; a call tries each endpoint at most once.

    Use it as ``async with Etcd([...]) as etcd:`` (or call ``aclose``); close the
    watches first. A call cancelled while its request is out raises ``Cancelled`` and
    leaves a write as ``EtcdUnavailable`` does: it may or may not have been applied.
    """

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 5.0) -> None:
        if isinstance(endpoints, str):
            raise ValueError("endpoints: a list of URLs, not one string")
        if not endpoints:
            raise ValueError("endpoints: at least one etcd URL")
        for url in endpoints:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"etcd endpoint {url!r}: an http:// or https:// URL")
        if not timeout > 0:
            raise ValueError(f"timeout {timeout!r}: a positive number of seconds")
        self.endpoints = tuple(url.rstrip("/") for url in endpoints)
        self.timeout = timeout
        self._current = 0
        # No pool limit: each open watch holds a connection. No proxy from the
        # environment: the members are reached directly. Deadlines are trio's (below).
        self._client = httpx.AsyncClient(
            timeout=None, trust_env=False, limits=httpx.Limits(max_connections=None, max_keepalive_connections=16)
        )

    async def __aenter__(self) -> Etcd:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    # -- keys --

    async def get(self, key: str) -> KeyValue | None:
        """The key, or None if it does not exist."""
        kvs = _kvs(await self._call("/v3/kv/range", _range(key, False), idempotent=True))
        return kvs[0] if kvs else None

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key starting with ``prefix`` (sorted by key: etcd's order) and the
        revision they were read at (watch from the next one to follow them)."""
        data = await self._call("/v3/kv/range", _range(prefix, True), idempotent=True)
        return _kvs(data), _revision(data)

    async def scan(self, prefix: str, *, page: int = 1000) -> tuple[list[KeyValue], int]:
        """Like ``range``, for a prefix with many keys: read in pages of ``page`` keys,
        every page at the revision of the first (one consistent snapshot)."""
        raw = _key_bytes(prefix)
        end = _b64(prefix_end(raw))
        start = raw or b"\0"
        found: list[KeyValue] = []
        revision = 0
        while True:
            body = {"key": _b64(start), "range_end": end, "limit": str(page)}
            if revision:
                body["revision"] = str(revision)
            data = await self._call("/v3/kv/range", body, idempotent=True)
            revision = revision or _revision(data)
            kvs = _kvs(data)
            found.extend(kvs)
            if not data.get("more") or not kvs:
                return found, revision
            start = _key_bytes(kvs[-1].key) + b"\0"

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Set ``key`` (bound to ``lease`` if not 0: deleted when it ends); the revision
        of the write. After ``EtcdUnavailable`` it may or may not have been applied."""
        body = {**_range(key, False), "value": _b64(value), "lease": str(lease)}
        return _revision(await self._call("/v3/kv/put", body, idempotent=False))

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it); how many were deleted. After
        ``EtcdUnavailable`` it may or may not have been applied."""
        return _int(await self._call("/v3/kv/deleterange", _range(key, prefix), idempotent=False), "deleted")

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        """If every ``compare`` holds, run ``success``, else ``failure``, atomically.
        After ``EtcdUnavailable`` it may or may not have been applied: read again."""
        body = {
            "compare": [_compare_json(c) for c in compare],
            "success": [_op_json(op) for op in success],
            "failure": [_op_json(op) for op in failure],
        }
        data = await self._call("/v3/kv/txn", body, idempotent=False)
        responses = [_kvs(r.get("response_range", {})) for r in data.get("responses", ())]
        return TxnResult(bool(data.get("succeeded", False)), _revision(data), responses)

    # -- leases --

    async def grant(self, ttl: int) -> int:
        """A new lease that lives ``ttl`` seconds (etcd raises small ones to its
        minimum, about 2) unless kept alive; its id."""
        return _int(await self._call("/v3/lease/grant", {"TTL": str(ttl)}, idempotent=False), "ID")

    async def keepalive(self, lease: int) -> int:
        """Renew ``lease``; the TTL etcd gives it from now.

        Raises:
            LeaseExpired: The lease no longer exists.
        """
        data = await self._call("/v3/lease/keepalive", {"ID": str(lease)}, idempotent=True)
        return self._live(lease, data)

    async def revoke(self, lease: int) -> None:
        """End ``lease`` now, deleting its keys; a lease already gone is fine."""
        try:
            await self._call("/v3/lease/revoke", {"ID": str(lease)}, idempotent=True)
        except EtcdError as error:
            if error.code != NOT_FOUND:
                raise

    async def time_to_live(self, lease: int) -> int:
        """The seconds ``lease`` has left.

        Raises:
            LeaseExpired: The lease no longer exists.
        """
        return self._live(lease, await self._call("/v3/lease/timetolive", {"ID": str(lease)}, idempotent=True))

    @staticmethod
    def _live(lease: int, data: Mapping[str, Any]) -> int:
        """The TTL of a lease's answer; LeaseExpired when it says none (0, absent or -1)."""
        ttl = _int(data, "TTL")
        if ttl <= 0:
            raise LeaseExpired(lease)
        return ttl

    # -- watches --

    @asynccontextmanager
    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[AsyncIterator[tuple[list[Event], int]]]:
        """Every change under ``prefix`` from ``start_revision`` on (0: from now), in
        order, as ``(events, revision)`` batches; a batch without events is a progress
        report (etcd sends one when the watch is idle: the revision it has reached)::

            async with etcd.watch("/p/", revision + 1) as batches:
                async for events, revision in batches:
                    ...

        The watch is established when the block is entered (within the timeout, on
        any endpoint). Iterating raises ``Compacted`` if etcd no longer has
        ``start_revision``, and ``EtcdUnavailable`` when the stream breaks (watch again
        from the last revision seen + 1). Nothing is read outside the iteration.
        """
        body = {"create_request": {**_range(prefix, True), "start_revision": str(start_revision), "progress_notify": True}}
        stream = await self._failover("/v3/watch", body, idempotent=True, receive=self._opened)
        try:
            yield stream
        finally:
            await stream.aclose()

    @staticmethod
    async def _opened(endpoint: str, response: httpx.Response) -> _Watch:
        """The watch of a streamed answer, once etcd said it was created."""
        if response.status_code != 200:
            await _complete(endpoint, response)  # raises etcd's error
        stream = _Watch(response, endpoint)
        try:
            message = await stream.message()
            if not message.get("result", {}).get("created"):
                raise EtcdError(f"{endpoint} answered a watch with {message!r}")
        except BaseException:
            await stream.aclose()
            raise
        return stream

    # -- sending --

    async def _call(self, path: str, body: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
        """The answer of ``path`` to ``body``."""
        return await self._failover(path, body, idempotent=idempotent, receive=_complete)

    async def _failover(
        self,
        path: str,
        body: dict[str, Any],
        *,
        idempotent: bool,
        receive: Callable[[str, httpx.Response], Awaitable[T]],
    ) -> T:
        """``receive`` the answer of the first endpoint that gives one, starting with
        the one that answered last.

        Raises:
            EtcdUnavailable: Every endpoint failed, or (not ``idempotent``) one failed
                after the request may have reached etcd.
        """
        failures: list[str] = []
        count = len(self.endpoints)
        for step in range(count):
            index = (self._current + step) % count
            endpoint = self.endpoints[index]
            try:
                answer = await self._attempt(endpoint, path, body, receive)
            except _Failed as failed:
                failures.append(f"{endpoint}: {failed.reason}")
                if failed.reached and not idempotent:
                    raise EtcdUnavailable(
                        f"{path} to {endpoint} failed after it was sent ({failed.reason}):"
                        " it may or may not have been applied"
                    ) from failed.__cause__
                continue
            except EtcdError as error:
                if not (idempotent and error.code == UNAVAILABLE):
                    raise
                failures.append(f"{endpoint}: {error}")
                continue
            self._current = index
            return answer
        raise EtcdUnavailable(f"no etcd endpoint answered {path}: {'; '.join(failures)}")

    async def _attempt(
        self, endpoint: str, path: str, body: dict[str, Any], receive: Callable[[str, httpx.Response], Awaitable[T]]
    ) -> T:
        """One try at one endpoint, within the timeout.

        Raises:
            _Failed: No answer; ``reached`` if the request's headers had started to leave.
        """
        reached = False

        async def trace(event: str, info: object) -> None:
            nonlocal reached
            reached = reached or event.startswith("http11.send_request_headers.")

        data = json.dumps(body).encode()
        request = self._client.build_request("POST", endpoint + path, content=data, extensions={"trace": trace})
        request.stream = _Body(data)
        with trio.move_on_after(self.timeout):
            try:
                return await receive(endpoint, await self._client.send(request, stream=True))
            except (httpx.TransportError, EtcdUnavailable) as error:
                raise _Failed(str(error) or type(error).__name__, reached) from error
        raise _Failed(f"no answer within {self.timeout:g} s", reached)

    def __repr__(self) -> str:
        return f"<Etcd {' '.join(self.endpoints)}>"
