"""WebSockets relayed between processes (dotdo.runtime.services.websocket_relay).

Between workers: ``dotdo serve --workers 2``, whose kernel spreads connections over
both workers, so that of sixteen sockets to one room some land on the worker that does
not own it (the chance that none does is 2 in 65,536) and are relayed to the owner.
Between nodes: a cluster of two with a real etcd, sockets opened on both nodes to a
room that one of them owns."""

from __future__ import annotations

import os
import signal
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.dotdo.cluster import SLOTS, cluster_node, until_slots
from tests.dotdo.serving import dotdo, dotdo_serve
from tests.dotdo.wsclient import Client, Closed, Rejected, connect
from tests.etcd_server import EtcdServer

KINDS = str(Path(__file__).with_name("websocket_kinds.py"))
SOCKETS = 16


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://") + path


async def call(client: httpx.AsyncClient, url: str, room: str, method: str) -> object:
    response = await client.post(f"{url}/_rpc/Room/{room}/{method}", json={"args": [], "kwargs": {}})
    response.raise_for_status()
    return response.json()["result"]


async def test_sockets_on_either_worker_share_one_room(tmp_path: Path) -> None:
    args = ["--workers", "2", "--data", str(tmp_path / "data"), "--idle-timeout", "0.5", KINDS]
    async with dotdo_serve(tmp_path, *args) as served, httpx.AsyncClient(timeout=10) as client, AsyncExitStack() as stack:
        with trio.fail_after(30):
            sockets: list[Client] = []
            for i in range(SOCKETS):
                sockets.append(await stack.enter_async_context(connect(ws_url(served.url, f"/Room/hub?user=u{i}"))))
            await sockets[0].send("!who")
            assert await sockets[0].receive() == ",".join(sorted(f"user:u{i}" for i in range(SOCKETS)))
            for i, ws in enumerate(sockets[:4]):  # every message reaches every socket, in the actor's order
                await ws.send(f"m{i}")
            seen = [[await ws.receive() for _ in range(4)] for ws in sockets]
            assert sorted(seen[0]) == [f"u{i}: m{i}" for i in range(4)] and all(s == seen[0] for s in seen)
            for i in range(20):  # and one sender's messages in the order sent
                await sockets[7].send(f"n{i}")
            for ws in sockets:
                assert [await ws.receive() for _ in range(20)] == [f"u7: n{i}" for i in range(20)]
            await sockets[-1].send("!fail")  # rolled back, reported, kept open: wherever it is held
            assert await sockets[-1].receive() == "error: ActorError"

            # hibernation: the owner passivates the room with every socket open, wherever held
            while (await client.get(f"{served.url}/_health")).json()["active_actors"]:
                await trio.sleep(0.1)
            for ws in sockets:
                await ws.send("ping")
                assert await ws.receive() == "pong"  # the auto-response: the actor stays asleep
            await sockets[3].send("awake")
            for ws in sockets:
                assert await ws.receive() == "u3: awake"
            await sockets[5].send("!count")
            assert await sockets[5].receive() == "25"

            # closes both ways
            await sockets[1].send("!close")
            with pytest.raises(Closed) as closed:
                await sockets[1].receive()
            assert closed.value.code == 4000 and closed.value.reason == "asked to"
            for ws in sockets[2:6]:
                await ws.close(1000, "bye")
            while len(closes := await call(client, served.url, "hub", "closes")) < 4:  # type: ignore[arg-type]
                await trio.sleep(0.05)
            assert len(closes) == 4  # type: ignore[arg-type]
            await sockets[0].send("!who")
            assert await sockets[0].receive() == ",".join(sorted(f"user:u{i}" for i in [0, *range(6, SOCKETS)]))

            # a refusal is the owner's response, wherever the upgrade landed
            for _ in range(8):
                with pytest.raises(Rejected) as rejected:
                    async with connect(ws_url(served.url, "/Room/hub?refuse=1")):
                        pass
                assert rejected.value.status == 403 and rejected.value.body == b"not today"


async def test_a_room_owned_by_a_restarted_worker_closes_its_relayed_sockets_with_1012(tmp_path: Path) -> None:
    args = ["--workers", "2", "--data", str(tmp_path / "data"), KINDS]
    async with dotdo_serve(tmp_path, *args) as served, httpx.AsyncClient(timeout=10) as client, AsyncExitStack() as stack:
        with trio.fail_after(40):
            sockets = [await stack.enter_async_context(connect(ws_url(served.url, f"/Room/r?user=u{i}"))) for i in range(SOCKETS)]
            await sockets[0].send("hi")
            for ws in sockets:
                assert await ws.receive() == "u0: hi"
            pid = await call(client, served.url, "r", "pid")
            os.kill(int(pid), signal.SIGKILL)  # type: ignore[call-overload]  # the owner dies; the server restarts it
            codes = set()
            for ws in sockets:
                with pytest.raises(Closed) as closed:
                    while True:
                        await ws.receive()
                codes.add(closed.value.code)
            assert codes <= {1006, 1012} and 1012 in codes  # its own are cut; the other worker's are told to reconnect
            while True:  # and a new socket reaches the room on the restarted owner
                try:
                    async with connect(ws_url(served.url, "/Room/r?user=late")) as late:
                        await late.send("back")
                        assert await late.receive() == "late: back"
                        break
                except Rejected:
                    await trio.sleep(0.2)


async def test_sockets_on_either_node_share_a_room_and_are_told_to_reconnect_when_it_moves(tmp_path: Path, etcd: EtcdServer) -> None:
    def node(name: str) -> Any:
        return cluster_node(tmp_path, etcd, name, "--replicas", "0", "--env", f"NODE={name}", KINDS)

    async with httpx.AsyncClient(timeout=30) as client, node("a") as a, node("b") as b, AsyncExitStack() as stack:
        await until_slots(client, {"a": SLOTS // 2, "b": SLOTS // 2}, {"a": a, "b": b})
        with trio.fail_after(60):
            rooms = [f"r{i}" for i in range(64)]
            room = [name for name in rooms if await call(client, a.url, name, "node") == "b"][0]
            via = [a, b] * 4  # held by a (relayed to b, the owner) and by b itself
            sockets = [await stack.enter_async_context(connect(ws_url(n.url, f"/Room/{room}?user=u{i}"))) for i, n in enumerate(via)]
            await sockets[0].send("!who")
            assert await sockets[0].receive() == ",".join(sorted(f"user:u{i}" for i in range(len(via))))
            await sockets[0].send("hi")  # from a's socket, through b's room, back out through both
            for ws in sockets:
                assert await ws.receive() == "u0: hi"
            drained = await dotdo("cluster", "drain", "b", "--cluster", etcd.url, cwd=tmp_path)
            assert drained.returncode == 0, drained.stderr
            for ws in sockets:  # the room moved to a: every socket, wherever held, reconnects
                with pytest.raises(Closed) as closed:
                    while True:
                        await ws.receive()
                assert closed.value.code == 1012
            async with connect(ws_url(b.url, f"/Room/{room}?user=back")) as back:  # b now relays to a
                await back.send("!count")
                assert await back.receive() == "1"  # the room's storage moved with it
            assert await call(client, b.url, room, "node") == "a"
