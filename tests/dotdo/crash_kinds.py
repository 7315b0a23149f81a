"""Actor kinds for the crash-and-restart suite (``test_crash.py``), served by path.

A ``Ledger`` turn writes several things at once (a SQL row, a KV key, a counter, and
sometimes the alarm and a durable event), with awaits between the parts so that a kill
can land in the middle of it: after a restart the parts are all there or all absent.
``Auditor`` actors subscribe to the ledgers' events and count each delivery they handle.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import trio

from dotdo import DO, Event, on

PAUSE = 0.002
"""Seconds a ``write`` turn sleeps between its parts (a kill often lands in one)."""


class Ledger(DO):
    """Writes numbered entries; arms its alarm and sends events on request."""

    async def on_start(self) -> None:
        self.sql.exec(
            "CREATE TABLE IF NOT EXISTS entries(seq INTEGER PRIMARY KEY, nth INTEGER NOT NULL, "
            "note TEXT NOT NULL, alarm INTEGER NOT NULL, event INTEGER NOT NULL)"
        )

    async def write(self, seq: int, note: str, alarm_in: float | None = None, event: bool = False) -> int:
        """One turn, several writes: entry ``seq`` (the ``nth`` write committed here),
        KV ``k:<seq>``, the counter ``count`` (= n), and when asked the alarm (KV ``armed``
        names the entry that set it) and an event to the auditors. Returns n."""
        nth = (self.storage.get("count") or 0) + 1
        self.sql.exec(
            "INSERT INTO entries(seq, nth, note, alarm, event) VALUES (?, ?, ?, ?, ?)",
            seq, nth, note, alarm_in is not None, event,
        )
        await trio.sleep(PAUSE)
        self.storage.put(f"k:{seq}", note)
        if alarm_in is not None:
            self.set_alarm(dt.timedelta(seconds=alarm_in))
            self.storage.put("armed", seq)
        if event:
            assert self.id.name is not None
            self.S.send("Ledger.wrote", {"ledger": self.id.name, "seq": seq})
        await trio.sleep(PAUSE)
        self.storage.put("count", nth)
        return nth

    async def alarm(self) -> None:
        """Record which arming fired (the alarm of entry ``armed``), and how often."""
        self.storage.put("fired", self.storage.get("armed"))
        self.storage.put("fires", (self.storage.get("fires") or 0) + 1)

    async def state(self) -> dict[str, Any]:
        """Everything the suite checks, read in one turn."""
        rows = self.sql.exec("SELECT seq, nth, note, alarm, event FROM entries ORDER BY nth").fetchall()
        keys = {int(key[2:]): value for key, value in self.storage.list(prefix="k:").items()}
        pending = self.get_alarm()
        return {
            "entries": [[r["seq"], r["nth"], r["note"], bool(r["alarm"]), bool(r["event"])] for r in rows],
            "keys": [[seq, note] for seq, note in sorted(keys.items())],
            "count": self.storage.get("count") or 0,
            "armed": self.storage.get("armed"),
            "fired": self.storage.get("fired"),
            "fires": self.storage.get("fires") or 0,
            "pending_alarm": None if pending is None else pending.timestamp(),
        }


class Auditor(DO):
    """Counts every ``Ledger.wrote`` event it handles (the handler's turn adds one)."""

    async def on_start(self) -> None:
        self.sql.exec(
            "CREATE TABLE IF NOT EXISTS seen(ledger TEXT NOT NULL, seq INTEGER NOT NULL, "
            "times INTEGER NOT NULL, PRIMARY KEY (ledger, seq))"
        )

    @on.Ledger.wrote
    async def wrote(self, event: Event) -> None:
        self.sql.exec(
            "INSERT INTO seen(ledger, seq, times) VALUES (?, ?, 1) "
            "ON CONFLICT(ledger, seq) DO UPDATE SET times = times + 1",
            event.data["ledger"], event.data["seq"],
        )

    async def ready(self) -> bool:
        """A call that activates the auditor (its subscription starts then)."""
        return True

    async def seen(self) -> list[list[Any]]:
        """``[ledger, seq, times]`` for every event handled."""
        rows = self.sql.exec("SELECT ledger, seq, times FROM seen ORDER BY ledger, seq").fetchall()
        return [[r["ledger"], r["seq"], r["times"]] for r in rows]
