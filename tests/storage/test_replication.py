"""Replicating one database commit by commit (dotdo.storage.replication): the page sets
read from the WAL after each commit, applied to a replica's copy, give the primary's
state after every commit, through checkpoints, WAL restarts, growth and shrinking, and
through a crash between the replica's log and its copy."""

from __future__ import annotations

import random
from pathlib import Path

import apsw
import pytest

from dotdo.storage.errors import StorageError
from dotdo.storage.replication import Commit, CommitReader, ReplicaCopy, ReplicaGap


def primary(path: Path, sink: list[bytes]) -> apsw.Connection:
    """A WAL database whose every commit is read into ``sink`` (as the runtime does)."""
    conn = apsw.Connection(str(path))
    for _ in conn.execute("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0"):
        pass
    reader = CommitReader(f"{path}-wal")

    def hook(_conn: apsw.Connection, name: str, frames: int) -> int:
        sink.append(reader.read(frames).encode())
        return apsw.SQLITE_OK

    conn.set_wal_hook(hook)
    return conn


def dump(path: Path) -> list[tuple[object, ...]]:
    conn = apsw.Connection(f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")]
        return [(t, *row) for t in tables for row in conn.execute(f"SELECT * FROM {t} ORDER BY rowid")]
    finally:
        conn.close()


def live_dump(conn: apsw.Connection) -> list[tuple[object, ...]]:
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")]
    return [(t, *row) for t in tables for row in conn.execute(f"SELECT * FROM {t} ORDER BY rowid")]


def test_a_replica_follows_every_commit_through_checkpoints_restarts_growth_and_vacuum(tmp_path: Path) -> None:
    rng = random.Random(7)
    shipped: list[bytes] = []
    conn = primary(tmp_path / "p.sqlite", shipped)
    copy = ReplicaCopy.open(tmp_path / "r" / "copy.sqlite")
    conn.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB)")
    commits = 0
    for step in range(120):
        roll = rng.random()
        with conn:
            if roll < 0.5:
                conn.execute("INSERT INTO t(v) VALUES (?)", (rng.randbytes(rng.choice([10, 3000, 20000])),))
            elif roll < 0.7:
                conn.execute("UPDATE t SET v = ? WHERE k % 3 = ?", (rng.randbytes(100), step % 3))
            else:
                conn.execute("DELETE FROM t WHERE k % 5 = ?", (step % 5,))
        if step % 17 == 0:
            conn.wal_checkpoint(mode=rng.choice([apsw.SQLITE_CHECKPOINT_PASSIVE, apsw.SQLITE_CHECKPOINT_RESTART, apsw.SQLITE_CHECKPOINT_TRUNCATE]))
        if step == 60:
            conn.execute("VACUUM")  # the file shrinks: the copy is truncated with it
        for data in shipped:
            assert copy.apply(data)
        commits += len(shipped)
        shipped.clear()
        if step % 10 == 0:
            copy.settle()
            assert dump(copy.path) == live_dump(conn)
    copy.settle()
    assert dump(copy.path) == live_dump(conn)
    assert copy.position == commits > 100  # every commit, the CREATE too (a change of no row commits nothing)
    conn.close()


def test_a_crash_between_the_log_and_the_copy_loses_nothing_held(tmp_path: Path) -> None:
    shipped: list[bytes] = []
    conn = primary(tmp_path / "p.sqlite", shipped)
    conn.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)")
    for i in range(5):
        conn.execute("INSERT INTO t(v) VALUES (?)", (f"row {i}",))
    copy = ReplicaCopy.open(tmp_path / "copy.sqlite")
    for data in shipped[:-1]:
        copy.apply(data)

    class Crash(Exception):
        pass

    def crash() -> None:
        raise Crash

    with pytest.raises(Crash):
        copy.apply(shipped[-1], fault=crash)  # held in the log, not yet in the copy
    again = ReplicaCopy.open(copy.path)
    assert again.position == len(shipped) and again.unsettled == 0
    assert dump(again.path) == live_dump(conn)
    # A torn record at the log's end (a crash mid-append) is a commit never acknowledged.
    conn.execute("INSERT INTO t(v) VALUES ('more')")
    with open(again.log, "ab") as log:
        log.write(b"\x00\x00\x10\x00garbage")
    assert ReplicaCopy.open(copy.path).position == len(shipped) - 1
    conn.close()


def test_repeats_are_ignored_gaps_and_damage_refused(tmp_path: Path) -> None:
    shipped: list[bytes] = []
    conn = primary(tmp_path / "p.sqlite", shipped)
    conn.execute("CREATE TABLE t(v)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.execute("INSERT INTO t VALUES (2)")
    copy = ReplicaCopy.open(tmp_path / "copy.sqlite")
    assert copy.apply(shipped[0]) and not copy.apply(shipped[0])  # a repeat changes nothing
    with pytest.raises(ReplicaGap, match="commit 3 arrived at a replica holding 1"):
        copy.apply(shipped[2])
    damaged = bytearray(shipped[1])
    damaged[40] ^= 0xFF
    with pytest.raises(StorageError, match="damaged"):
        copy.apply(bytes(damaged))
    assert copy.apply(shipped[1]) and copy.apply(shipped[2]) and copy.position == 3
    commit = Commit.decode(shipped[2])
    assert commit.seq == 3 and commit.page_size == 4096 and set(commit.pages) <= set(range(1, commit.db_pages + 1))
    conn.close()


@pytest.mark.parametrize("history", [0.0, 3600.0])
def test_an_actor_database_ships_every_commit_with_or_without_history(tmp_path: Path, history: float) -> None:
    from dotdo.storage.address import Address
    from dotdo.storage.database import ActorDatabase
    from dotdo.storage.options import StorageOptions

    db = ActorDatabase.open(tmp_path / "data", Address("Acct", "a"), StorageOptions(history=history))
    shipped: list[bytes] = []
    db.replicate(shipped.append)
    copy = ReplicaCopy.open(tmp_path / "replica" / "a.sqlite")
    rng = random.Random(3)
    for i in range(1500):  # past the auto-checkpoint (1,000 frames) several times
        db.begin_turn()
        db.kv.put(f"k{i % 200}", rng.randbytes(rng.choice([8, 900, 5000])))
        if i % 7 == 0:
            db.sql.exec("CREATE TABLE IF NOT EXISTS t(v)")
            db.sql.exec("INSERT INTO t VALUES (?)", i)
        db.commit()
        db.end_turn()
        for data in shipped:
            assert copy.apply(data)
        shipped.clear()
    copy.settle()
    expected = {k: v for k, v in db.kv.list().items()}
    rows = [r["v"] for r in db.sql.exec("SELECT v FROM t ORDER BY rowid").fetchall()]
    wal = Path(f"{db.path}-wal").stat().st_size
    db.close()
    assert wal < 1200 * 4096 * 2  # the hook kept checkpointing: the WAL stayed bounded
    # Promoting the replica is opening its copy as the actor's database.
    promoted_dir = tmp_path / "promoted"
    target = Address("Acct", "a").path(promoted_dir)
    target.parent.mkdir(parents=True)
    copy.path.replace(target)
    promoted = ActorDatabase.open(promoted_dir, Address("Acct", "a"), StorageOptions())
    try:
        assert promoted.kv.list() == expected
        assert [r["v"] for r in promoted.sql.exec("SELECT v FROM t ORDER BY rowid").fetchall()] == rows
        assert promoted.connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        promoted.close()
