"""The client end of the transport (``dotdo.runtime.transport.connection``): real connections to a real
server on 127.0.0.1 (``test_transport.py`` holds the server's tests and the kind)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from dotdo import ActorError, ActorNotFound, DotdoError, InvalidArguments
from dotdo.client import connect, parse_url
from dotdo.runtime.transport.connection import Connection
from dotdo.runtime.core.errors import CallTimeout, ConnectionLost, NotSent
from dotdo.runtime.core.ids import id_from_name
from dotdo.runtime.supervisor import Supervisor
from dotdo.runtime.transport.server import TransportServer
from dotdo.storage.errors import InvalidInput
from tests.runtime.transport.test_transport import Shop, transport
from tests.etcd_server import free_port


async def outcome(call: Any) -> Any:
    try:
        return ("ok", await call)
    except DotdoError as exc:
        return ("error", type(exc).__name__, str(exc), getattr(exc, "remote_type", None))


async def test_tcp_round_trips_match_in_process(tmp_path: Path) -> None:
    async with transport(tmp_path) as (sup, _, port), connect(f"tcp://127.0.0.1:{port}") as S:
        for side in (sup.S, S):
            assert await side.Shop("a").add(2, 3) == 5
        cases = [
            lambda s: s.Shop("a").echo({"x": [1, 2.5, None, b"\x00", "é"]}, twice=True),
            lambda s: s.Shop("a").add(1, "x"),
            lambda s: s.Shop("a").add(1),
            lambda s: s.Shop("a").boom(),
            lambda s: s.Shop("a").nope(),
        ]
        for make in cases:
            try:
                local = await outcome(make(sup.S))
            except DotdoError as exc:  # refused where it is written, in-process
                local = ("error", type(exc).__name__, str(exc), None)
            assert await outcome(make(S)) == local
        with pytest.raises(ActorNotFound, match="known kinds: Shop"):
            await S.Nobody("x").anything()
        with pytest.raises(ActorError) as info:
            await S.Shop("a").boom()
        assert info.value.remote_type == "ValueError" and info.value.message == "no stock"
        with pytest.raises(InvalidArguments):
            await S.Shop("a").add(1, 2, 3)
        with pytest.raises(AttributeError):  # private names are never sent
            S.Shop("a")._private()


async def test_replies_come_back_out_of_order(tmp_path: Path) -> None:
    async with transport(tmp_path) as (_, _, port), connect(f"tcp://127.0.0.1:{port}") as S:
        order: list[str] = []

        async def run(name: str, seconds: float) -> None:
            order.append(await S.Shop(name).slow(seconds, name))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "slow", 0.5)
            await trio.sleep(0.05)
            nursery.start_soon(run, "fast", 0.0)
        assert order == ["fast", "slow"]


async def test_pipelining_sends_one_frame_and_follows_references(tmp_path: Path) -> None:
    async with transport(tmp_path) as (_, _, port), connect(f"tcp://127.0.0.1:{port}") as S:
        connection: Connection = S.connection
        sent = connection.frames_sent
        assert await S.Shop("root").branch("left").branch("leaf").whoami() == "leaf"
        assert connection.frames_sent == sent + 1 and connection.frames_received == sent + 1
        with pytest.raises(DotdoError, match="step 1 \\(whoami\\) returned a str"):
            await S.Shop("root").whoami().whoami()
        with pytest.raises(ActorError, match="no stock"):
            await S.Shop("root").branch("x").boom()


async def test_references_travel_both_ways(tmp_path: Path) -> None:
    async with transport(tmp_path) as (_, _, port), connect(f"tcp://127.0.0.1:{port}") as S:
        ref = await S.Shop("a").branch("b")
        assert ref == S.Shop("b") and ref.id.name == "b"
        assert await ref.whoami() == "b"  # a reference received is callable
        assert await S.Shop("a").call_back(S.Shop("c")) == "c"  # and one sent arrives callable


async def test_timeouts_travel_and_a_lost_server_is_reported(tmp_path: Path) -> None:
    async with transport(tmp_path) as (_, _, port):
        S = await connect(f"tcp://127.0.0.1:{port}")
        with trio.fail_after(5), pytest.raises(CallTimeout, match="did not finish within 0.2 s"):
            await S.connection.call_packed(id_from_name("Shop", "t"), "slow", msgpack.packb([[10, "m"], {}]), 0.2)
        assert await S.ping() >= 0
        await S.aclose()
        with pytest.raises(ConnectionLost):
            await S.Shop("t").add(1, 1)
    with pytest.raises(ConnectionLost):
        await connect(f"tcp://127.0.0.1:{port}", connect_timeout=2)


async def test_a_call_into_a_connection_the_server_closed_is_not_sent(tmp_path: Path) -> None:
    async with Supervisor([Shop], tmp_path) as sup, trio.open_nursery() as nursery:
        server = TransportServer(sup)
        with trio.CancelScope() as serving:
            listeners = await nursery.start(server.serve, "127.0.0.1", 0)
            port = listeners[0].socket.getsockname()[1]
            S = await connect(f"tcp://127.0.0.1:{port}")
            assert await S.Shop("n").add(1, 1) == 2
            serving.cancel()  # the server goes away while the connection is idle
        nursery.cancel_scope.cancel()
    with trio.fail_after(5):
        while server.connections:
            await trio.sleep(0.01)
    with pytest.raises(NotSent, match="the call was not sent"):
        await S.Shop("n").add(1, 1)
    await S.aclose()


def test_urls() -> None:
    assert parse_url("tcp://127.0.0.1:8788") == ("127.0.0.1", 8788)
    assert parse_url("tcp://[::1]:9") == ("::1", 9)
    for bad in ("http://x:1", "tcp://x", "tcp://:5", "tcp://x:1/path", "x"):
        with pytest.raises(InvalidInput, match="tcp://host:port"):
            parse_url(bad)


async def test_connect_to_several_servers_takes_the_first_that_answers(tmp_path: Path) -> None:
    dead = f"tcp://127.0.0.1:{free_port()}"
    async with transport(tmp_path) as (_, _, port):
        live = f"tcp://127.0.0.1:{port}"
        async with connect([dead, live], connect_timeout=2) as S:
            assert await S.Shop("n").add(1, 1) == 2
        async with connect(f"{dead}, {live}", connect_timeout=2) as S:  # one string, with commas
            assert await S.Shop("n").add(2, 2) == 4
    with pytest.raises(ConnectionLost, match="none of the servers answered") as failed:
        await connect([dead, live], connect_timeout=2)
    assert dead in str(failed.value) and live in str(failed.value)
    with pytest.raises(InvalidInput):
        await connect([live, "http://not-a-transport"])  # refused before any is tried
    with pytest.raises(InvalidInput):
        connect([])
