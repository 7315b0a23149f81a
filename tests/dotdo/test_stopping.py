"""``dotdo serve --cpu-limit`` and ``--call-timeout`` against turns that compute without
awaiting: stopped and rolled back, never acknowledged, and the server serves on."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import trio

from tests.dotdo.serving import dotdo_serve

KINDS = str(Path(__file__).with_name("kinds.py"))


async def test_a_turn_past_the_cpu_limit_is_stopped_and_the_server_serves_on(tmp_path: Path) -> None:
    args = ("--data", str(tmp_path / "data"), "--cpu-limit", "0.5", "--call-timeout", "20", KINDS)
    async with dotdo_serve(tmp_path, *args) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
            started = time.monotonic()
            reply = await client.post("/_rpc/Spinner/s/spin", json={"args": [10]})
            assert time.monotonic() - started < 8  # not the 10 s the loop wanted
            assert reply.status_code == 500, reply.text
            assert reply.json()["error"] == "CpuLimitExceeded"
            assert "more than 0.5 s of CPU" in reply.json()["message"]
            wrote = await client.post("/_rpc/Spinner/s/wrote", json={})
            assert wrote.json()["result"] == {"spun": False, "blocked": False}  # rolled back
            assert (await client.get("/_health")).status_code == 200
        assert "Traceback" not in served.errors()


async def test_a_turn_that_outlives_its_deadline_without_awaiting_is_not_acknowledged(tmp_path: Path) -> None:
    args = ("--data", str(tmp_path / "data"), "--call-timeout", "0.5", KINDS)
    async with dotdo_serve(tmp_path, *args) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
            reply = await client.post("/_rpc/Spinner/b/block", json={"args": [1.5]})
            assert reply.status_code == 504, reply.text
            assert reply.json()["error"] == "CallTimeout"
            with trio.fail_after(10):
                wrote = await client.post("/_rpc/Spinner/b/wrote", json={})
            assert wrote.json()["result"] == {"spun": False, "blocked": False}
