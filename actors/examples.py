"""The example actor kinds ``dotdo serve`` runs when given no module.

- ``Counter``: a number in KV storage; RPC ``increment``/``get``, and HTTP
  (``GET /Counter/<id>`` reads, ``POST /Counter/<id>/increment`` adds one).
- ``Customer``: an inbox in SQL; ``notify(message)`` returns the inbox size.
- ``Order``: ``place(customer, item, qty)`` records the order and notifies the customer
  (an actor calling another actor).
- ``ChatRoom``: a room of WebSocket clients with a small page (``dotdo.actors.chat``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dotdo.actors.base import DO
from dotdo.actors.chat import ChatRoom
from dotdo.storage.errors import InvalidInput


class Counter(DO):
    """A counter per id."""

    async def increment(self, by: int = 1) -> int:
        """Add ``by`` and return the new value."""
        value = (self.storage.get("value") or 0) + by
        self.storage.put("value", value)
        return value

    async def get(self) -> int:
        """The current value."""
        return self.storage.get("value") or 0

    async def reset(self) -> int:
        """Set the value back to 0; returns the old one."""
        old = self.storage.get("value") or 0
        self.storage.delete("value")
        return old

    async def fetch(self, request: Request) -> Response:
        tail = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if request.method == "POST" and tail == "increment":
            try:
                by = int(request.query_params.get("by", "1"))
            except ValueError:
                raise InvalidInput("?by= must be an integer") from None
            return JSONResponse({"value": await self.increment(by)})
        if request.method == "GET":
            return JSONResponse({"value": await self.get()})
        return JSONResponse(
            {"error": "NotFound", "message": "GET /Counter/<id> or POST /Counter/<id>/increment"},
            status_code=404,
        )


class Customer(DO):
    """A customer with an inbox of notifications."""

    async def on_start(self) -> None:
        self.sql.exec(
            "CREATE TABLE IF NOT EXISTS inbox("
            " id INTEGER PRIMARY KEY, message TEXT NOT NULL, at REAL NOT NULL)"
        )

    async def notify(self, message: str) -> int:
        """Add a message to the inbox; returns how many messages it holds."""
        self.sql.exec("INSERT INTO inbox(message, at) VALUES (?, ?)", message, time.time())
        return self.sql.exec("SELECT count(*) AS n FROM inbox").one()["n"]

    async def inbox(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest messages, newest first."""
        return self.sql.exec(
            "SELECT id, message, at FROM inbox ORDER BY id DESC LIMIT ?", limit
        ).fetchall()

    async def fetch(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                body = json.loads(await request.body() or b"{}")
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise InvalidInput('the body must be a JSON object: {"message": "..."}')
            size = await self.notify(str(body.get("message", "")))
            return JSONResponse({"inbox_size": size})
        return JSONResponse({"inbox": await self.inbox()})


class Order(DO):
    """An order that notifies its customer when placed."""

    async def place(self, customer: str, item: str, qty: int = 1) -> dict[str, Any]:
        """Record the order and tell the customer; returns the order and inbox size."""
        order = {"customer": customer, "item": item, "qty": qty, "placed_at": time.time()}
        self.storage.put("order", order)
        who = self.id.name or self.id.hex
        size = await self.S.Customer(customer).notify(f"order {who}: {qty} x {item}")
        return {"order": order, "customer_inbox_size": size}

    async def status(self) -> dict[str, Any] | None:
        """The order, or None if it was never placed."""
        return self.storage.get("order")


EXAMPLES: tuple[type[DO], ...] = (Counter, Customer, Order, ChatRoom)
