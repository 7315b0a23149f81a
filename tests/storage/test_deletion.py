"""``delete_all`` (``dotdo.storage.deletion``): what it deletes, what it keeps, one commit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase
from dotdo.storage.deletion import Deleted, delete_all
from dotdo.storage.errors import InvalidQuery, SqlError, StorageError
from dotdo.storage.lifecycle import compact
from dotdo.storage.options import StorageOptions
from dotdo.storage.search import DEFAULT_DIMENSION, DIMENSION_KEY
from dotdo.storage.outbox import RetryPolicy, Target
from dotdo.storage.workflow import SubscriptionRow

USER_OBJECTS = (
    "SELECT type, name FROM sqlite_schema WHERE name NOT LIKE '\\_dotdo\\_%' ESCAPE '\\' "
    "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY type, name"
)


def user_objects(db: ActorDatabase) -> list[tuple[Any, ...]]:
    return db.connection.execute(USER_OBJECTS).fetchall()


def fill(db: ActorDatabase) -> None:
    """Something in every store delete_all empties."""
    db.kv.put({"a": 1, "b": 2, "c": 3})
    db.sql.exec(
        "CREATE TABLE notes(id INTEGER PRIMARY KEY AUTOINCREMENT, text TEXT);"
        "CREATE INDEX notes_text ON notes(text);"
        "CREATE TABLE tags(note INTEGER REFERENCES notes(id), tag TEXT);"
        "CREATE TRIGGER tag_new AFTER INSERT ON notes BEGIN INSERT INTO tags VALUES (new.id, 'new'); END;"
        "CREATE VIEW tagged AS SELECT text, tag FROM notes JOIN tags ON tags.note = notes.id;"
        "CREATE VIRTUAL TABLE docs USING fts5(body);"
        "INSERT INTO notes(text) VALUES ('hello'); INSERT INTO docs VALUES ('hello world');"
        "ANALYZE notes"
    )
    things = db.things
    things.set_vector_dimension(3)
    alice = things.create("Customer", {"city": "Paris"}, name="Alice", embedding=[1.0, 0.0, 0.0])
    order = things.create("Order", {"total": 3}, name="first order")
    things.relate(alice.id, "placed", order.id)
    things.create_index("Customer", "city")
    db.alarms.set(2e9)
    db.alarms.put_schedule("daily", "every day", "every:86400", "UTC", "tick", 2e9)


def test_it_deletes_every_store_and_drops_the_user_tables(db: ActorDatabase) -> None:
    fill(db)
    assert delete_all(db) == Deleted(
        keys=3, tables=("tagged", "docs", "notes", "tags"), things=2, alarm=True, schedules=1
    )
    assert db.kv.list() == {}
    assert user_objects(db) == []  # tables, views, virtual tables, their indexes and triggers
    conn = db.connection
    assert conn.execute("SELECT name FROM sqlite_sequence").fetchall() == []
    assert conn.execute("SELECT tbl FROM sqlite_stat1").fetchall() == []
    things = db.things
    assert things.count() == 0 and things.search("alice") == [] and things.indexes() == []
    assert conn.execute("SELECT count(*) FROM _dotdo_relationships").fetchall() == [(0,)]
    assert conn.execute("SELECT count(*) FROM _dotdo_vectors").fetchall() == [(0,)]
    assert things.vector_dimension == DEFAULT_DIMENSION  # forgotten
    assert db.alarms.get() is None and db.alarms.schedules() == [] and db.alarms.pending() == []
    # As new: the same schema can be made again, and the stores work.
    db.sql.exec("CREATE TABLE notes(id INTEGER PRIMARY KEY AUTOINCREMENT, text TEXT); INSERT INTO notes(text) VALUES ('again')")
    assert db.sql.exec("SELECT id FROM notes").one() == {"id": 1}
    things.set_vector_dimension(2)
    assert things.create("Customer", {}, name="Bob", embedding=[0.0, 1.0]).version == 1


def test_kv_delete_all_is_the_whole_deletion_and_returns_the_keys(db: ActorDatabase) -> None:
    fill(db)
    assert db.kv.delete_all() == 3
    assert user_objects(db) == [] and db.alarms.get() is None and db.things.count() == 0
    assert db.kv.delete_all() == 0  # nothing left: nothing to do, no error


def test_an_empty_database_has_nothing_to_delete_and_builds_no_store(db: ActorDatabase) -> None:
    assert delete_all(db) == Deleted(0, (), 0, False, 0)
    assert not db.has("things") and not db.has("workflow")


def test_a_turn_that_rolls_back_gets_everything_back(db: ActorDatabase) -> None:
    fill(db)
    before = user_objects(db)
    db.begin_turn()
    try:
        delete_all(db)
        assert user_objects(db) == []
        db.kv.put("after", 1)
    finally:
        db.rollback()
        db.end_turn()
    assert db.kv.list() == {"a": 1, "b": 2, "c": 3}
    assert user_objects(db) == before
    assert db.sql.exec("SELECT text, tag FROM tagged").fetchall() == [{"text": "hello", "tag": "new"}]
    assert [t.name for t, _ in db.things.search("alice")] == ["Alice"]
    assert db.things.vector_dimension == 3 and len(db.things.indexes()) == 1
    assert db.alarms.get() is not None and len(db.alarms.schedules()) == 1


def test_inside_a_turn_it_joins_the_turn_and_commits_with_it(tmp_path: Path) -> None:
    address = Address("Test", "turn")
    with ActorDatabase.open(tmp_path, address) as db:
        fill(db)
        with db.turn():
            delete_all(db)
            db.kv.put("after", 1)
    with ActorDatabase.open(tmp_path, address) as db:
        assert db.kv.list() == {"after": 1} and user_objects(db) == [] and db.alarms.get() is None


def test_a_failure_deletes_nothing(db: ActorDatabase) -> None:
    fill(db)
    # A table cannot be dropped while a read of it is in progress: its drop fails.
    cursor = db.connection.cursor()
    rows = cursor.execute("SELECT id FROM notes")
    next(rows)
    try:
        with pytest.raises(StorageError):
            delete_all(db)
    finally:
        cursor.close()
    assert db.kv.get("a") == 1 and user_objects(db) != [] and db.alarms.get() is not None


def test_foreign_keys_do_not_stop_it(db: ActorDatabase) -> None:
    # A parent dropped before its child would fail an immediate check ("a_parent" sorts
    # before "z_child"), and an ON DELETE RESTRICT parent at once.
    assert db.connection.pragma("foreign_keys") == 1
    db.sql.exec(
        "CREATE TABLE a_parent(id INTEGER PRIMARY KEY);"
        "CREATE TABLE m_strict(id INTEGER PRIMARY KEY, parent INTEGER REFERENCES a_parent(id) ON DELETE RESTRICT);"
        "CREATE TABLE z_child(parent INTEGER NOT NULL REFERENCES m_strict(id));"
        "INSERT INTO a_parent VALUES (1); INSERT INTO m_strict VALUES (5, 1); INSERT INTO z_child VALUES (5)"
    )
    with db.turn():
        assert delete_all(db).tables == ("a_parent", "m_strict", "z_child")
        assert db.connection.pragma("defer_foreign_keys") == 0  # as it was
        # Later writes of the turn are checked immediately again.
        db.sql.exec("CREATE TABLE p(id INTEGER PRIMARY KEY); CREATE TABLE c(p INTEGER REFERENCES p(id))")
        with pytest.raises(SqlError, match="FOREIGN KEY"):
            db.sql.exec("INSERT INTO c VALUES (7)")
    assert user_objects(db) == [("table", "c"), ("table", "p")]


def test_rows_that_already_reference_missing_rows_are_deleted_too(db: ActorDatabase) -> None:
    # Written before foreign keys were enforced (SQLite checks writes, not data).
    db.sql.exec("CREATE TABLE p(id INTEGER PRIMARY KEY); CREATE TABLE c(p INTEGER REFERENCES p(id))")
    db.connection.execute("PRAGMA foreign_keys = OFF")
    db.sql.exec("INSERT INTO c VALUES (1), (2); INSERT INTO p VALUES (2)")
    db.connection.execute("PRAGMA foreign_keys = ON")
    with db.turn():
        assert delete_all(db).tables == ("c", "p")
    assert user_objects(db) == []


def test_it_keeps_the_engine_records_and_what_is_owed_to_others(db: ActorDatabase) -> None:
    fill(db)
    seq_before = db.alarms.set(2e9).seq
    target = Target("R", "a" * 64, "a", "handle", 0, None)
    db.workflow.record_send(
        uid="u1", path="Note.added", source="Test/one", data=b"\xc0", now=100.0, due=100.0, priority=0,
        policy=RetryPolicy(3, 0.1, 1.0), trace_id=None, correlation_id=None, targets=[target],
    )
    db.workflow.subscribe(SubscriptionRow("Customer", "*", "audit", 0, None))
    assert db.workflow.accept("Other/x", 5, 0)
    db.alarms.record_failure("", 1.0, 3, "ValueError", "boom")
    meta = db.meta()
    delete_all(db)
    assert db.meta() == {k: v for k, v in meta.items() if k != DIMENSION_KEY}  # only the dimension goes
    assert db.stored_address() == Address("Test", "one")
    assert db.workflow.queued() == 1 and [e.verb for e in db.workflow.events()] == ["Note.added"]
    assert [a.verb for a in db.workflow.actions()] == ["Note.added"]
    assert db.workflow.subscriptions() == [SubscriptionRow("Customer", "*", "audit", 0, None)]
    assert not db.workflow.accept("Other/x", 5, 0)  # still known: handled once
    assert len(list(db.alarms.failures())) == 1
    assert db.alarms.set(2e9).seq == seq_before + 1  # the sequence lives on
    assert db.workflow.pending() != []  # the outbox still wakes the actor


def test_user_sql_still_cannot_reach_the_engine_tables_after_it(db: ActorDatabase) -> None:
    fill(db)
    delete_all(db)
    with pytest.raises(InvalidQuery):
        db.sql.exec("DROP TABLE _dotdo_kv")


def test_restoring_to_before_it_brings_everything_back(tmp_path: Path) -> None:
    db = ActorDatabase.open(tmp_path, Address("Test", "history"), StorageOptions(history=3600.0))
    try:
        fill(db)
        mark = db.history.bookmark()
        before = user_objects(db)
        delete_all(db)
        db.kv.put("after", 1)
        db.history.restore(mark)
        db.forget_features()
        assert db.kv.list() == {"a": 1, "b": 2, "c": 3}
        assert user_objects(db) == before
        assert db.sql.exec("SELECT text FROM notes").fetchall() == [{"text": "hello"}]
        assert [t.name for t, _ in db.things.search("alice")] == ["Alice"]
        assert db.alarms.get() is not None and len(db.alarms.schedules()) == 1
    finally:
        db.close()


def test_the_pages_it_frees_count_in_database_size_until_compact(db: ActorDatabase) -> None:
    db.sql.exec("CREATE TABLE big(x)")
    for _ in range(100):
        db.sql.exec("INSERT INTO big VALUES (?)", "x" * 2000)
    full = db.sql.database_size
    delete_all(db)
    assert db.sql.database_size == full
    compact(db, before=0)
    assert db.sql.database_size < full // 4
