"""The transport server's limits and failure containment (issue 17): resets, what a
connection may send before its hello, silent connections, and every kind of thing a
connection queues or holds counting against its caps.

Most tests run the server on 127.0.0.1 with real sockets (``test_transport.transport``);
the flow-control ones serve a connection over ``trio.testing.lockstep_stream_pair``,
which has no buffer at all, so what the server reads and holds can be counted exactly.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import msgpack
import pytest
import trio
import trio.testing

from dotdo import DO
from dotdo.client import connect
from dotdo.runtime.core import values
from dotdo.runtime.transport import wire
from dotdo.runtime.core.errors import BodyTooLarge
from dotdo.runtime.core.ids import ActorId, id_from_name
from dotdo.runtime.supervisor import Supervisor
from dotdo.runtime.transport.server import MAX_HELLO, TransportOptions, TransportServer
from dotdo.storage.errors import InvalidValue
from tests.runtime.transport.test_transport import Shop, frame, raw_connection, read_frames, slow_call, transport


class Hold(DO):
    """Calls that stay running until released, counting how many run."""

    running: ClassVar[int] = 0
    release: ClassVar[trio.Event]

    async def hold(self, payload: bytes) -> int:
        Hold.running += 1
        try:
            await Hold.release.wait()
            return len(payload)
        finally:
            Hold.running -= 1

    async def big(self, size: int) -> bytes:
        return b"x" * size


def hold_call(request: int, payload: bytes) -> bytes:
    target = id_from_name("Hold", f"h{request}")
    return wire.encode(wire.Call(request, target, [("hold", values.pack([[payload], {}]))]))


async def reset(sock: trio.socket.SocketType) -> None:
    """Close ``sock`` with a TCP reset (SO_LINGER 0), as a killed or hostile peer does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    await trio.lowlevel.checkpoint()


async def raw_socket(port: int, *, hello: bool = True) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    if hello:
        await sock.send(wire.encode(wire.Hello(wire.VERSION, None)))
        decoder = wire.FrameDecoder()
        with trio.fail_after(10):
            while not decoder.feed(await sock.recv(65536)):
                pass
    return sock


# -- resets ------------------------------------------------------------------------------


async def test_a_reset_at_any_stage_ends_only_its_own_connection(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each reset used to leave the connection's nurseries as an ExceptionGroup that
    nothing caught: it took the transport server, and with it the process, down. A
    reset is a peer going away, not an error worth a log line."""
    async with transport(tmp_path) as (_, server, port), connect(f"tcp://127.0.0.1:{port}") as S:
        stages = 0
        for _ in range(3):
            sock = await raw_socket(port, hello=False)  # before the hello
            await reset(sock)
            sock = await raw_socket(port, hello=False)  # half a hello
            await sock.send(wire.encode(wire.Hello(wire.VERSION, None))[:5])
            await reset(sock)
            sock = await raw_socket(port)  # right after the welcome
            await reset(sock)
            sock = await raw_socket(port)  # mid-frame
            await sock.send(slow_call(1, "r", 0.5, "m")[:9])
            await reset(sock)
            sock = await raw_socket(port)  # calls in flight, replies on their way
            await sock.send(b"".join(slow_call(i, f"r{i}", 0.05, "m") for i in range(1, 9)))
            await trio.sleep(0.06)
            await reset(sock)
            sock = await raw_socket(port)  # a pipeline in flight
            steps = [("branch", values.pack([["p2"], {}])), ("branch", values.pack([["p3"], {}])), ("slow", values.pack([[0.3, "m"], {}]))]
            await sock.send(wire.encode(wire.Call(1, id_from_name("Shop", "p1"), steps)))
            await trio.sleep(0.05)
            await reset(sock)
            stages += 6
            assert await S.Shop("a").add(stages, 1) == stages + 1  # the other connection never noticed
        with trio.fail_after(10):
            while server.connections > 1:
                await trio.sleep(0.01)
        async with connect(f"tcp://127.0.0.1:{port}") as again:  # new connections are served
            assert await again.Shop("b").add(2, 2) == 4
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- before the hello ---------------------------------------------------------------------


async def test_before_its_hello_a_connection_may_send_no_more_than_a_hello(tmp_path: Path) -> None:
    """A frame header announcing 15 MiB used to be buffered up to the frame limit
    before any token was checked: 64 such connections took 1 GB."""
    async with transport(tmp_path, token="s3cret") as (_, _, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(struct.pack(">I", 15 * 1024 * 1024) + b"\x00" * 1000)
        (refusal,) = await read_frames(stream, 1)
        assert isinstance(refusal, wire.Error) and refusal.id is None and refusal.type == "ProtocolError"
        assert f"over the limit of {MAX_HELLO:,}" in refusal.message
        await stream.aclose()
        async with connect(f"tcp://127.0.0.1:{port}", token="s3cret") as S:  # the longest hello fits
            assert await S.Shop("a").add(1, 1) == 2
        hello = frame([wire.HELLO, {"version": 1, "token": "x" * 4096}])
        assert len(hello) < MAX_HELLO
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(hello)
        (refusal,) = await read_frames(stream, 1)
        assert isinstance(refusal, wire.Error) and refusal.type == "Unauthorized"
        await stream.aclose()


async def test_silent_connections_cannot_lock_out_clients_that_say_hello(tmp_path: Path) -> None:
    """256 sockets that never said hello used to hold every connection slot for the
    whole handshake timeout (10 s). Now they have a cap of their own, and past it the
    one that has waited longest is dropped."""
    async with transport(tmp_path, max_connections=4, max_handshakes=4) as (_, server, port):
        silent = [await raw_socket(port, hello=False) for _ in range(12)]
        with trio.fail_after(5):  # well within the 10 s a silent socket may wait
            async with connect(f"tcp://127.0.0.1:{port}") as S:
                assert await S.Shop("a").add(1, 2) == 3
                dropped = 0
                for sock in silent[:8]:  # the oldest went first
                    dropped += await sock.recv(100) == b""
                assert dropped == 8
                assert server.connections <= 1 + 4
        for sock in silent:
            sock.close()


# -- flow control: what a connection holds --------------------------------------------


@asynccontextmanager
async def served_lockstep(tmp_path: Path, **options: Any) -> AsyncIterator[trio.abc.Stream]:
    """A connection to a transport server over a stream with no buffer, past its hello:
    the client's end. What the client manages to send is what the server took."""
    Hold.release = trio.Event()
    Hold.running = 0
    async with Supervisor([Hold], tmp_path) as sup, trio.open_nursery() as nursery:
        server = TransportServer(sup, TransportOptions(**options))
        client, server_end = trio.testing.lockstep_stream_pair()
        nursery.start_soon(server.handle, server_end)
        await client.send_all(wire.encode(wire.Hello(wire.VERSION, None)))
        decoder = wire.FrameDecoder()
        while not decoder.feed(await client.receive_some(65536)):
            pass
        yield client
        Hold.release.set()
        nursery.cancel_scope.cancel()


async def sent_before_blocking(stream: trio.abc.Stream, frames: list[bytes], wait: float = 0.5) -> int:
    """How many of ``frames`` (sent one at a time) the server takes before it stops
    reading for ``wait`` seconds."""
    sent = 0
    for data in frames:
        with trio.move_on_after(wait) as scope:
            await stream.send_all(data)
        if scope.cancelled_caught:
            break
        sent += 1
    return sent


async def test_pongs_count_against_the_cap_like_replies(tmp_path: Path) -> None:
    """A client that sent pings and never read used to grow the outbox without bound
    (150 MiB of pings: +560 MiB): a pong took no slot."""
    async with served_lockstep(tmp_path, max_inflight=4) as client:
        taken = await sent_before_blocking(client, [wire.encode(wire.Ping(i)) for i in range(200)])
        # Four pongs wait (one in the writer's hands), then reading stops.
        assert 4 <= taken <= 6, taken


async def test_bytes_in_flight_are_capped_not_only_calls(tmp_path: Path) -> None:
    """128 calls of 16 MiB could be in flight on one connection (60 of 8 MiB: +509 MiB)."""
    payload = b"p" * 20_000
    async with served_lockstep(tmp_path, max_frame=32_768, max_inflight_bytes=65_536) as client:
        taken = await sent_before_blocking(client, [hold_call(i, payload) for i in range(1, 30)])
        # 60 kB of 64 kB run; the reader holds the fourth until there is room, and stops.
        assert Hold.running == 3 and taken == 4
        Hold.release.set()  # once they end, reading goes on
        with trio.fail_after(5):
            while Hold.running:
                await trio.sleep(0.01)


async def test_a_peer_that_stops_reading_is_disconnected_after_the_write_timeout(tmp_path: Path) -> None:
    async with served_lockstep(tmp_path, write_timeout=0.3) as client:
        await client.send_all(wire.encode(wire.Ping(1)))
        await trio.sleep(0.5)  # the pong has waited past the timeout, unread
        received = b""
        with trio.fail_after(5):
            while data := await client.receive_some(65536):  # until the server closed its end
                received += data
        assert received in (b"", wire.encode(wire.Pong(1)))


async def test_the_client_keeps_to_the_servers_byte_budget(tmp_path: Path) -> None:
    """A client sending more than the server reads would stall in its writes and give
    the connection up; it waits for its own budget instead, and every call completes."""
    Hold.release = trio.Event()
    Hold.running = 0
    peak = 0
    async with Supervisor([Hold], tmp_path) as sup, trio.open_nursery() as nursery:
        options = TransportOptions(max_frame=32_768, max_inflight_bytes=65_536)
        listeners = await nursery.start(TransportServer(sup, options).serve, "127.0.0.1", 0)
        async with connect(f"tcp://127.0.0.1:{listeners[0].socket.getsockname()[1]}") as S:
            assert S.connection.welcome.max_inflight_bytes == 65_536
            results: list[int] = []

            async def one(i: int) -> None:
                results.append(await S.Hold(f"c{i}").hold(b"q" * 20_000))

            async with trio.open_nursery() as calls:
                for i in range(12):
                    calls.start_soon(one, i)
                for _ in range(50):
                    await trio.sleep(0.01)
                    peak = max(peak, Hold.running)
                Hold.release.set()
            assert results == [20_000] * 12 and peak == 3
        nursery.cancel_scope.cancel()


# -- limits on what is sent ----------------------------------------------------------------


async def test_a_fetch_frame_obeys_the_body_limit(tmp_path: Path) -> None:
    async def handler(target: ActorId, request: wire.HttpRequest, timeout: float | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return 200, [], request.body

    async with Supervisor([Shop], tmp_path) as sup, trio.open_nursery() as nursery:
        listeners = await nursery.start(TransportServer(sup, TransportOptions(max_body=1000), handler).serve, "127.0.0.1", 0)
        async with connect(f"tcp://127.0.0.1:{listeners[0].socket.getsockname()[1]}") as S:
            target = id_from_name("Shop", "f")
            with pytest.raises(BodyTooLarge, match="1001 bytes is over the 1000-byte limit"):
                await S.connection.fetch(target, wire.HttpRequest("POST", "/Shop/f", b"", [], b"b" * 1001))
            assert await S.connection.fetch(target, wire.HttpRequest("POST", "/Shop/f", b"", [], b"b" * 1000)) == (200, [], b"b" * 1000)
        nursery.cancel_scope.cancel()


async def test_a_reply_over_the_frame_limit_is_an_error_not_a_broken_connection(tmp_path: Path) -> None:
    """The client would refuse a frame over its limit and lose every call in flight."""
    async with Supervisor([Hold], tmp_path) as sup, trio.open_nursery() as nursery:
        listeners = await nursery.start(TransportServer(sup, TransportOptions(max_frame=4096, max_inflight_bytes=4096)).serve, "127.0.0.1", 0)
        async with connect(f"tcp://127.0.0.1:{listeners[0].socket.getsockname()[1]}") as S:
            with pytest.raises(InvalidValue, match="over the frame limit of 4,096 bytes"):
                await S.Hold("b").big(5000)
            assert await S.Hold("b").big(10) == b"x" * 10  # the connection goes on
        nursery.cancel_scope.cancel()


async def test_text_that_is_not_unicode_is_refused_over_the_transport(tmp_path: Path) -> None:
    """UTF-8 of a lone surrogate in a value is an InvalidValue for that call; in the
    envelope it breaks the protocol."""
    async with transport(tmp_path) as (_, _, port):
        stream = await raw_connection(port)
        args = b"\x92\x91\xa3\xed\xa0\x80\x80"  # msgpack [["<UTF-8 of U+D800>"], {}]
        with pytest.raises(InvalidValue):
            values.unpack(args)
        target = id_from_name("Shop", "u")
        await stream.send_all(wire.encode(wire.Call(1, target, [("echo", args)])))
        (answer,) = await read_frames(stream, 1)
        assert isinstance(answer, wire.Error) and answer.id == 1 and answer.type == "InvalidValue"
        body = msgpack.packb([wire.CALL, 2, ["Shop", target.hex, None], [["ech\udc80", b""]], {}], use_bin_type=True, unicode_errors="surrogatepass")
        await stream.send_all(struct.pack(">I", len(body)) + body)
        (refusal,) = await read_frames(stream, 1)
        assert isinstance(refusal, wire.Error) and refusal.id is None and refusal.type == "ProtocolError"
        await stream.aclose()
