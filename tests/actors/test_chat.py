"""The ``ChatRoom`` example (dotdo.actors.chat), served by ``dotdo serve --workers 2`` with
the built-in examples: from a Python WebSocket client, and from two pages in headless
Chromium (``tests/browser.py``) exchanging messages."""

from __future__ import annotations

import json
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import trio

from tests.browser import find_chromium
from tests.dotdo.serving import dotdo_serve
from tests.dotdo.wsclient import Client, Rejected, connect

ROOT = Path(__file__).parents[2]


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://") + path


async def receive(ws: Client) -> dict:
    return json.loads(await ws.receive())  # type: ignore[no-any-return]


async def test_a_room_sends_joiners_its_history_and_broadcasts_joins_messages_and_leaves(tmp_path: Path) -> None:
    async with dotdo_serve(tmp_path, "--workers", "2", "--data", str(tmp_path / "data")) as served, httpx.AsyncClient(
        timeout=10
    ) as client, AsyncExitStack() as stack:
        with trio.fail_after(30):
            page = await client.get(f"{served.url}/ChatRoom/lobby")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert 'const room = "lobby";' in page.text and "new WebSocket(" in page.text
            hostile = await client.get(f"{served.url}/ChatRoom/%3C%2Fscript%3E")  # a name cannot end the script
            assert "</script>\";" not in hostile.text and '"\\u003c/script>"' in hostile.text

            ann = await stack.enter_async_context(connect(ws_url(served.url, "/ChatRoom/lobby/ws?name=ann")))
            assert await receive(ann) == {"type": "join", "name": "ann", "members": ["ann"]}
            await ann.send("first")
            message = await receive(ann)
            assert message["type"] == "message" and message["from"] == "ann" and message["text"] == "first"
            bob = await stack.enter_async_context(connect(ws_url(served.url, "/ChatRoom/lobby/ws?name=bob")))
            assert (await receive(bob))["text"] == "first"  # the history, then the join
            assert await receive(bob) == {"type": "join", "name": "bob", "members": ["ann", "bob"]}
            assert await receive(ann) == {"type": "join", "name": "bob", "members": ["ann", "bob"]}
            await bob.send("ping")
            assert await bob.receive() == "pong"  # the auto-response
            await bob.send("x" * 1001)
            assert (await receive(bob))["type"] == "error"  # too long: refused, the socket stays
            await bob.close()
            assert await receive(ann) == {"type": "leave", "name": "bob", "members": ["ann"]}
            history = await client.post(f"{served.url}/_rpc/ChatRoom/lobby/history", json={"args": [], "kwargs": {}})
            assert [m["text"] for m in history.json()["result"]] == ["first"]
            with pytest.raises(Rejected) as refused:
                async with connect(ws_url(served.url, "/ChatRoom/lobby/ws?name=" + "n" * 41)):
                    pass
            assert refused.value.status == 400


async def test_two_browser_pages_chat_through_the_room(tmp_path: Path) -> None:
    chromium = find_chromium()
    async with dotdo_serve(tmp_path, "--workers", "2", "--data", str(tmp_path / "data")) as served:
        screenshot = tmp_path / "chat.png"
        with trio.fail_after(90):
            done = await trio.run_process(
                [sys.executable, "-m", "tests.actors.chat_pages", chromium, f"{served.url}/ChatRoom/lobby", str(screenshot)],
                capture_stdout=True, capture_stderr=True, check=False, cwd=ROOT,
            )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        shown = json.loads(done.stdout)
        for name in ("ann", "bob"):
            assert shown[name]["messages"] == ["ann: hello bob <b>not bold</b>", "bob: hi ann"]
            assert shown[name]["bold"] == 0  # shown as text, never as HTML
            assert shown[name]["title"] == "lobby"
        assert shown["ann"]["after_bob_left"][-1] == "bob left"
        assert screenshot.stat().st_size > 1000
