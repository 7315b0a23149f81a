"""Column names after the schema changes under a statement the connection has cached
(issue 19): they always match the rows they describe."""

from __future__ import annotations

import pytest

from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import SqlError


def test_select_star_after_add_column_names_the_new_column(db: ActorDatabase) -> None:
    db.sql.exec("CREATE TABLE t(a INTEGER)")
    db.sql.exec("INSERT INTO t(a) VALUES (1)")
    assert db.sql.exec("SELECT * FROM t").fetchall() == [{"a": 1}]  # the statement is cached
    db.sql.exec("ALTER TABLE t ADD COLUMN b TEXT DEFAULT 'x'")
    cursor = db.sql.exec("SELECT * FROM t")
    assert cursor.column_names == ("a", "b")
    assert cursor.fetchall() == [{"a": 1, "b": "x"}]


def test_across_turns(db: ActorDatabase) -> None:
    db.begin_turn()
    db.sql.exec("CREATE TABLE t(a INTEGER)")
    db.sql.exec("INSERT INTO t(a) VALUES (1)")
    assert db.sql.exec("SELECT * FROM t").one() == {"a": 1}
    db.commit()
    db.end_turn()
    db.begin_turn()
    db.sql.exec("ALTER TABLE t ADD COLUMN b INTEGER DEFAULT 2")
    db.commit()
    db.end_turn()
    db.begin_turn()
    assert db.sql.exec("SELECT * FROM t").one() == {"a": 1, "b": 2}
    db.commit()
    db.end_turn()


def test_after_a_failed_alter_caught_inside_the_turn(db: ActorDatabase) -> None:
    db.sql.exec("CREATE TABLE t(a INTEGER)")
    db.sql.exec("INSERT INTO t(a) VALUES (5)")
    assert db.sql.exec("SELECT * FROM t").fetchall() == [{"a": 5}]
    db.begin_turn()
    with pytest.raises(SqlError):
        db.sql.exec("ALTER TABLE t ADD COLUMN c INTEGER NOT NULL DEFAULT 0 CHECK (c > 0)")
    db.sql.exec("ALTER TABLE t ADD COLUMN d INTEGER DEFAULT 7")
    assert db.sql.exec("SELECT * FROM t").fetchall() == [{"a": 5, "d": 7}]
    db.commit()
    db.end_turn()
    assert list(db.sql.exec("SELECT * FROM t").raw()) == [(5, 7)]


def test_the_last_statement_of_several_is_described_as_it_ran(db: ActorDatabase) -> None:
    db.sql.exec("CREATE TABLE t(a INTEGER)")
    db.sql.exec("INSERT INTO t(a) VALUES (1)")
    db.sql.exec("SELECT * FROM t")
    cursor = db.sql.exec("ALTER TABLE t ADD COLUMN b INTEGER DEFAULT 3; SELECT * FROM t")
    assert cursor.fetchall() == [{"a": 1, "b": 3}]


def test_an_empty_result_is_described_as_the_table_is_now(db: ActorDatabase) -> None:
    db.sql.exec("CREATE TABLE t(a INTEGER)")
    assert db.sql.exec("SELECT * FROM t").column_names == ("a",)
    db.sql.exec("ALTER TABLE t RENAME COLUMN a TO z")
    db.sql.exec("ALTER TABLE t ADD COLUMN b INTEGER")
    assert db.sql.exec("SELECT * FROM t").column_names == ("z", "b")
    assert db.sql.exec("SELECT * FROM t WHERE z = ?", 1).column_names == ("z", "b")
    assert db.sql.exec("INSERT INTO t(z, b) VALUES (1, 2)").column_names == ()
