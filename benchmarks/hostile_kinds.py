"""The kind ``hostile_bench.py`` serves: a call that holds its argument for a while."""

from __future__ import annotations

import os

import trio

from dotdo import DO


class Sink(DO):
    async def hold(self, payload: bytes, seconds: float) -> int:
        """Keep ``payload`` alive for ``seconds`` (at most 30), then return its size."""
        await trio.sleep(min(max(seconds, 0.0), 30.0))
        return len(payload)

    async def pid(self) -> int:
        return os.getpid()
