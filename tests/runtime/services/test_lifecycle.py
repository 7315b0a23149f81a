"""Lifecycle operations through the runtime: clone and compact, under concurrent traffic,
from inside the actor (``self.S``) and from the supervisor (``lifecycle.admin``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from dotdo import DO, ActorExists, InvalidInput
from dotdo.runtime.core.ids import id_from_name
from dotdo.runtime.supervisor import Supervisor


class Ledger(DO):
    async def add(self, n: int) -> int:
        self.sql.exec("CREATE TABLE IF NOT EXISTS entries(n INTEGER)")
        self.sql.exec("INSERT INTO entries(n) VALUES (?)", n)
        self.storage.put("last", n)
        await trio.sleep(0)  # other calls may queue while a turn runs
        return n

    async def entries(self) -> list[int]:
        try:
            return [row["n"] for row in self.sql.exec("SELECT n FROM entries ORDER BY rowid")]
        except Exception:
            return []

    async def arm(self, seconds: float) -> None:
        self.set_alarm(time.time() + seconds)

    async def alarm_at(self) -> Any:
        return self.get_alarm()

    async def alarm(self) -> None:
        return None

    async def copy_to(self, name: str, alarms: bool = True) -> dict[str, Any]:
        self.storage.put("before_clone", True)  # committed before the copy is taken
        report = await self.S.clone(name, alarms=alarms)
        self.storage.put("after_clone", True)  # not in the copy
        return report

    async def get(self, key: str) -> Any:
        return self.storage.get(key)

    async def chatter(self, count: int) -> None:
        for i in range(count):
            self.S.send("Ledger.noted", {"i": i})

    async def squeeze(self) -> dict[str, Any]:
        return await self.S.compact(retention=0)


async def test_clone_copies_committed_state_and_is_independent(tmp_path: Path) -> None:
    async with Supervisor([Ledger], tmp_path) as sup:
        a = sup.S.Ledger("a")
        for n in range(5):
            await a.add(n)
        await a.arm(3600)
        report = await a.copy_to("b")
        assert report["name"] == "b" and report["bytes"] > 0 and report["alarms"] is True
        b = sup.S.Ledger("b")
        assert await b.entries() == [0, 1, 2, 3, 4]
        assert await b.get("before_clone") is True
        assert await b.get("after_clone") is None
        assert await b.alarm_at() == await a.alarm_at()
        await b.add(99)  # independent afterwards
        assert await a.entries() == [0, 1, 2, 3, 4]
        assert (await b.entries())[-1] == 99
        # the clone's alarm is in the shared index: it shows in the admin listing
        listed = {(e.namespace, e.name) for e in sup.alarms.pending()}
        assert ("Ledger", "b") in listed


async def test_clone_without_alarms_and_onto_a_used_actor(tmp_path: Path) -> None:
    async with Supervisor([Ledger], tmp_path) as sup:
        a = sup.S.Ledger("a")
        await a.add(1)
        await a.arm(60)
        await a.copy_to("quiet", alarms=False)
        assert await sup.S.Ledger("quiet").alarm_at() is None
        await sup.S.Ledger("used").add(7)
        with pytest.raises(ActorExists):
            await a.copy_to("used")
        assert await sup.S.Ledger("used").entries() == [7]  # untouched
        with pytest.raises(InvalidInput):
            await sup.lifecycle.admin(a.id, "clone", new_id="a")  # onto itself
        with pytest.raises(InvalidInput):
            await sup.lifecycle.admin(a.id, "clone", nonsense=1)  # unknown argument
        with pytest.raises(InvalidInput):
            await sup.lifecycle.admin(a.id, "explode")


async def test_clone_under_concurrent_writes_is_a_consistent_cut(tmp_path: Path) -> None:
    """Writers run while the clone is taken: the clone holds a prefix of the writes,
    exactly those committed before it, and the source loses nothing."""
    async with Supervisor([Ledger], tmp_path) as sup:
        a = sup.S.Ledger("a")
        await a.add(-1)
        done: list[int] = []

        async def writer(base: int) -> None:
            for i in range(40):
                done.append(await a.add(base + i))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, 0)
            nursery.start_soon(writer, 1000)
            await trio.sleep(0.01)
            report = await sup.lifecycle.admin(a.id, "clone", new_id="cut")
        assert report["name"] == "cut"
        source = await a.entries()
        copy = await sup.S.Ledger("cut").entries()
        assert sorted(source) == sorted([-1, *done])  # nothing lost
        assert copy == source[: len(copy)]  # a prefix: no half turn, no gap
        assert 1 <= len(copy) <= len(source)


async def test_compact_folds_old_events_and_reports_sizes(tmp_path: Path) -> None:
    async with Supervisor([Ledger], tmp_path) as sup:
        a = sup.S.Ledger("a")
        for n in range(200):
            await a.add(n)
        await a.chatter(30)  # no subscribers: events and send actions only
        report = await a.squeeze()
        assert report["events_folded"] == 30
        assert report["actions_folded"] == 30
        assert report["bytes_before"] > report["bytes_after"] > 0
        assert await a.entries() == list(range(200))  # current state intact
        again = await sup.lifecycle.admin(a.id, "compact", retention=0)
        assert again["events_folded"] == 0
        stub = sup.S.Ledger("a")
        activation = sup.activation_of(stub.id)
        assert activation is not None
        from dotdo.storage.lifecycle import compacted

        rows = {(r["kind"], r["key"]): r["count"] for r in compacted(activation.db)}
        assert rows[("events", "Ledger.noted")] == 30
        with pytest.raises(InvalidInput):
            await sup.lifecycle.admin(a.id, "compact", retention=-1)


async def test_compact_keeps_recent_events(tmp_path: Path) -> None:
    async with Supervisor([Ledger], tmp_path) as sup:
        a = sup.S.Ledger("a")
        await a.chatter(5)
        report = await sup.lifecycle.admin(a.id, "compact")  # default retention: 7 days
        assert report["events_folded"] == 0 and report["retention"] == 7 * 86400


async def test_operations_run_on_the_owner_and_wait_for_running_turns(tmp_path: Path) -> None:
    async with Supervisor([Ledger], tmp_path) as sup:
        target = id_from_name("Ledger", "z")
        await sup.S.Ledger("z").add(1)
        assert "clone" in sup.lifecycle.operations and "shard" in sup.lifecycle.operations
        report = await sup.lifecycle.admin(target, "clone", new_id="z2", alarms=False)
        assert report["alarms"] is False


class Notes(DO):
    started = 0

    async def on_start(self) -> None:
        self.cached = self.storage.get("title")
        Notes.started += 1

    async def write(self, key: str, value: Any) -> None:
        self.storage.put(key, value)

    async def read(self, key: str) -> Any:
        return self.storage.get(key)

    async def title(self) -> Any:
        return self.cached

    async def fork_and_switch(self, name: str) -> str:
        await self.S.branch(name)
        await self.S.checkout(name)
        return (await self.S.branches())[0]["name"]


async def test_branch_checkout_merge_through_the_runtime(tmp_path: Path) -> None:
    async with Supervisor([Notes], tmp_path) as sup:
        doc = sup.S.Notes("doc")
        await doc.write("title", "v1")
        await doc.write("body", "hello")
        assert await doc.fork_and_switch("draft") == "draft"
        assert await doc.title() == "v1"  # reloaded: on_start ran over the branch
        await doc.write("title", "v2")
        await sup.lifecycle.admin(doc.id, "checkout", name="main")
        assert await doc.read("title") == "v1" and await doc.title() == "v1"
        await doc.write("body", "hello, world")  # a change on main too, another row
        diff = await sup.lifecycle.admin(doc.id, "diff", a="main", b="draft")
        assert diff["tables"]
        report = await sup.lifecycle.admin(doc.id, "merge", source="draft")
        assert report["conflicts"] == []
        assert await doc.read("title") == "v2" and await doc.read("body") == "hello, world"
        assert await doc.title() == "v2"  # merged rows reload the instance too
        # a conflict: both sides change the same key
        await sup.lifecycle.admin(doc.id, "checkout", name="draft")
        await doc.write("body", "draft body")
        await sup.lifecycle.admin(doc.id, "checkout", name="main")
        await doc.write("body", "main body")
        from dotdo import MergeConflict

        with pytest.raises(MergeConflict) as info:
            await sup.lifecycle.admin(doc.id, "merge", source="draft")
        assert info.value.conflicts and await doc.read("body") == "main body"
        await sup.lifecycle.admin(doc.id, "merge", source="draft", policy="source")
        assert await doc.read("body") == "draft body"
        names = [b["name"] for b in await sup.lifecycle.admin(doc.id, "branches")]
        assert sorted(names) == ["draft", "main"]
        await sup.lifecycle.admin(doc.id, "delete_branch", name="draft")
        assert [b["name"] for b in await sup.lifecycle.admin(doc.id, "branches")] == ["main"]


async def test_restore_then_undo_returns_to_the_same_rows(tmp_path: Path) -> None:
    from dotdo.storage.options import StorageOptions

    async with Supervisor([Ledger], tmp_path, storage=StorageOptions(history=86400.0)) as sup:
        a = sup.S.Ledger("a")
        for n in range(5):
            await a.add(n)
        mark = (await sup.lifecycle.admin(a.id, "bookmark"))["bookmark"]
        for n in range(5, 9):
            await a.add(n)
        await a.arm(600)
        assert await a.alarm_at() is not None
        later = await a.entries()
        result = await sup.lifecycle.admin(a.id, "restore", bookmark=mark)
        assert await a.entries() == [0, 1, 2, 3, 4]
        assert await a.alarm_at() is None  # the alarm set after the bookmark is gone
        assert not [e for e in sup.alarms.pending() if e.name == "a"]  # and out of the index
        await sup.lifecycle.admin(a.id, "restore", bookmark=result["undo"])
        assert await a.entries() == later
        assert await a.alarm_at() is not None
        info = await sup.lifecycle.admin(a.id, "history")
        assert info["retention"] == 86400.0 and info["disk_bytes"] > 0
        from dotdo import BookmarkError

        with pytest.raises(BookmarkError):
            await sup.lifecycle.admin(a.id, "restore", bookmark="not-a-bookmark")
        assert await a.entries() == later


async def test_history_is_off_by_default(tmp_path: Path) -> None:
    from dotdo import BookmarkError

    async with Supervisor([Ledger], tmp_path) as sup:
        a = sup.S.Ledger("a")
        await a.add(1)
        with pytest.raises(BookmarkError, match="off"):
            await sup.lifecycle.admin(a.id, "bookmark")
