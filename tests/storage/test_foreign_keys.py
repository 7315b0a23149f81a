"""Foreign keys, enforced on every connection as in Durable Objects (dotdo.storage.foreign_keys):
checks on writes, deferral by PRAGMA, data that violates them from before, and the engine's
operations that move user rows (merge, shard split and gather; delete_all is in
test_deletion)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dotdo.storage import foreign_keys, sharding
from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import InvalidInput, InvalidQuery, MergeConflict, SqlError
from dotdo.storage.options import StorageOptions

ADDRESS = Address("Test", "one")  # the conftest's db
SCHEMA = (
    "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT);"
    "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE, total INTEGER);"
)


@pytest.fixture
def shop(db: ActorDatabase) -> ActorDatabase:
    db.sql.exec(SCHEMA + "INSERT INTO customers VALUES (1, 'ada'), (2, 'bo'); INSERT INTO orders VALUES (10, 1, 5), (11, 2, 7)")
    return db


def rows(db: ActorDatabase, table: str) -> list[tuple[Any, ...]]:
    return db.connection.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


def write_legacy(db: ActorDatabase, sql: str) -> None:
    """Write as dotdo did before it enforced foreign keys."""
    db.connection.execute("PRAGMA foreign_keys = OFF")
    try:
        db.sql.exec(sql)
    finally:
        db.connection.execute("PRAGMA foreign_keys = ON")


def test_every_connection_enforces_them(tmp_path: Path, shop: ActorDatabase) -> None:
    with pytest.raises(SqlError, match="FOREIGN KEY constraint failed"):
        shop.sql.exec("INSERT INTO orders VALUES (12, 99, 1)")
    with pytest.raises(SqlError, match="FOREIGN KEY constraint failed"):
        shop.sql.exec("UPDATE orders SET customer = 99 WHERE id = 10")
    shop.sql.exec("DELETE FROM customers WHERE id = 2")  # ON DELETE CASCADE
    assert rows(shop, "orders") == [(10, 1, 5)]
    shop.close()
    read_only = ActorDatabase.open(tmp_path, ADDRESS, StorageOptions(read_only=True))
    try:
        assert list(read_only.sql.exec("PRAGMA foreign_keys").raw()) == [(1,)]
    finally:
        read_only.close()


def test_the_pragmas_can_be_read_and_checks_deferred_to_the_commit(shop: ActorDatabase) -> None:
    assert list(shop.sql.exec("PRAGMA foreign_keys").raw()) == [(1,)]
    assert list(shop.sql.exec("PRAGMA defer_foreign_keys").raw()) == [(0,)]
    with pytest.raises(InvalidQuery, match="foreign keys are always enforced"):
        shop.sql.exec("PRAGMA foreign_keys = OFF")
    with pytest.raises(InvalidQuery, match="foreign keys are always enforced"):
        shop.sql.exec("PRAGMA foreign_keys(0)")
    with shop.turn():
        shop.sql.exec("PRAGMA defer_foreign_keys = ON")
        assert list(shop.sql.exec("PRAGMA defer_foreign_keys").raw()) == [(1,)]
        shop.sql.exec("INSERT INTO orders VALUES (20, 3, 1)")  # its customer comes next
        shop.sql.exec("INSERT INTO customers VALUES (3, 'cy')")
    assert rows(shop, "orders")[-1] == (20, 3, 1)
    with shop.turn():  # SQLite resets the deferral at every commit
        assert list(shop.sql.exec("PRAGMA defer_foreign_keys").raw()) == [(0,)]
        with pytest.raises(SqlError, match="FOREIGN KEY"):
            shop.sql.exec("INSERT INTO orders VALUES (21, 4, 1)")


def test_a_turn_that_ends_with_deferred_violations_is_rolled_back(shop: ActorDatabase) -> None:
    before = rows(shop, "orders")
    shop.begin_turn()
    try:
        shop.kv.put("seen", True)
        shop.sql.exec("PRAGMA defer_foreign_keys = ON; INSERT INTO orders VALUES (30, 77, 1)")
        with pytest.raises(SqlError, match="FOREIGN KEY constraint failed.*deferred.*rolled back") as caught:
            shop.commit()
        assert caught.value.sqlite_error == "ConstraintError"
    finally:
        shop.end_turn()
    assert not shop.has_uncommitted
    assert rows(shop, "orders") == before and shop.kv.get("seen") is None
    shop.sql.exec("INSERT INTO customers VALUES (5, 'ed')")  # the connection serves on


def test_a_block_outside_a_turn_that_ends_with_them_changes_nothing(shop: ActorDatabase) -> None:
    with pytest.raises(SqlError, match="deferred foreign-key checks"):
        with shop.transaction():
            shop.sql.exec("PRAGMA defer_foreign_keys = ON; INSERT INTO orders VALUES (31, 77, 1)")
    assert not shop.connection.in_transaction and shop.savepoint_depth == 0
    assert [r[0] for r in rows(shop, "orders")] == [10, 11]


def test_data_that_already_violates_them_keeps_working(tmp_path: Path, shop: ActorDatabase) -> None:
    write_legacy(shop, "INSERT INTO orders VALUES (40, 404, 1)")
    shop.close()
    db = ActorDatabase.open(tmp_path, ADDRESS)
    try:
        assert rows(db, "orders")[-1] == (40, 404, 1)  # reads
        with db.turn():
            db.sql.exec("UPDATE orders SET total = 2 WHERE id = 40")  # its key is not written
            db.sql.exec("INSERT INTO orders VALUES (41, 1, 3)")  # other writes
        assert list(db.sql.exec("PRAGMA foreign_key_check(orders)").raw()) == [("orders", 40, "customers", 0)]
        with pytest.raises(SqlError, match="FOREIGN KEY"):
            db.sql.exec("INSERT INTO orders VALUES (42, 404, 1)")  # a new violation
        db.sql.exec("DELETE FROM orders WHERE id = 40")
        assert list(db.sql.exec("PRAGMA foreign_key_check").raw()) == []
    finally:
        db.close()


def test_references_resolve_implicit_keys_and_skip_missing_parents(db: ActorDatabase) -> None:
    db.sql.exec(
        "CREATE TABLE a(id INTEGER PRIMARY KEY);"
        "CREATE TABLE c(id INTEGER PRIMARY KEY, up INTEGER REFERENCES c(id));"
        "CREATE TABLE d(a INTEGER REFERENCES a(id), c INTEGER REFERENCES c);"
        "CREATE TABLE e(x INTEGER REFERENCES nowhere(id))"
    )
    refs = foreign_keys.references(db.connection, ["d", "e"])
    assert sorted((r.child, r.columns, r.parent, r.keys) for r in refs) == [
        ("d", ("a",), "a", ("id",)),
        ("d", ("c",), "c", ("id",)),  # "REFERENCES c" names c's primary key
    ]  # e's parent does not exist


# -- merging branches -------------------------------------------------------------------


def test_a_merge_carries_the_cascades_of_the_source_without_running_them_again(shop: ActorDatabase) -> None:
    shop.branches.create("dev")
    shop.branches.checkout("dev")
    shop.sql.exec("DELETE FROM customers WHERE id = 2")  # and, cascading, order 11
    shop.branches.checkout("main")
    report = shop.branches.merge("dev")
    assert rows(shop, "customers") == [(1, "ada")] and rows(shop, "orders") == [(10, 1, 5)]
    assert report.tables["orders"]["deleted"] == 1 and report.tables["customers"]["deleted"] == 1


def test_a_merge_that_would_leave_a_reference_to_a_missing_row_is_refused(shop: ActorDatabase) -> None:
    shop.branches.create("dev")
    shop.branches.checkout("dev")
    shop.sql.exec("DELETE FROM orders WHERE customer = 2; DELETE FROM customers WHERE id = 2")
    shop.branches.checkout("main")
    shop.sql.exec("INSERT INTO orders VALUES (12, 2, 9)")  # bo orders again on main
    for policy in ("fail", "source", "current"):
        with pytest.raises(MergeConflict, match="would reference rows that do not exist.*nothing was merged") as caught:
            shop.branches.merge("dev", policy=policy)
        assert any(entry["kind"] == "foreign_key" for entry in caught.value.conflicts)
        assert rows(shop, "customers") == [(1, "ada"), (2, "bo")]
        assert [r[0] for r in rows(shop, "orders")] == [10, 11, 12]


# -- shards -----------------------------------------------------------------------------

SHARDED = (
    "CREATE TABLE customers(id INTEGER PRIMARY KEY, region TEXT, name TEXT, UNIQUE(id, region));"
    "CREATE TABLE orders(id INTEGER PRIMARY KEY, region TEXT, customer INTEGER,"
    " FOREIGN KEY (customer, region) REFERENCES customers(id, region) ON DELETE RESTRICT);"
)


@pytest.fixture
def regions(db: ActorDatabase) -> ActorDatabase:
    values = ", ".join(f"({i}, 'r{i % 5}', 'c{i}')" for i in range(20))
    orders = ", ".join(f"({100 + i}, 'r{i % 5}', {i})" for i in range(20))
    db.sql.exec(SHARDED + f"INSERT INTO customers VALUES {values}; INSERT INTO orders VALUES {orders}")
    return db


def split(db: ActorDatabase, data_dir: Path, n: int) -> list[ActorDatabase]:
    sharding.check_splittable(db, "region", n)
    shards = []
    for index in range(n):
        address = Address("Shop", f"one.{index}")
        sharding.write_shard(
            db, data_dir, address, name=None, options=StorageOptions(), key="region", n=n, index=index, marker="m"
        )
        shards.append(ActorDatabase.open(data_dir, address))
    return shards


def test_a_split_keeps_references_inside_each_shard_and_gathers_back(tmp_path: Path, regions: ActorDatabase) -> None:
    before = rows(regions, "customers"), rows(regions, "orders")
    shards = split(regions, tmp_path, 3)
    try:
        held = sorted(row for shard in shards for row in rows(shard, "orders"))
        assert held == before[1]
        for shard in shards:
            assert list(shard.sql.exec("PRAGMA foreign_key_check").raw()) == []
            assert shard.connection.pragma("foreign_keys") == 1
        with regions.turn():
            sharding.become_router(regions, "router", 1)  # customers go first: RESTRICT, deferred
        assert rows(regions, "orders") == [] and rows(regions, "customers") == []
        with regions.turn():
            assert sharding.gather(regions, shards) == 40  # orders may come before their customers
        assert (rows(regions, "customers"), rows(regions, "orders")) == before
    finally:
        for shard in shards:
            shard.close()


def test_a_split_that_would_cut_references_is_refused(regions: ActorDatabase) -> None:
    regions.sql.exec(
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, region TEXT, about INTEGER REFERENCES customers(id));"
        "INSERT INTO notes VALUES (1, 'r1', 3)"  # customer 3 is in region r3
    )
    with pytest.raises(InvalidInput, match=r"foreign keys would cross shards \(notes -> customers\)"):
        sharding.check_splittable(regions, "region", 5)


def test_a_split_of_data_that_violates_them_is_refused(regions: ActorDatabase) -> None:
    write_legacy(regions, "INSERT INTO orders VALUES (500, 'r1', 999)")
    with pytest.raises(InvalidInput, match="rows reference missing rows .orders -> customers"):
        sharding.check_splittable(regions, "region", 2)


def test_gathering_rows_that_reference_what_no_shard_holds_is_refused(tmp_path: Path, regions: ActorDatabase) -> None:
    shards = split(regions, tmp_path, 2)
    try:
        write_legacy(shards[0], "DELETE FROM customers")
        with regions.turn():
            sharding.become_router(regions, "router", 1)
        before = rows(regions, "orders")
        with pytest.raises(InvalidInput, match="no shard holds"):
            with regions.turn():
                sharding.gather(regions, shards)
        assert rows(regions, "orders") == before == []
    finally:
        for shard in shards:
            shard.close()
