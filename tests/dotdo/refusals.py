"""Helpers of the bad-input tests (``test_bad_input.py``): what counts as a refusal,
the tally of inputs tried, and servers in a thread of their own or under a low
open-file limit."""

from __future__ import annotations

import collections
import io
import os
import queue
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from dotdo import ServeOptions, serve
from tests.dotdo.rawhttp import Reply
from tests.dotdo.serving import environment


class Tally:
    """Inputs tried, by kind, and how the server answered them."""

    def __init__(self) -> None:
        self.kinds: collections.Counter[str] = collections.Counter()
        self.outcomes: collections.Counter[str] = collections.Counter()

    def record(self, kind: str, outcome: str, count: int = 1) -> None:
        self.kinds[kind] += count
        self.outcomes[outcome] += count

    def summary(self) -> str:
        kinds = ", ".join(f"{kind} {n}" for kind, n in self.kinds.items())
        outcomes = ", ".join(f"{outcome} {n}" for outcome, n in sorted(self.outcomes.items()))
        return f"bad input tried: {sum(self.kinds.values())} ({kinds}); answers: {outcomes}"


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its mtime (ns) and size, but what is under the
    ``data`` (servers) and ``logs`` (tests) directories of each test directory."""
    found = {}
    for directory, subdirectories, files in os.walk(root):
        if Path(directory).parent == root:
            subdirectories[:] = [name for name in subdirectories if name not in ("data", "logs")]
        for name in [*subdirectories, *files]:
            stat = os.lstat(os.path.join(directory, name))
            found[os.path.join(directory, name)] = (stat.st_mtime_ns, stat.st_size)
    return found


@dataclass(frozen=True)
class Case:
    """One bad request and the refusal it must get (None: any refusal)."""

    label: str
    request: bytes
    status: int | None = None
    error: str | None = None

    def __str__(self) -> str:
        return self.label


def judge(reply: Reply, status: int | None = None, error: str | None = None) -> str:
    """How ``reply`` refused the input, failing the test if it is not a refusal: "json"
    (4xx or 503 with an error body), "parser" (h11's bare 4xx, the connection closed),
    or "closed". ``status`` and ``error`` pin a JSON refusal."""
    if reply.status is None:
        assert reply.raw == b"", f"half a reply: {reply}"
        assert status is None or status == 413, f"expected {status} {error}, got {reply}"
        return "closed"
    code = reply.status
    assert 400 <= code < 500 or code in (501, 503), f"not a refusal: {reply}"
    if not reply.body and reply.headers.get("connection") == "close":  # from h11, before the app
        # 501 is RFC 9112's answer to a transfer coding the server does not know.
        assert code != 503 and (code != 501 or status == 501), str(reply)
        assert error is None, f"expected {error}, the parser refused first: {reply}"
        return "parser"
    assert code != 501, str(reply)
    body = reply.json()
    assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str), str(reply)
    assert set(body) <= {"error", "message", "remote_type"}, str(reply)
    if status is not None:
        assert code == status, str(reply)
    if error is not None:
        assert body["error"] == error, str(reply)
    return "json"


async def still_serving(client: httpx.AsyncClient) -> None:
    """A normal call and a normal fetch (of the tests' ``Probe`` kind) get their right
    answers."""
    with trio.fail_after(10):
        response = await client.post("/_rpc/Probe/ok/add", json={"args": [2, 3]})
        assert (response.status_code, response.json()) == (200, {"result": 5})
        response = await client.get("/Probe/ok/anything")
        assert (response.status_code, response.json()) == (200, {"name": "ok", "size": 0})


async def active_actors(client: httpx.AsyncClient) -> int:
    """How many actors the server has active (``/_health``)."""
    return int((await client.get("/_health")).json()["active_actors"])


@contextmanager
def serving_in_thread(kinds: list[type], data_dir: Path, **options: Any) -> Iterator[str]:
    """``serve`` in a thread running its own trio loop (a test's loop lives only as
    long as the test), until the block ends; yields the server's URL."""
    started: queue.Queue[Any] = queue.Queue()
    thread = threading.Thread(target=trio.run, args=(_serve, kinds, data_dir, options, started), name="dotdo server")
    thread.start()
    outcome = started.get(timeout=30)
    if isinstance(outcome, BaseException):
        raise outcome
    url, token, stop = outcome
    try:
        yield url
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(timeout=30)
        assert not thread.is_alive()


async def _serve(kinds: list[type], data_dir: Path, options: dict[str, Any], started: queue.Queue[Any]) -> None:
    """Serve until stopped; put (url, trio token, stop event), or the failure to start."""
    stop = trio.Event()
    settings = replace(ServeOptions(host="127.0.0.1", port=0, data_dir=data_dir, max_active=64), **options)
    try:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, kinds, settings, shutdown_trigger=stop.wait, out=io.StringIO()))
            started.put((binds[0], trio.lowlevel.current_trio_token(), stop))
    except BaseException as exc:
        started.put(exc)
        raise


@asynccontextmanager
async def serve_with_few_descriptors(tmp_path: Path, descriptors: int, *args: str) -> AsyncIterator[str]:
    """``python -m dotdo serve`` (the example kinds) under an open-file limit of
    ``descriptors``; yields its URL, and checks afterwards that it logged no error."""
    out, err = tmp_path / "logs" / "serve.out", tmp_path / "logs" / "serve.err"
    command = [sys.executable, "-m", "dotdo", "serve", "--port", "0", "--workers", "1", "--rpc-port", "0", "--data", str(tmp_path / "data"), *args]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            ["sh", "-c", f'ulimit -n {descriptors} && exec "$@"', "sh", *command],
            stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, cwd=tmp_path, env=environment(),
        )  # fmt: skip
    try:
        with trio.fail_after(30):
            while "stop: Ctrl-C" not in out.read_text():
                assert process.poll() is None, err.read_text()
                await trio.sleep(0.02)
        [url] = [line.split("http: ", 1)[1].split()[0] for line in out.read_text().splitlines() if "http: " in line]
        yield url
    finally:
        process.terminate()
        with trio.fail_after(15):
            await process.wait()
    assert "Traceback" not in err.read_text() and "ERROR" not in err.read_text(), err.read_text()
