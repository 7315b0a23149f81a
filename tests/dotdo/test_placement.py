"""HTTP and fetch frames ask the locator once, and follow an address that moves while
the request waits (the HTTP side of tests/runtime/placement)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio
from starlette.requests import Request

from dotdo import DO
from dotdo.http import create_app, fetch_handler
from dotdo.runtime.placement.locator import MOVING
from dotdo.runtime.supervisor import Supervisor
from dotdo.runtime.transport import wire
from tests.runtime.placement.movable import Movable, Other


class Page(DO):
    """Answers which supervisor served it, after ``?hold=`` seconds."""

    async def fetch(self, request: Request) -> str:
        await trio.sleep(float(request.query_params.get("hold", "0")))
        return self.env["NAME"]


@asynccontextmanager
async def two(tmp_path: Path) -> AsyncIterator[tuple[Movable, Supervisor, Supervisor, httpx.AsyncClient]]:
    """Supervisor a (placed by a ``Movable``, behind the HTTP app) and b (where
    addresses go, taking fetch frames)."""
    locator = Movable()
    async with (
        Supervisor([Page], tmp_path / "a", locator=locator, env={"NAME": "a"}) as a,
        Supervisor([Page], tmp_path / "b", env={"NAME": "b"}) as b,
    ):
        a.wire_fetch = fetch_handler(a)
        b.wire_fetch = fetch_handler(b)
        transport = httpx.ASGITransport(app=create_app(a))
        async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
            yield locator, a, b, client


async def test_a_request_for_an_actor_elsewhere_is_relayed_whole(tmp_path: Path) -> None:
    async with two(tmp_path) as (locator, a, b, client):
        target = a.S.Page("p").id
        other = locator.owners[target] = Other(b)
        asked = locator.asked
        response = await client.get("/Page/p")
        assert (response.status_code, response.text) == (200, "b")
        assert locator.asked == asked + 1  # once for the request, none in the turn path
        assert other.calls == 1 and not a.is_active(target) and b.is_active(target)


async def test_requests_waiting_for_a_turn_follow_the_address_when_it_moves(tmp_path: Path) -> None:
    async with two(tmp_path) as (locator, a, b, client):
        target = a.S.Page("p").id
        answers: dict[str, str] = {}

        async def get(key: str, path: str) -> None:
            response = await client.get(path)
            answers[key] = f"{response.status_code} {response.text}"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(get, "holder", "/Page/p?hold=0.2")
            await trio.sleep(0.05)
            nursery.start_soon(get, "waiter", "/Page/p")
            await trio.sleep(0.05)
            locator.owners[target] = Other(b)
            a.moved(target)
        assert answers == {"holder": "200 a", "waiter": "200 b"}


async def test_a_request_waits_while_its_address_moves(tmp_path: Path) -> None:
    async with two(tmp_path) as (locator, a, b, client):
        target = a.S.Page("p").id
        locator.owners[target] = MOVING
        answers: list[str] = []

        async def get() -> None:
            answers.append((await client.get("/Page/p")).text)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(get)
            await trio.sleep(0.05)
            assert answers == []
            locator.settle(target, None)  # it stays here after all
        assert answers == ["a"]


async def test_a_fetch_frame_follows_its_address_too(tmp_path: Path) -> None:
    async with two(tmp_path) as (locator, a, b, client):
        target = a.S.Page("p").id
        request = wire.HttpRequest("GET", "/Page/p", b"hold=0.2", [], b"")
        waiting = wire.HttpRequest("GET", "/Page/p", b"", [], b"")
        answers: dict[str, tuple[int, bytes]] = {}

        async def frame(key: str, http: wire.HttpRequest) -> None:
            assert a.wire_fetch is not None
            status, _, body = await a.wire_fetch(target, http, 5.0)
            answers[key] = (status, body)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(frame, "holder", request)
            await trio.sleep(0.05)
            nursery.start_soon(frame, "waiter", waiting)
            await trio.sleep(0.05)
            locator.owners[target] = Other(b)
            a.moved(target)
        assert answers == {"holder": (200, b"a"), "waiter": (200, b"b")}
