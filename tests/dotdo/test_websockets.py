"""WebSockets with hibernation (dotdo.runtime.services.websockets, dotdo.http.websocket):
a real server on 127.0.0.1 and WebSocket clients (``tests.dotdo.wsclient``)."""

from __future__ import annotations

import base64
import os
import socket
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from tests.dotdo.serving import serving
from tests.dotdo.websocket_kinds import Room
from tests.dotdo.wsclient import Closed, Rejected, connect


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://") + path


async def test_messages_are_turns_broadcast_to_the_room(tmp_path: Path) -> None:
    async with serving([Room], tmp_path) as server:
        with trio.fail_after(10):
            async with connect(ws_url(server.url, "/Room/lobby?user=ann")) as ann, connect(
                ws_url(server.url, "/Room/lobby?user=bob")
            ) as bob:
                await ann.send("hello")
                assert await ann.receive() == "ann: hello"
                assert await bob.receive() == "ann: hello"
                await bob.send(b"\x00\x01")
                assert await ann.receive() == b"\x00\x01"
                assert await bob.receive() == b"\x00\x01"
                await ann.send("!who")
                assert await ann.receive() == "user:ann,user:bob"
                await ann.send("!count")
                assert await ann.receive() == "2"


async def test_a_failing_handler_rolls_back_reports_and_keeps_the_socket(tmp_path: Path) -> None:
    async with serving([Room], tmp_path) as server:
        with trio.fail_after(10):
            async with connect(ws_url(server.url, "/Room/r?user=ann")) as ann:
                await ann.send("!fail")
                assert await ann.receive() == "error: ActorError"  # never "never"
                await ann.send("hi")
                assert await ann.receive() == "ann: hi"  # still open
        response = await server.client.post("/_rpc/Room/r/failed", json={"args": [], "kwargs": {}})
        assert response.json()["result"] is False  # rolled back


async def test_close_codes_both_ways_reach_websocket_close(tmp_path: Path) -> None:
    async with serving([Room], tmp_path) as server:
        with trio.fail_after(10):
            async with connect(ws_url(server.url, "/Room/c?user=ann")) as ann:
                await ann.send("!close")
                with pytest.raises(Closed) as closed:
                    await ann.receive()
                assert closed.value.code == 4000 and closed.value.reason == "asked to"
            async with connect(ws_url(server.url, "/Room/c?user=bob")) as bob:
                await bob.close(4001, "bye")
            while not (await server.client.post("/_rpc/Room/c/closes", json={"args": [], "kwargs": {}})).json()["result"]:
                await trio.sleep(0.02)
            await trio.sleep(0.2)
        closes = (await server.client.post("/_rpc/Room/c/closes", json={"args": [], "kwargs": {}})).json()["result"]
        assert len(closes) == 1  # bob's: a close the actor made itself does not call websocket_close


async def test_an_upgrade_fetch_refuses_gets_its_response(tmp_path: Path) -> None:
    async with serving([Room], tmp_path) as server:
        with trio.fail_after(10):
            with pytest.raises(Rejected) as rejected:
                async with connect(ws_url(server.url, "/Room/r?refuse=1")):
                    pass
            assert rejected.value.status == 403 and rejected.value.body == b"not today"
            with pytest.raises(Rejected) as unknown:
                async with connect(ws_url(server.url, "/Nope/r")):
                    pass
            assert unknown.value.status == 404
            for path in ("/", "/_rpc/Room/r/closes", "/Room", "/Room/"):  # not an actor's URL
                with pytest.raises(Rejected) as elsewhere:
                    async with connect(ws_url(server.url, path)):
                        pass
                assert elsewhere.value.status == 404, path
        assert (await server.client.get("/Room/r")).status_code == 426  # not an upgrade: request.websocket is None


async def test_the_auto_response_answers_without_waking_the_actor_and_sockets_survive_hibernation(tmp_path: Path) -> None:
    async with serving([Room], tmp_path, idle_timeout=0.3) as server:
        with trio.fail_after(15):
            async with connect(ws_url(server.url, "/Room/h?user=ann")) as ann:
                await ann.send("one")
                assert await ann.receive() == "ann: one"
                starts = Room.starts
                while (await server.client.get("/_health")).json()["active_actors"]:
                    await trio.sleep(0.1)  # hibernated: passivated with its socket open
                await ann.send("ping")
                assert await ann.receive() == "pong"
                assert (await server.client.get("/_health")).json()["active_actors"] == 0  # not woken
                await ann.send("two")  # wakes it: on_start again, tags and attachment kept
                assert await ann.receive() == "ann: two"
                assert Room.starts == starts + 1
                await ann.send("!count")
                assert await ann.receive() == "2"


async def test_pings_are_answered_and_bad_frames_close_only_their_socket(tmp_path: Path) -> None:
    async with serving([Room], tmp_path, max_ws_message=1024) as server:
        with trio.fail_after(10):
            async with connect(ws_url(server.url, "/Room/p?user=ann")) as ann:
                await ann.ping()
                await ann.send("hello")
                assert await ann.receive() == "ann: hello"
                assert ann.pongs == 1  # answered by the server
                async with connect(ws_url(server.url, "/Room/p?user=bob")) as bob:
                    await bob.send("x" * 2000)  # over --max-ws-message
                    with pytest.raises(Closed) as too_big:
                        while True:
                            await bob.receive()
                    assert too_big.value.code == 1009
                async with connect(ws_url(server.url, "/Room/p?user=eve")) as eve:
                    await eve.stream.send_all(b"\x81\x81\x00\x00\x00\x00\xff")  # a text frame that is not UTF-8
                    with pytest.raises(Closed) as not_text:
                        while True:
                            await eve.receive()
                    assert not_text.value.code in (1006, 1007)  # hypercorn drops the connection
                await ann.send("still here")
                assert await ann.receive() == "ann: still here"


async def test_a_server_that_stops_closes_its_sockets_as_going_away(tmp_path: Path) -> None:
    async with serving([Room], tmp_path) as server:
        with trio.fail_after(10):
            async with connect(ws_url(server.url, "/Room/s?user=ann")) as ann:
                await ann.send("hi")
                assert await ann.receive() == "ann: hi"
                server.stop.set()
                with pytest.raises(Closed) as closed:
                    await ann.receive()
                assert closed.value.code == 1001


async def test_an_idle_socket_outlives_the_read_timeout(tmp_path: Path) -> None:
    async with serving([Room], tmp_path, read_timeout=1.0) as server:
        with trio.fail_after(15):
            async with connect(ws_url(server.url, "/Room/i?user=ann")) as ann:
                with trio.move_on_after(3.5):  # silent from the start (the server sends no pings)
                    await ann.receive()
                assert ann.closed is None
                await ann.send("still")
                assert await ann.receive() == "ann: still"
            async with connect(ws_url(server.url, "/Room/i?user=bob")) as bob:
                await bob.send("hi")
                assert await bob.receive() == "bob: hi"
                with trio.move_on_after(3.5):  # and silent after talking
                    await bob.receive()
                await bob.send("still")
                assert await bob.receive() == "bob: still"


async def test_websockets_have_their_own_cap_and_leave_the_http_one(tmp_path: Path) -> None:
    async with serving([Room], tmp_path, max_connections=4, max_websockets=6) as server, AsyncExitStack() as stack:
        with trio.fail_after(15):
            sockets = [await stack.enter_async_context(connect(ws_url(server.url, f"/Room/cap?user=u{i}"))) for i in range(6)]
            await sockets[0].send("!count")  # six sockets open, more than --max-connections
            assert await sockets[0].receive() == "0"
            health = (await server.client.get("/_health")).json()  # and HTTP is still served
            assert health["websockets"] == 6
            with pytest.raises(Rejected) as refused:
                async with connect(ws_url(server.url, "/Room/cap?user=late")):
                    pass
            assert refused.value.status == 503 and b"--max-websockets" in refused.value.body
            await sockets[5].close()
            while (await server.client.get("/_health")).json()["websockets"] == 6:
                await trio.sleep(0.02)
            async with connect(ws_url(server.url, "/Room/cap?user=late")) as late:
                await late.send("!who")
                assert "user:late" in str(await late.receive())


async def test_a_client_that_reads_nothing_is_cut_off_and_slows_no_one_else(tmp_path: Path) -> None:
    async with serving([Room], tmp_path) as server:
        with trio.fail_after(30), trio.socket.socket() as stuck:
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # so the server's side fills up soon
            await stuck.connect(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
            key = base64.b64encode(os.urandom(16)).decode()
            await stuck.send(
                f"GET /Room/slow?user=stuck HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            assert await stuck.recv(12) == b"HTTP/1.1 101"  # and then it reads no more
            async with connect(ws_url(server.url, "/Room/slow?user=ann")) as ann:
                await ann.send("!who")
                assert await ann.receive() == "user:ann,user:stuck"
                for _ in range(4):  # 40 MiB to each socket, in four turns: past the 16 MiB a socket may hold
                    await ann.send("!flood 10")
                    for _ in range(10):
                        assert len(await ann.receive()) == (1 << 20) - 64  # ann reads on, undelayed by the other
                await ann.send("!who")
                assert await ann.receive() == "user:ann"  # the other is closing
                while (await server.client.get("/_health")).json()["websockets"] > 1:
                    await trio.sleep(0.05)  # and its connection is cut, though its client would never read a close
            drained = 0
            with trio.move_on_after(2):
                while chunk := await stuck.recv(1 << 20):
                    drained += len(chunk)
            assert drained < 40 << 20  # it was never sent all of it
