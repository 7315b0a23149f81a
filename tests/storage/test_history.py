"""Point-in-time history: bookmarks, restore and undo, the archive's crash safety,
generations and pruning (storage/history.py)."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from storage import ActorDatabase, Address, BookmarkError, StorageError, StorageOptions, TransactionError, backup, history
from storage.options import Durability

ALICE = Address("Customer", "alice")
HOUR = 3600.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generations and checkpoints after a few hundred KiB instead of MiB, to stay fast."""
    monkeypatch.setattr(history, "MIN_LOG_BYTES", 128 * 1024)
    monkeypatch.setattr(history, "CHECKPOINT_PAGES", 40)


def opened(tmp_path: Path, clock: Clock, **options: Any) -> ActorDatabase:
    options.setdefault("history", 7 * 86400.0)  # off by default
    return ActorDatabase.open(tmp_path, ALICE, StorageOptions(clock=clock, **options))


@pytest.fixture
def db(tmp_path: Path, clock: Clock) -> Iterator[ActorDatabase]:
    database = opened(tmp_path, clock)
    yield database
    database.close()


def dump(db: ActorDatabase) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, the engine's included."""
    conn = db.connection
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")]
    return {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}


def archive(db: ActorDatabase) -> set[str]:
    return set(os.listdir(history.history_dir(db.path)))


# -- bookmark, restore, undo ---------------------------------------------------------


def test_restore_and_undo_round_trip_kv_and_user_tables(db: ActorDatabase) -> None:
    db.kv.put({"a": 1, "b": [1, 2]})
    db.sql.exec("CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT)")
    db.sql.exec("INSERT INTO orders(item) VALUES ('apple'), ('pear')")
    mark = db.history.bookmark()
    before = dump(db)

    db.kv.put("a", 2)
    db.kv.delete("b")
    db.sql.exec("DELETE FROM orders WHERE item = 'apple'")
    db.sql.exec("CREATE TABLE later(x)")
    changed = dump(db)
    assert changed != before

    undo = db.history.restore(mark)
    assert dump(db) == before
    assert db.kv.get("a") == 1 and db.kv.get("b") == [1, 2]
    assert [r["item"] for r in db.sql.exec("SELECT item FROM orders ORDER BY id")] == ["apple", "pear"]

    db.history.restore(undo)
    assert dump(db) == changed
    db.kv.put("c", 3)  # the database keeps working after a restore
    assert db.connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_bookmarks_and_restore_survive_reopening(tmp_path: Path, clock: Clock) -> None:
    with opened(tmp_path, clock) as db:
        db.kv.put("v", 1)
        mark = db.history.bookmark()
        first = dump(db)
        db.kv.put("v", 2)
    with opened(tmp_path, clock) as db:
        assert db.history.bookmark() != mark
        db.history.restore(mark)
        assert dump(db) == first


def test_bookmark_inside_a_transaction_is_refused(db: ActorDatabase) -> None:
    mark = db.history.bookmark()
    with db.turn():
        db.kv.put("a", 1)
        with pytest.raises(TransactionError):
            db.history.bookmark()
        with pytest.raises(TransactionError):
            db.history.restore(mark)
    assert db.kv.get("a") == 1


def test_bookmark_at_follows_a_fake_clock_over_hours(db: ActorDatabase, clock: Clock) -> None:
    start = clock.now
    states = []
    for hour in range(6):
        db.kv.put("hour", hour)
        db.sql.exec("CREATE TABLE IF NOT EXISTS log(h)")
        db.sql.exec("INSERT INTO log VALUES (?)", hour)
        states.append(dump(db))
        clock.now += HOUR
    clock.now -= HOUR / 2  # half an hour after the last write

    for hour in range(6):
        for offset in (0.0, 10.0, HOUR / 2 - 1):  # at, just after, long after the write
            mark = db.history.bookmark_at(start + hour * HOUR + offset)
            db.history.restore(mark)
            assert dump(db) == states[hour], (hour, offset)
    assert db.history.bookmark_at(clock.now) == db.history.bookmark()
    info = db.history.info()
    assert info.latest == clock.now and info.earliest == start and info.generations == 1


def test_foreign_malformed_and_out_of_window_bookmarks_change_nothing(tmp_path: Path, db: ActorDatabase, clock: Clock) -> None:
    db.kv.put("a", 1)
    other = ActorDatabase.open(tmp_path, Address("Customer", "bob"), StorageOptions(clock=clock, history=7 * 86400.0))
    foreign = other.history.bookmark()
    other.close()
    current = db.history.bookmark()
    before, files = dump(db), archive(db)
    seq, check = current.split("-")
    bad = [
        foreign,
        "",
        "nonsense",
        current.upper(),
        f"{seq}-{check}x",
        f"{int(seq, 16) + 1:016x}-{check}",  # not archived (yet)
        f"{int(seq, 16) + (1 << 40):016x}-{check}",
        None,
        123,
    ]
    for bookmark in bad:
        with pytest.raises(BookmarkError):
            db.history.restore(bookmark)  # type: ignore[arg-type]
    for when in (clock.now + 1, clock.now - 7 * 86400.0 - 1, float("nan"), "now", True):
        with pytest.raises(BookmarkError):
            db.history.bookmark_at(when)  # type: ignore[arg-type]
    assert dump(db) == before and archive(db) == files and db.history.bookmark() == current
    assert "another actor" in str(pytest.raises(BookmarkError, db.history.restore, foreign).value)


def test_time_before_the_first_commit_is_refused(db: ActorDatabase, clock: Clock) -> None:
    with pytest.raises(BookmarkError, match="nothing is archived"):
        db.history.bookmark_at(clock.now - 1)


# -- history off ----------------------------------------------------------------------


def test_history_off_archives_nothing_and_says_so(tmp_path: Path, clock: Clock) -> None:
    with opened(tmp_path, clock, history=0) as db:
        db.kv.put("a", 1)
        for call in (db.history.bookmark, lambda: db.history.bookmark_at(clock.now), lambda: db.history.restore("x")):
            with pytest.raises(BookmarkError, match="history is off"):
                call()
        db.history.capture()  # nothing to do
        assert db.history.info().retention == 0 and db.history.info().generations == 0
        assert not history.history_dir(db.path).exists()
    assert not history.history_dir(ALICE.path(tmp_path)).exists()


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


# -- crashes and the archive's own damage ---------------------------------------------


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
from storage import ActorDatabase, Address, StorageOptions

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
            if j < last - 2 * history.FLUSH_FRAMES:
                assert got == j  # copied before the kill: to the commit
            else:
                assert got <= j  # perhaps caught up at open, stamped later
        db.history.restore(final)
        assert db.kv.get("v") == reached


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


def test_a_torn_archive_tail_is_ignored(tmp_path: Path, clock: Clock) -> None:
    with opened(tmp_path, clock) as db:
        marks = []
        for i in range(5):
            db.kv.put("v", "x" * 100 * i)
            marks.append((db.history.bookmark(), dump(db)))
        [log] = [p for p in history.history_dir(db.path).iterdir() if p.suffix == ".log"]
    os.truncate(log, log.stat().st_size - 1000)  # cut the last record in its middle
    with opened(tmp_path, clock) as db:
        for mark, state in marks:  # the torn commit is still in the WAL: caught up again
            db.history.restore(mark)
            assert dump(db) == state
    with opened(tmp_path, clock) as db:
        db.kv.put("after", 1)  # appended after the cut, readable
        assert db.history.info().error is None
        db.history.restore(marks[1][0])
        assert dump(db) == marks[1][1]


def test_a_torn_tail_whose_frames_left_the_wal_starts_a_new_generation(tmp_path: Path, clock: Clock) -> None:
    with opened(tmp_path, clock) as db:
        db.kv.put("v", 1)
        early = db.history.bookmark(), dump(db)
        db.kv.put("big", "y" * 800_000)  # the close checkpoints the WAL away
        last = db.history.bookmark()
        [log] = [p for p in history.history_dir(db.path).iterdir() if p.suffix == ".log"]
    size = log.stat().st_size
    with open(log, "rb") as f:  # cut the big commit (and the close's mark) off
        data = f.read()
    os.truncate(log, data.rindex(b"y" * 1000) - 5000)
    assert log.stat().st_size < size
    with opened(tmp_path, clock) as db:
        current = dump(db)
        assert db.history.info().generations == 2  # the archive could not prove continuity
        with pytest.raises(BookmarkError):
            db.history.restore(last)  # lost with the tail: refused, not another state
        clock.now += 1
        db.history.restore(early[0])
        assert dump(db) == early[1]
        db.history.restore(db.history.bookmark_at(clock.now - 1))
        assert dump(db) == current


def test_a_damaged_archive_does_not_block_the_actor_and_is_not_reused(tmp_path: Path, clock: Clock) -> None:
    with opened(tmp_path, clock) as db:
        db.kv.put("v", 1)
        old = db.history.bookmark()
        [log] = [p for p in history.history_dir(db.path).iterdir() if p.suffix == ".log"]
    with open(log, "r+b") as f:
        f.seek(12)
        f.write(b"\xff\xff")  # inside the header: its crc no longer matches
    with opened(tmp_path, clock) as db:
        assert db.kv.get("v") == 1
        assert "damaged header" in (db.history.info().error or "")
        db.kv.put("v", 2)
        mark, state = db.history.bookmark(), dump(db)  # a new generation, after the old
        assert db.history.info().error is None
        logs = sorted(p.name for p in history.history_dir(db.path).iterdir() if p.suffix == ".log")
        assert [name[:9] for name in logs] == ["g00000001", "g00000002"]
        assert int(mark.split("-")[0], 16) >= 1 << 32
        with pytest.raises((StorageError, BookmarkError)):
            db.history.restore(old)
        db.kv.put("v", 3)
        db.history.restore(mark)
        assert dump(db) == state


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


def test_a_failed_integrity_check_leaves_the_database_unchanged(db: ActorDatabase, small: None) -> None:
    for i in range(40):
        db.kv.put(f"k{i}", "v" * 4000)
    assert db.history.info().generations >= 2
    [base] = sorted(p for p in history.history_dir(db.path).iterdir() if p.suffix == ".base")[-1:]
    gen = base.name[1:9]
    [log] = [p for p in history.history_dir(db.path).iterdir() if p.name.startswith(f"g{gen}-")]
    base_seq = int(log.name.split("-")[1], 16)
    damaged = bytearray(base.read_bytes())
    page = len(damaged) // 4096 - 1
    damaged[page * 4096 : page * 4096 + 100] = b"\xff" * 100  # a b-tree page's header
    base.write_bytes(bytes(damaged))
    db.kv.put("after", 1)
    before, mark = dump(db), db.history.bookmark()
    with pytest.raises(StorageError, match="damaged|cannot be read"):
        db.history.restore(f"{base_seq:016x}-{mark.split('-')[1]}")
    assert dump(db) == before and db.history.bookmark() == mark


def test_a_load_into_the_live_connection_is_archived_before_a_bookmark(db: ActorDatabase, tmp_path: Path) -> None:
    db.kv.put("v", 1)
    copy = tmp_path / "copy.sqlite"
    backup.save(db.connection, copy)
    db.kv.put("v", 2)
    backup.load(db, copy)  # as a checkout does: no statement ran since, so no hook yet
    mark, loaded = db.history.bookmark(), dump(db)
    db.kv.put("v", 3)
    db.history.restore(mark)
    assert dump(db) == loaded and db.kv.get("v") == 1


def test_a_checkpoint_history_did_not_make_starts_a_new_generation(db: ActorDatabase, tmp_path: Path) -> None:
    db.kv.put("v", 1)
    copy = tmp_path / "copy.sqlite"
    backup.save(db.connection, copy)
    db.kv.put("v", 2)
    db.kv.put({f"pad{i}": "p" * 3000 for i in range(30)})
    backup.load(db, copy)  # not archived yet...
    db.connection.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)  # ...and gone from the WAL
    db.kv.put("v", 5)
    assert db.history.info().error is not None  # the hook saw the gap
    mark, now = db.history.bookmark(), dump(db)  # recovers with a snapshot
    assert db.history.info().generations == 2 and db.history.info().error is None
    db.kv.put("v", 6)
    db.history.restore(mark)
    assert dump(db) == now


def test_checkpoints_through_history_keep_the_generation(db: ActorDatabase, tmp_path: Path, clock: Clock) -> None:
    db.kv.put("v", 1)
    db.history.checkpoint()
    assert os.path.getsize(f"{db.path}-wal") == 0
    db.kv.put("v", 2)
    mark, state = db.history.bookmark(), dump(db)
    db.kv.put("big", "b" * 800_000)
    db.close()  # checkpoints the big WAL away
    assert not os.path.exists(f"{db.path}-wal")
    with opened(tmp_path, clock) as db:
        assert db.history.info().generations == 1 and db.history.info().error is None
        db.history.restore(mark)
        assert dump(db) == state


def test_restore_to_a_larger_and_a_smaller_file(db: ActorDatabase) -> None:
    for batch in range(2):
        db.kv.put({f"k{batch}-{i}": "x" * 2000 for i in range(100)})
    big = db.history.bookmark(), dump(db), db.connection.pragma("page_count")
    for batch in range(2):
        db.kv.delete([f"k{batch}-{i}" for i in range(100)])
    conn = db.connection
    conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 1)  # VACUUM attaches its new file
    conn.execute("VACUUM")
    conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 0)
    small = db.history.bookmark(), dump(db), db.connection.pragma("page_count")
    assert small[2] < big[2] // 10
    for mark, state, pages in (big, small, big, small):
        db.history.restore(mark)
        assert dump(db) == state and db.connection.pragma("page_count") == pages
        assert db.connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


# -- checkpoints, generations, pruning ------------------------------------------------


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
    names = os.listdir(history.history_dir(db.path))
    numbers = {int(name[1:9], 16) for name in names}
    assert len(numbers) == db.history.info().generations and min(numbers) > 2  # the first ones are gone
    assert all(name.endswith((".log", ".base")) for name in names)
    db.close()


def test_durability_full_archives_the_same(tmp_path: Path, clock: Clock, small: None) -> None:
    with opened(tmp_path, clock, durability=Durability.FULL) as db:
        db.kv.put("v", 1)
        mark, first = db.history.bookmark(), dump(db)
        for i in range(30):
            db.kv.put(f"k{i}", "w" * 5000)
    with opened(tmp_path, clock, durability=Durability.FULL) as db:
        db.history.restore(mark)
        assert dump(db) == first


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


def test_info_reports_size_and_generations(db: ActorDatabase, clock: Clock) -> None:
    db.kv.put("a", "b" * 10_000)
    info = db.history.info()
    assert info.retention == 7 * 86400.0 and info.generations == 1 and info.error is None
    on_disk = sum(p.stat().st_size for p in history.history_dir(db.path).iterdir())
    assert info.disk_bytes == on_disk > 10_000
