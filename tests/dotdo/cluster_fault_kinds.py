"""Actor kinds for the cluster's fault tests (``test_cluster_faults.py``), served by path.

An ``Account`` records each of its activations (the node, the process, when) and each
write with the activation that made it, in its own tables, so that after a test the
history of every address shows whether two activations ever overlapped and whether an
acknowledged write is missing. Its alarm records where it fired.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

import trio

from dotdo import DO


class Account(DO):
    async def on_start(self) -> None:
        self.sql.exec("CREATE TABLE IF NOT EXISTS activations(id INTEGER PRIMARY KEY, node TEXT, pid INTEGER, started REAL)")
        self.sql.exec("CREATE TABLE IF NOT EXISTS writes(n INTEGER PRIMARY KEY, seq INTEGER UNIQUE, activation INTEGER, at REAL)")
        self.sql.exec("CREATE TABLE IF NOT EXISTS fired(n INTEGER PRIMARY KEY, node TEXT, at REAL)")
        self.sql.exec(
            "INSERT INTO activations(node, pid, started) VALUES (?, ?, ?)", self.env.get("NODE", "?"), os.getpid(), time.time()
        )
        self.activation = self.sql.exec("SELECT max(id) AS id FROM activations").one()["id"]

    async def write(self, seq: int, arm: bool = False) -> int:
        self.sql.exec("INSERT INTO writes(seq, activation, at) VALUES (?, ?, ?)", seq, self.activation, time.time())
        if arm:
            self.set_alarm(dt.timedelta(seconds=0.3))
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
