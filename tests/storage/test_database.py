import os
import subprocess
import sys
from pathlib import Path

import apsw
import pytest

from storage import (
    ActorDatabase,
    Address,
    DatabaseLocked,
    Durability,
    StorageError,
    StorageOptions,
    TransactionError,
)
from storage import schema
from storage.errors import StorageFull, StorageReadOnly

ALICE = Address("Customer", "alice")


def test_new_database_is_wal_and_records_its_address(tmp_path: Path) -> None:
    with ActorDatabase.open(tmp_path, ALICE) as db:
        conn = db.connection
        assert conn.pragma("journal_mode") == "wal"
        assert conn.pragma("user_version") == schema.LATEST_VERSION
        assert db.stored_address() == ALICE
        assert repr(db) == "<ActorDatabase Customer/alice>"


def test_a_new_database_holds_no_more_memory_than_a_reopened_one(tmp_path: Path) -> None:
    def per_database(open_all: object) -> float:
        before = apsw.status(apsw.SQLITE_STATUS_MEMORY_USED)[0]
        dbs = open_all()  # type: ignore[operator]
        used = (apsw.status(apsw.SQLITE_STATUS_MEMORY_USED)[0] - before) / len(dbs)
        for db in dbs:
            db.close()
        return used

    addresses = [Address("Counter", f"{i + 1:064x}") for i in range(20)]
    created = per_database(lambda: [ActorDatabase.open(tmp_path, a) for a in addresses])
    reopened = per_database(lambda: [ActorDatabase.open(tmp_path, a) for a in addresses])
    assert created < reopened * 1.25  # building the schema left nothing behind


def test_a_creation_cut_short_before_its_schema_is_completed_on_open(tmp_path: Path) -> None:
    # What a power loss can leave of a new database under `normal`: the switch to WAL
    # reached the file, the schema (written without fsyncs) did not.
    path = ALICE.path(tmp_path)
    path.parent.mkdir(parents=True)
    conn = apsw.Connection(str(path))
    assert conn.pragma("journal_mode", "wal") == "wal"
    conn.close()
    with ActorDatabase.open(tmp_path, ALICE) as db:
        assert db.connection.pragma("user_version") == schema.LATEST_VERSION
        assert db.stored_address() == ALICE


@pytest.mark.parametrize(("durability", "level"), [(Durability.NORMAL, 1), (Durability.FULL, 2)])
def test_durability_sets_synchronous(tmp_path: Path, durability: Durability, level: int) -> None:
    with ActorDatabase.open(tmp_path, ALICE, StorageOptions(durability=durability)) as db:
        assert db.connection.pragma("synchronous") == level


def test_a_second_activation_is_refused_in_process(tmp_path: Path) -> None:
    with ActorDatabase.open(tmp_path, ALICE):
        with pytest.raises(DatabaseLocked, match="another activation"):
            ActorDatabase.open(tmp_path, ALICE)
    # Released on close.
    ActorDatabase.open(tmp_path, ALICE).close()


def test_a_second_activation_is_refused_from_another_process(tmp_path: Path) -> None:
    code = (
        "import sys; from storage import ActorDatabase, Address, DatabaseLocked\n"
        "try:\n"
        f"    ActorDatabase.open({str(tmp_path)!r}, Address('Customer', 'alice'))\n"
        "except DatabaseLocked:\n"
        "    sys.exit(3)\n"
    )
    with ActorDatabase.open(tmp_path, ALICE):
        done = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), timeout=30)
    assert done.returncode == 3


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


def test_a_lock_holder_killed_mid_turn_leaves_the_database_openable(tmp_path: Path) -> None:
    code = (
        "import os, signal; from storage import ActorDatabase, Address\n"
        f"db = ActorDatabase.open({str(tmp_path)!r}, Address('Customer', 'alice'))\n"
        "db.kv.put('kept', 1); db.begin_turn(); db.kv.put('lost', 2)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), timeout=30)
    assert done.returncode == -9
    with ActorDatabase.open(tmp_path, ALICE) as db:  # the lock died with its process
        assert db.kv.get("kept") == 1 and db.kv.get("lost") is None


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


def test_migrations_bring_an_old_database_up_to_date(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ActorDatabase.open(tmp_path, ALICE) as db:
        db.kv.put("k", 1)
    extra = schema.Migration(
        schema.LATEST_VERSION + 1,
        "test table",
        lambda conn: conn.execute("CREATE TABLE _dotdo_test(x)"),
    )
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, extra))
    monkeypatch.setattr(schema, "LATEST_VERSION", extra.version)
    with ActorDatabase.open(tmp_path, ALICE) as db:
        assert db.connection.pragma("user_version") == extra.version
        assert db.connection.table_exists(None, "_dotdo_test")
        assert db.kv.get("k") == 1


def test_failed_migration_leaves_the_database_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ActorDatabase.open(tmp_path, ALICE):
        pass

    def broken(conn: apsw.Connection) -> None:
        conn.execute("CREATE TABLE _dotdo_half(x)")
        raise RuntimeError("migration bug")

    extra = schema.Migration(schema.LATEST_VERSION + 1, "broken", broken)
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, extra))
        m.setattr(schema, "LATEST_VERSION", extra.version)
        with pytest.raises(RuntimeError, match="migration bug"):
            ActorDatabase.open(tmp_path, ALICE)
    with ActorDatabase.open(tmp_path, ALICE) as db:
        assert not db.connection.table_exists(None, "_dotdo_half")
        assert db.connection.pragma("user_version") == schema.LATEST_VERSION


def test_a_database_from_a_newer_dotdo_is_refused(tmp_path: Path) -> None:
    with ActorDatabase.open(tmp_path, ALICE) as db:
        db.connection.execute("PRAGMA user_version = 999")
    with pytest.raises(StorageError, match="newer than this dotdo"):
        ActorDatabase.open(tmp_path, ALICE)


def test_a_damaged_file_gives_a_storage_error(tmp_path: Path) -> None:
    path = ALICE.path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="damaged or not SQLite"):
        ActorDatabase.open(tmp_path, ALICE)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_data_dir_gives_a_storage_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StorageError):
            ActorDatabase.open(tmp_path, ALICE)
    finally:
        tmp_path.chmod(0o700)


def test_data_dir_that_is_a_file_gives_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="cannot create the data directory"):
        ActorDatabase.open(blocker, ALICE)


def test_vectors_load_lazily_and_only_into_this_connection(db: ActorDatabase) -> None:
    with pytest.raises(apsw.SQLError):
        db.connection.execute("SELECT vec_version()").fetchall()
    db.load_vectors()
    db.load_vectors()
    assert db.connection.execute("SELECT vec_version()").fetchall()[0][0].startswith("v")


# -- a full disk, a read-only directory ---------------------------------------------------


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


def _written(tmp_path: Path) -> Path:
    db = ActorDatabase.open(tmp_path, ALICE)
    db.kv.put("k", "v")
    db.commit()
    db.close()
    return ALICE.path(tmp_path)


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("with_wal", [True, False])
def test_read_only_opens_read_and_refuse_every_write(tmp_path: Path, with_wal: bool) -> None:
    path = _written(tmp_path)
    if not with_wal:  # checkpointed and gone: the read-only open takes the file as immutable
        conn = apsw.Connection(str(path))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        conn.close()
        Path(f"{path}-wal").unlink(missing_ok=True)
    before = _files(tmp_path)
    db = ActorDatabase.open(tmp_path, ALICE, StorageOptions(read_only=True))
    assert db.kv.get("k") == "v"
    db.begin_turn()
    with pytest.raises(StorageReadOnly, match="read-only"):
        db.kv.put("k", "changed")
        db.commit()
    db.rollback()
    db.end_turn()
    assert db.kv.get("k") == "v"
    with pytest.raises(DatabaseLocked):  # still one activation at a time
        ActorDatabase.open(tmp_path, ALICE, StorageOptions(read_only=True))
    db.close()
    assert _files(tmp_path) == before


def test_read_only_creates_nothing_and_upgrades_nothing(tmp_path: Path) -> None:
    with pytest.raises(StorageReadOnly, match="cannot be created"):
        ActorDatabase.open(tmp_path, ALICE, StorageOptions(read_only=True))
    assert list(tmp_path.iterdir()) == []
    path = _written(tmp_path)
    conn = apsw.Connection(str(path))
    conn.pragma("user_version", schema.LATEST_VERSION - 1)
    conn.close()
    with pytest.raises(StorageReadOnly, match="cannot be upgraded"):
        ActorDatabase.open(tmp_path, ALICE, StorageOptions(read_only=True))
