from pathlib import Path

import pytest

from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import InvalidQuery, InvalidValue, RowCountError, SqlError
from dotdo.storage.options import StorageOptions


@pytest.fixture
def table(db: ActorDatabase) -> ActorDatabase:
    db.sql.exec("CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)")
    for i, name in enumerate(["apple", "pear", "plum"], start=1):
        db.sql.exec("INSERT INTO item(id, name, qty) VALUES (?, ?, ?)", i, name, i * 10)
    return db


def test_rows_as_dicts_and_tuples(table: ActorDatabase) -> None:
    cursor = table.sql.exec("SELECT id, name FROM item WHERE qty >= ? ORDER BY id", 20)
    assert cursor.column_names == ("id", "name")
    assert list(cursor) == [{"id": 2, "name": "pear"}, {"id": 3, "name": "plum"}]
    assert list(cursor.raw()) == [(2, "pear"), (3, "plum")]
    assert cursor.fetchall() == list(cursor)
    assert len(cursor) == 2


def test_one(table: ActorDatabase) -> None:
    assert table.sql.exec("SELECT name FROM item WHERE id = ?", 1).one() == {"name": "apple"}
    with pytest.raises(RowCountError, match="got 0") as none:
        table.sql.exec("SELECT name FROM item WHERE id = 99").one()
    assert none.value.count == 0
    with pytest.raises(RowCountError, match="got 3"):
        table.sql.exec("SELECT name FROM item").one()


def test_counters(table: ActorDatabase) -> None:
    scan = table.sql.exec("SELECT count(*) AS n FROM item WHERE qty > 0")
    assert scan.rows_read == 3 and scan.rows_written == 0
    lookup = table.sql.exec("SELECT name FROM item WHERE id = 2")
    assert lookup.rows_read == 1
    update = table.sql.exec("UPDATE item SET qty = qty + 1")
    assert update.rows_written == 3 and update.rows_read == 3
    assert update.column_names == () and list(update) == []
    insert = table.sql.exec("INSERT INTO item(name, qty) VALUES ('fig', 1), ('kiwi', 2)")
    assert insert.rows_written == 2


def test_several_statements_run_eagerly_and_return_the_last(db: ActorDatabase) -> None:
    cursor = db.sql.exec(
        "CREATE TABLE t(x); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2); SELECT sum(x) AS s FROM t;"
    )
    assert cursor.one() == {"s": 3}
    assert cursor.rows_written == 2
    empty_last = db.sql.exec("SELECT x FROM t; SELECT x FROM t WHERE x > 5")
    assert empty_last.column_names == ("x",) and list(empty_last) == []


def test_writes_join_the_turn(table: ActorDatabase) -> None:
    with pytest.raises(RuntimeError):
        with table.turn():
            table.sql.exec("DELETE FROM item")
            table.kv.put("k", 1)
            raise RuntimeError
    assert table.sql.exec("SELECT count(*) AS n FROM item").one() == {"n": 3}
    assert table.kv.get("k") is None


def test_savepoint_around_sql(table: ActorDatabase) -> None:
    with table.turn():
        with pytest.raises(SqlError):
            with table.transaction():
                table.sql.exec("UPDATE item SET qty = 0")
                table.sql.exec("INSERT INTO item(id) VALUES (1)")  # duplicate key
        assert table.sql.exec("SELECT sum(qty) AS s FROM item").one() == {"s": 60}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("BEGIN", "transaction"),
        ("begin immediate", "transaction"),
        ("COMMIT", "transaction"),
        ("ROLLBACK", "transaction"),
        ("SAVEPOINT s", "transaction"),
        ("RELEASE s", "transaction"),
        ("SELECT * FROM item; COMMIT", "transaction"),
        ("SELECT * FROM _dotdo_kv", "engine's tables"),
        ("select * from _DOTDO_KV", "engine's tables"),
        ("CREATE TABLE _dotdo_mine(x)", "engine's tables"),
        ("ATTACH DATABASE '/tmp/x.db' AS other", "attach"),
        ("DETACH other", "attach"),
        ("VACUUM", "may not VACUUM.*dotdo compact"),
        ("vacuum main", "may not VACUUM"),
        ("VACUUM INTO '/tmp/copy.db'", "may not VACUUM"),
        ("PRAGMA journal_mode = DELETE", "PRAGMA journal_mode"),
        ("PRAGMA writable_schema = 1", "PRAGMA writable_schema"),
        ("PRAGMA user_version = 5", "PRAGMA user_version"),
        ("SELECT load_extension('/tmp/evil.so')", "extensions"),
        ("", "empty"),
        ("   ", "empty"),
        ("-- only a comment", "empty"),
        (";;", "empty"),
    ],
)
def test_forbidden_and_empty_sql(table: ActorDatabase, query: str, message: str) -> None:
    with pytest.raises(InvalidQuery, match=message):
        table.sql.exec(query)
    assert table.sql.exec("SELECT count(*) AS n FROM item").one() == {"n": 3}


def test_read_only_pragmas_are_allowed(table: ActorDatabase) -> None:
    columns = [row["name"] for row in table.sql.exec("PRAGMA table_info(item)")]
    assert columns == ["id", "name", "qty"]
    assert table.sql.exec("PRAGMA quick_check").one() == {"quick_check": "ok"}


def test_sqlite_errors_are_sql_errors(table: ActorDatabase) -> None:
    with pytest.raises(SqlError, match="no such table") as missing:
        table.sql.exec("SELECT * FROM absent")
    assert missing.value.sqlite_error == "SQLError"
    with pytest.raises(SqlError) as constraint:
        table.sql.exec("INSERT INTO item(id) VALUES (1)")
    assert constraint.value.sqlite_error == "ConstraintError"
    with pytest.raises(SqlError, match="syntax"):
        table.sql.exec("SELEKT 1")


def test_bindings(table: ActorDatabase) -> None:
    assert table.sql.exec("SELECT ? AS a, ? AS b, ? AS c, ? AS d, ? AS e", None, 1, 2.5, "s", b"b").one() == {
        "a": None,
        "b": 1,
        "c": 2.5,
        "d": "s",
        "e": b"b",
    }
    with pytest.raises(InvalidQuery, match="bindings"):
        table.sql.exec("SELECT ?")
    with pytest.raises(InvalidQuery, match="bindings"):
        table.sql.exec("SELECT 1", 2)
    with pytest.raises(InvalidValue, match="cannot bind a dict"):
        table.sql.exec("SELECT ?", {"a": 1})  # type: ignore[arg-type]
    with pytest.raises(InvalidQuery, match="string"):
        table.sql.exec(b"SELECT 1")  # type: ignore[arg-type]


def test_injection_looking_values_are_just_values(table: ActorDatabase) -> None:
    evil = "x'); DROP TABLE item; --"
    table.sql.exec("INSERT INTO item(name) VALUES (?)", evil)
    assert table.sql.exec("SELECT name FROM item WHERE name = ?", evil).one() == {"name": evil}
    assert table.sql.exec("SELECT count(*) AS n FROM item").one() == {"n": 4}


def test_user_triggers_cannot_reach_engine_tables(table: ActorDatabase) -> None:
    with pytest.raises(InvalidQuery):
        table.sql.exec("CREATE TRIGGER t AFTER INSERT ON item BEGIN DELETE FROM _dotdo_kv; END")
    with pytest.raises(InvalidQuery):
        table.sql.exec("CREATE VIEW v AS SELECT * FROM _dotdo_meta")


def test_fts5_is_available_to_users(db: ActorDatabase) -> None:
    db.sql.exec("CREATE VIRTUAL TABLE doc USING fts5(body)")
    db.sql.exec("INSERT INTO doc(body) VALUES ('the quick brown fox'), ('lazy dogs')")
    assert db.sql.exec("SELECT body FROM doc WHERE doc MATCH 'fox'").one() == {"body": "the quick brown fox"}


def test_a_runaway_statement_is_stopped_at_the_time_limit(tmp_path: Path) -> None:
    db = ActorDatabase.open(tmp_path, Address("Test", "slow"), StorageOptions(sql_time_limit=0.2))
    try:
        db.sql.exec("CREATE TABLE t(x)")
        db.commit()
        endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
        with pytest.raises(SqlError, match="was stopped") as caught:
            db.sql.exec(endless)
        assert caught.value.sqlite_error == "InterruptError"
        # The next statement gets its own time, and engine statements none at all.
        assert db.sql.exec("SELECT count(*) AS n FROM t").one() == {"n": 0}
        db.kv.put("still", "works")
    finally:
        db.close()
