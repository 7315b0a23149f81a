"""``dotdo serve --workers N``: real servers of several processes on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from dotdo import ConnectionLost, MethodNotAllowed, ServeOptions, connect
from dotdo.workers import WorkerSpec, ready
from dotdo.runtime.core.ids import resolve
from dotdo.runtime.placement.locator import worker_of
from tests.dotdo.serving import STARTUP_TIMEOUT, dotdo_serve, owned_by, rpc_url, stop

KINDS = str(Path(__file__).with_name("cluster_kinds.py"))
BROKEN = str(Path(__file__).with_name("broken_in_workers.py"))


async def hit(client: httpx.AsyncClient, name: str) -> dict[str, int]:
    response = await client.post(f"/_rpc/Probe/{name}/hit", json={})
    assert response.status_code == 200, response.text
    return response.json()["result"]  # type: ignore[no-any-return]


async def workers_seen(url: str, tries: int = 60) -> set[int]:
    """Which workers answer /_health over ``tries`` fresh connections."""
    seen: set[int] = set()
    for _ in range(tries):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            seen.add((await client.get("/_health")).json()["worker"])
        if len(seen) == 2:
            break
    return seen


async def test_two_workers_share_the_actors_without_ever_both_activating_one(tmp_path: Path) -> None:
    async with dotdo_serve(tmp_path, KINDS, "--workers", "2", "--data", str(tmp_path / "data")) as served:
        assert served.output().startswith("dotdo serving Probe with 2 workers\n")
        assert await workers_seen(served.url) == {0, 1}  # connections land on both

        # Concurrent load over HTTP (many connections, so both workers take requests)
        # and over the transport, at 24 actors, 12 of each worker.
        names = owned_by("Probe", 0, 12) + owned_by("Probe", 1, 12)
        answers: dict[str, list[dict[str, int]]] = defaultdict(list)

        async def http_load(rounds: int) -> None:
            limits = httpx.Limits(max_connections=4, max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=served.url, timeout=20, limits=limits) as client:
                for _ in range(rounds):
                    async with trio.open_nursery() as nursery:
                        for name in names:
                            async def one(name: str = name) -> None:
                                answers[name].append(await hit(client, name))

                            nursery.start_soon(one)

        async def rpc_load(rounds: int) -> None:
            async with connect(rpc_url(served)) as S:
                for _ in range(rounds):
                    async with trio.open_nursery() as nursery:
                        for name in names:
                            async def one(name: str = name) -> None:
                                answers[name].append(await S.Probe(name).hit())

                            nursery.start_soon(one)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(http_load, 5)
                for _ in range(2):
                    nursery.start_soon(rpc_load, 5)
        pids_of_worker: dict[int, set[int]] = defaultdict(set)
        for name, seen in answers.items():
            assert len(seen) == 30
            assert {a["pid"] for a in seen} == {seen[0]["pid"]}, f"{name} ran in two processes"
            assert {a["starts"] for a in seen} == {1}, f"{name} was activated more than once"
            assert sorted(a["hits"] for a in seen) == list(range(1, 31))  # no call lost or doubled
            pids_of_worker[worker_of(resolve("Probe", name).hex, 2)].add(seen[0]["pid"])
        assert all(len(pids) == 1 for pids in pids_of_worker.values())
        pid0, pid1 = pids_of_worker[0].pop(), pids_of_worker[1].pop()
        assert pid0 != pid1 and os.getpid() not in (pid0, pid1)

        a, b = owned_by("Probe", 0, 1, prefix="a")[0], owned_by("Probe", 1, 1, prefix="b")[0]
        async with connect(rpc_url(served)) as S:
            # One call chain crossing workers four times: each actor waits in its turn
            # while the chain comes back to it, and is let in (not deadlocked).
            assert await S.Probe(a).bounce(b, 4) == [pid0, pid1, pid0, pid1, pid0]
            # A pipeline whose middle result lives on the other worker: one frame out.
            sent = S.connection.frames_sent
            assert (await S.Probe(a).friend(b).hit())["pid"] == pid1
            assert S.connection.frames_sent == sent + 1
            # Alarms fire in the worker that owns the actor.
            await S.Probe(a).arm(0.1)
            await S.Probe(b).arm(0.1)
            with trio.fail_after(10):
                while await S.Probe(a).fired() is None or await S.Probe(b).fired() is None:
                    await trio.sleep(0.05)
            assert (await S.Probe(a).fired(), await S.Probe(b).fired()) == (pid0, pid1)
            # An event sent in one worker reaches a subscriber the other worker owns
            # (the subscription index is shared; the delivery crosses the peer socket).
            await S.Probe(b).listen()
            assert await S.Probe(a).ping() == 1
            with trio.fail_after(10):
                while await S.Probe(b).pinged() is None:
                    await trio.sleep(0.05)
            assert await S.Probe(b).pinged() == [pid1, a, a]
            # System calls are for workers only, not for clients.
            target = resolve("Probe", b)
            with pytest.raises(MethodNotAllowed):
                await S.connection.call_raw(target, [("$event", b"\x90")], 5.0)

        # HTTP to an actor's fetch arrives whole at its owner, whichever worker took it.
        for _ in range(6):
            async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
                response = await client.post(f"/Probe/{b}/x/y?q=1&r=%2F", content=b"body", headers={"x-test": "yes"})
            assert response.status_code == 201
            assert response.content == b"echo:body?q=1&r=%2F"
            assert response.headers["x-pid"] == str(pid1)
            assert response.headers["x-path"] == f"/Probe/{b}/x/y"
            assert response.headers["x-seen"] == "yes"
            assert response.headers["content-type"].startswith("text/plain")
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
            missing = await client.post(f"/_rpc/Probe/{b}/nope", json={})
        assert missing.status_code == 404 and missing.json()["error"] == "MethodNotAllowed"
        assert await stop(served, signal.SIGTERM) == 0
        assert served.output().endswith("dotdo stopped: every database closed\n")
        assert "Traceback" not in served.stderr.read_text()
    for pid in (pid0, pid1):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def retry_hit(S: Any, name: str, seconds: float = 30) -> dict[str, int]:
    """``hit`` until the actor's worker answers again."""
    with trio.fail_after(seconds):
        while True:
            try:
                return await S.Probe(name).hit()  # type: ignore[no-any-return]
            except ConnectionLost:
                await trio.sleep(0.05)


async def test_a_killed_worker_is_restarted_and_its_actors_keep_their_state(tmp_path: Path) -> None:
    async with dotdo_serve(tmp_path, KINDS, "--workers", "2", "--data", str(tmp_path / "data")) as served:
        victims = owned_by("Probe", 1, 5)
        survivors = owned_by("Probe", 0, 5)
        async with connect(rpc_url(served)) as S:
            for name in victims + survivors:
                for _ in range(3):
                    await S.Probe(name).hit()
            victim_pid = await S.Probe(victims[0]).slow(0)
            survivor_pid = (await S.Probe(survivors[0]).slow(0))
            outcome: list[object] = []

            async def in_flight() -> None:
                try:
                    outcome.append(await S.Probe(victims[1]).slow(30))
                except ConnectionLost as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(in_flight)
                await trio.sleep(0.3)
                os.kill(victim_pid, signal.SIGKILL)
        # The call in flight in the killed worker got a retryable error, not a hang.
        assert len(outcome) == 1 and isinstance(outcome[0], ConnectionLost)
        async with connect(rpc_url(served)) as S:
            after = {name: await retry_hit(S, name) for name in victims + survivors}
        for name in victims:
            assert after[name]["hits"] == 4  # nothing committed was lost
            assert after[name]["starts"] == 2  # activated again in the new worker
            assert after[name]["pid"] not in (victim_pid, survivor_pid)
        for name in survivors:
            assert after[name] == {"pid": survivor_pid, "hits": 4, "starts": 1}
        assert f"worker 1 (pid {victim_pid}) exited with signal SIGKILL; restarting" in served.stderr.read_text()
        assert await stop(served, signal.SIGINT) == 0


async def test_workers_stop_when_the_parent_is_killed(tmp_path: Path) -> None:
    async with dotdo_serve(tmp_path, KINDS, "--workers", "2", "--data", str(tmp_path / "data")) as served:
        async with connect(rpc_url(served)) as S:
            pids = {await S.Probe(name).slow(0) for name in owned_by("Probe", 0, 1) + owned_by("Probe", 1, 1)}
        assert len(pids) == 2
        served.process.kill()
        with trio.fail_after(STARTUP_TIMEOUT):
            while pids:
                await trio.sleep(0.05)
                for pid in list(pids):
                    try:
                        os.kill(pid, 0)
                    except ProcessLookupError:
                        pids.discard(pid)


async def test_a_worker_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    with pytest.raises(AssertionError) as failed:
        async with dotdo_serve(tmp_path, BROKEN, "--workers", "2"):
            pass
    message = str(failed.value)
    assert "exited with 1" in message
    assert "this module refuses to load in a worker" in message
    assert "dotdo serve: worker 0 did not start" in message


async def test_a_worker_that_answers_its_readiness_probe_with_garbage_is_not_ready(tmp_path: Path) -> None:
    """The parent probes a starting worker on its peer socket; a worker dying in the
    middle of its welcome used to raise out of the probe (a ProtocolError) and take the
    parent, and every other worker with it, down."""
    path = str(tmp_path / "w0.sock")
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(path)
    listener.listen()

    async def garbage() -> None:
        sock, _ = await listener.accept()
        await sock.recv(1024)  # the hello
        await sock.send(b"\x00\x00\x00\x03\xc1\xc1\xc1")
        sock.close()

    spec = WorkerSpec(0, 1, [], None, ServeOptions(), 0, None, 0, [path], "secret")
    proc = await trio.lowlevel.open_process([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(garbage)
            with trio.fail_after(10):
                assert await ready(spec, proc) is False
    finally:
        proc.kill()
        await proc.wait()
        listener.close()
