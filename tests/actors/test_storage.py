"""An actor's ``self.storage`` (``dotdo.actors.storage``): the key-value API, whose
``delete_all`` deletes everything the actor stored in its turn's commit, and keeps what
it sent and what it listens to. The alarm index's side is in
tests/runtime/services/test_alarms.py."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from dotdo import DO, ActorError, DotdoError, Event, Supervisor
from dotdo.actors.storage import Storage
from dotdo.storage.kv import KVStore

T0 = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.timezone.utc).timestamp()


def wall() -> float:
    return T0 + trio.current_time()


class Notebook(DO):
    """Stores in every store; sends an event when it forgets everything."""

    async def fill(self) -> None:
        self.storage.put({"a": 1, "b": 2})
        self.sql.exec("CREATE TABLE notes(id INTEGER PRIMARY KEY, text TEXT); INSERT INTO notes(text) VALUES ('hi')")
        self.S.db.create("Note", {"text": "hi"}, name="first")

    async def forget(self, fail: bool = False) -> int:
        self.S.send("Notebook.forgotten", {"by": self.id.name})
        keys = self.storage.delete_all()  # after the send: the event still goes out
        if fail:
            raise ValueError("changed my mind")
        return keys

    async def state(self) -> dict[str, Any]:
        tables = self.sql.exec("SELECT name FROM sqlite_schema WHERE type = 'table' AND name = 'notes'")
        return {
            "keys": self.storage.list(),
            "tables": [row["name"] for row in tables],
            "things": self.S.db.count(),
            "events": [e.verb for e in self.S.events()],
        }

    async def again(self) -> list[dict[str, Any]]:
        # The schema is as new: the table that was made once can be made again.
        self.sql.exec("CREATE TABLE notes(id INTEGER PRIMARY KEY, text TEXT); INSERT INTO notes(text) VALUES ('again')")
        return self.sql.exec("SELECT id, text FROM notes").fetchall()

    async def is_storage(self) -> bool:
        return isinstance(self.storage, Storage) and isinstance(self.storage, KVStore)

    async def size(self) -> int:
        return self.sql.database_size


class Listener(DO):
    """Subscribes at run time (a row of its database); keeps what it heard in memory."""

    heard: list[Any]

    def __init__(self) -> None:
        self.heard = []

    async def listen(self) -> None:
        self.S.on.Notebook.forgotten(self._heard)

    async def forget(self) -> int:
        return self.storage.delete_all()

    async def _heard(self, event: Event) -> None:
        self.heard.append(event.data)

    async def what(self) -> list[Any]:
        return self.heard


FULL = {"keys": {"a": 1, "b": 2}, "tables": ["notes"], "things": 1, "events": []}


async def test_delete_all_deletes_every_store_and_returns_the_keys(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor([Notebook, Listener], tmp_path, clock=wall) as sup:
        book = sup.S.Notebook("n")
        await book.fill()
        assert await book.state() == FULL
        assert await book.forget() == 2
        assert await book.state() == {"keys": {}, "tables": [], "things": 0, "events": ["Notebook.forgotten"]}
        assert await book.again() == [{"id": 1, "text": "again"}]
        assert await book.is_storage()


async def test_a_turn_that_deletes_all_then_raises_restores_everything(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor([Notebook, Listener], tmp_path, clock=wall) as sup:
        book = sup.S.Notebook("n")
        await book.fill()
        with pytest.raises(ActorError, match="changed my mind"):
            await book.forget(fail=True)
        assert await book.state() == FULL  # and the event was never sent


async def test_what_was_sent_is_delivered_and_subscriptions_are_kept(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor([Notebook, Listener], tmp_path, clock=wall) as sup:
        listener = sup.S.Listener("l")
        await listener.listen()
        assert await listener.forget() == 0  # its own delete_all keeps its subscription
        book = sup.S.Notebook("n")
        await book.fill()
        await book.forget()
        with trio.fail_after(30):
            while not await listener.what():
                await trio.sleep(0.01)
        assert await listener.what() == [{"by": "n"}]


async def test_delete_all_belongs_to_the_actors_own_turns(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor([Notebook, Listener], tmp_path, clock=wall) as sup:
        book = sup.S.Notebook("n")
        await book.fill()
        instance = sup.activation_of(book.id).instance
        with pytest.raises(DotdoError, match="inside one of its own turns"):
            instance.storage.delete_all()
        assert instance.storage.get("a") == 1  # the rest of the API is the plain KV store's


async def test_database_size_is_pages_times_page_size(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor([Notebook, Listener], tmp_path, clock=wall) as sup:
        book = sup.S.Notebook("n")
        empty = await book.size()
        await book.fill()
        filled = await book.size()
        assert empty % 4096 == 0 and filled > empty
        stats = sup.activation_of(book.id).db.stats()
        assert filled == stats.page_count * stats.page_size
