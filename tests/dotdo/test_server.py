"""Serving (dotdo.server): the active-actor cap taken from the descriptor budget, and a
real server out of file descriptors, which answers 503 and never 500."""

from __future__ import annotations

import os
import resource
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio

from dotdo.actors.examples import EXAMPLES
from dotdo import ServeOptions, serve
from dotdo.runtime.transport.descriptors import descriptor_budget
from dotdo.storage.errors import DotdoError
from dotdo.storage.opening import DESCRIPTORS_PER_ACTOR
from tests.dotdo.rawhttp import request
from tests.dotdo.serving import dotdo_serve, serving

HEADROOM = 16
"""Descriptors the test leaves a server above the highest it holds, before idle
connections take them."""
MAX_IDLE = 200
"""Idle connections the test opens at most to take them."""


async def test_serve_takes_the_cap_from_the_budget_and_refuses_one_that_does_not_fit(tmp_path: Path) -> None:
    fits = descriptor_budget().max_active
    async with serving(EXAMPLES, tmp_path, max_active=None) as server:
        assert (await server.client.get("/Counter/a")).status_code == 200
    with pytest.raises(DotdoError, match=rf"--max-active {fits + 1} does not fit .* at most {fits} fit"):
        await serve(EXAMPLES, ServeOptions(port=0, data_dir=tmp_path / "other", max_active=fits + 1))
    assert not (tmp_path / "other").exists()


def _fds(pid: int) -> list[int]:
    return [int(fd) for fd in os.listdir(f"/proc/{pid}/fd")]


def _free(pid: int) -> int:
    """Descriptors process ``pid`` may still open (its limit is above all it holds)."""
    soft, _ = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    return soft - len(_fds(pid))


async def _until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        while not condition():
            await trio.sleep(0.01)


async def _hang_up(stream: trio.SocketStream) -> None:
    """Have the server close the idle connection ``stream`` now (one that never sent a
    request is kept until its keep-alive timeout, even once the client closed it)."""
    await stream.send_all(request("GET", "/_health"))
    with trio.fail_after(10):
        while await stream.receive_some(65536):
            pass
    await stream.aclose()


async def test_a_server_out_of_descriptors_answers_503_and_passivates_idle_actors_never_500(tmp_path: Path) -> None:
    args = ("--rpc-port", "0", "--keep-alive-timeout", "600", "--idle-timeout", "600")
    async with dotdo_serve(tmp_path, *args) as served:
        pid = served.process.pid
        port = urllib.parse.urlsplit(served.url).port
        assert port is not None
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        idle: list[trio.SocketStream] = []
        async with httpx.AsyncClient(base_url=served.url, timeout=10, limits=httpx.Limits(max_connections=1)) as client:
            assert (await client.get("/_health")).json()["active_actors"] == 0  # its connection is open
            try:
                # What the budget cannot foresee: the limit lowered under a running server
                # (or the system's table full). Idle connections take what is left.
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (max(_fds(pid)) + 1 + HEADROOM, hard))
                while _free(pid) > 0:
                    assert len(idle) < MAX_IDLE
                    held = len(_fds(pid))
                    idle.append(await trio.open_tcp_stream("127.0.0.1", port))
                    await _until(lambda: len(_fds(pid)) > held)  # accepted

                # No descriptor for a database and no idle actor to give one back.
                reply = await client.post("/Counter/first/increment")
                assert reply.status_code == 503, reply.text
                assert reply.json()["error"] == "Overloaded"
                assert "out of file descriptors; retry later" in reply.json()["message"]
                assert _free(pid) == 0  # the failed open left nothing open

                # Room for one actor: each next one passivates the one before.
                for stream in idle[:DESCRIPTORS_PER_ACTOR]:
                    await _hang_up(stream)
                await _until(lambda: _free(pid) == DESCRIPTORS_PER_ACTOR)
                for name, value in [("a", 1), ("b", 1), ("a", 2), ("first", 1)]:
                    reply = await client.post(f"/Counter/{name}/increment")
                    assert reply.status_code == 200, reply.text
                    assert reply.json() == {"value": value}
                assert (await client.get("/_health")).json()["active_actors"] == 1
            finally:
                for stream in idle:
                    await stream.aclose()
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert "no file descriptor left (EMFILE)" in served.errors()
    assert "Traceback" not in served.errors()
