"""The archive's files (storage/history_log.py): a torn log tail, with its commits
still in the WAL or not, and a damaged log header."""

import os
from pathlib import Path

import pytest

from dotdo.storage import history_log
from dotdo.storage.errors import BookmarkError, StorageError
from tests.storage import test_history as shared
from tests.storage.test_history import Clock, dump, opened

clock = shared.clock  # the fixture of test_history.py


def test_a_torn_archive_tail_is_ignored(tmp_path: Path, clock: Clock) -> None:
    with opened(tmp_path, clock) as db:
        marks = []
        for i in range(5):
            db.kv.put("v", "x" * 100 * i)
            marks.append((db.history.bookmark(), dump(db)))
        [log] = [p for p in history_log.history_dir(db.path).iterdir() if p.suffix == ".log"]
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
        [log] = [p for p in history_log.history_dir(db.path).iterdir() if p.suffix == ".log"]
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
        [log] = [p for p in history_log.history_dir(db.path).iterdir() if p.suffix == ".log"]
    with open(log, "r+b") as f:
        f.seek(12)
        f.write(b"\xff\xff")  # inside the header: its crc no longer matches
    with opened(tmp_path, clock) as db:
        assert db.kv.get("v") == 1
        assert "damaged header" in (db.history.info().error or "")
        db.kv.put("v", 2)
        mark, state = db.history.bookmark(), dump(db)  # a new generation, after the old
        assert db.history.info().error is None
        logs = sorted(p.name for p in history_log.history_dir(db.path).iterdir() if p.suffix == ".log")
        assert [name[:9] for name in logs] == ["g00000001", "g00000002"]
        assert int(mark.split("-")[0], 16) >= 1 << 32
        with pytest.raises((StorageError, BookmarkError)):
            db.history.restore(old)
        db.kv.put("v", 3)
        db.history.restore(mark)
        assert dump(db) == state
