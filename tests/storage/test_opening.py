"""Opening an actor's database (``dotdo.storage.opening``): creation, the file lock, settings,
migrations, damaged and unwritable files, read-only opening, and running out of file
descriptors."""

import os
import subprocess
import sys
from pathlib import Path

import apsw
import pytest

from dotdo.storage import schema
from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import DatabaseLocked, OutOfDescriptors, StorageError, StorageReadOnly
from dotdo.storage.opening import DESCRIPTORS_PER_ACTOR
from dotdo.storage.options import Durability, StorageOptions
from tests.descriptors import exhausted, free_descriptors

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
        "import sys\n"
        "from dotdo.storage.address import Address\n"
        "from dotdo.storage.database import ActorDatabase\n"
        "from dotdo.storage.errors import DatabaseLocked\n"
        "try:\n"
        f"    ActorDatabase.open({str(tmp_path)!r}, Address('Customer', 'alice'))\n"
        "except DatabaseLocked:\n"
        "    sys.exit(3)\n"
    )
    with ActorDatabase.open(tmp_path, ALICE):
        done = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), timeout=30)
    assert done.returncode == 3


def test_a_lock_holder_killed_mid_turn_leaves_the_database_openable(tmp_path: Path) -> None:
    code = (
        "import os, signal\n"
        "from dotdo.storage.address import Address\n"
        "from dotdo.storage.database import ActorDatabase\n"
        f"db = ActorDatabase.open({str(tmp_path)!r}, Address('Customer', 'alice'))\n"
        "db.kv.put('kept', 1); db.begin_turn(); db.kv.put('lost', 2)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), timeout=30)
    assert done.returncode == -9
    with ActorDatabase.open(tmp_path, ALICE) as db:  # the lock died with its process
        assert db.kv.get("kept") == 1 and db.kv.get("lost") is None


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


def _checkpointed(path: Path) -> None:
    """Fold the WAL of the closed database at ``path`` into it and remove the WAL."""
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    conn.close()
    Path(f"{path}-wal").unlink(missing_ok=True)


# (what is opened, descriptors it holds once open): a read-only database without a WAL
# is one file (immutable), so it needs one less.
OPENS = [("new", DESCRIPTORS_PER_ACTOR), ("existing", DESCRIPTORS_PER_ACTOR), ("read-only", DESCRIPTORS_PER_ACTOR), ("read-only without a WAL", 2)]


@pytest.mark.parametrize(("case", "needed"), OPENS, ids=[case for case, _ in OPENS])
def test_an_open_out_of_descriptors_raises_out_of_descriptors_and_leaves_nothing_open(tmp_path: Path, case: str, needed: int) -> None:
    if case != "new":
        path = _written(tmp_path)
        if case == "read-only without a WAL":
            _checkpointed(path)
    options = StorageOptions(read_only=case.startswith("read-only"))
    for free in range(needed):  # short of one file, then of the next...
        with exhausted(free):
            with pytest.raises(OutOfDescriptors, match="no file descriptor left .EMFILE."):
                ActorDatabase.open(tmp_path, ALICE, options)
            assert free_descriptors() == free  # what it opened before failing is closed
    with exhausted(needed):
        db = ActorDatabase.open(tmp_path, ALICE, options)
        assert free_descriptors() == 0
        db.close()
        assert free_descriptors() == needed
    with ActorDatabase.open(tmp_path, ALICE) as db:  # nothing half-made was left behind
        assert db.connection.pragma("journal_mode") == "wal"
        assert db.connection.pragma("user_version") == schema.LATEST_VERSION
        assert db.stored_address() == ALICE
        assert db.kv.get("k") == (None if case == "new" else "v")


@pytest.mark.parametrize("history", [0.0, 3600.0], ids=["history off", "history on"])
def test_an_open_database_holds_descriptors_per_actor_with_or_without_history(tmp_path: Path, history: float) -> None:
    spare = 4  # what history's archive opens while it copies a commit, and closes again
    options = StorageOptions(history=history)
    _written(tmp_path)
    with exhausted(DESCRIPTORS_PER_ACTOR + spare):
        db = ActorDatabase.open(tmp_path, ALICE, options)
        try:
            assert free_descriptors() == spare
            db.kv.put("k", "changed")
            db.commit()
            assert free_descriptors() == spare
            if history:
                assert db.history.info().error is None
        finally:
            db.close()
        assert free_descriptors() == DESCRIPTORS_PER_ACTOR + spare
