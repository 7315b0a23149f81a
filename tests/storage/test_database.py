from pathlib import Path

import apsw
import pytest

from dotdo.storage import schema
from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import StorageFull, TransactionError
from dotdo.storage.options import StorageOptions

ALICE = Address("Customer", "alice")


def test_turn_commits_at_output_points_and_rolls_back_the_rest(db: ActorDatabase) -> None:
    with pytest.raises(RuntimeError):
        with db.turn():
            db.kv.put("a", 1)
            db.commit()  # an output point: "a" is durable
            db.kv.put("b", 2)
            assert db.has_uncommitted
            raise RuntimeError("boom")
    assert db.kv.get(["a", "b"]) == {"a": 1}
    assert not db.in_turn


def test_reading_turn_opens_no_transaction(db: ActorDatabase) -> None:
    db.kv.put("a", 1)
    with db.turn():
        assert db.kv.get("a") == 1
        db.kv.list()
        assert not db.has_uncommitted


def test_writes_outside_a_turn_commit_on_their_own(db: ActorDatabase) -> None:
    db.kv.put("a", 1)
    assert not db.has_uncommitted


def test_nested_turns_share_the_segment(db: ActorDatabase) -> None:
    db.begin_turn()
    db.kv.put("outer", 1)
    db.commit()
    with db.turn():  # a reentrant turn
        db.kv.put("inner", 2)
    assert db.in_turn
    db.kv.put("late", 3)
    db.rollback()
    db.end_turn()
    assert db.kv.list() == {"inner": 2, "outer": 1}
    with pytest.raises(TransactionError):
        db.end_turn()


def test_savepoint_rolls_back_only_its_block(db: ActorDatabase) -> None:
    with db.turn():
        db.kv.put("before", 1)
        with pytest.raises(ValueError):
            with db.transaction():
                db.kv.put("inside", 2)
                raise ValueError
        with db.transaction():
            db.kv.put("kept", 3)
            with pytest.raises(KeyError):
                with db.transaction():
                    db.kv.put("nested", 4)
                    raise KeyError
    assert db.kv.list() == {"before": 1, "kept": 3}


def test_savepoint_inside_a_turn_does_not_commit_early(db: ActorDatabase) -> None:
    with pytest.raises(RuntimeError):
        with db.turn():
            with db.transaction():
                db.kv.put("a", 1)
            raise RuntimeError  # the whole segment rolls back, block included
    assert db.kv.get("a") is None


def test_transaction_outside_a_turn_commits_when_it_ends(db: ActorDatabase) -> None:
    with db.transaction():
        db.kv.put("a", 1)
        db.kv.put("b", 2)
    assert not db.has_uncommitted
    with pytest.raises(ZeroDivisionError):
        with db.transaction():
            db.kv.put("c", 3)
            1 / 0
    assert db.kv.list() == {"a": 1, "b": 2}


def test_a_turn_cannot_begin_inside_a_transaction_block(db: ActorDatabase) -> None:
    with db.transaction():
        with pytest.raises(TransactionError, match="cannot begin a turn"):
            db.begin_turn()
    assert not db.in_turn


def test_output_point_inside_transaction_block_is_refused(db: ActorDatabase) -> None:
    with db.turn():
        with pytest.raises(TransactionError, match="inside storage.transaction"):
            with db.transaction():
                db.kv.put("a", 1)
                db.commit()
    assert db.kv.get("a") is None


def test_cancellation_like_exceptions_roll_back(db: ActorDatabase) -> None:
    class Cancelled(BaseException):
        pass

    with pytest.raises(Cancelled):
        with db.turn():
            db.kv.put("a", 1)
            raise Cancelled
    assert db.kv.get("a") is None


def test_state_survives_close_and_reopen(tmp_path: Path) -> None:
    with ActorDatabase.open(tmp_path, ALICE) as db:
        db.kv.put("k", {"v": [1, 2]})
        db.sql.exec("CREATE TABLE t(x); INSERT INTO t VALUES (7)")
    with ActorDatabase.open(tmp_path, ALICE) as db:
        assert db.kv.get("k") == {"v": [1, 2]}
        assert db.sql.exec("SELECT x FROM t").one() == {"x": 7}


def test_close_keeps_a_small_wal_and_checkpoints_a_large_one(tmp_path: Path) -> None:
    options = StorageOptions(wal_keep_kib=64)
    wal = Path(f"{ALICE.path(tmp_path)}-wal")
    with ActorDatabase.open(tmp_path, ALICE, options) as db:
        db.kv.put("small", "x")
    assert 0 < wal.stat().st_size <= 64 * 1024  # kept: no checkpoint, no fsync
    with ActorDatabase.open(tmp_path, ALICE, options) as db:
        assert db.kv.get("small") == "x"  # replayed from the WAL
        for i in range(40):
            db.kv.put(f"big{i}", "y" * 4000)
    assert not wal.exists()  # past the limit: checkpointed into the database and removed
    with ActorDatabase.open(tmp_path, ALICE, options) as db:
        assert db.kv.get("small") == "x" and db.kv.get("big39") == "y" * 4000


def test_close_discards_an_unfinished_turn_and_is_idempotent(tmp_path: Path) -> None:
    db = ActorDatabase.open(tmp_path, ALICE)
    db.begin_turn()
    db.kv.put("k", 1)
    db.close()
    db.close()
    assert db.closed
    with ActorDatabase.open(tmp_path, ALICE) as again:
        assert again.kv.get("k") is None


def test_stats_report_sizes_and_pages(db: ActorDatabase) -> None:
    before = db.stats()
    db.kv.put("big", b"x" * 200_000)
    after = db.stats()
    assert after.page_count > before.page_count
    assert after.size_bytes >= after.page_size * 2
    assert after.page_size == 4096
    assert after.schema_version == schema.LATEST_VERSION
    assert db.sql.database_size == after.page_count * after.page_size


def test_vectors_load_lazily_and_only_into_this_connection(db: ActorDatabase) -> None:
    with pytest.raises(apsw.SQLError):
        db.connection.execute("SELECT vec_version()").fetchall()
    db.load_vectors()
    db.load_vectors()
    assert db.connection.execute("SELECT vec_version()").fetchall()[0][0].startswith("v")


# -- a full disk -------------------------------------------------------------------------


def test_a_full_database_raises_storage_full_and_keeps_what_was_committed(tmp_path: Path) -> None:
    db = ActorDatabase.open(tmp_path, ALICE)
    db.kv.put("kept", 1)
    db.commit()
    # SQLite's page cap stands in for the disk: the same SQLITE_FULL a full disk gives.
    pages = db.connection.pragma("page_count")
    db.connection.pragma("max_page_count", pages + 2)
    db.begin_turn()
    with pytest.raises(StorageFull, match="disk is full"):
        db.kv.put("big", b"x" * 100_000)
        db.commit()
    db.rollback()
    db.end_turn()
    assert db.kv.get("kept") == 1 and db.kv.get("big") is None
    assert db.connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.close()
