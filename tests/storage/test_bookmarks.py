"""Bookmarks (storage/bookmarks.py): the state at a time, bookmarks refused (another
actor's, malformed, unknown, out of the window), states rebuilt larger and smaller."""

import os
from pathlib import Path

import apsw
import pytest

from dotdo.storage import history_log
from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import BookmarkError
from dotdo.storage.options import StorageOptions
from tests.storage import test_history as shared
from tests.storage.test_history import HOUR, Clock, dump

clock, db = shared.clock, shared.db  # the fixtures of test_history.py


def archive(db: ActorDatabase) -> set[str]:
    return set(os.listdir(history_log.history_dir(db.path)))


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
