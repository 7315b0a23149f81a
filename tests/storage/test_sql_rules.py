"""The SQL rules a ported Durable Object relies on (issue 19): what user SQL may do."""

from __future__ import annotations

import pytest

from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import InvalidQuery


@pytest.fixture
def sql(db: ActorDatabase):  # type: ignore[no-untyped-def]
    db.sql.exec("CREATE TABLE t(name TEXT)")
    db.sql.exec("INSERT INTO t VALUES ('_dotdo_x'), ('plain')")
    return db.sql


def test_bare_analyze_and_pragma_optimize_work(sql) -> None:  # type: ignore[no-untyped-def]
    sql.exec("ANALYZE")
    sql.exec("PRAGMA optimize")
    assert sql.exec("SELECT count(*) AS n FROM t").one() == {"n": 2}


@pytest.mark.parametrize("query", ["PRAGMA page_size = 8192", "PRAGMA data_version = 5", "PRAGMA page_size(8192)", "PRAGMA freelist_count = 1"])
def test_assigning_a_read_only_pragma_is_refused(sql, query: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidQuery, match="can only be read"):
        sql.exec(query)


def test_reading_pragmas_still_works(sql) -> None:  # type: ignore[no-untyped-def]
    assert sql.exec("PRAGMA page_size").one()["page_size"] > 0
    assert [r["name"] for r in sql.exec("PRAGMA table_info(t)")] == ["name"]


@pytest.mark.parametrize(
    "query",
    [
        "CREATE TEMP TABLE x(a)",
        "CREATE TEMPORARY TABLE x(a)",
        "CREATE TEMP VIEW v AS SELECT 1",
        "CREATE TEMP TRIGGER g AFTER INSERT ON t BEGIN SELECT 1; END",
        "CREATE TABLE temp.y(a)",
    ],
)
def test_temp_objects_are_refused(sql, query: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidQuery, match="vanish when the actor is passivated"):
        sql.exec(query)


def test_the_reserved_prefix_in_a_string_literal_is_allowed(sql) -> None:  # type: ignore[no-untyped-def]
    assert sql.exec("SELECT count(*) AS n FROM t WHERE name LIKE '_dotdo_%'").one() == {"n": 1}
    assert sql.exec("SELECT 'it''s _dotdo_ text' AS v").one() == {"v": "it's _dotdo_ text"}


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM _dotdo_kv",
        "SELECT * FROM _DOTDO_KV",
        'SELECT * FROM "_dotdo_kv"',
        "SELECT * FROM [_dotdo_kv]",
        "SELECT * FROM `_dotdo_kv`",
        "PRAGMA table_info(_dotdo_kv)",
        "SELECT 'a' FROM _dotdo_kv WHERE 'x' = 'x'",
        "CREATE TABLE _dotdo_mine(a)",
    ],
)
def test_naming_an_engine_table_stays_refused(sql, query: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidQuery, match="reserved|engine"):
        sql.exec(query)
