"""A real dotdo server on 127.0.0.1 (port 0) for the duration of a test."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from dotdo import ServeOptions, serve


@dataclass
class Server:
    url: str
    client: httpx.AsyncClient
    out: io.StringIO
    data_dir: Path
    stop: trio.Event


@asynccontextmanager
async def serving(kinds: Iterable[type], data_dir: Path, **options: Any) -> AsyncIterator[Server]:
    """Serve ``kinds`` until the block ends (or ``server.stop`` is set); the server has
    fully stopped (every database closed) when this returns."""
    opts = replace(ServeOptions(host="127.0.0.1", port=0, data_dir=data_dir, max_active=64), **options)
    out = io.StringIO()
    stop = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                partial(serve, list(kinds), opts, shutdown_trigger=stop.wait, out=out)
            )
            assert len(binds) == 1 and binds[0].startswith("http://127.0.0.1:")
            async with httpx.AsyncClient(base_url=binds[0], timeout=10) as client:
                try:
                    yield Server(binds[0], client, out, data_dir.resolve(), stop)
                finally:
                    stop.set()


def open_files_under(directory: Path) -> list[str]:
    """Paths under ``directory`` this process has open (Linux: /proc/self/fd)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found
