"""Actor kinds for the cluster's fault tests (``test_cluster_faults.py``), served by path.

An ``Account`` records each of its activations (the node, the process, when) and each
write with the activation that made it, in its own tables, so that after a test the
history of every address shows whether two activations ever overlapped and whether an
acknowledged write is missing; ``count`` reads how many writes it holds (a reader that
sees it go down read back in time). Its alarm records where it fired. An ``Auditor``
counts the ``Account.wrote`` events it handles, wherever the two live.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

import trio

from dotdo import DO, Event, on


class Account(DO):
    async def on_start(self) -> None:
        self.sql.exec("CREATE TABLE IF NOT EXISTS activations(id INTEGER PRIMARY KEY, node TEXT, pid INTEGER, started REAL)")
        self.sql.exec("CREATE TABLE IF NOT EXISTS writes(n INTEGER PRIMARY KEY, seq INTEGER UNIQUE, activation INTEGER, at REAL)")
        self.sql.exec("CREATE TABLE IF NOT EXISTS fired(n INTEGER PRIMARY KEY, node TEXT, at REAL)")
        self.sql.exec(
            "INSERT INTO activations(node, pid, started) VALUES (?, ?, ?)", self.env.get("NODE", "?"), os.getpid(), time.time()
        )
        self.activation = self.sql.exec("SELECT max(id) AS id FROM activations").one()["id"]

    async def write(self, seq: int, arm: bool = False, event: bool = False) -> int:
        self.sql.exec("INSERT INTO writes(seq, activation, at) VALUES (?, ?, ?)", seq, self.activation, time.time())
        if arm:
            self.set_alarm(dt.timedelta(seconds=0.3))
        if event:
            self.S.send("Account.wrote", {"account": self.id.name, "seq": seq})
        await trio.sleep(0.001)
        return seq

    async def alarm(self) -> None:
        self.sql.exec("INSERT INTO fired(node, at) VALUES (?, ?)", self.env.get("NODE", "?"), time.time())

    async def history(self) -> dict[str, Any]:
        return {
            "activations": self.sql.exec("SELECT id, node, pid, started FROM activations ORDER BY id").fetchall(),
            "writes": self.sql.exec("SELECT n, seq, activation, at FROM writes ORDER BY n").fetchall(),
            "fired": self.sql.exec("SELECT node, at FROM fired ORDER BY n").fetchall(),
        }

    async def fill(self, key: str, size: int) -> int:
        """Store ``size`` random bytes under ``key`` in one commit (a large page set)."""
        self.sql.exec("CREATE TABLE IF NOT EXISTS blobs(key TEXT PRIMARY KEY, body BLOB)")
        self.sql.exec("INSERT OR REPLACE INTO blobs VALUES (?, randomblob(?))", key, size)
        return size

    async def mark(self) -> str:
        """A bookmark of the account as it is (needs the server's history on)."""
        return await self.S.bookmark()

    async def back_to(self, bookmark: str) -> str:
        return await self.S.restore(bookmark)

    async def fork(self, name: str) -> dict[str, Any]:
        return await self.S.branch(name)

    async def forks(self) -> list[str]:
        return sorted(b["name"] for b in await self.S.branches())

    async def count(self) -> int:
        """The writes the account holds (a read: it writes nothing)."""
        return int(self.sql.exec("SELECT count(*) AS n FROM writes").one()["n"])


class Auditor(DO):
    async def on_start(self) -> None:
        self.sql.exec("CREATE TABLE IF NOT EXISTS seen(account TEXT, seq INTEGER, times INTEGER, node TEXT, PRIMARY KEY (account, seq))")

    @on.Account.wrote
    async def wrote(self, event: Event) -> None:
        self.sql.exec(
            "INSERT INTO seen(account, seq, times, node) VALUES (?, ?, 1, ?) "
            "ON CONFLICT(account, seq) DO UPDATE SET times = times + 1",
            event.data["account"], event.data["seq"], self.env.get("NODE", "?"),
        )

    async def ready(self) -> str:
        return self.env.get("NODE", "?")

    async def seen(self) -> list[list[Any]]:
        rows = self.sql.exec("SELECT account, seq, times FROM seen ORDER BY account, seq").fetchall()
        return [[r["account"], r["seq"], r["times"]] for r in rows]
