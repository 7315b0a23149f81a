"""Generations (storage/generations.py): catching up at open what the archive missed
(history off, a hook that did not run, SIGKILL), a new generation where the archive
cannot continue, restores across generations, pruning."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dotdo.storage import archive, backup, history_log
from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import BookmarkError
from tests.storage import test_history as shared
from tests.storage.test_history import ALICE, HOUR, Clock, dump, opened

clock, db, small = shared.clock, shared.db, shared.small  # the fixtures of test_history.py


# -- catching up at open ---------------------------------------------------------------


def test_writes_with_history_off_are_caught_up_or_start_a_new_generation(tmp_path: Path, clock: Clock) -> None:
    with opened(tmp_path, clock) as db:
        db.kv.put("v", 1)
        one, first = db.history.bookmark(), dump(db)
    with opened(tmp_path, clock, history=0) as db:  # small: the WAL stays, so it is caught up
        db.kv.put("v", 2)
    with opened(tmp_path, clock, history=0) as db:  # big: the close checkpoints the WAL away
        db.kv.put("big", "x" * 800_000)
    clock.now += 5
    with opened(tmp_path, clock) as db:
        assert db.history.info().generations == 2  # the big one could not be caught up
        now = dump(db)
        assert dump(db)["_dotdo_kv"][1] == (b"v", b"\x02")
        clock.now += 1  # a restore is a commit too, stamped with its time
        db.history.restore(one)
        assert dump(db) == first
        db.history.restore(db.history.bookmark_at(clock.now - 1))
        assert dump(db) == now


def kill(db: ActorDatabase) -> None:
    """What SIGKILL leaves: the connection gone without history's close steps or a
    checkpoint (actor connections never checkpoint on close on their own)."""
    db.connection.close()
    os.close(db._lock)


def test_commits_the_hook_missed_are_caught_up_at_open(tmp_path: Path, clock: Clock) -> None:
    db = opened(tmp_path, clock)
    db.kv.put("v", 1)
    one, first = db.history.bookmark(), dump(db)
    db.connection.set_wal_hook(None)  # killed between each commit and its hook
    for i in range(3):
        db.kv.put("v", 10 + i)
        db.sql.exec("CREATE TABLE IF NOT EXISTS t(i)")
        db.sql.exec("INSERT INTO t VALUES (?)", i)
    missed = dump(db)
    kill(db)
    killed = clock.now + 5
    os.utime(f"{db.path}-wal", (killed, killed))  # the WAL's last write: the last commit
    clock.now += 60
    with opened(tmp_path, clock) as db:
        clock.now += 60
        assert dump(db) == missed
        latest = db.history.bookmark()
        assert db.history.bookmark_at(killed) == latest  # archived at open, stamped with the WAL's time
        assert db.history.bookmark_at(killed - 1) == one
        assert int(latest.split("-")[0], 16) == int(one.split("-")[0], 16) + 7  # one per commit
        assert db.history.info().generations == 1  # caught up, not a new snapshot
        db.history.restore(one)
        assert dump(db) == first
        db.history.restore(latest)
        assert dump(db) == missed


_WRITER = """
import sys
from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase
from dotdo.storage.options import StorageOptions

class Clock:
    now = 1_000_000_000.0
    def __call__(self):
        return self.now

clock = Clock()
db = ActorDatabase.open(sys.argv[1], Address("Customer", "alice"), StorageOptions(clock=clock, history=7 * 86400.0))
db.sql.exec("CREATE TABLE log(i)")
i = 0
while True:
    clock.now += 0.001  # a thousand commits a (simulated) second: copied in batches
    with db.turn():
        db.kv.put("v", i)
        db.sql.exec("INSERT INTO log VALUES (?)", i)
    print(i, repr(clock.now), flush=True)  # reported only after the commit returned
    i += 1
"""


def test_sigkill_loses_no_state_and_no_earlier_time(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    times = []
    try:
        for _ in range(300):
            i, when = child.stdout.readline().split()
            times.append(float(when))
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
        child.stdout.close()
    last = int(i)
    clock = Clock(times[-1] + 10)
    with opened(tmp_path, clock) as db:
        reached = db.kv.get("v")
        assert reached >= last  # durability is the database's; the archive follows
        final = db.history.bookmark()
        for j in range(0, last + 1, 7):
            clock.now += 1
            db.history.restore(db.history.bookmark_at(times[j]))
            got = db.kv.get("v")
            assert db.sql.exec("SELECT count(*) AS n FROM log").one()["n"] == got + 1
            if j < last - 2 * archive.FLUSH_FRAMES:
                assert got == j  # copied before the kill: to the commit
            else:
                assert got <= j  # perhaps caught up at open, stamped later
        db.history.restore(final)
        assert db.kv.get("v") == reached


# -- a new generation where the archive cannot continue --------------------------------


def test_a_wal_behind_the_archive_starts_a_new_generation(tmp_path: Path, clock: Clock) -> None:
    # What a power loss can leave under `normal`: the archive holds a commit the
    # database lost (its WAL frames never reached the disk).
    with opened(tmp_path, clock) as db:
        db.kv.put("v", 1)
        one, first = db.history.bookmark(), dump(db)
    wal = Path(f"{ALICE.path(tmp_path)}-wal")
    kept = wal.read_bytes()
    with opened(tmp_path, clock) as db:
        db.kv.put("v", 2)
        lost = db.history.bookmark()
    wal.write_bytes(kept)
    clock.now += 10
    with opened(tmp_path, clock) as db:
        assert db.kv.get("v") == 1 and db.history.info().generations == 2
        db.kv.put("v", 3)
        db.kv.put("w", 4)
        now, mark = dump(db), db.history.bookmark()
        clock.now += 1
        db.history.restore(one)
        assert dump(db) == first
        db.history.restore(mark)
        assert dump(db) == now
        db.history.restore(lost)  # the archive kept what the database lost
        assert db.kv.get("v") == 2


def test_a_replaced_database_file_starts_a_new_generation(tmp_path: Path, clock: Clock) -> None:
    with opened(tmp_path, clock) as db:
        db.kv.put("v", 1)
        mark, first = db.history.bookmark(), dump(db)
        copy = tmp_path / "copy.sqlite"
        backup.save(db.connection, copy)
        db.kv.put("v", 2)
        db.kv.put("pad", "z" * 800_000)
    os.replace(copy, ALICE.path(tmp_path))  # e.g. a lifecycle operation, while closed
    with opened(tmp_path, clock) as db:
        assert db.history.info().generations == 2
        db.kv.put("v", 3)
        now = dump(db)
        clock.now += 1
        db.history.restore(mark)
        assert dump(db) == first
        db.history.restore(db.history.bookmark_at(clock.now - 1))
        assert dump(db) == now


def test_a_recreated_actor_keeps_the_history_of_the_one_before(tmp_path: Path, clock: Clock) -> None:
    with opened(tmp_path, clock) as db:
        db.kv.put("v", "old")
        old, state = db.history.bookmark(), dump(db)
    backup.remove(ALICE.path(tmp_path))  # deleted; its archive stays
    with opened(tmp_path, clock) as db:
        assert db.kv.get("v") is None
        assert db.history.info().generations == 2
        db.history.restore(old)
        assert dump(db) == state


# -- checkpoints, generations, pruning -------------------------------------------------


def test_restore_across_checkpoints_wal_restarts_and_generations(db: ActorDatabase, clock: Clock, small: None) -> None:
    marks = []
    for i in range(120):
        with db.turn():
            db.kv.put(f"k{i % 17}", os.urandom(3000 + 97 * i).hex())  # several pages each
            if i % 10 == 0:
                db.kv.delete(f"k{(i + 5) % 17}")
        clock.now += 30
        if i % 7 == 0:
            marks.append((db.history.bookmark(), dump(db)))
    info = db.history.info()
    assert info.generations >= 3
    for mark, state in marks[::-1] + marks:
        db.history.restore(mark)
        assert dump(db) == state


def test_pruning_keeps_the_window_and_removes_the_rest(tmp_path: Path, clock: Clock, small: None) -> None:
    db = opened(tmp_path, clock, history=2 * HOUR)
    marks = []
    for i in range(150):
        db.kv.put(f"k{i % 9}", os.urandom(2500).hex())
        marks.append((clock.now, db.history.bookmark(), dump(db)))
        clock.now += 120  # 150 commits over 5 hours, a generation every ~40 minutes
    assert db.history.info().generations >= 3
    horizon = clock.now - 2 * HOUR
    info = db.history.info()
    assert info.earliest == horizon
    # Every state current at some moment of the window restores; older ones are refused
    # (pruned, or kept only as the base of what is inside).
    for i, (when, mark, state) in enumerate(marks):
        ended = marks[i + 1][0] if i + 1 < len(marks) else clock.now
        if ended > horizon:
            db.history.restore(mark)
            assert dump(db) == state
        else:
            with pytest.raises(BookmarkError):
                db.history.restore(mark)
    with pytest.raises(BookmarkError, match="retention window"):
        db.history.bookmark_at(horizon - 1)
    db.history.restore(db.history.bookmark_at(horizon))
    assert dump(db) == max((m for m in marks if m[0] <= horizon), key=lambda m: m[0])[2]
    names = os.listdir(history_log.history_dir(db.path))
    numbers = {int(name[1:9], 16) for name in names}
    assert len(numbers) == db.history.info().generations and min(numbers) > 2  # the first ones are gone
    assert all(name.endswith((".log", ".base")) for name in names)
    db.close()
