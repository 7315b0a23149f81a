"""The msgpack/TCP transport server (``dotdo.runtime.transport.server``): a real server on 127.0.0.1,
real client connections and raw sockets (``test_connection.py`` holds the client's tests)."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import msgpack
import pytest
import trio

from dotdo import DO
from dotdo.client import connect
from dotdo.runtime.transport import wire
from dotdo.runtime.core.errors import ConnectionLost, MethodNotAllowed, NotSent, Overloaded, ProtocolError, Unauthorized
from dotdo.runtime.core.ids import ActorId, id_from_name
from dotdo.runtime.supervisor import Supervisor
from dotdo.runtime.transport.connection import Connection
from dotdo.runtime.transport.server import TransportOptions, TransportServer


class Shop(DO):
    """Calls that succeed, fail, wait, and hand out references."""

    running: ClassVar[int] = 0
    peak: ClassVar[int] = 0

    async def echo(self, value: Any, *, twice: bool = False) -> Any:
        return [value, value] if twice else value

    async def add(self, a: int, b: int) -> int:
        return a + b

    async def boom(self) -> None:
        raise ValueError("no stock")

    async def slow(self, seconds: float, mark: str) -> str:
        Shop.running += 1
        Shop.peak = max(Shop.peak, Shop.running)
        try:
            self.storage.put(mark, "started")
            await trio.sleep(seconds)
            self.storage.put(mark, "finished")
            return mark
        finally:
            Shop.running -= 1

    async def mark(self, key: str) -> Any:
        return self.storage.get(key)

    async def branch(self, name: str) -> Any:
        return self.S.Shop(name)

    async def whoami(self) -> str:
        return self.id.name or self.id.hex

    async def call_back(self, other: Any) -> str:
        return await other.whoami()


def frame(body: Any) -> bytes:
    packed = msgpack.packb(body, use_bin_type=True)
    return struct.pack(">I", len(packed)) + packed


def slow_call(request: int, actor: str, seconds: float, mark: str) -> bytes:
    args = msgpack.packb([[seconds, mark], {}])
    return frame([wire.CALL, request, ["Shop", id_from_name("Shop", actor).hex, actor], [["slow", args]], {}])


@asynccontextmanager
async def transport(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[Supervisor, TransportServer, int]]:
    async with Supervisor([Shop], tmp_path) as sup, trio.open_nursery() as nursery:
        server = TransportServer(sup, TransportOptions(**options))
        listeners = await nursery.start(server.serve, "127.0.0.1", 0)
        yield sup, server, listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def test_a_cancelled_call_is_stopped_and_rolled_back(tmp_path: Path) -> None:
    async with transport(tmp_path) as (sup, server, port), connect(f"tcp://127.0.0.1:{port}") as S:
        with trio.move_on_after(0.2) as scope:
            await S.Shop("c").slow(30, "m")
        assert scope.cancelled_caught
        with trio.fail_after(5):
            while Shop.running:
                await trio.sleep(0.01)
        assert await S.Shop("c").mark("m") is None  # the turn was rolled back on the server
        assert await S.Shop("c").add(1, 1) == 2  # the connection goes on


async def test_backpressure_caps_calls_running_per_connection(tmp_path: Path) -> None:
    Shop.peak = 0
    async with transport(tmp_path, max_inflight=3) as (_, _, port), connect(f"tcp://127.0.0.1:{port}", max_inflight=50) as S:
        assert S.connection.welcome.max_inflight == 3
        results: list[str] = []

        async def one(i: int) -> None:
            results.append(await S.Shop(f"s{i}").slow(0.05, f"k{i}"))

        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(one, i)
        assert sorted(results) == sorted(f"k{i}" for i in range(12))  # nothing dropped
        assert Shop.peak == 3


async def test_the_server_cap_holds_against_a_client_that_ignores_it(tmp_path: Path) -> None:
    Shop.peak = 0
    async with transport(tmp_path, max_inflight=2) as (_, _, port):
        stream = await raw_connection(port)
        for i in range(6):  # all sent at once, without waiting for replies
            await stream.send_all(slow_call(i + 1, f"p{i}", 0.05, f"k{i}"))
        replies = await read_frames(stream, 6)
        assert sorted(r.id for r in replies) == [1, 2, 3, 4, 5, 6]
        assert all(isinstance(r, wire.Reply) for r in replies)
        assert Shop.peak == 2
        await stream.aclose()


async def test_a_wrong_or_missing_token_runs_nothing(tmp_path: Path) -> None:
    async with transport(tmp_path, token="s3cret") as (sup, _, port):
        for token in (None, "wrong", "s3cret "):
            with pytest.raises(Unauthorized):
                await connect(f"tcp://127.0.0.1:{port}", token=token)
        # A call sent right after a bad hello is not run either.
        stream = await raw_connection(port, token="wrong", expect_welcome=False)
        await stream.send_all(slow_call(1, "t", 0, "m"))
        answer = await read_frames(stream, 1)
        assert isinstance(answer[0], wire.Error) and answer[0].type == "Unauthorized"
        assert await stream.receive_some(100) == b""  # closed
        await stream.aclose()
        assert await sup.S.Shop("t").mark("m") is None
        async with connect(f"tcp://127.0.0.1:{port}", token="s3cret") as S:
            assert await S.Shop("t").add(1, 2) == 3


async def test_the_admin_token_opens_a_connection_too(tmp_path: Path) -> None:
    async with transport(tmp_path, token="s3cret", admin_token="adm1n") as (sup, server, port):
        assert "s3cret" not in repr(server.options) and "adm1n" not in repr(server.options)
        url = f"tcp://127.0.0.1:{port}"
        for token in ("s3cret", "adm1n"):
            async with connect(url, token=token) as S:
                assert await S.Shop("t").add(1, 2) == 3
        for token in (None, "", "wrong", "adm1n ", "adm1", "s3cretadm1n"):
            with pytest.raises(Unauthorized):
                await connect(url, token=token)
        stream = await raw_connection(port, token="adm1n-", expect_welcome=False)
        await stream.send_all(slow_call(1, "t", 0, "m"))
        answer = await read_frames(stream, 1)
        assert isinstance(answer[0], wire.Error) and answer[0].type == "Unauthorized"
        assert "adm1n" not in answer[0].message
        await stream.aclose()
        assert await sup.S.Shop("t").mark("m") is None
    # Without a client token no token is asked for, as over HTTP's client routes.
    async with transport(tmp_path / "admin-only", admin_token="adm1n") as (_, _, port):
        async with connect(f"tcp://127.0.0.1:{port}") as S:
            assert await S.Shop("t").add(2, 2) == 4


async def test_connections_past_the_cap_are_refused_and_the_others_keep_working(tmp_path: Path) -> None:
    async with transport(tmp_path, max_connections=2) as (_, server, port):
        url = f"tcp://127.0.0.1:{port}"
        async with connect(url) as first, connect(url) as second:
            for _ in range(3):
                with pytest.raises((Overloaded, ConnectionLost)):
                    await connect(url)
            assert await first.Shop("a").add(1, 2) == 3 and await second.Shop("b").add(2, 2) == 4
        with trio.fail_after(10):
            while server.connections:  # the server saw both close
                await trio.sleep(0.01)
        async with connect(url) as again:  # their slots came back
            assert await again.Shop("a").add(3, 3) == 6


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1", id="garbage"),
        pytest.param(frame({"kind": 3}), id="not-an-array"),
        pytest.param(frame([99, 1]), id="unknown-kind"),
        pytest.param(frame([wire.CALL, "one", ["Shop", "0" * 64, None], [], {}]), id="wrong-types"),
        pytest.param(frame([wire.CALL, 1, ["Shop", "0" * 64, None], [["echo", b""]], {}]), id="bad-target"),
        pytest.param(frame([wire.REPLY, 1, b""]), id="reply-from-client"),
        pytest.param(struct.pack(">I", 2**31) + b"xx", id="oversized"),
    ],
)
async def test_a_bad_frame_closes_only_its_own_connection(tmp_path: Path, bad: bytes) -> None:
    async with transport(tmp_path, max_frame=1 << 20) as (_, server, port), connect(f"tcp://127.0.0.1:{port}") as S:
        assert await S.Shop("a").add(1, 1) == 2
        stream = await raw_connection(port)
        await stream.send_all(bad)
        answer = await read_frames(stream, 1)
        assert isinstance(answer[0], wire.Error) and answer[0].id is None and answer[0].type == "ProtocolError"
        assert await stream.receive_some(100) == b""
        await stream.aclose()
        assert await S.Shop("a").add(2, 2) == 4  # the other connection never noticed


async def test_a_truncated_frame_and_a_vanished_client_are_harmless(tmp_path: Path) -> None:
    async with transport(tmp_path) as (_, server, port), connect(f"tcp://127.0.0.1:{port}") as S:
        stream = await raw_connection(port)
        await stream.send_all(struct.pack(">I", 100) + b"only part")
        await stream.aclose()
        stream = await raw_connection(port)  # gone with a call running
        await stream.send_all(slow_call(1, "v", 10, "m"))
        await trio.sleep(0.1)
        await stream.aclose()
        with trio.fail_after(5):
            while server.connections > 1:
                await trio.sleep(0.01)
        assert await S.Shop("v").mark("m") is None  # rolled back with its connection
        assert await S.Shop("a").add(3, 4) == 7


async def test_fetch_frames_reach_the_actors_fetch(tmp_path: Path) -> None:
    async def handler(target: ActorId, request: wire.HttpRequest, timeout: float | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        seen.append((target, request, timeout))
        return 202, [(b"x-a", b"1")], request.body[::-1]

    seen: list[Any] = []
    async with Supervisor([Shop], tmp_path) as sup, trio.open_nursery() as nursery:
        listeners = await nursery.start(TransportServer(sup, TransportOptions(), handler).serve, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        target = id_from_name("Shop", "f")
        request = wire.HttpRequest("POST", "/Shop/f/x", b"q=1", [(b"host", b"h")], b"abc")
        async with connect(f"tcp://127.0.0.1:{port}") as S:
            assert await S.connection.fetch(target, request, 5) == (202, [(b"x-a", b"1")], b"cba")
            assert seen == [(target, request, 5.0)]
        nursery.cancel_scope.cancel()
    async with transport(tmp_path / "plain") as (_, _, port), connect(f"tcp://127.0.0.1:{port}") as S:
        with pytest.raises(MethodNotAllowed, match="takes no fetch frames"):
            await S.connection.fetch(target, request)


# -- helpers -----------------------------------------------------------------------------


async def raw_connection(port: int, token: str | None = None, *, expect_welcome: bool = True) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(frame([wire.HELLO, {"version": 1, "token": token}]))
    if expect_welcome:
        (welcome,) = await read_frames(stream, 1)
        assert isinstance(welcome, wire.Welcome)
    return stream


async def read_frames(stream: trio.SocketStream, count: int) -> list[wire.Message]:
    decoder = wire.FrameDecoder()
    messages: list[wire.Message] = []
    with trio.fail_after(10):
        while len(messages) < count:
            data = await stream.receive_some(65536)
            assert data, f"closed after {len(messages)} of {count} frames"
            messages.extend(wire.decode(body) for body in decoder.feed(data))
    return messages


async def test_the_cluster_secret_makes_a_connection_another_nodes_and_trusted(tmp_path: Path) -> None:
    target = id_from_name("Shop", "c")
    system = [("$nothing", msgpack.packb([]))]
    async with transport(tmp_path, token="client-token", peer_token="cluster-secret") as (_, _, port):
        node = await Connection.open("127.0.0.1", port, token="cluster-secret")
        client = await Connection.open("127.0.0.1", port, token="client-token")
        try:
            with pytest.raises(ProtocolError, match="unknown system method"):  # run as a system call
                await node.call_raw(target, system, 5.0, None, ())
            with pytest.raises(MethodNotAllowed):  # a client's "$" method is just a name
                await client.call_raw(target, system, 5.0, None, ())
            assert msgpack.unpackb(await node.call_raw(target, [("add", msgpack.packb([[1, 2], {}]))], 5.0, None, ())) == 3
        finally:
            await node.aclose()
            await client.aclose()
        with pytest.raises(Unauthorized):
            await Connection.open("127.0.0.1", port, token="cluster-secre")
    async with transport(tmp_path, peer_token="cluster-secret") as (_, _, port):  # clients need no token
        client = await Connection.open("127.0.0.1", port)
        try:
            with pytest.raises(MethodNotAllowed):
                await client.call_raw(target, system, 5.0, None, ())
        finally:
            await client.aclose()


@dataclass
class Stopping:
    """A transport server that stops gracefully once ``stop`` is set (``done`` once it has)."""

    sup: Supervisor
    server: TransportServer
    port: int
    nursery: trio.Nursery
    stop: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)


@asynccontextmanager
async def stopping(tmp_path: Path, grace: float) -> AsyncIterator[Stopping]:
    async with Supervisor([Shop], tmp_path) as sup, trio.open_nursery() as nursery:
        server = TransportServer(sup, TransportOptions())
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        served = Stopping(sup, server, listeners[0].socket.getsockname()[1], nursery)

        async def serve() -> None:
            await server.serve_listeners(listeners, served.stop, grace)
            served.done.set()

        nursery.start_soon(serve)
        yield served


async def test_a_stopping_server_answers_what_runs_and_refuses_what_arrives_as_not_sent(tmp_path: Path) -> None:
    async with stopping(tmp_path, 10.0) as served:
        sup, server, port, nursery, stop = served.sup, served.server, served.port, served.nursery, served.stop
        async with connect(f"tcp://127.0.0.1:{port}") as S:
            results: list[str] = []

            async def running() -> None:
                results.append(await S.Shop("g").slow(0.5, "m"))

            nursery.start_soon(running)
            with trio.fail_after(5):
                while not Shop.running:
                    await trio.sleep(0.01)
            stop.set()
            await trio.sleep(0.05)
            assert server.closing
            with pytest.raises(NotSent, match="stopping"):  # arrived while stopping: it did not run
                await S.Shop("g").slow(0, "late")
            with trio.fail_after(5):
                while not results:
                    await trio.sleep(0.01)
            assert results == ["m"]  # the call that was running got its reply
            assert not sup.closing  # only the transport stopped
        with trio.fail_after(5):  # and then the server is done
            while server.connections:
                await trio.sleep(0.01)
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)
    async with Supervisor([Shop], tmp_path) as sup:  # the late call never ran
        assert await sup.S.Shop("g").mark("late") is None
        assert await sup.S.Shop("g").mark("m") == "finished"


async def test_a_stopping_server_closes_at_its_grace_even_with_calls_running(tmp_path: Path) -> None:
    async with stopping(tmp_path, 0.3) as served:
        port, nursery, stop, done = served.port, served.nursery, served.stop, served.done
        async with connect(f"tcp://127.0.0.1:{port}") as S:
            lost: list[BaseException] = []

            async def running() -> None:
                try:
                    await S.Shop("h").slow(30, "m")
                except ConnectionLost as exc:
                    lost.append(exc)

            nursery.start_soon(running)
            with trio.fail_after(5):
                while not Shop.running:
                    await trio.sleep(0.01)
                began = trio.current_time()
                stop.set()
                await done.wait()
                assert trio.current_time() - began >= 0.3
                while not lost:
                    await trio.sleep(0.01)
            assert "closed with calls in flight" in str(lost[0])
