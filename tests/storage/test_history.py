"""Point-in-time history (storage/history.py): bookmarks, restore and undo, history
off, info. Its helpers and fixtures serve the other history tests too
(test_archive.py, test_generations.py, test_history_log.py, test_bookmarks.py)."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dotdo.storage import archive, history_log
from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import BookmarkError, StorageError, TransactionError
from dotdo.storage.options import StorageOptions

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
    monkeypatch.setattr(archive, "MIN_LOG_BYTES", 128 * 1024)
    monkeypatch.setattr(archive, "CHECKPOINT_PAGES", 40)


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


# -- bookmark, restore, undo -----------------------------------------------------------


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


def test_a_failed_integrity_check_leaves_the_database_unchanged(db: ActorDatabase, small: None) -> None:
    for i in range(40):
        db.kv.put(f"k{i}", "v" * 4000)
    assert db.history.info().generations >= 2
    [base] = sorted(p for p in history_log.history_dir(db.path).iterdir() if p.suffix == ".base")[-1:]
    gen = base.name[1:9]
    [log] = [p for p in history_log.history_dir(db.path).iterdir() if p.name.startswith(f"g{gen}-")]
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


# -- history off, info -----------------------------------------------------------------


def test_history_off_archives_nothing_and_says_so(tmp_path: Path, clock: Clock) -> None:
    with opened(tmp_path, clock, history=0) as db:
        db.kv.put("a", 1)
        for call in (db.history.bookmark, lambda: db.history.bookmark_at(clock.now), lambda: db.history.restore("x")):
            with pytest.raises(BookmarkError, match="history is off"):
                call()
        db.history.capture()  # nothing to do
        assert db.history.info().retention == 0 and db.history.info().generations == 0
        assert not history_log.history_dir(db.path).exists()
    assert not history_log.history_dir(ALICE.path(tmp_path)).exists()


def test_info_reports_size_and_generations(db: ActorDatabase, clock: Clock) -> None:
    db.kv.put("a", "b" * 10_000)
    info = db.history.info()
    assert info.retention == 7 * 86400.0 and info.generations == 1 and info.error is None
    on_disk = sum(p.stat().st_size for p in history_log.history_dir(db.path).iterdir())
    assert info.disk_bytes == on_disk > 10_000
