"""The example kinds ``dotdo serve`` runs with no module: Counter, Customer, Order, ChatRoom."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.types import Message

from dotdo.actors.examples import EXAMPLES, ChatRoom, Counter, Customer, Order
from dotdo import InvalidArguments, InvalidInput, MethodNotAllowed, Supervisor


@pytest.fixture
async def sup(tmp_path: Path) -> AsyncIterator[Supervisor]:
    async with Supervisor(EXAMPLES, tmp_path) as supervisor:
        yield supervisor


def request(method: str, path: str, body: bytes = b"", query: bytes = b"") -> Request:
    """A starlette request as the HTTP app would hand it to ``fetch``."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": [(b"content-type", b"application/json")],
        "scheme": "http",
        "server": ("127.0.0.1", 80),
    }
    return Request(scope, receive)


def decoded(response: Any) -> Any:
    return json.loads(response.body)


def test_the_examples() -> None:
    assert EXAMPLES == (Counter, Customer, Order, ChatRoom)
    assert sorted(Counter.__dotdo_kind__().methods) == ["get", "increment", "reset"]
    assert sorted(Customer.__dotdo_kind__().methods) == ["inbox", "notify"]
    assert sorted(Order.__dotdo_kind__().methods) == ["place", "status"]


async def test_counter(sup: Supervisor) -> None:
    counter = sup.S.Counter("c")
    assert await counter.get() == 0
    assert await counter.increment() == 1
    assert await counter.increment(5) == 6
    assert await counter.increment(by="-2") == 4
    with pytest.raises(InvalidArguments, match="argument 'by'"):
        await counter.increment("lots")
    assert sup.passivate(counter.id)
    assert await counter.get() == 4
    assert await counter.reset() == 4
    assert await counter.get() == 0
    assert await counter.reset() == 0
    assert await sup.S.Counter("other").get() == 0


async def test_counter_over_http(sup: Supervisor) -> None:
    counter = sup.S.Counter("c")
    response = await sup.fetch(counter.id, request("GET", "/Counter/c"))
    assert (response.status_code, decoded(response)) == (200, {"value": 0})
    response = await sup.fetch(counter.id, request("POST", "/Counter/c/increment"))
    assert decoded(response) == {"value": 1}
    response = await sup.fetch(counter.id, request("POST", "/Counter/c/increment/", query=b"by=10"))
    assert decoded(response) == {"value": 11}
    response = await sup.fetch(counter.id, request("GET", "/Counter/c/anything"))
    assert decoded(response) == {"value": 11}
    response = await sup.fetch(counter.id, request("DELETE", "/Counter/c"))
    assert response.status_code == 404
    assert decoded(response)["error"] == "NotFound"
    response = await sup.fetch(counter.id, request("POST", "/Counter/c/other"))
    assert response.status_code == 404
    assert await counter.get() == 11


async def test_counter_over_http_refuses_a_bad_increment(sup: Supervisor) -> None:
    counter = sup.S.Counter("c")
    with pytest.raises(InvalidInput, match="by= must be an integer"):
        await sup.fetch(counter.id, request("POST", "/Counter/c/increment", query=b"by=lots"))
    assert await counter.get() == 0


async def test_customer(sup: Supervisor) -> None:
    alice = sup.S.Customer("alice")
    assert await alice.inbox() == []
    assert await alice.notify("first") == 1
    assert await alice.notify("second") == 2
    assert await alice.notify("third") == 3
    inbox = await alice.inbox()
    assert [m["message"] for m in inbox] == ["third", "second", "first"]  # newest first
    assert all(set(m) == {"id", "message", "at"} and isinstance(m["at"], float) for m in inbox)
    assert [m["message"] for m in await alice.inbox(limit=2)] == ["third", "second"]
    assert sup.passivate(alice.id)
    assert await alice.notify("after restart") == 4  # on_start's CREATE TABLE IF NOT EXISTS kept the rows
    assert await sup.S.Customer("bob").inbox() == []
    with pytest.raises(InvalidArguments, match="argument 'message'"):
        await alice.notify(42)


async def test_customer_over_http(sup: Supervisor) -> None:
    alice = sup.S.Customer("alice")
    response = await sup.fetch(alice.id, request("POST", "/Customer/alice", json.dumps({"message": "hi"}).encode()))
    assert decoded(response) == {"inbox_size": 1}
    response = await sup.fetch(alice.id, request("GET", "/Customer/alice"))
    [message] = decoded(response)["inbox"]
    assert message["message"] == "hi"


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"'])
async def test_customer_over_http_refuses_a_body_that_is_not_an_object(sup: Supervisor, body: bytes) -> None:
    alice = sup.S.Customer("alice")
    with pytest.raises(InvalidInput, match="JSON object"):
        await sup.fetch(alice.id, request("POST", "/Customer/alice", body))
    assert await alice.inbox() == []


async def test_order_places_and_notifies_its_customer(sup: Supervisor) -> None:
    order = sup.S.Order("o1")
    assert await order.status() is None
    placed = await order.place("alice", "widget", 2)
    assert placed["customer_inbox_size"] == 1
    assert placed["order"]["customer"] == "alice"
    assert placed["order"]["item"] == "widget"
    assert placed["order"]["qty"] == 2
    assert isinstance(placed["order"]["placed_at"], float)
    assert await order.status() == placed["order"]
    [message] = await sup.S.Customer("alice").inbox()
    assert message["message"] == "order o1: 2 x widget"
    second = await sup.S.Order("o2").place(customer="alice", item="gadget")
    assert second["order"]["qty"] == 1
    assert second["customer_inbox_size"] == 2


async def test_an_order_reached_by_hex_names_itself_by_hex(sup: Supervisor) -> None:
    unique = sup.S.Order.new_unique_id()
    await sup.S.Order(unique.hex).place("bob", "book")
    [message] = await sup.S.Customer("bob").inbox()
    assert message["message"] == f"order {unique.hex}: 1 x book"


async def test_order_has_no_http_handler(sup: Supervisor) -> None:
    with pytest.raises(MethodNotAllowed, match="lifecycle"):
        await sup.fetch(sup.S.Order("o").id, request("GET", "/Order/o"))
