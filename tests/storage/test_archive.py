"""Archiving from the WAL (storage/archive.py): commits the hook has not heard of, a
checkpoint history did not make, checkpoints through history, durability full."""

import os
from pathlib import Path

import apsw

from dotdo.storage import backup
from dotdo.storage.database import ActorDatabase
from dotdo.storage.options import Durability
from tests.storage import test_history as shared
from tests.storage.test_history import Clock, dump, opened

clock, db, small = shared.clock, shared.db, shared.small  # the fixtures of test_history.py


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


def test_durability_full_archives_the_same(tmp_path: Path, clock: Clock, small: None) -> None:
    with opened(tmp_path, clock, durability=Durability.FULL) as db:
        db.kv.put("v", 1)
        mark, first = db.history.bookmark(), dump(db)
        for i in range(30):
            db.kv.put(f"k{i}", "w" * 5000)
    with opened(tmp_path, clock, durability=Durability.FULL) as db:
        db.history.restore(mark)
        assert dump(db) == first
