"""Crash and restart: ``kill -9`` of a whole ``dotdo serve`` under load loses nothing.

A real server (``python -m dotdo serve``, one worker or two, in a process group of its
own) serves ``crash_kinds.py`` on a temporary data directory. Client tasks write to
many ``Ledger`` actors over HTTP and over the msgpack/TCP transport; each write turn
writes a SQL row, a KV key and a counter, and sometimes arms the alarm and sends an
event that two ``Auditor`` actors count. At a random moment (seeded: set
``DOTDO_CRASH_SEED`` to repeat one run) the server and its workers are killed with
SIGKILL, then started again on the same directory. Meanwhile another client keeps
opening transport connections and resetting them at random stages, which must cost
nothing: no writer sees an error before the kill, no worker dies. A restart must show:

- a clean start (banner, ``/_health``, no traceback on stderr);
- every acknowledged write, and no turn half-applied (acknowledged or not): a row is
  there exactly when its KV key is, the rows' turn numbers run 1..counter, ``armed``
  names the last row that set the alarm, and nothing is there that no client sent;
- every committed alarm fires, every committed event reaches each auditor exactly once,
  and no event arrives whose turn did not commit;
- ``PRAGMA integrity_check`` is ok for every database file, after every kill and at
  the end.

The data directory is also copied after each kill and read through the storage layer,
to count what the restart had to finish (alarms to fire, deliveries to make).
``pytest -s`` shows the seed, a line per kill and a one-line summary.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import apsw
import httpx
import trio

from dotdo import DotdoError, connect
from dotdo.runtime.core import values
from dotdo.runtime.transport import wire
from dotdo.runtime.core.ids import id_from_name
from dotdo.storage.database import ActorDatabase
from tests.dotdo.serving import Served, dotdo_serve_group, kill_group, post_whole, rpc_url, spawn_group, stop

KINDS = str(Path(__file__).with_name("crash_kinds.py"))

LEDGERS = [f"ledger-{i}" for i in range(40)]
AUDITORS = ["audit-0", "audit-1"]


class Run(NamedTuple):
    """One run of the server: its worker processes, when the kill comes ("load": during
    the load, after the checks; "start": during start-up, while the server finishes
    what the previous kill left, with no checks and no load; "never"), and
    ``--max-active`` (a low cap passivates and reopens actors all through the load;
    None: the default)."""

    workers: int
    kill: str
    max_active: int | None = None


PLAN = (
    Run(1, "load"),
    Run(2, "load", max_active=8),
    Run(2, "start"),
    Run(1, "load", max_active=8),
    Run(2, "load"),
    Run(1, "start", max_active=8),
    Run(1, "load"),
    Run(2, "load", max_active=8),
)
"""The killed runs, in order."""
FINAL = Run(2, "never")
"""The last run: it checks, settles and stops cleanly."""
HTTP_CLIENTS, HTTP_TASKS_EACH = 4, 5
TCP_CONNECTIONS, TCP_TASKS_EACH = 2, 4
KILL_AFTER = (0.2, 1.5)
"""Seconds of load before the kill: uniform in this range."""
KILL_AT_START = (0.2, 1.5)
"""Seconds after ``dotdo serve`` was started of a kill in a "start" run: uniform in
this range (around the time it takes to start, about a second)."""
ALARM_IN = (0.05, 0.8)
"""Seconds ahead a write arms the alarm: uniform in this range."""
ALARM_SHARE, EVENT_SHARE = 0.3, 0.3
SETTLE_TIMEOUT = 20
"""Seconds a restarted server has to fire the committed alarms and deliver the events."""
PHASE_TIMEOUT = 30


# -- what the clients sent and what came back ---------------------------------------


@dataclass(frozen=True)
class Write:
    """One ``Ledger.write`` call."""

    seq: int
    note: str
    alarm_in: float | None
    event: bool

    def args(self) -> list[Any]:
        return [self.seq, self.note, self.alarm_in, self.event]


@dataclass
class Books:
    """Every write sent, per ledger, and which of them were acknowledged."""

    sent: dict[str, dict[int, Write]] = field(default_factory=lambda: {name: {} for name in LEDGERS})
    acked: dict[str, set[int]] = field(default_factory=lambda: {name: set() for name in LEDGERS})
    next_seq: int = 0

    def new_write(self, name: str, rng: random.Random, run: int) -> Write:
        """A fresh write for ledger ``name`` (its sequence number is never reused)."""
        self.next_seq += 1
        alarm_in = round(rng.uniform(*ALARM_IN), 3) if rng.random() < ALARM_SHARE else None
        write = Write(self.next_seq, f"run {run} #{self.next_seq}", alarm_in, rng.random() < EVENT_SHARE)
        self.sent[name][write.seq] = write
        return write


@dataclass
class Stats:
    """The figures of a run, printed at the end."""

    kills: int = 0
    sent: int = 0
    acked: int = 0
    verified: int = 0
    committed_unacked: int = 0
    alarms_fired: int = 0
    events_delivered: int = 0
    alarms_left: int = 0
    deliveries_left: int = 0
    resets: int = 0

    def line(self, seed: int) -> str:
        return (
            f"crash suite (seed {seed}): {self.kills} kills survived, {self.sent} writes sent, "
            f"{self.acked} acknowledged and {self.verified} verified present "
            f"({self.committed_unacked} unacknowledged ones committed too), "
            f"{self.alarms_fired} alarms fired ({self.alarms_left} armed but not fired at a kill), "
            f"{self.events_delivered} event deliveries, each once ({self.deliveries_left} pending at a kill), "
            f"{self.resets} transport connections reset by their clients; nothing lost"
        )


# -- the server ----------------------------------------------------------------------


def serve_args(tmp_path: Path, run: Run) -> list[str]:
    """``dotdo serve`` arguments of ``run``: crash_kinds.py on ``tmp_path/data``."""
    cap = [] if run.max_active is None else ["--max-active", str(run.max_active)]
    return ["--data", str(tmp_path / "data"), "--workers", str(run.workers), *cap, KINDS]


@asynccontextmanager
async def started(tmp_path: Path, index: int, run: Run) -> AsyncIterator[Served]:
    """``dotdo serve`` for ``run``, checked to have started cleanly; killed on exit if
    still running."""
    async with dotdo_serve_group(tmp_path, f"run{index}", *serve_args(tmp_path, run)) as served:
        with trio.fail_after(PHASE_TIMEOUT):
            await check_started(served, run.workers)
        yield served


async def check_started(served: Served, workers: int) -> None:
    """The banner names the kinds and workers, ``/_health`` answers ok, stderr is clean."""
    first = served.output().splitlines()[0]
    assert first == "dotdo serving Auditor, Ledger" + (f" with {workers} workers" if workers > 1 else "")
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        response = await client.get("/_health")
    assert response.status_code == 200 and response.json()["status"] == "ok", response.text
    assert_clean(served)


BAD_SIGNS = ("Traceback", "Error", "error", "Exception", "exception")


def assert_clean(served: Served) -> None:
    """Nothing alarming on the server's stderr."""
    err = served.stderr.read_text()
    assert not any(sign in err for sign in BAD_SIGNS), err


# -- the load ------------------------------------------------------------------------

Send = Callable[[str, Write], Awaitable[None]]
JSON = {"content-type": "application/json"}


async def writer(send: Send, books: Books, stats: Stats, rng: random.Random, run: int, killed: trio.Event) -> None:
    """Write to random ledgers until the server is killed. A reply that came back is an
    acknowledgement; a failure is only allowed once the kill has begun."""
    while not killed.is_set():
        name = rng.choice(LEDGERS)
        write = books.new_write(name, rng, run)
        stats.sent += 1
        try:
            await send(name, write)
        except (httpx.TransportError, DotdoError, AssertionError):
            if killed.is_set():
                return
            raise
        books.acked[name].add(write.seq)
        stats.acked += 1


def over_http(client: httpx.AsyncClient) -> Send:
    async def send(name: str, write: Write) -> None:
        body = json.dumps({"args": write.args()}).encode()
        response = await post_whole(client, f"/_rpc/Ledger/{name}/write", body, JSON)
        assert response.status_code == 200, f"{name} {write}: {response.status_code} {response.text}"

    return send


def over_tcp(S: Any) -> Send:
    async def send(name: str, write: Write) -> None:
        await S.Ledger(name).write(*write.args())

    return send


async def http_writers(served: Served, books: Books, stats: Stats, rng: random.Random, run: int, killed: trio.Event) -> None:
    """``HTTP_TASKS_EACH`` writers sharing one HTTP client (and its few connections)."""
    limits = httpx.Limits(max_connections=3)
    async with httpx.AsyncClient(base_url=served.url, timeout=10, limits=limits) as client:
        async with trio.open_nursery() as nursery:
            for _ in range(HTTP_TASKS_EACH):
                nursery.start_soon(writer, over_http(client), books, stats, random.Random(rng.random()), run, killed)


async def tcp_writers(served: Served, books: Books, stats: Stats, rng: random.Random, run: int, killed: trio.Event) -> None:
    """``TCP_TASKS_EACH`` writers sharing one transport connection."""
    try:
        async with connect(rpc_url(served)) as S:
            async with trio.open_nursery() as nursery:
                for _ in range(TCP_TASKS_EACH):
                    nursery.start_soon(writer, over_tcp(S), books, stats, random.Random(rng.random()), run, killed)
    except DotdoError:
        if not killed.is_set():
            raise


async def resetter(served: Served, stats: Stats, rng: random.Random, killed: trio.Event) -> None:
    """Until the kill, open transport connections and reset them (SO_LINGER 0) at a
    random stage: before the hello, after the welcome, mid-frame, or with reads in
    flight. A reset once took the server (or a worker) down with it, failing the
    writers' calls."""
    host, port = rpc_url(served).removeprefix("tcp://").rsplit(":", 1)
    hello = wire.encode(wire.Hello(wire.VERSION, None))
    reads = b"".join(
        wire.encode(wire.Call(i, id_from_name("Ledger", rng.choice(LEDGERS)), [("state", values.pack([[], {}]))])) for i in range(1, 5)
    )
    while not killed.is_set():
        sock = trio.socket.socket()
        try:
            await sock.connect((host, int(port)))
            stage = rng.choice(["before hello", "after welcome", "mid-frame", "in flight"])
            if stage != "before hello":
                await sock.send(hello)
                await sock.recv(256)
                if stage == "mid-frame":
                    await sock.send(reads[: rng.randrange(1, len(reads))])
                elif stage == "in flight":
                    await sock.send(reads)
                    await trio.sleep(rng.uniform(0, 0.02))
        except OSError:
            if not killed.is_set():
                raise
        finally:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        stats.resets += 1
        await trio.sleep(rng.uniform(0, 0.02))


async def load_then_kill(served: Served, books: Books, stats: Stats, rng: random.Random, run: int) -> float:
    """Write from every client task; kill the server's whole group at a random moment
    (returned: seconds after the load began)."""
    killed = trio.Event()
    kill_after = rng.uniform(*KILL_AFTER)
    with trio.fail_after(PHASE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for _ in range(HTTP_CLIENTS):
                nursery.start_soon(http_writers, served, books, stats, random.Random(rng.random()), run, killed)
            for _ in range(TCP_CONNECTIONS):
                nursery.start_soon(tcp_writers, served, books, stats, random.Random(rng.random()), run, killed)
            nursery.start_soon(resetter, served, stats, random.Random(rng.random()), killed)
            await trio.sleep(kill_after)
            killed.set()
            await kill_group(served.process)
    assert "exited with" not in served.errors(), served.errors()  # no worker died before the kill
    return kill_after


# -- the checks ----------------------------------------------------------------------


async def read_all(client: httpx.AsyncClient) -> tuple[dict[str, dict[str, Any]], dict[str, list[list[Any]]]]:
    """Every ledger's ``state()`` and every auditor's ``seen()``, read concurrently."""
    states: dict[str, dict[str, Any]] = {}
    seen: dict[str, list[list[Any]]] = {}

    async def call(namespace: str, name: str, method: str, into: dict[str, Any]) -> None:
        response = await client.post(f"/_rpc/{namespace}/{name}/{method}", json={"args": []})
        assert response.status_code == 200, f"{namespace}/{name}.{method}: {response.text}"
        into[name] = response.json()["result"]

    async with trio.open_nursery() as nursery:
        for name in LEDGERS:
            nursery.start_soon(call, "Ledger", name, "state", states)
        for name in AUDITORS:
            nursery.start_soon(call, "Auditor", name, "seen", seen)
    return states, seen


class Entry(NamedTuple):
    """A row of a ledger's ``entries`` (``nth``: its turn was the nth to commit there)."""

    seq: int
    nth: int
    note: str
    alarm: bool
    event: bool


def check_ledger(name: str, state: dict[str, Any], books: Books) -> int:
    """One ledger's data is whole: acknowledged writes present, no turn half-applied,
    nothing unknown. Returns how many unacknowledged writes are there."""
    sent, acked = books.sent[name], books.acked[name]
    rows = [Entry(*row) for row in state["entries"]]  # in commit order
    nths = [row.nth for row in rows]
    assert nths == list(range(1, len(rows) + 1)), f"{name}: turns numbered {nths}: one missing or twice"
    entries = {row.seq: (row.note, row.alarm, row.event) for row in rows}
    keys = dict(state["keys"])
    unknown = set(entries) - set(sent)
    assert not unknown, f"{name}: rows no client wrote: {sorted(unknown)}"
    for seq, (note, alarm, event) in entries.items():
        write = sent[seq]
        assert (note, alarm, event) == (write.note, write.alarm_in is not None, write.event), f"{name}: row {seq} differs"
    lost = acked - set(entries)
    assert not lost, f"{name}: acknowledged writes lost: {sorted(lost)}"
    assert set(keys) == set(entries), (
        f"{name}: half-applied turns: rows without keys {sorted(set(entries) - set(keys))}, "
        f"keys without rows {sorted(set(keys) - set(entries))}"
    )
    assert all(keys[seq] == entries[seq][0] for seq in keys), f"{name}: a key differs from its row"
    assert state["count"] == len(entries), f"{name}: counter {state['count']} for {len(entries)} rows"
    armings = [row.seq for row in rows if row.alarm]
    assert state["armed"] == (armings[-1] if armings else None), f"{name}: armed {state['armed']}, rows {armings}"
    return len(set(entries) - acked)


def expected_events(states: dict[str, dict[str, Any]]) -> set[tuple[str, int]]:
    """``(ledger, seq)`` of every committed turn that sent an event."""
    return {(name, row.seq) for name, state in states.items() for row in map(Entry._make, state["entries"]) if row.event}


def check_deliveries(seen: dict[str, list[list[Any]]], expected: set[tuple[str, int]]) -> bool:
    """No auditor handled an event twice, or one whose turn did not commit; whether
    every auditor has handled every expected event."""
    complete = True
    for auditor, rows in seen.items():
        twice = [(ledger, seq, times) for ledger, seq, times in rows if times != 1]
        assert not twice, f"{auditor} handled events more than once: {twice}"
        got = {(ledger, seq) for ledger, seq, _ in rows}
        assert got <= expected, f"{auditor} handled events of uncommitted turns: {sorted(got - expected)}"
        complete = complete and got == expected
    return complete


def alarms_settled(states: dict[str, dict[str, Any]]) -> bool:
    """Whether every ledger's last armed alarm has fired (and none is pending)."""
    return all(s["fired"] == s["armed"] and s["pending_alarm"] is None for s in states.values())


async def verify(served: Served, books: Books, stats: Stats) -> None:
    """Check every ledger, then wait (bounded) until the committed alarms have fired and
    the committed events have reached every auditor once."""
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        states, seen = await read_all(client)
        committed_unacked = sum(check_ledger(name, states[name], books) for name in LEDGERS)
        stats.verified = sum(len(acked) for acked in books.acked.values())
        stats.committed_unacked = committed_unacked
        expected = expected_events(states)
        with trio.move_on_after(SETTLE_TIMEOUT) as settling:
            while True:
                complete = check_deliveries(seen, expected)
                if complete and alarms_settled(states):
                    break
                await trio.sleep(0.05)
                states, seen = await read_all(client)
                for name in LEDGERS:
                    check_ledger(name, states[name], books)
        assert not settling.cancelled_caught, unsettled(states, seen, expected)
        stats.alarms_fired = sum(s["fires"] for s in states.values())
        stats.events_delivered = sum(len(rows) for rows in seen.values())
    assert_clean(served)


def unsettled(states: dict[str, dict[str, Any]], seen: dict[str, list[list[Any]]], expected: set[tuple[str, int]]) -> str:
    """What was still missing when the settling deadline passed."""
    alarms = {n: (s["armed"], s["fired"], s["pending_alarm"]) for n, s in states.items() if s["fired"] != s["armed"] or s["pending_alarm"]}
    events = {a: sorted(expected - {(ledger, seq) for ledger, seq, _ in rows})[:10] for a, rows in seen.items()}
    return f"not settled after {SETTLE_TIMEOUT} s: alarms (armed, fired, pending) {alarms}; events missing {events}"


def integrity_errors(directory: Path) -> dict[str, list[str]]:
    """``PRAGMA integrity_check`` of every SQLite file under ``directory`` (opened with
    apsw; nothing may hold them open), by path: those not "ok"."""
    bad: dict[str, list[str]] = {}
    for path in sorted(directory.rglob("*.sqlite")):
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
        try:
            result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
        if result != ["ok"]:
            bad[str(path.relative_to(directory))] = result
    return bad


def check_files_after_kill(tmp_path: Path, run: int) -> tuple[int, int]:
    """Integrity of a copy of the data directory as the kill left it (checking the
    originals would replay their WALs before the server does). Returns what was left
    for the restart to do: alarms armed but not fired, event deliveries not handled."""
    copy = tmp_path / f"after-kill-{run}"
    shutil.copytree(tmp_path / "data", copy)
    try:
        assert not integrity_errors(copy)
        return unfinished_work(copy)
    finally:
        shutil.rmtree(copy)


def unfinished_work(data_dir: Path) -> tuple[int, int]:
    """Alarms armed and not yet fired, and event deliveries not yet handled, in the
    (copied) data directory of a stopped server, read through the storage layer."""
    pending_alarms = 0
    events: set[tuple[str, int]] = set()
    for name in LEDGERS:
        with ActorDatabase.open(data_dir, id_from_name("Ledger", name).address) as db:
            if db.kv.get("armed") != db.kv.get("fired"):
                pending_alarms += 1
            if db.kv.get("count"):  # the actor has run on_start
                events |= {(name, r["seq"]) for r in db.sql.exec("SELECT seq FROM entries WHERE event")}
    undelivered = 0
    for name in AUDITORS:
        with ActorDatabase.open(data_dir, id_from_name("Auditor", name).address) as db:
            seen = {(r["ledger"], r["seq"]) for r in db.sql.exec("SELECT ledger, seq FROM seen")}
            undelivered += len(events - seen)
    return pending_alarms, undelivered


# -- the suite -----------------------------------------------------------------------


async def kill_while_starting(tmp_path: Path, index: int, run: Run, rng: random.Random) -> float:
    """Start the server and kill it at a random moment of its start-up (returned:
    seconds after it was started), while it finishes the work the previous kill left."""
    process, _, stderr = await spawn_group(tmp_path, f"run{index}", *serve_args(tmp_path, run))
    kill_after = rng.uniform(*KILL_AT_START)
    try:
        await trio.sleep(kill_after)
    finally:
        await kill_group(process)
    err = stderr.read_text()
    assert not any(sign in err for sign in BAD_SIGNS), err
    return kill_after


def crash_seed() -> int:
    """``$DOTDO_CRASH_SEED``, or a fresh one."""
    given = os.environ.get("DOTDO_CRASH_SEED")
    return int(given) if given else random.SystemRandom().randrange(2**32)


async def wake_auditors(served: Served) -> None:
    """Activate the auditors: their subscription starts then."""
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        for name in AUDITORS:
            response = await client.post(f"/_rpc/Auditor/{name}/ready", json={})
            assert response.json() == {"result": True}, response.text


async def test_kill_9_under_load_loses_nothing(tmp_path: Path) -> None:
    seed = crash_seed()
    print(f"\ncrash suite seed {seed} (DOTDO_CRASH_SEED={seed} repeats its choices)")
    rng = random.Random(seed)
    books, stats = Books(), Stats()
    for index, run in enumerate(PLAN):
        sent, acked = stats.sent, stats.acked
        if run.kill == "load":
            async with started(tmp_path, index, run) as served:
                with trio.fail_after(PHASE_TIMEOUT):
                    await verify(served, books, stats)
                    if index == 0:
                        await wake_auditors(served)
                kill_after = await load_then_kill(served, books, stats, rng, index)
                assert_clean(served)
        else:
            kill_after = await kill_while_starting(tmp_path, index, run, rng)
        stats.kills += 1
        alarms_left, deliveries_left = check_files_after_kill(tmp_path, index)
        stats.alarms_left += alarms_left
        stats.deliveries_left += deliveries_left
        print(
            f"run {index} ({run.workers} worker(s), max-active {run.max_active or 'default'}): killed "
            f"{kill_after:.2f} s after the {run.kill} began, {stats.sent - sent} writes sent, "
            f"{stats.acked - acked} acknowledged; left on disk: {alarms_left} alarms to fire, "
            f"{deliveries_left} deliveries to make"
        )
    async with started(tmp_path, len(PLAN), FINAL) as served:
        with trio.fail_after(PHASE_TIMEOUT):
            await verify(served, books, stats)
        assert await stop(served, signal.SIGTERM) == 0
        assert served.output().endswith("dotdo stopped: every database closed\n")
        assert_clean(served)
    assert not integrity_errors(tmp_path / "data")
    kinds = Counter(path.relative_to(tmp_path / "data").parts[0] for path in (tmp_path / "data").rglob("*.sqlite"))
    assert kinds == {"Ledger": len(LEDGERS), "Auditor": len(AUDITORS), "_dotdo": 3}  # every file was checked (the alarm, subscription and actor indexes)
    assert stats.verified == stats.acked > 0 and stats.kills == len(PLAN)
    assert stats.alarms_fired > 0 and stats.events_delivered > 0
    print(stats.line(seed))
